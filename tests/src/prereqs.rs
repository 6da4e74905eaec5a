//! The end-to-end tests' prerequisites. A missing one fails the test with the exact command
//! that installs it: these tests are never skipped.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::command::run_with_timeout;
use crate::error::{Error, Result};

/// Programs the tests run, and the Debian package that brings each.
const PROGRAMS: &[(&str, &str)] = &[
    ("docker", "docker.io"),
    ("docker-registry", "docker-registry"),
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("ssh-agent", "openssh-client"),
    ("ssh-add", "openssh-client"),
    ("docker-compose", "docker-compose"),
    ("caddy", "caddy"),
    ("systemd-analyze", "systemd"),
    ("/usr/sbin/useradd", "passwd"),
    ("/usr/bin/setpriv", "util-linux"),
    ("/usr/bin/sudo", "sudo"),
    ("tmux", "tmux"),
    ("chromium", "chromium"),
    ("htpasswd", "apache2-utils"),
    ("openssl", "openssl"),
    ("promtool", "prometheus"),
    ("zsh", "zsh"),
    ("fish", "fish"),
    ("groff", "groff-base"),
];

/// Static glibc, for the demo app's `crt-static` build.
const STATIC_LIBC: (&str, &str) = ("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev");

/// Caddy replaces its listeners at each config change: without this the kernel resets the
/// connections queued on a closing listener instead of handing them to its successor, and a
/// route switch drops requests that no deploy should.
const TCP_MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Checks once per process that every program is installed and the Docker engine answers.
pub fn require_prereqs() -> Result<()> {
    static CHECKED: OnceLock<std::result::Result<(), (String, String)>> = OnceLock::new();
    CHECKED
        .get_or_init(check)
        .clone()
        .map_err(|(what, fix)| Error::Prereq { what, fix })
}

fn check() -> std::result::Result<(), (String, String)> {
    let mut missing: Vec<&str> = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for &(program, package) in PROGRAMS {
        if !on_path(program) {
            missing.push(program);
            if !packages.contains(&package) {
                packages.push(package);
            }
        }
    }
    for (file, package) in [STATIC_LIBC, (crate::agents::LIBFAKETIME, "faketime")] {
        if !Path::new(file).exists() {
            missing.push(file);
            packages.push(package);
        }
    }
    if !missing.is_empty() {
        return Err((missing.join(", "), install_command(&packages)));
    }
    let migrate_req = std::fs::read_to_string(TCP_MIGRATE_REQ).unwrap_or_default();
    if let Err(what) = migrate_req_enabled(&migrate_req) {
        let sudo = if is_root() { "" } else { "sudo " };
        return Err((what, format!("{sudo}sysctl -w net.ipv4.tcp_migrate_req=1")));
    }
    let answer = run_with_timeout(
        Command::new("docker").args(["version", "--format", "{{.Server.APIVersion}}"]),
        Duration::from_secs(20),
    );
    if let Err(e) = answer {
        return Err((
            format!("the Docker engine does not answer ({e})"),
            "start it (`sudo systemctl start docker`, or `sudo dockerd &` where there is no systemd) \
             and make sure this user may use /var/run/docker.sock (root, or the `docker` group)"
                .into(),
        ));
    }
    Ok(())
}

/// `Ok` when the sysctl's file reads `1`; what is wrong otherwise.
fn migrate_req_enabled(text: &str) -> std::result::Result<(), String> {
    match text.trim() {
        "1" => Ok(()),
        "" => Err(format!(
            "{TCP_MIGRATE_REQ} cannot be read (a kernel older than 5.14?)"
        )),
        other => Err(format!(
            "net.ipv4.tcp_migrate_req is {other}: Caddy would reset queued connections at \
             every config change"
        )),
    }
}

/// `apt-get install …`, with sudo when not root.
pub fn install_command(packages: &[&str]) -> String {
    let sudo = if is_root() { "" } else { "sudo " };
    format!(
        "{sudo}apt-get update && {sudo}apt-get install -y {}",
        packages.join(" ")
    )
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(1) == Some("0"))
            })
            .unwrap_or(false)
}

fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_command_lists_packages() {
        let cmd = install_command(&["docker-registry", "openssh-server"]);
        assert!(
            cmd.ends_with("apt-get install -y docker-registry openssh-server"),
            "{cmd}"
        );
    }

    #[test]
    fn tcp_migrate_req_must_be_one() {
        assert_eq!(migrate_req_enabled("1\n"), Ok(()));
        for text in ["0\n", "", "2"] {
            assert!(migrate_req_enabled(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn finds_programs() {
        assert!(on_path("sh"));
        assert!(!on_path("surely-no-such-program-xyz"));
        assert!(!on_path("/no/such/path"));
    }
}
