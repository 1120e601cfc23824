//! What the primary may acknowledge, and when the sync set may change.

use super::{lsns, rule, set};
use crate::types::{Lsn, NodeId};

const OWN: Lsn = Lsn(100);

#[test]
fn any_k_acknowledges_the_kth_highest_position() {
    let positions = lsns(&[("a", 30), ("b", 50), ("c", 40)]);
    let all = set(&["a", "b", "c"]);
    assert_eq!(
        rule("ANY 1 (a, b, c)").acknowledgeable(&all, &positions, OWN),
        Lsn(50)
    );
    assert_eq!(
        rule("ANY 2 (a, b, c)").acknowledgeable(&all, &positions, OWN),
        Lsn(40)
    );
    assert_eq!(
        rule("ANY 3 (a, b, c)").acknowledgeable(&all, &positions, OWN),
        Lsn(30)
    );
}

#[test]
fn first_k_acknowledges_the_lowest_of_the_first_k_that_count() {
    let positions = lsns(&[("a", 30), ("b", 50), ("c", 40)]);
    let r = rule("FIRST 2 (c, b, a)");
    assert_eq!(
        r.acknowledgeable(&set(&["a", "b", "c"]), &positions, OWN),
        Lsn(40)
    );
    // `b` out of the sync set: the next in priority, `a`, takes its place.
    assert_eq!(
        r.acknowledgeable(&set(&["a", "c"]), &positions, OWN),
        Lsn(30)
    );
    // A low-priority standby that is ahead does not help FIRST.
    assert_eq!(
        rule("FIRST 1 (a, b)").acknowledgeable(&set(&["a", "b"]), &positions, OWN),
        Lsn(30)
    );
}

#[test]
fn a_standby_without_a_position_holds_nothing() {
    let positions = lsns(&[("a", 30)]);
    let r = rule("ANY 2 (a, b)");
    assert_eq!(
        r.acknowledgeable(&set(&["a", "b"]), &positions, OWN),
        Lsn::ZERO
    );
}

#[test]
fn only_sync_set_members_the_rule_names_count() {
    // `x` is in the sync set but unnamed; `b` is named but out of the set.
    let positions = lsns(&[("a", 30), ("b", 90), ("x", 80)]);
    let r = rule("ANY 1 (a, b)");
    assert_eq!(
        r.acknowledgeable(&set(&["a", "x"]), &positions, OWN),
        Lsn(30)
    );
    assert_eq!(r.effective_count(&set(&["a", "x"])), 1);
}

#[test]
fn fewer_standbys_counting_than_k_lowers_k() {
    let positions = lsns(&[("a", 30), ("b", 50), ("c", 40)]);
    let r = rule("ANY 3 (a, b, c)");
    assert_eq!(r.effective_count(&set(&["b", "c"])), 2);
    assert_eq!(
        r.acknowledgeable(&set(&["b", "c"]), &positions, OWN),
        Lsn(40)
    );
    assert_eq!(r.acknowledgeable(&set(&["b"]), &positions, OWN), Lsn(50));
}

#[test]
fn with_no_standby_counting_the_primary_acknowledges_alone() {
    let positions = lsns(&[("a", 30)]);
    let r = rule("ANY 1 (a)");
    assert_eq!(r.effective_count(&set(&[])), 0);
    assert_eq!(r.acknowledgeable(&set(&[]), &positions, OWN), OWN);
    assert_eq!(r.acknowledgeable(&set(&["x"]), &positions, OWN), OWN);
}

#[test]
fn never_above_the_primarys_own_flushed_lsn() {
    let positions = lsns(&[("a", 130), ("b", 150)]);
    assert_eq!(
        rule("ANY 2 (a, b)").acknowledgeable(&set(&["a", "b"]), &positions, OWN),
        OWN
    );
}

#[test]
fn the_pair_waits_for_its_standby_while_the_set_holds_it() {
    let pair = crate::node::quorum::CommitRule::pair(&NodeId::from("b"));
    let positions = lsns(&[("b", 40)]);
    assert_eq!(pair.acknowledgeable(&set(&["b"]), &positions, OWN), Lsn(40));
    assert_eq!(pair.acknowledgeable(&set(&[]), &positions, OWN), OWN);
}

#[test]
fn while_the_set_changes_both_sets_must_agree() {
    let positions = lsns(&[("a", 30), ("b", 50), ("c", 40)]);
    let r = rule("ANY 2 (a, b, c)");
    // Adding `a` (behind) to {b, c}: the new set waits for 40, the old one
    // for 40 too; taking `b` out: {a, c} allows 30 only.
    let (bc, abc, ac) = (set(&["b", "c"]), set(&["a", "b", "c"]), set(&["a", "c"]));
    assert_eq!(
        r.acknowledgeable_while_changing(&bc, &abc, &positions, OWN),
        Lsn(40)
    );
    assert_eq!(
        r.acknowledgeable_while_changing(&abc, &ac, &positions, OWN),
        Lsn(30)
    );
    assert_eq!(
        r.acknowledgeable_while_changing(&ac, &abc, &positions, OWN),
        Lsn(30)
    );
}

#[test]
fn a_standby_leaves_only_if_k_of_the_rest_hold_every_acknowledged_write() {
    let positions = lsns(&[("a", 50), ("b", 50), ("c", 20)]);
    let r = rule("ANY 2 (a, b, c)");
    let all = set(&["a", "b", "c"]);
    let (a, c) = (NodeId::from("a"), NodeId::from("c"));
    // Acknowledged up to 50 on a and b: taking c out leaves both.
    assert_eq!(r.may_remove(&all, &c, &positions, Lsn(50)), Ok(()));
    // Taking a out leaves b and c, only b holds 50, and k' stays 2.
    assert_eq!(
        r.may_remove(&all, &a, &positions, Lsn(50)),
        Err("taking a out of the sync set would leave acknowledged writes (up to 50) on 1 of the standbys that count, and the rule ANY 2 (a, b, c) needs 2; behind: c (at 20): wait until they catch up, or take them out first".into())
    );
    // Up to 20 only, c holds it too.
    assert_eq!(r.may_remove(&all, &a, &positions, Lsn(20)), Ok(()));
    // The laggard first, then a: k' drops to 1 and b holds everything.
    assert_eq!(
        r.may_remove(&set(&["a", "b"]), &a, &positions, Lsn(50)),
        Ok(())
    );
}

#[test]
fn a_standby_without_a_known_position_does_not_hold_anything() {
    let positions = lsns(&[("a", 50)]);
    let r = rule("ANY 1 (a, b)");
    let a = NodeId::from("a");
    assert!(
        r.may_remove(&set(&["a", "b"]), &a, &positions, Lsn(1))
            .is_err()
    );
    assert_eq!(
        r.may_remove(&set(&["a", "b"]), &a, &positions, Lsn::ZERO),
        Ok(())
    );
}

#[test]
fn the_last_standby_that_counts_may_always_leave() {
    // Nobody left in the set can promote; the primary goes on alone.
    let r = rule("ANY 1 (a)");
    let a = NodeId::from("a");
    assert_eq!(r.may_remove(&set(&["a"]), &a, &lsns(&[]), Lsn(99)), Ok(()));
    // An unnamed member left behind does not count.
    assert_eq!(
        r.may_remove(&set(&["a", "x"]), &a, &lsns(&[]), Lsn(99)),
        Ok(())
    );
}

#[test]
fn a_standby_enters_only_if_named_and_holding_every_acknowledged_write() {
    let r = rule("FIRST 1 (a, b)");
    let (a, x) = (NodeId::from("a"), NodeId::from("x"));
    assert_eq!(r.may_join(&a, Lsn(50), Lsn(50)), Ok(()));
    assert_eq!(
        r.may_join(&a, Lsn(49), Lsn(50)),
        Err("a holds writes up to 49 but writes up to 50 were acknowledged: it enters the sync set once it has caught up".into())
    );
    assert_eq!(
        r.may_join(&x, Lsn(50), Lsn(50)),
        Err("x is not named by the commit rule FIRST 1 (a, b): it would never count, so it stays out of the sync set".into())
    );
}
