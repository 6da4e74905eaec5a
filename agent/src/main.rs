//! `deploy-agent`: see the library crate `deploy_agent` for what it does.
#![forbid(unsafe_code)]

use clap::Parser;
use deploy_agent::cli::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The bridge's stdout is the data channel: it logs warnings only, and to stderr like the rest.
    let default_level = if matches!(cli.command, Command::Bridge { .. }) {
        "warn"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEPLOY_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        // Under systemd stderr goes to journald, where colour codes are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

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
