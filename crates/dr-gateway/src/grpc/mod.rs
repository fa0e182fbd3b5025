//! The gRPC transport: one file per proto service, conversions to protobuf, the
//! one table that turns errors into `tonic::Status`, what reflection serves, and
//! the listener that serves (plaintext or TLS) and ages connections (`server`).
pub mod charge;
pub mod convert;
pub mod event_stream;
pub mod fulfillment;
pub mod reflection;
pub mod request;
pub mod server;
pub mod status;
