use super::*;
use crate::types::EpochStart;
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::thread;
use tempfile::TempDir;

fn rec(lsn: u64, epoch: u64) -> Record {
    Record {
        lsn: Lsn(lsn),
        epoch: Epoch(epoch),
        request_id: None,
        payload: Bytes::from(format!("record {lsn:04} of epoch {epoch}")),
    }
}

/// Every record the same size, so tests can compute frame offsets.
fn frame_len() -> u64 {
    record::encoded_len(&rec(1, 1)) as u64
}

fn recs(lsns: std::ops::RangeInclusive<u64>, epoch: u64) -> Vec<Record> {
    lsns.map(|l| rec(l, epoch)).collect()
}

fn tiny() -> FileWalOptions {
    FileWalOptions {
        segment_bytes: 256,
        ..FileWalOptions::default()
    }
}

fn open(dir: &TempDir, opts: FileWalOptions) -> FileWal {
    FileWal::open(dir.path(), opts).expect("open")
}

fn all(wal: &FileWal) -> Vec<Record> {
    wal.read(wal.first_lsn(), usize::MAX, usize::MAX).unwrap()
}

fn segment_files(dir: &TempDir) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

fn flip_bit(path: &Path, offset: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, offset).unwrap();
}

fn history(entries: &[(u64, u64)]) -> EpochHistory {
    EpochHistory(
        entries
            .iter()
            .map(|&(e, l)| EpochStart {
                epoch: Epoch(e),
                first_lsn: Lsn(l),
            })
            .collect(),
    )
}

#[test]
fn reopen_after_clean_close_returns_the_same_log() {
    let dir = TempDir::new().unwrap();
    let meta = WalMeta {
        epoch: Epoch(2),
        leader: Some("node-a".into()),
        confirmed: true,
        restart_points: Default::default(),
    };
    let expected = [recs(1..=5, 1), recs(6..=9, 2)].concat();
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&expected[..5]).unwrap();
        wal.append(&expected[5..]).unwrap();
        wal.set_meta(&meta).unwrap();
        assert_eq!(wal.sync().unwrap(), Lsn(9));
    }
    let wal = open(&dir, FileWalOptions::default());
    assert_eq!(all(&wal), expected);
    assert_eq!(wal.history(), history(&[(1, 1), (2, 6)]));
    assert_eq!(wal.meta(), meta);
    assert_eq!(wal.last_lsn(), Lsn(9));
    assert_eq!(wal.flushed_lsn(), Lsn(9));
    assert_eq!(wal.first_lsn(), Lsn(1));
    assert_eq!(wal.epoch_at(Lsn(5)), Some(Epoch(1)));
    assert_eq!(wal.epoch_at(Lsn(10)), None);
    assert_eq!(wal.bytes_from(Lsn(8)), 2 * frame_len());
}

#[test]
fn a_fresh_log_is_empty_and_checks_appends() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, FileWalOptions::default());
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(1), Lsn::ZERO));
    assert_eq!(wal.epoch_at(Lsn::ZERO), Some(Epoch::ZERO));
    assert!(wal.read(Lsn(1), 10, 10).unwrap().is_empty());
    assert!(matches!(
        wal.append(&[rec(2, 1)]),
        Err(WalError::OutOfOrder { .. })
    ));
    let big = Record {
        payload: Bytes::from(vec![0; crate::Config::DEFAULT_MAX_RECORD_BYTES + 1]),
        ..rec(1, 1)
    };
    assert!(matches!(wal.append(&[big]), Err(WalError::TooLarge { .. })));
    wal.append(&[rec(1, 2)]).unwrap();
    assert!(matches!(
        wal.append(&[rec(2, 1)]),
        Err(WalError::EpochRegression { .. })
    ));
}

/// Records 1..=12 appended one by one into 256-byte segments, synced: a
/// log of several segments.
fn twelve_in_tiny_segments(dir: &TempDir) -> FileWal {
    let wal = open(dir, tiny());
    for l in 1..=12 {
        wal.append(&[rec(l, 1)]).unwrap();
    }
    wal.sync().unwrap();
    wal
}

/// Opens the log in `dir`, which must fail as corrupt; returns the file
/// and offset the error names.
fn corrupt_at(dir: &TempDir, opts: FileWalOptions) -> (PathBuf, u64) {
    match FileWal::open(dir.path(), opts) {
        Err(WalError::Corrupt {
            segment, offset, ..
        }) => (segment, offset),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, the log opened"),
    }
}

fn zero_range(path: &Path, range: std::ops::Range<u64>) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; (range.end - range.start) as usize], range.start)
        .unwrap();
}

/// Where a crash tears the last record: a segment that grows with each
/// append loses the end of the file; one that reserved its space keeps
/// its size, and the bytes that never reached the disk read as zeros.
#[test]
fn a_torn_tail_is_cut_and_appends_continue() {
    for preallocate in [false, true] {
        let opts = FileWalOptions {
            preallocate,
            ..FileWalOptions::default()
        };
        let dir = TempDir::new().unwrap();
        {
            let wal = open(&dir, opts.clone());
            wal.append(&recs(1..=10, 1)).unwrap();
            wal.sync().unwrap();
        }
        let seg = &segment_files(&dir)[0];
        let end = segment::HEADER_LEN + 10 * frame_len();
        let size = |seg| fs::metadata(seg).unwrap().len();
        if preallocate {
            assert_eq!(size(seg), opts.segment_bytes);
            zero_range(seg, end - 3..end);
        } else {
            assert_eq!(size(seg), end);
            fs::OpenOptions::new()
                .write(true)
                .open(seg)
                .unwrap()
                .set_len(end - 3)
                .unwrap();
        }
        {
            let wal = open(&dir, opts.clone());
            assert_eq!(wal.last_lsn(), Lsn(9), "preallocate {preallocate}");
            assert_eq!(all(&wal), recs(1..=9, 1));
            let expected_size = match preallocate {
                true => opts.segment_bytes,
                false => end - frame_len(),
            };
            assert_eq!(size(seg), expected_size, "preallocate {preallocate}");
            let replacement = Record {
                payload: Bytes::from_static(b"written again"),
                ..rec(10, 1)
            };
            wal.append(&[replacement.clone(), rec(11, 1)]).unwrap();
            wal.sync().unwrap();
        }
        let wal = open(&dir, opts);
        assert_eq!(wal.last_lsn(), Lsn(11));
        assert_eq!(
            wal.read(Lsn(10), 1, usize::MAX).unwrap()[0].payload,
            "written again"
        );
    }
}

#[test]
fn a_segment_reserves_its_size_and_reopens_without_cutting_anything() {
    let dir = TempDir::new().unwrap();
    let opts = FileWalOptions::default();
    {
        let wal = open(&dir, opts.clone());
        wal.append(&recs(1..=10, 1)).unwrap();
        wal.sync().unwrap();
    }
    let seg = segment_files(&dir)[0].clone();
    let before = fs::read(&seg).unwrap();
    assert_eq!(before.len() as u64, opts.segment_bytes);
    {
        let wal = open(&dir, opts.clone());
        assert_eq!(all(&wal), recs(1..=10, 1));
        assert_eq!(fs::read(&seg).unwrap(), before, "open changed the segment");
        wal.append(&recs(11..=20, 1)).unwrap();
        wal.sync().unwrap();
    }
    let wal = open(&dir, opts.clone());
    assert_eq!(all(&wal), recs(1..=20, 1));
    assert_eq!(fs::metadata(&seg).unwrap().len(), opts.segment_bytes);
}

#[test]
fn a_rolled_segment_gives_back_the_space_it_did_not_use() {
    let dir = TempDir::new().unwrap();
    let _wal = twelve_in_tiny_segments(&dir);
    let files = segment_files(&dir);
    assert!(files.len() > 2);
    let (last, older) = files.split_last().unwrap();
    for f in older {
        let frames = (fs::metadata(f).unwrap().len() - segment::HEADER_LEN) / frame_len();
        assert!(frames > 0, "{} holds no record", f.display());
        assert_eq!(
            fs::metadata(f).unwrap().len(),
            segment::HEADER_LEN + frames * frame_len(),
            "{} kept unused space",
            f.display()
        );
    }
    assert!(fs::metadata(last).unwrap().len() >= tiny().segment_bytes);
}

/// A crash that kept a new segment but not the shrink of the one before.
#[test]
fn an_older_segment_that_kept_its_reserve_still_opens() {
    let dir = TempDir::new().unwrap();
    drop(twelve_in_tiny_segments(&dir));
    let first = segment_files(&dir)[0].clone();
    fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let wal = open(&dir, tiny());
    assert_eq!(all(&wal), recs(1..=12, 1));
}

/// Zeros where an older segment's last record was: unwritten space ends
/// a segment's records, so what proves the loss is the next segment, which
/// does not continue there.
#[test]
fn a_zeroed_record_at_the_end_of_an_older_segment_fails_open() {
    let dir = TempDir::new().unwrap();
    drop(twelve_in_tiny_segments(&dir));
    let files = segment_files(&dir);
    let len = fs::metadata(&files[0]).unwrap().len();
    zero_range(&files[0], len - frame_len()..len);
    assert_eq!(corrupt_at(&dir, tiny()), (files[1].clone(), 0));
}

#[test]
fn a_bad_crc_in_the_last_record_is_cut_as_a_torn_write() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&recs(1..=4, 1)).unwrap();
        wal.sync().unwrap();
    }
    let seg = &segment_files(&dir)[0];
    flip_bit(seg, segment::HEADER_LEN + 3 * frame_len() + 30);
    let wal = open(&dir, FileWalOptions::default());
    assert_eq!(all(&wal), recs(1..=3, 1));
}

#[test]
fn a_flipped_bit_in_a_middle_record_fails_open_precisely() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&recs(1..=10, 1)).unwrap();
        wal.sync().unwrap();
    }
    let seg = segment_files(&dir)[0].clone();
    let record_5 = segment::HEADER_LEN + 4 * frame_len();
    flip_bit(&seg, record_5 + 30);
    let before = fs::read(&seg).unwrap();
    assert_eq!(
        corrupt_at(&dir, FileWalOptions::default()),
        (seg.clone(), record_5)
    );
    assert_eq!(
        fs::read(&seg).unwrap(),
        before,
        "a failed open modified the segment"
    );
}

#[test]
fn a_damaged_record_at_the_end_of_an_older_segment_fails_open() {
    let dir = TempDir::new().unwrap();
    drop(twelve_in_tiny_segments(&dir));
    let files = segment_files(&dir);
    assert!(files.len() > 2);
    let seg = &files[0];
    let last_frame = fs::metadata(seg).unwrap().len() - frame_len();
    flip_bit(seg, last_frame + 30);
    assert_eq!(corrupt_at(&dir, tiny()), (seg.clone(), last_frame));
}

#[test]
fn a_record_damaged_after_open_is_never_returned() {
    let dir = TempDir::new().unwrap();
    let opts = FileWalOptions {
        tail_cache_bytes: 0,
        ..FileWalOptions::default()
    };
    let wal = open(&dir, opts);
    wal.append(&recs(1..=10, 1)).unwrap();
    wal.sync().unwrap();
    let seg = segment_files(&dir)[0].clone();
    let record_3 = segment::HEADER_LEN + 2 * frame_len();
    flip_bit(&seg, record_3 + 30);
    assert_eq!(wal.read(Lsn(1), 2, usize::MAX).unwrap(), recs(1..=2, 1));
    for from in [1, 3] {
        match wal.read(Lsn(from), usize::MAX, usize::MAX) {
            Err(WalError::Corrupt {
                segment, offset, ..
            }) => {
                assert_eq!((segment, offset), (seg.clone(), record_3));
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert_eq!(
        wal.read(Lsn(4), usize::MAX, usize::MAX).unwrap(),
        recs(4..=10, 1)
    );
}

#[test]
fn reads_respect_the_limits_and_the_cache_matches_the_disk() {
    let dir = TempDir::new().unwrap();
    let payload = rec(1, 1).payload.len();
    let cached = open(&dir, tiny());
    let uncached_dir = TempDir::new().unwrap();
    let uncached = open(
        &uncached_dir,
        FileWalOptions {
            tail_cache_bytes: 0,
            ..tiny()
        },
    );
    for wal in [&cached, &uncached] {
        for l in 1..=20 {
            wal.append(&[rec(l, 1)]).unwrap();
        }
        assert_eq!(wal.read(Lsn(3), 4, usize::MAX).unwrap(), recs(3..=6, 1));
        assert_eq!(wal.read(Lsn(3), 100, 3 * payload).unwrap(), recs(3..=5, 1));
        // At least one record, whatever the byte limit.
        assert_eq!(wal.read(Lsn(20), 100, 1).unwrap(), recs(20..=20, 1));
        assert!(wal.read(Lsn(21), 100, usize::MAX).unwrap().is_empty());
        assert!(wal.read(Lsn(3), 0, usize::MAX).unwrap().is_empty());
    }
}

#[test]
fn group_commit_shares_fsyncs_and_loses_nothing() {
    const THREADS: u64 = 8;
    const EACH: u64 = 200;
    let dir = TempDir::new().unwrap();
    {
        let wal = Arc::new(open(&dir, FileWalOptions::default()));
        let order = Arc::new(Mutex::new(()));
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (wal, order) = (wal.clone(), order.clone());
                thread::spawn(move || {
                    for _ in 0..EACH {
                        let lsn = {
                            let _turn = order.lock().unwrap();
                            let lsn = wal.last_lsn().next();
                            wal.append(&[rec(lsn.0, 1)]).unwrap();
                            lsn
                        };
                        let flushed = wal.sync().unwrap();
                        assert!(flushed >= lsn, "sync returned {flushed} before {lsn}");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let syncs = wal.sync_count();
        assert!(
            syncs < THREADS * EACH,
            "{syncs} fsyncs for {} appends",
            THREADS * EACH
        );
        assert_eq!(wal.flushed_lsn(), Lsn(THREADS * EACH));
    }
    let wal = open(&dir, FileWalOptions::default());
    assert_eq!(all(&wal), recs(1..=THREADS * EACH, 1));
}

#[test]
fn truncate_after_then_append_continues_and_survives_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, tiny());
        for l in 1..=30 {
            wal.append(&[rec(l, 1)]).unwrap();
        }
        wal.sync().unwrap();
        let segments = segment_files(&dir).len();
        // 10 is mid-segment: the frames of 11 and 12 must go from its file,
        // or a reopen would find them still following 10.
        assert_eq!(wal.truncate_after(Lsn(10)).unwrap(), 20);
        assert!(segment_files(&dir).len() < segments);
        assert_eq!(wal.last_lsn(), Lsn(10));
        assert_eq!(wal.flushed_lsn(), Lsn(10));
        assert_eq!(wal.truncate_after(Lsn(10)).unwrap(), 0);
        assert_eq!(all(&wal), recs(1..=10, 1));
    }
    {
        let wal = open(&dir, tiny());
        assert_eq!(all(&wal), recs(1..=10, 1));
        wal.append(&recs(11..=13, 2)).unwrap();
        wal.sync().unwrap();
    }
    let wal = open(&dir, tiny());
    assert_eq!(all(&wal), [recs(1..=10, 1), recs(11..=13, 2)].concat());
    assert_eq!(wal.history(), history(&[(1, 1), (2, 11)]));
    wal.append(&[rec(14, 2)]).unwrap();
}

#[test]
fn truncating_below_the_first_retained_record_resets_the_log() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, tiny());
    for l in 1..=20 {
        wal.append(&[rec(l, 1)]).unwrap();
    }
    wal.sync().unwrap();
    wal.remove_before(Lsn(15)).unwrap();
    let first = wal.first_lsn();
    assert!(first > Lsn(2));
    assert_eq!(wal.truncate_after(Lsn(2)).unwrap(), 20 - first.0 + 1);
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(3), Lsn(2)));
    assert_eq!(wal.epoch_at(Lsn(2)), Some(Epoch(1)));
    wal.append(&[rec(3, 1)]).unwrap();
}

#[test]
fn segments_roll_and_retention_removes_only_flushed_ones() {
    let dir = TempDir::new().unwrap();
    let expected = [recs(1..=40, 1), recs(41..=100, 2)].concat();
    {
        let wal = open(&dir, tiny());
        for r in &expected[..50] {
            wal.append(std::slice::from_ref(r)).unwrap();
        }
        wal.sync().unwrap();
        for r in &expected[50..] {
            wal.append(std::slice::from_ref(r)).unwrap();
        }
        assert!(segment_files(&dir).len() > 20);
        assert_eq!(all(&wal), expected);
        assert_eq!(wal.read(Lsn(7), 30, usize::MAX).unwrap(), expected[6..36]);

        // Only records up to 50 are durable: the segment holding 51 stays.
        wal.remove_before(Lsn(90)).unwrap();
        let first = wal.first_lsn();
        assert!(first > Lsn(40) && first <= Lsn(51), "first is {first}");
        assert!(matches!(
            wal.read(Lsn(1), 1, usize::MAX),
            Err(WalError::NotRetained { .. })
        ));
        assert_eq!(
            wal.read(first, usize::MAX, usize::MAX).unwrap(),
            expected[first.0 as usize - 1..]
        );
        assert_eq!(wal.bytes_from(Lsn(1)), wal.bytes_from(first));
        assert_eq!(wal.bytes_from(Lsn(100)), frame_len());

        wal.sync().unwrap();
        wal.remove_before(Lsn(90)).unwrap();
        let first = wal.first_lsn();
        assert!(first > Lsn(80) && first <= Lsn(90), "first is {first}");
        assert_eq!(
            segment_files(&dir)[0].file_name().unwrap().to_str(),
            Some(segment::file_name(first).as_str())
        );
        assert_eq!(wal.epoch_at(first.prev()), Some(Epoch(2)));
        assert_eq!(wal.epoch_at(Lsn(10)), Some(Epoch(1)));
        // Never the active segment, however far retention reaches.
        wal.remove_before(Lsn(1000)).unwrap();
        assert_eq!(wal.last_lsn(), Lsn(100));
        assert_eq!(wal.read(Lsn(100), 1, usize::MAX).unwrap(), expected[99..]);
    }
    let before_reopen = segment_files(&dir);
    let wal = open(&dir, tiny());
    assert_eq!(segment_files(&dir), before_reopen);
    let first = wal.first_lsn();
    assert_eq!(all(&wal), expected[first.0 as usize - 1..]);
    assert_eq!(wal.epoch_at(first.prev()), Some(Epoch(2)));
    assert_eq!(wal.epoch_at(Lsn(10)), Some(Epoch(1)));
    assert_eq!(wal.history(), history(&[(1, 1), (2, 41)]));
}

#[test]
fn reset_then_append_then_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, tiny());
        wal.set_meta(&WalMeta {
            epoch: Epoch(1),
            leader: None,
            confirmed: true,
            restart_points: Default::default(),
        })
        .unwrap();
        for l in 1..=20 {
            wal.append(&[rec(l, 1)]).unwrap();
        }
        wal.sync().unwrap();
        wal.reset(Lsn(100), Epoch(3)).unwrap();
        assert_eq!(
            segment_files(&dir),
            [dir.path().join("wal").join(segment::file_name(Lsn(101)))]
        );
        assert_eq!(
            (wal.first_lsn(), wal.last_lsn(), wal.flushed_lsn()),
            (Lsn(101), Lsn(100), Lsn(100))
        );
        assert_eq!(wal.history(), history(&[(3, 100)]));
        assert_eq!(wal.epoch_at(Lsn(100)), Some(Epoch(3)));
        assert!(matches!(
            wal.read(Lsn(5), 1, usize::MAX),
            Err(WalError::NotRetained { .. })
        ));
        wal.append(&recs(101..=103, 3)).unwrap();
        wal.sync().unwrap();
    }
    let wal = open(&dir, tiny());
    assert_eq!(all(&wal), recs(101..=103, 3));
    assert_eq!(wal.history(), history(&[(3, 100)]));
    assert_eq!(wal.first_lsn(), Lsn(101));
    assert_eq!(wal.meta().epoch, Epoch(1));
    wal.reset(Lsn::ZERO, Epoch::ZERO).unwrap();
    drop(wal);
    let wal = open(&dir, tiny());
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(1), Lsn::ZERO));
    assert_eq!(wal.history(), EpochHistory::default());
}

#[test]
fn a_reset_interrupted_after_removing_the_old_segments_is_finished_at_open() {
    let dir = TempDir::new().unwrap();
    drop(open(&dir, tiny()));
    let wal_dir = dir.path().join("wal");
    let header = SegmentHeader::new(Lsn(51), Epoch(4));
    segment::write_pending(&wal_dir, header, 256).unwrap();
    for f in segment_files(&dir) {
        fs::remove_file(f).unwrap();
    }
    let wal = open(&dir, tiny());
    assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(51), Lsn(50)));
    assert_eq!(wal.epoch_at(Lsn(50)), Some(Epoch(4)));
    assert!(!wal_dir.join(segment::PENDING_NAME).exists());
}

#[test]
fn a_torn_header_of_a_new_last_segment_is_removed() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&recs(1..=3, 1)).unwrap();
        wal.sync().unwrap();
    }
    let torn = dir.path().join("wal").join(segment::file_name(Lsn(4)));
    let header = SegmentHeader::new(Lsn(4), Epoch(1));
    fs::write(&torn, &header.encode()[..20]).unwrap();
    let wal = open(&dir, FileWalOptions::default());
    assert!(!torn.exists());
    assert_eq!(wal.last_lsn(), Lsn(3));
    wal.append(&[rec(4, 1)]).unwrap();
}

#[test]
fn a_segment_that_does_not_continue_the_log_fails_open() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&recs(1..=3, 1)).unwrap();
        wal.sync().unwrap();
    }
    let stray = dir.path().join("wal").join(segment::file_name(Lsn(6)));
    let header = SegmentHeader::new(Lsn(6), Epoch(1));
    fs::write(&stray, header.encode()).unwrap();
    assert_eq!(corrupt_at(&dir, FileWalOptions::default()), (stray, 0));
}

#[test]
fn meta_round_trips_and_a_corrupt_meta_file_is_refused() {
    let dir = TempDir::new().unwrap();
    let meta = WalMeta {
        epoch: Epoch(7),
        leader: Some("node-b".into()),
        confirmed: true,
        restart_points: Default::default(),
    };
    {
        let wal = open(&dir, FileWalOptions::default());
        assert_eq!(wal.meta(), WalMeta::default());
        wal.set_meta(&meta).unwrap();
        assert_eq!(wal.meta(), meta);
    }
    // A crash between writing the temp file and renaming it.
    fs::write(meta::tmp_path(dir.path()), b"half a meta fi").unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        assert_eq!(wal.meta(), meta);
        assert!(!meta::tmp_path(dir.path()).exists());
        wal.set_meta(&WalMeta {
            epoch: Epoch(8),
            leader: None,
            confirmed: true,
            restart_points: Default::default(),
        })
        .unwrap();
    }
    let wal = open(&dir, FileWalOptions::default());
    assert_eq!(
        wal.meta(),
        WalMeta {
            epoch: Epoch(8),
            leader: None,
            confirmed: true,
            restart_points: Default::default(),
        }
    );
    drop(wal);

    let path = meta::path(dir.path());
    flip_bit(&path, 12);
    match FileWal::open(dir.path(), FileWalOptions::default()) {
        Err(WalError::Corrupt {
            segment, detail, ..
        }) => {
            assert_eq!(segment, path);
            assert!(detail.contains("checksum"), "{detail}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a corrupt meta file was accepted"),
    }
}

#[test]
fn a_failed_fsync_poisons_every_later_write() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, FileWalOptions::default());
    wal.append(&recs(1..=3, 1)).unwrap();
    wal.sync().unwrap();
    wal.append(&recs(4..=5, 1)).unwrap();
    wal.inject_sync_failure();
    assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
    assert_eq!(wal.flushed_lsn(), Lsn(3));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
    assert!(matches!(
        wal.append(&[rec(6, 1)]),
        Err(WalError::Poisoned(_))
    ));
    assert!(matches!(
        wal.truncate_after(Lsn(2)),
        Err(WalError::Poisoned(_))
    ));
    assert!(matches!(
        wal.reset(Lsn(9), Epoch(1)),
        Err(WalError::Poisoned(_))
    ));
    assert!(matches!(
        wal.remove_before(Lsn(2)),
        Err(WalError::Poisoned(_))
    ));
    assert!(matches!(
        wal.set_meta(&WalMeta::default()),
        Err(WalError::Poisoned(_))
    ));
    assert_eq!(wal.last_lsn(), Lsn(5));
    // What was written can still be read, e.g. to hand it to a peer.
    assert_eq!(all(&wal), recs(1..=5, 1));
}

#[test]
fn file_wal_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<FileWal>();
}

#[test]
fn a_segment_is_made_durable_before_the_next_one_starts() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, tiny());
    wal.append(&recs(1..=4, 1)).unwrap();
    assert_eq!(segment_files(&dir).len(), 1);
    wal.inject_sync_failure();
    // Record 5 does not fit: rolling must fsync records 1..=4 first.
    assert!(matches!(
        wal.append(&[rec(5, 1)]),
        Err(WalError::Poisoned(_))
    ));
    assert_eq!(wal.last_lsn(), Lsn(4));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
}

#[test]
fn a_segment_claiming_record_0_fails_open_instead_of_panicking() {
    let dir = TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("wal")).unwrap();
    let bad = dir.path().join("wal").join(segment::file_name(Lsn::ZERO));
    let header = SegmentHeader::new(Lsn::ZERO, Epoch::ZERO);
    fs::write(&bad, header.encode()).unwrap();
    match FileWal::open(dir.path(), FileWalOptions::default()) {
        Err(WalError::Corrupt { segment, .. }) => assert_eq!(segment, bad),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("expected Corrupt, the log opened"),
    }
}

#[test]
fn retention_leaving_only_the_active_segment_makes_it_durable_first() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, tiny());
    wal.append(&recs(1..=4, 1)).unwrap();
    wal.sync().unwrap();
    // Record 5 starts a segment that no sync round has reached yet.
    wal.append(&[rec(5, 1)]).unwrap();
    assert_eq!(segment_files(&dir).len(), 2);
    // Removing 1..=4 leaves that segment alone: its header becomes the only
    // record of where the log starts, so it must be durable before the old
    // segment goes, or a power cut leaves a log that cannot be opened.
    wal.inject_sync_failure();
    assert!(matches!(
        wal.remove_before(Lsn(5)),
        Err(WalError::Poisoned(_))
    ));
    assert_eq!(segment_files(&dir).len(), 2, "the old segment went first");
}

fn expect_corrupt(dir: &TempDir, file: &Path) {
    assert_eq!(corrupt_at(dir, FileWalOptions::default()).0, file);
}

#[test]
fn a_segment_starting_beyond_the_largest_lsn_fails_open_instead_of_overflowing() {
    let dir = TempDir::new().unwrap();
    fs::create_dir_all(dir.path().join("wal")).unwrap();
    let bad = dir
        .path()
        .join("wal")
        .join(segment::file_name(Lsn(u64::MAX)));
    let header = SegmentHeader::new(Lsn(u64::MAX), Epoch(1));
    let mut bytes = header.encode().to_vec();
    record::encode(&rec(u64::MAX, 1), &mut bytes);
    bytes.push(0);
    fs::write(&bad, bytes).unwrap();
    expect_corrupt(&dir, &bad);
}

#[test]
fn a_torn_header_in_a_file_named_for_the_last_lsn_fails_open_instead_of_overflowing() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&recs(1..=3, 1)).unwrap();
        wal.sync().unwrap();
    }
    let bad = dir
        .path()
        .join("wal")
        .join(segment::file_name(Lsn(u64::MAX)));
    fs::write(&bad, [0u8; 40]).unwrap();
    expect_corrupt(&dir, &bad);
}

#[test]
fn a_torn_header_in_a_segment_that_does_not_follow_the_log_is_refused_not_removed() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&recs(1..=3, 1)).unwrap();
        wal.sync().unwrap();
    }
    // Not where a rolled segment would be (that is record 4): nothing says
    // records 4..=9 never existed, so this is damage, not a crash.
    let stray = dir.path().join("wal").join(segment::file_name(Lsn(10)));
    fs::write(&stray, [0u8; 10]).unwrap();
    expect_corrupt(&dir, &stray);
    assert!(stray.exists());
}

/// Arbitrary segment files (and meta files) in a directory: open never
/// panics and never allocates much more than the files hold; it either
/// fails with `Corrupt` or yields a log whose every record is one of the
/// valid frames written, gapless, with an epoch history that agrees, and
/// that takes the next append.
mod arbitrary_files {
    use super::*;
    use crate::testing::largest_allocation;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[derive(Clone, Debug)]
    enum Piece {
        /// A valid frame for the next LSN, or for `lsn` when given.
        Frame {
            lsn: Option<u64>,
            epoch_step: u64,
            payload: Vec<u8>,
        },
        /// A valid frame cut short.
        Torn {
            keep: prop::sample::Index,
        },
        Garbage(Vec<u8>),
    }

    #[derive(Clone, Debug)]
    struct File {
        /// The first LSN: the next one when `None`.
        first: Option<u64>,
        base_epoch_step: u64,
        /// Raw bytes instead of a valid header.
        bad_header: Option<Vec<u8>>,
        pieces: Vec<Piece>,
    }

    fn lsn() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..12, (0u64..3).prop_map(|d| u64::MAX - d), any::<u64>(),]
    }

    fn piece() -> impl Strategy<Value = Piece> {
        prop_oneof![
            16 => (
                prop::option::weighted(0.05, lsn()),
                prop_oneof![12 => Just(0u64), 2 => 1u64..3, 1 => Just(u64::MAX)],
                prop::collection::vec(any::<u8>(), 0..40),
            )
                .prop_map(|(lsn, epoch_step, payload)| Piece::Frame { lsn, epoch_step, payload }),
            1 => any::<prop::sample::Index>().prop_map(|keep| Piece::Torn { keep }),
            1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Garbage),
        ]
    }

    fn file() -> impl Strategy<Value = File> {
        (
            prop::option::weighted(0.15, lsn()),
            prop_oneof![6 => Just(0u64), 1 => 0u64..3, 1 => any::<u64>()],
            prop::option::weighted(0.05, prop::collection::vec(any::<u8>(), 0..40)),
            prop::collection::vec(piece(), 0..8),
        )
            .prop_map(|(first, base_epoch_step, bad_header, pieces)| File {
                first,
                base_epoch_step,
                bad_header,
                pieces,
            })
    }

    /// Writes the files; returns every valid frame written and the largest
    /// file's size.
    fn write(wal_dir: &Path, files: &[File]) -> (HashSet<(u64, u64, Vec<u8>)>, usize) {
        let (mut next, mut epoch) = (1u64, 0u64);
        let mut frames = HashSet::new();
        let mut largest = 0;
        for f in files {
            let first = f.first.unwrap_or(next);
            let base_epoch = epoch.wrapping_add(f.base_epoch_step);
            let mut buf = match &f.bad_header {
                Some(raw) => raw.clone(),
                None => SegmentHeader::new(Lsn(first), Epoch(base_epoch))
                    .encode()
                    .to_vec(),
            };
            (next, epoch) = (first, base_epoch);
            for p in &f.pieces {
                match p {
                    Piece::Frame {
                        lsn,
                        epoch_step,
                        payload,
                    } => {
                        let r = Record {
                            lsn: Lsn(lsn.unwrap_or(next)),
                            epoch: Epoch(epoch.wrapping_add(*epoch_step)),
                            request_id: None,
                            payload: Bytes::from(payload.clone()),
                        };
                        record::encode(&r, &mut buf);
                        frames.insert((r.lsn.0, r.epoch.0, payload.clone()));
                        next = r.lsn.0.wrapping_add(1);
                        epoch = r.epoch.0;
                    }
                    Piece::Torn { keep } => {
                        let r = Record {
                            lsn: Lsn(next),
                            epoch: Epoch(epoch),
                            request_id: None,
                            payload: Bytes::from_static(b"torn frame"),
                        };
                        let mut frame = Vec::new();
                        record::encode(&r, &mut frame);
                        buf.extend_from_slice(&frame[..keep.index(frame.len())]);
                    }
                    Piece::Garbage(g) => buf.extend_from_slice(g),
                }
            }
            largest = largest.max(buf.len());
            fs::write(wal_dir.join(segment::file_name(Lsn(first))), &buf).unwrap();
        }
        (frames, largest)
    }

    fn check_open(dir: &Path, frames: &HashSet<(u64, u64, Vec<u8>)>) -> Result<(), TestCaseError> {
        let wal = match FileWal::open(dir, tiny()) {
            Ok(wal) => wal,
            Err(WalError::Corrupt { detail, .. }) => {
                prop_assert!(!detail.is_empty());
                return Ok(());
            }
            Err(e) => return Err(TestCaseError::fail(format!("not Corrupt: {e}"))),
        };
        let (first, last) = (wal.first_lsn(), wal.last_lsn());
        prop_assert!(first.0 >= 1 && first.0 <= last.0.saturating_add(1));
        let got = wal.read(first, usize::MAX, usize::MAX).unwrap();
        prop_assert_eq!(got.len() as u64, last.0 + 1 - first.0);
        let mut prev_epoch = Epoch::ZERO;
        for (i, r) in got.iter().enumerate() {
            prop_assert_eq!(r.lsn.0, first.0 + i as u64);
            prop_assert!(
                frames.contains(&(r.lsn.0, r.epoch.0, r.payload.to_vec())),
                "record {} was never written",
                r.lsn
            );
            prop_assert_eq!(wal.epoch_at(r.lsn), Some(r.epoch));
            prop_assert!(r.epoch >= prev_epoch);
            prev_epoch = r.epoch;
        }
        drop(wal);
        // What recovery kept opens again, unchanged, and takes appends.
        let wal = FileWal::open(dir, tiny()).unwrap();
        prop_assert_eq!((wal.first_lsn(), wal.last_lsn()), (first, last));
        if last.0 < u64::MAX {
            let epoch = wal.history().last_epoch().unwrap_or(Epoch::ZERO);
            wal.append(&[rec(last.0 + 1, epoch.0)]).unwrap();
            wal.sync().unwrap();
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn open_yields_written_records_or_corrupt(
            files in prop::collection::vec(file(), 1..4),
            meta in prop::option::weighted(0.3, prop::collection::vec((0u64..4, 0u64..6), 0..4)),
        ) {
            let dir = TempDir::new().unwrap();
            let wal_dir = dir.path().join("wal");
            fs::create_dir_all(&wal_dir).unwrap();
            let (frames, largest) = write(&wal_dir, &files);
            // Segments always come with a meta file (a log writes it before
            // its first segment; one without is refused, tested above).
            let meta = Some(meta.unwrap_or_default());
            if let Some(steps) = meta {
                // A valid meta file with some history, right or wrong.
                let (mut e, mut l) = (0, 1);
                let history = EpochHistory(
                    steps
                        .into_iter()
                        .map(|(de, dl)| {
                            (e, l) = (e + de + 1, l + dl);
                            EpochStart { epoch: Epoch(e), first_lsn: Lsn(l) }
                        })
                        .collect(),
                );
                let bytes = meta::encode(&WalMeta::default(), &history);
                fs::write(meta::path(dir.path()), bytes).unwrap();
            }
            let (result, allocated) = largest_allocation(|| {
                std::panic::catch_unwind(|| check_open(dir.path(), &frames))
            });
            match result {
                Ok(checked) => checked?,
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    prop_assert!(false, "open panicked: {msg}");
                }
            }
            prop_assert!(
                allocated <= 2 * largest + (64 << 10),
                "allocated {allocated} for files of at most {largest} bytes"
            );
        }
    }
}

#[test]
fn a_log_whose_meta_was_deleted_refuses_to_open_instead_of_forgetting_its_epoch() {
    let dir = TempDir::new().unwrap();
    {
        let wal = open(&dir, FileWalOptions::default());
        assert!(
            meta::path(dir.path()).exists(),
            "a fresh log writes its meta at once"
        );
        wal.set_meta(&WalMeta {
            epoch: Epoch(3),
            leader: Some("n1".into()),
            confirmed: true,
            restart_points: Default::default(),
        })
        .unwrap();
        wal.append(&recs(1..=2, 3)).unwrap();
        wal.sync().unwrap();
    }
    fs::remove_file(meta::path(dir.path())).unwrap();
    match FileWal::open(dir.path(), FileWalOptions::default()) {
        Err(e @ WalError::MetaMissing { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("no meta file") && msg.contains("resyncs"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected MetaMissing, got {e}"),
        Ok(_) => panic!("a log without its meta opened with a fresh epoch"),
    }
    // Nothing was recreated behind the operator's back.
    assert!(!meta::path(dir.path()).exists());
    assert_eq!(segment_files(&dir).len(), 1);
}

// Request ids in the log, and logs written before they existed.

fn with_id(lsn: u64, epoch: u64) -> Record {
    Record {
        request_id: Some(crate::types::RequestId::from(0xfeed_0000 + lsn as u128)),
        ..rec(lsn, epoch)
    }
}

#[test]
fn records_with_request_ids_round_trip_and_survive_reopen() {
    let dir = TempDir::new().unwrap();
    let no_cache = FileWalOptions {
        tail_cache_bytes: 0,
        ..tiny()
    };
    let written: Vec<Record> = (1..=12)
        .map(|l| if l % 3 == 0 { rec(l, 1) } else { with_id(l, 1) })
        .collect();
    {
        let wal = open(&dir, no_cache.clone());
        wal.append(&written[..5]).unwrap();
        wal.append(&written[5..]).unwrap();
        wal.sync().unwrap();
        assert!(
            segment_files(&dir).len() > 1,
            "the test wants rolled segments"
        );
        assert_eq!(all(&wal), written, "read back from the segment files");
    }
    let wal = open(&dir, no_cache);
    assert_eq!(all(&wal), written, "after reopen");
}

/// A segment as a build before request ids wrote it: version 1, frames
/// without the id flag.
fn write_version_1_segment(dir: &TempDir, records: &[Record]) -> PathBuf {
    let wal_dir = dir.path().join("wal");
    fs::create_dir_all(&wal_dir).unwrap();
    let header = SegmentHeader {
        format: FrameFormat::V1,
        ..SegmentHeader::new(Lsn(1), Epoch::ZERO)
    };
    let mut bytes = header.encode().to_vec();
    assert_eq!(bytes[8..12], 1u32.to_le_bytes());
    for r in records {
        assert!(r.request_id.is_none());
        record::encode(r, &mut bytes);
    }
    let path = wal_dir.join(segment::file_name(Lsn(1)));
    fs::write(&path, bytes).unwrap();
    // The meta such a log had (a log with records and no meta is refused).
    let meta = WalMeta {
        epoch: Epoch(1),
        leader: None,
        confirmed: true,
        restart_points: Default::default(),
    };
    fs::write(
        meta::path(dir.path()),
        meta::encode(&meta, &EpochHistory::default()),
    )
    .unwrap();
    path
}

fn segment_version(path: &Path) -> u32 {
    let bytes = fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

#[test]
fn a_version_1_log_still_reads_and_records_with_ids_go_to_a_version_2_segment() {
    let dir = TempDir::new().unwrap();
    let old = recs(1..=3, 1);
    let v1 = write_version_1_segment(&dir, &old);
    {
        let wal = open(&dir, FileWalOptions::default());
        assert_eq!(all(&wal), old);
        wal.append(&[with_id(4, 1), rec(5, 1)]).unwrap();
        wal.sync().unwrap();
    }
    let wal = open(&dir, FileWalOptions::default());
    let mut expected = old;
    expected.extend([with_id(4, 1), rec(5, 1)]);
    assert_eq!(all(&wal), expected);
    let files = segment_files(&dir);
    assert_eq!(
        files.len(),
        2,
        "the version-1 segment is closed, not appended to"
    );
    assert_eq!((segment_version(&v1), segment_version(&files[1])), (1, 2));
}

#[test]
fn an_empty_version_1_segment_becomes_version_2_at_its_first_record_with_an_id() {
    let dir = TempDir::new().unwrap();
    let v1 = write_version_1_segment(&dir, &[]);
    {
        let wal = open(&dir, FileWalOptions::default());
        wal.append(&[with_id(1, 1)]).unwrap();
        wal.sync().unwrap();
    }
    let wal = open(&dir, FileWalOptions::default());
    assert_eq!(all(&wal), vec![with_id(1, 1)]);
    assert_eq!(segment_files(&dir), vec![v1.clone()]);
    assert_eq!(segment_version(&v1), 2);
}

/// The disk refuses the next segment (as a full disk refuses its
/// reservation): the append fails with an I/O error, the log is exactly as
/// before and not poisoned, and once the segment can be created the same
/// records append, sync and survive a reopen. A standby relies on this to
/// take WAL again after its disk filled.
#[test]
fn an_append_that_cannot_create_its_segment_leaves_the_log_as_it_was_and_works_later() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, tiny());
    // Every segment the next appends could roll to cannot be created.
    let blocked: Vec<PathBuf> = (1..=64)
        .map(|l| dir.path().join("wal").join(segment::file_name(Lsn(l))))
        .filter(|p| !p.exists())
        .collect();
    for p in &blocked {
        fs::create_dir(p).unwrap();
    }
    let mut last = 0;
    let err = loop {
        match wal.append(&[rec(last + 1, 1)]) {
            Ok(()) => last += 1,
            Err(e) => break e,
        }
        assert!(last < 64, "the log never rolled");
    };
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert_eq!(wal.last_lsn(), Lsn(last));
    assert_eq!(all(&wal), recs(1..=last, 1));
    assert!(wal.sync().is_ok(), "a failed append poisoned the log");
    // Space is back.
    for p in &blocked {
        fs::remove_dir(p).unwrap();
    }
    wal.append(&recs(last + 1..=last + 3, 1)).unwrap();
    assert_eq!(wal.sync().unwrap(), Lsn(last + 3));
    drop(wal);
    let wal = open(&dir, tiny());
    assert_eq!(all(&wal), recs(1..=last + 3, 1));
}

/// A reset that removed the old log but could not install its new
/// segment poisons the log and answers every later call with that error
/// (no panic on the missing segments); reopening finishes the reset.
#[test]
fn a_reset_that_cannot_install_its_segment_fails_the_log_without_panicking() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, tiny());
    wal.append(&recs(1..=3, 1)).unwrap();
    wal.sync().unwrap();
    // Renaming the prepared segment onto a directory fails.
    let blocked = dir.path().join("wal").join(segment::file_name(Lsn(101)));
    fs::create_dir(&blocked).unwrap();
    let err = wal.reset(Lsn(100), Epoch(2)).unwrap_err();
    assert!(matches!(err, WalError::Poisoned(_)), "{err}");
    let _ = wal.first_lsn();
    let _ = wal.bytes_from(Lsn(1));
    assert!(matches!(
        wal.read(Lsn(1), 10, 1 << 20),
        Err(WalError::Poisoned(_))
    ));
    assert!(wal.append(&[rec(101, 2)]).is_err());
    assert!(wal.truncate_after(Lsn(0)).is_err());
    drop(wal);
    fs::remove_dir(&blocked).unwrap();
    let wal = open(&dir, tiny());
    assert_eq!(wal.first_lsn(), Lsn(101), "the reset finishes at open");
    assert_eq!(wal.last_lsn(), Lsn(100));
}

/// A reset whose meta file cannot be replaced has poisoned the log: it
/// says so instead of reporting success to a caller about to append.
#[test]
fn a_reset_whose_meta_cannot_be_replaced_reports_the_failure() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, tiny());
    wal.append(&recs(1..=3, 1)).unwrap();
    wal.sync().unwrap();
    // Renaming the new meta over a non-empty directory fails.
    let meta = dir.path().join("meta");
    fs::remove_file(&meta).unwrap();
    fs::create_dir(&meta).unwrap();
    fs::write(meta.join("keep"), b"x").unwrap();
    let err = wal.reset(Lsn(100), Epoch(2)).unwrap_err();
    assert!(matches!(err, WalError::Poisoned(_)), "{err}");
    assert!(wal.append(&[rec(101, 2)]).is_err());
}

/// A second open of a log that is open (two nodes given one data
/// directory) is refused before its recovery touches anything; the lock
/// goes with the first, however it ends.
#[test]
fn a_log_open_elsewhere_is_refused_until_it_is_closed() {
    let dir = TempDir::new().unwrap();
    let wal = open(&dir, tiny());
    wal.append(&recs(1..=3, 1)).unwrap();
    let err = FileWal::open(dir.path(), tiny())
        .err()
        .expect("a second open is refused");
    assert!(matches!(err, WalError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another process"), "{err}");
    assert_eq!(wal.last_lsn(), Lsn(3), "the first is untouched");
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(open(&dir, tiny()).last_lsn(), Lsn(3));
}

/// A trim removes its segments' files after it let go of the log's state:
/// appends and syncs go on while those removals wait for the disk (each
/// waits for a directory fsync), and the log it leaves reopens whole.
#[test]
fn appends_go_on_while_a_trim_removes_its_files() {
    use std::sync::mpsc;
    let dir = TempDir::new().unwrap();
    let wal = std::sync::Arc::new(open(&dir, tiny()));
    for l in 1..=30 {
        wal.append(&[rec(l, 1)]).unwrap();
    }
    wal.sync().unwrap();
    assert!(segment_files(&dir).len() > 3);
    let (stuck, release) = wal.hold_removal.arm();
    let w = wal.clone();
    let trim = std::thread::spawn(move || w.remove_before(Lsn(15)));
    stuck
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the trim never reached its removals");
    let (done_tx, done) = mpsc::channel();
    let w = wal.clone();
    std::thread::spawn(move || {
        let first = w.first_lsn();
        w.append(&[rec(31, 1)]).unwrap();
        done_tx.send((first, w.sync().unwrap())).unwrap();
    });
    let during = done.recv_timeout(std::time::Duration::from_secs(10));
    release.send(()).unwrap();
    trim.join().unwrap().unwrap();
    let (first, flushed) = during.expect("the log's state waited for the trim's removals");
    assert!(first > Lsn(1) && first <= Lsn(15), "{first}");
    assert_eq!(flushed, Lsn(31));
    drop(wal);
    let wal = open(&dir, tiny());
    assert_eq!(wal.first_lsn(), first);
    assert_eq!(all(&wal), recs(first.0..=31, 1));
}

/// A read from the disk that planned a segment which a trim then removed
/// holds that file's last descriptor: closing it frees the file's blocks,
/// so the read closes it off its own thread (the stream to a standby reads
/// on the node's runtime, here one thread, as this test's read does).
#[tokio::test]
async fn a_read_left_holding_a_removed_segment_closes_it_off_its_thread() {
    let dir = TempDir::new().unwrap();
    let opts = FileWalOptions {
        tail_cache_bytes: 0,
        ..tiny()
    };
    let wal = std::sync::Arc::new(open(&dir, opts));
    for l in 1..=30 {
        wal.append(&[rec(l, 1)]).unwrap();
    }
    wal.sync().unwrap();
    let first_segment = segment_files(&dir)[0].clone();
    let (stuck, release) = wal.hold_read.arm();
    let w = wal.clone();
    let trim = std::thread::spawn(move || {
        stuck
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the read never planned");
        w.remove_before(Lsn(15)).unwrap();
        release.send(()).unwrap();
    });
    let read = wal.read(Lsn(1), usize::MAX, usize::MAX).unwrap();
    trim.join().unwrap();
    assert!(
        !first_segment.exists(),
        "the trim removed the first segment"
    );
    assert_eq!(read, recs(1..=30, 1), "read whole through its handles");
    let closer = crate::unlinked::closing_of(&first_segment).await;
    assert_ne!(
        closer,
        std::thread::current().id(),
        "the reading thread closed the removed segment"
    );
}

/// A trim whose removals failed leaves their files on disk while the log
/// let go of them: the next trim removes them first, and a reset (a
/// rejoin's) removes them with the rest, never leaving a gap before its new
/// segment that would stop the next start.
#[test]
fn a_trim_whose_removals_failed_leaves_no_gap_behind() {
    for then_reset in [false, true] {
        let dir = TempDir::new().unwrap();
        let wal = open(&dir, tiny());
        for l in 1..=30 {
            wal.append(&[rec(l, 1)]).unwrap();
        }
        wal.sync().unwrap();
        let files = segment_files(&dir).len();
        wal.fail_removals.store(true, Ordering::SeqCst);
        assert!(wal.remove_before(Lsn(15)).is_err());
        wal.fail_removals.store(false, Ordering::SeqCst);
        assert_eq!(segment_files(&dir).len(), files, "nothing was removed");
        if then_reset {
            wal.reset(Lsn(100), Epoch(2)).unwrap();
            drop(wal);
            let wal = open(&dir, tiny());
            assert_eq!((wal.first_lsn(), wal.last_lsn()), (Lsn(101), Lsn(100)));
        } else {
            wal.remove_before(Lsn(20)).unwrap();
            let first = wal.first_lsn();
            drop(wal);
            let wal = open(&dir, tiny());
            assert_eq!(wal.first_lsn(), first, "the leftovers went first");
            assert_eq!(all(&wal), recs(first.0..=30, 1));
        }
    }
}
