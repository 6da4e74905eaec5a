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
//!
//! [`BareHost::start_cloud`] is the shape of a cloud image instead: root may not log in; `admin`
//! may, with passwordless `sudo` (the real one, setuid, with its sudoers plugin and a PAM stack
//! of pam_unix), and `guest` may log in but has no sudo rights.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::command::run;
use crate::docker::{TEST_LABEL, unique_name};
use crate::error::{Error, IoContext, Result};
use crate::net::free_port;
use crate::sshd::ClientKey;
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

/// `sudo`, for the cloud shape: the setuid program, its sudoers plugin (dlopened, so `ldd` of
/// sudo does not name it) and the PAM module its stack uses.
const SUDO: &[&str] = &[
    "/usr/bin/sudo",
    "/usr/libexec/sudo/sudoers.so",
    "/usr/lib/x86_64-linux-gnu/security/pam_unix.so",
    "/usr/lib/x86_64-linux-gnu/security/pam_permit.so",
];

/// The login setup uses: root by key, or (a cloud image) `admin` with passwordless sudo while
/// root may not log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    RootLogin,
    Cloud,
}

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
        BareHost::start_shaped(root_key, Shape::RootLogin)
    }

    /// A cloud image's shape: `admin` (passwordless sudo) and `guest` (no sudo) log in with
    /// `key`; root may not log in at all.
    pub fn start_cloud(key: &str) -> Result<BareHost> {
        BareHost::start_shaped(key, Shape::Cloud)
    }

    fn start_shaped(key: &str, shape: Shape) -> Result<BareHost> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-bare-host-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let port = free_port()?;
        let rootfs = dir.path().join("rootfs");
        assemble(&rootfs, port, key, shape)?;
        let host_public = std::fs::read_to_string(rootfs.join("etc/ssh/ssh_host_ed25519_key.pub"))
            .ctx(|| "reading the host key".into())?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        // COPY drops the setuid bit, which sudo needs: set again inside the image
        let setuid = match shape {
            Shape::RootLogin => "",
            Shape::Cloud => "RUN [\"/usr/bin/chmod\", \"4755\", \"/usr/bin/sudo\"]\n",
        };
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!("FROM scratch\nLABEL {TEST_LABEL}=bare-host\nCOPY rootfs/ /\n{setuid}"),
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

/// A bare host and the home directory of a deployctl user on this machine: a key the host lets
/// in, the host's key in `known_hosts`; the caller writes deploy.toml there.
pub struct BareHostHome {
    pub home: tempfile::TempDir,
    pub key: ClientKey,
    pub host: BareHost,
}

impl BareHostHome {
    /// A new home and key, and a host started by `start` ([`BareHost::start`] or
    /// [`BareHost::start_cloud`]) letting that key in.
    pub fn start(start: fn(&str) -> Result<BareHost>) -> Result<BareHostHome> {
        let home = tempfile::tempdir().ctx(|| "creating a home".into())?;
        let ssh = home.path().join(".ssh");
        std::fs::create_dir_all(&ssh).ctx(|| format!("creating {}", ssh.display()))?;
        let key = ClientKey::generate(&ssh)?;
        let host = start(&key.public_line)?;
        std::fs::write(ssh.join("known_hosts"), host.known_hosts_line() + "\n")
            .ctx(|| "writing known_hosts".into())?;
        Ok(BareHostHome { home, key, host })
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// deploy.toml's `[env.staging]`: the host as `name`, reached as `deploy@` (the login setup
    /// makes), orders signed by this home's key.
    pub fn staging_table(&self, name: &str) -> String {
        format!(
            "[env.staging]\nhosts = [{{ name = \"{name}\", ssh = \"deploy@127.0.0.1:{}\" }}]\nsigning_key = {}\n",
            self.host.port(),
            crate::hosts::quote(&self.key.private_path.display().to_string()),
        )
    }

    /// `deployctl args…` as this user types it in the home: this key for SSH, no ssh-agent, no
    /// inherited deployctl settings.
    pub fn deployctl(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(crate::hosts::deployctl_binary()?);
        cmd.args(args)
            .current_dir(self.path())
            .env("HOME", self.path())
            .env("DEPLOYCTL_SSH_IDENTITY", &self.key.private_path)
            .env("DEPLOYCTL_ISSUED_BY", "e2e@deployctl-test")
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DEPLOYCTL_SIGNING_KEY")
            .env_remove("DEPLOYCTL_REMOTE_AGENT")
            .env_remove("DEPLOYCTL_AGENT_BINARY");
        Ok(cmd)
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
fn assemble(root: &Path, port: u16, key: &str, shape: Shape) -> Result<()> {
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
    if shape == Shape::Cloud {
        for program in SUDO {
            files.push(PathBuf::from(program));
            files.extend(libraries(Path::new(program))?);
        }
    }
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
    let permit_root = match shape {
        Shape::RootLogin => {
            write("root/.ssh/authorized_keys", &format!("{key}\n"), 0o600)?;
            "prohibit-password"
        }
        Shape::Cloud => {
            add_cloud_users(root, key)?;
            "no"
        }
    };
    write("usr/bin/systemctl", SYSTEMCTL, 0o755)?;
    write("usr/bin/journalctl", JOURNALCTL, 0o755)?;
    write(
        "etc/ssh/sshd_config",
        &format!(
            "ListenAddress 127.0.0.1:{port}\nHostKey /etc/ssh/ssh_host_ed25519_key\n\
             PidFile /run/sshd.pid\nUsePAM no\nPermitRootLogin {permit_root}\n\
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

/// `admin` (passwordless sudo) and `guest` (none), both let in by `key`, and sudo's sudoers and
/// PAM stack of pam_unix (sudo runs PAM's account stage even without a password). The setuid
/// bit is set in the image.
fn add_cloud_users(root: &Path, key: &str) -> Result<()> {
    let append = |path: &str, text: &str| -> Result<()> {
        let p = root.join(path);
        let mut all = std::fs::read_to_string(&p).ctx(|| format!("reading {path}"))?;
        all.push_str(text);
        std::fs::write(&p, all).ctx(|| format!("writing {path}"))
    };
    append(
        "etc/passwd",
        "admin:x:1000:1000::/home/admin:/bin/sh\nguest:x:1001:1001::/home/guest:/bin/sh\n",
    )?;
    append("etc/group", "admin:x:1000:\nguest:x:1001:\n")?;
    append(
        "etc/shadow",
        "admin:*:20000:0:99999:7:::\nguest:*:20000:0:99999:7:::\n",
    )?;
    append("etc/gshadow", "admin:!::\nguest:!::\n")?;
    for user in ["admin", "guest"] {
        // root-owned, as sshd's StrictModes allows: the image's files all belong to root
        let ssh = root.join(format!("home/{user}/.ssh"));
        std::fs::create_dir_all(&ssh).ctx(|| format!("creating {}", ssh.display()))?;
        std::fs::write(ssh.join("authorized_keys"), format!("{key}\n"))
            .ctx(|| format!("writing {user}'s authorized_keys"))?;
        set_mode(&ssh, 0o755)?;
    }
    std::fs::create_dir_all(root.join("etc/pam.d")).ctx(|| "creating etc/pam.d".into())?;
    std::fs::write(
        root.join("etc/sudoers"),
        // no secure_path (as on Alpine or Arch): sudo keeps the login's PATH, without sbin
        "Defaults env_reset\nroot ALL=(ALL:ALL) ALL\nadmin ALL=(ALL:ALL) NOPASSWD: ALL\n",
    )
    .ctx(|| "writing etc/sudoers".into())?;
    set_mode(&root.join("etc/sudoers"), 0o440)?;
    std::fs::write(
        root.join("etc/pam.d/sudo"),
        "auth required pam_unix.so\naccount required pam_unix.so\nsession required pam_permit.so\n",
    )
    .ctx(|| "writing etc/pam.d/sudo".into())?;
    set_mode(&root.join("usr/bin/sudo"), 0o4755)
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
