//! What the gateway does between the gRPC edge and DR: validation, idempotent
//! fulfillment with reconciliation, order progress and capture-failure lookups.
//!
//! It speaks in DR models and [`ServiceError`]; the transport converts both.

mod error;
pub mod fulfillments;
pub mod idempotency;
pub mod orders;

pub use error::{FieldViolation, ServiceError};
