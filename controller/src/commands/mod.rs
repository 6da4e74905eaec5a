//! One module per subcommand, plus what they share: reaching an env's hosts, choosing the
//! signing key, naming the issuer, printing a rollout's result.

pub mod history;
pub mod keys;
pub mod logs;
pub mod push;
pub mod rollback;
pub mod status;

use std::path::PathBuf;

use futures_util::future::join_all;
use proto::wire::{AgentStatus, HistoryEntry};
use serde_json::json;

use crate::cli::{Cli, Command, KeysCommand};
use crate::config::{DeployConfig, EnvConfig, HostSpec};
use crate::output::{self, Event, Reporter};
use crate::rollout::{self, HostLink, RolloutReport};
use crate::signer::Signer;
use crate::transport::{self, ConnectOptions, Connection};
use crate::{Error, ExitClass};

/// Environment variable: who issued the orders (default: user@hostname, or the GitHub run).
pub const ISSUED_BY_ENV: &str = "DEPLOYCTL_ISSUED_BY";
/// Environment variable: a signing key file, used when the env names none.
pub const SIGNING_KEY_ENV: &str = "DEPLOYCTL_SIGNING_KEY";

/// How many journal entries per host are read to judge locks and previous versions.
const HISTORY_DEPTH: usize = 200;

pub async fn dispatch(cli: Cli) -> Result<ExitClass, Error> {
    let json = cli.json;
    let path = cli.config;
    let load = || DeployConfig::load(&path);
    match cli.command {
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => keys::generate(out, json),
        Command::Demo => crate::demo::run(json).await,
        Command::Push {
            reference,
            env,
            skip_migrations,
            rerun_migration,
        } => {
            let cfg = load()?;
            let migrations = push::Migrations::from_flags(skip_migrations, rerun_migration);
            push::push(&cfg, &env, &reference, migrations, json).await
        }
        Command::Rollback { env, to } => {
            rollback::rollback(&load()?, &env, to.as_deref(), json).await
        }
        Command::Status { env } => status::status(&load()?, &env, json).await,
        Command::History { env, n } => history::history(&load()?, &env, n, json).await,
        Command::Logs {
            env,
            host,
            service,
            n,
        } => logs::logs(&load()?, &env, host.as_deref(), service.as_deref(), n, json).await,
    }
}

pub(crate) fn find_env<'a>(cfg: &'a DeployConfig, name: &str) -> Result<&'a EnvConfig, Error> {
    cfg.env(name).map_err(Error::Refused)
}

pub(crate) fn connect_options(env: &EnvConfig) -> ConnectOptions {
    ConnectOptions::from_env(env.known_hosts.as_deref())
}

/// Connects to every host at once and checks that each agent serves this env (and, for hosts
/// with an explicit name, is that host).
pub(crate) async fn connect_all(
    env: &EnvConfig,
    opts: &ConnectOptions,
    out: &dyn Reporter,
) -> Vec<Result<Connection, String>> {
    let attempts = env.hosts.iter().map(|h| async move {
        let conn = transport::connect(&h.target, opts)
            .await
            .map_err(|e| e.to_string())?;
        check_peer(h, &env.name, &conn)?;
        Ok::<Connection, String>(conn)
    });
    let results = join_all(attempts).await;
    for (h, r) in env.hosts.iter().zip(&results) {
        match r {
            Ok(c) => out.emit(&Event::Connected {
                host: h.name.clone(),
                agent_host: c.peer.host.clone(),
                agent_version: c.peer.agent_version.clone(),
            }),
            Err(e) => out.emit(&Event::HostError {
                host: h.name.clone(),
                error: e.clone(),
            }),
        }
    }
    results
}

fn check_peer(h: &HostSpec, env: &str, conn: &Connection) -> Result<(), String> {
    if conn.peer.env != env {
        return Err(format!(
            "the agent at {} serves env {:?}, not {env:?}: deploy.toml lists it in the wrong env",
            h.target, conn.peer.env
        ));
    }
    if h.name_is_explicit && conn.peer.host != h.name {
        return Err(format!(
            "the agent at {} calls itself {:?}, but deploy.toml names it {:?}",
            h.target, conn.peer.host, h.name
        ));
    }
    Ok(())
}

/// Connects to every host of `env`, reads its status and journal, and refuses if any host is
/// unreachable or already busy with a rollout of this app. Nothing is changed here.
pub(crate) async fn prepare_hosts(
    cfg: &DeployConfig,
    env: &EnvConfig,
    opts: &ConnectOptions,
    out: &dyn Reporter,
) -> Result<(Vec<HostLink>, Vec<Vec<HistoryEntry>>), Error> {
    let results = connect_all(env, opts, out).await;
    let failures: Vec<String> = env
        .hosts
        .iter()
        .zip(&results)
        .filter_map(|(h, r)| r.as_ref().err().map(|e| format!("  {}: {e}", h.name)))
        .collect();
    if !failures.is_empty() {
        return Err(Error::Refused(format!(
            "{} of {} host(s) of {} cannot be reached or verified, so the rollout did not start:\n{}",
            failures.len(),
            env.hosts.len(),
            env.name,
            failures.join("\n")
        )));
    }
    let mut conns: Vec<Connection> = results.into_iter().filter_map(Result::ok).collect();
    let answers = join_all(conns.iter_mut().map(|c| async move {
        let status = c.status().await?;
        let history = c.history(HISTORY_DEPTH).await?;
        Ok::<(AgentStatus, Vec<HistoryEntry>), transport::TransportError>((status, history))
    }))
    .await;
    let mut links = Vec::new();
    let mut histories = Vec::new();
    let mut problems = Vec::new();
    for ((spec, conn), answer) in env.hosts.iter().zip(conns).zip(answers) {
        match answer {
            Ok((status, history)) => {
                for holder in rollout::conflicting_holders(&status, &history, &cfg.app) {
                    problems.push(format!(
                        "  {}: a rollout is in progress: {}",
                        spec.name,
                        rollout::describe_holder(holder)
                    ));
                }
                links.push(HostLink {
                    spec: spec.clone(),
                    conn,
                    before: status,
                });
                histories.push(history);
            }
            Err(e) => problems.push(format!("  {}: cannot read its status: {e}", spec.name)),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Refused(format!(
            "{} is busy or not answering, so the rollout did not start:\n{}",
            env.name,
            problems.join("\n")
        )));
    }
    Ok((links, histories))
}

/// The signing key: the env's `signing_key`, else `$DEPLOYCTL_SIGNING_KEY`, else the first key
/// of ssh-agent, else `~/.config/deployctl/key`.
pub(crate) async fn load_signer(env: &EnvConfig) -> Result<Signer, Error> {
    let from_file = |p: &std::path::Path, why: &str| {
        Signer::from_key_file(p).map_err(|e| Error::Refused(format!("signing key ({why}): {e}")))
    };
    if let Some(p) = &env.signing_key {
        return from_file(p, &format!("signing_key of env {}", env.name));
    }
    if let Some(p) = std::env::var_os(SIGNING_KEY_ENV).filter(|p| !p.is_empty()) {
        return from_file(&PathBuf::from(p), &format!("${SIGNING_KEY_ENV}"));
    }
    let default = default_key_path();
    let agent_problem = match std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
        Some(sock) => match Signer::from_agent(&PathBuf::from(sock), None).await {
            Ok(s) => return Ok(s),
            Err(e) => Some(e.to_string()),
        },
        None => None,
    };
    if default.exists() {
        return from_file(&default, "the default key");
    }
    Err(Error::Refused(format!(
        "no signing key: set signing_key in [env.{}], set ${SIGNING_KEY_ENV}, load a key into ssh-agent{}, or create {} with `deployctl keys generate`",
        env.name,
        agent_problem.map(|p| format!(" ({p})")).unwrap_or_default(),
        default.display()
    )))
}

pub(crate) fn default_key_path() -> PathBuf {
    crate::config::expand_tilde("~/.config/deployctl/key")
}

/// Who issues the orders, for the journals: `$DEPLOYCTL_ISSUED_BY`, the GitHub Actions run,
/// or user@hostname.
pub(crate) fn issued_by() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(v) = var(ISSUED_BY_ENV) {
        return v;
    }
    if var("GITHUB_ACTIONS").as_deref() == Some("true") {
        let server = var("GITHUB_SERVER_URL").unwrap_or_else(|| "https://github.com".into());
        let repo = var("GITHUB_REPOSITORY").unwrap_or_default();
        let run = var("GITHUB_RUN_ID").unwrap_or_default();
        let actor = var("GITHUB_ACTOR").unwrap_or_else(|| "?".into());
        return format!("{actor} via {server}/{repo}/actions/runs/{run}");
    }
    let user = var("USER")
        .or_else(|| var("LOGNAME"))
        .or_else(user_from_passwd)
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| var("HOSTNAME"))
        .unwrap_or_else(|| "unknown-host".into());
    format!("{user}@{host}")
}

/// This process's user name from /etc/passwd, for when $USER is not set (cron, CI containers).
fn user_from_passwd() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    passwd_name(&std::fs::read_to_string("/etc/passwd").ok()?, &uid)
}

/// The name of `uid` in the text of /etc/passwd.
fn passwd_name(passwd: &str, uid: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_string())
    })
}

/// Ctrl-C during a rollout: the agents finish (or undo) what they accepted on their own, but
/// this run cannot tell the outcome, so the env needs a look (exit 2).
/// Resolves what the user typed to one digest, once, and says so (DESIGN §2.1).
pub(crate) async fn resolve_ref(
    cfg: &DeployConfig,
    reference: &str,
    out: &dyn Reporter,
) -> Result<crate::resolve::Resolved, Error> {
    let mut resolver =
        crate::resolve::Resolver::new(&cfg.image).map_err(|e| Error::Refused(e.to_string()))?;
    let resolved = resolver
        .resolve(reference)
        .await
        .map_err(|e| Error::Refused(e.to_string()))?;
    out.emit(&Event::Resolved {
        reference: resolved.reference.clone(),
        image: resolved.image.to_string(),
    });
    Ok(resolved)
}

/// A rollout ready to run: its env, connected and lock-checked hosts, and how to sign and report.
pub(crate) struct Prepared<'a> {
    pub env: &'a EnvConfig,
    pub links: &'a mut [HostLink],
    pub signer: &'a Signer,
    pub opts: &'a ConnectOptions,
    pub out: &'a dyn Reporter,
}

/// Drives a rollout to its end (or to Ctrl-C, which leaves the agents to finish what they
/// accepted) and prints the result; shared by `push` and `rollback`.
pub(crate) async fn drive_and_report(
    command: &str,
    cfg: &DeployConfig,
    spec: rollout::RolloutSpec,
    run: Prepared<'_>,
    json: bool,
) -> ExitClass {
    let drive = rollout::drive(
        cfg,
        spec,
        run.env.max_parallel,
        run.links,
        run.signer,
        run.opts,
        run.out,
    );
    let report = tokio::select! {
        report = drive => report,
        _ = tokio::signal::ctrl_c() => return interrupted(&run.env.name, run.out),
    };
    run.out.finish();
    print_report(command, &report, json)
}

pub(crate) fn interrupted(env: &str, out: &dyn Reporter) -> ExitClass {
    out.finish();
    eprintln!(
        "deployctl: interrupted. Orders already accepted run to their end on the hosts (success or \
         rollback); hosts not reached yet were not changed. See where {env} stands with \
         `deployctl status --env {env}`."
    );
    ExitClass::Inconsistent
}

/// Prints a rollout's summary (stdout) and returns its exit class.
pub(crate) fn print_report(command: &str, report: &RolloutReport, json: bool) -> ExitClass {
    let c = &report.conclusion;
    if json {
        let hosts: Vec<_> = report
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                json!({
                    "host": h,
                    "state": report.states[i],
                    "outcome": report.outcomes[i],
                    "rollback": report.rollbacks.get(&i),
                    "rollback_outcome": report.rollback_outcomes.get(&i),
                })
            })
            .collect();
        let inconsistent: Vec<_> = c
            .inconsistent
            .iter()
            .map(|(i, why)| json!({"host": report.hosts[*i], "why": why}))
            .collect();
        output::print_json(&json!({
            "event": "summary",
            "command": command,
            "env": report.spec.env,
            "rollout_id": report.spec.rollout_id,
            "ref": report.spec.reference,
            "image": report.spec.image.to_string(),
            "result": c.result,
            "exit_code": c.exit.code(),
            "elapsed_ms": report.elapsed.as_millis() as u64,
            "hosts": hosts,
            "inconsistent": inconsistent,
        }));
        return c.exit;
    }
    let what = format!(
        "{command} {} ({}) to {}",
        report.spec.reference,
        output::short_image(&report.spec.image.to_string()),
        report.spec.env
    );
    let took = proto::time::format_duration(std::time::Duration::from_millis(
        report.elapsed.as_millis() as u64,
    ));
    let headline = match c.exit {
        ExitClass::Success => format!(
            "{what}: succeeded on {} host(s) in {took}",
            report.hosts.len()
        ),
        ExitClass::RolledBack => format!(
            "{what}: FAILED after {took}; every host is back on its previous version (exit 1)"
        ),
        ExitClass::Inconsistent => format!(
            "{what}: FAILED after {took}; the env is NOT consistent and needs a human (exit 2)"
        ),
        ExitClass::Refused | ExitClass::Usage => {
            format!("{what}: refused; nothing was changed (exit 3)")
        }
    };
    println!("{headline}");
    for (i, host) in report.hosts.iter().enumerate() {
        println!("  {host}: {}", host_summary(report, i));
        if let Some(o) = &report.outcomes[i]
            && o.kind != proto::wire::OutcomeKind::Succeeded
            && !o.log_tail.is_empty()
        {
            println!("    last log lines of the failing container:");
            for line in &o.log_tail {
                println!("    | {line}");
            }
        }
    }
    for (i, why) in &c.inconsistent {
        println!("  NOT CONSISTENT: {}: {why}", report.hosts[*i]);
    }
    c.exit
}

/// What changed on one host, in words.
fn host_summary(report: &RolloutReport, i: usize) -> String {
    use crate::rollout::HostState;
    let short = |d: &str| proto::order::short_digest(d).to_string();
    let now = |o: &proto::wire::Outcome| o.services.values().find_map(|s| s.digest.clone());
    let mut text = match (&report.states[i], &report.outcomes[i]) {
        (
            HostState::Succeeded {
                changed: true,
                previous,
            },
            Some(o),
        ) => format!(
            "changed to {}{}{}",
            now(o).map(|d| short(&d)).unwrap_or_else(|| report
                .spec
                .image
                .short_digest()
                .to_string()),
            previous
                .as_ref()
                .map(|p| format!(" (was {})", short(p)))
                .unwrap_or_else(|| " (first deploy)".into()),
            if report.spec.migrate_first && i == 0 {
                ", migration ran here"
            } else {
                ""
            }
        ),
        (state, Some(o)) if !matches!(state, HostState::Succeeded { .. }) => {
            let serving = now(o)
                .map(|d| format!("; serving {}", short(&d)))
                .unwrap_or_default();
            format!("{}{serving}", output::outcome_line(o))
        }
        (state, _) => rollout::describe(state),
    };
    if let Some(rb) = report.rollbacks.get(&i) {
        let back = report
            .rollback_outcomes
            .get(&i)
            .and_then(now)
            .map(|d| format!(" to {}", short(&d)))
            .unwrap_or_default();
        text.push_str(&format!("; rolled back{back}: {}", rollout::describe(rb)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\ndeploy:x:1001:1001::/home/deploy:/bin/sh\nbroken\n";
        assert_eq!(passwd_name(passwd, "0").as_deref(), Some("root"));
        assert_eq!(passwd_name(passwd, "1001").as_deref(), Some("deploy"));
        assert_eq!(passwd_name(passwd, "7"), None);
    }
}
