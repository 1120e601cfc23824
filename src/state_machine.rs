//! The engine's side: what walrep applies committed records to.

use crate::types::Lsn;
use std::io::{Read, Write};

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
/// it must capture a consistent state as of one LSN (how is the engine's
/// choice: a read transaction, a checkpoint, a copy-on-write clone, a
/// lock held while it writes). `restore` is called only while the node
/// rejoins, never concurrently with `apply`. The engine's own readers may
/// call into it at any time.
///
/// Snapshots are streamed, never one buffer: `snapshot` writes into a sink
/// (on the primary, a file in the snapshot directory that walrep then
/// sends in chunks of `Config::snapshot_chunk_bytes`) and `restore` reads
/// from a source (on the standby, the received file, checked for length
/// and CRC32C before `restore` sees a byte). Both are blocking and walrep
/// calls them on blocking threads, never on the runtime's threads; they
/// may take as long as the state needs (the transfer's timeouts do not
/// run while the primary's engine builds).
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

    /// Writes a consistent copy of the state, as of one LSN, into `out`
    /// in the engine's own encoding (walrep only stores and carries the
    /// bytes), and returns that LSN: every record up to it and none after
    /// is in the copy. Write as you go; buffering is `out`'s business. An
    /// error abandons the snapshot (the standby asks again later); it does
    /// not stop the node.
    fn snapshot(&self, out: &mut dyn Write) -> Result<Lsn, StateMachineError>;

    /// Replaces the whole state with the snapshot read from `input` (bytes
    /// an earlier `snapshot` wrote, checked end to end), which covers every
    /// record up to `lsn`; afterwards `applied_lsn() == lsn`. Read as you
    /// go. An error stops the rejoin and the node: the state may be half
    /// replaced.
    fn restore(&self, lsn: Lsn, input: &mut dyn Read) -> Result<(), StateMachineError>;
}
