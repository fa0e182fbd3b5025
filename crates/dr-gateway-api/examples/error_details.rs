//! Reads the `google.rpc` details of a gateway error from Rust (the README's
//! "Clients" snippet): a CaptureItems without items is INVALID_ARGUMENT, with an
//! `ErrorInfo` and a `BadRequest` naming the field.
//!
//! `cargo run -p dr-gateway-api --example error_details` against a running gateway
//! (`cargo run -- serve --sandbox`); the first argument overrides the address.

use dr_gateway_api::v1::charge_service_client::ChargeServiceClient;
use dr_gateway_api::v1::CaptureItemsRequest;
use tonic::transport::Endpoint;
use tonic_types::StatusExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://localhost:50051".into());
    let channel = Endpoint::from_shared(address)?.connect().await?;
    let mut charges = ChargeServiceClient::new(channel);

    let request = CaptureItemsRequest {
        order_id: "100200300".into(),
        ..Default::default()
    };
    match charges.capture_items(request).await {
        Ok(reply) => println!("captured: {:?}", reply.into_inner()),
        Err(status) => {
            let details = status.get_error_details();
            println!("{:?}: {}", status.code(), status.message());
            if let Some(info) = details.error_info() {
                println!(
                    "reason {} ({}), metadata {:?}",
                    info.reason, info.domain, info.metadata
                );
            }
            if let Some(bad) = details.bad_request() {
                for violation in &bad.field_violations {
                    println!("field {}: {}", violation.field, violation.description);
                }
            }
            if let Some(retry) = details.retry_info() {
                println!("retry after {:?}", retry.retry_delay);
            }
        }
    }
    Ok(())
}
