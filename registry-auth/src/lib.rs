//! `registry-auth` owns registry credentials: what authenticates the controller (resolving refs
//! over the registry API) and the engine (pulling through the Docker engine) to a registry,
//! found the way the Docker CLI finds them in a client config (`config.json`): a per-registry
//! `credHelpers` program, else the `credsStore` program, else an `auths` entry. A helper is a
//! `docker-credential-<name>` program on the search path (README, "Registry credentials").
//!
//! Both sides ask [`DockerConfig::credentials`], so they never disagree on which credentials a
//! registry gets. Reading files and running programs is IO, so this is not `proto`'s; which
//! source applies and what a reply means are pure functions (`config`, `helper::reply`).
//!
//! Why not the `docker_credential` crate (1.3.3, read before writing this): it runs a helper
//! with no time limit, so a helper that prompts would hold a host's deploy forever; it finds
//! helpers only on this process's `PATH`, which the agent could change only with `set_var`
//! (unsafe in edition 2024, and we forbid unsafe code); a store's "credentials not found" is an
//! error there where Docker pulls anonymously; `credHelpers` keys must match exactly; `auths`
//! entries with `username` + `password` are not read; and its errors name no file, key or
//! helper. Each of those is a failed deploy an operator could not explain, so this crate keeps
//! Docker's rules (README, "Registry credentials") in 600 lines of its own.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod config;
mod helper;

pub use config::{DOCKER_HUB, DOCKER_HUB_SERVER, normalise, registry_host, server_address};
pub use helper::HelperProblem;

/// How long a helper may take to answer. A helper that prompts (a locked keychain, a GPG
/// pinentry) must not hold a push or a host's deploy forever.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// What authenticates us to a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in `auths`, or a helper's reply for the user
    /// `<token>`): exchanged at the registry's token endpoint, never sent as a password.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    // Never print a secret, not even in a debug log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(..)"),
        }
    }
}

/// Where credentials came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The `auths` entry under this key, as written.
    Auths { key: String },
    /// `docker-credential-<name>`, named by `credHelpers` or `credsStore`.
    Helper { name: String, named_by: HelperKey },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Auths { key } => write!(f, "auths entry {key:?}"),
            Source::Helper { name, named_by } => {
                write!(f, "docker-credential-{name} ({named_by})")
            }
        }
    }
}

/// The config key that named a helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperKey {
    CredHelpers,
    CredsStore,
}

impl std::fmt::Display for HelperKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HelperKey::CredHelpers => "credHelpers",
            HelperKey::CredsStore => "credsStore",
        })
    }
}

/// One registry's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub credential: Credential,
    /// The registry as Docker names it to the engine (`serveraddress`): the `auths` key, or
    /// the address the helper was asked for.
    pub server: String,
    pub source: Source,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the Docker config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Docker config {path} is not valid: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("the Docker config {path}: auths entry {key:?} for {registry}: {detail}")]
    Entry {
        path: PathBuf,
        key: String,
        registry: String,
        detail: String,
    },
    #[error(
        "credential helper docker-credential-{name} ({named_by} in {path}) for {registry}: {problem}"
    )]
    Helper {
        name: String,
        named_by: HelperKey,
        path: PathBuf,
        registry: String,
        /// Boxed: the other variants are half its size.
        problem: Box<HelperProblem>,
    },
}

/// A Docker client config to take credentials from, and where its helpers are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// None: no config at all (no `DOCKER_CONFIG` and no `HOME`), so every registry is anonymous.
    path: Option<PathBuf>,
    /// The directories to find `docker-credential-*` in; None: this process's `PATH`.
    search_path: Option<OsString>,
    timeout: Duration,
}

impl DockerConfig {
    /// The Docker CLI's own choice: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn from_env() -> DockerConfig {
        let dir = std::env::var_os("DOCKER_CONFIG")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")));
        DockerConfig {
            path: dir.map(|d| d.join("config.json")),
            search_path: None,
            timeout: HELPER_TIMEOUT,
        }
    }

    /// The config file at `path` (e.g. `docker_config` in agent.toml).
    pub fn at(path: impl Into<PathBuf>) -> DockerConfig {
        DockerConfig {
            path: Some(path.into()),
            ..DockerConfig::from_env()
        }
    }

    /// Finds helpers in these directories (`PATH` syntax) instead of this process's `PATH`.
    pub fn search_helpers_in(mut self, search_path: impl Into<OsString>) -> DockerConfig {
        self.search_path = Some(search_path.into());
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> DockerConfig {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// What authenticates us to `registry` (`host[:port]`, an `auths` key, or a Docker Hub
    /// alias). `Ok(None)` is anonymous: no config file, nothing in it for this registry, or a
    /// store that holds nothing for it. Runs a helper when the config names one: blocking, up
    /// to the timeout; async callers run it on a blocking thread.
    pub fn credentials(&self, registry: &str) -> Result<Option<Found>, AuthError> {
        let Some(path) = &self.path else {
            return Ok(None);
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AuthError::Read {
                    path: path.clone(),
                    source,
                });
            }
        };
        let file = config::ConfigFile::parse(&text).map_err(|detail| AuthError::Parse {
            path: path.clone(),
            detail,
        })?;
        match file.choose(registry) {
            config::Choice::Anonymous => Ok(None),
            config::Choice::Entry { key, entry } => {
                let credential = entry.credential().map_err(|detail| AuthError::Entry {
                    path: path.clone(),
                    key: key.to_string(),
                    registry: registry.to_string(),
                    detail,
                })?;
                Ok(credential.map(|credential| Found {
                    credential,
                    server: key.to_string(),
                    source: Source::Auths {
                        key: key.to_string(),
                    },
                }))
            }
            config::Choice::Helper { name, named_by } => {
                let server = server_address(registry);
                let credential =
                    helper::get(name, &server, self.search_path.as_deref(), self.timeout).map_err(
                        |problem| AuthError::Helper {
                            name: name.to_string(),
                            named_by,
                            path: path.clone(),
                            registry: registry.to_string(),
                            problem: Box::new(problem),
                        },
                    )?;
                Ok(credential.map(|credential| Found {
                    credential,
                    server,
                    source: Source::Helper {
                        name: name.to_string(),
                        named_by,
                    },
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests;
