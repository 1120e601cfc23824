//! Two nodes over real tonic on 127.0.0.1: streaming, commit modes,
//! failover, rejoin, switchover, snapshot resync; and the built-in witness
//! (`witness/`).

mod common;
mod three_nodes;
mod tls_flood;
mod witness;

use common::*;
use std::time::Duration;
use walrep::{CommitMode, Lsn, Replicator, RoleKind, WalStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_10k_records_and_both_nodes_hash_equal() {
    for inline in SYNC_INLINE {
        let (a, b) = pair_with(CommitMode::RemoteFlush, |c| c.standby_sync_inline = inline).await;
        let mut writers = Vec::new();
        for w in 0..8 {
            let r = a.replica.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..125 {
                    let cmds = (0..10)
                        .map(|j| put_cmd(&format!("k{w}-{i}-{j}"), &format!("v{i}")))
                        .collect();
                    r.apply_batch(cmds).await.unwrap();
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        assert_eq!(a.health().last_lsn, Lsn(10_000));
        let (ha, hb) = converged(&a, &b).await;
        assert_eq!(ha, hb, "inline sync {inline}");
        assert_eq!(b.kv.len(), 10_000);
    }
}

/// Both ways a standby can fsync: handing it to the flusher task, or on
/// the thread that received the WAL (`standby_sync_inline`).
const SYNC_INLINE: [bool; 2] = [false, true];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_apply_write_is_readable_on_the_standby_when_acknowledged() {
    for inline in SYNC_INLINE {
        let (a, b) = pair_with(CommitMode::RemoteApply, |c| c.standby_sync_inline = inline).await;
        for i in 0..50 {
            let key = format!("k{i}");
            a.put(&key, "v").await.unwrap();
            assert!(
                b.kv.get(key.as_bytes()).is_some(),
                "{key} not applied on the standby at ack (inline sync {inline})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_flush_write_is_durable_on_the_standby_when_acknowledged() {
    for inline in SYNC_INLINE {
        let (a, b) = pair_with(CommitMode::RemoteFlush, |c| c.standby_sync_inline = inline).await;
        for i in 0..50 {
            let applied = a.put(&format!("k{i}"), "v").await.unwrap();
            assert!(
                b.wal.flushed_lsn() >= applied.lsn,
                "record {} not flushed on the standby at ack (inline sync {inline})",
                applied.lsn
            );
            // What a crash of the standby now would keep:
            assert!(b.wal.crash().last_lsn() >= applied.lsn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_write_is_written_on_the_standby_when_acknowledged() {
    let (a, b) = pair(CommitMode::RemoteWrite).await;
    for i in 0..50 {
        let applied = a.put(&format!("k{i}"), "v").await.unwrap();
        assert!(b.wal.last_lsn() >= applied.lsn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_write_is_acknowledged_without_the_standby() {
    let (a, b) = pair(CommitMode::Async).await;
    a.link.set_cut(true);
    let applied = a.put("alone", "v").await.unwrap();
    assert!(b.wal.last_lsn() < applied.lsn);
    a.link.set_cut(false);
    b.replica.wait_for_lsn(applied.lsn, WAIT).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_promotes_when_the_primary_stops_and_accepts_writes() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    let mut acked = Vec::new();
    for i in 0..100 {
        let key = format!("k{i}");
        a.put(&key, "v").await.unwrap();
        acked.push(key);
    }
    let timeout = b.cfg.failover_timeout;
    let stopped = tokio::time::Instant::now();
    let _ = a.crash().await;
    let h = b
        .wait("promoted", |h| h.role == RoleKind::Primary && h.writable)
        .await;
    let took = stopped.elapsed();
    assert!(
        took < timeout + Duration::from_secs(3),
        "failover took {took:?}"
    );
    assert_eq!(h.epoch, walrep::Epoch(2));
    b.put("after", "failover").await.unwrap();
    for key in &acked {
        assert!(
            b.kv.get(key.as_bytes()).is_some(),
            "acknowledged {key} lost"
        );
    }
}

/// An async pair with 20 writes on both nodes, then cut apart: `a` keeps
/// acknowledging alone (`lost0`..`lost4`, LSNs 21 to 25, never
/// replicated) while `b` promotes to epoch 2. Returns `b`'s health as it
/// became a writable primary.
async fn split_with_five_writes_only_on_the_old_primary(
    a: &TestNode,
    b: &TestNode,
) -> walrep::Health {
    for i in 0..20 {
        a.put(&format!("k{i}"), "v").await.unwrap();
    }
    converged(a, b).await;
    a.link.set_cut(true);
    b.link.set_cut(true);
    for i in 0..5 {
        a.put(&format!("lost{i}"), "v").await.unwrap();
    }
    b.wait("promoted", |h| h.role == RoleKind::Primary && h.writable)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_primary_rewinds_its_unreplicated_suffix_and_converges() {
    let (a, b) = pair(CommitMode::Async).await;
    split_with_five_writes_only_on_the_old_primary(&a, &b).await;
    b.put("new", "epoch").await.unwrap();
    // a crashes and comes back with its own suffix on disk.
    let (cfg, wal, kv_dir) = a.crash().await;
    assert_eq!(wal.last_lsn(), Lsn(25));
    b.link.set_cut(false);
    let a = TestNode::start(cfg, wal, kv_dir).await;
    a.wait("rejoined as standby", |h| h.role == RoleKind::Standby)
        .await;
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    assert!(a.kv.get(b"lost0").is_none());
    assert_eq!(a.replica.metrics().rewound_records, 5);
    assert_eq!(a.health().epoch, walrep::Epoch(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primary_counts_as_lag_what_its_old_primary_lacks_not_its_whole_wal() {
    let (a, b) = pair(CommitMode::Async).await;
    let promoted = split_with_five_writes_only_on_the_old_primary(&a, &b).await;
    for i in 0..3 {
        b.put(&format!("new{i}"), "v").await.unwrap();
    }
    let after = promoted.last_lsn.0 + 3;
    let h = b
        .wait("three writes since the promotion", |h| {
            h.last_lsn.0 == after
        })
        .await;
    // The old primary sent b everything b held at its promotion: it lacks
    // the three writes since, not b's whole WAL.
    assert_eq!(h.peer.lag_records, 3, "{h:?}");
    assert!(h.peer.lag_bytes > 0, "{h:?}");

    // It comes back with an unreplicated tail of its own (epoch 1 from
    // LSN 21): what it lacks of b's log is still counted from where b's
    // epoch began, then nothing once it rejoined.
    let (cfg, wal, kv_dir) = a.crash().await;
    b.link.set_cut(false);
    let a = TestNode::start(cfg, wal, kv_dir).await;
    a.wait("rejoined as standby", |h| h.role == RoleKind::Standby)
        .await;
    let h = b
        .wait("standby caught up", |h| h.peer.lag_records == 0)
        .await;
    assert_eq!(h.peer.lag_bytes, 0, "{h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_reports_the_sync_state_its_primary_tells_it() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    a.put("k", "v").await.unwrap();
    a.wait("in sync", |h| h.sync_state == walrep::SyncState::Sync)
        .await;
    b.wait("told it is in sync", |h| {
        h.sync_state == walrep::SyncState::Sync
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_both_ways_loses_no_acknowledged_write() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    let nodes = [a.replica.clone(), b.replica.clone()];
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (nodes, stop) = (nodes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("k{i}");
                for n in &nodes {
                    if n.apply(put_cmd(&key, "v")).await.is_ok() {
                        acked.push(key.clone());
                        break;
                    }
                }
                i += 1;
                tokio::task::yield_now().await;
            }
            acked
        })
    };
    a.wait("some writes", |h| h.commit_lsn >= Lsn(50)).await;
    let epoch = b.replica.promote(false).await.unwrap();
    assert_eq!(epoch, walrep::Epoch(2));
    a.wait("a is an eligible standby", |h| {
        h.role == RoleKind::Standby && h.eligible
    })
    .await;
    b.wait("writes on b", |h| {
        h.commit_lsn >= h.last_lsn && h.last_lsn > Lsn(60)
    })
    .await;
    let epoch = a
        .replica
        .promote(false)
        .await
        .expect("switchover back to a");
    assert_eq!(epoch, walrep::Epoch(3));
    b.wait("b is standby", |h| h.role == RoleKind::Standby)
        .await;
    a.wait("writes on a", |h| h.last_lsn > Lsn(80)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.unwrap();
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    for key in &acked {
        assert!(
            a.kv.get(key.as_bytes()).is_some(),
            "acknowledged {key} lost"
        );
    }
    assert_eq!(
        a.replica.metrics().rewound_records + b.replica.metrics().rewound_records,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_behind_the_primarys_retained_wal_resyncs_from_a_snapshot() {
    let (a, b) = pair_with(CommitMode::RemoteFlush, |c| {
        c.wal_retention_bytes = 1024;
        c.on_standby_loss = walrep::OnStandbyLoss::Solo;
    })
    .await;
    for i in 0..10 {
        a.put(&format!("k{i}"), "v").await.unwrap();
    }
    converged(&a, &b).await;
    let (cfg_b, wal_b, kv_b) = b.crash().await;
    for i in 0..200 {
        // The first writes wait for the lost standby, then go alone.
        let _ = a.put(&format!("later{i}"), "some value").await;
    }
    a.wait("solo", |h| h.solo).await;
    // The engine made its state durable: the WAL before it may go.
    a.kv.persist_snapshot().unwrap();
    a.wait("WAL truncated", |h| h.first_lsn > Lsn(11)).await;
    let b = TestNode::start(cfg_b, wal_b, kv_b).await;
    b.wait("standby again", |h| h.role == RoleKind::Standby)
        .await;
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    assert_eq!(b.replica.metrics().snapshot_resyncs, 1);
}

/// A primary whose WAL no longer covers the standby, a standby that must
/// resync: the setup of the snapshot tests below. Returns the primary and
/// what the standby needs to start again.
async fn standby_needing_a_snapshot(
    tweak: impl Fn(&mut walrep::Config),
    value_bytes: usize,
    records: usize,
) -> (
    TestNode,
    (
        walrep::Config,
        std::sync::Arc<walrep::testing::MemWal>,
        std::path::PathBuf,
    ),
) {
    let (a, b) = pair_with(CommitMode::RemoteFlush, |c| {
        c.wal_retention_bytes = 1024;
        c.on_standby_loss = walrep::OnStandbyLoss::Solo;
        tweak(c);
    })
    .await;
    a.put("k", "v").await.unwrap();
    converged(&a, &b).await;
    let stopped = b.crash().await;
    let value = "x".repeat(value_bytes);
    for i in 0..records {
        let _ = a.put(&format!("later{i}"), &value).await;
    }
    a.wait("solo", |h| h.solo).await;
    a.kv.persist_snapshot().unwrap();
    a.wait("WAL truncated", |h| h.first_lsn > Lsn(2)).await;
    (a, stopped)
}

/// A snapshot larger than the chunk size and than the HTTP/2 windows (16
/// MiB a connection) is cut mid-transfer: the standby's next request names
/// the same snapshot and starts at the bytes it already has, the primary
/// serves it from its one build, and the restored state is the primary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_cut_mid_transfer_resumes_from_the_bytes_received() {
    const CHUNK: usize = 64 << 10;
    let (a, (cfg_b, wal_b, dir_b)) =
        standby_needing_a_snapshot(|c| c.snapshot_chunk_bytes = CHUNK, 64 << 10, 320).await;
    let link = walrep::testing::Link::new(walrep::GrpcPeer::connect_lazy(&cfg_b).unwrap());
    *link.cut_snapshot_after.lock().unwrap() = Some(40);
    let b = TestNode::start_linked(cfg_b, wal_b, dir_b, link.clone()).await;
    b.wait("standby again", |h| h.role == RoleKind::Standby)
        .await;
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb, "the restored state is the primary's");
    assert_eq!(b.replica.metrics().snapshot_resyncs, 1);
    let requests = link.snapshot_requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0], (0, 0), "the first request starts a transfer");
    assert_ne!(requests[1].0, 0, "the second names the snapshot");
    assert_eq!(
        requests[1].1,
        40 * CHUNK as u64,
        "the second starts where the cut left it"
    );
    assert_eq!(
        a.engine.snapshots.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the resumed transfer is served from the same build"
    );
}

/// An engine that takes three RPC timeouts to write its snapshot: the
/// transfer waits for it (keep-alives, not the RPC deadline) and the
/// standby resyncs from one build, not one per abandoned request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_slower_than_rpc_timeout_to_snapshot_still_resyncs() {
    let (a, (cfg_b, wal_b, dir_b)) =
        standby_needing_a_snapshot(|c| c.snapshot_timeout = Duration::from_millis(400), 64, 200)
            .await;
    *a.engine.snapshot_delay.lock().unwrap() = a.cfg.rpc_timeout * 3;
    let b = TestNode::start(cfg_b, wal_b, dir_b).await;
    b.wait("standby again", |h| h.role == RoleKind::Standby)
        .await;
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    assert_eq!(b.replica.metrics().snapshot_resyncs, 1);
    assert_eq!(
        a.engine.snapshots.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// Both nodes on durable FileWals stop and start again: the primary resumes
/// as primary once it hears from its standby, nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_restart_from_file_wals_and_resume_their_roles() {
    use std::sync::Arc;
    use walrep::{FileWal, FileWalOptions, Replica};
    use walrep_daemon::kv::KvStore;
    init_tracing();
    let (addr_a, addr_b) = (free_addr().await, free_addr().await);
    let dirs = [temp_dir(), temp_dir()];
    let cfgs = [
        config("a", "b", addr_a, addr_b, CommitMode::RemoteFlush),
        config("b", "a", addr_b, addr_a, CommitMode::RemoteFlush),
    ];
    let start = |i: usize| {
        let (cfg, dir) = (cfgs[i].clone(), dirs[i].clone());
        async move {
            let listener = tokio::net::TcpListener::bind(&cfg.advertise_addr)
                .await
                .unwrap();
            let wal = Arc::new(FileWal::open(dir.join("wal"), FileWalOptions::default()).unwrap());
            let kv = Arc::new(KvStore::open(dir.join("kv")).unwrap());
            let (replica, service) = Replica::builder(cfg, wal, kv.clone())
                .start_without_server()
                .unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(walrep::serve(service, listener, async {
                let _ = stopped.await;
            }));
            (Arc::new(replica), kv, stop, server)
        }
    };
    let wait = |r: Arc<Replica>, what: &'static str, pred: fn(&walrep::Health) -> bool| async move {
        r.wait_for(WAIT, what, pred).await.unwrap()
    };
    let (a, _kv_a, stop_a, server_a) = start(0).await;
    let (b, _kv_b, stop_b, server_b) = start(1).await;
    wait(a.clone(), "a streaming", |h| h.writable && h.peer.connected).await;
    for i in 0..300 {
        a.apply(put_cmd(&format!("k{i}"), "v")).await.unwrap();
    }
    // The standby first: a primary stopped while its standby is in sync
    // would hand over to it (`shutting_down_a_primary_hands_over_...`).
    for (r, stop, server) in [(b, stop_b, server_b), (a, stop_a, server_a)] {
        r.shutdown().await;
        let _ = stop.send(());
        let _ = server.await;
    }
    let (a, kv_a, _stop_a, _server_a) = start(0).await;
    let (b, kv_b, _stop_b, _server_b) = start(1).await;
    let h = wait(a.clone(), "a primary again", |h| {
        h.role == RoleKind::Primary && h.writable
    })
    .await;
    assert_eq!(h.epoch, walrep::Epoch(1));
    assert_eq!(h.last_lsn, Lsn(300));
    wait(b.clone(), "b standby again", |h| {
        h.role == RoleKind::Standby
    })
    .await;
    a.apply(put_cmd("after", "restart")).await.unwrap();
    b.wait_for_lsn(Lsn(301), WAIT).await.unwrap();
    a.wait_for_lsn(Lsn(301), WAIT).await.unwrap();
    assert_eq!(kv_a.state_hash(), kv_b.state_hash());
    assert!(kv_b.get(b"k299").is_some());
}

/// After a switchover with no writes since, the new standby is eligible at
/// once: the probe after a reconnect is acknowledged even though it
/// carried nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_eligible_after_a_switchover_without_further_writes() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    a.put("k", "v").await.unwrap();
    b.wait("eligible", |h| h.eligible).await;
    b.replica.promote(false).await.unwrap();
    a.wait("a is an eligible standby", |h| {
        h.role == RoleKind::Standby && h.eligible
    })
    .await;
    assert_eq!(b.health().sync_state, walrep::SyncState::Sync);
}

/// A standby's WAL lost its last records (a torn tail cut at recovery, or
/// a damaged disk) though its engine's durable snapshot had applied them:
/// it must come back by resyncing from the primary's snapshot, not refuse
/// to start (found by `chaos a_torn_wal_tail_on_the_standby_is_cut_and_caught_up`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_wal_lost_records_its_state_applied_resyncs_instead_of_refusing_to_start() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    for i in 0..10 {
        a.put(&format!("k{i}"), "v").await.unwrap();
    }
    converged(&a, &b).await;
    assert_eq!(b.kv.persist_snapshot().unwrap(), Lsn(10));
    let (cfg_b, wal_b, kv_b) = b.crash().await;
    wal_b.truncate_after(Lsn(8)).unwrap();
    let b = TestNode::start(cfg_b, wal_b, kv_b).await;
    b.wait("standby again", |h| {
        h.role == RoleKind::Standby && h.eligible
    })
    .await;
    a.put("after", "restart").await.unwrap();
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    assert_eq!(b.replica.metrics().snapshot_resyncs, 1);
    assert_eq!(b.health().last_lsn, Lsn(11));
}

/// `walrep::testing::Pair`, as an engine's tests use it: `MemStateMachine`
/// engines, made again at each restart.
fn mem_engine(_: &walrep::NodeId) -> std::sync::Arc<walrep::testing::MemStateMachine> {
    std::sync::Arc::new(walrep::testing::MemStateMachine::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_starts_and_the_standby_reads_the_primarys_writes() {
    init_tracing();
    let pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    assert_eq!(pair.primary().id(), &walrep::NodeId::from("a"));
    assert_eq!(pair.standby().id(), &walrep::NodeId::from("b"));
    for i in 0..20 {
        let applied = pair
            .primary()
            .replica()
            .apply(put_cmd(&format!("k{i}"), "v"))
            .await
            .unwrap();
        pair.standby()
            .replica()
            .wait_for_lsn(applied.lsn, pair.wait_timeout())
            .await
            .unwrap();
        assert_eq!(
            pair.standby().engine().state_hash(),
            pair.primary().engine().state_hash(),
            "standby differs after {}",
            applied.lsn
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_failover_after_killing_the_primary_keeps_acknowledged_writes() {
    init_tracing();
    let mut pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let last = put_keys(pair.primary().replica(), 10).await;
    let hash = pair.primary().engine().state_hash();
    let new = pair.failover().await.unwrap();
    assert_eq!(new, walrep::NodeId::from("b"));
    assert!(!pair.node(&walrep::NodeId::from("a")).is_running());
    let b = pair.primary();
    assert_eq!(b.id(), &new);
    assert_eq!(b.replica().epoch(), walrep::Epoch(2));
    b.replica().wait_for_lsn(last, WAIT).await.unwrap();
    assert_eq!(b.engine().state_hash(), hash, "acknowledged writes lost");
    let after = b
        .replica()
        .apply(put_cmd("after", "failover"))
        .await
        .unwrap();
    assert!(after.lsn > last);
}

/// A killed node restarts from the same WAL directory (a `FileWal`),
/// with a new engine that replays it, and rejoins as the standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_restarted_node_rejoins_from_its_file_wal_as_standby() {
    init_tracing();
    let mut pair = walrep::testing::Pair::builder(mem_engine)
        .wal(walrep::testing::PairWal::File)
        .start()
        .await
        .unwrap();
    pair.wait_streaming().await.unwrap();
    put_keys(pair.primary().replica(), 10).await;
    let new = pair.failover().await.unwrap();
    let applied = pair
        .node(&new)
        .replica()
        .apply(put_cmd("while", "a is down"))
        .await
        .unwrap();
    let a = walrep::NodeId::from("a");
    pair.restart(&a).await.unwrap();
    pair.wait_streaming().await.unwrap();
    assert_eq!(pair.standby().id(), &a);
    let a = pair.node(&a);
    a.replica().wait_for_lsn(applied.lsn, WAIT).await.unwrap();
    assert_eq!(a.replica().health().last_lsn, Lsn(11));
    assert_eq!(
        a.engine().state_hash(),
        pair.primary().engine().state_hash()
    );
}

/// An engine that never reports durability (the trait's default
/// `durable_lsn`) on FileWals with small segments: under steady writes the
/// WAL of both nodes stays within `wal_retention_bytes` plus one segment on
/// disk, after many times that much was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_retention_bytes_bounds_the_wal_of_an_engine_that_never_reports_durability() {
    use std::sync::Arc;
    use walrep::testing::MemStateMachine;
    use walrep::{FileWal, FileWalOptions, Replica};
    const RETAIN: u64 = 64 << 10;
    const SEGMENT: u64 = 16 << 10;
    init_tracing();
    let (addr_a, addr_b) = (free_addr().await, free_addr().await);
    let dirs = [temp_dir(), temp_dir()];
    let mut nodes = Vec::new();
    for (i, cfg) in [
        config("a", "b", addr_a, addr_b, CommitMode::RemoteFlush),
        config("b", "a", addr_b, addr_a, CommitMode::RemoteFlush),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = walrep::Config {
            wal_retention_bytes: RETAIN,
            ..cfg
        };
        let opts = FileWalOptions {
            segment_bytes: SEGMENT,
            preallocate: false,
            ..FileWalOptions::default()
        };
        let wal = Arc::new(FileWal::open(dirs[i].join("wal"), opts).unwrap());
        let listen = cfg.advertise_addr.clone();
        let replica = Replica::builder(cfg, wal, Arc::new(MemStateMachine::new()))
            .listen(listen)
            .start()
            .unwrap();
        nodes.push(Arc::new(replica));
    }
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    a.wait_for(WAIT, "a streaming", |h| h.writable && h.peer.connected)
        .await
        .unwrap();
    let wal_bytes = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    };
    let bounded = |r: Arc<Replica>, dir: std::path::PathBuf| async move {
        r.wait_for(WAIT, "the WAL trimmed to its bound", |_| {
            wal_bytes(&dir) <= RETAIN + SEGMENT + 4096
        })
        .await
        .unwrap();
    };
    let payload = bytes::Bytes::from(vec![7u8; 1000]);
    let mut written = 0u64;
    for round in 0..256 {
        a.apply_batch(vec![payload.clone(); 4]).await.unwrap();
        written += 4000;
        if round % 32 == 31 {
            // Both WALs come back under the bound (retention runs every
            // heartbeat interval), however much was written before.
            let last = a.health().last_lsn;
            b.wait_for_lsn(last, WAIT).await.unwrap();
            bounded(a.clone(), dirs[0].clone()).await;
            bounded(b.clone(), dirs[1].clone()).await;
        }
    }
    assert!(written > 15 * RETAIN);
    assert!(a.health().first_lsn > Lsn(1) && b.health().first_lsn > Lsn(1));
    for r in [a, b] {
        r.shutdown().await;
    }
}

/// `Replicator::shutdown` of a primary with a healthy standby hands over
/// through a planned switchover: by the time it returns the standby is the
/// primary of the next epoch, the old primary persisted that it stepped
/// down for it (a failover would leave its meta alone), and every write it
/// acknowledged, up to the last moment, is on the new primary (G2, G6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_a_primary_hands_over_to_its_standby_first() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    for i in 0..20 {
        a.put(&format!("k{i}"), "v").await.unwrap();
    }
    b.wait("eligible", |h| h.eligible).await;
    let epoch = a.health().epoch;
    // Writers keep going while the primary stops.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (r, stop) = (a.replica.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let key = format!("during{i}");
                match r.apply(put_cmd(&key, "v")).await {
                    Ok(_) => acked.push(key),
                    Err(_) => tokio::task::yield_now().await,
                }
            }
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.replica.shutdown().await;
    // b persists its new epoch, led by itself, before it answers the
    // handover that `shutdown` waited for.
    let next = walrep::Epoch(epoch.0 + 1);
    assert_eq!(b.wal.meta().epoch, next);
    assert_eq!(b.wal.meta().leader, Some(walrep::NodeId::from("b")));
    let h = b.wait("primary", |h| h.role == RoleKind::Primary).await;
    assert_eq!(h.epoch, next);
    assert_eq!(
        a.wal.meta().leader,
        Some(walrep::NodeId::from("b")),
        "the old primary stepped down for b"
    );
    assert_eq!(a.wal.meta().epoch, h.epoch);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let acked = writer.await.unwrap();
    b.replica.wait_for_lsn(h.last_lsn, WAIT).await.unwrap();
    for key in (0..20).map(|i| format!("k{i}")).chain(acked) {
        assert!(
            b.kv.get(key.as_bytes()).is_some(),
            "acknowledged {key} lost"
        );
    }
    b.put("after", "handover").await.unwrap();
}

/// `Replicator::promote` asked of the primary by its own engine hands over
/// to the standby, as a promote over the RPC does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_asked_of_the_primary_by_its_engine_hands_over_to_the_standby() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    a.put("k", "v").await.unwrap();
    b.wait("eligible", |h| h.eligible).await;
    let epoch = a.replica.promote(false).await.unwrap();
    assert_eq!(epoch, walrep::Epoch(2));
    // b answers the handover before it publishes its new health.
    b.wait("b is the primary of the new epoch", |h| {
        (h.role, h.epoch) == (RoleKind::Primary, epoch)
    })
    .await;
    a.wait("a follows b", |h| h.role == RoleKind::Standby).await;
    b.put("k2", "v").await.unwrap();
}

/// A node started in one step (`listen` on port 0) serves its peer on the
/// port it bound: the peer streams to it and reads its `local_addr`.
/// Dropping a clone of its `Replica` leaves it running; `shutdown` on
/// another clone stops it, every clone then says so, and its port refuses
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listening_on_port_0_is_reachable_and_its_port_closes_at_shutdown() {
    init_tracing();
    let b_addr = free_addr().await;
    let mut b_cfg = config("b", "a", b_addr, b_addr, CommitMode::RemoteFlush);
    b_cfg.advertise_addr = "127.0.0.1:0".into();
    let b = walrep::Replica::builder(
        b_cfg,
        std::sync::Arc::new(walrep::testing::MemWal::new()),
        std::sync::Arc::new(walrep::testing::MemStateMachine::new()),
    )
    .listen("127.0.0.1:0")
    .start()
    .unwrap();
    let bound = b
        .local_addr()
        .expect("a node started with listen has an address");
    assert_ne!(bound.port(), 0, "port 0 was replaced by the one bound");
    let a = walrep::Replica::builder(
        config("a", "b", b_addr, bound, CommitMode::RemoteFlush),
        std::sync::Arc::new(walrep::testing::MemWal::new()),
        std::sync::Arc::new(walrep::testing::MemStateMachine::new()),
    )
    .listen("127.0.0.1:0")
    .start()
    .unwrap();
    drop(b.clone());
    a.wait_for(WAIT, "a streams to b", |h| {
        h.role == RoleKind::Primary && h.writable && h.peer.connected
    })
    .await
    .unwrap();
    let applied = a.apply(put_cmd("k", "v")).await.unwrap();
    b.wait_for_lsn(applied.lsn, WAIT).await.unwrap();

    let other = b.clone();
    b.shutdown().await;
    assert!(
        matches!(
            other.apply(put_cmd("k", "v")).await,
            Err(walrep::Error::ShuttingDown)
        ),
        "every clone is the node that stopped"
    );
    let refused = tokio::net::TcpStream::connect(bound).await;
    assert!(
        matches!(&refused, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "the port still accepts after shutdown: {refused:?}"
    );
    a.shutdown().await;
}

/// The standby's snapshot is larger than a chunk times the transfer's
/// window (the HTTP/2 windows, 16 MiB a connection). The standby is
/// restarted mid-transfer, its link dead since the cut: the new run finds
/// the bytes received and their sidecar, asks the primary for the same
/// snapshot from there, is served from the one build, and ends with the
/// primary's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_restarted_mid_snapshot_transfer_resumes_from_the_bytes_it_has() {
    init_tracing();
    const CHUNK: usize = 64 << 10;
    const CUT_AFTER: usize = 40;
    let mut pair = walrep::testing::Pair::builder(mem_engine)
        .config(|c| {
            c.wal_retention_bytes = 1024;
            c.snapshot_chunk_bytes = CHUNK;
        })
        .start()
        .await
        .unwrap();
    pair.wait_streaming().await.unwrap();
    let (a, b) = (walrep::NodeId::from("a"), walrep::NodeId::from("b"));
    pair.node(&a).engine().set_snapshot_padding(20 << 20);
    pair.node(&a)
        .replica()
        .apply(put_cmd("k", "v"))
        .await
        .unwrap();
    pair.kill(&b).await;
    // Alone (solo once sync_timeout passes), the primary writes on and its
    // WAL moves past what b holds: b must resync from a snapshot.
    for i in 0..200 {
        let _ = pair
            .node(&a)
            .replica()
            .apply(put_cmd(&format!("later{i}"), "some value"))
            .await;
    }
    pair.node(&a)
        .wait("WAL trimmed past b", |h| h.first_lsn > Lsn(2))
        .await
        .unwrap();

    pair.restart_with_link(&b, |link| link.cut_link_after_snapshot_chunks(CUT_AFTER))
        .await
        .unwrap();
    let first_link = pair.node(&b).link().clone();
    tokio::time::timeout(pair.wait_timeout(), first_link.wait_snapshot_cut())
        .await
        .expect("the first transfer was cut");
    assert_eq!(
        pair.node(&b).replica().metrics().snapshot_bytes_received,
        (CUT_AFTER * CHUNK) as u64,
        "the chunks before the cut were written"
    );
    pair.kill(&b).await;

    pair.restart(&b).await.unwrap();
    pair.node(&b)
        .wait("standby again", |h| h.role == RoleKind::Standby)
        .await
        .unwrap();
    let target = pair.node(&a).replica().health().last_lsn;
    pair.node(&b)
        .replica()
        .wait_for_lsn(target, pair.wait_timeout())
        .await
        .unwrap();
    let restarted = pair.node(&b);
    let m = restarted.replica().metrics();
    assert_eq!(
        m.snapshot_bytes_resumed,
        (CUT_AFTER * CHUNK) as u64,
        "the restarted standby resumed where the cut left it"
    );
    assert_eq!(m.snapshot_resyncs, 1);
    let requests = restarted.link().snapshot_requests.lock().unwrap().clone();
    let first_id = first_link.snapshot_requests.lock().unwrap()[0];
    assert_eq!(first_id, (0, 0), "the first run asked for a new transfer");
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_ne!(requests[0].0, 0, "the restarted run names the snapshot");
    assert_eq!(requests[0].1, (CUT_AFTER * CHUNK) as u64);
    assert_eq!(
        pair.node(&a).engine().snapshots_taken(),
        1,
        "the resumed transfer is served from the same build"
    );
    assert_eq!(
        restarted.engine().state_hash(),
        pair.node(&a).engine().state_hash(),
        "the restored state is the primary's"
    );
    assert!(
        !pair.dir().join("b/snapshots/incoming.snapshot").exists()
            && !pair.dir().join("b/snapshots/incoming.info").exists(),
        "the received files are gone once restored"
    );
}
/// A write whose answer is lost (the primary dies after the standby has
/// it) is retried with its request id at the new primary: the retry finds
/// the record the first attempt wrote, returns its LSN and epoch, and the
/// command is applied once on every node, also on the old primary once it
/// has rejoined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_with_a_request_id_is_applied_once_across_a_failover() {
    init_tracing();
    let mut pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let before = pair
        .primary()
        .replica()
        .apply(put_cmd("before", "v"))
        .await
        .unwrap();
    let id = walrep::RequestId::from(0x5eed_u128 << 64 | 42);
    let cmd = put_cmd("counter", "+1");

    // The first attempt: nobody looks at its answer.
    let first_try = {
        let replica = pair.primary().replica().clone();
        let cmd = cmd.clone();
        tokio::spawn(async move { replica.apply_once(id, cmd).await })
    };
    let written = before.lsn.next();
    pair.standby()
        .wait("the standby holds the first attempt", |h| {
            h.flushed_lsn >= written
        })
        .await
        .unwrap();
    let old = pair.primary().id().clone();
    let new = pair.failover().await.unwrap();
    drop(first_try);

    let retry = pair
        .node(&new)
        .replica()
        .apply_once(id, cmd.clone())
        .await
        .unwrap();
    assert!(retry.deduplicated, "{retry:?}");
    assert_eq!((retry.lsn, retry.epoch), (written, before.epoch));
    assert_eq!(pair.node(&new).engine().times_applied(&cmd), 1);
    // Retrying again changes nothing either; a new id is a new write.
    let again = pair
        .node(&new)
        .replica()
        .apply_once(id, cmd.clone())
        .await
        .unwrap();
    assert_eq!((again.lsn, again.deduplicated), (written, true));
    let other = walrep::RequestId::from(43u128);
    let fresh = pair
        .node(&new)
        .replica()
        .apply_once(other, cmd.clone())
        .await
        .unwrap();
    assert!(!fresh.deduplicated && fresh.lsn > written, "{fresh:?}");
    assert_eq!(pair.node(&new).engine().times_applied(&cmd), 2);

    // The old primary rejoins and applies the record once, too.
    pair.restart(&old).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let old = pair.node(&old);
    old.replica().wait_for_lsn(fresh.lsn, WAIT).await.unwrap();
    assert_eq!(old.engine().times_applied(&cmd), 2);
    assert_eq!(
        old.engine().state_hash(),
        pair.primary().engine().state_hash()
    );
}

/// A standby resynced from a snapshot holds none of the records the
/// snapshot covers, but learns their request ids from the primary and its
/// WAL store keeps them: restarted, then made primary by a planned
/// switchover, it recognises a retry of a write the snapshot covers and
/// answers it with the first attempt's record instead of writing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_resynced_from_a_snapshot_recognises_retries_of_the_writes_it_covers() {
    let (a, (cfg_b, wal_b, kv_b)) = standby_needing_a_snapshot(|_| {}, 64, 100).await;
    let id = walrep::RequestId::from(0xabc_u128);
    let cmd = put_cmd("once", "only");
    let first = a.replica.apply_once(id, cmd.clone()).await.unwrap();
    let b = TestNode::start(cfg_b, wal_b, kv_b).await;
    b.wait("standby again", |h| h.role == RoleKind::Standby)
        .await;
    converged(&a, &b).await;
    assert_eq!(b.replica.metrics().snapshot_resyncs, 1);
    assert!(
        b.health().first_lsn > first.lsn,
        "the snapshot covers the write: b's log does not hold it"
    );
    // The ids must outlive a restart of b as well.
    let (cfg_b, wal_b, kv_b) = b.crash().await;
    let b = TestNode::start(cfg_b, wal_b, kv_b).await;
    b.wait("standby in contact", |h| {
        h.role == RoleKind::Standby && h.eligible
    })
    .await;
    b.replica.promote(false).await.expect("switchover to b");
    let retry = b.replica.apply_once(id, cmd).await.unwrap();
    assert_eq!(
        (retry.lsn, retry.epoch, retry.deduplicated),
        (first.lsn, first.epoch, true),
        "the retry is answered with the first attempt's record"
    );
}

/// A node that restarts reads the request ids back from its WAL: the
/// standby, restarted after the write, still recognises the retry once it
/// is the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_standby_rebuilds_its_request_ids_from_its_wal() {
    init_tracing();
    let mut pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let id = walrep::RequestId::from(7u128);
    let cmd = put_cmd("once", "only");
    let first = pair
        .primary()
        .replica()
        .apply_once(id, cmd.clone())
        .await
        .unwrap();
    let standby = pair.standby().id().clone();
    pair.kill(&standby).await;
    pair.restart(&standby).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let new = pair.failover().await.unwrap();
    assert_eq!(new, standby);

    let retry = pair
        .node(&new)
        .replica()
        .apply_once(id, cmd.clone())
        .await
        .unwrap();
    assert_eq!(
        (retry.lsn, retry.epoch, retry.deduplicated),
        (first.lsn, first.epoch, true)
    );
    assert_eq!(pair.node(&new).engine().times_applied(&cmd), 1);
}

/// `apply_batch_once` mixes new records and retries in one call: each
/// command gets its own record's place, a retry (of an earlier call, or of
/// a command earlier in the same batch) the first attempt's, with an empty
/// output where a new record has the engine's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_new_and_retried_request_ids_answers_each_command_with_its_record() {
    init_tracing();
    let pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let replica = pair.primary().replica();
    let (old, new) = (
        walrep::RequestId::from(1u128),
        walrep::RequestId::from(2u128),
    );
    let (x, y) = (put_cmd("x", "1"), put_cmd("y", "2"));
    let first = replica.apply_once(old, x.clone()).await.unwrap();
    let batch = replica
        .apply_batch_once(vec![(new, y.clone()), (old, x.clone()), (new, y.clone())])
        .await
        .unwrap();
    let places: Vec<_> = batch
        .iter()
        .map(|a| (a.lsn, a.deduplicated, a.output.is_empty()))
        .collect();
    let y_lsn = first.lsn.next();
    assert_eq!(
        places,
        vec![
            (y_lsn, false, false),
            (first.lsn, true, true),
            (y_lsn, true, true)
        ]
    );
    let engine = pair.primary().engine();
    assert_eq!((engine.times_applied(&x), engine.times_applied(&y)), (1, 1));
    assert_eq!(replica.health().last_lsn, y_lsn);
}

/// Two nodes both started as primary on fresh directories, with writers
/// hammering both from the first moment: only one of them ever
/// acknowledges a write. The one with the smaller id (`a`) stays primary
/// once `b` confirmed it; `b` steps down, follows it and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fresh_nodes_both_started_as_primary_never_both_acknowledge_a_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    init_tracing();
    // Async mode: before the confirmation rule, both took writes at once.
    let (addr_a, addr_b) = (free_addr().await, free_addr().await);
    let mut cfg_a = config("a", "b", addr_a, addr_b, CommitMode::Async);
    let mut cfg_b = config("b", "a", addr_b, addr_a, CommitMode::Async);
    cfg_a.initial_role = walrep::InitialRole::Primary;
    cfg_b.initial_role = walrep::InitialRole::Primary;
    // b starts first, so it has the longer chance to take a write alone.
    let b = TestNode::start(cfg_b, Arc::new(walrep::testing::MemWal::new()), temp_dir()).await;
    let b_refusal = b.put("early", "b").await.unwrap_err();
    assert!(
        b_refusal.to_string().contains("promote --force"),
        "the refusal says what to do: {b_refusal}"
    );
    assert!(!b.health().writable);
    let a = TestNode::start(cfg_a, Arc::new(walrep::testing::MemWal::new()), temp_dir()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = |node: &TestNode, name: &'static str| {
        let (replica, stop) = (node.replica.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let cmd = put_cmd(&format!("{name}{i}"), name);
                if let Ok(applied) = replica.apply(cmd).await {
                    acknowledged.push((applied.lsn, applied.epoch));
                }
                // Pace the attempts; correctness does not depend on it.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            acknowledged
        })
    };
    let (writes_a, writes_b) = (writer(&a, "a"), writer(&b, "b"));
    // The pair settles: a writable primary a, b its standby, in contact.
    a.wait("a writable primary", |h| {
        h.role == RoleKind::Primary && h.writable && h.peer.connected
    })
    .await;
    b.wait("b following a", |h| {
        h.role == RoleKind::Standby
            && h.leader
                .as_ref()
                .is_some_and(|l| l.id == walrep::NodeId::from("a"))
    })
    .await;
    // Let a take some writes while b's writer keeps trying.
    let target = a.health().last_lsn.0 + 20;
    a.wait("20 more writes on a", |h| h.last_lsn.0 >= target)
        .await;
    stop.store(true, Ordering::SeqCst);
    let (acked_a, acked_b) = (writes_a.await.unwrap(), writes_b.await.unwrap());
    assert!(
        acked_b.is_empty(),
        "b acknowledged writes as a second primary: {acked_b:?}"
    );
    assert!(!acked_a.is_empty());
    assert!(acked_a.iter().all(|(_, e)| *e == walrep::Epoch(1)));
    assert_eq!(b.health().epoch, walrep::Epoch(1));
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    assert_eq!(b.kv.len(), acked_a.len());
}

/// The standby's disk fills: its appends fail (the log stays as it was),
/// it reports `failed`, and the primary goes on alone (`solo`). Once space
/// is back the standby takes WAL again by itself, without a restart,
/// catches up from its log's end, and the pair is in sync again: nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_whose_disk_filled_catches_up_once_space_returns_without_a_restart() {
    let (a, b) = pair(CommitMode::RemoteFlush).await;
    for i in 0..20 {
        a.put(&format!("before{i}"), "v").await.unwrap();
    }
    b.wal.fail_appends(true);
    let stuck_at = b.wal.last_lsn();
    // The first write after the disk filled waits for the standby, which
    // cannot store it; the primary counts it as lost and goes on alone.
    let mut acked = Vec::new();
    let r = a.replica.clone();
    let waiting = tokio::spawn(async move { r.apply(put_cmd("during0", "v")).await });
    // Failed for now, but it tries again by itself: a liveness probe
    // must not have it restarted.
    b.wait("its WAL failed, to be retried", |h| {
        h.role == RoleKind::Failed && h.retrying_wal
    })
    .await;
    a.wait("solo", |h| h.solo).await;
    if let Ok(applied) = waiting.await.unwrap() {
        acked.push(applied.lsn);
    }
    for i in 1..20 {
        acked.push(a.put(&format!("during{i}"), "v").await.unwrap().lsn);
    }
    assert_eq!(b.wal.last_lsn(), stuck_at, "nothing was stored meanwhile");
    // Space returns.
    b.wal.fail_appends(false);
    let target = a.health().last_lsn;
    b.wait("a standby again, caught up", |h| {
        h.role == RoleKind::Standby && h.flushed_lsn >= target
    })
    .await;
    a.wait("in sync again", |h| {
        !h.solo && h.sync_state == walrep::SyncState::Sync
    })
    .await;
    // Commits wait for the standby again, and it has every acknowledged write.
    let last = a.put("after", "v").await.unwrap();
    assert!(b.wal.flushed_lsn() >= last.lsn);
    assert!(acked.iter().all(|lsn| *lsn <= b.wal.flushed_lsn()));
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    assert_eq!(b.kv.len(), 20 + 20 + 1);
}

/// Writes unique keys to a node until `stop`, keeping the keys it
/// acknowledged (any error is a write not acknowledged).
fn keep_writing(
    node: &TestNode,
    name: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let replica = node.replica.clone();
    tokio::spawn(async move {
        let mut acknowledged = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let key = format!("{name}-{i}");
            if replica.apply(put_cmd(&key, name)).await.is_ok() {
                acknowledged.push(key);
            }
            // Pace the attempts; correctness does not depend on it.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        acknowledged
    })
}

/// A pair sharing one in-memory arbiter, each node through its own handle
/// (so a test can cut one of them from it), `a` primary, `b` in the sync
/// set.
async fn pair_with_arbiter() -> (
    TestNode,
    TestNode,
    walrep::testing::MemArbiter,
    walrep::testing::MemArbiter,
) {
    use std::sync::Arc;
    let arbiter = walrep::testing::MemArbiter::new();
    let (for_a, for_b) = (arbiter.handle(), arbiter.handle());
    let (ha, hb) = (for_a.clone(), for_b.clone());
    let (a, b) = pair_with(CommitMode::RemoteFlush, move |c| {
        let handle = if c.node_id.0 == "a" { &ha } else { &hb };
        c.arbiter = Some(Arc::new(handle.clone()));
    })
    .await;
    a.wait("b in the arbiter's sync set", |h| {
        h.arbiter
            .as_ref()
            .and_then(|s| s.register.as_ref())
            .is_some_and(|r| r.sync_set.contains(&walrep::NodeId::from("b")))
    })
    .await;
    b.wait("b eligible", |h| h.eligible).await;
    (a, b, for_a, for_b)
}

/// With an arbiter, a cut between the two nodes (both still reach the
/// arbiter) loses no acknowledged write, and writes go on on one side:
/// whichever node's swap wins, the other can no longer acknowledge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_arbiter_a_cut_between_the_nodes_loses_no_acknowledged_write_and_one_side_goes_on()
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (a, b, _, _) = pair_with_arbiter().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (writes_a, writes_b) = (
        keep_writing(&a, "a", stop.clone()),
        keep_writing(&b, "b", stop.clone()),
    );
    let before = a.health().commit_lsn.0 + 10;
    a.wait("10 writes before the cut", |h| h.commit_lsn.0 >= before)
        .await;
    a.link.set_cut(true);
    b.link.set_cut(true);
    // One side goes on: `a` alone after taking b out of the sync set, or
    // `b` promoted from it.
    let goes_on = |h: &walrep::Health| h.role == RoleKind::Primary && h.writable && h.solo;
    let survivor = tokio::select! {
        _ = a.wait("a acknowledging alone", goes_on) => &a,
        _ = b.wait("b promoted", goes_on) => &b,
    };
    let target = survivor.health().commit_lsn.0 + 10;
    survivor
        .wait("10 writes on one side of the cut", |h| {
            h.commit_lsn.0 >= target
        })
        .await;
    // The other side has tried to go on too, and was stopped by the
    // arbiter: a primary learned the newer epoch from its failed swap, a
    // standby was refused the promotion.
    let (survivor_id, survivor_epoch) = (survivor.cfg.node_id.clone(), survivor.health().epoch);
    let other = if survivor_id.0 == "a" { &b } else { &a };
    other
        .wait("the other side stopped by the arbiter", |h| {
            (h.role != RoleKind::Primary && h.epoch == survivor_epoch)
                || h.arbiter.as_ref().is_some_and(|s| s.held_back.is_some())
        })
        .await;
    a.link.set_cut(false);
    b.link.set_cut(false);
    other
        .wait("the other side follows", |h| {
            h.role == RoleKind::Standby && h.leader.as_ref().is_some_and(|l| l.id == survivor_id)
        })
        .await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged: Vec<String> = [writes_a.await.unwrap(), writes_b.await.unwrap()].concat();
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    for key in &acknowledged {
        assert!(
            a.kv.get(key.as_bytes()).is_some(),
            "{key} was acknowledged but is gone after the cut healed (survivor {survivor_id})"
        );
    }
}

/// With an arbiter, a primary cut from both its standby and the arbiter
/// acknowledges nothing more; the standby, in the sync set, takes over;
/// nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_arbiter_a_primary_cut_from_both_stops_acknowledging_and_the_standby_takes_over() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (a, b, arbiter_of_a, _) = pair_with_arbiter().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writes_a = keep_writing(&a, "a", stop.clone());
    let before = a.health().commit_lsn.0 + 10;
    a.wait("10 writes before the cut", |h| h.commit_lsn.0 >= before)
        .await;
    arbiter_of_a.set_unreachable(true);
    a.link.set_cut(true);
    b.link.set_cut(true);
    b.wait("b promoted through the arbiter", |h| {
        h.role == RoleKind::Primary && h.writable
    })
    .await;
    a.wait("a refuses writes", |h| !h.writable).await;
    let writes_b = keep_writing(&b, "b", stop.clone());
    let target = b.health().commit_lsn.0 + 10;
    b.wait("10 writes on b", |h| h.commit_lsn.0 >= target).await;
    arbiter_of_a.set_unreachable(false);
    a.link.set_cut(false);
    b.link.set_cut(false);
    a.wait("a follows b", |h| {
        h.role == RoleKind::Standby
            && h.leader
                .as_ref()
                .is_some_and(|l| l.id == walrep::NodeId::from("b"))
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged: Vec<String> = [writes_a.await.unwrap(), writes_b.await.unwrap()].concat();
    let (ha, hb) = converged(&a, &b).await;
    assert_eq!(ha, hb);
    for key in &acknowledged {
        assert!(
            b.kv.get(key.as_bytes()).is_some(),
            "{key} was acknowledged but is gone after the failover"
        );
    }
}

type MemPair = walrep::testing::Pair<walrep::testing::MemStateMachine>;

/// Ten writes on the pair's primary, acknowledged; returns its id and
/// its standby's.
async fn ten_writes(pair: &MemPair) -> (walrep::NodeId, walrep::NodeId) {
    let (a, b) = (pair.primary().id().clone(), pair.standby().id().clone());
    for i in 0..10 {
        let cmd = put_cmd(&format!("k{i}"), "v");
        pair.primary().replica().apply(cmd).await.unwrap();
    }
    (a, b)
}

/// Holds `a`'s fsyncs and writes a record that `b`, its standby, makes
/// durable and `a` does not; returns `a`'s log end before it and the
/// write, which is never acknowledged.
async fn a_record_only_the_standby_made_durable(
    pair: &MemPair,
    a: &walrep::NodeId,
    b: &walrep::NodeId,
) -> (
    Lsn,
    tokio::task::JoinHandle<walrep::Result<walrep::Applied>>,
) {
    let base = pair.node(a).replica().health().last_lsn;
    pair.node(a).mem_wal().unwrap().hold_syncs(true);
    let writer = {
        let replica = pair.node(a).replica().clone();
        tokio::spawn(async move { replica.apply(put_cmd("lost", "x")).await })
    };
    pair.node(b)
        .wait("b holds a record a has not made durable", |h| {
            h.flushed_lsn > base
        })
        .await
        .unwrap();
    (base, writer)
}

/// Writes on `primary` and waits until `standby` applied the write as a
/// standby; then their states must be one.
async fn write_and_converge(
    pair: &MemPair,
    primary: &walrep::NodeId,
    standby: &walrep::NodeId,
) -> Lsn {
    let written = pair
        .node(primary)
        .replica()
        .apply(put_cmd("after", "v"))
        .await
        .unwrap();
    pair.node(standby)
        .wait("the standby applied the primary's write", |h| {
            h.role == RoleKind::Standby && h.applied_lsn >= written.lsn
        })
        .await
        .unwrap();
    assert_eq!(
        pair.node(standby).engine().state_hash(),
        pair.node(primary).engine().state_hash(),
        "the standby's state is the primary's"
    );
    written.lsn
}

/// A switchover cut short by both nodes stopping at once (`docker compose
/// stop` sends SIGTERM to both): the old primary saw that the standby held
/// everything, saved the next epoch led by the standby and stopped, and
/// the standby stopped before that answer reached it. Restarted, each is
/// a standby of the other, and no primary speaks to either; the standby
/// asks its peers, learns the epoch that names it, and takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_cut_short_by_both_nodes_stopping_leaves_a_primary_after_restart() {
    init_tracing();
    let mut pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let (a, b) = ten_writes(&pair).await;
    let epoch = pair.primary().replica().health().epoch;
    pair.kill(&b).await;
    pair.node(&a)
        .wal()
        .set_meta(&walrep::WalMeta {
            epoch: epoch.next(),
            leader: Some(b.clone()),
            confirmed: true,
            restart_points: Default::default(),
        })
        .unwrap();
    pair.kill(&a).await;
    pair.restart(&a).await.unwrap();
    pair.restart(&b).await.unwrap();

    let health = pair
        .node(&b)
        .wait("b took the epoch a handed it", |h| {
            h.role == RoleKind::Primary && h.writable
        })
        .await
        .unwrap();
    assert_eq!(health.epoch, epoch.next());
    write_and_converge(&pair, &b, &a).await;
    for i in 0..10 {
        let cmd = put_cmd(&format!("k{i}"), "v");
        assert_eq!(pair.node(&a).engine().times_applied(&cmd), 1, "write {i}");
    }
}

/// An async pair after ten writes: `a` crashed (its machine: what its
/// fsync had not covered is gone) with one more record only `b` made
/// durable, never acknowledged; `b` does not take over meanwhile. Returns
/// the pair, `a`, `b` and `a`'s log end (before the lost record).
async fn an_async_primary_crashed_losing_a_record_its_standby_holds()
-> (MemPair, walrep::NodeId, walrep::NodeId, Lsn) {
    let mut pair = walrep::testing::Pair::builder(mem_engine)
        .commit_mode(CommitMode::Async)
        .start()
        .await
        .unwrap();
    pair.wait_streaming().await.unwrap();
    let (a, b) = ten_writes(&pair).await;
    pair.node(&b)
        .replica()
        .set_failover_paused(true)
        .await
        .unwrap();
    let (base, lost) = a_record_only_the_standby_made_durable(&pair, &a, &b).await;
    pair.kill(&a).await;
    assert!(lost.await.unwrap().is_err(), "never acknowledged");
    (pair, a, b, base)
}

/// Restarts `a` cut off from its peer, and waits until it writes as the
/// primary again.
async fn restart_cut_off_as_writable_primary(pair: &mut MemPair, a: &walrep::NodeId) {
    pair.restart_with_link(a, |link| link.set_cut(true))
        .await
        .unwrap();
    pair.node(a)
        .wait("a is the primary again", |h| {
            h.role == RoleKind::Primary && h.writable
        })
        .await
        .unwrap();
}

/// The primary's machine crashes while its standby holds a record its own
/// fsync had not covered yet (it streams before it syncs). Restarted, the
/// primary writes other records under the same LSNs and epoch. The
/// standby must drop the lost record rather than take the new ones after
/// it: epochs alone cannot tell the two apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_lost_records_its_standby_holds_makes_it_drop_them_after_a_restart() {
    init_tracing();
    let (mut pair, a, b, base) = an_async_primary_crashed_losing_a_record_its_standby_holds().await;

    // Restarted and cut off from b, a writes alone under the same LSNs.
    restart_cut_off_as_writable_primary(&mut pair, &a).await;
    let mut last = Lsn(0);
    for i in 0..3 {
        let cmd = put_cmd(&format!("new{i}"), "v");
        last = pair.node(&a).replica().apply(cmd).await.unwrap().lsn;
    }
    assert_eq!(
        last,
        Lsn(base.0 + 3),
        "a's new records took the lost one's place"
    );
    pair.set_link_cut(&a, false);
    // b dropped the lost record and took the new ones.
    write_and_converge(&pair, &a, &b).await;
    // b had applied the lost record, so it resynced from a's snapshot,
    // once: the stream that followed reached it, and the next write comes
    // by that stream, not by another rejoin.
    write_and_converge(&pair, &a, &b).await;
    assert_eq!(pair.node(&b).engine().restores(), 1);
}

/// The case above, with the primary restarting a second time before its
/// stream reached the standby: its log then ends after the records it
/// wrote since the first restart, which the standby does not hold, while
/// the standby's lost record lies below that end. The first restart's
/// point, kept in the WAL's meta, still makes the standby drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_restarting_twice_before_reaching_its_standby_still_makes_it_drop_the_lost_record()
 {
    init_tracing();
    let (mut pair, a, b, base) = an_async_primary_crashed_losing_a_record_its_standby_holds().await;

    // Restarted and cut off from b, a makes three records durable under
    // the lost one's LSN and after it; then it restarts again, still cut
    // off, its log ending past the lost record.
    for _ in 0..2 {
        restart_cut_off_as_writable_primary(&mut pair, &a).await;
        if pair.node(&a).replica().health().last_lsn == base {
            for i in 0..3 {
                let cmd = put_cmd(&format!("new{i}"), "v");
                pair.node(&a).replica().apply(cmd).await.unwrap();
            }
            pair.kill(&a).await;
        }
    }
    assert_eq!(pair.node(&a).replica().health().last_lsn, Lsn(base.0 + 3));
    assert_eq!(
        pair.node(&a).wal().meta().restart_points.get(&b),
        Some(&base),
        "the first restart's point"
    );
    pair.set_link_cut(&a, false);
    write_and_converge(&pair, &a, &b).await;
    let last = write_and_converge(&pair, &a, &b).await;
    pair.node(&a)
        .wait("a heard b's ack of its last write", |h| {
            h.standbys.iter().any(|s| s.flushed_lsn >= last)
        })
        .await
        .unwrap();
    let meta = pair.node(&a).wal().meta();
    assert!(
        meta.restart_points.is_empty(),
        "dropped once the stream reached b: {meta:?}"
    );
}

/// The mirror of the case above: the standby promoted with the record the
/// primary lost, and the primary, restarted and cut off, wrote others
/// under the same LSNs and epoch before it learnt of the new epoch. Its
/// rejoin must drop them, though epochs say both logs agree there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_wrote_over_records_it_lost_drops_them_when_it_rejoins() {
    init_tracing();
    let mut pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let (a, b, _, writes) = restarted_cut_off_over_a_lost_record(&mut pair).await;
    pair.set_link_cut(&a, false);
    pair.set_link_cut(&b, false);
    for w in writes {
        let _ = w.await.unwrap();
    }
    // a rejoined b and dropped what it wrote over the lost record.
    write_and_converge(&pair, &b, &a).await;
}

/// Ten writes on `a`, then one only `b` made durable; `b` takes over, and
/// `a` restarts cut off from it both ways and makes two writes durable at
/// the LSNs of the record it lost and the one after (never acknowledged:
/// returned, waiting). Returns `a`, `b`, `a`'s log end before the lost
/// record and the two writes.
async fn restarted_cut_off_over_a_lost_record(
    pair: &mut MemPair,
) -> (
    walrep::NodeId,
    walrep::NodeId,
    Lsn,
    Vec<tokio::task::JoinHandle<walrep::Result<walrep::Applied>>>,
) {
    let (a, b) = ten_writes(pair).await;
    let (base, lost) = a_record_only_the_standby_made_durable(pair, &a, &b).await;
    assert_eq!(pair.failover().await.unwrap(), b);
    assert!(lost.await.unwrap().is_err(), "never acknowledged");
    pair.set_link_cut(&b, true);
    pair.restart_with_link(&a, |link| link.set_cut(true))
        .await
        .unwrap();
    let writes: Vec<_> = (0..2)
        .map(|i| {
            let replica = pair.node(&a).replica().clone();
            tokio::spawn(async move { replica.apply(put_cmd(&format!("new{i}"), "v")).await })
        })
        .collect();
    pair.node(&a)
        .wait("a made both durable", |h| h.flushed_lsn >= Lsn(base.0 + 2))
        .await
        .unwrap();
    (a, b, base, writes)
}

/// The case above, up to the old primary stopping after it learnt of the
/// new epoch and before its rejoin settled what it wrote: `a` wrote two
/// records over the one it lost (which `b`, the new primary, holds), then
/// stepped down and was killed. Returns `a`, `b` and `a`'s log end before
/// the lost record.
async fn wrote_over_a_lost_record_and_stopped_before_its_rejoin(
    pair: &mut MemPair,
) -> (walrep::NodeId, walrep::NodeId, Lsn) {
    let (a, b, base, writes) = restarted_cut_off_over_a_lost_record(pair).await;
    let epoch = pair.node(&b).replica().health().epoch;
    // b reaches a, a cannot reach b: a learns the new epoch and steps
    // down, and its rejoin cannot ask b anything. Then it stops.
    pair.set_link_cut(&b, false);
    pair.node(&a)
        .wait("a stepped down for b's epoch", |h| {
            h.epoch == epoch && h.role != RoleKind::Primary
        })
        .await
        .unwrap();
    pair.kill(&a).await;
    for w in writes {
        assert!(w.await.unwrap().is_err(), "never acknowledged");
    }
    (a, b, base)
}

/// Restarted after stopping before its rejoin, the old primary must rejoin
/// before it follows the new one: a stream's checks cannot tell its
/// records from the lost ones under the same LSNs and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_wrote_over_records_it_lost_and_stopped_before_its_rejoin_drops_them_at_its_next_start()
 {
    init_tracing();
    let mut pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let (a, b, _) = wrote_over_a_lost_record_and_stopped_before_its_rejoin(&mut pair).await;
    pair.restart(&a).await.unwrap();
    write_and_converge(&pair, &b, &a).await;
}

/// The same, but restarted cut off from the new primary, the old one is
/// promoted by force before its rejoin could run: it keeps its restart
/// point, so the new primary, stepping down for it, drops the record the
/// old one lost and wrote over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_forced_to_take_over_before_its_rejoin_makes_its_peer_drop_the_record_it_lost() {
    init_tracing();
    let mut pair = walrep::testing::Pair::start(mem_engine).await.unwrap();
    pair.wait_streaming().await.unwrap();
    let (a, b, _) = wrote_over_a_lost_record_and_stopped_before_its_rejoin(&mut pair).await;
    pair.restart_with_link(&a, |link| link.set_cut(true))
        .await
        .unwrap();
    pair.node(&a)
        .wait("a starts with a rejoin", |h| {
            matches!(h.role, RoleKind::Fenced | RoleKind::Rejoining)
        })
        .await
        .unwrap();
    pair.node(&a).replica().promote(true).await.unwrap();
    pair.set_link_cut(&a, false);
    write_and_converge(&pair, &a, &b).await;
}
