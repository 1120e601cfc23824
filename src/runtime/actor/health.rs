//! What the node publishes (`Health` on a watch, the header it sends),
//! and WAL retention.

use crate::config::Config;
use crate::error::LeaderHint;
use crate::node::{Event, RoleKind, SyncState, WriteRefusal};
use crate::replicator::{Health, PeerHealth};
use crate::transport::Header;
use crate::transport::WalAck;
use crate::types::{Epoch, EpochHistory, Lsn, NodeId};
use tokio::time::Instant;

use super::Actor;

pub(crate) fn placeholder_health(cfg: &Config) -> Health {
    Health {
        node_id: cfg.node_id.clone(),
        role: RoleKind::Standby,
        epoch: Epoch::ZERO,
        leader: None,
        writable: false,
        solo: false,
        sync_state: SyncState::NotSync,
        eligible: false,
        commit_mode: cfg.commit_mode,
        first_lsn: Lsn::ZERO,
        last_lsn: Lsn::ZERO,
        flushed_lsn: Lsn::ZERO,
        commit_lsn: Lsn::ZERO,
        applied_lsn: Lsn::ZERO,
        peer: PeerHealth::default(),
        standbys: Vec::new(),
        rewound_records: 0,
        note: None,
        arbiter: None,
        failover_paused: false,
        retrying_wal: false,
    }
}

impl Actor {
    /// Measures the WAL for retention; the node decides what may go
    /// (`Effect::TrimWal`).
    pub(super) fn retain_wal(&mut self) {
        let first_lsn = self.wal.first_lsn();
        let bounded_from = self.bounded_from(first_lsn);
        self.step(Event::WalMeasured {
            first_lsn,
            durable_lsn: self.sm.durable_lsn(),
            bounded_from,
        });
    }

    /// The oldest LSN from which the WAL holds at most
    /// `wal_retention_bytes` (a binary search, only when over the bound).
    fn bounded_from(&self, first_lsn: Lsn) -> Lsn {
        let limit = self.cfg.wal_retention_bytes;
        if self.wal.bytes_from(first_lsn) <= limit {
            return first_lsn;
        }
        // bytes_from(lo) > limit >= bytes_from(hi)
        let (mut lo, mut hi) = (first_lsn, self.wal.last_lsn().next());
        while hi.0 - lo.0 > 1 {
            let mid = Lsn(lo.0 + (hi.0 - lo.0) / 2);
            if self.wal.bytes_from(mid) <= limit {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }

    /// Our log's end: its last record's epoch and LSN.
    pub(super) fn log_end(&self) -> crate::node::LogEnd {
        log_end_of(self.wal.as_ref())
    }

    pub(super) fn header(&self) -> Header {
        Header {
            cluster_id: self.cfg.cluster_id.clone(),
            epoch: self.node.epoch(),
            node_id: self.cfg.node_id.clone(),
            node_addr: self.cfg.advertise_addr.clone(),
            leader_id: self.node.leader().cloned(),
            client_addr: self.cfg.advertise_client_addr.clone(),
        }
    }

    /// Where `peer` serves replication, as this node dials it.
    fn peer_addr(&self, peer: &NodeId) -> String {
        self.cfg
            .more_peers
            .iter()
            .find(|p| p.id == *peer)
            .map_or_else(|| self.cfg.peer_addr.clone(), |p| p.addr.clone())
    }

    pub(super) fn leader_hint(&self) -> Option<LeaderHint> {
        let leader = self.node.leader()?;
        Some(if *leader == self.cfg.node_id {
            LeaderHint {
                id: leader.clone(),
                addr: self.cfg.advertise_addr.clone(),
                client_addr: self.cfg.advertise_client_addr.clone(),
            }
        } else {
            LeaderHint {
                id: leader.clone(),
                addr: self.peer_addr(leader),
                client_addr: self.peer_client_addrs.get(leader).cloned(),
            }
        })
    }

    pub(super) fn health(&self) -> Health {
        let role = self.node.role();
        let last = self.node.last_lsn();
        let now = Instant::now();
        let primary = role == RoleKind::Primary;
        let (connected, lag_records, lag_bytes) = match self.node.standby_positions() {
            // A primary since start whose standby has not answered yet
            // cannot tell what it holds: everything, as far as it knows.
            Some(_) => {
                let matched = self.standby_matched.unwrap_or(Lsn::ZERO);
                (
                    self.stream_up,
                    last.0.saturating_sub(matched.0),
                    self.wal.bytes_from(matched.next()),
                )
            }
            None => (
                self.session.is_some(),
                self.primary_last_lsn
                    .0
                    .saturating_sub(self.node.flushed_lsn().0),
                0,
            ),
        };
        let lag_seconds = if lag_records == 0 {
            0.0
        } else {
            (now - self.caught_up_at).as_secs_f64()
        };
        let writable = self.node.check_writable().is_ok();
        Health {
            node_id: self.cfg.node_id.clone(),
            role,
            epoch: self.node.epoch(),
            leader: self.leader_hint(),
            writable,
            solo: self.node.is_solo(),
            sync_state: self.node.sync_state(),
            eligible: self.node.is_eligible(),
            commit_mode: self.cfg.commit_mode,
            first_lsn: self.wal.first_lsn(),
            last_lsn: last,
            flushed_lsn: self.node.flushed_lsn(),
            commit_lsn: self.node.commit_lsn(),
            applied_lsn: self.node.applied_lsn(),
            peer: PeerHealth {
                node_id: self.cfg.peer_id.clone(),
                connected,
                lag_records,
                lag_bytes,
                lag_seconds,
                last_contact: self.peer_contact.map(|t| now - t),
                heartbeat_rtt: if primary {
                    self.metrics.last_heartbeat_rtt()
                } else {
                    None
                },
            },
            standbys: self.node.standby_health(),
            rewound_records: self.metrics.rewound_records(),
            note: self.node.check_writable().err().map(|r| match r {
                WriteRefusal::NotPrimary { .. } => match self.node.held_by_pause() {
                    Some(why) => format!("{role}: writes go to the primary; {why}"),
                    None => format!("{role}: writes go to the primary"),
                },
                WriteRefusal::Fenced { epoch } => format!("fenced at epoch {epoch}; rejoining"),
                WriteRefusal::Unavailable { reason } => reason,
            }),
            arbiter: self.node.arbiter_status(),
            failover_paused: self.node.failover_paused(),
            retrying_wal: role == RoleKind::Failed && self.node.failed_for_good().is_none(),
        }
    }

    /// Primary: the standby answered a heartbeat with where its log ends.
    pub(super) fn note_standby_report(&mut self, ack: &WalAck) {
        if self.node.role() != RoleKind::Primary || ack.epoch > self.node.epoch() {
            return;
        }
        let matched = matched_prefix(
            &self.wal.history(),
            self.wal.last_lsn(),
            ack.flushed,
            ack.flushed_epoch,
        );
        self.note_standby_matched(matched);
    }

    /// Primary: the standby's log holds ours up to `matched` now.
    pub(super) fn note_standby_matched(&mut self, matched: Lsn) {
        self.standby_matched = Some(matched);
        if matched >= self.node.last_lsn() {
            self.caught_up_at = Instant::now();
        }
    }

    pub(super) fn publish(&self) {
        let health = self.health();
        self.health_tx.send_if_modified(|current| {
            // Contact times move on every message; publish only real changes.
            let same = current.role == health.role
                && current.epoch == health.epoch
                && current.leader == health.leader
                && current.writable == health.writable
                && current.solo == health.solo
                && current.sync_state == health.sync_state
                && current.eligible == health.eligible
                && current.last_lsn == health.last_lsn
                && current.first_lsn == health.first_lsn
                && current.flushed_lsn == health.flushed_lsn
                && current.commit_lsn == health.commit_lsn
                && current.applied_lsn == health.applied_lsn
                && current.peer.connected == health.peer.connected
                && current.peer.lag_records == health.peer.lag_records
                && current.standbys == health.standbys
                && current.rewound_records == health.rewound_records
                && current.note == health.note
                && current.arbiter == health.arbiter
                && current.failover_paused == health.failover_paused;
            *current = health;
            !same
        });
    }
}

/// The last LSN up to which a log whose durable end is `their_last`, a
/// record of `their_epoch`, holds the records of ours (`ours`, ending at
/// `our_last`), as far as those two facts tell.
///
/// Two logs that hold a record of the same epoch at one LSN hold the same
/// records up to it, so a standby whose last record has the epoch ours has
/// there holds ours up to it. Otherwise its tail was written by an older
/// primary than the one that wrote ours there (the old primary's
/// unreplicated records after a failover): our records of epochs up to
/// `their_epoch` end where our first newer epoch begins, and the standby
/// lacks everything after that (at most).
pub(crate) fn matched_prefix(
    ours: &EpochHistory,
    our_last: Lsn,
    their_last: Lsn,
    their_epoch: Epoch,
) -> Lsn {
    let end = their_last.min(our_last);
    if their_last <= our_last && ours.epoch_at(their_last) == Some(their_epoch) {
        return their_last;
    }
    match ours.0.iter().find(|e| e.epoch > their_epoch) {
        Some(newer) => end.min(Lsn(newer.first_lsn.0.saturating_sub(1))),
        None => end,
    }
}

/// `wal`'s end: its last record's epoch (0 when it holds none) and LSN.
pub(super) fn log_end_of(wal: &dyn crate::wal::WalStore) -> crate::node::LogEnd {
    let lsn = wal.last_lsn();
    crate::node::LogEnd {
        epoch: wal.epoch_at(lsn).unwrap_or(Epoch::ZERO),
        lsn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> EpochHistory {
        EpochHistory::of(entries)
    }

    #[test]
    fn a_standby_on_our_log_lacks_what_follows_its_last_record() {
        let ours = history(&[(1, 1), (2, 10)]);
        assert_eq!(matched_prefix(&ours, Lsn(20), Lsn(15), Epoch(2)), Lsn(15));
        assert_eq!(matched_prefix(&ours, Lsn(20), Lsn(7), Epoch(1)), Lsn(7));
        assert_eq!(matched_prefix(&ours, Lsn(20), Lsn(0), Epoch(0)), Lsn(0));
    }

    #[test]
    fn an_old_primary_lacks_everything_after_the_point_where_our_epoch_began() {
        // We promoted at 9 into epoch 2; the old primary had written up
        // to 14 in epoch 1, and 10..=14 are not ours.
        let ours = history(&[(1, 1), (2, 10)]);
        assert_eq!(matched_prefix(&ours, Lsn(20), Lsn(14), Epoch(1)), Lsn(9));
        // Its tail runs past our whole log.
        assert_eq!(matched_prefix(&ours, Lsn(12), Lsn(30), Epoch(1)), Lsn(9));
        // Nothing newer than its epoch in our log: it holds ours up to
        // where either log ends.
        let same = history(&[(1, 1)]);
        assert_eq!(matched_prefix(&same, Lsn(12), Lsn(30), Epoch(1)), Lsn(12));
    }
}
