//! The demo app's images and a throwaway local registry, shared by `deployctl demo` and the test
//! harness.
//!
//! - [`DemoImages::publish`] builds the five demo versions into the local engine (once per
//!   content, safe across parallel processes) and pushes them to a [`Registry`] with a fake git
//!   SHA tag and a `vN` tag each; [`DemoImages::publish_derived`] pushes them rebuilt with more
//!   instructions ([`derive_image`]), e.g. into a second repository with other digests.
//! - [`Registry`] is Debian's `docker-registry` on a free loopback port, stopped and forgotten
//!   by the engine when dropped.
//!
//! Everything is blocking (std processes and sockets): async callers run it through
//! `tokio::task::spawn_blocking`. The process helpers it is built on ([`command`],
//! [`wait_until`], [`free_port`]) and its [`Error`] are the test harness's too.
#![forbid(unsafe_code)]

pub mod command;
mod error;
pub mod images;
mod registry;
pub mod wait;

pub use command::docker;
pub use error::{Error, IoContext, Result};
pub use images::{
    Behaviour, DemoImage, DemoImages, LocalImage, build_demo_images, demoapp_binary, derive_image,
    fake_git_sha, workspace_dir,
};
pub use registry::{Registry, RegistryOptions, free_port};
pub use wait::wait_until;
