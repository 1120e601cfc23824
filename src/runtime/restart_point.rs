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
//! (`RestartPoint::lsn`). Any record a standby holds after it, before a
//! stream of this life reached that standby, is one the primary lost. The
//! stream's first batch to such a standby names a position it cannot match
//! (the standby refuses it as diverged and rejoins), and the history
//! answer its rejoin asks for carries the restart point, after which the
//! rejoin keeps nothing (`node/rejoin.rs`). Once a stream of this life
//! was accepted, what the standby holds after the point came from it.

use crate::types::{Lsn, NodeId};
use std::collections::BTreeSet;
use std::sync::Mutex;

pub(crate) struct RestartPoint {
    lsn: Lsn,
    /// The standbys a stream of this life reached (its first batch was
    /// accepted).
    streamed: Mutex<BTreeSet<NodeId>>,
}

impl RestartPoint {
    /// A primary starting with its log ending at `lsn`.
    pub(crate) fn new(lsn: Lsn) -> RestartPoint {
        RestartPoint {
            lsn,
            streamed: Mutex::new(BTreeSet::new()),
        }
    }

    pub(crate) fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// What a history answer to `asker` says of the restart: its point,
    /// until a stream of this life reached `asker`.
    pub(crate) fn told_to(&self, asker: &NodeId) -> Option<Lsn> {
        (!self.was_reached(asker)).then_some(self.lsn)
    }

    /// Whether `standby`, whose log keeps `first..=written`, holds records
    /// this primary may have lost: past the restart point, with no stream
    /// of this life to it yet. A log holding nothing (restored from a
    /// snapshot, which never holds a record its primary had not made
    /// durable) holds none; `first` 0 (an older standby) counts as
    /// holding records.
    pub(crate) fn holds_lost_records(&self, standby: &NodeId, first: Lsn, written: Lsn) -> bool {
        written > self.lsn && first <= written && !self.was_reached(standby)
    }

    /// A stream of this life reached `standby`.
    pub(crate) fn reached_by_stream(&self, standby: &NodeId) {
        self.streamed.lock().unwrap().insert(standby.clone());
    }

    /// Whether a stream of this life reached `standby`.
    pub(crate) fn was_reached(&self, standby: &NodeId) -> bool {
        self.streamed.lock().unwrap().contains(standby)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_past_the_point_are_lost_ones_until_a_stream_reached_the_standby() {
        let point = RestartPoint::new(Lsn(18));
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
        assert_eq!(point.told_to(&b), Some(Lsn(18)));
        point.reached_by_stream(&b);
        assert!(
            !point.holds_lost_records(&b, Lsn(1), Lsn(20)),
            "sent by this life"
        );
        assert_eq!(point.told_to(&b), None);
        let c = NodeId::from("c");
        assert!(point.holds_lost_records(&c, Lsn(1), Lsn(19)), "per standby");
    }
}
