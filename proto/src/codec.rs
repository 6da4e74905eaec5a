//! Newline-delimited JSON frames, the wire format between the controller and an agent.
//!
//! A frame is one JSON object followed by `\n`, at most [`MAX_FRAME`] bytes without the
//! newline. JSON escapes every newline inside strings, so `\n` can only ever end a frame.
//! The first frame of a connection is a `hello` in each direction; both sides refuse a peer
//! that speaks another [`PROTOCOL_VERSION`] (the exchange that never changes:
//! [`crate::wire`]'s module docs).
//!
//! Everything that interprets bytes ([`decode`], [`FrameBuffer`]) is pure and works on
//! slices, so the fuzz target in `proto/fuzz` exercises exactly what a peer can reach. Moving
//! bytes to and from streams is the `frame-io` crate's job; `proto` does no IO.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::{PROTOCOL_VERSION, Request};

/// The largest frame either side sends or accepts, newline excluded.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversized { len: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("connection closed in the middle of a frame ({len} bytes received without a newline)")]
    Truncated { len: usize },
    #[error("cannot encode frame: {0}")]
    Encode(String),
    /// Raised by the stream adapters (`frame-io`), never by this module.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serializes `msg` as one frame: compact JSON and a trailing newline.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = serde_json::to_vec(msg).map_err(|e| CodecError::Encode(e.to_string()))?;
    if out.len() > MAX_FRAME {
        return Err(CodecError::Oversized { len: out.len() });
    }
    out.push(b'\n');
    Ok(out)
}

/// Parses one frame. The trailing newline (or `\r\n`) is optional; no IO happens here.
pub fn decode<T: DeserializeOwned>(frame: &[u8]) -> Result<T, CodecError> {
    let body = frame.strip_suffix(b"\n").unwrap_or(frame);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if body.len() > MAX_FRAME {
        return Err(CodecError::Oversized { len: body.len() });
    }
    let text = std::str::from_utf8(body).map_err(|e| CodecError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    if text.trim().is_empty() {
        return Err(CodecError::Malformed(
            "empty frame (a blank line where a JSON object was expected)".into(),
        ));
    }
    serde_json::from_str(text).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Splits a byte stream into frames as bytes arrive, without doing IO.
///
/// After an oversized frame it drops everything up to the next newline, so a peer cannot make
/// it buffer more than [`MAX_FRAME`] bytes whatever it sends.
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no newline, so each byte is scanned once.
    scanned: usize,
    /// Dropping the rest of an oversized frame; how many bytes it had so far.
    discarding: Option<usize>,
}

impl FrameBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame without its newline, `None` if more bytes are needed.
    ///
    /// An oversized frame is reported once (as soon as it is known to be too long); the
    /// frames after it are delivered normally.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        loop {
            let newline = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| self.scanned + i);
            match (newline, self.discarding) {
                (Some(end), Some(_)) => {
                    self.buf.drain(..=end);
                    self.scanned = 0;
                    self.discarding = None;
                }
                (None, Some(dropped)) => {
                    self.discarding = Some(dropped + self.buf.len());
                    self.buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                (Some(end), None) => {
                    let mut frame: Vec<u8> = self.buf.drain(..=end).collect();
                    frame.pop();
                    self.scanned = 0;
                    if frame.len() > MAX_FRAME {
                        return Err(CodecError::Oversized { len: frame.len() });
                    }
                    return Ok(Some(frame));
                }
                (None, None) => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > MAX_FRAME {
                        let len = self.buf.len();
                        self.discarding = Some(len);
                        self.buf.clear();
                        self.scanned = 0;
                        return Err(CodecError::Oversized { len });
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The peer closed the stream: fine between frames, [`CodecError::Truncated`] when it cut
    /// a frame short.
    pub fn finish(&self) -> Result<(), CodecError> {
        if self.has_partial() {
            Err(CodecError::Truncated {
                len: self.buffered(),
            })
        } else {
            Ok(())
        }
    }

    /// Bytes of an unfinished frame are waiting (EOF now would cut a frame short).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes buffered and not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The first frame a client sends.
pub fn hello_request(client: &str) -> Request {
    Request::Hello {
        protocol: PROTOCOL_VERSION,
        client: client.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_buffer_splits_across_pushes() {
        let mut fb = FrameBuffer::new();
        fb.push(b"{\"a\":1}\n{\"b\"");
        assert_eq!(fb.next_frame().unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(fb.next_frame().unwrap(), None);
        assert!(fb.has_partial());
        assert!(matches!(fb.finish(), Err(CodecError::Truncated { len: 4 })));
        fb.push(b":2}\n");
        assert_eq!(fb.next_frame().unwrap().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert!(!fb.has_partial());
        assert!(fb.finish().is_ok(), "EOF between frames is clean");
    }

    #[test]
    fn oversized_frame_is_reported_once_then_stream_resynchronizes() {
        let mut fb = FrameBuffer::new();
        fb.push(&vec![b'x'; MAX_FRAME + 1]);
        assert!(matches!(fb.next_frame(), Err(CodecError::Oversized { .. })));
        assert_eq!(
            fb.buffered(),
            0,
            "the oversized frame is not kept in memory"
        );
        fb.push(b"yyyy");
        assert_eq!(fb.next_frame().unwrap(), None);
        fb.push(b"\n{}\n");
        assert_eq!(fb.next_frame().unwrap().as_deref(), Some(&b"{}"[..]));
    }
}
