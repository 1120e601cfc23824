//! Makes appended records durable off the actor: one fsync covers every
//! append that arrived while the previous one ran (group commit).

use super::Msg;
use super::actor::Tasks;
use crate::node::Event;
use crate::types::Lsn;
use crate::wal::WalStore;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub(super) fn spawn(
    wal: Arc<dyn WalStore>,
    mut appended: watch::Receiver<Lsn>,
    tx: mpsc::Sender<Msg>,
) -> Tasks {
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let handle = tokio::spawn(async move {
        loop {
            let target = *appended.borrow_and_update();
            if wal.flushed_lsn() < target || wal.flushed_lsn() < wal.last_lsn() {
                let w = wal.clone();
                // Not cancellation-safe by design: an fsync in progress runs
                // to completion and its result is always reported.
                match super::run_blocking(wal.may_block(), move || w.sync()).await {
                    Ok(Ok(flushed)) => {
                        if tx
                            .send(Msg::Event(Event::LocalFlushed { lsn: flushed }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "WAL fsync failed; the node stops acknowledging writes");
                        let reason = e.to_string();
                        let _ = tx.send(Msg::Event(Event::WalFailed { reason })).await;
                        return;
                    }
                    Err(reason) => {
                        let _ = tx.send(Msg::Event(Event::WalFailed { reason })).await;
                        return;
                    }
                }
            }
            tokio::select! {
                _ = token.cancelled() => return,
                changed = appended.changed() => if changed.is_err() { return },
            }
        }
    });
    Tasks::new(cancel, vec![handle])
}
