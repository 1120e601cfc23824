//! How the gRPC service hands requests to the node's actor.

use super::{Msg, PendingSnapshot};
use crate::transport::{
    AckWatch, FenceReply, FenceRequest, Header, HeartbeatReply, HeartbeatRequest, HistoryReply,
    PromoteReply, PromoteRequest, Refusal, RequestIds, StatusReply, WalBatch,
};
use tokio::sync::{mpsc, oneshot};

/// A request from the gRPC service, as the actor receives it.
pub(crate) enum Inbound {
    Heartbeat {
        req: HeartbeatRequest,
        reply: oneshot::Sender<std::result::Result<HeartbeatReply, Refusal>>,
    },
    Fence {
        req: FenceRequest,
        reply: oneshot::Sender<std::result::Result<FenceReply, Refusal>>,
    },
    Promote {
        req: PromoteRequest,
        reply: oneshot::Sender<std::result::Result<PromoteReply, Refusal>>,
    },
    Status {
        reply: oneshot::Sender<StatusReply>,
    },
    History {
        header: Header,
        reply: oneshot::Sender<std::result::Result<HistoryReply, Refusal>>,
    },
    /// A candidate reads our log (`Peer::read_wal`).
    ReadWal {
        header: Header,
        after: crate::types::Lsn,
        up_to: crate::types::Lsn,
        reply: oneshot::Sender<std::result::Result<WalBatch, Refusal>>,
    },
    Snapshot {
        header: Header,
        reply: oneshot::Sender<std::result::Result<PendingSnapshot, Refusal>>,
    },
    /// A standby restored from our snapshot asks for the request ids the
    /// snapshot covers (`Peer::fetch_request_ids`).
    RequestIds {
        header: Header,
        after: crate::types::Lsn,
        up_to: crate::types::Lsn,
        reply: oneshot::Sender<std::result::Result<RequestIds, Refusal>>,
    },
    /// A primary opened a WAL stream; the actor answers with a session id
    /// and a watch of the latest ack (its current value is the first ack).
    /// A watch, not a queue: acks are cumulative, so only the latest counts
    /// and the actor never blocks on a slow reader.
    StreamOpened {
        reply: oneshot::Sender<(u64, AckWatch)>,
    },
    Batch {
        session: u64,
        batch: WalBatch,
    },
    /// The stream sent something undecodable: end the session with `refusal`.
    BadBatch {
        session: u64,
        refusal: Refusal,
    },
    StreamClosed {
        session: u64,
    },
}

/// The node as the gRPC service reaches it: one method per request, each
/// handing the request to the actor with a oneshot for its answer. The
/// service decides nothing about roles or epochs; the node does.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: mpsc::Sender<Msg>,
}

/// The node stopped before it answered.
#[derive(Debug)]
pub(crate) struct NodeGone;

type Answer<T> = std::result::Result<T, NodeGone>;

impl Inbox {
    pub(crate) fn new(tx: mpsc::Sender<Msg>) -> Inbox {
        Inbox { tx }
    }

    async fn send(&self, inbound: Inbound) -> Answer<()> {
        self.tx
            .send(Msg::Inbound(inbound))
            .await
            .map_err(|_| NodeGone)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Inbound) -> Answer<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx)).await?;
        rx.await.map_err(|_| NodeGone)
    }

    /// A heartbeat from the primary; answered with our positions.
    pub(crate) async fn heartbeat(
        &self,
        req: HeartbeatRequest,
    ) -> Answer<std::result::Result<HeartbeatReply, Refusal>> {
        self.ask(|reply| Inbound::Heartbeat { req, reply }).await
    }

    /// A fence from the peer; answered once its outcome is known (a planned
    /// switchover waits for the standby to catch up).
    pub(crate) async fn fence(
        &self,
        req: FenceRequest,
    ) -> Answer<std::result::Result<FenceReply, Refusal>> {
        self.ask(|reply| Inbound::Fence { req, reply }).await
    }

    /// A promotion asked over the RPC; answered once it finished or failed.
    pub(crate) async fn promote(
        &self,
        req: PromoteRequest,
    ) -> Answer<std::result::Result<PromoteReply, Refusal>> {
        self.ask(|reply| Inbound::Promote { req, reply }).await
    }

    /// Our role, epoch and positions; asked by anyone of our cluster.
    pub(crate) async fn status(&self) -> Answer<StatusReply> {
        self.ask(|reply| Inbound::Status { reply }).await
    }

    /// Our epoch history, for a rejoining peer.
    pub(crate) async fn history(
        &self,
        header: Header,
    ) -> Answer<std::result::Result<HistoryReply, Refusal>> {
        self.ask(|reply| Inbound::History { header, reply }).await
    }

    /// Records of our log, for a candidate we gave our final position.
    pub(crate) async fn read_wal(
        &self,
        header: Header,
        after: crate::types::Lsn,
        up_to: crate::types::Lsn,
    ) -> Answer<std::result::Result<WalBatch, Refusal>> {
        self.ask(|reply| Inbound::ReadWal {
            header,
            after,
            up_to,
            reply,
        })
        .await
    }

    /// A snapshot of our state machine, for a peer that must resync.
    pub(crate) async fn snapshot(
        &self,
        header: Header,
    ) -> Answer<std::result::Result<PendingSnapshot, Refusal>> {
        self.ask(|reply| Inbound::Snapshot { header, reply }).await
    }

    /// The request ids of our records after `after` up to `up_to`, one
    /// reply's worth, for a standby restored from our snapshot.
    pub(crate) async fn request_ids(
        &self,
        header: Header,
        after: crate::types::Lsn,
        up_to: crate::types::Lsn,
    ) -> Answer<std::result::Result<RequestIds, Refusal>> {
        self.ask(|reply| Inbound::RequestIds {
            header,
            after,
            up_to,
            reply,
        })
        .await
    }

    /// A WAL stream opened: its session id and the watch of our acks.
    pub(crate) async fn open_stream(&self) -> Answer<(u64, AckWatch)> {
        self.ask(|reply| Inbound::StreamOpened { reply }).await
    }

    /// A decoded batch on stream `session`; its ack comes on the watch.
    pub(crate) async fn batch(&self, session: u64, batch: WalBatch) -> Answer<()> {
        self.send(Inbound::Batch { session, batch }).await
    }

    /// The stream sent something undecodable: it ends with `refusal`.
    pub(crate) async fn bad_batch(&self, session: u64, refusal: Refusal) -> Answer<()> {
        self.send(Inbound::BadBatch { session, refusal }).await
    }

    /// The primary closed stream `session`.
    pub(crate) async fn stream_closed(&self, session: u64) -> Answer<()> {
        self.send(Inbound::StreamClosed { session }).await
    }
}
