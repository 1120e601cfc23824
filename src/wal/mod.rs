//! The write-ahead log: the trait the replication logic reads and writes
//! through, a durable segmented file implementation and an in-memory one.

pub(crate) mod dir_lock;
mod file;
#[cfg(test)]
pub(crate) mod gated;
#[cfg(any(test, feature = "testing"))]
mod mem;
pub(crate) mod record;
pub(crate) mod tmpfile;

pub use file::{FileWal, FileWalOptions};
#[cfg(any(test, feature = "testing"))]
pub use mem::MemWal;

use crate::types::{Epoch, EpochHistory, Lsn, NodeId, Record, RequestIdAt};
use std::path::PathBuf;

/// What a node persists beside its log: the highest epoch it has seen, the
/// leader of that epoch, if known, and whether that leader is confirmed.
/// Written atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalMeta {
    /// The highest epoch this node has seen.
    pub epoch: Epoch,
    /// The primary of that epoch, if known.
    pub leader: Option<NodeId>,
    /// Whether the leader of `epoch` is known to be its only primary.
    /// `false` only on a node started as primary on a fresh data directory
    /// until its peer confirmed it follows it (or an operator forced a
    /// promotion): such a primary refuses writes. Every other epoch comes
    /// from a promotion, which fences the peer, so walrep writes `true`
    /// for it. A `WalStore` must persist it. One that loses it (reads
    /// `false`) makes a restarted primary of that epoch wait for its peer's
    /// confirmation again, and a peer whose log holds records refuses it
    /// as a primary that lost its data directory: no write is lost, but
    /// the pair fails over to the peer if it may, or waits for an operator.
    pub confirmed: bool,
    /// Where this node's log ended when it started as the primary, per
    /// standby that no stream of that life (or a later one) has reached
    /// yet. Records such a standby holds after its point may be ones this
    /// node sent before a crash of its machine and lost, and this node's
    /// own records after it may stand under the same LSNs and epoch: until
    /// a stream reached the standby, neither side keeps records after it
    /// at a rejoin. Kept here so that a second restart before then keeps
    /// the earlier, lower point. Empty on most nodes. A `WalStore` that
    /// loses it (reads it empty) takes its log's end at the next start
    /// instead, which is right unless the node restarted twice in that
    /// window.
    pub restart_points: std::collections::BTreeMap<NodeId, Lsn>,
}

/// How a `WalStore` call failed.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A record failed its checksum or framing check.
    #[error("corrupt WAL record in {segment} at offset {offset}: {detail}")]
    Corrupt {
        /// The damaged file.
        segment: PathBuf,
        /// Byte offset of the damaged record in it.
        offset: u64,
        /// What check failed.
        detail: String,
    },
    /// The OS refused an operation.
    #[error("I/O error on {what}: {source}")]
    Io {
        /// The operation that failed.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An earlier write to the log's files failed part-way (an fsync, whose
    /// dirty pages the kernel may have dropped, or a removal, rename or cut
    /// that left the files unlike what memory describes), so nothing more
    /// can be trusted. The reason says which. Restart after checking the
    /// disk: opening the log recovers from what the files hold.
    #[error(
        "WAL is unusable after a failed write to its files ({0}); restart the node after checking the disk"
    )]
    Poisoned(String),
    /// Another open `FileWal` (another node process, most likely) holds
    /// the directory: two writers of one log would corrupt it.
    #[error(
        "{dir} is in use by another process (it holds the lock {lock}): two nodes on one data directory would corrupt its WAL; stop the other one, or give this one its own data directory"
    )]
    Locked {
        /// The log's directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The log has records but its meta file is gone. The meta holds the
    /// epoch that keeps a deposed primary fenced, so the log refuses to
    /// guess it (a fresh meta would let this node act on an old epoch).
    #[error(
        "{dir} holds WAL records but no meta file: the epoch this node last saw is lost. Restore `meta` from a backup, or move {dir} away so the node starts empty and resyncs from its peer"
    )]
    MetaMissing {
        /// The log's directory.
        dir: PathBuf,
    },
    /// `append` was given a record that does not follow the log's last.
    #[error("append out of order: expected LSN {expected}, got {got}")]
    OutOfOrder {
        /// The LSN the log expected next.
        expected: Lsn,
        /// The LSN it was given.
        got: Lsn,
    },
    /// `append` was given a record whose epoch is below the log's last.
    #[error("record {lsn} has epoch {epoch}, below the log's last epoch {last}")]
    EpochRegression {
        /// The record.
        lsn: Lsn,
        /// Its epoch.
        epoch: Epoch,
        /// The log's last epoch.
        last: Epoch,
    },
    /// `read` asked for a record retention already removed.
    #[error("record {lsn} is no longer retained (oldest kept: {first})")]
    NotRetained {
        /// The record asked for.
        lsn: Lsn,
        /// The oldest record kept.
        first: Lsn,
    },
    /// `append` was given a payload above the log's limit.
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

impl From<WalError> for crate::Error {
    fn from(e: WalError) -> Self {
        match e {
            WalError::Corrupt {
                segment,
                offset,
                detail,
            } => crate::Error::Corrupt {
                segment,
                offset,
                detail,
            },
            WalError::Io { what, source } => crate::Error::Io { what, source },
            other => crate::Error::Io {
                what: "WAL".into(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

/// The log. Methods may block on disk I/O; the replication runtime calls
/// them from threads where blocking is allowed, never while holding a lock
/// across an `.await`.
///
/// Concurrency: one node is the only writer (`append`, `truncate_after`,
/// `remove_before`, `reset`, `set_meta` come from one task at a time), but
/// `sync`, `read` and the getters are called from other tasks at the same
/// time as appends, so an implementation synchronizes internally. The
/// getters should not wait for an fsync in progress: the node's own task
/// calls them.
///
/// Durability contract: a record is durable once `sync` has returned an LSN
/// at or above it. `set_meta` is durable when it returns. After a crash,
/// reopening yields every durable record and possibly some that were not
/// durable, always a gapless prefix of what was appended.
pub trait WalStore: Send + Sync + 'static {
    /// Appends `records` after the last one: `records[0].lsn == last_lsn + 1`,
    /// gapless, epochs not decreasing. Written, not yet durable.
    fn append(&self, records: &[Record]) -> Result<(), WalError>;

    /// Makes every appended record durable and returns the flushed LSN.
    /// Concurrent callers share one fsync (group commit); a store may run a
    /// second one beside a stalled one for what was appended since it
    /// started (`FileWal` does), but the flushed LSN only ever rises.
    fn sync(&self) -> Result<Lsn, WalError>;

    /// Up to `max_records` records (and about `max_bytes` of payload, at
    /// least one record) starting at `from`. Empty when `from > last_lsn`.
    /// Each record exactly as appended, its `request_id` included: a store
    /// that dropped ids would let a retried `apply_once` be applied again
    /// after a restart or a failover.
    fn read(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, WalError>;

    /// The last appended record (`Lsn::ZERO` for an empty log that starts
    /// at 1).
    fn last_lsn(&self) -> Lsn;

    /// The last durable record: the highest LSN `sync` has returned.
    fn flushed_lsn(&self) -> Lsn;

    /// The oldest record still kept (`last_lsn + 1` when the log is empty).
    fn first_lsn(&self) -> Lsn;

    /// The epoch of the record at `lsn`: `Some(Epoch::ZERO)` for `Lsn::ZERO`,
    /// `None` past the end or before what the history covers.
    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch>;

    /// Where each epoch began in this log.
    fn history(&self) -> EpochHistory;

    /// Drops every record after `lsn` (durably) and returns how many went.
    fn truncate_after(&self, lsn: Lsn) -> Result<u64, WalError>;

    /// Lets go of records before `lsn` (whole segments at a time, so some
    /// may stay). Used for retention.
    fn remove_before(&self, lsn: Lsn) -> Result<(), WalError>;

    /// Empties the log so that the next record is `base + 1`, following a
    /// record `(base, base_epoch)` that a snapshot covers.
    fn reset(&self, base: Lsn, base_epoch: Epoch) -> Result<(), WalError>;

    /// Persists the request ids of the records a restored snapshot covers
    /// (in LSN order, all at or before the snapshot's LSN), replacing what
    /// an earlier call kept; durable when it returns. The runtime calls it
    /// after the engine restored a snapshot and before `reset` starts the
    /// log after it: a node restarted later still recognises retries of
    /// those writes (`Replicator::apply_once`), although its log holds
    /// none of their records. A store that loses them lets such a node,
    /// promoted soon after, apply a retry of one of them a second time.
    /// `truncate_after`, `remove_before` and `reset` leave them as they are.
    fn set_snapshot_ids(&self, ids: &[RequestIdAt]) -> Result<(), WalError>;

    /// What `set_snapshot_ids` last persisted (empty before any call).
    fn snapshot_ids(&self) -> Result<Vec<RequestIdAt>, WalError>;

    /// Bytes of log kept from `from` to the end, for retention decisions.
    fn bytes_from(&self, from: Lsn) -> u64;

    /// The last `WalMeta` persisted (the default before any).
    fn meta(&self) -> WalMeta;

    /// Persists `meta` atomically (write temp, fsync, rename, fsync dir).
    fn set_meta(&self, meta: &WalMeta) -> Result<(), WalError>;

    /// Whether `sync` and friends may block the thread (real disks: yes).
    /// An in-memory log answers no, so the runtime calls it inline and a
    /// simulation stays deterministic.
    fn may_block(&self) -> bool {
        true
    }
}

/// Checks an append against the log's tail; shared by every implementation.
pub(crate) fn check_append(
    last_lsn: Lsn,
    last_epoch: Epoch,
    records: &[Record],
) -> Result<(), WalError> {
    let mut expected = last_lsn.next();
    let mut epoch = last_epoch;
    for r in records {
        if r.lsn != expected {
            return Err(WalError::OutOfOrder {
                expected,
                got: r.lsn,
            });
        }
        if r.epoch < epoch {
            return Err(WalError::EpochRegression {
                lsn: r.lsn,
                epoch: r.epoch,
                last: epoch,
            });
        }
        epoch = r.epoch;
        expected = expected.next();
    }
    Ok(())
}
