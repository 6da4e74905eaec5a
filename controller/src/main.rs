//! The `deployctl` binary: parse the command line, set up logging, run, exit with the
//! command's exit code (README "Exit codes"; usage errors are 64).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use deployctl::{ExitClass, cli::Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` print and succeed; a mistake is a usage error, said as a
        // JSON summary under `--json` so a script reading stdout sees why.
        Err(e) if e.use_stderr() => {
            let json = std::env::args().any(|a| a == "--json");
            return ExitCode::from(deployctl::usage_error(&e, json).code());
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEPLOYCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deployctl: cannot start the async runtime: {e}");
            return ExitCode::from(ExitClass::Refused.code());
        }
    };
    let exit = runtime.block_on(deployctl::run(cli));
    ExitCode::from(exit.code())
}
