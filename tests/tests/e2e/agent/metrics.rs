//! `[metrics]` end to end (README, "Metrics"): a real agent with both `listen` and `textfile`
//! deploys the demo app; `GET /metrics` and the textfile show the service healthy and the deploy
//! counted, both pass `promtool check metrics` without a lint complaint, the textfile is readable
//! by others and replaced atomically, and a stopped agent leaves `deploy_agent_up 0` behind. The
//! sample alert rules pass `promtool check rules` and their own `promtool test rules`.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use harness::{free_port, http_get, http_request};

use super::*;

/// `promtool ARGS` with `stdin`: its exit code and everything it printed.
fn promtool(args: &[&str], dir: &Path, stdin: &str) -> anyhow::Result<(i32, String)> {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    child
        .stdin
        .take()
        .context("promtool's stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    let printed =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), printed))
}

/// `promtool check metrics` on `text`: exit 0 and nothing said (a lint complaint exits 3).
fn check_metrics(what: &str, text: &str) -> anyhow::Result<()> {
    let (code, printed) = promtool(&["check", "metrics"], Path::new("."), text)?;
    ensure!(
        code == 0 && printed.trim().is_empty(),
        "promtool check metrics on {what}: exit {code}: {printed}\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_and_written_and_pass_promtool() -> anyhow::Result<()> {
    let port = free_port()?;
    let textfile_dir = tempfile::Builder::new()
        .prefix("deployctl-textfile-")
        .tempdir()?;
    let textfile = textfile_dir.path().join("deploy_agent.prom");
    let body = format!(
        "textfile = {:?}\ninterval = \"1s\"\nlisten = \"127.0.0.1:{port}\"",
        textfile.display().to_string()
    );
    let w = world_with(|setup| setup.metrics = Some(body))?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let env = w.agent.env().to_string();
    let healthy =
        format!("deploy_agent_service_healthy{{app=\"{APP}\",env=\"{env}\",service=\"web\"}} 1\n");
    let counted = format!(
        "deploy_agent_deploys_total{{app=\"{APP}\",env=\"{env}\",action=\"deploy\",outcome=\"succeeded\"}} 1\n"
    );

    // Before any deploy: the agent and its host, no service yet.
    let before = http_get(&url, Duration::from_secs(10))?;
    ensure!(before.status == 200, "{before:?}");
    ensure!(
        before.header("content-type") == Some("text/plain; version=0.0.4; charset=utf-8"),
        "{before:?}"
    );
    ensure!(
        before.body.contains("\ndeploy_agent_up 1\n"),
        "{}",
        before.body
    );
    ensure!(
        before.body.contains("\ndeploy_agent_engine_up 1\n"),
        "{}",
        before.body
    );
    ensure!(
        !before.body.contains("deploy_agent_service_"),
        "{}",
        before.body
    );

    w.deploy(&w.order(w.images.v(1), Duration::from_secs(30)))
        .await?;

    let scraped = wait_until(
        "GET /metrics to show web healthy",
        Duration::from_secs(20),
        || {
            let r = http_get(&url, Duration::from_secs(10)).map_err(|e| e.to_string())?;
            if r.status == 200 && r.body.contains(&healthy) && r.body.contains(&counted) {
                Ok(r.body)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        },
    )?;
    check_metrics("GET /metrics", &scraped)?;
    let written = wait_until(
        "the textfile to show web healthy",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(&textfile).map_err(|e| e.to_string())?;
            if text.contains(&healthy) && text.contains(&counted) {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )?;
    check_metrics("the textfile", &written)?;
    ensure!(
        written.contains(&format!(
            "deploy_agent_info{{version=\"{}\",host=\"{}\",env=\"{env}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            w.agent.host()
        )),
        "{written}"
    );

    // node_exporter runs as another user: the file is world-readable whatever the umask, and
    // nothing but it is left in the collector's directory (the temporary is renamed over it).
    let mode = std::fs::metadata(&textfile)?.permissions().mode() & 0o777;
    ensure!(mode == 0o644, "the textfile's mode is {mode:o}");
    let names: Vec<String> = std::fs::read_dir(textfile_dir.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().to_string()))
        .collect::<Result<_, _>>()?;
    ensure!(names == ["deploy_agent.prom"], "{names:?}");

    // One resource, two methods.
    let other = http_get(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(10),
    )?;
    ensure!(other.status == 404, "{other:?}");
    let post = http_request("POST", &url, &[], Duration::from_secs(10))?;
    ensure!(post.status == 405, "{post:?}");

    // A clean stop: the listener is gone and the textfile says the agent is down.
    let mut agent = w.agent;
    let status = agent.terminate(Duration::from_secs(60))?;
    ensure!(status.success(), "the agent exited {status}");
    let stopped = std::fs::read_to_string(&textfile)?;
    ensure!(stopped.contains("\ndeploy_agent_up 0\n"), "{stopped}");
    ensure!(!stopped.contains("deploy_agent_service_"), "{stopped}");
    check_metrics("the textfile of a stopped agent", &stopped)?;
    ensure!(
        http_get(&url, Duration::from_secs(5)).is_err(),
        "the listener still answers after the agent stopped"
    );
    Ok(())
}

#[test]
fn the_alert_rules_pass_promtool() -> anyhow::Result<()> {
    require_prereqs()?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/prometheus");
    let (code, printed) = promtool(&["check", "rules", "deploy-agent.rules.yml"], &dir, "")?;
    ensure!(
        code == 0 && printed.contains("SUCCESS: 7 rules found"),
        "promtool check rules: exit {code}: {printed}"
    );
    let (code, printed) = promtool(&["test", "rules", "deploy-agent.rules.test.yml"], &dir, "")?;
    ensure!(
        code == 0 && printed.contains("SUCCESS"),
        "promtool test rules: exit {code}: {printed}"
    );
    Ok(())
}
