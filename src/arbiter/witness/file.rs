//! `DIR/registers`: every cluster's register, as one file, replaced whole
//! at every swap (temp file, fsync, rename, fsync of the directory) before
//! the witness answers. All little-endian:
//!
//! ```text
//! | magic "WALRWITN" | version: u32 | body: StoredRegisters (protobuf) | crc32c of everything before: u32 |
//! ```
//!
//! A damaged or unreadable file stops the witness at start with an error
//! naming it: starting empty instead would let a stale node re-create its
//! cluster's register. Only a directory without the file starts empty, and
//! then `Registers` re-creates each register only once every member of its
//! cluster has reported its epoch, at an epoch no lower than any of them.
//!
//! `DIR/lock` is held (`flock`) while a witness uses the directory: two
//! witnesses on one file would each answer from their own memory, two
//! arbiters for one cluster.

use crate::arbiter::{Register, Registers};
use crate::pb;
use crate::wal::tmpfile;
use prost::Message;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 8] = *b"WALRWITN";
const VERSION: u32 = 1;
/// The registers' file in the data directory.
pub const FILE: &str = "registers";
const TMP: &str = "registers.tmp";
const LOCK: &str = "lock";
/// The largest file read back: far above any real witness (a register is
/// tens of bytes), so a wrong path cannot make the witness read gigabytes.
const MAX_FILE_BYTES: u64 = 256 << 20;

/// Why the witness's directory or file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a register file this build can read.
    #[error(
        "witness register file {path} is damaged: {detail}. The witness does not start empty over it \
         (a stale node could then re-create its cluster's register). To rebuild every register from \
         the nodes, move the file out of the data directory and start again: each cluster's register \
         is re-created once all its members have reported their epoch. Do not restore an old backup \
         of the file: its versions may be reused, and a deposed primary could then swap its standby out"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What check failed.
        detail: String,
    },
    /// Another witness holds the data directory.
    #[error(
        "witness data directory {dir} is in use by another witness (it holds {lock}): two witnesses \
         on one file would be two arbiters; stop the other one or pick another --data-dir"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
    },
    /// The registers would not fit a file the witness could read back.
    #[error(
        "the witness's registers would take {bytes} bytes, more than the {max} a register file may \
         hold (the witness reads no larger one at start); the change is refused and the file kept. \
         That many clusters or member names suggests a node creating clusters that are not its own: \
         check the clusters the witness reports and who holds certificates of its CA"
    )]
    Full {
        /// The encoded size.
        bytes: u64,
        /// The most a register file may hold.
        max: u64,
    },
    /// The new file was renamed into place but the fsync of its
    /// directory failed: a crash may bring back either file, so what the
    /// disk holds is unknown.
    #[error(
        "{what}: {source}; the new register file is in place but may not survive a crash, so the \
         witness cannot tell which registers a restart would find"
    )]
    Unsettled {
        /// The operation, naming the directory.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The OS refused an operation.
    #[error("{what}: {source}")]
    Io {
        /// The operation, naming the path.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// The witness's file in its data directory, locked while this value
/// lives.
#[derive(Debug)]
pub struct RegisterFile {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    /// The most bytes the file may hold, written or read.
    max_bytes: u64,
    _lock: File,
    /// Test hook: the directory's fsync after a rename fails.
    #[cfg(test)]
    pub(crate) fail_dir_syncs: std::sync::atomic::AtomicBool,
}

impl RegisterFile {
    /// Opens (creating it if needed) the data directory `dir`, takes its
    /// lock, removes a temporary file a crash left (the file it was
    /// meant to replace is intact) and reads the registers: none when the
    /// directory has no register file.
    pub fn open(dir: impl Into<PathBuf>) -> Result<(RegisterFile, Registers), StoreError> {
        let dir = dir.into();
        let created = !dir.exists();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        if created && let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            tmpfile::sync_dir(parent).map_err(io_err(format!("syncing {}", parent.display())))?;
        }
        let lock_path = dir.join(LOCK);
        let Some(lock) = crate::wal::dir_lock::lock_exclusive(&lock_path)
            .map_err(io_err(format!("locking {}", lock_path.display())))?
        else {
            return Err(StoreError::Locked {
                dir,
                lock: lock_path,
            });
        };
        let file = RegisterFile {
            path: dir.join(FILE),
            tmp: dir.join(TMP),
            dir,
            max_bytes: MAX_FILE_BYTES,
            _lock: lock,
            #[cfg(test)]
            fail_dir_syncs: Default::default(),
        };
        if file.tmp.exists() {
            tracing::info!(file = %file.tmp.display(), "removing a register file a crash left half-replaced; the previous one is intact");
            fs::remove_file(&file.tmp)
                .map_err(io_err(format!("removing {}", file.tmp.display())))?;
        }
        let registers = file.load()?;
        Ok((file, registers))
    }

    /// The register file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn load(&self) -> Result<Registers, StoreError> {
        let path = &self.path;
        let len = match fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Registers::new()),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        if len > self.max_bytes {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                detail: format!("{len} bytes, more than a register file can hold"),
            });
        }
        let buf = fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
        decode(&buf).map_err(|detail| StoreError::Corrupt {
            path: path.clone(),
            detail,
        })
    }

    /// Fsyncs the directory, so a rename in it survives a crash (fails
    /// at will in tests: `fail_dir_syncs`).
    fn sync_dir(&self) -> io::Result<()> {
        #[cfg(test)]
        if self
            .fail_dir_syncs
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(io::Error::other("injected fsync failure"));
        }
        tmpfile::sync_dir(&self.dir)
    }

    /// Writes `registers` in place of the file, durably: when this returns
    /// `Ok` a crash keeps them. On `StoreError::Unsettled` a crash may
    /// bring back either the registers before or these; on any other
    /// `Err` the file holds the registers before.
    pub fn save(&self, registers: &Registers) -> Result<(), StoreError> {
        let bytes = encode(registers);
        // Written, it could not be read back: the witness would refuse to
        // start over its own file.
        if bytes.len() as u64 > self.max_bytes {
            return Err(StoreError::Full {
                bytes: bytes.len() as u64,
                max: self.max_bytes,
            });
        }
        tmpfile::write_synced(&self.tmp, &bytes)
            .map_err(io_err(format!("writing {}", self.tmp.display())))?;
        // A failed rename did not happen: the old file stays, certainly.
        fs::rename(&self.tmp, &self.path)
            .map_err(io_err(format!("replacing {}", self.path.display())))?;
        self.sync_dir().map_err(|source| StoreError::Unsettled {
            what: format!("syncing {}", self.dir.display()),
            source,
        })
    }
}

/// The file's bytes for `registers`.
pub(crate) fn encode(registers: &Registers) -> Vec<u8> {
    let stored = pb::StoredRegisters {
        clusters: registers
            .registers()
            .map(|(id, r)| pb::StoredRegister {
                cluster_id: id.to_string(),
                register: Some(pb::ArbiterRegister::from(r)),
            })
            .collect(),
    };
    let mut b = Vec::with_capacity(16 + stored.encoded_len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    stored
        .encode(&mut b)
        .expect("a Vec grows to fit the message");
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// The registers `encode` wrote, or what is wrong with `buf`.
pub(crate) fn decode(buf: &[u8]) -> Result<Registers, String> {
    if buf.len() < MAGIC.len() || buf[..MAGIC.len()] != MAGIC {
        return Err("not a walrep witness register file (bad magic bytes)".into());
    }
    if buf.len() < MAGIC.len() + 4 + 4 {
        return Err(format!("truncated to {} bytes", buf.len()));
    }
    let body_end = buf.len() - 4;
    let stored = u32::from_le_bytes(buf[body_end..].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&buf[..body_end]);
    if stored != computed {
        return Err(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x} (a torn or altered file)"
        ));
    }
    let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!(
            "format version {version} is not supported (this build reads {VERSION})"
        ));
    }
    let body = pb::StoredRegisters::decode(&buf[12..body_end])
        .map_err(|e| format!("undecodable registers: {e}"))?;
    let mut seen = BTreeSet::new();
    let mut registers = Vec::with_capacity(body.clusters.len());
    for c in body.clusters {
        if c.cluster_id.is_empty() {
            return Err("a register without a cluster id".into());
        }
        if !seen.insert(c.cluster_id.clone()) {
            return Err(format!("cluster {:?} appears twice", c.cluster_id));
        }
        let register = Register::from(c.register.unwrap_or_default());
        if !register.exists() {
            return Err(format!(
                "cluster {:?} has a register at version 0",
                c.cluster_id
            ));
        }
        registers.push((c.cluster_id, register));
    }
    Ok(Registers::from_registers(registers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::{Caller, CasOutcome};
    use crate::types::Epoch;

    fn caller(node: &str, epoch: u64) -> Caller {
        Caller::new(node, Epoch(epoch))
    }

    /// Registers holding a register for each of `clusters`, created by n1
    /// at `epoch` once n2 reported.
    fn with_clusters(clusters: &[&str], epoch: u64) -> Registers {
        let mut regs = Registers::new();
        for c in clusters {
            regs.read(c, &caller("n2", 0));
            let next = Register::fresh(Epoch(epoch), &"n1".into(), &["n1".into(), "n2".into()]);
            let out = regs.compare_and_swap(c, &caller("n1", epoch), 0, &next);
            assert!(matches!(out, Ok(CasOutcome::Swapped(_))), "{out:?}");
        }
        regs
    }

    fn all(regs: &Registers) -> Vec<(String, Register)> {
        regs.registers()
            .map(|(id, r)| (id.to_string(), r.clone()))
            .collect()
    }

    #[test]
    fn a_swap_survives_a_restart_of_the_witness() {
        let dir = tempfile::tempdir().unwrap();
        let (file, regs) = RegisterFile::open(dir.path()).unwrap();
        assert!(regs.is_empty(), "an empty data dir starts empty");
        let regs = with_clusters(&["a", "b"], 3);
        file.save(&regs).unwrap();
        drop(file);
        let (_file, back) = RegisterFile::open(dir.path()).unwrap();
        assert_eq!(all(&back), all(&regs));
        assert_eq!(back.len(), 2);
    }

    /// Registers past the size a register file may hold are refused, not
    /// written: the file (which the witness reads back at start only up to
    /// that size) keeps what it held.
    #[test]
    fn registers_too_large_to_read_back_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = RegisterFile::open(dir.path()).unwrap();
        let small = with_clusters(&["a"], 1);
        let big = with_clusters(&["a", "b", "c", "d"], 1);
        let file = RegisterFile {
            max_bytes: encode(&small).len() as u64,
            ..file
        };
        file.save(&small).unwrap();
        let err = file.save(&big).unwrap_err();
        assert!(matches!(err, StoreError::Full { .. }), "{err}");
        drop(file);
        let (_file, back) = RegisterFile::open(dir.path()).unwrap();
        assert_eq!(all(&back), all(&small));
    }

    #[test]
    fn a_crash_between_the_temp_write_and_the_rename_leaves_the_old_registers() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = RegisterFile::open(dir.path()).unwrap();
        let old = with_clusters(&["a"], 1);
        file.save(&old).unwrap();
        drop(file);
        // The next swap's file, written and synced, never renamed.
        std::fs::write(dir.path().join(TMP), encode(&with_clusters(&["a"], 2))).unwrap();
        let (_file, back) = RegisterFile::open(dir.path()).unwrap();
        assert_eq!(all(&back), all(&old));
        assert!(!dir.path().join(TMP).exists(), "the leftover was removed");
    }

    #[test]
    fn a_damaged_file_is_refused_at_start_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = RegisterFile::open(dir.path()).unwrap();
        file.save(&with_clusters(&["a"], 1)).unwrap();
        drop(file);
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = RegisterFile::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("checksum mismatch"),
            "{msg}"
        );
        assert!(
            msg.contains("move the file out of the data directory"),
            "{msg}"
        );
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_refused() {
        let buf = encode(&with_clusters(&["a", "b"], 4));
        assert_eq!(
            all(&decode(&buf).unwrap()),
            all(&with_clusters(&["a", "b"], 4))
        );
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "bit {bit}");
        }
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&encode(&Registers::new())).unwrap().is_empty());
    }

    #[test]
    fn a_second_witness_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_first, _) = RegisterFile::open(dir.path()).unwrap();
        let err = RegisterFile::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    }
}
