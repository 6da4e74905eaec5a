//! Real `deploy-agent` processes for end-to-end tests, and a client of their socket: the
//! controller's [`AgentStream`], so tests speak the protocol exactly as `deployctl` does.
//!
//! [`AgentProc::start`] writes an `agent.toml`, an `allowed_signers` trusting a fresh test key
//! ([`TestKey`]) and runs the built `deploy-agent` binary with a unique host, env and
//! container prefix, so tests in parallel never touch each other's containers. It can be
//! killed with SIGKILL ([`AgentProc::kill9`]) and restarted on the same state directory; on drop
//! it kills the process and removes every container labelled with its host.
//!
//! The binary is looked up next to the test executable (`target/<profile>/deploy-agent`);
//! `cargo nextest run --workspace` (or `cargo build -p deploy-agent`) builds it. Set
//! `DEPLOY_AGENT_BIN` to use another one.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use deployctl::signer::Signer;
use deployctl::transport::{self, AgentStream, Peer, TransportError};
use proto::time::Timestamp;
use proto::wire::{
    AgentStatus, HistoryEntry, JobEvent, Outcome, Phase, Refusal, Reply, Request, ServiceLogs,
    ServiceStatus, SignedOrder,
};
use proto::{ImageRef, Order, ServiceSpec};

use crate::docker::{Cleanup, unique_name};
use crate::error::{Error, IoContext, Result};
use crate::wait::wait_until;

/// How long an agent may take from spawn to answering `hello` (recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest silence between two replies before the client gives up: a health wait with a
/// generous deadline emits nothing for a while.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(180);

/// The built `deploy-agent` binary: `$DEPLOY_AGENT_BIN`, else next to the test executable.
pub fn agent_binary() -> Result<PathBuf> {
    crate::command::workspace_binary("deploy-agent", "DEPLOY_AGENT_BIN")
}

/// An ed25519 signing key trusted by the agents of a test.
pub struct TestKey {
    _dir: tempfile::TempDir,
    pub private_path: PathBuf,
    /// The allowed_signers principal (also the key's comment).
    pub principal: String,
    /// `principal namespaces="deployctl-order" ssh-ed25519 AAAA…`
    pub allowed_signers_line: String,
    signer: Signer,
}

impl std::fmt::Debug for TestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestKey")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl TestKey {
    pub fn generate(principal: &str) -> Result<TestKey> {
        let dir = tempfile::Builder::new()
            .prefix("deployctl-key-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let generated = deployctl::signer::generate_key_files(&dir.path().join("key"), principal)
            .map_err(|e| Error::Unexpected(format!("generating a test key: {e}")))?;
        let signer = Signer::from_key_file(&generated.private_path)
            .map_err(|e| Error::Unexpected(format!("loading the test key: {e}")))?;
        Ok(TestKey {
            _dir: dir,
            private_path: generated.private_path,
            principal: principal.to_string(),
            allowed_signers_line: generated.allowed_signers_line,
            signer,
        })
    }

    /// `SHA256:…`
    pub fn fingerprint(&self) -> String {
        self.signer.fingerprint()
    }

    pub async fn sign(&self, order: &Order) -> Result<SignedOrder> {
        self.signer
            .sign_order(order)
            .await
            .map_err(|e| Error::Unexpected(format!("signing an order: {e}")))
    }

    /// Signs arbitrary bytes as an order payload (for malformed-order tests).
    pub async fn sign_payload(&self, payload: &str) -> Result<SignedOrder> {
        let signature = self
            .signer
            .sign(payload.as_bytes())
            .await
            .map_err(|e| Error::Unexpected(format!("signing: {e}")))?;
        Ok(SignedOrder {
            payload: payload.to_string(),
            signature,
        })
    }
}

/// What an agent is, before it starts. [`AgentSetup::new`] picks unique names.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    pub host: String,
    pub env: String,
    pub container_prefix: String,
    pub allowed_images: Vec<String>,
    pub health_interval: Duration,
    pub shutdown_grace: Duration,
    /// allowed_signers lines besides the agent's own test key.
    pub extra_signers: Vec<String>,
    /// The body of `[policy]`. By default host paths and files anywhere under the temp dir,
    /// where the tests keep their volumes, env files and compose files.
    pub policy: String,
    /// `host_keys`: the public key files of the sshd in front of the agent (none by default:
    /// a local socket's orders carry no host key).
    pub host_keys: Vec<PathBuf>,
    /// `max_connections`, `frame_timeout`, `idle_timeout`; the agent's defaults when `None`.
    pub max_connections: Option<usize>,
    pub frame_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    /// `docker_config`: the Docker client config its pulls take registry credentials from.
    pub docker_config: Option<PathBuf>,
    /// Variables set in the agent's environment (e.g. a `PATH` finding a credential helper,
    /// or libfaketime's, to put its clock off).
    pub env_vars: Vec<(String, String)>,
    /// The body of `[metrics]` (`textfile`, `listen`, …); no table when `None`.
    pub metrics: Option<String>,
    /// `[[alerts]]` entries (none by default).
    pub alerts: Vec<AlertsSetup>,
}

/// One `[[alerts]]` of agent.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsSetup {
    pub webhook: String,
    /// `json`, `slack` or `discord`.
    pub format: String,
    /// The kinds sent; empty: the key is left out (every kind).
    pub on: Vec<String>,
}

impl AlertsSetup {
    /// Every kind, in the `json` format, to `webhook`.
    pub fn json(webhook: &str) -> AlertsSetup {
        AlertsSetup {
            webhook: webhook.to_string(),
            format: "json".into(),
            on: Vec::new(),
        }
    }

    fn toml(&self) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut t = format!(
            "\n[[alerts]]\nwebhook = {}\nformat = {}\n",
            q(&self.webhook),
            q(&self.format)
        );
        if !self.on.is_empty() {
            let on: Vec<String> = self.on.iter().map(|k| q(k)).collect();
            t.push_str(&format!("on = [{}]\n", on.join(", ")));
        }
        t
    }
}

/// libfaketime, from Debian's `faketime`: preloaded, it moves a process's wall clock.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

impl AgentSetup {
    /// A host named `host-<unique>` in env `e2e`, its containers prefixed `<unique>-`.
    pub fn new(allowed_images: &[&str]) -> AgentSetup {
        let host = unique_name("host");
        let container_prefix = format!("{}-", host.trim_start_matches("host-"));
        AgentSetup {
            host,
            env: "e2e".into(),
            container_prefix,
            allowed_images: allowed_images.iter().map(|s| s.to_string()).collect(),
            health_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(60),
            extra_signers: Vec::new(),
            policy: {
                let tmp = serde_json::to_string(&std::env::temp_dir().display().to_string())
                    .unwrap_or_default();
                format!("volumes = [{tmp}]\nfiles = [{tmp}]\n")
            },
            host_keys: Vec::new(),
            max_connections: None,
            frame_timeout: None,
            idle_timeout: None,
            docker_config: None,
            env_vars: Vec::new(),
            alerts: Vec::new(),
            metrics: None,
        }
    }

    /// The agent's wall clock `offset` off (`+5m`, `-90s`; libfaketime's syntax); its timers
    /// keep real time.
    pub fn clock_off(&mut self, offset: &str) {
        self.env_vars.extend([
            ("LD_PRELOAD".to_string(), LIBFAKETIME.to_string()),
            ("FAKETIME".to_string(), offset.to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ]);
    }

    fn toml(&self, dir: &Path) -> String {
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let ms = |d: Duration| q(&format!("{}ms", d.as_millis()));
        let images: Vec<String> = self.allowed_images.iter().map(|i| q(i)).collect();
        // Optional top-level keys, before any table.
        let mut keys = String::new();
        if let Some(n) = self.max_connections {
            keys.push_str(&format!("max_connections = {n}\n"));
        }
        if let Some(d) = self.frame_timeout {
            keys.push_str(&format!("frame_timeout = {}\n", ms(d)));
        }
        if let Some(d) = self.idle_timeout {
            keys.push_str(&format!("idle_timeout = {}\n", ms(d)));
        }
        if let Some(p) = &self.docker_config {
            keys.push_str(&format!(
                "docker_config = {}\n",
                q(&p.display().to_string())
            ));
        }
        let host_keys: Vec<String> = self
            .host_keys
            .iter()
            .map(|k| q(&k.display().to_string()))
            .collect();
        let alerts: String = self.alerts.iter().map(AlertsSetup::toml).collect();
        let metrics = self
            .metrics
            .as_ref()
            .map(|body| format!("\n[metrics]\n{body}\n"))
            .unwrap_or_default();
        keys + &format!(
            "host = {}\nenv = {}\nsocket = {}\nstate_dir = {}\nallowed_signers = {}\nallowed_images = [{}]\n\
                 container_prefix = {}\nhealth_interval = {}\nshutdown_grace = {}\nhost_keys = [{}]\n\n[policy]\n{}",
            q(&self.host),
            q(&self.env),
            q(&dir.join("agent.sock").display().to_string()),
            q(&dir.join("state").display().to_string()),
            q(&dir.join("allowed_signers").display().to_string()),
            images.join(", "),
            q(&self.container_prefix),
            ms(self.health_interval),
            ms(self.shutdown_grace),
            host_keys.join(", "),
            self.policy,
        ) + "\n"
            + &alerts
            + &metrics
    }
}

/// A running `deploy-agent run` (or one that was killed and can be restarted).
pub struct AgentProc {
    setup: AgentSetup,
    pub key: TestKey,
    child: Option<Child>,
    dir: tempfile::TempDir,
    log_path: PathBuf,
    /// Removes the agent's containers (and whatever a test adds) after the process is killed:
    /// fields drop after `Drop::drop` ran.
    cleanup: Cleanup,
}

impl std::fmt::Debug for AgentProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProc")
            .field("host", &self.setup.host)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl AgentProc {
    /// Writes the agent's files, starts it and waits until it answers `hello`.
    pub fn start(setup: AgentSetup) -> Result<AgentProc> {
        let binary = agent_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("deployctl-agent-")
            .tempdir()
            .ctx(|| "creating a temp dir".into())?;
        let key = TestKey::generate("ci@deployctl-test")?;
        let mut signers = vec![key.allowed_signers_line.clone()];
        signers.extend(setup.extra_signers.iter().cloned());
        let signers_path = dir.path().join("allowed_signers");
        std::fs::write(&signers_path, signers.join("\n") + "\n")
            .ctx(|| format!("writing {}", signers_path.display()))?;
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, setup.toml(dir.path()))
            .ctx(|| format!("writing {}", config_path.display()))?;
        let cleanup = Cleanup::label(proto::order::labels::HOST, &setup.host);
        let mut agent = AgentProc {
            log_path: dir.path().join("agent.log"),
            setup,
            key,
            child: None,
            dir,
            cleanup,
        };
        agent.spawn(&binary)?;
        Ok(agent)
    }

    fn spawn(&mut self, binary: &Path) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .ctx(|| format!("opening {}", self.log_path.display()))?;
        let log2 = log.try_clone().ctx(|| "cloning a file handle".into())?;
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .env("DEPLOY_AGENT_LOG", "info,deploy=debug")
            .envs(self.setup.env_vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .ctx(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket();
        let started = Instant::now();
        let ready = wait_until("the agent to answer hello", READY_TIMEOUT, || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Ok(Err(format!("deploy-agent exited ({status})")));
            }
            hello_once(&socket)
        })?;
        ready.map_err(|why| {
            Error::Unexpected(format!(
                "{why} after {:?}; its log:\n{}",
                started.elapsed(),
                self.log()
            ))
        })
    }

    /// SIGKILL, as a crash would: nothing of the agent gets to run.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ctx(|| "killing deploy-agent".into())?;
            child.wait().ctx(|| "reaping deploy-agent".into())?;
        }
        Ok(())
    }

    /// SIGTERM and wait for the exit (the agent lets running jobs finish first).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Unexpected("the agent is not running".into()));
        };
        crate::command::run(Command::new("kill").args(["-TERM", &child.id().to_string()]))?;
        let status = wait_until(
            "deploy-agent to exit after SIGTERM",
            timeout,
            || match child.try_wait() {
                Ok(Some(status)) => Ok(status),
                Ok(None) => Err("still running".into()),
                Err(e) => Err(e.to_string()),
            },
        );
        if status.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    }

    /// Starts the agent again on the same files (killing it first if it still runs); returns
    /// once it serves, i.e. after its recovery.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn(&agent_binary()?)
    }

    /// Replaces the body of `[policy]` in agent.toml and restarts the agent to load it.
    pub fn set_policy(&mut self, policy: &str) -> Result<()> {
        self.setup.policy = policy.to_string();
        let config_path = self.config_path();
        std::fs::write(&config_path, self.setup.toml(self.dir.path()))
            .ctx(|| format!("writing {}", config_path.display()))?;
        self.restart()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Everything the agent logged (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn host(&self) -> &str {
        &self.setup.host
    }

    pub fn env(&self) -> &str {
        &self.setup.env
    }

    pub fn container_prefix(&self) -> &str {
        &self.setup.container_prefix
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("agent.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `<prefix><app>-<env>-<service>`, the serving container of a service.
    pub fn container_name(&self, app: &str, service: &str) -> String {
        proto::order::container_name(&self.setup.container_prefix, app, &self.setup.env, service)
    }

    /// More things to remove when the agent is dropped (networks, probe containers, compose
    /// projects), after its containers.
    pub fn cleanup(&mut self) -> &mut Cleanup {
        &mut self.cleanup
    }

    pub async fn client(&self) -> Result<AgentClient> {
        AgentClient::connect(&self.socket()).await
    }

    /// What `status` says of one service, over a fresh connection.
    pub async fn service_status(&self, service: &str) -> Result<ServiceStatus> {
        let status = self.client().await?.status().await?;
        status
            .services
            .into_iter()
            .find(|s| s.service == service)
            .ok_or_else(|| Error::Unexpected(format!("no service {service} in status")))
    }

    /// A deploy order for this agent: one service `web` with default settings, no migration,
    /// valid for ten minutes. Tests adjust the public fields.
    pub fn order(&self, app: &str, image: &ImageRef, reference: &str) -> Order {
        let now = Timestamp::now();
        let web = ServiceSpec {
            kind: Default::default(),
            ports: Vec::new(),
            env_file: None,
            volumes: Vec::new(),
            network: None,
            command: None,
            strategy: Default::default(),
            health: Default::default(),
            compose_file: None,
            compose_service: None,
            image: None,
            verify: None,
            proxy: None,
        };
        Order {
            order_id: proto::order::new_id(),
            rollout_id: proto::order::new_id(),
            env: self.setup.env.clone(),
            host: self.setup.host.clone(),
            host_key: None,
            issued_at: now,
            not_after: now.plus(proto::order::DEFAULT_VALIDITY),
            issued_by: "e2e@deployctl-test".into(),
            action: proto::Action::Deploy,
            image: image.clone(),
            images: Default::default(),
            migrate_image: None,
            revision: None,
            reference: reference.to_string(),
            refs: Default::default(),
            tags: Default::default(),
            run_migration: false,
            rerun_migration: false,
            app: app.to_string(),
            services: BTreeMap::from([("web".to_string(), web)]),
            migrate: None,
            exec: None,
            maintenance: None,
            proposal: None,
            override_freeze: None,
        }
    }

    /// Signs with the agent's trusted key.
    pub async fn sign(&self, order: &Order) -> Result<SignedOrder> {
        self.key.sign(order).await
    }

    /// The journal file of one order, parsed.
    pub fn journal(&self, order_id: &str) -> Result<serde_json::Value> {
        let path = self
            .state_dir()
            .join("orders")
            .join(format!("{order_id}.json"));
        let text = std::fs::read_to_string(&path).ctx(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Unexpected(format!("{}: {e}", path.display())))
    }

    /// Ids of every order in the journal.
    pub fn journal_ids(&self) -> Result<Vec<String>> {
        let dir = self.state_dir().join("orders");
        let mut ids: Vec<String> = std::fs::read_dir(&dir)
            .ctx(|| format!("listing {}", dir.display()))?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .filter(|n| !n.starts_with('.'))
            .collect();
        ids.sort();
        Ok(ids)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `cleanup` drops next and removes the containers.
    }
}

/// One `hello`, on a thread of its own: callers may be on a runtime's thread, where blocking on
/// another runtime panics. Ok(Ok) when the agent answers as it should, Ok(Err) when it answers
/// wrongly, Err while it does not answer yet.
fn hello_once(socket: &Path) -> std::result::Result<std::result::Result<(), String>, String> {
    let attempt = || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting a runtime: {e}"))?;
        runtime.block_on(async {
            let hello = async {
                let mut stream = AgentStream::unix(socket).await?;
                stream.hello("harness").await
            };
            match tokio::time::timeout(Duration::from_secs(5), hello).await {
                Ok(Ok(_)) => Ok(Ok(())),
                Ok(Err(e @ (TransportError::Unreachable(_) | TransportError::Closed(_)))) => {
                    Err(e.to_string())
                }
                Ok(Err(e)) => Ok(Err(format!("unexpected answer to hello: {e}"))),
                Err(_) => Err("no answer to hello within 5s".into()),
            }
        })
    };
    std::thread::scope(|s| s.spawn(attempt).join())
        .unwrap_or_else(|_| Err("the hello thread panicked".into()))
}

/// How a job's stream ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobEnd {
    Outcome(Outcome),
    Refused(Refusal),
    /// An error reply instead of the job (an unknown order id, say).
    Error(String),
    /// The connection was lost before an outcome, or the agent stayed silent for
    /// [`REPLY_TIMEOUT`].
    Closed(String),
    /// The reader stopped on request ([`AgentClient::submit_until`]); the job goes on.
    Detached,
}

/// The events of a job as a client saw them, and how the stream ended.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStream {
    pub events: Vec<JobEvent>,
    pub end: JobEnd,
}

impl JobStream {
    pub fn outcome(&self) -> Result<&Outcome> {
        match &self.end {
            JobEnd::Outcome(o) => Ok(o),
            other => Err(Error::Unexpected(format!(
                "expected an outcome, the stream ended with {other:?}; events: {:#?}",
                self.events
            ))),
        }
    }

    pub fn refusal(&self) -> Result<&Refusal> {
        match &self.end {
            JobEnd::Refused(r) => Ok(r),
            other => Err(Error::Unexpected(format!(
                "expected a refusal, the stream ended with {other:?}"
            ))),
        }
    }

    pub fn phases(&self) -> Vec<Phase> {
        self.events.iter().map(|e| e.phase).collect()
    }

    /// The events, one per line, for assertion messages.
    pub fn describe(&self) -> String {
        self.events
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}: {}",
                    e.at,
                    e.phase,
                    e.service.as_deref().unwrap_or("-"),
                    e.message
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A client of the agent's socket: the controller's own [`AgentStream`], with the harness's
/// errors, a limit on silence, and a job's events gathered into a [`JobStream`].
pub struct AgentClient {
    stream: AgentStream,
    /// Who answered `hello`.
    pub peer: Peer,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("host", &self.peer.host)
            .finish_non_exhaustive()
    }
}

/// A transport error as the harness's, saying what was being asked.
fn failed(what: &str) -> impl FnOnce(TransportError) -> Error + '_ {
    move |e| Error::Unexpected(format!("{what}: {e}"))
}

impl AgentClient {
    /// Connects and exchanges `hello`.
    pub async fn connect(socket: &Path) -> Result<AgentClient> {
        let mut stream = AgentStream::unix(socket)
            .await
            .map_err(failed("connecting"))?
            .with_silence_limit(REPLY_TIMEOUT);
        let peer = stream
            .hello("deployctl-e2e")
            .await
            .map_err(failed("hello"))?;
        Ok(AgentClient { stream, peer })
    }

    pub async fn send(&mut self, request: &Request) -> Result<()> {
        self.stream
            .send(request)
            .await
            .map_err(failed(&format!("sending {request:?}")))
    }

    /// The next reply; `None` when the agent closed the connection.
    pub async fn next_reply(&mut self) -> Result<Option<Reply>> {
        self.stream
            .next_reply()
            .await
            .map_err(failed("reading a reply"))
    }

    /// Submits and follows the job to its end.
    pub async fn submit(&mut self, order: SignedOrder) -> Result<JobStream> {
        self.submit_until(order, |_| false).await
    }

    /// Submits and follows the job until `stop` says so on an event (then [`JobEnd::Detached`])
    /// or the job ends.
    pub async fn submit_until(
        &mut self,
        order: SignedOrder,
        stop: impl FnMut(&JobEvent) -> bool,
    ) -> Result<JobStream> {
        self.send(&Request::Submit { order }).await?;
        self.read_job(stop).await
    }

    /// Re-attaches to an order: its journaled events, then live ones, to the outcome.
    pub async fn watch(&mut self, order_id: &str) -> Result<JobStream> {
        self.send(&Request::Watch {
            order_id: order_id.to_string(),
        })
        .await?;
        self.read_job(|_| false).await
    }

    /// Reads a job's replies until its end, or until `stop` returns true on an event.
    pub async fn read_job(&mut self, mut stop: impl FnMut(&JobEvent) -> bool) -> Result<JobStream> {
        let mut events = Vec::new();
        let followed = self
            .stream
            .follow(|event| {
                let done = stop(&event);
                events.push(event);
                if done {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
        let end = match followed {
            Ok(ControlFlow::Continue(transport::JobEnd::Outcome(outcome))) => {
                JobEnd::Outcome(outcome)
            }
            Ok(ControlFlow::Continue(transport::JobEnd::Refused(refusal))) => {
                JobEnd::Refused(refusal)
            }
            Ok(ControlFlow::Break(())) => JobEnd::Detached,
            Err(TransportError::Agent(message)) => JobEnd::Error(message),
            Err(TransportError::Closed(why)) => JobEnd::Closed(why),
            Err(e) => return Err(failed("reading a job's stream")(e)),
        };
        Ok(JobStream { events, end })
    }

    pub async fn status(&mut self) -> Result<AgentStatus> {
        self.stream.status().await.map_err(failed("status"))
    }

    pub async fn history(&mut self, limit: usize) -> Result<Vec<HistoryEntry>> {
        self.stream.history(limit).await.map_err(failed("history"))
    }

    pub async fn logs(&mut self, service: Option<&str>, lines: usize) -> Result<Vec<ServiceLogs>> {
        self.stream
            .logs(service, lines)
            .await
            .map_err(failed("logs"))
    }
}

/// The source of the in-network probe used by the start-first test.
const NETPROBE_SOURCE: &str = include_str!("../images/netprobe.rs");

/// A `FROM scratch` image running `netprobe NAME PORT PATH INTERVAL_MS` (see
/// `tests/images/netprobe.rs`): a client inside a Docker network that resolves a service by its
/// network alias on every request. Built with plain `rustc` once per content; returns its tag.
pub fn netprobe_image() -> Result<String> {
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(NETPROBE_SOURCE.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let tag = format!("deployctl-netprobe:{hash}");
    if crate::docker::docker(&["image", "inspect", "--format", "{{.Id}}", &tag]).is_ok() {
        return Ok(tag);
    }
    let dir = tempfile::Builder::new()
        .prefix("netprobe-")
        .tempdir()
        .ctx(|| "creating a temp dir".into())?;
    let source = dir.path().join("netprobe.rs");
    std::fs::write(&source, NETPROBE_SOURCE).ctx(|| format!("writing {}", source.display()))?;
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    crate::command::run_with_timeout(
        Command::new(rustc)
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .arg("-o")
            .arg(dir.path().join("netprobe"))
            .arg(&source),
        Duration::from_secs(300),
    )?;
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY netprobe /netprobe\nENTRYPOINT [\"/netprobe\"]\n",
    )
    .ctx(|| "writing the probe's Dockerfile".into())?;
    crate::command::run_with_timeout(
        Command::new("docker")
            .args(["build", "-q", "-t", &tag])
            .arg(dir.path()),
        Duration::from_secs(300),
    )?;
    Ok(tag)
}
