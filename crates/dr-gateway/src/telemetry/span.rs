//! [`RpcSpanLayer`]: the outermost layer around the gRPC routes. For every RPC it
//!
//! - takes the caller's `x-request-id` or generates one ([`RequestId`]), puts it in
//!   the request extensions and returns it in the response headers;
//! - opens the server span `grpc.server` (OpenTelemetry kind SERVER, named
//!   `package.Service/Method`, with the `rpc.*` attributes), a child of the caller's
//!   W3C `traceparent` when traces are exported;
//! - runs the call inside that span and with the [`RequestContext`] that Digital
//!   River calls read, and keeps the span open until the response body — a whole
//!   stream — has ended, recording the status code on it.
//!
//! The layers inside it (access log, metrics) observe the body within the span, so
//! their lines carry the span's fields and are attached to it as events.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tower::{Layer, Service};
use tracing::{field, Instrument as _, Span};

use super::context::{RequestContext, RequestId, TraceHeaders, REQUEST_ID_HEADER};
use super::otel;
use super::rpc::{self, Method, ObservedBody, RpcEnd, RpcObserver};

/// Opens the server span and sets the request id of every RPC; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpanLayer;

impl RpcSpanLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

/// The service [`RpcSpanLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for RpcSpan<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<InSpan<ObservedBody<ResBody, SpanStatus>>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = Method::of(request.uri().path());
        let request_id = RequestId::of_request(&mut request);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = method.full_name,
            otel.kind = "server",
            otel.status_code = field::Empty,
            rpc.system = "grpc",
            rpc.service = method.service,
            rpc.method = method.name,
            rpc.grpc.status_code = field::Empty,
            request_id = %request_id,
        );
        if otel::enabled() {
            otel::set_parent_from_headers(&span, request.headers());
        }
        let context = RequestContext {
            request_id: request_id.clone(),
            caller_trace: TraceHeaders::from_headers(request.headers()),
            span: span.clone(),
        };
        let response = {
            let _entered = span.enter();
            context.clone().sync_scope(|| self.inner.call(request))
        };
        Box::pin(
            context
                .scope(async move {
                    let mut response = response.await?;
                    response
                        .headers_mut()
                        .insert(REQUEST_ID_HEADER, request_id.header_value().clone());
                    let span = Span::current();
                    let status = SpanStatus { span: span.clone() };
                    Ok(ObservedBody::wrap(response, status).map(|body| InSpan {
                        span,
                        inner: Some(body),
                    }))
                })
                .instrument(span),
        )
    }
}

/// Records how the RPC ended on its span.
#[derive(Debug)]
pub struct SpanStatus {
    span: Span,
}

impl RpcObserver for SpanStatus {
    fn on_end(&mut self, end: RpcEnd<'_>) {
        let code = end.code as i32;
        // why: one record per span, not one per field: the JSON log formatter re-reads
        // and re-writes all of a span's fields on every record (~25k instructions
        // each, crates/dr-gateway/benches/README.md).
        if rpc::is_server_error(end.code) {
            tracing::record_all!(
                self.span,
                rpc.grpc.status_code = code,
                otel.status_code = "ERROR"
            );
        } else if end.code == Code::Ok {
            tracing::record_all!(
                self.span,
                rpc.grpc.status_code = code,
                otel.status_code = "OK"
            );
        } else {
            self.span.record("rpc.grpc.status_code", code);
        }
    }
}

/// A response body polled (and dropped) inside the RPC's span, which it keeps open.
#[derive(Debug)]
pub struct InSpan<B> {
    span: Span,
    /// `None` only while dropping.
    inner: Option<B>,
}

impl<B> Body for InSpan<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        match &mut this.inner {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B> Drop for InSpan<B> {
    fn drop(&mut self) {
        // why: an RPC cut off ends when its body is dropped; the layers inside log and
        // count that then, and their lines belong in this span.
        let _entered = self.span.enter();
        self.inner.take();
    }
}
