//! How long `deployctl status` takes across many hosts: N real agents (100 by default) on local
//! sockets, one env in a deploy.toml listing each as `{ name, socket }`, and the wall time of
//! `deployctl status --env bench --json` over them (median of 5 runs; every host must answer).
//! The agents have no containers: each answers hello and status, whose host health asks the
//! engine for its version and info — here the one engine all the agents share, so the bench
//! also times N such pairs of requests sent straight to it, for the share of the figure that
//! is this machine's engine rather than deployctl or the agents. Runs are 1.5 s apart so no
//! agent answers from its one-second status cache. Not a test.
//!
//! ```text
//! cargo build --release -p deployctl -p deploy-agent
//! cargo run --release -p deployctl-bench --bin status100 -- [AGENTS] [RUNS]
//! ```
#![forbid(unsafe_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::agents::{AgentProc, AgentSetup};
use harness::hosts::{deployctl_binary, quote};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Agents started at once (each start waits for its hello).
const START_BATCH: usize = 10;
/// Longer than the agent's status cache (`STATUS_TTL`, 1 s).
const PAUSE: Duration = Duration::from_millis(1500);

fn median(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    times.sort();
    let at = |i: usize| times.get(i).copied().unwrap_or_default();
    (
        at(times.len() / 2),
        at(0),
        at(times.len().saturating_sub(1)),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The engine's socket, as the agents find it (`DOCKER_HOST=unix://…` or the default).
fn docker_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

async fn engine_get(socket: &str, path: &str) -> anyhow::Result<()> {
    let mut s = tokio::net::UnixStream::connect(socket).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())
        .await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    ensure!(
        reply.get(8..13) == Some(b" 200 ".as_slice()),
        "GET {path}: {}",
        String::from_utf8_lossy(reply.get(..80).unwrap_or(&reply))
    );
    Ok(())
}

/// `n` concurrent `GET /version` + `GET /info` to the engine: what `n` agents' host health
/// asks of it at once.
fn engine_alone(n: usize) -> anyhow::Result<Duration> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let socket = docker_socket();
        let started = Instant::now();
        let asks: Vec<_> = (0..n)
            .map(|_| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    engine_get(&socket, "/version").await?;
                    engine_get(&socket, "/info").await
                })
            })
            .collect();
        for ask in asks {
            ask.await??;
        }
        Ok(started.elapsed())
    })
}

fn arg(n: usize, default: usize) -> anyhow::Result<usize> {
    Ok(std::env::args()
        .nth(n)
        .map(|a| a.parse())
        .transpose()
        .context("AGENTS and RUNS are numbers")?
        .unwrap_or(default)
        .max(1))
}

fn start_agents(n: usize) -> anyhow::Result<Vec<AgentProc>> {
    let mut agents = Vec::with_capacity(n);
    while agents.len() < n {
        let batch = START_BATCH.min(n - agents.len());
        let started: Vec<harness::Result<AgentProc>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..batch)
                .map(|_| {
                    s.spawn(|| {
                        let mut setup = AgentSetup::new(&["127.0.0.1:5000/bench/*"]);
                        setup.env = "bench".into();
                        // Production's default; nothing is deployed, so it probes nothing.
                        setup.health_interval = Duration::from_secs(10);
                        AgentProc::start(setup)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(harness::Error::Unexpected("a start thread panicked".into()))
                    })
                })
                .collect()
        });
        for a in started {
            agents.push(a?);
        }
    }
    Ok(agents)
}

fn main() -> anyhow::Result<()> {
    let (n, runs) = (arg(1, 100)?, arg(2, 5)?);
    harness::require_prereqs()?;
    let started = Instant::now();
    let agents = start_agents(n)?;
    println!(
        "{n} agents started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::Builder::new()
        .prefix("deployctl-status100-")
        .tempdir()?;
    let hosts: Vec<String> = agents
        .iter()
        .map(|a| {
            format!(
                "  {{ name = {}, socket = {} }},",
                quote(a.host()),
                quote(&a.socket().display().to_string())
            )
        })
        .collect();
    let config = dir.path().join("deploy.toml");
    std::fs::write(
        &config,
        format!(
            "app = \"bench\"\nimage = \"127.0.0.1:5000/bench/web\"\n\n[services.web]\n\n\
             [env.bench]\nhosts = [\n{}\n]\n",
            hosts.join("\n")
        ),
    )?;
    let deployctl = deployctl_binary()?;
    let mut times = Vec::new();
    for run in 1..=runs {
        std::thread::sleep(PAUSE);
        let t = Instant::now();
        let out = Command::new(&deployctl)
            .args(["--config"])
            .arg(&config)
            .args(["status", "--env", "bench", "--json"])
            .env("HOME", dir.path())
            .output()?;
        let elapsed = t.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let up = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["event"] == "host_status" && v["reachable"] == true)
            .count();
        ensure!(
            up == n,
            "run {run}: {up} of {n} hosts answered (exit {:?}):\n{stdout}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "  run {run}: {:.0} ms (exit {:?}: nothing is deployed, so the env is not healthy)",
            elapsed.as_secs_f64() * 1000.0,
            out.status.code()
        );
        times.push(elapsed);
    }
    let mut engine = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(PAUSE);
        engine.push(engine_alone(n)?);
    }
    let (status, status_min, status_max) = median(times);
    let (engine, engine_min, engine_max) = median(engine);
    println!(
        "deployctl status over {n} local agents: median {} of {runs} runs (min {}, max {})",
        ms(status),
        ms(status_min),
        ms(status_max)
    );
    println!(
        "  the shared engine alone: {n} concurrent version + info requests straight to it take \
         median {} (min {}, max {})",
        ms(engine),
        ms(engine_min),
        ms(engine_max)
    );
    Ok(())
}
