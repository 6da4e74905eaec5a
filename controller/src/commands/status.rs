//! `deployctl status --env E`: what each host runs now, service by service, and the env's verdict:
//! one release everywhere, or which hosts differ and how. Exit 0 when every host answers, runs
//! one release and is healthy; 1 when something is unhealthy or hosts differ; 3 when a host
//! cannot be reached. Unreachable hosts are rows, not errors.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use proto::wire::{AgentStatus, Health};

use super::find_env;
use crate::config::{DeployConfig, EnvConfig};
use crate::connector::{HostError, Transport, connect_all};
use crate::output::{
    HostStatus, Inconsistent, Message, Output, StatusSummary, Summary, SummaryBody,
};
use crate::release::{Digests, current_digests, differences, most_common};
use crate::{Error, ExitClass};

pub async fn status(
    cfg: &DeployConfig,
    env_name: &str,
    out: &dyn Output,
) -> Result<ExitClass, Error> {
    let env = find_env(cfg, env_name)?;
    let answers = gather(env).await;
    for (host, answer) in env.hosts.iter().zip(&answers) {
        out.emit(&Message::HostStatus(match answer {
            Ok(status) => HostStatus::up(&host.name, status, &cfg.app),
            Err(e) => HostStatus::down(&host.name, e.kind, &e.message),
        }));
    }
    let services: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
    let hosts: Vec<&str> = env.hosts.iter().map(|h| h.name.as_str()).collect();
    let verdict = verdict(&env.name, &cfg.app, &services, &hosts, &answers);
    let summary = Summary::new("status", SummaryBody::Status(verdict));
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// Every host's status, or why there is none, in deploy.toml order.
async fn gather(env: &EnvConfig) -> Vec<Result<AgentStatus, HostError>> {
    let connector = Transport::for_env(env);
    let results = connect_all(&connector, &env.name, &env.hosts).await;
    join_all(results.into_iter().map(|r| async move {
        let mut conn = r?;
        conn.status().await.map_err(HostError::from)
    }))
    .await
}

/// The env's verdict from every host's answer (`hosts` names them): the release `app`'s
/// `services` run on each reachable host, the one most run, the hosts that run another (a
/// service missing counts as a difference), and whether every service is healthy.
pub fn verdict<E>(
    env: &str,
    app: &str,
    services: &[&str],
    hosts: &[&str],
    answers: &[Result<AgentStatus, E>],
) -> StatusSummary {
    let mut healthy = true;
    let mut releases: Vec<(&str, Digests)> = Vec::new();
    for (host, answer) in hosts.iter().zip(answers) {
        let Ok(status) = answer else {
            healthy = false;
            continue;
        };
        for name in services {
            let found = status
                .services
                .iter()
                .find(|s| s.app == app && s.service == *name);
            healthy &= found.is_some_and(|s| s.health == Health::Healthy);
        }
        releases.push((host, current_digests(status, app, services)));
    }
    let release = most_common(releases.iter().map(|(_, r)| r))
        .cloned()
        .unwrap_or_default();
    let differing: Vec<Inconsistent> = releases
        .iter()
        .filter_map(|(host, r)| {
            let mut diff = differences(r, &release);
            diff.extend(
                services
                    .iter()
                    .filter(|s| !release.contains_key(**s) && !r.contains_key(**s))
                    .map(|s| format!("{s} missing")),
            );
            (!diff.is_empty()).then(|| Inconsistent {
                host: host.to_string(),
                why: diff.join(", "),
            })
        })
        .collect();
    let digests: BTreeSet<String> = releases
        .iter()
        .flat_map(|(_, r)| r.values().cloned())
        .collect();
    StatusSummary {
        env: env.to_string(),
        hosts: answers.len(),
        reachable: releases.len(),
        consistent: releases.len() == answers.len() && differing.is_empty(),
        healthy,
        digests: digests.into_iter().collect(),
        release,
        differing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Timestamp;
    use proto::order::ImageRef;
    use proto::wire::ServiceStatus;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    /// A host whose services of app `web` are (service, digest, healthy); `other` runs too.
    fn host(services: &[(&str, char, bool)]) -> Result<AgentStatus, String> {
        let svc = |app: &str, name: &str, c: char, healthy: bool| ServiceStatus {
            image: Some(ImageRef::new("r/web", &d(c)).unwrap()),
            ..ServiceStatus::new(
                app,
                name,
                if healthy {
                    Health::Healthy
                } else {
                    Health::Unhealthy
                },
                Timestamp::now(),
            )
        };
        let mut all: Vec<ServiceStatus> = services
            .iter()
            .map(|(name, c, ok)| svc("web", name, *c, *ok))
            .collect();
        all.push(svc("other", "web", 'f', false));
        Ok(AgentStatus {
            agent_version: "1".into(),
            host: "h".into(),
            env: "e".into(),
            uptime_secs: 1,
            services: all,
            running: vec![],
            approvals: None,
            host_health: None,
        })
    }

    #[test]
    fn the_verdict_and_its_exit_code() {
        let down = || Err::<AgentStatus, String>("unreachable".into());
        let ok = || host(&[("web", 'a', true), ("api", 'a', true)]);
        let two = || host(&[("web", 'a', true), ("api", 'b', true)]);
        // (hosts' answers, consistent, healthy, digests, the hosts that differ and how, exit)
        type Case = (
            Vec<Result<AgentStatus, String>>,
            bool,
            bool,
            Vec<char>,
            Vec<(&'static str, &'static str)>,
            ExitClass,
        );
        let cases: Vec<Case> = vec![
            (
                vec![ok(), ok()],
                true,
                true,
                vec!['a'],
                vec![],
                ExitClass::Success,
            ),
            // another app's unhealthy service on the same host does not count
            (
                vec![ok()],
                true,
                true,
                vec!['a'],
                vec![],
                ExitClass::Success,
            ),
            // a release of two images, the same on both hosts
            (
                vec![two(), two()],
                true,
                true,
                vec!['a', 'b'],
                vec![],
                ExitClass::Success,
            ),
            (
                vec![ok(), host(&[("web", 'a', true), ("api", 'a', false)])],
                true,
                false,
                vec!['a'],
                vec![],
                ExitClass::Failed,
            ),
            (
                vec![ok(), host(&[("web", 'b', true), ("api", 'b', true)])],
                false,
                true,
                vec!['a', 'b'],
                vec![(
                    "h2",
                    "api runs bbbbbbbbbbbb, not aaaaaaaaaaaa, web runs bbbbbbbbbbbb, not aaaaaaaaaaaa",
                )],
                ExitClass::Failed,
            ),
            // one service differs on one host of three: that host is named, not the others
            (
                vec![
                    two(),
                    host(&[("web", 'c', true), ("api", 'b', true)]),
                    two(),
                ],
                false,
                true,
                vec!['a', 'b', 'c'],
                vec![("h2", "web runs cccccccccccc, not aaaaaaaaaaaa")],
                ExitClass::Failed,
            ),
            // a service missing on a host: not consistent, not healthy
            (
                vec![ok(), host(&[("web", 'a', true)])],
                false,
                false,
                vec!['a'],
                vec![("h2", "api missing")],
                ExitClass::Failed,
            ),
            (
                vec![ok(), down()],
                false,
                false,
                vec!['a'],
                vec![],
                ExitClass::Refused,
            ),
            (
                vec![down(), down()],
                false,
                false,
                vec![],
                vec![],
                ExitClass::Refused,
            ),
        ];
        for (answers, consistent, healthy, digests, differing, exit) in cases {
            let names = ["h1", "h2", "h3"];
            let v = verdict("staging", "web", &["api", "web"], &names, &answers);
            assert_eq!(
                (v.consistent, v.healthy, v.reachable),
                (
                    consistent,
                    healthy,
                    answers.iter().filter(|a| a.is_ok()).count()
                ),
                "{answers:?}"
            );
            assert_eq!(v.digests, digests.into_iter().map(d).collect::<Vec<_>>());
            let got: Vec<(&str, &str)> = v
                .differing
                .iter()
                .map(|i| (i.host.as_str(), i.why.as_str()))
                .collect();
            assert_eq!(got, differing, "{answers:?}");
            assert_eq!(v.exit(), exit, "{answers:?}");
        }
        let v = verdict(
            "staging",
            "web",
            &["api", "web"],
            &["h1", "h2"],
            &[two(), two()],
        );
        assert_eq!(
            v.release,
            Digests::from([("api".into(), d('b')), ("web".into(), d('a'))])
        );
    }
}
