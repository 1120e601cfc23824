//! `walrep bench-*`: the load generator. Each command starts its own pair
//! of `walrep node` child processes on loopback (see [`super::pair`]),
//! drives it over the HTTP API as a client would, and prints a table and,
//! with `--json`, one JSON object per result line (what
//! `benches/compare-postgres.sh` reads).
//!
//! ```text
//! big_values.rs  bench-big-values: many writers of MiB values, step gaps, solo, peak RSS
//! commit.rs      bench-pair: commit latency and throughput per mode and writer count
//! catchup.rs     bench-catchup: a standby catching up a WAL backlog, MB/s and peak RSS
//! failover.rs    bench-failover: SIGKILL of the primary to the first write on the new one
//! floor.rs       bench-floor: loopback TCP copy and durable write of N bytes (a resync's floor)
//! haproxy.rs     the shipped HAProxy config rendered and run, paced writers through it
//! haproxy_failover.rs  bench-haproxy: write unavailability through HAProxy per SIGKILL, switchover errors
//! switchover.rs  bench-switchover: the write pause of a planned switchover
//! witness.rs     bench-witness: a witness serving many clusters, swap latency and RSS
//! load.rs        writers, latency percentiles, following the leader
//! ```

pub mod big_values;
pub mod catchup;
pub mod commit;
pub mod failover;
pub mod floor;
pub mod haproxy;
pub mod haproxy_failover;
pub mod load;
pub mod switchover;
pub mod witness;

use crate::error::DaemonError;
use crate::pair::{Launch, WitnessProc, start_witness};
use serde::Serialize;
use std::path::Path;

/// The commit rule of a cluster's nodes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RuleArgs {
    /// The commit rule of a cluster (`--sync-standbys` of every node),
    /// e.g. `ANY 1 (n1, n2, n3)` [default: every standby confirms each
    /// write].
    #[arg(long)]
    pub sync_standbys: Option<String>,
}

impl RuleArgs {
    /// The node setting for a run of `nodes` data nodes, if a rule was
    /// given; a pair takes none.
    pub fn setting(
        &self,
        nodes: usize,
    ) -> Result<Option<(&'static str, String)>, crate::error::DaemonError> {
        match &self.sync_standbys {
            Some(_) if nodes < 3 => Err(crate::error::DaemonError::Config(
                "--sync-standbys is for a cluster: give --nodes 3 or more".into(),
            )),
            rule => Ok(rule.clone().map(|r| ("sync_standbys", r))),
        }
    }
}

/// The arbiter a benchmark's nodes use, if any.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ArbiterArgs {
    /// Run a `walrep witness` beside the pair and give both nodes
    /// `--arbiter witness://...`.
    #[arg(long, conflicts_with = "arbiter")]
    pub witness: bool,
    /// Give both nodes this `--arbiter` (e.g. `etcd://127.0.0.1:2379` of
    /// an etcd you run).
    #[arg(long, value_name = "URL")]
    pub arbiter: Option<String>,
}

/// The arbiter of a benchmark's pair, and the witness it started (kill it
/// when done).
pub struct BenchArbiter {
    pub url: Option<String>,
    pub witness: Option<WitnessProc>,
}

impl ArbiterArgs {
    /// Starts the witness if asked (its files in `dir`).
    pub async fn start(&self, dir: &Path, launch: &Launch) -> Result<BenchArbiter, DaemonError> {
        let witness = if self.witness {
            Some(start_witness(dir, launch).await?)
        } else {
            None
        };
        let url = witness
            .as_ref()
            .map(|w| w.url.clone())
            .or(self.arbiter.clone());
        Ok(BenchArbiter { url, witness })
    }
}

impl BenchArbiter {
    /// The node setting that names it, if any.
    pub fn setting(&self) -> Option<(&'static str, String)> {
        self.url.as_ref().map(|url| ("arbiter", url.clone()))
    }

    /// How results name it.
    pub fn name(&self) -> String {
        self.url.clone().unwrap_or_else(|| "none".into())
    }

    /// Stops the witness it started.
    pub fn stop(self) {
        if let Some(mut w) = self.witness {
            w.proc.kill();
        }
    }
}

/// Prints one result as a JSON line when asked to.
fn emit_json(json: bool, value: &impl Serialize) {
    if json {
        println!(
            "{}",
            serde_json::to_string(value).expect("bench results serialize")
        );
    }
}

/// Rounds to three decimals for the report.
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
