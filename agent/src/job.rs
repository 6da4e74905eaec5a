//! One accepted order while it runs: its journal record, rewritten durably on every event
//! before anyone is told, and a change signal that lets any number of clients follow it.
//!
//! A job belongs to the agent, not to a connection: clients only hold a reference to follow
//! it, so one that disconnects changes nothing (README, Guarantees 4).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use deploy::EventSink;
use proto::Order;
use proto::time::Timestamp;
use proto::wire::{JobEvent, LockHolder, Outcome, Phase};
use tokio::sync::watch;

use crate::journal::{Journal, JournalError, OrderRecord};

/// Locks a mutex even if a panicking thread poisoned it: the data is still the best we have.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a short blocking step (an fsync) without stalling the other tasks of a multi-threaded
/// runtime; on a current-thread runtime it simply runs.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

pub struct Job {
    /// The order as executed.
    pub order: Order,
    /// Who holds the services while this runs (for refusals and `status`).
    pub holder: LockHolder,
    started: Instant,
    record: Mutex<OrderRecord>,
    changed: watch::Sender<u64>,
    /// Set by [`Job::notify`]: until then followers do not see the outcome, even though the
    /// record holds it, because the agent has not yet updated its index and released the locks.
    published: AtomicBool,
    journal: Journal,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("order_id", &self.order.order_id)
            .finish_non_exhaustive()
    }
}

impl Job {
    pub fn new(record: OrderRecord, journal: Journal) -> Job {
        let holder = LockHolder {
            order_id: record.order.order_id.clone(),
            rollout_id: record.order.rollout_id.clone(),
            signer: record.signer.display(),
            issued_by: record.order.issued_by.clone(),
            since: record.accepted_at,
        };
        Job {
            order: record.order.clone(),
            holder,
            started: Instant::now(),
            record: Mutex::new(record),
            changed: watch::Sender::new(0),
            published: AtomicBool::new(false),
            journal,
        }
    }

    pub fn order_id(&self) -> &str {
        &self.order.order_id
    }

    /// Appends an event, journals the whole record durably, then wakes the followers.
    /// On a journal error the event is still kept in memory and shown, and the error returned.
    pub fn record_event(
        &self,
        phase: Phase,
        service: Option<&str>,
        message: &str,
    ) -> Result<(), JournalError> {
        let event = JobEvent {
            order_id: self.order.order_id.clone(),
            at: Timestamp::now(),
            phase,
            service: service.map(str::to_string),
            message: message.to_string(),
        };
        let saved = {
            let mut record = lock(&self.record);
            record.events.push(event);
            blocking(|| self.journal.save(&record))
        };
        self.changed.send_modify(|n| *n += 1);
        saved
    }

    /// Journals the outcome and returns the final record. Followers are woken by
    /// [`Job::notify`] once the agent has also released the job's locks, so a client that sees
    /// the outcome can submit the next order at once.
    pub fn finish(&self, mut outcome: Outcome) -> (OrderRecord, Result<(), JournalError>) {
        let kind = outcome.kind;
        let (record, saved) = {
            let mut record = lock(&self.record);
            if record.duration_ms.is_none() {
                // A job resumed after a restart started before this process did.
                let elapsed = if record.events.iter().any(|e| e.phase == Phase::Recover) {
                    Timestamp::now().since(record.accepted_at)
                } else {
                    self.started.elapsed()
                };
                record.duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            }
            if outcome.order_id.is_empty() {
                outcome.order_id = self.order.order_id.clone();
            }
            if outcome.rollout_id.is_empty() {
                outcome.rollout_id = self.order.rollout_id.clone();
            }
            tracing::info!(
                order_id = %self.order.order_id,
                outcome = %kind,
                reason = outcome.reason.as_deref().unwrap_or("-"),
                duration_ms = record.duration_ms.unwrap_or_default(),
                "order finished"
            );
            record.outcome = Some(outcome);
            let saved = blocking(|| self.journal.save(&record));
            (record.clone(), saved)
        };
        (record, saved)
    }

    pub fn notify(&self) {
        self.published.store(true, Ordering::Release);
        self.changed.send_modify(|n| *n += 1);
    }

    /// Events from `cursor` on, and the outcome once there is one.
    pub fn since(&self, cursor: usize) -> (Vec<JobEvent>, Option<Outcome>) {
        let record = lock(&self.record);
        (
            record.events.get(cursor..).unwrap_or_default().to_vec(),
            record
                .outcome
                .clone()
                .filter(|_| self.published.load(Ordering::Acquire)),
        )
    }

    /// Subscribe BEFORE reading with [`Job::since`], so no change can slip between the two.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn record(&self) -> OrderRecord {
        lock(&self.record).clone()
    }
}

impl EventSink for Job {
    /// The engine's steps; the engine logs them itself (within the job's span), so they are
    /// only journaled and shown here.
    fn emit(&self, phase: Phase, service: Option<&str>, message: &str) {
        tracing::debug!(order_id = %self.order.order_id, service = service.unwrap_or("-"), %phase, "{message}");
        if let Err(e) = self.record_event(phase, service, message) {
            tracing::error!(order_id = %self.order.order_id, service = service.unwrap_or("-"), "journal write failed: {e}");
        }
    }
}
