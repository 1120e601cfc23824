//! Three or more `walrep node` child processes on loopback and the
//! `walrep witness` they share as arbiter: n1 the primary of a fresh
//! cluster, n2, n3, ... its standbys, each naming every other as a peer.
//! What `walrep demo --nodes N` runs (a pair is `pair.rs`).

use super::error::DaemonError;
use super::pair::{PairOptions, WitnessProc, start_witness};
use super::process::{NodeProc, free_ports, with};
use std::path::Path;

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
                let peers: Vec<String> = (0..count)
                    .filter(|&j| j != i)
                    .map(|j| format!("{}=127.0.0.1:{}", name(j), grpc(j)))
                    .collect();
                let flags = vec![
                    ("id", name(i)),
                    ("data_dir", dir.join(name(i)).display().to_string()),
                    ("listen", format!("127.0.0.1:{}", grpc(i))),
                    ("http", format!("127.0.0.1:{}", ports[2 * i + 1])),
                    ("peer", peers.join(",")),
                    ("arbiter", witness.url.clone()),
                    (
                        "role",
                        if i == 0 { "primary" } else { "standby" }.to_string(),
                    ),
                    ("cluster_id", o.cluster_id.to_string()),
                    ("commit_mode", o.commit_mode.as_str().to_string()),
                    ("heartbeat_ms", o.heartbeat_ms.to_string()),
                    ("failover_timeout_ms", o.failover_timeout_ms.to_string()),
                ];
                NodeProc::new(&name(i), &with(flags, &o.extra), dir, &o.launch)
            })
            .collect();
        Ok(Cluster { nodes, witness })
    }
}
