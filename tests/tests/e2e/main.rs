//! End-to-end tests on the real Docker engine, a private registry and OpenSSH: one test binary,
//! one module per area. Each test gets its own registry/sshd/agents from the `harness` crate
//! and removes every container it caused, so nextest may run them in parallel processes.

mod agent;
mod controller;
mod health;
mod smoke;
mod tidy;
