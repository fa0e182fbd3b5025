//! What the gateway does between the gRPC edge and DR: validation (ids: [`ids`]),
//! idempotent fulfillment with reconciliation, order progress, capture-failure
//! lookups and the payment source of a charge.
//!
//! It speaks in DR models and [`ServiceError`]; the transport converts both.

mod error;
pub mod fulfillments;
pub mod idempotency;
pub mod ids;
pub mod orders;
pub mod payments;

pub use error::{FieldViolation, ServiceError};
