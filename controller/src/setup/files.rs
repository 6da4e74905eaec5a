//! The files setup installs, rendered from deploy.toml and the env's signing keys.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::config::{DeployConfig, HostSpec, Target};

pub const BINARY: &str = "/usr/local/bin/deploy-agent";
pub const CONFIG_DIR: &str = "/etc/deploy-agent";
pub const AGENT_TOML: &str = "/etc/deploy-agent/agent.toml";
pub const ALLOWED_SIGNERS: &str = "/etc/deploy-agent/allowed_signers";
pub const UNIT_PATH: &str = "/etc/systemd/system/deploy-agent.service";
/// The systemd unit, as the repository ships it (`agent/deploy-agent.service`).
pub const UNIT: &str = include_str!("../../../agent/deploy-agent.service");

/// Where env_file and compose_file may live when agent.toml does not say (the agent's default).
const DEFAULT_FILES: &str = "/etc/deploy-agent/apps";

/// agent.toml for `host` of `env`: allowed to run exactly the repositories deploy.toml's
/// services use, with the host paths, files and ports they name admitted by `[policy]`.
pub fn agent_toml(cfg: &DeployConfig, env: &str, host: &HostSpec) -> String {
    let socket = match &host.target {
        Target::Ssh(t) => t.socket.clone(),
        Target::Local { socket } => socket.display().to_string(),
    };
    let repos: BTreeSet<&str> = cfg
        .services
        .keys()
        .map(|s| cfg.repository_of(s))
        .chain(cfg.migration_repository())
        .collect();
    let mut volumes = BTreeSet::new();
    let mut files = BTreeSet::new();
    let mut lowest_port = u16::MAX;
    for spec in cfg.services.values() {
        for v in &spec.volumes {
            let source = v.split(':').next().unwrap_or_default();
            if source.starts_with('/') {
                volumes.insert(source.to_string());
            }
        }
        for f in [&spec.env_file, &spec.compose_file].into_iter().flatten() {
            let dir = std::path::Path::new(f)
                .parent()
                .map(|d| d.display().to_string());
            if let Some(dir) = dir.filter(|d| !d.starts_with(DEFAULT_FILES) && d.starts_with('/')) {
                files.insert(dir);
            }
        }
        for p in &spec.ports {
            if let Some(port) = host_port(p) {
                lowest_port = lowest_port.min(port);
            }
        }
    }
    let list = |items: &mut dyn Iterator<Item = &str>| {
        let quoted: Vec<String> = items.map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Written by `deployctl setup --env {env}` from {}'s deploy.toml. Setup never\n\
         # overwrites this file once it exists: edit it here (README, \"Running the agent on a\n\
         # host\" explains every key), and restart the agent: systemctl restart deploy-agent",
        cfg.app
    );
    let _ = writeln!(t, "host = {:?}", host.name);
    let _ = writeln!(t, "env = {env:?}");
    let _ = writeln!(t, "socket = {socket:?}");
    let _ = writeln!(t, "state_dir = \"/var/lib/deploy-agent\"");
    let _ = writeln!(t, "allowed_signers = {ALLOWED_SIGNERS:?}");
    let _ = writeln!(t, "allowed_images = {}", list(&mut repos.into_iter()));
    let _ = writeln!(t, "\n[policy]");
    let _ = writeln!(
        t,
        "volumes = {}",
        list(&mut volumes.iter().map(String::as_str))
    );
    if !files.is_empty() {
        let all = std::iter::once(DEFAULT_FILES).chain(files.iter().map(String::as_str));
        let _ = writeln!(t, "files = {}", list(&mut all.into_iter()));
    }
    if lowest_port < 1024 {
        let _ = writeln!(t, "ports = \"{lowest_port}-65535\"");
    }
    t
}

/// The host port of a `ports` entry (`8080:80`, `127.0.0.1:8080:80`, `8080:80/udp`).
fn host_port(entry: &str) -> Option<u16> {
    let parts: Vec<&str> = entry.split('/').next()?.rsplit(':').collect();
    parts.get(1)?.parse().ok()
}

/// `existing` with each of `lines` appended that it does not already have (by key): setup
/// adds the env's keys and never removes one a human put there.
pub fn merge_allowed_signers(existing: Option<&str>, lines: &[String]) -> String {
    let existing = existing.unwrap_or_default();
    let key_of = |line: &str| -> Option<String> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| {
            f.starts_with("ssh-") || f.starts_with("ecdsa-") || f.starts_with("sk-")
        })?;
        fields.get(at + 1).map(|k| k.to_string())
    };
    let have: BTreeSet<String> = existing.lines().filter_map(key_of).collect();
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for line in lines {
        if key_of(line).is_none_or(|k| !have.contains(&k)) {
            out.push_str(line.trim());
            out.push('\n');
        }
    }
    out
}

/// The machine (`uname -m`) an ELF executable is built for, from its header.
pub fn elf_arch(header: &[u8]) -> Option<&'static str> {
    if header.len() < 20 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let machine = match header[5] {
        1 => u16::from_le_bytes([header[18], header[19]]),
        2 => u16::from_be_bytes([header[18], header[19]]),
        _ => return None,
    };
    Some(match machine {
        0x3e => "x86_64",
        0xb7 => "aarch64",
        0x28 => "armv7l",
        0xf3 => "riscv64",
        0x03 => "i686",
        _ => return None,
    })
}
