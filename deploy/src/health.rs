//! Health as the engine acts on it: the gate a new version must pass (`wait_healthy`), one look
//! at a serving container (`look_at`, for the switch plan and for `status`), and the failure a
//! version that did not pass turns into. The verdicts themselves are pure (`plan::judge`,
//! `switch::judge_current`); this module only gathers what they judge.

use std::time::{Duration, Instant};

use proto::ServiceSpec;
use proto::time::Timestamp;
use proto::wire::{FailureClass, Health};

use crate::Engine;
use crate::driver::Failure;
use crate::plan::{self, LOG_TAIL_LINES, Observation, ProbeMode, Verdict};
use crate::runtime::{ContainerInfo, PortMapping, RuntimeError};
use crate::switch::{Condition, CurrentLook, judge_current};

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
    /// Healthy, but `verify` did not find the release it expected.
    Unverified {
        expected: String,
        received: String,
    },
}

impl HealthEnd {
    /// For an operator: what happened, without the debug formatting.
    pub fn describe(&self) -> String {
        match self {
            HealthEnd::Healthy { after } => format!("healthy after {}", secs(*after)),
            HealthEnd::Exited {
                code, restarted, ..
            } => match (code, restarted) {
                (Some(c), true) if *c != 0 => {
                    format!("exited with code {c} (and was restarted by the engine)")
                }
                (_, true) => "exited and was restarted by the engine".to_string(),
                (Some(c), false) => format!("exited with code {c}"),
                (None, false) => "stopped".to_string(),
            },
            HealthEnd::Deadline { after } => {
                format!("not healthy by the deadline ({})", secs(*after))
            }
            HealthEnd::Gone => "disappeared".to_string(),
            HealthEnd::Engine(e) => format!("the Docker engine failed: {e}"),
            HealthEnd::Unverified { expected, received } => {
                format!("healthy, but verify expected {expected:?} and received {received:?}")
            }
        }
    }
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
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

/// `http://<container ip>:<health port><path>`. Whatever the order says, the URL stays on the
/// container's own address: a path is always rooted here, so `@host/` or `//host/` cannot name
/// another host.
fn probe_url(
    c: &ContainerInfo,
    spec: &ServiceSpec,
    ports: &[PortMapping],
    path: &str,
) -> Option<String> {
    let ip = plan::probe_ip(&c.networks, spec.network.as_deref())?;
    let port = plan::probe_port(&spec.health, ports);
    Some(format!(
        "http://{ip}:{port}/{}",
        path.trim_start_matches('/')
    ))
}

async fn http_ok(e: &Engine, c: &ContainerInfo, spec: &ServiceSpec, ports: &[PortMapping]) -> bool {
    let path = spec.health.path.as_deref().unwrap_or("/");
    let Some(url) = probe_url(c, spec, ports, path) else {
        return false;
    };
    let timeout = spec
        .health
        .interval
        .clamp(Duration::from_millis(500), Duration::from_secs(2));
    match e.http.get(&url).timeout(timeout).send().await {
        Ok(r) => r.status().is_success() || r.status().is_redirection(),
        Err(_) => false,
    }
}

pub(crate) fn ports_of(spec: &ServiceSpec) -> Vec<PortMapping> {
    spec.ports
        .iter()
        .filter_map(|p| plan::parse_port(p).ok())
        .collect()
}

/// Health for `status`: one look at the container, one probe, and how long an HTTP probe took.
pub(crate) async fn probe_once(
    e: &Engine,
    c: &ContainerInfo,
    spec: &ServiceSpec,
) -> (Health, Option<Duration>) {
    let ports = ports_of(spec);
    let mode = plan::probe_mode(&spec.health, c.check.is_some());
    let (http, took) = if mode == ProbeMode::Http && c.is_running() {
        let start = Instant::now();
        let ok = http_ok(e, c, spec, &ports).await;
        (Some(ok), Some(start.elapsed()))
    } else {
        (None, None)
    };
    (plan::snapshot_health(mode, &Observation::of(c, http)), took)
}

/// How many times the HTTP probe of a serving container is tried before it counts as failing:
/// one dropped request must not turn a healthy version into one replaced without a handover.
const LOOK_TRIES: usize = 3;

/// The serving container's condition, from its state, its restarts and a few probes.
pub(crate) async fn look_at(
    e: &Engine,
    c: &ContainerInfo,
    spec: &ServiceSpec,
    ports: &[PortMapping],
) -> Condition {
    let mode = plan::probe_mode(&spec.health, c.check.is_some());
    let up_for = c
        .started_at
        .as_deref()
        .and_then(|t| Timestamp::parse(t).ok())
        .and_then(|t| Timestamp::now().system().duration_since(t.system()).ok());
    let mut look = CurrentLook {
        state: c.state,
        restart_count: c.restart_count,
        exit_code: c.exit_code,
        up_for,
        mode,
        http_ok: None,
        check: c.check,
    };
    if mode == ProbeMode::Http && c.is_running() {
        let pause = spec
            .health
            .interval
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut ok = false;
        for attempt in 0..LOOK_TRIES {
            if attempt > 0 {
                tokio::time::sleep(pause).await;
            }
            if http_ok(e, c, spec, ports).await {
                ok = true;
                break;
            }
        }
        look.http_ok = Some(ok);
    }
    judge_current(&look)
}

/// Watches the container from `started` until it is proven healthy, exits, or misses the deadline.
pub(crate) async fn wait_healthy(
    e: &Engine,
    id: &str,
    spec: &ServiceSpec,
    ports: &[PortMapping],
    started: Instant,
) -> HealthEnd {
    let h = &spec.health;
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

/// The image label that names the commit an image was built from.
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";

/// The health gate, then `verify` when the service has one: the running code must say it is
/// the release that was asked for. `revision` is the commit the order's ref resolved to, for
/// images without a revision label.
pub(crate) async fn wait_proven(
    e: &Engine,
    id: &str,
    spec: &ServiceSpec,
    ports: &[PortMapping],
    started: Instant,
    revision: Option<&str>,
) -> HealthEnd {
    let end = wait_healthy(e, id, spec, ports, started).await;
    let (HealthEnd::Healthy { .. }, Some(v)) = (&end, &spec.verify) else {
        return end;
    };
    let c = match e.rt.inspect_container(id).await {
        Ok(Some(c)) => c,
        Ok(None) => return HealthEnd::Gone,
        Err(err) => return HealthEnd::Engine(err),
    };
    let expected = match plan::verify_expectation(
        &v.expect,
        c.labels.get(REVISION_LABEL).map(String::as_str),
        revision,
    ) {
        Ok(expected) => expected,
        Err(why) => {
            return HealthEnd::Unverified {
                expected: why,
                received: String::new(),
            };
        }
    };
    let Some(url) = probe_url(&c, spec, ports, &v.path) else {
        return HealthEnd::Unverified {
            expected,
            received: "no address to reach the container at".into(),
        };
    };
    // A healthy app answers at once; a few tries ride out one dropped request.
    let mut received = String::new();
    for _ in 0..3 {
        match e
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let body = r.text().await.unwrap_or_default();
                if body.contains(&expected) {
                    return end;
                }
                received = plan::first_bytes(&body, 200);
            }
            Ok(r) => received = format!("HTTP {}", r.status()),
            Err(err) => received = format!("no answer: {err}"),
        }
        tokio::time::sleep(spec.health.interval.min(Duration::from_millis(500))).await;
    }
    HealthEnd::Unverified { expected, received }
}

/// What was being proven, for a failure's wording.
pub(crate) struct Proving<'a> {
    pub service: &'a str,
    pub spec: &'a ServiceSpec,
    pub ports: &'a [PortMapping],
    /// The container's name and its id.
    pub name: &'a str,
    pub id: &'a str,
    /// The short digest of the version.
    pub short: &'a str,
    pub started: Instant,
}

/// Turns a health wait that did not end healthy into a failure carrying the container's log tail.
pub(crate) async fn health_failure(e: &Engine, p: &Proving<'_>, end: HealthEnd) -> Failure {
    let (name, short) = (p.name, p.short);
    let (class, what) = match &end {
        HealthEnd::Healthy { .. } => (
            FailureClass::Engine,
            format!("{name} ({short}) reported healthy and failed"),
        ),
        HealthEnd::Exited { after, .. } => (
            FailureClass::ContainerExited,
            format!(
                "{name} ({short}) {} {} after start, before it was healthy",
                end.describe(),
                secs(*after)
            ),
        ),
        HealthEnd::Deadline { after } => {
            let c = e.rt.inspect_container(p.id).await.ok().flatten();
            let has_check = c.is_some_and(|c| c.check.is_some());
            (
                FailureClass::HealthDeadline,
                format!(
                    "{name} ({short}) was not healthy by the deadline ({}; judged by {})",
                    secs(*after),
                    describe_health(p.spec, p.ports, has_check)
                ),
            )
        }
        HealthEnd::Gone => (
            FailureClass::ContainerExited,
            format!("{name} ({short}) disappeared during the health wait"),
        ),
        HealthEnd::Engine(err) => (
            FailureClass::Engine,
            format!("the Docker engine failed during the health wait: {err}"),
        ),
        HealthEnd::Unverified { expected, received } => (
            FailureClass::VerifyFailed,
            format!(
                "{name} ({short}) is healthy but is not the release asked for: GET {} expected \
                 {expected:?}, received {received:?}",
                p.spec.verify.as_ref().map_or("?", |v| v.path.as_str())
            ),
        ),
    };
    let log_tail =
        e.rt.logs_tail(p.id, LOG_TAIL_LINES)
            .await
            .unwrap_or_default();
    Failure {
        class,
        service: p.service.to_string(),
        what,
        log_tail,
        new_started: Some(p.started),
    }
}
