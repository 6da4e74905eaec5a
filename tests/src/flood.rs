//! Abuse of an agent's socket, for the tests and the `flood` benchmark: many connections that
//! say `hello` and then nothing ([`Flood`]), one that sends half a frame and stalls
//! ([`Staller`]), the file descriptors they need ([`raise_fd_limit`]) and the agent's memory
//! ([`rss_kib`]). Plain unix sockets: an attacker does not use the controller's client.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use proto::codec::{encode, hello_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::{Error, IoContext, Result};

/// The first bytes of a `status` request: a frame begun and never finished.
pub const HALF_FRAME: &[u8] = b"{\"type\":\"sta";

/// Connections that each said `hello` and then nothing.
#[derive(Debug)]
pub struct Flood {
    conns: Vec<Idle>,
}

#[derive(Debug)]
struct Idle {
    stream: UnixStream,
    closed: bool,
}

impl Flood {
    /// Opens `n` connections one after the other (all at once would overflow the listen
    /// backlog, which is a test of the kernel, not of the agent); each sends `hello` and never
    /// reads the answer.
    pub async fn open(socket: &Path, n: usize) -> Result<Flood> {
        let hello = hello_frame()?;
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            let mut stream = UnixStream::connect(socket)
                .await
                .ctx(|| format!("flood connection {i} to {}", socket.display()))?;
            // The agent may already have closed it for room: that is its right.
            let _ = stream.write_all(&hello).await;
            conns.push(Idle {
                stream,
                closed: false,
            });
        }
        Ok(Flood { conns })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// How many of the connections the agent has closed, as of now (nothing waits).
    pub fn closed(&mut self) -> usize {
        let mut buf = [0u8; 1024];
        for conn in self.conns.iter_mut().filter(|c| !c.closed) {
            loop {
                match conn.stream.try_read(&mut buf) {
                    // What the agent said (its hello); keep reading to see whether EOF follows.
                    Ok(n) if n > 0 => continue,
                    Ok(_) => conn.closed = true,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => conn.closed = true,
                }
                break;
            }
        }
        self.conns.iter().filter(|c| c.closed).count()
    }
}

/// A connection that said `hello`, then sent [`HALF_FRAME`] and nothing more.
#[derive(Debug)]
pub struct Staller {
    stream: UnixStream,
    stalled_at: Instant,
}

impl Staller {
    pub async fn start(socket: &Path) -> Result<Staller> {
        let mut stream = UnixStream::connect(socket)
            .await
            .ctx(|| format!("staller connecting to {}", socket.display()))?;
        stream
            .write_all(&hello_frame()?)
            .await
            .ctx(|| "staller saying hello".into())?;
        stream
            .write_all(HALF_FRAME)
            .await
            .ctx(|| "staller sending half a frame".into())?;
        Ok(Staller {
            stream,
            stalled_at: Instant::now(),
        })
    }

    /// Waits for the agent to close the connection, for at most `limit`; returns how long
    /// after the half frame it did.
    pub async fn closed_within(&mut self, limit: Duration) -> Result<Duration> {
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::from_std(self.stalled_at + limit);
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Ok(self.stalled_at.elapsed()),
                Ok(Ok(_)) => continue,
                Err(_) => {
                    return Err(Error::Timeout {
                        what: "the agent to close a half-frame staller".into(),
                        after: limit,
                        last: "the connection is still open".into(),
                    });
                }
            }
        }
    }
}

fn hello_frame() -> Result<Vec<u8>> {
    encode(&hello_request("flood")).map_err(|e| Error::Unexpected(format!("encoding hello: {e}")))
}

/// Raises this process's soft limit on open files to at least `needed` (up to the hard
/// limit, through util-linux's `prlimit` on our own pid: no unsafe code, no new crate); its
/// children started afterwards inherit it. An error when the hard limit is lower.
pub fn raise_fd_limit(needed: u64) -> Result<u64> {
    let (soft, hard) = fd_limits()?;
    if soft >= needed {
        return Ok(soft);
    }
    if hard < needed {
        return Err(Error::Prereq {
            what: format!("{needed} open files (the hard limit is {hard})"),
            fix: format!("ulimit -Hn {needed}   (as root, or in /etc/security/limits.conf)"),
        });
    }
    let pid = std::process::id().to_string();
    crate::command::run(Command::new("prlimit").args([
        "--pid",
        &pid,
        &format!("--nofile={hard}:{hard}"),
    ]))?;
    Ok(fd_limits()?.0)
}

/// (soft, hard) limits on open files of this process, from `/proc/self/limits`.
fn fd_limits() -> Result<(u64, u64)> {
    let text =
        std::fs::read_to_string("/proc/self/limits").ctx(|| "reading /proc/self/limits".into())?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| Error::Unexpected("no 'Max open files' in /proc/self/limits".into()))?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .map(|w| {
            if w == "unlimited" {
                "18446744073709551615"
            } else {
                w
            }
        })
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers[..] {
        [soft, hard, ..] => Ok((soft, hard)),
        _ => Err(Error::Unexpected(format!(
            "cannot read the limits in {line:?}"
        ))),
    }
}

/// The resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).ctx(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| Error::Unexpected(format!("no VmRSS in {path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_limit_is_read_and_never_lowered() {
        let (soft, hard) = fd_limits().unwrap();
        assert!(soft <= hard);
        assert_eq!(raise_fd_limit(soft).unwrap(), soft);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
