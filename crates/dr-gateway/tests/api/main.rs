//! The gateway's integration tests: one binary, real sockets. Each test spawns the
//! gateway on ephemeral ports against a DR stand-in (wiremock for exact-request and
//! error-row assertions, the sandbox for flows) and talks gRPC to it.
// why: a test binary has no public API; `pub` only shares helpers between its modules.
#![allow(unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod access_log;
mod charges;
mod config;
mod errors;
mod event_flows;
mod event_support;
mod events;
mod flows;
mod fulfillments;
mod group_support;
mod groups;
mod helpers;
mod hostile_input;
mod idempotency;
mod jetstream;
mod modes;
mod money_safety;
mod observability_metrics;
mod observability_support;
mod observability_traces;
mod orders;
mod security;
mod serving;
mod shutdown;
mod tls_support;
mod transport;
mod webhook;
mod webhook_listener;
