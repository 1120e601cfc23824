//! The tail cache: what lets standbys that keep up be served from memory.

use super::super::record;
use crate::types::{Lsn, Record};
use std::collections::VecDeque;

/// Recent records, a gapless run ending at the log's last record, bounded
/// by the bytes their frames take.
pub(super) struct TailCache {
    records: VecDeque<Record>,
    bytes: usize,
    limit: usize,
}

impl TailCache {
    pub(super) fn new(limit: usize) -> Self {
        TailCache {
            records: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    pub(super) fn push(&mut self, r: Record) {
        self.bytes += record::encoded_len(&r);
        self.records.push_back(r);
        while self.bytes > self.limit {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(r) = self.records.pop_front() {
            self.bytes -= record::encoded_len(&r);
        }
    }

    pub(super) fn truncate_after(&mut self, lsn: Lsn) {
        while self.records.back().is_some_and(|r| r.lsn > lsn) {
            let r = self.records.pop_back().unwrap();
            self.bytes -= record::encoded_len(&r);
        }
    }

    pub(super) fn remove_before(&mut self, lsn: Lsn) {
        while self.records.front().is_some_and(|r| r.lsn < lsn) {
            self.pop_front();
        }
    }

    pub(super) fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// The read, when the cache holds `from` (and so everything after it).
    pub(super) fn read(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<Vec<Record>> {
        let front = self.records.front()?.lsn;
        if from < front {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in self.records.iter().skip((from.0 - front.0) as usize) {
            if out.len() >= max_records || (!out.is_empty() && bytes + r.payload.len() > max_bytes)
            {
                break;
            }
            bytes += r.payload.len();
            out.push(r.clone());
        }
        Some(out)
    }
}
