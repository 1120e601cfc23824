//! The primary's WAL stream to its standby: woken by appends, a bounded
//! window of batches in flight, resumed from the standby's flushed LSN
//! after every reconnect, with capped exponential backoff.

use super::Msg;
use super::restart_point::RestartPoint;
use crate::config::Config;
use crate::error::TransportError;
use crate::node::{Event, StandbyPositions};
use crate::replicator::Health;
use crate::transport::{Header, Peer, WalAck, WalBatch};
use crate::types::{Epoch, Lsn};
use crate::wal::{WalError, WalStore};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

pub(super) struct Ctx {
    pub cfg: Config,
    /// The standby this task serves.
    pub standby: crate::types::NodeId,
    pub wal: Arc<dyn WalStore>,
    pub peer: Arc<dyn Peer>,
    pub tx: mpsc::Sender<Msg>,
    pub health: watch::Receiver<Health>,
    pub last_lsn: watch::Receiver<Lsn>,
    pub header: Header,
    /// The heartbeats reach the standby again: retry without waiting out
    /// the backoff (a restarted standby is streamed to at once).
    pub reachable_again: Arc<Notify>,
    /// We restarted as the primary of our epoch: where our log ended then
    /// (see `restart_point.rs`).
    pub restart_point: Option<Arc<RestartPoint>>,
    pub cancel: CancellationToken,
}

/// How a streaming session ended.
enum End {
    Cancelled,
    Failed {
        error: TransportError,
        progressed: bool,
    },
}

pub(super) fn spawn(mut ctx: Ctx) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = ctx.cfg.reconnect_backoff_min;
        let mut attempts = 0u64;
        loop {
            match session(&mut ctx).await {
                End::Cancelled => return,
                End::Failed { .. } if ctx.cancel.is_cancelled() => return,
                End::Failed { error, progressed } => {
                    let _ = ctx
                        .tx
                        .send(Msg::Event(Event::StreamState {
                            standby: ctx.standby.clone(),
                            up: false,
                        }))
                        .await;
                    match &error {
                        TransportError::StaleEpoch { epoch, leader } => {
                            let leader = leader.as_ref().map(|l| l.id.clone());
                            let event = Event::HigherEpoch {
                                epoch: *epoch,
                                leader,
                            };
                            let _ = ctx.tx.send(Msg::Event(event)).await;
                        }
                        e if e.is_unreachable() => {
                            let _ = ctx
                                .tx
                                .send(Msg::Event(Event::StandbyUnreachable {
                                    standby: ctx.standby.clone(),
                                }))
                                .await;
                        }
                        _ => {}
                    }
                    if progressed {
                        backoff = ctx.cfg.reconnect_backoff_min;
                        attempts = 0;
                    }
                    attempts += 1;
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::info!(peer = %ctx.standby, error = %error, attempts, retry_in_ms = backoff.as_millis() as u64, "WAL stream to standby down; reconnecting");
                    }
                }
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
                _ = ctx.reachable_again.notified() => {}
            }
            backoff = (backoff * 2).min(ctx.cfg.reconnect_backoff_max);
        }
    })
}

fn positions(ack: &WalAck) -> StandbyPositions {
    StandbyPositions {
        written: ack.written,
        flushed: ack.flushed,
        applied: ack.applied,
    }
}

fn batch(ctx: &Ctx, prev: (Lsn, Epoch), records: Vec<crate::Record>) -> WalBatch {
    let (commit_lsn, sync) = {
        let h = ctx.health.borrow();
        (h.commit_lsn, h.sync_state)
    };
    WalBatch {
        header: ctx.header.clone(),
        prev_lsn: prev.0,
        prev_epoch: prev.1,
        records,
        commit_lsn,
        sync,
        last_lsn: ctx.wal.last_lsn(),
        first_lsn: ctx.wal.first_lsn(),
        // Read after the records: a primary persists its confirmation
        // before its first write, so a batch with records never says
        // unconfirmed.
        unconfirmed: !ctx.wal.meta().confirmed,
    }
}

async fn session(ctx: &mut Ctx) -> End {
    let fail = |error, progressed| End::Failed { error, progressed };
    let window = ctx.cfg.max_batches_in_flight;
    let (batches, rx) = mpsc::channel(window);
    let opened = tokio::select! {
        _ = ctx.cancel.cancelled() => return End::Cancelled,
        r = ctx.peer.open_wal_stream(rx) => r,
    };
    let mut acks = match opened {
        Ok(acks) => acks,
        Err(e) => return fail(e, false),
    };
    let first = tokio::select! {
        _ = ctx.cancel.cancelled() => return End::Cancelled,
        r = tokio::time::timeout(ctx.cfg.rpc_timeout, acks.next()) => r,
    };
    let start = match first {
        Ok(Some(Ok(ack))) => ack,
        Ok(Some(Err(e))) => return fail(e, false),
        Ok(None) => {
            return fail(
                TransportError::Unreachable("stream closed at start".into()),
                false,
            );
        }
        Err(_) => return fail(TransportError::Timeout, false),
    };
    if start.epoch > ctx.header.epoch {
        return fail(
            TransportError::StaleEpoch {
                epoch: start.epoch,
                leader: None,
            },
            false,
        );
    }
    let _ = ctx
        .tx
        .send(Msg::Event(Event::StreamState {
            standby: ctx.standby.clone(),
            up: true,
        }))
        .await;
    // Resume from what the standby has durably; the first batch's prev
    // tells it where that is in our log, so it can refuse if its log went
    // elsewhere. A record we do not hold gets epoch 0, which never matches.
    let mut next = start.flushed.next();
    let mut prev = (
        start.flushed,
        ctx.wal.epoch_at(start.flushed).unwrap_or(Epoch::ZERO),
    );
    let restart = ctx.restart_point.clone();
    let lost_records = restart
        .as_ref()
        .is_some_and(|r| r.holds_lost_records(&ctx.standby, start.first, start.written));
    if let Some(r) = restart.as_ref().filter(|_| lost_records) {
        // It holds records past where our log ended at our restart, sent
        // before it and lost by us: epochs cannot tell them from the ones
        // we wrote since. A position it cannot match makes it rejoin, and
        // our history answer tells it to keep nothing after the point.
        tracing::warn!(peer = %ctx.standby, standby_last = %start.written, restart_lsn = ?r.lsn_for(&ctx.standby), "the standby holds records past our log's end at our restart (lost here before they were durable); it must rewind to that point");
        prev = (start.written, Epoch::ZERO);
    }
    tracing::info!(peer = %ctx.standby, from = %next, "streaming WAL to standby");
    let probe = batch(ctx, prev, Vec::new());
    if batches.send(probe).await.is_err() {
        return fail(TransportError::Unreachable("stream closed".into()), false);
    }
    // Batches sent and not yet acknowledged as written: their last LSN and
    // payload bytes. Bounded by count and by bytes (as many as
    // `max_batches_in_flight` batches of `max_batch_bytes`), so batches of
    // one large record each cannot hold that many times a record in the
    // stream's buffers; one batch is always allowed, whatever its size.
    let mut in_flight: VecDeque<(Lsn, usize)> = VecDeque::new();
    let mut in_flight_bytes = 0usize;
    let window_bytes = window.saturating_mul(ctx.cfg.max_batch_bytes);
    let has_room = |in_flight: &VecDeque<(Lsn, usize)>, bytes: usize| {
        in_flight.is_empty() || (in_flight.len() < window && bytes < window_bytes)
    };
    let mut progressed = false;
    let mut too_far_sent = false;
    loop {
        while has_room(&in_flight, in_flight_bytes) && next <= ctx.wal.last_lsn() && !too_far_sent {
            let records =
                match ctx
                    .wal
                    .read(next, ctx.cfg.max_batch_records, ctx.cfg.max_batch_bytes)
                {
                    Ok(r) if r.is_empty() => break,
                    Ok(r) => r,
                    Err(WalError::NotRetained { .. }) => {
                        // Tell the standby where our log starts; it answers
                        // "too far behind" and resyncs from a snapshot.
                        let b = batch(ctx, prev, Vec::new());
                        too_far_sent = true;
                        if batches.send(b).await.is_err() {
                            return fail(
                                TransportError::Unreachable("stream closed".into()),
                                progressed,
                            );
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, from = %next, "cannot read WAL to stream it");
                        return fail(TransportError::Remote(e.to_string()), progressed);
                    }
                };
            let last = records.last().expect("non-empty");
            let new_prev = (last.lsn, last.epoch);
            let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
            let b = batch(ctx, prev, records);
            if batches.send(b).await.is_err() {
                return fail(
                    TransportError::Unreachable("stream closed".into()),
                    progressed,
                );
            }
            in_flight.push_back((new_prev.0, bytes));
            in_flight_bytes += bytes;
            prev = new_prev;
            next = new_prev.0.next();
        }
        let can_send = has_room(&in_flight, in_flight_bytes);
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return End::Cancelled,
            ack = acks.next() => match ack {
                Some(Ok(ack)) if ack.epoch > ctx.header.epoch => {
                    // The peer moved to a newer epoch (it was promoted while
                    // this stream stayed open, e.g. across our pause). The
                    // node decides what that means (it steps down; the
                    // positions never commit our records); this stream has
                    // nothing more to send to a peer that will refuse it.
                    let event = Event::StandbyProgress {
                        standby: ctx.standby.clone(),
                        positions: positions(&ack),
                        epoch: ack.epoch,
                    };
                    let _ = ctx.tx.send(Msg::Event(event)).await;
                    return fail(
                        TransportError::StaleEpoch {
                            epoch: ack.epoch,
                            leader: None,
                        },
                        progressed,
                    );
                }
                Some(Ok(ack)) => {
                    if !progressed && !lost_records && let Some(r) = &restart {
                        // Our first batch (the probe) was accepted: what it
                        // holds from now on came from this life.
                        r.reached_by_stream(&ctx.standby);
                    }
                    while in_flight.front().is_some_and(|(l, _)| *l <= ack.written) {
                        let (_, bytes) = in_flight.pop_front().expect("checked above");
                        in_flight_bytes -= bytes;
                    }
                    progressed = true;
                    let event = Event::StandbyProgress {
                        standby: ctx.standby.clone(),
                        positions: positions(&ack),
                        epoch: ack.epoch,
                    };
                    if ctx.tx.send(Msg::Event(event)).await.is_err() {
                        return End::Cancelled;
                    }
                    if too_far_sent && ack.flushed.next() >= ctx.wal.first_lsn() {
                        // The standby answered "too far behind" with an ack:
                        // it restored a snapshot while this stream was open
                        // and now holds what follows our oldest record. This
                        // session's cursor is behind it; start another from
                        // the standby's position.
                        return fail(
                            TransportError::Remote(format!(
                                "the standby moved to {} (a snapshot) while this stream pointed at {next}; restarting the stream from there",
                                ack.flushed
                            )),
                            true,
                        );
                    }
                }
                Some(Err(e)) => return fail(e, progressed),
                None => return fail(TransportError::Unreachable("standby closed the stream".into()), progressed),
            },
            changed = ctx.last_lsn.changed(), if can_send => {
                if changed.is_err() {
                    return End::Cancelled;
                }
            }
        }
    }
}
