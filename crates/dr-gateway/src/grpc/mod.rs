//! The gRPC transport: one file per proto service (and the standard health
//! service), conversions to protobuf, the one table that turns errors into
//! `tonic::Status`, what reflection serves, the listener that serves (plaintext or
//! TLS) and ages connections (`server`), and the request size limit read from each
//! message's frame header (`message_limit`).
pub mod charge;
pub mod convert;
pub mod event_stream;
pub mod fulfillment;
pub mod health;
pub mod message_limit;
pub mod reflection;
pub mod request;
pub mod server;
pub mod status;
