//! A test `WalStore` on a "disk" that the test can hold up: a `MemWal`
//! that reports `may_block` (so the node calls it from blocking threads),
//! whose `sync`, `remove_before` or `truncate_after` can be held at a
//! gate. Each held call reports that it started, with its LSN, then waits
//! until the test opens the gate (an fsync, a segment removal or a cut
//! stuck on a busy disk).

use super::{MemWal, WalError, WalMeta, WalStore};
use crate::types::{Epoch, EpochHistory, Lsn, Record, RequestIdAt};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::mpsc;

/// Which calls `GatedWal` holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// `sync`: reports the last appended LSN it covers.
    Syncs,
    /// `remove_before`: reports the LSN it removes up to.
    Removals,
    /// `truncate_after`: reports the LSN it keeps up to.
    Truncations,
}

pub(crate) struct GatedWal {
    inner: MemWal,
    held: Held,
    open: Mutex<bool>,
    opened: Condvar,
    started: mpsc::UnboundedSender<Lsn>,
}

impl GatedWal {
    /// A WAL holding `held` calls until `open`, and where their starts are
    /// reported.
    pub(crate) fn new(held: Held) -> (GatedWal, mpsc::UnboundedReceiver<Lsn>) {
        let (started, starts) = mpsc::unbounded_channel();
        let wal = GatedWal {
            inner: MemWal::new(),
            held,
            open: Mutex::new(false),
            opened: Condvar::new(),
            started,
        };
        (wal, starts)
    }

    /// The guard that opens the gate when the test ends, passed or failed.
    pub(crate) fn open_on_drop(self: &Arc<Self>) -> OpenOnDrop {
        OpenOnDrop(self.clone())
    }

    /// Lets every held call, and every later one, through.
    pub(crate) fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    /// Holds the next calls again.
    pub(crate) fn close(&self) {
        *self.open.lock().unwrap() = false;
    }

    fn pass(&self, held: Held, lsn: Lsn) {
        if held != self.held {
            return;
        }
        let _ = self.started.send(lsn);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }
}

/// Opens the gate when dropped. A test holds one so that a failed
/// assertion does not leave a held call stuck on a blocking thread (the
/// runtime could then never shut down).
pub(crate) struct OpenOnDrop(Arc<GatedWal>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

impl WalStore for GatedWal {
    fn append(&self, records: &[Record]) -> Result<(), WalError> {
        self.inner.append(records)
    }
    fn sync(&self) -> Result<Lsn, WalError> {
        self.pass(Held::Syncs, self.inner.last_lsn());
        self.inner.sync()
    }
    fn read(&self, from: Lsn, n: usize, bytes: usize) -> Result<Vec<Record>, WalError> {
        self.inner.read(from, n, bytes)
    }
    fn last_lsn(&self) -> Lsn {
        self.inner.last_lsn()
    }
    fn flushed_lsn(&self) -> Lsn {
        self.inner.flushed_lsn()
    }
    fn first_lsn(&self) -> Lsn {
        self.inner.first_lsn()
    }
    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.inner.epoch_at(lsn)
    }
    fn history(&self) -> EpochHistory {
        self.inner.history()
    }
    fn truncate_after(&self, lsn: Lsn) -> Result<u64, WalError> {
        self.pass(Held::Truncations, lsn);
        self.inner.truncate_after(lsn)
    }
    fn remove_before(&self, lsn: Lsn) -> Result<(), WalError> {
        self.pass(Held::Removals, lsn);
        self.inner.remove_before(lsn)
    }
    fn reset(&self, base: Lsn, base_epoch: Epoch) -> Result<(), WalError> {
        self.inner.reset(base, base_epoch)
    }
    fn set_snapshot_ids(&self, ids: &[RequestIdAt]) -> Result<(), WalError> {
        self.inner.set_snapshot_ids(ids)
    }
    fn snapshot_ids(&self) -> Result<Vec<RequestIdAt>, WalError> {
        self.inner.snapshot_ids()
    }
    fn bytes_from(&self, from: Lsn) -> u64 {
        self.inner.bytes_from(from)
    }
    fn meta(&self) -> WalMeta {
        self.inner.meta()
    }
    fn set_meta(&self, meta: &WalMeta) -> Result<(), WalError> {
        self.inner.set_meta(meta)
    }
    fn may_block(&self) -> bool {
        true
    }
}
