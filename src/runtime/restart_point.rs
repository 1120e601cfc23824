//! Where a restarted primary's log ended, until each standby has heard
//! from it again.
//!
//! A primary streams records before its own fsync covers them, so a crash
//! of its machine (not just of its process, which leaves written records
//! in the page cache) can lose records a standby already holds. Restarted,
//! the primary is still the leader of its epoch and writes its next
//! records under the same LSNs and epoch. The log checks compare epochs,
//! so a standby holding the lost records would take the new ones after
//! them as if they continued its log: the two logs would differ under the
//! same `(lsn, epoch)`, silently.
//!
//! So a primary remembers where its log ended when it started
//! (`RestartPoint::lsn_for`). Any record a standby holds after it, before a
//! stream of this life reached that standby, is one the primary lost. The
//! stream's first batch to such a standby names a position it cannot match
//! (the standby refuses it as diverged and rejoins), and the history
//! answer its rejoin asks for carries the restart point, after which the
//! rejoin keeps nothing (`node/rejoin.rs`). Once a stream of this life
//! was accepted, what the standby holds after the point came from it.
//!
//! The point is per standby: a node that restarts again before its stream
//! reached a standby keeps that standby's earlier, lower point (its log
//! now ends after records the standby lacks, while the lost ones lie
//! below that end), while a standby it did reach gets the new log end.
//! The points of the standbys not reached yet are kept in the WAL's meta
//! (`WalMeta::restart_points`) for that.

use crate::types::{Lsn, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

pub(crate) struct RestartPoint {
    /// Each standby's point: where our log ended at the earliest start
    /// since a stream last reached it.
    points: BTreeMap<NodeId, Lsn>,
    /// The standbys a stream of this life reached (its first batch was
    /// accepted).
    streamed: Mutex<BTreeSet<NodeId>>,
}

impl RestartPoint {
    /// A primary starting with its log ending at `last`, for `standbys`:
    /// each one's point is `last`, or the one `kept` from an earlier start
    /// if that is lower.
    pub(crate) fn at_start(
        standbys: impl IntoIterator<Item = NodeId>,
        kept: &BTreeMap<NodeId, Lsn>,
        last: Lsn,
    ) -> RestartPoint {
        let points = standbys
            .into_iter()
            .map(|s| {
                let point = kept.get(&s).map_or(last, |k| (*k).min(last));
                (s, point)
            })
            .collect();
        RestartPoint::kept(points)
    }

    /// The points an earlier life kept, for a node that starts with a
    /// rejoin.
    pub(crate) fn kept(points: BTreeMap<NodeId, Lsn>) -> RestartPoint {
        RestartPoint {
            points,
            streamed: Mutex::new(BTreeSet::new()),
        }
    }

    /// `standby`'s point, until a stream of this life reached it.
    pub(crate) fn lsn_for(&self, standby: &NodeId) -> Option<Lsn> {
        if self.was_reached(standby) {
            return None;
        }
        self.points.get(standby).copied()
    }

    /// Whether `standby`, whose log keeps `first..=written`, holds records
    /// this primary may have lost: past its point, with no stream of this
    /// life to it yet. A log holding nothing (restored from a snapshot,
    /// which never holds a record its primary had not made durable) holds
    /// none; `first` 0 (an older standby) counts as holding records.
    pub(crate) fn holds_lost_records(&self, standby: &NodeId, first: Lsn, written: Lsn) -> bool {
        self.lsn_for(standby)
            .is_some_and(|point| written > point && first <= written)
    }

    /// A stream of this life reached `standby`.
    pub(crate) fn reached_by_stream(&self, standby: &NodeId) {
        self.streamed.lock().unwrap().insert(standby.clone());
    }

    /// Whether a stream of this life reached `standby`.
    pub(crate) fn was_reached(&self, standby: &NodeId) -> bool {
        self.streamed.lock().unwrap().contains(standby)
    }

    /// How many standbys no stream of this life reached yet (what
    /// `unreached` holds, without building it: asked on every ack).
    pub(crate) fn unreached_count(&self) -> usize {
        let streamed = self.streamed.lock().unwrap();
        self.points
            .keys()
            .filter(|s| !streamed.contains(*s))
            .count()
    }

    /// The points of the standbys not reached yet: what the WAL's meta
    /// keeps for the next start.
    pub(crate) fn unreached(&self) -> BTreeMap<NodeId, Lsn> {
        let streamed = self.streamed.lock().unwrap();
        self.points
            .iter()
            .filter(|(s, _)| !streamed.contains(*s))
            .map(|(s, p)| (s.clone(), *p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::from(*n)).collect()
    }

    #[test]
    fn records_past_the_point_are_lost_ones_until_a_stream_reached_the_standby() {
        let point = RestartPoint::at_start(ids(&["b", "c"]), &BTreeMap::new(), Lsn(18));
        let b = NodeId::from("b");
        assert!(
            !point.holds_lost_records(&b, Lsn(1), Lsn(18)),
            "nothing past the point"
        );
        assert!(point.holds_lost_records(&b, Lsn(1), Lsn(20)));
        assert!(
            point.holds_lost_records(&b, Lsn::ZERO, Lsn(20)),
            "an older standby"
        );
        assert!(
            !point.holds_lost_records(&b, Lsn(31), Lsn(30)),
            "a log restored from a snapshot at 30 holds no record"
        );
        assert_eq!(point.lsn_for(&b), Some(Lsn(18)));
        point.reached_by_stream(&b);
        assert!(
            !point.holds_lost_records(&b, Lsn(1), Lsn(20)),
            "sent by this life"
        );
        assert_eq!(point.lsn_for(&b), None);
        let c = NodeId::from("c");
        assert!(point.holds_lost_records(&c, Lsn(1), Lsn(19)), "per standby");
        assert_eq!(point.unreached(), BTreeMap::from([(c, Lsn(18))]));
        assert_eq!(point.unreached_count(), 1);
    }

    #[test]
    fn a_second_start_keeps_the_lower_point_of_a_standby_not_reached_since_the_first() {
        let kept = BTreeMap::from([(NodeId::from("c"), Lsn(7))]);
        let point = RestartPoint::at_start(ids(&["b", "c"]), &kept, Lsn(10));
        assert_eq!(point.lsn_for(&NodeId::from("b")), Some(Lsn(10)));
        assert_eq!(point.lsn_for(&NodeId::from("c")), Some(Lsn(7)));
        let above_the_log = BTreeMap::from([(NodeId::from("c"), Lsn(12))]);
        let point = RestartPoint::at_start(ids(&["c"]), &above_the_log, Lsn(10));
        assert_eq!(
            point.lsn_for(&NodeId::from("c")),
            Some(Lsn(10)),
            "it lost records below the earlier point too"
        );
    }
}
