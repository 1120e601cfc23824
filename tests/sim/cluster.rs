//! Two walrep nodes as turmoil hosts. Each host boots from its simulated
//! disk, where only what was fsynced survives a crash.

use super::net;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use walrep::testing::MemWal;
use walrep::{CommitMode, Config, GrpcPeer, InitialRole, NodeId, OnStandbyLoss, Replica};
use walrep_daemon::kv::KvStore;

pub const PORT: u16 = 7000;
pub const NODES: [&str; 2] = ["n1", "n2"];

/// A node's disk: the WAL as the last crash left it, a directory for the
/// engine's durable snapshots (written with fsync, so a crash keeps them),
/// and the snapshot directory (a crash keeps what the process wrote: the
/// simulation's crashes are process crashes for these files; a machine
/// crash that lost part of them is caught by the transfer's CRC check).
pub struct Disk {
    wal: Mutex<Arc<MemWal>>,
    engine_dir: tempfile::TempDir,
    snapshot_dir: tempfile::TempDir,
}

impl Default for Disk {
    fn default() -> Disk {
        Disk {
            wal: Mutex::default(),
            engine_dir: tempfile::tempdir().unwrap(),
            snapshot_dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Disk {
    /// What a booting node finds: only the synced part of what it had.
    fn boot(&self) -> Arc<MemWal> {
        let mut wal = self.wal.lock().unwrap();
        let survived = Arc::new(wal.crash());
        *wal = survived.clone();
        survived
    }
}

/// A running incarnation of a node, as the client and the checker see it.
#[derive(Clone)]
pub struct Running {
    pub replica: Arc<Replica>,
    pub kv: Arc<KvStore>,
}

/// Which nodes are running now.
#[derive(Default, Clone)]
pub struct Registry(Arc<Mutex<BTreeMap<&'static str, Running>>>);

impl Registry {
    pub fn up(&self, name: &'static str, node: Running) {
        self.0.lock().unwrap().insert(name, node);
    }

    pub fn down(&self, name: &str) {
        self.0.lock().unwrap().remove(name);
    }

    pub fn running(&self) -> Vec<(&'static str, Running)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Mode {
    pub commit: CommitMode,
    pub on_standby_loss: OnStandbyLoss,
    /// The deliberately broken rule, for the test that shows the checker
    /// catches it.
    pub break_commit_rule: bool,
    /// `Config::standby_sync_inline`, as the daemon runs.
    pub standby_sync_inline: bool,
    /// A WAL that keeps little (`RESYNC_WAL_RETENTION_BYTES`) and small
    /// snapshot chunks (`RESYNC_CHUNK_BYTES`): a standby that was down
    /// for a few seconds resyncs from a snapshot of many chunks.
    pub small_wal_and_chunks: bool,
    /// Both nodes are started with `InitialRole::Primary` (an operator's
    /// mistake): the one the other confirms first takes writes, the other
    /// follows it.
    pub both_start_as_primary: bool,
}

/// `Config::wal_retention_bytes` with `Mode::small_wal_and_chunks`: a few
/// hundred of the client's writes.
pub const RESYNC_WAL_RETENTION_BYTES: u64 = 128 << 10;
/// `Config::snapshot_chunk_bytes` with `Mode::small_wal_and_chunks`.
pub const RESYNC_CHUNK_BYTES: usize = 4 << 10;

pub fn config(name: &str, mode: Mode) -> Config {
    let peer = if name == NODES[0] { NODES[1] } else { NODES[0] };
    let mut cfg = Config {
        node_id: NodeId::from(name),
        peer_id: NodeId::from(peer),
        peer_addr: format!("{peer}:{PORT}"),
        advertise_addr: format!("{name}:{PORT}"),
        cluster_id: "sim".into(),
        initial_role: if name == NODES[0] || mode.both_start_as_primary {
            InitialRole::Primary
        } else {
            InitialRole::Standby
        },
        commit_mode: mode.commit,
        on_standby_loss: mode.on_standby_loss,
        heartbeat_interval: Duration::from_millis(50),
        failover_timeout: Duration::from_millis(500),
        sync_timeout: Duration::from_millis(1000),
        rpc_timeout: Duration::from_millis(200),
        switchover_timeout: Duration::from_secs(2),
        reconnect_backoff_max: Duration::from_millis(200),
        testing_ack_before_standby_flush: mode.break_commit_rule,
        standby_sync_inline: mode.standby_sync_inline,
        ..Config::default()
    };
    if mode.small_wal_and_chunks {
        cfg.wal_retention_bytes = RESYNC_WAL_RETENTION_BYTES;
        cfg.snapshot_chunk_bytes = RESYNC_CHUNK_BYTES;
        // A stalled transfer fails (and resumes) within the fault's span.
        cfg.snapshot_timeout = Duration::from_secs(1);
    }
    cfg
}

/// Registers both nodes as hosts of `sim`.
pub fn add_hosts(
    sim: &mut turmoil::Sim<'_>,
    mode: Mode,
    disks: &[Arc<Disk>; 2],
    registry: &Registry,
) {
    for (i, name) in NODES.into_iter().enumerate() {
        let disk = disks[i].clone();
        let registry = registry.clone();
        sim.host(name, move || {
            let disk = disk.clone();
            let registry = registry.clone();
            async move {
                let cfg = config(name, mode);
                let wal = disk.boot();
                // The engine keeps its durable snapshot (written when a
                // rejoin restores one) and replays the WAL after it.
                let kv = Arc::new(KvStore::open(disk.engine_dir.path())?);
                let peer_name = cfg.peer_id.0.clone();
                let peer = GrpcPeer::from_channels(
                    net::channel(&peer_name, PORT, &cfg),
                    net::channel(&peer_name, PORT, &cfg),
                    &cfg,
                );
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                // Served below on the simulated network, hence no `listen`.
                let (replica, service) = Replica::builder(cfg, wal, kv.clone())
                    .peer(Arc::new(peer))
                    .snapshot_dir(disk.snapshot_dir.path())
                    .start_without_server()?;
                registry.up(
                    name,
                    Running {
                        replica: Arc::new(replica),
                        kv,
                    },
                );
                tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(Duration::from_millis(500)))
                    .http2_keepalive_timeout(Some(Duration::from_secs(1)))
                    .serve_with_incoming_shutdown(
                        service.into_server(),
                        net::incoming(listener),
                        std::future::pending(),
                    )
                    .await?;
                Ok(())
            }
        });
    }
}
