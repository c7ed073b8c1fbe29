//! Compiles `proto/wasmesh.proto` with protox (pure Rust: no `protoc` to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/wasmesh.proto");
    let fds = protox::compile(["wasmesh.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .codec_path("crate::ApiCodec")
        .compile_fds(fds)?;
    Ok(())
}
