//! The rollout's decisions, as pure functions with table tests: what each host does first
//! ([`start_for`]: a new order, or follow the job already running this release), how hosts are
//! batched ([`plan_batches`]), what an agent's answer means for a host
//! ([`HostState::from_outcome`]), which hosts go back to which release after a failure
//! ([`revert_plan`], service by service), what `rollback` without `--to` goes back to
//! ([`rollback_target`]) and what the whole rollout amounts to ([`conclude`]).

use std::collections::BTreeMap;

use proto::Timestamp;
use proto::order::{self, Action, ImageRef, Order};
use proto::wire::{AgentStatus, HistoryEntry, LockHolder, Outcome, OutcomeKind, Refusal};
use serde::Serialize;

use crate::config::DeployConfig;
use crate::output::{HostRollout, Inconsistent, RolloutResult, RolloutSummary};
use crate::release::{Digests, Pin, Release, current_digests, most_common};
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
    /// A job for this very release already runs there (a retried rollout): follow it to its
    /// outcome instead of sending a second order (and a second migration).
    Follow {
        order_id: String,
        run_migration: bool,
    },
}

/// How a host with this status and journal joins a rollout of `release` for `app`; `Err`
/// lists the jobs of `app` running there for another release (or unknown to its journal),
/// which forbid the rollout.
pub fn start_for<'a>(
    status: &'a AgentStatus,
    history: &[HistoryEntry],
    app: &str,
    release: &Release,
) -> Result<Start, Vec<&'a LockHolder>> {
    let services: Vec<&str> = release.services.keys().map(String::as_str).collect();
    let same = |e: &HistoryEntry| {
        Release::from_entry(e, &services).is_some_and(|r| r.digests() == release.digests())
    };
    let mut follow = None;
    let mut conflicts = Vec::new();
    for holder in &status.running {
        match history.iter().find(|e| e.order_id == holder.order_id) {
            Some(e) if e.app != app => {}
            // An exec holds its service until its command ends; there is nothing to follow.
            Some(e) if e.action == Action::Exec => conflicts.push(holder),
            Some(e) if same(e) => {
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

/// A rollback order to send after a failure: a host back to the release it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Revert {
    pub host: usize,
    pub release: Release,
}

/// The rollback orders after a failure: every host this rollout changed, each service back to
/// the digest it ran before — as the host's outcome says (`previous_digest`), else as its status
/// said before the rollout (`before[i]`), by the ref its container was deployed with when that
/// status shows the digest. A host where a service ran nothing before (its first deploy) has no
/// release to go back to and is left out: [`conclude`] reports it.
pub fn revert_plan(
    states: &[HostState],
    outcomes: &[Option<Outcome>],
    before: &[&AgentStatus],
    cfg: &DeployConfig,
) -> Vec<Revert> {
    states
        .iter()
        .enumerate()
        .filter(|(_, s)| s.changed_by_us())
        .filter_map(|(host, _)| {
            let outcome = outcomes.get(host).and_then(Option::as_ref);
            let release = previous_release(outcome, before.get(host)?, cfg)?;
            Some(Revert { host, release })
        })
        .collect()
}

/// What a host ran before an order, service by service (see [`revert_plan`]).
fn previous_release(
    outcome: Option<&Outcome>,
    before: &AgentStatus,
    cfg: &DeployConfig,
) -> Option<Release> {
    let mut pins = BTreeMap::new();
    for service in cfg.services.keys() {
        let shown = before
            .services
            .iter()
            .find(|s| s.app == cfg.app && s.service == *service);
        let shown_image = shown.and_then(|s| s.image.as_ref());
        let digest = outcome
            .and_then(|o| o.services.get(service)?.previous_digest.clone())
            .or_else(|| Some(shown_image?.digest().to_string()))?;
        let pin = match shown_image.filter(|i| i.digest() == digest) {
            Some(image) => Pin {
                image: image.clone(),
                reference: shown
                    .and_then(|s| s.reference.clone())
                    .unwrap_or_else(|| digest.clone()),
            },
            None => Pin {
                image: ImageRef::new(cfg.repository_of(service), &digest).ok()?,
                reference: digest,
            },
        };
        pins.insert(service.clone(), pin);
    }
    let reference = most_common(pins.values().map(|p| &p.reference))?.clone();
    Release::new(reference, pins, None)
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

/// The previous healthy release of `app`'s `services` on one host: the newest succeeded order
/// that ran every one of them, on digests other than `current` (what runs now; when nothing
/// does, other than the newest succeeded order's). `history` is in any order.
pub fn previous_healthy(
    history: &[HistoryEntry],
    app: &str,
    services: &[&str],
    current: &Digests,
) -> Option<Release> {
    let mut ok: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| e.app == app && e.outcome == Some(OutcomeKind::Succeeded))
        // An exec that exited 0 deployed nothing.
        .filter(|e| e.action != Action::Exec)
        .collect();
    ok.sort_by(|a, b| (b.accepted_at, &b.order_id).cmp(&(a.accepted_at, &a.order_id)));
    let mut releases = ok
        .into_iter()
        .filter_map(|e| Release::from_entry(e, services))
        .peekable();
    let current = match current.is_empty() {
        false => current.clone(),
        true => releases.peek()?.digests(),
    };
    releases.find(|r| r.digests() != current)
}

/// What `rollback` without `--to` goes back to: the previous healthy release of every host,
/// given as (name, status, journal), which must be the same (digest for digest) everywhere.
pub fn rollback_target(
    hosts: &[(&str, &AgentStatus, &[HistoryEntry])],
    app: &str,
    services: &[&str],
) -> Result<Release, String> {
    let per_host: Vec<(&str, Option<Release>)> = hosts
        .iter()
        .map(|(name, status, history)| {
            let current = current_digests(status, app, services);
            (*name, previous_healthy(history, app, services, &current))
        })
        .collect();
    let first = per_host.first().and_then(|(_, p)| p.clone());
    let digests = |p: &Option<Release>| p.as_ref().map(Release::digests);
    let all_same = per_host.iter().all(|(_, p)| digests(p) == digests(&first));
    match first {
        Some(found) if all_same => Ok(found),
        _ => {
            let lines: Vec<String> = per_host
                .iter()
                .map(|(h, p)| match p {
                    Some(r) => format!("  {h}: {}", r.describe()),
                    None => format!("  {h}: no earlier healthy release in its journal"),
                })
                .collect();
            Err(format!(
                "no previous healthy release common to every host; choose one with --to REF:\n{}",
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
    pub release: Release,
    pub issued_by: String,
    /// Whether the first host runs `[migrate]`.
    pub migrate_first: bool,
    /// Whether it runs even if this digest's migration already succeeded there (`--rerun-migration`).
    pub rerun_migration: bool,
    /// digest → the registry tags found pointing at it when the rollout started, for the
    /// release and for what each host ran before (where a failure sends it back): each order
    /// carries those of its own digests, for the hosts' `[refs]`.
    pub tags: BTreeMap<String, Vec<String>>,
    /// `--override-freeze REASON`, carried by every order of the rollout (its reverts too).
    pub override_freeze: Option<String>,
}

/// Builds one host's order: `action` to `release` (the rollout's, or a host's previous one when
/// reverting). `[migrate]` and its own image travel only with deploys. Over SSH the order is
/// bound to the host key the transport verified (README, Guarantees), not only to the name the
/// agent reported.
pub fn build_order(
    cfg: &DeployConfig,
    spec: &RolloutSpec,
    peer: &Peer,
    action: Action,
    release: &Release,
    run_migration: bool,
) -> Order {
    let issued_at = Timestamp::now();
    let migrate = cfg.migrate.clone().filter(|_| action == Action::Deploy);
    // Said only when it is not what the migration's service runs anyway.
    let migrate_image = migrate.as_ref().and_then(|m| {
        let own = release.migrate_image.as_ref()?;
        let service = release.services.get(&m.service).map(|p| &p.image);
        (service != Some(own)).then(|| own.clone())
    });
    let mut order = Order {
        order_id: order::new_id(),
        rollout_id: spec.rollout_id.clone(),
        env: spec.env.clone(),
        host: peer.host.clone(),
        host_key: peer.host_key.clone(),
        issued_at,
        not_after: issued_at.plus(order::DEFAULT_VALIDITY),
        issued_by: spec.issued_by.clone(),
        action,
        image: release.image.clone(),
        images: release.images(),
        migrate_image,
        revision: release.revision(),
        reference: release.reference.clone(),
        refs: release.refs(),
        tags: BTreeMap::new(),
        run_migration,
        rerun_migration: run_migration && spec.rerun_migration,
        app: cfg.app.clone(),
        services: cfg.services.clone(),
        migrate,
        exec: None,
        maintenance: None,
        proposal: None,
        override_freeze: spec.override_freeze.clone(),
    };
    order.tags = order
        .all_images()
        .into_iter()
        .filter_map(|i| Some((i.digest().to_string(), spec.tags.get(i.digest())?.clone())))
        .collect();
    order
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
        reference: report.spec.release.reference.clone(),
        image: report.spec.release.image.clone(),
        images: report.spec.release.images(),
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
