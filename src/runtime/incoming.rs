//! A snapshot being received, on disk so that a transfer cut by the
//! network or by a restart of this node resumes from the bytes it has.
//!
//! Two files in the snapshot directory:
//!
//! - `incoming.snapshot`: the snapshot's bytes received so far, each chunk
//!   written at its offset; its length is what was received.
//! - `incoming.info`, the sidecar: what the primary announced (id, LSN,
//!   epoch, total length, and the CRC32C, or that it comes after the
//!   data), written once per transfer, atomically (a temporary file,
//!   fsync, rename, fsync of the directory) and checked by its own CRC32C
//!   when read back. A CRC that comes after the data is not written to
//!   it: a transfer resumed after a restart gets it from the primary.
//!
//! A new transfer removes the sidecar, empties the data file, then writes
//! the new sidecar: a crash at any point leaves either no sidecar (the
//! data is discarded at the next start) or a sidecar that describes the
//! data file's contents. The CRC32C of the bytes received is kept in
//! memory as they are written; a resumed run seeds it by reading the
//! prefix on disk once (`crc_of_prefix` says why not in the sidecar). The data is not fsynced as it arrives: after a
//! machine crash it may hold zeros or fewer bytes than it had, and the
//! whole-file length and CRC check at the end of the transfer then
//! discards it and the transfer starts over. Nothing is restored from a
//! file that did not pass that check.

use crate::transport::SnapshotInfo;
use crate::types::{Epoch, Lsn};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The received bytes.
pub(super) const DATA_FILE: &str = "incoming.snapshot";
/// What the primary announced for them.
pub(super) const SIDECAR_FILE: &str = "incoming.info";
/// The sidecar being written.
pub(super) const SIDECAR_TMP: &str = "incoming.info.tmp";

/// First bytes of a sidecar: the format and its version. Version 1
/// holds the announced CRC; version 2, the same layout, says the CRC
/// comes after the data (its CRC field is 0 and unused).
const MAGIC: &[u8; 8] = b"WRSNAPI1";
const MAGIC_CRC_FOLLOWS: &[u8; 8] = b"WRSNAPI2";
/// Magic, id, LSN, epoch, total bytes, CRC, then the sidecar's own CRC.
const SIDECAR_LEN: usize = 8 + 8 * 4 + 4 + 4;

/// A snapshot partly received: what the primary announced and how many
/// of its bytes are in `path`. Kept between attempts of one rejoin, and
/// found again by the next run (`recover`), so a cut transfer resumes.
pub(super) struct Incoming {
    pub info: SnapshotInfo,
    pub received: u64,
    /// CRC32C of the first `received` bytes of the file: taken as chunks
    /// are written, and after a restart by reading the prefix on disk
    /// once (`recover`).
    pub crc: u32,
    pub path: PathBuf,
    pub file: Arc<std::fs::File>,
}

impl Incoming {
    /// Starts receiving `info` into `dir` from its first byte (blocking).
    pub(super) fn create(dir: &Path, info: SnapshotInfo) -> std::io::Result<Incoming> {
        std::fs::create_dir_all(dir)?;
        remove_if_present(&dir.join(SIDECAR_FILE))?;
        let path = dir.join(DATA_FILE);
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let tmp = dir.join(SIDECAR_TMP);
        let described = crate::wal::tmpfile::write_or_remove(&tmp, |out| {
            out.write_all(&encode(&info))?;
            out.sync_all()
        })
        .and_then(|_| {
            std::fs::rename(&tmp, dir.join(SIDECAR_FILE)).inspect_err(|_| {
                crate::wal::tmpfile::remove_after_failure(&tmp);
            })
        });
        if let Err(e) = described {
            // No sidecar, so the (empty) data file could never resume.
            crate::wal::tmpfile::remove_after_failure(&path);
            return Err(e);
        }
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Incoming {
            info,
            received: 0,
            crc: 0,
            path,
            file: Arc::new(file),
        })
    }

    /// What an earlier run left in `dir` to resume (blocking). A data
    /// file without a sidecar, or with a torn or unreadable one, or
    /// longer than the announced snapshot, is removed with a log line and
    /// the next transfer starts over.
    pub(super) fn recover(dir: &Path) -> Option<Incoming> {
        let (data, sidecar) = (dir.join(DATA_FILE), dir.join(SIDECAR_FILE));
        let _ = std::fs::remove_file(dir.join(SIDECAR_TMP));
        let found = match std::fs::read(&sidecar) {
            Ok(bytes) => decode(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if data.exists() {
                    tracing::warn!(
                        file = %data.display(),
                        "a partly received snapshot has no {SIDECAR_FILE} describing it; discarding it"
                    );
                    discard_files(dir);
                }
                return None;
            }
            Err(e) => Err(format!("reading it: {e}")),
        };
        let opened = found.and_then(|info| {
            let file = std::fs::File::options()
                .read(true)
                .write(true)
                .open(&data)
                .map_err(|e| format!("opening {}: {e}", data.display()))?;
            let received = file
                .metadata()
                .map_err(|e| format!("reading the length of {}: {e}", data.display()))?
                .len();
            if received > info.total_bytes {
                return Err(format!(
                    "{received} bytes received of a snapshot of {}",
                    info.total_bytes
                ));
            }
            let crc = crc_of_prefix(&file, received)
                .map_err(|e| format!("reading {}: {e}", data.display()))?;
            Ok(Incoming {
                info,
                received,
                crc,
                path: data.clone(),
                file: Arc::new(file),
            })
        });
        match opened {
            Ok(incoming) => {
                tracing::info!(
                    id = incoming.info.id,
                    lsn = %incoming.info.lsn,
                    received = incoming.received,
                    total = incoming.info.total_bytes,
                    "found a partly received snapshot from an earlier run; the next transfer resumes it if the primary still serves it"
                );
                Some(incoming)
            }
            Err(reason) => {
                tracing::warn!(
                    file = %sidecar.display(),
                    %reason,
                    "the partly received snapshot's {SIDECAR_FILE} is torn or does not match; discarding it"
                );
                discard_files(dir);
                None
            }
        }
    }

    /// Throws away what was received: the next request starts over. The
    /// files are removed at once (the names are free for the next
    /// transfer when this returns) and the data file closed off the
    /// node's task (`close_off_thread`): freeing gigabytes received takes
    /// the filesystem long enough to stall it. Other holders of the data
    /// file (the chunk writes) should have let go of it first, so that
    /// this close is the last.
    pub(super) fn discard(slot: &mut Option<Incoming>, may_block: bool) {
        if let Some(i) = slot.take() {
            if let Some(dir) = i.path.parent() {
                discard_files(dir);
            }
            crate::unlinked::close_off_thread(i.file, &i.path, may_block);
        }
    }
}

/// Removes the incoming files of `dir` (blocking): the sidecar first, so
/// a crash in between leaves data without a sidecar, which the next run
/// discards.
pub(super) fn discard_files(dir: &Path) {
    for name in [SIDECAR_FILE, SIDECAR_TMP, DATA_FILE] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// CRC32C of the first `len` bytes of `file`, read in 1 MiB pieces.
///
/// Read from disk rather than kept in the sidecar: the data is not
/// fsynced as it arrives, so after a machine crash the file may hold other
/// bytes than the ones a stored running CRC covered; a CRC of what is
/// actually on disk makes the end-of-transfer check catch that. The price
/// is one read of the prefix per restart that resumes, not per chunk (a
/// CRC in the sidecar would need a sidecar rewrite with fsync per chunk).
fn crc_of_prefix(file: &std::fs::File, len: u64) -> std::io::Result<u32> {
    super::snapshots::crc_of(file, len)
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn encode(info: &SnapshotInfo) -> [u8; SIDECAR_LEN] {
    let mut out = [0u8; SIDECAR_LEN];
    out[..8].copy_from_slice(if info.crc.is_some() {
        MAGIC
    } else {
        MAGIC_CRC_FOLLOWS
    });
    out[8..16].copy_from_slice(&info.id.to_le_bytes());
    out[16..24].copy_from_slice(&info.lsn.0.to_le_bytes());
    out[24..32].copy_from_slice(&info.epoch.0.to_le_bytes());
    out[32..40].copy_from_slice(&info.total_bytes.to_le_bytes());
    out[40..44].copy_from_slice(&info.crc.unwrap_or(0).to_le_bytes());
    let crc = crc32c::crc32c(&out[..44]);
    out[44..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The announcement a sidecar holds (its `offset` is 0), or why it cannot
/// be trusted.
fn decode(bytes: &[u8]) -> Result<SnapshotInfo, String> {
    if bytes.len() != SIDECAR_LEN {
        return Err(format!(
            "{} bytes where a sidecar has {SIDECAR_LEN}",
            bytes.len()
        ));
    }
    let crc_follows = match &bytes[..8] {
        m if m == MAGIC => false,
        m if m == MAGIC_CRC_FOLLOWS => true,
        _ => return Err("it does not start with the sidecar's magic bytes".into()),
    };
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..44]) != u32_at(44) {
        return Err("its checksum does not match its contents".into());
    }
    Ok(SnapshotInfo {
        id: u64_at(8),
        lsn: Lsn(u64_at(16)),
        epoch: Epoch(u64_at(24)),
        total_bytes: u64_at(32),
        crc: (!crc_follows).then(|| u32_at(40)),
        offset: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SnapshotInfo {
        SnapshotInfo {
            id: 42,
            lsn: Lsn(9),
            epoch: Epoch(3),
            total_bytes: 100,
            crc: Some(0xdead_beef),
            offset: 0,
        }
    }

    /// A sidecar of a transfer whose CRC comes after the data says so
    /// when read back, rather than naming a CRC.
    #[test]
    fn a_sidecar_whose_crc_follows_the_data_comes_back_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let announced = SnapshotInfo {
            crc: None,
            ..info()
        };
        drop(Incoming::create(dir.path(), announced.clone()).unwrap());
        let back = Incoming::recover(dir.path()).expect("recovered");
        assert_eq!(back.info, announced);
    }

    /// Throwing away what was received (up to a whole snapshot) removes
    /// the files at once and closes the data file on a blocking thread
    /// where the disk may block, not on the node's task that discards it;
    /// nothing is left to resume.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_discarded_transfer_goes_off_the_thread_that_discards_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut slot = Some(Incoming::create(dir.path(), info()).unwrap());
        let path = dir.path().join(DATA_FILE);
        Incoming::discard(&mut slot, true);
        assert!(slot.is_none());
        assert!(!path.exists(), "the name is free when discard returns");
        assert_ne!(
            crate::unlinked::closing_of(&path).await,
            std::thread::current().id(),
            "closed by the task that discarded it"
        );
        assert!(Incoming::recover(dir.path()).is_none());
        assert!(!path.exists() && !dir.path().join(SIDECAR_FILE).exists());
    }

    /// What `create` announced and the bytes written since come back
    /// from disk in the next run.
    #[test]
    fn a_partly_received_snapshot_is_recovered_with_its_announcement_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let inc = Incoming::create(dir.path(), info()).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&*inc.file, &[7u8; 30], 0).unwrap();
        drop(inc);
        let back = Incoming::recover(dir.path()).expect("recovered");
        assert_eq!(back.info, info());
        assert_eq!(back.received, 30);
        assert_eq!(
            back.crc,
            crc32c::crc32c(&[7u8; 30]),
            "the CRC of the prefix on disk seeds the resumed transfer's"
        );
    }

    /// Data without a sidecar, a sidecar cut short or with one flipped
    /// bit, and more data than announced: each is discarded, files and all.
    #[test]
    fn data_whose_sidecar_is_missing_torn_or_contradicted_is_discarded() {
        type Damage = fn(&Path);
        let damage: [(&str, Damage); 4] = [
            ("missing", |d| {
                std::fs::remove_file(d.join(SIDECAR_FILE)).unwrap()
            }),
            ("cut short", |d| {
                let bytes = std::fs::read(d.join(SIDECAR_FILE)).unwrap();
                std::fs::write(d.join(SIDECAR_FILE), &bytes[..20]).unwrap();
            }),
            ("a flipped bit", |d| {
                let mut bytes = std::fs::read(d.join(SIDECAR_FILE)).unwrap();
                bytes[20] ^= 1;
                std::fs::write(d.join(SIDECAR_FILE), &bytes).unwrap();
            }),
            ("data longer than announced", |d| {
                std::fs::write(d.join(DATA_FILE), [0u8; 101]).unwrap();
            }),
        ];
        for (what, damage) in damage {
            let dir = tempfile::tempdir().unwrap();
            let inc = Incoming::create(dir.path(), info()).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&*inc.file, &[7u8; 30], 0).unwrap();
            drop(inc);
            damage(dir.path());
            assert!(Incoming::recover(dir.path()).is_none(), "{what}: discarded");
            assert!(!dir.path().join(DATA_FILE).exists(), "{what}: data gone");
            assert!(
                !dir.path().join(SIDECAR_FILE).exists(),
                "{what}: sidecar gone"
            );
        }
    }

    #[test]
    fn an_empty_directory_has_nothing_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Incoming::recover(dir.path()).is_none());
        assert!(Incoming::recover(&dir.path().join("absent")).is_none());
    }
}
