//! One order from start to outcome: pull, migrate, switch each service, and either keep the
//! new versions (retaining old ones) or put every touched service back. Also the recovery of an
//! order a crash interrupted.

use std::collections::BTreeMap;
use std::time::Instant;

use proto::order::labels;
use proto::time::Timestamp;
use proto::wire::{FailureClass, Outcome, OutcomeKind, Phase, ServiceResult};
use proto::{ImageRef, Order};
use tracing::Instrument;

use crate::container::{ROLE_LABEL, ROLE_MIGRATION};
use crate::context::OrderCtx;
use crate::driver::{self, Failure, Prepared};
use crate::plan;
use crate::runtime::PullError;
use crate::{Engine, EventSink};

pub(crate) struct Job<'a> {
    cx: OrderCtx<'a>,
    order: &'a Order,
    started_at: Timestamp,
}

/// The parts of an outcome that differ between endings.
struct Ending {
    kind: OutcomeKind,
    failure: Option<FailureClass>,
    reason: String,
    changed: bool,
    log_tail: Vec<String>,
    rollback_ms: Option<u64>,
}

impl Ending {
    fn unchanged(kind: OutcomeKind, failure: FailureClass, reason: String) -> Ending {
        Ending {
            kind,
            failure: Some(failure),
            reason,
            changed: false,
            log_tail: Vec::new(),
            rollback_ms: None,
        }
    }
}

impl<'a> Job<'a> {
    pub fn new(e: &'a Engine, order: &'a Order, sink: &'a dyn EventSink) -> Self {
        Job {
            cx: OrderCtx::new(e, order, sink),
            order,
            started_at: Timestamp::now(),
        }
    }

    fn emit(&self, phase: Phase, service: Option<&str>, message: &str) {
        self.cx.emit(phase, service, message);
    }

    fn host(&self) -> &str {
        self.cx.host()
    }

    fn engine(&self) -> &'a Engine {
        self.cx.e
    }

    fn span(&self) -> tracing::Span {
        tracing::info_span!("job", order_id = %self.order.order_id, app = %self.order.app, action = %self.order.action)
    }

    pub async fn execute(&self) -> Outcome {
        let span = self.span();
        self.execute_steps().instrument(span).await
    }

    pub async fn recover(&self) -> Outcome {
        let span = self.span();
        self.recover_steps().instrument(span).await
    }

    fn prepare(&self, lenient: bool) -> Result<Vec<Prepared<'a>>, String> {
        driver::prepare(self.engine(), self.order, lenient)
    }

    async fn execute_steps(&self) -> Outcome {
        let h = self.host().to_string();
        if let Err(e) = self.engine().rt.ping().await {
            let reason =
                format!("host {h}: the Docker engine does not answer ({e}); nothing changed");
            return self
                .finish(
                    Ending::unchanged(OutcomeKind::Failed, FailureClass::Engine, reason),
                    &[],
                    &BTreeMap::new(),
                )
                .await;
        }
        let services = match self.prepare(false) {
            Ok(s) => s,
            Err(why) => {
                let reason = format!("host {h}: {why}; nothing changed");
                return self
                    .finish(
                        Ending::unchanged(OutcomeKind::Failed, FailureClass::StartFailed, reason),
                        &[],
                        &BTreeMap::new(),
                    )
                    .await;
            }
        };
        let before = self.digests_now(&services).await;

        if let Err(ending) = self.pull().await {
            return self.finish(ending, &services, &before).await;
        }
        if let Err(ending) = self.migrate(&services).await {
            return self.finish(ending, &services, &before).await;
        }

        let mut switched = Vec::new();
        let mut touched: Vec<&Prepared<'a>> = Vec::new();
        for svc in &services {
            touched.push(svc);
            let span = tracing::info_span!("service", service = svc.name);
            match svc.driver.switch(&self.cx).instrument(span).await {
                Ok(true) => switched.push(svc.name),
                Ok(false) => {}
                Err(f) => {
                    let ending = self.roll_back(&touched, f).await;
                    return self.finish(ending, &services, &before).await;
                }
            }
        }
        for svc in &services {
            if let Err(why) = svc.driver.retain(&self.cx).await {
                self.emit(
                    Phase::Cleanup,
                    Some(svc.name),
                    &format!("could not prune old versions: {why}"),
                );
            }
        }
        let short = self.order.image.short_digest();
        let reason = if switched.is_empty() {
            format!(
                "host {h}: every service already ran {} ({short}) healthy; nothing changed",
                self.order.reference
            )
        } else {
            let unchanged: Vec<&str> = services
                .iter()
                .map(|s| s.name)
                .filter(|n| !switched.contains(n))
                .collect();
            let was: Vec<String> = switched
                .iter()
                .map(|name| match before.get(*name).cloned().flatten() {
                    Some(d) => format!("{name} (was {})", plan::short_label(&d)),
                    None => format!("{name} (new)"),
                })
                .collect();
            let mut r = format!(
                "host {h}: {} ({short}) is live and healthy on {}",
                self.order.reference,
                was.join(", ")
            );
            if !unchanged.is_empty() {
                r.push_str(&format!("; {} already ran it", unchanged.join(", ")));
            }
            r
        };
        let ending = Ending {
            kind: OutcomeKind::Succeeded,
            failure: None,
            reason,
            changed: !switched.is_empty(),
            log_tail: Vec::new(),
            rollback_ms: None,
        };
        self.finish(ending, &services, &before).await
    }

    /// Pulls every image of the release the engine does not have yet.
    async fn pull(&self) -> Result<(), Ending> {
        for image in self.order.all_images() {
            self.pull_one(image).await?;
        }
        Ok(())
    }

    async fn pull_one(&self, wanted: &ImageRef) -> Result<(), Ending> {
        let h = self.host();
        let image = wanted.to_string();
        match self.engine().rt.inspect_image(&image).await {
            Ok(Some(_)) => {
                self.emit(
                    Phase::Pull,
                    None,
                    &format!("{image} is already present; not pulling"),
                );
                return Ok(());
            }
            Ok(None) => {}
            Err(e) => {
                let reason = format!(
                    "host {h}: cannot look up {image} in the Docker engine ({e}); nothing changed"
                );
                return Err(Ending::unchanged(
                    OutcomeKind::Failed,
                    FailureClass::Engine,
                    reason,
                ));
            }
        }
        let registry = registry_auth::registry_host(wanted.repository());
        let creds = match self.engine().registry_credentials(registry).await {
            Ok(creds) => creds,
            Err(e) => {
                let reason = format!("host {h}: cannot pull {image}: {e}; nothing changed");
                return Err(Ending::unchanged(
                    OutcomeKind::PullFailed,
                    FailureClass::RegistryUnauthorized,
                    reason,
                ));
            }
        };
        let with = match &creds {
            Some(c) => format!(" (with credentials for {registry} from {})", c.source),
            None => String::new(),
        };
        self.emit(Phase::Pull, None, &format!("pulling {image}{with}"));
        let started = Instant::now();
        if let Err(e) = self.engine().rt.pull_image(wanted, creds).await {
            let class = match e {
                PullError::NotFound(_) => FailureClass::ImageNotFound,
                PullError::Unauthorized(_) => FailureClass::RegistryUnauthorized,
                PullError::Unreachable(_) => FailureClass::RegistryUnreachable,
                PullError::Engine(_) => FailureClass::Engine,
            };
            let reason = format!("host {h}: cannot pull {image}: {e}; nothing changed");
            return Err(Ending::unchanged(OutcomeKind::PullFailed, class, reason));
        }
        self.emit(
            Phase::Pull,
            None,
            &format!("pulled {image} in {:.1}s", started.elapsed().as_secs_f64()),
        );
        Ok(())
    }

    /// Runs the migration once in the new image, before any switch.
    async fn migrate(&self, services: &[Prepared<'a>]) -> Result<(), Ending> {
        let (true, Some(m)) = (self.order.run_migration, &self.order.migrate) else {
            return Ok(());
        };
        let Some(svc) = services.iter().find(|s| s.name == m.service) else {
            return Ok(());
        };
        let h = self.host();
        let shown = m.command.join(" ");
        let migration_image = self.order.migration_image().unwrap_or(&self.order.image);
        self.emit(
            Phase::Migrate,
            Some(svc.name),
            &format!(
                "running the migration `{shown}` in {} with {}'s env_file, volumes and network (timeout {})",
                migration_image,
                svc.name,
                proto::time::format_duration(m.timeout)
            ),
        );
        let started = Instant::now();
        let result = svc.driver.migrate(&self.cx, &m.command, m.timeout).await;
        match result {
            Ok(tail) => {
                let last = tail
                    .last()
                    .map(|l| format!("; last output: {l}"))
                    .unwrap_or_default();
                self.emit(
                    Phase::Migrate,
                    Some(svc.name),
                    &format!(
                        "migration succeeded in {:.1}s{last}",
                        started.elapsed().as_secs_f64()
                    ),
                );
                Ok(())
            }
            Err(f) => {
                let kind = match f.class {
                    FailureClass::MigrationFailed | FailureClass::MigrationTimeout => {
                        OutcomeKind::MigrationFailed
                    }
                    _ => OutcomeKind::Failed,
                };
                Err(Ending {
                    kind,
                    failure: Some(f.class),
                    reason: format!(
                        "host {h}: migration `{shown}` of {}: {}; nothing else changed",
                        migration_image, f.what
                    ),
                    changed: false,
                    log_tail: f.log_tail,
                    rollback_ms: None,
                })
            }
        }
    }

    /// Puts every service this order touched back, newest first, after `failure`.
    async fn roll_back(&self, touched: &[&Prepared<'a>], failure: Failure) -> Ending {
        let h = self.host();
        let names: Vec<&str> = touched.iter().map(|s| s.name).collect();
        self.emit(
            Phase::Rollback,
            Some(&failure.service),
            &format!(
                "{}; putting back the previous version of {}",
                failure.what,
                names.join(", ")
            ),
        );
        let mut failed = Vec::new();
        let mut restored = Vec::new();
        let mut removed = Vec::new();
        let mut already_failing = Vec::new();
        for svc in touched.iter().rev() {
            let span = tracing::info_span!("service", service = svc.name);
            match svc.driver.undo(&self.cx).instrument(span).await {
                Ok(u) if u.order_changed_it && u.previous_serving => {
                    let on = u
                        .digest
                        .as_deref()
                        .map(plan::short_label)
                        .unwrap_or("its previous version");
                    restored.push(if u.kept_serving {
                        format!("{} kept serving {on}", svc.name)
                    } else if u.previous_failing {
                        already_failing.push(svc.name);
                        format!("{} is back on {on} as it was (failing)", svc.name)
                    } else {
                        format!("{} is back on {on}", svc.name)
                    });
                }
                Ok(u) if u.order_changed_it => removed.push(svc.name),
                Ok(_) => {}
                Err(why) => failed.push(format!("{}: {why}", svc.name)),
            }
        }
        let rollback_ms = failure
            .new_started
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        let head = format!("host {h}: service {}: {}", failure.service, failure.what);
        if !failed.is_empty() {
            return Ending {
                kind: OutcomeKind::RollbackFailed,
                failure: Some(failure.class),
                reason: format!(
                    "{head}; ROLLBACK FAILED, needs a human: {}",
                    failed.join("; ")
                ),
                changed: true,
                log_tail: failure.log_tail,
                rollback_ms: None,
            };
        }
        let mut what = Vec::new();
        if !restored.is_empty() && already_failing.is_empty() {
            let took = rollback_ms.map(|ms| {
                format!(
                    " (healthy again {:.1}s after the failed version started)",
                    ms as f64 / 1000.0
                )
            });
            what.push(format!(
                "rolled back: {}{}",
                restored.join(", "),
                took.unwrap_or_default()
            ));
        } else if !restored.is_empty() {
            what.push(format!("rolled back: {}", restored.join(", ")));
        }
        if !removed.is_empty() {
            what.push(format!(
                "removed the new {} (no previous version)",
                removed.join(", ")
            ));
        }
        let summary = if what.is_empty() {
            "nothing had changed".to_string()
        } else {
            what.join("; ")
        };
        // The host is as before the order, which is not the same as healthy: say so, so nobody
        // reads "rolled back" as "fine".
        let before = if already_failing.is_empty() {
            "the host is as before the order".to_string()
        } else {
            format!(
                "the host is as before the order, which was already broken: {} was failing before it (put back without waiting for its health)",
                already_failing.join(", ")
            )
        };
        Ending {
            kind: if restored.is_empty() {
                OutcomeKind::Failed
            } else {
                OutcomeKind::RolledBack
            },
            failure: Some(failure.class),
            reason: format!("{head}; {summary}; {before}"),
            changed: false,
            log_tail: failure.log_tail,
            rollback_ms: if restored.is_empty() {
                None
            } else {
                rollback_ms
            },
        }
    }

    async fn recover_steps(&self) -> Outcome {
        let h = self.host().to_string();
        let interrupted = |kind, reason| Ending::unchanged(kind, FailureClass::Interrupted, reason);
        if let Err(e) = self.engine().rt.ping().await {
            let reason =
                format!("host {h}: cannot recover: the Docker engine does not answer ({e})");
            let mut ending = interrupted(OutcomeKind::RollbackFailed, reason);
            ending.failure = Some(FailureClass::Engine);
            ending.changed = true;
            return self.finish(ending, &[], &BTreeMap::new()).await;
        }
        let services = match self.prepare(true) {
            Ok(s) => s,
            Err(why) => {
                let reason = format!("host {h}: cannot recover: {why}");
                return self
                    .finish(
                        interrupted(OutcomeKind::RollbackFailed, reason),
                        &[],
                        &BTreeMap::new(),
                    )
                    .await;
            }
        };
        let names: Vec<&str> = services.iter().map(|s| s.name).collect();
        self.emit(
            Phase::Recover,
            None,
            &format!(
                "looking at the containers of {} to finish or undo order {}",
                names.join(", "),
                self.order.order_id
            ),
        );
        self.remove_leftover_migration().await;

        let mut all_settled = true;
        for svc in &services {
            match svc.driver.is_settled(&self.cx).await {
                Ok(true) => {}
                Ok(false) => all_settled = false,
                Err(why) => {
                    self.emit(
                        Phase::Recover,
                        Some(svc.name),
                        &format!("cannot tell what runs: {why}"),
                    );
                    all_settled = false;
                }
            }
        }
        let mut touched_any = false;
        for svc in &services {
            touched_any |= svc.driver.order_touched(&self.cx).await;
        }
        let before = BTreeMap::new();

        if all_settled {
            self.emit(
                Phase::Recover,
                None,
                &format!(
                    "every service already runs {}; confirming it is healthy",
                    self.order.image.short_digest()
                ),
            );
            let mut unhealthy = Vec::new();
            for svc in &services {
                if let Err(why) = driver::confirm_healthy(&self.cx, svc.driver.as_ref()).await {
                    unhealthy.push(why);
                }
            }
            if unhealthy.is_empty() {
                for svc in &services {
                    if let Err(why) = svc.driver.retain(&self.cx).await {
                        self.emit(
                            Phase::Cleanup,
                            Some(svc.name),
                            &format!("could not prune old versions: {why}"),
                        );
                    }
                }
                let ending = Ending {
                    kind: OutcomeKind::Succeeded,
                    failure: None,
                    reason: format!(
                        "host {h}: recovered after a restart: every service ({}) runs {} ({}) and is healthy; the order is \
                         complete",
                        names.join(", "),
                        self.order.reference,
                        self.order.image.short_digest()
                    ),
                    changed: touched_any,
                    log_tail: Vec::new(),
                    rollback_ms: None,
                };
                return self.finish(ending, &services, &before).await;
            }
            self.emit(
                Phase::Recover,
                None,
                &format!("not healthy ({}); undoing the order", unhealthy.join("; ")),
            );
        } else {
            self.emit(
                Phase::Recover,
                None,
                "the order had not finished switching; undoing it",
            );
        }

        let mut failed = Vec::new();
        let mut restored = Vec::new();
        for svc in services.iter().rev() {
            match svc.driver.undo(&self.cx).await {
                Ok(u) if u.order_changed_it && u.previous_serving => {
                    let on = u
                        .digest
                        .as_deref()
                        .map(plan::short_label)
                        .unwrap_or("its previous version");
                    restored.push(format!("{} on {on}", svc.name));
                }
                Ok(_) => {}
                Err(why) => failed.push(format!("{}: {why}", svc.name)),
            }
        }
        let ending = if !failed.is_empty() {
            Ending {
                kind: OutcomeKind::RollbackFailed,
                failure: Some(FailureClass::Interrupted),
                reason: format!(
                    "host {h}: the agent stopped mid-order and recovery could not restore the previous version: {}; \
                     needs a human",
                    failed.join("; ")
                ),
                changed: true,
                log_tail: Vec::new(),
                rollback_ms: None,
            }
        } else if touched_any {
            let what = if restored.is_empty() {
                "removed what it had created".to_string()
            } else {
                format!("restored the previous version of {}", restored.join(", "))
            };
            interrupted(
                OutcomeKind::RolledBack,
                format!(
                    "host {h}: the agent stopped mid-order; recovery undid it and {what}; the host is as before"
                ),
            )
        } else {
            interrupted(
                OutcomeKind::Failed,
                format!(
                    "host {h}: the agent stopped before the order changed any service; nothing changed"
                ),
            )
        };
        self.finish(ending, &services, &before).await
    }

    /// A migration container left by a crash is removed (its run is abandoned with the order).
    async fn remove_leftover_migration(&self) {
        let mut wanted = self.cx.identity_labels();
        wanted.push((ROLE_LABEL.to_string(), ROLE_MIGRATION.to_string()));
        wanted.push((labels::ORDER.to_string(), self.order.order_id.clone()));
        let Ok(found) = self.engine().rt.list_containers(&wanted).await else {
            return;
        };
        for c in found {
            self.emit(
                Phase::Recover,
                c.label(labels::SERVICE),
                &format!("removing the interrupted migration container {}", c.name),
            );
            if let Err(e) = self.engine().rt.remove_container(&c.id).await {
                self.emit(
                    Phase::Recover,
                    None,
                    &format!("could not remove {}: {e}", c.name),
                );
            }
        }
    }

    /// The digest each service runs now (for `previous_digest`).
    async fn digests_now(&self, services: &[Prepared<'a>]) -> BTreeMap<String, Option<String>> {
        let mut out = BTreeMap::new();
        for svc in services {
            let digest = match svc.driver.current(&self.cx).await {
                Ok(Some(c)) => driver::running_digest(&self.cx, &c).await,
                _ => None,
            };
            out.insert(svc.name.to_string(), digest);
        }
        out
    }

    async fn finish(
        &self,
        ending: Ending,
        services: &[Prepared<'a>],
        before: &BTreeMap<String, Option<String>>,
    ) -> Outcome {
        let mut results = BTreeMap::new();
        for svc in services {
            let now = svc.driver.current(&self.cx).await.ok().flatten();
            let digest = match &now {
                Some(c) => driver::running_digest(&self.cx, c).await,
                None => None,
            };
            results.insert(
                svc.name.to_string(),
                ServiceResult {
                    digest,
                    previous_digest: before.get(svc.name).cloned().flatten(),
                    container_id: now.map(|c| c.id),
                },
            );
        }
        let outcome = Outcome {
            order_id: self.order.order_id.clone(),
            rollout_id: self.order.rollout_id.clone(),
            kind: ending.kind,
            failure: ending.failure,
            reason: Some(ending.reason),
            changed: ending.changed,
            log_tail: ending.log_tail,
            services: results,
            started_at: self.started_at,
            finished_at: Timestamp::now(),
            rollback_ms: ending.rollback_ms,
            exit_code: None,
        };
        self.emit(
            Phase::Done,
            None,
            &format!(
                "{}: {}",
                outcome.kind,
                outcome.reason.as_deref().unwrap_or("")
            ),
        );
        outcome
    }
}
