//! The shared end-to-end harness (crate `harness`): a private image registry, the demo app's
//! images, a real OpenSSH server, a real Caddy in front of services ([`caddy`]), traffic that
//! counts what a deploy drops ([`probe`]), Docker cleanup guards and polling helpers. Every
//! end-to-end test builds on it; see `tests/e2e/smoke.rs` for the whole kit in use.
//!
//! Everything is blocking (std processes and sockets) but the agents' socket client
//! ([`agents::AgentClient`], over the controller's own `transport::AgentStream`) and
//! [`wait_until_async`]. From a `#[tokio::test]` that also runs servers on its runtime, call
//! blocking helpers through `tokio::task::spawn_blocking` or use the `multi_thread` flavor, or a
//! blocking poll starves the very task it waits for. Each piece stops what it started when dropped, also when
//! a test panics.
//!
//! Typical use:
//! ```no_run
//! # fn main() -> harness::Result<()> {
//! harness::require_prereqs()?;
//! let registry = harness::Registry::start()?;
//! let images = harness::DemoImages::publish(&registry, "demo")?;
//! let host = harness::unique_name("host");
//! let _cleanup = harness::Cleanup::label("deployctl.host", &host);
//! let v1 = images.v(1); // v1.image_ref, v1.git_sha, v1.digest …
//! # let _ = v1; Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod bare_host;
pub mod caddy;
pub mod command;
pub mod docker;
pub mod error;
pub mod fake_agent;
pub mod flood;
pub mod images;
pub mod net;
pub mod pki;
pub mod prereqs;
pub mod probe;
pub mod sshd;
pub mod wait;
pub mod webhook;

pub use bare_host::{BareHost, BareHostHome};
pub use caddy::{Caddy, free_listen_addr};
pub use demokit::{Registry, RegistryOptions};
pub use docker::{
    Cleanup, TEST_LABEL, container_exists, container_health, container_ip, container_logs,
    container_running, containers_with_label, docker, docker_inspect, published_port, unique_name,
};
pub use error::{Error, Result};
pub use fake_agent::FakeAgent;
pub use images::{
    Behaviour, DemoImage, DemoImages, LocalImage, build_demo_images, demoapp_binary, derive_image,
    fake_git_sha,
};
pub use net::{HttpResponse, free_port, http_get, http_request, http_send};
pub use pki::TestCa;
pub use prereqs::require_prereqs;
pub use probe::{Probe, ProbeReport};
pub use sshd::{ClientKey, Sshd, SshdOptions};
pub use wait::{wait_until, wait_until_async};
pub use webhook::WebhookReceiver;
pub mod agents;
pub mod hosts;
