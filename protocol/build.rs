//! Generates the agent API's Rust code from its .proto files with protox, a protobuf compiler
//! written in Rust, so building Ferry needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/ferry/agent/v1/agent.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
