//! The reclaim: a node the register names primary of an epoch nobody
//! leads takes the cluster back through the register when no other node
//! may promote (docs/DESIGN.md, "Leading again after a failed round"):
//! one that led that epoch and a failed candidacy stepped down, or a
//! candidate granted the epoch that a peer made follow another node in it
//! before the answer came.

use super::{ArbiterLink, Promotion};
use crate::arbiter::Register;
use crate::node::event::ArbiterPurpose;
use crate::node::event::Effect;
use crate::node::{Node, Role};
use crate::types::Epoch;

impl Node {
    /// A standby, or a fenced node or one waiting to rejoin (not rewriting
    /// its log), that follows nobody: the roles a reclaim of an epoch the
    /// node led starts from.
    fn leaderless_follower(&self) -> bool {
        self.leader.is_none()
            && matches!(
                self.role,
                Role::Standby(_) | Role::Fenced | Role::Rejoining { rewriting: false }
            )
    }

    /// A standby that the register it knows names primary of its own
    /// epoch, with an empty sync set, which its own failover or switchover
    /// swap of this life asked for, while it follows another node in that
    /// epoch: the swap landed, but before its answer came a peer named
    /// another leader of the epoch (the target of a switchover the old
    /// primary began, whose own swap then fails against the register).
    /// Nobody gained that epoch through the register but this node, which
    /// never led it, and its swap was asked with every acknowledged write in
    /// its log (a candidate's check, or an old primary that stepped down
    /// for it). So while its log ends where it did when it asked (nothing
    /// taken from the node it follows), once that node has been silent for
    /// `failover_timeout` (its failover is pending; the silence counts in
    /// every sync mode, `Node::register_decides_eligibility`), it takes
    /// the next epoch through the register and fences that node, as a
    /// failover does. It does not take this one: the node it follows could
    /// lead it only by a promotion forced while the arbiter did not answer,
    /// and two primaries of one epoch would write different records under
    /// the same `(lsn, epoch)`. Without this the cluster waits for an
    /// operator: the other node never leads the epoch, and no standby is in
    /// the register's (empty) sync set.
    pub(in crate::node) fn follows_another_in_its_granted_epoch(
        &self,
        link: &ArbiterLink,
        known: &Register,
    ) -> bool {
        let me = &self.cfg.node_id;
        let asked = link.promotion_asked.is_some_and(|a| {
            a.epoch == self.epoch
                && a.last_lsn == self.last_lsn
                && matches!(
                    a.purpose,
                    ArbiterPurpose::Promote(Promotion::Failover | Promotion::Switchover)
                )
        });
        asked
            && known.epoch == self.epoch
            && known.primary.as_ref() == Some(me)
            && known.sync_set.is_empty()
            && self.leader.as_ref().is_some_and(|l| l != me)
            && matches!(self.role, Role::Standby(_))
    }

    /// The swap (expected version, next register) by which a node that led
    /// an epoch takes the cluster back when nobody else may: a candidate's
    /// seal stepped it down to an epoch nobody leads (that promotion then
    /// failed), and the register still names it primary of the epoch it
    /// led, with an empty sync set (it had gone solo), so no standby may
    /// promote from it and only this node's log holds every write that
    /// epoch acknowledged (`Node::led_evidence`). Without it the cluster
    /// would wait for an operator. It takes the epoch after its own, with
    /// an empty sync set, as a promotion does; the swap fails if anything
    /// changed the register meanwhile. Not after the witness lost its
    /// file: a promotion may have gone through the register since this
    /// node last read it, so it waits for an operator (`promote --force`)
    /// rather than re-create it. Only in a sync mode (in async mode a
    /// standby within the lag bound may promote), and not in maintenance
    /// mode or with a state that does not fit the log. A failover this
    /// node wanted as a standby (after a restart its clock runs out: the
    /// primary is itself) does not stop it. A standby that follows another
    /// node in an epoch the register granted it
    /// (`follows_another_in_its_granted_epoch`) asks for the next epoch
    /// the same way, on the evidence of its own swap instead of an epoch
    /// it led.
    pub(super) fn reclaim_call(&self, link: &ArbiterLink) -> Option<(u64, Register)> {
        let me = &self.cfg.node_id;
        let switching_over = matches!(&self.role, Role::Standby(s) if s.planned_until.is_some());
        let wanted = link
            .promotion
            .is_some_and(|p| p.kind != Promotion::Failover || p.operator);
        if switching_over
            || wanted
            || self.failover_paused
            || self.state_misfit.is_some()
            || !self.cfg.commit_mode.is_sync()
        {
            return None;
        }
        let known = link.known.as_ref().filter(|r| r.exists())?;
        // Not wanted, a pending promotion is the node's own failover: its
        // leader has been silent for `failover_timeout`.
        let failing_over = link.promotion.is_some();
        let diverted = failing_over && self.follows_another_in_its_granted_epoch(link, known);
        // An epoch our own reclaim took in the register but we never led
        // (its answer lost, a seal moved us past it): nobody wrote in it,
        // so what we led before it still holds every acknowledged write.
        let evidence = self.led_evidence == Some(known.epoch)
            || (self.led_evidence.is_some() && link.reclaim_asked.contains(&known.epoch));
        let led = self.leaderless_follower()
            && known.primary.as_ref() == Some(me)
            && evidence
            && known.sync_set.is_empty()
            && known.epoch < self.epoch;
        (diverted || led).then(|| {
            let next = Register::fresh(self.epoch.next(), me, &self.members());
            (known.version, next)
        })
    }

    /// Whether `register`, as answered, grants a reclaim swap of this life
    /// (or one whose answer was lost: nothing else names this node primary
    /// of that epoch) to a follower: the epoch after its own, or its own
    /// once a seal made it adopt the epoch meanwhile; if so, the node leads
    /// it. A standby that follows another node (a granted epoch someone
    /// else was named leader of) takes the next epoch as a failover does,
    /// fencing that node first; given its own epoch with a leader named, it
    /// leaves it (that node could lead it by force) to `reclaim_call`,
    /// which asks for the next.
    pub(super) fn take_reclaimed_epoch(&mut self, register: &Register) -> bool {
        let asked = self
            .arbiter
            .as_ref()
            .is_some_and(|l| l.reclaim_asked.contains(&register.epoch));
        if !asked || !register.exists() || register.primary.as_ref() != Some(&self.cfg.node_id) {
            return false;
        }
        let next = register.epoch == self.epoch.next();
        if self.leaderless_follower() && (next || register.epoch == self.epoch) {
            self.reclaim_epoch(register.epoch);
            return true;
        }
        if next && self.leader.is_some() && matches!(self.role, Role::Standby(_)) {
            tracing::warn!(epoch = %register.epoch, granted = %self.epoch, followed = ?self.leader, "the register had granted this node's promotion, but a peer made it follow another node in that epoch, which cannot lead it through the arbiter; took the next epoch through the arbiter instead; fencing that node");
            let pending = self.arbiter.as_mut().and_then(|l| l.promotion.take());
            let operator = pending.is_some_and(|p| p.operator);
            self.take_epoch(register.epoch, Promotion::Failover, operator);
            return true;
        }
        false
    }

    /// The register granted our reclaim of `epoch`: lead again, with
    /// every write the epoch we led acknowledged in our log.
    fn reclaim_epoch(&mut self, epoch: Epoch) {
        let me = self.cfg.node_id.clone();
        tracing::warn!(%epoch, led = ?self.led_evidence, "no standby could promote (the register named this node primary with an empty sync set after a failed candidacy stepped it down); took the next epoch back through the arbiter; accepting writes");
        self.clear_held_back();
        self.end_candidacy();
        // A failover this node wanted as a standby is moot now; an
        // operator's promotion asked while the swap was on its way is done.
        let pending = self.arbiter.as_mut().and_then(|l| l.promotion.take());
        self.persist(epoch, Some(me));
        self.become_primary_after_promotion();
        if pending.is_some_and(|p| p.operator) {
            self.emit(Effect::ReplyPromote(Ok(epoch)));
        }
    }
}
