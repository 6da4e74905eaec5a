//! `frame-io` moves `proto`'s frames over tokio streams: [`FrameReader`] reads typed messages,
//! [`write_frame`] writes one. It is the IO half of [`proto::codec`], which stays pure so that
//! everything interpreting a peer's bytes can be fuzzed; nothing here looks at a byte.
//!
//! One crate because both ends speak the protocol over streams — the agent's socket server and
//! the controller's transport (unix socket or SSH channel; the test clients use its
//! `AgentStream`) — and `proto` may not depend on tokio.
#![forbid(unsafe_code)]

use proto::codec::{CodecError, FrameBuffer, decode, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

    /// The stream back; bytes read past the last returned frame are lost.
    pub fn into_inner(self) -> R {
        self.inner
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
    use proto::codec::{check_peer_protocol, hello_request};
    use proto::wire::Request;

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
                check_peer_protocol(protocol).unwrap();
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
}
