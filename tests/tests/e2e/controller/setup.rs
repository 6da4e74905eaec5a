//! `deployctl setup` (issue 14) against a bare host over real SSH: a container with its own
//! filesystem root, a root login by key, and nothing of deployctl (harness `BareHost`). Setup
//! takes it to an agent that a push then uses; a dry run and a second run change nothing; the
//! installed unit passes the real `systemd-analyze verify`; another binary needs `--upgrade`,
//! which waits for a push under way; a host without systemd is refused with the manual steps.
//! A cloud-shaped bare host (root may not log in; `admin` has passwordless sudo) is set up
//! through the real sudo.
//!
//! What is proven how: users, groups, files, modes, the upload and its checksum, and the agent
//! answering through the `deploy` login are real. Starting the unit is done by the bare host's
//! stand-in `systemctl` (no systemd runs in a container), which runs the unit's own `ExecStart`
//! as its `User`/`Group`; the unit file is checked by `systemd-analyze verify`.

use std::process::Command;

use harness::command::output_with_timeout;
use harness::hosts::DEPLOYCTL_TIMEOUT;
use harness::{BareHost, BareHostHome, unique_name};
use sha2::{Digest, Sha256};

use super::*;

struct Setup {
    bare: BareHostHome,
    app: String,
    images: DemoImages,
    _registry: Registry,
    _cleanup: Cleanup,
}

impl Setup {
    /// A bare host that lets root in by key.
    fn start() -> anyhow::Result<Setup> {
        Setup::start_on(BareHost::start)
    }

    /// A bare host started by `bare` with the test's public key line.
    fn start_on(bare: fn(&str) -> harness::Result<BareHost>) -> anyhow::Result<Setup> {
        require_prereqs()?;
        let registry = Registry::start()?;
        let app = unique_name("setup");
        let images = DemoImages::publish(&registry, &format!("{app}/web"))?;
        let bare = BareHostHome::start(bare)?;
        let name = unique_name("bare");
        std::fs::write(
            bare.path().join("deploy.toml"),
            format!(
                r#"app = "{app}"
image = {image}

[services.web]
health = {{ path = "/healthz", port = 8080, interval = "200ms", healthy_for = "1s", deadline = "30s" }}

{env}"#,
                image = quote(images.repository()),
                env = bare.staging_table(&name),
            ),
        )?;
        Ok(Setup {
            bare,
            _cleanup: Cleanup::label("deployctl.host", &name),
            app,
            images,
            _registry: registry,
        })
    }

    fn host(&self) -> &BareHost {
        &self.bare.host
    }

    fn deployctl(&self, args: &[&str]) -> anyhow::Result<Run> {
        let out = output_with_timeout(&mut self.bare.deployctl(args)?, DEPLOYCTL_TIMEOUT)?;
        Ok(Run {
            command: format!("deployctl {}", args.join(" ")),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `setup --json` with `extra` flags: its exit code, and the host's result and step count.
    fn setup(&self, extra: &[&str]) -> anyhow::Result<(Run, String, u64)> {
        let mut args = vec!["setup", "--env", "staging", "--json"];
        args.extend_from_slice(extra);
        let run = self.deployctl(&args)?;
        let summary = run.summary()?;
        let host = &summary["hosts"][0];
        let result = host["result"].as_str().unwrap_or_default().to_string();
        Ok((run, result, host["steps"].as_u64().unwrap_or(0)))
    }
}

/// Polls `status` until the host's agent runs a job.
fn wait_for_a_running_job(s: &Setup) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let run = s.deployctl(&["status", "--env", "staging", "--json"])?;
        let running = run
            .json_lines()
            .iter()
            .any(|l| l["running"].as_array().is_some_and(|r| !r.is_empty()));
        if running {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no job started within 60 s: {}",
            run.output()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn sha256_hex(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(format!("{:x}", Sha256::digest(std::fs::read(path)?)))
}

#[test]
fn setup_takes_a_bare_host_to_a_first_push_and_a_second_run_changes_nothing() -> anyhow::Result<()>
{
    let s = Setup::start()?;
    let nothing = "test ! -e /usr/local/bin/deploy-agent && ! getent passwd deploy-agent \
                   && ! getent passwd deploy && ! getent group deployctl && test ! -e /etc/deploy-agent";
    s.host().exec(nothing)?;

    // --dry-run: the whole plan, nothing changed
    let (run, result, steps) = s.setup(&["--dry-run"])?;
    run.expect(0)?;
    ensure!(
        result == "planned" && steps == 9,
        "{result} {steps}: {}",
        run.output()
    );
    ensure!(
        run.stdout.contains("systemctl enable --now deploy-agent"),
        "{}",
        run.output()
    );
    s.host()
        .exec(nothing)
        .context("the dry run changed the host")?;

    // setup: from nothing to an agent that answers through the deploy login
    let (run, result, steps) = s.setup(&[])?;
    run.expect(0).with_context(|| s.host().logs())?;
    ensure!(
        result == "changed" && steps == 9,
        "{result} {steps}: {}",
        run.output()
    );
    let agent = harness::agents::agent_binary()?;
    let installed = s
        .host()
        .exec("sha256sum /usr/local/bin/deploy-agent | cut -d' ' -f1")?;
    ensure!(
        installed.trim() == sha256_hex(&agent)?,
        "the installed binary is not ours"
    );
    let ids = s.host().exec("id -nG deploy-agent; id -nG deploy; stat -c '%U:%G %a' /etc/deploy-agent/agent.toml /run/deploy-agent/agent.sock")?;
    ensure!(
        ids.lines().collect::<Vec<_>>()
            == [
                "deployctl docker",
                "deploy deployctl",
                "root:deployctl 640",
                "deploy-agent:deployctl 660"
            ],
        "users, groups and modes: {ids}"
    );
    let owner = s
        .host()
        .exec("stat -c %U /proc/$(cat /run/deploy-agent.stand-in.pid)")?;
    ensure!(owner.trim() == "deploy-agent", "the agent runs as {owner}");
    verify_unit(
        &s.host()
            .exec("cat /etc/systemd/system/deploy-agent.service")?,
        &agent,
    )?;

    // a push through the login setup made
    let v1 = s.images.v(1);
    let run = s.deployctl(&["push", &v1.git_sha, "--env", "staging"])?;
    run.expect(0).with_context(|| s.host().logs())?;
    let container = docker_inspect(&format!("{}-staging-web", s.app))?;
    ensure!(
        container["Config"]["Labels"]["deployctl.digest"] == v1.digest.as_str(),
        "the pushed container: {}",
        container["Config"]["Labels"]
    );

    // a second run changes nothing
    let (run, result, _) = s.setup(&[])?;
    run.expect(0)?;
    ensure!(result == "unchanged", "{result}: {}", run.output());
    ensure!(
        !run.json_lines().iter().any(|l| l["event"] == "setup_step"),
        "a second run took steps: {}",
        run.output()
    );

    // another binary on the host: refused without --upgrade, replaced with it once the push
    // under way (held by its health gate for 8 s) has ended
    s.host().exec("cp /usr/local/bin/deploy-agent /tmp/a && printf x >> /tmp/a && mv /tmp/a /usr/local/bin/deploy-agent")?;
    let (run, result, _) = s.setup(&[])?;
    run.expect(3)?;
    ensure!(
        result == "refused" && run.stdout.contains("setup --upgrade"),
        "{}",
        run.output()
    );
    let toml = s.bare.path().join("deploy.toml");
    let config = std::fs::read_to_string(&toml)?;
    std::fs::write(
        &toml,
        config.replace("healthy_for = \"1s\"", "healthy_for = \"8s\""),
    )?;
    let v2 = s.images.v(2);
    let (push, (run, result, steps)) = std::thread::scope(|scope| {
        let push = scope.spawn(|| s.deployctl(&["push", &v2.git_sha, "--env", "staging"]));
        let upgrade = wait_for_a_running_job(&s).and_then(|()| s.setup(&["--upgrade"]));
        let push = push.join().expect("the push thread panicked");
        anyhow::Ok((push?, upgrade?))
    })?;
    push.expect(0).with_context(|| s.host().logs())?;
    run.expect(0).with_context(|| s.host().logs())?;
    ensure!(
        result == "changed"
            && steps == 2
            && run
                .stdout
                .contains("waiting for 1 running job(s) to end before replacing the agent"),
        "{result} {steps}: {}",
        run.output()
    );
    let container = docker_inspect(&format!("{}-staging-web", s.app))?;
    ensure!(
        container["Config"]["Labels"]["deployctl.digest"] == v2.digest.as_str(),
        "the push under the upgrade: {}",
        container["Config"]["Labels"]
    );
    let installed = s
        .host()
        .exec("sha256sum /usr/local/bin/deploy-agent | cut -d' ' -f1")?;
    ensure!(
        installed.trim() == sha256_hex(&agent)?,
        "--upgrade did not put our binary back"
    );
    s.deployctl(&["status", "--env", "staging"])?.expect(0)?;

    // no systemd: refused with the manual steps, nothing changed
    s.host().exec("rm -rf /run/systemd/system")?;
    let (run, result, _) = s.setup(&[])?;
    run.expect(3)?;
    ensure!(
        result == "refused"
            && run.stdout.contains("no systemd")
            && run.stdout.contains("Running the agent on a host"),
        "{}",
        run.output()
    );
    Ok(())
}

#[test]
fn setup_logs_in_as_a_sudo_user_where_root_may_not_log_in() -> anyhow::Result<()> {
    // A cloud image: root may not log in; `admin` has passwordless sudo, `guest` no sudo rights.
    let s = Setup::start_on(BareHost::start_cloud)?;
    let nothing = "test ! -e /usr/local/bin/deploy-agent && ! getent passwd deploy-agent \
                   && ! getent group deployctl && test ! -e /etc/deploy-agent";

    let (run, result, _) = s.setup(&["--ssh-user", "root"])?;
    run.expect(3)?;
    ensure!(result != "changed", "{}", run.output());
    let (run, result, _) = s.setup(&["--ssh-user", "guest"])?;
    run.expect(3)?;
    ensure!(
        result != "changed" && run.stdout.contains("passwordless sudo"),
        "{}",
        run.output()
    );
    s.host()
        .exec(nothing)
        .context("a refused setup changed the host")?;

    let (run, result, steps) = s.setup(&["--ssh-user", "admin"])?;
    run.expect(0).with_context(|| s.host().logs())?;
    ensure!(
        result == "changed" && steps == 9,
        "{result} {steps}: {}",
        run.output()
    );
    let ids = s
        .host()
        .exec("id -nG deploy; stat -c '%U:%G %a' /usr/local/bin/deploy-agent /etc/deploy-agent/agent.toml")?;
    ensure!(
        ids.lines().collect::<Vec<_>>()
            == ["deploy deployctl", "root:root 755", "root:deployctl 640"],
        "made through sudo: {ids}"
    );
    let v1 = s.images.v(1);
    s.deployctl(&["push", &v1.git_sha, "--env", "staging"])?
        .expect(0)
        .with_context(|| s.host().logs())?;
    let (run, result, _) = s.setup(&["--ssh-user", "admin"])?;
    run.expect(0)?;
    ensure!(result == "unchanged", "{result}: {}", run.output());
    Ok(())
}

/// `systemd-analyze verify` of `unit` as installed: in a root holding this machine's system
/// units (for docker.service and the targets) and the agent binary the unit starts.
fn verify_unit(unit: &str, agent: &std::path::Path) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let r = root.path();
    std::fs::create_dir_all(r.join("etc/systemd/system"))?;
    std::fs::create_dir_all(r.join("usr/local/bin"))?;
    std::fs::create_dir_all(r.join("usr/lib/systemd"))?;
    harness::command::run(
        Command::new("cp")
            .arg("-r")
            .arg("/usr/lib/systemd/system")
            .arg(r.join("usr/lib/systemd/")),
    )?;
    if !r.join("usr/lib/systemd/system/docker.service").exists() {
        std::fs::write(
            r.join("etc/systemd/system/docker.service"),
            "[Service]\nExecStart=/bin/true\n",
        )?;
    }
    std::fs::write(r.join("etc/systemd/system/deploy-agent.service"), unit)?;
    std::fs::copy(agent, r.join("usr/local/bin/deploy-agent"))?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("deploy-agent.service")
        .output()
        .context("running systemd-analyze (apt-get install -y systemd)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    Ok(())
}
