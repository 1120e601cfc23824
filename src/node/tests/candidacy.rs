//! A standby's failover under `ANY 1` over two standbys: it hears the
//! other's final position before its swap, and fetches what it lacks.

use super::arbiter::{
    asks, register, step_answering, swapped_at, tick_answering_reads, with_arbiter,
};
use super::*;
use crate::arbiter::Register;
use crate::config::PeerAddress;
use crate::node::LogEnd;

pub(super) fn n(id: &str) -> NodeId {
    NodeId::from(id)
}

/// Standby n1 of primary n2 at epoch 1 (log at 10, told it is in sync at
/// t=100) with n3 the other standby, under `ANY 1 (n1, n2, n3)`, knowing
/// the register (v3) with both standbys in its sync set.
fn candidate() -> Node {
    candidate_with(candidate_config())
}

/// `candidate()` with `cfg`.
fn candidate_with(cfg: Config) -> Node {
    let mut node = standby_in_contact(cfg, SyncState::Sync, t(100));
    // The primary's heartbeat names this node's rule: the rule decides.
    node.step(t(100), heartbeat_naming("ANY 1 (n1, n2, n3)"));
    super::arbiter::knows(&mut node, t(100), register(3, 1, "n2", &["n1", "n3"]));
    node
}

/// n1's configuration in `candidate()`.
pub(super) fn candidate_config() -> Config {
    let cfg = Config {
        more_peers: vec![PeerAddress {
            id: n("n3"),
            addr: "n3:7001".into(),
        }],
        sync_standbys: Some("ANY 1 (n1, n2, n3)".parse().unwrap()),
        ..with_arbiter(cfg())
    };
    cfg.validate().unwrap();
    cfg
}

/// A fence of reason `Candidate` from `candidate` for `epoch`, whose log
/// ends where the candidate's own does (epoch 1, LSN 10).
fn seal(epoch: u64, candidate: &str) -> Event {
    seal_from(epoch, candidate, Some(end(1, 10)))
}

/// A seal from a candidate whose log ends at `candidate_end`, to a node
/// whose log ends at epoch 1, LSN 10.
fn seal_from(epoch: u64, candidate: &str, candidate_end: Option<LogEnd>) -> Event {
    Event::Sealed {
        epoch: Epoch(epoch),
        candidate: n(candidate),
        candidate_end,
        mine: end(1, 10),
    }
}

fn end(epoch: u64, lsn: u64) -> LogEnd {
    LogEnd {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
    }
}

/// Whether the node asked the others for their positions at `epoch`
/// (`None`: at any epoch).
fn seals(effects: &[Effect], epoch: Option<u64>) -> bool {
    effects.iter().any(|e| {
        matches!(e, Effect::SealStandbys { epoch: at, to } if epoch.is_none_or(|x| *at == Epoch(x)) && to == &vec![n("n3")])
    })
}

/// n3 answers the seal: its log ends at `lsn` (epoch 1), ours at 10.
fn n3_answers(lsn: u64) -> Event {
    Event::SealAnswered {
        from: n("n3"),
        epoch: Epoch(2),
        answer: Ok(end(1, lsn)),
        mine: end(1, 10),
    }
}

/// Whether the node refused a seal.
fn refuses(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::ReplyFence(FenceOutcome::Refused { .. })))
}

/// Whether the node gave its final position (its log ends at 10).
fn answers_at_10(effects: &[Effect]) -> bool {
    effects.contains(&Effect::ReplyFence(FenceOutcome::Fenced {
        last_lsn: Lsn(10),
    }))
}

pub(super) fn swaps(effects: &[Effect]) -> bool {
    asks(effects)
        .iter()
        .any(|(_, call)| matches!(call, ArbiterCall::Swap { .. }))
}

fn records(from: u64, to: u64) -> Vec<Record> {
    (from..=to)
        .map(|l| Record {
            lsn: Lsn(l),
            epoch: Epoch(1),
            request_id: None,
            payload: Bytes::from_static(b"w"),
        })
        .collect()
}

/// `candidate()` once its silence check ran: it asked n3 for its
/// position.
fn sealing() -> Node {
    sealing_with(candidate_config())
}

/// `sealing()` with `cfg`.
fn sealing_with(cfg: Config) -> Node {
    let mut node = candidate_with(cfg);
    let effects = tick_answering_reads(&mut node, 200, 1300);
    assert!(seals(&effects, Some(2)), "{effects:?}");
    assert!(!swaps(&effects), "swapped before hearing n3: {effects:?}");
    node
}

#[test]
fn a_candidate_swaps_only_after_the_other_standbys_final_position_and_fetches_first_when_behind() {
    let mut node = sealing();
    // No answer: it never swaps, and says why.
    let effects = tick_answering_reads(&mut node, 1400, 4000);
    assert!(!swaps(&effects), "{effects:?}");
    let held = node.arbiter_status().unwrap().held_back.unwrap_or_default();
    assert!(held.contains("heard from 1 of the 2"), "{held}");

    // n3 is ahead: fetch from it before anything else.
    let effects = node.step(t(4050), n3_answers(14));
    assert!(
        effects.contains(&Effect::FetchWal {
            from: n("n3"),
            epoch: Epoch(2),
            after: Lsn(10),
            up_to: Lsn(14),
        }),
        "{effects:?}"
    );
    let effects = tick_answering_reads(&mut node, 4100, 4500);
    assert!(!swaps(&effects), "swapped before the fetch: {effects:?}");

    // The fetched records continue its log: appended, then the swap from
    // the version it judged by.
    let mut effects = node.step(
        t(4550),
        Event::WalFetched {
            from: n("n3"),
            fetched: Ok((records(11, 14), true)),
        },
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Append { records, .. } if records.len() == 4)),
        "{effects:?}"
    );
    assert_eq!(node.last_lsn(), Lsn(14));
    // Not before what it fetched is on its disk: a crash after the swap
    // must not lose it.
    effects.extend(tick_answering_reads(&mut node, 4600, 4800));
    assert!(
        !swaps(&effects),
        "swapped before the fetched records were flushed: {effects:?}"
    );
    let mut effects = node.step(t(4850), Event::LocalFlushed { lsn: Lsn(14) });
    effects.extend(tick_answering_reads(&mut node, 4900, 5100));
    let (purpose, expected, next) = super::arbiter::the_swap(&effects);
    assert_eq!(purpose, ArbiterPurpose::Promote(Promotion::Failover));
    assert_eq!(expected, 3);
    assert_eq!(next.epoch, Epoch(2));
    assert_eq!(next.primary, Some(n("n1")));
}

#[test]
fn a_candidate_that_cannot_hold_the_other_standbys_records_never_swaps() {
    // n3's log ends in the same epoch further on, but what it sends does
    // not continue ours: no swap, whatever else happens.
    let mut node = sealing();
    node.step(t(1400), n3_answers(14));
    let effects = node.step(
        t(1450),
        Event::WalFetched {
            from: n("n3"),
            fetched: Ok((records(11, 14), false)),
        },
    );
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::Append { .. })),
        "{effects:?}"
    );
    let effects = tick_answering_reads(&mut node, 1500, 5000);
    assert!(!swaps(&effects), "{effects:?}");
    assert_eq!(node.last_lsn(), Lsn(10));
    let held = node.arbiter_status().unwrap().held_back.unwrap_or_default();
    assert!(held.contains("diverges"), "{held}");

    // A position only as far as ours: nothing to fetch, it may swap.
    let mut level = sealing();
    let mut effects = level.step(t(1400), n3_answers(10));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::FetchWal { .. })),
        "{effects:?}"
    );
    effects.extend(tick_answering_reads(&mut level, 1500, 1700));
    assert!(swaps(&effects), "{effects:?}");
}

/// n3 refuses the fetch: it trimmed record 11 from its WAL.
fn n3_trimmed_what_n1_lacks() -> Event {
    Event::WalFetched {
        from: n("n3"),
        fetched: Err(FetchFailed::Trimmed(
            "record 11 is no longer in this node's WAL (it keeps 12 onwards)".into(),
        )),
    }
}

/// Whether the node asked to fetch records from n3.
fn fetches(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::FetchWal { from, .. } if *from == n("n3")))
}

#[test]
fn a_candidate_whose_missing_records_the_other_standby_trimmed_leaves_the_failover_to_it() {
    // A failed fetch is asked again: the other standby may answer next
    // time.
    let mut node = sealing();
    assert!(fetches(&node.step(t(1400), n3_answers(14))));
    node.step(
        t(1450),
        Event::WalFetched {
            from: n("n3"),
            fetched: Err(FetchFailed::Other("peer did not answer in time".into())),
        },
    );
    let effects = tick_answering_reads(&mut node, 1500, 2500);
    assert!(
        seals(&effects, Some(2)),
        "a failed fetch asks for the position again: {effects:?}"
    );

    // n3 trimmed the records n1 lacks (its engine made them durable):
    // asking again cannot bring them. n1 stops fetching and stops sealing
    // n3, so n3's own failover clock runs out and it promotes with them.
    let mut node = sealing();
    node.step(t(1400), n3_answers(14));
    node.step(t(1450), n3_trimmed_what_n1_lacks());
    let effects = tick_answering_reads(&mut node, 1500, 5000);
    assert!(!fetches(&effects), "fetched again: {effects:?}");
    assert!(!seals(&effects, None), "sealed n3 again: {effects:?}");
    assert!(!swaps(&effects), "{effects:?}");
    assert_eq!(node.last_lsn(), Lsn(10));
    let held = node.arbiter_status().unwrap().held_back.unwrap_or_default();
    assert!(
        held.contains("no longer keeps them") && held.contains("n3 may promote instead"),
        "{held}"
    );
}

/// Under `ANY 2` over three standbys two positions decide: a standby
/// whose records n1 cannot fetch (trimmed) counts as unanswered, and the
/// two others still decide. What only it holds was never acknowledged
/// (every acknowledged write is on two of the three).
#[test]
fn a_candidate_decides_without_a_standby_it_cannot_fetch_from_when_the_others_suffice() {
    let rule = "ANY 2 (n1, n2, n3, n4)";
    let cfg = Config {
        more_peers: ["n3", "n4"]
            .into_iter()
            .map(|id| PeerAddress {
                id: n(id),
                addr: format!("{id}:7001"),
            })
            .collect(),
        sync_standbys: Some(rule.parse().unwrap()),
        ..with_arbiter(cfg())
    };
    cfg.validate().unwrap();
    let mut node = standby_in_contact(cfg, SyncState::Sync, t(100));
    node.step(t(100), heartbeat_naming(rule));
    super::arbiter::knows(&mut node, t(100), register(3, 1, "n2", &["n1", "n3", "n4"]));
    tick_answering_reads(&mut node, 200, 1300);
    let answer = |from: &str, lsn: u64| Event::SealAnswered {
        from: n(from),
        epoch: Epoch(2),
        answer: Ok(end(1, lsn)),
        mine: end(1, 10),
    };
    // n3 answers first and is ahead: fetch from it, which fails for good.
    assert!(fetches(&node.step(t(1400), answer("n3", 14))));
    node.step(t(1450), n3_trimmed_what_n1_lacks());
    let effects = tick_answering_reads(&mut node, 1500, 1700);
    assert!(!swaps(&effects), "{effects:?}");
    let held = node.arbiter_status().unwrap().held_back.unwrap_or_default();
    assert!(held.contains("not counting: n3"), "{held}");
    // n4's position, as far as ours: n1 and n4 decide.
    let mut effects = node.step(t(1750), answer("n4", 10));
    effects.extend(tick_answering_reads(&mut node, 1800, 2500));
    assert!(!fetches(&effects), "{effects:?}");
    let (purpose, _, next) = super::arbiter::the_swap(&effects);
    assert_eq!(purpose, ArbiterPurpose::Promote(Promotion::Failover));
    assert_eq!(next.primary, Some(n("n1")));
}

#[test]
fn a_sealed_standby_adopts_the_epoch_without_a_leader_and_refuses_the_old_primary() {
    let mut node = candidate();
    // Heard from its primary at t=100: a seal within half of
    // failover_timeout is refused (the primary is alive to it), and
    // nothing changes.
    let effects = step_answering(&mut node, t(400), seal(2, "n3"));
    assert!(refuses(&effects), "{effects:?}");
    assert_eq!(node.epoch(), Epoch(1));
    assert_eq!(node.leader(), Some(&n("n2")));

    let effects = step_answering(&mut node, t(1200), seal(2, "n3"));
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::PersistMeta {
                epoch: Epoch(2),
                leader: None,
                ..
            }
        )),
        "{effects:?}"
    );
    assert!(answers_at_10(&effects), "{effects:?}");
    assert_eq!(node.role(), RoleKind::Standby);
    assert_eq!(node.leader(), None);
    // The old primary's WAL is refused from now on: its position is final.
    let effects = step_answering(
        &mut node,
        t(1250),
        heartbeat(1, "n2", 12, 12, SyncState::Sync),
    );
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::Answer(Err(r)) if r.kind == RefusalKind::StaleEpoch
        )),
        "{effects:?}"
    );
    // Asked again for the same epoch (a lost reply, or a second candidate
    // of the round), it answers again.
    let effects = step_answering(&mut node, t(1300), seal(2, "n3"));
    assert!(answers_at_10(&effects));

    // The candidate never swapped: a whole failover_timeout after the
    // seal this standby tries itself, from the register still at epoch 1,
    // sealing at the epoch after the one it adopted.
    next_round_waits_a_failover_timeout_from(&mut node, 1300);
}

/// A node sealed at `sealed_at` for epoch 2 does not try itself before a
/// whole failover_timeout (1 s), then seals at epoch 3.
fn next_round_waits_a_failover_timeout_from(node: &mut Node, sealed_at: u64) {
    let effects = tick_answering_reads(node, sealed_at + 100, sealed_at + 800);
    assert!(
        !seals(&effects, None),
        "tried before failover_timeout: {effects:?}"
    );
    let effects = tick_answering_reads(node, sealed_at + 900, sealed_at + 1700);
    assert!(seals(&effects, Some(3)), "{effects:?}");
}

#[test]
fn a_cluster_standby_that_never_heard_the_primary_in_this_life_lets_the_register_decide() {
    // n1 restarted (no contact in this process) while the primary is
    // dead: the register's sync set holds it, so it may try once the
    // silence lasted failover_timeout from its first tick.
    let mut node = restarted(candidate_config(), register(3, 1, "n2", &["n1", "n3"]));
    let effects = tick_answering_reads(&mut node, 100, 1000);
    assert!(!seals(&effects, None), "{effects:?}");
    let effects = tick_answering_reads(&mut node, 1100, 1500);
    assert!(seals(&effects, Some(2)), "{effects:?}");
    // Outside the sync set it does not.
    let mut outside = restarted(candidate_config(), register(3, 1, "n2", &["n3"]));
    let effects = tick_answering_reads(&mut outside, 100, 3000);
    assert!(
        !effects.iter().any(|e| matches!(
            e,
            Effect::SealStandbys { .. }
                | Effect::AskArbiter {
                    call: ArbiterCall::Swap { .. },
                    ..
                }
        )),
        "{effects:?}"
    );
}

#[test]
fn of_two_candidates_of_one_round_the_later_by_priority_then_log_then_id_yields() {
    let mut node = sealing();
    // n3 asks n1 for the same epoch: n1 comes first (same priority under
    // ANY, logs as advanced, then the node id) and refuses; so it does
    // against a sender that does not say where its log ends.
    for seal in [seal(2, "n3"), seal_from(2, "n3", None)] {
        let effects = node.step(t(1400), seal);
        assert!(refuses(&effects), "{effects:?}");
        assert_eq!(node.epoch(), Epoch(1));
    }
    // Behind it by a record, n3 is refused again.
    let effects = node.step(t(1400), seal_from(2, "n3", Some(end(1, 9))));
    assert!(refuses(&effects), "{effects:?}");
    // A candidate of a later round (a higher epoch) is answered, and ends
    // this node's own attempt.
    let effects = node.step(t(1450), seal(3, "n3"));
    assert!(answers_at_10(&effects), "{effects:?}");
    assert_eq!(node.epoch(), Epoch(3));
    let effects = tick_answering_reads(&mut node, 1500, 2000);
    assert!(!swaps(&effects), "{effects:?}");

    // A candidate of the same round whose log is ahead comes first (it has
    // nothing to fetch): n1 yields although its id comes first.
    let mut node = sealing();
    let effects = node.step(t(1400), seal_from(2, "n3", Some(end(1, 12))));
    assert!(answers_at_10(&effects), "{effects:?}");
    assert_eq!(node.epoch(), Epoch(2));
    let effects = tick_answering_reads(&mut node, 1500, 2000);
    assert!(!swaps(&effects), "{effects:?}");
}

#[test]
fn a_cluster_standby_whose_primary_has_another_rule_does_not_promote() {
    // The primary commits under ANY 1, this standby believes ANY 2 (every
    // standby confirms each write) and would promote without asking n3:
    // it must not.
    let cfg = Config {
        sync_standbys: None,
        ..candidate_config()
    };
    assert_eq!(cfg.cluster_rule_text(), "ANY 2 (n1, n2, n3)");
    // The order of an ANY rule's names does not matter; FIRST's does.
    let reordered = |rule: &str| {
        Config {
            sync_standbys: Some(rule.parse().unwrap()),
            ..candidate_config()
        }
        .cluster_rule_text()
    };
    assert_eq!(reordered("ANY 1 (n3, n1, n2)"), "ANY 1 (n1, n2, n3)");
    assert_eq!(reordered("FIRST 1 (n3, n1, n2)"), "FIRST 1 (n3, n1, n2)");
    let (mut node, _) = new_node(cfg, meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    node.step(t(100), heartbeat_naming("ANY 1 (n1, n2, n3)"));
    super::arbiter::knows(&mut node, t(100), register(3, 1, "n2", &["n1", "n3"]));
    let effects = tick_answering_reads(&mut node, 200, 3000);
    assert!(!swaps(&effects) && !seals(&effects, None), "{effects:?}");
    assert_eq!(node.role(), RoleKind::Standby);

    // With the primary's rule the same as its own, it promotes.
    let mut same = candidate();
    let effects = tick_answering_reads(&mut same, 200, 1300);
    assert!(seals(&effects, Some(2)), "{effects:?}");
}

/// n2's heartbeat (epoch 1, LSN 10, in sync) naming `rule` as its commit rule.
fn heartbeat_naming(rule: &str) -> Event {
    let mut beat = heartbeat(1, "n2", 10, 10, SyncState::Sync);
    if let Event::HeartbeatReceived { req } = &mut beat {
        req.commit_rule = rule.into();
    }
    beat
}

#[test]
fn a_member_that_never_heard_the_primarys_rule_asks_every_member_of_the_sync_set() {
    // Its own rule (the default: every standby confirms) would let it swap
    // alone; but the dead primary may have run ANY 1 and acknowledged
    // writes that only n3 holds. Restarted, it has heard no rule: it seals
    // every other member first.
    let mut restarted = restarted_under_the_default_rule(register(3, 1, "n2", &["n1", "n3"]));
    let effects = tick_answering_reads(&mut restarted, 100, 1500);
    assert!(seals(&effects, Some(2)), "{effects:?}");
    assert!(!swaps(&effects), "swapped before hearing n3: {effects:?}");
    let mut effects = restarted.step(t(1550), n3_answers(10));
    effects.extend(tick_answering_reads(&mut restarted, 1600, 1800));
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::FetchWal { .. })),
        "{effects:?}"
    );
    assert!(swaps(&effects), "{effects:?}");

    // Once the primary's heartbeat named its own rule, that rule decides:
    // every standby confirmed each write, so it swaps without asking.
    let mut heard = restarted_under_the_default_rule(register(3, 1, "n2", &["n1", "n3"]));
    heard.step(t(100), heartbeat_naming("ANY 2 (n1, n2, n3)"));
    let effects = tick_answering_reads(&mut heard, 200, 1500);
    assert!(!seals(&effects, None), "{effects:?}");
    assert!(swaps(&effects), "{effects:?}");
}

/// A node with `cfg`, restarted (no contact in this life) while its
/// primary n2 of epoch 1 is dead, its log at 10, with the register at `reg`.
fn restarted(cfg: Config, reg: Register) -> Node {
    let (mut node, _) = new_node(cfg, meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    super::arbiter::knows(&mut node, t(10), reg);
    node
}

/// n1 under the default rule (every standby confirms each write),
/// `restarted`: it has heard no rule, so it asks the other members for
/// their positions.
fn restarted_under_the_default_rule(reg: Register) -> Node {
    let cfg = Config {
        sync_standbys: None,
        ..candidate_config()
    };
    restarted(cfg, reg)
}

#[test]
fn under_the_default_rule_two_candidates_of_one_round_do_not_both_yield() {
    // Each node's default rule names only its peers; ranked by it, n1 and
    // n3 would each put the other first and both give way, every round.
    let mut node = restarted_under_the_default_rule(register(3, 1, "n2", &["n1", "n3"]));
    let effects = tick_answering_reads(&mut node, 100, 1500);
    assert!(seals(&effects, Some(2)), "{effects:?}");
    // n3 seals at the same epoch, its log as advanced: n1 comes first by id.
    let effects = node.step(t(1550), seal(2, "n3"));
    assert!(refuses(&effects), "{effects:?}");
    assert_eq!(node.epoch(), Epoch(1));
    // n1 seals at the same epoch to n3, whose log is as advanced: n3
    // comes after n1 and answers (seen from n3: the same ranking).
    let cfg3 = Config {
        node_id: n("n3"),
        peer_id: n("n2"),
        more_peers: vec![PeerAddress {
            id: n("n1"),
            addr: "n1:7001".into(),
        }],
        sync_standbys: None,
        ..candidate_config()
    };
    let mut n3 = restarted(cfg3, register(3, 1, "n2", &["n1", "n3"]));
    tick_answering_reads(&mut n3, 100, 1500);
    let effects = n3.step(t(1550), seal(2, "n1"));
    assert!(answers_at_10(&effects), "{effects:?}");
}

#[test]
fn a_rule_heard_from_an_earlier_primary_does_not_decide_a_failover_from_a_later_one() {
    // n1 heard n2 name its rule at epoch 1; the register says n3 leads
    // epoch 2, whose heartbeat n1 never heard (it may follow n3 by its WAL
    // alone). n3 may run another rule: n1 asks n2 before its swap.
    let cfg = Config {
        sync_standbys: None,
        ..candidate_config()
    };
    let (mut node, _) = new_node(cfg, meta(1, "n2"), Lsn(10), Lsn(10), Lsn(10), t(0));
    node.step(t(5), heartbeat_naming("ANY 2 (n1, n2, n3)"));
    let mut later = register(5, 2, "n3", &["n1", "n2"]);
    later.members.insert(n("n3"));
    super::arbiter::knows(&mut node, t(10), later);
    assert_eq!(node.epoch(), Epoch(2));
    let effects = tick_answering_reads(&mut node, 100, 2000);
    let asks_n2 = effects
        .iter()
        .any(|e| matches!(e, Effect::SealStandbys { epoch: Epoch(3), to } if to == &vec![n("n2")]));
    assert!(
        asks_n2,
        "{effects:?} {:?} {:?} {:?}",
        node.arbiter_status(),
        node.role(),
        node.leader()
    );
    assert!(!swaps(&effects), "swapped before hearing n2: {effects:?}");
}

#[test]
fn a_restarted_member_that_is_sealed_waits_a_whole_failover_timeout_too() {
    // No contact in this life: it counts the silence from its first tick
    // (t=100). A candidate's seal at t=700 restarts that count, so it does
    // not start its own round at t=1100 and seal the candidate mid-fetch.
    let mut node = restarted(candidate_config(), register(3, 1, "n2", &["n1", "n3"]));
    tick_answering_reads(&mut node, 100, 600);
    let effects = step_answering(&mut node, t(700), seal(2, "n3"));
    assert!(answers_at_10(&effects), "{effects:?}");
    next_round_waits_a_failover_timeout_from(&mut node, 700);
}

#[test]
fn a_rule_heard_long_ago_does_not_decide_a_failover() {
    // n1 heard n2 name its rule at t=100, then nothing (cut off, with its
    // failover paused meanwhile). n2 may have restarted with another rule
    // at the same epoch since: past two failover_timeouts, n1 asks n3
    // before its swap instead of trusting what it heard.
    let mut node = restarted_under_the_default_rule(register(3, 1, "n2", &["n1", "n3"]));
    node.step(t(100), heartbeat_naming("ANY 2 (n1, n2, n3)"));
    node.step(t(150), Event::FailoverPaused { paused: true });
    tick_answering_reads(&mut node, 200, 2400);
    let mut effects = step_answering(&mut node, t(2450), Event::FailoverPaused { paused: false });
    effects.extend(tick_answering_reads(&mut node, 2500, 3000));
    assert!(seals(&effects, Some(2)), "{effects:?}");
    assert!(!swaps(&effects), "swapped before hearing n3: {effects:?}");

    // Resumed within two failover_timeouts, it trusts the rule it heard.
    let mut node = restarted_under_the_default_rule(register(3, 1, "n2", &["n1", "n3"]));
    node.step(t(100), heartbeat_naming("ANY 2 (n1, n2, n3)"));
    node.step(t(150), Event::FailoverPaused { paused: true });
    tick_answering_reads(&mut node, 200, 1800);
    let mut effects = step_answering(&mut node, t(1850), Event::FailoverPaused { paused: false });
    effects.extend(tick_answering_reads(&mut node, 1900, 2000));
    assert!(!seals(&effects, None), "{effects:?}");
    assert!(swaps(&effects), "{effects:?}");
}

/// `sealing()` once n3 answered as far as it and its tick sent the
/// promotion swap, which is in flight.
fn swapping() -> (Node, Register) {
    swapping_with(candidate_config())
}

/// `swapping()` with `cfg`.
fn swapping_with(cfg: Config) -> (Node, Register) {
    let mut node = sealing_with(cfg);
    let mut effects = node.step(t(1400), n3_answers(10));
    effects.extend(tick_answering_reads(&mut node, 1500, 2000));
    let (purpose, expected, next) = super::arbiter::the_swap(&effects);
    assert_eq!(
        (purpose, expected, next.epoch),
        (ArbiterPurpose::Promote(Promotion::Failover), 3, Epoch(2))
    );
    assert_eq!(node.arbiter_asking(), Some(purpose));
    (node, next)
}

/// A seal of a candidate that comes first arriving while this node's own
/// swap is in flight: yielding would leave the register naming this node
/// primary of an epoch nobody leads (the other's swap then fails against
/// it), for good. The swap's answer decides first.
#[test]
fn a_seal_arriving_while_the_candidates_own_swap_is_in_flight_is_refused() {
    let (mut node, next) = swapping();
    let effects = node.step(t(2050), seal_from(2, "n3", Some(end(1, 12))));
    assert!(refuses(&effects), "{effects:?}");
    assert_eq!(node.epoch(), Epoch(1));
    let purpose = ArbiterPurpose::Promote(Promotion::Failover);
    takes_epoch_2_when_answered(&mut node, purpose, ArbiterAnswer::Swapped(applied(next)));
}

/// The swap's target as the register holds it once it took effect.
fn applied(mut next: Register) -> Register {
    next.version = 4;
    next
}

/// Answered `answer` to its call `purpose`, the node promotes at epoch 2.
fn takes_epoch_2_when_answered(node: &mut Node, purpose: ArbiterPurpose, answer: ArbiterAnswer) {
    super::arbiter::answer(node, t(2200), purpose, answer);
    assert_eq!(node.epoch(), Epoch(2));
    assert!(
        matches!(node.role(), RoleKind::Promoting | RoleKind::Primary),
        "{:?}",
        node.role()
    );
}

/// The same race when the swap's answer was lost: the seal is answered,
/// and the register read later names this node primary of the epoch it
/// asked for and adopted from the seal. It takes it.
#[test]
fn a_candidate_whose_swap_answer_was_lost_takes_the_epoch_the_register_names_it_primary_of() {
    let (mut node, next) = swapping();
    super::arbiter::answer(
        &mut node,
        t(2050),
        ArbiterPurpose::Promote(Promotion::Failover),
        ArbiterAnswer::Failed {
            why: CallFailed::Unreachable,
            error: "timed out".into(),
        },
    );
    let effects = node.step(t(2100), seal_from(2, "n3", Some(end(1, 12))));
    assert!(answers_at_10(&effects), "{effects:?}");
    assert_eq!((node.epoch(), node.role()), (Epoch(2), RoleKind::Standby));
    node.step(t(2200), Event::Tick);
    let read = ArbiterAnswer::Read(applied(next));
    takes_epoch_2_when_answered(&mut node, ArbiterPurpose::Refresh, read);
}

/// `swapping()` once its swap landed but, before the answer, a rejoin
/// request from the old primary, which had begun a switchover to n3, named
/// n3 leader of epoch 2 and the node followed it; then the answer came.
/// n3's own swap fails against the register, which names this node, so
/// n3 never leads epoch 2. Returns the node and its effects since.
fn granted_but_following_n3() -> (Node, Vec<Effect>) {
    granted_but_following_n3_with(candidate_config())
}

/// `granted_but_following_n3()` with `cfg`.
fn granted_but_following_n3_with(cfg: Config) -> (Node, Vec<Effect>) {
    let (mut node, next) = swapping_with(cfg);
    let rejoining = Header {
        leader_id: Some(n("n3")),
        ..header(2, "n2")
    };
    node.step(t(2050), Event::HistoryRequested { header: rejoining });
    assert_eq!((node.epoch(), node.leader()), (Epoch(2), Some(&n("n3"))));
    let purpose = ArbiterPurpose::Promote(Promotion::Failover);
    let effects = super::arbiter::answer(&mut node, t(2100), purpose, swapped_at(next, 4));
    assert_eq!(
        node.role(),
        RoleKind::Standby,
        "took the epoch n3 follows: {effects:?}"
    );
    (node, effects)
}

/// Nobody would ever lead epoch 2: once n3 has been silent for
/// `failover_timeout`, the node takes epoch 3 through the register (not
/// epoch 2 itself, which n3 could lead by a promotion forced without the
/// arbiter) and fences n3 first, as a failover does.
#[test]
fn a_candidate_made_to_follow_another_node_in_the_epoch_its_swap_won_takes_the_next_one() {
    takes_epoch_3_and_fences_n3(granted_but_following_n3());
}

/// The same under `remote-write`, where a standby that never heard its
/// leader in this role otherwise only asks its peers for a newer epoch
/// instead of counting the silence.
#[test]
fn under_remote_write_too_a_candidate_made_to_follow_another_node_takes_the_next_epoch() {
    let cfg = Config {
        commit_mode: CommitMode::RemoteWrite,
        ..candidate_config()
    };
    takes_epoch_3_and_fences_n3(granted_but_following_n3_with(cfg));
}

/// Ticking on from `granted_but_following_n3()`, the node takes epoch 3
/// through a reclaim swap and fences n3.
fn takes_epoch_3_and_fences_n3((mut node, mut effects): (Node, Vec<Effect>)) {
    effects.extend(tick_answering_reads(&mut node, 2200, 4000));
    let (purpose, expected, next) = super::arbiter::the_swap(&effects);
    assert_eq!(
        (purpose, expected, next.epoch, next.primary.as_ref()),
        (ArbiterPurpose::Reclaim, 4, Epoch(3), Some(&n("n1")))
    );
    let effects = super::arbiter::answer(&mut node, t(4100), purpose, swapped_at(next, 5));
    assert_eq!((node.epoch(), node.role()), (Epoch(3), RoleKind::Promoting));
    assert!(
        effects.iter().any(|e| matches!(
            e,
            Effect::SendFence { epoch: Epoch(3), to: Some(to), .. } if *to == n("n3")
        )),
        "{effects:?}"
    );
}

/// As above, but n3 speaks as the primary of epoch 2 (forced while the
/// arbiter did not answer): the node follows it and swaps nothing; nor
/// once n3 went silent after its records reached this node's log, which
/// is then no longer the one its swap was asked with.
#[test]
fn a_granted_candidate_following_a_node_that_leads_the_epoch_or_gave_it_records_swaps_nothing() {
    let (mut node, mut effects) = granted_but_following_n3();
    for at in (2200..=4000).step_by(200) {
        effects.extend(step_answering(
            &mut node,
            t(at),
            heartbeat(2, "n3", 10, 10, SyncState::Sync),
        ));
        effects.extend(tick_answering_reads(&mut node, at + 100, at + 100));
    }
    assert!(!swaps(&effects), "{effects:?}");

    let (mut node, mut effects) = granted_but_following_n3();
    let record = Record {
        lsn: Lsn(11),
        epoch: Epoch(2),
        request_id: None,
        payload: Bytes::from_static(b"w"),
    };
    let batch = Event::BatchReceived {
        batch: WalBatch {
            header: header(2, "n3"),
            ..batch((10, 1), vec![record], 11, 1)
        },
        local_at_prev: Some(Epoch(1)),
        local: vec![],
    };
    effects.extend(node.step(t(2200), batch));
    assert_eq!(node.last_lsn(), Lsn(11));
    effects.extend(tick_answering_reads(&mut node, 2300, 5000));
    assert!(!swaps(&effects), "{effects:?}");
}

/// An operator's forced promotion whose swap landed after a peer made the
/// node follow n3 in that epoch: the operator was told it failed, and a
/// forced promotion skipped the candidacy's check, so the node does not
/// take the next epoch by itself; the operator decides.
#[test]
fn a_forced_promotion_made_to_follow_another_node_leaves_the_next_epoch_to_the_operator() {
    let mut node = candidate();
    let mut effects = node.step(t(200), super::arbiter::promote(true));
    effects.extend(tick_answering_reads(&mut node, 300, 300));
    let (purpose, expected, next) = super::arbiter::the_swap(&effects);
    assert_eq!(
        (purpose, expected, next.epoch),
        (ArbiterPurpose::Promote(Promotion::Forced), 3, Epoch(2))
    );
    let rejoining = Header {
        leader_id: Some(n("n3")),
        ..header(2, "n2")
    };
    let told = node.step(t(350), Event::HistoryRequested { header: rejoining });
    assert!(
        told.iter()
            .any(|e| matches!(e, Effect::ReplyPromote(Err(_)))),
        "{told:?}"
    );
    let mut effects = super::arbiter::answer(&mut node, t(400), purpose, swapped_at(next, 4));
    effects.extend(tick_answering_reads(&mut node, 500, 3000));
    assert!(!swaps(&effects), "{effects:?}");
    assert_eq!((node.epoch(), node.role()), (Epoch(2), RoleKind::Standby));
}

/// Following n3 in epoch 2 as above, but the register names n3 primary of
/// it (n3's swap won): the node follows n3 and swaps nothing.
#[test]
fn a_candidate_whose_swap_lost_to_the_node_it_follows_swaps_nothing_more() {
    let (mut node, _) = swapping();
    let rejoining = Header {
        leader_id: Some(n("n3")),
        ..header(2, "n2")
    };
    node.step(t(2050), Event::HistoryRequested { header: rejoining });
    let mut theirs = register(4, 2, "n3", &[]);
    theirs.members = ["n1", "n2", "n3"].into_iter().map(n).collect();
    let purpose = ArbiterPurpose::Promote(Promotion::Failover);
    let mut effects =
        super::arbiter::answer(&mut node, t(2100), purpose, ArbiterAnswer::Conflict(theirs));
    effects.extend(tick_answering_reads(&mut node, 2200, 4000));
    assert!(!swaps(&effects), "{effects:?}");
    assert_eq!((node.epoch(), node.leader()), (Epoch(2), Some(&n("n3"))));
}

/// n3 refuses the seal as stale: it is at epoch 2, following `leader`.
fn n3_refuses_following(leader: &str) -> Event {
    Event::SealAnswered {
        from: n("n3"),
        epoch: Epoch(2),
        answer: Err(SealRefused {
            why: format!("peer is at epoch 2 (leader {leader})"),
            newer: Some((Epoch(2), Some(n(leader)))),
        }),
        mine: end(1, 10),
    }
}

/// The old primary began a switchover to this node and stepped down,
/// telling n3 of epoch 2 led by this node, but the switchover was given up
/// (the arbiter did not answer its swap). The node's failover then seals
/// n3, which refuses, naming this node the leader of epoch 2: the node
/// takes it as the switchover it was handed, through the arbiter, instead
/// of sealing n3 for ever.
#[test]
fn a_candidate_told_by_a_sealed_standby_that_it_leads_the_epoch_takes_it_as_a_switchover() {
    let mut node = sealing();
    let mut effects = node.step(t(1400), n3_refuses_following("n1"));
    let held = node.arbiter_status().unwrap().held_back.unwrap_or_default();
    assert!(!held.contains("heard from"), "{held}");
    effects.extend(tick_answering_reads(&mut node, 1500, 2000));
    let (purpose, expected, next) = super::arbiter::the_swap(&effects);
    assert_eq!(
        (purpose, expected, next.epoch, next.primary.as_ref()),
        (
            ArbiterPurpose::Promote(Promotion::Switchover),
            3,
            Epoch(2),
            Some(&n("n1"))
        )
    );
    super::arbiter::answer(&mut node, t(2100), purpose, swapped_at(next, 4));
    assert_eq!((node.epoch(), node.role()), (Epoch(2), RoleKind::Primary));
}

/// A sealed standby that follows another node in the epoch the candidate
/// seals for: the candidacy can never take it; the node follows that
/// epoch as any newer one, and swaps nothing.
#[test]
fn a_candidate_told_by_a_sealed_standby_of_a_newer_epoch_follows_it() {
    let mut node = sealing();
    let mut effects = node.step(t(1400), n3_refuses_following("n2"));
    effects.extend(tick_answering_reads(&mut node, 1500, 2000));
    assert!(!swaps(&effects), "{effects:?}");
    assert_eq!((node.epoch(), node.leader()), (Epoch(2), Some(&n("n2"))));
    assert!(!seals(&effects, None), "{effects:?}");
}

/// A late answer to an earlier round's seal says nothing of this round's:
/// the standby may have taken records from a primary of that epoch since.
#[test]
fn an_answer_to_an_earlier_rounds_seal_is_not_counted() {
    let mut node = sealing();
    let late = Event::SealAnswered {
        from: n("n3"),
        epoch: Epoch(1),
        answer: Ok(end(1, 14)),
        mine: end(1, 10),
    };
    let mut effects = node.step(t(1400), late);
    effects.extend(tick_answering_reads(&mut node, 1450, 2000));
    assert!(!fetches(&effects), "{effects:?}");
    assert!(!swaps(&effects), "{effects:?}");
    let held = node.arbiter_status().unwrap().held_back.unwrap_or_default();
    assert!(held.contains("heard from 1 of the 2"), "{held}");
    // This round's answer counts.
    assert!(fetches(&node.step(t(2050), n3_answers(14))));
}
