//! The gRPC listeners: accept connections (plaintext, or TLS through
//! [`crate::tls`]) and serve each over HTTP/2 with the configured keepalive and
//! stream limits, age them, and drain them on shutdown. The main listener and the
//! plaintext health-only one (for probes that cannot speak TLS) both run [`serve`].
//!
//! # The layers
//! Every request passes, outermost first: error → status recovery, the client's
//! `grpc-timeout` (as tonic's server enforces it), the telemetry layers
//! ([`crate::telemetry`]: the server span and request id, the access log, the RPC
//! metrics), the request message size limit ([`super::message_limit`]), then — on
//! the main listener — the authorization layer ([`crate::auth::AuthLayer`]), then
//! the service. So a refused call is traced, logged (with the caller the
//! authorization layer found), counted and bounded like any other, and nothing
//! reaches a handler before the caller is known.
//!
//! # TLS
//! With a [`ServerTls`], each accepted connection completes its handshake in a task
//! of its own (with the configuration in force at that moment, so a reload applies
//! to new connections while open ones keep theirs). At most
//! [`defaults::TLS_MAX_HANDSHAKES`](crate::defaults::TLS_MAX_HANDSHAKES) run at once:
//! the listener takes a permit before it accepts, so further clients wait in the
//! kernel's backlog rather than in memory. A failed or slow handshake
//! ([`defaults::TLS_HANDSHAKE_TIMEOUT`](crate::defaults::TLS_HANDSHAKE_TIMEOUT))
//! drops the connection before any gRPC is read.
//!
//! # Connection age
//! Long-lived HTTP/2 connections pin a client to the replica it first reached, so
//! scaling out would not move load. After `max_connection_age` (±10 % jitter, so
//! connections opened together do not all close together) a connection is closed
//! gracefully: HTTP/2 GOAWAY, so the client opens a new one (through the Service,
//! possibly to another replica) for its next calls while the calls in flight finish.
//! Subscribe and Consume streams never finish on their own, so those on an aged
//! connection end with UNAVAILABLE (`CONNECTION_AGED`): subscribers resume from
//! their last cursor, group members reconnect (what they held unacknowledged goes
//! to the group's other members at once); whatever is still open after
//! `max_connection_age_grace` is closed.
//!
//! tonic's own `max_connection_age` does not do this: with a grace period it sends
//! no GOAWAY and closes the connection outright at age + grace.
//!
//! # Shutdown
//! As tonic's server does: once `shutdown` resolves the listener closes, every
//! connection gets GOAWAY, and [`serve`] returns when the last one has closed (the
//! caller bounds that with its drain deadline).
//!
//! Every request also carries the connection's info as tonic's own server puts it
//! there (tonic's `Connected`): `TcpConnectInfo` on plaintext connections,
//! `TlsConnectInfo<TcpConnectInfo>` on TLS ones, with the client's verified
//! certificates — so `Request::remote_addr` and `Request::peer_certs` work, and the
//! authorization layer finds the certificates where it reads them. Accepted
//! sockets get `TCP_NODELAY`.
//!
//! # Messages
//! [`MessageSettings`] is what every service applies ([`with_messages!`]): requests
//! compressed with gzip, deflate or zstd are accepted; responses are compressed with
//! one the client lists in `grpc-accept-encoding` (unless turned off); message
//! sizes are bounded both ways.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::codec::{CompressionEncoding, EnabledCompressionEncodings};
use tonic::service::{RecoverErrorLayer, Routes};
use tonic::transport::server::Connected;
use tower::{Service, ServiceBuilder};

use super::message_limit::MessageLimitLayer;
use super::request::parse_grpc_timeout;
use crate::auth::AuthLayer;
use crate::defaults;
use crate::telemetry::{AccessLogLayer, RpcMetricsLayer, RpcSpanLayer};
use crate::tls::ServerTls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every compression the gateway accepts, and offers for responses.
pub const ENCODINGS: [CompressionEncoding; 3] = [
    CompressionEncoding::Gzip,
    CompressionEncoding::Zstd,
    CompressionEncoding::Deflate,
];

/// Compression and message size limits every service applies.
#[derive(Debug, Clone, Copy)]
pub struct MessageSettings {
    /// Compressions accepted on requests.
    pub accept: EnabledCompressionEncodings,
    /// Compressions used for responses when the client accepts one.
    pub send: EnabledCompressionEncodings,
    /// Largest request message, bytes (after decompression).
    pub max_receive_message_size: usize,
    /// Largest response message, bytes (before compression).
    pub max_send_message_size: usize,
}

impl MessageSettings {
    /// Every [`ENCODINGS`] accepted; sent too when `compress_responses`.
    pub fn new(
        max_receive_message_size: usize,
        max_send_message_size: usize,
        compress_responses: bool,
    ) -> Self {
        let mut accept = EnabledCompressionEncodings::default();
        for encoding in ENCODINGS {
            accept.enable(encoding);
        }
        Self {
            accept,
            send: if compress_responses {
                accept
            } else {
                EnabledCompressionEncodings::default()
            },
            max_receive_message_size,
            max_send_message_size,
        }
    }
}

impl Default for MessageSettings {
    fn default() -> Self {
        Self::new(
            crate::defaults::GRPC_MAX_RECEIVE_MESSAGE_SIZE,
            crate::defaults::GRPC_MAX_SEND_MESSAGE_SIZE,
            true,
        )
    }
}

/// Applies a [`MessageSettings`] to a generated tonic server (they share no trait
/// for it).
macro_rules! with_messages {
    ($server:expr, $settings:expr) => {{
        let settings: &$crate::grpc::server::MessageSettings = &$settings;
        let mut server = $server
            .max_decoding_message_size(settings.max_receive_message_size)
            .max_encoding_message_size(settings.max_send_message_size);
        for encoding in $crate::grpc::server::ENCODINGS {
            if settings.accept.is_enabled(encoding) {
                server = server.accept_compressed(encoding);
            }
            if settings.send.is_enabled(encoding) {
                server = server.send_compressed(encoding);
            }
        }
        server
    }};
}
pub(crate) use with_messages;

/// How the listener treats each connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Most concurrent calls (streams included) on one connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval on idle connections.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// Close gracefully after this long (±10 %); `None`: never.
    pub max_connection_age: Option<Duration>,
    /// After the age: time in-flight calls get before the connection is closed.
    pub max_connection_age_grace: Duration,
    /// Largest request message as sent (compressed or not): a larger one is
    /// refused when its frame header arrives ([`MessageLimitLayer`]). Decompressed
    /// messages are held to the same bound by each service's
    /// `max_decoding_message_size` ([`MessageSettings`]).
    pub max_request_message_size: usize,
}

/// Put into every request's extensions: fires when the request's connection has
/// reached its maximum age, so calls that would never end on their own (Subscribe,
/// Consume) can end cleanly and let the client move on.
#[derive(Debug, Clone)]
pub struct ConnectionAge(CancellationToken);

impl ConnectionAge {
    /// A handle that never fires (requests served without [`serve`]).
    pub fn never() -> Self {
        Self(CancellationToken::new())
    }

    /// Resolves once the connection has reached its maximum age.
    pub fn aged(&self) -> WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }
}

/// Serves `routes` on `listener` until `shutdown` resolves, then drains; see the
/// module docs. With `tls`, every connection is TLS; with `auth`, every call passes
/// the authorization layer first; `metrics` records the RPC metrics (when on).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    routes: Routes,
    auth: Option<AuthLayer>,
    metrics: RpcMetricsLayer,
    settings: ConnectionSettings,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let service = ServiceBuilder::new()
        .layer(RecoverErrorLayer::new())
        .layer_fn(ClientDeadline)
        // why: outside authorization, so the span, the request id, the access line
        // and the metrics cover refused calls too, and see the caller it found. The
        // access line is written outside the RPC's span: it carries the span's
        // fields itself, and the JSON formatter re-reads a span's fields for every
        // line in it (crates/dr-gateway/benches/README.md, Optimisation 9).
        .layer(AccessLogLayer::new())
        .layer(RpcSpanLayer::new())
        .layer(metrics)
        // why: before any service reads a byte of an oversized message (and before
        // the caller is checked, so a refused caller cannot make it buffer either).
        .layer(MessageLimitLayer::new(settings.max_request_message_size))
        .option_layer(auth)
        .service(routes.prepare());
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let handshakes = Arc::new(Semaphore::new(defaults::TLS_MAX_HANDSHAKES));
    // Each connection task holds a receiver: the sender's `closed()` tells when
    // the last one has finished.
    let (drain_tx, drain_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // why: a permit before accepting bounds the TLS handshakes in flight; the
        // kernel's backlog holds further connections meanwhile.
        let permit = match &tls {
            None => None,
            Some(_) => tokio::select! {
                () = &mut shutdown => break,
                permit = handshakes.clone().acquire_owned() => permit.ok(),
            },
        };
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a gRPC connection failed");
                    // why: errors such as EMFILE repeat at once; pausing keeps the
                    // loop from spinning while they last.
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // why: with Nagle on, a stream event written while the previous one is
        // unacknowledged waits for the client's delayed ACK (~40 ms on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let aged = CancellationToken::new();
        let connection = Connection {
            service: service.clone(),
            age: ConnectionAge(aged.clone()),
            http2: http2.clone(),
            aging: Aging {
                age: settings.max_connection_age.map(jittered),
                grace: settings.max_connection_age_grace,
                aged,
            },
            drain: drain_rx.clone(),
        };
        match &tls {
            None => {
                tokio::spawn(connection.serve(stream));
            }
            Some(tls) => {
                tokio::spawn(connection.serve_tls(stream, remote, tls.clone(), permit));
            }
        }
    }
    // Stop accepting (the listening socket closes), tell every connection, wait.
    drop(listener);
    drop(drain_rx);
    let _ = drain_tx.send(true);
    drain_tx.closed().await;
    Ok(())
}

/// Pause after an accept error (see the loop in [`serve`]).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The age with ±10 % jitter.
fn jittered(age: Duration) -> Duration {
    age.mul_f64(rand::random_range(0.9..1.1))
}

/// When one connection ages, and what tells its requests.
struct Aging {
    /// After this long, GOAWAY; `None`: never.
    age: Option<Duration>,
    /// After the age, time until the connection is closed.
    grace: Duration,
    /// Cancelled at the age (the requests' [`ConnectionAge`]).
    aged: CancellationToken,
}

/// One accepted connection, before it is served.
struct Connection<S> {
    /// The layered routes, shared by all connections.
    service: S,
    /// Handed to each request (Subscribe ends when it fires).
    age: ConnectionAge,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    aging: Aging,
    /// Turns true when the listener shuts down.
    drain: watch::Receiver<bool>,
}

impl<S, B> Connection<S>
where
    S: Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Serves a plaintext connection.
    async fn serve(self, stream: TcpStream) {
        self.serve_io(stream).await;
    }

    /// Completes the TLS handshake (releasing `permit` when it is over), then serves
    /// the connection; a shutdown meanwhile drops it.
    async fn serve_tls(
        mut self,
        stream: TcpStream,
        remote: std::net::SocketAddr,
        tls: Arc<ServerTls>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let handshake = tokio::select! {
            result = tls.handshake(stream) => result,
            _ = self.drain.wait_for(|draining| *draining) => return,
        };
        drop(permit);
        match handshake {
            Ok(stream) => self.serve_io(stream).await,
            Err(e) => tracing::debug!(peer = %remote, error = %e, "TLS connection refused"),
        }
    }

    /// Serves HTTP/2 on `io` until the client leaves, the connection has aged (and
    /// its grace passed) or the listener drains; each request gets `io`'s connect
    /// info and the connection's [`ConnectionAge`].
    async fn serve_io<I>(self, io: I)
    where
        I: Connected + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            service,
            age,
            http2,
            aging,
            drain,
        } = self;
        let service = ConnectionService {
            inner: service,
            info: io.connect_info(),
            age,
        };
        serve_connection(io, service, http2, aging, drain).await;
    }
}

async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    aging: Aging,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<BoxError> + Send,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Aging { age, grace, aged } = aging;
    let connection = http2.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    tokio::pin!(connection);
    let reached_age = async {
        match age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(reached_age);
    let mut closing = false;
    let mut close_by: Option<tokio::time::Instant> = None;
    loop {
        let forced = async {
            match close_by {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = &mut connection => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "gRPC connection ended with an error");
                }
                return;
            }
            () = &mut reached_age, if !closing => {
                tracing::debug!("gRPC connection reached its maximum age; closing it gracefully");
                closing = true;
                aged.cancel();
                connection.as_mut().graceful_shutdown();
                close_by = Some(tokio::time::Instant::now() + grace);
            }
            changed = drain.changed(), if !closing => {
                if changed.is_err() || *drain.borrow() {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = forced => {
                tracing::debug!("gRPC connection still busy after the grace period; closing it");
                return;
            }
        }
    }
}

// === impl ConnectionService ===

/// Adds the connection's info (`I`: tonic's `TcpConnectInfo`, or
/// `TlsConnectInfo<TcpConnectInfo>` with the client's certificates) and its
/// [`ConnectionAge`] to each request.
#[derive(Clone)]
struct ConnectionService<S, I> {
    inner: S,
    info: I,
    age: ConnectionAge,
}

impl<S, I, B> Service<http::Request<B>> for ConnectionService<S, I>
where
    S: Service<http::Request<B>> + Clone,
    I: Clone + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.info.clone());
        req.extensions_mut().insert(self.age.clone());
        self.inner.call(req)
    }
}

// === impl ClientDeadline ===

/// Ends a call when the client's `grpc-timeout` passes, as tonic's own server does
/// (the handler is dropped and the client hears CANCELLED "Timeout expired").
#[derive(Debug, Clone)]
struct ClientDeadline<S>(S);

impl<S, B> Service<http::Request<B>> for ClientDeadline<S>
where
    S: Service<http::Request<B>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(|never| match never {})
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let call = self.0.call(req);
        Box::pin(async move {
            match timeout {
                None => call.await.map_err(|never| match never {}),
                Some(timeout) => match tokio::time::timeout(timeout, call).await {
                    Ok(result) => result.map_err(|never| match never {}),
                    Err(_) => Err(Box::new(tonic::TimeoutExpired(())) as BoxError),
                },
            }
        })
    }
}
