//! A primary with two standbys: one link each, commits under the rule,
//! one lost standby taken out of the sync set alone, the handover target.

use super::arbiter::{
    answer, asks, first_read, knows, promote, register, step_answering, swapped_at, the_swap,
    tick_answering_reads, with_arbiter,
};
use super::*;
use crate::arbiter::Register;
use crate::config::PeerAddress;

fn n(id: &str) -> NodeId {
    NodeId::from(id)
}

/// `cfg` with n3 as a third node (n2 is `peer_id`).
fn with_n3(cfg: Config) -> Config {
    Config {
        more_peers: vec![PeerAddress {
            id: n("n3"),
            addr: "n3:7001".into(),
        }],
        ..cfg
    }
}

/// n1, primary of epoch 1, with standbys n2 and n3 under `rule`, an
/// arbiter, both standbys answering and streaming.
fn primary_of_two(rule: &str, loss: OnStandbyLoss) -> Node {
    let cfg = Config {
        sync_standbys: Some(rule.parse().unwrap()),
        on_standby_loss: loss,
        ..with_n3(with_arbiter(cfg()))
    };
    cfg.validate().unwrap();
    let (mut node, _) = new_node(cfg, meta(1, "n1"), Lsn(0), Lsn(0), Lsn(0), t(0));
    // A primary running in its epoch, not one just restarted (which takes
    // the next epoch first: `candidacy::a_primary_restarted_in_a_cluster_…`).
    if let Role::Primary(p) = &mut node.role {
        p.retake = false;
    }
    for s in ["n2", "n3"] {
        node.step(t(1), Event::StandbyReachable { standby: n(s) });
        node.step(
            t(1),
            Event::StreamState {
                standby: n(s),
                up: true,
            },
        );
    }
    node
}

/// `primary_of_two` with `solo`, both standbys in the register's sync set
/// and two writes committed on both.
fn two_writes_on_both(rule: &str) -> Node {
    let mut node = primary_of_two(rule, OnStandbyLoss::Solo);
    knows(&mut node, t(1), register(2, 1, "n1", &["n2", "n3"]));
    node.step(t(2), writes_up_to(&node, 2));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(2) });
    node.step(t(4), at("n2", 2, &node));
    node.step(t(4), at("n3", 2, &node));
    assert_eq!(node.commit_lsn(), Lsn(2));
    node
}

fn at(standby: &str, lsn: u64, node: &Node) -> Event {
    let l = Lsn(lsn);
    Event::StandbyProgress {
        standby: n(standby),
        positions: StandbyPositions {
            written: l,
            flushed: l,
            applied: l,
        },
        epoch: node.epoch(),
    }
}

#[test]
fn a_write_commits_only_once_every_standby_the_rule_waits_for_has_it() {
    for rule in ["ANY 2 (n2, n3)", "FIRST 2 (n2, n3)", "ANY 3 (n1, n2, n3)"] {
        let mut node = primary_of_two(rule, OnStandbyLoss::Solo);
        node.step(t(2), writes_up_to(&node, 3));
        node.step(t(3), Event::LocalFlushed { lsn: Lsn(3) });
        let e = node.step(t(4), at("n2", 3, &node));
        assert!(
            !e.iter().any(|e| matches!(e, Effect::Commit { .. })),
            "{rule}: committed with n2 alone: {e:?}"
        );
        assert_eq!(node.commit_lsn(), Lsn(0), "{rule}");
        let e = node.step(t(5), at("n3", 2, &node));
        assert!(e.contains(&Effect::Commit { lsn: Lsn(2) }), "{rule}: {e:?}");
        node.step(t(6), at("n3", 3, &node));
        assert_eq!(node.commit_lsn(), Lsn(3), "{rule}");
        // Each standby is told its own state: both hold everything.
        assert_eq!(node.standby_positions().unwrap().flushed, Lsn(3));
    }
}

#[test]
fn positions_of_a_node_that_is_not_a_standby_of_ours_commit_nothing() {
    let mut node = primary_of_two("ANY 2 (n2, n3)", OnStandbyLoss::Solo);
    node.step(t(2), writes_up_to(&node, 3));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(3) });
    node.step(t(4), at("n2", 3, &node));
    node.step(t(5), at("n9", 3, &node));
    assert_eq!(node.commit_lsn(), Lsn(0));
}

#[test]
fn one_lost_standby_leaves_the_sync_set_alone_and_the_other_still_confirms() {
    let mut node = two_writes_on_both("ANY 2 (n2, n3)");
    assert_eq!(node.sync_state_of(&n("n2")), SyncState::Sync);
    assert_eq!(node.sync_state_of(&n("n3")), SyncState::Sync);

    // n3 falls silent; a write waits for it.
    node.step(t(10), Event::StandbyUnreachable { standby: n("n3") });
    tick_answering_reads(&mut node, 100, 1000);
    let write = writes_up_to(&node, 3);
    step_answering(&mut node, t(1000), write);
    step_answering(&mut node, t(1001), Event::LocalFlushed { lsn: Lsn(3) });
    let n2_has_it = at("n2", 3, &node);
    step_answering(&mut node, t(1002), n2_has_it);
    assert_eq!(
        node.commit_lsn(),
        Lsn(2),
        "ANY 2 waits for n3 while it counts"
    );

    // After sync_timeout the primary asks to take n3 (only n3) out.
    let effects = tick_answering_reads(&mut node, 1100, 2100);
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::DropStandby, 2));
    assert_eq!(next.sync_set, [n("n2")].into_iter().collect());
    assert_eq!(node.commit_lsn(), Lsn(2), "nothing commits before the swap");

    // Once the register says so, n2 alone confirms (k' = 1).
    let e = answer(&mut node, t(2200), purpose, swapped_at(next, 3));
    assert!(e.contains(&Effect::Commit { lsn: Lsn(3) }), "{e:?}");
    assert!(!node.is_solo(), "n2 still counts");
    assert_eq!(node.sync_state_of(&n("n2")), SyncState::Sync);
    assert_eq!(node.sync_state_of(&n("n3")), SyncState::NotSync);

    // n3 comes back behind: it counts again once caught up, and the
    // primary asks for it to re-enter the sync set.
    step_answering(
        &mut node,
        t(2300),
        Event::StandbyReachable { standby: n("n3") },
    );
    let behind = at("n3", 1, &node);
    step_answering(&mut node, t(2300), behind);
    assert_eq!(node.sync_state_of(&n("n3")), SyncState::NotSync);
    let caught_up = at("n3", 3, &node);
    let mut effects = step_answering(&mut node, t(2400), caught_up);
    effects.extend(tick_answering_reads(&mut node, 2500, 3600));
    let (purpose, _, next) = the_swap(&effects);
    assert_eq!(purpose, ArbiterPurpose::AddStandby);
    assert_eq!(next.sync_set, [n("n2"), n("n3")].into_iter().collect());
}

#[test]
fn a_lost_standby_that_holds_writes_the_other_lacks_stays_in_the_sync_set() {
    // FIRST 2 with the rule's k = named: while n2 is behind, taking n3
    // out would leave acknowledged writes on no standby that counts.
    let mut node = two_writes_on_both("FIRST 2 (n2, n3)");
    // Both are reported behind after a reconnect, then n3 is lost.
    node.step(
        t(5),
        Event::StreamState {
            standby: n("n2"),
            up: true,
        },
    );
    node.step(t(10), Event::StandbyUnreachable { standby: n("n3") });
    let effects = tick_answering_reads(&mut node, 100, 10_100);
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::AskArbiter {
                purpose: ArbiterPurpose::DropStandby,
                ..
            }
        )),
        "n3 may not leave while n2 lacks acknowledged writes: {effects:?}"
    );
    // n2 reports it holds them: now n3 may leave.
    let n2_caught_up = at("n2", 2, &node);
    let effects = step_answering(&mut node, t(10_150), n2_caught_up);
    let (purpose, _, next) = the_swap(&effects);
    assert_eq!(purpose, ArbiterPurpose::DropStandby);
    assert_eq!(next.sync_set, [n("n2")].into_iter().collect());
}

#[test]
fn with_block_a_lost_standby_the_rule_needs_refuses_writes_until_it_answers() {
    let mut node = primary_of_two("ANY 2 (n2, n3)", OnStandbyLoss::Block);
    knows(&mut node, t(1), register(2, 1, "n1", &["n2", "n3"]));
    node.step(t(2), writes_up_to(&node, 1));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(1) });
    node.step(t(4), at("n2", 1, &node));
    node.step(t(10), Event::StandbyUnreachable { standby: n("n3") });
    let effects = tick_until(&mut node, 100, 10_100);
    assert!(
        effects.contains(&Effect::FailWaiters {
            up_to: None,
            failure: WaiterFailure::Blocked
        }),
        "{effects:?}"
    );
    let refusal = node.check_writable().unwrap_err();
    assert!(
        matches!(&refusal, WriteRefusal::Unavailable { reason } if reason.contains("n3") && reason.contains("block")),
        "{refusal:?}"
    );
    node.step(t(10_200), Event::StandbyReachable { standby: n("n3") });
    assert!(node.check_writable().is_ok());
}

#[test]
fn a_stopping_primary_hands_over_to_the_most_advanced_standby_in_sync() {
    let mut node = primary_of_two("ANY 2 (n2, n3)", OnStandbyLoss::Solo);
    let cfg = Config {
        arbiter: None,
        ..node.cfg.clone()
    };
    node.cfg = cfg;
    node.arbiter = None;
    node.step(t(2), writes_up_to(&node, 4));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(4) });
    node.step(t(4), at("n2", 4, &node));
    node.step(t(4), at("n3", 3, &node));
    assert_eq!(node.commit_lsn(), Lsn(3));
    assert_eq!(
        node.step(t(5), Event::StopRequested),
        vec![Effect::HandOver { to: n("n2") }]
    );
}

#[test]
fn a_promotion_asked_of_a_clusters_primary_goes_to_the_most_advanced_standby_in_sync() {
    let mut node = primary_of_two("ANY 2 (n2, n3)", OnStandbyLoss::Solo);
    node.cfg.arbiter = None;
    node.arbiter = None;
    node.step(t(2), writes_up_to(&node, 4));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(4) });
    node.step(t(4), at("n2", 3, &node));
    node.step(t(4), at("n3", 4, &node));
    assert_eq!(node.commit_lsn(), Lsn(3));
    // n3 (not `peer_id`) holds more: it is asked.
    assert_eq!(
        node.step(t(5), super::arbiter::promote(false)),
        vec![Effect::ForwardPromote { to: Some(n("n3")) }]
    );
}

#[test]
fn more_peers_need_an_arbiter_and_a_rule_naming_known_nodes() {
    let three = with_n3(cfg());
    let e = three.validate().unwrap_err();
    assert_eq!(e.setting, crate::Setting::MorePeers);
    assert!(e.to_string().contains("arbiter"), "{e}");
    let with = with_arbiter(three);
    with.validate().unwrap();
    assert_eq!(with.commit_rule().to_string(), "ANY 2 (n2, n3)");
    // A quorum of the standbys (a promotion then asks the others first).
    for rule in ["ANY 1 (n2, n3)", "FIRST 1 (n2, n3)", "ANY 1 (n1, n2, n3)"] {
        let cfg = Config {
            sync_standbys: Some(rule.parse().unwrap()),
            ..with.clone()
        };
        cfg.validate().unwrap();
    }
    let unknown = Config {
        sync_standbys: Some("ANY 2 (n2, n4)".parse().unwrap()),
        ..with.clone()
    };
    let e = unknown.validate().unwrap_err();
    assert_eq!(e.setting, crate::Setting::SyncStandbys);
    assert!(e.to_string().contains("n4"), "{e}");
    // Naming fewer standbys is fine: n3 stays asynchronous.
    let cfg = Config {
        sync_standbys: Some("FIRST 1 (n1, n2)".parse().unwrap()),
        ..with.clone()
    };
    cfg.validate().unwrap();
    let dup = Config {
        more_peers: vec![PeerAddress {
            id: n("n2"),
            addr: "x:1".into(),
        }],
        ..with.clone()
    };
    assert!(dup.validate().unwrap_err().to_string().contains("twice"));
    // Two names at one address: without TLS one node's answers would
    // count as two nodes'.
    let shared = Config {
        more_peers: vec![PeerAddress {
            id: n("n3"),
            addr: with.peer_addr.clone(),
        }],
        ..with
    };
    let e = shared.validate().unwrap_err();
    assert_eq!(e.setting, crate::Setting::MorePeers);
    assert!(e.to_string().contains("its own"), "{e}");
}

#[test]
fn a_switchover_in_a_cluster_never_takes_the_epoch_without_the_arbiters_swap() {
    // n1, a standby of n2 with n3 beside it; the primary stepped down for
    // it, then the arbiter does not answer. Another member of the old
    // sync set (n3) could still swap itself in: no epoch without the swap.
    let cfg = with_n3(with_arbiter(cfg()));
    let mut node = standby_in_contact(cfg, SyncState::Sync, t(100));
    knows(&mut node, t(100), register(3, 1, "n2", &["n1", "n3"]));
    let effects = super::arbiter::switchover_the_arbiter_does_not_answer(&mut node);
    assert_eq!(node.role(), RoleKind::Standby);
    assert_eq!(node.epoch(), Epoch(1));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReplyPromote(Err(why)) if why.contains("needs its swap"))),
        "{effects:?}"
    );
}

/// The witness lost its file while a switchover waited for its swap:
/// the swap is a create, which the witness refuses until every member has
/// asked it something since. That passes by itself (each member reads
/// every few heartbeats), and the old primary stepped down for this node:
/// the switchover asks again instead of leaving the cluster with no
/// primary. Any other refusal still ends it.
#[test]
fn a_switchover_whose_create_waits_for_the_members_asks_again_and_takes_over() {
    let members_not_heard = ArbiterAnswer::Failed {
        why: CallFailed::MembersNotHeard,
        error: "the register does not exist and members n3 have not reported their epoch yet"
            .into(),
    };
    let cfg = with_n3(with_arbiter(cfg()));
    let retry_after = cfg.heartbeat_interval;
    let mut node = standby_in_contact(cfg, SyncState::Sync, t(100));
    knows(&mut node, t(100), Register::default());
    node.step(t(200), promote(false));
    let effects = node.step(
        t(210),
        Event::FenceSent {
            confirmed_last_lsn: Some(Lsn(10)),
        },
    );
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!(
        (purpose, expected, next.epoch),
        (ArbiterPurpose::Promote(Promotion::Switchover), 0, Epoch(2))
    );
    let effects = answer(&mut node, t(220), purpose, members_not_heard);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::ReplyPromote(_))),
        "{effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Standby);
    let effects = node.step(t(220) + retry_after, Event::Tick);
    let (again, expected, next) = the_swap(&effects);
    assert_eq!((again, expected), (purpose, 0));
    let effects = answer(&mut node, t(230) + retry_after, again, swapped_at(next, 7));
    assert_eq!((node.role(), node.epoch()), (RoleKind::Primary, Epoch(2)));
    assert!(effects.contains(&Effect::ReplyPromote(Ok(Epoch(2)))));
}

#[test]
fn a_standby_the_rule_does_not_name_is_never_told_it_is_in_sync() {
    // FIRST 1 (n2): n3 is asynchronous. It holds everything, yet no
    // write waits for it, so it must not believe it may take over.
    let mut node = primary_of_two("FIRST 1 (n2)", OnStandbyLoss::Solo);
    knows(&mut node, t(1), register(2, 1, "n1", &["n2"]));
    node.step(t(2), writes_up_to(&node, 2));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(2) });
    node.step(t(4), at("n2", 2, &node));
    node.step(t(4), at("n3", 2, &node));
    assert_eq!(node.commit_lsn(), Lsn(2));
    assert_eq!(node.sync_state_of(&n("n2")), SyncState::Sync);
    assert_eq!(node.sync_state_of(&n("n3")), SyncState::NotSync);
    // Lost, it changes nothing: no swap, no refusal, no hold.
    node.step(t(10), Event::StandbyUnreachable { standby: n("n3") });
    let effects = tick_answering_reads(&mut node, 100, 3000);
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::AskArbiter {
                purpose: ArbiterPurpose::DropStandby,
                ..
            }
        )),
        "{effects:?}"
    );
    assert!(node.check_writable().is_ok());
    assert_eq!(node.arbiter_status().unwrap().held_back, None);
}

#[test]
fn a_rule_naming_no_other_node_is_refused_in_a_sync_mode() {
    let cfg = Config {
        sync_standbys: Some("ANY 1 (n1)".parse().unwrap()),
        ..cfg()
    };
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.setting, crate::Setting::SyncStandbys);
    assert!(e.to_string().contains("names no other node"), "{e}");
    let async_mode = Config {
        commit_mode: CommitMode::Async,
        ..cfg
    };
    async_mode.validate().unwrap();
}

#[test]
fn a_rejoining_node_asking_for_our_log_is_not_taken_for_the_leader_of_its_epoch() {
    // n1, a standby of n2 at epoch 1, is asked for its log by n3 at epoch
    // 2 (n3 rejoins and knows no leader): the epoch is adopted, but n3 is
    // not its leader (in a cluster the leader may be anyone).
    let cfg = with_n3(with_arbiter(cfg()));
    let mut node = standby_in_contact(cfg, SyncState::Sync, t(100));
    let effects = node.step(
        t(200),
        Event::HistoryRequested {
            header: header(2, "n3"),
        },
    );
    assert!(
        effects.contains(&Effect::PersistMeta {
            epoch: Epoch(2),
            leader: None,
            confirmed: true,
        }),
        "{effects:?}"
    );
    assert_eq!(node.leader(), None);
}

#[test]
fn under_any_1_a_standby_the_register_does_not_hold_yet_acknowledges_nothing_alone() {
    // The register holds n2 alone (n3 was taken out while lost); n3 has
    // caught up and its swap back in is not answered. n2 is silent: n3's
    // confirmation alone must not acknowledge, or n2, which the register
    // lets promote, would lack the write.
    let mut node = primary_of_two("ANY 1 (n1, n2, n3)", OnStandbyLoss::Solo);
    knows(&mut node, t(1), register(2, 1, "n1", &["n2"]));
    node.step(t(2), writes_up_to(&node, 3));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(3) });
    let e = node.step(t(4), at("n3", 3, &node));
    assert!(
        !e.iter().any(|e| matches!(e, Effect::Commit { .. })),
        "acknowledged with n3, outside the register's sync set: {e:?}"
    );
    assert_eq!(node.commit_lsn(), Lsn(0));
    // Once the register holds n3 too (its swap answered), n3 alone is
    // enough.
    let asking = node.arbiter_asking().expect("the swap that adds n3");
    assert_eq!(asking, ArbiterPurpose::AddStandby);
    let e = answer(
        &mut node,
        t(5),
        asking,
        ArbiterAnswer::Swapped(register(3, 1, "n1", &["n2", "n3"])),
    );
    assert!(e.contains(&Effect::Commit { lsn: Lsn(3) }), "{e:?}");
    // And n2 confirming is enough whatever else happens.
    let mut other = primary_of_two("ANY 1 (n1, n2, n3)", OnStandbyLoss::Solo);
    knows(&mut other, t(1), register(2, 1, "n1", &["n2"]));
    other.step(t(2), writes_up_to(&other, 3));
    other.step(t(3), Event::LocalFlushed { lsn: Lsn(3) });
    let e = other.step(t(4), at("n2", 3, &other));
    assert!(e.contains(&Effect::Commit { lsn: Lsn(3) }), "{e:?}");
}

#[test]
fn a_swap_that_went_unanswered_bounds_the_commit_until_an_answer_passes_its_version() {
    // Under ANY 1 the primary asks to take lost n2 out ({n3} left); the
    // call times out, and a read still shows {n2, n3}: the swap may yet
    // land. n2 comes back: its confirmation alone must not acknowledge,
    // as the register may soon hold n3 alone, which lacks the write.
    let mut node = two_writes_on_both("ANY 1 (n1, n2, n3)");
    node.step(t(10), Event::StandbyUnreachable { standby: n("n2") });
    let effects = tick_answering_reads(&mut node, 100, 2100);
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::DropStandby, 2));
    assert_eq!(next.sync_set, [n("n3")].into_iter().collect());
    answer(
        &mut node,
        t(2150),
        purpose,
        ArbiterAnswer::Failed {
            why: CallFailed::Unreachable,
            error: "timed out".into(),
        },
    );
    // n2 answers again before the read: it no longer wants out, so no
    // new swap is asked, but the old one may still land.
    node.step(t(2160), Event::StandbyReachable { standby: n("n2") });
    let n2_at_2 = at("n2", 2, &node);
    node.step(t(2160), n2_at_2);
    let effects = answer(
        &mut node,
        t(2200),
        ArbiterPurpose::Refresh,
        ArbiterAnswer::Read(register(2, 1, "n1", &["n2", "n3"])),
    );
    assert!(
        !asks(&effects)
            .iter()
            .any(|(p, _)| *p == ArbiterPurpose::DropStandby),
        "{effects:?}"
    );
    let write = writes_up_to(&node, 3);
    step_answering(&mut node, t(2400), write);
    step_answering(&mut node, t(2401), Event::LocalFlushed { lsn: Lsn(3) });
    let n2_has_it = at("n2", 3, &node);
    step_answering(&mut node, t(2402), n2_has_it);
    assert_eq!(
        node.commit_lsn(),
        Lsn(2),
        "acknowledged with n2 while the register may come to hold n3 alone"
    );
    let n3_has_it = at("n3", 3, &node);
    step_answering(&mut node, t(2403), n3_has_it);
    assert_eq!(node.commit_lsn(), Lsn(3));
}

/// `primary_of_two` under `ANY 1 (n2, n3)` knowing the register v4 that
/// names it primary of epoch 1 with `sync_set`, two writes committed (alone
/// when the set is empty); then a standby sealed by a candidate tells it
/// of epoch 2, which nobody leads, and it steps down. Returns the node and
/// the effects from then until t=1 s, reads answered.
fn stepped_down_by_a_seal(sync_set: &[&str]) -> (Node, Vec<Effect>) {
    let mut node = primary_of_two("ANY 1 (n2, n3)", OnStandbyLoss::Solo);
    knows(&mut node, t(1), register(4, 1, "n1", sync_set));
    node.step(t(2), writes_up_to(&node, 2));
    node.step(t(3), Event::LocalFlushed { lsn: Lsn(2) });
    node.step(t(4), at("n2", 2, &node));
    node.step(t(4), at("n3", 2, &node));
    assert_eq!(node.commit_lsn(), Lsn(2));
    // Both standbys fall silent; the arbiter refuses the swap that would
    // put them back into the sync set.
    for s in ["n2", "n3"] {
        node.step(t(5), Event::StandbyUnreachable { standby: n(s) });
    }
    assert_eq!(node.arbiter_asking(), Some(ArbiterPurpose::AddStandby));
    let refused = ArbiterAnswer::Failed {
        why: CallFailed::Refused,
        error: "refused".into(),
    };
    answer(&mut node, t(6), ArbiterPurpose::AddStandby, refused);
    let mut effects = node.step(
        t(10),
        Event::HigherEpoch {
            epoch: Epoch(2),
            leader: None,
        },
    );
    assert_ne!(node.role(), RoleKind::Primary, "{effects:?}");
    assert_eq!((node.epoch(), node.leader()), (Epoch(2), None));
    effects.extend(tick_answering_reads(&mut node, 100, 1000));
    (node, effects)
}

/// n1 (of n1, n2, n3 under `ANY 1 (n2, n3)`, with an arbiter) started at
/// epoch 2 with no leader (a seal stepped it down before it stopped), its
/// log ending at `tail`.
fn restarted_after_a_seal(tail: LogEnd) -> Node {
    let cfg = Config {
        sync_standbys: Some("ANY 1 (n2, n3)".parse().unwrap()),
        ..with_n3(with_arbiter(cfg()))
    };
    let sealed = WalMeta {
        epoch: Epoch(2),
        leader: None,
        ..WalMeta::default()
    };
    let requests = RequestIndex::new(cfg.max_request_ids);
    let (node, _) = Node::new(cfg, sealed, tail, tail.lsn, tail.lsn, requests, t(0));
    node
}

/// Whether `effects` ask for a reclaim swap.
fn reclaims(effects: &[Effect]) -> bool {
    asks(effects)
        .iter()
        .any(|(purpose, _)| *purpose == ArbiterPurpose::Reclaim)
}

#[test]
fn a_primary_stepped_down_by_a_failed_candidacy_leads_again_when_no_standby_may_promote() {
    // It had gone solo (the register's sync set is empty): no standby may
    // promote from that register, and only its log holds every write
    // acknowledged in epoch 1. It takes epoch 3 back through the arbiter.
    let (mut node, effects) = stepped_down_by_a_seal(&[]);
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::Reclaim, 4));
    assert_eq!(
        (next.epoch, next.primary.clone()),
        (Epoch(3), Some(n("n1")))
    );
    assert!(next.sync_set.is_empty(), "{next}");

    let effects = answer(&mut node, t(20), purpose, swapped_at(next, 5));
    assert!(
        effects.contains(&Effect::PersistMeta {
            epoch: Epoch(3),
            leader: Some(n("n1")),
            confirmed: true,
        }),
        "{effects:?}"
    );
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!((node.epoch(), node.leader()), (Epoch(3), Some(&n("n1"))));
    // It writes again, alone until a standby rejoins (the sync set is empty).
    node.step(t(21), writes_up_to(&node, 3));
    let effects = node.step(t(22), Event::LocalFlushed { lsn: Lsn(3) });
    assert!(
        effects.contains(&Effect::Commit { lsn: Lsn(3) }),
        "{effects:?}"
    );
}

#[test]
fn a_stepped_down_primary_leaves_the_epoch_to_the_sync_set_or_without_its_log() {
    // A standby in the sync set may still promote (and holds what was
    // acknowledged with it): the old primary waits.
    let (mut node, effects) = stepped_down_by_a_seal(&["n2"]);
    let mut effects = effects;
    effects.extend(tick_answering_reads(&mut node, 100, 3000));
    assert!(!reclaims(&effects), "{effects:?}");

    // Started at epoch 2 with no leader and an empty log (its directory
    // was wiped after it led epoch 1): the register naming it is no
    // evidence that its log holds epoch 1's writes.
    let start = |tail: LogEnd| {
        let mut node = restarted_after_a_seal(tail);
        let mut effects = knows(&mut node, t(1), register(4, 1, "n1", &[]));
        effects.extend(tick_answering_reads(&mut node, 100, 3000));
        effects
    };
    let wiped = start(LogEnd {
        epoch: Epoch::ZERO,
        lsn: Lsn::ZERO,
    });
    assert!(!reclaims(&wiped), "{wiped:?}");

    // Restarted with its log ending in epoch 1 (it led it): it reclaims.
    let restarted = start(LogEnd {
        epoch: Epoch(1),
        lsn: Lsn(2),
    });
    assert!(reclaims(&restarted), "{restarted:?}");
}

/// `stepped_down_by_a_seal(&[])`, its reclaim swap unanswered at t=1001
/// ms (it may have taken effect).
fn reclaim_unanswered() -> Node {
    let (mut node, _) = stepped_down_by_a_seal(&[]);
    assert_eq!(node.arbiter_asking(), Some(ArbiterPurpose::Reclaim));
    let lost = super::arbiter::unreachable();
    answer(&mut node, t(1001), ArbiterPurpose::Reclaim, lost);
    node
}

/// After `reclaim_unanswered()` the witness answers every read with no register (it
/// lost its file). Returns the effects for 5 s.
fn witness_wiped_after_step_down() -> Vec<Effect> {
    let mut node = reclaim_unanswered();
    let wiped = ArbiterAnswer::Read(Register::default());
    tick_answering_with(&mut node, 1100, 6000, wiped)
}

#[test]
fn a_stepped_down_primary_does_not_recreate_a_lost_register() {
    // A promotion may have gone through the register since this node last
    // read it (a forced one, say): what it remembers proves nothing, so it
    // waits for an operator instead of re-creating the register.
    let effects = witness_wiped_after_step_down();
    assert!(!reclaims(&effects), "{effects:?}");
    assert!(
        !asks(&effects)
            .iter()
            .any(|(_, call)| matches!(call, ArbiterCall::Swap { .. })),
        "{effects:?}"
    );
}

#[test]
fn a_restarted_old_primary_whose_failover_clock_ran_out_still_takes_the_cluster_back() {
    // Restarted as a standby (epoch 2, no leader, its log ending in epoch
    // 1), with the arbiter down at first: its failover clock runs out (the
    // silent primary is itself) before the register is read. That refused
    // failover must not hold the reclaim back once the arbiter answers.
    let mut node = restarted_after_a_seal(LogEnd {
        epoch: Epoch(1),
        lsn: Lsn(2),
    });
    first_read(&mut node, t(1), super::arbiter::unreachable());
    let effects = tick_answering_with(&mut node, 100, 2900, super::arbiter::unreachable());
    assert!(
        !reclaims(&effects),
        "the arbiter never answered: {effects:?}"
    );
    let known = ArbiterAnswer::Read(register(4, 1, "n1", &[]));
    let effects = tick_answering_with(&mut node, 3000, 6000, known);
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::Reclaim, 4));
    answer(&mut node, t(6100), purpose, swapped_at(next, 5));
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!(node.epoch(), Epoch(3));
}

#[test]
fn a_reclaim_whose_answer_was_lost_is_taken_when_the_node_adopted_its_epoch_meanwhile() {
    // The swap to epoch 3 took effect, its answer was lost, and a peer
    // told the node of epoch 3 (nobody leads it, as far as it knows): the
    // register naming it primary of 3 is its own reclaim's doing.
    let mut node = reclaim_unanswered();
    node.step(
        t(1002),
        Event::HigherEpoch {
            epoch: Epoch(3),
            leader: None,
        },
    );
    assert_ne!(node.role(), RoleKind::Primary);
    let mut landed = register(5, 3, "n1", &[]);
    landed.members = ["n1", "n2", "n3"].into_iter().map(n).collect();
    tick_answering_with(&mut node, 1100, 3000, ArbiterAnswer::Read(landed));
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!((node.epoch(), node.leader()), (Epoch(3), Some(&n("n1"))));
}

/// Ticks every 100 ms from `from` to `to`, answering each read of the
/// register with `with`.
fn tick_answering_with(node: &mut Node, from: u64, to: u64, with: ArbiterAnswer) -> Vec<Effect> {
    let mut effects = Vec::new();
    for now in (from..=to).step_by(100) {
        let step = node.step(t(now), Event::Tick);
        if asks(&step).contains(&(ArbiterPurpose::Refresh, ArbiterCall::Read)) {
            effects.extend(answer(node, t(now), ArbiterPurpose::Refresh, with.clone()));
        }
        effects.extend(step);
    }
    effects
}

#[test]
fn a_reclaim_that_lands_after_a_later_one_was_asked_still_brings_a_primary() {
    // The first reclaim (to epoch 3) goes unanswered; seals move the node
    // to epoch 4; it lands late. The register then names the node primary
    // of epoch 3, which nobody led: the node takes the cluster back from it.
    let mut node = reclaim_unanswered();
    for epoch in [3, 4] {
        node.step(
            t(1002),
            Event::HigherEpoch {
                epoch: Epoch(epoch),
                leader: None,
            },
        );
    }
    let mut landed = register(5, 3, "n1", &[]);
    landed.members = ["n1", "n2", "n3"].into_iter().map(n).collect();
    let effects = tick_answering_with(&mut node, 1100, 3000, ArbiterAnswer::Read(landed));
    let (purpose, expected, next) = the_swap(&effects);
    assert_eq!((purpose, expected), (ArbiterPurpose::Reclaim, 5));
    assert_eq!(
        (next.epoch, next.primary.clone()),
        (Epoch(5), Some(n("n1")))
    );
    answer(&mut node, t(3100), purpose, swapped_at(next, 6));
    assert_eq!(node.role(), RoleKind::Primary);
    assert_eq!(node.epoch(), Epoch(5));
}

#[test]
fn an_operators_promotion_asked_during_a_reclaim_is_answered_when_it_lands() {
    let (mut node, effects) = stepped_down_by_a_seal(&[]);
    let (purpose, _, next) = the_swap(&effects);
    node.step(t(1001), super::arbiter::promote(true));
    let effects = answer(&mut node, t(1002), purpose, swapped_at(next, 5));
    assert_eq!(node.role(), RoleKind::Primary);
    assert!(
        effects.contains(&Effect::ReplyPromote(Ok(Epoch(3)))),
        "{effects:?}"
    );
}
