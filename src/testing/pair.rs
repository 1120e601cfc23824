//! `Pair`: a primary and a standby in one process, over the real transport,
//! for an engine's own tests.

use super::Link;
use crate::config::{CommitMode, Config, InitialRole};
use crate::error::{Error, Result};
use crate::node::RoleKind;
use crate::replicator::{Health, Replicator};
use crate::runtime::Replica;
use crate::state_machine::StateMachine;
use crate::transport::GrpcPeer;
use crate::types::NodeId;
use crate::wal::{FileWal, FileWalOptions, MemWal, WalStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// Which WAL a [`Pair`]'s nodes keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PairWal {
    /// A [`MemWal`]: [`Pair::kill`] keeps only what was fsynced, as a
    /// machine crash would. It says it may block (`WalStore::may_block`),
    /// as a disk does, so the engine's applies, snapshots and restores run
    /// on blocking threads as they would with a [`FileWal`]: a slow engine
    /// delays no heartbeat in a test either.
    #[default]
    Mem,
    /// A [`FileWal`] in the node's directory: [`Pair::restart`] reopens it
    /// and recovers it like a real restart.
    File,
}

type MakeEngine<S> = Box<dyn Fn(&NodeId) -> Arc<S> + Send + Sync>;
type Tweak = Box<dyn Fn(&mut Config) + Send + Sync>;
type PrepareLink = Box<dyn FnOnce(&Link) + Send>;

/// Builds a [`Pair`]: `Pair::builder(make_engine)`, then `start`.
pub struct PairBuilder<S> {
    make_engine: MakeEngine<S>,
    wal: PairWal,
    commit_mode: CommitMode,
    tweak: Option<Tweak>,
    wait: Duration,
    nodes: usize,
}

impl<S: StateMachine + 'static> PairBuilder<S> {
    /// How many data nodes (default 2): `a` the primary, `b`, `c`, ... its
    /// standbys, each knowing every other (`Config::more_peers`). With
    /// more than two, the nodes share a [`MemArbiter`](crate::arbiter::MemArbiter)
    /// (a cluster with several standbys needs one) and the default rule,
    /// which waits for every standby. At least 2, at most 26.
    pub fn nodes(mut self, nodes: usize) -> Self {
        assert!((2..=26).contains(&nodes), "a Pair has 2 to 26 nodes");
        self.nodes = nodes;
        self
    }

    /// The WAL the nodes keep (default [`PairWal::Mem`]).
    pub fn wal(mut self, wal: PairWal) -> Self {
        self.wal = wal;
        self
    }

    /// Both nodes' `Config::commit_mode` (default `remote-flush`).
    pub fn commit_mode(mut self, mode: CommitMode) -> Self {
        self.commit_mode = mode;
        self
    }

    /// Changes each node's `Config` before it starts (it sees `node_id`,
    /// the addresses and the test timings [`test_config`] sets). It is
    /// applied once, when the nodes are laid out; every [`Pair::restart`]
    /// starts a node with the configuration it made.
    pub fn config(mut self, tweak: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        self.tweak = Some(Box::new(tweak));
        self
    }

    /// How long the `wait_*` helpers wait before they fail (default 20 s,
    /// for a loaded CI machine).
    pub fn wait_timeout(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Starts the nodes (`a`, the primary, and `b`, its standby), each
    /// served on its own `127.0.0.1` port, and returns at once: call
    /// [`Pair::wait_streaming`] before writing.
    pub async fn start(self) -> Result<Pair<S>> {
        let ids: Vec<NodeId> = (b'a'..)
            .take(self.nodes)
            .map(|c| NodeId::from((c as char).to_string().as_str()))
            .collect();
        let arbiter: Option<Arc<dyn crate::arbiter::Arbiter>> = (self.nodes > 2).then(|| {
            Arc::new(crate::arbiter::MemArbiter::new()) as Arc<dyn crate::arbiter::Arbiter>
        });
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for _ in &ids {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| io("binding 127.0.0.1:0", e))?;
            addrs.push(l.local_addr().map_err(|e| io("a listener's address", e))?);
            listeners.push(l);
        }
        let dir = TempDir::new()?;
        // Its own cluster id: a port a killed node freed may be taken by
        // another test's node of the same name, which must then be refused
        // as another cluster's, not taken for the peer.
        static PAIRS: AtomicU64 = AtomicU64::new(0);
        let cluster_id = format!(
            "test-{}-{}",
            std::process::id(),
            PAIRS.fetch_add(1, Ordering::Relaxed)
        );
        let nodes = listeners
            .into_iter()
            .enumerate()
            .map(|(i, listener)| {
                // Node `a` is the primary, every other node its standby.
                let peer = if i == 0 { 1 } else { 0 };
                let mut cfg = test_config(&ids[i], &ids[peer], addrs[i], addrs[peer]);
                cfg.cluster_id = cluster_id.clone();
                cfg.commit_mode = self.commit_mode;
                cfg.more_peers = (0..ids.len())
                    .filter(|&j| j != i && j != peer)
                    .map(|j| crate::config::PeerAddress {
                        id: ids[j].clone(),
                        addr: addrs[j].to_string(),
                    })
                    .collect();
                cfg.arbiter = arbiter.clone();
                cfg.initial_role = if i == 0 {
                    InitialRole::Primary
                } else {
                    InitialRole::Standby
                };
                if let Some(tweak) = &self.tweak {
                    tweak(&mut cfg);
                }
                PairNode {
                    dir: dir.path().join(&ids[i].0),
                    cfg,
                    wait: self.wait,
                    mem_wal: None,
                    running: None,
                    pending_listener: Some(listener),
                    prepare_link: None,
                }
            })
            .collect();
        let mut pair = Pair {
            nodes,
            make_engine: self.make_engine,
            wal: self.wal,
            wait: self.wait,
            dir,
        };
        for i in 0..pair.nodes.len() {
            pair.launch(i).await?;
        }
        Ok(pair)
    }
}

/// A primary `a` and a standby `b` in this process, over the real
/// transport (tonic on `127.0.0.1`, each node serving on a server its
/// `Replica` owns), each with its
/// own WAL in a temporary directory and its own engine from
/// `make_engine`. For an engine's tests: write on the primary, read on the
/// standby, kill and restart nodes, fail over.
///
/// Nodes are kept in a list so that more can come later; address them by
/// [`NodeId`] or through [`Pair::primary`] and [`Pair::standby`]. Dropping
/// the `Pair` stops the servers, shuts the nodes down in the background
/// and removes the temporary directory; [`Pair::shutdown`] waits for the
/// nodes. Built with the `testing` feature; walrep's own tests run it on
/// a multi-threaded tokio runtime (`flavor = "multi_thread"`).
///
/// ```no_run
/// use std::sync::Arc;
/// use walrep::testing::{MemStateMachine, Pair};
/// use walrep::{Lsn, Replicator};
///
/// # async fn test() -> walrep::Result<()> {
/// let pair = Pair::start(|_id| Arc::new(MemStateMachine::new())).await?;
/// pair.wait_streaming().await?;
/// let applied = pair.primary().replica().apply("put k v".into()).await?;
/// // Read your writes on the standby:
/// pair.standby().replica().wait_for_lsn(applied.lsn, pair.wait_timeout()).await?;
/// assert_eq!(
///     pair.standby().engine().state_hash(),
///     pair.primary().engine().state_hash()
/// );
/// # Ok(())
/// # }
/// ```
pub struct Pair<S> {
    nodes: Vec<PairNode<S>>,
    make_engine: MakeEngine<S>,
    wal: PairWal,
    wait: Duration,
    dir: TempDir,
}

/// One node of a [`Pair`]: its configuration and, while it runs, its
/// `Replica` and engine.
pub struct PairNode<S> {
    cfg: Config,
    dir: PathBuf,
    wait: Duration,
    /// What a killed `MemWal` node kept, for its restart.
    mem_wal: Option<Arc<MemWal>>,
    running: Option<Running<S>>,
    /// The listener bound before the configs were known (first start).
    pending_listener: Option<TcpListener>,
    /// Called on the link of the node's next start.
    prepare_link: Option<PrepareLink>,
}

struct Running<S> {
    replica: Arc<Replica>,
    engine: Arc<S>,
    wal: Arc<dyn WalStore>,
    /// The same WAL when it is a `MemWal`, for `kill`.
    mem: Option<Arc<MemWal>>,
    link: Arc<Link>,
    /// The links to the other nodes of a cluster (`Config::more_peers`).
    more_links: std::collections::BTreeMap<NodeId, Arc<Link>>,
}

impl<S: StateMachine + 'static> Pair<S> {
    /// A builder, for a WAL kind, commit mode or config change other than
    /// the defaults; `make_engine` makes a node's engine at each (re)start.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use walrep::testing::{MemStateMachine, Pair, PairWal};
    /// use walrep::{CommitMode, NodeId, Replicator, RoleKind};
    ///
    /// # async fn test() -> walrep::Result<()> {
    /// let mut pair = Pair::builder(|_id| Arc::new(MemStateMachine::new()))
    ///     .wal(PairWal::File)
    ///     .commit_mode(CommitMode::RemoteApply)
    ///     .config(|cfg| cfg.sync_timeout = Duration::from_secs(2))
    ///     .start()
    ///     .await?;
    /// pair.wait_streaming().await?;
    /// pair.primary().replica().apply("x".into()).await?;
    /// // The standby takes over; the old primary comes back as its standby.
    /// let b = pair.failover().await?;
    /// pair.restart(&NodeId::from("a")).await?;
    /// pair.wait_streaming().await?;
    /// assert_eq!(pair.node(&b).replica().role(), RoleKind::Primary);
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(
        make_engine: impl Fn(&NodeId) -> Arc<S> + Send + Sync + 'static,
    ) -> PairBuilder<S> {
        PairBuilder {
            make_engine: Box::new(make_engine),
            wal: PairWal::Mem,
            commit_mode: CommitMode::RemoteFlush,
            tweak: None,
            wait: Duration::from_secs(20),
            nodes: 2,
        }
    }

    /// Starts a pair with the defaults: `MemWal`s, `remote-flush`, test
    /// timings. `make_engine` is called at each node's (re)start; an engine
    /// with durable state opens it from a directory it keys by the id.
    pub async fn start(
        make_engine: impl Fn(&NodeId) -> Arc<S> + Send + Sync + 'static,
    ) -> Result<Pair<S>> {
        Pair::builder(make_engine).start().await
    }

    /// Starts node `i` (its listener already bound on the first start).
    async fn launch(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let cfg = node.cfg.clone();
        let listener = match node.pending_listener.take() {
            Some(l) => l,
            None => rebind(&node.cfg.advertise_addr).await?,
        };
        let (wal, mem): (Arc<dyn WalStore>, _) = match self.wal {
            PairWal::Mem => {
                let mem = node.mem_wal.take().unwrap_or_default();
                mem.set_may_block(true);
                (mem.clone(), Some(mem))
            }
            PairWal::File => {
                let wal = FileWal::open(node.dir.join("wal"), FileWalOptions::default())?;
                (Arc::new(wal), None)
            }
        };
        let engine = (self.make_engine)(&cfg.node_id);
        let link = Link::new(GrpcPeer::connect_lazy(&cfg)?);
        if let Some(prepare) = node.prepare_link.take() {
            prepare(&link);
        }
        // The snapshot directory outlives the node, as a data directory
        // would: a restarted standby resumes a transfer it had begun.
        let mut more_links = std::collections::BTreeMap::new();
        for other in &cfg.more_peers {
            let l = Link::new(GrpcPeer::connect_lazy_to(&other.addr, &cfg)?);
            more_links.insert(other.id.clone(), l);
        }
        let mut builder = Replica::builder(cfg, wal.clone(), engine.clone());
        for (id, l) in &more_links {
            builder = builder.more_peer(id.clone(), l.clone());
        }
        let replica = builder
            .peer(link.clone())
            .rewound_dir(node.dir.join("rewound"))
            .snapshot_dir(node.dir.join("snapshots"))
            .serve_on(listener)
            .start()?;
        node.running = Some(Running {
            replica: Arc::new(replica),
            engine,
            wal,
            mem,
            link,
            more_links,
        });
        Ok(())
    }
}

impl<S> Pair<S> {
    /// Every node, in start order (`a` first).
    pub fn nodes(&self) -> &[PairNode<S>] {
        &self.nodes
    }

    /// The node `id`. Panics if there is none.
    pub fn node(&self, id: &NodeId) -> &PairNode<S> {
        &self.nodes[self.index(id)]
    }

    fn index(&self, id: &NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| &n.cfg.node_id == id)
            .unwrap_or_else(|| panic!("Pair has no node {id}"))
    }

    /// The running node whose role is primary now. Panics if none is
    /// (call [`Pair::wait_streaming`] or [`Pair::failover`] first).
    pub fn primary(&self) -> &PairNode<S> {
        self.with_role(RoleKind::Primary)
    }

    /// The running node whose role is standby now. Panics if none is.
    pub fn standby(&self) -> &PairNode<S> {
        self.with_role(RoleKind::Standby)
    }

    fn with_role(&self, role: RoleKind) -> &PairNode<S> {
        self.nodes
            .iter()
            .find(|n| n.running.as_ref().is_some_and(|r| r.replica.role() == role))
            .unwrap_or_else(|| panic!("no running node is {role:?} now"))
    }

    /// How long the `wait_*` helpers wait (`PairBuilder::wait_timeout`);
    /// handy for `wait_for_lsn`.
    pub fn wait_timeout(&self) -> Duration {
        self.wait
    }

    /// The directory the nodes' files are in (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until a primary accepts writes and streams to a standby that
    /// is in contact (eligible to take over, or in `async` mode following
    /// the primary). Waits on the nodes' health `watch`, never sleeps.
    pub async fn wait_streaming(&self) -> Result<()> {
        let primary = self
            .wait_any("a writable primary streaming to its standby", |h| {
                h.role == RoleKind::Primary
                    && h.writable
                    && h.peer.connected
                    && h.standbys.iter().all(|s| s.connected)
            })
            .await?;
        for node in self.nodes.iter().filter(|n| n.running.is_some()) {
            if node.cfg.node_id == primary.cfg.node_id {
                continue;
            }
            node.wait("standby in contact with its primary", |h| {
                h.role == RoleKind::Standby
                    && (h.eligible || h.commit_mode == CommitMode::Async && h.leader.is_some())
            })
            .await?;
        }
        Ok(())
    }

    /// Waits until some running node satisfies `pred`; returns it.
    async fn wait_any(&self, what: &str, pred: impl Fn(&Health) -> bool) -> Result<&PairNode<S>> {
        let running: Vec<&PairNode<S>> =
            self.nodes.iter().filter(|n| n.running.is_some()).collect();
        if running.is_empty() {
            return Err(Error::Timeout(format!("{what}: no node is running")));
        }
        let waits = running.iter().map(|n| {
            let mut rx = n.running().replica.subscribe();
            let pred = &pred;
            Box::pin(async move { rx.wait_for(|h| pred(h)).await.map(|_| *n) })
        });
        match tokio::time::timeout(self.wait, futures::future::select_ok(waits)).await {
            Ok(Ok((node, _))) => Ok(node),
            Ok(Err(_)) => Err(Error::ShuttingDown),
            Err(_) => {
                // What each node was instead, as `Replica::wait_for` says.
                let nodes: Vec<String> = running
                    .iter()
                    .map(|n| {
                        let h = n.running().replica.health();
                        format!(
                            "{} {:?} at epoch {}{}",
                            n.id(),
                            h.role,
                            h.epoch,
                            h.note.map(|note| format!(" ({note})")).unwrap_or_default()
                        )
                    })
                    .collect();
                Err(Error::Timeout(format!(
                    "{what} did not happen within {:?}: {}",
                    self.wait,
                    nodes.join("; ")
                )))
            }
        }
    }

    /// Stops node `id` as a crash would: its server goes away, its link to
    /// the peer is cut, and its WAL keeps only what was fsynced (`MemWal`)
    /// or what is on disk (`FileWal`). Its engine is dropped; `restart`
    /// makes a new one. Panics if the node is not running.
    pub async fn kill(&mut self, id: &NodeId) {
        let i = self.index(id);
        let node = &mut self.nodes[i];
        let running = node
            .running
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        running.link.set_cut(true);
        for l in running.more_links.values() {
            l.set_cut(true);
        }
        running.replica.abort_server();
        if let Some(mem) = &running.mem {
            // The crash point: from here the dying node (its open streams
            // still run until its shutdown ends them) makes nothing more
            // durable, so it can acknowledge nothing its restart lacks.
            mem.hold_syncs(true);
            mem.fail_meta_writes(true);
            node.mem_wal = Some(Arc::new(mem.crash()));
        }
        running.replica.shutdown().await;
    }

    /// Kills the primary and waits until the other node promoted itself
    /// and accepts writes; returns the new primary's id.
    pub async fn failover(&mut self) -> Result<NodeId> {
        let old = self.primary().cfg.node_id.clone();
        self.kill(&old).await;
        let new = self
            .wait_any("a standby promoted and writable", |h| {
                h.role == RoleKind::Primary && h.writable
            })
            .await?;
        Ok(new.cfg.node_id.clone())
    }

    /// Cuts (`true`) or restores node `id`'s calls to its peer: they fail
    /// as a dead network would and its open WAL stream ends. The peer's
    /// calls to `id` are not cut; cut both for a full partition.
    pub fn set_link_cut(&self, id: &NodeId, cut: bool) {
        self.node(id).running().link.set_cut(cut);
    }

    /// Cuts (`true`) or restores node `id`'s calls to node `to` alone
    /// (any node of a cluster; `set_link_cut` is the link to `peer_id`).
    pub fn set_link_cut_to(&self, id: &NodeId, to: &NodeId, cut: bool) {
        let running = self.node(id).running();
        if *to == self.node(id).cfg.peer_id {
            running.link.set_cut(cut);
        } else {
            running
                .more_links
                .get(to)
                .unwrap_or_else(|| panic!("{to} is not a peer of {id}"))
                .set_cut(cut);
        }
    }

    /// Shuts every running node down cleanly (`Replicator::shutdown`,
    /// which also stops its server). Each keeps its WAL: a later
    /// [`Pair::restart`] starts from it.
    pub async fn shutdown(&mut self) {
        for node in &mut self.nodes {
            if let Some(running) = node.running.take() {
                running.replica.shutdown().await;
                if let Some(mem) = &running.mem {
                    node.mem_wal = Some(Arc::new(mem.crash()));
                }
            }
        }
    }
}

impl<S> Drop for Running<S> {
    fn drop(&mut self) {
        self.replica.abort_server();
        // The node's tasks run until told to stop.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let replica = self.replica.clone();
            rt.spawn(async move { replica.shutdown().await });
        }
    }
}

impl<S: StateMachine + 'static> Pair<S> {
    /// Starts node `id` again from the WAL it kept, with a new engine from
    /// `make_engine`, on the same address. Panics if it is running.
    pub async fn restart(&mut self, id: &NodeId) -> Result<()> {
        let i = self.index(id);
        assert!(self.nodes[i].running.is_none(), "node {id} is running");
        self.launch(i).await
    }

    /// [`Pair::restart`], with the node's configuration changed by `tweak`
    /// first (e.g. an operator's edit between two runs).
    pub async fn restart_with_config(
        &mut self,
        id: &NodeId,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<()> {
        let i = self.index(id);
        tweak(&mut self.nodes[i].cfg);
        self.restart(id).await
    }

    /// [`Pair::restart`], with `prepare` called on the node's new [`Link`]
    /// before the node starts, so a fault set there (e.g.
    /// [`Link::cut_link_after_snapshot_chunks`]) cannot miss the node's
    /// first calls.
    pub async fn restart_with_link(
        &mut self,
        id: &NodeId,
        prepare: impl FnOnce(&Link) + Send + 'static,
    ) -> Result<()> {
        let i = self.index(id);
        self.nodes[i].prepare_link = Some(Box::new(prepare));
        self.restart(id).await
    }
}

impl<S> PairNode<S> {
    /// The node's id (`a`, `b`).
    pub fn id(&self) -> &NodeId {
        &self.cfg.node_id
    }

    /// The node's configuration: the builder's `config` hook applied, and
    /// any [`Pair::restart_with_config`] edit.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether the node runs (it was not killed, or was restarted).
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    fn running(&self) -> &Running<S> {
        self.running
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is not running", self.cfg.node_id))
    }

    /// The node's `Replica`. Panics if the node is not running.
    pub fn replica(&self) -> &Arc<Replica> {
        &self.running().replica
    }

    /// The node's engine. Panics if the node is not running.
    pub fn engine(&self) -> &Arc<S> {
        &self.running().engine
    }

    /// The node's WAL. Panics if the node is not running.
    pub fn wal(&self) -> &Arc<dyn WalStore> {
        &self.running().wal
    }

    /// The node's WAL as the `MemWal` it is ([`PairWal::Mem`], the
    /// default), for its fault knobs; `None` on files. Panics if the node
    /// is not running.
    pub fn mem_wal(&self) -> Option<&Arc<MemWal>> {
        self.running().mem.as_ref()
    }

    /// The node's link to its peer (its faults, its snapshot requests).
    /// Panics if the node is not running.
    pub fn link(&self) -> &Arc<Link> {
        &self.running().link
    }

    /// Waits on the node's health `watch` until `pred` holds.
    pub async fn wait(&self, what: &str, pred: impl FnMut(&Health) -> bool) -> Result<Health> {
        self.replica()
            .wait_for(self.wait, &format!("{}: {what}", self.cfg.node_id), pred)
            .await
    }
}

/// The test timings a [`Pair`] starts from: fast enough to keep tests
/// short, slow enough for a loaded 2-core CI machine.
pub fn test_config(id: &NodeId, peer: &NodeId, me: SocketAddr, peer_addr: SocketAddr) -> Config {
    Config {
        node_id: id.clone(),
        peer_id: peer.clone(),
        peer_addr: peer_addr.to_string(),
        advertise_addr: me.to_string(),
        cluster_id: "test".into(),
        heartbeat_interval: Duration::from_millis(50),
        failover_timeout: Duration::from_millis(500),
        sync_timeout: Duration::from_secs(1),
        rpc_timeout: Duration::from_millis(300),
        switchover_timeout: Duration::from_secs(3),
        ..Config::default()
    }
}

/// Binds `addr` again for a restarted node: the port may still be held by
/// the previous incarnation for a moment, so it retries for up to 5 s.
pub async fn rebind(addr: &str) -> Result<TcpListener> {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(io(&format!("binding {addr}"), last.expect("tried")))
}

fn io(what: &str, source: std::io::Error) -> Error {
    Error::Io {
        what: what.to_string(),
        source,
    }
}

/// A directory under the system's temporary directory, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    /// `walrep-<what>-<pid>-<n>`, created empty.
    pub(super) fn named(what: &str) -> Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "walrep-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .map_err(|e| io(&format!("creating the {what} directory"), e))?;
        Ok(TempDir(path))
    }

    fn new() -> Result<TempDir> {
        TempDir::named("pair")
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Replicator;
    use crate::testing::MemStateMachine;
    use crate::types::{Lsn, Record};
    use bytes::Bytes;

    fn engine(_: &NodeId) -> Arc<MemStateMachine> {
        Arc::new(MemStateMachine::new())
    }

    /// A pair shut down cleanly and started again comes back with every
    /// write: each node starts from the WAL it kept, not an empty one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pair_shut_down_and_restarted_keeps_its_writes() {
        let mut pair = Pair::start(engine).await.unwrap();
        pair.wait_streaming().await.unwrap();
        let mut last = Lsn::ZERO;
        for i in 0..10u8 {
            last = pair
                .primary()
                .replica()
                .apply(Bytes::from(vec![i]))
                .await
                .unwrap()
                .lsn;
        }
        let hash = pair.primary().engine().state_hash();
        pair.shutdown().await;
        for id in ["a", "b"] {
            pair.restart(&NodeId::from(id)).await.unwrap();
        }
        pair.wait_streaming().await.unwrap();
        for node in pair.nodes() {
            node.replica()
                .wait_for_lsn(last, pair.wait_timeout())
                .await
                .unwrap();
            assert_eq!(
                node.engine().state_hash(),
                hash,
                "{} lost writes",
                node.id()
            );
        }
        pair.shutdown().await;
    }

    /// A killed node's crash image is its disk at the kill: the dying
    /// node, whose open streams and in-flight fsyncs go on until its
    /// shutdown ends them, makes nothing durable after that point, so it
    /// cannot acknowledge a record its restart would lack. The window is
    /// too short to hit reliably with real writes, so the test plays the
    /// late fsync itself on the old disk once the kill returned, under
    /// writes that flow throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_node_makes_nothing_durable_after_its_crash_image() {
        let mut pair = Pair::start(engine).await.unwrap();
        pair.wait_streaming().await.unwrap();
        let writes: Vec<_> = (0..16u32)
            .map(|w| {
                let primary = pair.primary().replica().clone();
                tokio::spawn(async move {
                    for i in 0..1_000_000u32 {
                        let write = Bytes::from([w.to_le_bytes(), i.to_le_bytes()].concat());
                        if primary.apply(write).await.is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        let b = NodeId::from("b");
        pair.node(&b)
            .wait("applying the stream", |h| h.applied_lsn >= Lsn(200))
            .await
            .unwrap();
        let old = pair.node(&b).mem_wal().unwrap().clone();
        pair.kill(&b).await;
        let image = pair.nodes[1].mem_wal.clone().expect("the crash image");
        let late = Record::new(
            old.last_lsn().next(),
            old.history().last_epoch().unwrap(),
            Bytes::from_static(b"late"),
        );
        old.append(&[late]).unwrap();
        old.sync().unwrap();
        assert_eq!(
            old.flushed_lsn(),
            image.last_lsn(),
            "the killed node fsynced past its crash image"
        );
        assert!(image.may_block(), "the image is still a disk");
        for w in writes {
            w.abort();
        }
        pair.shutdown().await;
    }
}
