//! The data nodes of a scenario (a pair, or three with the arbiter) as
//! turmoil hosts. Each host boots from its simulated disk, where only what
//! was fsynced survives a crash. With an arbiter, one more host runs the
//! built-in witness over the simulated network, its register file in a
//! directory that survives its crashes.

use super::net;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use walrep::arbiter::{Register, WitnessClient, WitnessService};
use walrep::testing::MemWal;
use walrep::{
    CommitMode, Config, GrpcPeer, InitialRole, NodeId, OnStandbyLoss, PeerAddress, Replica,
};
use walrep_daemon::kv::KvStore;

pub const PORT: u16 = 7000;
/// Every data node a scenario may run; one of `Mode::data_nodes` runs the
/// first that many. The first is started as the primary.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];
pub const CLUSTER: &str = "sim";
/// The witness's host and port, with `Mode::arbiter`.
pub const WITNESS: &str = "w";
pub const WITNESS_PORT: u16 = 7010;

/// The witness's data directory. Its file is written with fsync before
/// the witness answers, and a crash of the host is a process crash, so a
/// crash keeps it; `wipe` loses it (the witness restarted from nothing).
pub struct WitnessDisk {
    dir: tempfile::TempDir,
    /// The service of the witness's running incarnation, for the checks
    /// (its file is locked while it runs, so they cannot open it).
    live: Mutex<Option<WitnessService>>,
    /// Registers that earlier incarnations found behind a version a node
    /// was answered (`WitnessStats::registers_went_back`).
    went_back_before: Mutex<u64>,
}

impl Default for WitnessDisk {
    fn default() -> WitnessDisk {
        WitnessDisk {
            dir: tempfile::tempdir().unwrap(),
            live: Mutex::default(),
            went_back_before: Mutex::default(),
        }
    }
}

impl WitnessDisk {
    /// The witness crashed: the checks let go of its service (and so of
    /// its file's lock, which the next incarnation takes).
    pub fn down(&self) {
        if let Some(service) = self.live.lock().unwrap().take() {
            *self.went_back_before.lock().unwrap() += service.stats().registers_went_back;
        }
    }

    /// How many registers the witness forgot as behind a version a node
    /// was answered, over all its incarnations. The simulation never puts
    /// an older file back, so any is a register wrongly forgotten.
    pub fn registers_went_back(&self) -> u64 {
        let live = self.live.lock().unwrap();
        let now = live.as_ref().map_or(0, |s| s.stats().registers_went_back);
        now + *self.went_back_before.lock().unwrap()
    }

    /// Empties the directory (while the witness is down).
    pub fn wipe(&self) {
        self.down();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }

    /// The witness runs and holds no register for the cluster: it lost
    /// its file and nothing re-created the register since.
    pub fn runs_without_register(&self) -> bool {
        self.live.lock().unwrap().is_some() && self.register().is_none()
    }

    /// The cluster's register as the running witness's file holds it
    /// (`None`: the witness is down or holds none).
    pub fn register(&self) -> Option<Register> {
        let live = self.live.lock().unwrap();
        let registers = live.as_ref()?.registers();
        registers
            .into_iter()
            .find(|(c, _)| c == CLUSTER)
            .map(|(_, r)| r)
    }
}

/// A node's disk: the WAL as the last crash left it, a directory for the
/// engine's durable snapshots (written with fsync, so a crash keeps them),
/// and the snapshot directory (a crash keeps what the process wrote: the
/// simulation's crashes are process crashes for these files; a machine
/// crash that lost part of them is caught by the transfer's CRC check).
#[derive(Default)]
pub struct Disk {
    wal: Mutex<Arc<MemWal>>,
    dirs: Mutex<Arc<Dirs>>,
}

/// The engine's directory and the snapshot directory of a disk.
pub struct Dirs {
    engine: tempfile::TempDir,
    snapshots: tempfile::TempDir,
}

impl Default for Dirs {
    fn default() -> Dirs {
        Dirs {
            engine: tempfile::tempdir().unwrap(),
            snapshots: tempfile::tempdir().unwrap(),
        }
    }
}

impl Disk {
    /// What a booting node finds: only the synced part of what it had.
    fn boot(&self) -> (Arc<MemWal>, Arc<Dirs>) {
        let mut wal = self.wal.lock().unwrap();
        let survived = Arc::new(wal.crash());
        *wal = survived.clone();
        (survived, self.dirs.lock().unwrap().clone())
    }

    /// The log the running incarnation writes to (its fault switches).
    pub fn wal(&self) -> Arc<MemWal> {
        self.wal.lock().unwrap().clone()
    }

    /// Empties the disk of a crashed node, as an operator wiping its data
    /// directory: the next boot finds an empty WAL and empty directories
    /// (new ones, so a late write of the crashed incarnation lands in the
    /// old).
    pub fn wipe(&self) {
        *self.wal.lock().unwrap() = Arc::default();
        *self.dirs.lock().unwrap() = Arc::default();
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
    /// Each node's `Config::arbiter` is a `WitnessClient` of the witness
    /// host.
    pub arbiter: bool,
    /// The deliberately broken arbiter rule
    /// (`Config::testing_solo_without_arbiter_swap`), for the test that
    /// shows the checker catches it.
    pub break_solo_rule: bool,
    /// How many of `NODES` run: 2, a pair; 3 (needs `arbiter`), a primary
    /// streaming to two standbys that both confirm each write.
    pub data_nodes: usize,
    /// With three nodes: the rule `ANY 1 (n1, n2, n3)`, so a write waits
    /// for one standby and a candidate must hear from the other (the
    /// quorum promotion) instead of every standby confirming each write.
    pub any_one: bool,
    /// The deliberately broken quorum promotion
    /// (`Config::testing_quorum_promotion_without_positions`), for the
    /// test that shows the checker catches it.
    pub break_quorum_rule: bool,
    /// The deliberately broken refusal of a wiped primary
    /// (`Config::testing_follow_an_unconfirmed_primary`), for the test
    /// that shows the checker catches it.
    pub break_wiped_primary_rule: bool,
    /// No request ids remembered (`Config::max_request_ids = 0`), so a
    /// retry is written again: for the test that shows G7's check
    /// catches it.
    pub break_request_ids: bool,
}

impl Mode {
    /// The common case: no broken rule, no arbiter, one primary started.
    pub const fn new(commit: CommitMode, on_standby_loss: OnStandbyLoss) -> Mode {
        Mode {
            commit,
            on_standby_loss,
            break_commit_rule: false,
            standby_sync_inline: false,
            small_wal_and_chunks: false,
            both_start_as_primary: false,
            arbiter: false,
            break_solo_rule: false,
            data_nodes: 2,
            any_one: false,
            break_quorum_rule: false,
            break_wiped_primary_rule: false,
            break_request_ids: false,
        }
    }

    /// The data nodes that run.
    pub fn nodes(&self) -> &'static [&'static str] {
        &NODES[..self.data_nodes]
    }

    /// Every host of the cluster the faults may strike: the data nodes,
    /// and the witness with `arbiter`.
    pub fn hosts(&self) -> Vec<&'static str> {
        let mut hosts = self.nodes().to_vec();
        if self.arbiter {
            hosts.push(WITNESS);
        }
        hosts
    }
}

/// `Config::wal_retention_bytes` with `Mode::small_wal_and_chunks`: a few
/// hundred of the client's writes.
pub const RESYNC_WAL_RETENTION_BYTES: u64 = 128 << 10;
/// `Config::snapshot_chunk_bytes` with `Mode::small_wal_and_chunks`.
pub const RESYNC_CHUNK_BYTES: usize = 4 << 10;

/// `name`'s configuration: its peer is the first other node, the rest
/// (with three nodes) its `more_peers`.
pub fn config(name: &str, mode: Mode) -> Config {
    let others: Vec<&str> = mode
        .nodes()
        .iter()
        .copied()
        .filter(|n| *n != name)
        .collect();
    let peer = others[0];
    let mut cfg = Config {
        node_id: NodeId::from(name),
        peer_id: NodeId::from(peer),
        peer_addr: format!("{peer}:{PORT}"),
        more_peers: others[1..]
            .iter()
            .map(|n| PeerAddress {
                id: NodeId::from(*n),
                addr: format!("{n}:{PORT}"),
            })
            .collect(),
        advertise_addr: format!("{name}:{PORT}"),
        cluster_id: CLUSTER.into(),
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
        testing_solo_without_arbiter_swap: mode.break_solo_rule,
        testing_quorum_promotion_without_positions: mode.break_quorum_rule,
        testing_follow_an_unconfirmed_primary: mode.break_wiped_primary_rule,
        standby_sync_inline: mode.standby_sync_inline,
        max_request_ids: if mode.break_request_ids {
            0
        } else {
            Config::DEFAULT_MAX_REQUEST_IDS
        },
        ..Config::default()
    };
    if mode.any_one {
        cfg.sync_standbys = Some("ANY 1 (n1, n2, n3)".parse().expect("a valid rule"));
    }
    if mode.small_wal_and_chunks {
        cfg.wal_retention_bytes = RESYNC_WAL_RETENTION_BYTES;
        cfg.snapshot_chunk_bytes = RESYNC_CHUNK_BYTES;
        // A stalled transfer fails (and resumes) within the fault's span.
        cfg.snapshot_timeout = Duration::from_secs(1);
    }
    if mode.arbiter {
        // Over a simulated channel with the peer channel's settings; made
        // inside the node's host, whose runtime the channel needs.
        let channel = net::channel(WITNESS, WITNESS_PORT, &cfg);
        let addr = format!("{WITNESS}:{WITNESS_PORT}");
        cfg.arbiter = Some(Arc::new(WitnessClient::from_channel(
            channel,
            &addr,
            cfg.rpc_timeout,
        )));
    }
    cfg
}

/// Registers the witness as the host `WITNESS` of `sim`, serving the
/// real `WitnessService` over the simulated network from `disk`.
pub fn add_witness(sim: &mut turmoil::Sim<'_>, disk: &Arc<WitnessDisk>) {
    let disk = disk.clone();
    sim.host(WITNESS, move || {
        let disk = disk.clone();
        async move {
            let service = WitnessService::open(disk.dir.path())?;
            *disk.live.lock().unwrap() = Some(service.clone());
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", WITNESS_PORT)).await?;
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

/// Registers the data nodes as hosts of `sim`, each on its disk of
/// `disks` (one per node, in the order of `Mode::nodes`).
pub fn add_hosts(sim: &mut turmoil::Sim<'_>, mode: Mode, disks: &[Arc<Disk>], registry: &Registry) {
    assert_eq!(disks.len(), mode.data_nodes, "one disk per node");
    for (i, &name) in mode.nodes().iter().enumerate() {
        let disk = disks[i].clone();
        let registry = registry.clone();
        sim.host(name, move || {
            let disk = disk.clone();
            let registry = registry.clone();
            async move {
                let cfg = config(name, mode);
                let (wal, dirs) = disk.boot();
                // The engine keeps its durable snapshot (written when a
                // rejoin restores one) and replays the WAL after it.
                let kv = Arc::new(KvStore::open(dirs.engine.path())?);
                // Each peer over simulated channels: one for data, one
                // for control.
                let peer = |id: &NodeId| {
                    Arc::new(GrpcPeer::from_channels(
                        net::channel(&id.0, PORT, &cfg),
                        net::channel(&id.0, PORT, &cfg),
                        &cfg,
                    ))
                };
                let mut builder = Replica::builder(cfg.clone(), wal, kv.clone())
                    .peer(peer(&cfg.peer_id))
                    .snapshot_dir(dirs.snapshots.path());
                for more in &cfg.more_peers {
                    builder = builder.more_peer(more.id.clone(), peer(&more.id));
                }
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                // Served below on the simulated network, hence no `listen`.
                let (replica, service) = builder.start_without_server()?;
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
