//! The agent's acceptance checks for a signed order (DESIGN §5), as one function: [`accept`].
//!
//! The checks run in a fixed order so that nothing is parsed before it is authenticated and
//! the cheapest refusal wins: size → signature over the payload bytes → strict JSON → env →
//! host → validity window (with skew) → replay → image repository. Only an order that passes
//! all of them has its id remembered, so a refused order can be fixed and resent with the
//! same id. Whether a rollout already holds the service is the agent's call, not this module's.
//!
//! Replay protection needs memory that survives restarts: [`FileReplayStore`] keeps every
//! accepted `order_id` until its order could no longer be accepted anyway (`not_after` plus
//! the allowed skew), then forgets it, so the file stays small.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::order::Order;
use crate::sign::{AllowedSigners, Verified, VerifyError, verify_at};
use crate::time::Timestamp;
use crate::wire::{Refusal, RefusalKind, SignedOrder};

/// How far the issuer's clock may be from the agent's (DESIGN §5).
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(60);

/// Orders carry a handful of service specs; anything near this is not an order.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// What one agent accepts.
#[derive(Debug, Clone)]
pub struct AcceptPolicy {
    /// The agent's own host name; orders for any other are refused.
    pub host: String,
    /// The agent's env; orders for any other are refused.
    pub env: String,
    pub allowed_signers: AllowedSigners,
    /// Repository patterns: `*` matches within one path segment, `**` across segments, so
    /// `registry.example.com/acme/*` admits `…/acme/web` but not `…/acme/team/web`.
    pub allowed_images: Vec<String>,
    pub max_skew: Duration,
    pub max_payload: usize,
}

impl AcceptPolicy {
    /// A policy with the default skew and payload limit.
    pub fn new(
        host: &str,
        env: &str,
        allowed_signers: AllowedSigners,
        allowed_images: Vec<String>,
    ) -> Self {
        AcceptPolicy {
            host: host.to_string(),
            env: env.to_string(),
            allowed_signers,
            allowed_images,
            max_skew: DEFAULT_MAX_SKEW,
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Remembers accepted order ids so none is applied twice.
pub trait ReplayStore: Send {
    fn seen(&self, order_id: &str) -> bool;
    /// Remembers `order_id` until `not_after`, after which it may be forgotten (callers pass a
    /// time after which the order would be refused as expired anyway). Must be durable when
    /// it returns `Ok`.
    fn remember(&mut self, order_id: &str, not_after: Timestamp) -> std::io::Result<()>;
}

/// A replay store that forgets everything on restart; for tests.
#[derive(Debug, Default)]
pub struct MemoryReplayStore {
    ids: BTreeMap<String, Timestamp>,
}

impl MemoryReplayStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl ReplayStore for MemoryReplayStore {
    fn seen(&self, order_id: &str) -> bool {
        self.ids.contains_key(order_id)
    }

    fn remember(&mut self, order_id: &str, not_after: Timestamp) -> std::io::Result<()> {
        self.ids.insert(order_id.to_string(), not_after);
        Ok(())
    }
}

/// A replay store in one JSON file, rewritten atomically (temp file, fsync, rename, fsync of
/// the directory) on every change.
#[derive(Debug)]
pub struct FileReplayStore {
    path: PathBuf,
    ids: BTreeMap<String, Timestamp>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayFile {
    version: u32,
    /// order_id → the time after which it may be forgotten.
    ids: BTreeMap<String, Timestamp>,
}

const REPLAY_FILE_VERSION: u32 = 1;

impl FileReplayStore {
    /// Opens (or starts) the store at `path`, dropping ids whose time has passed. A file that
    /// cannot be parsed is an error naming the file: silently starting empty would reopen
    /// the door to replays.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let ids = match std::fs::read(path) {
            Ok(bytes) => {
                let file: ReplayFile = serde_json::from_slice(&bytes).map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "replay store {} is corrupt ({e}); it protects against replayed orders, so it is not \
                             reset automatically: restore it, or remove it once every order issued so far has \
                             expired",
                            path.display()
                        ),
                    )
                })?;
                if file.version != REPLAY_FILE_VERSION {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "replay store {} has version {}, expected {REPLAY_FILE_VERSION}",
                            path.display(),
                            file.version
                        ),
                    ));
                }
                file.ids
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot read replay store {}: {e}", path.display()),
                ));
            }
        };
        let mut store = FileReplayStore {
            path: path.to_owned(),
            ids,
        };
        store.forget_expired(Timestamp::now());
        Ok(store)
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn forget_expired(&mut self, now: Timestamp) {
        self.ids.retain(|_, until| *until >= now);
    }

    fn save(&self) -> std::io::Result<()> {
        let file = ReplayFile {
            version: REPLAY_FILE_VERSION,
            ids: self.ids.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &self.path)?;
        // The rename is durable only once the directory entry is.
        std::fs::File::open(dir)?.sync_all()
    }
}

impl ReplayStore for FileReplayStore {
    fn seen(&self, order_id: &str) -> bool {
        self.ids.contains_key(order_id)
    }

    fn remember(&mut self, order_id: &str, not_after: Timestamp) -> std::io::Result<()> {
        let before = self.ids.clone();
        self.forget_expired(Timestamp::now());
        self.ids.insert(order_id.to_string(), not_after);
        self.save().inspect_err(|_| self.ids = before).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot save replay store {}: {e}", self.path.display()),
            )
        })
    }
}

/// An order that passed every check.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order: Order,
    pub signer: Verified,
}

/// Why an order was refused, in words a human can act on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub kind: RefusalKind,
    pub message: String,
}

impl Rejection {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Rejection {
            kind,
            message: message.into(),
        }
    }
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        Refusal {
            kind: r.kind,
            message: r.message,
            holder: None,
        }
    }
}

/// Runs every acceptance check of DESIGN §5 and, if all pass, remembers the order id.
pub fn accept(
    signed: &SignedOrder,
    policy: &AcceptPolicy,
    now: Timestamp,
    replay: &mut dyn ReplayStore,
) -> Result<Accepted, Rejection> {
    use RefusalKind as K;

    if signed.payload.len() > policy.max_payload {
        return Err(Rejection::new(
            K::Oversized,
            format!(
                "order payload is {} bytes; the limit is {}",
                signed.payload.len(),
                policy.max_payload
            ),
        ));
    }
    if signed.signature.len() > crate::sign::MAX_SIGNATURE {
        return Err(Rejection::new(
            K::Oversized,
            format!(
                "order signature is {} bytes; the limit is {}",
                signed.signature.len(),
                crate::sign::MAX_SIGNATURE
            ),
        ));
    }

    let signer = verify_at(signed.payload.as_bytes(), &signed.signature, &policy.allowed_signers, now).map_err(|e| match e {
        VerifyError::BadSignature(why) => Rejection::new(K::BadSignature, format!("order signature refused: {why}")),
        VerifyError::UnknownSigner { fingerprint, why } => Rejection::new(
            K::UnknownSigner,
            format!(
                "order signed by key {fingerprint}, which this agent does not trust for env {:?}: {why}",
                policy.env
            ),
        ),
    })?;

    let order: Order = serde_json::from_str(&signed.payload).map_err(|e| {
        Rejection::new(
            K::Malformed,
            format!("order payload is not a valid order: {e}"),
        )
    })?;
    check_shape(&order)
        .map_err(|why| Rejection::new(K::Malformed, format!("order {}: {why}", order.order_id)))?;

    if order.env != policy.env {
        return Err(Rejection::new(
            K::EnvMismatch,
            format!(
                "order is for env {:?}, but this agent serves env {:?}",
                order.env, policy.env
            ),
        ));
    }
    if order.host != policy.host {
        return Err(Rejection::new(
            K::HostMismatch,
            format!(
                "order is for host {:?}, but this agent is host {:?}",
                order.host, policy.host
            ),
        ));
    }
    let skew = humantime::format_duration(policy.max_skew);
    if order.issued_at > now.plus(policy.max_skew) {
        return Err(Rejection::new(
            K::NotYetValid,
            format!(
                "order was issued at {}, in the future (agent clock: {now}, {skew} skew allowed); check the clocks",
                order.issued_at
            ),
        ));
    }
    if now > order.not_after.plus(policy.max_skew) {
        return Err(Rejection::new(
            K::Expired,
            format!(
                "order expired at {} (agent clock: {now}, {skew} skew allowed); push again",
                order.not_after
            ),
        ));
    }
    if replay.seen(&order.order_id) {
        return Err(Rejection::new(
            K::Replayed,
            format!(
                "order {} was already accepted once; an order is never applied twice",
                order.order_id
            ),
        ));
    }
    let repository = order.image.repository();
    if !policy
        .allowed_images
        .iter()
        .any(|pattern| repository_matches(pattern, repository))
    {
        return Err(Rejection::new(
            K::ImageNotAllowed,
            if policy.allowed_images.is_empty() {
                format!(
                    "image repository {repository:?} is not allowed: this agent's allowed_images is empty"
                )
            } else {
                format!(
                    "image repository {repository:?} is not in this agent's allowed_images {:?}",
                    policy.allowed_images
                )
            },
        ));
    }

    // Not applied twice means not applied at all unless the id is safely on disk.
    replay
        .remember(&order.order_id, order.not_after.plus(policy.max_skew))
        .map_err(|e| {
            Rejection::new(
                K::Internal,
                format!(
                    "cannot record order {} against replay, so it is not applied: {e}",
                    order.order_id
                ),
            )
        })?;
    Ok(Accepted { order, signer })
}

/// What serde cannot express about an order.
fn check_shape(order: &Order) -> Result<(), String> {
    if order.order_id.is_empty()
        || order.order_id.len() > 128
        || order.order_id.chars().any(char::is_control)
    {
        return Err("order_id must be 1 to 128 printable characters".into());
    }
    if order.not_after <= order.issued_at {
        return Err(format!(
            "not_after {} is not after issued_at {}",
            order.not_after, order.issued_at
        ));
    }
    if order.app.is_empty() {
        return Err("app is empty".into());
    }
    if order.services.is_empty() {
        return Err("names no service".into());
    }
    if let Some(m) = order
        .migrate
        .as_ref()
        .filter(|m| !order.services.contains_key(&m.service))
    {
        return Err(format!(
            "migration borrows service {:?}, which the order does not name",
            m.service
        ));
    }
    Ok(())
}

/// Matches an `allowed_images` pattern against a repository: `*` stays within a path
/// segment, `**` crosses segments.
pub fn repository_matches(pattern: &str, repository: &str) -> bool {
    fn go(p: &[u8], r: &[u8]) -> bool {
        match p {
            [] => r.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=r.len()).any(|i| go(rest, &r[i..])),
            [b'*', rest @ ..] => {
                let segment = r.iter().position(|&b| b == b'/').unwrap_or(r.len());
                (0..=segment).any(|i| go(rest, &r[i..]))
            }
            [c, rest @ ..] => r.first() == Some(c) && go(rest, &r[1..]),
        }
    }
    // Patterns come from the agent's own config and repositories are short, so plain
    // backtracking is cheap; cap anyway so a pathological pattern cannot stall the agent.
    pattern.len() <= 256 && repository.len() <= 512 && go(pattern.as_bytes(), repository.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_patterns() {
        let cases = [
            (
                "registry.example.com/acme/*",
                "registry.example.com/acme/web",
                true,
            ),
            (
                "registry.example.com/acme/*",
                "registry.example.com/acme/team/web",
                false,
            ),
            (
                "registry.example.com/acme/**",
                "registry.example.com/acme/team/web",
                true,
            ),
            (
                "registry.example.com/acme/*",
                "registry.example.com/acmeevil/web",
                false,
            ),
            (
                "registry.example.com/acme/*",
                "evil.com/registry.example.com/acme/web",
                false,
            ),
            ("127.0.0.1:5000/acme/web", "127.0.0.1:5000/acme/web", true),
            ("127.0.0.1:5000/acme/web", "127.0.0.1:5000/acme/web2", false),
            ("*/acme/web", "evil.com/x/acme/web", false),
            ("**", "anything/at/all", true),
            ("127.0.0.1:*/acme/*", "127.0.0.1:5000/acme/web", true),
        ];
        for (pattern, repo, want) in cases {
            assert_eq!(
                repository_matches(pattern, repo),
                want,
                "{pattern} vs {repo}"
            );
        }
    }
}
