//! What commands need from the agents, as traits: a [`Connector`] reaches a host's agent and
//! gives an [`AgentConn`] that answers status, history and logs and runs orders. The real one
//! is [`Transport`] (SSH or a local socket, [`crate::transport`]); the rollout's tests use
//! in-process fake agents. Also the real [`OrderSigner`].

use std::future::Future;

use futures_util::future::join_all;
use proto::order::Order;
use proto::wire::{AgentStatus, HistoryEntry, JobEvent, ServiceLogs, SignedOrder};

use crate::config::{EnvConfig, HostSpec};
use crate::output::{HostErrorKind, Message, Output};
use crate::rollout::OrderSigner;
use crate::transport::{self, ConnectOptions, Connection, JobEnd, Peer, TransportError};

/// Reaches the agent of one host.
pub trait Connector: Sync {
    type Conn: AgentConn;
    /// Connects and exchanges `hello`.
    fn connect(
        &self,
        host: &HostSpec,
    ) -> impl Future<Output = Result<Self::Conn, TransportError>> + Send;
}

/// An open, greeted connection to one agent. Requests are sequential.
pub trait AgentConn: Send {
    /// Who answered `hello`.
    fn peer(&self) -> &Peer;
    fn status(&mut self) -> impl Future<Output = Result<AgentStatus, TransportError>> + Send;
    /// The newest `limit` journal entries, newest first.
    fn history(
        &mut self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>, TransportError>> + Send;
    fn logs(
        &mut self,
        service: Option<&str>,
        lines: usize,
    ) -> impl Future<Output = Result<Vec<ServiceLogs>, TransportError>> + Send;
    /// Submits a signed order and follows it to its end, passing each event to `on_event`.
    fn submit(
        &mut self,
        order: SignedOrder,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> impl Future<Output = Result<JobEnd, TransportError>> + Send;
    /// Follows an order already accepted: its journaled events, then live ones, to its end.
    fn watch(
        &mut self,
        order_id: &str,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> impl Future<Output = Result<JobEnd, TransportError>> + Send;
}

/// The real agents of one env: over SSH, or a unix socket on this machine.
pub struct Transport {
    opts: ConnectOptions,
}

impl Transport {
    /// With the env's `known_hosts` and the SSH settings of this process's environment.
    pub fn for_env(env: &EnvConfig) -> Transport {
        Transport {
            opts: ConnectOptions::from_env(env.known_hosts.as_deref()),
        }
    }
}

impl Connector for Transport {
    type Conn = Connection;

    async fn connect(&self, host: &HostSpec) -> Result<Connection, TransportError> {
        transport::connect(&host.target, &self.opts).await
    }
}

impl AgentConn for Connection {
    fn peer(&self) -> &Peer {
        &self.peer
    }

    async fn status(&mut self) -> Result<AgentStatus, TransportError> {
        Connection::status(self).await
    }

    async fn history(&mut self, limit: usize) -> Result<Vec<HistoryEntry>, TransportError> {
        Connection::history(self, limit).await
    }

    async fn logs(
        &mut self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogs>, TransportError> {
        Connection::logs(self, service, lines).await
    }

    async fn submit(
        &mut self,
        order: SignedOrder,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> Result<JobEnd, TransportError> {
        Connection::submit(self, order, on_event).await
    }

    async fn watch(
        &mut self,
        order_id: &str,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> Result<JobEnd, TransportError> {
        Connection::watch(self, order_id, on_event).await
    }
}

/// Orders are signed with the env's key (chosen by `commands::load_signer`).
impl OrderSigner for crate::signer::Signer {
    async fn sign(&self, order: &Order) -> Result<SignedOrder, String> {
        self.sign_order(order).await.map_err(|e| e.to_string())
    }
}

/// Why a host could not be reached or asked: its kind, and the message ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub kind: HostErrorKind,
    pub message: String,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<TransportError> for HostError {
    fn from(e: TransportError) -> HostError {
        HostError {
            kind: HostErrorKind::from(&e),
            message: e.to_string(),
        }
    }
}

impl From<&TransportError> for HostErrorKind {
    fn from(e: &TransportError) -> HostErrorKind {
        match e {
            TransportError::Unreachable(_) => HostErrorKind::Unreachable,
            TransportError::HostKeyUnknown { .. }
            | TransportError::HostKeyChanged { .. }
            | TransportError::HostKeyRevoked { .. } => HostErrorKind::HostKey,
            TransportError::AuthFailed { .. } => HostErrorKind::Auth,
            TransportError::ProtocolVersion(_) => HostErrorKind::ProtocolVersion,
            TransportError::Protocol(_) => HostErrorKind::Protocol,
            TransportError::Agent(_) => HostErrorKind::Agent,
            TransportError::Closed(_) => HostErrorKind::ConnectionLost,
        }
    }
}

/// Connects to every host of `hosts` at once and checks that each agent serves `env` (and, for
/// hosts with an explicit name, is that host). An agent of another protocol version is told
/// with the host, both versions and the fix for `env`.
pub async fn connect_all<C: Connector>(
    connector: &C,
    env: &str,
    hosts: &[HostSpec],
) -> Vec<Result<C::Conn, HostError>> {
    join_all(hosts.iter().map(|h| async move {
        let conn = connector.connect(h).await.map_err(|e| match e {
            TransportError::ProtocolVersion(skew) => HostError {
                kind: HostErrorKind::ProtocolVersion,
                message: skew.explain(&h.target.to_string(), env),
            },
            e => HostError::from(e),
        })?;
        check_peer(h, env, conn.peer()).map_err(|message| HostError {
            kind: HostErrorKind::WrongAgent,
            message,
        })?;
        Ok(conn)
    }))
    .await
}

/// Says which hosts answered and which did not.
pub fn report_connections<K: AgentConn>(
    out: &dyn Output,
    hosts: &[HostSpec],
    results: &[Result<K, HostError>],
) {
    for (h, r) in hosts.iter().zip(results) {
        out.emit(&match r {
            Ok(c) => Message::Connected {
                host: h.name.clone(),
                agent_host: c.peer().host.clone(),
                agent_version: c.peer().agent_version.clone(),
            },
            Err(e) => Message::HostError {
                host: h.name.clone(),
                kind: Some(e.kind),
                error: e.message.clone(),
            },
        });
    }
}

/// An agent serving another env, or calling itself another name than deploy.toml gives it,
/// means deploy.toml points at the wrong machine.
pub fn check_peer(h: &HostSpec, env: &str, peer: &Peer) -> Result<(), String> {
    if peer.env != env {
        return Err(format!(
            "the agent at {} serves env {:?}, not {env:?}: deploy.toml lists it in the wrong env",
            h.target, peer.env
        ));
    }
    if h.name_is_explicit && peer.host != h.name {
        return Err(format!(
            "the agent at {} calls itself {:?}, but deploy.toml names it {:?}",
            h.target, peer.host, h.name
        ));
    }
    Ok(())
}
