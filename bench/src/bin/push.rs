//! How much deployctl costs over doing it by hand, for 1 and 3 hosts: the wall time of `push`
//! (v1 → v2 with its migration, images already on the hosts), `rollback` (back to v1) and
//! `status`, next to the same steps done by a plain shell script of `ssh host docker …`
//! commands (pull by digest, run the migration on the first host, stop, run, poll health until
//! it holds for 1 s), over the same kind of OpenSSH hosts. Prints the figures and our overhead
//! as a ratio. Not a test.
//!
//! ```text
//! cargo build --release -p deployctl -p deploy-agent
//! cargo run --release -p deployctl-bench --bin push -- [REPETITIONS]
//! ```
//! (or the same without `--release`: the binaries are looked up next to this one).
#![forbid(unsafe_code)]

use deployctl_bench::{count_arg, median};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use harness::hosts::{EnvPlan, Fleet, quote};
use harness::{Cleanup, ClientKey, DemoImages, Registry, Sshd, TEST_LABEL, unique_name};

/// Health settings shared by both sides: probe every 200 ms, healthy once it held for 1 s.
const INTERVAL: &str = "200ms";
const HEALTHY_FOR: &str = "1s";

#[derive(Debug, Default, Clone)]
struct Timings {
    push: Vec<Duration>,
    rollback: Vec<Duration>,
    status: Vec<Duration>,
}

impl Timings {
    fn add(&mut self, (push, rollback, status): (Duration, Duration, Duration)) {
        self.push.push(push);
        self.rollback.push(rollback);
        self.status.push(status);
    }
}

fn main() -> anyhow::Result<()> {
    let reps = count_arg("REPETITIONS", 3)?;
    harness::require_prereqs()?;
    let registry = Registry::start()?;
    let images = DemoImages::publish(&registry, "bench/web")?;
    // "Images present on hosts": every host here shares this engine.
    for n in [1, 2] {
        harness::images::pull(&images.v(n).pinned())?;
    }
    let mut rows = Vec::new();
    for hosts in [1, 3] {
        let (mut ours, mut script) = (Timings::default(), Timings::default());
        for rep in 0..reps {
            eprintln!("bench: {hosts} host(s), repetition {}/{reps}", rep + 1);
            ours.add(with_deployctl(&registry, &images, hosts)?);
            script.add(with_script(&images, hosts)?);
        }
        rows.push((hosts, ours, script));
    }
    println!(
        "deployctl vs a plain `ssh host docker …` script (median of {reps}, images present on the hosts)"
    );
    println!(
        "{:<6} {:<10} {:>11} {:>11} {:>7}",
        "hosts", "step", "deployctl", "script", "ratio"
    );
    for (hosts, ours, script) in &rows {
        for (step, a, b) in [
            ("push", &ours.push, &script.push),
            ("rollback", &ours.rollback, &script.rollback),
            ("status", &ours.status, &script.status),
        ] {
            let (a, b) = (median(a), median(b));
            println!(
                "{hosts:<6} {step:<10} {:>10.2}s {:>10.2}s {:>6.2}x",
                a.as_secs_f64(),
                b.as_secs_f64(),
                a.as_secs_f64() / b.as_secs_f64().max(1e-9)
            );
        }
    }
    Ok(())
}

fn timed(what: &str, mut cmd: Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// push v2, rollback, status with deployctl on a fresh fleet that already runs v1.
fn with_deployctl(
    registry: &Registry,
    images: &DemoImages,
    hosts: usize,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let allowed = format!("{}/bench/*", registry.addr());
    let fleet = Fleet::start(
        &[EnvPlan::new("bench", hosts).max_parallel(hosts)],
        &[&allowed],
        |_, _, _| {},
    )?;
    let data = fleet.home().join("data");
    std::fs::create_dir_all(&data)?;
    fleet.write_config(&format!(
        "app = \"bench\"\nimage = {}\n\n[services.web]\nvolumes = [{}]\nhealth = {{ path = \"/healthz\", port = 8080, interval = \"{INTERVAL}\", healthy_for = \"{HEALTHY_FOR}\", deadline = \"30s\" }}\n\n[migrate]\ncommand = [\"/app\", \"migrate\"]\nservice = \"web\"\n",
        quote(images.repository()),
        quote(&format!("{}:/data", data.display()))
    ))?;
    fleet
        .deployctl(&["push", "v1", "--env", "bench"])?
        .expect(0)?;
    let push = timed(
        "deployctl push",
        fleet.command(&["push", &images.v(2).git_sha, "--env", "bench"]),
    )?;
    let rollback = timed(
        "deployctl rollback",
        fleet.command(&["rollback", "--env", "bench"]),
    )?;
    let status = timed(
        "deployctl status",
        fleet.command(&["status", "--env", "bench"]),
    )?;
    Ok((push, rollback, status))
}

/// The same three steps by a shell script over ssh, on fresh sshds, starting from v1.
fn with_script(
    images: &DemoImages,
    hosts: usize,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let dir = tempfile::Builder::new()
        .prefix("deployctl-bench-")
        .tempdir()?;
    let key = ClientKey::generate(dir.path())?;
    let sshds: Vec<Sshd> = (0..hosts)
        .map(|_| Sshd::start(std::slice::from_ref(&key.public_line)))
        .collect::<Result<_, _>>()?;
    let known_hosts: String = sshds
        .iter()
        .map(|s| format!("{}\n", s.known_hosts_line()))
        .collect();
    std::fs::write(dir.path().join("known_hosts"), known_hosts)?;
    let name = unique_name("bench");
    let _cleanup = Cleanup::label(TEST_LABEL, &name);
    std::fs::create_dir_all(dir.path().join("data"))?;
    let script = dir.path().join("deploy.sh");
    std::fs::write(&script, script_text(dir.path(), &key, &sshds, &name))?;
    let run = |args: &[&str]| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).args(args);
        cmd
    };
    timed("script deploy v1", run(&["deploy", &images.v(1).pinned()]))?;
    let push = timed("script deploy v2", run(&["deploy", &images.v(2).pinned()]))?;
    let rollback = timed("script rollback", run(&["rollback", &images.v(1).pinned()]))?;
    let status = timed("script status", run(&["status"]))?;
    Ok((push, rollback, status))
}

fn script_text(dir: &Path, key: &ClientKey, sshds: &[Sshd], name: &str) -> String {
    let ports: Vec<String> = sshds.iter().map(|s| s.port().to_string()).collect();
    let user = sshds
        .first()
        .map(|s| s.user().to_string())
        .unwrap_or_else(|| "root".into());
    format!(
        r#"#!/usr/bin/env bash
# A plain deploy script: for each host in turn, over ssh, pull by digest, run the migration
# (first host only), stop and replace the container, poll /healthz until it held for 1 s.
set -euo pipefail
KEY={key}
KNOWN={known}
DATA={data}
NAME={name}
LABEL={label}={name}
PORTS=({ports})
ssh_to() {{
    local port=$1; shift
    ssh -i "$KEY" -o UserKnownHostsFile="$KNOWN" -o StrictHostKeyChecking=yes -o BatchMode=yes \
        -o IdentitiesOnly=yes -o IdentityAgent=none -o LogLevel=ERROR -p "$port" {user}@127.0.0.1 "$@"
}}
deploy() {{
    local image=$1 migrate=$2 i=0
    for port in "${{PORTS[@]}}"; do
        ssh_to "$port" "set -e
            docker pull -q $image >/dev/null
            if [ $migrate = yes ] && [ $i = 0 ]; then
                docker run --rm --label $LABEL -v $DATA:/data $image /app migrate >/dev/null
            fi
            docker stop $NAME-$i >/dev/null 2>&1 || true
            docker rm $NAME-$i >/dev/null 2>&1 || true
            docker run -d --name $NAME-$i --label $LABEL -v $DATA:/data $image >/dev/null
            ip=\$(docker inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' $NAME-$i)
            ok=0
            for attempt in \$(seq 1 150); do
                if curl -fs -o /dev/null http://\$ip:8080/healthz; then ok=\$((ok + 1)); else ok=0; fi
                if [ \$ok -ge 6 ]; then exit 0; fi
                sleep 0.2
            done
            echo 'not healthy' >&2; exit 1"
        i=$((i + 1))
    done
}}
status() {{
    local i=0
    for port in "${{PORTS[@]}}"; do
        ssh_to "$port" "docker inspect -f '{{{{.Config.Image}}}} {{{{.State.Status}}}} {{{{.State.StartedAt}}}}' $NAME-$i"
        i=$((i + 1))
    done
}}
case "$1" in
    deploy) deploy "$2" yes ;;
    rollback) deploy "$2" no ;;
    status) status ;;
esac
"#,
        key = quote(&key.private_path.display().to_string()),
        known = quote(&dir.join("known_hosts").display().to_string()),
        data = quote(&dir.join("data").display().to_string()),
        label = TEST_LABEL,
        ports = ports.join(" "),
    )
}
