//! Several "hosts" for the controller's tests, each as real as this machine allows: its own
//! `deploy-agent` (own state dir, socket, host name and container prefix) reachable only
//! through its own OpenSSH `sshd` on a loopback port, plus a home directory for `deployctl`
//! holding the user's SSH key, a `known_hosts` with every host key, and the signing key all
//! agents trust. [`Fleet::deployctl`] runs the built `deployctl` binary as a user would.
//!
//! All hosts share this machine's Docker engine; the unique container prefixes keep them apart.
//! Dropping a [`Fleet`] kills every agent and sshd and removes the agents' containers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::agents::{AgentProc, AgentSetup, agent_binary};
use crate::command::{describe, output_with_timeout};
use crate::error::{Error, IoContext, Result};
use crate::sshd::{ClientKey, Sshd, SshdOptions};

/// The longest a single `deployctl` command may take in a test.
pub const DEPLOYCTL_TIMEOUT: Duration = Duration::from_secs(240);

/// The built `deployctl` binary: `$DEPLOYCTL_BIN`, else next to the test executable.
pub fn deployctl_binary() -> Result<PathBuf> {
    crate::command::workspace_binary("deployctl", "DEPLOYCTL_BIN")
}

/// One env of a [`Fleet`] as planned.
#[derive(Debug, Clone)]
pub struct EnvPlan {
    pub name: String,
    pub hosts: usize,
    pub max_parallel: usize,
    pub requires: Option<String>,
    /// More lines of the env's table, as written (`canary = { … }`).
    pub lines: Vec<String>,
}

impl EnvPlan {
    pub fn new(name: &str, hosts: usize) -> EnvPlan {
        EnvPlan {
            name: name.to_string(),
            hosts,
            max_parallel: 1,
            requires: None,
            lines: Vec::new(),
        }
    }

    pub fn max_parallel(mut self, n: usize) -> EnvPlan {
        self.max_parallel = n;
        self
    }

    pub fn requires(mut self, env: &str) -> EnvPlan {
        self.requires = Some(env.to_string());
        self
    }

    /// One more line of the env's table in deploy.toml.
    pub fn line(mut self, line: &str) -> EnvPlan {
        self.lines.push(line.to_string());
        self
    }
}

/// An agent behind its own sshd.
pub struct SshHost {
    pub agent: AgentProc,
    pub sshd: Sshd,
}

impl std::fmt::Debug for SshHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshHost")
            .field("agent", &self.agent)
            .field("sshd", &self.sshd)
            .finish()
    }
}

impl SshHost {
    /// The agent's host name, which is also the host's name in deploy.toml.
    pub fn name(&self) -> &str {
        self.agent.host()
    }

    /// `{ name = "…", ssh = "user@127.0.0.1:PORT", socket = "…" }`
    pub fn toml_entry(&self) -> String {
        format!(
            "{{ name = {}, ssh = {}, socket = {} }}",
            quote(self.agent.host()),
            quote(&self.sshd.host_spec()),
            quote(&self.agent.socket().display().to_string())
        )
    }
}

/// TOML basic string (JSON string syntax is a subset of it for what we write).
pub fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// What one `deployctl` run did.
#[derive(Debug, Clone)]
pub struct Run {
    pub command: String,
    /// None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout and stderr together, for "the output says …" assertions.
    pub fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The `--json` lines of stdout, parsed (non-JSON lines are skipped).
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The summary of a `--json` run, held to the `--json` contract (README, "Output"): every
    /// stdout line is a JSON object naming its `event`, and exactly one summary ends the output
    /// carrying the process's exit code.
    pub fn summary(&self) -> Result<serde_json::Value> {
        let broken = |why: String| {
            Error::Unexpected(format!(
                "`{}` broke the --json contract: {why}\n{}",
                self.command,
                self.output()
            ))
        };
        let mut objects = Vec::new();
        for (i, line) in self.stdout.lines().enumerate() {
            let value: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| broken(format!("stdout line {} is no JSON ({e}): {line:?}", i + 1)))?;
            if !(value.is_object() && value["event"].is_string()) {
                return Err(broken(format!("line {} is no event object: {line}", i + 1)));
            }
            objects.push(value);
        }
        let summaries = objects.iter().filter(|v| v["event"] == "summary").count();
        let last = objects
            .pop()
            .ok_or_else(|| broken("no output at all".into()))?;
        if summaries != 1 || last["event"] != "summary" {
            return Err(broken(format!(
                "{summaries} summaries, the last line {last}"
            )));
        }
        if last["exit_code"].as_i64() != self.code.map(i64::from) {
            return Err(broken(format!(
                "exited {:?}, its summary says {}",
                self.code, last["exit_code"]
            )));
        }
        Ok(last)
    }

    /// Fails with the whole output unless the exit code is `want`.
    pub fn expect(&self, want: i32) -> Result<&Run> {
        if self.code == Some(want) {
            Ok(self)
        } else {
            Err(Error::Unexpected(format!(
                "`{}` exited {:?}, expected {want}; its output:\n--- stdout\n{}\n--- stderr\n{}",
                self.command, self.code, self.stdout, self.stderr
            )))
        }
    }
}

/// A set of envs of SSH hosts and a home directory for `deployctl`.
pub struct Fleet {
    envs: Vec<(EnvPlan, Vec<SshHost>)>,
    pub user_key: ClientKey,
    /// `~/.config/deployctl/key` in [`Fleet::home`]: the default signing key, trusted by every agent.
    pub signing_key: PathBuf,
    pub signing_line: String,
    pub deployctl: PathBuf,
    home: tempfile::TempDir,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("home", &self.home.path())
            .field("envs", &self.envs)
            .finish()
    }
}

impl Fleet {
    /// Starts every host of every env: agents allowing `allowed_images`, trusting the fleet's
    /// signing key, each behind an sshd that lets the fleet's user key in and finds
    /// `deploy-agent` on its PATH. `adjust(env, index, setup)` may change a host before it starts.
    pub fn start(
        plans: &[EnvPlan],
        allowed_images: &[&str],
        mut adjust: impl FnMut(&str, usize, &mut AgentSetup),
    ) -> Result<Fleet> {
        let deployctl = deployctl_binary()?;
        let agent_dir = agent_binary()?
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::Unexpected("deploy-agent has no parent dir".into()))?;
        let home = tempfile::Builder::new()
            .prefix("deployctl-home-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let ssh_dir = home.path().join(".ssh");
        std::fs::create_dir_all(&ssh_dir).ctx(|| format!("creating {}", ssh_dir.display()))?;
        let user_key = ClientKey::generate(&ssh_dir)?;
        let key_path = home.path().join(".config/deployctl/key");
        let generated = deployctl::signer::generate_key_files(&key_path, "deployer@deployctl-test")
            .map_err(|e| Error::Unexpected(format!("generating the signing key: {e}")))?;
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            agent_dir.display()
        );
        let mut envs = Vec::new();
        let mut known_hosts = String::new();
        for plan in plans {
            let mut hosts = Vec::new();
            for i in 0..plan.hosts {
                let mut setup = AgentSetup::new(allowed_images);
                setup.env = plan.name.clone();
                setup.extra_signers = vec![generated.allowed_signers_line.clone()];
                let sshd = Sshd::start_with(SshdOptions {
                    authorized_keys: vec![user_key.public_line.clone()],
                    set_env: vec![("PATH".into(), path.clone())],
                    extra_config: Vec::new(),
                })?;
                // The agent knows the key of the sshd in front of it, as it would know its
                // host's /etc/ssh keys.
                setup.host_keys = vec![sshd.host_public_key_path()];
                adjust(&plan.name, i, &mut setup);
                let agent = AgentProc::start(setup)?;
                known_hosts.push_str(&sshd.known_hosts_line());
                known_hosts.push('\n');
                hosts.push(SshHost { agent, sshd });
            }
            envs.push((plan.clone(), hosts));
        }
        let kh = ssh_dir.join("known_hosts");
        std::fs::write(&kh, known_hosts).ctx(|| format!("writing {}", kh.display()))?;
        // The user key under a default name, so deployctl finds it as ssh would.
        let id = ssh_dir.join("id_ed25519");
        std::fs::copy(&user_key.private_path, &id).ctx(|| format!("writing {}", id.display()))?;
        Ok(Fleet {
            envs,
            user_key,
            signing_key: generated.private_path,
            signing_line: generated.allowed_signers_line,
            deployctl,
            home,
        })
    }

    /// `deployctl`'s home directory (and working directory).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    pub fn hosts(&self, env: &str) -> &[SshHost] {
        self.envs
            .iter()
            .find(|(p, _)| p.name == env)
            .map(|(_, h)| h.as_slice())
            .unwrap_or(&[])
    }

    pub fn hosts_mut(&mut self, env: &str) -> &mut [SshHost] {
        self.envs
            .iter_mut()
            .find(|(p, _)| p.name == env)
            .map(|(_, h)| h.as_mut_slice())
            .unwrap_or(&mut [])
    }

    /// Every host of every env.
    pub fn all_hosts(&self) -> impl Iterator<Item = &SshHost> {
        self.envs.iter().flat_map(|(_, h)| h.iter())
    }

    /// The `[env.*]` tables for the fleet, hosts in start order.
    pub fn env_tables(&self) -> String {
        let mut out = String::new();
        for (plan, hosts) in &self.envs {
            out.push_str(&format!("\n[env.{}]\nhosts = [\n", plan.name));
            for h in hosts {
                out.push_str(&format!("  {},\n", h.toml_entry()));
            }
            out.push_str(&format!("]\nmax_parallel = {}\n", plan.max_parallel));
            if let Some(r) = &plan.requires {
                out.push_str(&format!("requires = {}\n", quote(r)));
            }
            for line in &plan.lines {
                out.push_str(&format!("{line}\n"));
            }
        }
        out
    }

    /// Writes `deploy.toml` in the home directory: `head` (app, image, services, migrate) and
    /// the fleet's env tables.
    pub fn write_config(&self, head: &str) -> Result<PathBuf> {
        self.write_file("deploy.toml", &format!("{head}\n{}", self.env_tables()))
    }

    /// Writes a file in the home directory.
    pub fn write_file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.home.path().join(name);
        std::fs::write(&path, text).ctx(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A `deployctl` command as a user in [`Fleet::home`] would type it: `HOME` there, no
    /// ssh-agent, no inherited deployctl settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.deployctl);
        cmd.args(args)
            .current_dir(self.home.path())
            .env("HOME", self.home.path())
            .env("DEPLOYCTL_ISSUED_BY", "e2e@deployctl-test")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DEPLOYCTL_SIGNING_KEY")
            .env_remove("DEPLOYCTL_SSH_IDENTITY")
            .env_remove("DEPLOYCTL_REMOTE_AGENT")
            .env_remove("DOCKER_CONFIG")
            .env_remove("GITHUB_ACTIONS")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `deployctl args…` to completion (any exit code).
    pub fn deployctl(&self, args: &[&str]) -> Result<Run> {
        self.run(&mut self.command(args))
    }

    /// Runs a prepared [`Fleet::command`] to completion.
    pub fn run(&self, cmd: &mut Command) -> Result<Run> {
        let command = describe(cmd);
        let out = output_with_timeout(cmd, DEPLOYCTL_TIMEOUT)?;
        Ok(Run {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts `deployctl args…` and lets the test read its stdout lines as they come (for
    /// `--json` runs the test acts on mid-way); killed if dropped before it ends.
    pub fn spawn(&self, args: &[&str]) -> Result<Live> {
        Live::start(self.command(args))
    }
}

/// A running `deployctl` whose stdout lines arrive as it writes them.
pub struct Live {
    command: String,
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    deadline: std::time::Instant,
}

impl Live {
    fn start(mut cmd: Command) -> Result<Live> {
        use std::io::{BufRead, Read};
        let what = describe(&cmd);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ctx(|| format!("starting {what}"))?;
        let missing = |what: &str| Error::Unexpected(format!("no {what} pipe"));
        let stdout = child.stdout.take().ok_or_else(|| missing("stdout"))?;
        let mut stderr = child.stderr.take().ok_or_else(|| missing("stderr"))?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Ok(Live {
            command: what,
            child,
            lines,
            seen: Vec::new(),
            stderr: Some(stderr),
            deadline: std::time::Instant::now() + DEPLOYCTL_TIMEOUT,
        })
    }

    /// The JSON lines read up to and including the first one `until` accepts.
    pub fn read_until(
        &mut self,
        mut until: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<Vec<serde_json::Value>> {
        let mut read = Vec::new();
        loop {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|e| {
                Error::Unexpected(format!(
                    "{e} before the line awaited; `{}` printed:\n{}",
                    self.command,
                    self.seen.join("\n")
                ))
            })?;
            self.seen.push(line.clone());
            let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let done = until(&value);
            read.push(value);
            if done {
                return Ok(read);
            }
        }
    }

    /// The first JSON line `until` accepts.
    pub fn until(
        &mut self,
        until: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let mut read = self.read_until(until)?;
        read.pop()
            .ok_or_else(|| Error::Unexpected("no line read".into()))
    }

    /// Reads the rest and waits for the exit.
    pub fn finish(mut self) -> Result<Run> {
        loop {
            let left = self
                .deadline
                .saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(e) => {
                    return Err(Error::Unexpected(format!(
                        "`{}`: {e}:\n{}",
                        self.command,
                        self.seen.join("\n")
                    )));
                }
            }
        }
        let status = self
            .child
            .wait()
            .ctx(|| format!("waiting for {}", self.command))?;
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        Ok(Run {
            command: self.command.clone(),
            code: status.code(),
            stdout: self.seen.join("\n"),
            stderr,
        })
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
