//! The one thing an engine holds: the `Replicator` trait, and what it
//! reports about the node.

use crate::config::CommitMode;
use crate::error::{LeaderHint, Result};
use crate::node::{RoleKind, SyncState};
use crate::types::{Epoch, Lsn, NodeId};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::watch;

/// Where a write landed once the commit mode was met and the local state
/// machine applied it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub lsn: Lsn,
    pub epoch: Epoch,
}

/// The peer as this node sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerHealth {
    pub node_id: NodeId,
    /// A WAL stream is open (primary: to the standby; standby: from the primary).
    pub connected: bool,
    /// How far the standby is behind the primary's last LSN.
    pub lag_records: u64,
    /// Bytes of WAL the standby has not flushed (known on the primary).
    pub lag_bytes: u64,
    /// How long the standby has not been caught up.
    pub lag_seconds: f64,
    /// Time since the peer last answered or spoke to us.
    pub last_contact: Option<Duration>,
    /// Round trip of the last heartbeat (primary).
    pub heartbeat_rtt: Option<Duration>,
}

/// A snapshot of the node's state, published on every change.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub node_id: NodeId,
    pub role: RoleKind,
    pub epoch: Epoch,
    pub leader: Option<LeaderHint>,
    /// A primary that accepts writes right now.
    pub writable: bool,
    /// A primary acknowledging writes without its standby.
    pub solo: bool,
    /// What the primary tells the standby (primary), or what it was told
    /// at the last contact (standby).
    pub sync_state: SyncState,
    /// A standby that could promote itself if the primary fell silent now.
    pub eligible: bool,
    pub commit_mode: CommitMode,
    /// Oldest record still in the WAL (retention moves it).
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub peer: PeerHealth,
    /// Records dropped by rewinds since start (also kept in `rewound/`).
    pub rewound_records: u64,
    /// Why the node refuses writes, when it does.
    pub note: Option<String>,
}

/// What an engine calls. One `Replicator` per node.
#[async_trait]
pub trait Replicator: Send + Sync {
    /// Appends `cmd` to the log and returns once the commit mode is met and
    /// the local state machine applied it.
    async fn apply(&self, cmd: Bytes) -> Result<Applied>;

    /// As `apply`, for several commands in one WAL append.
    async fn apply_batch(&self, cmds: Vec<Bytes>) -> Result<Vec<Applied>>;

    fn role(&self) -> RoleKind;

    fn epoch(&self) -> Epoch;

    /// The primary as this node knows it.
    fn leader(&self) -> Option<LeaderHint>;

    fn health(&self) -> Health;

    /// Planned switchover when `force` is false: waits until this standby
    /// has everything, fences the primary, promotes (asked of the primary,
    /// it asks its standby). `force` promotes even if writes may be lost.
    async fn promote(&self, force: bool) -> Result<Epoch>;

    /// Steps this node down: it adopts `epoch` (above its own), refuses
    /// writes and rejoins the peer as a standby.
    async fn fence(&self, epoch: Epoch) -> Result<()>;

    /// Waits until some node is known as primary.
    async fn wait_for_leader(&self, timeout: Duration) -> Result<LeaderHint>;

    /// Waits until this node's state machine applied `lsn` (read your
    /// writes on a standby).
    async fn wait_for_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<()>;

    /// Every change of role, epoch, positions: the latest `Health`.
    fn subscribe(&self) -> watch::Receiver<Health>;

    /// Stops every task; pending writes fail with `ShuttingDown`.
    async fn shutdown(&self);
}
