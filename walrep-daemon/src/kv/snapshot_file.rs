//! The engine's snapshot: the same bytes on the wire (`StateMachine::
//! snapshot_source`, produced from a frozen map as they are sent) and on
//! disk (`kv.snapshot`, replaced atomically), so a standby decodes the
//! bytes as they arrive and then renames the file walrep received them
//! into in place (`restore_while_receiving`) instead of writing the store
//! again.
//!
//! `| lsn u64 LE | magic "WKV1" | count: u64 | (key_len u32, key, value_len u32, value)* | crc32c u32 |`
//! (the CRC covers the magic up to the last entry). A snapshot from a
//! primary that sent no LSN (it starts with the magic) is still restored.

use bytes::Bytes;
use std::io::{Read, Write};
use std::path::Path;
use walrep::Lsn;
use walrep::StateMachineError;

const MAGIC: &[u8; 4] = b"WKV1";
pub(super) const FILE: &str = "kv.snapshot";
/// Hard links to `FILE` that earlier versions made for a transfer to a
/// standby to read; removed at start.
const SENDING: &str = "kv.snapshot.sending-";

fn err(msg: impl Into<String>) -> StateMachineError {
    StateMachineError::new(msg)
}

/// The engine's map: persistent, so a snapshot is an O(1) clone that
/// shares every node with the live map until an apply changes it.
pub type Map = imbl::OrdMap<Bytes, Bytes>;

/// The encoding of `map`, in memory.
#[cfg(test)]
pub fn encode_map(map: &Map) -> Vec<u8> {
    let mut out = Vec::new();
    write_map(map, &mut out).expect("writing to a Vec");
    out
}

/// Streams the encoding of `map` into `out`, entry by entry.
pub fn write_map(map: &Map, out: &mut dyn Write) -> std::io::Result<()> {
    let mut out = Crc { inner: out, crc: 0 };
    out.write_all(MAGIC)?;
    out.write_all(&(map.len() as u64).to_le_bytes())?;
    for (k, v) in map {
        out.write_all(&(k.len() as u32).to_le_bytes())?;
        out.write_all(k)?;
        out.write_all(&(v.len() as u32).to_le_bytes())?;
        out.write_all(v)?;
    }
    let crc = out.crc;
    out.inner.write_all(&crc.to_le_bytes())
}

/// The snapshot of a frozen map, produced as it is read
/// (`StateMachine::snapshot_source`): the bytes `kv.snapshot` holds
/// (LSN first, then `write_map`'s encoding), with no copy of the map made
/// first. The map is an O(1) clone of the engine's, sharing every node
/// with it until applies change them.
pub struct MapSource {
    lsn: Lsn,
    map: Map,
    total: u64,
}

impl MapSource {
    pub fn new(lsn: Lsn, map: Map) -> MapSource {
        let entries: u64 = map
            .iter()
            .map(|(k, v)| 8 + k.len() as u64 + v.len() as u64)
            .sum();
        MapSource {
            total: 8 + MAGIC.len() as u64 + 8 + entries + 4,
            lsn,
            map,
        }
    }
}

impl walrep::SnapshotSource for MapSource {
    fn lsn(&self) -> Lsn {
        self.lsn
    }

    fn total_bytes(&self) -> u64 {
        self.total
    }

    fn read_from(&self, offset: u64) -> Result<Box<dyn Read + Send>, StateMachineError> {
        if offset > self.total {
            return Err(err(format!(
                "a read from byte {offset} of a {}-byte snapshot",
                self.total
            )));
        }
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        let mut reader = MapReader {
            pieces: [
                (Bytes::copy_from_slice(&self.lsn.0.to_le_bytes()), false),
                (Bytes::from(head), true),
            ]
            .into(),
            entries: self.map.clone().into_iter(),
            crc: 0,
            crc_queued: false,
        };
        reader.consume(offset, None);
        Ok(Box::new(reader))
    }
}

/// Walks a frozen map's encoding piece by piece (the LSN; the magic and
/// count; each entry's length fields, key and value; the CRC), copying
/// only the bytes read: keys and values are shared with the map. The CRC
/// is taken over every piece it covers as the piece is passed, skipped
/// ones too, so a read from the middle still ends with the right one.
struct MapReader {
    /// Pieces not yet passed, with whether the CRC covers them.
    pieces: std::collections::VecDeque<(Bytes, bool)>,
    entries: imbl::ordmap::ConsumingIter<Bytes, Bytes, imbl::shared_ptr::DefaultSharedPtr>,
    crc: u32,
    /// The CRC's own piece was queued: what follows is the end.
    crc_queued: bool,
}

impl MapReader {
    /// Queues the next entry's pieces, or the CRC after the last entry;
    /// `false` at the end.
    fn refill(&mut self) -> bool {
        if let Some((k, v)) = self.entries.next() {
            self.pieces.extend([
                (
                    Bytes::copy_from_slice(&(k.len() as u32).to_le_bytes()),
                    true,
                ),
                (k, true),
                (
                    Bytes::copy_from_slice(&(v.len() as u32).to_le_bytes()),
                    true,
                ),
                (v, true),
            ]);
            return true;
        }
        if self.crc_queued {
            return false;
        }
        self.crc_queued = true;
        self.pieces
            .push_back((Bytes::copy_from_slice(&self.crc.to_le_bytes()), false));
        true
    }

    /// Passes up to `n` bytes, copying them into `out` if given; how many
    /// it passed (fewer only at the end).
    fn consume(&mut self, n: u64, mut out: Option<&mut [u8]>) -> usize {
        let mut passed = 0usize;
        while (passed as u64) < n {
            if self.pieces.is_empty() && !self.refill() {
                break;
            }
            let (piece, covered) = self.pieces.front_mut().expect("refilled");
            let take = piece.len().min((n - passed as u64) as usize);
            let bytes = piece.split_to(take);
            if *covered {
                self.crc = crc32c::crc32c_append(self.crc, &bytes);
            }
            if let Some(out) = out.as_deref_mut() {
                out[passed..passed + take].copy_from_slice(&bytes);
            }
            passed += take;
            if piece.is_empty() {
                self.pieces.pop_front();
            }
        }
        passed
    }
}

impl Read for MapReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.consume(buf.len() as u64, Some(buf)))
    }
}

/// Passes bytes through, CRC32C-ing them.
struct Crc<T> {
    inner: T,
    crc: u32,
}

impl<T: Write> Write for Crc<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Crc<T> {
    /// Fills `buf` or says the snapshot ends inside what it holds.
    fn take(&mut self, buf: &mut [u8], what: &str) -> Result<(), StateMachineError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => err(format!("snapshot ends inside {what}")),
            _ => err(format!("reading the snapshot: {e}")),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }

    fn u32(&mut self, what: &str) -> Result<u32, StateMachineError> {
        let mut b = [0u8; 4];
        self.take(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// `len` bytes, allocated as they arrive (a length field that lies
    /// about the bytes behind it costs no more than those bytes), or at
    /// once when `left` (what the input still holds, if known) covers them.
    fn bytes(
        &mut self,
        len: usize,
        left: &mut Option<u64>,
        what: &str,
    ) -> Result<Vec<u8>, StateMachineError> {
        if let Some(left) = left.as_mut().filter(|l| **l >= len as u64) {
            let mut v = vec![0u8; len];
            self.take(&mut v, what)?;
            *left -= len as u64;
            return Ok(v);
        }
        let mut v = Vec::new();
        while v.len() < len {
            let at = v.len();
            let step = (len - at).min(at.max(64));
            v.resize(at + step, 0);
            self.take(&mut v[at..], what)?;
        }
        Ok(v)
    }
}

/// Decodes an encoding held in memory (a snapshot file read whole).
pub fn decode_map(data: &[u8]) -> Result<Map, StateMachineError> {
    read_map(&mut &data[..])
}

/// Decodes the encoding read from `input` as it arrives: the map is built
/// entry by entry and the checksum checked at the end.
pub fn read_map(input: &mut dyn Read) -> Result<Map, StateMachineError> {
    let mut entries = Entries::new(input, None)?;
    let mut map = Map::new();
    while let Some((key, value_len)) = entries.next_key()? {
        map.insert(key, Bytes::from(entries.value(value_len)?));
    }
    entries.finish()?;
    Ok(map)
}

/// Where a decoded entry's value lies in the encoding (`locate_entries`).
pub struct Located {
    pub key: Bytes,
    /// Its first byte's offset from the start of the encoding (the magic).
    pub value_at: u64,
    pub value_len: usize,
}

/// Checks the encoding read from `input` (`len` bytes, if known) without
/// keeping the values: each is read into one reused buffer and handed to
/// `each` with its key, and where it lies is returned, for values to be
/// taken from the file that holds the same bytes.
pub fn locate_entries(
    input: &mut dyn Read,
    len: Option<u64>,
    each: &mut dyn FnMut(&[u8], &[u8]),
) -> Result<Vec<Located>, StateMachineError> {
    let mut entries = Entries::new(input, len)?;
    let mut located = Vec::new();
    let mut value = Vec::new();
    while let Some((key, value_len)) = entries.next_key()? {
        let value_at = entries.value_into(value_len, &mut value)?;
        each(&key, &value);
        located.push(Located {
            key,
            value_at,
            value_len,
        });
    }
    entries.finish()?;
    Ok(located)
}

/// The entries of an encoding, read one at a time from `input`: the
/// header checked first, each key checked to ascend, the checksum and the
/// end checked by `finish`. A length field that lies about the bytes
/// behind it costs no more memory than those bytes.
struct Entries<'a> {
    input: Crc<&'a mut dyn Read>,
    /// What the input still holds, if known.
    left: Option<u64>,
    count: u64,
    next: u64,
    /// Bytes read so far, from the magic on.
    at: u64,
    last_key: Option<Bytes>,
}

impl<'a> Entries<'a> {
    fn new(input: &'a mut dyn Read, len: Option<u64>) -> Result<Entries<'a>, StateMachineError> {
        let mut input = Crc {
            inner: input,
            crc: 0,
        };
        let not_ours = || err("snapshot is not a walrep KV snapshot (bad magic or too short)");
        let mut head = [0u8; 12];
        input
            .take(&mut head, "its header")
            .map_err(|_| not_ours())?;
        if &head[..4] != MAGIC {
            return Err(not_ours());
        }
        Ok(Entries {
            input,
            left: len.map(|l| l.saturating_sub(12)),
            count: u64::from_le_bytes(head[4..12].try_into().unwrap()),
            next: 0,
            at: 12,
            last_key: None,
        })
    }

    fn took(&mut self, n: usize) {
        self.at += n as u64;
        if let Some(l) = self.left.as_mut() {
            *l = l.saturating_sub(n as u64);
        }
    }

    fn u32(&mut self) -> Result<u32, StateMachineError> {
        let n = self.input.u32("an entry")?;
        self.took(4);
        Ok(n)
    }

    /// The next entry's key and its value's length, `None` after the
    /// last; its value must be read next (`value` or `value_into`).
    fn next_key(&mut self) -> Result<Option<(Bytes, usize)>, StateMachineError> {
        if self.next == self.count {
            return Ok(None);
        }
        let i = self.next;
        self.next += 1;
        let klen = self.u32()? as usize;
        let key = Bytes::from(self.input.bytes(klen, &mut self.left, "an entry")?);
        self.at += klen as u64;
        // `write_map` writes keys in ascending order; a repeated key would
        // silently drop an entry.
        if self.last_key.as_ref().is_some_and(|last| last >= &key) {
            return Err(err(format!(
                "snapshot entry {i} repeats a key or is out of order (keys must ascend)"
            )));
        }
        self.last_key = Some(key.clone());
        let vlen = self.u32()? as usize;
        Ok(Some((key, vlen)))
    }

    /// The value of `len` bytes, in a buffer of its own.
    fn value(&mut self, len: usize) -> Result<Vec<u8>, StateMachineError> {
        let value = self.input.bytes(len, &mut self.left, "an entry")?;
        self.at += len as u64;
        Ok(value)
    }

    /// The value of `len` bytes, read into `buf` (reused); where it starts.
    fn value_into(&mut self, len: usize, buf: &mut Vec<u8>) -> Result<u64, StateMachineError> {
        let at = self.at;
        match self.left {
            Some(left) if left < len as u64 => return Err(err("snapshot ends inside an entry")),
            Some(_) => {
                buf.clear();
                buf.resize(len, 0);
                self.input.take(buf, "an entry")?;
                self.took(len);
            }
            None => {
                *buf = self.input.bytes(len, &mut None, "an entry")?;
                self.at += len as u64;
            }
        }
        Ok(at)
    }

    /// Checks the checksum and that nothing follows it.
    fn finish(mut self) -> Result<(), StateMachineError> {
        let body_crc = self.input.crc;
        let crc = self.input.u32("its checksum")?;
        if crc != body_crc {
            return Err(err("snapshot checksum mismatch: the snapshot is corrupt"));
        }
        let mut extra = [0u8; 1];
        match self.input.inner.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(err("snapshot has bytes after its last entry")),
            Err(e) => Err(err(format!("reading the snapshot: {e}"))),
        }
    }
}

/// Reads the LSN a snapshot starts with, checked against `lsn`, the one
/// walrep says it covers. `Ok(true)`: `input` continues with the
/// encoding. `Ok(false)`: it held no LSN (a primary that sent none) and
/// `prefix` holds the bytes read, which begin the encoding.
pub fn read_lsn(
    input: &mut dyn Read,
    lsn: Lsn,
    prefix: &mut [u8; 8],
) -> Result<bool, StateMachineError> {
    input
        .read_exact(prefix)
        .map_err(|_| err("snapshot is not a walrep KV snapshot (too short)"))?;
    if *prefix == lsn.0.to_le_bytes() {
        return Ok(true);
    }
    if prefix[..4] == MAGIC[..] {
        return Ok(false);
    }
    Err(err(format!(
        "snapshot is for LSN {}, not the {lsn} it was announced with",
        u64::from_le_bytes(*prefix)
    )))
}

/// Removes the hard links to `FILE` that earlier versions made for
/// transfers and a crash may have left behind.
pub fn remove_sending_links(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(SENDING) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The whole snapshot file at `path`, mapped read-only, as `Bytes` whose
/// slices keep the mapping alive (the values of a map restored from it).
/// Safe because a snapshot file is never changed in place: a newer one
/// replaces it by a rename, and the mapping keeps the old one's bytes. A
/// file truncated by hand while mapped would crash the node (SIGBUS),
/// like any mapped store.
///
/// The file was written past the page cache (a received snapshot goes to
/// disk with direct I/O), so its pages start cold; the kernel is asked to
/// read them ahead now. Otherwise the first applies that overwrite a
/// restored key (each hashes the value it replaces, on the node's thread
/// when the batch is small) and the first reads would each wait for a disk
/// read, stalling the thread that also carries the node's heartbeats.
pub fn map_file(path: &Path) -> Result<Bytes, StateMachineError> {
    let map = std::fs::File::open(path).and_then(|f| {
        // SAFETY: the file is not modified in place while mapped (above).
        unsafe { memmap2::Mmap::map(&f) }
    });
    let map = map.map_err(|e| err(format!("mapping {}: {e}", path.display())))?;
    if let Err(e) = map.advise(memmap2::Advice::WillNeed) {
        tracing::warn!(file = %path.display(), "cannot ask the kernel to read the snapshot ahead ({e}): the first applies over it may wait for the disk");
    }
    Ok(Bytes::from_owner(map))
}

/// Moves a received snapshot file (fsynced by walrep) into place as
/// `dir`'s snapshot file, atomically; `sync_dir` then makes the rename
/// durable.
pub fn install(dir: &Path, received: &Path) -> Result<(), StateMachineError> {
    std::fs::rename(received, dir.join(FILE)).map_err(|e| {
        err(format!(
            "renaming the received snapshot in {}: {e}",
            dir.display()
        ))
    })
}

/// Fsyncs `dir`, so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StateMachineError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(format!("syncing directory {}: {e}", dir.display())))
}

/// The snapshot being written, renamed over `FILE` once whole and synced.
pub(super) fn tmp_path(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("{FILE}.tmp"))
}

/// Writes the snapshot of `lsn` under a temporary name, syncs it and
/// renames it into place. A write that fails (a full disk) removes the
/// temporary file, so no partial snapshot keeps the space it took.
pub fn store(
    dir: &Path,
    lsn: Lsn,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), StateMachineError> {
    let io = |what: &str, e: std::io::Error| err(format!("{what} in {}: {e}", dir.display()));
    let tmp = tmp_path(dir);
    let f = std::fs::File::create(&tmp).map_err(|e| io("creating snapshot", e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, f);
    let written = out
        .write_all(&lsn.0.to_le_bytes())
        .and_then(|_| write(&mut out))
        .and_then(|_| out.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .map_err(|e| io("writing snapshot", e))
        .and_then(|()| {
            std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| io("renaming snapshot", e))
        });
    if let Err(e) = written {
        remove_tmp(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing directory", e))
}

/// Removes a partial snapshot: one a failed write left, or one a crash
/// interrupted (at open).
pub(super) fn remove_tmp(tmp: &Path) {
    match std::fs::remove_file(tmp) {
        Ok(()) => tracing::info!(file = %tmp.display(), "removed a partly written snapshot"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %tmp.display(), "could not remove a partly written snapshot: {e}")
        }
    }
}

pub fn load(dir: &Path) -> Result<Option<(Lsn, Map)>, StateMachineError> {
    let path = dir.join(FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("reading {}: {e}", path.display()))),
    };
    if data.len() < 8 {
        return Err(err(format!("{} is truncated", path.display())));
    }
    let lsn = Lsn(u64::from_le_bytes(data[..8].try_into().unwrap()));
    let map = decode_map(&data[8..]).map_err(|e| {
        err(format!(
            "{}: {e}; move it aside to rebuild from the WAL or the peer",
            path.display()
        ))
    })?;
    Ok(Some((lsn, map)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use walrep::testing::largest_allocation;

    fn seal(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    fn check(data: &[u8]) -> Result<(), TestCaseError> {
        let (result, allocated) = largest_allocation(|| decode_map(data));
        // Entries are copied out of `data` into map nodes of a fixed size
        // (about 1 KiB each in imbl's B+tree); a count or a length field
        // must not add to that.
        prop_assert!(allocated <= data.len() + 4096, "allocated {allocated}");
        match result {
            // What is accepted is exactly what `encode_map` writes, so no
            // entry can hide behind another with the same key.
            Ok(map) => prop_assert_eq!(encode_map(&map), data),
            Err(e) => prop_assert!(!e.message().is_empty()),
        }
        Ok(())
    }

    fn any_map() -> impl Strategy<Value = Map> {
        prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 0..6).prop_map(Bytes::from),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(Bytes::from),
            0..8,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    /// A checksummed snapshot whose fields mostly agree and sometimes lie:
    /// a count, key or value length that does not match, keys repeated or
    /// out of order, bytes missing or left over.
    fn sealed_snapshot() -> impl Strategy<Value = Vec<u8>> {
        let key = prop::collection::vec(0u8..4, 0..3);
        let entry = (
            key,
            prop::collection::vec(any::<u8>(), 0..8),
            prop::option::weighted(0.05, any::<u32>()),
            prop::option::weighted(0.05, any::<u32>()),
        );
        (
            prop::collection::vec(entry, 0..6),
            prop::option::weighted(0.1, prop_oneof![0u64..8, Just(u64::MAX)]),
            any::<bool>(),
            prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 1..4)),
        )
            .prop_map(|(mut entries, count, sorted, extra)| {
                if sorted {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                    entries.dedup_by(|a, b| a.0 == b.0);
                }
                let mut b = MAGIC.to_vec();
                let count = count.unwrap_or(entries.len() as u64);
                b.extend_from_slice(&count.to_le_bytes());
                for (k, v, klen, vlen) in entries {
                    b.extend_from_slice(&klen.unwrap_or(k.len() as u32).to_le_bytes());
                    b.extend_from_slice(&k);
                    b.extend_from_slice(&vlen.unwrap_or(v.len() as u32).to_le_bytes());
                    b.extend_from_slice(&v);
                }
                b.extend(extra.unwrap_or_default());
                seal(b)
            })
    }

    fn entries(keys: &[&[u8]]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&(keys.len() as u64).to_le_bytes());
        for (i, k) in keys.iter().enumerate() {
            b.extend_from_slice(&(k.len() as u32).to_le_bytes());
            b.extend_from_slice(k);
            b.extend_from_slice(&1u32.to_le_bytes());
            b.push(i as u8);
        }
        seal(b)
    }

    #[test]
    fn a_snapshot_repeating_a_key_is_refused_instead_of_dropping_an_entry() {
        let e = decode_map(&entries(&[b"a", b"b", b"b"])).unwrap_err();
        assert!(e.message().contains("entry 2 repeats a key"), "{e}");
        assert!(decode_map(&entries(&[b"a", b"b", b"c"])).is_ok());
    }

    #[test]
    fn a_snapshot_with_keys_out_of_order_is_refused() {
        let e = decode_map(&entries(&[b"b", b"a"])).unwrap_err();
        assert!(e.message().contains("out of order"), "{e}");
    }

    proptest! {
        #[test]
        fn any_map_round_trips(map in any_map()) {
            prop_assert_eq!(decode_map(&encode_map(&map)).unwrap(), map);
        }

        /// The source's bytes, read whole from any offset in pieces of
        /// any size, are the snapshot file's bytes from that offset: LSN,
        /// encoding and CRC included.
        #[test]
        fn a_map_source_reads_as_the_snapshot_file_from_any_offset(
            map in any_map(),
            lsn in any::<u64>(),
            cut in any::<prop::sample::Index>(),
            piece in 1usize..40,
        ) {
            use walrep::SnapshotSource;
            let mut file = lsn.to_le_bytes().to_vec();
            file.extend(encode_map(&map));
            let source = MapSource::new(Lsn(lsn), map);
            prop_assert_eq!(source.total_bytes(), file.len() as u64);
            let offset = cut.index(file.len() + 1);
            let mut reader = source.read_from(offset as u64).unwrap();
            let mut read = Vec::new();
            let mut buf = vec![0u8; piece];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buf[..n]);
            }
            prop_assert_eq!(&read[..], &file[offset..]);
        }

        #[test]
        fn arbitrary_bytes_give_a_map_or_an_error(
            data in prop::collection::vec(any::<u8>(), 0..100),
        ) {
            check(&data)?;
        }

        #[test]
        fn checksummed_snapshots_give_their_map_or_an_error(data in sealed_snapshot()) {
            check(&data)?;
        }

        /// A count of entries far beyond what the bytes can hold, or a key
        /// or value length beyond them, is refused without allocating.
        #[test]
        fn huge_counts_and_lengths_are_refused_without_allocating(
            count in (1u64 << 20)..,
            len in (1u32 << 20)..,
            len_is_value in any::<bool>(),
        ) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&count.to_le_bytes());
            if len_is_value {
                b.extend_from_slice(&1u32.to_le_bytes());
                b.push(b'k');
            }
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(b"short");
            let data = seal(b);
            let (result, allocated) = largest_allocation(|| decode_map(&data));
            prop_assert!(result.is_err());
            prop_assert!(allocated <= 256, "allocated {allocated}");
        }
    }
}
