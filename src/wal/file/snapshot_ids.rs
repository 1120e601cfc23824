//! `dir/snapshot-ids`: the request ids of the records the last restored
//! snapshot covers (`WalStore::set_snapshot_ids`), all little-endian:
//!
//! ```text
//! | magic "WALRSIDS" | version: u32 | count: u64 |
//! | count × (id: 16 bytes, lsn: u64, epoch: u64) | crc32c of everything before: u32 |
//! ```
//!
//! Replaced whole (write temp, fsync, rename, fsync dir), so a crash leaves
//! the old list or the new one. No file reads as no ids. A damaged file is
//! an error, not an empty list: a node that forgot them could apply a
//! retried write twice.

use super::super::WalError;
use super::io_err;
use crate::types::{Epoch, Lsn, RequestId, RequestIdAt};
use crate::wal::tmpfile;
use std::fs;
use std::io;
use std::path::Path;

const MAGIC: [u8; 8] = *b"WALRSIDS";
const VERSION: u32 = 1;
const FILE: &str = "snapshot-ids";
const TMP: &str = "snapshot-ids.tmp";
const HEADER: usize = 8 + 4 + 8;
const ENTRY: usize = RequestId::LEN + 8 + 8;

pub(super) fn encode(ids: &[RequestIdAt]) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER + ids.len() * ENTRY + 4);
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(ids.len() as u64).to_le_bytes());
    for e in ids {
        b.extend_from_slice(&e.id.0);
        b.extend_from_slice(&e.lsn.0.to_le_bytes());
        b.extend_from_slice(&e.epoch.0.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub(super) fn decode(buf: &[u8], path: &Path) -> Result<Vec<RequestIdAt>, WalError> {
    let corrupt = |offset: usize, detail: String| WalError::Corrupt {
        segment: path.to_path_buf(),
        offset: offset as u64,
        detail: format!(
            "{detail}; the file lists the request ids of the records the last restored snapshot covers: \
             restore it from a backup, or remove it (retries of those writes may then be applied again)"
        ),
    };
    let body = super::sealed::unseal(buf, &MAGIC, HEADER - MAGIC.len(), "snapshot-ids file")
        .map_err(|(offset, detail)| corrupt(offset, detail))?;
    let body_len = body.len();
    let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().unwrap());
    let version = u32::from_le_bytes(buf[8..12].try_into().unwrap());
    if version != VERSION {
        return Err(corrupt(
            8,
            format!("version {version}, this walrep reads {VERSION}"),
        ));
    }
    let count = u64_at(12);
    if count.checked_mul(ENTRY as u64) != Some((body_len - HEADER) as u64) {
        return Err(corrupt(
            12,
            format!(
                "says {count} entries but holds {} bytes of them",
                body_len - HEADER
            ),
        ));
    }
    Ok(buf[HEADER..body_len]
        .chunks_exact(ENTRY)
        .map(|e| RequestIdAt {
            id: RequestId::from_slice(&e[..RequestId::LEN]).expect("an entry's first 16 bytes"),
            lsn: Lsn(u64::from_le_bytes(e[16..24].try_into().unwrap())),
            epoch: Epoch(u64::from_le_bytes(e[24..32].try_into().unwrap())),
        })
        .collect())
}

/// Where a replacement is written first: a crash may leave it behind, and
/// opening the log removes it.
pub(super) fn tmp_path(dir: &Path) -> std::path::PathBuf {
    dir.join(TMP)
}

/// The ids the file lists, none when there is no file.
pub(super) fn load(dir: &Path) -> Result<Vec<RequestIdAt>, WalError> {
    let path = dir.join(FILE);
    match fs::read(&path) {
        Ok(buf) => decode(&buf, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// Replaces the file with `ids`, durably. Failing before the rename leaves
/// the old file as it was.
pub(super) fn store(dir: &Path, ids: &[RequestIdAt]) -> Result<(), WalError> {
    let (tmp, target) = (tmp_path(dir), dir.join(FILE));
    tmpfile::write_synced(&tmp, &encode(ids))
        .map_err(io_err(format!("writing {}", tmp.display())))?;
    tmpfile::replace_synced(&tmp, &target, dir)
        .map_err(io_err(format!("replacing {}", target.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<RequestIdAt> {
        (1..=3u64)
            .map(|n| RequestIdAt {
                id: RequestId::from(n as u128 * 1000),
                lsn: Lsn(n * 10),
                epoch: Epoch(n),
            })
            .collect()
    }

    #[test]
    fn the_ids_stored_are_the_ids_loaded_and_no_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![]);
        store(dir.path(), &ids()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), ids());
        store(dir.path(), &[]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![]);
    }

    /// Through the log: the ids outlive a reopen, and a replacement a
    /// crash left half-written is removed.
    #[test]
    fn the_log_keeps_the_ids_across_a_reopen_and_drops_a_torn_replacement() {
        use crate::wal::{FileWal, FileWalOptions, WalStore};
        let dir = tempfile::tempdir().unwrap();
        let wal = FileWal::open(dir.path(), FileWalOptions::default()).unwrap();
        wal.set_snapshot_ids(&ids()).unwrap();
        drop(wal);
        fs::write(tmp_path(dir.path()), b"torn").unwrap();
        let wal = FileWal::open(dir.path(), FileWalOptions::default()).unwrap();
        assert_eq!(wal.snapshot_ids().unwrap(), ids());
        assert!(!tmp_path(dir.path()).exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &ids()).unwrap();
        let path = dir.path().join(FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("checksum") && err.contains("remove it"),
            "{err}"
        );
        fs::write(&path, &bytes[..HEADER - 2]).unwrap();
        assert!(load(dir.path()).is_err());
    }
}
