//! An in-memory [`Runtime`] with injectable faults, for the engine paths real Docker cannot be
//! made to take on demand (the engine failing mid-switch, a rollback that cannot start the
//! previous version). The real-engine behaviour is proven by `tests/engine.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::ImageRef;
use proto::order::{HealthSpec, labels};
use proto::wire::{FailureClass, OutcomeKind, Phase};
use proto::{Action, Order, ServiceSpec, Timestamp};

use futures_util::{StreamExt, stream};

use crate::container::ROLE_LABEL;
use crate::exec::ROLE_EXEC;
use crate::runtime::{
    BoxFuture, BoxStream, ContainerInfo, ContainerSpec, Credentials, ImageInfo, OutputChunk,
    OutputStream, PullError, RtResult, RunState, Runtime, RuntimeError,
};
use crate::{Engine, EventSink, Identity};

#[derive(Default)]
struct State {
    containers: BTreeMap<String, ContainerInfo>,
    images: BTreeSet<String>,
    clock: u32,
    next_id: u64,
    calls: Vec<String>,
}

/// What goes wrong, and when.
#[derive(Default, Clone)]
struct Faults {
    down: bool,
    pull: Option<PullError>,
    create_fails: bool,
    /// Containers of this digest exit (code 3) as soon as they start.
    crash_digest: Option<String>,
    /// Starting a container of this digest fails.
    start_fails_digest: Option<String>,
    /// A container a dead agent was creating lands just before the next rename.
    lands_before_rename: Option<ContainerInfo>,
    /// What every container writes; a container still running after it writes nothing more.
    output: Vec<OutputChunk>,
    /// An exec's container exits with this code as soon as it starts; `None`: it runs on.
    exec_exit: Option<i64>,
}

#[derive(Default)]
struct Fake {
    state: Mutex<State>,
    faults: Mutex<Faults>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fake {
    fn check(&self, call: String) -> RtResult<()> {
        lock(&self.state).calls.push(call);
        if lock(&self.faults).down {
            return Err(RuntimeError::Unreachable("connection refused".into()));
        }
        Ok(())
    }

    fn tick(s: &mut State) -> String {
        s.clock += 1;
        format!("2030-01-01T00:{:02}:{:02}Z", s.clock / 60, s.clock % 60)
    }

    fn find(s: &State, name_or_id: &str) -> Option<String> {
        s.containers
            .values()
            .find(|c| c.id == name_or_id || c.name == name_or_id)
            .map(|c| c.id.clone())
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut State, String) -> RtResult<T>) -> RtResult<T> {
        let mut s = lock(&self.state);
        let id = Self::find(&s, id).ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        f(&mut s, id)
    }

    fn running_names(&self) -> Vec<(String, String)> {
        lock(&self.state)
            .containers
            .values()
            .filter(|c| c.is_running())
            .map(|c| {
                (
                    c.name.clone(),
                    c.label(labels::DIGEST).unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Runtime for Fake {
    fn ping(&self) -> BoxFuture<'_, RtResult<()>> {
        Box::pin(async move { self.check("ping".into()) })
    }

    fn inspect_container<'a>(
        &'a self,
        name_or_id: &'a str,
    ) -> BoxFuture<'a, RtResult<Option<ContainerInfo>>> {
        Box::pin(async move {
            self.check(format!("inspect {name_or_id}"))?;
            let s = lock(&self.state);
            Ok(Self::find(&s, name_or_id).and_then(|id| s.containers.get(&id).cloned()))
        })
    }

    fn list_containers<'a>(
        &'a self,
        wanted: &'a [(String, String)],
    ) -> BoxFuture<'a, RtResult<Vec<ContainerInfo>>> {
        Box::pin(async move {
            self.check("list".into())?;
            let s = lock(&self.state);
            Ok(s.containers
                .values()
                .filter(|c| wanted.iter().all(|(k, v)| c.label(k) == Some(v)))
                .cloned()
                .collect())
        })
    }

    fn create_container<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, RtResult<String>> {
        Box::pin(async move {
            self.check(format!("create {}", spec.name))?;
            if lock(&self.faults).create_fails {
                return Err(RuntimeError::Api(
                    "status 500: no space left on device".into(),
                ));
            }
            let mut s = lock(&self.state);
            if Self::find(&s, &spec.name).is_some() {
                return Err(RuntimeError::Conflict(format!("name {} in use", spec.name)));
            }
            s.next_id += 1;
            let id = format!("{:064x}", s.next_id);
            let networks = spec
                .network
                .iter()
                .map(|(n, _)| (n.clone(), String::new()))
                .collect();
            let c = ContainerInfo {
                id: id.clone(),
                name: spec.name.clone(),
                image: spec.image.clone(),
                labels: spec.labels.clone(),
                state: RunState::Created,
                exit_code: None,
                restart_count: 0,
                check: None,
                started_at: None,
                finished_at: None,
                networks,
                oom_killed: false,
                error: None,
            };
            s.containers.insert(id.clone(), c);
            Ok(id)
        })
    }

    fn start_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            self.check(format!("start {id}"))?;
            let faults = lock(&self.faults).clone();
            self.with(id, |s, id| {
                let now = Self::tick(s);
                let c = s
                    .containers
                    .get_mut(&id)
                    .ok_or_else(|| RuntimeError::NotFound(id.clone()))?;
                let digest = c.label(labels::DIGEST).map(str::to_owned);
                if digest.is_some() && digest == faults.start_fails_digest {
                    return Err(RuntimeError::Api(
                        "status 500: OCI runtime create failed".into(),
                    ));
                }
                c.started_at = Some(now.clone());
                let exec_exit = faults
                    .exec_exit
                    .filter(|_| c.label(ROLE_LABEL) == Some(ROLE_EXEC));
                if let Some(code) = exec_exit {
                    c.state = RunState::Exited;
                    c.exit_code = Some(code);
                    c.finished_at = Some(now);
                } else if digest.is_some() && digest == faults.crash_digest {
                    c.state = RunState::Exited;
                    c.exit_code = Some(3);
                    c.finished_at = Some(now);
                } else {
                    c.state = RunState::Running;
                    for ip in c.networks.values_mut() {
                        *ip = "10.9.0.2".into();
                    }
                }
                Ok(())
            })
        })
    }

    fn stop_container<'a>(
        &'a self,
        id: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            self.check(format!("stop {id}"))?;
            self.with(id, |s, id| {
                let now = Self::tick(s);
                if let Some(c) = s.containers.get_mut(&id)
                    && c.is_running()
                {
                    c.state = RunState::Exited;
                    c.exit_code = Some(0);
                    c.finished_at = Some(now);
                }
                Ok(())
            })
        })
    }

    fn kill_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>> {
        self.stop_container(id, Duration::ZERO)
    }

    fn rename_container<'a>(
        &'a self,
        id: &'a str,
        new_name: &'a str,
    ) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            self.check(format!("rename {id} {new_name}"))?;
            if let Some(late) = lock(&self.faults).lands_before_rename.take() {
                lock(&self.state).containers.insert(late.id.clone(), late);
            }
            self.with(id, |s, id| {
                if Self::find(s, new_name).is_some_and(|other| other != id) {
                    return Err(RuntimeError::Conflict(format!("name {new_name} in use")));
                }
                if let Some(c) = s.containers.get_mut(&id) {
                    c.name = new_name.to_string();
                }
                Ok(())
            })
        })
    }

    fn remove_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            self.check(format!("remove {id}"))?;
            let mut s = lock(&self.state);
            if let Some(id) = Self::find(&s, id) {
                s.containers.remove(&id);
            }
            Ok(())
        })
    }

    fn logs_tail<'a>(&'a self, id: &'a str, _lines: usize) -> BoxFuture<'a, RtResult<Vec<String>>> {
        Box::pin(async move {
            self.check(format!("logs {id}"))?;
            Ok(vec![format!("last words of {id:.12}")])
        })
    }

    fn follow_output<'a>(&'a self, id: &'a str) -> BoxStream<'a, RtResult<OutputChunk>> {
        let running = self
            .with(id, |s, id| {
                Ok(s.containers.get(&id).is_some_and(|c| c.is_running()))
            })
            .unwrap_or(false);
        let written = stream::iter(lock(&self.faults).output.clone().into_iter().map(Ok));
        if running {
            Box::pin(written.chain(stream::pending()))
        } else {
            Box::pin(written)
        }
    }

    fn inspect_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, RtResult<Option<ImageInfo>>> {
        Box::pin(async move {
            self.check(format!("inspect image {image}"))?;
            let present = lock(&self.state).images.contains(image);
            Ok(present.then(|| ImageInfo {
                id: "sha256:local".into(),
                repo_digests: vec![image.to_string()],
            }))
        })
    }

    fn pull_image<'a>(
        &'a self,
        image: &'a ImageRef,
        _creds: Option<Credentials>,
    ) -> BoxFuture<'a, Result<(), PullError>> {
        Box::pin(async move {
            self.check(format!("pull {image}"))
                .map_err(|e| PullError::Engine(e.to_string()))?;
            if let Some(e) = lock(&self.faults).pull.clone() {
                return Err(e);
            }
            lock(&self.state).images.insert(image.to_string());
            Ok(())
        })
    }

    fn ensure_network<'a>(&'a self, name: &'a str) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move { self.check(format!("network {name}")) })
    }

    fn connect_network<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
        _aliases: &'a [String],
    ) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            self.check(format!("connect {id} {network}"))?;
            self.with(id, |s, id| {
                if let Some(c) = s.containers.get_mut(&id) {
                    let ip = if c.is_running() { "10.9.0.3" } else { "" };
                    c.networks.insert(network.to_string(), ip.to_string());
                }
                Ok(())
            })
        })
    }

    fn disconnect_network<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
    ) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            self.check(format!("disconnect {id} {network}"))?;
            self.with(id, |s, id| {
                if let Some(c) = s.containers.get_mut(&id) {
                    c.networks.remove(network);
                }
                Ok(())
            })
        })
    }
}

#[derive(Default)]
struct Sink(Mutex<Vec<(Phase, String)>>);

impl EventSink for Sink {
    fn emit(&self, phase: Phase, _service: Option<&str>, message: &str) {
        lock(&self.0).push((phase, message.to_string()));
    }
}

/// Writes events into the fake's call log, so their order relative to engine calls shows.
struct Interleaved(Arc<Fake>);

impl EventSink for Interleaved {
    fn emit(&self, phase: Phase, _service: Option<&str>, message: &str) {
        lock(&self.0.state)
            .calls
            .push(format!("event {phase}: {message}"));
    }
}

/// Keeps an exec's steps and its output.
#[derive(Default)]
struct Recorded {
    events: Mutex<Vec<(Phase, String)>>,
    output: Mutex<Vec<(OutputStream, String)>>,
}

impl EventSink for Recorded {
    fn emit(&self, phase: Phase, _service: Option<&str>, message: &str) {
        lock(&self.events).push((phase, message.to_string()));
    }

    fn output(&self, stream: OutputStream, line: &str) {
        lock(&self.output).push((stream, line.to_string()));
    }
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

fn order(n: u8) -> Order {
    let health = HealthSpec {
        path: None,
        port: None,
        interval: Duration::from_millis(5),
        healthy_for: Duration::from_millis(20),
        deadline: Duration::from_secs(2),
    };
    let spec: ServiceSpec = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
    let spec = ServiceSpec {
        health,
        network: Some("net".into()),
        ..spec
    };
    let now = Timestamp::now();
    Order {
        order_id: format!("order{n}"),
        rollout_id: format!("rollout{n}"),
        env: "prod".into(),
        host: "h1".into(),
        host_key: None,
        issued_at: now,
        not_after: now.plus(Duration::from_secs(60)),
        issued_by: "test".into(),
        action: Action::Deploy,
        image: ImageRef::new("reg/acme", &digest(n)).unwrap_or_else(|e| panic!("{e}")),
        images: Default::default(),
        migrate_image: None,
        revision: None,
        reference: format!("v{n}"),
        refs: Default::default(),
        tags: Default::default(),
        run_migration: false,
        rerun_migration: false,
        app: "acme".into(),
        services: [("web".to_string(), spec)].into(),
        migrate: None,
        exec: None,
        maintenance: None,
        proposal: None,
        override_freeze: None,
    }
}

fn engine() -> (Arc<Fake>, Engine) {
    let fake = Arc::new(Fake::default());
    let identity = Identity {
        host: "h1".into(),
        env: "prod".into(),
        container_prefix: String::new(),
    };
    (fake.clone(), Engine::with_runtime(fake, identity))
}

async fn deployed_v1() -> (Arc<Fake>, Engine) {
    let (fake, engine) = engine();
    let o = engine.execute(&order(1), &Sink::default()).await;
    assert_eq!(o.kind, OutcomeKind::Succeeded, "{o:?}");
    (fake, engine)
}

#[tokio::test]
async fn an_engine_that_does_not_answer_is_a_clean_failure() {
    let (fake, engine) = engine();
    lock(&fake.faults).down = true;
    let o = engine.execute(&order(1), &Sink::default()).await;
    assert_eq!(
        (o.kind, o.failure, o.changed),
        (OutcomeKind::Failed, Some(FailureClass::Engine), false),
        "{o:?}"
    );
    assert!(o.reason.unwrap_or_default().contains("h1"));
}

#[tokio::test]
async fn pull_failures_keep_their_class_and_change_nothing() {
    for (err, class) in [
        (
            PullError::NotFound("manifest unknown".into()),
            FailureClass::ImageNotFound,
        ),
        (
            PullError::Unauthorized("denied".into()),
            FailureClass::RegistryUnauthorized,
        ),
        (
            PullError::Unreachable("connection refused".into()),
            FailureClass::RegistryUnreachable,
        ),
    ] {
        let (fake, engine) = deployed_v1().await;
        lock(&fake.faults).pull = Some(err);
        let o = engine.execute(&order(2), &Sink::default()).await;
        assert_eq!(
            (o.kind, o.failure, o.changed),
            (OutcomeKind::PullFailed, Some(class), false),
            "{o:?}"
        );
        assert_eq!(
            fake.running_names(),
            vec![("acme-prod-web".to_string(), digest(1))]
        );
    }
}

#[tokio::test]
async fn engine_errors_mid_switch_roll_back() {
    let (fake, engine) = deployed_v1().await;
    lock(&fake.faults).create_fails = true;
    let o = engine.execute(&order(2), &Sink::default()).await;
    assert_eq!(
        (o.kind, o.failure),
        (OutcomeKind::RolledBack, Some(FailureClass::Engine)),
        "{o:?}"
    );
    assert!(
        o.reason.as_deref().unwrap_or("").contains("no space left"),
        "{o:?}"
    );
    assert_eq!(
        fake.running_names(),
        vec![("acme-prod-web".to_string(), digest(1))]
    );
}

#[tokio::test]
async fn a_start_failure_rolls_back_with_its_class() {
    let (fake, engine) = deployed_v1().await;
    lock(&fake.faults).start_fails_digest = Some(digest(2));
    let o = engine.execute(&order(2), &Sink::default()).await;
    assert_eq!(
        (o.kind, o.failure),
        (OutcomeKind::RolledBack, Some(FailureClass::StartFailed)),
        "{o:?}"
    );
    assert_eq!(
        fake.running_names(),
        vec![("acme-prod-web".to_string(), digest(1))]
    );
    assert_eq!(
        lock(&fake.state).containers.len(),
        1,
        "the failed container is removed"
    );
}

#[tokio::test]
async fn a_previous_version_that_cannot_start_is_rollback_failed() {
    let (fake, engine) = deployed_v1().await;
    {
        let mut f = lock(&fake.faults);
        f.crash_digest = Some(digest(2));
        f.start_fails_digest = Some(digest(1));
    }
    let sink = Sink::default();
    let o = engine.execute(&order(2), &sink).await;
    assert_eq!(
        (o.kind, o.failure, o.changed),
        (
            OutcomeKind::RollbackFailed,
            Some(FailureClass::ContainerExited),
            true
        ),
        "{o:?}"
    );
    assert!(
        o.reason.as_deref().unwrap_or("").contains("needs a human"),
        "{o:?}"
    );
    assert!(!o.log_tail.is_empty());
    assert!(lock(&sink.0).iter().any(|(p, _)| *p == Phase::Rollback));
}

#[tokio::test]
async fn every_step_is_announced_before_it_is_taken() {
    let (fake, engine) = deployed_v1().await;
    lock(&fake.state).calls.clear();
    let o = engine.execute(&order(2), &Interleaved(fake.clone())).await;
    assert_eq!(o.kind, OutcomeKind::Succeeded, "{o:?}");
    let log = lock(&fake.state).calls.clone();
    let pos = |needle: &str| {
        log.iter()
            .position(|c| c.starts_with(needle))
            .unwrap_or(usize::MAX)
    };
    for (event, call) in [
        ("event pull: pulling", "pull "),
        ("event switch: stopping", "stop "),
        ("event switch: creating", "create "),
        ("event switch: starting", "start "),
    ] {
        assert!(
            pos(event) < pos(call),
            "{event:?} must precede {call:?}: {log:#?}"
        );
    }
    assert!(
        log.iter()
            .rev()
            .find(|c| c.starts_with("event"))
            .is_some_and(|e| e.starts_with("event done")),
        "{log:#?}"
    );
}

#[tokio::test]
async fn recovery_survives_a_create_the_dead_agent_sent_landing_mid_undo() {
    let (fake, engine) = deployed_v1().await;
    let interrupted = order(2);
    // The agent set v1 aside, sent "create v2" and died; the engine creates it only once
    // recovery has looked, so recovery's first plan (rename v1 back) runs into the name.
    let late = {
        let mut s = lock(&fake.state);
        let v1 = s
            .containers
            .values_mut()
            .find(|c| c.name == "acme-prod-web")
            .expect("v1 serving");
        v1.state = RunState::Exited;
        v1.name = crate::plan::aside_name("acme-prod-web", Some(&digest(1)), "order2");
        let mut late = v1.clone();
        late.id = format!("{:064x}", 999);
        late.name = "acme-prod-web".into();
        late.state = RunState::Created;
        late.image = interrupted.image.to_string();
        late.labels.insert(labels::DIGEST.into(), digest(2));
        late.labels.insert(labels::ORDER.into(), "order2".into());
        late
    };
    lock(&fake.faults).lands_before_rename = Some(late);

    let sink = Sink::default();
    let o = engine.recover(&interrupted, &sink).await;
    assert_eq!(
        o.kind,
        OutcomeKind::RolledBack,
        "{o:?}\n{:?}",
        lock(&sink.0)
    );
    let s = lock(&fake.state);
    let web: Vec<&ContainerInfo> = s
        .containers
        .values()
        .filter(|c| c.name == "acme-prod-web")
        .collect();
    assert_eq!(web.len(), 1);
    assert!(web[0].is_running());
    assert_eq!(web[0].label(labels::DIGEST), Some(digest(1).as_str()));
    assert!(
        !s.containers.contains_key(&format!("{:064x}", 999)),
        "the late container is removed"
    );
    assert!(
        lock(&sink.0)
            .iter()
            .any(|(_, m)| m.contains("looking at the containers again")),
        "{:?}",
        lock(&sink.0)
    );
}

/// An exec of `command` in v1's `web`, with `timeout`.
fn exec_order(timeout: Duration) -> Order {
    let mut o = order(1);
    o.order_id = "exec1".into();
    o.action = Action::Exec;
    o.exec = Some(proto::ExecSpec {
        service: "web".into(),
        command: vec!["/app".into(), "talk".into()],
        timeout,
    });
    o
}

/// Every container of an exec, whatever its state.
fn exec_containers(fake: &Fake) -> Vec<ContainerInfo> {
    lock(&fake.state)
        .containers
        .values()
        .filter(|c| c.label(ROLE_LABEL) == Some(ROLE_EXEC))
        .cloned()
        .collect()
}

#[tokio::test]
async fn an_exec_streams_its_lines_and_ends_with_its_exit_code() {
    let (fake, engine) = deployed_v1().await;
    {
        let mut f = lock(&fake.faults);
        let chunk = |stream, bytes: &[u8]| OutputChunk {
            stream,
            bytes: bytes.to_vec(),
        };
        f.output = vec![
            chunk(OutputStream::Stdout, b"one\ntw"),
            chunk(OutputStream::Stderr, b"oops\n"),
            chunk(OutputStream::Stdout, b"o\nthree"),
        ];
        f.exec_exit = Some(7);
    }
    let sink = Recorded::default();
    let o = engine
        .execute(&exec_order(Duration::from_secs(5)), &sink)
        .await;
    assert_eq!(
        (o.kind, o.failure, o.exit_code, o.changed),
        (OutcomeKind::Failed, None, Some(7), false),
        "{o:?}"
    );
    let out: Vec<String> = lock(&sink.output)
        .iter()
        .map(|(s, l)| format!("{s:?} {l}"))
        .collect();
    assert_eq!(
        out,
        ["Stdout one", "Stderr oops", "Stdout two", "Stdout three"]
    );
    assert!(
        exec_containers(&fake).is_empty(),
        "the container is removed"
    );
    assert_eq!(
        fake.running_names(),
        vec![("acme-prod-web".to_string(), digest(1))],
        "the service is untouched"
    );
    let calls = lock(&fake.state).calls.clone();
    assert!(
        calls.iter().any(|c| c == "create acme-prod--exec-exec1"),
        "{calls:#?}"
    );
}

#[tokio::test]
async fn an_exec_past_its_timeout_is_killed_and_removed() {
    let (fake, engine) = deployed_v1().await;
    let sink = Recorded::default();
    let o = engine
        .execute(&exec_order(Duration::from_millis(50)), &sink)
        .await;
    assert_eq!(
        (o.kind, o.failure, o.exit_code),
        (OutcomeKind::Failed, Some(FailureClass::ExecTimeout), None),
        "{o:?}"
    );
    assert!(exec_containers(&fake).is_empty());
    assert!(
        lock(&sink.events)
            .iter()
            .any(|(p, m)| *p == Phase::Exec && m.contains("killing it")),
        "{:?}",
        lock(&sink.events)
    );
}

#[tokio::test]
async fn recovering_an_exec_removes_its_container() {
    let (fake, engine) = deployed_v1().await;
    let order = exec_order(Duration::from_secs(5));
    {
        // The agent died while the command ran: its container is still there.
        let mut s = lock(&fake.state);
        let mut c = s.containers.values().next().cloned().expect("v1");
        c.id = format!("{:064x}", 777);
        c.name = "acme-prod--exec-exec1".into();
        c.labels.insert(ROLE_LABEL.into(), ROLE_EXEC.into());
        c.labels.insert(labels::ORDER.into(), "exec1".into());
        s.containers.insert(c.id.clone(), c);
    }
    let o = engine.recover(&order, &Recorded::default()).await;
    assert_eq!(
        (o.kind, o.failure, o.changed),
        (OutcomeKind::Failed, Some(FailureClass::Interrupted), false),
        "{o:?}"
    );
    assert!(exec_containers(&fake).is_empty());
    assert_eq!(fake.running_names().len(), 1, "the service is untouched");
}
