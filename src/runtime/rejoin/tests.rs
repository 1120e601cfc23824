use super::request_ids::ID_FETCH_TRIES;
use super::*;
use crate::testing::MemStateMachine;
use crate::transport::{MockPeer, SnapshotStream};
use crate::wal::MemWal;
use bytes::Bytes;
use std::sync::Mutex;

/// The transfer the fake primary sends: the snapshot `data` announced
/// with `crc` and `total`, its bytes in chunks of 4, cut after `cut`
/// chunks (an error) if given; every request is recorded. With
/// `trailer`, a transfer from offset 0 announces no CRC and sends `crc`
/// in an `End` after the data, as a primary does for a standby that
/// asks for `crc_after_data`; `tamper` then changes the parts before
/// they go. It lists a request id for each record of the snapshot (1..=5),
/// two per reply; the first `ids_failing` asks for them fail.
struct Primary {
    data: Vec<u8>,
    crc: u32,
    total: u64,
    cut: Mutex<Vec<Option<usize>>>,
    requests: Mutex<Vec<(u64, u64)>>,
    trailer: bool,
    tamper: fn(&mut Vec<Result<SnapshotPart, TransportError>>),
    ids_failing: Mutex<u32>,
}

/// The id the fake primary lists for its record `lsn`.
fn id_at(lsn: u64) -> RequestIdAt {
    RequestIdAt {
        id: crate::types::RequestId::from(lsn as u128 * 100),
        lsn: Lsn(lsn),
        epoch: Epoch(1),
    }
}

fn request_ids(
    p: &Primary,
    after: Lsn,
    up_to: Lsn,
) -> Result<Option<crate::transport::RequestIds>, TransportError> {
    let mut failing = p.ids_failing.lock().unwrap();
    if *failing > 0 {
        *failing -= 1;
        return Err(TransportError::Unreachable("cut".into()));
    }
    let end = (after.0 + 2).min(up_to.0);
    Ok(Some(crate::transport::RequestIds {
        ids: (after.0 + 1..=end).map(id_at).collect(),
        more: end < up_to.0,
    }))
}

fn stream(p: &Primary, req: &SnapshotRequest) -> SnapshotStream {
    assert!(
        req.crc_after_data,
        "the standby takes the CRC after the data"
    );
    p.requests
        .lock()
        .unwrap()
        .push((req.snapshot_id, req.offset));
    let offset = if req.snapshot_id == 7 { req.offset } else { 0 };
    let trailing = p.trailer && offset == 0;
    let mut parts = vec![Ok(SnapshotPart::Info(SnapshotInfo {
        id: 7,
        lsn: Lsn(5),
        epoch: Epoch(1),
        total_bytes: p.total,
        crc: (!trailing).then_some(p.crc),
        offset,
    }))];
    let cut = p.cut.lock().unwrap().remove(0);
    let mut at = offset as usize;
    let mut was_cut = false;
    for n in 0.. {
        if at >= p.data.len() {
            break;
        }
        if cut == Some(n) {
            parts.push(Err(TransportError::Unreachable("cut".into())));
            was_cut = true;
            break;
        }
        let end = (at + 4).min(p.data.len());
        parts.push(Ok(SnapshotPart::Data {
            offset: at as u64,
            data: Bytes::copy_from_slice(&p.data[at..end]),
        }));
        at = end;
    }
    if trailing && !was_cut {
        parts.push(Ok(SnapshotPart::End { crc: p.crc }));
    }
    (p.tamper)(&mut parts);
    Box::pin(futures::stream::iter(parts))
}

fn ctx(primary: Arc<Primary>, sm: Arc<dyn StateMachine>, dir: &Path) -> Ctx {
    let wal: Arc<dyn WalStore> = Arc::new(MemWal::new());
    let mut peer = MockPeer::new();
    let listing = primary.clone();
    peer.expect_fetch_snapshot()
        .returning(move |req| Ok(stream(&primary, &req)));
    peer.expect_fetch_request_ids()
        .returning(move |_, after, up_to| request_ids(&listing, after, up_to));
    Ctx {
        cfg: Config::default(),
        wal: wal.clone(),
        sm: sm.clone(),
        peer: Arc::new(peer),
        tx: mpsc::channel(8).0,
        header: header(),
        leader: NodeId::from("n2"),
        others: Vec::new(),
        applier: None,
        rewound_dir: None,
        snapshots: Arc::new(super::super::Snapshots::new(
            Some(dir.to_path_buf()),
            sm,
            wal,
        )),
        metrics: Arc::new(Metrics::default()),
        cancel: CancellationToken::new(),
        restore_lock: Default::default(),
    }
}

fn header() -> Header {
    Header {
        cluster_id: "c".into(),
        epoch: Epoch(1),
        node_id: NodeId::from("n1"),
        node_addr: "127.0.0.1:1".into(),
        leader_id: None,
        client_addr: None,
    }
}

/// One transfer into `incoming`, the engine restoring from the file after
/// it (`receive_snapshot` as a node whose engine does not restore while
/// receiving).
async fn receive(
    ctx: &Ctx,
    incoming: &mut Option<Incoming>,
) -> Result<Option<SnapshotInfo>, Fatal> {
    receive_snapshot(ctx, &ctx.header, incoming, &mut Restoring::AfterTransfer).await
}

/// One resync whose engine restores while the transfer arrives.
async fn resync_while_receiving(
    ctx: &Ctx,
    incoming: &mut Option<Incoming>,
) -> Result<Option<Vec<RequestIdAt>>, Fatal> {
    resync_from_snapshot(ctx, &ctx.header, incoming, Restoring::WhileReceiving(None)).await
}

/// A snapshot `MemStateMachine` restores: its hash, then padding.
fn snapshot_bytes() -> Vec<u8> {
    let source = MemStateMachine::new();
    source.apply(Lsn(1), b"a").unwrap();
    source.set_snapshot_padding(30);
    let mut out = Vec::new();
    source.snapshot(&mut out).unwrap();
    out
}

/// A primary sending `data` whole, its CRC announced, cut as `cuts` say.
fn primary_of(data: &[u8], cuts: Vec<Option<usize>>) -> Arc<Primary> {
    primary(data.to_vec(), crc32c::crc32c(data), data.len() as u64, cuts)
}

fn primary(data: Vec<u8>, crc: u32, total: u64, cuts: Vec<Option<usize>>) -> Arc<Primary> {
    Arc::new(Primary {
        data,
        crc,
        total,
        cut: Mutex::new(cuts),
        requests: Mutex::new(Vec::new()),
        trailer: false,
        tamper: |_| {},
        ids_failing: Mutex::new(0),
    })
}

/// A primary that sends the CRC after the data, its parts changed by
/// `tamper` on the first transfer.
fn trailing_primary(
    data: Vec<u8>,
    crc: u32,
    cuts: Vec<Option<usize>>,
    tamper: fn(&mut Vec<Result<SnapshotPart, TransportError>>),
) -> Arc<Primary> {
    let total = data.len() as u64;
    Arc::new(Primary {
        data,
        crc,
        total,
        cut: Mutex::new(cuts),
        requests: Mutex::new(Vec::new()),
        trailer: true,
        tamper,
        ids_failing: Mutex::new(0),
    })
}

/// The CRC after the data: announced without one, checked against
/// the `End` that follows the last byte; the file holds the snapshot.
#[tokio::test]
async fn a_crc_sent_after_the_data_is_checked_against_the_bytes_received() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = trailing_primary(data.clone(), crc32c::crc32c(&data), vec![None], |_| {});
    let ctx = ctx(p, Arc::new(MemStateMachine::new()), dir.path());
    let mut incoming = None;
    let info = match receive(&ctx, &mut incoming).await {
        Ok(Some(info)) => info,
        _ => panic!("the transfer completes"),
    };
    assert_eq!(info.crc, Some(crc32c::crc32c(&data)), "taken from the End");
    let got = std::fs::read(&incoming.as_ref().unwrap().path).unwrap();
    assert_eq!(got, data);
}

/// A trailing CRC that does not match, or an `End` out of place (before
/// the last byte, twice, after an announced CRC, followed by data):
/// the transfer is refused, its files deleted, nothing restored.
#[tokio::test]
async fn a_wrong_or_misplaced_trailing_crc_refuses_the_snapshot_and_deletes_it() {
    type Tamper = fn(&mut Vec<Result<SnapshotPart, TransportError>>);
    let cases: [(&str, bool, Tamper); 5] = [
        ("a wrong CRC", true, |_| {}),
        ("before the last byte", false, |p| {
            let end = p.pop().unwrap();
            p.insert(3, end);
        }),
        ("twice", false, |p| {
            let Some(Ok(SnapshotPart::End { crc })) = p.last() else {
                panic!("ends with its CRC")
            };
            let crc = *crc;
            p.push(Ok(SnapshotPart::End { crc }));
        }),
        ("after an announced CRC", false, |p| {
            if let Ok(SnapshotPart::Info(i)) = &mut p[0] {
                i.crc = Some(0);
            }
        }),
        ("followed by data", false, |p| {
            let Ok(SnapshotPart::Data { offset, data }) = &p[1] else {
                panic!("data first")
            };
            let again = SnapshotPart::Data {
                offset: *offset,
                data: data.clone(),
            };
            p.push(Ok(again));
        }),
    ];
    let data = snapshot_bytes();
    for (what, wrong_crc, tamper) in cases {
        let dir = tempfile::tempdir().unwrap();
        let good = crc32c::crc32c(&data);
        let crc = if wrong_crc { good ^ 1 } else { good };
        let sm = Arc::new(MemStateMachine::new());
        let p = trailing_primary(data.clone(), crc, vec![None], tamper);
        let ctx = ctx(p, sm.clone(), dir.path());
        let mut incoming = None;
        let r = receive(&ctx, &mut incoming).await;
        assert!(matches!(r, Ok(None)), "{what}: refused");
        assert!(incoming.is_none(), "{what}: what arrived is dropped");
        for name in [incoming::DATA_FILE, incoming::SIDECAR_FILE] {
            assert!(!dir.path().join(name).exists(), "{what}: {name} deleted");
        }
        assert_eq!(sm.restores(), 0, "{what}");
    }
}

/// A transfer cut after its last byte but before its trailing CRC
/// keeps the bytes; the resume asks from the end, the primary then
/// announces the CRC, and the whole is checked.
#[tokio::test]
async fn a_transfer_cut_before_its_trailing_crc_resumes_from_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = trailing_primary(data.clone(), crc32c::crc32c(&data), vec![None, None], |p| {
        if let Some(Ok(SnapshotPart::End { .. })) = p.last() {
            p.pop();
        }
    });
    let ctx = ctx(p.clone(), Arc::new(MemStateMachine::new()), dir.path());
    let mut incoming = None;
    let first = receive(&ctx, &mut incoming).await;
    assert!(matches!(first, Ok(None)), "not done without its CRC");
    assert_eq!(incoming.as_ref().unwrap().received, data.len() as u64);
    // The node restarts: the sidecar says the CRC comes after the data.
    drop(incoming.take());
    let mut incoming = Incoming::recover(dir.path());
    assert_eq!(incoming.as_ref().unwrap().info.crc, None);
    let done = receive(&ctx, &mut incoming).await;
    assert!(matches!(done, Ok(Some(_))), "completed by the resume");
    let len = data.len() as u64;
    assert_eq!(*p.requests.lock().unwrap(), vec![(0, 0), (7, len)]);
}

#[tokio::test]
async fn a_cut_transfer_resumes_at_the_bytes_received_and_checks_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = primary_of(&data, vec![Some(3), None]);
    let sm = Arc::new(MemStateMachine::new());
    let ctx = ctx(p.clone(), sm, dir.path());
    let mut incoming = None;
    let first = receive(&ctx, &mut incoming).await;
    assert!(matches!(first, Ok(None)), "the cut transfer is not done");
    assert_eq!(incoming.as_ref().unwrap().received, 12);
    let done = receive(&ctx, &mut incoming).await;
    let info = match done {
        Ok(Some(info)) => info,
        _ => panic!("the resumed transfer completes"),
    };
    assert_eq!(info.lsn, Lsn(5));
    assert_eq!(*p.requests.lock().unwrap(), vec![(0, 0), (7, 12)]);
    let got = std::fs::read(&incoming.as_ref().unwrap().path).unwrap();
    assert_eq!(got, data, "the file holds the snapshot, once");
}

#[tokio::test]
async fn a_corrupt_or_short_transfer_is_refused_and_nothing_restored() {
    let data = snapshot_bytes();
    let good = crc32c::crc32c(&data);
    let cases = [
        // A wrong checksum.
        (data.clone(), good ^ 1, data.len() as u64),
        // A flipped byte.
        (
            {
                let mut d = data.clone();
                d[13] ^= 0xff;
                d
            },
            good,
            data.len() as u64,
        ),
        // More bytes than announced.
        (data.clone(), good, data.len() as u64 - 4),
    ];
    for (sent, crc, total) in cases {
        let dir = tempfile::tempdir().unwrap();
        let sm = Arc::new(MemStateMachine::new());
        let ctx = ctx(
            primary(sent, crc, total, vec![None]),
            sm.clone(),
            dir.path(),
        );
        let mut incoming = None;
        let r = receive(&ctx, &mut incoming).await;
        assert!(matches!(r, Ok(None)), "refused");
        assert!(incoming.is_none(), "what arrived is dropped");
        assert_eq!(sm.restores(), 0);
    }
    // Fewer bytes than announced: not done, kept for a resume.
    let dir = tempfile::tempdir().unwrap();
    let sm = Arc::new(MemStateMachine::new());
    let p = primary(data[..20].to_vec(), good, data.len() as u64, vec![None]);
    let ctx = ctx(p, sm.clone(), dir.path());
    let mut incoming = None;
    let r = receive(&ctx, &mut incoming).await;
    assert!(matches!(r, Ok(None)), "a short transfer is not done");
    assert_eq!(incoming.as_ref().unwrap().received, 20);
    assert_eq!(sm.restores(), 0);
}

/// A standby restarted mid-transfer seeds its CRC from the prefix on
/// disk, not from what it believed it wrote: a prefix damaged while
/// the node was down (here, one flipped byte) fails the check at the
/// end of the resumed transfer, and nothing is restored.
#[tokio::test]
async fn a_resumed_transfer_checks_the_prefix_already_on_disk() {
    let data = snapshot_bytes();
    let crc = crc32c::crc32c(&data);
    for damage in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let p = primary(data.clone(), crc, data.len() as u64, vec![Some(3), None]);
        let sm = Arc::new(MemStateMachine::new());
        let ctx = ctx(p.clone(), sm.clone(), dir.path());
        let mut incoming = None;
        let first = receive(&ctx, &mut incoming).await;
        assert!(matches!(first, Ok(None)), "the cut transfer is not done");
        // The node stops; the prefix may change on disk meanwhile.
        drop(incoming.take());
        if damage {
            let path = dir.path().join(incoming::DATA_FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[5] ^= 0xff;
            std::fs::write(&path, &bytes).unwrap();
        }
        let mut incoming = Incoming::recover(dir.path());
        assert_eq!(incoming.as_ref().unwrap().received, 12);
        let done = receive(&ctx, &mut incoming).await;
        assert_eq!(*p.requests.lock().unwrap(), vec![(0, 0), (7, 12)]);
        if damage {
            assert!(matches!(done, Ok(None)), "the damaged prefix is caught");
            assert!(incoming.is_none(), "and the transfer starts over");
            assert!(!dir.path().join(incoming::DATA_FILE).exists());
        } else {
            assert!(matches!(done, Ok(Some(_))), "an intact prefix completes");
        }
        assert_eq!(sm.restores(), 0);
    }
}

/// An engine that keeps the received file: it records the bytes it
/// was handed, moves the file into its own directory and restores
/// from there.
struct Keeper {
    inner: MemStateMachine,
    own_dir: PathBuf,
    handed: Mutex<Vec<u8>>,
}

impl StateMachine for Keeper {
    crate::testing::pass_through_to!(inner);
    fn snapshot(&self, out: &mut dyn Write) -> Result<Lsn, crate::StateMachineError> {
        self.inner.snapshot(out)
    }
    fn restore_file(&self, lsn: Lsn, path: &Path) -> Result<(), crate::StateMachineError> {
        *self.handed.lock().unwrap() = std::fs::read(path).unwrap();
        let kept = self.own_dir.join("kept");
        std::fs::rename(path, &kept).unwrap();
        self.inner
            .restore(lsn, &mut std::fs::File::open(&kept).unwrap())
    }
}

/// The received, checked file is what the engine's `restore_file` gets
/// (byte for byte); a file it moved away stays where it put it, and
/// the incoming files are gone.
#[tokio::test]
async fn the_engine_gets_the_received_file_and_may_keep_it() {
    let dir = tempfile::tempdir().unwrap();
    let own = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = primary_of(&data, vec![None]);
    let ctx = ctx(p, Arc::new(MemStateMachine::new()), dir.path());
    let mut incoming = None;
    let info = match receive(&ctx, &mut incoming).await {
        Ok(Some(info)) => info,
        _ => panic!("the transfer completes"),
    };
    let path = incoming.take().unwrap().path;
    let keeper = Keeper {
        inner: MemStateMachine::new(),
        own_dir: own.path().to_path_buf(),
        handed: Mutex::new(Vec::new()),
    };
    restore_received(&keeper, &*ctx.wal, dir.path(), &path, &info, &[]).unwrap();
    assert_eq!(*keeper.handed.lock().unwrap(), data, "the snapshot's bytes");
    assert_eq!(std::fs::read(own.path().join("kept")).unwrap(), data);
    assert_eq!(keeper.applied_lsn(), info.lsn);
    for name in [incoming::DATA_FILE, incoming::SIDECAR_FILE] {
        assert!(!dir.path().join(name).exists(), "{name} removed");
    }
    assert_eq!(ctx.wal.last_lsn(), info.lsn, "the WAL goes on after it");
}

/// An engine with the default `restore_file` reads the received file
/// through `restore`; walrep then removes the file it left.
#[tokio::test]
async fn the_default_restore_file_reads_the_file_through_restore() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = primary_of(&data, vec![None]);
    let sm = Arc::new(MemStateMachine::new());
    let ctx = ctx(p, sm.clone(), dir.path());
    let mut incoming = None;
    let info = match receive(&ctx, &mut incoming).await {
        Ok(Some(info)) => info,
        _ => panic!("the transfer completes"),
    };
    let path = incoming.take().unwrap().path;
    restore_received(&*sm, &*ctx.wal, dir.path(), &path, &info, &[]).unwrap();
    assert_eq!(sm.restores(), 1);
    assert_eq!(sm.applied_lsn(), info.lsn, "restored at the announced LSN");
    assert!(!path.exists(), "the file the engine read is removed");
}

/// An engine that restores while receiving: it reads `incoming` to its
/// end, records each attempt (the bytes it read, whether the input ended
/// or failed, and the file at `path` when it ended), and restores only
/// after the end.
struct WhileReceiving {
    inner: MemStateMachine,
    attempts: Mutex<Vec<Attempt>>,
}

#[derive(Debug)]
struct Attempt {
    read: Vec<u8>,
    ended: bool,
    file_at_end: Option<Vec<u8>>,
}

impl StateMachine for WhileReceiving {
    crate::testing::pass_through_to!(inner);
    fn snapshot(&self, out: &mut dyn Write) -> Result<Lsn, crate::StateMachineError> {
        self.inner.snapshot(out)
    }
    fn restores_while_receiving(&self) -> bool {
        true
    }
    fn restore_while_receiving(
        &self,
        lsn: Lsn,
        len: u64,
        incoming: &mut dyn std::io::Read,
        path: &Path,
    ) -> Result<(), crate::StateMachineError> {
        let mut read = Vec::new();
        let ended = incoming.read_to_end(&mut read);
        let file_at_end = ended.is_ok().then(|| std::fs::read(path).unwrap());
        self.attempts.lock().unwrap().push(Attempt {
            read: read.clone(),
            ended: ended.is_ok(),
            file_at_end,
        });
        ended.map_err(|e| crate::StateMachineError::with_source("receiving", e))?;
        assert_eq!(read.len() as u64, len, "the announced length");
        self.inner.restore(lsn, &mut &read[..])
    }
}

fn while_receiving() -> Arc<WhileReceiving> {
    Arc::new(WhileReceiving {
        inner: MemStateMachine::new(),
        attempts: Mutex::new(Vec::new()),
    })
}

/// An engine that restores while receiving reads every byte of the
/// snapshot as it arrives, and its input ends only once the whole file
/// is in and checked (the file then holds exactly those bytes); then it
/// restores and the WAL goes on after the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_while_receiving_reads_every_byte_and_ends_after_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = trailing_primary(data.clone(), crc32c::crc32c(&data), vec![None], |_| {});
    let engine = while_receiving();
    let ctx = ctx(p, engine.clone(), dir.path());
    let mut incoming = None;
    let done = resync_while_receiving(&ctx, &mut incoming).await;
    assert!(matches!(done, Ok(Some(_))), "the transfer completes");
    let attempts = engine.attempts.lock().unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].ended, "{attempts:?}");
    assert_eq!(attempts[0].read, data, "every byte, in order");
    assert_eq!(
        attempts[0].file_at_end.as_deref(),
        Some(&data[..]),
        "at the end the file is whole"
    );
    assert_eq!(engine.applied_lsn(), Lsn(5));
    assert_eq!(ctx.wal.last_lsn(), Lsn(5), "the WAL goes on after it");
    assert!(!dir.path().join(incoming::DATA_FILE).exists());
}

/// The ids of the records a snapshot covers come from the primary one
/// reply at a time, and the WAL store keeps them, so a restart still
/// recognises retries of those writes; the newest `max_request_ids` are
/// kept.
#[tokio::test]
async fn a_resync_keeps_the_request_ids_the_snapshot_covers_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    for (capacity, kept) in [(100, 1..=5), (3, 3..=5)] {
        let p = primary_of(&data, vec![None]);
        *p.ids_failing.lock().unwrap() = ID_FETCH_TRIES - 1;
        let mut ctx = ctx(p, Arc::new(MemStateMachine::new()), dir.path());
        ctx.cfg.max_request_ids = capacity;
        let mut incoming = None;
        let done =
            resync_from_snapshot(&ctx, &ctx.header, &mut incoming, Restoring::AfterTransfer).await;
        let want: Vec<_> = kept.map(id_at).collect();
        assert!(
            matches!(&done, Ok(Some(ids)) if *ids == want),
            "capacity {capacity}"
        );
        assert_eq!(
            ctx.wal.snapshot_ids().unwrap(),
            want,
            "kept by the WAL store"
        );
        assert_eq!(ctx.wal.last_lsn(), Lsn(5));
    }
}

/// A link that keeps failing while the ids are fetched restores nothing;
/// the next attempt finds the whole snapshot already received and
/// completes. (A failure or two are tried again after a backoff, within
/// the attempt.)
#[tokio::test]
async fn a_failed_fetch_of_the_request_ids_restores_nothing_and_the_retry_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = primary_of(&data, vec![None, None]);
    *p.ids_failing.lock().unwrap() = ID_FETCH_TRIES;
    let sm = Arc::new(MemStateMachine::new());
    let ctx = ctx(p.clone(), sm.clone(), dir.path());
    let mut incoming = None;
    let first =
        resync_from_snapshot(&ctx, &ctx.header, &mut incoming, Restoring::AfterTransfer).await;
    assert!(matches!(first, Ok(None)), "not done");
    assert_eq!(sm.applied_lsn(), Lsn::ZERO, "nothing restored");
    assert_eq!(ctx.wal.snapshot_ids().unwrap(), vec![]);
    let done =
        resync_from_snapshot(&ctx, &ctx.header, &mut incoming, Restoring::AfterTransfer).await;
    assert!(matches!(done, Ok(Some(ids)) if ids.len() == 5));
    assert_eq!(sm.applied_lsn(), Lsn(5));
    assert_eq!(
        *p.requests.lock().unwrap(),
        vec![(0, 0), (7, data.len() as u64)],
        "resumed at its end"
    );
}

/// A transfer cut in the middle fails the running restore (its input
/// errors instead of ending, and nothing is restored); the resumed
/// transfer's restore reads the snapshot again from its first byte (the
/// prefix from disk, the rest as it arrives) and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_transfer_fails_the_restore_while_receiving_and_the_resume_restores_it_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = primary_of(&data, vec![Some(3), None]);
    let engine = while_receiving();
    let ctx = ctx(p.clone(), engine.clone(), dir.path());
    let mut incoming = None;
    let first = resync_while_receiving(&ctx, &mut incoming).await;
    assert!(matches!(first, Ok(None)), "the cut transfer is not done");
    assert_eq!(engine.applied_lsn(), Lsn::ZERO, "nothing restored");
    let done = resync_while_receiving(&ctx, &mut incoming).await;
    assert!(matches!(done, Ok(Some(_))), "the resume completes");
    assert_eq!(*p.requests.lock().unwrap(), vec![(0, 0), (7, 12)]);
    let attempts = engine.attempts.lock().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(!attempts[0].ended, "the cut fails the first restore");
    assert_eq!(attempts[0].read, data[..12], "what arrived before the cut");
    assert!(attempts[1].ended);
    assert_eq!(attempts[1].read, data, "the resumed restore reads it whole");
    assert_eq!(engine.applied_lsn(), Lsn(5));
}

/// A corrupt transfer (a flipped byte, caught by the CRC at the end) fails
/// the running restore instead of ending its input: nothing is restored
/// although the engine read every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_transfer_fails_the_restore_while_receiving_and_restores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let mut sent = data.clone();
    sent[13] ^= 0xff;
    let p = primary(sent, crc32c::crc32c(&data), data.len() as u64, vec![None]);
    let engine = while_receiving();
    let ctx = ctx(p, engine.clone(), dir.path());
    let mut incoming = None;
    let r = resync_while_receiving(&ctx, &mut incoming).await;
    assert!(matches!(r, Ok(None)), "refused");
    let attempts = engine.attempts.lock().unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(!attempts[0].ended, "the input failed instead of ending");
    assert_eq!(attempts[0].read.len(), data.len(), "it read every byte");
    assert_eq!(engine.applied_lsn(), Lsn::ZERO, "nothing restored");
    assert_eq!(engine.inner.restores(), 0);
}

/// A peer whose `history` answers as `role` at `epoch`.
fn answering_as(role: crate::node::RoleKind, epoch: u64) -> Arc<dyn Peer> {
    let mut peer = MockPeer::new();
    peer.expect_history().returning(move |_| {
        Ok(crate::transport::HistoryReply {
            epoch: Epoch(epoch),
            history: crate::types::EpochHistory::default(),
            last_lsn: Lsn(0),
            first_lsn: Lsn(1),
            role,
            unconfirmed: false,
            restart_lsn: None,
        })
    });
    Arc::new(peer)
}

#[tokio::test]
async fn a_rejoin_asked_of_a_standby_finds_the_primary_among_the_other_peers() {
    use crate::node::RoleKind;
    let dir = tempfile::tempdir().unwrap();
    let sm: Arc<dyn StateMachine> = Arc::new(MemStateMachine::new());
    let mut ctx = ctx(primary(Vec::new(), 0, 0, vec![]), sm, dir.path());
    // The node believes n2 leads (its pair peer), but n2 is a standby of
    // epoch 2 and n3 its primary.
    ctx.peer = answering_as(RoleKind::Standby, 2);
    ctx.others = vec![(NodeId::from("n3"), answering_as(RoleKind::Primary, 2))];
    let mut h = header();
    h.epoch = Epoch(2);
    let theirs = history_of_the_primary(&mut ctx, &h).await.unwrap();
    assert_eq!(theirs.role, RoleKind::Primary);
    assert_eq!(ctx.leader, NodeId::from("n3"), "the rejoin moves to n3");
    assert_eq!(ctx.others[0].0, NodeId::from("n2"));
    // A stale primary of epoch 2 asked first loses to the primary of 3.
    ctx.peer = answering_as(RoleKind::Primary, 2);
    ctx.leader = NodeId::from("n2");
    ctx.others = vec![(NodeId::from("n3"), answering_as(RoleKind::Primary, 3))];
    let theirs = history_of_the_primary(&mut ctx, &h).await.unwrap();
    assert_eq!(theirs.epoch, Epoch(3));
    assert_eq!(ctx.leader, NodeId::from("n3"));
    // A primary of an older epoch is not the one to rejoin.
    ctx.peer = answering_as(RoleKind::Standby, 2);
    ctx.others = vec![(NodeId::from("n4"), answering_as(RoleKind::Primary, 1))];
    ctx.leader = NodeId::from("n2");
    let theirs = history_of_the_primary(&mut ctx, &h).await.unwrap();
    assert_eq!(
        theirs.role,
        RoleKind::Standby,
        "the first answer: the node waits"
    );
    assert_eq!(ctx.leader, NodeId::from("n2"));
}

/// An engine whose `restore_file` reports that it began, then waits until
/// the test lets it go on (a restore of a large store, still running).
struct SlowRestore {
    inner: MemStateMachine,
    began: Mutex<Option<oneshot::Sender<()>>>,
    go_on: std::sync::Barrier,
}

impl StateMachine for SlowRestore {
    crate::testing::pass_through_to!(inner);
    fn snapshot(&self, out: &mut dyn Write) -> Result<Lsn, crate::StateMachineError> {
        self.inner.snapshot(out)
    }
    fn restore_file(&self, lsn: Lsn, path: &Path) -> Result<(), crate::StateMachineError> {
        if let Some(began) = self.began.lock().unwrap().take() {
            let _ = began.send(());
        }
        self.go_on.wait();
        self.inner.restore_file(lsn, path)
    }
}

/// A rejoin cancelled (its node stopping) while the engine restores does
/// not return before that restore and the WAL's reset end: a node started
/// again in the same process on the same files would otherwise find them
/// changing under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoin_stopped_while_the_engine_restores_waits_for_the_restore() {
    let dir = tempfile::tempdir().unwrap();
    let data = snapshot_bytes();
    let p = primary_of(&data, vec![None]);
    let (began, restore_began) = oneshot::channel();
    let engine = Arc::new(SlowRestore {
        inner: MemStateMachine::new(),
        began: Mutex::new(Some(began)),
        go_on: std::sync::Barrier::new(2),
    });
    let mut ctx = ctx(p.clone(), engine.clone(), dir.path());
    let wal = Arc::new(MemWal::new());
    wal.set_may_block(true);
    ctx.wal = wal.clone();
    let mut peer = MockPeer::new();
    peer.expect_history().returning(|_| {
        Ok(crate::transport::HistoryReply {
            epoch: Epoch(1),
            history: Default::default(),
            last_lsn: Lsn(5),
            first_lsn: Lsn(5),
            role: crate::node::RoleKind::Primary,
            unconfirmed: false,
            restart_lsn: None,
        })
    });
    let listing = p.clone();
    peer.expect_fetch_snapshot()
        .returning(move |req| Ok(stream(&p, &req)));
    peer.expect_fetch_request_ids()
        .returning(move |_, after, up_to| request_ids(&listing, after, up_to));
    ctx.peer = Arc::new(peer);
    let (tx, mut rx) = mpsc::channel(8);
    ctx.tx = tx;
    let cancel = ctx.cancel.clone();
    let rejoin = spawn(ctx);
    // The node's plan: resync from a snapshot.
    match rx.recv().await {
        Some(Msg::RejoinPlan { reply, .. }) => {
            let _ = reply.send(RejoinPlan::Rewind {
                truncate_after: None,
                resync: true,
                epoch: Epoch(1),
            });
        }
        _ => panic!("the rejoin asks for its plan"),
    }
    restore_began.await.expect("the engine's restore begins");
    cancel.cancel();
    let mut rejoin = std::pin::pin!(rejoin);
    let early = tokio::time::timeout(std::time::Duration::from_millis(200), rejoin.as_mut()).await;
    // Let the restore end either way, so a failure does not hang the test.
    engine.go_on.wait();
    assert!(
        early.is_err(),
        "the rejoin returned while the engine was still restoring"
    );
    rejoin.await.unwrap();
    assert_eq!(
        wal.last_lsn(),
        Lsn(5),
        "the WAL was reset to the snapshot before the rejoin returned"
    );
}

/// A rewind on a disk that may block runs off the node's runtime (one
/// thread in the daemon): while the WAL's cut is held on the disk, the
/// runtime still answers; and it holds the restore lock, which a stopped
/// rejoin waits for, so a node stops only after the cut ended.
#[test]
fn a_rewind_held_on_the_disk_leaves_the_nodes_runtime_free() {
    use crate::wal::gated::{GatedWal, Held};
    let (wal, mut cuts) = GatedWal::new(Held::Truncations);
    let wal = Arc::new(wal);
    let _open_at_the_end = wal.open_on_drop();
    let records: Vec<crate::types::Record> = (1..=5)
        .map(|i| crate::types::Record {
            lsn: Lsn(i),
            epoch: Epoch(1),
            payload: Bytes::from_static(b"r"),
            request_id: None,
        })
        .collect();
    wal.append(&records).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rejoin = ctx(
        primary(Vec::new(), 0, 0, vec![]),
        Arc::new(MemStateMachine::new()),
        dir.path(),
    );
    rejoin.wal = wal.clone();
    let restore_lock = rejoin.restore_lock.clone();
    let (pings, mut pinged) = mpsc::unbounded_channel::<()>();
    let (pong, pongs) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let node = std::thread::spawn(move || {
        rt.block_on(async move {
            let rewound = tokio::spawn(async move { rewind(&rejoin, Lsn(3)).await });
            while pinged.recv().await.is_some() {
                pong.send(()).unwrap();
            }
            rewound.await.unwrap().map_err(|Fatal(e)| e)
        })
    });
    assert_eq!(cuts.blocking_recv(), Some(Lsn(3)), "the WAL's cut began");
    assert!(
        restore_lock.try_lock().is_err(),
        "a rejoin stopped now would not wait for the cut"
    );
    pings.send(()).unwrap();
    let answered = pongs.recv_timeout(std::time::Duration::from_secs(10));
    wal.open();
    assert!(
        answered.is_ok(),
        "the runtime did not answer while the rewind was held on the disk"
    );
    drop(pings);
    assert_eq!(node.join().unwrap(), Ok((2, 2)));
    assert_eq!(wal.last_lsn(), Lsn(3));
}

#[test]
fn a_rewind_below_the_trimmed_wal_keeps_what_is_left_instead_of_failing() {
    // Records 1..=10, the first five trimmed; the divergence point is 2
    // (a stale standby promoted by force): 6..=10 are kept, 3..=5 are gone.
    let wal = MemWal::new();
    let records: Vec<crate::types::Record> = (1..=10)
        .map(|i| crate::types::Record {
            lsn: Lsn(i),
            epoch: Epoch(1),
            payload: Bytes::from(format!("r{i}")),
            request_id: None,
        })
        .collect();
    wal.append(&records).unwrap();
    wal.sync().unwrap();
    wal.remove_before(Lsn(6)).unwrap();
    assert_eq!(wal.first_lsn(), Lsn(6));
    let dir = tempfile::tempdir().unwrap();
    let kept = keep_rewound(&wal, Lsn(2), Some(dir.path()), Epoch(1)).expect("kept");
    assert_eq!(kept, 5);
    let file = dir.path().join(format!("epoch1-{:020}-{:020}.wal", 6, 10));
    let bytes = std::fs::read(&file).expect("the rewound file");
    let mut framed = Vec::new();
    for r in &records[5..] {
        crate::wal::record::encode(r, &mut framed);
    }
    assert_eq!(bytes, framed);
    // Nothing after the point left at all: nothing to keep.
    let empty = MemWal::new();
    assert_eq!(
        keep_rewound(&empty, Lsn(0), Some(dir.path()), Epoch(1)).unwrap(),
        0
    );
}

#[tokio::test]
async fn a_rejoin_that_meets_a_newer_epoch_asks_again_naming_that_epochs_leader() {
    // Rejoining n2 at epoch 2, the node hears from a peer of epoch 3 led by
    // n3. Its next requests must name n3 (or nobody), never n2: a peer
    // adopts the newer epoch with the leader the header names, and n2
    // leads nothing in it.
    let dir = tempfile::tempdir().unwrap();
    let sm: Arc<dyn StateMachine> = Arc::new(MemStateMachine::new());
    let mut ctx = ctx(primary(Vec::new(), 0, 0, vec![]), sm, dir.path());
    let refusing = |leader: Option<&'static str>| {
        let mut peer = MockPeer::new();
        peer.expect_history().returning(move |_| {
            Err(TransportError::StaleEpoch {
                epoch: Epoch(3),
                leader: leader.map(|id| crate::LeaderHint {
                    id: NodeId::from(id),
                    addr: format!("{id}:7000"),
                    client_addr: None,
                }),
            })
        });
        Arc::new(peer) as Arc<dyn Peer>
    };
    for (leader, named) in [(Some("n3"), Some(NodeId::from("n3"))), (None, None)] {
        ctx.peer = refusing(leader);
        let mut h = header();
        h.epoch = Epoch(2);
        h.leader_id = Some(NodeId::from("n2"));
        let outcome = attempt_rejoin(&mut ctx, &mut h, &mut None).await;
        assert!(matches!(outcome, Ok(None)));
        assert_eq!((h.epoch, h.leader_id), (Epoch(3), named));
    }
}
