//! Rebuilding the log's state from the segment files at open, and telling a
//! torn tail (cut away) from a damaged record (refused).
//!
//! # Torn tail or corrupt middle?
//!
//! A crash while appending leaves at most the last few frames of the last
//! segment incomplete or with a bad CRC (a segment is fsynced before the
//! next one is started, so no other can hold unsynced bytes); such records
//! were never synced, so cutting them loses nothing promised. A bad frame anywhere else is damage
//! to records that may have been acknowledged, and must stop the node.
//!
//! Heuristic: a bad frame at offset X is a torn tail only if it lies in the
//! last segment and no valid frame starts anywhere after X. "Valid" means
//! the frame decodes with a good CRC and carries an LSN that could follow in
//! this log: at least the LSN expected at X and at most that plus the number
//! of frame headers that fit in the rest of the file. Checking the LSN field
//! before the CRC keeps the byte-by-byte scan cheap, and bounding it makes a
//! random match in garbage unlikely (it must also pass a CRC32C).
//!
//! What it gets wrong, knowingly: a crash that persisted a later page of an
//! unsynced write but not an earlier one looks like a damaged middle record
//! and stops the node instead of silently cutting records; and a bit flip in
//! the very last record of the log looks like a torn write and is cut with a
//! warning. Both err towards never silently dropping a record that a later
//! valid record proves was written.

use super::super::WalError;
use super::super::record::{self, FrameFormat, HEADER_LEN as FRAME_HEADER_LEN};
use super::segment::{self, HEADER_LEN, PENDING_NAME, Segment, SegmentHeader};
use super::{TailCache, corrupt, io_err};
use crate::types::{Epoch, EpochHistory, Lsn};
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

/// Frames are decoded with the largest length a frame can announce, not
/// the configured record limit: lowering that option must not make an
/// existing log unreadable. Allocation stays bounded because decoding only
/// ever sees bytes already in memory.
pub(super) const MAX_PAYLOAD: usize = u32::MAX as usize;

pub(super) struct Recovered {
    /// Empty only for a fresh directory.
    pub segments: Vec<Segment>,
    pub history: EpochHistory,
    pub last: Lsn,
    /// `new-segment.tmp` of a `reset` that a crash interrupted before its
    /// rename; removed once recovery succeeds, since the old log stands.
    pub stale_pending: Option<PathBuf>,
}

/// Reads every segment in `wal_dir`, verifying each frame. Returns
/// `Corrupt` (having modified nothing) for damage, and cuts a torn tail.
///
/// Bytes past the last record that read as zeros are space a segment
/// reserved and never used (`segment::preallocate`), not damage. A torn
/// tail is cut and the segment's reserve (`reserve` bytes) restored.
pub(super) fn recover(
    wal_dir: &Path,
    persisted: &EpochHistory,
    cache: &mut TailCache,
    reserve: u64,
) -> Result<Recovered, WalError> {
    let (mut files, pending) = list(wal_dir)?;
    let mut stale_pending = None;
    if let Some(pending) = pending {
        if files.is_empty() {
            if let Some(path) = finish_reset(wal_dir, &pending)? {
                files.push(path);
            }
        } else {
            stale_pending = Some(pending);
        }
    }

    let mut segments: Vec<Segment> = Vec::new();
    let mut history = EpochHistory::default();
    let mut last = Lsn::ZERO;
    let mut last_epoch = Epoch::ZERO;
    let count = files.len();
    for (i, (name_lsn, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == count;
        let data = fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        let header = match SegmentHeader::decode(&data) {
            Ok(h) if h.first_lsn == Lsn::ZERO => {
                return Err(corrupt(
                    &path,
                    0,
                    "a segment cannot start at record 0".into(),
                ));
            }
            Ok(h) if h.first_lsn > Lsn::MAX => {
                let detail = format!(
                    "a segment cannot start at record {}, beyond the largest LSN {}",
                    h.first_lsn,
                    Lsn::MAX
                );
                return Err(corrupt(&path, 0, detail));
            }
            Ok(h) if h.first_lsn == name_lsn => h,
            Ok(h) => {
                let detail = format!(
                    "header says the first record is {} but the file is named for {name_lsn}",
                    h.first_lsn
                );
                return Err(corrupt(&path, 0, detail));
            }
            Err(detail) => {
                // A crash right after creating a rolled segment. Only when
                // it continues what precedes it (or starts the log) do we
                // know what the log's end is without it.
                let rolled = match segments.is_empty() {
                    true => name_lsn == Lsn(1),
                    false => name_lsn == last.next(),
                };
                if is_last && rolled && find_frame(&data, 0, name_lsn, FrameFormat::V2).is_none() {
                    tracing::warn!(
                        segment = %path.display(),
                        bytes = data.len(),
                        "removing a WAL segment whose header was torn by a crash: {detail}"
                    );
                    fs::remove_file(&path)
                        .and_then(|()| segment::sync_dir(wal_dir))
                        .map_err(io_err(format!("removing {}", path.display())))?;
                    break;
                }
                return Err(corrupt(&path, 0, detail));
            }
        };
        if segments.is_empty() {
            last = header.first_lsn.prev();
            // An Lsn 0 base is "before the log", whose epoch is zero
            // whatever the header says (`reset(0, e)` leaves no history).
            last_epoch = if last == Lsn::ZERO {
                Epoch::ZERO
            } else {
                header.base_epoch
            };
            history = merge_history(persisted, last, header.base_epoch);
        } else if header.first_lsn != last.next() || header.base_epoch != last_epoch {
            let detail = format!(
                "segment continues from record {} of epoch {} but the previous segment ends at record {last} of epoch {last_epoch}",
                header.first_lsn.prev(),
                header.base_epoch
            );
            return Err(corrupt(&path, 0, detail));
        }

        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        let mut seg = Segment::new(path, file, header);
        let mut pos = HEADER_LEN as usize;
        while pos < data.len() {
            let expected = last.next();
            let problem = match record::decode(&data[pos..], MAX_PAYLOAD, header.format) {
                Ok((r, _)) if r.lsn != expected => {
                    format!("found record {} where record {expected} belongs", r.lsn)
                }
                Ok((r, _)) if r.epoch < last_epoch => format!(
                    "record {expected} has epoch {}, below the previous epoch {last_epoch}",
                    r.epoch
                ),
                Ok((r, used)) => {
                    seg.offsets.push(pos as u64);
                    history.note(r.lsn, r.epoch);
                    last = r.lsn;
                    last_epoch = r.epoch;
                    cache.push(r);
                    pos += used;
                    continue;
                }
                Err(e) => e.to_string(),
            };
            if segment::is_unwritten(&data[pos..]) {
                // Reserved, never written: the end of this segment's
                // records. For an older segment, the next one's header
                // must still continue exactly here (checked above).
                break;
            }
            if !is_last || find_frame(&data, pos + 1, expected, header.format).is_some() {
                return Err(corrupt(&seg.path, pos as u64, problem));
            }
            seg.file
                .set_len(pos as u64)
                .and_then(|()| segment::preallocate(&seg.file, reserve))
                .and_then(|()| seg.file.sync_all())
                .map_err(io_err(format!(
                    "cutting the torn tail of {}",
                    seg.path.display()
                )))?;
            // Not counting the reserve after the torn bytes, which stays.
            let torn = data
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |i| i + 1 - pos);
            tracing::warn!(
                segment = %seg.path.display(),
                offset = pos,
                bytes_cut = torn,
                "cut {torn} bytes of torn WAL tail after record {last}: {problem}"
            );
            break;
        }
        seg.len = pos as u64;
        segments.push(seg);
    }
    Ok(Recovered {
        segments,
        history,
        last,
        stale_pending,
    })
}

/// The segment files in LSN order, and `new-segment.tmp` if present.
type Listing = (Vec<(Lsn, PathBuf)>, Option<PathBuf>);

fn list(wal_dir: &Path) -> Result<Listing, WalError> {
    let what = || format!("listing {}", wal_dir.display());
    let mut files = Vec::new();
    let mut pending = None;
    for entry in fs::read_dir(wal_dir).map_err(io_err(what()))? {
        let entry = entry.map_err(io_err(what()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(lsn) = segment::parse_file_name(&name) {
            files.push((lsn, entry.path()));
        } else if name == PENDING_NAME {
            pending = Some(entry.path());
        } else {
            tracing::warn!(file = %entry.path().display(), "ignoring a stray file in the WAL directory");
        }
    }
    files.sort();
    Ok((files, pending))
}

/// A `reset` had removed every old segment but not yet renamed its new one
/// into place: finish it. The pending file was fsynced before any removal,
/// so a bad one means the crash came before the removals, i.e. a fresh log.
fn finish_reset(wal_dir: &Path, pending: &Path) -> Result<Option<(Lsn, PathBuf)>, WalError> {
    let data = fs::read(pending).map_err(io_err(format!("reading {}", pending.display())))?;
    match SegmentHeader::decode(&data) {
        Ok(h) => {
            let seg = segment::commit_pending(wal_dir, h).map_err(io_err(format!(
                "completing an interrupted reset in {}",
                wal_dir.display()
            )))?;
            tracing::warn!(segment = %seg.path.display(), "completed a WAL reset interrupted by a crash");
            Ok(Some((h.first_lsn, seg.path)))
        }
        Err(_) => {
            fs::remove_file(pending).map_err(io_err(format!("removing {}", pending.display())))?;
            Ok(None)
        }
    }
}

/// The persisted history is trusted for records up to the first segment's
/// base record only, and only if it agrees with that segment on the base's
/// epoch: two logs that agree on `(lsn, epoch)` agree on everything before,
/// so a copy written before a later truncation or reset is still right for
/// the part it keeps, and one that disagrees belongs to a replaced log.
fn merge_history(persisted: &EpochHistory, base: Lsn, base_epoch: Epoch) -> EpochHistory {
    if base == Lsn::ZERO {
        return EpochHistory::default();
    }
    let mut history = persisted.clone();
    history.truncate_after(base);
    if history.epoch_at(base) != Some(base_epoch) {
        history = EpochHistory::default();
        history.note(base, base_epoch);
    }
    history
}

/// The offset of the first valid frame at or after `from` that could be
/// record `expected` or a later one (see the module comment).
fn find_frame(data: &[u8], from: usize, expected: Lsn, format: FrameFormat) -> Option<usize> {
    // Saturating: `expected` may come from a file name, which can say anything.
    let highest = expected
        .0
        .saturating_add((data.len().saturating_sub(from) / FRAME_HEADER_LEN) as u64);
    // A frame's LSN is never zero, so none starts past the last non-zero
    // byte: the scan skips a segment's unwritten reserve.
    let last_written = data.iter().rposition(|&b| b != 0)?;
    let end = data
        .len()
        .saturating_sub(FRAME_HEADER_LEN - 1)
        .min(last_written + 1);
    (from..end).find(|&off| {
        let lsn = u64::from_le_bytes(data[off + 4..off + 12].try_into().unwrap());
        (expected.0..=highest).contains(&lsn)
            && record::decode(&data[off..], MAX_PAYLOAD, format).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EpochStart, Record};
    use bytes::Bytes;

    fn frames(lsns: std::ops::RangeInclusive<u64>) -> Vec<u8> {
        let mut buf = Vec::new();
        for lsn in lsns {
            let r = Record {
                lsn: Lsn(lsn),
                epoch: Epoch(1),
                request_id: None,
                payload: Bytes::from(vec![lsn as u8; 10]),
            };
            record::encode(&r, &mut buf);
        }
        buf
    }

    #[test]
    fn a_later_frame_is_found_only_with_a_plausible_lsn() {
        let buf = frames(1..=3);
        let second = FRAME_HEADER_LEN + 10;
        assert_eq!(find_frame(&buf, 1, Lsn(1), FrameFormat::V2), Some(second));
        assert_eq!(
            find_frame(&buf, 1, Lsn(3), FrameFormat::V2),
            Some(2 * second)
        );
        // Records older than the one expected are stale, not a continuation.
        assert_eq!(find_frame(&buf, 1, Lsn(4), FrameFormat::V2), None);
        assert_eq!(
            find_frame(
                &buf[..buf.len() - 1],
                2 * second - 1,
                Lsn(3),
                FrameFormat::V2
            ),
            None
        );
    }

    #[test]
    fn persisted_history_is_kept_only_where_it_agrees_with_the_base() {
        let persisted = EpochHistory(vec![
            EpochStart {
                epoch: Epoch(1),
                first_lsn: Lsn(1),
            },
            EpochStart {
                epoch: Epoch(2),
                first_lsn: Lsn(10),
            },
            EpochStart {
                epoch: Epoch(3),
                first_lsn: Lsn(50),
            },
        ]);
        let kept = merge_history(&persisted, Lsn(20), Epoch(2));
        assert_eq!(kept.0, persisted.0[..2]);
        let replaced = merge_history(&persisted, Lsn(20), Epoch(5));
        assert_eq!(
            replaced.0,
            vec![EpochStart {
                epoch: Epoch(5),
                first_lsn: Lsn(20)
            }]
        );
        assert_eq!(
            merge_history(&persisted, Lsn::ZERO, Epoch(5)),
            EpochHistory::default()
        );
    }
}
