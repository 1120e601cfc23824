//! A node whose log holds records never follows an unconfirmed primary.
//!
//! A primary persists its confirmation (`WalMeta::confirmed`) before it
//! takes its first write, and a promoted primary is confirmed from the
//! start. So every record in any log was written by a confirmed primary,
//! and a primary that says it is unconfirmed never wrote one. If such a
//! primary reaches a node whose log holds records of the cluster, it is
//! not the primary those records came from: it lost its data directory
//! (wiped, or its meta file lost) and was started as primary again. It
//! comes back at epoch 1, the epoch of a fresh start, so the epoch rules
//! would make the node follow it and rewind everything it holds (every
//! acknowledged write) to match its empty log.
//!
//! The node refuses its heartbeats and batches instead, and a rejoin does
//! not rewind to its log (`rejoin.rs`). It keeps its log,
//! the unconfirmed primary is never confirmed (so it takes no write), and
//! the refused messages are no contact: a standby eligible to promote takes
//! over when `failover_timeout` passes, fences the wiped node, and the
//! wiped node rejoins it as its standby with everything. A standby that
//! may not promote waits for the operator, and both nodes say what to do.
//!
//! The rule keys on the confirmation alone, not on log positions, so it
//! never lifts while the wiped node stays unconfirmed: a node with an
//! empty log (a fresh cluster's standby) follows an unconfirmed primary as
//! before and confirms it. A primary confirmed by an arbiter's register
//! whose sync set was empty is the one case it cannot see (DESIGN
//! "Limits").

use super::requests::Loud;
use super::{Effect, Node, Refused, Role};
use crate::transport::{Header, RefusalKind};
use crate::types::Lsn;

impl Node {
    /// Whether a message from `header`'s sender, a primary that says
    /// whether it is `confirmed`, is refused because this node holds
    /// records (answered with the refusal). A primary of an older epoch
    /// is left to the epoch rules (they refuse it as stale), and a node
    /// that is a primary itself to the rules for two primaries.
    pub(super) fn refuses_unconfirmed_primary(&mut self, header: &Header, confirmed: bool) -> bool {
        let refuse = !confirmed
            && header.epoch >= self.epoch
            && self.last_lsn > Lsn::ZERO
            && !matches!(self.role, Role::Primary(_))
            && !self.cfg.testing_follow_an_unconfirmed_primary;
        if !refuse {
            if confirmed
                && self
                    .said_loudly
                    .take_if(|(why, ..)| *why == Loud::UnconfirmedPrimary)
                    .is_some()
            {
                tracing::info!(peer = %header.node_id, epoch = %header.epoch, "a confirmed primary reached this node: following it");
            }
            return false;
        }
        if self.first_time_said(Loud::UnconfirmedPrimary, header) {
            tracing::error!(
                node = %self.cfg.node_id,
                peer = %header.node_id,
                epoch = %header.epoch,
                last_lsn = %self.last_lsn,
                "refusing to follow {}: it was started as primary on a fresh data directory, but this node holds records up to {} that a confirmed primary wrote, so its data directory was lost; this node keeps its log and takes over by failover if it may; otherwise `promote --force` this node, or empty the data directory of {} again and start it as a standby (it then copies this node's data); never force {}",
                header.node_id, self.last_lsn, header.node_id, header.node_id
            );
        }
        let message = format!(
            "this node holds records up to {} written by a confirmed primary, and {} was started as primary on a fresh data directory: its data directory was lost or wiped; do not force it, empty its data directory again and start it as a standby to copy this node's data",
            self.last_lsn, header.node_id
        );
        self.emit(Effect::Answer(Err(Refused::new(
            RefusalKind::NotStandby,
            message,
        ))));
        true
    }
}
