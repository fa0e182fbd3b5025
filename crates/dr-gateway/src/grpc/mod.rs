//! The gRPC transport: one file per proto service, conversions to protobuf, and the
//! one table that turns errors into `tonic::Status`.
pub mod charge;
pub mod convert;
pub mod event_stream;
pub mod fulfillment;
pub mod request;
pub mod status;
