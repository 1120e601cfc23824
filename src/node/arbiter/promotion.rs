//! A promotion through the arbiter: what register a promotion of each
//! kind swaps to, how it waits for the swap (held back, with the reason
//! `/health` shows), when it is given up, and how the node takes the
//! epoch the register granted.

use super::{PendingPromotion, Promotion};
use crate::arbiter::Register;
use crate::config::CommitMode;
use crate::node::event::Effect;
use crate::node::{FenceReason, Node, Role};
use crate::types::Epoch;

impl Node {
    /// The register a promotion of `kind` swaps to, or why `known` does
    /// not allow it.
    pub(in crate::node) fn promotion_register(
        &self,
        known: &Register,
        kind: Promotion,
    ) -> Result<Register, String> {
        let me = &self.cfg.node_id;
        let next = Register::fresh(self.epoch.next(), me, &self.members());
        if kind != Promotion::Failover {
            // The old primary stepped down with everything on our disk, or
            // the operator forces it: the sync set does not decide.
            return Ok(next);
        }
        if !known.exists() {
            return Err("the arbiter holds no register for this cluster yet".into());
        }
        // A standby sealed by a candidate whose promotion never came holds
        // an epoch above the register's, led by nobody: it may still be
        // the next candidate (it took nothing of that epoch).
        let sealed = known.epoch < self.epoch && self.leader.is_none();
        if known.epoch != self.epoch && !sealed {
            return Err(format!(
                "the arbiter's register is at epoch {}, this node at {}",
                known.epoch, self.epoch
            ));
        }
        if self.cfg.commit_mode != CommitMode::Async && !known.sync_set.contains(me) {
            return Err(
                "this standby is not in the arbiter's sync set: the primary may have acknowledged writes it lacks"
                    .into(),
            );
        }
        Ok(next)
    }

    /// Whether this node's role can take a new epoch by a promotion of
    /// `kind`: a standby always; an operator's force also a primary its
    /// peer never confirmed and a fenced or rejoining node (as without an
    /// arbiter); a failed node never.
    pub(in crate::node) fn may_take_promotion(&self, kind: Promotion) -> bool {
        match &self.role {
            Role::Standby(_) => true,
            Role::Primary(p) => !p.confirmed && kind == Promotion::Forced,
            Role::Fenced | Role::Rejoining { rewriting: false } => kind == Promotion::Forced,
            Role::Rejoining { rewriting: true } => false,
            Role::Promoting { .. } | Role::Failed { .. } => false,
        }
    }

    /// A promotion of `kind` waits for the arbiter's swap (or, for a
    /// switchover or a forced promotion, for its failure).
    pub(in crate::node) fn promote_through_arbiter(&mut self, kind: Promotion, operator: bool) {
        let Some(link) = self.arbiter.as_mut() else {
            return;
        };
        let pending = match link.promotion {
            None => {
                tracing::info!(?kind, "promotion: asking the arbiter for the next epoch");
                PendingPromotion { kind, operator }
            }
            // A stronger kind is never lost to a weaker one (a failover
            // noticed while a switchover waits), nor a waiting operator.
            Some(p) => PendingPromotion {
                kind: p.kind.max(kind),
                operator: p.operator || operator,
            },
        };
        link.promotion = Some(pending);
        self.explain_promotion_wait();
    }

    /// A promotion the register does not allow waits: say why.
    pub(in crate::node) fn explain_promotion_wait(&mut self) {
        let Some(link) = self.arbiter.as_ref() else {
            return;
        };
        let (Some(promotion), Some(known)) = (link.promotion, link.known.as_ref()) else {
            return;
        };
        if let Err(why) = self.promotion_register(known, promotion.kind) {
            self.hold_back(format!(
                "the primary is silent but this standby may not promote: {why}"
            ));
        }
    }

    /// The primary spoke again: a failover that waited for the arbiter is
    /// no longer wanted.
    pub(in crate::node) fn cancel_failover(&mut self) {
        if let Some(link) = self.arbiter.as_mut()
            && link
                .promotion
                .is_some_and(|p| p.kind == Promotion::Failover)
        {
            tracing::info!("the primary spoke again: not promoting");
            link.promotion = None;
            link.held_back = None;
        }
        self.end_candidacy();
    }

    /// A newer epoch led by another node exists: a promotion waiting for
    /// the arbiter is over; an operator waiting for it is told.
    pub(in crate::node) fn drop_promotion(&mut self, epoch: Epoch) {
        self.abandon_promotion(format!(
            "epoch {epoch} appeared during the promotion; this node follows it"
        ));
    }

    /// The promotion waiting for the arbiter will not happen: an operator
    /// waiting for it is told `why`.
    pub(in crate::node) fn abandon_promotion(&mut self, why: String) {
        self.end_candidacy();
        let Some(promotion) = self.arbiter.as_mut().and_then(|l| l.promotion.take()) else {
            return;
        };
        // What held it back is no longer waited for (`/health`, the
        // `walrep_arbiter_held_back` gauge).
        self.clear_held_back();
        if promotion.operator {
            self.emit(Effect::ReplyPromote(Err(why)));
        }
    }

    pub(in crate::node) fn hold_back(&mut self, why: String) {
        if let Some(link) = self.arbiter.as_mut()
            && link.held_back.as_ref() != Some(&why)
        {
            tracing::warn!(reason = %why, "waiting for the arbiter");
            link.held_back = Some(why);
        }
    }

    pub(in crate::node) fn clear_held_back(&mut self) {
        if let Some(link) = self.arbiter.as_mut() {
            link.held_back = None;
        }
    }

    /// The register granted us `epoch` (or a switchover or a forced
    /// promotion goes ahead without it): persist it, then act as primary.
    pub(in crate::node) fn take_epoch(&mut self, epoch: Epoch, kind: Promotion, operator: bool) {
        self.clear_held_back();
        self.end_candidacy();
        if !self.may_take_promotion(kind) {
            tracing::warn!(%epoch, role = %self.role.kind(), "the arbiter granted an epoch this node can no longer take; ignoring it");
            if operator {
                self.emit(Effect::ReplyPromote(Err(format!(
                    "this node became {} during the promotion",
                    self.role.kind()
                ))));
            }
            return;
        }
        let me = self.cfg.node_id.clone();
        let old = self.previous_leader();
        self.persist(epoch, Some(me));
        match kind {
            Promotion::Switchover => {
                self.become_primary_after_promotion();
                if operator {
                    self.emit(Effect::ReplyPromote(Ok(epoch)));
                }
            }
            Promotion::Failover | Promotion::Forced => {
                self.change_role(Role::Promoting { operator });
                self.emit(Effect::SendFence {
                    epoch,
                    reason: if kind == Promotion::Forced {
                        FenceReason::Forced
                    } else {
                        FenceReason::Failover
                    },
                    to: old,
                });
            }
        }
    }
}
