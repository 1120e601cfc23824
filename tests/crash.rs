//! Crash consistency of `FileWal` (G5), with real processes and real kills.
//!
//! `sigkill_at_random_points_keeps_a_gapless_prefix_with_every_durable_record`
//! re-executes this test binary as a writer (`child_writer`, selected by the
//! `WALREP_CRASH_CHILD` variable) that appends and group-commits from several
//! threads and prints every LSN `sync` reported durable. The parent SIGKILLs it
//! after a random delay, reopens the log and checks what recovery kept, then
//! lets the next writer continue from the recovered tail in the same
//! directory, so recovery runs again and again over its own output.
//!
//! What this can and cannot show: SIGKILL kills the process, not the machine,
//! so the page cache survives and data written but never fsynced is usually
//! still there. "Only fsynced data survives" (a power cut) cannot be emulated
//! this way. The test checks the weaker property that still fails for real
//! bugs: recovery never errors on a plain crash, what it keeps is a gapless
//! prefix of what was appended with every record's content intact, it keeps
//! every record reported durable before the kill, and it never loses what an
//! earlier recovery kept.
//!
//! `random_damage_is_refused_precisely_or_cut_as_a_torn_tail` flips bits in
//! and truncates segment files (and the meta file) of copies of a log: open
//! either returns a correct prefix of the log or fails with `Corrupt` naming
//! the damaged file (or the one after it) at or before the damage, having
//! changed nothing.
//!
//! Both are seeded; the seed is printed and can be replayed with
//! `WALREP_CRASH_SEED`. Longer runs: `WALREP_CRASH_ITERATIONS` (default 30
//! kills) and `WALREP_CORRUPT_ITERATIONS` (default 400 damaged copies).

use bytes::Bytes;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use walrep::{Epoch, EpochHistory, FileWal, FileWalOptions, Lsn, Record, WalError, WalMeta};
use walrep::{NodeId, WalStore};

const CHILD_ENV: &str = "WALREP_CRASH_CHILD";
const CHILD_SEED_ENV: &str = "WALREP_CRASH_CHILD_SEED";
const DURABLE: &str = "DURABLE ";
/// The writer removes segments only below `durable - KEEP`.
const KEEP: u64 = 1000;

/// SplitMix64: small, seedable, good enough to pick delays and offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn seed() -> u64 {
    match std::env::var("WALREP_CRASH_SEED") {
        Ok(s) => s.parse().expect("WALREP_CRASH_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn iterations(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{var} must be a number"))
        })
        .unwrap_or(default)
}

/// The record every writer puts at `lsn`, so any reader can check content.
/// Epochs rise every 700 records, so the history has several entries and
/// segments begin in the middle of epochs. Payloads are mostly small, some
/// empty, and one in 40 larger than a segment.
fn expected(lsn: u64) -> Record {
    let len = payload_len(lsn);
    let payload: Vec<u8> = lsn
        .to_le_bytes()
        .iter()
        .chain(b"walrep")
        .copied()
        .cycle()
        .take(len)
        .collect();
    Record {
        lsn: Lsn(lsn),
        epoch: epoch_of(lsn),
        request_id: None,
        payload: Bytes::from(payload),
    }
}

fn payload_len(lsn: u64) -> usize {
    (match lsn % 40 {
        0 => 6000 + (lsn * 131) % 10_000,
        7 => 0,
        _ => (lsn * 7919) % 200,
    }) as usize
}

const EPOCH_RECORDS: u64 = 700;

fn epoch_of(lsn: u64) -> Epoch {
    Epoch(1 + lsn / EPOCH_RECORDS)
}

/// Epoch 1 starts at record 1, epoch `e > 1` at `(e - 1) * EPOCH_RECORDS`.
fn expected_history(last: u64) -> EpochHistory {
    EpochHistory(
        (1..=epoch_of(last).0)
            .take_while(|_| last > 0)
            .map(|e| walrep::EpochStart {
                epoch: Epoch(e),
                first_lsn: Lsn(((e - 1) * EPOCH_RECORDS).max(1)),
            })
            .collect(),
    )
}

fn options() -> FileWalOptions {
    FileWalOptions {
        segment_bytes: 16 << 10,
        max_record_bytes: 1 << 20,
        // Small, so reads of old records go to the segment files.
        tail_cache_bytes: 16 << 10,
        preallocate: true,
    }
}

/// Checks that `wal` holds exactly `expected(first..=last)`, where
/// retention may have removed records before `last - KEEP`, that its
/// history is the whole log's, and returns `last`.
fn check_log(wal: &FileWal, context: &str) -> u64 {
    let last = wal.last_lsn().0;
    let first = wal.first_lsn().0;
    assert!(
        first >= 1 && first <= last.saturating_sub(KEEP).max(1),
        "{context}: log starts at {first}, ends at {last}: retention removed too much"
    );
    let mut next = first;
    while next <= last {
        // Small reads, so both the disk and the tail cache are exercised.
        let batch = wal.read(Lsn(next), 500, 1 << 20).unwrap_or_else(|e| {
            panic!("{context}: reading from {next} of a recovered log failed: {e}")
        });
        assert!(!batch.is_empty(), "{context}: read from {next} is empty");
        for r in batch {
            assert_eq!(r, expected(next), "{context}: record {next} is wrong");
            next += 1;
        }
    }
    // Removed segments take their epochs with them; the meta file must
    // have kept the history from the first record on.
    assert_eq!(
        wal.history(),
        expected_history(last),
        "{context}: wrong epoch history"
    );
    if last > 0 {
        assert_eq!(wal.epoch_at(Lsn(last)), Some(epoch_of(last)));
    }
    last
}

/// The writer process. Does nothing unless the parent test started it.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    // A panic in any thread must end the process, for the parent to see.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let wal = Arc::new(FileWal::open(&dir, options()).expect("writer: open"));
    println!("{DURABLE}{}", wal.flushed_lsn().0);
    // LSN assignment and append happen under one lock, as in the runtime;
    // syncs happen outside it, so several threads join one fsync.
    let order = Arc::new(Mutex::new(()));
    let threads: Vec<std::thread::JoinHandle<()>> = (0..4u64)
        .map(|t| {
            let (wal, order) = (wal.clone(), order.clone());
            let mut rng = Rng(seed ^ (t + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            std::thread::spawn(move || {
                loop {
                    // Thread 0 only syncs: a sync with nothing of its own.
                    if t > 0 {
                        let _turn = order.lock().unwrap();
                        let first = wal.last_lsn().0 + 1;
                        let n = rng.range(1, 6);
                        let batch: Vec<Record> = (first..first + n).map(expected).collect();
                        wal.append(&batch).expect("writer: append");
                    }
                    let durable = wal.sync().expect("writer: sync");
                    // One write per line: the parent sees whole lines only.
                    println!("{DURABLE}{}", durable.0);
                    // Retention now and then, as a primary does once its
                    // standby has everything: removals can be torn too.
                    if t == 0 && durable.0 > KEEP && rng.range(0, 20) == 0 {
                        wal.remove_before(Lsn(durable.0 - KEEP))
                            .expect("writer: remove_before");
                    }
                }
            })
        })
        .collect();
    // The writers never stop: only the parent's SIGKILL ends this.
    drop(threads);
    loop {
        std::thread::park();
    }
}

struct Run {
    /// Highest LSN a `sync` reported durable before the kill.
    durable: u64,
    lines: usize,
}

/// When to kill the writer.
#[derive(Debug)]
enum Kill {
    /// This long after it was started: during start-up or recovery.
    AfterStart(Duration),
    /// This long after its log was open and it began writing.
    AfterOpen(Duration),
}

/// Starts a writer on `dir`, kills it as `kill` says, and returns what it
/// reported durable. Panics if the writer died by itself.
fn run_writer(dir: &Path, seed: u64, kill: &Kill) -> Run {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the writer");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (opened, is_open) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let (mut durable, mut lines) = (0u64, 0usize);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // A line cut by the kill has no newline and says nothing.
            let Some(text) = line.strip_suffix(b"\n") else {
                break;
            };
            if let Some(n) = std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.strip_prefix(DURABLE))
            {
                durable = durable.max(n.parse().expect("writer printed a bad LSN"));
                if lines == 0 {
                    let _ = opened.send(());
                }
                lines += 1;
            }
        }
        Run { durable, lines }
    });
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    match *kill {
        Kill::AfterStart(delay) => std::thread::sleep(delay),
        Kill::AfterOpen(delay) => {
            if is_open.recv_timeout(Duration::from_secs(60)).is_ok() {
                std::thread::sleep(delay);
            }
        }
    }
    let exited = child.try_wait().unwrap();
    // `Child::kill` sends SIGKILL on Unix.
    let _ = child.kill();
    child.wait().unwrap();
    let run = reader.join().unwrap();
    let stderr = errors.join().unwrap();
    assert!(
        exited.is_none(),
        "the writer exited by itself ({exited:?}) before the kill:\n{stderr}"
    );
    run
}

#[test]
fn sigkill_at_random_points_keeps_a_gapless_prefix_with_every_durable_record() {
    let seed = seed();
    let n = iterations("WALREP_CRASH_ITERATIONS", 30);
    eprintln!("crash test: seed {seed} (replay with WALREP_CRASH_SEED={seed}), {n} kills");
    let mut rng = Rng(seed);
    let dir = tempfile::TempDir::new().unwrap();
    let (mut durable, mut kept, mut killed_with_output, mut torn) = (0u64, 0u64, 0, 0);
    let mut first = 1;
    for i in 0..n {
        // Mostly kills while records stream, sometimes during start-up or
        // recovery itself.
        let kill = match rng.range(0, 10) {
            0 => Kill::AfterStart(Duration::from_millis(rng.range(0, 30))),
            _ => Kill::AfterOpen(Duration::from_millis(rng.range(0, 200))),
        };
        let run = run_writer(dir.path(), rng.next(), &kill);
        // The first line only says where the log was at open.
        if run.lines > 1 {
            killed_with_output += 1;
        }
        let context = format!(
            "seed {seed}, kill {i} {kill:?} (durable {}, before: kept {kept})",
            run.durable
        );
        // Anything an earlier recovery kept was made durable by it.
        durable = durable.max(run.durable).max(kept);
        let cut = if rng.range(0, 3) == 0 {
            power_cut(dir.path(), durable, &mut rng)
        } else {
            None
        };
        let context = format!("{context} {}", cut.as_deref().unwrap_or(""));
        let bytes_before = wal_bytes(dir.path());
        let wal = FileWal::open(dir.path(), options())
            .unwrap_or_else(|e| panic!("{context}: recovery after a plain crash failed: {e}"));
        if wal_bytes(dir.path()) < bytes_before {
            torn += 1;
        }
        let last = check_log(&wal, &context);
        assert!(
            last >= durable,
            "{context}: recovered {last} records but {durable} were reported durable"
        );
        kept = last;
        first = wal.first_lsn().0;
    }
    eprintln!(
        "crash test: {n} kills, {killed_with_output} while writing, {torn} torn tails cut, \
         records {first}..={kept} kept at the end"
    );
    // Lenient, for a machine whose fsyncs crawl under other load.
    assert!(
        killed_with_output >= n / 4,
        "most writers were killed before they wrote anything: the test proves little"
    );
    assert!(kept > 0 || n < 10, "no record survived any kill");
}

/// A log with a few segments and epochs changing within and between
/// segments; with `empty_last`, its last segment holds no record yet (as
/// after a crash that tore the first record of a new segment); with
/// `preallocate`, its last segment has unwritten reserved space after its
/// records. Returns how many records it holds.
fn build_base(dir: &Path, records: u64, empty_last: bool, preallocate: bool) -> u64 {
    let opts = FileWalOptions {
        segment_bytes: 2 << 10,
        preallocate,
        ..options()
    };
    let wal = FileWal::open(dir, opts.clone()).unwrap();
    wal.set_meta(&WalMeta {
        epoch: Epoch(3),
        leader: Some(NodeId::from("n1")),
        confirmed: true,
        restart_points: Default::default(),
    })
    .unwrap();
    for lsn in 1..=records {
        wal.append(&[base_record(lsn)]).unwrap();
    }
    wal.sync().unwrap();
    if !empty_last {
        return records;
    }
    let before = segments(dir).len();
    let mut lsn = records;
    while segments(dir).len() == before {
        lsn += 1;
        wal.append(&[base_record(lsn)]).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let new = segments(dir).pop().unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&new)
        .unwrap()
        .set_len(32)
        .unwrap();
    let wal = FileWal::open(dir, opts).unwrap();
    assert_eq!(segments(dir).len(), before + 1);
    wal.last_lsn().0
}

/// Like `expected`, but never larger than a small segment.
fn small(lsn: u64) -> Record {
    let mut r = expected(lsn);
    r.payload = r.payload.slice(..r.payload.len().min(150));
    r
}

fn base_record(lsn: u64) -> Record {
    Record {
        epoch: Epoch(1 + lsn / 9),
        ..small(lsn)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The segment files of the log in `dir`, in order; none while the log
/// does not exist yet (a writer killed before it opened its WAL).
fn segments(dir: &Path) -> Vec<PathBuf> {
    let wal = dir.join("wal");
    if !wal.exists() {
        return Vec::new();
    }
    let mut files: Vec<PathBuf> = fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else {
            out.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

/// Offsets in a segment file where each record's frame ends, from the
/// frame lengths of the records it holds.
fn frame_ends(first_lsn: u64, count: u64) -> Vec<(u64, u64)> {
    let mut end = 32; // segment header
    (first_lsn..first_lsn + count)
        .map(|lsn| {
            end += walrep::testing::wal_record::encoded_len(&base_record(lsn)) as u64;
            (lsn, end)
        })
        .collect()
}

#[derive(Debug)]
enum Damage {
    Flip { offset: u64, bits: Vec<u64> },
    Truncate { len: u64 },
}

#[test]
fn random_damage_is_refused_precisely_or_cut_as_a_torn_tail() {
    let seed = seed();
    let n = iterations("WALREP_CORRUPT_ITERATIONS", 400);
    eprintln!("damage test: seed {seed} (replay with WALREP_CRASH_SEED={seed}), {n} copies");
    let mut rng = Rng(seed);
    let root = tempfile::TempDir::new().unwrap();
    let bases: Vec<(PathBuf, u64)> = [
        (60, false, true),
        (45, true, true),
        (7, false, true),
        (60, false, false),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (records, empty_last, preallocate))| {
        let dir = root.path().join(format!("base{i}"));
        let records = build_base(&dir, records, empty_last, preallocate);
        (dir, records)
    })
    .collect();
    let (mut ok, mut corrupt, mut shortened) = (0, 0, 0);
    for i in 0..n {
        let (base, records) = &bases[rng.range(0, bases.len() as u64) as usize];
        let records = *records;
        let dir = root.path().join(format!("copy{i}"));
        copy_dir(base, &dir);
        let segs = segments(&dir);
        // Which file: mostly segments, the last one most often (the torn
        // tail logic lives there); sometimes the meta file.
        let target = match rng.range(0, 10) {
            0 => dir.join("meta"),
            1..=4 => segs.last().unwrap().clone(),
            _ => segs[rng.range(0, segs.len() as u64) as usize].clone(),
        };
        let is_meta = target.ends_with("meta");
        let target_len = fs::metadata(&target).unwrap().len();
        let damage = if target_len == 0 || rng.range(0, 3) == 0 {
            Damage::Truncate {
                len: rng.range(0, target_len.max(1)),
            }
        } else {
            // One or two bits in one byte, or in two bytes close together.
            let offset = rng.range(0, target_len);
            let mut bits = vec![offset * 8 + rng.range(0, 8)];
            if rng.range(0, 2) == 0 {
                let other = (offset + rng.range(0, 16)).min(target_len - 1);
                bits.push(other * 8 + rng.range(0, 8));
                bits.dedup();
            }
            Damage::Flip { offset, bits }
        };
        let mut bytes = fs::read(&target).unwrap();
        let damage_at = match &damage {
            Damage::Truncate { len } => {
                bytes.truncate(*len as usize);
                *len
            }
            Damage::Flip { offset, bits } => {
                for b in bits {
                    bytes[(b / 8) as usize] ^= 1 << (b % 8);
                }
                *offset
            }
        };
        fs::write(&target, &bytes).unwrap();
        let context = format!(
            "seed {seed}, copy {i}: {damage:?} of {} ({target_len} bytes)",
            target.display()
        );

        let before = snapshot(&dir);
        let result = std::panic::catch_unwind(|| FileWal::open(&dir, options()))
            .unwrap_or_else(|_| panic!("{context}: open panicked"));
        match result {
            Ok(wal) => {
                ok += 1;
                let last = wal.last_lsn().0;
                assert_eq!(wal.first_lsn(), Lsn(1), "{context}");
                let got = wal.read(Lsn(1), usize::MAX, usize::MAX).unwrap();
                assert_eq!(got.len() as u64, last, "{context}");
                for (k, r) in got.iter().enumerate() {
                    assert_eq!(*r, base_record(k as u64 + 1), "{context}: wrong record");
                }
                assert!(last <= records, "{context}: records appeared from nowhere");
                if last < records {
                    shortened += 1;
                    // Only the last segment may lose records, and only
                    // those at or after the damage.
                    assert_eq!(
                        Some(&target),
                        segs.last(),
                        "{context}: kept {last} of {records} after damage to an older file"
                    );
                    let first = segment_first_lsn(&target);
                    let intact = frame_ends(first, records + 1 - first)
                        .into_iter()
                        .take_while(|&(_, end)| end <= damage_at)
                        .last()
                        .map_or(first - 1, |(lsn, _)| lsn);
                    assert!(
                        last >= intact,
                        "{context}: kept {last} records, but {intact} lay before the damage"
                    );
                }
                // What recovery kept is a log like any other.
                drop(wal);
                let wal = FileWal::open(&dir, options())
                    .unwrap_or_else(|e| panic!("{context}: second open failed: {e}"));
                assert_eq!(wal.last_lsn(), Lsn(last), "{context}: second open");
                let next = base_record(last + 1);
                wal.append(std::slice::from_ref(&next)).unwrap();
                wal.sync().unwrap();
                drop(wal);
                let wal = FileWal::open(&dir, options()).unwrap();
                assert_eq!(
                    wal.read(Lsn(last + 1), 1, usize::MAX).unwrap(),
                    vec![next],
                    "{context}: append after recovery"
                );
            }
            Err(WalError::Corrupt {
                segment,
                offset,
                detail,
            }) => {
                corrupt += 1;
                let context = format!(
                    "{context}: Corrupt({}, {offset}, {detail})",
                    segment.display()
                );
                assert_eq!(
                    before,
                    snapshot(&dir),
                    "{context}: a failed open changed files"
                );
                if is_meta {
                    assert_eq!(segment, target, "{context}: wrong file named");
                } else {
                    // The damaged file, or the one after it when the damage
                    // made a segment end early.
                    let k = segs.iter().position(|s| *s == target).unwrap();
                    assert!(
                        segment == segs[k] || segs.get(k + 1) == Some(&segment),
                        "{context}: wrong file named"
                    );
                    if segment == target {
                        assert!(offset <= damage_at, "{context}: offset past the damage");
                    } else {
                        assert_eq!(offset, 0, "{context}");
                    }
                }
                assert!(!detail.is_empty(), "{context}");
            }
            Err(e) => panic!("{context}: open failed with a non-Corrupt error: {e}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
    eprintln!(
        "damage test: {n} copies: {ok} opened ({shortened} cut short), {corrupt} refused as corrupt"
    );
    assert!(
        (ok > 0 && corrupt > 0) || n < 50,
        "the damage never hit both outcomes"
    );
}

/// A kill tears nothing the kernel accepted, so emulate what a power cut
/// may do to the part of the log that was never fsynced: cut the last
/// segment anywhere after the last record reported durable (`durable`)
/// and maybe leave zeros (a file extended but never written) or garbage
/// after the cut. Only the last segment: rolling fsyncs the one before.
fn power_cut(dir: &Path, durable: u64, rng: &mut Rng) -> Option<String> {
    let segs = segments(dir);
    let last = segs.last()?;
    let first = segment_first_lsn(last);
    let len = fs::metadata(last).unwrap().len();
    let floor = if durable >= first {
        32 + (first..=durable)
            .map(|lsn| (walrep::testing::wal_record::HEADER_LEN + payload_len(lsn)) as u64)
            .sum::<u64>()
    } else if segs.len() == 1 {
        // Its header was made durable before anything before it went.
        32
    } else {
        // A segment no sync has reached: even its header may be lost.
        0
    };
    if floor >= len {
        return None;
    }
    let at = rng.range(floor, len);
    let extra = rng.range(0, 200) as usize;
    let (tail, kind) = match rng.range(0, 3) {
        0 => (vec![0u8; extra], "zeros"),
        1 => ((0..extra).map(|_| rng.next() as u8).collect(), "garbage"),
        _ => (Vec::new(), "nothing"),
    };
    let mut bytes = fs::read(last).unwrap();
    bytes.truncate(at as usize);
    bytes.extend_from_slice(&tail);
    fs::write(last, &bytes).unwrap();
    Some(format!(
        "then a power cut: {} cut from {len} to {at} bytes, then {} bytes of {kind}",
        last.display(),
        tail.len()
    ))
}

/// Bytes in the segment files of the log in `dir`.
fn wal_bytes(dir: &Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

fn segment_first_lsn(path: &Path) -> u64 {
    path.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}
