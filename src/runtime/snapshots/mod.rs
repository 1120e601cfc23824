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
    /// A file of walrep's in the snapshot directory, removed with the
    /// build's last holder (the build, or a transfer still reading it).
    Built(Arc<BuildFile>),
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
            SnapshotData::Built(file) => write!(f, "Built({})", file.path.display()),
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
        !matches!(self.data, SnapshotData::Built(_))
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
            SnapshotData::Built(build) => ReadFrom::Build(build.clone()),
            SnapshotData::EngineFile { file, .. } => ReadFrom::File(file.clone()),
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
            SnapshotData::Built(build) => Some(&build.path),
            SnapshotData::EngineFile { path, .. } => Some(path),
            SnapshotData::EngineSource(_) => None,
        }
    }
}

/// A build's file of walrep's: removed when its last holder lets go of it,
/// and closed off the node's task (`close_off_thread`) whoever that holder
/// is: a stale build the node let go of, a late build of a replaced state,
/// or a transfer that ended after the build was replaced.
pub(crate) struct BuildFile {
    path: PathBuf,
    /// Taken only by `drop`.
    file: Option<std::fs::File>,
    close_off_thread: bool,
}

impl BuildFile {
    fn new(path: PathBuf, file: std::fs::File, may_block: bool) -> BuildFile {
        BuildFile {
            path,
            file: Some(file),
            close_off_thread: may_block,
        }
    }

    fn file(&self) -> &std::fs::File {
        self.file.as_ref().expect("taken only when dropped")
    }
}

impl Drop for BuildFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(file) = self.file.take() {
            crate::unlinked::close_off_thread(file, &self.path, self.close_off_thread);
        }
    }
}

/// Blocking reads of a snapshot's bytes.
enum ReadFrom {
    /// The engine's own file.
    File(Arc<std::fs::File>),
    /// A build's file of walrep's.
    Build(Arc<BuildFile>),
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
            ReadFrom::Build(build) => build.file().read_exact_at(buf, at),
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
    /// Moved on by `invalidate`: a build started before is of a state
    /// this node no longer has, and its epoch, read from the WAL after
    /// the engine wrote it, may be the new log's.
    generation: u64,
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
            // it until they end (`BuildFile` says where its file goes).
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
        let generation = inner.generation;
        let this = self.clone();
        let task = tokio::spawn(async move {
            let (sm, wal, dir) = (this.sm.clone(), this.wal.clone(), this.dir.clone());
            let may_block = wal.may_block();
            let built = run_blocking(may_block, move || build(&dir, id, &*sm, &*wal, may_block))
                .await
                .and_then(|r| r)
                .map(Arc::new);
            let mut inner = this.inner.lock().unwrap();
            if inner.generation != generation {
                // Its waiters ask again and get a build of the state the
                // node has now (`invalidate` let go of this one).
                tracing::info!(
                    id,
                    "a snapshot built while this node's state was replaced is dropped"
                );
                return Err(
                    "this node's state was replaced while the snapshot was built; ask again".into(),
                );
            }
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

    /// Forgets the last build and any build under way (this node's state
    /// is being, or was, replaced).
    pub(crate) fn invalidate(&self) {
        let mut inner = self.inner.lock().unwrap();
        // A build the engine holds is let go of here, at once: a rejoin
        // restores right after and an engine may refuse a new source while
        // the old one is pinned. A file of walrep's goes off this thread
        // (`BuildFile`).
        inner.current = None;
        inner.building = None;
        inner.generation += 1;
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
        data: SnapshotData::Built(Arc::new(BuildFile::new(path, file, may_block))),
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
mod tests;
