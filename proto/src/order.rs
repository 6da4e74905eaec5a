//! The deploy order (ARCHITECTURE.md, "An order's states"; README, Guarantees 2) and the
//! service/migration spec it carries.
//!
//! The same spec types are what `deploy.toml` declares, so the controller
//! deserializes them straight from config and the agent reads them from the
//! order: one definition, no translation layer to drift.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{Timestamp, duration};

/// How long an order stays valid when the issuer does not say otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(10 * 60);

/// A signed instruction for one host of one environment. Strict: unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Unique and time-ordered (a ULID); the replay key.
    pub order_id: String,
    /// Shared by every order of one `push` or `rollback` across hosts.
    pub rollout_id: String,
    pub env: String,
    pub host: String,
    /// Over SSH: `SHA256:…` of the host key the controller verified. The agent refuses the
    /// order unless it is one of its own host's keys; orders to a local socket carry none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    pub issued_at: Timestamp,
    pub not_after: Timestamp,
    /// Free text for humans: `user@machine`, a CI run URL.
    pub issued_by: String,
    pub action: Action,
    /// The release's image of every service without an entry in `images`.
    pub image: ImageRef,
    /// Services whose image is not `image` (their own repository, or moved with `--set`):
    /// with `image`, the whole release (README, "Releases of several images").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, ImageRef>,
    /// The migration's image when it is not its service's (`[migrate] image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate_image: Option<ImageRef>,
    /// The git commit the ref resolved to, when deployctl knows it: what `verify` expects
    /// of an image that carries no `org.opencontainers.image.revision` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// What the user typed (`v1.2`, a git SHA), for display only.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Services whose ref is not `ref` (moved with `--set`): the ref each was resolved from.
    /// Their containers carry it, and their `verify` expects its commit, not `revision`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, String>,
    /// For each digest of the release (`sha256:…`), the registry tags the controller found
    /// pointing at it when it resolved the release: what a host's `[refs]` judges (README,
    /// "Release policy"). Orders before it parse with none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, Vec<String>>,
    /// True on the env's first host only.
    pub run_migration: bool,
    /// Run the migration even if this digest's migration already succeeded on the host (README,
    /// Guarantees 5, "unless asked"); without it a retried rollout of the same digest skips it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rerun_migration: bool,
    /// Names containers `<prefix><app>-<env>-<service>`.
    pub app: String,
    pub services: BTreeMap<String, ServiceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<MigrationSpec>,
    /// `action = "exec"` only: the one-off command, run in the one service the order names, in
    /// `image`, which must be what that service runs on the host when the order arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecSpec>,
    /// `action = "maintenance"` only: turn the maintenance page of every service the order
    /// names (each behind a `proxy`) on or off. The services keep running either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<MaintenanceSpec>,
    /// The approved proposal this deploy or rollback carries out (`proto::approval`): a host
    /// with `[approvals]` runs it only if it holds that proposal, approved, for exactly this
    /// release. Absent from orders to hosts without approvals and from older orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    /// `--override-freeze REASON`: run although a `[[freeze]]` window holds; admitted only by
    /// hosts with `[approvals]`, under a proposal approved for exactly it (reason included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_freeze: Option<String>,
}

/// A release: the image of every service of an app.
pub type Release = BTreeMap<String, ImageRef>;

impl Order {
    /// The image `service` runs in this order.
    pub fn image_of(&self, service: &str) -> &ImageRef {
        self.images.get(service).unwrap_or(&self.image)
    }

    /// The ref `service`'s image was resolved from.
    pub fn reference_of(&self, service: &str) -> &str {
        self.refs.get(service).unwrap_or(&self.reference)
    }

    /// The git commit `service`'s `verify` expects of an image without a revision label: the
    /// order's `revision`, or for a service with a ref of its own, that ref when it is a commit.
    pub fn revision_of(&self, service: &str) -> Option<&str> {
        match self.refs.get(service) {
            Some(r) => is_git_sha(r).then_some(r.as_str()),
            None => self.revision.as_deref(),
        }
    }

    /// Every service's image.
    pub fn release(&self) -> Release {
        self.services
            .keys()
            .map(|s| (s.clone(), self.image_of(s).clone()))
            .collect()
    }

    /// The image the migration runs in: its own, else its service's.
    pub fn migration_image(&self) -> Option<&ImageRef> {
        let m = self.migrate.as_ref()?;
        Some(
            self.migrate_image
                .as_ref()
                .unwrap_or_else(|| self.image_of(&m.service)),
        )
    }

    /// The release for a human: the image, or each service's when they differ.
    pub fn describe_release(&self) -> String {
        if self.images.is_empty() {
            return self.image.to_string();
        }
        self.release()
            .iter()
            .map(|(s, i)| format!("{s}={i}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every distinct image the order needs on the host (services and migration).
    pub fn all_images(&self) -> Vec<&ImageRef> {
        let mut all: Vec<&ImageRef> = self.services.keys().map(|s| self.image_of(s)).collect();
        all.extend(self.migration_image());
        all.sort();
        all.dedup();
        all
    }
}

/// Generates a fresh, time-ordered id for an order or a rollout.
pub fn new_id() -> String {
    ulid::Ulid::new().to_string().to_lowercase()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Deploy,
    Rollback,
    /// A one-off command in a container of a service's running image (`deployctl exec`); it
    /// changes no service.
    Exec,
    /// The maintenance page of proxied services on or off (`deployctl maintenance`); it changes
    /// no container, only what the proxy answers.
    Maintenance,
}

impl Action {
    /// Whether an order of this action puts a release on its services: only such orders say
    /// what a host runs (history's releases, `requires`, the previous healthy release).
    pub fn deploys(self) -> bool {
        matches!(self, Action::Deploy | Action::Rollback)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
            Action::Exec => "exec",
            Action::Maintenance => "maintenance",
        })
    }
}

/// One service of an app, as declared in `deploy.toml` `[services.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub kind: ServiceKind,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// A path on the host; secrets never travel in orders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_file: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub health: HealthSpec,
    /// `kind = "compose"`: the compose file on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_file: Option<String>,
    /// `kind = "compose"`: the service in that file; defaults to this service's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
    /// This service's own repository; default: the app's `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// After health: the running code must say which release it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Served through the host's Caddy: switched start-first at the proxy, drained, no host port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySpec>,
}

/// `proxy = { caddy, listen, hosts, drain, port }`: the service is reached through the host's
/// Caddy, whose admin API (`caddy`) the agent drives. Its route (`@id` [`route_id`]) lives in
/// the server listening on `listen` and sends requests for `hosts` (none: any host) to the
/// serving container's address on `port` (default: the health port).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySpec {
    /// The admin API, `host:port` (Caddy's default is `localhost:2019`).
    pub caddy: String,
    /// The server's listen addresses, in Caddy's form (`:443`, `127.0.0.1:8443`).
    pub listen: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// How long the old container may finish the requests it has after the switch.
    #[serde(default = "ProxySpec::default_drain", with = "duration")]
    pub drain: Duration,
    /// The container port Caddy sends requests to; default: `health.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl ProxySpec {
    /// Longest `drain` an order may ask: the old container holds the service meanwhile.
    pub const MAX_DRAIN: Duration = Duration::from_secs(15 * 60);

    fn default_drain() -> Duration {
        Duration::from_secs(30)
    }

    /// The container port requests go to, when the spec names one.
    pub fn upstream_port(&self, health: &HealthSpec) -> Option<u16> {
        self.port.or(health.port)
    }
}

/// The `@id` of a service's route in Caddy's config: how the agent finds the one route it owns.
pub fn route_id(app: &str, env: &str, service: &str) -> String {
    format!("deployctl-{app}-{env}-{service}")
}

/// `deployctl maintenance on|off`: what the proxy answers for the order's services meanwhile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSpec {
    pub on: bool,
    /// The 503 page's text (`on` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What `Retry-After` tells clients.
    #[serde(default = "MaintenanceSpec::default_retry_after", with = "duration")]
    pub retry_after: Duration,
}

impl MaintenanceSpec {
    /// The page's text when the order gives none.
    pub const DEFAULT_MESSAGE: &'static str = "down for maintenance; back soon";
    /// Longest message an order may carry.
    pub const MAX_MESSAGE: usize = 4096;

    fn default_retry_after() -> Duration {
        Duration::from_secs(60)
    }

    pub fn message(&self) -> &str {
        self.message.as_deref().unwrap_or(Self::DEFAULT_MESSAGE)
    }
}

/// `verify = { path, expect }`: once healthy, `GET path` on the health port must answer 2xx with
/// a body containing `expect` — `"revision"` for the release's git commit, else the literal text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    pub path: String,
    pub expect: String,
}

impl VerifySpec {
    /// The `expect` value that stands for the release's revision.
    pub const REVISION: &'static str = "revision";
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    #[default]
    Container,
    Compose,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Stop the old container (kept aside), then start the new: needed when a host port is bound.
    #[default]
    StopFirst,
    /// Start the new container while the old one keeps serving; switch once it is healthy.
    StartFirst,
}

/// How a service proves it is healthy. Without `path`: the image's HEALTHCHECK if it has one,
/// else "still running after `healthy_for`".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Container port probed on the container's own address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "HealthSpec::default_interval", with = "duration")]
    pub interval: Duration,
    /// The service must stay healthy this long before it counts as healthy.
    #[serde(default = "HealthSpec::default_healthy_for", with = "duration")]
    pub healthy_for: Duration,
    /// Give up (and roll back) if not healthy by then.
    #[serde(default = "HealthSpec::default_deadline", with = "duration")]
    pub deadline: Duration,
}

impl HealthSpec {
    fn default_interval() -> Duration {
        Duration::from_millis(250)
    }
    fn default_healthy_for() -> Duration {
        Duration::from_secs(2)
    }
    fn default_deadline() -> Duration {
        Duration::from_secs(60)
    }
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: None,
            port: None,
            interval: Self::default_interval(),
            healthy_for: Self::default_healthy_for(),
            deadline: Self::default_deadline(),
        }
    }
}

/// `[migrate]`: a one-off container of the NEW image, run once per rollout before any switch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationSpec {
    pub command: Vec<String>,
    /// The service whose env_file / volumes / network the migration borrows.
    pub service: String,
    #[serde(default = "MigrationSpec::default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Its own repository (a migrate image); default: the image of `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl MigrationSpec {
    fn default_timeout() -> Duration {
        Duration::from_secs(300)
    }
}

/// How long an exec's command may run when the issuer does not say.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// The longest an exec's command may run: it holds its service against deploys meanwhile, so
/// no signed order may hold it for longer than this.
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// `deployctl exec`: one command in a one-off container of the service's running image, with
/// the service's env_file, volumes and network (as the migration borrows them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecSpec {
    pub service: String,
    /// Replaces the image's `CMD` (its `ENTRYPOINT`, if any, stays), as `docker run IMAGE CMD…`.
    pub command: Vec<String>,
    /// Killed after this long.
    #[serde(default = "ExecSpec::default_timeout", with = "duration")]
    pub timeout: Duration,
}

impl ExecSpec {
    fn default_timeout() -> Duration {
        DEFAULT_EXEC_TIMEOUT
    }

    /// The command as one would type it in a shell, for journals and output.
    pub fn shown(&self) -> String {
        self.command
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quotes a word for a POSIX shell: as it is when it holds nothing a shell would read, else in
/// single quotes.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `repository@sha256:<64 lowercase hex>`: the only way an image is named on a host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    repository: String,
    digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad image reference {input:?}: {why} (expected repository@sha256:<64 hex>)")]
pub struct ImageRefError {
    pub input: String,
    pub why: &'static str,
}

impl ImageRef {
    pub fn new(repository: &str, digest: &str) -> Result<Self, ImageRefError> {
        format!("{repository}@{digest}").parse()
    }

    /// `registry.example.com/acme/web`
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// `sha256:…`
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The first 12 hex digits, for tables.
    pub fn short_digest(&self) -> &str {
        short_digest(&self.digest)
    }
}

/// `sha256:0123456789ab…` → `0123456789ab`. Digests can come from labels anyone may set, so
/// any text is cut at a character boundary, never mid-character.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    match hex.char_indices().nth(12) {
        Some((end, _)) => &hex[..end],
        None => hex,
    }
}

/// Whether an app or service name is usable in container names and file names on a host:
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 bytes. No `/` (so no path can be reached through
/// it) and no leading `-` (so it is never read as an option by the compose CLI).
pub fn is_valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && s.len() <= 64
}

/// True for a full git commit id: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits. A ref that
/// is one names the commit an image was built from, which `verify` can expect.
pub fn is_git_sha(s: &str) -> bool {
    matches!(s.len(), 40 | 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for `sha256:` followed by exactly 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ImageRefError {
            input: s.to_string(),
            why,
        };
        let (repo, digest) = s.rsplit_once('@').ok_or_else(|| err("no @digest"))?;
        if repo.is_empty() {
            return Err(err("empty repository"));
        }
        if repo
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_uppercase() || b == b'@')
        {
            return Err(err("repository has whitespace, upper case or '@'"));
        }
        // A tag on a pinned image would invite someone to believe it.
        if repo
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
        {
            return Err(err("repository carries a tag"));
        }
        if !is_digest(digest) {
            return Err(err("digest is not sha256:<64 lowercase hex>"));
        }
        Ok(ImageRef {
            repository: repo.to_string(),
            digest: digest.to_string(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The container name of a service: `<prefix><app>-<env>-<service>`.
pub fn container_name(prefix: &str, app: &str, env: &str, service: &str) -> String {
    format!("{prefix}{app}-{env}-{service}")
}

/// Labels every container deployctl creates carries: an agent touches only containers carrying
/// its own host and env (README, "Running the agent on a host").
pub mod labels {
    pub const HOST: &str = "deployctl.host";
    pub const ENV: &str = "deployctl.env";
    pub const APP: &str = "deployctl.app";
    pub const SERVICE: &str = "deployctl.service";
    pub const DIGEST: &str = "deployctl.digest";
    pub const REF: &str = "deployctl.ref";
    pub const ORDER: &str = "deployctl.order";
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_usable_on_a_host() {
        for ok in ["web", "acme", "api-2", "a_b.c", "W3b", &"a".repeat(64)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-rm",
            "../etc",
            "a/b",
            ".hidden",
            "we b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn short_digests_of_any_text_never_split_a_character() {
        let table = [
            (D, "0123456789ab"),
            ("sha256:abc", "abc"),
            ("", ""),
            // Labels are anyone's to set; these once panicked the controller.
            ("sha256:ééééééééééééééé", "éééééééééééé"),
            ("0123456789a€b", "0123456789a€"),
            ("🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀", "🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀🦀"),
        ];
        for (input, want) in table {
            assert_eq!(short_digest(input), want, "{input}");
        }
    }

    #[test]
    fn image_refs_parse_or_explain() {
        let ok = format!("127.0.0.1:5000/acme/web@{D}");
        let r: ImageRef = ok.parse().unwrap();
        assert_eq!(r.repository(), "127.0.0.1:5000/acme/web");
        assert_eq!(r.digest(), D);
        assert_eq!(r.to_string(), ok);
        assert_eq!(r.short_digest(), "0123456789ab");
        let cases = [
            "acme/web",
            "acme/web:latest",
            "@sha256:00",
            "acme/web@sha256:0123",
            "acme/web:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "Acme/web@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "acme/web@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "acme/web@md5:0123456789abcdef0123456789abcdef",
        ];
        for bad in cases {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn git_shas_are_full_lowercase_commit_ids() {
        let sha1 = "0123456789abcdef0123456789abcdef01234567";
        let sha256 = "0123456789abcdef".repeat(4);
        for ok in [sha1, &sha256] {
            assert!(is_git_sha(ok), "{ok}");
        }
        for bad in [
            "",
            "v1.2.3",
            &sha1[..39],
            "0123456789ABCDEF0123456789abcdef01234567",
            "0123456789abcdef0123456789abcdef0123456g",
            &format!("{sha1}0"),
            D,
        ] {
            assert!(!is_git_sha(bad), "{bad}");
        }
    }

    #[test]
    fn each_service_has_its_image_ref_and_revision() {
        let main = "0123456789abcdef0123456789abcdef01234567";
        let other = "fedcba9876543210fedcba9876543210fedcba98";
        let image = |repo: &str| ImageRef::new(repo, D).unwrap();
        let order = Order {
            order_id: "o".into(),
            rollout_id: "r".into(),
            env: "e".into(),
            host: "h".into(),
            host_key: None,
            issued_at: Timestamp::from_unix_secs(0),
            not_after: Timestamp::from_unix_secs(1),
            issued_by: "me".into(),
            action: Action::Deploy,
            image: image("r/api"),
            images: BTreeMap::from([("web".into(), image("r/web"))]),
            migrate_image: None,
            revision: Some(main.into()),
            reference: main.into(),
            refs: BTreeMap::from([
                ("web".to_string(), other.to_string()),
                ("worker".to_string(), "2023.05.4".to_string()),
            ]),
            tags: BTreeMap::from([(D.to_string(), vec!["v1.2.0".to_string()])]),
            run_migration: false,
            rerun_migration: false,
            app: "acme".into(),
            services: ["api", "web", "worker"]
                .into_iter()
                .map(|s| (s.to_string(), serde_json::from_str("{}").unwrap()))
                .collect(),
            migrate: None,
            exec: None,
            maintenance: None,
            proposal: None,
            override_freeze: None,
        };
        // (service, image repository, ref, revision)
        let table = [
            ("api", "r/api", main, Some(main)),
            ("web", "r/web", other, Some(other)),
            // a ref of its own that is no commit: only the image's label can say
            ("worker", "r/api", "2023.05.4", None),
        ];
        for (service, repo, reference, revision) in table {
            assert_eq!(order.image_of(service).repository(), repo, "{service}");
            assert_eq!(order.reference_of(service), reference, "{service}");
            assert_eq!(order.revision_of(service), revision, "{service}");
        }
        let json = serde_json::to_string(&order).unwrap();
        assert_eq!(serde_json::from_str::<Order>(&json).unwrap(), order);
    }

    #[test]
    fn exec_commands_are_shown_as_typed() {
        let cases: &[(&[&str], &str)] = &[
            (&["/app", "version"], "/app version"),
            (&["sh", "-c", "exit 7"], "sh -c 'exit 7'"),
            (&["echo", ""], "echo ''"),
            (&["echo", "it's"], r"echo 'it'\''s'"),
            (&["echo", "$(rm -rf /)"], "echo '$(rm -rf /)'"),
            (&["env", "A=b,c"], "env A=b,c"),
        ];
        for (command, want) in cases {
            let exec = ExecSpec {
                service: "web".into(),
                command: command.iter().map(|s| s.to_string()).collect(),
                timeout: DEFAULT_EXEC_TIMEOUT,
            };
            assert_eq!(exec.shown(), *want);
        }
    }

    #[test]
    fn service_spec_defaults_fill_in() {
        let s: ServiceSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(s.kind, ServiceKind::Container);
        assert_eq!(s.strategy, Strategy::StopFirst);
        assert_eq!(s.health.deadline, Duration::from_secs(60));
        assert!(serde_json::from_str::<ServiceSpec>(r#"{"prots": []}"#).is_err());
    }
}
