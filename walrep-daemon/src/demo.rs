//! `walrep demo`: the failover story on one machine, no Docker needed.
//!
//! Starts two nodes (or, with `--nodes N`, N nodes and a `walrep
//! witness` as their arbiter) as child processes (this same binary) on
//! free loopback ports, writes keys to the primary recording every acknowledged write,
//! SIGKILLs the primary, measures the failover (kill -> first acknowledged
//! write on the new primary), writes more, restarts the old primary with
//! its original flags, waits until it has rejoined as a standby and caught
//! up, then checks that every acknowledged write reads back with its value
//! and that both state hashes are equal. The children are killed on every
//! way out (`Drop`), errors and panics included.

use super::client::HttpClient;
use super::cluster::Nodes;
use super::engine::EngineKind;
use super::error::DaemonError;
use super::pair::{PairOptions, STEP};
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
    /// Data nodes: 2 (a pair, no arbiter) or 3 to 5 (with a `walrep
    /// witness` as arbiter; each write waits for every standby).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=5))]
    pub nodes: u8,
    /// Commit mode of every node.
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
    /// system's temporary directory]: it must not exist or be empty (the
    /// demo starts a new cluster). It is kept afterwards.
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

/// Writes one key to whichever of `addrs` takes it first, retrying until
/// one does (the new primary, once a standby has taken over); returns
/// the index of the node that acknowledged it.
async fn first_write_anywhere(addrs: &[String], acked: Acked) -> Result<usize, DaemonError> {
    let deadline = Instant::now() + STEP;
    let mut clients: Vec<HttpClient> = addrs
        .iter()
        .map(|a| HttpClient::new(a).with_timeout(Duration::from_secs(2)))
        .collect();
    let (key, value) = ("a000000".to_string(), "value-of-a000000".to_string());
    let once = crate::idempotency::new_key();
    loop {
        for (i, client) in clients.iter_mut().enumerate() {
            if client
                .put_once(&key, value.clone().into(), &once)
                .await
                .is_ok()
            {
                acked.lock().await.push((key, value));
                return Ok(i);
            }
        }
        if Instant::now() > deadline {
            return Err(DaemonError::Failed(format!(
                "no node took a write within {STEP:?} of the kill"
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn run(a: DemoArgs) -> Result<ExitCode, DaemonError> {
    if let Some(dir) = &a.dir
        && std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
    {
        // Its nodes would start from an earlier run's data, where the
        // demo's roles no longer hold.
        return Err(DaemonError::Config(format!(
            "--dir {} is not empty: the demo starts a new cluster; give a new or empty folder, or none",
            dir.display()
        )));
    }
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| super::pair::temp_dir("demo"));
    let mode = a.commit_mode;
    let count = usize::from(a.nodes);
    let options = PairOptions {
        heartbeat_ms: a.heartbeat_ms,
        failover_timeout_ms: a.failover_timeout_ms,
        extra: vec![("engine", a.engine.to_string())],
        ..PairOptions::defaults(mode)
    };
    let what = if count == 2 {
        "two nodes".to_string()
    } else {
        format!("{count} nodes and a witness (the arbiter)")
    };
    println!("walrep demo: {what} in {}", dir.display());
    println!(
        "  engine {}, commit mode {mode}, heartbeat {} ms, failover after {} ms of silence",
        a.engine, a.heartbeat_ms, a.failover_timeout_ms
    );
    let mut cluster = Nodes::new(&dir, &options, count).await?;
    cluster.start(mode).await?;
    let Nodes {
        procs: mut nodes,
        witness: _witness,
    } = cluster;
    for n in &nodes {
        println!("  {}: HTTP {}, log {}", n.name, n.http, n.log.display());
    }
    if count == 2 {
        println!("both nodes up: n1 primary, n2 standby");
    } else {
        println!(
            "all {count} nodes up: n1 primary, every other node its standby (each write waits for every standby)"
        );
    }

    let acked: Acked = Arc::default();
    println!("writing {} keys to n1...", a.keys);
    let started = Instant::now();
    write_keys(&nodes[0].http, "k", 0..a.keys, a.concurrency, acked.clone()).await?;
    let before = acked.lock().await.len();
    println!(
        "  {before} writes acknowledged in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // A standby promotes itself only if the primary's last word was that
    // it is in sync (async: lag small enough). In remote-write mode a
    // standby that has written but not yet flushed the last commits is not:
    // crash the primary once one would take over, as an operator would check.
    for n in &mut nodes[1..] {
        n.wait_for("eligible to take over", STEP, |h| h.eligible)
            .await?;
    }
    println!("killing n1 (SIGKILL)...");
    let killed = Instant::now();
    nodes[0].kill();
    let after = a.keys_after.unwrap_or(a.keys / 3).max(1);
    // The first write after the crash: retried on every survivor until
    // one of them is primary.
    let survivors: Vec<String> = nodes[1..].iter().map(|n| n.http.clone()).collect();
    let new = 1 + first_write_anywhere(&survivors, acked.clone()).await?;
    let failover = killed.elapsed();
    let h = nodes[new]
        .wait_for("primary", STEP, |h| h.role == "primary")
        .await?;
    let (new_name, epoch) = (nodes[new].name.clone(), h.epoch);
    println!(
        "{new_name} took over: first write acknowledged {:.3} s after the kill (epoch {epoch})",
        failover.as_secs_f64()
    );
    // Every other survivor follows the new primary without an operator.
    let mut followed = Duration::ZERO;
    for (i, n) in nodes.iter_mut().enumerate() {
        if i == 0 || i == new {
            continue;
        }
        n.wait_for("following the new primary", STEP, |h| {
            h.role == "standby" && h.epoch == epoch && h.leader_id.as_deref() == Some(&new_name)
        })
        .await?;
        followed = followed.max(killed.elapsed());
        println!(
            "{} follows {new_name} at epoch {epoch} ({:.3} s after the kill)",
            n.name,
            followed.as_secs_f64()
        );
    }
    println!("writing {} more keys to {new_name}...", after - 1);
    write_keys(
        &nodes[new].http,
        "a",
        1..after,
        a.concurrency,
        acked.clone(),
    )
    .await?;

    println!("restarting n1 with its original flags...");
    nodes[0].spawn()?;
    let target = nodes[new]
        .wait_for("its last write committed", STEP, |h| {
            h.commit_lsn >= h.last_lsn
        })
        .await?
        .last_lsn;
    let mut standbys_final = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        if i == new {
            continue;
        }
        let h = n
            .wait_for(&format!("a standby caught up with {new_name}"), STEP, |h| {
                h.role == "standby" && h.peer.connected && h.applied_lsn >= target
            })
            .await?;
        standbys_final.push((n.name.clone(), h));
    }
    let standby_count = count - 1;
    let primary_final = nodes[new]
        .wait_for("streaming to every standby and applied", STEP, |h| {
            h.standbys.len() == standby_count
                && h.standbys.iter().all(|s| s.connected)
                && h.applied_lsn >= target
        })
        .await?;
    let h1_final = &standbys_final
        .iter()
        .find(|(name, _)| name == "n1")
        .expect("n1 is a standby now")
        .1;
    println!(
        "n1 rejoined as standby at epoch {} and caught up to LSN {target}",
        h1_final.epoch
    );

    println!("verifying every acknowledged write on {new_name}...");
    let acked = acked.lock().await.clone();
    let mut client = HttpClient::new(&nodes[new].http);
    let (mut lost, mut wrong) = (0usize, 0usize);
    for (key, value) in &acked {
        match client.get(key).await? {
            None => lost += 1,
            Some(v) if v != value.as_bytes() => wrong += 1,
            Some(_) => {}
        }
    }
    let hashes_equal = standbys_final
        .iter()
        .all(|(_, h)| h.state_hash == primary_final.state_hash);
    let loss_allowed = mode == CommitMode::Async;
    let pass = hashes_equal && wrong == 0 && (lost == 0 || loss_allowed);

    println!();
    println!("walrep demo report");
    println!("  nodes                     {count}");
    println!("  commit mode               {mode}");
    println!(
        "  writes acknowledged       {} ({before} before the crash, {} after)",
        acked.len(),
        acked.len() - before
    );
    println!(
        "  failover time             {:.3} s (SIGKILL of n1 -> first acknowledged write on {new_name})",
        failover.as_secs_f64()
    );
    if count > 2 {
        println!(
            "  every standby following   {:.3} s after the kill",
            followed.max(failover).as_secs_f64()
        );
    }
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
    let hashes: Vec<String> = std::iter::once(format!("{new_name} {}", primary_final.state_hash))
        .chain(
            standbys_final
                .iter()
                .map(|(name, h)| format!("{name} {}", h.state_hash)),
        )
        .collect();
    println!(
        "  state hashes equal        {} ({} at LSN {})",
        if hashes_equal { "yes" } else { "NO" },
        hashes.join(", "),
        primary_final.applied_lsn
    );
    println!("  data and logs kept in     {}", dir.display());
    println!("RESULT: {}", if pass { "PASS" } else { "FAIL" });
    // A clean stop persists each node's KV snapshot.
    for n in &mut nodes {
        n.terminate(Duration::from_secs(5));
    }
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
