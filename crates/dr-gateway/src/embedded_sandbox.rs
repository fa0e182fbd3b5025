//! `serve --sandbox`: a Digital River emulator in the gateway's process, with the
//! gateway pointed at it and its signed webhooks pointed at the gateway.
//!
//! Only in builds with the `sandbox` cargo feature (the default); production images
//! leave it out, and there `serve --sandbox` refuses to start.

use std::net::SocketAddr;

use dr_sandbox::{Sandbox, SandboxConfig, SettleMode, WebhookSpec};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{ConfigError, SandboxSettle, ServeArgs, Settings};
use crate::listen::ListenAddr;

/// The key the gateway uses against its in-process sandbox (test mode, like DR's `sk_test_`).
pub const SANDBOX_API_KEY: &str = "sk_test_sandbox";

/// A sandbox running beside the gateway.
#[derive(Debug)]
pub struct EmbeddedSandbox {
    sandbox: Sandbox,
    /// The webhook secret to register once the gateway's webhook port is known.
    register_late: Option<SecretString>,
}

/// Why the embedded sandbox could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedSandboxError {
    /// The serve flags are unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--sandbox-addr` names a host that does not resolve.
    #[error("--sandbox-addr / DR_GATEWAY_SANDBOX_ADDR: cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The sandbox could not bind or start.
    #[error("cannot start the sandbox: {0}")]
    Start(#[from] dr_sandbox::SandboxError),
}

impl EmbeddedSandbox {
    /// Starts the sandbox on `--sandbox-addr` and returns the gateway's settings
    /// pointed at it.
    pub async fn start(args: &ServeArgs) -> Result<(Self, Settings), EmbeddedSandboxError> {
        let mut settings = args.resolve(Some(SANDBOX_API_KEY))?;
        // why: the emulator starts with this process, empty: no earlier process can
        // have posted to it, so nothing needs holding after start.
        settings.fulfillment_startup_hold = std::time::Duration::ZERO;
        // why: the embedded sandbox signs its webhooks like DR; give it a secret the
        // gateway accepts (the configured one, or a fresh one) so events flow end to end.
        if settings.webhook_secrets.is_empty() {
            settings
                .webhook_secrets
                .push(SecretString::from(uuid::Uuid::new_v4().to_string()));
        }
        let secret = settings.webhook_secrets[0].clone();
        // why: register the gateway's endpoint before the gateway reports SERVING, so
        // no event of an order created right after start-up waits for a backfill.
        // Only an ephemeral webhook port (unknown until bound) is registered after.
        let (webhooks, register_late) = if settings.http_addr.port() == 0 {
            (Vec::new(), Some(secret))
        } else {
            (vec![webhook_spec(&settings.http_addr, &secret)], None)
        };
        let listen = resolve(&args.sandbox_addr).await?;
        let sandbox = Sandbox::start(SandboxConfig {
            listen,
            webhooks,
            settle: match args.sandbox_settle {
                SandboxSettle::Immediate => SettleMode::Immediate,
                SandboxSettle::Stepped => SettleMode::Stepped,
            },
            // why: behave like DR, 429 past its per-key limit; the gateway paces itself
            // under it (docs/digital-river.md §5.2).
            rate_limit: Some(dr_sandbox::RateLimit::documented()),
            ..SandboxConfig::default()
        })
        .await?;
        tracing::info!(url = %sandbox.base_url(), "sandbox (Digital River emulator) serving");
        settings.dr_base_url = sandbox.base_url().into();
        Ok((
            Self {
                sandbox,
                register_late,
            },
            settings,
        ))
    }

    /// Points the sandbox's webhooks at the gateway's bound webhook address, if that
    /// was not known at start (an ephemeral port). In process: no HTTP call.
    pub fn point_webhooks_at(&mut self, http_addr: SocketAddr) {
        if let Some(secret) = self.register_late.take() {
            let spec = webhook_spec(&ListenAddr::from(http_addr), &secret);
            let url = spec.url.clone();
            self.sandbox.register_webhook(spec);
            tracing::info!(%url, "sandbox webhooks point at the gateway");
        }
    }

    /// Stops the sandbox.
    pub async fn shutdown(self) {
        self.sandbox.shutdown().await;
    }
}

/// The first address `addr`'s host resolves to (the sandbox binds one address).
async fn resolve(addr: &ListenAddr) -> Result<SocketAddr, EmbeddedSandboxError> {
    let failed = |reason: String| EmbeddedSandboxError::Resolve {
        addr: addr.to_string(),
        reason,
    };
    tokio::net::lookup_host((addr.host(), addr.port()))
        .await
        .map_err(|e| failed(e.to_string()))?
        .next()
        .ok_or_else(|| failed("no address".into()))
}

fn webhook_spec(http_addr: &ListenAddr, secret: &SecretString) -> WebhookSpec {
    WebhookSpec {
        url: webhook_url(http_addr),
        secret: secret.expose_secret().to_owned(),
        types: Vec::new(),
    }
}

/// The gateway's webhook URL as the local sandbox reaches it.
fn webhook_url(http_addr: &ListenAddr) -> String {
    let host = if http_addr.ip().is_some_and(|ip| ip.is_unspecified()) {
        ListenAddr::from(SocketAddr::from(([127, 0, 0, 1], http_addr.port())))
    } else {
        http_addr.clone()
    };
    format!("http://{host}{}", crate::webhook::WEBHOOK_PATH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_reached_on_loopback() {
        assert_eq!(
            webhook_url(&ListenAddr::from(SocketAddr::from(([0, 0, 0, 0], 8080)))),
            format!("http://127.0.0.1:8080{}", crate::webhook::WEBHOOK_PATH)
        );
        assert_eq!(
            webhook_url(&"localhost:8080".parse().unwrap()),
            format!("http://localhost:8080{}", crate::webhook::WEBHOOK_PATH)
        );
    }
}
