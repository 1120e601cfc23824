//! Makes appended records durable off the actor: one fsync covers every
//! append that arrived while the previous one ran (group commit).

use super::Msg;
use super::tasks::Tasks;
use crate::node::Event;
use crate::types::Lsn;
use crate::wal::WalStore;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub(super) fn spawn(
    wal: Arc<dyn WalStore>,
    appended: watch::Receiver<Lsn>,
    tx: mpsc::Sender<Msg>,
) -> Tasks {
    let events = tx.clone();
    super::tasks::spawn_watch_worker(appended, tx, failed, move |target| {
        let (wal, events) = (wal.clone(), events.clone());
        async move {
            if wal.flushed_lsn() >= target && wal.flushed_lsn() >= wal.last_lsn() {
                return Ok(false);
            }
            // Not cancellation-safe by design: an fsync in progress runs to
            // completion and its result is always reported.
            let w = wal.clone();
            let flushed = super::tasks::run_blocking(wal.may_block(), move || w.sync())
                .await?
                .map_err(|e| format!("WAL fsync failed: {e}"))?;
            let sent = events
                .send(Msg::Event(Event::LocalFlushed { lsn: flushed }))
                .await;
            Ok(sent.is_ok())
        }
    })
}

fn failed(reason: String) -> Msg {
    Msg::Event(Event::WalFailed { reason })
}
