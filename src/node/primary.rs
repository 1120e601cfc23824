//! The primary's side of the role logic: commit, the standby link and the
//! planned step-down.

use super::event::{Effect, FenceOutcome, StandbyPositions, SyncState, Time, WaiterFailure};
use super::quorum::CommitRule;
use super::{Node, Role, WriteRefusal};
use crate::config::{CommitMode, Config, OnStandbyLoss};
use crate::types::{Epoch, Lsn, NodeId};
use std::collections::{BTreeSet, VecDeque};

/// Whether commits wait for the standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Commits wait for the standby (sync modes).
    Sync,
    /// Commits do not wait: the standby was lost with `solo`, or we were
    /// just promoted. Back to `Sync` once the standby has caught up.
    Solo,
    /// The standby was lost with `block`: writes are refused until it is back.
    Blocked,
}

struct Demotion {
    epoch: Epoch,
    leader: NodeId,
    deadline: Time,
}

pub(super) struct Primary {
    pub(super) standby: StandbyPositions,
    pub(super) streaming: bool,
    /// Set when the standby answered at our epoch since this process
    /// started (or last woke from a pause). Going on alone needs it: a
    /// primary that has not heard from its standby cannot know whether the
    /// standby promoted meanwhile.
    contact_this_life: bool,
    /// First failed call to the standby since its last answer.
    unreachable_since: Option<Time>,
    /// The standby's heartbeat answers say its WAL failed: until one says
    /// it is a standby again, its stream acks are not contact.
    standby_failed: bool,
    link: Link,
    /// Appended, not yet committed: `(last lsn of the append, when)`, in
    /// time order. A retry that waits for an uncommitted record adds
    /// `(its lsn, when)` too, so its LSN may be below an earlier entry's.
    pending: VecDeque<(Lsn, Time)>,
    demotion: Option<Demotion>,
    /// After a restart: the last record this node may have acknowledged
    /// before it went down (everything durable on its disk; it may have
    /// acknowledged alone). Its commit LSN starts lower, so "in sync" must
    /// also cover this.
    may_have_acknowledged: Lsn,
    /// Whether this node is known to be the only primary of its epoch. A
    /// node started as primary on a fresh data directory is not: its peer
    /// may have been started as primary on a fresh directory too, and both
    /// would take writes in epoch 1. It refuses writes until its peer has
    /// answered it as a node following it at this epoch (a heartbeat
    /// answered, a batch acknowledged), which the peer does only after it
    /// persisted this node as the leader of the epoch, so the peer can
    /// never be a primary of it itself. A promoted primary is confirmed by
    /// its promotion (the fence); a forced promotion by the operator.
    pub(super) confirmed: bool,
    /// With an arbiter: the standby is lost and the `solo` policy wants to
    /// go on without it, which waits for the arbiter's swap taking it out
    /// of the sync set.
    pub(super) wants_solo: bool,
}

impl Primary {
    /// A primary started on a fresh data directory: not confirmed yet.
    pub(super) fn new() -> Primary {
        Primary {
            standby: StandbyPositions::default(),
            streaming: false,
            contact_this_life: false,
            unreachable_since: None,
            standby_failed: false,
            link: Link::Sync,
            pending: VecDeque::new(),
            demotion: None,
            may_have_acknowledged: Lsn::ZERO,
            confirmed: false,
            wants_solo: false,
        }
    }

    /// A primary restarting with `durable` records on its disk, confirmed
    /// or not as its meta says.
    pub(super) fn restarted(durable: Lsn, confirmed: bool) -> Primary {
        Primary {
            may_have_acknowledged: durable,
            confirmed,
            ..Primary::new()
        }
    }

    /// A primary just promoted: it may acknowledge alone until its peer
    /// rejoins and catches up.
    pub(super) fn promoted() -> Primary {
        Primary {
            link: Link::Solo,
            confirmed: true,
            ..Primary::new()
        }
    }

    pub(super) fn note_promoted_contact(&mut self) {
        self.contact_this_life = true;
    }

    pub(super) fn forget_contact(&mut self) {
        self.contact_this_life = false;
        self.unreachable_since = None;
    }

    pub(super) fn is_solo(&self) -> bool {
        self.link == Link::Solo
    }

    pub(super) fn clear_pending(&mut self) {
        self.pending.clear();
    }

    fn standby_position(&self, mode: CommitMode) -> Lsn {
        match mode {
            CommitMode::Async | CommitMode::RemoteFlush => self.standby.flushed,
            CommitMode::RemoteWrite => self.standby.written,
            CommitMode::RemoteApply => self.standby.applied,
        }
    }

    /// What may be acknowledged: the pair's `rule` (`ANY 1 (peer)`) over
    /// the standbys commits wait for, which is the standby unless the mode
    /// is async, we go on alone, or the testing switch acknowledges before
    /// the standby's flush; with none, our own durable end `flushed`.
    /// `peer_set` is `{peer}`, built once (this runs on every ack).
    pub(super) fn commit_target(
        &self,
        cfg: &Config,
        rule: &CommitRule,
        peer_set: &BTreeSet<NodeId>,
        flushed: Lsn,
    ) -> Option<Lsn> {
        let waits_for_standby = cfg.commit_mode.is_sync()
            && self.link != Link::Solo
            && !cfg.testing_ack_before_standby_flush;
        let none = BTreeSet::new();
        let sync_set = if waits_for_standby { peer_set } else { &none };
        let standby = self.standby_position(cfg.commit_mode);
        Some(rule.acknowledgeable_by(sync_set, |_| standby, flushed))
    }

    pub(super) fn committed(&mut self, lsn: Lsn) {
        while self.pending.front().is_some_and(|(l, _)| *l <= lsn) {
            self.pending.pop_front();
        }
    }

    pub(super) fn sync_state(&self, cfg: &Config, commit: Lsn) -> SyncState {
        if !cfg.commit_mode.is_sync() {
            return SyncState::Async;
        }
        // In sync when the standby holds every acknowledged write at the
        // mode's own position: in remote-write that is "written", which a
        // live standby that promotes keeps (only a crash of its OS would
        // lose it, and a restarted standby is not eligible anyway).
        let acknowledged = commit.max(self.may_have_acknowledged);
        if self.link != Link::Solo && self.standby_position(cfg.commit_mode) >= acknowledged {
            SyncState::Sync
        } else {
            SyncState::NotSync
        }
    }

    /// Whether the standby holds every write this primary acknowledged
    /// (or may have, before a restart) and commits wait for it again, so
    /// the arbiter may put it into the sync set.
    pub(super) fn may_join_sync_set(&self, cfg: &Config, rule: &CommitRule, commit: Lsn) -> bool {
        cfg.commit_mode.is_sync()
            && self.confirmed
            && self.link == Link::Sync
            && self.streaming
            && self.contact_this_life
            && self.unreachable_since.is_none()
            && !self.standby_failed
            && self.demotion.is_none()
            && rule
                .may_join(
                    &cfg.peer_id,
                    self.standby_position(cfg.commit_mode),
                    commit.max(self.may_have_acknowledged),
                )
                .is_ok()
    }

    pub(super) fn check_writable(&self, cfg: &Config, epoch: Epoch) -> Result<(), WriteRefusal> {
        if !self.confirmed {
            let peer = &cfg.peer_id;
            return Err(WriteRefusal::Unavailable {
                reason: format!(
                    "this node was started as primary on a fresh data directory and takes writes only once its peer {peer} has confirmed it follows this node at epoch {epoch} (so two nodes both started as primary never both take writes); start {peer} as a standby and make sure the two can reach each other, or run `promote --force` on this node for a deliberate single-node start"
                ),
            });
        }
        if self.demotion.is_some() {
            return Err(WriteRefusal::Unavailable {
                reason: "a planned switchover is in progress; retry on the new primary shortly"
                    .into(),
            });
        }
        if self.link == Link::Blocked {
            // Blocked waiting to go solo: only the arbiter's swap was
            // missing (`block_without_arbiter`); else the `block` policy.
            let why = if self.wants_solo {
                "the arbiter has not recorded it out of the sync set (it is unreachable or refused); writes resume when either answers"
            } else {
                "on_standby_loss = block; writes resume when it is back"
            };
            return Err(WriteRefusal::Unavailable {
                reason: format!(
                    "the standby has been unreachable for more than sync_timeout ({:?}) and {why}",
                    cfg.sync_timeout
                ),
            });
        }
        Ok(())
    }

    pub(super) fn next_deadline(&self, cfg: &Config) -> Option<Time> {
        let mut deadline: Option<Time> = None;
        let mut consider = |t: Time| deadline = Some(deadline.map_or(t, |d| d.min(t)));
        if let Some((_, at)) = self.pending.front() {
            consider(*at + cfg.sync_timeout);
        }
        if let Some(since) = self.unreachable_since {
            consider(since + cfg.sync_timeout);
        }
        if let Some(d) = &self.demotion {
            consider(d.deadline);
        }
        deadline
    }

    /// Why this primary may not hand over to its standby before it stops
    /// (`None`: it may). A handover is a planned switchover, so it never
    /// loses an acknowledged write; it is only worth trying when the
    /// standby is reachable and in sync, so it can finish in milliseconds.
    pub(super) fn why_no_handover(&self, cfg: &Config, commit: Lsn) -> Option<String> {
        if self.demotion.is_some() {
            return Some("a planned switchover is already in progress".into());
        }
        if !self.streaming || !self.contact_this_life || self.unreachable_since.is_some() {
            return Some("the standby is not reachable".into());
        }
        match self.sync_state(cfg, commit) {
            SyncState::NotSync => {
                Some("the standby is not in sync (it may lack acknowledged writes)".into())
            }
            SyncState::Sync | SyncState::Async => None,
        }
    }

    pub(super) fn begin_demotion(&mut self, epoch: Epoch, leader: NodeId, deadline: Time) {
        self.demotion = Some(Demotion {
            epoch,
            leader,
            deadline,
        });
    }
}

impl Node {
    fn primary(&mut self) -> Option<&mut Primary> {
        match &mut self.role {
            Role::Primary(p) => Some(p),
            _ => None,
        }
    }

    /// A retried write waits for the uncommitted record `lsn`: it gets a
    /// `sync_timeout` of its own from now (the first attempt's may have
    /// run out already), and shares the record's fate before that.
    pub(super) fn on_retry_waits(&mut self, now: Time, lsn: Lsn) {
        let commit = self.commit;
        if let Some(p) = self.primary()
            && lsn > commit
        {
            p.pending.push_back((lsn, now));
        }
    }

    pub(super) fn on_appended(&mut self, now: Time, last_lsn: Lsn) {
        assert!(
            last_lsn >= self.last_lsn,
            "node {}: appended LSN went backwards: {last_lsn} < {}",
            self.cfg.node_id,
            self.last_lsn
        );
        self.last_lsn = last_lsn;
        if let Some(p) = self.primary() {
            p.pending.push_back((last_lsn, now));
        }
    }

    /// The peer answered us at our epoch as a node that follows us: a
    /// fresh primary is confirmed (and persists it before it takes a write).
    /// With an arbiter only the register confirms a fresh primary: the
    /// create swap that names it.
    pub(super) fn on_confirmed_by_peer(&mut self) {
        if self.has_arbiter() {
            return;
        }
        let why = format!(
            "the peer {} confirmed it follows this node",
            self.cfg.peer_id
        );
        self.on_confirmed(&why);
    }

    /// A fresh primary learned it is the only primary of its epoch
    /// (`why`): it persists that, then takes writes.
    pub(super) fn on_confirmed(&mut self, why: &str) {
        let (epoch, me) = (self.epoch, self.cfg.node_id.clone());
        let Some(p) = self.primary() else { return };
        if p.confirmed {
            return;
        }
        p.confirmed = true;
        tracing::info!(%epoch, "{why}: accepting writes");
        self.emit(Effect::PersistMeta {
            epoch,
            leader: Some(me),
            confirmed: true,
        });
    }

    pub(super) fn on_standby_reachable(&mut self) {
        self.on_confirmed_by_peer();
        if let Some(p) = self.primary() {
            if std::mem::take(&mut p.standby_failed) {
                tracing::info!("the standby's WAL works again");
            }
            p.unreachable_since = None;
            p.contact_this_life = true;
            p.wants_solo = false;
            if p.link == Link::Blocked {
                tracing::info!("standby answered again; accepting writes");
                p.link = Link::Sync;
            }
        }
        self.clear_held_back();
    }

    pub(super) fn on_standby_progress(&mut self, positions: StandbyPositions) {
        let cfg = self.cfg.clone();
        let commit = self.commit;
        let Some(p) = self.primary() else { return };
        p.standby = positions;
        if !p.standby_failed {
            p.unreachable_since = None;
            p.contact_this_life = true;
            p.wants_solo = false;
        }
        match p.link {
            Link::Blocked if !p.standby_failed => {
                tracing::info!("standby answered again; accepting writes");
                p.link = Link::Sync;
            }
            Link::Solo
                if cfg.commit_mode.is_sync() && p.standby_position(cfg.commit_mode) >= commit =>
            {
                tracing::info!(%commit, "standby caught up; commits wait for it again");
                p.link = Link::Sync;
            }
            _ => {}
        }
        self.recompute_commit();
        self.try_finish_demotion();
    }

    pub(super) fn on_standby_failed(&mut self, now: Time) {
        if let Some(p) = self.primary() {
            p.standby_failed = true;
        }
        self.on_standby_unreachable(now);
    }

    pub(super) fn on_standby_unreachable(&mut self, now: Time) {
        if let Some(p) = self.primary()
            && p.unreachable_since.is_none()
        {
            p.unreachable_since = Some(now);
        }
    }

    pub(super) fn primary_tick(&mut self, now: Time) {
        let cfg = self.cfg.clone();
        let Some(p) = self.primary() else { return };

        if p.demotion.as_ref().is_some_and(|d| now >= d.deadline) {
            p.demotion = None;
            tracing::warn!(
                "planned switchover abandoned: the standby did not catch up in time; accepting writes again"
            );
            self.emit(Effect::ReplyFence(FenceOutcome::Refused {
                reason:
                    "switchover timed out: the standby did not catch up within switchover_timeout"
                        .into(),
            }));
        }

        let Some(p) = self.primary() else { return };
        let lost = cfg.commit_mode.is_sync()
            && p.unreachable_since
                .is_some_and(|since| now.saturating_sub(since) >= cfg.sync_timeout);
        if lost && p.link == Link::Sync {
            match cfg.on_standby_loss {
                // With an arbiter, only its swap taking the standby out of
                // the sync set lets us go on alone (`arbiter.rs`): the
                // swap fails if the standby promoted, so neither contact
                // since start nor the peer's confirmation is needed.
                OnStandbyLoss::Solo
                    if cfg.arbiter.is_some() && !cfg.testing_solo_without_arbiter_swap =>
                {
                    if !p.wants_solo {
                        tracing::warn!(
                            "standby unreachable for sync_timeout: asking the arbiter to take it out of the sync set before acknowledging without it"
                        );
                        p.wants_solo = true;
                    }
                }
                // Never before the peer confirmed us: it may be a primary too.
                OnStandbyLoss::Solo if p.contact_this_life && p.confirmed => {
                    tracing::warn!(
                        "standby unreachable for sync_timeout: acknowledging writes WITHOUT the standby (on_standby_loss = solo); a promotion on the other side would drop them"
                    );
                    p.link = Link::Solo;
                }
                OnStandbyLoss::Solo => {
                    // No contact since start: the standby may have promoted.
                }
                OnStandbyLoss::Block => {
                    tracing::warn!(
                        "standby unreachable for sync_timeout: refusing writes (on_standby_loss = block)"
                    );
                    self.refuse_writes_until_answered();
                }
            }
        }

        let commit = self.commit;
        let dropping_standby = self.arbiter_asking_to_drop_standby();
        let Some(p) = self.primary() else { return };
        if p.wants_solo && p.link == Link::Sync && dropping_standby {
            // The arbiter's answer decides, within the call's deadline,
            // whether these writes commit alone or fail
            // (`block_without_arbiter`).
            return;
        }
        let mut timed_out: Option<Lsn> = None;
        while let Some(&(lsn, at)) = p.pending.front() {
            if lsn <= commit {
                // A retry's entry left behind a later append by `committed`.
                p.pending.pop_front();
                continue;
            }
            if now.saturating_sub(at) < cfg.sync_timeout {
                break;
            }
            timed_out = Some(timed_out.map_or(lsn, |t| t.max(lsn)));
            p.pending.pop_front();
        }
        self.recompute_commit();
        if let Some(lsn) = timed_out
            && lsn > self.commit
        {
            self.emit(Effect::FailWaiters {
                up_to: Some(lsn),
                failure: WaiterFailure::SyncTimeout,
            });
        }
    }

    /// The standby is lost and we may not go on alone: every waiting write
    /// fails (`SyncTimeout`: its outcome is unknown) and new ones are
    /// refused until the standby (or, with an arbiter, the arbiter)
    /// answers.
    fn refuse_writes_until_answered(&mut self) {
        let Some(p) = self.primary() else { return };
        p.link = Link::Blocked;
        p.pending.clear();
        self.emit(Effect::FailWaiters {
            up_to: None,
            failure: WaiterFailure::SyncTimeout,
        });
    }

    /// The arbiter took the lost standby out of the sync set: it can no
    /// longer promote, so we acknowledge without it.
    pub(super) fn go_solo_after_swap(&mut self) {
        let Some(p) = self.primary() else { return };
        if !std::mem::take(&mut p.wants_solo) {
            return;
        }
        tracing::warn!(
            "the arbiter recorded the standby out of the sync set: acknowledging writes WITHOUT the standby until it catches up"
        );
        p.link = Link::Solo;
        self.clear_held_back();
        self.recompute_commit();
    }

    /// The standby is lost and the arbiter did not take it out of the sync
    /// set: we may not acknowledge alone, so writes fail until one of the
    /// two answers (then the swap is tried again).
    pub(super) fn block_without_arbiter(&mut self, error: &str) {
        let Some(p) = self.primary() else { return };
        if !p.wants_solo {
            return;
        }
        if p.link == Link::Sync {
            tracing::warn!(%error, "standby lost and the arbiter did not answer: refusing writes until one of them does");
            self.refuse_writes_until_answered();
        }
        self.hold_back(format!(
            "the standby is lost, but the arbiter did not take it out of the sync set: {error}"
        ));
    }

    /// The engine asks us to stop: a primary hands over to a standby that
    /// can take over at once (a planned switchover, so writes pause for a
    /// round trip and a fence, not `failover_timeout`); otherwise, and on
    /// any other role, the node just stops.
    pub(super) fn on_stop_requested(&mut self) {
        let (cfg, commit) = (self.cfg.clone(), self.commit);
        let why_not = match &self.role {
            Role::Primary(p) => p.why_no_handover(&cfg, commit),
            other => {
                tracing::info!(role = %other.kind(), "stopping");
                self.emit(Effect::Stop);
                return;
            }
        };
        match why_not {
            None => {
                tracing::info!(peer = %cfg.peer_id, "stopping the primary: handing over to the standby first");
                self.emit(Effect::HandOver);
            }
            Some(why) => {
                tracing::warn!(%why, "stopping the primary without handing over; the standby takes over by failover if it may");
                self.emit(Effect::Stop);
            }
        }
    }

    /// Ends a planned step-down once the standby holds everything we wrote.
    pub(super) fn try_finish_demotion(&mut self) {
        let mode = self.cfg.commit_mode;
        let (flushed, last) = (self.flushed, self.last_lsn);
        let Some(p) = self.primary() else { return };
        let Some(d) = &p.demotion else { return };
        let caught_up =
            flushed >= last && p.standby.flushed >= last && p.standby_position(mode) >= last;
        if !caught_up {
            return;
        }
        let (epoch, leader) = (d.epoch, d.leader.clone());
        p.demotion = None;
        self.recompute_commit();
        tracing::info!(%epoch, %leader, last_lsn = %last, "planned switchover: standby has everything; stepping down");
        self.persist(epoch, Some(leader.clone()));
        self.change_role(Role::Fenced);
        self.emit(Effect::ReplyFence(FenceOutcome::Fenced { last_lsn: last }));
        self.emit(Effect::StartRejoin {
            leader: Some(leader),
        });
    }
}
