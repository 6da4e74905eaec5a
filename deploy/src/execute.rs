//! The one executor of switch and undo plans for container services: it carries out each
//! `switch::Step` against the engine, recording it before it is taken, and tries an engine call
//! again while the engine refuses it for a passing reason (a container it is restarting). It
//! makes no decisions of its own beyond that.

use std::time::{Duration, Instant};

use proto::wire::Phase;

use crate::context::OrderCtx;
use crate::driver::{Failure, ServiceParts, digest_of, short};
use crate::health::{self, HealthEnd, Proving, describe_health, secs, wait_healthy, wait_proven};
use crate::plan::{self, LOG_TAIL_LINES};
use crate::proxy::{Drained, Proxied, Switched};
use crate::runtime::{BoxFuture, ContainerInfo, ContainerSpec, RtResult, RunState};
use crate::switch::Step;

/// How long a refused engine call is tried again: a crash-looping container settles within a
/// restart or two, and a request a dead agent sent (a create, say) lands within seconds.
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(20);
pub(crate) const PAUSE: Duration = Duration::from_millis(500);

/// Why a step did not complete.
pub(crate) enum StepError {
    /// The engine refused a call (after retrying a passing refusal): worth looking again.
    Engine(String),
    /// The step itself failed: a version did not start or did not prove healthy.
    Failed(Failure),
}

impl StepError {
    fn proxy(service: &str, e: crate::caddy::CaddyError) -> StepError {
        StepError::Failed(Failure {
            class: proto::wire::FailureClass::Proxy,
            service: service.to_string(),
            what: e.to_string(),
            log_tail: Vec::new(),
            new_started: None,
        })
    }

    pub fn into_failure(self, service: &str) -> Failure {
        match self {
            StepError::Engine(why) => Failure::engine(service, why),
            StepError::Failed(f) => f,
        }
    }
}

/// What a `Restore` step put back.
pub(crate) struct Restored {
    pub digest: Option<String>,
    pub kept_serving: bool,
}

/// Carries out plan steps for one service, recording each before it is taken.
pub(crate) struct Executor<'c, 'a> {
    cx: &'c OrderCtx<'a>,
    svc: &'c ServiceParts<'a>,
    /// What the plan was made from, for naming containers in messages.
    known: &'c [ContainerInfo],
    /// The container the order created or brought back, once it exists.
    candidate: Option<String>,
    started: Option<Instant>,
    pub restored: Option<Restored>,
}

pub(crate) fn describe(c: Option<&ContainerInfo>, id: &str) -> String {
    match c {
        Some(c) => format!("{} ({})", c.name, short(c)),
        None => plan::short_id(id).to_string(),
    }
}

impl<'c, 'a> Executor<'c, 'a> {
    pub fn new(
        cx: &'c OrderCtx<'a>,
        svc: &'c ServiceParts<'a>,
        known: &'c [ContainerInfo],
    ) -> Self {
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

    pub async fn run(&mut self, step: &Step) -> Result<(), StepError> {
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
                    &format!(
                        "creating {name} from {}",
                        self.cx.order.image_of(self.svc.name)
                    ),
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
                if !alias && let Some(net) = self.user_network() {
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
            Step::MakeRoom { id, name } => {
                self.emit(
                    Phase::Rollback,
                    &format!(
                        "{} goes on serving as {name} until the previous version is back",
                        self.name_of(id)
                    ),
                );
                self.call(&format!("rename it to {name}"), || {
                    rt.rename_container(id, name)
                })
                .await
            }
            Step::Reroute { from } => {
                let canonical = self.svc.canonical.clone();
                self.route_over(&canonical, from).await
            }
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

    /// The service's network when it is a user-defined one: only there do containers join,
    /// leave and answer to the service's name; a network mode (`host`, …) is set at creation.
    fn user_network(&self) -> Option<&str> {
        self.svc
            .spec
            .network
            .as_deref()
            .filter(|n| proto::spec::is_user_network(n))
    }

    async fn ensure_network(&self) -> Result<(), StepError> {
        if let Some(net) = self.user_network() {
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
        let Some(net) = self.user_network() else {
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
            image: self.cx.order.image_of(s.name).to_string(),
            cmd: s.spec.command.clone(),
            env: s.env.clone(),
            labels: self.cx.container_labels(s.name),
            ports: s.ports.clone(),
            binds: s.spec.volumes.clone(),
            network: s.spec.network.as_ref().map(|n| {
                (
                    n.clone(),
                    if alias && proto::spec::is_user_network(n) {
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
            short: self.cx.order.image_of(self.svc.name).short_digest(),
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
        let revision = self.cx.order.revision_of(self.svc.name);
        match wait_proven(e, &id, self.svc.spec, &self.svc.ports, started, revision).await {
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
        if let Some(net) = self.user_network() {
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
            self.route_over(&id, old).await?;
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
        if self.user_network().is_none() {
            self.route_over(&id, old).await?;
        }
        self.set_aside(old, aside).await?;
        self.call(&format!("rename the new version to {canonical}"), || {
            rt.rename_container(&id, canonical)
        })
        .await
    }

    fn proxied(&self) -> Option<Proxied<'c>> {
        let cx = self.cx;
        Proxied::new(
            &cx.e.http,
            &cx.order.app,
            &cx.order.env,
            self.svc.name,
            self.svc.spec,
        )
    }

    /// Behind a proxy: the route goes to the proven candidate in one config change, then the
    /// old version finishes the requests it has (at most `drain`) before it is stopped. The old
    /// one stays reachable meanwhile: it leaves its network only after this.
    async fn route_over(&self, new: &str, old: &str) -> Result<(), StepError> {
        let Some(px) = self.proxied() else {
            return Ok(());
        };
        let name = self.svc.name;
        let new_c = self.inspect(new).await?;
        let dial = px.dial(&new_c).ok_or_else(|| {
            StepError::Engine(format!("{} has no address on its network", new_c.name))
        })?;
        let old_dial = match self.cx.e.rt.inspect_container(old).await {
            Ok(Some(c)) if c.is_running() => px.dial(&c),
            _ => None,
        };
        self.emit(
            Phase::Switch,
            &format!(
                "switching route {} in Caddy ({}) to {} at {dial}",
                px.id,
                px.admin(),
                new_c.name
            ),
        );
        match px
            .switch_to(&dial, old_dial.as_deref())
            .await
            .map_err(|e| StepError::proxy(name, e))?
        {
            Switched::InMaintenance => {
                self.emit(
                    Phase::Switch,
                    &format!(
                        "route {} shows the maintenance page and keeps it; `maintenance off` sends \
                         requests to the new version",
                        px.id
                    ),
                );
                return Ok(());
            }
            Switched::Routed | Switched::Already => self.emit(
                Phase::Switch,
                &format!("route {} switched to {} at {dial}", px.id, new_c.name),
            ),
        }
        let Some(old_dial) = old_dial else {
            return Ok(());
        };
        self.emit(
            Phase::Switch,
            &format!(
                "draining {}: its requests in flight may finish (at most {})",
                self.name_of(old),
                secs(px.spec.drain)
            ),
        );
        let drained = px
            .drain(&old_dial)
            .await
            .map_err(|e| StepError::proxy(name, e))?;
        self.emit(
            Phase::Switch,
            &match drained {
                Drained::Idle { after } => {
                    format!("{} drained ({})", self.name_of(old), secs(after))
                }
                Drained::Unknown => {
                    format!("Caddy keeps no count for {old_dial}: nothing in flight to wait for")
                }
                Drained::TimedOut { in_flight } => format!(
                    "{} still had {in_flight} requests in flight after {}; stopping it anyway",
                    self.name_of(old),
                    secs(px.spec.drain)
                ),
            },
        );
        Ok(())
    }

    /// Behind a proxy: the route goes to the serving container and nothing else (a drained
    /// version's entry is dropped, a missing route created). Run after every switch and undo.
    pub async fn settle_route(&self) -> Result<(), StepError> {
        let Some(px) = self.proxied() else {
            return Ok(());
        };
        let rt = &self.cx.e.rt;
        let canonical = &self.svc.canonical;
        let serving = self
            .call("inspect it", || rt.inspect_container(canonical))
            .await?
            .filter(|c| c.is_running());
        let Some(c) = serving else {
            return Ok(());
        };
        let Some(dial) = px.dial(&c) else {
            return Err(StepError::Engine(format!(
                "{canonical} has no address on its network"
            )));
        };
        let switched = px
            .switch_to(&dial, None)
            .await
            .map_err(|e| StepError::proxy(self.svc.name, e))?;
        if switched == Switched::Routed {
            self.emit(
                Phase::Switch,
                &format!("route {} switched to {canonical} at {dial}", px.id),
            );
        }
        Ok(())
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
