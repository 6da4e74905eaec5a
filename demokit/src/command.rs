//! Running external programs (docker, cargo, and for the harness ssh-keygen…) with their output
//! captured, so a failure carries the program's own words.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::wait::wait_until;

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
pub fn stop_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `docker ARGS…` and returns its stdout.
pub fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args))
}

/// Waits up to `timeout` for a server we just started to serve. `ready` gets its log so far and
/// says whether it serves (`Err(text)`: not yet). When the server exits or the time runs out, it
/// is stopped and the error says why, with the log's last lines, so the caller can retry (most
/// likely another process took the port between probing it and binding it).
pub fn await_server(
    mut child: Child,
    name: &str,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut(&str) -> std::result::Result<(), String>,
) -> std::result::Result<Child, String> {
    let outcome = wait_until(&format!("{name} to serve"), timeout, || {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(Err(format!("{name} exited ({status})")));
        }
        ready(&std::fs::read_to_string(log).unwrap_or_default()).map(Ok)
    });
    let failure = match outcome {
        Ok(Ok(())) => return Ok(child),
        Ok(Err(why)) => why,
        Err(e) => e.to_string(),
    };
    stop_child(&mut child);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    Err(format!(
        "{failure}; log: {}",
        all[all.len().saturating_sub(10)..].join("\n")
    ))
}
