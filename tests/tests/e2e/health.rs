//! The agent's health model and `[[alerts]]` end to end (README, "The health model" and
//! "Alerts"): a real `deploy-agent` on the real engine, its event stream, and a webhook
//! receiver in this process. A container killed from outside is one `unhealthy` alert within a
//! second; an alert raised while the receiver is down, or pending across an agent restart,
//! arrives once; one whose body the receiver refuses (400) is given up without holding up the
//! next, and a receiver's Retry-After is honoured; a crash-looping release and an OOM kill are
//! named as such.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::agents::{AgentProc, AgentSetup, AlertsSetup};
use harness::webhook::{Received, url_for};
use harness::{
    DemoImage, DemoImages, Registry, WebhookReceiver, container_ip, docker, free_port, http_get,
    require_prereqs, wait_until, wait_until_async,
};
use proto::order::HealthSpec;
use proto::wire::{Health, HealthReason, Outcome, OutcomeKind, ServiceStatus};

const APP: &str = "acme";

/// A registry with the demo versions and an agent whose alerts go to `webhook`.
struct World {
    agent: AgentProc,
    images: DemoImages,
    _registry: Registry,
}

fn world(alerts: AlertsSetup) -> anyhow::Result<World> {
    require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "acme/web")?;
    let mut setup = AgentSetup::new(&[images.repository()]);
    setup.alerts.push(alerts);
    let agent = AgentProc::start(setup)?;
    Ok(World {
        agent,
        images,
        _registry: registry,
    })
}

impl World {
    /// Deploys `web` on `image`, probed on `/healthz` and healthy after `healthy_for`.
    async fn deploy(&self, image: &DemoImage, healthy_for: Duration) -> anyhow::Result<()> {
        let outcome = self
            .submit(image, healthy_for, Duration::from_secs(30))
            .await?;
        ensure!(
            outcome.kind == OutcomeKind::Succeeded,
            "deploy of {} failed: {outcome:#?}\nagent log:\n{}",
            image.version,
            self.agent.log()
        );
        Ok(())
    }

    async fn submit(
        &self,
        image: &DemoImage,
        healthy_for: Duration,
        deadline: Duration,
    ) -> anyhow::Result<Outcome> {
        let mut order = self.agent.order(APP, &image.image_ref, &image.version);
        for spec in order.services.values_mut() {
            spec.health = HealthSpec {
                path: Some("/healthz".into()),
                port: Some(8080),
                interval: Duration::from_millis(100),
                healthy_for,
                deadline,
            };
        }
        let mut client = self.agent.client().await?;
        let stream = client.submit(self.agent.sign(&order).await?).await?;
        Ok(stream.outcome()?.clone())
    }

    fn web(&self) -> String {
        self.agent.container_name(APP, "web")
    }

    async fn status_of_web(&self) -> Result<ServiceStatus, String> {
        self.agent
            .service_status("web")
            .await
            .map_err(|e| e.to_string())
    }

    fn outbox(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.agent.state_dir().join("alerts"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "json"));
        files
    }

    /// The transitions of `web` in health.json: (from, to, reason).
    fn transitions(&self) -> Vec<(String, String, String)> {
        let text =
            std::fs::read_to_string(self.agent.state_dir().join("health.json")).unwrap_or_default();
        let book: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        book["transitions"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|t| t["service"] == "web")
                    .map(|t| (s(&t["from"]), s(&t["to"]), s(&t["reason"])))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The alerts of `kind` about acme/web (or the agent, for `agent-started`).
fn alerts(r: &WebhookReceiver, kind: &str) -> Vec<Received> {
    r.received()
        .into_iter()
        .filter(|x| x.json()["kind"] == kind)
        .collect()
}

/// Watches `check` hold for all of `window` (a bounded look for something that must not
/// happen, such as a second alert).
fn holds_for(
    what: &str,
    window: Duration,
    check: impl Fn() -> Result<(), String>,
) -> anyhow::Result<()> {
    let end = Instant::now() + window;
    while Instant::now() < end {
        check().map_err(|why| anyhow::anyhow!("{what}: {why}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn exactly_one(r: &WebhookReceiver, kind: &str) -> Result<(), String> {
    match alerts(r, kind).len() {
        1 => Ok(()),
        n => Err(format!("{n} {kind} alerts: {:?}", r.received())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killed_from_outside_is_one_unhealthy_alert_within_a_second()
-> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(0)?;
    let w = world(AlertsSetup::json(&receiver.url()))?;
    w.deploy(w.images.v(2), Duration::from_secs(1)).await?;
    // The agent-started alert came through: delivery works and nothing is queued before ours.
    wait_until("the agent-started alert", Duration::from_secs(20), || {
        exactly_one(&receiver, "agent-started")
    })?;

    let killed = Instant::now();
    docker(&["kill", &w.web()])?;
    let alert = wait_until("the unhealthy alert", Duration::from_secs(1), || {
        alerts(&receiver, "unhealthy")
            .into_iter()
            .next()
            .ok_or_else(|| format!("{:?}", receiver.received()))
    })
    .with_context(|| format!("agent log:\n{}", w.agent.log()))?;
    let latency = alert.at - killed;
    eprintln!("unhealthy alert {latency:?} after docker kill was started");
    let body = alert.json();
    assert_eq!(
        (&body["app"], &body["service"], &body["from"], &body["to"]),
        (
            &"acme".into(),
            &"web".into(),
            &"healthy".into(),
            &"stopped".into()
        ),
        "{body}"
    );
    assert_eq!(
        (&body["reason"], &body["exit_code"]),
        (&"exited".into(), &137.into()),
        "{body}"
    );
    assert_eq!(
        (&body["host"], &body["env"]),
        (&w.agent.host().into(), &w.agent.env().into())
    );
    assert_eq!(
        alert.header("Idempotency-Key"),
        body["id"].as_str(),
        "the id is the key"
    );
    assert_eq!(alert.header("Content-Type"), Some("application/json"));
    holds_for("no second unhealthy alert", Duration::from_secs(3), || {
        exactly_one(&receiver, "unhealthy")
    })?;
    assert!(
        w.outbox().is_empty(),
        "delivered alerts leave the outbox: {:?}",
        w.outbox()
    );
    let web = w.status_of_web().await.map_err(anyhow::Error::msg)?;
    assert_eq!(
        (web.health, web.reason, web.exit_code),
        (Health::Stopped, Some(HealthReason::Exited), Some(137)),
        "{web:?}"
    );

    // Back: recovered once it stayed up for the settle time (10 s).
    docker(&["start", &w.web()])?;
    wait_until("the recovered alert", Duration::from_secs(30), || {
        exactly_one(&receiver, "recovered")
    })?;
    let web = w.status_of_web().await.map_err(anyhow::Error::msg)?;
    assert_eq!((web.health, web.reason), (Health::Healthy, None), "{web:?}");
    assert!(web.probe_ms.is_some(), "the HTTP probe's latency: {web:?}");
    // Started again, it is not healthy until it stayed up: stopped → unhealthy → healthy.
    let journaled = w.transitions();
    assert_eq!(
        journaled.first(),
        Some(&("healthy".into(), "stopped".into(), "exited".into())),
        "{journaled:?}"
    );
    assert_eq!(
        journaled.last().map(|t| t.1.as_str()),
        Some("healthy"),
        "{journaled:?}"
    );
    exactly_one(&receiver, "unhealthy").map_err(anyhow::Error::msg)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_raised_while_the_receiver_is_down_arrives_once_it_is_up() -> anyhow::Result<()> {
    let port = free_port()?;
    let mut setup = AlertsSetup::json(&url_for(port));
    setup.on = vec!["unhealthy".into()];
    let w = world(setup)?;
    w.deploy(w.images.v(2), Duration::from_secs(1)).await?;

    docker(&["kill", &w.web()])?;
    wait_until("the alert in the outbox", Duration::from_secs(5), || {
        if w.outbox().len() == 1 {
            Ok(())
        } else {
            Err(format!("{:?}", w.outbox()))
        }
    })?;
    // Nobody listens for 10 s: the alert stays pending, retried.
    holds_for("the alert to stay pending", Duration::from_secs(10), || {
        if w.outbox().len() == 1 {
            Ok(())
        } else {
            Err(format!("{:?}", w.outbox()))
        }
    })?;
    let tries = w
        .agent
        .log()
        .matches("alert not delivered, will retry")
        .count();
    assert!(
        tries >= 3,
        "retried with backoff: {tries} tries in 10 s\n{}",
        w.agent.log()
    );

    let receiver = WebhookReceiver::start(port)?;
    let up = Instant::now();
    wait_until(
        "the alert after the receiver came up",
        Duration::from_secs(40),
        || exactly_one(&receiver, "unhealthy"),
    )?;
    eprintln!(
        "delivered {:?} after the receiver came up ({tries} failed tries before)",
        up.elapsed()
    );
    holds_for("no second delivery", Duration::from_secs(3), || {
        exactly_one(&receiver, "unhealthy")
    })?;
    assert!(w.outbox().is_empty(), "{:?}", w.outbox());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_whose_body_the_receiver_refuses_is_given_up_and_holds_up_none_after_it()
-> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(free_port()?)?;
    receiver.answer(400);
    let w = world(AlertsSetup::json(&receiver.url()))?;
    wait_until(
        "agent-started, refused and given up",
        Duration::from_secs(10),
        || {
            exactly_one(&receiver, "agent-started")?;
            let log = w.agent.log();
            if log.contains("alert refused by the receiver (400 Bad Request")
                && w.outbox().is_empty()
            {
                Ok(())
            } else {
                Err(format!("outbox {:?}, log:\n{log}", w.outbox()))
            }
        },
    )?;

    // The next alert to the same webhook is not held up behind the refused one.
    receiver.answer(200);
    w.deploy(w.images.v(2), Duration::from_secs(1)).await?;
    docker(&["kill", &w.web()])?;
    wait_until("the unhealthy alert", Duration::from_secs(10), || {
        exactly_one(&receiver, "unhealthy")
    })?;
    holds_for(
        "the refused alert never sent again",
        Duration::from_secs(2),
        || exactly_one(&receiver, "agent-started"),
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receivers_retry_after_holds_the_next_try_back() -> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(free_port()?)?;
    receiver.answer_retry_after(429, 4);
    let mut setup = AlertsSetup::json(&receiver.url());
    setup.on = vec!["agent-started".into()];
    let w = world(setup)?;
    wait_until("the first try", Duration::from_secs(10), || {
        exactly_one(&receiver, "agent-started")
    })?;
    // The backoff alone (0.5 s doubling) would have tried twice more within 3 s.
    holds_for(
        "no try before the receiver's 4 s",
        Duration::from_secs(3),
        || exactly_one(&receiver, "agent-started"),
    )?;
    receiver.answer(200);
    wait_until(
        "the alert delivered on a later try",
        Duration::from_secs(15),
        || match (alerts(&receiver, "agent-started").len(), w.outbox().len()) {
            (2.., 0) => Ok(()),
            (n, pending) => Err(format!("{n} tries, {pending} pending")),
        },
    )
    .with_context(|| w.agent.log())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_pending_across_an_agent_restart_is_delivered_once() -> anyhow::Result<()> {
    let port = free_port()?;
    let mut w = world(AlertsSetup::json(&url_for(port)))?;
    w.deploy(w.images.v(2), Duration::from_secs(1)).await?;

    docker(&["kill", &w.web()])?;
    // Pending (agent-started and unhealthy) and the transition journaled.
    wait_until(
        "the unhealthy alert pending",
        Duration::from_secs(5),
        || {
            let pending: Vec<String> = w
                .outbox()
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .collect();
            let journaled = w.transitions().iter().any(|(_, to, _)| to == "stopped");
            if journaled && pending.iter().any(|p| p.contains("\"unhealthy\"")) {
                Ok(())
            } else {
                Err(format!("{pending:?}"))
            }
        },
    )?;
    let pending_id = w
        .outbox()
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .find(|p| p["alert"]["kind"] == "unhealthy")
        .and_then(|p| p["alert"]["id"].as_str().map(str::to_string))
        .context("the pending alert's id")?;

    w.agent.restart()?;
    let receiver = WebhookReceiver::start(port)?;
    wait_until(
        "the pending alert after the restart",
        Duration::from_secs(40),
        || {
            exactly_one(&receiver, "unhealthy")?;
            // One agent-started per start, each once.
            match alerts(&receiver, "agent-started").len() {
                2 => Ok(()),
                n => Err(format!("{n} agent-started")),
            }
        },
    )
    .with_context(|| format!("agent log:\n{}", w.agent.log()))?;
    let delivered = &alerts(&receiver, "unhealthy")[0];
    assert_eq!(delivered.json()["id"].as_str(), Some(pending_id.as_str()));
    assert_eq!(
        delivered.header("Idempotency-Key"),
        Some(pending_id.as_str())
    );
    holds_for("nothing delivered twice", Duration::from_secs(3), || {
        exactly_one(&receiver, "unhealthy")?;
        match alerts(&receiver, "agent-started").len() {
            2 => Ok(()),
            n => Err(format!("{n} agent-started")),
        }
    })?;
    assert!(w.outbox().is_empty(), "{:?}", w.outbox());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_release_is_named_a_crash_loop() -> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(0)?;
    let w = world(AlertsSetup::json(&receiver.url()))?;
    // v6 serves for 0.3 s, then exits 1, and the engine restarts it: healthy_for 0s lets it in.
    w.deploy(w.images.v(6), Duration::ZERO).await?;
    let alert = wait_until("the crash-loop alert", Duration::from_secs(60), || {
        alerts(&receiver, "crash-loop")
            .into_iter()
            .next()
            .ok_or_else(|| format!("{:?}", receiver.received()))
    })
    .with_context(|| format!("agent log:\n{}", w.agent.log()))?;
    let body = alert.json();
    assert_eq!(
        (&body["to"], &body["reason"], &body["exit_code"]),
        (&"crash-loop".into(), &"exited".into(), &1.into()),
        "{body}"
    );
    let web = wait_until_async(
        "status to say crash-loop",
        Duration::from_secs(10),
        || async {
            match w.status_of_web().await? {
                s if s.health == Health::CrashLoop => Ok(s),
                s => Err(format!("{s:?}")),
            }
        },
    )
    .await?;
    assert_eq!(web.reason, Some(HealthReason::Exited), "{web:?}");
    assert!(
        w.transitions().iter().any(|(_, to, _)| to == "crash-loop"),
        "journaled: {:?}",
        w.transitions()
    );
    // The loop goes on: still named, no second crash-loop alert.
    holds_for("one crash-loop alert", Duration::from_secs(3), || {
        exactly_one(&receiver, "crash-loop")
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_is_named_oom_killed() -> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(0)?;
    let w = world(AlertsSetup::json(&receiver.url()))?;
    w.deploy(w.images.v(2), Duration::from_secs(1)).await?;
    docker(&["update", "--memory", "8m", "--memory-swap", "8m", &w.web()])?;
    let ip = container_ip(&w.web())?;
    // The answer never comes: the kernel kills the app mid-request.
    let _ = http_get(
        &format!("http://{ip}:8080/alloc?mb=64"),
        Duration::from_secs(5),
    );
    // Under the limit the app may first stall (its probe fails: an unhealthy alert saying
    // probe-failed) before the kernel kills it; the kill is then an alert of its own.
    let alert = wait_until(
        "an unhealthy alert naming the OOM kill",
        Duration::from_secs(10),
        || {
            alerts(&receiver, "unhealthy")
                .into_iter()
                .find(|a| a.json()["reason"] == "oom-killed")
                .ok_or_else(|| format!("{:?}", receiver.received()))
        },
    )
    .with_context(|| format!("agent log:\n{}", w.agent.log()))?;
    let body = alert.json();
    assert_eq!(body["exit_code"], 137, "{body}");
    assert!(
        body["from"] == "healthy" || body["from"] == "unhealthy",
        "{body}"
    );
    // The alert is made durable before the book is saved, so the journal may trail it a little.
    wait_until("the OOM kill journaled", Duration::from_secs(5), || {
        let journaled = w.transitions();
        journaled
            .iter()
            .any(|(_, to, reason)| to == "unhealthy" && reason == "oom-killed")
            .then_some(())
            .ok_or_else(|| format!("journaled: {journaled:?}"))
    })?;
    // The engine restarts it (the limit stays, the leak is gone): recovered after settling.
    wait_until("the recovered alert", Duration::from_secs(30), || {
        exactly_one(&receiver, "recovered")
    })?;
    let unhealthy = alerts(&receiver, "unhealthy").len();
    assert!(unhealthy <= 2, "{:?}", receiver.received());
    eprintln!("{unhealthy} unhealthy alert(s) before the recovery");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_deploy_is_an_alert_and_no_health_transition() -> anyhow::Result<()> {
    let receiver = WebhookReceiver::start(0)?;
    let w = world(AlertsSetup::json(&receiver.url()))?;
    w.deploy(w.images.v(2), Duration::from_secs(1)).await?;
    // v3 never gets healthy: the deploy rolls back to v2, which stayed healthy throughout.
    let outcome = w
        .submit(
            w.images.v(3),
            Duration::from_secs(1),
            Duration::from_secs(3),
        )
        .await?;
    assert_eq!(outcome.kind, OutcomeKind::RolledBack, "{outcome:#?}");
    let alert = wait_until("the rolled-back alert", Duration::from_secs(10), || {
        alerts(&receiver, "rolled-back")
            .into_iter()
            .next()
            .ok_or_else(|| format!("{:?}", receiver.received()))
    })?;
    let body = alert.json();
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(&format!("order {} (v3): ", outcome.order_id)),
        "{body}"
    );
    assert_eq!(
        (&body["app"], &body["service"]),
        (&"acme".into(), &"web".into())
    );
    // The deploy's own stops and starts were no health transitions of the service.
    holds_for("no health alert", Duration::from_secs(3), || {
        let health: Vec<_> = ["unhealthy", "recovered", "crash-loop"]
            .iter()
            .flat_map(|k| alerts(&receiver, k))
            .collect();
        if health.is_empty() {
            Ok(())
        } else {
            Err(format!("{health:?}"))
        }
    })?;
    Ok(())
}
