//! When a standby fsyncs what it received on its own runtime thread
//! (`Config::standby_sync_inline`), and when it hands that to the flusher.
//!
//! Inline saves two thread hand-offs per batch while the disk is fast, but
//! while an fsync stalls the standby's thread does nothing else: batches
//! that arrive meanwhile wait for the stall to end and then for an fsync of
//! their own, so the slowest commits waited two stalls back to back. The
//! flusher overlaps a second fsync with a stalled one instead (see
//! `flusher.rs`). So an inline fsync slower than `SLOW` hands the fsyncs to
//! the flusher for `PAUSE`; the next inline fsync after that runs inline
//! again and decides anew.

use std::time::Duration;
use tokio::time::Instant;

/// An inline fsync this slow is a stall (another process's writes, a
/// journal commit), not the disk's pace under our own load. An fdatasync
/// into reserved space takes 0.1 ms on a quiet disk of this project's
/// machine, but with both nodes of a pair syncing at once under 16 writers
/// it took 0.4 ms at the median and over 1 ms once in thirty, while real
/// stalls last 10 to 100 ms. A 1 ms threshold paused inline fsyncs almost
/// all the time there, and the hand-offs to the flusher and back then cost
/// the standby half again its CPU per write.
pub(super) const SLOW: Duration = Duration::from_millis(10);

/// How long the flusher takes over after a slow inline fsync: stalls come
/// in bursts while another process writes to the same disk.
pub(super) const PAUSE: Duration = Duration::from_secs(1);

/// Whether the standby's fsyncs run inline now.
#[derive(Debug, Default)]
pub(super) struct InlineSyncGate {
    paused_until: Option<Instant>,
}

impl InlineSyncGate {
    /// Whether the WAL received now is fsynced inline.
    pub fn allows(&self, now: Instant) -> bool {
        self.paused_until.is_none_or(|until| now >= until)
    }

    /// An inline fsync that ended at `now` took `took`.
    pub fn record(&mut self, took: Duration, now: Instant) {
        if took >= SLOW {
            self.paused_until = Some(now + PAUSE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_inline_fsync_hands_the_next_ones_to_the_flusher_for_a_while() {
        let mut gate = InlineSyncGate::default();
        let t0 = Instant::now();
        assert!(gate.allows(t0), "inline until an fsync is slow");
        gate.record(SLOW / 10, t0);
        assert!(gate.allows(t0), "a fast fsync keeps it inline");
        gate.record(SLOW, t0);
        assert!(!gate.allows(t0), "a slow fsync pauses inline fsyncs");
        assert!(!gate.allows(t0 + PAUSE / 2));
        assert!(gate.allows(t0 + PAUSE), "inline again after the pause");
    }
}
