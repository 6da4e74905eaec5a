//! What messages look like to a person, and where they go.

use std::collections::BTreeMap;

use proto::Timestamp;
use proto::order::ImageRef;
use proto::wire::{
    AgentStatus, Health, Outcome, OutcomeKind, OutputStream, ServiceResult, ServiceStatus,
};

use super::*;
use crate::output::{HostErrorKind, HostRollout, Inconsistent, RolloutSummary, StatusSummary};

fn image(c: char) -> ImageRef {
    ImageRef::new("r/web", &format!("sha256:{}", c.to_string().repeat(64))).unwrap()
}

fn outcome(kind: OutcomeKind, now: char, log_tail: &[&str]) -> Outcome {
    Outcome {
        order_id: "o".into(),
        rollout_id: "r".into(),
        kind,
        failure: None,
        reason: (kind != OutcomeKind::Succeeded).then(|| "not healthy".into()),
        changed: kind == OutcomeKind::Succeeded,
        log_tail: log_tail.iter().map(|l| l.to_string()).collect(),
        services: BTreeMap::from([(
            "web".into(),
            ServiceResult {
                digest: Some(image(now).digest().to_string()),
                previous_digest: None,
                container_id: None,
            },
        )]),
        started_at: Timestamp::from_unix_secs(100),
        finished_at: Timestamp::from_unix_secs(102),
        rollback_ms: None,
        exit_code: None,
    }
}

fn out_lines(m: &Message) -> Vec<String> {
    match render(m) {
        Shown::Out(lines) => lines,
        other => panic!("not stdout: {other:?}"),
    }
}

#[test]
fn tables_align() {
    let t = table(
        &["HOST", "HEALTH"],
        &[
            vec!["a".into(), "healthy".into()],
            vec!["longer-host".into(), "-".into()],
        ],
    );
    assert_eq!(
        t,
        "HOST         HEALTH\na            healthy\nlonger-host  -\n"
    );
}

#[test]
fn images_shorten() {
    let img = format!("r/web@sha256:{}", "a".repeat(64));
    assert_eq!(short_image(&img), "r/web@sha256:aaaaaaaaaaaa");
    assert_eq!(short_image("x"), "x");
    // Image text can come from a host's labels: any text is shortened without a panic.
    assert_eq!(
        short_image("r/web@sha256:éééééééééééééé"),
        "r/web@sha256:éééééééééééé"
    );
}

#[test]
fn progress_names_its_host_and_failures_stay_on_screen() {
    let failed = Message::Outcome {
        host: "h1".into(),
        outcome: outcome(OutcomeKind::RolledBack, 'a', &["GET /healthz 500"]),
    };
    let Shown::Progress(p) = render(&failed) else {
        panic!("an outcome is progress")
    };
    assert_eq!(p.host.as_deref(), Some("h1"));
    assert!(p.ends && p.failure);
    assert_eq!(
        p.lines,
        vec![
            "h1  rolled-back in 2s: not healthy",
            "h1  last log lines of the failing container:",
            "h1    | GET /healthz 500",
        ]
    );
    let note = render(&Message::Note {
        message: "checking".into(),
    });
    assert!(matches!(note, Shown::Progress(Progress { host: None, .. })));
}

#[test]
fn status_rows_wait_for_the_verdict() {
    let down = Message::HostStatus(HostStatus::down(
        "h2",
        HostErrorKind::Unreachable,
        "unreachable: refused",
    ));
    assert_eq!(
        render(&down),
        Shown::Rows(
            Table::Status,
            vec![
                vec![
                    "h2",
                    "NO",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    "unreachable: refused"
                ]
                .into_iter()
                .map(String::from)
                .collect()
            ]
        )
    );
    let verdict = |reachable, consistent, healthy, release: &[(&str, char)], differing: &[&str]| {
        let s = StatusSummary {
            env: "staging".into(),
            hosts: 2,
            reachable,
            consistent,
            healthy,
            digests: release
                .iter()
                .map(|(_, c)| image(*c).digest().to_string())
                .collect(),
            release: release
                .iter()
                .map(|(s, c)| (s.to_string(), image(*c).digest().to_string()))
                .collect(),
            differing: differing
                .iter()
                .map(|h| Inconsistent {
                    host: h.to_string(),
                    why: "web runs cccccccccccc, not bbbbbbbbbbbb".into(),
                })
                .collect(),
        };
        out_lines(&Message::Summary(Summary::new(
            "status",
            SummaryBody::Status(s),
        )))
    };
    let one = &[("api", 'a'), ("web", 'a')][..];
    let two = &[("api", 'a'), ("web", 'b')][..];
    assert_eq!(
        verdict(2, true, true, one, &[]),
        ["staging: one release everywhere (aaaaaaaaaaaa), all healthy"]
    );
    assert_eq!(
        verdict(2, true, true, two, &[]),
        ["staging: one release everywhere (api aaaaaaaaaaaa, web bbbbbbbbbbbb), all healthy"]
    );
    assert_eq!(
        verdict(2, true, false, one, &[]),
        ["staging: one release everywhere (aaaaaaaaaaaa), NOT all healthy"]
    );
    assert_eq!(
        verdict(2, false, true, two, &["h2"]),
        [
            "staging: NOT one release everywhere: h2 differs from (api aaaaaaaaaaaa, web bbbbbbbbbbbb)",
            "  h2: web runs cccccccccccc, not bbbbbbbbbbbb",
        ]
    );
    assert_eq!(
        verdict(1, false, false, one, &[]),
        ["staging: 1 of 2 host(s) unreachable"]
    );
}

#[test]
fn a_status_with_hostile_labels_is_printed_as_text() {
    // `ref` and `previous_digest` come from container labels, which anyone with the Docker
    // socket sets, and a reply may come from any agent: text, never terminal control, and no
    // panic on a digest that is not hex.
    let reference = "v1 🦀 \u{1b}[31mred\u{1b}[0m\u{7}";
    // One ASCII byte first: cutting at 12 bytes would split a character.
    let odd_digest = "sha256:aéééééééééééééééééééé🦀";
    let status = AgentStatus {
        agent_version: "0.1.0 \u{1b}]0;title\u{7}".into(),
        host: "h1".into(),
        env: "staging".into(),
        uptime_secs: 5,
        services: vec![ServiceStatus {
            container_id: Some("c0ffee".into()),
            image: Some(image('a')),
            reference: Some(reference.into()),
            last_outcome: Some(OutcomeKind::Succeeded),
            last_order: Some("o\u{1b}[2J".into()),
            previous_digest: Some(odd_digest.into()),
            ..ServiceStatus::new(
                "acme",
                "wéb🦀",
                Health::Healthy,
                Timestamp::from_unix_secs(100),
            )
        }],
        running: vec![],
        approvals: None,
        host_health: None,
    };
    let message = Message::HostStatus(HostStatus::up("h1", &status, "acme"));
    let Shown::Rows(Table::Status, rows) = render(&message) else {
        panic!("status is a table row")
    };
    assert_eq!(
        rows,
        vec![vec![
            "h1".to_string(),
            "yes".into(),
            "0.1.0 \\u{1b}]0;title\\u{7}".into(),
            "wéb🦀".into(),
            "v1 🦀 \\u{1b}[31mred\\u{1b}[0m\\u{7}".into(),
            "aaaaaaaaaaaa".into(),
            "healthy".into(),
            Timestamp::from_unix_secs(100).to_string(),
            "succeeded".into(),
        ]]
    );
    let printed = table(Table::Status.header(), &rows);
    assert!(
        !printed.contains('\u{1b}') && !printed.contains('\u{7}'),
        "{printed}"
    );

    // JSON escapes control characters itself and keeps the rest as it came.
    let json = serde_json::to_string(&message).unwrap();
    assert!(
        !json.contains('\u{1b}') && !json.contains('\u{7}'),
        "raw control characters in {json}"
    );
    assert!(
        json.contains(r#""ref":"v1 🦀 \u001b[31mred\u001b[0m\u0007""#),
        "{json}"
    );
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["services"][0]["ref"], reference);
    assert_eq!(back["services"][0]["previous_digest"], odd_digest);

    // A push that displaced a container with such a digest label says what it was.
    let displaced = HostRollout {
        host: "h1".into(),
        state: HostState::Succeeded {
            changed: true,
            previous: Some(odd_digest.into()),
        },
        outcome: Some(outcome(OutcomeKind::Succeeded, 'b', &[])),
        run_migration: false,
        rollback: None,
        rollback_outcome: None,
    };
    let summary = RolloutSummary {
        env: "staging".into(),
        rollout_id: "r".into(),
        reference: "v2".into(),
        image: image('b'),
        images: BTreeMap::new(),
        result: RolloutResult::Succeeded,
        elapsed_ms: 1000,
        hosts: vec![displaced],
        inconsistent: vec![],
    };
    let lines = out_lines(&Message::Summary(Summary::new(
        "push",
        SummaryBody::Rollout(summary),
    )));
    assert_eq!(lines[1], "  h1: changed to bbbbbbbbbbbb (was aééééééééééé)");
}

#[test]
fn a_rollout_summary_says_what_changed_where() {
    let mut first = HostRollout {
        host: "h1".into(),
        state: HostState::Succeeded {
            changed: true,
            previous: Some(image('a').digest().to_string()),
        },
        outcome: Some(outcome(OutcomeKind::Succeeded, 'b', &[])),
        run_migration: true,
        rollback: None,
        rollback_outcome: None,
    };
    let second = HostRollout {
        host: "h2".into(),
        state: HostState::Failed {
            kind: OutcomeKind::RolledBack,
            reason: Some("not healthy".into()),
        },
        outcome: Some(outcome(OutcomeKind::RolledBack, 'a', &["boom"])),
        run_migration: false,
        rollback: None,
        rollback_outcome: None,
    };
    let summary = |hosts: Vec<HostRollout>, result, inconsistent| RolloutSummary {
        env: "staging".into(),
        rollout_id: "r".into(),
        reference: "v2".into(),
        image: image('b'),
        images: BTreeMap::new(),
        result,
        elapsed_ms: 4200,
        hosts,
        inconsistent,
    };
    let lines = |s| {
        out_lines(&Message::Summary(Summary::new(
            "push",
            SummaryBody::Rollout(s),
        )))
    };
    assert_eq!(
        lines(summary(
            vec![first.clone()],
            RolloutResult::Succeeded,
            vec![]
        )),
        [
            "push v2 (r/web@sha256:bbbbbbbbbbbb) to staging: succeeded on 1 host(s) in 4s200ms",
            "  h1: changed to bbbbbbbbbbbb (was aaaaaaaaaaaa), migration ran here",
        ]
    );
    first.rollback = Some(HostState::Succeeded {
        changed: true,
        previous: None,
    });
    first.rollback_outcome = Some(outcome(OutcomeKind::Succeeded, 'a', &[]));
    assert_eq!(
        lines(summary(
            vec![first.clone(), second.clone()],
            RolloutResult::RolledBack,
            vec![]
        )),
        [
            "push v2 (r/web@sha256:bbbbbbbbbbbb) to staging: FAILED after 4s200ms; every host is back on its previous version (exit 1)",
            "  h1: changed to bbbbbbbbbbbb (was aaaaaaaaaaaa), migration ran here; rolled back to aaaaaaaaaaaa: succeeded",
            "  h2: rolled-back in 2s: not healthy; serving aaaaaaaaaaaa",
            "    last log lines of the failing container:",
            "    | boom",
        ]
    );
    let bad = vec![Inconsistent {
        host: "h1".into(),
        why: "outcome unknown: gone".into(),
    }];
    let text = lines(summary(vec![second], RolloutResult::Inconsistent, bad));
    assert!(text[0].ends_with("needs a human (exit 2)"), "{text:?}");
    assert_eq!(
        text.last().unwrap(),
        "  NOT CONSISTENT: h1: outcome unknown: gone"
    );
}

#[test]
fn a_stopped_command_explains_itself_on_stderr() {
    let stopped = |result| {
        render(&Message::Summary(Summary::new(
            "push",
            SummaryBody::Stopped {
                result,
                error: "no signing key".into(),
            },
        )))
    };
    assert_eq!(
        stopped(ExitClass::Refused),
        Shown::Err(vec![
            "deployctl: no signing key".into(),
            "deployctl: nothing was changed.".into()
        ])
    );
    assert_eq!(
        stopped(ExitClass::Usage),
        Shown::Err(vec!["deployctl: no signing key".into()])
    );
}

#[test]
fn text_from_hosts_cannot_drive_the_terminal() {
    let table = [
        ("plain line", "plain line"),
        ("tab\tkept", "tab\tkept"),
        (
            "\u{1b}[2J\u{1b}]0;owned\u{7}",
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}",
        ),
        ("cr\roverwrite", "cr\\u{d}overwrite"),
        ("ünïcödé ok", "ünïcödé ok"),
    ];
    for (input, want) in table {
        assert_eq!(printable(input), want, "{input:?}");
    }
    let logs = Message::Logs {
        host: "h1".into(),
        service: "web".into(),
        container: "acme-prod-web".into(),
        lines: vec!["evil \u{1b}[31mred".into()],
    };
    let shown = format!("{:?}", render(&logs));
    assert!(!shown.contains('\u{1b}'), "{shown}");
}

#[test]
fn a_release_of_several_images_shows_each_services_digest() {
    let api = ImageRef::new("r/api", &format!("sha256:{}", "a".repeat(64))).unwrap();
    let mut entry = crate::release::tests::journal_entry(
        "o",
        1,
        "acme",
        "v2",
        &[("api", api.clone()), ("web", image('b'))],
        Some(OutcomeKind::Succeeded),
    );
    entry.refs = BTreeMap::from([("web".to_string(), "v3".to_string())]);
    let Shown::Rows(Table::History, rows) = render(&Message::History {
        host: "h1".into(),
        entry: entry.clone(),
    }) else {
        panic!("history is a table row")
    };
    assert_eq!(
        rows[0][3..5],
        ["v2 web=v3", "api aaaaaaaaaaaa, web bbbbbbbbbbbb"]
    );
    // One image for every service: the one digest, as always.
    entry.images.clear();
    entry.refs.clear();
    let Shown::Rows(_, rows) = render(&Message::History {
        host: "h1".into(),
        entry,
    }) else {
        panic!("history is a table row")
    };
    assert_eq!(rows[0][3..5], ["v2", "aaaaaaaaaaaa"]);

    let submitted = Message::Submitted {
        host: "h1".into(),
        order_id: "o1".into(),
        action: proto::order::Action::Deploy,
        image: api,
        images: BTreeMap::from([("web".to_string(), image('b'))]),
        run_migration: true,
    };
    let Shown::Progress(p) = render(&submitted) else {
        panic!("progress")
    };
    assert_eq!(
        p.lines,
        [
            "h1  deploy r/api@sha256:aaaaaaaaaaaa, web r/web@sha256:bbbbbbbbbbbb with migration (order o1)"
        ]
    );
}

#[test]
fn a_host_line_names_each_services_digest_when_they_differ() {
    let mut o = outcome(OutcomeKind::Succeeded, 'a', &[]);
    let result = |digest: char, previous: char| ServiceResult {
        digest: Some(image(digest).digest().to_string()),
        previous_digest: Some(image(previous).digest().to_string()),
        container_id: None,
    };
    o.services = BTreeMap::from([
        ("api".into(), result('a', 'c')),
        ("web".into(), result('b', 'c')),
    ]);
    let host = HostRollout {
        host: "h1".into(),
        state: HostState::Succeeded {
            changed: true,
            previous: Some(image('c').digest().to_string()),
        },
        outcome: Some(o),
        run_migration: false,
        rollback: None,
        rollback_outcome: None,
    };
    let summary = RolloutSummary {
        env: "staging".into(),
        rollout_id: "r".into(),
        reference: "v2".into(),
        image: image('a'),
        images: BTreeMap::from([("web".to_string(), image('b'))]),
        result: RolloutResult::Succeeded,
        elapsed_ms: 1000,
        hosts: vec![host],
        inconsistent: vec![],
    };
    assert_eq!(
        out_lines(&Message::Summary(Summary::new(
            "push",
            SummaryBody::Rollout(summary)
        ))),
        [
            "push v2 (r/web@sha256:aaaaaaaaaaaa, web r/web@sha256:bbbbbbbbbbbb) to staging: succeeded on 1 host(s) in 1s",
            "  h1: changed to api aaaaaaaaaaaa, web bbbbbbbbbbbb (was cccccccccccc)",
        ]
    );
}

#[test]
fn an_execs_lines_go_where_the_command_wrote_them_and_its_summary_to_stderr() {
    let line = |stream, line: &str| {
        render(&Message::Output {
            host: "h1".into(),
            stream,
            line: line.into(),
        })
    };
    assert_eq!(
        line(OutputStream::Stdout, "v1"),
        Shown::Out(vec!["v1".into()])
    );
    assert_eq!(
        line(OutputStream::Stderr, "warn \u{1b}[31m"),
        Shown::Err(vec!["warn \\u{1b}[31m".into()])
    );
    let summary = |result, code: Option<i64>, reason: Option<&str>| {
        let body = crate::output::ExecSummary {
            env: "staging".into(),
            host: "h1".into(),
            service: "web".into(),
            argv: vec!["sh".into(), "-c".into(), "exit 7".into()],
            order_id: "o".into(),
            image: image('a'),
            result,
            command_exit_code: code,
            reason: reason.map(str::to_string),
            elapsed_ms: 1500,
        };
        match render(&Message::Summary(Summary::new(
            "exec",
            SummaryBody::Exec(body),
        ))) {
            Shown::Err(lines) => lines.join("\n"),
            other => panic!("not stderr: {other:?}"),
        }
    };
    use crate::output::ExecResult::*;
    let head = "exec `sh -c 'exit 7'` on h1 (web in r/web@sha256:aaaaaaaaaaaa)";
    assert_eq!(
        summary(Exited, Some(0), None),
        format!("{head}: exited 0 after 1.5s")
    );
    assert_eq!(
        summary(Exited, Some(7), None),
        format!("{head}: exited with code 7 after 1.5s (deployctl exits 7)")
    );
    assert_eq!(
        summary(Refused, None, Some("not-running: gone")),
        format!("deployctl: {head}: refused, nothing ran (exit 3): not-running: gone")
    );
    assert_eq!(
        summary(Failed, None, Some("killed")),
        format!("deployctl: {head}: did not run to its end (exit 1): killed")
    );
}

#[test]
fn a_services_health_says_why_it_is_not_healthy() {
    use proto::wire::HealthReason;
    // (health, reason, exit code, shown)
    let cases = [
        (Health::Healthy, None, None, "healthy"),
        (
            Health::Stopped,
            Some(HealthReason::Exited),
            Some(137),
            "stopped (exited 137)",
        ),
        (
            Health::CrashLoop,
            Some(HealthReason::Exited),
            Some(1),
            "crash-loop (exited 1)",
        ),
        (
            Health::Unhealthy,
            Some(HealthReason::OomKilled),
            Some(137),
            "unhealthy (oom-killed 137)",
        ),
        (
            Health::Unhealthy,
            Some(HealthReason::ProbeFailed),
            None,
            "unhealthy (probe-failed)",
        ),
        (
            Health::Missing,
            Some(HealthReason::Removed),
            None,
            "missing (removed)",
        ),
    ];
    for (health, reason, exit_code, shown) in cases {
        let svc = ServiceStatus {
            reason,
            exit_code,
            ..ServiceStatus::new("acme", "web", health, Timestamp::from_unix_secs(1))
        };
        assert_eq!(health_shown(&svc), shown);
    }
}
