//! `deployctl doctor`'s verdicts (README, "deployctl doctor"): each check of a host, from what
//! was found to a [`CheckRow`] with the fix when something is wrong. Pure; `commands/doctor.rs`
//! gathers the facts in the order an operator triages (SSH, agent, engine, image, disk, clock).

use std::time::{Duration, SystemTime};

use proto::wire::{DiskSpace, EngineHealth};

use crate::output::CheckRow;

/// Orders are refused past this much clock difference (the agent allows 60 s of skew).
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// Below this much free space a pull or a journal write is about to fail.
pub const MIN_FREE_BYTES: u64 = 2 << 30;
/// … or below this share of the filesystem.
pub const MIN_FREE_PERCENT: u64 = 5;

fn row(host: &str, check: &'static str, ok: bool, detail: String, fix: Option<String>) -> CheckRow {
    CheckRow {
        host: host.to_string(),
        check,
        ok,
        detail,
        fix: if ok { None } else { fix },
    }
}

/// How SSH went. `error` is the transport's message (it names the host key line to add).
pub fn ssh(host: &str, login: &str, outcome: Result<Option<&str>, SshProblem<'_>>) -> CheckRow {
    match outcome {
        Ok(key) => row(
            host,
            "ssh",
            true,
            format!("{login}: host key {} known", key.unwrap_or("(local socket)")),
            None,
        ),
        Err(SshProblem::HostKey(e)) => row(
            host,
            "ssh",
            false,
            format!("{login}: {}", e.lines().next().unwrap_or(e)),
            Some(format!(
                "check the key on the host (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), then add the line: {}",
                e.lines().last().unwrap_or_default()
            )),
        ),
        Err(SshProblem::Auth(e)) => row(
            host,
            "ssh",
            false,
            format!("{login}: {e}"),
            Some("put your public key in the login's ~/.ssh/authorized_keys (`deployctl setup` creates the login with root's keys)".into()),
        ),
        Err(SshProblem::Unreachable(e)) => row(
            host,
            "ssh",
            false,
            format!("{login}: {e}"),
            Some("check the address and port in deploy.toml, that sshd runs, and the firewall (`ssh -v` the same login)".into()),
        ),
    }
}

/// Why SSH failed, sorted by what fixes it.
#[derive(Debug, Clone, Copy)]
pub enum SshProblem<'a> {
    HostKey(&'a str),
    Auth(&'a str),
    Unreachable(&'a str),
}

/// What asking the agent for its status gave.
#[derive(Debug, Clone, Copy)]
pub enum AgentAnswer<'a> {
    /// It answered as this version.
    Version(&'a str),
    /// It speaks another protocol version: the skew error, which names both.
    OtherProtocol(&'a str),
    /// No answer, and why (the SSH bridge's stderr when there is no agent to run).
    Failed(&'a str),
}

/// The agent answered as `agent_version` (or not, and why).
pub fn agent(host: &str, env: &str, answer: AgentAnswer<'_>, ours: &str) -> CheckRow {
    let setup = format!("deployctl setup --env {env}");
    match answer {
        AgentAnswer::Version(v) if v == ours => row(
            host,
            "agent",
            true,
            format!("deploy-agent {v} answers"),
            None,
        ),
        AgentAnswer::Version(v) => row(
            host,
            "agent",
            false,
            format!("deploy-agent {v} answers, this deployctl is {ours}"),
            Some(format!(
                "{setup} --upgrade (replaces the agent once no job runs)"
            )),
        ),
        AgentAnswer::OtherProtocol(e) => row(
            host,
            "agent",
            false,
            e.to_string(),
            Some(format!(
                "{setup} --upgrade, or use the deployctl that matches the agents"
            )),
        ),
        AgentAnswer::Failed(e) => {
            // The shell's and the bridge's words for a program or socket that is not there.
            let missing = [
                "not found",
                "No such file",
                "no agent",
                "cannot connect to the agent",
            ]
            .iter()
            .any(|m| e.contains(m));
            let fix = match missing {
                true => format!("{setup} (installs and starts the agent)"),
                false => {
                    "on the host: systemctl status deploy-agent; journalctl -u deploy-agent -n 50"
                        .into()
                }
            };
            row(host, "agent", false, e.to_string(), Some(fix))
        }
    }
}

pub fn engine(host: &str, e: &EngineHealth) -> CheckRow {
    match (e.reachable, &e.version) {
        (true, v) => row(
            host,
            "engine",
            true,
            format!(
                "Docker {} (API {}) answers the agent",
                v.as_deref().unwrap_or("?"),
                e.api_version.as_deref().unwrap_or("?")
            ),
            None,
        ),
        (false, _) => row(
            host,
            "engine",
            false,
            format!("the agent cannot reach Docker: {}", e.error.as_deref().unwrap_or("no answer")),
            Some("on the host: systemctl start docker; the agent's user must be in the docker group (`deployctl setup` does that)".into()),
        ),
    }
}

pub fn disk(host: &str, d: &DiskSpace) -> CheckRow {
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let percent = (d.free_bytes.saturating_mul(100))
        .checked_div(d.total_bytes)
        .unwrap_or(100);
    let ok = d.free_bytes >= MIN_FREE_BYTES && percent >= MIN_FREE_PERCENT;
    let detail = format!(
        "{} ({}): {:.1} GiB free of {:.1} GiB ({percent}%)",
        d.what,
        d.path,
        gib(d.free_bytes),
        gib(d.total_bytes)
    );
    let fix = match d.what.as_str() {
        "engine" => {
            "free space on the host: `docker image prune -a` removes images no container uses; or grow the disk"
        }
        _ => "free space on the host's filesystem holding the agent's state dir, or grow it",
    };
    row(host, "disk", ok, detail, Some(fix.into()))
}

/// The agent's clock against ours: `sent` and `received` bracket the request, so the agent's
/// `now` should fall between them.
pub fn clock(
    host: &str,
    agent_now: SystemTime,
    sent: SystemTime,
    received: SystemTime,
) -> CheckRow {
    let round_trip = received.duration_since(sent).unwrap_or_default();
    let ours = sent + round_trip / 2;
    let (ahead, by) = match agent_now.duration_since(ours) {
        Ok(d) => (true, d),
        Err(e) => (false, e.duration()),
    };
    let ok = by <= MAX_SKEW + round_trip / 2;
    let detail = format!(
        "the host's clock is {} {} this machine's",
        proto::time::format_duration(Duration::from_secs((by.as_millis() as u64 + 500) / 1000)),
        if ahead { "ahead of" } else { "behind" }
    );
    row(
        host,
        "clock",
        ok,
        detail,
        Some("turn on time sync on the host (`timedatectl set-ntp true`, or chrony) and check this machine's too: orders expire by the host's clock".into()),
    )
}

/// The controller reading `repository` with its registry credentials.
pub fn image(repository: &str, answer: Result<String, &crate::resolve::ResolveError>) -> CheckRow {
    use crate::resolve::ResolveError as E;
    let registry = crate::resolve::Repository::parse(repository).registry;
    let (ok, detail, fix) = match answer {
        Ok(what) => (true, what, None),
        Err(e @ E::Unauthorized { .. }) => (
            false,
            e.to_string(),
            Some(format!(
                "docker login {registry} (or configure its credsStore/credHelpers in ~/.docker/config.json)"
            )),
        ),
        Err(e @ E::Unreachable { .. }) => (
            false,
            e.to_string(),
            Some(format!(
                "check that {registry} is reachable from here (and its certificate trusted: SSL_CERT_FILE or the system's roots)"
            )),
        ),
        Err(e) => (
            false,
            e.to_string(),
            Some("check `image` in deploy.toml".into()),
        ),
    };
    row(repository, "image", ok, detail, fix)
}

#[cfg(test)]
mod tests;
