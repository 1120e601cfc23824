//! Whether a standby may promote, and which standby should try first.
//!
//! A candidate must hold every acknowledged write. Each is on k' of the
//! standbys that count (`commit.rs`), so of any |counted| − k' + 1 of them
//! at least one holds it: the candidate hears from that many (itself
//! included), and if one is more advanced it fetches from the most
//! advanced first.
//!
//! The positions it hears must be final: a standby answers only after it
//! stopped taking the old primary's WAL (it adopted the new epoch, as a
//! fence does, and reports its log's end as the fence's reply does).
//! Otherwise the old primary could still acknowledge a write with k'
//! standbys after they answered, and the candidate would lack it. Having
//! heard from |counted| − k' + 1, at most k' − 1 still follow the old
//! primary, too few for it to acknowledge anything more.

use super::rule::CommitRule;
use crate::types::{Epoch, Lsn, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The end of a log: its last record's epoch and LSN. Logs compare by
/// epoch first, then LSN, as Raft compares terms: a log whose last record
/// is of a newer epoch is ahead of any log ending in an older one, however
/// long. Of two logs that are both prefixes of one primary's log (every
/// member of a sync set follows its primary from a checked point) this is
/// the same as comparing LSNs; where logs diverged, an older epoch's longer
/// tail is one no later primary wrote, so it holds nothing acknowledged
/// that the newer log lacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogEnd {
    /// The epoch of the last record (`Epoch::ZERO` for an empty log).
    pub epoch: Epoch,
    /// The last record.
    pub lsn: Lsn,
}

/// Why a standby may not promote by a failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ineligible {
    /// It is not in the register's sync set: the primary may have
    /// acknowledged writes without it.
    NotInSyncSet,
    /// The commit rule does not name it (priority 0): it never counted,
    /// so nothing says it holds anything.
    NotNamed,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ineligible::NotInSyncSet => {
                "this standby is not in the arbiter's sync set: the primary may have acknowledged writes it lacks"
            }
            Ineligible::NotNamed => {
                "the commit rule does not name this standby (priority 0): it never counted for a commit"
            }
        })
    }
}

/// What a candidate does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PromotionDecision {
    /// It may not promote by a failover.
    NotEligible {
        /// Why.
        why: Ineligible,
    },
    /// It has heard from `have` standbys that count (itself included) and
    /// must hear from `need`.
    NeedPositions {
        /// Heard from, itself included.
        have: usize,
        /// |counted| − k' + 1.
        need: usize,
    },
    /// `from` is ahead: copy its log up to `up_to` (rewinding our own tail
    /// where it diverges, as a rejoin does), then decide again.
    FetchFirst {
        /// The most advanced standby that answered.
        from: NodeId,
        /// Its log's end.
        up_to: LogEnd,
    },
    /// It holds every acknowledged write: it may take the next epoch.
    Promote,
}

/// How many standbys that count a candidate must hear from, itself
/// included: |counted| − k' + 1, so that at least one of them holds each
/// acknowledged write.
pub(crate) fn positions_needed(rule: &CommitRule, sync_set: &BTreeSet<NodeId>) -> usize {
    rule.counted(sync_set).count() - rule.effective_count(sync_set) + 1
}

/// What candidate `me`, whose log ends at `mine`, does next, given the
/// register's `sync_set` and the log ends of the standbys that answered
/// (`answers`; answers from standbys that do not count, and one from `me`,
/// are ignored). Each answer must come from a standby that no longer takes
/// the old primary's WAL (see the module).
pub(crate) fn decide_promotion(
    rule: &CommitRule,
    sync_set: &BTreeSet<NodeId>,
    me: &NodeId,
    mine: LogEnd,
    answers: &BTreeMap<NodeId, LogEnd>,
) -> PromotionDecision {
    if rule.priority(me) == 0 {
        return PromotionDecision::NotEligible {
            why: Ineligible::NotNamed,
        };
    }
    if !sync_set.contains(me) {
        return PromotionDecision::NotEligible {
            why: Ineligible::NotInSyncSet,
        };
    }
    // In the rule's order, so that ties go to the standby of higher
    // priority, deterministically.
    let heard: Vec<(&NodeId, LogEnd)> = rule
        .counted(sync_set)
        .filter(|n| *n != me)
        .filter_map(|n| answers.get(n).map(|end| (n, *end)))
        .collect();
    let (have, need) = (heard.len() + 1, positions_needed(rule, sync_set));
    if have < need {
        return PromotionDecision::NeedPositions { have, need };
    }
    let ahead = heard
        .into_iter()
        .filter(|(_, end)| *end > mine)
        .reduce(|best, next| if next.1 > best.1 { next } else { best });
    match ahead {
        Some((from, up_to)) => PromotionDecision::FetchFirst {
            from: from.clone(),
            up_to,
        },
        None => PromotionDecision::Promote,
    }
}

/// The standbys that may promote, best first: those in `sync_set` the rule
/// names and whose log end is known (`ends`), by candidate priority first
/// (FIRST's order; with ANY every named standby has the same), then the
/// most advanced (it has the least to fetch), then by name. This is the
/// operator's preference before speed: a preferred standby that is behind
/// still wins, and fetches what it lacks first (`decide_promotion`). Any of
/// them may promote safely; the order only picks one, so that two standbys
/// do not both try at once.
pub(crate) fn rank_candidates(
    rule: &CommitRule,
    sync_set: &BTreeSet<NodeId>,
    ends: &BTreeMap<NodeId, LogEnd>,
) -> Vec<NodeId> {
    let mut ranked: Vec<(&NodeId, LogEnd, usize)> = rule
        .counted(sync_set)
        .filter_map(|n| ends.get(n).map(|end| (n, *end, rule.priority(n))))
        .collect();
    ranked.sort_by(|a, b| a.2.cmp(&b.2).then(b.1.cmp(&a.1)).then(a.0.cmp(b.0)));
    ranked.into_iter().map(|(n, _, _)| n.clone()).collect()
}
