//! The one task that owns the node: it feeds events to the role logic and
//! carries out the effects, appends to the WAL, answers the engine and the
//! peer, and publishes `Health`.

use super::{Metrics, Msg, applier, flusher, heartbeat, rejoin, streamer};
use crate::config::Config;
use crate::error::{Error, LeaderHint, Result};
use crate::node::{
    Effect, Event, FenceOutcome, FenceReason, LocalLog, Node, PromoteFrom, Refused, RejoinPlan,
    RoleKind, StandbyPositions, SyncState, WaiterFailure, WriteRefusal,
};
use crate::replicator::{Applied, Health, PeerHealth};
use crate::state_machine::StateMachine;
use crate::transport::{
    FenceReply, FenceRequest, Header, HeartbeatReply, HistoryReply, Inbound, Peer, PromoteReply,
    PromoteRequest, Refusal, RefusalKind, SnapshotTransfer, StatusReply, WalAck, WalBatch,
};
use crate::types::{Epoch, Lsn, NodeId, Record};
use crate::wal::{WalError, WalMeta, WalStore};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(super) struct Parts {
    pub cfg: Config,
    pub wal: Arc<dyn WalStore>,
    pub sm: Arc<dyn StateMachine>,
    pub peer: Arc<dyn Peer>,
    pub tx: mpsc::Sender<Msg>,
    pub rx: mpsc::Receiver<Msg>,
    pub metrics: Arc<Metrics>,
    pub rewound_dir: Option<PathBuf>,
}

/// Where a write's outcome goes.
type WriteReply = oneshot::Sender<Result<Vec<Applied>>>;

struct Waiter {
    first: Lsn,
    epoch: Epoch,
    reply: WriteReply,
}

/// Tasks started together and stopped together.
pub(super) struct Tasks {
    cancel: CancellationToken,
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    pub(super) fn new(cancel: CancellationToken, handles: Vec<JoinHandle<()>>) -> Tasks {
        Tasks { cancel, handles }
    }

    pub(super) async fn stop(self) {
        self.cancel.cancel();
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// An open WAL stream from the primary (we are its standby).
struct Session {
    id: u64,
    acks: watch::Sender<std::result::Result<WalAck, Refusal>>,
}

/// The request whose answer the node decides in the step being run
/// (`Effect::Answer`, `Effect::Rejoin`).
enum Answering {
    Heartbeat {
        reply: oneshot::Sender<std::result::Result<HeartbeatReply, Refusal>>,
        primary_last_lsn: Lsn,
    },
    Batch {
        session: u64,
        primary_last_lsn: Lsn,
    },
    History(oneshot::Sender<std::result::Result<HistoryReply, Refusal>>),
    Snapshot(oneshot::Sender<std::result::Result<SnapshotTransfer, Refusal>>),
    Fence(oneshot::Sender<Result<()>>),
    Rejoin(oneshot::Sender<RejoinPlan>),
}

enum PromoteReplyTo {
    Local(oneshot::Sender<Result<Epoch>>),
    Remote(oneshot::Sender<std::result::Result<PromoteReply, Refusal>>),
}

struct Actor {
    cfg: Config,
    node: Node,
    wal: Arc<dyn WalStore>,
    sm: Arc<dyn StateMachine>,
    peer: Arc<dyn Peer>,
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    rewound_dir: Option<PathBuf>,
    origin: Instant,
    waiters: BTreeMap<Lsn, Waiter>,
    /// Writes received but not yet appended (see `queue_write`).
    queued: Vec<(Vec<Bytes>, WriteReply)>,
    queued_bytes: usize,
    /// The writes of the `Event::WriteRequested` being stepped: how many
    /// records each brings, and where its outcome goes.
    writing: Option<Vec<(usize, WriteReply)>>,
    answering: Option<Answering>,
    /// WAL received since the last inline fsync (see `sync_received`).
    sync_due: bool,
    health_tx: watch::Sender<Health>,
    last_lsn_tx: watch::Sender<Lsn>,
    commit_tx: watch::Sender<Lsn>,
    flusher: Option<Tasks>,
    applier: Option<Tasks>,
    primary_tasks: Option<Tasks>,
    rejoin: Option<Tasks>,
    session: Option<Session>,
    next_session: u64,
    pending_fence: Option<oneshot::Sender<std::result::Result<FenceReply, Refusal>>>,
    pending_promote: Option<PromoteReplyTo>,
    peer_contact: Option<Instant>,
    peer_client_addr: Option<String>,
    /// When the standby (or we, on a standby) last had everything.
    caught_up_at: Instant,
    primary_last_lsn: Lsn,
    /// Our WAL stream to the standby is open (primary).
    stream_up: bool,
    stopping: bool,
}

pub(super) fn spawn(parts: Parts) -> Result<(watch::Receiver<Health>, JoinHandle<()>)> {
    let origin = Instant::now();
    let meta = parts.wal.meta();
    let last = parts.wal.last_lsn();
    let flushed = parts.wal.flushed_lsn();
    let applied = parts.sm.applied_lsn();
    let (node, effects) = Node::new(
        parts.cfg.clone(),
        meta,
        last,
        flushed,
        applied,
        std::time::Duration::ZERO,
    );
    // The engine applied records the WAL no longer has: its tail was cut
    // (a torn write cut at recovery, a damaged disk) after the engine made
    // them durable, or the WAL is another node's. A standby can always
    // start over from the primary's snapshot. A node that was the primary
    // may hold acknowledged writes no one else has, so the operator decides.
    let state_ahead_of_wal = applied > last;
    if state_ahead_of_wal && node.role() != RoleKind::Standby {
        return Err(Error::Config(format!(
            "the state machine has applied up to {applied} but the WAL ends at {last}; the WAL does not belong to this state (wrong data directory?)"
        )));
    }
    let (health_tx, health_rx) = watch::channel(placeholder_health(&parts.cfg));
    let (last_lsn_tx, _) = watch::channel(last);
    let (commit_tx, _) = watch::channel(node.commit_lsn());
    let mut actor = Actor {
        cfg: parts.cfg,
        node,
        wal: parts.wal,
        sm: parts.sm,
        peer: parts.peer,
        tx: parts.tx,
        metrics: parts.metrics,
        rewound_dir: parts.rewound_dir,
        origin,
        waiters: BTreeMap::new(),
        queued: Vec::new(),
        queued_bytes: 0,
        writing: None,
        answering: None,
        sync_due: false,
        health_tx,
        last_lsn_tx,
        commit_tx,
        flusher: None,
        applier: None,
        primary_tasks: None,
        rejoin: None,
        session: None,
        next_session: 0,
        pending_fence: None,
        pending_promote: None,
        peer_contact: None,
        peer_client_addr: None,
        caught_up_at: origin,
        primary_last_lsn: last,
        stream_up: false,
        stopping: false,
    };
    tracing::info!(
        node = %actor.cfg.node_id,
        role = %actor.node.role(),
        epoch = %actor.node.epoch(),
        last_lsn = %last,
        applied_lsn = %applied,
        "node starting"
    );
    actor.flusher = Some(flusher::spawn(
        actor.wal.clone(),
        actor.last_lsn_tx.subscribe(),
        actor.tx.clone(),
    ));
    actor.start_applier();
    actor.run_effects(effects);
    if state_ahead_of_wal {
        tracing::error!(
            applied = %applied,
            wal_last = %last,
            "the state machine has applied records the WAL no longer has (its tail was cut, or it is another node's WAL); resyncing from the peer's snapshot"
        );
        actor.step(Event::ResyncNeeded);
    } else if applied.next() < actor.wal.first_lsn() {
        tracing::error!(
            applied = %applied,
            wal_first = %actor.wal.first_lsn(),
            "the state machine is behind the oldest record in the WAL (the engine lost state the WAL no longer covers); resyncing from the peer's snapshot"
        );
        actor.step(Event::ResyncNeeded);
    }
    actor.publish();
    let handle = tokio::spawn(actor.run(parts.rx));
    Ok((health_rx, handle))
}

fn placeholder_health(cfg: &Config) -> Health {
    Health {
        node_id: cfg.node_id.clone(),
        role: RoleKind::Standby,
        epoch: Epoch::ZERO,
        leader: None,
        writable: false,
        solo: false,
        sync_state: SyncState::NotSync,
        eligible: false,
        commit_mode: cfg.commit_mode,
        first_lsn: Lsn::ZERO,
        last_lsn: Lsn::ZERO,
        flushed_lsn: Lsn::ZERO,
        commit_lsn: Lsn::ZERO,
        applied_lsn: Lsn::ZERO,
        peer: PeerHealth::default(),
        rewound_records: 0,
        note: None,
    }
}

fn refusal_error(r: WriteRefusal, leader: Option<LeaderHint>) -> Error {
    match r {
        WriteRefusal::NotPrimary { .. } => Error::NotPrimary { leader },
        WriteRefusal::Fenced { epoch } => Error::Fenced { epoch },
        WriteRefusal::Unavailable { reason } => Error::Unavailable { reason },
    }
}

impl Actor {
    fn now(&self) -> std::time::Duration {
        Instant::now() - self.origin
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let deadline = self.origin + self.node.next_deadline(self.now());
            tokio::select! {
                biased;
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    if matches!(msg, Msg::Apply { .. }) {
                        // The sender of a write wakes this task at once,
                        // ahead of the other writers that are ready to
                        // send theirs; one turn of the scheduler lets them,
                        // and the drain below appends them all together
                        // (at 64 writers: one pwrite per ~7 writes, not
                        // one each; +4 % writes/s at 16 writers).
                        tokio::task::yield_now().await;
                    }
                    // Drain what is queued before publishing once; the
                    // writes among it go to the WAL together.
                    let mut next = Some(msg);
                    while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
                        match msg {
                            Msg::Apply { payloads, reply } => self.queue_write(payloads, reply),
                            Msg::Shutdown { reply } => {
                                self.append_queued();
                                self.shutdown().await;
                                let _ = reply.send(());
                                return;
                            }
                            other => {
                                self.append_queued();
                                self.handle(other).await;
                            }
                        }
                    }
                    self.append_queued();
                    self.sync_received();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.step(Event::Tick);
                    self.retain_wal();
                }
            }
            self.publish();
        }
        self.shutdown().await;
    }

    fn step(&mut self, event: Event) {
        let now = self.now();
        let effects = self.node.step(now, event);
        self.run_effects(effects);
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Promote { force, reply } => {
                self.replace_pending_promote(PromoteReplyTo::Local(reply));
                self.step(Event::PromoteRequested {
                    force,
                    from: PromoteFrom::Engine,
                });
            }
            Msg::Fence { epoch, reply } => {
                self.answer_with(Answering::Fence(reply), Event::FenceOrdered { epoch })
            }
            Msg::RejoinPlan { peer, reply } => {
                let ours = LocalLog {
                    history: self.wal.history(),
                    first_lsn: self.wal.first_lsn(),
                    last_lsn: self.wal.last_lsn(),
                    applied: self.sm.applied_lsn(),
                };
                self.answer_with(
                    Answering::Rejoin(reply),
                    Event::PeerLogFetched { peer, ours },
                );
            }
            Msg::Event(event) => self.on_event(event),
            Msg::Inbound(inbound) => self.inbound(inbound),
            Msg::RejoinDone(result) => self.rejoin_done(result).await,
            Msg::Apply { .. } | Msg::Shutdown { .. } => unreachable!("handled by run"),
        }
    }

    /// Steps `event` with `to` as the request its `Effect::Answer` goes
    /// to. A request the node does not answer is dropped (its caller sees
    /// the node going away).
    fn answer_with(&mut self, to: Answering, event: Event) {
        self.answering = Some(to);
        self.step(event);
        self.answering = None;
    }

    // ---- the engine's writes ----------------------------------------------

    /// Holds a write until `append_queued`, so the writes that arrived
    /// together cost one WAL append (one `pwrite`) and one wake-up of the
    /// streamer and the flusher, not one each.
    fn queue_write(&mut self, payloads: Vec<Bytes>, reply: WriteReply) {
        self.queued_bytes += payloads.iter().map(Bytes::len).sum::<usize>();
        self.queued.push((payloads, reply));
        if self.queued_bytes >= self.cfg.max_batch_bytes {
            self.append_queued();
        }
    }

    /// Appends every queued write, in arrival order, as one WAL append.
    fn append_queued(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        self.queued_bytes = 0;
        let mut payloads = Vec::with_capacity(queued.iter().map(|(p, _)| p.len()).sum());
        let mut writers = Vec::with_capacity(queued.len());
        for (p, reply) in queued {
            writers.push((p.len(), reply));
            payloads.extend(p);
        }
        self.writing = Some(writers);
        self.step(Event::WriteRequested { payloads });
        self.writing = None;
    }

    /// Carries out `Effect::Append`: the records go to the WAL; the writes
    /// being stepped (if any) wait for their commit, and whoever makes the
    /// records durable is woken.
    fn append(&mut self, records: Vec<Record>, fsync_inline: bool) {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return;
        };
        let (first, epoch, last) = (first.lsn, first.epoch, last.lsn);
        if let Err(e) = self.wal.append(&records) {
            let reason = e.to_string();
            let kind = match &e {
                WalError::Io { source, .. } => source.kind(),
                _ => std::io::ErrorKind::Other,
            };
            for (_, reply) in self.writing.take().into_iter().flatten() {
                let _ = reply.send(Err(Error::Io {
                    what: "appending to the WAL".into(),
                    source: std::io::Error::new(kind, reason.clone()),
                }));
            }
            if let Some(Answering::Batch { session, .. }) = self.answering.take() {
                let r = self.refusal(
                    RefusalKind::Unavailable,
                    format!("WAL append failed: {reason}"),
                );
                self.end_session(session, r);
            }
            self.step(Event::WalFailed { reason });
            return;
        }
        let mut next = first;
        for (count, reply) in self.writing.take().into_iter().flatten() {
            let end = Lsn(next.0 + count as u64);
            self.waiters.insert(
                end.prev(),
                Waiter {
                    first: next,
                    epoch,
                    reply,
                },
            );
            next = end;
        }
        if fsync_inline {
            self.sync_due = true;
        } else {
            self.last_lsn_tx.send_replace(last);
        }
    }

    fn resolve_waiters(&mut self, applied: Lsn) {
        while let Some(entry) = self.waiters.first_entry() {
            if *entry.key() > applied {
                break;
            }
            let (last, w) = entry.remove_entry();
            let out = (w.first.0..=last.0)
                .map(|lsn| Applied {
                    lsn: Lsn(lsn),
                    epoch: w.epoch,
                })
                .collect();
            let _ = w.reply.send(Ok(out));
        }
    }

    fn fail_waiters(&mut self, up_to: Option<Lsn>, failure: &WaiterFailure) {
        let keep = match up_to {
            Some(lsn) => self.waiters.split_off(&lsn.next()),
            None => BTreeMap::new(),
        };
        let failed = std::mem::replace(&mut self.waiters, keep);
        for (last, w) in failed {
            let err = match failure {
                WaiterFailure::SyncTimeout => Error::SyncTimeout { lsn: last },
                WaiterFailure::Fenced { epoch } => Error::Fenced { epoch: *epoch },
                WaiterFailure::NotPrimary => Error::NotPrimary {
                    leader: self.leader_hint(),
                },
                WaiterFailure::WalFailed { reason } => Error::Unavailable {
                    reason: format!("the WAL failed: {reason}"),
                },
            };
            let _ = w.reply.send(Err(err));
        }
    }

    // ---- events from our own tasks ----------------------------------------

    fn on_event(&mut self, event: Event) {
        match &event {
            Event::Applied { lsn } => {
                let lsn = *lsn;
                self.step(event);
                self.resolve_waiters(lsn);
                self.send_ack();
                return;
            }
            Event::LocalFlushed { .. } => {
                self.step(event);
                self.send_ack();
                return;
            }
            Event::StandbyProgress { positions } => {
                self.peer_contact = Some(Instant::now());
                if positions.flushed >= self.node.last_lsn() {
                    self.caught_up_at = Instant::now();
                }
            }
            Event::StandbyReachable => self.peer_contact = Some(Instant::now()),
            Event::StreamState { up } => self.stream_up = *up,
            _ => {}
        }
        self.step(event);
    }

    // ---- requests from the peer -------------------------------------------

    fn refusal(&self, kind: RefusalKind, message: impl Into<String>) -> Refusal {
        let mut r = Refusal::new(kind, message, self.node.epoch());
        r.leader = self.leader_hint();
        r
    }

    fn inbound(&mut self, inbound: Inbound) {
        match inbound {
            Inbound::Heartbeat { req, reply } => {
                self.note_peer_client_addr(&req.header);
                let to = Answering::Heartbeat {
                    reply,
                    primary_last_lsn: req.last_lsn,
                };
                self.answer_with(to, Event::HeartbeatReceived { req });
            }
            Inbound::Fence { req, reply } => self.on_fence(req, reply),
            Inbound::Promote { req, reply } => self.on_promote(req, reply),
            Inbound::Status { reply } => {
                let h = self.health();
                let _ = reply.send(StatusReply {
                    node_id: self.cfg.node_id.clone(),
                    role: h.role,
                    epoch: h.epoch,
                    last_lsn: h.last_lsn,
                    commit_lsn: h.commit_lsn,
                    applied_lsn: h.applied_lsn,
                    flushed_lsn: h.flushed_lsn,
                    leader_id: h.leader.as_ref().map(|l| l.id.clone()),
                    leader_addr: h.leader.map(|l| l.addr),
                    peer_connected: h.peer.connected,
                    lag_records: h.peer.lag_records,
                });
            }
            Inbound::History { header, reply } => {
                self.note_peer_client_addr(&header);
                self.answer_with(Answering::History(reply), Event::HistoryRequested { header });
            }
            Inbound::Snapshot { header, reply } => {
                self.note_peer_client_addr(&header);
                self.answer_with(
                    Answering::Snapshot(reply),
                    Event::SnapshotRequested { header },
                );
            }
            Inbound::StreamOpened { reply } => {
                self.next_session += 1;
                let id = self.next_session;
                let (acks, rx) = watch::channel(Ok(self.ack()));
                if self.session.is_some() {
                    tracing::info!("a new WAL stream replaces the previous one");
                }
                self.session = Some(Session { id, acks });
                let _ = reply.send((id, rx));
            }
            Inbound::Batch { session, batch } => self.on_batch(session, batch),
            Inbound::BadBatch { session, refusal } => self.end_session(session, refusal),
            Inbound::StreamClosed { session } => {
                if self.session.as_ref().is_some_and(|s| s.id == session) {
                    self.session = None;
                }
            }
        }
    }

    fn on_fence(
        &mut self,
        req: FenceRequest,
        reply: oneshot::Sender<std::result::Result<FenceReply, Refusal>>,
    ) {
        if let Some(old) = self.pending_fence.take() {
            let r = self.refusal(
                RefusalKind::Unavailable,
                "superseded by a newer fence request",
            );
            let _ = old.send(Err(r));
        }
        tracing::info!(epoch = %req.header.epoch, from = %req.header.node_id, reason = ?req.reason, "fence requested");
        self.pending_fence = Some(reply);
        self.step(Event::FenceRequested {
            epoch: req.header.epoch,
            leader: req.header.node_id,
            reason: req.reason,
        });
    }

    fn on_promote(
        &mut self,
        req: PromoteRequest,
        reply: oneshot::Sender<std::result::Result<PromoteReply, Refusal>>,
    ) {
        self.replace_pending_promote(PromoteReplyTo::Remote(reply));
        self.step(Event::PromoteRequested {
            force: req.force,
            from: PromoteFrom::Rpc,
        });
    }

    /// Carries out `Effect::ForwardPromote`: the standby is asked to take
    /// over and its answer goes to the pending promote request.
    fn forward_promote(&mut self) {
        let Some(to) = self.pending_promote.take() else {
            return;
        };
        let peer = self.peer.clone();
        let header = self.header();
        let epoch = self.node.epoch();
        tokio::spawn(async move {
            let r = peer
                .promote(PromoteRequest {
                    header,
                    force: false,
                })
                .await
                .map(|reply| reply.epoch)
                .map_err(|e| format!("the standby could not take over: {e}"));
            reply_promote(to, r, epoch);
        });
    }

    fn replace_pending_promote(&mut self, new: PromoteReplyTo) {
        if let Some(old) = self.pending_promote.replace(new) {
            reply_promote(
                old,
                Err("superseded by a newer promote request".into()),
                self.node.epoch(),
            );
        }
    }

    /// A batch from the primary: the node checks it against our log (G3)
    /// with the epochs of the records it overlaps, read here.
    fn on_batch(&mut self, session: u64, batch: WalBatch) {
        if self.session.as_ref().is_none_or(|s| s.id != session) {
            return;
        }
        self.note_peer_client_addr(&batch.header);
        let last = self.node.last_lsn();
        let local_at_prev = self.wal.epoch_at(batch.prev_lsn);
        let local = batch
            .records
            .iter()
            .take_while(|r| r.lsn <= last)
            .map(|r| self.wal.epoch_at(r.lsn))
            .collect();
        let to = Answering::Batch {
            session,
            primary_last_lsn: batch.last_lsn,
        };
        self.answer_with(
            to,
            Event::BatchReceived {
                batch,
                local_at_prev,
                local,
            },
        );
    }

    /// Carries out `Effect::Answer` for the request being stepped.
    fn answer(&mut self, result: std::result::Result<(), Refused>) {
        let Some(to) = self.answering.take() else {
            return;
        };
        let result = result.map_err(|r| (r.kind, r.message));
        match to {
            Answering::Heartbeat {
                reply,
                primary_last_lsn,
            } => {
                let r = match result {
                    Ok(()) => {
                        self.note_primary_contact(primary_last_lsn);
                        Ok(HeartbeatReply {
                            ack: self.ack(),
                            role: self.node.role(),
                        })
                    }
                    Err((kind, message)) => Err(self.refusal(kind, message)),
                };
                let _ = reply.send(r);
            }
            Answering::Batch {
                session,
                primary_last_lsn,
            } => match result {
                Ok(()) => {
                    self.note_primary_contact(primary_last_lsn);
                    // With an inline fsync due, `sync_received` answers
                    // after it.
                    if !self.sync_due {
                        self.send_ack_always();
                    }
                }
                Err((kind, message)) => {
                    tracing::warn!(reason = kind.as_str(), %message, "WAL batch refused");
                    self.metrics.rejected(kind);
                    let r = self.refusal(kind, message);
                    self.end_session(session, r);
                }
            },
            Answering::History(reply) => {
                let r = match result {
                    Ok(()) => Ok(HistoryReply {
                        epoch: self.node.epoch(),
                        history: self.wal.history(),
                        last_lsn: self.wal.last_lsn(),
                        first_lsn: self.wal.first_lsn(),
                        role: self.node.role(),
                    }),
                    Err((kind, message)) => Err(self.refusal(kind, message)),
                };
                let _ = reply.send(r);
            }
            Answering::Snapshot(reply) => match result {
                Ok(()) => self.serve_snapshot(reply),
                Err((kind, message)) => {
                    let _ = reply.send(Err(self.refusal(kind, message)));
                }
            },
            Answering::Fence(reply) => {
                let _ = reply.send(result.map_err(|(_, message)| Error::InvalidInput(message)));
            }
            Answering::Rejoin(_) => {
                tracing::error!("the node answered a rejoin plan request with an answer");
            }
        }
    }

    fn serve_snapshot(
        &mut self,
        reply: oneshot::Sender<std::result::Result<SnapshotTransfer, Refusal>>,
    ) {
        let (sm, wal) = (self.sm.clone(), self.wal.clone());
        let epoch = self.node.epoch();
        let may_block = wal.may_block();
        tokio::spawn(super::run_blocking(may_block, move || {
            let result = sm
                .snapshot()
                .map(|s| SnapshotTransfer {
                    lsn: s.lsn,
                    epoch: wal.epoch_at(s.lsn).unwrap_or(Epoch::ZERO),
                    data: s.data,
                })
                .map_err(|e| {
                    Refusal::new(
                        RefusalKind::Unavailable,
                        format!("the state machine could not take a snapshot: {e}"),
                        epoch,
                    )
                });
            let _ = reply.send(result);
        }));
    }

    /// The peer's client address, for the leader hints we give; the
    /// service checked that the sender is our peer.
    fn note_peer_client_addr(&mut self, header: &Header) {
        if header.client_addr.is_some() {
            self.peer_client_addr = header.client_addr.clone();
        }
    }

    /// The primary reached us with a request we served.
    fn note_primary_contact(&mut self, primary_last_lsn: Lsn) {
        self.peer_contact = Some(Instant::now());
        self.primary_last_lsn = primary_last_lsn;
        self.note_standby_caught_up();
    }

    /// Fsyncs, on this thread, the WAL received since the last call, and
    /// acknowledges it: once for every batch the mailbox held, with no
    /// hand-off to the flusher and back and no ack before the fsync that
    /// the primary would only wait past.
    fn sync_received(&mut self) {
        if !std::mem::take(&mut self.sync_due) {
            return;
        }
        match self.wal.sync() {
            Ok(lsn) => {
                self.step(Event::LocalFlushed { lsn });
                self.last_lsn_tx.send_replace(self.wal.last_lsn());
                self.send_ack_always();
            }
            Err(e) => self.step(Event::WalFailed {
                reason: format!("WAL fsync failed: {e}"),
            }),
        }
    }

    fn end_session(&mut self, session: u64, refusal: Refusal) {
        if let Some(s) = self.session.take_if(|s| s.id == session) {
            let _ = s.acks.send(Err(refusal));
        }
    }

    fn ack(&self) -> WalAck {
        let flushed = self.node.flushed_lsn().min(self.wal.last_lsn());
        WalAck {
            epoch: self.node.epoch(),
            written: self.wal.last_lsn(),
            flushed,
            applied: self.node.applied_lsn().min(flushed),
            flushed_epoch: self.wal.epoch_at(flushed).unwrap_or(Epoch::ZERO),
        }
    }

    fn send_ack_always(&mut self) {
        let ack = self.ack();
        if let Some(s) = &self.session {
            let _previous = s.acks.send_replace(Ok(ack));
        }
    }

    /// A standby that stops being one closes the WAL stream it received:
    /// acks from it now would carry positions in another log (a promoted
    /// node's own) to the old primary.
    fn end_inbound_stream(&mut self, to: RoleKind, epoch: Epoch) {
        let Some(s) = self.session.take() else { return };
        let refusal = if matches!(to, RoleKind::Promoting | RoleKind::Primary) {
            self.refusal(
                RefusalKind::StaleEpoch,
                format!("this node was promoted to epoch {epoch}; a newer primary exists"),
            )
        } else {
            self.refusal(
                RefusalKind::NotStandby,
                format!("this node is {to}, not a standby; retry after it has rejoined"),
            )
        };
        let _ = s.acks.send(Err(refusal));
    }

    fn send_ack(&mut self) {
        if self.node.role() != RoleKind::Standby {
            return;
        }
        let ack = self.ack();
        if let Some(s) = &self.session {
            s.acks.send_if_modified(|current| {
                if current.as_ref().ok() == Some(&ack) {
                    false
                } else {
                    *current = Ok(ack);
                    true
                }
            });
        }
    }

    fn note_standby_caught_up(&mut self) {
        if self.node.flushed_lsn() >= self.primary_last_lsn {
            self.caught_up_at = Instant::now();
        }
    }

    // ---- effects ------------------------------------------------------------

    fn run_effects(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            self.run_effect(effect);
        }
    }

    fn run_effect(&mut self, effect: Effect) {
        match effect {
            Effect::PersistMeta { epoch, leader } => {
                if let Err(e) = self.wal.set_meta(&WalMeta {
                    epoch,
                    leader: leader.clone(),
                }) {
                    // An epoch we cannot persist must not be acted on.
                    let reason = format!("persisting epoch {epoch}: {e}");
                    let effects = self.node.step(self.now(), Event::WalFailed { reason });
                    self.run_effects(effects);
                    return;
                }
                tracing::info!(%epoch, leader = ?leader.as_ref().map(|l| &l.0), "epoch persisted");
            }
            Effect::RoleChanged { from, to, epoch } => {
                tracing::info!(node = %self.cfg.node_id, %from, %to, %epoch, "role changed");
                self.metrics.transition(from, to);
                if from == RoleKind::Standby && to != RoleKind::Standby {
                    self.end_inbound_stream(to, epoch);
                }
            }
            Effect::Commit { lsn } => {
                self.commit_tx.send_replace(lsn);
            }
            Effect::FailWaiters { up_to, failure } => self.fail_waiters(up_to, &failure),
            Effect::SendFence { epoch, reason } => self.send_fence(epoch, reason),
            Effect::ReplyFence(outcome) => {
                let Some(reply) = self.pending_fence.take() else {
                    return;
                };
                let result = match outcome {
                    FenceOutcome::Fenced { last_lsn } => Ok(FenceReply {
                        epoch: self.node.epoch(),
                        last_lsn,
                        last_epoch: self.wal.epoch_at(last_lsn).unwrap_or(Epoch::ZERO),
                    }),
                    FenceOutcome::Refused { reason } => {
                        Err(self.refusal(RefusalKind::StaleEpoch, reason))
                    }
                };
                let _ = reply.send(result);
            }
            Effect::ReplyPromote(result) => {
                if let Some(to) = self.pending_promote.take() {
                    reply_promote(to, result, self.node.epoch());
                }
            }
            Effect::StartPrimaryTasks => self.start_primary_tasks(),
            Effect::StopPrimaryTasks => {
                if let Some(tasks) = self.primary_tasks.take() {
                    tokio::spawn(tasks.stop());
                }
            }
            Effect::StartRejoin { leader } => self.start_rejoin(leader),
            Effect::Append {
                records,
                fsync_inline,
            } => self.append(records, fsync_inline),
            Effect::RefuseWrites(refusal) => {
                let leader = self.leader_hint();
                for (_, reply) in self.writing.take().into_iter().flatten() {
                    let _ = reply.send(Err(refusal_error(refusal.clone(), leader.clone())));
                }
            }
            Effect::Answer(result) => self.answer(result),
            Effect::ForwardPromote => self.forward_promote(),
            Effect::Rejoin(plan) => match self.answering.take() {
                Some(Answering::Rejoin(reply)) => {
                    let _ = reply.send(plan);
                }
                _ => tracing::error!("a rejoin plan with no rejoin asking for it"),
            },
        }
    }

    fn send_fence(&mut self, epoch: Epoch, reason: FenceReason) {
        let peer = self.peer.clone();
        let tx = self.tx.clone();
        let mut header = self.header();
        header.epoch = epoch;
        header.leader_id = Some(self.cfg.node_id.clone());
        tracing::info!(%epoch, ?reason, peer = %self.cfg.peer_id, "sending fence");
        tokio::spawn(async move {
            let result = peer.fence(FenceRequest { header, reason }).await;
            let confirmed = match result {
                Ok(reply) => Some(reply.last_lsn),
                Err(crate::TransportError::StaleEpoch { epoch, leader }) => {
                    let leader = leader.map(|l| l.id);
                    let _ = tx
                        .send(Msg::Event(Event::HigherEpoch { epoch, leader }))
                        .await;
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fence not confirmed");
                    None
                }
            };
            let _ = tx
                .send(Msg::Event(Event::FenceSent {
                    confirmed_last_lsn: confirmed,
                }))
                .await;
        });
    }

    fn start_primary_tasks(&mut self) {
        if self.primary_tasks.is_some() {
            return;
        }
        let cancel = CancellationToken::new();
        let reachable_again = Arc::new(tokio::sync::Notify::new());
        let streamer = streamer::spawn(streamer::Ctx {
            cfg: self.cfg.clone(),
            wal: self.wal.clone(),
            peer: self.peer.clone(),
            tx: self.tx.clone(),
            health: self.health_tx.subscribe(),
            last_lsn: self.last_lsn_tx.subscribe(),
            header: self.header(),
            reachable_again: reachable_again.clone(),
            cancel: cancel.child_token(),
        });
        let heartbeats = heartbeat::spawn(heartbeat::Ctx {
            cfg: self.cfg.clone(),
            peer: self.peer.clone(),
            tx: self.tx.clone(),
            health: self.health_tx.subscribe(),
            header: self.header(),
            metrics: self.metrics.clone(),
            reachable_again,
            cancel: cancel.child_token(),
        });
        self.primary_tasks = Some(Tasks::new(cancel, vec![streamer, heartbeats]));
    }

    fn start_applier(&mut self) {
        self.commit_tx.send_replace(self.node.commit_lsn());
        self.applier = Some(applier::spawn(
            self.wal.clone(),
            self.sm.clone(),
            self.commit_tx.subscribe(),
            self.tx.clone(),
        ));
    }

    fn start_rejoin(&mut self, leader: Option<NodeId>) {
        if self.rejoin.is_some() {
            return;
        }
        self.session = None;
        self.step(Event::RejoinStarted);
        let cancel = CancellationToken::new();
        let handle = rejoin::spawn(rejoin::Ctx {
            cfg: self.cfg.clone(),
            wal: self.wal.clone(),
            sm: self.sm.clone(),
            peer: self.peer.clone(),
            tx: self.tx.clone(),
            header: self.header(),
            leader: leader.unwrap_or_else(|| self.cfg.peer_id.clone()),
            applier: self.applier.take(),
            rewound_dir: self.rewound_dir.clone(),
            metrics: self.metrics.clone(),
            cancel: cancel.child_token(),
        });
        self.rejoin = Some(Tasks::new(cancel, vec![handle]));
    }

    async fn rejoin_done(&mut self, result: std::result::Result<rejoin::Outcome, String>) {
        self.rejoin = None;
        match result {
            Ok(outcome) => {
                self.last_lsn_tx.send_replace(self.wal.last_lsn());
                self.step(Event::RejoinFinished {
                    epoch: outcome.epoch,
                    leader: outcome.leader,
                    last_lsn: self.wal.last_lsn(),
                    flushed: self.wal.flushed_lsn(),
                    applied: self.sm.applied_lsn(),
                });
            }
            Err(reason) => {
                tracing::error!(%reason, "rejoin stopped");
                self.step(Event::WalFailed { reason });
            }
        }
        if self.applier.is_none() {
            self.start_applier();
        }
    }

    // ---- retention, health, shutdown ------------------------------------------

    /// Lets go of WAL the engine's durable state covers and the standby
    /// has flushed (or that exceeds the retention limit).
    fn retain_wal(&mut self) {
        let durable = self.sm.durable_lsn().min(self.node.applied_lsn());
        if durable == Lsn::ZERO {
            return;
        }
        let mut keep_from = durable.next();
        if let Some(standby) = self.node.standby_positions() {
            let standby_next = standby.flushed.next();
            if self.wal.bytes_from(standby_next) <= self.cfg.wal_retention_bytes {
                keep_from = keep_from.min(standby_next);
            }
        }
        if keep_from > self.wal.first_lsn()
            && let Err(e) = self.wal.remove_before(keep_from)
        {
            tracing::warn!(error = %e, "could not remove old WAL segments");
        }
    }

    fn header(&self) -> Header {
        Header {
            cluster_id: self.cfg.cluster_id.clone(),
            epoch: self.node.epoch(),
            node_id: self.cfg.node_id.clone(),
            node_addr: self.cfg.advertise_addr.clone(),
            leader_id: self.node.leader().cloned(),
            client_addr: self.cfg.advertise_client_addr.clone(),
        }
    }

    fn leader_hint(&self) -> Option<LeaderHint> {
        let leader = self.node.leader()?;
        Some(if *leader == self.cfg.node_id {
            LeaderHint {
                id: leader.clone(),
                addr: self.cfg.advertise_addr.clone(),
                client_addr: self.cfg.advertise_client_addr.clone(),
            }
        } else {
            LeaderHint {
                id: leader.clone(),
                addr: self.cfg.peer_addr.clone(),
                client_addr: self.peer_client_addr.clone(),
            }
        })
    }

    fn health(&self) -> Health {
        let role = self.node.role();
        let last = self.node.last_lsn();
        let now = Instant::now();
        let primary = role == RoleKind::Primary;
        let (connected, lag_records, lag_bytes) = match self.node.standby_positions() {
            Some(StandbyPositions { flushed, .. }) => (
                self.stream_up,
                last.0.saturating_sub(flushed.0),
                self.wal.bytes_from(flushed.next()),
            ),
            None => (
                self.session.is_some(),
                self.primary_last_lsn
                    .0
                    .saturating_sub(self.node.flushed_lsn().0),
                0,
            ),
        };
        let lag_seconds = if lag_records == 0 {
            0.0
        } else {
            (now - self.caught_up_at).as_secs_f64()
        };
        let writable = self.node.check_writable().is_ok();
        Health {
            node_id: self.cfg.node_id.clone(),
            role,
            epoch: self.node.epoch(),
            leader: self.leader_hint(),
            writable,
            solo: self.node.is_solo(),
            sync_state: self.node.sync_state(),
            eligible: self.node.is_eligible(),
            commit_mode: self.cfg.commit_mode,
            first_lsn: self.wal.first_lsn(),
            last_lsn: last,
            flushed_lsn: self.node.flushed_lsn(),
            commit_lsn: self.node.commit_lsn(),
            applied_lsn: self.node.applied_lsn(),
            peer: PeerHealth {
                node_id: self.cfg.peer_id.clone(),
                connected,
                lag_records,
                lag_bytes,
                lag_seconds,
                last_contact: self.peer_contact.map(|t| now - t),
                heartbeat_rtt: if primary {
                    self.metrics.last_heartbeat_rtt()
                } else {
                    None
                },
            },
            rewound_records: self.metrics.rewound_records(),
            note: self.node.check_writable().err().map(|r| match r {
                WriteRefusal::NotPrimary { .. } => format!("{role}: writes go to the primary"),
                WriteRefusal::Fenced { epoch } => format!("fenced at epoch {epoch}; rejoining"),
                WriteRefusal::Unavailable { reason } => reason,
            }),
        }
    }

    fn publish(&self) {
        let health = self.health();
        self.health_tx.send_if_modified(|current| {
            // Contact times move on every message; publish only real changes.
            let same = current.role == health.role
                && current.epoch == health.epoch
                && current.leader == health.leader
                && current.writable == health.writable
                && current.solo == health.solo
                && current.sync_state == health.sync_state
                && current.eligible == health.eligible
                && current.last_lsn == health.last_lsn
                && current.first_lsn == health.first_lsn
                && current.flushed_lsn == health.flushed_lsn
                && current.commit_lsn == health.commit_lsn
                && current.applied_lsn == health.applied_lsn
                && current.peer.connected == health.peer.connected
                && current.peer.lag_records == health.peer.lag_records
                && current.rewound_records == health.rewound_records
                && current.note == health.note;
            *current = health;
            !same
        });
    }

    async fn shutdown(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        tracing::info!(node = %self.cfg.node_id, "shutting down");
        for (_, w) in std::mem::take(&mut self.waiters) {
            let _ = w.reply.send(Err(Error::ShuttingDown));
        }
        if let Some(reply) = self.pending_fence.take() {
            let _ = reply.send(Err(Refusal::new(
                RefusalKind::ShuttingDown,
                "node shutting down",
                self.node.epoch(),
            )));
        }
        self.session = None;
        for tasks in [
            self.primary_tasks.take(),
            self.rejoin.take(),
            self.applier.take(),
            self.flusher.take(),
        ]
        .into_iter()
        .flatten()
        {
            tasks.stop().await;
        }
        // Whatever was appended is made durable before we go.
        let _ = self.wal.sync();
    }
}

fn reply_promote(to: PromoteReplyTo, result: std::result::Result<Epoch, String>, epoch: Epoch) {
    match to {
        PromoteReplyTo::Local(tx) => {
            let _ = tx.send(result.map_err(|reason| Error::PromotionRefused { reason }));
        }
        PromoteReplyTo::Remote(tx) => {
            let _ = tx.send(
                result
                    .map(|e| PromoteReply {
                        epoch: e,
                        message: format!("promoted: this node is now the primary of epoch {e}"),
                    })
                    .map_err(|reason| Refusal::new(RefusalKind::Unavailable, reason, epoch)),
            );
        }
    }
}
