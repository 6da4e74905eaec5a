//! Compose services (`kind = "compose"`) through the compose CLI: `docker compose` (v2) when the
//! Docker CLI has it, else `docker-compose` (v1). The digest is pinned by an override file the
//! engine writes; the user's compose file is never edited.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::{durable, plan};

/// Which compose CLI runs the commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// `docker compose …`
    V2,
    /// `docker-compose …` (no `--wait`: the engine waits for health itself, as it does for v2).
    V1,
}

#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(
        "neither `docker compose` nor `docker-compose` works on this host (install one: apt-get install docker-compose)"
    )]
    Missing,
    #[error("`{command}` failed ({status}): {output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
    #[error("`{command}` did not finish within {}s", timeout.as_secs())]
    TimedOut {
        command: String,
        timeout: Duration,
        output: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the compose override {}: {source}", path.display())]
    Override {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ComposeError {
    /// The command's own output, for the failure's log tail.
    pub fn output(&self) -> &str {
        match self {
            ComposeError::Failed { output, .. } | ComposeError::TimedOut { output, .. } => output,
            _ => "",
        }
    }
}

/// The compose CLI, once detected.
#[derive(Debug, Clone)]
pub struct ComposeCli {
    flavor: Flavor,
}

/// What a compose command ran and printed.
#[derive(Debug)]
pub struct Ran {
    pub output: String,
}

impl ComposeCli {
    /// `docker compose version` first, then `docker-compose version`.
    pub async fn detect() -> Result<ComposeCli, ComposeError> {
        for (flavor, program, args) in [
            (Flavor::V2, "docker", &["compose", "version"][..]),
            (Flavor::V1, "docker-compose", &["version"][..]),
        ] {
            let ok = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(ComposeCli { flavor });
            }
        }
        Err(ComposeError::Missing)
    }

    pub fn flavor(&self) -> &Flavor {
        &self.flavor
    }

    fn command(&self, files: &[&Path]) -> (Command, String) {
        let (mut cmd, mut shown) = match self.flavor {
            Flavor::V2 => {
                let mut c = Command::new("docker");
                c.arg("compose");
                (c, "docker compose".to_string())
            }
            Flavor::V1 => (Command::new("docker-compose"), "docker-compose".to_string()),
        };
        for f in files {
            cmd.arg("-f").arg(f);
            shown.push_str(&format!(" -f {}", f.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // v1's `run` without the docker CLI (COMPOSE_INTERACTIVE_NO_CLI) starts a container a
        // second time when it exits before being attached: a migration would run twice.
        cmd.env_remove("COMPOSE_INTERACTIVE_NO_CLI");
        (cmd, shown)
    }

    async fn run(
        &self,
        files: &[&Path],
        args: &[&str],
        timeout: Duration,
    ) -> Result<Ran, ComposeError> {
        let (mut cmd, mut shown) = self.command(files);
        cmd.args(args);
        for a in args {
            shown.push(' ');
            shown.push_str(a);
        }
        let child = cmd.spawn().map_err(|source| ComposeError::Spawn {
            command: shown.clone(),
            source,
        })?;
        let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| ComposeError::Spawn {
                command: shown.clone(),
                source,
            })?,
            // The child is killed on drop.
            Err(_) => {
                return Err(ComposeError::TimedOut {
                    command: shown,
                    timeout,
                    output: String::new(),
                });
            }
        };
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        // Compose passes on runc's refusal of a variable from the compose file's env_file
        // (a NUL in its value) quoting the whole `KEY=VALUE`; this output travels into outcomes.
        let output = plan::hide_env_entries(&output).into_owned();
        if !out.status.success() {
            let status = out
                .status
                .code()
                .map(|c| format!("exit {c}"))
                .unwrap_or_else(|| "killed".into());
            return Err(ComposeError::Failed {
                command: shown,
                status,
                output,
            });
        }
        Ok(Ran { output })
    }

    /// `up -d --no-deps --no-build <service>`: recreates the service's container if its
    /// configuration (here: the pinned image) changed.
    pub async fn up(&self, files: &[&Path], service: &str) -> Result<Ran, ComposeError> {
        self.run(
            files,
            &["up", "-d", "--no-deps", "--no-build", service],
            Duration::from_secs(300),
        )
        .await
    }

    /// `up -d --no-deps --no-build --force-recreate <service>`: a new container even though the
    /// configuration is unchanged (the service runs the right image but is failing).
    pub async fn recreate(&self, files: &[&Path], service: &str) -> Result<Ran, ComposeError> {
        self.run(
            files,
            &[
                "up",
                "-d",
                "--no-deps",
                "--no-build",
                "--force-recreate",
                service,
            ],
            Duration::from_secs(300),
        )
        .await
    }

    /// `run --rm -T --no-deps --name <name> <service> <command…>`, bounded by `timeout`.
    pub async fn run_once(
        &self,
        files: &[&Path],
        service: &str,
        name: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<Ran, ComposeError> {
        let mut args = vec!["run", "--rm", "-T", "--no-deps", "--name", name, service];
        args.extend(command.iter().map(String::as_str));
        self.run(files, &args, timeout).await
    }

    /// The ids of the service's containers, running or not (one-off containers excluded).
    pub async fn container_ids(
        &self,
        files: &[&Path],
        service: &str,
    ) -> Result<Vec<String>, ComposeError> {
        let args: &[&str] = match self.flavor {
            // v1 lists stopped service containers by default; its `-a` would add one-off ones.
            Flavor::V1 => &["ps", "-q", service],
            Flavor::V2 => &["ps", "-a", "-q", service],
        };
        let ran = self.run(files, args, Duration::from_secs(60)).await?;
        Ok(ran
            .output
            .lines()
            .map(str::trim)
            .filter(|l| is_hex_id(l))
            .map(str::to_owned)
            .collect())
    }

    /// `rm -s -f <service>`: stops and removes the service's container.
    pub async fn remove(&self, files: &[&Path], service: &str) -> Result<Ran, ComposeError> {
        self.run(
            files,
            &["rm", "-s", "-f", service],
            Duration::from_secs(120),
        )
        .await
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The override file pinning one service's image to a digest and labelling its container so
/// the agent recognises it. Strings are written as JSON strings, which YAML reads verbatim.
pub fn override_yaml(
    compose_service: &str,
    image: &str,
    labels: &BTreeMap<String, String>,
) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut y = String::from(
        "# Written by deploy-agent: pins the image deployed by digest. Do not edit.\n",
    );
    y.push_str("services:\n");
    y.push_str(&format!("  {}:\n", q(compose_service)));
    y.push_str(&format!("    image: {}\n", q(image)));
    if !labels.is_empty() {
        y.push_str("    labels:\n");
        for (k, v) in labels {
            y.push_str(&format!("      {}: {}\n", q(k), q(v)));
        }
    }
    y
}

/// Where the engine keeps a compose service's override files, under its state directory.
#[derive(Debug, Clone)]
pub struct OverridePaths {
    /// The override in force: what the service runs now.
    pub current: PathBuf,
    /// The override in force before the order now running (absent file: there was none).
    pub previous: PathBuf,
    /// The record of which order wrote `previous`.
    pub previous_order: PathBuf,
    /// The override used for one migration run.
    pub migration: PathBuf,
}

impl OverridePaths {
    pub fn new(state_dir: &Path, key: &str) -> Self {
        let dir = state_dir.join("compose");
        OverridePaths {
            current: dir.join(format!("{key}.override.yml")),
            previous: dir.join(format!("{key}.previous.yml")),
            previous_order: dir.join(format!("{key}.previous.order")),
            migration: dir.join(format!("{key}.migrate.yml")),
        }
    }
}

/// Writes a file so a crash leaves either the old or the new content, never a torn one, and
/// the new content is on disk when this returns ([`durable::write_atomic`]).
pub fn write_atomically(path: &Path, content: &str) -> Result<(), ComposeError> {
    let err = |source| ComposeError::Override {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        durable::create_dir_all(dir).map_err(err)?;
    }
    durable::write_atomic(path, content.as_bytes()).map_err(err)
}

/// Removes an override file (absent is fine), durably: it does not come back after a crash.
pub fn remove_file(path: &Path) -> Result<(), ComposeError> {
    durable::remove(path).map_err(|source| ComposeError::Override {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_pins_the_digest_and_labels() {
        let labels: BTreeMap<String, String> =
            [("deployctl.host", "h1"), ("deployctl.ref", "v1 \"quoted\"")]
                .map(|(k, v)| (k.into(), v.into()))
                .into();
        let y = override_yaml("api", "r/acme@sha256:00", &labels);
        assert!(
            y.contains("services:\n  \"api\":\n    image: \"r/acme@sha256:00\"\n"),
            "{y}"
        );
        assert!(
            y.contains("      \"deployctl.ref\": \"v1 \\\"quoted\\\"\"\n"),
            "{y}"
        );
        let bare = override_yaml("api", "r@sha256:00", &BTreeMap::new());
        assert!(!bare.contains("labels"), "{bare}");
    }

    #[test]
    fn container_ids_are_recognised() {
        assert!(is_hex_id("0123456789abcdef"));
        assert!(!is_hex_id("Creating network"));
        assert!(!is_hex_id("abc"));
    }
}
