//! `Peer` over tonic: one connection for the WAL stream and one for control
//! calls, so heartbeats never queue behind WAL batches. Every call has a
//! deadline.

use super::convert;
use super::server::transport_error_from_status;
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
}

impl GrpcPeer {
    /// Dials `cfg.peer_addr` lazily (the first call connects; a broken
    /// connection is re-established by the next call).
    pub fn connect_lazy(cfg: &crate::Config) -> Result<GrpcPeer, crate::Error> {
        let uri = format!("http://{}", cfg.peer_addr);
        let endpoint = Endpoint::from_shared(uri).map_err(|e| {
            crate::Error::InvalidConfig(crate::config::ConfigError {
                setting: crate::config::Setting::PeerAddr,
                related: None,
                problem: format!("({:?}) is not a valid host:port: {e}", cfg.peer_addr),
            })
        })?;
        let endpoint = channel_settings(endpoint, cfg);
        Ok(GrpcPeer::from_channels(
            endpoint.connect_lazy(),
            endpoint.connect_lazy(),
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
        })
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

    async fn fetch_snapshot(&self, header: Header) -> Result<SnapshotTransfer, TransportError> {
        let msg = pb::SnapshotRequest {
            header: Some(convert::header_to_pb(&header)),
        };
        let mut client = self.control.clone();
        let chunks = self
            .call(self.rpc_timeout, client.fetch_snapshot(msg))
            .await?;
        // Each chunk must come within a stall limit: a peer that stops
        // mid-transfer would otherwise hang the rejoin waiting for it.
        let stall = self.long_timeout;
        let chunks = chunks.timeout(stall).map(move |r| {
            r.unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(format!(
                    "snapshot transfer stalled for {stall:?}"
                )))
            })
        });
        collect_snapshot(Box::pin(chunks), MAX_SNAPSHOT_BYTES).await
    }
}

/// The largest snapshot `fetch_snapshot` accepts. It is reassembled in
/// memory, so an announced size above this is refused before any byte is
/// kept, whatever the peer says.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

/// Reassembles a snapshot from its chunks. Memory grows with the bytes
/// received, never from the announced total, and never past that total
/// (itself at most `limit`); every chunk must describe the same snapshot,
/// and the whole must match the announced length and CRC.
async fn collect_snapshot<S>(mut chunks: S, limit: u64) -> Result<SnapshotTransfer, TransportError>
where
    S: futures::Stream<Item = Result<pb::SnapshotChunk, tonic::Status>> + Unpin,
{
    let mut data = bytes::BytesMut::new();
    let mut meta: Option<(u64, u64, u64)> = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|s| transport_error_from_status(&s))?;
        let (lsn, epoch, total) =
            *meta.get_or_insert((chunk.last_lsn, chunk.last_epoch, chunk.total_bytes));
        if total > limit {
            return Err(TransportError::Remote(format!(
                "snapshot of {total} bytes is above the limit of {limit} bytes"
            )));
        }
        if chunk.last_lsn != lsn || chunk.last_epoch != epoch || chunk.total_bytes != total {
            return Err(TransportError::Remote(
                "snapshot chunks disagree about the snapshot they belong to".into(),
            ));
        }
        if (data.len() + chunk.data.len()) as u64 > total {
            return Err(TransportError::Remote(format!(
                "snapshot larger than the announced {total} bytes"
            )));
        }
        data.extend_from_slice(&chunk.data);
        if chunk.last {
            if data.len() as u64 != total || crc32c::crc32c(&data) != chunk.crc {
                return Err(TransportError::Remote(
                    "snapshot failed its checksum or length check; retrying".into(),
                ));
            }
            return Ok(SnapshotTransfer {
                lsn: Lsn(lsn),
                epoch: Epoch(epoch),
                data: data.freeze(),
            });
        }
    }
    Err(TransportError::Unreachable(
        "snapshot stream ended early".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::largest_allocation;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn collect(
        chunks: Vec<pb::SnapshotChunk>,
        limit: u64,
    ) -> (Result<SnapshotTransfer, TransportError>, usize) {
        let stream = tokio_stream::iter(chunks.into_iter().map(Ok));
        largest_allocation(|| futures::executor::block_on(collect_snapshot(stream, limit)))
    }

    fn chunk(total: u64, data: &[u8], last: bool, crc: u32) -> pb::SnapshotChunk {
        pb::SnapshotChunk {
            last_lsn: 7,
            last_epoch: 2,
            total_bytes: total,
            data: Bytes::copy_from_slice(data),
            last,
            crc,
        }
    }

    #[test]
    fn a_snapshot_in_chunks_is_reassembled() {
        let crc = crc32c::crc32c(b"abcdef");
        let chunks = vec![chunk(6, b"abc", false, 0), chunk(6, b"def", true, crc)];
        let snap = collect(chunks, 100).0.unwrap();
        assert_eq!((snap.lsn, snap.epoch), (Lsn(7), Epoch(2)));
        assert_eq!(&snap.data[..], b"abcdef");
    }

    #[test]
    fn an_announced_size_above_the_limit_is_refused_before_anything_is_kept() {
        let (result, allocated) = collect(vec![chunk(u64::MAX, b"x", false, 0)], 1 << 20);
        let err = result.unwrap_err().to_string();
        assert!(err.contains("above the limit"), "{err}");
        assert!(allocated < 1024, "allocated {allocated}");
    }

    #[derive(Clone, Debug)]
    struct Plan {
        total_error: Option<u64>,
        cuts: Vec<prop::sample::Index>,
        crc_error: u32,
        other_lsn: bool,
        drop_last: bool,
        extra: Vec<u8>,
    }

    fn plan() -> impl Strategy<Value = Plan> {
        (
            prop::option::weighted(0.2, prop_oneof![0u64..8, any::<u64>()]),
            prop::collection::vec(any::<prop::sample::Index>(), 0..4),
            prop_oneof![6 => Just(0u32), 1 => any::<u32>()],
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.1),
            prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..5)],
        )
            .prop_map(
                |(total_error, cuts, crc_error, other_lsn, drop_last, extra)| Plan {
                    total_error,
                    cuts,
                    crc_error,
                    other_lsn,
                    drop_last,
                    extra,
                },
            )
    }

    proptest! {
        /// Chunks as a sender might send them, right or wrong: a snapshot
        /// comes out only if it is exactly the bytes sent, and memory
        /// stays within what was received whatever total is announced.
        #[test]
        fn reassembly_yields_the_snapshot_sent_or_an_error(
            snapshot in prop::collection::vec(any::<u8>(), 0..200),
            plan in plan(),
        ) {
            let crc = crc32c::crc32c(&snapshot);
            let total = (snapshot.len() as u64).wrapping_add(plan.total_error.unwrap_or(0));
            let mut cuts: Vec<usize> = plan.cuts.iter().map(|c| c.index(snapshot.len() + 1)).collect();
            cuts.push(0);
            cuts.push(snapshot.len());
            cuts.sort();
            let mut chunks: Vec<pb::SnapshotChunk> = cuts
                .windows(2)
                .map(|w| chunk(total, &snapshot[w[0]..w[1]], false, 0))
                .collect();
            let last = chunks.last_mut().unwrap();
            last.last = true;
            last.crc = crc.wrapping_add(plan.crc_error);
            last.data = [&last.data[..], &plan.extra].concat().into();
            if plan.other_lsn {
                chunks[0].last_lsn += 1;
            }
            if plan.drop_last {
                chunks.pop();
            }
            let sent: usize = chunks.iter().map(|c| c.data.len()).sum();
            let (result, allocated) = collect(chunks, 1 << 20);
            prop_assert!(allocated <= 2 * sent + 1024, "allocated {allocated} for {sent} bytes");
            if let Ok(snap) = result {
                prop_assert_eq!(&snap.data[..], &snapshot[..]);
                prop_assert_eq!(plan.total_error.unwrap_or(0), 0);
                prop_assert!(plan.extra.is_empty() && !plan.drop_last && plan.crc_error == 0);
            }
        }
    }
}
