//! What one agent costs on this machine, with the demo app: the time from `submit` to healthy
//! for a v1 → v2 deploy (image already present), the time a rollback takes after a failed
//! health check (v3 never gets healthy), and the agent's resident memory when idle. Not a test.
//!
//! ```text
//! cargo build --release -p deploy-agent
//! cargo run --release -p deployctl-bench --bin agent -- [ROUNDS]
//! ```
//! (or the same without `--release`: `deploy-agent` is looked up next to this binary).
#![forbid(unsafe_code)]

use deployctl_bench::{count_arg, median};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::agents::{AgentProc, AgentSetup, JobStream};
use harness::{DemoImage, DemoImages, Registry};
use proto::Order;
use proto::order::HealthSpec;
use proto::wire::{OutcomeKind, Phase};

/// The health settings of deploy.toml's example: probe every 250 ms, healthy once it held 2 s.
fn health(deadline: Duration) -> HealthSpec {
    HealthSpec {
        path: Some("/healthz".into()),
        port: Some(8080),
        interval: Duration::from_millis(250),
        healthy_for: Duration::from_secs(2),
        deadline,
    }
}

fn order(agent: &AgentProc, image: &DemoImage, deadline: Duration) -> Order {
    let mut order = agent.order("bench", &image.image_ref, &image.version);
    for spec in order.services.values_mut() {
        spec.health = health(deadline);
    }
    order
}

/// Submits and records when each event arrived, relative to the submit.
async fn timed_submit(
    agent: &AgentProc,
    order: &Order,
) -> anyhow::Result<(JobStream, Vec<Duration>, Duration)> {
    let signed = agent.sign(order).await?;
    let mut client = agent.client().await?;
    let mut arrivals = Vec::new();
    let started = Instant::now();
    let stream = client
        .submit_until(signed, |_| {
            arrivals.push(started.elapsed());
            false
        })
        .await?;
    Ok((stream, arrivals, started.elapsed()))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds = count_arg("ROUNDS", 3)?;
    harness::require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "bench/web")?;
    let mut setup = AgentSetup::new(&[images.repository()]);
    setup.health_interval = Duration::from_secs(10);
    let agent = AgentProc::start(setup)?;
    let pid = agent.pid().context("agent pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_fresh = rss_kib(pid)?;
    let (v1, v2, v3) = (images.v(1), images.v(2), images.v(3));
    // "Image present": both versions are pulled before anything is timed.
    harness::images::pull(&v1.pinned())?;
    harness::images::pull(&v2.pinned())?;

    let mut to_healthy = Vec::new();
    let mut to_outcome = Vec::new();
    for round in 1..=rounds {
        let (stream, _, _) =
            timed_submit(&agent, &order(&agent, v1, Duration::from_secs(60))).await?;
        ensure!(
            stream.outcome()?.kind == OutcomeKind::Succeeded,
            "v1: {}",
            stream.describe()
        );
        let (stream, arrivals, total) =
            timed_submit(&agent, &order(&agent, v2, Duration::from_secs(60))).await?;
        ensure!(
            stream.outcome()?.kind == OutcomeKind::Succeeded,
            "v2: {}",
            stream.describe()
        );
        let healthy_at = stream
            .events
            .iter()
            .zip(&arrivals)
            .find(|(e, _)| e.phase == Phase::Health && e.message.contains("is healthy"))
            .map(|(_, t)| *t)
            .context("no 'is healthy' event")?;
        println!(
            "round {round}: v1 → v2 submit → healthy {} · submit → outcome {}",
            ms(healthy_at),
            ms(total)
        );
        to_healthy.push(healthy_at);
        to_outcome.push(total);
    }

    // A failed health check: v3 serves but never gets healthy; the deadline decides.
    let deadline = Duration::from_secs(10);
    let (stream, arrivals, total) = timed_submit(&agent, &order(&agent, v3, deadline)).await?;
    let outcome = stream.outcome()?;
    ensure!(
        outcome.kind == OutcomeKind::RolledBack,
        "v3: {outcome:#?}\n{}",
        stream.describe()
    );
    let first_rollback = stream
        .events
        .iter()
        .zip(&arrivals)
        .find(|(e, _)| e.phase == Phase::Rollback)
        .map(|(_, t)| *t)
        .context("no rollback event")?;
    let back_healthy = stream
        .events
        .iter()
        .zip(&arrivals)
        .rev()
        .find(|(e, _)| e.phase == Phase::Health && e.message.contains("healthy again"))
        .map(|(_, t)| *t)
        .context("no 'healthy again' event")?;

    // Idle: nothing runs but the health watch.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = rss_kib(pid)?;

    println!();
    println!("deploy-agent bench ({rounds} rounds, health: every 250ms, healthy for 2s)");
    println!(
        "  v1 → v2, image present: submit → healthy   median {}  (submit → outcome median {})",
        ms(median(&to_healthy)),
        ms(median(&to_outcome))
    );
    println!(
        "  v3 never healthy, deadline {}: rollback (first rollback step → v2 healthy again) {} · \
         rollback_ms reported {} · submit → outcome {}",
        ms(deadline),
        ms(back_healthy.saturating_sub(first_rollback)),
        outcome
            .rollback_ms
            .map(|m| format!("{m} ms"))
            .unwrap_or_else(|| "-".into()),
        ms(total)
    );
    println!("  agent RSS: {rss_fresh} KiB just started, {rss_idle} KiB idle after the deploys");
    Ok(())
}
