//! Which request ids the records of our log carry: what lets a primary
//! answer a retried `apply_once` with the record it already wrote.
//!
//! The index follows the log, never the other way round: an id is added
//! when its record is appended (a primary's write, a standby's received
//! batch), forgotten when its record goes (retention trims the log, a
//! rewind truncates it), and rebuilt from the retained log at start. So a
//! node recognises exactly the ids of records it holds, and a standby that
//! promotes knows every id the old primary replicated to it.
//!
//! It also keeps at most `Config::max_request_ids` ids, the newest: the
//! window is the retained WAL *and* that count, whichever is smaller,
//! because the WAL may hold far more records than memory should index
//! (1 GiB of 100-byte records is ten million ids, ~0.5 GB here). Retention
//! keeps the records of the ids remembered (`oldest`), so the engine's
//! checkpoints do not shrink the window; only `wal_retention_bytes` does.

use crate::types::{Epoch, Lsn, RequestId};
use std::collections::{HashMap, VecDeque};

/// id → the record that carries it, for the records of our log.
#[derive(Debug, Default)]
pub(crate) struct RequestIndex {
    by_id: HashMap<RequestId, (Lsn, Epoch)>,
    /// The same entries in LSN order, so trimming, truncating and the
    /// count bound each drop from one end. An id written twice (a retry
    /// after it was forgotten) has two entries here, the newest in `by_id`
    /// and the older ones in `older`.
    in_order: VecDeque<(Lsn, RequestId)>,
    /// Per id written more than once, its records before the newest,
    /// oldest first: when a rewind drops the newest, the log still holds
    /// these, and a retry must still find one. Rare, so kept apart.
    older: HashMap<RequestId, VecDeque<(Lsn, Epoch)>>,
    capacity: usize,
}

impl RequestIndex {
    /// An empty index that keeps at most `capacity` ids.
    pub(crate) fn new(capacity: usize) -> RequestIndex {
        RequestIndex {
            capacity,
            ..RequestIndex::default()
        }
    }

    /// The record that carries `id`, if our log holds it and the id is
    /// within the window.
    pub(crate) fn get(&self, id: &RequestId) -> Option<(Lsn, Epoch)> {
        self.by_id.get(id).copied()
    }

    /// Notes that the record `(lsn, epoch)`, appended after every record
    /// noted so far, carries `id`.
    pub(crate) fn insert(&mut self, id: RequestId, lsn: Lsn, epoch: Epoch) {
        if let Some(&(last, _)) = self.in_order.back() {
            assert!(
                lsn > last,
                "request index: record {lsn} noted after record {last}"
            );
        }
        if self.capacity == 0 {
            return;
        }
        if let Some(previous) = self.by_id.insert(id, (lsn, epoch)) {
            self.older.entry(id).or_default().push_back(previous);
        }
        self.in_order.push_back((lsn, id));
        while self.in_order.len() > self.capacity {
            self.pop_front();
        }
    }

    /// Forgets the ids of records before `lsn` (retention let them go).
    pub(crate) fn remove_before(&mut self, lsn: Lsn) {
        while self.in_order.front().is_some_and(|(l, _)| *l < lsn) {
            self.pop_front();
        }
    }

    /// Forgets the ids of records after `lsn` (a rewind dropped them).
    pub(crate) fn truncate_after(&mut self, lsn: Lsn) {
        while let Some(&(l, id)) = self.in_order.back() {
            if l <= lsn {
                break;
            }
            self.in_order.pop_back();
            if self.by_id.get(&id).is_some_and(|(at, _)| *at == l) {
                // The newest copy goes; an older one the log still holds
                // takes its place.
                match self.take_older(id, |older| older.pop_back()) {
                    Some(previous) => self.by_id.insert(id, previous),
                    None => self.by_id.remove(&id),
                };
            }
        }
    }

    /// The oldest record whose id is remembered: retention keeps it, so
    /// the window does not shrink when the engine checkpoints.
    pub(crate) fn oldest(&self) -> Option<Lsn> {
        self.in_order.front().map(|(lsn, _)| *lsn)
    }

    /// How many ids are remembered.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn pop_front(&mut self) {
        let Some((l, id)) = self.in_order.pop_front() else {
            return;
        };
        if self.by_id.get(&id).is_some_and(|(at, _)| *at == l) {
            self.by_id.remove(&id);
        } else {
            // An older copy: the oldest of its id's.
            self.take_older(id, |older| older.pop_front());
        }
    }

    /// Takes one of `id`'s older records with `take`, forgetting the id's
    /// entry in `older` once none is left.
    fn take_older(
        &mut self,
        id: RequestId,
        take: impl FnOnce(&mut VecDeque<(Lsn, Epoch)>) -> Option<(Lsn, Epoch)>,
    ) -> Option<(Lsn, Epoch)> {
        let older = self.older.get_mut(&id)?;
        let taken = take(older);
        if older.is_empty() {
            self.older.remove(&id);
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> RequestId {
        RequestId::from(n)
    }

    #[test]
    fn trimming_and_truncating_forget_exactly_the_records_that_went() {
        let mut index = RequestIndex::new(100);
        for n in 1..=6 {
            index.insert(id(n), Lsn(n as u64 * 10), Epoch(1));
        }
        index.remove_before(Lsn(30));
        index.truncate_after(Lsn(50));
        let kept: Vec<_> = (1..=6).filter(|&n| index.get(&id(n)).is_some()).collect();
        assert_eq!(kept, vec![3, 4, 5]);
        assert_eq!(index.get(&id(4)), Some((Lsn(40), Epoch(1))));
    }

    #[test]
    fn only_the_newest_ids_up_to_the_capacity_are_kept() {
        let mut index = RequestIndex::new(2);
        for n in 1..=3 {
            index.insert(id(n), Lsn(n as u64), Epoch(1));
        }
        assert_eq!(index.get(&id(1)), None);
        assert_eq!(index.len(), 2);
        assert!(RequestIndex::new(0).get(&id(1)).is_none());
    }

    #[test]
    fn an_id_written_again_after_it_was_forgotten_survives_its_old_entry() {
        let mut index = RequestIndex::new(3);
        index.insert(id(7), Lsn(1), Epoch(1));
        index.insert(id(7), Lsn(2), Epoch(1));
        index.remove_before(Lsn(2));
        assert_eq!(index.get(&id(7)), Some((Lsn(2), Epoch(1))));
        index.truncate_after(Lsn(1));
        assert_eq!(index.get(&id(7)), None);
        assert!(index.older.is_empty());
    }

    /// A log can hold one id twice only after a retry missed the window;
    /// a rewind of the second copy must leave the first findable, or a
    /// third attempt is written again.
    #[test]
    fn a_rewind_of_an_ids_newest_record_leaves_its_older_record_findable() {
        let mut index = RequestIndex::new(10);
        index.insert(id(7), Lsn(5), Epoch(1));
        index.insert(id(8), Lsn(6), Epoch(1));
        index.insert(id(7), Lsn(20), Epoch(2));
        index.truncate_after(Lsn(10));
        assert_eq!(index.get(&id(7)), Some((Lsn(5), Epoch(1))));
        index.remove_before(Lsn(6));
        assert_eq!(index.get(&id(7)), None);
        assert_eq!(index.get(&id(8)), Some((Lsn(6), Epoch(1))));
        assert!(index.older.is_empty(), "nothing left behind");
    }
}
