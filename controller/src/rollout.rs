//! Rolling one release out across an env's hosts (README "Commands": `push`, `rollback`).
//!
//! [`prepare`] connects to every host, reads its status and journal and refuses before
//! anything changes (a host unreachable, a job of another release running, no common previous
//! version); [`drive`] sends the orders: the first host alone (it runs the migration), then
//! batches, and after a failure the rollback orders to every host it changed. Both work against
//! any [`Connector`]: the real agents, or the fake agents of the tests. Every decision is a pure
//! function of [`decide`]; this module only does the IO.

pub mod canary;
pub mod decide;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use proto::order::{Action, Order, new_id};
use proto::wire::{AgentStatus, HistoryEntry, JobEvent, Outcome, SignedOrder};

pub use decide::{
    Conclusion, HostState, RolloutReport, RolloutSpec, Start, conclude, describe, describe_holder,
    plan_batches, previous_healthy, rollback_target, summarize,
};

use crate::Error;
use crate::config::{Canary, DeployConfig, EnvConfig, HostSpec};
use crate::connector::{AgentConn, Connector, connect_all, report_connections};
use crate::output::{Message, Output};
use crate::release::Release;
use crate::transport::{JobEnd, TransportError};

/// How many journal entries per host are read to find running jobs and previous versions.
pub const HISTORY_DEPTH: usize = 200;

/// Signs orders ([`proto::sign::Signer`] in production).
pub trait OrderSigner: Sync {
    fn sign(&self, order: &Order) -> impl Future<Output = Result<SignedOrder, String>> + Send;
}

/// What is rolled out.
#[derive(Debug, Clone)]
pub enum Target {
    /// A resolved release: `push REF [--set S=REF]`, `rollback --to REF`.
    Release(Release),
    /// `rollback`: the previous healthy release, which every host must agree on.
    PreviousHealthy,
}

/// A rollout before its hosts are known: what, how, and by whom.
#[derive(Debug, Clone)]
pub struct Plan {
    pub action: Action,
    pub target: Target,
    /// Whether the first host runs `[migrate]`.
    pub migrate_first: bool,
    /// `--rerun-migration`.
    pub rerun_migration: bool,
    pub issued_by: String,
    /// `--override-freeze REASON`.
    pub override_freeze: Option<String>,
}

/// One host of the rollout with its open connection and what it said before anything was sent.
pub struct HostLink<K> {
    pub spec: HostSpec,
    pub conn: K,
    pub before: AgentStatus,
    pub history: Vec<HistoryEntry>,
    pub start: Start,
}

/// A rollout ready to drive: every host connected, nothing refused yet.
pub struct Ready<K> {
    pub spec: RolloutSpec,
    pub links: Vec<HostLink<K>>,
}

/// What a rollout runs with.
pub struct Driver<'a, C, S> {
    pub cfg: &'a DeployConfig,
    pub connector: &'a C,
    pub signer: &'a S,
    pub out: &'a dyn Output,
}

/// Connects to every host of `env`, reads its status and journal, decides what is rolled out
/// and how each host joins; refuses (changing nothing) when a host is unreachable or runs a job
/// of this app for another release, or when `rollback` finds no previous release common to all.
pub async fn prepare<C: Connector>(
    cfg: &DeployConfig,
    env: &EnvConfig,
    plan: Plan,
    connector: &C,
    out: &dyn Output,
) -> Result<Ready<C::Conn>, Error> {
    let names: Vec<String> = env.hosts.iter().map(|h| h.name.clone()).collect();
    out.hosts(&names);
    let read = read_hosts(env, connector, out).await?;
    let release = match plan.target {
        Target::Release(release) => release,
        Target::PreviousHealthy => previous_everywhere(cfg, &read, out)?,
    };
    let starts: Vec<Result<Start, String>> = read
        .iter()
        .map(|(spec, _, status, history)| {
            decide::start_for(status, history, &cfg.app, &release).map_err(|holders| {
                let held = holders.iter().map(|h| describe_holder(h));
                let held: Vec<String> = held.collect();
                format!(
                    "  {}: a rollout is in progress: {}",
                    spec.name,
                    held.join("; ")
                )
            })
        })
        .collect();
    let busy: Vec<String> = starts.iter().filter_map(|s| s.clone().err()).collect();
    if !busy.is_empty() {
        return Err(Error::Refused(format!(
            "{} is busy, so the rollout did not start:\n{}",
            env.name,
            busy.join("\n")
        )));
    }
    let links = read
        .into_iter()
        .zip(starts.into_iter().flatten())
        .map(|((spec, conn, before, history), start)| HostLink {
            spec,
            conn,
            before,
            history,
            start,
        })
        .collect();
    let spec = RolloutSpec {
        rollout_id: new_id(),
        env: env.name.clone(),
        action: plan.action,
        release,
        issued_by: plan.issued_by,
        migrate_first: plan.migrate_first,
        rerun_migration: plan.rerun_migration,
        tags: BTreeMap::new(),
        override_freeze: plan.override_freeze,
    };
    Ok(Ready { spec, links })
}

type ReadHost<K> = (HostSpec, K, AgentStatus, Vec<HistoryEntry>);

/// Every host connected, with its status and journal; or a refusal naming those that are not.
async fn read_hosts<C: Connector>(
    env: &EnvConfig,
    connector: &C,
    out: &dyn Output,
) -> Result<Vec<ReadHost<C::Conn>>, Error> {
    let results = connect_all(connector, &env.name, &env.hosts).await;
    report_connections(out, &env.hosts, &results);
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
    let mut conns: Vec<C::Conn> = results.into_iter().flatten().collect();
    let answers = join_all(conns.iter_mut().map(|c| async move {
        let status = c.status().await?;
        let history = c.history(HISTORY_DEPTH).await?;
        Ok::<_, TransportError>((status, history))
    }))
    .await;
    let mut read = Vec::new();
    let mut problems = Vec::new();
    for ((spec, conn), answer) in env.hosts.iter().zip(conns).zip(answers) {
        match answer {
            Ok((status, history)) => read.push((spec.clone(), conn, status, history)),
            Err(e) => problems.push(format!("  {}: cannot read its status: {e}", spec.name)),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Refused(format!(
            "{} is not answering, so the rollout did not start:\n{}",
            env.name,
            problems.join("\n")
        )));
    }
    Ok(read)
}

/// The previous healthy release every host agrees on, said as a note.
fn previous_everywhere<K>(
    cfg: &DeployConfig,
    read: &[ReadHost<K>],
    out: &dyn Output,
) -> Result<Release, Error> {
    let hosts: Vec<(&str, &AgentStatus, &[HistoryEntry])> = read
        .iter()
        .map(|(spec, _, status, history)| (spec.name.as_str(), status, history.as_slice()))
        .collect();
    let services: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
    let release = rollback_target(&hosts, &cfg.app, &services).map_err(Error::Refused)?;
    out.emit(&Message::Note {
        message: format!(
            "previous healthy release on every host: {}",
            release.describe()
        ),
    });
    Ok(release)
}

/// What one host is asked to do.
enum Job {
    Submit(Box<Order>),
    Follow(String),
}

/// Runs a prepared rollout: first host, batches of `max_parallel`, and on a failure the
/// rollback of every host it changed.
pub async fn drive<C: Connector, S: OrderSigner>(
    d: &Driver<'_, C, S>,
    ready: Ready<C::Conn>,
    max_parallel: usize,
    canary: Option<Canary>,
) -> RolloutReport {
    let started = Instant::now();
    let Ready { spec, mut links } = ready;
    let n = links.len();
    let mut states = vec![HostState::Untouched; n];
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut migrated = vec![false; n];
    let (batches, hold_after) =
        canary::canary_batches(n, max_parallel, canary.map_or(0, |c| c.hosts));
    let mut regressed: Option<(Vec<usize>, String)> = None;
    for (b, batch) in batches.into_iter().enumerate() {
        let runs = links
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| batch.contains(i))
            .map(|(i, link)| {
                let (job, migrates) = first_job(d.cfg, &spec, i, link);
                migrated[i] = migrates;
                async move { (i, run_job(d, link, job).await) }
            });
        for (i, (state, outcome)) in join_all(runs.collect::<Vec<_>>()).await {
            states[i] = state;
            outcomes[i] = outcome;
        }
        if !batch.iter().all(|&i| states[i].is_success()) {
            break;
        }
        if let (Some(c), true) = (canary, hold_after == Some(b)) {
            let hosts: Vec<usize> = (0..c.hosts.min(n)).collect();
            if let Err(why) = watch_canary(d, &mut links, &hosts, c.watch).await {
                d.out.emit(&Message::Note {
                    message: format!(
                        "canary regressed during its watch: {why}; rolling the canary back, the \
                         other hosts are not touched"
                    ),
                });
                regressed = Some((hosts, why));
                break;
            }
        }
    }
    let (rollbacks, rollback_outcomes) =
        if states.iter().all(HostState::is_success) && regressed.is_none() {
            Default::default()
        } else {
            revert(d, &spec, &mut links, (&states, &outcomes)).await
        };
    if let Some((hosts, why)) = &regressed {
        for &i in hosts {
            states[i] = canary::after_regression(&states[i], rollbacks.get(&i), why);
        }
    }
    let conclusion = conclude(&states, &rollbacks);
    RolloutReport {
        spec,
        hosts: links.iter().map(|l| l.spec.name.clone()).collect(),
        states,
        outcomes,
        migrated,
        rollbacks,
        rollback_outcomes,
        conclusion,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// How often the canary hosts are asked how they are doing during the watch.
const CANARY_POLL: Duration = Duration::from_millis(500);

/// Holds the rollout while the canary `hosts` run the release for `watch`: each is asked for
/// its status every [`CANARY_POLL`]; the first regression ends the watch (see
/// [`canary::regression`]), as does a canary host that stops answering.
async fn watch_canary<C: Connector, S: OrderSigner>(
    d: &Driver<'_, C, S>,
    links: &mut [HostLink<C::Conn>],
    hosts: &[usize],
    watch: Duration,
) -> Result<(), String> {
    let services: Vec<&str> = d.cfg.services.keys().map(String::as_str).collect();
    let names: Vec<String> = hosts.iter().map(|&i| links[i].spec.name.clone()).collect();
    d.out.emit(&Message::Note {
        message: format!(
            "canary: holding the rollout for {} while {} run(s) it",
            proto::time::format_duration(watch),
            names.join(", ")
        ),
    });
    let mut baseline = Vec::new();
    for &i in hosts {
        let link = &mut links[i];
        let status = link.conn.status().await;
        baseline.push(status.map_err(|e| format!("{}: status: {e}", link.spec.name))?);
    }
    let started = Instant::now();
    while started.elapsed() < watch {
        tokio::time::sleep(CANARY_POLL.min(watch.saturating_sub(started.elapsed()))).await;
        for (k, &i) in hosts.iter().enumerate() {
            let link = &mut links[i];
            let now = link.conn.status().await;
            let now = now.map_err(|e| format!("{}: status: {e}", link.spec.name))?;
            if let Some(why) = canary::regression(&d.cfg.app, &services, &baseline[k], &now) {
                return Err(format!("{}: {why}", link.spec.name));
            }
        }
    }
    d.out.emit(&Message::Note {
        message: format!(
            "canary: {} stayed healthy for {}; going on",
            names.join(", "),
            proto::time::format_duration(watch)
        ),
    });
    Ok(())
}

/// Host `i`'s job in the rollout, and whether it runs the migration.
fn first_job<K: AgentConn>(
    cfg: &DeployConfig,
    spec: &RolloutSpec,
    i: usize,
    link: &HostLink<K>,
) -> (Job, bool) {
    match &link.start {
        Start::Follow {
            order_id,
            run_migration,
        } => (Job::Follow(order_id.clone()), *run_migration),
        Start::Submit => {
            let migrate = i == 0 && spec.migrate_first;
            let peer = link.conn.peer();
            let order = decide::build_order(cfg, spec, peer, spec.action, &spec.release, migrate);
            (Job::Submit(Box::new(order)), migrate)
        }
    }
}

type Reverted = (BTreeMap<usize, HostState>, BTreeMap<usize, Outcome>);

/// Sends every host this rollout changed back to the release it ran, all at once.
async fn revert<C: Connector, S: OrderSigner>(
    d: &Driver<'_, C, S>,
    spec: &RolloutSpec,
    links: &mut [HostLink<C::Conn>],
    (states, outcomes): (&[HostState], &[Option<Outcome>]),
) -> Reverted {
    let before: Vec<&AgentStatus> = links.iter().map(|l| &l.before).collect();
    let plan = decide::revert_plan(states, outcomes, &before, d.cfg);
    if !plan.is_empty() {
        let hosts = plan.iter().map(|r| links[r.host].spec.name.clone());
        d.out.emit(&Message::RollbackStarted {
            hosts: hosts.collect(),
        });
    }
    let runs = links.iter_mut().enumerate().filter_map(|(i, link)| {
        let r = plan.iter().find(|r| r.host == i)?;
        let peer = link.conn.peer();
        let order = decide::build_order(d.cfg, spec, peer, Action::Rollback, &r.release, false);
        Some(async move { (i, run_job(d, link, Job::Submit(Box::new(order))).await) })
    });
    let mut rollbacks = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    for (i, (state, outcome)) in join_all(runs.collect::<Vec<_>>()).await {
        rollbacks.insert(i, state);
        if let Some(o) = outcome {
            outcomes.insert(i, o);
        }
    }
    (rollbacks, outcomes)
}

/// Submits (signed) or follows one order to its end, re-attaching when the connection drops:
/// the agent finishes the job either way.
async fn run_job<C: Connector, S: OrderSigner>(
    d: &Driver<'_, C, S>,
    link: &mut HostLink<C::Conn>,
    job: Job,
) -> (HostState, Option<Outcome>) {
    let host = link.spec.name.clone();
    let out = d.out;
    let mut on_event = |ev: &JobEvent| {
        out.emit(&Message::Job {
            host: host.clone(),
            job: ev.clone(),
        })
    };
    let (order_id, result) = match job {
        Job::Submit(order) => {
            let signed = match d.signer.sign(&order).await {
                Ok(s) => s,
                Err(e) => {
                    let why = format!("cannot sign the order: {e}");
                    let error = why.clone();
                    out.emit(&Message::HostError {
                        host: host.clone(),
                        kind: None,
                        error,
                    });
                    return (HostState::NotSent { why }, None);
                }
            };
            out.emit(&Message::Submitted {
                host: host.clone(),
                order_id: order.order_id.clone(),
                action: order.action,
                image: order.image.clone(),
                images: order.images.clone(),
                run_migration: order.run_migration,
            });
            revive(d, link).await;
            let result = link.conn.submit(signed, &mut on_event).await;
            (order.order_id, result)
        }
        Job::Follow(order_id) => {
            out.emit(&Message::Following {
                host: host.clone(),
                order_id: order_id.clone(),
            });
            let result = link.conn.watch(&order_id, &mut on_event).await;
            (order_id, result)
        }
    };
    let result = reattach(d, link, &order_id, result, &mut on_event).await;
    ended(out, host, result)
}

/// An agent closes a connection that follows no job after its `idle_timeout`, and under a
/// flood the longest idle one (README, "Under abuse"): a host's link that waited for earlier
/// batches may be gone. A cheap request tells, and a new connection replaces a dead one, so an
/// order is not sent into a closed connection (where it would be lost, not refused).
async fn revive<C: Connector, S>(d: &Driver<'_, C, S>, link: &mut HostLink<C::Conn>) {
    if link.conn.history(0).await.is_ok() {
        return;
    }
    if let Ok(conn) = d.connector.connect(&link.spec).await {
        link.conn = conn;
    }
}

/// Re-attaches a few times to an order whose connection dropped.
async fn reattach<C: Connector, S>(
    d: &Driver<'_, C, S>,
    link: &mut HostLink<C::Conn>,
    order_id: &str,
    mut result: Result<JobEnd, TransportError>,
    on_event: &mut (dyn FnMut(&JobEvent) + Send),
) -> Result<JobEnd, TransportError> {
    let mut attempts = 0;
    while let Err(e) = &result {
        if attempts == 3 || matches!(e, TransportError::Agent(_) | TransportError::Protocol(_)) {
            break;
        }
        attempts += 1;
        d.out.emit(&Message::HostError {
            host: link.spec.name.clone(),
            kind: Some(e.into()),
            error: format!("{e}; re-attaching to order {order_id}"),
        });
        tokio::time::sleep(Duration::from_millis(500 * attempts)).await;
        result = match d.connector.connect(&link.spec).await {
            Ok(conn) => {
                link.conn = conn;
                link.conn.watch(order_id, on_event).await
            }
            Err(e) => Err(e),
        };
    }
    result
}

/// Says how a host's order ended and what that means for the host.
fn ended(
    out: &dyn Output,
    host: String,
    result: Result<JobEnd, TransportError>,
) -> (HostState, Option<Outcome>) {
    match result {
        Ok(end) => {
            let state = HostState::from_end(&end);
            match end {
                JobEnd::Outcome(o) => {
                    out.emit(&Message::Outcome {
                        host,
                        outcome: o.clone(),
                    });
                    (state, Some(o))
                }
                JobEnd::Refused(refusal) => {
                    out.emit(&Message::Refused { host, refusal });
                    (state, None)
                }
            }
        }
        Err(e) => {
            let why = e.to_string();
            out.emit(&Message::HostError {
                host,
                kind: Some((&e).into()),
                error: why.clone(),
            });
            (HostState::Unknown { why }, None)
        }
    }
}
