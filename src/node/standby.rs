//! The standby's side of the role logic: the health monitor, eligibility
//! and promotion.

use super::event::{Effect, FenceReason, PromoteFrom, SyncState, Time};
use super::{Node, Role, RoleKind};
use crate::config::Config;
use crate::types::{Epoch, Lsn, NodeId};

pub(super) struct Standby {
    /// Last time the primary spoke to us, in this process's lifetime (and
    /// not before a pause).
    last_contact: Option<Time>,
    /// Without any contact in this role: since when the standby counts the
    /// primary's silence, where the register alone decides whether it may
    /// promote (`Node::register_decides_eligibility`).
    silent_since: Option<Time>,
    /// The primary's commit rule, when its last heartbeat named one other
    /// than this node's (`Config::cluster_rule_text`): this standby then
    /// does not promote by a failover, as it cannot tell how many
    /// standbys hold each acknowledged write.
    pub(super) foreign_rule: Option<String>,
    sync_at_contact: SyncState,
    lag_at_contact: u64,
    pub(super) primary_commit: Lsn,
    /// Whether the "silent but not eligible" warning was logged already.
    reported_silence: bool,
    /// A planned switchover we asked for: answer the operator by then.
    pub(super) planned_until: Option<Time>,
    /// The primary fell silent for `failover_timeout` while failover was
    /// paused: we did not promote, and say so in `Health`.
    pub(super) held_by_pause: bool,
    /// Without any contact in this role: when the standby next asks its
    /// peers whether a newer epoch exists (`Effect::AskPeersForNewerEpoch`).
    ask_peers_at: Option<Time>,
}

impl Standby {
    pub(super) fn new() -> Standby {
        Standby {
            last_contact: None,
            silent_since: None,
            foreign_rule: None,
            sync_at_contact: SyncState::NotSync,
            lag_at_contact: u64::MAX,
            primary_commit: Lsn::ZERO,
            reported_silence: false,
            planned_until: None,
            held_by_pause: false,
            ask_peers_at: None,
        }
    }

    pub(super) fn carry_from(&mut self, role: &Role) {
        if let Role::Standby(old) = role {
            self.primary_commit = old.primary_commit;
        }
    }

    /// What the primary said of our sync status at its last contact, as
    /// long as that contact still counts: `NotSync` before any contact in
    /// this role and after a pause made us forget it (as for eligibility).
    pub(super) fn sync_at_contact(&self) -> SyncState {
        match self.last_contact {
            Some(_) => self.sync_at_contact,
            None => SyncState::NotSync,
        }
    }

    /// Counts from `now` before this standby may fail over (a candidate
    /// asked for its position and gets a whole `failover_timeout`).
    pub(super) fn restart_failover_clock(&mut self, now: Time) {
        if self.last_contact.is_some() {
            self.last_contact = Some(now);
        }
        // A member counting the silence from its first tick (no contact in
        // this life: `Node::register_decides_eligibility`) waits as long.
        if self.silent_since.is_some() {
            self.silent_since = Some(now);
        }
        self.reported_silence = false;
    }

    pub(super) fn forget_contact(&mut self) {
        self.last_contact = None;
        self.silent_since = None;
    }

    /// Whether the primary spoke to this standby within `within` of `now`
    /// (in this process's lifetime).
    pub(super) fn heard_primary_within(&self, now: Time, within: std::time::Duration) -> bool {
        self.last_contact
            .is_some_and(|at| now.saturating_sub(at) < within)
    }

    pub(super) fn eligible(&self, cfg: &Config) -> bool {
        self.last_contact.is_some()
            && match self.sync_at_contact {
                SyncState::Sync => true,
                SyncState::Async => self.lag_at_contact <= cfg.max_lag_on_failover,
                SyncState::NotSync => false,
            }
    }

    fn why_not_eligible(&self, cfg: &Config) -> String {
        if let Some(theirs) = &self.foreign_rule {
            return format!(
                "the primary's commit rule ({theirs}) is not this node's ({}): give every node the same sync_standbys",
                cfg.cluster_rule_text()
            );
        }
        match self.sync_at_contact {
            SyncState::NotSync => "the primary said at its last contact that this standby was not in sync (it may have acknowledged writes we lack)".into(),
            SyncState::Async => format!(
                "the lag at the last contact ({} records) exceeds max_lag_on_failover ({})",
                self.lag_at_contact, cfg.max_lag_on_failover
            ),
            SyncState::Sync => "no contact with the primary in this process's lifetime".into(),
        }
    }

    /// `paused`: automatic failover is paused, so silence is no deadline
    /// (resuming it runs the check at once).
    pub(super) fn next_deadline(&self, cfg: &Config, paused: bool) -> Option<Time> {
        let silence = self
            .last_contact
            .or(self.silent_since)
            .filter(|_| cfg.auto_failover && !paused && !self.reported_silence)
            .map(|t| t + cfg.failover_timeout);
        match (silence, self.planned_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Node {
    fn standby(&mut self) -> Option<&mut Standby> {
        match &mut self.role {
            Role::Standby(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn on_primary_contact(
        &mut self,
        now: Time,
        epoch: Epoch,
        leader: NodeId,
        primary_last_lsn: Lsn,
        commit_lsn: Lsn,
        sync: SyncState,
    ) {
        if epoch > self.epoch {
            self.on_higher_epoch(epoch, Some(leader.clone()));
        }
        if epoch < self.epoch {
            return;
        }
        if self.leader.as_ref() != Some(&leader) && self.role() == RoleKind::Standby {
            // Same epoch, leader learned from its messages (fresh standby).
            self.leader = Some(leader.clone());
            self.emit(Effect::PersistMeta {
                epoch: self.epoch,
                leader: Some(leader),
                confirmed: true,
            });
        }
        let flushed = self.flushed;
        if let Some(s) = self.standby() {
            s.last_contact = Some(now);
            s.silent_since = None;
            s.sync_at_contact = sync;
            s.lag_at_contact = primary_last_lsn.0.saturating_sub(flushed.0);
            s.primary_commit = commit_lsn;
            s.reported_silence = false;
            s.held_by_pause = false;
        }
        self.cancel_failover();
    }

    pub(super) fn standby_tick(&mut self, now: Time) {
        let cfg = self.cfg.clone();
        let Some(s) = self.standby() else { return };
        if s.planned_until.is_some_and(|t| now >= t) {
            s.planned_until = None;
            self.emit(Effect::ReplyPromote(Err(
                "switchover timed out: the primary did not confirm it stepped down; nothing changed".into(),
            )));
        }
        let (epoch, raisable) = (self.epoch, self.epoch.can_be_raised());
        let has_arbiter = self.has_arbiter();
        let register_decides = self.register_decides_eligibility();
        let paused = self.failover_paused;
        let Some(s) = self.standby() else { return };
        // A cluster's standby that has not heard the primary in this role
        // (restarted, or it learnt a newer epoch nobody leads yet) counts
        // the silence from its first tick: the register decides.
        let last = match s.last_contact {
            Some(at) => at,
            None if register_decides => *s.silent_since.get_or_insert(now),
            None => {
                // No primary has spoken to us in this role: it may be down,
                // or there may be none to speak. A switchover cut short by
                // a stop (both nodes stopped at once) leaves the old
                // primary a standby of our next epoch, led by us, and us a
                // standby of the old one: each would wait for the other
                // forever. So once per `failover_timeout` of silence we ask
                // the peers; one with a newer epoch names its leader
                // (`Event::HigherEpoch`), and when that is us, we take it.
                let due = *s.ask_peers_at.get_or_insert(now + cfg.failover_timeout);
                if now >= due {
                    s.ask_peers_at = Some(now + cfg.failover_timeout);
                    self.emit(Effect::AskPeersForNewerEpoch);
                }
                return;
            }
        };
        let silent_for = now.saturating_sub(last);
        if !cfg.auto_failover || silent_for < cfg.failover_timeout || s.planned_until.is_some() {
            return;
        }
        let eligible = (s.eligible(&cfg) || register_decides) && s.foreign_rule.is_none();
        if paused && eligible {
            // Maintenance: keep following (the primary may come back, or
            // the operator promotes); fence nothing. (Not eligible, the
            // standby would not promote anyway, and says why below.)
            if !s.held_by_pause {
                s.held_by_pause = true;
                tracing::warn!(
                    silent_ms = silent_for.as_millis() as u64,
                    "primary silent for failover_timeout, but automatic failover is paused; not promoting (resume failover, or promote with force)"
                );
            }
            return;
        }
        if !raisable {
            if !s.reported_silence {
                s.reported_silence = true;
                tracing::error!(%epoch, bound = %Epoch::MAX, "primary silent for failover_timeout, but this node's epoch cannot be raised any more; not promoting");
            }
        } else if eligible && has_arbiter {
            if !s.reported_silence {
                s.reported_silence = true;
                tracing::warn!(
                    silent_ms = silent_for.as_millis() as u64,
                    "primary silent for failover_timeout; asking the arbiter to promote"
                );
            }
            self.promote_through_arbiter(super::Promotion::Failover, false);
        } else if eligible {
            tracing::warn!(
                silent_ms = silent_for.as_millis() as u64,
                "primary silent for failover_timeout; promoting"
            );
            self.start_promotion(false, false);
        } else if !s.reported_silence {
            s.reported_silence = true;
            let why = s.why_not_eligible(&cfg);
            tracing::warn!(
                silent_ms = silent_for.as_millis() as u64,
                reason = %why,
                "primary silent for failover_timeout, but this standby is not eligible to promote; waiting (an operator can force it)"
            );
        }
    }

    /// Pauses or resumes automatic failover. Resumed, a standby whose
    /// primary is still silent decides at once, as a tick would.
    pub(super) fn on_failover_paused(&mut self, now: Time, paused: bool) {
        if self.failover_paused == paused {
            return;
        }
        self.failover_paused = paused;
        tracing::info!(
            paused,
            role = %self.role(),
            "automatic failover {}",
            if paused { "paused (maintenance)" } else { "resumed" }
        );
        if let Some(s) = self.standby() {
            s.held_by_pause = false;
            // The silence check runs again from the start (its log line too).
            s.reported_silence = false;
        }
        if !paused {
            self.standby_tick(now);
        }
    }

    /// Persists the new epoch with us as leader, then fences the old
    /// primary; `on_fence_sent` finishes the promotion.
    fn start_promotion(&mut self, operator: bool, force: bool) {
        let epoch = self.epoch.next();
        let old = self.previous_leader();
        self.persist(epoch, Some(self.cfg.node_id.clone()));
        self.change_role(Role::Promoting { operator });
        self.emit(Effect::SendFence {
            epoch,
            reason: if force {
                FenceReason::Forced
            } else {
                FenceReason::Failover
            },
            to: old,
        });
    }

    /// An operator's forced promotion: through the arbiter when there is
    /// one (it goes ahead without it if the arbiter does not answer).
    fn start_forced_promotion(&mut self) {
        if self.has_arbiter() {
            self.promote_through_arbiter(super::Promotion::Forced, true);
        } else {
            self.start_promotion(true, true);
        }
    }

    /// A planned switchover to `standby`, asked of this primary: it asks
    /// that standby to take over (which fences this node once it holds
    /// everything), or says why it cannot.
    pub(super) fn on_switchover_to(&mut self, standby: NodeId) {
        let refusal = match &self.role {
            Role::Primary(p) if !p.confirmed => Some(
                "this node is a primary waiting for its peer to confirm it follows it; a planned switchover needs a standby".to_string(),
            ),
            Role::Primary(p) if p.link(&standby).is_none() => {
                let names: Vec<String> = p.links().map(|(id, _)| id.to_string()).collect();
                Some(format!(
                    "{standby} is not a standby of this primary (its standbys: {}); nothing was changed",
                    names.join(", ")
                ))
            }
            Role::Primary(_) => None,
            other => Some(format!(
                "this node is {}, not the primary: ask the primary, or ask {standby} itself to take over",
                other.kind()
            )),
        };
        match refusal {
            Some(why) => self.emit(Effect::ReplyPromote(Err(why))),
            None => {
                tracing::info!(%standby, "switchover asked of the primary: asking the standby named to take over");
                self.emit(Effect::ForwardPromote { to: Some(standby) });
            }
        }
    }

    pub(super) fn on_promote_requested(&mut self, now: Time, force: bool, from: PromoteFrom) {
        let cfg = self.cfg.clone();
        match &mut self.role {
            // A primary still waiting for its peer's confirmation: forcing
            // it is the operator's deliberate single-node start. It
            // promotes like a standby, to a new epoch, so a peer started as
            // primary too is fenced by it and follows.
            Role::Primary(p) if !p.confirmed && force => {
                tracing::warn!(
                    "forced promotion of a primary its peer never confirmed: taking a new epoch without the peer; a peer started as primary too is fenced"
                );
                self.start_forced_promotion();
            }
            Role::Primary(p) if !p.confirmed => self.emit(Effect::ReplyPromote(Err(
                "this node is a primary waiting for its peer to confirm it follows it; a planned switchover needs a standby: start the peer as a standby, or promote this node with force for a deliberate single-node start".into(),
            ))),
            // Asked of the primary, by its engine or over the RPC: it hands
            // over to the standby, which runs the planned switchover.
            Role::Primary(p) if !force => {
                // In a cluster, the standby that can take over at once: the
                // most advanced one reachable and in sync; failing that (and
                // in a pair) the peer, which says why it cannot.
                let to = if self.standbys.len() > 1 {
                    p.handover_target(&cfg, &self.commit_rule, self.commit).ok()
                } else {
                    None
                };
                tracing::info!(
                    ?from,
                    standby = ?to,
                    "promotion asked of the primary: asking the standby to take over"
                );
                self.emit(Effect::ForwardPromote { to });
            }
            Role::Primary(_) => self.emit(Effect::ReplyPromote(Err(
                "this node is already the primary".into(),
            ))),
            Role::Promoting { .. } => self.emit(Effect::ReplyPromote(Err(
                "a promotion is already in progress".into(),
            ))),
            Role::Failed { reason } => {
                let msg = format!("this node failed ({reason}); restart it first");
                self.emit(Effect::ReplyPromote(Err(msg)));
            }
            _ if !self.epoch.can_be_raised() => self.emit(Effect::ReplyPromote(Err(format!(
                "epoch {} cannot be raised: a promotion would reach the bound {}",
                self.epoch,
                Epoch::MAX
            )))),
            Role::Rejoining { rewriting: true } if force => self.emit(Effect::ReplyPromote(Err(
                "this node is rewinding or resyncing its log from the primary; a promotion now would take a half-rewritten log: wait until it is a standby, then promote it (if the primary is gone for good, restart this node: its rejoin then waits for a plan again, and may be forced, unless the rewind already left its state ahead of its log, which only a resync mends)".into(),
            ))),
            _ if let Some(misfit) = &self.state_misfit => {
                let msg = format!(
                    "this node cannot serve as primary: {misfit}, so it would skip or repeat records (a rewind or a cut tail left them apart); it waits for a resync from the primary. If no primary will come back, this node's data cannot be made whole from itself: restore it from another node or a backup"
                );
                self.emit(Effect::ReplyPromote(Err(msg)));
            }
            _ if force => {
                tracing::warn!(
                    "forced promotion: writes the other node acknowledged after our last received record are lost if it was still primary"
                );
                self.start_forced_promotion();
            }
            Role::Standby(s) => {
                if s.planned_until.is_some() {
                    // Asked again (an operator, or the old primary handing
                    // over as it stops): the request joins the switchover
                    // under way and gets its outcome.
                    tracing::info!(?from, "promotion asked during a planned switchover: it waits for that switchover");
                } else if s.last_contact.is_none() {
                    self.emit(Effect::ReplyPromote(Err(
                        "the primary is not reachable, so a planned switchover cannot check that nothing is lost; use force to promote anyway".into(),
                    )));
                } else {
                    s.planned_until = Some(now + cfg.switchover_timeout + cfg.rpc_timeout);
                    let epoch = self.epoch.next();
                    tracing::info!(%epoch, "planned switchover: asking the primary to step down");
                    let to = self.previous_leader();
                    self.emit(Effect::SendFence {
                        epoch,
                        reason: FenceReason::Switchover,
                        to,
                    });
                }
            }
            Role::Fenced | Role::Rejoining { .. } => self.emit(Effect::ReplyPromote(Err(
                "this node is fenced and rejoining; wait until it is a standby, or force".into(),
            ))),
        }
    }

    pub(super) fn on_fence_sent(&mut self, confirmed_last_lsn: Option<Lsn>) {
        match &mut self.role {
            Role::Promoting { operator } => {
                let operator = *operator;
                match confirmed_last_lsn {
                    Some(lsn) => {
                        tracing::info!(old_last_lsn = %lsn, "old primary confirmed it is fenced")
                    }
                    None => tracing::warn!(
                        "old primary did not confirm the fence (down or cut off); it will learn the new epoch when it comes back"
                    ),
                }
                self.become_primary_after_promotion();
                if operator {
                    self.emit(Effect::ReplyPromote(Ok(self.epoch)));
                }
            }
            Role::Standby(s) if s.planned_until.is_some() => {
                s.planned_until = None;
                match confirmed_last_lsn {
                    Some(last) if self.flushed >= last && self.has_arbiter() => {
                        self.promote_through_arbiter(super::Promotion::Switchover, true);
                    }
                    Some(last) if self.flushed >= last => {
                        let epoch = self.epoch.next();
                        self.persist(epoch, Some(self.cfg.node_id.clone()));
                        self.become_primary_after_promotion();
                        self.emit(Effect::ReplyPromote(Ok(epoch)));
                    }
                    Some(last) => {
                        // Cannot happen: the primary steps down only after
                        // we acknowledged its last record as flushed.
                        tracing::error!(%last, flushed = %self.flushed, "old primary stepped down ahead of our flushed LSN; not promoting");
                        self.emit(Effect::ReplyPromote(Err(format!(
                            "the primary stopped at {last} but this standby has only flushed {}",
                            self.flushed
                        ))));
                    }
                    None => self.emit(Effect::ReplyPromote(Err(
                        "the primary refused or did not answer the switchover; nothing changed"
                            .into(),
                    ))),
                }
            }
            _ => {}
        }
    }
}
