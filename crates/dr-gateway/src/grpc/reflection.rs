//! What server reflection serves, over both protocols (v1 and v1alpha): the API with
//! its doc comments, gRPC health, and the `google.rpc` error model —
//! `google/rpc/status.proto`, `google/rpc/error_details.proto` and the well-known
//! types they import. With those, a client that knows the API only through
//! reflection (grpcurl, grpcui, Postman) decodes every status detail the gateway
//! sends (`ErrorInfo`, `BadRequest`, `RetryInfo`, …) instead of printing raw bytes.

use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use tonic_reflection::server::{v1, v1alpha, Builder, Error};

use crate::pb;

/// The proto package of the error model, and the directory its files live in
/// wherever they are imported from (googleapis, grpc-go's genproto, google-proto-files).
const RPC_PACKAGE: &str = "google.rpc";
const RPC_DIRECTORY: &str = "google/rpc/";

/// The reflection service of the current protocol (`grpc.reflection.v1`).
pub fn v1() -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    builder(error_model()?).build_v1()
}

/// The reflection service of the protocol grpcurl 1.8, grpcui, Postman and Python's
/// reflection client speak (`grpc.reflection.v1alpha`).
pub fn v1alpha() -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder(error_model()?).build_v1alpha()
}

fn builder(error_model: FileDescriptorSet) -> Builder<'static> {
    // why: a file name is served from the first set that holds it; the API's set
    // comes first so its copies of shared imports keep their source info.
    Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_file_descriptor_set(error_model)
}

/// `google/rpc/status.proto` and `google/rpc/error_details.proto` (with their
/// imports), under the names every other copy of them uses.
fn error_model() -> Result<FileDescriptorSet, Error> {
    let mut set = FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    for file in &mut set.file {
        canonicalise(file);
    }
    Ok(set)
}

/// tonic-types compiles the error model from a flat directory, so its files are
/// named `status.proto` and `error_details.proto`. A client that asks for
/// `google/rpc/status.proto` by name, or that already knows the canonical file and
/// merges reflected ones into the same pool, needs the canonical path.
fn canonicalise(file: &mut FileDescriptorProto) {
    if file.package() == RPC_PACKAGE {
        if let Some(name) = file.name.as_mut() {
            if !name.contains('/') {
                name.insert_str(0, RPC_DIRECTORY);
            }
        }
    }
    for dependency in &mut file.dependency {
        let flat_rpc_file = matches!(dependency.as_str(), "status.proto" | "error_details.proto");
        if flat_rpc_file {
            dependency.insert_str(0, RPC_DIRECTORY);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn served_files() -> Vec<FileDescriptorProto> {
        let mut files = Vec::new();
        for encoded in [
            pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            files.extend(FileDescriptorSet::decode(encoded).expect("valid set").file);
        }
        files.extend(error_model().expect("valid error model").file);
        files
    }

    #[test]
    fn the_error_model_is_served_under_its_canonical_file_names() {
        let names: BTreeSet<String> = error_model()
            .expect("valid error model")
            .file
            .into_iter()
            .map(|f| f.name().to_owned())
            .collect();

        for expected in [
            "google/rpc/status.proto",
            "google/rpc/error_details.proto",
            "google/protobuf/any.proto",
            "google/protobuf/duration.proto",
        ] {
            assert!(names.contains(expected), "{expected} in {names:?}");
        }
    }

    #[test]
    fn every_import_of_a_served_file_is_served_too() {
        let files = served_files();
        let names: BTreeSet<&str> = files.iter().map(FileDescriptorProto::name).collect();

        let missing: Vec<String> = files
            .iter()
            .flat_map(|f| {
                f.dependency
                    .iter()
                    .filter(|d| !names.contains(d.as_str()))
                    .map(move |d| format!("{} imports {d}", f.name()))
            })
            .collect();

        assert!(missing.is_empty(), "unresolvable imports: {missing:?}");
    }

    #[test]
    fn every_status_detail_the_gateway_sends_is_described() {
        let described: BTreeSet<String> = error_model()
            .expect("valid error model")
            .file
            .iter()
            .filter(|f| f.package() == RPC_PACKAGE)
            .flat_map(|f| {
                f.message_type
                    .iter()
                    .map(|m| format!("google.rpc.{}", m.name()))
            })
            .collect();

        for detail in [
            "Status",
            "ErrorInfo",
            "BadRequest",
            "PreconditionFailure",
            "ResourceInfo",
            "RetryInfo",
            "QuotaFailure",
        ] {
            let name = format!("google.rpc.{detail}");
            assert!(described.contains(&name), "{name} in {described:?}");
        }
    }
}
