//! dr-gateway: a gRPC gateway in front of Digital River's order-fulfilment REST API.
//!
//! # Layout
//! - [`clock`]: wall-clock time behind a trait, for tests.
//! - [`events`]: DR event envelope, the event log (trait + in-memory), filters.
//! - [`pb`]: generated protobuf / gRPC code.
pub mod clock;
pub mod events;
pub mod pb;
