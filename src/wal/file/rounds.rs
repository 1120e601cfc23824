//! The bookkeeping of overlapping sync rounds.
//!
//! A sync round is one fdatasync of the active segment covering every
//! record appended before it started (its target). Up to `MAX_ROUNDS` may
//! be in flight at once: when a disk stalls, records appended during the
//! stall get a round of their own that finishes soon after the stalled one,
//! instead of waiting for it to end before theirs even starts (which cost
//! the slowest writes up to two stalls back to back).
//!
//! Rounds may end in any order, but their targets become the flushed LSN
//! in the order they started: a later round's fdatasync covers its own file
//! only, and an earlier round may still be making a new segment's directory
//! entry durable, so a target is published only once every earlier round
//! has ended too.

use crate::types::Lsn;
use std::collections::BTreeMap;

/// Rounds that may be in flight at once. Two cover a stall: the second
/// holds everything appended since the first started; a third would only
/// queue behind them on the same disk.
pub(super) const MAX_ROUNDS: u64 = 2;

/// Started, ended and published rounds, numbered in the order they started.
#[derive(Debug, Default)]
pub(super) struct SyncRounds {
    /// The number the next round gets.
    next: u64,
    /// The oldest round not yet published; `next - oldest` rounds are
    /// started and not published.
    oldest: u64,
    /// Rounds that ended ahead of an older one still in flight: their
    /// targets, published once the older ones end.
    ended: BTreeMap<u64, Lsn>,
    /// The target of the newest round started.
    newest_target: Lsn,
}

impl SyncRounds {
    /// Whether no round is started and unpublished.
    pub fn is_idle(&self) -> bool {
        self.next == self.oldest
    }

    /// Whether another round may start now.
    pub fn may_start(&self) -> bool {
        self.next - self.oldest < MAX_ROUNDS
    }

    /// Whether a round not yet published will, once published, cover
    /// `lsn`: a caller wanting `lsn` durable waits for it instead of
    /// starting another.
    pub fn will_cover(&self, lsn: Lsn) -> bool {
        !self.is_idle() && self.newest_target >= lsn
    }

    /// Starts a round covering up to `target`; its number for `end`.
    pub fn start(&mut self, target: Lsn) -> u64 {
        debug_assert!(self.may_start(), "too many sync rounds in flight");
        let round = self.next;
        self.next += 1;
        self.newest_target = target;
        round
    }

    /// Records that `round` (started with `target`) ended; returns the
    /// newest target that is now published (every round up to it has
    /// ended), if that moved.
    pub fn end(&mut self, round: u64, target: Lsn) -> Option<Lsn> {
        self.ended.insert(round, target);
        let mut published = None;
        while let Some(t) = self.ended.remove(&self.oldest) {
            published = Some(published.map_or(t, |p: Lsn| p.max(t)));
            self.oldest += 1;
        }
        published
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_ending_before_an_older_one_is_published_after_it() {
        let mut r = SyncRounds::default();
        let first = r.start(Lsn(10));
        let second = r.start(Lsn(20));
        assert!(!r.may_start(), "at most {MAX_ROUNDS} rounds in flight");
        assert_eq!(
            r.end(second, Lsn(20)),
            None,
            "the older round is still running"
        );
        assert!(r.will_cover(Lsn(20)));
        assert_eq!(r.end(first, Lsn(10)), Some(Lsn(20)));
        assert!(r.is_idle());
        assert!(!r.will_cover(Lsn(20)), "no round left to wait for");
    }

    #[test]
    fn rounds_ending_in_order_publish_one_by_one() {
        let mut r = SyncRounds::default();
        let first = r.start(Lsn(5));
        let second = r.start(Lsn(7));
        assert_eq!(r.end(first, Lsn(5)), Some(Lsn(5)));
        assert!(r.may_start());
        assert!(r.will_cover(Lsn(7)));
        assert!(!r.will_cover(Lsn(8)));
        assert_eq!(r.end(second, Lsn(7)), Some(Lsn(7)));
        assert!(r.is_idle());
    }
}
