//! One accepted order while it runs: its journal record, rewritten durably on every event
//! before anyone is told, an exec's output lines (in memory only, never journaled), and a
//! change signal that lets any number of clients follow it.
//!
//! A job belongs to the agent, not to a connection: clients only hold a reference to follow
//! it, so one that disconnects changes nothing (README, Guarantees 4).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use deploy::EventSink;
use proto::Order;
use proto::time::Timestamp;
use proto::wire::{JobEvent, LockHolder, Outcome, OutputLine, OutputStream, Phase};
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

/// How much of an exec's output a job keeps for its followers: a follower that falls further
/// behind is told how many lines it missed, so a chatty command cannot grow the agent.
pub const OUTPUT_KEPT_BYTES: usize = 4 * 1024 * 1024;

/// The output lines kept, each with the number of events recorded before it, so followers see
/// events and lines in the order they happened.
#[derive(Debug, Default)]
struct Output {
    /// The index (since the job began) of `lines[0]`.
    first: usize,
    lines: VecDeque<(usize, OutputLine)>,
    bytes: usize,
}

/// Where a follower is: events and output lines sent so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub events: usize,
    pub output: usize,
}

/// What a follower is sent next.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Event(JobEvent),
    Output(OutputLine),
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
    output: Mutex<Output>,
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
            output: Mutex::new(Output::default()),
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

    /// Keeps a line of an exec's output for the followers and wakes them.
    fn push_output(&self, stream: OutputStream, line: &str) {
        let events = lock(&self.record).events.len();
        {
            let mut out = lock(&self.output);
            out.bytes += line.len();
            out.lines.push_back((
                events,
                OutputLine {
                    order_id: self.order.order_id.clone(),
                    stream,
                    line: line.to_string(),
                },
            ));
            while out.bytes > OUTPUT_KEPT_BYTES
                && let Some((_, dropped)) = out.lines.pop_front()
            {
                out.bytes -= dropped.line.len();
                out.first += 1;
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Events and output lines after `cursor`, in the order they happened (the cursor moves
    /// past them), and the outcome once there is one. Lines given way before this follower
    /// read them are replaced by one line saying how many.
    pub fn feed(&self, cursor: &mut Cursor) -> (Vec<Item>, Option<Outcome>) {
        let record = lock(&self.record);
        let out = lock(&self.output);
        let mut items = Vec::new();
        if cursor.output < out.first {
            items.push(Item::Output(OutputLine {
                order_id: self.order.order_id.clone(),
                stream: OutputStream::Stderr,
                line: format!(
                    "[deploy-agent: {} lines of output dropped: this client read too slowly]",
                    out.first - cursor.output
                ),
            }));
            cursor.output = out.first;
        }
        let events = &record.events;
        let mut next_event = cursor.events.min(events.len());
        for (before, line) in out.lines.iter().skip(cursor.output - out.first) {
            while next_event < (*before).min(events.len()) {
                items.push(Item::Event(events[next_event].clone()));
                next_event += 1;
            }
            items.push(Item::Output(line.clone()));
        }
        items.extend(events[next_event..].iter().cloned().map(Item::Event));
        cursor.events = events.len();
        cursor.output = out.first + out.lines.len();
        let outcome = record
            .outcome
            .clone()
            .filter(|_| self.published.load(Ordering::Acquire));
        (items, outcome)
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

    /// Neither journaled nor logged: a command may print what an env file holds.
    fn output(&self, stream: OutputStream, line: &str) {
        self.push_output(stream, line);
    }
}

/// The `accepted` step of an order's journal: what it asks, signed by whom, issued by whom —
/// and when it overrides a freeze (`overridden`: the window that holds), that it does and why.
pub(crate) fn accepted_message(o: &Order, signer: &str, overridden: Option<&str>) -> String {
    let accepted = match (&o.exec, &o.maintenance) {
        (Some(exec), _) => crate::exec::accepted_message(o, exec, signer),
        (None, Some(m)) => format!(
            "accepted maintenance {} for {} signed by {signer}, issued by {}",
            if m.on { "on" } else { "off" },
            o.services.keys().cloned().collect::<Vec<_>>().join(", "),
            o.issued_by,
        ),
        (None, None) => format!(
            "accepted {} of {} ({}) for {} signed by {signer}, issued by {}{}",
            o.action,
            o.describe_release(),
            o.reference,
            o.services.keys().cloned().collect::<Vec<_>>().join(", "),
            o.issued_by,
            if o.run_migration {
                "; runs the migration"
            } else {
                ""
            }
        ),
    };
    match (&o.override_freeze, o.action.deploys()) {
        (Some(reason), true) => format!(
            "{accepted}; OVERRIDES the freeze{} with reason {reason:?}, under approved proposal {}",
            overridden
                .map(|w| format!(" window {w}"))
                .unwrap_or_default(),
            o.proposal.as_deref().unwrap_or("-")
        ),
        _ => accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::record;

    fn job() -> (tempfile::TempDir, Job) {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        (dir, Job::new(record(1, "o1", 'a', None), journal))
    }

    /// Items as `e:<message>` and `o:<line>`.
    fn shown(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                Item::Event(e) => format!("e:{}", e.message),
                Item::Output(o) => format!("o:{}", o.line),
            })
            .collect()
    }

    #[test]
    fn followers_get_events_and_output_in_the_order_they_happened() {
        let (_dir, job) = job();
        let mut early = Cursor::default();
        job.record_event(Phase::Exec, Some("web"), "running")
            .unwrap();
        job.push_output(OutputStream::Stdout, "one");
        assert_eq!(shown(&job.feed(&mut early).0), ["e:running", "o:one"]);
        job.push_output(OutputStream::Stderr, "two");
        job.record_event(Phase::Exec, Some("web"), "exited")
            .unwrap();
        job.push_output(OutputStream::Stdout, "late");
        assert_eq!(
            shown(&job.feed(&mut early).0),
            ["o:two", "e:exited", "o:late"]
        );
        assert!(job.feed(&mut early).0.is_empty(), "nothing twice");
        let mut late = Cursor::default();
        assert_eq!(
            shown(&job.feed(&mut late).0),
            ["e:running", "o:one", "o:two", "e:exited", "o:late"],
            "a follower that comes later gets it all"
        );
        assert!(
            lock(&job.record)
                .events
                .iter()
                .all(|e| e.phase != Phase::Done),
            "output is no event"
        );
    }

    #[test]
    fn a_follower_too_far_behind_is_told_what_it_missed() {
        let (_dir, job) = job();
        let mut slow = Cursor::default();
        let line = "x".repeat(1024 * 1024);
        for _ in 0..6 {
            job.push_output(OutputStream::Stdout, &line);
        }
        let (items, _) = job.feed(&mut slow);
        let shown = shown(&items);
        assert_eq!(
            shown[0],
            "o:[deploy-agent: 2 lines of output dropped: this client read too slowly]"
        );
        assert_eq!(shown.len(), 5, "the 4 MiB kept");
        assert_eq!(slow.output, 6);
    }
}
