//! What went wrong talking to DR, with enough detail for the gRPC status table.

use std::time::Duration;

use serde::Deserialize;

use crate::telemetry::capped;

/// DR's error body: `{ "type": …, "errors": [{ "code", "parameter", "message" }] }`.
///
/// why: every field is optional — DR's own examples omit `type`, use `description`
/// instead of `message`, or send an entry with only `message` (docs/digital-river.md §5.1).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ErrorBody {
    /// Error family, e.g. `conflict`; does not always match the HTTP status.
    #[serde(rename = "type")]
    pub error_type: Option<String>,
    /// The individual errors.
    pub errors: Vec<ErrorEntry>,
}

/// One entry of [`ErrorBody::errors`].
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct ErrorEntry {
    /// Machine code, e.g. `order_fulfilled`.
    pub code: Option<String>,
    /// Request field the error is about, e.g. `orderId`.
    pub parameter: Option<String>,
    /// Human message.
    pub message: Option<String>,
    /// Used instead of `message` in some DR examples (DR's "Payment reauthorizations" page).
    pub description: Option<String>,
}

impl ErrorEntry {
    /// `message`, or `description` when DR sent that instead.
    pub fn text(&self) -> Option<&str> {
        self.message.as_deref().or(self.description.as_deref())
    }
}

impl ErrorBody {
    /// The first entry, which DR puts the main error in.
    pub fn first(&self) -> Option<&ErrorEntry> {
        self.errors.first()
    }
}

/// The DR resource a call addressed, so a 404 can say which one was missing.
///
/// why: a path does not always name it — `POST /fulfillments` addresses the order in
/// its body, and DR answers 404 `parameter: orderId` for an unknown one
/// (docs/digital-river.md §1.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Resource type in the singular, as DR names it: `order`, `charge`, `source`, …
    pub kind: &'static str,
    /// The id the caller asked for.
    pub id: String,
}

impl Resource {
    /// The resource `kind` with id `id`.
    pub fn new(kind: &'static str, id: impl Into<String>) -> Self {
        Self {
            kind,
            id: id.into(),
        }
    }
}

/// An upstream failure. Causes are kept as sources, never stringified into the message,
/// and no variant carries the API key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// DR answered with a non-2xx status and a DR-shaped (or empty) error body.
    #[error("Digital River answered {status} to {method} {}", capped(.path))]
    Api {
        /// HTTP status.
        status: u16,
        /// HTTP method.
        method: &'static str,
        /// DR path (no query string).
        path: String,
        /// Parsed error body; `None` when DR sent none (boxed: errors stay small).
        body: Option<Box<ErrorBody>>,
        /// `Retry-After`, when sent.
        retry_after: Option<Duration>,
        /// DR's request id header, when sent.
        request_id: Option<String>,
        /// The resource the call addressed, when the client knows it (boxed: errors
        /// stay small).
        resource: Option<Box<Resource>>,
    },
    /// DR answered, but the body is not JSON of the expected shape. The first bytes
    /// are logged by the client, never returned to callers.
    #[error("Digital River sent an undecodable body ({status}) to {method} {}", capped(.path))]
    Decode {
        /// HTTP status.
        status: u16,
        /// HTTP method.
        method: &'static str,
        /// DR path.
        path: String,
        /// Why decoding failed.
        #[source]
        source: serde_json::Error,
    },
    /// No answer within the call's time budget (our upstream timeout or the caller's deadline).
    #[error("Digital River did not answer {method} {} within {budget:?}", capped(.path))]
    Timeout {
        /// HTTP method.
        method: &'static str,
        /// DR path.
        path: String,
        /// The budget that ran out.
        budget: Duration,
        /// Whether the request may have reached DR (the outcome of a POST is then unknown).
        maybe_sent: bool,
    },
    /// The connection could not be opened: nothing reached DR.
    #[error("could not connect to Digital River for {method} {}", capped(.path))]
    Connect {
        /// HTTP method.
        method: &'static str,
        /// DR path.
        path: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The connection failed after the request was (maybe) sent: reset, closed early.
    #[error("connection to Digital River failed during {method} {}", capped(.path))]
    Connection {
        /// HTTP method.
        method: &'static str,
        /// DR path.
        path: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The gateway's own pacing toward DR's rate limit could not start the call
    /// before the caller's deadline; nothing was sent.
    #[error("the call to {method} {} would wait {retry_after:?} for DR's rate limit, past the deadline", capped(.path))]
    RateLimited {
        /// HTTP method.
        method: &'static str,
        /// DR path.
        path: String,
        /// When the call could have started.
        retry_after: Duration,
    },
    /// The request could not even be built (bad base URL, unserializable body).
    #[error("could not build the request for {}: {reason}", capped(.path))]
    Request {
        /// DR path.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    /// True when a POST may or may not have taken effect at DR, so the caller must
    /// reconcile before retrying (docs/digital-river.md §0.3, §5.3).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Error::Timeout { maybe_sent, .. } => *maybe_sent,
            Error::Connection { .. } => true,
            // why: a gateway error in front of DR (502/503/504), a 500, or DR's own
            // `request_timeout` (408) may come after DR processed the request
            // (docs/digital-river.md §5.5).
            Error::Api { status, .. } => matches!(status, 408 | 500 | 502 | 503 | 504),
            Error::Decode { status, .. } => (200..300).contains(status),
            Error::Connect { .. } | Error::Request { .. } | Error::RateLimited { .. } => false,
        }
    }

    /// HTTP status DR answered with, if it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The DR path of the failed call.
    pub fn path(&self) -> &str {
        match self {
            Error::Api { path, .. }
            | Error::Decode { path, .. }
            | Error::Timeout { path, .. }
            | Error::Connect { path, .. }
            | Error::Connection { path, .. }
            | Error::RateLimited { path, .. }
            | Error::Request { path, .. } => path,
        }
    }
}
