//! An in-memory `WalStore` for tests and simulation. It models a disk: only
//! what `sync` covered survives `crash`, and switches inject failures.

use super::{WalError, WalMeta, WalStore, check_append};
use crate::types::{Epoch, EpochHistory, Lsn, Record, RequestIdAt};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A `WalStore` in memory: appends, syncs and meta live in the process
/// only. `sync` marks what a simulated crash (`crash`) keeps, so tests can
/// check durability without a disk, and nothing blocks, so a simulation
/// stays deterministic.
#[derive(Default)]
pub struct MemWal {
    inner: Mutex<Inner>,
    fail_sync: AtomicBool,
    hold_sync: AtomicBool,
    fail_append: AtomicBool,
    fail_meta: AtomicBool,
    blocking: AtomicBool,
    syncs: AtomicU64,
}

#[derive(Clone, Default)]
struct Inner {
    records: VecDeque<Record>,
    /// The record before `records[0]`.
    base: Lsn,
    history: EpochHistory,
    flushed: Lsn,
    meta: WalMeta,
    /// Durable as soon as set, like `meta`.
    snapshot_ids: Vec<RequestIdAt>,
    poisoned: Option<String>,
}

impl Inner {
    fn last_lsn(&self) -> Lsn {
        Lsn(self.base.0 + self.records.len() as u64)
    }

    fn last_epoch(&self) -> Epoch {
        self.history.last_epoch().unwrap_or(Epoch::ZERO)
    }

    fn index(&self, lsn: Lsn) -> Option<usize> {
        (lsn > self.base && lsn <= self.last_lsn()).then(|| (lsn.0 - self.base.0 - 1) as usize)
    }

    fn check_poison(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(why) => Err(WalError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }
}

impl MemWal {
    /// An empty log starting at LSN 1, epoch 0, meta at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a restart after a power cut would find: the synced records and
    /// the persisted meta, nothing else.
    pub fn crash(&self) -> MemWal {
        let inner = self.inner.lock().unwrap();
        let mut survived = inner.clone();
        survived.poisoned = None;
        let keep = (survived.flushed.0.saturating_sub(survived.base.0)) as usize;
        survived.records.truncate(keep);
        let last = survived.last_lsn();
        survived.history.truncate_after(last);
        survived.flushed = last;
        // The failure switches model the old process's disk trouble and
        // end with it; whether the store may block is what it is.
        MemWal {
            inner: Mutex::new(survived),
            blocking: AtomicBool::new(self.blocking.load(Ordering::SeqCst)),
            ..MemWal::default()
        }
    }

    /// Makes every later `sync` fail, as a disk that reports an I/O error.
    pub fn fail_syncs(&self, fail: bool) {
        self.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// Holds every later `sync` back (`true`): it makes nothing more durable
    /// and reports the flushed LSN as it was, as a disk whose fsync has not
    /// come back yet. What it held back is lost in a `crash`.
    pub fn hold_syncs(&self, hold: bool) {
        self.hold_sync.store(hold, Ordering::SeqCst);
    }

    /// Makes every later `append` fail with an I/O error.
    pub fn fail_appends(&self, fail: bool) {
        self.fail_append.store(fail, Ordering::SeqCst);
    }

    /// Makes every later `set_meta` fail with an I/O error, as a full disk
    /// that cannot save a new epoch.
    pub fn fail_meta_writes(&self, fail: bool) {
        self.fail_meta.store(fail, Ordering::SeqCst);
    }

    /// Reports `may_block` as a disk would, so the node runs the WAL's and
    /// the engine's work on the blocking pool (tests whose engine blocks).
    pub fn set_may_block(&self, on: bool) {
        self.blocking.store(on, Ordering::SeqCst);
    }

    /// How many times `sync` reached the (pretend) disk.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

impl WalStore for MemWal {
    fn append(&self, records: &[Record]) -> Result<(), WalError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_poison()?;
        if self.fail_append.load(Ordering::SeqCst) {
            return Err(WalError::Io {
                what: "MemWal append (injected)".into(),
                source: std::io::Error::other("injected append failure"),
            });
        }
        check_append(inner.last_lsn(), inner.last_epoch(), records)?;
        for r in records {
            inner.history.note(r.lsn, r.epoch);
            inner.records.push_back(r.clone());
        }
        Ok(())
    }

    fn sync(&self) -> Result<Lsn, WalError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_poison()?;
        if inner.flushed == inner.last_lsn() || self.hold_sync.load(Ordering::SeqCst) {
            return Ok(inner.flushed);
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
        if self.fail_sync.load(Ordering::SeqCst) {
            let why = "injected fsync failure".to_string();
            inner.poisoned = Some(why.clone());
            return Err(WalError::Poisoned(why));
        }
        inner.flushed = inner.last_lsn();
        Ok(inner.flushed)
    }

    fn read(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, WalError> {
        let inner = self.inner.lock().unwrap();
        if from > inner.last_lsn() {
            return Ok(Vec::new());
        }
        let Some(start) = inner.index(from) else {
            return Err(WalError::NotRetained {
                lsn: from,
                first: inner.base.next(),
            });
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in inner.records.iter().skip(start) {
            if out.len() >= max_records || (!out.is_empty() && bytes + r.payload.len() > max_bytes)
            {
                break;
            }
            bytes += r.payload.len();
            out.push(r.clone());
        }
        Ok(out)
    }

    fn last_lsn(&self) -> Lsn {
        self.inner.lock().unwrap().last_lsn()
    }

    fn flushed_lsn(&self) -> Lsn {
        self.inner.lock().unwrap().flushed
    }

    fn first_lsn(&self) -> Lsn {
        self.inner.lock().unwrap().base.next()
    }

    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        let inner = self.inner.lock().unwrap();
        if lsn == Lsn::ZERO {
            return Some(Epoch::ZERO);
        }
        if lsn > inner.last_lsn() {
            return None;
        }
        inner.history.epoch_at(lsn)
    }

    fn history(&self) -> EpochHistory {
        self.inner.lock().unwrap().history.clone()
    }

    fn truncate_after(&self, lsn: Lsn) -> Result<u64, WalError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_poison()?;
        let last = inner.last_lsn();
        if lsn >= last {
            return Ok(0);
        }
        if lsn < inner.base {
            let epoch = inner.history.epoch_at(lsn).unwrap_or(Epoch::ZERO);
            let dropped = last.0 - inner.base.0;
            drop(inner);
            self.reset(lsn, epoch)?;
            return Ok(dropped);
        }
        let keep = (lsn.0 - inner.base.0) as usize;
        inner.records.truncate(keep);
        inner.history.truncate_after(lsn);
        inner.flushed = inner.flushed.min(lsn);
        Ok(last.0 - lsn.0)
    }

    fn remove_before(&self, lsn: Lsn) -> Result<(), WalError> {
        let mut inner = self.inner.lock().unwrap();
        while inner.base.next() < lsn && inner.base.next() <= inner.flushed {
            inner.records.pop_front();
            inner.base = inner.base.next();
        }
        Ok(())
    }

    fn reset(&self, base: Lsn, base_epoch: Epoch) -> Result<(), WalError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_poison()?;
        inner.records.clear();
        inner.base = base;
        inner.flushed = base;
        inner.history = EpochHistory::starting_after(base, base_epoch);
        Ok(())
    }

    fn set_snapshot_ids(&self, ids: &[RequestIdAt]) -> Result<(), WalError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_poison()?;
        inner.snapshot_ids = ids.to_vec();
        Ok(())
    }

    fn snapshot_ids(&self) -> Result<Vec<RequestIdAt>, WalError> {
        Ok(self.inner.lock().unwrap().snapshot_ids.clone())
    }

    fn bytes_from(&self, from: Lsn) -> u64 {
        let inner = self.inner.lock().unwrap();
        if from > inner.last_lsn() {
            return 0;
        }
        let start = inner.index(from).unwrap_or(0);
        inner
            .records
            .iter()
            .skip(start)
            .map(|r| r.payload.len() as u64 + super::record::HEADER_LEN as u64)
            .sum()
    }

    fn meta(&self) -> WalMeta {
        self.inner.lock().unwrap().meta.clone()
    }

    fn may_block(&self) -> bool {
        self.blocking.load(Ordering::SeqCst)
    }

    fn set_meta(&self, meta: &WalMeta) -> Result<(), WalError> {
        let mut inner = self.inner.lock().unwrap();
        inner.check_poison()?;
        if self.fail_meta.load(Ordering::SeqCst) {
            return Err(WalError::Io {
                what: "MemWal set_meta (injected)".into(),
                source: std::io::Error::other("injected meta write failure"),
            });
        }
        inner.meta = meta.clone();
        Ok(())
    }
}
