//! `walrep demo`: the failover story on one machine, no Docker needed.
//!
//! Starts two nodes as child processes (this same binary) on free loopback
//! ports, writes keys to the primary recording every acknowledged write,
//! SIGKILLs the primary, measures the failover (kill -> first acknowledged
//! write on the new primary), writes more, restarts the old primary with
//! its original flags, waits until it has rejoined as a standby and caught
//! up, then checks that every acknowledged write reads back with its value
//! and that both state hashes are equal. The children are killed on every
//! way out (`Drop`), errors and panics included.

use super::client::HttpClient;
use super::engine::EngineKind;
use super::error::DaemonError;
use super::pair::{Pair, PairOptions, STEP};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use walrep::CommitMode;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Keys written before the primary is killed.
    #[arg(long, value_name = "KEYS", default_value_t = 3000)]
    pub keys: usize,
    /// Keys written on the new primary after the failover [default: keys / 3].
    #[arg(long, value_name = "KEYS")]
    pub keys_after: Option<usize>,
    /// Commit mode of both nodes.
    #[arg(long, default_value = "remote-flush")]
    pub commit_mode: CommitMode,
    /// Heartbeat interval of both nodes.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub heartbeat_ms: u64,
    /// Silence after which the standby promotes itself.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub failover_timeout_ms: u64,
    /// The engine both nodes host: kv or sqlite.
    #[arg(long, default_value_t = EngineKind::Kv)]
    pub engine: EngineKind,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Folder for the nodes' data and logs [default: a new folder in the
    /// system's temporary directory]. It is kept afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Writes keys `prefix000000..` with `concurrency` writers, retrying each
/// key until acknowledged; records every acknowledged write.
async fn write_keys(
    addr: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
    acked: Acked,
) -> Result<(), DaemonError> {
    let bar = ProgressBar::new(range.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} keys  {per_sec}  {msg}")
            .expect("a valid template"),
    );
    let next = Arc::new(AtomicUsize::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (addr, prefix, next, acked, bar) = (
            addr.to_string(),
            prefix.to_string(),
            next.clone(),
            acked.clone(),
            bar.clone(),
        );
        let end = range.end;
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::new(&addr).with_timeout(Duration::from_secs(10));
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= end {
                    return Ok(());
                }
                let key = format!("{prefix}{i:06}");
                let value = format!("value-of-{key}");
                let deadline = Instant::now() + STEP;
                // One idempotency key per key written, resent by every
                // retry: a write whose answer was lost is not applied twice.
                let once = crate::idempotency::new_key();
                loop {
                    match client.put_once(&key, value.clone().into(), &once).await {
                        Ok(_) => {
                            acked.lock().await.push((key, value));
                            bar.inc(1);
                            break;
                        }
                        Err(e) if Instant::now() > deadline => {
                            return Err(DaemonError::Failed(format!(
                                "writing {key} kept failing: {e}"
                            )));
                        }
                        Err(e) => {
                            bar.set_message(format!("retrying: {e}"));
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| DaemonError::Failed(format!("a writer panicked: {e}")))??;
    }
    bar.finish_and_clear();
    Ok(())
}

pub async fn run(a: DemoArgs) -> Result<ExitCode, DaemonError> {
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| super::pair::temp_dir("demo"));
    let mode = a.commit_mode;
    let mut pair = Pair::new(
        &dir,
        &PairOptions {
            heartbeat_ms: a.heartbeat_ms,
            failover_timeout_ms: a.failover_timeout_ms,
            extra: vec![("engine", a.engine.to_string())],
            ..PairOptions::defaults(mode)
        },
    )?;
    println!("walrep demo: two nodes in {}", dir.display());
    for n in [&pair.n1, &pair.n2] {
        println!("  {}: HTTP {}, log {}", n.name, n.http, n.log.display());
    }
    println!(
        "  engine {}, commit mode {mode}, heartbeat {} ms, failover after {} ms of silence",
        a.engine, a.heartbeat_ms, a.failover_timeout_ms
    );
    pair.start(mode).await?;
    let Pair { mut n1, mut n2, .. } = pair;
    println!("both nodes up: n1 primary, n2 standby");

    let acked: Acked = Arc::default();
    println!("writing {} keys to n1...", a.keys);
    let started = Instant::now();
    write_keys(&n1.http, "k", 0..a.keys, a.concurrency, acked.clone()).await?;
    let before = acked.lock().await.len();
    println!(
        "  {before} writes acknowledged in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // A standby promotes itself only if the primary's last word was that
    // it is in sync (async: lag small enough). In remote-write mode a
    // standby that has written but not yet flushed the last commits is not:
    // crash the primary once n2 would take over, as an operator would check.
    n2.wait_for("eligible to take over", STEP, |h| h.eligible)
        .await?;
    println!("killing n1 (SIGKILL)...");
    let killed = Instant::now();
    n1.kill();
    let after = a.keys_after.unwrap_or(a.keys / 3).max(1);
    // The first write after the crash: retried on n2 until it is primary.
    write_keys(&n2.http, "a", 0..1, 1, acked.clone()).await?;
    let failover = killed.elapsed();
    let h = n2
        .wait_for("primary", STEP, |h| h.role == "primary")
        .await?;
    println!(
        "n2 took over: first write acknowledged {:.3} s after the kill (epoch {})",
        failover.as_secs_f64(),
        h.epoch
    );
    println!("writing {} more keys to n2...", after - 1);
    write_keys(&n2.http, "a", 1..after, a.concurrency, acked.clone()).await?;

    println!("restarting n1 with its original flags...");
    n1.spawn()?;
    let target = n2
        .wait_for("its last write committed", STEP, |h| {
            h.commit_lsn >= h.last_lsn
        })
        .await?
        .last_lsn;
    let h1_final = n1
        .wait_for("a standby caught up with n2", STEP, |h| {
            h.role == "standby" && h.peer.connected && h.applied_lsn >= target
        })
        .await?;
    let h2_final = n2
        .wait_for("streaming to n1 and applied", STEP, |h| {
            h.peer.connected && h.applied_lsn >= target
        })
        .await?;
    println!(
        "n1 rejoined as standby at epoch {} and caught up to LSN {target}",
        h1_final.epoch
    );

    println!("verifying every acknowledged write on n2...");
    let acked = acked.lock().await.clone();
    let mut client = HttpClient::new(&n2.http);
    let (mut lost, mut wrong) = (0usize, 0usize);
    for (key, value) in &acked {
        match client.get(key).await? {
            None => lost += 1,
            Some(v) if v != value.as_bytes() => wrong += 1,
            Some(_) => {}
        }
    }
    let hashes_equal = h1_final.state_hash == h2_final.state_hash;
    let loss_allowed = mode == CommitMode::Async;
    let pass = hashes_equal && wrong == 0 && (lost == 0 || loss_allowed);

    println!();
    println!("walrep demo report");
    println!("  commit mode               {mode}");
    println!(
        "  writes acknowledged       {} ({before} before the crash, {} after)",
        acked.len(),
        acked.len() - before
    );
    println!(
        "  failover time             {:.3} s (SIGKILL of n1 -> first acknowledged write on n2)",
        failover.as_secs_f64()
    );
    println!(
        "  acknowledged writes lost  {lost}{}",
        if loss_allowed && lost > 0 {
            " (async mode: allowed)"
        } else {
            ""
        }
    );
    println!("  wrong values              {wrong}");
    println!(
        "  n1 rejoined               standby at epoch {}, {} records rewound",
        h1_final.epoch, h1_final.rewound_records
    );
    println!(
        "  state hashes equal        {} (n1 {}, n2 {} at LSN {})",
        if hashes_equal { "yes" } else { "NO" },
        h1_final.state_hash,
        h2_final.state_hash,
        h2_final.applied_lsn
    );
    println!("  data and logs kept in     {}", dir.display());
    println!("RESULT: {}", if pass { "PASS" } else { "FAIL" });
    // A clean stop persists each node's KV snapshot.
    n1.terminate(Duration::from_secs(5));
    n2.terminate(Duration::from_secs(5));
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
