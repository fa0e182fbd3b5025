//! Command-line interface of the `dr-gateway` binary: one subcommand per mode.
//!
//! - `dr-gateway serve [--sandbox]` runs the gateway (flags in [`crate::config::ServeArgs`]);
//! - `dr-gateway sandbox --listen 127.0.0.1:8090 [--seed N] [--settle immediate|stepped]
//!   [--webhook URL=SECRET …]` runs the DR emulator alone until SIGINT/SIGTERM;
//! - `dr-gateway health-check --addr host:port` asks a gateway's gRPC health service.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::ServeArgs;
use crate::sandbox::{RetryPolicy, SandboxConfig, SettleMode, WebhookSpec};

/// dr-gateway: a gRPC gateway for Digital River order fulfilment, with a DR sandbox.
#[derive(Debug, Parser)]
#[command(name = "dr-gateway", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Modes of the binary.
// why: parsed once at start; boxing the serve flags would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (gRPC + webhook listeners); `--sandbox` adds an in-process DR emulator.
    // Boxed: `serve` has many flags (clippy::large_enum_variant).
    Serve(Box<ServeArgs>),
    /// Run the stateful Digital River API emulator alone.
    Sandbox(SandboxArgs),
    /// Ask a gateway's gRPC health service whether it is SERVING (exit 0) or not (exit 1).
    HealthCheck(HealthCheckArgs),
}

/// `dr-gateway health-check` flags.
#[derive(Debug, Args)]
pub struct HealthCheckArgs {
    /// Gateway gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Service to ask about ("" = the whole server).
    #[arg(long, default_value = "")]
    pub service: String,
}

/// `dr-gateway sandbox` flags.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090", env = "DR_SANDBOX_LISTEN")]
    pub listen: SocketAddr,
    /// Seed for deterministic ids.
    #[arg(long)]
    pub seed: Option<u64>,
    /// When captures/cancels settle: right away, or on POST /sandbox/settle.
    #[arg(long, default_value = "immediate")]
    pub settle: SettleMode,
    /// Webhook endpoint registered at start, as URL=SECRET (repeatable).
    #[arg(long = "webhook", value_parser = parse_webhook)]
    pub webhooks: Vec<WebhookSpec>,
    /// Webhook delivery attempts per event and endpoint.
    #[arg(long, default_value_t = 4)]
    pub webhook_attempts: u32,
    /// Delay before the first webhook retry, in milliseconds (doubles each retry).
    #[arg(long, default_value_t = 1000)]
    pub webhook_base_delay_ms: u64,
}

fn parse_webhook(text: &str) -> Result<WebhookSpec, String> {
    // why: the secret may contain '='; URLs with '=' in the query are split at the last '='.
    let (url, secret) = text
        .rsplit_once('=')
        .ok_or_else(|| "expected URL=SECRET".to_owned())?;
    if url.is_empty() || secret.is_empty() {
        return Err("expected URL=SECRET with both parts non-empty".to_owned());
    }
    Ok(WebhookSpec {
        url: url.to_owned(),
        secret: secret.to_owned(),
        types: Vec::new(),
    })
}

impl SandboxArgs {
    /// The sandbox configuration these flags describe.
    pub fn into_config(self) -> SandboxConfig {
        SandboxConfig {
            listen: self.listen,
            seed: self.seed,
            settle: self.settle,
            webhook_retry: RetryPolicy {
                attempts: self.webhook_attempts,
                base_delay: Duration::from_millis(self.webhook_base_delay_ms),
                ..RetryPolicy::default()
            },
            webhooks: self.webhooks,
        }
    }
}
