//! The engine's side: what walrep applies committed records to.

use crate::types::Lsn;
use bytes::Bytes;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// A state machine's failure: what went wrong in words, and the error
/// behind it if there was one (`std::error::Error::source`). What it does
/// to the node depends on the call (see `StateMachine`).
#[derive(Debug)]
pub struct StateMachineError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl StateMachineError {
    /// A failure described by `message` alone.
    pub fn new(message: impl Into<String>) -> StateMachineError {
        StateMachineError {
            message: message.into(),
            source: None,
        }
    }

    /// A failure described by `message`, caused by `source` (kept, and
    /// returned by `source()`).
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> StateMachineError {
        StateMachineError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The message, without the source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message and every source after it, `a: b: c`, for a log line or
    /// a failure reason.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

impl std::fmt::Display for StateMachineError {
    /// The message only; the cause is `source()` (or see `chain`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StateMachineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A snapshot the engine already holds in a file of its own, which walrep
/// sends as it is instead of having `snapshot` copy it
/// (`StateMachine::snapshot_file`).
///
/// The first `len` bytes of the file at `path` are the snapshot, in the
/// encoding `snapshot` writes and `restore` reads, and cover every record
/// up to `lsn` and none after. They must not change while `guard` lives
/// (a hard link to a snapshot file the engine never rewrites in place, an
/// open read transaction that no checkpoint passes). walrep opens the file
/// itself and closes it when done: a file the engine's own process holds
/// POSIX locks on, as SQLite's database file, must not be offered here,
/// because closing any descriptor of it drops all of that process's
/// locks. Offer a `SnapshotSource` reading through the engine's own
/// handle instead (the daemon's SQLite engine does). `lsn` may be below
/// `applied_lsn()`: walrep uses the
/// file only if its WAL still holds every record after `lsn`, and calls
/// `snapshot` otherwise. walrep serves transfers from the file, taking
/// its CRC32C as the first transfer reads it (sent after the data), and
/// drops the guard when the snapshot is replaced, goes stale, or stays
/// unused for a while (a held guard may hold back the engine's own
/// housekeeping). walrep never writes, moves or deletes the file.
pub struct SnapshotFile {
    /// The file.
    pub path: PathBuf,
    /// How many of its first bytes are the snapshot.
    pub len: u64,
    /// The last record the snapshot covers.
    pub lsn: Lsn,
    /// Keeps the bytes unchanged until dropped.
    pub guard: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("lsn", &self.lsn)
            .finish_non_exhaustive()
    }
}

/// A consistent copy of the state that the engine produces on demand,
/// from a frozen view of it, instead of writing it out first
/// (`StateMachine::snapshot_source`): a copy-on-write clone of an
/// in-memory map, an MVCC read view. walrep sends its bytes as it reads
/// them, so the transfer starts at once and no store-sized copy is made
/// on the primary.
///
/// The bytes are the encoding `snapshot` would write and `restore` reads,
/// and cover every record up to `lsn()` and none after. Every reader
/// opened at an offset yields exactly the bytes from that offset to
/// `total_bytes()`, the same each time, whatever the engine applied since:
/// walrep opens one reader per transfer, from offset 0 or from where a cut
/// transfer stopped, and several transfers may read at once on different
/// threads. walrep drops the source (and with it the view) when it is
/// replaced, goes stale, or stays unused for a while.
pub trait SnapshotSource: Send + Sync {
    /// The last record the copy covers.
    fn lsn(&self) -> Lsn;

    /// Its length in bytes, known before any byte is produced.
    fn total_bytes(&self) -> u64;

    /// A reader of the bytes from `offset` (at most `total_bytes()`) to
    /// the end. Called on a blocking thread; the reader is read there too.
    fn read_from(&self, offset: u64) -> Result<Box<dyn Read + Send>, StateMachineError>;
}

/// The most payload bytes a batch may hold to be applied on the runtime's
/// thread, for an engine that says it can be
/// (`StateMachine::can_apply_inline`): a batch of small writes, whose
/// apply takes microseconds; large values go to a blocking thread.
pub const INLINE_APPLY_MAX_BYTES: usize = 64 << 10;

/// Implemented by the engine: what a committed record does to its state.
///
/// Order and concurrency: walrep calls `apply_batch` (whose default calls
/// `apply` per record) from one task at a time, on a blocking thread (see
/// `can_apply_inline` for an exception), in
/// LSN order, exactly once per record (records at or below
/// `applied_lsn()` are skipped), and only for committed records on the
/// primary / flushed records on the standby. `snapshot` may run on another
/// thread at the same time as `apply` (a primary serving its standby), so
/// it must capture a consistent state as of one LSN (how is the engine's
/// choice: a read transaction, a checkpoint, a copy-on-write clone, a
/// lock held while it writes); so may `snapshot_file`. `restore` and
/// `restore_file` are called only while the node rejoins, never
/// concurrently with `apply`. The engine's own readers may
/// call into it at any time.
///
/// Snapshots are streamed, never one buffer. On the primary, walrep takes
/// the first the engine offers of: `snapshot_source` (bytes produced from
/// a frozen view as they are sent: no copy, the transfer starts at once),
/// `snapshot_file` (a file of the engine's, sent as it is), `snapshot`
/// (written into a sink: a file in the snapshot directory that walrep then
/// sends), each in chunks of `Config::snapshot_chunk_bytes`. On the
/// standby, `restore_file` gets the received file once it is whole
/// (checked for length and CRC32C before the engine sees a byte; its
/// default reads it through `restore`), or, for an engine that says it
/// `restores_while_receiving`, `restore_while_receiving` reads the bytes
/// as they arrive and ends with the same check. All are blocking and walrep
/// calls them on blocking threads, never on the runtime's threads (except
/// over a WAL whose `may_block()` is false, the in-memory test WAL, where
/// every call runs inline so a simulation stays reproducible); they
/// may take as long as the state needs (the transfer's timeouts do not
/// run while the primary's engine builds).
///
/// Durability: walrep does not need `apply` to be durable. At start it
/// replays the WAL from `applied_lsn() + 1`, so after a crash
/// `applied_lsn()` must not claim more than the state holds; an in-memory
/// engine answers `Lsn::ZERO` and gets the whole log replayed while the WAL
/// still holds all of it (see `durable_lsn`).
///
/// Applies run on a blocking thread, never on the replication runtime's
/// threads (the same exception for an in-memory WAL), so an engine may
/// take a transaction's time per batch. An engine whose applies only touch
/// memory says so (`can_apply_inline`), and then its small batches are
/// applied on the runtime's thread instead, which saves two thread
/// hand-offs per commit.
///
/// What an apply error does: the node stops as failed. Every record
/// before the failing call stays applied (and `applied_lsn()` says how
/// far); the records of the failing call count as not applied, so an
/// engine that commits a batch in one transaction must commit none of it
/// on error (one that applies record by record must leave `applied_lsn()`
/// at the last record it did apply). From then on the node applies
/// nothing, refuses every write and every promotion (`Error::Unavailable`
/// naming the failure, also to the writers waiting on records not yet
/// applied: their records are in the WAL and their outcome is unknown,
/// as after a crash), and reports `RoleKind::Failed` in `Health`, where
/// the operator (or the engine) sees it. Recovery is a restart: walrep replays the WAL
/// from `applied_lsn() + 1`, so a transient failure (a full disk) clears;
/// a record the engine can never apply must be fixed in the engine, or the
/// node's state discarded so it resyncs from its peer's snapshot.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the record at `lsn`; an error is an apply error (above).
    fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), StateMachineError>;

    /// Applies `records` (consecutive LSNs, ascending, all committed) in
    /// one call, so the engine can commit them in one transaction, and
    /// returns one output per record, in order: on the primary, the output
    /// of a record written through `Replicator::apply` reaches its writer
    /// as `Applied::output` (on a standby, and for records replayed at
    /// start, outputs are dropped). Returning fewer or more outputs than
    /// records is an apply error. The default calls `apply` for each
    /// record and returns empty outputs.
    fn apply_batch(&self, records: &[(Lsn, &[u8])]) -> Result<Vec<Bytes>, StateMachineError> {
        for (lsn, payload) in records {
            self.apply(*lsn, payload)?;
        }
        Ok(vec![Bytes::new(); records.len()])
    }

    /// Whether `apply_batch(records)` would take microseconds and never
    /// wait: no I/O, no fsync, no lock that slow work holds (an in-memory
    /// map behind a lock held only briefly, touching no more than these
    /// records' bytes and as many again of the values they replace). If
    /// so, walrep applies the batch on the replication runtime's thread
    /// that read it, instead of handing it to a blocking thread and back:
    /// on a small machine those two hand-offs cost a standby about a third
    /// of its CPU per write. walrep asks only about batches of at most
    /// `INLINE_APPLY_MAX_BYTES` of payload, so the engine judges only what
    /// the payloads do not show (a delete of a large value, say). An
    /// engine that answers `true` and then blocks stalls the node's
    /// heartbeats and replication while it does. The default, `false`,
    /// applies every batch on a blocking thread.
    fn can_apply_inline(&self, records: &[(Lsn, &[u8])]) -> bool {
        let _ = records;
        false
    }

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
    /// replaces atomically, and answers `durable_lsn()` with that file's LSN;
    /// its SQLite engine (`walrep-daemon/src/sqlite/`) writes the LSN in the
    /// transaction of each batch and answers `durable_lsn()` with what its
    /// last checkpoint fsynced.
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

    /// A consistent copy of the state that already lies in a file, for
    /// walrep to send as it is, sparing the store-sized copy `snapshot`
    /// makes into the snapshot directory (see `SnapshotFile` for what the
    /// file and its guard must hold). Called on a blocking thread, like
    /// `snapshot`, and tried first: `Ok(None)` means the engine has no
    /// such file and walrep calls `snapshot`; an error abandons this
    /// snapshot as `snapshot`'s does. The default is `Ok(None)`.
    fn snapshot_file(&self) -> Result<Option<SnapshotFile>, StateMachineError> {
        Ok(None)
    }

    /// A consistent copy of the state that the engine produces as it is
    /// read (see `SnapshotSource`), sparing both the copy `snapshot` makes
    /// and the disk. Called on a blocking thread and tried before
    /// `snapshot_file` and `snapshot`: `Ok(None)` (the default) means the
    /// engine has none; an error abandons this snapshot as `snapshot`'s
    /// does.
    fn snapshot_source(&self) -> Result<Option<Box<dyn SnapshotSource>>, StateMachineError> {
        Ok(None)
    }

    /// Replaces the whole state with the snapshot read from `input` (bytes
    /// an earlier `snapshot` wrote, checked end to end), which covers every
    /// record up to `lsn`; afterwards `applied_lsn() == lsn`. Read as you
    /// go. An error stops the rejoin and the node: the state may be half
    /// replaced.
    fn restore(&self, lsn: Lsn, input: &mut dyn Read) -> Result<(), StateMachineError>;

    /// Replaces the whole state with the snapshot in the file at `path`,
    /// as `restore` does with a reader; this is what walrep calls on the
    /// standby. The file holds exactly the bytes an earlier `snapshot`
    /// wrote: walrep has fsynced it and checked its length and CRC32C
    /// against what the primary announced. It lies in the snapshot
    /// directory (`ReplicaBuilder::snapshot_dir`), which an engine can put on its
    /// own file system so a rename is possible.
    ///
    /// The file is the engine's for the call: it may read it, or move it
    /// (`rename`) into its own directory and keep it, which spares a
    /// store-sized copy (the daemon's SQLite engine renames the received
    /// database file into place). Once the call returns, success or
    /// error, walrep removes whatever is still at `path`, so an engine
    /// that keeps the file must have moved it away, and must not keep the
    /// path itself. An error stops the rejoin and the node, as for
    /// `restore`.
    ///
    /// The default opens the file and calls `restore` with it, through a
    /// 256 KiB buffer.
    fn restore_file(&self, lsn: Lsn, path: &Path) -> Result<(), StateMachineError> {
        let file = std::fs::File::open(path).map_err(|e| {
            StateMachineError::with_source(
                format!("opening the received snapshot {}", path.display()),
                e,
            )
        })?;
        self.restore(lsn, &mut std::io::BufReader::with_capacity(256 << 10, file))
    }

    /// Whether walrep should call `restore_while_receiving` on a standby
    /// instead of `restore_file`: an engine that can build its new state
    /// while the snapshot arrives says `true`, and the restore then
    /// overlaps the transfer instead of following it. The default is
    /// `false`.
    fn restores_while_receiving(&self) -> bool {
        false
    }

    /// Replaces the whole state with the snapshot that `incoming` yields
    /// as it arrives from the primary: `len` bytes (as the primary
    /// announced them) covering every record up to `lsn`; afterwards
    /// `applied_lsn() == lsn`. Called on a blocking
    /// thread instead of `restore_file` when `restores_while_receiving`
    /// says so, as soon as the transfer starts.
    ///
    /// `incoming` ends (`Ok(0)`) only once every byte arrived and the
    /// whole snapshot is in the file at `path`, fsynced and checked for
    /// length and CRC32C, exactly as `restore_file` would get it; until
    /// then the file is being written and the engine must not touch it.
    /// After the end the file is the engine's, as in `restore_file` (it
    /// may move it into its store). If the transfer fails (cut, corrupt,
    /// refused), `incoming` returns an error instead of its end: the
    /// engine must then return an error and leave its state as it was
    /// (build the new state aside and swap it in only after the end), and
    /// walrep starts the restore again with the next transfer, whose
    /// `incoming` yields the snapshot from its first byte. An error after
    /// the end stops the rejoin and the node, as for `restore`.
    ///
    /// The default reads `incoming` to its end and calls `restore_file`.
    fn restore_while_receiving(
        &self,
        lsn: Lsn,
        len: u64,
        incoming: &mut dyn Read,
        path: &Path,
    ) -> Result<(), StateMachineError> {
        let _ = len;
        std::io::copy(incoming, &mut std::io::sink())
            .map_err(|e| StateMachineError::with_source("receiving the snapshot", e))?;
        self.restore_file(lsn, path)
    }
}
