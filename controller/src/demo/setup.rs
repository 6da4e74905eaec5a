//! What the demo stands up on this machine and takes down again: a registry, the demo app's
//! images, and an agent. Every piece is a guard that stops what it started when dropped.
//!
//! The images are built exactly like the test harness builds them (tests/src/images.rs: the
//! static `demoapp` binary from this workspace, `tests/images/demo.Dockerfile`, the same cache
//! tags), so a machine that ran the tests already has them and the reverse.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};

const DOCKERFILE_TEMPLATE: &str = include_str!("../../../tests/images/demo.Dockerfile");
const LOCAL_REPO: &str = "deployctl-demo";
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Why the demo could not set up; always says what to install or fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

type Result<T> = std::result::Result<T, SetupError>;

fn fail<T>(msg: impl Into<String>) -> Result<T> {
    Err(SetupError(msg.into()))
}

/// Runs a command to completion within `timeout`, returning stdout; errors carry stderr.
pub async fn run(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let shown = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .or_else(|e| fail(format!("cannot run {shown}: {e}")))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(r) => r.or_else(|e| fail(format!("{shown}: {e}")))?,
        Err(_) => {
            return fail(format!(
                "{shown} did not finish within {}s",
                timeout.as_secs()
            ));
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return fail(format!(
            "{shown} failed ({}): {}",
            out.status,
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn docker(args: &[&str]) -> Result<String> {
    run(Command::new("docker").args(args), Duration::from_secs(300)).await
}

/// A free TCP port on 127.0.0.1 (free when asked; the callers retry on a lost race).
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .or_else(|e| fail(format!("cannot find a free port: {e}")))
}

/// Polls `check` until it returns true or `within` passes.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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

/// `docker-registry serve` on a free loopback port, storage in `dir`.
pub struct Registry {
    pub process: Process,
    pub addr: String,
}

impl Registry {
    pub async fn start(dir: &Path) -> Result<Registry> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let config = dir.join("registry.yml");
            let text = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: deployctl-demo\n",
                dir.join("registry-data").display()
            );
            std::fs::write(&config, text)
                .or_else(|e| fail(format!("cannot write {}: {e}", config.display())))?;
            let mut process = Process::spawn(
                Command::new("docker-registry").arg("serve").arg(&config),
                dir.join("registry.log"),
            )
            .map_err(|e| {
                SetupError(format!(
                    "{e} (install it: apt-get install -y docker-registry)"
                ))
            })?;
            let url = format!("http://127.0.0.1:{port}/v2/");
            let client = reqwest::Client::new();
            let up = wait_for("the registry", Duration::from_secs(20), || {
                let req = client.get(&url).timeout(Duration::from_secs(1)).send();
                async move { req.await.is_ok_and(|r| r.status().is_success()) }
            })
            .await;
            match (up, process.exited()) {
                (Ok(()), None) => {
                    return Ok(Registry {
                        process,
                        addr: format!("127.0.0.1:{port}"),
                    });
                }
                (_, Some(status)) => {
                    last = format!("docker-registry exited ({status}): {}", process.log_tail(5))
                }
                (Err(e), None) => last = format!("{e}: {}", process.log_tail(5)),
            }
            process.stop(Duration::from_secs(2)).await;
        }
        fail(format!("the registry did not start: {last}"))
    }
}

/// The fake git commit a demo version is "built from" (the harness's `fake_git_sha`).
pub fn fake_git_sha(version: &str) -> String {
    hex(&Sha256::digest(
        format!("deployctl demo app {version}").as_bytes(),
    ))[..40]
        .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One demo version as pushed: its tags and registry digest.
#[derive(Debug, Clone)]
pub struct PushedImage {
    pub version: String,
    pub git_sha: String,
    pub digest: String,
}

/// The workspace this binary was built from, if its sources are still there.
pub fn workspace_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("DEPLOYCTL_SOURCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap_or(Path::new("/"))
                .to_path_buf()
        });
    dir.join("demoapp/Cargo.toml").is_file().then_some(dir)
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
    let (Some(ws), Some((target, release))) = (workspace_dir(), own_target_dir()) else {
        return fail(
            "deploy-agent not found next to deployctl or on PATH (build it: cargo build -p deploy-agent)",
        );
    };
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ws)
        .args(["build", "--quiet", "-p", "deploy-agent"])
        .env("CARGO_TARGET_DIR", &target);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd, Duration::from_secs(900)).await?;
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

/// Builds (if their content changed) and pushes the demo images `versions` to `registry_addr`
/// as `<registry>/<repo>`, tagged with the fake git SHA and the version.
pub async fn publish_images(
    registry_addr: &str,
    repo: &str,
    versions: &[(&str, &str, bool)],
) -> Result<Vec<PushedImage>> {
    let binary = demoapp_binary().await?;
    let bytes = std::fs::read(&binary)
        .or_else(|e| fail(format!("cannot read {}: {e}", binary.display())))?;
    let binary_hash = hex(&Sha256::digest(&bytes));
    let context =
        tempfile::tempdir().or_else(|e| fail(format!("cannot make a build context: {e}")))?;
    let app = context.path().join("demoapp");
    std::fs::write(&app, &bytes)
        .or_else(|e| fail(format!("cannot write {}: {e}", app.display())))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755))
            .or_else(|e| fail(e.to_string()))?;
    }
    let repository = format!("{registry_addr}/{repo}");
    let mut pushed = Vec::new();
    for (version, mode, migrate_fail) in versions {
        let sha = fake_git_sha(version);
        let text = DOCKERFILE_TEMPLATE
            .replace("@VERSION@", version)
            .replace("@MODE@", mode)
            .replace("@MIGRATE_FAIL@", if *migrate_fail { "1" } else { "0" })
            .replace("@GIT_SHA@", &sha);
        let content = hex(&Sha256::digest(format!("{binary_hash}\n{text}").as_bytes()));
        let local = format!("{LOCAL_REPO}:{version}-{}", &content[..16]);
        if docker(&["image", "inspect", "--format", "{{.Id}}", &local])
            .await
            .is_err()
        {
            let file = context.path().join(format!("Dockerfile.{version}"));
            std::fs::write(&file, text)
                .or_else(|e| fail(format!("cannot write {}: {e}", file.display())))?;
            let (f, c) = (
                file.display().to_string(),
                context.path().display().to_string(),
            );
            docker(&["build", "-q", "-f", &f, "-t", &local, &c]).await?;
        }
        let mut digest = None;
        for tag in [sha.as_str(), version] {
            let name = format!("{repository}:{tag}");
            docker(&["tag", &local, &name]).await?;
            let out = docker(&["push", &name]).await?;
            digest = out
                .lines()
                .find_map(|l| l.split_once(": digest: "))
                .and_then(|(_, rest)| rest.split_whitespace().next().map(String::from));
            let _ = docker(&["rmi", &name]).await;
        }
        let digest = digest
            .filter(|d| proto::order::is_digest(d))
            .ok_or_else(|| SetupError(format!("docker push printed no digest for {version}")))?;
        pushed.push(PushedImage {
            version: version.to_string(),
            git_sha: sha,
            digest,
        });
    }
    Ok(pushed)
}

/// The static demo app binary, built with cargo from this workspace (into the same directory
/// the test harness uses, so either build serves both), or `$DEPLOYCTL_DEMOAPP`.
async fn demoapp_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("DEPLOYCTL_DEMOAPP") {
        return Ok(PathBuf::from(p));
    }
    let ws = workspace_dir().ok_or_else(|| {
        SetupError("the demo builds its app from deployctl's source tree, which is not here; set DEPLOYCTL_SOURCE_DIR to a checkout or DEPLOYCTL_DEMOAPP to a static demoapp binary".into())
    })?;
    let target_dir = own_target_dir()
        .map(|(t, _)| t)
        .unwrap_or_else(|| ws.join("target"))
        .join("demoapp-static");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&ws)
        .args([
            "build",
            "--quiet",
            "--release",
            "-p",
            "demoapp",
            "--target",
            STATIC_TARGET,
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C strip=symbols",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS");
    run(&mut cmd, Duration::from_secs(900)).await.map_err(|e| {
        SetupError(format!(
            "{e} (a static build needs libc6-dev: apt-get install -y libc6-dev)"
        ))
    })?;
    let bin = target_dir.join(STATIC_TARGET).join("release/demoapp");
    if bin.is_file() {
        Ok(bin)
    } else {
        fail(format!(
            "cargo built demoapp but {} is missing",
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

/// Removes every container an agent with host name `host` made, and the engine's references
/// to images of `registry_addr`.
pub async fn remove_traces(host: &str, registry_addr: Option<&str>) {
    let filter = format!("label={}={host}", proto::order::labels::HOST);
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &filter]).await {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker(&args).await;
        }
    }
    let Some(addr) = registry_addr else { return };
    if let Ok(listing) = docker(&[
        "images",
        "--digests",
        "--format",
        "{{.Repository}} {{.Tag}} {{.Digest}}",
    ])
    .await
    {
        let prefix = format!("{addr}/");
        let mut refs = Vec::new();
        for line in listing.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [repo, tag, digest] = f[..]
                && repo.starts_with(&prefix)
            {
                if tag != "<none>" {
                    refs.push(format!("{repo}:{tag}"));
                }
                if digest != "<none>" {
                    refs.push(format!("{repo}@{digest}"));
                }
            }
        }
        if !refs.is_empty() {
            let mut args = vec!["rmi"];
            args.extend(refs.iter().map(String::as_str));
            let _ = docker(&args).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_shas_match_the_harness() {
        let sha = fake_git_sha("v1");
        assert_eq!(sha.len(), 40);
        assert_ne!(sha, fake_git_sha("v2"));
        assert!(
            DOCKERFILE_TEMPLATE.contains("@VERSION@")
                && DOCKERFILE_TEMPLATE.contains("FROM scratch")
        );
    }
}
