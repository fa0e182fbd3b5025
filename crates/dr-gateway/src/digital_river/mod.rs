//! The upstream client for Digital River's REST API: one async fn per DR operation,
//! DR's wire models, and the error that says what the upstream did.
//!
//! Nothing outside this module (and the sandbox, which plays DR) touches reqwest or
//! DR's JSON shapes; callers get typed models and [`Error`].

mod call_metrics;
mod client;
mod error;
pub mod models;
mod rate_limit;
mod retry;

pub use client::{CallOptions, Client, ClientConfig, EventQuery, FulfillmentQuery, Page};
pub use error::{Error, ErrorBody, ErrorEntry, Resource};
pub use rate_limit::{replica_share, RateLimiter};
pub use retry::RetryPolicy;
