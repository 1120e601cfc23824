//! A primary restarted in a cluster with an arbiter: before it writes it
//! takes the next epoch through the register (a retake), unless every
//! standby heard from it since; in a pair it keeps its epoch.

use super::arbiter::{register, swapped_at, tick_answering_reads};
use super::candidacy::{candidate_config, n, swaps};
use super::*;

/// n1 restarted as the primary of epoch 3 (log at 10) in `candidate()`'s
/// cluster, the register (v5) naming it with both standbys; it refuses
/// writes meanwhile. Returns it and its effects once it read the register
/// and ticked to 300 ms.
fn restarted_primary_of_epoch_3() -> (Node, Vec<Effect>) {
    let cfg = candidate_config();
    let (mut node, _) = new_node(cfg, meta(3, "n1"), Lsn(10), Lsn(10), Lsn(10), t(0));
    assert_eq!(node.role(), RoleKind::Primary);
    let mut effects = super::arbiter::knows(&mut node, t(10), register(5, 3, "n1", &["n2", "n3"]));
    assert!(
        matches!(node.check_writable(), Err(WriteRefusal::Unavailable { reason }) if reason.contains("takes epoch 4")),
        "{:?}",
        node.check_writable()
    );
    effects.extend(tick_answering_reads(&mut node, 100, 300));
    (node, effects)
}

/// A primary restarted in a cluster takes the next epoch through the
/// register before it writes: a crash of its machine may have lost
/// records one standby holds, and records it writes from now on must
/// never share an `(lsn, epoch)` with those (another standby could take
/// the new ones and then lead, or rank below the one holding the lost
/// ones by log length alone).
#[test]
fn a_primary_restarted_in_a_cluster_takes_the_next_epoch_before_it_writes() {
    let (mut node, effects) = restarted_primary_of_epoch_3();
    let (purpose, expected, next) = super::arbiter::the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::Retake, 5));
    assert_eq!(
        (next.epoch, next.primary.clone()),
        (Epoch(4), Some(n("n1")))
    );
    assert_eq!(next.sync_set, register(5, 3, "n1", &["n2", "n3"]).sync_set);
    let effects = super::arbiter::answer(&mut node, t(350), purpose, swapped_at(next, 6));
    assert_eq!((node.epoch(), node.role()), (Epoch(4), RoleKind::Primary));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::PersistMeta { epoch, .. } if *epoch == Epoch(4))),
        "{effects:?}"
    );
    let restarts = [Effect::StopPrimaryTasks, Effect::StartPrimaryTasks];
    assert!(effects.windows(2).any(|w| w == restarts), "{effects:?}");
    assert!(node.check_writable().is_ok(), "{:?}", node.check_writable());
}

/// The retake loses to a standby's promotion swap at the same version: the
/// restarted primary follows the register and never wrote in either epoch.
#[test]
fn a_restarted_primary_whose_retake_loses_to_a_promotion_steps_down() {
    let (mut node, effects) = restarted_primary_of_epoch_3();
    let (purpose, _, _) = super::arbiter::the_swap(&effects);
    super::arbiter::answer(
        &mut node,
        t(350),
        purpose,
        ArbiterAnswer::Conflict(register(6, 4, "n3", &["n2"])),
    );
    assert_eq!(node.epoch(), Epoch(4));
    assert_ne!(node.role(), RoleKind::Primary);
}

/// A pair has one standby, and its restart points cover it: a restarted
/// primary of a pair with an arbiter writes in its epoch at once.
#[test]
fn a_primary_restarted_in_a_pair_keeps_its_epoch() {
    let (mut node, _) = new_node(
        super::arbiter::with_arbiter(cfg()),
        meta(3, "n1"),
        Lsn(10),
        Lsn(10),
        Lsn(10),
        t(0),
    );
    let mut effects = super::arbiter::knows(&mut node, t(10), register(5, 3, "n1", &["n2"]));
    effects.extend(tick_answering_reads(&mut node, 100, 300));
    assert!(!swaps(&effects), "{effects:?}");
    assert_eq!(node.epoch(), Epoch(3));
    assert!(node.check_writable().is_ok(), "{:?}", node.check_writable());
}

/// Once a stream of this life reached every standby (each that held
/// records it lost dropped them first), the restarted primary writes in
/// its epoch without waiting for the arbiter, which may not answer. A
/// retake swap already asked that lands later still moves it on.
#[test]
fn a_restarted_primary_every_standby_heard_from_writes_without_the_arbiter() {
    let (mut node, effects) = restarted_primary_of_epoch_3();
    let (purpose, _, next) = super::arbiter::the_swap(&effects);
    node.step(t(320), Event::EveryStandbyReached);
    assert_eq!(node.epoch(), Epoch(3));
    assert!(node.check_writable().is_ok(), "{:?}", node.check_writable());
    let effects = super::arbiter::answer(&mut node, t(350), purpose, swapped_at(next, 6));
    assert_eq!((node.epoch(), node.role()), (Epoch(4), RoleKind::Primary));
    let restarts = [Effect::StopPrimaryTasks, Effect::StartPrimaryTasks];
    assert!(effects.windows(2).any(|w| w == restarts), "{effects:?}");
    // Reached before it asked: it never asks.
    let cfg = candidate_config();
    let (mut node, _) = new_node(cfg, meta(3, "n1"), Lsn(10), Lsn(10), Lsn(10), t(0));
    node.step(t(5), Event::EveryStandbyReached);
    let mut effects = super::arbiter::knows(&mut node, t(10), register(5, 3, "n1", &["n2", "n3"]));
    effects.extend(tick_answering_reads(&mut node, 100, 300));
    assert!(!swaps(&effects), "{effects:?}");
    assert!(node.check_writable().is_ok(), "{:?}", node.check_writable());
}

/// A restarted primary asked to stop before it took its next epoch has
/// written nothing in this life: it just stops (a switchover swap would
/// race the retake's).
#[test]
fn a_restarted_primary_asked_to_stop_before_its_retake_just_stops() {
    let (mut node, _) = restarted_primary_of_epoch_3();
    // n2 answers, streams and holds all the primary may have acknowledged:
    // a primary that wrote would hand over to it.
    node.step(t(310), Event::StandbyReachable { standby: n("n2") });
    node.step(
        t(310),
        Event::StreamState {
            standby: n("n2"),
            up: true,
        },
    );
    node.step(
        t(315),
        Event::StandbyProgress {
            standby: n("n2"),
            positions: StandbyPositions {
                written: Lsn(10),
                flushed: Lsn(10),
                applied: Lsn(10),
            },
            epoch: Epoch(3),
        },
    );
    assert_eq!(node.step(t(320), Event::StopRequested), vec![Effect::Stop]);
}
