//! dr-gateway: a gRPC gateway in front of Digital River's order-fulfilment REST API.
//!
//! # Layout
//! - `pb` — generated gRPC code
//! - `sandbox` — a stateful emulator of DR's REST API (fulfillments, charges, orders,
//!   events, webhooks) with a control surface for tests
//! - `cli` — command-line arguments of the binary
pub mod cli;
pub mod pb;
pub mod sandbox;
