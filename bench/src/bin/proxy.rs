//! What a deploy behind Caddy costs the traffic: one host (an agent behind its sshd, as `push`
//! reaches hosts) whose `web` is served through a real Caddy the agent drives, and DEPLOYS
//! deploys alternating v2/v1 (images present, health probed every 200 ms and required for 1 s)
//! while a probe GETs `/version` through Caddy 100 times a second, each on a new connection.
//! Prints, per deploy, the requests sent during it and how many failed, and the time from the
//! agent's "is healthy" event to its "route … switched to" event; then the totals. Not a test.
//!
//! ```text
//! cargo build --release -p deployctl -p deploy-agent
//! cargo run --release -p deployctl-bench --bin proxy -- [DEPLOYS]
//! ```
//! (or the same without `--release`: the binaries are looked up next to this one).
#![forbid(unsafe_code)]

use deployctl_bench::{count_arg, median};
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::caddy::{Caddy, free_listen_addr};
use harness::hosts::{EnvPlan, Fleet, quote};
use harness::{DemoImages, Probe, Registry};

const APP: &str = "bench";
const ENV: &str = "bench";
/// Requests a second through Caddy.
const RATE: u32 = 100;

/// One deploy as the bench saw it.
#[derive(Debug)]
struct Deploy {
    version: String,
    /// The push's wall time.
    took: Duration,
    /// Probe time ([`Probe::elapsed`]) when the push started and ended.
    window: (Duration, Duration),
    /// From the "is healthy" line to the "route … switched to" line, as this process read them:
    /// the events' own timestamps have one-second precision.
    healthy_to_switch: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let deploys = count_arg("DEPLOYS", 10)?;
    harness::require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "bench/web")?;
    // "Images present on the host": it shares this engine.
    for n in [1, 2] {
        harness::images::pull(&images.v(n).pinned())?;
    }
    let caddy = Caddy::start()?;
    let allowed = format!("{}/bench/*", registry.addr());
    let proxies = format!("proxies = [{}]\n", quote(&caddy.admin_addr()));
    let fleet = Fleet::start(&[EnvPlan::new(ENV, 1)], &[&allowed], |_, _, setup| {
        setup.policy.push_str(&proxies)
    })?;
    let listen = free_listen_addr()?;
    fleet.write_config(&format!(
        "app = \"{APP}\"\nimage = {}\n\n[services.web]\nhealth = {{ path = \"/healthz\", port = 8080, interval = \"200ms\", healthy_for = \"1s\", deadline = \"30s\" }}\nproxy = {{ caddy = {}, listen = [{}], drain = \"10s\" }}\n",
        quote(images.repository()),
        quote(&caddy.admin_addr()),
        quote(&listen),
    ))?;
    fleet.deployctl(&["push", "v1", "--env", ENV])?.expect(0)?;

    let probe = Probe::start(&format!("http://{listen}/version"), RATE);
    let mut done = Vec::new();
    for n in 0..deploys {
        let version = if n % 2 == 0 { 2 } else { 1 };
        eprintln!("bench: deploy {}/{deploys}: v{version}", n + 1);
        let from = probe.elapsed();
        let (took, healthy_to_switch) = push(&fleet, &images.v(version).git_sha)?;
        done.push(Deploy {
            version: format!("v{version}"),
            took,
            window: (from, probe.elapsed()),
            healthy_to_switch,
        });
    }
    let report = probe.stop();

    println!(
        "deploys behind Caddy: {deploys} pushes alternating v2/v1 to one host, {RATE} req/s \
         through Caddy (a new connection each)"
    );
    println!(
        "{:<7} {:<8} {:>9} {:>9} {:>7} {:>16}",
        "deploy", "version", "push", "requests", "failed", "healthy→switch"
    );
    for (n, d) in done.iter().enumerate() {
        let during = report.window(d.window.0, d.window.1);
        println!(
            "{:<7} {:<8} {:>9} {:>9} {:>7} {:>16}",
            n + 1,
            d.version,
            ms(d.took),
            during.total,
            during.failed,
            ms(d.healthy_to_switch)
        );
    }
    let switches: Vec<Duration> = done.iter().map(|d| d.healthy_to_switch).collect();
    println!(
        "total: {} requests, {} failed; healthy→switch median {}, max {}",
        report.total,
        report.failed,
        ms(median(&switches)),
        ms(switches.iter().max().copied().unwrap_or_default())
    );
    if !report.examples.is_empty() {
        println!("failures, e.g.: {}", report.examples.join("; "));
    }
    println!("versions seen in turn: {}", report.versions().join(" → "));
    let overlap = harness::probe::RELOAD_OVERLAP;
    println!(
        "replies of the replaced version within {} ms of a switch (Caddy's reload overlap): {}",
        overlap.as_millis(),
        report.reload_blips(overlap)
    );
    Ok(())
}

/// `deployctl --json push REF`: its wall time, and the time between the agent's "is healthy"
/// and "route … switched to" events as their lines arrived.
fn push(fleet: &Fleet, reference: &str) -> anyhow::Result<(Duration, Duration)> {
    let switched = format!("route deployctl-{APP}-{ENV}-web switched to");
    let started = Instant::now();
    let mut child = fleet
        .command(&["--json", "push", reference, "--env", ENV])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running deployctl push")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (mut healthy_at, mut switched_at) = (None, None);
    let mut lines = Vec::new();
    for line in BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let line = line?;
        let arrived = Instant::now();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["event"] == "job"
            && let Some(message) = v["job"]["message"].as_str()
        {
            if message.contains(" is healthy (") {
                healthy_at.get_or_insert(arrived);
            } else if message.contains(&switched) {
                switched_at.get_or_insert(arrived);
            }
        }
        lines.push(line);
    }
    let status = child.wait()?;
    let took = started.elapsed();
    let stderr = stderr.join().unwrap_or_default();
    ensure!(
        status.success(),
        "push {reference} failed ({status}):\n{}\n{stderr}",
        lines.join("\n")
    );
    let (Some(healthy), Some(switched_at)) = (healthy_at, switched_at) else {
        anyhow::bail!(
            "push {reference}: no \"is healthy\" or no \"{switched}\" event:\n{}",
            lines.join("\n")
        );
    };
    Ok((took, switched_at.saturating_duration_since(healthy)))
}
