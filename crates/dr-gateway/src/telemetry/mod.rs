//! What the gateway tells operators about itself: logs, traces and metrics.
//!
//! - [`logging`]: the `tracing` subscriber (`RUST_LOG`, pretty or JSON lines, every
//!   line bounded in length), with OpenTelemetry export when the standard
//!   `OTEL_EXPORTER_OTLP_*` variables ask for it ([`otel`]).
//! - [`context`]: the request id (`x-request-id`) and W3C trace headers of the RPC a
//!   task works for; Digital River calls carry them onwards.
//! - [`span`]: [`RpcSpanLayer`], the server span and request id of every RPC.
//! - [`access_log`]: [`AccessLogLayer`], one line per RPC.
//! - [`metrics`]: the Prometheus recorder, `/metrics`, [`RpcMetricsLayer`] and the name
//!   of every metric the gateway exports.
//! - [`rpc`]: what those layers share: the method a request path names (a fixed set,
//!   so labels stay bounded) and the response body that sees an RPC end.
//! - [`capped`]: the length cap of every logged value that comes from outside.
//! - [`span_fields`] and [`json_lines`]: how the JSON log output writes span fields
//!   and lines.
//!
//! The three layers wrap the gRPC routes in this order (outermost first), each with
//! one `.layer(...)` in `grpc/server.rs`: access log, span, metrics, then
//! authorization, so the access log and the metrics see the caller the
//! authorization layer found, and the access line is not logged inside the span.

pub mod access_log;
pub mod capped;
pub mod context;
pub mod json_lines;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod rpc;
pub mod span;
pub mod span_fields;
#[cfg(test)]
pub(crate) mod test_writer;

pub use access_log::AccessLogLayer;
pub use capped::capped;
pub use context::{in_current_context, RequestContext, RequestId};
pub use logging::{init, Telemetry};
pub use metrics::{Metrics, RpcMetricsLayer};
pub use span::RpcSpanLayer;
