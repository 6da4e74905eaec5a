//! `[[alerts]]` (README, "Alerts"), the pure half: the alert kinds and which transition or
//! outcome raises which, the webhook targets of `agent.toml`, what an alert says in each
//! format, and how long delivery waits between tries. The durable outbox is [`outbox`]; the
//! handle that raises alerts and the task that delivers them are in [`delivery`].

pub mod delivery;
pub mod outbox;

use std::fmt;
use std::time::Duration;

use proto::Order;
use proto::time::Timestamp;
use proto::wire::{Health, HealthReason, Outcome, OutcomeKind};
use serde::{Deserialize, Serialize};

use crate::health::Transition;

/// What an alert is about; the values of `on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A service left `healthy`.
    Unhealthy,
    /// A service is `healthy` again.
    Recovered,
    /// A service's container entered a crash loop.
    CrashLoop,
    /// An order failed and the previous version is back.
    RolledBack,
    /// An order failed and the previous version could not be brought back: needs a human.
    RollbackFailed,
    /// The agent started (after a deploy of itself, a reboot, a crash).
    AgentStarted,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::Unhealthy,
        AlertKind::Recovered,
        AlertKind::CrashLoop,
        AlertKind::RolledBack,
        AlertKind::RollbackFailed,
        AlertKind::AgentStarted,
    ];
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&proto::wire::serde_name(self))
    }
}

/// The alert a health transition raises, if any: into a crash loop; out of `healthy`; back
/// to `healthy`; and a death (`exited`, `oom-killed`) of a service already unhealthy for
/// another reason (its probe failed first), so the death is named. Other moves between
/// unhealthy states (stopped → unhealthy while a restarted container settles) raise none.
pub fn health_alert(t: &Transition) -> Option<AlertKind> {
    let death =
        |r: Option<HealthReason>| matches!(r, Some(HealthReason::Exited | HealthReason::OomKilled));
    match (t.from, t.to) {
        (f, Health::CrashLoop) if f != Health::CrashLoop => Some(AlertKind::CrashLoop),
        (Health::Healthy, to) if to != Health::Healthy => Some(AlertKind::Unhealthy),
        (f, Health::Healthy) if f != Health::Healthy => Some(AlertKind::Recovered),
        (Health::CrashLoop, _) | (_, Health::CrashLoop) => None,
        _ if death(t.reason) && !death(t.from_reason) => Some(AlertKind::Unhealthy),
        _ => None,
    }
}

/// The alert an order's outcome raises, if any.
pub fn outcome_alert(kind: OutcomeKind) -> Option<AlertKind> {
    match kind {
        OutcomeKind::RolledBack => Some(AlertKind::RolledBack),
        OutcomeKind::RollbackFailed => Some(AlertKind::RollbackFailed),
        _ => None,
    }
}

/// How an alert is put for its receiver: `json` (our schema, [`Alert`]), `slack`
/// (`{"text": …}`), `discord` (`{"content": …}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    #[default]
    Json,
    Slack,
    Discord,
}

/// A webhook URL: http or https, with a host. Shown without its path ([`Webhook::shown`]),
/// since a Slack or Discord webhook's path is its secret.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Webhook(String);

impl Webhook {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `scheme://host[:port]/…`, for logs and `check-config`.
    pub fn shown(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(u) => format!(
                "{}://{}{}/…",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ),
            Err(_) => "(unparsable)".into(),
        }
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Webhook({})", self.shown())
    }
}

impl TryFrom<String> for Webhook {
    type Error = String;

    fn try_from(s: String) -> Result<Webhook, String> {
        let url = reqwest::Url::parse(&s).map_err(|e| format!("webhook {s:?} is no URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "webhook {:?}: the scheme must be http or https, not {:?}",
                Webhook(s.clone()).shown(),
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("webhook: the URL names no host".into());
        }
        Ok(Webhook(s))
    }
}

impl From<Webhook> for String {
    fn from(w: Webhook) -> String {
        w.0
    }
}

/// `on`: the kinds a webhook is sent, at least one; all of them when not given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<AlertKind>")]
pub struct OnKinds(Vec<AlertKind>);

impl Default for OnKinds {
    fn default() -> Self {
        OnKinds(AlertKind::ALL.to_vec())
    }
}

impl TryFrom<Vec<AlertKind>> for OnKinds {
    type Error = String;

    fn try_from(mut kinds: Vec<AlertKind>) -> Result<OnKinds, String> {
        if kinds.is_empty() {
            return Err(
                "`on` is empty: leave it out for every kind, or name some of unhealthy, \
                 recovered, crash-loop, rolled-back, rollback-failed, agent-started"
                    .into(),
            );
        }
        kinds.sort();
        kinds.dedup();
        Ok(OnKinds(kinds))
    }
}

impl OnKinds {
    pub fn kinds(&self) -> &[AlertKind] {
        &self.0
    }
}

/// One `[[alerts]]` entry of `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertTarget {
    pub webhook: Webhook,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub on: OnKinds,
}

impl AlertTarget {
    pub fn wants(&self, kind: AlertKind) -> bool {
        self.on.0.contains(&kind)
    }

    /// For `check-config`: where, how, and on what.
    pub fn summary(&self) -> String {
        let on: Vec<String> = self.on.0.iter().map(ToString::to_string).collect();
        let format = serde_json::to_value(self.format).unwrap_or_default();
        format!(
            "{} ({}) on {}",
            self.webhook.shown(),
            format.as_str().unwrap_or(""),
            on.join(", ")
        )
    }
}

/// One alert, as raised; in the `json` format this is the body, field for field (README,
/// "Alerts"). `id` is also sent as the `Idempotency-Key` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub id: String,
    pub kind: AlertKind,
    pub host: String,
    pub env: String,
    pub app: Option<String>,
    /// The service; for an order's outcome, the order's services joined by `,`.
    pub service: Option<String>,
    /// A health transition's states (`healthy`, `stopped`, `crash-loop`, …).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Why: the health model's reason (`oom-killed`, `exited`, …), or an outcome's.
    pub reason: Option<String>,
    pub exit_code: Option<i64>,
    pub at: Timestamp,
    pub agent_version: String,
}

/// Who raises alerts: the agent's host, env and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub host: String,
    pub env: String,
    pub version: String,
}

impl Source {
    fn alert(&self, id: String, kind: AlertKind, at: Timestamp) -> Alert {
        Alert {
            id,
            kind,
            host: self.host.clone(),
            env: self.env.clone(),
            app: None,
            service: None,
            from: None,
            to: None,
            reason: None,
            exit_code: None,
            at,
            agent_version: self.version.clone(),
        }
    }

    /// The alert of a health transition, if it raises one.
    pub fn health(&self, id: String, t: &Transition) -> Option<Alert> {
        let kind = health_alert(t)?;
        Some(Alert {
            app: Some(t.app.clone()),
            service: Some(t.service.clone()),
            from: Some(t.from.to_string()),
            to: Some(t.to.to_string()),
            reason: t.reason.map(|r| r.to_string()),
            exit_code: t.exit_code,
            ..self.alert(id, kind, t.at)
        })
    }

    /// The alert of an order's outcome, if it raises one.
    pub fn outcome(&self, id: String, order: &Order, outcome: &Outcome) -> Option<Alert> {
        let kind = outcome_alert(outcome.kind)?;
        let services: Vec<&str> = order.services.keys().map(String::as_str).collect();
        let why = outcome.reason.as_deref().unwrap_or("no reason given");
        Some(Alert {
            app: Some(order.app.clone()),
            service: Some(services.join(",")),
            reason: Some(format!(
                "order {} ({}): {why}",
                order.order_id, order.reference
            )),
            ..self.alert(id, kind, outcome.finished_at)
        })
    }

    pub fn started(&self, id: String, at: Timestamp) -> Alert {
        self.alert(id, AlertKind::AgentStarted, at)
    }
}

/// One line for people: the `slack` and `discord` formats' text.
pub fn summary(a: &Alert) -> String {
    let place = format!("{} ({})", a.host, a.env);
    let what = match (&a.app, &a.service) {
        (Some(app), Some(service)) => format!("{app}/{service}"),
        (Some(app), None) => app.clone(),
        _ => String::new(),
    };
    let why = match (&a.reason, a.exit_code) {
        (Some(r), Some(c)) => format!(" ({r}, exit code {c})"),
        (Some(r), None) => format!(" ({r})"),
        (None, Some(c)) => format!(" (exit code {c})"),
        (None, None) => String::new(),
    };
    match (a.kind, &a.from, &a.to) {
        (AlertKind::AgentStarted, _, _) => {
            format!("agent-started: deploy-agent {} on {place}", a.agent_version)
        }
        (kind, Some(from), Some(to)) => format!("{kind}: {what} on {place}: {from} → {to}{why}"),
        (kind, _, _) => format!("{kind}: {what} on {place}{why}"),
    }
}

/// Discord refuses a message over 2000 characters.
const DISCORD_MAX: usize = 2000;

/// The request body (JSON) for a webhook of `format`; the `json` one keeps [`Alert`]'s field
/// order.
pub fn render(format: Format, alert: &Alert) -> String {
    let body = match format {
        Format::Json => return serde_json::to_string(alert).unwrap_or_default(),
        Format::Slack => serde_json::json!({ "text": summary(alert) }),
        Format::Discord => {
            let text: String = summary(alert).chars().take(DISCORD_MAX).collect();
            serde_json::json!({ "content": text })
        }
    };
    body.to_string()
}

/// What a receiver's HTTP status means for the alert it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Delivered,
    /// The receiver refuses this alert's body: sent again it gets the same answer, and as alerts
    /// to one webhook go one at a time in order, it would hold up every alert after it for good.
    Refused,
    /// The receiver, or the way to it, is not ready: overloaded, down, or misconfigured
    /// (401/403/404 are fixed at the receiver or in agent.toml, and the alert is still wanted
    /// then). Tried again.
    Retry,
}

/// The meaning of `status`: 2xx delivered; 400, 413, 415 and 422 — the body itself refused —
/// given up; anything else retried.
pub fn answer(status: u16) -> Answer {
    match status {
        200..=299 => Answer::Delivered,
        400 | 413 | 415 | 422 => Answer::Refused,
        _ => Answer::Retry,
    }
}

/// The first line of a receiver's reply, at most 200 characters and no control characters
/// (it goes into the journal): enough to say why it refused.
pub fn reply_excerpt(reply: &str) -> String {
    let line = reply.lines().next().unwrap_or_default().trim();
    let mut shown: String = line
        .chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().nth(200).is_some() {
        shown.push('…');
    }
    shown
}

/// The longest `Retry-After` honoured: a receiver cannot park an alert for longer than this.
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// A receiver's `Retry-After` (RFC 9110: delta-seconds; the HTTP-date form is not read, and the
/// backoff applies), at most [`LONGEST_RETRY_AFTER`].
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let seconds: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(LONGEST_RETRY_AFTER))
}

/// The wait after the first failed try.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// The longest wait between two tries.
pub const LONGEST_RETRY: Duration = Duration::from_secs(30);

/// The wait before the next try of an alert after `failures` failed ones: 0.5 s doubling up
/// to 30 s, each drawn between half and all of that so alerts that failed together do not
/// retry together. The draw comes from the alert's id, so one alert's schedule is the same
/// every time (and testable).
pub fn backoff(failures: u32, id: &str) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    let ceiling = FIRST_RETRY
        .saturating_mul(1 << doublings)
        .min(LONGEST_RETRY);
    // FNV-1a: a stable hash, unlike std's, whose algorithm may change between releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(failures.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let draw = (h % 1000) as f64 / 1000.0;
    ceiling.mul_f64(0.5 + 0.5 * draw)
}

#[cfg(test)]
mod tests;
