//! The domain's error: what went wrong in terms a caller can act on.

use crate::digital_river;

/// A request field that failed validation, named as in the proto (`items[0].quantity`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Proto field path.
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Errors of the domain layer; converted to `tonic::Status` in `grpc::status`.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; nothing was sent to DR.
    #[error("invalid request: {}", .0.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<FieldViolation>),
    /// DR failed or refused the call.
    #[error(transparent)]
    Upstream(#[from] digital_river::Error),
    /// A resource the gateway looked for (beyond DR's own 404s) does not exist.
    #[error("{message}")]
    NotFound {
        /// Resource type, e.g. `capture`.
        resource_type: &'static str,
        /// Its id.
        id: String,
        /// Human explanation.
        message: String,
    },
    /// The request cannot be served in the current state (e.g. ambiguous upstream id).
    #[error("{description}")]
    FailedPrecondition {
        /// Stable reason, UPPER_SNAKE_CASE.
        reason: &'static str,
        /// What the precondition is about.
        subject: String,
        /// Human explanation.
        description: String,
    },
    /// The caller's deadline passed while the gateway waited (the work may go on).
    #[error("{0}")]
    DeadlineExceeded(String),
    /// An earlier POST with this `request_id` has an unknown outcome and DR may still
    /// commit it; DR does not show it yet, so nothing new was sent. Retrying with the
    /// same `request_id` is safe: it returns the fulfillment once DR shows it, or
    /// posts once the earlier attempt can no longer land.
    #[error("the outcome of an earlier attempt with request_id {request_id:?} is still pending")]
    OutcomePending {
        /// The caller's idempotency key.
        request_id: String,
        /// When to retry.
        retry_after: std::time::Duration,
        /// What made the outcome unknown, for the message (no secrets: DR paths and
        /// statuses only).
        cause: Option<String>,
    },
    /// A dependency of the gateway itself (not DR) is down, e.g. the shared
    /// idempotency store; nothing was sent to DR, so retrying is safe.
    #[error("{0}")]
    Unavailable(String),
    /// The gateway holds as much of something as it allows itself (e.g. the
    /// idempotency store is full of requests in flight); nothing was sent to DR,
    /// retrying later is safe.
    #[error("{message}")]
    ResourceExhausted {
        /// Stable reason, UPPER_SNAKE_CASE.
        reason: &'static str,
        /// Human explanation.
        message: String,
        /// When to retry.
        retry_after: std::time::Duration,
    },
    /// A gateway bug; details are logged, the caller gets this stable message.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    /// One invalid field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}
