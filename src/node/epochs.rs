//! The epoch rules: how a node takes a higher epoch it hears of (from a
//! peer, a fence, the register), and how it records its epoch and leader.
//!
//! An epoch never goes backwards (`persist` asserts it; only a failed
//! write of it puts the node back to the one on disk), is persisted
//! before anything is said under it, and a node never names itself leader
//! of an epoch nobody handed it (`may_be_handed`).

use super::event::{Effect, FenceOutcome, FenceReason, Promotion, Time, WaiterFailure};
use super::standby::Standby;
use super::{Node, Role, RoleKind};
use crate::types::{Epoch, NodeId};

impl Node {
    /// The leader of our epoch unless it is this node: the primary a
    /// promotion replaces.
    pub(super) fn previous_leader(&self) -> Option<NodeId> {
        self.leader.clone().filter(|l| *l != self.cfg.node_id)
    }

    /// Takes `epoch` with `leader` (none: not known yet) and emits
    /// `PersistMeta`, which the runtime writes to disk before it carries
    /// out the effects emitted after it (and withholds them if the write
    /// fails). Callers persist before they emit anything said under the
    /// new epoch, so a crash never forgets an epoch a peer heard of (G1).
    pub(super) fn persist(&mut self, epoch: Epoch, leader: Option<NodeId>) {
        assert!(
            epoch >= self.epoch,
            "node {}: epoch would go backwards: {epoch} < {}",
            self.cfg.node_id,
            self.epoch
        );
        self.epoch = epoch;
        if leader.as_ref().is_some_and(|l| *l != self.cfg.node_id) {
            // Following another leader (which may rewind our log): what we
            // led before is no evidence any more (`led_evidence`).
            self.led_evidence = None;
        }
        self.leader = leader.clone();
        self.emit(Effect::PersistMeta {
            epoch,
            leader,
            confirmed: true,
        });
    }

    /// Whether `epoch`, named as ours by a peer or by the register, can be
    /// one handed to us: by a switchover (the old primary fenced itself
    /// for us after we flushed all it had, and its answer was lost) or by
    /// our own promotion swap. Either asks for the epoch after ours, and we
    /// were in that one. Any other (we are at epoch 0, say: we led it, then
    /// lost our data directory and were started again) is no such evidence:
    /// taking it would make an empty log the primary's, and the peers would
    /// rewind every record to it.
    pub(super) fn may_be_handed(&self, epoch: Epoch) -> bool {
        epoch == self.epoch.next() && self.epoch > Epoch::ZERO
    }

    pub(super) fn on_higher_epoch(&mut self, epoch: Epoch, mut leader: Option<NodeId>) {
        if epoch <= self.epoch {
            return;
        }
        if self.epoch_unwritable {
            tracing::debug!(%epoch, ours = %self.epoch, "not taking a newer epoch: this node could not persist its epoch and waits for a restart");
            return;
        }
        if epoch >= Epoch::MAX {
            // No promotion could follow such an epoch; a peer that sends one
            // is broken or hostile, and adopting it would wedge this node.
            tracing::warn!(%epoch, bound = %Epoch::MAX, "ignoring an epoch at or above the bound");
            return;
        }
        let me = &self.cfg.node_id;
        if leader.as_ref() == Some(me) && !self.may_be_handed(epoch) {
            tracing::warn!(
                %epoch,
                ours = %self.epoch,
                "a peer names this node the leader of an epoch nobody handed it (it led that epoch before losing its data directory?); adopting the epoch without a leader"
            );
            leader = None;
        }
        if leader.as_ref() == Some(me) {
            // The old primary fenced itself for us (a switchover whose reply
            // was lost): it stopped after we flushed all it had, so taking
            // the epoch is safe.
            let operator_waits = match &self.role {
                Role::Standby(s) => s.planned_until.is_some(),
                Role::Promoting { operator } => *operator,
                _ => return,
            };
            if self.has_arbiter() {
                tracing::info!(%epoch, "peer stepped down in our favour; asking the arbiter for the epoch");
                if let Role::Standby(s) = &mut self.role {
                    s.planned_until = None;
                }
                self.promote_through_arbiter(Promotion::Switchover, operator_waits);
                return;
            }
            tracing::info!(%epoch, "peer stepped down in our favour; taking the epoch");
            self.persist(epoch, leader);
            self.become_primary_after_promotion();
            if operator_waits {
                self.emit(Effect::ReplyPromote(Ok(epoch)));
            }
            return;
        }
        self.drop_promotion(epoch);
        let was = self.role.kind();
        let operator_waits = match &self.role {
            Role::Standby(s) => s.planned_until.is_some(),
            Role::Promoting { operator } => *operator,
            _ => false,
        };
        if operator_waits {
            self.emit(Effect::ReplyPromote(Err(format!(
                "epoch {epoch} led by {leader:?} appeared during the promotion; this node follows it"
            ))));
        }
        if was == RoleKind::Standby {
            tracing::info!(%epoch, ours = %self.epoch, ?leader, "following the primary's newer epoch");
        } else {
            tracing::warn!(%epoch, ours = %self.epoch, ?leader, role = %was, "a newer epoch exists; stepping down");
        }
        if let Role::Primary(p) = &self.role
            && p.confirmed
        {
            self.led_evidence = Some(self.epoch);
        }
        self.persist(epoch, leader.clone());
        match was {
            RoleKind::Standby => {
                // Still a standby, of the new leader; the log check on the
                // next batch decides whether we must rewind.
                let mut s = Standby::new();
                s.carry_from(&self.role);
                self.role = Role::Standby(s);
            }
            RoleKind::Rejoining | RoleKind::Failed => {}
            _ => {
                self.fail_all_waiters(WaiterFailure::Fenced { epoch });
                self.change_role(Role::Fenced);
                self.emit(Effect::StartRejoin { leader });
            }
        }
    }

    pub(super) fn on_fence_requested(
        &mut self,
        now: Time,
        epoch: Epoch,
        leader: NodeId,
        reason: FenceReason,
    ) {
        if reason == FenceReason::Candidate {
            // The runtime steps a seal as `Event::Sealed`, with the log
            // ends that rank two candidates; a bare one cannot be ranked.
            let reason = "a candidate's seal must come with its log end (Event::Sealed)".into();
            return self.emit(Effect::ReplyFence(FenceOutcome::Refused { reason }));
        }
        if epoch <= self.epoch {
            let reason = format!(
                "fence to epoch {epoch} refused: this node is already at epoch {}",
                self.epoch
            );
            // A repeated fence for the epoch we already adopted is answered
            // again, so a lost reply does not stall the new primary.
            if epoch == self.epoch && self.leader.as_ref() == Some(&leader) {
                self.emit(Effect::ReplyFence(FenceOutcome::Fenced {
                    last_lsn: self.last_lsn,
                }));
            } else {
                self.emit(Effect::ReplyFence(FenceOutcome::Refused { reason }));
            }
            return;
        }
        if self.epoch_unwritable {
            let reason = format!(
                "fence to epoch {epoch} refused: this node could not persist its epoch and failed; it takes the epoch once restarted"
            );
            return self.emit(Effect::ReplyFence(FenceOutcome::Unavailable { reason }));
        }
        if reason == FenceReason::Switchover
            && let Role::Primary(p) = &mut self.role
        {
            tracing::info!(%epoch, %leader, "planned switchover: pausing writes until the standby has everything");
            p.begin_demotion(epoch, leader, now + self.cfg.switchover_timeout);
            self.try_finish_demotion();
            return;
        }
        if reason == FenceReason::Switchover {
            // Only a primary, which knows what it acknowledged, steps down
            // for a switchover, once the standby holds all of it. Any other
            // node adopting the epoch would name the standby its leader
            // without that check, and a node told so later (this one's
            // headers, a sealed standby's refusal) would hand the standby
            // the epoch as a switchover that loses what only a third node
            // holds.
            // Not a stale-epoch refusal (ours is older): the standby logs
            // this reason.
            let reason = format!(
                "switchover to epoch {epoch} refused: this node is {}, not the primary; let the failover run, or promote with force",
                self.role.kind()
            );
            return self.emit(Effect::ReplyFence(FenceOutcome::Unavailable { reason }));
        }
        self.on_higher_epoch(epoch, Some(leader));
        self.emit(Effect::ReplyFence(FenceOutcome::Fenced {
            last_lsn: self.last_lsn,
        }));
    }

    /// Carries out `Event::PersistFailed`: back to the epoch and leader
    /// the disk holds, and failed until a restart. An epoch held only in
    /// memory must not reach a peer: it would step down into an epoch
    /// that nobody leads, and this node forgets it at its restart. (A
    /// write whose outcome is unknown may have left the new epoch on
    /// disk: then the restart takes it, as after a crash right after the
    /// write.)
    pub(super) fn on_persist_failed(
        &mut self,
        reason: String,
        epoch: Epoch,
        leader: Option<NodeId>,
    ) {
        if epoch <= self.epoch && (epoch, &leader) != (self.epoch, &self.leader) {
            tracing::warn!(unwritten = %self.epoch, %epoch, ?leader, "the epoch could not be persisted: this node answers under the epoch and leader on disk until it is restarted");
            self.epoch = epoch;
            self.leader = leader;
        }
        self.epoch_unwritable = true;
        self.on_wal_failed(reason);
    }
}
