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
//! over. The CRC32C is taken as the bytes are written (`Incoming::crc`),
//! not by reading the file back. Once every byte is in, the file is
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
use crate::types::{Epoch, Lsn, NodeId};
use crate::wal::{WalStore, record};
use futures::StreamExt;
use std::io::Write;
use std::os::unix::fs::FileExt;
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
    pub snapshots: Arc<super::Snapshots>,
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
        // A transfer an earlier run of this node began, if any.
        let dir = ctx.snapshots.dir().to_path_buf();
        let mut incoming =
            super::tasks::run_blocking(ctx.wal.may_block(), move || Incoming::recover(&dir))
                .await
                .ok()
                .flatten();
        loop {
            attempt += 1;
            let result = tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                r = attempt_rejoin(&ctx, &mut header, &mut incoming) => r,
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
async fn attempt_rejoin(
    ctx: &Ctx,
    header: &mut Header,
    incoming: &mut Option<Incoming>,
) -> Result<Option<Outcome>, Fatal> {
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
        let started = std::time::Instant::now();
        let Some(info) = receive_snapshot(ctx, header, incoming).await? else {
            return Ok(None);
        };
        let received_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            lsn = %info.lsn,
            bytes = info.total_bytes,
            received_ms,
            "received and checked the snapshot; restoring"
        );
        let started = std::time::Instant::now();
        let path = incoming.take().expect("a received snapshot").path;
        // A build this node served as primary may hold the engine's file
        // still (`StateMachine::snapshot_file`): let go of it first.
        ctx.snapshots.invalidate();
        let dir = ctx.snapshots.dir().to_path_buf();
        let (sm, wal) = (ctx.sm.clone(), ctx.wal.clone());
        let may_block = wal.may_block();
        let announced = info.clone();
        let restored = super::tasks::run_blocking(may_block, move || {
            restore_received(&*sm, &*wal, &dir, &path, &announced)
        })
        .await
        .map_err(Fatal)?;
        restored.map_err(Fatal)?;
        // What this node built before is not its state any more.
        ctx.snapshots.invalidate();
        ctx.metrics.snapshot_resync();
        let restore_ms = started.elapsed().as_millis() as u64;
        tracing::info!(lsn = %ctx.sm.applied_lsn(), bytes = info.total_bytes, restore_ms, "restored from snapshot");
    } else if incoming.is_some() {
        // Left by an earlier run; this rejoin needed no snapshot.
        Incoming::discard(incoming);
    }
    tracing::info!(leader = %ctx.leader, %epoch, records_dropped = dropped, "rejoined as standby");
    Ok(Some(Outcome {
        epoch,
        leader: ctx.leader.clone(),
    }))
}

/// Chunk writes in flight on the standby: a chunk is written on a
/// blocking thread while the next ones are received. Bounds the memory a
/// transfer holds to this many chunks beyond what gRPC buffers.
const WRITE_WINDOW: usize = 4;

/// The received chunks being written, oldest first, each with the offset
/// its write reaches. With a WAL that may not block (the simulation) each
/// chunk is written at once, inline.
struct Writes {
    may_block: bool,
    file: Arc<std::fs::File>,
    inflight: std::collections::VecDeque<(u64, JoinHandle<std::io::Result<()>>)>,
    /// Where the writes finished so far reach (all before it are written).
    done: u64,
}

impl Writes {
    fn new(may_block: bool, inc: &Incoming) -> Writes {
        Writes {
            may_block,
            file: inc.file.clone(),
            inflight: Default::default(),
            done: inc.received,
        }
    }

    /// Starts writing `data` at `offset`, once fewer than `WRITE_WINDOW`
    /// writes are in flight.
    async fn push(&mut self, offset: u64, data: bytes::Bytes) -> Result<(), String> {
        let end = offset + data.len() as u64;
        if !self.may_block {
            self.file
                .write_all_at(&data, offset)
                .map_err(|e| e.to_string())?;
            self.done = end;
            return Ok(());
        }
        while self.inflight.len() >= WRITE_WINDOW {
            self.finish_oldest().await?;
        }
        let file = self.file.clone();
        let write = tokio::task::spawn_blocking(move || file.write_all_at(&data, offset));
        self.inflight.push_back((end, write));
        Ok(())
    }

    async fn finish_oldest(&mut self) -> Result<(), String> {
        let Some((end, write)) = self.inflight.pop_front() else {
            return Ok(());
        };
        write
            .await
            .map_err(|e| format!("blocking task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        self.done = end;
        Ok(())
    }

    /// Waits for every write in flight: `done` then covers every chunk
    /// pushed.
    async fn drain(&mut self) -> Result<(), String> {
        while !self.inflight.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(())
    }
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
                    continue;
                }
                Incoming::discard(incoming);
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
            Incoming::discard(incoming);
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
    let checked = super::tasks::run_blocking(may_block, move || sync_and_measure(&file))
        .await
        .map_err(disk)?
        .map_err(|e| disk(e.to_string()))?;
    let checked = (checked, crc);
    if checked != (total, expected_crc) {
        tracing::warn!(
            length = checked.0,
            crc = checked.1,
            announced_length = total,
            announced_crc = expected_crc,
            "the received snapshot failed its length or checksum check; starting over"
        );
        Incoming::discard(incoming);
        return Ok(None);
    }
    Ok(Some(inc.info.clone()))
}

/// Hands the received, checked snapshot at `path` to the engine, removes
/// the incoming files (the engine may have moved the data file away: it
/// is its own during the call), and restarts the WAL after the
/// snapshot's LSN (blocking).
fn restore_received(
    sm: &dyn StateMachine,
    wal: &dyn WalStore,
    dir: &Path,
    path: &Path,
    info: &SnapshotInfo,
) -> Result<(), String> {
    let restored = sm.restore_file(info.lsn, path);
    incoming::discard_files(dir);
    restored.map_err(|e| format!("state machine restore: {}", e.chain()))?;
    wal.reset(info.lsn, info.epoch)
        .map_err(|e| format!("WAL reset to {}: {e}", info.lsn))
}

/// Fsyncs the received file: its length on disk. Its CRC32C was taken
/// as the bytes were written (`Incoming::crc`), so the file is not read
/// back.
fn sync_and_measure(file: &std::fs::File) -> std::io::Result<u64> {
    file.sync_all()?;
    Ok(file.metadata()?.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStateMachine;
    use crate::transport::{MockPeer, SnapshotStream};
    use crate::wal::MemWal;
    use bytes::Bytes;
    use std::sync::Mutex;

    /// The transfer the fake primary sends: the snapshot `data` announced
    /// with `crc` and `total`, its bytes in chunks of 4, cut after `cut`
    /// chunks (an error) if given; every request is recorded. With
    /// `trailer`, a transfer from offset 0 announces no CRC and sends `crc`
    /// in an `End` after the data, as a primary does for a standby that
    /// asks for `crc_after_data`; `tamper` then changes the parts before
    /// they go.
    struct Primary {
        data: Vec<u8>,
        crc: u32,
        total: u64,
        cut: Mutex<Vec<Option<usize>>>,
        requests: Mutex<Vec<(u64, u64)>>,
        trailer: bool,
        tamper: fn(&mut Vec<Result<SnapshotPart, TransportError>>),
    }

    fn stream(p: &Primary, req: &SnapshotRequest) -> SnapshotStream {
        assert!(
            req.crc_after_data,
            "the standby takes the CRC after the data"
        );
        p.requests
            .lock()
            .unwrap()
            .push((req.snapshot_id, req.offset));
        let offset = if req.snapshot_id == 7 { req.offset } else { 0 };
        let trailing = p.trailer && offset == 0;
        let mut parts = vec![Ok(SnapshotPart::Info(SnapshotInfo {
            id: 7,
            lsn: Lsn(5),
            epoch: Epoch(1),
            total_bytes: p.total,
            crc: (!trailing).then_some(p.crc),
            offset,
        }))];
        let cut = p.cut.lock().unwrap().remove(0);
        let mut at = offset as usize;
        let mut was_cut = false;
        for n in 0.. {
            if at >= p.data.len() {
                break;
            }
            if cut == Some(n) {
                parts.push(Err(TransportError::Unreachable("cut".into())));
                was_cut = true;
                break;
            }
            let end = (at + 4).min(p.data.len());
            parts.push(Ok(SnapshotPart::Data {
                offset: at as u64,
                data: Bytes::copy_from_slice(&p.data[at..end]),
            }));
            at = end;
        }
        if trailing && !was_cut {
            parts.push(Ok(SnapshotPart::End { crc: p.crc }));
        }
        (p.tamper)(&mut parts);
        Box::pin(futures::stream::iter(parts))
    }

    fn ctx(primary: Arc<Primary>, sm: Arc<MemStateMachine>, dir: &Path) -> Ctx {
        let wal: Arc<dyn WalStore> = Arc::new(MemWal::new());
        let mut peer = MockPeer::new();
        peer.expect_fetch_snapshot()
            .returning(move |req| Ok(stream(&primary, &req)));
        Ctx {
            cfg: Config::default(),
            wal: wal.clone(),
            sm: sm.clone(),
            peer: Arc::new(peer),
            tx: mpsc::channel(8).0,
            header: header(),
            leader: NodeId::from("n2"),
            applier: None,
            rewound_dir: None,
            snapshots: Arc::new(super::super::Snapshots::new(
                Some(dir.to_path_buf()),
                sm,
                wal,
            )),
            metrics: Arc::new(Metrics::default()),
            cancel: CancellationToken::new(),
        }
    }

    fn header() -> Header {
        Header {
            cluster_id: "c".into(),
            epoch: Epoch(1),
            node_id: NodeId::from("n1"),
            node_addr: "127.0.0.1:1".into(),
            leader_id: None,
            client_addr: None,
        }
    }

    /// A snapshot `MemStateMachine` restores: its hash, then padding.
    fn snapshot_bytes() -> Vec<u8> {
        let source = MemStateMachine::new();
        source.apply(Lsn(1), b"a").unwrap();
        source.set_snapshot_padding(30);
        let mut out = Vec::new();
        source.snapshot(&mut out).unwrap();
        out
    }

    fn primary(data: Vec<u8>, crc: u32, total: u64, cuts: Vec<Option<usize>>) -> Arc<Primary> {
        Arc::new(Primary {
            data,
            crc,
            total,
            cut: Mutex::new(cuts),
            requests: Mutex::new(Vec::new()),
            trailer: false,
            tamper: |_| {},
        })
    }

    /// A primary that sends the CRC after the data, its parts changed by
    /// `tamper` on the first transfer.
    fn trailing_primary(
        data: Vec<u8>,
        crc: u32,
        cuts: Vec<Option<usize>>,
        tamper: fn(&mut Vec<Result<SnapshotPart, TransportError>>),
    ) -> Arc<Primary> {
        let total = data.len() as u64;
        Arc::new(Primary {
            data,
            crc,
            total,
            cut: Mutex::new(cuts),
            requests: Mutex::new(Vec::new()),
            trailer: true,
            tamper,
        })
    }

    /// The CRC after the data: announced without one, checked against
    /// the `End` that follows the last byte; the file holds the snapshot.
    #[tokio::test]
    async fn a_crc_sent_after_the_data_is_checked_against_the_bytes_received() {
        let dir = tempfile::tempdir().unwrap();
        let data = snapshot_bytes();
        let p = trailing_primary(data.clone(), crc32c::crc32c(&data), vec![None], |_| {});
        let ctx = ctx(p, Arc::new(MemStateMachine::new()), dir.path());
        let mut incoming = None;
        let info = match receive_snapshot(&ctx, &header(), &mut incoming).await {
            Ok(Some(info)) => info,
            _ => panic!("the transfer completes"),
        };
        assert_eq!(info.crc, Some(crc32c::crc32c(&data)), "taken from the End");
        let got = std::fs::read(&incoming.as_ref().unwrap().path).unwrap();
        assert_eq!(got, data);
    }

    /// A trailing CRC that does not match, or an `End` out of place (before
    /// the last byte, twice, after an announced CRC, followed by data):
    /// the transfer is refused, its files deleted, nothing restored.
    #[tokio::test]
    async fn a_wrong_or_misplaced_trailing_crc_refuses_the_snapshot_and_deletes_it() {
        type Tamper = fn(&mut Vec<Result<SnapshotPart, TransportError>>);
        let cases: [(&str, bool, Tamper); 5] = [
            ("a wrong CRC", true, |_| {}),
            ("before the last byte", false, |p| {
                let end = p.pop().unwrap();
                p.insert(3, end);
            }),
            ("twice", false, |p| {
                let Some(Ok(SnapshotPart::End { crc })) = p.last() else {
                    panic!("ends with its CRC")
                };
                let crc = *crc;
                p.push(Ok(SnapshotPart::End { crc }));
            }),
            ("after an announced CRC", false, |p| {
                if let Ok(SnapshotPart::Info(i)) = &mut p[0] {
                    i.crc = Some(0);
                }
            }),
            ("followed by data", false, |p| {
                let Ok(SnapshotPart::Data { offset, data }) = &p[1] else {
                    panic!("data first")
                };
                let again = SnapshotPart::Data {
                    offset: *offset,
                    data: data.clone(),
                };
                p.push(Ok(again));
            }),
        ];
        let data = snapshot_bytes();
        for (what, wrong_crc, tamper) in cases {
            let dir = tempfile::tempdir().unwrap();
            let good = crc32c::crc32c(&data);
            let crc = if wrong_crc { good ^ 1 } else { good };
            let sm = Arc::new(MemStateMachine::new());
            let p = trailing_primary(data.clone(), crc, vec![None], tamper);
            let ctx = ctx(p, sm.clone(), dir.path());
            let mut incoming = None;
            let r = receive_snapshot(&ctx, &header(), &mut incoming).await;
            assert!(matches!(r, Ok(None)), "{what}: refused");
            assert!(incoming.is_none(), "{what}: what arrived is dropped");
            for name in [incoming::DATA_FILE, incoming::SIDECAR_FILE] {
                assert!(!dir.path().join(name).exists(), "{what}: {name} deleted");
            }
            assert_eq!(sm.restores(), 0, "{what}");
        }
    }

    /// A transfer cut after its last byte but before its trailing CRC
    /// keeps the bytes; the resume asks from the end, the primary then
    /// announces the CRC, and the whole is checked.
    #[tokio::test]
    async fn a_transfer_cut_before_its_trailing_crc_resumes_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let data = snapshot_bytes();
        let p = trailing_primary(data.clone(), crc32c::crc32c(&data), vec![None, None], |p| {
            if let Some(Ok(SnapshotPart::End { .. })) = p.last() {
                p.pop();
            }
        });
        let ctx = ctx(p.clone(), Arc::new(MemStateMachine::new()), dir.path());
        let mut incoming = None;
        let first = receive_snapshot(&ctx, &header(), &mut incoming).await;
        assert!(matches!(first, Ok(None)), "not done without its CRC");
        assert_eq!(incoming.as_ref().unwrap().received, data.len() as u64);
        // The node restarts: the sidecar says the CRC comes after the data.
        drop(incoming.take());
        let mut incoming = Incoming::recover(dir.path());
        assert_eq!(incoming.as_ref().unwrap().info.crc, None);
        let done = receive_snapshot(&ctx, &header(), &mut incoming).await;
        assert!(matches!(done, Ok(Some(_))), "completed by the resume");
        let len = data.len() as u64;
        assert_eq!(*p.requests.lock().unwrap(), vec![(0, 0), (7, len)]);
    }

    #[tokio::test]
    async fn a_cut_transfer_resumes_at_the_bytes_received_and_checks_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data = snapshot_bytes();
        let p = primary(
            data.clone(),
            crc32c::crc32c(&data),
            data.len() as u64,
            vec![Some(3), None],
        );
        let sm = Arc::new(MemStateMachine::new());
        let ctx = ctx(p.clone(), sm, dir.path());
        let mut incoming = None;
        let first = receive_snapshot(&ctx, &header(), &mut incoming).await;
        assert!(matches!(first, Ok(None)), "the cut transfer is not done");
        assert_eq!(incoming.as_ref().unwrap().received, 12);
        let done = receive_snapshot(&ctx, &header(), &mut incoming).await;
        let info = match done {
            Ok(Some(info)) => info,
            _ => panic!("the resumed transfer completes"),
        };
        assert_eq!(info.lsn, Lsn(5));
        assert_eq!(*p.requests.lock().unwrap(), vec![(0, 0), (7, 12)]);
        let got = std::fs::read(&incoming.as_ref().unwrap().path).unwrap();
        assert_eq!(got, data, "the file holds the snapshot, once");
    }

    #[tokio::test]
    async fn a_corrupt_or_short_transfer_is_refused_and_nothing_restored() {
        let data = snapshot_bytes();
        let good = crc32c::crc32c(&data);
        let cases = [
            // A wrong checksum.
            (data.clone(), good ^ 1, data.len() as u64),
            // A flipped byte.
            (
                {
                    let mut d = data.clone();
                    d[13] ^= 0xff;
                    d
                },
                good,
                data.len() as u64,
            ),
            // More bytes than announced.
            (data.clone(), good, data.len() as u64 - 4),
        ];
        for (sent, crc, total) in cases {
            let dir = tempfile::tempdir().unwrap();
            let sm = Arc::new(MemStateMachine::new());
            let ctx = ctx(
                primary(sent, crc, total, vec![None]),
                sm.clone(),
                dir.path(),
            );
            let mut incoming = None;
            let r = receive_snapshot(&ctx, &header(), &mut incoming).await;
            assert!(matches!(r, Ok(None)), "refused");
            assert!(incoming.is_none(), "what arrived is dropped");
            assert_eq!(sm.restores(), 0);
        }
        // Fewer bytes than announced: not done, kept for a resume.
        let dir = tempfile::tempdir().unwrap();
        let sm = Arc::new(MemStateMachine::new());
        let p = primary(data[..20].to_vec(), good, data.len() as u64, vec![None]);
        let ctx = ctx(p, sm.clone(), dir.path());
        let mut incoming = None;
        let r = receive_snapshot(&ctx, &header(), &mut incoming).await;
        assert!(matches!(r, Ok(None)), "a short transfer is not done");
        assert_eq!(incoming.as_ref().unwrap().received, 20);
        assert_eq!(sm.restores(), 0);
    }

    /// A standby restarted mid-transfer seeds its CRC from the prefix on
    /// disk, not from what it believed it wrote: a prefix damaged while
    /// the node was down (here, one flipped byte) fails the check at the
    /// end of the resumed transfer, and nothing is restored.
    #[tokio::test]
    async fn a_resumed_transfer_checks_the_prefix_already_on_disk() {
        let data = snapshot_bytes();
        let crc = crc32c::crc32c(&data);
        for damage in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let p = primary(data.clone(), crc, data.len() as u64, vec![Some(3), None]);
            let sm = Arc::new(MemStateMachine::new());
            let ctx = ctx(p.clone(), sm.clone(), dir.path());
            let mut incoming = None;
            let first = receive_snapshot(&ctx, &header(), &mut incoming).await;
            assert!(matches!(first, Ok(None)), "the cut transfer is not done");
            // The node stops; the prefix may change on disk meanwhile.
            drop(incoming.take());
            if damage {
                let path = dir.path().join(incoming::DATA_FILE);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[5] ^= 0xff;
                std::fs::write(&path, &bytes).unwrap();
            }
            let mut incoming = Incoming::recover(dir.path());
            assert_eq!(incoming.as_ref().unwrap().received, 12);
            let done = receive_snapshot(&ctx, &header(), &mut incoming).await;
            assert_eq!(*p.requests.lock().unwrap(), vec![(0, 0), (7, 12)]);
            if damage {
                assert!(matches!(done, Ok(None)), "the damaged prefix is caught");
                assert!(incoming.is_none(), "and the transfer starts over");
                assert!(!dir.path().join(incoming::DATA_FILE).exists());
            } else {
                assert!(matches!(done, Ok(Some(_))), "an intact prefix completes");
            }
            assert_eq!(sm.restores(), 0);
        }
    }

    /// An engine that keeps the received file: it records the bytes it
    /// was handed, moves the file into its own directory and restores
    /// from there.
    struct Keeper {
        inner: MemStateMachine,
        own_dir: PathBuf,
        handed: Mutex<Vec<u8>>,
    }

    impl StateMachine for Keeper {
        fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), crate::StateMachineError> {
            self.inner.apply(lsn, payload)
        }
        fn applied_lsn(&self) -> Lsn {
            self.inner.applied_lsn()
        }
        fn snapshot(&self, out: &mut dyn Write) -> Result<Lsn, crate::StateMachineError> {
            self.inner.snapshot(out)
        }
        fn restore(
            &self,
            lsn: Lsn,
            input: &mut dyn std::io::Read,
        ) -> Result<(), crate::StateMachineError> {
            self.inner.restore(lsn, input)
        }
        fn restore_file(&self, lsn: Lsn, path: &Path) -> Result<(), crate::StateMachineError> {
            *self.handed.lock().unwrap() = std::fs::read(path).unwrap();
            let kept = self.own_dir.join("kept");
            std::fs::rename(path, &kept).unwrap();
            self.inner
                .restore(lsn, &mut std::fs::File::open(&kept).unwrap())
        }
    }

    /// The received, checked file is what the engine's `restore_file` gets
    /// (byte for byte); a file it moved away stays where it put it, and
    /// the incoming files are gone.
    #[tokio::test]
    async fn the_engine_gets_the_received_file_and_may_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let own = tempfile::tempdir().unwrap();
        let data = snapshot_bytes();
        let p = primary(
            data.clone(),
            crc32c::crc32c(&data),
            data.len() as u64,
            vec![None],
        );
        let ctx = ctx(p, Arc::new(MemStateMachine::new()), dir.path());
        let mut incoming = None;
        let info = match receive_snapshot(&ctx, &header(), &mut incoming).await {
            Ok(Some(info)) => info,
            _ => panic!("the transfer completes"),
        };
        let path = incoming.take().unwrap().path;
        let keeper = Keeper {
            inner: MemStateMachine::new(),
            own_dir: own.path().to_path_buf(),
            handed: Mutex::new(Vec::new()),
        };
        restore_received(&keeper, &*ctx.wal, dir.path(), &path, &info).unwrap();
        assert_eq!(*keeper.handed.lock().unwrap(), data, "the snapshot's bytes");
        assert_eq!(std::fs::read(own.path().join("kept")).unwrap(), data);
        assert_eq!(keeper.applied_lsn(), info.lsn);
        for name in [incoming::DATA_FILE, incoming::SIDECAR_FILE] {
            assert!(!dir.path().join(name).exists(), "{name} removed");
        }
        assert_eq!(ctx.wal.last_lsn(), info.lsn, "the WAL goes on after it");
    }

    /// An engine with the default `restore_file` reads the received file
    /// through `restore`; walrep then removes the file it left.
    #[tokio::test]
    async fn the_default_restore_file_reads_the_file_through_restore() {
        let dir = tempfile::tempdir().unwrap();
        let data = snapshot_bytes();
        let p = primary(
            data.clone(),
            crc32c::crc32c(&data),
            data.len() as u64,
            vec![None],
        );
        let sm = Arc::new(MemStateMachine::new());
        let ctx = ctx(p, sm.clone(), dir.path());
        let mut incoming = None;
        let info = match receive_snapshot(&ctx, &header(), &mut incoming).await {
            Ok(Some(info)) => info,
            _ => panic!("the transfer completes"),
        };
        let path = incoming.take().unwrap().path;
        restore_received(&*sm, &*ctx.wal, dir.path(), &path, &info).unwrap();
        assert_eq!(sm.restores(), 1);
        assert_eq!(sm.applied_lsn(), info.lsn, "restored at the announced LSN");
        assert!(!path.exists(), "the file the engine read is removed");
    }
}
