//! Three or more `walrep node` child processes on loopback and the
//! `walrep witness` they share as arbiter: n1 the primary of a fresh
//! cluster, n2, n3, ... its standbys, each naming every other as a peer.
//! What `walrep demo --nodes N` runs (a pair is `pair.rs`).

use super::api::HealthReport;
use super::error::DaemonError;
use super::pair::{
    Pair, PairOptions, STEP, WitnessProc, is_standby_in_contact, is_streaming_primary,
    start_witness,
};
use super::process::{Flags, NodeProc, free_ports, with};
use std::path::Path;
use walrep::{CommitMode, CommitRule, NodeId};

/// The nodes (n1 first) and their witness, laid out but not started.
pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub witness: WitnessProc,
}

impl Cluster {
    /// Starts the witness, then lays out `count` nodes (each node's data
    /// in `dir/<id>`, its log in `dir/<id>.log`) on free loopback ports,
    /// with the options a pair takes. At least 3 nodes.
    pub async fn new(dir: &Path, o: &PairOptions, count: usize) -> Result<Cluster, DaemonError> {
        if count < 3 {
            return Err(DaemonError::Config(format!(
                "a cluster has 3 or more nodes, not {count}; a pair is two"
            )));
        }
        let witness = start_witness(dir, &o.launch).await?;
        let ports = free_ports(2 * count)?;
        let grpc = |i: usize| ports[2 * i];
        let name = |i: usize| format!("n{}", i + 1);
        let nodes = (0..count)
            .map(|i| {
                let peers: Vec<(String, String)> = (0..count)
                    .filter(|&j| j != i)
                    .map(|j| (name(j), format!("127.0.0.1:{}", grpc(j))))
                    .collect();
                let member = Member {
                    id: name(i),
                    primary: i == 0,
                    grpc: grpc(i),
                    http: ports[2 * i + 1],
                    peers,
                    arbiter: witness.url.clone(),
                };
                NodeProc::new(&name(i), &member_flags(o, dir, &member), dir, &o.launch)
            })
            .collect();
        Ok(Cluster { nodes, witness })
    }
}

/// One node of a cluster, as [`member_flags`] lays it out.
pub struct Member {
    pub id: String,
    /// The primary of a fresh cluster (else a standby).
    pub primary: bool,
    pub grpc: u16,
    pub http: u16,
    /// Every other node: its id and where this node dials it (its gRPC
    /// address, or a proxy to it).
    pub peers: Vec<(String, String)>,
    /// `--arbiter`: `witness://HOST:PORT` or `etcd://...`.
    pub arbiter: String,
}

/// The flags of node `m` of a cluster with the options a pair takes, its
/// data in `dir/<id>`.
pub fn member_flags(o: &PairOptions, dir: &Path, m: &Member) -> Flags {
    let peers: Vec<String> = m.peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
    let flags = vec![
        ("id", m.id.clone()),
        ("data_dir", dir.join(&m.id).display().to_string()),
        ("listen", format!("127.0.0.1:{}", m.grpc)),
        ("http", format!("127.0.0.1:{}", m.http)),
        ("peer", peers.join(",")),
        ("arbiter", m.arbiter.clone()),
        (
            "role",
            if m.primary { "primary" } else { "standby" }.to_string(),
        ),
        ("cluster_id", o.cluster_id.to_string()),
        ("commit_mode", o.commit_mode.as_str().to_string()),
        ("heartbeat_ms", o.heartbeat_ms.to_string()),
        ("failover_timeout_ms", o.failover_timeout_ms.to_string()),
    ];
    with(flags, &o.extra)
}

/// The node processes of a pair or a cluster, n1 first, and the witness
/// a cluster runs (stopped when this is dropped).
pub struct Nodes {
    pub procs: Vec<NodeProc>,
    pub witness: Option<WitnessProc>,
}

impl Nodes {
    /// Lays out `count` nodes in `dir` with `o`: a [`Pair`] for two, a
    /// [`Cluster`] (which starts its witness) for more; none started yet.
    pub async fn new(dir: &Path, o: &PairOptions, count: usize) -> Result<Nodes, DaemonError> {
        if count == 2 {
            let pair = Pair::new(dir, o)?;
            return Ok(Nodes {
                procs: vec![pair.n1, pair.n2],
                witness: None,
            });
        }
        let cluster = Cluster::new(dir, o, count).await?;
        Ok(Nodes {
            procs: cluster.nodes,
            witness: Some(cluster.witness),
        })
    }

    /// Starts every node and waits until n1 streams to all the others
    /// (see [`wait_streaming_all`]).
    pub async fn start(&mut self, mode: CommitMode) -> Result<HealthReport, DaemonError> {
        for p in &mut self.procs {
            p.spawn()?;
        }
        wait_streaming_all(&mut self.procs, 0, mode).await
    }
}

/// Waits until `nodes[primary]` is a writable primary streaming to every
/// other node, and each of them a standby in contact (in a sync `mode`,
/// eligible to take over, unless the primary's `sync_standbys` does not
/// name it: it is never eligible);
/// returns the primary's health then.
pub async fn wait_streaming_all(
    nodes: &mut [NodeProc],
    primary: usize,
    mode: CommitMode,
) -> Result<HealthReport, DaemonError> {
    let standbys = nodes.len() - 1;
    let h = nodes[primary]
        .wait_for("a writable primary streaming to every standby", STEP, |h| {
            is_streaming_primary(h)
                && h.standbys.len() == standbys
                && h.standbys.iter().all(|s| s.connected)
        })
        .await?;
    // A standby the primary's rule does not name, by the rule itself (a
    // named one may not be counted yet, e.g. right after a failover).
    let rule: Option<CommitRule> = nodes[primary]
        .flag("sync_standbys")
        .and_then(|r| r.parse().ok());
    for (i, n) in nodes.iter_mut().enumerate() {
        if i != primary {
            let unnamed = rule
                .as_ref()
                .is_some_and(|r| r.priority(&NodeId::from(n.name.as_str())) == 0);
            let mode = if unnamed { CommitMode::Async } else { mode };
            n.wait_for("a standby in contact", STEP, |h| {
                is_standby_in_contact(h, mode)
            })
            .await?;
        }
    }
    Ok(h)
}
