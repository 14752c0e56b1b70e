//! Generates Rust types for the Milvus messages in `proto/` with prost.
//!
//! Only messages are generated: switchyard speaks gRPC through its own small framing
//! layer (`src/grpc`) on top of hyper, so it needs no generated service stubs.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY-free: build scripts are single-threaded; this only affects prost-build below.
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // prost-build reads PROTOC; pass it explicitly instead of mutating the environment.
        let mut config = prost_build::Config::new();
        config.protoc_executable(protoc);
        return compile(config);
    }
    compile(prost_build::Config::new())
}

fn compile(mut config: prost_build::Config) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    config.bytes(["."]);
    config.compile_protos(&["proto/common.proto", "proto/milvus.proto"], &["proto"])?;
    Ok(())
}
