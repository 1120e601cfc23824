//! How many bytes a new segment reserves on disk: the segment size when
//! preallocation is on and the disk has room to spare, nothing otherwise.

use super::FileWalOptions;
use std::path::Path;

/// What a new segment in `dir` reserves: `segment_bytes` with
/// `preallocate`, unless the file system has less than twice that free.
/// Then nothing is reserved (appends grow the file; only slower), so a
/// small or nearly full disk never fails a start or a roll for a
/// reservation the log may never use.
pub(super) fn preallocate_bytes(opts: &FileWalOptions, dir: &Path) -> u64 {
    let reserve = reserve_for(opts, free_bytes(dir));
    if opts.preallocate && reserve == 0 {
        tracing::warn!(
            dir = %dir.display(),
            segment_bytes = opts.segment_bytes,
            "less than twice segment_bytes free on the WAL's disk; new segments are not preallocated"
        );
    }
    reserve
}

fn reserve_for(opts: &FileWalOptions, free: Option<u64>) -> u64 {
    match free {
        _ if !opts.preallocate => 0,
        Some(free) if free < opts.segment_bytes.saturating_mul(2) => 0,
        _ => opts.segment_bytes,
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s file system;
/// `None` if the OS does not say.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` is written by
    // statvfs before it is read, only when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_preallocated_only_with_twice_their_size_free() {
        let opts = FileWalOptions {
            segment_bytes: 64 << 20,
            preallocate: true,
            ..FileWalOptions::default()
        };
        assert_eq!(reserve_for(&opts, Some(1 << 40)), 64 << 20);
        assert_eq!(reserve_for(&opts, None), 64 << 20);
        assert_eq!(reserve_for(&opts, Some(128 << 20)), 64 << 20);
        assert_eq!(reserve_for(&opts, Some((128 << 20) - 1)), 0);
        assert_eq!(reserve_for(&opts, Some(64 << 20)), 0);
        let off = FileWalOptions {
            preallocate: false,
            ..opts
        };
        assert_eq!(reserve_for(&off, Some(1 << 40)), 0);
        // This machine's temp dir answers statvfs.
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
    }
}
