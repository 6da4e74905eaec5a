//! The Prometheus text exposition (format 0.0.4) of what the agent knows (README, "Metrics"):
//! a pure function of the `status` answer and the journal's counts, so the textfile and the
//! HTTP listener show the same figures, and a snapshot test pins every line.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proto::time::Timestamp;
use proto::wire::{AgentStatus, DiskSpace, Health, ServiceStatus};

use crate::index::Summary;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The health states every service gets a series for, so a state a service is not in reads 0
/// rather than nothing. A state the engine reports that is not listed here (a variant added to
/// [`Health`] later) still gets its series, named by its `Display`, wherever it is seen.
const STATES: [Health; 5] = [
    Health::Healthy,
    Health::Unhealthy,
    Health::Stopped,
    Health::Missing,
    Health::Unknown,
];

/// Finished deploy and rollback orders of one kind, the key of `deploy_agent_deploys_total`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeployKey {
    pub app: String,
    /// `deploy` or `rollback`.
    pub action: String,
    /// The outcome's kind, as `history` shows it (`succeeded`, `rolled-back`, …).
    pub outcome: String,
}

pub type DeployCounts = BTreeMap<DeployKey, u64>;

/// Counts the finished orders that put a release on a host (exec and maintenance orders change
/// no release and are left out).
pub fn deploy_counts<'a>(orders: impl IntoIterator<Item = &'a Summary>) -> DeployCounts {
    let mut counts = DeployCounts::new();
    for s in orders {
        let Some(outcome) = s.outcome.as_ref().filter(|_| s.order.action.deploys()) else {
            continue;
        };
        let key = DeployKey {
            app: s.order.app.clone(),
            action: s.order.action.to_string(),
            outcome: outcome.kind.to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// Everything the agent exports while it runs.
pub fn render(status: &AgentStatus, deploys: &DeployCounts) -> String {
    let mut out = Exposition::default();
    identity_families(
        &mut out,
        1,
        &status.agent_version,
        &status.host,
        &status.env,
    );
    out.family(
        "deploy_agent_uptime_seconds",
        Kind::Gauge,
        "Seconds since the agent started.",
        [(vec![], status.uptime_secs.to_string())],
    );
    out.family(
        "deploy_agent_jobs_running",
        Kind::Gauge,
        "Orders running on this host right now.",
        [(vec![], status.running.len().to_string())],
    );
    host_families(&mut out, status);
    service_families(&mut out, status);
    out.family(
        "deploy_agent_deploys_total",
        Kind::Counter,
        "Deploy and rollback orders this agent finished, by outcome (from its journal).",
        deploys.iter().map(|(k, n)| {
            (
                vec![
                    ("app", k.app.as_str()),
                    ("env", status.env.as_str()),
                    ("action", k.action.as_str()),
                    ("outcome", k.outcome.as_str()),
                ],
                n.to_string(),
            )
        }),
    );
    out.text
}

/// What the textfile says once the agent stopped: `deploy_agent_up 0` and who it was, and no
/// service figures, which nobody keeps up to date any more. Made from the config alone: a
/// stopping agent asks the engine nothing more.
pub fn render_stopped(version: &str, host: &str, env: &str) -> String {
    let mut out = Exposition::default();
    identity_families(&mut out, 0, version, host, env);
    out.text
}

fn identity_families(out: &mut Exposition, up: u8, version: &str, host: &str, env: &str) {
    out.family(
        "deploy_agent_up",
        Kind::Gauge,
        "1 while the agent runs; its textfile says 0 once it stopped cleanly.",
        [(vec![], up.to_string())],
    );
    out.family(
        "deploy_agent_info",
        Kind::Gauge,
        "The agent's version, host name and env (agent.toml), always 1.",
        [(
            vec![("version", version), ("host", host), ("env", env)],
            "1".into(),
        )],
    );
}

fn host_families(out: &mut Exposition, status: &AgentStatus) {
    let Some(host) = &status.host_health else {
        return;
    };
    let engine = &host.engine;
    out.family(
        "deploy_agent_engine_up",
        Kind::Gauge,
        "1 when the Docker engine answered the agent, 0 when it did not.",
        [(vec![], u8::from(engine.reachable).to_string())],
    );
    out.family(
        "deploy_agent_engine_info",
        Kind::Gauge,
        "The Docker engine's version and API version, always 1.",
        engine.version.as_deref().map(|version| {
            (
                vec![
                    ("version", version),
                    ("api_version", engine.api_version.as_deref().unwrap_or("")),
                ],
                "1".to_string(),
            )
        }),
    );
    fn disk(d: &DiskSpace, bytes: u64) -> Sample<'_> {
        (
            vec![("what", d.what.as_str()), ("path", d.path.as_str())],
            bytes.to_string(),
        )
    }
    out.family(
        "deploy_agent_disk_free_bytes",
        Kind::Gauge,
        "Bytes free to unprivileged users on the filesystem of the engine's data root (what=engine) and of the agent's state dir (what=state_dir).",
        host.disks.iter().map(|d| disk(d, d.free_bytes)),
    );
    out.family(
        "deploy_agent_disk_size_bytes",
        Kind::Gauge,
        "Size in bytes of the filesystems of deploy_agent_disk_free_bytes.",
        host.disks.iter().map(|d| disk(d, d.total_bytes)),
    );
}

fn service_families<'a>(out: &mut Exposition, status: &'a AgentStatus) {
    let env = status.env.as_str();
    let labels = |s: &'a ServiceStatus| -> Vec<(&'a str, &'a str)> {
        vec![
            ("app", s.app.as_str()),
            ("env", env),
            ("service", s.service.as_str()),
        ]
    };
    let services = &status.services;
    out.family(
        "deploy_agent_service_healthy",
        Kind::Gauge,
        "1 when the service's serving container is healthy, 0 otherwise.",
        services
            .iter()
            .map(|s| (labels(s), u8::from(s.health == Health::Healthy).to_string())),
    );
    let mut states: Vec<String> = STATES.iter().map(Health::to_string).collect();
    for s in services {
        let state = s.health.to_string();
        if !states.contains(&state) {
            states.push(state);
        }
    }
    out.family(
        "deploy_agent_service_health",
        Kind::Gauge,
        "The service's health state: 1 for the state it is in, 0 for the others.",
        services.iter().flat_map(|s| {
            let current = s.health.to_string();
            states.iter().map(move |state| {
                let mut l = labels(s);
                l.push(("state", state.as_str()));
                (l, u8::from(*state == current).to_string())
            })
        }),
    );
    out.family(
        "deploy_agent_service_health_since_timestamp_seconds",
        Kind::Gauge,
        "When the service entered its current health state, in seconds since the epoch.",
        services.iter().map(|s| (labels(s), seconds(s.since))),
    );
    out.family(
        "deploy_agent_service_restarts_total",
        Kind::Counter,
        "Times the engine restarted the service's serving container (starts again at 0 with each new container).",
        services.iter().map(|s| (labels(s), s.restarts.to_string())),
    );
    out.family(
        "deploy_agent_service_info",
        Kind::Gauge,
        "The image repository, digest and ref the service runs, always 1.",
        services.iter().filter_map(|s| {
            let image = s.image.as_ref()?;
            let mut l = labels(s);
            l.push(("image", image.repository()));
            l.push(("digest", image.digest()));
            l.push(("ref", s.reference.as_deref().unwrap_or("")));
            Some((l, "1".to_string()))
        }),
    );
}

/// Seconds since the epoch, to the millisecond.
fn seconds(t: Timestamp) -> String {
    let d = t
        .system()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// The text being written, one metric family after the other.
#[derive(Default)]
struct Exposition {
    text: String,
}

type Sample<'a> = (Vec<(&'a str, &'a str)>, String);

impl Exposition {
    /// `# HELP`, `# TYPE` and the samples of one family; a family without samples is left out.
    fn family<'a>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        samples: impl IntoIterator<Item = Sample<'a>>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                let pairs: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(self.text, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(self.text, " {value}");
        }
    }
}

/// A label value as the text format writes it: backslash, double quote and line feed escaped.
pub fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escapes backslash and line feed only.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use proto::ImageRef;
    use proto::wire::{EngineHealth, HostHealth, LockHolder, OutcomeKind};

    use super::*;
    use crate::index::Index;
    use crate::journal::tests::record;

    fn service(
        name: &str,
        health: Health,
        restarts: u64,
        reference: Option<&str>,
    ) -> ServiceStatus {
        let digest = format!("sha256:{}", "a".repeat(64));
        let since =
            Timestamp::from_unix_secs(1_800_000_000).plus(std::time::Duration::from_millis(250));
        ServiceStatus {
            container_id: Some("c0ffee".into()),
            image: Some(ImageRef::new("registry.example.com/acme/web", &digest).unwrap()),
            reference: reference.map(str::to_string),
            last_outcome: Some(OutcomeKind::Succeeded),
            last_order: Some("o1".into()),
            restarts,
            ..ServiceStatus::new("acme", name, health, since)
        }
    }

    fn status() -> AgentStatus {
        AgentStatus {
            agent_version: "0.1.0".into(),
            host: "prod-1".into(),
            env: "prod".into(),
            uptime_secs: 3600,
            services: vec![
                service("web", Health::Healthy, 0, Some("v1.2.3")),
                service("worker", Health::Unhealthy, 4, None),
            ],
            running: vec![LockHolder {
                order_id: "o2".into(),
                rollout_id: "r2".into(),
                signer: "ci@acme".into(),
                issued_by: "ci".into(),
                since: Timestamp::from_unix_secs(1_800_000_100),
            }],
            approvals: None,
            host_health: Some(HostHealth {
                now: Timestamp::from_unix_secs(1_800_000_200),
                engine: EngineHealth {
                    reachable: true,
                    version: Some("26.1.5".into()),
                    api_version: Some("1.45".into()),
                    root_dir: Some("/var/lib/docker".into()),
                    error: None,
                },
                disks: vec![
                    DiskSpace {
                        what: "engine".into(),
                        path: "/var/lib/docker".into(),
                        free_bytes: 50_000_000_000,
                        total_bytes: 100_000_000_000,
                    },
                    DiskSpace {
                        what: "state_dir".into(),
                        path: "/var/lib/deploy-agent".into(),
                        free_bytes: 9_000_000_000,
                        total_bytes: 100_000_000_000,
                    },
                ],
            }),
        }
    }

    fn counts() -> DeployCounts {
        let mut rollback = record(4, "o4", 'd', Some(OutcomeKind::Succeeded));
        rollback.order.action = proto::Action::Rollback;
        let mut exec = record(5, "o5", 'e', Some(OutcomeKind::Failed));
        exec.order.action = proto::Action::Exec;
        let records = [
            record(1, "o1", 'a', Some(OutcomeKind::Succeeded)),
            record(2, "o2", 'b', Some(OutcomeKind::RolledBack)),
            record(3, "o3", 'c', Some(OutcomeKind::Succeeded)),
            rollback,
            exec,
            record(6, "o6", 'f', None),
        ];
        deploy_counts(Index::from_records(&records).finished())
    }

    #[test]
    fn finished_deploys_and_rollbacks_are_counted_by_outcome() {
        let key = |action: &str, outcome: &str| DeployKey {
            app: "acme".into(),
            action: action.into(),
            outcome: outcome.into(),
        };
        // The exec and the order still running are not counted.
        assert_eq!(
            counts(),
            DeployCounts::from([
                (key("deploy", "rolled-back"), 1),
                (key("deploy", "succeeded"), 2),
                (key("rollback", "succeeded"), 1),
            ])
        );
    }

    #[test]
    fn the_exposition_of_a_status() {
        expect![[r##"
            # HELP deploy_agent_up 1 while the agent runs; its textfile says 0 once it stopped cleanly.
            # TYPE deploy_agent_up gauge
            deploy_agent_up 1
            # HELP deploy_agent_info The agent's version, host name and env (agent.toml), always 1.
            # TYPE deploy_agent_info gauge
            deploy_agent_info{version="0.1.0",host="prod-1",env="prod"} 1
            # HELP deploy_agent_uptime_seconds Seconds since the agent started.
            # TYPE deploy_agent_uptime_seconds gauge
            deploy_agent_uptime_seconds 3600
            # HELP deploy_agent_jobs_running Orders running on this host right now.
            # TYPE deploy_agent_jobs_running gauge
            deploy_agent_jobs_running 1
            # HELP deploy_agent_engine_up 1 when the Docker engine answered the agent, 0 when it did not.
            # TYPE deploy_agent_engine_up gauge
            deploy_agent_engine_up 1
            # HELP deploy_agent_engine_info The Docker engine's version and API version, always 1.
            # TYPE deploy_agent_engine_info gauge
            deploy_agent_engine_info{version="26.1.5",api_version="1.45"} 1
            # HELP deploy_agent_disk_free_bytes Bytes free to unprivileged users on the filesystem of the engine's data root (what=engine) and of the agent's state dir (what=state_dir).
            # TYPE deploy_agent_disk_free_bytes gauge
            deploy_agent_disk_free_bytes{what="engine",path="/var/lib/docker"} 50000000000
            deploy_agent_disk_free_bytes{what="state_dir",path="/var/lib/deploy-agent"} 9000000000
            # HELP deploy_agent_disk_size_bytes Size in bytes of the filesystems of deploy_agent_disk_free_bytes.
            # TYPE deploy_agent_disk_size_bytes gauge
            deploy_agent_disk_size_bytes{what="engine",path="/var/lib/docker"} 100000000000
            deploy_agent_disk_size_bytes{what="state_dir",path="/var/lib/deploy-agent"} 100000000000
            # HELP deploy_agent_service_healthy 1 when the service's serving container is healthy, 0 otherwise.
            # TYPE deploy_agent_service_healthy gauge
            deploy_agent_service_healthy{app="acme",env="prod",service="web"} 1
            deploy_agent_service_healthy{app="acme",env="prod",service="worker"} 0
            # HELP deploy_agent_service_health The service's health state: 1 for the state it is in, 0 for the others.
            # TYPE deploy_agent_service_health gauge
            deploy_agent_service_health{app="acme",env="prod",service="web",state="healthy"} 1
            deploy_agent_service_health{app="acme",env="prod",service="web",state="unhealthy"} 0
            deploy_agent_service_health{app="acme",env="prod",service="web",state="stopped"} 0
            deploy_agent_service_health{app="acme",env="prod",service="web",state="missing"} 0
            deploy_agent_service_health{app="acme",env="prod",service="web",state="unknown"} 0
            deploy_agent_service_health{app="acme",env="prod",service="worker",state="healthy"} 0
            deploy_agent_service_health{app="acme",env="prod",service="worker",state="unhealthy"} 1
            deploy_agent_service_health{app="acme",env="prod",service="worker",state="stopped"} 0
            deploy_agent_service_health{app="acme",env="prod",service="worker",state="missing"} 0
            deploy_agent_service_health{app="acme",env="prod",service="worker",state="unknown"} 0
            # HELP deploy_agent_service_health_since_timestamp_seconds When the service entered its current health state, in seconds since the epoch.
            # TYPE deploy_agent_service_health_since_timestamp_seconds gauge
            deploy_agent_service_health_since_timestamp_seconds{app="acme",env="prod",service="web"} 1800000000.250
            deploy_agent_service_health_since_timestamp_seconds{app="acme",env="prod",service="worker"} 1800000000.250
            # HELP deploy_agent_service_restarts_total Times the engine restarted the service's serving container (starts again at 0 with each new container).
            # TYPE deploy_agent_service_restarts_total counter
            deploy_agent_service_restarts_total{app="acme",env="prod",service="web"} 0
            deploy_agent_service_restarts_total{app="acme",env="prod",service="worker"} 4
            # HELP deploy_agent_service_info The image repository, digest and ref the service runs, always 1.
            # TYPE deploy_agent_service_info gauge
            deploy_agent_service_info{app="acme",env="prod",service="web",image="registry.example.com/acme/web",digest="sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",ref="v1.2.3"} 1
            deploy_agent_service_info{app="acme",env="prod",service="worker",image="registry.example.com/acme/web",digest="sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",ref=""} 1
            # HELP deploy_agent_deploys_total Deploy and rollback orders this agent finished, by outcome (from its journal).
            # TYPE deploy_agent_deploys_total counter
            deploy_agent_deploys_total{app="acme",env="prod",action="deploy",outcome="rolled-back"} 1
            deploy_agent_deploys_total{app="acme",env="prod",action="deploy",outcome="succeeded"} 2
            deploy_agent_deploys_total{app="acme",env="prod",action="rollback",outcome="succeeded"} 1
        "##]]
        .assert_eq(&render(&status(), &counts()));
    }

    #[test]
    fn a_stopped_agent_says_so_and_nothing_else() {
        expect![[r##"
            # HELP deploy_agent_up 1 while the agent runs; its textfile says 0 once it stopped cleanly.
            # TYPE deploy_agent_up gauge
            deploy_agent_up 0
            # HELP deploy_agent_info The agent's version, host name and env (agent.toml), always 1.
            # TYPE deploy_agent_info gauge
            deploy_agent_info{version="0.1.0",host="prod-1",env="prod"} 1
        "##]]
        .assert_eq(&render_stopped("0.1.0", "prod-1", "prod"));
    }

    #[test]
    fn a_host_without_services_or_host_health_has_no_empty_families() {
        let mut s = status();
        s.services.clear();
        s.running.clear();
        s.host_health = None;
        let text = render(&s, &DeployCounts::new());
        assert!(!text.contains("deploy_agent_service"), "{text}");
        assert!(!text.contains("deploy_agent_engine"), "{text}");
        assert!(!text.contains("deploys_total"), "{text}");
        assert!(text.contains("\ndeploy_agent_jobs_running 0\n"), "{text}");
    }

    #[test]
    fn an_unreachable_engine_reads_0_and_has_no_info() {
        let mut s = status();
        if let Some(h) = s.host_health.as_mut() {
            h.engine = EngineHealth {
                reachable: false,
                version: None,
                api_version: None,
                root_dir: None,
                error: Some("connection refused".into()),
            };
        }
        let text = render(&s, &DeployCounts::new());
        assert!(text.contains("\ndeploy_agent_engine_up 0\n"), "{text}");
        assert!(!text.contains("deploy_agent_engine_info"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        // (value, as written in a label)
        let cases = [
            ("plain", "plain"),
            ("a\"b", "a\\\"b"),
            ("a\\b", "a\\\\b"),
            ("a\nb", "a\\nb"),
            ("\\\"\n", "\\\\\\\"\\n"),
            ("tab\tand é", "tab\tand é"),
        ];
        for (value, written) in cases {
            assert_eq!(escape_label(value), written, "{value:?}");
        }
        let mut s = status();
        s.host = "evil\"} 1\nfake_metric{x=\"".into();
        s.services.truncate(1);
        if let Some(web) = s.services.first_mut() {
            web.reference = Some("a\\b".into());
        }
        let text = render(&s, &DeployCounts::new());
        assert!(
            text.contains("deploy_agent_info{version=\"0.1.0\",host=\"evil\\\"} 1\\nfake_metric{x=\\\"\",env=\"prod\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(",ref=\"a\\\\b\"} 1\n"), "{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("fake_metric")),
            "{text}"
        );
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }
}
