//! `[policy]` and `host_keys` in `agent.toml`: what any order may ask of this host (README,
//! "What a signing key can and cannot do"), read into [`proto::policy::HostPolicy`], and the
//! host's own SSH keys that orders are bound to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::policy::{HostPolicy, parse_port_ranges};
use serde::Deserialize;

/// Where the host keys are looked for when `host_keys` is not given: sshd's own.
pub const DEFAULT_HOST_KEY_DIR: &str = "/etc/ssh";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    networks: Option<Vec<String>>,
    #[serde(default)]
    files: Option<Vec<String>>,
    #[serde(default)]
    ports: Option<String>,
    #[serde(default = "default_max_validity", with = "proto::time::duration")]
    max_validity: Duration,
    #[serde(default)]
    apps: BTreeMap<String, Vec<String>>,
    #[serde(default = "default_exec")]
    exec: bool,
    #[serde(default)]
    proxies: Option<Vec<String>>,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            volumes: Vec::new(),
            networks: None,
            files: None,
            ports: None,
            max_validity: default_max_validity(),
            apps: BTreeMap::new(),
            exec: default_exec(),
            proxies: None,
        }
    }
}

fn default_max_validity() -> Duration {
    proto::policy::DEFAULT_MAX_VALIDITY
}

fn default_exec() -> bool {
    HostPolicy::default().exec
}

/// Checks `[policy]` and fills in the defaults; errors name the key.
pub(super) fn host_policy(raw: RawPolicy) -> Result<HostPolicy, String> {
    let defaults = HostPolicy::default();
    for (key, paths) in [
        ("volumes", Some(&raw.volumes)),
        ("files", raw.files.as_ref()),
    ] {
        if let Some(bad) = paths.into_iter().flatten().find(|p| !is_plain_absolute(p)) {
            return Err(format!(
                "[policy] {key}: {bad:?} must be an absolute path without '.' or '..' components"
            ));
        }
    }
    if let Some(bad) = raw.networks.iter().flatten().find(|n| n.trim().is_empty()) {
        return Err(format!("[policy] networks: {bad:?} is not a network name"));
    }
    let ports = match &raw.ports {
        None => defaults.ports,
        Some(s) => parse_port_ranges(s).map_err(|e| format!("[policy] ports: {e}"))?,
    };
    let max_validity = raw.max_validity;
    if max_validity.is_zero() {
        return Err("[policy] max_validity must be longer than zero".into());
    }
    for (principal, apps) in &raw.apps {
        if let Some(bad) = apps
            .iter()
            .find(|a| *a != "*" && !proto::order::is_valid_name(a))
        {
            return Err(format!(
                "[policy.apps] {principal:?}: {bad:?} is not an app name (or \"*\" for every app)"
            ));
        }
    }
    if let Some(bad) = raw
        .proxies
        .iter()
        .flatten()
        .find(|p| proto::spec::admin_address(p).is_none())
    {
        return Err(format!(
            "[policy] proxies: {bad:?} is not host:port of a Caddy admin API"
        ));
    }
    Ok(HostPolicy {
        volumes: raw.volumes,
        networks: raw.networks,
        files: raw.files.unwrap_or(defaults.files),
        ports,
        max_validity,
        apps: raw.apps,
        exec: raw.exec,
        proxies: raw.proxies.unwrap_or(defaults.proxies),
    })
}

fn is_plain_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "." || c == "..")
}

/// The files holding this host's SSH public keys: the configured ones, else every
/// `ssh_host_*_key.pub` in `dir`.
pub fn host_key_files(configured: Option<&[PathBuf]>, dir: &Path) -> Vec<PathBuf> {
    if let Some(paths) = configured {
        return paths.to_vec();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("ssh_host_") && n.ends_with("_key.pub"))
        })
        .collect();
    found.sort();
    found
}

/// `SHA256:…` of the public key in each file (OpenSSH `.pub` format).
pub fn host_key_fingerprints(files: &[PathBuf]) -> Result<Vec<String>, String> {
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("host key {}: {e}", path.display()))?;
            let key = proto::sign::PublicKey::from_openssh(text.trim()).map_err(|e| {
                format!(
                    "host key {}: not an OpenSSH public key: {e}",
                    path.display()
                )
            })?;
            Ok(proto::sign::fingerprint(&key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<HostPolicy, String> {
        #[derive(Deserialize)]
        struct Wrapper {
            policy: RawPolicy,
        }
        let w: Wrapper = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        host_policy(w.policy)
    }

    #[test]
    fn an_empty_policy_is_the_safe_default() {
        assert_eq!(parse("[policy]").unwrap(), HostPolicy::default());
    }

    #[test]
    fn every_key_is_read() {
        let p = parse(
            r#"
[policy]
volumes = ["/srv/acme"]
networks = ["acme", "host"]
files = ["/etc/acme"]
ports = "80,443,1024-65535"
max_validity = "1h"
exec = false
[policy.apps]
"ci@acme" = ["acme", "acme-admin"]
"#,
        )
        .unwrap();
        assert_eq!(p.volumes, ["/srv/acme"]);
        assert_eq!(
            p.networks.as_deref(),
            Some(&["acme".to_string(), "host".to_string()][..])
        );
        assert_eq!(p.files, ["/etc/acme"]);
        assert_eq!(p.ports, vec![80..=80, 443..=443, 1024..=65535]);
        assert_eq!(p.max_validity, Duration::from_secs(3600));
        assert_eq!(p.apps["ci@acme"], ["acme", "acme-admin"]);
        assert!(!p.exec);
    }

    #[test]
    fn bad_values_are_named() {
        for (text, expected) in [
            ("volumes = [\"srv\"]", "[policy] volumes: \"srv\""),
            (
                "files = [\"/etc/../root\"]",
                "[policy] files: \"/etc/../root\"",
            ),
            ("ports = \"80-\"", "[policy] ports:"),
            (
                "max_validity = \"0s\"",
                "max_validity must be longer than zero",
            ),
            (
                "[policy.apps]\nci = [\"../x\"]",
                "[policy.apps] \"ci\": \"../x\"",
            ),
            ("networks = [\"\"]", "[policy] networks"),
            ("exec = 1", "invalid type: integer `1`, expected a boolean"),
        ] {
            let err = parse(&format!("[policy]\n{text}")).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(
            parse("[policy]\nexec = true\nbogus = 2")
                .unwrap_err()
                .contains("unknown field")
        );
    }

    #[test]
    fn host_keys_are_found_and_fingerprinted() {
        let dir = tempfile::tempdir().unwrap();
        let key = proto::sign::ed25519_key(&[3; 32], "host");
        let public = key.public_key().to_openssh().unwrap();
        std::fs::write(dir.path().join("ssh_host_ed25519_key.pub"), &public).unwrap();
        std::fs::write(dir.path().join("ssh_host_ed25519_key"), "private").unwrap();
        std::fs::write(dir.path().join("ssh_config"), "").unwrap();
        let files = host_key_files(None, dir.path());
        assert_eq!(files, [dir.path().join("ssh_host_ed25519_key.pub")]);
        assert_eq!(
            host_key_fingerprints(&files).unwrap(),
            [proto::sign::fingerprint(key.public_key())]
        );
        let bad = dir.path().join("ssh_config");
        let err = host_key_fingerprints(&[bad]).unwrap_err();
        assert!(err.contains("not an OpenSSH public key"), "{err}");
    }
}
