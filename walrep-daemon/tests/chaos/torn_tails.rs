//! A crash that tore the standby's WAL tail.

use crate::daemon_support::*;
use crate::harness::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_on_the_standby_is_cut_and_caught_up() {
    let mut c = Cluster::start("torn_standby_tail", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 100).await;

    kill_and_tear_the_wal_tail(&mut c, 1, 3);
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    assert!(
        log_says(&c.nodes[1], "torn WAL tail"),
        "the restarted standby did not report cutting a torn tail:\n{}",
        c.nodes[1].log_tail(30)
    );
    load.wait_acks(0, 1, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0);
    g2_nothing_acked_lost(&c, 0, &writes).await;
    report(&c, &writes, &Figures::of(&conv));
}

/// The torn record had been applied and the standby's KV snapshot covers
/// it: the engine is ahead of the cut WAL. The standby used to refuse to
/// start ("the WAL does not belong to this state"); it must resync from
/// the primary's snapshot and catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_under_the_standbys_kv_snapshot_resyncs_and_catches_up() {
    let mut c = Cluster::start(
        "torn_tail_under_snapshot",
        &[("snapshot_interval_ms", "50")],
    )
    .await;
    let first = write_all(&c.http[0], "before-", 100).await;
    let last = c.health(0).await.unwrap().last_lsn;
    c.wait_or_show_evidence(1, "applied everything", |h| h.applied_lsn == last)
        .await;
    let deadline = Instant::now() + WAIT;
    while kv_snapshot_lsn(&c.data_dir(1)) < last {
        assert!(Instant::now() < deadline, "no KV snapshot at {last} on n2");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let load = Load::start(&c, &writers(4, &[1]));
    kill_and_tear_the_wal_tail(&mut c, 1, 3);
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    assert!(
        log_says(&c.nodes[1], "torn WAL tail")
            && log_says(&c.nodes[1], "resyncing from the peer's snapshot"),
        "the restarted standby did not cut the torn tail and resync:\n{}",
        c.nodes[1].log_tail(30)
    );
    load.wait_acks(0, 1, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0);
    g2_nothing_acked_lost(&c, 0, &writes).await;
    assert_all_readable(&c.http[0], &first).await;
    assert_all_readable(&c.http[1], &first).await;
    report(&c, &writes, &Figures::of(&conv));
}
