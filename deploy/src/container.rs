//! Container services: what the engine shows of a service's containers, the plan made from it
//! (`switch`), and the one executor that carries out the steps of a deploy, an undo and a
//! recovery. Engine refusals about a passing state (a container the engine is restarting) are
//! retried here; every other decision is the plan's.

use std::time::{Duration, Instant};

use proto::order::labels;
use proto::wire::{FailureClass, Phase};

use crate::context::OrderCtx;
use crate::driver::{Failure, ServiceDriver, ServiceParts, Undone, digest_of, short};
use crate::health::{self, HealthEnd, Proving, describe_health, secs, wait_healthy};
use crate::plan::{self, LOG_TAIL_LINES};
use crate::runtime::{BoxFuture, ContainerInfo, ContainerSpec, RtResult, RunState, RuntimeError};
use crate::switch::{self, ServiceView, Step, SwitchInput};

/// Label marking a one-off migration container (never a service's serving container).
pub const ROLE_LABEL: &str = "deployctl.role";
pub const ROLE_MIGRATION: &str = "migration";

/// How long a refused engine call, or an undo the engine keeps refusing, is tried again: a
/// crash-looping container settles within a restart or two, and a request a dead agent sent (a
/// create, say) lands within seconds.
const GIVE_UP_AFTER: Duration = Duration::from_secs(20);
const PAUSE: Duration = Duration::from_millis(500);
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
            digest: cx.order.image.digest(),
            canonical: &p.canonical,
            action: cx.order.action,
            strategy: p.spec.strategy,
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
        let plan = switch::plan_undo(&cx.order.order_id, &p.canonical, &obs.view);
        let mut ex = Executor::new(cx, p, &obs.all);
        for step in &plan.steps {
            ex.run(step).await?;
        }
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
        let id_ = &cx.e.identity;
        let name = plan::migration_name(
            &id_.container_prefix,
            &cx.order.app,
            &id_.env,
            &cx.order.order_id,
        );
        let engine = |e: RuntimeError| Failure::engine(p.name, e);
        let fail = |class, what: String, log_tail| Failure {
            class,
            service: p.name.to_string(),
            what,
            log_tail,
            new_started: None,
        };
        if let Some(old) = rt.inspect_container(&name).await.map_err(engine)?
            && cx.e.is_ours(&old)
        {
            rt.remove_container(&old.id).await.map_err(engine)?;
        }
        if let Some(net) = &p.spec.network {
            rt.ensure_network(net).await.map_err(engine)?;
        }
        let mut labels = cx.container_labels(p.name);
        labels.insert(ROLE_LABEL.to_string(), ROLE_MIGRATION.to_string());
        let spec = ContainerSpec {
            name: name.clone(),
            image: cx.order.image.to_string(),
            cmd: Some(command.to_vec()),
            env: p.env.clone(),
            labels,
            ports: Vec::new(),
            binds: p.spec.volumes.clone(),
            network: p.spec.network.as_ref().map(|n| (n.clone(), Vec::new())),
            restart_unless_stopped: false,
        };
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
            Ok(switch::is_settled(cx.order.image.digest(), &obs.view))
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

// ---------------------------------------------------------------------------------------------
// The executor

/// Why a step did not complete.
enum StepError {
    /// The engine refused a call (after retrying a passing refusal): worth looking again.
    Engine(String),
    /// The step itself failed: a version did not start or did not prove healthy.
    Failed(Failure),
}

impl StepError {
    fn into_failure(self, service: &str) -> Failure {
        match self {
            StepError::Engine(why) => Failure::engine(service, why),
            StepError::Failed(f) => f,
        }
    }
}

/// What a `Restore` step put back.
struct Restored {
    digest: Option<String>,
    kept_serving: bool,
}

/// Carries out plan steps for one service, recording each before it is taken.
struct Executor<'c, 'a> {
    cx: &'c OrderCtx<'a>,
    svc: &'c ServiceParts<'a>,
    /// What the plan was made from, for naming containers in messages.
    known: &'c [ContainerInfo],
    /// The container the order created or brought back, once it exists.
    candidate: Option<String>,
    started: Option<Instant>,
    restored: Option<Restored>,
}

fn describe(c: Option<&ContainerInfo>, id: &str) -> String {
    match c {
        Some(c) => format!("{} ({})", c.name, short(c)),
        None => plan::short_id(id).to_string(),
    }
}

impl<'c, 'a> Executor<'c, 'a> {
    fn new(cx: &'c OrderCtx<'a>, svc: &'c ServiceParts<'a>, known: &'c [ContainerInfo]) -> Self {
        Executor {
            cx,
            svc,
            known,
            candidate: None,
            started: None,
            restored: None,
        }
    }

    fn emit(&self, phase: Phase, message: &str) {
        self.cx.emit(phase, Some(self.svc.name), message);
    }

    fn name_of(&self, id: &str) -> String {
        describe(self.known.iter().find(|c| c.id == id), id)
    }

    /// One engine call, tried again while the engine refuses it for a passing reason.
    async fn call<'f, T>(
        &self,
        what: &str,
        f: impl Fn() -> BoxFuture<'f, RtResult<T>>,
    ) -> Result<T, StepError> {
        let started = Instant::now();
        let mut told = false;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if plan::is_transient(&e) && started.elapsed() < GIVE_UP_AFTER => {
                    if !told {
                        self.emit(
                            Phase::Switch,
                            &format!(
                                "the engine refused to {what} for now ({e}); trying again for up to {}s",
                                GIVE_UP_AFTER.as_secs()
                            ),
                        );
                        told = true;
                    }
                    tokio::time::sleep(PAUSE).await;
                }
                Err(e) => return Err(StepError::Engine(format!("cannot {what}: {e}"))),
            }
        }
    }

    fn candidate(&self) -> Result<String, StepError> {
        self.candidate
            .clone()
            .ok_or_else(|| StepError::Engine("no candidate container to act on".into()))
    }

    async fn run(&mut self, step: &Step) -> Result<(), StepError> {
        let rt = &self.cx.e.rt;
        let stop_timeout = self.cx.e.stop_timeout;
        match step {
            Step::RemoveLeftover { id } => {
                self.emit(
                    Phase::Cleanup,
                    &format!(
                        "removing {}, left over from an earlier attempt",
                        self.name_of(id)
                    ),
                );
                self.call("remove it", || rt.remove_container(id)).await
            }
            Step::SetAside { id, name } => self.set_aside(id, name).await,
            Step::Create { name, alias } => {
                self.ensure_network().await?;
                self.emit(
                    Phase::Switch,
                    &format!("creating {name} from {}", self.cx.order.image),
                );
                let spec = self.container_spec(name, *alias);
                let id = self
                    .call(&format!("create {name}"), || rt.create_container(&spec))
                    .await?;
                self.candidate = Some(id);
                Ok(())
            }
            Step::Revive { id, name, alias } => {
                self.emit(
                    Phase::Switch,
                    &format!("bringing back the retained {} as {name}", self.name_of(id)),
                );
                self.call(&format!("rename it to {name}"), || {
                    rt.rename_container(id, name)
                })
                .await?;
                if !alias && let Some(net) = &self.svc.spec.network {
                    // A candidate answers to the service name only once proven.
                    let c = self.inspect(id).await?;
                    if c.networks.contains_key(net) {
                        self.call("take it off the network", || rt.disconnect_network(id, net))
                            .await?;
                    }
                }
                self.join_network(id, *alias).await?;
                self.candidate = Some(id.clone());
                Ok(())
            }
            Step::StartAndProve { name } => self.start_and_prove(name).await,
            Step::TakeOver { old, aside } => self.take_over(old, aside).await,
            Step::Remove { id } => {
                self.emit(
                    Phase::Rollback,
                    &format!("removing {}, created by this order", self.name_of(id)),
                );
                self.call("remove it", || rt.remove_container(id)).await
            }
            Step::Retire { id, name } => {
                self.emit(
                    Phase::Rollback,
                    &format!(
                        "returning {} to the retained versions as {name}",
                        self.name_of(id)
                    ),
                );
                self.call("stop it", || rt.stop_container(id, stop_timeout))
                    .await?;
                self.call(&format!("rename it to {name}"), || {
                    rt.rename_container(id, name)
                })
                .await
            }
            Step::Restore { id, prove } => self.restore(id, *prove).await,
        }
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, StepError> {
        let rt = &self.cx.e.rt;
        self.call("inspect it", || rt.inspect_container(id))
            .await?
            .ok_or_else(|| {
                StepError::Engine(format!("container {} disappeared", plan::short_id(id)))
            })
    }

    /// Rename first, then stop: a container under this order's aside name is the sign that the
    /// order had begun stopping it, which recovery needs (a stop the engine keeps executing after
    /// the agent died would otherwise take a restored version down later). A failing container
    /// is stopped without waiting for its health, and a stop also ends a restart loop.
    async fn set_aside(&self, id: &str, name: &str) -> Result<(), StepError> {
        let rt = &self.cx.e.rt;
        self.emit(
            Phase::Switch,
            &format!("stopping {} and keeping it as {name}", self.name_of(id)),
        );
        self.call(&format!("rename it to {name}"), || {
            rt.rename_container(id, name)
        })
        .await?;
        self.call("stop it", || rt.stop_container(id, self.cx.e.stop_timeout))
            .await
    }

    async fn ensure_network(&self) -> Result<(), StepError> {
        if let Some(net) = &self.svc.spec.network {
            let rt = &self.cx.e.rt;
            self.call(&format!("create the network {net}"), || {
                rt.ensure_network(net)
            })
            .await?;
        }
        Ok(())
    }

    /// Joins the service network if the container is not on it (a version set aside by a
    /// start-first switch was taken off it), answering as the service only when `alias`.
    async fn join_network(&self, id: &str, alias: bool) -> Result<(), StepError> {
        let Some(net) = &self.svc.spec.network else {
            return Ok(());
        };
        let c = self.inspect(id).await?;
        if c.networks.contains_key(net) {
            return Ok(());
        }
        self.ensure_network().await?;
        let aliases = if alias {
            vec![self.svc.name.to_string()]
        } else {
            Vec::new()
        };
        let rt = &self.cx.e.rt;
        self.call(&format!("connect it to {net}"), || {
            rt.connect_network(id, net, &aliases)
        })
        .await
    }

    fn container_spec(&self, name: &str, alias: bool) -> ContainerSpec {
        let s = self.svc;
        ContainerSpec {
            name: name.to_string(),
            image: self.cx.order.image.to_string(),
            cmd: s.spec.command.clone(),
            env: s.env.clone(),
            labels: self.cx.container_labels(s.name),
            ports: s.ports.clone(),
            binds: s.spec.volumes.clone(),
            network: s.spec.network.as_ref().map(|n| {
                (
                    n.clone(),
                    if alias {
                        vec![s.name.to_string()]
                    } else {
                        Vec::new()
                    },
                )
            }),
            restart_unless_stopped: true,
        }
    }

    fn proving<'p>(&'p self, name: &'p str, id: &'p str, started: Instant) -> Proving<'p> {
        Proving {
            service: self.svc.name,
            spec: self.svc.spec,
            ports: &self.svc.ports,
            name,
            id,
            short: self.cx.order.image.short_digest(),
            started,
        }
    }

    async fn start_and_prove(&mut self, name: &str) -> Result<(), StepError> {
        let e = self.cx.e;
        let id = self.candidate()?;
        self.emit(Phase::Switch, &format!("starting {name}"));
        if let Err(err) = e.rt.start_container(&id).await {
            let tail =
                e.rt.logs_tail(&id, LOG_TAIL_LINES)
                    .await
                    .unwrap_or_default();
            return Err(StepError::Failed(Failure::start(
                self.svc.name,
                format!("{name} could not start: {err}"),
                tail,
            )));
        }
        let started = Instant::now();
        self.started = Some(started);
        let has_check =
            e.rt.inspect_container(&id)
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.check.is_some());
        self.emit(
            Phase::Health,
            &format!(
                "waiting for {name} to be healthy: {}",
                describe_health(self.svc.spec, &self.svc.ports, has_check)
            ),
        );
        match wait_healthy(e, &id, self.svc.spec, &self.svc.ports, started).await {
            HealthEnd::Healthy { after } => {
                self.emit(
                    Phase::Health,
                    &format!("{name} is healthy ({} after start)", secs(after)),
                );
                Ok(())
            }
            end => {
                let f = health::health_failure(e, &self.proving(name, &id, started), end).await;
                Err(StepError::Failed(f))
            }
        }
    }

    async fn take_over(&mut self, old: &str, aside: &str) -> Result<(), StepError> {
        let e = self.cx.e;
        let rt = &e.rt;
        let id = self.candidate()?;
        let canonical = &self.svc.canonical;
        self.emit(
            Phase::Switch,
            &format!(
                "switching: the new version takes over as {canonical} and {} steps aside",
                self.name_of(old)
            ),
        );
        if let Some(net) = &self.svc.spec.network {
            // Answer as the service on the new container first, then take the old one off the
            // network, so the name always resolves to a healthy container.
            let alias = [self.svc.name.to_string()];
            self.call("take the new version off the network", || {
                rt.disconnect_network(&id, net)
            })
            .await?;
            self.call("connect the new version as the service", || {
                rt.connect_network(&id, net, &alias)
            })
            .await?;
            // The name now resolves to both containers. The candidate rejoined the network at a
            // new address: prove it there again while the old one still answers. This is also the
            // drain window in which clients' DNS answers and ARP entries catch up.
            self.emit(
                Phase::Health,
                &format!(
                    "the new version answers as {}; re-checking it before the old one leaves",
                    self.svc.name
                ),
            );
            let started = self.started.unwrap_or_else(Instant::now);
            match wait_healthy(e, &id, self.svc.spec, &self.svc.ports, Instant::now()).await {
                HealthEnd::Healthy { .. } => {}
                end => {
                    let _ = rt.disconnect_network(&id, net).await;
                    let name = plan::next_name(canonical);
                    let f =
                        health::health_failure(e, &self.proving(&name, &id, started), end).await;
                    return Err(StepError::Failed(f));
                }
            }
            if let Err(err) = self
                .call("take the old version off the network", || {
                    rt.disconnect_network(old, net)
                })
                .await
            {
                // An old version that died meanwhile has left the network with its sandbox.
                let gone = matches!(rt.inspect_container(old).await, Ok(None))
                    || matches!(rt.inspect_container(old).await, Ok(Some(c)) if !c.is_running());
                if !gone {
                    return Err(err);
                }
            }
        }
        self.set_aside(old, aside).await?;
        self.call(&format!("rename the new version to {canonical}"), || {
            rt.rename_container(&id, canonical)
        })
        .await
    }

    async fn restore(&mut self, id: &str, prove: bool) -> Result<(), StepError> {
        let e = self.cx.e;
        let rt = &e.rt;
        let canonical = &self.svc.canonical;
        let c = self.inspect(id).await?;
        let what = format!("{} ({})", c.name, short(&c));
        self.restored = Some(Restored {
            digest: digest_of(&c).map(str::to_owned),
            kept_serving: c.is_running() && &c.name == canonical,
        });
        let mut running = c.is_running() || c.state == RunState::Restarting;
        if running && &c.name != canonical {
            // Set aside yet running: the order was stopping it when it was cut off, and that
            // stop may still be finishing in the engine. Finish it, then start afresh, so the
            // version verified below is not one about to exit.
            self.emit(
                Phase::Rollback,
                &format!(
                    "{what} was being stopped when the order was cut off; restarting it cleanly"
                ),
            );
            self.call("stop it", || rt.stop_container(id, e.stop_timeout))
                .await?;
            running = false;
        }
        if &c.name != canonical {
            self.emit(
                Phase::Rollback,
                &format!("putting {what} back as {canonical}"),
            );
            self.call(&format!("rename it to {canonical}"), || {
                rt.rename_container(id, canonical)
            })
            .await?;
        }
        self.join_network(id, true).await?;
        if !running {
            self.emit(
                Phase::Rollback,
                &format!("starting {canonical} ({})", short(&c)),
            );
            if let Err(err) = rt.start_container(id).await {
                return Err(StepError::Failed(Failure::start(
                    self.svc.name,
                    format!("cannot start the previous version: {err}"),
                    Vec::new(),
                )));
            }
        }
        if !prove {
            self.emit(
                Phase::Rollback,
                &format!(
                    "not waiting for {canonical} to be healthy: it was already failing before this order"
                ),
            );
            return Ok(());
        }
        self.emit(
            Phase::Health,
            &format!("waiting for {canonical} to be healthy again"),
        );
        match wait_healthy(e, id, self.svc.spec, &self.svc.ports, Instant::now()).await {
            HealthEnd::Healthy { after } => {
                self.emit(
                    Phase::Health,
                    &format!("{canonical} is healthy again ({})", secs(after)),
                );
                Ok(())
            }
            end => {
                let tail = rt.logs_tail(id, 5).await.unwrap_or_default().join(" | ");
                Err(StepError::Failed(Failure::start(
                    self.svc.name,
                    format!(
                        "the previous version did not become healthy ({}); its last log lines: {tail}",
                        end.describe()
                    ),
                    Vec::new(),
                )))
            }
        }
    }
}
