//! Two `walrep node` child processes on loopback, n1 the primary and n2
//! the standby of a fresh pair: what `walrep demo` and the `walrep bench-*`
//! commands run against, and the daemon's tests too (which put proxies on
//! the peer links, or pick other timings).

use super::api::HealthReport;
use super::error::DaemonError;
pub use super::process::{Flags, Launch, NodeProc, free_ports, with};
use std::path::{Path, PathBuf};
use std::time::Duration;
use walrep::CommitMode;

/// Longest wait for any one step (start, rejoin, catch-up) unless a caller
/// says otherwise.
pub const STEP: Duration = Duration::from_secs(60);

/// The settings both nodes of a pair share.
#[derive(Clone, Debug)]
pub struct PairOptions {
    pub commit_mode: CommitMode,
    pub heartbeat_ms: u64,
    pub failover_timeout_ms: u64,
    pub cluster_id: &'static str,
    /// More `walrep node` settings, by name (`sync_timeout_ms`, ...); each
    /// replaces the one of its name, the commit mode and timings above too.
    pub extra: Vec<(&'static str, String)>,
    pub launch: Launch,
}

/// One node of a pair, as its flags need it.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: &'static str,
    pub peer_id: &'static str,
    pub role: &'static str,
    pub grpc: u16,
    /// 0: the node picks a port (and advertises the one it got).
    pub http: u16,
    /// Where it dials its peer: the peer's gRPC address, or a proxy to it.
    pub peer: String,
}

/// The flags of one node of a pair, its data in `dir/<id>`.
pub fn node_flags(o: &PairOptions, dir: &Path, n: &NodeSpec) -> Flags {
    let flags = vec![
        ("id", n.id.to_string()),
        ("peer_id", n.peer_id.to_string()),
        ("data_dir", dir.join(n.id).display().to_string()),
        ("listen", format!("127.0.0.1:{}", n.grpc)),
        ("http", format!("127.0.0.1:{}", n.http)),
        ("peer", n.peer.clone()),
        ("role", n.role.to_string()),
        ("cluster_id", o.cluster_id.to_string()),
        ("commit_mode", o.commit_mode.as_str().to_string()),
        ("heartbeat_ms", o.heartbeat_ms.to_string()),
        ("failover_timeout_ms", o.failover_timeout_ms.to_string()),
    ];
    with(flags, &o.extra)
}

/// The ports of a pair: `grpc[i]` and `http[i]` are node i's, `peer[i]`
/// the address node i dials for the other.
#[derive(Clone, Debug)]
pub struct PairPorts {
    pub grpc: [u16; 2],
    pub http: [u16; 2],
    pub peer: [String; 2],
}

impl PairPorts {
    /// Four free loopback ports, each node dialing the other directly.
    pub fn free() -> Result<PairPorts, DaemonError> {
        let p = free_ports(4)?;
        Ok(PairPorts::direct([p[0], p[2]], [p[1], p[3]]))
    }

    /// These ports, each node dialing the other's gRPC port directly.
    pub fn direct(grpc: [u16; 2], http: [u16; 2]) -> PairPorts {
        let peer = [1, 0].map(|other| format!("127.0.0.1:{}", grpc[other]));
        PairPorts { grpc, http, peer }
    }
}

/// The specs of n1 (primary on a fresh data dir) and n2 (standby).
pub fn pair_specs(ports: &PairPorts) -> [NodeSpec; 2] {
    let spec = |i: usize, id, peer_id, role| NodeSpec {
        id,
        peer_id,
        role,
        grpc: ports.grpc[i],
        http: ports.http[i],
        peer: ports.peer[i].clone(),
    };
    [
        spec(0, "n1", "n2", "primary"),
        spec(1, "n2", "n1", "standby"),
    ]
}

/// n1 (primary on a fresh data dir) and n2 (standby), not yet started.
pub struct Pair {
    pub n1: NodeProc,
    pub n2: NodeProc,
    pub dir: PathBuf,
}

impl Pair {
    /// Lays out the pair in `dir` (each node's data in `dir/<id>`, its log
    /// in `dir/<id>.log`) on four free loopback ports.
    pub fn new(dir: &Path, o: &PairOptions) -> Result<Pair, DaemonError> {
        Pair::on_ports(dir, o, &PairPorts::free()?)
    }

    /// Lays out the pair in `dir` on `ports`.
    pub fn on_ports(dir: &Path, o: &PairOptions, ports: &PairPorts) -> Result<Pair, DaemonError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
        let [n1, n2] = pair_specs(ports)
            .map(|spec| NodeProc::new(spec.id, &node_flags(o, dir, &spec), dir, &o.launch));
        Ok(Pair {
            n1,
            n2,
            dir: dir.to_path_buf(),
        })
    }

    /// Starts both nodes and waits until n1 is a writable primary
    /// streaming to n2 (see [`wait_streaming`]).
    pub async fn start(&mut self, mode: CommitMode) -> Result<(), DaemonError> {
        self.n1.spawn()?;
        self.n2.spawn()?;
        wait_streaming(&mut self.n1, &mut self.n2, mode).await?;
        Ok(())
    }

    /// Stops both nodes cleanly; removes their folder unless `keep`.
    pub fn finish(mut self, keep: bool) {
        self.n1.terminate(Duration::from_secs(5));
        self.n2.terminate(Duration::from_secs(5));
        if !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl PairOptions {
    /// The daemon's default timings.
    pub fn defaults(commit_mode: CommitMode) -> PairOptions {
        PairOptions {
            commit_mode,
            heartbeat_ms: 200,
            failover_timeout_ms: 1000,
            cluster_id: "demo",
            extra: Vec::new(),
            launch: Launch::default(),
        }
    }
}

/// Waits until `primary` is a writable primary streaming to `standby`, and
/// `standby` a standby in contact (in a sync mode, one eligible to take
/// over); returns the primary's health then.
pub async fn wait_streaming(
    primary: &mut NodeProc,
    standby: &mut NodeProc,
    mode: CommitMode,
) -> Result<HealthReport, DaemonError> {
    let h = primary
        .wait_for(
            "a writable primary streaming to its standby",
            STEP,
            is_streaming_primary,
        )
        .await?;
    standby
        .wait_for("a standby in contact", STEP, |h| {
            is_standby_in_contact(h, mode)
        })
        .await?;
    Ok(h)
}

/// A writable primary in contact with its standby.
pub fn is_streaming_primary(h: &HealthReport) -> bool {
    h.role == "primary" && h.writable && h.peer.connected
}

/// A standby in contact with its primary and, in a sync `mode`, eligible
/// to take over (in sync).
pub fn is_standby_in_contact(h: &HealthReport, mode: CommitMode) -> bool {
    h.role == "standby" && h.peer.connected && (h.eligible || !mode.is_sync())
}

/// A new folder in the system's temporary directory named for `what`.
pub fn temp_dir(what: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("walrep-{what}-{}-{stamp}", std::process::id()))
}

/// A `walrep witness` beside a pair: the process, and the URL its nodes
/// give as `--arbiter`.
pub struct WitnessProc {
    pub proc: NodeProc,
    pub url: String,
}

/// Starts a `walrep witness` on free loopback ports, its register file in
/// `dir/witness`, its log in `dir`, and waits until its `/health` answers.
pub async fn start_witness(dir: &Path, launch: &Launch) -> Result<WitnessProc, DaemonError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
    let ports = free_ports(2)?;
    let flags = vec![
        ("listen", format!("127.0.0.1:{}", ports[0])),
        ("data_dir", dir.join("witness").display().to_string()),
        ("http", format!("127.0.0.1:{}", ports[1])),
    ];
    let mut proc = NodeProc::witness("witness", &flags, dir, launch);
    proc.spawn()?;
    let http = proc.http.clone();
    super::witness::wait_healthy(&http, Duration::from_secs(20), || {
        proc.exited().map(|s| format!("exited ({s})"))
    })
    .await?;
    Ok(WitnessProc {
        proc,
        url: format!("witness://127.0.0.1:{}", ports[0]),
    })
}
