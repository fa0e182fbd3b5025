//! Armed faults for the DR surface: what to break, on which calls, how many times.
//!
//! A fault matches by method (or `*`/absent = any) and path (exact or `*` glob) and fires on
//! the next `count` matching calls. Kinds that act before processing (`latency`, `status`,
//! `reset`) leave the sandbox state untouched except for `latency`; the `*_after_processing`
//! kinds and `malformed` run the request first, so the caller loses a response to a call
//! that DID happen ("POST reached DR, response lost"). The two late-commit kinds
//! (`delayed_commit`, `status_then_commit`) process the request later in a task of its own,
//! so it takes effect even when the caller has given up: DR committing a request after the
//! client's timeout, or after answering 504.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::glob::glob_match;

/// What an armed fault does to a matching DR-surface call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Wait `latencyMs`, then process normally.
    Latency,
    /// Answer `status` with a DR-shaped error body (and `Retry-After`), not processing.
    Status,
    /// Drop the TCP connection without any HTTP answer, not processing.
    Reset,
    /// Process, then answer 200 with a truncated, unparseable body.
    Malformed,
    /// Process, then drop the connection without answering.
    ResetAfterProcessing,
    /// Process, then wait `latencyMs` before answering.
    LatencyAfterProcessing,
    /// Process `latencyMs` after arrival, whether or not the caller still waits (it
    /// commits even if the caller timed out), and answer then if it does.
    DelayedCommit,
    /// Answer `status` at once (e.g. 504 `gateway_timeout`), then process the request
    /// `latencyMs` later: DR's front end gave up, its back end committed anyway.
    StatusThenCommit,
}

impl FaultKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Status => "status",
            Self::Reset => "reset",
            Self::Malformed => "malformed",
            Self::ResetAfterProcessing => "reset_after_processing",
            Self::LatencyAfterProcessing => "latency_after_processing",
            Self::DelayedCommit => "delayed_commit",
            Self::StatusThenCommit => "status_then_commit",
        }
    }
}

/// `POST /sandbox/faults` body. Build with [`FaultSpec::new`] and the setters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSpec {
    /// HTTP method; `None` = any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Exact path or `*` glob (e.g. `/orders/*`).
    pub path: String,
    /// How many matching calls it hits (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// What it does.
    pub kind: FaultKind,
    /// Delay of the latency kinds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Status of the `status` and `status_then_commit` kinds (required for them; any 4xx/5xx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Retry-After` seconds of the `status` kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
}

impl FaultSpec {
    /// A `kind` fault on the next call to `path` with any method.
    pub fn new(kind: FaultKind, path: impl Into<String>) -> Self {
        Self {
            method: None,
            path: path.into(),
            count: None,
            kind,
            latency_ms: None,
            status: None,
            retry_after: None,
        }
    }

    /// A `status` fault answering `status` on the next call to `path`.
    pub fn status(path: impl Into<String>, status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::new(FaultKind::Status, path)
        }
    }

    /// A `delayed_commit` fault: the next call to `path` takes effect `after` its
    /// arrival, even if its caller has given up by then.
    pub fn delayed_commit(path: impl Into<String>, after: Duration) -> Self {
        Self::new(FaultKind::DelayedCommit, path).latency(after)
    }

    /// A `status_then_commit` fault: the next call to `path` is answered `status` at
    /// once and takes effect `after` its arrival.
    pub fn status_then_commit(path: impl Into<String>, status: u16, after: Duration) -> Self {
        Self {
            status: Some(status),
            ..Self::new(FaultKind::StatusThenCommit, path).latency(after)
        }
    }

    /// Only calls with this method.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// The next `count` matching calls.
    pub fn count(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    /// Delay of the latency kinds.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency_ms = Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// `Retry-After` seconds of the `status` kind.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

/// An armed fault.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    /// Id (for listing).
    pub id: u64,
    /// Method filter, upper case, `None` = any.
    pub method: Option<String>,
    /// Path pattern.
    pub path: String,
    /// Calls it will still hit.
    pub remaining: u32,
    /// Kind.
    pub kind: FaultKind,
    /// Delay for latency kinds.
    pub latency_ms: u64,
    /// Status for `status` and `status_then_commit`.
    pub status: u16,
    /// `Retry-After`.
    pub retry_after: Option<u64>,
}

impl Fault {
    /// Control-surface JSON.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "method": self.method.clone().unwrap_or_else(|| "*".to_owned()),
            "path": self.path,
            "count": self.remaining,
            "remaining": self.remaining,
            "kind": self.kind.as_str(),
            "latencyMs": self.latency_ms,
            "status": self.status,
            "retryAfter": self.retry_after,
        })
    }
}

/// All armed faults, first armed first matched.
#[derive(Debug, Default)]
pub(crate) struct FaultTable {
    faults: Vec<Fault>,
    next_id: u64,
}

impl FaultTable {
    /// Arms a fault from its spec; `Err` names the bad field.
    pub(crate) fn arm(&mut self, spec: FaultSpec) -> Result<Fault, (&'static str, String)> {
        let status = match spec.kind {
            FaultKind::Status | FaultKind::StatusThenCommit => {
                let s = spec.status.ok_or((
                    "status",
                    format!("'status' is required for kind '{}'.", spec.kind.as_str()),
                ))?;
                if !(400..=599).contains(&s) {
                    return Err(("status", format!("status {s} is not an error status.")));
                }
                s
            }
            _ => 200,
        };
        let method = spec
            .method
            .map(|m| m.to_ascii_uppercase())
            .filter(|m| m != "*" && !m.is_empty());
        self.next_id += 1;
        let fault = Fault {
            id: self.next_id,
            method,
            path: spec.path,
            remaining: spec.count.unwrap_or(1).max(1),
            kind: spec.kind,
            latency_ms: spec.latency_ms.unwrap_or(0),
            status,
            retry_after: spec.retry_after,
        };
        self.faults.push(fault.clone());
        Ok(fault)
    }

    /// Takes one shot of the first fault matching this call.
    pub(crate) fn take(&mut self, method: &str, path: &str) -> Option<Fault> {
        let idx = self.faults.iter().position(|f| {
            f.remaining > 0
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && glob_match(&f.path, path)
        })?;
        let fault = self.faults.get_mut(idx)?;
        fault.remaining -= 1;
        let shot = fault.clone();
        if fault.remaining == 0 {
            self.faults.remove(idx);
        }
        Some(shot)
    }

    /// Armed faults.
    pub(crate) fn list(&self) -> &[Fault] {
        &self.faults
    }

    /// Disarms everything.
    pub(crate) fn clear(&mut self) {
        self.faults.clear();
    }
}
