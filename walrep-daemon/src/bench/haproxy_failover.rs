//! `walrep bench-haproxy`: the write-unavailability window through HAProxy
//! (the shipped `deploy/haproxy/haproxy.cfg`) when the primary is killed,
//! and the errors clients see then and during a planned switchover.
//!
//! Paced writers write through HAProxy's write frontend for the whole run.
//! Each trial: both nodes streaming, SIGKILL of the primary, the window
//! from the last write acknowledged before the kill to the first one
//! acknowledged after it (at the new epoch), the errors of the writes in
//! flight from the kill to that acknowledgement, then the killed node restarted until it has
//! rejoined as an eligible standby; the next trial kills the other node.
//! Last, a planned switchover (`POST /promote` on the standby) and the
//! errors of the writes in flight from it until a second after the new
//! primary acknowledged one. Every acknowledged write is then read back
//! from the final primary.

use super::haproxy::{
    Haproxy, Writers, count_errors, counts_text, find_haproxy, in_flight_during, lost_writes,
};
use super::load::Percentiles;
use super::{emit_json, r3};
use crate::error::DaemonError;
use crate::pair::{NodeProc, Pair, PairOptions, STEP, temp_dir, wait_streaming};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use walrep::CommitMode;

#[derive(Args, Debug, Clone)]
pub struct HaproxyArgs {
    /// Crashes of the primary to time.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub heartbeat_ms: u64,
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub failover_timeout_ms: u64,
    /// Writers through HAProxy.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Most writes a second per writer.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// The nodes' `http_refusal_hold_ms` [default: the node's default];
    /// 0 shows what a switchover passes to clients without the hold.
    #[arg(long, value_name = "MS")]
    pub http_refusal_hold_ms: Option<u64>,
    /// The HAProxy binary [default: WALREP_HAPROXY, else /usr/sbin/haproxy
    /// or another usual place].
    #[arg(long)]
    pub haproxy: Option<PathBuf>,
    /// Also print the result as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Folder for the nodes' data, HAProxy's config and the logs, kept
    /// afterwards [default: a temporary folder, removed afterwards].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Serialize)]
struct HaproxyResult {
    bench: &'static str,
    heartbeat_ms: u64,
    failover_timeout_ms: u64,
    /// `None`: the node's default.
    http_refusal_hold_ms: Option<u64>,
    trials: usize,
    window_p50_s: f64,
    window_max_s: f64,
    /// Walrep's own failover per trial (SIGKILL to the new primary
    /// writable, as its health reports it), p50.
    failover_p50_s: f64,
    kill_errors: BTreeMap<String, usize>,
    switchover_errors: BTreeMap<String, usize>,
    acknowledged: usize,
    lost: usize,
}

pub async fn run(a: HaproxyArgs) -> Result<(), DaemonError> {
    if a.trials == 0 || a.writers == 0 || a.rate <= 0.0 {
        return Err(DaemonError::Config(
            "--trials, --writers and --rate must be above 0".into(),
        ));
    }
    let binary = a.haproxy.clone().or_else(find_haproxy).ok_or_else(|| {
        DaemonError::Config(
            "no HAProxy found: install it (Debian: apt-get install haproxy), or give --haproxy PATH or WALREP_HAPROXY".into(),
        )
    })?;
    let dir = a.dir.clone().unwrap_or_else(|| temp_dir("bench-haproxy"));
    let mode = CommitMode::RemoteFlush;
    let mut pair = Pair::new(
        &dir,
        &PairOptions {
            heartbeat_ms: a.heartbeat_ms,
            failover_timeout_ms: a.failover_timeout_ms,
            extra: a
                .http_refusal_hold_ms
                .map(|ms| ("http_refusal_hold_ms", ms.to_string()))
                .into_iter()
                .collect(),
            ..PairOptions::defaults(mode)
        },
    )?;
    eprintln!(
        "bench-haproxy: {} trials, heartbeat {} ms, failover after {} ms, {} writers at most {}/s each, {} in {}",
        a.trials,
        a.heartbeat_ms,
        a.failover_timeout_ms,
        a.writers,
        a.rate,
        binary.display(),
        dir.display()
    );
    pair.start(mode).await?;
    let mut haproxy = Haproxy::start(&binary, &dir, [&pair.n1.http, &pair.n2.http]).await?;
    let writers = Writers::start(&haproxy.frontends.write, a.writers, a.rate, "bench");
    writers.first_ack_after(Instant::now(), 0, STEP).await?;

    let (mut windows, mut failovers) = (Vec::new(), Vec::new());
    let mut kill_errors = BTreeMap::new();
    let (mut primary, mut standby) = (&mut pair.n1, &mut pair.n2);
    for trial in 1..=a.trials {
        let t = crash_primary(&writers, primary, standby, mode).await?;
        eprintln!(
            "bench-haproxy: trial {trial}: window {:.3} s (failover {:.3} s), errors: {}",
            t.window.as_secs_f64(),
            t.failover.as_secs_f64(),
            counts_text(&t.errors)
        );
        windows.push(t.window);
        failovers.push(t.failover);
        for (k, n) in t.errors {
            *kill_errors.entry(k).or_insert(0) += n;
        }
        std::mem::swap(&mut primary, &mut standby);
    }

    let switchover_errors = switch_over(&writers, primary, standby, mode).await?;
    eprintln!(
        "bench-haproxy: switchover errors: {}",
        counts_text(&switchover_errors)
    );
    let written = writers.stop().await;
    let final_primary = standby.http.clone();
    let lost = lost_writes(&final_primary, &written).await?;
    haproxy.stop();

    let w = Percentiles::new(windows);
    let f = Percentiles::new(failovers);
    let result = HaproxyResult {
        bench: "haproxy",
        heartbeat_ms: a.heartbeat_ms,
        failover_timeout_ms: a.failover_timeout_ms,
        http_refusal_hold_ms: a.http_refusal_hold_ms,
        trials: a.trials,
        window_p50_s: r3(w.at(0.5).as_secs_f64()),
        window_max_s: r3(w.max().as_secs_f64()),
        failover_p50_s: r3(f.at(0.5).as_secs_f64()),
        kill_errors,
        switchover_errors,
        acknowledged: written.iter().filter(|w| w.acked_epoch().is_some()).count(),
        lost: lost.len(),
    };
    println!(
        "writes through HAProxy, heartbeat {} ms, failover timeout {} ms, {} kills: window (last ack before SIGKILL -> first ack after) p50 {:.3} s, max {:.3} s; walrep's failover p50 {:.3} s; errors over the kills: {}; switchover errors: {}; {} acknowledged, {} lost",
        result.heartbeat_ms,
        result.failover_timeout_ms,
        result.trials,
        result.window_p50_s,
        result.window_max_s,
        result.failover_p50_s,
        counts_text(&result.kill_errors),
        counts_text(&result.switchover_errors),
        result.acknowledged,
        result.lost
    );
    emit_json(a.json, &result);
    pair.finish(a.dir.is_some());
    if !lost.is_empty() {
        return Err(DaemonError::Failed(format!(
            "{} acknowledged writes were lost, e.g. {}",
            lost.len(),
            lost[0]
        )));
    }
    Ok(())
}

struct Trial {
    window: Duration,
    failover: Duration,
    errors: BTreeMap<String, usize>,
}

async fn crash_primary(
    writers: &Writers,
    primary: &mut NodeProc,
    standby: &mut NodeProc,
    mode: CommitMode,
) -> Result<Trial, DaemonError> {
    let before = wait_streaming(primary, standby, mode).await?;
    // Writes flowing through HAProxy to this primary before the kill.
    writers
        .first_ack_after(Instant::now(), before.epoch, STEP)
        .await?;
    let killed = Instant::now();
    primary.kill();
    let promoted = standby
        .wait_for("primary", STEP, |h| h.role == "primary" && h.writable)
        .await?;
    let failover = killed.elapsed();
    let first = writers
        .first_ack_after(killed, promoted.epoch, STEP)
        .await?;
    let last = writers
        .last_ack_before(killed)
        .ok_or_else(|| DaemonError::Failed("no write was acknowledged before the kill".into()))?;
    let window = first.ended - last.ended;
    let written = writers.written();
    let errors = count_errors(&in_flight_during(&written, killed, first.ended));
    primary.spawn()?;
    primary
        .wait_for("rejoined as a standby", STEP, |h| {
            h.role == "standby" && h.peer.connected && h.eligible
        })
        .await?;
    Ok(Trial {
        window,
        failover,
        errors,
    })
}

/// A planned switchover to `standby`; the errors of the writes in flight
/// from the request until a second after the new primary's first ack.
async fn switch_over(
    writers: &Writers,
    primary: &mut NodeProc,
    standby: &mut NodeProc,
    mode: CommitMode,
) -> Result<BTreeMap<String, usize>, DaemonError> {
    let before = wait_streaming(primary, standby, mode).await?;
    writers
        .first_ack_after(Instant::now(), before.epoch, STEP)
        .await?;
    let asked = Instant::now();
    let epoch = standby.client().promote(false).await?;
    let first = writers.first_ack_after(asked, epoch, STEP).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = first.ended + Duration::from_secs(1);
    Ok(count_errors(&in_flight_during(
        &writers.written(),
        asked,
        end,
    )))
}
