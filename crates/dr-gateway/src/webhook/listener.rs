//! The webhook listener's connections: how many may be open, and the timeouts a
//! slow or idle client cannot outlast. (Request bodies are bounded by the handler:
//! a size limit checked against `Content-Length` before reading, and a read timeout.)
//!
//! - **Connections.** At most `max_connections` are open at once. At the cap, the
//!   listener stops accepting until one closes: new connections wait in the
//!   kernel's backlog, as with Go's `netutil.LimitListener`.
//! - **Idle.** A connection that sends nothing for `idle_timeout`, before its first
//!   request or after an answer (keep-alive), is closed. It is longer than the idle
//!   timeouts of the proxies in front (ingress-nginx and cloud load balancers keep
//!   idle upstream connections for 60 s), so they close first and never reuse a
//!   connection the gateway is closing.
//! - **Request head.** Once the first byte of a request arrived, its request line
//!   and headers must follow within `header_timeout` (slow-header attacks).
//!
//! A connection's [`ConnectionPhase`] says which deadline applies; the service
//! [`TrackPhase`] makes for each connection moves it to "busy" while a request is
//! handled (no read deadline: the handler bounds the body) and back to "idle" after
//! the answer.
//! A read that misses its deadline fails with `TimedOut`, which closes the
//! connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::defaults;

/// Connection limits of the webhook listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest a connection may stay silent before a request or between requests.
    pub idle_timeout: Duration,
    /// Longest from a request's first byte to the end of its headers.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: defaults::WEBHOOK_MAX_CONNECTIONS,
            idle_timeout: defaults::WEBHOOK_IDLE_TIMEOUT,
            header_timeout: defaults::WEBHOOK_HEADER_TIMEOUT,
        }
    }
}

/// A TCP listener that holds at most [`ConnectionLimits::max_connections`]
/// connections and hands out [`GuardedStream`]s.
#[derive(Debug)]
pub struct GuardedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
}

impl GuardedListener {
    /// Guards `inner` with `limits`.
    pub fn new(inner: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        }
    }
}

impl Listener for GuardedListener {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // why: the permit is taken before accepting, so at the cap the listener
        // stops accepting instead of taking connections it would then drop.
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed; if it were, accept nothing more.
            Err(_) => std::future::pending().await,
        };
        let (stream, addr) = Listener::accept(&mut self.inner).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a webhook connection");
        }
        (GuardedStream::new(stream, permit, self.limits), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Where a connection is in its life, which decides its read deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request (since accept, or since the last answer).
    Idle { since: Instant },
    /// A request's first bytes arrived; its head must complete.
    Head { since: Instant },
    /// A request is being handled; the handler bounds its body.
    Busy,
}

/// The phase of one connection, shared by its stream and the service that handles
/// its requests ([`PhaseTracked`]). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionPhase(Arc<Mutex<Phase>>);

impl ConnectionPhase {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Phase::Idle {
            since: Instant::now(),
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        // why: the phase is plain data; a poisoned lock still holds a valid value.
        let mut phase = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut phase)
    }

    /// Bytes arrived: an idle connection has started a request head.
    fn saw_bytes(&self) {
        self.with(|phase| {
            if let Phase::Idle { .. } = phase {
                *phase = Phase::Head {
                    since: Instant::now(),
                };
            }
        });
    }

    fn read_deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        self.with(|phase| match *phase {
            Phase::Idle { since } => Some(since + limits.idle_timeout),
            Phase::Head { since } => Some(since + limits.header_timeout),
            Phase::Busy => None,
        })
    }

    fn set(&self, next: Phase) {
        self.with(|phase| *phase = next);
    }
}

/// Makes each connection's service: `inner` (the listener's router), with the
/// connection's phase moved to busy while a request is handled and back to idle
/// after the answer (hand it to `axum::serve` with a [`GuardedListener`]).
///
/// why: a service per connection holds its phase itself. Before, the phase rode on
/// every request as `ConnectInfo` (an extension map allocated per request) and a
/// `from_fn` middleware (a boxed future per request) read it back: ~5 k
/// instructions per webhook event (`cargo bench --bench webhook_intake`).
#[derive(Debug, Clone)]
pub struct TrackPhase<S> {
    inner: S,
}

impl<S> TrackPhase<S> {
    /// Tracks the phase of every connection `inner` serves.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: Clone> Service<IncomingStream<'_, GuardedListener>> for TrackPhase<S> {
    type Response = PhaseTracked<S>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<PhaseTracked<S>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, GuardedListener>) -> Self::Future {
        std::future::ready(Ok(PhaseTracked {
            inner: self.inner.clone(),
            phase: stream.io().phase.clone(),
        }))
    }
}

/// One connection's service (see [`TrackPhase`]).
#[derive(Debug, Clone)]
pub struct PhaseTracked<S> {
    inner: S,
    phase: ConnectionPhase,
}

impl<S> Service<Request> for PhaseTracked<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.phase.set(Phase::Busy);
        Answered {
            inner: self.inner.call(request),
            phase: self.phase.clone(),
        }
    }
}

pin_project! {
    /// A request being handled: when its answer is ready, the connection is idle.
    pub struct Answered<F> {
        #[pin]
        inner: F,
        phase: ConnectionPhase,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for Answered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = std::task::ready!(this.inner.poll(cx));
        this.phase.set(Phase::Idle {
            since: Instant::now(),
        });
        Poll::Ready(answer)
    }
}

/// An accepted connection: holds its slot under the cap until dropped, and fails
/// reads that miss the deadline of its [`ConnectionPhase`].
#[derive(Debug)]
pub struct GuardedStream {
    io: TcpStream,
    phase: ConnectionPhase,
    limits: ConnectionLimits,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl GuardedStream {
    fn new(io: TcpStream, permit: OwnedSemaphorePermit, limits: ConnectionLimits) -> Self {
        let phase = ConnectionPhase::new();
        let first = phase
            .read_deadline(&limits)
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
        Self {
            io,
            phase,
            limits,
            timer: Box::pin(tokio::time::sleep_until(first)),
            _permit: permit,
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.phase.saw_bytes();
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        let Some(deadline) = this.phase.read_deadline(&this.limits) else {
            return Poll::Pending;
        };
        if this.timer.deadline() != deadline {
            this.timer.as_mut().reset(deadline);
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "webhook connection idle or too slow sending its request head",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
