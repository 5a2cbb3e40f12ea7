//! Compiles the protobuf definitions with protox (pure Rust, so building
//! Trellis needs no `protoc` on the machine) and generates tonic code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/trellis/v1/controlplane.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
