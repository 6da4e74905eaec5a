//! The health model at work (README, "The health model"): every look at a deployed service —
//! the periodic probe, a `status`, an engine event — is judged by [`crate::condition`] with the
//! deaths the event stream reported, recorded in the health book, and a transition raises its
//! alert. The event stream is only read: an event makes the agent look at the service again at
//! once, never act on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy::ServiceSnapshot;
use deploy::events::{EventKind, ServiceEvent};
use futures_util::StreamExt;
use proto::Order;
use proto::time::Timestamp;
use proto::wire::Health;

use super::{Agent, Target};
use crate::alerts::delivery::Alerts;
use crate::backend::Backend;
use crate::condition::{self, Look, Seen};
use crate::job::{blocking, lock};

/// An event stream that stayed up this long was healthy: its next reconnection starts the
/// backoff afresh.
const STREAM_LASTED: Duration = Duration::from_secs(60);
/// How long after a healthy service's first failed HTTP probe it is looked at again: a
/// container being killed refuses connections a moment before the engine reports its death,
/// and the death, not the refusal, is what happened.
const CONFIRM_AFTER: Duration = Duration::from_millis(300);

impl<B: Backend> Agent<B> {
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// Sends the outbox's alerts until the future is dropped.
    pub async fn deliver_alerts(self: Arc<Self>) {
        self.alerts.deliver().await
    }

    /// One round of the health watch: looks at every deployed service no job holds right now.
    pub async fn probe_health(&self) {
        for t in self.deployed() {
            if !self.is_held(&t.app, &t.service) {
                self.look_at(&t, false).await;
            }
        }
    }

    /// Reads the engine's event stream until the future is dropped. When the stream ends (the
    /// engine restarted, say) it reconnects with backoff, and looks at every service once,
    /// since the stream replays nothing of what happened meanwhile.
    pub async fn event_watch(self: Arc<Self>) {
        let mut tries = 0;
        let mut first = true;
        loop {
            let connected = Instant::now();
            let mut events = self.backend.events();
            if !first {
                tracing::info!("event stream: reconnected; looking at every service");
                let agent = self.clone();
                // Beside the stream, so no event of the meantime waits for the probes.
                tokio::spawn(async move { agent.probe_health().await });
            }
            first = false;
            while let Some(event) = events.next().await {
                match event {
                    Ok(e) => self.on_event(e).await,
                    Err(e) => {
                        tracing::warn!("event stream: {e}");
                        break;
                    }
                }
            }
            if connected.elapsed() >= STREAM_LASTED {
                tries = 0;
            }
            tries += 1;
            let wait = crate::alerts::backoff(tries, "event stream");
            tracing::warn!("event stream: ended; reconnecting in {wait:?}");
            tokio::time::sleep(wait).await;
        }
    }

    /// A container of a service changed: look at the service now. A `die` of its serving
    /// container is a death; an `oom` names the death that follows.
    async fn on_event(&self, e: ServiceEvent) {
        let Some(t) = self
            .deployed()
            .into_iter()
            .find(|t| t.app == e.app && t.service == e.service)
        else {
            return;
        };
        // A job changing the service causes its events; the job judges those itself.
        if self.is_held(&t.app, &t.service) {
            return;
        }
        tracing::debug!(app = %t.app, service = %t.service, container = %e.container_name, kind = ?e.kind, exit_code = ?e.exit_code, "event");
        let now = Timestamp::now();
        if e.kind == EventKind::Oom {
            lock(&self.health).oom_reported(&t.app, &t.service, now);
        }
        let snap = self
            .backend
            .inspect_service(&t.app, &t.service, &t.spec)
            .await;
        let serving = snap.container_id.as_deref() == Some(e.container_id.as_str());
        if e.kind == EventKind::Die && serving {
            let mut book = lock(&self.health);
            book.record_death(&t.app, &t.service, e.exit_code, snap.oom_killed, now);
            // Saved even when the health stays (a loop goes on): a restart must know it.
            if let Err(err) = blocking(|| self.health_file.save(&book)) {
                tracing::error!("cannot save the health book: {err}");
            }
        }
        self.record_look(&t, &snap, false, now);
    }

    /// One look at a service: its snapshot, the model's verdict and since when it holds.
    pub(super) async fn look_at(
        &self,
        t: &Target,
        held: bool,
    ) -> (ServiceSnapshot, Seen, Timestamp) {
        let mut snap = self
            .backend
            .inspect_service(&t.app, &t.service, &t.spec)
            .await;
        let was_healthy = lock(&self.health)
            .current(&t.app, &t.service)
            .is_some_and(|e| e.health == Health::Healthy);
        if !held && was_healthy && snap.health == Health::Unhealthy && snap.up_since.is_some() {
            tokio::time::sleep(CONFIRM_AFTER).await;
            snap = self
                .backend
                .inspect_service(&t.app, &t.service, &t.spec)
                .await;
        }
        let now = Timestamp::now();
        let (seen, since) = self.record_look(t, &snap, held, now);
        (snap, seen, since)
    }

    /// Judges a snapshot and, unless a job holds the service, records it.
    fn record_look(
        &self,
        t: &Target,
        snap: &ServiceSnapshot,
        held: bool,
        now: Timestamp,
    ) -> (Seen, Timestamp) {
        let look = Look::of(snap);
        if held {
            // Mid-deploy states are expected; they are not health transitions, and the
            // deaths of the version being replaced say nothing of the next.
            let seen = condition::judge(&look, &[], now);
            let since = lock(&self.health)
                .current(&t.app, &t.service)
                .filter(|e| e.health == seen.health)
                .map_or(now, |e| e.since);
            return (seen, since);
        }
        let seen = condition::judge(&look, lock(&self.health).deaths(&t.app, &t.service), now);
        self.observe(&t.app, &t.service, seen, now);
        let since = lock(&self.health)
            .current(&t.app, &t.service)
            .map_or(now, |e| e.since);
        (seen, since)
    }

    /// An order just proved its services healthy: that is the health watch's starting point,
    /// and the deaths of the versions before count no more.
    pub(super) fn proven_healthy(&self, order: &Order, at: Timestamp) {
        {
            let mut book = lock(&self.health);
            for service in order.services.keys() {
                book.forget_deaths(&order.app, service);
            }
            // Saved even when no health changes: a restart must not count those deaths.
            if let Err(e) = blocking(|| self.health_file.save(&book)) {
                tracing::error!("cannot save the health book: {e}");
            }
        }
        for service in order.services.keys() {
            self.observe(&order.app, service, Seen::plain(Health::Healthy), at);
        }
    }

    fn is_held(&self, app: &str, service: &str) -> bool {
        lock(&self.running)
            .held
            .contains_key(&(app.to_string(), service.to_string()))
    }
}
