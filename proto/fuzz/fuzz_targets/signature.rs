//! The signature and allowed_signers parsers: an armored SSHSIG comes from the network, an
//! allowed_signers file from an operator's editor. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::sign::{AllowedSigners, verify};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (left, right) = text.split_at(
        text.char_indices()
            .nth(text.chars().count() / 2)
            .map_or(0, |(i, _)| i),
    );
    let signers = AllowedSigners::parse(left, "fuzz").unwrap_or_default();
    let _ = verify(b"payload", right, &signers);
    let _ = verify(right.as_bytes(), left, &signers);
});
