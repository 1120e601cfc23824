//! Role logic scenarios: feed events, assert the exact effects. No runtime.

use super::*;
use crate::config::{CommitMode, OnStandbyLoss};
use std::time::Duration;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> Config {
    Config::default()
}

fn t(ms: u64) -> Time {
    MS * ms as u32
}

fn meta(epoch: u64, leader: &str) -> WalMeta {
    WalMeta {
        epoch: Epoch(epoch),
        leader: Some(NodeId::from(leader)),
    }
}

/// A standby of n2 at epoch 1 that has heard from the primary at `at`.
fn standby_in_contact(cfg: Config, sync: SyncState, at: Time) -> Node {
    let (mut node, effects) = Node::new(cfg, meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert!(effects.iter().all(|e| matches!(e, Effect::Commit { .. })));
    node.step(
        at,
        Event::PrimaryContact {
            epoch: Epoch(1),
            leader: NodeId::from("n2"),
            primary_last_lsn: Lsn(10),
            commit_lsn: Lsn(10),
            sync,
        },
    );
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
    let (mut node, _) = Node::new(cfg, meta(1, "n1"), Lsn(0), Lsn(0), Lsn(0), t(0));
    node.step(t(1), Event::StandbyReachable);
    node
}

#[test]
fn fresh_primary_persists_epoch_one_and_starts_streaming() {
    let cfg = Config {
        initial_role: crate::InitialRole::Primary,
        ..cfg()
    };
    let (node, effects) = Node::new(cfg, WalMeta::default(), Lsn(0), Lsn(0), Lsn(0), t(0));
    assert_eq!(
        effects,
        vec![
            Effect::PersistMeta {
                epoch: Epoch(1),
                leader: Some(NodeId::from("n1"))
            },
            Effect::StartPrimaryTasks
        ]
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(node.check_writable().is_ok());
}

#[test]
fn heartbeat_silence_makes_an_eligible_standby_fence_then_promote() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    // Silence just short of the timeout: nothing happens.
    assert!(tick_until(&mut node, 200, 1000).is_empty());
    let effects = node.step(t(1100), Event::Tick);
    assert_eq!(
        effects,
        vec![
            Effect::PersistMeta {
                epoch: Epoch(2),
                leader: Some(NodeId::from("n1"))
            },
            Effect::RoleChanged {
                from: RoleKind::Standby,
                to: RoleKind::Promoting,
                epoch: Epoch(2)
            },
            Effect::SendFence {
                epoch: Epoch(2),
                reason: FenceReason::Failover
            },
        ]
    );
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
    let (mut node, _) = Node::new(cfg(), meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert!(tick_until(&mut node, 100, 10_000).is_empty());
    assert_eq!(node.role(), RoleKind::Standby);
}

#[test]
fn async_standby_promotes_only_within_max_lag() {
    let cfg = Config {
        commit_mode: CommitMode::Async,
        max_lag_on_failover: 5,
        ..cfg()
    };
    let contact = |lag: u64| Event::PrimaryContact {
        epoch: Epoch(1),
        leader: NodeId::from("n2"),
        primary_last_lsn: Lsn(10 + lag),
        commit_lsn: Lsn(10),
        sync: SyncState::Async,
    };
    let (mut far, _) = Node::new(cfg.clone(), meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    far.step(t(100), contact(6));
    assert!(tick_until(&mut far, 200, 3000).is_empty());

    let (mut near, _) = Node::new(cfg, meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
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
    assert!(tick_until(&mut node, 5100, 10_000).is_empty());
    assert_eq!(node.role(), RoleKind::Standby);
    assert!(!node.is_eligible());
}

#[test]
fn higher_epoch_fences_a_primary_at_once_and_fails_its_waiters() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), Event::Appended { last_lsn: Lsn(1) });
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
                leader: Some(NodeId::from("n2"))
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
fn stale_epochs_are_recognised_and_a_stale_fence_is_refused() {
    let (mut node, _) = Node::new(cfg(), meta(3, "n1"), Lsn(0), Lsn(0), Lsn(0), t(0));
    assert!(node.is_stale(Epoch(2)));
    assert!(!node.is_stale(Epoch(3)));
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

#[test]
fn sync_commit_waits_for_the_standby_flush() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), Event::Appended { last_lsn: Lsn(1) });
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
            positions: written_only,
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
    let effects = node.step(t(5), Event::StandbyProgress { positions: flushed });
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
        node.step(t(2), Event::Appended { last_lsn: Lsn(1) });
        let mut effects = node.step(t(3), Event::LocalFlushed { lsn: Lsn(1) });
        effects.extend(node.step(t(4), Event::StandbyProgress { positions }));
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
    node.step(t(10), Event::Appended { last_lsn: Lsn(1) });
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
    node.step(t(10), Event::Appended { last_lsn: Lsn(1) });
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(t(20), Event::StandbyUnreachable);
    let effects = tick_until(&mut node, 100, 2100);
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: None,
        failure: WaiterFailure::SyncTimeout
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
            positions: StandbyPositions {
                written: Lsn(1),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
        },
    );
    assert!(node.check_writable().is_ok());
}

#[test]
fn solo_policy_commits_alone_only_after_fresh_failures_for_sync_timeout() {
    let mut node = primary_with_standby(cfg());
    node.step(t(10), Event::Appended { last_lsn: Lsn(1) });
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(t(20), Event::StandbyUnreachable);
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
            positions: StandbyPositions {
                written: Lsn(1),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
        },
    );
    assert!(!node.is_solo());
    assert_eq!(node.sync_state(), SyncState::Sync);
}

#[test]
fn a_restarted_primary_never_goes_solo_before_hearing_from_its_standby() {
    let (mut node, _) = Node::new(cfg(), meta(1, "n1"), Lsn(5), Lsn(5), Lsn(5), t(0));
    node.step(t(10), Event::Appended { last_lsn: Lsn(6) });
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(6) });
    node.step(t(20), Event::StandbyUnreachable);
    let effects = tick_until(&mut node, 100, 5000);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Commit { .. })));
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: Some(Lsn(6)),
        failure: WaiterFailure::SyncTimeout
    }));
    assert!(!node.is_solo());
}

#[test]
fn a_paused_primary_asks_the_standby_before_going_solo() {
    let mut node = primary_with_standby(cfg());
    node.step(t(10), Event::Appended { last_lsn: Lsn(1) });
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(t(20), Event::StandbyUnreachable);
    // Paused from 20 ms to 10 s: the failures before the pause are stale,
    // and the contact before it no longer counts.
    let effects = node.step(t(10_000), Event::StandbyUnreachable);
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
    node.step(t(2), Event::Appended { last_lsn: Lsn(3) });
    assert_eq!(
        node.step(t(3), Event::LocalFlushed { lsn: Lsn(3) }),
        vec![Effect::Commit { lsn: Lsn(3) }]
    );
    assert_eq!(node.sync_state(), SyncState::Async);
}

#[test]
fn planned_switchover_steps_down_only_when_the_standby_has_everything() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), Event::Appended { last_lsn: Lsn(4) });
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(4) });
    let effects = node.step(
        t(4),
        Event::FenceRequested {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            reason: FenceReason::Switchover,
        },
    );
    assert!(effects.is_empty(), "{effects:?}");
    assert!(matches!(
        node.check_writable(),
        Err(WriteRefusal::Unavailable { .. })
    ));
    let effects = node.step(
        t(5),
        Event::StandbyProgress {
            positions: StandbyPositions {
                written: Lsn(4),
                flushed: Lsn(4),
                applied: Lsn(3),
            },
        },
    );
    assert_eq!(
        effects,
        vec![
            Effect::Commit { lsn: Lsn(4) },
            Effect::PersistMeta {
                epoch: Epoch(2),
                leader: Some(NodeId::from("n2"))
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
    node.step(t(2), Event::Appended { last_lsn: Lsn(4) });
    node.step(
        t(4),
        Event::FenceRequested {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            reason: FenceReason::Switchover,
        },
    );
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
    let effects = node.step(t(150), Event::PromoteRequested { force: false });
    assert_eq!(
        effects,
        vec![Effect::SendFence {
            epoch: Epoch(2),
            reason: FenceReason::Switchover
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
            leader: Some(NodeId::from("n1"))
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
    node.step(t(2), Event::Appended { last_lsn: Lsn(1) });
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
}

#[test]
fn a_planned_promotion_answers_the_operator_when_the_epoch_arrives_before_the_fence_reply() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), Event::PromoteRequested { force: false });
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
    let (mut node, _) = Node::new(cfg(), meta(1, "n1"), Lsn(5), Lsn(5), Lsn(5), t(0));
    node.step(t(10), Event::StandbyUnreachable);
    tick_until(&mut node, 100, 5000);
    assert_eq!(node.next_deadline(t(5000)), t(5200));
}

#[test]
fn remote_write_standby_is_in_sync_once_it_has_written_everything() {
    let mut node = primary_with_standby(Config {
        commit_mode: CommitMode::RemoteWrite,
        ..cfg()
    });
    node.step(t(2), Event::Appended { last_lsn: Lsn(3) });
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(3) });
    node.step(
        t(4),
        Event::StandbyProgress {
            positions: StandbyPositions {
                written: Lsn(3),
                flushed: Lsn(1),
                applied: Lsn(1),
            },
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
    let (mut node, _) = Node::new(cfg(), meta(3, "n1"), Lsn(10), Lsn(10), Lsn(0), t(0));
    let progress = |lsn| Event::StandbyProgress {
        positions: StandbyPositions {
            written: Lsn(lsn),
            flushed: Lsn(lsn),
            applied: Lsn(lsn),
        },
    };
    node.step(t(1), Event::StandbyReachable);
    node.step(t(2), progress(6));
    assert_eq!(node.commit_lsn(), Lsn(6));
    assert_eq!(node.sync_state(), SyncState::NotSync);
    node.step(t(3), progress(10));
    assert_eq!(node.commit_lsn(), Lsn(10));
    assert_eq!(node.sync_state(), SyncState::Sync);
}
