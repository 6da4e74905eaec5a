//! A throwaway image registry: Debian's `docker-registry` on a free loopback port (the engine
//! allows plain HTTP to 127.0.0.0/8, and TLS there without checking the certificate), storage
//! in a temp dir, gone on drop. [`RegistryOptions`] make it ask for a password (htpasswd) or
//! serve TLS, for the tests of registry credentials and private CAs.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::command::{await_server, docker, run, stop_child};
use crate::error::{Error, IoContext, Result};

const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(20);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A port on 127.0.0.1 that was free a moment ago. Another process may take it before the
/// caller binds it, so servers started on it are retried on "address in use".
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .ctx(|| "binding 127.0.0.1:0 to find a free port".into())?;
    Ok(listener
        .local_addr()
        .ctx(|| "reading the bound address".into())?
        .port())
}

/// How a registry differs from the default: open, plain HTTP.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// The one user and password it lets in (HTTP basic auth, from a bcrypt htpasswd file).
    pub basic_auth: Option<(String, String)>,
    /// Its certificate chain and key (PEM files): it serves TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
}

pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    options: RegistryOptions,
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
    /// Starts an open registry and waits until its `/v2/` answers.
    pub fn start() -> Result<Registry> {
        Registry::start_with(RegistryOptions::default())
    }

    /// Starts a registry as `options` say and waits until its `/v2/` answers. The Docker CLI
    /// pushes of [`crate::DemoImages`] get in with [`Registry::docker_config_dir`].
    pub fn start_with(options: RegistryOptions) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-registry-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let extra = registry_config(dir.path(), &options)?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match Self::try_start(&dir, port, &extra, &options)? {
                Ok(child) => {
                    let registry = Registry {
                        child,
                        port,
                        dir,
                        options,
                    };
                    registry.write_docker_config()?;
                    return Ok(registry);
                }
                // Most likely another process took the port between our probe and the bind.
                Err(why) => last = why,
            }
        }
        Err(Error::Unexpected(format!(
            "docker-registry did not start after {START_ATTEMPTS} attempts: {last}"
        )))
    }

    fn try_start(
        dir: &tempfile::TempDir,
        port: u16,
        extra: &str,
        options: &RegistryOptions,
    ) -> Result<std::result::Result<Child, String>> {
        let config = dir.path().join("config.yml");
        let storage = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  \
                 secret: deployctl-throwaway-registry\n{extra}",
                storage.display()
            ),
        )
        .ctx(|| format!("writing {}", config.display()))?;
        let log_path = dir.path().join("registry.log");
        let log = File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
        let log2 = log.try_clone().ctx(|| "cloning a file handle".into())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .ctx(|| "starting docker-registry (apt-get install -y docker-registry)".into())?;
        let listening = format!("listening on 127.0.0.1:{port}");
        // What `GET /v2/` in plain HTTP gets from our registry once it serves: a TLS server's
        // 400 to plain HTTP, a 401 asking for the password, or the open registry's 200.
        let serving = match options {
            RegistryOptions { tls: Some(_), .. } => 400,
            RegistryOptions {
                basic_auth: Some(_),
                ..
            } => 401,
            _ => 200,
        };
        Ok(await_server(
            child,
            "docker-registry",
            &log_path,
            START_TIMEOUT,
            // The log line proves the answer comes from our registry, not from another process
            // that took the port first.
            |log| match v2_status(port) {
                Ok(status) if status == serving && log.contains(&listening) => Ok(()),
                Ok(status) => Err(format!("/v2/ answered {status}")),
                Err(e) => Err(e.to_string()),
            },
        ))
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

    /// `http://127.0.0.1:PORT` (`https://` when it serves TLS), for the registry HTTP API.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr())
    }

    /// For a registry that asks for a password: a Docker CLI config dir holding it, so `docker
    /// push` gets in without a `docker login` into the user's own config. None for an open one
    /// (the user's config is used, with whatever context it names).
    pub fn docker_config_dir(&self) -> Option<PathBuf> {
        self.options
            .basic_auth
            .as_ref()
            .map(|_| self.dir.path().join("docker"))
    }

    /// `{"auths": {"127.0.0.1:PORT": …}}` in [`Registry::docker_config_dir`].
    fn write_docker_config(&self) -> Result<()> {
        let (Some(dir), Some((user, password))) =
            (self.docker_config_dir(), &self.options.basic_auth)
        else {
            return Ok(());
        };
        std::fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let path = dir.join("config.json");
        let config = format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{auth}\"}}}}}}\n",
            self.addr()
        );
        std::fs::write(&path, config).ctx(|| format!("writing {}", path.display()))
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
    /// engine's image list does not fill with names of registries that no longer exist, and a
    /// deploy of one of them really pulls it.
    pub fn forget_local_references(&self) -> Result<()> {
        let listing = docker(&[
            "images",
            "--digests",
            "--format",
            "{{.Repository}} {{.Tag}} {{.Digest}}",
        ])?;
        let refs = local_references(&listing, &self.addr());
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
            eprintln!(
                "registry: removing local references to {}: {e}",
                self.addr()
            );
        }
    }
}

/// The `auth` and `http.tls` sections of the registry's config.yml for `options`, with the
/// htpasswd file they name written into `dir`.
fn registry_config(dir: &Path, options: &RegistryOptions) -> Result<String> {
    let mut extra = String::new();
    // Under `http:`, which the config ends with: before any top-level section.
    if let Some((cert, key)) = &options.tls {
        extra.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            cert.display(),
            key.display()
        ));
    }
    if let Some((user, password)) = &options.basic_auth {
        // The registry reads bcrypt entries only.
        let line = run(Command::new("htpasswd").args(["-Bbn", user, password])).map_err(|e| {
            Error::Unexpected(format!("htpasswd (apt-get install apache2-utils): {e}"))
        })?;
        let path = dir.join("htpasswd");
        std::fs::write(&path, line.trim()).ctx(|| format!("writing {}", path.display()))?;
        extra.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: deployctl-test\n    path: {}\n",
            path.display()
        ));
    }
    Ok(extra)
}

/// The status code `GET /v2/` on 127.0.0.1:`port` answers with.
fn v2_status(port: u16) -> std::io::Result<u16> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    // HTTP/1.0: the server closes after one reply, so reading to the end is bounded.
    write!(
        stream,
        "GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )?;
    let mut head = Vec::new();
    stream.take(64).read_to_end(&mut head)?;
    status_code(&head).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP reply: {:?}", String::from_utf8_lossy(&head)),
        )
    })
}

/// `HTTP/1.1 200 OK…` → 200.
fn status_code(reply: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(reply.split(|&b| b == b'\r').next()?).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

/// `docker images --digests` lines (`repo tag digest`) → every tag and digest reference to a
/// repository of the registry at `addr`, sorted, each once.
fn local_references(listing: &str, addr: &str) -> Vec<String> {
    let prefix = format!("{addr}/");
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
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let cases: [(&[u8], Option<u16>); 5] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", Some(200)),
            (b"HTTP/1.0 401 Unauthorized\r\n", Some(401)),
            (b"SSH-2.0-OpenSSH_9.2\r\n", None),
            (b"HTTP/1.1 abc\r\n", None),
            (b"", None),
        ];
        for (reply, want) in cases {
            assert_eq!(
                status_code(reply),
                want,
                "{:?}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[test]
    fn only_this_registrys_references_are_forgotten() {
        let d = format!("sha256:{}", "a".repeat(64));
        let listing = format!(
            "127.0.0.1:5000/demo v1 {d}\n127.0.0.1:5000/demo <none> {d}\n\
             127.0.0.1:50001/demo v1 {d}\n127.0.0.1:5000/x/y <none> <none>\nbusybox latest <none>\nshort line\n"
        );
        assert_eq!(
            local_references(&listing, "127.0.0.1:5000"),
            vec![
                "127.0.0.1:5000/demo:v1".to_string(),
                format!("127.0.0.1:5000/demo@{d}"),
            ]
        );
    }
}
