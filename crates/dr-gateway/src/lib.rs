//! dr-gateway: a gRPC gateway in front of Digital River's order-fulfillment REST API,
//! with a stateful DR sandbox.
//!
//! # Layout
//! - [`app`]: binds the listeners, wires the services, runs until shutdown.
//! - [`auth`]: caller identities (client certificates, bearer tokens), the
//!   authorization policy and the tower layer that applies it to every gRPC call.
//! - [`tls`]: TLS and mutual TLS on the gRPC listener; [`reload`]: picks up changed
//!   certificate, token and policy files.
//! - [`health`]: gRPC health per service, and the same answers for the HTTP probes.
//! - [`bus`]: NATS JetStream: the shared event log, idempotency records, rate-limit
//!   sharing, connecting in the background.
//! - [`cli`], [`config`]: the command line and flags/env → [`config::Settings`];
//!   [`listen`]: listen addresses as typed (`localhost:50051`).
//! - [`clock`]: wall-clock time behind a trait, for tests.
//! - [`grpc`]: gRPC services (transport only), protobuf conversions and THE error → status table.
//! - [`webhook`]: DR webhook intake (HTTP): signature check → event log → 2xx.
//! - [`domain`]: validation, idempotent fulfillment with reconciliation, order progress,
//!   the payment source of a charge.
//! - [`events`]: DR event envelope, the event log (trait + in-memory), subscriptions,
//!   filters, backfill, capture/cancel outcome correlation, consumer groups.
//! - [`digital_river`]: the upstream REST client, DR's wire models and errors.
//! - [`money`]: exact decimal text → `Money`.
//! - [`random_id`]: random UUIDs without a system call each.
//! - [`redact`]: credentials in URLs never printed.
//! - [`sandbox`]: a stateful emulator of DR's REST API (fulfillments, charges, orders,
//!   events, signed webhooks, faults) with a control surface; imports nothing of the gateway.
//! - [`pb`]: code generated from `proto/` and the reflection descriptor set.
//! - [`shutdown`] turns signals into a graceful stop.
//! - [`telemetry`] is logs, the access log, OpenTelemetry traces, Prometheus metrics.
//!
//! Dependencies flow one way: `grpc` / `webhook` → `domain` / `events` → `digital_river`.
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod defaults;
pub mod digital_river;
pub mod domain;
#[cfg(feature = "sandbox")]
pub mod embedded_sandbox;
pub mod events;
pub mod grpc;
pub mod health;
pub mod listen;
pub mod money;
pub mod random_id;
pub mod redact;
pub mod reload;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod webhook;

/// The generated API (the `dr-gateway-api` crate), under its historical name.
pub use dr_gateway_api as pb;
