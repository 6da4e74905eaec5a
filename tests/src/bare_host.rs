//! A bare host for `deployctl setup`: a container with its own filesystem root holding only what
//! setup needs of a fresh Debian VM — `sh` and coreutils, shadow's `useradd`, `setpriv`, and an
//! OpenSSH server that lets root in by key — and nothing of deployctl: no binary, no users, no
//! config. It runs on the host's network (its sshd on a free loopback port) with this machine's
//! Docker socket, so the agent setup installs deploys to the same engine as every other test.
//!
//! No systemd runs in a container: `/usr/bin/systemctl` is a stand-in (`tests/bare-host/`) that
//! starts the unit's `ExecStart` as its `User`/`Group` with its runtime and state directories,
//! as systemd would; the unit file itself is checked by the real `systemd-analyze verify`.
//! Every program is copied from this machine with the libraries `ldd` names.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::command::run;
use crate::docker::{TEST_LABEL, unique_name};
use crate::error::{Error, IoContext, Result};
use crate::net::free_port;
use crate::wait::wait_until;

/// Programs setup's scripts (and sshd's sessions) run, from this machine.
const PROGRAMS: &[&str] = &[
    "/usr/sbin/sshd",
    "/usr/bin/dash",
    "/usr/bin/bash",
    "/usr/sbin/useradd",
    "/usr/sbin/groupadd",
    "/usr/sbin/usermod",
    "/usr/sbin/nologin",
    "/usr/bin/setpriv",
    "/usr/bin/setsid",
    "/usr/bin/getent",
    "/usr/bin/id",
    "/usr/bin/uname",
    "/usr/bin/sha256sum",
    "/usr/bin/base64",
    "/usr/bin/install",
    "/usr/bin/mkdir",
    "/usr/bin/mv",
    "/usr/bin/rm",
    "/usr/bin/cat",
    "/usr/bin/chmod",
    "/usr/bin/chown",
    "/usr/bin/cut",
    "/usr/bin/tr",
    "/usr/bin/sed",
    "/usr/bin/grep",
    "/usr/bin/head",
    "/usr/bin/tail",
    "/usr/bin/sleep",
    "/usr/bin/env",
    "/usr/bin/date",
    "/usr/bin/df",
    "/usr/bin/ls",
    "/usr/bin/test",
    "/usr/bin/kill",
    "/usr/bin/stat",
    "/usr/bin/cp",
    "/usr/bin/printf",
];

const SYSTEMCTL: &str = include_str!("../bare-host/systemctl");
const JOURNALCTL: &str = include_str!("../bare-host/journalctl");

/// A running bare host; removed (container and image) on drop.
pub struct BareHost {
    container: String,
    image: String,
    port: u16,
    host_public: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for BareHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BareHost")
            .field("container", &self.container)
            .field("port", &self.port)
            .finish()
    }
}

impl BareHost {
    /// Builds the image and starts its sshd, letting root in with `root_key` (a public key line).
    pub fn start(root_key: &str) -> Result<BareHost> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-bare-host-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let port = free_port()?;
        let rootfs = dir.path().join("rootfs");
        assemble(&rootfs, port, root_key)?;
        let host_public = std::fs::read_to_string(rootfs.join("etc/ssh/ssh_host_ed25519_key.pub"))
            .ctx(|| "reading the host key".into())?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM scratch\nLABEL {TEST_LABEL}=bare-host\nCOPY rootfs/ /\n"),
        )
        .ctx(|| "writing the Dockerfile".into())?;
        let name = unique_name("deployctl-bare-host");
        run(Command::new("docker")
            .args(["build", "-q", "-t", &name])
            .arg(dir.path()))?;
        let host = BareHost {
            container: name.clone(),
            image: name.clone(),
            port,
            host_public,
            _dir: dir,
        };
        run(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("{TEST_LABEL}=bare-host"),
            "--network",
            "host",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            &name,
            "/usr/sbin/sshd",
            "-D",
            "-e",
        ]))?;
        wait_until(
            "the bare host's sshd to listen",
            Duration::from_secs(20),
            || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .map_err(|e| Error::Unexpected(format!("{e}; {}", host.logs())))?;
        Ok(host)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`, for known_hosts.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_public)
    }

    /// Runs `sh -c script` inside the host as root (for a test to look, or to break things).
    pub fn exec(&self, script: &str) -> Result<String> {
        run(Command::new("docker").args(["exec", &self.container, "/usr/bin/sh", "-c", script]))
    }

    /// sshd's log and the agent's, for failure messages.
    pub fn logs(&self) -> String {
        let sshd = run(Command::new("docker").args(["logs", "--tail", "30", &self.container]))
            .unwrap_or_else(|e| e.to_string());
        let agent = self
            .exec("tail -n 30 /var/log/deploy-agent.log 2>/dev/null")
            .unwrap_or_default();
        format!("sshd:\n{sshd}\nagent:\n{agent}")
    }
}

impl Drop for BareHost {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.container])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

/// Writes the host's filesystem under `root`: merged /usr as Debian has it, the programs and
/// their libraries, the accounts a fresh system has, and sshd's config.
fn assemble(root: &Path, port: u16, root_key: &str) -> Result<()> {
    for dir in [
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "usr/local/bin",
        "etc/ssh",
        "etc/skel",
        "etc/systemd/system",
        "root/.ssh",
        "run/sshd",
        "run/systemd/system",
        "var/lib",
        "var/log",
        "home",
        "tmp",
        "dev",
        "proc",
    ] {
        std::fs::create_dir_all(root.join(dir)).ctx(|| format!("creating {dir}"))?;
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(to, root.join(link)).ctx(|| format!("linking /{link}"))?;
    }
    set_mode(&root.join("tmp"), 0o1777)?;
    set_mode(&root.join("root/.ssh"), 0o700)?;
    let mut files: Vec<PathBuf> = Vec::new();
    for program in PROGRAMS {
        files.push(PathBuf::from(program));
        files.extend(libraries(Path::new(program))?);
    }
    // the libraries deploy-agent links (libc, libgcc_s: on every Debian), not the binary itself
    files.extend(libraries(&crate::agents::agent_binary()?)?);
    files.sort();
    files.dedup();
    for file in &files {
        copy_into(root, file)?;
    }
    std::os::unix::fs::symlink("dash", root.join("usr/bin/sh")).ctx(|| "linking sh".into())?;
    let docker_gid = run(Command::new("stat").args(["-c", "%g", "/var/run/docker.sock"]))?;
    let docker_gid = docker_gid.trim();
    let write = |path: &str, text: &str, mode: u32| -> Result<()> {
        let p = root.join(path);
        std::fs::write(&p, text).ctx(|| format!("writing {path}"))?;
        set_mode(&p, mode)
    };
    write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        0o644,
    )?;
    write(
        "etc/group",
        &format!("root:x:0:\ndocker:x:{docker_gid}:\nnogroup:x:65534:\n"),
        0o644,
    )?;
    // `*`: no password, but not locked (sshd without PAM refuses locked accounts even by key)
    write(
        "etc/shadow",
        "root:*:20000:0:99999:7:::\nsshd:*:20000:0:99999:7:::\nnobody:*:20000:0:99999:7:::\n",
        0o640,
    )?;
    write("etc/gshadow", "root:*::\ndocker:!::\nnogroup:*::\n", 0o640)?;
    write(
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\ngshadow: files\n",
        0o644,
    )?;
    let login_defs =
        std::fs::read_to_string("/etc/login.defs").ctx(|| "reading /etc/login.defs".into())?;
    write("etc/login.defs", &login_defs, 0o644)?;
    write("etc/hostname", "bare-host\n", 0o644)?;
    write("root/.ssh/authorized_keys", &format!("{root_key}\n"), 0o600)?;
    write("usr/bin/systemctl", SYSTEMCTL, 0o755)?;
    write("usr/bin/journalctl", JOURNALCTL, 0o755)?;
    write(
        "etc/ssh/sshd_config",
        &format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey /etc/ssh/ssh_host_ed25519_key\n\
             PidFile /run/sshd.pid\nUsePAM no\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UseDNS no\nPrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n"
        ),
        0o644,
    )?;
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bare-host", "-f"])
        .arg(root.join("etc/ssh/ssh_host_ed25519_key")))?;
    Ok(())
}

/// The shared libraries `program` loads, as `ldd` resolves them.
fn libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").arg(program))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Copies `file` (following links) to the same place under `root`, with /bin, /lib… resolved
/// to their /usr homes.
fn copy_into(root: &Path, file: &Path) -> Result<()> {
    let dir = file
        .parent()
        .and_then(|d| d.canonicalize().ok())
        .ok_or_else(|| {
            Error::Unexpected(format!(
                "cannot resolve the directory of {}",
                file.display()
            ))
        })?;
    let name = file
        .file_name()
        .ok_or_else(|| Error::Unexpected(format!("{} has no name", file.display())))?;
    let into = root.join(dir.strip_prefix("/").unwrap_or(&dir));
    std::fs::create_dir_all(&into).ctx(|| format!("creating {}", into.display()))?;
    std::fs::copy(file, into.join(name)).ctx(|| format!("copying {}", file.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("chmod {}", path.display()))
}
