//! Stepping back into the pair: the start-up checks (the state machine
//! and the WAL fit, a kept restart point to rejoin past), the resync, and
//! the rejoin plan and its end (G4).

use super::event::{Effect, LocalLog, PeerLog, RejoinPlan, WaiterFailure};
use super::requests::Loud;
use super::{Node, Role, RoleKind, Standby};
use crate::types::{Epoch, Lsn, NodeId, divergence_point};
use crate::wal::WalMeta;

/// The restart point kept in `meta` that a node not starting as the
/// primary must rejoin past: the one for the leader it would follow (the
/// lowest of its peers', when it knows none), if its log holds records
/// after it (`runtime/restart_point.rs`).
pub(super) fn kept_point_to_rejoin(meta: &WalMeta, last_lsn: Lsn, peers: &[NodeId]) -> Option<Lsn> {
    let point = match &meta.leader {
        Some(leader) => meta.restart_points.get(leader).copied(),
        None => peers
            .iter()
            .filter_map(|p| meta.restart_points.get(p))
            .min()
            .copied(),
    };
    point.filter(|p| last_lsn > *p)
}

impl Node {
    pub(super) fn on_rejoin_finished(&mut self, epoch: Epoch, leader: NodeId) {
        if !matches!(self.role, Role::Fenced | Role::Rejoining { .. }) {
            return;
        }
        if epoch > self.epoch || (epoch == self.epoch && self.leader.as_ref() != Some(&leader)) {
            self.persist(epoch, Some(leader));
        }
        // Otherwise `epoch` is the primary's when the rejoin checked its
        // log and we adopted a newer one since (a heartbeat during the
        // rewind): that epoch stays with the leader it came with, not the
        // one the rejoin followed.
        self.state_misfit = None;
        self.change_role(Role::Standby(Standby::new()));
    }

    /// Whether the state machine and the WAL fit together at start.
    pub(super) fn on_opened(&mut self, first_lsn: Lsn) {
        let (applied, last) = (self.applied, self.last_lsn);
        if applied > last {
            // The engine applied records the WAL no longer has: its tail
            // was cut (a torn write cut at recovery, a damaged disk) after
            // the engine made them durable, or the WAL is another node's. A
            // standby can always start over from the primary's snapshot, and
            // so can a node that stepped down and starts with a rejoin
            // (`kept_point_to_rejoin`): the primary it followed holds what
            // it applied. A node that was the primary may hold acknowledged
            // writes no one else has, so the operator decides.
            if matches!(self.role, Role::Primary(_)) {
                self.emit(Effect::CannotStart {
                    reason: format!(
                        "the state machine has applied up to {applied} but the WAL ends at {last}; the WAL does not belong to this state (wrong data directory?)"
                    ),
                });
                return;
            }
            self.state_misfit = Some(format!(
                "its state machine has applied up to {applied} but its WAL ends at {last}"
            ));
            tracing::error!(
                %applied,
                wal_last = %last,
                "the state machine has applied records the WAL no longer has (its tail was cut, or it is another node's WAL); resyncing from the peer's snapshot"
            );
            self.resync();
        } else if applied.next() < first_lsn {
            self.state_misfit = Some(format!(
                "its state machine has applied up to {applied} but its WAL begins at {first_lsn}"
            ));
            tracing::error!(
                %applied,
                wal_first = %first_lsn,
                "the state machine is behind the oldest record in the WAL (the engine lost state the WAL no longer covers); resyncing from the peer's snapshot"
            );
            self.resync();
        }
    }

    /// The state machine and the WAL do not fit together: whatever the
    /// role, the node must resync from its peer before it can serve.
    fn resync(&mut self) {
        if !matches!(
            self.role,
            Role::Failed { .. } | Role::Fenced | Role::Rejoining { .. }
        ) {
            self.fail_all_waiters(WaiterFailure::NotPrimary);
            self.change_role(Role::Fenced);
            self.emit(Effect::StartRejoin {
                leader: Some(self.cfg.peer_id.clone()),
            });
        }
    }

    /// Where our log and the primary's part, and what to drop (G4): the
    /// records after the divergence point were never part of the primary's
    /// log; if the state machine already applied past it, or the log can no
    /// longer be continued from what the primary keeps, only a snapshot
    /// restores a state the primary's log continues.
    pub(super) fn on_peer_log_fetched(&mut self, peer: PeerLog, ours: LocalLog) {
        if !matches!(self.role, Role::Rejoining { .. }) {
            self.emit(Effect::Rejoin(RejoinPlan::Wait));
            return;
        }
        if peer.role != RoleKind::Primary || peer.epoch < self.epoch {
            tracing::debug!(role = %peer.role, epoch = %peer.epoch, "rejoin: peer is not yet the primary of our epoch");
            self.emit(Effect::Rejoin(RejoinPlan::Wait));
            return;
        }
        if peer.unconfirmed
            && ours.last_lsn > Lsn::ZERO
            && !self.cfg.testing_follow_an_unconfirmed_primary
        {
            // A primary nobody confirmed never wrote a record (see
            // `wiped_peer.rs`): this one lost its data directory. Rewinding
            // to its log would drop every record ours holds.
            let peer_id = self.cfg.peer_id.clone();
            if self.first_time_said_of(Loud::UnconfirmedPrimary, &peer_id, peer.epoch) {
                tracing::error!(
                    node = %self.cfg.node_id,
                    epoch = %peer.epoch,
                    last_lsn = %ours.last_lsn,
                    "rejoin: the primary found was started on a fresh data directory (no node confirmed it), but this node holds records up to {} that a confirmed primary wrote; not rewinding to its empty log. `promote --force` this node (it says so if its own state cannot serve), then start the other on an empty data directory as its standby, which copies this node's data; never force the other",
                    ours.last_lsn
                );
            }
            self.emit(Effect::Rejoin(RejoinPlan::Wait));
            return;
        }
        let mut point =
            divergence_point(&ours.history, ours.last_lsn, &peer.history, peer.last_lsn);
        // Only our WAL's records can be lost ones: a state restored from a
        // snapshot (our log begins after it) never holds a record its
        // primary had not made durable.
        if let Some(restart) = peer.restart_lsn.map(|r| r.max(ours.first_lsn.prev()))
            && restart < point
        {
            // The primary restarted with its log ending at `restart` and
            // has not streamed to us since: our records after it may be
            // ones it sent and then lost, while it wrote others under the
            // same LSNs and epoch. Epochs cannot tell them apart; keep
            // nothing after `restart` (what the primary does hold after it
            // comes back in the stream).
            tracing::warn!(%restart, divergence = %point, "rejoin: the primary restarted; keeping nothing after its log's end at the restart");
            point = restart;
        }
        if let Some(restart) = ours.restarted_at
            && restart < point
        {
            // The mirror case: we restarted as the primary and wrote
            // records after our log's end then, which the peer may hold
            // others under (ones we sent before and lost, it kept, and it
            // promoted with). Our records after it go to `rewound/`.
            tracing::warn!(%restart, divergence = %point, "rejoin: this node wrote records since its restart as primary; keeping nothing after its log's end at the restart");
            point = restart;
        }
        let truncate_after = (ours.last_lsn > point).then_some(point);
        let resync = ours.applied > point
            || peer.first_lsn > point.next()
            || ours.applied.next() < ours.first_lsn;
        if resync {
            tracing::warn!(
                applied = %ours.applied,
                divergence = %point,
                primary_first = %peer.first_lsn,
                "resyncing from a snapshot of the primary"
            );
        }
        // The same role, now rewriting: no RoleChanged.
        self.role = Role::Rejoining { rewriting: true };
        self.emit(Effect::Rejoin(RejoinPlan::Rewind {
            truncate_after,
            resync,
            epoch: peer.epoch,
        }));
    }
}
