//! `Peer` over tonic: one connection for the WAL stream and one for control
//! calls, so heartbeats never queue behind WAL batches. Every call has a
//! deadline.

use super::convert;
use super::refusal::transport_error_from_status;
use super::*;
use crate::pb;
use crate::pb::replication_client::ReplicationClient;
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Connection settings every walrep channel needs, from `cfg`: connect
/// within `rpc_timeout`, no Nagle delay, HTTP/2 keepalive every heartbeat
/// (at least 100 ms) giving up after `failover_timeout`, and large
/// flow-control windows. Without the keepalive a connection cut by a
/// partition hangs until TCP gives up. Apply it to an endpoint of your own
/// (TLS, a proxy) before making the channels for `GrpcPeer::from_channels`.
pub fn channel_settings(endpoint: Endpoint, cfg: &crate::Config) -> Endpoint {
    endpoint
        .connect_timeout(cfg.rpc_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(cfg.heartbeat_interval.max(Duration::from_millis(100)))
        .keep_alive_timeout(cfg.failover_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
}

/// The peer over gRPC: two channels (one for the WAL stream, one for
/// control calls, so a heartbeat never queues behind WAL batches), every
/// call with a deadline. `ReplicaBuilder::start` makes one with
/// `connect_lazy` unless `ReplicaBuilder::peer` gives another.
#[derive(Clone)]
pub struct GrpcPeer {
    data: ReplicationClient<Channel>,
    control: ReplicationClient<Channel>,
    rpc_timeout: Duration,
    long_timeout: Duration,
    snapshot_timeout: Duration,
    max_record_bytes: usize,
}

/// `cfg.peer_addr` as an endpoint (TLS, when used, is the connector's).
fn peer_endpoint(cfg: &crate::Config) -> Result<Endpoint, crate::Error> {
    endpoint_of(&cfg.peer_addr, crate::config::Setting::PeerAddr)
}

fn endpoint_of(addr: &str, setting: crate::config::Setting) -> Result<Endpoint, crate::Error> {
    let uri = format!("http://{addr}");
    Endpoint::from_shared(uri).map_err(|e| {
        crate::Error::InvalidConfig(crate::config::ConfigError {
            setting,
            related: None,
            problem: format!("({addr:?}) is not a valid host:port: {e}"),
        })
    })
}

impl GrpcPeer {
    /// Dials `cfg.peer_addr` lazily (the first call connects; a broken
    /// connection is re-established by the next call).
    pub fn connect_lazy(cfg: &crate::Config) -> Result<GrpcPeer, crate::Error> {
        let endpoint = channel_settings(peer_endpoint(cfg)?, cfg);
        Ok(GrpcPeer::from_channels(
            endpoint.connect_lazy(),
            endpoint.connect_lazy(),
            cfg,
        ))
    }

    /// Dials `addr` (one of `cfg.more_peers`) lazily, as `connect_lazy`.
    pub fn connect_lazy_to(addr: &str, cfg: &crate::Config) -> Result<GrpcPeer, crate::Error> {
        let endpoint = channel_settings(endpoint_of(addr, crate::config::Setting::MorePeers)?, cfg);
        Ok(GrpcPeer::from_channels(
            endpoint.connect_lazy(),
            endpoint.connect_lazy(),
            cfg,
        ))
    }

    /// Dials `addr`, the address of `id` (one of `cfg.more_peers`), over
    /// mutual TLS as `connect_lazy_tls` does: its certificate must name
    /// `id`.
    #[cfg(feature = "tls")]
    pub fn connect_lazy_tls_to(
        id: &crate::NodeId,
        addr: &str,
        cfg: &crate::Config,
        tls: &super::Tls,
    ) -> Result<GrpcPeer, crate::Error> {
        let endpoint = channel_settings(endpoint_of(addr, crate::config::Setting::MorePeers)?, cfg);
        let server = tls.peer_name(id).ok_or_else(|| {
            crate::Error::InvalidConfig(crate::config::ConfigError {
                setting: crate::config::Setting::MorePeers,
                related: None,
                problem: format!("{id} is not a peer the TLS configuration was loaded for"),
            })
        })?;
        let connector = super::tls::TlsConnector {
            identity: super::tls::ClientIdentity::NodeTo {
                tls: tls.clone(),
                server,
            },
            timeout: cfg.rpc_timeout,
        };
        Ok(GrpcPeer::from_channels(
            endpoint.connect_with_connector_lazy(connector.clone()),
            endpoint.connect_with_connector_lazy(connector),
            cfg,
        ))
    }

    /// As `connect_lazy`, over mutual TLS: the peer must present a
    /// certificate from `tls`'s CA naming `cfg.peer_id`, and this node
    /// presents its own.
    #[cfg(feature = "tls")]
    pub fn connect_lazy_tls(
        cfg: &crate::Config,
        tls: &super::Tls,
    ) -> Result<GrpcPeer, crate::Error> {
        let endpoint = channel_settings(peer_endpoint(cfg)?, cfg);
        let connector = super::tls::TlsConnector {
            identity: super::tls::ClientIdentity::Node(tls.clone()),
            timeout: cfg.rpc_timeout,
        };
        Ok(GrpcPeer::from_channels(
            endpoint.connect_with_connector_lazy(connector.clone()),
            endpoint.connect_with_connector_lazy(connector),
            cfg,
        ))
    }

    /// Uses channels made by the caller (TLS, a proxy, a simulated
    /// network); make them from an endpoint passed through
    /// `channel_settings`. They may be clones of one channel, at the price
    /// of heartbeats queueing behind WAL batches.
    pub fn from_channels(data: Channel, control: Channel, cfg: &crate::Config) -> GrpcPeer {
        let limit = cfg.max_message_bytes;
        let client = |c: Channel| {
            ReplicationClient::new(c)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit)
        };
        GrpcPeer {
            data: client(data),
            control: client(control),
            rpc_timeout: cfg.rpc_timeout,
            long_timeout: cfg.switchover_timeout + cfg.rpc_timeout,
            snapshot_timeout: cfg.snapshot_timeout,
            max_record_bytes: cfg.max_record_bytes,
        }
    }

    async fn call<T, F>(&self, timeout: Duration, fut: F) -> Result<T, TransportError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(TransportError::Timeout),
            Ok(Err(status)) => Err(transport_error_from_status(&status)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

fn bad_reply(e: convert::Malformed) -> TransportError {
    TransportError::Remote(e.to_string())
}

#[async_trait]
impl Peer for GrpcPeer {
    async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatReply, TransportError> {
        let msg = pb::HeartbeatRequest {
            header: Some(convert::header_to_pb(&req.header)),
            last_lsn: req.last_lsn.0,
            commit_lsn: req.commit_lsn.0,
            sync_state: convert::sync_to_pb(req.sync),
            confirmed: req.confirmed,
            commit_rule: req.commit_rule.clone(),
            sent_at_micros: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as u64)
                .unwrap_or(0),
        };
        let mut client = self.control.clone();
        let r = self
            .call(
                self.rpc_timeout,
                client.heartbeat(request(msg, self.rpc_timeout)),
            )
            .await?;
        Ok(HeartbeatReply {
            ack: convert::ack_from_pb(pb::WalAck {
                epoch: r.epoch,
                written_lsn: r.written_lsn,
                flushed_lsn: r.flushed_lsn,
                applied_lsn: r.applied_lsn,
                flushed_epoch: r.flushed_epoch,
                first_lsn: 0,
            })
            .map_err(bad_reply)?,
            role: convert::role_from_pb(r.role).map_err(bad_reply)?,
        })
    }

    async fn fence(&self, req: FenceRequest) -> Result<FenceReply, TransportError> {
        let timeout = if req.reason == FenceReason::Switchover {
            self.long_timeout
        } else {
            self.rpc_timeout
        };
        let msg = pb::FenceRequest {
            header: Some(convert::header_to_pb(&req.header)),
            reason: convert::reason_to_pb(req.reason),
            candidate_end: req.candidate_end.map(|e| pb::LogPosition {
                lsn: e.lsn.0,
                epoch: e.epoch.0,
            }),
        };
        let mut client = self.control.clone();
        let r = self
            .call(timeout, client.fence(request(msg, timeout)))
            .await?;
        Ok(FenceReply {
            epoch: Epoch(r.epoch),
            last_lsn: Lsn(r.last_lsn),
            last_epoch: Epoch(r.last_epoch),
        })
    }

    async fn promote(&self, req: PromoteRequest) -> Result<PromoteReply, TransportError> {
        let msg = pb::PromoteRequest {
            header: Some(convert::header_to_pb(&req.header)),
            force: req.force,
        };
        let timeout = self.long_timeout + self.rpc_timeout;
        let mut client = self.control.clone();
        let r = self
            .call(timeout, client.promote(request(msg, timeout)))
            .await?;
        Ok(PromoteReply {
            epoch: Epoch(r.epoch),
            message: r.message,
        })
    }

    async fn status(&self, header: Header) -> Result<StatusReply, TransportError> {
        let msg = pb::StatusRequest {
            header: Some(convert::header_to_pb(&header)),
        };
        let mut client = self.control.clone();
        let r = self
            .call(
                self.rpc_timeout,
                client.status(request(msg, self.rpc_timeout)),
            )
            .await?;
        Ok(StatusReply {
            node_id: NodeId(r.node_id),
            role: convert::role_from_pb(r.role).map_err(bad_reply)?,
            epoch: Epoch(r.epoch),
            last_lsn: Lsn(r.last_lsn),
            commit_lsn: Lsn(r.commit_lsn),
            applied_lsn: Lsn(r.applied_lsn),
            flushed_lsn: Lsn(r.flushed_lsn),
            leader_id: (!r.leader_id.is_empty()).then_some(NodeId(r.leader_id)),
            leader_addr: (!r.leader_addr.is_empty()).then_some(r.leader_addr),
            peer_connected: r.peer_connected,
            lag_records: r.lag_records,
        })
    }

    async fn history(&self, header: Header) -> Result<HistoryReply, TransportError> {
        let msg = pb::HistoryRequest {
            header: Some(convert::header_to_pb(&header)),
        };
        let mut client = self.control.clone();
        let r = self
            .call(
                self.rpc_timeout,
                client.get_history(request(msg, self.rpc_timeout)),
            )
            .await?;
        Ok(HistoryReply {
            epoch: Epoch(r.epoch),
            history: convert::history_from_pb(r.history).map_err(bad_reply)?,
            last_lsn: Lsn(r.last_lsn),
            first_lsn: Lsn(r.first_lsn),
            role: convert::role_from_pb(r.role).map_err(bad_reply)?,
            unconfirmed: r.unconfirmed,
            restart_lsn: r.restart_lsn.map(Lsn),
        })
    }

    async fn read_wal(
        &self,
        header: Header,
        after: Lsn,
        up_to: Lsn,
    ) -> Result<WalBatch, TransportError> {
        let msg = pb::ReadWalRequest {
            header: Some(convert::header_to_pb(&header)),
            after_lsn: after.0,
            up_to_lsn: up_to.0,
        };
        let mut client = self.control.clone();
        let r = self
            .call(
                self.rpc_timeout,
                client.read_wal(request(msg, self.rpc_timeout)),
            )
            .await?;
        convert::batch_from_pb(r, self.max_record_bytes).map_err(bad_reply)
    }

    async fn open_wal_stream(
        &self,
        batches: mpsc::Receiver<WalBatch>,
    ) -> Result<AckStream, TransportError> {
        let outgoing = ReceiverStream::new(batches).map(|b| convert::batch_to_pb(&b));
        let mut client = self.data.clone();
        let acks = self
            .call(self.rpc_timeout, client.stream_wal(outgoing))
            .await?;
        Ok(Box::pin(acks.map(|r| match r {
            Ok(ack) => convert::ack_from_pb(ack).map_err(bad_reply),
            Err(status) => Err(transport_error_from_status(&status)),
        })))
    }

    async fn fetch_request_ids(
        &self,
        header: Header,
        after: Lsn,
        up_to: Lsn,
    ) -> Result<Option<RequestIds>, TransportError> {
        let msg = pb::RequestIdsRequest {
            header: Some(convert::header_to_pb(&header)),
            after_lsn: after.0,
            up_to_lsn: up_to.0,
        };
        let mut client = self.control.clone();
        let call = client.fetch_request_ids(request(msg, self.rpc_timeout));
        // Not `call`: it would turn `Unimplemented` (a primary of an older
        // walrep, which lists no ids) into a failure like any other.
        match tokio::time::timeout(self.rpc_timeout, call).await {
            Err(_) => Err(TransportError::Timeout),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Ok(Err(status)) => Err(transport_error_from_status(&status)),
            Ok(Ok(r)) => convert::request_ids_from_pb(r.into_inner(), after, up_to)
                .map(Some)
                .map_err(bad_reply),
        }
    }

    async fn fetch_snapshot(&self, req: SnapshotRequest) -> Result<SnapshotStream, TransportError> {
        let msg = pb::SnapshotRequest {
            header: Some(convert::header_to_pb(&req.header)),
            snapshot_id: req.snapshot_id,
            offset: req.offset,
            crc_after_data: req.crc_after_data,
        };
        let mut client = self.control.clone();
        // The primary answers at once and builds while it sends keep-alives,
        // so the call itself has the ordinary deadline.
        let parts = self
            .call(self.rpc_timeout, client.fetch_snapshot(msg))
            .await?;
        // Each message must come within `snapshot_timeout` of the last: a
        // peer that stops mid-transfer would otherwise hang the rejoin. The
        // whole transfer has no deadline.
        let idle = self.snapshot_timeout;
        let parts = parts.timeout(idle).filter_map(move |r| match r {
            Err(_) => Some(Err(TransportError::Unreachable(format!(
                "snapshot transfer idle for {idle:?}"
            )))),
            Ok(Err(status)) => Some(Err(transport_error_from_status(&status))),
            Ok(Ok(chunk)) => snapshot_part_from_pb(chunk).transpose(),
        });
        // The stream ends at its first error.
        let mut failed = false;
        Ok(Box::pin(parts.take_while(move |r| {
            let go = !failed;
            failed |= r.is_err();
            go
        })))
    }
}

/// One message of a snapshot transfer; `None` for a keep-alive.
fn snapshot_part_from_pb(chunk: pb::SnapshotChunk) -> Result<Option<SnapshotPart>, TransportError> {
    use pb::snapshot_chunk::Part;
    match chunk.part {
        None => Err(TransportError::Remote(
            "a snapshot message with no part".into(),
        )),
        Some(Part::Building(_)) => Ok(None),
        Some(Part::Info(i)) => Ok(Some(SnapshotPart::Info(SnapshotInfo {
            id: i.snapshot_id,
            lsn: Lsn(i.last_lsn),
            epoch: Epoch(i.last_epoch),
            total_bytes: i.total_bytes,
            crc: (!i.crc_follows).then_some(i.crc),
            offset: i.offset,
        }))),
        Some(Part::Data(d)) => Ok(Some(SnapshotPart::Data {
            offset: d.offset,
            data: d.data,
        })),
        Some(Part::End(e)) => Ok(Some(SnapshotPart::End { crc: e.crc })),
    }
}
