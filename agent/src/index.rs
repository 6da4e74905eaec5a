//! The journal's in-memory index: a summary of every order (without its events), enough to
//! answer `status`, `history`, the migration-once rule and the health watch without reading
//! every file on every request. The files stay the source of truth; this is rebuilt from them
//! at start and updated after every journal write.

use std::collections::{BTreeMap, BTreeSet};

use proto::time::Timestamp;
use proto::wire::{HistoryEntry, Outcome, OutcomeKind};
use proto::{ImageRef, Order, ServiceSpec};

use crate::journal::{OrderRecord, SignerInfo};

#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub seq: u64,
    pub order: Order,
    pub signer: SignerInfo,
    pub accepted_at: Timestamp,
    pub outcome: Option<Outcome>,
    pub duration_ms: Option<u64>,
    pub migration_succeeded: bool,
}

impl From<&OrderRecord> for Summary {
    fn from(r: &OrderRecord) -> Summary {
        Summary {
            seq: r.seq,
            order: r.order.clone(),
            signer: r.signer.clone(),
            accepted_at: r.accepted_at,
            outcome: r.outcome.clone(),
            duration_ms: r.duration_ms,
            migration_succeeded: r.migration_succeeded(),
        }
    }
}

/// A service this agent has deployed at least once, with the spec of its latest order.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed<'a> {
    pub app: &'a str,
    pub service: &'a str,
    pub spec: &'a ServiceSpec,
    pub last: &'a Summary,
}

#[derive(Debug, Default)]
pub struct Index {
    by_id: BTreeMap<String, Summary>,
}

impl Index {
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a OrderRecord>) -> Index {
        let mut index = Index::default();
        for r in records {
            index.update(r);
        }
        index
    }

    pub fn update(&mut self, record: &OrderRecord) {
        self.by_id
            .insert(record.order_id().to_string(), Summary::from(record));
    }

    /// The finished orders of `rollout_id` that named `proposal`, newest first.
    pub fn approved_in_rollout(&self, rollout_id: &str, proposal: &str) -> Vec<&Summary> {
        let mut found: Vec<&Summary> = self
            .by_id
            .values()
            .filter(|s| s.order.rollout_id == rollout_id)
            .filter(|s| s.order.proposal.as_deref() == Some(proposal))
            .filter(|s| s.outcome.is_some())
            .collect();
        found.sort_by_key(|s| std::cmp::Reverse(s.seq));
        found
    }

    /// Every finished order, in no particular order (the metrics count them).
    pub fn finished(&self) -> impl Iterator<Item = &Summary> {
        self.by_id.values().filter(|s| s.outcome.is_some())
    }

    pub fn get(&self, order_id: &str) -> Option<&Summary> {
        self.by_id.get(order_id)
    }

    pub fn next_seq(&self) -> u64 {
        self.by_id
            .values()
            .map(|s| s.seq)
            .max()
            .map_or(1, |m| m + 1)
    }

    /// Newest first.
    fn newest_first(&self) -> Vec<&Summary> {
        let mut all: Vec<&Summary> = self.by_id.values().collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.seq));
        all
    }

    /// The finished order whose migration in this very image already succeeded, if any.
    pub fn migration_done_for(&self, app: &str, image: &ImageRef) -> Option<&Summary> {
        self.newest_first().into_iter().find(|s| {
            s.outcome.is_some()
                && s.migration_succeeded
                && s.order.app == app
                && s.order.migration_image().unwrap_or(&s.order.image).digest() == image.digest()
        })
    }

    pub fn history(&self, limit: usize) -> Vec<HistoryEntry> {
        self.newest_first()
            .into_iter()
            .take(limit)
            .map(|s| HistoryEntry {
                order_id: s.order.order_id.clone(),
                rollout_id: s.order.rollout_id.clone(),
                action: s.order.action,
                signer: s.signer.display(),
                issued_by: s.order.issued_by.clone(),
                accepted_at: s.accepted_at,
                reference: s.order.reference.clone(),
                image: s.order.image.clone(),
                images: s.order.images.clone(),
                refs: s.order.refs.clone(),
                app: s.order.app.clone(),
                services: s.order.services.keys().cloned().collect(),
                outcome: s.outcome.as_ref().map(|o| o.kind),
                reason: s.outcome.as_ref().and_then(|o| o.reason.clone()),
                duration_ms: s.duration_ms,
                run_migration: s.order.run_migration,
                exit_code: s.outcome.as_ref().and_then(|o| o.exit_code),
                proposal: s.order.proposal.clone(),
                override_freeze: s.order.override_freeze.clone(),
            })
            .collect()
    }

    /// Every (app, service) ever deployed here, sorted, with its latest deploy or rollback (an
    /// exec ran in what was deployed and changed nothing of it).
    pub fn deployed(&self) -> Vec<Deployed<'_>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let deploys = self
            .newest_first()
            .into_iter()
            .filter(|s| s.order.action.deploys());
        for s in deploys {
            for (service, spec) in &s.order.services {
                if seen.insert((s.order.app.as_str(), service.as_str())) {
                    out.push(Deployed {
                        app: &s.order.app,
                        service,
                        spec,
                        last: s,
                    });
                }
            }
        }
        out.sort_by(|a, b| (a.app, a.service).cmp(&(b.app, b.service)));
        out
    }

    /// The digest this service ran before `current`: the newest successfully deployed digest that
    /// differs from it. That is what a plain `rollback` would go back to.
    pub fn previous_digest(
        &self,
        app: &str,
        service: &str,
        current: Option<&str>,
    ) -> Option<String> {
        self.newest_first()
            .into_iter()
            .filter(|s| s.order.app == app && s.order.services.contains_key(service))
            .filter(|s| s.order.action.deploys())
            .filter(|s| {
                s.outcome
                    .as_ref()
                    .is_some_and(|o| o.kind == OutcomeKind::Succeeded)
            })
            .map(|s| s.order.image_of(service).digest())
            .find(|d| Some(*d) != current)
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::record;
    use proto::Action;

    fn digest(c: char) -> String {
        format!("sha256:{}", std::iter::repeat_n(c, 64).collect::<String>())
    }

    #[test]
    fn history_is_newest_first_and_limited() {
        let records = [
            record(1, "o1", 'a', Some(OutcomeKind::Succeeded)),
            record(3, "o3", 'c', None),
            record(2, "o2", 'b', Some(OutcomeKind::RolledBack)),
        ];
        let index = Index::from_records(&records);
        let h = index.history(2);
        assert_eq!(
            h.iter().map(|e| e.order_id.as_str()).collect::<Vec<_>>(),
            ["o3", "o2"]
        );
        assert_eq!(h[0].outcome, None);
        assert_eq!(h[1].outcome, Some(OutcomeKind::RolledBack));
        assert_eq!(h[1].signer, "ci@acme (SHA256:abc)");
        assert_eq!(index.next_seq(), 4);
        assert_eq!(Index::default().next_seq(), 1);
    }

    #[test]
    fn migration_is_found_only_for_a_finished_successful_run_of_the_same_digest() {
        // (records, expected order id)
        let mut skipped = record(4, "o4", 'a', Some(OutcomeKind::Succeeded));
        skipped.order.run_migration = false;
        let cases: Vec<(Vec<OrderRecord>, Option<&str>)> = vec![
            (
                vec![record(1, "o1", 'a', Some(OutcomeKind::Succeeded))],
                Some("o1"),
            ),
            (
                vec![record(1, "o1", 'b', Some(OutcomeKind::Succeeded))],
                None,
            ),
            (
                vec![record(1, "o1", 'a', Some(OutcomeKind::MigrationFailed))],
                None,
            ),
            (vec![record(1, "o1", 'a', None)], None),
            (
                vec![
                    record(1, "o1", 'a', Some(OutcomeKind::RolledBack)),
                    skipped.clone(),
                ],
                Some("o1"),
            ),
            (vec![skipped], None),
        ];
        let wanted = record(9, "o9", 'a', None).order.image;
        for (i, (records, expected)) in cases.iter().enumerate() {
            let index = Index::from_records(records);
            let found = index
                .migration_done_for("acme", &wanted)
                .map(|s| s.order.order_id.as_str());
            assert_eq!(found, *expected, "case {i}");
            assert!(index.migration_done_for("other-app", &wanted).is_none());
        }
    }

    #[test]
    fn previous_digest_skips_failures_and_the_current_digest() {
        let records = [
            record(1, "o1", 'a', Some(OutcomeKind::Succeeded)),
            record(2, "o2", 'b', Some(OutcomeKind::Succeeded)),
            record(3, "o3", 'c', Some(OutcomeKind::RolledBack)),
            exec(4, "x4", 'c'),
        ];
        let index = Index::from_records(&records);
        let b = digest('b');
        assert_eq!(
            index.previous_digest("acme", "web", Some(&b)),
            Some(digest('a'))
        );
        assert_eq!(
            index.previous_digest("acme", "web", Some(&digest('a'))),
            Some(b.clone())
        );
        assert_eq!(index.previous_digest("acme", "web", None), Some(b));
        assert_eq!(index.previous_digest("acme", "worker", None), None);
    }

    /// An exec of `web` in digest `c` that exited 0.
    fn exec(seq: u64, id: &str, digest_byte: char) -> OrderRecord {
        let mut r = record(seq, id, digest_byte, Some(OutcomeKind::Succeeded));
        r.order.action = Action::Exec;
        r
    }

    #[test]
    fn deployed_lists_each_service_once_with_its_latest_order() {
        let mut two = record(2, "o2", 'b', Some(OutcomeKind::Succeeded));
        two.order
            .services
            .insert("worker".into(), serde_json::from_str("{}").unwrap());
        let records = [
            record(1, "o1", 'a', Some(OutcomeKind::Succeeded)),
            two,
            record(3, "o3", 'c', None),
            exec(4, "x4", 'c'),
        ];
        let index = Index::from_records(&records);
        let d = index.deployed();
        let got: Vec<_> = d
            .iter()
            .map(|d| (d.service, d.last.order.order_id.as_str()))
            .collect();
        assert_eq!(got, [("web", "o3"), ("worker", "o2")]);
    }
}
