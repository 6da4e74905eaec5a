//! The SSH login every remote exchange starts with: TCP, the host key checked against
//! known_hosts before anything else is sent, then public-key authentication as `ssh` does it
//! (ssh-agent keys, then key files, with `~/.ssh/config` applied first).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use super::ssh_agent::SshAgent;
use super::{ConnectOptions, TransportError, ssh_config};
use crate::config::SshTarget;
use crate::known_hosts::{self, KnownHosts, Verdict};
/// Checks the server's host key against known_hosts and remembers why it refused.
pub(super) struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts_path: PathBuf,
    known: KnownHosts,
    refusal: Arc<Mutex<Option<TransportError>>>,
    /// The fingerprint of the key that passed the check.
    verified: Arc<Mutex<Option<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let display = known_hosts::host_pattern(&self.host, self.port);
        let path = self.known_hosts_path.display().to_string();
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                self.refuse(TransportError::Protocol(format!(
                    "{display} presented a host certificate; only plain host keys are supported"
                )));
                return Ok(false);
            }
        };
        let openssh = key.to_openssh().unwrap_or_default();
        let mut fields = openssh.split_whitespace();
        let (algorithm, blob) = (
            fields.next().unwrap_or_default(),
            fields.next().unwrap_or_default(),
        );
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let line = known_hosts::line_to_add(&self.host, self.port, algorithm, blob);
        let problem = match self.known.check(&self.host, self.port, algorithm, blob) {
            Verdict::Known => {
                if let Ok(mut slot) = self.verified.lock() {
                    *slot = Some(fingerprint);
                }
                return Ok(true);
            }
            Verdict::Unknown => TransportError::HostKeyUnknown {
                host: display,
                known_hosts: path,
                algorithm: algorithm.to_string(),
                fingerprint,
                line,
            },
            Verdict::Changed {
                line: recorded_line,
            } => TransportError::HostKeyChanged {
                host: display,
                known_hosts: path,
                algorithm: algorithm.to_string(),
                fingerprint,
                recorded_line,
                line,
            },
            Verdict::Revoked { line } => TransportError::HostKeyRevoked {
                host: display,
                known_hosts: path,
                fingerprint,
                line,
            },
        };
        self.refuse(problem);
        Ok(false)
    }
}

impl HostKeyCheck {
    fn refuse(&self, e: TransportError) {
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = Some(e);
        }
    }
}

fn local_user() -> Option<String> {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// An authenticated SSH connection, its channels not yet opened.
pub(super) struct Login {
    pub handle: client::Handle<HostKeyCheck>,
    /// `addr` or `[addr]:port`, for messages.
    pub display: String,
    /// The target after `~/.ssh/config`.
    pub target: SshTarget,
    /// Who we logged in as.
    pub user: String,
    /// `SHA256:…` of the host key that passed the known_hosts check.
    pub host_key: Option<String>,
}

/// `t` as a login uses it: after `~/.ssh/config`, as the local user when neither names one.
pub fn effective_target(t: &SshTarget, opts: &ConnectOptions) -> SshTarget {
    let (mut resolved, _) = ssh_config::apply(t, opts.ssh_config.as_deref());
    resolved.user = resolved.user.or_else(local_user);
    resolved
}

/// Connects to `t` (after `~/.ssh/config`), checks its host key and authenticates.
pub(super) async fn login(t: &SshTarget, opts: &ConnectOptions) -> Result<Login, TransportError> {
    let (resolved, identities) = ssh_config::apply(t, opts.ssh_config.as_deref());
    let t = resolved;
    let mut with_config;
    let opts = if identities.is_empty() {
        opts
    } else {
        with_config = opts.clone();
        with_config.identities.splice(0..0, identities);
        &with_config
    };
    let display = known_hosts::host_pattern(&t.addr, t.port);
    let user = match &t.user {
        Some(u) => u.clone(),
        None => local_user().ok_or_else(|| TransportError::AuthFailed {
            user: "?".into(),
            host: display.clone(),
            tried: "nothing: no user in the host entry and $USER is not set".into(),
        })?,
    };
    let known_text = match std::fs::read_to_string(&opts.known_hosts) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(TransportError::Protocol(format!(
                "cannot read {}: {e}",
                opts.known_hosts.display()
            )));
        }
    };
    let refusal = Arc::new(Mutex::new(None));
    let verified = Arc::new(Mutex::new(None));
    let handler = HostKeyCheck {
        host: t.addr.clone(),
        port: t.port,
        known_hosts_path: opts.known_hosts.clone(),
        known: KnownHosts::parse(&known_text),
        refusal: refusal.clone(),
        verified: verified.clone(),
    };
    let tcp = tokio::net::TcpStream::connect((t.addr.as_str(), t.port))
        .await
        .map_err(|e| TransportError::Unreachable(format!("cannot connect to {display}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let config = Arc::new(client::Config {
        // A dead peer must not hang a rollout forever: three unanswered keepalives close it.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let mut handle = match client::connect_stream(config, tcp, handler).await {
        Ok(h) => h,
        Err(e) => {
            let stored = refusal.lock().ok().and_then(|mut r| r.take());
            return Err(stored.unwrap_or_else(|| {
                TransportError::Unreachable(format!("SSH handshake with {display} failed: {e}"))
            }));
        }
    };
    authenticate(&mut handle, &user, &display, opts).await?;
    let host_key = verified.lock().ok().and_then(|mut k| k.take());
    Ok(Login {
        handle,
        display,
        target: t,
        user,
        host_key,
    })
}

/// Tries ssh-agent keys, then key files, like `ssh` does.
async fn authenticate(
    handle: &mut client::Handle<HostKeyCheck>,
    user: &str,
    display: &str,
    opts: &ConnectOptions,
) -> Result<(), TransportError> {
    let mut tried: Vec<String> = Vec::new();
    let lost = |e: &dyn std::fmt::Display| {
        TransportError::Unreachable(format!(
            "{display}: SSH connection lost during authentication: {e}"
        ))
    };
    if let Some(sock) = &opts.ssh_auth_sock {
        match SshAgent::connect(sock).await {
            Ok(mut agent) => {
                for key in agent.public_keys().await.unwrap_or_default() {
                    let hash = rsa_hash(handle, &key).await;
                    tried.push(format!(
                        "ssh-agent key {}",
                        key.fingerprint(HashAlg::Sha256)
                    ));
                    match handle
                        .authenticate_publickey_with(user, key, hash, agent.client())
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => tried.push(format!("(ssh-agent failed: {e})")),
                    }
                }
            }
            Err(e) => tried.push(format!("(ssh-agent at {} unusable: {e})", sock.display())),
        }
    }
    for path in &opts.identities {
        if !path.exists() {
            continue;
        }
        let key = match russh::keys::load_secret_key(path, None) {
            Ok(k) => k,
            Err(e) => {
                tried.push(format!(
                    "({} unusable: {e}; load it into ssh-agent instead)",
                    path.display()
                ));
                continue;
            }
        };
        let hash = rsa_hash(handle, key.public_key()).await;
        tried.push(path.display().to_string());
        let result = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(|e| lost(&e))?;
        if result.success() {
            return Ok(());
        }
    }
    if tried.is_empty() {
        tried.push("no keys: none in ssh-agent, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa".into());
    }
    Err(TransportError::AuthFailed {
        user: user.to_string(),
        host: display.to_string(),
        tried: tried.join(", "),
    })
}

async fn rsa_hash(
    handle: &client::Handle<HostKeyCheck>,
    key: &russh::keys::PublicKey,
) -> Option<HashAlg> {
    if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten()
    } else {
        None
    }
}
