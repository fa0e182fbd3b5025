//! Code generated from `proto/` and the descriptor set that feeds server reflection.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// `digitalriver.gateway.v1`: the gateway's public API.
pub mod v1 {
    tonic::include_proto!("digitalriver.gateway.v1");
}

/// Encoded `FileDescriptorSet` of the API, with source info (doc comments).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dr_gateway_descriptor");
