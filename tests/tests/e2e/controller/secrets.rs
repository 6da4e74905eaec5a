//! Env files hold secrets (issue "A signing key is not root"): no line of one appears in any
//! outcome, journal, log or reply; an error about a line names its file and number only.
//!
//! One host runs a container service (`web`, env_file read by the agent) and a compose service
//! (`api`, whose compose file reads the same kind of file itself, plus one only compose reads).
//! Secrets go on a valid line, on lines the agent refuses (no `=`, a NUL byte) and on a line
//! only compose reads, where runc's refusal quotes the whole `KEY=VALUE` and compose passes it
//! on. Then every place deployctl or the agent writes text is searched for each of them.

use std::path::{Path, PathBuf};

use super::*;

/// The files a host reads for the test's services.
struct EnvFiles {
    web: PathBuf,
    api: PathBuf,
    /// Named only in the compose file: compose reads it, the agent never does.
    compose_only: PathBuf,
}

impl EnvFiles {
    fn write(path: &Path, text: &str) -> anyhow::Result<()> {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Every file with only valid lines, `DB_PASSWORD` set to `password`.
    fn all_valid(&self, password: &str) -> anyhow::Result<()> {
        let text = format!("# the database\nDB_USER=app\nDB_PASSWORD={password}\n");
        Self::write(&self.web, &text)?;
        Self::write(&self.api, &text)?;
        Self::write(&self.compose_only, "COMPOSE_ONLY=1\n")
    }
}

/// What the engine puts where it cut an environment entry out of a message
/// (`deploy::plan::HIDDEN_ENV_ENTRY`; the harness does not depend on `deploy`).
const HIDDEN_ENV_ENTRY: &str = "[not shown: it may hold a secret]";

/// Where the search looks: a name for the message, and the text.
type Place = (String, String);

/// Every file under `dir`, as text (invalid UTF-8 replaced, which keeps ASCII secrets).
fn files_under(dir: &Path, out: &mut Vec<Place>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files_under(&path, out)?;
        } else {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push((
                format!("agent state file {}", path.display()),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    Ok(())
}

fn run_places(run: &Run, out: &mut Vec<Place>) {
    out.push((format!("stdout of `{}`", run.command), run.stdout.clone()));
    out.push((format!("stderr of `{}`", run.command), run.stderr.clone()));
}

/// The lines of `text` holding `needle`, for a failure message that shows the leak, not a
/// whole journal.
fn lines_with(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The environment of the compose project's `api` container.
fn compose_api_env(project: &str) -> anyhow::Result<Vec<String>> {
    let filter = format!("label=com.docker.compose.project={project}");
    let names = docker(&["ps", "--filter", &filter, "--format", "{{.Names}}"])?;
    let name = names
        .lines()
        .find(|l| !l.trim().is_empty())
        .context("no running api container")?;
    container_env(name)
}

fn container_env(name: &str) -> anyhow::Result<Vec<String>> {
    Ok(docker_inspect(name)?["Config"]["Env"]
        .as_array()
        .context("Config.Env")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

#[test]
fn a_secret_in_an_env_file_never_appears_in_outcomes_journals_logs_or_replies() -> anyhow::Result<()>
{
    let mut w = world(&[EnvPlan::new("staging", 1)], |_, _, _| {})?;
    let home = w.fleet.home().to_path_buf();
    let tag = harness::unique_name("secret");
    // Distinct, and none a part of another, so each search finds only its own.
    let on_valid_line = format!("hunter2-valid-{tag}");
    let on_line_without_eq = format!("hunter2-noeq-{tag}");
    let before_a_nul = format!("hunter2-nul-{tag}");
    let compose_only_nul = format!("hunter2-compose-{tag}");

    let files = EnvFiles {
        web: home.join("web.env"),
        api: home.join("api.env"),
        compose_only: home.join("compose-only.env"),
    };
    files.all_valid(&on_valid_line)?;
    let project = harness::unique_name("secrets");
    let project_dir = home.join(&project);
    std::fs::create_dir_all(&project_dir)?;
    let compose_file = project_dir.join("compose.yaml");
    std::fs::write(
        &compose_file,
        format!(
            "version: \"2.4\"\nservices:\n  api:\n    image: {}\n    env_file:\n      - {}\n      - {}\n",
            quote(&w.images.v(1).pinned()),
            quote(&files.api.display().to_string()),
            quote(&files.compose_only.display().to_string()),
        ),
    )?;
    w.fleet.hosts_mut("staging")[0]
        .agent
        .cleanup()
        .compose_project(&project);
    let health = r#"{ path = "/healthz", port = 8080, interval = "200ms", healthy_for = "1s", deadline = "20s" }"#;
    w.fleet.write_config(&format!(
        r#"app = "{APP}"
image = {image}

[services.web]
env_file = {web}
health = {health}

[services.api]
kind = "compose"
compose_file = {compose}
compose_service = "api"
env_file = {api}
health = {health}
"#,
        image = quote(w.images.repository()),
        web = quote(&files.web.display().to_string()),
        api = quote(&files.api.display().to_string()),
        compose = quote(&compose_file.display().to_string()),
    ))?;

    let mut places: Vec<Place> = Vec::new();
    let push = |w: &World, places: &mut Vec<Place>, json: bool| -> anyhow::Result<Run> {
        let mut args = vec!["push", "v2", "--env", "staging"];
        if json {
            args.push("--json");
        }
        let run = w.run(&args)?;
        run_places(&run, places);
        Ok(run)
    };

    // 1. A valid line: the secret reaches both containers, and nothing else.
    for args in [
        &["push", "v1", "--env", "staging"][..],
        &["push", "v1", "--env", "staging", "--json"][..],
    ] {
        let run = w.run(args)?;
        run.expect(0)?;
        run_places(&run, &mut places);
    }
    let password = format!("DB_PASSWORD={on_valid_line}");
    let host = &w.fleet.hosts("staging")[0];
    ensure!(
        container_env(&host.agent.container_name(APP, "web"))?.contains(&password),
        "the web container got the env file"
    );
    ensure!(
        compose_api_env(&project)?.contains(&password),
        "the compose api container got the env file"
    );

    // 2. A line without `=`, as a secret pasted without its name: refused by file and line, for
    //    either kind of service, before anything changes.
    let malformed = format!("# the database\nDB_USER=app\n{on_line_without_eq}\n");
    for (file, service) in [(&files.web, "web"), (&files.api, "api")] {
        EnvFiles::write(file, &malformed)?;
        for json in [false, true] {
            let run = push(&w, &mut places, json)?;
            run.expect(1)?;
            let out = run.output();
            ensure!(
                out.contains(&format!(
                    "service {service}: env_file {}: line 3: expected KEY=VALUE",
                    file.display()
                )),
                "the error names the service, file and line:\n{out}"
            );
        }
        files.all_valid(&on_valid_line)?;
    }

    // 3. A NUL byte in a value, which runc refuses quoting the whole entry: the agent refuses
    //    the line itself, by number.
    EnvFiles::write(
        &files.web,
        &format!("DB_USER=app\nDB_PASSWORD={before_a_nul}\0tail\n"),
    )?;
    for json in [false, true] {
        let run = push(&w, &mut places, json)?;
        run.expect(1)?;
        let out = run.output();
        ensure!(
            out.contains(&format!(
                "env_file {}: line 2: the value holds a NUL byte",
                files.web.display()
            )),
            "the error names the file and line:\n{out}"
        );
    }
    files.all_valid(&on_valid_line)?;

    // 4. The same in a file only compose reads: compose fails (and so does putting v1 back, from
    //    the same file), passing on runc's refusal, which reaches the outcome without the entry.
    EnvFiles::write(
        &files.compose_only,
        &format!("COMPOSE_ONLY=1\nLEAKY={compose_only_nul}\0tail\n"),
    )?;
    let run = push(&w, &mut places, true)?;
    ensure!(
        run.code != Some(0),
        "compose cannot start a container with a NUL in its environment:\n{}",
        run.output()
    );
    ensure!(
        run.stdout
            .contains("environment variable value can't contain null")
            && run.stdout.contains(HIDDEN_ENV_ENTRY),
        "runc's refusal is passed on with the entry cut out:\n{}",
        run.output()
    );
    files.all_valid(&on_valid_line)?;

    // Everything that could carry text: read-only commands in both renderings, the agent's log
    // and every file it keeps.
    for args in [
        &["history", "--env", "staging", "-n", "50"][..],
        &["history", "--env", "staging", "-n", "50", "--json"][..],
        &["logs", "--env", "staging", "-n", "200"][..],
        &["logs", "--env", "staging", "-n", "200", "--json"][..],
        &["status", "--env", "staging"][..],
        &["status", "--env", "staging", "--json"][..],
    ] {
        let run = w.run(args)?;
        run_places(&run, &mut places);
    }
    let host = &w.fleet.hosts("staging")[0];
    places.push(("the agent's log".into(), host.agent.log()));
    files_under(&host.agent.state_dir(), &mut places)?;
    ensure!(
        places.iter().any(|(name, _)| name.contains("/orders/")),
        "the journal was searched: {:?}",
        places.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );

    let secrets = [
        ("the secret on a valid line", &on_valid_line),
        ("the secret on a line without '='", &on_line_without_eq),
        ("the secret before a NUL", &before_a_nul),
        ("the secret only compose reads", &compose_only_nul),
    ];
    let mut leaks = Vec::new();
    for (what, secret) in secrets {
        for (place, text) in &places {
            if text.contains(secret.as_str()) {
                leaks.push(format!(
                    "{what} is in {place}:\n{}",
                    lines_with(text, secret)
                ));
            }
        }
    }
    ensure!(leaks.is_empty(), "{}", leaks.join("\n\n"));
    Ok(())
}
