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
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use harness::command::output_with_timeout;
use harness::hosts::{DEPLOYCTL_TIMEOUT, deployctl_binary, quote};
use harness::{BareHost, Cleanup, ClientKey, unique_name};

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
    let home = tempfile::tempdir()?;
    let ssh = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh)?;
    let key = ClientKey::generate(&ssh)?;
    let host = start(&key.public_line)?;
    std::fs::write(ssh.join("known_hosts"), host.known_hosts_line() + "\n")?;
    let name = unique_name("bench-bare");
    let _cleanup = Cleanup::label("deployctl.host", &name);
    std::fs::write(
        home.path().join("deploy.toml"),
        format!(
            r#"app = "bench"
image = "127.0.0.1:5000/bench/web"

[services.web]
health = {{ path = "/healthz", port = 8080 }}

[env.staging]
hosts = [{{ name = "{name}", ssh = "deploy@127.0.0.1:{port}" }}]
signing_key = {signing}
"#,
            port = host.port(),
            signing = quote(&key.private_path.display().to_string()),
        ),
    )?;
    let mut times = Vec::new();
    for (run, extra, want) in RUNS {
        if *run == "--upgrade" {
            host.exec(
                "cp /usr/local/bin/deploy-agent /tmp/a && printf x >> /tmp/a && mv /tmp/a /usr/local/bin/deploy-agent",
            )?;
        }
        let mut cmd = Command::new(deployctl_binary()?);
        cmd.args(["setup", "--env", "staging", "--json", "--ssh-user", user])
            .args(*extra)
            .current_dir(home.path())
            .env("HOME", home.path())
            .env("DEPLOYCTL_SSH_IDENTITY", &key.private_path)
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DEPLOYCTL_AGENT_BINARY");
        let began = Instant::now();
        let out = output_with_timeout(&mut cmd, DEPLOYCTL_TIMEOUT)?;
        times.push(began.elapsed());
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success() && stdout.contains(&format!("\"result\":\"{want}\"")),
            "setup {run} as {user}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            host.logs()
        );
    }
    Ok(times)
}
