//! The controller end to end (issue 4): the built `deployctl` binary, run as a user would, rolls
//! the demo app out over real OpenSSH to several agents (each with its own sshd, state dir and
//! container prefix, all on this machine's Docker engine), from a private registry.
//!
//! What a host runs is checked independently of deployctl: the container the agent names, its
//! labels, and what the app itself answers on `/version`; journals are read through the agent's
//! own socket.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, ensure};
use harness::agents::AgentSetup;
use harness::hosts::{EnvPlan, Fleet, Run, SshHost, quote};
use harness::{
    Cleanup, DemoImages, Registry, build_demo_images, docker, docker_inspect, http_get,
    require_prereqs, wait_until,
};
use proto::wire::{AgentStatus, HistoryEntry, OutcomeKind};

mod approvals;
mod canary;
mod cli_habits;
mod doctor;
mod exec;
mod failing;
mod init;
mod json_output;
mod labels;
mod policy;
mod promote;
mod proxy;
mod registry_auth;
mod release;
mod release_policy;
mod secrets;
mod setup;
mod ssh_config;
mod version_skew;
mod watch;

const APP: &str = "acme";

/// A registry with the demo versions and a fleet of SSH hosts allowed to run them.
struct World {
    fleet: Fleet,
    images: DemoImages,
    _registry: Registry,
}

fn world(
    plans: &[EnvPlan],
    adjust: impl FnMut(&str, usize, &mut AgentSetup),
) -> anyhow::Result<World> {
    require_prereqs()?;
    world_on(Registry::start()?, plans, adjust)
}

/// [`world`] with the demo images in `registry`.
fn world_on(
    registry: Registry,
    plans: &[EnvPlan],
    adjust: impl FnMut(&str, usize, &mut AgentSetup),
) -> anyhow::Result<World> {
    let images = DemoImages::publish(&registry, "acme/web")?;
    let allowed = format!("{}/acme/*", registry.addr());
    let fleet = Fleet::start(plans, &[&allowed], adjust)?;
    let world = World {
        fleet,
        images,
        _registry: registry,
    };
    world.write_config("1s", "8s")?;
    Ok(world)
}

impl World {
    /// deploy.toml: service `web` (data dir at /data, quick health), `[migrate]`, the fleet's envs.
    fn write_config(&self, healthy_for: &str, deadline: &str) -> anyhow::Result<()> {
        self.fleet.write_config(&format!(
            r#"app = "{APP}"
image = {image}

[services.web]
volumes = [{volume}]
health = {{ path = "/healthz", port = 8080, interval = "200ms", healthy_for = "{healthy_for}", deadline = "{deadline}" }}

[migrate]
command = ["/app", "migrate"]
service = "web"
timeout = "1m"
"#,
            image = quote(self.images.repository()),
            volume = data_volume(&self.fleet)?,
        ))?;
        Ok(())
    }

    fn sha(&self, n: usize) -> String {
        self.images.v(n).git_sha.clone()
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<Run> {
        Ok(self.fleet.deployctl(args)?)
    }

    fn migrations(&self) -> Vec<String> {
        migrations(&self.fleet)
    }

    /// The version each host of `env` serves, in deploy.toml order.
    fn versions(&self, env: &str) -> anyhow::Result<Vec<String>> {
        self.fleet.hosts(env).iter().map(version_of).collect()
    }

    fn expect_versions(&self, env: &str, want: &str) -> anyhow::Result<()> {
        let got = self.versions(env)?;
        ensure!(
            got.iter().all(|v| v == want),
            "{env} serves {got:?}, expected {want} everywhere"
        );
        Ok(())
    }
}

/// `"<fleet home>/data:/data"`, quoted for deploy.toml: the data dir every host's `web` mounts
/// (the migrations log lives there), created.
fn data_volume(fleet: &Fleet) -> anyhow::Result<String> {
    let data = fleet.home().join("data");
    std::fs::create_dir_all(&data)?;
    Ok(quote(&format!("{}:/data", data.display())))
}

/// Lines of the migrations log every host's `web` shares (`data/` in the fleet's home).
fn migrations(fleet: &Fleet) -> Vec<String> {
    std::fs::read_to_string(fleet.home().join("data/migrations.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// What the app in a host's `web` container answers on /version ("" when none runs).
fn version_of(h: &SshHost) -> anyhow::Result<String> {
    service_version(h, "web")
}

/// What the app in a host's container of `service` answers on /version ("" when none runs).
fn service_version(h: &SshHost, service: &str) -> anyhow::Result<String> {
    let name = h.agent.container_name(APP, service);
    let Ok(c) = docker_inspect(&name) else {
        return Ok(String::new());
    };
    if c["State"]["Running"].as_bool() != Some(true) {
        return Ok(String::new());
    }
    let ip = c["NetworkSettings"]["Networks"]
        .as_object()
        .and_then(|n| {
            n.values()
                .find_map(|v| v["IPAddress"].as_str().filter(|s| !s.is_empty()))
        })
        .context("no IP address")?
        .to_string();
    Ok(
        http_get(&format!("http://{ip}:8080/version"), Duration::from_secs(2))?
            .body
            .trim()
            .to_string(),
    )
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => panic!("cannot start a tokio runtime: {e}"),
    }
}

/// The host's journal, newest first, read from the agent's socket.
fn history(h: &SshHost) -> anyhow::Result<Vec<HistoryEntry>> {
    block_on(async { Ok(h.agent.client().await?.history(100).await?) })
}

fn status(h: &SshHost) -> anyhow::Result<AgentStatus> {
    block_on(async { Ok(h.agent.client().await?.status().await?) })
}

#[test]
fn push_promote_fail_and_roll_back_over_ssh() -> anyhow::Result<()> {
    let w = world(
        &[
            EnvPlan::new("staging", 2),
            EnvPlan::new("prod", 1).requires("staging"),
        ],
        |_, _, _| {},
    )?;

    // 1. v1 by its full git SHA, then v2 by a 7-character prefix.
    w.run(&["push", &w.sha(1), "--env", "staging"])?.expect(0)?;
    w.expect_versions("staging", "v1")?;
    let prefix = w.sha(2)[..7].to_string();
    let run = w.run(&["push", &prefix, "--env", "staging"])?;
    run.expect(0)?;
    ensure!(
        run.output().contains(&w.sha(2)),
        "the prefix resolves to v2's tag:\n{}",
        run.output()
    );
    w.expect_versions("staging", "v2")?;

    // 2. Each rollout migrated exactly once, on the first host only.
    let migrations = w.migrations();
    let count = |v: &str| {
        migrations
            .iter()
            .filter(|l| l.starts_with(&format!("migrated {v} ")))
            .count()
    };
    ensure!(
        (count("v1"), count("v2")) == (1, 1),
        "one migration per rollout: {migrations:?}"
    );
    let staging = w.fleet.hosts("staging");
    let migrated_on: Vec<bool> = staging
        .iter()
        .map(|h| Ok(history(h)?[0].run_migration))
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        migrated_on == [true, false],
        "the migration runs on the first host only: {migrated_on:?}"
    );

    // 3. v3 never gets healthy: the first host rolls back, the second is never touched.
    let second_before = history(&staging[1])?.len();
    let run = w.run(&["push", "v3", "--env", "staging"])?;
    run.expect(1)?;
    w.expect_versions("staging", "v2")?;
    let first = history(&staging[0])?;
    ensure!(
        first[0].reference == "v3" && first[0].outcome == Some(OutcomeKind::RolledBack),
        "{:?}",
        first[0]
    );
    ensure!(
        history(&staging[1])?.len() == second_before,
        "the second host got an order"
    );
    let out = run.output();
    ensure!(
        out.contains("health-deadline") && out.contains("not healthy"),
        "the output names the reason:\n{out}"
    );
    ensure!(
        out.contains("| ") && out.contains("GET /healthz"),
        "the output shows the container's log lines:\n{out}"
    );
    ensure!(
        out.contains("back on its previous version"),
        "exit 1 is explained:\n{out}"
    );

    // 5. prod requires staging: a digest never deployed there is refused, v2 is promoted.
    let prod = w.fleet.hosts("prod");
    let run = w.run(&["push", &w.sha(4), "--env", "prod"])?;
    run.expect(3)?;
    ensure!(
        run.output().contains("never been healthy in staging"),
        "{}",
        run.output()
    );
    ensure!(history(&prod[0])?.is_empty(), "prod got an order");
    let run = w.run(&["push", "v3", "--env", "prod"])?;
    run.expect(3)?;
    w.run(&["push", "v2", "--env", "prod", "--skip-migrations"])?
        .expect(0)?;
    w.expect_versions("prod", "v2")?;
    ensure!(
        count("v2") == 1,
        "--skip-migrations ran no migration: {:?}",
        w.migrations()
    );

    // 6. rollback: to the previous healthy digest (v1), then forward with --to.
    let migrated_before = w.migrations().len();
    let run = w.run(&["rollback", "--env", "staging"])?;
    run.expect(0)?;
    w.expect_versions("staging", "v1")?;
    w.run(&["rollback", "--env", "staging", "--to", &w.sha(2)])?
        .expect(0)?;
    w.expect_versions("staging", "v2")?;
    ensure!(
        w.migrations().len() == migrated_before,
        "rollbacks never migrate: {:?}",
        w.migrations()
    );

    // 7. status and history, as JSON.
    let run = w.run(&["status", "--env", "staging", "--json"])?;
    run.expect(0)?;
    let summary = run.summary()?;
    ensure!(
        summary["consistent"] == true && summary["healthy"] == true,
        "{summary}"
    );
    ensure!(
        summary["digests"] == serde_json::json!([w.images.v(2).digest]),
        "{summary}"
    );
    let hosts: Vec<_> = run
        .json_lines()
        .into_iter()
        .filter(|v| v["event"] == "host_status")
        .collect();
    ensure!(hosts.len() == 2, "{}", run.stdout);
    for (h, line) in staging.iter().zip(&hosts) {
        ensure!(
            line["host"] == h.name() && line["reachable"] == true,
            "{line}"
        );
        ensure!(
            line["services"][0]["image"] == w.images.v(2).image_ref.to_string(),
            "{line}"
        );
        ensure!(line["services"][0]["health"] == "healthy", "{line}");
    }
    let run = w.run(&["--json", "history", "-n", "20", "--env", "staging"])?;
    run.expect(0)?;
    let entries: Vec<_> = run
        .json_lines()
        .into_iter()
        .filter(|v| v["event"] == "history")
        .collect();
    let of = |h: &SshHost| entries.iter().filter(|e| e["host"] == h.name()).count();
    ensure!(
        (of(&staging[0]), of(&staging[1])) == (5, 4),
        "history per host: {}",
        run.stdout
    );
    let rolled_back: Vec<_> = entries
        .iter()
        .filter(|e| e["entry"]["outcome"] == "rolled-back")
        .collect();
    ensure!(
        rolled_back.len() == 1 && rolled_back[0]["host"] == staging[0].name(),
        "{rolled_back:?}"
    );
    ensure!(
        entries[0]["entry"]["action"] == "rollback" && entries[0]["entry"]["ref"] == w.sha(2),
        "newest first: {}",
        entries[0]
    );
    Ok(())
}

#[test]
fn a_failure_in_the_last_batch_rolls_back_the_hosts_already_changed() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 3).max_parallel(2)], |_, _, _| {})?;
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    let staging = w.fleet.hosts("staging");
    // The last host stops trusting the signing key: its order is refused while the first two
    // hosts are already on v2.
    let last = &staging[2];
    stop_trusting_the_signing_key(last)?;

    let run = w.run(&["--json", "push", "v2", "--env", "staging"])?;
    run.expect(1)?;
    w.expect_versions("staging", "v1")?;
    let summary = run.summary()?;
    ensure!(
        summary["result"] == "rolled-back" && summary["exit_code"] == 1,
        "{summary}"
    );
    for h in &staging[..2] {
        let entries = history(h)?;
        ensure!(
            entries.len() == 3,
            "{}: deploy v1, deploy v2, rollback: {entries:#?}",
            h.name()
        );
        ensure!(
            entries[1].reference == "v2" && entries[1].outcome == Some(OutcomeKind::Succeeded),
            "{:?}",
            entries[1]
        );
        ensure!(
            entries[0].action == proto::Action::Rollback
                && entries[0].outcome == Some(OutcomeKind::Succeeded)
                && entries[0].image == w.images.v(1).image_ref
                && entries[0].rollout_id == entries[1].rollout_id,
            "{:?}",
            entries[0]
        );
    }
    ensure!(history(last)?.len() == 1, "the refused host changed");
    let hosts = summary["hosts"].as_array().context("hosts")?;
    ensure!(
        hosts[2]["state"]["state"] == "refused"
            && hosts[2]["state"]["refusal"]["kind"] == "unknown-signer",
        "{}",
        hosts[2]
    );
    ensure!(hosts[0]["rollback"]["state"] == "succeeded", "{}", hosts[0]);
    Ok(())
}

#[test]
fn refusals_happen_before_anything_changes() -> anyhow::Result<()> {
    let mut w = world(&[EnvPlan::new("staging", 2)], |_, _, _| {})?;
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    let journal_sizes = |w: &World| -> anyhow::Result<Vec<usize>> {
        w.fleet
            .hosts("staging")
            .iter()
            .map(|h| Ok(history(h)?.len()))
            .collect()
    };
    let before = journal_sizes(&w)?;

    // Read-only commands need no signature: logs, and a key generated for later.
    let first_name = w.fleet.hosts("staging")[0].name().to_string();
    let run = w.run(&["logs", "--env", "staging", "--service", "web", "-n", "5"])?;
    run.expect(0)?;
    ensure!(
        run.stdout.contains(&format!("==> {first_name} web")),
        "{}",
        run.output()
    );
    w.run(&["logs", "--env", "staging", "--host", "nope"])?
        .expect(64)?;
    let run = w.run(&["keys", "generate", "--out", "new-key"])?;
    run.expect(0)?;
    ensure!(
        run.stdout
            .contains("namespaces=\"deployctl-order\" ssh-ed25519 "),
        "{}",
        run.stdout
    );
    ensure!(
        w.fleet.home().join("new-key.pub").is_file(),
        "no public key written"
    );
    w.run(&["keys", "generate", "--out", "new-key"])?
        .expect(3)?;

    // A malformed deploy.toml: the error is located.
    let good = std::fs::read_to_string(w.fleet.home().join("deploy.toml"))?;
    w.fleet.write_file(
        "bad.toml",
        &good.replace("[services.web]\n", "[services.web]\nprots = [\"80:80\"]\n"),
    )?;
    let run = w.run(&["push", "v2", "--env", "staging", "--config", "bad.toml"])?;
    run.expect(3)?;
    ensure!(
        run.stderr.contains("bad.toml:5:1") && run.stderr.contains("prots"),
        "{}",
        run.stderr
    );
    let run = w.run(&["push", "v2", "--env", "nowhere"])?;
    run.expect(3)?;
    ensure!(
        run.stderr.contains("staging"),
        "unknown envs list the known ones: {}",
        run.stderr
    );
    w.run(&["push", "--env", "staging"])?.expect(64)?;
    w.run(&["push", "v2", "--env", "staging", "--bogus"])?
        .expect(64)?;

    // Missing images and an ambiguous prefix.
    let run = w.run(&["push", "v9", "--env", "staging"])?;
    run.expect(3)?;
    ensure!(run.output().contains("image not found"), "{}", run.output());
    w.run(&["push", "0000000", "--env", "staging"])?.expect(3)?;
    w.run(&[
        "push",
        &format!("sha256:{}", "0".repeat(64)),
        "--env",
        "staging",
    ])?
    .expect(3)?;
    let prefix = w.sha(1)[..7].to_string();
    let twin = format!("{prefix}ffff");
    push_extra_tag(&w, 2, &twin)?;
    let run = w.run(&["push", &prefix, "--env", "staging"])?;
    run.expect(3)?;
    ensure!(
        run.output().contains("ambiguous")
            && run.output().contains(&twin)
            && run.output().contains(&w.sha(1)),
        "{}",
        run.output()
    );

    // A signing key the agents do not trust.
    let stranger = w.fleet.home().join("stranger");
    deployctl::signer::generate_key_files(&stranger, "stranger@nowhere")?;
    let run = w.fleet.run(
        w.fleet
            .command(&["push", "v2", "--env", "staging"])
            .env("DEPLOYCTL_SIGNING_KEY", &stranger),
    )?;
    run.expect(3)?;
    ensure!(run.output().contains("unknown-signer"), "{}", run.output());

    // Host keys: unknown, then changed.
    let known_hosts = w.fleet.home().join(".ssh/known_hosts");
    let original = std::fs::read_to_string(&known_hosts)?;
    let first = &w.fleet.hosts("staging")[0];
    let without_first: String = original
        .lines()
        .filter(|l| *l != first.sshd.known_hosts_line())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&known_hosts, &without_first)?;
    let run = w.run(&["push", "v2", "--env", "staging"])?;
    run.expect(3)?;
    let fingerprint = first.sshd.host_key_fingerprint()?;
    ensure!(
        run.output().contains(&fingerprint)
            && run.output().contains(&first.sshd.known_hosts_line()),
        "{}",
        run.output()
    );
    let other_key = harness::ClientKey::generate(w.fleet.home())?;
    let other = other_key
        .public_line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(
        &known_hosts,
        format!("{without_first}[127.0.0.1]:{} {other}\n", first.sshd.port()),
    )?;
    // A host that cannot be verified is unreachable: status shows it and exits 3.
    let run = w.run(&["status", "--env", "staging", "--json"])?;
    run.expect(3)?;
    let line = run
        .json_lines()
        .into_iter()
        .find(|v| v["host"] == first.name())
        .context("host line")?;
    ensure!(
        line["reachable"] == false
            && line["error"]
                .as_str()
                .is_some_and(|e| e.contains("HOST KEY CHANGED")),
        "{line}"
    );
    std::fs::write(&known_hosts, &original)?;

    // A stopped agent: shown as unreachable, and push refuses before changing anything.
    w.fleet.hosts_mut("staging")[1]
        .agent
        .terminate(Duration::from_secs(30))?;
    let run = w.run(&["status", "--env", "staging", "--json"])?;
    run.expect(3)?;
    let summary = run.summary()?;
    ensure!(
        summary["reachable"] == 1 && summary["consistent"] == false && summary["exit_code"] == 3,
        "{summary}"
    );
    let run = w.run(&["status", "--env", "staging"])?;
    run.expect(3)?;
    ensure!(
        run.stdout.contains("staging: 1 of 2 host(s) unreachable"),
        "{}",
        run.output()
    );
    let run = w.run(&["push", "v2", "--env", "staging"])?;
    run.expect(3)?;
    ensure!(
        run.output().contains("cannot be reached")
            && run.output().contains(w.fleet.hosts("staging")[1].name()),
        "{}",
        run.output()
    );
    ensure!(
        history(&w.fleet.hosts("staging")[0])?.len() == before[0],
        "the reachable host changed"
    );
    w.fleet.hosts_mut("staging")[1].agent.restart()?;
    ensure!(
        journal_sizes(&w)? == before,
        "nothing was journaled by any refused push"
    );
    w.expect_versions("staging", "v1")?;
    Ok(())
}

/// The host's agent stops trusting deployctl's signing key (its `allowed_signers` keeps only
/// the agent's own test key): every order deployctl signs is refused there, `unknown-signer`.
fn stop_trusting_the_signing_key(h: &SshHost) -> anyhow::Result<()> {
    std::fs::write(
        h.agent.dir().join("allowed_signers"),
        format!("{}\n", h.agent.key.allowed_signers_line),
    )?;
    Ok(())
}

/// Pushes demo version `n` under another tag.
fn push_extra_tag(w: &World, n: usize, tag: &str) -> anyhow::Result<()> {
    let local = build_demo_images()?;
    let name = format!("{}:{tag}", w.images.repository());
    docker(&["tag", &local[n - 1].id, &name])?;
    let pushed = docker(&["push", &name]);
    docker(&["rmi", &name])?;
    pushed?;
    Ok(())
}

#[test]
fn a_second_push_while_one_runs_is_refused_naming_the_holder() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 2)], |_, _, _| {})?;
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    // Slow enough health checks that the first push is still running when the second comes.
    w.write_config("4s", "30s")?;
    let staging = w.fleet.hosts("staging");
    let mut first = w.fleet.command(&["push", "v2", "--env", "staging"]);
    first
        .env("DEPLOYCTL_ISSUED_BY", "alice@laptop")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let first = first.spawn()?;
    let running = wait_until(
        "the first push to reach the first host",
        Duration::from_secs(60),
        || match status(&staging[0]) {
            Ok(s) if !s.running.is_empty() => Ok(()),
            Ok(_) => Err("nothing running yet".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    let second = running.map_err(anyhow::Error::from).and_then(|()| {
        Ok(w.fleet.run(
            w.fleet
                .command(&["push", &w.sha(1), "--env", "staging"])
                .env("DEPLOYCTL_ISSUED_BY", "bob@ci"),
        )?)
    });
    let first = first.wait_with_output()?;
    let second = second?;
    second.expect(3)?;
    ensure!(
        second.output().contains("alice@laptop"),
        "the refusal names the holder:\n{}",
        second.output()
    );
    ensure!(
        first.status.code() == Some(0),
        "the first push: {}",
        String::from_utf8_lossy(&first.stdout)
    );
    w.expect_versions("staging", "v2")?;
    for h in staging {
        ensure!(
            history(h)?.iter().all(|e| e.issued_by != "bob@ci"),
            "bob's push reached {}",
            h.name()
        );
    }
    Ok(())
}

/// Two staging hosts on v1, and a `push v2` killed while the second host's job runs (the first
/// host is done by then).
fn world_with_a_killed_push() -> anyhow::Result<World> {
    let w = world(&[EnvPlan::new("staging", 2)], |_, _, _| {})?;
    w.run(&["push", "v1", "--env", "staging"])?.expect(0)?;
    w.write_config("3s", "30s")?;
    let second = &w.fleet.hosts("staging")[1];
    let mut push = w.fleet.command(&["push", "v2", "--env", "staging"]);
    let mut child = push.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    let reached = wait_until(
        "the push to reach the second host",
        Duration::from_secs(60),
        || match status(second) {
            Ok(s) if !s.running.is_empty() => Ok(()),
            Ok(_) => Err("nothing running yet".into()),
            Err(e) => Err(e.to_string()),
        },
    );
    child.kill()?;
    child.wait()?;
    reached?;
    Ok(w)
}

#[test]
fn killing_the_controller_mid_push_leaves_the_agents_to_finish() -> anyhow::Result<()> {
    let w = world_with_a_killed_push()?;
    let staging = w.fleet.hosts("staging");
    let consistent = wait_until("the env to settle", Duration::from_secs(60), || {
        let run = w
            .fleet
            .deployctl(&["status", "--env", "staging", "--json"])
            .map_err(|e| e.to_string())?;
        let summary = run.summary().map_err(|e| e.to_string())?;
        let busy = staging
            .iter()
            .any(|h| status(h).map(|s| !s.running.is_empty()).unwrap_or(true));
        if summary["consistent"] == true && summary["healthy"] == true && !busy {
            Ok(summary)
        } else {
            Err(summary.to_string())
        }
    })?;
    ensure!(
        consistent["digests"] == serde_json::json!([w.images.v(2).digest]),
        "{consistent}"
    );
    w.expect_versions("staging", "v2")?;
    for h in staging {
        let newest = &history(h)?[0];
        ensure!(
            newest.reference == "v2" && newest.outcome == Some(OutcomeKind::Succeeded),
            "{}: {newest:?}",
            h.name()
        );
    }
    Ok(())
}

#[test]
fn a_push_rerun_while_its_killed_predecessor_runs_follows_it() -> anyhow::Result<()> {
    let w = world_with_a_killed_push()?;
    let staging = w.fleet.hosts("staging");
    // The same release again, at once.
    let run = w.run(&["--json", "push", "v2", "--env", "staging"])?;
    run.expect(0)?;
    let followed: Vec<_> = run
        .json_lines()
        .into_iter()
        .filter(|v| v["event"] == "following")
        .collect();
    ensure!(
        followed.len() == 1 && followed[0]["host"] == staging[1].name(),
        "the second host's running job is followed:\n{}",
        run.stdout
    );
    w.expect_versions("staging", "v2")?;
    let migrated: Vec<_> = w
        .migrations()
        .into_iter()
        .filter(|l| l.starts_with("migrated v2 "))
        .collect();
    ensure!(migrated.len() == 1, "one v2 migration: {migrated:?}");
    let v2_orders = history(&staging[1])?
        .iter()
        .filter(|e| e.reference == "v2")
        .count();
    ensure!(v2_orders == 1, "no second order on the second host");
    Ok(())
}

#[test]
fn the_demo_runs_to_the_end() -> anyhow::Result<()> {
    require_prereqs()?;
    // The demo's agent labels its containers with this host name; remove them whatever happens.
    let _cleanup = Cleanup::label(proto::order::labels::HOST, "deployctl-demo");
    let home = tempfile::Builder::new()
        .prefix("deployctl-demo-home-")
        .tempdir()?;
    let mut cmd = std::process::Command::new(harness::hosts::deployctl_binary()?);
    cmd.arg("demo")
        .current_dir(home.path())
        .env("HOME", home.path())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so whatever it started dies with it, even on a timeout.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn()?;
    let group = ProcessGroup(child.id());
    // A watchdog: the whole group is killed if the demo outlives its time.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let pgid = child.id();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(270)).is_err() {
            drop(ProcessGroup(pgid));
        }
    });
    let out = child.wait_with_output();
    let _ = done.send(());
    let _ = watchdog.join();
    drop(group);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(0),
        "demo exited {:?}:\n{stdout}\n{stderr}",
        out.status.code()
    );
    for want in [
        "[2/8]",
        "[4/8]",
        "→ exit 1",
        "every step behaved as expected",
        "migrated v2",
    ] {
        ensure!(
            stdout.contains(want),
            "the demo output lacks {want:?}:\n{stdout}"
        );
    }
    let leftovers = harness::containers_with_label(proto::order::labels::HOST, "deployctl-demo")?;
    ensure!(
        leftovers.is_empty(),
        "the demo left containers behind: {leftovers:?}"
    );
    Ok(())
}

/// Kills a whole process group when dropped (a test that fails or times out leaves nothing).
struct ProcessGroup(u32);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}
