//! The agent's shared state and what it does for each request: accept and run orders,
//! re-attach watchers, answer status, history and logs, recover unfinished orders, and watch
//! health. The socket side lives in [`crate::server`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::Order;
use proto::accept::AcceptPolicy;

use crate::host_files::Filesystem;
use proto::time::Timestamp;
use proto::wire::{
    AgentStatus, Health, HistoryEntry, JobEvent, LockHolder, Outcome, OutcomeKind, Phase, Refusal,
    RefusalKind, ServiceLogs, ServiceStatus, SignedOrder,
};
use tokio::sync::watch;
use tracing::Instrument;

use crate::alerts::Source;
use crate::alerts::delivery::Alerts;
use crate::backend::Backend;
use crate::condition::Seen;
use crate::config::AgentConfig;
use crate::health::{HealthBook, HealthFile, Observation};
use crate::host_health::host_health;
use crate::index::Index;
use crate::job::{Job, blocking, lock};
use crate::journal::{Journal, JournalError, OrderRecord, SignerInfo, is_valid_order_id};
use crate::locks::{LockDecision, ServiceKey, decide, keys_of};
use crate::proposals::ProposalStore;
use crate::replay::{self, ReplayStore};

mod health_model;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Most history entries one request returns (a frame is at most 4 MiB).
pub const MAX_HISTORY: usize = 1000;
/// Most log lines one request returns per service.
pub const MAX_LOG_LINES: usize = 5000;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("{0}")]
    ReplayStore(std::io::Error),
    #[error("{0}")]
    AllowedSigners(String),
}

/// What became of a `submit`.
#[derive(Debug)]
pub enum Submitted {
    /// A job to follow: a new one, or the running job of the same rollout.
    Job(Arc<Job>),
    Refused(Refusal),
    /// The agent could not take the order for a reason of its own (journal unwritable).
    Error(String),
}

/// What a `watch` finds.
#[derive(Debug)]
pub enum Watched {
    Running(Arc<Job>),
    Finished {
        events: Vec<JobEvent>,
        outcome: Option<Outcome>,
    },
    Unknown(String),
}

#[derive(Default)]
struct Running {
    jobs: BTreeMap<String, Arc<Job>>,
    held: BTreeMap<ServiceKey, LockHolder>,
}

pub struct Agent<B: Backend> {
    config: AgentConfig,
    backend: B,
    journal: Journal,
    /// Lock order: `running` before `index`; `health` alone.
    pub(crate) index: Mutex<Index>,
    running: Mutex<Running>,
    /// Held across the replay check and the remembering of the id ([`replay::admit`]).
    replay: Mutex<ReplayStore>,
    /// Proposals waiting for approvals ([`crate::proposals`]); never held across a signature check.
    pub(crate) proposals: Mutex<ProposalStore>,
    next_seq: AtomicU64,
    health: Mutex<HealthBook>,
    health_file: HealthFile,
    alerts: Alerts,
    /// Orders found without an outcome at start, waiting for [`Agent::recover_unfinished`].
    unfinished: Mutex<Vec<OrderRecord>>,
    /// Number of running jobs, so shutdown can wait for zero.
    job_count: watch::Sender<usize>,
    /// Number of clients following a job, so shutdown can let them read the outcome.
    followers: watch::Sender<usize>,
    started: Instant,
    /// The last `status` answer; its lock makes concurrent requests share one computation.
    status_cache: tokio::sync::Mutex<Option<CachedStatus>>,
    /// Bumped whenever a job starts or ends or a service's health changes: a cached status never
    /// hides one, and subscribers (`status --watch`, `ui`) hear of it at once.
    changes: watch::Sender<u64>,
}

/// How long a `status` answer is reused: a flood of status requests runs the probes (and, for
/// compose services, the compose CLI) once a second at most.
pub const STATUS_TTL: Duration = Duration::from_secs(1);

struct CachedStatus {
    computed: Instant,
    /// [`Agent::changes`] when the computation began.
    changes: u64,
    status: AgentStatus,
}

/// Whether a status computed `age` ago, when the job counter read `then`, may answer now.
fn status_reusable(age: Duration, then: u64, now: u64) -> bool {
    age < STATUS_TTL && then == now
}

impl<B: Backend> std::fmt::Debug for Agent<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("host", &self.config.host)
            .field("env", &self.config.env)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Agent<B> {
    /// Opens the state directory: journal (corrupt files moved aside), replay store, health book.
    pub fn open(config: AgentConfig, backend: B) -> Result<Arc<Agent<B>>, OpenError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|source| JournalError::Dir {
            path: config.state_dir.clone(),
            source,
        })?;
        // Fail at start rather than at the first order if the trust file is broken.
        let signers = config
            .load_allowed_signers()
            .map_err(|e| OpenError::AllowedSigners(e.to_string()))?;
        for note in signers.notes() {
            tracing::warn!("{}: {note}", config.allowed_signers.display());
        }
        let journal = Journal::open(&config.state_dir)?;
        let (records, problems) = journal.load_all();
        for p in &problems {
            tracing::error!("{p}; moved aside, the other orders are unaffected");
        }
        let index = Index::from_records(&records);
        let next_seq = AtomicU64::new(index.next_seq());
        let unfinished: Vec<OrderRecord> = records
            .into_iter()
            .filter(|r| r.outcome.is_none())
            .collect();
        let replay = ReplayStore::open(&config.state_dir.join("replay.json"), Timestamp::now())
            .map_err(OpenError::ReplayStore)?;
        let health_file = HealthFile::new(&config.state_dir);
        let (book, problem) = health_file.load();
        if let Some(p) = problem {
            tracing::warn!("{p}");
        }
        let proposals = Mutex::new(ProposalStore::open_in(&config.state_dir));
        let (host, env, version) = (
            config.host.clone(),
            config.env.clone(),
            AGENT_VERSION.into(),
        );
        let alerts = Alerts::open(
            &config.state_dir,
            config.alerts.clone(),
            Source { host, env, version },
        );
        Ok(Arc::new(Agent {
            proposals,
            config,
            backend,
            journal,
            index: Mutex::new(index),
            running: Mutex::new(Running::default()),
            replay: Mutex::new(replay),
            next_seq,
            health: Mutex::new(book),
            health_file,
            alerts,
            unfinished: Mutex::new(unfinished),
            job_count: watch::Sender::new(0),
            followers: watch::Sender::new(0),
            started: Instant::now(),
            status_cache: tokio::sync::Mutex::new(None),
            changes: watch::Sender::new(0),
        }))
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Finishes or undoes every order the journal shows without an outcome. Runs
    /// before the socket is served, one order at a time, oldest first.
    pub async fn recover_unfinished(self: &Arc<Self>) -> Vec<Outcome> {
        let unfinished = std::mem::take(&mut *lock(&self.unfinished));
        let mut outcomes = Vec::new();
        for record in unfinished {
            let job = Arc::new(Job::new(record, self.journal.clone()));
            let span = job_span(&job);
            let outcome = async {
                let last = job.record().events.last().map(|e| format!("{} ({})", e.message, e.phase));
                job.emit_recover(&format!(
                    "the agent stopped before this order finished (last step: {}); recovering so each service ends on \
                     one healthy version",
                    last.unwrap_or_else(|| "none".into())
                ));
                let mut outcome = self.backend.recover(&job.order, &*job).await;
                if outcome.reason.is_none() {
                    outcome.reason = Some(format!("recovered after an agent restart: {}", outcome.kind));
                }
                self.finish(&job, outcome)
            }
            .instrument(span)
            .await;
            outcomes.push(outcome);
        }
        outcomes
    }

    /// Accepts (or refuses) a signed order and starts its job.
    pub async fn submit(self: &Arc<Self>, signed: SignedOrder) -> Submitted {
        let policy = match self.accept_policy() {
            Ok(p) => p,
            Err(refusal) => return Submitted::Refused(*refusal),
        };
        let files = Filesystem::new();
        let accepted =
            blocking(|| replay::admit(&signed, &policy, Timestamp::now(), &self.replay, &files));
        let accepted = match accepted {
            Ok(a) => a,
            Err(rejection) => {
                tracing::warn!(kind = %rejection.kind, "order refused: {}", rejection.message);
                return Submitted::Refused(rejection.into());
            }
        };
        let order = accepted.order;
        if let Err(refusal) = self.check_approval(&order) {
            return Submitted::Refused(refusal.into());
        }
        if !is_valid_order_id(&order.order_id) {
            return Submitted::Refused(Refusal {
                kind: RefusalKind::Malformed,
                message: format!(
                    "order_id {:?} may only hold letters, digits, '-' and '_' (it names the journal file)",
                    order.order_id
                ),
                holder: None,
            });
        }
        if let Err(why) = self.backend.check_proxies(&order).await {
            tracing::warn!(order_id = %order.order_id, "order refused: {why}");
            return Submitted::Refused(Refusal {
                kind: RefusalKind::ProxyUnreachable,
                message: format!("{why}; nothing was changed"),
                holder: None,
            });
        }
        let signer = SignerInfo {
            principal: accepted.signer.principal,
            fingerprint: accepted.signer.fingerprint,
        };
        match self.hold(order, signed, signer) {
            Ok((job, skipped_migration)) => match self.check_exec_target(&job).await {
                Ok(()) => self.start(job, skipped_migration),
                Err(refusal) => {
                    self.release(&job);
                    tracing::warn!(order_id = %job.order_id(), "order refused: {}", refusal.message);
                    Submitted::Refused(refusal)
                }
            },
            Err(answer) => *answer,
        }
    }

    /// An exec runs only in the image its service runs now; looked at while the order holds
    /// the service, so no deploy switches it between this look and the run.
    async fn check_exec_target(&self, job: &Job) -> Result<(), Refusal> {
        let o = &job.order;
        let Some((exec, spec)) = o
            .exec
            .as_ref()
            .and_then(|e| Some((e, o.services.get(&e.service)?)))
        else {
            return Ok(());
        };
        let snap = self
            .backend
            .inspect_service(&o.app, &exec.service, spec)
            .await;
        crate::exec::check_target(&snap, o, exec, &self.config.host).map_err(|message| Refusal {
            kind: RefusalKind::NotRunning,
            message,
            holder: None,
        })
    }

    /// What this agent accepts right now: its config, with `allowed_signers` and the host keys
    /// read afresh (a key added or removed counts for the next order).
    fn accept_policy(&self) -> Result<AcceptPolicy, Box<Refusal>> {
        let signers = match self.config.load_allowed_signers() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e}");
                return Err(Box::new(Refusal {
                    kind: RefusalKind::UnknownSigner,
                    message: format!(
                        "this agent cannot read its allowed_signers, so it trusts no one right now: {e}"
                    ),
                    holder: None,
                }));
            }
        };
        let host_keys = match self.config.load_host_keys() {
            Ok(keys) => keys,
            Err(e) => {
                tracing::error!("{e}");
                return Err(Box::new(Refusal {
                    kind: RefusalKind::Internal,
                    message: format!(
                        "this agent cannot read its host keys, so it cannot tell which orders are \
                         bound to this host: {e}"
                    ),
                    holder: None,
                }));
            }
        };
        let mut policy = AcceptPolicy::new(
            &self.config.host,
            &self.config.env,
            signers,
            self.config.allowed_images.clone(),
        );
        policy.host_policy = self.config.policy.clone();
        policy.release_policy = self.config.release_policy.clone();
        policy.host_keys = host_keys;
        Ok(policy)
    }

    /// Takes the order's services (or finds the job already doing what it asks) and records
    /// the job; the migration is skipped when this image's already ran here.
    fn hold(
        &self,
        order: Order,
        signed: SignedOrder,
        signer: SignerInfo,
    ) -> Result<(Arc<Job>, Option<String>), Box<Submitted>> {
        let mut running = lock(&self.running);
        let jobs = &running.jobs;
        match decide(&running.held, &order, |id| jobs.get(id).map(|j| &j.order)) {
            LockDecision::Refuse(holder) => {
                let message = format!(
                    "app {} is being deployed by rollout {} (order {}, signed by {}, issued by {}) since {}; wait \
                     for it to finish or follow it with `watch {}`",
                    order.app,
                    holder.rollout_id,
                    holder.order_id,
                    holder.signer,
                    holder.issued_by,
                    holder.since,
                    holder.order_id
                );
                tracing::warn!(order_id = %order.order_id, "order refused: {message}");
                return Err(Box::new(Submitted::Refused(Refusal {
                    kind: RefusalKind::RolloutInProgress,
                    message,
                    holder: Some(holder),
                })));
            }
            LockDecision::Attach { order_id } => {
                if let Some(job) = running.jobs.get(&order_id) {
                    tracing::info!(
                        order_id = %order.order_id,
                        "order {order_id} already does what rollout {} asks; following it",
                        order.rollout_id
                    );
                    return Err(Box::new(Submitted::Job(job.clone())));
                }
                return Err(Box::new(Submitted::Error(format!(
                    "order {order_id} holds the service but is not running"
                ))));
            }
            LockDecision::Take => {}
        }
        let mut order = order;
        let mut skipped = None;
        if order.run_migration
            && !order.rerun_migration
            && let Some(done) = lock(&self.index)
                .migration_done_for(&order.app, order.migration_image().unwrap_or(&order.image))
        {
            skipped = Some(done.order.order_id.clone());
            order.run_migration = false;
        }
        let record = OrderRecord {
            seq: self.next_seq.fetch_add(1, Ordering::SeqCst),
            signed,
            order,
            signer,
            accepted_at: Timestamp::now(),
            events: Vec::new(),
            outcome: None,
            duration_ms: None,
        };
        let job = Arc::new(Job::new(record, self.journal.clone()));
        for key in keys_of(&job.order) {
            running.held.insert(key, job.holder.clone());
        }
        running.jobs.insert(job.order_id().to_string(), job.clone());
        self.changed();
        self.job_count.send_modify(|n| *n += 1);
        Ok((job, skipped))
    }

    /// Journals the acceptance and runs the job; nothing runs unless the journal says so.
    fn start(self: &Arc<Self>, job: Arc<Job>, skipped_migration: Option<String>) -> Submitted {
        let o = &job.order;
        let overridden = o
            .override_freeze
            .as_ref()
            .and_then(|_| {
                proto::release_policy::freeze::active(
                    &self.config.release_policy.freeze,
                    Timestamp::now(),
                )
            })
            .map(|w| w.to_string());
        let accepted_message =
            crate::job::accepted_message(o, &job.holder.signer, overridden.as_deref());
        tracing::info!(order_id = %job.order_id(), phase = %Phase::Accepted, "{accepted_message}");
        if let Err(e) = job.record_event(Phase::Accepted, None, &accepted_message) {
            // Nothing may change a host unless the journal can say so.
            self.release(&job);
            tracing::error!(order_id = %job.order_id(), "{e}");
            return Submitted::Error(format!(
                "the agent cannot write its journal, so it does not run the order: {e}"
            ));
        }
        if let (Some(previous), Some(m)) = (&skipped_migration, &job.order.migrate) {
            job.emit_event(
                Phase::Migrate,
                Some(&m.service),
                &format!(
                    "migration already ran for {} in order {previous}; skipped (a digest's migration runs once)",
                    job.order.image.short_digest()
                ),
            );
        }
        lock(&self.index).update(&job.record());

        let agent = self.clone();
        let running_job = job.clone();
        tokio::spawn(async move { agent.run_job(running_job).await }.instrument(job_span(&job)));
        Submitted::Job(job)
    }

    async fn run_job(self: Arc<Self>, job: Arc<Job>) {
        let agent = self.clone();
        let inner = job.clone();
        // A panic in the engine must not leave the services locked and the order without an
        // outcome: it is caught here and recovery puts the host back on one version.
        let result = tokio::spawn(
            async move { agent.backend.execute(&inner.order, &*inner).await }.in_current_span(),
        )
        .await;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                job.emit_recover(&format!("the job failed unexpectedly ({e}); recovering"));
                self.backend.recover(&job.order, &*job).await
            }
        };
        self.finish(&job, outcome);
    }

    fn finish(&self, job: &Job, outcome: Outcome) -> Outcome {
        let (record, saved) = job.finish(outcome.clone());
        if let Err(e) = saved {
            tracing::error!(order_id = %job.order_id(), "cannot journal the outcome: {e}");
        }
        lock(&self.index).update(&record);
        // The job just proved what runs healthy. (An exec or a maintenance page proves nothing
        // of its service.)
        if matches!(
            outcome.kind,
            OutcomeKind::Succeeded | OutcomeKind::RolledBack
        ) && job.order.action.deploys()
        {
            self.proven_healthy(&job.order, outcome.finished_at);
        }
        self.alerts.outcome(&job.order, &outcome);
        self.release(job);
        job.notify();
        record.outcome.unwrap_or(outcome)
    }

    fn release(&self, job: &Job) {
        let mut running = lock(&self.running);
        if running.jobs.remove(job.order_id()).is_some() {
            self.changed();
            self.job_count.send_modify(|n| *n = n.saturating_sub(1));
        }
        running.held.retain(|_, h| h.order_id != job.order_id());
    }

    pub fn watch(&self, order_id: &str) -> Watched {
        if !is_valid_order_id(order_id) {
            return Watched::Unknown(format!("{order_id:?} is not an order id"));
        }
        if let Some(job) = lock(&self.running).jobs.get(order_id) {
            return Watched::Running(job.clone());
        }
        match self.journal.load(order_id) {
            Ok(Some(record)) => Watched::Finished {
                events: record.events,
                outcome: record.outcome,
            },
            Ok(None) => Watched::Unknown(format!(
                "order {order_id} is not in the journal of host {}",
                self.config.host
            )),
            Err(e) => Watched::Unknown(e.to_string()),
        }
    }

    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        lock(&self.index).history(limit.min(MAX_HISTORY))
    }

    pub fn running(&self) -> Vec<LockHolder> {
        lock(&self.running)
            .jobs
            .values()
            .map(|j| j.holder.clone())
            .collect()
    }

    /// The agent's status, reused for up to [`STATUS_TTL`] unless a job started or ended since.
    /// Callers that arrive while it is computed wait for that computation instead of starting
    /// their own (their clients see the same answer).
    pub async fn status(&self) -> AgentStatus {
        let mut cache = self.status_cache.lock().await;
        let changes = *self.changes.borrow();
        if let Some(c) = cache.as_ref()
            && status_reusable(c.computed.elapsed(), c.changes, changes)
        {
            return c.status.clone();
        }
        let computed = Instant::now();
        let status = self.compute_status().await;
        *cache = Some(CachedStatus {
            computed,
            changes,
            status: status.clone(),
        });
        status
    }

    /// Probes every deployed service (outside jobs, the probe also feeds the health book).
    async fn compute_status(&self) -> AgentStatus {
        let targets = self.deployed();
        let held: Vec<ServiceKey> = lock(&self.running).held.keys().cloned().collect();
        let mut services = Vec::new();
        for t in targets {
            let is_held = held.contains(&(t.app.clone(), t.service.clone()));
            let (snap, seen, since) = self.look_at(&t, is_held).await;
            let maintenance = self
                .backend
                .maintenance_of(&t.app, &t.service, &t.spec)
                .await;
            let current = snap.image.as_ref().map(|i| i.digest().to_string());
            let previous =
                lock(&self.index).previous_digest(&t.app, &t.service, current.as_deref());
            services.push(ServiceStatus {
                app: t.app,
                service: t.service,
                container_id: snap.container_id,
                image: snap.image,
                reference: snap.reference,
                health: seen.health,
                since,
                last_outcome: t.last_outcome,
                last_order: Some(t.last_order),
                previous_digest: previous,
                maintenance,
                restarts: snap.restarts,
                reason: seen.reason,
                exit_code: seen.exit_code,
                probe_ms: snap.probe_ms,
            });
        }
        AgentStatus {
            agent_version: AGENT_VERSION.to_string(),
            host: self.config.host.clone(),
            env: self.config.env.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            services,
            running: self.running(),
            approvals: self.config.approvals.clone(),
            host_health: Some(host_health(&self.backend, &self.config.state_dir).await),
        }
    }

    /// Logs of every deployed service, or of the one named.
    pub async fn logs(
        &self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogs>, String> {
        let targets: Vec<Target> = self
            .deployed()
            .into_iter()
            .filter(|t| service.is_none_or(|s| s == t.service))
            .collect();
        if targets.is_empty() {
            return Err(match service {
                Some(s) => format!("no service named {s:?} was ever deployed by this agent"),
                None => "this agent has deployed nothing yet".into(),
            });
        }
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for t in &targets {
            match self
                .backend
                .logs(&t.app, &t.service, &t.spec, lines.min(MAX_LOG_LINES))
                .await
            {
                Ok(l) => out.push(l),
                Err(e) => errors.push(format!("{}/{}: {e}", t.app, t.service)),
            }
        }
        if out.is_empty() {
            return Err(errors.join("; "));
        }
        for e in errors {
            tracing::warn!("logs: {e}");
        }
        Ok(out)
    }

    /// Runs the health watch until the returned future is dropped.
    pub async fn health_watch(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.probe_health().await;
        }
    }

    /// A change subscribers wait for: a new number each time something they show changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records the model's verdict; a transition raises its alert (durably, before the book is
    /// saved: a crash between the two may raise it twice, never lose it).
    fn observe(&self, app: &str, service: &str, seen: Seen, at: Timestamp) {
        let mut book = lock(&self.health);
        let health = seen.health;
        let observation = book.observe(app, service, seen, at);
        if !matches!(observation, Observation::Unchanged) {
            self.changed();
        }
        match observation {
            Observation::Unchanged => return,
            Observation::First => {
                tracing::info!(app, service, %health, "health watch: first probe")
            }
            Observation::Changed(t) if t.to == Health::Healthy => {
                tracing::info!(app, service, from = %t.from, to = %t.to, "health watch: service recovered");
                self.alerts.health(&t);
            }
            Observation::Changed(t) => {
                let reason = t.reason.map(|r| r.to_string()).unwrap_or_default();
                tracing::warn!(app, service, from = %t.from, to = %t.to, reason, exit_code = ?t.exit_code, "health watch: service degraded");
                self.alerts.health(&t);
            }
        }
        if let Err(e) = blocking(|| self.health_file.save(&book)) {
            tracing::error!("cannot save the health book: {e}");
        }
    }

    fn deployed(&self) -> Vec<Target> {
        lock(&self.index)
            .deployed()
            .into_iter()
            .map(|d| Target {
                app: d.app.to_string(),
                service: d.service.to_string(),
                spec: d.spec.clone(),
                last_order: d.last.order.order_id.clone(),
                last_outcome: d.last.outcome.as_ref().map(|o| o.kind),
            })
            .collect()
    }

    /// Resolves when no job runs, or after `grace`; returns how many still run.
    pub async fn wait_for_jobs(&self, grace: Duration) -> usize {
        let mut rx = self.job_count.subscribe();
        let _ = tokio::time::timeout(grace, rx.wait_for(|n| *n == 0)).await;
        *self.job_count.borrow()
    }

    /// Counts a client following a job until the guard drops.
    pub fn following(&self) -> Following<'_> {
        self.followers.send_modify(|n| *n += 1);
        Following(&self.followers)
    }

    /// Resolves when no client follows a job any more, or after `limit`.
    pub async fn wait_for_followers(&self, limit: Duration) {
        let mut rx = self.followers.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }
}

/// A client following a job; see [`Agent::following`].
#[derive(Debug)]
pub struct Following<'a>(&'a watch::Sender<usize>);

impl Drop for Following<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A deployed service and what the journal says about it.
struct Target {
    app: String,
    service: String,
    spec: proto::ServiceSpec,
    last_order: String,
    last_outcome: Option<OutcomeKind>,
}

fn job_span(job: &Job) -> tracing::Span {
    let services = job
        .order
        .services
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    tracing::info_span!("job", order_id = %job.order.order_id, app = %job.order.app, service = %services)
}

impl Job {
    /// A step of the agent's own (not the engine's): logged and journaled.
    fn emit_event(&self, phase: Phase, service: Option<&str>, message: &str) {
        tracing::info!(order_id = %self.order.order_id, service = service.unwrap_or("-"), %phase, "{message}");
        if let Err(e) = self.record_event(phase, service, message) {
            tracing::error!(order_id = %self.order.order_id, "journal write failed: {e}");
        }
    }

    fn emit_recover(&self, message: &str) {
        self.emit_event(Phase::Recover, None, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_reused_for_a_second_unless_a_job_started_or_ended() {
        let ms = Duration::from_millis;
        // (age, job counter then, now, reusable)
        let cases = [
            (ms(0), 3, 3, true),
            (ms(999), 3, 3, true),
            (ms(1000), 3, 3, false),
            (ms(5000), 3, 3, false),
            (ms(10), 3, 4, false),
        ];
        for (age, then, now, reusable) in cases {
            assert_eq!(
                status_reusable(age, then, now),
                reusable,
                "{age:?} {then} {now}"
            );
        }
    }
}
