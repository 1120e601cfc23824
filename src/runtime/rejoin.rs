//! The work of a rejoin (G4): a fenced node reads the primary's epoch
//! history, hands it to the node (`Msg::RejoinPlan` →
//! `Event::PeerLogFetched`), and carries out the plan it gets back
//! (`RejoinPlan`): the records after the divergence point go to
//! `rewound/` and out of the WAL, and a snapshot of the primary is restored
//! when the plan says so. Where the logs part and whether a snapshot is
//! needed is the node's decision, not this task's.

use super::tasks::Tasks;
use super::{Metrics, Msg};
use crate::config::Config;
use crate::error::TransportError;
use crate::node::{Event, PeerLog, RejoinPlan};
use crate::state_machine::{Snapshot, StateMachine};
use crate::transport::{Header, Peer};
use crate::types::{Epoch, Lsn, NodeId};
use crate::wal::{WalStore, record};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(super) struct Ctx {
    pub cfg: Config,
    pub wal: Arc<dyn WalStore>,
    pub sm: Arc<dyn StateMachine>,
    pub peer: Arc<dyn Peer>,
    pub tx: mpsc::Sender<Msg>,
    pub header: Header,
    pub leader: NodeId,
    pub applier: Option<Tasks>,
    pub rewound_dir: Option<PathBuf>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
}

/// Where a finished rejoin left the node: a standby of `leader` at `epoch`.
pub(crate) struct Outcome {
    pub epoch: Epoch,
    pub leader: NodeId,
}

pub(super) fn spawn(mut ctx: Ctx) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Nothing may apply records while the log under it is rewritten.
        if let Some(applier) = ctx.applier.take() {
            applier.stop().await;
        }
        let mut backoff = ctx.cfg.reconnect_backoff_min;
        let mut attempt = 0u32;
        let mut header = ctx.header.clone();
        loop {
            attempt += 1;
            let result = tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                r = attempt_rejoin(&ctx, &mut header) => r,
            };
            match result {
                Ok(Some(outcome)) => {
                    let _ = ctx.tx.send(Msg::RejoinDone(Ok(outcome))).await;
                    return;
                }
                Ok(None) => {}
                Err(Fatal(reason)) => {
                    let _ = ctx.tx.send(Msg::RejoinDone(Err(reason))).await;
                    return;
                }
            }
            if attempt == 1 || attempt.is_power_of_two() {
                tracing::info!(
                    attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    "rejoin waiting for the primary"
                );
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(ctx.cfg.reconnect_backoff_max);
        }
    })
}

/// A failure that retrying will not fix (the disk).
struct Fatal(String);

/// One try: `Ok(None)` when the primary is not ready (retry later).
async fn attempt_rejoin(ctx: &Ctx, header: &mut Header) -> Result<Option<Outcome>, Fatal> {
    let theirs = match ctx.peer.history(header.clone()).await {
        Ok(h) => h,
        Err(TransportError::StaleEpoch { epoch, leader }) => {
            // A newer epoch than the one we are rejoining for: adopt it
            // (the node persists it) and ask again with it. Not an
            // invariant: the epoch comes off the wire, and a refusal whose
            // epoch could not be read says 0, which must not lower ours.
            header.epoch = header.epoch.max(epoch);
            let leader = leader.map(|l| l.id);
            let _ = ctx
                .tx
                .send(Msg::Event(Event::HigherEpoch { epoch, leader }))
                .await;
            return Ok(None);
        }
        Err(e) => {
            tracing::debug!(error = %e, "rejoin: primary not reachable");
            return Ok(None);
        }
    };
    let (reply, plan) = oneshot::channel();
    let peer = PeerLog {
        epoch: theirs.epoch,
        role: theirs.role,
        history: theirs.history,
        first_lsn: theirs.first_lsn,
        last_lsn: theirs.last_lsn,
    };
    if ctx.tx.send(Msg::RejoinPlan { peer, reply }).await.is_err() {
        return Ok(None);
    }
    let (truncate_after, resync, epoch) = match plan.await {
        Ok(RejoinPlan::Rewind {
            truncate_after,
            resync,
            epoch,
        }) => (truncate_after, resync, epoch),
        Ok(RejoinPlan::Wait) | Err(_) => return Ok(None),
    };
    let wal = ctx.wal.clone();
    let mut dropped = 0;
    if let Some(point) = truncate_after {
        let our_last = wal.last_lsn();
        dropped = keep_rewound(
            wal.as_ref(),
            point,
            ctx.rewound_dir.as_deref(),
            wal.epoch_at(our_last).unwrap_or(Epoch::ZERO),
        )
        .map_err(|e| Fatal(format!("writing rewound records: {e}")))?;
        let removed = wal
            .truncate_after(point)
            .map_err(|e| Fatal(format!("truncating the WAL after {point}: {e}")))?;
        ctx.metrics.rewound(removed);
        tracing::warn!(
            divergence = %point,
            records_dropped = removed,
            kept_in = ?ctx.rewound_dir,
            "rewound the WAL: records after the divergence point were never part of the primary's log"
        );
    }
    if resync {
        let snap = match ctx.peer.fetch_snapshot(header.clone()).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot transfer failed; retrying");
                return Ok(None);
            }
        };
        let (sm, wal) = (ctx.sm.clone(), ctx.wal.clone());
        let may_block = wal.may_block();
        let restored = super::tasks::run_blocking(may_block, move || -> Result<(), String> {
            sm.restore(Snapshot {
                lsn: snap.lsn,
                data: snap.data,
            })
            .map_err(|e| format!("state machine restore: {e}"))?;
            wal.reset(snap.lsn, snap.epoch)
                .map_err(|e| format!("WAL reset to {}: {e}", snap.lsn))
        })
        .await
        .map_err(Fatal)?;
        restored.map_err(Fatal)?;
        ctx.metrics.snapshot_resync();
        tracing::info!(lsn = %ctx.sm.applied_lsn(), "restored from snapshot");
    }
    tracing::info!(leader = %ctx.leader, %epoch, records_dropped = dropped, "rejoined as standby");
    Ok(Some(Outcome {
        epoch,
        leader: ctx.leader.clone(),
    }))
}

/// Writes the records after `point` to `rewound/<epoch>-<from>-<to>.wal`
/// (same frames as the WAL) and returns how many there were. Without a
/// directory they are only counted.
fn keep_rewound(
    wal: &dyn WalStore,
    point: Lsn,
    dir: Option<&Path>,
    epoch: Epoch,
) -> std::io::Result<u64> {
    let last = wal.last_lsn();
    let count = last.0 - point.0;
    let Some(dir) = dir else { return Ok(count) };
    std::fs::create_dir_all(dir)?;
    let name = format!("epoch{}-{:020}-{:020}.wal", epoch.0, point.0 + 1, last.0);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let mut next = point.next();
    while next <= last {
        let records = wal
            .read(next, 1024, 4 << 20)
            .map_err(std::io::Error::other)?;
        if records.is_empty() {
            break;
        }
        let mut buf = Vec::new();
        for r in &records {
            record::encode(r, &mut buf);
        }
        file.write_all(&buf)?;
        next = records.last().expect("non-empty").lsn.next();
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(&name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(count)
}
