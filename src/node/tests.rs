//! Role logic scenarios: feed events, assert the exact effects. No runtime.

use super::*;
use crate::config::{CommitMode, OnStandbyLoss};
use crate::transport::{Header, HeartbeatRequest, RefusalKind, WalBatch};
use crate::types::{EpochHistory, Record, RequestId};
use bytes::Bytes;
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> Config {
    Config::default()
}

/// `Node::new` with an empty request index of the configured size.
fn new_node(
    cfg: Config,
    meta: WalMeta,
    last: Lsn,
    flushed: Lsn,
    applied: Lsn,
    now: Time,
) -> (Node, Vec<Effect>) {
    let requests = RequestIndex::new(cfg.max_request_ids);
    // The log's records are of the meta's epoch (none: epoch 0).
    let log_end = LogEnd {
        epoch: if last > Lsn::ZERO {
            meta.epoch
        } else {
            Epoch::ZERO
        },
        lsn: last,
    };
    Node::new(cfg, meta, log_end, flushed, applied, requests, now)
}

fn t(ms: u64) -> Time {
    MS * ms as u32
}

fn meta(epoch: u64, leader: &str) -> WalMeta {
    WalMeta {
        epoch: Epoch(epoch),
        leader: Some(NodeId::from(leader)),
        confirmed: true,
        restart_points: Default::default(),
    }
}

/// A heartbeat from `from` at `epoch`, a confirmed primary (one that took
/// writes).
fn heartbeat(epoch: u64, from: &str, last: u64, commit: u64, sync: SyncState) -> Event {
    Event::HeartbeatReceived {
        req: HeartbeatRequest {
            header: header(epoch, from),
            last_lsn: Lsn(last),
            commit_lsn: Lsn(commit),
            sync,
            confirmed: true,
            commit_rule: String::new(),
        },
    }
}

/// A heartbeat from `from`, a primary of a fresh data directory at epoch 1
/// that no peer confirmed yet (so it took no write).
fn fresh_heartbeat(from: &str, last: u64) -> Event {
    let mut event = heartbeat(1, from, last, 0, SyncState::Async);
    if let Event::HeartbeatReceived { req } = &mut event {
        req.confirmed = false;
    }
    event
}

fn header(epoch: u64, from: &str) -> Header {
    Header {
        epoch: Epoch(epoch),
        node_id: NodeId::from(from),
        ..Header::default()
    }
}

/// The engine writes one record per LSN from the node's last up to `lsn`.
fn writes_up_to(node: &Node, lsn: u64) -> Event {
    let count = lsn - node.last_lsn().0;
    Event::WriteRequested {
        payloads: (0..count).map(|_| Bytes::from_static(b"w")).collect(),
        request_ids: Vec::new(),
    }
}

/// Standby n2's fence of a planned switchover to epoch 2.
fn switchover_fence_from_n2() -> Event {
    Event::FenceRequested {
        epoch: Epoch(2),
        leader: NodeId::from("n2"),
        reason: FenceReason::Switchover,
    }
}

/// A promotion asked without force (a planned switchover) by `from`.
fn planned_promote(from: PromoteFrom) -> Event {
    Event::PromoteRequested { force: false, from }
}

/// A promotion asked with force over the RPC.
fn forced_promote() -> Event {
    Event::PromoteRequested {
        force: true,
        from: PromoteFrom::Rpc,
    }
}

/// A standby of n2 at epoch 1 that has heard from the primary at `at`.
fn standby_in_contact(cfg: Config, sync: SyncState, at: Time) -> Node {
    let (mut node, effects) = new_node(cfg, meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert!(effects.iter().all(|e| matches!(e, Effect::Commit { .. })));
    node.step(at, heartbeat(1, "n2", 10, 10, sync));
    node
}

/// Ticks every heartbeat interval from `from` to `to`, collecting effects.
fn tick_until(node: &mut Node, from: u64, to: u64) -> Vec<Effect> {
    let mut all = Vec::new();
    let mut now = from;
    while now <= to {
        all.extend(node.step(t(now), Event::Tick));
        now += 100;
    }
    all
}

fn primary_with_standby(cfg: Config) -> Node {
    let (mut node, _) = new_node(cfg, meta(1, "n1"), Lsn(0), Lsn(0), Lsn(0), t(0));
    node.step(
        t(1),
        Event::StandbyReachable {
            standby: NodeId::from("n2"),
        },
    );
    node
}

/// A node started as primary on a fresh data directory, as `id` with
/// peer `peer`, in `mode`.
fn fresh_primary(id: &str, peer: &str, mode: CommitMode) -> (Node, Vec<Effect>) {
    let cfg = Config {
        initial_role: crate::InitialRole::Primary,
        node_id: NodeId::from(id),
        peer_id: NodeId::from(peer),
        commit_mode: mode,
        ..cfg()
    };
    new_node(cfg, WalMeta::default(), Lsn(0), Lsn(0), Lsn(0), t(0))
}

fn refuses_writes_until_confirmed(node: &Node) -> bool {
    matches!(
        node.check_writable(),
        Err(WriteRefusal::Unavailable { reason })
            if reason.contains("confirmed") && reason.contains("promote --force")
    )
}

#[test]
fn fresh_primary_persists_epoch_one_unconfirmed_and_starts_streaming() {
    let (node, effects) = fresh_primary("n1", "n2", CommitMode::RemoteFlush);
    assert_eq!(
        effects,
        vec![
            Effect::PersistMeta {
                epoch: Epoch(1),
                leader: Some(NodeId::from("n1")),
                confirmed: false,
            },
            Effect::StartPrimaryTasks
        ]
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(refuses_writes_until_confirmed(&node));
}

#[test]
fn a_fresh_primary_takes_writes_only_once_its_peer_confirmed_it_and_never_goes_solo_before() {
    for mode in [CommitMode::Async, CommitMode::RemoteFlush] {
        for policy in [OnStandbyLoss::Solo, OnStandbyLoss::Block] {
            let (mut node, _) = fresh_primary("n1", "n2", mode);
            node.cfg.on_standby_loss = policy;
            let effects = node.step(t(1), writes_up_to(&node, 1));
            assert!(
                matches!(
                    &effects[..],
                    [Effect::RefuseWrites {
                        refusal: WriteRefusal::Unavailable { .. },
                        ..
                    }]
                ),
                "{mode:?}: {effects:?}"
            );
            // The peer stays unreachable far beyond sync_timeout: a
            // primary nobody confirmed never goes on alone.
            node.step(
                t(20),
                Event::StandbyUnreachable {
                    standby: NodeId::from("n2"),
                },
            );
            let effects = tick_until(&mut node, 100, 10_000);
            assert!(!node.is_solo(), "{mode:?} {policy:?}");
            assert!(refuses_writes_until_confirmed(&node), "{mode:?} {policy:?}");
            assert!(
                !effects
                    .iter()
                    .any(|e| matches!(e, Effect::Commit { .. } | Effect::Append { .. })),
                "{mode:?} {policy:?}: {effects:?}"
            );
            // The peer answers a heartbeat at our epoch: confirmed,
            // persisted before anything else, then writable.
            let effects = node.step(
                t(10_050),
                Event::StandbyReachable {
                    standby: NodeId::from("n2"),
                },
            );
            assert_eq!(
                effects,
                vec![Effect::PersistMeta {
                    epoch: Epoch(1),
                    leader: Some(NodeId::from("n1")),
                    confirmed: true,
                }],
                "{mode:?} {policy:?}"
            );
            assert!(node.check_writable().is_ok(), "{mode:?} {policy:?}");
            let effects = node.step(t(10_060), writes_up_to(&node, 1));
            assert!(matches!(&effects[..], [Effect::Append { .. }]));
            // Confirmed once is confirmed: a second answer persists nothing.
            assert!(
                node.step(
                    t(10_070),
                    Event::StandbyReachable {
                        standby: NodeId::from("n2")
                    }
                )
                .is_empty()
            );
        }
    }
}

#[test]
fn a_fresh_primary_is_confirmed_by_its_standbys_ack_at_its_epoch_only() {
    let (mut node, _) = fresh_primary("n1", "n2", CommitMode::RemoteFlush);
    node.step(
        t(1),
        Event::StreamState {
            standby: NodeId::from("n2"),
            up: true,
        },
    );
    let effects = node.step(
        t(2),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: StandbyPositions::default(),
            epoch: Epoch(1),
        },
    );
    assert_eq!(
        effects[0],
        Effect::PersistMeta {
            epoch: Epoch(1),
            leader: Some(NodeId::from("n1")),
            confirmed: true,
        }
    );
    assert!(node.check_writable().is_ok());
}

#[test]
fn two_fresh_primaries_converge_on_one_and_never_both_take_writes() {
    let (mut n1, _) = fresh_primary("n1", "n2", CommitMode::Async);
    let (mut n2, _) = fresh_primary("n2", "n1", CommitMode::Async);
    let both_writable =
        |a: &Node, b: &Node| a.check_writable().is_ok() && b.check_writable().is_ok();
    // Their first heartbeats cross. n1, the smaller id, refuses n2's and
    // stays a primary that takes no writes.
    let effects = n1.step(t(1), fresh_heartbeat("n2", 0));
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::NotStandby));
    assert_eq!(n1.role(), RoleKind::Primary);
    assert!(refuses_writes_until_confirmed(&n1));
    // n2 gets n1's: it never took a write and n1's id is smaller, so it
    // steps down to be n1's standby, persisting that before it answers.
    let effects = n2.step(t(1), fresh_heartbeat("n1", 0));
    assert_eq!(
        effects,
        vec![
            Effect::PersistMeta {
                epoch: Epoch(1),
                leader: Some(NodeId::from("n1")),
                confirmed: true,
            },
            Effect::RoleChanged {
                from: RoleKind::Primary,
                to: RoleKind::Standby,
                epoch: Epoch(1),
            },
            Effect::StopPrimaryTasks,
            Effect::Answer(Ok(())),
        ]
    );
    assert_eq!(n2.role(), RoleKind::Standby);
    assert!(!both_writable(&n1, &n2));
    // n2's answer confirms n1.
    n1.step(
        t(2),
        Event::StandbyReachable {
            standby: NodeId::from("n2"),
        },
    );
    assert!(n1.check_writable().is_ok());
    assert!(n2.check_writable().is_err());
    // Later heartbeats between them are the usual primary-standby ones.
    let effects = n2.step(t(3), heartbeat(1, "n1", 0, 0, SyncState::Async));
    assert_eq!(effects, vec![Effect::Answer(Ok(()))]);

    // The same by WAL batch: a fresh primary that gets the peer's batch
    // steps down the same way and stores it as a standby.
    let (mut n2, _) = fresh_primary("n2", "n1", CommitMode::Async);
    let mut b = batch((0, 0), vec![], 0, 0);
    b.header = header(1, "n1");
    b.unconfirmed = true;
    let effects = receive(&mut n2, t(1), b);
    assert_eq!(n2.role(), RoleKind::Standby);
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))));
}

#[test]
fn an_unconfirmed_primary_yields_to_a_peer_that_took_writes_but_never_with_records_of_its_own() {
    // n1 has the smaller id, but n2's log has records: n2 was confirmed
    // and took writes (n1 is a node whose directory was wiped and that
    // was started as primary again). n1 steps down.
    let (mut n1, _) = fresh_primary("n1", "n2", CommitMode::RemoteFlush);
    n1.step(t(1), heartbeat(1, "n2", 7, 7, SyncState::NotSync));
    assert_eq!(n1.role(), RoleKind::Standby);
    assert_eq!(n1.leader(), Some(&NodeId::from("n2")));

    // n1 again, and n2 a confirmed primary whose log is still empty: its
    // heartbeat says it is confirmed, and n1 steps down for it too.
    let (mut n1, _) = fresh_primary("n1", "n2", CommitMode::RemoteFlush);
    let effects = n1.step(t(1), heartbeat(1, "n2", 0, 0, SyncState::NotSync));
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))));
    assert_eq!(n1.role(), RoleKind::Standby);

    // A primary that is not confirmed but holds records (its store lost
    // the flag) may have acknowledged them: it never steps down.
    let n2_cfg = Config {
        node_id: NodeId::from("n2"),
        peer_id: NodeId::from("n1"),
        ..cfg()
    };
    let unconfirmed = WalMeta {
        confirmed: false,
        restart_points: Default::default(),
        ..meta(1, "n2")
    };
    let (mut n2, _) = new_node(n2_cfg.clone(), unconfirmed, Lsn(3), Lsn(3), Lsn(3), t(0));
    assert!(refuses_writes_until_confirmed(&n2));
    let effects = n2.step(t(1), fresh_heartbeat("n1", 0));
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::NotStandby));
    assert_eq!(n2.role(), RoleKind::Primary);

    // And a confirmed primary never steps down for an unconfirmed one.
    let (mut n2, _) = new_node(n2_cfg, meta(1, "n2"), Lsn(0), Lsn(0), Lsn(0), t(0));
    let effects = n2.step(t(1), fresh_heartbeat("n1", 0));
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::NotStandby));
    assert!(n2.check_writable().is_ok());
}

#[test]
fn a_forced_promotion_of_an_unconfirmed_primary_takes_a_new_epoch_and_fences_the_peer() {
    let (mut node, _) = fresh_primary("n1", "n2", CommitMode::RemoteFlush);
    let effects = node.step(t(1), planned_promote(PromoteFrom::Rpc));
    assert!(
        matches!(&effects[..], [Effect::ReplyPromote(Err(why))] if why.contains("force")),
        "{effects:?}"
    );
    let effects = node.step(t(2), forced_promote());
    assert_eq!(
        effects,
        vec![
            Effect::PersistMeta {
                epoch: Epoch(2),
                leader: Some(NodeId::from("n1")),
                confirmed: true,
            },
            Effect::RoleChanged {
                from: RoleKind::Primary,
                to: RoleKind::Promoting,
                epoch: Epoch(2),
            },
            Effect::StopPrimaryTasks,
            // It replaces no known primary: the runtime fences the peer.
            Effect::SendFence {
                epoch: Epoch(2),
                reason: FenceReason::Forced,
                to: None,
            },
        ]
    );
    let effects = node.step(
        t(3),
        Event::FenceSent {
            confirmed_last_lsn: None,
        },
    );
    assert!(effects.contains(&Effect::ReplyPromote(Ok(Epoch(2)))));
    assert!(node.check_writable().is_ok());
}

#[test]
fn a_restarted_primary_keeps_its_confirmation_or_waits_for_it_again() {
    let async_cfg = Config {
        commit_mode: CommitMode::Async,
        ..cfg()
    };
    // Confirmed before the restart: writable at once, as before.
    let (node, _) = new_node(
        async_cfg.clone(),
        meta(1, "n1"),
        Lsn(0),
        Lsn(0),
        Lsn(0),
        t(0),
    );
    assert!(node.check_writable().is_ok());
    // Never confirmed: a restart does not make it writable.
    let unconfirmed = WalMeta {
        confirmed: false,
        restart_points: Default::default(),
        ..meta(1, "n1")
    };
    let (node, _) = new_node(async_cfg, unconfirmed, Lsn(0), Lsn(0), Lsn(0), t(0));
    assert!(refuses_writes_until_confirmed(&node));
}

#[test]
fn heartbeat_silence_makes_an_eligible_standby_fence_then_promote() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    // Silence just short of the timeout: nothing happens.
    assert!(tick_until(&mut node, 200, 1000).is_empty());
    let effects = node.step(t(1100), Event::Tick);
    assert_eq!(effects, promotes_n1_to_epoch_two());
    assert!(
        node.check_writable().is_err(),
        "no writes before the fence is sent"
    );
    let effects = node.step(
        t(1200),
        Event::FenceSent {
            confirmed_last_lsn: None,
        },
    );
    assert_eq!(
        effects[0],
        Effect::RoleChanged {
            from: RoleKind::Promoting,
            to: RoleKind::Primary,
            epoch: Epoch(2)
        }
    );
    assert!(effects.contains(&Effect::StartPrimaryTasks));
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(node.check_writable().is_ok());
    assert!(
        node.is_solo(),
        "a promoted primary acknowledges alone until its peer rejoins"
    );
}

#[test]
fn standby_not_in_sync_at_last_contact_never_promotes() {
    let mut node = standby_in_contact(cfg(), SyncState::NotSync, t(100));
    let effects = tick_until(&mut node, 200, 5000);
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(node.role(), RoleKind::Standby);
}

#[test]
fn auto_failover_off_means_no_promotion() {
    let cfg = Config {
        auto_failover: false,
        ..cfg()
    };
    let mut node = standby_in_contact(cfg, SyncState::Sync, t(100));
    assert!(tick_until(&mut node, 200, 5000).is_empty());
    assert_eq!(node.role(), RoleKind::Standby);
}

#[test]
fn restarted_standby_without_contact_never_promotes() {
    let (mut node, _) = new_node(cfg(), meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    let effects = tick_until(&mut node, 100, 10_000);
    assert!(only_asks_for_newer_epochs(&effects), "{effects:?}");
    assert_eq!(node.role(), RoleKind::Standby);
}

/// Whether a silent standby did nothing but ask its peers whether a newer
/// epoch exists (no fence, no promotion).
fn only_asks_for_newer_epochs(effects: &[Effect]) -> bool {
    effects.iter().all(|e| *e == Effect::AskPeersForNewerEpoch)
}

#[test]
fn async_standby_promotes_only_within_max_lag() {
    let cfg = Config {
        commit_mode: CommitMode::Async,
        max_lag_on_failover: 5,
        ..cfg()
    };
    let contact = |lag: u64| heartbeat(1, "n2", 10 + lag, 10, SyncState::Async);
    let (mut far, _) = new_node(cfg.clone(), meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    far.step(t(100), contact(6));
    assert!(tick_until(&mut far, 200, 3000).is_empty());

    let (mut near, _) = new_node(cfg, meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    near.step(t(100), contact(5));
    let effects = tick_until(&mut near, 200, 1200);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::SendFence { .. }))
    );
}

#[test]
fn a_pause_longer_than_failover_timeout_costs_the_standby_its_eligibility() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    // The process did not run from 100 ms to 5 s (SIGSTOP, stalled VM).
    let effects = node.step(t(5000), Event::Tick);
    assert!(effects.is_empty(), "{effects:?}");
    let effects = tick_until(&mut node, 5100, 10_000);
    assert!(only_asks_for_newer_epochs(&effects), "{effects:?}");
    assert_eq!(node.role(), RoleKind::Standby);
    assert!(!node.is_eligible());
}

#[test]
fn a_standby_reports_the_sync_state_its_primary_told_it_at_the_last_contact() {
    let (mut node, _) = new_node(cfg(), meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(
        node.sync_state(),
        SyncState::NotSync,
        "no contact yet: nothing to report"
    );
    node.step(t(100), heartbeat(1, "n2", 10, 10, SyncState::Sync));
    assert_eq!(node.sync_state(), SyncState::Sync);
    node.step(t(200), heartbeat(1, "n2", 12, 10, SyncState::NotSync));
    assert_eq!(node.sync_state(), SyncState::NotSync);
    node.step(t(300), heartbeat(1, "n2", 12, 12, SyncState::Async));
    assert_eq!(node.sync_state(), SyncState::Async);
    node.step(t(400), heartbeat(1, "n2", 12, 12, SyncState::Sync));
    assert_eq!(node.sync_state(), SyncState::Sync);
    // A pause longer than failover_timeout: the contact no longer counts.
    node.step(t(5000), Event::Tick);
    assert_eq!(node.sync_state(), SyncState::NotSync);
}

#[test]
fn higher_epoch_fences_a_primary_at_once_and_fails_its_waiters() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 1));
    let effects = node.step(
        t(3),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
        },
    );
    assert_eq!(
        effects,
        vec![
            Effect::PersistMeta {
                epoch: Epoch(2),
                leader: Some(NodeId::from("n2")),
                confirmed: true,
            },
            Effect::FailWaiters {
                up_to: None,
                failure: WaiterFailure::Fenced { epoch: Epoch(2) }
            },
            Effect::RoleChanged {
                from: RoleKind::Primary,
                to: RoleKind::Fenced,
                epoch: Epoch(2)
            },
            Effect::StopPrimaryTasks,
            Effect::StartRejoin {
                leader: Some(NodeId::from("n2"))
            },
        ]
    );
    assert_eq!(
        node.check_writable(),
        Err(WriteRefusal::Fenced { epoch: Epoch(2) })
    );
}

#[test]
fn a_stale_fence_is_refused() {
    let (mut node, _) = new_node(cfg(), meta(3, "n1"), Lsn(0), Lsn(0), Lsn(0), t(0));
    let effects = node.step(
        t(1),
        Event::FenceRequested {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            reason: FenceReason::Failover,
        },
    );
    assert!(matches!(
        effects.as_slice(),
        [Effect::ReplyFence(FenceOutcome::Refused { .. })]
    ));
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!(node.epoch(), Epoch(3));
}

/// A standby promoted while our stream stayed open (across our pause)
/// acknowledges from its own log: those positions must never commit our
/// records (G1, G2); the primary learns the newer epoch and steps down.
#[test]
fn a_standby_ack_from_a_newer_epoch_commits_nothing_and_the_primary_steps_down() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 1));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(1) });
    let everything = StandbyPositions {
        written: Lsn(1),
        flushed: Lsn(1),
        applied: Lsn(1),
    };
    let effects = node.step(
        t(4),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: everything,
            epoch: Epoch(2),
        },
    );
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Commit { .. })),
        "a newer epoch's positions committed our record: {effects:?}"
    );
    assert!(effects.contains(&Effect::PersistMeta {
        epoch: Epoch(2),
        leader: None,
        confirmed: true,
    }));
    assert_eq!(node.commit_lsn(), Lsn::ZERO);
    assert_eq!(node.role(), RoleKind::Fenced);
}

#[test]
fn sync_commit_waits_for_the_standby_flush() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 1));
    assert!(
        node.step(t(3), Event::LocalFlushed { lsn: Lsn(1) })
            .is_empty()
    );
    let written_only = StandbyPositions {
        written: Lsn(1),
        flushed: Lsn(0),
        applied: Lsn(0),
    };
    let effects = node.step(
        t(4),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: written_only,
            epoch: node.epoch(),
        },
    );
    assert!(
        effects.is_empty(),
        "remote-flush must not commit on write: {effects:?}"
    );
    let flushed = StandbyPositions {
        flushed: Lsn(1),
        ..written_only
    };
    let effects = node.step(
        t(5),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: flushed,
            epoch: node.epoch(),
        },
    );
    assert_eq!(effects, vec![Effect::Commit { lsn: Lsn(1) }]);
    assert_eq!(node.sync_state(), SyncState::Sync);
}

#[test]
fn each_commit_mode_commits_at_its_own_standby_position() {
    let cases = [
        (CommitMode::Async, StandbyPositions::default(), true),
        (
            CommitMode::RemoteWrite,
            StandbyPositions {
                written: Lsn(1),
                ..Default::default()
            },
            true,
        ),
        (
            CommitMode::RemoteFlush,
            StandbyPositions {
                written: Lsn(1),
                ..Default::default()
            },
            false,
        ),
        (
            CommitMode::RemoteApply,
            StandbyPositions {
                written: Lsn(1),
                flushed: Lsn(1),
                applied: Lsn(0),
            },
            false,
        ),
        (
            CommitMode::RemoteApply,
            StandbyPositions {
                written: Lsn(1),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
            true,
        ),
    ];
    for (mode, positions, commits) in cases {
        let mut node = primary_with_standby(Config {
            commit_mode: mode,
            ..cfg()
        });
        node.step(t(2), writes_up_to(&node, 1));
        let mut effects = node.step(t(3), Event::LocalFlushed { lsn: Lsn(1) });
        effects.extend(node.step(
            t(4),
            Event::StandbyProgress {
                standby: NodeId::from("n2"),
                positions,
                epoch: node.epoch(),
            },
        ));
        assert_eq!(
            effects.contains(&Effect::Commit { lsn: Lsn(1) }),
            commits,
            "{mode}: {positions:?} -> {effects:?}"
        );
    }
}

#[test]
fn sync_timeout_fails_the_waiter_when_the_standby_answers_but_does_not_ack() {
    let mut node = primary_with_standby(cfg());
    node.step(t(10), writes_up_to(&node, 1));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    assert!(tick_until(&mut node, 100, 2000).is_empty());
    let effects = node.step(t(2010), Event::Tick);
    assert_eq!(
        effects,
        vec![Effect::FailWaiters {
            up_to: Some(Lsn(1)),
            failure: WaiterFailure::SyncTimeout
        }]
    );
    assert!(!node.is_solo(), "a reachable standby never triggers solo");
}

#[test]
fn block_policy_refuses_writes_after_the_standby_is_lost() {
    let mut node = primary_with_standby(Config {
        on_standby_loss: OnStandbyLoss::Block,
        ..cfg()
    });
    node.step(t(10), writes_up_to(&node, 1));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(
        t(20),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    let effects = tick_until(&mut node, 100, 2100);
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: None,
        failure: WaiterFailure::Blocked
    }));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Commit { .. })));
    assert!(matches!(
        node.check_writable(),
        Err(WriteRefusal::Unavailable { .. })
    ));
    // The standby comes back: writes are accepted again.
    node.step(
        t(2200),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: StandbyPositions {
                written: Lsn(1),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
            epoch: node.epoch(),
        },
    );
    assert!(node.check_writable().is_ok());
}

#[test]
fn solo_policy_commits_alone_only_after_fresh_failures_for_sync_timeout() {
    let mut node = primary_with_standby(cfg());
    node.step(t(10), writes_up_to(&node, 1));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(
        t(20),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    let before = tick_until(&mut node, 100, 2000);
    assert!(before.is_empty(), "{before:?}");
    let effects = node.step(t(2020), Event::Tick);
    assert_eq!(effects, vec![Effect::Commit { lsn: Lsn(1) }]);
    assert!(node.is_solo());
    assert_eq!(node.sync_state(), SyncState::NotSync);

    // The standby returns and catches up: back in sync.
    node.step(
        t(3000),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: StandbyPositions {
                written: Lsn(1),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
            epoch: node.epoch(),
        },
    );
    assert!(!node.is_solo());
    assert_eq!(node.sync_state(), SyncState::Sync);
}

/// A standby whose WAL failed is lost after `sync_timeout`; an ack it sends
/// while still failed (the last flush it finished) does not make it count
/// again, but once it answers heartbeats as working again, holding every
/// committed record, commits wait for it again: no further ack may come
/// when nothing is written meanwhile.
#[test]
fn a_standby_whose_wal_failed_counts_again_once_it_works_and_holds_every_commit() {
    let mut node = primary_with_standby(cfg());
    let n2 = NodeId::from("n2");
    node.step(t(10), writes_up_to(&node, 1));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(
        t(20),
        Event::StandbyFailed {
            standby: n2.clone(),
        },
    );
    tick_until(&mut node, 100, 2000);
    node.step(t(2020), Event::Tick);
    assert!(node.is_solo(), "lost after sync_timeout");

    // Its last ack arrives while it still answers as failed.
    node.step(
        t(2100),
        Event::StandbyProgress {
            standby: n2.clone(),
            positions: StandbyPositions {
                written: Lsn(1),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
            epoch: node.epoch(),
        },
    );
    node.step(t(2200), Event::Tick);
    assert!(node.is_solo(), "a failed standby confirms nothing new");

    // Its WAL works again: it answers heartbeats as a standby.
    node.step(t(3000), Event::StandbyReachable { standby: n2 });
    node.step(t(3100), Event::Tick);
    assert!(!node.is_solo());
    assert_eq!(node.sync_state(), SyncState::Sync);
}

/// A primary restarted without an arbiter may not go solo before its
/// standby answered (it may have promoted meanwhile). Once the standby is
/// lost it refuses writes, so probes stop calling it writable and clients
/// get a refusal to take elsewhere, not a sync timeout per write; the
/// standby's answer lets writes in again.
#[test]
fn a_restarted_primary_never_goes_solo_before_hearing_from_its_standby_and_refuses_writes_meanwhile()
 {
    let (mut node, _) = new_node(cfg(), meta(1, "n1"), Lsn(5), Lsn(5), Lsn(5), t(0));
    node.step(t(10), writes_up_to(&node, 6));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(6) });
    node.step(
        t(20),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    let effects = tick_until(&mut node, 100, 5000);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Commit { .. })));
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: None,
        failure: WaiterFailure::Blocked
    }));
    assert!(!node.is_solo());
    match node.check_writable() {
        Err(WriteRefusal::Unavailable { reason }) => {
            assert!(
                reason.contains("not heard from it since it started"),
                "{reason}"
            )
        }
        other => panic!("writable without its standby: {other:?}"),
    }
    node.step(
        t(5100),
        Event::StandbyReachable {
            standby: NodeId::from("n2"),
        },
    );
    assert_eq!(node.check_writable(), Ok(()));
}

#[test]
fn a_paused_primary_asks_the_standby_before_going_solo() {
    let mut node = primary_with_standby(cfg());
    node.step(t(10), writes_up_to(&node, 1));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(
        t(20),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    // Paused from 20 ms to 10 s: the failures before the pause are stale,
    // and the contact before it no longer counts.
    let effects = node.step(
        t(10_000),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    assert!(effects.is_empty());
    let effects = tick_until(&mut node, 10_100, 15_000);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Commit { .. })));
    assert!(!node.is_solo());
}

#[test]
fn async_mode_commits_on_local_flush() {
    let mut node = primary_with_standby(Config {
        commit_mode: CommitMode::Async,
        ..cfg()
    });
    node.step(t(2), writes_up_to(&node, 3));
    assert_eq!(
        node.step(t(3), Event::LocalFlushed { lsn: Lsn(3) }),
        vec![Effect::Commit { lsn: Lsn(3) }]
    );
    assert_eq!(node.sync_state(), SyncState::Async);
}

#[test]
fn planned_switchover_steps_down_only_when_the_standby_has_everything() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 4));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(4) });
    let effects = node.step(t(4), switchover_fence_from_n2());
    assert!(effects.is_empty(), "{effects:?}");
    assert!(matches!(
        node.check_writable(),
        Err(WriteRefusal::Unavailable { .. })
    ));
    let effects = node.step(
        t(5),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: StandbyPositions {
                written: Lsn(4),
                flushed: Lsn(4),
                applied: Lsn(3),
            },
            epoch: node.epoch(),
        },
    );
    assert_eq!(
        effects,
        vec![
            Effect::Commit { lsn: Lsn(4) },
            Effect::PersistMeta {
                epoch: Epoch(2),
                leader: Some(NodeId::from("n2")),
                confirmed: true,
            },
            Effect::RoleChanged {
                from: RoleKind::Primary,
                to: RoleKind::Fenced,
                epoch: Epoch(2)
            },
            Effect::StopPrimaryTasks,
            Effect::ReplyFence(FenceOutcome::Fenced { last_lsn: Lsn(4) }),
            Effect::StartRejoin {
                leader: Some(NodeId::from("n2"))
            },
        ]
    );
}

#[test]
fn planned_switchover_gives_up_after_its_timeout_and_writes_resume() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 4));
    node.step(t(4), switchover_fence_from_n2());
    let effects = tick_until(&mut node, 100, 5100);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReplyFence(FenceOutcome::Refused { .. })))
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!(node.epoch(), Epoch(1));
    assert!(node.check_writable().is_ok());
}

#[test]
fn planned_promotion_on_the_standby_persists_only_after_the_primary_stepped_down() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    let effects = node.step(t(150), planned_promote(PromoteFrom::Engine));
    assert_eq!(
        effects,
        vec![Effect::SendFence {
            epoch: Epoch(2),
            reason: FenceReason::Switchover,
            to: Some(NodeId::from("n2")),
        }]
    );
    assert_eq!(node.epoch(), Epoch(1));
    let effects = node.step(
        t(160),
        Event::FenceSent {
            confirmed_last_lsn: Some(Lsn(10)),
        },
    );
    assert_eq!(
        effects[0],
        Effect::PersistMeta {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n1")),
            confirmed: true,
        }
    );
    assert!(effects.contains(&Effect::ReplyPromote(Ok(Epoch(2)))));
    assert_eq!(node.role(), RoleKind::Primary);
}

#[test]
fn a_standby_told_of_an_epoch_led_by_itself_takes_over() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(
        t(150),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n1")),
        },
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!(node.epoch(), Epoch(2));
}

#[test]
fn wal_failure_stops_writes_and_fails_waiters() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 1));
    let effects = node.step(
        t(3),
        Event::WalFailed {
            reason: "fsync: EIO".into(),
        },
    );
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: None,
        failure: WaiterFailure::WalFailed {
            reason: "fsync: EIO".into()
        }
    }));
    assert_eq!(node.role(), RoleKind::Failed);
    assert!(node.check_writable().is_err());
    assert_eq!(node.failed_for_good(), Some("fsync: EIO"));
}

/// The node answered a fence `Unavailable`, and nothing else, and is
/// still at epoch 1.
fn answered_fence_unavailable_at_epoch_1(node: &Node, effects: &[Effect]) {
    assert!(
        matches!(
            effects,
            [Effect::ReplyFence(FenceOutcome::Unavailable { .. })]
        ),
        "{effects:?}"
    );
    assert_eq!(node.epoch(), Epoch(1));
}

/// A switchover's fence steps down only a primary: a node whose WAL failed
/// (or any other role) refuses it and keeps its epoch, rather than name
/// the standby leader of the next epoch without checking it holds every
/// acknowledged write.
#[test]
fn a_switchover_fence_to_a_node_that_is_not_the_primary_is_refused() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 1));
    node.step(
        t(3),
        Event::WalFailed {
            reason: "fsync: EIO".into(),
        },
    );
    let effects = node.step(t(4), switchover_fence_from_n2());
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::ReplyFence(FenceOutcome::Unavailable { reason })] if reason.contains("not the primary")
        ),
        "{effects:?}"
    );
    assert_eq!((node.epoch(), node.role()), (Epoch(1), RoleKind::Failed));

    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    let effects = node.step(t(200), switchover_fence_from_n2());
    answered_fence_unavailable_at_epoch_1(&node, &effects);
}

/// A promotion whose epoch the disk refused: the node answers under the
/// epoch it holds durably, never the one a restart would forget (its
/// peer would step down into an epoch nobody leads), and takes no newer
/// one until a restart, since it could not persist that either.
#[test]
fn a_promotion_whose_epoch_was_not_persisted_goes_back_to_the_epoch_on_disk() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    assert_eq!(node.step(t(1100), Event::Tick), promotes_n1_to_epoch_two());
    let effects = node.step(
        t(1100),
        Event::PersistFailed {
            reason: "meta: EIO".into(),
            epoch: Epoch(1),
            leader: Some(NodeId::from("n2")),
        },
    );
    assert!(
        effects.contains(&Effect::RoleChanged {
            from: RoleKind::Promoting,
            to: RoleKind::Failed,
            epoch: Epoch(1),
        }),
        "{effects:?}"
    );
    assert_eq!(node.failed_for_good(), Some("meta: EIO"));
    assert_eq!(
        (node.epoch(), node.leader()),
        (Epoch(1), Some(&NodeId::from("n2")))
    );
    let effects = node.step(
        t(1200),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
        },
    );
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(node.epoch(), Epoch(1));
    let effects = node.step(
        t(1300),
        Event::FenceRequested {
            epoch: Epoch(3),
            leader: NodeId::from("n2"),
            reason: FenceReason::Failover,
        },
    );
    answered_fence_unavailable_at_epoch_1(&node, &effects);
}

#[test]
fn a_planned_promotion_answers_the_operator_when_the_epoch_arrives_before_the_fence_reply() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), planned_promote(PromoteFrom::Engine));
    // The old primary fenced itself and its rejoin request reached us first.
    let effects = node.step(
        t(160),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n1")),
        },
    );
    assert!(
        effects.contains(&Effect::ReplyPromote(Ok(Epoch(2)))),
        "{effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Primary);
    // The late fence reply changes nothing.
    assert!(
        node.step(
            t(170),
            Event::FenceSent {
                confirmed_last_lsn: Some(Lsn(10))
            }
        )
        .is_empty()
    );
}

#[test]
fn deadlines_a_node_cannot_act_on_do_not_make_it_spin() {
    // Silent primary, standby not eligible: after the warning the next
    // deadline is the periodic tick, not "now" again.
    let mut node = standby_in_contact(cfg(), SyncState::NotSync, t(100));
    tick_until(&mut node, 200, 2000);
    assert_eq!(node.next_deadline(t(2000)), t(2200));
    // Restarted primary that may not go solo: same.
    let (mut node, _) = new_node(cfg(), meta(1, "n1"), Lsn(5), Lsn(5), Lsn(5), t(0));
    node.step(
        t(10),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    tick_until(&mut node, 100, 5000);
    assert_eq!(node.next_deadline(t(5000)), t(5200));
}

#[test]
fn remote_write_standby_is_in_sync_once_it_has_written_everything() {
    let mut node = primary_with_standby(Config {
        commit_mode: CommitMode::RemoteWrite,
        ..cfg()
    });
    node.step(t(2), writes_up_to(&node, 3));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(3) });
    node.step(
        t(4),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: StandbyPositions {
                written: Lsn(3),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
            epoch: node.epoch(),
        },
    );
    assert_eq!(node.commit_lsn(), Lsn(3));
    assert_eq!(node.sync_state(), SyncState::Sync);
}

/// Before its crash this primary may have acknowledged everything its disk
/// holds (alone, after a promotion or with `solo`). Its standby is in sync
/// only once it holds all of it: told earlier, the standby could promote
/// without those writes (found by the simulation, seed 1473, block).
#[test]
fn a_restarted_primary_calls_its_standby_in_sync_only_once_it_holds_all_the_primary_may_have_acknowledged()
 {
    let (mut node, _) = new_node(cfg(), meta(3, "n1"), Lsn(10), Lsn(10), Lsn(0), t(0));
    let progress = |lsn| Event::StandbyProgress {
        standby: NodeId::from("n2"),
        positions: StandbyPositions {
            written: Lsn(lsn),
            flushed: Lsn(lsn),
            applied: Lsn(lsn),
        },
        epoch: Epoch(3),
    };
    node.step(
        t(1),
        Event::StandbyReachable {
            standby: NodeId::from("n2"),
        },
    );
    node.step(t(2), progress(6));
    assert_eq!(node.commit_lsn(), Lsn(6));
    assert_eq!(node.sync_state(), SyncState::NotSync);
    node.step(t(3), progress(10));
    assert_eq!(node.commit_lsn(), Lsn(10));
    assert_eq!(node.sync_state(), SyncState::Sync);
}

// ---- rules moved from the runtime: one test per rule ----------------------

fn rec(lsn: u64, epoch: u64) -> Record {
    Record {
        lsn: Lsn(lsn),
        epoch: Epoch(epoch),
        request_id: None,
        payload: Bytes::from_static(b"p"),
    }
}

/// A standby of n2 at epoch 2 whose log holds 1..=3, all from epoch 1.
fn standby_with_log() -> Node {
    let (node, _) = new_node(cfg(), meta(2, "n2"), Lsn(3), Lsn(3), Lsn(3), t(0));
    node
}

fn batch(prev: (u64, u64), records: Vec<Record>, primary_last: u64, first: u64) -> WalBatch {
    WalBatch {
        header: header(2, "n2"),
        prev_lsn: Lsn(prev.0),
        prev_epoch: Epoch(prev.1),
        records,
        commit_lsn: Lsn::ZERO,
        sync: SyncState::Sync,
        last_lsn: Lsn(primary_last),
        first_lsn: Lsn(first),
        unconfirmed: false,
    }
}

/// Feeds `batch` with the epochs `standby_with_log` holds (1..=3 in epoch 1).
fn receive(node: &mut Node, at: Time, batch: WalBatch) -> Vec<Effect> {
    let ours = |lsn: Lsn| (1..=3).contains(&lsn.0).then_some(Epoch(1));
    let last = node.last_lsn();
    let local_at_prev = ours(batch.prev_lsn);
    let local = batch
        .records
        .iter()
        .take_while(|r| r.lsn <= last)
        .map(|r| ours(r.lsn))
        .collect();
    node.step(
        at,
        Event::BatchReceived {
            batch,
            local_at_prev,
            local,
        },
    )
}

fn refusal_kind(effects: &[Effect]) -> Option<RefusalKind> {
    effects.iter().find_map(|e| match e {
        Effect::Answer(Err(r)) => Some(r.kind),
        _ => None,
    })
}

fn diverged_then_rejoins(effects: &[Effect], kind: RefusalKind) {
    assert_eq!(refusal_kind(effects), Some(kind), "{effects:?}");
    assert_eq!(
        &effects[1..],
        &[
            Effect::RoleChanged {
                from: RoleKind::Standby,
                to: RoleKind::Fenced,
                epoch: Epoch(2)
            },
            Effect::StartRejoin {
                leader: Some(NodeId::from("n2"))
            },
        ]
    );
}

#[test]
fn a_primary_appends_writes_after_its_last_record_in_its_epoch() {
    let (mut node, _) = new_node(cfg(), meta(3, "n1"), Lsn(7), Lsn(7), Lsn(7), t(0));
    let payloads = vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")];
    let request_ids = Vec::new();
    let effects = node.step(
        t(1),
        Event::WriteRequested {
            payloads,
            request_ids,
        },
    );
    assert_eq!(
        effects,
        vec![Effect::Append {
            records: vec![
                Record {
                    lsn: Lsn(8),
                    epoch: Epoch(3),
                    request_id: None,
                    payload: Bytes::from_static(b"a")
                },
                Record {
                    lsn: Lsn(9),
                    epoch: Epoch(3),
                    request_id: None,
                    payload: Bytes::from_static(b"b")
                },
            ],
            fsync_inline: false,
            retried: vec![],
        }]
    );
    assert_eq!(node.last_lsn(), Lsn(9));
}

#[test]
fn a_write_is_refused_whole_by_a_node_that_may_not_write() {
    let mut node = standby_with_log();
    let effects = node.step(t(1), writes_up_to(&node, 5));
    assert_eq!(
        effects,
        vec![Effect::RefuseWrites {
            refusal: WriteRefusal::NotPrimary {
                leader: Some(NodeId::from("n2"))
            },
            in_log: vec![],
        }]
    );
    assert_eq!(node.last_lsn(), Lsn(3));
}

#[test]
fn a_contiguous_batch_is_appended_whole_and_answered() {
    let mut node = standby_with_log();
    let records = vec![rec(4, 1), rec(5, 2)];
    let effects = receive(&mut node, t(1), batch((3, 1), records.clone(), 5, 1));
    assert_eq!(
        effects,
        vec![
            Effect::Append {
                records,
                fsync_inline: false,
                retried: vec![],
            },
            Effect::Answer(Ok(())),
        ]
    );
    assert_eq!(node.last_lsn(), Lsn(5));
}

#[test]
fn a_standby_with_inline_fsync_asks_for_it_with_the_append() {
    let cfg = Config {
        standby_sync_inline: true,
        ..cfg()
    };
    let (mut node, _) = new_node(cfg, meta(2, "n2"), Lsn(3), Lsn(3), Lsn(3), t(0));
    let effects = receive(&mut node, t(1), batch((3, 1), vec![rec(4, 2)], 4, 1));
    assert!(matches!(
        effects[0],
        Effect::Append {
            fsync_inline: true,
            ..
        }
    ));
}

#[test]
fn redelivered_records_of_a_batch_are_skipped() {
    let mut node = standby_with_log();
    let effects = receive(
        &mut node,
        t(1),
        batch((1, 1), vec![rec(2, 1), rec(3, 1), rec(4, 1)], 4, 1),
    );
    assert_eq!(
        effects,
        vec![
            Effect::Append {
                records: vec![rec(4, 1)],
                fsync_inline: false,
                retried: vec![],
            },
            Effect::Answer(Ok(())),
        ]
    );
}

#[test]
fn a_batch_that_brings_nothing_new_is_still_answered() {
    let mut node = standby_with_log();
    let effects = receive(&mut node, t(1), batch((3, 1), Vec::new(), 3, 1));
    assert_eq!(effects, vec![Effect::Answer(Ok(()))]);
}

#[test]
fn a_batch_after_a_gap_is_refused_and_the_standby_stays() {
    let mut node = standby_with_log();
    let effects = receive(&mut node, t(1), batch((5, 1), vec![rec(6, 1)], 6, 1));
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::Gap));
    assert_eq!(effects.len(), 1);
    assert_eq!(node.role(), RoleKind::Standby);
}

#[test]
fn an_epoch_mismatch_at_prev_is_divergence_and_the_standby_rejoins() {
    let mut node = standby_with_log();
    let effects = receive(&mut node, t(1), batch((3, 2), vec![rec(4, 2)], 4, 1));
    diverged_then_rejoins(&effects, RefusalKind::Diverged);
}

/// A node sent to rejoin, then rejoining (waiting for the primary's log).
fn rejoining_node() -> Node {
    let mut node = standby_with_log();
    let effects = receive(&mut node, t(1), batch((3, 2), vec![rec(4, 2)], 4, 1));
    diverged_then_rejoins(&effects, RefusalKind::Diverged);
    node.step(t(2), Event::RejoinStarted);
    assert_eq!(node.role(), RoleKind::Rejoining);
    node
}

#[test]
fn a_forced_promotion_of_a_rejoining_node_waits_while_its_log_is_rewritten() {
    let force = forced_promote();
    // Still waiting for the primary: nothing of ours changed, so the
    // operator's force goes ahead (the runtime ends the rejoin).
    let mut waiting = rejoining_node();
    let effects = waiting.step(t(3), force.clone());
    assert!(
        effects.contains(&Effect::RoleChanged {
            from: RoleKind::Rejoining,
            to: RoleKind::Promoting,
            epoch: Epoch(3),
        }),
        "{effects:?}"
    );
    // Given its plan, the rejoin rewrites the log (and may restore a
    // snapshot): a promotion then would take a half-rewritten state.
    let mut rewinding = rejoining_node();
    let effects = rewinding.step(
        t(3),
        Event::PeerLogFetched {
            peer: PeerLog {
                epoch: Epoch(2),
                role: RoleKind::Primary,
                history: history(&[(1, 1), (2, 3)]),
                first_lsn: Lsn(1),
                last_lsn: Lsn(4),
                unconfirmed: false,
                restart_lsn: None,
            },
            ours: LocalLog {
                history: history(&[(1, 1)]),
                first_lsn: Lsn(1),
                last_lsn: Lsn(3),
                applied: Lsn(2),
                restarted_at: None,
            },
        },
    );
    assert!(
        matches!(&effects[..], [Effect::Rejoin(RejoinPlan::Rewind { .. })]),
        "{effects:?}"
    );
    let effects = rewinding.step(t(4), force);
    assert!(
        matches!(&effects[..], [Effect::ReplyPromote(Err(why))] if why.contains("rewinding")),
        "{effects:?}"
    );
    assert_eq!(rewinding.role(), RoleKind::Rejoining);
}

#[test]
fn a_redelivered_record_with_another_epoch_is_divergence() {
    let mut node = standby_with_log();
    let effects = receive(&mut node, t(1), batch((1, 1), vec![rec(2, 2)], 2, 1));
    diverged_then_rejoins(&effects, RefusalKind::Diverged);
}

#[test]
fn records_the_primary_never_had_are_divergence() {
    let mut node = standby_with_log();
    let effects = receive(&mut node, t(1), batch((2, 1), Vec::new(), 2, 1));
    diverged_then_rejoins(&effects, RefusalKind::Diverged);
}

#[test]
fn a_primary_that_no_longer_has_our_next_record_sends_us_to_rejoin() {
    let mut node = standby_with_log();
    let effects = receive(&mut node, t(1), batch((3, 1), Vec::new(), 100, 50));
    diverged_then_rejoins(&effects, RefusalKind::TooFarBehind);
}

#[test]
fn a_primary_refuses_a_batch_at_its_own_epoch_as_two_primaries() {
    let (mut node, _) = new_node(cfg(), meta(2, "n1"), Lsn(3), Lsn(3), Lsn(3), t(0));
    let effects = receive(&mut node, t(1), batch((3, 1), vec![rec(4, 2)], 4, 1));
    assert_eq!(
        effects,
        vec![Effect::Answer(Err(Refused::new(
            RefusalKind::NotStandby,
            "this node is the primary of that epoch"
        )))]
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!(node.last_lsn(), Lsn(3));
}

#[test]
fn a_primary_refuses_a_heartbeat_at_its_own_epoch_as_two_primaries() {
    let (mut node, _) = new_node(cfg(), meta(2, "n1"), Lsn(3), Lsn(3), Lsn(3), t(0));
    let effects = node.step(t(1), heartbeat(2, "n2", 3, 3, SyncState::Sync));
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::NotStandby));
    assert_eq!(node.role(), RoleKind::Primary);
}

#[test]
fn a_request_from_a_lower_epoch_is_refused_with_ours_and_changes_nothing() {
    let mut node = standby_with_log();
    let mut stale = batch((3, 1), vec![rec(4, 1)], 4, 1);
    stale.header.epoch = Epoch(1);
    for effects in [
        node.step(t(1), heartbeat(1, "n2", 3, 3, SyncState::Sync)),
        receive(&mut node, t(2), stale),
        node.step(
            t(3),
            Event::HistoryRequested {
                header: header(1, "n2"),
            },
        ),
    ] {
        assert_eq!(
            effects,
            vec![Effect::Answer(Err(Refused::new(
                RefusalKind::StaleEpoch,
                "epoch 1 is older than this node's epoch 2; a newer primary exists"
            )))]
        );
    }
    assert_eq!(node.last_lsn(), Lsn(3));
    assert!(!node.is_eligible());
}

#[test]
fn a_request_from_a_higher_epoch_is_persisted_before_the_primary_steps_down() {
    let (mut node, _) = new_node(cfg(), meta(2, "n1"), Lsn(3), Lsn(3), Lsn(3), t(0));
    let effects = node.step(
        t(1),
        Event::HistoryRequested {
            header: header(3, "n2"),
        },
    );
    assert_eq!(
        effects[0],
        Effect::PersistMeta {
            epoch: Epoch(3),
            leader: Some(NodeId::from("n2")),
            confirmed: true,
        }
    );
    assert!(effects.contains(&Effect::StopPrimaryTasks));
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))));
    assert_eq!(node.role(), RoleKind::Fenced);
}

#[test]
fn only_the_primary_serves_snapshots() {
    let mut node = standby_with_log();
    let effects = node.step(
        t(1),
        Event::SnapshotRequested {
            header: header(2, "n2"),
        },
    );
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::NotStandby));
    let (mut primary, _) = new_node(cfg(), meta(2, "n1"), Lsn(3), Lsn(3), Lsn(3), t(0));
    let effects = primary.step(
        t(1),
        Event::SnapshotRequested {
            header: header(2, "n2"),
        },
    );
    assert_eq!(effects, vec![Effect::Answer(Ok(()))]);
}

#[test]
fn an_epoch_at_the_bound_is_never_adopted() {
    let (mut node, _) = new_node(cfg(), meta(2, "n1"), Lsn(3), Lsn(3), Lsn(3), t(0));
    let effects = node.step(
        t(1),
        Event::HistoryRequested {
            header: header(Epoch::MAX.0, "n2"),
        },
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::PersistMeta { .. } | Effect::StopPrimaryTasks)),
        "{effects:?}"
    );
    assert_eq!(node.epoch(), Epoch(2));
    assert_eq!(node.role(), RoleKind::Primary);
}

#[test]
fn a_standby_whose_epoch_cannot_be_raised_neither_promotes_nor_is_promoted() {
    let last = Epoch::MAX.0 - 1;
    let (mut node, _) = new_node(cfg(), meta(last, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    node.step(t(100), heartbeat(last, "n2", 10, 10, SyncState::Sync));
    let silent = tick_until(&mut node, 200, 3000);
    assert!(
        !silent
            .iter()
            .any(|e| matches!(e, Effect::PersistMeta { .. } | Effect::SendFence { .. })),
        "{silent:?}"
    );
    let forced = node.step(t(3100), forced_promote());
    assert!(
        matches!(&forced[..], [Effect::ReplyPromote(Err(msg))] if msg.contains("cannot be raised")),
        "{forced:?}"
    );
    assert_eq!(node.role(), RoleKind::Standby);
    assert_eq!(node.epoch(), Epoch(last));
}

#[test]
fn a_promote_asked_of_the_primary_over_rpc_is_forwarded_to_the_standby() {
    let mut node = primary_with_standby(cfg());
    let effects = node.step(t(2), planned_promote(PromoteFrom::Rpc));
    assert_eq!(effects, vec![Effect::ForwardPromote { to: None }]);
    assert_eq!(node.role(), RoleKind::Primary);
}

#[test]
fn a_promote_asked_of_the_primary_by_its_engine_is_forwarded_to_the_standby() {
    let mut node = primary_with_standby(cfg());
    let effects = node.step(t(2), planned_promote(PromoteFrom::Engine));
    assert_eq!(effects, vec![Effect::ForwardPromote { to: None }]);
    // It keeps writing until the standby's switchover fences it.
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(node.check_writable().is_ok());
}

#[test]
fn a_fence_ordered_by_the_engine_must_raise_the_epoch() {
    let mut node = primary_with_standby(cfg());
    let effects = node.step(t(2), Event::FenceOrdered { epoch: Epoch(1) });
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::StaleEpoch));
    assert_eq!(node.role(), RoleKind::Primary);
    let effects = node.step(t(3), Event::FenceOrdered { epoch: Epoch(2) });
    assert_eq!(
        effects[0],
        Effect::PersistMeta {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
            confirmed: true,
        }
    );
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))));
    assert_eq!(node.role(), RoleKind::Fenced);
}

/// A former primary of epoch 1 holding 1..=5, fenced by n2 at epoch 2 and
/// rejoining.
fn rejoining() -> Node {
    let (mut node, _) = new_node(cfg(), meta(1, "n1"), Lsn(5), Lsn(5), Lsn(5), t(0));
    node.step(
        t(1),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
        },
    );
    let effects = node.step(t(2), Event::RejoinStarted);
    assert_eq!(
        effects,
        vec![Effect::RoleChanged {
            from: RoleKind::Fenced,
            to: RoleKind::Rejoining,
            epoch: Epoch(2)
        }]
    );
    node
}

fn history(entries: &[(u64, u64)]) -> EpochHistory {
    EpochHistory(
        entries
            .iter()
            .map(|&(epoch, first)| crate::types::EpochStart {
                epoch: Epoch(epoch),
                first_lsn: Lsn(first),
            })
            .collect(),
    )
}

/// n2 promoted at LSN 4 (epoch 2 starts there) and wrote up to 6.
fn promoted_peer() -> PeerLog {
    PeerLog {
        epoch: Epoch(2),
        role: RoleKind::Primary,
        history: history(&[(1, 1), (2, 4)]),
        first_lsn: Lsn(1),
        last_lsn: Lsn(6),
        unconfirmed: false,
        restart_lsn: None,
    }
}

fn our_log(applied: u64) -> LocalLog {
    LocalLog {
        history: history(&[(1, 1)]),
        first_lsn: Lsn(1),
        last_lsn: Lsn(5),
        applied: Lsn(applied),
        restarted_at: None,
    }
}

#[test]
fn rejoin_truncates_after_the_divergence_point() {
    let mut node = rejoining();
    let effects = node.step(
        t(3),
        Event::PeerLogFetched {
            peer: promoted_peer(),
            ours: our_log(3),
        },
    );
    assert_eq!(
        effects,
        vec![Effect::Rejoin(RejoinPlan::Rewind {
            truncate_after: Some(Lsn(3)),
            resync: false,
            epoch: Epoch(2)
        })]
    );
}

#[test]
fn rejoin_resyncs_when_the_state_machine_applied_past_the_divergence_point() {
    let mut node = rejoining();
    let effects = node.step(
        t(3),
        Event::PeerLogFetched {
            peer: promoted_peer(),
            ours: our_log(5),
        },
    );
    assert_eq!(
        effects,
        vec![Effect::Rejoin(RejoinPlan::Rewind {
            truncate_after: Some(Lsn(3)),
            resync: true,
            epoch: Epoch(2)
        })]
    );
}

#[test]
fn rejoin_resyncs_when_the_primary_no_longer_keeps_what_follows_our_log() {
    let mut node = rejoining();
    let peer = PeerLog {
        first_lsn: Lsn(6),
        ..promoted_peer()
    };
    let effects = node.step(
        t(3),
        Event::PeerLogFetched {
            peer,
            ours: our_log(3),
        },
    );
    assert!(matches!(
        effects.as_slice(),
        [Effect::Rejoin(RejoinPlan::Rewind { resync: true, .. })]
    ));
}

#[test]
fn rejoin_waits_while_the_peer_is_not_the_primary_of_our_epoch() {
    let mut node = rejoining();
    for peer in [
        PeerLog {
            role: RoleKind::Promoting,
            ..promoted_peer()
        },
        PeerLog {
            epoch: Epoch(1),
            ..promoted_peer()
        },
    ] {
        let effects = node.step(
            t(3),
            Event::PeerLogFetched {
                peer,
                ours: our_log(3),
            },
        );
        assert_eq!(effects, vec![Effect::Rejoin(RejoinPlan::Wait)]);
    }
}

#[test]
fn rejoin_finished_resets_positions_to_the_rewound_log_and_makes_a_standby() {
    let mut node = rejoining();
    let effects = node.step(
        t(3),
        Event::RejoinFinished {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            first_lsn: Lsn(1),
            last_lsn: Lsn(3),
            flushed: Lsn(3),
            applied: Lsn(3),
            snapshot_ids: None,
        },
    );
    assert_eq!(
        effects,
        vec![Effect::RoleChanged {
            from: RoleKind::Rejoining,
            to: RoleKind::Standby,
            epoch: Epoch(2)
        }]
    );
    assert_eq!(
        (node.last_lsn(), node.flushed_lsn(), node.commit_lsn()),
        (Lsn(3), Lsn(3), Lsn(3))
    );
}

#[test]
fn a_former_primary_whose_state_is_ahead_of_its_wal_refuses_to_start() {
    let (mut node, _) = new_node(cfg(), meta(1, "n1"), Lsn(5), Lsn(5), Lsn(9), t(0));
    let effects = node.step(t(0), Event::Opened { first_lsn: Lsn(1) });
    assert!(
        matches!(effects.as_slice(), [Effect::CannotStart { .. }]),
        "{effects:?}"
    );
}

#[test]
fn a_standby_whose_state_is_behind_the_wal_it_keeps_resyncs() {
    let (mut node, _) = new_node(cfg(), meta(1, "n2"), Lsn(50), Lsn(50), Lsn(5), t(0));
    let effects = node.step(t(0), Event::Opened { first_lsn: Lsn(20) });
    assert!(effects.contains(&Effect::StartRejoin {
        leader: Some(NodeId::from("n2"))
    }));
    let (mut fits, _) = new_node(cfg(), meta(1, "n2"), Lsn(50), Lsn(50), Lsn(5), t(0));
    assert!(
        fits.step(t(0), Event::Opened { first_lsn: Lsn(6) })
            .is_empty()
    );
}

#[test]
fn a_state_machine_ahead_of_the_wal_sends_a_standby_to_resync() {
    let (mut node, _) = new_node(cfg(), meta(1, "n2"), Lsn(5), Lsn(5), Lsn(9), t(0));
    let effects = node.step(t(1), Event::Opened { first_lsn: Lsn(1) });
    assert_eq!(
        effects,
        vec![
            Effect::FailWaiters {
                up_to: None,
                failure: WaiterFailure::NotPrimary
            },
            Effect::RoleChanged {
                from: RoleKind::Standby,
                to: RoleKind::Fenced,
                epoch: Epoch(1)
            },
            Effect::StartRejoin {
                leader: Some(NodeId::from("n2"))
            },
        ]
    );
}

#[test]
#[should_panic(expected = "applied LSN went backwards")]
fn an_applied_lsn_going_backwards_is_a_bug() {
    let mut node = standby_with_log();
    node.step(t(1), Event::Applied { lsn: Lsn(2) });
}

// ---- WAL retention ----

fn measured(first: u64, durable: u64, bounded_from: u64) -> Event {
    Event::WalMeasured {
        first_lsn: Lsn(first),
        durable_lsn: Lsn(durable),
        bounded_from: Lsn(bounded_from),
    }
}

/// A primary at epoch 1 that wrote, committed and applied 1..=100, its
/// standby having flushed up to `standby_flushed`.
fn primary_applied_100(standby_flushed: u64) -> Node {
    let cfg = Config {
        commit_mode: CommitMode::Async,
        ..cfg()
    };
    let mut node = primary_with_standby(cfg);
    node.step(t(2), writes_up_to(&node, 100));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(100) });
    node.step(t(4), Event::Applied { lsn: Lsn(100) });
    let flushed = Lsn(standby_flushed);
    node.step(
        t(5),
        Event::StandbyProgress {
            standby: NodeId::from("n2"),
            positions: StandbyPositions {
                written: flushed,
                flushed,
                applied: flushed,
            },
            epoch: node.epoch(),
        },
    );
    node
}

#[test]
fn the_wal_keeps_what_the_engine_has_not_made_durable_or_the_standby_lacks() {
    let mut node = primary_applied_100(60);
    // Under the bound: the engine's durable point and the standby's flush
    // decide, whichever needs more.
    assert_eq!(
        node.step(t(6), measured(1, 40, 1)),
        vec![Effect::TrimWal { keep_from: Lsn(41) }]
    );
    assert_eq!(
        node.step(t(7), measured(41, 80, 1)),
        vec![Effect::TrimWal { keep_from: Lsn(61) }]
    );
    // Nothing new may go: no effect.
    assert!(node.step(t(8), measured(61, 80, 1)).is_empty());
}

#[test]
fn wal_retention_bytes_bounds_the_wal_whatever_the_engine_and_the_standby_need() {
    // An engine that never reports durability, a standby far behind: the
    // bound alone decides.
    let mut node = primary_applied_100(10);
    assert_eq!(
        node.step(t(6), measured(1, 0, 90)),
        vec![Effect::TrimWal { keep_from: Lsn(90) }]
    );
    // A standby behind the same way.
    let (mut standby, _) = new_node(cfg(), meta(1, "n2"), Lsn(100), Lsn(100), Lsn(100), t(0));
    assert_eq!(
        standby.step(t(1), measured(1, 0, 90)),
        vec![Effect::TrimWal { keep_from: Lsn(90) }]
    );
}

#[test]
fn records_the_state_machine_has_not_applied_are_never_trimmed() {
    let (mut standby, _) = new_node(cfg(), meta(1, "n2"), Lsn(100), Lsn(100), Lsn(50), t(0));
    assert_eq!(
        standby.step(t(1), measured(1, 0, 90)),
        vec![Effect::TrimWal { keep_from: Lsn(51) }]
    );
}

#[test]
fn a_node_that_is_not_primary_or_standby_leaves_its_wal_alone() {
    let mut node = primary_applied_100(100);
    node.step(t(6), Event::FenceOrdered { epoch: Epoch(2) });
    assert_eq!(node.role(), RoleKind::Fenced);
    assert!(node.step(t(7), measured(1, 100, 90)).is_empty());
}

// ---- Stopping: a primary hands over first ----

/// A primary that wrote 1..=5, all flushed by its standby over an open
/// stream: the standby is in sync.
fn primary_with_standby_in_sync() -> Node {
    let mut node = primary_with_standby(cfg());
    node.step(
        t(2),
        Event::StreamState {
            standby: NodeId::from("n2"),
            up: true,
        },
    );
    node.step(t(3), writes_up_to(&node, 5));
    node.step(t(4), Event::LocalFlushed { lsn: Lsn(5) });
    node.step(t(5), standby_flushed(5));
    assert_eq!(node.commit_lsn(), Lsn(5));
    assert_eq!(node.sync_state(), SyncState::Sync);
    node
}

#[test]
fn a_primary_asked_to_stop_hands_over_to_its_standby_in_sync() {
    let mut node = primary_with_standby_in_sync();
    assert_eq!(
        node.step(t(6), Event::StopRequested),
        vec![Effect::HandOver {
            to: NodeId::from("n2")
        }]
    );
    // Still the primary until the standby's switchover fences it, which
    // then runs as any planned switchover.
    assert_eq!(node.role(), RoleKind::Primary);
    let effects = node.step(t(7), switchover_fence_from_n2());
    assert_eq!(
        effects[0],
        Effect::PersistMeta {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
            confirmed: true,
        }
    );
    assert!(effects.contains(&Effect::ReplyFence(FenceOutcome::Fenced {
        last_lsn: Lsn(5)
    })));
    assert_eq!(node.role(), RoleKind::Fenced);
}

#[test]
fn a_primary_asked_to_stop_just_stops_when_its_standby_is_not_in_sync() {
    let mut node = primary_with_standby_in_sync();
    // Written and committed nowhere else yet: the standby lags behind
    // nothing acknowledged, so it is still in sync...
    node.step(t(6), writes_up_to(&node, 6));
    assert_eq!(
        node.step(t(7), Event::StopRequested),
        vec![Effect::HandOver {
            to: NodeId::from("n2")
        }]
    );
    // ...but not once the primary acknowledged alone.
    let mut node = primary_with_standby_in_sync();
    node.step(
        t(6),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    tick_until(&mut node, 100, 2200);
    assert!(node.is_solo());
    node.step(
        t(2300),
        Event::StandbyReachable {
            standby: NodeId::from("n2"),
        },
    );
    node.step(t(2301), writes_up_to(&node, 6));
    node.step(t(2302), Event::LocalFlushed { lsn: Lsn(6) });
    assert_eq!(node.sync_state(), SyncState::NotSync);
    assert_eq!(node.step(t(2303), Event::StopRequested), vec![Effect::Stop]);
}

#[test]
fn a_primary_asked_to_stop_just_stops_when_its_standby_is_unreachable() {
    let mut node = primary_with_standby_in_sync();
    node.step(
        t(6),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    assert_eq!(node.step(t(7), Event::StopRequested), vec![Effect::Stop]);
    let mut node = primary_with_standby_in_sync();
    node.step(
        t(6),
        Event::StreamState {
            standby: NodeId::from("n2"),
            up: false,
        },
    );
    assert_eq!(node.step(t(7), Event::StopRequested), vec![Effect::Stop]);
    // A restarted primary that has not heard from its standby yet.
    let (mut node, _) = new_node(cfg(), meta(1, "n1"), Lsn(5), Lsn(5), Lsn(5), t(0));
    node.step(
        t(1),
        Event::StreamState {
            standby: NodeId::from("n2"),
            up: true,
        },
    );
    assert_eq!(node.step(t(2), Event::StopRequested), vec![Effect::Stop]);
}

/// A stop asked while the standby's planned switchover is under way (its
/// fence came first, writes are paused) hands over to that standby, whose
/// answer comes when the switchover ends: stopping at once would refuse
/// its fence and leave the cluster without a primary until a failover.
#[test]
fn a_primary_asked_to_stop_during_a_planned_switchover_waits_for_it() {
    let mut node = primary_with_standby_in_sync();
    // Record 6 is appended here, not yet on the standby: the switchover
    // waits for it.
    node.step(t(6), writes_up_to(&node, 6));
    node.step(t(7), Event::LocalFlushed { lsn: Lsn(6) });
    let effects = node.step(t(8), switchover_fence_from_n2());
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::ReplyFence(_))),
        "{effects:?}"
    );
    assert_eq!(
        node.step(t(9), Event::StopRequested),
        vec![Effect::HandOver {
            to: NodeId::from("n2")
        }]
    );
    let effects = node.step(t(10), standby_flushed(6));
    assert!(effects.contains(&Effect::ReplyFence(FenceOutcome::Fenced {
        last_lsn: Lsn(6)
    })));
    assert_eq!(node.role(), RoleKind::Fenced);
}

/// A second promote request during a planned switchover (the old primary
/// handing over as it stops, or an operator asking again) is not refused:
/// it waits for the switchover, whose one `ReplyPromote` the runtime gives
/// every request waiting.
#[test]
fn a_promote_asked_during_a_planned_switchover_joins_it() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), planned_promote(PromoteFrom::Engine));
    let effects = node.step(t(155), planned_promote(PromoteFrom::Rpc));
    assert!(effects.is_empty(), "{effects:?}");
    let effects = node.step(
        t(160),
        Event::FenceSent {
            confirmed_last_lsn: Some(Lsn(10)),
        },
    );
    let replies: Vec<_> = effects
        .iter()
        .filter(|e| matches!(e, Effect::ReplyPromote(_)))
        .collect();
    assert_eq!(replies, vec![&Effect::ReplyPromote(Ok(Epoch(2)))]);
    assert_eq!(node.role(), RoleKind::Primary);
}

#[test]
fn a_standby_asked_to_stop_just_stops() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    assert_eq!(node.step(t(101), Event::StopRequested), vec![Effect::Stop]);
    assert_eq!(node.role(), RoleKind::Standby);
}

// Request ids (`apply_once`): the node's index of the ids its log carries.

fn id(n: u128) -> RequestId {
    RequestId::from(n)
}

/// Writes, each `(request id, payload)`; `None`: a plain `apply`.
fn writes_with_ids(writes: &[(Option<u128>, &'static [u8])]) -> Event {
    Event::WriteRequested {
        payloads: writes.iter().map(|w| Bytes::from_static(w.1)).collect(),
        request_ids: writes.iter().map(|w| w.0.map(id)).collect(),
    }
}

fn appended(effects: &[Effect]) -> (Vec<(u64, Option<RequestId>)>, Vec<Retried>) {
    match effects {
        [
            Effect::Append {
                records, retried, ..
            },
        ] => (
            records.iter().map(|r| (r.lsn.0, r.request_id)).collect(),
            retried.clone(),
        ),
        other => panic!("expected one append, got {other:?}"),
    }
}

/// A primary that wrote `writes` (as `writes_with_ids`), then learned of
/// epoch 2, led by n2: fenced, its records perhaps committed there or
/// rewound later.
fn deposed_after_writing(writes: &[(Option<u128>, &'static [u8])]) -> Node {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_with_ids(writes));
    node.step(
        t(3),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
        },
    );
    node
}

/// The standby flushed (and so acknowledged) up to `lsn`.
fn standby_flushed(lsn: u64) -> Event {
    let at = Lsn(lsn);
    Event::StandbyProgress {
        standby: NodeId::from("n2"),
        positions: StandbyPositions {
            written: at,
            flushed: at,
            applied: at,
        },
        epoch: Epoch(1),
    }
}

#[test]
fn a_retried_request_id_returns_its_records_lsn_without_a_second_append() {
    let mut node = primary_with_standby(cfg());
    let first = node.step(t(2), writes_with_ids(&[(Some(7), b"x")]));
    assert_eq!(appended(&first), (vec![(1, Some(id(7)))], vec![]));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(t(4), standby_flushed(1));
    assert_eq!(node.commit_lsn(), Lsn(1));

    // The retry, beside a new write with an id and one without.
    let retry = node.step(
        t(5),
        writes_with_ids(&[(None, b"plain"), (Some(7), b"x"), (Some(8), b"y")]),
    );
    let retried = Retried {
        write: 1,
        lsn: Lsn(1),
        epoch: Epoch(1),
    };
    assert_eq!(
        appended(&retry),
        (vec![(2, None), (3, Some(id(8)))], vec![retried])
    );
    assert_eq!(node.last_lsn(), Lsn(3));
}

#[test]
fn a_retry_refused_by_a_node_that_holds_its_record_is_not_told_nothing_was_written() {
    // Record 1 carries id 7; then a newer epoch fences this primary (its
    // record may be committed at the new primary, or rewound later).
    let mut node = deposed_after_writing(&[(Some(7), b"x")]);
    // The retry of 7, beside a write with a new id: refused, and the
    // node says which of them its log holds.
    let effects = node.step(t(4), writes_with_ids(&[(Some(7), b"x"), (Some(8), b"y")]));
    assert!(
        matches!(
            &effects[..],
            [Effect::RefuseWrites { in_log, .. }] if *in_log == vec![true, false]
        ),
        "{effects:?}"
    );
}

#[test]
fn a_retry_of_a_record_still_in_flight_waits_for_that_record_with_a_timeout_of_its_own() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_with_ids(&[(Some(7), b"x")]));
    // Two writes with one id in one run are one record, too.
    let same_run = node.step(t(3), writes_with_ids(&[(Some(9), b"a"), (Some(9), b"a")]));
    let twin = Retried {
        write: 1,
        lsn: Lsn(2),
        epoch: Epoch(1),
    };
    assert_eq!(appended(&same_run), (vec![(2, Some(id(9)))], vec![twin]));

    // The first attempt of record 1 times out (the standby never acks).
    let sync_timeout = cfg().sync_timeout.as_millis() as u64;
    let timed_out = node.step(t(3 + sync_timeout), Event::Tick);
    assert!(timed_out.contains(&Effect::FailWaiters {
        up_to: Some(Lsn(2)),
        failure: WaiterFailure::SyncTimeout,
    }));

    // Its retry appends nothing and waits for record 1 again...
    let retry_at = 3000;
    let retry = node.step(t(retry_at), writes_with_ids(&[(Some(7), b"x")]));
    let waits = Retried {
        write: 0,
        lsn: Lsn(1),
        epoch: Epoch(1),
    };
    assert_eq!(appended(&retry), (vec![], vec![waits]));
    assert_eq!(node.last_lsn(), Lsn(2));
    // ...for a sync_timeout from the retry, not from the first attempt.
    let before = node.step(t(retry_at + sync_timeout - 1), Event::Tick);
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, Effect::FailWaiters { .. }))
    );
    let after = node.step(t(retry_at + sync_timeout), Event::Tick);
    assert!(after.contains(&Effect::FailWaiters {
        up_to: Some(Lsn(1)),
        failure: WaiterFailure::SyncTimeout,
    }));
}

#[test]
fn a_standby_learns_request_ids_from_the_records_it_receives() {
    let mut node = standby_with_log();
    let with_id = Record {
        request_id: Some(id(5)),
        ..rec(5, 2)
    };
    let effects = receive(
        &mut node,
        t(1),
        batch((3, 1), vec![rec(4, 2), with_id], 5, 1),
    );
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))));
    assert_eq!(node.request(&id(5)), Some((Lsn(5), Epoch(2))));
    assert_eq!(node.request(&id(4)), None);
}

#[test]
fn a_rewind_forgets_the_request_ids_after_the_divergence_point() {
    let mut node = deposed_after_writing(&[(Some(1), b"a"), (Some(2), b"b")]);
    node.step(t(4), Event::RejoinStarted);
    node.step(
        t(5),
        Event::RejoinFinished {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            first_lsn: Lsn(1),
            last_lsn: Lsn(1),
            flushed: Lsn(1),
            applied: Lsn(1),
            snapshot_ids: None,
        },
    );
    assert_eq!(node.request(&id(1)), Some((Lsn(1), Epoch(1))));
    assert_eq!(node.request(&id(2)), None, "record 2 was rewound");
}

/// A standby restored from a snapshot holds no records up to it: it knows
/// the ids of the writes the snapshot covers from the primary's list, so
/// once promoted a retry of one of them gets its record, not a second one.
#[test]
fn a_node_restored_from_a_snapshot_recognises_a_retry_of_a_write_the_snapshot_covers() {
    let mut node = deposed_after_writing(&[(Some(1), b"a")]);
    node.step(t(4), Event::RejoinStarted);
    let covered = |id_: u128, lsn: u64, epoch: u64| crate::types::RequestIdAt {
        id: id(id_),
        lsn: Lsn(lsn),
        epoch: Epoch(epoch),
    };
    node.step(
        t(5),
        Event::RejoinFinished {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            first_lsn: Lsn(11),
            last_lsn: Lsn(10),
            flushed: Lsn(10),
            applied: Lsn(10),
            snapshot_ids: Some(vec![covered(5, 4, 1), covered(9, 8, 2)]),
        },
    );
    assert_eq!(node.request(&id(1)), None, "record 1 is not ours any more");
    assert_eq!(node.request(&id(9)), Some((Lsn(8), Epoch(2))));
    node.step(t(6), forced_promote());
    node.step(
        t(7),
        Event::FenceSent {
            confirmed_last_lsn: None,
        },
    );
    assert!(node.check_writable().is_ok());
    let retry = node.step(t(8), writes_with_ids(&[(Some(9), b"x"), (Some(1), b"a")]));
    let retried = Retried {
        write: 0,
        lsn: Lsn(8),
        epoch: Epoch(2),
    };
    assert_eq!(appended(&retry), (vec![(11, Some(id(1)))], vec![retried]));
}

/// A primary restarted since it built a snapshot has not learned its
/// commit again (it starts at what its engine applied, here nothing), yet
/// its log still holds the records the snapshot covers: it lists their ids
/// all the same, or the standby would take a short list as the whole.
#[test]
fn a_restarted_primary_lists_the_ids_a_snapshot_covers_before_it_learns_its_commit() {
    let mut requests = RequestIndex::new(100);
    requests.insert(id(4), Lsn(4), Epoch(1));
    requests.insert(id(8), Lsn(8), Epoch(1));
    let log_end = LogEnd {
        epoch: Epoch(1),
        lsn: Lsn(10),
    };
    let (node, _) = Node::new(
        cfg(),
        meta(1, "n1"),
        log_end,
        Lsn(10),
        Lsn(0),
        requests,
        t(0),
    );
    assert_eq!(node.commit_lsn(), Lsn(0));
    let listed: Vec<_> = node
        .request_ids_between(Lsn(0), Lsn(8), 100)
        .iter()
        .map(|e| e.lsn)
        .collect();
    assert_eq!(listed, vec![Lsn(4), Lsn(8)]);
}

/// The engine made every record durable and the standby has them all:
/// retention still keeps the records whose ids the node remembers, so a
/// retry after the engine's checkpoint is recognised; `wal_retention_bytes`
/// alone lets them go.
#[test]
fn the_wal_keeps_the_records_whose_request_ids_are_remembered() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 2));
    node.step(
        t(3),
        writes_with_ids(&[(Some(1), b"a"), (None, b"b"), (Some(2), b"c")]),
    );
    node.step(t(4), Event::LocalFlushed { lsn: Lsn(5) });
    node.step(t(5), standby_flushed(5));
    node.step(t(6), Event::Applied { lsn: Lsn(5) });
    assert_eq!(
        node.step(t(7), measured(1, 5, 1)),
        vec![Effect::TrimWal { keep_from: Lsn(3) }]
    );
    assert_eq!(node.request(&id(1)), Some((Lsn(3), Epoch(1))));
    // Over the bound, the oldest go anyway, with their ids.
    assert_eq!(
        node.step(t(8), measured(3, 5, 5)),
        vec![Effect::TrimWal { keep_from: Lsn(5) }]
    );
    node.step(t(9), measured(5, 5, 5));
    assert_eq!(node.request(&id(1)), None);
    assert_eq!(node.request(&id(2)), Some((Lsn(5), Epoch(1))));
}

#[test]
fn ids_of_records_the_wal_let_go_of_are_forgotten() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_with_ids(&[(Some(1), b"a"), (Some(2), b"b")]));
    node.step(t(3), measured(2, 0, 0));
    assert_eq!(node.request(&id(1)), None);
    assert_eq!(node.request(&id(2)), Some((Lsn(2), Epoch(1))));
}

#[test]
fn a_standby_whose_append_failed_forgets_the_batch_and_takes_wal_again_after_a_backoff() {
    let mut node = standby_with_log();
    let four_five = || batch((3, 1), vec![rec(4, 2), rec(5, 2)], 5, 1);
    let effects = receive(&mut node, t(0), four_five());
    assert!(matches!(&effects[0], Effect::Append { records, .. } if records.len() == 2));
    assert_eq!(node.last_lsn(), Lsn(5));
    // The disk is full: the append failed and the log still ends at 3.
    let effects = node.step(
        t(1),
        Event::WalAppendFailed {
            reason: "no space left on device".into(),
            last_lsn: Lsn(3),
        },
    );
    assert_eq!(
        effects,
        vec![Effect::RoleChanged {
            from: RoleKind::Standby,
            to: RoleKind::Failed,
            epoch: Epoch(2),
        }]
    );
    assert_eq!(node.last_lsn(), Lsn(3), "the records it could not store");
    assert_eq!(
        node.failed_for_good(),
        None,
        "it will try again: a switchover under way may still finish"
    );
    // Meanwhile WAL is refused, whole.
    let effects = receive(&mut node, t(2), four_five());
    assert_eq!(refusal_kind(&effects), Some(RefusalKind::NotStandby));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Append { .. })));
    // The first backoff is one heartbeat interval (200 ms).
    assert!(node.next_deadline(t(2)) <= t(201));
    node.step(t(150), Event::Tick);
    assert_eq!(node.role(), RoleKind::Failed);
    let effects = node.step(t(201), Event::Tick);
    assert!(effects.contains(&Effect::RoleChanged {
        from: RoleKind::Failed,
        to: RoleKind::Standby,
        epoch: Epoch(2),
    }));
    // The primary resends from our log's end; the disk is still full.
    let effects = receive(&mut node, t(210), four_five());
    assert!(matches!(&effects[0], Effect::Append { records, .. } if records[0].lsn == Lsn(4)));
    node.step(
        t(211),
        Event::WalAppendFailed {
            reason: "no space left on device".into(),
            last_lsn: Lsn(3),
        },
    );
    // The second wait is twice as long.
    node.step(t(411), Event::Tick);
    assert_eq!(node.role(), RoleKind::Failed);
    node.step(t(611), Event::Tick);
    assert_eq!(node.role(), RoleKind::Standby);
    // Space is back: the append works, and the standby acknowledges it.
    let effects = receive(&mut node, t(620), four_five());
    assert!(matches!(&effects[0], Effect::Append { .. }));
    assert_eq!(effects.last(), Some(&Effect::Answer(Ok(()))));
    node.step(t(621), Event::LocalFlushed { lsn: Lsn(5) });
    assert_eq!(node.flushed_lsn(), Lsn(5));
    assert!(
        node.wal_retry.is_none(),
        "the backoff starts over next time"
    );
}

#[test]
fn a_primary_whose_append_failed_fails_its_writes_and_does_not_retry() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), writes_up_to(&node, 2));
    let effects = node.step(
        t(3),
        Event::WalAppendFailed {
            reason: "no space left on device".into(),
            last_lsn: Lsn(0),
        },
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::FailWaiters { up_to: None, .. }))
    );
    assert_eq!(node.role(), RoleKind::Failed);
    tick_until(&mut node, 100, 20_000);
    assert_eq!(node.role(), RoleKind::Failed);
}

#[test]
fn a_standby_trying_its_wal_again_tells_the_primary_it_failed_until_an_append_works() {
    let mut node = standby_with_log();
    receive(&mut node, t(0), batch((3, 1), vec![rec(4, 2)], 4, 1));
    node.step(
        t(1),
        Event::WalAppendFailed {
            reason: "no space left on device".into(),
            last_lsn: Lsn(3),
        },
    );
    assert_eq!(node.role_for_primary(), RoleKind::Failed);
    node.step(t(300), Event::Tick);
    assert_eq!(node.role(), RoleKind::Standby);
    assert_eq!(
        node.role_for_primary(),
        RoleKind::Failed,
        "not before an append worked"
    );
    receive(&mut node, t(301), batch((3, 1), vec![rec(4, 2)], 4, 1));
    node.step(t(302), Event::LocalFlushed { lsn: Lsn(4) });
    assert_eq!(node.role_for_primary(), RoleKind::Standby);
}

/// What a standby n1 does when it promotes itself to epoch 2 (its primary
/// fell silent, or the arbiter granted the epoch): persist it, then fence
/// the old primary.
fn promotes_n1_to_epoch_two() -> [Effect; 3] {
    [
        Effect::PersistMeta {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n1")),
            confirmed: true,
        },
        Effect::RoleChanged {
            from: RoleKind::Standby,
            to: RoleKind::Promoting,
            epoch: Epoch(2),
        },
        Effect::SendFence {
            epoch: Epoch(2),
            reason: FenceReason::Failover,
            to: Some(NodeId::from("n2")),
        },
    ]
}

mod arbiter;
mod candidacy;
mod maintenance;
mod retake;
mod standbys;
mod wiped_peer;

#[test]
fn a_rejoin_ending_after_a_newer_epoch_was_adopted_keeps_that_epochs_leader() {
    let mut node = rejoining();
    node.step(
        t(3),
        Event::HigherEpoch {
            epoch: Epoch(3),
            leader: Some(NodeId::from("n3")),
        },
    );
    assert_eq!(
        (node.epoch(), node.leader()),
        (Epoch(3), Some(&NodeId::from("n3")))
    );
    let effects = node.step(
        t(4),
        Event::RejoinFinished {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            first_lsn: Lsn(1),
            last_lsn: Lsn(3),
            flushed: Lsn(3),
            applied: Lsn(3),
            snapshot_ids: None,
        },
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::PersistMeta { .. })),
        "epoch 3 is n3's, not the leader the rejoin followed at epoch 2: {effects:?}"
    );
    assert_eq!(
        (node.epoch(), node.leader()),
        (Epoch(3), Some(&NodeId::from("n3")))
    );
}

#[test]
fn a_node_whose_state_does_not_fit_its_wal_is_never_promoted_even_by_force() {
    // Ahead: applied 9 over a WAL ending at 5 (a rewind cut the WAL before
    // the snapshot came, then a restart). Behind: applied 5 under a WAL
    // beginning at 20. Promoted, the first would skip records 6..9 and keep
    // effects no log holds; the second would serve a state missing 6..19.
    for (last, applied, first) in [(5, 9, 1), (50, 5, 20)] {
        let (mut node, _) = new_node(
            cfg(),
            meta(1, "n2"),
            Lsn(last),
            Lsn(last),
            Lsn(applied),
            t(0),
        );
        node.step(
            t(1),
            Event::Opened {
                first_lsn: Lsn(first),
            },
        );
        for force in [true, false] {
            let effects = node.step(
                t(2),
                Event::PromoteRequested {
                    force,
                    from: PromoteFrom::Rpc,
                },
            );
            assert!(
                matches!(effects.as_slice(), [Effect::ReplyPromote(Err(msg))] if msg.contains("cannot serve as primary")),
                "applied {applied}, WAL {first}..={last}, force {force}: {effects:?}"
            );
        }
        // A rejoin that made them fit lifts it.
        node.step(t(3), Event::RejoinStarted);
        node.step(
            t(4),
            Event::RejoinFinished {
                epoch: Epoch(1),
                leader: NodeId::from("n2"),
                first_lsn: Lsn(1),
                last_lsn: Lsn(9),
                flushed: Lsn(9),
                applied: Lsn(9),
                snapshot_ids: None,
            },
        );
        let effects = node.step(t(5), forced_promote());
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::PersistMeta { .. })),
            "{effects:?}"
        );
    }
}

#[test]
fn a_rejoin_never_rewinds_to_an_unconfirmed_primary_while_our_log_holds_records() {
    // n2 lost its data directory and came back as a fresh primary: epoch
    // 1, empty log, never confirmed. Following it would rewind records
    // 1..=5 (every acknowledged write) to match its empty log.
    // This standby of n2 restarted with its engine ahead of its WAL, so it
    // resyncs (rejoins) whatever n2 says.
    let wiped = PeerLog {
        epoch: Epoch(1),
        role: RoleKind::Primary,
        history: EpochHistory::default(),
        first_lsn: Lsn(1),
        last_lsn: Lsn(0),
        unconfirmed: true,
        restart_lsn: None,
    };
    let (mut node, _) = new_node(cfg(), meta(1, "n2"), Lsn(5), Lsn(5), Lsn(9), t(0));
    node.step(t(1), Event::Opened { first_lsn: Lsn(1) });
    node.step(t(2), Event::RejoinStarted);
    assert_eq!(node.role(), RoleKind::Rejoining);
    let effects = node.step(
        t(3),
        Event::PeerLogFetched {
            peer: wiped.clone(),
            ours: our_log(5),
        },
    );
    assert_eq!(effects, vec![Effect::Rejoin(RejoinPlan::Wait)]);
    // The same primary, confirmed (it was, before it wrote anything), is
    // followed: the rule keys on the confirmation alone.
    let effects = node.step(
        t(4),
        Event::PeerLogFetched {
            peer: PeerLog {
                unconfirmed: false,
                ..wiped
            },
            ours: our_log(5),
        },
    );
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::Rejoin(RejoinPlan::Rewind { .. })]
        ),
        "{effects:?}"
    );
}

#[test]
fn a_standby_no_primary_spoke_to_asks_its_peers_for_a_newer_epoch_and_takes_one_handed_to_it() {
    // n2 was the primary of epoch 1 and handed over to us: it saved epoch
    // 2 led by us and stopped, and we stopped too before its answer came.
    // Restarted, it is a standby of epoch 2 and we one of epoch 1: no
    // primary speaks to either.
    let asks = |effects: &[Effect]| {
        effects
            .iter()
            .filter(|e| **e == Effect::AskPeersForNewerEpoch)
            .count()
    };
    let (mut node, _) = new_node(cfg(), meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(
        asks(&tick_until(&mut node, 0, 900)),
        0,
        "not before failover_timeout of silence"
    );
    assert_eq!(
        asks(&tick_until(&mut node, 1000, 2900)),
        2,
        "then once per failover_timeout"
    );
    let effects = node.step(
        t(3000),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n1")),
        },
    );
    assert!(
        effects.contains(&Effect::PersistMeta {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n1")),
            confirmed: true,
        }),
        "{effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Primary);

    // A standby its primary speaks to asks nothing.
    let mut heard = standby_in_contact(cfg(), SyncState::Sync, t(0));
    let mut effects = Vec::new();
    for now in (100..3000).step_by(100) {
        effects.extend(heard.step(t(now), heartbeat(1, "n2", 10, 10, SyncState::Sync)));
        effects.extend(heard.step(t(now), Event::Tick));
    }
    assert_eq!(asks(&effects), 0, "{effects:?}");
}

#[test]
fn a_rejoin_keeps_nothing_after_a_restarted_primarys_log_end_at_its_restart() {
    // Our 1..=5 match the primary's as far as epochs tell, but it
    // restarted with its log ending at 3 and has not streamed to us since:
    // our 4 and 5 may be ones it sent and lost, its own 4 and 5 others
    // written since under the same epoch.
    let peer = |restart_lsn| PeerLog {
        epoch: Epoch(2),
        role: RoleKind::Primary,
        history: history(&[(1, 1), (2, 6)]),
        first_lsn: Lsn(1),
        last_lsn: Lsn(8),
        unconfirmed: false,
        restart_lsn,
    };
    let mut node = rejoining();
    let effects = node.step(
        t(3),
        Event::PeerLogFetched {
            peer: peer(Some(Lsn(3))),
            ours: our_log(5),
        },
    );
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::Rejoin(RejoinPlan::Rewind {
                truncate_after: Some(Lsn(3)),
                resync: true,
                ..
            })]
        ),
        "{effects:?}"
    );
    // A primary that did not restart, or has streamed to us since: epochs
    // decide, and nothing is dropped.
    let mut node = rejoining();
    let effects = node.step(
        t(3),
        Event::PeerLogFetched {
            peer: peer(None),
            ours: our_log(5),
        },
    );
    assert!(
        matches!(
            effects.as_slice(),
            [Effect::Rejoin(RejoinPlan::Rewind {
                truncate_after: None,
                resync: false,
                ..
            })]
        ),
        "{effects:?}"
    );
}

#[test]
fn a_node_started_on_an_empty_directory_never_takes_an_epoch_a_peer_says_it_led() {
    // n1 led epoch 3, lost its data directory and was started as a standby
    // (epoch 0, empty log). n2, its standby holding every record, names n1
    // as epoch 3's leader: in its history request, and in its refusal of
    // n1's own. Taking that epoch would make n1's empty log the primary's.
    let me = NodeId::from("n1");
    for event in [
        Event::HigherEpoch {
            epoch: Epoch(3),
            leader: Some(me.clone()),
        },
        Event::HistoryRequested {
            header: Header {
                leader_id: Some(me.clone()),
                ..header(3, "n2")
            },
        },
    ] {
        let (mut node, _) = new_node(cfg(), WalMeta::default(), Lsn(0), Lsn(0), Lsn(0), t(0));
        let effects = node.step(t(1), event);
        assert!(
            !effects.iter().any(|e| matches!(
                e,
                Effect::PersistMeta { leader: Some(l), .. } if *l == me
            )),
            "{effects:?}"
        );
        assert_eq!(node.role(), RoleKind::Standby);
        assert_eq!((node.epoch(), node.leader()), (Epoch(3), None));
    }
}

/// A node that wrote records since it restarted as the primary, and
/// stopped before a rejoin settled them (its WAL's meta still holds the
/// restart point below its log's end), rejoins before it follows anyone:
/// a stream's checks cannot tell its records from others under the same
/// LSNs and epoch. Without records after the point it is a plain standby.
#[test]
fn a_node_holding_records_after_a_kept_restart_point_rejoins_at_start() {
    let mut kept = meta(3, "n2");
    kept.restart_points = [(NodeId::from("n2"), Lsn(7))].into();
    let (node, effects) = new_node(cfg(), kept.clone(), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(node.role(), RoleKind::Fenced);
    assert_eq!(
        effects,
        vec![Effect::StartRejoin {
            leader: Some(NodeId::from("n2"))
        }]
    );
    let mut not_after = kept.clone();
    not_after.restart_points = [(NodeId::from("n2"), Lsn(10))].into();
    let (node, effects) = new_node(cfg(), not_after, Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(node.role(), RoleKind::Standby);
    assert!(effects.is_empty(), "{effects:?}");
    // One whose engine applied past its WAL's end (a tail cut at
    // recovery) starts too: the rejoin restores the primary's snapshot.
    let (mut node, _) = new_node(cfg(), kept.clone(), Lsn(10), Lsn(10), Lsn(12), t(0));
    let opened = node.step(t(0), Event::Opened { first_lsn: Lsn(1) });
    assert!(
        !opened
            .iter()
            .any(|e| matches!(e, Effect::CannotStart { .. })),
        "{opened:?}"
    );
    assert_eq!(node.role(), RoleKind::Fenced);
    // Knowing no leader, the lowest point of its peers counts; one for a
    // node that is no peer (any more) says nothing of their logs.
    let mut no_leader = kept.clone();
    no_leader.leader = None;
    let (node, _) = new_node(cfg(), no_leader.clone(), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(node.role(), RoleKind::Fenced);
    no_leader.restart_points = [(NodeId::from("n9"), Lsn(7))].into();
    let (node, _) = new_node(cfg(), no_leader, Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(node.role(), RoleKind::Standby);
    // A point for another peer says nothing of the leader's log.
    kept.restart_points = [(NodeId::from("n3"), Lsn(7))].into();
    let (node, _) = new_node(cfg(), kept, Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(node.role(), RoleKind::Standby);
}

#[test]
fn a_rejoin_of_a_node_that_wrote_since_its_restart_as_primary_keeps_nothing_after_that_point() {
    // We restarted as the primary with our log ending at 3 and wrote 4 and
    // 5 since; the peer's 4 and 5 (same epoch) may be ones we sent before
    // the restart and lost, with which it promoted.
    let peer = PeerLog {
        history: history(&[(1, 1), (2, 6)]),
        last_lsn: Lsn(8),
        ..promoted_peer()
    };
    for (restarted_at, truncate_after) in [(Some(Lsn(3)), Some(Lsn(3))), (None, None)] {
        let mut node = rejoining();
        let effects = node.step(
            t(3),
            Event::PeerLogFetched {
                peer: peer.clone(),
                ours: LocalLog {
                    restarted_at,
                    ..our_log(3)
                },
            },
        );
        assert!(
            matches!(
                effects.as_slice(),
                [Effect::Rejoin(RejoinPlan::Rewind { truncate_after: t, resync: false, .. })] if *t == truncate_after
            ),
            "restarted at {restarted_at:?}: {effects:?}"
        );
    }
}
