//! Properties over random clusters and histories: what the primary
//! acknowledges is what the rule allows, every acknowledged write stays on
//! k' standbys that count whatever the sync set goes through, and a
//! candidate that promotes holds every acknowledged write whichever
//! standbys answered it.

use super::super::{
    CommitRule, LogEnd, Method, PromotionDecision, StandbyLsns, decide_promotion, positions_needed,
    rank_candidates,
};
use crate::types::{Epoch, Lsn, NodeId};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// The most standbys a generated cluster has.
const MAX_STANDBYS: usize = 6;

fn standby(i: usize) -> NodeId {
    NodeId(format!("s{i}"))
}

/// A cluster of `n` standbys `s0..`: a rule naming some of them in some
/// order, and the register's sync set (which may hold standbys the rule
/// does not name).
#[derive(Clone, Debug)]
struct Cluster {
    n: usize,
    rule: CommitRule,
    sync_set: BTreeSet<NodeId>,
}

fn any_cluster() -> impl Strategy<Value = Cluster> {
    (1..=MAX_STANDBYS)
        .prop_flat_map(|n| {
            let named = prop::sample::subsequence((0..n).collect::<Vec<_>>(), 1..=n).prop_shuffle();
            (Just(n), named, any::<bool>(), any::<u64>(), any::<u64>())
        })
        .prop_map(|(n, named, any, k_seed, set_mask)| {
            let method = if any { Method::Any } else { Method::First };
            let count = 1 + (k_seed as usize % named.len());
            let rule = CommitRule::new(method, count, named.into_iter().map(standby).collect())
                .expect("distinct names, 1 <= k <= len");
            Cluster {
                n,
                rule,
                sync_set: members(n, set_mask),
            }
        })
}

/// The standbys among `s0..s{n-1}` whose bit is set in `mask`.
fn members(n: usize, mask: u64) -> BTreeSet<NodeId> {
    (0..n)
        .filter(|i| mask & (1 << i) != 0)
        .map(standby)
        .collect()
}

/// Where each epoch of the primary's log begins: epoch 1 at LSN 1, then
/// one more at each boundary. Every log in the cluster is a prefix of it,
/// except that a standby whose prefix ends just before a boundary may
/// also hold a stale tail of `stale[standby]` records of the epoch before
/// it (written by a primary that lost, never acknowledged): its log end
/// is then further than its prefix, in an older epoch.
#[derive(Clone, Debug)]
struct History {
    boundaries: Vec<u64>,
    stale: BTreeMap<NodeId, u64>,
}

impl History {
    /// Where the log of `standby` ends, its prefix at `positions`, with its
    /// stale tail if it has one.
    fn end_of(&self, standby: &NodeId, positions: &StandbyLsns) -> LogEnd {
        let prefix = positions.get(standby).copied().unwrap_or(Lsn::ZERO);
        let next = prefix.next();
        match self.stale.get(standby) {
            Some(&extra) if extra > 0 && self.boundaries.contains(&next.0) => LogEnd {
                epoch: Epoch(self.end_at(next).epoch.0 - 1),
                lsn: Lsn(prefix.0 + extra),
            },
            _ => self.end_at(prefix),
        }
    }

    fn end_at(&self, lsn: Lsn) -> LogEnd {
        let epoch = if lsn == Lsn::ZERO {
            Epoch::ZERO
        } else {
            Epoch(1 + self.boundaries.iter().filter(|b| **b <= lsn.0).count() as u64)
        };
        LogEnd { epoch, lsn }
    }
}

/// Runs candidate `me`'s promotion with the answers of the standbys in
/// `answering` (true log ends for those that count; for the others,
/// far-ahead ends of logs no primary of this epoch wrote, which must be
/// ignored), fetching whenever told to. Checks each decision and returns
/// the prefix of the true history the candidate's log holds when it
/// promotes (its own, or that of the standby it fetched from last), or
/// `None` when it needs more answers.
fn promote(
    cluster: &Cluster,
    sync_set: &BTreeSet<NodeId>,
    history: &History,
    positions: &StandbyLsns,
    me: &NodeId,
    answering: u64,
) -> Result<Option<Lsn>, TestCaseError> {
    let counted: Vec<&NodeId> = cluster.rule.counted(sync_set).collect();
    let answers: BTreeMap<NodeId, LogEnd> = members(cluster.n, answering)
        .into_iter()
        .map(|m| {
            let end = if counted.contains(&&m) {
                history.end_of(&m, positions)
            } else {
                LogEnd {
                    epoch: Epoch(99),
                    lsn: Lsn(999),
                }
            };
            (m, end)
        })
        .collect();
    let mut mine = history.end_of(me, positions);
    let mut holder = me.clone();
    for _ in 0..=MAX_STANDBYS {
        match decide_promotion(&cluster.rule, sync_set, me, mine, &answers) {
            PromotionDecision::Promote => {
                return Ok(Some(positions.get(&holder).copied().unwrap_or(Lsn::ZERO)));
            }
            PromotionDecision::FetchFirst { from, up_to } => {
                prop_assert!(counted.contains(&&from) && from != *me, "fetch from {from}");
                prop_assert!(up_to > mine && answers.get(&from) == Some(&up_to));
                mine = up_to;
                holder = from;
            }
            PromotionDecision::NeedPositions { have, need } => {
                prop_assert_eq!(need, positions_needed(&cluster.rule, sync_set));
                prop_assert!(have < need);
                let heard = counted
                    .iter()
                    .filter(|n| **n != me && answers.contains_key(**n))
                    .count();
                prop_assert_eq!(have, heard + 1);
                return Ok(None);
            }
            PromotionDecision::NotEligible { why } => {
                prop_assert!(false, "{me} counts, yet: {why}");
            }
        }
    }
    prop_assert!(false, "{me} kept fetching");
    unreachable!()
}

/// Every candidate that counts in `sync_set`, answered by the standbys in
/// `answering` (and, once, by all): one that promotes holds every write up
/// to `acknowledged`; with every answer in, none waits for more.
fn check_promotions(
    cluster: &Cluster,
    sync_set: &BTreeSet<NodeId>,
    history: &History,
    positions: &StandbyLsns,
    acknowledged: Lsn,
    answering: u64,
) -> Result<(), TestCaseError> {
    let candidates: Vec<NodeId> = cluster.rule.counted(sync_set).cloned().collect();
    for me in &candidates {
        for mask in [answering, u64::MAX] {
            let promoted = promote(cluster, sync_set, history, positions, me, mask)?;
            if let Some(held) = promoted {
                prop_assert!(
                    held >= acknowledged,
                    "{me} promoted holding {held} of the history, without the writes acknowledged up to {acknowledged} (rule {}, sync set {sync_set:?}, positions {positions:?}, stale tails {:?}, answering {mask:#b})",
                    cluster.rule,
                    history.stale
                );
            } else {
                prop_assert!(mask != u64::MAX, "{me} heard from everyone yet waits");
            }
        }
    }
    Ok(())
}

/// The rule's meaning, said directly: may `lsn` be acknowledged?
fn rule_allows(
    rule: &CommitRule,
    sync_set: &BTreeSet<NodeId>,
    positions: &StandbyLsns,
    own: Lsn,
    lsn: Lsn,
) -> bool {
    let k = rule.effective_count(sync_set);
    let holds = |n: &NodeId| positions.get(n).copied().unwrap_or(Lsn::ZERO) >= lsn;
    let counted: Vec<&NodeId> = rule.counted(sync_set).collect();
    lsn <= own
        && match rule.method() {
            Method::Any => counted.iter().filter(|n| holds(n)).count() >= k,
            Method::First => counted.iter().take(k).all(|n| holds(n)),
        }
}

/// How many standbys that count hold every write up to `acknowledged`, and
/// how many must.
fn holders(
    rule: &CommitRule,
    sync_set: &BTreeSet<NodeId>,
    positions: &StandbyLsns,
    acknowledged: Lsn,
) -> (usize, usize) {
    let held = rule
        .counted(sync_set)
        .filter(|n| positions.get(*n).copied().unwrap_or(Lsn::ZERO) >= acknowledged)
        .count();
    (held, rule.effective_count(sync_set))
}

/// One thing that happens to a primary and its standbys.
#[derive(Clone, Debug)]
enum Step {
    /// The primary appends and flushes this many records.
    Write(u64),
    /// A standby receives up to this many more of them.
    Progress(usize, u64),
    /// The primary asks the arbiter to take a standby out.
    Remove(usize),
    /// The primary asks the arbiter to let a standby in.
    Add(usize),
    /// The arbiter's answer to the change in flight arrives.
    Land,
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1..4u64).prop_map(Step::Write),
        5 => (0..MAX_STANDBYS, 1..6u64).prop_map(|(i, d)| Step::Progress(i, d)),
        2 => (0..MAX_STANDBYS).prop_map(Step::Remove),
        2 => (0..MAX_STANDBYS).prop_map(Step::Add),
        2 => Just(Step::Land),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The primary acknowledges exactly the highest LSN the rule allows.
    #[test]
    fn the_primary_acknowledges_the_highest_lsn_the_rule_allows(
        cluster in any_cluster(),
        raw in prop::collection::vec(prop::option::of(0u64..20), MAX_STANDBYS),
        own in 0u64..20,
    ) {
        let positions: StandbyLsns = raw
            .iter()
            .take(cluster.n)
            .enumerate()
            .filter_map(|(i, p)| p.map(|p| (standby(i), Lsn(p))))
            .collect();
        let (rule, set, own) = (&cluster.rule, &cluster.sync_set, Lsn(own));
        let acked = rule.acknowledgeable(set, &positions, own);
        prop_assert!(rule_allows(rule, set, &positions, own, acked), "{acked} not allowed");
        prop_assert!(
            !rule_allows(rule, set, &positions, own, acked.next()),
            "{} allowed too",
            acked.next()
        );
    }

    /// Positions consistent with the rule having acknowledged up to some
    /// LSN, across epochs: whichever standbys answer, a candidate that
    /// promotes holds every acknowledged write.
    #[test]
    fn a_candidate_that_promotes_holds_every_acknowledged_write(
        cluster in any_cluster(),
        end in 0u64..40,
        boundaries in prop::collection::vec(1u64..40, 0..4),
        raw in prop::collection::vec(0u64..40, MAX_STANDBYS),
        tails in prop::collection::vec(0u64..6, MAX_STANDBYS),
        answering in any::<u64>(),
    ) {
        let own = Lsn(end);
        let positions: StandbyLsns = raw
            .iter()
            .take(cluster.n)
            .enumerate()
            .map(|(i, p)| (standby(i), Lsn(*p).min(own)))
            .collect();
        // A standby whose prefix ends just before a boundary may hold a
        // stale tail; make that common by moving some prefixes there.
        let positions: StandbyLsns = positions
            .into_iter()
            .enumerate()
            .map(|(i, (n, p))| match boundaries.get(i % boundaries.len().max(1)) {
                Some(&b) if tails[i] % 2 == 1 && b >= 1 && Lsn(b - 1) <= own => (n, Lsn(b - 1)),
                _ => (n, p),
            })
            .collect();
        let stale = (0..cluster.n).map(|i| (standby(i), tails[i])).collect();
        let history = History { boundaries, stale };
        let acked = cluster.rule.acknowledgeable(&cluster.sync_set, &positions, own);
        let (held, need) = holders(&cluster.rule, &cluster.sync_set, &positions, acked);
        prop_assert!(held >= need);
        check_promotions(&cluster, &cluster.sync_set, &history, &positions, acked, answering)?;

        // Every standby that counts is ranked, and no other; the best has
        // the best priority and, among those, nothing to fetch; hearing
        // from everyone it promotes, after at most one fetch.
        let ends: BTreeMap<NodeId, LogEnd> = positions
            .keys()
            .map(|n| (n.clone(), history.end_of(n, &positions)))
            .collect();
        let ranked = rank_candidates(&cluster.rule, &cluster.sync_set, &ends);
        let counted: BTreeSet<NodeId> = cluster.rule.counted(&cluster.sync_set).cloned().collect();
        prop_assert_eq!(ranked.iter().cloned().collect::<BTreeSet<_>>(), counted.clone());
        if let Some(best) = ranked.first() {
            let top = counted.iter().map(|n| cluster.rule.priority(n)).min().unwrap();
            prop_assert_eq!(cluster.rule.priority(best), top);
            for n in counted.iter().filter(|n| cluster.rule.priority(n) == top) {
                prop_assert!(ends[best] >= ends[n], "{best} ranked before the more advanced {n}");
            }
            let mine = match decide_promotion(&cluster.rule, &cluster.sync_set, best, ends[best], &ends) {
                PromotionDecision::Promote => ends[best],
                PromotionDecision::FetchFirst { up_to, .. } => up_to,
                other => return Err(TestCaseError::fail(format!("{best} hearing from everyone: {other:?}"))),
            };
            prop_assert_eq!(
                decide_promotion(&cluster.rule, &cluster.sync_set, best, mine, &ends),
                PromotionDecision::Promote
            );
        }
    }

    /// Writes, acknowledgments, standbys leaving and joining the sync set
    /// (a change in flight at a time): after every step each acknowledged
    /// write is on k' standbys that count of whichever sync set the
    /// register may hold, and a candidate of either set that promotes
    /// holds it.
    #[test]
    fn sync_set_changes_never_leave_an_acknowledged_write_behind(
        cluster in any_cluster(),
        steps in prop::collection::vec(any_step(), 1..40),
        masks in prop::collection::vec(any::<u64>(), 1..8),
    ) {
        let rule = &cluster.rule;
        let history = History { boundaries: Vec::new(), stale: BTreeMap::new() };
        let mut own = Lsn::ZERO;
        let mut positions = StandbyLsns::new();
        let mut set = cluster.sync_set.clone();
        let mut changing: Option<BTreeSet<NodeId>> = None;
        let mut acked = Lsn::ZERO;
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Step::Write(n) => own = Lsn(own.0 + n),
                Step::Progress(s, d) => {
                    let at = positions.entry(standby(s % cluster.n)).or_default();
                    *at = Lsn(at.0 + d).min(own);
                }
                Step::Remove(s) => {
                    let s = standby(s % cluster.n);
                    if changing.is_none()
                        && set.contains(&s)
                        && rule.may_remove(&set, &s, &positions, acked).is_ok()
                    {
                        let mut to = set.clone();
                        to.remove(&s);
                        changing = Some(to);
                    }
                }
                Step::Add(s) => {
                    let s = standby(s % cluster.n);
                    let at = positions.get(&s).copied().unwrap_or(Lsn::ZERO);
                    if changing.is_none()
                        && !set.contains(&s)
                        && rule.may_join(&s, at, acked).is_ok()
                    {
                        let mut to = set.clone();
                        to.insert(s);
                        changing = Some(to);
                    }
                }
                Step::Land => {
                    if let Some(to) = changing.take() {
                        set = to;
                    }
                }
            }
            let allowed = match &changing {
                Some(to) => rule.acknowledgeable_while_changing(&set, to, &positions, own),
                None => rule.acknowledgeable(&set, &positions, own),
            };
            acked = acked.max(allowed);
            for register in std::iter::once(&set).chain(&changing) {
                let (held, need) = holders(rule, register, &positions, acked);
                prop_assert!(
                    held >= need,
                    "step {i}: writes up to {acked} on {held} standbys that count in {register:?}, {need} needed (rule {rule}, positions {positions:?})"
                );
                check_promotions(&cluster, register, &history, &positions, acked, masks[i % masks.len()])?;
            }
        }
    }
}
