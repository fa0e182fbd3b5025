//! A TCP listener whose connections a handler can kill, for the `reset` faults.
//!
//! axum's `serve` accepts any `Listener`; this one wraps each `TcpStream` with a shared
//! kill switch and hands the switch to handlers as connect info. Once the switch is
//! thrown, every read and write on the connection fails, so hyper drops it without
//! writing a byte of the response; `SO_LINGER 0` turns the close into a TCP RST.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Kills one connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    /// Marks the connection dead; the next I/O on it fails.
    pub(crate) fn kill(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    fn is_killed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Listener producing killable streams.
#[derive(Debug)]
pub(crate) struct KillableListener(pub TcpListener);

/// A `TcpStream` with a kill switch.
#[derive(Debug)]
pub(crate) struct KillableStream {
    inner: TcpStream,
    switch: KillSwitch,
    lingered: bool,
}

impl KillableStream {
    fn check(&mut self) -> io::Result<()> {
        if self.switch.is_killed() {
            if !self.lingered {
                self.lingered = true;
                // why: zero linger makes the close a RST — a "connection reset", as the fault promises.
                let _ = self.inner.set_zero_linger();
            }
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "sandbox fault: connection reset",
            ));
        }
        Ok(())
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, addr)) => {
                    let _ = inner.set_nodelay(true);
                    return (
                        KillableStream {
                            inner,
                            switch: KillSwitch::default(),
                            lingered: false,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Per-connection errors (ECONNABORTED…) are harmless; others (EMFILE) get a pause.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Connect info handed to handlers: the connection's kill switch.
#[derive(Debug, Clone)]
pub(crate) struct ConnKill(pub KillSwitch);

impl Connected<IncomingStream<'_, KillableListener>> for ConnKill {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        Self(stream.io().switch.clone())
    }
}
