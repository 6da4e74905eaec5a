//! The narrow view of a container engine the deploy logic needs, as a trait, so the decisions
//! can be exercised against a fake and the one bollard-backed implementation stays small
//! ([`crate::docker`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use proto::ImageRef;

/// A boxed future, so [`Runtime`] stays object-safe (`Arc<dyn Runtime>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed stream, for the same reason.
pub type BoxStream<'a, T> = Pin<Box<dyn futures_util::Stream<Item = T> + Send + 'a>>;

pub type RtResult<T> = Result<T, RuntimeError>;

/// An engine call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("no such object: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("cannot reach the Docker engine: {0}")]
    Unreachable(String),
    #[error("Docker engine error: {0}")]
    Api(String),
}

/// Why an image could not be pulled, already sorted into the classes an operator acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("image not found in the registry: {0}")]
    NotFound(String),
    #[error("the registry refused our credentials: {0}")]
    Unauthorized(String),
    #[error("the registry is unreachable: {0}")]
    Unreachable(String),
    #[error("the Docker engine failed the pull: {0}")]
    Engine(String),
}

/// Registry credentials for one pull, as the host's Docker client config gives them.
pub use registry_auth::Found as Credentials;

/// Coarse container state, enough to judge health and recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
    Other,
}

/// The image's own HEALTHCHECK verdict, when the container has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    Starting,
    Healthy,
    Unhealthy,
}

/// What the engine says about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// The image as the container was created with it (`repo@sha256:…` for ours).
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub state: RunState,
    pub exit_code: Option<i64>,
    pub restart_count: i64,
    /// `None` when the container has no HEALTHCHECK.
    pub check: Option<CheckStatus>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// Network name → the container's IPv4 address on it.
    pub networks: BTreeMap<String, String>,
    pub oom_killed: bool,
    /// The engine's own error for the container (e.g. a failed start).
    pub error: Option<String>,
}

impl ContainerInfo {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    pub fn is_running(&self) -> bool {
        self.state == RunState::Running
    }

    pub fn short_id(&self) -> &str {
        crate::plan::short_id(&self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub repo_digests: Vec<String>,
}

pub use proto::spec::PortMapping;

/// Bytes a container wrote to one of its streams, as the engine relays them (not lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub bytes: Vec<u8>,
}

pub use proto::wire::OutputStream;

/// Everything needed to create one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
    /// `volume:/path[:ro]` or `/host/path:/path[:ro]`.
    pub binds: Vec<String>,
    /// The user network to join and the aliases to answer to there.
    pub network: Option<(String, Vec<String>)>,
    /// Services restart with the host; one-off containers do not.
    pub restart_unless_stopped: bool,
}

/// What the engine says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFacts {
    pub version: String,
    pub api_version: String,
    /// Where it keeps images, containers and volumes.
    pub root_dir: String,
}

/// What happened to a container, of what the engine's event stream says: only the kinds the
/// agent's health model reads (exec and health-check runs are left out; they come every
/// second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Start,
    /// `docker restart` (a restart policy's restart is a `die` then a `start`).
    Restart,
    /// The main process ended; the event carries its exit code.
    Die,
    /// The kernel killed a process of the container for exceeding its memory limit (comes
    /// before the `die` when it was the main process).
    Oom,
    /// The image's `HEALTHCHECK` verdict changed.
    HealthStatus,
    Stop,
    Destroy,
}

impl ContainerEventKind {
    /// The engine's `event` filter values for these kinds (`health_status` matches its
    /// `health_status: healthy` and `: unhealthy` forms).
    pub const ACTIONS: [&'static str; 7] = [
        "start",
        "restart",
        "die",
        "oom",
        "health_status",
        "stop",
        "destroy",
    ];

    /// The kind of an event's `Action`, or None for one the health model does not read.
    pub fn from_action(action: &str) -> Option<ContainerEventKind> {
        Some(match action {
            "start" => ContainerEventKind::Start,
            "restart" => ContainerEventKind::Restart,
            "die" => ContainerEventKind::Die,
            "oom" => ContainerEventKind::Oom,
            "stop" => ContainerEventKind::Stop,
            "destroy" => ContainerEventKind::Destroy,
            a if a == "health_status" || a.starts_with("health_status:") => {
                ContainerEventKind::HealthStatus
            }
            _ => return None,
        })
    }
}

/// One event of the engine's stream about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    /// The container's labels (the engine sends them with every event).
    pub labels: BTreeMap<String, String>,
    pub kind: ContainerEventKind,
    /// For [`ContainerEventKind::Die`].
    pub exit_code: Option<i64>,
}

/// The engine operations the deploy logic uses. Every container-level call takes an id or a name.
pub trait Runtime: Send + Sync {
    fn ping(&self) -> BoxFuture<'_, RtResult<()>>;
    /// Version and data root, for the host's health.
    fn engine_facts(&self) -> BoxFuture<'_, RtResult<EngineFacts>> {
        Box::pin(async {
            Err(RuntimeError::Api(
                "this runtime does not describe itself".into(),
            ))
        })
    }
    /// `Ok(None)` when no such container exists.
    fn inspect_container<'a>(
        &'a self,
        name_or_id: &'a str,
    ) -> BoxFuture<'a, RtResult<Option<ContainerInfo>>>;
    /// Every container (any state) carrying all of `labels` (`key=value`).
    fn list_containers<'a>(
        &'a self,
        labels: &'a [(String, String)],
    ) -> BoxFuture<'a, RtResult<Vec<ContainerInfo>>>;
    /// Returns the new container's id.
    fn create_container<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, RtResult<String>>;
    fn start_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>>;
    /// SIGTERM, then SIGKILL after `timeout`. Stopping a stopped container is not an error.
    fn stop_container<'a>(&'a self, id: &'a str, timeout: Duration) -> BoxFuture<'a, RtResult<()>>;
    fn kill_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>>;
    fn rename_container<'a>(
        &'a self,
        id: &'a str,
        new_name: &'a str,
    ) -> BoxFuture<'a, RtResult<()>>;
    /// Removing a container that no longer exists is not an error.
    fn remove_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>>;
    /// The last `lines` lines of stdout and stderr, interleaved as the engine stored them.
    fn logs_tail<'a>(&'a self, id: &'a str, lines: usize) -> BoxFuture<'a, RtResult<Vec<String>>>;
    /// Everything the container writes from its start on, as it comes; the stream ends when
    /// the container stops.
    fn follow_output<'a>(&'a self, id: &'a str) -> BoxStream<'a, RtResult<OutputChunk>>;
    /// `Ok(None)` when the image is not present.
    fn inspect_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, RtResult<Option<ImageInfo>>>;
    fn pull_image<'a>(
        &'a self,
        image: &'a ImageRef,
        creds: Option<Credentials>,
    ) -> BoxFuture<'a, Result<(), PullError>>;
    /// Creates the user network unless it exists.
    fn ensure_network<'a>(&'a self, name: &'a str) -> BoxFuture<'a, RtResult<()>>;
    fn connect_network<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
        aliases: &'a [String],
    ) -> BoxFuture<'a, RtResult<()>>;
    fn disconnect_network<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
    ) -> BoxFuture<'a, RtResult<()>>;
    /// The engine's events about containers carrying all of `labels`, from now on, as they
    /// happen. The stream ends, or yields an error, when the connection to the engine does
    /// (an engine restart); it never replays. The default never yields (a runtime without events).
    fn container_events(
        &self,
        _labels: &[(String, String)],
    ) -> BoxStream<'static, RtResult<ContainerEvent>> {
        Box::pin(futures_util::stream::pending())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_actions_map_to_the_kinds_the_health_model_reads() {
        let cases = [
            ("start", Some(ContainerEventKind::Start)),
            ("restart", Some(ContainerEventKind::Restart)),
            ("die", Some(ContainerEventKind::Die)),
            ("oom", Some(ContainerEventKind::Oom)),
            ("stop", Some(ContainerEventKind::Stop)),
            ("destroy", Some(ContainerEventKind::Destroy)),
            (
                "health_status: healthy",
                Some(ContainerEventKind::HealthStatus),
            ),
            (
                "health_status: unhealthy",
                Some(ContainerEventKind::HealthStatus),
            ),
            ("health_status", Some(ContainerEventKind::HealthStatus)),
            ("exec_start: /app healthcheck", None),
            ("exec_die", None),
            ("kill", None),
            ("create", None),
            ("", None),
        ];
        for (action, kind) in cases {
            assert_eq!(ContainerEventKind::from_action(action), kind, "{action:?}");
        }
        for action in ContainerEventKind::ACTIONS {
            assert!(
                ContainerEventKind::from_action(action).is_some(),
                "{action}"
            );
        }
    }
}
