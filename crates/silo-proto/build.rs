//! Compiles the protobuf definitions with the pure-Rust `protox` compiler,
//! so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(
        ["silo/tunnel/v1/tunnel.proto", "proxy.proto"],
        ["../../proto"],
    )?;
    tonic_prost_build::configure()
        // `bytes` fields become `bytes::Bytes`: body chunks are handed on
        // without a copy.
        .bytes(".")
        // Small per-call buffers: idle agents hold several streams each.
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
