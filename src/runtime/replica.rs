//! The handle an engine holds (`Replica`, built by `ReplicaBuilder`), and
//! `serve` for the node's gRPC service.

use super::{Inbox, Metrics, MetricsSnapshot, Msg, actor};
use crate::config::Config;
use crate::error::{Error, LeaderHint, Result};
use crate::node::RoleKind;
use crate::replicator::{Applied, Health, Replicator};
use crate::state_machine::StateMachine;
use crate::transport::{GrpcPeer, Peer, ReplicationService};
use crate::types::{Epoch, Lsn, RequestId};
use crate::wal::WalStore;
use async_trait::async_trait;
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Starts a node: `Replica::builder(cfg, wal, sm).start()`.
pub struct ReplicaBuilder {
    cfg: Config,
    wal: Arc<dyn WalStore>,
    sm: Arc<dyn StateMachine>,
    peer: Option<Arc<dyn Peer>>,
    rewound_dir: Option<PathBuf>,
    snapshot_dir: Option<PathBuf>,
}

impl ReplicaBuilder {
    /// The peer to talk to; by default a `GrpcPeer` dialing `cfg.peer_addr`.
    pub fn peer(mut self, peer: Arc<dyn Peer>) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Where records dropped by a rewind are kept for the operator.
    pub fn rewound_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rewound_dir = Some(dir.into());
        self
    }

    /// Where snapshots are built (primary) and received (standby): files
    /// as large as the engine's state, so a disk with room for it. Files
    /// left by an earlier run are removed at start. By default a
    /// directory of its own under `std::env::temp_dir()`, removed when the
    /// node stops.
    pub fn snapshot_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshot_dir = Some(dir.into());
        self
    }

    /// Starts the node's tasks on the current tokio runtime. Serve the
    /// returned service (see `serve`) so the peer can reach this node.
    pub fn start(self) -> Result<(Replica, ReplicationService)> {
        self.cfg.validate()?;
        let peer = match self.peer {
            Some(p) => p,
            None => Arc::new(GrpcPeer::connect_lazy(&self.cfg)?),
        };
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(1024);
        let service = ReplicationService::new(Inbox::new(tx.clone()), &self.cfg, metrics.clone());
        let snapshots = Arc::new(super::Snapshots::new(
            self.snapshot_dir,
            self.sm.clone(),
            self.wal.clone(),
        ));
        let (health, handle) = actor::spawn(actor::Parts {
            cfg: self.cfg.clone(),
            wal: self.wal,
            sm: self.sm,
            snapshots,
            peer,
            tx: tx.clone(),
            rx,
            metrics: metrics.clone(),
            rewound_dir: self.rewound_dir,
        })?;
        Ok((
            Replica {
                inner: Arc::new(Inner {
                    tx,
                    health,
                    metrics,
                    actor: tokio::sync::Mutex::new(Some(handle)),
                    max_record_bytes: self.cfg.max_record_bytes,
                    promote_timeout: self.cfg.switchover_timeout + self.cfg.rpc_timeout * 4,
                }),
            },
            service,
        ))
    }
}

/// The handle an engine holds; implements `Replicator`. Cheap to clone
/// (an `Arc` inside): every clone talks to the same node, so an engine can
/// hand one to each of its tasks.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    health: watch::Receiver<Health>,
    metrics: Arc<Metrics>,
    /// The actor's task, awaited by the first `shutdown`; the others wait
    /// for that one on the lock.
    actor: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    max_record_bytes: usize,
    promote_timeout: Duration,
}

impl Replica {
    /// A builder for a node that keeps `wal` and applies to `sm` under
    /// `cfg`; nothing runs until `ReplicaBuilder::start`.
    pub fn builder(
        cfg: Config,
        wal: Arc<dyn WalStore>,
        sm: Arc<dyn StateMachine>,
    ) -> ReplicaBuilder {
        ReplicaBuilder {
            cfg,
            wal,
            sm,
            peer: None,
            rewound_dir: None,
            snapshot_dir: None,
        }
    }

    /// The node's counters (role transitions, refusals, rewinds) now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// Waits until `pred` holds for the node's health, or `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&Health) -> bool,
    ) -> Result<Health> {
        let mut rx = self.inner.health.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|h| pred(h))).await {
            Ok(Ok(h)) => Ok(h.clone()),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => Err(Error::Timeout(format!(
                "{what} did not happen within {timeout:?} (last health: {:?})",
                *self.inner.health.borrow()
            ))),
        }
    }

    /// The writes of `apply*`: `request_ids` empty, or one per command.
    async fn write(&self, cmds: Vec<Bytes>, request_ids: Vec<RequestId>) -> Result<Vec<Applied>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(big) = cmds.iter().find(|c| c.len() > self.inner.max_record_bytes) {
            return Err(Error::InvalidInput(format!(
                "a command of {} bytes exceeds max_record_bytes ({}); nothing was written",
                big.len(),
                self.inner.max_record_bytes
            )));
        }
        self.ask(|reply| Msg::Apply {
            payloads: cmds,
            request_ids,
            reply,
        })
        .await
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Msg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(make(tx))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)?
    }
}

#[async_trait]
impl Replicator for Replica {
    async fn apply(&self, cmd: Bytes) -> Result<Applied> {
        let mut applied = self.apply_batch(vec![cmd]).await?;
        Ok(applied.remove(0))
    }

    async fn apply_batch(&self, cmds: Vec<Bytes>) -> Result<Vec<Applied>> {
        self.write(cmds, Vec::new()).await
    }

    async fn apply_once(&self, id: RequestId, cmd: Bytes) -> Result<Applied> {
        let mut applied = self.write(vec![cmd], vec![id]).await?;
        Ok(applied.remove(0))
    }

    async fn apply_batch_once(&self, cmds: Vec<(RequestId, Bytes)>) -> Result<Vec<Applied>> {
        let (request_ids, cmds) = cmds.into_iter().unzip();
        self.write(cmds, request_ids).await
    }

    fn role(&self) -> RoleKind {
        self.inner.health.borrow().role
    }

    fn epoch(&self) -> Epoch {
        self.inner.health.borrow().epoch
    }

    fn leader(&self) -> Option<LeaderHint> {
        self.inner.health.borrow().leader.clone()
    }

    fn health(&self) -> Health {
        self.inner.health.borrow().clone()
    }

    async fn promote(&self, force: bool) -> Result<Epoch> {
        let limit = self.inner.promote_timeout;
        match tokio::time::timeout(limit, self.ask(|reply| Msg::Promote { force, reply })).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "promotion did not finish within {limit:?}; check the node's health for its outcome"
            ))),
        }
    }

    async fn fence(&self, epoch: Epoch) -> Result<()> {
        self.ask(|reply| Msg::Fence { epoch, reply }).await
    }

    async fn wait_for_leader(&self, timeout: Duration) -> Result<LeaderHint> {
        let h = self
            .wait_for(timeout, "a known primary", |h| h.leader.is_some())
            .await?;
        Ok(h.leader.expect("checked by the predicate"))
    }

    async fn wait_for_lsn(&self, lsn: Lsn, timeout: Duration) -> Result<()> {
        self.wait_for(timeout, &format!("applying LSN {lsn}"), |h| {
            h.applied_lsn >= lsn
        })
        .await
        .map(|_| ())
    }

    fn subscribe(&self) -> watch::Receiver<Health> {
        self.inner.health.clone()
    }

    async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .tx
            .send(Msg::Shutdown { reply: tx })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let mut actor = self.inner.actor.lock().await;
        if let Some(handle) = actor.take() {
            let _ = handle.await;
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves.
pub async fn serve(
    service: ReplicationService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_millis(500)))
        .http2_keepalive_timeout(Some(Duration::from_secs(1)))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .serve_with_incoming_shutdown(
            service.into_server(),
            // The server's own tcp_nodelay applies only to sockets it binds;
            // without it small acks wait for delayed ACKs (~40 ms).
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    conn.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                },
            ),
            shutdown,
        )
        .await
}
