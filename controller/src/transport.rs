//! Reaching an agent: its unix socket on this machine, or `deploy-agent bridge` run over SSH
//! (README, "SSH"). Both give the same [`Connection`], with the `hello` exchange done; what is
//! said over it is [`AgentStream`]'s (`transport/stream.rs`), which the test clients use too.
//!
//! This is the only module that knows russh (with its `ssh_agent` client, which the order
//! signer uses too). SSH host keys are checked against known_hosts before anything else is
//! sent ([`crate::known_hosts`]); an unknown or changed key refuses the connection with the
//! fingerprint and the exact line a human would add after checking it.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::wire::{
    AgentStatus, HistoryEntry, JobEvent, Outcome, OutputLine, Refusal, Request, ServiceLogs,
    SignedOrder,
};
use russh::{ChannelMsg, client};
use tokio::io::AsyncWriteExt;

use crate::config::{SshTarget, Target};

mod shell;
mod ssh;
pub(crate) mod ssh_agent;
mod ssh_config;
pub use shell::{RemoteShell, ShellOutput};
pub use ssh::effective_target;
mod stream;
pub use stream::{AgentStream, Held};

/// Environment variable naming the command that starts the agent's bridge on SSH hosts
/// (default `deploy-agent`; e.g. `sudo -n /usr/local/bin/deploy-agent`).
pub const REMOTE_AGENT_ENV: &str = "DEPLOYCTL_REMOTE_AGENT";
/// Environment variable naming an SSH private key to try before the default ones.
pub const SSH_IDENTITY_ENV: &str = "DEPLOYCTL_SSH_IDENTITY";

/// How long a read-only request (status, history, logs) may take before the agent counts as
/// not answering; job streams have no such limit (SSH keepalives catch dead peers).
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// The most stderr of a remote bridge kept for error messages.
const STDERR_KEEP: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error(
        "host key of {host} is not in {known_hosts}: the server offered {algorithm} {fingerprint}.\n\
         If that is the right key (check it on the host with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), add this line to {known_hosts}:\n{line}"
    )]
    HostKeyUnknown {
        host: String,
        known_hosts: String,
        algorithm: String,
        fingerprint: String,
        line: String,
    },
    #[error(
        "HOST KEY CHANGED for {host}: the server offered {algorithm} {fingerprint}, which differs from {known_hosts} line {recorded_line}. \
         This may be an attack; if the host was reinstalled, replace that line with:\n{line}"
    )]
    HostKeyChanged {
        host: String,
        known_hosts: String,
        algorithm: String,
        fingerprint: String,
        recorded_line: usize,
        line: String,
    },
    #[error("host key of {host} ({fingerprint}) is marked @revoked in {known_hosts} line {line}")]
    HostKeyRevoked {
        host: String,
        known_hosts: String,
        fingerprint: String,
        line: usize,
    },
    #[error("SSH authentication as {user}@{host} failed (tried: {tried})")]
    AuthFailed {
        user: String,
        host: String,
        tried: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The agent speaks another protocol version (README, "Version skew").
    #[error("{0}")]
    ProtocolVersion(crate::version_skew::VersionSkew),
    #[error("agent error: {0}")]
    Agent(String),
    #[error("connection lost: {0}")]
    Closed(String),
}

impl TransportError {
    /// Host key problems need a human; retrying cannot help.
    pub fn is_host_key(&self) -> bool {
        matches!(
            self,
            Self::HostKeyUnknown { .. } | Self::HostKeyChanged { .. } | Self::HostKeyRevoked { .. }
        )
    }
}

/// How to reach hosts: shared by every connection of one command.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub known_hosts: PathBuf,
    /// Key files to try, in order, after ssh-agent keys.
    pub identities: Vec<PathBuf>,
    pub ssh_auth_sock: Option<PathBuf>,
    pub remote_agent: String,
    pub timeout: Duration,
    /// Sent in `hello`, shown in agent logs.
    pub client_name: String,
    /// `~/.ssh/config`'s text, when there is one: aliases, users, ports and keys per host.
    pub ssh_config: Option<String>,
}

impl ConnectOptions {
    /// Defaults from the environment: `~/.ssh/known_hosts` unless `known_hosts` is given,
    /// `$DEPLOYCTL_SSH_IDENTITY` then `~/.ssh/id_{ed25519,ecdsa,rsa}`, `$SSH_AUTH_SOCK`.
    pub fn from_env(known_hosts: Option<&Path>) -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/"));
        let mut identities: Vec<PathBuf> = std::env::var_os(SSH_IDENTITY_ENV)
            .map(PathBuf::from)
            .into_iter()
            .collect();
        identities.extend(
            ["id_ed25519", "id_ecdsa", "id_rsa"]
                .iter()
                .map(|f| home.join(".ssh").join(f)),
        );
        ConnectOptions {
            known_hosts: known_hosts
                .map(Path::to_path_buf)
                .unwrap_or_else(|| home.join(".ssh/known_hosts")),
            identities,
            ssh_auth_sock: std::env::var_os("SSH_AUTH_SOCK")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            remote_agent: std::env::var(REMOTE_AGENT_ENV)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "deploy-agent".into()),
            timeout: Duration::from_secs(10),
            client_name: format!("deployctl/{}", env!("CARGO_PKG_VERSION")),
            ssh_config: std::fs::read_to_string(home.join(".ssh/config")).ok(),
        }
    }
}

/// Who answered the `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The name the agent gives itself; shown, never trusted to bind an order.
    pub host: String,
    pub env: String,
    pub agent_version: String,
    /// Over SSH: `SHA256:…` of the host key checked against known_hosts. Orders carry it, and
    /// an agent refuses an order whose key is not one of its host's own, so a login on one
    /// host that claims another host's name gets nothing valid for that other host.
    pub host_key: Option<String>,
}

/// How a submitted or watched order ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    Outcome(Outcome),
    Refused(Refusal),
}

/// An open, greeted connection to one agent: an [`AgentStream`] and, over SSH, the session
/// behind it, whose stderr and exit status explain a lost connection. Requests are sequential.
pub struct Connection {
    stream: AgentStream,
    pub peer: Peer,
    ssh: Option<SshLink>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("ssh", &self.ssh.is_some())
            .finish()
    }
}

/// What keeps an SSH session alive and what it told us on stderr.
struct SshLink {
    _handle: client::Handle<ssh::HostKeyCheck>,
    remote: Arc<Mutex<RemoteEnd>>,
    pump: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct RemoteEnd {
    stderr: Vec<u8>,
    exit_status: Option<u32>,
}

impl Drop for SshLink {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

/// Connects to the agent `target` names and exchanges `hello`, within `opts.timeout`.
pub async fn connect(target: &Target, opts: &ConnectOptions) -> Result<Connection, TransportError> {
    let attempt = async {
        match target {
            Target::Local { socket } => connect_local(socket, opts).await,
            Target::Ssh(t) => connect_ssh(t, opts).await,
        }
    };
    match tokio::time::timeout(opts.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Unreachable(format!(
            "{target}: no answer within {}s",
            opts.timeout.as_secs()
        ))),
    }
}

async fn connect_local(socket: &Path, opts: &ConnectOptions) -> Result<Connection, TransportError> {
    greet(AgentStream::unix(socket).await?, None, opts).await
}

async fn greet(
    mut stream: AgentStream,
    mut ssh: Option<SshLink>,
    opts: &ConnectOptions,
) -> Result<Connection, TransportError> {
    let peer = stream.hello(&opts.client_name).await;
    let peer = explain(&mut ssh, peer).await?;
    Ok(Connection { stream, peer, ssh })
}

/// Adds to a "connection lost" error whatever the remote bridge said on stderr.
async fn explain<T>(
    ssh: &mut Option<SshLink>,
    result: Result<T, TransportError>,
) -> Result<T, TransportError> {
    let (Err(TransportError::Closed(what)), Some(ssh)) = (&result, ssh) else {
        return result;
    };
    // The exit status follows the end of the data stream; give it a moment to arrive.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut ssh.pump).await;
    let remote = ssh
        .remote
        .lock()
        .map(|r| (r.stderr.clone(), r.exit_status))
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&remote.0);
    let stderr = stderr.trim();
    let mut msg = what.clone();
    if let Some(code) = remote.1 {
        msg.push_str(&format!("; the remote bridge exited with status {code}"));
        if code == 127 {
            msg.push_str(&format!(" (command not found: is deploy-agent installed and on PATH? set {REMOTE_AGENT_ENV} to its path)"));
        }
    }
    if !stderr.is_empty() {
        msg.push_str(&format!("; its stderr: {stderr}"));
    }
    Err(TransportError::Closed(msg))
}

impl Connection {
    pub async fn status(&mut self) -> Result<AgentStatus, TransportError> {
        within_query_timeout("status", async {
            let status = self.stream.status().await;
            explain(&mut self.ssh, status).await
        })
        .await
    }

    /// Subscribes to the agent's status: the first comes at once, the next after each change.
    pub async fn subscribe(&mut self) -> Result<(), TransportError> {
        self.stream.subscribe().await
    }

    /// The next status of a subscription (no query timeout: the agent sends one at least every
    /// `SUBSCRIBE_HEARTBEAT_SECS`, and SSH keepalives catch a dead peer).
    pub async fn next_status(&mut self) -> Result<AgentStatus, TransportError> {
        let status = self.stream.next_status().await;
        explain(&mut self.ssh, status).await
    }

    pub async fn history(&mut self, limit: usize) -> Result<Vec<HistoryEntry>, TransportError> {
        within_query_timeout("history", async {
            let entries = self.stream.history(limit).await;
            explain(&mut self.ssh, entries).await
        })
        .await
    }

    pub async fn logs(
        &mut self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogs>, TransportError> {
        within_query_timeout("logs", async {
            let logs = self.stream.logs(service, lines).await;
            explain(&mut self.ssh, logs).await
        })
        .await
    }

    /// Hands a signed proposal to the agent to hold.
    pub async fn propose(
        &mut self,
        proposal: proto::approval::SignedProposal,
    ) -> Result<stream::Held, TransportError> {
        within_query_timeout("propose", async {
            let held = self.stream.propose(proposal).await;
            explain(&mut self.ssh, held).await
        })
        .await
    }

    /// The agent's unexpired proposals and the approvals each needs.
    pub async fn proposals(
        &mut self,
    ) -> Result<(Vec<proto::approval::HeldProposal>, usize), TransportError> {
        within_query_timeout("proposals", async {
            let all = self.stream.proposals().await;
            explain(&mut self.ssh, all).await
        })
        .await
    }

    /// Sends an approval of proposal `id`.
    pub async fn approve(
        &mut self,
        id: &str,
        signature: &str,
    ) -> Result<stream::Held, TransportError> {
        within_query_timeout("approve", async {
            let held = self.stream.approve(id, signature).await;
            explain(&mut self.ssh, held).await
        })
        .await
    }

    /// Submits a signed order and follows it to its outcome, passing each event to `on_event`.
    pub async fn submit(
        &mut self,
        order: SignedOrder,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> Result<JobEnd, TransportError> {
        let end = self.stream.submit(order, every_event(on_event)).await;
        let ControlFlow::Continue(end) = explain(&mut self.ssh, end).await?;
        Ok(end)
    }

    /// Submits a signed exec order and follows it to its end, passing each event to
    /// `on_event` and each line its command writes to `on_output`, as they come.
    pub async fn exec(
        &mut self,
        order: SignedOrder,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
        on_output: &mut (dyn FnMut(OutputLine) + Send),
    ) -> Result<JobEnd, TransportError> {
        let followed = async {
            self.stream.send(&Request::Submit { order }).await?;
            self.stream
                .follow_with(every_event(on_event), on_output)
                .await
        }
        .await;
        let ControlFlow::Continue(end) = explain(&mut self.ssh, followed).await?;
        Ok(end)
    }

    /// Re-attaches to an order: its journaled events, then live ones, to the outcome.
    pub async fn watch(
        &mut self,
        order_id: &str,
        on_event: &mut (dyn FnMut(&JobEvent) + Send),
    ) -> Result<JobEnd, TransportError> {
        let end = self.stream.watch(order_id, every_event(on_event)).await;
        let ControlFlow::Continue(end) = explain(&mut self.ssh, end).await?;
        Ok(end)
    }
}

/// A follower that never stops reading before the job's end.
fn every_event(
    on_event: &mut (dyn FnMut(&JobEvent) + Send),
) -> impl FnMut(JobEvent) -> ControlFlow<Infallible> + Send {
    move |event| {
        on_event(&event);
        ControlFlow::Continue(())
    }
}

/// A read-only exchange (status, history, logs) within [`QUERY_TIMEOUT`].
async fn within_query_timeout<T>(
    what: &str,
    exchange: impl Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    match tokio::time::timeout(QUERY_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Closed(format!(
            "no answer to {what} within {}s",
            QUERY_TIMEOUT.as_secs()
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// SSH

/// Quotes a word for the remote POSIX shell sshd runs the command with.
pub use proto::order::shell_quote;

/// The command run on the host: `<remote agent> bridge --socket <path>`.
pub fn bridge_command(remote_agent: &str, socket: &str) -> String {
    format!(
        "{} bridge --socket {}",
        remote_agent.trim(),
        shell_quote(socket)
    )
}

async fn connect_ssh(t: &SshTarget, opts: &ConnectOptions) -> Result<Connection, TransportError> {
    let ssh::Login {
        handle,
        display,
        target: t,
        host_key,
        ..
    } = ssh::login(t, opts).await?;
    let channel = handle.channel_open_session().await.map_err(|e| {
        TransportError::Unreachable(format!(
            "{display}: cannot open an SSH session channel: {e}"
        ))
    })?;
    let command = bridge_command(&opts.remote_agent, &t.socket);
    channel.exec(true, command.as_bytes()).await.map_err(|e| {
        TransportError::Unreachable(format!("{display}: cannot run `{command}`: {e}"))
    })?;
    let (mut read_half, write_half) = channel.split();
    let writer = write_half.make_writer();
    let (mut pump_end, conn_end) = tokio::io::duplex(256 * 1024);
    let remote = Arc::new(Mutex::new(RemoteEnd::default()));
    let remote_in_pump = remote.clone();
    // Demultiplexes the channel: stdout feeds the frame reader, stderr is kept for errors.
    let pump = tokio::spawn(async move {
        let _keep_open = write_half;
        let mut stdout_open = true;
        while let Some(msg) = read_half.wait().await {
            match msg {
                // A reader that went away stops wanting stdout; the channel still drains.
                ChannelMsg::Data { data }
                    if stdout_open && pump_end.write_all(&data).await.is_err() =>
                {
                    stdout_open = false;
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    if let Ok(mut r) = remote_in_pump.lock() {
                        r.stderr.extend_from_slice(&data);
                        let excess = r.stderr.len().saturating_sub(STDERR_KEEP);
                        r.stderr.drain(..excess);
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    if let Ok(mut r) = remote_in_pump.lock() {
                        r.exit_status = Some(exit_status);
                    }
                }
                ChannelMsg::Eof => {
                    let _ = pump_end.shutdown().await;
                    stdout_open = false;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = pump_end.shutdown().await;
    });
    let (conn_read, _unused_write) = tokio::io::split(conn_end);
    let link = SshLink {
        _handle: handle,
        remote,
        pump,
    };
    let mut conn = greet(AgentStream::new(conn_read, writer), Some(link), opts).await?;
    conn.peer.host_key = host_key;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use frame_io::{FrameReader, write_frame};
    use proto::wire::{Reply, Request};

    use super::*;

    #[test]
    fn bridge_commands_quote_the_socket() {
        assert_eq!(
            bridge_command("deploy-agent", "/run/deploy-agent/agent.sock"),
            "deploy-agent bridge --socket /run/deploy-agent/agent.sock"
        );
        assert_eq!(
            bridge_command("sudo -n deploy-agent ", "/tmp/a b'c"),
            "sudo -n deploy-agent bridge --socket '/tmp/a b'\\''c'"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[tokio::test]
    async fn a_missing_socket_is_unreachable() {
        let opts = ConnectOptions::from_env(None);
        let err = connect(
            &Target::Local {
                socket: "/nonexistent/agent.sock".into(),
            },
            &opts,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&err, TransportError::Unreachable(m) if m.contains("/nonexistent/agent.sock")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_local_hello_exchange_yields_the_peer() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut frames = FrameReader::new(r);
            let hello: Request = frames.next().await.unwrap().unwrap();
            assert!(matches!(hello, Request::Hello { .. }));
            let reply = Reply::Hello {
                protocol: proto::wire::PROTOCOL_VERSION,
                agent_version: "9.9".into(),
                host: "h1".into(),
                env: "staging".into(),
            };
            write_frame(&mut w, &reply).await.unwrap();
            let req: Request = frames.next().await.unwrap().unwrap();
            assert_eq!(req, Request::History { limit: 3 });
            write_frame(
                &mut w,
                &Reply::Error {
                    message: "journal unreadable".into(),
                },
            )
            .await
            .unwrap();
        });
        let mut conn = connect(
            &Target::Local { socket: sock },
            &ConnectOptions::from_env(None),
        )
        .await
        .unwrap();
        assert_eq!(
            conn.peer,
            Peer {
                host: "h1".into(),
                env: "staging".into(),
                agent_version: "9.9".into(),
                host_key: None,
            }
        );
        let err = conn.history(3).await.unwrap_err();
        assert_eq!(err, TransportError::Agent("journal unreadable".into()));
        server.await.unwrap();
        let err = conn.status().await.unwrap_err();
        assert!(matches!(err, TransportError::Closed(_)), "{err}");
    }
}
