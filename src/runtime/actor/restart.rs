//! The restart points' life in the actor (`runtime/restart_point.rs` says
//! what they are for): taken when the node starts, kept in the WAL's meta
//! for the standbys no stream of this life reached yet (so that a second
//! restart keeps their lower points), and dropped once every standby was
//! reached or the node became a standby.

use super::Actor;
use crate::node::RoleKind;
use crate::runtime::restart_point::RestartPoint;
use crate::types::{Lsn, NodeId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The points a node starting as `role`, its log ending at `last`, holds:
/// a primary's are per standby (`RestartPoint::at_start`); a node that
/// starts with a rejoin (`Node::new` sends one that wrote after a kept
/// point there) keeps the `kept` ones for it; any other none.
fn points_at_start(
    role: RoleKind,
    standbys: Vec<NodeId>,
    kept: BTreeMap<NodeId, Lsn>,
    last: Lsn,
) -> Option<RestartPoint> {
    match role {
        RoleKind::Primary => Some(RestartPoint::at_start(standbys, &kept, last)),
        RoleKind::Fenced if !kept.is_empty() => Some(RestartPoint::kept(kept)),
        _ => None,
    }
}

impl Actor {
    /// Takes the points for this start and makes the WAL's meta say them.
    pub(super) fn take_restart_points(&mut self, last: Lsn) {
        let kept = self.wal.meta().restart_points;
        for (standby, point) in kept.iter().filter(|(_, p)| **p < last) {
            tracing::warn!(%standby, restart = %point, last_lsn = %last, "no stream reached this standby since an earlier start as the primary: keeping that start's point for it");
        }
        let role = self.node.role();
        self.restart_point = points_at_start(role, self.cfg.peer_ids(), kept, last).map(Arc::new);
        self.persist_restart_points();
    }

    /// The points are no longer needed (the field's comment says when).
    pub(super) fn drop_restart_points(&mut self) {
        if self.restart_point.take().is_some() {
            self.persist_restart_points();
        }
    }

    /// A stream may have reached a standby for the first time in this
    /// life: its point goes from the WAL's meta, and once every standby
    /// was reached no standby holds a record this node lost, so the
    /// points go.
    pub(super) fn note_standby_reached(&mut self) {
        let Some(point) = &self.restart_point else {
            return;
        };
        if self.node.role() != RoleKind::Primary {
            return;
        }
        let unreached = point.unreached_count();
        if unreached == 0 {
            tracing::info!(
                "a stream reached every standby since this node started as the primary: dropping its restart points"
            );
            self.drop_restart_points();
            self.step(crate::node::Event::EveryStandbyReached);
        } else if unreached != self.restart_points_saved {
            self.persist_restart_points();
        }
    }

    /// The points the WAL's meta keeps now: those of the standbys not
    /// reached yet, none once the points are dropped.
    pub(super) fn restart_points_to_keep(&self) -> BTreeMap<NodeId, Lsn> {
        self.restart_point
            .as_ref()
            .map(|p| p.unreached())
            .unwrap_or_default()
    }

    /// Writes the points of the standbys not reached yet into the WAL's
    /// meta when it says otherwise. A failed write leaves the meta's older
    /// points, which cost at most a rejoin more at a later start (a stale
    /// point makes a standby drop records after it, which are streamed to
    /// it again); the node goes on with its points in memory.
    fn persist_restart_points(&mut self) {
        let points = self.restart_points_to_keep();
        let mut meta = self.wal.meta();
        if meta.restart_points == points {
            self.restart_points_saved = points.len();
            return;
        }
        let count = points.len();
        meta.restart_points = points;
        match self.wal.set_meta(&meta) {
            // Counted only once saved, so the next ack tries again.
            Ok(()) => self.restart_points_saved = count,
            Err(e) => {
                tracing::warn!(error = %e, "could not save the restart points in the WAL's meta; going on with them in memory")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b_and_c() -> Vec<NodeId> {
        vec![NodeId::from("b"), NodeId::from("c")]
    }

    #[test]
    fn a_primary_has_a_point_per_standby_the_lower_of_its_log_end_and_a_kept_one() {
        let kept = BTreeMap::from([(NodeId::from("c"), Lsn(7))]);
        let points = points_at_start(RoleKind::Primary, b_and_c(), kept, Lsn(10)).unwrap();
        assert_eq!(points.lsn_for(&NodeId::from("b")), Some(Lsn(10)));
        assert_eq!(points.lsn_for(&NodeId::from("c")), Some(Lsn(7)));
    }

    #[test]
    fn only_a_node_starting_with_a_rejoin_keeps_the_kept_points_when_not_primary() {
        let kept = BTreeMap::from([(NodeId::from("b"), Lsn(7))]);
        let fenced = points_at_start(RoleKind::Fenced, b_and_c(), kept.clone(), Lsn(10));
        assert_eq!(fenced.unwrap().lsn_for(&NodeId::from("b")), Some(Lsn(7)));
        assert!(points_at_start(RoleKind::Standby, b_and_c(), kept, Lsn(10)).is_none());
        assert!(points_at_start(RoleKind::Fenced, b_and_c(), BTreeMap::new(), Lsn(10)).is_none());
    }
}
