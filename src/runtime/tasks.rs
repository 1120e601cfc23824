//! Task plumbing shared by the runtime's tasks: a group of tasks stopped
//! together, a worker woken by a watch, and blocking work that stays
//! reproducible under simulation.

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Tasks started together and stopped together.
pub(crate) struct Tasks {
    cancel: CancellationToken,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    pub(crate) fn new(cancel: CancellationToken, handles: Vec<JoinHandle<()>>) -> Tasks {
        Tasks { cancel, handles }
    }

    /// Tells every task to stop now; `stop` then waits for them. A task
    /// told so sends nothing more (a new set started after it must not
    /// see its last words after its own).
    pub(crate) fn cancel_now(&self) {
        self.cancel.cancel();
    }

    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Runs `f` on the blocking pool when the WAL may block, inline otherwise
/// (an in-memory WAL under simulation, where thread scheduling would make
/// runs irreproducible).
pub(crate) async fn run_blocking<T: Send + 'static>(
    may_block: bool,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, String> {
    if may_block {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| format!("blocking task failed: {e}"))
    } else {
        Ok(f())
    }
}

/// Runs `work` with the watched value now and after every change until
/// cancelled. `work` answers `Ok(true)` to run again at once (more may be
/// due), or an error that stops the node: the WAL or the state machine can
/// no longer be trusted, and `failed(reason)` is sent on `tx` before the
/// worker ends. A change that came before the cancel gets one last pass:
/// a stopped applier still applies what was committed before its stop
/// (whose writers would otherwise wait for the next applier, after a
/// whole rejoin), and a stopped flusher still syncs what was appended;
/// one pass only, so that a value that keeps changing (a node promoted
/// while an old applier stops) cannot hold the stop.
pub(crate) fn spawn_watch_worker<T, M, F, Fut>(
    mut watched: watch::Receiver<T>,
    tx: mpsc::Sender<M>,
    failed: fn(String) -> M,
    mut work: F,
) -> Tasks
where
    T: Clone + Send + Sync + 'static,
    M: Send + 'static,
    F: FnMut(T) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::result::Result<bool, String>> + Send,
{
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let handle = tokio::spawn(async move {
        // Told to stop with a change waiting: one last pass for it.
        let mut last_pass = false;
        loop {
            let value = watched.borrow_and_update().clone();
            match work(value).await {
                Ok(true) if !last_pass => continue,
                Ok(_) => {}
                Err(reason) => {
                    tracing::error!(%reason, "the node stops acknowledging writes");
                    let _ = tx.send(failed(reason)).await;
                    return;
                }
            }
            if last_pass {
                return;
            }
            tokio::select! {
                biased;
                _ = token.cancelled() => {
                    // `Err`: the sender is gone, perhaps after a last
                    // change; one more pass costs nothing then.
                    if matches!(watched.has_changed(), Ok(false)) {
                        return;
                    }
                    last_pass = true;
                }
                changed = watched.changed() => if changed.is_err() { return },
            }
        }
    });
    Tasks::new(cancel, vec![handle])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A worker stopped while a change waits works on that change before
    /// it ends (tried many times: an unordered choice between the change
    /// and the stop would take the stop half the time).
    #[tokio::test]
    async fn a_worker_stopped_with_a_change_waiting_works_on_it_first() {
        for _ in 0..32 {
            let (value, watched) = watch::channel(0u32);
            let (tx, _rx) = mpsc::channel::<String>(1);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let worker = spawn_watch_worker(watched, tx, |reason| reason, {
                let seen = seen.clone();
                move |v| {
                    seen.lock().unwrap().push(v);
                    async { Ok(false) }
                }
            });
            while seen.lock().unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
            value.send(1).unwrap();
            worker.stop().await;
            assert_eq!(*seen.lock().unwrap(), [0, 1], "the change before the stop");
        }
    }

    /// A value that keeps changing (a node promoted, committing, while
    /// an old applier stops) does not hold the stop: one last pass, then
    /// the worker ends.
    #[tokio::test]
    async fn a_worker_whose_value_keeps_changing_still_stops() {
        let (value, watched) = watch::channel(0u32);
        let value = Arc::new(value);
        let (tx, _rx) = mpsc::channel::<String>(1);
        let passes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let worker = spawn_watch_worker(watched, tx, |reason| reason, {
            let (value, passes) = (value.clone(), passes.clone());
            move |v| {
                passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                value.send(v + 1).unwrap();
                async {
                    tokio::task::yield_now().await;
                    Ok(false)
                }
            }
        });
        while passes.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), worker.stop())
            .await
            .expect("the stop waited for the value to stop changing");
    }
}
