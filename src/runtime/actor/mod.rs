//! The one task that owns the node: it feeds events to the role logic and
//! carries out the effects. Each file here is one part of its work:
//!
//! * `writes`: the engine's writes, batched per mailbox drain, and their
//!   waiters until commit;
//! * `receive`: the standby's receive path (the WAL stream from the
//!   primary, the inline fsync, acks);
//! * `requests`: the other requests from the peer, answered as the node
//!   decides;
//! * `effects`: carrying out the node's effects and the tasks they start;
//! * `health`: what the node publishes, and WAL retention;
//! * `restart`: the restart point's life (taken at start, kept in the
//!   WAL's meta, dropped once every standby heard from this life);
//! * `shutdown`: handing over to the standby (a stopping primary), then
//!   stopping every task and syncing the WAL.

mod effects;
mod health;
mod inline_sync;
mod receive;
mod requests;
mod restart;
mod shutdown;
mod writes;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::node::{Effect, Event, LocalLog, Node, PromoteFrom, RequestIndex};
use crate::replicator::Health;
use crate::runtime::{Metrics, Msg, flusher};
use crate::state_machine::StateMachine;
use crate::transport::{FenceReply, Peer, Refusal};
use crate::types::{Lsn, NodeId, RequestId};
use crate::wal::WalStore;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::runtime::restart_point::RestartPoint;
use crate::runtime::tasks::Tasks;
pub(crate) use health::placeholder_health;
use receive::Session;
use requests::{Answering, PromoteReplyTo};
use writes::{RetryWaiter, Waiter, WriteReply, refusal_error};

pub(super) struct Parts {
    pub cfg: Config,
    pub wal: Arc<dyn WalStore>,
    pub sm: Arc<dyn StateMachine>,
    /// Every other data node, by name (`Config::peer_ids`).
    pub peers: BTreeMap<NodeId, Arc<dyn Peer>>,
    pub tx: mpsc::Sender<Msg>,
    pub rx: mpsc::Receiver<Msg>,
    pub metrics: Arc<Metrics>,
    pub rewound_dir: Option<PathBuf>,
    pub snapshots: Arc<super::Snapshots>,
}

struct Actor {
    cfg: Config,
    node: Node,
    wal: Arc<dyn WalStore>,
    sm: Arc<dyn StateMachine>,
    /// The pair's peer (`Config::peer_id`).
    peer: Arc<dyn Peer>,
    /// Every other data node, by name, the pair's peer among them.
    peers: BTreeMap<NodeId, Arc<dyn Peer>>,
    tx: mpsc::Sender<Msg>,
    metrics: Arc<Metrics>,
    rewound_dir: Option<PathBuf>,
    /// Builds snapshots for the standby (primary), receives them (rejoin).
    snapshots: Arc<super::Snapshots>,
    origin: Instant,
    /// When the node last stepped (since `origin`), for the step-gap metric.
    last_step: std::time::Duration,
    /// Whether the node was solo after its last step: each rising edge is
    /// a solo episode (`Metrics::solo_episodes`), however soon it ends.
    was_solo: bool,
    waiters: BTreeMap<Lsn, Waiter>,
    /// Writes that retry request ids, until their records are applied
    /// (rare, so a list).
    retry_waiters: Vec<RetryWaiter>,
    /// The engine's outputs of applied records, until `resolve_waiters`
    /// hands them to their writers (or drops them: no writer waits).
    outputs: BTreeMap<Lsn, Bytes>,
    /// Writes received but not yet appended (see `queue_write`).
    queued: Vec<(Vec<Bytes>, Vec<RequestId>, WriteReply)>,
    queued_bytes: usize,
    /// The writes of the `Event::WriteRequested` being stepped: how many
    /// records each brings, and where its outcome goes.
    writing: Option<Vec<(usize, WriteReply)>>,
    answering: Option<Answering>,
    /// WAL received since the last inline fsync (see `sync_received`).
    sync_due: bool,
    /// Whether received WAL is fsynced inline or by the flusher now.
    inline_sync: inline_sync::InlineSyncGate,
    health_tx: watch::Sender<Health>,
    last_lsn_tx: watch::Sender<Lsn>,
    commit_tx: watch::Sender<Lsn>,
    flusher: Option<Tasks>,
    applier: Option<Tasks>,
    primary_tasks: Option<Tasks>,
    /// The removal of old WAL segments under way, if any (see `trim_wal`).
    trimming: Option<JoinHandle<()>>,
    rejoin: Option<Tasks>,
    /// A rejoin a forced promotion ended, still stopping (it stops the
    /// applier it took first, which may be applying a backlog): no other
    /// rejoin and no applier starts before it has (`rejoin_stopped`).
    rejoin_stopping: Option<JoinHandle<()>>,
    /// A rejoin asked for while the last one was still stopping: started
    /// once it has, for this leader.
    rejoin_deferred: Option<Option<NodeId>>,
    session: Option<Session>,
    next_session: u64,
    pending_fence: Option<oneshot::Sender<std::result::Result<FenceReply, Refusal>>>,
    /// The promote request being stepped: a `ReplyPromote` of that step
    /// answers it (a refusal, or the promotion it finished at once).
    promote_asking: Option<PromoteReplyTo>,
    /// Promote requests waiting for the promotion or switchover under way,
    /// which each started or joined: all get its outcome.
    pending_promotes: Vec<PromoteReplyTo>,
    peer_contact: Option<Instant>,
    /// Each peer's client address, as its last request said it.
    peer_client_addrs: BTreeMap<NodeId, String>,
    /// When the standby (or we, on a standby) last had everything.
    caught_up_at: Instant,
    primary_last_lsn: Lsn,
    /// Our WAL stream to the standby is open (primary).
    stream_up: bool,
    /// Primary: the last LSN up to which the standby's log holds ours, as
    /// its latest stream ack or heartbeat answer says; after a promotion,
    /// until it answers, our last LSN then (we got those records from it).
    /// `None`: a primary since start whose standby has not answered yet.
    /// What the lag figures measure.
    standby_matched: Option<Lsn>,
    stopping: bool,
    /// Callers of `Replica::shutdown`, answered once the node stopped.
    stop_replies: Vec<oneshot::Sender<()>>,
    /// Stopping: the standby is being asked to take over first.
    handing_over: bool,
    /// The standby the handover asked to take over.
    handing_over_to: Option<NodeId>,
    /// The node decided to stop (`Effect::Stop`, or the handover ended).
    stop_now: bool,
    /// A node that started as the primary of its epoch: where its log
    /// ended then, per standby (or at an earlier start, `restart.rs`).
    /// Kept when it is fenced, until its first rejoin ends, for that
    /// rejoin (`LocalLog::restarted_at`), and across a forced promotion
    /// before it; dropped when it becomes a standby or a stream of this
    /// life reached every standby. The WAL's meta keeps the points of the
    /// standbys not reached yet.
    restart_point: Option<Arc<RestartPoint>>,
    /// How many points the WAL's meta keeps.
    restart_points_saved: usize,
}

pub(super) fn spawn(parts: Parts) -> Result<(watch::Receiver<Health>, JoinHandle<()>)> {
    let origin = Instant::now();
    let meta = parts.wal.meta();
    let log_end = health::log_end_of(parts.wal.as_ref());
    let last = log_end.lsn;
    let flushed = parts.wal.flushed_lsn();
    let applied = parts.sm.applied_lsn();
    let requests = index_request_ids(parts.wal.as_ref(), parts.cfg.max_request_ids)?;
    let (mut node, mut effects) = Node::new(
        parts.cfg.clone(),
        meta,
        log_end,
        flushed,
        applied,
        requests,
        std::time::Duration::ZERO,
    );
    let first_lsn = parts.wal.first_lsn();
    for effect in node.step(std::time::Duration::ZERO, Event::Opened { first_lsn }) {
        if let Effect::CannotStart { reason } = effect {
            return Err(Error::Config(reason));
        }
        effects.push(effect);
    }
    let (health_tx, health_rx) = watch::channel(placeholder_health(&parts.cfg));
    let (last_lsn_tx, _) = watch::channel(last);
    let (commit_tx, _) = watch::channel(node.commit_lsn());
    let pair_peer = parts.peers[&parts.cfg.peer_id].clone();
    let mut actor = Actor {
        cfg: parts.cfg,
        node,
        wal: parts.wal,
        sm: parts.sm,
        peer: pair_peer,
        peers: parts.peers,
        tx: parts.tx,
        metrics: parts.metrics,
        rewound_dir: parts.rewound_dir,
        snapshots: parts.snapshots,
        origin,
        last_step: std::time::Duration::ZERO,
        was_solo: false,
        waiters: BTreeMap::new(),
        retry_waiters: Vec::new(),
        outputs: BTreeMap::new(),
        queued: Vec::new(),
        queued_bytes: 0,
        writing: None,
        answering: None,
        sync_due: false,
        inline_sync: Default::default(),
        health_tx,
        last_lsn_tx,
        commit_tx,
        flusher: None,
        applier: None,
        primary_tasks: None,
        trimming: None,
        rejoin: None,
        rejoin_stopping: None,
        rejoin_deferred: None,
        session: None,
        next_session: 0,
        pending_fence: None,
        promote_asking: None,
        pending_promotes: Vec::new(),
        peer_contact: None,
        peer_client_addrs: BTreeMap::new(),
        caught_up_at: origin,
        primary_last_lsn: last,
        stream_up: false,
        standby_matched: None,
        stopping: false,
        stop_replies: Vec::new(),
        handing_over: false,
        handing_over_to: None,
        stop_now: false,
        restart_point: None,
        restart_points_saved: 0,
    };
    actor.take_restart_points(last);
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
    actor.run_effects(effects);
    // Not before the start-up effects: a node sent to rejoin at start
    // (its engine is behind what its WAL still holds) must not replay a
    // log whose beginning is gone; the rejoin starts the applier when it
    // is done.
    if actor.rejoin.is_none() {
        actor.start_applier();
    }
    actor.publish();
    let handle = tokio::spawn(actor.run(parts.rx));
    Ok((health_rx, handle))
}

/// The request ids of the records `wal` retains, for the node to
/// recognise retries of writes made before this start (by this node or,
/// on a standby, by the primary), after those of the records a snapshot
/// this node restored covers (`WalStore::snapshot_ids`, the ones before
/// the log's first record). One read of the retained WAL; a log without
/// ids costs that read and no memory.
fn index_request_ids(wal: &dyn WalStore, capacity: usize) -> Result<RequestIndex> {
    let mut index = RequestIndex::new(capacity);
    if capacity == 0 {
        return Ok(index);
    }
    let (mut from, last) = (wal.first_lsn(), wal.last_lsn());
    let mut covered = wal.snapshot_ids()?;
    covered.retain(|c| c.lsn < from);
    index.replace_covered(&covered);
    while from <= last {
        let records = wal.read(from, 4096, 4 << 20)?;
        let Some(end) = records.last().map(|r| r.lsn) else {
            break;
        };
        for r in &records {
            if let Some(id) = r.request_id {
                index.insert(id, r.lsn, r.epoch);
            }
        }
        from = end.next();
    }
    if index.len() > 0 {
        tracing::info!(ids = index.len(), "request ids of the retained WAL indexed");
    }
    Ok(index)
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
                            Msg::Apply {
                                payloads,
                                request_ids,
                                reply,
                            } => self.queue_write(payloads, request_ids, reply),
                            other => {
                                self.append_queued();
                                self.handle(other);
                            }
                        }
                        if self.stop_now {
                            // Nobody reads the mailbox from here on: close
                            // it, so that a task the stop waits for (the
                            // flusher ending its fsync, the applier) finds
                            // its send refused instead of waiting forever
                            // for room in a full one. Callers whose
                            // messages are queued hear `ShuttingDown` once
                            // it is closed (`Replica::ask`).
                            rx.close();
                            self.shutdown().await;
                            for reply in self.stop_replies.drain(..) {
                                let _ = reply.send(());
                            }
                            return;
                        }
                    }
                    self.append_queued();
                    self.sync_received();
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.step(Event::Tick);
                    self.retain_wal();
                    self.rejoin_stopped();
                }
            }
            self.publish();
        }
        self.shutdown().await;
    }

    fn step(&mut self, event: Event) {
        let now = self.now();
        self.metrics.step_gap(now.saturating_sub(self.last_step));
        self.last_step = now;
        let effects = self.node.step(now, event);
        let solo = self.node.is_solo();
        if solo && !self.was_solo {
            self.metrics.went_solo(self.node.epoch());
        }
        self.was_solo = solo;
        self.run_effects(effects);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Promote { force, reply } => self.step_promote_request(
                PromoteReplyTo::Local(reply),
                Event::PromoteRequested {
                    force,
                    from: PromoteFrom::Engine,
                },
            ),
            Msg::SwitchoverTo { standby, reply } => self.step_promote_request(
                PromoteReplyTo::Local(reply),
                Event::SwitchoverTo { standby },
            ),
            Msg::Fence { epoch, reply } => {
                self.answer_with(Answering::Fence(reply), Event::FenceOrdered { epoch })
            }
            Msg::RejoinPlan {
                peer,
                peer_id,
                reply,
            } => {
                let ours = LocalLog {
                    history: self.wal.history(),
                    first_lsn: self.wal.first_lsn(),
                    last_lsn: self.wal.last_lsn(),
                    applied: self.sm.applied_lsn(),
                    // A peer our stream reached in this life holds, after
                    // the point, what we sent since.
                    restarted_at: self
                        .restart_point
                        .as_ref()
                        .and_then(|r| r.lsn_for(&peer_id)),
                };
                self.answer_with(
                    Answering::Rejoin(reply),
                    Event::PeerLogFetched { peer, ours },
                );
            }
            Msg::Event(event) => self.on_event(event),
            Msg::SealAnswer {
                from,
                epoch,
                answer,
            } => {
                let mine = self.log_end();
                self.step(Event::SealAnswered {
                    from,
                    epoch,
                    answer,
                    mine,
                });
            }
            Msg::Fetched { from, batch } => {
                let fetched = batch.map(|b| {
                    let continues = self.wal.last_lsn() == b.prev_lsn
                        && self
                            .wal
                            .epoch_at(b.prev_lsn)
                            .unwrap_or(crate::types::Epoch::ZERO)
                            == b.prev_epoch;
                    (b.records, continues)
                });
                self.step(Event::WalFetched { from, fetched });
            }
            Msg::Applied { lsn, outputs } => {
                self.keep_outputs(lsn, outputs);
                self.on_event(Event::Applied { lsn });
            }
            Msg::Inbound(inbound) => self.inbound(inbound),
            Msg::RejoinDone(result) => self.rejoin_done(result),
            Msg::Shutdown { reply } => {
                self.stop_replies.push(reply);
                if !self.handing_over {
                    self.step(Event::StopRequested);
                }
            }
            Msg::HandOverDone(result) => self.hand_over_done(result),
            // The pair's lag view follows `peer_id`.
            Msg::StandbyReported(standby, ack) if standby == self.cfg.peer_id => {
                self.note_standby_report(&ack)
            }
            Msg::StandbyReported(..) => {}
            Msg::Apply { .. } => unreachable!("handled by run"),
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

    /// An event from one of our tasks, with the bookkeeping the runtime
    /// keeps beside the node (contact times, waiters, acks).
    fn on_event(&mut self, event: Event) {
        if matches!(event, Event::StandbyProgress { .. }) {
            self.note_standby_reached();
        }
        match &event {
            Event::Applied { lsn } => {
                let lsn = *lsn;
                self.step(event);
                self.resolve_waiters(lsn);
                self.send_ack();
                return;
            }
            Event::LocalFlushed { lsn } => {
                // The flusher's report crossed the channel after its fsync
                // ended; a rewind may have truncated the log below it
                // meanwhile (the WAL waits for the fsync, not for its
                // report). What is durable is what the WAL says now: a
                // stale report must not count removed records as flushed.
                let lsn = (*lsn).min(self.wal.flushed_lsn());
                self.step(Event::LocalFlushed { lsn });
                self.send_ack();
                return;
            }
            // The pair's health view follows `peer_id`; every standby's
            // positions are in the node (`Node::standby_views`).
            Event::StandbyProgress {
                standby,
                positions,
                epoch,
            } if *standby == self.cfg.peer_id => {
                self.peer_contact = Some(Instant::now());
                if *epoch <= self.node.epoch() {
                    // A stream ack follows a batch the standby checked
                    // against its log: it holds ours up to there.
                    self.note_standby_matched(positions.flushed);
                }
            }
            Event::StandbyReachable { standby } if *standby == self.cfg.peer_id => {
                self.peer_contact = Some(Instant::now())
            }
            Event::StreamState { standby, up } if *standby == self.cfg.peer_id => {
                self.stream_up = *up
            }
            _ => {}
        }
        self.step(event);
    }
}
