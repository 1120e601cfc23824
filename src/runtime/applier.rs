//! The task that applies committed records to the state machine, in
//! order, exactly once.

use super::Msg;
use super::tasks::Tasks;
use crate::node::Event;
use crate::state_machine::StateMachine;
use crate::types::Lsn;
use crate::wal::WalStore;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

const APPLY_CHUNK_RECORDS: usize = 256;
const APPLY_CHUNK_BYTES: usize = 4 << 20;

pub(super) fn spawn(
    wal: Arc<dyn WalStore>,
    sm: Arc<dyn StateMachine>,
    commit: watch::Receiver<Lsn>,
    tx: mpsc::Sender<Msg>,
) -> Tasks {
    let events = tx.clone();
    super::tasks::spawn_watch_worker(commit, tx, failed, move |target| {
        let (wal, sm, events) = (wal.clone(), sm.clone(), events.clone());
        async move {
            apply_up_to(wal.as_ref(), sm.as_ref(), target, &events).await?;
            Ok(false)
        }
    })
}

async fn apply_up_to(
    wal: &dyn WalStore,
    sm: &dyn StateMachine,
    target: Lsn,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), String> {
    loop {
        let applied = sm.applied_lsn();
        if applied >= target {
            return Ok(());
        }
        let records = wal
            .read(applied.next(), APPLY_CHUNK_RECORDS, APPLY_CHUNK_BYTES)
            .map_err(|e| format!("reading record {} to apply it: {e}", applied.next()))?;
        if records.is_empty() {
            return Err(format!(
                "record {} is committed but not in the WAL (last {})",
                applied.next(),
                wal.last_lsn()
            ));
        }
        let mut last = applied;
        for r in records.iter().take_while(|r| r.lsn <= target) {
            assert_eq!(r.lsn, last.next(), "WAL read returned records out of order");
            sm.apply(r.lsn, &r.payload)
                .map_err(|e| format!("state machine failed at {}: {e}", r.lsn))?;
            last = r.lsn;
        }
        if tx
            .send(Msg::Event(Event::Applied { lsn: last }))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}

fn failed(reason: String) -> Msg {
    Msg::Event(Event::WalFailed { reason })
}
