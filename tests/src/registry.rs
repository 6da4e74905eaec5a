//! A private image registry for one test process: Debian's `docker-registry` on a free loopback
//! port (the engine allows plain HTTP to 127.0.0.0/8), storage in a temp dir, gone on drop.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::command::stop_child;
use crate::docker::docker;
use crate::error::{Error, IoContext, Result};
use crate::net::{free_port, http_get};
use crate::wait::wait_until;

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Registry {
    /// Starts a registry and waits until its `/v2/` answers.
    pub fn start() -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-registry-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match Self::try_start(&dir, port)? {
                Ok(child) => return Ok(Registry { child, port, dir }),
                // Most likely another process took the port between our probe and the bind.
                Err(why) => last = why,
            }
        }
        Err(Error::Unexpected(format!(
            "docker-registry did not start after {START_ATTEMPTS} attempts: {last}"
        )))
    }

    fn try_start(dir: &tempfile::TempDir, port: u16) -> Result<std::result::Result<Child, String>> {
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  \
                 secret: deployctl-test-registry\n",
                storage.display()
            ),
        )
        .ctx(|| format!("writing {}", config.display()))?;
        let log_path = dir.path().join("registry.log");
        let log = File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
        let log2 = log.try_clone().ctx(|| "cloning a file handle".into())?;
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .ctx(|| "starting docker-registry (apt-get install -y docker-registry)".into())?;
        let url = format!("http://127.0.0.1:{port}/v2/");
        let ready = wait_until("the registry to answer", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Ok(Err(format!("docker-registry exited ({status})")));
            }
            // The log line proves the answer below comes from our registry, not from another
            // process that took the port first.
            let listening = std::fs::read_to_string(&log_path)
                .is_ok_and(|l| l.contains(&format!("listening on 127.0.0.1:{port}")));
            match http_get(&url, Duration::from_secs(1)) {
                Ok(r) if r.status == 200 && listening => Ok(Ok(())),
                Ok(r) => Err(format!("/v2/ answered {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        });
        let failure = match ready {
            Ok(Ok(())) => return Ok(Ok(child)),
            Ok(Err(why)) => why,
            Err(e) => e.to_string(),
        };
        stop_child(&mut child);
        let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(Err(format!("{failure}; log: {}", tail(&log_text, 10))))
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT/name`, the repository to tag and push to.
    pub fn repo(&self, name: &str) -> String {
        format!("{}/{name}", self.addr())
    }

    /// `http://127.0.0.1:PORT`, for the registry HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops serving now (storage kept), e.g. to test "registry unreachable". Idempotent.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// The registry's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Drops the engine's local references to this registry's images (tags and digests), so the
    /// engine's image list does not fill with names of registries that no longer exist.
    fn forget_local_references(&self) -> Result<()> {
        let prefix = format!("{}/", self.addr());
        let listing = docker(&[
            "images",
            "--digests",
            "--format",
            "{{.Repository}} {{.Tag}} {{.Digest}}",
        ])?;
        let mut refs = Vec::new();
        for line in listing.lines() {
            let mut f = line.split_whitespace();
            let (Some(repo), Some(tag), Some(digest)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if !repo.starts_with(&prefix) {
                continue;
            }
            if tag != "<none>" {
                refs.push(format!("{repo}:{tag}"));
            }
            if digest != "<none>" {
                refs.push(format!("{repo}@{digest}"));
            }
        }
        refs.sort();
        refs.dedup();
        if !refs.is_empty() {
            let mut args = vec!["rmi"];
            args.extend(refs.iter().map(String::as_str));
            // Some refs vanish with the first ones removed; those errors mean nothing.
            let _ = docker(&args);
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop_child(&mut self.child);
        if let Err(e) = self.forget_local_references() {
            eprintln!("harness: removing local references to {}: {e}", self.addr());
        }
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
