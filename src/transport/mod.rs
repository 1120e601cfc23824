//! The seam between the replication logic and the network. The runtime
//! talks to its peer through `Peer` (tonic in production, mockall in unit
//! tests) and is reached through `server::ReplicationService`. Protobuf
//! types stay inside this module.

mod client;
mod convert;
mod server;

pub use client::{GrpcPeer, channel_settings};
pub use server::{AckWatch, Refusal, RefusalKind, ReplicationService};

use crate::error::TransportError;
use crate::node::{FenceReason, RoleKind, SyncState};
use crate::types::{Epoch, EpochHistory, Lsn, NodeId, Record};
use async_trait::async_trait;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

/// Sent with every request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: String,
    pub epoch: Epoch,
    pub node_id: NodeId,
    pub node_addr: String,
    pub leader_id: Option<NodeId>,
    pub client_addr: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalBatch {
    pub header: Header,
    pub prev_lsn: Lsn,
    pub prev_epoch: Epoch,
    pub records: Vec<Record>,
    pub commit_lsn: Lsn,
    pub sync: SyncState,
    pub last_lsn: Lsn,
    pub first_lsn: Lsn,
}

/// The standby's positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalAck {
    pub epoch: Epoch,
    pub written: Lsn,
    pub flushed: Lsn,
    pub applied: Lsn,
    pub flushed_epoch: Epoch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub header: Header,
    pub last_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub sync: SyncState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub ack: WalAck,
    pub role: RoleKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceRequest {
    /// `header.epoch` is the epoch the receiver must adopt.
    pub header: Header,
    pub reason: FenceReason,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FenceReply {
    pub epoch: Epoch,
    pub last_lsn: Lsn,
    pub last_epoch: Epoch,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromoteRequest {
    pub header: Header,
    pub force: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromoteReply {
    pub epoch: Epoch,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryReply {
    pub epoch: Epoch,
    pub history: EpochHistory,
    pub last_lsn: Lsn,
    pub first_lsn: Lsn,
    pub role: RoleKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReply {
    pub node_id: NodeId,
    pub role: RoleKind,
    pub epoch: Epoch,
    pub last_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub applied_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub leader_id: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub peer_connected: bool,
    pub lag_records: u64,
}

/// A snapshot received from the primary, checked end to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTransfer {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub data: bytes::Bytes,
}

pub type AckStream = BoxStream<'static, Result<WalAck, TransportError>>;

/// The peer, as the replication logic calls it. Implementations enforce
/// their own deadlines: every call returns within a bounded time.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Peer: Send + Sync + 'static {
    async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatReply, TransportError>;

    async fn fence(&self, req: FenceRequest) -> Result<FenceReply, TransportError>;

    async fn promote(&self, req: PromoteRequest) -> Result<PromoteReply, TransportError>;

    async fn status(&self, header: Header) -> Result<StatusReply, TransportError>;

    async fn history(&self, header: Header) -> Result<HistoryReply, TransportError>;

    /// Opens the WAL stream: `batches` go out, acks come back. The first
    /// ack arrives before any batch and gives the standby's positions.
    async fn open_wal_stream(
        &self,
        batches: mpsc::Receiver<WalBatch>,
    ) -> Result<AckStream, TransportError>;

    async fn fetch_snapshot(&self, header: Header) -> Result<SnapshotTransfer, TransportError>;
}
