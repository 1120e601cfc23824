//! A primary that comes back at the same epoch without records it told
//! its standby were committed (its data directory was wiped, or restored
//! from an older copy): the standby keeps its log instead of following it.

use super::*;

/// A batch from n2 at `epoch` that brings nothing, from a log ending at
/// `primary_last`.
fn probe(epoch: u64, primary_last: u64) -> WalBatch {
    WalBatch {
        header: header(epoch, "n2"),
        ..batch((0, 0), vec![], primary_last, 1)
    }
}

/// A standby of n2 at epoch 1 whose log (1..=10) continues n2's, told in
/// a batch that n2 committed up to `commit`.
fn standby_told_commit(commit: u64) -> Node {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    let told = WalBatch {
        header: header(1, "n2"),
        commit_lsn: Lsn(commit),
        ..batch((10, 1), vec![], 10, 1)
    };
    assert_eq!(
        receive(&mut node, t(100), told),
        vec![Effect::Answer(Ok(()))]
    );
    node
}

fn refusal(effects: &[Effect]) -> &Refused {
    match effects {
        [Effect::Answer(Err(refused))] => refused,
        other => panic!("expected one refusal, got {other:?}"),
    }
}

#[test]
fn a_standby_does_not_follow_a_primary_of_its_epoch_that_lost_committed_records() {
    // n2 told this standby (log at 10) that everything up to 10 was
    // committed; then n2 comes back at epoch 1 with an empty log.
    let mut node = standby_told_commit(10);
    let effects = node.step(t(200), heartbeat(1, "n2", 0, 0, SyncState::NotSync));
    let refused = refusal(&effects);
    assert_eq!(refused.kind, RefusalKind::NotStandby);
    assert!(
        refused.message.contains("lost writes it acknowledged")
            && refused.message.contains("up to 10"),
        "{}",
        refused.message
    );
    let effects = receive(&mut node, t(300), probe(1, 0));
    assert_eq!(refusal(&effects).kind, RefusalKind::NotStandby);
    assert_eq!(node.role(), RoleKind::Standby, "no rejoin, no rewind");
    assert_eq!(node.last_lsn(), Lsn(10));
    // Its messages are no contact: the silence since t=100 makes the
    // standby, in sync then, take over as the failover rule says.
    assert!(tick_until(&mut node, 400, 1000).is_empty());
    assert_eq!(node.step(t(1100), Event::Tick), promotes_n1_to_epoch_two());
}

#[test]
fn a_standby_follows_a_primary_that_lost_only_records_it_never_committed() {
    // Committed up to 8 of the standby's 10: a primary that crashed
    // before its own fsync of 9..=10 comes back at 9. Those records were
    // never acknowledged, so the standby rewinds them as usual.
    let mut node = standby_told_commit(10);
    let mut node8 = standby_told_commit(8);
    let effects = node8.step(t(200), heartbeat(1, "n2", 9, 8, SyncState::Sync));
    assert_eq!(effects, vec![Effect::Answer(Ok(()))]);
    let effects = receive(&mut node8, t(300), probe(1, 9));
    assert_eq!(refusal(&effects[..1]).kind, RefusalKind::Diverged);
    assert_eq!(node8.role(), RoleKind::Fenced, "it rejoins to rewind");

    // A primary of a newer epoch may lack what the old one committed (it
    // was promoted without it): followed too.
    let effects = node.step(t(200), heartbeat(2, "n2", 0, 0, SyncState::NotSync));
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))));
    assert_eq!(node.epoch(), Epoch(2));
}

#[test]
fn a_rejoining_node_waits_rather_than_rewind_to_a_primary_of_its_epoch_that_lost_committed_records()
{
    // Committed up to 8; a batch from a log ending at 9 sends the standby
    // to rejoin (it holds 10).
    let mut node = standby_told_commit(8);
    receive(&mut node, t(200), probe(1, 9));
    node.step(t(300), Event::RejoinStarted);
    assert_eq!(node.role(), RoleKind::Rejoining);
    let peer = |last: u64| PeerLog {
        epoch: Epoch(1),
        role: RoleKind::Primary,
        history: history(&[(1, 1)]),
        first_lsn: Lsn(1),
        last_lsn: Lsn(last),
    };
    let ours = LocalLog {
        history: history(&[(1, 1)]),
        first_lsn: Lsn(1),
        last_lsn: Lsn(10),
        applied: Lsn(8),
    };
    // Meanwhile the primary lost its directory: its log ends at 5.
    let effects = node.step(
        t(400),
        Event::PeerLogFetched {
            peer: peer(5),
            ours: ours.clone(),
        },
    );
    assert_eq!(effects, vec![Effect::Rejoin(RejoinPlan::Wait)]);
    // The same primary with everything it committed: rewind past 9 only.
    let effects = node.step(
        t(500),
        Event::PeerLogFetched {
            peer: peer(9),
            ours,
        },
    );
    assert_eq!(
        effects,
        vec![Effect::Rejoin(RejoinPlan::Rewind {
            truncate_after: Some(Lsn(9)),
            resync: false,
            epoch: Epoch(1)
        })]
    );
}

#[test]
fn only_a_commit_of_records_received_from_that_primary_holds_a_rejoin_back() {
    // A heartbeat says nothing of our log: told by heartbeat alone that
    // n2 committed up to 10, the standby follows n2 back at 0 (a fresh
    // primary it never took a record from, as far as it knows).
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    let effects = node.step(t(200), heartbeat(1, "n2", 0, 10, SyncState::NotSync));
    assert_eq!(effects, vec![Effect::Answer(Ok(()))]);

    // A commit heard at epoch 1 says nothing of epoch 2's primary: a node
    // told 8 at epoch 1 that rejoins n2 at epoch 2 (which parted from our
    // log at 5, and tells every node it committed up to 30) rewinds.
    let mut node = standby_told_commit(8);
    node.step(t(300), heartbeat(2, "n2", 30, 30, SyncState::NotSync));
    // Our record 6 has epoch 1, n2's epoch 2: the logs part at 5.
    let effects = node.step(
        t(300),
        Event::BatchReceived {
            batch: WalBatch {
                commit_lsn: Lsn(30),
                ..batch((6, 2), vec![], 30, 1)
            },
            local_at_prev: Some(Epoch(1)),
            local: vec![],
        },
    );
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::Diverged));
    node.step(t(400), Event::RejoinStarted);
    assert_eq!(node.role(), RoleKind::Rejoining);
    let effects = node.step(
        t(500),
        Event::PeerLogFetched {
            peer: PeerLog {
                epoch: Epoch(2),
                role: RoleKind::Primary,
                history: history(&[(1, 1), (2, 6)]),
                first_lsn: Lsn(1),
                last_lsn: Lsn(30),
            },
            ours: LocalLog {
                history: history(&[(1, 1)]),
                first_lsn: Lsn(1),
                last_lsn: Lsn(10),
                applied: Lsn(8),
            },
        },
    );
    assert_eq!(
        effects,
        vec![Effect::Rejoin(RejoinPlan::Rewind {
            truncate_after: Some(Lsn(5)),
            resync: true,
            epoch: Epoch(2)
        })]
    );
}
