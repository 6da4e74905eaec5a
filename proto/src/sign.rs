//! Order signatures in the OpenSSH SSHSIG format, as pure functions over bytes and keys in
//! memory: no key files, no ssh-agent, no randomness from the system (those are the
//! controller's, in `deployctl::signer`).
//!
//! A signature is exactly what `ssh-keygen -Y sign -n deployctl-order` produces over the
//! payload bytes, and is checked the way `ssh-keygen -Y verify` checks it: against an
//! OpenSSH `allowed_signers` file whose lines may restrict a key to some namespaces
//! (`namespaces="deployctl-order"`) and to a validity window (`valid-after`, `valid-before`).
//! The payload is verified as bytes first and parsed only afterwards, so no JSON parser ever
//! sees bytes an untrusted party chose.
//!
//! Signing: [`sign`] with a private key in memory, or, for a key held elsewhere (an
//! ssh-agent), [`signed_data`] to have signed and [`armor`] to turn the raw signature into
//! an SSHSIG.
//!
//! Differences from OpenSSH worth knowing: `cert-authority` lines are ignored (with a note in
//! [`AllowedSigners::notes`]) because orders are signed by plain keys; `valid-after` /
//! `valid-before` times without a trailing `Z` are read as UTC, not local time.

use std::fmt;

use ssh_key::private::Ed25519Keypair;
use ssh_key::{Algorithm, HashAlg, Signature, SshSig};
/// The key types of this module's signatures, from the `ssh-key` version russh pins, so the
/// controller's SSH keys and these are the same types.
pub use ssh_key::{PrivateKey, PublicKey};

use crate::order::Order;
use crate::pattern::{self, Case};
use crate::time::Timestamp;
use crate::wire::SignedOrder;

/// The SSHSIG namespace of deploy orders; a signature made for any other is refused.
pub const NAMESPACE: &str = "deployctl-order";

/// The hash `ssh-keygen -Y sign` uses; verification accepts sha256 too.
const HASH: HashAlg = HashAlg::Sha512;

/// No real SSHSIG comes near this (an RSA-16384 signature is ~5 KiB armored).
pub const MAX_SIGNATURE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("signing failed: {0}")]
    Sign(String),
    /// A signature made outside this crate (by an ssh-agent) that does not verify over the
    /// payload: the signer is broken, and every host would refuse the order.
    #[error("the signature does not verify: {0}")]
    DoesNotVerify(String),
}

/// Key types whose SSHSIG signatures this crate verifies; `Err` says why not, for a human.
pub fn check_algorithm(key: &PublicKey) -> Result<(), String> {
    match key.algorithm() {
        Algorithm::Ed25519
        | Algorithm::Ecdsa { .. }
        | Algorithm::Rsa { .. }
        | Algorithm::SkEd25519
        | Algorithm::SkEcdsaSha2NistP256 => Ok(()),
        other => Err(format!(
            "{other} keys cannot sign orders (use ed25519, ecdsa or rsa)"
        )),
    }
}

/// `SHA256:…` of a key, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The payload of an order: the exact bytes that are signed, sent and verified.
pub fn order_payload(order: &Order) -> Result<String, SignError> {
    serde_json::to_string(order)
        .map_err(|e| SignError::Sign(format!("cannot serialize order: {e}")))
}

/// An armored SSHSIG (`-----BEGIN SSH SIGNATURE-----`) by `key` over exactly `payload`.
pub fn sign(key: &PrivateKey, payload: &[u8]) -> Result<String, SignError> {
    sign_in(NAMESPACE, key, payload)
}

/// [`sign`] in another namespace (approvals are signed in their own, so an approval can never
/// pass for an order nor an order for an approval).
pub fn sign_in(namespace: &str, key: &PrivateKey, payload: &[u8]) -> Result<String, SignError> {
    let sig = key
        .sign(namespace, HASH, payload)
        .map_err(|e| SignError::Sign(e.to_string()))?;
    pem(&sig)
}

/// Serializes `order` and signs those exact bytes with `key`.
pub fn sign_order(key: &PrivateKey, order: &Order) -> Result<SignedOrder, SignError> {
    let payload = order_payload(order)?;
    let signature = sign(key, payload.as_bytes())?;
    Ok(SignedOrder { payload, signature })
}

/// What a signer holding the key elsewhere (an ssh-agent) must sign for an SSHSIG over
/// `payload`; its raw signature then goes to [`armor`].
pub fn signed_data(payload: &[u8]) -> Result<Vec<u8>, SignError> {
    signed_data_in(NAMESPACE, payload)
}

/// [`signed_data`] in another namespace.
pub fn signed_data_in(namespace: &str, payload: &[u8]) -> Result<Vec<u8>, SignError> {
    SshSig::signed_data(namespace, HASH, payload).map_err(|e| SignError::Sign(e.to_string()))
}

/// The armored SSHSIG from `raw`, a signature by `key` over [`signed_data`]`(payload)`. It is
/// verified first: a signer that got it wrong should fail here, not as a puzzling refusal on
/// every host ([`SignError::DoesNotVerify`]).
pub fn armor(key: &PublicKey, raw: Signature, payload: &[u8]) -> Result<String, SignError> {
    armor_in(NAMESPACE, key, raw, payload)
}

/// [`armor`] of a signature over [`signed_data_in`]`(namespace, payload)`.
pub fn armor_in(
    namespace: &str,
    key: &PublicKey,
    raw: Signature,
    payload: &[u8],
) -> Result<String, SignError> {
    let sig = SshSig::new(key.key_data().clone(), namespace, HASH, raw)
        .map_err(|e| SignError::Sign(e.to_string()))?;
    key.verify(namespace, payload, &sig)
        .map_err(|e| SignError::DoesNotVerify(e.to_string()))?;
    pem(&sig)
}

fn pem(sig: &SshSig) -> Result<String, SignError> {
    sig.to_pem(ssh_key::LineEnding::LF)
        .map_err(|e| SignError::Sign(e.to_string()))
}

/// The ed25519 key of a 32-byte seed. The seed must come from a CSPRNG (the controller reads
/// the kernel's); tests may pass a constant to get a fixed key.
pub fn ed25519_key(seed: &[u8; 32], comment: &str) -> PrivateKey {
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(seed));
    key.set_comment(comment);
    key
}

/// The `allowed_signers` line that trusts `key` for deploy orders only, as `principal`.
pub fn allowed_signers_line(principal: &str, key: &PublicKey) -> Result<String, SignError> {
    let public = key
        .to_openssh()
        .map_err(|e| SignError::Sign(e.to_string()))?;
    Ok(format!("{principal} namespaces=\"{NAMESPACE}\" {public}"))
}

// ---------------------------------------------------------------------------------------------
// allowed_signers

/// A line of an allowed_signers text that cannot be used; reading the file is the caller's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedSignersError {
    #[error("{origin}:{line}: {why}")]
    Line {
        origin: String,
        line: usize,
        why: String,
    },
}

/// A parsed OpenSSH `allowed_signers` file (see `ssh-keygen(1)`, ALLOWED SIGNERS).
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    entries: Vec<SignerEntry>,
    notes: Vec<String>,
}

#[derive(Debug, Clone)]
struct SignerEntry {
    /// The principals field as written (a comma-separated pattern list).
    principals: String,
    /// `namespaces="…"`: a pattern list; `None` allows every namespace.
    namespaces: Option<String>,
    valid_after: Option<Timestamp>,
    valid_before: Option<Timestamp>,
    key: PublicKey,
    /// `origin:line`, for messages.
    source: String,
}

impl AllowedSigners {
    /// Parses the text of an allowed_signers file; `origin` names it in errors (`origin:line: why`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, AllowedSignersError> {
        let mut out = AllowedSigners::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let err = |why: String| AllowedSignersError::Line {
                origin: origin.to_string(),
                line,
                why,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            match parse_signer_line(trimmed).map_err(err)? {
                ParsedLine::Entry(e) => out.entries.push(SignerEntry { source: format!("{origin}:{line}"), ..*e }),
                ParsedLine::CertAuthority => out.notes.push(format!(
                    "{origin}:{line}: cert-authority lines are not supported for orders (sign with a plain key); \
                     line ignored"
                )),
            }
        }
        Ok(out)
    }

    /// No usable key: every order would be refused.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of usable key lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Lines that were understood but ignored, worth logging at start-up.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

enum ParsedLine {
    Entry(Box<SignerEntry>),
    CertAuthority,
}

/// `principals [options] keytype base64 [comment]`
fn parse_signer_line(line: &str) -> Result<ParsedLine, String> {
    let (principals, rest) = next_token(line)?;
    let principals = unquote(principals);
    if principals.is_empty() {
        return Err("empty principals field".into());
    }
    let (second, after_second) = next_token(rest)?;
    if second.is_empty() {
        return Err("expected options or a key after the principals".into());
    }
    let (options, key_type, rest) = if is_key_type(second) {
        (None, second, after_second)
    } else {
        let (key_type, rest) = next_token(after_second)?;
        (Some(second), key_type, rest)
    };
    if key_type.is_empty() {
        return Err("no public key on the line".into());
    }
    if key_type.ends_with("-cert-v01@openssh.com") {
        return Err(format!(
            "{key_type}: certificates cannot be allowed signers (use the plain key)"
        ));
    }
    if !is_key_type(key_type) {
        return Err(format!("unknown key type or option {key_type:?}"));
    }
    let (blob, _comment) = next_token(rest)?;
    if blob.is_empty() {
        return Err(format!("{key_type} key has no base64 data"));
    }
    let key = PublicKey::from_openssh(&format!("{key_type} {blob}"))
        .map_err(|e| format!("bad {key_type} key: {e}"))?;
    if key.algorithm().as_str() != key_type {
        return Err(format!(
            "key data is {} but the line says {key_type}",
            key.algorithm()
        ));
    }

    let mut entry = SignerEntry {
        principals: principals.to_string(),
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key,
        source: String::new(),
    };
    let mut cert_authority = false;
    for (name, value) in split_options(options.unwrap_or(""))? {
        let need = |v: Option<String>| {
            v.ok_or_else(|| format!("option {name} needs a value ({name}=\"…\")"))
        };
        match name.to_ascii_lowercase().as_str() {
            "cert-authority" => cert_authority = true,
            "namespaces" => entry.namespaces = Some(need(value)?),
            "valid-after" => entry.valid_after = Some(parse_openssh_time(&need(value)?)?),
            "valid-before" => entry.valid_before = Some(parse_openssh_time(&need(value)?)?),
            _ => {
                return Err(format!(
                    "unsupported option {name:?} (known: namespaces, valid-after, valid-before)"
                ));
            }
        }
    }
    if cert_authority {
        return Ok(ParsedLine::CertAuthority);
    }
    Ok(ParsedLine::Entry(Box::new(entry)))
}

fn is_key_type(s: &str) -> bool {
    matches!(
        s,
        "ssh-ed25519"
            | "ssh-rsa"
            | "ssh-dss"
            | "ecdsa-sha2-nistp256"
            | "ecdsa-sha2-nistp384"
            | "ecdsa-sha2-nistp521"
            | "sk-ssh-ed25519@openssh.com"
            | "sk-ecdsa-sha2-nistp256@openssh.com"
    ) || s.ends_with("-cert-v01@openssh.com")
}

/// The next whitespace-delimited token, where double quotes may protect spaces; and the rest.
fn next_token(s: &str) -> Result<(&str, &str), String> {
    let s = s.trim_start();
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => return Ok((&s[..i], &s[i..])),
            _ => {}
        }
    }
    if in_quotes {
        return Err(format!("unterminated quote in {s:?}"));
    }
    Ok((s, ""))
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
}

/// `a,b="x,y",c` → `[(a, None), (b, Some("x,y")), (c, None)]`
fn split_options(s: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let name_end = rest.find(['=', ',']).unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("malformed option {name:?} in {s:?}"));
        }
        rest = &rest[name_end..];
        let value = if let Some(after_eq) = rest.strip_prefix('=') {
            let quoted = after_eq
                .strip_prefix('"')
                .ok_or_else(|| format!("value of option {name} must be quoted"))?;
            let close = quoted
                .find('"')
                .ok_or_else(|| format!("unterminated quote in option {name}"))?;
            rest = &quoted[close + 1..];
            Some(quoted[..close].to_string())
        } else {
            None
        };
        out.push((name.to_string(), value));
        if let Some(after_comma) = rest.strip_prefix(',') {
            if after_comma.is_empty() {
                return Err(format!("trailing comma in options {s:?}"));
            }
            rest = after_comma;
        } else if !rest.is_empty() {
            return Err(format!("expected ',' between options in {s:?}"));
        }
    }
    Ok(out)
}

/// `YYYYMMDD[HHMM[SS]][Z]`, the format of `valid-after` / `valid-before`.
fn parse_openssh_time(s: &str) -> Result<Timestamp, String> {
    let bad = || format!("bad time {s:?} (expected YYYYMMDD[HHMM[SS]][Z])");
    let digits = s.strip_suffix(['Z', 'z']).unwrap_or(s);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| {
        digits
            .get(r)
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (year, month, day) = (num(0..4), num(4..6), num(6..8));
    let (hour, min, sec) = (num(8..10), num(10..12), num(12..14));
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
    {
        return Err(bad());
    }
    if hour > 23 || min > 59 || sec > 59 {
        return Err(bad());
    }
    let days = days_since_epoch(year, month, day);
    Ok(Timestamp::from_unix_secs(
        days * 86_400 + hour * 3600 + min * 60 + sec,
    ))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    let leap = matches!((year % 4, year % 100, year % 400), (0, 1.., _) | (_, _, 0));
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date on or after it.
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let full_years: u64 = (1970..year)
        .map(|y| if days_in_month(y, 2) == 29 { 366 } else { 365 })
        .sum();
    let full_months: u64 = (1..month).map(|m| days_in_month(year, m)).sum();
    full_years + full_months + day - 1
}

// ---------------------------------------------------------------------------------------------
// verification

/// Who signed an accepted payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The principals field of the allowed_signers line that admitted the key.
    pub principal: String,
    /// `SHA256:…` of the signing key.
    pub fingerprint: String,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.principal, self.fingerprint)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not a signature over these bytes in this namespace: corrupt, tampered, or made for
    /// another purpose.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A valid signature by a key that is not allowed to sign orders here.
    #[error("signature by key {fingerprint} is valid but {why}")]
    UnknownSigner { fingerprint: String, why: String },
}

/// Verifies `armored_sig` over `payload` against `allowed`, at the current time.
pub fn verify(
    payload: &[u8],
    armored_sig: &str,
    allowed: &AllowedSigners,
) -> Result<Verified, VerifyError> {
    verify_at(payload, armored_sig, allowed, Timestamp::now())
}

/// [`verify`] at a given time (for `valid-after` / `valid-before`).
pub fn verify_at(
    payload: &[u8],
    armored_sig: &str,
    allowed: &AllowedSigners,
    now: Timestamp,
) -> Result<Verified, VerifyError> {
    verify_in(NAMESPACE, payload, armored_sig, allowed, now)
}

/// [`verify_at`] for signatures made in `namespace`: the allowed_signers line must admit
/// the key for that namespace.
pub fn verify_in(
    namespace: &str,
    payload: &[u8],
    armored_sig: &str,
    allowed: &AllowedSigners,
    now: Timestamp,
) -> Result<Verified, VerifyError> {
    let bad = |why: String| VerifyError::BadSignature(why);
    if armored_sig.len() > MAX_SIGNATURE {
        return Err(bad(format!(
            "signature is {} bytes, more than any SSHSIG",
            armored_sig.len()
        )));
    }
    // Only the final newline every armored file ends with is optional: accepting any other
    // slack would let two different strings count as the same signature.
    let armored = armored_sig
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(armored_sig);
    let sig = SshSig::from_pem(armored).map_err(|e| bad(format!("not an SSH signature ({e})")))?;
    if sig.namespace() != namespace {
        return Err(bad(format!(
            "made for namespace {:?}, not {namespace:?}",
            sig.namespace()
        )));
    }
    if sig.algorithm() == (Algorithm::Rsa { hash: None }) {
        return Err(bad(
            "RSA signature uses SHA-1 (ssh-rsa), which SSHSIG does not allow".into(),
        ));
    }
    // Check the signature with the key it carries first, as `ssh-keygen -Y verify` does: a
    // tampered key blob is then a bad signature, and "unknown signer" always means a genuine
    // signature by a key nobody listed.
    let key = PublicKey::from(sig.public_key().clone());
    key.verify(namespace, payload, &sig)
        .map_err(|_| bad("does not verify over the payload (tampered or corrupt)".into()))?;

    let fingerprint = fingerprint(&key);
    let mut why_not = None;
    for entry in allowed
        .entries
        .iter()
        .filter(|e| e.key.key_data() == key.key_data())
    {
        let refusal = if entry
            .namespaces
            .as_deref()
            .is_some_and(|ns| !pattern::matches_list(ns, namespace, Case::Sensitive))
        {
            Some(format!(
                "{} allows it only for namespaces {:?}",
                entry.source,
                entry.namespaces.as_deref().unwrap_or("")
            ))
        } else if let Some(after) = entry.valid_after.filter(|after| now < *after) {
            Some(format!("{} allows it only from {after}", entry.source))
        } else {
            entry
                .valid_before
                .filter(|before| now >= *before)
                .map(|before| format!("{} allowed it only until {before}", entry.source))
        };
        if let Some(why) = refusal {
            why_not.get_or_insert(why);
            continue;
        }
        return Ok(Verified {
            principal: entry.principals.clone(),
            fingerprint,
        });
    }
    Err(VerifyError::UnknownSigner {
        fingerprint,
        why: why_not
            .unwrap_or_else(|| format!("the key ({}) is not in allowed_signers", key.algorithm())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_times_parse_as_utc() {
        assert_eq!(parse_openssh_time("19700101").unwrap().unix_secs(), 0);
        assert_eq!(
            parse_openssh_time("20000301Z").unwrap().unix_secs(),
            951_868_800
        );
        assert_eq!(
            parse_openssh_time("202402291230").unwrap().to_string(),
            "2024-02-29T12:30:00Z"
        );
        assert_eq!(
            parse_openssh_time("20240229123005").unwrap().to_string(),
            "2024-02-29T12:30:05Z"
        );
        for bad in [
            "2024",
            "20230229",
            "20241301",
            "202401011260",
            "yesterday",
            "2024010112",
            "",
        ] {
            assert!(parse_openssh_time(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn raw_signatures_from_elsewhere_are_armored_only_when_they_verify() {
        let key = ed25519_key(&[3; 32], "k");
        let armored = sign(&key, b"payload").unwrap();
        let raw = SshSig::from_pem(&armored).unwrap().signature().clone();
        // ed25519 signatures are deterministic: the same bytes whichever way they were made.
        assert_eq!(
            armor(key.public_key(), raw.clone(), b"payload").unwrap(),
            armored
        );
        assert!(matches!(
            armor(key.public_key(), raw, b"other payload"),
            Err(SignError::DoesNotVerify(_))
        ));
        assert!(
            allowed_signers_line("ci", key.public_key())
                .unwrap()
                .starts_with("ci namespaces=\"deployctl-order\" ssh-ed25519 AAAA")
        );
    }

    #[test]
    fn options_split_on_commas_outside_quotes() {
        let opts =
            split_options(r#"namespaces="a,b",cert-authority,valid-after="20240101""#).unwrap();
        assert_eq!(
            opts,
            vec![
                ("namespaces".into(), Some("a,b".into())),
                ("cert-authority".into(), None),
                ("valid-after".into(), Some("20240101".into()))
            ]
        );
        for bad in [
            r#"namespaces=a"#,
            r#"namespaces="a"#,
            "a,,b",
            "a,",
            r#"x="1"y"#,
        ] {
            assert!(split_options(bad).is_err(), "{bad}");
        }
    }
}
