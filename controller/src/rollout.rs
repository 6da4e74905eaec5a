//! Rolling one digest out across an env's hosts (DESIGN §8).
//!
//! The decisions are pure functions with table tests: how hosts are batched
//! ([`plan_batches`]), what an agent's answer means for a host ([`HostState::from_outcome`]),
//! which hosts must be rolled back after a failure ([`rollback_targets`]) and what the whole
//! rollout amounts to ([`conclude`]). [`drive`] only runs that plan against connections.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use proto::order::{Action, ImageRef, Order};
use proto::wire::{
    AgentStatus, HistoryEntry, LockHolder, Outcome, OutcomeKind, Refusal, RefusalKind,
};
use proto::{Timestamp, order};
use serde::Serialize;

use crate::ExitClass;
use crate::config::{DeployConfig, HostSpec};
use crate::output::{Event, Reporter};
use crate::signer::Signer;
use crate::transport::{self, ConnectOptions, Connection, JobEnd, TransportError};

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

    fn is_success(&self) -> bool {
        matches!(self, HostState::Succeeded { .. })
    }

    /// Did this rollout move the host to the new version?
    fn changed_by_us(&self) -> bool {
        matches!(self, HostState::Succeeded { changed: true, .. })
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

/// The rollout's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conclusion {
    #[serde(skip)]
    pub exit: ExitClass,
    pub result: &'static str,
    /// Hosts not known to be on a good version (new everywhere, or previous), with why.
    pub inconsistent: Vec<(usize, String)>,
}

/// Judges a rollout from each host's state and the result of any rollback sent to it.
pub fn conclude(states: &[HostState], rollbacks: &BTreeMap<usize, HostState>) -> Conclusion {
    if states.iter().all(HostState::is_success) {
        return Conclusion {
            exit: ExitClass::Success,
            result: "succeeded",
            inconsistent: Vec::new(),
        };
    }
    let mut inconsistent = Vec::new();
    for (i, s) in states.iter().enumerate() {
        let why = match s {
            HostState::Broken { kind, reason } => Some(format!(
                "{kind}{}",
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )),
            HostState::Unknown { why } => Some(format!("outcome unknown: {why}")),
            HostState::Succeeded { changed: true, .. } => match rollbacks.get(&i) {
                Some(r) if r.is_success() => None,
                Some(r) => Some(format!(
                    "still on the new version: its rollback ended {}",
                    describe(r)
                )),
                None => {
                    Some("still on the new version: no previous version to roll back to".into())
                }
            },
            _ => None,
        };
        if let Some(why) = why {
            inconsistent.push((i, why));
        }
    }
    let attempted_change =
        states.iter().any(|s| matches!(s, HostState::Failed { .. })) || !rollbacks.is_empty();
    match (inconsistent.is_empty(), attempted_change) {
        (false, _) => Conclusion {
            exit: ExitClass::Inconsistent,
            result: "inconsistent",
            inconsistent,
        },
        (true, true) => Conclusion {
            exit: ExitClass::RolledBack,
            result: "rolled-back",
            inconsistent,
        },
        (true, false) => Conclusion {
            exit: ExitClass::Refused,
            result: "refused",
            inconsistent,
        },
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
        HostState::Failed { kind, reason } => {
            format!(
                "{kind}{}",
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        }
        HostState::Broken { kind, reason } => {
            format!(
                "{kind} (NOT on a good version){}",
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )
        }
        HostState::Unknown { why } => format!("unknown: {why}"),
    }
}

/// Jobs running on a host for `app`: holders from status whose order is this app's in the
/// journal, or not found there (an unknown job is assumed to matter).
pub fn conflicting_holders<'a>(
    status: &'a AgentStatus,
    history: &[HistoryEntry],
    app: &str,
) -> Vec<&'a LockHolder> {
    status
        .running
        .iter()
        .filter(|h| {
            history
                .iter()
                .find(|e| e.order_id == h.order_id)
                .is_none_or(|e| e.app == app)
        })
        .collect()
}

/// Describes who holds a lock, for refusals.
pub fn describe_holder(h: &LockHolder) -> String {
    format!(
        "rollout {} by {} (signed by {}, order {}, since {})",
        h.rollout_id, h.issued_by, h.signer, h.order_id, h.since
    )
}

/// The digest each service of `app` runs on a host, per its status (the first service found).
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

/// The previous healthy digest of `app` on one host: the newest succeeded order whose digest
/// differs from what runs now. `history` is in any order.
pub fn previous_healthy(
    history: &[HistoryEntry],
    app: &str,
    current: Option<&str>,
) -> Option<(String, String)> {
    let mut ok: Vec<&HistoryEntry> = history
        .iter()
        .filter(|e| e.app == app && e.outcome == Some(OutcomeKind::Succeeded))
        .collect();
    ok.sort_by(|a, b| (b.accepted_at, &b.order_id).cmp(&(a.accepted_at, &a.order_id)));
    let current = current
        .map(str::to_string)
        .or_else(|| ok.first().map(|e| e.image.digest().to_string()));
    ok.iter()
        .find(|e| Some(e.image.digest()) != current.as_deref())
        .map(|e| (e.image.digest().to_string(), e.reference.clone()))
}

/// One host of the rollout with its open connection.
pub struct HostLink {
    pub spec: HostSpec,
    pub conn: Connection,
    /// Its status before anything was sent.
    pub before: AgentStatus,
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

/// Everything a finished rollout learned.
#[derive(Debug, Clone)]
pub struct RolloutReport {
    pub spec: RolloutSpec,
    pub hosts: Vec<String>,
    pub states: Vec<HostState>,
    pub outcomes: Vec<Option<Outcome>>,
    pub rollbacks: BTreeMap<usize, HostState>,
    pub rollback_outcomes: BTreeMap<usize, Outcome>,
    pub conclusion: Conclusion,
    pub elapsed: Duration,
}

/// Builds the order for one host.
pub fn build_order(
    cfg: &DeployConfig,
    spec: &RolloutSpec,
    host: &str,
    action: Action,
    image: &ImageRef,
    reference: &str,
    run_migration: bool,
) -> Order {
    let issued_at = Timestamp::now();
    Order {
        order_id: order::new_id(),
        rollout_id: spec.rollout_id.clone(),
        env: spec.env.clone(),
        host: host.to_string(),
        issued_at,
        not_after: issued_at.plus(order::DEFAULT_VALIDITY),
        issued_by: spec.issued_by.clone(),
        action,
        image: image.clone(),
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
    }
}

/// Runs a rollout on already connected, lock-checked hosts: first host, batches, and on a
/// failure the rollback of every host it changed.
pub async fn drive(
    cfg: &DeployConfig,
    spec: RolloutSpec,
    max_parallel: usize,
    links: &mut [HostLink],
    signer: &Signer,
    opts: &ConnectOptions,
    out: &dyn Reporter,
) -> RolloutReport {
    let started = Instant::now();
    let n = links.len();
    let mut states = vec![HostState::Untouched; n];
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    for batch in plan_batches(n, max_parallel) {
        let results = join_all(
            links
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| batch.contains(i))
                .map(|(i, link)| {
                    let run_migration = i == 0 && spec.migrate_first;
                    let order = build_order(
                        cfg,
                        &spec,
                        &link.conn.peer.host,
                        spec.action,
                        &spec.image,
                        &spec.reference,
                        run_migration,
                    );
                    async move { (i, run_order(link, order, signer, opts, out).await) }
                }),
        )
        .await;
        for (i, (state, outcome)) in results {
            states[i] = state;
            outcomes[i] = outcome;
        }
        if !batch.iter().all(|&i| states[i].is_success()) {
            break;
        }
    }

    let mut rollbacks = BTreeMap::new();
    let mut rollback_outcomes = BTreeMap::new();
    if !states.iter().all(HostState::is_success) {
        let fallback: Vec<Option<String>> = links
            .iter()
            .map(|l| current_digest(&l.before, &cfg.app))
            .collect();
        let targets = rollback_targets(&states, &fallback);
        if !targets.is_empty() {
            let names: Vec<String> = targets
                .iter()
                .map(|(i, _)| links[*i].spec.name.clone())
                .collect();
            out.emit(&Event::RollbackStarted { hosts: names });
        }
        let sendable: Vec<(usize, ImageRef, String)> = targets
            .iter()
            .filter_map(|(i, prev)| {
                let prev = prev.as_ref()?;
                let image = ImageRef::new(spec.image.repository(), prev).ok()?;
                let reference = current_reference(&links[*i].before, &cfg.app)
                    .filter(|_| {
                        current_digest(&links[*i].before, &cfg.app).as_deref()
                            == Some(prev.as_str())
                    })
                    .unwrap_or_else(|| prev.clone());
                Some((*i, image, reference))
            })
            .collect();
        let results = join_all(links.iter_mut().enumerate().filter_map(|(i, link)| {
            let (_, image, reference) = sendable.iter().find(|(t, _, _)| *t == i)?;
            let order = build_order(
                cfg,
                &spec,
                &link.conn.peer.host,
                Action::Rollback,
                image,
                reference,
                false,
            );
            Some(async move { (i, run_order(link, order, signer, opts, out).await) })
        }))
        .await;
        for (i, (state, outcome)) in results {
            rollbacks.insert(i, state);
            if let Some(o) = outcome {
                rollback_outcomes.insert(i, o);
            }
        }
    }
    let conclusion = conclude(&states, &rollbacks);
    RolloutReport {
        spec,
        hosts: links.iter().map(|l| l.spec.name.clone()).collect(),
        states,
        outcomes,
        rollbacks,
        rollback_outcomes,
        conclusion,
        elapsed: started.elapsed(),
    }
}

/// Signs and submits one order, follows it to its outcome, and re-attaches if the connection
/// drops (the agent finishes the job regardless; DESIGN §2.4).
async fn run_order(
    link: &mut HostLink,
    order: Order,
    signer: &Signer,
    opts: &ConnectOptions,
    out: &dyn Reporter,
) -> (HostState, Option<Outcome>) {
    let host = link.spec.name.clone();
    let signed = match signer.sign_order(&order).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot sign the order: {e}");
            out.emit(&Event::HostError {
                host: host.clone(),
                error: why.clone(),
            });
            return (HostState::NotSent { why }, None);
        }
    };
    out.emit(&Event::Submitted {
        host: host.clone(),
        order_id: order.order_id.clone(),
        action: order.action,
        image: order.image.to_string(),
        run_migration: order.run_migration,
    });
    let mut on_event = |ev: &proto::wire::JobEvent| {
        out.emit(&Event::Job {
            host: host.clone(),
            job: ev.clone(),
        })
    };
    let mut result = link.conn.submit(signed, &mut on_event).await;
    // Re-attach a few times: a dropped SSH session does not stop the job on the host.
    let mut attempts = 0;
    while let Err(e) = &result {
        if attempts == 3 || matches!(e, TransportError::Agent(_) | TransportError::Protocol(_)) {
            break;
        }
        attempts += 1;
        out.emit(&Event::HostError {
            host: host.clone(),
            error: format!("{e}; re-attaching to order {}", order.order_id),
        });
        tokio::time::sleep(Duration::from_millis(500 * attempts)).await;
        match transport::connect(&link.spec.target, opts).await {
            Ok(conn) => {
                link.conn = conn;
                result = link.conn.watch(&order.order_id, &mut on_event).await;
            }
            Err(e) => result = Err(e),
        }
    }
    match result {
        Ok(end) => {
            let state = HostState::from_end(&end);
            match end {
                JobEnd::Outcome(o) => {
                    out.emit(&Event::Outcome {
                        host,
                        outcome: o.clone(),
                    });
                    (state, Some(o))
                }
                JobEnd::Refused(refusal) => {
                    out.emit(&Event::Refused { host, refusal });
                    (state, None)
                }
            }
        }
        Err(e) => {
            let why = e.to_string();
            out.emit(&Event::HostError {
                host,
                error: why.clone(),
            });
            (HostState::Unknown { why }, None)
        }
    }
}

/// Whether a refusal means "someone else is rolling out".
pub fn is_lock_refusal(r: &Refusal) -> bool {
    r.kind == RefusalKind::RolloutInProgress
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::wire::{Health, ServiceResult, ServiceStatus};

    fn ok(prev: Option<&str>) -> HostState {
        HostState::Succeeded {
            changed: true,
            previous: prev.map(String::from),
        }
    }
    fn failed() -> HostState {
        HostState::Failed {
            kind: OutcomeKind::RolledBack,
            reason: Some("health".into()),
        }
    }
    fn refused() -> HostState {
        HostState::Refused {
            refusal: Refusal {
                kind: RefusalKind::RolloutInProgress,
                message: "held".into(),
                holder: None,
            },
        }
    }

    #[test]
    fn batches_put_the_first_host_alone() {
        let cases: &[(usize, usize, &[&[usize]])] = &[
            (0, 1, &[]),
            (1, 1, &[&[0]]),
            (2, 1, &[&[0], &[1]]),
            (3, 2, &[&[0], &[1, 2]]),
            (4, 2, &[&[0], &[1, 2], &[3]]),
            (5, 10, &[&[0], &[1, 2, 3, 4]]),
            (3, 0, &[&[0], &[1], &[2]]),
        ];
        for (n, p, want) in cases {
            let want: Vec<Vec<usize>> = want.iter().map(|b| b.to_vec()).collect();
            assert_eq!(plan_batches(*n, *p), want, "{n} hosts, max_parallel {p}");
        }
    }

    #[test]
    fn outcomes_map_to_host_states() {
        let mut o = Outcome {
            order_id: "o".into(),
            rollout_id: "r".into(),
            kind: OutcomeKind::Succeeded,
            failure: None,
            reason: None,
            changed: true,
            log_tail: vec![],
            services: BTreeMap::from([(
                "web".into(),
                ServiceResult {
                    digest: Some("sha256:new".into()),
                    previous_digest: Some("sha256:old".into()),
                    container_id: None,
                },
            )]),
            started_at: Timestamp::now(),
            finished_at: Timestamp::now(),
            rollback_ms: None,
        };
        assert_eq!(HostState::from_outcome(&o), ok(Some("sha256:old")));
        o.kind = OutcomeKind::RolledBack;
        o.changed = false;
        assert!(matches!(
            HostState::from_outcome(&o),
            HostState::Failed {
                kind: OutcomeKind::RolledBack,
                ..
            }
        ));
        o.kind = OutcomeKind::RollbackFailed;
        assert!(matches!(
            HostState::from_outcome(&o),
            HostState::Broken { .. }
        ));
        o.kind = OutcomeKind::Failed;
        o.changed = true;
        assert!(matches!(
            HostState::from_outcome(&o),
            HostState::Broken { .. }
        ));
    }

    #[test]
    fn rollback_targets_are_the_hosts_this_rollout_changed() {
        let states = vec![
            ok(Some("sha256:a")),
            ok(None),
            HostState::Succeeded {
                changed: false,
                previous: None,
            },
            failed(),
            HostState::Untouched,
        ];
        let fallback = vec![None, Some("sha256:b".to_string()), None, None, None];
        assert_eq!(
            rollback_targets(&states, &fallback),
            vec![(0, Some("sha256:a".into())), (1, Some("sha256:b".into()))]
        );
        assert_eq!(rollback_targets(&[ok(None)], &[None]), vec![(0, None)]);
    }

    #[test]
    fn conclusions_follow_the_exit_code_contract() {
        let rb_ok = |i: usize| (i, ok(Some("x")));
        type Case = (
            Vec<HostState>,
            Vec<(usize, HostState)>,
            ExitClass,
            Vec<usize>,
        );
        let cases: Vec<Case> = vec![
            // everything succeeded
            (vec![ok(None), ok(None)], vec![], ExitClass::Success, vec![]),
            // first host failed and rolled itself back, second untouched
            (
                vec![failed(), HostState::Untouched],
                vec![],
                ExitClass::RolledBack,
                vec![],
            ),
            // last batch failed, the changed hosts were rolled back
            (
                vec![ok(Some("a")), ok(Some("a")), failed()],
                vec![rb_ok(0), rb_ok(1)],
                ExitClass::RolledBack,
                vec![],
            ),
            // refused before anything changed
            (
                vec![refused(), HostState::Untouched],
                vec![],
                ExitClass::Refused,
                vec![],
            ),
            (
                vec![HostState::NotSent { why: "sign".into() }],
                vec![],
                ExitClass::Refused,
                vec![],
            ),
            // refused on a later host after the first changed: rolled back
            (
                vec![ok(Some("a")), refused()],
                vec![rb_ok(0)],
                ExitClass::RolledBack,
                vec![],
            ),
            // a rollback that failed leaves that host inconsistent
            (
                vec![ok(Some("a")), failed()],
                vec![(0, failed())],
                ExitClass::Inconsistent,
                vec![0],
            ),
            // no previous version to go back to
            (
                vec![ok(None), failed()],
                vec![],
                ExitClass::Inconsistent,
                vec![0],
            ),
            // the agent could not restore
            (
                vec![HostState::Broken {
                    kind: OutcomeKind::RollbackFailed,
                    reason: None,
                }],
                vec![],
                ExitClass::Inconsistent,
                vec![0],
            ),
            // lost track of a host
            (
                vec![ok(Some("a")), HostState::Unknown { why: "gone".into() }],
                vec![rb_ok(0)],
                ExitClass::Inconsistent,
                vec![1],
            ),
            // already running the new version elsewhere: nothing to roll back there
            (
                vec![
                    HostState::Succeeded {
                        changed: false,
                        previous: None,
                    },
                    failed(),
                ],
                vec![],
                ExitClass::RolledBack,
                vec![],
            ),
        ];
        for (states, rollbacks, exit, bad) in cases {
            let c = conclude(&states, &rollbacks.clone().into_iter().collect());
            assert_eq!(c.exit, exit, "{states:?} {rollbacks:?}");
            assert_eq!(
                c.inconsistent.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
                bad,
                "{states:?}"
            );
        }
    }

    fn entry(
        order_id: &str,
        secs: u64,
        digest_byte: char,
        outcome: Option<OutcomeKind>,
        app: &str,
    ) -> HistoryEntry {
        HistoryEntry {
            order_id: order_id.into(),
            rollout_id: "r".into(),
            action: Action::Deploy,
            signer: "s".into(),
            issued_by: "me".into(),
            accepted_at: Timestamp::from_unix_secs(secs),
            reference: format!("ref-{digest_byte}"),
            image: ImageRef::new(
                "r/web",
                &format!("sha256:{}", digest_byte.to_string().repeat(64)),
            )
            .unwrap(),
            app: app.into(),
            services: vec!["web".into()],
            outcome,
            reason: None,
            duration_ms: None,
            run_migration: false,
        }
    }

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn previous_healthy_skips_failures_other_apps_and_the_current_digest() {
        let s = Some(OutcomeKind::Succeeded);
        let history = vec![
            entry("03", 3, 'c', Some(OutcomeKind::RolledBack), "web"),
            entry("02", 2, 'b', s, "web"),
            entry("01", 1, 'a', s, "web"),
            entry("04", 4, 'e', s, "other"),
        ];
        assert_eq!(
            previous_healthy(&history, "web", Some(&d('b'))),
            Some((d('a'), "ref-a".into()))
        );
        assert_eq!(
            previous_healthy(&history, "web", None),
            Some((d('a'), "ref-a".into()))
        );
        assert_eq!(
            previous_healthy(&history, "web", Some(&d('a'))),
            Some((d('b'), "ref-b".into()))
        );
        assert_eq!(previous_healthy(&history[..2], "web", Some(&d('b'))), None);
        assert_eq!(previous_healthy(&[], "web", None), None);
    }

    #[test]
    fn lock_holders_of_other_apps_do_not_conflict() {
        let holder = |id: &str| LockHolder {
            order_id: id.into(),
            rollout_id: "r".into(),
            signer: "s".into(),
            issued_by: "ci".into(),
            since: Timestamp::now(),
        };
        let status = AgentStatus {
            agent_version: "1".into(),
            host: "h".into(),
            env: "e".into(),
            uptime_secs: 1,
            services: vec![ServiceStatus {
                app: "web".into(),
                service: "web".into(),
                container_id: None,
                image: Some(ImageRef::new("r/web", &d('a')).unwrap()),
                reference: Some("v1".into()),
                health: Health::Healthy,
                since: Timestamp::now(),
                last_outcome: None,
                last_order: None,
                previous_digest: None,
            }],
            running: vec![holder("01"), holder("04"), holder("99")],
        };
        let history = vec![
            entry("01", 1, 'a', None, "web"),
            entry("04", 4, 'e', None, "other"),
        ];
        let ids: Vec<&str> = conflicting_holders(&status, &history, "web")
            .iter()
            .map(|h| h.order_id.as_str())
            .collect();
        assert_eq!(ids, vec!["01", "99"]);
        assert_eq!(current_digest(&status, "web"), Some(d('a')));
        assert_eq!(current_digest(&status, "other"), None);
        assert_eq!(current_reference(&status, "web").as_deref(), Some("v1"));
    }

    /// A fake agent that drops the first connection mid-job and answers the re-attach.
    #[tokio::test]
    async fn a_dropped_connection_reattaches_to_the_order() {
        use frame_io::{FrameReader, write_frame};
        use proto::wire::{JobEvent, Phase, Reply, Request};

        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let hello = Reply::Hello {
            protocol: proto::wire::PROTOCOL_VERSION,
            agent_version: "test".into(),
            host: "h1".into(),
            env: "staging".into(),
        };
        let server = tokio::spawn(async move {
            let mut seen_order = String::new();
            for round in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                let (r, mut w) = stream.into_split();
                let mut frames = FrameReader::new(r);
                let _: Request = frames.next().await.unwrap().unwrap();
                write_frame(&mut w, &hello).await.unwrap();
                match frames.next::<Request>().await.unwrap().unwrap() {
                    Request::Submit { order } if round == 0 => {
                        let order: Order = serde_json::from_str(&order.payload).unwrap();
                        seen_order = order.order_id.clone();
                        let event = JobEvent {
                            order_id: order.order_id,
                            at: Timestamp::now(),
                            phase: Phase::Accepted,
                            service: None,
                            message: "accepted".into(),
                        };
                        write_frame(&mut w, &Reply::Event { event }).await.unwrap();
                        // Drop the connection mid-job.
                    }
                    Request::Watch { order_id } if round == 1 => {
                        assert_eq!(order_id, seen_order);
                        let outcome = Outcome {
                            order_id,
                            rollout_id: "r".into(),
                            kind: OutcomeKind::Succeeded,
                            failure: None,
                            reason: None,
                            changed: true,
                            log_tail: vec![],
                            services: BTreeMap::new(),
                            started_at: Timestamp::now(),
                            finished_at: Timestamp::now(),
                            rollback_ms: None,
                        };
                        write_frame(&mut w, &Reply::Outcome { outcome })
                            .await
                            .unwrap();
                    }
                    other => panic!("round {round}: unexpected {other:?}"),
                }
            }
        });

        let toml = format!(
            "image = \"127.0.0.1:5000/acme/web\"\n[services.web]\n[env.staging]\nhosts = [{{ name = \"h1\", socket = {:?} }}]\n",
            sock.display().to_string()
        );
        let cfg = DeployConfig::parse(&toml, std::path::Path::new("deploy.toml")).unwrap();
        let env = cfg.env("staging").unwrap();
        let opts = ConnectOptions::from_env(None);
        let conn = transport::connect(&env.hosts[0].target, &opts)
            .await
            .unwrap();
        let before = AgentStatus {
            agent_version: "test".into(),
            host: "h1".into(),
            env: "staging".into(),
            uptime_secs: 0,
            services: vec![],
            running: vec![],
        };
        let mut links = vec![HostLink {
            spec: env.hosts[0].clone(),
            conn,
            before,
        }];
        let key = crate::signer::generate_key_files(&dir.path().join("key"), "test").unwrap();
        let signer = Signer::from_key_file(&key.private_path).unwrap();
        let spec = RolloutSpec {
            rollout_id: order::new_id(),
            env: "staging".into(),
            action: Action::Deploy,
            image: ImageRef::new("127.0.0.1:5000/acme/web", &d('a')).unwrap(),
            reference: "v1".into(),
            issued_by: "test".into(),
            migrate_first: false,
            rerun_migration: false,
        };
        let report = drive(
            &cfg,
            spec,
            1,
            &mut links,
            &signer,
            &opts,
            &crate::output::Silent,
        )
        .await;
        server.await.unwrap();
        assert_eq!(
            report.conclusion.exit,
            ExitClass::Success,
            "{:?}",
            report.states
        );
        assert!(matches!(
            report.states[0],
            HostState::Succeeded { changed: true, .. }
        ));
    }
}
