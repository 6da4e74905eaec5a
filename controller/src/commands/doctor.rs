//! `deployctl doctor --env E`: every host checked in triage order, each problem with its fix
//! (README, "deployctl doctor"). The facts are gathered here; the verdicts are
//! [`crate::doctor`]'s.

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::find_env;
use crate::config::{DeployConfig, EnvConfig, HostSpec, Target};
use crate::doctor::{self, AgentAnswer, SshProblem};
use crate::output::{CheckRow, DoctorSummary, Message, Output, Summary, SummaryBody};
use crate::resolve::Resolver;
use crate::transport::{self, ConnectOptions, RemoteShell, TransportError};
use crate::{Error, ExitClass};

pub async fn doctor(cfg: &DeployConfig, env: &str, out: &dyn Output) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env)?;
    let opts = ConnectOptions::from_env(env.known_hosts.as_deref());
    let mut problems = 0;
    let mut report = |row: CheckRow| {
        problems += usize::from(!row.ok);
        out.emit(&Message::Check(row));
    };
    let mut running = BTreeSet::new();
    for h in &env.hosts {
        for row in check_host(env, h, &opts, &mut running).await {
            report(row);
        }
    }
    for repository in repositories(cfg) {
        let digest = running
            .iter()
            .find(|d: &&(String, String)| d.0 == repository)
            .map(|d| d.1.clone());
        report(check_image(&repository, digest).await);
    }
    let summary = DoctorSummary {
        env: env.name.clone(),
        hosts: env.hosts.len(),
        problems,
    };
    let exit = summary.exit();
    out.emit(&Message::Summary(Summary::new(
        "doctor",
        SummaryBody::Doctor(summary),
    )));
    Ok(exit)
}

/// SSH, then the agent and what it reports (engine, disks, clock); a failed step skips what
/// depends on it. Collects the (repository, digest) pairs the host runs.
async fn check_host(
    env: &EnvConfig,
    h: &HostSpec,
    opts: &ConnectOptions,
    running: &mut BTreeSet<(String, String)>,
) -> Vec<CheckRow> {
    let name = h.name.as_str();
    let mut rows = Vec::new();
    if let Target::Ssh(t) = &h.target {
        let login = transport::effective_target(t, opts);
        let shown = format!("{}@{}", login.user.as_deref().unwrap_or("?"), h.target);
        match RemoteShell::open(t, opts).await {
            Ok(shell) => rows.push(doctor::ssh(name, &shown, Ok(shell.host_key()))),
            Err(e) => {
                let text = e.to_string();
                let problem = match &e {
                    e if e.is_host_key() => SshProblem::HostKey(&text),
                    TransportError::AuthFailed { .. } => SshProblem::Auth(&text),
                    _ => SshProblem::Unreachable(&text),
                };
                rows.push(doctor::ssh(name, &shown, Err(problem)));
                return rows;
            }
        }
    }
    let ours = env!("CARGO_PKG_VERSION");
    let mut conn = match transport::connect(&h.target, opts).await {
        Ok(c) => c,
        Err(e) => {
            rows.push(agent_unanswered(name, &env.name, &e, ours));
            return rows;
        }
    };
    let sent = SystemTime::now();
    let status = conn.status().await;
    let received = SystemTime::now();
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            rows.push(agent_unanswered(name, &env.name, &e, ours));
            return rows;
        }
    };
    rows.push(doctor::agent(
        name,
        &env.name,
        AgentAnswer::Version(&status.agent_version),
        ours,
    ));
    for s in &status.services {
        if let Some(image) = &s.image {
            running.insert((image.repository().to_string(), image.digest().to_string()));
        }
    }
    if let Some(hh) = &status.host_health {
        rows.push(doctor::engine(name, &hh.engine));
        rows.extend(hh.disks.iter().map(|d| doctor::disk(name, d)));
        rows.push(doctor::clock(name, hh.now.system(), sent, received));
    }
    rows
}

/// Every repository the app's services (and `[migrate]`) run from.
fn repositories(cfg: &DeployConfig) -> BTreeSet<String> {
    cfg.services
        .keys()
        .map(|s| cfg.repository_of(s).to_string())
        .chain(cfg.migration_repository().map(str::to_string))
        .collect()
}

/// Reads a digest a host runs (or, before the first deploy, the `latest` tag: a missing tag is
/// fine, a refusal is not) with this machine's registry credentials.
async fn check_image(repository: &str, digest: Option<String>) -> CheckRow {
    let mut resolver = match Resolver::new(repository) {
        Ok(r) => r,
        Err(e) => return doctor::image(repository, Err(&e)),
    };
    let what = digest.clone().unwrap_or_else(|| "latest".into());
    match resolver.resolve(&what).await {
        Ok(r) => doctor::image(
            repository,
            Ok(format!(
                "{} readable with this machine's credentials",
                r.image
            )),
        ),
        Err(crate::resolve::ResolveError::NotFound(_)) if digest.is_none() => doctor::image(
            repository,
            Ok("the registry answers with this machine's credentials (no `latest` tag)".into()),
        ),
        Err(e) => doctor::image(repository, Err(&e)),
    }
}

/// The agent check when the agent did not answer: a version skew is told by its type, the rest
/// by what the bridge said.
fn agent_unanswered(host: &str, env: &str, e: &TransportError, ours: &str) -> CheckRow {
    let text = e.to_string();
    let answer = match e {
        TransportError::ProtocolVersion(_) => AgentAnswer::OtherProtocol(&text),
        _ => AgentAnswer::Failed(&text),
    };
    doctor::agent(host, env, answer, ours)
}
