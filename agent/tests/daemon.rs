//! The daemon through its socket, with a scripted engine instead of Docker: protocol, locks,
//! jobs outliving connections, the journal, migration-once, recovery, replay across restarts
//! and shutdown. (The same behaviours on the real engine are in tests/tests/e2e/agent.rs.) The
//! client is the controller's own, `deployctl::transport::AgentStream`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deploy::{EventSink, ServiceSnapshot};
use deploy_agent::agent::Agent;
use deploy_agent::backend::Backend;
use deploy_agent::config::AgentConfig;
use deploy_agent::journal::{Journal, OrderRecord, SignerInfo};
use deployctl::transport::{AgentStream, JobEnd, TransportError};
use proto::sign::PrivateKey;
use proto::time::Timestamp;
use proto::wire::{
    Health, JobEvent, Outcome, OutcomeKind, OutputStream, Phase, Refusal, RefusalKind, Reply,
    Request, ServiceLogs, ServiceResult, SignedOrder,
};
use proto::{ExecSpec, ImageRef, MigrationSpec, Order, ServiceSpec};
use tokio::sync::{oneshot, watch};

const LIMIT: Duration = Duration::from_secs(20);

/// A stand-in engine: emits a few steps, optionally waits at "health" until the test opens
/// the gate, and succeeds.
#[derive(Default)]
struct Script {
    hold: std::sync::atomic::AtomicBool,
    gate: watch::Sender<bool>,
    migrations: AtomicUsize,
    /// Calls of `inspect_service`: the probes behind `status`.
    inspections: AtomicUsize,
    recovered: Mutex<Vec<String>>,
    last_image: Mutex<Option<ImageRef>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Script>);

fn outcome(order: &Order, kind: OutcomeKind, reason: Option<&str>) -> Outcome {
    let now = Timestamp::now();
    Outcome {
        order_id: order.order_id.clone(),
        rollout_id: order.rollout_id.clone(),
        kind,
        failure: None,
        reason: reason.map(str::to_string),
        changed: kind == OutcomeKind::Succeeded,
        log_tail: vec![],
        services: order
            .services
            .keys()
            .map(|s| {
                let r = ServiceResult {
                    digest: Some(order.image.digest().into()),
                    previous_digest: None,
                    container_id: None,
                };
                (s.clone(), r)
            })
            .collect(),
        started_at: now,
        finished_at: now,
        rollback_ms: None,
        exit_code: None,
    }
}

impl Backend for Fake {
    async fn execute(&self, order: &Order, sink: &dyn EventSink) -> Outcome {
        if order.action == proto::Action::Exec {
            return self.exec(order, sink).await;
        }
        sink.emit(Phase::Pull, None, "pulled");
        if order.run_migration {
            self.0.migrations.fetch_add(1, Ordering::SeqCst);
            sink.emit(Phase::Migrate, Some("web"), "migration ran");
        }
        sink.emit(Phase::Switch, Some("web"), "new container started");
        if self.0.hold.load(Ordering::SeqCst) {
            let mut gate = self.0.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
        }
        sink.emit(Phase::Health, Some("web"), "healthy");
        *self.0.last_image.lock().unwrap() = Some(order.image.clone());
        outcome(order, OutcomeKind::Succeeded, None)
    }

    async fn recover(&self, order: &Order, sink: &dyn EventSink) -> Outcome {
        self.0
            .recovered
            .lock()
            .unwrap()
            .push(order.order_id.clone());
        sink.emit(Phase::Recover, Some("web"), "previous container put back");
        outcome(
            order,
            OutcomeKind::RolledBack,
            Some("recovery put the previous version back"),
        )
    }

    async fn inspect_service(
        &self,
        _app: &str,
        _service: &str,
        _spec: &ServiceSpec,
    ) -> ServiceSnapshot {
        self.0.inspections.fetch_add(1, Ordering::SeqCst);
        let image = self.0.last_image.lock().unwrap().clone();
        ServiceSnapshot {
            container_id: image.as_ref().map(|_| "c0ffee".into()),
            reference: image.as_ref().map(|_| "v1".into()),
            order_id: None,
            health: if image.is_some() {
                Health::Healthy
            } else {
                Health::Missing
            },
            image,
            restarts: 0,
            up_since: None,
            oom_killed: false,
            exit_code: None,
            probe_ms: None,
        }
    }

    async fn logs(
        &self,
        app: &str,
        service: &str,
        _spec: &ServiceSpec,
        lines: usize,
    ) -> Result<ServiceLogs, String> {
        Ok(ServiceLogs {
            app: app.into(),
            service: service.into(),
            container: "c0ffee".into(),
            lines: (0..lines.min(3)).map(|i| format!("line {i}")).collect(),
        })
    }
}

impl Fake {
    /// A command that says hello, waits at the gate when held, says bye and exits 7.
    async fn exec(&self, order: &Order, sink: &dyn EventSink) -> Outcome {
        sink.emit(Phase::Exec, Some("web"), "running the command");
        sink.output(OutputStream::Stdout, "hello");
        if self.0.hold.load(Ordering::SeqCst) {
            let mut gate = self.0.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
        }
        sink.output(OutputStream::Stderr, "bye");
        let mut o = outcome(order, OutcomeKind::Failed, Some("exited with code 7"));
        o.services.clear();
        o.changed = false;
        o.exit_code = Some(7);
        o
    }
}

struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    config: AgentConfig,
    fake: Fake,
    /// The key the daemon's allowed_signers trusts (a fixed one: tests need no secret).
    key: PrivateKey,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

fn digest(c: char) -> String {
    format!("sha256:{}", std::iter::repeat_n(c, 64).collect::<String>())
}

impl Daemon {
    async fn start() -> Daemon {
        Daemon::start_with("").await
    }

    /// A daemon whose agent.toml has `extra` lines.
    async fn start_with(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let key = proto::sign::ed25519_key(&[7; 32], "ci@test");
        let line = proto::sign::allowed_signers_line("ci@test", key.public_key()).unwrap();
        std::fs::write(dir.path().join("allowed_signers"), format!("{line}\n")).unwrap();
        let text = r#"
host = "h1"
env = "staging"
socket = "agent.sock"
state_dir = "state"
allowed_signers = "allowed_signers"
allowed_images = ["127.0.0.1:5000/acme/*"]
health_interval = "1h"
shutdown_grace = "10s"
"#;
        let text = format!("{text}{extra}");
        let config = AgentConfig::parse(&text, &dir.path().join("agent.toml")).unwrap();
        let mut d = Daemon {
            socket: config.socket.clone(),
            dir,
            config,
            fake: Fake::default(),
            key,
            stop: None,
            served: None,
        };
        d.serve().await;
        d
    }

    /// (Re)starts serving with a fresh agent on the same state directory.
    async fn serve(&mut self) {
        let agent = Agent::open(self.config.clone(), self.fake.clone()).unwrap();
        agent.recover_unfinished().await;
        let listener = deploy_agent::server::bind(&self.socket, None).unwrap();
        let (tx, rx) = oneshot::channel();
        let socket = self.socket.clone();
        self.served = Some(tokio::spawn(async move {
            deploy_agent::server::serve(agent, listener, &socket, async {
                let _ = rx.await;
            })
            .await
        }));
        self.stop = Some(tx);
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(LIMIT, served)
                .await
                .expect("shutdown in time")
                .unwrap();
        }
    }

    fn order(&self, rollout: &str, digest_char: char) -> Order {
        let now = Timestamp::now();
        let web: ServiceSpec = serde_json::from_str("{}").unwrap();
        Order {
            order_id: proto::order::new_id(),
            rollout_id: rollout.into(),
            env: "staging".into(),
            host: "h1".into(),
            host_key: None,
            issued_at: now,
            not_after: now.plus(Duration::from_secs(600)),
            issued_by: "test@laptop".into(),
            action: proto::Action::Deploy,
            image: ImageRef::new("127.0.0.1:5000/acme/web", &digest(digest_char)).unwrap(),
            images: Default::default(),
            migrate_image: None,
            revision: None,
            reference: "v1".into(),
            refs: Default::default(),
            tags: Default::default(),
            run_migration: true,
            rerun_migration: false,
            app: "acme".into(),
            services: BTreeMap::from([("web".to_string(), web)]),
            migrate: Some(MigrationSpec {
                command: vec!["/app".into(), "migrate".into()],
                service: "web".into(),
                timeout: Duration::from_secs(60),
                image: None,
            }),
            exec: None,
            maintenance: None,
            proposal: None,
            override_freeze: None,
        }
    }

    /// An exec of `/app version` in `web` running `digest_char`.
    fn exec_order(&self, digest_char: char) -> Order {
        let mut o = self.order(&proto::order::new_id(), digest_char);
        o.action = proto::Action::Exec;
        o.run_migration = false;
        o.migrate = None;
        o.exec = Some(ExecSpec {
            service: "web".into(),
            command: vec!["/app".into(), "version".into()],
            timeout: Duration::from_secs(60),
        });
        o
    }

    /// Deploys `digest_char` and waits for its outcome.
    async fn deploy(&self, digest_char: char) {
        let mut c = self.client().await;
        c.send(&Request::Submit {
            order: self
                .sign(&self.order(&proto::order::new_id(), digest_char))
                .await,
        })
        .await
        .unwrap();
        assert_eq!(until_outcome(&mut c).await.1.kind, OutcomeKind::Succeeded);
    }

    async fn sign(&self, order: &Order) -> SignedOrder {
        proto::sign::sign_order(&self.key, order).unwrap()
    }

    /// A client that said `hello` and checked who answered.
    async fn client(&self) -> AgentStream {
        let mut c = self.raw_client().await;
        let peer = c.hello("daemon-test").await.unwrap();
        assert_eq!((peer.host.as_str(), peer.env.as_str()), ("h1", "staging"));
        c
    }

    /// A client that has said nothing yet.
    async fn raw_client(&self) -> AgentStream {
        AgentStream::unix(&self.socket)
            .await
            .unwrap()
            .with_silence_limit(LIMIT)
    }

    fn journal(&self) -> Journal {
        Journal::open(&self.config.state_dir).unwrap()
    }

    /// The journal's record of an order that must be there.
    fn record(&self, order_id: &str) -> OrderRecord {
        self.journal().load(order_id).unwrap().expect("journaled")
    }

    fn open_gate(&self) {
        self.fake.0.gate.send_replace(true);
    }
}

/// Reads a job's events to its end.
async fn to_end(c: &mut AgentStream) -> (Vec<JobEvent>, JobEnd) {
    let mut events = Vec::new();
    let ControlFlow::Continue(end) = c
        .follow(|event| {
            events.push(event);
            ControlFlow::<Infallible>::Continue(())
        })
        .await
        .unwrap();
    (events, end)
}

/// [`to_end`] for a job that must end with an outcome.
async fn until_outcome(c: &mut AgentStream) -> (Vec<JobEvent>, Outcome) {
    match to_end(c).await {
        (events, JobEnd::Outcome(outcome)) => (events, outcome),
        (_, other) => panic!("expected an outcome, got {other:?}"),
    }
}

/// Reads a job's events until one of `phase` arrives; the job goes on.
async fn until_phase(c: &mut AgentStream, phase: Phase) -> Vec<JobEvent> {
    let mut events = Vec::new();
    let followed = c
        .follow(|event| {
            let done = event.phase == phase;
            events.push(event);
            if done {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
    assert_eq!(followed, ControlFlow::Break(()), "no {phase} event");
    events
}

/// The refusal a submit got.
async fn refusal(c: &mut AgentStream) -> Refusal {
    match to_end(c).await {
        (_, JobEnd::Refused(refusal)) => refusal,
        (_, other) => panic!("expected a refusal, got {other:?}"),
    }
}

fn phases(events: &[JobEvent]) -> Vec<Phase> {
    events.iter().map(|e| e.phase).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_order_runs_is_journaled_and_shows_in_status_and_history() {
    let mut d = Daemon::start().await;
    let order = d.order("r1", 'a');
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: d.sign(&order).await,
    })
    .await
    .unwrap();
    let (events, outcome) = until_outcome(&mut c).await;
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    assert_eq!(
        phases(&events),
        [
            Phase::Accepted,
            Phase::Pull,
            Phase::Migrate,
            Phase::Switch,
            Phase::Health
        ]
    );
    assert!(
        events[0].message.contains("ci@test"),
        "{}",
        events[0].message
    );

    let record = d.record(&order.order_id);
    assert_eq!(record.outcome, Some(outcome));
    assert_eq!(record.events, events);
    assert_eq!(record.signer.principal, "ci@test");

    let status = c.status().await.unwrap();
    assert_eq!(
        (status.host.as_str(), status.env.as_str()),
        ("h1", "staging")
    );
    assert_eq!(status.services.len(), 1);
    let web = &status.services[0];
    assert_eq!(
        (web.app.as_str(), web.service.as_str(), web.health),
        ("acme", "web", Health::Healthy)
    );
    assert_eq!(
        web.image.as_ref().map(|i| i.digest()),
        Some(digest('a').as_str())
    );
    assert_eq!(web.last_outcome, Some(OutcomeKind::Succeeded));
    assert_eq!(web.last_order.as_deref(), Some(order.order_id.as_str()));
    assert!(status.running.is_empty());

    let entries = c.history(10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].order_id, order.order_id);
    assert!(
        entries[0].signer.starts_with("ci@test (SHA256:"),
        "{}",
        entries[0].signer
    );
    assert_eq!(entries[0].outcome, Some(OutcomeKind::Succeeded));
    assert!(entries[0].duration_ms.is_some());

    let logs = c.logs(Some("web"), 2).await.unwrap();
    assert_eq!(logs[0].lines, ["line 0", "line 1"]);
    assert!(matches!(
        c.logs(Some("nope"), 2).await,
        Err(TransportError::Agent(_))
    ));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rollout_per_service_and_the_same_rollout_attaches() {
    let mut d = Daemon::start().await;
    d.fake.0.hold.store(true, Ordering::SeqCst);
    let first = d.order("r1", 'a');
    let mut c1 = d.client().await;
    c1.send(&Request::Submit {
        order: d.sign(&first).await,
    })
    .await
    .unwrap();
    until_phase(&mut c1, Phase::Switch).await;

    // Another rollout: refused, naming the holder.
    let mut c2 = d.client().await;
    c2.send(&Request::Submit {
        order: d.sign(&d.order("r2", 'b')).await,
    })
    .await
    .unwrap();
    let refused = refusal(&mut c2).await;
    assert_eq!(refused.kind, RefusalKind::RolloutInProgress);
    let holder = refused.holder.expect("holder");
    assert_eq!(
        (holder.order_id.as_str(), holder.rollout_id.as_str()),
        (first.order_id.as_str(), "r1")
    );
    assert!(holder.signer.starts_with("ci@test"));
    assert_eq!(holder.issued_by, "test@laptop");
    // Status shows who runs.
    let status = c2.status().await.unwrap();
    assert_eq!(
        status
            .running
            .iter()
            .map(|h| h.order_id.as_str())
            .collect::<Vec<_>>(),
        [first.order_id.as_str()]
    );

    // The same rollout again (a retrying controller): follows the running job.
    let mut c3 = d.client().await;
    c3.send(&Request::Submit {
        order: d.sign(&d.order("r1", 'a')).await,
    })
    .await
    .unwrap();
    let replayed = until_phase(&mut c3, Phase::Switch).await;
    assert!(replayed.iter().all(|e| e.order_id == first.order_id));

    d.open_gate();
    let (_, o1) = until_outcome(&mut c1).await;
    let (_, o3) = until_outcome(&mut c3).await;
    assert_eq!(o1, o3);

    // Released: a new rollout goes through.
    let mut c4 = d.client().await;
    c4.send(&Request::Submit {
        order: d.sign(&d.order("r2", 'b')).await,
    })
    .await
    .unwrap();
    assert_eq!(until_outcome(&mut c4).await.1.kind, OutcomeKind::Succeeded);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_outlives_its_client_and_watch_replays_it() {
    let mut d = Daemon::start().await;
    d.fake.0.hold.store(true, Ordering::SeqCst);
    let order = d.order("r1", 'a');
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: d.sign(&order).await,
    })
    .await
    .unwrap();
    until_phase(&mut c, Phase::Switch).await;
    drop(c);

    // Watch while it runs: replay so far, then live to the outcome.
    let mut live = d.client().await;
    live.send(&Request::Watch {
        order_id: order.order_id.clone(),
    })
    .await
    .unwrap();
    until_phase(&mut live, Phase::Switch).await;
    d.open_gate();
    let (rest, outcome) = until_outcome(&mut live).await;
    assert_eq!(phases(&rest), [Phase::Health]);
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);

    // Watch after the end: everything from the journal.
    let mut late = d.client().await;
    late.send(&Request::Watch {
        order_id: order.order_id.clone(),
    })
    .await
    .unwrap();
    let (events, outcome) = until_outcome(&mut late).await;
    assert_eq!(
        phases(&events),
        [
            Phase::Accepted,
            Phase::Pull,
            Phase::Migrate,
            Phase::Switch,
            Phase::Health
        ]
    );
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);

    for unknown in ["01unknown", "../../etc/passwd"] {
        late.send(&Request::Watch {
            order_id: unknown.into(),
        })
        .await
        .unwrap();
        assert!(
            matches!(late.next_reply().await.unwrap(), Some(Reply::Error { .. })),
            "{unknown}"
        );
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_migrates_once() {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    for rollout in ["r1", "r2"] {
        c.send(&Request::Submit {
            order: d.sign(&d.order(rollout, 'a')).await,
        })
        .await
        .unwrap();
        let (events, outcome) = until_outcome(&mut c).await;
        assert_eq!(outcome.kind, OutcomeKind::Succeeded);
        if rollout == "r2" {
            let skip = events
                .iter()
                .find(|e| e.phase == Phase::Migrate)
                .expect("a migrate event");
            assert!(skip.message.contains("skipped"), "{}", skip.message);
        }
    }
    assert_eq!(d.fake.0.migrations.load(Ordering::SeqCst), 1);

    // Asked for explicitly, it runs again.
    let mut rerun = d.order("r3", 'a');
    rerun.rerun_migration = true;
    c.send(&Request::Submit {
        order: d.sign(&rerun).await,
    })
    .await
    .unwrap();
    let (_, outcome) = until_outcome(&mut c).await;
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    assert_eq!(d.fake.0.migrations.load(Ordering::SeqCst), 2);

    let entries = c.history(10).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.run_migration).collect::<Vec<_>>(),
        [true, false, true]
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_and_a_closed_connection() {
    let mut d = Daemon::start().await;
    // Not a hello first.
    let mut c = d.raw_client().await;
    c.send(&Request::Status {}).await.unwrap();
    assert!(matches!(
        c.next_reply().await.unwrap(),
        Some(Reply::Error { .. })
    ));
    assert_eq!(c.next_reply().await.unwrap(), None);
    // Another protocol version: tests/e2e/controller/version_skew.rs, against the real binary.
    // Garbage after hello.
    for garbage in [
        &b"{\"type\":\"launch_missiles\"}\n"[..],
        b"\xff\xfe\n",
        b"not json\n",
        b"\n",
    ] {
        let mut c = d.client().await;
        c.send_raw(garbage).await.unwrap();
        assert!(
            matches!(c.next_reply().await.unwrap(), Some(Reply::Error { .. })),
            "{garbage:?}"
        );
        assert_eq!(c.next_reply().await.unwrap(), None);
    }
    // A refused order changes nothing and the agent goes on serving.
    let mut c = d.client().await;
    let mut wrong_env = d.order("r1", 'a');
    wrong_env.env = "prod".into();
    c.send(&Request::Submit {
        order: d.sign(&wrong_env).await,
    })
    .await
    .unwrap();
    assert_eq!(refusal(&mut c).await.kind, RefusalKind::EnvMismatch);
    assert!(d.journal().load(&wrong_env.order_id).unwrap().is_none());
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_unfinished_orders_before_serving_and_refuses_replays() {
    let mut d = Daemon::start().await;
    let order = d.order("r1", 'a');
    let signed = d.sign(&order).await;
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: signed.clone(),
    })
    .await
    .unwrap();
    until_outcome(&mut c).await;
    d.shutdown().await;

    // An order that was mid-flight when the agent died.
    let interrupted = d.order("r2", 'b');
    let record = OrderRecord {
        seq: 99,
        signed: d.sign(&interrupted).await,
        order: interrupted.clone(),
        signer: SignerInfo {
            principal: "ci@test".into(),
            fingerprint: "SHA256:x".into(),
        },
        accepted_at: Timestamp::now(),
        events: vec![JobEvent {
            order_id: interrupted.order_id.clone(),
            at: Timestamp::now(),
            phase: Phase::Switch,
            service: Some("web".into()),
            message: "old container stopped".into(),
        }],
        outcome: None,
        duration_ms: None,
    };
    d.journal().save(&record).unwrap();
    std::fs::write(d.journal().dir().join("01broken.json"), b"{ not a record").unwrap();

    d.serve().await;
    assert_eq!(
        *d.fake.0.recovered.lock().unwrap(),
        [interrupted.order_id.as_str()]
    );
    let recovered = d.journal().load(&interrupted.order_id).unwrap().unwrap();
    assert_eq!(
        phases(&recovered.events),
        [Phase::Switch, Phase::Recover, Phase::Recover]
    );
    assert_eq!(
        recovered.outcome.as_ref().map(|o| o.kind),
        Some(OutcomeKind::RolledBack)
    );
    assert!(d.journal().dir().join("01broken.json.corrupt").exists());

    let mut c = d.client().await;
    c.send(&Request::Submit { order: signed }).await.unwrap();
    assert_eq!(refusal(&mut c).await.kind, RefusalKind::Replayed);
    let entries = c.history(10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].order_id, interrupted.order_id);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_running_job_finish() {
    let mut d = Daemon::start().await;
    d.fake.0.hold.store(true, Ordering::SeqCst);
    let order = d.order("r1", 'a');
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: d.sign(&order).await,
    })
    .await
    .unwrap();
    until_phase(&mut c, Phase::Switch).await;
    let stop = d.stop.take().unwrap();
    let _ = stop.send(());
    // The socket goes away at once; the job is still allowed to end.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while d.socket.exists() {
        assert!(tokio::time::Instant::now() < deadline, "socket still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!d.served.as_ref().unwrap().is_finished());
    d.open_gate();
    let (_, outcome) = until_outcome(&mut c).await;
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    d.shutdown().await;
    assert!(
        d.journal()
            .load(&order.order_id)
            .unwrap()
            .unwrap()
            .outcome
            .is_some()
    );
    drop(d.dir);
}

/// Reads until the agent closes the connection; how long that took, or None past `limit`.
async fn closed_within(stream: &mut tokio::net::UnixStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// A raw connection that said hello (and read the answer).
async fn raw_hello(d: &Daemon) -> tokio::net::UnixStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    let hello = proto::codec::encode(&proto::codec::hello_request("raw")).unwrap();
    s.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].ends_with(b"\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_computed_once_for_a_burst_and_never_hides_a_job() {
    let mut d = Daemon::start().await;
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: d.sign(&d.order("r1", 'a')).await,
    })
    .await
    .unwrap();
    until_outcome(&mut c).await;
    let probes = || d.fake.0.inspections.load(Ordering::SeqCst);
    let before = probes();

    // A burst of status requests on many connections: one computation answers them all.
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(d.client().await);
    }
    let answers = futures_util::future::join_all(clients.iter_mut().map(|c| c.status())).await;
    let first = answers[0].as_ref().unwrap().clone();
    for answer in answers {
        assert_eq!(answer.unwrap(), first, "one computation, one answer");
    }
    assert_eq!(probes(), before + 1, "one probe of the one service");

    // A job that starts is in the very next answer, cache or not.
    d.fake.0.hold.store(true, Ordering::SeqCst);
    let held = d.order("r2", 'b');
    c.send(&Request::Submit {
        order: d.sign(&held).await,
    })
    .await
    .unwrap();
    until_phase(&mut c, Phase::Switch).await;
    let during = clients[0].status().await.unwrap();
    assert_eq!(
        during
            .running
            .iter()
            .map(|h| h.order_id.as_str())
            .collect::<Vec<_>>(),
        [held.order_id.as_str()]
    );
    d.open_gate();
    until_outcome(&mut c).await;
    assert!(clients[0].status().await.unwrap().running.is_empty());

    // Past a second the probes run again.
    let counted = probes();
    let deadline = std::time::Instant::now() + LIMIT;
    while probes() == counted {
        assert!(
            std::time::Instant::now() < deadline,
            "status never refreshed"
        );
        clients[0].status().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_longest_idle_goes_and_followers_stay() {
    let mut d = Daemon::start_with("max_connections = 3\n").await;
    d.fake.0.hold.store(true, Ordering::SeqCst);
    let order = d.order("r1", 'a');
    let mut follower = d.client().await;
    follower
        .send(&Request::Submit {
            order: d.sign(&order).await,
        })
        .await
        .unwrap();
    until_phase(&mut follower, Phase::Switch).await;

    // The follower is the oldest connection, yet the idle ones go first, oldest first.
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(raw_hello(&d).await);
    }
    let short = Duration::from_millis(300);
    for (i, conn) in idle.iter_mut().enumerate() {
        let closed = closed_within(conn, if i < 3 { LIMIT } else { short }).await;
        assert_eq!(closed.is_some(), i < 3, "idle connection {i}");
    }
    d.open_gate();
    let (_, outcome) = until_outcome(&mut follower).await;
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    // The survivors still get answers.
    let mut last = d.client().await;
    last.status().await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stallers_silent_and_idle_connections_are_closed_in_time() {
    use tokio::io::AsyncWriteExt;
    let frame = Duration::from_millis(500);
    let idle = Duration::from_millis(1500);
    let mut d = Daemon::start_with("frame_timeout = \"500ms\"\nidle_timeout = \"1500ms\"\n").await;
    let slack = Duration::from_secs(5);

    // No hello at all: closed at the frame timeout.
    let mut silent = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
    // Half a frame after hello: closed at the frame timeout, not the idle one.
    let mut staller = raw_hello(&d).await;
    staller.write_all(b"{\"type\":\"sta").await.unwrap();
    // Hello, then nothing: closed at the idle timeout.
    let mut quiet = raw_hello(&d).await;
    let (silent, staller, quiet) = tokio::join!(
        closed_within(&mut silent, slack),
        closed_within(&mut staller, slack),
        closed_within(&mut quiet, slack),
    );
    for (what, closed, limit) in [
        ("silent", silent, frame),
        ("staller", staller, frame),
        ("quiet", quiet, idle),
    ] {
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after {slack:?}"));
        assert!(
            closed >= limit - Duration::from_millis(50) && closed < limit + slack,
            "{what}: closed after {closed:?}, limit {limit:?}"
        );
    }

    // A client that keeps asking is not idle, and one following a job is never cut off.
    d.fake.0.hold.store(true, Ordering::SeqCst);
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: d.sign(&d.order("r1", 'a')).await,
    })
    .await
    .unwrap();
    until_phase(&mut c, Phase::Switch).await;
    let mut asker = d.client().await;
    let started = std::time::Instant::now();
    while started.elapsed() < idle * 2 {
        asker.history(1).await.unwrap();
        tokio::time::sleep(idle / 4).await;
    }
    d.open_gate();
    assert_eq!(until_outcome(&mut c).await.1.kind, OutcomeKind::Succeeded);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_streams_its_output_holds_its_service_and_is_journaled() {
    let mut d = Daemon::start().await;
    d.deploy('a').await;
    let deployed = d.client().await.status().await.unwrap().services[0].clone();
    d.fake.0.hold.store(true, Ordering::SeqCst);
    let exec = d.exec_order('a');
    let mut c1 = d.client().await;
    c1.send(&Request::Submit {
        order: d.sign(&exec).await,
    })
    .await
    .unwrap();
    // The first line arrives while the command still runs (it waits at the gate).
    let mut before = Vec::new();
    loop {
        match c1.next_reply().await.unwrap().expect("a reply") {
            Reply::Output { output } => {
                assert_eq!(
                    (output.stream, output.line.as_str()),
                    (OutputStream::Stdout, "hello")
                );
                assert_eq!(output.order_id, exec.order_id);
                break;
            }
            Reply::Event { event } => before.push(event.phase),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(before, [Phase::Accepted, Phase::Exec]);

    // A deploy of the service waits for the command: refused, naming the exec.
    let deploy = refused(&d, d.order("r2", 'b')).await;
    assert_eq!(deploy.kind, RefusalKind::RolloutInProgress);
    assert_eq!(
        deploy.holder.map(|h| h.order_id),
        Some(exec.order_id.clone())
    );

    d.open_gate();
    let mut lines = Vec::new();
    let end = c1
        .follow_with(
            |_| ControlFlow::<Infallible>::Continue(()),
            |l| lines.push(l.line),
        )
        .await
        .unwrap();
    let ControlFlow::Continue(JobEnd::Outcome(outcome)) = end else {
        panic!("{end:?}");
    };
    assert_eq!(lines, ["bye"]);
    assert_eq!((outcome.exit_code, outcome.changed), (Some(7), false));

    let mut c = d.client().await;
    let history = c.history(10).await.unwrap();
    assert_eq!(history[0].order_id, exec.order_id);
    assert_eq!(history[0].action, proto::Action::Exec);
    assert_eq!(history[0].exit_code, Some(7));
    assert!(
        history[0].signer.starts_with("ci@test (SHA256:"),
        "{}",
        history[0].signer
    );
    let record = d.record(&exec.order_id);
    assert!(
        record.events[0]
            .message
            .starts_with("accepted exec of `/app version` in web"),
        "{}",
        record.events[0].message
    );
    let text = serde_json::to_string(&record).unwrap();
    assert!(
        !text.contains("hello") && !text.contains("bye"),
        "output is not journaled"
    );
    let status = c.status().await.unwrap();
    assert_eq!(
        (
            status.services[0].last_order.as_ref(),
            status.services[0].last_outcome
        ),
        (deployed.last_order.as_ref(), Some(OutcomeKind::Succeeded)),
        "an exec is no deploy of its service"
    );
    d.shutdown().await;
}

/// Asserts that `r` is of `kind` and says `words`.
fn says(r: &Refusal, kind: RefusalKind, words: &str) {
    assert_eq!(r.kind, kind, "{}", r.message);
    assert!(r.message.contains(words), "{}", r.message);
}

/// Submits `order` and returns its refusal.
async fn refused(d: &Daemon, order: Order) -> Refusal {
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: d.sign(&order).await,
    })
    .await
    .unwrap();
    refusal(&mut c).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_is_refused_unless_its_service_runs_its_image_and_the_policy_allows_it() {
    let mut d = Daemon::start().await;
    let nothing = refused(&d, d.exec_order('a')).await;
    says(
        &nothing,
        RefusalKind::NotRunning,
        "is not running on host h1 (missing)",
    );
    d.deploy('a').await;
    let other = refused(&d, d.exec_order('b')).await;
    says(
        &other,
        RefusalKind::NotRunning,
        "runs aaaaaaaaaaaa on host h1 now",
    );
    assert_eq!(
        d.journal().load_all().0.len(),
        1,
        "a refused exec is not journaled"
    );
    d.shutdown().await;

    let mut denied = Daemon::start_with("[policy]\nexec = false\n").await;
    denied.deploy('a').await;
    let policy = refused(&denied, denied.exec_order('a')).await;
    says(&policy, RefusalKind::PolicyDenied, "[policy] exec denies");
    denied.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_hears_of_a_job_starting_and_ending_without_asking() {
    let mut d = Daemon::start().await;
    let mut watcher = d.client().await;
    watcher.subscribe().await.unwrap();
    let first = tokio::time::timeout(LIMIT, watcher.next_status())
        .await
        .unwrap()
        .unwrap();
    assert!(first.running.is_empty());

    d.fake.0.hold.store(true, Ordering::SeqCst);
    let held = d.order("r1", 'a');
    let mut c = d.client().await;
    c.send(&Request::Submit {
        order: d.sign(&held).await,
    })
    .await
    .unwrap();
    // The subscriber sends nothing more: what comes is pushed by the agent.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let s = tokio::time::timeout(LIMIT, watcher.next_status())
            .await
            .unwrap()
            .unwrap();
        if s.running.iter().any(|h| h.order_id == held.order_id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never heard of the job"
        );
    }
    d.open_gate();
    until_outcome(&mut c).await;
    loop {
        let s = tokio::time::timeout(LIMIT, watcher.next_status())
            .await
            .unwrap()
            .unwrap();
        if s.running.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never heard the job end"
        );
    }
    d.shutdown().await;
}
