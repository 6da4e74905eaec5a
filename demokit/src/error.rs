//! The one error type of demokit and of the test harness, which re-exports it: every failure
//! says what was being done and what came back.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A prerequisite is missing; `fix` is the command or setting that provides it.
    #[error("missing prerequisite: {what}\n  fix: {fix}")]
    Prereq { what: String, fix: String },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    /// A program could not be started or its IO failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A condition polled with a deadline did not come true.
    #[error("timed out after {after:?} waiting for {what}{}", if last.is_empty() { String::new() } else { format!(" (last seen: {last})") })]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    /// Something answered, but not in the expected shape.
    #[error("{0}")]
    Unexpected(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Attaches "what was being done" to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
