//! Binary entry point: parse the command line, set up logging, run the chosen mode.

use std::process::ExitCode;

use clap::Parser;
use dr_gateway::cli::{shutdown_signal, Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sandbox(args) => {
            dr_gateway::sandbox::run_standalone(args.into_config(), shutdown_signal()).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = ?e, "dr-gateway failed");
            ExitCode::FAILURE
        }
    }
}
