//! `deploy-agent`: see the library crate `deploy_agent` for what it does.
#![forbid(unsafe_code)]

use clap::Parser;
use deploy_agent::cli::{Cli, Command};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

// Two workers whatever the host's core count: the agent waits on Docker, sockets and disks, and
// each worker thread costs resident memory (README, "Performance").
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The bridge's stdout is the data channel: it logs warnings only, and to stderr like the rest.
    let default_level = if matches!(cli.command, Command::Bridge { .. }) {
        "warn"
    } else {
        "info"
    };
    init_logging(default_level);

    let result = match cli.command {
        Command::Run { config } => deploy_agent::run(&config).await,
        Command::CheckConfig { config } => {
            deploy_agent::check_config(&config).map(|report| println!("{report}"))
        }
        Command::Bridge { socket } => {
            let result = deploy_agent::bridge::bridge(&socket)
                .await
                .map_err(Into::into);
            // tokio's stdin reader may still sit in a blocking read; do not wait for it.
            std::process::exit(exit_code(&result));
        }
    };
    std::process::ExitCode::from(u8::try_from(exit_code(&result)).unwrap_or(1))
}

fn exit_code(result: &Result<(), deploy_agent::Error>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("deploy-agent: {e}");
            e.exit_code()
        }
    }
}

/// Logs to stderr at `DEPLOY_AGENT_LOG`, else at `default_level`.
fn init_logging(default_level: &str) {
    // `Targets` (`info,deploy=debug`) rather than `EnvFilter`: the agent needs no span or field
    // filters, and EnvFilter links a regex engine into every host's resident binary.
    let configured = std::env::var("DEPLOY_AGENT_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let parsed = configured.as_deref().map(str::parse::<Targets>);
    let filter = match &parsed {
        Some(Ok(targets)) => targets.clone(),
        _ => default_level.parse().unwrap_or_default(),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                // Under systemd stderr goes to journald, where colour codes are noise.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .with(filter)
        .init();
    if let (Some(value), Some(Err(e))) = (&configured, parsed) {
        tracing::warn!("DEPLOY_AGENT_LOG={value:?} is no filter ({e}); logging at {default_level}");
    }
}
