//! The deploy engine against the real Docker engine, a real registry and the demo images
//! (harness): every behaviour the engine owns (pull, migrate once, health-gated switch,
//! rollback, retention, recovery, compose), observed from Docker itself.
//!
//! Each test uses its own host label, app name, network and data directory, and a cleanup guard
//! removes every container carrying its host label (and its compose project) even on failure.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use deploy::{Engine, EventSink, Identity};
use harness::{
    Cleanup, DemoImage, DemoImages, Registry, docker, docker_inspect, http_get, unique_name,
};
use proto::order::{HealthSpec, ServiceKind, Strategy};
use proto::wire::{FailureClass, Health, Outcome, OutcomeKind, Phase};
use proto::{Action, ImageRef, MigrationSpec, Order, ServiceSpec, Timestamp};

mod failing;

const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Records every event; optionally "crashes" (panics) right before a chosen step, which is what
/// a `kill -9` of the agent at that point looks like to the engine.
#[derive(Default)]
struct Events {
    seen: Mutex<Vec<(Phase, Option<String>, String)>>,
    crash_before: Option<(Phase, &'static str)>,
}

impl Events {
    fn crashing_before(phase: Phase, needle: &'static str) -> Events {
        Events {
            seen: Mutex::default(),
            crash_before: Some((phase, needle)),
        }
    }

    fn all(&self) -> Vec<(Phase, Option<String>, String)> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn text(&self) -> String {
        self.all()
            .iter()
            .map(|(p, s, m)| format!("[{p}] {}: {m}\n", s.as_deref().unwrap_or("-")))
            .collect()
    }
}

impl EventSink for Events {
    fn emit(&self, phase: Phase, service: Option<&str>, message: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push((phase, service.map(str::to_owned), message.to_string()));
        }
        if let Some((p, needle)) = self.crash_before
            && p == phase
            && message.contains(needle)
        {
            panic!("simulated agent crash before: {message}");
        }
    }
}

/// One test's private host: registry with the demo images, engine, names, data directory.
struct World {
    engine: Engine,
    images: DemoImages,
    host: String,
    env: String,
    app: String,
    network: String,
    dir: tempfile::TempDir,
    cleanup: Cleanup,
    _registry: Registry,
}

impl World {
    async fn new() -> anyhow::Result<World> {
        harness::require_prereqs()?;
        let registry = Registry::start()?;
        let images = DemoImages::publish(&registry, &unique_name("engine"))?;
        let host = unique_name("host");
        let app = unique_name("app");
        let network = unique_name("net");
        let mut cleanup = Cleanup::label(proto::order::labels::HOST, &host);
        cleanup.network(&network);
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        std::fs::write(
            dir.path().join("web.env"),
            "# the migration log moves here\nDEMO_MIGRATION_FILE=/data/m.log\n\n",
        )?;
        let identity = Identity {
            host: host.clone(),
            env: "test".into(),
            container_prefix: String::new(),
        };
        let engine = Engine::connect(identity)
            .await?
            .with_state_dir(dir.path().join("state"));
        Ok(World {
            engine,
            images,
            host,
            env: "test".into(),
            app,
            network,
            dir,
            cleanup,
            _registry: registry,
        })
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn web(&self) -> ServiceSpec {
        ServiceSpec {
            kind: ServiceKind::Container,
            ports: vec![],
            env_file: Some(self.dir.path().join("web.env").display().to_string()),
            volumes: vec![format!("{}:/data", self.data().display())],
            network: Some(self.network.clone()),
            command: None,
            strategy: Strategy::StopFirst,
            health: HealthSpec {
                path: Some("/healthz".into()),
                port: Some(8080),
                interval: Duration::from_millis(100),
                healthy_for: Duration::from_millis(600),
                deadline: Duration::from_secs(6),
            },
            compose_file: None,
            compose_service: None,
            image: None,
            verify: None,
            proxy: None,
        }
    }

    fn order(
        &self,
        image: &ImageRef,
        reference: &str,
        services: &[(&str, ServiceSpec)],
        migrate: bool,
    ) -> Order {
        let now = Timestamp::now();
        Order {
            order_id: proto::order::new_id(),
            rollout_id: proto::order::new_id(),
            env: self.env.clone(),
            host: self.host.clone(),
            host_key: None,
            issued_at: now,
            not_after: now.plus(Duration::from_secs(600)),
            issued_by: "deploy engine test".into(),
            action: Action::Deploy,
            image: image.clone(),
            images: Default::default(),
            migrate_image: None,
            revision: None,
            reference: reference.into(),
            refs: Default::default(),
            tags: Default::default(),
            run_migration: migrate,
            rerun_migration: false,
            app: self.app.clone(),
            services: services
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
            migrate: Some(MigrationSpec {
                command: vec!["/app".into(), "migrate".into()],
                service: services[0].0.to_string(),
                timeout: Duration::from_secs(30),
                image: None,
            }),
            exec: None,
            maintenance: None,
            proposal: None,
            override_freeze: None,
        }
    }

    fn v(&self, n: usize) -> &DemoImage {
        self.images.v(n)
    }

    fn order_v(&self, n: usize, services: &[(&str, ServiceSpec)], migrate: bool) -> Order {
        let v = self.v(n);
        self.order(&v.image_ref, &v.version, services, migrate)
    }

    async fn run(&self, order: &Order) -> (Outcome, Events) {
        let events = Events::default();
        let outcome = self.engine.execute(order, &events).await;
        (outcome, events)
    }

    /// Runs the order until the sink "crashes" before the step containing `needle`.
    async fn run_until_crash(
        &self,
        order: &Order,
        phase: Phase,
        needle: &'static str,
    ) -> anyhow::Result<Events> {
        let events = Arc::new(Events::crashing_before(phase, needle));
        let (engine, order, sink) = (self.engine.clone(), order.clone(), events.clone());
        let result = tokio::spawn(async move { engine.execute(&order, &*sink).await }).await;
        match result {
            Err(e) if e.is_panic() => {}
            Err(e) => bail!("the job failed another way: {e}"),
            Ok(o) => bail!(
                "the job finished without reaching {needle:?}: {o:?}\n{}",
                events.text()
            ),
        }
        Arc::try_unwrap(events).map_err(|_| anyhow::anyhow!("events still shared"))
    }

    fn canonical(&self, service: &str) -> String {
        proto::order::container_name("", &self.app, &self.env, service)
    }

    /// What `GET /version` answers from the service's serving container, on the service network.
    fn version(&self, service: &str) -> anyhow::Result<String> {
        let c = docker_inspect(&self.canonical(service))?;
        let ip = c["NetworkSettings"]["Networks"][&self.network]["IPAddress"]
            .as_str()
            .filter(|ip| !ip.is_empty())
            .with_context(|| {
                format!(
                    "{} has no address on {}",
                    self.canonical(service),
                    self.network
                )
            })?
            .to_string();
        let r = http_get(&format!("http://{ip}:8080/version"), HTTP_TIMEOUT)?;
        Ok(r.body.trim().to_string())
    }

    /// All containers of this test's host: (name, id, running, digest label).
    fn containers(&self) -> anyhow::Result<Vec<(String, String, bool, String)>> {
        let filter = format!("label={}={}", proto::order::labels::HOST, self.host);
        let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])?;
        let mut out = Vec::new();
        for id in ids.split_whitespace() {
            let c = docker_inspect(id)?;
            out.push((
                c["Name"]
                    .as_str()
                    .unwrap_or("")
                    .trim_start_matches('/')
                    .to_string(),
                id.to_string(),
                c["State"]["Running"].as_bool().unwrap_or(false),
                c["Config"]["Labels"][proto::order::labels::DIGEST]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            ));
        }
        Ok(out)
    }

    fn migration_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.data().join("m.log"))
            .map(|t| t.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

fn started_at(id: &str) -> anyhow::Result<String> {
    Ok(docker_inspect(id)?["State"]["StartedAt"]
        .as_str()
        .unwrap_or("")
        .to_string())
}

fn running(id: &str) -> anyhow::Result<bool> {
    Ok(docker_inspect(id)?["State"]["Running"]
        .as_bool()
        .unwrap_or(false))
}

fn expect(o: &Outcome, kind: OutcomeKind, events: &Events) -> anyhow::Result<()> {
    if std::env::var_os("ENGINE_TEST_VERBOSE").is_some() {
        eprintln!(
            "{}=> {} {:?}: {}\n   log tail: {:?}\n",
            events.text(),
            o.kind,
            o.failure,
            o.reason.as_deref().unwrap_or(""),
            o.log_tail
        );
    }
    ensure!(
        o.kind == kind,
        "expected {kind}, got {o:#?}\nevents:\n{}",
        events.text()
    );
    Ok(())
}

fn id_of(o: &Outcome, service: &str) -> anyhow::Result<String> {
    o.services
        .get(service)
        .and_then(|s| s.container_id.clone())
        .with_context(|| format!("no container for {service} in {o:?}"))
}

fn digest_of(o: &Outcome, service: &str) -> Option<String> {
    o.services.get(service).and_then(|s| s.digest.clone())
}

#[tokio::test]
async fn deploy_migrate_roll_back_and_reuse_a_retained_version() -> anyhow::Result<()> {
    let w = World::new().await?;
    let web = [("web", w.web())];

    // Fresh host: v1.
    let (o, ev) = w.run(&w.order_v(1, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(o.changed);
    ensure!(digest_of(&o, "web").as_deref() == Some(w.v(1).digest.as_str()));
    let v1_id = id_of(&o, "web")?;
    ensure!(w.version("web")? == "v1");
    let snap = w.engine.inspect_service(&w.app, "web", &w.web()).await;
    ensure!(snap.health == Health::Healthy, "{snap:?}");
    ensure!(
        snap.image.as_ref() == Some(&w.v(1).image_ref) && snap.reference.as_deref() == Some("v1"),
        "{snap:?}"
    );
    ensure!(
        ev.all()
            .iter()
            .any(|(p, _, m)| *p == Phase::Pull && m.contains("pulling")),
        "v1 was pulled:\n{}",
        ev.text()
    );

    // v1 → v2 with the migration: it runs once, in v2, with web's env_file and volume.
    let (o, ev) = w.run(&w.order_v(2, &web, true)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    let lines = w.migration_lines();
    ensure!(
        lines.len() == 1 && lines[0].starts_with("migrated v2"),
        "migration log: {lines:?}"
    );
    ensure!(w.version("web")? == "v2");
    let v2_id = id_of(&o, "web")?;
    ensure!(
        o.services["web"].previous_digest.as_deref() == Some(w.v(1).digest.as_str()),
        "{o:?}"
    );
    ensure!(!running(&v1_id)?, "v1 is retained stopped");
    let v1_name = docker_inspect(&v1_id)?["Name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    ensure!(
        v1_name.starts_with(&format!("/{}--", w.canonical("web"))),
        "v1 set aside as {v1_name}"
    );
    ensure!(
        !w.containers()?.iter().any(|(n, ..)| n.contains("migrate")),
        "the migration container was removed"
    );

    // v2 → v3 (never healthy): rolled back to the very same v2 container.
    let v2_started = started_at(&v2_id)?;
    let (o, ev) = w.run(&w.order_v(3, &web, false)).await;
    expect(&o, OutcomeKind::RolledBack, &ev)?;
    ensure!(o.failure == Some(FailureClass::HealthDeadline), "{o:?}");
    ensure!(!o.changed);
    ensure!(id_of(&o, "web")? == v2_id && running(&v2_id)?, "{o:?}");
    ensure!(digest_of(&o, "web").as_deref() == Some(w.v(2).digest.as_str()));
    ensure!(w.version("web")? == "v2");
    ensure!(
        !o.log_tail.is_empty(),
        "v3's log tail travels with the outcome"
    );
    ensure!(o.rollback_ms.is_some_and(|ms| ms > 0), "{o:?}");
    let reason = o.reason.clone().unwrap_or_default();
    ensure!(
        reason.contains(&w.host) && reason.contains("web") && reason.contains("rolled back"),
        "{reason}"
    );
    ensure!(
        !w.containers()?
            .iter()
            .any(|(_, _, _, d)| *d == w.v(3).digest),
        "no v3 container is left"
    );
    ensure!(
        started_at(&v2_id)? != v2_started,
        "stop-first: v2 was stopped and started again"
    );

    // v4 crashes at start: noticed long before the deadline.
    let mut slow = w.web();
    slow.health.deadline = Duration::from_secs(60);
    let t = Instant::now();
    let (o, ev) = w.run(&w.order_v(4, &[("web", slow)], false)).await;
    expect(&o, OutcomeKind::RolledBack, &ev)?;
    ensure!(o.failure == Some(FailureClass::ContainerExited), "{o:?}");
    ensure!(
        t.elapsed() < Duration::from_secs(20),
        "crash noticed after {:?}",
        t.elapsed()
    );
    ensure!(id_of(&o, "web")? == v2_id && w.version("web")? == "v2");

    // v5's migration fails: v2 is never stopped.
    let v2_started = started_at(&v2_id)?;
    let (o, ev) = w.run(&w.order_v(5, &web, true)).await;
    expect(&o, OutcomeKind::MigrationFailed, &ev)?;
    ensure!(
        o.failure == Some(FailureClass::MigrationFailed) && !o.changed,
        "{o:?}"
    );
    ensure!(
        o.log_tail.iter().any(|l| l.contains("fail")),
        "migration log tail: {:?}",
        o.log_tail
    );
    ensure!(
        started_at(&v2_id)? == v2_started && running(&v2_id)?,
        "v2 kept running untouched"
    );
    ensure!(id_of(&o, "web")? == v2_id);
    ensure!(w.migration_lines().len() == 1, "{:?}", w.migration_lines());

    // Rollback to v1: the retained v1 container comes back (instant rollback).
    let mut back = w.order_v(1, &web, false);
    back.action = Action::Rollback;
    let (o, ev) = w.run(&back).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(
        id_of(&o, "web")? == v1_id,
        "the retained v1 container was reused: {o:?}\n{}",
        ev.text()
    );
    ensure!(w.version("web")? == "v1");
    ensure!(!running(&v2_id)?, "v2 is now the retained one");

    let logs = w.engine.logs(&w.app, "web", &w.web(), 50).await?;
    ensure!(
        logs.container == w.canonical("web") && !logs.lines.is_empty(),
        "{logs:?}"
    );

    // Deploying what already runs changes nothing.
    let (o, ev) = w.run(&w.order_v(1, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(!o.changed && id_of(&o, "web")? == v1_id, "{o:?}");
    Ok(())
}

#[tokio::test]
async fn retention_keeps_three_stopped_versions() -> anyhow::Result<()> {
    let w = World::new().await?;
    let web = [("web", w.web())];
    let (o, ev) = w.run(&w.order_v(1, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    // Four older versions set aside by earlier orders (distinct fake digests, stopped).
    let canonical = w.canonical("web");
    for i in 0..4 {
        let digest = format!("sha256:{}", format!("{i}").repeat(64));
        let name = format!("{canonical}--{}-old{i}", &digest[7..19]);
        let labels = [
            format!("{}={}", proto::order::labels::HOST, w.host),
            format!("{}={}", proto::order::labels::ENV, w.env),
            format!("{}={}", proto::order::labels::APP, w.app),
            format!("{}=web", proto::order::labels::SERVICE),
            format!("{}={digest}", proto::order::labels::DIGEST),
        ];
        let mut args = vec!["create", "--name", &name];
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        let image = w.v(1).pinned();
        args.push(&image);
        docker(&args)?;
    }
    let (o, ev) = w.run(&w.order_v(2, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    let aside: Vec<_> = w
        .containers()?
        .into_iter()
        .filter(|(n, ..)| n.starts_with(&format!("{canonical}--")))
        .collect();
    ensure!(
        aside.len() == 3,
        "three retained versions expected: {aside:?}\n{}",
        ev.text()
    );
    ensure!(
        aside.iter().any(|(_, _, _, d)| *d == w.v(1).digest),
        "v1, the newest stopped, is kept: {aside:?}"
    );
    ensure!(aside.iter().all(|(_, _, run, _)| !run));
    Ok(())
}

#[tokio::test]
async fn missing_digest_and_failed_first_deploys_change_nothing() -> anyhow::Result<()> {
    let w = World::new().await?;
    let web = [("web", w.web())];

    let missing = ImageRef::new(w.images.repository(), &format!("sha256:{}", "0".repeat(64)))?;
    let (o, ev) = w.run(&w.order(&missing, "nope", &web, true)).await;
    expect(&o, OutcomeKind::PullFailed, &ev)?;
    ensure!(
        o.failure == Some(FailureClass::ImageNotFound) && !o.changed,
        "{o:?}"
    );
    ensure!(
        w.containers()?.is_empty(),
        "nothing created: {:?}",
        w.containers()?
    );

    // An unreachable registry is its own class.
    let unreachable = ImageRef::new("127.0.0.1:1/nothing", &format!("sha256:{}", "1".repeat(64)))?;
    let (o, ev) = w.run(&w.order(&unreachable, "nope", &web, false)).await;
    expect(&o, OutcomeKind::PullFailed, &ev)?;
    ensure!(
        o.failure == Some(FailureClass::RegistryUnreachable),
        "{o:?}"
    );

    // First deploy of a broken version: nothing to roll back to, nothing left behind.
    for (n, class) in [
        (3, FailureClass::HealthDeadline),
        (4, FailureClass::ContainerExited),
    ] {
        let (o, ev) = w.run(&w.order_v(n, &web, false)).await;
        expect(&o, OutcomeKind::Failed, &ev)?;
        ensure!(o.failure == Some(class) && !o.changed, "{o:?}");
        ensure!(!o.log_tail.is_empty(), "{o:?}");
        ensure!(
            w.containers()?.is_empty(),
            "no container left: {:?}",
            w.containers()?
        );
        ensure!(o.services["web"].container_id.is_none());
    }

    // A migration that never ends is killed at its timeout; nothing else happens.
    let mut order = w.order_v(1, &web, true);
    if let Some(m) = order.migrate.as_mut() {
        m.command = vec!["/app".into(), "serve".into()];
        m.timeout = Duration::from_secs(1);
    }
    let (o, ev) = w.run(&order).await;
    expect(&o, OutcomeKind::MigrationFailed, &ev)?;
    ensure!(
        o.failure == Some(FailureClass::MigrationTimeout) && !o.changed,
        "{o:?}"
    );
    ensure!(
        w.containers()?.is_empty(),
        "the migration container is gone: {:?}",
        w.containers()?
    );

    let snap = w.engine.inspect_service(&w.app, "web", &w.web()).await;
    ensure!(snap.health == Health::Missing, "{snap:?}");
    ensure!(
        w.engine.logs(&w.app, "web", &w.web(), 10).await.is_err(),
        "no container, no logs"
    );
    Ok(())
}

#[tokio::test]
async fn two_services_deploy_and_roll_back_together() -> anyhow::Result<()> {
    let w = World::new().await?;
    let mut worker = w.web();
    worker.command = Some(vec!["/app".into(), "worker".into()]);
    // No path: the image's HEALTHCHECK decides.
    worker.health.path = None;
    worker.health.port = None;
    let services = [("web", w.web()), ("worker", worker.clone())];

    let (o, ev) = w.run(&w.order_v(1, &services, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    let (web1, worker1) = (id_of(&o, "web")?, id_of(&o, "worker")?);
    ensure!(
        ev.text().contains("HEALTHCHECK"),
        "worker judged by the image's HEALTHCHECK:\n{}",
        ev.text()
    );

    // web switches fine, then worker crashes: both end on v1 again, same containers.
    let mut broken = worker;
    broken.command = Some(vec!["/app".into(), "no-such-subcommand".into()]);
    let (o, ev) = w
        .run(&w.order_v(2, &[("web", w.web()), ("worker", broken)], false))
        .await;
    expect(&o, OutcomeKind::RolledBack, &ev)?;
    ensure!(o.failure == Some(FailureClass::ContainerExited), "{o:?}");
    ensure!(
        id_of(&o, "web")? == web1 && id_of(&o, "worker")? == worker1,
        "{o:?}"
    );
    ensure!(running(&web1)? && running(&worker1)?);
    ensure!(w.version("web")? == "v1");
    let text = ev.text();
    let web_healthy = text
        .find("is healthy (")
        .context("web became healthy on v2")?;
    let web_back = text.rfind("[rollback] web").context("web rolled back")?;
    ensure!(web_healthy < web_back, "{text}");

    let (o, ev) = w.run(&w.order_v(2, &services, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(w.version("worker")? == "v2" && w.version("web")? == "v2");
    Ok(())
}

/// Behind Caddy, an order whose second service fails after the first one switched puts the
/// first back without a failed request: the new version serves on while the previous one comes
/// back, the route goes to it, and only then is the new one removed.
#[tokio::test]
async fn a_proxied_service_is_undone_after_its_switch_without_a_failed_request()
-> anyhow::Result<()> {
    let w = World::new().await?;
    let caddy = harness::Caddy::start()?;
    let listen = harness::free_listen_addr()?;
    let mut web = w.web();
    web.proxy = Some(serde_json::from_value(serde_json::json!({
        "caddy": caddy.admin_addr(), "listen": [listen], "drain": "5s"
    }))?);
    let mut worker = w.web();
    worker.command = Some(vec!["/app".into(), "worker".into()]);
    worker.health.path = None;
    worker.health.port = None;
    let (o, ev) = w
        .run(&w.order_v(
            1,
            &[("web", web.clone()), ("worker", worker.clone())],
            false,
        ))
        .await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    let web1 = id_of(&o, "web")?;

    let probe = harness::Probe::start(&format!("http://{listen}/version"), 50);
    let answered = |from: Duration| {
        move |p: &harness::Probe| {
            let n = p.snapshot().window(from, Duration::MAX).total;
            if n > 10 {
                Ok(())
            } else {
                Err(format!("{n} requests"))
            }
        }
    };
    harness::wait_until(
        "the probe's first requests",
        Duration::from_secs(10),
        || answered(Duration::ZERO)(&probe),
    )?;
    let mut broken = worker;
    broken.command = Some(vec!["/app".into(), "no-such-subcommand".into()]);
    let (o, ev) = w
        .run(&w.order_v(2, &[("web", web), ("worker", broken)], false))
        .await;
    let settled = probe.elapsed();
    harness::wait_until("requests after the order", Duration::from_secs(10), || {
        answered(settled)(&probe)
    })?;
    let report = probe.stop();
    expect(&o, OutcomeKind::RolledBack, &ev)?;
    ensure!(id_of(&o, "web")? == web1, "{o:?}");
    let text = ev.text();
    for step in ["switched to", "goes on serving as", "drained"] {
        ensure!(text.contains(step), "no {step:?} in:\n{text}");
    }
    ensure!(report.failed == 0, "{report}\n{text}");
    ensure!(
        report.settled_versions(harness::probe::RELOAD_OVERLAP) == ["v1", "v2", "v1"],
        "{:?}\n{text}",
        report.versions()
    );
    Ok(())
}

/// Every container of the host answering to `alias` on `network`, with its address.
fn aliased(w: &World, alias: &str) -> anyhow::Result<Vec<(String, String)>> {
    let filter = format!("label={}={}", proto::order::labels::HOST, w.host);
    let ids = docker(&["ps", "-q", "--no-trunc", "--filter", &filter])?;
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        let Ok(c) = docker_inspect(id) else { continue };
        let ep = &c["NetworkSettings"]["Networks"][&w.network];
        let has_alias = ep["Aliases"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == alias));
        if has_alias && c["State"]["Running"].as_bool() == Some(true) {
            out.push((
                id.to_string(),
                ep["IPAddress"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    Ok(out)
}

/// Runs `order` while a thread probes, from the host, every container answering to the
/// service alias; returns the outcome and how many probes ran, or the failed probes.
async fn probed_run(w: &Arc<World>, order: &Order) -> anyhow::Result<(Outcome, Events, usize)> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let (w, stop) = (w.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<(usize, Vec<String>)> {
            let (mut probes, mut failures) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let targets = aliased(&w, "web")?;
                if targets.is_empty() {
                    failures.push("nothing answers to web".to_string());
                }
                for (id, ip) in targets {
                    probes += 1;
                    match http_get(&format!("http://{ip}:8080/healthz"), HTTP_TIMEOUT) {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => failures.push(format!("{id:.12}: status {}", r.status)),
                        // It may have been taken off the network between inspect and GET.
                        Err(e) if aliased(&w, "web")?.iter().any(|(i, _)| *i == id) => {
                            failures.push(format!("{id:.12}: {e}"))
                        }
                        Err(_) => {}
                    }
                }
            }
            Ok((probes, failures))
        })
    };
    let (o, ev) = w.run(order).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (probes, failures) = prober
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))??;
    ensure!(
        failures.is_empty(),
        "{} failed probes of {probes}: {failures:?}\n{}",
        failures.len(),
        ev.text()
    );
    ensure!(probes > 5, "the prober ran ({probes} probes)");
    Ok((o, ev, probes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_always_has_a_healthy_container_behind_the_alias() -> anyhow::Result<()> {
    let w = Arc::new(World::new().await?);
    let mut web = w.web();
    web.strategy = Strategy::StartFirst;
    let services = [("web", web)];
    let (o, ev) = w.run(&w.order_v(1, &services, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    let v1_id = id_of(&o, "web")?;

    // v1 → v2: whatever answers as "web" is healthy throughout.
    let (o, ev, _) = probed_run(&w, &w.order_v(2, &services, false)).await?;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(w.version("web")? == "v2" && !running(&v1_id)?);
    let text = ev.text();
    ensure!(
        text.find("is healthy (").unwrap_or(usize::MAX) < text.find("stopping").unwrap_or(0),
        "v1 stopped only after v2 was healthy:\n{text}"
    );

    // A crashing candidate never disturbs (or answers for) the serving version.
    let v2_id = id_of(&o, "web")?;
    let v2_started = started_at(&v2_id)?;
    let (o, ev, _) = probed_run(&w, &w.order_v(4, &services, false)).await?;
    expect(&o, OutcomeKind::RolledBack, &ev)?;
    ensure!(started_at(&v2_id)? == v2_started && w.version("web")? == "v2");

    // Rollback to v1 reuses the retained container, which start-first had taken off the network.
    let mut back = w.order_v(1, &services, false);
    back.action = Action::Rollback;
    let (o, ev, _) = probed_run(&w, &back).await?;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(
        id_of(&o, "web")? == v1_id && w.version("web")? == "v1",
        "{o:?}"
    );
    Ok(())
}

#[tokio::test]
async fn recovery_after_a_crash_at_each_step_ends_on_one_healthy_version() -> anyhow::Result<()> {
    let w = World::new().await?;
    let web = [("web", w.web())];
    let (o, ev) = w.run(&w.order_v(1, &web, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    let v1_id = id_of(&o, "web")?;

    // (version ordered, crash right before this step, recovery outcome, version serving after)
    let cases = [
        (2, Phase::Pull, "pulled", OutcomeKind::Failed, 1),
        (2, Phase::Switch, "creating", OutcomeKind::RolledBack, 1),
        // Never proven healthy: undone.
        (3, Phase::Health, "waiting for", OutcomeKind::RolledBack, 1),
        // Proven healthy by recovery itself: the order is finished instead.
        (2, Phase::Health, "waiting for", OutcomeKind::Succeeded, 2),
        // Crashed after every switch, before pruning old versions.
        (1, Phase::Cleanup, "", OutcomeKind::Succeeded, 1),
    ];
    for (n, phase, needle, kind, serving) in cases {
        let order = w.order_v(n, &web, false);
        let before: Vec<_> = w
            .containers()?
            .into_iter()
            .filter(|(_, _, run, _)| *run)
            .collect();
        w.run_until_crash(&order, phase, needle).await?;
        let events = Events::default();
        let o = w.engine.recover(&order, &events).await;
        let case = format!("v{n}, crash before {phase} {needle:?}");
        ensure!(o.kind == kind, "{case}: {o:#?}\n{}", events.text());
        ensure!(
            events.all().iter().any(|(p, ..)| *p == Phase::Recover),
            "{case}: recovery says what it does"
        );
        let live: Vec<_> = w
            .containers()?
            .into_iter()
            .filter(|(_, _, run, _)| *run)
            .collect();
        ensure!(
            live.len() == 1,
            "{case}: exactly one version runs: {live:?}"
        );
        ensure!(live[0].3 == w.v(serving).digest, "{case}: {live:?}");
        ensure!(w.version("web")? == format!("v{serving}"), "{case}");
        ensure!(id_of(&o, "web")? == live[0].1, "{case}: {o:?}");
        if kind == OutcomeKind::Succeeded {
            ensure!(o.changed && o.failure.is_none(), "{case}: {o:?}");
        } else {
            ensure!(
                o.failure == Some(FailureClass::Interrupted) && !o.changed,
                "{case}: {o:?}"
            );
            ensure!(
                before == live,
                "{case}: the very same container serves again: {before:?} / {live:?}"
            );
        }
        let stray: Vec<_> = w
            .containers()?
            .into_iter()
            .filter(|(_, _, _, d)| *d == w.v(3).digest)
            .collect();
        ensure!(stray.is_empty(), "{case}: nothing of v3 is left: {stray:?}");
    }
    // The first v1 container, retained when v2 came, is now a copy of what runs: pruned.
    ensure!(
        !w.containers()?.iter().any(|(_, id, ..)| *id == v1_id),
        "redundant retained copy removed"
    );
    Ok(())
}

fn write_compose(dir: &Path, image: &str, data: &Path) -> anyhow::Result<PathBuf> {
    let file = dir.join("compose.yaml");
    std::fs::write(
        &file,
        format!(
            "version: \"2.4\"\nservices:\n  api:\n    image: {image}\n    volumes:\n      - {}:/data\n",
            data.display()
        ),
    )?;
    Ok(file)
}

/// A compose project of this test's own with one service `api` (its file names an image by tag;
/// the engine's override pins the digest), cleaned up with the test: (project name, spec).
fn compose_api(w: &mut World) -> anyhow::Result<(String, ServiceSpec)> {
    let project = unique_name("proj");
    let project_dir = w.dir.path().join(&project);
    std::fs::create_dir_all(&project_dir)?;
    w.cleanup.compose_project(&project);
    w.cleanup.network(&format!("{project}_default"));
    let file = write_compose(
        &project_dir,
        &format!("{}:v1", w.images.repository()),
        &w.data(),
    )?;
    let api = ServiceSpec {
        kind: ServiceKind::Compose,
        compose_file: Some(file.display().to_string()),
        compose_service: Some("api".into()),
        ports: vec![],
        env_file: None,
        volumes: vec![],
        network: None,
        command: None,
        strategy: Strategy::StopFirst,
        health: w.web().health,
        image: None,
        verify: None,
        proxy: None,
    };
    Ok((project, api))
}

#[tokio::test]
async fn compose_service_deploys_migrates_and_rolls_back() -> anyhow::Result<()> {
    let mut w = World::new().await?;
    let (project, api) = compose_api(&mut w)?;
    let services = [("api", api.clone())];
    let version = |w: &World| -> anyhow::Result<String> {
        let snap_id = docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ])?;
        let id = snap_id
            .split_whitespace()
            .next()
            .context("a running compose container")?
            .to_string();
        let ip = harness::container_ip(&id)?;
        let _ = w;
        Ok(
            http_get(&format!("http://{ip}:8080/version"), HTTP_TIMEOUT)?
                .body
                .trim()
                .to_string(),
        )
    };

    let (o, ev) = w.run(&w.order_v(1, &services, false)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(version(&w)? == "v1");
    ensure!(
        digest_of(&o, "api").as_deref() == Some(w.v(1).digest.as_str()),
        "{o:?}"
    );

    let (o, ev) = w.run(&w.order_v(2, &services, true)).await;
    expect(&o, OutcomeKind::Succeeded, &ev)?;
    ensure!(version(&w)? == "v2");
    // The compose file has no env_file, so the migration uses the image's default log path.
    let lines = std::fs::read_to_string(w.data().join("migrations.log")).unwrap_or_default();
    ensure!(
        lines.lines().count() == 1 && lines.starts_with("migrated v2"),
        "{lines:?}"
    );
    let snap = w.engine.inspect_service(&w.app, "api", &api).await;
    ensure!(
        snap.health == Health::Healthy && snap.reference.as_deref() == Some("v2"),
        "{snap:?}"
    );

    let (o, ev) = w.run(&w.order_v(3, &services, false)).await;
    expect(&o, OutcomeKind::RolledBack, &ev)?;
    ensure!(o.failure == Some(FailureClass::HealthDeadline), "{o:?}");
    ensure!(
        digest_of(&o, "api").as_deref() == Some(w.v(2).digest.as_str()),
        "{o:?}"
    );
    ensure!(version(&w)? == "v2");
    ensure!(!o.log_tail.is_empty());
    let logs = w.engine.logs(&w.app, "api", &api, 5).await?;
    ensure!(!logs.lines.is_empty(), "{logs:?}");
    Ok(())
}
