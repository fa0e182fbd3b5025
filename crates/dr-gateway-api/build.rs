//! Generates the gRPC code and the descriptor set (with source info, so reflection
//! shows doc comments) from `proto/`.

use std::{env, path::PathBuf};

/// The API's files, relative to the workspace's `proto/` (the buf module).
const PROTOS: &[&str] = &[
    "digitalriver/gateway/v1/resources.proto",
    "digitalriver/gateway/v1/fulfillment_service.proto",
    "digitalriver/gateway/v1/charge_service.proto",
    "digitalriver/gateway/v1/event_stream.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // why: a fresh machine has no protoc; the vendored one (with the well-known
    // type includes) keeps `cargo build` self-contained.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    env::set_var("PROTOC", protoc);
    let includes = protoc_bin_vendored::include_path()?;

    // why: `proto/` stays at the workspace root, where buf and the other
    // languages' code generators read it; this crate compiles it from there.
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("dr_gateway_descriptor.bin"))
        .compile_protos(
            &PROTOS
                .iter()
                .map(|p| proto_root.join(p))
                .collect::<Vec<_>>(),
            &[proto_root.clone(), includes],
        )?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
