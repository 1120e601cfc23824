//! The one thing an engine holds: the `Replicator` trait, and what it
//! reports about the node.

use crate::config::CommitMode;
use crate::error::{LeaderHint, Result};
use crate::node::{RoleKind, SyncState};
use crate::types::{Epoch, Lsn, NodeId, RequestId};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::watch;

/// Where a write landed once the commit mode was met and the local state
/// machine applied it, and what the engine answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The record's place in the log.
    pub lsn: Lsn,
    /// The epoch of the primary that wrote it.
    pub epoch: Epoch,
    /// The engine's output for this record (`StateMachine::apply_batch`;
    /// empty with the default, which calls `apply`). Empty when
    /// `deduplicated`: outputs are not stored, so a retry cannot get the
    /// first attempt's (read the state if the caller needs it).
    pub output: Bytes,
    /// This call was a retry (`apply_once`) of a request id already in the
    /// log: nothing new was written, and `lsn`/`epoch` are those of the
    /// record the first attempt wrote (`epoch` may be an older primary's).
    pub deduplicated: bool,
}

/// The peer as this node sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerHealth {
    /// The peer's id (`Config::peer_id`).
    pub node_id: NodeId,
    /// A WAL stream is open (primary: to the standby; standby: from the primary).
    pub connected: bool,
    /// Records the standby lacks. On a primary: its records after the
    /// last one the standby's log holds, as the standby's latest stream
    /// ack or heartbeat answer says (a standby with an older primary's
    /// tail lacks ours from where our newer epoch began); just after a
    /// promotion, until the peer answers, the records written since; on a
    /// primary since start whose standby never answered, all of them. On
    /// a standby: how far its durable log is behind the last LSN the
    /// primary told it.
    pub lag_records: u64,
    /// Bytes of WAL those records take (known on the primary; 0 on a
    /// standby).
    pub lag_bytes: u64,
    /// How long the standby has not been caught up (0 while it is).
    pub lag_seconds: f64,
    /// Time since the peer last answered or spoke to us.
    pub last_contact: Option<Duration>,
    /// Round trip of the last heartbeat (primary).
    pub heartbeat_rtt: Option<Duration>,
}

/// One standby as its primary sees it (`Health::standbys`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyHealth {
    /// The standby's id.
    pub node_id: NodeId,
    /// Its WAL stream is open.
    pub connected: bool,
    /// Where its log is durable, as it last reported.
    pub flushed_lsn: Lsn,
    /// Records of ours it does not hold durably yet.
    pub lag_records: u64,
    /// What the primary tells it: `Sync` while it holds every
    /// acknowledged write and commits wait for it.
    pub sync_state: SyncState,
    /// Commits wait for it under the commit rule (it was not dropped as
    /// lost, and the rule names it).
    pub counted: bool,
}

/// A snapshot of the node's state, published on every change.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// This node's id.
    pub node_id: NodeId,
    /// Its role now.
    pub role: RoleKind,
    /// The highest epoch it has seen (durably).
    pub epoch: Epoch,
    /// The primary as this node knows it.
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
    /// `Config::commit_mode`.
    pub commit_mode: CommitMode,
    /// Oldest record still in the WAL (retention moves it).
    pub first_lsn: Lsn,
    /// Newest record in the local WAL (appended, maybe not durable).
    pub last_lsn: Lsn,
    /// Newest record durable in the local WAL.
    pub flushed_lsn: Lsn,
    /// Newest record known committed (its commit mode met).
    pub commit_lsn: Lsn,
    /// Newest record the local state machine applied.
    pub applied_lsn: Lsn,
    /// The peer as this node sees it (`Config::peer_id`).
    pub peer: PeerHealth,
    /// On a primary, every standby (the pair's peer among them) as it
    /// sees it; empty on other roles.
    pub standbys: Vec<StandbyHealth>,
    /// Records dropped by rewinds since start (also kept in `rewound/`).
    pub rewound_records: u64,
    /// Why the node refuses writes, when it does.
    pub note: Option<String>,
    /// The arbiter as this node sees it (`None` without one).
    pub arbiter: Option<crate::arbiter::ArbiterStatus>,
    /// Automatic failover is paused on this node (maintenance mode,
    /// `Replica::set_failover_paused`): as a standby it does not promote
    /// itself when the primary falls silent (`note` says so when that
    /// happens).
    pub failover_paused: bool,
    /// `role` is `Failed` only until the node's next attempt: a standby
    /// whose WAL append failed (a full disk) takes WAL again by itself,
    /// with a backoff, and needs no restart. A liveness probe passes.
    pub retrying_wal: bool,
}

/// What an engine calls. One `Replicator` per node (`Replica` is the
/// implementation).
///
/// Concurrency: every method takes `&self` and may be called from any
/// number of tasks at once; share the node as an `Arc`. Concurrent
/// `apply` calls are appended in the order the node receives them
/// (together, in one WAL append and one fsync), and each is acknowledged
/// separately. The getters (`role`, `epoch`, `leader`, `health`) read the
/// latest published `Health` and never block.
///
/// Durability: what `Ok` from `apply` guarantees is `Config::commit_mode`'s
/// promise (`remote-flush`, the default: the record is fsynced on both
/// nodes and survives the loss of either); see `Error` for what each
/// failure says about the write.
#[async_trait]
pub trait Replicator: Send + Sync {
    /// Appends `cmd` to the log and returns once the commit mode is met and
    /// the local state machine applied it: a read on this node then sees it.
    /// Only a primary accepts writes; a command above
    /// `Config::max_record_bytes` is refused with `InvalidInput` before
    /// anything is written.
    ///
    /// Cancellation: dropping the returned future does not withdraw the
    /// write. Once the node has received the command (the future's first
    /// poll hands it over unless the node's queue is full), it is appended,
    /// replicated and applied on both nodes like any other write; only the
    /// answer is lost. Dropped before the node received it, nothing is
    /// written. The caller cannot tell the two apart from the future, and
    /// no later `apply` returns a dropped write's LSN: an engine that needs
    /// to retry a write whose fate is unknown uses `apply_once` (or
    /// retries only idempotent commands). Prefer `tokio::time::timeout`
    /// around the call to learn *that* the answer is late, with this in mind.
    async fn apply(&self, cmd: Bytes) -> Result<Applied>;

    /// As `apply`, for several commands in one WAL append, at consecutive
    /// LSNs, in order; `Ok` holds one `Applied` per command. The commands
    /// are handed to the node together, so cancellation affects all or
    /// none of them, and a refusal on arrival refuses all of them. An empty
    /// batch returns `Ok` at once and writes nothing.
    async fn apply_batch(&self, cmds: Vec<Bytes>) -> Result<Vec<Applied>>;

    /// As `apply`, applied at most once per `id` while the id is
    /// remembered: the way to retry a write whose outcome is unknown
    /// (`Error::outcome()` is `MaybeWritten`: `SyncTimeout`, a lost
    /// answer, a failover), at the same primary or at the next one.
    ///
    /// The id travels in the record, so every node that holds the record
    /// knows it: the primary when it appends, the standby when it
    /// receives, both again at start by scanning their WAL. A call whose id
    /// a record of this node's log carries appends nothing and waits for
    /// that record (committed, or still in flight: then it shares that
    /// record's fate, with a `sync_timeout` of its own from the retry),
    /// then returns its `lsn` and `epoch` with `deduplicated` set and an
    /// empty `output`.
    ///
    /// The window: the newest `Config::max_request_ids` records with ids,
    /// as the node answering the retry counts them (give every node the
    /// same setting: a failover to a node with a smaller one shrinks the
    /// window). The WAL keeps those records (and so their ids, across
    /// restarts) whatever the engine's `durable_lsn` says; only
    /// `Config::wal_retention_bytes` may cut the window shorter, and a
    /// standby resynced from a snapshot knows no id of the records the
    /// snapshot covers (a snapshot carries state, not ids): should it
    /// promote before the retry arrives, the retry is applied again. A
    /// retry outside the window applies the command again.
    /// A record that a rewind dropped (the old primary's unreplicated tail
    /// after a failover) takes its id with it: it was never committed, so
    /// the retry writing it again applies it exactly once.
    async fn apply_once(&self, id: RequestId, cmd: Bytes) -> Result<Applied>;

    /// As `apply_batch`, each command with its request id, each
    /// de-duplicated as `apply_once` says; a command whose id repeats one
    /// earlier in the batch is a retry of it.
    async fn apply_batch_once(&self, cmds: Vec<(RequestId, Bytes)>) -> Result<Vec<Applied>>;

    /// This node's role now (it changes at failover, fence, rejoin).
    fn role(&self) -> RoleKind;

    /// The highest epoch this node has seen.
    fn epoch(&self) -> Epoch;

    /// The primary as this node knows it.
    fn leader(&self) -> Option<LeaderHint>;

    /// The latest published state of the node.
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

    /// Stops every task and returns once they stopped. A primary whose
    /// standby is reachable and in sync first hands over to it: a planned
    /// switchover (as `promote` asked of the primary), so writes pause for
    /// milliseconds rather than `failover_timeout`, and by the time this
    /// returns the standby is the primary of the next epoch. The handover
    /// is bounded by about `switchover_timeout`; if the standby is not in
    /// sync, unreachable, or does not take over in time, the node just
    /// stops (and logs why). Writes waiting for their commit mode fail with
    /// `ShuttingDown` (appended, perhaps not durable: fate unknown, see
    /// `Error`); later calls fail with `ShuttingDown`. Once begun, the stop
    /// runs to its end on the runtime the node started on, even if this
    /// call's future is dropped or is polled elsewhere; a later `shutdown`
    /// returns when it ended. The WAL and the
    /// state machine are left as a crash would leave them, which their own
    /// contracts make safe.
    async fn shutdown(&self);
}
