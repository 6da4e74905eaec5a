//! The agent's journal: one small JSON file per accepted order under `<state_dir>/orders/`,
//! rewritten atomically on every event, so the file on disk is always the latest whole truth
//! about that order, and an order found without an outcome at start is one a crash interrupted.
//!
//! A corrupt file (a disk error, a hand edit) is moved aside to `*.corrupt` and reported; it never
//! stops the agent and never costs the other orders.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use deploy::durable;
use proto::Order;
use proto::time::Timestamp;
use proto::wire::{JobEvent, Outcome, Phase, SignedOrder};
use serde::{Deserialize, Serialize};

/// Who signed an order, as `allowed_signers` and the key say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerInfo {
    pub principal: String,
    pub fingerprint: String,
}

impl SignerInfo {
    /// `principal (SHA256:…)`, the form history and lock holders show.
    pub fn display(&self) -> String {
        format!("{} ({})", self.principal, self.fingerprint)
    }
}

/// Everything the agent knows about one accepted order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRecord {
    /// Agent-local acceptance sequence: orders sort by it, whatever the controllers' clocks say.
    pub seq: u64,
    /// The order exactly as signed, kept for audit.
    pub signed: SignedOrder,
    /// The order as executed: `run_migration` is cleared when this digest's migration already ran.
    pub order: Order,
    pub signer: SignerInfo,
    pub accepted_at: Timestamp,
    #[serde(default)]
    pub events: Vec<JobEvent>,
    /// None while the job runs (or was interrupted by a crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl OrderRecord {
    pub fn order_id(&self) -> &str {
        &self.order.order_id
    }

    /// Did this order run its migration to a successful end? Only then may a later order of the
    /// same digest skip it (a migration runs once per digest and host). A switch happens only
    /// after the migration succeeded, so any switch-or-later step proves it; when in doubt (a
    /// crash between migration and switch) the answer is no, and the migration runs again.
    pub fn migration_succeeded(&self) -> bool {
        use proto::wire::OutcomeKind::*;
        self.order.run_migration
            && self.order.migrate.is_some()
            && (self
                .outcome
                .as_ref()
                .is_some_and(|o| matches!(o.kind, Succeeded | RolledBack | RollbackFailed))
                || self
                    .events
                    .iter()
                    .any(|e| matches!(e.phase, Phase::Switch | Phase::Health | Phase::Cleanup)))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("writing journal file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("reading journal file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("journal file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{0:?} is not a valid order id")]
    BadId(String),
}

/// Order ids become file names: only a safe alphabet, bounded length (proto allows 128).
pub fn is_valid_order_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let dir = state_dir.join("orders");
        fs::create_dir_all(&dir).map_err(|source| JournalError::Dir {
            path: dir.clone(),
            source,
        })?;
        durable::remove_stale_temporaries(&dir);
        Ok(Journal { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, order_id: &str) -> Result<PathBuf, JournalError> {
        if !is_valid_order_id(order_id) {
            return Err(JournalError::BadId(order_id.to_string()));
        }
        Ok(self.dir.join(format!("{order_id}.json")))
    }

    pub fn save(&self, record: &OrderRecord) -> Result<(), JournalError> {
        let path = self.path_of(record.order_id())?;
        let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| JournalError::Write {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        bytes.push(b'\n');
        durable::write_atomic(&path, &bytes).map_err(|source| JournalError::Write { path, source })
    }

    /// One order, or None when the journal never heard of it.
    pub fn load(&self, order_id: &str) -> Result<Option<OrderRecord>, JournalError> {
        let path = self.path_of(order_id)?;
        match fs::read(&path) {
            Ok(bytes) => parse_record(&path, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JournalError::Read { path, source }),
        }
    }

    /// Every readable order. Corrupt files are moved aside (and returned as errors for the log).
    pub fn load_all(&self) -> (Vec<OrderRecord>, Vec<JournalError>) {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(source) => {
                return (
                    records,
                    vec![JournalError::Dir {
                        path: self.dir.clone(),
                        source,
                    }],
                );
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_record = path.extension().is_some_and(|e| e == "json")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_record {
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|source| JournalError::Read {
                    path: path.clone(),
                    source,
                })
                .and_then(|bytes| parse_record(&path, &bytes));
            match parsed {
                Ok(r) => records.push(r),
                Err(e) => {
                    if matches!(e, JournalError::Corrupt { .. }) {
                        let aside = path.with_extension("json.corrupt");
                        let _ = fs::rename(&path, &aside);
                    }
                    problems.push(e);
                }
            }
        }
        records.sort_by_key(|r| r.seq);
        (records, problems)
    }
}

fn parse_record(path: &Path, bytes: &[u8]) -> Result<OrderRecord, JournalError> {
    let record: OrderRecord = serde_json::from_slice(bytes).map_err(|e| JournalError::Corrupt {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let expected = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if record.order_id() != expected {
        return Err(JournalError::Corrupt {
            path: path.to_path_buf(),
            message: format!("holds order {:?}, not {expected:?}", record.order_id()),
        });
    }
    Ok(record)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proto::wire::OutcomeKind;
    use std::collections::BTreeMap;

    pub(crate) fn order(id: &str, digest_byte: char) -> Order {
        let digest = format!(
            "sha256:{}",
            std::iter::repeat_n(digest_byte, 64).collect::<String>()
        );
        let services: BTreeMap<String, proto::ServiceSpec> =
            [("web".to_string(), serde_json::from_str("{}").unwrap())]
                .into_iter()
                .collect();
        Order {
            order_id: id.to_string(),
            rollout_id: format!("r-{id}"),
            env: "staging".into(),
            host: "h1".into(),
            host_key: None,
            issued_at: Timestamp::from_unix_secs(1_800_000_000),
            not_after: Timestamp::from_unix_secs(1_800_000_600),
            issued_by: "ci".into(),
            action: proto::Action::Deploy,
            image: proto::ImageRef::new("127.0.0.1:5000/acme/web", &digest).unwrap(),
            images: Default::default(),
            migrate_image: None,
            revision: None,
            reference: "v1".into(),
            refs: Default::default(),
            tags: Default::default(),
            run_migration: true,
            rerun_migration: false,
            app: "acme".into(),
            services,
            migrate: Some(proto::MigrationSpec {
                command: vec!["/app".into(), "migrate".into()],
                service: "web".into(),
                timeout: std::time::Duration::from_secs(60),
                image: None,
            }),
            exec: None,
            maintenance: None,
            proposal: None,
            override_freeze: None,
        }
    }

    pub(crate) fn record(
        seq: u64,
        id: &str,
        digest_byte: char,
        outcome: Option<OutcomeKind>,
    ) -> OrderRecord {
        let order = order(id, digest_byte);
        OrderRecord {
            seq,
            signed: SignedOrder {
                payload: serde_json::to_string(&order).unwrap(),
                signature: "sig".into(),
            },
            signer: SignerInfo {
                principal: "ci@acme".into(),
                fingerprint: "SHA256:abc".into(),
            },
            accepted_at: Timestamp::from_unix_secs(1_800_000_000 + seq),
            events: vec![],
            outcome: outcome.map(|kind| Outcome {
                order_id: id.to_string(),
                rollout_id: order.rollout_id.clone(),
                kind,
                failure: None,
                reason: None,
                changed: kind == OutcomeKind::Succeeded,
                log_tail: vec![],
                services: BTreeMap::new(),
                started_at: Timestamp::from_unix_secs(1_800_000_000 + seq),
                finished_at: Timestamp::from_unix_secs(1_800_000_010 + seq),
                rollback_ms: None,
                exit_code: None,
            }),
            duration_ms: None,
            order,
        }
    }

    #[test]
    fn records_round_trip_and_corrupt_files_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = record(1, "01a", 'a', Some(OutcomeKind::Succeeded));
        let b = record(2, "01b", 'b', None);
        j.save(&a).unwrap();
        j.save(&b).unwrap();
        fs::write(j.dir().join("01c.json"), b"{ half a rec").unwrap();
        fs::write(j.dir().join("01d.json"), serde_json::to_vec(&a).unwrap()).unwrap();
        let (records, problems) = j.load_all();
        assert_eq!(records, vec![a.clone(), b]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(j.dir().join("01c.json.corrupt").exists());
        assert!(j.dir().join("01d.json.corrupt").exists());
        assert_eq!(j.load("01a").unwrap(), Some(a));
        assert_eq!(j.load("01z").unwrap(), None);
    }

    #[test]
    fn order_ids_that_are_not_file_names_are_refused() {
        for bad in ["", "../etc/passwd", "a/b", "a.json", &"x".repeat(129)] {
            assert!(!is_valid_order_id(bad), "{bad}");
        }
        assert!(is_valid_order_id("01jabcdefghjkmnpqrstvwxyz0"));
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert!(matches!(j.load("../x"), Err(JournalError::BadId(_))));
    }

    #[test]
    fn migration_success_is_judged_from_outcome_or_steps() {
        let event = |phase| JobEvent {
            order_id: "o".into(),
            at: Timestamp::from_unix_secs(1),
            phase,
            service: None,
            message: String::new(),
        };
        // (outcome, phases seen, run_migration, expected)
        let cases: &[(Option<OutcomeKind>, &[Phase], bool, bool)] = &[
            (Some(OutcomeKind::Succeeded), &[], true, true),
            (Some(OutcomeKind::RolledBack), &[], true, true),
            (
                Some(OutcomeKind::MigrationFailed),
                &[Phase::Migrate],
                true,
                false,
            ),
            (Some(OutcomeKind::PullFailed), &[Phase::Pull], true, false),
            (
                Some(OutcomeKind::Failed),
                &[Phase::Migrate, Phase::Switch],
                true,
                true,
            ),
            (
                Some(OutcomeKind::Failed),
                &[Phase::Migrate, Phase::Recover],
                true,
                false,
            ),
            (None, &[Phase::Migrate, Phase::Health], true, true),
            (Some(OutcomeKind::Succeeded), &[], false, false),
        ];
        for (i, (outcome, phases, run, expected)) in cases.iter().enumerate() {
            let mut r = record(1, "o", 'a', *outcome);
            r.order.run_migration = *run;
            r.events = phases.iter().map(|p| event(*p)).collect();
            assert_eq!(r.migration_succeeded(), *expected, "case {i}");
        }
    }
}
