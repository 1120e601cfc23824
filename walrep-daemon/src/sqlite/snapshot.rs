//! Snapshots of the SQLite store: built beside applies, streamed, and
//! swapped in atomically, with memory bounded by one copy buffer.
//!
//! Build (`pin`, then `Pinned::into_source` for walrep to read the
//! database file itself, or `Pinned::write` to stream it into a writer):
//! with the writer held for a moment,
//! a checkpoint puts every frame of SQLite's WAL into the database file,
//! then a read transaction begins on a connection of its own. With the WAL
//! fully checkpointed, SQLite has that reader read the database file alone
//! under its read lock 0, and no checkpoint copies a frame into the file
//! while that lock is held (`walTryBeginRead` and `walCheckpoint` in
//! SQLite's wal.c): the file stays exactly the state the reader sees,
//! whose `walrep_state` gives the LSN. The writer is released and applies
//! go on (into SQLite's WAL) while the file's bytes stream to walrep: no
//! copy of the store on disk, no per-page work (an online-backup copy to a
//! temporary file first took longer than the transfer itself).
//!
//! The bytes are read through the store's own handle on the database file
//! (`SqliteStore::file`, opened with the store and closed only after its
//! connection), never through a descriptor opened for the snapshot: SQLite
//! locks with POSIX advisory locks, which belong to the process, and
//! closing *any* descriptor of the file drops all of them. A snapshot that
//! opened and closed the file would leave the store's connection without
//! its locks, and another process's SQLite client (an operator's `sqlite3`)
//! could then checkpoint and delete the WAL under the running node.
//!
//! Restore (`adopt` or `receive`, then `swap_in`): walrep's received file
//! (fsynced and CRC-checked by walrep) is renamed to `restore.tmp`, no
//! copy (`StateMachine::restore_file`; a reader given to `restore` is
//! streamed into `restore.tmp` and fsynced instead); the file is checked
//! (the SQLite header, the length the header announces, a walrep store,
//! the announced LSN) before anything is
//! touched: a corrupt or foreign snapshot is refused with the store as it
//! was. Then the live connection closes, the old file is renamed to
//! `replaced.tmp` (its `-wal` and `-shm` files removed: they belong to it),
//! `restore.tmp` is renamed to `store.db`, the directory fsynced, and the
//! store reopened. A crash anywhere in between leaves the old store (put
//! back at open if it was moved aside already, `clean_up`) or the new one,
//! never a mix. `clean_up` at open removes every `*.tmp*`, and a
//! `-wal` left without its database.

use super::STORE_FILE;
use super::schema::{self, StoredState};
use rusqlite::Connection;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use walrep::{Lsn, SnapshotSource, StateMachineError};

/// Bytes moved per read and write when streaming a file.
const COPY_BUFFER: usize = 1 << 20;
const RECEIVED: &str = "restore.tmp";
const REPLACED: &str = "replaced.tmp";
/// The SQLite file format's first 16 bytes.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

fn io(what: String) -> impl FnOnce(std::io::Error) -> StateMachineError {
    move |e| StateMachineError::with_source(what, e)
}

/// Removes a file when dropped unless `keep` was called.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("kept once")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Removes what an interrupted restore left in `dir`, and the
/// `-wal`/`-shm` files of a store that is not there (a new store must not
/// replay another file's WAL). A restore interrupted after it moved the
/// store aside and before the snapshot took its place left no store but
/// the old one, whole, as `replaced.tmp`: it goes back (with any `-wal`
/// still beside it, which is its own), rather than starting empty and
/// needing a peer's snapshot again. The node's WAL was not reset yet
/// then, so it still follows the old store.
pub fn clean_up(dir: &Path) -> Result<(), StateMachineError> {
    let (store, replaced) = (dir.join(STORE_FILE), dir.join(REPLACED));
    if !store.exists() && replaced.exists() {
        std::fs::rename(&replaced, &store)
            .and_then(|()| File::open(dir)?.sync_all())
            .map_err(io(format!(
                "putting back {} that an interrupted restore moved aside",
                replaced.display()
            )))?;
        tracing::info!(store = %store.display(), "a restore was interrupted before the snapshot replaced the store: the store it moved aside is back");
    }
    let entries = std::fs::read_dir(dir).map_err(io(format!("listing {}", dir.display())))?;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().contains(".tmp") {
            std::fs::remove_file(e.path())
                .map_err(io(format!("removing the leftover {}", e.path().display())))?;
        }
    }
    if !dir.join(STORE_FILE).exists() {
        remove_journal_files(dir)?;
    }
    Ok(())
}

fn remove_journal_files(dir: &Path) -> Result<(), StateMachineError> {
    for suffix in ["-wal", "-shm"] {
        let p = dir.join(format!("{STORE_FILE}{suffix}"));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", p.display()))(e)),
        }
    }
    Ok(())
}

/// Pins the current state of the store at `store`: its database file
/// holds that state, and only it, until the returned `Pinned` is written
/// or dropped. `writer` is the store's read-write connection, locked by
/// the caller so that no commit happens until `pin` returns, and `file`
/// the store's own handle on the database file (the bytes are read
/// through it); an error if another reader keeps the checkpoint from
/// completing.
pub fn pin(
    writer: &Connection,
    store: &Path,
    file: Arc<File>,
) -> Result<Pinned, StateMachineError> {
    let sql = |what: &'static str| {
        let what = format!("{what} for a snapshot of {}", store.display());
        move |e: rusqlite::Error| StateMachineError::with_source(what, e)
    };
    // Every frame of SQLite's WAL into the database file...
    if !schema::checkpoint_all(writer).map_err(sql("checkpointing"))? {
        return Err(StateMachineError::new(format!(
            "a snapshot of {} needs a complete checkpoint and another reader kept it from \
             finishing; the next request tries again",
            store.display()
        )));
    }
    // ...so a read transaction begun now, with the WAL fully backfilled,
    // reads the database file alone and holds SQLite's read lock 0, which
    // no checkpoint can pass: the file stays this state until it ends
    // (the writer goes on appending to the WAL).
    let reader = Connection::open_with_flags(
        store,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql("opening a reader"))?;
    reader
        .execute_batch("BEGIN")
        .map_err(sql("beginning a read transaction"))?;
    let state = schema::read_state(&reader).map_err(sql("reading walrep_state"))?;
    let pages: u64 = reader
        .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
        .map_err(sql("reading the page count"))? as u64;
    let page_size: u64 = reader
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .map_err(sql("reading the page size"))? as u64;
    Ok(Pinned {
        reader,
        lsn: state.applied,
        len: pages * page_size,
        path: store.to_path_buf(),
        file,
    })
}

/// A state of the store held still by an open read transaction.
pub struct Pinned {
    /// Ends the read transaction when dropped.
    reader: Connection,
    pub lsn: Lsn,
    len: u64,
    path: PathBuf,
    /// The store's own handle on the database file.
    file: Arc<File>,
}

/// Keeps a pinned state's database file unchanged while it lives (its
/// read transaction), and counts itself in `pins` meanwhile.
struct PinGuard {
    _reader: std::sync::Mutex<Connection>,
    pins: Arc<AtomicUsize>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pinned {
    /// The pinned state as a source walrep reads the database file's
    /// first `len` bytes from, without a copy: they stay this state while
    /// the source or any reader it opened lives (the read transaction).
    /// `pins` counts the pinned states alive.
    pub fn into_source(self, pins: Arc<AtomicUsize>) -> PinnedSource {
        pins.fetch_add(1, Ordering::AcqRel);
        tracing::info!(lsn = %self.lsn, bytes = self.len, "SQLite snapshot pinned in place");
        PinnedSource {
            lsn: self.lsn,
            len: self.len,
            file: self.file,
            guard: Arc::new(PinGuard {
                _reader: std::sync::Mutex::new(self.reader),
                pins,
            }),
        }
    }

    /// Streams the pinned state's `len` bytes of the database file.
    pub fn write(self, out: &mut dyn Write) -> Result<Lsn, StateMachineError> {
        let started = std::time::Instant::now();
        let shown = self.path.display();
        let mut bytes_of = FileRange {
            file: self.file.clone(),
            at: 0,
            end: self.len,
            _guard: None,
        };
        let bytes = copy_all(&mut bytes_of, out).map_err(io(format!("streaming {shown}")))?;
        if bytes != self.len {
            return Err(StateMachineError::new(format!(
                "{shown} ended after {bytes} of the {} bytes its header announced",
                self.len
            )));
        }
        drop(self.reader);
        tracing::info!(
            lsn = %self.lsn,
            bytes,
            stream_ms = started.elapsed().as_millis() as u64,
            "SQLite snapshot written"
        );
        Ok(self.lsn)
    }
}

/// A pinned state of the store, read from the database file in place.
pub struct PinnedSource {
    lsn: Lsn,
    len: u64,
    file: Arc<File>,
    guard: Arc<PinGuard>,
}

impl SnapshotSource for PinnedSource {
    fn lsn(&self) -> Lsn {
        self.lsn
    }

    fn total_bytes(&self) -> u64 {
        self.len
    }

    fn read_from(&self, offset: u64) -> Result<Box<dyn Read + Send>, StateMachineError> {
        Ok(Box::new(FileRange {
            file: self.file.clone(),
            at: offset.min(self.len),
            end: self.len,
            _guard: Some(self.guard.clone()),
        }))
    }
}

/// Bytes `at..end` of a file read at their offsets (`pread`), through a
/// shared handle that reading never closes; holds the pin, if any, while
/// it lives.
struct FileRange {
    file: Arc<File>,
    at: u64,
    end: u64,
    _guard: Option<Arc<PinGuard>>,
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min((self.end - self.at) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Copies `from` into `to` through one buffer of `COPY_BUFFER` bytes.
fn copy_all(from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

/// A received snapshot, fsynced and checked, not yet in place.
pub struct Received(TempFile);

/// Streams `input` into `dir/restore.tmp`, fsyncs it and checks that it is
/// a whole walrep store holding `lsn`.
pub fn receive(dir: &Path, lsn: Lsn, input: &mut dyn Read) -> Result<Received, StateMachineError> {
    let path = dir.join(RECEIVED);
    let shown = path.display();
    let tmp = TempFile(Some(path.clone()));
    let started = std::time::Instant::now();
    let mut file = std::fs::File::create(&path).map_err(io(format!("creating {shown}")))?;
    let len = copy_all(input, &mut file).map_err(io(format!("writing {shown}")))?;
    let written = started.elapsed();
    file.sync_all().map_err(io(format!("syncing {shown}")))?;
    drop(file);
    tracing::info!(
        %lsn,
        bytes = len,
        write_ms = written.as_millis() as u64,
        fsync_ms = (started.elapsed() - written).as_millis() as u64,
        "SQLite snapshot received"
    );
    check_received(&path, len, lsn)?;
    Ok(Received(tmp))
}

/// Moves the received snapshot at `from` (fsynced by walrep) to
/// `dir/restore.tmp` without copying it, and checks that it is a whole
/// walrep store holding `lsn`, as `receive` does. `Ok(None)` when `from`
/// is on another file system (the caller copies instead).
pub fn adopt(dir: &Path, lsn: Lsn, from: &Path) -> Result<Option<Received>, StateMachineError> {
    let path = dir.join(RECEIVED);
    match std::fs::rename(from, &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => return Ok(None),
        Err(e) => {
            return Err(io(format!(
                "moving the received snapshot {} to {}",
                from.display(),
                path.display()
            ))(e));
        }
    }
    let tmp = TempFile(Some(path.clone()));
    let len = std::fs::metadata(&path)
        .map_err(io(format!("reading the length of {}", path.display())))?
        .len();
    tracing::info!(%lsn, bytes = len, "SQLite snapshot adopted from walrep's file, not copied");
    check_received(&path, len, lsn)?;
    Ok(Some(Received(tmp)))
}

/// Checks that the received file at `path`, `len` bytes long, is an
/// SQLite database of that length and a walrep store holding `lsn`.
fn check_received(path: &Path, len: u64, lsn: Lsn) -> Result<(), StateMachineError> {
    check_file(path, len)?;
    let (_, state) = schema::read_only(path)
        .map_err(|e| StateMachineError::with_source("the snapshot is not a walrep store", e))?;
    if state.applied != lsn {
        return Err(StateMachineError::new(format!(
            "the snapshot holds the state at LSN {} but was sent as the state at LSN {lsn}; \
             nothing was replaced",
            state.applied
        )));
    }
    Ok(())
}

/// Checks the SQLite header of the file at `path`, `len` bytes long: its
/// magic, and that it is as long as the header says.
fn check_file(path: &Path, len: u64) -> Result<(), StateMachineError> {
    let mut header = [0u8; 100];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    if read.is_err() || &header[..16] != SQLITE_HEADER {
        return Err(StateMachineError::new(format!(
            "the snapshot is not an SQLite database ({len} bytes that do not start with the \
             SQLite header); nothing was replaced"
        )));
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    let be32 = |at: usize| u32::from_be_bytes(header[at..at + 4].try_into().unwrap());
    // The page count in the header is valid when its version number
    // matches the change counter (SQLite file format, section 1.3.7).
    let pages = u64::from(be32(28));
    if be32(92) == be32(24) && pages * page_size != len {
        return Err(StateMachineError::new(format!(
            "the snapshot is {len} bytes but its header says {pages} pages of {page_size} \
             bytes ({}): it is truncated or corrupt; nothing was replaced",
            pages * page_size
        )));
    }
    Ok(())
}

/// Puts `received` in place of the store whose connection is `conn`
/// (closed here) and opens it: the new connection and its state.
pub fn swap_in(
    dir: &Path,
    conn: &mut Connection,
    received: Received,
) -> Result<(Connection, StoredState), StateMachineError> {
    let store = dir.join(STORE_FILE);
    let old = std::mem::replace(
        conn,
        Connection::open_in_memory()
            .map_err(|e| StateMachineError::with_source("opening a placeholder connection", e))?,
    );
    old.close().map_err(|(_, e)| {
        StateMachineError::with_source(format!("closing {}", store.display()), e)
    })?;
    let replaced = dir.join(REPLACED);
    if store.exists() {
        std::fs::rename(&store, &replaced)
            .map_err(io(format!("moving {} aside", store.display())))?;
    }
    remove_journal_files(dir)?;
    let received = received.0.keep();
    std::fs::rename(&received, &store).map_err(io(format!(
        "renaming {} to {}",
        received.display(),
        store.display()
    )))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing {}", dir.display())))?;
    let _ = std::fs::remove_file(&replaced);
    let opened = schema::open_store(&store)?;
    tracing::info!(lsn = %opened.1.applied, "SQLite store replaced by the snapshot");
    Ok(opened)
}
