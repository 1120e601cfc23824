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
/// engine answers `Lsn::ZERO` and gets the whole log replayed while the WAL
/// still holds all of it (see `durable_lsn`).
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
    ///
    /// The WAL keeps a record while the engine has not made it durable
    /// (above this LSN) or the standby has not flushed it, but never more
    /// than `Config::wal_retention_bytes`: beyond that bound the oldest
    /// records go whatever this returns. The default (`Lsn::ZERO`, "nothing
    /// is durable") therefore keeps the newest `wal_retention_bytes` of WAL,
    /// not the whole log. After a restart walrep replays the WAL from
    /// `applied_lsn() + 1`; if that record is gone (the engine restarted
    /// with less state than the trimmed WAL covers, as an engine with no
    /// durable state of its own does once more than `wal_retention_bytes`
    /// was written), walrep never applies the partial log: the node resyncs
    /// its state from the peer's snapshot (`restore`) and serves only after
    /// that. If the peer cannot serve one (it is down too, or it restarted
    /// with no state either), the node waits as a fenced node for an
    /// operator; records that only this node's trimmed WAL and lost memory
    /// held are gone. Report durability to keep the WAL a restart needs.
    ///
    /// Exactly once across restarts: records at or below `applied_lsn()`
    /// are not applied again, so the engine must store its applied LSN
    /// atomically with the data it covers (in the same file, transaction or
    /// batch) and return from both `applied_lsn()` and `durable_lsn()` what
    /// that stored state holds after a restart. A state that holds a record's
    /// effect but an older LSN gets the record applied twice; a newer LSN
    /// without the effect loses it. The daemon's demo KV engine
    /// (`walrep-daemon/src/kv/`: `KvStore::persist_snapshot` and
    /// `snapshot_file.rs`) writes the map and its LSN into one file that it
    /// replaces atomically, and answers `durable_lsn()` with that file's LSN.
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
