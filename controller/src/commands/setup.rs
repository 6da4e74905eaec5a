//! `deployctl setup --env E [--dry-run] [--upgrade] [--ssh-user U]`: each host of the env from
//! nothing to an agent that answers (README, "deployctl setup"). The probe, the steps and the
//! check run over SSH here; what to do is decided by [`crate::setup::plan`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{find_env, load_signer};
use crate::config::{DeployConfig, EnvConfig, HostSpec, SshTarget, Target};
use crate::connector::check_peer;
use crate::output::{
    Message, Output, SetupHost, SetupResult, SetupSummary, StepState, Summary, SummaryBody,
};
use crate::setup::{self, Desired, HostFacts, Mode, Plan};
use crate::transport::{self, ConnectOptions, RemoteShell, shell_quote};
use crate::{Error, ExitClass};

/// How long `--upgrade` waits for a host's running jobs before replacing its agent.
const IDLE_WAIT: Duration = Duration::from_secs(15 * 60);
/// How long a freshly started agent has to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct SetupArgs<'a> {
    pub env: &'a str,
    pub dry_run: bool,
    pub mode: Mode,
    pub ssh_user: String,
    pub agent_binary: Option<PathBuf>,
}

/// The agent binary to upload and what is known of it.
struct Binary {
    bytes: Vec<u8>,
    sha256: String,
    arch: String,
}

pub async fn setup(
    cfg: &DeployConfig,
    args: SetupArgs<'_>,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, args.env)?;
    let binary = load_binary(args.agent_binary.as_deref())?;
    let signer = load_signer(env).await?;
    let signer_line = crate::signer::allowed_signers_line(signer.public_key())
        .map_err(|e| Error::Refused(format!("the env's signing key: {e}")))?;
    let opts = ConnectOptions::from_env(env.known_hosts.as_deref());
    let mut hosts = Vec::new();
    for h in &env.hosts {
        let job = HostJob {
            cfg,
            env,
            host: h,
            args: &args,
            binary: &binary,
            signer_line: &signer_line,
            opts: &opts,
            out,
        };
        hosts.push(job.run().await);
    }
    let summary = SetupSummary {
        env: env.name.clone(),
        dry_run: args.dry_run,
        hosts,
    };
    let exit = summary.exit();
    out.emit(&Message::Summary(Summary::new(
        "setup",
        SummaryBody::Setup(summary),
    )));
    Ok(exit)
}

/// The binary `--agent-binary` names, else the `deploy-agent` beside this executable; checked to
/// be this deployctl's version when it runs here.
fn load_binary(path: Option<&Path>) -> Result<Binary, Error> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| Error::Refused(format!("cannot find this executable: {e}")))?
            .with_file_name("deploy-agent"),
    };
    let bytes = std::fs::read(&path).map_err(|e| {
        Error::Refused(format!(
            "cannot read the agent binary {}: {e} (build it with `cargo build --release -p \
             deploy-agent` and pass --agent-binary)",
            path.display()
        ))
    })?;
    let arch = setup::elf_arch(&bytes)
        .ok_or_else(|| Error::Refused(format!("{} is not a Linux executable", path.display())))?;
    if arch == std::env::consts::ARCH {
        let version = std::process::Command::new(&path)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let want = format!("deploy-agent {}", env!("CARGO_PKG_VERSION"));
        if version != want {
            return Err(Refused(format!(
                "{} says {version:?}, but this is deployctl {}: setup installs the matching agent only",
                path.display(),
                env!("CARGO_PKG_VERSION")
            )));
        }
    }
    Ok(Binary {
        sha256: format!("{:x}", Sha256::digest(&bytes)),
        arch: arch.to_string(),
        bytes,
    })
}

use Error::Refused;

struct HostJob<'a> {
    cfg: &'a DeployConfig,
    env: &'a EnvConfig,
    host: &'a HostSpec,
    args: &'a SetupArgs<'a>,
    binary: &'a Binary,
    signer_line: &'a str,
    opts: &'a ConnectOptions,
    out: &'a dyn Output,
}

/// Why one host's setup stopped.
enum Stop {
    /// Before any change.
    Refused(String),
    /// After `taken` steps.
    Failed { taken: usize, error: String },
}

impl HostJob<'_> {
    async fn run(&self) -> SetupHost {
        let name = self.host.name.clone();
        let result = self.set_up().await;
        let (result, steps, error, agent_version) = match result {
            Ok((plan, version)) if plan.unchanged() => (SetupResult::Unchanged, 0, None, version),
            Ok((plan, _)) if self.args.dry_run => {
                (SetupResult::Planned, plan.steps.len(), None, None)
            }
            Ok((plan, version)) => (SetupResult::Changed, plan.steps.len(), None, version),
            Err(Stop::Refused(e)) => (SetupResult::Refused, 0, Some(e), None),
            Err(Stop::Failed { taken, error }) => (SetupResult::Failed, taken, Some(error), None),
        };
        if let Some(e) = &error {
            self.out.emit(&Message::HostError {
                host: name.clone(),
                kind: Some(crate::output::HostErrorKind::Setup),
                error: e.clone(),
            });
        }
        SetupHost {
            host: name,
            result,
            steps,
            error,
            agent_version,
        }
    }

    async fn set_up(&self) -> Result<(Plan, Option<String>), Stop> {
        let Target::Ssh(deploy_target) = &self.host.target else {
            return Err(Stop::Refused(
                "setup works over SSH; an agent on this machine is set up by hand (README, \
                 \"Running the agent on a host\")"
                    .into(),
            ));
        };
        let login = transport::effective_target(deploy_target, self.opts);
        let admin = SshTarget {
            user: Some(self.args.ssh_user.clone()),
            ..deploy_target.clone()
        };
        let shell = RemoteShell::open(&admin, self.opts)
            .await
            .map_err(|e| Stop::Refused(e.to_string()))?;
        let root = Root::of(&shell);
        let login_user = login
            .user
            .clone()
            .filter(|u| u != "root" && u != shell.user());
        let probe = root
            .run(&setup::probe_script(login_user.as_deref()), b"")
            .await
            .map_err(Stop::Refused)?;
        let facts = HostFacts::parse(&probe).map_err(Stop::Refused)?;
        let want = Desired {
            binary_sha256: self.binary.sha256.clone(),
            binary_arch: self.binary.arch.clone(),
            agent_toml: setup::agent_toml(self.cfg, &self.env.name, self.host),
            signer_lines: vec![self.signer_line.to_string()],
            unit: setup::UNIT.to_string(),
            login_user,
        };
        let plan =
            setup::plan(&facts, &want, self.args.mode).map_err(|e| Stop::Refused(e.to_string()))?;
        for note in &plan.notes {
            self.note(note.clone());
        }
        if self.args.dry_run {
            for step in &plan.steps {
                self.step(step.describe(), StepState::Planned);
            }
            return Ok((plan, None));
        }
        if plan.replaces_running_agent() {
            self.wait_for_idle().await;
        }
        for (taken, step) in plan.steps.iter().enumerate() {
            let script = step.script(&self.binary.sha256, shell.user());
            if let Err(error) = root.run(&script, step.input(&self.binary.bytes)).await {
                self.step(step.describe(), StepState::Failed);
                return Err(Stop::Failed { taken, error });
            }
            self.step(step.describe(), StepState::Done);
        }
        let version = self.answers(&root).await.map_err(|error| Stop::Failed {
            taken: plan.steps.len(),
            error,
        })?;
        Ok((plan, Some(version)))
    }

    /// Waits until the agent runs no job (or cannot say: then systemd's stop lets its jobs
    /// finish within `shutdown_grace`).
    async fn wait_for_idle(&self) {
        let deadline = tokio::time::Instant::now() + IDLE_WAIT;
        let mut said = false;
        loop {
            let running = match transport::connect(&self.host.target, self.opts).await {
                Ok(mut conn) => match conn.status().await {
                    Ok(s) => s.running,
                    Err(_) => return,
                },
                Err(e) => {
                    self.note(format!(
                        "cannot ask the agent for its jobs ({e}); its stop lets running jobs finish first"
                    ));
                    return;
                }
            };
            if running.is_empty() || tokio::time::Instant::now() >= deadline {
                return;
            }
            if !said {
                self.note(format!(
                    "waiting for {} running job(s) to end before replacing the agent",
                    running.len()
                ));
                said = true;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Polls the agent through the deploy login until it answers as this host of this env.
    async fn answers(&self, root: &Root<'_>) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
        loop {
            let last = match transport::connect(&self.host.target, self.opts).await {
                Ok(conn) => match check_peer(self.host, &self.env.name, &conn.peer) {
                    Ok(()) => return Ok(conn.peer.agent_version.clone()),
                    Err(e) => return Err(e),
                },
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                let log = root
                    .run("systemctl status deploy-agent --no-pager 2>&1 | tail -n 5; journalctl -u deploy-agent -n 10 --no-pager 2>&1", b"")
                    .await
                    .unwrap_or_default();
                return Err(format!(
                    "the agent does not answer after {}s: {last}\n{log}",
                    ANSWER_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn step(&self, step: String, state: StepState) {
        self.out.emit(&Message::SetupStep {
            host: self.host.name.clone(),
            step,
            state,
        });
    }

    fn note(&self, message: String) {
        self.out.emit(&Message::Note {
            message: format!("{}: {message}", self.host.name),
        });
    }
}

/// The search path of setup's scripts. A login's own PATH lacks the sbin directories
/// (`groupadd`, `useradd`) for a user other than root, and sudo keeps it unless sudoers sets a
/// `secure_path`, which not every distribution's does.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs scripts as root: directly when logged in as root, else through `sudo -n`.
struct Root<'a> {
    shell: &'a RemoteShell,
    sudo: bool,
}

impl<'a> Root<'a> {
    fn of(shell: &'a RemoteShell) -> Root<'a> {
        Root {
            sudo: shell.user() != "root",
            shell,
        }
    }

    /// Stdout of `script`, or why it failed (its stderr).
    async fn run(&self, script: &str, stdin: &[u8]) -> Result<String, String> {
        let script = shell_quote(&format!("PATH={ROOT_PATH}; export PATH\n{script}"));
        let command = match self.sudo {
            true => format!("sudo -n sh -c {script}"),
            false => format!("sh -c {script}"),
        };
        let out = self
            .shell
            .run(&command, stdin)
            .await
            .map_err(|e| e.to_string())?;
        if out.success() {
            return Ok(out.stdout_text());
        }
        let mut why = out.stderr_text();
        if self.sudo && why.contains("sudo") {
            why.push_str(" (setup needs root: log in as root with --ssh-user root, or give the user passwordless sudo)");
        }
        Err(format!(
            "exit status {}: {why}",
            out.status.map_or("none".into(), |s| s.to_string())
        ))
    }
}
