//! What a flood on the agent's socket costs a deploy: the wall time of `deployctl push` to one
//! host over OpenSSH (v1 ↔ v2, images present, health probed every 200 ms and required for
//! 1 s), without load, with a flood already there when the push connects, and with a flood
//! arriving while the push's job runs. A flood is 1,000 connections that say `hello` and
//! nothing more plus one that sends half a frame and stalls (`harness::flood`), opened by this
//! process on the agent's socket. Prints the medians, their ratio to the unloaded push, and the
//! agent's resident memory under load. Not a test.
//!
//! ```text
//! cargo build --release -p deployctl -p deploy-agent
//! cargo run --release -p deployctl-bench --bin flood -- [ROUNDS]
//! ```
//! (or the same without `--release`: the binaries are looked up next to this one).
#![forbid(unsafe_code)]

use deployctl_bench::{count_arg, median};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::agents::AgentProc;
use harness::flood::{Flood, Staller, raise_fd_limit, rss_kib};
use harness::hosts::{EnvPlan, Fleet, quote};
use harness::{DemoImages, Registry, wait_until};

const FLOOD: usize = 1000;

/// When the flood comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Load {
    None,
    /// Opened before the push connects.
    Before,
    /// Opened once the agent has accepted the push's order, while its job runs.
    During,
}

#[derive(Debug, Default)]
struct Figures {
    times: Vec<Duration>,
    /// Highest agent RSS seen at the end of a push, KiB.
    rss: u64,
    /// Flood connections the agent had closed by the end of a push (for room), per push.
    closed: Vec<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds = count_arg("ROUNDS", 5)?;
    let fd_limit = raise_fd_limit(FLOOD as u64 + 200)?;
    harness::require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "bench/web")?;
    for n in [1, 2] {
        harness::images::pull(&images.v(n).pinned())?;
    }
    let allowed = format!("{}/bench/*", registry.addr());
    let fleet = Fleet::start(&[EnvPlan::new("bench", 1)], &[&allowed], |_, _, _| {})?;
    fleet.write_config(&format!(
        "app = \"bench\"\nimage = {}\n\n[services.web]\nhealth = {{ path = \"/healthz\", port = 8080, interval = \"200ms\", healthy_for = \"1s\", deadline = \"30s\" }}\n",
        quote(images.repository()),
    ))?;
    let agent = &fleet.hosts("bench")[0].agent;
    let pid = agent.pid().context("agent pid")?;
    fleet
        .deployctl(&["push", "v1", "--env", "bench"])?
        .expect(0)?;
    let rss_before = rss_kib(pid)?;

    let mut figures = [
        (Load::None, Figures::default()),
        (Load::Before, Figures::default()),
        (Load::During, Figures::default()),
    ];
    let mut next = 2;
    for round in 1..=rounds {
        for (load, f) in &mut figures {
            let version = &images.v(next).git_sha;
            next = 3 - next;
            let (took, closed) = timed_push(&fleet, agent, version, *load).await?;
            eprintln!("bench: round {round}/{rounds}, load {load:?}: push {took:.2?}");
            f.times.push(took);
            if *load != Load::None {
                f.rss = f.rss.max(rss_kib(pid)?);
                f.closed.push(closed);
            }
        }
    }

    let base = median(&figures[0].1.times);
    println!(
        "deployctl push to 1 host over ssh, median of {rounds}; flood = {FLOOD} idle connections + 1 \
         half-frame staller (fd limit {fd_limit})"
    );
    println!(
        "{:<28} {:>9} {:>7} {:>14} {:>22}",
        "load", "push", "ratio", "agent RSS", "flood closed for room"
    );
    for (load, f) in &figures {
        let m = median(&f.times);
        let what = match load {
            Load::None => "none",
            Load::Before => "flood before the push",
            Load::During => "flood while the job runs",
        };
        let rss = if *load == Load::None {
            format!("{rss_before} KiB")
        } else {
            format!("{} KiB", f.rss)
        };
        let closed = f
            .closed
            .iter()
            .min()
            .map(|c| format!("≥ {c} of {FLOOD}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{what:<28} {:>8.2}s {:>6.2}x {rss:>14} {closed:>22}",
            m.as_secs_f64(),
            m.as_secs_f64() / base.as_secs_f64().max(1e-9),
        );
    }
    Ok(())
}

/// One `deployctl push` of `version` under `load`; its wall time and how many flood
/// connections the agent had closed by its end.
async fn timed_push(
    fleet: &Fleet,
    agent: &AgentProc,
    version: &str,
    load: Load,
) -> anyhow::Result<(Duration, usize)> {
    let socket = agent.socket();
    let mut flood = None;
    if load == Load::Before {
        flood = Some(open_flood(&socket).await?);
    }
    let orders = agent.journal_ids()?.len();
    let mut cmd = fleet.command(&["push", version, "--env", "bench"]);
    let started = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting deployctl push")?;
    if load == Load::During {
        wait_until(
            "the push's order to be accepted",
            Duration::from_secs(60),
            || match agent.journal_ids() {
                Ok(ids) if ids.len() > orders => Ok(()),
                Ok(_) => Err("not yet".into()),
                Err(e) => Err(e.to_string()),
            },
        )?;
        flood = Some(open_flood(&socket).await?);
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "push {version} under {load:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let closed = flood.as_mut().map_or(0, |(f, _)| f.closed());
    Ok((took, closed))
}

async fn open_flood(socket: &Path) -> anyhow::Result<(Flood, Staller)> {
    let flood = Flood::open(socket, FLOOD).await?;
    let staller = Staller::start(socket).await?;
    Ok((flood, staller))
}
