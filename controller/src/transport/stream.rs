//! The client side of the agent's socket protocol over any byte stream: `hello` and its
//! protocol version check, one request at a time, replies, and a job's events to its end. It is
//! the one implementation: [`super::Connection`] is built on it, and so are the test clients
//! (the harness's `AgentClient`, the agent's daemon tests).

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use frame_io::{FrameReader, write_frame};
use proto::approval::{HeldProposal, SignedProposal};
use proto::codec::{self, CodecError};
use proto::wire::{
    AgentStatus, HelloAnswer, HistoryEntry, JobEvent, OutputLine, PROTOCOL_VERSION, RefusalKind,
    Reply, Request, ServiceLogs, SignedOrder,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{JobEnd, Peer, TransportError};
use crate::version_skew::VersionSkew;

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;

/// A proposal as the agent holds it after a `propose` or `approve`, with the approvals it needs;
/// or why the agent refused.
pub type Held = Result<(HeldProposal, usize), proto::wire::Refusal>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// One stream to an agent, however it was reached. Requests are sequential; nothing is sent
/// unasked, so a fresh stream may also be used to say something other than `hello` first.
pub struct AgentStream {
    reader: FrameReader<BoxRead>,
    writer: BoxWrite,
    silence_limit: Option<Duration>,
}

impl std::fmt::Debug for AgentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentStream")
            .field("silence_limit", &self.silence_limit)
            .finish_non_exhaustive()
    }
}

impl AgentStream {
    pub fn new(
        reader: impl AsyncRead + Send + Unpin + 'static,
        writer: impl AsyncWrite + Send + Unpin + 'static,
    ) -> AgentStream {
        AgentStream {
            reader: FrameReader::new(Box::new(reader)),
            writer: Box::new(writer),
            silence_limit: None,
        }
    }

    /// Connects to an agent's unix socket on this machine; says nothing yet.
    pub async fn unix(socket: &Path) -> Result<AgentStream, TransportError> {
        let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => " (is deploy-agent running?)",
                std::io::ErrorKind::ConnectionRefused => {
                    " (no agent listening: is deploy-agent running?)"
                }
                std::io::ErrorKind::PermissionDenied => " (are you in the agent's socket group?)",
                _ => "",
            };
            TransportError::Unreachable(format!(
                "cannot connect to {}: {e}{hint}",
                socket.display()
            ))
        })?;
        let (r, w) = stream.into_split();
        Ok(AgentStream::new(r, w))
    }

    /// Gives up on any read that waits longer than `limit` for the agent's next reply. Without
    /// it a job stream may be silent for as long as the job takes (a health wait says nothing);
    /// callers that know no step can take that long set one so a wedged agent fails them.
    pub fn with_silence_limit(mut self, limit: Duration) -> AgentStream {
        self.silence_limit = Some(limit);
        self
    }

    /// Exchanges `hello`, refusing an agent of another protocol version. The answer is read
    /// leniently, as the part of the protocol every version shares (`proto::wire`'s module
    /// docs), so an agent of any version is told apart from a broken peer.
    pub async fn hello(&mut self, client_name: &str) -> Result<Peer, TransportError> {
        self.send(&codec::hello_request(client_name)).await?;
        let answer = self
            .read::<HelloAnswer>()
            .await?
            .ok_or_else(|| TransportError::Closed("the agent closed the connection".into()))?;
        let skew = |theirs, agent_version, refusal| {
            TransportError::ProtocolVersion(VersionSkew {
                ours: PROTOCOL_VERSION,
                theirs,
                agent_version,
                refusal,
            })
        };
        match answer {
            HelloAnswer::Hello {
                protocol,
                agent_version,
                host,
                env,
            } if protocol == PROTOCOL_VERSION => Ok(Peer {
                host,
                env,
                agent_version,
                host_key: None,
            }),
            HelloAnswer::Hello {
                protocol,
                agent_version,
                ..
            } => Err(skew(Some(protocol), Some(agent_version), None)),
            HelloAnswer::Refused { refusal }
                if refusal.kind == RefusalKind::ProtocolVersion.to_string() =>
            {
                Err(skew(
                    refusal.protocol,
                    refusal.agent_version,
                    Some(refusal.message),
                ))
            }
            HelloAnswer::Refused { refusal } => Err(TransportError::Agent(format!(
                "hello refused ({}): {}",
                refusal.kind, refusal.message
            ))),
            HelloAnswer::Error { message } => Err(TransportError::Agent(message)),
            HelloAnswer::Other => Err(TransportError::Protocol(
                "expected hello, got another frame".into(),
            )),
        }
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), TransportError> {
        match write_frame(&mut self.writer, req).await {
            Ok(()) => Ok(()),
            Err(CodecError::Io(e)) => Err(TransportError::Closed(format!("sending: {e}"))),
            Err(e) => Err(TransportError::Protocol(e.to_string())),
        }
    }

    /// Writes `bytes` as they are, framed or not: for tests of how an agent takes input that
    /// is not a request.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let written = async {
            self.writer.write_all(bytes).await?;
            self.writer.flush().await
        };
        written
            .await
            .map_err(|e| TransportError::Closed(format!("sending: {e}")))
    }

    /// The next reply; `None` when the agent closed the connection between two frames.
    pub async fn next_reply(&mut self) -> Result<Option<Reply>, TransportError> {
        self.read::<Reply>().await
    }

    async fn read<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        let read = self.reader.next::<T>();
        let read = match self.silence_limit {
            // `FrameReader::next` is cancel-safe: a timed-out read loses no bytes.
            Some(limit) => tokio::time::timeout(limit, read).await.map_err(|_| {
                TransportError::Closed(format!("the agent sent nothing for {}s", limit.as_secs()))
            })?,
            None => read.await,
        };
        match read {
            Ok(reply) => Ok(reply),
            Err(CodecError::Io(e)) => Err(TransportError::Closed(e.to_string())),
            Err(CodecError::Truncated { len }) => Err(TransportError::Closed(format!(
                "closed in the middle of a {len}-byte frame"
            ))),
            Err(e) => Err(TransportError::Protocol(e.to_string())),
        }
    }

    /// [`Self::next_reply`] where the conversation is not over yet.
    async fn recv(&mut self) -> Result<Reply, TransportError> {
        self.next_reply()
            .await?
            .ok_or_else(|| TransportError::Closed("the agent closed the connection".to_string()))
    }

    pub async fn status(&mut self) -> Result<AgentStatus, TransportError> {
        self.send(&Request::Status {}).await?;
        match self.recv().await? {
            Reply::Status { status } => Ok(status),
            other => Err(unexpected("status", other)),
        }
    }

    /// Asks for the agent's status now and after every change ([`Request::Subscribe`]); read
    /// them with [`AgentStream::next_status`].
    pub async fn subscribe(&mut self) -> Result<(), TransportError> {
        self.send(&Request::Subscribe {}).await
    }

    /// The next status of a subscription.
    pub async fn next_status(&mut self) -> Result<AgentStatus, TransportError> {
        match self.recv().await? {
            Reply::Status { status } => Ok(status),
            other => Err(unexpected("status", other)),
        }
    }

    /// The newest `limit` journal entries, newest first.
    pub async fn history(&mut self, limit: usize) -> Result<Vec<HistoryEntry>, TransportError> {
        self.send(&Request::History { limit }).await?;
        match self.recv().await? {
            Reply::History { entries } => Ok(entries),
            other => Err(unexpected("history", other)),
        }
    }

    pub async fn logs(
        &mut self,
        service: Option<&str>,
        lines: usize,
    ) -> Result<Vec<ServiceLogs>, TransportError> {
        self.send(&Request::Logs {
            service: service.map(str::to_string),
            lines,
        })
        .await?;
        match self.recv().await? {
            Reply::Logs { logs } => Ok(logs),
            other => Err(unexpected("logs", other)),
        }
    }

    /// Hands a signed proposal to the agent to hold: `Ok(Err)` when it refuses it.
    pub async fn propose(&mut self, proposal: SignedProposal) -> Result<Held, TransportError> {
        self.send(&Request::Propose { proposal }).await?;
        self.held("propose").await
    }

    /// The agent's unexpired proposals and the approvals each needs (0: it needs none).
    pub async fn proposals(&mut self) -> Result<(Vec<HeldProposal>, usize), TransportError> {
        self.send(&Request::Proposals {}).await?;
        match self.recv().await? {
            Reply::Proposals {
                proposals,
                required,
            } => Ok((proposals, required)),
            other => Err(unexpected("proposals", other)),
        }
    }

    /// Sends an approval of proposal `id`: `Ok(Err)` when the agent refuses it.
    pub async fn approve(&mut self, id: &str, signature: &str) -> Result<Held, TransportError> {
        self.send(&Request::Approve {
            id: id.to_string(),
            signature: signature.to_string(),
        })
        .await?;
        self.held("approve").await
    }

    async fn held(&mut self, what: &str) -> Result<Held, TransportError> {
        match self.recv().await? {
            Reply::Proposal { proposal, required } => Ok(Ok((proposal, required))),
            Reply::Refused { refusal } => Ok(Err(refusal)),
            other => Err(unexpected(what, other)),
        }
    }

    /// Submits a signed order and [follows](Self::follow) its job.
    pub async fn submit<B>(
        &mut self,
        order: SignedOrder,
        on_event: impl FnMut(JobEvent) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B, JobEnd>, TransportError> {
        self.send(&Request::Submit { order }).await?;
        self.follow(on_event).await
    }

    /// Re-attaches to an order: its journaled events, then live ones, [followed](Self::follow).
    pub async fn watch<B>(
        &mut self,
        order_id: &str,
        on_event: impl FnMut(JobEvent) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B, JobEnd>, TransportError> {
        self.send(&Request::Watch {
            order_id: order_id.to_string(),
        })
        .await?;
        self.follow(on_event).await
    }

    /// Reads a job's replies, handing each event to `on_event`, to the job's end
    /// (`Continue(end)`) or until `on_event` breaks (`Break`, as `try_fold` does). A break only
    /// stops this reader: the job goes on at the agent, and following again reads on where this
    /// stopped. An error reply is [`TransportError::Agent`]. An exec's output lines are
    /// skipped: [`Self::follow_with`] hands them over too.
    pub async fn follow<B>(
        &mut self,
        on_event: impl FnMut(JobEvent) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B, JobEnd>, TransportError> {
        self.follow_with(on_event, |_| {}).await
    }

    /// [`Self::follow`], handing each line an exec's command writes to `on_output`, in the
    /// order the agent sent lines and events.
    pub async fn follow_with<B>(
        &mut self,
        mut on_event: impl FnMut(JobEvent) -> ControlFlow<B>,
        mut on_output: impl FnMut(OutputLine),
    ) -> Result<ControlFlow<B, JobEnd>, TransportError> {
        loop {
            match self.recv().await? {
                Reply::Event { event } => {
                    if let ControlFlow::Break(b) = on_event(event) {
                        return Ok(ControlFlow::Break(b));
                    }
                }
                Reply::Output { output } => on_output(output),
                Reply::Outcome { outcome } => {
                    return Ok(ControlFlow::Continue(JobEnd::Outcome(outcome)));
                }
                Reply::Refused { refusal } => {
                    return Ok(ControlFlow::Continue(JobEnd::Refused(refusal)));
                }
                other => return Err(unexpected("job events", other)),
            }
        }
    }
}

fn reply_name(r: &Reply) -> &'static str {
    match r {
        Reply::Hello { .. } => "hello",
        Reply::Event { .. } => "event",
        Reply::Outcome { .. } => "outcome",
        Reply::Refused { .. } => "refused",
        Reply::Status { .. } => "status",
        Reply::History { .. } => "history",
        Reply::Logs { .. } => "logs",
        Reply::Output { .. } => "output",
        Reply::Error { .. } => "error",
        Reply::Proposal { .. } => "proposal",
        Reply::Proposals { .. } => "proposals",
    }
}

fn unexpected(wanted: &str, got: Reply) -> TransportError {
    match got {
        Reply::Error { message } => TransportError::Agent(message),
        other => TransportError::Protocol(format!("expected {wanted}, got {}", reply_name(&other))),
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use proto::wire::{Outcome, OutcomeKind, PROTOCOL_VERSION, Phase};
    use tokio::io::DuplexStream;

    use super::*;

    /// A client stream and the agent's end of it.
    fn pair() -> (AgentStream, FrameReader<DuplexStream>, DuplexStream) {
        let (client_reads, agent_writes) = tokio::io::duplex(64 * 1024);
        let (agent_reads, client_writes) = tokio::io::duplex(64 * 1024);
        (
            AgentStream::new(client_reads, client_writes),
            FrameReader::new(agent_reads),
            agent_writes,
        )
    }

    fn event(phase: Phase) -> Reply {
        Reply::Event {
            event: JobEvent {
                order_id: "o1".into(),
                at: proto::time::Timestamp::now(),
                phase,
                service: None,
                message: String::new(),
            },
        }
    }

    #[tokio::test]
    async fn hello_refuses_another_protocol_version() {
        let (mut stream, mut requests, mut replies) = pair();
        let agent = tokio::spawn(async move {
            let hello: Request = requests.next().await.unwrap().unwrap();
            assert!(
                matches!(hello, Request::Hello { protocol, .. } if protocol == PROTOCOL_VERSION)
            );
            let reply = Reply::Hello {
                protocol: PROTOCOL_VERSION + 1,
                agent_version: "9.9".into(),
                host: "h1".into(),
                env: "staging".into(),
            };
            write_frame(&mut replies, &reply).await.unwrap();
        });
        let err = stream.hello("test").await.unwrap_err();
        let TransportError::ProtocolVersion(skew) = &err else {
            panic!("{err}");
        };
        assert_eq!(
            (skew.theirs, skew.agent_version.as_deref()),
            (Some(PROTOCOL_VERSION + 1), Some("9.9"))
        );
        agent.await.unwrap();
    }

    #[tokio::test]
    async fn a_follower_that_breaks_reads_on_where_it_stopped() {
        let (mut stream, _requests, mut replies) = pair();
        for phase in [Phase::Accepted, Phase::Pull, Phase::Health] {
            write_frame(&mut replies, &event(phase)).await.unwrap();
        }
        // Whole seconds: that is what a timestamp keeps on the wire.
        let now = proto::time::Timestamp::from_unix_secs(1_700_000_000);
        let outcome = Outcome {
            order_id: "o1".into(),
            rollout_id: "r1".into(),
            kind: OutcomeKind::Succeeded,
            failure: None,
            reason: None,
            changed: true,
            log_tail: vec![],
            services: Default::default(),
            started_at: now,
            finished_at: now,
            rollback_ms: None,
            exit_code: None,
        };
        write_frame(
            &mut replies,
            &Reply::Outcome {
                outcome: outcome.clone(),
            },
        )
        .await
        .unwrap();
        drop(replies);

        let mut seen = Vec::new();
        let first = stream
            .follow(|e| {
                seen.push(e.phase);
                if e.phase == Phase::Pull {
                    ControlFlow::Break("at pull")
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await
            .unwrap();
        assert_eq!(first, ControlFlow::Break("at pull"));
        let ControlFlow::Continue(end) = stream
            .follow(|e| {
                seen.push(e.phase);
                ControlFlow::<Infallible>::Continue(())
            })
            .await
            .unwrap();
        assert_eq!(end, JobEnd::Outcome(outcome));
        assert_eq!(seen, [Phase::Accepted, Phase::Pull, Phase::Health]);
        assert_eq!(stream.next_reply().await.unwrap(), None, "a clean close");
        let err = stream.status().await.unwrap_err();
        assert!(matches!(err, TransportError::Closed(_)), "{err}");
    }

    #[tokio::test]
    async fn a_silent_agent_fails_a_read_after_the_silence_limit() {
        let (stream, _requests, _replies) = pair();
        let mut stream = stream.with_silence_limit(Duration::from_millis(50));
        let err = stream.history(1).await.unwrap_err();
        assert!(
            matches!(&err, TransportError::Closed(m) if m.contains("sent nothing")),
            "{err}"
        );
    }
}
