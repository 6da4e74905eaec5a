//! `deployctl status --env E`: what each host runs now, and the env's verdict. Exit 0 when every
//! host answers, every service runs one digest and is healthy; 1 when something is unhealthy or
//! mixed; 3 when a host cannot be reached. Unreachable hosts are rows, not errors.

use std::collections::BTreeSet;

use futures_util::future::join_all;
use proto::wire::{AgentStatus, Health};

use super::find_env;
use crate::config::{DeployConfig, EnvConfig};
use crate::connector::{Transport, connect_all};
use crate::output::{HostStatus, Message, Output, StatusSummary, Summary, SummaryBody};
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
            Err(e) => HostStatus::down(&host.name, e),
        }));
    }
    let services: Vec<&str> = cfg.services.keys().map(String::as_str).collect();
    let verdict = verdict(&env.name, &cfg.app, &services, &answers);
    let summary = Summary::new("status", SummaryBody::Status(verdict));
    let exit = summary.exit();
    out.emit(&Message::Summary(summary));
    Ok(exit)
}

/// Every host's status, or why there is none, in deploy.toml order.
async fn gather(env: &EnvConfig) -> Vec<Result<AgentStatus, String>> {
    let connector = Transport::for_env(env);
    let results = connect_all(&connector, &env.name, &env.hosts).await;
    join_all(results.into_iter().map(|r| async move {
        let mut conn = r?;
        conn.status().await.map_err(|e| e.to_string())
    }))
    .await
}

/// The env's verdict from every host's answer: which digests `app`'s `services` run (a service
/// missing on a host counts as a digest of its own), and whether all are healthy.
pub fn verdict(
    env: &str,
    app: &str,
    services: &[&str],
    answers: &[Result<AgentStatus, String>],
) -> StatusSummary {
    let mut digests = BTreeSet::new();
    let mut healthy = true;
    let mut reachable = 0;
    for answer in answers {
        let Ok(status) = answer else {
            healthy = false;
            continue;
        };
        reachable += 1;
        for name in services {
            let found = status
                .services
                .iter()
                .find(|s| s.app == app && s.service == *name);
            digests.insert(found.and_then(|s| s.image.as_ref().map(|i| i.digest().to_string())));
            healthy &= found.is_some_and(|s| s.health == Health::Healthy);
        }
    }
    StatusSummary {
        env: env.to_string(),
        hosts: answers.len(),
        reachable,
        consistent: reachable == answers.len() && digests.len() == 1 && !digests.contains(&None),
        healthy,
        digests: digests.into_iter().flatten().collect(),
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
            app: app.into(),
            service: name.into(),
            container_id: None,
            image: Some(ImageRef::new("r/web", &d(c)).unwrap()),
            reference: None,
            health: if healthy {
                Health::Healthy
            } else {
                Health::Unhealthy
            },
            since: Timestamp::now(),
            last_outcome: None,
            last_order: None,
            previous_digest: None,
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
        })
    }

    #[test]
    fn the_verdict_and_its_exit_code() {
        let down = || Err::<AgentStatus, String>("unreachable".into());
        let ok = || host(&[("web", 'a', true), ("api", 'a', true)]);
        // (hosts' answers, consistent, healthy, digests, exit)
        type Case = (
            Vec<Result<AgentStatus, String>>,
            bool,
            bool,
            Vec<char>,
            ExitClass,
        );
        let cases: Vec<Case> = vec![
            (vec![ok(), ok()], true, true, vec!['a'], ExitClass::Success),
            // another app's unhealthy service on the same host does not count
            (vec![ok()], true, true, vec!['a'], ExitClass::Success),
            (
                vec![ok(), host(&[("web", 'a', true), ("api", 'a', false)])],
                true,
                false,
                vec!['a'],
                ExitClass::Failed,
            ),
            (
                vec![ok(), host(&[("web", 'b', true), ("api", 'b', true)])],
                false,
                true,
                vec!['a', 'b'],
                ExitClass::Failed,
            ),
            // a service missing on a host: not consistent, not healthy
            (
                vec![ok(), host(&[("web", 'a', true)])],
                false,
                false,
                vec!['a'],
                ExitClass::Failed,
            ),
            (
                vec![ok(), down()],
                false,
                false,
                vec!['a'],
                ExitClass::Refused,
            ),
            (
                vec![down(), down()],
                false,
                false,
                vec![],
                ExitClass::Refused,
            ),
        ];
        for (answers, consistent, healthy, digests, exit) in cases {
            let v = verdict("staging", "web", &["api", "web"], &answers);
            let want = StatusSummary {
                env: "staging".into(),
                hosts: answers.len(),
                reachable: answers.iter().filter(|a| a.is_ok()).count(),
                consistent,
                healthy,
                digests: digests.into_iter().map(d).collect(),
            };
            assert_eq!(v, want, "{answers:?}");
            assert_eq!(v.exit(), exit, "{answers:?}");
        }
    }
}
