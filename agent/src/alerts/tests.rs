//! Table tests of the pure half of `[[alerts]]`, and the outbox on a temp dir.

use std::path::Path;
use std::time::{Duration, Instant};

use expect_test::expect;
use proto::time::Timestamp;
use proto::wire::{Health, HealthReason, OutcomeKind};

use super::outbox::{MAX_PENDING, Outbox, Pending, Queue};
use super::*;
use crate::config::{AgentConfig, ConfigError};

#[test]
fn transitions_raise_the_alert_of_their_kind() {
    use Health::*;
    use HealthReason::*;
    let (exited, oom, probe, removed) = (
        Some(Exited),
        Some(OomKilled),
        Some(ProbeFailed),
        Some(Removed),
    );
    // (from, why, to, why, alert)
    let cases = [
        (Healthy, None, Unhealthy, probe, Some(AlertKind::Unhealthy)),
        (Healthy, None, Unhealthy, oom, Some(AlertKind::Unhealthy)),
        (Healthy, None, Stopped, exited, Some(AlertKind::Unhealthy)),
        (Healthy, None, Missing, removed, Some(AlertKind::Unhealthy)),
        (Healthy, None, Unknown, None, Some(AlertKind::Unhealthy)),
        (Healthy, None, CrashLoop, exited, Some(AlertKind::CrashLoop)),
        (
            Unhealthy,
            exited,
            CrashLoop,
            exited,
            Some(AlertKind::CrashLoop),
        ),
        (Stopped, exited, CrashLoop, oom, Some(AlertKind::CrashLoop)),
        (Unhealthy, exited, Healthy, None, Some(AlertKind::Recovered)),
        (CrashLoop, exited, Healthy, None, Some(AlertKind::Recovered)),
        (Missing, removed, Healthy, None, Some(AlertKind::Recovered)),
        // Failing its probe, then killed: the death is named.
        (Unhealthy, probe, Unhealthy, oom, Some(AlertKind::Unhealthy)),
        (
            Unhealthy,
            probe,
            Stopped,
            exited,
            Some(AlertKind::Unhealthy),
        ),
        (Unknown, None, Stopped, exited, Some(AlertKind::Unhealthy)),
        // Dead already: a restart settling, a second death, a removal say nothing new.
        (Stopped, exited, Unhealthy, exited, None),
        (Unhealthy, exited, Unhealthy, oom, None),
        (Unhealthy, exited, Unhealthy, probe, None),
        (Unhealthy, exited, Stopped, exited, None),
        (Unhealthy, probe, Missing, removed, None),
        (CrashLoop, exited, Unhealthy, exited, None),
        (CrashLoop, exited, Stopped, exited, None),
        (CrashLoop, exited, CrashLoop, oom, None),
        (Healthy, None, Healthy, None, None),
    ];
    for (from, from_reason, to, reason, alert) in cases {
        let t = Transition {
            from_reason,
            ..transition(from, to, reason, None)
        };
        assert_eq!(
            health_alert(&t),
            alert,
            "{from} {from_reason:?} → {to} {reason:?}"
        );
    }
    let outcomes = [
        (OutcomeKind::Succeeded, None),
        (OutcomeKind::PullFailed, None),
        (OutcomeKind::MigrationFailed, None),
        (OutcomeKind::Failed, None),
        (OutcomeKind::RolledBack, Some(AlertKind::RolledBack)),
        (OutcomeKind::RollbackFailed, Some(AlertKind::RollbackFailed)),
    ];
    for (kind, alert) in outcomes {
        assert_eq!(outcome_alert(kind), alert, "{kind}");
    }
}

const BASE: &str =
    "host = \"prod-1\"\nenv = \"prod\"\nallowed_signers = \"s\"\nallowed_images = [\"r/*\"]\n";

fn parse(alerts: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::parse(&format!("{BASE}{alerts}"), Path::new("agent.toml"))
}

#[test]
fn alerts_in_agent_toml_are_read_strictly() {
    let c = parse(
        "[[alerts]]\nwebhook = \"https://hooks.example.com/T0/B0/secret\"\nformat = \"slack\"\n\
         on = [\"crash-loop\", \"unhealthy\", \"unhealthy\"]\n\
         [[alerts]]\nwebhook = \"http://127.0.0.1:9000/hook\"\n",
    )
    .unwrap();
    let [slack, plain] = c.alerts.as_slice() else {
        panic!("{:?}", c.alerts)
    };
    assert_eq!(slack.format, Format::Slack);
    assert_eq!(
        slack.on.kinds(),
        [AlertKind::Unhealthy, AlertKind::CrashLoop]
    );
    assert!(slack.wants(AlertKind::CrashLoop) && !slack.wants(AlertKind::Recovered));
    assert_eq!(
        slack.summary(),
        "https://hooks.example.com/… (slack) on unhealthy, crash-loop"
    );
    assert_eq!(plain.format, Format::Json);
    assert_eq!(plain.on.kinds(), AlertKind::ALL);
    assert!(parse("").unwrap().alerts.is_empty());

    // (the [[alerts]] body, line, column, fragment of the message)
    let cases = [
        ("webhook = \"ftp://h/x\"", 6, 11, "http or https"),
        ("webhook = \"hooks.example.com/x\"", 6, 11, "no URL"),
        (
            "webhook = \"https://h/x\"\nformat = \"teams\"",
            7,
            10,
            "unknown variant `teams`",
        ),
        ("webhook = \"https://h/x\"\non = []", 7, 6, "`on` is empty"),
        (
            "webhook = \"https://h/x\"\non = [\"deployed\"]",
            7,
            7,
            "unknown variant `deployed`",
        ),
        (
            "webhook = \"https://h/x\"\nchannel = \"#ops\"",
            7,
            1,
            "unknown field `channel`",
        ),
        ("format = \"json\"", 5, 1, "missing field `webhook`"),
    ];
    for (body, line, column, fragment) in cases {
        match parse(&format!("[[alerts]]\n{body}\n")) {
            Err(ConfigError::Syntax {
                line: l,
                column: c,
                message,
                ..
            }) => {
                assert_eq!((l, c), (line, column), "{body}: {message}");
                assert!(message.contains(fragment), "{body}: {message}");
            }
            other => panic!("{body}: expected an error with a location, got {other:?}"),
        }
    }
}

fn transition(
    from: Health,
    to: Health,
    reason: Option<HealthReason>,
    code: Option<i64>,
) -> Transition {
    Transition {
        app: "acme".into(),
        service: "web".into(),
        from,
        from_reason: None,
        to,
        at: Timestamp::from_unix_secs(1_767_225_600),
        reason,
        exit_code: code,
    }
}

fn source() -> Source {
    Source {
        host: "prod-1".into(),
        env: "prod".into(),
        version: "0.1.0".into(),
    }
}

#[test]
fn an_alert_in_each_format() {
    let t = transition(
        Health::Healthy,
        Health::Stopped,
        Some(HealthReason::OomKilled),
        Some(137),
    );
    let alert = source().health("01kalert".into(), &t).unwrap();
    let shown = |f| render(f, &alert);
    expect![[r#"{"id":"01kalert","kind":"unhealthy","host":"prod-1","env":"prod","app":"acme","service":"web","from":"healthy","to":"stopped","reason":"oom-killed","exit_code":137,"at":"2026-01-01T00:00:00Z","agent_version":"0.1.0"}"#]]
    .assert_eq(&shown(Format::Json));
    expect![[r#"{"text":"unhealthy: acme/web on prod-1 (prod): healthy → stopped (oom-killed, exit code 137)"}"#]]
    .assert_eq(&shown(Format::Slack));
    expect![[r#"{"content":"unhealthy: acme/web on prod-1 (prod): healthy → stopped (oom-killed, exit code 137)"}"#]]
    .assert_eq(&shown(Format::Discord));

    let looping = transition(
        Health::Unhealthy,
        Health::CrashLoop,
        Some(HealthReason::Exited),
        Some(1),
    );
    let recovered = transition(Health::CrashLoop, Health::Healthy, None, None);
    let started = source().started("01kstart".into(), Timestamp::from_unix_secs(1_767_225_600));
    let record = crate::journal::tests::record(1, "o1", 'a', Some(OutcomeKind::RolledBack));
    let mut order = record.order;
    order.reference = "v6".into();
    let outcome = proto::wire::Outcome {
        reason: Some("web exited with code 3".into()),
        ..record.outcome.unwrap()
    };
    let lines: Vec<String> = [
        source().health("1".into(), &looping),
        source().health("2".into(), &recovered),
        source().health(
            "3".into(),
            &transition(Health::Stopped, Health::Unhealthy, None, None),
        ),
        Some(started),
        source().outcome("4".into(), &order, &outcome),
    ]
    .iter()
    .map(|a| a.as_ref().map_or("(none)".to_string(), summary))
    .collect();
    expect![[r#"
        crash-loop: acme/web on prod-1 (prod): unhealthy → crash-loop (exited, exit code 1)
        recovered: acme/web on prod-1 (prod): crash-loop → healthy
        (none)
        agent-started: deploy-agent 0.1.0 on prod-1 (prod)
        rolled-back: acme/web on prod-1 (prod) (order o1 (v6): web exited with code 3)"#]]
    .assert_eq(&lines.join("\n"));

    let long = Alert {
        reason: Some("x".repeat(5000)),
        ..alert
    };
    let body: serde_json::Value = serde_json::from_str(&render(Format::Discord, &long)).unwrap();
    let content = body["content"].as_str().unwrap().chars().count();
    assert_eq!(content, 2000, "Discord's limit");
}

#[test]
fn retries_back_off_from_half_a_second_to_thirty_jittered() {
    let schedule: Vec<String> = (1..=9)
        .map(|n| format!("{:.2}", backoff(n, "01kalert").as_secs_f64()))
        .collect();
    expect!["0.26 0.56 1.81 3.78 6.34 10.25 20.40 24.46 19.89"].assert_eq(&schedule.join(" "));
    for id in ["a", "b", "01jz", "event stream"] {
        for n in 1..40 {
            let ceiling = (0.5 * 2f64.powi(n as i32 - 1)).min(30.0);
            let got = backoff(n, id).as_secs_f64();
            assert!(got >= ceiling / 2.0 && got <= ceiling, "{id} #{n}: {got}");
        }
    }
    assert_ne!(
        backoff(3, "a"),
        backoff(3, "b"),
        "alerts failing together spread apart"
    );
}

#[test]
fn a_receivers_status_delivers_gives_up_or_retries() {
    let table: Vec<String> = [
        200, 201, 202, 204, 299, 301, 400, 401, 403, 404, 408, 410, 413, 415, 422, 429, 500, 502,
        503, 504,
    ]
    .iter()
    .map(|&s| format!("{s} {:?}", answer(s)))
    .collect();
    expect![[r#"
        200 Delivered
        201 Delivered
        202 Delivered
        204 Delivered
        299 Delivered
        301 Retry
        400 Refused
        401 Retry
        403 Retry
        404 Retry
        408 Retry
        410 Retry
        413 Refused
        415 Refused
        422 Refused
        429 Retry
        500 Retry
        502 Retry
        503 Retry
        504 Retry"#]]
    .assert_eq(&table.join("\n"));
    let waits: Vec<String> = [
        Some("3"),
        Some(" 120 "),
        Some("86400"),
        Some("-1"),
        Some("Wed, 21 Oct 2026 07:28:00 GMT"),
        Some(""),
        None,
    ]
    .iter()
    .map(|v| format!("{v:?} {:?}", retry_after(*v)))
    .collect();
    expect![[r#"
        Some("3") Some(3s)
        Some(" 120 ") Some(120s)
        Some("86400") Some(600s)
        Some("-1") None
        Some("Wed, 21 Oct 2026 07:28:00 GMT") None
        Some("") None
        None None"#]]
    .assert_eq(&waits.join("\n"));
    assert_eq!(
        reply_excerpt("invalid_payload\nmore"),
        "invalid_payload",
        "the first line"
    );
    assert_eq!(
        reply_excerpt(" bad\x1b[31m \t"),
        "bad [31m",
        "no control characters"
    );
    let long = reply_excerpt(&"x".repeat(300));
    assert!(long.ends_with('…') && long.chars().count() == 201, "{long}");
}

fn pending(id: &str, webhook: &str) -> Pending {
    let t = transition(
        Health::Healthy,
        Health::Stopped,
        Some(HealthReason::Exited),
        Some(137),
    );
    Pending {
        alert: source().health(id.into(), &t).unwrap(),
        webhook: Webhook::try_from(webhook.to_string()).unwrap(),
        format: Format::Json,
    }
}

#[test]
fn the_outbox_keeps_what_is_pending_across_a_reopen_and_never_what_was_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(dir.path());
    let (a, b) = (pending("01a", "http://r/1"), pending("01b", "http://r/1"));
    outbox.put(&Outbox::name("01a", 0), &a).unwrap();
    outbox.put(&Outbox::name("01b", 0), &b).unwrap();
    outbox.remove(&Outbox::name("01a", 0)).unwrap();
    std::fs::write(outbox.dir().join("01c-0.json"), b"{ torn").unwrap();

    let reopened = Outbox::new(dir.path());
    let (found, problems) = reopened.load();
    assert_eq!(found, vec![("01b-0.json".to_string(), b)]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(outbox.dir().join("01c-0.json.corrupt").exists());
    assert_eq!(reopened.load().1, Vec::<String>::new(), "set aside once");
}

#[test]
fn pending_alerts_of_a_dropped_webhook_are_dropped_and_the_rest_delivered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::new(dir.path());
    outbox
        .put("01a-0.json", &pending("01a", "http://kept/"))
        .unwrap();
    outbox
        .put("01b-1.json", &pending("01b", "http://gone/"))
        .unwrap();
    let target: AlertTarget = toml::from_str("webhook = \"http://kept/\"").unwrap();
    let alerts = delivery::Alerts::open(dir.path(), vec![target], source());
    let (left, _) = outbox.load();
    let names: Vec<&str> = left.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["01a-0.json"]);
    drop(alerts);
}

#[test]
fn the_queue_sends_each_targets_oldest_first_and_backs_off_per_target() {
    let t0 = Instant::now();
    let mut q = Queue::default();
    q.push("1".into(), pending("01a", "http://a/"), t0);
    q.push("2".into(), pending("01b", "http://a/"), t0);
    q.push("3".into(), pending("01c", "http://b/"), t0);
    let names = |due: Vec<(String, Pending)>| due.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(names(q.due(t0)), ["1", "3"], "one at a time per receiver");
    // Receiver a is down: its alerts wait; b's do not.
    assert_eq!(q.failed("1", t0, None), 1);
    assert_eq!(names(q.due(t0)), ["3"]);
    q.delivered("3");
    assert_eq!(names(q.due(t0)), Vec::<String>::new());
    let next = q.next_try().unwrap();
    let waited = next - t0;
    assert!(
        waited >= Duration::from_millis(250) && waited <= Duration::from_millis(500),
        "{waited:?}"
    );
    assert_eq!(names(q.due(next)), ["1"]);
    q.delivered("1");
    assert_eq!(names(q.due(next)), ["2"], "then the next of a");
    q.delivered("2");
    assert!(q.is_empty() && q.next_try().is_none());

    // A receiver's Retry-After holds the next try back when it asks for longer than the backoff.
    q.push("4".into(), pending("01d", "http://a/"), t0);
    q.failed("4", t0, Some(Duration::from_secs(7)));
    assert_eq!(q.next_try(), Some(t0 + Duration::from_secs(7)));
    q.failed("4", t0, Some(Duration::from_millis(1)));
    assert!(
        q.next_try() > Some(t0 + Duration::from_millis(1)),
        "the backoff when longer"
    );

    let mut full = Queue::default();
    let mut given_up = Vec::new();
    for i in 0..MAX_PENDING + 2 {
        given_up.extend(full.push(format!("{i:05}"), pending("01a", "http://a/"), t0));
    }
    assert_eq!(given_up, ["00000", "00001"]);
    assert_eq!(full.len(), MAX_PENDING);
}
