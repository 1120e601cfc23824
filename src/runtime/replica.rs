//! The handle an engine holds (`Replica`, built by `ReplicaBuilder`), the
//! replication server it owns, and `serve` for an engine that runs the
//! gRPC service on a server of its own.

use super::{Inbox, Metrics, MetricsSnapshot, Msg, actor};
use crate::config::Config;
use crate::error::{Error, LeaderHint, Result};
use crate::node::RoleKind;
use crate::replicator::{Applied, Health, Replicator};
use crate::state_machine::StateMachine;
use crate::transport::{GrpcPeer, Peer, ReplicationService};
use crate::types::{Epoch, Lsn, NodeId, RequestId};
use crate::wal::WalStore;
use async_trait::async_trait;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long `Replica::shutdown` lets the replication server finish the
/// calls in flight once the node has stopped (they end at once: the node
/// answers `shutting_down`, but a snapshot being sent would run to its
/// end) before it drops their connections.
const SERVER_DRAIN: Duration = Duration::from_secs(3);

/// Starts a node: `Replica::builder(cfg, wal, sm).listen(addr).start()`.
pub struct ReplicaBuilder {
    cfg: Config,
    wal: Arc<dyn WalStore>,
    sm: Arc<dyn StateMachine>,
    peer: Option<Arc<dyn Peer>>,
    more_peers: std::collections::BTreeMap<NodeId, Arc<dyn Peer>>,
    rewound_dir: Option<PathBuf>,
    snapshot_dir: Option<PathBuf>,
    server: Option<ServerSocket>,
    #[cfg(feature = "tls")]
    tls: Option<crate::transport::Tls>,
}

/// Where `start` serves the replication service.
enum ServerSocket {
    /// Bound by `start`.
    Address(String),
    /// Bound by the engine.
    Listener(tokio::net::TcpListener),
}

impl ReplicaBuilder {
    /// The peer to talk to; by default a `GrpcPeer` dialing `cfg.peer_addr`.
    pub fn peer(mut self, peer: Arc<dyn Peer>) -> Self {
        self.peer = Some(peer);
        self
    }

    /// The peer to talk to for `id`, one of `Config::more_peers`; by
    /// default a `GrpcPeer` dialing its address.
    pub fn more_peer(mut self, id: NodeId, peer: Arc<dyn Peer>) -> Self {
        self.more_peers.insert(id, peer);
        self
    }

    /// Where records dropped by a rewind are kept for the operator.
    pub fn rewound_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.rewound_dir = Some(dir.into());
        self
    }

    /// Where snapshots are built (primary) and received (standby): files
    /// as large as the engine's state, so a disk with room for it. Builds
    /// left by an earlier run are removed at start; a snapshot this node
    /// was receiving when it stopped stays, and its transfer resumes from
    /// the bytes received if the primary still serves it. By default a
    /// directory of its own under `std::env::temp_dir()`, removed when the
    /// node stops (so a restarted node starts a transfer over).
    pub fn snapshot_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshot_dir = Some(dir.into());
        self
    }

    /// Serves the replication service on `addr` (e.g. `0.0.0.0:7001`;
    /// port 0 picks a free one, see `Replica::local_addr`), bound by
    /// `start`. The peer reaches this node at `Config::advertise_addr`,
    /// which must lead here.
    pub fn listen(mut self, addr: impl ToString) -> Self {
        self.server = Some(ServerSocket::Address(addr.to_string()));
        self
    }

    /// Mutual TLS for both directions: `start` serves with `serve_tls`,
    /// and the default peer dials with `GrpcPeer::connect_lazy_tls` (a
    /// peer given with `peer` is used as it is).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::transport::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves the replication service on a listener the engine bound
    /// (to retry a port still held by a previous run, or to pick the
    /// socket's options).
    pub fn serve_on(mut self, listener: tokio::net::TcpListener) -> Self {
        self.server = Some(ServerSocket::Listener(listener));
        self
    }

    /// Starts the node's tasks on the current tokio runtime and serves
    /// the replication service on the socket `listen` or `serve_on`
    /// named, on a task the returned `Replica` owns until
    /// `Replicator::shutdown`. The same server answers gRPC health checks
    /// (`grpc.health.v1`: see `Replica::grpc_health_service`). A port that cannot be bound fails here,
    /// before the node reads or writes anything.
    ///
    /// Without `listen` or `serve_on` it fails: use
    /// `start_without_server` to serve the service yourself.
    pub fn start(mut self) -> Result<Replica> {
        // A bad setting is reported before a port is taken.
        self.cfg.validate()?;
        let listener = match self.server.take() {
            Some(ServerSocket::Listener(l)) => l,
            Some(ServerSocket::Address(addr)) => bind(&addr)?,
            None => {
                return Err(Error::InvalidInput(
                    "ReplicaBuilder::start has no socket to serve replication on: call \
                     listen(addr) or serve_on(listener) first, or start_without_server() \
                     to serve the ReplicationService on a server of your own"
                        .into(),
                ));
            }
        };
        let local_addr = listener.local_addr().map_err(|e| Error::Io {
            what: "reading the replication listener's address".into(),
            source: e,
        })?;
        #[cfg(feature = "tls")]
        let tls = self.tls.clone();
        let (mut replica, service) = self.start_without_server()?;
        let grpc_health = Some(super::grpc_health::service(replica.subscribe()));
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            #[cfg(feature = "tls")]
            let served = match tls {
                Some(tls) => serve_tls_with(service, grpc_health, listener, &tls, stopped).await,
                None => serve_with(service, grpc_health, listener, stopped).await,
            };
            #[cfg(not(feature = "tls"))]
            let served = serve_with(service, grpc_health, listener, stopped).await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the replication server stopped");
            }
        });
        let inner = Arc::get_mut(&mut replica.inner).expect("a Replica not shared yet");
        inner.local_addr = Some(local_addr);
        *inner.server.get_mut().expect("not poisoned") = Some(Server { stop, task });
        tracing::info!(%local_addr, "serving replication");
        Ok(replica)
    }

    /// Starts the node's tasks on the current tokio runtime, without a
    /// server: serve the returned service so the peer can reach this node,
    /// with `serve`, `serve_tls` or `ReplicationService::into_server` on a
    /// tonic server of your own (a simulated network, a private one), and
    /// stop that server yourself after `Replicator::shutdown`.
    /// `Replica::local_addr` is then `None`. Given `tls`, the service
    /// requires each request's proven identity
    /// (`ReplicationService::requiring_peer_identity`): serve it with
    /// `serve_tls`, or on a TLS server of your own that puts the identity
    /// it proved into each request's extensions.
    pub fn start_without_server(mut self) -> Result<(Replica, ReplicationService)> {
        self.cfg.validate()?;
        let peer = match self.peer {
            Some(p) => p,
            #[cfg(feature = "tls")]
            None if self.tls.is_some() => Arc::new(GrpcPeer::connect_lazy_tls(
                &self.cfg,
                self.tls.as_ref().expect("checked"),
            )?),
            None => Arc::new(GrpcPeer::connect_lazy(&self.cfg)?),
        };
        let mut peers = std::collections::BTreeMap::from([(self.cfg.peer_id.clone(), peer)]);
        for more in &self.cfg.more_peers {
            let peer = match self.more_peers.remove(&more.id) {
                Some(p) => p,
                #[cfg(feature = "tls")]
                None if self.tls.is_some() => Arc::new(GrpcPeer::connect_lazy_tls_to(
                    &more.id,
                    &more.addr,
                    &self.cfg,
                    self.tls.as_ref().expect("checked"),
                )?),
                None => Arc::new(GrpcPeer::connect_lazy_to(&more.addr, &self.cfg)?),
            };
            peers.insert(more.id.clone(), peer);
        }
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::channel(1024);
        let service = ReplicationService::new(Inbox::new(tx.clone()), &self.cfg, metrics.clone());
        // Given TLS, the service fails closed: served anywhere but through
        // `serve_tls` (or a server that proves identities the same way),
        // it refuses requests instead of trusting the node id they claim.
        #[cfg(feature = "tls")]
        let service = if self.tls.is_some() {
            service.requiring_peer_identity()
        } else {
            service
        };
        let snapshots = Arc::new(super::Snapshots::new(
            self.snapshot_dir,
            self.sm.clone(),
            self.wal.clone(),
        ));
        if let Some(dir) = &self.rewound_dir {
            // A rewind a crash interrupted left its file half written.
            crate::wal::tmpfile::remove_stale(dir, ".wal.tmp");
        }
        let (health, handle) = actor::spawn(actor::Parts {
            cfg: self.cfg.clone(),
            wal: self.wal,
            sm: self.sm,
            snapshots,
            peers,
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
                    actor: std::sync::Mutex::new(Some(handle)),
                    stopping: std::sync::Mutex::new(None),
                    runtime: tokio::runtime::Handle::current(),
                    server: std::sync::Mutex::new(None),
                    local_addr: None,
                    max_record_bytes: self.cfg.max_record_bytes,
                    promote_timeout: self.cfg.switchover_timeout + self.cfg.rpc_timeout * 4,
                }),
            },
            service,
        ))
    }
}

/// Binds the replication listener on `addr` (without blocking: resolving
/// a name is the only wait, and a port in use fails at once).
fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    let io = |source| Error::Io {
        what: format!("listening for replication on {addr} (ReplicaBuilder::listen)"),
        source,
    };
    let std_listener = std::net::TcpListener::bind(addr).map_err(io)?;
    std_listener.set_nonblocking(true).map_err(io)?;
    tokio::net::TcpListener::from_std(std_listener).map_err(io)
}

/// The replication server a `Replica` owns.
struct Server {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets the calls in flight finish for up to
    /// `SERVER_DRAIN`, then drops them.
    async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(SERVER_DRAIN, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "the replication server did not drain within {SERVER_DRAIN:?}; closing its connections"
            );
            self.task.abort();
            let _ = self.task.await;
        }
    }
}

/// The handle an engine holds; implements `Replicator`.
///
/// Cheap to clone (an `Arc` inside): every clone is the same node, with
/// the same mailbox, health, counters and server, so an engine can hand
/// one to each of its tasks. The node runs until `Replicator::shutdown`
/// is called on any clone (the others then answer `ShuttingDown`);
/// dropping clones, even the last one, never stops it or its server.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<Msg>,
    health: watch::Receiver<Health>,
    metrics: Arc<Metrics>,
    /// The actor's task, awaited by the stop.
    actor: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// The stop, once a `shutdown` began it: a task of its own, so it runs
    /// to its end even if the caller that began it goes away, and every
    /// `shutdown` (that one, and any later) waits for that end.
    stopping: std::sync::Mutex<Option<Stopping>>,
    /// The runtime the node was started on, where the stop runs, whoever
    /// polls `shutdown` (another runtime, or none).
    runtime: tokio::runtime::Handle,
    /// The replication server `start` spawned, stopped by `shutdown`
    /// after the actor (a primary's handover still hears its standby).
    server: std::sync::Mutex<Option<Server>>,
    local_addr: Option<SocketAddr>,
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
            more_peers: Default::default(),
            rewound_dir: None,
            snapshot_dir: None,
            server: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// A planned switchover to `standby`, asked of the primary: that
    /// standby takes over once it holds everything this node wrote (as
    /// `Replicator::promote` asked of a primary does with its peer);
    /// returns the new epoch. Refused on any other role, or for a node
    /// that is not one of this primary's standbys, with nothing changed.
    pub async fn switchover_to(&self, standby: &NodeId) -> Result<Epoch> {
        let limit = self.inner.promote_timeout;
        let standby = standby.clone();
        match tokio::time::timeout(
            limit,
            self.ask(|reply| Msg::SwitchoverTo { standby, reply }),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "the switchover did not finish within {limit:?}; check the nodes' health for its outcome"
            ))),
        }
    }

    /// The address the replication server bound (`ReplicaBuilder::listen`
    /// with port 0 picks one), or `None` for a node started with
    /// `start_without_server`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    /// How many more messages the node's mailbox takes now.
    #[cfg(test)]
    pub(crate) fn mailbox_room(&self) -> usize {
        self.inner.tx.capacity()
    }

    /// Stops the replication server at once, without a handover: for
    /// tests that kill a node as a crash would (the peer's calls fail
    /// from now on). `shutdown` still stops the node.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn abort_server(&self) {
        if let Some(server) = self.inner.server.lock().unwrap().take() {
            server.stop.cancel();
            server.task.abort();
        }
    }

    /// The `grpc.health.v1.Health` service for this node, for an engine
    /// that serves replication on a server of its own
    /// (`start_without_server`): add it beside `ReplicationService` and
    /// Kubernetes' gRPC probes can ask it. `start` serves it already.
    ///
    /// Service `""` and `REPLICATION_SERVICE` (`walrep.v1.Replication`) are
    /// `SERVING` while the node is a primary or a standby receiving the
    /// WAL stream (a readiness probe); `LIVENESS_SERVICE` (`liveness`) is
    /// `SERVING` unless the node failed (a liveness probe: a standby cut off
    /// from its primary is alive and must not be restarted). After
    /// `shutdown` every name is `NOT_SERVING`.
    pub fn grpc_health_service(&self) -> HealthServer<tonic_health::server::HealthService> {
        super::grpc_health::service(self.subscribe())
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

    /// Pauses (`true`) or resumes (`false`) automatic failover on this
    /// node: maintenance mode. While paused, this node as a standby keeps
    /// following a primary that fell silent instead of promoting itself
    /// (`Health::note` says so); a planned switchover and a forced
    /// `promote` still work. Resumed, a standby whose primary is still
    /// silent promotes at once if it is eligible. The pause is this node's
    /// alone (pause both nodes to cover a switchover during maintenance),
    /// outlives role changes, and is forgotten when the process restarts.
    /// Returns once `Health::failover_paused` shows it.
    pub async fn set_failover_paused(&self, paused: bool) -> Result<()> {
        self.inner
            .tx
            .send(Msg::Event(crate::node::Event::FailoverPaused { paused }))
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let what = if paused {
            "pausing failover"
        } else {
            "resuming failover"
        };
        self.wait_for(Duration::from_secs(5), what, |h| {
            h.failover_paused == paused
        })
        .await
        .map(|_| ())
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
            .tell(make(tx), rx)
            .await
            .ok_or(Error::ShuttingDown)?
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
        let stopping = self
            .inner
            .stopping
            .lock()
            .unwrap()
            .get_or_insert_with(|| {
                use futures::FutureExt;
                let stop = self.inner.runtime.spawn(self.inner.clone().stop());
                async move {
                    let _ = stop.await;
                }
                .boxed()
                .shared()
            })
            .clone();
        stopping.await
    }
}

/// A node's stop under way: every `shutdown` awaits a clone.
type Stopping = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

impl Inner {
    /// Sends `msg` to the node and waits for its answer on `answer`;
    /// `None` if the node refused the message or closed its mailbox. A
    /// node that stops closes its mailbox and never reads it again, and a
    /// message that got in as it closed (its sender held room from before)
    /// can land after the mailbox was emptied: it then stays in the
    /// channel, reply and all, as long as any handle lives, so the wait
    /// ends once the mailbox is closed.
    async fn tell<T>(&self, msg: Msg, answer: oneshot::Receiver<T>) -> Option<T> {
        self.tx.send(msg).await.ok()?;
        tokio::select! {
            biased;
            answer = answer => answer.ok(),
            _ = self.tx.closed() => None,
        }
    }

    /// Stops the actor (a primary's handover first), then the server: the
    /// handover still hears its standby through it.
    async fn stop(self: Arc<Self>) {
        let (tx, rx) = oneshot::channel();
        // No answer: the node is stopping already (awaited below).
        let _ = self.tell(Msg::Shutdown { reply: tx }, rx).await;
        let actor = self.actor.lock().unwrap().take();
        if let Some(handle) = actor {
            let _ = handle.await;
        }
        let server = self.server.lock().unwrap().take();
        if let Some(server) = server {
            server.stop().await;
        }
    }
}

/// The tonic server settings walrep is tuned for: no Nagle delay, HTTP/2
/// keepalive so a partition is noticed, large flow-control windows, and a
/// bound on the streams one connection may hold open (a peer uses a
/// handful: the WAL stream, a snapshot transfer, its calls; without one, a
/// connection could open any number, each buffering up to a message).
fn tuned_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(64))
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_millis(500)))
        .http2_keepalive_timeout(Some(Duration::from_secs(1)))
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
}

/// Serves `service` on `listener` until `shutdown` resolves: what
/// `ReplicaBuilder::start` runs for a node, for an engine that started
/// one with `start_without_server` and keeps the server in its own hands.
pub async fn serve(
    service: ReplicationService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    serve_with(service, no_health(), listener, shutdown).await
}

/// No gRPC health service (`serve` and `serve_tls`, whose callers add
/// `Replica::grpc_health_service` to a server of their own if they want it).
fn no_health() -> Option<HealthServer<tonic_health::server::HealthService>> {
    None
}

type HealthServer<H> = tonic_health::pb::health_server::HealthServer<H>;

/// As `serve`, with the gRPC health service beside replication.
async fn serve_with(
    service: ReplicationService,
    health: Option<HealthServer<tonic_health::server::HealthService>>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    let service = super::grpc_health::WithHealth {
        replication: service.into_server(),
        health,
    };
    tuned_server()
        .serve_with_incoming_shutdown(
            service,
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

/// As `serve`, over mutual TLS: a connection is accepted only from a
/// certificate of `tls`'s CA naming `Config::peer_id`, and each request's
/// sender must be that identity. Refusals are counted in
/// `MetricsSnapshot::rejected` as `unauthenticated`.
#[cfg(feature = "tls")]
pub async fn serve_tls(
    service: ReplicationService,
    listener: tokio::net::TcpListener,
    tls: &crate::transport::Tls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    serve_tls_with(service, no_health(), listener, tls, shutdown).await
}

/// As `serve_tls`, with the gRPC health service beside replication: it is
/// reached over the same mutual TLS, so only a holder of a certificate
/// the node accepts (its peer's) can ask it.
#[cfg(feature = "tls")]
async fn serve_tls_with(
    service: ReplicationService,
    health: Option<HealthServer<tonic_health::server::HealthService>>,
    listener: tokio::net::TcpListener,
    tls: &crate::transport::Tls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    let service = service.requiring_peer_identity();
    let refused = service.refusal_counter();
    let service = super::grpc_health::WithHealth {
        replication: service.into_server(),
        health,
    };
    tuned_server()
        .serve_with_incoming_shutdown(
            service,
            crate::transport::tls_incoming(listener, tls.clone(), refused),
            shutdown,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write whose message is in the mailbox when the node closes it
    /// (stopping, it never reads the mailbox again) is answered
    /// `ShuttingDown`, although the mailbox itself, and so the message
    /// and its reply, live on as long as a handle does.
    #[tokio::test]
    async fn a_write_left_in_a_closed_mailbox_is_answered_shutting_down() {
        use crate::runtime::tests::{cfg, start, unreachable_peer};
        // A node's health and counters, beside a mailbox nobody reads.
        let (node, _service) = start(
            cfg(crate::config::InitialRole::Standby),
            Arc::new(crate::wal::MemWal::new()),
            unreachable_peer(),
        );
        let (tx, mut mailbox) = mpsc::channel(4);
        let replica = Replica {
            inner: Arc::new(Inner {
                tx,
                health: node.inner.health.clone(),
                metrics: node.inner.metrics.clone(),
                actor: std::sync::Mutex::new(None),
                stopping: std::sync::Mutex::new(None),
                runtime: tokio::runtime::Handle::current(),
                server: std::sync::Mutex::new(None),
                local_addr: None,
                max_record_bytes: 1 << 20,
                promote_timeout: Duration::from_secs(1),
            }),
        };
        let write = tokio::spawn({
            let r = replica.clone();
            async move { r.apply(Bytes::from_static(b"put k v")).await }
        });
        while mailbox.is_empty() {
            tokio::task::yield_now().await;
        }
        mailbox.close();
        let answer = tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("the write waited for a mailbox nobody reads")
            .unwrap();
        assert!(matches!(answer, Err(Error::ShuttingDown)), "{answer:?}");
        node.shutdown().await;
    }
}
