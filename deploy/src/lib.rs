//! `deploy` owns the job of one order on one host against the Docker engine: pull by digest,
//! run the migration once in the new image, switch each service health-gated, roll back on
//! failure, retain old versions, and undo a job interrupted by a crash.
//!
//! It knows nothing of signing, sockets or journals: the agent hands it an already
//! verified [`proto::Order`] and an [`EventSink`] that records every step.
//!
//! An exec order (`deployctl exec`) is no deploy: `exec` runs its one-off command in the
//! service's running image and changes no service.
//!
//! Layout: decisions are pure functions — [`switch`] plans a service's switch and its undo from
//! what is observed, [`plan`] holds the smaller ones (health verdict, retention, names, error
//! classes). `container` is the one executor of those plans for container services and
//! `compose_service` the compose driver, both behind `driver::ServiceDriver`; `job` sequences
//! an order over drivers through an `OrderCtx`. [`runtime`] is the narrow engine interface and
//! [`docker`] its only implementation (bollard); [`compose`] drives the compose CLI; [`durable`] is the
//! workspace's one atomic, durable file write.
//!
//! What the engine reads from Docker is the whole truth it acts on: a service's serving
//! container is named `<prefix><app>-<env>-<service>`; the version an order displaced is kept,
//! stopped, as `<that name>--<short digest>-<order id>`; a start-first candidate is
//! `<that name>--next`. Every container it creates carries the `deployctl.*` labels, and it
//! only touches containers labelled with its own host and env.
#![forbid(unsafe_code)]

mod caddy;
pub mod compose;
mod compose_service;
mod container;
mod context;
pub mod docker;
mod driver;
pub mod durable;
pub mod events;
mod exec;
mod execute;
#[cfg(test)]
mod fake;
mod health;
mod job;
mod maintenance;
pub mod plan;
mod proxy;
pub mod route;
pub mod runtime;
pub mod switch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::order::{ServiceKind, labels};
use proto::time::Timestamp;
use proto::wire::{Health, Outcome, OutputStream, Phase, ServiceLogs};
use proto::{Action, ImageRef, Order, ServiceSpec};
use tokio::sync::OnceCell;

use crate::compose::ComposeCli;
pub use crate::runtime::EngineFacts;
use crate::runtime::{Runtime, RuntimeError};

/// Who this engine acts as: only containers labelled with this host and env are its business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub host: String,
    pub env: String,
    /// Prepended to container names when several agents share one engine.
    pub container_prefix: String,
}

/// Receives every step of a job, before the step is taken.
pub trait EventSink: Send + Sync {
    fn emit(&self, phase: Phase, service: Option<&str>, message: &str);
    /// A line an exec's command wrote, as it comes. Only exec jobs have output, and it is no
    /// step: sinks that journal steps need not keep it (the default drops it).
    fn output(&self, _stream: OutputStream, _line: &str) {}
}

/// What runs now for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSnapshot {
    pub container_id: Option<String>,
    pub image: Option<ImageRef>,
    /// The `ref` the running version was deployed as.
    pub reference: Option<String>,
    /// The order that created the running container.
    pub order_id: Option<String>,
    pub health: Health,
    /// How many times the engine restarted it.
    pub restarts: u64,
    /// When its container last started, as the engine says.
    pub up_since: Option<Timestamp>,
    /// The engine says its last end was an OOM kill (until it starts again).
    pub oom_killed: bool,
    /// Its last exit code, when it is not running.
    pub exit_code: Option<i64>,
    /// How long the HTTP probe took to answer, when there was one.
    pub probe_ms: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine: {0}")]
    Unreachable(String),
    #[error("Docker engine error: {0}")]
    Docker(String),
    #[error("service {service} has no container on this host")]
    NoContainer { service: String },
    #[error("compose: {0}")]
    Compose(String),
}

impl From<RuntimeError> for EngineError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Unreachable(m) => EngineError::Unreachable(m),
            other => EngineError::Docker(other.to_string()),
        }
    }
}

/// Default stop timeout: short, because PID 1 of a scratch image may ignore SIGTERM.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs orders against one container engine. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Engine {
    rt: Arc<dyn Runtime>,
    identity: Identity,
    http: reqwest::Client,
    stop_timeout: Duration,
    state_dir: PathBuf,
    registry_auth: registry_auth::DockerConfig,
    compose: Arc<OnceCell<Result<ComposeCli, String>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("identity", &self.identity)
            .field("stop_timeout", &self.stop_timeout)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl Engine {
    /// Connects to the local Docker engine (`DOCKER_HOST` or the default socket) and
    /// negotiates the API version (engines here may speak only 1.41).
    pub async fn connect(identity: Identity) -> Result<Engine, EngineError> {
        let rt = docker::DockerRuntime::connect().await?;
        rt.ping().await?;
        Ok(Engine::with_runtime(Arc::new(rt), identity))
    }

    /// An engine over any [`Runtime`] (tests inject fakes here).
    pub fn with_runtime(rt: Arc<dyn Runtime>, identity: Identity) -> Engine {
        let state_dir =
            std::env::temp_dir().join(format!("deploy-engine-{}-{}", identity.host, identity.env));
        Engine {
            rt,
            identity,
            // The redirect policy is off so a probe measures the service, not where it points.
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .build()
                .unwrap_or_default(),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            state_dir,
            registry_auth: registry_auth::DockerConfig::from_env(),
            compose: Arc::new(OnceCell::new()),
        }
    }

    /// Where the engine keeps files that must outlive a restart (compose override files).
    /// The agent passes a directory under its own `state_dir`; the default is a temp dir.
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Engine {
        self.state_dir = dir.into();
        self
    }

    /// How long `docker stop` waits before SIGKILL (default [`DEFAULT_STOP_TIMEOUT`]).
    pub fn with_stop_timeout(mut self, timeout: Duration) -> Engine {
        self.stop_timeout = timeout;
        self
    }

    /// The Docker client config whose `auths`, `credsStore` and `credHelpers` give the
    /// registry credentials of pulls (default: the Docker CLI's own,
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
    pub fn with_docker_config(mut self, path: impl Into<PathBuf>) -> Engine {
        self.registry_auth = registry_auth::DockerConfig::at(path);
        self
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The engine's version and data root, or why it does not answer.
    pub async fn engine_facts(&self) -> Result<EngineFacts, EngineError> {
        Ok(self.rt.engine_facts().await?)
    }

    /// Runs the order to an outcome; never panics; every step goes to `sink` before it is taken.
    /// An exec order runs its one-off command, its output going to `sink` as it comes.
    pub async fn execute(&self, order: &Order, sink: &dyn EventSink) -> Outcome {
        match order.action {
            Action::Exec => exec::run(self, order, sink).await,
            Action::Maintenance => maintenance::run(self, order, sink).await,
            Action::Deploy | Action::Rollback => job::Job::new(self, order, sink).execute().await,
        }
    }

    /// After a crash: brings every service of `order` back to one healthy version (the new one
    /// only if every service already runs it healthy, else the previous one), judging from
    /// what the engine shows.
    pub async fn recover(&self, order: &Order, sink: &dyn EventSink) -> Outcome {
        match order.action {
            Action::Exec => exec::recover(self, order, sink).await,
            // Setting a route is idempotent: an interrupted maintenance order is simply run again.
            Action::Maintenance => maintenance::run(self, order, sink).await,
            Action::Deploy | Action::Rollback => job::Job::new(self, order, sink).recover().await,
        }
    }

    /// Every Caddy admin API the order's services name answers; else why not. Checked before an
    /// order takes its services, so an unreachable proxy changes nothing.
    pub async fn check_proxies(&self, order: &Order) -> Result<(), String> {
        // An exec runs beside the service and never touches its route.
        if order.action == Action::Exec {
            return Ok(());
        }
        let mut checked: Vec<&str> = Vec::new();
        for (name, spec) in &order.services {
            let Some(px) = proxy::Proxied::new(&self.http, &order.app, &order.env, name, spec)
            else {
                continue;
            };
            if checked.contains(&px.admin()) {
                continue;
            }
            px.check_reachable()
                .await
                .map_err(|e| format!("service {name}: {e}"))?;
            checked.push(spec.proxy.as_ref().map_or("", |p| p.caddy.as_str()));
        }
        Ok(())
    }

    /// The maintenance page's text when a proxied service's route shows it.
    pub async fn maintenance_of(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
    ) -> Option<String> {
        let px = proxy::Proxied::new(&self.http, app, &self.identity.env, service, spec)?;
        // Status waits for this: a Caddy that hangs must not hold it up.
        match tokio::time::timeout(caddy::REACH_TIMEOUT, px.handling()).await {
            Ok(Ok(Some(route::Handling::Maintenance { message, .. }))) => Some(message),
            _ => None,
        }
    }

    /// What runs now for one service, with a fresh health probe.
    pub async fn inspect_service(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
    ) -> ServiceSnapshot {
        let found = match spec.kind {
            ServiceKind::Container => self.find_container(app, service).await,
            ServiceKind::Compose => self.find_compose_container(app, service, spec).await,
        };
        let unknown = ServiceSnapshot {
            container_id: None,
            image: None,
            reference: None,
            order_id: None,
            health: Health::Unknown,
            restarts: 0,
            up_since: None,
            oom_killed: false,
            exit_code: None,
            probe_ms: None,
        };
        let c = match found {
            Ok(Some(c)) => c,
            Ok(None) => {
                return ServiceSnapshot {
                    health: Health::Missing,
                    ..unknown
                };
            }
            Err(_) => return unknown,
        };
        let (health, probe_took) = health::probe_once(self, &c, spec).await;
        ServiceSnapshot {
            container_id: Some(c.id.clone()),
            image: c.image.parse().ok().or_else(|| {
                let digest = c.label(labels::DIGEST)?;
                let repo = c.image.split(['@', ':']).next()?;
                ImageRef::new(repo, digest).ok()
            }),
            reference: c.label(labels::REF).map(str::to_owned),
            order_id: c.label(labels::ORDER).map(str::to_owned),
            health,
            restarts: u64::try_from(c.restart_count).unwrap_or(0),
            up_since: c
                .started_at
                .as_deref()
                .and_then(|t| Timestamp::parse(t).ok())
                .filter(|_| c.is_running()),
            oom_killed: c.oom_killed,
            exit_code: c.exit_code.filter(|_| !c.is_running()),
            probe_ms: probe_took.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The last `lines` lines of a service's container log.
    pub async fn logs(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
        lines: usize,
    ) -> Result<ServiceLogs, EngineError> {
        let found = match spec.kind {
            ServiceKind::Container => self.find_container(app, service).await?,
            ServiceKind::Compose => self.find_compose_container(app, service, spec).await?,
        };
        let c = found.ok_or_else(|| EngineError::NoContainer {
            service: service.to_string(),
        })?;
        let lines = self.rt.logs_tail(&c.id, lines).await?;
        Ok(ServiceLogs {
            app: app.to_string(),
            service: service.to_string(),
            container: c.name,
            lines,
        })
    }

    fn canonical(&self, app: &str, service: &str) -> String {
        proto::order::container_name(
            &self.identity.container_prefix,
            app,
            &self.identity.env,
            service,
        )
    }

    /// True when the container carries this engine's host and env labels.
    fn is_ours(&self, c: &runtime::ContainerInfo) -> bool {
        c.label(labels::HOST) == Some(self.identity.host.as_str())
            && c.label(labels::ENV) == Some(self.identity.env.as_str())
    }

    async fn find_container(
        &self,
        app: &str,
        service: &str,
    ) -> Result<Option<runtime::ContainerInfo>, EngineError> {
        let c = self
            .rt
            .inspect_container(&self.canonical(app, service))
            .await?;
        Ok(c.filter(|c| self.is_ours(c)))
    }

    async fn find_compose_container(
        &self,
        app: &str,
        service: &str,
        spec: &ServiceSpec,
    ) -> Result<Option<runtime::ContainerInfo>, EngineError> {
        let cli = self.compose_cli().await.map_err(EngineError::Compose)?;
        let target = compose_service::ComposeTarget::new(self, app, service, spec)
            .map_err(EngineError::Compose)?;
        target.current(self, &cli).await
    }

    /// Registry credentials for `registry` from the host's Docker client config; None when it
    /// has none (anonymous). On a blocking thread: a credential helper may run.
    async fn registry_credentials(
        &self,
        registry: &str,
    ) -> Result<Option<runtime::Credentials>, String> {
        let auth = self.registry_auth.clone();
        let registry = registry.to_string();
        tokio::task::spawn_blocking(move || auth.credentials(&registry))
            .await
            .map_err(|e| format!("the credential lookup did not finish: {e}"))?
            .map_err(|e| e.to_string())
    }

    async fn compose_cli(&self) -> Result<ComposeCli, String> {
        self.compose
            .get_or_init(|| async { ComposeCli::detect().await.map_err(|e| e.to_string()) })
            .await
            .clone()
    }
}
