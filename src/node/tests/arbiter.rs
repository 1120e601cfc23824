//! The arbiter's rules in the role logic: a node asks the register for
//! what it needs and acts only on its answers.

use super::*;
use crate::arbiter::{MemArbiter, Register};
use std::collections::BTreeSet;
use std::sync::Arc;

pub(super) fn with_arbiter(cfg: Config) -> Config {
    Config {
        arbiter: Some(Arc::new(MemArbiter::new())),
        ..cfg
    }
}

/// A node started as primary on a fresh data directory, as `id` with peer
/// `peer`, with an arbiter.
fn fresh_primary_with_arbiter(id: &str, peer: &str) -> Node {
    let cfg = Config {
        initial_role: crate::InitialRole::Primary,
        node_id: NodeId::from(id),
        peer_id: NodeId::from(peer),
        ..with_arbiter(cfg())
    };
    new_node(cfg, WalMeta::default(), Lsn(0), Lsn(0), Lsn(0), t(0)).0
}

/// An operator's promotion over the RPC, forced or planned.
pub(super) fn promote(force: bool) -> Event {
    Event::PromoteRequested {
        force,
        from: PromoteFrom::Rpc,
    }
}

pub(super) fn register(version: u64, epoch: u64, primary: &str, sync_set: &[&str]) -> Register {
    Register {
        version,
        epoch: Epoch(epoch),
        primary: Some(NodeId::from(primary)),
        sync_set: sync_set.iter().map(|n| NodeId::from(*n)).collect(),
        members: ["n1", "n2"].into_iter().map(NodeId::from).collect(),
    }
}

/// The arbiter calls among `effects`.
pub(super) fn asks(effects: &[Effect]) -> Vec<(ArbiterPurpose, ArbiterCall)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::AskArbiter { purpose, call } => Some((*purpose, call.clone())),
            _ => None,
        })
        .collect()
}

/// The one swap among `effects`, with its purpose.
pub(super) fn the_swap(effects: &[Effect]) -> (ArbiterPurpose, u64, Register) {
    let swaps: Vec<_> = asks(effects)
        .into_iter()
        .filter_map(|(purpose, call)| match call {
            ArbiterCall::Swap {
                expected_version,
                next,
            } => Some((purpose, expected_version, next)),
            ArbiterCall::Read => None,
        })
        .collect();
    assert_eq!(swaps.len(), 1, "expected one swap in {effects:?}");
    swaps.into_iter().next().unwrap()
}

/// The answer to a swap to `next` that took effect: the register as it
/// then holds it, at `version`.
pub(super) fn swapped_at(mut next: Register, version: u64) -> ArbiterAnswer {
    next.version = version;
    ArbiterAnswer::Swapped(next)
}

pub(super) fn answer(
    node: &mut Node,
    at: Time,
    purpose: ArbiterPurpose,
    answer: ArbiterAnswer,
) -> Vec<Effect> {
    node.step(at, Event::ArbiterAnswered { purpose, answer })
}

/// Answers the read every node makes first with `answer_with`.
pub(super) fn first_read(node: &mut Node, at: Time, answer_with: ArbiterAnswer) -> Vec<Effect> {
    node.step(at, Event::Tick);
    assert_eq!(
        node.arbiter_asking(),
        Some(ArbiterPurpose::Refresh),
        "a node with an arbiter reads the register first"
    );
    answer(node, at, ArbiterPurpose::Refresh, answer_with)
}

/// Answers the read every node makes first with `reg`.
pub(super) fn knows(node: &mut Node, at: Time, reg: Register) -> Vec<Effect> {
    first_read(node, at, ArbiterAnswer::Read(reg))
}

/// Ticks every 100 ms from `from` to `to` like `tick_until`, answering each
/// periodic read with the register the node last learned.
pub(super) fn tick_answering_reads(node: &mut Node, from: u64, to: u64) -> Vec<Effect> {
    let mut all = Vec::new();
    let mut now = from;
    while now <= to {
        let effects = node.step(t(now), Event::Tick);
        let reads = asks(&effects)
            .into_iter()
            .any(|ask| ask == (ArbiterPurpose::Refresh, ArbiterCall::Read));
        all.extend(effects);
        if reads {
            let known = node.arbiter_status().unwrap().register.unwrap_or_default();
            all.extend(answer(
                node,
                t(now),
                ArbiterPurpose::Refresh,
                ArbiterAnswer::Read(known),
            ));
        }
        now += 100;
    }
    all
}

/// Steps `event`, answering a read of the register it asks with the
/// register the node knows (as `tick_answering_reads` does for ticks).
pub(super) fn step_answering(node: &mut Node, now: Time, event: Event) -> Vec<Effect> {
    let mut effects = node.step(now, event);
    if effects.contains(&Effect::AskArbiter {
        purpose: ArbiterPurpose::Refresh,
        call: ArbiterCall::Read,
    }) {
        let known = node.arbiter_status().unwrap().register.unwrap_or_default();
        effects.extend(answer(
            node,
            now,
            ArbiterPurpose::Refresh,
            ArbiterAnswer::Read(known),
        ));
    }
    effects
}

pub(super) fn unreachable() -> ArbiterAnswer {
    ArbiterAnswer::Failed {
        why: CallFailed::Unreachable,
        error: "connection refused".into(),
    }
}

fn persists(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::PersistMeta { .. }))
}

/// Standby n1 of n2 at epoch 1, told it is in sync at t=100, knowing `reg`.
fn silent_primary_standby(reg: Register) -> Node {
    let mut node = standby_in_contact(with_arbiter(cfg()), SyncState::Sync, t(100));
    knows(&mut node, t(100), reg);
    node
}

/// What a node's calls tell the arbiter about its epoch: a node that
/// promoted itself leads it from the swap on, still fencing, then as
/// primary, and a restarted confirmed primary too (a witness that lost
/// its file names no other primary of it); a primary nobody confirmed
/// yet, a standby and the primary it replaced do not.
#[test]
fn a_node_tells_the_arbiter_it_leads_its_epoch_from_its_promotion_on() {
    assert!(primary_with_standby(with_arbiter(cfg())).leads_its_epoch());
    assert!(!fresh_primary_with_arbiter("n1", "n2").leads_its_epoch());
    let mut node = silent_primary_standby(register(3, 1, "n2", &["n1"]));
    assert!(!node.leads_its_epoch());
    let effects = tick_answering_reads(&mut node, 200, 1100);
    let (purpose, _, next) = the_swap(&effects);
    answer(&mut node, t(1150), purpose, swapped_at(next, 4));
    assert_eq!(node.role(), RoleKind::Promoting);
    assert!(node.leads_its_epoch(), "still fencing");
    node.step(
        t(1200),
        Event::FenceSent {
            confirmed_last_lsn: None,
        },
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(node.leads_its_epoch());
    let mut old = primary_with_standby(with_arbiter(cfg()));
    old.step(
        t(50),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
        },
    );
    assert!(!old.leads_its_epoch());
}

#[test]
fn a_standby_promotes_by_a_failover_only_through_the_arbiters_swap_from_the_sync_set() {
    let mut node = silent_primary_standby(register(3, 1, "n2", &["n1"]));
    let effects = tick_answering_reads(&mut node, 200, 1100);
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!(purpose, ArbiterPurpose::Promote(Promotion::Failover));
    assert_eq!(expected, 3);
    assert_eq!(
        next,
        Register::fresh(Epoch(2), &"n1".into(), &["n1".into(), "n2".into()])
    );
    assert!(
        !persists(&effects),
        "nothing is persisted before the swap: {effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Standby);

    let mut granted = next.clone();
    granted.version = 4;
    let effects = answer(&mut node, t(1150), purpose, ArbiterAnswer::Swapped(granted));
    assert_eq!(effects[..3], promotes_n1_to_epoch_two());
}

#[test]
fn a_standby_outside_the_sync_set_or_without_the_arbiter_never_promotes() {
    // Told "in sync" by the primary, but the register says otherwise: the
    // primary took it out before acknowledging alone.
    let mut outside = silent_primary_standby(register(5, 1, "n2", &[]));
    let effects = tick_answering_reads(&mut outside, 200, 5000);
    assert!(
        asks(&effects)
            .iter()
            .all(|(_, call)| *call == ArbiterCall::Read),
        "no swap from outside the sync set: {effects:?}"
    );
    assert!(!persists(&effects));
    assert_eq!(outside.role(), RoleKind::Standby);
    let held = outside.arbiter_status().unwrap().held_back.unwrap();
    assert!(held.contains("not in the arbiter's sync set"), "{held}");

    // In the sync set, but the arbiter does not answer.
    let mut cut_off = silent_primary_standby(register(3, 1, "n2", &["n1"]));
    let effects = tick_answering_reads(&mut cut_off, 200, 1100);
    let (purpose, ..) = the_swap(&effects);
    let effects = answer(&mut cut_off, t(1150), purpose, unreachable());
    assert!(!persists(&effects));
    let later = tick_until(&mut cut_off, 1200, 5000);
    for (purpose, call) in asks(&later) {
        // It keeps asking (reading first: its swap may have happened) but
        // never promotes without an answer.
        let reply = answer(&mut cut_off, t(5000), purpose, unreachable());
        assert!(!persists(&reply), "{call:?}");
    }
    assert_eq!(cut_off.role(), RoleKind::Standby);
    assert!(cut_off.arbiter_status().unwrap().held_back.is_some());
}

/// A primary that knows the register at `version` (it primary of epoch 1,
/// n2 in the sync set), with write 1 on its disk, then loses n2; the
/// effects until its swap taking n2 out has been asked.
fn primary_losing_its_standby_with_a_write_waiting(version: u64) -> (Node, Vec<Effect>) {
    let mut node = primary_with_standby(with_arbiter(cfg()));
    knows(&mut node, t(1), register(version, 1, "n1", &["n2"]));
    node.step(t(10), writes_up_to(&node, 1));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(
        t(20),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    let effects = tick_answering_reads(&mut node, 100, 2100);
    (node, effects)
}

#[test]
fn a_primary_acknowledges_alone_only_after_the_swap_that_takes_the_standby_out() {
    let (mut node, effects) = primary_losing_its_standby_with_a_write_waiting(2);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Commit { .. })),
        "nothing committed without the standby before the swap: {effects:?}"
    );
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::DropStandby, 2));
    assert_eq!(next.sync_set, BTreeSet::new());
    assert_eq!(next.epoch, Epoch(1));

    let effects = answer(&mut node, t(2150), purpose, swapped_at(next, 3));
    assert!(
        effects.contains(&Effect::Commit { lsn: Lsn(1) }),
        "{effects:?}"
    );
    assert!(node.is_solo());
}

#[test]
fn a_primary_whose_swap_finds_a_newer_epoch_steps_down_and_fails_its_waiters() {
    let mut node = primary_with_standby(with_arbiter(cfg()));
    knows(&mut node, t(1), register(2, 1, "n1", &["n2"]));
    node.step(t(10), writes_up_to(&node, 1));
    node.step(
        t(20),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    let effects = tick_answering_reads(&mut node, 100, 2100);
    let (purpose, ..) = the_swap(&effects);
    // The standby promoted meanwhile (through the arbiter).
    let effects = answer(
        &mut node,
        t(2150),
        purpose,
        ArbiterAnswer::Conflict(register(3, 2, "n2", &[])),
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Commit { .. })));
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: None,
        failure: WaiterFailure::Fenced { epoch: Epoch(2) }
    }));
    assert_eq!(node.role(), RoleKind::Fenced);
    assert_eq!(node.epoch(), Epoch(2));
}

#[test]
fn a_primary_that_reaches_neither_its_standby_nor_the_arbiter_refuses_writes_until_one_answers() {
    let mut node = primary_with_standby(with_arbiter(cfg()));
    knows(&mut node, t(1), register(2, 1, "n1", &["n2"]));
    node.step(t(10), writes_up_to(&node, 1));
    node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(
        t(20),
        Event::StandbyUnreachable {
            standby: NodeId::from("n2"),
        },
    );
    let effects = tick_answering_reads(&mut node, 100, 2100);
    let (purpose, ..) = the_swap(&effects);
    let effects = answer(&mut node, t(2150), purpose, unreachable());
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: None,
        failure: WaiterFailure::Blocked
    }));
    assert!(matches!(
        node.check_writable(),
        Err(WriteRefusal::Unavailable { reason }) if reason.contains("arbiter")
    ));
    assert!(!node.is_solo());

    // The arbiter answers again: it reads first (the unanswered swap may
    // have happened), then swaps, then goes on alone.
    let effects = tick_until(&mut node, 2200, 3200);
    assert_eq!(
        asks(&effects),
        vec![(ArbiterPurpose::Refresh, ArbiterCall::Read)]
    );
    let effects = answer(
        &mut node,
        t(3200),
        ArbiterPurpose::Refresh,
        ArbiterAnswer::Read(register(2, 1, "n1", &["n2"])),
    );
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::DropStandby, 2));
    answer(&mut node, t(3300), purpose, swapped_at(next, 3));
    assert!(node.is_solo());
    assert!(node.check_writable().is_ok());
}

#[test]
fn a_standby_reenters_the_sync_set_caught_up_and_is_told_so_only_after_the_swap() {
    // A primary acknowledging alone (as after its promotion), whose
    // standby comes back behind.
    let mut node = primary_with_standby(with_arbiter(cfg()));
    node.role = Role::Primary(super::primary::Primary::promoted(&node.standbys));
    node.step(
        t(1),
        Event::StandbyReachable {
            standby: NodeId::from("n2"),
        },
    );
    knows(&mut node, t(1), register(2, 1, "n1", &[]));
    node.step(
        t(2),
        Event::StreamState {
            standby: NodeId::from("n2"),
            up: true,
        },
    );
    node.step(t(10), writes_up_to(&node, 2));
    let committed = node.step(t(11), Event::LocalFlushed { lsn: Lsn(2) });
    assert!(committed.contains(&Effect::Commit { lsn: Lsn(2) }));
    let progress = |lsn: u64| Event::StandbyProgress {
        standby: NodeId::from("n2"),
        positions: StandbyPositions {
            written: Lsn(lsn),
            flushed: Lsn(lsn),
            applied: Lsn(lsn),
        },
        epoch: Epoch(1),
    };
    let behind = node.step(t(20), progress(1));
    assert!(asks(&behind).is_empty(), "not caught up yet: {behind:?}");
    let effects = node.step(t(30), progress(2));
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::AddStandby, 2));
    assert!(next.sync_set.contains(&NodeId::from("n2")));
    assert_eq!(
        node.sync_state(),
        SyncState::NotSync,
        "not told it is in sync before the swap"
    );
    answer(&mut node, t(40), purpose, swapped_at(next, 3));
    assert_eq!(node.sync_state(), SyncState::Sync);
}

/// The arbiter's side of the rule for a restarted primary: before its
/// crash it may have acknowledged everything its disk holds (alone), so its
/// standby enters the sync set only once it holds all of that, not merely
/// what was committed since the restart.
#[test]
fn a_restarted_primary_lets_its_standby_into_the_sync_set_only_once_it_holds_all_it_may_have_acknowledged()
 {
    let (mut node, _) = new_node(
        with_arbiter(cfg()),
        meta(3, "n1"),
        Lsn(10),
        Lsn(10),
        Lsn(0),
        t(0),
    );
    knows(&mut node, t(1), register(5, 3, "n1", &[]));
    let progress = |lsn: u64| Event::StandbyProgress {
        standby: NodeId::from("n2"),
        positions: StandbyPositions {
            written: Lsn(lsn),
            flushed: Lsn(lsn),
            applied: Lsn(lsn),
        },
        epoch: Epoch(3),
    };
    let mut behind = node.step(
        t(2),
        Event::StandbyReachable {
            standby: NodeId::from("n2"),
        },
    );
    behind.extend(node.step(
        t(2),
        Event::StreamState {
            standby: NodeId::from("n2"),
            up: true,
        },
    ));
    behind.extend(node.step(t(3), progress(6)));
    assert_eq!(node.commit_lsn(), Lsn(6));
    assert!(asks(&behind).is_empty(), "not caught up yet: {behind:?}");
    let caught_up = node.step(t(4), progress(10));
    let (purpose, expected, next) = the_swap(&caught_up);
    assert_eq!((purpose, expected), (ArbiterPurpose::AddStandby, 5));
    assert!(next.sync_set.contains(&NodeId::from("n2")));
}

#[test]
fn two_fresh_primaries_with_an_arbiter_converge_on_the_create_winner() {
    let mut n1 = fresh_primary_with_arbiter("n1", "n2");
    let mut n2 = fresh_primary_with_arbiter("n2", "n1");
    // Both read an empty register, both ask to create it.
    let c1 = knows(&mut n1, t(10), Register::default());
    let c2 = knows(&mut n2, t(10), Register::default());
    let (p1, v1, next1) = the_swap(&c1);
    let (p2, v2, _) = the_swap(&c2);
    assert_eq!(
        (p1, v1, p2, v2),
        (ArbiterPurpose::Create, 0, ArbiterPurpose::Create, 0)
    );
    assert!(refuses_writes_until_confirmed(&n1) && refuses_writes_until_confirmed(&n2));
    // n1's create wins.
    let mut created = next1;
    created.version = 1;
    let won = answer(&mut n1, t(20), p1, ArbiterAnswer::Swapped(created.clone()));
    assert!(won.contains(&Effect::PersistMeta {
        epoch: Epoch(1),
        leader: Some(NodeId::from("n1")),
        confirmed: true,
    }));
    assert!(n1.check_writable().is_ok());
    let lost = answer(&mut n2, t(20), p2, ArbiterAnswer::Conflict(created));
    assert!(lost.contains(&Effect::PersistMeta {
        epoch: Epoch(1),
        leader: Some(NodeId::from("n1")),
        confirmed: true,
    }));
    assert_eq!(n2.role(), RoleKind::Standby);
    // A peer's heartbeat does not confirm a fresh primary with an arbiter,
    // nor make one step down: only the register decides.
    let mut n3 = fresh_primary_with_arbiter("n2", "n1");
    n3.step(
        t(5),
        Event::StandbyReachable {
            standby: NodeId::from("n1"),
        },
    );
    assert!(refuses_writes_until_confirmed(&n3));
    n3.step(t(6), heartbeat(1, "n1", 0, 0, SyncState::NotSync));
    assert_eq!(n3.role(), RoleKind::Primary);
}

#[test]
fn a_promotion_the_arbiter_granted_before_a_crash_is_taken_at_restart() {
    // n1 restarted as standby of n2 at epoch 1; the register says the
    // arbiter made it primary of epoch 2 (its swap's answer was lost).
    let (mut node, _) = new_node(
        with_arbiter(cfg()),
        meta(1, "n2"),
        Lsn(5),
        Lsn(5),
        Lsn(5),
        t(0),
    );
    let effects = knows(&mut node, t(10), register(7, 2, "n1", &[]));
    assert_eq!(effects[..3], promotes_n1_to_epoch_two());
}

#[test]
fn a_node_reading_a_newer_epoch_from_the_arbiter_follows_it() {
    let mut node = primary_with_standby(with_arbiter(cfg()));
    node.step(t(10), writes_up_to(&node, 1));
    let effects = knows(&mut node, t(20), register(4, 3, "n2", &[]));
    assert!(effects.contains(&Effect::FailWaiters {
        up_to: None,
        failure: WaiterFailure::Fenced { epoch: Epoch(3) }
    }));
    assert_eq!(node.role(), RoleKind::Fenced);
}

#[test]
fn a_primary_ahead_of_the_register_brings_it_up_to_its_epoch_and_creates_a_missing_one() {
    let mut ahead = primary_with_standby(with_arbiter(cfg()));
    ahead.epoch = Epoch(3);
    let effects = knows(&mut ahead, t(1), register(2, 2, "n2", &["n1"]));
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::CatchUp, 2));
    assert_eq!(
        next,
        Register::fresh(Epoch(3), &"n1".into(), &["n1".into(), "n2".into()])
    );

    let mut lost_file = primary_with_standby(with_arbiter(cfg()));
    let effects = knows(&mut lost_file, t(1), Register::default());
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::Create, 0));
    assert_eq!(next.epoch, Epoch(1));
}

/// A planned switchover asked of standby `node` (which knows the
/// register): the primary steps down with everything on its disk, then
/// the arbiter does not answer the promotion's swap. Returns the effects
/// of that answer.
pub(super) fn switchover_the_arbiter_does_not_answer(node: &mut Node) -> Vec<Effect> {
    node.step(t(200), promote(false));
    let effects = node.step(
        t(210),
        Event::FenceSent {
            confirmed_last_lsn: Some(Lsn(10)),
        },
    );
    let (purpose, ..) = the_swap(&effects);
    assert_eq!(purpose, ArbiterPurpose::Promote(Promotion::Switchover));
    answer(node, t(220), purpose, unreachable())
}

#[test]
fn a_switchover_with_an_unreachable_arbiter_goes_ahead_and_a_forced_promotion_too() {
    // Planned switchover: the primary stepped down with everything on our
    // disk, then the arbiter does not answer: promote anyway.
    let mut node = standby_in_contact(with_arbiter(cfg()), SyncState::Sync, t(100));
    knows(&mut node, t(100), register(3, 1, "n2", &["n1"]));
    let effects = switchover_the_arbiter_does_not_answer(&mut node);
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(effects.contains(&Effect::ReplyPromote(Ok(Epoch(2)))));

    // Forced, arbiter unreachable: goes ahead and fences the peer.
    let mut forced = standby_in_contact(with_arbiter(cfg()), SyncState::NotSync, t(100));
    knows(&mut forced, t(100), register(3, 1, "n2", &[]));
    let effects = forced.step(t(200), promote(true));
    let (purpose, ..) = the_swap(&effects);
    assert_eq!(purpose, ArbiterPurpose::Promote(Promotion::Forced));
    let effects = answer(&mut forced, t(220), purpose, unreachable());
    assert!(effects.contains(&Effect::SendFence {
        epoch: Epoch(2),
        reason: FenceReason::Forced,
        to: Some(NodeId::from("n2")),
    }));
}

fn refused(why: &str) -> ArbiterAnswer {
    ArbiterAnswer::Failed {
        why: CallFailed::Refused,
        error: why.into(),
    }
}

/// Answers every arbiter call among `effects` with `answer`, returning the
/// effects of the answers.
fn answer_all(
    node: &mut Node,
    at: Time,
    effects: &[Effect],
    answer_with: &ArbiterAnswer,
) -> Vec<Effect> {
    asks(effects)
        .into_iter()
        .flat_map(|(purpose, _)| answer(node, at, purpose, answer_with.clone()))
        .collect()
}

#[test]
fn a_primary_that_loses_its_standby_refuses_writes_whatever_call_finds_the_arbiter_down_or_refusing()
 {
    // It never had an answer (the arbiter was down since it started), or
    // the register is missing and its create is refused: either way there
    // is no swap to go solo with, so its writes fail instead of waiting.
    let down = unreachable();
    let create_refused = refused("members b have not reported their epoch yet");
    for (case, register_read, failure) in [
        ("never answered", None, &down),
        ("create refused", Some(Register::default()), &create_refused),
    ] {
        let mut node = primary_with_standby(with_arbiter(cfg()));
        match &register_read {
            Some(reg) => {
                let created = first_read(&mut node, t(1), ArbiterAnswer::Read(reg.clone()));
                assert_eq!(the_swap(&created).0, ArbiterPurpose::Create, "{case}");
                answer(&mut node, t(1), ArbiterPurpose::Create, failure.clone());
            }
            None => {
                first_read(&mut node, t(1), failure.clone());
            }
        }
        node.step(t(10), writes_up_to(&node, 1));
        node.step(t(11), Event::LocalFlushed { lsn: Lsn(1) });
        node.step(
            t(20),
            Event::StandbyUnreachable {
                standby: NodeId::from("n2"),
            },
        );
        let mut failed = false;
        for now in (100..=6000).step_by(100) {
            let effects = node.step(t(now), Event::Tick);
            let answered = answer_all(&mut node, t(now), &effects, failure);
            let all: Vec<&Effect> = effects.iter().chain(&answered).collect();
            failed |= all.iter().any(|e| {
                matches!(
                    e,
                    Effect::FailWaiters {
                        failure: WaiterFailure::SyncTimeout,
                        ..
                    }
                )
            });
            assert!(
                !all.iter().any(|e| matches!(e, Effect::Commit { .. })),
                "{case}: committed without the standby or a swap"
            );
        }
        assert!(failed, "{case}: the waiting write was never failed");
        assert!(
            matches!(node.check_writable(), Err(WriteRefusal::Unavailable { reason }) if reason.contains("arbiter")),
            "{case}: {:?}",
            node.check_writable()
        );
    }
}

#[test]
fn a_switchover_or_a_forced_promotion_goes_ahead_when_the_arbiter_never_answered() {
    // Forced, the standby never had an answer from the arbiter.
    let mut forced = standby_in_contact(with_arbiter(cfg()), SyncState::NotSync, t(100));
    first_read(&mut forced, t(100), unreachable());
    let asked = forced.step(t(2000), promote(true));
    let mut all = answer_all(&mut forced, t(2000), &asked, &unreachable());
    for now in (2000..=4000).step_by(100) {
        let effects = forced.step(t(now), Event::Tick);
        all.extend(answer_all(&mut forced, t(now), &effects, &unreachable()));
        all.extend(effects);
    }
    assert!(
        all.contains(&Effect::SendFence {
            epoch: Epoch(2),
            reason: FenceReason::Forced,
            to: Some(NodeId::from("n2")),
        }),
        "{all:?}"
    );

    // A switchover: the primary stepped down for us; the arbiter, down
    // since we started, never answered.
    let mut planned = standby_in_contact(with_arbiter(cfg()), SyncState::Sync, t(100));
    first_read(&mut planned, t(100), unreachable());
    planned.step(t(200), promote(false));
    let asked = planned.step(
        t(210),
        Event::FenceSent {
            confirmed_last_lsn: Some(Lsn(10)),
        },
    );
    let mut all = answer_all(&mut planned, t(210), &asked, &unreachable());
    for now in (300..=4000).step_by(100) {
        let effects = planned.step(t(now), Event::Tick);
        all.extend(answer_all(&mut planned, t(now), &effects, &unreachable()));
        all.extend(effects);
    }
    assert_eq!(planned.role(), RoleKind::Primary);
    assert!(all.contains(&Effect::ReplyPromote(Ok(Epoch(2)))), "{all:?}");
}

#[test]
fn a_promotion_refused_by_the_arbiter_or_that_the_role_can_no_longer_take_is_dropped() {
    // Forced, refused (not unreachable): the operator is told, nothing
    // is persisted.
    let mut forced = standby_in_contact(with_arbiter(cfg()), SyncState::NotSync, t(100));
    knows(&mut forced, t(100), register(3, 1, "n2", &[]));
    let effects = forced.step(t(200), promote(true));
    let (purpose, ..) = the_swap(&effects);
    let answered = answer(&mut forced, t(210), purpose, refused("permission denied"));
    assert!(!persists(&answered));
    assert!(
        matches!(
            answered.as_slice(),
            [Effect::ReplyPromote(Err(why))] if why.contains("refused")
        ),
        "{answered:?}"
    );

    // A failover waiting for the arbiter, then the standby's WAL fails:
    // the promotion is dropped, no swap deposes the healthy primary.
    let mut failing = silent_primary_standby(register(3, 1, "n2", &["n1"]));
    let effects = tick_answering_reads(&mut failing, 200, 1100);
    let (purpose, ..) = the_swap(&effects);
    answer(&mut failing, t(1150), purpose, unreachable());
    failing.step(
        t(1200),
        Event::WalFailed {
            reason: "fsync failed".into(),
        },
    );
    let later = tick_answering_reads(&mut failing, 1300, 6000);
    assert!(
        asks(&later)
            .iter()
            .all(|(_, call)| *call == ArbiterCall::Read),
        "a failed node asks for no promotion: {later:?}"
    );
}

/// A failover held back by the arbiter, then given up (a newer epoch led
/// by another node appeared): the node no longer says it is held back.
#[test]
fn a_failover_given_up_no_longer_reports_what_held_it_back() {
    let mut failing = silent_primary_standby(register(3, 1, "n2", &["n1"]));
    let effects = tick_answering_reads(&mut failing, 200, 1100);
    let (purpose, ..) = the_swap(&effects);
    answer(&mut failing, t(1150), purpose, unreachable());
    assert!(failing.arbiter_status().unwrap().held_back.is_some());
    failing.step(
        t(1200),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: Some(NodeId::from("n2")),
        },
    );
    assert_eq!(failing.arbiter_status().unwrap().held_back, None);
}

#[test]
fn a_primary_whose_data_directory_was_wiped_is_not_confirmed_by_the_register_naming_it() {
    // n1 was the primary of epoch 1, took writes and put n2 into the sync
    // set (register v2); its directory was wiped and it was started as
    // primary again: a fresh node, which the register names.
    let mut wiped = fresh_primary_with_arbiter("n1", "n2");
    knows(&mut wiped, t(10), register(2, 1, "n1", &["n2"]));
    assert!(refuses_writes_until_confirmed(&wiped));
    let held = wiped.arbiter_status().unwrap().held_back.unwrap();
    assert!(held.contains("wiped"), "{held}");

    // A fresh primary that crashed after its create swap, before it saved
    // the confirmation, finds the register as it created it (v1, or above
    // after a witness rebuilt it), its sync set empty: confirmed.
    for version in [1, 5] {
        let mut restarted = fresh_primary_with_arbiter("n1", "n2");
        knows(&mut restarted, t(10), register(version, 1, "n1", &[]));
        assert!(restarted.check_writable().is_ok(), "v{version}");
    }
}

#[test]
fn a_node_started_on_an_empty_directory_never_takes_an_epoch_the_register_says_it_led() {
    // n1 led epoch 3 and lost its data directory; started as a standby
    // (epoch 0, empty log), it reads a register naming it primary of 3.
    // Taking that epoch would make its empty log the primary's.
    let (mut node, _) = new_node(
        with_arbiter(cfg()),
        WalMeta::default(),
        Lsn(0),
        Lsn(0),
        Lsn(0),
        t(0),
    );
    let effects = knows(&mut node, t(1), register(5, 3, "n1", &["n2"]));
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::PersistMeta { leader: Some(l), .. } if *l == NodeId::from("n1")
        ) || matches!(e, Effect::SendFence { .. })),
        "{effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Standby);
    assert_eq!((node.epoch(), node.leader()), (Epoch(3), None));
}

/// Ticks every 100 ms from `from` to `to`, answering every call the node
/// makes with a read of `reg`.
fn tick_answering_every_call_with(
    node: &mut Node,
    from: u64,
    to: u64,
    reg: &Register,
) -> Vec<Effect> {
    let mut all = Vec::new();
    for now in (from..=to).step_by(100) {
        let step = node.step(t(now), Event::Tick);
        for (purpose, _) in asks(&step) {
            all.extend(answer(
                node,
                t(now),
                purpose,
                ArbiterAnswer::Read(reg.clone()),
            ));
        }
        all.extend(step);
    }
    all
}

/// The arbiter's data went back (an etcd restored from an older snapshot):
/// it answers the register at version 3, which still lists n1 in the sync
/// set, after answering n1 version 5, the swap by which the primary took
/// n1 out and then acknowledged alone. n1 must not promote from it; it
/// takes the answer as none, says why, and acts again once an answer is no
/// longer behind.
#[test]
fn a_register_below_a_version_the_arbiter_answered_before_is_not_acted_on() {
    let mut node = silent_primary_standby(register(5, 1, "n2", &[]));
    let effects =
        tick_answering_every_call_with(&mut node, 200, 5000, &register(3, 1, "n2", &["n1"]));
    assert!(
        asks(&effects)
            .iter()
            .all(|(_, call)| *call == ArbiterCall::Read),
        "a swap from a register that went back: {effects:?}"
    );
    assert!(!persists(&effects));
    assert_eq!(node.role(), RoleKind::Standby);
    let status = node.arbiter_status().unwrap();
    assert_eq!(status.reachable, Some(false));
    assert_eq!(
        status.register.map(|r| r.version),
        Some(5),
        "it took the register that went back"
    );
    let why = status.last_error.unwrap();
    assert!(
        why.contains("went back") && why.contains("below version 5"),
        "{why}"
    );
    assert!(status.held_back.is_some());

    // A register at or above what it saw is the arbiter's again.
    tick_answering_every_call_with(&mut node, 5100, 8000, &register(6, 1, "n2", &[]));
    let status = node.arbiter_status().unwrap();
    assert_eq!(status.reachable, Some(true));
    assert_eq!(status.register.map(|r| r.version), Some(6));
}

/// The same on a primary whose standby is lost: its swap taking the standby
/// out meets a register that went back (a conflict at version 3, with an
/// empty sync set naming it primary). Acted on, it would let the primary
/// acknowledge alone on a register the arbiter never made durable in this
/// history; taken as no answer, the write waits.
#[test]
fn a_primary_answered_a_register_that_went_back_acknowledges_nothing_alone() {
    let (mut node, effects) = primary_losing_its_standby_with_a_write_waiting(5);
    let (purpose, expected, _) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::DropStandby, 5));
    let effects = answer(
        &mut node,
        t(2150),
        purpose,
        ArbiterAnswer::Conflict(register(3, 1, "n1", &[])),
    );
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Commit { .. })),
        "acknowledged alone on a register that went back: {effects:?}"
    );
    assert!(!node.is_solo());
    let status = node.arbiter_status().unwrap();
    assert_eq!(status.reachable, Some(false));
    assert!(status.last_error.unwrap().contains("went back"));
}
