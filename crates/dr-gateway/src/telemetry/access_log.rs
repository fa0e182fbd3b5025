//! [`AccessLogLayer`]: one line per RPC when it ends (a stream: when the stream
//! ends), target `dr_gateway::access`, message `rpc`:
//!
//! `grpc.service`, `grpc.method`, `grpc.code` (`OK`, `NotFound`, …), `duration_ms`,
//! `peer`, `request_id`, `caller` (identity, or `anonymous`), `policy` (the rule that
//! admitted it), `user_agent`; for errors `grpc.message`; for streams the messages
//! sent (and received, for client streams).
//!
//! The level follows who has to act:
//!
//! | level | codes |
//! |---|---|
//! | INFO | OK, CANCELLED, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE — the caller's request, answered as designed |
//! | WARN | UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE — refused, rate-limited, out of time, or a dependency (DR, NATS) down: worth a look when it piles up |
//! | ERROR | UNKNOWN, INTERNAL, UNIMPLEMENTED, DATA_LOSS — the gateway failed |
//!
//! Successful health checks (`grpc.health.v1.Health`, what Kubernetes probes every few
//! seconds) log at DEBUG: they would otherwise outnumber real calls.
//!
//! Every value from outside is capped ([`capped`]): a megabyte id or message
//! cannot make a megabyte line.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Code;
use tower::{Layer, Service};

use super::capped;
use super::context::RequestId;
use super::rpc::{self, CountedBody, Method, ObservedBody, RpcEnd, RpcObserver};
use crate::auth::identity::ANONYMOUS;
use crate::auth::Caller;

/// The `tracing` target of access log lines.
pub const TARGET: &str = "dr_gateway::access";

/// The standard health service, whose successful checks log at DEBUG.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Logs every RPC once it ends; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer;

impl AccessLogLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog { inner }
    }
}

/// The service [`AccessLogLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for AccessLog<S>
where
    S: Service<http::Request<CountedBody<B>>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody, Line>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = Method::of(request.uri().path());
        let peer = peer_of(request.extensions());
        let request_id = RequestId::of_request(&mut request);
        let user_agent = request
            .headers()
            .get(http::header::USER_AGENT)
            .map(|v| capped(&String::from_utf8_lossy(v.as_bytes())).to_string());
        let received = method.client_streams().then(|| Arc::new(AtomicU64::new(0)));
        let request = request
            .map(|body| CountedBody::new(body, received.clone().map(metrics::Counter::from_arc)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let caller = Caller::from_extensions(response.extensions()).cloned();
            let line = Line {
                started,
                method,
                peer,
                request_id,
                user_agent,
                caller,
                sent: 0,
                received,
            };
            Ok(ObservedBody::wrap(response, line))
        })
    }
}

/// What the line of one RPC says; written when it ends.
#[derive(Debug)]
pub struct Line {
    started: Instant,
    method: &'static Method,
    peer: Option<std::net::SocketAddr>,
    request_id: RequestId,
    user_agent: Option<String>,
    caller: Option<Caller>,
    sent: u64,
    received: Option<Arc<AtomicU64>>,
}

impl RpcObserver for Line {
    fn counts_messages(&self) -> bool {
        self.method.server_streams()
    }

    fn on_message(&mut self) {
        self.sent += 1;
    }

    fn on_end(&mut self, end: RpcEnd<'_>) {
        let duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let caller = self
            .caller
            .as_ref()
            .and_then(Caller::identity)
            .map_or(ANONYMOUS, |identity| identity.as_str());
        let policy = self.caller.as_ref().map_or("-", Caller::policy_name);
        let peer = self
            .peer
            .map_or_else(|| "-".to_owned(), |peer| peer.to_string());
        let request_id = self.request_id.as_str();
        let user_agent = self.user_agent.as_deref().unwrap_or("-");
        let message = if end.code == Code::Ok {
            None
        } else {
            end.message()
        };
        let message = message.as_deref().map(capped);
        let sent = self.method.server_streams().then_some(self.sent);
        let received = self
            .received
            .as_ref()
            .map(|count| count.load(Ordering::Relaxed));
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: TARGET,
                    $level,
                    grpc.service = self.method.service,
                    grpc.method = self.method.name,
                    grpc.code = rpc::code_name(end.code),
                    duration_ms,
                    peer,
                    request_id,
                    caller = %capped(caller),
                    policy = %capped(policy),
                    user_agent,
                    grpc.message = message.map(tracing::field::display),
                    messages_sent = sent,
                    messages_received = received,
                    "rpc"
                )
            };
        }
        let probe = self.method.service == HEALTH_SERVICE && end.code == Code::Ok;
        match if probe {
            tracing::Level::DEBUG
        } else {
            level(end.code)
        } {
            tracing::Level::ERROR => line!(tracing::Level::ERROR),
            tracing::Level::WARN => line!(tracing::Level::WARN),
            tracing::Level::DEBUG => line!(tracing::Level::DEBUG),
            _ => line!(tracing::Level::INFO),
        }
    }
}

/// The access log level of an RPC that ended with `code`; see the module docs.
pub fn level(code: Code) -> tracing::Level {
    match code {
        Code::Unknown | Code::Internal | Code::Unimplemented | Code::DataLoss => {
            tracing::Level::ERROR
        }
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Unavailable => tracing::Level::WARN,
        Code::Ok
        | Code::Cancelled
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange => tracing::Level::INFO,
    }
}

/// The client's address, over plaintext or TLS.
fn peer_of(extensions: &http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_info_or_warn_and_server_errors_error() {
        use tracing::Level;
        assert_eq!(level(Code::Ok), Level::INFO);
        assert_eq!(level(Code::NotFound), Level::INFO);
        assert_eq!(level(Code::InvalidArgument), Level::INFO);
        assert_eq!(level(Code::FailedPrecondition), Level::INFO);
        assert_eq!(level(Code::PermissionDenied), Level::WARN);
        assert_eq!(level(Code::Unavailable), Level::WARN);
        assert_eq!(level(Code::Internal), Level::ERROR);
        assert_eq!(level(Code::Unknown), Level::ERROR);
    }
}
