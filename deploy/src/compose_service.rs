//! Compose services (`kind = "compose"`): a service of a compose project already on the host,
//! switched by pinning its image in an override file and `up -d --no-deps`, undone by putting
//! the previous override back. What a switch displaced is recorded in a marker file before
//! anything changes, so undo works after a crash too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proto::wire::{FailureClass, Phase};
use serde::{Deserialize, Serialize};

use crate::compose::{self, ComposeCli, OverridePaths};
use crate::container::{ROLE_LABEL, ROLE_MIGRATION};
use crate::context::OrderCtx;
use crate::driver::{
    Failure, ServiceDriver, ServiceParts, Undone, confirm_healthy, digest_of, running_digest, short,
};
use crate::health::{self, HealthEnd, Proving, describe_health, secs, wait_proven};
use crate::plan::{self, LOG_TAIL_LINES};
use crate::runtime::{BoxFuture, ContainerInfo};
use crate::switch::Condition;
use crate::{Engine, EngineError};

/// A compose service on this host and the override files that pin its image.
pub(crate) struct ComposeTarget {
    pub file: PathBuf,
    pub service: String,
    pub paths: OverridePaths,
}

/// What a compose switch displaced, so undo (possibly after a restart) can put it back.
#[derive(Debug, Serialize, Deserialize)]
struct ComposeMarker {
    order: String,
    had_override: bool,
    had_container: bool,
    /// The displaced container was already failing: undo puts it back without waiting for a
    /// health it did not have.
    #[serde(default)]
    previous_failing: bool,
}

impl ComposeTarget {
    pub fn new(
        e: &Engine,
        app: &str,
        service: &str,
        spec: &proto::ServiceSpec,
    ) -> Result<Self, String> {
        let file = spec
            .compose_file
            .as_ref()
            .ok_or_else(|| format!("service {service}: kind = \"compose\" needs compose_file"))?;
        let file = PathBuf::from(file);
        if !file.is_file() {
            return Err(format!(
                "service {service}: compose_file {} does not exist on this host",
                file.display()
            ));
        }
        let compose_service = spec
            .compose_service
            .clone()
            .unwrap_or_else(|| service.to_string());
        Ok(ComposeTarget {
            file,
            service: compose_service,
            paths: OverridePaths::new(&e.state_dir, &e.canonical(app, service)),
        })
    }

    /// The user's compose file, then our override when one is in force.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.file.as_path()];
        if self.paths.current.is_file() {
            files.push(self.paths.current.as_path());
        }
        files
    }

    /// The service's container (a running one if there are several).
    pub async fn current(
        &self,
        e: &Engine,
        cli: &ComposeCli,
    ) -> Result<Option<ContainerInfo>, EngineError> {
        let ids = cli
            .container_ids(&self.files(), &self.service)
            .await
            .map_err(|e| EngineError::Compose(e.to_string()))?;
        let mut found = Vec::new();
        for id in ids {
            if let Some(c) = e.rt.inspect_container(&id).await? {
                found.push(c);
            }
        }
        found.sort_by_key(|c| !c.is_running());
        Ok(found.into_iter().next())
    }

    fn marker(&self) -> Option<ComposeMarker> {
        let text = std::fs::read_to_string(&self.paths.previous_order).ok()?;
        serde_json::from_str(&text).ok()
    }
}

pub(crate) struct ComposeService<'a> {
    parts: ServiceParts<'a>,
    target: ComposeTarget,
}

impl<'a> ComposeService<'a> {
    pub fn new(e: &Engine, app: &str, parts: ServiceParts<'a>) -> Result<Self, String> {
        let target = ComposeTarget::new(e, app, parts.name, parts.spec)?;
        Ok(ComposeService { parts, target })
    }

    async fn cli(&self, cx: &OrderCtx<'_>) -> Result<ComposeCli, String> {
        cx.e.compose_cli().await
    }

    async fn switch_inner(&self, cx: &OrderCtx<'_>) -> Result<bool, Failure> {
        let (p, t, e) = (&self.parts, &self.target, cx.e);
        let s = Some(p.name);
        let cli = self
            .cli(cx)
            .await
            .map_err(|why| Failure::start(p.name, why, Vec::new()))?;
        let digest = cx.order.image_of(p.name).digest();
        let current = t
            .current(e, &cli)
            .await
            .map_err(|err| Failure::engine(p.name, err))?;
        let condition = match &current {
            Some(cur) => Some(health::look_at(e, cur, p.spec, &p.ports).await),
            None => None,
        };
        let mut recreate = false;
        if let Some(cur) = &current {
            let same = digest_of(cur) == Some(digest);
            match (&condition, same) {
                (Some(Condition::Healthy), true) => {
                    cx.emit(
                        Phase::Health,
                        s,
                        &format!(
                            "{} already runs {} and answers healthy; leaving it",
                            cur.name,
                            short(cur)
                        ),
                    );
                    return Ok(false);
                }
                (Some(Condition::Failing { why }), true) => {
                    cx.emit(
                        Phase::Switch,
                        s,
                        &format!(
                            "{} already runs {} but is failing ({why}): recreating it",
                            cur.name,
                            short(cur)
                        ),
                    );
                    recreate = true;
                }
                (Some(Condition::Failing { why }), false) => cx.emit(
                    Phase::Switch,
                    s,
                    &format!(
                        "{} is failing ({why}): replacing it without waiting for it",
                        cur.name
                    ),
                ),
                _ => {}
            }
        }
        let previous_failing = matches!(condition, Some(Condition::Failing { .. }));

        // Record what is displaced before touching anything, so undo works even after a crash.
        let io = |err: compose::ComposeError| Failure::start(p.name, err.to_string(), Vec::new());
        let previous = std::fs::read_to_string(&t.paths.current).ok();
        match &previous {
            Some(text) => compose::write_atomically(&t.paths.previous, text).map_err(io)?,
            None => compose::remove_file(&t.paths.previous).map_err(io)?,
        }
        let marker = ComposeMarker {
            order: cx.order.order_id.clone(),
            had_override: previous.is_some(),
            had_container: current.is_some(),
            previous_failing,
        };
        let marker = serde_json::to_string(&marker).unwrap_or_default();
        compose::write_atomically(&t.paths.previous_order, &marker).map_err(io)?;
        let image = cx.order.image_of(p.name).to_string();
        let yaml = compose::override_yaml(&t.service, &image, &cx.container_labels(p.name));
        compose::write_atomically(&t.paths.current, &yaml).map_err(io)?;

        cx.emit(
            Phase::Switch,
            s,
            &format!(
                "compose up -d --no-deps {}{} with {} pinned by {}",
                if recreate { "--force-recreate " } else { "" },
                t.service,
                image,
                t.paths.current.display()
            ),
        );
        let up = if recreate {
            cli.recreate(&t.files(), &t.service).await
        } else {
            cli.up(&t.files(), &t.service).await
        };
        if let Err(err) = up {
            let tail = plan::last_lines(err.output(), LOG_TAIL_LINES);
            return Err(Failure::start(
                p.name,
                format!("compose could not start {}: {err}", t.service),
                tail,
            ));
        }
        let started = Instant::now();
        let Some(new) = t
            .current(e, &cli)
            .await
            .map_err(|err| Failure::engine(p.name, err))?
        else {
            return Err(Failure::start(
                p.name,
                format!("compose started no container for {}", t.service),
                Vec::new(),
            ));
        };
        cx.emit(
            Phase::Health,
            s,
            &format!(
                "waiting for {} to be healthy: {}",
                new.name,
                describe_health(p.spec, &p.ports, new.check.is_some())
            ),
        );
        let revision = cx.order.revision_of(p.name);
        match wait_proven(e, &new.id, p.spec, &p.ports, started, revision).await {
            HealthEnd::Healthy { after } => {
                cx.emit(
                    Phase::Health,
                    s,
                    &format!("{} is healthy ({} after start)", new.name, secs(after)),
                );
                Ok(true)
            }
            end => {
                let proving = Proving {
                    service: p.name,
                    spec: p.spec,
                    ports: &p.ports,
                    name: &new.name,
                    id: &new.id,
                    short: cx.order.image_of(p.name).short_digest(),
                    started,
                };
                Err(health::health_failure(e, &proving, end).await)
            }
        }
    }

    async fn undo_inner(&self, cx: &OrderCtx<'_>) -> Result<Undone, String> {
        let (p, t) = (&self.parts, &self.target);
        let s = Some(p.name);
        let cli = self.cli(cx).await?;
        let marker = t.marker().filter(|m| m.order == cx.order.order_id);
        let Some(marker) = marker else {
            // This order never switched the service: what runs (if anything) is as it was.
            return match t.current(cx.e, &cli).await.map_err(|e| e.to_string())? {
                Some(c) => Ok(Undone {
                    order_changed_it: false,
                    previous_serving: true,
                    digest: running_digest(cx, &c).await,
                    kept_serving: true,
                    previous_failing: false,
                }),
                None => Ok(Undone::default()),
            };
        };
        let io = |e: compose::ComposeError| e.to_string();
        if marker.had_override {
            let previous = std::fs::read_to_string(&t.paths.previous).map_err(|e| {
                format!(
                    "cannot read the previous override {}: {e}",
                    t.paths.previous.display()
                )
            })?;
            compose::write_atomically(&t.paths.current, &previous).map_err(io)?;
        } else {
            compose::remove_file(&t.paths.current).map_err(io)?;
        }
        if !marker.had_container {
            cx.emit(
                Phase::Rollback,
                s,
                &format!("removing {}: it did not run before this order", t.service),
            );
            cli.remove(&t.files(), &t.service)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Undone {
                order_changed_it: true,
                ..Undone::default()
            });
        }
        cx.emit(
            Phase::Rollback,
            s,
            &format!(
                "compose up -d --no-deps {} with the previous image",
                t.service
            ),
        );
        cli.up(&t.files(), &t.service)
            .await
            .map_err(|e| e.to_string())?;
        if marker.previous_failing {
            cx.emit(
                Phase::Rollback,
                s,
                &format!(
                    "not waiting for {} to be healthy: it was already failing before this order",
                    t.service
                ),
            );
        } else {
            confirm_healthy(cx, self).await?;
        }
        let digest = match self.current_inner(cx).await {
            Ok(Some(c)) => running_digest(cx, &c).await,
            _ => None,
        };
        Ok(Undone {
            order_changed_it: true,
            previous_serving: true,
            digest,
            kept_serving: false,
            previous_failing: marker.previous_failing,
        })
    }

    async fn current_inner(&self, cx: &OrderCtx<'_>) -> Result<Option<ContainerInfo>, String> {
        let cli = self.cli(cx).await?;
        self.target
            .current(cx.e, &cli)
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs the migration with `run --rm` in the new image.
    async fn migrate_inner(
        &self,
        cx: &OrderCtx<'_>,
        command: &[String],
        timeout: Duration,
    ) -> Result<Vec<String>, Failure> {
        let (p, t) = (&self.parts, &self.target);
        let cli = self
            .cli(cx)
            .await
            .map_err(|why| Failure::start(p.name, why, Vec::new()))?;
        let mut labels = cx.container_labels(p.name);
        labels.insert(ROLE_LABEL.to_string(), ROLE_MIGRATION.to_string());
        let image = cx
            .order
            .migration_image()
            .unwrap_or(cx.order.image_of(p.name));
        let yaml = compose::override_yaml(&t.service, &image.to_string(), &labels);
        compose::write_atomically(&t.paths.migration, &yaml)
            .map_err(|e| Failure::start(p.name, e.to_string(), Vec::new()))?;
        let name = cx.one_off_name("migrate");
        let files = [t.file.as_path(), t.paths.migration.as_path()];
        let result = cli
            .run_once(&files, &t.service, &name, command, timeout)
            .await;
        let _ = compose::remove_file(&t.paths.migration);
        match result {
            Ok(ran) => Ok(plan::last_lines(&ran.output, LOG_TAIL_LINES)),
            Err(err) => {
                let timed_out = matches!(err, compose::ComposeError::TimedOut { .. });
                let mut tail = plan::last_lines(err.output(), LOG_TAIL_LINES);
                if timed_out {
                    // The CLI was killed; its container was not.
                    if let Ok(t) = cx.e.rt.logs_tail(&name, LOG_TAIL_LINES).await {
                        tail = t;
                    }
                    let _ = cx.e.rt.remove_container(&name).await;
                }
                Err(Failure {
                    class: if timed_out {
                        FailureClass::MigrationTimeout
                    } else {
                        FailureClass::MigrationFailed
                    },
                    service: p.name.to_string(),
                    what: err.to_string(),
                    log_tail: tail,
                    new_started: None,
                })
            }
        }
    }
}

impl ServiceDriver for ComposeService<'_> {
    fn parts(&self) -> &ServiceParts<'_> {
        &self.parts
    }

    fn current<'a>(
        &'a self,
        cx: &'a OrderCtx<'a>,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, String>> {
        Box::pin(self.current_inner(cx))
    }

    fn switch<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(self.switch_inner(cx))
    }

    fn undo<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<Undone, String>> {
        Box::pin(self.undo_inner(cx))
    }

    fn is_settled<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let digest = cx.order.image_of(self.parts.name).digest();
            let c = self.current_inner(cx).await?;
            Ok(c.is_some_and(|c| c.is_running() && digest_of(&c) == Some(digest)))
        })
    }

    fn order_touched<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            self.target
                .marker()
                .is_some_and(|m| m.order == cx.order.order_id)
        })
    }

    fn retain<'a>(&'a self, _cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<(), String>> {
        // Compose replaces its own containers; there are no retained versions to prune.
        Box::pin(async { Ok(()) })
    }

    fn migrate<'a>(
        &'a self,
        cx: &'a OrderCtx<'a>,
        command: &'a [String],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Vec<String>, Failure>> {
        Box::pin(self.migrate_inner(cx, command, timeout))
    }
}
