//! The demo engine: an ordered key-value map that implements
//! `StateMachine`, with durable snapshots (atomic file replace) so a restart
//! replays only the WAL after the snapshot, and a state hash two nodes can
//! compare.
//!
//! The map is persistent (`imbl::OrdMap`): a snapshot, periodic or for a
//! resyncing standby, clones it in O(1) under the lock and encodes the
//! clone without it, so applies never wait for an encode. The clone keeps
//! the values an apply replaces alive until the encode ends; nothing is
//! copied for it.

pub(crate) mod command;
mod snapshot_file;

pub use command::Command;

use bytes::Bytes;
use snapshot_file::Map;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use walrep::Lsn;
use walrep::{StateMachine, StateMachineError};

#[derive(Default)]
struct State {
    map: Map,
    applied: Lsn,
    /// XOR of every entry's hash: updated in O(1) per command and
    /// independent of insertion order, so equal maps hash equal.
    hash: u64,
}

/// The key-value engine. Share it with `Arc`: the replicator applies to it
/// and the engine's readers read from it.
pub struct KvStore {
    state: RwLock<State>,
    dir: Option<PathBuf>,
    durable: RwLock<Lsn>,
    /// Held while a snapshot is read and written to disk: the periodic
    /// snapshot and the one `restore` writes share a temp file, and a
    /// snapshot of the state before a restore must never be renamed over
    /// the restored one (the WAL before the restored LSN is gone).
    persisting: Mutex<()>,
}

fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    // Thirty-two bytes a step in four independent lanes, so the multiplies
    // overlap instead of each waiting for the last (one lane of eight bytes
    // was still a quarter of a standby's thread while it caught up with
    // 1 KiB values); each field length-prefixed so no two (key, value)
    // pairs feed the same words; a final mix so that XOR of many entries
    // does not cancel structure.
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let mut lanes: [u64; 4] = [
        0xcbf2_9ce4_8422_2325,
        0x8422_2325_cbf2_9ce4,
        0x2545_f491_4f6c_dd1d,
        0x1656_67b1_9e37_79f9,
    ];
    for bytes in [key, value] {
        lanes[0] = mix(lanes[0], bytes.len() as u64);
        let mut blocks = bytes.chunks_exact(32);
        for b in &mut blocks {
            lanes[0] = mix(lanes[0], word(&b[0..8]));
            lanes[1] = mix(lanes[1], word(&b[8..16]));
            lanes[2] = mix(lanes[2], word(&b[16..24]));
            lanes[3] = mix(lanes[3], word(&b[24..32]));
        }
        let mut tail = [0u8; 32];
        tail[..blocks.remainder().len()].copy_from_slice(blocks.remainder());
        for (lane, w) in lanes.iter_mut().zip(tail.chunks_exact(8)) {
            *lane = mix(*lane, word(w));
        }
    }
    let mut h = lanes[1..].iter().fold(lanes[0], |h, &lane| mix(h, lane));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

impl KvStore {
    /// An engine that keeps nothing on disk (tests).
    pub fn in_memory() -> KvStore {
        KvStore {
            state: RwLock::new(State::default()),
            dir: None,
            durable: RwLock::new(Lsn::ZERO),
            persisting: Mutex::new(()),
        }
    }

    /// Opens the engine in `dir`, loading its last durable snapshot.
    pub fn open(dir: impl AsRef<Path>) -> Result<KvStore, StateMachineError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StateMachineError::new(format!("creating {}: {e}", dir.display())))?;
        // A snapshot a crash (or a full disk) left half written.
        snapshot_file::remove_tmp(&snapshot_file::tmp_path(&dir));
        snapshot_file::remove_sending_links(&dir);
        let mut state = State::default();
        if let Some((lsn, map)) = snapshot_file::load(&dir)? {
            state.hash = map.iter().fold(0, |h, (k, v)| h ^ entry_hash(k, v));
            state.map = map;
            state.applied = lsn;
        }
        let durable = state.applied;
        Ok(KvStore {
            state: RwLock::new(state),
            dir: Some(dir),
            durable: RwLock::new(durable),
            persisting: Mutex::new(()),
        })
    }

    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.state.read().unwrap().map.get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.state.read().unwrap().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A hash of the whole map: equal on two nodes iff their maps are equal
    /// (up to hash collisions).
    pub fn state_hash(&self) -> u64 {
        self.state.read().unwrap().hash
    }

    /// The map and the LSN it holds, at one moment: an O(1) clone taken
    /// under the read lock, so the caller encodes it without the lock.
    fn frozen(&self) -> (Lsn, Map) {
        let s = self.state.read().unwrap();
        (s.applied, s.map.clone())
    }

    /// Writes the map to disk atomically; the WAL before it may then go.
    /// It streams a frozen copy to the file, so applies go on meanwhile
    /// and no second encoding of the state is held in memory.
    pub fn persist_snapshot(&self) -> Result<Lsn, StateMachineError> {
        self.persist_snapshot_with(|_| {})
    }

    /// `persist_snapshot`, calling `encoding` once the map is frozen and
    /// before it is written (tests: an apply while an encode runs).
    fn persist_snapshot_with(&self, encoding: impl FnOnce(Lsn)) -> Result<Lsn, StateMachineError> {
        let Some(dir) = &self.dir else {
            return Ok(Lsn::ZERO);
        };
        let _one_at_a_time = self.persisting.lock().unwrap();
        let (lsn, map) = self.frozen();
        encoding(lsn);
        snapshot_file::store(dir, lsn, |out| snapshot_file::write_map(&map, out))?;
        *self.durable.write().unwrap() = lsn;
        Ok(lsn)
    }
}

/// Puts a restored `map` (whose hash is `hash`, as of `lsn`) in place of
/// the state. The write lock is held for the swap alone: the hash was
/// computed before it, and the old map, millions of entries perhaps, is
/// freed after it, so readers (GETs, on the node's runtime thread) wait
/// for neither.
fn swap_state(state: &RwLock<State>, map: Map, hash: u64, lsn: Lsn) {
    let old = {
        let mut s = state.write().unwrap();
        s.hash = hash;
        s.applied = lsn;
        std::mem::replace(&mut s.map, map)
    };
    drop(old);
}

/// Applies `cmd` at `lsn` unless it was applied already; the value its key
/// held before.
/// `new_hash` is a put's `entry_hash`, computed before the state's lock
/// was taken (0 for a delete).
fn apply_one(s: &mut State, lsn: Lsn, cmd: Command, new_hash: u64) -> Option<Bytes> {
    if lsn <= s.applied {
        return None;
    }
    assert_eq!(lsn, s.applied.next(), "records applied out of order");
    s.applied = lsn;
    match cmd {
        Command::Put { key, value } => {
            let key = Bytes::from(key);
            let mut hash = new_hash;
            let old = s.map.insert(key.clone(), value);
            if let Some(old) = &old {
                hash ^= entry_hash(&key, old);
            }
            s.hash ^= hash;
            old
        }
        Command::Delete { key } => {
            let old = s.map.remove(key.as_slice());
            if let Some(old) = &old {
                s.hash ^= entry_hash(&key, old);
            }
            old
        }
    }
}

impl StateMachine for KvStore {
    fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), StateMachineError> {
        self.apply_batch(&[(lsn, payload)]).map(drop)
    }

    /// Decodes every command and hashes every new value first (a bad
    /// command applies none of the batch; a large value is hashed while
    /// readers go on), then applies them all under one write lock. A
    /// record's output is the value its key held before (empty if none,
    /// or if it was applied already).
    fn apply_batch(&self, records: &[(Lsn, &[u8])]) -> Result<Vec<Bytes>, StateMachineError> {
        let commands = Command::decode_batch(records)?;
        let new_hashes: Vec<u64> = commands
            .iter()
            .map(|c| match c {
                Command::Put { key, value } => entry_hash(key, value),
                Command::Delete { .. } => 0,
            })
            .collect();
        let mut s = self.state.write().unwrap();
        let mut outputs = Vec::with_capacity(records.len());
        for (((lsn, _), cmd), new_hash) in records.iter().zip(commands).zip(new_hashes) {
            outputs.push(apply_one(&mut s, *lsn, cmd, new_hash).unwrap_or_default());
        }
        Ok(outputs)
    }

    /// An apply decodes its commands and updates the map under the write
    /// lock, which readers, snapshots (an O(1) clone) and persisting hold
    /// only briefly: microseconds for a batch of small values. It also
    /// hashes each value it replaces (the state hash), so a batch that
    /// would overwrite or delete more than `INLINE_APPLY_MAX_BYTES` of
    /// values goes to a blocking thread, and so does one with a record
    /// whose key cannot be read (a bad record fails the apply wherever it
    /// runs).
    fn can_apply_inline(&self, records: &[(Lsn, &[u8])]) -> bool {
        let s = self.state.read().unwrap();
        let mut replaced = 0usize;
        for (_, payload) in records {
            let Some(key) = Command::key_of(payload) else {
                return false;
            };
            replaced += s.map.get(key).map_or(0, |v| v.len());
            if replaced > walrep::INLINE_APPLY_MAX_BYTES {
                return false;
            }
        }
        true
    }

    fn applied_lsn(&self) -> Lsn {
        self.state.read().unwrap().applied
    }

    fn durable_lsn(&self) -> Lsn {
        *self.durable.read().unwrap()
    }

    /// Streams a frozen copy of the map to `out`, its LSN first, as the
    /// snapshot file holds it: one consistent state, while applies go on.
    fn snapshot(&self, out: &mut dyn std::io::Write) -> Result<Lsn, StateMachineError> {
        let (lsn, map) = self.frozen();
        out.write_all(&lsn.0.to_le_bytes())
            .and_then(|()| snapshot_file::write_map(&map, out))
            .map_err(|e| StateMachineError::new(format!("writing the snapshot: {e}")))?;
        Ok(lsn)
    }

    /// The frozen map, encoded as it is read: the transfer starts at once
    /// and nothing is copied or written first.
    fn snapshot_source(
        &self,
    ) -> Result<Option<Box<dyn walrep::SnapshotSource>>, StateMachineError> {
        let (lsn, map) = self.frozen();
        Ok(Some(Box::new(snapshot_file::MapSource::new(lsn, map))))
    }

    /// Decodes the map as it is read, then swaps it in.
    fn restore(&self, lsn: Lsn, input: &mut dyn std::io::Read) -> Result<(), StateMachineError> {
        let mut prefix = [0u8; 8];
        let map = if snapshot_file::read_lsn(input, lsn, &mut prefix)? {
            snapshot_file::read_map(input)?
        } else {
            snapshot_file::read_map(&mut std::io::Read::chain(&prefix[..], input))?
        };
        // The WAL is reset to start after the snapshot, so the snapshot
        // must be on disk before anything relies on it. The map is still
        // ours alone: it streams to the file without a second copy in
        // memory (encoding it first doubled a resyncing standby's memory),
        // and with `persisting` held no periodic snapshot of the state
        // before it can land after it.
        let _one_at_a_time = self.persisting.lock().unwrap();
        if let Some(dir) = &self.dir {
            snapshot_file::store(dir, lsn, |out| snapshot_file::write_map(&map, out))?;
        }
        let hash = map.iter().fold(0, |h, (k, v)| h ^ entry_hash(k, v));
        swap_state(&self.state, map, hash, lsn);
        if self.dir.is_some() {
            *self.durable.write().unwrap() = lsn;
        }
        Ok(())
    }

    /// The received file is what `kv.snapshot` holds: decoded in one
    /// buffered pass, then renamed into place (`restore_received`).
    fn restore_file(&self, lsn: Lsn, path: &Path) -> Result<(), StateMachineError> {
        let open = || -> std::io::Result<(std::fs::File, u64)> {
            let f = std::fs::File::open(path)?;
            let len = f.metadata()?.len();
            Ok((f, len))
        };
        let (file, len) = open().map_err(|e| {
            StateMachineError::new(format!(
                "opening the received snapshot {}: {e}",
                path.display()
            ))
        })?;
        let mut input = std::io::BufReader::with_capacity(1 << 20, file);
        self.restore_received(lsn, len, &mut input, path)
    }

    fn restores_while_receiving(&self) -> bool {
        true
    }

    /// Decodes the map while it arrives, so the restore ends right after
    /// the transfer instead of starting then (`restore_received`).
    fn restore_while_receiving(
        &self,
        lsn: Lsn,
        len: u64,
        incoming: &mut dyn std::io::Read,
        path: &Path,
    ) -> Result<(), StateMachineError> {
        self.restore_received(lsn, len, incoming, path)
    }
}

impl KvStore {
    /// Restores from `input`, the `len` bytes of a received snapshot that
    /// walrep is writing, or wrote, to `path`: checks the encoding and
    /// takes each entry's hash as it arrives (a value is read into one
    /// reused buffer, not kept), and once `input` ended (walrep checked the
    /// whole file) renames the file into place as the durable snapshot
    /// instead of writing the store again, maps it, and swaps in a map
    /// whose values are slices of that mapping: no value is copied into
    /// fresh memory (on a VM, first touches of memory cost more than the
    /// copy). A failure before the end leaves the state as it was. A
    /// snapshot from a primary that sent no LSN goes through `restore`.
    fn restore_received(
        &self,
        lsn: Lsn,
        len: u64,
        input: &mut dyn std::io::Read,
        path: &Path,
    ) -> Result<(), StateMachineError> {
        let mut prefix = [0u8; 8];
        if !snapshot_file::read_lsn(input, lsn, &mut prefix)? {
            return self.restore(lsn, &mut std::io::Read::chain(&prefix[..], input));
        }
        let mut hash = 0;
        let located =
            snapshot_file::locate_entries(input, Some(len.saturating_sub(8)), &mut |k, v| {
                hash ^= entry_hash(k, v)
            })?;
        // Mapped before it is moved (the mapping follows the file): once
        // it is the durable snapshot, nothing may fail before the state in
        // memory is the one it holds.
        let file = snapshot_file::map_file(path)?;
        let _one_at_a_time = self.persisting.lock().unwrap();
        if let Some(dir) = &self.dir {
            snapshot_file::install(dir, path)?;
        }
        let map: Map = located
            .into_iter()
            .map(|e| {
                let at = 8 + e.value_at as usize;
                (e.key, file.slice(at..at + e.value_len))
            })
            .collect();
        swap_state(&self.state, map, hash, lsn);
        if let Some(dir) = &self.dir {
            // The rename is made durable last: if that fails, memory
            // already holds what the file holds, and the error stops the
            // node as any failed restore does.
            snapshot_file::sync_dir(dir)?;
            *self.durable.write().unwrap() = lsn;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kv::command::encoded::{del, put};

    /// A full disk while the snapshot is written: the write fails, no
    /// `kv.snapshot.tmp` stays behind, and the last whole snapshot is what
    /// the next open loads. One a crash left is removed at open.
    #[test]
    fn a_snapshot_that_cannot_be_written_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = snapshot_file::tmp_path(dir.path());
        snapshot_file::store(dir.path(), Lsn(3), |out| {
            snapshot_file::write_map(&Map::default(), out)
        })
        .unwrap();
        let err = snapshot_file::store(dir.path(), Lsn(7), |out| {
            out.write_all(&[0u8; 4 << 20])?;
            Err(std::io::Error::from_raw_os_error(28)) // ENOSPC
        })
        .unwrap_err();
        assert!(
            err.message().contains("writing snapshot"),
            "{}",
            err.message()
        );
        assert!(!tmp.exists(), "a partial snapshot stayed behind");
        std::fs::write(&tmp, b"what a crash left").unwrap();
        let store = KvStore::open(dir.path()).unwrap();
        assert!(!tmp.exists(), "a stale partial snapshot survived the open");
        assert_eq!(store.applied_lsn(), Lsn(3));
    }

    #[test]
    fn entries_that_differ_only_in_where_bytes_sit_hash_apart() {
        let pairs: [(&[u8], &[u8]); 8] = [
            (b"ab", b"c"),
            (b"a", b"bc"),
            (b"a", b""),
            (b"a\0", b""),
            (b"", b"a"),
            (b"12345678", b"9"),
            (&[7; 40], &[7; 8]),
            (&[7; 48], b""),
        ];
        for (i, x) in pairs.iter().enumerate() {
            for y in &pairs[i + 1..] {
                assert_ne!(entry_hash(x.0, x.1), entry_hash(y.0, y.1), "{x:?} {y:?}");
            }
        }
    }

    #[test]
    fn equal_maps_hash_equal_whatever_the_order() {
        let a = KvStore::in_memory();
        a.apply(Lsn(1), &put("x", "1")).unwrap();
        a.apply(Lsn(2), &put("y", "2")).unwrap();
        let b = KvStore::in_memory();
        b.apply(Lsn(1), &put("y", "2")).unwrap();
        b.apply(Lsn(2), &put("x", "0")).unwrap();
        assert_ne!(a.state_hash(), b.state_hash());
        b.apply(Lsn(3), &put("x", "1")).unwrap();
        assert_eq!(a.state_hash(), b.state_hash());
        let del = Command::Delete { key: b"y".to_vec() }.encode();
        a.apply(Lsn(3), &del).unwrap();
        assert_ne!(a.state_hash(), b.state_hash());
    }

    #[test]
    fn a_batch_answers_each_put_with_the_value_it_replaced_and_a_bad_command_applies_none() {
        let kv = KvStore::in_memory();
        let (p1, p2, d) = (put("x", "1"), put("x", "2"), del("x"));
        let out = kv
            .apply_batch(&[(Lsn(1), &p1[..]), (Lsn(2), &p2[..]), (Lsn(3), &d[..])])
            .unwrap();
        assert_eq!(out, vec![Bytes::new(), Bytes::from("1"), Bytes::from("2")]);
        let err = kv
            .apply_batch(&[(Lsn(4), &p1[..]), (Lsn(5), &b"\xff"[..])])
            .unwrap_err();
        assert!(std::error::Error::source(&err).is_some(), "{err}");
        assert_eq!(kv.applied_lsn(), Lsn(3), "none of the bad batch applied");
        assert!(kv.get(b"x").is_none());
    }

    #[test]
    fn a_redelivered_record_is_applied_once() {
        let kv = KvStore::in_memory();
        kv.apply(Lsn(1), &put("x", "1")).unwrap();
        kv.apply(Lsn(2), &put("x", "2")).unwrap();
        kv.apply(Lsn(2), &put("x", "3")).unwrap();
        assert_eq!(kv.get(b"x").unwrap(), Bytes::from_static(b"2"));
    }

    /// Small writes apply inline; a batch that would replace (and so
    /// hash) more than `INLINE_APPLY_MAX_BYTES` of stored values does not,
    /// however small its own payload, nor does a malformed one.
    #[test]
    fn only_batches_replacing_little_may_be_applied_inline() {
        let kv = KvStore::in_memory();
        let big = "v".repeat(walrep::INLINE_APPLY_MAX_BYTES + 1);
        kv.apply(Lsn(1), &put("big", &big)).unwrap();
        kv.apply(Lsn(2), &put("small", "1")).unwrap();
        let (overwrite_small, new_key) = (put("small", "2"), put("fresh", "1"));
        let small: [(Lsn, &[u8]); 2] = [(Lsn(3), &overwrite_small), (Lsn(4), &new_key)];
        assert!(kv.can_apply_inline(&small));
        let delete_big = del("big");
        assert!(
            !kv.can_apply_inline(&[(Lsn(3), &delete_big)]),
            "a tiny delete of a large value"
        );
        let overwrite_big = put("big", "x");
        assert!(!kv.can_apply_inline(&[(Lsn(3), &overwrite_big)]));
        assert!(!kv.can_apply_inline(&[(Lsn(3), &[9u8][..])]), "malformed");
    }

    #[test]
    fn a_durable_snapshot_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open(dir.path()).unwrap();
        kv.apply(Lsn(1), &put("x", "1")).unwrap();
        assert_eq!(kv.persist_snapshot().unwrap(), Lsn(1));
        kv.apply(Lsn(2), &put("y", "2")).unwrap();
        let hash = kv.state_hash();
        drop(kv);
        let kv = KvStore::open(dir.path()).unwrap();
        assert_eq!(kv.applied_lsn(), Lsn(1));
        assert_eq!(kv.durable_lsn(), Lsn(1));
        kv.apply(Lsn(2), &put("y", "2")).unwrap();
        assert_eq!(kv.state_hash(), hash);
    }

    /// The node's periodic snapshot and the one a restore writes (a
    /// standby resyncing) run on different threads: both must land, and
    /// the file on disk must end as the restored state. Without
    /// `persisting` one rename finds the shared temp file gone.
    #[test]
    fn concurrent_snapshots_and_a_restore_all_land_and_the_restored_state_wins() {
        let dir = tempfile::tempdir().unwrap();
        let kv = std::sync::Arc::new(KvStore::open(dir.path()).unwrap());
        kv.apply(Lsn(1), &put("old", "1")).unwrap();
        let source = KvStore::in_memory();
        for i in 1..=50 {
            source.apply(Lsn(i), &put(&format!("k{i}"), "v")).unwrap();
        }
        let periodic = {
            let kv = kv.clone();
            std::thread::spawn(move || {
                for _ in 0..300 {
                    kv.persist_snapshot().expect("a periodic snapshot failed");
                }
            })
        };
        let mut snap = Vec::new();
        let lsn = source.snapshot(&mut snap).unwrap();
        for _ in 0..30 {
            kv.restore(lsn, &mut &snap[..])
                .expect("the restore's snapshot failed");
        }
        periodic.join().unwrap();
        drop(kv);
        let reopened = KvStore::open(dir.path()).unwrap();
        assert_eq!(reopened.applied_lsn(), Lsn(50));
        assert_eq!(reopened.state_hash(), source.state_hash());
    }

    /// Applies on another thread; whether it completed within a deadline
    /// (an apply blocked by a snapshot fails the test instead of hanging it).
    fn apply_elsewhere(kv: &std::sync::Arc<KvStore>, lsn: Lsn, payload: Vec<u8>) -> bool {
        let (done, applied) = std::sync::mpsc::channel();
        let kv = kv.clone();
        std::thread::spawn(move || {
            kv.apply(lsn, &payload).unwrap();
            let _ = done.send(());
        });
        applied
            .recv_timeout(std::time::Duration::from_secs(10))
            .is_ok()
    }

    /// A sink that, at its first write, says so and waits to be released:
    /// a snapshot stopped in the middle of its encode.
    struct HeldSink {
        started: Option<std::sync::mpsc::Sender<()>>,
        release: std::sync::mpsc::Receiver<()>,
        bytes: Vec<u8>,
    }

    impl std::io::Write for HeldSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(started) = self.started.take() {
                started.send(()).unwrap();
                self.release.recv().unwrap();
            }
            self.bytes.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_apply_completes_while_a_snapshot_for_the_peer_is_being_encoded() {
        let kv = std::sync::Arc::new(KvStore::in_memory());
        kv.apply(Lsn(1), &put("x", "1")).unwrap();
        let (started, has_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        let snapshotting = {
            let kv = kv.clone();
            std::thread::spawn(move || {
                let mut sink = HeldSink {
                    started: Some(started),
                    release: released,
                    bytes: Vec::new(),
                };
                let lsn = kv.snapshot(&mut sink).unwrap();
                (lsn, sink.bytes)
            })
        };
        has_started.recv().unwrap();
        let applied = apply_elsewhere(&kv, Lsn(2), put("x", "2"));
        release.send(()).unwrap();
        assert!(applied, "the apply waited for the snapshot's encode");
        let (lsn, bytes) = snapshotting.join().unwrap();
        assert_eq!(lsn, Lsn(1));
        assert_eq!(bytes[..8], lsn.0.to_le_bytes(), "its LSN first");
        let map = snapshot_file::decode_map(&bytes[8..]).unwrap();
        assert_eq!(
            map.get(&b"x"[..]),
            Some(&Bytes::from("1")),
            "the pre-apply state"
        );
        assert_eq!(kv.get(b"x"), Some(Bytes::from("2")));
    }

    #[test]
    fn an_apply_completes_while_the_periodic_snapshot_is_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let kv = std::sync::Arc::new(KvStore::open(dir.path()).unwrap());
        kv.apply(Lsn(1), &put("x", "1")).unwrap();
        let mut applied = false;
        let lsn = kv
            .persist_snapshot_with(|_| applied = apply_elsewhere(&kv, Lsn(2), put("x", "2")))
            .unwrap();
        assert!(applied, "the apply waited for the snapshot's encode");
        assert_eq!(lsn, Lsn(1));
        assert_eq!(kv.durable_lsn(), Lsn(1));
        drop(kv);
        let reopened = KvStore::open(dir.path()).unwrap();
        assert_eq!(reopened.applied_lsn(), Lsn(1), "the pre-apply state");
        assert_eq!(reopened.get(b"x"), Some(Bytes::from("1")));
    }

    #[test]
    fn restore_replaces_everything() {
        let a = KvStore::in_memory();
        a.apply(Lsn(1), &put("x", "1")).unwrap();
        let b = KvStore::in_memory();
        b.apply(Lsn(1), &put("z", "9")).unwrap();
        b.apply(Lsn(2), &put("w", "9")).unwrap();
        let mut snap = Vec::new();
        let lsn = a.snapshot(&mut snap).unwrap();
        b.restore(lsn, &mut &snap[..]).unwrap();
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!(b.applied_lsn(), Lsn(1));
        assert!(b.get(b"z").is_none());
    }

    /// A primary's store holding a small and a 5,000-byte value, and its
    /// snapshot (bytes and LSN) for a standby to receive.
    fn primary_with_a_large_value() -> (KvStore, Vec<u8>, Lsn) {
        let a = KvStore::in_memory();
        a.apply(Lsn(1), &put("x", "1")).unwrap();
        a.apply(Lsn(2), &put("y", &"v".repeat(5000))).unwrap();
        let mut snap = Vec::new();
        let lsn = a.snapshot(&mut snap).unwrap();
        (a, snap, lsn)
    }

    /// A snapshot's bytes are the snapshot file's: the file a standby
    /// receives is renamed into place as its durable snapshot (not written
    /// again), the state is the primary's, and a restart loads it.
    #[test]
    fn a_received_snapshot_file_becomes_the_durable_snapshot_as_it_is() {
        let (a, snap, lsn) = primary_with_a_large_value();
        let dir = tempfile::tempdir().unwrap();
        let b = KvStore::open(dir.path().join("kv")).unwrap();
        b.apply(Lsn(1), &put("z", "9")).unwrap();
        let received = dir.path().join("incoming.snapshot");
        std::fs::write(&received, &snap).unwrap();
        b.restore_file(lsn, &received).unwrap();
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!((b.applied_lsn(), b.durable_lsn()), (lsn, lsn));
        assert!(!received.exists(), "moved, not copied");
        let on_disk = std::fs::read(dir.path().join("kv").join(snapshot_file::FILE)).unwrap();
        assert_eq!(on_disk, snap, "the durable snapshot is the received file");
        drop(b);
        let c = KvStore::open(dir.path().join("kv")).unwrap();
        assert_eq!((c.state_hash(), c.applied_lsn()), (a.state_hash(), lsn));
    }

    /// A snapshot without its LSN (from a primary that sent none) is
    /// still restored; one whose LSN is not the announced one is refused
    /// and changes nothing.
    #[test]
    fn a_snapshot_without_an_lsn_restores_and_one_with_another_lsn_is_refused() {
        let a = KvStore::in_memory();
        a.apply(Lsn(1), &put("x", "1")).unwrap();
        let mut snap = Vec::new();
        let lsn = a.snapshot(&mut snap).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let b = KvStore::open(dir.path()).unwrap();
        let received = dir.path().join("received");
        std::fs::write(&received, &snap[8..]).unwrap();
        b.restore_file(lsn, &received).unwrap();
        assert_eq!(b.state_hash(), a.state_hash());
        let c = KvStore::in_memory();
        c.apply(Lsn(1), &put("z", "9")).unwrap();
        std::fs::write(&received, &snap).unwrap();
        let e = c.restore_file(Lsn(7), &received).unwrap_err();
        assert!(e.message().contains("not the 7"), "{e}");
        assert!(c.get(b"z").is_some(), "nothing replaced");
    }

    /// The primary's snapshot source is the state frozen when it was
    /// taken: applies after it change neither its LSN nor its bytes, which
    /// are what `snapshot` writes (the snapshot file's format).
    #[test]
    fn the_snapshot_source_is_the_state_when_taken_whatever_is_applied_after() {
        use std::io::Read;
        let kv = KvStore::in_memory();
        kv.apply(Lsn(1), &put("x", "1")).unwrap();
        let mut written = Vec::new();
        kv.snapshot(&mut written).unwrap();
        let source = kv.snapshot_source().unwrap().expect("always one");
        kv.apply(Lsn(2), &put("x", "2")).unwrap();
        kv.apply(Lsn(3), &put("y", "3")).unwrap();
        let mut read = Vec::new();
        source.read_from(0).unwrap().read_to_end(&mut read).unwrap();
        assert_eq!(
            (source.lsn(), source.total_bytes()),
            (Lsn(1), read.len() as u64)
        );
        assert_eq!(read, written);
    }

    /// A restore while receiving whose input fails before its end (a cut
    /// or corrupt transfer) changes nothing: the old state and durable
    /// snapshot stay. One whose input ends installs the received file as
    /// the durable snapshot, as `restore_file` does.
    #[test]
    fn a_restore_while_receiving_changes_nothing_until_its_input_ends() {
        struct FailsAfter<'a>(&'a [u8]);
        impl std::io::Read for FailsAfter<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("the transfer stopped"));
                }
                let n = self.0.len().min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let (a, snap, lsn) = primary_with_a_large_value();
        let dir = tempfile::tempdir().unwrap();
        let b = KvStore::open(dir.path().join("kv")).unwrap();
        b.apply(Lsn(1), &put("z", "9")).unwrap();
        b.persist_snapshot().unwrap();
        let before = b.state_hash();
        let received = dir.path().join("incoming.snapshot");
        std::fs::write(&received, &snap).unwrap();
        let len = snap.len() as u64;
        for cut in [0, 8, 20, snap.len() - 4, snap.len()] {
            let err = b
                .restore_while_receiving(lsn, len, &mut FailsAfter(&snap[..cut]), &received)
                .unwrap_err();
            assert!(!err.message().is_empty());
            assert_eq!(b.state_hash(), before, "cut at {cut}: nothing replaced");
            assert_eq!(b.applied_lsn(), Lsn(1));
            assert!(received.exists(), "cut at {cut}: the file is not taken");
        }
        b.restore_while_receiving(lsn, len, &mut &snap[..], &received)
            .unwrap();
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!((b.applied_lsn(), b.durable_lsn()), (lsn, lsn));
        assert!(!received.exists(), "moved, not copied");
        let on_disk = std::fs::read(dir.path().join("kv").join(snapshot_file::FILE)).unwrap();
        assert_eq!(on_disk, snap, "the durable snapshot is the received file");
        // The values stay in the file they arrived in; a newer snapshot
        // replacing that file leaves them readable.
        b.apply(Lsn(3), &put("x", "2")).unwrap();
        b.persist_snapshot().unwrap();
        assert_eq!(b.get(b"y").as_deref(), Some("v".repeat(5000).as_bytes()));
        assert_eq!(b.get(b"x").as_deref(), Some(&b"2"[..]));
        drop(b);
        let c = KvStore::open(dir.path().join("kv")).unwrap();
        assert_eq!(c.get(b"y").as_deref(), Some("v".repeat(5000).as_bytes()));
        assert_eq!(c.applied_lsn(), Lsn(3));
    }
}
