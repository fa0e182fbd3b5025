//! The gRPC transport: one file per proto service, conversions to protobuf, and the
//! one table that turns errors into `tonic::Status`.
pub mod convert;
pub mod event_stream;
