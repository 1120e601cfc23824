//! The engine's side: what walrep applies committed records to.

use crate::types::Lsn;
use bytes::Bytes;

/// A copy of the engine's state covering every record up to `lsn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The last record the state reflects.
    pub lsn: Lsn,
    /// The state, in the engine's own encoding (walrep only carries it).
    pub data: Bytes,
}

/// A state machine's failure, in words; it stops the node.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StateMachineError(pub String);

/// Implemented by the engine: what a committed record does to its state.
///
/// Order and concurrency: walrep calls `apply` from one task at a time, in
/// LSN order, exactly once per record (records at or below
/// `applied_lsn()` are skipped), and only for committed records on the
/// primary / flushed records on the standby. `snapshot` may run on another
/// thread at the same time as `apply` (a primary serving its standby), so
/// it must capture a consistent state as of one LSN. `restore` is called
/// only while the node rejoins, never concurrently with `apply`. The
/// engine's own readers may call into it at any time.
///
/// Durability: walrep does not need `apply` to be durable. At start it
/// replays the WAL from `applied_lsn() + 1`, so after a crash
/// `applied_lsn()` must not claim more than the state holds; an in-memory
/// engine answers `Lsn::ZERO` and gets the whole log replayed, as long as
/// `durable_lsn` lets walrep keep it.
///
/// Methods may block briefly (`apply` runs on the replication runtime);
/// keep `apply` fast or hand work to your own threads.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the record at `lsn`. An error stops the node: the state
    /// machine and the log would disagree from then on.
    fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), StateMachineError>;

    /// The last LSN applied.
    fn applied_lsn(&self) -> Lsn;

    /// The LSN up to which the engine's state survives a crash on its own
    /// (a durable snapshot); walrep may delete WAL records at or below it.
    /// The default keeps the whole WAL.
    fn durable_lsn(&self) -> Lsn {
        Lsn::ZERO
    }

    /// A snapshot of the state as of `applied_lsn()`, for a standby that
    /// must resync.
    fn snapshot(&self) -> Result<Snapshot, StateMachineError>;

    /// Replaces the whole state with `snapshot`; afterwards
    /// `applied_lsn() == snapshot.lsn`.
    fn restore(&self, snapshot: Snapshot) -> Result<(), StateMachineError>;
}
