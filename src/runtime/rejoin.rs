//! The work of a rejoin (G4): a fenced node reads the primary's epoch
//! history, hands it to the node (`Msg::RejoinPlan` →
//! `Event::PeerLogFetched`), and carries out the plan it gets back
//! (`RejoinPlan`): the records after the divergence point go to
//! `rewound/` and out of the WAL, and a snapshot of the primary is restored
//! when the plan says so. Where the logs part and whether a snapshot is
//! needed is the node's decision, not this task's.
//!
//! A snapshot is received into `incoming.snapshot` in the snapshot
//! directory, chunk by chunk, never whole in memory, beside a sidecar
//! holding what the primary announced (`incoming.rs`). A transfer that is
//! cut (the link, the idle timeout, a restart of this node) is resumed by
//! the next attempt, in this run or the next, from the bytes already
//! written, if the primary still serves that snapshot; if not, it starts
//! over. The CRC32C is taken as the bytes are written (`Incoming::crc`);
//! where the file is written with direct I/O (`writes`), each write is
//! also read back from the device, and what the file holds must have the
//! same CRC. Once every byte is in, the file is
//! fsynced and its length and CRC32C checked, and only then is it handed
//! to `StateMachine::restore_file` (which may move it into the engine's
//! store): a short or corrupt transfer restores nothing.

use super::incoming::{self, Incoming};
use super::tasks::Tasks;
use super::{Metrics, Msg};
use crate::config::Config;
use crate::error::TransportError;
use crate::node::{Event, PeerLog, RejoinPlan};
use crate::state_machine::StateMachine;
use crate::transport::{Header, Peer, SnapshotInfo, SnapshotPart, SnapshotRequest};
use crate::types::{Epoch, Lsn, NodeId, RequestIdAt};
use crate::wal::{WalStore, record};
use futures::StreamExt;
use request_ids::request_ids_covered;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use writes::Writes;

pub(super) struct Ctx {
    pub cfg: Config,
    pub wal: Arc<dyn WalStore>,
    pub sm: Arc<dyn StateMachine>,
    /// The leader's peer, as far as the node knows who leads; the rejoin
    /// moves to whichever of `others` answers as the primary instead.
    pub peer: Arc<dyn Peer>,
    pub tx: mpsc::Sender<Msg>,
    pub header: Header,
    pub leader: NodeId,
    /// Every other peer of a cluster, asked in turn when `peer` does not
    /// answer as the primary (the leader unknown, or learned wrong: a
    /// standby of the new epoch may tell a rejoining node the epoch but
    /// not who leads it). Empty for a pair.
    pub others: Vec<(NodeId, Arc<dyn Peer>)>,
    pub applier: Option<Tasks>,
    pub rewound_dir: Option<PathBuf>,
    pub snapshots: Arc<super::Snapshots>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
    /// Held by the blocking work that restores the engine and resets the
    /// WAL: a cancelled rejoin waits for it before it returns, so a node
    /// that stops (and may start again in the same process, on the same
    /// files) never leaves that work running behind it.
    pub restore_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Where a finished rejoin left the node: a standby of `leader` at `epoch`.
pub(crate) struct Outcome {
    pub epoch: Epoch,
    pub leader: NodeId,
    /// After a resync from a snapshot: the request ids of the records it
    /// covers, as the primary listed them (and the WAL store now keeps).
    pub snapshot_ids: Option<Vec<RequestIdAt>>,
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
        // A transfer an earlier run of this node began, if any.
        let dir = ctx.snapshots.dir().to_path_buf();
        let mut incoming =
            super::tasks::run_blocking(ctx.wal.may_block(), move || Incoming::recover(&dir))
                .await
                .ok()
                .flatten();
        let restore_lock = ctx.restore_lock.clone();
        loop {
            attempt += 1;
            let cancel = ctx.cancel.clone();
            let result = tokio::select! {
                _ = cancel.cancelled() => {
                    let _restored = restore_lock.lock().await;
                    return;
                }
                r = attempt_rejoin(&mut ctx, &mut header, &mut incoming) => r,
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

/// The log of the peer that answers as the primary of the highest epoch,
/// at least ours: `ctx.peer` is asked first, then each of `ctx.others` (a
/// cluster's), and the one that wins becomes `ctx.peer` (its id
/// `ctx.leader`). Asking every peer keeps a stale primary of an older
/// epoch, one that has not heard of the newer one yet, from holding the
/// rejoin. With no primary among them, the first answer (the node then
/// waits).
async fn history_of_the_primary(
    ctx: &mut Ctx,
    header: &Header,
) -> Result<crate::transport::HistoryReply, TransportError> {
    let first = ctx.peer.history(header.clone()).await;
    let is_primary = |h: &crate::transport::HistoryReply| {
        h.role == crate::node::RoleKind::Primary && h.epoch >= header.epoch
    };
    if matches!(first, Err(TransportError::StaleEpoch { .. })) || ctx.others.is_empty() {
        return first;
    }
    let mut best: Option<(usize, crate::transport::HistoryReply)> = None;
    for i in 0..ctx.others.len() {
        let peer = ctx.others[i].1.clone();
        match peer.history(header.clone()).await {
            Ok(h) if is_primary(&h) && best.as_ref().is_none_or(|(_, b)| h.epoch > b.epoch) => {
                best = Some((i, h));
            }
            stale @ Err(TransportError::StaleEpoch { .. }) => return stale,
            _ => {}
        }
    }
    match (first, best) {
        (Ok(h), Some((_, b))) if is_primary(&h) && h.epoch >= b.epoch => Ok(h),
        (_, Some((i, b))) => {
            let (id, peer) = ctx.others[i].clone();
            tracing::info!(primary = %id, epoch = %b.epoch, asked_first = %ctx.leader, "rejoin: found the primary among the other peers");
            ctx.others[i] = (ctx.leader.clone(), ctx.peer.clone());
            ctx.leader = id;
            ctx.peer = peer;
            Ok(b)
        }
        (first, None) => first,
    }
}

/// A failure that retrying will not fix (the disk).
struct Fatal(String);

/// One try: `Ok(None)` when the primary is not ready (retry later).
async fn attempt_rejoin(
    ctx: &mut Ctx,
    header: &mut Header,
    incoming: &mut Option<Incoming>,
) -> Result<Option<Outcome>, Fatal> {
    let theirs = match history_of_the_primary(ctx, header).await {
        Ok(h) => h,
        Err(TransportError::StaleEpoch { epoch, leader }) => {
            // A newer epoch than the one we are rejoining for: adopt it
            // (the node persists it) and ask again with it, naming its
            // leader as the refusal did: the leader of our old epoch leads
            // nothing in the new one, and a peer adopts the epoch with the
            // leader our header names. Not an invariant: the epoch comes
            // off the wire, and a refusal whose epoch could not be read
            // says 0, which must not lower ours.
            let leader = leader.map(|l| l.id);
            if epoch > header.epoch {
                header.epoch = epoch;
                // Not ourselves: this rejoining node leads nothing.
                header.leader_id = leader.clone().filter(|l| *l != header.node_id);
            }
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
        unconfirmed: theirs.unconfirmed,
        restart_lsn: theirs.restart_lsn,
    };
    let peer_id = ctx.leader.clone();
    if ctx
        .tx
        .send(Msg::RejoinPlan {
            peer,
            peer_id,
            reply,
        })
        .await
        .is_err()
    {
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
    let mut dropped = 0;
    if let Some(point) = truncate_after {
        let removed;
        (dropped, removed) = rewind(ctx, point).await?;
        ctx.metrics.rewound(removed);
        tracing::warn!(
            divergence = %point,
            records_dropped = removed,
            kept_in = ?ctx.rewound_dir,
            "rewound the WAL: records after the divergence point were never part of the primary's log"
        );
    }
    let mut snapshot_ids = None;
    if resync {
        // A build this node served as primary may hold the engine's file
        // or view still (`StateMachine::snapshot_file`, `snapshot_source`):
        // let go of it first.
        ctx.snapshots.invalidate();
        let restoring = Restoring::for_node(ctx);
        snapshot_ids = resync_from_snapshot(ctx, header, incoming, restoring).await?;
        if snapshot_ids.is_none() {
            return Ok(None);
        }
        // What this node built before is not its state any more.
        ctx.snapshots.invalidate();
        ctx.metrics.snapshot_resync();
    } else if incoming.is_some() {
        // Left by an earlier run; this rejoin needed no snapshot.
        Incoming::discard(incoming, ctx.wal.may_block());
    }
    tracing::info!(leader = %ctx.leader, %epoch, records_dropped = dropped, "rejoined as standby");
    Ok(Some(Outcome {
        epoch,
        leader: ctx.leader.clone(),
        snapshot_ids,
    }))
}

/// Receives the primary's snapshot and the request ids of the records it
/// covers, and has the engine restore it, as `restoring` says; then the
/// WAL store keeps those ids and the WAL starts after the snapshot.
/// Returns the ids; `Ok(None)` when the transfer was cut or refused (the
/// caller retries; the engine's state is as it was).
async fn resync_from_snapshot(
    ctx: &Ctx,
    header: &Header,
    incoming: &mut Option<Incoming>,
    mut restoring: Restoring,
) -> Result<Option<Vec<RequestIdAt>>, Fatal> {
    let started = std::time::Instant::now();
    let received = receive_snapshot(ctx, header, incoming, &mut restoring).await;
    let fetched = match received {
        Ok(Some(info)) => request_ids_covered(ctx, header, info.lsn)
            .await
            .map(|ids| (info, ids)),
        Ok(None) => Err(None),
        Err(fatal) => Err(Some(fatal)),
    };
    let (info, ids) = match fetched {
        Ok(received) => received,
        Err(failed) => {
            // The engine's restore, if one ran, sees its input fail and
            // leaves the state as it was; wait for it before retrying.
            if let Restoring::WhileReceiving(Some(restore)) = restoring {
                restore.abandon().await;
            }
            return failed.map_or(Ok(None), Err);
        }
    };
    let received_ms = started.elapsed().as_millis() as u64;
    let while_receiving = matches!(restoring, Restoring::WhileReceiving(Some(_)));
    tracing::info!(
        lsn = %info.lsn,
        bytes = info.total_bytes,
        received_ms,
        while_receiving,
        "received and checked the snapshot; restoring"
    );
    let started = std::time::Instant::now();
    let path = incoming.take().expect("a received snapshot").path;
    let dir = ctx.snapshots.dir().to_path_buf();
    let (sm, wal) = (ctx.sm.clone(), ctx.wal.clone());
    let announced = info.clone();
    let restored = match restoring {
        Restoring::WhileReceiving(Some(restore)) => {
            let restored = restore.finish().await;
            holding_the_restore_lock(ctx, move || {
                after_restore(restored, &*wal, &dir, &announced, &ids).map(|()| ids)
            })
            .await
        }
        _ => {
            holding_the_restore_lock(ctx, move || {
                restore_received(&*sm, &*wal, &dir, &path, &announced, &ids).map(|()| ids)
            })
            .await
        }
    };
    let ids = restored.and_then(|r| r).map_err(Fatal)?;
    let restore_ms = started.elapsed().as_millis() as u64;
    tracing::info!(lsn = %ctx.sm.applied_lsn(), bytes = info.total_bytes, request_ids = ids.len(), restore_ms, "restored from snapshot");
    Ok(Some(ids))
}

/// Runs `work` (the engine's restore, the WAL's reset or rewind) as blocking work
/// that holds `Ctx::restore_lock` until it ends, so a cancelled rejoin
/// waits for it.
async fn holding_the_restore_lock<T: Send + 'static>(
    ctx: &Ctx,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let held = ctx.restore_lock.clone().lock_owned().await;
    super::tasks::run_blocking(ctx.wal.may_block(), move || {
        let _held = held;
        work()
    })
    .await
}

/// Why a transfer stopped before its end.
enum Stop {
    /// Cut (the link, the idle timeout): what arrived is kept.
    Cut,
    /// The primary broke the protocol or the check failed: what arrived
    /// is dropped.
    Discard,
}

/// Receives the primary's snapshot into the snapshot directory, resuming
/// what `incoming` holds. `Ok(Some(info))` once every byte is in, fsynced
/// and checked against the announced length and CRC (`incoming` then
/// names the file); `Ok(None)` when the transfer was cut or refused (the
/// caller retries: a cut keeps what arrived, a bad transfer drops it).
///
/// The CRC comes either in the announcement or, asked for with
/// `crc_after_data`, in one `SnapshotPart::End` after the last byte (the
/// primary then need not read its file for it first). An `End` anywhere
/// else (before the last byte, twice, after an announced CRC) or data
/// after it breaks the protocol: the transfer starts over. A transfer
/// that ends after its last byte but before its `End` is resumed from its
/// length; the primary then announces the CRC.
async fn receive_snapshot(
    ctx: &Ctx,
    header: &Header,
    incoming: &mut Option<Incoming>,
    restoring: &mut Restoring,
) -> Result<Option<SnapshotInfo>, Fatal> {
    let (snapshot_id, offset) = incoming
        .as_ref()
        .map_or((0, 0), |i| (i.info.id, i.received));
    let req = SnapshotRequest {
        header: header.clone(),
        snapshot_id,
        offset,
        crc_after_data: true,
    };
    let mut parts = match ctx.peer.fetch_snapshot(req).await {
        Ok(parts) => parts,
        Err(e) => {
            tracing::warn!(error = %e, "snapshot request failed; retrying");
            return Ok(None);
        }
    };
    let may_block = ctx.wal.may_block();
    let disk = |e: String| Fatal(format!("writing the received snapshot: {e}"));
    let mut announced = false;
    // The CRC as this transfer's announcement gave it, and as `End` did.
    let mut announced_crc = None;
    let mut end_crc = None;
    // Where the next chunk starts (chunks before it are written or being
    // written), and the CRC32C of the bytes before it.
    let mut queued = 0u64;
    let mut writes: Option<Writes> = None;
    let stop = loop {
        let Some(part) = parts.next().await else {
            break None;
        };
        let part = match part {
            Ok(part) => part,
            Err(e) => {
                tracing::warn!(error = %e, received = queued, "snapshot transfer cut; resuming");
                break Some(Stop::Cut);
            }
        };
        match part {
            SnapshotPart::Info(info) if !announced => {
                announced = true;
                announced_crc = info.crc;
                let resumes = incoming.as_ref().is_some_and(|i| {
                    let same_crc = match (i.info.crc, info.crc) {
                        (Some(ours), Some(theirs)) => ours == theirs,
                        _ => true,
                    };
                    same_crc
                        && (info.id, info.lsn, info.epoch, info.total_bytes, info.offset)
                            == (
                                i.info.id,
                                i.info.lsn,
                                i.info.epoch,
                                i.info.total_bytes,
                                i.received,
                            )
                });
                if resumes {
                    let inc = incoming.as_mut().expect("resumes");
                    inc.info.crc = inc.info.crc.or(info.crc);
                    ctx.metrics.snapshot_resumed(info.offset);
                    tracing::info!(
                        id = info.id,
                        from = info.offset,
                        total = info.total_bytes,
                        "resuming the snapshot transfer"
                    );
                    queued = inc.received;
                    writes = Some(Writes::new(may_block, inc));
                    restoring.start(&ctx.sm, inc, &ctx.restore_lock);
                    continue;
                }
                Incoming::discard(incoming, may_block);
                if info.offset != 0 {
                    tracing::warn!(
                        offset = info.offset,
                        "the primary resumed a snapshot we do not hold; starting over"
                    );
                    return Ok(None);
                }
                let dir = ctx.snapshots.dir().to_path_buf();
                tracing::info!(id = info.id, lsn = %info.lsn, total = info.total_bytes, crc_follows = info.crc.is_none(), "receiving a snapshot");
                let created =
                    super::tasks::run_blocking(may_block, move || Incoming::create(&dir, info))
                        .await
                        .map_err(disk)?
                        .map_err(|e| disk(e.to_string()))?;
                writes = Some(Writes::new(may_block, &created));
                queued = 0;
                restoring.start(&ctx.sm, &created, &ctx.restore_lock);
                *incoming = Some(created);
            }
            SnapshotPart::Info(_) => {
                tracing::warn!(
                    "the primary announced a second snapshot in one transfer; starting over"
                );
                break Some(Stop::Discard);
            }
            SnapshotPart::Data { offset, data } => {
                let (Some(inc), Some(w)) = (incoming.as_mut(), writes.as_mut()) else {
                    tracing::warn!("snapshot data before its description; starting over");
                    return Ok(None);
                };
                let end = offset.saturating_add(data.len() as u64);
                if offset != queued || end > inc.info.total_bytes || end_crc.is_some() {
                    tracing::warn!(
                        offset,
                        expected = queued,
                        total = inc.info.total_bytes,
                        after_end = end_crc.is_some(),
                        "snapshot data out of place; starting over"
                    );
                    break Some(Stop::Discard);
                }
                inc.crc = crc32c::crc32c_append(inc.crc, &data);
                restoring.push(&data).await;
                w.push(offset, data).await.map_err(disk)?;
                ctx.metrics.snapshot_received(end - offset);
                queued = end;
            }
            SnapshotPart::End { crc } => {
                let total = incoming.as_ref().map(|i| i.info.total_bytes);
                if !announced
                    || announced_crc.is_some()
                    || end_crc.is_some()
                    || total != Some(queued)
                {
                    tracing::warn!(
                        received = queued,
                        total,
                        announced_crc,
                        "the snapshot's CRC came where none was due; starting over"
                    );
                    break Some(Stop::Discard);
                }
                end_crc = Some(crc);
            }
        }
    };
    // Whatever happens next, the chunks received are on disk (or the
    // disk failed): `received` and the CRC then agree.
    if let (Some(inc), Some(w)) = (incoming.as_mut(), writes.as_mut()) {
        w.drain().await.map_err(disk)?;
        inc.received = w.done;
    }
    match stop {
        Some(Stop::Discard) => {
            drop(writes);
            Incoming::discard(incoming, may_block);
            return Ok(None);
        }
        Some(Stop::Cut) => return Ok(None),
        None => {}
    }
    let Some(inc) = incoming.as_mut().filter(|_| announced) else {
        return Ok(None);
    };
    if inc.received < inc.info.total_bytes {
        tracing::warn!(
            received = inc.received,
            total = inc.info.total_bytes,
            "snapshot transfer ended early; resuming"
        );
        return Ok(None);
    }
    inc.info.crc = inc.info.crc.or(end_crc);
    let Some(expected_crc) = inc.info.crc else {
        tracing::warn!(
            received = inc.received,
            "snapshot transfer ended after its last byte but before its CRC; resuming"
        );
        return Ok(None);
    };
    let (file, total, crc) = (inc.file.clone(), inc.info.total_bytes, inc.crc);
    // Written with direct I/O: check what the device holds, not only what
    // arrived; read back as the writes went, or, after a resume, now.
    let read_back = match writes.as_ref() {
        Some(w) if w.direct() => Some(w.crc_on_disk().ok_or_else(|| inc.path.clone())),
        _ => None,
    };
    let checked = super::tasks::run_blocking(may_block, move || {
        let len = sync_and_measure(&file)?;
        let on_disk = match read_back {
            Some(Ok(crc)) => Some(crc),
            Some(Err(path)) if len == total => writes::crc_on_disk(&path, len)?,
            _ => None,
        };
        Ok::<_, std::io::Error>((len, on_disk))
    })
    .await
    .map_err(disk)?
    .map_err(|e| disk(e.to_string()))?;
    if let Some(on_disk) = checked.1.filter(|c| *c != crc) {
        tracing::warn!(
            received_crc = crc,
            on_disk_crc = on_disk,
            "the received snapshot differs on disk from what arrived; starting over"
        );
        drop(writes);
        Incoming::discard(incoming, may_block);
        return Ok(None);
    }
    let checked = (checked.0, crc);
    if checked != (total, expected_crc) {
        tracing::warn!(
            length = checked.0,
            crc = checked.1,
            announced_length = total,
            announced_crc = expected_crc,
            "the received snapshot failed its length or checksum check; starting over"
        );
        drop(writes);
        Incoming::discard(incoming, may_block);
        return Ok(None);
    }
    Ok(Some(inc.info.clone()))
}

/// Hands the received, checked snapshot at `path` to the engine
/// (`StateMachine::restore_file`), then `after_restore` (blocking).
fn restore_received(
    sm: &dyn StateMachine,
    wal: &dyn WalStore,
    dir: &Path,
    path: &Path,
    info: &SnapshotInfo,
    ids: &[RequestIdAt],
) -> Result<(), String> {
    let restored = sm
        .restore_file(info.lsn, path)
        .map_err(|e| format!("state machine restore: {}", e.chain()));
    after_restore(restored, wal, dir, info, ids)
}

/// After the engine restored the received snapshot (or failed to):
/// removes the incoming files (the engine may have moved the data file
/// away: it was its own during the call), has the WAL store keep the
/// request ids the snapshot covers, and restarts the WAL after the
/// snapshot's LSN (blocking). The ids go first, so no restart finds the
/// log started after the snapshot without them.
fn after_restore(
    restored: Result<(), String>,
    wal: &dyn WalStore,
    dir: &Path,
    info: &SnapshotInfo,
    ids: &[RequestIdAt],
) -> Result<(), String> {
    incoming::discard_files(dir);
    restored?;
    wal.set_snapshot_ids(ids)
        .map_err(|e| format!("keeping the request ids of snapshot {}: {e}", info.lsn))?;
    wal.reset(info.lsn, info.epoch)
        .map_err(|e| format!("WAL reset to {}: {e}", info.lsn))
}

/// Received bytes handed to a restore running while the snapshot arrives,
/// a few chunks ahead of it at most.
const FEED_WINDOW: usize = 8;

/// What a restore running while the snapshot arrives reads: the bytes in
/// order, then `End` once the whole file is in, fsynced and checked. The
/// channel closing without `End` means the transfer failed.
enum Feed {
    Data(bytes::Bytes),
    End,
}

/// The engine restoring while the snapshot arrives
/// (`StateMachine::restore_while_receiving`), on a blocking thread.
struct StreamedRestore {
    feed: Option<mpsc::Sender<Feed>>,
    task: JoinHandle<Result<(), crate::StateMachineError>>,
}

/// How the engine restores the snapshot of one transfer.
enum Restoring {
    /// From the received file, once it is whole and checked
    /// (`StateMachine::restore_file`).
    AfterTransfer,
    /// As the bytes arrive (`StateMachine::restore_while_receiving`):
    /// started once the transfer is announced.
    WhileReceiving(Option<StreamedRestore>),
}

impl Restoring {
    /// While receiving if the engine can, and this node can give it a
    /// thread that may block on the transfer (not with a WAL that may not
    /// block: the simulation).
    fn for_node(ctx: &Ctx) -> Restoring {
        if ctx.sm.restores_while_receiving() && ctx.wal.may_block() {
            Restoring::WhileReceiving(None)
        } else {
            Restoring::AfterTransfer
        }
    }

    /// Starts the engine's restore of `inc` if it restores while receiving;
    /// it holds `restore_lock` until it ends.
    fn start(
        &mut self,
        sm: &Arc<dyn StateMachine>,
        inc: &Incoming,
        restore_lock: &Arc<tokio::sync::Mutex<()>>,
    ) {
        if let Restoring::WhileReceiving(slot @ None) = self {
            *slot = Some(StreamedRestore::start(sm.clone(), inc, restore_lock));
        }
    }

    /// Hands the running restore, if any, the next bytes.
    async fn push(&mut self, data: &bytes::Bytes) {
        if let Restoring::WhileReceiving(Some(restore)) = self {
            restore.push(data.clone()).await;
        }
    }
}

impl StreamedRestore {
    /// Starts the engine's restore of `inc`'s snapshot: it first reads the
    /// bytes already on disk (a resumed transfer), then what `feed` brings.
    fn start(
        sm: Arc<dyn StateMachine>,
        inc: &Incoming,
        restore_lock: &Arc<tokio::sync::Mutex<()>>,
    ) -> StreamedRestore {
        // One restore at a time: an earlier one was awaited (`finish`,
        // `abandon`) before this one starts, so the lock is free.
        let held = restore_lock.clone().try_lock_owned().ok();
        let (tx, rx) = mpsc::channel(FEED_WINDOW);
        let mut input = FeedReader {
            file: inc.file.clone(),
            on_disk: inc.received,
            at: 0,
            rx,
            chunk: bytes::Bytes::new(),
            ended: false,
        };
        let (lsn, len, path) = (inc.info.lsn, inc.info.total_bytes, inc.path.clone());
        let task = tokio::task::spawn_blocking(move || {
            let _held = held;
            sm.restore_while_receiving(lsn, len, &mut input, &path)
        });
        StreamedRestore {
            feed: Some(tx),
            task,
        }
    }

    /// Hands it the next bytes. If the engine stopped reading (it failed),
    /// the bytes are dropped: its error comes out of `finish`.
    async fn push(&mut self, data: bytes::Bytes) {
        if let Some(feed) = &self.feed {
            if feed.send(Feed::Data(data)).await.is_err() {
                self.feed = None;
            }
        }
    }

    /// Tells it the whole snapshot is in and checked, and waits for it.
    async fn finish(mut self) -> Result<(), String> {
        if let Some(feed) = self.feed.take() {
            let _ = feed.send(Feed::End).await;
        }
        self.task
            .await
            .map_err(|e| format!("blocking task failed: {e}"))?
            .map_err(|e| format!("state machine restore: {}", e.chain()))
    }

    /// Tells it the transfer failed and waits for it to give up.
    async fn abandon(mut self) {
        self.feed = None;
        if let Ok(Err(e)) = self.task.await {
            tracing::debug!(error = %e.chain(), "the restore while receiving stopped with the transfer");
        }
    }
}

/// The input of a restore while receiving: the first `on_disk` bytes
/// from the file (a resumed transfer), then the chunks fed to it.
struct FeedReader {
    file: Arc<std::fs::File>,
    on_disk: u64,
    at: u64,
    rx: mpsc::Receiver<Feed>,
    chunk: bytes::Bytes,
    ended: bool,
}

impl std::io::Read for FeedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.ended {
            return Ok(0);
        }
        if self.at < self.on_disk {
            let want = ((self.on_disk - self.at) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..want], self.at)?;
            self.at += want as u64;
            return Ok(want);
        }
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Feed::Data(data)) => self.chunk = data,
                Some(Feed::End) => {
                    self.ended = true;
                    return Ok(0);
                }
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the snapshot transfer stopped before its end",
                    ));
                }
            }
        }
        let n = self.chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        self.at += n as u64;
        Ok(n)
    }
}

/// Keeps the records after `point` (`keep_rewound`) and cuts them from the
/// WAL: how many there were, and how many the cut removed. On a blocking
/// thread where the disk may block: the records are read, written out and
/// fsynced, and the WAL cut, megabytes for a primary that wrote long on
/// its own, and the node's runtime (one thread in the daemon) goes on
/// meanwhile. It holds the restore lock, so a rejoin stopped meanwhile
/// (the node shutting down) ends only after the cut did.
async fn rewind(ctx: &Ctx, point: Lsn) -> Result<(u64, u64), Fatal> {
    let (wal, rewound_dir) = (ctx.wal.clone(), ctx.rewound_dir.clone());
    holding_the_restore_lock(ctx, move || {
        let our_epoch = wal.epoch_at(wal.last_lsn()).unwrap_or(Epoch::ZERO);
        let kept = keep_rewound(wal.as_ref(), point, rewound_dir.as_deref(), our_epoch)
            .map_err(|e| Fatal(format!("writing rewound records: {e}")))?;
        let removed = wal
            .truncate_after(point)
            .map_err(|e| Fatal(format!("truncating the WAL after {point}: {e}")))?;
        Ok((kept, removed))
    })
    .await
    .map_err(|e| Fatal(format!("rewinding the WAL: {e}")))?
}

/// Fsyncs the received file: its length on disk. Its CRC32C was taken
/// as the bytes were written (`Incoming::crc`); a file written through
/// the page cache is not read back (the read would come from the same
/// pages), one written with direct I/O is (`writes::crc_on_disk`).
fn sync_and_measure(file: &std::fs::File) -> std::io::Result<u64> {
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Writes the records after `point` that the WAL still holds to
/// `rewound/<epoch>-<from>-<to>.wal` (same frames as the WAL) and returns
/// how many there were. Without a directory they are only counted. Those
/// retention trimmed already are gone (the divergence point may lie below
/// our first record: a stale standby promoted by force); asking the WAL
/// for them would fail the rejoin at every try.
fn keep_rewound(
    wal: &dyn WalStore,
    point: Lsn,
    dir: Option<&Path>,
    epoch: Epoch,
) -> std::io::Result<u64> {
    let last = wal.last_lsn();
    let point = point.max(wal.first_lsn().prev());
    let count = last.0.saturating_sub(point.0);
    if count == 0 {
        return Ok(0);
    }
    let Some(dir) = dir else { return Ok(count) };
    std::fs::create_dir_all(dir)?;
    // What an earlier rewind interrupted by a crash left half written.
    crate::wal::tmpfile::remove_stale(dir, ".wal.tmp");
    let name = format!("epoch{}-{:020}-{:020}.wal", epoch.0, point.0 + 1, last.0);
    let tmp = dir.join(format!("{name}.tmp"));
    crate::wal::tmpfile::write_or_remove(&tmp, |file| {
        let mut file = std::io::BufWriter::new(file);
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
        file.into_inner().map_err(|e| e.into_error())?.sync_all()
    })?;
    if let Err(e) = std::fs::rename(&tmp, dir.join(&name)) {
        crate::wal::tmpfile::remove_after_failure(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(count)
}

mod request_ids;
#[cfg(test)]
mod tests;
mod writes;
