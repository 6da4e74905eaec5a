//! A real OpenSSH server for one test: a second `sshd` on a free loopback port with its own host
//! key and authorized_keys in a temp dir, running as the current user; killed on drop. Plus
//! user keys made with `ssh-keygen`.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::command::{await_server, run, stop_child};
use crate::error::{Error, IoContext, Result};
use crate::net::free_port;

const SSHD: &str = "/usr/sbin/sshd";
const START_ATTEMPTS: usize = 5;
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// An ed25519 user key pair in OpenSSH format, without a passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    /// `ssh-ed25519 AAAA… comment`, for authorized_keys or allowed_signers.
    pub public_line: String,
}

impl ClientKey {
    /// Makes a new key in `dir` (under a fresh file name, so one dir can hold many).
    pub fn generate(dir: &Path) -> Result<ClientKey> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!("id_ed25519_{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let private_path = dir.join(&name);
        let comment = format!("{name}@deployctl-test");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f"])
            .arg(&private_path))?;
        let public_path = dir.join(format!("{name}.pub"));
        let public_line = std::fs::read_to_string(&public_path)
            .ctx(|| format!("reading {}", public_path.display()))?
            .trim()
            .to_string();
        Ok(ClientKey {
            private_path,
            public_path,
            public_line,
        })
    }
}

/// Settings beyond the defaults of [`Sshd::start`].
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Lines of authorized_keys.
    pub authorized_keys: Vec<String>,
    /// `SetEnv NAME=value` for every session, e.g. a `PATH` that finds `deploy-agent`.
    pub set_env: Vec<(String, String)>,
    /// Raw sshd_config lines appended last.
    pub extra_config: Vec<String>,
}

pub struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    host_public: String,
    user: String,
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Sshd {
    /// Starts sshd accepting these public keys, and waits until it listens.
    pub fn start(authorized_keys: &[String]) -> Result<Sshd> {
        Self::start_with(SshdOptions {
            authorized_keys: authorized_keys.to_vec(),
            ..SshdOptions::default()
        })
    }

    pub fn start_with(options: SshdOptions) -> Result<Sshd> {
        // sshd's privilege separation directory; the package creates it only for its service.
        if !Path::new("/run/sshd").is_dir() {
            std::fs::create_dir_all("/run/sshd")
                .ctx(|| "creating /run/sshd (run as root)".into())?;
        }
        let dir = tempfile::Builder::new()
            .prefix("deployctl-sshd-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let host_key = dir.path().join("ssh_host_ed25519_key");
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "deployctl-test-host",
                "-f",
            ])
            .arg(&host_key))?;
        let host_public = std::fs::read_to_string(dir.path().join("ssh_host_ed25519_key.pub"))
            .ctx(|| "reading the host public key".into())?;
        // `ssh-ed25519 AAAA…` without the comment.
        let host_public = host_public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let authorized = dir.path().join("authorized_keys");
        let mut keys = options.authorized_keys.join("\n");
        keys.push('\n');
        std::fs::write(&authorized, keys).ctx(|| format!("writing {}", authorized.display()))?;
        let user = run(Command::new("id").arg("-un"))?.trim().to_string();

        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let config = dir.path().join("sshd_config");
            std::fs::write(&config, sshd_config(dir.path(), port, &options))
                .ctx(|| format!("writing {}", config.display()))?;
            match try_start(dir.path(), &config, port)? {
                Ok(child) => {
                    let sshd = Sshd {
                        child,
                        port,
                        dir,
                        host_public,
                        user,
                    };
                    let known_hosts = sshd.known_hosts_file();
                    std::fs::write(&known_hosts, format!("{}\n", sshd.known_hosts_line()))
                        .ctx(|| format!("writing {}", known_hosts.display()))?;
                    return Ok(sshd);
                }
                // Most likely another process took the port between our probe and the bind.
                Err(why) => last = why,
            }
        }
        Err(Error::Unexpected(format!(
            "sshd did not start after {START_ATTEMPTS} attempts: {last}"
        )))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user sessions run as (whoever runs the tests).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// `user@127.0.0.1:PORT`, as a deploy.toml host.
    pub fn host_spec(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user, self.port)
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_public)
    }

    /// A file holding [`Self::known_hosts_line`] and nothing else.
    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// `ssh-ed25519 AAAA…` (no comment).
    pub fn host_public_key(&self) -> &str {
        &self.host_public
    }

    /// The host's public key file, as sshd's own `/etc/ssh/ssh_host_ed25519_key.pub` would be.
    pub fn host_public_key_path(&self) -> PathBuf {
        self.dir.path().join("ssh_host_ed25519_key.pub")
    }

    /// `SHA256:…`, as ssh prints it.
    pub fn host_key_fingerprint(&self) -> Result<String> {
        let out = run(Command::new("ssh-keygen")
            .arg("-lf")
            .arg(self.dir.path().join("ssh_host_ed25519_key.pub")))?;
        out.split_whitespace()
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| Error::Unexpected(format!("ssh-keygen -lf printed {out:?}")))
    }

    /// Adds a key to authorized_keys; sshd reads the file at each login.
    pub fn authorize(&self, public_line: &str) -> Result<()> {
        use std::io::Write;
        let path = self.dir.path().join("authorized_keys");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        writeln!(f, "{public_line}").ctx(|| format!("writing {}", path.display()))
    }

    /// `ssh` with this key, host keys checked against [`Self::known_hosts_file`], never asking
    /// anything; add the remote command with `.arg(…)`.
    pub fn ssh_command(&self, key: &ClientKey) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&key.private_path)
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts_file().display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args([
                "-o",
                "IdentityAgent=none",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", self.user));
        cmd
    }

    /// Stops accepting connections now, e.g. to make a host unreachable. Idempotent.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// What sshd logged so far (`-e`: to stderr, kept in a file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn sshd_config(dir: &Path, port: u16, options: &SshdOptions) -> String {
    let d = dir.display();
    let mut lines = vec![
        format!("ListenAddress 127.0.0.1:{port}"),
        format!("HostKey {d}/ssh_host_ed25519_key"),
        format!("PidFile {d}/sshd.pid"),
        format!("AuthorizedKeysFile {d}/authorized_keys"),
        "UsePAM no".into(),
        // The temp dir's modes are not what sshd demands of a home directory.
        "StrictModes no".into(),
        "PermitRootLogin prohibit-password".into(),
        "PubkeyAuthentication yes".into(),
        "PasswordAuthentication no".into(),
        "KbdInteractiveAuthentication no".into(),
        "UseDNS no".into(),
        "PrintMotd no".into(),
        "PrintLastLog no".into(),
        "LogLevel VERBOSE".into(),
        "LoginGraceTime 20".into(),
        "MaxStartups 100:30:200".into(),
        "AllowStreamLocalForwarding yes".into(),
    ];
    for (name, value) in &options.set_env {
        lines.push(format!("SetEnv {name}={value}"));
    }
    lines.extend(options.extra_config.iter().cloned());
    lines.join("\n") + "\n"
}

fn try_start(dir: &Path, config: &Path, port: u16) -> Result<std::result::Result<Child, String>> {
    let log_path = dir.join("sshd.log");
    let log = File::create(&log_path).ctx(|| format!("creating {}", log_path.display()))?;
    let child = Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .ctx(|| format!("starting {SSHD} (apt-get install -y openssh-server)"))?;
    let listening = format!("Server listening on 127.0.0.1 port {port}");
    Ok(await_server(
        child,
        "sshd",
        &log_path,
        START_TIMEOUT,
        // The log line proves the listener is ours, not another process's that took the port.
        |log| match TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) if log.contains(&listening) => Ok(()),
            Ok(_) => Err("port answers, sshd has not logged that it listens".into()),
            Err(e) => Err(e.to_string()),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_what_a_second_sshd_needs() {
        let opts = SshdOptions {
            set_env: vec![("PATH".into(), "/x:/usr/bin".into())],
            extra_config: vec!["ClientAliveInterval 5".into()],
            ..SshdOptions::default()
        };
        let text = sshd_config(Path::new("/tmp/d"), 2222, &opts);
        for want in [
            "ListenAddress 127.0.0.1:2222\n",
            "HostKey /tmp/d/ssh_host_ed25519_key\n",
            "PidFile /tmp/d/sshd.pid\n",
            "AuthorizedKeysFile /tmp/d/authorized_keys\n",
            "UsePAM no\n",
            "StrictModes no\n",
            "SetEnv PATH=/x:/usr/bin\n",
            "ClientAliveInterval 5\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("ForceCommand"));
    }
}
