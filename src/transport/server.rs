//! The tonic service every node serves. Handlers check what needs no state
//! (cluster id, sender, well-formed messages), then hand the request to the
//! runtime's `Inbox` and wait for its answer; they never touch role state.

use super::convert::{self, Malformed};
use super::*;
use crate::pb;
use crate::pb::replication_server::{Replication, ReplicationServer};
use crate::runtime::{Inbox, Metrics, NodeGone, PendingSnapshot};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

pub type AckWatch = tokio::sync::watch::Receiver<Result<WalAck, Refusal>>;

/// The `Replication` gRPC service of one node: what its peer calls. Serve
/// it with `serve`, or add `into_server()` to a tonic server of the
/// engine's own. Until it is served, the peer cannot reach this node (a
/// standby then never receives the WAL, a primary is never fenced).
#[derive(Clone)]
pub struct ReplicationService {
    node: Inbox,
    cluster_id: String,
    /// Every other data node; requests from any other name are refused.
    peer_ids: Vec<NodeId>,
    max_record_bytes: usize,
    max_message_bytes: usize,
    snapshot_chunk_bytes: usize,
    snapshot_keepalive: std::time::Duration,
    metrics: Arc<Metrics>,
    /// Served over TLS: every request must come from a connection that
    /// proved it is the peer (`PeerIdentity` in its extensions).
    require_identity: bool,
    /// Snapshot transfers running; more are refused (each holds a file
    /// open and buffers in flight).
    snapshot_transfers: Arc<tokio::sync::Semaphore>,
    /// The refusals last logged at warn: a peer that retries the same
    /// refused heartbeat five times a second is logged at warn once a
    /// minute, at debug in between, even while another peer's refusals
    /// alternate with its own.
    last_warned: Arc<LastWarned>,
}

/// How often the same refusal, repeated, is logged at warn.
const REPEATED_REFUSAL_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How many distinct refusals `LastWarned` remembers: more than the
/// peers and reasons of a misconfigured cluster, few enough that a
/// hostile sender varying its messages costs no memory to speak of (it
/// only gets its refusals logged at warn).
const REFUSALS_REMEMBERED: usize = 32;

/// The refusals recently logged at warn, each with when, oldest first.
#[derive(Default)]
struct LastWarned(
    std::sync::Mutex<std::collections::VecDeque<(RefusalKind, String, std::time::Instant)>>,
);

impl LastWarned {
    /// Whether a refusal of `kind` with `message` at `now` is worth a
    /// warning: not among those warned about within the last
    /// `REPEATED_REFUSAL_WARN_EVERY`. Records it when it is.
    fn is_news(&self, kind: RefusalKind, message: &str, now: std::time::Instant) -> bool {
        let mut warned = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let seen = warned
            .iter()
            .position(|(k, m, _)| *k == kind && m == message);
        if let Some(i) = seen {
            if now.duration_since(warned[i].2) < REPEATED_REFUSAL_WARN_EVERY {
                return false;
            }
            warned.remove(i);
        }
        warned.push_back((kind, message.to_owned(), now));
        if warned.len() > REFUSALS_REMEMBERED {
            warned.pop_front();
        }
        true
    }
}

/// Most snapshot transfers served at once: the one standby's, plus one
/// left over from a cut it has not noticed yet.
const MAX_SNAPSHOT_TRANSFERS: usize = 2;

impl ReplicationService {
    /// The node's inbox, for runtime tests that hand it requests the way
    /// this service does, in domain types.
    #[cfg(test)]
    pub(crate) fn inbox(&self) -> &Inbox {
        &self.node
    }

    pub(crate) fn new(
        node: Inbox,
        cfg: &crate::Config,
        metrics: Arc<Metrics>,
    ) -> ReplicationService {
        ReplicationService {
            node,
            cluster_id: cfg.cluster_id.clone(),
            peer_ids: cfg.peer_ids(),
            max_record_bytes: cfg.max_record_bytes,
            max_message_bytes: cfg.max_message_bytes,
            snapshot_chunk_bytes: cfg.snapshot_chunk_bytes,
            // Several keep-alives per idle timeout, so one late does not
            // end a transfer while the engine builds.
            snapshot_keepalive: cfg.snapshot_timeout / 4,
            metrics,
            require_identity: false,
            snapshot_transfers: Arc::new(tokio::sync::Semaphore::new(MAX_SNAPSHOT_TRANSFERS)),
            last_warned: Arc::default(),
        }
    }

    /// This service, refusing every request whose extensions hold no
    /// `PeerIdentity` (the node its connection's certificate proved), and
    /// every request claiming another sender than that identity.
    /// `serve_tls` puts the identity there after its mutual-TLS handshake.
    /// A TLS server of your own must do the same (a tower layer inserting
    /// the `PeerIdentity` your handshake proved); without it every request
    /// is refused, never trusted on the node id it claims. On by default
    /// for the service of a `ReplicaBuilder` given `tls`.
    #[cfg(feature = "tls")]
    pub fn requiring_peer_identity(mut self) -> ReplicationService {
        self.require_identity = true;
        self
    }

    /// Counts a connection refused before it made a request.
    #[cfg(feature = "tls")]
    pub(crate) fn refusal_counter(&self) -> impl Fn() + Send + Sync + 'static {
        let metrics = self.metrics.clone();
        move || metrics.rejected(RefusalKind::Unauthenticated)
    }

    /// The tonic service, with `Config::max_message_bytes` as its message
    /// limit, for an engine that serves replication on its own
    /// `tonic::transport::Server` (beside its own services; over TLS only
    /// with `requiring_peer_identity`, else it trusts the sender each
    /// request names):
    /// `Server::builder().add_service(service.into_server())`. `serve` does
    /// this with the HTTP/2 settings walrep is tuned for (no Nagle delay,
    /// keepalive so a partition is noticed, large flow-control windows);
    /// a server of your own should set the same.
    pub fn into_server(self) -> ReplicationServer<ReplicationService> {
        let limit = self.max_message_bytes;
        ReplicationServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    fn refuse(&self, refusal: Refusal) -> Status {
        self.metrics.rejected(refusal.kind);
        let now = std::time::Instant::now();
        if self
            .last_warned
            .is_news(refusal.kind, &refusal.message, now)
        {
            tracing::warn!(reason = refusal.kind.as_str(), message = %refusal.message, "request refused (the same refusal again is counted, and logged at debug only, for a minute)");
        } else {
            tracing::debug!(reason = refusal.kind.as_str(), message = %refusal.message, "request refused");
        }
        refusal.into_status()
    }

    fn decode_batch(
        &self,
        batch: pb::WalBatch,
        proven: Option<&NodeId>,
    ) -> Result<WalBatch, Refusal> {
        let header = convert::header_from_pb(batch.header.clone())
            .map_err(|m| Refusal::new(RefusalKind::Malformed, m.to_string(), Epoch::ZERO))?;
        if let Err(status) = self.check_sender(&header, true, proven) {
            return Err(Refusal::new(
                RefusalKind::UnknownPeer,
                status.message(),
                Epoch::ZERO,
            ));
        }
        convert::batch_from_pb(batch, self.max_record_bytes).map_err(|m| {
            self.metrics.rejected(RefusalKind::Malformed);
            tracing::warn!(error = %m, "malformed WAL batch refused");
            Refusal::new(RefusalKind::Malformed, m.to_string(), Epoch::ZERO)
        })
    }

    fn malformed(&self, m: Malformed) -> Status {
        self.refuse(Refusal::new(
            RefusalKind::Malformed,
            m.to_string(),
            Epoch::ZERO,
        ))
    }

    /// The records after `after` up to `up_to` a request of `what` names:
    /// a range of at least one record, within the LSNs there can be.
    fn lsn_range(&self, what: &'static str, after: u64, up_to: u64) -> Result<(Lsn, Lsn), Status> {
        if up_to > Lsn::MAX.0 || after >= up_to {
            return Err(self.malformed(convert::malformed(
                what,
                format!(
                    "after_lsn {after} must be below up_to_lsn {up_to}, at most {}",
                    Lsn::MAX
                ),
            )));
        }
        Ok((Lsn(after), Lsn(up_to)))
    }

    /// The identity the request's connection proved (`serve_tls`), `None`
    /// when the service is served without TLS. Served over TLS, a request
    /// without one is refused (it did not come through `serve_tls`'s
    /// handshake).
    fn proven<T>(&self, request: &Request<T>) -> Result<Option<NodeId>, Status> {
        if !self.require_identity {
            return Ok(None);
        }
        #[cfg(feature = "tls")]
        if let Some(identity) = request.extensions().get::<super::PeerIdentity>() {
            return Ok(Some(identity.node_id.clone()));
        }
        let _ = request;
        Err(self.refuse(Refusal::new(
            RefusalKind::Unauthenticated,
            "this node requires mutual TLS: connect with a certificate of the cluster's CA naming this node's peer",
            Epoch::ZERO,
        )))
    }

    /// G6: a request from another cluster or from a node that is not our
    /// peer is refused before anything else looks at it; over TLS, also
    /// one whose sender is not the identity its connection proved.
    fn check_sender(
        &self,
        header: &Header,
        peer_only: bool,
        proven: Option<&NodeId>,
    ) -> Result<(), Status> {
        if let Some(proven) = proven.filter(|p| **p != header.node_id) {
            return Err(self.refuse(Refusal::new(
                RefusalKind::Unauthenticated,
                format!(
                    "request says it is from {:?} but its connection proved {:?}",
                    header.node_id.0, proven.0
                ),
                Epoch::ZERO,
            )));
        }
        if header.cluster_id != self.cluster_id {
            return Err(self.refuse(Refusal::new(
                RefusalKind::WrongCluster,
                format!(
                    "cluster id {:?} does not match this node's {:?}; check --cluster-id on both nodes",
                    header.cluster_id, self.cluster_id
                ),
                Epoch::ZERO,
            )));
        }
        if peer_only && !self.peer_ids.contains(&header.node_id) {
            let peers: Vec<&str> = self.peer_ids.iter().map(|p| p.0.as_str()).collect();
            let (noun, names) = if peers.len() == 1 {
                ("this node's peer", format!("{:?}", peers[0]))
            } else {
                ("one of this node's peers", format!("{peers:?}"))
            };
            return Err(self.refuse(Refusal::new(
                RefusalKind::UnknownPeer,
                format!(
                    "node {:?} is not {noun} ({names}); check --peer on both nodes",
                    header.node_id.0
                ),
                Epoch::ZERO,
            )));
        }
        Ok(())
    }

    fn answer<T>(&self, r: Result<T, Refusal>) -> Result<Response<T>, Status> {
        r.map(Response::new).map_err(|refusal| self.refuse(refusal))
    }
}

/// The longest rule text a heartbeat may carry: far above any real rule
/// (a few dozen node names), so a hostile sender cannot make every
/// heartbeat allocate much.
const MAX_RULE_TEXT: usize = 4096;

fn bounded_rule_text(text: String) -> Result<String, convert::Malformed> {
    if text.len() > MAX_RULE_TEXT {
        return Err(convert::malformed(
            "heartbeat",
            format!(
                "commit_rule is {} bytes, above the bound of {MAX_RULE_TEXT}",
                text.len()
            ),
        ));
    }
    Ok(text)
}

fn gone(_: NodeGone) -> Status {
    Status::unavailable("node is shutting down")
}

type AckResponseStream = Pin<Box<dyn futures::Stream<Item = Result<pb::WalAck, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type StreamWalStream = AckResponseStream;
    type FetchSnapshotStream = ChunkStream;

    async fn stream_wal(
        &self,
        request: Request<Streaming<pb::WalBatch>>,
    ) -> Result<Response<Self::StreamWalStream>, Status> {
        let proven = self.proven(&request)?;
        let mut incoming = request.into_inner();
        let (session, acks) = self.node.open_stream().await.map_err(gone)?;
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(Ok(batch)) = incoming.next().await {
                let sent = match service.decode_batch(batch, proven.as_ref()) {
                    Ok(batch) => service.node.batch(session, batch).await,
                    Err(refusal) => {
                        let _ = service.node.bad_batch(session, refusal).await;
                        break;
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
            let _ = service.node.stream_closed(session).await;
        });
        // Yields the current ack, then every change, and ends after a refusal
        // or when the actor drops the session.
        let out =
            futures::stream::unfold((acks, true, false), |(mut rx, first, done)| async move {
                if done || (!first && rx.changed().await.is_err()) {
                    return None;
                }
                let item = rx.borrow_and_update().clone();
                let end = item.is_err();
                let item = item
                    .map(|a| convert::ack_to_pb(&a))
                    .map_err(Refusal::into_status);
                Some((item, (rx, false, end)))
            });
        Ok(Response::new(Box::pin(out)))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        let proven = self.proven(&request)?;
        let r = request.into_inner();
        let header = convert::header_from_pb(r.header).map_err(|m| self.malformed(m))?;
        self.check_sender(&header, true, proven.as_ref())?;
        let req = HeartbeatRequest {
            header,
            last_lsn: Lsn(r.last_lsn),
            commit_lsn: Lsn(r.commit_lsn),
            sync: convert::sync_from_pb(r.sync_state).map_err(|m| self.malformed(m))?,
            confirmed: r.confirmed,
            commit_rule: bounded_rule_text(r.commit_rule).map_err(|m| self.malformed(m))?,
        };
        let reply = self.node.heartbeat(req).await.map_err(gone)?;
        self.answer(reply.map(|h| pb::HeartbeatReply {
            epoch: h.ack.epoch.0,
            written_lsn: h.ack.written.0,
            flushed_lsn: h.ack.flushed.0,
            applied_lsn: h.ack.applied.0,
            flushed_epoch: h.ack.flushed_epoch.0,
            role: convert::role_to_pb(h.role),
        }))
    }

    async fn fence(
        &self,
        request: Request<pb::FenceRequest>,
    ) -> Result<Response<pb::FenceReply>, Status> {
        let proven = self.proven(&request)?;
        let r = request.into_inner();
        let header = convert::header_from_pb(r.header).map_err(|m| self.malformed(m))?;
        self.check_sender(&header, true, proven.as_ref())?;
        let req = FenceRequest {
            header,
            reason: convert::reason_from_pb(r.reason).map_err(|m| self.malformed(m))?,
            candidate_end: r.candidate_end.map(|e| crate::node::LogEnd {
                epoch: Epoch(e.epoch),
                lsn: Lsn(e.lsn),
            }),
        };
        let reply = self.node.fence(req).await.map_err(gone)?;
        self.answer(reply.map(|f| pb::FenceReply {
            epoch: f.epoch.0,
            last_lsn: f.last_lsn.0,
            last_epoch: f.last_epoch.0,
        }))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteReply>, Status> {
        let proven = self.proven(&request)?;
        let r = request.into_inner();
        // The operator's CLI is not a node: any sender of our cluster may ask.
        let header = match r.header {
            Some(h) => {
                let h = convert::header_from_pb(Some(h)).map_err(|m| self.malformed(m))?;
                self.check_sender(&h, false, proven.as_ref())?;
                h
            }
            None => Header::default(),
        };
        let req = PromoteRequest {
            header,
            force: r.force,
        };
        let reply = self.node.promote(req).await.map_err(gone)?;
        self.answer(reply.map(|p| pb::PromoteReply {
            epoch: p.epoch.0,
            message: p.message,
        }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let proven = self.proven(&request)?;
        if let Some(h) = request.into_inner().header {
            let h = convert::header_from_pb(Some(h)).map_err(|m| self.malformed(m))?;
            self.check_sender(&h, false, proven.as_ref())?;
        }
        let s = self.node.status().await.map_err(gone)?;
        Ok(Response::new(pb::StatusReply {
            node_id: s.node_id.0,
            role: convert::role_to_pb(s.role),
            epoch: s.epoch.0,
            last_lsn: s.last_lsn.0,
            commit_lsn: s.commit_lsn.0,
            applied_lsn: s.applied_lsn.0,
            flushed_lsn: s.flushed_lsn.0,
            leader_id: s.leader_id.map(|l| l.0).unwrap_or_default(),
            leader_addr: s.leader_addr.unwrap_or_default(),
            peer_connected: s.peer_connected,
            lag_records: s.lag_records,
        }))
    }

    async fn get_history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryReply>, Status> {
        let proven = self.proven(&request)?;
        let header =
            convert::header_from_pb(request.into_inner().header).map_err(|m| self.malformed(m))?;
        self.check_sender(&header, true, proven.as_ref())?;
        let reply = self.node.history(header).await.map_err(gone)?;
        self.answer(reply.map(|h| pb::HistoryReply {
            epoch: h.epoch.0,
            history: convert::history_to_pb(&h.history),
            last_lsn: h.last_lsn.0,
            first_lsn: h.first_lsn.0,
            role: convert::role_to_pb(h.role),
            unconfirmed: h.unconfirmed,
            restart_lsn: h.restart_lsn.map(|l| l.0),
        }))
    }

    async fn read_wal(
        &self,
        request: Request<pb::ReadWalRequest>,
    ) -> Result<Response<pb::WalBatch>, Status> {
        let proven = self.proven(&request)?;
        let r = request.into_inner();
        let header = convert::header_from_pb(r.header).map_err(|m| self.malformed(m))?;
        self.check_sender(&header, true, proven.as_ref())?;
        let (after, up_to) = self.lsn_range("read_wal", r.after_lsn, r.up_to_lsn)?;
        let reply = self
            .node
            .read_wal(header, after, up_to)
            .await
            .map_err(gone)?;
        self.answer(reply.map(|b| convert::batch_to_pb(&b)))
    }

    async fn fetch_request_ids(
        &self,
        request: Request<pb::RequestIdsRequest>,
    ) -> Result<Response<pb::RequestIdsReply>, Status> {
        let proven = self.proven(&request)?;
        let r = request.into_inner();
        let header = convert::header_from_pb(r.header).map_err(|m| self.malformed(m))?;
        self.check_sender(&header, true, proven.as_ref())?;
        let (after, up_to) = self.lsn_range("fetch_request_ids", r.after_lsn, r.up_to_lsn)?;
        let reply = self
            .node
            .request_ids(header, after, up_to)
            .await
            .map_err(gone)?;
        self.answer(reply.map(|ids| convert::request_ids_to_pb(&ids)))
    }

    async fn fetch_snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::FetchSnapshotStream>, Status> {
        let proven = self.proven(&request)?;
        let req = request.into_inner();
        let header = convert::header_from_pb(req.header).map_err(|m| self.malformed(m))?;
        self.check_sender(&header, true, proven.as_ref())?;
        let Ok(slot) = self.snapshot_transfers.clone().try_acquire_owned() else {
            return Err(self.refuse(Refusal::new(
                RefusalKind::Unavailable,
                format!("{MAX_SNAPSHOT_TRANSFERS} snapshot transfers are already running; retry when one ends"),
                Epoch::ZERO,
            )));
        };
        let pending = self.node.snapshot(header).await.map_err(gone)?;
        let pending = pending.map_err(|r| self.refuse(r))?;
        let stream = snapshot_stream(
            pending,
            (req.snapshot_id, req.offset),
            req.crc_after_data,
            self.snapshot_keepalive,
            self.snapshot_chunk_bytes,
        );
        // The slot is held until the transfer's stream is dropped.
        Ok(Response::new(Box::pin(stream.map(move |chunk| {
            let _held = &slot;
            chunk
        }))))
    }
}

/// Chunks read ahead of the one being sent: the next chunk is read from
/// the file while the last one is on the wire.
const READ_AHEAD: usize = 2;

/// The transfer of one snapshot: keep-alives every `keepalive` while the
/// build runs, the snapshot's description, then its bytes read from the
/// file one chunk at a time, a few chunks ahead of what the receiver has
/// taken (`READ_AHEAD`; gRPC flow control bounds what is in flight, so
/// memory does not grow with the snapshot), then, when the description
/// had no CRC, the CRC32C taken over the bytes as they were read.
/// `resume` is the request's (snapshot id, offset): the data starts at the
/// offset only if that snapshot is the one being served. The CRC comes
/// after the data only to a receiver that asked for it
/// (`crc_after_data`), only when the build does not know it yet, and only
/// from offset 0 (a resume needs the CRC of bytes it does not send); else
/// it is taken first, once per build.
pub(crate) fn snapshot_stream(
    pending: PendingSnapshot,
    resume: (u64, u64),
    crc_after_data: bool,
    keepalive: std::time::Duration,
    chunk_bytes: usize,
) -> ChunkStream {
    use pb::snapshot_chunk::Part;
    let part = |p: Part| Ok(pb::SnapshotChunk { part: Some(p) });
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        // Every send fails once the receiver is gone (the transfer was
        // cut): then this task ends.
        let b = loop {
            tokio::select! {
                built = pending.clone() => match built {
                    Ok(b) => break b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(format!(
                            "the state machine could not take a snapshot: {e}"
                        )))).await;
                        return;
                    }
                },
                _ = tokio::time::sleep(keepalive) => {
                    if tx.send(part(Part::Building(true))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        };
        let offset = if b.id == resume.0 {
            resume.1.min(b.len)
        } else {
            0
        };
        let trailing = crc_after_data && offset == 0 && b.crc().is_none();
        let crc = if trailing {
            None
        } else {
            // Keep-alives while the file is read for it: it may be large.
            let known = b.crc_now();
            tokio::pin!(known);
            loop {
                tokio::select! {
                    crc = &mut known => match crc {
                        Ok(crc) => break Some(crc),
                        Err(e) => {
                            let _ = tx.send(Err(Status::unavailable(format!(
                                "reading the snapshot for its CRC: {e}"
                            )))).await;
                            return;
                        }
                    },
                    _ = tokio::time::sleep(keepalive) => {
                        if tx.send(part(Part::Building(true))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let info = pb::SnapshotInfo {
            snapshot_id: b.id,
            last_lsn: b.lsn.0,
            last_epoch: b.epoch.0,
            total_bytes: b.len,
            crc: crc.unwrap_or(0),
            offset,
            crc_follows: crc.is_none(),
        };
        if tx.send(part(Part::Info(info))).await.is_err() {
            return;
        }
        let (mut at, mut running) = (offset, 0u32);
        let mut reader = b.reader(offset);
        while at < b.len {
            let data = match reader.next_chunk(chunk_bytes).await {
                Ok(data) => data,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "reading the snapshot: {e}"
                        ))))
                        .await;
                    return;
                }
            };
            if trailing {
                running = crc32c::crc32c_append(running, &data);
            }
            let next = at + data.len() as u64;
            let msg = part(Part::Data(pb::SnapshotData { offset: at, data }));
            if tx.send(msg).await.is_err() {
                return;
            }
            at = next;
        }
        if trailing {
            b.note_crc(running);
            let _ = tx
                .send(part(Part::End(pb::SnapshotEnd { crc: running })))
                .await;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    //! The service's own checks, before anything reaches the node: who may
    //! call it at all.

    use crate::config::InitialRole;
    use crate::pb;
    use crate::pb::replication_server::Replication;
    use crate::replicator::Replicator;
    use crate::runtime::tests::{cfg, header, standby_wal, start, unreachable_peer, wal_at_epoch};
    use crate::types::Lsn;

    fn pb_header(epoch: u64, from: &str) -> pb::Header {
        super::super::convert::header_to_pb(&header(epoch, from))
    }

    #[test]
    fn a_repeated_refusal_is_news_once_a_minute_and_another_one_at_once() {
        use super::{LastWarned, REPEATED_REFUSAL_WARN_EVERY};
        use crate::transport::RefusalKind;
        let warned = LastWarned::default();
        let t0 = std::time::Instant::now();
        let second = std::time::Duration::from_secs(1);
        assert!(warned.is_news(RefusalKind::NotStandby, "a", t0));
        assert!(!warned.is_news(RefusalKind::NotStandby, "a", t0 + second));
        // Another message, or another kind, is news at once.
        assert!(warned.is_news(RefusalKind::NotStandby, "b", t0 + 2 * second));
        assert!(warned.is_news(RefusalKind::StaleEpoch, "b", t0 + 3 * second));
        assert!(!warned.is_news(RefusalKind::StaleEpoch, "b", t0 + 4 * second));
        // The same one again after the interval is news again.
        let later = t0 + 3 * second + REPEATED_REFUSAL_WARN_EVERY;
        assert!(warned.is_news(RefusalKind::StaleEpoch, "b", later));
    }

    /// Two peers refused over and over, their refusals alternating: each
    /// is logged at warn once, not every time the other came between.
    #[test]
    fn alternating_refusals_are_each_news_once_a_minute() {
        use super::{LastWarned, REFUSALS_REMEMBERED};
        use crate::transport::RefusalKind;
        let warned = LastWarned::default();
        let t0 = std::time::Instant::now();
        let mut news = 0;
        for i in 0..10u32 {
            let at = t0 + std::time::Duration::from_millis(200 * u64::from(i));
            for peer in ["node \"x\" is not this node's peer", "cluster id \"y\""] {
                news += usize::from(warned.is_news(RefusalKind::UnknownPeer, peer, at));
            }
        }
        assert_eq!(news, 2, "each of the two refusals is news once");
        // More distinct refusals than it remembers: the oldest is
        // forgotten, so it is news again (memory stays bounded).
        for i in 0..REFUSALS_REMEMBERED {
            assert!(warned.is_news(RefusalKind::Malformed, &format!("m{i}"), t0));
        }
        assert!(warned.is_news(
            RefusalKind::UnknownPeer,
            "node \"x\" is not this node's peer",
            t0
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_from_another_cluster_or_node_are_refused() {
        let (replica, service) =
            start(cfg(InitialRole::Standby), standby_wal(), unreachable_peer());
        let mut wrong_cluster = pb_header(1, "n2");
        wrong_cluster.cluster_id = "other".into();
        let status = service
            .heartbeat(tonic::Request::new(pb::HeartbeatRequest {
                header: Some(wrong_cluster),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let status = service
            .heartbeat(tonic::Request::new(pb::HeartbeatRequest {
                header: Some(pb_header(1, "intruder")),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let m = replica.metrics();
        assert_eq!(m.rejected.get("wrong_cluster"), Some(&1));
        assert_eq!(m.rejected.get("unknown_peer"), Some(&1));
        assert_eq!(replica.health().last_lsn, Lsn::ZERO);
        replica.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_epoch_is_failed_precondition_with_our_epoch_and_counted() {
        let (replica, service) = start(
            cfg(InitialRole::Standby),
            wal_at_epoch(3),
            unreachable_peer(),
        );
        let status = service
            .heartbeat(tonic::Request::new(pb::HeartbeatRequest {
                header: Some(pb_header(2, "n2")),
                sync_state: pb::SyncState::Sync as i32,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.metadata().get("walrep-epoch").unwrap(), "3");
        assert_eq!(replica.metrics().rejected.get("stale_epoch"), Some(&1));
        replica.shutdown().await;
    }
}

#[cfg(test)]
mod limits {
    //! Bounds on what a caller can hold, and identity over TLS.

    use super::MAX_SNAPSHOT_TRANSFERS;
    use crate::config::InitialRole;
    use crate::pb;
    use crate::pb::replication_server::Replication;
    use crate::replicator::Replicator;
    use crate::runtime::tests::{cfg, header, start, unreachable_peer};
    use crate::wal::MemWal;
    use std::sync::Arc;

    fn pb_header(epoch: u64, from: &str) -> pb::Header {
        super::super::convert::header_to_pb(&header(epoch, from))
    }

    fn snapshot_request() -> tonic::Request<pb::SnapshotRequest> {
        tonic::Request::new(pb::SnapshotRequest {
            header: Some(pb_header(1, "n2")),
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_transfers_beyond_the_cap_are_refused_until_one_ends() {
        let (replica, service) = start(
            cfg(InitialRole::Primary),
            Arc::new(MemWal::new()),
            unreachable_peer(),
        );
        let mut running = Vec::new();
        for _ in 0..MAX_SNAPSHOT_TRANSFERS {
            running.push(service.fetch_snapshot(snapshot_request()).await.unwrap());
        }
        let Err(status) = service.fetch_snapshot(snapshot_request()).await else {
            panic!("a transfer beyond the cap was accepted");
        };
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("already running"), "{status:?}");
        assert_eq!(replica.metrics().rejected.get("unavailable"), Some(&1));
        running.pop();
        service.fetch_snapshot(snapshot_request()).await.unwrap();
        replica.shutdown().await;
    }

    #[cfg(feature = "tls")]
    #[tokio::test(start_paused = true)]
    async fn over_tls_a_request_must_come_from_the_identity_its_connection_proved() {
        use crate::transport::PeerIdentity;
        use crate::types::NodeId;
        let (replica, service) = start(
            cfg(InitialRole::Standby),
            crate::runtime::tests::standby_wal(),
            unreachable_peer(),
        );
        let service = service.requiring_peer_identity();
        let status_request = |from: &str, proven: Option<&str>| {
            let mut r = tonic::Request::new(pb::StatusRequest {
                header: Some(pb_header(1, from)),
            });
            if let Some(id) = proven {
                r.extensions_mut().insert(PeerIdentity {
                    node_id: NodeId::from(id),
                    remote: None,
                });
            }
            r
        };
        // Not through the TLS handshake at all.
        let status = service
            .status(status_request("n2", None))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        // Proved n2, says it is someone else.
        let status = service
            .status(status_request("n3", Some("n2")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("proved"), "{status:?}");
        service
            .status(status_request("n2", Some("n2")))
            .await
            .expect("the proven peer is answered");
        assert_eq!(replica.metrics().rejected.get("unauthenticated"), Some(&2));
        replica.shutdown().await;
    }
}
