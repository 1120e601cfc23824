//! `dir/meta`: the `WalMeta` plus the epoch history, all little-endian:
//!
//! ```text
//! | magic "WALRMETA" | version: u32 | epoch: u64 | has_leader: u8 | leader_len: u32 | leader: UTF-8 |
//! | confirmed: u8 (version 2 on) |
//! | points: u32 | points × (name_len: u32, name: UTF-8, lsn: u64) (version 3) |
//! | entries: u32 | entries × (epoch: u64, first_lsn: u64) | crc32c of everything before: u32 |
//! ```
//!
//! Version 2 added `confirmed` (`WalMeta::confirmed`, 0 or 1). A version 1
//! file, written before walrep asked a fresh primary to be confirmed by its
//! peer, reads as confirmed: its primary was already taking writes.
//! Version 3 added the restart points (`WalMeta::restart_points`, one per
//! standby, in name order); older files read as having none, as the
//! builds that wrote them kept them in memory only. Only version 3 is
//! written, so an older walrep refuses to open the directory instead of
//! forgetting what it says.
//!
//! The history is here because segments forget it: once old segments are
//! removed, nothing else says where the epochs before the first retained
//! record began. Recovery trusts it only up to the first segment's base
//! record (see `recovery::merge_history`), so a copy that lags the log is
//! harmless. Binary, because a leader name may hold any character.

use super::super::{WalError, WalMeta};
use super::{io_err, sealed};
use crate::types::{Epoch, EpochHistory, EpochStart, Lsn, NodeId};
use crate::wal::tmpfile;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"WALRMETA";
const VERSION: u32 = 3;
/// The format before `confirmed`; still read.
const VERSION_1: u32 = 1;
/// The format before the restart points; still read.
const VERSION_2: u32 = 2;
const FILE: &str = "meta";
const TMP: &str = "meta.tmp";

pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

pub(super) fn tmp_path(dir: &Path) -> PathBuf {
    dir.join(TMP)
}

pub(super) fn encode(meta: &WalMeta, history: &EpochHistory) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + history.0.len() * 16);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&meta.epoch.0.to_le_bytes());
    let leader = meta.leader.as_ref().map_or("", |l| l.0.as_str());
    b.push(meta.leader.is_some() as u8);
    b.extend_from_slice(&(leader.len() as u32).to_le_bytes());
    b.extend_from_slice(leader.as_bytes());
    b.push(meta.confirmed as u8);
    b.extend_from_slice(&(meta.restart_points.len() as u32).to_le_bytes());
    for (standby, lsn) in &meta.restart_points {
        b.extend_from_slice(&(standby.0.len() as u32).to_le_bytes());
        b.extend_from_slice(standby.0.as_bytes());
        b.extend_from_slice(&lsn.0.to_le_bytes());
    }
    b.extend_from_slice(&(history.0.len() as u32).to_le_bytes());
    for e in &history.0 {
        b.extend_from_slice(&e.epoch.0.to_le_bytes());
        b.extend_from_slice(&e.first_lsn.0.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Reads the meta file, `None` when there is none yet (a log that never
/// called `set_meta`). A damaged file is an error, never a silent reset: the
/// epoch in it is what keeps a deposed primary fenced.
pub(super) fn load(dir: &Path) -> Result<Option<(WalMeta, EpochHistory)>, WalError> {
    let path = path(dir);
    match fs::read(&path) {
        Ok(buf) => decode(&buf, &path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// Writes and fsyncs `meta.tmp`. Failing here leaves `meta` as it was,
/// and no `meta.tmp` (a full disk must not keep a partial one).
pub(super) fn write_tmp(dir: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let tmp = tmp_path(dir);
    tmpfile::write_synced(&tmp, bytes).map_err(io_err(format!("writing {}", tmp.display())))
}

/// Renames `meta.tmp` over `meta` and makes the rename durable. Failing
/// here leaves it unknown which of the two a restart will find.
pub(super) fn replace(dir: &Path) -> Result<(), WalError> {
    let target = path(dir);
    tmpfile::replace_synced(&tmp_path(dir), &target, dir)
        .map_err(io_err(format!("replacing {}", target.display())))
}

pub(super) fn decode(buf: &[u8], path: &Path) -> Result<(WalMeta, EpochHistory), WalError> {
    let corrupt = |offset: usize, detail: String| WalError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        detail,
    };
    let body = sealed::unseal(buf, &MAGIC, 4, "meta file")
        .map_err(|(offset, detail)| corrupt(offset, detail))?;
    let body_len = body.len();
    let mut r = Reader {
        buf: body,
        pos: MAGIC.len(),
    };
    let version = r
        .u32()
        .map_err(|o| corrupt(o, "meta file ends inside the version".into()))?;
    if ![VERSION_1, VERSION_2, VERSION].contains(&version) {
        return Err(corrupt(
            MAGIC.len(),
            format!(
                "meta format version {version} is not supported (this build reads {VERSION_1} to {VERSION}); a newer walrep wrote it: run that one"
            ),
        ));
    }
    let truncated = |what: &str| {
        let what = what.to_string();
        move |o: usize| corrupt(o, format!("meta file ends inside {what}"))
    };
    let epoch = Epoch(r.u64().map_err(truncated("the epoch"))?);
    let flag_at = r.pos;
    let has_leader = r.bytes(1).map_err(truncated("the leader"))?[0];
    let leader_len = r.u32().map_err(truncated("the leader"))? as usize;
    let name_at = r.pos;
    let name = r.bytes(leader_len).map_err(truncated("the leader"))?;
    let leader = match has_leader {
        0 if leader_len == 0 => None,
        1 => Some(NodeId(String::from_utf8(name.to_vec()).map_err(|_| {
            corrupt(name_at, "leader name is not UTF-8".into())
        })?)),
        _ => return Err(corrupt(flag_at, format!("bad leader flag {has_leader}"))),
    };
    let confirmed = if version == VERSION_1 {
        true
    } else {
        let at = r.pos;
        match r.bytes(1).map_err(truncated("the confirmed flag"))?[0] {
            0 => false,
            1 => true,
            other => return Err(corrupt(at, format!("bad confirmed flag {other}"))),
        }
    };
    let mut restart_points = std::collections::BTreeMap::new();
    if version == VERSION {
        let points = r.u32().map_err(truncated("the restart points"))?;
        for _ in 0..points {
            let len = r.u32().map_err(truncated("the restart points"))? as usize;
            let name_at = r.pos;
            let name = r.bytes(len).map_err(truncated("the restart points"))?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| corrupt(name_at, "restart point's node name is not UTF-8".into()))?;
            let lsn = Lsn(r.u64().map_err(truncated("the restart points"))?);
            let name = NodeId(name);
            if restart_points.keys().next_back() >= Some(&name) {
                return Err(corrupt(
                    name_at,
                    format!("restart points out of order at node {name}"),
                ));
            }
            restart_points.insert(name, lsn);
        }
    }
    let count = r.u32().map_err(truncated("the history"))?;
    let mut history = EpochHistory::default();
    for _ in 0..count {
        let at = r.pos;
        let epoch = Epoch(r.u64().map_err(truncated("the history"))?);
        let first_lsn = Lsn(r.u64().map_err(truncated("the history"))?);
        // `EpochHistory::note` would panic on these; the file must not be
        // able to crash the node.
        if let Some(prev) = history.0.last()
            && (epoch <= prev.epoch || first_lsn < prev.first_lsn)
        {
            return Err(corrupt(
                at,
                format!(
                    "epoch history goes backwards: epoch {epoch} at {first_lsn} after epoch {} at {}",
                    prev.epoch, prev.first_lsn
                ),
            ));
        }
        history.0.push(EpochStart { epoch, first_lsn });
    }
    if r.pos != body_len {
        return Err(corrupt(
            r.pos,
            format!("{} unexpected bytes after the history", body_len - r.pos),
        ));
    }
    Ok((
        WalMeta {
            epoch,
            leader,
            confirmed,
            restart_points,
        },
        history,
    ))
}

/// A cursor whose errors are the offset where the input ran out.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], usize> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(self.pos)?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, usize> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, usize> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().unwrap()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (WalMeta, EpochHistory) {
        let meta = WalMeta {
            epoch: Epoch(9),
            leader: Some(NodeId("node b\nwith odd chars ✓".into())),
            confirmed: true,
            restart_points: [("c".into(), Lsn(70)), ("node d ✓".into(), Lsn(3))].into(),
        };
        let history = EpochHistory(vec![
            EpochStart {
                epoch: Epoch(1),
                first_lsn: Lsn(1),
            },
            EpochStart {
                epoch: Epoch(4),
                first_lsn: Lsn(77),
            },
        ]);
        (meta, history)
    }

    /// What an older build wrote: version 2 has no restart points, version
    /// 1 no `confirmed` byte either.
    fn encode_older(version: u32, meta: &WalMeta, history: &EpochHistory) -> Vec<u8> {
        let mut b = encode(meta, history);
        b.truncate(b.len() - 4);
        b[MAGIC.len()..MAGIC.len() + 4].copy_from_slice(&version.to_le_bytes());
        let leader_len = meta.leader.as_ref().map_or(0, |l| l.0.len());
        let confirmed_at = MAGIC.len() + 4 + 8 + 1 + 4 + leader_len;
        let points_len: usize = 4 + meta
            .restart_points
            .keys()
            .map(|s| 4 + s.0.len() + 8)
            .sum::<usize>();
        b.drain(confirmed_at + 1..confirmed_at + 1 + points_len);
        if version == VERSION_1 {
            b.remove(confirmed_at);
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn a_version_1_file_reads_as_confirmed() {
        let (mut meta, history) = sample();
        meta.confirmed = false;
        let bytes = encode_older(VERSION_1, &meta, &history);
        let (read, read_history) = decode(&bytes, Path::new("m")).unwrap();
        assert!(read.confirmed, "a version 1 primary was already writable");
        assert!(read.restart_points.is_empty());
        assert_eq!(
            (read.epoch, read.leader, read_history),
            (meta.epoch, meta.leader, history)
        );
    }

    #[test]
    fn a_version_2_file_reads_as_having_no_restart_points() {
        let (meta, history) = sample();
        let bytes = encode_older(VERSION_2, &meta, &history);
        let (read, read_history) = decode(&bytes, Path::new("m")).unwrap();
        assert_eq!(
            read,
            WalMeta {
                restart_points: Default::default(),
                ..meta
            }
        );
        assert_eq!(read_history, history);
    }

    #[test]
    fn round_trips_with_and_without_leader() {
        let (mut meta, history) = sample();
        let p = Path::new("/x/meta");
        assert_eq!(
            decode(&encode(&meta, &history), p).unwrap(),
            (meta.clone(), history.clone())
        );
        meta.leader = None;
        meta.confirmed = false;
        meta.restart_points.clear();
        let empty = EpochHistory::default();
        assert_eq!(decode(&encode(&meta, &empty), p).unwrap(), (meta, empty));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let (meta, history) = sample();
        let buf = encode(&meta, &history);
        let p = Path::new("/x/meta");
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(decode(&bad, p), Err(WalError::Corrupt { .. })),
                "bit {bit}"
            );
        }
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut], p).is_err(), "cut at {cut}");
        }
    }

    mod props {
        use super::*;
        use crate::testing::largest_allocation;
        use proptest::prelude::*;

        fn check(buf: &[u8]) -> Result<(), TestCaseError> {
            let p = Path::new("/x/meta");
            let (result, allocated) = largest_allocation(|| decode(buf, p));
            // Error messages allocate a little, and so does a node of the
            // restart points' map (~370 bytes); a length field must not.
            prop_assert!(allocated <= buf.len() + 512, "allocated {allocated}");
            match result {
                // Whatever is accepted is exactly what `encode` writes (or
                // what a version 1 or 2 build wrote).
                Ok((meta, history))
                    if buf[MAGIC.len()..MAGIC.len() + 4] == VERSION_1.to_le_bytes() =>
                {
                    prop_assert!(meta.confirmed);
                    prop_assert_eq!(encode_older(VERSION_1, &meta, &history), buf)
                }
                Ok((meta, history))
                    if buf[MAGIC.len()..MAGIC.len() + 4] == VERSION_2.to_le_bytes() =>
                {
                    prop_assert!(meta.restart_points.is_empty());
                    prop_assert_eq!(encode_older(VERSION_2, &meta, &history), buf)
                }
                Ok((meta, history)) => prop_assert_eq!(encode(&meta, &history), buf),
                Err(WalError::Corrupt {
                    segment,
                    offset,
                    detail,
                }) => {
                    prop_assert_eq!(segment, p.to_path_buf());
                    prop_assert!(offset as usize <= buf.len());
                    prop_assert!(!detail.is_empty());
                }
                Err(e) => prop_assert!(false, "not Corrupt: {e}"),
            }
            Ok(())
        }

        /// A file with the right magic and version and a correct CRC, its
        /// fields mostly consistent and sometimes not (a length or count
        /// that lies, a name that is not UTF-8, a history going backwards,
        /// bytes missing or left over): what the parser past the checksum
        /// sees.
        fn sealed_body() -> impl Strategy<Value = Vec<u8>> {
            fn lie<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
                prop::option::weighted(0.15, s)
            }
            (
                any_meta(),
                lie(any::<u8>()),
                lie(prop::collection::vec(any::<u8>(), 0..8)),
                lie(any::<u32>()),
                lie(prop::collection::vec((0u64..9, 0u64..9), 0..5)),
                lie(any::<u32>()),
                prop::option::weighted(0.1, prop::collection::vec(any::<u8>(), 1..3)),
                prop::option::weighted(0.1, any::<prop::sample::Index>()),
                (any::<bool>(), lie(any::<u8>())),
            )
                .prop_map(
                    |(
                        (meta, history),
                        flag,
                        name,
                        len,
                        entries,
                        count,
                        extra,
                        cut,
                        (v1, confirmed),
                    )| {
                        let mut b = MAGIC.to_vec();
                        let version = if v1 { VERSION_1 } else { VERSION };
                        b.extend_from_slice(&version.to_le_bytes());
                        b.extend_from_slice(&meta.epoch.0.to_le_bytes());
                        b.push(flag.unwrap_or(meta.leader.is_some() as u8));
                        let name = name.unwrap_or_else(|| {
                            meta.leader.map(|l| l.0.into_bytes()).unwrap_or_default()
                        });
                        b.extend_from_slice(&len.unwrap_or(name.len() as u32).to_le_bytes());
                        b.extend_from_slice(&name);
                        if !v1 {
                            b.push(confirmed.unwrap_or(meta.confirmed as u8));
                        }
                        let entries = entries.unwrap_or_else(|| {
                            history
                                .0
                                .iter()
                                .map(|e| (e.epoch.0, e.first_lsn.0))
                                .collect()
                        });
                        b.extend_from_slice(&count.unwrap_or(entries.len() as u32).to_le_bytes());
                        for (e, l) in entries {
                            b.extend_from_slice(&e.to_le_bytes());
                            b.extend_from_slice(&l.to_le_bytes());
                        }
                        b.extend(extra.unwrap_or_default());
                        if let Some(cut) = cut {
                            b.truncate(cut.index(b.len() + 1));
                        }
                        let crc = crc32c::crc32c(&b);
                        b.extend_from_slice(&crc.to_le_bytes());
                        b
                    },
                )
        }

        fn any_meta() -> impl Strategy<Value = (WalMeta, EpochHistory)> {
            (
                any::<u64>(),
                prop::option::of(".{0,12}"),
                prop::collection::vec((1u64..4, 0u64..4), 0..6),
                any::<bool>(),
                prop::collection::btree_map(".{0,6}", any::<u64>(), 0..3),
            )
                .prop_map(|(epoch, leader, steps, confirmed, restart)| {
                    let (mut e, mut l) = (0, 0);
                    let history = steps
                        .into_iter()
                        .map(|(de, dl)| {
                            e += de;
                            l += dl;
                            EpochStart {
                                epoch: Epoch(e),
                                first_lsn: Lsn(l),
                            }
                        })
                        .collect();
                    let meta = WalMeta {
                        epoch: Epoch(epoch),
                        leader: leader.map(NodeId),
                        confirmed,
                        restart_points: restart
                            .into_iter()
                            .map(|(name, lsn)| (NodeId(name), Lsn(lsn)))
                            .collect(),
                    };
                    (meta, EpochHistory(history))
                })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_give_meta_or_corrupt(
                buf in prop::collection::vec(any::<u8>(), 0..128),
            ) {
                check(&buf)?;
            }

            #[test]
            fn arbitrary_checksummed_bodies_give_meta_or_corrupt(buf in sealed_body()) {
                check(&buf)?;
            }

            #[test]
            fn meta_round_trips((meta, history) in any_meta()) {
                let buf = encode(&meta, &history);
                prop_assert_eq!(decode(&buf, Path::new("m")).unwrap(), (meta, history));
            }
        }
    }
}
