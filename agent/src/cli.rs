//! The command line of `deploy-agent`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{DEFAULT_CONFIG_PATH, DEFAULT_SOCKET};

#[derive(Debug, Parser)]
#[command(
    name = "deploy-agent",
    version,
    about = "deployctl's per-host agent: verifies signed orders and runs deploys"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Recover unfinished orders, then serve the socket until SIGTERM/SIGINT.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH, env = "DEPLOY_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Join stdin/stdout to the agent's socket (what the controller runs over SSH).
    Bridge {
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Load agent.toml and allowed_signers and report what is wrong, without starting.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH, env = "DEPLOY_AGENT_CONFIG")]
        config: PathBuf,
    },
}
