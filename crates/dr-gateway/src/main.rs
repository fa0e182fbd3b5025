//! `dr-gateway`: parse the command line, then hand over to the library.
//!
//! Exit status: 0 after a clean shutdown, 2 for settings that cannot work (clap's
//! own parse errors included), 1 for anything that fails at run time.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dr_gateway::app::Application;
use dr_gateway::cli::{Cli, Command, HealthCheckArgs};
use dr_gateway::config::ServeArgs;
use dr_gateway::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        #[cfg(feature = "sandbox")]
        Command::Sandbox(args) => run_sandbox(args).await,
        Command::HealthCheck(args) => health_check(args).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let telemetry = telemetry::init(args.log_format);
    let code = if args.sandbox {
        serve_with_sandbox(args).await
    } else {
        serve_upstream(args).await
    };
    // why: spans still queued for export would be lost at exit.
    telemetry.shutdown().await;
    code
}

async fn serve_upstream(args: ServeArgs) -> ExitCode {
    let settings = match args.resolve(None) {
        Ok(s) => s,
        Err(e) => return fail_with(e, 2),
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => return fail(e),
    };
    run(app).await
}

async fn run(app: Application) -> ExitCode {
    tokio::spawn(shutdown::cancel_on_signal(app.shutdown_token()));
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

#[cfg(feature = "sandbox")]
async fn serve_with_sandbox(args: ServeArgs) -> ExitCode {
    use dr_gateway::embedded_sandbox::EmbeddedSandbox;
    use dr_gateway::embedded_sandbox::EmbeddedSandboxError;
    let (mut sandbox, settings) = match EmbeddedSandbox::start(&args).await {
        Ok(started) => started,
        Err(e @ EmbeddedSandboxError::Config(_)) => return fail_with(e, 2),
        Err(e) => return fail(e),
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => return fail(e),
    };
    sandbox.point_webhooks_at(app.http_addr());
    let code = run(app).await;
    sandbox.shutdown().await;
    code
}

#[cfg(not(feature = "sandbox"))]
async fn serve_with_sandbox(_args: ServeArgs) -> ExitCode {
    fail_with(
        "--sandbox: this dr-gateway was built without the Digital River sandbox \
         (cargo feature `sandbox`); run a build with default features for the sandbox, \
         or set --dr-base-url and a DR API key",
        2,
    )
}

#[cfg(feature = "sandbox")]
async fn run_sandbox(args: dr_gateway::cli::SandboxArgs) -> ExitCode {
    let _telemetry = telemetry::init(dr_gateway::config::LogFormat::Pretty);
    let token = tokio_util::sync::CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    let stop = async move { token.cancelled().await };
    match dr_sandbox::run_standalone(args.into_config(), stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn health_check(args: HealthCheckArgs) -> ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr)) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(3)),
        Err(e) => return fail_with(format!("--addr {}: not host:port ({e})", args.addr), 2),
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot connect to {}: {e}", args.addr)),
    };
    let request = HealthCheckRequest {
        service: args.service,
    };
    match HealthClient::new(channel).check(request).await {
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!("NOT_SERVING ({})", r.get_ref().status);
            ExitCode::FAILURE
        }
        Err(e) => fail(format!("health check failed: {}", e.message())),
    }
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    fail_with(error, 1)
}

fn fail_with(error: impl std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("dr-gateway: {error}");
    ExitCode::from(code)
}
