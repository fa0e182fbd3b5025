//! Webhook failures and the HTTP answers DR gets for them. DR treats any non-2xx as
//! "not received" and retries (docs/digital-river.md §4.2), so only failures of the
//! request itself are 4xx; our own failures are 503 so DR re-sends.
//!
//! Every answer is JSON: `{"error": "<code>", "message": "<text>"}`, plus `field`
//! (which envelope field is wrong) for `not_an_event` and `limit_bytes` for
//! `body_too_large`. Codes: `missing_signature`, `invalid_signature`,
//! `stale_timestamp`, `webhook_not_configured` (401), `invalid_json`,
//! `not_an_event`, `body_unreadable` (400), `body_timeout` (408), `body_too_large`
//! (413), `temporarily_unavailable` (503); and for answers axum makes itself
//! `not_found` (404), `method_not_allowed` (405).

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::signature::SignatureError;
use crate::events::{EnvelopeError, LogError};

/// Why a webhook delivery was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Signature missing, wrong or stale.
    #[error("webhook signature rejected: {0}")]
    Signature(#[from] SignatureError),
    /// The body exceeds the configured limit.
    #[error("webhook body larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read completely (client aborted mid-body).
    #[error("webhook body could not be read")]
    BodyUnreadable,
    /// The body did not arrive within the body timeout.
    #[error("webhook body did not arrive within {timeout:?}")]
    BodyTimeout {
        /// The timeout.
        timeout: std::time::Duration,
    },
    /// The body is not a DR event envelope.
    #[error("webhook body is not a DR event: {0}")]
    NotAnEvent(#[from] EnvelopeError),
    /// The event log failed or took too long; DR will retry.
    #[error("event log unavailable")]
    LogUnavailable(#[source] Option<LogError>),
    /// The gateway runs with `--webhooks-disabled`.
    #[error("webhooks are disabled on this gateway")]
    Disabled,
}

impl WebhookError {
    /// The status DR gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Signature(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyUnreadable | Self::NotAnEvent(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::LogUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Disabled => StatusCode::NOT_FOUND,
        }
    }

    /// Stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Signature(SignatureError::Missing) => "missing_signature",
            Self::Signature(SignatureError::Stale) => "stale_timestamp",
            Self::Signature(SignatureError::NoSecrets) => "webhook_not_configured",
            Self::Signature(_) => "invalid_signature",
            Self::TooLarge { .. } => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::NotAnEvent(EnvelopeError::NotJson(_) | EnvelopeError::NotUtf8) => "invalid_json",
            Self::NotAnEvent(_) => "not_an_event",
            Self::LogUnavailable(_) => "temporarily_unavailable",
            Self::Disabled => "webhooks_disabled",
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = self.status();
        // why: DR asks for a descriptive message on a payload we cannot process
        // (docs/digital-river.md §4.2); no variant's text holds a secret.
        let mut body = json!({ "error": self.code(), "message": self.to_string() });
        match &self {
            Self::NotAnEvent(e) => {
                if let Some(field) = e.field() {
                    body["field"] = json!(field);
                }
            }
            Self::TooLarge { limit } => body["limit_bytes"] = json!(limit),
            Self::LogUnavailable(cause) => {
                tracing::error!(error = ?cause, "webhook: event log unavailable; DR will retry");
            }
            _ => {}
        }
        (status, Json(body)).into_response()
    }
}
