//! What a node leaves on disk: WAL segments, KV snapshot, log.

use super::*;
use std::path::{Path, PathBuf};
use walrep_daemon::process::NodeProc;

/// The newest segment file of a node's WAL.
pub fn newest_segment(data_dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal").join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a WAL segment")
}

/// Kills node `i`, zeroes the last `bytes` written bytes of its newest WAL
/// segment (a write torn by the crash: segments reserve their size, so
/// what never reached the disk reads as zeros) and restarts it.
pub fn kill_and_tear_the_wal_tail(c: &mut Cluster, i: usize, bytes: usize) {
    use std::os::unix::fs::FileExt;
    c.nodes[i].kill();
    let seg = newest_segment(&c.data_dir(i));
    let data = std::fs::read(&seg).unwrap();
    let end = data
        .iter()
        .rposition(|&b| b != 0)
        .expect("a written record")
        + 1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .write_all_at(&vec![0; bytes], (end - bytes) as u64)
        .unwrap();
    c.nodes[i].spawn().expect("walrep restarts");
}

pub fn log_says(node: &NodeProc, what: &str) -> bool {
    std::fs::read_to_string(&node.log).unwrap().contains(what)
}

/// The LSN the KV snapshot in `data_dir` covers.
pub fn kv_snapshot_lsn(data_dir: &Path) -> u64 {
    std::fs::read(data_dir.join("kv").join("kv.snapshot"))
        .ok()
        .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
        .unwrap_or(0)
}
