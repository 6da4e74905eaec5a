//! `deployctl demo` (README "Quick start"): the whole product on one machine in about a minute.
//! Built only with the `demo` cargo feature, which `scripts/demo` enables: it builds images from
//! this checkout, so a release `deployctl` leaves it (and its build-machine paths) out.
//!
//! Starts a registry, builds and pushes the demo app (it uses v1, v2 healthy; v3 never
//! healthy), runs an agent on a local socket, then drives the real commands in-process: push v1 by git SHA,
//! push v2 by a 7-character prefix (its migration runs once), push v3 (health fails, the agent
//! rolls back, exit 1), rollback, status, history. Each step prints its timing; everything it
//! started is removed at the end, also on failure, and leftovers of an interrupted run are
//! removed at the start, so it is safe to run twice.

mod setup;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::commands::{self, rollout::Migrations, rollout::What};
use crate::config::DeployConfig;
use crate::output::{DemoResult, DemoSummary, Message, Output, Summary, SummaryBody};
use crate::{Error, ExitClass};
use demokit::{DemoImages, Registry};
use setup::{Agent, SetupError};

/// The agent's host name; every container of the demo carries it as a label.
const HOST: &str = "deployctl-demo";
const ENV: &str = "demo";
const APP: &str = "deployctl-demo";

pub async fn run(out: &dyn Output) -> Result<ExitClass, Error> {
    let started = Instant::now();
    let say = |text: &str| {
        out.emit(&Message::Demo {
            message: text.to_string(),
        })
    };
    say(
        "deployctl demo: a registry, the demo app, one agent on this machine; every step is a real deployctl command.",
    );
    setup::remove_containers(HOST).await;
    let dir = tempfile::Builder::new()
        .prefix("deployctl-demo-")
        .tempdir()
        .map_err(|e| Error::Refused(format!("demo: cannot make a temp dir: {e}")))?;
    let mut stage = Stage {
        registry: None,
        agent: None,
    };
    let result = steps(dir.path(), &mut stage, out, &say).await;
    say("cleaning up: agent, containers, registry");
    if let Some(agent) = stage.agent.take() {
        agent.process.stop(Duration::from_secs(10)).await;
    }
    // Containers first: the registry forgets its images in the engine when it stops, which
    // fails for an image a container still uses.
    setup::remove_containers(HOST).await;
    if let Some(registry) = stage.registry.take() {
        setup::stop_registry(registry).await;
    }
    let took = format_secs(started.elapsed());
    let summary = match result {
        Ok(()) => {
            say(&format!(
                "demo finished in {took}: every step behaved as expected."
            ));
            DemoSummary {
                result: DemoResult::Succeeded,
                error: None,
            }
        }
        Err(e) => {
            say(&format!("demo FAILED after {took}: {e}"));
            DemoSummary {
                result: DemoResult::Failed,
                error: Some(e.to_string()),
            }
        }
    };
    let summary = Summary::new("demo", SummaryBody::Demo(summary));
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

struct Stage {
    registry: Option<Registry>,
    agent: Option<Agent>,
}

fn format_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

async fn steps(
    dir: &Path,
    stage: &mut Stage,
    out: &dyn Output,
    say: &dyn Fn(&str),
) -> Result<(), SetupError> {
    let world = set_up(dir, stage, say).await?;
    walk(&world, out, say).await
}

/// What step 1 stood up for the others.
struct World {
    cfg: DeployConfig,
    images: DemoImages,
    /// The demo app's `/version`, as published on this machine.
    app_url: String,
    /// The data volume, where migrations leave their log.
    data: PathBuf,
}

/// Step 1: the registry with the demo images, a signing key, the agent and both configs.
async fn set_up(dir: &Path, stage: &mut Stage, say: &dyn Fn(&str)) -> Result<World, SetupError> {
    let t = Instant::now();
    say("\n[1/8] setting up: registry, demo images, signing key, agent");
    let engine = setup::docker(&["version", "--format", "{{.Server.Version}}"]).await.map_err(|e| {
        SetupError(format!("the Docker engine does not answer ({e}); start it and make sure this user may use /var/run/docker.sock"))
    })?;
    say(&format!("      Docker engine {}", engine.trim()));
    let (registry, images) = setup::registry_with_images("demo/web").await?;
    let addr = stage.registry.insert(registry).addr();
    let agent_bin = setup::agent_binary().await?;
    let key = crate::signer::generate_key_files(&dir.join("signing-key"), "deployctl-demo")
        .map_err(|e| SetupError(format!("cannot make a signing key: {e}")))?;
    let web_port = demokit::free_port()?;
    write_files(dir, &addr, &key, web_port)?;
    let socket = dir.join("agent.sock");
    let log = dir.join("agent.log");
    stage.agent = Some(Agent::start(&agent_bin, &dir.join("agent.toml"), &socket, log).await?);
    let cfg =
        DeployConfig::load(&dir.join("deploy.toml")).map_err(|e| SetupError(e.to_string()))?;
    say(&format!(
        "      registry {addr}, agent on {}, app on http://127.0.0.1:{web_port} ({})",
        socket.display(),
        format_secs(t.elapsed())
    ));
    say(&format!(
        "      files: {}/deploy.toml, agent.toml, allowed_signers",
        dir.display()
    ));
    for n in 1..=3 {
        let image = images.v(n);
        say(&format!(
            "      {addr}/demo/web {}: git sha {} → {}",
            image.version, image.git_sha, image.digest
        ));
    }
    Ok(World {
        cfg,
        images,
        app_url: format!("http://127.0.0.1:{web_port}/version"),
        data: dir.join("data"),
    })
}

/// The agent's `agent.toml` and `allowed_signers`, and the app's `deploy.toml`, in `dir`.
fn write_files(
    dir: &Path,
    addr: &str,
    key: &crate::signer::GeneratedKey,
    web_port: u16,
) -> Result<(), SetupError> {
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| SetupError(format!("cannot write {name}: {e}")))
    };
    write("allowed_signers", format!("{}\n", key.allowed_signers_line))?;
    let socket = dir.join("agent.sock");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| SetupError(e.to_string()))?;
    write(
        "agent.toml",
        format!(
            "host = \"{HOST}\"\nenv = \"{ENV}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\nallowed_signers = \"{}\"\nallowed_images = [\"{addr}/demo/*\"]\nhealth_interval = \"2s\"\nshutdown_grace = \"5s\"\n\n[policy]\nvolumes = [\"{}\"]\n",
            socket.display(),
            dir.join("state").display(),
            dir.join("allowed_signers").display(),
            data.display()
        ),
    )?;
    write(
        "deploy.toml",
        format!(
            r#"app = "{APP}"
image = "{addr}/demo/web"

[services.web]
ports = ["127.0.0.1:{web_port}:8080"]
volumes = ["{data}:/data"]
health = {{ path = "/healthz", port = 8080, interval = "250ms", healthy_for = "1s", deadline = "8s" }}

[migrate]
command = ["/app", "migrate"]
service = "web"
timeout = "1m"

[env.{ENV}]
hosts = [{{ name = "{HOST}", socket = "{socket}" }}]
signing_key = "{key}"
"#,
            data = data.display(),
            socket = socket.display(),
            key = key.private_path.display(),
        ),
    )
}

/// Steps 2 to 8: the real commands, each checked by its exit code and what the app answers.
async fn walk(w: &World, out: &dyn Output, say: &dyn Fn(&str)) -> Result<(), SetupError> {
    let (cfg, env) = (&w.cfg, ENV);
    let (v1, v2, v3) = (w.images.v(1), w.images.v(2), w.images.v(3));
    let push = |reference: &str| {
        let what = What::push(reference, Migrations::Once);
        commands::rollout::rollout(cfg, env, what, out)
    };
    let args = format!("{} --env {env}   (v1, by its full git SHA)", v1.git_sha);
    let run = push(&v1.git_sha);
    step(out, "[2/8]", ("push", &args), ExitClass::Success, run).await?;
    expect_version(&w.app_url, "v1", say).await?;

    let prefix = &v2.git_sha[..7];
    let args =
        format!("{prefix} --env {env}   (v2, by a 7-character prefix; its migration runs once)");
    step(
        out,
        "[3/8]",
        ("push", &args),
        ExitClass::Success,
        push(prefix),
    )
    .await?;
    expect_version(&w.app_url, "v2", say).await?;
    show_migrations(&w.data, say)?;

    let args = format!(
        "{} --env {env}   (v3 never gets healthy: expect an automatic rollback and exit 1)",
        v3.version
    );
    let run = push(&v3.version);
    step(out, "[4/8]", ("push", &args), ExitClass::Failed, run).await?;
    say("      exit 1 means: the push failed and every host is back on its previous version (v2).");
    expect_version(&w.app_url, "v2", say).await?;

    let rollback = |to: Option<&str>| commands::rollout::rollout(cfg, env, What::rollback(to), out);
    let args = format!("--env {env}   (back to the previous healthy digest, v1)");
    step(
        out,
        "[5/8]",
        ("rollback", &args),
        ExitClass::Success,
        rollback(None),
    )
    .await?;
    expect_version(&w.app_url, "v1", say).await?;

    let args = format!("--env {env} --to {}   (forward again, to v2)", v2.version);
    let run = rollback(Some(&v2.version));
    step(out, "[6/8]", ("rollback", &args), ExitClass::Success, run).await?;
    expect_version(&w.app_url, "v2", say).await?;

    let args = format!("--env {env}");
    let run = commands::status::status(cfg, env, out);
    step(out, "[7/8]", ("status", &args), ExitClass::Success, run).await?;
    let run = commands::history::history(cfg, env, 20, out);
    step(out, "[8/8]", ("history", &args), ExitClass::Success, run).await
}

/// Shows the migrations log; the last line must be v2's.
fn show_migrations(data: &Path, say: &dyn Fn(&str)) -> Result<(), SetupError> {
    let migrations = std::fs::read_to_string(data.join("migrations.log")).unwrap_or_default();
    say(&format!(
        "      migrations.log on the data volume ({} lines, one per rollout):",
        migrations.lines().count()
    ));
    for line in migrations.lines() {
        say(&format!("        {line}"));
    }
    if !migrations
        .lines()
        .last()
        .is_some_and(|l| l.starts_with("migrated v2"))
    {
        return Err(SetupError("the v2 migration did not run".into()));
    }
    Ok(())
}

/// Runs one command (`deployctl <name> <args>`), shows its timing, and checks its exit code.
async fn step(
    out: &dyn Output,
    n: &str,
    (name, args): (&'static str, &str),
    want: ExitClass,
    command: impl std::future::Future<Output = Result<ExitClass, Error>>,
) -> Result<(), SetupError> {
    let say = |text: String| out.emit(&Message::Demo { message: text });
    say(format!("\n{n} deployctl {name} {args}"));
    let t = Instant::now();
    let exit = match command.await {
        Ok(exit) => exit,
        Err(e) => commands::stopped(out, name, &e),
    };
    say(format!(
        "      → exit {} in {}",
        exit.code(),
        format_secs(t.elapsed())
    ));
    if exit != want {
        return Err(SetupError(format!(
            "{n} exited {} where {} was expected",
            exit.code(),
            want.code()
        )));
    }
    Ok(())
}

/// Asks the running app which version it is.
async fn expect_version(url: &str, want: &str, say: &dyn Fn(&str)) -> Result<(), SetupError> {
    let got = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| SetupError(format!("GET {url}: {e}")))?
        .text()
        .await
        .map_err(|e| SetupError(format!("GET {url}: {e}")))?;
    say(&format!("      GET {url} → {}", got.trim()));
    if got.trim() != want {
        return Err(SetupError(format!(
            "the app answers {:?}, expected {want}",
            got.trim()
        )));
    }
    Ok(())
}
