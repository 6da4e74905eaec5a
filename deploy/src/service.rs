//! One service through one order: switch it to the new version health-gated, undo that, keep
//! its retained versions in check. Container services are driven through [`Runtime`] calls,
//! compose services through the compose CLI; both are judged by the same health wait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::order::{HealthSpec, ServiceKind, Strategy, labels};
use proto::wire::{FailureClass, Health, Phase};
use proto::{Action, ServiceSpec};
use serde::{Deserialize, Serialize};

use crate::compose::{self, ComposeCli, OverridePaths};
use crate::job::Job;
use crate::plan::{self, LOG_TAIL_LINES, NameRole, Observation, ProbeMode, Verdict};
use crate::runtime::{ContainerInfo, ContainerSpec, PortMapping, RuntimeError};
use crate::{Engine, EngineError};

/// Label marking a one-off migration container (never a service's serving container).
pub const ROLE_LABEL: &str = "deployctl.role";
pub const ROLE_MIGRATION: &str = "migration";

/// A service of the order with its spec checked and its host-side inputs read.
pub(crate) struct Prepared<'a> {
    pub name: &'a str,
    pub spec: &'a ServiceSpec,
    pub canonical: String,
    pub ports: Vec<PortMapping>,
    /// From `env_file`, read on this host.
    pub env: Vec<String>,
    pub compose: Option<ComposeTarget>,
}

impl<'a> Prepared<'a> {
    /// Checks the spec and reads the env file. With `lenient`, an unreadable env file is not an
    /// error (undoing never creates a container, so it does not need it).
    pub fn new(
        e: &Engine,
        app: &str,
        name: &'a str,
        spec: &'a ServiceSpec,
        lenient: bool,
    ) -> Result<Self, String> {
        let ports = spec
            .ports
            .iter()
            .map(|p| plan::parse_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("service {name}: {e}"))?;
        for v in &spec.volumes {
            plan::check_volume(v).map_err(|e| format!("service {name}: {e}"))?;
        }
        let env = match &spec.env_file {
            None => Vec::new(),
            Some(path) => match read_env_file(path) {
                Ok(env) => env,
                Err(_) if lenient => Vec::new(),
                Err(why) => return Err(format!("service {name}: {why}")),
            },
        };
        let compose = match spec.kind {
            ServiceKind::Container => None,
            ServiceKind::Compose => Some(ComposeTarget::new(e, app, name, spec)?),
        };
        Ok(Prepared {
            name,
            spec,
            canonical: e.canonical(app, name),
            ports,
            env,
            compose,
        })
    }
}

fn read_env_file(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("env_file {path}: cannot read it: {e}"))?;
    plan::parse_env_file(&text).map_err(|e| format!("env_file {path}: {e}"))
}

/// A compose service on this host and the override files that pin its image.
pub(crate) struct ComposeTarget {
    pub file: PathBuf,
    pub service: String,
    pub paths: OverridePaths,
}

/// What a compose switch displaced, so undo (possibly after a restart) can put it back.
#[derive(Debug, Serialize, Deserialize)]
struct ComposeMarker {
    order: String,
    had_override: bool,
    had_container: bool,
}

impl ComposeTarget {
    pub fn new(e: &Engine, app: &str, service: &str, spec: &ServiceSpec) -> Result<Self, String> {
        let file = spec
            .compose_file
            .as_ref()
            .ok_or_else(|| format!("service {service}: kind = \"compose\" needs compose_file"))?;
        let file = PathBuf::from(file);
        if !file.is_file() {
            return Err(format!(
                "service {service}: compose_file {} does not exist on this host",
                file.display()
            ));
        }
        let compose_service = spec
            .compose_service
            .clone()
            .unwrap_or_else(|| service.to_string());
        Ok(ComposeTarget {
            file,
            service: compose_service,
            paths: OverridePaths::new(&e.state_dir, &e.canonical(app, service)),
        })
    }

    /// The user's compose file, then our override when one is in force.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.file.as_path()];
        if self.paths.current.is_file() {
            files.push(self.paths.current.as_path());
        }
        files
    }

    /// The service's container (a running one if there are several).
    pub async fn current(
        &self,
        e: &Engine,
        cli: &ComposeCli,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        let ids = cli
            .container_ids(&self.files(), &self.service)
            .await
            .map_err(|e| EngineError::Compose(e.to_string()))?;
        let mut found = Vec::new();
        for id in ids {
            if let Some(c) = e.rt.inspect_container(&id).await? {
                found.push(c);
            }
        }
        found.sort_by_key(|c| !c.is_running());
        Ok(found.into_iter().next())
    }

    fn marker(&self) -> Option<ComposeMarker> {
        let text = std::fs::read_to_string(&self.paths.previous_order).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// A failed step of a switch.
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
    fn engine(svc: &Prepared<'_>, e: impl std::fmt::Display) -> Failure {
        Failure {
            class: FailureClass::Engine,
            service: svc.name.to_string(),
            what: format!("the Docker engine failed: {e}"),
            log_tail: Vec::new(),
            new_started: None,
        }
    }

    fn start(svc: &Prepared<'_>, what: String, log_tail: Vec<String>) -> Failure {
        Failure {
            class: FailureClass::StartFailed,
            service: svc.name.to_string(),
            what,
            log_tail,
            new_started: None,
        }
    }
}

/// How an undo ended for one service.
#[derive(Debug, Clone)]
pub(crate) struct Undone {
    /// The order had changed this service (so something was put back).
    pub order_changed_it: bool,
    /// A previous version is serving again (false: the service had none before the order).
    pub previous_serving: bool,
    /// The digest serving again, when known.
    pub digest: Option<String>,
    /// The previous version was never stopped (a start-first candidate failed).
    pub kept_serving: bool,
}

// ---------------------------------------------------------------------------------------------
// Health

/// How a health wait ended.
#[derive(Debug)]
pub(crate) enum HealthEnd {
    Healthy {
        after: Duration,
    },
    Exited {
        code: Option<i64>,
        restarted: bool,
        after: Duration,
    },
    Deadline {
        after: Duration,
    },
    Gone,
    Engine(RuntimeError),
}

/// A human description of how health is judged, for the event before the wait.
pub(crate) fn describe_health(
    spec: &ServiceSpec,
    ports: &[PortMapping],
    has_check: bool,
) -> String {
    let h = &spec.health;
    let how = match plan::probe_mode(h, has_check) {
        ProbeMode::Http => format!(
            "GET :{}{} every {}",
            plan::probe_port(h, ports),
            h.path.as_deref().unwrap_or("/"),
            proto::time::format_duration(h.interval)
        ),
        ProbeMode::ImageCheck => "the image's HEALTHCHECK".to_string(),
        ProbeMode::Running => "the container staying up".to_string(),
    };
    format!(
        "{how}; healthy for {}, deadline {}",
        proto::time::format_duration(h.healthy_for),
        proto::time::format_duration(h.deadline)
    )
}

async fn http_ok(e: &Engine, c: &ContainerInfo, spec: &ServiceSpec, ports: &[PortMapping]) -> bool {
    let Some(ip) = plan::probe_ip(&c.networks, spec.network.as_deref()) else {
        return false;
    };
    let port = plan::probe_port(&spec.health, ports);
    let path = spec.health.path.as_deref().unwrap_or("/");
    let sep = if path.starts_with('/') { "" } else { "/" };
    let url = format!("http://{ip}:{port}{sep}{path}");
    let timeout = spec
        .health
        .interval
        .clamp(Duration::from_millis(500), Duration::from_secs(2));
    match e.http.get(&url).timeout(timeout).send().await {
        Ok(r) => r.status().is_success() || r.status().is_redirection(),
        Err(_) => false,
    }
}

fn ports_of(spec: &ServiceSpec) -> Vec<PortMapping> {
    spec.ports
        .iter()
        .filter_map(|p| plan::parse_port(p).ok())
        .collect()
}

/// Health for `status`: one look at the container, one probe.
pub(crate) async fn probe_once(e: &Engine, c: &ContainerInfo, spec: &ServiceSpec) -> Health {
    let ports = ports_of(spec);
    let mode = plan::probe_mode(&spec.health, c.check.is_some());
    let http = if mode == ProbeMode::Http && c.is_running() {
        Some(http_ok(e, c, spec, &ports).await)
    } else {
        None
    };
    plan::snapshot_health(mode, &Observation::of(c, http))
}

/// Watches the container from `started` until it is proven healthy, exits, or misses the deadline.
pub(crate) async fn wait_healthy(
    e: &Engine,
    id: &str,
    spec: &ServiceSpec,
    ports: &[PortMapping],
    started: Instant,
) -> HealthEnd {
    let h: &HealthSpec = &spec.health;
    let interval = h.interval.max(Duration::from_millis(50));
    let mut streak = None;
    loop {
        let c = match e.rt.inspect_container(id).await {
            Ok(Some(c)) => c,
            Ok(None) => return HealthEnd::Gone,
            Err(err) => return HealthEnd::Engine(err),
        };
        let mode = plan::probe_mode(h, c.check.is_some());
        let http = if mode == ProbeMode::Http && c.is_running() {
            Some(http_ok(e, &c, spec, ports).await)
        } else {
            None
        };
        let elapsed = started.elapsed();
        let (verdict, s) = plan::judge(mode, &Observation::of(&c, http), elapsed, streak, h);
        streak = s;
        match verdict {
            Verdict::Wait => tokio::time::sleep(interval).await,
            Verdict::Healthy => return HealthEnd::Healthy { after: elapsed },
            Verdict::Exited => {
                return HealthEnd::Exited {
                    code: c.exit_code,
                    restarted: c.restart_count > 0,
                    after: elapsed,
                };
            }
            Verdict::Deadline => return HealthEnd::Deadline { after: elapsed },
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Turns a health wait that did not end healthy into a failure carrying the container's log tail.
async fn health_failure(
    job: &Job<'_>,
    svc: &Prepared<'_>,
    name: &str,
    id: &str,
    end: HealthEnd,
    started: Instant,
) -> Failure {
    let short = job.order.image.short_digest();
    let (class, what) = match end {
        HealthEnd::Healthy { .. } => (
            FailureClass::Engine,
            format!("{name} ({short}) reported healthy and failed"),
        ),
        HealthEnd::Exited {
            code,
            restarted,
            after,
        } => {
            let how = match (code, restarted) {
                (Some(c), true) if c != 0 => {
                    format!("exited with code {c} (and was restarted by the engine)")
                }
                (_, true) => "exited and was restarted by the engine".to_string(),
                (Some(c), false) => format!("exited with code {c}"),
                (None, false) => "stopped".to_string(),
            };
            (
                FailureClass::ContainerExited,
                format!(
                    "{name} ({short}) {how} {} after start, before it was healthy",
                    secs(after)
                ),
            )
        }
        HealthEnd::Deadline { after } => {
            let c = job.e.rt.inspect_container(id).await.ok().flatten();
            let has_check = c.is_some_and(|c| c.check.is_some());
            (
                FailureClass::HealthDeadline,
                format!(
                    "{name} ({short}) was not healthy by the deadline ({}; judged by {})",
                    secs(after),
                    describe_health(svc.spec, &svc.ports, has_check)
                ),
            )
        }
        HealthEnd::Gone => (
            FailureClass::ContainerExited,
            format!("{name} ({short}) disappeared during the health wait"),
        ),
        HealthEnd::Engine(e) => (
            FailureClass::Engine,
            format!("the Docker engine failed during the health wait: {e}"),
        ),
    };
    let log_tail = job
        .e
        .rt
        .logs_tail(id, LOG_TAIL_LINES)
        .await
        .unwrap_or_default();
    Failure {
        class,
        service: svc.name.to_string(),
        what,
        log_tail,
        new_started: Some(started),
    }
}

// ---------------------------------------------------------------------------------------------
// Container services

/// A container service's containers, by role.
struct Observed {
    canonical: Option<ContainerInfo>,
    next: Vec<ContainerInfo>,
    aside: Vec<(String, ContainerInfo)>,
}

impl Observed {
    fn view(&self, order_id: &str) -> plan::ServiceView {
        plan::ServiceView {
            canonical: self.canonical.as_ref().map(plan::Seen::of),
            next: self.next.iter().map(plan::Seen::of).collect(),
            aside_by_order: self
                .aside
                .iter()
                .find(|(t, _)| t == order_id)
                .map(|(_, c)| plan::Seen::of(c)),
        }
    }

    fn find(&self, id: &str) -> Option<&ContainerInfo> {
        self.canonical
            .iter()
            .chain(self.next.iter())
            .chain(self.aside.iter().map(|(_, c)| c))
            .find(|c| c.id == id)
    }
}

async fn observe(job: &Job<'_>, svc: &Prepared<'_>) -> Result<Observed, RuntimeError> {
    let mut wanted = job.identity_labels();
    wanted.push((labels::SERVICE.to_string(), svc.name.to_string()));
    let all = job.e.rt.list_containers(&wanted).await?;
    let mut o = Observed {
        canonical: None,
        next: Vec::new(),
        aside: Vec::new(),
    };
    for c in all {
        if c.label(ROLE_LABEL).is_some() {
            continue;
        }
        match plan::classify_name(&svc.canonical, &c.name) {
            NameRole::Canonical => o.canonical = Some(c),
            NameRole::Next => o.next.push(c),
            NameRole::Aside { token } => o.aside.push((token, c)),
            NameRole::Other => {}
        }
    }
    Ok(o)
}

fn digest_of(c: &ContainerInfo) -> Option<&str> {
    c.label(labels::DIGEST)
}

fn short(c: &ContainerInfo) -> &str {
    digest_of(c).map(plan::short_label).unwrap_or("unknown")
}

fn container_spec(job: &Job<'_>, svc: &Prepared<'_>, name: &str, alias: bool) -> ContainerSpec {
    ContainerSpec {
        name: name.to_string(),
        image: job.order.image.to_string(),
        cmd: svc.spec.command.clone(),
        env: svc.env.clone(),
        labels: job.container_labels(svc.name),
        ports: svc.ports.clone(),
        binds: svc.spec.volumes.clone(),
        network: svc.spec.network.as_ref().map(|n| {
            (
                n.clone(),
                if alias {
                    vec![svc.name.to_string()]
                } else {
                    Vec::new()
                },
            )
        }),
        restart_unless_stopped: true,
    }
}

/// Joins the service network if the container is not on it (a version set aside by a
/// start-first switch was taken off it), answering as the service only when `alias`.
async fn ensure_on_network(
    job: &Job<'_>,
    svc: &Prepared<'_>,
    c: &ContainerInfo,
    alias: bool,
) -> Result<(), RuntimeError> {
    if let Some(net) = &svc.spec.network
        && !c.networks.contains_key(net)
    {
        let aliases = if alias {
            vec![svc.name.to_string()]
        } else {
            Vec::new()
        };
        job.e.rt.ensure_network(net).await?;
        job.e.rt.connect_network(&c.id, net, &aliases).await?;
    }
    Ok(())
}

/// Switches one service to the order's image. `Ok(false)`: it already ran it, healthy.
pub(crate) async fn switch(job: &Job<'_>, svc: &Prepared<'_>) -> Result<bool, Failure> {
    match &svc.compose {
        Some(t) => switch_compose(job, svc, t).await,
        None => switch_container(job, svc).await,
    }
}

async fn switch_container(job: &Job<'_>, svc: &Prepared<'_>) -> Result<bool, Failure> {
    let e = job.e;
    let rt = &e.rt;
    let digest = job.order.image.digest();
    let fail = |err: RuntimeError| Failure::engine(svc, err);
    let s = Some(svc.name);

    if let Some(c) = rt.inspect_container(&svc.canonical).await.map_err(fail)?
        && !e.is_ours(&c)
    {
        return Err(Failure::start(
            svc,
            format!(
                "a container named {} exists that this agent does not manage (its deployctl.host/env labels are not \
                 {}/{}); rename or remove it",
                svc.canonical, e.identity.host, e.identity.env
            ),
            Vec::new(),
        ));
    }
    let obs = observe(job, svc).await.map_err(fail)?;
    let current = obs.canonical.clone();

    for n in &obs.next {
        job.emit(
            Phase::Cleanup,
            s,
            &format!(
                "removing {} ({}), left over from an earlier attempt",
                n.name,
                short(n)
            ),
        );
        rt.remove_container(&n.id).await.map_err(fail)?;
    }

    if let Some(cur) = &current
        && cur.is_running()
        && digest_of(cur) == Some(digest)
    {
        job.emit(
            Phase::Health,
            s,
            &format!(
                "{} already runs {} ({}); checking that it is healthy",
                svc.canonical,
                short(cur),
                cur.short_id()
            ),
        );
        let started = Instant::now();
        return match wait_healthy(e, &cur.id, svc.spec, &svc.ports, started).await {
            HealthEnd::Healthy { .. } => Ok(false),
            end => Err(health_failure(job, svc, &svc.canonical, &cur.id, end, started).await),
        };
    }

    let wants_start_first = svc.spec.strategy == Strategy::StartFirst;
    let fixed_port = plan::binds_fixed_host_port(&svc.ports);
    let start_first =
        wants_start_first && !fixed_port && current.as_ref().is_some_and(ContainerInfo::is_running);
    if wants_start_first && fixed_port {
        job.emit(
            Phase::Switch,
            s,
            "start-first needs a service without a fixed host port, and this one binds one: switching stop-first",
        );
    }
    let reuse = match job.order.action {
        Action::Rollback => obs
            .aside
            .iter()
            .map(|(_, c)| c)
            .filter(|c| !c.is_running() && digest_of(c) == Some(digest))
            .max_by_key(|c| plan::time_key(c.finished_at.as_deref())),
        Action::Deploy => None,
    };

    let candidate_name = if start_first {
        plan::next_name(&svc.canonical)
    } else {
        svc.canonical.clone()
    };
    if !start_first && let Some(cur) = &current {
        set_aside(job, svc, cur).await.map_err(fail)?;
    }

    let id = match reuse {
        Some(r) => {
            job.emit(
                Phase::Switch,
                s,
                &format!(
                    "bringing back the retained {} ({}) as {candidate_name}",
                    r.name,
                    short(r)
                ),
            );
            rt.rename_container(&r.id, &candidate_name)
                .await
                .map_err(fail)?;
            let mut r = r.clone();
            if start_first
                && let Some(net) = &svc.spec.network
                && r.networks.contains_key(net)
            {
                // A candidate answers to the service name only once proven.
                rt.disconnect_network(&r.id, net).await.map_err(fail)?;
                r.networks.remove(net);
            }
            ensure_on_network(job, svc, &r, !start_first)
                .await
                .map_err(fail)?;
            r.id.clone()
        }
        None => {
            if let Some(net) = &svc.spec.network {
                rt.ensure_network(net).await.map_err(fail)?;
            }
            job.emit(
                Phase::Switch,
                s,
                &format!("creating {candidate_name} from {}", job.order.image),
            );
            // A candidate answers to the service name only once proven (start-first).
            let spec = container_spec(job, svc, &candidate_name, !start_first);
            rt.create_container(&spec).await.map_err(fail)?
        }
    };

    job.emit(Phase::Switch, s, &format!("starting {candidate_name}"));
    if let Err(err) = rt.start_container(&id).await {
        let tail = rt.logs_tail(&id, LOG_TAIL_LINES).await.unwrap_or_default();
        return Err(Failure::start(
            svc,
            format!("{candidate_name} could not start: {err}"),
            tail,
        ));
    }
    let started = Instant::now();
    let has_check = rt
        .inspect_container(&id)
        .await
        .ok()
        .flatten()
        .is_some_and(|c| c.check.is_some());
    job.emit(
        Phase::Health,
        s,
        &format!(
            "waiting for {candidate_name} to be healthy: {}",
            describe_health(svc.spec, &svc.ports, has_check)
        ),
    );
    match wait_healthy(e, &id, svc.spec, &svc.ports, started).await {
        HealthEnd::Healthy { after } => {
            job.emit(
                Phase::Health,
                s,
                &format!("{candidate_name} is healthy ({} after start)", secs(after)),
            );
        }
        end => return Err(health_failure(job, svc, &candidate_name, &id, end, started).await),
    }

    if start_first && let Some(cur) = &current {
        job.emit(
            Phase::Switch,
            s,
            &format!(
                "switching: {candidate_name} takes over as {} and the old {} steps aside",
                svc.canonical,
                short(cur)
            ),
        );
        if let Some(net) = &svc.spec.network {
            // Answer as the service on the new container first, then take the old one off the
            // network, so the name always resolves to a healthy container.
            rt.disconnect_network(&id, net).await.map_err(fail)?;
            rt.connect_network(&id, net, &[svc.name.to_string()])
                .await
                .map_err(fail)?;
            // The name now resolves to both containers. The candidate rejoined the network at a
            // new address: prove it there again while the old one still answers. This is also the
            // drain window in which clients' DNS answers and ARP entries catch up; taking the old
            // one off at once made a client's first request after the switch fail.
            job.emit(
                Phase::Health,
                s,
                &format!(
                    "{candidate_name} answers as {}; re-checking it before the old one leaves",
                    svc.name
                ),
            );
            match wait_healthy(e, &id, svc.spec, &svc.ports, Instant::now()).await {
                HealthEnd::Healthy { .. } => {}
                end => {
                    let _ = rt.disconnect_network(&id, net).await;
                    return Err(health_failure(job, svc, &candidate_name, &id, end, started).await);
                }
            }
            rt.disconnect_network(&cur.id, net).await.map_err(fail)?;
        }
        set_aside(job, svc, cur).await.map_err(fail)?;
        rt.rename_container(&id, &svc.canonical)
            .await
            .map_err(fail)?;
    }
    Ok(true)
}

/// Stops the serving container and renames it aside under this order's id.
async fn set_aside(
    job: &Job<'_>,
    svc: &Prepared<'_>,
    cur: &ContainerInfo,
) -> Result<(), RuntimeError> {
    let aside = plan::aside_name(&svc.canonical, digest_of(cur), &job.order.order_id);
    job.emit(
        Phase::Switch,
        Some(svc.name),
        &format!(
            "stopping {} ({}) and keeping it as {aside}",
            cur.name,
            short(cur)
        ),
    );
    // Rename before stopping: a container under this order's aside name is then the sign that
    // the order had begun stopping it, which recovery needs to know (a stop the engine keeps
    // executing after the agent died would otherwise take the restored version down later).
    job.e.rt.rename_container(&cur.id, &aside).await?;
    if cur.is_running() || cur.state == crate::runtime::RunState::Restarting {
        job.e.rt.stop_container(&cur.id, job.e.stop_timeout).await?;
    }
    Ok(())
}

/// Puts the service back to what it was before the order, from what the engine shows.
pub(crate) async fn undo(job: &Job<'_>, svc: &Prepared<'_>) -> Result<Undone, String> {
    match &svc.compose {
        Some(t) => undo_compose(job, svc, t).await,
        None => undo_container(job, svc).await,
    }
}

/// Why one pass of undo stopped: the engine refused a step (worth looking again: after a crash,
/// a request the dead agent sent may still land, e.g. a container it was creating), or the
/// previous version itself failed.
enum UndoError {
    Engine(String),
    Final(String),
}

async fn undo_container(job: &Job<'_>, svc: &Prepared<'_>) -> Result<Undone, String> {
    // A request the dead agent sent (a create, say) can hold the service's name for a while
    // before the container shows in a listing; there is nothing to wait on but time, so look
    // again at a steady pace for a bounded while.
    const GIVE_UP_AFTER: Duration = Duration::from_secs(20);
    const PAUSE: Duration = Duration::from_millis(500);
    let started = Instant::now();
    let mut told = false;
    loop {
        match undo_container_pass(job, svc).await {
            Ok(done) => return Ok(done),
            Err(UndoError::Engine(why)) if started.elapsed() < GIVE_UP_AFTER => {
                if !told {
                    job.emit(
                        Phase::Rollback,
                        Some(svc.name),
                        &format!(
                            "the engine refused a step ({why}); looking at the containers again for up to {}s",
                            GIVE_UP_AFTER.as_secs()
                        ),
                    );
                    told = true;
                }
                tokio::time::sleep(PAUSE).await;
            }
            Err(UndoError::Engine(why) | UndoError::Final(why)) => return Err(why),
        }
    }
}

/// One pass of undo: observe, plan, carry the plan out.
async fn undo_container_pass(job: &Job<'_>, svc: &Prepared<'_>) -> Result<Undone, UndoError> {
    let rt = &job.e.rt;
    let s = Some(svc.name);
    let engine = |e: RuntimeError| UndoError::Engine(format!("the Docker engine failed: {e}"));
    let obs = observe(job, svc).await.map_err(engine)?;
    let plan = plan::plan_undo(
        &job.order.order_id,
        &svc.canonical,
        &obs.view(&job.order.order_id),
    );
    let mut digest = None;
    let mut kept_serving = false;
    for step in &plan.steps {
        match step {
            plan::UndoStep::Remove { id } => {
                let what = obs
                    .find(id)
                    .map(|c| format!("{} ({})", c.name, short(c)))
                    .unwrap_or_else(|| id.clone());
                job.emit(
                    Phase::Rollback,
                    s,
                    &format!("removing {what}, created by this order"),
                );
                rt.remove_container(id).await.map_err(engine)?;
            }
            plan::UndoStep::SetAside { id, name } => {
                job.emit(
                    Phase::Rollback,
                    s,
                    &format!("returning {id:.12} to the retained versions as {name}"),
                );
                rt.stop_container(id, job.e.stop_timeout)
                    .await
                    .map_err(engine)?;
                rt.rename_container(id, name).await.map_err(engine)?;
            }
            plan::UndoStep::Restore { id } => {
                let Some(c) = rt.inspect_container(id).await.map_err(engine)? else {
                    return Err(UndoError::Engine(format!(
                        "the previous container {id:.12} disappeared"
                    )));
                };
                digest = digest_of(&c).map(str::to_owned);
                kept_serving = c.is_running() && c.name == svc.canonical;
                let mut running = c.is_running();
                if running && c.name != svc.canonical {
                    // Set aside yet running: the order was stopping it when it was cut off, and
                    // that stop may still be finishing in the engine. Finish it, then start
                    // afresh, so the version verified below is not one about to exit.
                    job.emit(
                        Phase::Rollback,
                        s,
                        &format!(
                            "{} ({}) was being stopped when the order was cut off; restarting it cleanly",
                            c.name,
                            short(&c)
                        ),
                    );
                    rt.stop_container(id, job.e.stop_timeout)
                        .await
                        .map_err(engine)?;
                    running = false;
                }
                if c.name != svc.canonical {
                    job.emit(
                        Phase::Rollback,
                        s,
                        &format!(
                            "putting {} ({}) back as {}",
                            c.name,
                            short(&c),
                            svc.canonical
                        ),
                    );
                    rt.rename_container(id, &svc.canonical)
                        .await
                        .map_err(engine)?;
                }
                ensure_on_network(job, svc, &c, true)
                    .await
                    .map_err(engine)?;
                if !running {
                    job.emit(
                        Phase::Rollback,
                        s,
                        &format!("starting {} ({})", svc.canonical, short(&c)),
                    );
                    rt.start_container(id).await.map_err(|e| {
                        UndoError::Final(format!("cannot start the previous version: {e}"))
                    })?;
                }
            }
        }
    }
    if let Some(id) = &plan.verify {
        job.emit(
            Phase::Health,
            s,
            &format!("waiting for {} to be healthy again", svc.canonical),
        );
        match wait_healthy(job.e, id, svc.spec, &svc.ports, Instant::now()).await {
            HealthEnd::Healthy { after } => {
                job.emit(
                    Phase::Health,
                    s,
                    &format!("{} is healthy again ({})", svc.canonical, secs(after)),
                );
            }
            end => {
                let tail = rt.logs_tail(id, 5).await.unwrap_or_default().join(" | ");
                return Err(UndoError::Final(format!(
                    "the previous version did not become healthy ({end:?}); its last log lines: {tail}"
                )));
            }
        }
    }
    Ok(Undone {
        order_changed_it: plan.order_changed_it,
        previous_serving: plan.verify.is_some(),
        digest,
        kept_serving,
    })
}

/// Whether the service already runs the order's digest with nothing half-done (recovery).
pub(crate) async fn is_settled(job: &Job<'_>, svc: &Prepared<'_>) -> Result<bool, String> {
    let digest = job.order.image.digest();
    match &svc.compose {
        Some(t) => {
            let cli = job.e.compose_cli().await?;
            let c = t.current(job.e, &cli).await.map_err(|e| e.to_string())?;
            Ok(c.is_some_and(|c| c.is_running() && digest_of(&c) == Some(digest)))
        }
        None => {
            let obs = observe(job, svc).await.map_err(|e| e.to_string())?;
            Ok(plan::is_settled(digest, &obs.view(&job.order.order_id)))
        }
    }
}

/// Whether this order left its mark on the service (recovery's `changed`).
pub(crate) async fn order_touched(job: &Job<'_>, svc: &Prepared<'_>) -> bool {
    match &svc.compose {
        Some(t) => t.marker().is_some_and(|m| m.order == job.order.order_id),
        None => match observe(job, svc).await {
            Ok(obs) => {
                let v = obs.view(&job.order.order_id);
                v.aside_by_order.is_some()
                    || v.canonical
                        .is_some_and(|c| c.order.as_deref() == Some(job.order.order_id.as_str()))
            }
            Err(_) => true,
        },
    }
}

/// Waits for the serving container to be healthy (recovery's confirmation).
pub(crate) async fn confirm_healthy(job: &Job<'_>, svc: &Prepared<'_>) -> Result<(), String> {
    let c = current_container(job, svc)
        .await?
        .ok_or_else(|| format!("{} has no container", svc.name))?;
    job.emit(
        Phase::Health,
        Some(svc.name),
        &format!("checking that {} ({}) is healthy", c.name, short(&c)),
    );
    match wait_healthy(job.e, &c.id, svc.spec, &svc.ports, Instant::now()).await {
        HealthEnd::Healthy { .. } => Ok(()),
        end => Err(format!("{} is not healthy: {end:?}", c.name)),
    }
}

/// The container serving the service now, if any.
pub(crate) async fn current_container(
    job: &Job<'_>,
    svc: &Prepared<'_>,
) -> Result<Option<ContainerInfo>, String> {
    match &svc.compose {
        Some(t) => {
            let cli = job.e.compose_cli().await?;
            t.current(job.e, &cli).await.map_err(|e| e.to_string())
        }
        None => job
            .e
            .find_container(&job.order.app, svc.name)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// The digest a container runs: our label, else the image's repo digest for the order's repository.
pub(crate) async fn running_digest(job: &Job<'_>, c: &ContainerInfo) -> Option<String> {
    if let Some(d) = digest_of(c) {
        return Some(d.to_string());
    }
    let image = job.e.rt.inspect_image(&c.image).await.ok().flatten()?;
    let repo = job.order.image.repository();
    image.repo_digests.iter().find_map(|rd| {
        rd.split_once('@')
            .filter(|(r, _)| *r == repo)
            .map(|(_, d)| d.to_string())
    })
}

/// After success: keep the last [`plan::RETAINED_VERSIONS`] stopped versions, remove older ones.
pub(crate) async fn retain(job: &Job<'_>, svc: &Prepared<'_>) -> Result<(), String> {
    if svc.compose.is_some() {
        return Ok(());
    }
    let obs = observe(job, svc).await.map_err(|e| e.to_string())?;
    let running = obs.canonical.as_ref().and_then(digest_of);
    let retained: Vec<plan::Retained> = obs
        .aside
        .iter()
        .map(|(_, c)| plan::Retained {
            id: c.id.clone(),
            digest: digest_of(c).map(str::to_owned),
            finished_at: c.finished_at.clone(),
            running: c.is_running(),
        })
        .collect();
    let remove = plan::retention(&retained, running, plan::RETAINED_VERSIONS);
    let kept: Vec<&str> = obs
        .aside
        .iter()
        .map(|(_, c)| c)
        .filter(|c| !remove.contains(&c.id))
        .map(|c| c.name.as_str())
        .collect();
    if !kept.is_empty() {
        job.emit(
            Phase::Cleanup,
            Some(svc.name),
            &format!("keeping for instant rollback: {}", kept.join(", ")),
        );
    }
    for id in remove {
        let name = obs
            .find(&id)
            .map(|c| format!("{} ({})", c.name, short(c)))
            .unwrap_or_else(|| id.clone());
        job.emit(
            Phase::Cleanup,
            Some(svc.name),
            &format!("removing the old version {name}"),
        );
        job.e
            .rt
            .remove_container(&id)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Compose services

async fn switch_compose(
    job: &Job<'_>,
    svc: &Prepared<'_>,
    t: &ComposeTarget,
) -> Result<bool, Failure> {
    let e = job.e;
    let s = Some(svc.name);
    let cli = e
        .compose_cli()
        .await
        .map_err(|why| Failure::start(svc, why, Vec::new()))?;
    let digest = job.order.image.digest();
    let current = t
        .current(e, &cli)
        .await
        .map_err(|err| Failure::engine(svc, err))?;

    if let Some(cur) = &current
        && cur.is_running()
        && digest_of(cur) == Some(digest)
    {
        job.emit(
            Phase::Health,
            s,
            &format!(
                "{} already runs {}; checking that it is healthy",
                cur.name,
                short(cur)
            ),
        );
        let started = Instant::now();
        return match wait_healthy(e, &cur.id, svc.spec, &svc.ports, started).await {
            HealthEnd::Healthy { .. } => Ok(false),
            end => Err(health_failure(job, svc, &cur.name, &cur.id, end, started).await),
        };
    }

    // Record what is displaced before touching anything, so undo works even after a crash.
    let io = |err: compose::ComposeError| Failure::start(svc, err.to_string(), Vec::new());
    let previous = std::fs::read_to_string(&t.paths.current).ok();
    match &previous {
        Some(text) => compose::write_atomically(&t.paths.previous, text).map_err(io)?,
        None => compose::remove_file(&t.paths.previous).map_err(io)?,
    }
    let marker = ComposeMarker {
        order: job.order.order_id.clone(),
        had_override: previous.is_some(),
        had_container: current.is_some(),
    };
    let marker = serde_json::to_string(&marker).unwrap_or_default();
    compose::write_atomically(&t.paths.previous_order, &marker).map_err(io)?;
    let image = job.order.image.to_string();
    let yaml = compose::override_yaml(&t.service, &image, &job.container_labels(svc.name));
    compose::write_atomically(&t.paths.current, &yaml).map_err(io)?;

    job.emit(
        Phase::Switch,
        s,
        &format!(
            "compose up -d --no-deps {} with {} pinned by {}",
            t.service,
            image,
            t.paths.current.display()
        ),
    );
    if let Err(err) = cli.up(&t.files(), &t.service).await {
        let tail = plan::last_lines(err.output(), LOG_TAIL_LINES);
        return Err(Failure::start(
            svc,
            format!("compose could not start {}: {err}", t.service),
            tail,
        ));
    }
    let started = Instant::now();
    let Some(new) = t
        .current(e, &cli)
        .await
        .map_err(|err| Failure::engine(svc, err))?
    else {
        return Err(Failure::start(
            svc,
            format!("compose started no container for {}", t.service),
            Vec::new(),
        ));
    };
    job.emit(
        Phase::Health,
        s,
        &format!(
            "waiting for {} to be healthy: {}",
            new.name,
            describe_health(svc.spec, &svc.ports, new.check.is_some())
        ),
    );
    match wait_healthy(e, &new.id, svc.spec, &svc.ports, started).await {
        HealthEnd::Healthy { after } => {
            job.emit(
                Phase::Health,
                s,
                &format!("{} is healthy ({} after start)", new.name, secs(after)),
            );
            Ok(true)
        }
        end => Err(health_failure(job, svc, &new.name, &new.id, end, started).await),
    }
}

async fn undo_compose(
    job: &Job<'_>,
    svc: &Prepared<'_>,
    t: &ComposeTarget,
) -> Result<Undone, String> {
    let s = Some(svc.name);
    let cli = job.e.compose_cli().await?;
    let marker = t.marker().filter(|m| m.order == job.order.order_id);
    let Some(marker) = marker else {
        // This order never switched the service: confirm what runs is healthy, if anything.
        return match t.current(job.e, &cli).await.map_err(|e| e.to_string())? {
            Some(c) => {
                if !c.is_running() {
                    job.emit(
                        Phase::Rollback,
                        s,
                        &format!("compose up -d --no-deps {} (it was stopped)", t.service),
                    );
                    cli.up(&t.files(), &t.service)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                confirm_healthy(job, svc).await?;
                Ok(Undone {
                    order_changed_it: !c.is_running(),
                    previous_serving: true,
                    digest: running_digest(job, &c).await,
                    kept_serving: c.is_running(),
                })
            }
            None => Ok(Undone {
                order_changed_it: false,
                previous_serving: false,
                digest: None,
                kept_serving: false,
            }),
        };
    };
    let io = |e: compose::ComposeError| e.to_string();
    if marker.had_override {
        let previous = std::fs::read_to_string(&t.paths.previous).map_err(|e| {
            format!(
                "cannot read the previous override {}: {e}",
                t.paths.previous.display()
            )
        })?;
        compose::write_atomically(&t.paths.current, &previous).map_err(io)?;
    } else {
        compose::remove_file(&t.paths.current).map_err(io)?;
    }
    if !marker.had_container {
        job.emit(
            Phase::Rollback,
            s,
            &format!("removing {}: it did not run before this order", t.service),
        );
        cli.remove(&t.files(), &t.service)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Undone {
            order_changed_it: true,
            previous_serving: false,
            digest: None,
            kept_serving: false,
        });
    }
    job.emit(
        Phase::Rollback,
        s,
        &format!(
            "compose up -d --no-deps {} with the previous image",
            t.service
        ),
    );
    cli.up(&t.files(), &t.service)
        .await
        .map_err(|e| e.to_string())?;
    confirm_healthy(job, svc).await?;
    let digest = match current_container(job, svc).await {
        Ok(Some(c)) => running_digest(job, &c).await,
        _ => None,
    };
    Ok(Undone {
        order_changed_it: true,
        previous_serving: true,
        digest,
        kept_serving: false,
    })
}

/// Runs the migration of a compose service with `run --rm` in the new image.
pub(crate) async fn migrate_compose(
    job: &Job<'_>,
    svc: &Prepared<'_>,
    t: &ComposeTarget,
    command: &[String],
    timeout: Duration,
) -> Result<Vec<String>, Failure> {
    let cli = job
        .e
        .compose_cli()
        .await
        .map_err(|why| Failure::start(svc, why, Vec::new()))?;
    let mut labels: BTreeMap<String, String> = job.container_labels(svc.name);
    labels.insert(ROLE_LABEL.to_string(), ROLE_MIGRATION.to_string());
    let yaml = compose::override_yaml(&t.service, &job.order.image.to_string(), &labels);
    compose::write_atomically(&t.paths.migration, &yaml)
        .map_err(|e| Failure::start(svc, e.to_string(), Vec::new()))?;
    let name = plan::migration_name(
        &job.e.identity.container_prefix,
        &job.order.app,
        &job.e.identity.env,
        &job.order.order_id,
    );
    let files = [t.file.as_path(), t.paths.migration.as_path()];
    let result = cli
        .run_once(&files, &t.service, &name, command, timeout)
        .await;
    let _ = compose::remove_file(&t.paths.migration);
    match result {
        Ok(ran) => Ok(plan::last_lines(&ran.output, LOG_TAIL_LINES)),
        Err(err) => {
            let timed_out = matches!(err, compose::ComposeError::TimedOut { .. });
            let mut tail = plan::last_lines(err.output(), LOG_TAIL_LINES);
            if timed_out {
                // The CLI was killed; its container was not.
                if let Ok(t) = job.e.rt.logs_tail(&name, LOG_TAIL_LINES).await {
                    tail = t;
                }
                let _ = job.e.rt.remove_container(&name).await;
            }
            Err(Failure {
                class: if timed_out {
                    FailureClass::MigrationTimeout
                } else {
                    FailureClass::MigrationFailed
                },
                service: svc.name.to_string(),
                what: err.to_string(),
                log_tail: tail,
                new_started: None,
            })
        }
    }
}
