//! The read-only probe `setup` runs first, and what it found.

use std::collections::BTreeMap;

use base64::Engine as _;

use super::{AGENT_TOML, AGENT_USER, ALLOWED_SIGNERS, BINARY, GROUP, UNIT_PATH};
use crate::transport::shell_quote;

/// What a host has of what setup installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `uname -m`.
    pub arch: String,
    pub systemd: bool,
    pub docker_group: bool,
    pub deployctl_group: bool,
    pub agent_user: bool,
    pub agent_in_docker: bool,
    /// sha256 (hex) of the installed agent binary.
    pub binary_sha256: Option<String>,
    pub agent_toml: Option<String>,
    pub allowed_signers: Option<String>,
    pub unit: Option<String>,
    pub unit_active: bool,
    /// The deploy login, when setup was asked about one.
    pub login: Option<LoginFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginFacts {
    pub exists: bool,
    pub in_group: bool,
    pub has_keys: bool,
}

/// A POSIX sh script that prints `key=value` lines for [`HostFacts::parse`]; it changes nothing.
/// File contents travel base64-encoded (`-`: no such file).
pub fn probe_script(login_user: Option<&str>) -> String {
    let mut s = format!(
        r#"fact() {{ printf '%s=%s\n' "$1" "$2"; }}
holds() {{ if "$@" >/dev/null 2>&1; then echo yes; else echo no; fi; }}
member() {{ if id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"; then echo yes; else echo no; fi; }}
file() {{ if [ -f "$2" ]; then fact "$1" "$(base64 -w0 < "$2")"; else fact "$1" -; fi; }}
fact arch "$(uname -m)"
fact systemd "$(holds test -d /run/systemd/system)"
fact docker_group "$(holds getent group docker)"
fact deployctl_group "$(holds getent group {GROUP})"
fact agent_user "$(holds id -u {AGENT_USER})"
fact agent_in_docker "$(member {AGENT_USER} docker)"
fact binary_sha256 "$(sha256sum {BINARY} 2>/dev/null | cut -d' ' -f1)"
file agent_toml {AGENT_TOML}
file allowed_signers {ALLOWED_SIGNERS}
file unit {UNIT_PATH}
fact unit_active "$(holds systemctl is-active --quiet deploy-agent)"
"#
    );
    if let Some(user) = login_user {
        let u = shell_quote(user);
        s.push_str(&format!(
            r#"fact login_exists "$(holds id -u {u})"
fact login_in_group "$(member {u} {GROUP})"
home="$(getent passwd {u} | cut -d: -f6)"
fact login_has_keys "$(holds test -s "$home/.ssh/authorized_keys")"
"#
        ));
    }
    s
}

impl HostFacts {
    /// Reads what [`probe_script`] printed.
    pub fn parse(text: &str) -> Result<HostFacts, String> {
        let map: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| {
            map.get(k)
                .copied()
                .ok_or_else(|| format!("the host's probe printed no `{k}` (output: {text:?})"))
        };
        let flag = |k: &str| get(k).map(|v| v == "yes");
        let file = |k: &str| -> Result<Option<String>, String> {
            match get(k)? {
                "-" => Ok(None),
                b64 => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format!("the host's {k} came back garbled: {e}"))?;
                    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
                }
            }
        };
        let login = match map.contains_key("login_exists") {
            false => None,
            true => Some(LoginFacts {
                exists: flag("login_exists")?,
                in_group: flag("login_in_group")?,
                has_keys: flag("login_has_keys")?,
            }),
        };
        Ok(HostFacts {
            arch: get("arch")?.to_string(),
            systemd: flag("systemd")?,
            docker_group: flag("docker_group")?,
            deployctl_group: flag("deployctl_group")?,
            agent_user: flag("agent_user")?,
            agent_in_docker: flag("agent_in_docker")?,
            binary_sha256: Some(get("binary_sha256")?)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            agent_toml: file("agent_toml")?,
            allowed_signers: file("allowed_signers")?,
            unit: file("unit")?,
            unit_active: flag("unit_active")?,
            login,
        })
    }
}
