//! Makes appended records durable off the actor: one fsync covers every
//! append that arrived while the previous one ran (group commit).
//!
//! On a real disk a second fsync may start while one is in flight, for
//! what was appended since the first started: when the disk stalls, those
//! records are durable soon after the stalled fsync ends rather than one
//! whole fsync later (the WAL publishes the rounds in order, see
//! `wal/file/rounds.rs`). At most `MAX_IN_FLIGHT`; a simulated WAL (whose
//! sync does not block) syncs one at a time, inline, so runs stay
//! reproducible.

use super::Msg;
use super::tasks::Tasks;
use crate::node::Event;
use crate::types::Lsn;
use crate::wal::WalStore;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Fsyncs in flight at once on a WAL that may block.
const MAX_IN_FLIGHT: usize = 2;

pub(super) fn spawn(
    wal: Arc<dyn WalStore>,
    appended: watch::Receiver<Lsn>,
    tx: mpsc::Sender<Msg>,
) -> Tasks {
    if !wal.may_block() {
        return spawn_one_at_a_time(wal, appended, tx);
    }
    let cancel = CancellationToken::new();
    let handle = tokio::spawn(overlapping(wal, appended, tx, cancel.clone()));
    Tasks::new(cancel, vec![handle])
}

/// The flusher on a real disk: starts an fsync whenever something was
/// appended past what the fsyncs in flight cover and fewer than
/// `MAX_IN_FLIGHT` are running. Not cancellation-safe by design: an fsync
/// in progress runs to completion and its result is always reported.
async fn overlapping(
    wal: Arc<dyn WalStore>,
    mut appended: watch::Receiver<Lsn>,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) {
    let mut in_flight: JoinSet<Result<Lsn, String>> = JoinSet::new();
    // What the fsyncs started so far cover at least.
    let mut covered = wal.flushed_lsn();
    let mut reported = Lsn::ZERO;
    let mut stopping = false;
    // The log's flushed position as last seen, and whether it was seen to
    // drop since, below it or below what a sync returned: only a rewind
    // lowers it.
    let mut seen_flushed = covered;
    let mut rewound = false;
    loop {
        let target = *appended.borrow_and_update();
        let flushed_now = wal.flushed_lsn();
        rewound |= flushed_now < seen_flushed.max(reported);
        seen_flushed = flushed_now;
        if (target < covered || rewound) && in_flight.is_empty() {
            // The log was cut below what we covered (a rejoin's rewind):
            // the records appended from here on are new, and what counts as
            // covered and reported starts again from the log's own. The
            // appended position alone may not show the cut: it can move
            // from the old end to as far again before we look. An fsync
            // that ran across the cut may have made new records durable
            // and been dropped as "not above what was reported": the
            // log's own flushed position is reported again, so the node
            // hears of them.
            covered = flushed_now;
            rewound = false;
            let changed = std::mem::replace(&mut reported, flushed_now) != flushed_now;
            if changed && flushed_now > Lsn::ZERO {
                let event = Msg::Event(Event::LocalFlushed { lsn: flushed_now });
                if tx.send(event).await.is_err() {
                    stopping = true;
                }
            }
        }
        if !stopping && in_flight.len() < MAX_IN_FLIGHT && target > covered.max(flushed_now) {
            // The fsync covers at least `target`: it was appended before.
            covered = target;
            let w = wal.clone();
            in_flight
                .spawn_blocking(move || w.sync().map_err(|e| format!("WAL fsync failed: {e}")));
            continue;
        }
        if stopping && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            done = in_flight.join_next(), if !in_flight.is_empty() => {
                let flushed = match done.expect("the set is not empty") {
                    Ok(Ok(lsn)) => lsn,
                    Ok(Err(reason)) => return fail(&tx, reason).await,
                    Err(e) => return fail(&tx, format!("blocking task failed: {e}")).await,
                };
                // Fsyncs may end in any order; the node takes the highest.
                if flushed > reported {
                    reported = flushed;
                    let event = Msg::Event(Event::LocalFlushed { lsn: flushed });
                    if tx.send(event).await.is_err() {
                        stopping = true;
                    }
                }
            }
            _ = cancel.cancelled(), if !stopping => stopping = true,
            changed = appended.changed(), if !stopping => if changed.is_err() { stopping = true },
        }
    }
}

async fn fail(tx: &mpsc::Sender<Msg>, reason: String) {
    tracing::error!(%reason, "the node stops acknowledging writes");
    let _ = tx.send(Msg::Event(Event::WalFailed { reason })).await;
}

/// The flusher on a WAL that does not block (simulation): one sync at a
/// time, inline.
fn spawn_one_at_a_time(
    wal: Arc<dyn WalStore>,
    appended: watch::Receiver<Lsn>,
    tx: mpsc::Sender<Msg>,
) -> Tasks {
    let events = tx.clone();
    super::tasks::spawn_watch_worker(appended, tx, failed, move |target| {
        let (wal, events) = (wal.clone(), events.clone());
        async move {
            let before = wal.flushed_lsn();
            if before >= target && before >= wal.last_lsn() {
                return Ok(false);
            }
            let w = wal.clone();
            let flushed = super::tasks::run_blocking(wal.may_block(), move || w.sync())
                .await?
                .map_err(|e| format!("WAL fsync failed: {e}"))?;
            if flushed <= before {
                // Nothing more is durable (a disk whose fsync has not come
                // back, as a test's `MemWal::hold_syncs` pretends): wait
                // for the next append instead of asking again at once.
                return Ok(false);
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Epoch, Record};
    use crate::wal::gated::{GatedWal, Held};
    use std::time::Duration;

    fn record(lsn: u64) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(1),
            payload: bytes::Bytes::from_static(b"x"),
            request_id: None,
        }
    }

    /// How long a test waits for what must happen before calling it lost.
    const LOST: Duration = Duration::from_secs(10);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_appended_during_a_stalled_fsync_get_an_fsync_of_their_own_at_once() {
        let (wal, mut started) = GatedWal::new(Held::Syncs);
        let wal = Arc::new(wal);
        let _open_at_the_end = wal.open_on_drop();
        let (appended, watched) = watch::channel(Lsn::ZERO);
        let (tx, mut rx) = mpsc::channel(16);
        let flusher = spawn(wal.clone(), watched, tx);

        wal.append(&[record(1)]).unwrap();
        appended.send_replace(Lsn(1));
        let first = tokio::time::timeout(LOST, started.recv()).await.unwrap();
        assert_eq!(first, Some(Lsn(1)));

        // The first fsync is stalled; what is appended now does not wait
        // for it to end before its own starts.
        wal.append(&[record(2)]).unwrap();
        appended.send_replace(Lsn(2));
        let second = tokio::time::timeout(LOST, started.recv())
            .await
            .expect("no second fsync started while the first stalled");
        assert_eq!(second, Some(Lsn(2)));

        wal.open();
        let mut flushed = Lsn::ZERO;
        while flushed < Lsn(2) {
            match tokio::time::timeout(LOST, rx.recv()).await.unwrap() {
                Some(Msg::Event(Event::LocalFlushed { lsn })) => {
                    assert!(lsn > flushed, "flushed positions are reported rising");
                    flushed = lsn;
                }
                Some(_) => panic!("the flusher sent something other than LocalFlushed"),
                None => panic!("the flusher stopped"),
            }
        }
        flusher.stop().await;
    }

    /// Waits for a `LocalFlushed` at `lsn` or past it.
    async fn flushed_to(rx: &mut mpsc::Receiver<Msg>, lsn: Lsn) {
        loop {
            match tokio::time::timeout(LOST, rx.recv()).await {
                Ok(Some(Msg::Event(Event::LocalFlushed { lsn: l }))) if l >= lsn => return,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the flusher stopped"),
                Err(_) => panic!("{lsn} was never reported flushed"),
            }
        }
    }

    /// A flusher on `wal` (one that blocks, so it overlaps fsyncs), after
    /// records 1 to 5 were appended and reported flushed.
    async fn flushed_through_5(
        wal: Arc<dyn WalStore>,
    ) -> (watch::Sender<Lsn>, mpsc::Receiver<Msg>, Tasks) {
        let (appended, watched) = watch::channel(Lsn::ZERO);
        let (tx, mut rx) = mpsc::channel(16);
        let flusher = spawn(wal.clone(), watched, tx);
        wal.append(&(1..=5).map(record).collect::<Vec<_>>())
            .unwrap();
        appended.send_replace(Lsn(5));
        flushed_to(&mut rx, Lsn(5)).await;
        (appended, rx, flusher)
    }

    fn blocking_mem_wal() -> Arc<crate::wal::MemWal> {
        let wal = Arc::new(crate::wal::MemWal::new());
        wal.set_may_block(true);
        wal
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_appended_after_a_rewind_below_what_was_flushed_are_flushed_and_reported() {
        let wal = blocking_mem_wal();
        let (appended, mut rx, flusher) = flushed_through_5(wal.clone()).await;
        // A rejoin cuts the log after 2; the new primary's 3 and 4 follow.
        wal.truncate_after(Lsn(2)).unwrap();
        appended.send_replace(Lsn(2));
        wal.append(&[record(3), record(4)]).unwrap();
        appended.send_replace(Lsn(4));
        flushed_to(&mut rx, Lsn(4)).await;
        assert_eq!(wal.flushed_lsn(), Lsn(4));
        flusher.stop().await;
    }

    /// An fsync that started before a rewind and ended after the new
    /// records were appended covers them, but returns less than what was
    /// reported before the cut: the flusher still tells the node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_fsync_that_ran_across_a_rewind_still_gets_its_records_reported() {
        let (wal, mut started) = GatedWal::new(Held::Syncs);
        let wal = Arc::new(wal);
        let _open_at_the_end = wal.open_on_drop();
        wal.open();
        let (appended, mut rx, flusher) = flushed_through_5(wal.clone()).await;
        while started.try_recv().is_ok() {}

        // An fsync for 6 starts and is held; meanwhile the log is cut after
        // 2 and the new primary's 3 and 4 are appended.
        wal.close();
        wal.append(&[record(6)]).unwrap();
        appended.send_replace(Lsn(6));
        let held = tokio::time::timeout(LOST, started.recv()).await.unwrap();
        assert_eq!(held, Some(Lsn(6)));
        wal.truncate_after(Lsn(2)).unwrap();
        wal.append(&[record(3), record(4)]).unwrap();
        wal.open();
        flushed_to(&mut rx, Lsn(4)).await;
        assert_eq!(wal.flushed_lsn(), Lsn(4));
        flusher.stop().await;
    }

    /// The appended position may go from the old end straight back to it
    /// (cut after 2, then 3 to 5 appended again) before the flusher looks:
    /// the new records are still fsynced and reported, not left until the
    /// next append.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rewind_the_appended_position_does_not_show_still_gets_its_records_flushed() {
        let wal = blocking_mem_wal();
        let (appended, mut rx, flusher) = flushed_through_5(wal.clone()).await;
        wal.truncate_after(Lsn(2)).unwrap();
        wal.append(&(3..=5).map(record).collect::<Vec<_>>())
            .unwrap();
        appended.send_replace(Lsn(5));
        flushed_to(&mut rx, Lsn(5)).await;
        assert_eq!(wal.flushed_lsn(), Lsn(5));
        flusher.stop().await;
    }
}
