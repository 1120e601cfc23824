//! A primary started again on a wiped data directory (at epoch 1, never
//! confirmed) beside a node whose log holds records: the node keeps its
//! log instead of following it (`node/wiped_peer.rs`).

use super::*;

/// A batch from n2, unconfirmed at epoch 1, from an empty log: the probe
/// its streamer opens with.
fn fresh_probe() -> WalBatch {
    WalBatch {
        header: header(1, "n2"),
        unconfirmed: true,
        ..batch((0, 0), vec![], 0, 0)
    }
}

fn refusal(effects: &[Effect]) -> &Refused {
    match effects {
        [Effect::Answer(Err(refused))] => refused,
        other => panic!("expected one refusal, got {other:?}"),
    }
}

#[test]
fn a_standby_holding_records_never_follows_an_unconfirmed_primary_and_takes_over() {
    // In sync with n2 at t=100, its log at 10; then n2 is back at epoch 1
    // on an empty, unconfirmed directory.
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    let effects = node.step(t(200), fresh_heartbeat("n2", 0));
    let refused = refusal(&effects);
    assert_eq!(refused.kind, RefusalKind::NotStandby);
    assert!(
        refused.message.contains("fresh data directory") && refused.message.contains("up to 10"),
        "{}",
        refused.message
    );
    // Its stream's first batch would have sent the node to rewind to 0.
    let effects = receive(&mut node, t(300), fresh_probe());
    assert_eq!(refusal(&effects).kind, RefusalKind::NotStandby);
    assert_eq!(node.role(), RoleKind::Standby, "no rejoin, no rewind");
    assert_eq!(node.last_lsn(), Lsn(10));
    // The refused messages are no contact: the silence since t=100 makes
    // the standby, in sync then, take over as the failover rule says; its
    // fence then makes the wiped node its standby.
    assert!(tick_until(&mut node, 400, 1000).is_empty());
    assert_eq!(node.step(t(1100), Event::Tick), promotes_n1_to_epoch_two());
}

#[test]
fn an_unconfirmed_primary_is_followed_by_a_node_holding_nothing_and_the_refusal_does_not_stick() {
    // A fresh cluster's standby holds nothing: it follows the fresh
    // primary, and its answer is what confirms it.
    let standby_cfg = Config {
        initial_role: crate::InitialRole::Standby,
        ..cfg()
    };
    let (mut fresh, _) = new_node(
        standby_cfg,
        WalMeta::default(),
        Lsn(0),
        Lsn(0),
        Lsn(0),
        t(0),
    );
    let effects = fresh.step(t(1), fresh_heartbeat("n2", 0));
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))), "{effects:?}");
    let effects = fresh.step(
        t(2),
        Event::BatchReceived {
            batch: fresh_probe(),
            local_at_prev: None,
            local: vec![],
        },
    );
    assert_eq!(effects, vec![Effect::Answer(Ok(()))]);

    // A node that refused the unconfirmed primary follows a confirmed one
    // (the real primary back with its directory) as before.
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    refusal(&node.step(t(200), fresh_heartbeat("n2", 0)));
    let effects = node.step(t(300), heartbeat(1, "n2", 10, 10, SyncState::Sync));
    assert_eq!(effects, vec![Effect::Answer(Ok(()))]);
}

#[test]
fn an_unconfirmed_primary_of_an_older_epoch_is_told_a_newer_primary_exists() {
    // The epoch rules come first: the wiped node (epoch 1) beside a node
    // of epoch 2 learns whom to follow.
    let mut node = standby_with_log();
    let effects = node.step(t(1), fresh_heartbeat("n1", 0));
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::StaleEpoch));
}

#[test]
fn the_wiped_primary_is_not_confirmed_by_an_ack_from_a_standby_holding_records() {
    // The standby's stream acks positions (its applies moving, say) before
    // it refuses the wiped node's first batch: they show a log the wiped
    // node lacks, so they confirm nothing.
    let (mut wiped, _) = fresh_primary("n1", "n2", CommitMode::RemoteFlush);
    wiped.step(
        t(1),
        Event::StreamState {
            standby: NodeId::from("n2"),
            up: true,
        },
    );
    let held = StandbyPositions {
        written: Lsn(20),
        flushed: Lsn(20),
        applied: Lsn(12),
    };
    let effects = wiped.step(
        t(2),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: held,
            epoch: Epoch(1),
        },
    );
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::PersistMeta {
                confirmed: true,
                ..
            }
        )),
        "{effects:?}"
    );
    assert!(refuses_writes_until_confirmed(&wiped));
}
