//! THE table that turns upstream and domain errors into `tonic::Status`.
//!
//! Map on DR's HTTP status first, then refine with DR's `code` (docs/digital-river.md §5.1:
//! `type` does not always match the status). Every status carries
//! `google.rpc.ErrorInfo` so callers in any language can branch on `reason`.
//!
//! # Bounded answers
//! A status travels in HTTP/2 trailers, and gRPC clients refuse trailers larger than
//! their metadata limit (16 KiB by default in C-core, Go and Java), so every status
//! stays far below it, whatever the request or DR's error body held (at most about
//! 8 KiB of details, 11 KiB once base64-encoded in `grpc-status-details-bin`, and a
//! message of 512 bytes, 1.5 KiB at most once percent-encoded):
//! - at most [`MAX_VIOLATIONS`] `BadRequest` field violations; `ErrorInfo` metadata
//!   `violations` then says how many there were in all, and the message ends with
//!   "(and N more)";
//! - the message at most [`MAX_MESSAGE_BYTES`] bytes; each violation's field and
//!   description, and each metadata value, at most [`MAX_DETAIL_BYTES`] (cut at a
//!   character boundary, ending in "…").

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::Denial;
use crate::digital_river::{Error as DrError, ErrorBody, Resource};
use crate::domain::ServiceError;
use crate::events::groups::GroupError;
use crate::events::SubscribeError;
use crate::grpc::event_stream::StreamEnd;

/// `ErrorInfo.domain` of every status the gateway returns.
pub const ERROR_DOMAIN: &str = "digitalriver.com";

/// `RetryInfo` of UNAVAILABLE answers for a dependency of the gateway (the event
/// bus): about when the NATS client's reconnect (backoff capped at 2 s) has had a
/// chance to succeed.
pub const DEPENDENCY_RETRY_DELAY: Duration = Duration::from_secs(1);

/// UNAVAILABLE, reason `EVENT_LOG_UNAVAILABLE`, with `RetryInfo`: the event log (on
/// the bus in JetStream mode) cannot be read now.
pub fn event_log_unavailable(message: &str) -> Status {
    status_with_info(
        Code::Unavailable,
        message,
        "EVENT_LOG_UNAVAILABLE",
        HashMap::new(),
        |d| {
            d.set_retry_info(Some(DEPENDENCY_RETRY_DELAY));
        },
    )
}

/// UNAVAILABLE, reason `CONSUMER_GROUP_STORE_UNAVAILABLE`, with `RetryInfo`: the
/// consumer groups' state (on the bus in JetStream mode, perhaps not connected yet)
/// cannot be read or written now.
fn group_store_unavailable(message: &str) -> Status {
    status_with_info(
        Code::Unavailable,
        message,
        "CONSUMER_GROUP_STORE_UNAVAILABLE",
        HashMap::new(),
        |d| {
            d.set_retry_info(Some(DEPENDENCY_RETRY_DELAY));
        },
    )
}

/// Most `BadRequest` field violations in one status (see the module docs).
pub const MAX_VIOLATIONS: usize = 20;
/// Longest status message, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 512;
/// Longest violation field or description and `ErrorInfo` metadata value, in bytes.
pub const MAX_DETAIL_BYTES: usize = 128;

/// `text` cut to at most `max` bytes at a character boundary, ending in "…" when cut.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// INVALID_ARGUMENT with a `BadRequest` of at most [`MAX_VIOLATIONS`] of
/// `violations` (field, description); the message lists the same ones, prefixed by
/// `lead` when DR wrote one, and says how many more there were.
fn bad_request(
    lead: Option<String>,
    reason: &str,
    mut metadata: HashMap<String, String>,
    violations: Vec<(String, String)>,
) -> Status {
    let total = violations.len();
    let shown: Vec<(String, String)> = violations
        .into_iter()
        .take(MAX_VIOLATIONS)
        .map(|(field, description)| {
            (
                bounded(&field, MAX_DETAIL_BYTES),
                bounded(&description, MAX_DETAIL_BYTES),
            )
        })
        .collect();
    let mut message = lead.unwrap_or_else(|| {
        shown
            .iter()
            .map(|(field, description)| format!("{field}: {description}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    if total > shown.len() {
        let more = format!(" (and {} more)", total - shown.len());
        message = bounded(&message, MAX_MESSAGE_BYTES - more.len()) + &more;
        metadata.insert("violations".to_owned(), total.to_string());
    }
    status_with_info(Code::InvalidArgument, message, reason, metadata, |d| {
        for (field, description) in shown {
            d.add_bad_request_violation(field, description);
        }
    })
}

/// `code` → `CODE` (`order_fulfilled` → `ORDER_FULFILLED`, `failed-request` → `FAILED_REQUEST`).
pub fn upper_snake(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + 4);
    let mut prev_lower = false;
    for ch in code.chars() {
        if ch.is_ascii_uppercase() && prev_lower {
            out.push('_');
        }
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_uppercase());
            prev_lower = ch.is_ascii_lowercase() || ch.is_ascii_digit();
        } else {
            if !out.ends_with('_') {
                out.push('_');
            }
            prev_lower = false;
        }
    }
    out.trim_matches('_').to_owned()
}

/// Builds a status with an `ErrorInfo` (domain [`ERROR_DOMAIN`]) plus `extra` details;
/// the message, the reason and the metadata values are cut to their bounds (see the
/// module docs).
pub fn status_with_info(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: HashMap<String, String>,
    extra: impl FnOnce(&mut ErrorDetails),
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .into_iter()
        .map(|(key, value)| (key, bounded(&value, MAX_DETAIL_BYTES)))
        .collect();
    let mut details = ErrorDetails::new();
    details.set_error_info(bounded(reason, MAX_DETAIL_BYTES), ERROR_DOMAIN, metadata);
    extra(&mut details);
    Status::with_error_details(code, bounded(&message.into(), MAX_MESSAGE_BYTES), details)
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::InvalidArgument(violations) => bad_request(
                None,
                "INVALID_REQUEST",
                HashMap::new(),
                violations
                    .into_iter()
                    .map(|v| (v.field, v.description))
                    .collect(),
            ),
            ServiceError::Upstream(e) => from_dr_error(&e),
            ServiceError::NotFound {
                resource_type,
                id,
                message,
            } => status_with_info(
                Code::NotFound,
                message.clone(),
                &format!("{}_NOT_FOUND", upper_snake(resource_type)),
                HashMap::new(),
                |d| {
                    d.set_resource_info(resource_type, id, "", message);
                },
            ),
            ServiceError::FailedPrecondition {
                reason,
                subject,
                description,
            } => status_with_info(
                Code::FailedPrecondition,
                description.clone(),
                reason,
                HashMap::new(),
                |d| {
                    d.add_precondition_failure_violation(reason, subject, description);
                },
            ),
            ServiceError::DeadlineExceeded(message) => status_with_info(
                Code::DeadlineExceeded,
                message,
                "DEADLINE_EXCEEDED",
                HashMap::new(),
                |_| {},
            ),
            ServiceError::OutcomePending {
                request_id,
                retry_after,
                cause,
            } => {
                let mut message = format!(
                    "an earlier attempt with request_id {request_id:?} may still be committed by \
                     Digital River, which does not show it yet; nothing new was sent: retry with \
                     the same request_id"
                );
                if let Some(cause) = cause {
                    message.push_str(&format!(" ({cause})"));
                }
                status_with_info(
                    Code::Unavailable,
                    message,
                    "FULFILLMENT_OUTCOME_PENDING",
                    HashMap::from([("request_id".to_owned(), request_id)]),
                    |d| {
                        d.set_retry_info(Some(retry_after));
                    },
                )
            }
            ServiceError::Unavailable(message) => status_with_info(
                Code::Unavailable,
                message,
                "GATEWAY_DEPENDENCY_UNAVAILABLE",
                HashMap::new(),
                |d| {
                    d.set_retry_info(Some(DEPENDENCY_RETRY_DELAY));
                },
            ),
            ServiceError::ResourceExhausted {
                reason,
                message,
                retry_after,
            } => status_with_info(
                Code::ResourceExhausted,
                message,
                reason,
                HashMap::new(),
                |d| {
                    d.set_retry_info(Some(retry_after));
                },
            ),
            ServiceError::Internal(message) => status_with_info(
                Code::Internal,
                message,
                "GATEWAY_INTERNAL",
                HashMap::new(),
                |_| {},
            ),
        }
    }
}

/// RESOURCE_EXHAUSTED for a request message of `len` bytes above `limit` (gRPC's
/// convention for messages larger than the receiver accepts).
pub fn message_too_large(len: usize, limit: usize) -> Status {
    status_with_info(
        Code::ResourceExhausted,
        format!("the request message is {len} bytes; the gateway accepts at most {limit}"),
        "MESSAGE_TOO_LARGE",
        HashMap::from([
            ("message_bytes".to_owned(), len.to_string()),
            ("limit_bytes".to_owned(), limit.to_string()),
        ]),
        |_| {},
    )
}

/// RESOURCE_EXHAUSTED for a compressed request message that inflates past `limit`
/// (its size as sent was within it; see grpc/message_limit.rs).
pub fn decompressed_message_too_large(limit: usize) -> Status {
    status_with_info(
        Code::ResourceExhausted,
        format!("the request message decompresses to more than {limit} bytes, the most the gateway accepts"),
        "MESSAGE_TOO_LARGE",
        HashMap::from([
            ("limit_bytes".to_owned(), limit.to_string()),
            ("compressed".to_owned(), "true".to_owned()),
        ]),
        |_| {},
    )
}

/// Subscribe refused at start.
impl From<SubscribeError> for Status {
    fn from(error: SubscribeError) -> Self {
        match error {
            SubscribeError::MalformedCursor => {
                ServiceError::invalid("after_cursor", "malformed cursor").into()
            }
            SubscribeError::CursorAhead => {
                ServiceError::invalid("after_cursor", "cursor is ahead of the event log").into()
            }
            SubscribeError::Expired {
                oldest_cursor,
                other_log,
            } => cursor_expired(&oldest_cursor, other_log),
            SubscribeError::Log(e) => {
                tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "subscribe: event log unavailable");
                event_log_unavailable("event log unavailable")
            }
        }
    }
}

/// A Subscribe stream ended by the gateway. UNAVAILABLE carries a `reason` so callers
/// in any language can tell a draining gateway (reconnect elsewhere) from a bus
/// outage (retry later).
impl From<StreamEnd> for Status {
    fn from(end: StreamEnd) -> Self {
        match end {
            StreamEnd::ShuttingDown => status_with_info(
                Code::Unavailable,
                "gateway shutting down; resume from the last cursor",
                "SHUTTING_DOWN",
                HashMap::new(),
                |_| {},
            ),
            StreamEnd::CursorExpired { oldest_cursor } => cursor_expired(&oldest_cursor, false),
            StreamEnd::EventLogFailed => {
                event_log_unavailable("event log unavailable; resume from the last cursor")
            }
            StreamEnd::ConnectionAged => status_with_info(
                Code::Unavailable,
                "the connection reached its maximum age; reconnect and resume from the last cursor",
                "CONNECTION_AGED",
                HashMap::new(),
                |d| {
                    d.set_retry_info(Some(Duration::ZERO));
                },
            ),
            StreamEnd::GroupDeleted { group_id } => status_with_info(
                Code::NotFound,
                format!("consumer group {group_id} was deleted"),
                "CONSUMER_GROUP_DELETED",
                HashMap::new(),
                |d| {
                    d.set_resource_info("consumer_group", group_id, "", "deleted");
                },
            ),
            StreamEnd::GroupStoreUnavailable => group_store_unavailable(
                "consumer group state unavailable; reconnect (to another replica)",
            ),
        }
    }
}

/// Consumer group RPCs refused.
impl From<GroupError> for Status {
    fn from(error: GroupError) -> Self {
        match error {
            GroupError::Invalid { field, reason } => ServiceError::invalid(field, reason).into(),
            GroupError::NotFound(id) => status_with_info(
                Code::NotFound,
                format!("consumer group {id} does not exist"),
                "CONSUMER_GROUP_NOT_FOUND",
                HashMap::new(),
                |d| {
                    d.set_resource_info("consumer_group", id, "", "not found");
                },
            ),
            GroupError::AlreadyExists(id) => status_with_info(
                Code::AlreadyExists,
                format!("consumer group {id} already exists"),
                "CONSUMER_GROUP_EXISTS",
                HashMap::new(),
                |d| {
                    d.set_resource_info("consumer_group", id, "", "already exists");
                },
            ),
            GroupError::GroupsLimit(max) => status_with_info(
                Code::ResourceExhausted,
                format!("at most {max} consumer groups; delete one first"),
                "CONSUMER_GROUPS_LIMIT",
                HashMap::from([("limit".to_owned(), max.to_string())]),
                |d| {
                    d.add_quota_failure_violation("consumer_groups", format!("at most {max}"));
                },
            ),
            GroupError::MembersLimit(max) => status_with_info(
                Code::ResourceExhausted,
                format!("at most {max} members per consumer group on one gateway"),
                "CONSUMER_GROUP_MEMBERS_LIMIT",
                HashMap::from([("limit".to_owned(), max.to_string())]),
                |d| {
                    d.add_quota_failure_violation(
                        "consumer_group_members",
                        format!("at most {max}"),
                    );
                },
            ),
            GroupError::Start(e) => e.into(),
            GroupError::Store(e) => {
                tracing::warn!(error = %e, "consumer group state unavailable");
                group_store_unavailable("consumer group state unavailable; retry")
            }
            GroupError::Retry => group_store_unavailable("consumer group restarting; retry"),
        }
    }
}

/// A call the authorization layer refused: UNAUTHENTICATED (no, or no valid,
/// credentials) or PERMISSION_DENIED (identified, not allowed). `ErrorInfo` carries
/// the reason and the method; nothing names the caller's rule or other identities.
impl From<Denial> for Status {
    fn from(denial: Denial) -> Self {
        use crate::auth::DenialReason::*;
        let message = match denial.reason {
            CredentialsRequired => {
                "this method needs credentials: a client certificate or a bearer token"
            }
            InvalidToken => "the bearer token is not valid",
            CertificateWithoutIdentity => {
                "the client certificate names no URI or DNS subject alternative name"
            }
            CallerNotInPolicy | MethodNotAllowed => "the caller may not call this method",
        };
        let code = if denial.reason.is_unauthenticated() {
            Code::Unauthenticated
        } else {
            Code::PermissionDenied
        };
        let metadata = HashMap::from([("method".to_owned(), denial.method)]);
        status_with_info(code, message, denial.reason.as_str(), metadata, |_| {})
    }
}

/// OUT_OF_RANGE `CURSOR_EXPIRED` with the cursor to resume from.
fn cursor_expired(oldest_cursor: &str, other_log: bool) -> Status {
    let mut metadata = HashMap::from([("oldest_cursor".to_owned(), oldest_cursor.to_owned())]);
    let message = if other_log {
        metadata.insert("cause".into(), "other_log_instance".into());
        "cursor is from another event log instance (the gateway restarted); resume from oldest_cursor"
    } else {
        "events after this position are no longer held; resume from oldest_cursor"
    };
    status_with_info(
        Code::OutOfRange,
        message,
        "CURSOR_EXPIRED",
        metadata,
        |_| {},
    )
}

/// The row of the table for one upstream error.
pub fn from_dr_error(error: &DrError) -> Status {
    match error {
        DrError::Api {
            status,
            method,
            path,
            body,
            retry_after,
            request_id,
            resource,
        } => api_status(
            *status,
            method,
            path,
            body.as_deref(),
            *retry_after,
            request_id.as_deref(),
            resource.as_deref(),
        ),
        DrError::Timeout { budget, .. } => {
            let mut meta = HashMap::new();
            meta.insert("dr_path".into(), error.path().to_owned());
            status_with_info(
                Code::DeadlineExceeded,
                format!(
                    "Digital River did not answer within {} ms",
                    budget.as_millis()
                ),
                "UPSTREAM_TIMEOUT",
                meta,
                |_| {},
            )
        }
        DrError::Connect { .. } | DrError::Connection { .. } => {
            tracing::warn!(error = %error, source = ?std::error::Error::source(error), "DR unreachable");
            let mut meta = HashMap::new();
            meta.insert("dr_path".into(), error.path().to_owned());
            status_with_info(
                Code::Unavailable,
                "Digital River is unreachable",
                "UPSTREAM_UNAVAILABLE",
                meta,
                |_| {},
            )
        }
        DrError::Decode { status, .. } => {
            // why: the body's first bytes were logged by the client; callers get a
            // stable message with nothing DR-internal in it.
            tracing::error!(error = %error, "undecodable DR response");
            let mut meta = HashMap::new();
            meta.insert("http_status".into(), status.to_string());
            meta.insert("dr_path".into(), error.path().to_owned());
            status_with_info(
                Code::Internal,
                "Digital River sent a response the gateway could not read",
                "UPSTREAM_BAD_RESPONSE",
                meta,
                |_| {},
            )
        }
        DrError::RateLimited { retry_after, .. } => {
            let mut meta = HashMap::new();
            meta.insert("dr_path".into(), error.path().to_owned());
            status_with_info(
                Code::ResourceExhausted,
                "the gateway is pacing calls to Digital River's rate limit; retry later",
                "GATEWAY_RATE_LIMITED",
                meta,
                |d| {
                    d.set_retry_info(Some(*retry_after));
                },
            )
        }
        DrError::Request { .. } => {
            tracing::error!(error = %error, "could not build a DR request");
            status_with_info(
                Code::Internal,
                "the gateway could not build the Digital River request",
                "GATEWAY_INTERNAL",
                HashMap::new(),
                |_| {},
            )
        }
    }
}

fn api_status(
    status: u16,
    method: &str,
    path: &str,
    body: Option<&ErrorBody>,
    retry_after: Option<Duration>,
    request_id: Option<&str>,
    resource: Option<&Resource>,
) -> Status {
    // why: the resource the call addressed, not the path's first segment: an
    // unknown order on `POST /fulfillments` is a missing *order*, named by the id the
    // caller asked for.
    let (resource_type, resource_name) = match resource {
        Some(r) => (r.kind.to_owned(), r.id.clone()),
        None => resource_of(path),
    };
    let first = body.and_then(ErrorBody::first);
    let dr_code = first.and_then(|e| e.code.clone()).unwrap_or_default();
    let dr_type = body.and_then(|b| b.error_type.clone()).unwrap_or_default();
    let parameter = first.and_then(|e| e.parameter.clone()).unwrap_or_default();
    let dr_message = first.and_then(|e| e.text()).map(str::to_owned);

    let mut meta = HashMap::new();
    meta.insert("http_status".to_owned(), status.to_string());
    meta.insert("dr_type".to_owned(), dr_type.clone());
    meta.insert("dr_code".to_owned(), dr_code.clone());
    meta.insert("parameter".to_owned(), parameter.clone());
    meta.insert("dr_path".to_owned(), path.to_owned());
    if let Some(id) = request_id {
        meta.insert("upstream_request_id".to_owned(), id.to_owned());
    }
    let reason = if !dr_code.is_empty() {
        upper_snake(&dr_code)
    } else if !dr_type.is_empty() {
        upper_snake(&dr_type)
    } else {
        format!("UPSTREAM_HTTP_{status}")
    };
    let message =
        dr_message.unwrap_or_else(|| format!("Digital River answered {status} to {method} {path}"));

    match status {
        400 | 422 => bad_request(
            Some(message),
            &reason,
            meta,
            body.map(|b| b.errors.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    (
                        e.parameter.clone().unwrap_or_default(),
                        e.text().unwrap_or("invalid").to_owned(),
                    )
                })
                .collect(),
        ),
        401 => {
            tracing::error!("Digital River rejected the gateway's API key");
            status_with_info(
                Code::Internal,
                "Digital River rejected the gateway's API key; check the gateway configuration",
                "UPSTREAM_UNAUTHENTICATED",
                meta,
                |_| {},
            )
        }
        403 => status_with_info(Code::PermissionDenied, message, &reason, meta, |_| {}),
        404 => status_with_info(Code::NotFound, message.clone(), &reason, meta, |d| {
            d.set_resource_info(
                bounded(&resource_type, MAX_DETAIL_BYTES),
                bounded(&resource_name, MAX_DETAIL_BYTES),
                "",
                bounded(&message, MAX_DETAIL_BYTES),
            );
        }),
        405 | 406 => {
            tracing::error!(status, path = %crate::telemetry::capped(path), "DR refused the request's method or format: a gateway bug");
            status_with_info(Code::Internal, message, &reason, meta, |_| {})
        }
        408 | 504 => status_with_info(Code::DeadlineExceeded, message, &reason, meta, |_| {}),
        409 => {
            let subject = if parameter.is_empty() {
                resource_name
            } else {
                parameter.clone()
            };
            status_with_info(
                Code::FailedPrecondition,
                message.clone(),
                &reason,
                meta,
                |d| {
                    d.add_precondition_failure_violation(
                        bounded(&dr_code, MAX_DETAIL_BYTES),
                        bounded(&subject, MAX_DETAIL_BYTES),
                        bounded(&message, MAX_DETAIL_BYTES),
                    );
                },
            )
        }
        429 => status_with_info(Code::ResourceExhausted, message, &reason, meta, |d| {
            d.set_retry_info(retry_after);
            d.add_quota_failure_violation(
                "digitalriver.com/api-key",
                "Digital River rate limit reached (250 req/s live, 25 req/s test)",
            );
        }),
        500 => status_with_info(Code::Internal, message, &reason, meta, |_| {}),
        502 | 503 => status_with_info(Code::Unavailable, message, &reason, meta, |d| {
            if retry_after.is_some() {
                d.set_retry_info(retry_after);
            }
        }),
        _ => status_with_info(Code::Unknown, message, &reason, meta, |_| {}),
    }
}

/// `/fulfillments/ful_1` → (`fulfillment`, `ful_1`).
fn resource_of(path: &str) -> (String, String) {
    let mut segments = path.trim_matches('/').split('/');
    let collection = segments.next().unwrap_or_default();
    let id = segments.next_back().unwrap_or_default().to_owned();
    let resource_type = collection
        .strip_suffix('s')
        .unwrap_or(collection)
        .to_owned();
    (resource_type, id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digital_river::ErrorEntry;
    use crate::domain::FieldViolation;

    fn api(status: u16, code: Option<&str>, retry_after: Option<u64>) -> DrError {
        DrError::Api {
            status,
            method: "POST",
            path: "/fulfillments".into(),
            body: Some(Box::new(ErrorBody {
                error_type: Some("conflict".into()),
                errors: vec![ErrorEntry {
                    code: code.map(str::to_owned),
                    parameter: Some("orderId".into()),
                    message: Some("Resource '1' is fulfilled.".into()),
                    description: None,
                }],
            })),
            retry_after: retry_after.map(Duration::from_secs),
            request_id: Some("req-1".into()),
            resource: None,
        }
    }

    #[test]
    fn every_status_row_maps_to_its_code() {
        let rows = [
            (400, Code::InvalidArgument),
            (422, Code::InvalidArgument),
            (401, Code::Internal),
            (403, Code::PermissionDenied),
            (404, Code::NotFound),
            (405, Code::Internal),
            (406, Code::Internal),
            (408, Code::DeadlineExceeded),
            (409, Code::FailedPrecondition),
            (429, Code::ResourceExhausted),
            (500, Code::Internal),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::DeadlineExceeded),
            (418, Code::Unknown),
        ];
        for (http, code) in rows {
            let status = from_dr_error(&api(http, Some("x"), None));
            assert_eq!(status.code(), code, "HTTP {http}");
            let info = status
                .get_details_error_info()
                .expect("ErrorInfo on every status");
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.metadata.get("http_status"), Some(&http.to_string()));
        }
    }

    #[test]
    fn conflict_carries_reason_and_precondition_failure() {
        let status = from_dr_error(&api(409, Some("order_fulfilled"), None));
        assert_eq!(status.message(), "Resource '1' is fulfilled.");
        let info = status.get_details_error_info().unwrap();
        assert_eq!(info.reason, "ORDER_FULFILLED");
        assert_eq!(info.metadata["dr_code"], "order_fulfilled");
        assert_eq!(info.metadata["parameter"], "orderId");
        assert_eq!(info.metadata["upstream_request_id"], "req-1");
        let pf = status.get_details_precondition_failure().unwrap();
        assert_eq!(pf.violations[0].r#type, "order_fulfilled");
        assert_eq!(pf.violations[0].subject, "orderId");
    }

    #[test]
    fn unauthenticated_is_the_gateways_problem_not_the_callers() {
        let status = from_dr_error(&api(401, None, None));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "UPSTREAM_UNAUTHENTICATED"
        );
    }

    #[test]
    fn rate_limits_carry_retry_info_and_quota_failure() {
        let status = from_dr_error(&api(429, Some("too_many_requests"), Some(120)));
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_secs(120))
        );
        assert!(status.get_details_quota_failure().is_some());
    }

    #[test]
    fn lenient_bodies_still_map() {
        // DR's "Payment reauthorizations" page: no `type`, `description` instead of `message`
        let error = DrError::Api {
            status: 409,
            method: "POST",
            path: "/fulfillments".into(),
            body: Some(Box::new(ErrorBody {
                error_type: None,
                errors: vec![ErrorEntry {
                    code: Some("payment_authorization_failed".into()),
                    description: Some("The authorization failed.".into()),
                    ..Default::default()
                }],
            })),
            retry_after: None,
            request_id: None,
            resource: None,
        };
        let status = from_dr_error(&error);
        assert_eq!(status.message(), "The authorization failed.");
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "PAYMENT_AUTHORIZATION_FAILED"
        );
        // empty errors[] and no body at all
        let empty = DrError::Api {
            status: 503,
            method: "GET",
            path: "/charges/c1".into(),
            body: None,
            retry_after: None,
            request_id: None,
            resource: None,
        };
        let status = from_dr_error(&empty);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "UPSTREAM_HTTP_503"
        );
    }

    #[test]
    fn not_found_names_the_resource() {
        let error = DrError::Api {
            status: 404,
            method: "GET",
            path: "/charges/ch_9".into(),
            body: None,
            retry_after: None,
            request_id: None,
            resource: None,
        };
        let info = from_dr_error(&error).get_details_resource_info().unwrap();
        assert_eq!(
            (info.resource_type.as_str(), info.resource_name.as_str()),
            ("charge", "ch_9")
        );
    }

    #[test]
    fn not_found_names_the_resource_the_call_addressed_over_the_path() {
        // DR's 404 for an unknown order on `POST /fulfillments`: the path names no order.
        let error = DrError::Api {
            status: 404,
            method: "POST",
            path: "/fulfillments".into(),
            body: None,
            retry_after: None,
            request_id: None,
            resource: Some(Box::new(Resource::new("order", "999"))),
        };
        let info = from_dr_error(&error).get_details_resource_info().unwrap();
        assert_eq!(
            (info.resource_type.as_str(), info.resource_name.as_str()),
            ("order", "999")
        );
    }

    #[test]
    fn a_bad_request_keeps_twenty_violations_and_counts_the_rest() {
        let violations = (0..10_000)
            .map(|i| FieldViolation::new(format!("items[{i}]"), "set quantity"))
            .collect();
        let status = Status::from(ServiceError::InvalidArgument(violations));
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations.len(),
            MAX_VIOLATIONS
        );
        assert_eq!(
            details.error_info().unwrap().metadata["violations"],
            "10000"
        );
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(
            status.message().ends_with("(and 9980 more)"),
            "{}",
            status.message()
        );
        assert!(
            status.details().len() < 4096,
            "{} bytes of details",
            status.details().len()
        );
    }

    #[test]
    fn dr_error_bodies_cannot_grow_the_answer() {
        let long = "é".repeat(100_000);
        let error = DrError::Api {
            status: 400,
            method: "POST",
            path: "/fulfillments".into(),
            body: Some(Box::new(ErrorBody {
                error_type: Some(long.clone()),
                errors: (0..1000)
                    .map(|_| ErrorEntry {
                        code: Some(long.clone()),
                        parameter: Some(long.clone()),
                        message: Some(long.clone()),
                        description: None,
                    })
                    .collect(),
            })),
            retry_after: None,
            request_id: None,
            resource: None,
        };
        let status = from_dr_error(&error);
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(
            status.details().len() < 16 * 1024,
            "{} bytes",
            status.details().len()
        );
        for code in [404, 409] {
            let mut error = api(code, Some(&long), None);
            if let DrError::Api {
                body: Some(body), ..
            } = &mut error
            {
                body.errors[0].message = Some(long.clone());
            }
            let status = from_dr_error(&error);
            assert!(status.message().len() <= MAX_MESSAGE_BYTES);
            assert!(
                status.details().len() < 4096,
                "{code}: {} bytes",
                status.details().len()
            );
        }
    }

    #[test]
    fn upper_snake_handles_dr_codes() {
        assert_eq!(upper_snake("order_fulfilled"), "ORDER_FULFILLED");
        assert_eq!(upper_snake("failed-request"), "FAILED_REQUEST");
        assert_eq!(
            upper_snake("creditAmount_already_updated"),
            "CREDIT_AMOUNT_ALREADY_UPDATED"
        );
    }

    #[test]
    fn a_pending_outcome_is_unavailable_with_retry_info_and_the_request_id() {
        let status = Status::from(ServiceError::OutcomePending {
            request_id: "ship-1".into(),
            retry_after: Duration::from_millis(1500),
            cause: Some("Digital River did not answer POST /fulfillments".into()),
        });
        assert_eq!(status.code(), Code::Unavailable);
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "FULFILLMENT_OUTCOME_PENDING");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["request_id"], "ship-1");
        assert_eq!(
            details.retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(1500))
        );
        assert!(status.message().contains("did not answer"));
    }

    #[test]
    fn refused_calls_say_why_and_which_method_but_not_who_may() {
        use crate::auth::{Caller, DenialReason};
        let rows = [
            (DenialReason::CredentialsRequired, Code::Unauthenticated),
            (DenialReason::InvalidToken, Code::Unauthenticated),
            (
                DenialReason::CertificateWithoutIdentity,
                Code::Unauthenticated,
            ),
            (DenialReason::CallerNotInPolicy, Code::PermissionDenied),
            (DenialReason::MethodNotAllowed, Code::PermissionDenied),
        ];
        for (reason, code) in rows {
            let status = Status::from(Denial {
                reason,
                method: "/digitalriver.gateway.v1.ChargeService/CaptureItems".into(),
                caller: Caller::new(None, "secret-rule-name"),
            });
            assert_eq!(status.code(), code, "{reason:?}");
            let info = status.get_details_error_info().unwrap();
            assert_eq!(info.reason, reason.as_str());
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(
                info.metadata,
                HashMap::from([(
                    "method".to_owned(),
                    "/digitalriver.gateway.v1.ChargeService/CaptureItems".to_owned()
                )])
            );
            assert!(!status.message().contains("secret-rule-name"));
        }
    }

    #[test]
    fn an_unavailable_dependency_says_when_to_retry() {
        for status in [
            Status::from(ServiceError::Unavailable("bus down".into())),
            event_log_unavailable("down"),
            Status::from(StreamEnd::EventLogFailed),
            Status::from(StreamEnd::ConnectionAged),
            Status::from(StreamEnd::GroupStoreUnavailable),
            Status::from(GroupError::Store(crate::events::groups::StoreError(
                "not connected".into(),
            ))),
            Status::from(GroupError::Retry),
        ] {
            assert_eq!(status.code(), Code::Unavailable);
            assert!(status.get_details_error_info().is_some());
            assert!(
                status.get_details_retry_info().is_some(),
                "{status:?} tells when to retry"
            );
        }
        let aged = Status::from(StreamEnd::ConnectionAged);
        assert_eq!(
            aged.get_details_error_info().unwrap().reason,
            "CONNECTION_AGED"
        );
    }

    #[test]
    fn an_expired_cursor_carries_error_info_and_the_oldest_cursor() {
        let status = cursor_expired("abc", false);
        assert_eq!(status.code(), Code::OutOfRange);
        let details = status.get_error_details();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "CURSOR_EXPIRED");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["oldest_cursor"], "abc");
    }
}
