//! Command-line flags of a standalone sandbox (`dr-gateway sandbox …`), behind the
//! `cli` feature so a library user of the sandbox does not compile clap.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::{
    DeliveryMode, DeliveryOrder, RateLimit, RetryPolicy, SandboxConfig, SettleMode, WebhookSpec,
};

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
    /// Per-key rate limit of the DR surface: `dr` (DR's: 250/s live, 25/s test keys),
    /// `LIVE,TEST` requests per second, or `off`. Past it: 429 with Retry-After.
    #[arg(long, default_value = "dr", value_parser = parse_rate_limit)]
    pub rate_limit: RateLimitArg,
    /// Webhook delivery order: `concurrent` (as DR sends them: any order) or
    /// `in_order` (one at a time per endpoint, in emission order).
    #[arg(long, default_value = "concurrent")]
    pub webhook_delivery_order: DeliveryOrder,
    /// Each concurrent webhook delivery first waits a random time below this many
    /// milliseconds (0: none), so events arrive out of order as DR's do.
    #[arg(long, default_value_t = 0)]
    pub webhook_jitter_ms: u64,
}

/// `--rate-limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitArg(pub Option<RateLimit>);

fn parse_rate_limit(text: &str) -> Result<RateLimitArg, String> {
    match text.trim() {
        "off" => Ok(RateLimitArg(None)),
        "dr" => Ok(RateLimitArg(Some(RateLimit::documented()))),
        pair => {
            let parse = |n: &str| n.trim().parse::<u32>().ok().filter(|n| *n > 0);
            pair.split_once(',')
                .and_then(|(live, test)| Some((parse(live)?, parse(test)?)))
                .map(|(live_per_second, test_per_second)| {
                    RateLimitArg(Some(RateLimit {
                        live_per_second,
                        test_per_second,
                    }))
                })
                .ok_or_else(|| format!("expected dr, off or LIVE,TEST (e.g. 250,25), got {pair:?}"))
        }
    }
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
            rate_limit: self.rate_limit.0,
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
        assert_eq!(config.rate_limit, Some(RateLimit::documented()));
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
    fn the_rate_limit_is_drs_off_or_two_numbers() {
        assert_eq!(parse_rate_limit("off"), Ok(RateLimitArg(None)));
        assert_eq!(
            parse_rate_limit("100,10"),
            Ok(RateLimitArg(Some(RateLimit {
                live_per_second: 100,
                test_per_second: 10
            })))
        );
        for bad in ["fast", "100", "0,1", "a,b"] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
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
