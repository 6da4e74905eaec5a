//! Messages exchanged between controller and agent: newline-delimited JSON frames, a `hello`
//! first that carries the protocol version both sides check.
//!
//! Each message is one JSON object on one line (see [`crate::codec`]). The
//! `type` field names the message; unknown types and unknown fields are errors.
//!
//! ## The hello exchange never changes
//!
//! Everything after `hello` may change from one [`PROTOCOL_VERSION`] to the next; the hello
//! exchange may not, so that any controller and any agent, of any two versions, can tell each
//! other which version they speak and say so clearly (README, "Version skew"). Its frames are,
//! exactly:
//!
//! - client → agent: `{"type":"hello","protocol":N,"client":"deployctl/…"}`
//! - agent → client, same version: `{"type":"hello","protocol":N,"agent_version":"…","host":"…","env":"…"}`
//! - agent → client, another version:
//!   `{"type":"refused","refusal":{"kind":"protocol-version","message":"…","protocol":N,"agent_version":"…"}}`
//!   (built by [`protocol_refusal`]; the message names both versions), then the agent closes.
//!
//! No field of these three frames is ever added, removed, renamed or retyped. Each side reads
//! the other's hello with the lenient [`Greeting`] and [`HelloAnswer`] (unknown fields and
//! unknown `type`s tolerated), never with the strict [`Request`] / [`Reply`], so even a peer
//! that broke this rule gets a protocol-version answer rather than "malformed frame".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::approval::{ApprovalRules, HeldProposal, SignedProposal};
use crate::order::{Action, ImageRef};
use crate::time::Timestamp;

/// Bumped on any incompatible change; both sides refuse a peer with another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The first frame of a connection as the agent reads it: a hello of any version (fields a
/// client of another version adds are ignored), or something else.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Greeting {
    Hello {
        protocol: u32,
        #[serde(default)]
        client: String,
    },
    /// A frame of another `type`: not a hello.
    #[serde(other)]
    NotHello,
}

/// The reply to `hello` as the client reads it, whatever version the agent speaks; also what
/// the agent writes when it refuses a hello ([`protocol_refusal`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HelloAnswer {
    Hello {
        protocol: u32,
        #[serde(default)]
        agent_version: String,
        #[serde(default)]
        host: String,
        #[serde(default)]
        env: String,
    },
    Refused {
        refusal: HelloRefusal,
    },
    Error {
        message: String,
    },
    /// A frame of another `type`: the peer is no agent of any version.
    #[serde(other)]
    Other,
}

/// A refused hello. `kind` is text, not [`RefusalKind`]: an agent of another version may
/// refuse for a reason this side has no name for. A `protocol-version` refusal also says the
/// agent's versions, so the client can tell which side is older.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloRefusal {
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// The agent's answer to a hello of protocol `theirs` when it speaks another
/// ([`PROTOCOL_VERSION`]): a `protocol-version` refusal naming both versions.
pub fn protocol_refusal(theirs: u32, agent_version: &str) -> HelloAnswer {
    HelloAnswer::Refused {
        refusal: HelloRefusal {
            kind: RefusalKind::ProtocolVersion.to_string(),
            message: format!(
                "this agent (deploy-agent {agent_version}) speaks protocol version \
                 {PROTOCOL_VERSION}, the client speaks version {theirs}"
            ),
            protocol: Some(PROTOCOL_VERSION),
            agent_version: Some(agent_version.to_string()),
        },
    }
}

/// The bytes of an order and the armored SSHSIG over exactly those bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedOrder {
    /// The order's JSON, verbatim as signed. Parsed only after the signature verifies.
    pub payload: String,
    /// `-----BEGIN SSH SIGNATURE-----` … (namespace `deployctl-order`).
    pub signature: String,
}

/// The name serde gives a unit variant (`crash-loop`, `rolled-back`): what the wire says is
/// what humans read too.
pub fn serde_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The longest a subscription goes without a `status` frame: a client that stops reading is
/// noticed by then, and a client hears that the agent is alive.
pub const SUBSCRIBE_HEARTBEAT_SECS: u64 = 15;

/// Controller → agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// First frame of every connection.
    Hello {
        protocol: u32,
        client: String,
    },
    /// Apply a signed order; answered by `event`s ending in an `outcome` (or a `refused`).
    Submit {
        order: SignedOrder,
    },
    /// Re-attach to an order: replays its journaled events, then follows it live to the outcome.
    Watch {
        order_id: String,
    },
    Status {},
    /// `status` now, then again whenever a job starts or ends or a service's health changes
    /// (and at least every [`SUBSCRIBE_HEARTBEAT_SECS`]), until the client goes away; answered
    /// by `status` frames only. For `deployctl status --watch` and `deployctl ui`.
    Subscribe {},
    History {
        limit: usize,
    },
    Logs {
        #[serde(default)]
        service: Option<String>,
        lines: usize,
    },
    /// Hold a signed proposal until it is approved or expires (hosts with `[approvals]`);
    /// answered by a `proposal` or a `refused`.
    Propose {
        proposal: SignedProposal,
    },
    /// The unexpired proposals held; answered by `proposals`.
    Proposals {},
    /// An approval of proposal `id`: an armored SSHSIG over its payload, namespace
    /// `deployctl-approval`; answered by a `proposal` or a `refused`.
    Approve {
        id: String,
        signature: String,
    },
}

/// Agent → controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    Hello {
        protocol: u32,
        agent_version: String,
        host: String,
        env: String,
    },
    Event {
        event: JobEvent,
    },
    Outcome {
        outcome: Outcome,
    },
    /// The order was not accepted; nothing changed.
    Refused {
        refusal: Refusal,
    },
    Status {
        status: AgentStatus,
    },
    History {
        entries: Vec<HistoryEntry>,
    },
    Logs {
        logs: Vec<ServiceLogs>,
    },
    /// A line an exec's command wrote, streamed to the clients following its job as it comes.
    /// Never journaled: the journal keeps the command, the signer and the exit code, not what
    /// the command printed (it may print what an env file holds).
    Output {
        output: OutputLine,
    },
    /// A proposal as held after a `propose` or an `approve`: its approvals that count now,
    /// of the `required`.
    Proposal {
        proposal: HeldProposal,
        required: usize,
    },
    /// Every unexpired proposal held (none on a host without `[approvals]`: `required` 0).
    Proposals {
        proposals: Vec<HeldProposal>,
        required: usize,
    },
    /// A request the agent could not serve (malformed, unknown order id, engine down).
    Error {
        message: String,
    },
}

/// One step of a job, as journaled and streamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEvent {
    pub order_id: String,
    pub at: Timestamp,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub message: String,
}

/// One line of an exec's output, without its line ending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLine {
    pub order_id: String,
    pub stream: OutputStream,
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Accepted,
    Pull,
    Migrate,
    /// Old container set aside / new one created and started.
    Switch,
    Health,
    /// Old versions removed or retained.
    Cleanup,
    Rollback,
    /// The agent restarted and is finishing or undoing this order.
    Recover,
    /// An exec's one-off container: created, started, its command's end, removed.
    Exec,
    Done,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// How an accepted order ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub order_id: String,
    pub rollout_id: String,
    pub kind: OutcomeKind,
    /// What went wrong, when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Did this order leave the host different from before it? (false after a clean rollback.)
    pub changed: bool,
    /// Last log lines of the failing container (migration or new version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// Per service: what runs now.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceResult>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// From the failed version's start to the previous version healthy again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_ms: Option<u64>,
    /// An exec's command's exit code, when it ran to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceResult {
    /// `sha256:…` now running, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// The new version is serving and healthy on every service.
    Succeeded,
    /// Nothing changed: the image could not be pulled.
    PullFailed,
    /// Nothing changed: the migration exited non-zero or timed out.
    MigrationFailed,
    /// The new version failed; the previous one is back and healthy.
    RolledBack,
    /// The new version failed and the previous one could not be restored: needs a human.
    RollbackFailed,
    /// Failed before any switch for another reason (engine error, first deploy unhealthy); nothing
    /// of the previous version changed.
    Failed,
}

impl OutcomeKind {
    /// Whether the host is on a version known good (new or previous) after this outcome.
    pub fn is_consistent(self) -> bool {
        !matches!(self, OutcomeKind::RollbackFailed)
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// The class of a failure (README, Guarantees 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    ImageNotFound,
    RegistryUnauthorized,
    RegistryUnreachable,
    MigrationFailed,
    MigrationTimeout,
    /// The new container exited before it became healthy.
    ContainerExited,
    HealthDeadline,
    /// Healthy, but `verify` found another release (or nothing) at its path.
    VerifyFailed,
    StartFailed,
    /// The engine itself misbehaved (API error).
    Engine,
    /// The host's Caddy refused or did not answer a change of the service's route.
    Proxy,
    /// The agent died mid-job and recovery undid the order.
    Interrupted,
    /// An exec's command outlived its timeout and was killed.
    ExecTimeout,
}

/// Why an order was not accepted (README, "What the outcomes mean"). Each kind is distinct so
/// callers can act on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    /// For `rollout-in-progress`: who holds the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<LockHolder>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// The signature does not verify over the payload (tampered, wrong namespace, corrupt).
    BadSignature,
    /// Valid signature by a key that is not in `allowed_signers` (for this namespace).
    UnknownSigner,
    EnvMismatch,
    HostMismatch,
    Expired,
    NotYetValid,
    Replayed,
    ImageNotAllowed,
    /// The host's `[policy]` forbids what the order asks for; the message names the rule and
    /// the field.
    PolicyDenied,
    /// An exec order's service does not run the order's image on this host (not at all, or
    /// another digest since the order was made).
    NotRunning,
    /// A service's `proxy` names a Caddy admin API the agent cannot reach: refused before any
    /// change, so no switch can strand a route.
    ProxyUnreachable,
    /// A deploy or rollback while one of the host's `[[freeze]]` windows holds; the message
    /// names the window, its zone and its reason.
    Frozen,
    /// An image of the release has no tag the host's `[refs]` admits (or an `ephemeral-*`
    /// one); the message names the rule, the service and the tags.
    RefNotAllowed,
    RolloutInProgress,
    Malformed,
    Oversized,
    ProtocolVersion,
    /// The agent could not complete its checks (e.g. its replay store is not writable); nothing changed.
    Internal,
    /// A deploy or rollback order to a host with `[approvals]` that does not name a proposal
    /// it holds with enough valid approvals for exactly this release.
    ApprovalRequired,
    /// An approval by the proposal's own key or principal.
    SelfApproval,
    /// An approval by a key whose principal is not in `[approvals] principals`.
    NotAnApprover,
    /// A second approval of one proposal by the same key or principal.
    DuplicateApproval,
    /// An approval of a proposal this host does not hold (never proposed, or expired and pruned).
    UnknownProposal,
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// The job currently holding a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockHolder {
    pub order_id: String,
    pub rollout_id: String,
    pub signer: String,
    pub issued_by: String,
    pub since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    pub agent_version: String,
    pub host: String,
    pub env: String,
    pub uptime_secs: u64,
    pub services: Vec<ServiceStatus>,
    /// Jobs running right now.
    #[serde(default)]
    pub running: Vec<LockHolder>,
    /// `[approvals]`: deploys and rollbacks here need a proposal approved so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<ApprovalRules>,
    /// The machine under the agent: its clock, engine and disks (`deployctl doctor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_health: Option<HostHealth>,
}

/// How the host itself is doing, as its agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostHealth {
    /// The agent's clock when it answered: orders expire by it.
    pub now: Timestamp,
    pub engine: EngineHealth,
    pub disks: Vec<DiskSpace>,
}

/// Whether the Docker engine answers the agent, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineHealth {
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// The engine's data root (images, containers, volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Free space of one filesystem the host needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpace {
    /// `engine` (the engine's data root) or `state_dir` (the agent's journal).
    pub what: String,
    pub path: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceStatus {
    pub app: String,
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRef>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub health: Health,
    /// When `health` last changed.
    pub since: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outcome: Option<OutcomeKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_order: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_digest: Option<String>,
    /// Behind a proxy in maintenance: the page's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<String>,
    /// How many times the engine restarted the serving container (a canary's watch compares).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u64,
    /// Why the service is not healthy, as the agent saw it leave `healthy` (README, "The health
    /// model"); none while healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<HealthReason>,
    /// The serving container's last exit code, when its death is the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// How long the last HTTP health probe took to answer (none without an HTTP probe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_ms: Option<u64>,
}

impl ServiceStatus {
    /// A service with its health and nothing else known yet: what status rows start from
    /// (and test fixtures, which name only what they are about).
    pub fn new(app: &str, service: &str, health: Health, since: Timestamp) -> ServiceStatus {
        ServiceStatus {
            app: app.to_string(),
            service: service.to_string(),
            container_id: None,
            image: None,
            reference: None,
            health,
            since,
            last_outcome: None,
            last_order: None,
            previous_digest: None,
            maintenance: None,
            restarts: 0,
            reason: None,
            exit_code: None,
            probe_ms: None,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Healthy,
    Unhealthy,
    /// Container present but not running.
    Stopped,
    /// No container for the service.
    Missing,
    Unknown,
    /// Died again and again: at least 3 deaths of its container within 5 minutes, and not up
    /// for 10 s since the last (README, "The health model"). Only the agent judges this; the
    /// engine's one look never says it.
    CrashLoop,
}

/// Why a service left `healthy`, from the engine's event stream or a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthReason {
    /// The kernel killed the container's process for exceeding its memory limit.
    OomKilled,
    /// The container's process ended (by itself or killed from outside); see `exit_code`.
    Exited,
    /// Running, but its HTTP probe or `HEALTHCHECK` fails.
    ProbeFailed,
    /// The serving container is gone.
    Removed,
}

impl fmt::Display for HealthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_name(self))
    }
}

/// One order as the journal remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    pub order_id: String,
    pub rollout_id: String,
    pub action: Action,
    /// The allowed_signers principal that signed, and the key fingerprint.
    pub signer: String,
    pub issued_by: String,
    pub accepted_at: Timestamp,
    #[serde(rename = "ref")]
    pub reference: String,
    pub image: ImageRef,
    /// Services on an image other than `image` (a release of several images).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, ImageRef>,
    /// Services on a ref other than `ref` (`--set`), as in the order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refs: BTreeMap<String, String>,
    pub app: String,
    pub services: Vec<String>,
    /// None while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub run_migration: bool,
    /// An exec: its command's exit code, when it ran to its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The approved proposal the order carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    /// The `--override-freeze` reason, when the order ran inside a freeze window by approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_freeze: Option<String>,
}

impl HistoryEntry {
    /// The image `service` ran in this order.
    pub fn image_of(&self, service: &str) -> &ImageRef {
        self.images.get(service).unwrap_or(&self.image)
    }

    /// The ref `service`'s image was resolved from.
    pub fn reference_of(&self, service: &str) -> &str {
        self.refs.get(service).unwrap_or(&self.reference)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceLogs {
    pub app: String,
    pub service: String,
    pub container: String,
    pub lines: Vec<String>,
}
