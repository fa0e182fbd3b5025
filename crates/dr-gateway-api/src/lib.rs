//! The dr-gateway gRPC API for Rust clients (and the gateway itself): the code
//! generated from the workspace's `proto/` and the encoded descriptor set that
//! feeds server reflection.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use dr_gateway_api::v1::charge_service_client::ChargeServiceClient;
//! use dr_gateway_api::v1::GetChargeRequest;
//!
//! let mut charges = ChargeServiceClient::connect("http://localhost:50051").await?;
//! let charge = charges
//!     .get_charge(GetChargeRequest { charge_id: "c8f5…".into() })
//!     .await?
//!     .into_inner();
//! println!("{charge:?}");
//! # Ok(())
//! # }
//! ```

/// `digitalriver.gateway.v1`: the gateway's public API.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("digitalriver.gateway.v1");
}

/// Encoded `FileDescriptorSet` of the API, with source info (doc comments).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dr_gateway_descriptor");
