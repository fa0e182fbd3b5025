//! `dr-gateway`: parse the command line, then hand over to the library.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dr_gateway::app::Application;
use dr_gateway::config::ServeArgs;
use dr_gateway::{shutdown, telemetry};

/// gRPC gateway for Digital River order fulfilment.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// why: parsed once at start; boxing the flags would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (gRPC + webhook listeners).
    Serve(ServeArgs),
    /// Ask a gateway's gRPC health service whether it is SERVING (exit 0) or not (exit 1).
    HealthCheck {
        /// Gateway gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
        /// Service to ask about ("" = the whole server).
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::HealthCheck { addr, service } => health_check(addr, service).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    telemetry::init(args.log_format);
    let settings = match args.resolve(None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("dr-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("dr-gateway: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(shutdown::cancel_on_signal(app.shutdown_token()));
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dr-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn health_check(addr: SocketAddr, service: String) -> ExitCode {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let endpoint = format!("http://{addr}");
    let channel = match tonic::transport::Endpoint::from_shared(endpoint) {
        Ok(e) => e
            .connect_timeout(std::time::Duration::from_secs(3))
            .timeout(std::time::Duration::from_secs(3)),
        Err(e) => {
            eprintln!("health-check: bad address: {e}");
            return ExitCode::FAILURE;
        }
    };
    let channel = match channel.connect().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("health-check: cannot connect to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await
    {
        Ok(r)
            if r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!("NOT SERVING ({})", r.get_ref().status);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("health-check: {}", e.message());
            ExitCode::FAILURE
        }
    }
}
