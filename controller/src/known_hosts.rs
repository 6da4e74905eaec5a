//! Host key verification against OpenSSH `known_hosts` files, as pure functions over text.
//!
//! Follows `sshd(8)`'s SSH_KNOWN_HOSTS FILE FORMAT closely enough for real files: comma-separated
//! patterns with `*`/`?` wildcards and `!` negation (matched by [`proto::pattern`], like the
//! principals of `allowed_signers`), `[host]:port` for non-22 ports, hashed `|1|salt|hash`
//! entries (Debian hashes by default), `@revoked` lines; `@cert-authority` lines are skipped
//! because host certificates are not supported. A line that cannot be read is skipped rather
//! than failing the whole file, as OpenSSH does.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use proto::pattern::{self, Case};
use sha2::{Digest as _, Sha256};

/// What a known_hosts file says about a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line names this host with exactly this key.
    Known,
    /// No line names this host with a key of this type.
    Unknown,
    /// A line names this host with another key of the same type: possibly an attack.
    Changed { line: usize },
    /// The key is marked `@revoked`.
    Revoked { line: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// The comma-separated pattern list as written.
    Patterns(String),
    Hashed {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    line: usize,
    revoked: bool,
    hosts: Hosts,
    algorithm: String,
    key: String,
}

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

/// The name a host is recorded under: `host`, or `[host]:port` when the port is not 22.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The line to append to known_hosts to trust `algorithm key` for the host.
pub fn line_to_add(host: &str, port: u16, algorithm: &str, key: &str) -> String {
    format!("{} {algorithm} {key}", host_pattern(host, port))
}

/// `SHA256:<base64 without padding>` of a key blob given in base64, as `ssh-keygen -l` prints it.
pub fn fingerprint(key_base64: &str) -> Option<String> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(key_base64)
        .ok()?;
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
    ))
}

impl KnownHosts {
    pub fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(i, line)| parse_line(i + 1, line))
            .collect();
        KnownHosts { entries }
    }

    /// Judges the key a server presented. `algorithm` and `key` are the first two fields of the
    /// key's OpenSSH public form (`ssh-ed25519 AAAA…`).
    pub fn check(&self, host: &str, port: u16, algorithm: &str, key: &str) -> Verdict {
        let name = host_pattern(host, port);
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.hosts.matches(&name))
            .collect();
        let revoked = self
            .entries
            .iter()
            .find(|e| e.revoked && e.algorithm == algorithm && e.key == key);
        if let Some(e) = revoked {
            return Verdict::Revoked { line: e.line };
        }
        if matching
            .iter()
            .any(|e| !e.revoked && e.algorithm == algorithm && e.key == key)
        {
            return Verdict::Known;
        }
        match matching
            .iter()
            .find(|e| !e.revoked && e.algorithm == algorithm)
        {
            Some(e) => Verdict::Changed { line: e.line },
            None => Verdict::Unknown,
        }
    }
}

fn parse_line(line: usize, text: &str) -> Option<Entry> {
    let mut fields = text.split_whitespace();
    let mut first = fields.next()?;
    if first.starts_with('#') {
        return None;
    }
    let mut revoked = false;
    if let Some(marker) = first.strip_prefix('@') {
        match marker {
            "revoked" => revoked = true,
            _ => return None,
        }
        first = fields.next()?;
    }
    let hosts = if let Some(hashed) = first.strip_prefix("|1|") {
        let (salt, hash) = hashed.split_once('|')?;
        let b64 = base64::engine::general_purpose::STANDARD;
        Hosts::Hashed {
            salt: b64.decode(salt).ok()?,
            hash: b64.decode(hash).ok()?,
        }
    } else {
        Hosts::Patterns(first.to_string())
    };
    let algorithm = fields.next()?.to_string();
    let key = fields.next()?.to_string();
    Some(Entry {
        line,
        revoked,
        hosts,
        algorithm,
        key,
    })
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => match Hmac::<sha1::Sha1>::new_from_slice(salt) {
                Ok(mac) => mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok(),
                Err(_) => false,
            },
            // Host names compare case-insensitively, as in OpenSSH.
            Hosts::Patterns(list) => pattern::matches_list(list, name, Case::Insensitive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBSmXWXJ8qV5du59ZIyjFT4bW47wrbNVWGGPNSt4MaTT";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    /// `[127.0.0.1]:2222` hashed by `ssh-keygen -H`.
    const HASHED: &str = "|1|zDucmNY5fBDZNgR5tyE9zHBqxP4=|AnFl/cq0SGz+OJg1fl5dubtqdTc=";

    #[test]
    fn verdicts() {
        let file = format!(
            "# comment\n\
             \n\
             host.example,10.0.0.5 ssh-ed25519 {K1}\n\
             [10.0.0.6]:2222 ssh-ed25519 {K2} some comment\n\
             *.wild.example,!bad.wild.example ssh-ed25519 {K1}\n\
             {HASHED} ssh-ed25519 {K1}\n\
             @cert-authority *.example ssh-ed25519 {K2}\n\
             @revoked * ssh-rsa AAAArevoked\n\
             garbage\n\
             |1|notbase64|x ssh-ed25519 {K1}\n\
             rsa.example ssh-rsa AAAArsa\n"
        );
        let kh = KnownHosts::parse(&file);
        let cases: &[(&str, u16, &str, &str, Verdict)] = &[
            ("host.example", 22, "ssh-ed25519", K1, Verdict::Known),
            ("HOST.example", 22, "ssh-ed25519", K1, Verdict::Known),
            ("10.0.0.5", 22, "ssh-ed25519", K1, Verdict::Known),
            (
                "10.0.0.5",
                22,
                "ssh-ed25519",
                K2,
                Verdict::Changed { line: 3 },
            ),
            ("10.0.0.5", 2222, "ssh-ed25519", K1, Verdict::Unknown),
            ("10.0.0.6", 2222, "ssh-ed25519", K2, Verdict::Known),
            ("10.0.0.6", 22, "ssh-ed25519", K2, Verdict::Unknown),
            ("a.wild.example", 22, "ssh-ed25519", K1, Verdict::Known),
            ("bad.wild.example", 22, "ssh-ed25519", K1, Verdict::Unknown),
            ("127.0.0.1", 2222, "ssh-ed25519", K1, Verdict::Known),
            (
                "127.0.0.1",
                2222,
                "ssh-ed25519",
                K2,
                Verdict::Changed { line: 6 },
            ),
            ("127.0.0.1", 2223, "ssh-ed25519", K1, Verdict::Unknown),
            ("x.example", 22, "ssh-ed25519", K2, Verdict::Unknown),
            (
                "anything",
                22,
                "ssh-rsa",
                "AAAArevoked",
                Verdict::Revoked { line: 8 },
            ),
            // Another key type recorded is not a change: the server may offer several.
            ("rsa.example", 22, "ssh-ed25519", K1, Verdict::Unknown),
            ("rsa.example", 22, "ssh-rsa", "AAAArsa", Verdict::Known),
        ];
        for (host, port, alg, key, want) in cases {
            assert_eq!(
                &kh.check(host, *port, alg, key),
                want,
                "{host}:{port} {key}"
            );
        }
        assert_eq!(
            KnownHosts::parse("").check("h", 22, "ssh-ed25519", K1),
            Verdict::Unknown
        );
    }

    #[test]
    fn lines_and_fingerprints_match_openssh() {
        assert_eq!(
            line_to_add("127.0.0.1", 2222, "ssh-ed25519", K1),
            format!("[127.0.0.1]:2222 ssh-ed25519 {K1}")
        );
        assert_eq!(
            line_to_add("h", 22, "ssh-ed25519", K1),
            format!("h ssh-ed25519 {K1}")
        );
        // `ssh-keygen -lf` of the K1 key prints this fingerprint.
        assert_eq!(
            fingerprint(K1).unwrap(),
            "SHA256:kphrXWuEKYTQ1vdTdfWmuOLfnqcHzyWA/zp+NglmIEc"
        );
        assert_eq!(fingerprint("!!"), None);
    }
}
