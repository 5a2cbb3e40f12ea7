//! Compiles the protobuf definitions with protox (pure Rust, so building
//! Trellis needs no `protoc` on the machine) and generates tonic code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/trellis/v1/controlplane.proto",
        "proto/trellis/v1/discovery.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // Pushed resource bodies are shared between every agent that gets
    // them: `Bytes`, so a push copies no body until it is encoded.
    tonic_prost_build::configure()
        .bytes(".trellis.v1.ConfigItem.body")
        .compile_fds(fds)?;
    Ok(())
}
