//! Tag rules as tables: which tags each form admits, and the verdict on releases whose images
//! carry given tags.

use std::collections::BTreeMap;

use expect_test::{Expect, expect};

use super::*;
use crate::order::{ImageRef, Order};

const WEB: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const API: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const MIGRATE: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

fn prod() -> RefRules {
    RefRules {
        allow: vec![Form::Semver, Form::Calver],
        prerelease: false,
    }
}

/// A deploy of `web` (and `api` on another image when `api_tags` is given), with `tags`.
fn order(web_tags: &[&str], api_tags: Option<&[&str]>) -> Order {
    let mut o: Order = serde_json::from_value(serde_json::json!({
        "order_id": "o1", "rollout_id": "r1", "env": "prod", "host": "web-1",
        "issued_at": "2026-12-01T00:00:00Z", "not_after": "2026-12-01T00:10:00Z",
        "issued_by": "ci", "action": "deploy",
        "image": format!("reg/acme/web@{WEB}"),
        "ref": "v1", "run_migration": false, "app": "acme", "services": {"web": {}}
    }))
    .unwrap();
    let owned = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if !web_tags.is_empty() {
        o.tags.insert(WEB.into(), owned(web_tags));
    }
    if let Some(api_tags) = api_tags {
        o.services
            .insert("api".into(), serde_json::from_str("{}").unwrap());
        o.images
            .insert("api".into(), ImageRef::new("reg/acme/api", API).unwrap());
        if !api_tags.is_empty() {
            o.tags.insert(API.into(), owned(api_tags));
        }
    }
    o
}

fn table(cases: &[(&str, Order, RefRules)], expect: Expect) {
    let out: String = cases
        .iter()
        .map(|(label, o, rules)| {
            let verdict = match check(rules, o) {
                Ok(()) => "admitted".to_string(),
                Err(d) => d.to_string(),
            };
            format!("{label:<30} {verdict}\n")
        })
        .collect();
    expect.assert_eq(&out);
}

#[test]
fn tag_forms() {
    let tags = [
        "1.2.3",
        "v1.2.3",
        "v0.0.0",
        "v10.20.30",
        "v1.3.0-rc.1",
        "1.0.0-beta",
        "1.0.0-alpha-1.x",
        "1.0.0+build.5",
        "1.0.0-rc.1+build.5",
        "v1.2",
        "v1",
        "V1.2.3",
        "01.2.3",
        "1.02.3",
        "1.2.3-",
        "1.2.3-rc..1",
        "1.2.3-rc.01",
        "1.2.3+",
        "1.2.3.4",
        "2023.06.1",
        "2023.12.10",
        "2023.6.1",
        "2023.13.1",
        "2023.00.1",
        "2023.06.01",
        "23.06.1",
        "2023.06",
        "ephemeral-foo",
        "latest",
        "0123456789abcdef0123456789abcdef01234567",
        "",
    ];
    let out: String = tags
        .iter()
        .map(|t| {
            let mut forms = Vec::new();
            match semver(t) {
                Some(Semver { prerelease: true }) => forms.push("semver pre-release"),
                Some(_) => forms.push("semver"),
                None => {}
            }
            if is_calver(t) {
                forms.push("calver");
            }
            let examined = if examined(t) { "examined" } else { "ignored" };
            format!("{t:<42} {examined:<9} {}\n", forms.join(", "))
        })
        .collect();
    expect![[r#"
        1.2.3                                      examined  semver
        v1.2.3                                     examined  semver
        v0.0.0                                     examined  semver
        v10.20.30                                  examined  semver
        v1.3.0-rc.1                                examined  semver pre-release
        1.0.0-beta                                 examined  semver pre-release
        1.0.0-alpha-1.x                            examined  semver pre-release
        1.0.0+build.5                              examined  semver
        1.0.0-rc.1+build.5                         examined  semver pre-release
        v1.2                                       ignored   
        v1                                         ignored   
        V1.2.3                                     ignored   
        01.2.3                                     ignored   
        1.02.3                                     ignored   
        1.2.3-                                     ignored   
        1.2.3-rc..1                                ignored   
        1.2.3-rc.01                                ignored   
        1.2.3+                                     ignored   
        1.2.3.4                                    ignored   
        2023.06.1                                  examined  calver
        2023.12.10                                 examined  semver, calver
        2023.6.1                                   examined  semver
        2023.13.1                                  examined  semver
        2023.00.1                                  ignored   
        2023.06.01                                 ignored   
        23.06.1                                    ignored   
        2023.06                                    ignored   
        ephemeral-foo                              examined  
        latest                                     ignored   
        0123456789abcdef0123456789abcdef01234567   ignored   
                                                   ignored   
    "#]]
    .assert_eq(&out);
}

#[test]
fn releases_need_a_final_tag_of_an_allowed_form_and_no_ephemeral_one() {
    let semver_only = RefRules {
        allow: vec![Form::Semver],
        prerelease: false,
    };
    let staging = RefRules {
        prerelease: true,
        ..prod()
    };
    table(
        &[
            ("semver", order(&["v1.3.0"], None), prod()),
            ("semver without v", order(&["1.3.0"], None), prod()),
            ("rc, prod", order(&["v1.3.0-rc.1"], None), prod()),
            ("beta, prod", order(&["1.3.0-beta"], None), prod()),
            (
                "rc, prerelease = true",
                order(&["v1.3.0-rc.1"], None),
                staging,
            ),
            (
                "rc and final",
                order(&["v1.3.0-rc.1", "v1.3.0"], None),
                prod(),
            ),
            ("calver", order(&["2023.06.1"], None), prod()),
            (
                "calver, semver only",
                order(&["2023.06.1"], None),
                semver_only,
            ),
            ("ephemeral", order(&["ephemeral-foo"], None), prod()),
            (
                "ephemeral and final",
                order(&["v1.3.0", "ephemeral-foo", "ephemeral-bar"], None),
                prod(),
            ),
            (
                "a git sha and latest",
                order(&["0123abc", "latest"], None),
                prod(),
            ),
            ("no tags", order(&[], None), prod()),
            ("api fine", order(&["v2.0.0"], Some(&["2023.06.1"])), prod()),
            ("api untagged", order(&["v2.0.0"], Some(&[])), prod()),
            ("api rc", order(&["v2.0.0"], Some(&["v2.1.0-rc.2"])), prod()),
        ],
        expect![[r#"
            semver                         admitted
            semver without v               admitted
            rc, prod                       [refs] prerelease denies services.web (111111111111): its only release tags are pre-releases (v1.3.0-rc.1), which this host does not take (prerelease = false)
            beta, prod                     [refs] prerelease denies services.web (111111111111): its only release tags are pre-releases (1.3.0-beta), which this host does not take (prerelease = false)
            rc, prerelease = true          admitted
            rc and final                   admitted
            calver                         admitted
            calver, semver only            [refs] allow denies services.web (111111111111): no tag of an allowed form (semver) names this image; its tags are 2023.06.1
            ephemeral                      [refs] ephemeral denies services.web (111111111111): it is tagged ephemeral-foo: a throwaway build is never a release here
            ephemeral and final            [refs] ephemeral denies services.web (111111111111): it is tagged ephemeral-foo, ephemeral-bar: a throwaway build is never a release here
            a git sha and latest           [refs] allow denies services.web (111111111111): no tag of an allowed form (semver, calver) names this image; its tags are 0123abc, latest
            no tags                        [refs] allow denies services.web (111111111111): no tag of an allowed form (semver, calver) names this image; the order names no tag of it
            api fine                       admitted
            api untagged                   [refs] allow denies services.api (222222222222): no tag of an allowed form (semver, calver) names this image; the order names no tag of it
            api rc                         [refs] prerelease denies services.api (222222222222): its only release tags are pre-releases (v2.1.0-rc.2), which this host does not take (prerelease = false)
        "#]],
    );
}

#[test]
fn the_migrate_image_is_judged_too_and_tags_of_other_digests_count_for_nothing() {
    let mut o = order(&["v1.3.0"], None);
    o.migrate_image = Some(ImageRef::new("reg/acme/migrate", MIGRATE).unwrap());
    let refused = check(&prod(), &o).unwrap_err();
    assert_eq!(
        (refused.rule, refused.image.as_str()),
        ("allow", "migrate_image")
    );
    o.tags.insert(MIGRATE.into(), vec!["v1.3.0".into()]);
    assert_eq!(check(&prod(), &o), Ok(()));

    // A good tag on a digest the order does not run proves nothing.
    let mut o = order(&[], None);
    o.tags = BTreeMap::from([(API.to_string(), vec!["v1.0.0".to_string()])]);
    let refused = check(&prod(), &o).unwrap_err();
    assert_eq!(refused.rule, "allow");
}

#[test]
fn forms_parse_by_name() {
    assert_eq!("semver".parse::<Form>(), Ok(Form::Semver));
    assert_eq!("calver".parse::<Form>(), Ok(Form::Calver));
    let err = "SemVer".parse::<Form>().unwrap_err();
    assert_eq!(
        err.to_string(),
        r#""SemVer" is not a tag form (semver, calver)"#
    );
}

proptest::proptest! {
    /// Tags are the signer's text: any of them is judged, never a panic.
    #[test]
    fn any_tags_are_judged(tags in proptest::collection::vec("\\PC{0,24}", 0..4)) {
        let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
        let _ = check(&prod(), &order(&tags, None));
        for t in tags {
            let _ = (semver(t), is_calver(t), examined(t));
        }
    }
}
