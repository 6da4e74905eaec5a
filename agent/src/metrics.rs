//! The agent's metrics (README, "Metrics"): `[metrics] textfile`, rewritten atomically every
//! `interval` for node_exporter's textfile collector, and/or `[metrics] listen`, a plain HTTP
//! `GET /metrics`. Both show [`exposition::render`] of the agent's `status` (shared with the
//! controller's requests through its one-second cache) and the journal's deploy counts.
//!
//! What is configured must work at start (the listener binds, the textfile is written once) or
//! the agent does not start; later a failed rewrite is logged and tried again at the next tick,
//! and deploys go on whatever becomes of the metrics.

pub mod exposition;
mod http;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::Agent;
use crate::agent::AGENT_VERSION;
use crate::backend::Backend;
use crate::config::{AgentConfig, MetricsConfig};
use crate::job::{blocking, lock};

/// The textfile's mode whatever the agent's umask (the unit's is 0027): node_exporter runs as
/// another user and must read it.
const TEXTFILE_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("[metrics] listen: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("[metrics] textfile: cannot write {}: {source}", path.display())]
    Textfile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The running exports; [`Exporter::stop`] ends them. Dropped without `stop` (the agent failed
/// to start after them), its tasks are aborted all the same.
#[derive(Debug, Default)]
pub struct Exporter {
    tasks: Vec<JoinHandle<()>>,
    textfile: Option<PathBuf>,
}

/// The exposition of the agent as it is now.
pub async fn render_now<B: Backend>(agent: &Agent<B>) -> String {
    let status = agent.status().await;
    let deploys = exposition::deploy_counts(lock(&agent.index).finished());
    exposition::render(&status, &deploys)
}

/// Starts what `[metrics]` asks for (nothing without it).
pub async fn start<B: Backend>(agent: &Arc<Agent<B>>) -> Result<Exporter, MetricsError> {
    let config: MetricsConfig = agent.config().metrics.clone();
    let mut exporter = Exporter::default();
    if let Some(addr) = config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Listen { addr, source })?;
        tracing::info!(%addr, "metrics: serving GET /metrics");
        let agent = agent.clone();
        exporter
            .tasks
            .push(tokio::spawn(http::serve(listener, move || {
                let agent = agent.clone();
                async move { render_now(&agent).await }
            })));
    }
    if let Some(path) = config.textfile {
        write_textfile(&path, &render_now(agent).await)?;
        tracing::info!(path = %path.display(), every = %proto::time::format_duration(config.interval), "metrics: writing the textfile");
        exporter.tasks.push(tokio::spawn(rewrite_textfile(
            agent.clone(),
            path.clone(),
            config.interval,
        )));
        exporter.textfile = Some(path);
    }
    Ok(exporter)
}

impl Exporter {
    /// Ends the exports; the textfile is left saying `deploy_agent_up 0`, so a stopped agent
    /// reads as down rather than as its last figures.
    pub async fn stop(mut self, config: &AgentConfig) {
        for task in self.tasks.drain(..) {
            task.abort();
            // Until it has really ended: a rewrite under way must not land after the last word.
            let _ = task.await;
        }
        if let Some(path) = self.textfile.take() {
            let text = exposition::render_stopped(AGENT_VERSION, &config.host, &config.env);
            if let Err(e) = write_textfile(&path, &text) {
                tracing::warn!("metrics: {e}");
            }
        }
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Rewrites the textfile every `interval`; a failure is logged once, and its end too.
async fn rewrite_textfile<B: Backend>(
    agent: Arc<Agent<B>>,
    path: PathBuf,
    interval: std::time::Duration,
) {
    let start = tokio::time::Instant::now() + interval;
    let mut tick = tokio::time::interval_at(start, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let text = render_now(&agent).await;
        match write_textfile(&path, &text) {
            Ok(()) if failing => {
                tracing::info!(path = %path.display(), "metrics: the textfile is written again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!("metrics: {e}; trying again every interval");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Replaced atomically (a temporary in the same directory, whose name node_exporter ignores,
/// renamed over it), so a scrape never reads half a file.
fn write_textfile(path: &Path, text: &str) -> Result<(), MetricsError> {
    blocking(|| deploy::durable::write_atomic_with_mode(path, text.as_bytes(), TEXTFILE_MODE))
        .map_err(|source| MetricsError::Textfile {
            path: path.to_path_buf(),
            source,
        })
}
