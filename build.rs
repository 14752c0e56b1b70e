//! Generates Rust types for the Milvus messages in `proto/` with prost, and tonic client
//! stubs for the three CDC control RPCs in `proto/service/` (no server, no transport).
//!
//! The data path speaks gRPC through its own small framing layer (`src/grpc`) on top of
//! hyper and needs no stubs; only `src/cdc` uses the generated client.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        // prost-build reads PROTOC; pass the vendored one explicitly instead of mutating the
        // environment.
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    config.bytes(["."]);
    tonic_prost_build::configure().build_server(false).build_transport(false).compile_with_config(
        config,
        &["proto/common.proto", "proto/milvus.proto", "proto/service/milvus_service.proto"],
        &["proto"],
    )?;
    Ok(())
}
