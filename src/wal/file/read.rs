//! Reading old records back from the segment files: a plan made under the
//! log's lock from the in-memory index, then positioned reads without it.

use super::super::WalError;
use super::super::record::{self, FrameFormat, HEADER_LEN as FRAME_HEADER_LEN};
use super::{State, corrupt, io_err, recovery};
use crate::types::{Lsn, Record};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// A run of consecutive frames in one segment, read with one `read_at`.
pub(super) struct Chunk {
    path: PathBuf,
    file: Arc<File>,
    start: u64,
    end: u64,
    first: Lsn,
    count: usize,
    format: FrameFormat,
}

/// Which frames a read of `from..` covers, within the limits, for a `from`
/// the log retains.
pub(super) fn plan_read(st: &State, from: Lsn, max_records: usize, max_bytes: usize) -> Vec<Chunk> {
    let mut chunks: Vec<Chunk> = Vec::new();
    let (mut lsn, mut taken, mut bytes) = (from, 0usize, 0usize);
    let start = st.segments.partition_point(|s| s.first_lsn() <= from) - 1;
    for seg in &st.segments[start..] {
        while lsn <= seg.last_lsn() {
            let (begin, end) = seg.frame(lsn);
            // Counting a request id as payload: a bound on bytes read.
            let payload = (end - begin) as usize - FRAME_HEADER_LEN;
            if taken >= max_records || (taken > 0 && bytes + payload > max_bytes) {
                return chunks;
            }
            match chunks.last_mut() {
                Some(c) if Arc::ptr_eq(&c.file, &seg.file) => {
                    c.end = end;
                    c.count += 1;
                }
                _ => chunks.push(Chunk {
                    path: seg.path.clone(),
                    file: seg.file.clone(),
                    start: begin,
                    end,
                    first: lsn,
                    count: 1,
                    format: seg.header.format,
                }),
            }
            taken += 1;
            bytes += payload;
            lsn = lsn.next();
        }
    }
    chunks
}

/// Lets go of a plan's files once it was read. A segment that a trim
/// removed meanwhile is closed by its last holder, which may be this read,
/// and that close frees the file's blocks (tens to hundreds of ms for a
/// 64 MiB segment on a disk mounted with `discard`): it goes to a blocking
/// thread, since the stream to a standby reads on the node's runtime.
pub(super) fn let_go(plan: Vec<Chunk>) {
    for chunk in plan {
        if let Some(file) = Arc::into_inner(chunk.file) {
            crate::unlinked::close_off_thread(file, &chunk.path, true);
        }
    }
}

/// Reads the records of a plan made under the lock, checking each.
pub(super) fn read_chunks(plan: &[Chunk]) -> Result<Vec<Record>, WalError> {
    let mut out = Vec::new();
    for chunk in plan {
        let mut buf = vec![0u8; (chunk.end - chunk.start) as usize];
        chunk
            .file
            .read_exact_at(&mut buf, chunk.start)
            .map_err(io_err(format!("reading {}", chunk.path.display())))?;
        let mut pos = 0;
        for i in 0..chunk.count {
            let expected = Lsn(chunk.first.0 + i as u64);
            let offset = chunk.start + pos as u64;
            let record = match record::decode(&buf[pos..], recovery::MAX_PAYLOAD, chunk.format) {
                Ok((r, used)) if r.lsn == expected => {
                    pos += used;
                    r
                }
                Ok((r, _)) => {
                    let detail = format!("found record {} where record {expected} belongs", r.lsn);
                    return Err(corrupt(&chunk.path, offset, detail));
                }
                Err(e) => return Err(corrupt(&chunk.path, offset, e.to_string())),
            };
            out.push(record);
        }
    }
    Ok(out)
}
