//! `deployctl push <REF> [--set S=REF]` and `deployctl rollback [--to REF]`: one rollout
//! command, told what to roll out. Push: the release resolved once in every repository, the
//! promotion gate (`requires`: the same digest for every service), the migration on the first
//! host. Rollback: `--to REF` or the previous healthy release every host agrees on; no
//! migration, no gate. Then both: connect and check every host ([`crate::rollout::prepare`]),
//! find the registry tags of every digest the orders may name (the hosts' `[refs]` judge
//! them), drive ([`crate::rollout::drive`]), summarize, emit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::future::join_all;
use proto::order::Action;
use proto::wire::{AgentStatus, HistoryEntry, OutcomeKind};

use super::{find_env, issued_by, load_signer, resolve_release};
use crate::config::{DeployConfig, EnvConfig};
use crate::connector::{Transport, connect_all, report_connections};
use crate::output::{Message, Output, Summary, SummaryBody};
use crate::release::{self, Release};
use crate::resolve::{MAX_TAG_LOOKUPS, Resolver};
use crate::rollout::{self, Driver, Plan, Target};
use crate::{Error, ExitClass};

/// What the first host does about `[migrate]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrations {
    /// Run it, unless this digest's migration already succeeded there (a retried rollout).
    Once,
    /// `--skip-migrations` (and every rollback).
    Skip,
    /// `--rerun-migration`: run it even if it already succeeded for this digest.
    Rerun,
}

impl Migrations {
    pub fn from_flags(skip: bool, rerun: bool) -> Self {
        match (skip, rerun) {
            (true, _) => Migrations::Skip,
            (false, true) => Migrations::Rerun,
            (false, false) => Migrations::Once,
        }
    }
}

/// What a rollout rolls out, as typed on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct What {
    pub action: Action,
    /// The ref to resolve; `None`: the previous healthy release.
    pub reference: Option<String>,
    /// `--set SERVICE=REF`: services resolved at a ref of their own.
    pub sets: BTreeMap<String, String>,
    pub migrations: Migrations,
    /// To an env that needs approvals: how long the proposal waits for them.
    pub expires: Duration,
    /// `--override-freeze REASON`.
    pub override_freeze: Option<String>,
    /// The command its summary names, when not `push` or `rollback` (`promote`).
    pub command: Option<&'static str>,
}

impl What {
    /// `push REF`.
    pub fn push(reference: &str, migrations: Migrations) -> What {
        What {
            action: Action::Deploy,
            reference: Some(reference.to_string()),
            sets: BTreeMap::new(),
            migrations,
            expires: proto::approval::DEFAULT_EXPIRY,
            override_freeze: None,
            command: None,
        }
    }

    /// `--expires`.
    pub fn with_expiry(self, expires: Duration) -> What {
        What { expires, ..self }
    }

    /// `--override-freeze REASON`.
    pub fn with_override(self, override_freeze: Option<String>) -> What {
        What {
            override_freeze,
            ..self
        }
    }

    /// `--set SERVICE=REF…`.
    pub fn with_sets(self, sets: BTreeMap<String, String>) -> What {
        What { sets, ..self }
    }

    /// `rollback [--to REF]`.
    pub fn rollback(to: Option<&str>) -> What {
        What {
            action: Action::Rollback,
            reference: to.map(str::to_string),
            sets: BTreeMap::new(),
            migrations: Migrations::Skip,
            expires: proto::approval::DEFAULT_EXPIRY,
            override_freeze: None,
            command: None,
        }
    }

    /// Said by its summary as `command`'s rollout (`promote`).
    pub fn named(self, command: &'static str) -> What {
        What {
            command: Some(command),
            ..self
        }
    }

    pub(crate) fn command(&self) -> &'static str {
        if let Some(command) = self.command {
            return command;
        }
        match self.action {
            Action::Deploy => "push",
            Action::Rollback => "rollback",
            Action::Exec => "exec",
            Action::Maintenance => "maintenance",
        }
    }
}

pub async fn rollout(
    cfg: &DeployConfig,
    env_name: &str,
    what: What,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    find_env(cfg, env_name)?;
    let target = match &what.reference {
        Some(reference) => {
            let migration = what.action == Action::Deploy;
            let release = resolve_release(cfg, reference, &what.sets, migration, out).await?;
            Target::Release(release)
        }
        None => Target::PreviousHealthy,
    };
    let proved = match &target {
        Target::Release(release) => release::resolved_tags(release),
        Target::PreviousHealthy => Vec::new(),
    };
    roll_out_proved(cfg, env_name, what, target, proved, out).await
}

/// Rolls `target` out to `env_name`: the promotion gate (a deploy to an env that `requires`
/// another), every host connected and checked, then driven; `promote` comes in here with the
/// release it read off the env it promotes from. Its refs are a journal's, which may name tags
/// that have moved since, so none of them counts as a tag of its digest: the orders carry the
/// tags the registry has now.
pub(crate) async fn roll_out(
    cfg: &DeployConfig,
    env_name: &str,
    what: What,
    target: Target,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    roll_out_proved(cfg, env_name, what, target, Vec::new(), out).await
}

/// [`roll_out`], with the (digest, tag) pairs the resolution of `target` just proved.
async fn roll_out_proved(
    cfg: &DeployConfig,
    env_name: &str,
    what: What,
    target: Target,
    resolved: Vec<(String, String)>,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    if let (Action::Deploy, Some(required), Target::Release(release)) =
        (what.action, &env.requires, &target)
    {
        check_promotion(cfg, &env.name, required, release, out).await?;
    }
    roll(cfg, env, &what, target, resolved, out).await
}

/// A rollout whose target is known: connect and check every host, then — to an env that needs
/// approvals, only with a proposal approved for exactly this release ([`super::approvals::gate`])
/// — drive, summarize, emit.
pub(crate) async fn roll(
    cfg: &DeployConfig,
    env: &EnvConfig,
    what: &What,
    target: Target,
    resolved: Vec<(String, String)>,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let signer = load_signer(env).await?;
    let connector = Transport::for_env(env);
    let plan = Plan {
        action: what.action,
        target,
        migrate_first: cfg.migrate.is_some() && what.migrations != Migrations::Skip,
        rerun_migration: what.migrations == Migrations::Rerun,
        issued_by: issued_by(),
        override_freeze: what.override_freeze.clone(),
    };
    let mut ready = rollout::prepare(cfg, env, plan, &connector, out).await?;
    let before: Vec<&AgentStatus> = ready.links.iter().map(|l| &l.before).collect();
    let wanted = release::digests_to_tag(&ready.spec.release, &before, &cfg.app);
    ready.spec.tags = registry_tags(wanted, resolved, out).await;
    let gate = super::approvals::gate(cfg, &mut ready, &signer, what, out).await?;
    let signer = match gate {
        super::approvals::Gate::Go(proposal) => super::approvals::Naming::new(&signer, proposal),
        super::approvals::Gate::Wait(exit) => return Ok(exit),
    };
    let driver = Driver {
        cfg,
        connector: &connector,
        signer: &signer,
        out,
    };
    let report = tokio::select! {
        report = rollout::drive(&driver, ready, env.max_parallel, env.canary) => report,
        _ = tokio::signal::ctrl_c() => return Err(interrupted(&env.name)),
    };
    let summary = Summary::new(
        what.command(),
        SummaryBody::Rollout(rollout::summarize(&report)),
    );
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// The registry tags of `wanted` (repository → digests), with those the resolution itself
/// proved (`resolved`, digest → tag), for the hosts' `[refs]`. A repository whose tags cannot
/// be listed is said in a note and leaves its digests with the proved tags only: a host
/// without `[refs]` needs none, and one with it refuses what it cannot judge.
async fn registry_tags(
    wanted: BTreeMap<String, BTreeSet<String>>,
    resolved: Vec<(String, String)>,
    out: &dyn Output,
) -> BTreeMap<String, Vec<String>> {
    let answers = join_all(wanted.iter().map(|(repository, digests)| async move {
        let found = match Resolver::new(repository) {
            Ok(mut r) => r.tags_of(digests).await,
            Err(e) => Err(e),
        };
        (repository, found)
    }))
    .await;
    let mut tags: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (digest, tag) in resolved {
        tags.entry(digest).or_default().insert(tag);
    }
    for (repository, found) in answers {
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                out.emit(&Message::Note {
                    message: format!(
                        "cannot list the tags of {repository} ({e}): its orders name only the tag                          the release was resolved from"
                    ),
                });
                continue;
            }
        };
        if found.left_out > 0 {
            out.emit(&Message::Note {
                message: format!(
                    "{repository} has {} more release-like tags than the {MAX_TAG_LOOKUPS} looked                      up; orders name the tags found among those",
                    found.left_out
                ),
            });
        }
        for (digest, found) in found.tags {
            tags.entry(digest).or_default().extend(found);
        }
    }
    tags.into_iter()
        .map(|(digest, t)| (digest, t.into_iter().collect()))
        .collect()
}

/// Ctrl-C during a rollout: the agents finish (or undo) what they accepted on their own, but
/// this run cannot tell the outcome, so the env needs a look (exit 2).
fn interrupted(env: &str) -> Error {
    Error::Interrupted(format!(
        "interrupted. Orders already accepted run to their end on the hosts (success or \
         rollback); hosts not reached yet were not changed. See where {env} stands with \
         `deployctl status --env {env}`."
    ))
}

/// The promotion gate: `release` — the same digest for every service — must have a succeeded
/// order in the journal of at least one host of the required env.
async fn check_promotion(
    cfg: &DeployConfig,
    for_env: &str,
    required: &str,
    release: &Release,
    out: &dyn Output,
) -> Result<(), Error> {
    let req_env = find_env(cfg, required)?;
    out.emit(&Message::Note {
        message: format!(
            "checking that {} was healthy in {required} first",
            release.describe()
        ),
    });
    let connector = Transport::for_env(req_env);
    let mut results = connect_all(&connector, &req_env.name, &req_env.hosts).await;
    report_connections(out, &req_env.hosts, &results);
    let answers = join_all(results.iter_mut().map(|r| async move {
        match r {
            Ok(conn) => {
                let history = conn.history(rollout::HISTORY_DEPTH * 5).await;
                history.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.message.clone()),
        }
    }))
    .await;
    let mut unreachable = Vec::new();
    let mut journals: Vec<HistoryEntry> = Vec::new();
    for (host, answer) in req_env.hosts.iter().zip(answers) {
        match answer {
            Ok(history) if release::succeeded_in(&history, &cfg.app, release) => {
                out.emit(&Message::Note {
                    message: format!("this release was healthy on {} ({required})", host.name),
                });
                return Ok(());
            }
            Ok(history) => journals.extend(history),
            Err(e) => unreachable.push(format!("{}: {e}", host.name)),
        }
    }
    let asked = req_env.hosts.len() - unreachable.len();
    let mut msg = format!(
        "policy: release {} has never been healthy in {required} (required by env {for_env}); push it to {required} first. Asked {asked} of {} {required} host(s).",
        release.describe(),
        req_env.hosts.len(),
    );
    if let Some(closest) = closest_there(&journals, &cfg.app, release) {
        msg.push_str(&format!(" {closest}."));
    }
    if !unreachable.is_empty() {
        msg.push_str(&format!(" Unreachable: {}", unreachable.join("; ")));
    }
    Err(Error::Refused(msg))
}

/// How the newest release that succeeded in the required env differs from `release`, service by
/// service, so a refusal says which digest was not proven.
fn closest_there(journal: &[HistoryEntry], app: &str, release: &Release) -> Option<String> {
    let services: Vec<&str> = release.services.keys().map(String::as_str).collect();
    let newest = journal
        .iter()
        .filter(|e| e.app == app && e.outcome == Some(OutcomeKind::Succeeded))
        .max_by_key(|e| (e.accepted_at, e.order_id.clone()))?;
    let there = Release::from_entry(newest, &services)?;
    let diff = release::differences(&release.digests(), &there.digests());
    (!diff.is_empty()).then(|| {
        format!(
            "This push differs from the newest release that succeeded there ({}): {}",
            there.reference,
            diff.join(", ")
        )
    })
}
