//! Credential helpers: `docker-credential-<name> get`, the registry's address on stdin, a JSON
//! `{"Username", "Secret"}` reply on stdout (the protocol of docker/docker-credential-helpers).
//! Running one is IO; what its reply means is [`reply`], pure.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Credential;

/// What a store answers for a registry it holds nothing for (exit 1): anonymous, as for Docker.
const NOT_FOUND: &str = "credentials not found in native keychain";
/// A reply longer than this is not a credential; reading stops there.
const MAX_REPLY: u64 = 64 * 1024;
/// Most of a failing helper's message that goes into ours.
const MAX_MESSAGE: usize = 400;

/// Why a helper gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum HelperProblem {
    #[error("{0:?} is not a helper name (letters, digits, '.', '_' and '-' only)")]
    BadName(String),
    #[error("the program is not on PATH (searched {searched})")]
    NotFound { searched: String },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("it failed ({status}): {message}")]
    Failed { status: String, message: String },
    #[error("it did not answer within {0:?} and was killed")]
    TimedOut(Duration),
    #[error("its reply is not the JSON {{\"Username\": …, \"Secret\": …}} expected: {0}")]
    Malformed(String),
}

/// Asks helper `name` for `server`'s credentials; `Ok(None)` when it holds none.
pub(crate) fn get(
    name: &str,
    server: &str,
    search_path: Option<&OsStr>,
    timeout: Duration,
) -> Result<Option<Credential>, HelperProblem> {
    let program = find_program(name, search_path)?;
    let (status, stdout, stderr) = run(&program, server, timeout)?;
    reply(status, &stdout, &stderr)
}

/// `docker-credential-<name>` in the first directory of `search_path` (else `PATH`) holding it
/// as an executable file.
fn find_program(name: &str, search_path: Option<&OsStr>) -> Result<PathBuf, HelperProblem> {
    // The name becomes a file name: no path may be smuggled in through it.
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.');
    if !valid {
        return Err(HelperProblem::BadName(name.to_string()));
    }
    let file = format!("docker-credential-{name}");
    let path_var = match search_path {
        Some(p) => p.to_os_string(),
        None => std::env::var_os("PATH").unwrap_or_default(),
    };
    std::env::split_paths(&path_var)
        // An empty entry would mean the working directory: never run a program from there.
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(&file))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| HelperProblem::NotFound {
            searched: path_var.to_string_lossy().into_owned(),
        })
}

/// Runs `program get` with `server` on stdin; its status, stdout and stderr. Killed past
/// `timeout`.
fn run(
    program: &PathBuf,
    server: &str,
    timeout: Duration,
) -> Result<(ExitStatus, Vec<u8>, Vec<u8>), HelperProblem> {
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| HelperProblem::Spawn {
            program: program.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading gives a broken pipe here; its status tells more.
        let _ = stdin.write_all(server.as_bytes());
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HelperProblem::TimedOut(timeout));
            }
            Err(source) => {
                let _ = child.kill();
                return Err(HelperProblem::Spawn {
                    program: program.clone(),
                    source,
                });
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok((status, stdout, stderr))
}

/// Reads a pipe to its end (at most [`MAX_REPLY`]) on its own thread, so a helper that writes
/// much to one pipe cannot block on it while we wait for its exit.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(MAX_REPLY).read_to_end(&mut out);
        }
        out
    })
}

/// What a helper's exit and output mean: credentials, none (the store's "not found", or an
/// empty reply), or a problem. Never repeats a reply in a message: it may hold the secret.
pub(crate) fn reply(
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<Option<Credential>, HelperProblem> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        username: String,
        secret: String,
    }
    if !status.success() {
        let out = String::from_utf8_lossy(stdout);
        if out.trim() == NOT_FOUND {
            return Ok(None);
        }
        let err = String::from_utf8_lossy(stderr);
        let message = [err.trim(), out.trim()]
            .into_iter()
            .find(|m| !m.is_empty())
            .unwrap_or("no message");
        let message: String = message.chars().take(MAX_MESSAGE).collect();
        return Err(HelperProblem::Failed {
            status: status.to_string(),
            message,
        });
    }
    let reply: Reply = serde_json::from_slice(stdout).map_err(|e| {
        HelperProblem::Malformed(match e.classify() {
            serde_json::error::Category::Data if e.to_string().starts_with("missing field") => {
                e.to_string()
            }
            serde_json::error::Category::Data => "a field is not a string".to_string(),
            serde_json::error::Category::Eof if stdout.trim_ascii().is_empty() => {
                "it printed nothing".to_string()
            }
            _ => format!("not JSON (at line {}, column {})", e.line(), e.column()),
        })
    })?;
    Ok(match (reply.username.as_str(), reply.secret) {
        (_, secret) if secret.is_empty() => None,
        // The helper protocol's marker for an identity token (what `docker login` stores for
        // registries that hand out refresh tokens).
        ("<token>", secret) => Some(Credential::IdentityToken(secret)),
        (username, password) => Some(Credential::Basic {
            username: username.to_string(),
            password,
        }),
    })
}
