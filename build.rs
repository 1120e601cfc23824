//! Generates the tonic/prost code for `proto/walrep/v1`. `protoc` comes from
//! the `protoc-bin-vendored` crate so a fresh machine needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".walrep.v1")
        .compile_protos(&["proto/walrep/v1/replication.proto"], &["proto"])?;
    Ok(())
}
