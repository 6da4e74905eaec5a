//! The rollout's decisions, as pure functions with table tests: what each host does first
//! ([`start_for`]: a new order, or follow the job already running this digest), how hosts are
//! batched ([`plan_batches`]), what an agent's answer means for a host
//! ([`HostState::from_outcome`]), which hosts go back where after a failure ([`revert_plan`]),
//! what `rollback` without `--to` goes back to ([`rollback_target`]) and what the whole rollout
//! amounts to ([`conclude`]).

use std::collections::BTreeMap;

use proto::order::{self, Action, ImageRef, Order};
use proto::wire::{AgentStatus, HistoryEntry, LockHolder, Outcome, OutcomeKind, Refusal};
use proto::{Timestamp, order::short_digest};
use serde::Serialize;

use crate::config::DeployConfig;
use crate::output::{HostRollout, Inconsistent, RolloutResult, RolloutSummary};
use crate::transport::{JobEnd, Peer};

/// Where a host stands after its part of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum HostState {
    /// No order was sent to it.
    Untouched,
    /// No order reached it because it could not be prepared (e.g. signing failed).
    NotSent { why: String },
    /// The agent refused the order; nothing changed.
    Refused { refusal: Refusal },
    /// The new version serves. `changed` is false when it was already serving.
    Succeeded {
        changed: bool,
        previous: Option<String>,
    },
    /// The order failed and the host is back on (or still on) its previous version.
    Failed {
        kind: OutcomeKind,
        reason: Option<String>,
    },
    /// The order failed and the host is not on a known-good version.
    Broken {
        kind: OutcomeKind,
        reason: Option<String>,
    },
    /// The connection was lost and the outcome could not be learned.
    Unknown { why: String },
}

impl HostState {
    pub fn from_outcome(o: &Outcome) -> HostState {
        match o.kind {
            OutcomeKind::Succeeded => HostState::Succeeded {
                changed: o.changed,
                previous: o.services.values().find_map(|s| s.previous_digest.clone()),
            },
            kind if !kind.is_consistent() || o.changed => HostState::Broken {
                kind,
                reason: o.reason.clone(),
            },
            kind => HostState::Failed {
                kind,
                reason: o.reason.clone(),
            },
        }
    }

    pub fn from_end(end: &JobEnd) -> HostState {
        match end {
            JobEnd::Outcome(o) => HostState::from_outcome(o),
            JobEnd::Refused(r) => HostState::Refused { refusal: r.clone() },
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, HostState::Succeeded { .. })
    }

    /// Did this rollout move the host to the new version?
    fn changed_by_us(&self) -> bool {
        matches!(self, HostState::Succeeded { changed: true, .. })
    }
}

/// How a host joins the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new order.
    Submit,
    /// A job for this very digest already runs there (a retried rollout): follow it to its
    /// outcome instead of sending a second order (and a second migration).
    Follow {
        order_id: String,
        run_migration: bool,
    },
}

/// How a host with this status and journal joins a rollout of `digest` for `app`; `Err` lists
/// the jobs of `app` running there for another digest (or unknown to its journal), which
/// forbid the rollout.
pub fn start_for<'a>(
    status: &'a AgentStatus,
    history: &[HistoryEntry],
    app: &str,
    digest: &str,
) -> Result<Start, Vec<&'a LockHolder>> {
    let mut follow = None;
    let mut conflicts = Vec::new();
    for holder in &status.running {
        match history.iter().find(|e| e.order_id == holder.order_id) {
            Some(e) if e.app != app => {}
            // An exec holds its service until its command ends; there is nothing to follow.
            Some(e) if e.action == Action::Exec => conflicts.push(holder),
            Some(e) if e.image.digest() == digest => {
                follow = Some(Start::Follow {
                    order_id: e.order_id.clone(),
                    run_migration: e.run_migration,
                });
            }
            _ => conflicts.push(holder),
        }
    }
    match (conflicts.is_empty(), follow) {
        (false, _) => Err(conflicts),
        (true, Some(f)) => Ok(f),
        (true, None) => Ok(Start::Submit),
    }
}

/// Host indexes per batch: the first host alone (it runs the migration), then `max_parallel`
/// at a time, in deploy.toml order.
pub fn plan_batches(hosts: usize, max_parallel: usize) -> Vec<Vec<usize>> {
    if hosts == 0 {
        return Vec::new();
    }
    let mut batches = vec![vec![0]];
    let rest: Vec<usize> = (1..hosts).collect();
    batches.extend(rest.chunks(max_parallel.max(1)).map(<[usize]>::to_vec));
    batches
}

/// Hosts to send back, each with the digest it ran before: every host this rollout changed.
/// A changed host whose previous digest is unknown (its first deploy) cannot be sent back.
pub fn rollback_targets(
    states: &[HostState],
    fallback_previous: &[Option<String>],
) -> Vec<(usize, Option<String>)> {
    states
        .iter()
        .enumerate()
        .filter(|(_, s)| s.changed_by_us())
        .map(|(i, s)| {
            let previous = match s {
                HostState::Succeeded {
                    previous: Some(p), ..
                } => Some(p.clone()),
                _ => fallback_previous.get(i).cloned().flatten(),
            };
            (i, previous)
        })
        .collect()
}

/// A rollback order to send after a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Revert {
    pub host: usize,
    pub image: ImageRef,
    /// The ref the host's containers were deployed with, when they ran that digest; else the
    /// digest itself.
    pub reference: String,
}

/// The rollback orders after a failure: every host this rollout changed, back to the digest
/// it ran (`before[i]` is its status before the rollout). Hosts with no previous digest are
/// left out: [`conclude`] reports them.
pub fn revert_plan(
    states: &[HostState],
    before: &[&AgentStatus],
    app: &str,
    repository: &str,
) -> Vec<Revert> {
    let fallback: Vec<Option<String>> = before.iter().map(|s| current_digest(s, app)).collect();
    rollback_targets(states, &fallback)
        .into_iter()
        .filter_map(|(host, previous)| {
            let previous = previous?;
            let image = ImageRef::new(repository, &previous).ok()?;
            let reference = current_reference(before[host], app)
                .filter(|_| fallback[host].as_deref() == Some(previous.as_str()))
                .unwrap_or(previous);
            Some(Revert {
                host,
                image,
                reference,
            })
        })
        .collect()
}

/// The rollout's verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Conclusion {
    pub result: RolloutResult,
    /// Hosts not known to be on a good version (new everywhere, or previous), with why.
    pub inconsistent: Vec<(usize, String)>,
}

/// Judges a rollout from each host's state and the result of any rollback sent to it.
pub fn conclude(states: &[HostState], rollbacks: &BTreeMap<usize, HostState>) -> Conclusion {
    if states.iter().all(HostState::is_success) {
        return Conclusion {
            result: RolloutResult::Succeeded,
            inconsistent: Vec::new(),
        };
    }
    let inconsistent: Vec<(usize, String)> = states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, not_good(s, rollbacks.get(&i))?)))
        .collect();
    let attempted_change =
        states.iter().any(|s| matches!(s, HostState::Failed { .. })) || !rollbacks.is_empty();
    let result = match (inconsistent.is_empty(), attempted_change) {
        (false, _) => RolloutResult::Inconsistent,
        (true, true) => RolloutResult::RolledBack,
        (true, false) => RolloutResult::Refused,
    };
    Conclusion {
        result,
        inconsistent,
    }
}

/// Why a host of a failed rollout is not on a known-good version, if it is not.
fn not_good(state: &HostState, rollback: Option<&HostState>) -> Option<String> {
    match state {
        HostState::Broken { kind, reason } => Some(with_reason(&kind.to_string(), reason)),
        HostState::Unknown { why } => Some(format!("outcome unknown: {why}")),
        HostState::Succeeded { changed: true, .. } => match rollback {
            Some(r) if r.is_success() => None,
            Some(r) => Some(format!(
                "still on the new version: its rollback ended {}",
                describe(r)
            )),
            None => Some("still on the new version: no previous version to roll back to".into()),
        },
        _ => None,
    }
}

fn with_reason(what: &str, reason: &Option<String>) -> String {
    match reason {
        Some(r) => format!("{what}: {r}"),
        None => what.to_string(),
    }
}

/// A short phrase for a host state, for summaries.
pub fn describe(s: &HostState) -> String {
    match s {
        HostState::Untouched => "untouched".into(),
        HostState::NotSent { why } => format!("not sent: {why}"),
        HostState::Refused { refusal } => {
            let holder = refusal
                .holder
                .as_ref()
                .map(|h| format!(" [held by {}]", describe_holder(h)))
                .unwrap_or_default();
            format!("refused ({}): {}{holder}", refusal.kind, refusal.message)
        }
        HostState::Succeeded { changed: true, .. } => "succeeded".into(),
        HostState::Succeeded { changed: false, .. } => "succeeded (already running it)".into(),
        HostState::Failed { kind, reason } => with_reason(&kind.to_string(), reason),
        HostState::Broken { kind, reason } => {
            with_reason(&format!("{kind} (NOT on a good version)"), reason)
        }
        HostState::Unknown { why } => format!("unknown: {why}"),
    }
}

/// Describes who holds a lock, for refusals.
pub fn describe_holder(h: &LockHolder) -> String {
    format!(
        "rollout {} by {} (signed by {}, order {}, since {})",
        h.rollout_id, h.issued_by, h.signer, h.order_id, h.since
    )
}

/// The digest `app` runs on a host, per its status (the first service found).
pub fn current_digest(status: &AgentStatus, app: &str) -> Option<String> {
    status
        .services
        .iter()
        .filter(|s| s.app == app)
        .find_map(|s| s.image.as_ref().map(|i| i.digest().to_string()))
}

/// The ref the host's containers of `app` were deployed with, for orders that go back to it.
pub fn current_reference(status: &AgentStatus, app: &str) -> Option<String> {
    status
        .services
        .iter()
        .filter(|s| s.app == app)
        .find_map(|s| s.reference.clone())
}

/// The previous healthy digest of `app` on one host, with its ref: the newest succeeded order
/// whose digest differs from what runs now. `history` is in any order.
pub fn previous_healthy(
    history: &[HistoryEntry],
    app: &str,
    current: Option<&str>,
) -> Option<(String, String)> {
    let mut ok: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| e.app == app && e.outcome == Some(OutcomeKind::Succeeded))
        // An exec that exited 0 deployed nothing.
        .filter(|e| e.action != Action::Exec)
        .collect();
    ok.sort_by(|a, b| (b.accepted_at, &b.order_id).cmp(&(a.accepted_at, &a.order_id)));
    let current = current
        .map(str::to_string)
        .or_else(|| ok.first().map(|e| e.image.digest().to_string()));
    ok.iter()
        .find(|e| Some(e.image.digest()) != current.as_deref())
        .map(|e| (e.image.digest().to_string(), e.reference.clone()))
}

/// What `rollback` without `--to` goes back to: the previous healthy digest (and its ref) of
/// every host, given as (name, status, journal), which must be the same everywhere.
pub fn rollback_target(
    hosts: &[(&str, &AgentStatus, &[HistoryEntry])],
    app: &str,
) -> Result<(String, String), String> {
    let per_host: Vec<(&str, Option<(String, String)>)> = hosts
        .iter()
        .map(|(name, status, history)| {
            let current = current_digest(status, app);
            (*name, previous_healthy(history, app, current.as_deref()))
        })
        .collect();
    let first = per_host.first().and_then(|(_, p)| p.clone());
    let all_same = per_host
        .iter()
        .all(|(_, p)| p.as_ref().map(|(d, _)| d) == first.as_ref().map(|(d, _)| d));
    match first {
        Some(found) if all_same => Ok(found),
        _ => {
            let lines: Vec<String> = per_host
                .iter()
                .map(|(h, p)| match p {
                    Some((d, r)) => format!("  {h}: {r} ({})", short_digest(d)),
                    None => format!("  {h}: no earlier healthy version in its journal"),
                })
                .collect();
            Err(format!(
                "no previous healthy version common to every host; choose one with --to REF:\n{}",
                lines.join("\n")
            ))
        }
    }
}

/// What is being rolled out, shared by every host's order.
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    pub rollout_id: String,
    pub env: String,
    pub action: Action,
    pub image: ImageRef,
    pub reference: String,
    pub issued_by: String,
    /// Whether the first host runs `[migrate]`.
    pub migrate_first: bool,
    /// Whether it runs even if this digest's migration already succeeded there (`--rerun-migration`).
    pub rerun_migration: bool,
}

/// Builds one host's order: `action` to `image` (the rollout's, or a host's previous one when
/// reverting). `[migrate]` travels only with deploys. Over SSH the order is bound to the host
/// key the transport verified (README, Guarantees), not only to the name the agent reported.
pub fn build_order(
    cfg: &DeployConfig,
    spec: &RolloutSpec,
    peer: &Peer,
    action: Action,
    (image, reference): (&ImageRef, &str),
    run_migration: bool,
) -> Order {
    let issued_at = Timestamp::now();
    Order {
        order_id: order::new_id(),
        rollout_id: spec.rollout_id.clone(),
        env: spec.env.clone(),
        host: peer.host.clone(),
        host_key: peer.host_key.clone(),
        issued_at,
        not_after: issued_at.plus(order::DEFAULT_VALIDITY),
        issued_by: spec.issued_by.clone(),
        action,
        image: image.clone(),
        images: Default::default(),
        migrate_image: None,
        revision: None,
        reference: reference.to_string(),
        run_migration,
        rerun_migration: run_migration && spec.rerun_migration,
        app: cfg.app.clone(),
        services: cfg.services.clone(),
        migrate: if action == Action::Deploy {
            cfg.migrate.clone()
        } else {
            None
        },
        exec: None,
    }
}

/// Everything a finished rollout learned, host by host in deploy.toml order.
#[derive(Debug, Clone)]
pub struct RolloutReport {
    pub spec: RolloutSpec,
    pub hosts: Vec<String>,
    pub states: Vec<HostState>,
    pub outcomes: Vec<Option<Outcome>>,
    /// Whether each host's order (sent or followed) ran `[migrate]`.
    pub migrated: Vec<bool>,
    pub rollbacks: BTreeMap<usize, HostState>,
    pub rollback_outcomes: BTreeMap<usize, Outcome>,
    pub conclusion: Conclusion,
    pub elapsed_ms: u64,
}

/// The summary a rollout's report makes.
pub fn summarize(report: &RolloutReport) -> RolloutSummary {
    let c = &report.conclusion;
    RolloutSummary {
        env: report.spec.env.clone(),
        rollout_id: report.spec.rollout_id.clone(),
        reference: report.spec.reference.clone(),
        image: report.spec.image.clone(),
        result: c.result,
        elapsed_ms: report.elapsed_ms,
        hosts: (0..report.hosts.len())
            .map(|i| HostRollout {
                host: report.hosts[i].clone(),
                state: report.states[i].clone(),
                outcome: report.outcomes[i].clone(),
                run_migration: report.migrated[i],
                rollback: report.rollbacks.get(&i).cloned(),
                rollback_outcome: report.rollback_outcomes.get(&i).cloned(),
            })
            .collect(),
        inconsistent: c
            .inconsistent
            .iter()
            .map(|(i, why)| Inconsistent {
                host: report.hosts[*i].clone(),
                why: why.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests;
