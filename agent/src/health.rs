//! The health book: what the health model last judged for every deployed service, since when,
//! the recent transitions (healthy → unhealthy and back, with why), and the recent deaths of
//! each service's container ([`crate::condition`] judges a crash loop from them). Kept in
//! memory for `status` and in `<state_dir>/health.json`, so "since" and a crash loop in
//! progress survive a restart.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use deploy::durable;
use proto::time::Timestamp;
use proto::wire::{Health, HealthReason};
use serde::{Deserialize, Serialize};

use crate::condition::{self, Death, OOM_NAMES_DEATH_WITHIN, Seen};

/// Transitions kept on disk; older ones are in the agent's log.
const KEEP_TRANSITIONS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthEntry {
    pub health: Health,
    /// When `health` last changed (a new reason alone keeps it).
    pub since: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<HealthReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    pub app: String,
    pub service: String,
    pub from: Health,
    /// Why it was not healthy before (a transition may change only the reason: an unhealthy
    /// service whose container then died).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_reason: Option<HealthReason>,
    pub to: Health,
    pub at: Timestamp,
    /// Why the service is not healthy (README, "The health model").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<HealthReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthBook {
    /// Keyed `app/service` (JSON object keys are strings).
    #[serde(default)]
    services: BTreeMap<String, HealthEntry>,
    #[serde(default)]
    transitions: VecDeque<Transition>,
    /// Keyed like `services`: the recent deaths of the serving container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    deaths: BTreeMap<String, Vec<Death>>,
    /// When the engine last reported an OOM kill per service, until the death it names.
    #[serde(skip)]
    oom: BTreeMap<String, Timestamp>,
}

fn key(app: &str, service: &str) -> String {
    format!("{app}/{service}")
}

impl HealthBook {
    /// Records what the model judged. Returns the transition when the health or the reason
    /// changed; a first sighting only starts the clock.
    pub fn observe(&mut self, app: &str, service: &str, seen: Seen, at: Timestamp) -> Observation {
        let (health, reason) = (seen.health, seen.reason);
        match self.services.get_mut(&key(app, service)) {
            Some(entry) if entry.health == health && entry.reason == reason => {
                Observation::Unchanged
            }
            Some(entry) => {
                let t = Transition {
                    app: app.into(),
                    service: service.into(),
                    from: entry.health,
                    from_reason: entry.reason,
                    to: health,
                    at,
                    reason,
                    exit_code: seen.exit_code,
                };
                let since = if entry.health == health {
                    entry.since
                } else {
                    at
                };
                *entry = HealthEntry {
                    health,
                    since,
                    reason,
                };
                self.transitions.push_back(t.clone());
                while self.transitions.len() > KEEP_TRANSITIONS {
                    self.transitions.pop_front();
                }
                Observation::Changed(t)
            }
            None => {
                let entry = HealthEntry {
                    health,
                    since: at,
                    reason,
                };
                self.services.insert(key(app, service), entry);
                Observation::First
            }
        }
    }

    pub fn current(&self, app: &str, service: &str) -> Option<HealthEntry> {
        self.services.get(&key(app, service)).copied()
    }

    pub fn transitions(&self) -> impl Iterator<Item = &Transition> {
        self.transitions.iter()
    }

    /// The recent deaths of the service's container, oldest first.
    pub fn deaths(&self, app: &str, service: &str) -> &[Death] {
        self.deaths
            .get(&key(app, service))
            .map_or(&[], Vec::as_slice)
    }

    /// The engine reported an OOM kill in the service's container.
    pub fn oom_reported(&mut self, app: &str, service: &str, at: Timestamp) {
        self.oom.insert(key(app, service), at);
    }

    /// The serving container died; an OOM kill reported just before names the death.
    pub fn record_death(
        &mut self,
        app: &str,
        service: &str,
        exit_code: Option<i64>,
        oom_killed: bool,
        at: Timestamp,
    ) {
        let key = key(app, service);
        let reported = self
            .oom
            .remove(&key)
            .is_some_and(|t| at.since(t) <= OOM_NAMES_DEATH_WITHIN);
        let death = Death {
            at,
            exit_code,
            oom: oom_killed || reported,
        };
        condition::record_death(self.deaths.entry(key).or_default(), death);
    }

    /// A new version runs: the deaths of the one before say nothing of it.
    pub fn forget_deaths(&mut self, app: &str, service: &str) {
        let key = key(app, service);
        self.deaths.remove(&key);
        self.oom.remove(&key);
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    First,
    Unchanged,
    Changed(Transition),
}

/// Where the book lives on disk.
#[derive(Debug, Clone)]
pub struct HealthFile {
    path: PathBuf,
}

impl HealthFile {
    pub fn new(state_dir: &Path) -> HealthFile {
        HealthFile {
            path: state_dir.join("health.json"),
        }
    }

    /// The saved book; a missing or unreadable file starts an empty one (health is re-observed
    /// within one interval, so nothing of value is lost).
    pub fn load(&self) -> (HealthBook, Option<String>) {
        match std::fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(book) => (book, None),
                Err(e) => (
                    HealthBook::default(),
                    Some(format!(
                        "{} is unreadable ({e}); starting afresh",
                        self.path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HealthBook::default(), None),
            Err(e) => (
                HealthBook::default(),
                Some(format!(
                    "cannot read {}: {e}; starting afresh",
                    self.path.display()
                )),
            ),
        }
    }

    pub fn save(&self, book: &HealthBook) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(book).map_err(std::io::Error::other)?;
        durable::write_atomic(&self.path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_are_transitions() {
        let t = Timestamp::from_unix_secs;
        let mut book = HealthBook::default();
        // (observed, at, expected observation kind, since afterwards)
        let steps = [
            (Health::Healthy, 10, "first", 10),
            (Health::Healthy, 20, "unchanged", 10),
            (Health::Unhealthy, 30, "changed", 30),
            (Health::Unhealthy, 40, "unchanged", 30),
            (Health::Healthy, 50, "changed", 50),
        ];
        for (health, at, kind, since) in steps {
            let got = match book.observe("acme", "web", Seen::plain(health), t(at)) {
                Observation::First => "first",
                Observation::Unchanged => "unchanged",
                Observation::Changed(_) => "changed",
            };
            assert_eq!(got, kind, "at {at}");
            assert_eq!(
                book.current("acme", "web"),
                Some(HealthEntry {
                    health,
                    since: t(since),
                    reason: None,
                })
            );
        }
        let seen: Vec<_> = book.transitions().map(|tr| (tr.from, tr.to)).collect();
        assert_eq!(
            seen,
            [
                (Health::Healthy, Health::Unhealthy),
                (Health::Unhealthy, Health::Healthy)
            ]
        );
        assert_eq!(book.current("acme", "worker"), None);
    }

    #[test]
    fn the_book_survives_a_restart_and_a_bad_file_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = HealthFile::new(dir.path());
        let mut book = HealthBook::default();
        book.observe(
            "acme",
            "web",
            Seen::plain(Health::Healthy),
            Timestamp::from_unix_secs(1),
        );
        let stopped = Seen {
            health: Health::Stopped,
            reason: Some(HealthReason::OomKilled),
            exit_code: Some(137),
        };
        book.oom_reported("acme", "web", Timestamp::from_unix_secs(2));
        book.record_death(
            "acme",
            "web",
            Some(137),
            false,
            Timestamp::from_unix_secs(2),
        );
        book.observe("acme", "web", stopped, Timestamp::from_unix_secs(2));
        file.save(&book).unwrap();
        let text = std::fs::read_to_string(dir.path().join("health.json")).unwrap();
        assert!(
            text.contains("\"reason\": \"oom-killed\"") && text.contains("\"oom\": true"),
            "the reason and the death are journaled: {text}"
        );
        assert_eq!(file.load(), (book, None));
        std::fs::write(dir.path().join("health.json"), b"nonsense").unwrap();
        let (fresh, problem) = file.load();
        assert_eq!(fresh, HealthBook::default());
        assert!(problem.is_some());
    }

    #[test]
    fn a_new_reason_is_a_transition_that_keeps_since() {
        let t = Timestamp::from_unix_secs;
        let seen = |health, reason| Seen {
            health,
            reason,
            exit_code: None,
        };
        let mut book = HealthBook::default();
        book.observe("a", "s", seen(Health::Healthy, None), t(1));
        let failing = seen(Health::Unhealthy, Some(HealthReason::ProbeFailed));
        let oom = seen(Health::Unhealthy, Some(HealthReason::OomKilled));
        assert!(matches!(
            book.observe("a", "s", failing, t(2)),
            Observation::Changed(_)
        ));
        assert_eq!(
            book.observe("a", "s", failing, t(3)),
            Observation::Unchanged
        );
        let Observation::Changed(died) = book.observe("a", "s", oom, t(4)) else {
            panic!("a new reason is a transition")
        };
        assert_eq!(
            (died.from, died.from_reason, died.to, died.reason),
            (
                Health::Unhealthy,
                Some(HealthReason::ProbeFailed),
                Health::Unhealthy,
                Some(HealthReason::OomKilled)
            )
        );
        assert_eq!(
            book.current("a", "s"),
            Some(HealthEntry {
                health: Health::Unhealthy,
                since: t(2),
                reason: Some(HealthReason::OomKilled),
            }),
            "since is when the health changed"
        );
    }

    #[test]
    fn an_oom_report_names_the_death_that_follows_it_soon() {
        let t = Timestamp::from_unix_secs;
        let mut book = HealthBook::default();
        // (oom reported at, died at, engine's OOMKilled flag, named an OOM kill)
        let cases = [
            (Some(10), 10, false, true),
            (Some(10), 15, false, true),
            (Some(10), 16, false, false),
            (None, 20, false, false),
            (None, 20, true, true),
        ];
        for (i, (reported, died, flag, oom)) in cases.into_iter().enumerate() {
            book.forget_deaths("a", "s");
            if let Some(r) = reported {
                book.oom_reported("a", "s", t(r));
            }
            book.record_death("a", "s", Some(137), flag, t(died));
            assert_eq!(
                book.deaths("a", "s").last().map(|d| d.oom),
                Some(oom),
                "case {i}"
            );
        }
        // A report is used up by the death it names.
        book.oom_reported("a", "s", t(30));
        book.record_death("a", "s", Some(137), false, t(31));
        book.record_death("a", "s", Some(1), false, t(32));
        let named: Vec<bool> = book.deaths("a", "s").iter().map(|d| d.oom).collect();
        assert_eq!(named, [true, true, false]);
    }

    #[test]
    fn old_transitions_are_dropped() {
        let mut book = HealthBook::default();
        for i in 0..(KEEP_TRANSITIONS as u64 + 10) {
            let h = if i % 2 == 0 {
                Health::Healthy
            } else {
                Health::Unhealthy
            };
            book.observe("a", "s", Seen::plain(h), Timestamp::from_unix_secs(i));
        }
        assert_eq!(book.transitions().count(), KEEP_TRANSITIONS);
    }
}
