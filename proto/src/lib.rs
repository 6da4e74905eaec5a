//! `proto` owns everything two deployctl processes must agree on: the deploy order and the
//! service spec it carries ([`order`]), the messages on the wire ([`wire`]), the frame codec
//! ([`codec`]), and order signing and acceptance in the OpenSSH SSHSIG format ([`sign`],
//! [`accept`], with OpenSSH's wildcard patterns in [`pattern`]), and what a host lets on it
//! ([`policy`], [`release_policy`]).
//!
//! No other crate knows the byte format of a frame or a signature. `proto` does no IO, so all
//! of it can be tested and fuzzed as functions over bytes: no files, sockets, tokio or russh
//! (streams are the `frame-io` crate's, key files and ssh-agent the controller's, the replay
//! store the agent's). Its only contact with the system is the clock (`Timestamp::now`) and
//! [`order::new_id`] (a ULID: clock and OS randomness).
#![forbid(unsafe_code)]

pub mod accept;
pub mod approval;
pub mod codec;
pub mod order;
pub mod pattern;
pub mod policy;
pub mod release_policy;
pub mod sign;
pub mod spec;
pub mod time;
pub mod wire;

pub use order::{
    Action, ExecSpec, ImageRef, MaintenanceSpec, MigrationSpec, Order, ProxySpec, ServiceSpec,
};
pub use time::Timestamp;
