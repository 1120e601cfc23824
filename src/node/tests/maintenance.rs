//! Maintenance mode: automatic failover paused by the operator. A paused
//! standby keeps following a silent primary; the operator's own
//! promotions still work; resuming lets the failover happen.

use super::*;

fn pause(paused: bool) -> Event {
    Event::FailoverPaused { paused }
}

fn is_promotion(e: &Effect) -> bool {
    matches!(
        e,
        Effect::SendFence { .. }
            | Effect::PersistMeta { .. }
            | Effect::RoleChanged { .. }
            | Effect::AskArbiter { .. }
    )
}

#[test]
fn a_paused_standby_whose_primary_falls_silent_does_not_promote() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    assert!(node.step(t(150), pause(true)).is_empty());
    assert!(node.failover_paused());
    assert!(node.is_eligible(), "the pause does not change eligibility");
    // Far past failover_timeout (1 s by default) of silence.
    let effects = tick_until(&mut node, 200, 10_000);
    assert!(!effects.iter().any(is_promotion), "{effects:?}");
    assert_eq!(node.role(), RoleKind::Standby);
    assert_eq!(node.epoch(), Epoch(1), "fences nothing, takes no epoch");
    assert!(
        node.held_by_pause()
            .is_some_and(|why| why.contains("paused")),
        "the node says why it does not promote"
    );
}

#[test]
fn a_paused_standby_still_follows_its_primary() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), pause(true));
    tick_until(&mut node, 200, 2000);
    assert!(node.held_by_pause().is_some());
    // The primary comes back: contact clears the hold.
    let effects = node.step(t(2050), heartbeat(1, "n2", 12, 12, SyncState::Sync));
    assert!(!effects.iter().any(is_promotion), "{effects:?}");
    assert_eq!(node.held_by_pause(), None);
    assert_eq!(node.leader(), Some(&NodeId::from("n2")));
}

#[test]
fn resuming_failover_promotes_a_standby_whose_primary_is_still_silent() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), pause(true));
    assert!(!tick_until(&mut node, 200, 5000).iter().any(is_promotion));
    let effects = node.step(t(5050), pause(false));
    assert_eq!(effects, promotes_n1_to_epoch_two());
    assert!(!node.failover_paused());
}

#[test]
fn resumed_before_the_timeout_the_standby_promotes_at_the_usual_deadline() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), pause(true));
    assert!(
        node.next_deadline(t(150)) <= t(150) + node.cfg.heartbeat_interval,
        "ticks go on while paused"
    );
    assert!(node.step(t(400), pause(false)).is_empty(), "not silent yet");
    assert!(tick_until(&mut node, 500, 1000).is_empty());
    let effects = node.step(t(1100), Event::Tick);
    assert!(
        effects.contains(&Effect::SendFence {
            epoch: Epoch(2),
            reason: FenceReason::Failover,
            to: Some(NodeId::from("n2")),
        }),
        "{effects:?}"
    );
}

#[test]
fn a_forced_promotion_works_while_paused() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), pause(true));
    tick_until(&mut node, 200, 3000);
    let effects = node.step(
        t(3050),
        Event::PromoteRequested {
            force: true,
            from: PromoteFrom::Rpc,
        },
    );
    assert!(
        effects.contains(&Effect::SendFence {
            epoch: Epoch(2),
            reason: FenceReason::Forced,
            to: Some(NodeId::from("n2")),
        }),
        "{effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Promoting);
}

#[test]
fn a_planned_switchover_works_while_paused() {
    let mut node = standby_in_contact(cfg(), SyncState::Sync, t(100));
    node.step(t(150), pause(true));
    let effects = node.step(
        t(200),
        Event::PromoteRequested {
            force: false,
            from: PromoteFrom::Rpc,
        },
    );
    assert_eq!(
        effects,
        vec![Effect::SendFence {
            epoch: Epoch(2),
            reason: FenceReason::Switchover,
            to: Some(NodeId::from("n2")),
        }]
    );
    // The old primary confirms it stopped at our last record.
    let effects = node.step(
        t(300),
        Event::FenceSent {
            confirmed_last_lsn: Some(Lsn(10)),
        },
    );
    assert!(
        effects.contains(&Effect::ReplyPromote(Ok(Epoch(2)))),
        "{effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(node.failover_paused(), "the pause outlives the role change");
}

#[test]
fn the_pause_is_kept_across_a_demotion_to_standby() {
    let mut node = primary_with_standby(cfg());
    node.step(t(2), pause(true));
    node.step(
        t(10),
        Event::FenceRequested {
            epoch: Epoch(2),
            leader: NodeId::from("n2"),
            reason: FenceReason::Forced,
        },
    );
    assert!(node.failover_paused());
    assert_ne!(node.role(), RoleKind::Primary);
}

#[test]
fn a_paused_standby_that_is_not_eligible_blames_eligibility_not_the_pause() {
    let mut node = standby_in_contact(cfg(), SyncState::NotSync, t(100));
    node.step(t(150), pause(true));
    assert!(!tick_until(&mut node, 200, 5000).iter().any(is_promotion));
    assert_eq!(node.held_by_pause(), None);
    assert!(
        node.step(t(5050), pause(false)).is_empty(),
        "still not eligible"
    );
    assert_eq!(node.role(), RoleKind::Standby);
}
