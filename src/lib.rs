//! dr-gateway: a gRPC gateway in front of Digital River's order-fulfilment REST API.
pub mod pb;
