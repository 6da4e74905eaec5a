//! The `deployctl` binary: parse the command line, set up logging, run, exit with the
//! command's exit code (README "Exit codes"; usage errors are 64).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use deployctl::{ExitClass, cli::Cli};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(ExitClass::Usage.code())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
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
