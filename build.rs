//! Generates the tonic/prost code for `proto/walrep/v1` and for the client
//! side of the subset of etcd's v3 API in `proto/etcd` (the etcd arbiter)
//! at build time.
//!
//! Decision: the generated code is NOT checked in. It is generated here on
//! every build, with `protoc` from the `protoc-bin-vendored`
//! build-dependency, so an engine that adds `walrep` to its Cargo.toml
//! needs nothing installed (no apt, no brew): cargo fetches protoc like any
//! crate. This is the simpler of the two options: there is no second copy
//! of the protocol to keep in step with `proto/` and so no staleness test,
//! and the code always matches the tonic/prost versions in Cargo.lock.
//! Checking it in would save embedders only a few seconds of codegen and
//! the two build-dependencies. On a platform protoc-bin-vendored has no
//! binary for, set `PROTOC` to a protoc of your own: it wins here.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    if std::env::var_os("PROTOC").is_none() {
        let protoc = protoc_bin_vendored::protoc_bin_path()?;
        // SAFETY: build scripts are single-threaded; nothing else reads the
        // environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc) };
    }
    tonic_prost_build::configure()
        .bytes(".walrep.v1")
        .compile_protos(
            &[
                "proto/walrep/v1/replication.proto",
                "proto/walrep/v1/witness.proto",
            ],
            &["proto"],
        )?;
    // etcd's KV service, client only: walrep only calls etcd. Its own
    // include root, so its `import "mvccpb/kv.proto"` resolves as etcd's
    // packages name it.
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(
            &[
                "proto/etcd/etcdserverpb/rpc.proto",
                "proto/etcd/mvccpb/kv.proto",
            ],
            &["proto/etcd"],
        )?;
    Ok(())
}
