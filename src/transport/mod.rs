//! The seam between the replication logic and the network. The runtime
//! talks to its peer through `Peer` (tonic in production, mockall in unit
//! tests) and is reached through `server::ReplicationService`. Protobuf
//! types stay inside this module.

mod client;
mod convert;
mod refusal;
pub(crate) mod server;
#[cfg(feature = "tls")]
pub(crate) mod tls;

pub use client::{GrpcPeer, channel_settings};
pub use refusal::{Refusal, RefusalKind};
pub use server::{AckWatch, ReplicationService};
#[cfg(feature = "tls")]
pub(crate) use tls::incoming as tls_incoming;
#[cfg(feature = "tls")]
pub(crate) use tls::witness_incoming;
#[cfg(feature = "tls")]
pub use tls::{ClientCertificate, PeerIdentity, Tls, TlsError, TlsFiles, WITNESS_NAME};

use crate::error::TransportError;
use crate::node::{FenceReason, RoleKind, SyncState};
use crate::types::{Epoch, EpochHistory, Lsn, NodeId, Record};
use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

/// Sent with every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `Config::cluster_id` of the sender.
    pub cluster_id: String,
    /// The sender's epoch.
    pub epoch: Epoch,
    /// The sender's id.
    pub node_id: NodeId,
    /// Where the sender serves replication.
    pub node_addr: String,
    /// The leader of `epoch` as the sender knows it.
    pub leader_id: Option<NodeId>,
    /// Where the sender serves its clients.
    pub client_addr: Option<String>,
}

/// Records the primary streams, following `(prev_lsn, prev_epoch)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalBatch {
    /// The sender.
    pub header: Header,
    /// The record before `records[0]`: the standby appends only if it
    /// holds it.
    pub prev_lsn: Lsn,
    /// Its epoch.
    pub prev_epoch: Epoch,
    /// Consecutive records (may be empty: a position update).
    pub records: Vec<Record>,
    /// The primary's commit position.
    pub commit_lsn: Lsn,
    /// What the primary tells the standby about sync.
    pub sync: SyncState,
    /// The primary's last LSN.
    pub last_lsn: Lsn,
    /// The primary's oldest retained LSN.
    pub first_lsn: Lsn,
    /// The sender is a primary of a fresh data directory that no peer has
    /// confirmed yet, so it never took a write: a standby whose log holds
    /// records refuses it (the sender's directory was wiped).
    pub unconfirmed: bool,
}

/// The standby's positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalAck {
    /// The standby's epoch.
    pub epoch: Epoch,
    /// Last record written (not fsynced).
    pub written: Lsn,
    /// Last record fsynced.
    pub flushed: Lsn,
    /// Last record applied by its state machine.
    pub applied: Lsn,
    /// The epoch of the record at `flushed`.
    pub flushed_epoch: Epoch,
    /// The oldest record its WAL keeps (`written + 1` when it holds none);
    /// `Lsn::ZERO` when not known (an older node, a heartbeat's answer).
    pub first: Lsn,
}

/// The primary's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// The sender.
    pub header: Header,
    /// The primary's last LSN.
    pub last_lsn: Lsn,
    /// The primary's commit position.
    pub commit_lsn: Lsn,
    /// What the primary tells the standby about sync.
    pub sync: SyncState,
    /// Whether the sender is a confirmed primary of its epoch (its peer
    /// confirmed it follows it): a primary of a fresh data directory that
    /// is not confirmed yet and holds nothing steps down for it.
    pub confirmed: bool,
    /// The sender's `Config::cluster_rule_text` (empty for a pair).
    pub commit_rule: String,
}

/// The standby's answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// Its positions.
    pub ack: WalAck,
    /// Its role.
    pub role: RoleKind,
}

/// Asks the receiver to step down to `header.epoch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceRequest {
    /// `header.epoch` is the epoch the receiver must adopt.
    pub header: Header,
    /// Why.
    pub reason: FenceReason,
    /// With `FenceReason::Candidate`: the candidate's log end, which ranks
    /// two candidates of one round (`None` from a sender that predates it).
    pub candidate_end: Option<crate::node::LogEnd>,
}

/// The fenced node's log position, once it adopted the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceReply {
    /// Its epoch now.
    pub epoch: Epoch,
    /// Its last LSN.
    pub last_lsn: Lsn,
    /// The epoch of that record.
    pub last_epoch: Epoch,
}

/// Asks the receiver (a standby) to promote itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromoteRequest {
    /// The sender.
    pub header: Header,
    /// Promote even if acknowledged writes may be missing.
    pub force: bool,
}

/// The outcome of a promotion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromoteReply {
    /// The new epoch.
    pub epoch: Epoch,
    /// What happened, in words.
    pub message: String,
}

/// The receiver's log history, for a rejoin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryReply {
    /// Its epoch.
    pub epoch: Epoch,
    /// Where each epoch began in its log.
    pub history: EpochHistory,
    /// Its last LSN.
    pub last_lsn: Lsn,
    /// Its oldest retained LSN.
    pub first_lsn: Lsn,
    /// Its role.
    pub role: RoleKind,
    /// It is a primary no peer has confirmed yet (its persisted meta).
    pub unconfirmed: bool,
    /// A primary that restarted in its epoch, answering a node it has not
    /// streamed to since: where its log ended at the restart. Records the
    /// asker holds after it may be ones the primary lost (sent, not yet
    /// durable) and wrote otherwise since, under the same `(lsn, epoch)`.
    pub restart_lsn: Option<Lsn>,
}

/// The receiver's state, for a switchover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReply {
    /// Its id.
    pub node_id: NodeId,
    /// Its role.
    pub role: RoleKind,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its last LSN.
    pub last_lsn: Lsn,
    /// Its commit position.
    pub commit_lsn: Lsn,
    /// Its applied position.
    pub applied_lsn: Lsn,
    /// Its durable position.
    pub flushed_lsn: Lsn,
    /// The leader it knows.
    pub leader_id: Option<NodeId>,
    /// That leader's replication address.
    pub leader_addr: Option<String>,
    /// Whether its WAL stream is open.
    pub peer_connected: bool,
    /// How far its standby is behind.
    pub lag_records: u64,
}

/// One reply's worth of the request ids a primary recognises
/// (`Peer::fetch_request_ids`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestIds {
    /// In LSN order, within the range asked for.
    pub ids: Vec<crate::types::RequestIdAt>,
    /// More follow the last one listed: ask again from its LSN.
    pub more: bool,
}

/// A standby's request for the primary's snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The sender.
    pub header: Header,
    /// To resume a cut transfer: the id an earlier `SnapshotInfo`
    /// announced, with `offset` the bytes of it already received; 0 and 0
    /// ask for a new transfer.
    pub snapshot_id: u64,
    /// Bytes of snapshot `snapshot_id` already received.
    pub offset: u64,
    /// The sender takes the CRC32C after the data (`SnapshotPart::End`),
    /// so the primary can send before it has read the whole snapshot for
    /// it. `false` (an older standby) asks for it in `SnapshotInfo`.
    pub crc_after_data: bool,
}

/// What a snapshot transfer announces before its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Names the snapshot for a resume; unique per build on the primary.
    pub id: u64,
    /// The last record the snapshot covers.
    pub lsn: Lsn,
    /// That record's epoch.
    pub epoch: Epoch,
    /// The snapshot's length in bytes.
    pub total_bytes: u64,
    /// CRC32C of the whole snapshot, or `None` when it comes after the
    /// data (`SnapshotPart::End`; only to a request with
    /// `crc_after_data`).
    pub crc: Option<u32>,
    /// Where this transfer's data starts: the request's offset when it
    /// resumes this snapshot, 0 when it starts over.
    pub offset: u64,
}

/// One part of a snapshot transfer: one `Info`, then `Data` in order,
/// then `End` if the `Info` had no CRC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotPart {
    /// The snapshot being sent; comes first, once.
    Info(SnapshotInfo),
    /// `data` is the snapshot's bytes from `offset`.
    Data {
        /// Where `data` starts in the snapshot.
        offset: u64,
        /// At most `Config::snapshot_chunk_bytes` bytes.
        data: bytes::Bytes,
    },
    /// After the last byte, when `Info` announced no CRC: the CRC32C of
    /// the whole snapshot.
    End {
        /// CRC32C of all `SnapshotInfo::total_bytes` bytes.
        crc: u32,
    },
}

/// A snapshot transfer as the standby receives it. It ends after the last
/// chunk; an error (the idle timeout included) ends it early, and a new
/// request with the bytes received resumes it.
pub type SnapshotStream = BoxStream<'static, Result<SnapshotPart, TransportError>>;

/// The standby's acks on an open WAL stream.
pub type AckStream = BoxStream<'static, Result<WalAck, TransportError>>;

/// The peer, as the replication logic calls it: `GrpcPeer` in production,
/// a wrapper or a fake in tests (`testing::Peer`, with the `testing`
/// feature). The node's own service (`ReplicationService`) is the other
/// end, so a replacement must reach it.
///
/// Contract: every call returns within a bounded time (an implementation
/// enforces its own deadlines; the node's failure detection relies on it)
/// and classifies failures as `TransportError` says. Calls come from
/// several tasks at once (heartbeats while a stream is open).
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Peer: Send + Sync + 'static {
    /// The primary's heartbeat to its standby.
    async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatReply, TransportError>;

    /// Makes the peer adopt a higher epoch and stop accepting writes.
    async fn fence(&self, req: FenceRequest) -> Result<FenceReply, TransportError>;

    /// Asks the peer (a standby) to promote itself.
    async fn promote(&self, req: PromoteRequest) -> Result<PromoteReply, TransportError>;

    /// The peer's state.
    async fn status(&self, header: Header) -> Result<StatusReply, TransportError>;

    /// The peer's log history.
    async fn history(&self, header: Header) -> Result<HistoryReply, TransportError>;

    /// The records after `after` up to `up_to` from the peer's log, as one
    /// batch of at most the peer's batch size (ask again for the rest):
    /// a candidate fetches what it lacks from a standby that gave it its
    /// final position. `header.epoch` is the epoch that standby adopted.
    async fn read_wal(
        &self,
        header: Header,
        after: Lsn,
        up_to: Lsn,
    ) -> Result<WalBatch, TransportError>;

    /// Opens the WAL stream: `batches` go out, acks come back. The first
    /// ack arrives before any batch and gives the standby's positions.
    async fn open_wal_stream(
        &self,
        batches: mpsc::Receiver<WalBatch>,
    ) -> Result<AckStream, TransportError>;

    /// A snapshot of the peer's (the primary's) state machine, streamed.
    /// The call returns once the primary accepts the request (within the
    /// RPC deadline, however long its engine takes to build); the stream
    /// must then yield something at least every `Config::
    /// snapshot_timeout` or end with an error.
    async fn fetch_snapshot(&self, req: SnapshotRequest) -> Result<SnapshotStream, TransportError>;

    /// The request ids of the records after `after` up to `up_to` that the
    /// peer (the primary whose snapshot at `up_to` this node restored)
    /// recognises, one reply's worth: ask again from the last LSN while
    /// `more`. `Ok(None)`: the peer serves none (an older walrep).
    async fn fetch_request_ids(
        &self,
        header: Header,
        after: Lsn,
        up_to: Lsn,
    ) -> Result<Option<RequestIds>, TransportError>;
}
