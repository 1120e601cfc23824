//! `walrep bench-failover`: the time from SIGKILL of the primary to the
//! first write acknowledged by the new primary, over many trials, and the
//! false failovers of a healthy pair on a loaded machine.
//!
//! First the loaded phase: writers at full speed plus one busy thread per
//! core for `--load-seconds`, while both nodes' epochs are watched; every
//! promotion then is a false failover. Then each trial: writers following
//! the primary, SIGKILL of the primary, the first acknowledgement from the
//! new one, every acknowledged write of the trial read back from it, the
//! killed node restarted with its original flags until it has rejoined as
//! an eligible standby; the next trial kills the new primary. With
//! `--nodes N` (3 or more, with their own witness), each trial also times
//! until every other standby follows the new primary.

use super::load::{self, Keys, Load, Percentiles};
use super::{emit_json, r3};
use crate::client::HttpClient;
use crate::cluster::{Nodes, wait_streaming_all};
use crate::error::DaemonError;
use crate::pair::{NodeProc, PairOptions, STEP, temp_dir};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use walrep::CommitMode;

#[derive(Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Crashes of the primary to time.
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Data nodes: 2 (a pair) or 3 to 5 (a cluster with its own witness
    /// as arbiter; --witness and --arbiter are for a pair).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=5))]
    pub nodes: u8,
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub heartbeat_ms: u64,
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub failover_timeout_ms: u64,
    /// Commit mode of both nodes.
    #[arg(long, default_value = "remote-flush")]
    pub commit_mode: CommitMode,
    /// Seconds of a healthy pair under load, counting false failovers.
    #[arg(long, default_value_t = 10)]
    pub load_seconds: u64,
    /// Writers during the loaded phase (one busy thread per core joins them).
    #[arg(long, default_value_t = 16)]
    pub load_writers: usize,
    #[command(flatten)]
    pub arbiter: super::ArbiterArgs,
    #[command(flatten)]
    pub rule: super::RuleArgs,
    /// Also print the result as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Folder for the nodes' data and logs, kept afterwards [default: a
    /// temporary folder, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct FailoverResult {
    bench: &'static str,
    commit_mode: &'static str,
    /// `none`, or the arbiter's URL.
    arbiter: String,
    nodes: usize,
    heartbeat_ms: u64,
    failover_timeout_ms: u64,
    trials: usize,
    p50_s: f64,
    p99_s: f64,
    max_s: f64,
    /// With three or more nodes: from the kill until every other standby
    /// followed the new primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    follow_p99_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    follow_max_s: Option<f64>,
    acknowledged: usize,
    lost: usize,
    load_seconds: u64,
    false_failovers: u64,
}

pub async fn run(a: FailoverArgs) -> Result<(), DaemonError> {
    if a.trials == 0 {
        return Err(DaemonError::Config("--trials must be at least 1".into()));
    }
    let dir = a.dir.clone().unwrap_or_else(|| temp_dir("bench-failover"));
    let mode = a.commit_mode;
    let defaults = PairOptions::defaults(mode);
    let count = usize::from(a.nodes);
    if count > 2 && (a.arbiter.witness || a.arbiter.arbiter.is_some()) {
        return Err(DaemonError::Config(
            "--witness and --arbiter are for a pair: a cluster of --nodes 3 or more runs its own witness".into(),
        ));
    }
    let rule = a.rule.setting(count)?;
    let arbiter = a.arbiter.start(&dir, &defaults.launch).await?;
    let mut cluster = Nodes::new(
        &dir,
        &PairOptions {
            heartbeat_ms: a.heartbeat_ms,
            failover_timeout_ms: a.failover_timeout_ms,
            extra: arbiter.setting().into_iter().chain(rule).collect(),
            ..defaults
        },
        count,
    )
    .await?;
    let arbiter_name = match &cluster.witness {
        Some(w) => w.url.clone(),
        None => arbiter.name(),
    };
    eprintln!(
        "bench-failover: {} trials, {count} nodes, heartbeat {} ms, failover after {} ms, {mode}, arbiter {arbiter_name}, nodes in {}",
        a.trials,
        a.heartbeat_ms,
        a.failover_timeout_ms,
        dir.display()
    );
    cluster.start(mode).await?;
    let nodes = &mut cluster.procs;
    let false_failovers = loaded_phase(&a, nodes).await?;
    eprintln!(
        "bench-failover: {false_failovers} false failovers in {} s under load",
        a.load_seconds
    );

    let mut times = Vec::with_capacity(a.trials);
    let mut follows = Vec::with_capacity(a.trials);
    let (mut acknowledged, mut lost) = (0usize, 0usize);
    let mut primary = 0;
    for trial in 1..=a.trials {
        let t = crash_primary(nodes, primary, mode, trial).await?;
        let follow = t
            .followed
            .map(|d| format!(", every standby following after {:.3} s", d.as_secs_f64()))
            .unwrap_or_default();
        eprintln!(
            "bench-failover: trial {trial}: {} took over in {:.3} s{follow}, {} acknowledged, {} lost",
            nodes[t.new_primary].name,
            t.failover.as_secs_f64(),
            t.acknowledged,
            t.lost
        );
        times.push(t.failover);
        follows.extend(t.followed);
        acknowledged += t.acknowledged;
        lost += t.lost;
        primary = t.new_primary;
    }
    let p = Percentiles::new(times);
    let f = (!follows.is_empty()).then(|| Percentiles::new(follows));
    let result = FailoverResult {
        bench: "failover",
        commit_mode: mode.as_str(),
        arbiter: arbiter_name,
        nodes: count,
        heartbeat_ms: a.heartbeat_ms,
        failover_timeout_ms: a.failover_timeout_ms,
        trials: a.trials,
        p50_s: r3(p.at(0.5).as_secs_f64()),
        p99_s: r3(p.at(0.99).as_secs_f64()),
        max_s: r3(p.max().as_secs_f64()),
        follow_p99_s: f.as_ref().map(|f| r3(f.at(0.99).as_secs_f64())),
        follow_max_s: f.as_ref().map(|f| r3(f.max().as_secs_f64())),
        acknowledged,
        lost,
        load_seconds: a.load_seconds,
        false_failovers,
    };
    let follow = match (result.follow_p99_s, result.follow_max_s) {
        (Some(p99), Some(max)) => {
            format!("; every standby following: p99 {p99:.3} s, max {max:.3} s")
        }
        _ => String::new(),
    };
    println!(
        "failover (SIGKILL -> first acknowledged write), {} nodes, arbiter {}, heartbeat {} ms, timeout {} ms: p50 {:.3} s, p99 {:.3} s, max {:.3} s over {} trials{follow}; {} acknowledged, {} lost; {} false failovers in {} s under load",
        result.nodes,
        result.arbiter,
        result.heartbeat_ms,
        result.failover_timeout_ms,
        result.p50_s,
        result.p99_s,
        result.max_s,
        result.trials,
        result.acknowledged,
        result.lost,
        result.false_failovers,
        result.load_seconds
    );
    emit_json(a.json, &result);
    for n in nodes.iter_mut() {
        n.terminate(Duration::from_secs(5));
    }
    drop(cluster);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    arbiter.stop();
    if lost > 0 && mode.is_sync() {
        return Err(DaemonError::Failed(format!(
            "{lost} acknowledged writes were lost in {mode} mode"
        )));
    }
    Ok(())
}

/// Writers and busy threads on healthy nodes; the promotions seen.
async fn loaded_phase(a: &FailoverArgs, nodes: &[NodeProc]) -> Result<u64, DaemonError> {
    if a.load_seconds == 0 {
        return Ok(0);
    }
    let busy = Arc::new(AtomicBool::new(true));
    let spinners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while busy.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let writing = load::start(&Load {
        writers: a.load_writers,
        value_bytes: 100,
        keys: Keys::Unique,
        prefix: "loaded".into(),
        addrs: nodes.iter().map(|n| n.http.clone()).collect(),
        keep_keys: false,
    });
    let mut clients: Vec<HttpClient> = nodes
        .iter()
        .map(|n| HttpClient::new(&n.http).with_timeout(Duration::from_secs(5)))
        .collect();
    let mut start_epoch = None;
    let mut max_epoch = 0;
    let deadline = Instant::now() + Duration::from_secs(a.load_seconds);
    while Instant::now() < deadline {
        for c in &mut clients {
            // A node too loaded to answer in time is not a failover.
            if let Ok((_, h)) = c.health().await {
                start_epoch.get_or_insert(h.epoch);
                max_epoch = max_epoch.max(h.epoch);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = writing.finish().await?;
    busy.store(false, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    eprintln!(
        "bench-failover: loaded phase: {:.0} writes/s with {} writers and busy threads",
        report.per_second(),
        a.load_writers
    );
    Ok(max_epoch - start_epoch.unwrap_or(max_epoch))
}

struct Trial {
    new_primary: usize,
    failover: Duration,
    /// With three or more nodes: until every other standby followed.
    followed: Option<Duration>,
    acknowledged: usize,
    lost: usize,
}

/// Polls every node but `except` until one is a writable primary.
async fn wait_any_primary(nodes: &[NodeProc], except: usize) -> Result<usize, DaemonError> {
    let deadline = Instant::now() + STEP;
    let mut clients: Vec<(usize, HttpClient)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .map(|(i, n)| {
            (
                i,
                HttpClient::new(&n.http).with_timeout(Duration::from_secs(1)),
            )
        })
        .collect();
    loop {
        for (i, c) in &mut clients {
            if let Ok((_, h)) = c.health().await
                && h.role == "primary"
                && h.writable
            {
                return Ok(*i);
            }
        }
        if Instant::now() > deadline {
            return Err(DaemonError::Failed(format!(
                "no node became a writable primary within {STEP:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn crash_primary(
    nodes: &mut [NodeProc],
    primary: usize,
    mode: CommitMode,
    trial: usize,
) -> Result<Trial, DaemonError> {
    let before = wait_streaming_all(nodes, primary, mode).await?;
    // Writers follow the primary over every node's address, its own first.
    let mut addrs = vec![nodes[primary].http.clone()];
    addrs.extend(
        nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != primary)
            .map(|(_, n)| n.http.clone()),
    );
    let writing = load::start(&Load {
        writers: 4,
        value_bytes: 100,
        keys: Keys::Unique,
        prefix: format!("trial{trial}"),
        addrs,
        keep_keys: true,
    });
    // Let the writers reach full speed before the crash.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed = Instant::now();
    nodes[primary].kill();
    let new = wait_any_primary(nodes, primary).await?;
    let epoch = nodes[new]
        .wait_for("primary", STEP, |h| h.role == "primary" && h.writable)
        .await?
        .epoch;
    let new_name = nodes[new].name.clone();
    let mut followed = None;
    for (i, n) in nodes.iter_mut().enumerate() {
        if i == primary || i == new {
            continue;
        }
        n.wait_for("following the new primary", STEP, |h| {
            h.role == "standby" && h.epoch == epoch && h.leader_id.as_deref() == Some(&new_name)
        })
        .await?;
        followed = Some(killed.elapsed());
    }
    // The writers retry every millisecond: give them time to land their
    // first writes in the new epoch, then look at when the first did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acks = writing.finish().await?;
    let first_new = acks
        .acks
        .iter()
        .find(|a| a.at > killed && a.epoch > before.epoch)
        .ok_or_else(|| {
            DaemonError::Failed(format!(
                "trial {trial}: no write acknowledged in the new epoch; last error: {}",
                acks.last_error.clone().unwrap_or_default()
            ))
        })?;
    let failover = first_new.at - killed;

    let lost = load::count_lost(&nodes[new].http, &acks).await?;
    nodes[primary].spawn()?;
    nodes[primary]
        .wait_for("rejoined as a standby", STEP, |h| {
            h.role == "standby" && h.peer.connected
        })
        .await?;
    Ok(Trial {
        new_primary: new,
        failover,
        followed,
        acknowledged: acks.acks.len(),
        lost,
    })
}
