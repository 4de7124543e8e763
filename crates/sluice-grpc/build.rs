//! Generates the sluice.v1 messages from proto/sluice/v1/gateway.proto with
//! the vendored protoc (no system protoc needed), their proto3 JSON
//! (pbjson) and the file descriptor set served by reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!: a build script compiled for one
    // checkout is reused by another sharing the target directory.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("sluice/v1/gateway.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = out.join("sluice_v1_descriptor.bin");
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config
        .protoc_executable(protoc)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&[&proto], &[&root])?;
    let set = std::fs::read(&descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        .build(&[".sluice.v1"])?;
    Ok(())
}
