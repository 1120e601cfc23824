//! `FileWal`: the durable `WalStore`, a directory of segment files.
//!
//! ```text
//! dir/lock                          held (flock) while the log is open
//! dir/meta                          WalMeta + epoch history (meta.rs)
//! dir/wal/<first lsn, 20 digits>.seg   header + frames (segment.rs)
//! ```
//!
//! One lock guards the in-memory state; the slow parts (fsync, reads of
//! old records, removing trimmed segments) run outside it on shared file
//! handles so appends keep flowing. Operations that rewrite the log
//! (truncate, reset) are rare and keep the lock for their I/O, which makes
//! them simple to reason about; a second lock (`rewriting`) keeps them
//! from running while a trim removes files outside the first.

mod cache;
mod meta;
mod read;
mod recovery;
mod reserve;
mod rounds;
mod sealed;
mod segment;
mod snapshot_ids;
#[cfg(test)]
mod tests;

use super::record::{self, FrameFormat};
use super::{WalError, WalMeta, WalStore, check_append};
use crate::types::{Epoch, EpochHistory, Lsn, Record, RequestIdAt};
use cache::TailCache;
use reserve::preallocate_bytes;
use rounds::SyncRounds;
use segment::{Segment, SegmentHeader};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

/// How a `FileWal` lays out and caches its segments.
#[derive(Clone, Debug)]
pub struct FileWalOptions {
    /// A segment takes no more appends once they would make it larger than
    /// this (a single bigger batch still gets a segment of its own).
    /// Retention removes whole segments, so this is its granularity.
    pub segment_bytes: u64,
    /// Largest payload `append` accepts.
    pub max_record_bytes: usize,
    /// Recent records kept in memory so standbys that keep up never make
    /// `read` touch the disk.
    pub tail_cache_bytes: usize,
    /// Reserve each new segment's `segment_bytes` when it is created, so
    /// appends never grow the file and an fsync rarely has to commit the
    /// filesystem's journal (see `segment::preallocate`). Off: segments grow
    /// with each append, as on filesystems where reserving space buys
    /// nothing (copy-on-write ones).
    pub preallocate: bool,
}

impl Default for FileWalOptions {
    fn default() -> Self {
        FileWalOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: crate::Config::DEFAULT_MAX_RECORD_BYTES,
            tail_cache_bytes: 16 << 20,
            preallocate: true,
        }
    }
}

/// The durable `WalStore`: a directory of segment files (`wal/`) and a
/// meta file, fsynced as the trait's contract says, with group commit
/// (concurrent `sync` calls share one fsync, and at most two overlap: see
/// `rounds`) and a cache of the tail so a
/// standby that keeps up is served from memory. Open it with
/// `FileWal::open`, which recovers what a crash left (a torn tail is cut).
pub struct FileWal {
    dir: PathBuf,
    wal_dir: PathBuf,
    opts: FileWalOptions,
    state: Mutex<State>,
    /// Signalled when a sync round ends, for callers waiting to join one.
    sync_done: Condvar,
    syncs: AtomicU64,
    fail_next_sync: AtomicBool,
    /// Held by whatever changes which segment files exist other than by
    /// appending (trimming, truncating, resetting), for its whole run:
    /// a trim removes its segments' files after it let go of `state`, and
    /// a truncation or reset must not list the directory's files meanwhile.
    rewriting: Mutex<()>,
    /// Test hook: holds the next trim before it removes its files.
    #[cfg(test)]
    hold_removal: HoldOnce,
    /// Test hook: holds the next read from the disk after its plan.
    #[cfg(test)]
    hold_read: HoldOnce,
    /// Test hook: removals of files a trim let go of fail, as a disk
    /// refusing them would.
    #[cfg(test)]
    fail_removals: AtomicBool,
    /// Holds `dir/lock` while the log is open: a second process opening
    /// it (two nodes given one data directory) is refused before its
    /// recovery could cut what this one is writing.
    _lock: File,
}

/// Test hook: holds the next call that passes it, once.
#[cfg(test)]
#[derive(Default)]
struct HoldOnce(Mutex<Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>>);

#[cfg(test)]
impl HoldOnce {
    /// Arms the hold: the first channel says a call is held, a send on
    /// the second lets it go on.
    fn arm(&self) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (stuck_tx, stuck) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        *self.0.lock().unwrap() = Some((stuck_tx, release_rx));
        (stuck, release)
    }

    /// Where a call is held, if the hold is armed.
    fn pass(&self) {
        if let Some((stuck, release)) = self.0.lock().unwrap().take() {
            let _ = stuck.send(());
            let _ = release.recv();
        }
    }
}

struct State {
    /// Never empty: the last one is where appends go.
    segments: Vec<Segment>,
    cache: TailCache,
    history: EpochHistory,
    last: Lsn,
    flushed: Lsn,
    meta: WalMeta,
    /// What `dir/meta` holds, to skip rewriting it when retention runs.
    persisted_history: EpochHistory,
    /// The sync rounds in flight: a caller joins one that covers what it
    /// wants, or starts one.
    rounds: SyncRounds,
    /// A segment file was created since the last sync; its directory entry
    /// must be durable before its records can be.
    dir_dirty: bool,
    /// Files of segments a trim let go of whose removal failed, oldest
    /// first: older than every listed segment, so the next trim removes
    /// them first and a reset removes them with the rest (a reset that
    /// left them would leave a gap before its new segment).
    leftover: Vec<PathBuf>,
    /// Bumped whenever records are rewritten in place (truncate, reset), so
    /// a read done outside the lock can tell it may have seen a mix.
    generation: u64,
    poisoned: Option<String>,
}

impl State {
    /// Where the log starts; past its end when a failed reset left it
    /// no segment (it is poisoned then, and holds nothing readable).
    fn first_lsn(&self) -> Lsn {
        self.segments
            .first()
            .map_or(self.last.next(), Segment::first_lsn)
    }

    fn last_epoch(&self) -> Epoch {
        self.history.last_epoch().unwrap_or(Epoch::ZERO)
    }

    fn active(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a FileWal always has a segment")
    }

    fn check_poison(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(why) => Err(WalError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// After a failure that leaves the files in a state memory no longer
    /// describes, nothing more may be written or promised.
    fn poison(&mut self, why: String) -> WalError {
        tracing::error!("WAL poisoned: {why}");
        self.poisoned = Some(why.clone());
        WalError::Poisoned(why)
    }
}

impl FileWal {
    /// Opens (creating if needed) the log in `dir`, recovering it from the
    /// files there: see `recovery` for what is verified and what is cut.
    pub fn open(dir: impl AsRef<Path>, opts: FileWalOptions) -> Result<FileWal, WalError> {
        let dir = dir.as_ref().to_path_buf();
        let wal_dir = dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err(format!("creating {}", wal_dir.display())))?;
        let lock_path = dir.join("lock");
        let Some(lock) = super::dir_lock::lock_exclusive(&lock_path)
            .map_err(io_err(format!("locking {}", lock_path.display())))?
        else {
            return Err(WalError::Locked {
                dir,
                lock: lock_path,
            });
        };
        let loaded = meta::load(&dir)?;
        let has_meta = loaded.is_some();
        let (meta, persisted_history) = loaded.unwrap_or_default();
        let mut cache = TailCache::new(opts.tail_cache_bytes);
        let reserve = preallocate_bytes(&opts, &wal_dir);
        let rec = recovery::recover(&wal_dir, &persisted_history, &mut cache, reserve)?;
        if !has_meta {
            // Records without a meta: the epoch that keeps a deposed
            // primary fenced is gone. (Segments without records are a
            // log an older version created before its first `set_meta`.)
            if rec.last > Lsn::ZERO {
                return Err(WalError::MetaMissing { dir });
            }
            // A fresh log gets its meta before its first segment, so from
            // now on segments without a meta mean the meta was lost.
            meta::write_tmp(&dir, &meta::encode(&meta, &persisted_history))?;
            meta::replace(&dir)?;
        }

        // Leftovers of writes a crash interrupted; the files they were
        // meant to replace are intact.
        let stale = [
            Some(meta::tmp_path(&dir)),
            Some(snapshot_ids::tmp_path(&dir)),
            rec.stale_pending,
        ];
        for path in stale.into_iter().flatten() {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(format!("removing {}", path.display()))(e));
                }
                _ => {}
            }
        }

        let (segments, history, last) = if rec.segments.is_empty() {
            let header = SegmentHeader::new(Lsn(1), Epoch::ZERO);
            let seg = segment::write_pending(&wal_dir, header, reserve)
                .and_then(|()| segment::commit_pending(&wal_dir, header))
                .map_err(io_err(format!(
                    "creating the first segment in {}",
                    wal_dir.display()
                )))?;
            (vec![seg], EpochHistory::default(), Lsn::ZERO)
        } else {
            (rec.segments, rec.history, rec.last)
        };

        // Whatever recovery kept is what the log holds from now on, so it
        // must be on disk even if the crash came before its sync.
        for seg in &segments {
            seg.file
                .sync_all()
                .map_err(io_err(format!("syncing {}", seg.path.display())))?;
        }
        segment::sync_dir(&wal_dir)
            .and_then(|()| segment::sync_dir(&dir))
            .map_err(io_err(format!("syncing {}", wal_dir.display())))?;

        Ok(FileWal {
            dir,
            wal_dir,
            opts,
            state: Mutex::new(State {
                segments,
                cache,
                history,
                last,
                flushed: last,
                meta,
                persisted_history,
                rounds: SyncRounds::default(),
                dir_dirty: false,
                leftover: Vec::new(),
                generation: 0,
                poisoned: None,
            }),
            sync_done: Condvar::new(),
            syncs: AtomicU64::new(0),
            fail_next_sync: AtomicBool::new(false),
            rewriting: Mutex::new(()),
            #[cfg(test)]
            hold_removal: HoldOnce::default(),
            #[cfg(test)]
            hold_read: HoldOnce::default(),
            #[cfg(test)]
            fail_removals: AtomicBool::new(false),
            _lock: lock,
        })
    }

    /// How many sync rounds reached the disk; one round fsyncs every file
    /// that needs it on behalf of all the callers that joined it.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Makes the next fsync of a segment (a sync round's, or the one before
    /// rolling to a new segment) fail as if the disk reported an error.
    /// Only with the `testing` feature.
    #[cfg(any(test, feature = "testing"))]
    pub fn inject_sync_failure(&self) {
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("FileWal state lock poisoned by a panic")
    }

    /// The lock, once no sync round is in flight: a round publishes its
    /// LSN when it ends, which would be wrong after a truncation or reset
    /// replaced the records it covered.
    fn lock_idle(&self) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        while !st.rounds.is_idle() {
            st = self
                .sync_done
                .wait(st)
                .expect("FileWal state lock poisoned");
        }
        st
    }

    /// Starts a new segment after the last record.
    ///
    /// The old segment is fsynced first, under the lock (once per segment,
    /// so rarely): then only the last segment can ever hold unsynced bytes,
    /// a crash can tear nothing but the end of the log, and recovery may
    /// treat a bad frame anywhere else as damage. Left for the next sync
    /// round instead, a torn end of the old segment followed by valid
    /// frames in the new one would be indistinguishable from a damaged
    /// record, and an ordinary crash would stop the node.
    ///
    /// The new file and its directory entry become durable in the next
    /// sync round, before any record in it is reported durable.
    ///
    /// The old segment gives back the space it reserved and did not use.
    /// Should a crash keep the new segment but not that shrink, recovery
    /// reads the old one's unwritten tail as the end of its records.
    fn roll(&self, st: &mut State) -> Result<(), WalError> {
        let old = st.active();
        if let Err(e) = old.file.set_len(old.len) {
            let why = format!(
                "trimming {} before the next segment: {e}",
                old.path.display()
            );
            return Err(st.poison(why));
        }
        if let Err(why) = self.fsync(&old.path, &old.file) {
            return Err(st.poison(why));
        }
        let header = SegmentHeader::new(st.last.next(), st.last_epoch());
        let path = self.wal_dir.join(segment::file_name(header.first_lsn));
        let reserve = preallocate_bytes(&self.opts, &self.wal_dir);
        let seg = Segment::create(path.clone(), header, reserve).map_err(|e| {
            let _ = fs::remove_file(&path);
            io_err(format!("creating {}", path.display()))(e)
        })?;
        st.dir_dirty = true;
        st.segments.push(seg);
        Ok(())
    }

    /// The active segment is a version-1 one (written before request
    /// ids) and a record with an id comes: a V1 frame has no room for it.
    /// A segment holding records is closed and a new (V2) one started; an
    /// empty one gets a V2 header in place, made durable by the sync that
    /// makes its first records durable (a crash before leaves a V1 header
    /// whose unsynced frames recovery cuts as a torn tail).
    fn upgrade_active(&self, st: &mut State) -> Result<(), WalError> {
        if !st.active().offsets.is_empty() {
            return self.roll(st);
        }
        let seg = st.active();
        let header = SegmentHeader::new(seg.header.first_lsn, seg.header.base_epoch);
        seg.file
            .write_all_at(&header.encode(), 0)
            .map_err(io_err(format!(
                "rewriting the header of {}",
                seg.path.display()
            )))?;
        seg.header = header;
        Ok(())
    }

    /// Removes one segment file durably before the next is touched: the
    /// callers remove from one end of the log, and a crash that kept a
    /// later removal but lost an earlier one would leave a gap that
    /// recovery must refuse. Removals are rare, so the fsyncs are cheap.
    fn remove_segment(&self, path: &Path) -> std::io::Result<()> {
        fs::remove_file(path)?;
        segment::sync_dir(&self.wal_dir)
    }

    /// `remove_segment` for a file a trim let go of, which an earlier
    /// attempt may already have removed.
    fn remove_let_go(&self, path: &Path) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_removals.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected removal failure"));
        }
        match self.remove_segment(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            removed => removed,
        }
    }

    /// Every fsync of a segment's records goes through here, so the test
    /// hook reaches each of them.
    fn fsync(&self, path: &Path, file: &File) -> Result<(), String> {
        if self.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(format!("injected fsync failure on {}", path.display()));
        }
        file.sync_data()
            .map_err(|e| format!("fsync of {} failed: {e}", path.display()))
    }

    /// One sync round's I/O, run without the lock.
    fn flush(&self, path: &Path, file: &File, dir_dirty: bool) -> Result<(), String> {
        self.fsync(path, file)?;
        if dir_dirty {
            segment::sync_dir(&self.wal_dir)
                .map_err(|e| format!("fsync of {} failed: {e}", self.wal_dir.display()))?;
        }
        Ok(())
    }

    fn truncate_locked(&self, st: &mut State, lsn: Lsn) -> Result<(), WalError> {
        // Newest first: a crash part-way leaves a gapless prefix of the log,
        // which recovery accepts; cutting the segment holding `lsn` first
        // would leave a gap before the later ones.
        while st.segments.len() > 1 && st.active().first_lsn() > lsn {
            let path = st.active().path.clone();
            if let Err(e) = self.remove_segment(&path) {
                return Err(st.poison(format!(
                    "truncation could not remove {}: {e}",
                    path.display()
                )));
            }
            st.segments.pop();
        }
        let seg = st.active();
        if seg.last_lsn() > lsn {
            let keep = (lsn.0 + 1 - seg.first_lsn().0) as usize;
            let end = seg.offsets[keep];
            if let Err(e) = seg.file.set_len(end).and_then(|()| seg.file.sync_all()) {
                let why = format!("truncation of {} failed: {e}", seg.path.display());
                return Err(st.poison(why));
            }
            seg.offsets.truncate(keep);
            seg.len = end;
        }
        // The segment appends go to now reserves its space again (an older
        // one gave its reserve back when the log rolled past it). Only a
        // speed-up: without it appends grow the file.
        let reserve = preallocate_bytes(&self.opts, &self.wal_dir);
        let seg = st.active();
        if let Err(e) = segment::preallocate(&seg.file, reserve) {
            tracing::warn!(segment = %seg.path.display(), "could not reserve space after truncating: {e}");
        }
        st.last = lsn;
        st.flushed = st.flushed.min(lsn);
        st.history.truncate_after(lsn);
        st.cache.truncate_after(lsn);
        st.generation += 1;
        Ok(())
    }

    fn reset_locked(&self, st: &mut State, base: Lsn, base_epoch: Epoch) -> Result<(), WalError> {
        let header = SegmentHeader::new(base.next(), base_epoch);
        let reserve = preallocate_bytes(&self.opts, &self.wal_dir);
        segment::write_pending(&self.wal_dir, header, reserve).map_err(io_err(format!(
            "preparing a new segment in {}",
            self.wal_dir.display()
        )))?;
        // Newest first, as in truncation: until the rename below, a crash
        // leaves a prefix of the old log and recovery drops the new file.
        // A failed trim's leftovers are the oldest: they go last.
        while let Some(seg) = st.segments.last() {
            if let Err(e) = self.remove_segment(&seg.path) {
                let why = format!("reset could not remove {}: {e}", seg.path.display());
                return Err(st.poison(why));
            }
            st.segments.pop();
        }
        while let Some(path) = st.leftover.last() {
            if let Err(e) = self.remove_let_go(path) {
                let why = format!("reset could not remove {}: {e}", path.display());
                return Err(st.poison(why));
            }
            st.leftover.pop();
        }
        match segment::commit_pending(&self.wal_dir, header) {
            Ok(seg) => st.segments.push(seg),
            Err(e) => {
                let why = format!(
                    "reset could not install its segment in {}: {e}",
                    self.wal_dir.display()
                );
                return Err(st.poison(why));
            }
        }
        st.last = base;
        st.flushed = base;
        st.history = EpochHistory::starting_after(base, base_epoch);
        st.cache.clear();
        st.dir_dirty = false;
        st.generation += 1;
        // Only so a reopen shows exactly this history: a stale copy is
        // already harmless (recovery drops one that disagrees with the new
        // base), so failing to write it does not undo or fail the reset.
        // A failed replace of the meta file poisons the log, though, and a
        // reset must not then report success to a caller about to append.
        let meta = st.meta.clone();
        match self.persist_meta(st, &meta) {
            Err(e @ WalError::Poisoned(_)) => return Err(e),
            Err(e) => tracing::warn!(
                "WAL reset done, but recording its history in the meta file failed: {e}"
            ),
            Ok(()) => {}
        }
        Ok(())
    }

    /// Writes `meta` with the current history. Runs under the state lock:
    /// meta changes are rare (epoch changes, retention), and that keeps
    /// the file's history in step with memory without a second lock.
    fn persist_meta(&self, st: &mut State, meta: &WalMeta) -> Result<(), WalError> {
        meta::write_tmp(&self.dir, &meta::encode(meta, &st.history))?;
        if let Err(e) = meta::replace(&self.dir) {
            return Err(st.poison(format!("{e}; the meta file on disk may be old or new")));
        }
        st.meta = meta.clone();
        st.persisted_history = st.history.clone();
        Ok(())
    }
}

impl WalStore for FileWal {
    fn append(&self, records: &[Record]) -> Result<(), WalError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_poison()?;
        let limit = self.opts.max_record_bytes.min(record::MAX_PAYLOAD);
        if let Some(r) = records.iter().find(|r| r.payload.len() > limit) {
            return Err(WalError::TooLarge {
                size: r.payload.len(),
                limit,
            });
        }
        check_append(st.last, st.last_epoch(), records)?;
        let Some(last) = records.last() else {
            return Ok(());
        };
        let batch: usize = records.iter().map(record::encoded_len).sum();
        if st.active().header.format == FrameFormat::V1
            && records.iter().any(|r| r.request_id.is_some())
        {
            self.upgrade_active(st)?;
        }
        let active = st.active();
        if !active.offsets.is_empty() && active.len + batch as u64 > self.opts.segment_bytes {
            self.roll(st)?;
        }
        let seg = st.active();
        let start = seg.len;
        let mut buf = Vec::with_capacity(batch);
        let mut offsets = Vec::with_capacity(records.len());
        for r in records {
            offsets.push(start + buf.len() as u64);
            record::encode(r, &mut buf);
        }
        if let Err(e) = seg.file.write_all_at(&buf, start) {
            // A partial write can leave whole frames past `start`; if a
            // later, shorter batch did not cover them, recovery would
            // take them for records that follow it.
            // The cut is made durable: the writers are told nothing was
            // written, and frames a crash kept past an undone cut would
            // come back as records.
            let err = io_err(format!("appending to {}", seg.path.display()))(e);
            if let Err(cut) = seg.file.set_len(start).and_then(|()| seg.file.sync_all()) {
                let why = format!("{err}, and cutting the partial write failed: {cut}");
                return Err(st.poison(why));
            }
            return Err(err);
        }
        seg.offsets.extend(offsets);
        seg.len = start + buf.len() as u64;
        st.last = last.lsn;
        for r in records {
            st.history.note(r.lsn, r.epoch);
            st.cache.push(r.clone());
        }
        Ok(())
    }

    fn sync(&self) -> Result<Lsn, WalError> {
        let mut st = self.lock();
        let wanted = st.last;
        loop {
            st.check_poison()?;
            // `min`: a truncation while we waited may have removed records
            // we wanted; later ones are not ours to wait for.
            let wanted = wanted.min(st.last);
            if st.flushed >= wanted {
                return Ok(st.flushed);
            }
            if !st.rounds.will_cover(wanted) && st.rounds.may_start() {
                break;
            }
            st = self
                .sync_done
                .wait(st)
                .expect("FileWal state lock poisoned");
        }
        // Lead a round for everything appended so far, including what
        // callers waiting behind us appended; it may overlap the round
        // before it (see `rounds`).
        let target = st.last;
        let round = st.rounds.start(target);
        let active = st.active();
        let (path, file) = (active.path.clone(), active.file.clone());
        let dir_dirty = std::mem::take(&mut st.dir_dirty);
        drop(st);

        self.syncs.fetch_add(1, Ordering::SeqCst);
        let result = self.flush(&path, &file, dir_dirty);

        let mut st = self.lock();
        // The kernel may have dropped the dirty pages and marked them
        // clean, so a retry could "succeed" without the data: never trust
        // this log again in this process.
        if let Err(why) = result {
            st.poison(why);
        }
        let published = st.rounds.end(round, target);
        if let Some(lsn) = published
            && st.poisoned.is_none()
        {
            st.flushed = st.flushed.max(lsn);
        }
        self.sync_done.notify_all();
        // An older round still in flight holds ours back.
        while st.poisoned.is_none() && st.flushed < target.min(st.last) {
            st = self
                .sync_done
                .wait(st)
                .expect("FileWal state lock poisoned");
        }
        st.check_poison()?;
        Ok(st.flushed)
    }

    fn read(
        &self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, WalError> {
        loop {
            let (plan, generation) = {
                let st = self.lock();
                if st.segments.is_empty() {
                    // A reset removed the log and could not install its
                    // new segment: nothing is readable.
                    st.check_poison()?;
                }
                if from > st.last {
                    return Ok(Vec::new());
                }
                let first = st.first_lsn();
                if from < first {
                    return Err(WalError::NotRetained { lsn: from, first });
                }
                if let Some(records) = st.cache.read(from, max_records, max_bytes) {
                    return Ok(records);
                }
                (
                    read::plan_read(&st, from, max_records, max_bytes),
                    st.generation,
                )
            };
            #[cfg(test)]
            self.hold_read.pass();
            let result = read::read_chunks(&plan);
            // Appends only add past what was planned and removed segments
            // stay readable through their handles; only a rewrite in place
            // could have mixed old and new records (or torn one) under us.
            let unchanged = self.lock().generation == generation;
            read::let_go(plan);
            if unchanged {
                return result;
            }
        }
    }

    fn last_lsn(&self) -> Lsn {
        self.lock().last
    }

    fn flushed_lsn(&self) -> Lsn {
        self.lock().flushed
    }

    fn first_lsn(&self) -> Lsn {
        self.lock().first_lsn()
    }

    fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        let st = self.lock();
        if lsn == Lsn::ZERO {
            return Some(Epoch::ZERO);
        }
        if lsn > st.last {
            return None;
        }
        st.history.epoch_at(lsn)
    }

    fn history(&self) -> EpochHistory {
        self.lock().history.clone()
    }

    fn truncate_after(&self, lsn: Lsn) -> Result<u64, WalError> {
        let _rewriting = self
            .rewriting
            .lock()
            .expect("FileWal rewrite lock poisoned");
        let mut guard = self.lock_idle();
        let st = &mut *guard;
        st.check_poison()?;
        let last = st.last;
        if lsn >= last {
            return Ok(0);
        }
        let first = st.first_lsn();
        if lsn < first {
            // Nothing retained survives: the log restarts after `lsn`.
            let epoch = match lsn {
                Lsn::ZERO => Epoch::ZERO,
                _ => st
                    .history
                    .epoch_at(lsn)
                    .unwrap_or(st.segments[0].header.base_epoch),
            };
            self.reset_locked(st, lsn, epoch)?;
            return Ok(last.0 - first.prev().0);
        }
        self.truncate_locked(st, lsn)?;
        Ok(last.0 - lsn.0)
    }

    fn remove_before(&self, lsn: Lsn) -> Result<(), WalError> {
        let _rewriting = self
            .rewriting
            .lock()
            .expect("FileWal rewrite lock poisoned");
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_poison()?;
        let limit = lsn.prev().min(st.flushed);
        let count = st.segments[..st.segments.len() - 1]
            .iter()
            .take_while(|s| s.last_lsn() <= limit)
            .count();
        if count == 0 {
            return Ok(());
        }
        // The removed records take their epochs with them; the meta file
        // must know them first so `epoch_at` still answers after a restart.
        if st.persisted_history != st.history {
            let meta = st.meta.clone();
            self.persist_meta(st, &meta)?;
        }
        // The first segment left is what says where the log starts. Every
        // segment but the active one was fsynced when the next began; the
        // active one may not have been reached by any sync yet, and a crash
        // that kept the removals but tore its header would leave a log
        // that cannot be opened.
        if count == st.segments.len() - 1 {
            let active = st.active();
            let (path, file) = (active.path.clone(), active.file.clone());
            let synced = self.fsync(&path, &file).and_then(|()| {
                segment::sync_dir(&self.wal_dir)
                    .map_err(|e| format!("fsync of {} failed: {e}", self.wal_dir.display()))
            });
            if let Err(why) = synced {
                return Err(st.poison(why));
            }
        }
        // The log lets go of them in memory first, and their files go
        // after the lock is released: each removal waits for a directory
        // fsync, and the last close of an unlinked file frees its blocks,
        // which appends must not wait for. `rewriting` keeps truncation
        // and reset out until the files are gone. A crash part-way leaves
        // a longer log, which recovery accepts; oldest first, so what
        // remains on disk is always a gapless suffix. A failed removal
        // leaves its file, and those after it, in `leftover`.
        let removed: Vec<Segment> = st.segments.drain(..count).collect();
        let first = st.first_lsn();
        st.cache.remove_before(first);
        let mut paths = std::mem::take(&mut st.leftover);
        paths.extend(removed.iter().map(|s| s.path.clone()));
        drop(guard);
        #[cfg(test)]
        self.hold_removal.pass();
        for (i, path) in paths.iter().enumerate() {
            if let Err(e) = self.remove_let_go(path) {
                // Older than every segment still listed: the next trim,
                // or a reset, removes them first.
                self.lock().leftover = paths[i..].to_vec();
                return Err(io_err(format!("removing {}", path.display()))(e));
            }
        }
        drop(removed);
        Ok(())
    }

    fn reset(&self, base: Lsn, base_epoch: Epoch) -> Result<(), WalError> {
        let _rewriting = self
            .rewriting
            .lock()
            .expect("FileWal rewrite lock poisoned");
        let mut guard = self.lock_idle();
        guard.check_poison()?;
        self.reset_locked(&mut guard, base, base_epoch)
    }

    fn set_snapshot_ids(&self, ids: &[RequestIdAt]) -> Result<(), WalError> {
        self.lock().check_poison()?;
        snapshot_ids::store(&self.dir, ids)
    }

    fn snapshot_ids(&self) -> Result<Vec<RequestIdAt>, WalError> {
        snapshot_ids::load(&self.dir)
    }

    fn bytes_from(&self, from: Lsn) -> u64 {
        let st = self.lock();
        if from > st.last {
            return 0;
        }
        let from = from.max(st.first_lsn());
        st.segments
            .iter()
            .filter(|s| s.last_lsn() >= from)
            .map(|s| {
                let start = if s.first_lsn() >= from {
                    segment::HEADER_LEN
                } else {
                    s.frame(from).0
                };
                s.len - start
            })
            .sum()
    }

    fn meta(&self) -> WalMeta {
        self.lock().meta.clone()
    }

    fn set_meta(&self, meta: &WalMeta) -> Result<(), WalError> {
        let mut guard = self.lock();
        guard.check_poison()?;
        self.persist_meta(&mut guard, meta)
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WalError {
    let what = what.into();
    move |source| WalError::Io { what, source }
}

fn corrupt(segment: &Path, offset: u64, detail: String) -> WalError {
    WalError::Corrupt {
        segment: segment.to_path_buf(),
        offset,
        detail,
    }
}
