//! The task that applies committed records to the state machine, in
//! order, exactly once: one `StateMachine::apply_batch` per chunk read
//! from the WAL, on a blocking thread (inline under simulation, see
//! `run_blocking`, and for a small chunk the engine says it can apply at
//! once, `StateMachine::can_apply_inline`); the engine's outputs go to
//! the actor with the applied
//! position (`Msg::Applied`), for the writers waiting on them.

use super::Msg;
use super::tasks::Tasks;
use crate::node::Event;
use crate::state_machine::{INLINE_APPLY_MAX_BYTES, StateMachine};
use crate::types::{Lsn, Record};
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
            apply_up_to(&wal, &sm, target, &events).await?;
            Ok(false)
        }
    })
}

async fn apply_up_to(
    wal: &Arc<dyn WalStore>,
    sm: &Arc<dyn StateMachine>,
    target: Lsn,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), String> {
    loop {
        let applied = sm.applied_lsn();
        if applied >= target {
            return Ok(());
        }
        let mut records = wal
            .read(applied.next(), APPLY_CHUNK_RECORDS, APPLY_CHUNK_BYTES)
            .map_err(|e| format!("reading record {} to apply it: {e}", applied.next()))?;
        if records.is_empty() {
            return Err(format!(
                "record {} is committed but not in the WAL (last {})",
                applied.next(),
                wal.last_lsn()
            ));
        }
        records.retain(|r| r.lsn <= target);
        for (r, lsn) in records.iter().zip(applied.0 + 1..) {
            assert_eq!(r.lsn, Lsn(lsn), "WAL read returned records out of order");
        }
        let last = records.last().map_or(applied, |r| r.lsn);
        let payload: usize = records.iter().map(|r| r.payload.len()).sum();
        // On a blocking thread unless the engine can apply this small
        // chunk at once (an in-memory WAL, under simulation, applies
        // everything inline anyway).
        let inline = wal.may_block()
            && payload <= INLINE_APPLY_MAX_BYTES
            && sm.can_apply_inline(&batch_of(&records));
        let off_thread = wal.may_block() && !inline;
        let sm2 = sm.clone();
        let outputs = super::tasks::run_blocking(off_thread, move || {
            let batch = batch_of(&records);
            let outputs = sm2.apply_batch(&batch).map_err(|e| {
                format!(
                    "state machine failed applying {}..={}: {}",
                    batch[0].0,
                    last,
                    e.chain()
                )
            })?;
            if outputs.len() != batch.len() {
                return Err(format!(
                    "state machine returned {} outputs for {} records ({}..={})",
                    outputs.len(),
                    batch.len(),
                    batch[0].0,
                    last
                ));
            }
            Ok(outputs)
        })
        .await??;
        if tx.send(Msg::Applied { lsn: last, outputs }).await.is_err() {
            return Ok(());
        }
        if inline {
            // An apply on the runtime's thread awaited nothing: let the
            // actor (heartbeats, the stream) run before the next chunk of
            // a backlog.
            tokio::task::yield_now().await;
        }
    }
}

/// The engine's view of `records`: each one's LSN and payload.
fn batch_of(records: &[Record]) -> Vec<(Lsn, &[u8])> {
    records.iter().map(|r| (r.lsn, &r.payload[..])).collect()
}

fn failed(reason: String) -> Msg {
    Msg::Event(Event::WalFailed { reason })
}
