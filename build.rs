//! Generates the gRPC code and the descriptor set (with source info, so reflection
//! shows doc comments) from `proto/`.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/digitalriver/gateway/v1/resources.proto",
    "proto/digitalriver/gateway/v1/fulfillment_service.proto",
    "proto/digitalriver/gateway/v1/charge_service.proto",
    "proto/digitalriver/gateway/v1/event_stream.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // why: a fresh machine has no protoc; the vendored one (with the well-known
    // type includes) keeps `cargo build` self-contained.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    env::set_var("PROTOC", protoc);
    let includes = protoc_bin_vendored::include_path()?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("dr_gateway_descriptor.bin"))
        .compile_protos(
            &PROTOS.iter().map(PathBuf::from).collect::<Vec<_>>(),
            &[PathBuf::from("proto"), includes],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
