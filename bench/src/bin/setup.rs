//! How long `deployctl setup` takes a bare host (a container with its own root, sshd and nothing
//! of deployctl, as the e2e test uses) through its life: `--dry-run`, the first run from
//! nothing, a second run (`unchanged`), and `--upgrade` over another binary with no job
//! running; logged in as root, and as a sudo user where root may not log in. Prints the median
//! of each and the size of the agent binary uploaded. Not a test.
//!
//! ```text
//! cargo build --release -p deployctl -p deploy-agent
//! cargo run --release -p deployctl-bench --bin setup -- [REPETITIONS]
//! ```
//! (or the same without `--release`: the binaries are looked up next to this one).
#![forbid(unsafe_code)]

use deployctl_bench::{count_arg, median};
use std::time::{Duration, Instant};

use anyhow::ensure;
use harness::command::output_with_timeout;
use harness::hosts::DEPLOYCTL_TIMEOUT;
use harness::{BareHost, BareHostHome, Cleanup, unique_name};

/// Starts a bare host letting a login in with a public key line.
type StartHost = fn(&str) -> harness::Result<BareHost>;

/// The runs timed, in order, and the `result` each must report.
const RUNS: &[(&str, &[&str], &str)] = &[
    ("--dry-run", &["--dry-run"], "planned"),
    ("first run", &[], "changed"),
    ("second run", &[], "unchanged"),
    ("--upgrade", &["--upgrade"], "changed"),
];

fn main() -> anyhow::Result<()> {
    let reps = count_arg("REPETITIONS", 3)?;
    harness::require_prereqs()?;
    let agent = harness::agents::agent_binary()?;
    let size = std::fs::metadata(&agent)?.len();
    let shapes: [(&str, StartHost); 2] =
        [("root", BareHost::start), ("admin", BareHost::start_cloud)];
    let mut rows = Vec::new();
    for (user, start) in shapes {
        let mut times = vec![Vec::new(); RUNS.len()];
        for rep in 0..reps {
            eprintln!("bench: setup as {user}, repetition {}/{reps}", rep + 1);
            for (i, took) in one_life(user, start)?.into_iter().enumerate() {
                times[i].push(took);
            }
        }
        rows.push((user, times));
    }
    println!(
        "deployctl setup of a bare host over loopback SSH (median of {reps}; agent binary {:.1} MiB, {})",
        size as f64 / (1024.0 * 1024.0),
        agent.display()
    );
    println!("{:<8} {:<12} {:>9}", "login", "run", "time");
    for (user, times) in &rows {
        for ((name, _, _), runs) in RUNS.iter().zip(times) {
            println!("{user:<8} {name:<12} {:>8.2}s", median(runs).as_secs_f64());
        }
    }
    Ok(())
}

/// A fresh bare host through every run of [`RUNS`], logged in as `user`: the time of each.
fn one_life(user: &str, start: StartHost) -> anyhow::Result<Vec<Duration>> {
    let bare = BareHostHome::start(start)?;
    let name = unique_name("bench-bare");
    let _cleanup = Cleanup::label("deployctl.host", &name);
    std::fs::write(
        bare.path().join("deploy.toml"),
        format!(
            "app = \"bench\"\nimage = \"127.0.0.1:5000/bench/web\"\n\n[services.web]\n\
             health = {{ path = \"/healthz\", port = 8080 }}\n\n{}",
            bare.staging_table(&name)
        ),
    )?;
    let mut times = Vec::new();
    for (run, extra, want) in RUNS {
        if *run == "--upgrade" {
            bare.host.exec(
                "cp /usr/local/bin/deploy-agent /tmp/a && printf x >> /tmp/a && mv /tmp/a /usr/local/bin/deploy-agent",
            )?;
        }
        let mut cmd =
            bare.deployctl(&["setup", "--env", "staging", "--json", "--ssh-user", user])?;
        cmd.args(*extra);
        let began = Instant::now();
        let out = output_with_timeout(&mut cmd, DEPLOYCTL_TIMEOUT)?;
        times.push(began.elapsed());
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains(&format!("\"result\":\"{want}\"")),
            "setup {run} as {user}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            bare.host.logs()
        );
    }
    Ok(times)
}
