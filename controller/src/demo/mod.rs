//! `deployctl demo` (DESIGN §9): the whole product on one machine in about a minute.
//!
//! Starts a registry, builds and pushes the demo app (it uses v1, v2 healthy; v3 never
//! healthy), runs an agent on a local socket, then drives the real commands in-process: push v1 by git SHA,
//! push v2 by a 7-character prefix (its migration runs once), push v3 (health fails, the agent
//! rolls back, exit 1), rollback, status, history. Each step prints its timing; everything it
//! started is removed at the end, also on failure, and leftovers of an interrupted run are
//! removed at the start, so it is safe to run twice.

mod setup;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::commands;
use crate::config::DeployConfig;
use crate::output;
use crate::{Error, ExitClass};
use demokit::Registry;
use setup::{Agent, SetupError};

/// The agent's host name; every container of the demo carries it as a label.
const HOST: &str = "deployctl-demo";
const ENV: &str = "demo";
const APP: &str = "deployctl-demo";

pub async fn run(json: bool) -> Result<ExitClass, Error> {
    let started = Instant::now();
    let say = |text: &str| {
        if json {
            output::print_json(&json!({"event": "demo", "message": text}));
        } else {
            println!("{text}");
        }
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
    let result = steps(dir.path(), &mut stage, json, &say).await;
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
    match result {
        Ok(()) => {
            say(&format!(
                "demo finished in {took}: every step behaved as expected."
            ));
            if json {
                output::print_json(
                    &json!({"event": "summary", "command": "demo", "result": "succeeded", "exit_code": 0}),
                );
            }
            Ok(ExitClass::Success)
        }
        Err(e) => {
            say(&format!("demo FAILED after {took}: {e}"));
            if json {
                output::print_json(
                    &json!({"event": "summary", "command": "demo", "result": "failed", "error": e.to_string(), "exit_code": 1}),
                );
            }
            Ok(ExitClass::RolledBack)
        }
    }
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
    json: bool,
    say: &dyn Fn(&str),
) -> Result<(), SetupError> {
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
            "host = \"{HOST}\"\nenv = \"{ENV}\"\nsocket = \"{}\"\nstate_dir = \"{}\"\nallowed_signers = \"{}\"\nallowed_images = [\"{addr}/demo/*\"]\nhealth_interval = \"2s\"\nshutdown_grace = \"5s\"\n",
            socket.display(),
            dir.join("state").display(),
            dir.join("allowed_signers").display()
        ),
    )?;
    let web_port = demokit::free_port()?;
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
    )?;
    stage.agent = Some(
        Agent::start(
            &agent_bin,
            &dir.join("agent.toml"),
            &socket,
            dir.join("agent.log"),
        )
        .await?,
    );
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
    let (v1, v2, v3) = (images.v(1), images.v(2), images.v(3));
    for image in [v1, v2, v3] {
        say(&format!(
            "      {addr}/demo/web {}: git sha {} → {}",
            image.version, image.git_sha, image.digest
        ));
    }

    let app_url = format!("http://127.0.0.1:{web_port}/version");
    let env = ENV;

    step(
        say,
        "[2/8]",
        &format!(
            "deployctl push {} --env {env}   (v1, by its full git SHA)",
            v1.git_sha
        ),
        ExitClass::Success,
        commands::push::push(
            &cfg,
            env,
            &v1.git_sha,
            commands::push::Migrations::Once,
            json,
        ),
    )
    .await?;
    expect_version(&app_url, "v1", say).await?;

    let prefix = &v2.git_sha[..7];
    step(say, "[3/8]", &format!("deployctl push {prefix} --env {env}   (v2, by a 7-character prefix; its migration runs once)"), ExitClass::Success, commands::push::push(&cfg, env, prefix, commands::push::Migrations::Once, json)).await?;
    expect_version(&app_url, "v2", say).await?;
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

    step(say, "[4/8]", &format!("deployctl push {} --env {env}   (v3 never gets healthy: expect an automatic rollback and exit 1)", v3.version), ExitClass::RolledBack, commands::push::push(&cfg, env, &v3.version, commands::push::Migrations::Once, json)).await?;
    say("      exit 1 means: the push failed and every host is back on its previous version (v2).");
    expect_version(&app_url, "v2", say).await?;

    step(
        say,
        "[5/8]",
        &format!("deployctl rollback --env {env}   (back to the previous healthy digest, v1)"),
        ExitClass::Success,
        commands::rollback::rollback(&cfg, env, None, json),
    )
    .await?;
    expect_version(&app_url, "v1", say).await?;

    step(
        say,
        "[6/8]",
        &format!(
            "deployctl rollback --env {env} --to {}   (forward again, to v2)",
            v2.version
        ),
        ExitClass::Success,
        commands::rollback::rollback(&cfg, env, Some(&v2.version), json),
    )
    .await?;
    expect_version(&app_url, "v2", say).await?;

    step(
        say,
        "[7/8]",
        &format!("deployctl status --env {env}"),
        ExitClass::Success,
        commands::status::status(&cfg, env, json),
    )
    .await?;
    step(
        say,
        "[8/8]",
        &format!("deployctl history --env {env}"),
        ExitClass::Success,
        commands::history::history(&cfg, env, 20, json),
    )
    .await?;
    Ok(())
}

/// Runs one command, prints its timing, and checks its exit code.
async fn step(
    say: &dyn Fn(&str),
    n: &str,
    title: &str,
    want: ExitClass,
    command: impl std::future::Future<Output = Result<ExitClass, Error>>,
) -> Result<(), SetupError> {
    say(&format!("\n{n} {title}"));
    let t = Instant::now();
    let exit = match command.await {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("deployctl: {e}");
            e.exit()
        }
    };
    say(&format!(
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
