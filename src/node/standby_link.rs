//! What a primary knows of one of its standbys: where its log is, whether
//! it is reachable, and whether commits wait for it.
//!
//! The primary keeps one `StandbyLink` per standby, so one lost or slow
//! standby changes only its own link; the commit rule then decides what
//! the links that count allow (`Primary::commit_target`).

use super::event::{StandbyPositions, Time};
use crate::config::CommitMode;
use crate::types::Lsn;

/// Whether commits wait for this standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Counting {
    /// Commits wait for it as the rule says (sync modes).
    Counted,
    /// Commits do not wait for it: it was lost with `solo` (with an
    /// arbiter, after the register took it out of the sync set), or we
    /// were just promoted. Counted again once it has caught up.
    NotCounted,
    /// It was lost with `block`, or the arbiter did not take it out of the
    /// sync set: it still counts, and if the rule cannot be met without
    /// it, writes are refused until it (or the arbiter) answers.
    Blocked,
}

/// One standby as its primary sees it.
#[derive(Clone, Debug)]
pub(super) struct StandbyLink {
    /// Where the standby's log is, from its last checked ack.
    pub(super) positions: StandbyPositions,
    /// The WAL stream to it is open.
    pub(super) streaming: bool,
    /// It answered at our epoch since this process started (or last woke
    /// from a pause). Going on without it needs this: a primary that has
    /// not heard from a standby cannot know whether it promoted meanwhile.
    pub(super) contact_this_life: bool,
    /// First failed call to it since its last answer.
    pub(super) unreachable_since: Option<Time>,
    /// Its heartbeat answers say its WAL failed: until one says it is a
    /// standby again, its stream acks are not contact.
    pub(super) failed: bool,
    pub(super) counting: Counting,
    /// With an arbiter: it is lost and the `solo` policy wants to go on
    /// without it, which waits for the arbiter's swap taking it out of the
    /// sync set.
    pub(super) wants_out: bool,
}

impl StandbyLink {
    /// A standby not heard from yet, counted or not.
    pub(super) fn new(counting: Counting) -> StandbyLink {
        StandbyLink {
            positions: StandbyPositions::default(),
            streaming: false,
            contact_this_life: false,
            unreachable_since: None,
            failed: false,
            counting,
            wants_out: false,
        }
    }

    /// Its position at the commit mode's point.
    pub(super) fn position(&self, mode: CommitMode) -> Lsn {
        match mode {
            CommitMode::Async | CommitMode::RemoteFlush => self.positions.flushed,
            CommitMode::RemoteWrite => self.positions.written,
            CommitMode::RemoteApply => self.positions.applied,
        }
    }

    /// Commits wait for it (it counts, reachable or not).
    pub(super) fn is_counted(&self) -> bool {
        self.counting != Counting::NotCounted
    }

    /// It answered recently enough that it can confirm writes.
    pub(super) fn is_reachable(&self) -> bool {
        self.streaming && self.contact_this_life && self.unreachable_since.is_none() && !self.failed
    }

    /// It answered us: whatever was lost about it is found again.
    pub(super) fn answered(&mut self) {
        self.unreachable_since = None;
        self.contact_this_life = true;
        self.wants_out = false;
    }

    /// How long it has been unreachable at `now`, if it is.
    pub(super) fn unreachable_for(&self, now: Time) -> Option<std::time::Duration> {
        self.unreachable_since
            .map(|since| now.saturating_sub(since))
    }
}
