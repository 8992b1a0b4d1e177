//! Compiles `proto/consent/v1/*.proto` into Rust with a pure-Rust protobuf
//! compiler (protox), so that no system `protoc` is needed, and writes the
//! file descriptor set that server reflection serves.

use std::{env, fs, io, path::PathBuf};

use prost::Message as _;

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "proto/consent/v1/common.proto",
    "proto/consent/v1/profile.proto",
    "proto/consent/v1/consent.proto",
    "proto/consent/v1/quarantine.proto",
    "proto/consent/v1/eligibility.proto",
    "proto/consent/v1/admin.proto",
    "proto/consent/v1/tenant.proto",
    "proto/consent/v1/subscription.proto",
    "proto/consent/v1/product_usage.proto",
    "proto/consent/v1/watch.proto",
    "proto/consent/v1/preference.proto",
];

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let fds = protox::compile(PROTO_FILES, [PROTO_ROOT]).map_err(io::Error::other)?;
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(io::Error::other)?);
    fs::write(
        out_dir.join("consent_v1_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, except that a request that does not decode is
        // INVALID_ARGUMENT naming the field (src/api/codec.rs).
        .codec_path("crate::api::codec::Codec")
        .compile_fds(fds)
}
