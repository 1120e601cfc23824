//! `walrep bench-big-values`: many writers of large values, and whether
//! either node stalls or bloats under them.
//!
//! A fresh pair (default timings, `remote-flush`) takes `--writers`
//! concurrent `PUT`s of `--value-mib` MiB values for `--seconds`. Each
//! writer cycles over `--keys-per-writer` keys of its own, so the KV state
//! stays bounded (writers × keys × value) while the WAL grows: what is
//! measured is the write path, not a growing map. Meanwhile both nodes'
//! `/health` is polled (every 50 ms) for anything but "n1 a primary in
//! sync with its standby n2": a solo episode, a role change, a dropped
//! stream. At the end it reports, per node, the longest gap between two
//! steps of the role logic (`walrep_step_gap_max_seconds`: a node whose
//! task did not run for `failover_timeout` forgets its peer, and the pair
//! goes solo) and the peak RSS (`VmHWM`), and the throughput. The targets:
//! no gap above `failover_timeout / 4`, no solo episode, peak RSS below
//! 512 MiB per node.

use super::load::{self, Keys, Load};
use super::{emit_json, r3};
use crate::client::HttpClient;
use crate::error::DaemonError;
use crate::pair::{NodeProc, Pair, PairOptions, temp_dir};
use bytes::Bytes;
use clap::Args;
use hyper::Method;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use walrep::CommitMode;

/// Peak RSS a node may reach under this load.
const RSS_TARGET_MIB: f64 = 512.0;

#[derive(Args, Debug, Clone)]
pub struct BigValuesArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub writers: usize,
    /// Size of each written value, MiB.
    #[arg(long, default_value_t = 4)]
    pub value_mib: usize,
    /// Keys each writer cycles over (the state holds writers × this many values).
    #[arg(long, default_value_t = 4)]
    pub keys_per_writer: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Also print the result as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Folder for the nodes' data and logs, kept afterwards [default: a
    /// temporary folder, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct BigValuesResult {
    bench: &'static str,
    writers: usize,
    value_mib: usize,
    seconds: f64,
    ops: usize,
    errors: u64,
    writes_per_s: f64,
    mib_per_s: f64,
    p99_ms: f64,
    max_ms: f64,
    primary_step_gap_max_ms: f64,
    standby_step_gap_max_ms: f64,
    /// Polls of the pair that found it anything but in sync (solo, a role
    /// change, the stream down).
    out_of_sync_polls: u64,
    went_solo: bool,
    primary_rss_mib: f64,
    standby_rss_mib: f64,
    pass: bool,
}

pub async fn run(a: BigValuesArgs) -> Result<(), DaemonError> {
    if a.writers == 0 || a.value_mib == 0 || a.seconds == 0 || a.keys_per_writer == 0 {
        return Err(DaemonError::Config(
            "--writers, --value-mib, --keys-per-writer and --seconds must be at least 1".into(),
        ));
    }
    let value_bytes = a.value_mib << 20;
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| temp_dir("bench-big-values"));
    let mode = CommitMode::RemoteFlush;
    let options = PairOptions {
        // A record holds the key and the command's framing beside the value.
        extra: vec![(
            "max_record_bytes",
            (value_bytes + (1 << 20)).max(16 << 20).to_string(),
        )],
        ..PairOptions::defaults(mode)
    };
    let gap_target = Duration::from_millis(options.failover_timeout_ms / 4);
    let mut pair = Pair::new(&dir, &options)?;
    eprintln!(
        "bench-big-values: {} writers of {} MiB values for {} s, nodes in {}",
        a.writers,
        a.value_mib,
        a.seconds,
        dir.display()
    );
    pair.start(mode).await?;

    let stop_watch = CancellationToken::new();
    let watcher = tokio::spawn(watch_pair(
        pair.n1.http.clone(),
        pair.n2.http.clone(),
        stop_watch.clone(),
    ));
    let report = load::run_for(
        &Load {
            writers: a.writers,
            value_bytes,
            keys: Keys::Cycle(a.keys_per_writer),
            prefix: "big".into(),
            addrs: vec![pair.n1.http.clone()],
            keep_keys: false,
        },
        Duration::from_secs(a.seconds),
    )
    .await;
    stop_watch.cancel();
    let watch = watcher
        .await
        .map_err(|e| DaemonError::Failed(format!("the pair watcher failed: {e}")))?;

    let primary_gap = step_gap_max(&pair.n1).await?;
    let standby_gap = step_gap_max(&pair.n2).await?;
    let primary_rss = pair.n1.peak_rss_mib().unwrap_or(f64::NAN);
    let standby_rss = pair.n2.peak_rss_mib().unwrap_or(f64::NAN);
    let lat = report.latencies();
    let secs = report.elapsed.as_secs_f64();
    let pass = primary_gap <= gap_target
        && standby_gap <= gap_target
        && watch.out_of_sync == 0
        && primary_rss < RSS_TARGET_MIB
        && standby_rss < RSS_TARGET_MIB;
    let ms = |d: Duration| r3(d.as_secs_f64() * 1e3);
    let result = BigValuesResult {
        bench: "big-values",
        writers: a.writers,
        value_mib: a.value_mib,
        seconds: r3(secs),
        ops: report.acks.len(),
        errors: report.errors,
        writes_per_s: r3(report.per_second()),
        mib_per_s: r3(report.per_second() * a.value_mib as f64),
        p99_ms: ms(lat.at(0.99)),
        max_ms: ms(lat.max()),
        primary_step_gap_max_ms: ms(primary_gap),
        standby_step_gap_max_ms: ms(standby_gap),
        out_of_sync_polls: watch.out_of_sync,
        went_solo: watch.solo,
        primary_rss_mib: r3(primary_rss),
        standby_rss_mib: r3(standby_rss),
        pass,
    };
    println!(
        "{} writers x {} MiB for {:.1} s: {} writes ({} errors), {:.1} writes/s = {:.1} MiB/s, p99 {:.1} ms, max {:.1} ms",
        result.writers,
        result.value_mib,
        result.seconds,
        result.ops,
        result.errors,
        result.writes_per_s,
        result.mib_per_s,
        result.p99_ms,
        result.max_ms
    );
    println!(
        "longest step gap: primary {:.1} ms, standby {:.1} ms (target <= {} ms)",
        result.primary_step_gap_max_ms,
        result.standby_step_gap_max_ms,
        gap_target.as_millis()
    );
    println!(
        "out of sync: {} of {} polls, solo: {}{}",
        watch.out_of_sync,
        watch.polls,
        if watch.solo { "yes" } else { "no" },
        watch
            .first_problem
            .as_deref()
            .map(|p| format!(" (first: {p})"))
            .unwrap_or_default()
    );
    println!(
        "peak RSS: primary {primary_rss:.1} MiB, standby {standby_rss:.1} MiB (target < {RSS_TARGET_MIB} MiB)"
    );
    println!("{}", if pass { "PASS" } else { "FAIL" });
    emit_json(a.json, &result);
    pair.finish(a.dir.is_some());
    Ok(())
}

#[derive(Default)]
struct Watch {
    polls: u64,
    out_of_sync: u64,
    solo: bool,
    first_problem: Option<String>,
}

/// Polls both nodes until `stop`, counting the polls that found the pair
/// anything but n1 a primary in sync with its standby n2. A node that does
/// not answer within a second counts too: a stalled node is the finding.
async fn watch_pair(n1: String, n2: String, stop: CancellationToken) -> Watch {
    let mut primary = HttpClient::new(&n1).with_timeout(Duration::from_secs(1));
    let mut standby = HttpClient::new(&n2).with_timeout(Duration::from_secs(1));
    let mut w = Watch::default();
    while !stop.is_cancelled() {
        let problem = match (primary.health().await, standby.health().await) {
            (Ok((_, p)), Ok((_, s))) => {
                w.solo |= p.solo;
                if p.solo {
                    Some("the primary went solo".to_string())
                } else if p.role != "primary" || s.role != "standby" {
                    Some(format!("roles {} / {}", p.role, s.role))
                } else if p.sync_state != "sync" || !s.peer.connected {
                    Some(format!("sync state {}", p.sync_state))
                } else {
                    None
                }
            }
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
        };
        w.polls += 1;
        if let Some(p) = problem {
            w.out_of_sync += 1;
            w.first_problem.get_or_insert(p);
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    w
}

/// The node's `walrep_step_gap_max_seconds`.
async fn step_gap_max(node: &NodeProc) -> Result<Duration, DaemonError> {
    let reply = HttpClient::new(&node.http)
        .request(Method::GET, "/metrics", Bytes::new())
        .await?;
    let text = String::from_utf8_lossy(&reply.body);
    text.lines()
        .find_map(|l| l.strip_prefix("walrep_step_gap_max_seconds "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .ok_or_else(|| {
            DaemonError::Failed(format!(
                "{} exports no walrep_step_gap_max_seconds",
                node.http
            ))
        })
}
