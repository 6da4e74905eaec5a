//! `deployctl keys generate [--out PATH]`: a new ed25519 signing key and its allowed_signers line.

use std::path::PathBuf;

use serde_json::json;

use super::{default_key_path, issued_by};
use crate::output;
use crate::{Error, ExitClass};

pub fn generate(out: Option<PathBuf>, json: bool) -> Result<ExitClass, Error> {
    let path = out.unwrap_or_else(default_key_path);
    // The comment doubles as the allowed_signers principal: who holds this key.
    let comment = issued_by();
    let key = crate::signer::generate_key_files(&path, &comment)
        .map_err(|e| Error::Refused(e.to_string()))?;
    if json {
        output::print_json(&json!({
            "event": "summary",
            "command": "keys generate",
            "private_key": key.private_path,
            "public_key": key.public_path,
            "allowed_signers": key.allowed_signers_line,
            "exit_code": 0,
        }));
    } else {
        println!(
            "wrote {} (private, mode 0600) and {}",
            key.private_path.display(),
            key.public_path.display()
        );
        println!(
            "add this line to /etc/deploy-agent/allowed_signers on every host that should trust it:"
        );
        println!("{}", key.allowed_signers_line);
    }
    Ok(ExitClass::Success)
}
