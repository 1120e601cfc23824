//! The primary's side of the role logic: commit under the rule, one link
//! per standby, and the planned step-down.

use super::event::{Effect, FenceOutcome, StandbyPositions, SyncState, Time, WaiterFailure};
use super::quorum::CommitRule;
use super::standby_link::{Counting, StandbyLink};
use super::{Node, Role, WriteRefusal};
use crate::config::{Config, OnStandbyLoss};
use crate::types::{Epoch, Lsn, NodeId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

struct Demotion {
    epoch: Epoch,
    leader: NodeId,
    deadline: Time,
}

pub(super) struct Primary {
    /// One link per standby this node streams to, by node id.
    links: BTreeMap<NodeId, StandbyLink>,
    /// The ids of the links that count (`StandbyLink::is_counted`), kept
    /// beside `links` so the commit on every ack allocates nothing.
    counted: BTreeSet<NodeId>,
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
    /// would take writes in epoch 1. It refuses writes until a standby has
    /// answered it as a node following it at this epoch (a heartbeat
    /// answered, a batch acknowledged), which the standby does only after
    /// it persisted this node as the leader of the epoch, so it can never
    /// be a primary of it itself. A promoted primary is confirmed by its
    /// promotion (the fence); a forced promotion by the operator.
    pub(super) confirmed: bool,
    /// A primary restarted in a cluster takes the next epoch through the
    /// arbiter's register before it writes (`arbiter.rs`, `Retake`). A
    /// crash of its machine may have lost records some standby holds
    /// (it streams before its own fsync covers them); records it writes
    /// from now on then never share an `(lsn, epoch)` with those, so every
    /// log check and a candidacy's ranking tell them apart. A pair has
    /// one standby and its restart points (`runtime/restart_point.rs`)
    /// cover it; with two or more, one standby may hold the lost records
    /// while another takes the new ones and then leads.
    pub(super) retake: bool,
}

impl Primary {
    fn with_links(standbys: &BTreeSet<NodeId>, counting: Counting) -> Primary {
        let mut p = Primary {
            links: standbys
                .iter()
                .map(|id| (id.clone(), StandbyLink::new(counting)))
                .collect(),
            counted: BTreeSet::new(),
            pending: VecDeque::new(),
            demotion: None,
            may_have_acknowledged: Lsn::ZERO,
            confirmed: false,
            retake: false,
        };
        p.refresh_counted();
        p
    }

    /// A primary started on a fresh data directory: not confirmed yet.
    pub(super) fn new(standbys: &BTreeSet<NodeId>) -> Primary {
        Primary::with_links(standbys, Counting::Counted)
    }

    /// A primary restarting with `durable` records on its disk, confirmed
    /// or not as its meta says.
    pub(super) fn restarted(
        standbys: &BTreeSet<NodeId>,
        durable: Lsn,
        confirmed: bool,
        retake: bool,
    ) -> Primary {
        Primary {
            may_have_acknowledged: durable,
            confirmed,
            retake: retake && confirmed,
            ..Primary::new(standbys)
        }
    }

    /// A primary just promoted: it acknowledges without its standbys
    /// until each has rejoined and caught up. The node it fenced answered
    /// it, so contact counts as made.
    pub(super) fn promoted(standbys: &BTreeSet<NodeId>) -> Primary {
        let mut p = Primary::with_links(standbys, Counting::NotCounted);
        p.confirmed = true;
        for link in p.links.values_mut() {
            link.contact_this_life = true;
        }
        p
    }

    fn refresh_counted(&mut self) {
        self.counted = self
            .links
            .iter()
            .filter(|(_, l)| l.is_counted())
            .map(|(id, _)| id.clone())
            .collect();
    }

    fn set_counting(&mut self, standby: &NodeId, counting: Counting) {
        if let Some(link) = self.links.get_mut(standby) {
            link.counting = counting;
        }
        self.refresh_counted();
    }

    pub(super) fn link(&self, standby: &NodeId) -> Option<&StandbyLink> {
        self.links.get(standby)
    }

    pub(super) fn links(&self) -> impl Iterator<Item = (&NodeId, &StandbyLink)> {
        self.links.iter()
    }

    pub(super) fn forget_contact(&mut self) {
        for link in self.links.values_mut() {
            link.contact_this_life = false;
            link.unreachable_since = None;
        }
    }

    /// Commits wait for no standby (the pair's "solo"): none the rule
    /// names counts.
    pub(super) fn is_solo(&self, rule: &CommitRule) -> bool {
        rule.counted(&self.counted).next().is_none()
    }

    pub(super) fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// What may be acknowledged: the commit `rule` over the standbys that
    /// count, unless the mode is async or the testing switch acknowledges
    /// before the standbys' flush; with none, our own durable end
    /// `flushed`.
    pub(super) fn commit_target(&self, cfg: &Config, rule: &CommitRule, flushed: Lsn) -> Lsn {
        let waits = cfg.commit_mode.is_sync() && !cfg.testing_ack_before_standby_flush;
        let none = BTreeSet::new();
        let sync_set = if waits { &self.counted } else { &none };
        let mode = cfg.commit_mode;
        rule.acknowledgeable_by(
            sync_set,
            |id| self.links.get(id).map_or(Lsn::ZERO, |l| l.position(mode)),
            flushed,
        )
    }

    pub(super) fn committed(&mut self, lsn: Lsn) {
        while self.pending.front().is_some_and(|(l, _)| *l <= lsn) {
            self.pending.pop_front();
        }
    }

    /// What we tell `standby` of its sync status. A standby the rule does
    /// not name is never in sync: no write waits for it.
    pub(super) fn sync_state_of(
        &self,
        cfg: &Config,
        rule: &CommitRule,
        standby: &NodeId,
        commit: Lsn,
    ) -> SyncState {
        if !cfg.commit_mode.is_sync() {
            return SyncState::Async;
        }
        // In sync when the standby holds every acknowledged write at the
        // mode's own position: in remote-write that is "written", which a
        // live standby that promotes keeps (only a crash of its OS would
        // lose it, and a restarted standby is not eligible anyway).
        let acknowledged = commit.max(self.may_have_acknowledged);
        match self.links.get(standby) {
            Some(l)
                if l.is_counted()
                    && rule.priority(standby) > 0
                    && l.position(cfg.commit_mode) >= acknowledged =>
            {
                SyncState::Sync
            }
            _ => SyncState::NotSync,
        }
    }

    /// Whether `standby` holds every write this primary acknowledged (or
    /// may have, before a restart) and commits wait for it again, so the
    /// arbiter may put it into the sync set.
    pub(super) fn may_join_sync_set(
        &self,
        cfg: &Config,
        rule: &CommitRule,
        standby: &NodeId,
        commit: Lsn,
    ) -> bool {
        let Some(link) = self.links.get(standby) else {
            return false;
        };
        cfg.commit_mode.is_sync()
            && self.confirmed
            && link.counting == Counting::Counted
            && link.is_reachable()
            && self.demotion.is_none()
            && rule
                .may_join(
                    standby,
                    link.position(cfg.commit_mode),
                    commit.max(self.may_have_acknowledged),
                )
                .is_ok()
    }

    /// Every write this primary acknowledged, or may have before a restart.
    pub(super) fn acknowledged(&self, commit: Lsn) -> Lsn {
        commit.max(self.may_have_acknowledged)
    }

    /// The links that cannot confirm now (`Blocked`) leave fewer counted
    /// standbys than the rule needs: nothing can commit until one answers.
    fn rule_unmeetable(&self, rule: &CommitRule) -> bool {
        let need = rule.effective_count(&self.counted);
        let able = rule
            .counted(&self.counted)
            .filter(|id| self.links[*id].counting == Counting::Counted)
            .count();
        able < need
    }

    pub(super) fn check_writable(
        &self,
        cfg: &Config,
        rule: &CommitRule,
        epoch: Epoch,
    ) -> Result<(), WriteRefusal> {
        if !self.confirmed {
            let peers = self.names();
            return Err(WriteRefusal::Unavailable {
                reason: format!(
                    "this node was started as primary on a fresh data directory and takes writes only once its peer {peers} has confirmed it follows this node at epoch {epoch} (so two nodes both started as primary never both take writes); start {peers} as a standby and make sure they can reach each other, or run `promote --force` on this node for a deliberate single-node start (not if {peers} holds data: it refuses this node then, and forcing would discard that data)"
                ),
            });
        }
        if self.demotion.is_some() {
            return Err(WriteRefusal::Unavailable {
                reason: "a planned switchover is in progress; retry on the new primary shortly"
                    .into(),
            });
        }
        if self.retake {
            return Err(WriteRefusal::Unavailable {
                reason: format!(
                    "this node restarted as the primary of epoch {epoch} and takes epoch {} through the arbiter before it writes (a standby may hold records it lost in a crash); retry shortly, or check that the arbiter answers",
                    epoch.next()
                ),
            });
        }
        if cfg.commit_mode.is_sync() && self.rule_unmeetable(rule) {
            let blocked: Vec<(&NodeId, &StandbyLink)> = self
                .links
                .iter()
                .filter(|(_, l)| l.counting == Counting::Blocked)
                .collect();
            // Blocked waiting to go on without it: only the arbiter's swap
            // was missing (`block_without_arbiter`); else the `block` policy.
            let why = if blocked.iter().any(|(_, l)| l.wants_out) {
                "the arbiter has not recorded it out of the sync set (it is unreachable or refused); writes resume when either answers"
            } else if cfg.on_standby_loss == OnStandbyLoss::Solo {
                "this node has not heard from it since it started (or woke from a pause), so it may have promoted meanwhile and on_standby_loss = solo cannot go on without it; writes resume when it answers (start it again if it is down)"
            } else {
                "on_standby_loss = block; writes resume when it is back"
            };
            let names: Vec<&str> = blocked.iter().map(|(id, _)| id.0.as_str()).collect();
            let who = if self.links.len() == 1 {
                "the standby has".to_string()
            } else {
                format!("the standby {} has", names.join(", "))
            };
            return Err(WriteRefusal::Unavailable {
                reason: format!(
                    "{who} been unreachable for more than sync_timeout ({:?}) and {why}",
                    cfg.sync_timeout
                ),
            });
        }
        Ok(())
    }

    /// The standbys' names, for messages.
    fn names(&self) -> String {
        let names: Vec<&str> = self.links.keys().map(|id| id.0.as_str()).collect();
        names.join(", ")
    }

    pub(super) fn next_deadline(&self, cfg: &Config) -> Option<Time> {
        let mut deadline: Option<Time> = None;
        let mut consider = |t: Time| deadline = Some(deadline.map_or(t, |d| d.min(t)));
        if let Some((_, at)) = self.pending.front() {
            consider(*at + cfg.sync_timeout);
        }
        for link in self.links.values() {
            if let Some(since) = link.unreachable_since {
                consider(since + cfg.sync_timeout);
            }
        }
        if let Some(d) = &self.demotion {
            consider(d.deadline);
        }
        deadline
    }

    /// The standby this primary hands over to before it stops, or why it
    /// may not. A handover is a planned switchover, so it never loses an
    /// acknowledged write; it is only worth trying to a standby that is
    /// reachable and in sync, so it can finish in milliseconds. Of several,
    /// the most advanced (then the first by name). During a planned
    /// switchover, the standby taking over: asked to, it answers once that
    /// switchover ends, so the node stops after it rather than abandon it
    /// with writes already paused.
    pub(super) fn handover_target(
        &self,
        cfg: &Config,
        rule: &CommitRule,
        commit: Lsn,
    ) -> Result<NodeId, String> {
        if let Some(d) = &self.demotion {
            return Ok(d.leader.clone());
        }
        let reachable: Vec<(&NodeId, &StandbyLink)> = self
            .links
            .iter()
            .filter(|(_, l)| l.is_reachable())
            .collect();
        if reachable.is_empty() {
            return Err("the standby is not reachable".into());
        }
        reachable
            .into_iter()
            .filter(|(id, _)| self.sync_state_of(cfg, rule, id, commit) != SyncState::NotSync)
            .max_by(|(a, la), (b, lb)| {
                let (pa, pb) = (la.position(cfg.commit_mode), lb.position(cfg.commit_mode));
                pa.cmp(&pb).then_with(|| b.cmp(a))
            })
            .map(|(id, _)| id.clone())
            .ok_or_else(|| "the standby is not in sync (it may lack acknowledged writes)".into())
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

    /// The link to `standby` on a primary; `None` on any other role or for
    /// a node that is not one of our standbys (its event is ignored).
    fn standby_link(&mut self, standby: &NodeId) -> Option<&mut StandbyLink> {
        let Role::Primary(p) = &mut self.role else {
            return None;
        };
        let link = p.links.get_mut(standby);
        if link.is_none() {
            tracing::warn!(%standby, "an event about a node that is not one of this primary's standbys; ignored");
        }
        link
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

    /// `standby` answered us at our epoch as a node that follows us: a
    /// fresh primary is confirmed (and persists it before it takes a
    /// write). With an arbiter only the register confirms a fresh primary:
    /// the create swap that names it.
    pub(super) fn on_confirmed_by_peer(&mut self, standby: &NodeId) {
        if self.has_arbiter() {
            return;
        }
        let why = format!("the peer {standby} confirmed it follows this node");
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

    /// Whether some standby still waits on the arbiter (it is lost and its
    /// removal from the sync set has not happened) or blocks writes.
    fn some_standby_waits_on_arbiter(&self) -> bool {
        match &self.role {
            Role::Primary(p) => p
                .links
                .values()
                .any(|l| l.wants_out || l.counting == Counting::Blocked),
            _ => false,
        }
    }

    pub(super) fn on_standby_reachable(&mut self, standby: &NodeId) {
        if self.standby_link(standby).is_none() {
            return;
        }
        self.on_confirmed_by_peer(standby);
        let Some(p) = self.primary() else { return };
        let link = p.links.get_mut(standby).expect("checked above");
        let recovered = std::mem::take(&mut link.failed);
        if recovered {
            tracing::info!(%standby, "the standby's WAL works again");
        }
        link.answered();
        self.count_again_if_answered(standby);
        if recovered {
            // It may have acked everything while it still failed, and no
            // further ack comes while nothing is written.
            self.count_again_if_caught_up(standby);
            self.recompute_commit();
        }
        if !self.some_standby_waits_on_arbiter() {
            self.clear_held_back();
        }
    }

    /// A standby that blocked writes (`on_standby_loss = block`, or lost
    /// while the arbiter did not answer) answered and works: it confirms
    /// writes again.
    fn count_again_if_answered(&mut self, standby: &NodeId) {
        let Some(p) = self.primary() else { return };
        if p.links
            .get(standby)
            .is_some_and(|l| l.counting == Counting::Blocked && !l.failed)
        {
            tracing::info!(%standby, "standby answered again; accepting writes");
            p.set_counting(standby, Counting::Counted);
        }
    }

    /// A standby that does not count, works (its WAL has not failed) and
    /// holds every committed record at the mode's position counts again:
    /// commits wait for it. A failed one's acks are of flushes it did
    /// before: it would be lost again at the next tick while its failure
    /// keeps it unreachable, and then nothing would count it back.
    fn count_again_if_caught_up(&mut self, standby: &NodeId) {
        let (mode, commit) = (self.cfg.commit_mode, self.commit);
        let Some(p) = self.primary() else { return };
        let Some(link) = p.links.get(standby) else {
            return;
        };
        if mode.is_sync()
            && link.counting == Counting::NotCounted
            && !link.failed
            && link.position(mode) >= commit
        {
            tracing::info!(%standby, %commit, "standby caught up; commits wait for it again");
            p.set_counting(standby, Counting::Counted);
        }
    }

    pub(super) fn on_standby_progress(&mut self, standby: &NodeId, positions: StandbyPositions) {
        let Some(link) = self.standby_link(standby) else {
            return;
        };
        link.positions = positions;
        if !link.failed {
            link.answered();
        }
        self.count_again_if_answered(standby);
        self.count_again_if_caught_up(standby);
        self.recompute_commit();
        self.try_finish_demotion();
    }

    /// The WAL stream to `standby` opened (`up`) or closed. Opening
    /// forgets its positions until its first checked ack.
    pub(super) fn on_stream_state(&mut self, standby: &NodeId, up: bool) {
        if let Some(link) = self.standby_link(standby) {
            link.streaming = up;
            if up {
                link.positions = StandbyPositions::default();
            }
        }
    }

    pub(super) fn on_standby_failed(&mut self, standby: &NodeId, now: Time) {
        if let Some(link) = self.standby_link(standby) {
            link.failed = true;
        }
        self.on_standby_unreachable(standby, now);
    }

    pub(super) fn on_standby_unreachable(&mut self, standby: &NodeId, now: Time) {
        if let Some(link) = self.standby_link(standby)
            && link.unreachable_since.is_none()
        {
            link.unreachable_since = Some(now);
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

        let lost: Vec<NodeId> = match &self.role {
            Role::Primary(p) if cfg.commit_mode.is_sync() => p
                .links
                .iter()
                .filter(|(id, l)| {
                    // A standby the rule does not name holds up nothing.
                    self.commit_rule.priority(id) > 0
                        && l.counting == Counting::Counted
                        && l.unreachable_for(now)
                            .is_some_and(|d| d >= cfg.sync_timeout)
                })
                .map(|(id, _)| id.clone())
                .collect(),
            _ => Vec::new(),
        };
        for standby in &lost {
            self.on_standby_lost(standby);
        }

        let commit = self.commit;
        let dropping_standby = self.arbiter_asking_to_drop_standby();
        let Some(p) = self.primary() else { return };
        if dropping_standby
            && p.links
                .values()
                .any(|l| l.wants_out && l.counting == Counting::Counted)
        {
            // The arbiter's answer decides, within the call's deadline,
            // whether these writes commit without the lost standby or fail
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

    /// `standby`, which counts, has been unreachable for `sync_timeout`:
    /// the `on_standby_loss` policy decides whether commits go on without
    /// it.
    fn on_standby_lost(&mut self, standby: &NodeId) {
        let cfg = self.cfg.clone();
        let Some(p) = self.primary() else { return };
        let confirmed = p.confirmed;
        let link = &p.links[standby];
        let (wants_out, contact) = (link.wants_out, link.contact_this_life);
        match cfg.on_standby_loss {
            // With an arbiter, only its swap taking the standby out of the
            // sync set lets us go on without it (`arbiter.rs`): the swap
            // fails if the standby promoted, so neither contact since
            // start nor the peer's confirmation is needed.
            OnStandbyLoss::Solo
                if cfg.arbiter.is_some() && !cfg.testing_solo_without_arbiter_swap =>
            {
                if !wants_out {
                    tracing::warn!(
                        %standby,
                        "standby unreachable for sync_timeout: asking the arbiter to take it out of the sync set before acknowledging without it"
                    );
                    p.links.get_mut(standby).expect("listed").wants_out = true;
                }
            }
            // Never before the standby confirmed us: it may be a primary too.
            OnStandbyLoss::Solo if contact && confirmed => {
                tracing::warn!(
                    %standby,
                    "standby unreachable for sync_timeout: acknowledging writes WITHOUT it (on_standby_loss = solo); a promotion on its side would drop them"
                );
                p.set_counting(standby, Counting::NotCounted);
            }
            OnStandbyLoss::Solo => {
                // No contact since start: the standby may have promoted,
                // so commits cannot go on without it. Waiting on it would
                // time every write out (outcome unknown) while probes
                // call this node writable: refuse writes instead (a 503 a
                // load balancer sends elsewhere) until it answers.
                tracing::warn!(
                    %standby,
                    "standby unreachable for sync_timeout and not heard from since this node started: it may have promoted, so writes are refused until it answers (on_standby_loss = solo needs contact first)"
                );
                self.block_on(standby);
            }
            OnStandbyLoss::Block => {
                tracing::warn!(
                    %standby,
                    "standby unreachable for sync_timeout: it still counts (on_standby_loss = block)"
                );
                self.block_on(standby);
            }
        }
    }

    /// `standby` counts but cannot confirm writes until it (or, when it
    /// waits for its removal, the arbiter) answers. If the rule cannot be
    /// met without it, every waiting write fails (`SyncTimeout`: its
    /// outcome is unknown) and new ones are refused.
    fn block_on(&mut self, standby: &NodeId) {
        let rule = self.commit_rule.clone();
        let Some(p) = self.primary() else { return };
        let was_meetable = !p.rule_unmeetable(&rule);
        p.set_counting(standby, Counting::Blocked);
        if was_meetable && p.rule_unmeetable(&rule) {
            tracing::warn!(
                "too few standbys can confirm writes for the commit rule: refusing writes until one answers"
            );
            p.pending.clear();
            self.emit(Effect::FailWaiters {
                up_to: None,
                failure: WaiterFailure::Blocked,
            });
        }
    }

    /// The arbiter's register now holds `sync_set`: each lost standby it
    /// took out can no longer promote, so we acknowledge without it.
    pub(super) fn go_on_without_removed(&mut self, sync_set: &BTreeSet<NodeId>) {
        let Some(p) = self.primary() else { return };
        let removed: Vec<NodeId> = p
            .links
            .iter()
            .filter(|(id, l)| l.wants_out && !sync_set.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for standby in &removed {
            tracing::warn!(
                %standby,
                "the arbiter recorded the standby out of the sync set: acknowledging writes WITHOUT it until it catches up"
            );
            p.links.get_mut(standby).expect("listed above").wants_out = false;
            p.set_counting(standby, Counting::NotCounted);
        }
        if removed.is_empty() {
            return;
        }
        if !self.some_standby_waits_on_arbiter() {
            self.clear_held_back();
        }
        self.recompute_commit();
    }

    /// A lost standby waits for its removal from the sync set and the
    /// arbiter did not do it: we may not acknowledge without it, so it
    /// blocks (writes fail if the rule needs it) until one of the two
    /// answers (then the swap is tried again).
    pub(super) fn block_without_arbiter(&mut self, error: &str) {
        let Some(p) = self.primary() else { return };
        let waiting: Vec<NodeId> = p
            .links
            .iter()
            .filter(|(_, l)| l.wants_out)
            .map(|(id, _)| id.clone())
            .collect();
        if waiting.is_empty() {
            return;
        }
        for standby in &waiting {
            if self
                .primary()
                .is_some_and(|p| p.links[standby].counting == Counting::Counted)
            {
                tracing::warn!(%standby, %error, "standby lost and the arbiter did not answer: it blocks writes until one of them does");
                self.block_on(standby);
            }
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
        let target = match &self.role {
            Role::Primary(p) if p.retake => {
                // Restarted and not yet writing: nothing to hand over, and
                // a switchover swap would race the retake's.
                tracing::info!(
                    "stopping a restarted primary that has not taken its next epoch yet: nothing to hand over"
                );
                self.emit(Effect::Stop);
                return;
            }
            Role::Primary(p) => p.handover_target(&cfg, &self.commit_rule, commit),
            other => {
                tracing::info!(role = %other.kind(), "stopping");
                self.emit(Effect::Stop);
                return;
            }
        };
        match target {
            Ok(to) => {
                tracing::info!(standby = %to, "stopping the primary: handing over to the standby first");
                self.emit(Effect::HandOver { to });
            }
            Err(why) => {
                tracing::warn!(%why, "stopping the primary without handing over; the standby takes over by failover if it may");
                self.emit(Effect::Stop);
            }
        }
    }

    /// Ends a planned step-down once the new leader holds everything we
    /// wrote.
    pub(super) fn try_finish_demotion(&mut self) {
        let mode = self.cfg.commit_mode;
        let (flushed, last) = (self.flushed, self.last_lsn);
        let Some(p) = self.primary() else { return };
        let Some(d) = &p.demotion else { return };
        let caught_up = flushed >= last
            && p.links
                .get(&d.leader)
                .is_some_and(|l| l.positions.flushed >= last && l.position(mode) >= last);
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
