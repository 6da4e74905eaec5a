//! Table tests of the rollout's decisions.

use super::*;
use crate::release::tests::journal_entry;
use crate::release::{Digests, Pin};
use proto::wire::{Health, RefusalKind, ServiceResult, ServiceStatus};

fn ok(prev: Option<&str>) -> HostState {
    HostState::Succeeded {
        changed: true,
        previous: prev.map(String::from),
    }
}
fn failed() -> HostState {
    HostState::Failed {
        kind: OutcomeKind::RolledBack,
        reason: Some("health".into()),
    }
}
fn refused() -> HostState {
    HostState::Refused {
        refusal: Refusal {
            kind: RefusalKind::RolloutInProgress,
            message: "held".into(),
            holder: None,
        },
    }
}

#[test]
fn batches_put_the_first_host_alone() {
    let cases: &[(usize, usize, &[&[usize]])] = &[
        (0, 1, &[]),
        (1, 1, &[&[0]]),
        (2, 1, &[&[0], &[1]]),
        (3, 2, &[&[0], &[1, 2]]),
        (4, 2, &[&[0], &[1, 2], &[3]]),
        (5, 10, &[&[0], &[1, 2, 3, 4]]),
        (3, 0, &[&[0], &[1], &[2]]),
    ];
    for (n, p, want) in cases {
        let want: Vec<Vec<usize>> = want.iter().map(|b| b.to_vec()).collect();
        assert_eq!(plan_batches(*n, *p), want, "{n} hosts, max_parallel {p}");
    }
}

/// A succeeded outcome with these services.
fn outcome_with(services: BTreeMap<String, ServiceResult>) -> Outcome {
    Outcome {
        order_id: "o".into(),
        rollout_id: "r".into(),
        kind: OutcomeKind::Succeeded,
        failure: None,
        reason: None,
        changed: true,
        log_tail: vec![],
        services,
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        rollback_ms: None,
        exit_code: None,
    }
}

#[test]
fn outcomes_map_to_host_states() {
    let mut o = outcome_with(BTreeMap::from([(
        "web".into(),
        ServiceResult {
            digest: Some("sha256:new".into()),
            previous_digest: Some("sha256:old".into()),
            container_id: None,
        },
    )]));
    assert_eq!(HostState::from_outcome(&o), ok(Some("sha256:old")));
    o.kind = OutcomeKind::RolledBack;
    o.changed = false;
    assert!(matches!(
        HostState::from_outcome(&o),
        HostState::Failed {
            kind: OutcomeKind::RolledBack,
            ..
        }
    ));
    o.kind = OutcomeKind::RollbackFailed;
    assert!(matches!(
        HostState::from_outcome(&o),
        HostState::Broken { .. }
    ));
    o.kind = OutcomeKind::Failed;
    o.changed = true;
    assert!(matches!(
        HostState::from_outcome(&o),
        HostState::Broken { .. }
    ));
}

#[test]
fn conclusions_follow_the_exit_code_contract() {
    let rb_ok = |i: usize| (i, ok(Some("x")));
    type Case = (
        Vec<HostState>,
        Vec<(usize, HostState)>,
        RolloutResult,
        Vec<usize>,
    );
    let cases: Vec<Case> = vec![
        // everything succeeded
        (
            vec![ok(None), ok(None)],
            vec![],
            RolloutResult::Succeeded,
            vec![],
        ),
        // first host failed and rolled itself back, second untouched
        (
            vec![failed(), HostState::Untouched],
            vec![],
            RolloutResult::RolledBack,
            vec![],
        ),
        // last batch failed, the changed hosts were rolled back
        (
            vec![ok(Some("a")), ok(Some("a")), failed()],
            vec![rb_ok(0), rb_ok(1)],
            RolloutResult::RolledBack,
            vec![],
        ),
        // refused before anything changed
        (
            vec![refused(), HostState::Untouched],
            vec![],
            RolloutResult::Refused,
            vec![],
        ),
        (
            vec![HostState::NotSent { why: "sign".into() }],
            vec![],
            RolloutResult::Refused,
            vec![],
        ),
        // refused on a later host after the first changed: rolled back
        (
            vec![ok(Some("a")), refused()],
            vec![rb_ok(0)],
            RolloutResult::RolledBack,
            vec![],
        ),
        // a rollback that failed leaves that host inconsistent
        (
            vec![ok(Some("a")), failed()],
            vec![(0, failed())],
            RolloutResult::Inconsistent,
            vec![0],
        ),
        // no previous version to go back to
        (
            vec![ok(None), failed()],
            vec![],
            RolloutResult::Inconsistent,
            vec![0],
        ),
        // the agent could not restore
        (
            vec![HostState::Broken {
                kind: OutcomeKind::RollbackFailed,
                reason: None,
            }],
            vec![],
            RolloutResult::Inconsistent,
            vec![0],
        ),
        // lost track of a host
        (
            vec![ok(Some("a")), HostState::Unknown { why: "gone".into() }],
            vec![rb_ok(0)],
            RolloutResult::Inconsistent,
            vec![1],
        ),
        // already running the new version elsewhere: nothing to roll back there
        (
            vec![
                HostState::Succeeded {
                    changed: false,
                    previous: None,
                },
                failed(),
            ],
            vec![],
            RolloutResult::RolledBack,
            vec![],
        ),
    ];
    for (states, rollbacks, result, bad) in cases {
        let c = conclude(&states, &rollbacks.clone().into_iter().collect());
        assert_eq!(c.result, result, "{states:?} {rollbacks:?}");
        assert_eq!(
            c.inconsistent.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            bad,
            "{states:?}"
        );
    }
}

fn entry(
    order_id: &str,
    secs: u64,
    digest_byte: char,
    outcome: Option<OutcomeKind>,
    app: &str,
) -> HistoryEntry {
    release_entry(order_id, secs, &[("web", digest_byte)], outcome, app)
}

/// A journal entry of a release: each service on `r/<service>` at its digest, ref `ref-<c>` of
/// the first service's digest.
fn release_entry(
    order_id: &str,
    secs: u64,
    release: &[(&str, char)],
    outcome: Option<OutcomeKind>,
    app: &str,
) -> HistoryEntry {
    let images: Vec<(&str, ImageRef)> = release.iter().map(|(s, c)| (*s, img(s, *c))).collect();
    let reference = format!("ref-{}", release[0].1);
    journal_entry(order_id, secs, app, &reference, &images, outcome)
}

fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// `r/<service>@sha256:<c…>`
fn img(service: &str, c: char) -> ImageRef {
    ImageRef::new(&format!("r/{service}"), &d(c)).unwrap()
}

fn digests(release: &[(&str, char)]) -> Digests {
    release
        .iter()
        .map(|(s, c)| (s.to_string(), d(*c)))
        .collect()
}

/// The previous healthy release, as (service, digest byte) pairs and its ref.
fn shown(r: Option<Release>) -> Option<(Vec<(String, char)>, String)> {
    let r = r?;
    let pairs = r
        .services
        .iter()
        .map(|(s, p)| (s.clone(), p.image.digest().chars().last().unwrap_or('?')))
        .collect();
    Some((pairs, r.reference))
}

fn pairs(release: &[(&str, char)]) -> Vec<(String, char)> {
    release.iter().map(|(s, c)| (s.to_string(), *c)).collect()
}

#[test]
fn previous_healthy_skips_failures_other_apps_and_the_current_digest() {
    let s = Some(OutcomeKind::Succeeded);
    let mut exec = entry("05", 5, 'f', s, "web");
    exec.action = Action::Exec;
    let history = vec![
        entry("03", 3, 'c', Some(OutcomeKind::RolledBack), "web"),
        entry("02", 2, 'b', s, "web"),
        entry("01", 1, 'a', s, "web"),
        entry("04", 4, 'e', s, "other"),
        // an exec that exited 0 is no healthy deploy
        exec,
    ];
    let web = &["web"][..];
    let previous = |history: &[HistoryEntry], current: &[(&str, char)]| {
        shown(previous_healthy(history, "web", web, &digests(current)))
    };
    let a = Some((pairs(&[("web", 'a')]), "ref-a".to_string()));
    assert_eq!(previous(&history, &[("web", 'b')]), a);
    assert_eq!(previous(&history, &[]), a);
    assert_eq!(
        previous(&history, &[("web", 'a')]),
        Some((pairs(&[("web", 'b')]), "ref-b".to_string()))
    );
    assert_eq!(previous(&history[..2], &[("web", 'b')]), None);
    assert_eq!(previous(&[], &[]), None);
}

#[test]
fn the_previous_healthy_release_is_every_services_digest_as_it_was() {
    let s = Some(OutcomeKind::Succeeded);
    let services = &["api", "web"][..];
    let history = vec![
        // newest first in time: api moved alone, then both; web's digest repeats
        release_entry("04", 4, &[("api", 'c'), ("web", 'b')], s, "acme"),
        release_entry("03", 3, &[("api", 'b'), ("web", 'b')], s, "acme"),
        release_entry(
            "02",
            2,
            &[("api", 'a'), ("web", 'e')],
            Some(OutcomeKind::RolledBack),
            "acme",
        ),
        release_entry("01", 1, &[("api", 'a'), ("web", 'a')], s, "acme"),
        // an order from before api existed cannot be rolled out again
        release_entry("00", 0, &[("web", 'f')], s, "acme"),
    ];
    // (what runs now, the previous healthy release)
    type Case<'a> = (&'a [(&'a str, char)], Option<&'a [(&'a str, char)]>);
    let cases: Vec<Case> = vec![
        (
            &[("api", 'c'), ("web", 'b')],
            Some(&[("api", 'b'), ("web", 'b')]),
        ),
        // one service differs from the newest: that newest release is the previous one
        (
            &[("api", 'b'), ("web", 'b')],
            Some(&[("api", 'c'), ("web", 'b')]),
        ),
        (
            &[("api", 'c'), ("web", 'a')],
            Some(&[("api", 'c'), ("web", 'b')]),
        ),
        (&[], Some(&[("api", 'b'), ("web", 'b')])),
    ];
    for (current, want) in cases {
        let got = shown(previous_healthy(
            &history,
            "acme",
            services,
            &digests(current),
        ));
        assert_eq!(got.map(|(p, _)| p), want.map(pairs), "now {current:?}");
    }
    let oldest = shown(previous_healthy(
        &history[3..],
        "acme",
        services,
        &digests(&[("api", 'a'), ("web", 'a')]),
    ));
    assert_eq!(
        oldest, None,
        "the entry without api is no release of api and web"
    );
}

fn holder(id: &str) -> LockHolder {
    LockHolder {
        order_id: id.into(),
        rollout_id: "r".into(),
        signer: "s".into(),
        issued_by: "ci".into(),
        since: Timestamp::now(),
    }
}

/// A host running, for app `web`, each service at its digest (as ref `v-<c>`), with these jobs
/// running.
fn status_of(release: &[(&str, char)], running: &[&str]) -> AgentStatus {
    AgentStatus {
        agent_version: "1".into(),
        host: "h".into(),
        env: "e".into(),
        uptime_secs: 1,
        services: release
            .iter()
            .map(|(service, c)| ServiceStatus {
                image: Some(img(service, *c)),
                reference: Some(format!("v-{c}")),
                ..ServiceStatus::new("web", service, Health::Healthy, Timestamp::now())
            })
            .collect(),
        running: running.iter().map(|id| holder(id)).collect(),
        approvals: None,
        host_health: None,
    }
}

/// A host running `c` for service `web` of app `web`, with these jobs running.
fn status(c: Option<char>, running: &[&str]) -> AgentStatus {
    match c {
        Some(c) => status_of(&[("web", c)], running),
        None => status_of(&[], running),
    }
}

fn release_of(services: &[(&str, char)]) -> Release {
    let pins = services.iter().map(|(s, c)| {
        let pin = Pin {
            image: img(s, *c),
            reference: format!("ref-{c}"),
        };
        (s.to_string(), pin)
    });
    Release::new(format!("ref-{}", services[0].1), pins.collect(), None).unwrap()
}

#[test]
fn a_host_joins_by_a_new_order_by_following_or_not_at_all() {
    let mut migrated = entry("m", 5, 'b', None, "web");
    migrated.run_migration = true;
    let mut exec = entry("exec", 7, 'b', None, "web");
    exec.action = Action::Exec;
    let history = vec![
        entry("same", 1, 'b', None, "web"),
        entry("other-digest", 2, 'c', None, "web"),
        entry("other-app", 4, 'e', None, "other"),
        migrated,
        release_entry("both", 6, &[("api", 'a'), ("web", 'b')], None, "web"),
        exec,
    ];
    let follow = |id: &str, run_migration| {
        Ok(Start::Follow {
            order_id: id.into(),
            run_migration,
        })
    };
    // (jobs running, the rollout's release, how the host joins or the jobs in the way)
    type Case<'a> = (
        &'a [&'a str],
        &'a [(&'a str, char)],
        Result<Start, Vec<&'a str>>,
    );
    let cases: Vec<Case> = vec![
        (&[], &[("web", 'b')], Ok(Start::Submit)),
        (&["other-app"], &[("web", 'b')], Ok(Start::Submit)),
        (&["same"], &[("web", 'b')], follow("same", false)),
        (&["m"], &[("web", 'b')], follow("m", true)),
        (
            &["other-app", "same"],
            &[("web", 'b')],
            follow("same", false),
        ),
        (&["same"], &[("web", 'c')], Err(vec!["same"])),
        (
            &["other-digest"],
            &[("web", 'b')],
            Err(vec!["other-digest"]),
        ),
        // unknown to the journal: assumed to matter
        (&["99"], &[("web", 'b')], Err(vec!["99"])),
        (&["same", "99"], &[("web", 'b')], Err(vec!["99"])),
        // a release of two images: followed only when every service's digest is the same
        (
            &["both"],
            &[("api", 'a'), ("web", 'b')],
            follow("both", false),
        ),
        (&["both"], &[("api", 'c'), ("web", 'b')], Err(vec!["both"])),
        (&["same"], &[("api", 'a'), ("web", 'b')], Err(vec!["same"])),
        // an exec in the very digest holds the service: nothing to follow
        (&["exec"], &[("web", 'b')], Err(vec!["exec"])),
    ];
    for (running, release, want) in cases {
        let st = status(Some('a'), running);
        let got = start_for(&st, &history, "web", &release_of(release))
            .map_err(|held| held.iter().map(|h| h.order_id.as_str()).collect::<Vec<_>>());
        assert_eq!(got, want, "running {running:?}, rolling out {release:?}");
    }
}

#[test]
fn rollback_goes_where_every_host_agrees() {
    let s = Some(OutcomeKind::Succeeded);
    let a_then_b = [entry("01", 1, 'a', s, "web"), entry("02", 2, 'b', s, "web")];
    let a_then_b: &[HistoryEntry] = &a_then_b;
    let only_b: &[HistoryEntry] = &[entry("02", 2, 'b', s, "web")];
    let on_b = status(Some('b'), &[]);
    let on_a = status(Some('a'), &[]);
    let two = [
        release_entry("01", 1, &[("api", 'a'), ("web", 'a')], s, "web"),
        release_entry("02", 2, &[("api", 'b'), ("web", 'b')], s, "web"),
    ];
    let two: &[HistoryEntry] = &two;
    let other_web = [
        release_entry("01", 1, &[("api", 'a'), ("web", 'c')], s, "web"),
        release_entry("02", 2, &[("api", 'b'), ("web", 'b')], s, "web"),
    ];
    let other_web: &[HistoryEntry] = &other_web;
    let on_two_b = status_of(&[("api", 'b'), ("web", 'b')], &[]);
    type Case<'a> = (
        &'a [&'a str],
        Vec<(&'a str, &'a AgentStatus, &'a [HistoryEntry])>,
        Result<&'a [(&'a str, char)], &'a str>,
    );
    let web = &["web"][..];
    let both = &["api", "web"][..];
    let cases: Vec<Case> = vec![
        (
            web,
            vec![("h1", &on_b, a_then_b), ("h2", &on_b, a_then_b)],
            Ok(&[("web", 'a')]),
        ),
        // on a already (someone rolled back by hand): the previous healthy one is b
        (web, vec![("h1", &on_a, a_then_b)], Ok(&[("web", 'b')])),
        (
            web,
            vec![("h1", &on_b, a_then_b), ("h2", &on_a, a_then_b)],
            Err("h1: ref-a (aaaaaaaaaaaa)"),
        ),
        (
            web,
            vec![("h1", &on_b, a_then_b), ("h2", &on_b, only_b)],
            Err("h2: no earlier healthy release"),
        ),
        (web, vec![], Err("--to REF")),
        (
            both,
            vec![("h1", &on_two_b, two), ("h2", &on_two_b, two)],
            Ok(&[("api", 'a'), ("web", 'a')]),
        ),
        // the same api everywhere, but one host's previous web differs: no common release
        (
            both,
            vec![("h1", &on_two_b, two), ("h2", &on_two_b, other_web)],
            Err("h2: ref-a (api aaaaaaaaaaaa, web cccccccccccc)"),
        ),
    ];
    for (services, hosts, want) in cases {
        let got = rollback_target(&hosts, "web", services);
        match want {
            Ok(release) => assert_eq!(
                shown(got.ok()).map(|(p, _)| p),
                Some(pairs(release)),
                "{hosts:?}"
            ),
            Err(text) => {
                let err = got.unwrap_err();
                assert!(err.contains(text) && err.contains("--to"), "{err}");
            }
        }
    }
}

/// api and web of app `web`, in their own repositories `r/api` and `r/web`.
fn two_services() -> DeployConfig {
    DeployConfig::parse(
        "app = \"web\"\nimage = \"r/api\"\n[services.api]\n[services.web]\nimage = \"r/web\"\n",
        std::path::Path::new("deploy.toml"),
    )
    .unwrap()
}

/// An outcome whose services ran these digests before the order.
fn outcome_before(previous: &[(&str, char)]) -> Option<Outcome> {
    let services = previous.iter().map(|(s, c)| {
        let r = ServiceResult {
            digest: Some(d('f')),
            previous_digest: Some(d(*c)),
            container_id: None,
        };
        (s.to_string(), r)
    });
    Some(outcome_with(services.collect()))
}

#[test]
fn reverts_put_each_service_back_on_the_digest_it_ran() {
    let cfg = two_services();
    let on_ab = status_of(&[("api", 'a'), ("web", 'b')], &[]);
    let on_cc = status_of(&[("api", 'c'), ("web", 'c')], &[]);
    let web_only = status_of(&[("web", 'b')], &[]);
    // h0 changed: back to api a / web b, by their refs; h1 changed, its outcome names what it
    // ran (the status was read while a followed job ran): api e by its digest, web c by its
    // ref; h2 failed by itself; h3 changed on api's first deploy: no way back.
    let states = vec![ok(Some(&d('a'))), ok(None), failed(), ok(None)];
    let outcomes = vec![
        None,
        outcome_before(&[("api", 'e'), ("web", 'c')]),
        None,
        None,
    ];
    let before = vec![&on_ab, &on_cc, &on_ab, &web_only];
    let plan = revert_plan(&states, &outcomes, &before, &cfg);
    /// (service, image, ref)
    type Pins = Vec<(String, String, String)>;
    let got: Vec<(usize, Pins, String)> = plan
        .iter()
        .map(|r| {
            let pins = r
                .release
                .services
                .iter()
                .map(|(s, p)| (s.clone(), p.image.to_string(), p.reference.clone()));
            (r.host, pins.collect(), r.release.reference.clone())
        })
        .collect();
    let pin = |s: &str, c: char, r: &str| (s.to_string(), img(s, c).to_string(), r.to_string());
    assert_eq!(
        got,
        vec![
            (
                0,
                vec![pin("api", 'a', "v-a"), pin("web", 'b', "v-b")],
                "v-a".to_string()
            ),
            (
                1,
                vec![pin("api", 'e', &d('e')), pin("web", 'c', "v-c")],
                d('e')
            ),
        ]
    );
    let order_fields = &plan[0].release;
    assert_eq!(
        order_fields.refs(),
        BTreeMap::from([("web".into(), "v-b".into())])
    );
    assert_eq!(
        order_fields.images(),
        BTreeMap::from([("web".into(), img("web", 'b'))])
    );
}

#[test]
fn each_order_carries_the_tags_of_its_own_digests() {
    let cfg = two_services();
    let spec = RolloutSpec {
        rollout_id: "r".into(),
        env: "e".into(),
        action: Action::Deploy,
        release: release_of(&[("api", 'a'), ("web", 'b')]),
        issued_by: "ci".into(),
        migrate_first: false,
        rerun_migration: false,
        tags: BTreeMap::from([
            (d('a'), vec!["v1.0.0".to_string()]),
            (
                d('b'),
                vec!["2023.06.1".to_string(), "ephemeral-x".to_string()],
            ),
            (d('c'), vec!["v0.9.0".to_string()]),
        ]),
        override_freeze: None,
    };
    let peer = Peer {
        host: "h".into(),
        env: "e".into(),
        agent_version: "1".into(),
        host_key: None,
    };
    let order = build_order(&cfg, &spec, &peer, Action::Deploy, &spec.release, false);
    assert_eq!(
        order.tags,
        BTreeMap::from([
            (d('a'), vec!["v1.0.0".to_string()]),
            (
                d('b'),
                vec!["2023.06.1".to_string(), "ephemeral-x".to_string()]
            ),
        ])
    );
    // A revert to api c / web d: c's tags, and none for d, which has none.
    let back = release_of(&[("api", 'c'), ("web", 'd')]);
    let order = build_order(&cfg, &spec, &peer, Action::Rollback, &back, false);
    assert_eq!(
        order.tags,
        BTreeMap::from([(d('c'), vec!["v0.9.0".to_string()])])
    );
}
