//! Counters a node keeps for its operator; the daemon exports them.

use crate::node::RoleKind;
use crate::transport::RefusalKind;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub(crate) struct Metrics {
    transitions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// When the last role change happened (microseconds since the Unix
    /// epoch; 0: none since start).
    last_transition_unix_micros: AtomicU64,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    heartbeat_errors: AtomicU64,
    heartbeat_rtt_micros: AtomicU64,
    rewound_records: AtomicU64,
    snapshot_resyncs: AtomicU64,
    longest_step_gap_micros: AtomicU64,
    snapshot_bytes_received: AtomicU64,
    snapshot_bytes_resumed: AtomicU64,
    solo_episodes: AtomicU64,
    /// The epoch of the last one (0: none).
    last_solo_epoch: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// `(from, to) -> count`, role names as in `RoleKind::as_str`: every
    /// pair of two different roles, at 0 until it happens (so a rate over
    /// the counter sees the first change).
    pub transitions: BTreeMap<(&'static str, &'static str), u64>,
    /// When this node last changed role (`None`: not since it started).
    pub last_transition: Option<SystemTime>,
    /// `reason -> count` of refused requests (G6): every `RefusalKind`,
    /// at 0 until it happens.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Heartbeats to the standby that failed without an answer.
    pub heartbeat_errors: u64,
    /// Round trip of the last answered heartbeat (primary only).
    pub heartbeat_rtt: Option<Duration>,
    /// Records dropped by rewinds at rejoin, kept in `rewound/` (G4).
    pub rewound_records: u64,
    /// Times this node restored a snapshot of its peer to rejoin.
    pub snapshot_resyncs: u64,
    /// The longest time between two steps of the node's role logic since
    /// the node started. The node steps at least once per
    /// `heartbeat_interval`; a gap well above that means its task did not
    /// run (a blocked runtime thread, a paused process), and one above
    /// `failover_timeout` makes it forget what it knew about its peer.
    pub longest_step_gap: Duration,
    /// Bytes of snapshots received from the peer and written to the
    /// snapshot directory (a transfer's progress).
    pub snapshot_bytes_received: u64,
    /// Bytes of snapshots the peer did not send again because a cut
    /// transfer resumed after them (in this run, or from what an earlier
    /// run of this node had received).
    pub snapshot_bytes_resumed: u64,
    /// Times this node, as primary, began acknowledging writes without a
    /// standby its commit rule waits for (`Health::solo` turned on): what
    /// it acknowledges then is on its disk alone.
    pub solo_episodes: u64,
    /// The epoch of the last of them (`None`: none since start).
    pub last_solo_epoch: Option<crate::types::Epoch>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let transitions = RoleKind::ALL
            .iter()
            .flat_map(|from| RoleKind::ALL.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from != to)
            .map(|(from, to)| ((from.as_str(), to.as_str()), 0))
            .collect();
        let rejected = RefusalKind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
        Metrics {
            transitions: Mutex::new(transitions),
            last_transition_unix_micros: AtomicU64::new(0),
            rejected: Mutex::new(rejected),
            heartbeat_errors: AtomicU64::new(0),
            heartbeat_rtt_micros: AtomicU64::new(0),
            rewound_records: AtomicU64::new(0),
            snapshot_resyncs: AtomicU64::new(0),
            longest_step_gap_micros: AtomicU64::new(0),
            snapshot_bytes_received: AtomicU64::new(0),
            snapshot_bytes_resumed: AtomicU64::new(0),
            solo_episodes: AtomicU64::new(0),
            last_solo_epoch: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub(crate) fn transition(&self, from: RoleKind, to: RoleKind) {
        *self
            .transitions
            .lock()
            .unwrap()
            .entry((from.as_str(), to.as_str()))
            .or_default() += 1;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| {
                u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
            });
        self.last_transition_unix_micros
            .store(now, Ordering::Relaxed);
    }

    pub(crate) fn rejected(&self, kind: RefusalKind) {
        *self
            .rejected
            .lock()
            .unwrap()
            .entry(kind.as_str())
            .or_default() += 1;
    }

    pub(crate) fn heartbeat_error(&self) {
        self.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn heartbeat_rtt(&self, rtt: Duration) {
        self.heartbeat_rtt_micros
            .store(rtt.as_micros().max(1) as u64, Ordering::Relaxed);
    }

    pub(crate) fn rewound(&self, records: u64) {
        self.rewound_records.fetch_add(records, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_resync(&self) {
        self.snapshot_resyncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes the time since the node's previous step.
    pub(crate) fn step_gap(&self, gap: Duration) {
        let micros = u64::try_from(gap.as_micros()).unwrap_or(u64::MAX);
        self.longest_step_gap_micros
            .fetch_max(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_received(&self, bytes: u64) {
        self.snapshot_bytes_received
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn snapshot_resumed(&self, bytes: u64) {
        self.snapshot_bytes_resumed
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// The primary at `epoch` went solo.
    pub(crate) fn went_solo(&self, epoch: crate::types::Epoch) {
        self.last_solo_epoch.store(epoch.0, Ordering::Relaxed);
        self.solo_episodes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn last_heartbeat_rtt(&self) -> Option<Duration> {
        let rtt = self.heartbeat_rtt_micros.load(Ordering::Relaxed);
        (rtt > 0).then(|| Duration::from_micros(rtt))
    }

    pub(crate) fn rewound_records(&self) -> u64 {
        self.rewound_records.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            transitions: self.transitions.lock().unwrap().clone(),
            last_transition: match self.last_transition_unix_micros.load(Ordering::Relaxed) {
                0 => None,
                micros => Some(SystemTime::UNIX_EPOCH + Duration::from_micros(micros)),
            },
            rejected: self.rejected.lock().unwrap().clone(),
            heartbeat_errors: self.heartbeat_errors.load(Ordering::Relaxed),
            heartbeat_rtt: self.last_heartbeat_rtt(),
            rewound_records: self.rewound_records(),
            snapshot_resyncs: self.snapshot_resyncs.load(Ordering::Relaxed),
            longest_step_gap: Duration::from_micros(
                self.longest_step_gap_micros.load(Ordering::Relaxed),
            ),
            snapshot_bytes_received: self.snapshot_bytes_received.load(Ordering::Relaxed),
            snapshot_bytes_resumed: self.snapshot_bytes_resumed.load(Ordering::Relaxed),
            solo_episodes: self.solo_episodes.load(Ordering::Relaxed),
            last_solo_epoch: match self.last_solo_epoch.load(Ordering::Relaxed) {
                0 => None,
                e => Some(crate::types::Epoch(e)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_change_and_refusal_is_counted_from_zero_before_it_happens() {
        let m = Metrics::default();
        let s = m.snapshot();
        assert_eq!(s.transitions.len(), 6 * 5, "{:?}", s.transitions);
        assert!(s.transitions.values().all(|n| *n == 0));
        assert_eq!(s.transitions.get(&("standby", "promoting")), Some(&0));
        assert_eq!(s.rejected.len(), RefusalKind::ALL.len());
        assert_eq!(s.rejected.get("stale_epoch"), Some(&0));
        assert_eq!(s.last_transition, None);

        m.transition(RoleKind::Promoting, RoleKind::Primary);
        m.rejected(RefusalKind::StaleEpoch);
        let s = m.snapshot();
        assert_eq!(s.transitions.get(&("promoting", "primary")), Some(&1));
        assert_eq!(s.transitions.values().sum::<u64>(), 1);
        assert_eq!(s.rejected.get("stale_epoch"), Some(&1));
        assert!(s.last_transition.is_some());
    }

    #[test]
    fn the_longest_step_gap_is_kept_whatever_comes_after_it() {
        let m = Metrics::default();
        assert_eq!(m.snapshot().longest_step_gap, Duration::ZERO);
        m.step_gap(Duration::from_millis(120));
        m.step_gap(Duration::from_millis(700));
        m.step_gap(Duration::from_millis(3));
        assert_eq!(m.snapshot().longest_step_gap, Duration::from_millis(700));
    }
}
