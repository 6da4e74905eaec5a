//! The only module that speaks to the Docker engine API (through bollard). It translates
//! between bollard's wide models and the narrow [`Runtime`] view; it decides nothing.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    EventMessage, EventMessageTypeEnum, HealthStatusEnum, HostConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use proto::ImageRef;
use registry_auth::Credential;

use crate::plan::{self, PullFailure, classify_pull_failure};
use crate::runtime::{
    BoxFuture, BoxStream, CheckStatus, ContainerEvent, ContainerEventKind, ContainerInfo,
    ContainerSpec, Credentials, EngineFacts, ImageInfo, OutputChunk, OutputStream, PullError,
    RtResult, RunState, Runtime, RuntimeError,
};

/// The local Docker engine, API version negotiated down to what the engine speaks.
pub struct DockerRuntime {
    docker: Docker,
}

impl DockerRuntime {
    /// Connects to `DOCKER_HOST` or the local socket and negotiates the API version.
    pub async fn connect() -> RtResult<Self> {
        let docker = Docker::connect_with_defaults()
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::Unreachable(e.to_string()))?;
        Ok(DockerRuntime { docker })
    }
}

fn map_err(e: BollardError) -> RuntimeError {
    // The engine and runc quote a container's environment entries in some refusals (a NUL in a
    // value, an empty name); those entries come from env files, and these messages end up in
    // outcomes and journals.
    let hide = |message: String| plan::hide_env_entries(&message).into_owned();
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(hide(message)),
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => RuntimeError::Conflict(hide(message)),
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Api(format!("status {status_code}: {}", hide(message))),
        BollardError::IOError { err } => RuntimeError::Unreachable(err.to_string()),
        BollardError::HyperResponseError { err } => RuntimeError::Unreachable(err.to_string()),
        BollardError::RequestTimeoutError => RuntimeError::Unreachable("request timed out".into()),
        other => RuntimeError::Api(hide(other.to_string())),
    }
}

/// Treats "already in that state" answers as success: stop of a stopped container (304),
/// removal of a vanished one.
fn ignore_not_found(r: Result<(), BollardError>) -> RtResult<()> {
    match r {
        Ok(()) => Ok(()),
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(map_err(e)),
    }
}

fn to_info(c: ContainerInspectResponse) -> ContainerInfo {
    let state = c.state.unwrap_or_default();
    let run_state = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
        Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
        Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
        Some(ContainerStateStatusEnum::EXITED) => RunState::Exited,
        Some(ContainerStateStatusEnum::DEAD) => RunState::Dead,
        _ => RunState::Other,
    };
    let check = state.health.and_then(|h| match h.status {
        Some(HealthStatusEnum::STARTING) => Some(CheckStatus::Starting),
        Some(HealthStatusEnum::HEALTHY) => Some(CheckStatus::Healthy),
        Some(HealthStatusEnum::UNHEALTHY) => Some(CheckStatus::Unhealthy),
        _ => None,
    });
    let config = c.config.unwrap_or_default();
    let networks = c
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| (name, ep.ip_address.unwrap_or_default()))
        .collect();
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        state: run_state,
        exit_code: state.exit_code,
        restart_count: c.restart_count.unwrap_or(0),
        check,
        started_at: state.started_at,
        finished_at: state.finished_at,
        networks,
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.filter(|e| !e.is_empty()),
    }
}

/// A container event of a kind the health model reads; None for any other.
fn to_event(m: EventMessage) -> Option<ContainerEvent> {
    if m.typ != Some(EventMessageTypeEnum::CONTAINER) {
        return None;
    }
    let kind = ContainerEventKind::from_action(m.action.as_deref()?)?;
    let actor = m.actor?;
    // The engine sends the container's labels among the attributes, beside `name`, `image`
    // and (for `die`) `exitCode`.
    let attributes: std::collections::BTreeMap<String, String> =
        actor.attributes.unwrap_or_default().into_iter().collect();
    Some(ContainerEvent {
        id: actor.id?,
        name: attributes.get("name").cloned().unwrap_or_default(),
        exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        labels: attributes,
        kind,
    })
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    let mut exposed = Vec::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.container_port, p.protocol);
        exposed.push(key.clone());
        let binding = PortBinding {
            host_ip: p.host_ip.clone(),
            // Empty host port: the engine picks a free one.
            host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
        };
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
    }
    // Aliases exist only on user-defined networks; the engine refuses them with a network mode.
    let networking_config = spec
        .network
        .as_ref()
        .filter(|(_, aliases)| !aliases.is_empty())
        .map(|(net, aliases)| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net.clone(),
                EndpointSettings {
                    aliases: Some(aliases.clone()),
                    ..Default::default()
                },
            )])),
        });
    let host_config = HostConfig {
        binds: (!spec.binds.is_empty()).then(|| spec.binds.clone()),
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        network_mode: spec.network.as_ref().map(|(net, _)| net.clone()),
        restart_policy: spec.restart_unless_stopped.then_some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
            maximum_retry_count: None,
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: spec.cmd.clone(),
        env: (!spec.env.is_empty()).then(|| spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

impl Runtime for DockerRuntime {
    fn ping(&self) -> BoxFuture<'_, RtResult<()>> {
        Box::pin(async move { self.docker.ping().await.map(|_| ()).map_err(map_err) })
    }

    fn engine_facts(&self) -> BoxFuture<'_, RtResult<EngineFacts>> {
        Box::pin(async move {
            let version = self.docker.version().await.map_err(map_err)?;
            let info = self.docker.info().await.map_err(map_err)?;
            Ok(EngineFacts {
                version: version.version.unwrap_or_default(),
                api_version: version.api_version.unwrap_or_default(),
                root_dir: info.docker_root_dir.unwrap_or_default(),
            })
        })
    }

    fn inspect_container<'a>(
        &'a self,
        name_or_id: &'a str,
    ) -> BoxFuture<'a, RtResult<Option<ContainerInfo>>> {
        Box::pin(async move {
            match self.docker.inspect_container(name_or_id, None).await {
                Ok(c) => Ok(Some(to_info(c))),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(map_err(e)),
            }
        })
    }

    fn list_containers<'a>(
        &'a self,
        labels: &'a [(String, String)],
    ) -> BoxFuture<'a, RtResult<Vec<ContainerInfo>>> {
        Box::pin(async move {
            let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let filters = HashMap::from([("label".to_string(), wanted)]);
            let opts = ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build();
            let summaries = self
                .docker
                .list_containers(Some(opts))
                .await
                .map_err(map_err)?;
            let mut out = Vec::with_capacity(summaries.len());
            for s in summaries {
                let Some(id) = s.id else { continue };
                // A container removed between list and inspect is simply gone.
                if let Some(info) = self.inspect_container(&id).await? {
                    out.push(info);
                }
            }
            Ok(out)
        })
    }

    fn create_container<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, RtResult<String>> {
        Box::pin(async move {
            let opts = CreateContainerOptionsBuilder::default()
                .name(&spec.name)
                .build();
            let r = self
                .docker
                .create_container(Some(opts), create_body(spec))
                .await
                .map_err(map_err)?;
            Ok(r.id)
        })
    }

    fn start_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move { self.docker.start_container(id, None).await.map_err(map_err) })
    }

    fn stop_container<'a>(&'a self, id: &'a str, timeout: Duration) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            let secs = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
            let opts = StopContainerOptionsBuilder::default().t(secs).build();
            ignore_not_found(self.docker.stop_container(id, Some(opts)).await)
        })
    }

    fn kill_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            let opts = KillContainerOptionsBuilder::default()
                .signal("SIGKILL")
                .build();
            match self.docker.kill_container(id, Some(opts)).await {
                // 409: not running, which is what we wanted.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => Ok(()),
                r => ignore_not_found(r),
            }
        })
    }

    fn rename_container<'a>(
        &'a self,
        id: &'a str,
        new_name: &'a str,
    ) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            let opts = RenameContainerOptionsBuilder::default()
                .name(new_name)
                .build();
            self.docker
                .rename_container(id, opts)
                .await
                .map_err(map_err)
        })
    }

    fn remove_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            let opts = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(false)
                .build();
            match self.docker.remove_container(id, Some(opts)).await {
                // 409 "removal already in progress": someone else is finishing the job.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409,
                    message,
                }) if message.contains("already in progress") => Ok(()),
                r => ignore_not_found(r),
            }
        })
    }

    fn logs_tail<'a>(&'a self, id: &'a str, lines: usize) -> BoxFuture<'a, RtResult<Vec<String>>> {
        Box::pin(async move {
            let opts = LogsOptionsBuilder::default()
                .stdout(true)
                .stderr(true)
                .tail(&lines.to_string())
                .follow(false)
                .build();
            let mut stream = self.docker.logs(id, Some(opts));
            let mut text = String::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(map_err)?;
                text.push_str(&String::from_utf8_lossy(chunk.as_ref()));
            }
            Ok(crate::plan::last_lines(&text, lines))
        })
    }

    fn follow_output<'a>(&'a self, id: &'a str) -> BoxStream<'a, RtResult<OutputChunk>> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .build();
        Box::pin(
            self.docker
                .logs(id, Some(opts))
                .filter_map(|chunk| async move {
                    let (stream, bytes) = match chunk {
                        Ok(LogOutput::StdOut { message }) => (OutputStream::Stdout, message),
                        Ok(LogOutput::StdErr { message }) => (OutputStream::Stderr, message),
                        // Containers without a TTY write no other kind.
                        Ok(LogOutput::StdIn { .. } | LogOutput::Console { .. }) => return None,
                        Err(e) => return Some(Err(map_err(e))),
                    };
                    Some(Ok(OutputChunk {
                        stream,
                        bytes: bytes.to_vec(),
                    }))
                }),
        )
    }

    fn inspect_image<'a>(&'a self, image: &'a str) -> BoxFuture<'a, RtResult<Option<ImageInfo>>> {
        Box::pin(async move {
            match self.docker.inspect_image(image).await {
                Ok(i) => Ok(Some(ImageInfo {
                    id: i.id.unwrap_or_default(),
                    repo_digests: i.repo_digests.unwrap_or_default(),
                })),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(None),
                Err(e) => Err(map_err(e)),
            }
        })
    }

    fn pull_image<'a>(
        &'a self,
        image: &'a ImageRef,
        creds: Option<Credentials>,
    ) -> BoxFuture<'a, Result<(), PullError>> {
        Box::pin(async move {
            let opts = CreateImageOptionsBuilder::default()
                .from_image(image.repository())
                .tag(image.digest())
                .build();
            let creds = creds.map(|c| match c.credential {
                Credential::Basic { username, password } => DockerCredentials {
                    username: Some(username),
                    password: Some(password),
                    serveraddress: Some(c.server),
                    ..Default::default()
                },
                // The engine exchanges it at the registry's token endpoint itself.
                Credential::IdentityToken(token) => DockerCredentials {
                    identitytoken: Some(token),
                    serveraddress: Some(c.server),
                    ..Default::default()
                },
            });
            let mut stream = self.docker.create_image(Some(opts), None, creds);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    let (status, message) = match &e {
                        BollardError::DockerResponseServerError {
                            status_code,
                            message,
                        } => (Some(*status_code), message.clone()),
                        BollardError::DockerStreamError { error } => (None, error.clone()),
                        other => (None, other.to_string()),
                    };
                    let engine_down = matches!(
                        e,
                        BollardError::IOError { .. }
                            | BollardError::HyperResponseError { .. }
                            | BollardError::RequestTimeoutError
                    );
                    if engine_down {
                        return Err(PullError::Engine(message));
                    }
                    return Err(match classify_pull_failure(status, &message) {
                        PullFailure::NotFound => PullError::NotFound(message),
                        PullFailure::Unauthorized => PullError::Unauthorized(message),
                        PullFailure::Unreachable => PullError::Unreachable(message),
                        PullFailure::Engine => PullError::Engine(message),
                    });
                }
            }
            Ok(())
        })
    }

    fn ensure_network<'a>(&'a self, name: &'a str) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            match self.docker.inspect_network(name, None).await {
                Ok(_) => return Ok(()),
                Err(BollardError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(map_err(e)),
            }
            let req = NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                ..Default::default()
            };
            match self.docker.create_network(req).await {
                Ok(_) => Ok(()),
                // Created concurrently by someone else: fine.
                Err(BollardError::DockerResponseServerError {
                    status_code: 409, ..
                }) => Ok(()),
                Err(e) => Err(map_err(e)),
            }
        })
    }

    fn connect_network<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
        aliases: &'a [String],
    ) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            let req = NetworkConnectRequest {
                container: id.to_string(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(aliases.to_vec()),
                    ..Default::default()
                }),
            };
            self.docker
                .connect_network(network, req)
                .await
                .map_err(map_err)
        })
    }

    fn disconnect_network<'a>(
        &'a self,
        id: &'a str,
        network: &'a str,
    ) -> BoxFuture<'a, RtResult<()>> {
        Box::pin(async move {
            let req = NetworkDisconnectRequest {
                container: id.to_string(),
                force: Some(true),
            };
            match self.docker.disconnect_network(network, req).await {
                // Not connected is what we wanted.
                Err(BollardError::DockerResponseServerError { message, .. })
                    if message.contains("is not connected") =>
                {
                    Ok(())
                }
                r => ignore_not_found(r),
            }
        })
    }

    fn container_events(
        &self,
        labels: &[(String, String)],
    ) -> BoxStream<'static, RtResult<ContainerEvent>> {
        // Filtered by the engine: this agent's containers, the kinds read, nothing else.
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            ),
            (
                "event".to_string(),
                ContainerEventKind::ACTIONS.map(str::to_string).to_vec(),
            ),
        ]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
        Box::pin(self.docker.events(Some(opts)).filter_map(|m| async move {
            match m {
                Ok(m) => to_event(m).map(Ok),
                Err(e) => Some(Err(map_err(e))),
            }
        }))
    }
}
