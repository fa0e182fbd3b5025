//! Command-line flags of a standalone sandbox (`dr-gateway sandbox …`), behind the
//! `cli` feature so a library user of the sandbox does not compile clap.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::{DeliveryMode, DeliveryOrder, RetryPolicy, SandboxConfig, SettleMode, WebhookSpec};

/// Flags of a standalone sandbox.
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
    #[arg(long, default_value_t = RetryPolicy::default().attempts)]
    pub webhook_attempts: u32,
    /// Delay before the first webhook retry, in milliseconds (doubles each retry).
    #[arg(long, default_value_t = RetryPolicy::default().base_delay.as_millis() as u64)]
    pub webhook_base_delay_ms: u64,
    /// Webhook delivery order: `concurrent` (as DR sends them: any order) or
    /// `in_order` (one at a time per endpoint, in emission order).
    #[arg(long, default_value = "concurrent")]
    pub webhook_delivery_order: DeliveryOrder,
    /// Each concurrent webhook delivery first waits a random time below this many
    /// milliseconds (0: none), so events arrive out of order as DR's do.
    #[arg(long, default_value_t = 0)]
    pub webhook_jitter_ms: u64,
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
            delivery: DeliveryMode {
                order: self.webhook_delivery_order,
                jitter: Duration::from_millis(self.webhook_jitter_ms),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sandbox: SandboxArgs,
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let config = Cli::try_parse_from(["x"]).unwrap().sandbox.into_config();
        assert_eq!(config.webhook_retry, RetryPolicy::default());
        assert_eq!(config.settle, SettleMode::default());
        assert!(config.webhooks.is_empty());
        assert_eq!(config.delivery, DeliveryMode::default());
        let ordered = Cli::try_parse_from([
            "x",
            "--webhook-delivery-order",
            "in_order",
            "--webhook-jitter-ms",
            "50",
        ])
        .unwrap()
        .sandbox
        .into_config();
        assert_eq!(ordered.delivery.order, DeliveryOrder::InOrder);
        assert_eq!(ordered.delivery.jitter, Duration::from_millis(50));
        assert!(Cli::try_parse_from(["x", "--webhook-delivery-order", "random"]).is_err());
    }

    #[test]
    fn a_webhook_splits_at_the_last_equals_sign() {
        let spec = parse_webhook("http://h/x?a=b=s3cr=t").unwrap();
        assert_eq!(spec.url, "http://h/x?a=b=s3cr");
        assert_eq!(spec.secret, "t");
        assert!(parse_webhook("http://h/x").is_err());
        assert!(parse_webhook("=secret").is_err());
    }
}
