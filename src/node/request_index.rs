//! Which request ids the records of our log carry: what lets a primary
//! answer a retried `apply_once` with the record it already wrote.
//!
//! The index follows the log, never the other way round: an id is added
//! when its record is appended (a primary's write, a standby's received
//! batch), forgotten when its record goes (retention trims the log, a
//! rewind truncates it), and rebuilt from the retained log at start. So a
//! node recognises the ids of records it holds, and a standby that
//! promotes knows every id the old primary replicated to it.
//!
//! A node restored from a snapshot holds no records up to it, so it also
//! keeps the ids of the records the snapshot covers, as the primary's
//! index listed them (`replace_covered`, persisted with
//! `WalStore::set_snapshot_ids`): a standby promoted soon after a resync
//! must still recognise a retry of a write the snapshot holds. Those stay
//! until the count bound pushes them out; trimming the log does not touch
//! them, and retention does not wait for them (they name no record of the
//! log to keep).
//!
//! It also keeps at most `Config::max_request_ids` ids, the newest: the
//! window is the retained WAL *and* that count, whichever is smaller,
//! because the WAL may hold far more records than memory should index
//! (1 GiB of 100-byte records is ten million ids, ~0.5 GB here). Retention
//! keeps the records of the ids remembered (`oldest`), so the engine's
//! checkpoints do not shrink the window; only `wal_retention_bytes` does.

use crate::types::{Epoch, Lsn, RequestId, RequestIdAt};
use std::collections::{HashMap, VecDeque};

/// id → the record that carries it, for the records of our log and those
/// the last restored snapshot covers.
#[derive(Debug, Default)]
pub(crate) struct RequestIndex {
    by_id: HashMap<RequestId, (Lsn, Epoch)>,
    /// The entries of records the last restored snapshot covers (all
    /// below `in_order`'s), in LSN order: the oldest, so the count bound
    /// drops these first.
    covered: VecDeque<(Lsn, RequestId)>,
    /// The entries of our log's records in LSN order, so trimming,
    /// truncating and the count bound each drop from one end. An id written
    /// twice (a retry after it was forgotten) has two entries here or in
    /// `covered`, the newest in `by_id` and the older ones in `older`.
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
        if let Some(last) = self.newest() {
            assert!(
                lsn > last,
                "request index: record {lsn} noted after record {last}"
            );
        }
        if self.capacity == 0 {
            return;
        }
        self.note(id, lsn, epoch);
        self.in_order.push_back((lsn, id));
        self.keep_capacity();
    }

    /// Replaces the ids of the records a snapshot covered with `covered`
    /// (in LSN order; the log's own records are all after them), as a node
    /// restored from a snapshot learned them from its primary or from its
    /// WAL store at start. Entries at or after the log's first indexed
    /// record, or out of order, are not a snapshot's and are skipped.
    pub(crate) fn replace_covered(&mut self, covered: &[RequestIdAt]) {
        while !self.covered.is_empty() {
            self.pop_front();
        }
        if self.capacity == 0 {
            return;
        }
        let below = self.in_order.front().map(|(lsn, _)| *lsn);
        let mut last = Lsn::ZERO;
        for c in covered {
            if c.lsn <= last || below.is_some_and(|b| c.lsn >= b) {
                continue;
            }
            last = c.lsn;
            match self.by_id.get(&c.id) {
                // A record of the log carries the id too: that one stays
                // the newest, this one goes among the older, in order.
                Some(&(newest, _)) if newest > c.lsn => {
                    let older = self.older.entry(c.id).or_default();
                    let at = older.partition_point(|(l, _)| *l < c.lsn);
                    older.insert(at, (c.lsn, c.epoch));
                }
                _ => self.note(c.id, c.lsn, c.epoch),
            }
            self.covered.push_back((c.lsn, c.id));
        }
        self.keep_capacity();
    }

    /// The ids of the records after `after` up to `up_to`, at most `max`,
    /// in LSN order, those a snapshot covered first: what a standby
    /// restored from a snapshot of ours at `up_to` asks for.
    pub(crate) fn between(&self, after: Lsn, up_to: Lsn, max: usize) -> Vec<RequestIdAt> {
        let from = |q: &VecDeque<(Lsn, RequestId)>| q.partition_point(|(l, _)| *l <= after);
        let covered = self.covered.range(from(&self.covered)..);
        let logged = self.in_order.range(from(&self.in_order)..);
        covered
            .chain(logged)
            .take_while(|(lsn, _)| *lsn <= up_to)
            .take(max)
            .filter_map(|&(lsn, id)| {
                // Every entry in order has its record; were one missing, a
                // peer's request must not bring the node down for it.
                let epoch = self.epoch_of(id, lsn);
                debug_assert!(
                    epoch.is_some(),
                    "request index: {id} at {lsn} has no record"
                );
                Some(RequestIdAt {
                    id,
                    lsn,
                    epoch: epoch?,
                })
            })
            .collect()
    }

    /// Forgets the ids of records before `lsn` (retention let them go).
    /// Those a snapshot covered stay: the log never held their records.
    pub(crate) fn remove_before(&mut self, lsn: Lsn) {
        while self.in_order.front().is_some_and(|(l, _)| *l < lsn) {
            self.pop_front_of_log();
        }
    }

    /// Forgets the ids of records after `lsn` (a rewind dropped them).
    pub(crate) fn truncate_after(&mut self, lsn: Lsn) {
        loop {
            let queue = if self.in_order.is_empty() {
                &mut self.covered
            } else {
                &mut self.in_order
            };
            let Some(&(l, id)) = queue.back() else {
                break;
            };
            if l <= lsn {
                break;
            }
            queue.pop_back();
            self.forget(l, id);
        }
    }

    /// The oldest record of our log whose id is remembered: retention
    /// keeps it, so the window does not shrink when the engine
    /// checkpoints. Not those a snapshot covered: the log holds none.
    pub(crate) fn oldest(&self) -> Option<Lsn> {
        self.in_order.front().map(|(lsn, _)| *lsn)
    }

    /// How many ids are remembered.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn newest(&self) -> Option<Lsn> {
        self.in_order
            .back()
            .or(self.covered.back())
            .map(|(lsn, _)| *lsn)
    }

    /// Makes `(lsn, epoch)`, the newest record of `id`, what `get` finds.
    fn note(&mut self, id: RequestId, lsn: Lsn, epoch: Epoch) {
        if let Some(previous) = self.by_id.insert(id, (lsn, epoch)) {
            self.older.entry(id).or_default().push_back(previous);
        }
    }

    /// The epoch of `id`'s record at `lsn`, which the index holds.
    fn epoch_of(&self, id: RequestId, lsn: Lsn) -> Option<Epoch> {
        match self.by_id.get(&id) {
            Some(&(at, epoch)) if at == lsn => Some(epoch),
            _ => self
                .older
                .get(&id)
                .and_then(|older| older.iter().find(|(at, _)| *at == lsn))
                .map(|(_, epoch)| *epoch),
        }
    }

    fn keep_capacity(&mut self) {
        while self.covered.len() + self.in_order.len() > self.capacity {
            self.pop_front();
        }
    }

    /// Drops the oldest entry: a snapshot's first, then the log's.
    fn pop_front(&mut self) {
        match self.covered.pop_front() {
            Some((l, id)) => self.forget(l, id),
            None => self.pop_front_of_log(),
        }
    }

    fn pop_front_of_log(&mut self) {
        if let Some((l, id)) = self.in_order.pop_front() {
            self.forget(l, id);
        }
    }

    /// Forgets `id`'s record at `l`, whichever of its copies that is: a
    /// log's oldest entry need not be its id's oldest (a snapshot's copy
    /// is older and outlives trimming), nor a snapshot's newest.
    fn forget(&mut self, l: Lsn, id: RequestId) {
        if self.by_id.get(&id).is_some_and(|(at, _)| *at == l) {
            // The newest copy goes; the next newest takes its place.
            match self.take_older(id, |older| older.pop_back()) {
                Some(previous) => self.by_id.insert(id, previous),
                None => self.by_id.remove(&id),
            };
        } else {
            self.take_older(id, |older| {
                let at = older.iter().position(|(x, _)| *x == l)?;
                older.remove(at)
            });
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

    fn at(n: u128, lsn: u64) -> RequestIdAt {
        RequestIdAt {
            id: id(n),
            lsn: Lsn(lsn),
            epoch: Epoch(1),
        }
    }

    /// The ids a snapshot covers name no record of the log: trimming the
    /// log keeps them and retention does not wait for them; the count
    /// bound drops them first; a new snapshot's replace them.
    #[test]
    fn the_ids_a_snapshot_covers_outlive_trimming_and_go_first_by_count() {
        let mut index = RequestIndex::new(4);
        index.replace_covered(&[at(1, 3), at(2, 7)]);
        index.insert(id(3), Lsn(8), Epoch(1));
        index.insert(id(4), Lsn(9), Epoch(1));
        index.remove_before(Lsn(9));
        assert_eq!(index.get(&id(1)), Some((Lsn(3), Epoch(1))));
        assert_eq!(index.get(&id(3)), None, "its record was trimmed");
        assert_eq!(
            index.oldest(),
            Some(Lsn(9)),
            "retention keeps only the log's"
        );
        index.insert(id(5), Lsn(10), Epoch(1));
        index.insert(id(6), Lsn(11), Epoch(1));
        assert_eq!(index.get(&id(1)), None, "the oldest goes first");
        assert_eq!(index.get(&id(2)), Some((Lsn(7), Epoch(1))));
        index.remove_before(Lsn(13));
        index.replace_covered(&[at(8, 12)]);
        assert_eq!((index.get(&id(2)), index.len()), (None, 1));
    }

    /// What a primary lists for a standby restored from its snapshot:
    /// the covered ids and then the log's, within the range, in order.
    #[test]
    fn between_lists_the_ids_in_a_range_in_lsn_order() {
        let mut index = RequestIndex::new(10);
        index.replace_covered(&[at(1, 2), at(2, 4)]);
        for (n, lsn) in [(3, 5), (4, 6), (5, 8)] {
            index.insert(id(n), Lsn(lsn), Epoch(2));
        }
        let lsns = |v: Vec<RequestIdAt>| v.iter().map(|e| e.lsn.0).collect::<Vec<_>>();
        assert_eq!(lsns(index.between(Lsn(2), Lsn(6), 10)), vec![4, 5, 6]);
        assert_eq!(lsns(index.between(Lsn(0), Lsn(8), 2)), vec![2, 4]);
        let listed = index.between(Lsn(4), Lsn(5), 10);
        assert_eq!(
            listed,
            vec![RequestIdAt {
                id: id(3),
                lsn: Lsn(5),
                epoch: Epoch(2)
            }]
        );
    }

    /// One id both covered by the snapshot and written again to the log
    /// (a retry after the window): the log's record is what a retry finds,
    /// and a rewind of it leaves the snapshot's.
    #[test]
    fn an_id_both_covered_and_in_the_log_finds_the_newest_record() {
        let mut index = RequestIndex::new(10);
        index.insert(id(7), Lsn(9), Epoch(2));
        index.replace_covered(&[at(7, 4)]);
        assert_eq!(index.get(&id(7)), Some((Lsn(9), Epoch(2))));
        index.truncate_after(Lsn(8));
        assert_eq!(index.get(&id(7)), Some((Lsn(4), Epoch(1))));
        index.truncate_after(Lsn(3));
        assert_eq!((index.get(&id(7)), index.len()), (None, 0));
        assert!(index.older.is_empty());
    }

    /// A snapshot's copy of an id outlives trimming: when the log's copy
    /// of it (a retry written again after the primary forgot it) is
    /// trimmed, the snapshot's is what a retry finds, and what a
    /// standby restored from this node is listed.
    #[test]
    fn trimming_the_logs_copy_of_a_covered_id_leaves_the_snapshots() {
        let mut index = RequestIndex::new(10);
        index.replace_covered(&[at(7, 4)]);
        index.insert(id(7), Lsn(8), Epoch(2));
        index.insert(id(7), Lsn(9), Epoch(2));
        index.remove_before(Lsn(9));
        assert_eq!(index.get(&id(7)), Some((Lsn(9), Epoch(2))));
        index.remove_before(Lsn(10));
        assert_eq!(index.get(&id(7)), Some((Lsn(4), Epoch(1))));
        assert_eq!(index.between(Lsn(0), Lsn(10), 10), vec![at(7, 4)]);
        index.replace_covered(&[]);
        assert_eq!((index.get(&id(7)), index.len()), (None, 0));
        assert!(index.older.is_empty(), "nothing left behind");
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

    /// The index against a plain list of its entries, under any sequence
    /// of appends, trims, rewinds and restored snapshots: a lookup finds
    /// the newest entry of the id, a listing every entry in its range.
    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Insert { id: u8, gap: u64, epoch: u64 },
            RemoveBefore(u64),
            TruncateAfter(u64),
            ReplaceCovered(Vec<(u8, u64)>),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..5, 1u64..3, 1u64..4).prop_map(|(id, gap, epoch)| Op::Insert { id, gap, epoch }),
                1 => (0u64..40).prop_map(Op::RemoveBefore),
                1 => (0u64..40).prop_map(Op::TruncateAfter),
                1 => proptest::collection::vec((0u8..5, 1u64..40), 0..6).prop_map(Op::ReplaceCovered),
            ]
        }

        /// (lsn, id, epoch, covered), in LSN order.
        type Model = Vec<(u64, u8, u64, bool)>;

        fn keep_capacity(model: &mut Model, capacity: usize) {
            while model.len() > capacity {
                model.remove(0);
            }
        }

        proptest! {
            #[test]
            fn the_index_is_its_list_of_entries(capacity in 0usize..8, ops in proptest::collection::vec(op(), 0..40)) {
                let mut index = RequestIndex::new(capacity);
                let mut model: Model = Vec::new();
                for op in ops {
                    match op {
                        Op::Insert { id: n, gap, epoch } => {
                            let lsn = model.last().map_or(0, |e| e.0) + gap;
                            index.insert(id(n as u128), Lsn(lsn), Epoch(epoch));
                            if capacity > 0 {
                                model.push((lsn, n, epoch, false));
                                keep_capacity(&mut model, capacity);
                            }
                        }
                        Op::RemoveBefore(l) => {
                            index.remove_before(Lsn(l));
                            model.retain(|e| e.3 || e.0 >= l);
                        }
                        Op::TruncateAfter(l) => {
                            index.truncate_after(Lsn(l));
                            model.retain(|e| e.0 <= l);
                        }
                        Op::ReplaceCovered(list) => {
                            // Unsorted: entries out of order are skipped.
                            let covered: Vec<_> = list.iter().map(|&(n, l)| RequestIdAt { id: id(n as u128), lsn: Lsn(l), epoch: Epoch(9) }).collect();
                            index.replace_covered(&covered);
                            model.retain(|e| !e.3);
                            let below = model.first().map(|e| e.0);
                            let mut last = 0;
                            let mut restored = Vec::new();
                            for (n, l) in list {
                                if capacity == 0 || l <= last || below.is_some_and(|b| l >= b) {
                                    continue;
                                }
                                last = l;
                                restored.push((l, n, 9, true));
                            }
                            restored.append(&mut model);
                            model = restored;
                            keep_capacity(&mut model, capacity);
                        }
                    }
                    for n in 0u8..5 {
                        let newest = model.iter().rev().find(|e| e.1 == n).map(|e| (Lsn(e.0), Epoch(e.2)));
                        prop_assert_eq!(index.get(&id(n as u128)), newest, "id {}", n);
                    }
                    let listed: Vec<_> = model.iter().map(|e| RequestIdAt { id: id(e.1 as u128), lsn: Lsn(e.0), epoch: Epoch(e.2) }).collect();
                    prop_assert_eq!(index.between(Lsn::ZERO, Lsn(u64::MAX), usize::MAX), listed);
                    prop_assert_eq!(index.oldest(), model.iter().find(|e| !e.3).map(|e| Lsn(e.0)));
                    let distinct: std::collections::HashSet<_> = model.iter().map(|e| e.1).collect();
                    prop_assert_eq!(index.len(), distinct.len());
                    // Every entry has exactly one record, and no id is left
                    // with an empty list of older ones.
                    let records = index.by_id.len() + index.older.values().map(|o| o.len()).sum::<usize>();
                    prop_assert_eq!(records, model.len());
                    prop_assert!(index.older.values().all(|o| !o.is_empty()));
                }
            }
        }
    }
}
