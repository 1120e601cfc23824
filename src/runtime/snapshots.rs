//! The primary's snapshots, built (or borrowed from the engine) and served.
//!
//! One build at a time: a request that comes while the engine builds joins
//! that build (`PendingSnapshot` is a shared future), and a built snapshot
//! is reused for later requests while it is fresh: the WAL still has the
//! record after it (`first_lsn <= lsn + 1`) and still agrees about its
//! epoch, so a standby that restores it can continue with the stream. A
//! build runs to its end even if every request that wanted it went away,
//! so a standby that asks again (a cut transfer, a restart) finds it.
//!
//! A built snapshot is the engine's source, read as it is sent
//! (`StateMachine::snapshot_source`: no copy at all), or the engine's own
//! file (`StateMachine::snapshot_file`), or else a file
//! `snapshot-<id>.bin` in the snapshot directory holding exactly the
//! bytes `StateMachine::snapshot` wrote; its LSN, epoch and length are
//! kept beside it in memory and sent before the data. Its CRC32C is known
//! from the build for a file of walrep's (taken as the engine wrote it)
//! and sent before the data; for the engine's source or file it is taken
//! while the first transfer reads the data, and sent after it (`SnapshotPart::End`)
//! to a standby that asks for that, so the file is read once, not once
//! for the CRC and once more to send it. A walrep file goes when the
//! snapshot is replaced and its last transfer ends.
//! The standby receives into `incoming.snapshot` in the same directory,
//! beside its sidecar `incoming.info` (`incoming.rs`); those two outlive
//! a restart so that the transfer resumes.

use super::tasks::run_blocking;
use crate::state_machine::SnapshotSource;
use crate::state_machine::StateMachine;
use crate::types::{Epoch, Lsn};
use crate::wal::WalStore;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A snapshot being built or built: every request for it awaits a clone.
pub(crate) type PendingSnapshot = Shared<BoxFuture<'static, Result<Arc<BuiltSnapshot>, String>>>;

/// A snapshot ready to send: in a file, or produced by the engine as it
/// is read.
#[derive(Debug)]
pub(crate) struct BuiltSnapshot {
    /// Unique per build, across restarts of the primary too.
    pub id: u64,
    /// The last record it covers.
    pub lsn: Lsn,
    /// That record's epoch.
    pub epoch: Epoch,
    /// Its length in bytes.
    pub len: u64,
    /// CRC32C of all of it, once known: from the build for a file of
    /// walrep's, from the first full read (`crc_now` or a transfer that
    /// sent every byte, `note_crc`) for the engine's file or source.
    crc: std::sync::OnceLock<u32>,
    data: SnapshotData,
    may_block: bool,
}

/// Where a built snapshot's bytes are.
enum SnapshotData {
    /// A file of walrep's in the snapshot directory, removed with the build.
    Built {
        path: PathBuf,
        file: Arc<std::fs::File>,
    },
    /// The engine's own file (`StateMachine::snapshot_file`), kept
    /// unchanged while the guard lives, never removed.
    EngineFile {
        path: PathBuf,
        file: Arc<std::fs::File>,
        _guard: Box<dyn std::any::Any + Send + Sync>,
    },
    /// Produced by the engine as it is read (`StateMachine::
    /// snapshot_source`); the engine's view goes with it.
    EngineSource(Arc<dyn SnapshotSource>),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::Built { path, .. } => write!(f, "Built({})", path.display()),
            SnapshotData::EngineFile { path, .. } => write!(f, "EngineFile({})", path.display()),
            SnapshotData::EngineSource(s) => write!(f, "EngineSource(lsn {})", s.lsn()),
        }
    }
}

/// How often a build held by the engine (its file or its source) is
/// checked, and how long it stays cached with no transfer reading it
/// before it is dropped. A held file holds back the engine (SQLite cannot
/// checkpoint past it) and a held source keeps the engine's frozen view
/// (memory that applies no longer share), so they are not kept like a
/// build in a file of walrep's; long enough for a standby whose transfer
/// was cut to come back and resume.
const ENGINE_HELD_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
const ENGINE_HELD_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// CRC reads and reads of a whole snapshot go in pieces of this size.
const READ_PIECE: usize = 1 << 20;

impl BuiltSnapshot {
    /// The CRC32C of all of it, if known yet.
    pub(crate) fn crc(&self) -> Option<u32> {
        self.crc.get().copied()
    }

    /// Records the CRC32C a transfer took over every byte, in order.
    pub(crate) fn note_crc(&self, crc: u32) {
        let known = *self.crc.get_or_init(|| crc);
        debug_assert_eq!(known, crc, "two reads of one snapshot disagree");
    }

    /// Whether the engine holds it (its file or its source), so a cached
    /// build must let go of it once unused.
    fn held_by_engine(&self) -> bool {
        !matches!(self.data, SnapshotData::Built { .. })
    }

    /// The CRC32C of all of it, reading it for that if it is not known yet
    /// (for a standby that wants it before the data: an older one, or a
    /// resume from the middle).
    pub(crate) async fn crc_now(&self) -> std::io::Result<u32> {
        if let Some(crc) = self.crc() {
            return Ok(crc);
        }
        let (mut from, len) = (self.read_from(), self.len);
        let crc = run_blocking(self.may_block, move || {
            crc_of_reads(len, |at, buf| from.read_at(at, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        self.note_crc(crc);
        Ok(crc)
    }

    /// A reader of its bytes from `offset`, one chunk at a time (one per
    /// transfer: a source's reader keeps its place between chunks).
    pub(crate) fn reader(&self, offset: u64) -> SnapshotReader {
        SnapshotReader {
            from: Some(self.read_from()),
            at: offset.min(self.len),
            len: self.len,
            may_block: self.may_block,
        }
    }

    fn read_from(&self) -> ReadFrom {
        match &self.data {
            SnapshotData::Built { file, .. } | SnapshotData::EngineFile { file, .. } => {
                ReadFrom::File(file.clone())
            }
            SnapshotData::EngineSource(source) => ReadFrom::Source {
                source: source.clone(),
                reader: None,
                next: 0,
            },
        }
    }

    /// The file it is served from, if any.
    #[cfg(test)]
    fn path(&self) -> Option<&Path> {
        match &self.data {
            SnapshotData::Built { path, .. } | SnapshotData::EngineFile { path, .. } => Some(path),
            SnapshotData::EngineSource(_) => None,
        }
    }
}

impl Drop for BuiltSnapshot {
    fn drop(&mut self) {
        if let SnapshotData::Built { path, .. } = &self.data {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Blocking reads of a snapshot's bytes.
enum ReadFrom {
    File(Arc<std::fs::File>),
    /// The engine's reader, opened at the first read and again only when a
    /// read does not continue where the last one ended.
    Source {
        source: Arc<dyn SnapshotSource>,
        reader: Option<Box<dyn std::io::Read + Send>>,
        next: u64,
    },
}

impl ReadFrom {
    /// Fills `buf` with the bytes at `at`.
    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            ReadFrom::File(file) => file.read_exact_at(buf, at),
            ReadFrom::Source {
                source,
                reader,
                next,
            } => {
                if reader.is_none() || *next != at {
                    *reader = Some(source.read_from(at).map_err(|e| {
                        std::io::Error::other(format!(
                            "opening the engine's snapshot source at {at}: {}",
                            e.chain()
                        ))
                    })?);
                    *next = at;
                }
                let r = reader.as_mut().expect("opened above");
                r.read_exact(buf).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "the engine's snapshot source failed at byte {at} of {}: {e}",
                            source.total_bytes()
                        ),
                    )
                })?;
                *next = at + buf.len() as u64;
                Ok(())
            }
        }
    }
}

/// One transfer's reads of a built snapshot, in order.
pub(crate) struct SnapshotReader {
    /// Moved to the blocking thread for each read and back.
    from: Option<ReadFrom>,
    at: u64,
    len: u64,
    may_block: bool,
}

impl SnapshotReader {
    /// The next up to `max` bytes (empty at the end), read on a blocking
    /// thread.
    pub(crate) async fn next_chunk(&mut self, max: usize) -> std::io::Result<Bytes> {
        let want = (self.len - self.at).min(max as u64) as usize;
        let Some(mut from) = self.from.take() else {
            return Err(std::io::Error::other(
                "an earlier read of the snapshot failed",
            ));
        };
        let at = self.at;
        let (from, read) = run_blocking(self.may_block, move || {
            let mut buf = vec![0u8; want];
            let read = from.read_at(at, &mut buf).map(|()| Bytes::from(buf));
            (from, read)
        })
        .await
        .map_err(std::io::Error::other)?;
        let data = read?;
        self.from = Some(from);
        self.at += data.len() as u64;
        Ok(data)
    }
}

/// The node's snapshot directory: builds on the primary, the incoming
/// file on the standby.
pub(crate) struct Snapshots {
    dir: PathBuf,
    /// Removed with the store (a directory walrep made under the system's
    /// temp dir), or kept (one the engine named).
    remove_dir: bool,
    sm: Arc<dyn StateMachine>,
    wal: Arc<dyn WalStore>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    current: Option<Arc<BuiltSnapshot>>,
    building: Option<PendingSnapshot>,
    last_id: u64,
}

impl Snapshots {
    /// Snapshots in `dir`, or without one in a fresh directory under
    /// `std::env::temp_dir()`. The builds a previous run left in `dir` go
    /// (a build is only good for the run that made it); a partly received
    /// snapshot stays for the next rejoin to resume or discard.
    pub(crate) fn new(
        dir: Option<PathBuf>,
        sm: Arc<dyn StateMachine>,
        wal: Arc<dyn WalStore>,
    ) -> Snapshots {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let remove_dir = dir.is_none();
        let dir = dir.unwrap_or_else(|| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("walrep-snapshots-{}-{n}", std::process::id()))
        });
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("snapshot-") || name == super::incoming::SIDECAR_TMP {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Snapshots {
            dir,
            remove_dir,
            sm,
            wal,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A snapshot for a standby: the last one built if still fresh, the
    /// one being built, or a new build (started here, on a blocking thread).
    pub(crate) fn get(self: &Arc<Self>) -> PendingSnapshot {
        let mut inner = self.inner.lock().unwrap();
        if let Some(b) = &inner.current {
            if self.fresh(b) {
                let b = b.clone();
                return async move { Ok(b) }.boxed().shared();
            }
            // Stale: no new transfer starts from it; those under way keep
            // it until they end.
            inner.current = None;
        }
        if let Some(p) = &inner.building {
            return p.clone();
        }
        // Ids grow and start from the clock, so a standby resuming after a
        // restart of the primary never matches a different snapshot.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let id = now.max(inner.last_id + 1);
        inner.last_id = id;
        let this = self.clone();
        let task = tokio::spawn(async move {
            let (sm, wal, dir) = (this.sm.clone(), this.wal.clone(), this.dir.clone());
            let may_block = wal.may_block();
            let built = run_blocking(may_block, move || build(&dir, id, &*sm, &*wal, may_block))
                .await
                .and_then(|r| r)
                .map(Arc::new);
            let mut inner = this.inner.lock().unwrap();
            inner.building = None;
            match &built {
                Ok(b) => {
                    tracing::info!(id, lsn = %b.lsn, bytes = b.len, from = ?b.data, "snapshot built");
                    inner.current = Some(b.clone());
                    if b.held_by_engine() {
                        release_engine_held_when_unused(Arc::downgrade(&this), id);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "building a snapshot failed"),
            }
            built
        });
        let pending = async move { task.await.map_err(|e| format!("snapshot build: {e}"))? }
            .boxed()
            .shared();
        inner.building = Some(pending.clone());
        pending
    }

    /// Forgets the last build (this node's state was replaced).
    pub(crate) fn invalidate(&self) {
        self.inner.lock().unwrap().current = None;
    }

    /// Whether a standby that restores `b` can continue from our WAL.
    fn fresh(&self, b: &BuiltSnapshot) -> bool {
        b.lsn.next() >= self.wal.first_lsn()
            && self.wal.epoch_at(b.lsn) == Some(b.epoch)
            && self.sm.applied_lsn() >= b.lsn
    }
}

impl Drop for Snapshots {
    fn drop(&mut self) {
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Drops the cached build `id`, served from the engine's own file or
/// source, once it is stale or no transfer has read it for
/// `ENGINE_HELD_IDLE`: the engine's guard or view goes with the last
/// transfer that still holds it.
fn release_engine_held_when_unused(snapshots: std::sync::Weak<Snapshots>, id: u64) {
    tokio::spawn(async move {
        let mut last_used = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(ENGINE_HELD_CHECK).await;
            let Some(this) = snapshots.upgrade() else {
                return;
            };
            let released = {
                let mut inner = this.inner.lock().unwrap();
                let Some(b) = inner.current.as_ref().filter(|b| b.id == id) else {
                    return;
                };
                let stale = !this.fresh(b);
                if Arc::strong_count(b) > 1 {
                    last_used = tokio::time::Instant::now();
                }
                if stale || last_used.elapsed() >= ENGINE_HELD_IDLE {
                    tracing::info!(id, stale, "releasing the engine's snapshot file or source");
                    inner.current.take()
                } else {
                    None
                }
            };
            if released.is_some() {
                return;
            }
        }
    });
}

/// Builds snapshot `id`: from the engine's source if it has one
/// (`StateMachine::snapshot_source`), else from its own file if it has
/// one (`StateMachine::snapshot_file`), else into
/// `dir/snapshot-<id>.bin`. A source or file the WAL does not continue
/// from is not used: a standby that restored it could not go on.
fn build(
    dir: &Path,
    id: u64,
    sm: &dyn StateMachine,
    wal: &dyn WalStore,
    may_block: bool,
) -> Result<BuiltSnapshot, String> {
    let continues = |lsn: Lsn| lsn.next() >= wal.first_lsn() && wal.epoch_at(lsn).is_some();
    match sm.snapshot_source().map_err(|e| e.chain())? {
        Some(source) if continues(source.lsn()) => {
            let lsn = source.lsn();
            return Ok(BuiltSnapshot {
                id,
                lsn,
                epoch: wal.epoch_at(lsn).unwrap_or(Epoch::ZERO),
                len: source.total_bytes(),
                crc: std::sync::OnceLock::new(),
                data: SnapshotData::EngineSource(source.into()),
                may_block,
            });
        }
        Some(source) => {
            tracing::info!(lsn = %source.lsn(), first_lsn = %wal.first_lsn(), "the engine's snapshot source is older than the WAL; trying its file");
        }
        None => {}
    }
    match sm.snapshot_file().map_err(|e| e.chain())? {
        // A standby that restores it must be able to go on with our WAL.
        Some(f) if continues(f.lsn) => from_engine_file(id, f, wal, may_block),
        Some(f) => {
            tracing::info!(lsn = %f.lsn, first_lsn = %wal.first_lsn(), "the engine's snapshot file is older than the WAL; building one");
            drop(f);
            build_file(dir, id, sm, wal, may_block)
        }
        None => build_file(dir, id, sm, wal, may_block),
    }
}

/// CRC32C of the first `len` bytes of `file`, read in 1 MiB pieces.
pub(super) fn crc_of(file: &std::fs::File, len: u64) -> std::io::Result<u32> {
    crc_of_reads(len, |at, buf| file.read_exact_at(buf, at))
}

/// CRC32C of `len` bytes that `read` fills in, in order, a piece at a time.
fn crc_of_reads(
    len: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<u32> {
    let mut buf = vec![0u8; READ_PIECE.min(len as usize)];
    let (mut crc, mut at) = (0u32, 0u64);
    while at < len {
        let want = ((len - at) as usize).min(buf.len());
        read(at, &mut buf[..want])?;
        crc = crc32c::crc32c_append(crc, &buf[..want]);
        at += want as u64;
    }
    Ok(crc)
}

/// A build served from the engine's file: its first `len` bytes, not
/// read here (the CRC32C is taken as they are sent).
fn from_engine_file(
    id: u64,
    f: crate::state_machine::SnapshotFile,
    wal: &dyn WalStore,
    may_block: bool,
) -> Result<BuiltSnapshot, String> {
    let shown = f.path.display();
    let file = std::fs::File::open(&f.path)
        .map_err(|e| format!("opening the engine's snapshot file {shown}: {e}"))?;
    let on_disk = file
        .metadata()
        .map_err(|e| format!("reading the length of {shown}: {e}"))?
        .len();
    if on_disk < f.len {
        return Err(format!(
            "the engine's snapshot file {shown} holds {on_disk} bytes, fewer than the {} it \
             announced",
            f.len
        ));
    }
    Ok(BuiltSnapshot {
        id,
        lsn: f.lsn,
        epoch: wal.epoch_at(f.lsn).unwrap_or(Epoch::ZERO),
        len: f.len,
        crc: std::sync::OnceLock::new(),
        data: SnapshotData::EngineFile {
            path: f.path.clone(),
            file: Arc::new(file),
            _guard: f.guard,
        },
        may_block,
    })
}

/// Builds snapshot `id` into `dir/snapshot-<id>.bin`: the engine writes
/// through a buffer that counts and checksums what passes.
fn build_file(
    dir: &Path,
    id: u64,
    sm: &dyn StateMachine,
    wal: &dyn WalStore,
    may_block: bool,
) -> Result<BuiltSnapshot, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("snapshot-{id:016x}.bin"));
    let file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut out = Checksummed::new(std::io::BufWriter::with_capacity(256 << 10, &file));
    let written = sm
        .snapshot(&mut out)
        .map_err(|e| e.to_string())
        .and_then(|lsn| out.flush().map(|()| lsn).map_err(|e| e.to_string()));
    let (len, crc) = (out.len, out.crc);
    drop(out);
    let lsn = match written {
        Ok(lsn) => lsn,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    Ok(BuiltSnapshot {
        id,
        lsn,
        epoch: wal.epoch_at(lsn).unwrap_or(Epoch::ZERO),
        len,
        crc: crc.into(),
        data: SnapshotData::Built {
            path,
            file: Arc::new(file),
        },
        may_block,
    })
}

/// A writer that counts and CRC32Cs the bytes it passes on.
pub(crate) struct Checksummed<W> {
    inner: W,
    pub len: u64,
    pub crc: u32,
}

impl<W> Checksummed<W> {
    pub(crate) fn new(inner: W) -> Self {
        Checksummed {
            inner,
            len: 0,
            crc: 0,
        }
    }
}

impl<W: Write> Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStateMachine;
    use crate::types::Record;
    use crate::wal::MemWal;
    use std::time::Duration;

    fn store(sm: Arc<MemStateMachine>, wal: Arc<MemWal>) -> (Arc<Snapshots>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshots::new(Some(dir.path().to_path_buf()), sm, wal);
        (Arc::new(s), dir)
    }

    fn append(wal: &MemWal, sm: &MemStateMachine, from: u64, to: u64) {
        let records: Vec<Record> = (from..=to)
            .map(|i| Record {
                lsn: Lsn(i),
                epoch: Epoch(1),
                request_id: None,
                payload: Bytes::from_static(b"p"),
            })
            .collect();
        wal.append(&records).unwrap();
        for i in from..=to {
            sm.apply(Lsn(i), b"p").unwrap();
        }
    }

    /// Two requests while the engine builds join one build and get the
    /// same snapshot; the file holds what the engine wrote.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_one_build() {
        let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
        append(&wal, &sm, 1, 3);
        sm.set_snapshot_delay(Duration::from_millis(200));
        sm.set_snapshot_padding(100_000);
        let (snapshots, _dir) = store(sm.clone(), wal);
        let (a, b) = tokio::join!(snapshots.get(), snapshots.get());
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(sm.snapshots_taken(), 1, "one build");
        assert_eq!(a.id, b.id);
        assert_eq!((a.lsn, a.epoch, a.len), (Lsn(3), Epoch(1), 100_012));
        let bytes = std::fs::read(a.path().unwrap()).unwrap();
        assert_eq!(
            Some(crc32c::crc32c(&bytes)),
            a.crc(),
            "known from the build"
        );
        let copy = MemStateMachine::new();
        copy.restore(a.lsn, &mut &bytes[..]).unwrap();
        assert_eq!(copy.state_hash(), sm.state_hash());
    }

    /// A build is reused while the WAL continues from it, and replaced
    /// (its file removed once unused) when the WAL no longer does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fresh_build_is_reused_and_a_stale_one_rebuilt() {
        let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
        append(&wal, &sm, 1, 3);
        let (snapshots, _dir) = store(sm.clone(), wal.clone());
        let first = snapshots.get().await.unwrap();
        append(&wal, &sm, 4, 10);
        let again = snapshots.get().await.unwrap();
        assert_eq!(again.id, first.id, "the WAL still holds LSN 4: reused");
        assert_eq!(sm.snapshots_taken(), 1);
        let path = first.path().unwrap().to_path_buf();
        drop((first, again));
        wal.sync().unwrap();
        wal.remove_before(Lsn(6)).unwrap();
        let newer = snapshots.get().await.unwrap();
        assert_eq!(sm.snapshots_taken(), 2, "stale: rebuilt");
        assert_eq!(newer.lsn, Lsn(10));
        assert!(!path.exists(), "the stale build's file is gone");
    }

    /// An engine that holds its snapshot in a file of its own: it writes
    /// `MemStateMachine`'s snapshot there, followed by bytes that are not
    /// part of it, and hands out a guard that records its drop.
    struct OwnFile {
        inner: Arc<MemStateMachine>,
        dir: tempfile::TempDir,
        released: Arc<std::sync::atomic::AtomicBool>,
        /// The LSN it claims for its file, if not its applied one (an
        /// older durable file).
        reports: Mutex<Option<Lsn>>,
    }

    fn own_file(sm: &Arc<MemStateMachine>) -> Arc<OwnFile> {
        Arc::new(OwnFile {
            inner: sm.clone(),
            dir: tempfile::tempdir().unwrap(),
            released: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            reports: Mutex::new(None),
        })
    }

    struct Guard(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl StateMachine for OwnFile {
        crate::testing::pass_through_to!(inner);
        fn snapshot(&self, _: &mut dyn Write) -> Result<Lsn, crate::StateMachineError> {
            panic!("an engine with its own file is not asked to copy it")
        }
        fn snapshot_file(
            &self,
        ) -> Result<Option<crate::state_machine::SnapshotFile>, crate::StateMachineError> {
            let mut bytes = Vec::new();
            let lsn = self.inner.snapshot(&mut bytes).unwrap();
            let lsn = (*self.reports.lock().unwrap()).unwrap_or(lsn);
            let len = bytes.len() as u64;
            bytes.extend_from_slice(b"not part of the snapshot");
            let path = self.dir.path().join("own.db");
            std::fs::write(&path, &bytes).unwrap();
            self.released
                .store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(crate::state_machine::SnapshotFile {
                path,
                len,
                lsn,
                guard: Box::new(Guard(self.released.clone())),
            }))
        }
    }

    /// A build from the engine's own file sends exactly its first `len`
    /// bytes with their CRC, keeps the guard while cached, and once no
    /// transfer has used it for `ENGINE_HELD_IDLE` drops the guard and
    /// leaves the file where it was.
    #[tokio::test(start_paused = true)]
    async fn a_build_from_the_engines_file_is_served_as_is_and_released_when_unused() {
        let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
        append(&wal, &sm, 1, 3);
        sm.set_snapshot_padding(5000);
        let engine = own_file(&sm);
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Arc::new(Snapshots::new(
            Some(dir.path().to_path_buf()),
            engine.clone(),
            wal,
        ));
        let b = snapshots.get().await.unwrap();
        let mut expected = Vec::new();
        sm.snapshot(&mut expected).unwrap();
        assert_eq!((b.lsn, b.len), (Lsn(3), expected.len() as u64));
        assert_eq!(b.crc(), None, "not read for the CRC before it is sent");
        assert_eq!(b.crc_now().await.unwrap(), crc32c::crc32c(&expected));
        assert_eq!(b.crc(), Some(crc32c::crc32c(&expected)), "kept");
        let sent = b.reader(0).next_chunk(1 << 20).await.unwrap();
        assert_eq!(&sent[..], &expected[..], "the snapshot's bytes, no more");
        let path = engine.dir.path().join("own.db");
        assert_eq!(
            b.path(),
            Some(path.as_path()),
            "served from the engine's file, not a copy"
        );
        let released = || engine.released.load(std::sync::atomic::Ordering::SeqCst);
        // A transfer holds it past the idle time: kept.
        tokio::time::sleep(ENGINE_HELD_IDLE * 2).await;
        assert!(!released(), "held while a transfer reads it");
        assert_eq!(snapshots.get().await.unwrap().id, b.id, "and reused");
        drop(b);
        tokio::time::sleep(ENGINE_HELD_IDLE / 2).await;
        assert!(!released(), "cached a while for a resume");
        tokio::time::sleep(ENGINE_HELD_IDLE).await;
        assert!(released(), "the guard goes once unused");
        assert!(path.exists(), "the engine's file is never removed");
        assert!(snapshots.inner.lock().unwrap().current.is_none());
    }

    /// An engine file older than the WAL (a standby that restored it
    /// could not go on with the stream) is not served: walrep builds a
    /// snapshot through `snapshot` instead. One the WAL continues from is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_engine_file_older_than_the_wal_is_not_served() {
        let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
        append(&wal, &sm, 1, 10);
        wal.sync().unwrap();
        wal.remove_before(Lsn(6)).unwrap();
        let engine = own_file(&sm);
        /// `OwnFile` that also answers `snapshot` (the fallback).
        struct Both(Arc<OwnFile>);
        impl StateMachine for Both {
            crate::testing::pass_through_to!(0);
            fn snapshot(&self, out: &mut dyn Write) -> Result<Lsn, crate::StateMachineError> {
                self.0.inner.snapshot(out)
            }
            fn snapshot_file(
                &self,
            ) -> Result<Option<crate::state_machine::SnapshotFile>, crate::StateMachineError>
            {
                self.0.snapshot_file()
            }
        }
        for (claimed, served) in [(Lsn(4), false), (Lsn(5), true)] {
            *engine.reports.lock().unwrap() = Some(claimed);
            let dir = tempfile::tempdir().unwrap();
            let snapshots = Arc::new(Snapshots::new(
                Some(dir.path().to_path_buf()),
                Arc::new(Both(engine.clone())),
                wal.clone(),
            ));
            let b = snapshots.get().await.unwrap();
            let from_engine = matches!(b.data, SnapshotData::EngineFile { .. });
            assert_eq!(
                from_engine, served,
                "a file at {claimed} with the WAL from 6"
            );
            let expected = if served { claimed } else { Lsn(10) };
            assert_eq!(b.lsn, expected);
        }
    }

    /// What a transfer sends, by request: to a standby that takes the CRC
    /// after the data, a snapshot whose CRC is not known yet (the
    /// engine's file) is announced without one, and its CRC, taken while
    /// sending, follows the last byte; an older standby, or a resume from
    /// the middle, gets the CRC in the announcement and no `End`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_crc_follows_the_data_only_when_asked_for_and_not_known() {
        use crate::pb::snapshot_chunk::Part;
        use futures::StreamExt;
        let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
        append(&wal, &sm, 1, 3);
        sm.set_snapshot_padding(3 << 20);
        let mut expected = Vec::new();
        sm.snapshot(&mut expected).unwrap();
        let crc = crc32c::crc32c(&expected);
        // (crc_after_data, resume offset) -> CRC announced, End sent.
        let cases = [
            (true, 0, None, Some(crc)),
            (false, 0, Some(crc), None),
            (true, 1000, Some(crc), None),
        ];
        for (after, resume, announced, end) in cases {
            let engine = own_file(&sm);
            let dir = tempfile::tempdir().unwrap();
            let snapshots = Arc::new(Snapshots::new(
                Some(dir.path().to_path_buf()),
                engine.clone(),
                wal.clone(),
            ));
            let id = snapshots.get().await.unwrap().id;
            let parts: Vec<_> = crate::transport::server::snapshot_stream(
                snapshots.get(),
                (id, resume),
                after,
                Duration::from_secs(5),
                1 << 20,
            )
            .map(|p| p.unwrap().part.unwrap())
            .collect()
            .await;
            let what = format!("crc_after_data {after}, from {resume}");
            let Part::Info(info) = &parts[0] else {
                panic!("{what}: announced first")
            };
            assert_eq!((!info.crc_follows).then_some(info.crc), announced, "{what}");
            let mut data = Vec::new();
            let mut ended = None;
            for p in &parts[1..] {
                match p {
                    Part::Data(d) => {
                        assert!(ended.is_none(), "{what}: no data after the end");
                        assert_eq!(d.offset as usize, resume as usize + data.len());
                        data.extend_from_slice(&d.data);
                    }
                    Part::End(e) => ended = Some(e.crc),
                    Part::Building(_) | Part::Info(_) => panic!("{what}: {p:?}"),
                }
            }
            assert_eq!(data, expected[resume as usize..], "{what}: the bytes");
            assert_eq!(ended, end, "{what}: the End");
        }
    }

    /// An engine that produces its snapshot from a source: `MemStateMachine`'s
    /// bytes, recording where each reader was opened and whether the
    /// source (its frozen view) was dropped.
    struct FromSource {
        inner: Arc<MemStateMachine>,
        opened_at: Arc<Mutex<Vec<u64>>>,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    struct BytesSource {
        lsn: Lsn,
        bytes: Arc<Vec<u8>>,
        opened_at: Arc<Mutex<Vec<u64>>>,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Drop for BytesSource {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl SnapshotSource for BytesSource {
        fn lsn(&self) -> Lsn {
            self.lsn
        }
        fn total_bytes(&self) -> u64 {
            self.bytes.len() as u64
        }
        fn read_from(
            &self,
            offset: u64,
        ) -> Result<Box<dyn std::io::Read + Send>, crate::StateMachineError> {
            self.opened_at.lock().unwrap().push(offset);
            let mut cursor = std::io::Cursor::new(self.bytes.clone().to_vec());
            cursor.set_position(offset);
            Ok(Box::new(cursor))
        }
    }

    impl StateMachine for FromSource {
        crate::testing::pass_through_to!(inner);
        fn snapshot(&self, _: &mut dyn Write) -> Result<Lsn, crate::StateMachineError> {
            panic!("an engine with a source is not asked to write a copy")
        }
        fn snapshot_source(
            &self,
        ) -> Result<Option<Box<dyn SnapshotSource>>, crate::StateMachineError> {
            let mut bytes = Vec::new();
            let lsn = self.inner.snapshot(&mut bytes).unwrap();
            self.dropped
                .store(false, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(Box::new(BytesSource {
                lsn,
                bytes: Arc::new(bytes),
                opened_at: self.opened_at.clone(),
                dropped: self.dropped.clone(),
            })))
        }
    }

    /// A build from the engine's source writes no file: a transfer reads
    /// the source as it sends (one reader per transfer, opened where the
    /// transfer starts), the CRC follows the data when asked for, a resume
    /// from the middle reads from there; once no transfer has used it for
    /// `ENGINE_HELD_IDLE` the source goes.
    #[tokio::test(start_paused = true)]
    async fn a_build_from_the_engines_source_is_read_as_it_is_sent_and_makes_no_file() {
        use crate::pb::snapshot_chunk::Part;
        use futures::StreamExt;
        let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
        append(&wal, &sm, 1, 3);
        sm.set_snapshot_padding(3 << 20);
        let mut expected = Vec::new();
        sm.snapshot(&mut expected).unwrap();
        let engine = Arc::new(FromSource {
            inner: sm.clone(),
            opened_at: Arc::default(),
            dropped: Arc::default(),
        });
        let dir = tempfile::tempdir().unwrap();
        let snapshots = Arc::new(Snapshots::new(
            Some(dir.path().to_path_buf()),
            engine.clone(),
            wal,
        ));
        let b = snapshots.get().await.unwrap();
        assert_eq!(
            (b.lsn, b.len, b.path()),
            (Lsn(3), expected.len() as u64, None)
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file");
        let id = b.id;
        drop(b);
        for (resume, crc_follows) in [(0, true), (1000, false)] {
            let parts: Vec<_> = crate::transport::server::snapshot_stream(
                snapshots.get(),
                (id, resume),
                true,
                Duration::from_secs(5),
                1 << 20,
            )
            .map(|p| p.unwrap().part.unwrap())
            .collect()
            .await;
            let Part::Info(info) = &parts[0] else {
                panic!("announced first")
            };
            assert_eq!(info.crc_follows, crc_follows, "from {resume}");
            let mut data = Vec::new();
            let mut end = None;
            for p in &parts[1..] {
                match p {
                    Part::Data(d) => data.extend_from_slice(&d.data),
                    Part::End(e) => end = Some(e.crc),
                    _ => panic!("{p:?}"),
                }
            }
            assert_eq!(data, expected[resume as usize..], "from {resume}");
            if crc_follows {
                assert_eq!(end, Some(crc32c::crc32c(&expected)));
            }
        }
        assert_eq!(
            *engine.opened_at.lock().unwrap(),
            vec![0, 1000],
            "one reader per transfer, where it starts (the CRC is known after the first)"
        );
        let dropped = || engine.dropped.load(std::sync::atomic::Ordering::SeqCst);
        assert!(!dropped(), "cached for a resume");
        tokio::time::sleep(ENGINE_HELD_IDLE + ENGINE_HELD_CHECK * 2).await;
        assert!(dropped(), "the source goes once unused");
    }
}
