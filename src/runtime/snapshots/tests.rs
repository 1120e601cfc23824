//! The snapshots a primary builds and serves: one build for concurrent
//! requests, reused while fresh; what each transfer sends.

use super::*;
use crate::testing::MemStateMachine;
use crate::types::Record;
use crate::wal::MemWal;
use std::time::Duration;

/// Snapshots of `sm` over `wal`, built in a temporary directory (returned:
/// it lives as long as the test holds it).
fn store(
    sm: Arc<dyn crate::StateMachine>,
    wal: Arc<dyn WalStore>,
) -> (Arc<Snapshots>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = Snapshots::new(Some(dir.path().to_path_buf()), sm, wal);
    (Arc::new(s), dir)
}

fn append(wal: &dyn WalStore, sm: &MemStateMachine, from: u64, to: u64) {
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

/// What one transfer of build `id` sends from `resume`: its announcement
/// (checked to come first), the bytes (checked to continue one another,
/// none after the `End`) and the CRC of its `End`, if it sent one.
async fn transfer(
    snapshots: &Arc<Snapshots>,
    id: u64,
    resume: u64,
    crc_after_data: bool,
) -> (crate::pb::SnapshotInfo, Vec<u8>, Option<u32>) {
    use crate::pb::snapshot_chunk::Part;
    use futures::StreamExt;
    let parts: Vec<_> = crate::transport::server::snapshot_stream(
        snapshots.get(),
        (id, resume),
        crc_after_data,
        Duration::from_secs(5),
        1 << 20,
    )
    .map(|p| p.unwrap().part.unwrap())
    .collect()
    .await;
    let what = format!("crc_after_data {crc_after_data}, from {resume}");
    let Some(Part::Info(info)) = parts.first().cloned() else {
        panic!("{what}: announced first")
    };
    let mut data = Vec::new();
    let mut ended = None;
    for p in &parts[1..] {
        match p {
            Part::Data(d) => {
                assert!(ended.is_none(), "{what}: no data after the end");
                assert_eq!(d.offset as usize, resume as usize + data.len(), "{what}");
                data.extend_from_slice(&d.data);
            }
            Part::End(e) => ended = Some(e.crc),
            Part::Building(_) | Part::Info(_) => panic!("{what}: {p:?}"),
        }
    }
    (info, data, ended)
}

/// Two requests while the engine builds join one build and get the
/// same snapshot; the file holds what the engine wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_build() {
    let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
    append(&*wal, &sm, 1, 3);
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

/// A build under way when the node's state is replaced (a rejoin restores
/// a snapshot and resets the WAL) is of a state the node no longer has:
/// its waiters get an error, never that build, and the next request
/// builds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_under_way_when_the_state_is_replaced_is_never_served() {
    let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
    append(&*wal, &sm, 1, 3);
    sm.set_snapshot_delay(Duration::from_millis(300));
    let (snapshots, _dir) = store(sm.clone(), wal);
    let pending = snapshots.get();
    snapshots.invalidate();
    let err = pending.await.unwrap_err();
    assert!(err.contains("state was replaced"), "{err}");
    assert!(snapshots.inner.lock().unwrap().current.is_none());
    sm.set_snapshot_delay(Duration::ZERO);
    let again = snapshots.get().await.unwrap();
    assert_eq!(sm.snapshots_taken(), 2, "built again");
    assert_eq!(again.lsn, Lsn(3));
}

/// A build is reused while the WAL continues from it, and replaced
/// (its file removed once unused) when the WAL no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_build_is_reused_and_a_stale_one_rebuilt() {
    let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
    append(&*wal, &sm, 1, 3);
    let (snapshots, _dir) = store(sm.clone(), wal.clone());
    let first = snapshots.get().await.unwrap();
    append(&*wal, &sm, 4, 10);
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

/// A log on a "disk" that may block (its calls run on blocking threads),
/// never held.
fn disk_wal() -> Arc<crate::wal::gated::GatedWal> {
    let (wal, _) = crate::wal::gated::GatedWal::new(crate::wal::gated::Held::Removals);
    wal.open();
    Arc::new(wal)
}

/// A stale build is dropped, and its file (possibly of gigabytes, slow to
/// unlink) removed, on a blocking thread when the disk may block: not on
/// the node's task that asked for a snapshot, which also answers the
/// peer's heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_builds_file_is_removed_off_the_thread_that_asked() {
    let (sm, wal) = (Arc::new(MemStateMachine::new()), disk_wal());
    assert!(wal.may_block());
    append(&*wal, &sm, 1, 3);
    let (snapshots, _dir) = store(sm.clone(), wal.clone());
    let first = snapshots.get().await.unwrap();
    let path = first.path().unwrap().to_path_buf();
    drop(first);
    append(&*wal, &sm, 4, 10);
    wal.sync().unwrap();
    wal.remove_before(Lsn(6)).unwrap();
    let asked_on = std::thread::current().id();
    let newer = snapshots.get();
    assert_ne!(
        crate::unlinked::closing_of(&path).await,
        asked_on,
        "the stale build's file was closed by the caller of get"
    );
    assert_eq!(newer.await.unwrap().lsn, Lsn(10));
}

/// A transfer that ends after its build was replaced holds the file's
/// last reference: its last close, which frees the blocks, happens on a
/// blocking thread too, not on the task that ends the transfer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_builds_file_goes_off_the_thread_of_its_last_transfer() {
    let (sm, wal) = (Arc::new(MemStateMachine::new()), disk_wal());
    append(&*wal, &sm, 1, 3);
    let (snapshots, _dir) = store(sm.clone(), wal.clone());
    let build = snapshots.get().await.unwrap();
    let path = build.path().unwrap().to_path_buf();
    let mut reader = build.reader(0);
    assert_eq!(reader.next_chunk(1).await.unwrap().len(), 1);
    drop(build);
    snapshots.invalidate();
    assert!(path.exists(), "a transfer still reads it");
    let ended_on = std::thread::current().id();
    drop(reader);
    assert_ne!(
        crate::unlinked::closing_of(&path).await,
        ended_on,
        "the file was closed by the task that ended the transfer"
    );
    assert!(!path.exists());
}

/// A build the engine holds is let go of at once when the state is
/// replaced, also where the disk may block: the rejoin that replaces it
/// restores right after and counts on the engine having it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_held_build_is_released_at_once_when_the_state_is_replaced() {
    let (sm, wal) = (Arc::new(MemStateMachine::new()), disk_wal());
    append(&*wal, &sm, 1, 3);
    let engine = own_file(&sm);
    let (snapshots, _dir) = store(engine.clone(), wal);
    drop(snapshots.get().await.unwrap());
    let released = || engine.released.load(std::sync::atomic::Ordering::SeqCst);
    assert!(!released(), "cached");
    snapshots.invalidate();
    assert!(
        released(),
        "the engine's file was not let go of when invalidate returned"
    );
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
    append(&*wal, &sm, 1, 3);
    sm.set_snapshot_padding(5000);
    let engine = own_file(&sm);
    let (snapshots, _dir) = store(engine.clone(), wal);
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
    append(&*wal, &sm, 1, 10);
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
        ) -> Result<Option<crate::state_machine::SnapshotFile>, crate::StateMachineError> {
            self.0.snapshot_file()
        }
    }
    for (claimed, served) in [(Lsn(4), false), (Lsn(5), true)] {
        *engine.reports.lock().unwrap() = Some(claimed);
        let (snapshots, _dir) = store(Arc::new(Both(engine.clone())), wal.clone());
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
    let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
    append(&*wal, &sm, 1, 3);
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
        let (snapshots, _dir) = store(engine.clone(), wal.clone());
        let id = snapshots.get().await.unwrap().id;
        let what = format!("crc_after_data {after}, from {resume}");
        let (info, data, ended) = transfer(&snapshots, id, resume, after).await;
        assert_eq!((!info.crc_follows).then_some(info.crc), announced, "{what}");
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
    fn snapshot_source(&self) -> Result<Option<Box<dyn SnapshotSource>>, crate::StateMachineError> {
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
    let (sm, wal) = (Arc::new(MemStateMachine::new()), Arc::new(MemWal::new()));
    append(&*wal, &sm, 1, 3);
    sm.set_snapshot_padding(3 << 20);
    let mut expected = Vec::new();
    sm.snapshot(&mut expected).unwrap();
    let engine = Arc::new(FromSource {
        inner: sm.clone(),
        opened_at: Arc::default(),
        dropped: Arc::default(),
    });
    let (snapshots, dir) = store(engine.clone(), wal);
    let b = snapshots.get().await.unwrap();
    assert_eq!(
        (b.lsn, b.len, b.path()),
        (Lsn(3), expected.len() as u64, None)
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "no file");
    let id = b.id;
    drop(b);
    for (resume, crc_follows) in [(0, true), (1000, false)] {
        let (info, data, end) = transfer(&snapshots, id, resume, true).await;
        assert_eq!(info.crc_follows, crc_follows, "from {resume}");
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
