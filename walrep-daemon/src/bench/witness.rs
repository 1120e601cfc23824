//! `walrep bench-witness`: one `walrep witness` child process serving
//! `--clusters` clusters of simulated node pairs. Each cluster is first
//! created (both members report, the first creates its register), then
//! `--concurrency` clients swap registers (a primary taking its standby
//! out of the sync set and back) `--swaps` times per cluster. Reports the
//! swap latency percentiles as a node sees them (each swap is one durable
//! write of the whole register file before the answer), the throughput,
//! and the witness's peak resident memory and file size.

use super::load::Percentiles;
use super::{emit_json, r3};
use crate::error::DaemonError;
use crate::process::Launch;
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use walrep::arbiter::{Arbiter, Caller, CasOutcome, Register, WitnessClient};
use walrep::{Config, Epoch, NodeId};

#[derive(Args, Debug, Clone)]
pub struct WitnessBenchArgs {
    /// Clusters (each a pair of simulated nodes).
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    /// Swaps per cluster after its creation.
    #[arg(long, default_value_t = 5)]
    pub swaps: usize,
    /// Clients swapping at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Directory for the witness's data and log [default: a new one in
    /// the system's temporary directory, removed at the end].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Also print the result as a JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct WitnessBenchResult {
    clusters: usize,
    swaps: usize,
    concurrency: usize,
    create_p50_ms: f64,
    create_p99_ms: f64,
    swap_p50_ms: f64,
    swap_p99_ms: f64,
    swap_max_ms: f64,
    swaps_per_second: f64,
    /// Writes of the register file, creates included (each covers every
    /// swap decided before it began).
    file_writes: u64,
    file_write_mean_ms: f64,
    /// Writes that took more than 100 ms (a slow fsync).
    file_writes_over_100ms: u64,
    witness_peak_rss_mib: f64,
    file_bytes: u64,
}

fn caller(node: &str) -> Caller {
    Caller::new(node, Epoch(1))
}

fn failed(what: &str, e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Failed(format!("{what}: {e}"))
}

/// Runs `each(cluster)` for every cluster, `concurrency` at a time, and
/// returns the latency of every call.
async fn drive<F, Fut>(
    clusters: usize,
    concurrency: usize,
    each: F,
) -> Result<Vec<Duration>, DaemonError>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Vec<Duration>, DaemonError>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (next, each) = (next.clone(), each.clone());
        tasks.spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= clusters {
                    return Ok::<_, DaemonError>(took);
                }
                took.extend(each(i).await?);
            }
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| failed("a client panicked", e))??);
    }
    Ok(all)
}

#[derive(Default)]
struct WriteStats {
    count: u64,
    mean_ms: f64,
    over_100ms: u64,
}

/// The witness's own account of its file writes, from `/metrics`.
async fn write_stats(http: &str) -> WriteStats {
    let mut client = crate::client::HttpClient::new(http);
    let Ok(r) = client
        .request(hyper::Method::GET, "/metrics", bytes::Bytes::new())
        .await
    else {
        return WriteStats::default();
    };
    let text = String::from_utf8_lossy(&r.body);
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let count = metric("walrep_witness_write_latency_seconds_count");
    let sum = metric("walrep_witness_write_latency_seconds_sum");
    let under = metric("walrep_witness_write_latency_seconds_bucket{le=\"0.1024\"}");
    WriteStats {
        count: count as u64,
        mean_ms: if count > 0.0 {
            sum / count * 1000.0
        } else {
            0.0
        },
        over_100ms: (count - under).max(0.0) as u64,
    }
}

pub async fn run(a: WitnessBenchArgs) -> Result<(), DaemonError> {
    if a.clusters == 0 || a.concurrency == 0 {
        return Err(DaemonError::Config(
            "--clusters and --concurrency must be at least 1".into(),
        ));
    }
    let (dir, remove) = match &a.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("walrep-bench-witness-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
    let crate::pair::WitnessProc {
        proc: mut witness,
        url,
    } = crate::pair::start_witness(&dir, &Launch::default()).await?;
    let addr = url.trim_start_matches("witness://").to_string();

    let cfg = |node: &str| Config {
        node_id: NodeId::from(node),
        rpc_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let n1 = WitnessClient::connect_lazy(&addr, &cfg("n1")).map_err(|e| failed("dialing", e))?;
    let n2 = WitnessClient::connect_lazy(&addr, &cfg("n2")).map_err(|e| failed("dialing", e))?;

    let creates = {
        let (n1, n2) = (n1.clone(), n2.clone());
        drive(a.clusters, a.concurrency, move |i| {
            let (n1, n2) = (n1.clone(), n2.clone());
            async move {
                let cluster = format!("cluster-{i}");
                n2.read(&cluster, &caller("n2"))
                    .await
                    .map_err(|e| failed("read", e))?;
                let next = Register::fresh(Epoch(1), &"n1".into(), &["n1".into(), "n2".into()]);
                let started = Instant::now();
                match n1.compare_and_swap(&cluster, &caller("n1"), 0, &next).await {
                    Ok(CasOutcome::Swapped(_)) => Ok(vec![started.elapsed()]),
                    other => Err(failed(&format!("creating {cluster}"), format!("{other:?}"))),
                }
            }
        })
        .await?
    };

    let swaps_each = a.swaps;
    let started = Instant::now();
    let swaps = drive(a.clusters, a.concurrency, move |i| {
        let n1 = n1.clone();
        async move {
            let cluster = format!("cluster-{i}");
            let mut current = n1
                .read(&cluster, &caller("n1"))
                .await
                .map_err(|e| failed("read", e))?;
            let mut took = Vec::with_capacity(swaps_each);
            for _ in 0..swaps_each {
                let mut next = current.clone();
                let n2 = NodeId::from("n2");
                if !next.sync_set.remove(&n2) {
                    next.sync_set.insert(n2);
                }
                let at = Instant::now();
                match n1
                    .compare_and_swap(&cluster, &caller("n1"), current.version, &next)
                    .await
                {
                    Ok(CasOutcome::Swapped(r)) => current = r,
                    other => {
                        return Err(failed(&format!("swapping {cluster}"), format!("{other:?}")));
                    }
                }
                took.push(at.elapsed());
            }
            Ok(took)
        }
    })
    .await?;
    let elapsed = started.elapsed();
    let rss = witness.peak_rss_mib().unwrap_or(0.0);
    let writes = write_stats(&witness.http).await;
    let file_bytes = std::fs::metadata(
        dir.join("witness")
            .join(walrep::arbiter::witness::REGISTER_FILE),
    )
    .map(|m| m.len())
    .unwrap_or(0);
    witness.terminate(Duration::from_secs(10));
    if remove {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let creates = Percentiles::new(creates);
    let count = swaps.len();
    let swaps = Percentiles::new(swaps);
    let ms = |d: Duration| r3(d.as_secs_f64() * 1000.0);
    let result = WitnessBenchResult {
        clusters: a.clusters,
        swaps: count,
        concurrency: a.concurrency,
        create_p50_ms: ms(creates.at(0.5)),
        create_p99_ms: ms(creates.at(0.99)),
        swap_p50_ms: ms(swaps.at(0.5)),
        swap_p99_ms: ms(swaps.at(0.99)),
        swap_max_ms: ms(swaps.max()),
        swaps_per_second: r3(count as f64 / elapsed.as_secs_f64()),
        file_writes: writes.count,
        file_write_mean_ms: r3(writes.mean_ms),
        file_writes_over_100ms: writes.over_100ms,
        witness_peak_rss_mib: r3(rss),
        file_bytes,
    };
    println!(
        "witness with {} clusters, {} swaps by {} clients: swap p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {:.0} swaps/s; create p99 {:.3} ms; {} file writes (mean {:.3} ms, {} over 100 ms); witness peak RSS {:.1} MiB; register file {} bytes",
        result.clusters,
        result.swaps,
        result.concurrency,
        result.swap_p50_ms,
        result.swap_p99_ms,
        result.swap_max_ms,
        result.swaps_per_second,
        result.create_p99_ms,
        result.file_writes,
        result.file_write_mean_ms,
        result.file_writes_over_100ms,
        result.witness_peak_rss_mib,
        result.file_bytes
    );
    emit_json(a.json, &result);
    Ok(())
}
