//! `~/.ssh/config` for the hosts of deploy.toml, as `ssh` reads it (through `russh-config`):
//! `Host` patterns, `HostName`, `User`, `Port` and `IdentityFile`. What deploy.toml writes
//! explicitly wins, as a command line wins over the config file for `ssh`.

use std::path::PathBuf;

use crate::config::SshTarget;

/// `t` with what `~/.ssh/config` (its text) says for `t.addr`, and the identity files it names
/// for that host, to try before the default ones. Text the parser cannot read changes nothing.
/// (`~` in `IdentityFile` is the process's `$HOME`, as the parser expands it.)
pub fn apply(t: &SshTarget, config_text: Option<&str>) -> (SshTarget, Vec<PathBuf>) {
    let Some(text) = config_text else {
        return (t.clone(), Vec::new());
    };
    let Ok(found) = russh_config::parse(text, &t.addr) else {
        return (t.clone(), Vec::new());
    };
    let hc = &found.host_config;
    let resolved = SshTarget {
        user: t.user.clone().or_else(|| hc.user.clone()),
        addr: hc.hostname.clone().unwrap_or_else(|| t.addr.clone()),
        // deploy.toml's port counts when it says one; 22 is what it says when it says none.
        port: match (t.port, hc.port) {
            (22, Some(p)) => p,
            (p, _) => p,
        },
        socket: t.socket.clone(),
    };
    let identities = hc.identity_file.clone().unwrap_or_default();
    (resolved, identities)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: Option<&str>, addr: &str, port: u16) -> SshTarget {
        SshTarget {
            user: user.map(str::to_string),
            addr: addr.into(),
            port,
            socket: "/run/deploy-agent/agent.sock".into(),
        }
    }

    #[test]
    fn aliases_resolve_and_deploy_toml_wins() {
        let config = "\
Host prod-*
    User deploy
    IdentityFile /keys/prod_key

Host prod-1
    HostName 203.0.113.10
    Port 2222

Host *
    User fallback
";
        let show = |t: &SshTarget, ids: &[PathBuf]| {
            format!(
                "{}@{}:{} {:?}",
                t.user.as_deref().unwrap_or("-"),
                t.addr,
                t.port,
                ids
            )
        };
        let cases = [
            (
                target(None, "prod-1", 22),
                "deploy@203.0.113.10:2222 [\"/keys/prod_key\"]",
            ),
            (
                target(Some("ops"), "prod-1", 2200),
                "ops@203.0.113.10:2200 [\"/keys/prod_key\"]",
            ),
            (target(None, "10.0.0.5", 22), "fallback@10.0.0.5:22 []"),
        ];
        for (t, want) in cases {
            let (got, ids) = apply(&t, Some(config));
            assert_eq!(show(&got, &ids), want);
        }
        let (same, ids) = apply(&target(None, "prod-1", 22), None);
        assert_eq!((same, ids.len()), (target(None, "prod-1", 22), 0));
        let (same, _) = apply(&target(None, "x", 22), Some("Port notanumber\n"));
        assert_eq!(same.addr, "x");
    }
}
