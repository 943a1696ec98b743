//! Compiles the vendored `proto/onnx/onnx.proto` with protox (pure Rust) and prost-build, so no
//! system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "onnx/onnx.proto";
    println!("cargo:rerun-if-changed=proto/{file}");
    let fds = protox::compile([file], ["proto"])?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
