//! Whether a candidate may promote, and the order candidates try in.

use super::super::{
    Ineligible, LogEnd, PromotionDecision, decide_promotion, positions_needed, rank_candidates,
};
use super::{rule, set};
use crate::types::{Epoch, Lsn, NodeId};
use std::collections::BTreeMap;

fn end(epoch: u64, lsn: u64) -> LogEnd {
    LogEnd {
        epoch: Epoch(epoch),
        lsn: Lsn(lsn),
    }
}

fn answers(ends: &[(&str, LogEnd)]) -> BTreeMap<NodeId, LogEnd> {
    ends.iter().map(|(n, e)| (NodeId::from(*n), *e)).collect()
}

fn decide(
    rule_text: &str,
    sync_set: &[&str],
    me: &str,
    mine: LogEnd,
    heard: &[(&str, LogEnd)],
) -> PromotionDecision {
    decide_promotion(
        &rule(rule_text),
        &set(sync_set),
        &NodeId::from(me),
        mine,
        &answers(heard),
    )
}

#[test]
fn log_ends_compare_by_epoch_first() {
    assert!(end(2, 5) > end(1, 100));
    assert!(end(2, 6) > end(2, 5));
    assert_eq!(LogEnd::default(), end(0, 0));
}

#[test]
fn a_standby_the_rule_does_not_name_never_promotes() {
    assert_eq!(
        decide("ANY 1 (a, b)", &["a", "b", "x"], "x", end(1, 9), &[]),
        PromotionDecision::NotEligible {
            why: Ineligible::NotNamed
        }
    );
}

#[test]
fn a_standby_out_of_the_sync_set_never_promotes() {
    let d = decide("ANY 1 (a, b)", &["b"], "a", end(1, 9), &[("b", end(1, 3))]);
    assert_eq!(
        d,
        PromotionDecision::NotEligible {
            why: Ineligible::NotInSyncSet
        }
    );
    assert_eq!(
        Ineligible::NotInSyncSet.to_string(),
        "this standby is not in the arbiter's sync set: the primary may have acknowledged writes it lacks"
    );
    assert_eq!(
        Ineligible::NotNamed.to_string(),
        "the commit rule does not name this standby (priority 0): it never counted for a commit"
    );
}

#[test]
fn a_candidate_hears_from_all_but_k_minus_one_of_the_standbys_that_count() {
    let abc = set(&["a", "b", "c"]);
    assert_eq!(positions_needed(&rule("ANY 1 (a, b, c)"), &abc), 3);
    assert_eq!(positions_needed(&rule("ANY 2 (a, b, c)"), &abc), 2);
    assert_eq!(positions_needed(&rule("ANY 3 (a, b, c)"), &abc), 1);
    assert_eq!(positions_needed(&rule("FIRST 2 (a, b, c)"), &abc), 2);
    // k' = min(k, 2) = 2 with only a and b counting.
    assert_eq!(
        positions_needed(&rule("ANY 3 (a, b, c)"), &set(&["a", "b"])),
        1
    );
    assert_eq!(
        positions_needed(&rule("ANY 1 (a, b, c)"), &set(&["a", "b", "x"])),
        2
    );
}

#[test]
fn too_few_answers_mean_waiting_for_more() {
    assert_eq!(
        decide(
            "ANY 1 (a, b, c)",
            &["a", "b", "c"],
            "a",
            end(1, 9),
            &[("b", end(1, 3))]
        ),
        PromotionDecision::NeedPositions { have: 2, need: 3 }
    );
    // Answers from standbys that do not count, or from itself, add nothing.
    assert_eq!(
        decide(
            "ANY 1 (a, b, c)",
            &["a", "b", "c", "x"],
            "a",
            end(1, 9),
            &[("a", end(1, 9)), ("x", end(1, 3)), ("d", end(1, 3))]
        ),
        PromotionDecision::NeedPositions { have: 1, need: 3 }
    );
}

#[test]
fn a_candidate_behind_another_fetches_from_the_most_advanced_first() {
    let d = decide(
        "ANY 2 (a, b, c, d)",
        &["a", "b", "c", "d"],
        "a",
        end(1, 10),
        &[("b", end(1, 12)), ("c", end(1, 15)), ("d", end(1, 11))],
    );
    assert_eq!(
        d,
        PromotionDecision::FetchFirst {
            from: NodeId::from("c"),
            up_to: end(1, 15)
        }
    );
}

#[test]
fn of_two_equally_advanced_it_fetches_from_the_higher_priority() {
    let d = decide(
        "FIRST 1 (a, c, b)",
        &["a", "b", "c"],
        "a",
        end(1, 10),
        &[("b", end(1, 15)), ("c", end(1, 15))],
    );
    assert_eq!(
        d,
        PromotionDecision::FetchFirst {
            from: NodeId::from("c"),
            up_to: end(1, 15)
        }
    );
}

#[test]
fn a_candidate_as_advanced_as_every_answer_promotes() {
    assert_eq!(
        decide(
            "ANY 2 (a, b, c)",
            &["a", "b", "c"],
            "a",
            end(1, 15),
            &[("b", end(1, 15))]
        ),
        PromotionDecision::Promote
    );
    // Extra answers beyond the need are used too.
    assert_eq!(
        decide(
            "ANY 2 (a, b, c)",
            &["a", "b", "c"],
            "a",
            end(1, 15),
            &[("b", end(1, 15)), ("c", end(1, 16))]
        ),
        PromotionDecision::FetchFirst {
            from: NodeId::from("c"),
            up_to: end(1, 16)
        }
    );
}

#[test]
fn a_newer_epoch_is_ahead_of_a_longer_log_of_an_older_one() {
    // `b` still ends in an epoch-1 tail no epoch-2 primary wrote.
    assert_eq!(
        decide(
            "ANY 1 (a, b)",
            &["a", "b"],
            "a",
            end(2, 60),
            &[("b", end(1, 100))]
        ),
        PromotionDecision::Promote
    );
    assert_eq!(
        decide(
            "ANY 1 (a, b)",
            &["a", "b"],
            "a",
            end(1, 100),
            &[("b", end(2, 60))]
        ),
        PromotionDecision::FetchFirst {
            from: NodeId::from("b"),
            up_to: end(2, 60)
        }
    );
}

#[test]
fn the_pairs_standby_in_the_sync_set_promotes_alone() {
    let pair = crate::node::quorum::CommitRule::pair(&NodeId::from("b"));
    let me = NodeId::from("b");
    assert_eq!(
        decide_promotion(&pair, &set(&["b"]), &me, end(1, 5), &BTreeMap::new()),
        PromotionDecision::Promote
    );
    assert_eq!(
        decide_promotion(&pair, &set(&[]), &me, end(1, 5), &BTreeMap::new()),
        PromotionDecision::NotEligible {
            why: Ineligible::NotInSyncSet
        }
    );
}

#[test]
fn candidates_rank_by_priority_then_progress_then_name() {
    let ends = answers(&[
        ("a", end(1, 10)),
        ("b", end(1, 12)),
        ("c", end(1, 12)),
        ("d", end(2, 3)),
        ("x", end(9, 99)),
    ]);
    let names = |v: Vec<NodeId>| v.into_iter().map(|n| n.0).collect::<Vec<_>>();
    // FIRST's order decides, whoever is ahead: c before d's newer epoch.
    assert_eq!(
        names(rank_candidates(
            &rule("FIRST 1 (c, d, b, a)"),
            &set(&["a", "b", "c", "d", "x"]),
            &ends
        )),
        ["c", "d", "b", "a"]
    );
    // With ANY every named standby has priority 1: the most advanced
    // first (d's newer epoch), then b and c tie and the name decides.
    assert_eq!(
        names(rank_candidates(
            &rule("ANY 1 (c, d, b, a)"),
            &set(&["a", "b", "c", "d"]),
            &ends
        )),
        ["d", "b", "c", "a"]
    );
    assert_eq!(
        names(rank_candidates(
            &rule("ANY 1 (c, b, a)"),
            &set(&["a", "b", "c"]),
            &ends
        )),
        ["b", "c", "a"]
    );
    // Out of the set, unnamed (x), or with no known end (e): not ranked.
    assert_eq!(
        names(rank_candidates(
            &rule("ANY 1 (a, b, e)"),
            &set(&["a", "e", "x"]),
            &ends
        )),
        ["a"]
    );
}
