//! What `status --watch` and `ui` show: every host of some envs, each with the last status its
//! agent sent on a subscription (README, "Watching"). [`follow`] keeps a [`Board`] current from
//! one subscription per host, reconnecting when one drops; the views are pure functions of it.

use std::time::Duration;

use proto::wire::AgentStatus;
use tokio::sync::watch;

use crate::config::{DeployConfig, EnvConfig, HostSpec};
use crate::connector::{HostError, check_peer};
use crate::output::{HostErrorKind, HostStatus};
use crate::transport::{self, ConnectOptions};

/// How long a host that dropped its subscription waits before the next attempt.
const RECONNECT: Duration = Duration::from_secs(2);

/// The latest word from every host, env by env, in deploy.toml order.
#[derive(Debug, Clone, Default)]
pub struct Board {
    pub app: String,
    pub envs: Vec<EnvRow>,
}

#[derive(Debug, Clone)]
pub struct EnvRow {
    pub env: String,
    pub hosts: Vec<HostRow>,
}

#[derive(Debug, Clone)]
pub struct HostRow {
    pub name: String,
    /// None until the host first answered or failed.
    pub last: Option<Result<AgentStatus, HostError>>,
}

impl Board {
    pub fn new(cfg: &DeployConfig, envs: &[&EnvConfig]) -> Board {
        Board {
            app: cfg.app.clone(),
            envs: envs
                .iter()
                .map(|e| EnvRow {
                    env: e.name.clone(),
                    hosts: e
                        .hosts
                        .iter()
                        .map(|h| HostRow {
                            name: h.name.clone(),
                            last: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Each host as a `status` row, named `env/host` when the board shows several envs.
    pub fn host_statuses(&self) -> Vec<HostStatus> {
        let several = self.envs.len() > 1;
        self.envs
            .iter()
            .flat_map(|e| {
                e.hosts.iter().map(move |h| {
                    let name = match several {
                        true => format!("{}/{}", e.env, h.name),
                        false => h.name.clone(),
                    };
                    match &h.last {
                        Some(Ok(s)) => HostStatus::up(&name, s, &self.app),
                        Some(Err(e)) => HostStatus::down(&name, e.kind, &e.message),
                        None => HostStatus::down(&name, HostErrorKind::Unreachable, "connecting…"),
                    }
                })
            })
            .collect()
    }
}

/// Subscribes to every host of `envs` and keeps the returned board current until the receiver
/// is dropped.
pub fn follow(cfg: &DeployConfig, envs: &[&EnvConfig]) -> watch::Receiver<Board> {
    let (tx, rx) = watch::channel(Board::new(cfg, envs));
    for (e, env) in envs.iter().enumerate() {
        let opts = ConnectOptions::from_env(env.known_hosts.as_deref());
        for (h, host) in env.hosts.iter().enumerate() {
            let (tx, opts, host, env_name) =
                (tx.clone(), opts.clone(), host.clone(), env.name.clone());
            tokio::spawn(async move {
                let set = |last: Result<AgentStatus, HostError>| {
                    tx.send_modify(|b| b.envs[e].hosts[h].last = Some(last));
                };
                while !tx.is_closed() {
                    if let Err(why) = subscription(&host, &env_name, &opts, &set).await {
                        set(Err(why));
                    }
                    tokio::time::sleep(RECONNECT).await;
                }
            });
        }
    }
    rx
}

/// One subscription, from connect to the first error.
async fn subscription(
    host: &HostSpec,
    env: &str,
    opts: &ConnectOptions,
    set: &impl Fn(Result<AgentStatus, HostError>),
) -> Result<(), HostError> {
    let mut conn = transport::connect(&host.target, opts)
        .await
        .map_err(HostError::from)?;
    check_peer(host, env, &conn.peer).map_err(|message| HostError {
        kind: HostErrorKind::WrongAgent,
        message,
    })?;
    conn.subscribe().await.map_err(HostError::from)?;
    loop {
        let status = conn.next_status().await.map_err(HostError::from)?;
        set(Ok(status));
    }
}
