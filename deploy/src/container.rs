//! Container services: what the engine shows of a service's containers, the plan made from it
//! (`switch`), carried out by the one executor (`execute`) for deploys, undos and recoveries;
//! retention and the migration container.

use std::time::{Duration, Instant};

use proto::order::labels;
use proto::wire::{FailureClass, Phase};

use crate::context::OrderCtx;
use crate::driver::{Failure, ServiceDriver, ServiceParts, Undone, digest_of, short};
use crate::execute::{Executor, GIVE_UP_AFTER, PAUSE, StepError, describe};
use crate::health;
use crate::plan::{self, LOG_TAIL_LINES};
use crate::runtime::{BoxFuture, ContainerInfo, ContainerSpec, RunState, RuntimeError};
use crate::switch::{self, ServiceView, SwitchInput};

/// Label marking a one-off migration container (never a service's serving container).
pub const ROLE_LABEL: &str = "deployctl.role";
pub const ROLE_MIGRATION: &str = "migration";

/// How often a running migration is looked at.
const MIGRATION_POLL: Duration = Duration::from_millis(100);

pub(crate) struct ContainerService<'a> {
    pub parts: ServiceParts<'a>,
}

/// The service's containers as the engine lists them, and sorted by role.
struct Observed {
    all: Vec<ContainerInfo>,
    view: ServiceView,
}

impl Observed {
    fn find(&self, id: &str) -> Option<&ContainerInfo> {
        self.all.iter().find(|c| c.id == id)
    }

    fn canonical(&self) -> Option<&ContainerInfo> {
        let id = &self.view.canonical.as_ref()?.id;
        self.find(id)
    }
}

impl ContainerService<'_> {
    async fn observe(&self, cx: &OrderCtx<'_>) -> Result<Observed, RuntimeError> {
        let mut wanted = cx.identity_labels();
        wanted.push((labels::SERVICE.to_string(), self.parts.name.to_string()));
        let all: Vec<ContainerInfo> =
            cx.e.rt
                .list_containers(&wanted)
                .await?
                .into_iter()
                .filter(|c| c.label(ROLE_LABEL).is_none())
                .collect();
        let view = ServiceView::sort(&self.parts.canonical, all.iter());
        Ok(Observed { all, view })
    }

    async fn switch_inner(&self, cx: &OrderCtx<'_>) -> Result<bool, Failure> {
        let p = &self.parts;
        let e = cx.e;
        if let Some(c) =
            e.rt.inspect_container(&p.canonical)
                .await
                .map_err(|err| Failure::engine(p.name, err))?
            && !e.is_ours(&c)
        {
            return Err(Failure::start(
                p.name,
                format!(
                    "a container named {} exists that this agent does not manage (its deployctl.host/env labels are \
                     not {}/{}); rename or remove it",
                    p.canonical, e.identity.host, e.identity.env
                ),
                Vec::new(),
            ));
        }
        let obs = self
            .observe(cx)
            .await
            .map_err(|err| Failure::engine(p.name, err))?;
        let condition = match obs.canonical() {
            Some(c) => Some(health::look_at(e, c, p.spec, &p.ports).await),
            None => None,
        };
        let plan = switch::plan_switch(&SwitchInput {
            order_id: &cx.order.order_id,
            digest: cx.order.image_of(p.name).digest(),
            canonical: &p.canonical,
            action: cx.order.action,
            // Behind a proxy the old version serves until the new one is routed to.
            strategy: if p.spec.proxy.is_some() {
                proto::order::Strategy::StartFirst
            } else {
                p.spec.strategy
            },
            fixed_port: plan::binds_fixed_host_port(&p.ports),
            view: &obs.view,
            condition: condition.as_ref(),
        });
        for note in &plan.notes {
            cx.emit(
                Phase::Switch,
                Some(p.name),
                &format!("{}: {note}", p.canonical),
            );
        }
        let mut ex = Executor::new(cx, p, &obs.all);
        for step in &plan.steps {
            ex.run(step).await.map_err(|err| err.into_failure(p.name))?;
        }
        ex.settle_route()
            .await
            .map_err(|err| err.into_failure(p.name))?;
        if !plan.changes
            && let Some(c) = obs.canonical()
        {
            cx.emit(
                Phase::Health,
                Some(p.name),
                &format!(
                    "{} already runs {} ({}) and answers healthy; leaving it",
                    p.canonical,
                    short(c),
                    c.short_id()
                ),
            );
        }
        Ok(plan.changes)
    }

    async fn undo_inner(&self, cx: &OrderCtx<'_>) -> Result<Undone, String> {
        let started = Instant::now();
        let mut told = false;
        loop {
            match self.undo_pass(cx).await {
                Ok(done) => return Ok(done),
                Err(StepError::Engine(why)) if started.elapsed() < GIVE_UP_AFTER => {
                    if !told {
                        cx.emit(
                            Phase::Rollback,
                            Some(self.parts.name),
                            &format!(
                                "the engine refused a step ({why}); looking at the containers again for up to {}s",
                                GIVE_UP_AFTER.as_secs()
                            ),
                        );
                        told = true;
                    }
                    tokio::time::sleep(PAUSE).await;
                }
                Err(StepError::Engine(why)) => return Err(why),
                Err(StepError::Failed(f)) => return Err(f.what),
            }
        }
    }

    /// One pass of undo: observe, plan, carry the plan out.
    async fn undo_pass(&self, cx: &OrderCtx<'_>) -> Result<Undone, StepError> {
        let p = &self.parts;
        let obs = self
            .observe(cx)
            .await
            .map_err(|e| StepError::Engine(format!("the Docker engine failed: {e}")))?;
        let plan = switch::plan_undo(
            &cx.order.order_id,
            &p.canonical,
            &obs.view,
            p.spec.proxy.is_some(),
        );
        let mut ex = Executor::new(cx, p, &obs.all);
        for step in &plan.steps {
            ex.run(step).await?;
        }
        ex.settle_route().await?;
        let (digest, kept_serving) = match ex.restored.take() {
            Some(r) => (r.digest, r.kept_serving),
            // Nothing was restored: what serves (if anything) is what served before the order.
            None => (
                obs.view.canonical.as_ref().and_then(|c| c.digest.clone()),
                plan.previous_serving,
            ),
        };
        if plan.previous_failing {
            cx.emit(
                Phase::Rollback,
                Some(p.name),
                &format!(
                    "{} is back as it was before the order: it was already failing then, so it is not expected \
                     to be healthy",
                    p.canonical
                ),
            );
        }
        Ok(Undone {
            order_changed_it: plan.order_changed_it,
            previous_serving: plan.previous_serving,
            digest,
            kept_serving,
            previous_failing: plan.previous_failing,
        })
    }

    async fn retain_inner(&self, cx: &OrderCtx<'_>) -> Result<(), String> {
        let p = &self.parts;
        let obs = self.observe(cx).await.map_err(|e| e.to_string())?;
        let running = obs.canonical().and_then(digest_of);
        let retained: Vec<plan::Retained> = obs
            .view
            .aside
            .iter()
            .map(|a| plan::Retained {
                id: a.seen.id.clone(),
                digest: a.seen.digest.clone(),
                finished_at: a.seen.finished_at.clone(),
                running: a.seen.running(),
            })
            .collect();
        let remove = plan::retention(&retained, running, plan::RETAINED_VERSIONS);
        let kept: Vec<&str> = obs
            .view
            .aside
            .iter()
            .filter(|a| !remove.contains(&a.seen.id))
            .filter_map(|a| obs.find(&a.seen.id))
            .map(|c| c.name.as_str())
            .collect();
        if !kept.is_empty() {
            cx.emit(
                Phase::Cleanup,
                Some(p.name),
                &format!("keeping for instant rollback: {}", kept.join(", ")),
            );
        }
        for id in remove {
            let name = describe(obs.find(&id), &id);
            cx.emit(
                Phase::Cleanup,
                Some(p.name),
                &format!("removing the old version {name}"),
            );
            cx.e.rt
                .remove_container(&id)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn migrate_inner(
        &self,
        cx: &OrderCtx<'_>,
        command: &[String],
        timeout: Duration,
    ) -> Result<Vec<String>, Failure> {
        let p = &self.parts;
        let rt = &cx.e.rt;
        let name = cx.one_off_name("migrate");
        let engine = |e: RuntimeError| Failure::engine(p.name, e);
        let fail = |class, what: String, log_tail| Failure {
            class,
            service: p.name.to_string(),
            what,
            log_tail,
            new_started: None,
        };
        clear_for_one_off(cx, p, &name).await.map_err(engine)?;
        let image = cx
            .order
            .migration_image()
            .unwrap_or(cx.order.image_of(p.name));
        let spec = one_off_spec(cx, p, &name, image, command, ROLE_MIGRATION);
        let id = rt.create_container(&spec).await.map_err(engine)?;
        if let Err(e) = rt.start_container(&id).await {
            let tail = rt.logs_tail(&id, LOG_TAIL_LINES).await.unwrap_or_default();
            let _ = rt.remove_container(&id).await;
            return Err(fail(
                FailureClass::MigrationFailed,
                format!("could not start: {e}"),
                tail,
            ));
        }
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let exit_code = loop {
            match rt.inspect_container(&id).await {
                Ok(Some(c)) if matches!(c.state, RunState::Exited | RunState::Dead) => {
                    break c.exit_code;
                }
                Ok(Some(_)) => {}
                Ok(None) => break None,
                Err(e) => {
                    let _ = rt.remove_container(&id).await;
                    return Err(engine(e));
                }
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = rt.kill_container(&id).await;
                break None;
            }
            tokio::time::sleep(MIGRATION_POLL).await;
        };
        let tail = rt.logs_tail(&id, LOG_TAIL_LINES).await.unwrap_or_default();
        if let Err(e) = rt.remove_container(&id).await {
            cx.emit(
                Phase::Migrate,
                Some(p.name),
                &format!("could not remove the migration container {name}: {e}"),
            );
        }
        match (timed_out, exit_code) {
            (true, _) => Err(fail(
                FailureClass::MigrationTimeout,
                format!(
                    "did not finish within {} and was killed",
                    proto::time::format_duration(timeout)
                ),
                tail,
            )),
            (false, Some(0)) => Ok(tail),
            (false, Some(code)) => Err(fail(
                FailureClass::MigrationFailed,
                format!("exited with code {code}"),
                tail,
            )),
            (false, None) => Err(fail(
                FailureClass::MigrationFailed,
                "vanished before it finished".into(),
                tail,
            )),
        }
    }
}

/// Makes way for a one-off container (a migration, an exec) named `name`: a leftover of ours
/// by that name is removed, and the service's user network created if it is missing.
pub(crate) async fn clear_for_one_off(
    cx: &OrderCtx<'_>,
    p: &ServiceParts<'_>,
    name: &str,
) -> Result<(), RuntimeError> {
    let rt = &cx.e.rt;
    if let Some(old) = rt.inspect_container(name).await?
        && cx.e.is_ours(&old)
    {
        rt.remove_container(&old.id).await?;
    }
    if let Some(net) = p
        .spec
        .network
        .as_ref()
        .filter(|n| proto::spec::is_user_network(n))
    {
        rt.ensure_network(net).await?;
    }
    Ok(())
}

/// A one-off container of `image` running `command` with the service's env_file, volumes and
/// network: no ports (the service's own may be bound), no restart, our labels and its `role`,
/// so the service's own containers are never confused with it.
pub(crate) fn one_off_spec(
    cx: &OrderCtx<'_>,
    p: &ServiceParts<'_>,
    name: &str,
    image: &proto::ImageRef,
    command: &[String],
    role: &str,
) -> ContainerSpec {
    let mut labels = cx.container_labels(p.name);
    labels.insert(ROLE_LABEL.to_string(), role.to_string());
    ContainerSpec {
        name: name.to_string(),
        image: image.to_string(),
        cmd: Some(command.to_vec()),
        env: p.env.clone(),
        labels,
        ports: Vec::new(),
        binds: p.spec.volumes.clone(),
        network: p.spec.network.as_ref().map(|n| (n.clone(), Vec::new())),
        restart_unless_stopped: false,
    }
}

impl ServiceDriver for ContainerService<'_> {
    fn parts(&self) -> &ServiceParts<'_> {
        &self.parts
    }

    fn current<'a>(
        &'a self,
        cx: &'a OrderCtx<'a>,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, String>> {
        Box::pin(async move {
            cx.e.find_container(&cx.order.app, self.parts.name)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn switch<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<bool, Failure>> {
        Box::pin(self.switch_inner(cx))
    }

    fn undo<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<Undone, String>> {
        Box::pin(self.undo_inner(cx))
    }

    fn is_settled<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let obs = self.observe(cx).await.map_err(|e| e.to_string())?;
            let digest = cx.order.image_of(self.parts.name).digest();
            Ok(switch::is_settled(digest, &obs.view))
        })
    }

    fn order_touched<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            match self.observe(cx).await {
                Ok(obs) => switch::order_touched(&cx.order.order_id, &obs.view),
                // Cannot tell: assume it did, so recovery reports a change rather than hiding one.
                Err(_) => true,
            }
        })
    }

    fn retain<'a>(&'a self, cx: &'a OrderCtx<'a>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.retain_inner(cx))
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
