//! Commit latency per mode and streaming throughput, two nodes over
//! loopback gRPC, each with a durable FileWal in a temporary directory (so
//! every commit pays real fsyncs on both sides).
//!
//! `cargo bench --bench replication`

#[path = "../tests/common/mod.rs"]
mod common;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use std::time::Duration;
use walrep::{CommitMode, FileWal, FileWalOptions, Replica, Replicator, RoleKind};
use walrep_daemon::kv::KvStore;

/// A node served on a server the benchmark stops when the `Node` drops,
/// so each benchmark's pair stops serving when the next one starts.
struct Node {
    replica: Arc<Replica>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(cfg: walrep::Config, dir: &std::path::Path) -> Node {
    let listener = tokio::net::TcpListener::bind(&cfg.advertise_addr)
        .await
        .unwrap();
    let wal = Arc::new(FileWal::open(dir.join("wal"), FileWalOptions::default()).unwrap());
    let kv = Arc::new(KvStore::open(dir.join("kv")).unwrap());
    let (replica, service) = Replica::builder(cfg, wal, kv)
        .start_without_server()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(walrep::serve(service, listener, async {
        let _ = stopped.await;
    }));
    Node {
        replica: Arc::new(replica),
        _stop: stop,
    }
}

/// A streaming pair; with `sync_inline`, the standby fsyncs on its own
/// runtime thread (`Config::standby_sync_inline`, as the daemon runs).
async fn pair(mode: CommitMode, sync_inline: bool, dir: &std::path::Path) -> (Node, Node) {
    let (addr_a, addr_b) = (common::free_addr().await, common::free_addr().await);
    let a = start(
        common::config("a", "b", addr_a, addr_b, mode),
        &dir.join("a"),
    )
    .await;
    let b = start(
        walrep::Config {
            standby_sync_inline: sync_inline,
            ..common::config("b", "a", addr_b, addr_a, mode)
        },
        &dir.join("b"),
    )
    .await;
    a.replica
        .wait_for(Duration::from_secs(20), "stream up", |h| {
            h.role == RoleKind::Primary && h.peer.connected
        })
        .await
        .unwrap();
    (a, b)
}

fn commit_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("commit_latency_100B");
    group
        .sample_size(200)
        .measurement_time(Duration::from_secs(5));
    for (mode, sync_inline) in [
        (CommitMode::Async, false),
        (CommitMode::RemoteWrite, false),
        (CommitMode::RemoteFlush, false),
        (CommitMode::RemoteFlush, true),
        (CommitMode::RemoteApply, false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (a, _b) = rt.block_on(pair(mode, sync_inline, dir.path()));
        let value = "x".repeat(100);
        let mut i = 0u64;
        let name = match sync_inline {
            true => format!("{mode}, standby syncs inline"),
            false => mode.to_string(),
        };
        group.bench_function(BenchmarkId::from_parameter(name), |bench| {
            bench.to_async(&rt).iter(|| {
                i += 1;
                let cmd = common::put_cmd(&format!("k{i}"), &value);
                let r = a.replica.clone();
                async move { r.apply(cmd).await.unwrap() }
            })
        });
    }
    group.finish();
}

fn streaming_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("streaming_remote_flush");
    let batch = 1000;
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Bytes(batch as u64 * 100));
    let dir = tempfile::tempdir().unwrap();
    let (a, _b) = rt.block_on(pair(CommitMode::RemoteFlush, false, dir.path()));
    let value = "x".repeat(100 - 8);
    let mut n = 0u64;
    group.bench_function("16_writers_x_1000_records_of_100B", |bench| {
        bench.to_async(&rt).iter(|| {
            n += 1;
            let r = a.replica.clone();
            let value = value.clone();
            async move {
                let writers = (0..16).map(|w| {
                    let r = r.clone();
                    let value = value.clone();
                    tokio::spawn(async move {
                        let cmds = (0..batch / 16)
                            .map(|j| common::put_cmd(&format!("{n}-{w}-{j}"), &value))
                            .collect();
                        r.apply_batch(cmds).await.unwrap();
                    })
                });
                for w in writers.collect::<Vec<_>>() {
                    w.await.unwrap();
                }
            }
        })
    });
    group.finish();
}

criterion_group!(benches, commit_latency, streaming_throughput);
criterion_main!(benches);
