//! dr-gateway: a gRPC gateway in front of Digital River's order-fulfilment REST API.
//!
//! # Layout
//! - [`clock`]: wall-clock time behind a trait, for tests.
//! - [`digital_river`]: the upstream REST client, DR's wire models and errors.
//! - [`events`]: DR event envelope, the event log (trait + in-memory), filters.
//! - [`grpc`]: gRPC services, protobuf conversions and the error → status table.
//! - [`money`]: exact decimal text ↔ `Money`.
//! - [`pb`]: code generated from `proto/` and the reflection descriptor set.
//! - [`webhook`]: DR webhook intake (HTTP): signature check → event log.
pub mod clock;
pub mod digital_river;
pub mod events;
pub mod grpc;
pub mod money;
pub mod pb;
pub mod webhook;
