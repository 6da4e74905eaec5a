//! Everything a peer's bytes reach before any trust is established: the frame splitter and
//! the typed decoders of both directions. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::codec::{FrameBuffer, decode};
use proto::wire::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size so frames also get split at arbitrary points.
    let (chunk, data) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c).max(1), rest),
        None => return,
    };
    let mut frames = FrameBuffer::new();
    for piece in data.chunks(chunk) {
        frames.push(piece);
        while let Ok(Some(frame)) = frames.next_frame() {
            if let Ok(request) = decode::<Request>(&frame) {
                // What decodes must re-encode to something that decodes the same.
                let again = proto::codec::encode(&request).expect("re-encode");
                assert_eq!(decode::<Request>(&again).expect("re-decode"), request);
            }
            let _ = decode::<Reply>(&frame);
        }
    }
});
