//! The engine's small decisions as pure functions of what it observed: spec parsing, container
//! naming, the health verdict, retention, which engine errors are worth a retry, and how to
//! read registry errors and credentials (the switch and undo plans are in `switch`). No IO here, so every rule has a table test.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proto::order::HealthSpec;
use proto::wire::Health;

use crate::runtime::{CheckStatus, ContainerInfo, PortMapping, RunState, RuntimeError};
pub use proto::spec::parse_port;

/// How many stopped versions per service are kept for instant rollback.
pub const RETAINED_VERSIONS: usize = 3;

/// How many log lines travel with a failure.
pub const LOG_TAIL_LINES: usize = 20;

// ---------------------------------------------------------------------------------------------
// Spec parsing

/// A fixed host port cannot be bound by two containers at once, which rules out start-first.
pub fn binds_fixed_host_port(ports: &[PortMapping]) -> bool {
    ports.iter().any(|p| p.host_port.is_some())
}

/// What `verify` looks for in the body: for `"revision"`, the image's revision label, else the
/// commit the order's ref resolved to; any other text literally.
pub fn verify_expectation(
    expect: &str,
    label: Option<&str>,
    order_revision: Option<&str>,
) -> Result<String, String> {
    if expect != proto::order::VerifySpec::REVISION {
        return Ok(expect.to_string());
    }
    label
        .filter(|l| !l.trim().is_empty())
        .or(order_revision)
        .map(str::to_string)
        .ok_or_else(|| {
            "the release's revision, but the image has no org.opencontainers.image.revision label \
             and the ref did not resolve to a git commit"
                .to_string()
        })
}

/// At most `n` bytes of `text`, cut at a character boundary: what a failure quotes of a body.
pub fn first_bytes(text: &str, n: usize) -> String {
    let mut end = n.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Reads an env file the way `docker run --env-file` does: `KEY=VALUE` per line, the value
/// verbatim (no quote stripping); `#` comments and blank lines skipped.
pub fn parse_env_file(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            // The line is not shown: an env file holds secrets, and this message travels into
            // outcomes, journals and CI logs.
            return Err(format!(
                "line {}: expected KEY=VALUE (the line is not shown: it may hold a secret)",
                i + 1
            ));
        };
        let key = key.trim();
        let valid_key = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !valid_key {
            return Err(format!(
                "line {}: the name before '=' is not a valid variable name (letters, digits, '_', \
                 '.', '-'; not starting with a digit)",
                i + 1
            ));
        }
        let value = value.trim_end_matches('\r');
        if value.contains('\0') {
            // runc refuses such a variable in an error that quotes the whole `KEY=VALUE`,
            // which would carry the value into the outcome: refuse it here, by line number.
            return Err(format!(
                "line {}: the value holds a NUL byte, which no environment variable can (the \
                 line is not shown: it may hold a secret)",
                i + 1
            ));
        }
        out.push(format!("{key}={value}"));
    }
    Ok(out)
}

/// What replaces an environment entry cut out of a message by [`hide_env_entries`].
pub const HIDDEN_ENV_ENTRY: &str = "[not shown: it may hold a secret]";

/// `text` with every environment entry that the engine, runc or compose quote in their errors
/// cut out: runc's `environment variable value can't contain null(\x00): "KEY=VALUE"`, the
/// engine's `invalid environment variable: KEY=VALUE`, compose v1's `environment variable name
/// 'NAME' may not contain whitespace`. Those entries come from env files, which hold secrets,
/// and engine and compose messages travel into outcomes, journals and CI logs. On a line that
/// speaks of an environment variable, what follows the first quote or `: ` after those words is
/// replaced by [`HIDDEN_ENV_ENTRY`]; other lines are untouched.
pub fn hide_env_entries(text: &str) -> std::borrow::Cow<'_, str> {
    const PHRASE: &str = "environment variable";
    // ASCII lowercasing keeps byte offsets, so positions found in it index `text` too.
    if !text.to_ascii_lowercase().contains(PHRASE) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for piece in text.split_inclusive('\n') {
        let line = piece.trim_end_matches(['\n', '\r']);
        let ending = &piece[line.len()..];
        let Some(at) = line.to_ascii_lowercase().find(PHRASE) else {
            out.push_str(piece);
            continue;
        };
        let words_end = at + PHRASE.len();
        let rest = &line[words_end..];
        let cut = [": ", ":\"", ":'", " '", " \"", "='", "=\""]
            .iter()
            .filter_map(|marker| rest.find(marker).map(|i| i + 1))
            .min();
        let kept = match cut {
            Some(cut) => &rest[..cut],
            None if rest.trim().is_empty() => {
                out.push_str(piece);
                continue;
            }
            // No quote or colon to cut at: a wording not known here, so nothing after the
            // words is kept.
            None => " ",
        };
        out.push_str(&line[..words_end]);
        out.push_str(kept);
        if !kept.ends_with(' ') {
            out.push(' ');
        }
        out.push_str(HIDDEN_ENV_ENTRY);
        out.push_str(ending);
    }
    std::borrow::Cow::Owned(out)
}

/// The last `n` non-empty lines of `text`.
pub fn last_lines(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Names

/// The short form of a digest read from a label, which anyone could have set to anything.
pub fn short_label(digest: &str) -> &str {
    if proto::order::is_digest(digest) {
        proto::order::short_digest(digest)
    } else {
        "unknown"
    }
}

/// The first 12 characters of an engine id.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Where a container sits relative to its service's canonical name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameRole {
    /// Serving under `<prefix><app>-<env>-<service>`.
    Canonical,
    /// A new version being proven next to the running one (start-first).
    Next,
    /// Stopped and set aside; `token` is the order that set it aside, or a container id.
    Aside {
        token: String,
    },
    Other,
}

/// Set-aside name: `<canonical>--<short digest>-<token>`. The token is the id of the order that
/// set the container aside, so a restarted agent can find exactly what an order displaced.
pub fn aside_name(canonical: &str, digest: Option<&str>, token: &str) -> String {
    let short = digest.map(short_label).unwrap_or("unknown");
    format!("{canonical}--{short}-{token}")
}

pub fn next_name(canonical: &str) -> String {
    format!("{canonical}--next")
}

/// An order's one-off container (`what`: `migrate`, `exec`): named after the app, not a
/// service, so it is never mistaken for one of a service's containers.
pub fn one_off_name(prefix: &str, app: &str, env: &str, what: &str, order_id: &str) -> String {
    format!("{prefix}{app}-{env}--{what}-{order_id}")
}

pub fn classify_name(canonical: &str, name: &str) -> NameRole {
    if name == canonical {
        return NameRole::Canonical;
    }
    let Some(rest) = name
        .strip_prefix(canonical)
        .and_then(|r| r.strip_prefix("--"))
    else {
        return NameRole::Other;
    };
    if rest == "next" {
        return NameRole::Next;
    }
    match rest.split_once('-') {
        Some((_short, token)) if !token.is_empty() => NameRole::Aside {
            token: token.to_string(),
        },
        _ => NameRole::Other,
    }
}

// ---------------------------------------------------------------------------------------------
// Health

/// How a service proves it is healthy (a service's `health` in deploy.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeMode {
    /// HTTP GET of `path` on the container's own address.
    Http,
    /// The image's HEALTHCHECK, as the engine reports it.
    ImageCheck,
    /// Neither: the container must simply keep running.
    Running,
}

pub fn probe_mode(spec: &HealthSpec, has_image_check: bool) -> ProbeMode {
    if spec.path.is_some() {
        ProbeMode::Http
    } else if has_image_check {
        ProbeMode::ImageCheck
    } else {
        ProbeMode::Running
    }
}

/// The port the HTTP probe targets: the declared one, else the first published container port, else 80.
pub fn probe_port(spec: &HealthSpec, ports: &[PortMapping]) -> u16 {
    spec.port
        .or_else(|| ports.first().map(|p| p.container_port))
        .unwrap_or(80)
}

/// The container's address for probing: on the service's network if it has one, else the
/// default bridge, else any.
pub fn probe_ip(networks: &BTreeMap<String, String>, preferred: Option<&str>) -> Option<String> {
    let usable = |n: &str| networks.get(n).filter(|ip| !ip.is_empty()).cloned();
    preferred
        .and_then(usable)
        .or_else(|| usable("bridge"))
        .or_else(|| networks.values().find(|ip| !ip.is_empty()).cloned())
}

/// One look at a container during the health wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    pub state: RunState,
    pub restart_count: i64,
    pub check: Option<CheckStatus>,
    /// The HTTP probe's result, in [`ProbeMode::Http`].
    pub http_ok: Option<bool>,
}

impl Observation {
    pub fn of(c: &ContainerInfo, http_ok: Option<bool>) -> Self {
        Observation {
            state: c.state,
            restart_count: c.restart_count,
            check: c.check,
            http_ok,
        }
    }

    /// The process died at least once: the version cannot be healthy, however long we wait.
    pub fn has_exited(&self) -> bool {
        matches!(
            self.state,
            RunState::Exited | RunState::Dead | RunState::Restarting
        ) || self.restart_count > 0
    }

    pub fn looks_healthy(&self, mode: ProbeMode) -> bool {
        self.state == RunState::Running
            && match mode {
                ProbeMode::Http => self.http_ok == Some(true),
                ProbeMode::ImageCheck => self.check == Some(CheckStatus::Healthy),
                ProbeMode::Running => true,
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not proven yet; look again after `interval`.
    Wait,
    Healthy,
    /// The container stopped or restarted: fail now, not at the deadline.
    Exited,
    Deadline,
}

/// The health gate. `elapsed` is since the container was started; `healthy_since` is when the
/// current healthy streak began (as elapsed time), which this returns updated.
pub fn judge(
    mode: ProbeMode,
    obs: &Observation,
    elapsed: Duration,
    healthy_since: Option<Duration>,
    spec: &HealthSpec,
) -> (Verdict, Option<Duration>) {
    if obs.has_exited() {
        return (Verdict::Exited, None);
    }
    if obs.looks_healthy(mode) {
        let since = healthy_since.unwrap_or(elapsed);
        if elapsed.saturating_sub(since) >= spec.healthy_for {
            return (Verdict::Healthy, Some(since));
        }
        // A streak that started before the deadline may finish after it.
        return (Verdict::Wait, Some(since));
    }
    if elapsed >= spec.deadline {
        return (Verdict::Deadline, None);
    }
    (Verdict::Wait, None)
}

/// Health for `status`: one look, no waiting.
pub fn snapshot_health(mode: ProbeMode, obs: &Observation) -> Health {
    match obs.state {
        RunState::Running => {}
        RunState::Restarting => return Health::Unhealthy,
        _ => return Health::Stopped,
    }
    match mode {
        ProbeMode::Http => {
            if obs.http_ok == Some(true) {
                Health::Healthy
            } else {
                Health::Unhealthy
            }
        }
        ProbeMode::ImageCheck => match obs.check {
            Some(CheckStatus::Healthy) => Health::Healthy,
            Some(CheckStatus::Unhealthy) => Health::Unhealthy,
            Some(CheckStatus::Starting) | None => Health::Unknown,
        },
        ProbeMode::Running => Health::Healthy,
    }
}

// ---------------------------------------------------------------------------------------------
// Retention

/// A stopped, set-aside version of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub id: String,
    pub digest: Option<String>,
    pub finished_at: Option<String>,
    pub running: bool,
}

/// Which set-aside containers to remove: keep the `keep` most recently stopped distinct
/// versions, drop copies of the digest now running and older copies of a kept digest.
/// Running set-aside containers are not ours to judge and are left alone.
pub fn retention(aside: &[Retained], running_digest: Option<&str>, keep: usize) -> Vec<String> {
    let mut stopped: Vec<&Retained> = aside.iter().filter(|r| !r.running).collect();
    stopped.sort_by_key(|r| std::cmp::Reverse(time_key(r.finished_at.as_deref())));
    let mut seen = BTreeSet::new();
    let mut remove = Vec::new();
    let mut kept = 0;
    for r in stopped {
        let digest = r.digest.as_deref().unwrap_or("");
        let redundant = running_digest == Some(digest) || !seen.insert(digest);
        if redundant || kept >= keep {
            remove.push(r.id.clone());
        } else {
            kept += 1;
        }
    }
    remove
}

/// Orders the engine's RFC 3339 timestamps (`2024-05-01T10:00:00.5Z`, variable fraction)
/// correctly; unknown or zero times sort first.
pub fn time_key(t: Option<&str>) -> (String, u32) {
    let Some(t) = t else {
        return (String::new(), 0);
    };
    let t = t.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits: String = frac
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .take(9)
        .collect();
    let nanos = format!("{digits:0<9}").parse().unwrap_or(0);
    (secs.to_string(), nanos)
}

// ---------------------------------------------------------------------------------------------
// Engine refusals

/// Whether an engine refusal is about a passing state (a container the engine is restarting,
/// a network sandbox torn down with it, a removal under way) and worth the same call again
/// shortly, rather than a reason to give up.
pub fn is_transient(e: &RuntimeError) -> bool {
    let text = match e {
        RuntimeError::Unreachable(_) => return false,
        RuntimeError::NotFound(m) | RuntimeError::Conflict(m) | RuntimeError::Api(m) => {
            m.to_ascii_lowercase()
        }
    };
    ["is restarting", "sandbox", "already in progress"]
        .iter()
        .any(|marker| text.contains(marker))
}

// ---------------------------------------------------------------------------------------------
// Registry

/// The classes a pull can fail with, each with its own fix (README, "Exit codes and failures").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    NotFound,
    Unauthorized,
    Unreachable,
    Engine,
}

/// Reads the engine's pull error (its HTTP status when it answered with one, and its message).
pub fn classify_pull_failure(status: Option<u16>, message: &str) -> PullFailure {
    let m = message.to_ascii_lowercase();
    let any = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    if any(&[
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
        "forbidden",
    ]) || matches!(status, Some(401 | 403))
    {
        return PullFailure::Unauthorized;
    }
    if any(&[
        "connection refused",
        "no such host",
        "i/o timeout",
        "timeout exceeded",
        "tls handshake",
        "network is unreachable",
        "no route to host",
        "connection reset",
        "server gave http response to https client",
        "x509:",
        "dial tcp",
    ]) || m.trim_end().ends_with(": eof")
    {
        return PullFailure::Unreachable;
    }
    if any(&[
        "manifest unknown",
        "not found",
        "does not exist",
        "name unknown",
        "blob unknown",
    ]) || status == Some(404)
    {
        return PullFailure::NotFound;
    }
    PullFailure::Engine
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(healthy_for_ms: u64, deadline_ms: u64) -> HealthSpec {
        HealthSpec {
            path: None,
            port: None,
            interval: Duration::from_millis(100),
            healthy_for: Duration::from_millis(healthy_for_ms),
            deadline: Duration::from_millis(deadline_ms),
        }
    }

    fn obs(
        state: RunState,
        restarts: i64,
        check: Option<CheckStatus>,
        http_ok: Option<bool>,
    ) -> Observation {
        Observation {
            state,
            restart_count: restarts,
            check,
            http_ok,
        }
    }

    #[test]
    fn a_fixed_host_port_rules_out_start_first() {
        assert!(binds_fixed_host_port(&[parse_port("8080:80").unwrap()]));
        assert!(!binds_fixed_host_port(&[parse_port("80").unwrap()]));
    }

    #[test]
    fn verify_expects_the_label_then_the_resolved_commit_then_literal_text() {
        let cases = [
            ("revision", Some("abc123"), Some("def456"), Ok("abc123")),
            ("revision", Some(" "), Some("def456"), Ok("def456")),
            ("revision", None, Some("def456"), Ok("def456")),
            ("v1.2.3", Some("abc123"), None, Ok("v1.2.3")),
        ];
        for (expect, label, rev, want) in cases {
            assert_eq!(
                verify_expectation(expect, label, rev).as_deref(),
                want.map_err(|_: ()| String::new()).as_deref(),
                "{expect} {label:?} {rev:?}"
            );
        }
        let err = verify_expectation("revision", None, None).unwrap_err();
        assert!(
            err.contains("no org.opencontainers.image.revision label"),
            "{err}"
        );
        assert_eq!(first_bytes("héllo", 2), "h");
        assert_eq!(first_bytes("héllo", 3), "hé");
        assert_eq!(first_bytes("hi", 200), "hi");
    }

    #[test]
    fn env_files_parse_like_docker() {
        let text = "# comment\n\nA=1\n  B = two words\nexport C=\"quoted\"\nD=\nE=x=y\r\n";
        assert_eq!(
            parse_env_file(text).unwrap(),
            vec!["A=1", "B= two words", "C=\"quoted\"", "D=", "E=x=y"]
        );
        let err = parse_env_file("A=1\nNOEQUALS\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        // A malformed line is never echoed: it may be a secret pasted without its name.
        for bad in ["hunter2-s3cret", "s3cret word=x", "9s3cret=x"] {
            let err = parse_env_file(&format!("A=1\n{bad}\n")).unwrap_err();
            assert!(err.contains("line 2") && !err.contains("s3cret"), "{err}");
        }
        assert!(parse_env_file("1A=x").is_err());
        assert!(parse_env_file("A B=x").is_err());
        // runc would quote the whole entry in its refusal: refused here, by line only.
        let err = parse_env_file("A=1\nDB_PASSWORD=s3cret\0tail\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("NUL") && !err.contains("s3cret"),
            "{err}"
        );
    }

    #[test]
    fn environment_entries_are_cut_out_of_engine_and_compose_messages() {
        let h = HIDDEN_ENV_ENTRY;
        let table = [
            // runc through the engine (bollard's message) and through compose v1's output.
            (
                "failed to create shim task: OCI runtime create failed: runc create failed: \
                 unable to start container process: error during container init: environment \
                 variable value can't contain null(\\x00): \"DB_PASSWORD=s3cret\\x00\": unknown",
                format!(
                    "failed to create shim task: OCI runtime create failed: runc create failed: \
                     unable to start container process: error during container init: \
                     environment variable value can't contain null(\\x00): {h}"
                ),
            ),
            (
                "Creating x_api_1 ... error\r\n\r\nERROR: for api  Cannot start service api: \
                 environment variable name can't contain null(\\x00): \"s3cret\\x00=x\": unknown\n\
                 Encountered errors while bringing up the project.\n",
                format!(
                    "Creating x_api_1 ... error\r\n\r\nERROR: for api  Cannot start service api: \
                     environment variable name can't contain null(\\x00): {h}\n\
                     Encountered errors while bringing up the project.\n"
                ),
            ),
            // The engine's own check.
            (
                "status 400: invalid environment variable: =s3cret",
                format!("status 400: invalid environment variable: {h}"),
            ),
            // compose v1 on an `environment:` list.
            (
                "ERROR: environment variable name 's3cret word' may not contain whitespace.",
                format!("ERROR: environment variable name {h}"),
            ),
            // An unknown wording: nothing after the words is kept.
            (
                "Environment Variable s3cret is odd",
                format!("Environment Variable {h}"),
            ),
            ("no such image", "no such image".to_string()),
            (
                "ends with environment variable\n",
                "ends with environment variable\n".to_string(),
            ),
            ("", String::new()),
        ];
        for (input, want) in table {
            let got = hide_env_entries(input);
            assert_eq!(got, want, "{input:?}");
            assert!(!got.contains("s3cret"), "{got}");
        }
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\n\nc\n", 2), vec!["b", "c"]);
        assert_eq!(last_lines("a", 5), vec!["a"]);
        assert!(last_lines("", 5).is_empty());
    }

    #[test]
    fn names_round_trip_through_classification() {
        let c = "acme-prod-web";
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases = [
            (c.to_string(), NameRole::Canonical),
            (next_name(c), NameRole::Next),
            (
                aside_name(c, Some(d), "01hx"),
                NameRole::Aside {
                    token: "01hx".into(),
                },
            ),
            (
                aside_name(c, None, "abc"),
                NameRole::Aside {
                    token: "abc".into(),
                },
            ),
            ("acme-prod-web2".to_string(), NameRole::Other),
            ("acme-prod-web--".to_string(), NameRole::Other),
            ("other".to_string(), NameRole::Other),
        ];
        for (name, role) in cases {
            assert_eq!(classify_name(c, &name), role, "{name}");
        }
        assert_eq!(
            aside_name(c, Some(d), "o1"),
            "acme-prod-web--0123456789ab-o1"
        );
        // Labels are untrusted text: never sliced blindly.
        assert_eq!(
            aside_name(c, Some("sha256:ééééééééééé"), "o1"),
            "acme-prod-web--unknown-o1"
        );
        assert_eq!(short_label(d), "0123456789ab");
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("é"), "é");
    }

    #[test]
    fn health_verdicts() {
        use CheckStatus::*;
        use RunState::*;
        let ms = Duration::from_millis;
        // (mode, observation, elapsed, streak start, healthy_for, deadline) → (verdict, streak)
        let table = [
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(false)),
                100,
                None,
                500,
                1000,
                Verdict::Wait,
                None,
            ),
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(true)),
                100,
                None,
                500,
                1000,
                Verdict::Wait,
                Some(100),
            ),
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(true)),
                600,
                Some(100),
                500,
                1000,
                Verdict::Healthy,
                Some(100),
            ),
            // The streak breaks: start over.
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(false)),
                500,
                Some(100),
                500,
                1000,
                Verdict::Wait,
                None,
            ),
            // Healthy at once with healthy_for = 0.
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(true)),
                0,
                None,
                0,
                1000,
                Verdict::Healthy,
                Some(0),
            ),
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(false)),
                1000,
                None,
                500,
                1000,
                Verdict::Deadline,
                None,
            ),
            // A streak begun before the deadline may complete after it.
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(true)),
                1100,
                Some(900),
                500,
                1000,
                Verdict::Wait,
                Some(900),
            ),
            (
                ProbeMode::Http,
                obs(Exited, 0, None, None),
                50,
                None,
                500,
                1000,
                Verdict::Exited,
                None,
            ),
            (
                ProbeMode::Http,
                obs(Running, 1, None, Some(true)),
                50,
                None,
                500,
                1000,
                Verdict::Exited,
                None,
            ),
            (
                ProbeMode::Running,
                obs(Restarting, 0, None, None),
                50,
                None,
                500,
                1000,
                Verdict::Exited,
                None,
            ),
            (
                ProbeMode::Running,
                obs(Dead, 0, None, None),
                50,
                None,
                500,
                1000,
                Verdict::Exited,
                None,
            ),
            (
                ProbeMode::Running,
                obs(Created, 0, None, None),
                50,
                None,
                500,
                1000,
                Verdict::Wait,
                None,
            ),
            (
                ProbeMode::Running,
                obs(Running, 0, None, None),
                500,
                Some(0),
                500,
                1000,
                Verdict::Healthy,
                Some(0),
            ),
            (
                ProbeMode::ImageCheck,
                obs(Running, 0, Some(Starting), None),
                100,
                None,
                0,
                1000,
                Verdict::Wait,
                None,
            ),
            (
                ProbeMode::ImageCheck,
                obs(Running, 0, Some(Unhealthy), None),
                100,
                None,
                0,
                1000,
                Verdict::Wait,
                None,
            ),
            (
                ProbeMode::ImageCheck,
                obs(Running, 0, Some(Healthy), None),
                100,
                None,
                0,
                1000,
                Verdict::Healthy,
                Some(100),
            ),
            (
                ProbeMode::ImageCheck,
                obs(Running, 0, Some(Unhealthy), None),
                1000,
                None,
                0,
                1000,
                Verdict::Deadline,
                None,
            ),
        ];
        for (i, (mode, o, elapsed, since, hf, dl, verdict, streak)) in table.into_iter().enumerate()
        {
            let got = judge(mode, &o, ms(elapsed), since.map(ms), &spec(hf, dl));
            assert_eq!(got, (verdict, streak.map(ms)), "row {i}");
        }
    }

    #[test]
    fn probe_mode_and_target() {
        let mut s = spec(0, 0);
        assert_eq!(probe_mode(&s, true), ProbeMode::ImageCheck);
        assert_eq!(probe_mode(&s, false), ProbeMode::Running);
        s.path = Some("/healthz".into());
        assert_eq!(probe_mode(&s, true), ProbeMode::Http);
        assert_eq!(probe_port(&s, &[]), 80);
        assert_eq!(probe_port(&s, &[parse_port("9000:8080").unwrap()]), 8080);
        s.port = Some(7000);
        assert_eq!(probe_port(&s, &[parse_port("9000:8080").unwrap()]), 7000);

        let nets: BTreeMap<String, String> = [
            ("bridge", "172.17.0.2"),
            ("acme", "172.20.0.3"),
            ("empty", ""),
        ]
        .map(|(a, b)| (a.into(), b.into()))
        .into();
        assert_eq!(probe_ip(&nets, Some("acme")).as_deref(), Some("172.20.0.3"));
        assert_eq!(
            probe_ip(&nets, Some("empty")).as_deref(),
            Some("172.17.0.2")
        );
        assert_eq!(probe_ip(&nets, None).as_deref(), Some("172.17.0.2"));
        let only: BTreeMap<String, String> = [("x".to_string(), "10.0.0.2".to_string())].into();
        assert_eq!(probe_ip(&only, None).as_deref(), Some("10.0.0.2"));
        assert_eq!(probe_ip(&BTreeMap::new(), None), None);
    }

    #[test]
    fn snapshot_health_from_one_look() {
        use CheckStatus::*;
        use RunState::*;
        let table = [
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(true)),
                Health::Healthy,
            ),
            (
                ProbeMode::Http,
                obs(Running, 0, None, Some(false)),
                Health::Unhealthy,
            ),
            (ProbeMode::Http, obs(Exited, 0, None, None), Health::Stopped),
            (
                ProbeMode::Running,
                obs(Created, 0, None, None),
                Health::Stopped,
            ),
            (
                ProbeMode::Running,
                obs(Restarting, 3, None, None),
                Health::Unhealthy,
            ),
            (
                ProbeMode::Running,
                obs(Running, 0, None, None),
                Health::Healthy,
            ),
            (
                ProbeMode::ImageCheck,
                obs(Running, 0, Some(Starting), None),
                Health::Unknown,
            ),
            (
                ProbeMode::ImageCheck,
                obs(Running, 0, Some(Unhealthy), None),
                Health::Unhealthy,
            ),
            (
                ProbeMode::ImageCheck,
                obs(Running, 0, Some(Healthy), None),
                Health::Healthy,
            ),
        ];
        for (i, (mode, o, want)) in table.into_iter().enumerate() {
            assert_eq!(snapshot_health(mode, &o), want, "row {i}");
        }
    }

    #[test]
    fn retention_keeps_the_newest_distinct_versions() {
        let r = |id: &str, digest: &str, at: &str| Retained {
            id: id.into(),
            digest: Some(digest.into()),
            finished_at: Some(at.into()),
            running: false,
        };
        // (set-aside containers, running digest) → removed ids
        let table: Vec<(Vec<Retained>, Option<&str>, Vec<&str>)> = vec![
            (vec![], Some("d9"), vec![]),
            (
                vec![r("a", "d1", "2024-01-01T00:00:01Z")],
                Some("d9"),
                vec![],
            ),
            (
                vec![
                    r("a", "d1", "2024-01-01T00:00:01Z"),
                    r("b", "d2", "2024-01-01T00:00:02Z"),
                    r("c", "d3", "2024-01-01T00:00:03Z"),
                    r("d", "d4", "2024-01-01T00:00:04Z"),
                    r("e", "d5", "2024-01-01T00:00:05Z"),
                ],
                Some("d9"),
                vec!["b", "a"],
            ),
            // A copy of what runs now is useless; an older copy of a kept digest too.
            (
                vec![
                    r("a", "d9", "2024-01-01T00:00:09Z"),
                    r("b", "d2", "2024-01-01T00:00:02Z"),
                    r("c", "d2", "2024-01-01T00:00:01Z"),
                ],
                Some("d9"),
                vec!["a", "c"],
            ),
            // Fractions of seconds of varying length still order correctly.
            (
                vec![
                    r("a", "d1", "2024-01-01T00:00:01Z"),
                    r("b", "d2", "2024-01-01T00:00:01.5Z"),
                    r("c", "d3", "2024-01-01T00:00:01.25Z"),
                    r("d", "d4", "2024-01-01T00:00:01.123456789Z"),
                ],
                None,
                vec!["a"],
            ),
        ];
        for (i, (aside, running, want)) in table.into_iter().enumerate() {
            assert_eq!(
                retention(&aside, running, RETAINED_VERSIONS),
                want,
                "row {i}"
            );
        }
        let mut live = r("x", "d1", "2024-01-01T00:00:01Z");
        live.running = true;
        assert!(
            retention(&[live], None, 0).is_empty(),
            "running containers are left alone"
        );
    }

    #[test]
    fn refusals_about_a_restarting_container_are_transient() {
        let table = [
            (
                RuntimeError::Conflict(
                    "Container abc is restarting, wait until the container is running".into(),
                ),
                true,
            ),
            (
                RuntimeError::NotFound("sandbox 5f3c not found".into()),
                true,
            ),
            (
                RuntimeError::Api("Error response from daemon: sandbox 5f3c not found".into()),
                true,
            ),
            (
                RuntimeError::Conflict("removal of container abc is already in progress".into()),
                true,
            ),
            (
                RuntimeError::NotFound("no such container: abc".into()),
                false,
            ),
            (
                RuntimeError::Conflict("the name is already in use".into()),
                false,
            ),
            (
                RuntimeError::Unreachable("connection refused (sandbox)".into()),
                false,
            ),
        ];
        for (e, want) in table {
            assert_eq!(is_transient(&e), want, "{e}");
        }
    }

    #[test]
    fn pull_failures_are_classified() {
        use PullFailure::*;
        let table = [
            (
                Some(404),
                "manifest for 127.0.0.1:5000/demo@sha256:00 not found: manifest unknown: manifest unknown",
                NotFound,
            ),
            (None, "manifest unknown: manifest unknown", NotFound),
            (
                Some(404),
                "pull access denied for x, repository does not exist or may require 'docker login'",
                Unauthorized,
            ),
            (
                Some(500),
                "Head \"https://r/v2/x/manifests/sha256:1\": unauthorized: authentication required",
                Unauthorized,
            ),
            (None, "no basic auth credentials", Unauthorized),
            (
                Some(500),
                "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused",
                Unreachable,
            ),
            (
                Some(500),
                "Get \"https://nope.invalid/v2/\": dial tcp: lookup nope.invalid: no such host",
                Unreachable,
            ),
            (
                Some(500),
                "Get \"https://r/v2/\": net/http: TLS handshake timeout",
                Unreachable,
            ),
            (Some(500), "something else entirely", Engine),
        ];
        for (status, msg, want) in table {
            assert_eq!(classify_pull_failure(status, msg), want, "{msg}");
        }
    }
}
