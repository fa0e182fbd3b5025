//! `dr-gateway`: parse the command line, then hand over to the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dr_gateway::app::Application;
use dr_gateway::cli::{Cli, Command, HealthCheckArgs, SandboxArgs};
use dr_gateway::config::{LogFormat, ServeArgs};
use dr_gateway::sandbox::{self, Sandbox, SandboxConfig, WebhookSpec};
use dr_gateway::{shutdown, telemetry};
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

/// The key the gateway uses against its in-process sandbox (test mode, like DR's `sk_test_`).
const SANDBOX_API_KEY: &str = "sk_test_sandbox";

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(*args).await,
        Command::Sandbox(args) => run_sandbox(args).await,
        Command::HealthCheck(args) => health_check(args).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    telemetry::init(args.log_format);
    let mut embedded = None;
    let mut register_late = None;
    let settings = if args.sandbox {
        let mut settings = match args.resolve(Some(SANDBOX_API_KEY)) {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        // why: the embedded sandbox signs its webhooks like DR; give it a secret the
        // gateway accepts (the configured one, or a fresh one) so events flow end to end.
        if settings.webhook_secrets.is_empty() {
            settings.webhook_secrets.push(secrecy::SecretString::from(
                uuid::Uuid::new_v4().to_string(),
            ));
        }
        let secret = settings.webhook_secrets[0].clone();
        // why: register the gateway's endpoint before the gateway reports SERVING, so
        // no event of an order created right after start-up waits for a backfill.
        // Only an ephemeral webhook port (unknown until bound) is registered after.
        let webhooks = if settings.http_addr.port() == 0 {
            register_late = Some(secret);
            Vec::new()
        } else {
            vec![WebhookSpec {
                url: webhook_url(settings.http_addr),
                secret: secret.expose_secret().to_owned(),
                types: Vec::new(),
            }]
        };
        let config = SandboxConfig {
            listen: args.sandbox_addr,
            webhooks,
            ..SandboxConfig::default()
        };
        let sandbox = match Sandbox::start(config).await {
            Ok(s) => s,
            Err(e) => return fail(format!("cannot start the sandbox: {e}")),
        };
        tracing::info!(url = %sandbox.base_url(), "sandbox (Digital River emulator) serving");
        settings.dr_base_url = sandbox.base_url();
        embedded = Some(sandbox);
        settings
    } else {
        match args.resolve(None) {
            Ok(s) => s,
            Err(e) => return fail_with(e, 2),
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => return fail(e),
    };
    if let (Some(sandbox), Some(secret)) = (&embedded, register_late) {
        if let Err(e) = register_sandbox_webhook(sandbox, app.http_addr(), &secret).await {
            tracing::warn!(error = %e, "could not point the sandbox's webhooks at the gateway");
        }
    }
    tokio::spawn(shutdown::cancel_on_signal(app.shutdown_token()));
    let result = app.run_until_stopped().await;
    if let Some(sandbox) = embedded {
        sandbox.shutdown().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

/// Registers the gateway's webhook endpoint with the embedded sandbox (its control
/// surface, as a DR Dashboard user would).
async fn register_sandbox_webhook(
    sandbox: &Sandbox,
    http_addr: std::net::SocketAddr,
    secret: &secrecy::SecretString,
) -> Result<(), reqwest::Error> {
    let url = webhook_url(http_addr);
    reqwest::Client::new()
        .post(format!("{}/sandbox/webhooks", sandbox.base_url()))
        .bearer_auth(SANDBOX_API_KEY)
        .timeout(Duration::from_secs(5))
        .json(&serde_json::json!({
            "url": url,
            "secret": secret.expose_secret(),
        }))
        .send()
        .await?
        .error_for_status()?;
    tracing::info!(%url, "sandbox webhooks point at the gateway");
    Ok(())
}

/// The gateway's webhook URL as the local sandbox reaches it.
fn webhook_url(http_addr: std::net::SocketAddr) -> String {
    let host = if http_addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], http_addr.port()))
    } else {
        http_addr
    };
    format!("http://{host}{}", dr_gateway::webhook::WEBHOOK_PATH)
}

async fn run_sandbox(args: SandboxArgs) -> ExitCode {
    telemetry::init(LogFormat::Pretty);
    let token = CancellationToken::new();
    tokio::spawn(shutdown::cancel_on_signal(token.clone()));
    let stop = async move { token.cancelled().await };
    match sandbox::run_standalone(args.into_config(), stop).await {
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
        Err(e) => return fail(format!("bad address: {e}")),
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
