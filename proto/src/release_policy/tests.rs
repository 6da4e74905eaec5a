//! The release policy as a whole: which orders it judges, and in which order its rules speak.

use expect_test::expect;

use super::*;
use crate::order::Action;

fn order(action: Action, tags: &[&str]) -> Order {
    let digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let mut o: Order = serde_json::from_value(serde_json::json!({
        "order_id": "o1", "rollout_id": "r1", "env": "prod", "host": "web-1",
        "issued_at": "2026-12-01T00:00:00Z", "not_after": "2026-12-01T00:10:00Z",
        "issued_by": "ci", "action": "deploy",
        "image": format!("reg/acme/web@{digest}"),
        "ref": "v1", "run_migration": false, "app": "acme", "services": {"web": {}}
    }))
    .unwrap();
    o.action = action;
    o.tags
        .insert(digest.into(), tags.iter().map(|t| t.to_string()).collect());
    o
}

#[test]
fn deploys_and_rollbacks_are_judged_exec_and_maintenance_never() {
    let policy = ReleasePolicy {
        freeze: vec![freeze::Window::weekly("Fri 16:00", "Mon 08:00", "UTC", "weekend").unwrap()],
        refs: Some(refs::RefRules {
            allow: vec![refs::Form::Semver],
            prerelease: false,
        }),
        overridable: false,
    };
    let saturday = Timestamp::parse("2026-12-05T12:00:00Z").unwrap();
    let wednesday = Timestamp::parse("2026-12-09T12:00:00Z").unwrap();
    let cases = [
        (
            "deploy v1.0.0, Wed",
            order(Action::Deploy, &["v1.0.0"]),
            wednesday,
        ),
        (
            "deploy v1.0.0, Sat",
            order(Action::Deploy, &["v1.0.0"]),
            saturday,
        ),
        (
            "deploy rc, Sat",
            order(Action::Deploy, &["v1.1.0-rc.1"]),
            saturday,
        ),
        (
            "deploy rc, Wed",
            order(Action::Deploy, &["v1.1.0-rc.1"]),
            wednesday,
        ),
        (
            "rollback v1.0.0, Sat",
            order(Action::Rollback, &["v1.0.0"]),
            saturday,
        ),
        (
            "rollback untagged, Wed",
            order(Action::Rollback, &[]),
            wednesday,
        ),
        ("exec untagged, Sat", order(Action::Exec, &[]), saturday),
        (
            "maintenance, Sat",
            order(Action::Maintenance, &[]),
            saturday,
        ),
    ];
    let out: String = cases
        .iter()
        .map(|(label, o, now)| {
            let verdict = match check(&policy, o, *now) {
                Ok(None) => "admitted".to_string(),
                Ok(Some(w)) => format!("admitted, overriding {:?}", w.reason),
                Err(Refused::Frozen { window, .. }) => format!("frozen by {:?}", window.reason),
                Err(Refused::Ref(d)) => format!("{} ({})", d.rule, d.tags.join(" ")),
            };
            format!("{label:<26} {verdict}\n")
        })
        .collect();
    expect![[r#"
        deploy v1.0.0, Wed         admitted
        deploy v1.0.0, Sat         frozen by "weekend"
        deploy rc, Sat             frozen by "weekend"
        deploy rc, Wed             prerelease (v1.1.0-rc.1)
        rollback v1.0.0, Sat       frozen by "weekend"
        rollback untagged, Wed     allow ()
        exec untagged, Sat         admitted
        maintenance, Sat           admitted
    "#]]
    .assert_eq(&out);
    assert!(ReleasePolicy::default().is_empty());
    assert_eq!(
        check(
            &ReleasePolicy::default(),
            &order(Action::Deploy, &[]),
            saturday
        ),
        Ok(None)
    );
}

#[test]
fn only_a_host_with_approvals_lets_an_order_override_a_freeze() {
    let policy = |overridable| ReleasePolicy {
        freeze: vec![freeze::Window::weekly("Fri 16:00", "Mon 08:00", "UTC", "weekend").unwrap()],
        refs: Some(refs::RefRules {
            allow: vec![refs::Form::Semver],
            prerelease: false,
        }),
        overridable,
    };
    let saturday = Timestamp::parse("2026-12-05T12:00:00Z").unwrap();
    let overriding = |tags: &[&str]| {
        let mut o = order(Action::Deploy, tags);
        o.override_freeze = Some("hotfix for the outage".into());
        o
    };
    let cases = [
        ("override, no approvals", overriding(&["v1.0.0"]), false),
        ("override, approvals", overriding(&["v1.0.0"]), true),
        ("override of an rc", overriding(&["v1.1.0-rc.1"]), true),
        (
            "no override, approvals",
            order(Action::Deploy, &["v1.0.0"]),
            true,
        ),
    ];
    let out: String = cases
        .iter()
        .map(|(label, o, overridable)| {
            let p = policy(*overridable);
            let verdict = match check(&p, o, saturday) {
                Ok(None) => "admitted".to_string(),
                Ok(Some(w)) => format!("admitted, overriding {:?}", w.reason),
                Err(refused) => refused.to_string(),
            };
            format!("{label:<24} {verdict}\n")
        })
        .collect();
    expect![[r#"
        override, no approvals   [[freeze]] "weekend" (weekly Fri 16:00 to Mon 08:00, UTC) holds now (Sat 2026-12-05 12:00 UTC): this host takes no deploy or rollback until it ends; --override-freeze needs the env's approvals, and this host has no [approvals] to grant it
        override, approvals      admitted, overriding "weekend"
        override of an rc        [refs] prerelease denies services.web (111111111111): its only release tags are pre-releases (v1.1.0-rc.1), which this host does not take (prerelease = false)
        no override, approvals   [[freeze]] "weekend" (weekly Fri 16:00 to Mon 08:00, UTC) holds now (Sat 2026-12-05 12:00 UTC): this host takes no deploy or rollback until it ends
    "#]].assert_eq(&out);
}
