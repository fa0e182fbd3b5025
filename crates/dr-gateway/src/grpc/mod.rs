//! The gRPC transport: one file per proto service (and the standard health
//! service), conversions to protobuf, the one table that turns errors into
//! `tonic::Status`, and what reflection serves.
pub mod charge;
pub mod convert;
pub mod event_stream;
pub mod fulfillment;
pub mod health;
pub mod message_limit;
pub mod reflection;
pub mod request;
pub mod status;
