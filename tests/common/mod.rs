//! Two walrep nodes in one process over real tonic on 127.0.0.1, with links
//! the test can cut, and the KV engine as state machine.
#![allow(dead_code)]

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use walrep::testing::{Link, MemWal, test_config};
use walrep::{
    CommitMode, Config, GrpcPeer, Health, InitialRole, NodeId, Replica, Replicator, RoleKind,
    WalStore,
};
use walrep_daemon::kv::{Command, KvStore};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "walrep=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// `walrep::testing::Pair`'s test timings, for a node `id` of a pair whose
/// primary is `a`.
pub fn config(
    id: &str,
    peer: &str,
    me: SocketAddr,
    peer_addr: SocketAddr,
    mode: CommitMode,
) -> Config {
    Config {
        initial_role: if id == "a" {
            InitialRole::Primary
        } else {
            InitialRole::Standby
        },
        commit_mode: mode,
        ..test_config(&NodeId::from(id), &NodeId::from(peer), me, peer_addr)
    }
}

/// The KV engine as the replicator sees it, with hooks on its snapshots:
/// a delay (an engine slow to build one) and a count of builds.
pub struct Engine {
    pub kv: Arc<KvStore>,
    pub snapshot_delay: std::sync::Mutex<Duration>,
    pub snapshots: std::sync::atomic::AtomicU64,
}

impl walrep::StateMachine for Engine {
    fn apply(&self, lsn: walrep::Lsn, payload: &[u8]) -> Result<(), walrep::StateMachineError> {
        self.kv.apply(lsn, payload)
    }
    fn applied_lsn(&self) -> walrep::Lsn {
        self.kv.applied_lsn()
    }
    fn durable_lsn(&self) -> walrep::Lsn {
        self.kv.durable_lsn()
    }
    fn snapshot(
        &self,
        out: &mut dyn std::io::Write,
    ) -> Result<walrep::Lsn, walrep::StateMachineError> {
        self.snapshots
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // The engine's own slowness (this runs on a blocking thread).
        std::thread::sleep(*self.snapshot_delay.lock().unwrap());
        self.kv.snapshot(out)
    }
    fn restore(
        &self,
        lsn: walrep::Lsn,
        input: &mut dyn std::io::Read,
    ) -> Result<(), walrep::StateMachineError> {
        self.kv.restore(lsn, input)
    }
}

pub struct TestNode {
    pub cfg: Config,
    pub replica: Arc<Replica>,
    pub kv: Arc<KvStore>,
    pub engine: Arc<Engine>,
    pub wal: Arc<MemWal>,
    pub link: Arc<Link>,
    pub addr: SocketAddr,
    pub kv_dir: std::path::PathBuf,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestNode {
    pub async fn start(cfg: Config, wal: Arc<MemWal>, kv_dir: std::path::PathBuf) -> TestNode {
        let link = Link::new(GrpcPeer::connect_lazy(&cfg).unwrap());
        TestNode::start_linked(cfg, wal, kv_dir, link).await
    }

    /// `start` with a link the test prepared (to cut a snapshot transfer).
    pub async fn start_linked(
        cfg: Config,
        wal: Arc<MemWal>,
        kv_dir: std::path::PathBuf,
        link: Arc<Link>,
    ) -> TestNode {
        let kv = Arc::new(KvStore::open(&kv_dir).unwrap());
        let engine = Arc::new(Engine {
            kv: kv.clone(),
            snapshot_delay: Default::default(),
            snapshots: Default::default(),
        });
        let addr: SocketAddr = cfg.advertise_addr.parse().unwrap();
        let listener = walrep::testing::rebind(&addr.to_string()).await.unwrap();
        let (replica, service) = Replica::builder(cfg.clone(), wal.clone(), engine.clone())
            .snapshot_dir(kv_dir.join("snapshots"))
            .peer(link.clone())
            .start_without_server()
            .expect("node starts");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            walrep::serve(service, listener, async {
                let _ = stop_rx.await;
            })
            .await
            .expect("server runs");
        });
        TestNode {
            cfg,
            replica: Arc::new(replica),
            kv,
            engine,
            wal,
            link,
            addr,
            kv_dir,
            server: Some((stop_tx, server)),
        }
    }

    /// Stops the node as a crash would, keeping only what was fsynced.
    pub async fn crash(mut self) -> (Config, Arc<MemWal>, std::path::PathBuf) {
        self.link.set_cut(true);
        if let Some((stop, handle)) = self.server.take() {
            let _ = stop.send(());
            handle.abort();
            let _ = handle.await;
        }
        let survived = Arc::new(self.wal.crash());
        self.replica.shutdown().await;
        // The engine keeps only its durable snapshot; it replays the rest
        // from the WAL.
        (self.cfg, survived, self.kv_dir)
    }

    pub fn health(&self) -> Health {
        self.replica.health()
    }

    pub async fn wait(&self, what: &str, pred: impl FnMut(&Health) -> bool) -> Health {
        self.replica
            .wait_for(WAIT, &format!("{}: {what}", self.cfg.node_id), pred)
            .await
            .unwrap()
    }

    pub async fn put(&self, key: &str, value: &str) -> walrep::Result<walrep::Applied> {
        self.replica.apply(put_cmd(key, value)).await
    }
}

/// Puts `k0`..`k{count-1}` (value `v`) on `replica`; returns the last LSN.
pub async fn put_keys(replica: &Replica, count: usize) -> walrep::Lsn {
    let mut last = walrep::Lsn(0);
    for i in 0..count {
        last = replica
            .apply(put_cmd(&format!("k{i}"), "v"))
            .await
            .unwrap()
            .lsn;
    }
    last
}

pub fn put_cmd(key: &str, value: &str) -> Bytes {
    Bytes::from(
        Command::Put {
            key: key.as_bytes().to_vec(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
        .encode(),
    )
}

pub fn temp_dir() -> std::path::PathBuf {
    tempfile::tempdir().unwrap().keep()
}

pub async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A primary `a` and a standby `b`, streaming.
pub async fn pair(mode: CommitMode) -> (TestNode, TestNode) {
    pair_with(mode, |_| {}).await
}

pub async fn pair_with(mode: CommitMode, tweak: impl Fn(&mut Config)) -> (TestNode, TestNode) {
    init_tracing();
    let (addr_a, addr_b) = (free_addr().await, free_addr().await);
    let mut cfg_a = config("a", "b", addr_a, addr_b, mode);
    let mut cfg_b = config("b", "a", addr_b, addr_a, mode);
    tweak(&mut cfg_a);
    tweak(&mut cfg_b);
    let a = TestNode::start(cfg_a, Arc::new(MemWal::new()), temp_dir()).await;
    let b = TestNode::start(cfg_b, Arc::new(MemWal::new()), temp_dir()).await;
    a.wait("primary", |h| h.role == RoleKind::Primary && h.writable)
        .await;
    b.wait("standby in contact", |h| {
        h.role == RoleKind::Standby && h.eligible
            || mode == CommitMode::Async && h.role == RoleKind::Standby && h.leader.is_some()
    })
    .await;
    a.wait("stream up", |h| h.peer.connected).await;
    (a, b)
}

/// Waits until both nodes have applied the same LSN and returns their hashes.
pub async fn converged(a: &TestNode, b: &TestNode) -> (u64, u64) {
    let target = a.health().last_lsn.max(b.health().last_lsn);
    a.wait("applied everything", |h| h.applied_lsn >= target)
        .await;
    b.wait("applied everything", |h| h.applied_lsn >= target)
        .await;
    (a.kv.state_hash(), b.kv.state_hash())
}

pub fn wal_last(wal: &MemWal) -> walrep::Lsn {
    wal.last_lsn()
}
