//! What a primary may acknowledge under its commit rule, and when a
//! standby may leave or join the sync set without losing an acknowledged
//! write.
//!
//! The invariant every function here keeps: each acknowledged write is
//! held by at least k' standbys that count (`CommitRule::counted`), where
//! k' is `CommitRule::effective_count` of the register's sync set. A
//! candidate that hears from any |counted| − k' + 1 of them therefore hears
//! from one that holds it (`promotion.rs`).

use super::rule::{CommitRule, Method};
use crate::types::{Lsn, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Where each standby's log is, at the commit mode's point (written,
/// flushed or applied), as the primary last heard. A standby missing from
/// the map holds nothing as far as the primary knows. Each position is a
/// lower bound: a standby keeps what it reported (see the module of
/// `quorum` for what `remote-write` weakens).
pub(crate) type StandbyLsns = BTreeMap<NodeId, Lsn>;

fn position(positions: &StandbyLsns, standby: &NodeId) -> Lsn {
    positions.get(standby).copied().unwrap_or(Lsn::ZERO)
}

impl CommitRule {
    /// The highest LSN the primary may acknowledge: its own durable end
    /// `own_flushed` when no standby counts (k' = 0); otherwise, with ANY,
    /// the k'-th highest position among the standbys that count, and with
    /// FIRST the lowest position of the first k' of them in the rule's
    /// order; never above `own_flushed`.
    pub(crate) fn acknowledgeable(
        &self,
        sync_set: &BTreeSet<NodeId>,
        positions: &StandbyLsns,
        own_flushed: Lsn,
    ) -> Lsn {
        self.acknowledgeable_by(sync_set, |n| position(positions, n), own_flushed)
    }

    /// `acknowledgeable` with each standby's position from `position_of`
    /// (the primary's own records, without building a map: this runs on
    /// every acknowledgement the primary receives).
    pub(crate) fn acknowledgeable_by(
        &self,
        sync_set: &BTreeSet<NodeId>,
        position_of: impl Fn(&NodeId) -> Lsn,
        own_flushed: Lsn,
    ) -> Lsn {
        let k = self.effective_count(sync_set);
        if k == 0 {
            return own_flushed;
        }
        let counted = self.counted(sync_set).map(position_of);
        let held = match self.method() {
            Method::First => counted.take(k).min().expect("k >= 1 standbys count"),
            Method::Any if k == 1 => counted.max().expect("k >= 1 standbys count"),
            Method::Any => {
                let mut held: Vec<Lsn> = counted.collect();
                let (_, kth, _) = held.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
                *kth
            }
        };
        held.min(own_flushed)
    }

    /// What may be acknowledged while the register's sync set changes from
    /// `from` to `to` (the swap is asked, its answer not in): the rule must
    /// hold for both, since the register may hold either when a candidate
    /// reads it.
    pub(crate) fn acknowledgeable_while_changing(
        &self,
        from: &BTreeSet<NodeId>,
        to: &BTreeSet<NodeId>,
        positions: &StandbyLsns,
        own_flushed: Lsn,
    ) -> Lsn {
        self.acknowledgeable(from, positions, own_flushed)
            .min(self.acknowledgeable(to, positions, own_flushed))
    }

    /// Whether `leaving` may be taken out of `sync_set` now: every write
    /// acknowledged so far (up to `acknowledged`, including what the
    /// primary may have acknowledged before a restart) must stay on k' of
    /// the standbys that count in the smaller set, k' taken of that set.
    /// Positions are lower bounds, so a standby whose position is unknown
    /// or behind does not hold them. With no standby counting afterwards
    /// the answer is yes: nobody in the set can promote, and the primary
    /// acknowledges alone (the pair's "solo").
    ///
    /// When several standbys are lost, take out the most behind first:
    /// removing one that holds everything may be refused while the
    /// laggards still count, and allowed once they are out.
    pub(crate) fn may_remove(
        &self,
        sync_set: &BTreeSet<NodeId>,
        leaving: &NodeId,
        positions: &StandbyLsns,
        acknowledged: Lsn,
    ) -> Result<(), String> {
        let mut rest = sync_set.clone();
        rest.remove(leaving);
        let need = self.effective_count(&rest);
        let (holding, behind): (Vec<&NodeId>, Vec<&NodeId>) = self
            .counted(&rest)
            .partition(|n| position(positions, n) >= acknowledged);
        if holding.len() >= need {
            return Ok(());
        }
        let names = |ns: &[&NodeId]| {
            ns.iter()
                .map(|n| format!("{n} (at {})", position(positions, n)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(format!(
            "taking {leaving} out of the sync set would leave acknowledged writes (up to {acknowledged}) on {} of the standbys that count, and the rule {self} needs {need}; behind: {}: wait until they catch up, or take them out first",
            holding.len(),
            names(&behind)
        ))
    }

    /// Whether `joining`, at `position`, may enter the sync set: the rule
    /// must name it (else it would never count), and it must hold every
    /// write acknowledged so far (up to `acknowledged`). Entering raises k'
    /// by at most one, so a write that was on k' standbys is then on k' + 1.
    /// Writes acknowledged while the swap is in flight are covered by
    /// `acknowledgeable_while_changing`.
    pub(crate) fn may_join(
        &self,
        joining: &NodeId,
        position: Lsn,
        acknowledged: Lsn,
    ) -> Result<(), String> {
        if self.priority(joining) == 0 {
            return Err(format!(
                "{joining} is not named by the commit rule {self}: it would never count, so it stays out of the sync set"
            ));
        }
        if position < acknowledged {
            return Err(format!(
                "{joining} holds writes up to {position} but writes up to {acknowledged} were acknowledged: it enters the sync set once it has caught up"
            ));
        }
        Ok(())
    }
}
