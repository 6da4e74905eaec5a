//! The agent end to end (issue 3): a real `deploy-agent` process driven through its socket with
//! signed orders, deploying the demo images from a private registry onto the real Docker engine.
//! Each test has its own registry, agent (unique host, env and container prefix) and data dir,
//! and removes every container it caused.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use harness::agents::{AgentProc, AgentSetup, JobEnd, JobStream, TestKey, netprobe_image};
use harness::flood::{Flood, Staller, raise_fd_limit, rss_kib};
use harness::{
    DemoImage, DemoImages, Registry, docker, docker_inspect, http_get, require_prereqs,
    unique_name, wait_until, wait_until_async,
};
use proto::order::{HealthSpec, ServiceKind, Strategy};
use proto::time::Timestamp;
use proto::wire::{FailureClass, Health, OutcomeKind, Phase, RefusalKind};
use proto::{ImageRef, MigrationSpec, Order};

mod metrics;

const APP: &str = "acme";

/// A registry with the five demo versions, an agent allowed to deploy them, and a data dir the
/// services mount at /data (where migrations write their line).
struct World {
    agent: AgentProc,
    images: DemoImages,
    data: tempfile::TempDir,
    _registry: Registry,
}

fn world() -> anyhow::Result<World> {
    world_with(|_| {})
}

/// [`world`] with the agent's setup adjusted first.
fn world_with(adjust: impl FnOnce(&mut AgentSetup)) -> anyhow::Result<World> {
    require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "acme/web")?;
    let mut setup = AgentSetup::new(&[images.repository()]);
    adjust(&mut setup);
    let agent = AgentProc::start(setup)?;
    let data = tempfile::Builder::new()
        .prefix("deployctl-data-")
        .tempdir()?;
    Ok(World {
        agent,
        images,
        data,
        _registry: registry,
    })
}

impl World {
    /// An order for `web` (and the given extra services) with a quick health check.
    fn order(&self, image: &DemoImage, deadline: Duration) -> Order {
        let mut order = self.agent.order(APP, &image.image_ref, &image.version);
        for spec in order.services.values_mut() {
            spec.volumes = vec![format!("{}:/data", self.data.path().display())];
            spec.health = quick_health(deadline);
        }
        order
    }

    /// The same with the migration, run on this host.
    fn order_with_migration(&self, image: &DemoImage) -> Order {
        let mut order = self.order(image, Duration::from_secs(30));
        order.run_migration = true;
        order.migrate = Some(MigrationSpec {
            command: vec!["/app".into(), "migrate".into()],
            service: "web".into(),
            timeout: Duration::from_secs(60),
            image: None,
        });
        order
    }

    async fn submit(&self, order: &Order) -> anyhow::Result<JobStream> {
        let mut client = self.agent.client().await?;
        Ok(client.submit(self.agent.sign(order).await?).await?)
    }

    /// Deploys and insists on success.
    async fn deploy(&self, order: &Order) -> anyhow::Result<JobStream> {
        let stream = self.submit(order).await?;
        let outcome = stream.outcome()?;
        ensure!(
            outcome.kind == OutcomeKind::Succeeded,
            "deploy of {} failed: {outcome:#?}\n{}\nagent log:\n{}",
            order.reference,
            stream.describe(),
            self.agent.log()
        );
        Ok(stream)
    }

    fn serving(&self, service: &str) -> anyhow::Result<Serving> {
        serving(&self.agent.container_name(APP, service))
    }

    fn migration_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.data.path().join("migrations.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn quick_health(deadline: Duration) -> HealthSpec {
    HealthSpec {
        path: Some("/healthz".into()),
        port: Some(8080),
        interval: Duration::from_millis(100),
        healthy_for: Duration::from_secs(1),
        deadline,
    }
}

/// What a service's container is and says.
#[derive(Debug, Clone, PartialEq)]
struct Serving {
    id: String,
    started_at: String,
    running: bool,
    digest: String,
    version: String,
}

fn serving(container: &str) -> anyhow::Result<Serving> {
    let c = docker_inspect(container)?;
    let running = c["State"]["Running"].as_bool().unwrap_or(false);
    let version = if running {
        let ip = c["NetworkSettings"]["Networks"]
            .as_object()
            .and_then(|n| {
                n.values()
                    .find_map(|v| v["IPAddress"].as_str().filter(|s| !s.is_empty()))
            })
            .context("no IP address")?
            .to_string();
        http_get(&format!("http://{ip}:8080/version"), Duration::from_secs(2))?.body
    } else {
        String::new()
    };
    Ok(Serving {
        id: c["Id"].as_str().unwrap_or_default().to_string(),
        started_at: c["State"]["StartedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        running,
        digest: c["Config"]["Labels"][proto::order::labels::DIGEST]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        version,
    })
}

/// Names of this agent's containers for `service`, running ones only unless `all`.
fn containers_of(agent: &AgentProc, service: &str, all: bool) -> anyhow::Result<Vec<String>> {
    let host = format!("label={}={}", proto::order::labels::HOST, agent.host());
    let svc = format!("label={}={service}", proto::order::labels::SERVICE);
    let mut args = vec![
        "ps",
        "--filter",
        &host,
        "--filter",
        &svc,
        "--format",
        "{{.Names}} {{.Label \"deployctl.digest\"}}",
    ];
    if all {
        args.insert(1, "-a");
    }
    Ok(docker(&args)?
        .lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect())
}

fn journal_outcome_kind(agent: &AgentProc, order_id: &str) -> anyhow::Result<String> {
    let j = agent.journal(order_id)?;
    Ok(j["outcome"]["kind"].as_str().unwrap_or("none").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_v1_then_v2_migrates_once_and_retains_v1() -> anyhow::Result<()> {
    let w = world()?;
    let (v1, v2) = (w.images.v(1), w.images.v(2));

    // 1. A fresh host: v1 deploys and runs the v1 digest.
    let first = w.order(v1, Duration::from_secs(30));
    let stream = w.deploy(&first).await?;
    let s = w.serving("web")?;
    assert!(s.running);
    assert_eq!(
        (s.digest.as_str(), s.version.as_str()),
        (v1.digest.as_str(), "v1")
    );
    assert_eq!(
        stream.outcome()?.services["web"].digest.as_deref(),
        Some(v1.digest.as_str())
    );
    assert_eq!(
        journal_outcome_kind(&w.agent, &first.order_id)?,
        "succeeded"
    );
    let journaled = w.agent.journal(&first.order_id)?;
    assert_eq!(
        journaled["events"].as_array().map(Vec::len),
        Some(stream.events.len())
    );
    assert_eq!(journaled["signer"]["principal"], "ci@deployctl-test");

    // 2. v1 → v2 with its migration: one line, in the new image, before the switch.
    let second = w.order_with_migration(v2);
    let stream = w.deploy(&second).await?;
    let lines = w.migration_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("migrated v2 "), "{lines:?}");
    let migrate_at = stream
        .events
        .iter()
        .position(|e| e.phase == Phase::Migrate)
        .context("no migrate step")?;
    let switch_at = stream
        .events
        .iter()
        .position(|e| e.phase == Phase::Switch)
        .context("no switch step")?;
    assert!(migrate_at < switch_at, "{}", stream.describe());
    let s = w.serving("web")?;
    assert_eq!(
        (s.digest.as_str(), s.version.as_str()),
        (v2.digest.as_str(), "v2")
    );
    // v1 is retained, stopped, for instant rollback.
    let all = containers_of(&w.agent, "web", true)?;
    let retained: Vec<&String> = all.iter().filter(|l| l.ends_with(&v1.digest)).collect();
    assert_eq!(retained.len(), 1, "{all:?}");
    let running = containers_of(&w.agent, "web", false)?;
    assert_eq!(
        running.len(),
        1,
        "exactly one running web container: {running:?}"
    );

    // The same digest pushed again (a retried rollout): the migration is not run again.
    let again = w.order_with_migration(v2);
    let stream = w.deploy(&again).await?;
    assert_eq!(w.migration_lines().len(), 1, "{:?}", w.migration_lines());
    let skipped = stream
        .events
        .iter()
        .find(|e| e.phase == Phase::Migrate)
        .context("no migrate event")?;
    assert!(
        skipped.message.contains(&second.order_id) && skipped.message.contains("skipped"),
        "{}",
        skipped.message
    );

    let mut client = w.agent.client().await?;
    let history = client.history(10).await?;
    let ids: Vec<&str> = history.iter().map(|h| h.order_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            again.order_id.as_str(),
            second.order_id.as_str(),
            first.order_id.as_str()
        ]
    );
    assert!(
        history
            .iter()
            .all(|h| h.outcome == Some(OutcomeKind::Succeeded))
    );
    assert!(
        history[0].signer.contains(&w.agent.key.fingerprint()),
        "{}",
        history[0].signer
    );
    assert_eq!(
        (history[1].reference.as_str(), history[1].image.digest()),
        ("v2", v2.digest.as_str())
    );
    let status = client.status().await?;
    let web = status
        .services
        .iter()
        .find(|s| s.service == "web")
        .context("web in status")?;
    assert_eq!(web.health, Health::Healthy);
    assert_eq!(
        web.image.as_ref().map(ImageRef::digest),
        Some(v2.digest.as_str())
    );
    assert_eq!(web.previous_digest.as_deref(), Some(v1.digest.as_str()));
    assert_eq!(web.last_order.as_deref(), Some(again.order_id.as_str()));

    // Asked for (`deployctl push --rerun-migration`), it runs again, in the same image.
    let mut rerun = w.order_with_migration(v2);
    rerun.rerun_migration = true;
    w.deploy(&rerun).await?;
    let lines = w.migration_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with("migrated v2 "), "{lines:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_healthy_v3_rolls_back_to_the_same_v2() -> anyhow::Result<()> {
    let w = world()?;
    let (v2, v3) = (w.images.v(2), w.images.v(3));
    w.deploy(&w.order(v2, Duration::from_secs(30))).await?;
    let before = w.serving("web")?;

    let deadline = Duration::from_secs(6);
    let bad = w.order(v3, deadline);
    let stream = w.submit(&bad).await?;
    let outcome = stream.outcome()?;
    assert_eq!(
        outcome.kind,
        OutcomeKind::RolledBack,
        "{outcome:#?}\n{}",
        stream.describe()
    );
    assert_eq!(outcome.failure, Some(FailureClass::HealthDeadline));
    assert!(
        outcome.reason.as_deref().is_some_and(|r| !r.is_empty()),
        "{outcome:#?}"
    );
    assert!(
        !outcome.changed,
        "a clean rollback leaves the host as it was"
    );
    // v3's own words: it answers its health check with 500.
    assert!(
        outcome
            .log_tail
            .iter()
            .any(|l| l.contains("/healthz") && l.contains("500")),
        "{:?}",
        outcome.log_tail
    );
    let rollback_ms = outcome.rollback_ms.context("rollback time reported")?;
    assert!(rollback_ms > 0 && rollback_ms < 60_000, "{rollback_ms}");

    let after = w.serving("web")?;
    assert_eq!(
        after.digest, v2.digest,
        "v2 serving again with the same digest"
    );
    assert_eq!(after.id, before.id, "the very v2 container is back");
    assert_eq!(after.version, "v2");
    assert_eq!(containers_of(&w.agent, "web", false)?.len(), 1);
    assert_eq!(
        journal_outcome_kind(&w.agent, &bad.order_id)?,
        "rolled-back"
    );

    let web = w.agent.service_status("web").await?;
    assert_eq!(
        (web.health, web.last_outcome),
        (Health::Healthy, Some(OutcomeKind::RolledBack))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_v4_is_detected_well_before_the_deadline() -> anyhow::Result<()> {
    let w = world()?;
    let (v2, v4) = (w.images.v(2), w.images.v(4));
    w.deploy(&w.order(v2, Duration::from_secs(30))).await?;

    let deadline = Duration::from_secs(90);
    let started = Instant::now();
    let stream = w.submit(&w.order(v4, deadline)).await?;
    let took = started.elapsed();
    let outcome = stream.outcome()?;
    assert_eq!(outcome.kind, OutcomeKind::RolledBack, "{outcome:#?}");
    assert_eq!(
        outcome.failure,
        Some(FailureClass::ContainerExited),
        "{outcome:#?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "took {took:?} against a {deadline:?} deadline"
    );
    assert!(
        outcome
            .log_tail
            .iter()
            .any(|l| l.contains("crashing at start")),
        "{:?}",
        outcome.log_tail
    );
    let s = w.serving("web")?;
    assert_eq!(
        (s.digest.as_str(), s.version.as_str()),
        (v2.digest.as_str(), "v2")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_migration_and_missing_image_change_nothing() -> anyhow::Result<()> {
    let w = world()?;
    let (v2, v5) = (w.images.v(2), w.images.v(5));
    w.deploy(&w.order(v2, Duration::from_secs(30))).await?;
    let before = w.serving("web")?;

    // 5. v5's migration fails: v2 is never stopped.
    let stream = w.submit(&w.order_with_migration(v5)).await?;
    let outcome = stream.outcome()?;
    assert_eq!(outcome.kind, OutcomeKind::MigrationFailed, "{outcome:#?}");
    assert!(!outcome.changed);
    assert!(
        outcome
            .log_tail
            .iter()
            .any(|l| l.contains("DEMO_MIGRATE_FAIL")),
        "{:?}",
        outcome.log_tail
    );
    assert!(
        !stream.phases().contains(&Phase::Switch),
        "{}",
        stream.describe()
    );
    assert_eq!(
        w.serving("web")?,
        before,
        "v2: same container, same start, still up"
    );
    assert!(w.migration_lines().is_empty(), "{:?}", w.migration_lines());

    // 6. A digest the registry does not have.
    let missing = ImageRef::new(
        w.images.repository(),
        &format!("sha256:{}", "0".repeat(63) + "1"),
    )?;
    let mut order = w.order(v2, Duration::from_secs(30));
    order.image = missing;
    order.reference = "sha256:0000001".into();
    let stream = w.submit(&order).await?;
    let outcome = stream.outcome()?;
    assert_eq!(outcome.kind, OutcomeKind::PullFailed, "{outcome:#?}");
    assert_eq!(
        outcome.failure,
        Some(FailureClass::ImageNotFound),
        "{outcome:#?}"
    );
    assert!(!outcome.changed);
    assert_eq!(w.serving("web")?, before);
    assert_eq!(
        containers_of(&w.agent, "web", true)?.len(),
        1,
        "no container was created"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_distinct_and_changes_nothing() -> anyhow::Result<()> {
    let mut w = world()?;
    let (v1, v2) = (w.images.v(1), w.images.v(2));
    let first = w.order(v1, Duration::from_secs(30));
    let first_signed = w.agent.sign(&first).await?;
    let stream = w.agent.client().await?.submit(first_signed.clone()).await?;
    ensure!(
        stream.outcome()?.kind == OutcomeKind::Succeeded,
        "{}",
        stream.describe()
    );
    let before = w.serving("web")?;
    let journal_before = w.agent.journal_ids()?;

    let stranger = TestKey::generate("stranger@elsewhere")?;
    let mut cases: Vec<(&str, proto::wire::SignedOrder, RefusalKind)> = Vec::new();
    let base = || w.order(v2, Duration::from_secs(30));
    let mut tampered = w.agent.sign(&base()).await?;
    tampered.payload = tampered.payload.replacen("\"v2\"", "\"v9\"", 1);
    cases.push(("tampered payload", tampered, RefusalKind::BadSignature));
    cases.push((
        "unknown key",
        stranger.sign(&base()).await?,
        RefusalKind::UnknownSigner,
    ));
    let mut o = base();
    o.env = "prod".into();
    cases.push((
        "wrong env",
        w.agent.sign(&o).await?,
        RefusalKind::EnvMismatch,
    ));
    let mut o = base();
    o.host = "someone-else".into();
    cases.push((
        "wrong host",
        w.agent.sign(&o).await?,
        RefusalKind::HostMismatch,
    ));
    let mut o = base();
    o.issued_at = Timestamp::now().minus(Duration::from_secs(3600));
    o.not_after = Timestamp::now().minus(Duration::from_secs(1800));
    cases.push(("expired", w.agent.sign(&o).await?, RefusalKind::Expired));
    let mut o = base();
    o.issued_at = Timestamp::now().plus(Duration::from_secs(3600));
    o.not_after = o.issued_at.plus(Duration::from_secs(600));
    cases.push((
        "not yet valid",
        w.agent.sign(&o).await?,
        RefusalKind::NotYetValid,
    ));
    let mut o = base();
    o.image = ImageRef::new("127.0.0.1:1/evil/web", v2.image_ref.digest())?;
    cases.push((
        "image not allowed",
        w.agent.sign(&o).await?,
        RefusalKind::ImageNotAllowed,
    ));
    cases.push((
        "not an order",
        w.agent.key.sign_payload("{\"hello\": 1}").await?,
        RefusalKind::Malformed,
    ));
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(1_100_000));
    cases.push((
        "oversized",
        w.agent.key.sign_payload(&huge).await?,
        RefusalKind::Oversized,
    ));

    let mut client = w.agent.client().await?;
    for (what, signed, kind) in cases {
        let stream = client.submit(signed).await?;
        let refusal = stream.refusal().with_context(|| what.to_string())?;
        assert_eq!(refusal.kind, kind, "{what}: {}", refusal.message);
        assert!(!refusal.message.is_empty(), "{what}");
        assert!(stream.events.is_empty(), "{what}: {}", stream.describe());
    }
    assert_eq!(w.serving("web")?, before, "refused orders changed nothing");
    assert_eq!(
        w.agent.journal_ids()?,
        journal_before,
        "refused orders are not journaled"
    );

    // A replayed order is refused, also after the agent restarted.
    w.agent.restart()?;
    let stream = w.agent.client().await?.submit(first_signed).await?;
    assert_eq!(stream.refusal()?.kind, RefusalKind::Replayed);
    assert_eq!(w.serving("web")?, before);

    // A second rollout while one runs: refused, naming the holder; the same rollout attaches.
    let mut running = w.order(v2, Duration::from_secs(30));
    for spec in running.services.values_mut() {
        spec.health.healthy_for = Duration::from_secs(4);
    }
    let mut holder_client = w.agent.client().await?;
    let start = holder_client
        .submit_until(w.agent.sign(&running).await?, |e| e.phase == Phase::Health)
        .await?;
    assert_eq!(start.end, JobEnd::Detached, "{}", start.describe());
    let other = w.order(v1, Duration::from_secs(30));
    let stream = w
        .agent
        .client()
        .await?
        .submit(w.agent.sign(&other).await?)
        .await?;
    let refusal = stream.refusal()?;
    assert_eq!(
        refusal.kind,
        RefusalKind::RolloutInProgress,
        "{}",
        refusal.message
    );
    let holder = refusal.holder.as_ref().context("the holder is named")?;
    assert_eq!(
        (holder.order_id.as_str(), holder.rollout_id.as_str()),
        (running.order_id.as_str(), running.rollout_id.as_str())
    );
    assert!(
        holder.signer.contains("ci@deployctl-test"),
        "{}",
        holder.signer
    );
    assert_eq!(holder.issued_by, "e2e@deployctl-test");
    assert!(holder.since <= Timestamp::now());
    assert!(
        w.agent.journal(&other.order_id).is_err(),
        "the refused order is not journaled"
    );

    let mut retry = w.order(v2, Duration::from_secs(30));
    retry.rollout_id = running.rollout_id.clone();
    let attached = w
        .agent
        .client()
        .await?
        .submit(w.agent.sign(&retry).await?)
        .await?;
    let attached_outcome = attached.outcome()?;
    assert_eq!(
        attached_outcome.order_id, running.order_id,
        "the retry follows the running job"
    );
    let own = holder_client.read_job(|_| false).await?;
    assert_eq!(own.outcome()?, attached_outcome);
    assert_eq!(attached_outcome.kind, OutcomeKind::Succeeded);
    assert_eq!(w.serving("web")?.version, "v2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_outlives_its_client_and_watch_replays_it() -> anyhow::Result<()> {
    let w = world()?;
    let (v1, v2) = (w.images.v(1), w.images.v(2));
    w.deploy(&w.order(v1, Duration::from_secs(30))).await?;

    let mut order = w.order(v2, Duration::from_secs(30));
    for spec in order.services.values_mut() {
        spec.health.healthy_for = Duration::from_secs(3);
    }
    let mut client = w.agent.client().await?;
    let seen = client
        .submit_until(w.agent.sign(&order).await?, |e| e.phase == Phase::Health)
        .await?;
    assert_eq!(seen.end, JobEnd::Detached);
    drop(client);

    let watched = w.agent.client().await?.watch(&order.order_id).await?;
    let outcome = watched.outcome()?;
    assert_eq!(
        outcome.kind,
        OutcomeKind::Succeeded,
        "{}",
        watched.describe()
    );
    assert_eq!(
        watched.events.first().map(|e| e.phase),
        Some(Phase::Accepted)
    );
    assert_eq!(
        &watched.events[..seen.events.len()],
        &seen.events[..],
        "the replay starts with what was seen"
    );
    assert!(
        watched.events.len() > seen.events.len(),
        "and goes on to the end"
    );
    let journaled = w.agent.journal(&order.order_id)?;
    assert_eq!(
        journaled["events"].as_array().map(Vec::len),
        Some(watched.events.len())
    );
    assert_eq!(w.serving("web")?.version, "v2");

    // Watching a finished order replays it from the journal.
    let again = w.agent.client().await?.watch(&order.order_id).await?;
    assert_eq!(again, watched);
    let unknown = w.agent.client().await?.watch("01nosuchorder").await?;
    assert!(matches!(unknown.end, JobEnd::Error(_)), "{unknown:?}");
    Ok(())
}

/// When to pull the plug on the agent, by what it has just announced.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// The pull is over and the next step is announced.
    AfterPull,
    /// The old container is stopped and set aside; the new one is being created.
    AfterOldStopped,
    /// The new container runs and the agent waits for its health.
    DuringHealthWait,
}

impl KillPoint {
    fn matches(self, e: &proto::wire::JobEvent) -> bool {
        match self {
            KillPoint::AfterPull => !matches!(e.phase, Phase::Accepted | Phase::Pull),
            KillPoint::AfterOldStopped => {
                e.phase == Phase::Switch && e.message.starts_with("creating")
            }
            KillPoint::DuringHealthWait => e.phase == Phase::Health,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_job_then_restart_leaves_one_healthy_version() -> anyhow::Result<()> {
    let mut w = world()?;
    let (v1, v2) = (w.images.v(1).clone(), w.images.v(2).clone());
    w.deploy(&w.order(&v1, Duration::from_secs(30))).await?;

    for point in [
        KillPoint::AfterPull,
        KillPoint::AfterOldStopped,
        KillPoint::DuringHealthWait,
    ] {
        let now = w.serving("web")?;
        let target = if now.digest == v1.digest { &v2 } else { &v1 };
        let mut order = w.order(target, Duration::from_secs(30));
        for spec in order.services.values_mut() {
            spec.health.healthy_for = Duration::from_secs(2);
        }
        let mut client = w.agent.client().await?;
        let seen = client
            .submit_until(w.agent.sign(&order).await?, |e| point.matches(e))
            .await?;
        assert_eq!(
            seen.end,
            JobEnd::Detached,
            "{point:?} never came:\n{}",
            seen.describe()
        );
        w.agent.kill9()?;
        drop(client);

        // Recovery runs before the socket is served: once it answers, it is done.
        w.agent.restart()?;
        let journal = w.agent.journal(&order.order_id)?;
        let kind = journal["outcome"]["kind"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        let recovered = journal["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["phase"] == "recover"));
        assert!(
            recovered,
            "{point:?}: the journal says what recovery did: {journal:#}"
        );
        assert!(
            journal["outcome"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{journal:#}"
        );

        let all = containers_of(&w.agent, "web", true)?;
        let up = containers_of(&w.agent, "web", false)?;
        assert_eq!(
            up.len(),
            1,
            "{point:?}: exactly one web container runs: {up:?} (all: {all:?})\njournal: {journal:#}"
        );
        let s = w.serving("web")?;
        assert!(s.running);
        assert!(
            (s.digest == v1.digest && s.version == "v1")
                || (s.digest == v2.digest && s.version == "v2"),
            "{point:?}: {s:?}"
        );
        let expected_kind = if s.digest == target.digest {
            "succeeded"
        } else {
            "rolled-back"
        };
        assert!(
            kind == expected_kind || (kind == "failed" && s.digest != target.digest),
            "{point:?}: journal outcome {kind} but {} runs\n{journal:#}",
            s.version
        );
        assert_eq!(
            journal["outcome"]["services"]["web"]["digest"],
            s.digest.as_str(),
            "{journal:#}"
        );
        eprintln!(
            "{point:?}: recovery ended {kind}, {} runs: {}",
            s.version, journal["outcome"]["reason"]
        );
        let status = w.agent.client().await?.status().await?;
        let web = status.services.iter().find(|x| x.service == "web");
        assert_eq!(
            web.map(|w| w.health),
            Some(Health::Healthy),
            "{point:?}: {web:?}"
        );
        assert!(status.running.is_empty());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_deploy_and_roll_back_together() -> anyhow::Result<()> {
    let w = world()?;
    let (v2, v3) = (w.images.v(2), w.images.v(3));
    let with_worker = |image: &DemoImage, deadline| {
        let mut order = w.order(image, deadline);
        let mut worker = order.services["web"].clone();
        worker.command = Some(vec!["/app".into(), "worker".into()]);
        order.services.insert("worker".into(), worker);
        order
    };
    let stream = w.deploy(&with_worker(v2, Duration::from_secs(30))).await?;
    assert_eq!(stream.outcome()?.services.len(), 2);
    let web = w.serving("web")?;
    let worker = w.serving("worker")?;
    assert_eq!(
        (web.digest.as_str(), worker.digest.as_str()),
        (v2.digest.as_str(), v2.digest.as_str())
    );
    let logs = w.agent.client().await?.logs(Some("worker"), 20).await?;
    assert!(
        logs.iter()
            .any(|l| l.lines.iter().any(|x| x.contains("role=worker"))),
        "{logs:?}"
    );

    let stream = w.submit(&with_worker(v3, Duration::from_secs(6))).await?;
    let outcome = stream.outcome()?;
    assert_eq!(outcome.kind, OutcomeKind::RolledBack, "{outcome:#?}");
    for (service, before) in [("web", &web), ("worker", &worker)] {
        let now = w.serving(service)?;
        assert_eq!(
            (&now.id, &now.digest),
            (&before.id, &before.digest),
            "{service} is back on its v2 container"
        );
        assert!(now.running, "{service}");
        assert_eq!(
            containers_of(&w.agent, service, false)?.len(),
            1,
            "{service}"
        );
        assert_eq!(
            outcome.services[service].digest.as_deref(),
            Some(v2.digest.as_str()),
            "{outcome:#?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_service_deploys_migrates_and_rolls_back_with_docker_compose_v1()
-> anyhow::Result<()> {
    let mut w = world()?;
    let (v1, v2, v3) = (
        w.images.v(1).clone(),
        w.images.v(2).clone(),
        w.images.v(3).clone(),
    );
    let project = unique_name("compose");
    let project_dir = w.agent.dir().join(&project);
    std::fs::create_dir_all(&project_dir)?;
    let compose_file = project_dir.join("compose.yaml");
    std::fs::write(
        &compose_file,
        format!(
            "version: \"2.4\"\nservices:\n  api:\n    image: \"{}\"\n    volumes:\n      - \"{}:/data\"\n",
            v1.pinned(),
            w.data.path().display()
        ),
    )?;
    w.agent.cleanup().compose_project(&project);
    let compose_order = |image: &DemoImage, deadline| {
        let mut order = w.order(image, deadline);
        let mut spec = order.services.remove("web").expect("web");
        spec.kind = ServiceKind::Compose;
        spec.compose_file = Some(compose_file.display().to_string());
        spec.compose_service = Some("api".into());
        spec.volumes.clear();
        order.services.insert("api".into(), spec);
        order
    };
    let api = || -> anyhow::Result<Serving> {
        let filter = format!("label=com.docker.compose.project={project}");
        let names = docker(&[
            "ps",
            "--filter",
            &filter,
            "--filter",
            "label=com.docker.compose.service=api",
            "--format",
            "{{.Names}}",
        ])?;
        let names: Vec<&str> = names.lines().filter(|l| !l.is_empty()).collect();
        ensure!(
            names.len() == 1,
            "one running api container expected: {names:?}"
        );
        serving(names[0])
    };

    // 1. Fresh.
    w.deploy(&compose_order(&v1, Duration::from_secs(30)))
        .await?;
    let s = api()?;
    assert_eq!(
        (s.digest.as_str(), s.version.as_str()),
        (v1.digest.as_str(), "v1")
    );

    // 2. v2 with the migration (compose run --rm), exactly once.
    let mut second = compose_order(&v2, Duration::from_secs(30));
    second.run_migration = true;
    second.migrate = Some(MigrationSpec {
        command: vec!["/app".into(), "migrate".into()],
        service: "api".into(),
        timeout: Duration::from_secs(60),
        image: None,
    });
    let stream = w.deploy(&second).await?;
    let lines = w.migration_lines();
    assert_eq!(
        lines.len(),
        1,
        "{lines:?}\n{}\n{}",
        stream.describe(),
        w.agent.log()
    );
    assert!(lines[0].starts_with("migrated v2 "), "{lines:?}");
    let s = api()?;
    assert_eq!(
        (s.digest.as_str(), s.version.as_str()),
        (v2.digest.as_str(), "v2")
    );

    // 3. v3 never healthy: rolled back to the same v2 digest.
    let stream = w
        .submit(&compose_order(&v3, Duration::from_secs(6)))
        .await?;
    let outcome = stream.outcome()?;
    assert_eq!(
        outcome.kind,
        OutcomeKind::RolledBack,
        "{outcome:#?}\n{}",
        stream.describe()
    );
    assert!(outcome.reason.is_some());
    let s = api()?;
    assert_eq!(
        (s.digest.as_str(), s.version.as_str()),
        (v2.digest.as_str(), "v2")
    );
    let svc = w.agent.service_status("api").await?;
    assert_eq!(svc.health, Health::Healthy);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_first_keeps_answering_under_the_network_alias() -> anyhow::Result<()> {
    let mut w = world()?;
    let (v1, v2) = (w.images.v(1).clone(), w.images.v(2).clone());
    let probe_image = netprobe_image()?;
    let network = unique_name("net");
    let probe = unique_name("probe");
    w.agent.cleanup().network(&network).container(&probe);
    let start_first = |image: &DemoImage| {
        let mut order = w.order(image, Duration::from_secs(30));
        for spec in order.services.values_mut() {
            spec.network = Some(network.clone());
            spec.strategy = Strategy::StartFirst;
        }
        order
    };
    w.deploy(&start_first(&v1)).await?;

    docker(&[
        "run",
        "-d",
        "--name",
        &probe,
        "--label",
        &format!("{}={probe}", harness::TEST_LABEL),
        "--network",
        &network,
        &probe_image,
        "web",
        "8080",
        "/version",
        "25",
    ])?;
    let probe_lines = || -> Vec<String> {
        harness::container_logs(&probe)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    wait_until(
        "the probe to reach v1 by its alias",
        Duration::from_secs(20),
        || {
            let lines = probe_lines();
            if lines
                .iter()
                .filter(|l| l.starts_with("ok ") && l.ends_with(" v1"))
                .count()
                >= 5
            {
                Ok(())
            } else {
                Err(lines.last().cloned().unwrap_or_default())
            }
        },
    )?;

    let stream = w.deploy(&start_first(&v2)).await?;
    wait_until("the probe to reach v2", Duration::from_secs(20), || {
        let lines = probe_lines();
        if lines
            .iter()
            .filter(|l| l.starts_with("ok ") && l.ends_with(" v2"))
            .count()
            >= 10
        {
            Ok(())
        } else {
            Err(lines.last().cloned().unwrap_or_default())
        }
    })?;
    docker(&["stop", "-t", "0", &probe])?;
    let lines = probe_lines();
    // A skipped address ("note") counts too: a client that tries only the first answer fails.
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("fail") || l.starts_with("note"))
        .collect();
    let slowest = lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .strip_suffix("ms")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or_default();
    eprintln!("start-first: {} probes, slowest {slowest} ms", lines.len());
    assert!(
        failed.is_empty(),
        "requests failed during the deploy: {failed:#?}\nprobe:\n{}\n{}",
        lines.join("\n"),
        stream.describe()
    );
    assert!(
        lines.len() > 40,
        "too few probes to mean anything: {}",
        lines.len()
    );
    let s = w.serving("web")?;
    assert_eq!(
        (s.digest.as_str(), s.version.as_str()),
        (v2.digest.as_str(), "v2")
    );
    assert_eq!(containers_of(&w.agent, "web", false)?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_job_finish_and_the_bridge_relays() -> anyhow::Result<()> {
    let mut w = world()?;
    let (v1, v2) = (w.images.v(1), w.images.v(2));
    w.deploy(&w.order(v1, Duration::from_secs(30))).await?;

    // The bridge: the SSH transport's far end, here run directly.
    let bridge = bridge_status(&w.agent.socket()).await?;
    assert!(bridge.contains("\"type\":\"hello\""), "{bridge}");
    assert!(bridge.contains("\"type\":\"status\""), "{bridge}");

    let mut order = w.order(v2, Duration::from_secs(30));
    for spec in order.services.values_mut() {
        spec.health.healthy_for = Duration::from_secs(3);
    }
    let mut client = w.agent.client().await?;
    client
        .submit_until(w.agent.sign(&order).await?, |e| e.phase == Phase::Health)
        .await?;
    let status = w.agent.terminate(Duration::from_secs(60))?;
    assert!(status.success(), "{status}\n{}", w.agent.log());
    let rest = client.read_job(|_| false).await?;
    assert_eq!(
        rest.outcome()?.kind,
        OutcomeKind::Succeeded,
        "{}",
        rest.describe()
    );
    assert_eq!(
        journal_outcome_kind(&w.agent, &order.order_id)?,
        "succeeded"
    );
    assert!(!w.agent.socket().exists(), "the socket is removed on exit");
    Ok(())
}

/// Runs `deploy-agent bridge`, sends hello + status through it, closes stdin, returns stdout.
async fn bridge_status(socket: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = std::process::Command::new(harness::agents::agent_binary()?)
        .arg("bridge")
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(&proto::codec::encode(&proto::codec::hello_request(
        "bridge-test",
    ))?)?;
    stdin.write_all(&proto::codec::encode(&proto::wire::Request::Status {})?)?;
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    if !out.status.success() {
        bail!("bridge failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_watch_records_transitions() -> anyhow::Result<()> {
    let w = world()?;
    w.deploy(&w.order(w.images.v(2), Duration::from_secs(30)))
        .await?;
    let container = w.agent.container_name(APP, "web");
    let health_file = w.agent.state_dir().join("health.json");
    let transitions = || -> Vec<(String, String)> {
        let book: serde_json::Value = std::fs::read_to_string(&health_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        book["transitions"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|t| t["service"] == "web")
                    .map(|t| {
                        let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                        (s("from"), s("to"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    wait_until(
        "the health book to know web healthy",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&health_file).map_err(|e| e.to_string())?;
            let book: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if book["services"]["acme/web"]["health"] == "healthy" {
                Ok(())
            } else {
                Err(text)
            }
        },
    )?;
    // Stopped behind the agent's back: the watch notices on its own (no status request).
    docker(&["stop", "-t", "1", &container])?;
    wait_until(
        "the health watch to see web stop",
        Duration::from_secs(20),
        || {
            let t = transitions();
            if t.iter()
                .any(|(from, to)| from == "healthy" && to != "healthy")
            {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    )
    .with_context(|| {
        let book = std::fs::read_to_string(&health_file).unwrap_or_default();
        format!("health.json: {book}\nagent log:\n{}", w.agent.log())
    })?;
    let web = w.agent.service_status("web").await?;
    assert_ne!(web.health, Health::Healthy, "{web:?}");

    docker(&["start", &container])?;
    wait_until(
        "the health watch to see web recover",
        Duration::from_secs(30),
        || {
            let t = transitions();
            if t.last().is_some_and(|(_, to)| to == "healthy") {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    )?;
    // Status answers may be up to a second old (the agent caches them): poll.
    let web = wait_until_async(
        "status to report web healthy",
        Duration::from_secs(5),
        || async {
            let status = w
                .agent
                .client()
                .await
                .map_err(|e| e.to_string())?
                .status()
                .await
                .map_err(|e| e.to_string())?;
            match status.services.into_iter().find(|s| s.service == "web") {
                Some(web) if web.health == Health::Healthy => Ok(web),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    assert!(
        web.since >= status_started(&w)?,
        "since is the recovery time: {web:?}"
    );
    Ok(())
}

/// When the v2 deploy of the health-watch test finished, from the journal's history.
fn status_started(w: &World) -> anyhow::Result<Timestamp> {
    let ids = w.agent.journal_ids()?;
    let id = ids.last().context("an order")?;
    let j = w.agent.journal(id)?;
    let at = j["outcome"]["finished_at"]
        .as_str()
        .context("finished_at")?;
    Ok(Timestamp::parse(at)?)
}

/// A push re-run while its first run's job still runs (a cancelled CI job, retried): the agent
/// gets an order of another rollout asking for exactly what the running job does. It follows
/// that job instead of refusing it or starting a second one, so nothing runs twice; an order for
/// another release is still refused.
#[tokio::test]
async fn an_order_for_the_release_a_running_job_deploys_follows_that_job() -> anyhow::Result<()> {
    let w = world()?;
    let (v1, v2) = (w.images.v(1), w.images.v(2));
    w.deploy(&w.order(v1, Duration::from_secs(30))).await?;

    let slow = |mut order: Order| {
        for spec in order.services.values_mut() {
            spec.health.healthy_for = Duration::from_secs(3);
        }
        order
    };
    let first = slow(w.order_with_migration(v2));
    let seen = w
        .agent
        .client()
        .await?
        .submit_until(w.agent.sign(&first).await?, |e| e.phase == Phase::Health)
        .await?;
    assert_eq!(seen.end, JobEnd::Detached);

    let other_release = w
        .submit(&slow(w.order(v1, Duration::from_secs(30))))
        .await?;
    assert_eq!(
        other_release.refusal()?.kind,
        RefusalKind::RolloutInProgress,
        "{}",
        other_release.describe()
    );

    let retry = slow(w.order_with_migration(v2));
    assert_ne!(retry.rollout_id, first.rollout_id);
    let followed = w.submit(&retry).await?;
    let outcome = followed.outcome()?;
    assert_eq!(
        outcome.kind,
        OutcomeKind::Succeeded,
        "{}",
        followed.describe()
    );
    assert_eq!(
        outcome.order_id, first.order_id,
        "the retry reports the running job's outcome"
    );
    let journal = w.agent.journal_ids()?;
    assert!(
        journal.contains(&first.order_id) && !journal.contains(&retry.order_id),
        "no second job: {journal:?}"
    );
    let migrated = w
        .migration_lines()
        .iter()
        .filter(|l| l.starts_with("migrated v2 "))
        .count();
    assert_eq!(migrated, 1, "one migration: {:?}", w.migration_lines());
    assert_eq!(w.serving("web")?.version, "v2");
    Ok(())
}

/// Under abuse the agent keeps deploying (README, "Under abuse"): with a thousand connections
/// that said hello and nothing more, and one that sent half a frame and stalled, a signed order
/// still deploys; the agent keeps no more than `max_connections` of the flood open, cuts the
/// staller off at `frame_timeout`, and its memory stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_deploys_through_a_flood_and_cuts_a_staller_off() -> anyhow::Result<()> {
    const FLOOD: usize = 1000;
    const MAX_CONNECTIONS: usize = 64;
    let frame_timeout = Duration::from_secs(2);
    // The flood's sockets live in this process; the agent inherits the limit too.
    let limit = raise_fd_limit(FLOOD as u64 + 200)?;
    let w = world_with(|setup| setup.frame_timeout = Some(frame_timeout))?;
    let pid = w.agent.pid().context("agent pid")?;
    let socket = w.agent.socket();

    let mut flood = Flood::open(&socket, FLOOD).await?;
    let mut staller = Staller::start(&socket).await?;
    let order = w.order(w.images.v(1), Duration::from_secs(60));
    let (deployed, stalled) = tokio::join!(
        w.deploy(&order),
        staller.closed_within(frame_timeout + Duration::from_secs(3)),
    );
    let stream = deployed?;
    let stalled = stalled?;
    assert_eq!(w.serving("web")?.version, "v1", "{}", stream.describe());
    assert!(
        stalled >= frame_timeout - Duration::from_millis(100),
        "the staller was closed after {stalled:?}: for room, not by the frame deadline"
    );

    // At most max_connections stay open, the deploy's own included: the rest of the flood was
    // closed as the longest idle.
    let closed = wait_until("the flood to be trimmed", Duration::from_secs(20), || {
        let closed = flood.closed();
        if closed >= FLOOD - MAX_CONNECTIONS {
            Ok(closed)
        } else {
            Err(format!("{closed} of {FLOOD} closed"))
        }
    })?;
    let rss = rss_kib(pid)?;
    println!(
        "flood of {FLOOD} (fd limit {limit}): {closed} closed for room; staller closed after \
         {stalled:?}; agent RSS {} KiB",
        rss
    );
    assert!(rss < 100 * 1024, "agent RSS {rss} KiB under the flood");
    assert_eq!(flood.len(), FLOOD);
    Ok(())
}

#[test]
fn a_bad_log_filter_is_named_and_the_agent_logs_at_its_default() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let run = |filter: &str| -> anyhow::Result<(Option<i32>, String)> {
        let out = std::process::Command::new(harness::agents::agent_binary()?)
            .args(["bridge", "--socket"])
            .arg(dir.path().join("absent.sock"))
            .env("DEPLOY_AGENT_LOG", filter)
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into(),
        ))
    };
    let (code, stderr) = run("deploy=loud")?;
    assert!(
        stderr.contains("DEPLOY_AGENT_LOG=\"deploy=loud\" is no filter")
            && stderr.contains("logging at warn"),
        "{stderr}"
    );
    // The bad filter changes nothing else: the missing socket is still the error.
    assert_eq!(code, Some(69), "{stderr}");
    assert!(stderr.contains("absent.sock"), "{stderr}");
    let (code, stderr) = run("info,deploy=debug")?;
    assert!(!stderr.contains("no filter"), "{stderr}");
    assert_eq!(code, Some(69), "{stderr}");
    Ok(())
}
