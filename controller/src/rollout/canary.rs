//! A canary rollout's decisions, pure and table-tested: which batches go before the hold, and
//! whether what the canary hosts run regressed while they were watched.

use proto::wire::{AgentStatus, Health, OutcomeKind};

use super::decide::{HostState, describe, plan_batches};

/// The batches of a rollout to `hosts` hosts with a canary of `canary` hosts: the first host
/// alone (it migrates), the rest of the canary together, then the others in batches of
/// `max_parallel`; and after which batch the rollout holds for the watch.
pub fn canary_batches(
    hosts: usize,
    max_parallel: usize,
    canary: usize,
) -> (Vec<Vec<usize>>, Option<usize>) {
    let canary = canary.min(hosts);
    if canary == 0 {
        return (plan_batches(hosts, max_parallel), None);
    }
    let mut batches = vec![vec![0]];
    if canary > 1 {
        batches.push((1..canary).collect());
    }
    let hold_after = batches.len() - 1;
    let rest: Vec<usize> = (canary..hosts).collect();
    batches.extend(rest.chunks(max_parallel.max(1)).map(<[usize]>::to_vec));
    (batches, Some(hold_after))
}

/// What went wrong on a canary host since the watch began (`baseline`, read once the canary
/// was deployed): a service gone, no longer healthy, restarted by the engine, or replaced.
pub fn regression(
    app: &str,
    services: &[&str],
    baseline: &AgentStatus,
    now: &AgentStatus,
) -> Option<String> {
    let find = |s: &AgentStatus, name: &str| {
        s.services
            .iter()
            .find(|x| x.app == app && x.service == name)
            .cloned()
    };
    let mut found = Vec::new();
    for name in services {
        let (Some(before), Some(after)) = (find(baseline, name), find(now, name)) else {
            found.push(format!("{name} is gone"));
            continue;
        };
        if after.container_id != before.container_id {
            found.push(format!("{name}'s container was replaced"));
        } else if after.restarts > before.restarts {
            found.push(format!(
                "{name} was restarted by the engine ({} time(s) since the watch began)",
                after.restarts - before.restarts
            ));
        }
        if after.health != Health::Healthy {
            found.push(format!("{name} is {}", after.health));
        }
    }
    (!found.is_empty()).then(|| found.join(", "))
}

/// A canary host's state once its regression was handled: rolled back (a failure the env is
/// consistent after), its rollback failed (broken), or it had run the release already, so
/// there was nothing to go back to (failed).
pub fn after_regression(state: &HostState, rollback: Option<&HostState>, why: &str) -> HostState {
    let reason = format!("the canary regressed during its watch: {why}");
    match (state, rollback) {
        (_, Some(r)) if r.is_success() => HostState::Failed {
            kind: OutcomeKind::RolledBack,
            reason: Some(reason),
        },
        (_, Some(r)) => HostState::Broken {
            kind: OutcomeKind::RollbackFailed,
            reason: Some(format!("{reason}; its rollback ended {}", describe(r))),
        },
        (HostState::Succeeded { changed: true, .. }, None) => HostState::Broken {
            kind: OutcomeKind::RollbackFailed,
            reason: Some(format!(
                "{reason}; it has no previous version to go back to"
            )),
        },
        (_, None) => HostState::Failed {
            kind: OutcomeKind::Failed,
            reason: Some(format!("{reason}; it ran this release before the rollout")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use proto::Timestamp;
    use proto::wire::ServiceStatus;

    #[test]
    fn the_canary_goes_first_then_the_rest_in_batches() {
        let cases = [
            (5, 2, 0),
            (5, 2, 1),
            (5, 2, 2),
            (5, 1, 3),
            (3, 2, 3),
            (1, 1, 1),
            (4, 3, 9),
        ];
        let out: String = cases
            .iter()
            .map(|&(hosts, parallel, canary)| {
                let (batches, hold) = canary_batches(hosts, parallel, canary);
                format!("{hosts} hosts, {parallel} at a time, canary {canary}: {batches:?} hold after {hold:?}\n")
            })
            .collect();
        expect![[r#"
            5 hosts, 2 at a time, canary 0: [[0], [1, 2], [3, 4]] hold after None
            5 hosts, 2 at a time, canary 1: [[0], [1, 2], [3, 4]] hold after Some(0)
            5 hosts, 2 at a time, canary 2: [[0], [1], [2, 3], [4]] hold after Some(1)
            5 hosts, 1 at a time, canary 3: [[0], [1, 2], [3], [4]] hold after Some(1)
            3 hosts, 2 at a time, canary 3: [[0], [1, 2]] hold after Some(1)
            1 hosts, 1 at a time, canary 1: [[0]] hold after Some(0)
            4 hosts, 3 at a time, canary 9: [[0], [1, 2, 3]] hold after Some(1)
        "#]]
        .assert_eq(&out);
    }

    fn status(services: &[(&str, &str, Health, u64)]) -> AgentStatus {
        AgentStatus {
            agent_version: "0".into(),
            host: "h".into(),
            env: "prod".into(),
            uptime_secs: 1,
            services: services
                .iter()
                .map(|&(name, id, health, restarts)| ServiceStatus {
                    container_id: Some(id.into()),
                    restarts,
                    ..ServiceStatus::new("acme", name, health, Timestamp::from_unix_secs(0))
                })
                .collect(),
            running: Vec::new(),
            approvals: None,
            host_health: None,
        }
    }

    #[test]
    fn a_canary_regresses_when_a_service_fails_restarts_or_goes() {
        use Health::*;
        let base = status(&[("web", "c1", Healthy, 0), ("api", "c2", Healthy, 2)]);
        let cases = [
            (
                "as it was",
                status(&[("web", "c1", Healthy, 0), ("api", "c2", Healthy, 2)]),
            ),
            (
                "web unhealthy",
                status(&[("web", "c1", Unhealthy, 0), ("api", "c2", Healthy, 2)]),
            ),
            (
                "api restarted",
                status(&[("web", "c1", Healthy, 0), ("api", "c2", Healthy, 3)]),
            ),
            (
                "web replaced",
                status(&[("web", "c9", Healthy, 0), ("api", "c2", Healthy, 2)]),
            ),
            ("api gone", status(&[("web", "c1", Healthy, 0)])),
            (
                "web down",
                status(&[("web", "c1", Missing, 1), ("api", "c2", Healthy, 2)]),
            ),
        ];
        let out: String = cases
            .iter()
            .map(|(what, now)| {
                let verdict = regression("acme", &["web", "api"], &base, now);
                format!("{what:<14} {}\n", verdict.as_deref().unwrap_or("fine"))
            })
            .collect();
        expect![[r#"
            as it was      fine
            web unhealthy  web is unhealthy
            api restarted  api was restarted by the engine (1 time(s) since the watch began)
            web replaced   web's container was replaced
            api gone       api is gone
            web down       web was restarted by the engine (1 time(s) since the watch began), web is missing
        "#]].assert_eq(&out);
    }
}
