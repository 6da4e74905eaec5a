//! The harness's one error type: every failure says what was being done and what came back. It
//! is [`demokit`]'s, so the demo images and registry the harness re-exports fail the same way.

pub(crate) use demokit::IoContext;
pub use demokit::{Error, Result};
