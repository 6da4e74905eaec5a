//! `deploy-agent`, the daemon on every host.
//!
//! It serves a unix socket; the controller reaches it directly (`local`) or over SSH through
//! `deploy-agent bridge`. A `submit` goes through proto's acceptance checks, has its id
//! remembered durably against replay, takes the lock of every service it touches, is journaled,
//! and becomes a job — a task owned by the agent that outlives the connection — run by the
//! [`deploy`] engine; the client follows its events to the outcome and can re-attach with
//! `watch`. At start the agent recovers every order the journal shows unfinished before it
//! serves; afterwards it probes the health of what it deployed.
//!
//! Module map: [`config`] (agent.toml, allowed_signers) · [`replay`] (accepted order ids) ·
//! [`journal`] (the per-order files) · [`proposals`] (proposals waiting for approvals) · [`index`] (in-memory view of the journal) · [`locks`]
//! (one rollout per service) · [`job`] (a running order) · [`agent`] (shared state, one method
//! per request) · [`exec`] (what an exec order needs of the agent) · [`server`] (socket,
//! frames, shutdown) · [`admission`] (which connections stay open under a flood) · [`health`]
//! (the health book) · [`condition`] (the health model's verdict: crash loops, OOM kills) ·
//! [`alerts`] (`[[alerts]]`: kinds, payloads, the outbox and its delivery) ·
//! [`metrics`] (the Prometheus textfile and listener) ·
//! [`bridge`] · [`backend`] (the engine as the agent sees it) · [`cli`]. Every file the agent
//! keeps is written through [`deploy::durable`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod agent;
pub mod alerts;
pub mod backend;
pub mod bridge;
pub mod cli;
pub mod condition;
pub mod config;
pub mod exec;
pub mod health;
pub mod host_files;
pub mod host_health;
pub mod index;
pub mod job;
pub mod journal;
pub mod locks;
pub mod metrics;
pub mod proposals;
pub mod replay;
pub mod server;

use std::path::Path;

pub use agent::Agent;
pub use config::AgentConfig;

/// Why the agent stopped or refused to start; [`Error::exit_code`] maps it for the shell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Trust(String),
    #[error("cannot reach the Docker engine: {0}")]
    Engine(String),
    #[error("cannot open the state directory: {0}")]
    State(String),
    #[error(transparent)]
    Socket(#[from] server::SocketError),
    #[error(transparent)]
    Bridge(#[from] bridge::BridgeError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl Error {
    /// sysexits(3): 78 configuration, 69 a service (Docker, the agent) unavailable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Trust(_) => 78,
            Error::Engine(_) | Error::Bridge(bridge::BridgeError::Connect { .. }) => 69,
            _ => 1,
        }
    }
}

impl From<agent::OpenError> for Error {
    fn from(e: agent::OpenError) -> Error {
        match e {
            agent::OpenError::AllowedSigners(m) => Error::Trust(m),
            other => Error::State(other.to_string()),
        }
    }
}

/// `deploy-agent run`: load the config, connect to Docker, recover, serve until SIGTERM/SIGINT.
pub async fn run(config_path: &Path) -> Result<(), Error> {
    let config = AgentConfig::load(config_path)?;
    let identity = deploy::Identity {
        host: config.host.clone(),
        env: config.env.clone(),
        container_prefix: config.container_prefix.clone(),
    };
    let mut engine = deploy::Engine::connect(identity)
        .await
        .map_err(|e| Error::Engine(e.to_string()))?
        // Compose override files must survive a restart, so recovery can read them.
        .with_state_dir(config.state_dir.join("engine"));
    if let Some(path) = &config.docker_config {
        engine = engine.with_docker_config(path);
    }
    serve(config, engine).await
}

/// Everything of `run` after the engine exists; the agent's own tests call it with a stand-in.
pub async fn serve<B: backend::Backend>(config: AgentConfig, backend: B) -> Result<(), Error> {
    let socket = config.socket.clone();
    let group = config.socket_group.clone();
    let agent = Agent::open(config, backend)?;
    agent.alerts().started();
    let recovered = agent.recover_unfinished().await;
    if !recovered.is_empty() {
        tracing::info!(orders = recovered.len(), "recovery done");
    }
    let exporter = metrics::start(&agent).await?;
    let listener = server::bind(&socket, group.as_deref())?;
    let shutdown = shutdown_signal().map_err(Error::Signals)?;
    server::serve(agent.clone(), listener, &socket, shutdown).await;
    exporter.stop(agent.config()).await;
    Ok(())
}

/// Resolves at the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// `[policy]` as check-config shows it: what any order may ask of this host.
fn policy_summary(p: &proto::policy::HostPolicy) -> String {
    let list = |items: &[String], none: &str| {
        if items.is_empty() {
            none.to_string()
        } else {
            items.join(", ")
        }
    };
    let ports: Vec<String> = p
        .ports
        .iter()
        .map(|r| format!("{}-{}", r.start(), r.end()))
        .collect();
    let apps: Vec<String> = p
        .apps
        .iter()
        .map(|(who, apps)| format!("{who} → {}", apps.join(" ")))
        .collect();
    format!(
        "\n  policy: volumes {} · networks {} · files {} · ports {} · max_validity {} · apps {} · \
         exec {} · proxies {}",
        list(&p.volumes, "named only"),
        p.networks
            .as_deref()
            .map_or("any user network".to_string(), |n| list(n, "none")),
        list(&p.files, "none"),
        ports.join(","),
        proto::time::format_duration(p.max_validity),
        list(&apps, "any signer"),
        if p.exec { "allowed" } else { "denied" },
        list(&p.proxies, "none"),
    )
}

/// `[metrics]` as check-config shows it.
fn metrics_summary(m: &config::MetricsConfig) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(path) = &m.textfile {
        parts.push(format!(
            "textfile {} every {}",
            path.display(),
            proto::time::format_duration(m.interval)
        ));
    }
    if let Some(addr) = m.listen {
        parts.push(format!("listen http://{addr}/metrics"));
    }
    (!parts.is_empty()).then(|| format!("\n  metrics: {}", parts.join(" · ")))
}

/// `deploy-agent check-config`: what `run` would load, reported without starting.
pub fn check_config(config_path: &Path) -> Result<String, Error> {
    let config = AgentConfig::load(config_path)?;
    let signers = config
        .load_allowed_signers()
        .map_err(|e| Error::Trust(e.to_string()))?;
    let mut report = format!(
        "{}: ok\n  host {} · env {}\n  socket {}{}\n  state_dir {}\n  allowed_signers {} ({} keys)\n  allowed_images {}\n  \
         health_interval {}\n  max_connections {} · frame_timeout {} · idle_timeout {}",
        config_path.display(),
        config.host,
        config.env,
        config.socket.display(),
        config
            .socket_group
            .as_deref()
            .map(|g| format!(" (group {g})"))
            .unwrap_or_default(),
        config.state_dir.display(),
        config.allowed_signers.display(),
        signers.len(),
        config.allowed_images.join(", "),
        proto::time::format_duration(config.health_interval),
        config.limits.max_connections,
        proto::time::format_duration(config.limits.frame_timeout),
        proto::time::format_duration(config.limits.idle_timeout),
    );
    report.push_str(&match &config.docker_config {
        Some(path) => format!("\n  docker_config {}", path.display()),
        None => "\n  docker_config: the Docker CLI's ($DOCKER_CONFIG/config.json, else \
                 ~/.docker/config.json)"
            .to_string(),
    });
    let host_keys = config.load_host_keys().map_err(Error::Trust)?;
    report.push_str(&format!(
        "\n  host_keys {}",
        if host_keys.is_empty() {
            "none found: orders over SSH (bound to a host key) will be refused".to_string()
        } else {
            host_keys.join(", ")
        }
    ));
    report.push_str(&policy_summary(&config.policy));
    report.push_str(&config::release_policy_summary(
        &config.release_policy,
        proto::Timestamp::now(),
    ));
    if let Some(a) = &config.approvals {
        report.push_str(&format!(
            "\n  approvals: {} of {} for every deploy and rollback",
            a.required,
            a.principals.join(", ")
        ));
    }
    for target in &config.alerts {
        report.push_str(&format!("\n  alerts: {}", target.summary()));
    }
    if let Some(m) = metrics_summary(&config.metrics) {
        report.push_str(&m);
    }
    if signers.is_empty() {
        report.push_str("\n  warning: allowed_signers trusts no key; every order will be refused");
    }
    for note in signers.notes() {
        report.push_str(&format!("\n  note: {note}"));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_shows_the_release_policy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("allowed_signers"), "").unwrap();
        let config = dir.path().join("agent.toml");
        let base = "host = \"h\"\nenv = \"prod\"\nallowed_signers = \"allowed_signers\"\n\
                    allowed_images = [\"r/*\"]\nhost_keys = []\n";
        std::fs::write(&config, base).unwrap();
        let report = check_config(&config).unwrap();
        assert!(
            report.contains("\n  freeze: none\n  refs: any tag (no [refs])"),
            "{report}"
        );
        std::fs::write(
            &config,
            format!(
                "{base}[[freeze]]\nweekly = {{ from = \"Fri 16:00\", to = \"Mon 08:00\" }}\n\
                 tz = \"Europe/Amsterdam\"\nreason = \"weekend\"\n\
                 [refs]\nallow = [\"calver\"]\n"
            ),
        )
        .unwrap();
        let report = check_config(&config).unwrap();
        assert!(
            report.contains(
                "\n  freeze:\n    \"weekend\" (weekly Fri 16:00 to Mon 08:00, Europe/Amsterdam)"
            ) && report
                .contains("\n  refs: allow calver · pre-releases refused · ephemeral-* refused"),
            "{report}"
        );
        std::fs::write(
            &config,
            format!(
                "{base}[[alerts]]\nwebhook = \"https://hooks.example.com/T0/secret\"\n\
                 format = \"slack\"\non = [\"crash-loop\"]\n"
            ),
        )
        .unwrap();
        let report = check_config(&config).unwrap();
        assert!(
            report.contains("\n  alerts: https://hooks.example.com/… (slack) on crash-loop")
                && !report.contains("secret"),
            "{report}"
        );
        std::fs::write(&config, format!("{base}[refs]\nallow = [\"semver2\"]\n")).unwrap();
        let err = check_config(&config).unwrap_err().to_string();
        assert!(err.contains("[refs] allow: \"semver2\""), "{err}");
    }
}
