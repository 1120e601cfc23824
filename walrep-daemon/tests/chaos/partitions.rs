//! The peer link cut both ways or one way, by blackhole or reset.

use crate::daemon_support::*;
use crate::harness::*;
use std::time::{Duration, Instant};

/// Partition with `on_standby_loss = block`: the old primary stops
/// acknowledging, the standby takes over, nothing acknowledged is lost.
async fn partition_in_block_mode(name: &'static str, mode: LinkMode) {
    let c = Cluster::start(name, &[("on_standby_loss", "block")]).await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.cut(mode);
    c.wait_primary(1).await;
    c.wait_or_show_evidence(0, "old primary refusing writes", |h| !h.writable)
        .await;
    load.wait_acks(1, 2, fault, 50).await;
    // A stretch of the partition with the old primary refusing.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, 1);

    the_cut_held(&samples, healed);
    // Writes fail while cut off: nothing sent to n1 after the cut (give the
    // proxy a moment to stop forwarding) was acknowledged in epoch 1.
    let grace = Duration::from_millis(100);
    if let Some(w) = writes
        .iter()
        .find(|w| w.node == 0 && w.started > fault + grace && w.acked().is_some())
    {
        panic!("block: the old primary acknowledged {w:?} while cut off");
    }
    g2_nothing_acked_lost(&c, 1, &writes).await;
    report(
        &c,
        &writes,
        &Figures::of(&conv).with_failover(&writes, fault, 1),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_partition_in_block_mode_loses_no_acknowledged_write() {
    partition_in_block_mode("partition_block_blackhole", LinkMode::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_partition_in_block_mode_loses_no_acknowledged_write() {
    partition_in_block_mode("partition_block_reset", LinkMode::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_in_solo_mode_drops_only_what_the_old_primary_acknowledged_alone() {
    let c = Cluster::start("partition_solo", &[]).await;
    // One pinned writer keeps writing to the isolated old primary.
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.cut(LinkMode::Blackhole);
    c.wait_primary(1).await;
    load.wait_acks(1, 2, fault, 50).await;
    // Both sides write: the old primary alone once sync_timeout passed.
    c.wait_or_show_evidence(0, "old primary gone solo", |h| {
        is_writable_primary(h) && h.solo && h.epoch == 1
    })
    .await;
    load.wait_acks(0, 1, Instant::now(), 10).await;

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, 1);
    the_cut_held(&samples, healed);

    let lost = g2_only_what_the_old_primary_acknowledged_alone_is_lost(
        &c, &writes, &samples, fault, &conv,
    )
    .await;
    // The isolated primary acknowledged writes alone, so some were dropped.
    assert!(
        !lost.is_empty(),
        "the scenario did not exercise the solo loss: nothing acknowledged alone was dropped"
    );
    report(
        &c,
        &writes,
        &Figures {
            lost: lost.len(),
            ..Figures::of(&conv).with_failover(&writes, fault, 1)
        },
    );
}

/// Only n1 -> n2 is cut: the standby hears nothing and promotes, and its
/// Fence reaches the old primary through the open direction, which stops
/// writing at once, before the link heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_partition_fences_the_old_primary_through_the_open_direction() {
    let c = Cluster::start("partition_one_way", &[]).await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.links[0].set(LinkMode::Blackhole);
    c.wait_primary(1).await;
    let fenced = c
        .wait_or_show_evidence(0, "old primary fenced while cut", |h| {
            h.epoch >= 2 && !h.writable
        })
        .await;
    assert_ne!(fenced.role, "primary", "{fenced:?}");
    load.wait_acks(1, 2, fault, 50).await;

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, 1);
    let lost = g2_only_what_the_old_primary_acknowledged_alone_is_lost(
        &c, &writes, &samples, fault, &conv,
    )
    .await;
    report(
        &c,
        &writes,
        &Figures {
            lost: lost.len(),
            ..Figures::of(&conv).with_failover(&writes, fault, 1)
        },
    );
}
