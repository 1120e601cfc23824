//! Three data nodes (`a` primary, `b` and `c` standbys) and a shared
//! in-memory arbiter over real tonic on 127.0.0.1, with the default rule
//! (every standby confirms each write).

use crate::common::*;
use crate::mem_engine;
use walrep::testing::Pair;
use walrep::{Lsn, NodeId, Replicator, RoleKind};

fn id(s: &str) -> NodeId {
    NodeId::from(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_durable_on_every_standby_the_rule_waits_for() {
    init_tracing();
    let mut cluster = Pair::builder(mem_engine).nodes(3).start().await.unwrap();
    cluster.wait_streaming().await.unwrap();
    assert_eq!(cluster.primary().id(), &id("a"));
    let primary = cluster.primary().replica().clone();
    let health = primary.health();
    assert_eq!(
        health
            .standbys
            .iter()
            .map(|s| s.node_id.clone())
            .collect::<Vec<_>>(),
        vec![id("b"), id("c")]
    );
    for i in 0..20 {
        let applied = primary.apply(put_cmd(&format!("k{i}"), "v")).await.unwrap();
        for standby in ["b", "c"] {
            let flushed = cluster.node(&id(standby)).wal().flushed_lsn();
            assert!(
                flushed >= applied.lsn,
                "write {} acknowledged while {standby} has flushed only {flushed}",
                applied.lsn
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_one_standby_and_the_other_follows_it() {
    init_tracing();
    let mut cluster = Pair::builder(mem_engine).nodes(3).start().await.unwrap();
    cluster.wait_streaming().await.unwrap();
    let mut last = Lsn(0);
    for i in 0..10 {
        last = cluster
            .primary()
            .replica()
            .apply(put_cmd(&format!("k{i}"), "v"))
            .await
            .unwrap()
            .lsn;
    }
    let hash = cluster.primary().engine().state_hash();

    let new = cluster.failover().await.unwrap();
    assert!(new == id("b") || new == id("c"), "{new} promoted");
    let other = if new == id("b") { id("c") } else { id("b") };
    let promoted = cluster.node(&new).replica().clone();
    assert_eq!(promoted.epoch(), walrep::Epoch(2));
    promoted.wait_for_lsn(last, WAIT).await.unwrap();
    assert_eq!(
        cluster.node(&new).engine().state_hash(),
        hash,
        "an acknowledged write is missing on the new primary"
    );

    // The other standby follows the new primary of epoch 2 without an
    // operator, and receives what it writes.
    let follower = cluster.node(&other);
    follower
        .wait("following the new primary", |h| {
            h.role == RoleKind::Standby
                && h.epoch == walrep::Epoch(2)
                && h.leader.as_ref().is_some_and(|l| l.id == new)
        })
        .await
        .unwrap();
    let after = promoted.apply(put_cmd("after", "failover")).await.unwrap();
    follower
        .replica()
        .wait_for_lsn(after.lsn, WAIT)
        .await
        .unwrap();
    assert_eq!(
        follower.engine().state_hash(),
        cluster.node(&new).engine().state_hash()
    );

    // The old primary comes back as a standby of the new one.
    cluster.restart(&id("a")).await.unwrap();
    let old = cluster.node(&id("a"));
    old.wait("the old primary rejoined as a standby", |h| {
        h.role == RoleKind::Standby && h.epoch == walrep::Epoch(2)
    })
    .await
    .unwrap();
    old.replica().wait_for_lsn(after.lsn, WAIT).await.unwrap();
    assert_eq!(
        old.engine().state_hash(),
        cluster.node(&new).engine().state_hash()
    );
    cluster.shutdown().await;
}
