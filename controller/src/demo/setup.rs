//! What the demo stands up on this machine and takes down again: a registry and the demo app's
//! images ([`demokit`], the very code the test harness uses, so a machine that ran the tests
//! already has the images and the reverse), and an agent. demokit is blocking; it runs here on
//! tokio's blocking threads. Every piece stops what it started when dropped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use demokit::{DemoImages, Registry};
use tokio::process::{Child, Command};

/// Why the demo could not set up; always says what to install or fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

impl From<demokit::Error> for SetupError {
    fn from(e: demokit::Error) -> SetupError {
        SetupError(e.to_string())
    }
}

type Result<T> = std::result::Result<T, SetupError>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(SetupError(msg.into()))
}

/// Runs blocking demokit work on tokio's blocking threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> demokit::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(e) => fail(format!("a setup task failed: {e}")),
    }
}

/// `docker ARGS…`'s stdout.
pub async fn docker(args: &[&str]) -> Result<String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    blocking(move || demokit::docker(&args.iter().map(String::as_str).collect::<Vec<_>>())).await
}

/// A registry on a free loopback port with the demo images pushed as `<registry>/<repo>`.
pub async fn registry_with_images(repo: &'static str) -> Result<(Registry, DemoImages)> {
    // On a failed publish the registry is dropped right here, which stops it.
    blocking(move || {
        let registry = Registry::start()?;
        let images = DemoImages::publish(&registry, repo)?;
        Ok((registry, images))
    })
    .await
}

/// Stops the registry and drops the engine's references to its images (blocking work).
pub async fn stop_registry(registry: Registry) {
    if let Err(e) = blocking(move || {
        drop(registry);
        Ok(())
    })
    .await
    {
        eprintln!("deployctl demo: stopping the registry: {e}");
    }
}

/// Polls `check` until it returns true or `within` passes.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(demokit::wait::POLL).await;
    }
    fail(format!(
        "timed out after {}s waiting for {what}",
        within.as_secs()
    ))
}

/// A child process killed when dropped.
pub struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Result<Process> {
        let file = std::fs::File::create(&log)
            .or_else(|e| fail(format!("cannot create {}: {e}", log.display())))?;
        let file2 = file.try_clone().or_else(|e| fail(e.to_string()))?;
        let shown = format!("{:?}", cmd.as_std());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .kill_on_drop(true)
            .spawn()
            .or_else(|e| fail(format!("cannot start {shown}: {e}")))?;
        Ok(Process { child, log })
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// The last lines the process logged.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, a grace period, then SIGKILL.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// The target dir next to the running binary (`…/target/<profile>/deployctl` → `…/target`) and
/// whether it is a release build.
fn own_target_dir() -> Option<(PathBuf, bool)> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    Some((profile_dir.parent()?.to_path_buf(), release))
}

/// The `deploy-agent` binary: next to this one, else on PATH, else built from the workspace
/// this binary came from.
pub async fn agent_binary() -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("deploy-agent")));
    if let Some(bin) = beside.filter(|b| b.is_file()) {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("deploy-agent"))
        .find(|p| p.is_file());
    if let Some(bin) = on_path {
        return Ok(bin);
    }
    let (Some(ws), Some((target, release))) = (demokit::workspace_dir(), own_target_dir()) else {
        return fail(
            "deploy-agent not found next to deployctl or on PATH (build it: cargo build -p deploy-agent)",
        );
    };
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ws)
        .args(["build", "--quiet", "-p", "deploy-agent"])
        .env("CARGO_TARGET_DIR", &target);
    if release {
        cmd.arg("--release");
    }
    blocking(move || demokit::command::run_with_timeout(&mut cmd, Duration::from_secs(900)))
        .await?;
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("deploy-agent");
    if bin.is_file() {
        Ok(bin)
    } else {
        fail(format!(
            "cargo built deploy-agent but {} is missing",
            bin.display()
        ))
    }
}

/// A `deploy-agent run` with its own config, socket and state under `dir`.
pub struct Agent {
    pub process: Process,
}

impl Agent {
    pub async fn start(binary: &Path, config: &Path, socket: &Path, log: PathBuf) -> Result<Agent> {
        let mut process = Process::spawn(
            Command::new(binary).arg("run").arg("--config").arg(config),
            log,
        )?;
        let sock = socket.to_path_buf();
        let up = wait_for("the agent's socket", Duration::from_secs(30), || {
            let sock = sock.clone();
            async move { tokio::net::UnixStream::connect(&sock).await.is_ok() }
        })
        .await;
        match (up, process.exited()) {
            (Ok(()), None) => Ok(Agent { process }),
            (_, Some(status)) => fail(format!(
                "deploy-agent exited ({status}): {}",
                process.log_tail(10)
            )),
            (Err(e), None) => {
                let tail = process.log_tail(10);
                process.stop(Duration::from_secs(2)).await;
                fail(format!("{e}: {tail}"))
            }
        }
    }
}

/// Removes every container an agent with host name `host` made. Best effort: the demo's
/// outcome does not depend on it.
pub async fn remove_containers(host: &str) {
    let filter = format!("label={}={host}", proto::order::labels::HOST);
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]).await {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker(&args).await;
        }
    }
}
