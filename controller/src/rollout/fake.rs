//! In-process fake agents for the rollout's tests: each host keeps what each service runs, its
//! journal and any job running, answers status and history from them, and runs orders as told
//! (succeed, fail and restore the previous release, or refuse). Every step is written to one
//! shared log, so a test can check the order in which hosts were worked on. They check no
//! signature: the real agents' tests do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::Timestamp;
use proto::order::{Action, ImageRef, Order};
use proto::wire::{
    AgentStatus, Health, HistoryEntry, JobEvent, LockHolder, Outcome, OutcomeKind, Phase, Refusal,
    RefusalKind, ServiceLogs, ServiceResult, ServiceStatus, SignedOrder,
};

use crate::config::HostSpec;
use crate::connector::{AgentConn, Connector};
use crate::rollout::OrderSigner;
use crate::transport::{JobEnd, Peer, TransportError};

pub const APP: &str = "acme";
pub const REPO: &str = "registry.test/acme/web";

/// `sha256:` and 64 times `c`.
pub fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

pub fn image(c: char) -> ImageRef {
    ImageRef::new(REPO, &digest(c)).unwrap()
}

/// What happened, in order, across every fake host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An order started on a host.
    Start(String, Action),
    /// It ended.
    End(String),
    /// A client followed a running job.
    Watch(String),
}

/// One fake agent's state.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub reachable: bool,
    /// What each service runs: image and ref.
    pub running: BTreeMap<String, (ImageRef, String)>,
    pub history: Vec<HistoryEntry>,
    /// A job in progress (its journal entry is in `history` without an outcome).
    pub job: Option<LockHolder>,
    /// Deploys where any service would run this digest fail, and every service is put back.
    pub fails: Option<String>,
    /// Every order is refused with this kind.
    pub refuses: Option<RefusalKind>,
    /// The next order is accepted, then the connection drops while its job runs.
    pub drops: bool,
    /// The agent closes the first connection once it answered status and history, as one
    /// closes a connection left idle (waiting for its batch) past `idle_timeout`.
    pub closes_idle: bool,
    /// Connections made to this host.
    pub connections: usize,
    /// Orders received, in order.
    pub orders: Vec<Order>,
}

impl Host {
    /// A host that never ran anything.
    fn blank(name: &str) -> Host {
        Host {
            name: name.into(),
            reachable: true,
            running: BTreeMap::new(),
            history: Vec::new(),
            job: None,
            fails: None,
            refuses: None,
            drops: false,
            closes_idle: false,
            connections: 0,
            orders: Vec::new(),
        }
    }

    /// A host whose `web` runs `c`'s digest (as `ref-c`), deployed by one succeeded order.
    pub fn on(name: &str, c: char) -> Host {
        let mut host = Host::blank(name);
        host.running
            .insert("web".into(), (image(c), format!("ref-{c}")));
        host.journal(
            &format!("{name}-first"),
            c,
            Some(OutcomeKind::Succeeded),
            false,
        );
        host
    }

    /// The digest `service` runs.
    pub fn digest_of(&self, service: &str) -> Option<String> {
        let (image, _) = self.running.get(service)?;
        Some(image.digest().to_string())
    }

    /// Appends a journal entry for digest `c` of `web`.
    pub fn journal(
        &mut self,
        order_id: &str,
        c: char,
        outcome: Option<OutcomeKind>,
        migrated: bool,
    ) {
        self.history.push(HistoryEntry {
            order_id: order_id.into(),
            rollout_id: "earlier".into(),
            action: Action::Deploy,
            signer: "ci".into(),
            issued_by: "ci@test".into(),
            accepted_at: Timestamp::from_unix_secs(1_000 + self.history.len() as u64),
            reference: format!("ref-{c}"),
            image: image(c),
            images: Default::default(),
            refs: Default::default(),
            app: APP.into(),
            services: vec!["web".into()],
            outcome,
            reason: None,
            duration_ms: None,
            run_migration: migrated,
            exit_code: None,
            proposal: None,
            override_freeze: None,
        });
    }

    /// Appends a journal entry for `order`, as the agent's index makes it.
    fn journal_order(&mut self, order: &Order, outcome: Option<OutcomeKind>) {
        self.history.push(HistoryEntry {
            order_id: order.order_id.clone(),
            rollout_id: order.rollout_id.clone(),
            action: order.action,
            signer: "ci".into(),
            issued_by: order.issued_by.clone(),
            accepted_at: Timestamp::from_unix_secs(1_000 + self.history.len() as u64),
            reference: order.reference.clone(),
            image: order.image.clone(),
            images: order.images.clone(),
            refs: order.refs.clone(),
            app: order.app.clone(),
            services: order.services.keys().cloned().collect(),
            outcome,
            reason: None,
            duration_ms: None,
            run_migration: order.run_migration,
            exit_code: None,
            proposal: None,
            override_freeze: None,
        });
    }

    /// A job of another controller's rollout, to digest `c`, still running.
    pub fn running_job(&mut self, order_id: &str, c: char, migrated: bool) {
        self.journal(order_id, c, None, migrated);
        self.hold(order_id);
    }

    fn hold(&mut self, order_id: &str) {
        self.job = Some(LockHolder {
            order_id: order_id.into(),
            rollout_id: "killed".into(),
            signer: "ci".into(),
            issued_by: "ci@test".into(),
            since: Timestamp::now(),
        });
    }

    fn status(&self) -> AgentStatus {
        AgentStatus {
            agent_version: "fake".into(),
            host: self.name.clone(),
            env: "staging".into(),
            uptime_secs: 1,
            services: self
                .running
                .iter()
                .map(|(service, (image, r))| ServiceStatus {
                    image: Some(image.clone()),
                    reference: Some(r.clone()),
                    ..ServiceStatus::new(APP, service, Health::Healthy, Timestamp::now())
                })
                .collect(),
            running: self.job.iter().cloned().collect(),
            approvals: None,
            host_health: None,
        }
    }

    /// Runs `order` to its end, as an agent whose engine behaves as configured; `None` when
    /// the connection drops while the job goes on.
    fn run(&mut self, order: &Order) -> Option<JobEnd> {
        self.orders.push(order.clone());
        if std::mem::take(&mut self.drops) {
            self.journal_order(order, None);
            self.hold(&order.order_id);
            return None;
        }
        if let Some(kind) = self.refuses {
            return Some(JobEnd::Refused(Refusal {
                kind,
                message: "told to refuse".into(),
                holder: None,
            }));
        }
        let fails = |s: &String| self.fails.as_deref() == Some(order.image_of(s).digest());
        let failed = order.action == Action::Deploy && order.services.keys().any(fails);
        let kind = match failed {
            true => OutcomeKind::RolledBack,
            false => OutcomeKind::Succeeded,
        };
        Some(JobEnd::Outcome(self.deploy(order, kind)))
    }

    /// Journals `order` as ending `kind`, switching every service when it succeeded.
    fn deploy(&mut self, order: &Order, kind: OutcomeKind) -> Outcome {
        let before = self.running.clone();
        if kind == OutcomeKind::Succeeded {
            for s in order.services.keys() {
                let now = (order.image_of(s).clone(), order.reference_of(s).to_string());
                self.running.insert(s.clone(), now);
            }
        }
        self.journal_order(order, Some(kind));
        outcome(&order.order_id, kind, &before, &self.running)
    }

    /// The running job `order_id` ends: it succeeds.
    fn finish_job(&mut self, order_id: &str) -> Option<JobEnd> {
        self.job.take_if(|j| j.order_id == order_id)?;
        let entry = self.history.iter_mut().find(|e| e.order_id == order_id)?;
        entry.outcome = Some(OutcomeKind::Succeeded);
        let entry = entry.clone();
        let before = self.running.clone();
        for s in &entry.services {
            let now = (entry.image_of(s).clone(), entry.reference_of(s).to_string());
            self.running.insert(s.clone(), now);
        }
        Some(JobEnd::Outcome(outcome(
            order_id,
            OutcomeKind::Succeeded,
            &before,
            &self.running,
        )))
    }
}

type Running = BTreeMap<String, (ImageRef, String)>;

/// An outcome from what each service ran before and runs now.
fn outcome(order_id: &str, kind: OutcomeKind, before: &Running, now: &Running) -> Outcome {
    let digest = |r: &Running, s: &str| Some(r.get(s)?.0.digest().to_string());
    let services: BTreeMap<String, ServiceResult> = now
        .keys()
        .map(|s| {
            let result = ServiceResult {
                digest: digest(now, s),
                previous_digest: digest(before, s),
                container_id: None,
            };
            (s.clone(), result)
        })
        .collect();
    let changed = services.values().any(|r| r.digest != r.previous_digest);
    Outcome {
        order_id: order_id.into(),
        rollout_id: "r".into(),
        kind,
        failure: None,
        reason: (kind != OutcomeKind::Succeeded).then(|| "not healthy".into()),
        changed,
        log_tail: Vec::new(),
        services,
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        rollback_ms: None,
        exit_code: None,
    }
}

/// The fake agents of one env, reached by host name.
#[derive(Clone)]
pub struct Fleet {
    hosts: Arc<Mutex<Vec<Host>>>,
    log: Arc<Mutex<Vec<Step>>>,
}

impl Fleet {
    pub fn new(hosts: Vec<Host>) -> Fleet {
        Fleet {
            hosts: Arc::new(Mutex::new(hosts)),
            log: Arc::default(),
        }
    }

    pub fn host(&self, name: &str) -> Host {
        let hosts = self.hosts.lock().unwrap();
        hosts.iter().find(|h| h.name == name).cloned().unwrap()
    }

    pub fn log(&self) -> Vec<Step> {
        self.log.lock().unwrap().clone()
    }

    fn with<T>(&self, name: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap();
        f(hosts.iter_mut().find(|h| h.name == name).unwrap())
    }

    fn step(&self, step: Step) {
        self.log.lock().unwrap().push(step);
    }
}

impl Connector for Fleet {
    type Conn = FakeConn;

    async fn connect(&self, host: &HostSpec) -> Result<FakeConn, TransportError> {
        if !self.with(&host.name, |h| h.reachable) {
            return Err(TransportError::Unreachable(format!(
                "{}: connection refused",
                host.name
            )));
        }
        let closes_after = self.with(&host.name, |h| {
            h.connections += 1;
            std::mem::take(&mut h.closes_idle).then_some(2)
        });
        Ok(FakeConn {
            fleet: self.clone(),
            closes_after,
            peer: Peer {
                host: host.name.clone(),
                env: "staging".into(),
                agent_version: "fake".into(),
                host_key: None,
            },
        })
    }
}

pub struct FakeConn {
    fleet: Fleet,
    peer: Peer,
    /// Requests answered before the agent closes this connection.
    closes_after: Option<usize>,
}

impl FakeConn {
    /// One request's worth of the connection: false once the agent closed it.
    fn open(&mut self) -> bool {
        match &mut self.closes_after {
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }
}

fn closed() -> TransportError {
    TransportError::Closed("the agent closed the connection".into())
}

/// Long enough for hosts of one batch to overlap visibly in the log.
const JOB_TIME: Duration = Duration::from_millis(30);

impl AgentConn for FakeConn {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    async fn status(&mut self) -> Result<AgentStatus, TransportError> {
        if !self.open() {
            return Err(closed());
        }
        Ok(self.fleet.with(&self.peer.host, |h| h.status()))
    }

    async fn history(&mut self, limit: usize) -> Result<Vec<HistoryEntry>, TransportError> {
        if !self.open() {
            return Err(closed());
        }
        let mut all = self.fleet.with(&self.peer.host, |h| h.history.clone());
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    async fn logs(
        &mut self,
        _service: Option<&str>,
        _lines: usize,
    ) -> Result<Vec<ServiceLogs>, TransportError> {
        Ok(Vec::new())
    }

    async fn submit(
        &mut self,
        order: SignedOrder,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> Result<JobEnd, TransportError> {
        if !self.open() {
            return Err(closed());
        }
        let order: Order = serde_json::from_str(&order.payload)
            .map_err(|e| TransportError::Protocol(e.to_string()))?;
        let host = self.peer.host.clone();
        self.fleet.step(Step::Start(host.clone(), order.action));
        on_event(&JobEvent {
            order_id: order.order_id.clone(),
            at: Timestamp::now(),
            phase: Phase::Accepted,
            service: None,
            message: "accepted".into(),
        });
        tokio::time::sleep(JOB_TIME).await;
        let end = self.fleet.with(&host, |h| h.run(&order));
        self.fleet.step(Step::End(host));
        end.ok_or_else(|| TransportError::Closed("the SSH session dropped".into()))
    }

    async fn watch(
        &mut self,
        order_id: &str,
        _on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> Result<JobEnd, TransportError> {
        if !self.open() {
            return Err(closed());
        }
        let host = self.peer.host.clone();
        self.fleet.step(Step::Watch(host.clone()));
        tokio::time::sleep(JOB_TIME).await;
        self.fleet
            .with(&host, |h| h.finish_job(order_id))
            .ok_or_else(|| TransportError::Agent(format!("no running order {order_id}")))
    }
}

/// Signs nothing: the payload is the order's JSON, as the real signer makes it.
pub struct FakeSigner;

impl OrderSigner for FakeSigner {
    async fn sign(&self, order: &Order) -> Result<SignedOrder, String> {
        Ok(SignedOrder {
            payload: serde_json::to_string(order).map_err(|e| e.to_string())?,
            signature: "unsigned".into(),
        })
    }
}
