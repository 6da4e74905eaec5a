//! `[[freeze]]` and `[refs]` in `agent.toml`: when this host takes releases and which registry
//! tags make one (README, "Release policy"), read into [`proto::release_policy::ReleasePolicy`].
//! The windows and forms are parsed by proto, so the agent and its tests judge them with the
//! same code; this module only names the entry and the key when one is wrong.

use proto::release_policy::ReleasePolicy;
use proto::release_policy::freeze::Window;
use proto::release_policy::refs::{Form, RefRules};
use serde::Deserialize;

/// The zone of a window that names none.
const DEFAULT_TZ: &str = "UTC";

/// One `[[freeze]]`: `weekly = { from, to }`, or a one-off `from` and `to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFreeze {
    #[serde(default)]
    weekly: Option<RawWeekly>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    tz: Option<String>,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeekly {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRefs {
    allow: Vec<String>,
    /// Off unless said: `[refs]` is for hosts that take only releases.
    #[serde(default)]
    prerelease: bool,
}

/// Checks every window and the tag rules; errors name the entry and the key.
pub(super) fn release_policy(
    freeze: Vec<RawFreeze>,
    refs: Option<RawRefs>,
) -> Result<ReleasePolicy, String> {
    let freeze = freeze
        .into_iter()
        .enumerate()
        .map(|(i, raw)| window(raw).map_err(|why| format!("[[freeze]] #{}: {why}", i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let refs = refs.map(ref_rules).transpose()?;
    // Set once `[approvals]` is known (AgentConfig::parse).
    Ok(ReleasePolicy {
        freeze,
        refs,
        overridable: false,
    })
}

fn window(raw: RawFreeze) -> Result<Window, String> {
    let tz = raw.tz.as_deref().unwrap_or(DEFAULT_TZ);
    let made = match (raw.weekly, raw.from, raw.to) {
        (Some(w), None, None) => Window::weekly(&w.from, &w.to, tz, &raw.reason),
        (None, Some(from), Some(to)) => Window::once(&from, &to, tz, &raw.reason),
        (Some(_), _, _) => {
            return Err(
                "give either weekly = { from, to } or a one-off from and to, not both".into(),
            );
        }
        (None, from, _) => {
            let missing = if from.is_none() { "from" } else { "to" };
            return Err(format!(
                "{missing} is missing: a window is weekly = {{ from = \"Fri 16:00\", to = \"Mon 08:00\" }} \
                 or a one-off from = \"2026-12-20T00:00:00Z\" and to = \"2027-01-04T00:00:00Z\""
            ));
        }
    };
    made.map_err(|e| e.to_string())
}

fn ref_rules(raw: RawRefs) -> Result<RefRules, String> {
    if raw.allow.is_empty() {
        return Err(
            "[refs] allow is empty: every release would be refused; list \"semver\" and/or \"calver\""
                .into(),
        );
    }
    let allow = raw
        .allow
        .iter()
        .map(|f| f.parse::<Form>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("[refs] allow: {e}"))?;
    Ok(RefRules {
        allow,
        prerelease: raw.prerelease,
    })
}

/// How `check-config` shows the release policy at `now`.
pub fn summary(policy: &ReleasePolicy, now: proto::Timestamp) -> String {
    let freeze = if policy.freeze.is_empty() {
        " none".to_string()
    } else {
        let windows: Vec<String> = policy
            .freeze
            .iter()
            .map(|w| {
                let holds = if w.holds(now) { " — holds now" } else { "" };
                format!("\n    {w}{holds}")
            })
            .collect();
        windows.concat()
    };
    let refs = match &policy.refs {
        None => "any tag (no [refs])".to_string(),
        Some(r) => {
            let forms: Vec<&str> = r.allow.iter().map(|f| f.name()).collect();
            format!(
                "allow {} · pre-releases {} · ephemeral-* refused",
                forms.join(", "),
                if r.prerelease { "allowed" } else { "refused" }
            )
        }
    };
    format!("\n  freeze:{freeze}\n  refs: {refs}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<ReleasePolicy, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Wrapper {
            #[serde(default)]
            freeze: Vec<RawFreeze>,
            #[serde(default)]
            refs: Option<RawRefs>,
        }
        let w: Wrapper = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        release_policy(w.freeze, w.refs)
    }

    fn at(t: &str) -> proto::Timestamp {
        proto::Timestamp::parse(t).unwrap()
    }

    #[test]
    fn nothing_is_the_empty_policy() {
        assert_eq!(parse("").unwrap(), ReleasePolicy::default());
    }

    #[test]
    fn the_documented_example_is_read() {
        let p = parse(
            r#"
[[freeze]]
weekly = { from = "Fri 16:00", to = "Mon 08:00" }
tz = "Europe/Amsterdam"
reason = "weekend"
[[freeze]]
from = "2026-12-20T00:00:00Z"
to = "2027-01-04T00:00:00Z"
reason = "holidays"
[refs]
allow = ["semver", "calver"]
prerelease = false
"#,
        )
        .unwrap();
        assert_eq!(p.freeze.len(), 2);
        assert!(p.freeze[0].holds(at("2026-12-05T12:00:00Z")));
        assert!(p.freeze[1].holds(at("2026-12-24T12:00:00Z")));
        assert!(!p.freeze.iter().any(|w| w.holds(at("2026-12-09T12:00:00Z"))));
        assert_eq!(
            p.refs,
            Some(RefRules {
                allow: vec![Form::Semver, Form::Calver],
                prerelease: false
            })
        );
        let shown = summary(&p, at("2026-12-05T12:00:00Z"));
        assert_eq!(
            shown,
            "\n  freeze:\
             \n    \"weekend\" (weekly Fri 16:00 to Mon 08:00, Europe/Amsterdam) — holds now\
             \n    \"holidays\" (2026-12-20T00:00:00Z to 2027-01-04T00:00:00Z, UTC)\
             \n  refs: allow semver, calver · pre-releases refused · ephemeral-* refused"
        );
        assert_eq!(
            summary(&ReleasePolicy::default(), at("2026-12-05T12:00:00Z")),
            "\n  freeze: none\n  refs: any tag (no [refs])"
        );
        // prerelease is off unless said; a weekly window without tz is in UTC.
        let p = parse(
            "[refs]\nallow = [\"calver\"]\n[[freeze]]\nweekly = { from = \"Sat 00:00\", to = \"Sun 00:00\" }\nreason = \"r\"\n",
        )
        .unwrap();
        assert_eq!(p.refs.map(|r| r.prerelease), Some(false));
        assert!(p.freeze[0].holds(at("2026-12-05T00:00:00Z")));
        assert!(!p.freeze[0].holds(at("2026-12-06T00:00:00Z")));
    }

    #[test]
    fn bad_entries_are_named_by_number_and_key() {
        let weekly = |from: &str, to: &str, extra: &str| {
            format!(
                "[[freeze]]\nweekly = {{ from = {from:?}, to = {to:?} }}\nreason = \"r\"\n{extra}"
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                weekly("Fry 16:00", "Mon 08:00", ""),
                r#"[[freeze]] #1: weekly.from = "Fry 16:00": "Fry" is not a weekday"#,
            ),
            (
                weekly("Fri 16:00", "Mon 8", ""),
                r#"[[freeze]] #1: weekly.to = "Mon 8": "8" is not a time of day"#,
            ),
            (
                weekly("Fri 16:00", "Mon 08:00", "tz = \"Europe/Amsterdamm\"\n"),
                r#"[[freeze]] #1: tz = "Europe/Amsterdamm": is not a time zone"#,
            ),
            (
                format!(
                    "{}[[freeze]]\nfrom = \"2027-01-04T00:00:00Z\"\nto = \"2026-12-20T00:00:00Z\"\nreason = \"r\"\n",
                    weekly("Fri 16:00", "Mon 08:00", "")
                ),
                r#"[[freeze]] #2: to = "2026-12-20T00:00:00Z": is not after from"#,
            ),
            (
                "[[freeze]]\nfrom = \"2027-01-04T00:00:00Z\"\nreason = \"r\"\n".into(),
                "[[freeze]] #1: to is missing",
            ),
            (
                "[[freeze]]\nreason = \"r\"\n".into(),
                "[[freeze]] #1: from is missing",
            ),
            (
                weekly("Fri 16:00", "Mon 08:00", "from = \"2027-01-04T00:00:00Z\"\n"),
                "not both",
            ),
            (
                "[[freeze]]\nweekly = { from = \"Fri 16:00\", to = \"Mon 08:00\" }\n".into(),
                "missing field `reason`",
            ),
            (
                weekly("Fri 16:00", "Mon 08:00", "zone = \"UTC\"\n"),
                "unknown field `zone`",
            ),
            (
                "[[freeze]]\nweekly = { from = \"Fri 16:00\", until = \"Mon 08:00\" }\nreason = \"r\"\n".into(),
                "unknown field `until`",
            ),
            (
                "[refs]\nallow = [\"semver\", \"romver\"]\n".into(),
                r#"[refs] allow: "romver" is not a tag form (semver, calver)"#,
            ),
            ("[refs]\nallow = []\n".into(), "[refs] allow is empty"),
            ("[refs]\nprerelease = true\n".into(), "missing field `allow`"),
            (
                "[refs]\nallow = [\"semver\"]\nprerelease = \"no\"\n".into(),
                "expected a boolean",
            ),
            (
                "[refs]\nallow = [\"semver\"]\nephemeral = true\n".into(),
                "unknown field `ephemeral`",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expected), "{text}\n→ {err}");
        }
    }
}
