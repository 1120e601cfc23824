//! What the role logic consumes and what it asks the runtime to do.

use crate::types::{Epoch, Lsn, NodeId};

/// Time as the role logic sees it: elapsed since the runtime started. The
/// logic never reads a clock itself.
pub type Time = std::time::Duration;

/// How the primary describes its standby in heartbeats and batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncState {
    /// Every acknowledged write is durable on the standby: it may promote.
    Sync,
    /// Sync commit mode, but the primary acknowledged writes the standby
    /// may lack: it must not promote by itself.
    #[default]
    NotSync,
    /// Async commit mode: promotion is judged by lag.
    Async,
}

/// Why a node is told to step down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceReason {
    Failover,
    Switchover,
    Forced,
}

/// Where the standby is, as last reported to the primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyPositions {
    pub written: Lsn,
    pub flushed: Lsn,
    pub applied: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed; the runtime calls this at least every heartbeat interval.
    Tick,
    /// The primary appended records up to `last_lsn` (not yet durable).
    Appended { last_lsn: Lsn },
    /// The local WAL is durable up to `lsn`.
    LocalFlushed { lsn: Lsn },
    /// The local state machine applied up to `lsn`.
    Applied { lsn: Lsn },
    /// Primary: the standby acknowledged WAL on a stream whose start it
    /// checked against its log, so these positions name records we share.
    StandbyProgress { positions: StandbyPositions },
    /// Primary: the standby answered a heartbeat at our epoch. It proves the
    /// standby is reachable, not where its log is.
    StandbyReachable,
    /// Primary: the WAL stream to the standby opened or closed. Opening
    /// forgets the standby's positions until its first checked ack.
    StreamState { up: bool },
    /// Primary: a call to the standby failed without an answer.
    StandbyUnreachable,
    /// Standby: the primary of `epoch` spoke to us (heartbeat or batch).
    PrimaryContact {
        epoch: Epoch,
        leader: NodeId,
        primary_last_lsn: Lsn,
        commit_lsn: Lsn,
        sync: SyncState,
    },
    /// Any message showed that `epoch`, newer than ours, exists.
    HigherEpoch {
        epoch: Epoch,
        leader: Option<NodeId>,
    },
    /// The peer asks us to step down to `epoch`.
    FenceRequested {
        epoch: Epoch,
        leader: NodeId,
        reason: FenceReason,
    },
    /// Operator asks this node to become primary.
    PromoteRequested { force: bool },
    /// Standby promoting: the fence we sent to the old primary finished.
    /// `Some(last_lsn)` when it confirmed it stopped at `last_lsn`.
    FenceSent { confirmed_last_lsn: Option<Lsn> },
    /// A fenced node finished rejoining: it is a standby of `leader` at `epoch`.
    RejoinFinished { epoch: Epoch, leader: NodeId },
    /// The WAL failed (fsync error, corruption on write path): stop.
    WalFailed { reason: String },
}

/// A fenced node's reply to a fence request, sent once its outcome is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FenceOutcome {
    /// Fenced; nothing after `last_lsn` was or will be written here.
    Fenced { last_lsn: Lsn },
    /// Refused: the request's epoch is not above ours, or the switchover
    /// could not complete in time.
    Refused { reason: String },
}

/// Why pending writes are failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaiterFailure {
    SyncTimeout,
    Fenced { epoch: Epoch },
    NotPrimary,
    WalFailed { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Persist epoch and leader before doing anything that follows.
    PersistMeta {
        epoch: Epoch,
        leader: Option<NodeId>,
    },
    /// The role changed (log it, publish it).
    RoleChanged {
        from: super::RoleKind,
        to: super::RoleKind,
        epoch: Epoch,
    },
    /// Writes up to `lsn` are committed: apply them and answer their callers.
    Commit { lsn: Lsn },
    /// Fail the callers of uncommitted writes up to `lsn` (all if `None`).
    FailWaiters {
        up_to: Option<Lsn>,
        failure: WaiterFailure,
    },
    /// Send `Fence(epoch)` to the peer, bounded in time, then report
    /// `Event::FenceSent`.
    SendFence { epoch: Epoch, reason: FenceReason },
    /// Answer the pending fence request from the peer.
    ReplyFence(FenceOutcome),
    /// Answer the pending operator promotion.
    ReplyPromote(Result<Epoch, String>),
    /// Start streaming WAL and heartbeats to the peer (primary).
    StartPrimaryTasks,
    /// Stop them.
    StopPrimaryTasks,
    /// Find the divergence point with `leader`, rewind, become a standby.
    StartRejoin { leader: Option<NodeId> },
}
