//! The agent's acceptance checks for a signed order, as one pure function: [`accept`] takes the
//! signed bytes, the agent's policy, the time and a read-only view of the order ids already
//! accepted, and returns a verdict. It does no IO and takes no lock.
//!
//! The checks run in a fixed order so that nothing is parsed before it is authenticated and
//! the cheapest refusal wins: size → signature over the payload bytes → strict JSON → env →
//! host (name, then host key) → validity window (with skew) → replay → image repository →
//! host policy ([`crate::policy`]) → release policy ([`crate::release_policy`]: freeze windows,
//! then tags, judged at the agent's `now`). Whether a rollout already holds the service is the
//! agent's call, not this module's.
//!
//! Replay protection needs memory that survives restarts, which is the agent's: it remembers
//! the id of an accepted order durably, until [`Accepted::remember_until`], before the order
//! runs, and only then — so a refused order can be fixed and resent with the same id.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::order::{
    Action, ImageRef, MAX_EXEC_TIMEOUT, MaintenanceSpec, Order, ProxySpec, ServiceKind, ServiceSpec,
};
use crate::policy::{HostFiles, HostPolicy};
use crate::release_policy::{self, ReleasePolicy};
use crate::sign::{AllowedSigners, Verified, VerifyError, verify_at};
use crate::time::Timestamp;
use crate::wire::{Refusal, RefusalKind, SignedOrder};

/// How far the issuer's clock may be from the agent's.
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
    /// What an order may ask of this host.
    pub host_policy: HostPolicy,
    /// When this host takes releases, and which tags make one (`[[freeze]]`, `[refs]`).
    pub release_policy: ReleasePolicy,
    /// `SHA256:…` fingerprints of this host's SSH host keys: an order that names a
    /// `host_key` must name one of these.
    pub host_keys: Vec<String>,
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
            host_policy: HostPolicy::default(),
            release_policy: ReleasePolicy::default(),
            host_keys: Vec::new(),
        }
    }
}

/// What acceptance needs to know of the orders accepted before: only whether an id was one of
/// them. A read-only view, so [`accept`] stays a pure check; remembering an accepted id
/// (durably, before the order runs) is the caller's step.
pub trait SeenOrders {
    fn seen(&self, order_id: &str) -> bool;
}

impl SeenOrders for BTreeSet<String> {
    fn seen(&self, order_id: &str) -> bool {
        self.contains(order_id)
    }
}

/// An order that passed every check.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub order: Order,
    pub signer: Verified,
    /// Until when the order's id must be remembered against replay: past it, the order would
    /// be refused as expired anyway (`not_after` plus the allowed skew).
    pub remember_until: Timestamp,
    /// The freeze window the order overrides (`override_freeze`), for the journal.
    pub overrides: Option<String>,
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

impl Rejection {
    /// The order passed every check but its id could not be remembered against replay, so it
    /// must not run: an order is never applied twice, so it is not applied at all.
    pub fn not_recorded(order_id: &str, why: &dyn fmt::Display) -> Self {
        Rejection::new(
            RefusalKind::Internal,
            format!("cannot record order {order_id} against replay, so it is not applied: {why}"),
        )
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

/// Runs every acceptance check against `signed` at `now`; `seen` answers whether an order id
/// was accepted before, `files` what the host holds at the paths the order names. Remembering
/// the id of an accepted order is the caller's next step.
pub fn accept(
    signed: &SignedOrder,
    policy: &AcceptPolicy,
    now: Timestamp,
    seen: &dyn SeenOrders,
    files: &dyn HostFiles,
) -> Result<Accepted, Rejection> {
    check_size(signed, policy)?;
    let signer = verify_at(signed.payload.as_bytes(), &signed.signature, &policy.allowed_signers, now).map_err(|e| match e {
        VerifyError::BadSignature(why) => Rejection::new(RefusalKind::BadSignature, format!("order signature refused: {why}")),
        VerifyError::UnknownSigner { fingerprint, why } => Rejection::new(
            RefusalKind::UnknownSigner,
            format!(
                "order signed by key {fingerprint}, which this agent does not trust for env {:?}: {why}",
                policy.env
            ),
        ),
    })?;
    let order: Order = serde_json::from_str(&signed.payload).map_err(|e| {
        Rejection::new(
            RefusalKind::Malformed,
            format!("order payload is not a valid order: {e}"),
        )
    })?;
    check_shape(&order).map_err(|why| {
        Rejection::new(
            RefusalKind::Malformed,
            format!("order {}: {why}", order.order_id),
        )
    })?;
    check_addressee(&order, policy)?;
    check_window(&order, policy, now)?;
    check_replay(&order.order_id, seen)?;
    check_images(&order, policy)?;
    crate::policy::check(&order, &signer.principal, &policy.host_policy, files)
        .map_err(|denial| Rejection::new(RefusalKind::PolicyDenied, denial.to_string()))?;
    let overrides = release_policy::check(&policy.release_policy, &order, now)
        .map_err(|refused| {
            let kind = match refused {
                release_policy::Refused::Frozen { .. } => RefusalKind::Frozen,
                release_policy::Refused::Ref(_) => RefusalKind::RefNotAllowed,
            };
            Rejection::new(kind, refused.to_string())
        })?
        .map(|window| window.to_string());

    let remember_until = order.not_after.plus(policy.max_skew);
    Ok(Accepted {
        order,
        signer,
        remember_until,
        overrides,
    })
}

/// Nothing near the limits is an order; refused before a byte is verified.
fn check_size(signed: &SignedOrder, policy: &AcceptPolicy) -> Result<(), Rejection> {
    let too_big = |what: &str, len: usize, limit: usize| {
        Rejection::new(
            RefusalKind::Oversized,
            format!("order {what} is {len} bytes; the limit is {limit}"),
        )
    };
    if signed.payload.len() > policy.max_payload {
        return Err(too_big("payload", signed.payload.len(), policy.max_payload));
    }
    if signed.signature.len() > crate::sign::MAX_SIGNATURE {
        let limit = crate::sign::MAX_SIGNATURE;
        return Err(too_big("signature", signed.signature.len(), limit));
    }
    Ok(())
}

/// The order is for this agent: its env, its host name and, when it names one, a key of its
/// host.
fn check_addressee(order: &Order, policy: &AcceptPolicy) -> Result<(), Rejection> {
    if order.env != policy.env {
        return Err(Rejection::new(
            RefusalKind::EnvMismatch,
            format!(
                "order is for env {:?}, but this agent serves env {:?}",
                order.env, policy.env
            ),
        ));
    }
    if order.host != policy.host {
        return Err(Rejection::new(
            RefusalKind::HostMismatch,
            format!(
                "order is for host {:?}, but this agent is host {:?}",
                order.host, policy.host
            ),
        ));
    }
    if let Some(key) = order
        .host_key
        .as_ref()
        .filter(|k| !policy.host_keys.contains(k))
    {
        return Err(Rejection::new(
            RefusalKind::HostMismatch,
            if policy.host_keys.is_empty() {
                format!(
                    "order is bound to host key {key}, but this agent knows none of its host's keys \
                     (set host_keys in agent.toml)"
                )
            } else {
                format!(
                    "order is bound to host key {key}, which is not one of this host's keys {:?}: \
                     it was issued for another machine",
                    policy.host_keys
                )
            },
        ));
    }
    Ok(())
}

/// `now` is within the order's validity window, give or take the allowed skew.
fn check_window(order: &Order, policy: &AcceptPolicy, now: Timestamp) -> Result<(), Rejection> {
    let skew = humantime::format_duration(policy.max_skew);
    if order.issued_at > now.plus(policy.max_skew) {
        return Err(Rejection::new(
            RefusalKind::NotYetValid,
            format!(
                "order was issued at {}, in the future (agent clock: {now}, {skew} skew allowed); check the clocks",
                order.issued_at
            ),
        ));
    }
    if now > order.not_after.plus(policy.max_skew) {
        return Err(Rejection::new(
            RefusalKind::Expired,
            format!(
                "order expired at {} (agent clock: {now}, {skew} skew allowed); push again",
                order.not_after
            ),
        ));
    }
    Ok(())
}

/// Every repository of the release is in `allowed_images`.
fn check_images(order: &Order, policy: &AcceptPolicy) -> Result<(), Rejection> {
    let disallowed = order
        .all_images()
        .into_iter()
        .map(ImageRef::repository)
        .find(|repository| {
            !policy
                .allowed_images
                .iter()
                .any(|pattern| repository_matches(pattern, repository))
        });
    let Some(repository) = disallowed else {
        return Ok(());
    };
    Err(Rejection::new(
        RefusalKind::ImageNotAllowed,
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
    ))
}

/// The replay check alone: refused when `seen` knows `order_id`. [`accept`] runs it in its
/// place; an agent that runs [`accept`] outside the lock of its store (the costly signature
/// check needs no store) runs it again under that lock, right before remembering the id.
pub fn check_replay(order_id: &str, seen: &dyn SeenOrders) -> Result<(), Rejection> {
    if seen.seen(order_id) {
        return Err(Rejection::new(
            RefusalKind::Replayed,
            format!("order {order_id} was already accepted once; an order is never applied twice"),
        ));
    }
    Ok(())
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
    // The agent checks names itself, whatever the controller did: they become container names,
    // compose arguments and file names on the host.
    if !crate::order::is_valid_name(&order.app) {
        return Err(format!(
            "app {:?} is not a valid name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64)",
            order.app
        ));
    }
    if order.services.is_empty() {
        return Err("names no service".into());
    }
    if let Some(bad) = order
        .services
        .keys()
        .find(|s| !crate::order::is_valid_name(s))
    {
        return Err(format!(
            "service {bad:?} is not a valid name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 64)"
        ));
    }
    if let Some(extra) = order
        .images
        .keys()
        .find(|s| !order.services.contains_key(*s))
    {
        return Err(format!(
            "images names service {extra:?}, which the order does not name"
        ));
    }
    if order.migrate_image.is_some() && order.migrate.is_none() {
        return Err("migrate_image without a migration".into());
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
    for (name, spec) in &order.services {
        check_proxy_shape(name, spec)?;
    }
    check_tags_shape(order)?;
    check_exec_shape(order)?;
    check_maintenance_shape(order)
}

/// `tags` maps digests to registry tags, as a registry spells them
/// (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`): they end up in refusals and journals.
fn check_tags_shape(order: &Order) -> Result<(), String> {
    if let Some(key) = order.tags.keys().find(|k| !crate::order::is_digest(k)) {
        return Err(format!("tags key {key:?} is not a sha256 digest"));
    }
    let is_tag = |t: &str| {
        let mut bytes = t.bytes();
        t.len() <= 128
            && bytes
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    match order.tags.values().flatten().find(|t| !is_tag(t)) {
        Some(bad) => Err(format!("tags holds {bad:?}, which is not a registry tag")),
        None => Ok(()),
    }
}

/// A proxied service: a container service Caddy reaches at a known port, on addresses the
/// agent can read, with a bounded drain. Public so the controller refuses it when it loads
/// deploy.toml.
pub fn check_proxy_shape(name: &str, spec: &ServiceSpec) -> Result<(), String> {
    let Some(proxy) = &spec.proxy else {
        return Ok(());
    };
    let bad = |why: String| Err(format!("service {name:?}: proxy: {why}"));
    if spec.kind == ServiceKind::Compose {
        return bad("a compose service cannot be proxied (it is switched by compose)".into());
    }
    if !spec.ports.is_empty() {
        return bad(
            "a proxied service publishes no host port (Caddy reaches the container on its \
             network): remove `ports`"
                .into(),
        );
    }
    if proxy.upstream_port(&spec.health).is_none() {
        return bad("no port to send requests to: set `proxy.port` or `health.port`".into());
    }
    if crate::spec::admin_address(&proxy.caddy).is_none() {
        return bad(format!(
            "caddy = {:?} is not host:port of Caddy's admin API",
            proxy.caddy
        ));
    }
    if proxy.listen.is_empty() {
        return bad("listen names no address".into());
    }
    if let Some(l) = proxy
        .listen
        .iter()
        .find(|l| crate::spec::listen_port(l).is_none())
    {
        return bad(format!("listen {l:?} is not [host]:port"));
    }
    if let Some(h) = proxy
        .hosts
        .iter()
        .find(|h| h.is_empty() || h.len() > 253 || h.chars().any(|c| c.is_control() || c == ' '))
    {
        return bad(format!("hosts entry {h:?} is not a host name"));
    }
    if proxy.drain > ProxySpec::MAX_DRAIN {
        return bad(format!(
            "drain {} is longer than {}",
            humantime::format_duration(proxy.drain),
            humantime::format_duration(ProxySpec::MAX_DRAIN)
        ));
    }
    Ok(())
}

/// A maintenance order names only proxied container services and changes nothing else; only
/// maintenance orders carry `maintenance`.
pub fn check_maintenance_shape(order: &Order) -> Result<(), String> {
    let m = match (&order.maintenance, order.action) {
        (None, Action::Maintenance) => {
            return Err("a maintenance order without `maintenance`".into());
        }
        (None, _) => return Ok(()),
        (Some(_), action) if action != Action::Maintenance => {
            return Err(format!("a {action} order carries `maintenance`"));
        }
        (Some(m), _) => m,
    };
    if let Some(name) = order
        .services
        .iter()
        .find_map(|(n, s)| s.proxy.is_none().then_some(n))
    {
        return Err(format!(
            "service {name:?} has no proxy: maintenance is a page Caddy serves in its place"
        ));
    }
    if order.run_migration || order.migrate.is_some() || order.migrate_image.is_some() {
        return Err("a maintenance order runs no migration".into());
    }
    if m.message().len() > MaintenanceSpec::MAX_MESSAGE || m.message().contains('\0') {
        return Err(format!(
            "a maintenance message is at most {} bytes, without NUL",
            MaintenanceSpec::MAX_MESSAGE
        ));
    }
    Ok(())
}

/// Most arguments an exec's command may have.
pub const MAX_EXEC_ARGS: usize = 256;

/// An exec order asks for one command in the one service it names, in one image, and nothing
/// else; only exec orders carry `exec`. Public so the controller can refuse before it signs.
pub fn check_exec_shape(order: &Order) -> Result<(), String> {
    let exec = match (&order.exec, order.action) {
        (None, Action::Exec) => return Err("an exec order without `exec`".into()),
        (None, _) => return Ok(()),
        (Some(_), action) if action != Action::Exec => {
            return Err(format!("a {action} order carries `exec`"));
        }
        (Some(exec), _) => exec,
    };
    let Some(spec) = order
        .services
        .get(&exec.service)
        .filter(|_| order.services.len() == 1)
    else {
        return Err(format!(
            "an exec order names exactly its service {:?} in `services`",
            exec.service
        ));
    };
    if spec.kind == ServiceKind::Compose {
        return Err(format!(
            "service {:?} is kind = \"compose\": exec runs one-off containers of container services \
             only (use `docker compose run` on the host)",
            exec.service
        ));
    }
    if order.run_migration || order.migrate.is_some() || order.migrate_image.is_some() {
        return Err("an exec order runs no migration".into());
    }
    if !order.images.is_empty() {
        return Err("an exec order runs one image, `image`".into());
    }
    if exec.command.is_empty() || exec.command.len() > MAX_EXEC_ARGS {
        return Err(format!(
            "an exec command has 1 to {MAX_EXEC_ARGS} arguments, not {}",
            exec.command.len()
        ));
    }
    if exec.command.iter().any(|a| a.contains('\0')) {
        return Err("an exec command argument holds a NUL byte".into());
    }
    if exec.timeout.is_zero() || exec.timeout > MAX_EXEC_TIMEOUT {
        return Err(format!(
            "exec timeout {} is not between 0s and {} (the command holds its service meanwhile)",
            humantime::format_duration(exec.timeout),
            humantime::format_duration(MAX_EXEC_TIMEOUT)
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
    use crate::policy::EmptyHost;

    /// A policy trusting one key, and an order from that key for `web-1` shaped by `adjust`.
    fn signed(adjust: impl FnOnce(&mut Order)) -> (SignedOrder, AcceptPolicy) {
        let key = crate::sign::ed25519_key(&[7; 32], "ci");
        let line = crate::sign::allowed_signers_line("ci@acme", key.public_key()).unwrap();
        let signers = AllowedSigners::parse(&line, "test").unwrap();
        let policy = AcceptPolicy::new("web-1", "prod", signers, vec!["reg/acme/*".into()]);
        let now = Timestamp::now();
        let mut order: Order = serde_json::from_value(serde_json::json!({
            "order_id": "o1", "rollout_id": "r1", "env": "prod", "host": "web-1",
            "issued_at": now, "not_after": now.plus(Duration::from_secs(600)),
            "issued_by": "ci", "action": "deploy",
            "image": "reg/acme/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "ref": "v1", "run_migration": false, "app": "acme", "services": {"web": {}}
        }))
        .unwrap();
        adjust(&mut order);
        (crate::sign::sign_order(&key, &order).unwrap(), policy)
    }

    fn verdict(signed: &SignedOrder, policy: &AcceptPolicy) -> Result<(), (RefusalKind, String)> {
        accept(
            signed,
            policy,
            Timestamp::now(),
            &BTreeSet::new(),
            &EmptyHost,
        )
        .map(drop)
        .map_err(|r| (r.kind, r.message))
    }

    #[test]
    fn an_order_bound_to_a_host_key_needs_that_key_on_this_host() {
        let mine = "SHA256:mine".to_string();
        let (to_me, mut policy) = signed(|o| o.host_key = Some(mine.clone()));
        let (to_other, _) = signed(|o| o.host_key = Some("SHA256:other".into()));
        let (unbound, _) = signed(|_| {});

        let (kind, message) = verdict(&to_me, &policy).unwrap_err();
        assert_eq!(kind, RefusalKind::HostMismatch);
        assert!(
            message.contains("knows none of its host's keys"),
            "{message}"
        );

        policy.host_keys = vec!["SHA256:first".into(), mine];
        assert_eq!(verdict(&to_me, &policy), Ok(()));
        let (kind, message) = verdict(&to_other, &policy).unwrap_err();
        assert_eq!(kind, RefusalKind::HostMismatch);
        assert!(
            message.contains("SHA256:other") && message.contains("another machine"),
            "{message}"
        );
        assert_eq!(verdict(&unbound, &policy), Ok(()), "a local socket's order");
    }

    #[test]
    fn the_host_policy_is_the_last_check_and_names_its_rule() {
        let (signed, mut policy) = signed(|o| {
            o.services.get_mut("web").unwrap().volumes = vec!["/:/host".into()];
        });
        let (kind, message) = verdict(&signed, &policy).unwrap_err();
        assert_eq!(kind, RefusalKind::PolicyDenied);
        assert!(
            message.starts_with("[policy] volumes denies services.web.volumes[0]"),
            "{message}"
        );
        assert_eq!(kind.to_string(), "policy-denied");
        policy.host_policy.volumes = vec!["/".into()];
        assert_eq!(verdict(&signed, &policy), Ok(()));
        // An image outside allowed_images is refused as such before the policy is consulted.
        policy.allowed_images = vec!["reg/other/*".into()];
        assert_eq!(
            verdict(&signed, &policy).unwrap_err().0,
            RefusalKind::ImageNotAllowed
        );
    }

    #[test]
    fn the_release_policy_is_judged_at_the_agents_now_after_the_host_policy() {
        use crate::release_policy::{freeze::Window, refs};
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let tagged = |tags: &[&str]| {
            let tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
            move |o: &mut Order| {
                o.tags.insert(digest.into(), tags.clone());
            }
        };
        let (rc, mut policy) = signed(tagged(&["v1.3.0-rc.1"]));
        let (calver, _) = signed(tagged(&["2023.06.1"]));
        policy.release_policy.refs = Some(refs::RefRules {
            allow: vec![refs::Form::Semver, refs::Form::Calver],
            prerelease: false,
        });
        let (kind, message) = verdict(&rc, &policy).unwrap_err();
        assert_eq!(kind, RefusalKind::RefNotAllowed);
        assert!(
            message.contains("[refs] prerelease denies services.web"),
            "{message}"
        );
        assert_eq!(kind.to_string(), "ref-not-allowed");
        assert_eq!(verdict(&calver, &policy), Ok(()));

        // A window around the agent's clock refuses even an order issued before it began.
        let now = Timestamp::now();
        let hour = Duration::from_secs(3600);
        let (from, to) = (now.minus(hour).to_string(), now.plus(hour).to_string());
        policy.release_policy.freeze =
            vec![Window::once(&from, &to, "UTC", "release day").unwrap()];
        let (kind, message) = verdict(&calver, &policy).unwrap_err();
        assert_eq!(
            (kind, kind.to_string().as_str()),
            (RefusalKind::Frozen, "frozen")
        );
        assert!(
            message.contains("\"release day\"") && message.contains(&from),
            "{message}"
        );
        // The host policy speaks first.
        let (denied, _) =
            signed(|o| o.services.get_mut("web").unwrap().volumes = vec!["/:/h".into()]);
        assert_eq!(
            verdict(&denied, &policy).unwrap_err().0,
            RefusalKind::PolicyDenied
        );
    }

    #[test]
    fn tags_name_digests_and_look_like_registry_tags() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases: &[(&str, &str, Option<&str>)] = &[
            (digest, "v1.3.0", None),
            (digest, "_under.score-1", None),
            ("sha256:00", "v1", Some("is not a sha256 digest")),
            ("v1.3.0", "v1", Some("is not a sha256 digest")),
            (digest, "", Some("is not a registry tag")),
            (digest, "-rm", Some("is not a registry tag")),
            (digest, "a b", Some("is not a registry tag")),
            (digest, "v1\n[refs] allow", Some("is not a registry tag")),
            (digest, &"x".repeat(129), Some("is not a registry tag")),
        ];
        for (key, tag, refused) in cases {
            let (signed, policy) = signed(|o| {
                o.tags.insert(key.to_string(), vec![tag.to_string()]);
            });
            match (verdict(&signed, &policy), refused) {
                (Ok(()), None) => {}
                (Err((RefusalKind::Malformed, message)), Some(want)) if message.contains(want) => {}
                (got, _) => panic!("{key} {tag:?}: {got:?}, expected {refused:?}"),
            }
        }
    }

    type Adjust = Box<dyn Fn(&mut Order)>;

    /// Each case adjusts a valid order made by `base`; `refused`: what the `malformed`
    /// refusal says (`None`: accepted).
    fn shape_table(base: impl Fn(&mut Order), cases: Vec<(&str, Adjust, Option<&str>)>) {
        for (what, adjust, refused) in cases {
            let (signed, policy) = signed(|o| {
                base(o);
                adjust(o);
            });
            match (verdict(&signed, &policy), refused) {
                (Ok(()), None) => {}
                (Err((RefusalKind::Malformed, message)), Some(want)) if message.contains(want) => {}
                (got, _) => panic!("{what}: {got:?}, expected {refused:?}"),
            }
        }
    }

    #[test]
    fn exec_orders_ask_for_one_command_in_one_container_service() {
        let exec = |o: &mut Order| {
            o.action = Action::Exec;
            o.exec = Some(crate::order::ExecSpec {
                service: "web".into(),
                command: vec!["/app".into(), "version".into()],
                timeout: Duration::from_secs(60),
            });
        };
        let spec = |o: &mut Order| o.exec.as_mut().unwrap().clone();
        // (what, adjustment of a valid exec order, what the refusal says; None: accepted)
        let cases: Vec<(&str, Adjust, Option<&str>)> = vec![
            ("a valid exec", Box::new(|_| {}), None),
            (
                "no spec",
                Box::new(|o| o.exec = None),
                Some("without `exec`"),
            ),
            (
                "a deploy carrying one",
                Box::new(|o| o.action = Action::Deploy),
                Some("a deploy order carries `exec`"),
            ),
            (
                "another service",
                Box::new(move |o| {
                    let mut e = spec(o);
                    e.service = "api".into();
                    o.exec = Some(e);
                }),
                Some("exactly its service \"api\""),
            ),
            (
                "two services",
                Box::new(|o| {
                    let web = o.services["web"].clone();
                    o.services.insert("api".into(), web);
                }),
                Some("exactly its service"),
            ),
            (
                "a compose service",
                Box::new(|o| o.services.get_mut("web").unwrap().kind = ServiceKind::Compose),
                Some("kind = \"compose\""),
            ),
            (
                "a migration",
                Box::new(|o| o.run_migration = true),
                Some("runs no migration"),
            ),
            (
                "a second image",
                Box::new(|o| {
                    let image = o.image.clone();
                    o.images.insert("web".into(), image);
                }),
                Some("runs one image"),
            ),
            (
                "no command",
                Box::new(move |o| {
                    let mut e = spec(o);
                    e.command.clear();
                    o.exec = Some(e);
                }),
                Some("1 to 256 arguments, not 0"),
            ),
            (
                "a NUL byte",
                Box::new(move |o| {
                    let mut e = spec(o);
                    e.command = vec!["a\0b".into()];
                    o.exec = Some(e);
                }),
                Some("NUL"),
            ),
            (
                "no time to run",
                Box::new(move |o| {
                    let mut e = spec(o);
                    e.timeout = Duration::ZERO;
                    o.exec = Some(e);
                }),
                Some("exec timeout 0s"),
            ),
            (
                "longer than an hour",
                Box::new(move |o| {
                    let mut e = spec(o);
                    e.timeout = MAX_EXEC_TIMEOUT + Duration::from_secs(1);
                    o.exec = Some(e);
                }),
                Some("holds its service"),
            ),
        ];
        shape_table(exec, cases);
    }

    #[test]
    fn proxied_services_and_maintenance_orders_have_their_shape() {
        let proxied = |o: &mut Order| {
            let web = o.services.get_mut("web").unwrap();
            web.health.port = Some(8080);
            web.proxy = Some(
                serde_json::from_str(r#"{"caddy":"localhost:2019","listen":[":8443"]}"#).unwrap(),
            );
        };
        let proxy = |o: &mut Order| -> ProxySpec {
            o.services.get_mut("web").unwrap().proxy.clone().unwrap()
        };
        let set = |o: &mut Order, p: ProxySpec| o.services.get_mut("web").unwrap().proxy = Some(p);
        let maintenance = |o: &mut Order| {
            o.action = Action::Maintenance;
            o.maintenance = Some(MaintenanceSpec {
                on: true,
                message: Some("back soon".into()),
                retry_after: Duration::from_secs(60),
            });
        };
        // (what, adjustment of a valid deploy of a proxied service, the refusal; None: accepted)
        let cases: Vec<(&str, Adjust, Option<&str>)> = vec![
            ("a proxied deploy", Box::new(|_| {}), None),
            (
                "with a host port",
                Box::new(|o| o.services.get_mut("web").unwrap().ports = vec!["8080:8080".into()]),
                Some("publishes no host port"),
            ),
            (
                "no port",
                Box::new(|o| o.services.get_mut("web").unwrap().health.port = None),
                Some("set `proxy.port` or `health.port`"),
            ),
            (
                "a URL for caddy",
                Box::new(move |o| {
                    let mut p = proxy(o);
                    p.caddy = "http://localhost:2019/".into();
                    set(o, p);
                }),
                Some("not host:port of Caddy's admin API"),
            ),
            (
                "no listen",
                Box::new(move |o| {
                    let mut p = proxy(o);
                    p.listen.clear();
                    set(o, p);
                }),
                Some("listen names no address"),
            ),
            (
                "a port range",
                Box::new(move |o| {
                    let mut p = proxy(o);
                    p.listen = vec![":8000-8010".into()];
                    set(o, p);
                }),
                Some("is not [host]:port"),
            ),
            (
                "an endless drain",
                Box::new(move |o| {
                    let mut p = proxy(o);
                    p.drain = ProxySpec::MAX_DRAIN + Duration::from_secs(1);
                    set(o, p);
                }),
                Some("drain 15m 1s is longer than 15m"),
            ),
            (
                "a compose service",
                Box::new(|o| o.services.get_mut("web").unwrap().kind = ServiceKind::Compose),
                Some("compose service cannot be proxied"),
            ),
            ("maintenance on", Box::new(maintenance), None),
            (
                "maintenance of a service without proxy",
                Box::new(move |o| {
                    maintenance(o);
                    o.services.get_mut("web").unwrap().proxy = None;
                }),
                Some("has no proxy"),
            ),
            (
                "maintenance without its spec",
                Box::new(move |o| {
                    maintenance(o);
                    o.maintenance = None;
                }),
                Some("a maintenance order without `maintenance`"),
            ),
            (
                "a deploy carrying maintenance",
                Box::new(move |o| {
                    maintenance(o);
                    o.action = Action::Deploy;
                }),
                Some("a deploy order carries `maintenance`"),
            ),
            (
                "maintenance with a migration",
                Box::new(move |o| {
                    maintenance(o);
                    o.run_migration = true;
                }),
                Some("runs no migration"),
            ),
            (
                "a huge page",
                Box::new(move |o| {
                    maintenance(o);
                    o.maintenance.as_mut().unwrap().message = Some("x".repeat(5000));
                }),
                Some("at most 4096 bytes"),
            ),
        ];
        shape_table(proxied, cases);
    }

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
