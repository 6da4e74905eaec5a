//! Running the external programs the harness drives (docker, ssh-keygen, cargo…) with their
//! output captured, so a failure carries the program's own words.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// `program arg arg…`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs to completion; stdout on success, else [`Error::Command`] with stderr (and stdout).
pub fn run(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .ctx(|| format!("cannot run `{}`", describe(cmd)))?;
    check(cmd, output)
}

/// Like [`run`], but kills the program and fails when it takes longer than `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let output = output_with_timeout(cmd, timeout)?;
    check(cmd, output)
}

/// The raw output (any exit status), killing the program after `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("cannot run `{}`", describe(cmd)))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_deadline(&mut child, timeout)
        .ctx(|| format!("waiting for `{}`", describe(cmd)))?
        .ok_or_else(|| Error::Timeout {
            what: format!("`{}`", describe(cmd)),
            after: timeout,
            last: String::new(),
        })?;
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads a pipe to its end on a thread, so a chatty child never blocks on a full pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Waits for the child until `timeout`; on expiry kills it and returns `None`.
fn wait_deadline(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn check(cmd: &Command, output: Output) -> Result<String> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut text = stderr.trim().to_string();
    if !stdout.trim().is_empty() {
        text.push_str(&format!("\n  stdout: {}", stdout.trim()));
    }
    Err(Error::Command {
        command: describe(cmd),
        status: output.status.to_string(),
        output: text,
    })
}

/// Kills a child process we started and reaps it; it may already have exited.
pub(crate) fn stop_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A binary of this workspace, as a user would run it: `$<env_var>` if set, else the one cargo
/// built next to the test executable (test executables live in `target/<profile>/deps`, other
/// binaries in `target/<profile>`). `scripts/test` builds them before the tests run.
pub fn workspace_binary(name: &str, env_var: &str) -> crate::error::Result<std::path::PathBuf> {
    use crate::error::{Error, IoContext};
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(path.into());
    }
    let exe = std::env::current_exe().ctx(|| "locating the test executable".into())?;
    let candidates: Vec<std::path::PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::Prereq {
            what: format!(
                "the {name} binary (looked for {})",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            fix: "cargo build --workspace --bins   (scripts/test does this)".into(),
        })
}
