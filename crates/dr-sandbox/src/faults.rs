//! Armed faults for the DR surface: what to break, on which calls, how many times.
//!
//! A fault matches by method (or `*`/absent = any) and path (exact or `*` glob) and fires on
//! the next `count` matching calls. Kinds that act before processing (`latency`, `status`,
//! `reset`) leave the sandbox state untouched except for `latency`; the `*_after_processing`
//! kinds and `malformed` run the request first, so the caller loses a response to a call
//! that DID happen ("POST reached DR, response lost").

use serde::Deserialize;
use serde_json::{json, Value};

use super::glob::glob_match;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultKind {
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
    /// Process, then wait `latencyMs` before answering (to outlast client timeouts).
    LatencyAfterProcessing,
}

impl FaultKind {
    /// Wire name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Latency => "latency",
            Self::Status => "status",
            Self::Reset => "reset",
            Self::Malformed => "malformed",
            Self::ResetAfterProcessing => "reset_after_processing",
            Self::LatencyAfterProcessing => "latency_after_processing",
        }
    }
}

/// `POST /sandbox/faults` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FaultSpec {
    /// HTTP method; absent or `*` = any.
    pub method: Option<String>,
    /// Exact path or `*` glob.
    pub path: String,
    /// How many matching calls it hits (default 1).
    pub count: Option<u32>,
    /// What it does.
    pub kind: FaultKind,
    /// For the latency kinds.
    pub latency_ms: Option<u64>,
    /// For `status`: 429, 500, 502, 503 or 504 (any 4xx/5xx is accepted).
    pub status: Option<u16>,
    /// `Retry-After` seconds for `status`.
    pub retry_after: Option<u64>,
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
    /// Status for `status`.
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
            FaultKind::Status => {
                let s = spec.status.ok_or((
                    "status",
                    "'status' is required for kind 'status'.".to_owned(),
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
