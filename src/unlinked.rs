//! Closing the last descriptor of an unlinked file off the calling thread:
//! that close frees the file's blocks and cached pages, which a node's
//! runtime thread must not wait for. Shared by the WAL (segments a trim
//! removed under a read) and the runtime (snapshot files).

/// Closes `file`, the last descriptor of a file already unlinked (`path`,
/// for the tests), on a blocking thread where the disk may block. The
/// unlink is cheap while a descriptor is open, so whoever removes the file
/// does it first and the name is free at once; the close of the last descriptor is
/// what frees the blocks and cached pages, ~0.45 s for 2 GiB on the
/// development VM, which on the node's task would stall heartbeats. If the
/// runtime is shutting down and the thread never runs, the descriptor is
/// closed wherever the work is dropped: the file is gone either way.
pub(crate) fn close_off_thread(
    file: impl Send + 'static,
    #[cfg_attr(not(test), allow(unused_variables))] path: &std::path::Path,
    may_block: bool,
) {
    #[cfg(test)]
    let path = path.to_path_buf();
    let close = move || {
        drop(file);
        #[cfg(test)]
        note_closed(&path);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if may_block => drop(rt.spawn_blocking(close)),
        _ => close(),
    }
}

/// Where each file passed to `close_off_thread` was closed, and by which
/// thread: the tests check that it was not the node's task.
#[cfg(test)]
static CLOSED_ON: std::sync::Mutex<Vec<(std::path::PathBuf, std::thread::ThreadId)>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(test)]
fn note_closed(path: &std::path::Path) {
    CLOSED_ON
        .lock()
        .unwrap()
        .push((path.to_path_buf(), std::thread::current().id()));
}

/// The thread that closed `path`'s last descriptor; panics if none did
/// within 10 s.
#[cfg(test)]
pub(crate) async fn closing_of(path: &std::path::Path) -> std::thread::ThreadId {
    let found = async {
        loop {
            let found = CLOSED_ON
                .lock()
                .unwrap()
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, t)| *t);
            if let Some(t) = found {
                return t;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), found)
        .await
        .unwrap_or_else(|_| panic!("{} was never closed", path.display()))
}
