//! The health book: what the periodic probe last saw for every deployed service, since when,
//! and the recent transitions (healthy → unhealthy and back). Kept in memory for `status` and
//! in `<state_dir>/health.json` so "since" survives a restart.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use deploy::durable;
use proto::time::Timestamp;
use proto::wire::Health;
use serde::{Deserialize, Serialize};

/// Transitions kept on disk; older ones are in the agent's log.
const KEEP_TRANSITIONS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthEntry {
    pub health: Health,
    pub since: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    pub app: String,
    pub service: String,
    pub from: Health,
    pub to: Health,
    pub at: Timestamp,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthBook {
    /// Keyed `app/service` (JSON object keys are strings).
    #[serde(default)]
    services: BTreeMap<String, HealthEntry>,
    #[serde(default)]
    transitions: VecDeque<Transition>,
}

fn key(app: &str, service: &str) -> String {
    format!("{app}/{service}")
}

impl HealthBook {
    /// Records what a probe saw. Returns the transition when the health changed; a first
    /// sighting only starts the clock.
    pub fn observe(
        &mut self,
        app: &str,
        service: &str,
        health: Health,
        at: Timestamp,
    ) -> Observation {
        match self.services.get_mut(&key(app, service)) {
            Some(entry) if entry.health == health => Observation::Unchanged,
            Some(entry) => {
                let t = Transition {
                    app: app.into(),
                    service: service.into(),
                    from: entry.health,
                    to: health,
                    at,
                };
                *entry = HealthEntry { health, since: at };
                self.transitions.push_back(t.clone());
                while self.transitions.len() > KEEP_TRANSITIONS {
                    self.transitions.pop_front();
                }
                Observation::Changed(t)
            }
            None => {
                self.services
                    .insert(key(app, service), HealthEntry { health, since: at });
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
            let got = match book.observe("acme", "web", health, t(at)) {
                Observation::First => "first",
                Observation::Unchanged => "unchanged",
                Observation::Changed(_) => "changed",
            };
            assert_eq!(got, kind, "at {at}");
            assert_eq!(
                book.current("acme", "web"),
                Some(HealthEntry {
                    health,
                    since: t(since)
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
        book.observe("acme", "web", Health::Healthy, Timestamp::from_unix_secs(1));
        book.observe("acme", "web", Health::Stopped, Timestamp::from_unix_secs(2));
        file.save(&book).unwrap();
        assert_eq!(file.load(), (book, None));
        std::fs::write(dir.path().join("health.json"), b"nonsense").unwrap();
        let (fresh, problem) = file.load();
        assert_eq!(fresh, HealthBook::default());
        assert!(problem.is_some());
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
            book.observe("a", "s", h, Timestamp::from_unix_secs(i));
        }
        assert_eq!(book.transitions().count(), KEEP_TRANSITIONS);
    }
}
