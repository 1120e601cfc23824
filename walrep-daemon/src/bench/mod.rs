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
//! switchover.rs  bench-switchover: the write pause of a planned switchover
//! witness.rs     bench-witness: a witness serving many clusters, swap latency and RSS
//! load.rs        writers, latency percentiles, following the leader
//! ```

pub mod big_values;
pub mod catchup;
pub mod commit;
pub mod failover;
pub mod floor;
pub mod load;
pub mod switchover;
pub mod witness;

use serde::Serialize;

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
