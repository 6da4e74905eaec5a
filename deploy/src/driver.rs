//! `ServiceDriver`: one service through one order, whatever runs it — a container the engine
//! manages (`container.rs`) or a service of a compose project (`compose_service.rs`). The job
//! (`job.rs`) sequences drivers and never asks which kind it holds.

use std::time::{Duration, Instant};

use proto::order::{ServiceKind, labels};
use proto::wire::{FailureClass, Phase};
use proto::{Order, ServiceSpec};

use crate::Engine;
use crate::compose_service::ComposeService;
use crate::container::ContainerService;
use crate::context::OrderCtx;
use crate::health::{HealthEnd, wait_healthy};
use crate::plan;
use crate::runtime::{BoxFuture, ContainerInfo, PortMapping};

/// A failed step of a switch or a migration.
#[derive(Debug)]
pub(crate) struct Failure {
    pub class: FailureClass,
    pub service: String,
    /// What happened, for the outcome's reason.
    pub what: String,
    pub log_tail: Vec<String>,
    /// When the failed version was started (for `rollback_ms`).
    pub new_started: Option<Instant>,
}

impl Failure {
    pub fn engine(service: &str, e: impl std::fmt::Display) -> Failure {
        Failure {
            class: FailureClass::Engine,
            service: service.to_string(),
            what: format!("the Docker engine failed: {e}"),
            log_tail: Vec::new(),
            new_started: None,
        }
    }

    pub fn start(service: &str, what: String, log_tail: Vec<String>) -> Failure {
        Failure {
            class: FailureClass::StartFailed,
            service: service.to_string(),
            what,
            log_tail,
            new_started: None,
        }
    }
}

/// How an undo ended for one service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Undone {
    /// The order had changed this service (so something was put back).
    pub order_changed_it: bool,
    /// A previous version is serving again (false: the service had none before the order).
    pub previous_serving: bool,
    /// The digest serving again, when known.
    pub digest: Option<String>,
    /// The previous version was never taken out of service (a start-first candidate failed).
    pub kept_serving: bool,
    /// The previous version was already failing before the order; it is back as it was.
    pub previous_failing: bool,
}

/// The parts of a service every driver needs, checked and read on this host.
pub(crate) struct ServiceParts<'a> {
    pub name: &'a str,
    pub spec: &'a ServiceSpec,
    /// `<prefix><app>-<env>-<service>`.
    pub canonical: String,
    pub ports: Vec<PortMapping>,
    /// From `env_file`, read on this host.
    pub env: Vec<String>,
}

/// One service through one order. Every step is recorded through the context before it is taken.
pub(crate) trait ServiceDriver: Send + Sync {
    fn parts(&self) -> &ServiceParts<'_>;
    /// The container serving the service now, if any.
    fn current<'a>(
        &'a self,
        cx: &'a OrderCtx<'a>,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, String>>;
    /// Takes the service to the order's version, health-gated. `Ok(false)`: it already ran it,
    /// healthy, and nothing changed.
    fn switch<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<bool, Failure>>;
    /// Puts the service back as it was before the order, from what the engine shows.
    fn undo<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<Undone, String>>;
    /// After a restart: whether the service already runs the order's digest, nothing half-done.
    fn is_settled<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<bool, String>>;
    /// Whether the order left its mark on the service (recovery's `changed`).
    fn order_touched<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, bool>;
    /// After success: prune retained versions.
    fn retain<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<(), String>>;
    /// Runs the order's migration once, in the new image, with this service's env and volumes.
    /// Returns the migration's last log lines.
    fn migrate<'a>(
        &'a self,
        cx: &'a OrderCtx<'a>,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, Failure>>;
}

/// A service of the order with its driver.
pub(crate) struct Prepared<'a> {
    pub name: &'a str,
    pub driver: Box<dyn ServiceDriver + 'a>,
}

/// Checks every service of the order and reads its host-side inputs. With `lenient`, an
/// unreadable env file is not an error (undoing never creates a container, so it needs none).
pub(crate) fn prepare<'a>(
    e: &Engine,
    order: &'a Order,
    lenient: bool,
) -> Result<Vec<Prepared<'a>>, String> {
    if order.services.is_empty() {
        return Err("the order names no service".into());
    }
    if let Some(m) = &order.migrate
        && !order.services.contains_key(&m.service)
    {
        return Err(format!(
            "the migration borrows service {:?}, which the order does not name",
            m.service
        ));
    }
    order
        .services
        .iter()
        .map(|(name, spec)| {
            let parts = parts(e, &order.app, name, spec, lenient)?;
            let driver: Box<dyn ServiceDriver + 'a> = match spec.kind {
                ServiceKind::Container => Box::new(ContainerService { parts }),
                ServiceKind::Compose => Box::new(ComposeService::new(e, &order.app, parts)?),
            };
            Ok(Prepared { name, driver })
        })
        .collect()
}

/// One service's parts, checked and read on this host (with `lenient`, an unreadable env file
/// gives no env instead of an error).
pub(crate) fn parts<'a>(
    e: &Engine,
    app: &str,
    name: &'a str,
    spec: &'a ServiceSpec,
    lenient: bool,
) -> Result<ServiceParts<'a>, String> {
    let ports = spec
        .ports
        .iter()
        .map(|p| plan::parse_port(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("service {name}: {e}"))?;
    for v in &spec.volumes {
        proto::spec::parse_volume(v).map_err(|e| format!("service {name}: {e}"))?;
    }
    let env = match &spec.env_file {
        None => Vec::new(),
        Some(path) => match read_env_file(path) {
            Ok(env) => env,
            Err(_) if lenient => Vec::new(),
            Err(why) => return Err(format!("service {name}: {why}")),
        },
    };
    Ok(ServiceParts {
        name,
        spec,
        canonical: e.canonical(app, name),
        ports,
        env,
    })
}

fn read_env_file(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("env_file {path}: cannot read it: {e}"))?;
    plan::parse_env_file(&text).map_err(|e| format!("env_file {path}: {e}"))
}

pub(crate) fn digest_of(c: &ContainerInfo) -> Option<&str> {
    c.label(labels::DIGEST)
}

/// The short digest of a container's version, for messages.
pub(crate) fn short(c: &ContainerInfo) -> &str {
    digest_of(c).map(plan::short_label).unwrap_or("unknown")
}

/// The digest a container runs: our label, else the image's repo digest for the order's repository.
pub(crate) async fn running_digest(cx: &OrderCtx<'_>, c: &ContainerInfo) -> Option<String> {
    if let Some(d) = digest_of(c) {
        return Some(d.to_string());
    }
    let image = cx.e.rt.inspect_image(&c.image).await.ok().flatten()?;
    let service = c.labels.get(proto::order::labels::SERVICE);
    let repo = service
        .map_or(&cx.order.image, |s| cx.order.image_of(s))
        .repository();
    image.repo_digests.iter().find_map(|rd| {
        rd.split_once('@')
            .filter(|(r, _)| *r == repo)
            .map(|(_, d)| d.to_string())
    })
}

/// Waits for the serving container to be healthy (recovery's confirmation).
pub(crate) async fn confirm_healthy(
    cx: &OrderCtx<'_>,
    driver: &dyn ServiceDriver,
) -> Result<(), String> {
    let p = driver.parts();
    let c = driver
        .current(cx)
        .await?
        .ok_or_else(|| format!("{} has no container", p.name))?;
    cx.emit(
        Phase::Health,
        Some(p.name),
        &format!("checking that {} ({}) is healthy", c.name, short(&c)),
    );
    match wait_healthy(cx.e, &c.id, p.spec, &p.ports, Instant::now()).await {
        HealthEnd::Healthy { .. } => Ok(()),
        end => Err(format!("{} is not healthy: {}", c.name, end.describe())),
    }
}
