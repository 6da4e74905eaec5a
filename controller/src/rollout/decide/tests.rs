//! Table tests of the rollout's decisions.

use super::*;
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

#[test]
fn outcomes_map_to_host_states() {
    let mut o = Outcome {
        order_id: "o".into(),
        rollout_id: "r".into(),
        kind: OutcomeKind::Succeeded,
        failure: None,
        reason: None,
        changed: true,
        log_tail: vec![],
        services: BTreeMap::from([(
            "web".into(),
            ServiceResult {
                digest: Some("sha256:new".into()),
                previous_digest: Some("sha256:old".into()),
                container_id: None,
            },
        )]),
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        rollback_ms: None,
        exit_code: None,
    };
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
fn rollback_targets_are_the_hosts_this_rollout_changed() {
    let states = vec![
        ok(Some("sha256:a")),
        ok(None),
        HostState::Succeeded {
            changed: false,
            previous: None,
        },
        failed(),
        HostState::Untouched,
    ];
    let fallback = vec![None, Some("sha256:b".to_string()), None, None, None];
    assert_eq!(
        rollback_targets(&states, &fallback),
        vec![(0, Some("sha256:a".into())), (1, Some("sha256:b".into()))]
    );
    assert_eq!(rollback_targets(&[ok(None)], &[None]), vec![(0, None)]);
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
    HistoryEntry {
        order_id: order_id.into(),
        rollout_id: "r".into(),
        action: Action::Deploy,
        signer: "s".into(),
        issued_by: "me".into(),
        accepted_at: Timestamp::from_unix_secs(secs),
        reference: format!("ref-{digest_byte}"),
        image: ImageRef::new(
            "r/web",
            &format!("sha256:{}", digest_byte.to_string().repeat(64)),
        )
        .unwrap(),
        images: Default::default(),
        app: app.into(),
        services: vec!["web".into()],
        outcome,
        reason: None,
        duration_ms: None,
        run_migration: false,
        exit_code: None,
    }
}

fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
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
    assert_eq!(
        previous_healthy(&history, "web", Some(&d('b'))),
        Some((d('a'), "ref-a".into()))
    );
    assert_eq!(
        previous_healthy(&history, "web", None),
        Some((d('a'), "ref-a".into()))
    );
    assert_eq!(
        previous_healthy(&history, "web", Some(&d('a'))),
        Some((d('b'), "ref-b".into()))
    );
    assert_eq!(previous_healthy(&history[..2], "web", Some(&d('b'))), None);
    assert_eq!(previous_healthy(&[], "web", None), None);
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

/// A host running `c` for app `web` (as ref `v-c`), with these jobs running.
fn status(c: Option<char>, running: &[&str]) -> AgentStatus {
    AgentStatus {
        agent_version: "1".into(),
        host: "h".into(),
        env: "e".into(),
        uptime_secs: 1,
        services: c
            .map(|c| ServiceStatus {
                app: "web".into(),
                service: "web".into(),
                container_id: None,
                image: Some(ImageRef::new("r/web", &d(c)).unwrap()),
                reference: Some(format!("v-{c}")),
                health: Health::Healthy,
                since: Timestamp::now(),
                last_outcome: None,
                last_order: None,
                previous_digest: None,
            })
            .into_iter()
            .collect(),
        running: running.iter().map(|id| holder(id)).collect(),
    }
}

#[test]
fn a_host_joins_by_a_new_order_by_following_or_not_at_all() {
    let mut migrated = entry("m", 5, 'b', None, "web");
    migrated.run_migration = true;
    let mut exec = entry("exec", 6, 'b', None, "web");
    exec.action = Action::Exec;
    let history = vec![
        entry("same", 1, 'b', None, "web"),
        entry("other-digest", 2, 'c', None, "web"),
        entry("other-app", 4, 'e', None, "other"),
        migrated,
        exec,
    ];
    let follow = |id: &str, run_migration| {
        Ok(Start::Follow {
            order_id: id.into(),
            run_migration,
        })
    };
    // (jobs running, the rollout's digest, how the host joins or the jobs in the way)
    type Case<'a> = (&'a [&'a str], char, Result<Start, Vec<&'a str>>);
    let cases: Vec<Case> = vec![
        (&[], 'b', Ok(Start::Submit)),
        (&["other-app"], 'b', Ok(Start::Submit)),
        (&["same"], 'b', follow("same", false)),
        (&["m"], 'b', follow("m", true)),
        (&["other-app", "same"], 'b', follow("same", false)),
        (&["same"], 'c', Err(vec!["same"])),
        (&["other-digest"], 'b', Err(vec!["other-digest"])),
        // unknown to the journal: assumed to matter
        (&["99"], 'b', Err(vec!["99"])),
        (&["same", "99"], 'b', Err(vec!["99"])),
        // an exec in the very digest holds the service: nothing to follow
        (&["exec"], 'b', Err(vec!["exec"])),
    ];
    for (running, digest, want) in cases {
        let st = status(Some('a'), running);
        let got = start_for(&st, &history, "web", &d(digest))
            .map_err(|held| held.iter().map(|h| h.order_id.as_str()).collect::<Vec<_>>());
        assert_eq!(got, want, "running {running:?}, rolling out {digest}");
    }
}

#[test]
fn current_digest_and_ref_are_this_apps() {
    let st = status(Some('a'), &[]);
    assert_eq!(current_digest(&st, "web"), Some(d('a')));
    assert_eq!(current_digest(&st, "other"), None);
    assert_eq!(current_reference(&st, "web").as_deref(), Some("v-a"));
}

#[test]
fn rollback_goes_where_every_host_agrees() {
    let s = Some(OutcomeKind::Succeeded);
    let a_then_b = [entry("01", 1, 'a', s, "web"), entry("02", 2, 'b', s, "web")];
    let a_then_b: &[HistoryEntry] = &a_then_b;
    let only_b: &[HistoryEntry] = &[entry("02", 2, 'b', s, "web")];
    let on_b = status(Some('b'), &[]);
    let on_a = status(Some('a'), &[]);
    type Case<'a> = (
        Vec<(&'a str, &'a AgentStatus, &'a [HistoryEntry])>,
        Result<char, &'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            vec![("h1", &on_b, a_then_b), ("h2", &on_b, a_then_b)],
            Ok('a'),
        ),
        // on a already (someone rolled back by hand): the previous healthy one is b
        (vec![("h1", &on_a, a_then_b)], Ok('b')),
        (
            vec![("h1", &on_b, a_then_b), ("h2", &on_a, a_then_b)],
            Err("h1: ref-a (aaaaaaaaaaaa)"),
        ),
        (
            vec![("h1", &on_b, a_then_b), ("h2", &on_b, only_b)],
            Err("h2: no earlier healthy version"),
        ),
        (vec![], Err("--to REF")),
    ];
    for (hosts, want) in cases {
        let got = rollback_target(&hosts, "web");
        match want {
            Ok(c) => assert_eq!(got, Ok((d(c), format!("ref-{c}"))), "{hosts:?}"),
            Err(text) => {
                let err = got.unwrap_err();
                assert!(err.contains(text) && err.contains("--to"), "{err}");
            }
        }
    }
}

#[test]
fn reverts_go_back_to_the_previous_digest_by_its_ref() {
    let on_a = status(Some('a'), &[]);
    let on_c = status(Some('c'), &[]);
    let nothing = status(None, &[]);
    // h0 changed a → new: back to a as v-a; h1 changed, previous unknown to the outcome: the
    // digest it ran (v-c); h2 failed by itself; h3 changed on its first deploy: no way back.
    let states = vec![ok(Some(&d('a'))), ok(None), failed(), ok(None)];
    let before = vec![&on_a, &on_c, &on_a, &nothing];
    let plan = revert_plan(&states, &before, "web", "r/web");
    let want = vec![
        Revert {
            host: 0,
            image: ImageRef::new("r/web", &d('a')).unwrap(),
            reference: "v-a".into(),
        },
        Revert {
            host: 1,
            image: ImageRef::new("r/web", &d('c')).unwrap(),
            reference: "v-c".into(),
        },
    ];
    assert_eq!(plan, want);
    // The outcome names a previous digest the status did not show: its digest is its ref.
    let plan = revert_plan(&[ok(Some(&d('e')))], &[&on_a], "web", "r/web");
    assert_eq!(plan[0].reference, d('e'));
}
