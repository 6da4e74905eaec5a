//! `frame-io` moves `proto`'s frames over tokio streams: [`FrameReader`] reads typed messages,
//! [`write_frame`] writes one. It is the IO half of [`proto::codec`], which stays pure so that
//! everything interpreting a peer's bytes can be fuzzed; nothing here looks at a byte.
//!
//! A server that must not be held by its peers reads with [`FrameReader::next_within`]: how
//! long a peer may take to begin a frame, and to finish one it began, are bounded separately,
//! so a half-frame staller cannot keep a task forever.
//!
//! One crate because both ends speak the protocol over streams — the agent's socket server and
//! the controller's transport (unix socket or SSH channel; the test clients use its
//! `AgentStream`) — and `proto` may not depend on tokio.
#![forbid(unsafe_code)]

use std::time::Duration;

use proto::codec::{CodecError, FrameBuffer, decode, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// How much a [`FrameReader`] asks its stream for at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Reads typed frames from a tokio stream.
///
/// [`FrameReader::next`] is cancel-safe: bytes already read stay buffered, so it can sit in a
/// `tokio::select!` arm or under a timeout.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    frames: FrameBuffer,
    chunk: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(r: R) -> Self {
        FrameReader {
            inner: r,
            frames: FrameBuffer::new(),
            chunk: vec![0; READ_CHUNK],
        }
    }

    /// The next message; `None` when the peer closed the stream cleanly between frames.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, CodecError> {
        loop {
            if let Some(frame) = self.frames.next_frame()? {
                return decode(&frame).map(Some);
            }
            let n = self.inner.read(&mut self.chunk).await?;
            if n == 0 {
                return self.frames.finish().map(|()| None);
            }
            self.frames.push(&self.chunk[..n]);
        }
    }

    /// [`FrameReader::next`] with two limits: a frame must begin within `idle` and, once any
    /// byte of it is here, end within `frame`. Bytes of a frame already buffered when this is
    /// called start its clock now: time the caller spent elsewhere (answering the previous
    /// request) is not the peer's. Cancel-safe like `next`.
    pub async fn next_within<T: DeserializeOwned>(
        &mut self,
        idle: Duration,
        frame: Duration,
    ) -> Result<Option<T>, ReadError> {
        let mut wait = Wait::start(self.frames.has_partial(), Instant::now(), idle, frame);
        loop {
            if let Some(bytes) = self.frames.next_frame()? {
                return Ok(decode(&bytes).map(Some)?);
            }
            let read = tokio::time::timeout_at(wait.until(), self.inner.read(&mut self.chunk));
            let n = match read.await {
                Ok(n) => n.map_err(CodecError::from)?,
                Err(_) => return Err(wait.expired()),
            };
            if n == 0 {
                return Ok(self.frames.finish().map(|()| None)?);
            }
            self.frames.push(&self.chunk[..n]);
            wait = wait.after_bytes(Instant::now(), frame);
        }
    }

    /// The stream back; bytes read past the last returned frame are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Why [`FrameReader::next_within`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no request began within {0:?}")]
    Idle(Duration),
    #[error("a frame was begun but not finished within {0:?}")]
    Stalled(Duration),
}

/// What a reader waits for, and until when: the first byte of a frame, or the end of one begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Begin { until: Instant, idle: Duration },
    Finish { until: Instant, frame: Duration },
}

impl Wait {
    fn start(partial: bool, now: Instant, idle: Duration, frame: Duration) -> Wait {
        if partial {
            Wait::Finish {
                until: now + frame,
                frame,
            }
        } else {
            Wait::Begin {
                until: now + idle,
                idle,
            }
        }
    }

    /// Bytes arrived at `now` without completing a frame: a frame has begun, and its clock
    /// runs from the first of them, never restarted by more.
    fn after_bytes(self, now: Instant, frame: Duration) -> Wait {
        match self {
            Wait::Begin { .. } => Wait::Finish {
                until: now + frame,
                frame,
            },
            finishing => finishing,
        }
    }

    fn until(self) -> Instant {
        match self {
            Wait::Begin { until, .. } | Wait::Finish { until, .. } => until,
        }
    }

    fn expired(self) -> ReadError {
        match self {
            Wait::Begin { idle, .. } => ReadError::Idle(idle),
            Wait::Finish { frame, .. } => ReadError::Stalled(frame),
        }
    }
}

/// Writes one frame and flushes it, so the peer sees it now rather than at the next write.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), CodecError> {
    let bytes = encode(msg)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proto::codec::hello_request;
    use proto::wire::{PROTOCOL_VERSION, Request};

    use super::*;

    #[tokio::test]
    async fn frames_are_read_and_clean_eof_is_told_from_truncation() {
        let (mut client, server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            write_frame(&mut client, &hello_request("test"))
                .await
                .unwrap();
            write_frame(&mut client, &Request::Status {}).await.unwrap();
        });
        let mut reader = FrameReader::new(server);
        match reader.next::<Request>().await.unwrap().unwrap() {
            Request::Hello { protocol, client } => {
                assert_eq!(protocol, PROTOCOL_VERSION);
                assert_eq!(client, "test");
            }
            other => panic!("expected hello, got {other:?}"),
        }
        assert_eq!(
            reader.next::<Request>().await.unwrap(),
            Some(Request::Status {})
        );
        writer.await.unwrap();
        assert_eq!(
            reader.next::<Request>().await.unwrap(),
            None,
            "clean EOF between frames"
        );

        let mut truncated = FrameReader::new(&b"{\"type\":\"status\"}\n{\"type\":\"wat"[..]);
        assert_eq!(
            truncated.next::<Request>().await.unwrap(),
            Some(Request::Status {})
        );
        assert!(matches!(
            truncated.next::<Request>().await,
            Err(CodecError::Truncated { .. })
        ));

        let mut bad_then_good = FrameReader::new(&b"nonsense\n{\"type\":\"status\"}\n"[..]);
        assert!(matches!(
            bad_then_good.next::<Request>().await,
            Err(CodecError::Malformed(_))
        ));
        assert_eq!(
            bad_then_good.next::<Request>().await.unwrap(),
            Some(Request::Status {})
        );
    }

    #[tokio::test]
    async fn a_slow_writer_split_mid_frame_still_yields_whole_frames() {
        let (mut client, server) = tokio::io::duplex(8);
        let bytes = encode(&Request::History { limit: 7 }).unwrap();
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(3) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut reader = FrameReader::new(server);
        assert_eq!(
            reader.next::<Request>().await.unwrap(),
            Some(Request::History { limit: 7 })
        );
        writer.await.unwrap();
        assert_eq!(reader.next::<Request>().await.unwrap(), None);
    }

    #[test]
    fn the_clock_runs_from_a_frames_first_byte_and_is_never_restarted() {
        let t0 = Instant::now();
        let (idle, frame) = (Duration::from_secs(60), Duration::from_secs(10));
        let s = Duration::from_secs;
        // (bytes already buffered, arrivals of bytes that finish no frame, expected deadline)
        let cases: &[(bool, &[u64], Option<u64>, &str)] = &[
            (false, &[], None, "nothing yet: the idle limit"),
            (
                true,
                &[],
                Some(0),
                "half a frame buffered: its clock starts at the call",
            ),
            (false, &[5], Some(5), "first byte at 5 s"),
            (false, &[5, 9, 14], Some(5), "more bytes do not extend it"),
            (true, &[3], Some(0), "buffered, then more"),
        ];
        for (partial, arrivals, begun_at, why) in cases {
            let mut wait = Wait::start(*partial, t0, idle, frame);
            for a in *arrivals {
                wait = wait.after_bytes(t0 + s(*a), frame);
            }
            let expected = match begun_at {
                None => t0 + idle,
                Some(at) => t0 + s(*at) + frame,
            };
            assert_eq!(wait.until(), expected, "{why}");
            let stalled = matches!(wait.expired(), ReadError::Stalled(_));
            assert_eq!(stalled, begun_at.is_some(), "{why}");
        }
    }

    #[tokio::test]
    async fn a_half_frame_staller_and_a_silent_peer_are_cut_off() {
        let limit = Duration::from_millis(200);
        // Half a frame, then nothing (the peer keeps the stream open).
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"{\"type\":\"sta").await.unwrap();
        let mut reader = FrameReader::new(server);
        let started = Instant::now();
        let got = reader
            .next_within::<Request>(Duration::from_secs(60), limit)
            .await;
        assert!(matches!(got, Err(ReadError::Stalled(_))), "{got:?}");
        assert!(started.elapsed() >= limit);

        // A trickle of bytes does not keep a frame alive past its limit.
        let (mut client, server) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut reader = FrameReader::new(server);
        let got = reader
            .next_within::<Request>(Duration::from_secs(60), limit)
            .await;
        assert!(matches!(got, Err(ReadError::Stalled(_))), "{got:?}");
        drop(reader);
        trickle.await.unwrap();

        // Nothing at all: the idle limit.
        let (_client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server);
        let got = reader.next_within::<Request>(limit, limit).await;
        assert!(matches!(got, Err(ReadError::Idle(_))), "{got:?}");

        // Whole frames within the limits are read as with `next`.
        let (mut client, server) = tokio::io::duplex(64);
        write_frame(&mut client, &Request::Status {}).await.unwrap();
        drop(client);
        let mut reader = FrameReader::new(server);
        assert_eq!(
            reader.next_within::<Request>(limit, limit).await.unwrap(),
            Some(Request::Status {})
        );
        assert_eq!(
            reader.next_within::<Request>(limit, limit).await.unwrap(),
            None
        );
    }
}
