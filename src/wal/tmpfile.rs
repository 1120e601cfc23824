//! Files written under a temporary name and renamed into place: one that
//! could not be written whole is removed at once, so a full disk leaves no
//! partial file behind to take its space (or to be mistaken for data), and
//! leftovers of a crash are removed when their directory is next used.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `tmp` and fsyncs it: the first half of a durable
/// replacement. Failing, it leaves no `tmp` behind (a full disk must not
/// keep a partial one) and the file `tmp` was meant to replace as it was.
pub(crate) fn write_synced(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    write_or_remove(tmp, |f| {
        f.write_all(bytes)?;
        f.sync_all()
    })
    .map(drop)
}

/// Renames `tmp` over `target` (both in `dir`) and fsyncs `dir`, so the
/// rename survives a crash: the second half of a durable replacement.
/// Failing here leaves it unknown which of the two a restart will find.
pub(crate) fn replace_synced(tmp: &Path, target: &Path, dir: &Path) -> io::Result<()> {
    std::fs::rename(tmp, target).and_then(|()| sync_dir(dir))
}

/// Makes creations, renames and removals in `dir` survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates (or truncates) `path` and runs `write` on it; if creating or
/// writing fails, removes `path` before returning the error.
pub(crate) fn write_or_remove(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<File> {
    let mut file = File::create(path)?;
    match write(&mut file) {
        Ok(()) => Ok(file),
        Err(e) => {
            drop(file);
            remove_after_failure(path);
            Err(e)
        }
    }
}

/// Removes a temporary file a failed write left; a failure to remove it is
/// logged, the write's own error is what the caller reports.
pub(crate) fn remove_after_failure(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %path.display(), "could not remove a partly written temporary file: {e}")
        }
    }
}

/// Removes the files in `dir` whose names end in `suffix` (what an
/// interrupted write left); a missing directory has none.
pub(crate) fn remove_stale(dir: &Path, suffix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(suffix) {
            tracing::info!(file = %e.path().display(), "removing a temporary file an interrupted write left");
            remove_after_failure(&e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_fails_part_way_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tmp");
        let err = write_or_remove(&path, |f| {
            f.write_all(b"half of it")?;
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        })
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28));
        assert!(!path.exists(), "the partial file stayed");
        let f = write_or_remove(&path, |f| f.write_all(b"whole")).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"whole");
    }

    #[test]
    fn stale_temporary_files_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.wal.tmp", "b.wal", "c.tmp"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_stale(dir.path(), ".tmp");
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["b.wal"]);
        remove_stale(&dir.path().join("missing"), ".tmp");
    }
}
