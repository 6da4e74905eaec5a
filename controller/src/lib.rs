//! `deployctl`, the controller: resolves a ref to one digest in each repository the app's
//! services use (a release), checks policy, signs one deploy order per host and rolls it out over SSH (or a local socket) to each host's `deploy-agent`,
//! first host alone with the migration, then in batches, rolling back every host it changed
//! when one fails (README: "Commands", "deploy.toml", "SSH", "Locks and interruptions"); and
//! runs one-off commands in a service's running image on one host (`exec`).
//!
//! Code map: [`cli`] (flags only), [`config`] (`deploy.toml`), [`resolve`] (registry API),
//! [`release`] (what a release is, where its refs resolve, how releases compare),
//! [`known_hosts`] + [`transport`] (reaching agents; the only russh user), [`signer`] (key
//! files and ssh-agent keys that sign orders), [`connector`] (what commands need from agents,
//! as traits), [`rollout`] (the plan as pure functions, and its driver), [`output`] (every
//! message and its two renderers), [`setup`] (what `setup` does to a host, decided from a
//! probe's facts), [`commands`] (one module per subcommand), `demo` (with the
//! `demo` cargo feature), [`version_skew`] (an agent of another protocol version, and the fix).
#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod config;
pub mod connector;
#[cfg(feature = "demo")]
pub mod demo;
pub mod doctor;
pub mod known_hosts;
pub mod live;
pub mod output;
pub mod release;
pub mod resolve;
pub mod rollout;
pub mod setup;
pub mod signer;
pub mod transport;
pub mod ui;
pub mod version_skew;

use serde::Serialize;

/// The process exit codes (README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitClass {
    /// 0: success.
    Success,
    /// 1: failed. A rollout: every host is back on its previous version. `status`: something
    /// is unhealthy, or the hosts run different releases.
    Failed,
    /// 2: failed and the environment is NOT consistent.
    Inconsistent,
    /// 3: refused before anything changed (`status`: a host cannot be reached).
    Refused,
    /// 4: nothing changed yet: a proposal waits for approvals (README, "Approvals").
    Waiting,
    /// 64: usage error.
    Usage,
    /// `exec`: the exit code of the command it ran (non-zero; a command that exits 0 is
    /// [`ExitClass::Success`]).
    Command(u8),
}

impl ExitClass {
    pub fn code(self) -> u8 {
        match self {
            ExitClass::Success => 0,
            ExitClass::Failed => 1,
            ExitClass::Inconsistent => 2,
            ExitClass::Refused => 3,
            ExitClass::Waiting => 4,
            ExitClass::Usage => 64,
            ExitClass::Command(code) => code,
        }
    }
}

/// Why a command stopped without doing its job.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing changed.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A usage mistake clap could not catch (e.g. an unknown `--host`). Nothing changed.
    #[error("{0}")]
    Usage(String),
    /// Refused before anything changed: policy, lock, image, host, key.
    #[error("{0}")]
    Refused(String),
    /// Ctrl-C during a rollout: orders already accepted finish on the hosts, unseen.
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    pub fn exit(&self) -> ExitClass {
        match self {
            Error::Usage(_) => ExitClass::Usage,
            Error::Config(_) | Error::Refused(_) => ExitClass::Refused,
            Error::Interrupted(_) => ExitClass::Inconsistent,
        }
    }
}

/// Runs a parsed command line to its exit class.
/// A command line clap refused: its message on stderr, or as the one summary line under
/// `--json` (command `usage`), exit 64.
pub fn usage_error(e: &clap::Error, json: bool) -> ExitClass {
    if !json {
        let _ = e.print();
        return ExitClass::Usage;
    }
    let body = output::SummaryBody::Stopped {
        result: ExitClass::Usage,
        error: usage_message(&e.to_string()),
    };
    let summary = output::Summary::new("usage", body);
    output::for_run(true).emit(&output::Message::Summary(summary));
    ExitClass::Usage
}

/// clap's message without its `error: ` and the usage and help lines after it, on one line.
fn usage_message(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

pub async fn run(cli: cli::Cli) -> ExitClass {
    let out = output::for_run(cli.json);
    commands::dispatch(cli, out.as_ref()).await
}
