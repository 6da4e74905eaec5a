//! The durable outbox under `<state_dir>/alerts/`: one file per alert on its way to one
//! webhook, written (fsync + rename) before any try to deliver it and removed (and the removal
//! fsynced) right after the receiver answered 2xx. What the files hold is what is left to send,
//! after any crash or restart; [`Queue`] is the delivery order and schedule in memory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use deploy::durable;
use serde::{Deserialize, Serialize};

use super::{Alert, Format, Webhook, backoff};

/// Most alerts kept waiting: past it the oldest is given up (a receiver gone for good must not
/// fill the disk).
pub const MAX_PENDING: usize = 1000;

/// One alert on its way to one webhook, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub alert: Alert,
    pub webhook: Webhook,
    pub format: Format,
}

impl Pending {
    /// The webhook and format together: alerts to one target go out in the order raised.
    pub fn target(&self) -> (&Webhook, Format) {
        (&self.webhook, self.format)
    }
}

/// The directory of pending alerts.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    pub fn new(state_dir: &Path) -> Outbox {
        Outbox {
            dir: state_dir.join("alerts"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name of an alert for the `slot`-th webhook: ids sort by time, so names do too.
    pub fn name(alert_id: &str, slot: usize) -> String {
        format!("{alert_id}-{slot}.json")
    }

    /// Writes a pending alert durably; only then may it be sent.
    pub fn put(&self, name: &str, pending: &Pending) -> std::io::Result<()> {
        durable::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(pending).map_err(std::io::Error::other)?;
        durable::write_atomic(&self.dir.join(name), &bytes)
    }

    /// Every pending alert, oldest first, and what could not be read (moved aside as
    /// `*.corrupt`, so it is neither sent nor read again).
    pub fn load(&self) -> (Vec<(String, Pending)>, Vec<String>) {
        durable::remove_stale_temporaries(&self.dir);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (Vec::new(), Vec::new());
        };
        let names: BTreeSet<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        let mut found = Vec::new();
        let mut problems = Vec::new();
        for name in names {
            let path = self.dir.join(&name);
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Pending>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(p) => found.push((name, p)),
                Err(e) => {
                    let aside = path.with_extension("json.corrupt");
                    let _ = std::fs::rename(&path, &aside);
                    problems.push(format!(
                        "pending alert {} is unreadable ({e}); moved aside as {}",
                        path.display(),
                        aside.display()
                    ));
                }
            }
        }
        (found, problems)
    }

    /// The receiver took it: never send it again.
    pub fn remove(&self, name: &str) -> std::io::Result<()> {
        durable::remove(&self.dir.join(name))
    }
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    pending: Pending,
    failures: u32,
    next_try: Instant,
}

/// The pending alerts in memory: per target, the oldest goes first and the next waits for it,
/// so a receiver sees alerts in the order they were raised; a target that fails waits
/// [`backoff`] and holds up no other.
#[derive(Debug, Default)]
pub struct Queue {
    entries: Vec<Entry>,
}

impl Queue {
    /// Adds an alert to try at once. Returns the names of the oldest given up past
    /// [`MAX_PENDING`] (their files are the caller's to remove).
    pub fn push(&mut self, name: String, pending: Pending, now: Instant) -> Vec<String> {
        self.entries.push(Entry {
            name,
            pending,
            failures: 0,
            next_try: now,
        });
        let excess = self.entries.len().saturating_sub(MAX_PENDING);
        self.entries.drain(..excess).map(|e| e.name).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Each target's oldest alert whose time to try has come.
    pub fn due(&self, now: Instant) -> Vec<(String, Pending)> {
        self.heads()
            .filter(|e| e.next_try <= now)
            .map(|e| (e.name.clone(), e.pending.clone()))
            .collect()
    }

    /// When the next try is due, if anything waits.
    pub fn next_try(&self) -> Option<Instant> {
        self.heads().map(|e| e.next_try).min()
    }

    /// A try failed: returns how many tries failed so far, the next one scheduled by [`backoff`]
    /// or, when the receiver asked for longer (`Retry-After`), by `not_before`.
    pub fn failed(&mut self, name: &str, now: Instant, not_before: Option<Duration>) -> u32 {
        let Some(e) = self.entries.iter_mut().find(|e| e.name == name) else {
            return 0;
        };
        e.failures += 1;
        let wait = backoff(e.failures, &e.pending.alert.id).max(not_before.unwrap_or_default());
        e.next_try = now + wait;
        e.failures
    }

    pub fn delivered(&mut self, name: &str) {
        self.entries.retain(|e| e.name != name);
    }

    fn heads(&self) -> impl Iterator<Item = &Entry> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter(move |e| seen.insert(e.pending.target()))
    }
}
