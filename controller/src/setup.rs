//! What `deployctl setup` does to a host, decided without touching it (README, "deployctl
//! setup"): the facts a read-only probe finds ([`HostFacts`], `setup/facts.rs`), what the host
//! should have ([`Desired`], rendered in `setup/files.rs`), and the steps between the two
//! ([`plan`]). `commands/setup.rs` runs the probe and the steps over SSH; every decision is here,
//! so a second run that finds nothing to do says "unchanged" and a dry run prints the same plan.

mod facts;
mod files;
mod steps;

pub use facts::{HostFacts, LoginFacts, probe_script};
pub use files::{
    AGENT_TOML, ALLOWED_SIGNERS, BINARY, CONFIG_DIR, UNIT, UNIT_PATH, agent_toml, elf_arch,
    merge_allowed_signers,
};
pub use steps::Step;

/// The agent's own user, in the `docker` group (the engine's socket).
pub const AGENT_USER: &str = "deploy-agent";
/// The group that may use the agent's socket: the agent's, and the SSH user's.
pub const GROUP: &str = "deployctl";

/// What the host should have after setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// sha256 (hex) of the agent binary this deployctl uploads.
    pub binary_sha256: String,
    /// `uname -m` the binary runs on (read from its ELF header).
    pub binary_arch: String,
    /// agent.toml as setup writes it when the host has none.
    pub agent_toml: String,
    /// allowed_signers lines the host must have (the env's signing keys).
    pub signer_lines: Vec<String>,
    pub unit: String,
    /// The user controllers log in as for deploys (the env's host entry), when it is not the
    /// setup login itself: it must exist, with keys, in [`GROUP`].
    pub login_user: Option<String>,
}

/// `--upgrade` or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    Upgrade,
}

/// Why setup will not touch a host; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "no systemd runs on this host (/run/systemd/system is missing); set the agent up by hand \
         instead: README \"Running the agent on a host\" has the six steps (binary, users, \
         agent.toml, allowed_signers, a service for `deploy-agent run --config {AGENT_TOML}`, \
         first push)"
    )]
    NoSystemd,
    #[error(
        "Docker is not installed (no `docker` group): install the Docker engine first (e.g. \
         `apt install docker.io`), then run setup again"
    )]
    NoDocker,
    #[error(
        "the host is {host}, but this deploy-agent binary is built for {binary}: pass --agent-binary with a {host} build"
    )]
    ArchMismatch { host: String, binary: String },
    #[error(
        "the host runs another deploy-agent ({BINARY} sha256 {installed}, this deployctl ships \
         {ours}): run `deployctl setup --upgrade` to replace it once no job runs"
    )]
    OtherBinary { installed: String, ours: String },
}

/// Steps to take, in order, and what was found but deliberately left alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
}

impl Plan {
    pub fn unchanged(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether the agent's binary is replaced while an agent runs (wait for its jobs first).
    pub fn replaces_running_agent(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::InstallBinary { replace: true }))
            && self.steps.contains(&Step::Restart)
    }
}

/// The steps from `facts` to `want`.
pub fn plan(facts: &HostFacts, want: &Desired, mode: Mode) -> Result<Plan, Refusal> {
    if !facts.systemd {
        return Err(Refusal::NoSystemd);
    }
    if !facts.docker_group {
        return Err(Refusal::NoDocker);
    }
    if facts.arch != want.binary_arch {
        return Err(Refusal::ArchMismatch {
            host: facts.arch.clone(),
            binary: want.binary_arch.clone(),
        });
    }
    let binary = match &facts.binary_sha256 {
        None => Some(Step::InstallBinary { replace: false }),
        Some(sum) if *sum == want.binary_sha256 => None,
        Some(sum) if mode == Mode::Install => {
            return Err(Refusal::OtherBinary {
                installed: sum.clone(),
                ours: want.binary_sha256.clone(),
            });
        }
        Some(_) => Some(Step::InstallBinary { replace: true }),
    };
    let binary_changes = binary.is_some();
    let mut p = Plan::default();
    if !facts.deployctl_group {
        p.steps.push(Step::CreateGroup);
    }
    if !facts.agent_user {
        p.steps.push(Step::CreateAgentUser);
    } else if !facts.agent_in_docker {
        p.steps.push(Step::AddAgentToDocker);
    }
    if let (Some(user), Some(login)) = (&want.login_user, &facts.login) {
        let user = user.clone();
        if !login.exists {
            p.steps.push(Step::CreateLoginUser { user });
        } else {
            if !login.has_keys {
                p.notes.push(format!(
                    "{user} has no ~/.ssh/authorized_keys: add the controllers' keys before the first push"
                ));
            }
            if !login.in_group {
                p.steps.push(Step::AddLoginToGroup { user });
            }
        }
    }
    p.steps.extend(binary);

    let mut config_changes = false;
    match &facts.agent_toml {
        None => {
            p.steps.push(Step::write(AGENT_TOML, &want.agent_toml));
            config_changes = true;
        }
        Some(text) if *text != want.agent_toml => p.notes.push(format!(
            "{AGENT_TOML} differs from what setup would write: kept as the host has it"
        )),
        Some(_) => {}
    }
    let signers = merge_allowed_signers(facts.allowed_signers.as_deref(), &want.signer_lines);
    if facts.allowed_signers.as_deref() != Some(signers.as_str()) {
        // read for every order: no restart needed
        p.steps.push(Step::write(ALLOWED_SIGNERS, &signers));
    }
    let unit_changes = facts.unit.as_deref() != Some(want.unit.as_str());
    if unit_changes {
        p.steps.push(Step::write(UNIT_PATH, &want.unit));
        p.steps.push(Step::ReloadSystemd);
    }
    if !facts.unit_active {
        p.steps.push(Step::Start);
    } else if binary_changes
        || config_changes
        || unit_changes
        || p.steps.contains(&Step::AddAgentToDocker)
    {
        p.steps.push(Step::Restart);
    }
    Ok(p)
}

#[cfg(test)]
mod tests;
