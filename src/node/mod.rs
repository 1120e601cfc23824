//! The role logic of one node, without I/O.
//!
//! A `Node` is driven by `step(now, event)` and answers with `Effect`s that
//! the runtime carries out in order. It reads no clock, touches no disk and
//! no socket, so its tests feed events and assert effects with no runtime.
//!
//! ## The protocol in brief
//!
//! * Each node persists the highest epoch it has seen and that epoch's
//!   leader. A node whose persisted leader is itself starts as primary; any
//!   other starts as standby. Promotion persists `epoch + 1` with itself as
//!   leader *before* any message goes out, so a crash in the middle leaves a
//!   node that will not accept the old epoch again (G1).
//! * A node started as primary on a fresh data directory is unconfirmed: it
//!   takes no write until its peer answered it at epoch 1 as a node that
//!   follows it (which the peer persists first), so two nodes both started
//!   as primary never both write. Of two such primaries the one with an
//!   empty log and the greater node id steps down (`requests.rs`).
//! * The primary counts a write as committed when the commit mode is met:
//!   its own fsync (`async`) plus the standby's written / flushed / applied
//!   position for the sync modes, unless it goes on alone (`solo`) after
//!   fresh evidence that the standby is unreachable for `sync_timeout`.
//! * Heartbeats tell the standby whether it is the synchronous standby
//!   (`SyncState::Sync`): then every acknowledged write is on its disk and it
//!   may promote after `failover_timeout` of silence. Eligibility needs a
//!   contact in this process's lifetime: a standby that restarted, or whose
//!   process was paused longer than `failover_timeout`, waits to hear from
//!   the primary before it may promote again.
//! * A node that sees a higher epoch stops writing at once (`Fenced`), then
//!   rejoins: it finds the divergence point from the epoch histories,
//!   rewinds what came after it, and becomes a standby (G4).
//!
//! ## Caveats
//!
//! Two nodes cannot tell a dead peer from a cut link. With the default
//! `on_standby_loss = solo`, a true partition lets both sides accept writes
//! for a while; what the old primary acknowledged alone is dropped at rejoin,
//! counted and kept in `rewound/`. `block` never loses an acknowledged write
//! but stops writes while the standby is unreachable.

mod arbiter;
mod candidacy;
mod epochs;
mod event;
mod primary;
// The pair's primary commits and admits its standby through the rule
// `ANY 1 (peer)`; the rest (promotion with positions, removal under a
// quorum, ranking) waits for the multi-standby primary, its user.
#[cfg_attr(not(test), allow(dead_code, unused_imports))]
mod quorum;
mod rejoin;
mod request_index;
mod requests;
mod retention;
mod standby;
mod standby_link;
#[cfg(test)]
mod tests;
mod wal_failure;
mod wiped_peer;

pub use arbiter::ArbiterStatus;
pub(crate) use event::Time;
pub(crate) use event::{
    ArbiterAnswer, ArbiterCall, ArbiterPurpose, CallFailed, Effect, Event, FenceOutcome,
    FetchFailed, LocalLog, PeerLog, PromoteFrom, Promotion, Refused, RejoinPlan, Retried,
    SealRefused, StandbyPositions, WaiterFailure,
};
pub use event::{FenceReason, SyncState};
pub use quorum::LogEnd;
pub use quorum::{CommitRule, CommitRuleError, Method as CommitMethod};
pub(crate) use request_index::RequestIndex;

use crate::config::{Config, InitialRole};
use crate::types::{Epoch, Lsn, NodeId};
use crate::wal::WalMeta;
use primary::Primary;
use standby::Standby;
use std::fmt;

/// The role a node plays, as others see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleKind {
    /// Accepts writes in its epoch (G1) and streams them to the standby.
    Primary,
    /// Receives, stores and applies the primary's WAL; refuses writes.
    Standby,
    /// A standby that decided to promote and is fencing the old primary.
    Promoting,
    /// Knows a newer epoch exists; refuses writes; about to rejoin.
    Fenced,
    /// Rewinding and resyncing to become a standby.
    Rejoining,
    /// The WAL (or the engine's apply) failed; the node refuses
    /// everything until restarted. A
    /// standby whose append failed without changing its log (a full disk)
    /// takes WAL again by itself after a backoff.
    Failed,
}

impl RoleKind {
    /// Every role, in the order above (metrics export a series for each).
    pub const ALL: [RoleKind; 6] = [
        RoleKind::Primary,
        RoleKind::Standby,
        RoleKind::Promoting,
        RoleKind::Fenced,
        RoleKind::Rejoining,
        RoleKind::Failed,
    ];

    /// The role's name as logs, metrics and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleKind::Primary => "primary",
            RoleKind::Standby => "standby",
            RoleKind::Promoting => "promoting",
            RoleKind::Fenced => "fenced",
            RoleKind::Rejoining => "rejoining",
            RoleKind::Failed => "failed",
        }
    }
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a write cannot be accepted now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WriteRefusal {
    /// A standby (or promoting): writes go to `leader`.
    NotPrimary { leader: Option<NodeId> },
    /// A newer `epoch` exists; this node is rejoining.
    Fenced { epoch: Epoch },
    /// The primary cannot write now (switchover, `block`, WAL failure).
    Unavailable { reason: String },
}

enum Role {
    Primary(Primary),
    Standby(Standby),
    Promoting {
        operator: bool,
    },
    Fenced,
    /// `rewriting` once the rejoin has its plan and rewrites the log or
    /// the engine (a rewind, a snapshot restore): no promotion, forced or
    /// not, may take that half-rewritten state until it ends.
    Rejoining {
        rewriting: bool,
    },
    Failed {
        reason: String,
    },
}

impl Role {
    fn kind(&self) -> RoleKind {
        match self {
            Role::Primary(_) => RoleKind::Primary,
            Role::Standby(_) => RoleKind::Standby,
            Role::Promoting { .. } => RoleKind::Promoting,
            Role::Fenced => RoleKind::Fenced,
            Role::Rejoining { .. } => RoleKind::Rejoining,
            Role::Failed { .. } => RoleKind::Failed,
        }
    }
}

/// The role logic of one node.
pub(crate) struct Node {
    cfg: Config,
    /// Which standbys must confirm a write (`Primary::commit_target`):
    /// `ANY 1 (peer)` for a pair.
    commit_rule: quorum::CommitRule,
    /// `Config::cluster_rule_text`, compared with each heartbeat's.
    cluster_rule: String,
    /// The epoch and primary whose heartbeat, in this process's life, last
    /// named `cluster_rule` (none since named another), and when: a
    /// failover from the register of that epoch and primary, soon after,
    /// may judge by this node's own rule (`Node::promotion_rule`).
    primary_rule_heard: Option<(Epoch, NodeId, Time)>,
    /// Every other data node: the standbys a primary streams to.
    standbys: std::collections::BTreeSet<NodeId>,
    epoch: Epoch,
    leader: Option<NodeId>,
    role: Role,
    last_lsn: Lsn,
    flushed: Lsn,
    applied: Lsn,
    commit: Lsn,
    /// The request ids our log's records carry (see `request_index`).
    requests: RequestIndex,
    /// When the node last ran a step; a longer gap than `failover_timeout`
    /// means the process was paused (stopped, VM stalled) and evidence
    /// gathered before it is stale.
    last_step: Option<Time>,
    /// When the last `Tick` ran: ticks are due every heartbeat interval
    /// however busy the node is with other events.
    last_tick: Time,
    /// A standby whose WAL append failed (a full disk): when it takes WAL
    /// again, and how many appends failed in a row.
    wal_retry: Option<wal_failure::WalRetry>,
    /// Writing the epoch to disk failed: until a restart the node takes no
    /// newer epoch, which it could hold only in memory (`PersistFailed`).
    epoch_unwritable: bool,
    /// What the node knows of the arbiter (`None` without one).
    arbiter: Option<arbiter::ArbiterLink>,
    /// Automatic failover is paused by the operator (maintenance mode):
    /// a standby does not promote itself when the primary falls silent.
    /// Kept across role changes, forgotten at restart.
    failover_paused: bool,
    /// A quorum promotion in progress (`candidacy.rs`).
    candidacy: Option<candidacy::Candidacy>,
    /// The peer this node last refused loudly, why, and at which epoch: a
    /// peer retries five times a second, so it is said at error level
    /// once, not at every message (`requests.rs` `first_time_said`).
    said_loudly: Option<(requests::Loud, NodeId, Epoch)>,
    /// Retention lets go of records the engine has not made durable
    /// (`retention.rs`): said when it starts and ends, not every tick.
    trimming_past_engine: bool,
    /// Why the state machine and the WAL did not fit together at start
    /// (`rejoin.rs` `on_opened`), until a rejoin made them fit: no
    /// promotion, forced or not, may serve that state.
    state_misfit: Option<String>,
    /// An epoch whose every acknowledged write this node's log may hold as
    /// its primary: the epoch it stepped down from as a confirmed primary
    /// (in this life), or at start the epoch of its log's last record.
    /// Records carry the epoch of the primary that wrote them, and a node
    /// takes others' records only from a leader it follows, so while the
    /// arbiter's register still names this node primary of that epoch
    /// (nobody led after it) they are its own and hold every write the
    /// epoch acknowledged. That lets it lead again when nobody else may
    /// (`Node::reclaim_call`). A wiped node's empty log is no evidence.
    led_evidence: Option<Epoch>,
    out: Vec<Effect>,
}

impl Node {
    /// A node starting with what its disk holds. Returns the effects of
    /// bootstrapping (a fresh primary persists epoch 1). `log_end` is the
    /// WAL's last record (its LSN and epoch); `requests` holds the ids of
    /// the records the WAL retains (the runtime scans it).
    pub(crate) fn new(
        cfg: Config,
        meta: WalMeta,
        log_end: LogEnd,
        flushed: Lsn,
        applied: Lsn,
        requests: RequestIndex,
        now: Time,
    ) -> (Node, Vec<Effect>) {
        let last_lsn = log_end.lsn;
        let mut node = Node {
            requests,
            led_evidence: (log_end.lsn > Lsn::ZERO).then_some(log_end.epoch),
            epoch: meta.epoch,
            leader: meta.leader.clone(),
            role: Role::Fenced,
            last_lsn,
            flushed,
            applied,
            commit: applied,
            last_step: Some(now),
            last_tick: now,
            wal_retry: None,
            epoch_unwritable: false,
            arbiter: cfg
                .arbiter
                .as_ref()
                .map(|_| arbiter::ArbiterLink::default()),
            failover_paused: false,
            candidacy: None,
            said_loudly: None,
            trimming_past_engine: false,
            state_misfit: None,
            out: Vec::new(),
            commit_rule: cfg.commit_rule(),
            cluster_rule: cfg.cluster_rule_text(),
            primary_rule_heard: None,
            standbys: cfg.peer_ids().into_iter().collect(),
            cfg,
        };
        let me = node.cfg.node_id.clone();
        if meta.epoch == Epoch::ZERO && node.cfg.initial_role == InitialRole::Primary {
            // A new cluster, as far as this node knows. Its peer may have
            // been started as primary on a fresh directory too, so it takes
            // writes only once the peer confirmed it follows it
            // (`Primary::confirmed`); the heartbeats ask.
            node.epoch = Epoch(1);
            node.leader = Some(me.clone());
            node.emit(Effect::PersistMeta {
                epoch: node.epoch,
                leader: Some(me),
                confirmed: false,
            });
            node.role = Role::Primary(Primary::new(&node.standbys));
            node.warn_unconfirmed();
            node.emit(Effect::StartPrimaryTasks);
        } else if meta.leader.as_ref() == Some(&me) {
            // We were primary before the restart. A sync-mode primary must
            // hear from its standby before it may commit alone: the standby
            // may have promoted while we were down. One that was never
            // confirmed still waits for its peer's confirmation.
            // In a cluster it takes the next epoch before it writes.
            let retake = node.cfg.arbiter.is_some() && node.standbys.len() > 1;
            node.role = Role::Primary(Primary::restarted(
                &node.standbys,
                flushed,
                meta.confirmed,
                retake,
            ));
            if !meta.confirmed {
                node.warn_unconfirmed();
            }
            node.emit(Effect::StartPrimaryTasks);
        } else if let Some(restart) =
            rejoin::kept_point_to_rejoin(&meta, last_lsn, &node.cfg.peer_ids())
        {
            // We restarted as the primary, wrote after our log's end then,
            // and stepped down (or were fenced) before a rejoin settled it.
            // The new primary may hold other records under those LSNs and
            // epoch (ones we sent before a crash of our machine and lost),
            // which a stream's checks cannot tell apart: rejoin first,
            // which keeps nothing after the point (`LocalLog::restarted_at`).
            tracing::warn!(%restart, %last_lsn, "this node wrote records since it restarted as the primary and has not rejoined since; rejoining before it follows anyone");
            node.role = Role::Fenced;
            node.emit(Effect::StartRejoin {
                leader: meta.leader.clone(),
            });
        } else {
            node.role = Role::Standby(Standby::new());
        }
        node.recompute_commit();
        let effects = std::mem::take(&mut node.out);
        (node, effects)
    }

    /// Feeds one event; returns what the runtime must do, in order.
    pub(crate) fn step(&mut self, now: Time, event: Event) -> Vec<Effect> {
        self.notice_pause(now);
        match event {
            Event::Tick => {
                self.last_tick = now;
                self.on_tick(now);
            }
            Event::WriteRequested {
                payloads,
                request_ids,
            } => self.on_write_requested(now, payloads, request_ids),
            Event::LocalFlushed { lsn } => {
                // Not an invariant: the flusher's fsync and a standby's
                // inline one can finish in either order, so an older
                // position may be reported after a newer one.
                self.flushed = self.flushed.max(lsn);
                self.end_wal_retry_past(lsn);
                self.recompute_commit();
                self.try_finish_demotion();
            }
            Event::Applied { lsn } => {
                assert!(
                    lsn >= self.applied,
                    "node {}: applied LSN went backwards: {lsn} < {}",
                    self.cfg.node_id,
                    self.applied
                );
                self.applied = lsn;
            }
            Event::StandbyProgress {
                standby,
                positions,
                epoch,
            } => {
                if epoch > self.epoch {
                    // G1, G2: a standby of a newer epoch holds its own log;
                    // its positions say nothing about our records.
                    self.on_higher_epoch(epoch, None);
                } else {
                    // A standby holding records we lack is not one that
                    // follows an unconfirmed primary: we lost our data
                    // directory (`wiped_peer.rs`), and its stream's acks
                    // before it refuses our first batch confirm nothing.
                    let holds_ours = positions.flushed <= self.last_lsn
                        || self.cfg.testing_follow_an_unconfirmed_primary;
                    if epoch == self.epoch && holds_ours {
                        self.on_confirmed_by_peer(&standby);
                    }
                    self.on_standby_progress(&standby, positions);
                }
            }
            Event::StandbyReachable { standby } => self.on_standby_reachable(&standby),
            Event::StreamState { standby, up } => self.on_stream_state(&standby, up),
            Event::StandbyUnreachable { standby } => self.on_standby_unreachable(&standby, now),
            Event::StandbyFailed { standby } => self.on_standby_failed(&standby, now),
            Event::HeartbeatReceived { req } => self.on_heartbeat(now, req),
            Event::BatchReceived {
                batch,
                local_at_prev,
                local,
            } => self.on_batch(now, batch, local_at_prev, local),
            Event::HistoryRequested { header } => {
                if self.admit_from_follower(&header) {
                    self.emit(Effect::Answer(Ok(())));
                }
            }
            Event::SnapshotRequested { header } => self.on_snapshot_requested(header),
            Event::HigherEpoch { epoch, leader } => self.on_higher_epoch(epoch, leader),
            Event::FenceRequested {
                epoch,
                leader,
                reason,
            } => self.on_fence_requested(now, epoch, leader, reason),
            Event::Sealed {
                epoch,
                candidate,
                candidate_end,
                mine,
            } => self.on_sealed(now, epoch, candidate, candidate_end, mine),
            Event::FenceOrdered { epoch } => self.on_fence_ordered(epoch),
            Event::PromoteRequested { force, from } => self.on_promote_requested(now, force, from),
            Event::SwitchoverTo { standby } => self.on_switchover_to(standby),
            Event::FenceSent { confirmed_last_lsn } => self.on_fence_sent(confirmed_last_lsn),
            Event::Opened { first_lsn } => self.on_opened(first_lsn),
            Event::EveryStandbyReached => self.on_every_standby_reached(),
            Event::SealAnswered {
                from,
                epoch,
                answer,
                mine,
            } => self.on_seal_answered(now, from, epoch, answer, mine),
            Event::WalFetched { from, fetched } => self.on_wal_fetched(now, from, fetched),
            Event::RejoinStarted => {
                if matches!(self.role, Role::Fenced) {
                    self.change_role(Role::Rejoining { rewriting: false });
                }
            }
            Event::PeerLogFetched { peer, ours } => self.on_peer_log_fetched(peer, ours),
            Event::RejoinFinished {
                epoch,
                leader,
                first_lsn,
                last_lsn,
                flushed,
                applied,
                snapshot_ids,
            } => {
                // The rewind may have moved every position back: these
                // are the log's and the state machine's as they now are.
                // The ids of rewound records are forgotten (they were never
                // committed: a retry writes them again, once), and so are
                // those of records a snapshot replaced; the snapshot's own
                // take their place.
                self.requests.truncate_after(last_lsn);
                self.requests.remove_before(first_lsn);
                if let Some(ids) = snapshot_ids {
                    self.requests.replace_covered(&ids);
                }
                self.last_lsn = last_lsn;
                self.flushed = flushed;
                self.applied = applied;
                self.commit = applied;
                self.on_rejoin_finished(epoch, leader);
            }
            Event::WalFailed { reason } => self.on_wal_failed(reason),
            Event::PersistFailed {
                reason,
                epoch,
                leader,
            } => self.on_persist_failed(reason, epoch, leader),
            Event::WalAppendFailed { reason, last_lsn } => {
                self.on_wal_append_failed(now, reason, last_lsn)
            }
            Event::StopRequested => self.on_stop_requested(),
            Event::WalMeasured {
                first_lsn,
                durable_lsn,
                bounded_from,
            } => self.on_wal_retention(first_lsn, durable_lsn, bounded_from),
            Event::ArbiterAnswered { purpose, answer } => self.on_arbiter_answered(purpose, answer),
            Event::FailoverPaused { paused } => self.on_failover_paused(now, paused),
        }
        self.arbiter_work(now);
        self.last_step = Some(now);
        std::mem::take(&mut self.out)
    }

    /// The latest time by which the runtime must call `step(.., Tick)`:
    /// the next periodic tick, or an earlier role deadline. A deadline that
    /// had already passed at the last tick was handled by it and does not
    /// count again (or a node that cannot act on it would spin).
    pub(crate) fn next_deadline(&self, now: Time) -> Time {
        let periodic = self.last_tick + self.cfg.heartbeat_interval;
        let role = match &self.role {
            Role::Primary(p) => p.next_deadline(&self.cfg),
            Role::Standby(s) => s.next_deadline(&self.cfg, self.failover_paused),
            Role::Failed { .. } => self.wal_retry_due(),
            _ => None,
        };
        let deadline = match role {
            Some(d) if d > self.last_tick => periodic.min(d),
            _ => periodic,
        };
        deadline.max(now.min(periodic))
    }

    /// The role this node plays now.
    pub(crate) fn role(&self) -> RoleKind {
        self.role.kind()
    }

    /// The role our heartbeat answers tell the primary. A standby whose
    /// last append failed says `failed` until an append works again, even
    /// while it tries (a standby again): the primary counts it as lost, so
    /// its `on_standby_loss` policy applies instead of every write waiting
    /// out `sync_timeout` each time the standby tries a full disk again.
    pub(crate) fn role_for_primary(&self) -> RoleKind {
        match self.role {
            Role::Standby(_) if self.wal_retry.is_some() => RoleKind::Failed,
            _ => self.role.kind(),
        }
    }

    /// The highest epoch this node has persisted.
    pub(crate) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The leader of our epoch, as persisted with it (ourselves on a primary).
    pub(crate) fn leader(&self) -> Option<&NodeId> {
        self.leader.as_ref()
    }

    /// Everything up to here is committed: it may be applied and
    /// acknowledged. Never goes down except when a rejoin resets it.
    pub(crate) fn commit_lsn(&self) -> Lsn {
        self.commit
    }

    /// The last record appended to our WAL (not necessarily durable).
    pub(crate) fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Our WAL is durable up to here, as the runtime last reported.
    pub(crate) fn flushed_lsn(&self) -> Lsn {
        self.flushed
    }

    /// Our state machine applied up to here, as the applier last reported.
    pub(crate) fn applied_lsn(&self) -> Lsn {
        self.applied
    }

    /// The record that carries request id `id`, if our log holds it and
    /// the id is within the window (`Config::max_request_ids`).
    #[cfg(test)]
    pub(crate) fn request(&self, id: &crate::types::RequestId) -> Option<(Lsn, Epoch)> {
        self.requests.get(id)
    }

    /// The request ids of the records after `after` up to `up_to`, at most
    /// `max`, in LSN order, for a standby restored from a snapshot of ours
    /// at `up_to` (answered once the node admitted it as for the snapshot).
    /// Not capped at this node's commit LSN: a primary restarted since it
    /// built the snapshot may not have learned its commit again yet, and
    /// a short list would read as complete. The snapshot itself covers
    /// only applied, so committed, records.
    pub(crate) fn request_ids_between(
        &self,
        after: Lsn,
        up_to: Lsn,
        max: usize,
    ) -> Vec<crate::types::RequestIdAt> {
        self.requests.between(after, up_to, max)
    }

    /// Where the primary believes the pair's standby is (primary only).
    pub(crate) fn standby_positions(&self) -> Option<StandbyPositions> {
        match &self.role {
            Role::Primary(p) => Some(
                p.link(&self.cfg.peer_id)
                    .map_or_else(StandbyPositions::default, |l| l.positions),
            ),
            _ => None,
        }
    }

    /// On a primary, what it tells the standby about its sync status; on
    /// a standby, what the primary told it at the last contact (what its
    /// eligibility rests on); `NotSync` on every other role.
    pub(crate) fn sync_state(&self) -> SyncState {
        match &self.role {
            Role::Primary(_) => self.sync_state_of(&self.cfg.peer_id),
            Role::Standby(s) => s.sync_at_contact(),
            _ => SyncState::NotSync,
        }
    }

    /// On a primary, what it tells `standby` about its sync status:
    /// `Sync` only while the standby holds every acknowledged write, counts
    /// for commits and (with an arbiter) is in the register's sync set.
    pub(crate) fn sync_state_of(&self, standby: &NodeId) -> SyncState {
        match &self.role {
            Role::Primary(p) => {
                match p.sync_state_of(&self.cfg, &self.commit_rule, standby, self.commit) {
                    SyncState::Sync if !self.register_holds_standby(standby) => SyncState::NotSync,
                    state => state,
                }
            }
            _ => SyncState::NotSync,
        }
    }

    /// On a primary, each standby as it sees it; empty on other roles.
    pub(crate) fn standby_health(&self) -> Vec<crate::replicator::StandbyHealth> {
        let Role::Primary(p) = &self.role else {
            return Vec::new();
        };
        p.links()
            .map(|(id, link)| crate::replicator::StandbyHealth {
                node_id: id.clone(),
                connected: link.streaming,
                flushed_lsn: link.positions.flushed,
                lag_records: self.last_lsn.0.saturating_sub(link.positions.flushed.0),
                sync_state: self.sync_state_of(id),
                counted: link.is_counted() && self.commit_rule.priority(id) > 0,
            })
            .collect()
    }

    /// Whether a primary acknowledges writes without its standby right now.
    pub(crate) fn is_solo(&self) -> bool {
        matches!(&self.role, Role::Primary(p) if p.is_solo(&self.commit_rule))
    }

    /// Whether the standby could promote itself now if the primary fell
    /// silent (standby only).
    pub(crate) fn is_eligible(&self) -> bool {
        matches!(&self.role, Role::Standby(s) if s.eligible(&self.cfg))
    }

    /// Whether automatic failover is paused (maintenance mode).
    pub(crate) fn failover_paused(&self) -> bool {
        self.failover_paused
    }

    /// Why this standby is not promoting although its primary fell
    /// silent for `failover_timeout`: failover is paused. `None` otherwise.
    pub(crate) fn held_by_pause(&self) -> Option<&'static str> {
        match &self.role {
            Role::Standby(s) if self.failover_paused && s.held_by_pause => Some(
                "the primary has been silent for failover_timeout, but automatic failover is paused (maintenance): not promoting; resume failover or promote with force",
            ),
            _ => None,
        }
    }

    /// Whether this node accepts a write now, and if not, why.
    pub(crate) fn check_writable(&self) -> Result<(), WriteRefusal> {
        match &self.role {
            Role::Primary(p) => p.check_writable(&self.cfg, &self.commit_rule, self.epoch),
            Role::Fenced | Role::Rejoining { .. } => {
                Err(WriteRefusal::Fenced { epoch: self.epoch })
            }
            Role::Failed { reason } if self.wal_retry.is_some() => Err(WriteRefusal::Unavailable {
                reason: format!("the WAL failed ({reason})"),
            }),
            Role::Failed { reason } => Err(WriteRefusal::Unavailable {
                reason: format!("this node failed ({reason}); restart it once the cause is fixed"),
            }),
            Role::Standby(_) | Role::Promoting { .. } => Err(WriteRefusal::NotPrimary {
                leader: self.leader.clone().filter(|l| *l != self.cfg.node_id),
            }),
        }
    }

    fn emit(&mut self, effect: Effect) {
        self.out.push(effect);
    }

    fn warn_unconfirmed(&self) {
        tracing::warn!(
            epoch = %self.epoch,
            peer = %self.cfg.peer_id,
            "primary of a fresh data directory: refusing writes until the peer confirms it follows this node (start the peer as a standby, or `promote --force` this node for a deliberate single-node start)"
        );
    }

    fn notice_pause(&mut self, now: Time) {
        let Some(last) = self.last_step else { return };
        let gap = now.saturating_sub(last);
        if gap <= self.cfg.failover_timeout {
            return;
        }
        tracing::warn!(
            gap_ms = gap.as_millis() as u64,
            "this process did not run for longer than failover_timeout; evidence about the peer gathered before the pause no longer counts"
        );
        match &mut self.role {
            Role::Primary(p) => p.forget_contact(),
            Role::Standby(s) => s.forget_contact(),
            _ => {}
        }
    }

    fn change_role(&mut self, to: Role) {
        let from = self.role.kind();
        let to_kind = to.kind();
        let was_primary = from == RoleKind::Primary;
        self.role = to;
        if from != to_kind {
            // A new role: a peer refused loudly before is news again.
            self.said_loudly = None;
            self.emit(Effect::RoleChanged {
                from,
                to: to_kind,
                epoch: self.epoch,
            });
        }
        if was_primary && to_kind != RoleKind::Primary {
            self.emit(Effect::StopPrimaryTasks);
        }
        if !was_primary && to_kind == RoleKind::Primary {
            self.emit(Effect::StartPrimaryTasks);
        }
        self.recompute_commit();
    }

    /// Moves the commit point forward (never back) and asks for the
    /// records up to it to be applied.
    fn recompute_commit(&mut self) {
        let target = match &self.role {
            Role::Primary(p) => {
                let by_links = p.commit_target(&self.cfg, &self.commit_rule, self.flushed);
                Some(match self.register_commit_bound(p) {
                    Some(bound) => by_links.min(bound),
                    None => by_links,
                })
            }
            // A standby applies everything it has flushed: the primary's
            // commit in remote-apply mode waits for exactly that.
            Role::Standby(_) => Some(self.flushed),
            _ => None,
        };
        if let Some(target) = target
            && target > self.commit
        {
            self.commit = target;
            if let Role::Primary(p) = &mut self.role {
                p.committed(target);
            }
            self.emit(Effect::Commit { lsn: target });
        }
    }

    fn on_tick(&mut self, now: Time) {
        match &mut self.role {
            Role::Primary(_) => self.primary_tick(now),
            Role::Standby(_) => self.standby_tick(now),
            Role::Failed { .. } => self.retry_wal(now),
            _ => {}
        }
    }

    fn fail_all_waiters(&mut self, failure: WaiterFailure) {
        if let Role::Primary(p) = &mut self.role {
            p.clear_pending();
        }
        self.emit(Effect::FailWaiters {
            up_to: None,
            failure,
        });
    }

    fn become_primary_after_promotion(&mut self) {
        // Everything we hold is ours to commit now; the old primary's
        // uncommitted tail that we did receive becomes committed.
        self.change_role(Role::Primary(Primary::promoted(&self.standbys)));
    }
}
