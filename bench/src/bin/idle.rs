//! What an idle agent costs: one real agent watching 20 services (the demo app deployed as 20
//! services in one order), then left alone: its resident memory (VmRSS, split into heap and
//! mapped files, from /proc/<pid>/status) and CPU (utime + stime from /proc/<pid>/stat) over the
//! idle window, with the production defaults — health probed every 10 s and, unless
//! `--no-metrics`, `[metrics] textfile` rewritten every 15 s, and the `Environment=` of the
//! systemd unit. Not a test.
//!
//! ```text
//! cargo build --release -p deploy-agent
//! cargo run --release -p deployctl-bench --bin idle -- [IDLE_SECONDS] [--no-metrics]
//! ```
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::agents::{AgentProc, AgentSetup};
use harness::{DemoImages, Registry};
use proto::order::HealthSpec;
use proto::wire::{Health, OutcomeKind};

const SERVICES: usize = 20;

/// The unit hosts run the agent with: its `Environment=` lines are the bench's too.
const UNIT: &str = include_str!("../../../agent/deploy-agent.service");

fn unit_environment() -> Vec<(String, String)> {
    UNIT.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment=")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Resident memory in KiB, as /proc/<pid>/status reports it.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    peak: u64,
    threads: u64,
}

fn memory(pid: u32) -> anyhow::Result<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: field("VmRSS")?,
        anon: field("RssAnon")?,
        file: field("RssFile")?,
        peak: field("VmHWM")?,
        threads: field("Threads")?,
    })
}

/// utime + stime of the process, in clock ticks.
/// Resident KiB per mapped file (anonymous memory left out), largest first, from
/// /proc/<pid>/smaps: what the "mapped files" part of RSS is made of.
fn rss_by_file(pid: u32) -> anyhow::Result<Vec<(String, u64)>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut by_file: std::collections::BTreeMap<String, u64> = Default::default();
    let mut current: Option<String> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // A mapping's header: address range, perms, offset, device, inode, [path].
            current = words
                .nth(4)
                .filter(|p| p.starts_with('/'))
                .map(str::to_string);
        } else if first == "Rss:"
            && let Some(file) = &current
        {
            *by_file.entry(file.clone()).or_default() += words
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let mut files: Vec<(String, u64)> = by_file.into_iter().filter(|(_, k)| *k > 0).collect();
    files.sort_by_key(|(_, k)| std::cmp::Reverse(*k));
    Ok(files)
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after its closing parenthesis start at 3.
    let rest = stat
        .rsplit_once(')')
        .context("no ')' in /proc/<pid>/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {n} of /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

fn clock_ticks_per_second() -> anyhow::Result<u64> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK")
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let with_metrics = !args.iter().any(|a| a == "--no-metrics");
    let idle_secs: u64 = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(|a| a.parse())
        .transpose()
        .context("IDLE_SECONDS must be a number")?
        .unwrap_or(30);
    harness::require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "bench/idle")?;
    let textfile_dir = tempfile::Builder::new()
        .prefix("deployctl-idle-")
        .tempdir()?;
    let mut setup = AgentSetup::new(&[images.repository()]);
    setup.env_vars = unit_environment();
    // The production default (agent.toml's health_interval); the harness's is 1 s.
    setup.health_interval = Duration::from_secs(10);
    if with_metrics {
        setup.metrics = Some(format!(
            "textfile = {:?}",
            textfile_dir
                .path()
                .join("deploy_agent.prom")
                .display()
                .to_string()
        ));
    }
    let agent = AgentProc::start(setup)?;
    let pid = agent.pid().context("agent pid")?;
    let fresh = memory(pid)?;

    let v1 = images.v(1);
    harness::images::pull(&v1.pinned())?;
    let mut order = agent.order("bench", &v1.image_ref, &v1.version);
    let spec = order
        .services
        .remove("web")
        .context("the harness's order has web")?;
    for n in 0..SERVICES {
        let mut s = spec.clone();
        s.health = HealthSpec {
            path: Some("/healthz".into()),
            port: Some(8080),
            interval: Duration::from_millis(250),
            healthy_for: Duration::from_secs(1),
            deadline: Duration::from_secs(120),
        };
        order.services.insert(format!("web{n:02}"), s);
    }
    let started = Instant::now();
    let stream = agent
        .client()
        .await?
        .submit(agent.sign(&order).await?)
        .await?;
    ensure!(
        stream.outcome()?.kind == OutcomeKind::Succeeded,
        "deploy of {SERVICES} services: {}",
        stream.describe()
    );
    let deployed_in = started.elapsed();
    let status = agent.client().await?.status().await?;
    let healthy = status
        .services
        .iter()
        .filter(|s| s.health == Health::Healthy)
        .count();
    ensure!(
        healthy == SERVICES,
        "{healthy} of {SERVICES} services healthy"
    );
    let after_deploy = memory(pid)?;

    // Let the deploy's own work (and one health round) settle before the window opens.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let tck = clock_ticks_per_second()?;
    let (t0, cpu0, mem0) = (Instant::now(), cpu_ticks(pid)?, memory(pid)?);
    let mut max_rss = mem0.rss;
    while t0.elapsed() < Duration::from_secs(idle_secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        max_rss = max_rss.max(memory(pid)?.rss);
    }
    let (wall, cpu1, mem1) = (t0.elapsed(), cpu_ticks(pid)?, memory(pid)?);
    let cpu_secs = (cpu1 - cpu0) as f64 / tck as f64;

    println!(
        "deploy-agent idle, {SERVICES} services watched (health every 10s{})",
        if with_metrics {
            ", [metrics] textfile every 15s"
        } else {
            ", no [metrics]"
        }
    );
    let env: Vec<String> = unit_environment()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("  environment from deploy-agent.service: {}", env.join(" "));
    println!(
        "  deploy of {SERVICES} services: {:.1} s",
        deployed_in.as_secs_f64()
    );
    println!(
        "  RSS just started {} · right after the deploy {} · peak so far (VmHWM) {}",
        mib(fresh.rss),
        mib(after_deploy.rss),
        mib(mem1.peak)
    );
    println!(
        "  idle {:.0} s: RSS {} → {} (max {}), of which heap/anon {} and mapped files {} at the end; {} threads",
        wall.as_secs_f64(),
        mib(mem0.rss),
        mib(mem1.rss),
        mib(max_rss),
        mib(mem1.anon),
        mib(mem1.file),
        mem1.threads
    );
    let files: Vec<String> = rss_by_file(pid)?
        .into_iter()
        .take(4)
        .map(|(path, kib)| format!("{path} {}", mib(kib)))
        .collect();
    println!("  mapped files resident: {}", files.join(", "));
    let binary = harness::agents::agent_binary()?;
    println!(
        "  {} is {} on disk (its code and data pages are the mapped files)",
        binary.display(),
        mib(std::fs::metadata(&binary)?.len() / 1024)
    );
    println!(
        "  idle CPU: {:.2} s over {:.0} s = {:.2} % of one core",
        cpu_secs,
        wall.as_secs_f64(),
        100.0 * cpu_secs / wall.as_secs_f64()
    );
    Ok(())
}
