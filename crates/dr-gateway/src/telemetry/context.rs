//! The RPC a task works for: its request id and the caller's W3C trace headers,
//! set by [`RpcSpanLayer`](super::RpcSpanLayer) for the handler's future and carried
//! into every Digital River request it makes ([`dr_request_headers`]).
//!
//! A task-local rather than a parameter: every handler, the fulfiller and the DR
//! client would otherwise pass it through each call. A task spawned for an RPC (the
//! fulfiller's attempts) takes it along with [`in_current_context`].

use std::future::Future;

use http::{HeaderMap, HeaderName, HeaderValue};
use tracing::Instrument as _;

use super::otel;
use crate::defaults::REQUEST_ID_MAX_BYTES;

/// The request-id header: taken from the caller, returned in the response, sent to DR.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// W3C Trace Context: the caller's span.
pub const TRACEPARENT_HEADER: HeaderName = HeaderName::from_static("traceparent");
/// W3C Trace Context: vendor-specific trace state.
pub const TRACESTATE_HEADER: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` passed on (what W3C Trace Context asks every participant to
/// propagate at least).
const TRACESTATE_MAX_BYTES: usize = 512;

/// An RPC's request id: the caller's `x-request-id` when it is 1 to
/// [`REQUEST_ID_MAX_BYTES`] characters of `A-Z a-z 0-9 . _ ~ : / + = @ -`, else a
/// generated UUID. Safe to log and to send as a header as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The caller's id from `headers`, if it is usable.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = headers.get(&REQUEST_ID_HEADER)?;
        let bytes = value.as_bytes();
        let usable = (1..=REQUEST_ID_MAX_BYTES).contains(&bytes.len())
            && bytes.iter().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'.' | b'_' | b'~' | b':' | b'/' | b'+' | b'=' | b'@' | b'-'
                    )
            });
        usable.then(|| Self(value.clone()))
    }

    /// The id of `request`: the one an outer layer settled on, else the caller's when
    /// it is usable, else a new one. Kept in the request's extensions, so every layer
    /// (the access line, the span, the handler) sees the same id.
    pub fn of_request<B>(request: &mut http::Request<B>) -> Self {
        if let Some(id) = request.extensions().get::<Self>() {
            return id.clone();
        }
        let id = Self::from_headers(request.headers()).unwrap_or_else(Self::generate);
        request.extensions_mut().insert(id.clone());
        id
    }

    /// A new random id (a UUID).
    pub fn generate() -> Self {
        let id = crate::random_id::uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        let text = id.hyphenated().encode_lower(&mut buf);
        // A UUID is always a valid header value.
        Self(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-")))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Validated or generated as visible ASCII, so this never falls back.
        self.0.to_str().unwrap_or("-")
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller's `traceparent` (and `tracestate`), when well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    traceparent: HeaderValue,
    tracestate: Option<HeaderValue>,
}

impl TraceHeaders {
    /// The trace headers in `headers`, if `traceparent` is a valid W3C version-00
    /// header; a `tracestate` longer than 512 bytes or not visible ASCII is dropped.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let traceparent = headers.get(&TRACEPARENT_HEADER)?;
        if !is_valid_traceparent(traceparent.as_bytes()) {
            return None;
        }
        let tracestate = headers.get(&TRACESTATE_HEADER).filter(|v| {
            v.len() <= TRACESTATE_MAX_BYTES && v.as_bytes().iter().all(|b| (0x20..0x7f).contains(b))
        });
        Some(Self {
            traceparent: traceparent.clone(),
            tracestate: tracestate.cloned(),
        })
    }

    /// `traceparent` as text.
    pub fn traceparent(&self) -> &str {
        self.traceparent.to_str().unwrap_or_default()
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
fn is_valid_traceparent(value: &[u8]) -> bool {
    let hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |part: &[u8]| part.iter().any(|b| *b != b'0');
    value.len() == 55
        && &value[..3] == b"00-"
        && value[35] == b'-'
        && value[52] == b'-'
        && hex(&value[3..35])
        && hex(&value[36..52])
        && hex(&value[53..55])
        && nonzero(&value[3..35])
        && nonzero(&value[36..52])
}

/// What a task working for an RPC knows about it.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The RPC's request id.
    pub request_id: RequestId,
    /// The caller's W3C trace headers, passed on to DR as they are while the gateway
    /// exports no traces of its own (with tracing on, DR gets the gateway's client
    /// span as parent instead).
    pub caller_trace: Option<TraceHeaders>,
    /// The RPC's server span.
    pub span: tracing::Span,
}

tokio::task_local! {
    static CURRENT: RequestContext;
}

impl RequestContext {
    /// The context of the RPC the current task works for, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `future` with this context.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }

    /// Runs `f` with this context (for the synchronous part of a service call).
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT.sync_scope(self, f)
    }
}

/// `future` with the current span and request context, for a task spawned on
/// behalf of an RPC: its DR calls then carry the RPC's request id and belong to
/// its trace.
pub fn in_current_context<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let future = future.instrument(tracing::Span::current());
    let context = RequestContext::current();
    async move {
        match context {
            // why: the server span is entered around the current (a handler's) span,
            // so spans of the task find it among their ancestors even where the
            // handler's span is filtered out (the trace exporter leaves it out).
            Some(context) => {
                let server = context.span.clone();
                context.scope(future).instrument(server).await
            }
            None => future.await,
        }
    }
}

/// The headers a Digital River request carries for the RPC the current task works
/// for: `x-request-id`, and `traceparent` / `tracestate` — the current span's
/// (the DR client span) when traces are exported, else the caller's as they came.
pub fn dr_request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let context = RequestContext::current();
    if let Some(context) = &context {
        headers.insert(REQUEST_ID_HEADER, context.request_id.header_value().clone());
    }
    if otel::enabled() {
        otel::inject_current_span(&mut headers);
    } else if let Some(trace) = context.and_then(|c| c.caller_trace) {
        headers.insert(TRACEPARENT_HEADER, trace.traceparent);
        if let Some(state) = trace.tracestate {
            headers.insert(TRACESTATE_HEADER, state);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_callers_request_id_is_kept_when_it_is_plain() {
        let id = RequestId::from_headers(&headers(&[("x-request-id", "shop-42:ab/c")])).unwrap();
        assert_eq!(id.as_str(), "shop-42:ab/c");
    }

    #[test]
    fn a_long_or_strange_request_id_is_not_taken() {
        for bad in [
            "",
            "a b",
            "x\"y",
            "<script>",
            &"a".repeat(REQUEST_ID_MAX_BYTES + 1),
        ] {
            assert_eq!(
                RequestId::from_headers(&headers(&[("x-request-id", bad)])),
                None,
                "{bad:?}"
            );
        }
        let generated = RequestId::generate();
        assert_eq!(generated.as_str().len(), 36);
        assert_ne!(generated, RequestId::generate());
    }

    #[test]
    fn only_a_well_formed_traceparent_is_passed_on() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let trace = TraceHeaders::from_headers(&headers(&[
            ("traceparent", good),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]))
        .unwrap();
        assert_eq!(trace.traceparent(), good);
        assert!(trace.tracestate.is_some());
        for bad in [
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(
                TraceHeaders::from_headers(&headers(&[("traceparent", bad)])),
                None,
                "{bad}"
            );
        }
        let long_state = "a=".to_owned() + &"b".repeat(TRACESTATE_MAX_BYTES);
        let trace = TraceHeaders::from_headers(&headers(&[
            ("traceparent", good),
            ("tracestate", &long_state),
        ]))
        .unwrap();
        assert_eq!(trace.tracestate, None);
    }

    #[tokio::test]
    async fn dr_requests_carry_the_rpcs_request_id_and_the_callers_trace() {
        assert!(dr_request_headers().is_empty(), "outside an RPC: nothing");
        let context = RequestContext {
            request_id: RequestId::from_headers(&headers(&[("x-request-id", "r-1")])).unwrap(),
            caller_trace: TraceHeaders::from_headers(&headers(&[(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )])),
            span: tracing::Span::none(),
        };
        let sent = context
            .scope(async {
                // a task spawned for the RPC keeps its context
                tokio::spawn(in_current_context(async { dr_request_headers() }))
                    .await
                    .unwrap()
            })
            .await;
        assert_eq!(sent["x-request-id"], "r-1");
        assert_eq!(
            sent["traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
    }
}
