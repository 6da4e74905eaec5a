//! The Docker engine through its CLI, for setting up and asserting on what tests cause: unique
//! names, inspection, and a [`Cleanup`] guard that removes everything a test labelled or named
//! even when the test fails.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use demokit::docker;

use crate::error::{Error, Result};

/// Label the harness puts on containers it starts itself (its value: the test's unique name).
pub const TEST_LABEL: &str = "deployctl.test";

/// A name no other test (in this or a parallel process, or an earlier run) uses:
/// `prefix-<pid hex><time hex><counter>`, lowercase, valid for containers, networks, volumes
/// and compose projects.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:04x}{n}",
        std::process::id(),
        (nanos >> 12) & 0xffff
    )
}

/// `docker inspect NAME` (container, image, network or volume): the first object.
pub fn docker_inspect(name: &str) -> Result<serde_json::Value> {
    let out = docker(&["inspect", name])?;
    let mut all: Vec<serde_json::Value> = serde_json::from_str(&out)
        .map_err(|e| Error::Unexpected(format!("docker inspect {name}: not JSON: {e}")))?;
    if all.is_empty() {
        return Err(Error::Unexpected(format!(
            "docker inspect {name}: nothing found"
        )));
    }
    Ok(all.swap_remove(0))
}

fn is_missing(e: &Error) -> bool {
    matches!(e, Error::Command { output, .. } if output.contains("No such"))
}

/// True when a container of that name exists (in any state).
pub fn container_exists(name: &str) -> Result<bool> {
    match docker(&["container", "inspect", "--format", "{{.Id}}", name]) {
        Ok(_) => Ok(true),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// True when the container exists and is running; a missing container is not running.
pub fn container_running(name: &str) -> Result<bool> {
    match docker(&[
        "container",
        "inspect",
        "--format",
        "{{.State.Running}}",
        name,
    ]) {
        Ok(out) => Ok(out.trim() == "true"),
        Err(e) if is_missing(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The Docker health status (`starting`, `healthy`, `unhealthy`), or `None` for a container
/// whose image has no HEALTHCHECK.
pub fn container_health(name: &str) -> Result<Option<String>> {
    let out = docker(&[
        "container",
        "inspect",
        "--format",
        "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
        name,
    ])?;
    let status = out.trim();
    Ok((!status.is_empty()).then(|| status.to_string()))
}

/// The container's IP address on its first network (reachable from this host on Linux).
pub fn container_ip(name: &str) -> Result<String> {
    let out = docker(&[
        "container",
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        name,
    ])?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| {
            Error::Unexpected(format!("container {name} has no IP address (not running?)"))
        })
}

/// The host port that `container_port/tcp` is published on, e.g. after `-p 127.0.0.1::8080`.
pub fn published_port(name: &str, container_port: u16) -> Result<u16> {
    let out = docker(&["port", name, &format!("{container_port}/tcp")])?;
    out.lines()
        .filter_map(|l| l.trim().rsplit_once(':'))
        .find_map(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| {
            Error::Unexpected(format!(
                "{name}: port {container_port}/tcp is not published: {out:?}"
            ))
        })
}

/// stdout and stderr of a container, interleaved as docker keeps them.
pub fn container_logs(name: &str) -> Result<String> {
    let output = Command::new("docker")
        .args(["logs", name])
        .output()
        .map_err(|e| Error::io(format!("docker logs {name}"), e))?;
    if !output.status.success() {
        return Err(Error::Command {
            command: format!("docker logs {name}"),
            status: output.status.to_string(),
            output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok(text)
}

/// Names of the containers (any state) carrying label `key=value`.
pub fn containers_with_label(key: &str, value: &str) -> Result<Vec<String>> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={key}={value}"),
        "--format",
        "{{.Names}}",
    ])?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Removes, when dropped (so also when a test panics), every container, network and volume that
/// carries one of its labels or was named to it. Put it in scope before causing anything:
///
/// ```no_run
/// let host = harness::unique_name("host");
/// let _cleanup = harness::Cleanup::label("deployctl.host", &host);
/// ```
#[derive(Debug, Default)]
pub struct Cleanup {
    labels: Vec<String>,
    containers: BTreeSet<String>,
    networks: BTreeSet<String>,
    volumes: BTreeSet<String>,
}

impl Cleanup {
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// A guard for everything labelled `key=value`.
    pub fn label(key: &str, value: &str) -> Cleanup {
        let mut c = Cleanup::new();
        c.add_label(key, value);
        c
    }

    /// Also removes everything labelled `key=value` (labels are alternatives, not all required).
    pub fn add_label(&mut self, key: &str, value: &str) -> &mut Cleanup {
        self.labels.push(format!("{key}={value}"));
        self
    }

    /// Also removes this container (for ones whose labels the test does not control).
    pub fn container(&mut self, name: &str) -> &mut Cleanup {
        self.containers.insert(name.to_string());
        self
    }

    pub fn network(&mut self, name: &str) -> &mut Cleanup {
        self.networks.insert(name.to_string());
        self
    }

    pub fn volume(&mut self, name: &str) -> &mut Cleanup {
        self.volumes.insert(name.to_string());
        self
    }

    /// Everything docker-compose (v1 or v2) created for project `name`.
    pub fn compose_project(&mut self, name: &str) -> &mut Cleanup {
        self.add_label("com.docker.compose.project", name)
    }

    /// Removes now (containers, then networks, then volumes); safe to call again. Keeps going
    /// past failures and reports them all.
    pub fn run(&self) -> Result<()> {
        let mut errors = Vec::new();
        let mut found = |kind: &str, fixed: &BTreeSet<String>| -> BTreeSet<String> {
            let mut names = fixed.clone();
            for label in &self.labels {
                let args: Vec<&str> = match kind {
                    "container" => vec!["ps", "-aq", "--no-trunc"],
                    "network" => vec!["network", "ls", "-q"],
                    _ => vec!["volume", "ls", "-q"],
                };
                let mut args = args;
                let filter = format!("label={label}");
                args.extend(["--filter", &filter]);
                match docker(&args) {
                    Ok(out) => names.extend(out.split_whitespace().map(str::to_string)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            names
        };
        let containers = found("container", &self.containers);
        let networks = found("network", &self.networks);
        let volumes = found("volume", &self.volumes);
        let mut remove = |base: &[&str], names: &BTreeSet<String>| {
            if names.is_empty() {
                return;
            }
            let mut args: Vec<&str> = base.to_vec();
            args.extend(names.iter().map(String::as_str));
            if let Err(e) = docker(&args) {
                // Already gone is what we wanted.
                if !is_missing(&e) {
                    errors.push(e.to_string());
                }
            }
        };
        remove(&["rm", "-f", "-v"], &containers);
        remove(&["network", "rm"], &networks);
        remove(&["volume", "rm", "-f"], &volumes);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Unexpected(format!("cleanup: {}", errors.join("; "))))
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.run() {
            eprintln!("harness: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_are_docker_safe() {
        let a = unique_name("host");
        let b = unique_name("host");
        assert_ne!(a, b);
        for n in [a, b] {
            assert!(n.starts_with("host-"));
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
                "{n}"
            );
        }
    }
}
