//! The agent's unix socket: one connection is a `hello`, then any number of
//! requests in turn. A malformed frame gets an `error` reply and the connection is closed;
//! nothing a client sends can panic the agent.
//!
//! Nor can it hold the agent (README, "Under abuse"): every connection is accepted, and past
//! `max_connections` the longest idle one that follows no job is closed ([`crate::admission`]);
//! `hello`, and any frame once begun, must arrive within `frame_timeout`; a connection that
//! follows no job is closed after `idle_timeout` without a request.

use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use frame_io::{FrameReader, ReadError, write_frame};
use proto::codec::{CodecError, MAX_FRAME, encode};
use proto::wire::{Greeting, PROTOCOL_VERSION, Reply, Request, ServiceLogs, protocol_refusal};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;

use crate::admission::{ConnHandle, Connections};
use crate::agent::{AGENT_VERSION, Agent, Submitted, Watched};
use crate::backend::Backend;
use crate::job::{Cursor, Item, Job};
/// How long shutdown waits for clients to read the outcomes of the jobs that finished.
const FOLLOWER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another agent is already serving {0}")]
    InUse(PathBuf),
    #[error(
        "{0} exists and is not a socket; refusing to replace it (check `socket` in agent.toml)"
    )]
    NotASocket(PathBuf),
    #[error("socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("socket_group {0:?} is not a group on this host (see /etc/group)")]
    UnknownGroup(String),
}

/// Binds the socket: mode 0660, owned by `group` when given. A stale socket file left by a
/// crash is replaced; a live one (another agent) is an error.
pub fn bind(path: &Path, group: Option<&str>) -> Result<UnixListener, SocketError> {
    let err = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.to_path_buf()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let gid = match group {
        Some(group) => Some(
            resolve_group(
                group,
                &std::fs::read_to_string("/etc/group").unwrap_or_default(),
            )
            .ok_or_else(|| SocketError::UnknownGroup(group.to_string()))?,
        ),
        None => None,
    };
    let listener = UnixListener::bind(path).map_err(err)?;
    let restricted = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .and_then(|()| {
            gid.map_or(Ok(()), |gid| {
                std::os::unix::fs::chown(path, None, Some(gid))
            })
        });
    if let Err(e) = restricted {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(listener)
}

/// A group name or numeric gid → gid, from the text of `/etc/group`.
fn resolve_group(group: &str, etc_group: &str) -> Option<u32> {
    if let Ok(gid) = group.parse() {
        return Some(gid);
    }
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let gid = fields.nth(1)?;
        (name == group).then(|| gid.parse().ok()).flatten()
    })
}

/// Accepts connections until `shutdown` resolves, then stops accepting, removes the socket and
/// waits up to `shutdown_grace` for running jobs (what is left is recovered at the next start).
pub async fn serve<B: Backend>(
    agent: Arc<Agent<B>>,
    listener: UnixListener,
    socket_path: &Path,
    shutdown: impl Future<Output = ()>,
) {
    let watcher = tokio::spawn(agent.clone().health_watch());
    let events = tokio::spawn(agent.clone().event_watch());
    let delivery = tokio::spawn(agent.clone().deliver_alerts());
    tokio::pin!(shutdown);
    tracing::info!(socket = %socket_path.display(), host = %agent.config().host, env = %agent.config().env, "serving");
    let connections = Connections::new(agent.config().limits.max_connections);
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    let (conn, closed) = connections.admit();
                    tokio::spawn(async move {
                        let (rd, wr) = stream.into_split();
                        // Closed for room: dropping the connection's future drops its stream.
                        tokio::select! {
                            () = serve_connection(&agent, &conn, rd, wr) => {}
                            _ = closed => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(socket_path);
    watcher.abort();
    events.abort();
    // Whatever is still pending stays in the outbox for the next start.
    delivery.abort();
    let grace = agent.config().shutdown_grace;
    let running = agent.running();
    if !running.is_empty() {
        tracing::info!(
            jobs = running.len(),
            "stopped accepting; waiting up to {grace:?} for running jobs"
        );
    }
    let left = agent.wait_for_jobs(grace).await;
    // Clients following a job that just ended get to read its outcome; a stuck client does
    // not hold the exit up for long.
    agent.wait_for_followers(FOLLOWER_GRACE).await;
    if left > 0 {
        tracing::warn!(
            jobs = left,
            "exiting with jobs unfinished; the next start recovers them"
        );
    } else {
        tracing::info!("stopped");
    }
}

/// One client, from `hello` to close.
async fn serve_connection<B: Backend, R, W>(
    agent: &Arc<Agent<B>>,
    conn: &ConnHandle,
    rd: R,
    mut wr: W,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limits = agent.config().limits;
    let mut reader = FrameReader::new(rd);
    if !greet(agent, conn, &mut reader, &mut wr, limits.frame_timeout).await {
        return;
    }
    loop {
        let request = match reader
            .next_within::<Request>(limits.idle_timeout, limits.frame_timeout)
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) | Err(ReadError::Codec(CodecError::Io(_))) => return,
            Err(e @ (ReadError::Idle(_) | ReadError::Stalled(_))) => {
                tracing::debug!(connection = conn.id(), "closing: {e}");
                return;
            }
            Err(ReadError::Codec(e)) => {
                tracing::debug!("bad frame: {e}");
                let _ = send_error(&mut wr, &format!("bad request: {e}")).await;
                return;
            }
        };
        conn.active();
        if handle(agent, conn, request, &mut wr).await.is_err() {
            // The client went away; any job it started goes on without it.
            return;
        }
        conn.active();
    }
}

/// The `hello` exchange, which must complete within `limit` of the connect; false when the
/// connection is to be closed. The hello is read leniently and a client of another protocol
/// version is refused in the frame every version reads (`proto::wire`'s module docs).
async fn greet<B: Backend, R, W>(
    agent: &Arc<Agent<B>>,
    conn: &ConnHandle,
    reader: &mut FrameReader<R>,
    wr: &mut W,
    limit: Duration,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, reader.next::<Greeting>()).await {
        Ok(Ok(Some(Greeting::Hello { protocol, client }))) => {
            if protocol != PROTOCOL_VERSION {
                tracing::info!(
                    client,
                    protocol,
                    "refused a client of another protocol version"
                );
                let _ = write_frame(wr, &protocol_refusal(protocol, AGENT_VERSION)).await;
                return false;
            }
            tracing::debug!(client, "hello");
            // Active as of its hello, before the reply: a client that opens its next
            // connection once answered must find this one the more recently active.
            conn.active();
            let hello = Reply::Hello {
                protocol: PROTOCOL_VERSION,
                agent_version: AGENT_VERSION.to_string(),
                host: agent.config().host.clone(),
                env: agent.config().env.clone(),
            };
            write_frame(wr, &hello).await.is_ok()
        }
        Ok(Ok(Some(Greeting::NotHello))) => {
            let _ = send_error(wr, "the first frame must be a hello").await;
            false
        }
        Ok(Ok(None)) => false,
        Err(_) => {
            tracing::debug!("closing: no hello within {limit:?}");
            false
        }
        Ok(Err(e)) => {
            let _ = send_error(wr, &format!("bad hello: {e}")).await;
            false
        }
    }
}

/// `status` at once and after every change, until the client goes away. Each frame counts as
/// activity, so the connection is not the longest idle one when room is made; it is not
/// "following a job" either, so it never holds up a shutdown.
async fn subscribe<B: Backend, W: AsyncWrite + Unpin>(
    agent: &Arc<Agent<B>>,
    conn: &ConnHandle,
    wr: &mut W,
) -> Result<(), CodecError> {
    let mut changes = agent.subscribe();
    let heartbeat = Duration::from_secs(proto::wire::SUBSCRIBE_HEARTBEAT_SECS);
    loop {
        changes.borrow_and_update();
        let status = agent.status().await;
        write_frame(wr, &Reply::Status { status }).await?;
        conn.active();
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            () = tokio::time::sleep(heartbeat) => {}
        }
    }
}

async fn handle<B: Backend, W: AsyncWrite + Unpin>(
    agent: &Arc<Agent<B>>,
    conn: &ConnHandle,
    request: Request,
    wr: &mut W,
) -> Result<(), CodecError> {
    match request {
        Request::Hello { .. } => {
            send_error(wr, "hello was already exchanged on this connection").await?;
            Err(CodecError::Malformed("second hello".into()))
        }
        Request::Submit { order } => match agent.submit(order).await {
            Submitted::Job(job) => {
                let _following = (agent.following(), conn.following());
                follow(&job, wr).await
            }
            Submitted::Refused(refusal) => write_frame(wr, &Reply::Refused { refusal }).await,
            Submitted::Error(message) => send_error(wr, &message).await,
        },
        Request::Watch { order_id } => match agent.watch(&order_id) {
            Watched::Running(job) => {
                let _following = (agent.following(), conn.following());
                follow(&job, wr).await
            }
            Watched::Finished { events, outcome } => {
                for event in events {
                    write_frame(wr, &Reply::Event { event }).await?;
                }
                match outcome {
                    Some(outcome) => write_frame(wr, &Reply::Outcome { outcome }).await,
                    None => {
                        send_error(
                            wr,
                            &format!("order {order_id} has no outcome in the journal"),
                        )
                        .await
                    }
                }
            }
            Watched::Unknown(message) => send_error(wr, &message).await,
        },
        Request::Status {} => {
            let status = agent.status().await;
            write_frame(wr, &Reply::Status { status }).await
        }
        Request::Subscribe {} => subscribe(agent, conn, wr).await,
        Request::History { limit } => {
            let mut entries = agent.history(limit);
            // Fit one frame: drop the oldest entries rather than fail.
            while encoded_len(&Reply::History {
                entries: entries.clone(),
            }) > MAX_FRAME
                && !entries.is_empty()
            {
                entries.truncate(entries.len() / 2);
            }
            write_frame(wr, &Reply::History { entries }).await
        }
        Request::Propose { proposal } => match agent.propose(proposal) {
            Ok((proposal, required)) => {
                write_frame(wr, &Reply::Proposal { proposal, required }).await
            }
            Err(r) => write_frame(wr, &Reply::Refused { refusal: r.into() }).await,
        },
        Request::Proposals {} => {
            let (proposals, required) = agent.proposals();
            write_frame(
                wr,
                &Reply::Proposals {
                    proposals,
                    required,
                },
            )
            .await
        }
        Request::Approve { id, signature } => match agent.approve(&id, &signature) {
            Ok((proposal, required)) => {
                write_frame(wr, &Reply::Proposal { proposal, required }).await
            }
            Err(r) => write_frame(wr, &Reply::Refused { refusal: r.into() }).await,
        },
        Request::Logs { service, lines } => match agent.logs(service.as_deref(), lines).await {
            Ok(logs) => {
                let logs = fit_logs(logs);
                write_frame(wr, &Reply::Logs { logs }).await
            }
            Err(message) => send_error(wr, &message).await,
        },
    }
}

/// Streams a job's events from its first, then live, ending with the outcome; an exec's
/// output lines among them as they come.
async fn follow<W: AsyncWrite + Unpin>(job: &Job, wr: &mut W) -> Result<(), CodecError> {
    let mut changed = job.subscribe();
    let mut cursor = Cursor::default();
    loop {
        let (items, outcome) = job.feed(&mut cursor);
        for item in items {
            let reply = match item {
                Item::Event(event) => Reply::Event { event },
                Item::Output(output) => Reply::Output { output },
            };
            write_frame(wr, &reply).await?;
        }
        if let Some(outcome) = outcome {
            return write_frame(wr, &Reply::Outcome { outcome }).await;
        }
        if changed.changed().await.is_err() {
            // The job is gone without an outcome; cannot happen while we hold it, but never hang.
            return send_error(wr, "the job ended without an outcome").await;
        }
    }
}

async fn send_error<W: AsyncWrite + Unpin>(wr: &mut W, message: &str) -> Result<(), CodecError> {
    write_frame(
        wr,
        &Reply::Error {
            message: message.to_string(),
        },
    )
    .await
}

fn encoded_len(reply: &Reply) -> usize {
    encode(reply).map(|b| b.len()).unwrap_or(usize::MAX)
}

/// Log lines are the one reply whose size a client cannot predict: keep the newest lines that
/// fit in a frame.
fn fit_logs(mut logs: Vec<ServiceLogs>) -> Vec<ServiceLogs> {
    while encoded_len(&Reply::Logs { logs: logs.clone() }) > MAX_FRAME {
        let Some(longest) = logs.iter_mut().max_by_key(|l| l.lines.len()) else {
            break;
        };
        if longest.lines.is_empty() {
            break;
        }
        let keep = longest.lines.len() / 2;
        longest.lines.drain(..longest.lines.len() - keep);
    }
    logs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binding_replaces_a_stale_socket_but_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("agent.sock");
        let live = bind(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(matches!(bind(&path, None), Err(SocketError::InUse(_))));
        drop(live);
        bind(&path, None).expect("a stale socket is replaced");
        let file = dir.path().join("precious");
        std::fs::write(&file, b"data").unwrap();
        assert!(matches!(bind(&file, None), Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&file).unwrap(), b"data");
        assert!(matches!(
            bind(&dir.path().join("x.sock"), Some("no-such-group-here")),
            Err(SocketError::UnknownGroup(_))
        ));
    }

    #[test]
    fn groups_resolve_by_name_or_number() {
        let etc = "root:x:0:\ndeploy:x:998:alice,bob\nbroken\n";
        let cases = [
            ("deploy", Some(998)),
            ("root", Some(0)),
            ("1234", Some(1234)),
            ("nobody", None),
            ("broken", None),
        ];
        for (group, expected) in cases {
            assert_eq!(resolve_group(group, etc), expected, "{group}");
        }
    }

    #[test]
    fn logs_are_trimmed_to_one_frame_keeping_the_newest_lines() {
        let big = ServiceLogs {
            app: "a".into(),
            service: "s".into(),
            container: "c".into(),
            lines: (0..40_000).map(|i| format!("{i:0>200}")).collect(),
        };
        let small = ServiceLogs {
            lines: vec!["x".into()],
            ..big.clone()
        };
        let fitted = fit_logs(vec![big, small]);
        assert!(
            encoded_len(&Reply::Logs {
                logs: fitted.clone()
            }) <= MAX_FRAME
        );
        assert_eq!(
            fitted[0].lines.last().map(String::as_str),
            Some(format!("{:0>200}", 39_999).as_str())
        );
        assert_eq!(fitted[1].lines, ["x"]);
    }
}
