//! An exclusive lock on a data directory, held by an open file: the
//! kernel lets it go when the process ends however it ends, so a crash
//! never leaves a stale lock behind.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Takes the exclusive lock on `lock_path` (created if missing) and holds
/// it while the returned file is open. `Ok(None)`: another open file
/// (another process, or another handle in this one) holds it.
pub(crate) fn lock_exclusive(lock_path: &Path) -> io::Result<Option<File>> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(lock))
}
