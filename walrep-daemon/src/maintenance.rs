//! Maintenance mode kept on disk: `DIR/failover-paused` exists while
//! automatic failover is paused on this node (`POST /maintenance` creates
//! it, `DELETE /maintenance` removes it), so a node restarted during
//! maintenance stays paused. The library's pause lives in the process
//! only; the node applies the file's at start, before its standby could
//! have heard from a primary (it may promote only after that contact).

use crate::error::DaemonError;
use std::path::{Path, PathBuf};

/// The file's name in the data directory.
pub const FILE_NAME: &str = "failover-paused";

/// `DIR/failover-paused`.
#[derive(Clone, Debug)]
pub struct PauseFile(PathBuf);

impl PauseFile {
    pub fn in_dir(dir: &Path) -> PauseFile {
        PauseFile(dir.join(FILE_NAME))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Whether failover was left paused.
    pub fn is_set(&self) -> bool {
        self.0.exists()
    }

    /// Creates (`paused`) or removes the file, durably: the directory is
    /// synced so a crash right after cannot undo it.
    pub fn set(&self, paused: bool) -> Result<(), DaemonError> {
        let what = |verb: &str| format!("{verb} {} (maintenance mode)", self.0.display());
        if paused {
            let file =
                std::fs::File::create(&self.0).map_err(|e| DaemonError::io(what("creating"), e))?;
            file.sync_all()
                .map_err(|e| DaemonError::io(what("syncing"), e))?;
        } else {
            match std::fs::remove_file(&self.0) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(DaemonError::io(what("removing"), e)),
            }
        }
        let dir = self.0.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| DaemonError::io(format!("syncing {}", dir.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_follows_the_pause() {
        let dir = tempfile::tempdir().unwrap();
        let f = PauseFile::in_dir(dir.path());
        assert!(!f.is_set());
        f.set(true).unwrap();
        assert!(f.is_set() && dir.path().join(FILE_NAME).exists());
        f.set(true).unwrap();
        f.set(false).unwrap();
        assert!(!f.is_set());
        f.set(false).unwrap();
    }
}
