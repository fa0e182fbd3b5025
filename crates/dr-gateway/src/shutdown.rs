//! Graceful shutdown: turning SIGTERM / SIGINT into the gateway's shutdown token,
//! and the order in which a running gateway then stops.
//!
//! # The order of the steps
//! [`crate::app::Application::run_until_stopped`] runs them when the token is
//! cancelled (a signal, or [`crate::app::Application::shutdown_token`]); the
//! grace period (`--shutdown-grace`) counts from that moment.
//!
//! 1. **NOT_SERVING.** gRPC health reports NOT_SERVING for the server and every
//!    service (on the health-only listener too: one reporter), and `/readyz` and
//!    `/healthz` answer 503 ([`crate::health::HealthGate::set_draining`]), before
//!    anything closes: health checkers and load balancers move traffic away while
//!    this process still answers. `/livez` stays 200.
//! 2. **Drain** (one token, so these happen together):
//!    - every listener closes — gRPC (plaintext or TLS), the health-only one
//!      (`--grpc-health-addr`) and the webhook / probe HTTP one: a new connection
//!      is refused (a TLS handshake still running is dropped);
//!    - every gRPC connection gets HTTP/2 GOAWAY ([`crate::grpc::server`]): a new
//!      call on it is refused (UNAVAILABLE at the client, which retries
//!      elsewhere), while every call the server already received runs to
//!      completion;
//!    - webhook connections close after their in-flight request (idle ones at once);
//!    - the streams that never end by themselves end: `Subscribe` with UNAVAILABLE
//!      `SHUTTING_DOWN` (resume elsewhere from the last cursor), `Consume` the same
//!      way (the member leaves; what it held goes to the group's other members),
//!      and health `Watch`, after it delivered the NOT_SERVING of step 1;
//!    - backfill and the bus-health watcher stop.
//! 3. **Wait** for the gRPC and HTTP servers' connections to close (every
//!    in-flight unary call answered, every webhook acknowledged), then for the
//!    CreateFulfillment attempts that outlive their callers to record their outcome.
//! 4. **Cut** whatever is still running when the grace period ends (logged as "drain
//!    took longer than the grace period"), and exit.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM or SIGINT.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
        () = token.cancelled() => {}
    }
    token.cancel();
}
