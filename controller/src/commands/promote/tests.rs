//! `staging_release` over every way a staging env can stand.

use expect_test::expect;
use proto::Timestamp;
use proto::order::ImageRef;
use proto::wire::{AgentStatus, Health, HistoryEntry, LockHolder, OutcomeKind, ServiceStatus};

use super::*;

const APP: &str = "acme";

fn image(c: char) -> ImageRef {
    ImageRef::new(
        "reg/acme/web",
        &format!("sha256:{}", c.to_string().repeat(64)),
    )
    .unwrap()
}

fn service(name: &str, c: char, health: Health) -> ServiceStatus {
    ServiceStatus {
        container_id: Some("c".into()),
        image: Some(image(c)),
        reference: Some("v1".into()),
        ..ServiceStatus::new(APP, name, health, Timestamp::from_unix_secs(0))
    }
}

fn entry(c: char, reference: &str, outcome: OutcomeKind) -> HistoryEntry {
    serde_json::from_value(serde_json::json!({
        "order_id": format!("o-{reference}"),
        "rollout_id": "r",
        "action": "deploy",
        "signer": "ci",
        "issued_by": "ci",
        "accepted_at": "2026-12-01T10:00:00Z",
        "ref": reference,
        "image": image(c).to_string(),
        "app": APP,
        "services": ["web"],
        "outcome": outcome,
        "run_migration": false,
    }))
    .unwrap()
}

fn host(name: &str, services: Vec<ServiceStatus>, running: usize) -> Seen {
    let holder = LockHolder {
        order_id: "o9".into(),
        rollout_id: "r9".into(),
        signer: "ci".into(),
        issued_by: "ci".into(),
        since: Timestamp::from_unix_secs(0),
    };
    let status = AgentStatus {
        agent_version: "0".into(),
        host: name.into(),
        env: "staging".into(),
        uptime_secs: 1,
        services,
        running: vec![holder; running],
        approvals: None,
        host_health: None,
    };
    let history = vec![
        entry('b', "v2", OutcomeKind::Succeeded),
        entry('a', "v1", OutcomeKind::Succeeded),
        entry('c', "v3", OutcomeKind::RolledBack),
    ];
    Seen {
        host: name.into(),
        answer: Ok((status, history)),
    }
}

#[test]
fn staging_promotes_only_one_healthy_idle_release_everywhere() {
    let healthy = |c| vec![service("web", c, Health::Healthy)];
    let cases: Vec<(&str, Vec<Seen>)> = vec![
        (
            "v2 everywhere",
            vec![host("s1", healthy('b'), 0), host("s2", healthy('b'), 0)],
        ),
        (
            "v1 everywhere",
            vec![host("s1", healthy('a'), 0), host("s2", healthy('a'), 0)],
        ),
        (
            "mixed",
            vec![host("s1", healthy('b'), 0), host("s2", healthy('a'), 0)],
        ),
        (
            "unhealthy",
            vec![
                host("s1", healthy('b'), 0),
                host("s2", vec![service("web", 'b', Health::Unhealthy)], 0),
            ],
        ),
        ("nothing deployed", vec![host("s1", vec![], 0)]),
        ("a job running", vec![host("s1", healthy('b'), 1)]),
        (
            "unreachable",
            vec![
                host("s1", healthy('b'), 0),
                Seen {
                    host: "s2".into(),
                    answer: Err("connection refused".into()),
                },
            ],
        ),
        ("not in the journal", vec![host("s1", healthy('c'), 0)]),
    ];
    let out: String = cases
        .iter()
        .map(|(what, seen)| {
            let verdict = match staging_release(APP, &["web"], "staging", seen) {
                Ok(r) => format!("{} {}", r.reference, r.image.short_digest()),
                Err(e) => e,
            };
            format!("{what:<20} {verdict}\n")
        })
        .collect();
    expect![[r#"
        v2 everywhere        v2 bbbbbbbbbbbb
        v1 everywhere        v1 aaaaaaaaaaaa
        mixed                cannot promote from staging: staging is mixed: s2 differs from s1 (web runs aaaaaaaaaaaa, not bbbbbbbbbbbb); promote takes only a release that runs healthy on every host of staging
        unhealthy            cannot promote from staging: s2: web is unhealthy; promote takes only a release that runs healthy on every host of staging
        nothing deployed     cannot promote from staging: s1: web is not deployed; promote takes only a release that runs healthy on every host of staging
        a job running        cannot promote from staging: s1 is running order o9 of rollout r9; promote takes only a release that runs healthy on every host of staging
        unreachable          cannot promote from staging: s2 is unreachable (connection refused); promote takes only a release that runs healthy on every host of staging
        not in the journal   cannot promote from staging: no journal entry of staging records the release it runs (its orders were pruned?); push it by digest instead
    "#]].assert_eq(&out);
}
