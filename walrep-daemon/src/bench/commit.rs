//! `walrep bench-pair`: commit latency (p50/p99/p99.9) and throughput of
//! `PUT /kv/{key}` with a fresh key each time, for each commit mode and
//! number of concurrent writers, against a pair with durable WALs on this
//! machine's disk.

use super::load::{self, Keys, Load};
use super::{emit_json, r3};
use crate::cluster::Nodes;
use crate::engine::EngineKind;
use crate::error::DaemonError;
use crate::pair::{PairOptions, temp_dir};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use walrep::CommitMode;

#[derive(Args, Debug, Clone)]
pub struct CommitArgs {
    /// Commit modes to measure, comma-separated, or `all`.
    #[arg(long, value_delimiter = ',', default_value = "remote-flush")]
    pub mode: Vec<String>,
    /// Concurrent writers, comma-separated: one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Measured seconds of each run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Unmeasured seconds of load before each run.
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
    /// Size of each written value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// The engine both nodes host: kv or sqlite.
    #[arg(long, default_value_t = EngineKind::Kv)]
    pub engine: EngineKind,
    #[command(flatten)]
    pub arbiter: super::ArbiterArgs,
    /// Data nodes: 2 (a pair) or 3 to 5 (a cluster with its own witness,
    /// each write waiting for every standby; --witness and --arbiter are
    /// for a pair).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=5))]
    pub nodes: u8,
    #[command(flatten)]
    pub rule: super::RuleArgs,
    /// After each healthy run, run again with the last standby stopped
    /// (SIGSTOP) for the whole measured run, then continued (SIGCONT); the
    /// row says whether the primary stayed primary of its epoch.
    #[arg(long)]
    pub stop_standby: bool,
    /// Also print each result as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Folder for the nodes' data and logs, kept afterwards [default: a
    /// temporary folder, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct CommitResult {
    bench: &'static str,
    mode: &'static str,
    /// `none`, or the arbiter's URL.
    arbiter: String,
    nodes: usize,
    /// The commit rule given, if any.
    sync_standbys: Option<String>,
    /// A standby was stopped (SIGSTOP) during the run.
    standby_stopped: bool,
    /// The primary stayed primary of its epoch through the run.
    no_failover: bool,
    clients: usize,
    seconds: f64,
    ops: usize,
    errors: u64,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// `all`, or a comma-separated list of modes.
pub fn parse_modes(names: &[String]) -> Result<Vec<CommitMode>, DaemonError> {
    if names.iter().any(|n| n == "all") {
        return Ok(vec![
            CommitMode::Async,
            CommitMode::RemoteWrite,
            CommitMode::RemoteFlush,
            CommitMode::RemoteApply,
        ]);
    }
    names
        .iter()
        .map(|n| {
            n.parse()
                .map_err(|e| DaemonError::Config(format!("invalid value for --mode: {e}")))
        })
        .collect()
}

pub async fn run(a: CommitArgs) -> Result<(), DaemonError> {
    let modes = parse_modes(&a.mode)?;
    if a.clients.contains(&0) || a.seconds == 0 {
        return Err(DaemonError::Config(
            "--clients and --seconds must be at least 1".into(),
        ));
    }
    let count = usize::from(a.nodes);
    if count > 2 && (a.arbiter.witness || a.arbiter.arbiter.is_some()) {
        return Err(DaemonError::Config(
            "--witness and --arbiter are for a pair: a cluster of --nodes 3 or more runs its own witness".into(),
        ));
    }
    let rule = a.rule.setting(count)?;
    if count == 2 && a.stop_standby {
        return Err(DaemonError::Config(
            "--stop-standby is for a cluster: give --nodes 3 or more".into(),
        ));
    }
    let root = a.dir.clone().unwrap_or_else(|| temp_dir("bench-pair"));
    eprintln!(
        "bench-pair: {count} nodes, {} engine, {} byte values, {} s per run after {} s of warm-up, nodes in {}",
        a.engine,
        a.value_bytes,
        a.seconds,
        a.warmup_seconds,
        root.display()
    );
    println!(
        "{:<13} {:>7} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "mode", "writers", "writes", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
    );
    for mode in modes {
        let dir = root.join(mode.as_str());
        let defaults = PairOptions::defaults(mode);
        let arbiter = a.arbiter.start(&dir, &defaults.launch).await?;
        let options = PairOptions {
            extra: std::iter::once(("engine", a.engine.to_string()))
                .chain(arbiter.setting())
                .chain(rule.clone())
                .collect(),
            ..defaults
        };
        let mut cluster = Nodes::new(&dir, &options, count).await?;
        cluster.start(mode).await?;
        let arbiter_name = match &cluster.witness {
            Some(w) => w.url.clone(),
            None => arbiter.name(),
        };
        for &clients in &a.clients {
            let load = Load {
                writers: clients,
                value_bytes: a.value_bytes,
                keys: Keys::Unique,
                prefix: format!("c{clients}"),
                addrs: vec![cluster.procs[0].http.clone()],
                keep_keys: false,
            };
            load::run_for(
                &Load {
                    prefix: format!("warm{clients}"),
                    ..load.clone()
                },
                Duration::from_secs(a.warmup_seconds),
            )
            .await;
            let runs: &[bool] = if a.stop_standby {
                &[false, true]
            } else {
                &[false]
            };
            for &stopped in runs {
                let before = primary_epoch(&cluster.procs[0]).await;
                let paused = cluster.procs.last().expect("two nodes or more");
                if stopped {
                    paused
                        .signal(libc::SIGSTOP)
                        .map_err(|e| DaemonError::io("stopping the last standby", e))?;
                }
                let report = load::run_for(&load, Duration::from_secs(a.seconds)).await;
                if stopped {
                    paused
                        .signal(libc::SIGCONT)
                        .map_err(|e| DaemonError::io("continuing the last standby", e))?;
                }
                let after = primary_epoch(&cluster.procs[0]).await;
                let lat = report.latencies();
                let ms = |d: Duration| r3(d.as_secs_f64() * 1000.0);
                let result = CommitResult {
                    bench: "pair",
                    mode: mode.as_str(),
                    arbiter: arbiter_name.clone(),
                    nodes: count,
                    sync_standbys: a.rule.sync_standbys.clone(),
                    standby_stopped: stopped,
                    no_failover: before.is_some() && before == after,
                    clients,
                    seconds: r3(report.elapsed.as_secs_f64()),
                    ops: lat.len(),
                    errors: report.errors,
                    tps: r3(report.per_second()),
                    p50_ms: ms(lat.at(0.5)),
                    p99_ms: ms(lat.at(0.99)),
                    p999_ms: ms(lat.at(0.999)),
                    max_ms: ms(lat.max()),
                };
                println!(
                    "{:<13} {:>7} {:>9} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>6}{}",
                    result.mode,
                    clients,
                    result.ops,
                    result.tps,
                    result.p50_ms,
                    result.p99_ms,
                    result.p999_ms,
                    result.max_ms,
                    result.errors,
                    match (stopped, result.no_failover) {
                        (false, _) => "",
                        (true, true) => "  (last standby stopped; no failover)",
                        (true, false) => "  (last standby stopped; THE PRIMARY CHANGED)",
                    }
                );
                if let Some(e) = &report.last_error {
                    eprintln!("bench-pair: {} failed writes; the last: {e}", report.errors);
                }
                emit_json(a.json, &result);
            }
        }
        for n in &mut cluster.procs {
            n.terminate(Duration::from_secs(5));
        }
        drop(cluster);
        arbiter.stop();
    }
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// The epoch of `node` while it is a primary (`None` otherwise, or when
/// it does not answer).
async fn primary_epoch(node: &crate::process::NodeProc) -> Option<u64> {
    match node.client().health().await {
        Ok((_, h)) if h.role == "primary" => Some(h.epoch),
        _ => None,
    }
}
