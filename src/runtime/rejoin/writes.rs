//! The standby's writes of a snapshot's chunks as they arrive: each on a
//! blocking thread while the next ones are received, a few in flight.
//!
//! Where the file system allows it, the bytes go to disk with direct I/O
//! (`O_DIRECT`), gathered into aligned buffers of `STAGE` bytes: a
//! store-sized transfer then neither copies every byte into the page
//! cache (on a VM, first touches of page-cache memory cost more than the
//! write) nor leaves gigabytes of dirty pages for writeback to throttle.
//! The few bytes that do not fill a block (before the first aligned
//! offset of a resumed transfer, after the last whole block) go through
//! the page cache. Each direct write is read back from the device (into
//! the same buffer) as soon as it is done, so the CRC32C of what the file
//! really holds is known when the last byte is, and the caller compares it
//! with the CRC of what arrived; reading back through the page cache would
//! check nothing. The caller fsyncs the file at the end as before, which
//! also makes the direct writes' metadata durable.

use super::super::incoming::Incoming;
use std::collections::VecDeque;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// Writes in flight: bounds the memory a transfer holds to this many
/// chunks (or stages) beyond what gRPC buffers.
const WRITE_WINDOW: usize = 4;
/// Alignment of direct I/O: offsets, lengths and buffer addresses.
const BLOCK: usize = 4096;
/// Bytes gathered for one direct write.
const STAGE: usize = 4 << 20;

/// An aligned buffer for direct writes (safe code: an aligned window into
/// a slightly larger vector).
struct Stage {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Stage {
    fn new() -> Stage {
        let buf = vec![0u8; STAGE + BLOCK];
        let start = buf.as_ptr().align_offset(BLOCK);
        Stage { buf, start, len: 0 }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    /// Copies as much of `data` as fits; how much.
    fn put(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(STAGE - self.len);
        let at = self.start + self.len;
        self.buf[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }
}

/// A write on a blocking thread: the buffer to reuse, if any, and the
/// CRC32C of the bytes its range holds afterwards (read back from the
/// device for a direct write) with the range's length.
type Job = JoinHandle<std::io::Result<(Option<Stage>, u32, usize)>>;

/// The received chunks being written, oldest first, each with the offset
/// its write reaches. With a WAL that may not block (the simulation) each
/// chunk is written at once, inline, through the page cache.
pub(super) struct Writes {
    may_block: bool,
    file: Arc<std::fs::File>,
    /// The same file opened for direct I/O, if the file system allows it.
    direct: Option<Arc<std::fs::File>>,
    inflight: VecDeque<(u64, Job)>,
    /// Bytes gathered for the next direct write, and where they go.
    stage: Stage,
    stage_at: u64,
    /// Buffers of finished direct writes, for the next ones.
    spare: Vec<Stage>,
    /// Where the writes finished so far reach (all before it are written).
    pub done: u64,
    /// The CRC32C of what the file holds before `done`, as read back after
    /// each direct write; `None` when the writes did not start at the
    /// file's first byte (a resume: `crc_on_disk` reads it all instead).
    on_disk: Option<u32>,
}

impl Writes {
    pub(super) fn new(may_block: bool, inc: &Incoming) -> Writes {
        let direct = may_block
            .then(|| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&inc.path)
            })
            .and_then(|opened| match opened {
                Ok(f) => Some(Arc::new(f)),
                Err(e) => {
                    tracing::debug!(error = %e, "no direct I/O for the received snapshot; writing through the page cache");
                    None
                }
            });
        Writes {
            may_block,
            file: inc.file.clone(),
            stage: if direct.is_some() {
                Stage::new()
            } else {
                Stage {
                    buf: Vec::new(),
                    start: 0,
                    len: 0,
                }
            },
            direct,
            inflight: Default::default(),
            stage_at: inc.received,
            spare: Vec::new(),
            done: inc.received,
            on_disk: (inc.received == 0).then_some(0),
        }
    }

    /// The CRC32C of everything written, as the device holds it, when it
    /// is known: direct writes read back as they went, from the first
    /// byte.
    pub(super) fn crc_on_disk(&self) -> Option<u32> {
        self.on_disk.filter(|_| self.direct.is_some())
    }

    /// Writes `data` at `offset`, the end of what was pushed before:
    /// starts its write (or gathers it for a direct one) once fewer than
    /// `WRITE_WINDOW` writes are in flight.
    pub(super) async fn push(&mut self, offset: u64, data: bytes::Bytes) -> Result<(), String> {
        let end = offset + data.len() as u64;
        if !self.may_block {
            self.file
                .write_all_at(&data, offset)
                .map_err(|e| e.to_string())?;
            self.done = end;
            return Ok(());
        }
        let Some(direct) = self.direct.clone() else {
            let file = self.file.clone();
            return self
                .start(end, move || {
                    file.write_all_at(&data, offset)?;
                    Ok((None, crc32c::crc32c(&data), data.len()))
                })
                .await;
        };
        let expected = self.stage_at + self.stage.len as u64;
        if offset != expected {
            return Err(format!(
                "a chunk at {offset} does not continue the file at {expected}"
            ));
        }
        let mut rest = &data[..];
        // A transfer resumed at an unaligned offset: up to the next block
        // through the page cache.
        let misaligned = (self.stage_at % BLOCK as u64) as usize;
        if self.stage.len == 0 && misaligned != 0 {
            let head = rest.len().min(BLOCK - misaligned);
            let (file, at) = (self.file.clone(), self.stage_at);
            let bytes = data.slice(..head);
            self.stage_at += head as u64;
            rest = &rest[head..];
            self.start(at + head as u64, move || {
                file.write_all_at(&bytes, at)?;
                Ok((None, crc32c::crc32c(&bytes), bytes.len()))
            })
            .await?;
        }
        while !rest.is_empty() {
            let n = self.stage.put(rest);
            rest = &rest[n..];
            if self.stage.len == STAGE {
                let next = self.spare.pop().unwrap_or_else(Stage::new);
                let full = std::mem::replace(&mut self.stage, next);
                let at = self.stage_at;
                self.stage_at += STAGE as u64;
                let (direct, file) = (direct.clone(), self.file.clone());
                self.start(self.stage_at, move || {
                    let mut full = full;
                    let crc = write_and_read_back(&direct, &file, &mut full, at)?;
                    Ok((Some(full), crc, STAGE))
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Starts `write` on a blocking thread once fewer than `WRITE_WINDOW`
    /// writes are in flight; `end` is the offset it reaches.
    async fn start(
        &mut self,
        end: u64,
        write: impl FnOnce() -> std::io::Result<(Option<Stage>, u32, usize)> + Send + 'static,
    ) -> Result<(), String> {
        while self.inflight.len() >= WRITE_WINDOW {
            self.finish_oldest().await?;
        }
        self.inflight
            .push_back((end, tokio::task::spawn_blocking(write)));
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<(), String> {
        let Some((end, write)) = self.inflight.pop_front() else {
            return Ok(());
        };
        let (stage, crc, len) = write
            .await
            .map_err(|e| format!("blocking task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        if let Some(mut stage) = stage {
            stage.len = 0;
            self.spare.push(stage);
        }
        self.on_disk = self
            .on_disk
            .map(|before| crc32c::crc32c_combine(before, crc, len));
        self.done = end;
        Ok(())
    }

    /// Whether the chunks go to disk with direct I/O.
    pub(super) fn direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Writes what is gathered (its whole blocks directly, the rest
    /// through the page cache) and waits for every write in flight:
    /// `done` then covers every chunk pushed.
    pub(super) async fn drain(&mut self) -> Result<(), String> {
        if let Some(direct) = self.direct.clone().filter(|_| self.stage.len > 0) {
            let next = self.spare.pop().unwrap_or_else(Stage::new);
            let last = std::mem::replace(&mut self.stage, next);
            let (file, at) = (self.file.clone(), self.stage_at);
            self.stage_at += last.len as u64;
            self.start(self.stage_at, move || {
                let mut last = last;
                let len = last.len;
                let whole = len / BLOCK * BLOCK;
                let tail = last.bytes()[whole..].to_vec();
                file.write_all_at(&tail, at + whole as u64)?;
                last.len = whole;
                let crc = write_and_read_back(&direct, &file, &mut last, at)?;
                Ok((Some(last), crc32c::crc32c_append(crc, &tail), len))
            })
            .await?;
        }
        while !self.inflight.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }
}

/// Writes the stage's bytes (whole blocks) at `at` with direct I/O, then
/// reads them back from the device into the same buffer: the CRC32C of
/// what the file holds there. Where direct I/O is refused after all, both
/// go through the page cache.
fn write_and_read_back(
    direct: &std::fs::File,
    file: &std::fs::File,
    stage: &mut Stage,
    at: u64,
) -> std::io::Result<u32> {
    write_direct(direct, file, stage.bytes(), at)?;
    let (start, len) = (stage.start, stage.len);
    let buf = &mut stage.buf[start..start + len];
    match direct.read_exact_at(buf, at) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => file.read_exact_at(buf, at)?,
        other => other?,
    }
    Ok(crc32c::crc32c(buf))
}

/// Writes `bytes` (whole blocks, from an aligned buffer) at `at` with
/// direct I/O, or through the page cache if the file system refuses this
/// direct write after all (it accepted direct I/O at open but wants
/// another alignment).
fn write_direct(
    direct: &std::fs::File,
    file: &std::fs::File,
    bytes: &[u8],
    at: u64,
) -> std::io::Result<()> {
    match direct.write_at(bytes, at) {
        Ok(n) if n == bytes.len() => Ok(()),
        // A short direct write: the rest, unaligned now, the other way.
        Ok(n) => file.write_all_at(&bytes[n..], at + n as u64),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => file.write_all_at(bytes, at),
        Err(e) => Err(e),
    }
}

/// The CRC32C of the first `len` bytes of the file at `path`, read back
/// from the device with direct I/O (not from the page cache, which direct
/// writes bypassed): what the file really holds. `None` if the file system
/// refuses direct reads, at open or at a read.
pub(super) fn crc_on_disk(path: &std::path::Path, len: u64) -> std::io::Result<Option<u32>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(e),
    };
    crc_of_direct_reads(len, |buf, at| file.read_at(buf, at))
}

/// `crc_on_disk` over `read` (a direct read of whole blocks into an
/// aligned buffer at an offset). A file system may accept `O_DIRECT` at
/// open and still refuse a read's alignment (`EINVAL`): the check is then
/// left to the bytes as they arrived (`None`), and the transfer goes on.
fn crc_of_direct_reads(
    len: u64,
    mut read: impl FnMut(&mut [u8], u64) -> std::io::Result<usize>,
) -> std::io::Result<Option<u32>> {
    let mut stage = Stage::new();
    let (mut crc, mut at) = (0u32, 0u64);
    while at < len {
        // Whole blocks, also for the last piece: a direct read past the
        // end returns what there is.
        stage.len = STAGE;
        let start = stage.start;
        let got = match read(&mut stage.buf[start..start + STAGE], at) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(
                    at,
                    "direct reads refused; checking the snapshot as it arrived"
                );
                return Ok(None);
            }
            other => other?,
        };
        if got == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the received snapshot holds {at} bytes, not {len}"),
            ));
        }
        let take = (got as u64).min(len - at) as usize;
        crc = crc32c::crc32c_append(crc, &stage.buf[start..start + take]);
        at += take as u64;
    }
    Ok(Some(crc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::SnapshotInfo;
    use crate::types::{Epoch, Lsn};

    fn info(total: u64) -> SnapshotInfo {
        SnapshotInfo {
            id: 1,
            lsn: Lsn(1),
            epoch: Epoch(1),
            total_bytes: total,
            crc: None,
            offset: 0,
        }
    }

    /// Chunks of odd sizes, a cut after an unaligned number of bytes and
    /// a resume from there: the file holds every byte once, in place,
    /// whichever way (direct or through the page cache) each went.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_of_any_size_land_in_place_across_a_resume_at_an_unaligned_offset() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..(STAGE * 2 + 12_345))
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        let cut = STAGE + 5_001;
        let mut inc = Incoming::create(dir.path(), info(data.len() as u64)).unwrap();
        let mut w = Writes::new(true, &inc);
        if w.direct.is_none() {
            eprintln!("direct I/O is not available here: only the page-cache path was tested");
        }
        let mut at = 0;
        for size in [1usize, 4095, 3, 70_000, 1 << 20].iter().cycle() {
            if at == cut {
                break;
            }
            let end = (at + size).min(cut);
            w.push(at as u64, bytes::Bytes::copy_from_slice(&data[at..end]))
                .await
                .unwrap();
            at = end;
        }
        w.drain().await.unwrap();
        assert_eq!(w.done, cut as u64);
        if w.direct() {
            assert_eq!(
                w.crc_on_disk(),
                Some(crc32c::crc32c(&data[..cut])),
                "read back as written"
            );
        }
        inc.received = w.done;
        let mut w = Writes::new(true, &inc);
        for chunk in data[cut..].chunks(999_999) {
            w.push(at as u64, bytes::Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
            at += chunk.len();
        }
        w.drain().await.unwrap();
        assert_eq!(w.done, data.len() as u64);
        assert_eq!(
            w.crc_on_disk(),
            None,
            "a resume reads the file back at the end"
        );
        assert_eq!(std::fs::read(&inc.path).unwrap(), data);
        // Read back from the device, the file's CRC is the data's; a byte
        // changed on disk changes it.
        let len = data.len() as u64;
        if let Some(crc) = crc_on_disk(&inc.path, len).unwrap() {
            assert_eq!(crc, crc32c::crc32c(&data));
            inc.file
                .write_all_at(&[data[STAGE + 7] ^ 1], (STAGE + 7) as u64)
                .unwrap();
            inc.file.sync_all().unwrap();
            assert_ne!(crc_on_disk(&inc.path, len).unwrap(), Some(crc));
        }
    }

    /// A file system that accepted `O_DIRECT` at open but refuses a read's
    /// alignment leaves the check to the bytes as they arrived, rather
    /// than failing the resumed transfer; other read errors still fail it.
    #[test]
    fn a_refused_direct_read_falls_back_to_the_arrived_bytes() {
        let einval = || std::io::Error::from_raw_os_error(libc::EINVAL);
        let mut reads = 0;
        let refused_later = crc_of_direct_reads(3 * STAGE as u64, |buf, _| {
            reads += 1;
            if reads == 1 {
                Ok(buf.len())
            } else {
                Err(einval())
            }
        });
        assert_eq!(refused_later.unwrap(), None);
        assert_eq!(crc_of_direct_reads(10, |_, _| Err(einval())).unwrap(), None);
        let eio = crc_of_direct_reads(10, |_, _| Err(std::io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(eio.unwrap_err().raw_os_error(), Some(libc::EIO));
        let whole = crc_of_direct_reads(5, |buf, _| {
            buf[..5].copy_from_slice(b"hello");
            Ok(5)
        });
        assert_eq!(whole.unwrap(), Some(crc32c::crc32c(b"hello")));
    }

    /// A chunk that does not continue the file is refused, not written
    /// elsewhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_chunk_that_does_not_continue_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inc = Incoming::create(dir.path(), info(100)).unwrap();
        let mut w = Writes::new(true, &inc);
        w.push(0, bytes::Bytes::from_static(b"abc")).await.unwrap();
        if w.direct() {
            let e = w
                .push(10, bytes::Bytes::from_static(b"x"))
                .await
                .unwrap_err();
            assert!(e.contains("does not continue"), "{e}");
        }
    }
}
