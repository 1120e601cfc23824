//! The standby's batch check (G3) and the task that applies committed
//! records to the state machine, in order, exactly once.

use super::Msg;
use super::actor::Tasks;
use crate::node::Event;
use crate::state_machine::StateMachine;
use crate::transport::{Refusal, RefusalKind, WalBatch};
use crate::types::{Epoch, Lsn, Record};
use crate::wal::WalStore;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Checks `batch` against our log and returns the records that are new.
/// Records we already hold are skipped if they match; a batch that does not
/// start inside our log, or that disagrees with it, is refused whole.
pub(super) fn check_batch<'b>(
    wal: &dyn WalStore,
    batch: &'b WalBatch,
) -> Result<&'b [Record], Refusal> {
    let last = wal.last_lsn();
    let refuse = |kind, message: String| Err(Refusal::new(kind, message, Epoch::ZERO));
    let brings_next = batch.records.first().is_some_and(|r| r.lsn <= last.next());
    if batch.first_lsn > last.next() && !brings_next {
        return refuse(
            RefusalKind::TooFarBehind,
            format!(
                "this standby needs records from {} but the primary keeps only {} onwards; resyncing from a snapshot",
                last.next(),
                batch.first_lsn
            ),
        );
    }
    if batch.prev_lsn > last {
        return refuse(
            RefusalKind::Gap,
            format!(
                "batch starts after record {} but this standby's log ends at {last}; resend from {}",
                batch.prev_lsn,
                last.next()
            ),
        );
    }
    let ours = wal.epoch_at(batch.prev_lsn);
    if ours.is_some_and(|e| e != batch.prev_epoch) {
        return refuse(
            RefusalKind::Diverged,
            format!(
                "record {} has epoch {} here but {} on the primary; rewinding",
                batch.prev_lsn,
                ours.unwrap_or(Epoch::ZERO),
                batch.prev_epoch
            ),
        );
    }
    if batch.last_lsn < last {
        // We hold records the primary does not have at all.
        return refuse(
            RefusalKind::Diverged,
            format!(
                "this node holds records up to {last} but the primary's log ends at {}; rewinding",
                batch.last_lsn
            ),
        );
    }
    let mut first_new = batch.records.len();
    for (i, r) in batch.records.iter().enumerate() {
        if r.lsn > last {
            first_new = i;
            break;
        }
        let ours = wal.epoch_at(r.lsn);
        if ours.is_some_and(|e| e != r.epoch) {
            return refuse(
                RefusalKind::Diverged,
                format!(
                    "record {} has epoch {} here but {} on the primary; rewinding",
                    r.lsn,
                    ours.unwrap_or(Epoch::ZERO),
                    r.epoch
                ),
            );
        }
    }
    Ok(&batch.records[first_new..])
}

const APPLY_CHUNK_RECORDS: usize = 256;
const APPLY_CHUNK_BYTES: usize = 4 << 20;

pub(super) fn spawn(
    wal: Arc<dyn WalStore>,
    sm: Arc<dyn StateMachine>,
    commit: watch::Receiver<Lsn>,
    tx: mpsc::Sender<Msg>,
) -> Tasks {
    let events = tx.clone();
    super::spawn_watch_worker(commit, tx, move |target| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::SyncState;
    use crate::transport::Header;
    use crate::types::NodeId;
    use crate::wal::MemWal;
    use bytes::Bytes;

    fn rec(lsn: u64, epoch: u64) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(epoch),
            payload: Bytes::from_static(b"p"),
        }
    }

    /// A standby log holding 1..=3 in epoch 1.
    fn log() -> MemWal {
        let wal = MemWal::new();
        wal.append(&[rec(1, 1), rec(2, 1), rec(3, 1)]).unwrap();
        wal
    }

    fn batch(prev: (u64, u64), records: Vec<Record>, primary_last: u64, first: u64) -> WalBatch {
        WalBatch {
            header: Header {
                epoch: Epoch(2),
                node_id: NodeId::from("p"),
                ..Header::default()
            },
            prev_lsn: Lsn(prev.0),
            prev_epoch: Epoch(prev.1),
            records,
            commit_lsn: Lsn::ZERO,
            sync: SyncState::Sync,
            last_lsn: Lsn(primary_last),
            first_lsn: Lsn(first),
        }
    }

    #[test]
    fn a_contiguous_batch_is_accepted_whole() {
        let b = batch((3, 1), vec![rec(4, 1), rec(5, 2)], 5, 1);
        assert_eq!(check_batch(&log(), &b).unwrap(), &b.records[..]);
    }

    #[test]
    fn redelivered_records_are_skipped() {
        let b = batch((1, 1), vec![rec(2, 1), rec(3, 1), rec(4, 1)], 4, 1);
        assert_eq!(check_batch(&log(), &b).unwrap(), &b.records[2..]);
    }

    #[test]
    fn a_gap_is_refused() {
        let b = batch((5, 1), vec![rec(6, 1)], 6, 1);
        assert_eq!(check_batch(&log(), &b).unwrap_err().kind, RefusalKind::Gap);
    }

    #[test]
    fn an_epoch_mismatch_at_prev_is_refused_as_divergence() {
        let b = batch((3, 2), vec![rec(4, 2)], 4, 1);
        assert_eq!(
            check_batch(&log(), &b).unwrap_err().kind,
            RefusalKind::Diverged
        );
    }

    #[test]
    fn a_redelivered_record_with_another_epoch_is_refused_as_divergence() {
        let b = batch((1, 1), vec![rec(2, 2)], 2, 1);
        assert_eq!(
            check_batch(&log(), &b).unwrap_err().kind,
            RefusalKind::Diverged
        );
    }

    #[test]
    fn records_the_primary_never_had_are_divergence() {
        let b = batch((2, 1), Vec::new(), 2, 1);
        assert_eq!(
            check_batch(&log(), &b).unwrap_err().kind,
            RefusalKind::Diverged
        );
    }

    #[test]
    fn a_primary_that_no_longer_has_our_next_record_sends_us_to_a_snapshot() {
        let b = batch((3, 1), Vec::new(), 100, 50);
        assert_eq!(
            check_batch(&log(), &b).unwrap_err().kind,
            RefusalKind::TooFarBehind
        );
    }
}
