//! What the role logic consumes and what it asks the runtime to do.

use super::quorum::LogEnd;
use crate::arbiter::Register;
use crate::transport::{Header, HeartbeatRequest, RefusalKind, WalBatch};
use crate::types::{Epoch, EpochHistory, Lsn, NodeId, Record, RequestId};
use bytes::Bytes;

/// Time as the role logic sees it: elapsed since the runtime started. The
/// logic never reads a clock itself.
pub(crate) type Time = std::time::Duration;

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
    /// The standby promotes itself after the primary fell silent.
    Failover,
    /// The operator asked for a planned hand-over: the primary steps down
    /// only once the standby holds everything it wrote.
    Switchover,
    /// The operator forced a promotion; the receiver steps down at once.
    Forced,
    /// A standby asks another standby for its final position before it
    /// promotes (more than one standby, `ANY k` with k below the standbys
    /// that count): the receiver adopts the epoch, so it takes no more of
    /// the old primary's WAL, and answers with its log's end.
    Candidate,
}

/// Where the standby is, as last reported to the primary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct StandbyPositions {
    /// Received and written (not necessarily durable).
    pub written: Lsn,
    /// Durable on the standby's disk.
    pub flushed: Lsn,
    /// Applied by the standby's state machine.
    pub applied: Lsn,
}

/// Who asks for a promotion: the answers differ when the primary is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PromoteFrom {
    /// The engine embedding this node (`Replicator::promote`).
    Engine,
    /// The `Promote` RPC (an operator's CLI, or the peer handing over).
    Rpc,
}

/// What the primary's log looks like, as a rejoining node learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeerLog {
    /// The peer's epoch.
    pub epoch: Epoch,
    /// The peer's role: only a primary's log is followed.
    pub role: super::RoleKind,
    /// Where each of the peer's epochs began.
    pub history: EpochHistory,
    /// The oldest record the peer still keeps.
    pub first_lsn: Lsn,
    /// The peer's last record.
    pub last_lsn: Lsn,
    /// The peer says no node has confirmed it yet (`wiped_peer.rs`).
    pub unconfirmed: bool,
    /// The peer restarted as primary with its log ending here, and has
    /// not streamed to us since (`HistoryReply::restart_lsn`).
    pub restart_lsn: Option<Lsn>,
}

/// What this node's own log and state machine hold, read by the runtime
/// for a decision that needs more of the log than the node tracks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LocalLog {
    /// Where each epoch of our log began.
    pub history: EpochHistory,
    /// The oldest record our WAL keeps.
    pub first_lsn: Lsn,
    /// Our last record.
    pub last_lsn: Lsn,
    /// Where the state machine is (it may be ahead of what the node was
    /// told through `Event::Applied`).
    pub applied: Lsn,
    /// This node started as the primary with its log ending here and has
    /// not rejoined since: what its log holds after it was written in this
    /// life, and a peer holding records under the same LSNs and epoch may
    /// hold ones this node sent before and lost (`restart_point.rs`).
    pub restarted_at: Option<Lsn>,
}

/// How a rejoining node makes its log a prefix of the primary's (G4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RejoinPlan {
    /// The peer is not (yet) the primary of our epoch: ask again later.
    Wait,
    /// Keep the records after `truncate_after` in `rewound/` and drop them;
    /// then, if `resync`, restore a snapshot of the primary; then report
    /// `Event::RejoinFinished` with `epoch`.
    Rewind {
        truncate_after: Option<Lsn>,
        resync: bool,
        epoch: Epoch,
    },
}

/// A request refused by the role logic; the runtime adds our epoch and
/// leader when it sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Which refusal: one gRPC status and one metric label each.
    pub kind: RefusalKind,
    /// What the sender must know to act, in words.
    pub message: String,
}

impl Refused {
    pub(crate) fn new(kind: RefusalKind, message: impl Into<String>) -> Refused {
        Refused {
            kind,
            message: message.into(),
        }
    }
}

/// Why a standby sealed by `Effect::SealStandbys` gave no final position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SealRefused {
    /// In words.
    pub why: String,
    /// The standby refused as stale at this epoch, naming this leader: an
    /// epoch newer than ours exists. It may name us, an old primary having
    /// handed us the epoch by a switchover whose answer we never had.
    pub newer: Option<(Epoch, Option<NodeId>)>,
}

/// Why a fetch of `Effect::FetchWal` brought no records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FetchFailed {
    /// That standby no longer keeps the first record asked for: it
    /// trimmed its WAL once its engine held the records, so asking again
    /// cannot bring them.
    Trimmed(String),
    /// Anything else (no answer, a refusal, a broken connection): asking
    /// again may bring them.
    Other(String),
}

impl std::fmt::Display for FetchFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchFailed::Trimmed(why) | FetchFailed::Other(why) => f.write_str(why),
        }
    }
}

/// What the role logic is told: time, what the runtime did, what the
/// peer and the engine asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Time passed; the runtime calls this at least every heartbeat interval.
    Tick,
    /// The engine's writes that arrived together, in order: appended as one
    /// run of records (`Effect::Append`) or all refused
    /// (`Effect::RefuseWrites`). `request_ids` is empty when none of them
    /// has an id (`apply`), else one per payload (`apply_once`): a write
    /// whose id a record of our log carries is not appended again but
    /// listed in `Effect::Append::retried`.
    WriteRequested {
        payloads: Vec<Bytes>,
        request_ids: Vec<Option<RequestId>>,
    },
    /// The local WAL is durable up to `lsn`.
    LocalFlushed { lsn: Lsn },
    /// The local state machine applied up to `lsn`.
    Applied { lsn: Lsn },
    /// Primary: the standby acknowledged WAL on a stream whose start it
    /// checked against its log, so these positions name records we share,
    /// unless the standby answered from a newer `epoch` (it was promoted
    /// while the stream stayed open): then they are in its own log and
    /// must never commit ours.
    StandbyProgress {
        standby: NodeId,
        positions: StandbyPositions,
        epoch: Epoch,
    },
    /// Primary: the standby answered a heartbeat at our epoch. It proves the
    /// standby is reachable, not where its log is.
    StandbyReachable { standby: NodeId },
    /// Primary: the WAL stream to the standby opened or closed. Opening
    /// forgets the standby's positions until its first checked ack.
    StreamState { standby: NodeId, up: bool },
    /// Primary: a call to the standby failed without an answer.
    StandbyUnreachable { standby: NodeId },
    /// Primary: the standby answered a heartbeat, but its WAL failed (a
    /// full disk): it is as good as unreachable, and acks on the stream
    /// (which a standby trying its WAL again still sends) do not count as
    /// contact until a heartbeat answers as a standby again.
    StandbyFailed { standby: NodeId },
    /// A heartbeat from the peer; answered with `Effect::Answer`.
    HeartbeatReceived { req: HeartbeatRequest },
    /// A WAL batch from the peer on the open stream; answered with
    /// `Effect::Answer` (after `Effect::Append` when it brings new
    /// records). `local_at_prev` is the epoch of our record at
    /// `batch.prev_lsn` and `local[i]` that of our record at the LSN of
    /// `batch.records[i]` (`None` where we hold none): the log check needs
    /// more of the log than the node tracks.
    BatchReceived {
        batch: WalBatch,
        local_at_prev: Option<Epoch>,
        local: Vec<Option<Epoch>>,
    },
    /// The peer asks for our epoch history (it is rejoining); answered
    /// with `Effect::Answer`.
    HistoryRequested { header: Header },
    /// The peer asks for a snapshot of our state machine; answered with
    /// `Effect::Answer`.
    SnapshotRequested { header: Header },
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
    /// Another standby, a candidate for `epoch`, asks for this node's final
    /// position (a fence of reason `Candidate`); answered with
    /// `Effect::ReplyFence`. `candidate_end` is its log end (`None` from a
    /// sender that predates it), `mine` this node's now.
    Sealed {
        epoch: Epoch,
        candidate: NodeId,
        candidate_end: Option<LogEnd>,
        mine: LogEnd,
    },
    /// The engine asks this node to step down to `epoch` (led by the
    /// peer); answered with `Effect::Answer`.
    FenceOrdered { epoch: Epoch },
    /// Operator asks this node to become primary.
    PromoteRequested { force: bool, from: PromoteFrom },
    /// The engine asks this primary to hand over to `standby` (a planned
    /// switchover to a named standby); answered with `Effect::ReplyPromote`.
    SwitchoverTo { standby: NodeId },
    /// Standby promoting: the fence we sent to the old primary finished.
    /// `Some(last_lsn)` when it confirmed it stopped at `last_lsn`.
    FenceSent { confirmed_last_lsn: Option<Lsn> },
    /// A stream of this life reached every standby since this node started
    /// as the primary (`runtime/restart_point.rs`): each one that held
    /// records this node may have lost dropped them first. A restarted
    /// primary of a cluster may then write in its epoch without taking
    /// the next one (`Primary::retake`).
    EveryStandbyReached,
    /// The runtime opened the node (right after `Node::new`); `first_lsn`
    /// is the oldest record its WAL keeps. The node checks that its state
    /// machine and its WAL fit together.
    Opened { first_lsn: Lsn },
    /// A standby asked by `Effect::SealStandbys` adopted the candidate's
    /// epoch and answered with its log's end (`Err`: it refused, or did
    /// not answer). `mine` is this node's log end now. `epoch` is the one
    /// the seal asked for: an answer of an earlier round says nothing of
    /// this one's.
    SealAnswered {
        from: NodeId,
        epoch: Epoch,
        answer: Result<LogEnd, SealRefused>,
        mine: LogEnd,
    },
    /// Records fetched by `Effect::FetchWal` from `from`, continuing our
    /// log if `prev_matches` (our record before the first has the epoch
    /// `from` has there); `Err` when the fetch failed.
    WalFetched {
        from: NodeId,
        fetched: Result<(Vec<Record>, bool), FetchFailed>,
    },
    /// The runtime started the rejoin work asked for by `Effect::StartRejoin`.
    RejoinStarted,
    /// Rejoining: the peer's log as it described it; answered with
    /// `Effect::Rejoin`.
    PeerLogFetched { peer: PeerLog, ours: LocalLog },
    /// A fenced node finished rejoining: it is a standby of `leader` at
    /// `epoch`, and its log and state machine now end at these positions
    /// (lower than before when it rewound); its log now starts at
    /// `first_lsn` (later than before when it resynced from a snapshot).
    RejoinFinished {
        epoch: Epoch,
        leader: NodeId,
        first_lsn: Lsn,
        last_lsn: Lsn,
        flushed: Lsn,
        applied: Lsn,
        /// After a resync from a snapshot: the request ids of the records
        /// it covers, as the primary listed them (empty when it listed
        /// none). `None` when no snapshot was restored.
        snapshot_ids: Option<Vec<crate::types::RequestIdAt>>,
    },
    /// The WAL failed (fsync error, corruption on write path), or the
    /// engine failed to apply a committed record: stop. `reason` names
    /// which.
    WalFailed { reason: String },
    /// Persisting the epoch and leader of this step failed (`reason`):
    /// the node goes back to the epoch and leader it holds durably (the
    /// last `WalMeta` written) and fails as with `WalFailed`. Until a
    /// restart it answers peers under that epoch, never one a restart
    /// would forget: a peer that took it would step down into an epoch
    /// nobody leads.
    PersistFailed {
        reason: String,
        epoch: Epoch,
        leader: Option<NodeId>,
    },
    /// An append failed and left the log as it was, ending at `last_lsn`
    /// (a full disk: the store refused the write, or cut what it had
    /// written of it, and is not poisoned). A standby stops taking WAL and
    /// takes the primary's next batch again after a backoff; any other
    /// role fails as with `WalFailed`.
    WalAppendFailed { reason: String, last_lsn: Lsn },
    /// The engine asks this node to stop (`Replicator::shutdown`):
    /// answered with `Effect::HandOver` (a primary with a reachable standby
    /// in sync) or `Effect::Stop`.
    StopRequested,
    /// The operator paused (`true`) or resumed (`false`) automatic
    /// failover (maintenance mode, `Replica::set_failover_paused`). While
    /// paused, a standby whose primary falls silent keeps following it and
    /// does not promote itself; a planned switchover and a forced promotion
    /// still work. Resumed, a standby whose primary is still silent
    /// promotes at once if it is eligible.
    FailoverPaused { paused: bool },
    /// The arbiter answered the call of an `Effect::AskArbiter` (at most
    /// one is in flight).
    ArbiterAnswered {
        purpose: ArbiterPurpose,
        answer: ArbiterAnswer,
    },
    /// The runtime measured the WAL for retention (every tick): it keeps
    /// records from `first_lsn`, the engine's state survives a restart up
    /// to `durable_lsn` (`StateMachine::durable_lsn`), and from
    /// `bounded_from` on the WAL holds at most `wal_retention_bytes`.
    /// Answered with `Effect::TrimWal` when old records may go.
    WalMeasured {
        first_lsn: Lsn,
        durable_lsn: Lsn,
        bounded_from: Lsn,
    },
}

/// A write of an `Event::WriteRequested` whose request id a record of the
/// log already carries: its caller waits for that record, not a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retried {
    /// Its index among the event's writes.
    pub write: usize,
    /// The record written for the first attempt.
    pub lsn: Lsn,
    /// That record's epoch (an older one after a failover).
    pub epoch: Epoch,
}

/// A fenced node's reply to a fence request, sent once its outcome is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FenceOutcome {
    /// Fenced; nothing after `last_lsn` was or will be written here.
    Fenced { last_lsn: Lsn },
    /// Refused: the request's epoch is not above ours, or the switchover
    /// could not complete in time.
    Refused { reason: String },
    /// Refused for now: this node cannot take the epoch (it could not
    /// persist its own); the sender goes on as with an unreachable node.
    Unavailable { reason: String },
}

/// Why pending writes are failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WaiterFailure {
    /// The commit mode was not met within `sync_timeout`.
    SyncTimeout,
    /// The commit rule can no longer be met (a lost standby under
    /// `block`, or an arbiter that does not answer): answered as
    /// `SyncTimeout`, retries of a waiting record too, however recent,
    /// since nothing commits until a standby answers.
    Blocked,
    /// A newer `epoch` exists: this node stepped down.
    Fenced { epoch: Epoch },
    /// This node is no longer the primary (it must resync).
    NotPrimary,
    /// The WAL or the engine failed; nothing more is acknowledged until a
    /// restart.
    WalFailed { reason: String },
}

/// What the role logic asks the runtime to do, in order. The runtime
/// carries each out and decides nothing about the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Append these records to the WAL, in order; they continue it
    /// without a gap. With `fsync_inline` the runtime fsyncs them itself
    /// before it answers (a standby's `standby_sync_inline`); otherwise the
    /// flusher makes them durable and reports `Event::LocalFlushed`. A
    /// failed append is reported as `Event::WalFailed`.
    ///
    /// `retried` (a primary's `Event::WriteRequested` only, else empty)
    /// names the writes that are retries of records already in the log:
    /// they get no record of their own (so `records` may be empty) and
    /// wait for those records instead.
    Append {
        records: Vec<Record>,
        fsync_inline: bool,
        retried: Vec<Retried>,
    },
    /// The node must not run on this data (answer to `Event::Opened`):
    /// the runtime refuses to start, with `reason`.
    CannotStart { reason: String },
    /// Refuse every write of the `Event::WriteRequested` being handled.
    /// `in_log` is one per payload when some write has a request id (else
    /// empty): whether a record of our log carries that id. Such a write
    /// is a retry whose first attempt may still commit (or did, at a new
    /// primary), so its caller must not read the refusal as "nothing
    /// written".
    RefuseWrites {
        refusal: super::WriteRefusal,
        in_log: Vec<bool>,
    },
    /// Answer the request being handled: `Ok` to serve it (the runtime
    /// fills in the reply from its state), or refuse it.
    Answer(Result<(), Refused>),
    /// A promotion was asked of the primary: ask the standby to take over
    /// (it runs the planned switchover) and pass its answer on.
    ForwardPromote {
        /// The standby asked; `None`: the pair's peer.
        to: Option<NodeId>,
    },
    /// How to rewind (answer to `Event::PeerLogFetched`).
    Rejoin(RejoinPlan),
    /// Persist epoch and leader before doing anything that follows;
    /// `confirmed` is `WalMeta::confirmed` (`false` only while a fresh
    /// primary waits for its peer's confirmation).
    PersistMeta {
        epoch: Epoch,
        leader: Option<NodeId>,
        confirmed: bool,
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
    SendFence {
        epoch: Epoch,
        reason: FenceReason,
        /// The primary being replaced, as this node last knew it (`None`:
        /// unknown; the pair's peer is fenced).
        to: Option<NodeId>,
    },
    /// Send `Fence(epoch, Candidate)` to each of `to` and report each
    /// answer as `Event::SealAnswered`.
    SealStandbys { epoch: Epoch, to: Vec<NodeId> },
    /// Read the records after `after` up to `up_to` from `from` (a
    /// standby that adopted `epoch`), reporting them as they come as
    /// `Event::WalFetched`.
    FetchWal {
        from: NodeId,
        epoch: Epoch,
        after: Lsn,
        up_to: Lsn,
    },
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
    /// Ask every peer, with our header, whether it holds a newer epoch: a
    /// peer that does refuses us as stale and names its leader, which
    /// comes back as `Event::HigherEpoch`. Nothing else comes back.
    AskPeersForNewerEpoch,
    /// Stop now (answer to `Event::StopRequested`).
    Stop,
    /// Stop after handing over (answer to `Event::StopRequested`): ask the
    /// standby to take over with a planned switchover (the `Promote` RPC, as
    /// `ForwardPromote`), wait for its answer at most about
    /// `switchover_timeout`, then stop whatever it was. The switchover
    /// fences this node through `Event::FenceRequested` meanwhile. `to`
    /// is the standby chosen: reachable, in sync, the most advanced.
    HandOver { to: NodeId },
    /// Let go of WAL records before `keep_from` (whole segments, never
    /// past what is flushed).
    TrimWal { keep_from: Lsn },
    /// Call the arbiter (with this node's id and persisted epoch as the
    /// caller, bounded by `rpc_timeout`), then report
    /// `Event::ArbiterAnswered` with `purpose`.
    AskArbiter {
        purpose: ArbiterPurpose,
        call: ArbiterCall,
    },
}

/// Why the node calls the arbiter; its answer is handled accordingly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArbiterPurpose {
    /// A periodic read: it reports our epoch (a register is created only
    /// once every member has), shows a newer epoch, feeds `/health`.
    Refresh,
    /// Create the register naming us, a primary: a fresh cluster's first
    /// primary, or the register of a running pair (first use of an
    /// arbiter, or a witness that lost its file).
    Create,
    /// The register is behind our epoch (a promotion it did not see: a
    /// switchover or a forced promotion while it was unreachable).
    CatchUp,
    /// Take the next epoch with us as primary.
    Promote(Promotion),
    /// A primary restarted in a cluster takes the next epoch, staying
    /// primary, before it writes (`Primary::retake`).
    Retake,
    /// A node that stepped down from leading an epoch, which the register
    /// still names it primary of with an empty sync set (no standby may
    /// promote from it), takes the next epoch back (`Node::reclaim_call`).
    Reclaim,
    /// The standby is lost: take it out of the sync set, so that we may
    /// acknowledge without it.
    DropStandby,
    /// The standby caught up: put it back into the sync set, so that it
    /// may promote.
    AddStandby,
}

/// Which promotion asks the arbiter for the next epoch, weakest first: a
/// stronger one pending is never replaced by a weaker one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Promotion {
    /// The primary fell silent: allowed only from the sync set.
    Failover,
    /// The old primary stepped down for us with everything on our disk.
    Switchover,
    /// The operator forced it.
    Forced,
}

/// A call to the arbiter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArbiterCall {
    /// Read the register.
    Read,
    /// Swap it to `next` if it is still at `expected_version`.
    Swap {
        expected_version: u64,
        next: Register,
    },
}

/// What the arbiter answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ArbiterAnswer {
    /// The register, as read.
    Read(Register),
    /// The swap took effect; the register now holds this.
    Swapped(Register),
    /// The register had moved on; this is what it holds.
    Conflict(Register),
    /// The call brought no register: `why`, and the error in words.
    Failed { why: CallFailed, error: String },
}

/// Why an arbiter call brought no register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallFailed {
    /// Not reached, or not in time: a swap may or may not have happened.
    Unreachable,
    /// Refused: a swap refused never takes effect.
    Refused,
    /// Refused until every member has asked the arbiter something since it
    /// lost the register, which it then re-creates
    /// (`SwapRefusal::MembersNotHeard`): goes away by itself.
    MembersNotHeard,
}
