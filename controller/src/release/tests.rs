//! Table tests of releases: what is resolved where, what the answers make, how releases compare.

use std::path::Path;

use proto::Timestamp;
use proto::order::Action;

use super::*;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn img(repo: &str, c: char) -> ImageRef {
    ImageRef::new(repo, &d(c)).unwrap()
}

/// api (default repository r/api), web (r/web), worker (r/api), and a migrate image (r/migrate).
fn two_repos() -> DeployConfig {
    DeployConfig::parse(
        r#"
image = "r/api"
[services.api]
[services.web]
image = "r/web"
[services.worker]
[migrate]
command = ["/migrate"]
service = "api"
image = "r/migrate"
"#,
        Path::new("deploy.toml"),
    )
    .unwrap()
}

fn single() -> DeployConfig {
    DeployConfig::parse(
        "image = \"r/web\"\n[services.web]\n[services.worker]\n",
        Path::new("deploy.toml"),
    )
    .unwrap()
}

fn sets(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(s, r)| (s.to_string(), r.to_string()))
        .collect()
}

fn lookup(repository: &str, reference: &str) -> Lookup {
    Lookup {
        repository: repository.into(),
        reference: reference.into(),
    }
}

#[test]
fn each_ref_is_looked_up_once_in_each_repository_that_needs_it() {
    // (config, --set, the lookups)
    type Case<'a> = (DeployConfig, &'a [(&'a str, &'a str)], Vec<Lookup>);
    let cases: Vec<Case> = vec![
        (single(), &[], vec![lookup("r/web", "v2")]),
        (
            two_repos(),
            &[],
            vec![
                lookup("r/api", "v2"),
                lookup("r/migrate", "v2"),
                lookup("r/web", "v2"),
            ],
        ),
        (
            two_repos(),
            &[("web", "v3")],
            vec![
                lookup("r/api", "v2"),
                lookup("r/migrate", "v2"),
                lookup("r/web", "v3"),
            ],
        ),
        // worker shares api's repository but not its ref
        (
            two_repos(),
            &[("worker", "v3")],
            vec![
                lookup("r/api", "v2"),
                lookup("r/api", "v3"),
                lookup("r/migrate", "v2"),
                lookup("r/web", "v2"),
            ],
        ),
        (
            single(),
            &[("web", "v3")],
            vec![lookup("r/web", "v2"), lookup("r/web", "v3")],
        ),
    ];
    for (cfg, set, want) in cases {
        assert_eq!(
            lookups(&cfg, "v2", &sets(set), true).unwrap(),
            want,
            "{set:?}"
        );
    }
    // A rollback never migrates: the migrate image is not its to resolve.
    assert_eq!(
        lookups(&two_repos(), "v2", &sets(&[]), false).unwrap(),
        vec![lookup("r/api", "v2"), lookup("r/web", "v2")]
    );
    let err = lookups(&two_repos(), "v2", &sets(&[("wbe", "v3")]), true).unwrap_err();
    assert!(
        err.contains("no service \"wbe\"") && err.contains("api, web, worker"),
        "{err}"
    );
}

#[test]
fn set_arguments_are_service_equals_ref() {
    assert_eq!(parse_set("web=v3"), Ok(("web".into(), "v3".into())));
    assert_eq!(parse_set(" web = v3 "), Ok(("web".into(), "v3".into())));
    for bad in ["web", "=v3", "web=", ""] {
        assert!(parse_set(bad).is_err(), "{bad:?}");
    }
}

/// Answers: each lookup found as (digest byte, the ref the registry picked), or not found.
fn answer(
    found: &[(Lookup, Option<(char, &str)>)],
) -> Vec<(Lookup, Result<Resolved, ResolveError>)> {
    found
        .iter()
        .map(|(l, f)| {
            let r = match f {
                Some((c, picked)) => Ok(Resolved {
                    image: img(&l.repository, *c),
                    reference: picked.to_string(),
                }),
                None => Err(ResolveError::NotFound(format!(
                    "{} has no manifest {:?}",
                    l.repository, l.reference
                ))),
            };
            (l.clone(), r)
        })
        .collect()
}

#[test]
fn the_answers_make_one_release_or_a_refusal_naming_every_repository() {
    let cfg = two_repos();
    let prefix = &SHA[..7];
    let answers = answer(&[
        (lookup("r/api", prefix), Some(('a', SHA))),
        (lookup("r/migrate", prefix), Some(('f', SHA))),
        (lookup("r/web", OTHER), Some(('b', OTHER))),
    ]);
    let set = sets(&[("web", OTHER)]);
    let r = assemble(&cfg, prefix, &set, &answers).unwrap();
    assert_eq!(r.reference, SHA, "the tag the prefix picked");
    assert_eq!(r.image, img("r/api", 'a'), "two services of three run it");
    assert_eq!(
        r.images(),
        BTreeMap::from([("web".to_string(), img("r/web", 'b'))])
    );
    assert_eq!(r.refs(), sets(&[("web", OTHER)]));
    assert_eq!(r.revision().as_deref(), Some(SHA));
    assert_eq!(r.migrate_image, Some(img("r/migrate", 'f')));
    assert_eq!(
        r.describe(),
        format!("{SHA} web={OTHER} (api aaaaaaaaaaaa, web bbbbbbbbbbbb, worker aaaaaaaaaaaa)")
    );

    // Missing in two repositories: both named, with why.
    let answers = answer(&[
        (lookup("r/api", "v9"), Some(('a', "v9"))),
        (lookup("r/migrate", "v9"), None),
        (lookup("r/web", "v9"), None),
    ]);
    let err = assemble(&cfg, "v9", &sets(&[]), &answers).unwrap_err();
    assert!(err.contains("in 2 of 3 repositories"), "{err}");
    for named in [
        "r/migrate (v9): image not found",
        "r/web (v9): image not found",
    ] {
        assert!(err.contains(named), "{err} lacks {named}");
    }
    assert!(!err.contains("r/api"), "{err}");

    // A prefix picking other commits in other repositories is no release.
    let answers = answer(&[
        (lookup("r/api", prefix), Some(('a', SHA))),
        (lookup("r/migrate", prefix), Some(('f', SHA))),
        (
            lookup("r/web", prefix),
            Some(('b', &format!("{prefix}ffff"))),
        ),
    ]);
    let err = assemble(&cfg, prefix, &sets(&[]), &answers).unwrap_err();
    assert!(
        err.contains("different tags") && err.contains("r/web →"),
        "{err}"
    );
}

#[test]
fn a_single_image_release_makes_the_orders_it_always_made() {
    let cfg = single();
    let answers = answer(&[(lookup("r/web", "v2"), Some(('b', "v2")))]);
    let r = assemble(&cfg, "v2", &sets(&[]), &answers).unwrap();
    assert_eq!(r.image, img("r/web", 'b'));
    assert!(r.images().is_empty() && r.refs().is_empty());
    assert_eq!(r.migrate_image, None);
    assert_eq!(r.revision(), None, "v2 is no commit");
    assert_eq!(r.describe(), "v2 (bbbbbbbbbbbb)");
    assert_eq!(
        Release::single("v2", &img("r/web", 'b'), &["web", "worker"]),
        Some(r)
    );
}

#[test]
fn the_most_common_wins_and_a_tie_goes_to_the_first() {
    let cases: &[(&[char], Option<char>)] = &[
        (&[], None),
        (&['a'], Some('a')),
        (&['a', 'b'], Some('a')),
        (&['a', 'b', 'b'], Some('b')),
        (&['b', 'a', 'a', 'b'], Some('b')),
    ];
    for (items, want) in cases {
        assert_eq!(most_common(items.iter()).copied(), *want, "{items:?}");
    }
}

#[test]
fn releases_compare_service_by_service() {
    let digests = |pairs: &[(&str, char)]| -> Digests {
        pairs.iter().map(|(s, c)| (s.to_string(), d(*c))).collect()
    };
    let want = digests(&[("api", 'a'), ("web", 'b')]);
    let cases: Vec<(Digests, Vec<&str>)> = vec![
        (want.clone(), vec![]),
        (
            digests(&[("api", 'a'), ("web", 'c')]),
            vec!["web runs cccccccccccc, not bbbbbbbbbbbb"],
        ),
        (digests(&[("web", 'b')]), vec!["api missing"]),
        (
            digests(&[("api", 'a'), ("web", 'b'), ("old", 'e')]),
            vec!["old runs eeeeeeeeeeee too"],
        ),
    ];
    for (have, diff) in cases {
        assert_eq!(differences(&have, &want), diff, "{have:?}");
    }
    assert_eq!(
        describe_digests(&digests(&[("api", 'a'), ("web", 'a')])),
        "aaaaaaaaaaaa"
    );
    assert_eq!(
        describe_digests(&digests(&[("api", 'a'), ("web", 'b')])),
        "api aaaaaaaaaaaa, web bbbbbbbbbbbb"
    );
}

/// A journal entry of `app` (test fixture, shared with the other modules' tests): `release`
/// is each service's image; the first service's is the entry's `image`.
pub(crate) fn journal_entry(
    order_id: &str,
    secs: u64,
    app: &str,
    reference: &str,
    release: &[(&str, ImageRef)],
    outcome: Option<OutcomeKind>,
) -> HistoryEntry {
    let image = release[0].1.clone();
    HistoryEntry {
        order_id: order_id.into(),
        rollout_id: "r".into(),
        action: Action::Deploy,
        signer: "s".into(),
        issued_by: "me".into(),
        accepted_at: Timestamp::from_unix_secs(secs),
        reference: reference.into(),
        images: release
            .iter()
            .filter(|(_, i)| *i != image)
            .map(|(s, i)| (s.to_string(), i.clone()))
            .collect(),
        image,
        refs: BTreeMap::new(),
        app: app.into(),
        services: release.iter().map(|(s, _)| s.to_string()).collect(),
        outcome,
        reason: None,
        duration_ms: None,
        run_migration: false,
        exit_code: None,
        proposal: None,
        override_freeze: None,
    }
}

fn entry(id: &str, outcome: OutcomeKind, release: &[(&str, char)]) -> HistoryEntry {
    let images: Vec<(&str, ImageRef)> = release
        .iter()
        .map(|(s, c)| (*s, img("r/api", *c)))
        .collect();
    let mut e = journal_entry(id, 1, "acme", "v1", &images, Some(outcome));
    e.refs = sets(&[("web", "v0")]);
    e
}

#[test]
fn a_journal_entry_is_the_release_it_ran_if_it_ran_every_service() {
    let e = entry("o", OutcomeKind::Succeeded, &[("api", 'a'), ("web", 'b')]);
    let r = Release::from_entry(&e, &["api", "web"]).unwrap();
    assert_eq!(r.reference, "v1");
    assert_eq!(r.services["web"].reference, "v0");
    assert_eq!(r.services["web"].image, img("r/api", 'b'));
    assert_eq!(r.services["api"].image, img("r/api", 'a'));
    assert_eq!(
        Release::from_entry(&e, &["api"]).map(|r| r.digests()),
        Some(Digests::from([("api".to_string(), d('a'))]))
    );
    assert_eq!(Release::from_entry(&e, &["api", "web", "worker"]), None);
}

#[test]
fn requires_admits_only_the_very_same_set_of_digests() {
    let pushed = Release::from_entry(
        &entry("p", OutcomeKind::Succeeded, &[("api", 'a'), ("web", 'b')]),
        &["api", "web"],
    )
    .unwrap();
    // (the required env's journal, admitted)
    let cases: Vec<(Vec<HistoryEntry>, bool)> = vec![
        (vec![], false),
        (
            vec![entry(
                "1",
                OutcomeKind::Succeeded,
                &[("api", 'a'), ("web", 'b')],
            )],
            true,
        ),
        // one service's digest differs
        (
            vec![entry(
                "1",
                OutcomeKind::Succeeded,
                &[("api", 'a'), ("web", 'c')],
            )],
            false,
        ),
        // the same set, but it failed there
        (
            vec![entry(
                "1",
                OutcomeKind::RolledBack,
                &[("api", 'a'), ("web", 'b')],
            )],
            false,
        ),
        // each digest succeeded, but never together
        (
            vec![
                entry("1", OutcomeKind::Succeeded, &[("api", 'a'), ("web", 'c')]),
                entry("2", OutcomeKind::Succeeded, &[("api", 'e'), ("web", 'b')]),
            ],
            false,
        ),
        // an order that did not carry web
        (
            vec![entry("1", OutcomeKind::Succeeded, &[("api", 'a')])],
            false,
        ),
    ];
    for (history, admitted) in cases {
        assert_eq!(
            succeeded_in(&history, "acme", &pushed),
            admitted,
            "{history:#?}"
        );
        assert!(!succeeded_in(&history, "other-app", &pushed));
    }
}

#[test]
fn the_digests_to_tag_are_the_releases_and_what_the_hosts_run() {
    let cfg = two_repos();
    let answers = answer(&[
        (lookup("r/api", "v2"), Some(('a', "v2"))),
        (lookup("r/web", "v2"), Some(('b', "v2"))),
        (lookup("r/migrate", "v2"), Some(('c', "v2"))),
        (lookup("r/api", &d('e')), Some(('e', &d('e')))),
    ]);
    let r = assemble(&cfg, "v2", &sets(&[("worker", &d('e'))]), &answers).unwrap();
    // A digest typed is no tag.
    assert_eq!(
        resolved_tags(&r),
        vec![
            (d('a'), "v2".to_string()),
            (d('b'), "v2".to_string()),
            (d('c'), "v2".to_string()),
        ]
    );
    let status = |services: &[(&str, &str, char)]| AgentStatus {
        agent_version: "1".into(),
        host: "h".into(),
        env: "e".into(),
        uptime_secs: 1,
        services: services
            .iter()
            .map(|(app, service, c)| proto::wire::ServiceStatus {
                image: Some(img(if *service == "web" { "r/web" } else { "r/api" }, *c)),
                ..proto::wire::ServiceStatus::new(
                    app,
                    service,
                    proto::wire::Health::Healthy,
                    Timestamp::now(),
                )
            })
            .collect(),
        running: Vec::new(),
        approvals: None,
        host_health: None,
    };
    let app = cfg.app.as_str();
    let h1 = status(&[(app, "api", 'f'), (app, "web", '9')]);
    // Another app's image on the host is none of this rollout's business.
    let h2 = status(&[(app, "api", 'a'), ("other", "web", '8')]);
    let set = |cs: &[char]| cs.iter().map(|c| d(*c)).collect::<BTreeSet<_>>();
    assert_eq!(
        digests_to_tag(&r, &[&h1, &h2], app),
        BTreeMap::from([
            ("r/api".to_string(), set(&['a', 'e', 'f'])),
            ("r/migrate".to_string(), set(&['c'])),
            ("r/web".to_string(), set(&['9', 'b'])),
        ])
    );
}
