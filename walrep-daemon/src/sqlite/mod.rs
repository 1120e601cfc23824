//! The SQLite engine (`--engine sqlite`): the daemon's key-value API over
//! one SQLite database file, `DIR/sqlite/store.db`.
//!
//! Why SQLite next to the in-memory demo engine (and not, say, redb): it is
//! the embedded store people already replicate (LiteFS, Litestream, rqlite
//! and dqlite all put SQLite behind a log), the whole state is one file in
//! a format documented for decades, and an operator can open it with the
//! `sqlite3` CLI (`SELECT * FROM walrep_state`) on either node, running or
//! not. Its WAL journal mode lets a snapshot read the database while
//! applies go on, which is what walrep's snapshot contract asks for. redb
//! would be pure Rust, but its file is readable only through redb itself.
//!
//! What it guarantees (`docs/DAEMON.md`):
//! - Exactly once across restarts: a batch of records is one SQLite
//!   transaction that also writes the batch's last LSN into
//!   `walrep_state` (`schema.rs`), so the state and the LSN it covers
//!   commit together; after a crash walrep replays only the records after
//!   it. `walrep_state.records_applied` counts applies so a double apply
//!   shows.
//! - Durability from walrep's WAL: commits run with `synchronous=NORMAL`,
//!   which does not fsync a commit (measured: ~11 µs a commit against
//!   ~166 µs with `FULL`, `benches/sqlite-commit-cost.py`); walrep's WAL
//!   already holds every record durably. So `durable_lsn` advances only
//!   when a checkpoint (`persist`, run by the node every `snapshot_records`
//!   records or `snapshot_interval_ms`) has put every committed frame into
//!   the fsynced database file, and only then may walrep trim its WAL.
//! - Snapshots beside applies and bounded memory: `snapshot.rs`.
//!
//! A snapshot holds SQLite's WAL from being checkpointed while it streams,
//! so `durable_lsn` does not advance meanwhile (walrep keeps its own WAL a
//! little longer).

mod schema;
mod snapshot;

use crate::kv::Command;
use bytes::Bytes;
use rusqlite::{Connection, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use walrep::{Lsn, StateMachine, StateMachineError};

pub use schema::{APPLICATION_ID, StoredState};

/// The database file in the engine's directory.
pub const STORE_FILE: &str = "store.db";

/// The SQLite engine. Share it with `Arc`: the replicator applies to it
/// and the HTTP API reads from it.
pub struct SqliteStore {
    dir: PathBuf,
    /// The one read-write connection: applies, reads, checkpoints. A
    /// snapshot opens a connection of its own, so it never holds this.
    conn: Mutex<Connection>,
    /// What `walrep_state` holds as of the last commit, for readers that
    /// must not wait behind a batch.
    applied: AtomicU64,
    state_hash: AtomicU64,
    /// The last LSN a checkpoint put into the fsynced database file.
    durable: AtomicU64,
    /// Snapshots handed to walrep as the database file itself whose guard
    /// (a read transaction) is still alive.
    pins: Arc<AtomicUsize>,
    /// The store's own handle on its database file, opened with the store
    /// and replaced only after its connection was (declared after `conn`,
    /// so it also closes after it): snapshots read the file through it and
    /// never open one of their own, whose close would drop the process's
    /// SQLite locks on the file (`snapshot.rs`).
    file: Mutex<Arc<std::fs::File>>,
    /// Reads of keys that may wait on blocking threads at once
    /// (`READ_THREADS`); the rest wait for a permit without a thread.
    pub(crate) reads: Arc<tokio::sync::Semaphore>,
}

/// How many reads of keys may hold a blocking thread at once. The store
/// has one connection, which a batch's commit or a checkpoint holds for
/// milliseconds or more; every read waiting for it holds a thread of the
/// runtime's blocking pool, which the node's WAL fsyncs and applies need
/// too. Unbounded, a burst of GETs filled that pool and made writes wait
/// behind reads. Two keep one read ready to run when the other ends.
pub(crate) const READ_THREADS: usize = 2;

/// A handle on the database file at `path`, for reading snapshots.
fn open_file(path: &Path) -> Result<Arc<std::fs::File>, StateMachineError> {
    std::fs::File::open(path)
        .map(Arc::new)
        .map_err(|e| StateMachineError::with_source(format!("opening {}", path.display()), e))
}

fn sql(what: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StateMachineError {
    let what = what.into();
    move |e| StateMachineError::with_source(what, e)
}

impl SqliteStore {
    /// Opens (or creates) the store in `dir`, first removing what an
    /// interrupted snapshot or restore left there.
    pub fn open(dir: impl AsRef<Path>) -> Result<SqliteStore, StateMachineError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| {
            StateMachineError::with_source(format!("creating {}", dir.display()), e)
        })?;
        snapshot::clean_up(&dir)?;
        let (conn, state) = schema::open_store(&dir.join(STORE_FILE))?;
        let file = open_file(&dir.join(STORE_FILE))?;
        let store = SqliteStore {
            dir,
            conn: Mutex::new(conn),
            applied: AtomicU64::new(state.applied.0),
            state_hash: AtomicU64::new(state.state_hash),
            durable: AtomicU64::new(0),
            pins: Arc::new(AtomicUsize::new(0)),
            file: Mutex::new(file),
            reads: Arc::new(tokio::sync::Semaphore::new(READ_THREADS)),
        };
        store.persist()?;
        Ok(store)
    }

    /// What the store at `path` (another process's too: WAL mode lets a
    /// reader in) holds in `walrep_state`, read without writing to it.
    pub fn inspect(path: &Path) -> Result<StoredState, StateMachineError> {
        schema::read_only(path).map(|(_, state)| state)
    }

    /// The path of the database file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STORE_FILE)
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, StateMachineError> {
        let conn = self.conn.lock().unwrap();
        let found = conn
            .prepare_cached("SELECT v FROM kv WHERE k = ?1")
            .and_then(|mut s| {
                use rusqlite::OptionalExtension;
                s.query_row([key], |r| r.get::<_, Vec<u8>>(0)).optional()
            })
            .map_err(sql("reading a key"))?;
        Ok(found.map(Bytes::from))
    }

    /// Runs `f` while holding the store's connection, as a batch's commit
    /// or a checkpoint does (tests of what waits for it).
    #[cfg(test)]
    pub(crate) fn with_connection_held<R>(&self, f: impl FnOnce() -> R) -> R {
        let _held = self.conn.lock().unwrap();
        f()
    }

    /// A hash of every (key, value): equal on two nodes iff their stores
    /// are (up to collisions). Kept in `walrep_state`, updated per record.
    pub fn state_hash(&self) -> u64 {
        self.state_hash.load(Ordering::Acquire)
    }

    /// The `walrep_state` row as committed.
    pub fn stored_state(&self) -> Result<StoredState, StateMachineError> {
        schema::read_state(&self.conn.lock().unwrap()).map_err(sql("reading walrep_state"))
    }

    /// Checkpoints SQLite's WAL into the database file; once every frame
    /// is there (fsynced), the LSN applied before it is durable and walrep
    /// may trim its WAL up to it. Returns the durable LSN.
    pub fn persist(&self) -> Result<Lsn, StateMachineError> {
        let conn = self.conn.lock().unwrap();
        // Every commit up to `applied` is in SQLite's WAL: the lock is held.
        let applied = self.applied.load(Ordering::Acquire);
        if schema::checkpoint(&conn).map_err(sql("checkpointing"))? {
            self.durable.fetch_max(applied, Ordering::AcqRel);
        }
        Ok(self.durable_lsn())
    }
}

impl StateMachine for SqliteStore {
    fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), StateMachineError> {
        self.apply_batch(&[(lsn, payload)]).map(drop)
    }

    /// Decodes every command first (a bad one applies none of the batch),
    /// then applies them and the batch's LSN in one transaction. A
    /// record's output is the value its key held before (empty if none, or
    /// if it was applied already), as with the KV engine.
    fn apply_batch(&self, records: &[(Lsn, &[u8])]) -> Result<Vec<Bytes>, StateMachineError> {
        let commands = Command::decode_batch(records)?;
        let mut conn = self.conn.lock().unwrap();
        let first = records.first().map_or(Lsn::ZERO, |r| r.0);
        let what = || format!("applying records {first}..");
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql(what()))?;
        let mut applied = Lsn(self.applied.load(Ordering::Acquire));
        let mut hash = self.state_hash.load(Ordering::Acquire);
        let mut count = 0i64;
        let mut outputs = Vec::with_capacity(records.len());
        for ((lsn, _), cmd) in records.iter().zip(commands) {
            if *lsn <= applied {
                outputs.push(Bytes::new());
                continue;
            }
            assert_eq!(*lsn, applied.next(), "records applied out of order");
            let key = match &cmd {
                Command::Put { key, .. } | Command::Delete { key } => key,
            };
            let old = schema::lookup(&tx, key).map_err(sql(format!("record {lsn}")))?;
            if let Some((_, old_hash)) = &old {
                hash ^= old_hash;
            }
            let done = match &cmd {
                Command::Put { key, value } => {
                    let h = entry_hash(key, value);
                    hash ^= h;
                    tx.prepare_cached(
                        "INSERT INTO kv (k, v, h) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (k) DO UPDATE SET v = excluded.v, h = excluded.h",
                    )
                    .and_then(|mut s| s.execute(params![key, &value[..], h as i64]))
                }
                Command::Delete { key } if old.is_some() => tx
                    .prepare_cached("DELETE FROM kv WHERE k = ?1")
                    .and_then(|mut s| s.execute([key])),
                Command::Delete { .. } => Ok(0),
            };
            done.map_err(sql(format!("record {lsn}")))?;
            outputs.push(old.map(|(v, _)| Bytes::from(v)).unwrap_or_default());
            applied = *lsn;
            count += 1;
        }
        tx.execute(
            "UPDATE walrep_state SET applied_lsn = ?1, state_hash = ?2, \
             records_applied = records_applied + ?3",
            params![applied.0 as i64, hash as i64, count],
        )
        .and_then(|_| tx.commit())
        .map_err(sql(what()))?;
        self.state_hash.store(hash, Ordering::Release);
        self.applied.store(applied.0, Ordering::Release);
        Ok(outputs)
    }

    fn applied_lsn(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Acquire))
    }

    fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable.load(Ordering::Acquire))
    }

    /// The database file, streamed while a read transaction holds it
    /// still (`snapshot.rs`): applies wait only for a checkpoint, then go
    /// on. The LSN is the one that state holds.
    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<Lsn, StateMachineError> {
        self.pin()?.write(out)
    }

    /// The database file itself, read in place while a read transaction
    /// that the source keeps open holds it still (`snapshot.rs`): walrep
    /// sends it with no copy. Refused while an earlier pinned state lives:
    /// pinning again needs a complete checkpoint, which would wait behind
    /// that reader with the writer held; walrep drops its source once the
    /// build is stale or unused, and the standby asks again.
    fn snapshot_source(
        &self,
    ) -> Result<Option<Box<dyn walrep::SnapshotSource>>, StateMachineError> {
        if self.pins.load(Ordering::Acquire) > 0 {
            return Err(StateMachineError::new(format!(
                "an earlier snapshot of {} is still held for a transfer; the next request tries \
                 again once it is released",
                self.path().display()
            )));
        }
        Ok(Some(Box::new(self.pin()?.into_source(self.pins.clone()))))
    }

    /// Streams the snapshot into a temporary file, checks it is a walrep
    /// store at `lsn`, then swaps it in atomically and reopens it.
    fn restore(&self, lsn: Lsn, input: &mut dyn std::io::Read) -> Result<(), StateMachineError> {
        let received = snapshot::receive(&self.dir, lsn, input)?;
        self.swap_in(received)
    }

    /// Renames walrep's received file into place instead of copying it
    /// (the snapshot directory is under the daemon's data directory, on
    /// the same file system); checks it as `restore` does. Copies through
    /// `restore` if the two are on different file systems.
    fn restore_file(&self, lsn: Lsn, path: &Path) -> Result<(), StateMachineError> {
        match snapshot::adopt(&self.dir, lsn, path)? {
            Some(received) => self.swap_in(received),
            None => {
                let file = std::fs::File::open(path).map_err(|e| {
                    StateMachineError::with_source(format!("opening {}", path.display()), e)
                })?;
                self.restore(lsn, &mut std::io::BufReader::with_capacity(1 << 20, file))
            }
        }
    }
}

impl SqliteStore {
    /// The current state pinned in the database file, with the writer held
    /// only for the checkpoint that needs.
    fn pin(&self) -> Result<snapshot::Pinned, StateMachineError> {
        let conn = self.conn.lock().unwrap();
        let path = self.path();
        let file = {
            let mut file = self.file.lock().unwrap();
            // A handle on a file the store no longer is (a restore whose
            // reopening failed) would send another state's bytes.
            let same = |f: &std::fs::File| -> std::io::Result<bool> {
                use std::os::unix::fs::MetadataExt;
                let (held, live) = (f.metadata()?, std::fs::metadata(&path)?);
                Ok((held.dev(), held.ino()) == (live.dev(), live.ino()))
            };
            if !same(&file).map_err(|e| {
                StateMachineError::with_source(format!("checking {}", path.display()), e)
            })? {
                *file = open_file(&path)?;
            }
            file.clone()
        };
        snapshot::pin(&conn, &path, file)
    }

    /// Puts a received, checked snapshot in place of the store.
    fn swap_in(&self, received: snapshot::Received) -> Result<(), StateMachineError> {
        let mut conn = self.conn.lock().unwrap();
        let (new_conn, state) = snapshot::swap_in(&self.dir, &mut conn, received)?;
        *conn = new_conn;
        // The old file's handle goes only now, after its connection (if
        // this fails, the next snapshot opens it).
        if let Ok(file) = open_file(&self.path()) {
            *self.file.lock().unwrap() = file;
        }
        self.state_hash.store(state.state_hash, Ordering::Release);
        self.applied.store(state.applied.0, Ordering::Release);
        // The received file was fsynced before the rename.
        self.durable.store(state.applied.0, Ordering::Release);
        Ok(())
    }
}

/// The hash of one (key, value): eight bytes a step, each field
/// length-prefixed so no two pairs feed the same words, and a final mix so
/// that the XOR of many entries keeps no structure.
fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for field in [key, value] {
        h = (h ^ field.len() as u64).wrapping_mul(K).rotate_left(31);
        let mut words = field.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            h = (h ^ w).wrapping_mul(K).rotate_left(31);
        }
        let mut tail = [0u8; 8];
        tail[..words.remainder().len()].copy_from_slice(words.remainder());
        h = (h ^ u64::from_le_bytes(tail))
            .wrapping_mul(K)
            .rotate_left(31);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests;
