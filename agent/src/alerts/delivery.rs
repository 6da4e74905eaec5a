//! Raising and delivering alerts: [`Alerts`] turns a transition, an outcome or the agent's
//! start into one pending alert per webhook that wants it — durably in the [`Outbox`] before
//! anything is sent — and [`Alerts::deliver`] is the one task that sends them: POST with the
//! alert's id as `Idempotency-Key`, removed from the outbox right after a 2xx, retried with
//! [`super::backoff`] otherwise. It runs beside jobs and the socket and waits for neither;
//! nothing waits for it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::Order;
use proto::time::Timestamp;
use proto::wire::Outcome;
use tokio::sync::Notify;

use super::outbox::{Outbox, Pending, Queue};
use super::{Alert, AlertTarget, Answer, Source, answer, render, reply_excerpt, retry_after};
use crate::health::Transition;
use crate::job::{blocking, lock};

/// One try may take this long before it counts as failed.
pub const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's alerts: its `[[alerts]]` targets, the outbox and the delivery queue.
#[derive(Debug)]
pub struct Alerts {
    targets: Vec<AlertTarget>,
    source: Source,
    outbox: Outbox,
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Alerts {
    /// Opens the outbox: what was pending when the agent stopped is sent again, unless its
    /// webhook is no longer in `agent.toml` (then it is dropped, with a warning).
    pub fn open(state_dir: &std::path::Path, targets: Vec<AlertTarget>, source: Source) -> Alerts {
        let outbox = Outbox::new(state_dir);
        let (found, problems) = outbox.load();
        for p in problems {
            tracing::error!("{p}");
        }
        let mut queue = Queue::default();
        let now = Instant::now();
        for (name, pending) in found {
            let configured = targets
                .iter()
                .any(|t| t.webhook == pending.webhook && t.format == pending.format);
            if configured {
                queue.push(name, pending, now);
            } else {
                tracing::warn!(
                    alert = %pending.alert.id,
                    "dropping a pending {} alert for {}: that webhook is no longer in agent.toml",
                    pending.alert.kind,
                    pending.webhook.shown()
                );
                if let Err(e) = outbox.remove(&name) {
                    tracing::error!("cannot remove {name} from {}: {e}", outbox.dir().display());
                }
            }
        }
        if !queue.is_empty() {
            tracing::info!(
                pending = queue.len(),
                "alerts left from the last run will be sent"
            );
        }
        Alerts {
            targets,
            source,
            outbox,
            queue: Mutex::new(queue),
            wake: Notify::new(),
        }
    }

    /// A health transition: raises its alert, if it has one.
    pub fn health(&self, t: &Transition) {
        if let Some(alert) = self.source.health(proto::order::new_id(), t) {
            self.raise(alert);
        }
    }

    /// An order's outcome: raises its alert, if it has one.
    pub fn outcome(&self, order: &Order, outcome: &Outcome) {
        if let Some(alert) = self.source.outcome(proto::order::new_id(), order, outcome) {
            self.raise(alert);
        }
    }

    pub fn started(&self) {
        let alert = self
            .source
            .started(proto::order::new_id(), Timestamp::now());
        self.raise(alert);
    }

    /// Puts the alert in the outbox for every webhook that wants its kind, then wakes the
    /// delivery task. An alert that cannot be written is logged and not sent: nothing is sent
    /// that a restart could not send again.
    pub fn raise(&self, alert: Alert) {
        for (slot, target) in self.targets.iter().enumerate() {
            if !target.wants(alert.kind) {
                continue;
            }
            let name = Outbox::name(&alert.id, slot);
            let pending = Pending {
                alert: alert.clone(),
                webhook: target.webhook.clone(),
                format: target.format,
            };
            if let Err(e) = blocking(|| self.outbox.put(&name, &pending)) {
                tracing::error!(
                    alert = %alert.id,
                    "cannot write the {} alert to {}, so it is not sent: {e}",
                    alert.kind,
                    self.outbox.dir().display()
                );
                continue;
            }
            tracing::info!(alert = %alert.id, kind = %alert.kind, to = %target.webhook.shown(), "alert raised");
            let given_up = lock(&self.queue).push(name, pending, Instant::now());
            for old in given_up {
                tracing::error!("outbox full: giving up the oldest pending alert {old}");
                if let Err(e) = blocking(|| self.outbox.remove(&old)) {
                    tracing::error!("cannot remove {old}: {e}");
                }
            }
        }
        self.wake.notify_one();
    }

    /// Delivers pending alerts until the future is dropped.
    pub async fn deliver(&self) {
        let client = reqwest::Client::builder()
            .user_agent(format!("deploy-agent/{}", self.source.version))
            .timeout(TRY_TIMEOUT)
            .build()
            .unwrap_or_default();
        loop {
            let due = lock(&self.queue).due(Instant::now());
            for (name, pending) in due {
                self.try_once(&client, &name, &pending).await;
            }
            let next = lock(&self.queue).next_try();
            match next {
                Some(at) => {
                    tokio::select! {
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    async fn try_once(&self, client: &reqwest::Client, name: &str, p: &Pending) {
        let sent = client
            .post(p.webhook.as_str())
            .header("Idempotency-Key", &p.alert.id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(render(p.format, &p.alert))
            .send()
            .await;
        let (verdict, why, not_before) = match sent {
            Ok(mut r) => {
                let status = r.status();
                let not_before = retry_after(
                    r.headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()),
                );
                match answer(status.as_u16()) {
                    Answer::Refused => {
                        // The first chunk is enough to say why, and bounds what a receiver's
                        // reply may cost us.
                        let said = r.chunk().await.ok().flatten().unwrap_or_default();
                        let said = reply_excerpt(&String::from_utf8_lossy(&said));
                        (Answer::Refused, format!("{status}: {said}"), None)
                    }
                    verdict => (
                        verdict,
                        format!("the receiver answered {status}"),
                        not_before,
                    ),
                }
            }
            Err(e) => (
                Answer::Retry,
                format!("no answer: {}", without_url(&e)),
                None,
            ),
        };
        match verdict {
            Answer::Delivered | Answer::Refused => {
                // Removed durably before the next alert goes: a crash from here on cannot send
                // this one again. (A crash between the 2xx and this removal can: the id lets a
                // receiver drop that duplicate.)
                if let Err(e) = blocking(|| self.outbox.remove(name)) {
                    tracing::error!("answered, but cannot remove {name} from the outbox: {e}");
                }
                lock(&self.queue).delivered(name);
                if verdict == Answer::Delivered {
                    tracing::info!(alert = %p.alert.id, kind = %p.alert.kind, to = %p.webhook.shown(), "alert delivered");
                } else {
                    tracing::error!(
                        alert = %p.alert.id,
                        kind = %p.alert.kind,
                        to = %p.webhook.shown(),
                        "alert refused by the receiver ({why}), given up: sent again it would be refused again and hold up the alerts after it"
                    );
                }
            }
            Answer::Retry => {
                let failures = lock(&self.queue).failed(name, Instant::now(), not_before);
                tracing::warn!(
                    alert = %p.alert.id,
                    kind = %p.alert.kind,
                    to = %p.webhook.shown(),
                    tries = failures,
                    "alert not delivered, will retry: {why}"
                );
            }
        }
    }
}

/// A request error without its URL: a webhook's path is its secret.
fn without_url(e: &reqwest::Error) -> String {
    let mut shown = e.to_string();
    if let Some(url) = e.url() {
        shown = shown.replace(url.as_str(), "the webhook");
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{shown}: {cause}"),
        None => shown,
    }
}
