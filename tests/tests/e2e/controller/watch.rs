//! Watching (issue 15): `status` over every env, `status --watch` in a real terminal (tmux)
//! redrawing when a container dies, and `deployctl ui` rendered by headless Chromium with every
//! host and service, digest and health, its event stream following a change.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::command::run;
use harness::unique_name;

use super::*;

/// `docker kill`s the host's `web` container, from outside the agent.
fn killed(host: &SshHost) -> anyhow::Result<()> {
    docker(&["kill", &host.agent.container_name(APP, "web")])?;
    Ok(())
}

#[test]
fn status_covers_every_env_and_watch_redraws_when_a_container_dies() -> anyhow::Result<()> {
    let w = world(
        &[EnvPlan::new("staging", 1), EnvPlan::new("prod", 1)],
        |_, _, _| {},
    )?;
    w.run(&["push", &w.sha(1), "--env", "staging"])?.expect(0)?;

    // no --env: every env, one summary
    let all = w.run(&["status", "--json"])?;
    all.expect(1)?; // prod runs nothing yet
    let summary = all.summary()?;
    let envs: Vec<&str> = summary["envs"]
        .as_array()
        .context("envs")?
        .iter()
        .filter_map(|e| e["env"].as_str())
        .collect();
    ensure!(envs == ["prod", "staging"], "{summary}");
    let staging = &w.fleet.hosts("staging")[0];
    ensure!(
        all.json_lines()
            .iter()
            .any(|l| l["event"] == "host_status"
                && l["host"] == format!("staging/{}", staging.name())),
        "{}",
        all.output()
    );

    // --watch in a terminal
    let socket = unique_name("tmux");
    let session = "watch";
    let deployctl = harness::hosts::deployctl_binary()?;
    let shell = format!(
        "env -u SSH_AUTH_SOCK HOME={home} {deployctl} status --watch --env staging",
        home = w.fleet.home().display(),
        deployctl = deployctl.display()
    );
    run_tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "220",
            "-y",
            "40",
            "-c",
        ],
        Some((&w.fleet.home().display().to_string(), &shell)),
    )?;
    let _tmux = TmuxServer(socket.clone());
    let pane =
        || run(Command::new("tmux").args(["-L", &socket, "capture-pane", "-p", "-t", session]));
    wait_until(
        "the watch to show web healthy",
        Duration::from_secs(20),
        || {
            let text = pane().map_err(|e| e.to_string())?;
            (text.contains(staging.name()) && text.contains("healthy"))
                .then_some(())
                .ok_or(text)
        },
    )?;
    let before = pane()?;
    killed(staging)?;
    let at = Instant::now();
    let shown = wait_until("the watch to show the kill", Duration::from_secs(5), || {
        let text = pane().map_err(|e| e.to_string())?;
        let row = text
            .lines()
            .find(|l| l.contains(staging.name()) && l.contains("web"))
            .unwrap_or_default()
            .to_string();
        (!row.contains("healthy") || row.contains("unhealthy"))
            .then_some(row)
            .ok_or(text)
    })
    .with_context(|| format!("before the kill:\n{before}"))?;
    eprintln!(
        "status --watch showed the kill after {:?}: {shown}",
        at.elapsed()
    );
    Ok(())
}

/// `tmux -L socket args… [dir command]`.
fn run_tmux(
    socket: &str,
    args: &[&str],
    dir_and_command: Option<(&str, &str)>,
) -> anyhow::Result<()> {
    let mut cmd = Command::new("tmux");
    cmd.args(["-L", socket]).args(args);
    if let Some((dir, command)) = dir_and_command {
        cmd.arg(dir).arg(command);
    }
    run(&mut cmd)?;
    Ok(())
}

/// Kills the test's own tmux server (and what runs in it) when dropped.
struct TmuxServer(String);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

#[test]
fn the_ui_page_shows_every_host_and_service_and_follows_changes() -> anyhow::Result<()> {
    let w = world(&[EnvPlan::new("staging", 2)], |_, _, _| {})?;
    w.run(&["push", &w.sha(1), "--env", "staging"])?.expect(0)?;
    let mut ui = w.fleet.spawn(&[
        "ui",
        "--env",
        "staging",
        "--listen",
        "127.0.0.1:0",
        "--json",
    ])?;
    let note = ui.until(|l| l["event"] == "note")?;
    let message = note["message"].as_str().unwrap_or_default();
    let url = message
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("no URL in {note}"))?
        .to_string();
    let hosts = w.fleet.hosts("staging");
    let digest_prefix = w.images.v(1).digest.trim_start_matches("sha256:")[..12].to_string();
    let everything_shown = |dom: &str| {
        hosts.iter().all(|h| dom.contains(h.name()))
            && dom.contains(">web<")
            && dom.contains(&digest_prefix)
            && dom.matches(">healthy<").count() >= 2
    };
    let dom = wait_until(
        "the page to show both hosts healthy",
        Duration::from_secs(30),
        || {
            let dom = chromium(&["--dump-dom", &url]).map_err(|e| e.to_string())?;
            everything_shown(&dom).then_some(dom.clone()).ok_or(dom)
        },
    )?;
    ensure!(
        dom.contains("<td data-col=\"health\">healthy</td>"),
        "{dom}"
    );
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("deployctl-ui.png");
    chromium(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1280,400",
        &url,
    ])?;
    let png = std::fs::read(&shot)?;
    ensure!(
        png.starts_with(b"\x89PNG") && png.len() > 2000,
        "no screenshot at {}",
        shot.display()
    );
    eprintln!("ui screenshot: {}", shot.display());

    // the event stream follows a container killed from outside
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut events = BufReader::new(stream);
    let mut next_rows = || -> anyhow::Result<Vec<serde_json::Value>> {
        loop {
            let mut line = String::new();
            ensure!(events.read_line(&mut line)? > 0, "the event stream ended");
            if let Some(data) = line.strip_prefix("data: ") {
                return Ok(serde_json::from_str(data)?);
            }
        }
    };
    next_rows()?;
    killed(&hosts[0])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = next_rows()?;
        let row = rows
            .iter()
            .find(|r| r["host"] == hosts[0].name() && r["service"] == "web");
        if row.is_some_and(|r| r["health"] != "healthy") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no event showed the kill: {rows:?}"
        );
    }
    drop(ui);
    Ok(())
}

/// Runs headless Chromium on `args`; its stdout.
fn chromium(args: &[&str]) -> anyhow::Result<String> {
    let profile = tempfile::tempdir()?;
    let out = harness::command::run_with_timeout(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args),
        Duration::from_secs(60),
    )?;
    Ok(out)
}
