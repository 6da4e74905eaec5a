//! `proto` owns everything two deployctl processes must agree on: the deploy order and the
//! service spec it carries ([`order`]), the messages on the wire ([`wire`]), the frame codec
//! ([`codec`]), and order signing and acceptance in the OpenSSH SSHSIG format ([`sign`],
//! [`accept`], with OpenSSH's wildcard patterns in [`pattern`]).
//!
//! No other crate knows the byte format of a frame or a signature. Decoding works on byte
//! slices with no IO so it can be fuzzed; the async adapters in [`codec`] only move bytes.
#![forbid(unsafe_code)]

pub mod accept;
pub mod codec;
pub mod order;
pub mod pattern;
pub mod sign;
pub mod time;
pub mod wire;

pub use order::{Action, ImageRef, MigrationSpec, Order, ServiceSpec};
pub use time::Timestamp;
