//! The reclaim: a node that led an epoch takes the cluster back through
//! the register when a failed candidacy left no node that may promote
//! (docs/DESIGN.md, "Leading again after a failed round").

use super::{ArbiterLink, Promotion};
use crate::arbiter::Register;
use crate::node::event::Effect;
use crate::node::{Node, Role};
use crate::types::Epoch;

impl Node {
    /// A standby, or a fenced node or one waiting to rejoin (not rewriting
    /// its log), that follows nobody: the roles a reclaim starts from.
    fn leaderless_follower(&self) -> bool {
        self.leader.is_none()
            && matches!(
                self.role,
                Role::Standby(_) | Role::Fenced | Role::Rejoining { rewriting: false }
            )
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
    /// primary is itself) does not stop it.
    pub(super) fn reclaim_call(&self, link: &ArbiterLink) -> Option<(u64, Register)> {
        let me = &self.cfg.node_id;
        let switching_over = matches!(&self.role, Role::Standby(s) if s.planned_until.is_some());
        let wanted = link
            .promotion
            .is_some_and(|p| p.kind != Promotion::Failover || p.operator);
        if !self.leaderless_follower()
            || switching_over
            || wanted
            || self.failover_paused
            || self.state_misfit.is_some()
            || !self.cfg.commit_mode.is_sync()
        {
            return None;
        }
        let known = link.known.as_ref().filter(|r| r.exists())?;
        // An epoch our own reclaim took in the register but we never led
        // (its answer lost, a seal moved us past it): nobody wrote in it,
        // so what we led before it still holds every acknowledged write.
        let evidence = self.led_evidence == Some(known.epoch)
            || (self.led_evidence.is_some() && link.reclaim_asked.contains(&known.epoch));
        if known.primary.as_ref() != Some(me)
            || !evidence
            || !known.sync_set.is_empty()
            || known.epoch >= self.epoch
        {
            return None;
        }
        let next = Register::fresh(self.epoch.next(), me, &self.members());
        Some((known.version, next))
    }

    /// Whether `register`, as answered, grants a reclaim swap of this life
    /// (or one whose answer was lost: nothing else names this leaderless
    /// node primary of that epoch), also once a seal or a peer made it
    /// adopt the epoch meanwhile; if so, the node leads it.
    pub(super) fn take_reclaimed_epoch(&mut self, register: &Register) -> bool {
        let asked = self
            .arbiter
            .as_ref()
            .is_some_and(|l| l.reclaim_asked.contains(&register.epoch));
        let grants = asked
            && (register.epoch == self.epoch.next() || register.epoch == self.epoch)
            && register.exists()
            && register.primary.as_ref() == Some(&self.cfg.node_id)
            && self.leaderless_follower();
        if grants {
            self.reclaim_epoch(register.epoch);
        }
        grants
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
