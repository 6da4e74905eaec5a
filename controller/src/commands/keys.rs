//! `deployctl keys generate [--out PATH]`: a new ed25519 signing key and its allowed_signers line.

use std::path::PathBuf;

use super::{default_key_path, issued_by};
use crate::output::{KeysSummary, Message, Output, Summary, SummaryBody};
use crate::{Error, ExitClass};

pub fn generate(file: Option<PathBuf>, out: &dyn Output) -> Result<ExitClass, Error> {
    let path = file.unwrap_or_else(default_key_path);
    // The comment doubles as the allowed_signers principal: who holds this key.
    let comment = issued_by();
    let key = crate::signer::generate_key_files(&path, &comment)
        .map_err(|e| Error::Refused(e.to_string()))?;
    out.emit(&Message::Summary(Summary::new(
        "keys generate",
        SummaryBody::Keys(KeysSummary {
            private_key: key.private_path,
            public_key: key.public_path,
            allowed_signers: key.allowed_signers_line,
        }),
    )));
    Ok(ExitClass::Success)
}
