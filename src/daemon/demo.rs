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

use super::api::HealthReport;
use super::client::HttpClient;
use super::error::DaemonError;
use crate::config::CommitMode;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

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
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Folder for the nodes' data and logs [default: a new folder in the
    /// system's temporary directory]. It is kept afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Longest wait for any one step (start, rejoin, catch-up).
const STEP: Duration = Duration::from_secs(60);

/// One node as a child process.
struct Proc {
    name: &'static str,
    args: Vec<String>,
    log: PathBuf,
    http: String,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self) -> Result<(), DaemonError> {
        let exe =
            std::env::current_exe().map_err(|e| DaemonError::io("finding the walrep binary", e))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| DaemonError::io(format!("opening {}", self.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| DaemonError::io("cloning the log handle", e))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        // The demo's flags say everything; settings in the caller's
        // environment must not leak in (the log filter may).
        for (k, _) in std::env::vars_os() {
            if let Some(k) = k.to_str()
                && k.starts_with("WALREP_")
                && k != "WALREP_LOG"
            {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| DaemonError::io(format!("starting {}", self.name), e))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, as a crash (std's `Child::kill` sends SIGKILL).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the node has not stopped within `grace`.
    fn terminate(&mut self, grace: Duration) {
        if let Some(child) = &mut self.child {
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on our own child's pid; it is not yet reaped,
            // so the pid cannot belong to another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    self.child = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_ports(n: usize) -> Result<Vec<u16>, DaemonError> {
    // Hold all of them at once so no two are the same.
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DaemonError::io("finding free ports", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DaemonError::io("finding free ports", e))
}

/// One node of the pair, as its flags need it.
struct Spec<'a> {
    id: &'a str,
    peer_id: &'a str,
    role: &'a str,
    grpc: u16,
    http: u16,
    peer_grpc: u16,
}

fn node_args(a: &DemoArgs, dir: &Path, n: Spec) -> Vec<String> {
    [
        "node",
        "--id",
        n.id,
        "--peer-id",
        n.peer_id,
        "--data-dir",
        &dir.join(n.id).display().to_string(),
        "--listen",
        &format!("127.0.0.1:{}", n.grpc),
        "--http",
        &format!("127.0.0.1:{}", n.http),
        "--peer",
        &format!("127.0.0.1:{}", n.peer_grpc),
        "--role",
        n.role,
        "--cluster-id",
        "demo",
        "--commit-mode",
        a.commit_mode.as_str(),
        "--heartbeat-ms",
        &a.heartbeat_ms.to_string(),
        "--failover-timeout-ms",
        &a.failover_timeout_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Polls the node's /health until `pred` holds.
async fn wait_for(
    p: &mut Proc,
    what: &str,
    limit: Duration,
    pred: impl Fn(&HealthReport) -> bool,
) -> Result<HealthReport, DaemonError> {
    let deadline = Instant::now() + limit;
    let mut client = HttpClient::new(&p.http).with_timeout(Duration::from_secs(2));
    loop {
        if let Some(status) = p.exited() {
            return Err(DaemonError::Failed(format!(
                "{} exited ({status}) while waiting until {what}; see {}",
                p.name,
                p.log.display()
            )));
        }
        let last = match client.health().await {
            Ok((_, h)) if pred(&h) => return Ok(h),
            Ok((_, h)) => format!("{h:?}"),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(DaemonError::Failed(format!(
                "{} did not get to {what} within {limit:?}; last: {}; see {}",
                p.name,
                last,
                p.log.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
                loop {
                    match client.put(&key, value.clone().into()).await {
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
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("walrep-demo-{}-{stamp}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
    let ports = free_ports(4)?;
    let (g1, h1, g2, h2) = (ports[0], ports[1], ports[2], ports[3]);
    let mode = a.commit_mode;
    println!("walrep demo: two nodes in {}", dir.display());
    println!(
        "  n1: replication 127.0.0.1:{g1}, HTTP 127.0.0.1:{h1}, log {}",
        dir.join("n1.log").display()
    );
    println!(
        "  n2: replication 127.0.0.1:{g2}, HTTP 127.0.0.1:{h2}, log {}",
        dir.join("n2.log").display()
    );
    println!(
        "  commit mode {mode}, heartbeat {} ms, failover after {} ms of silence",
        a.heartbeat_ms, a.failover_timeout_ms
    );
    let mut n1 = Proc {
        name: "n1",
        args: node_args(
            &a,
            &dir,
            Spec {
                id: "n1",
                peer_id: "n2",
                role: "primary",
                grpc: g1,
                http: h1,
                peer_grpc: g2,
            },
        ),
        log: dir.join("n1.log"),
        http: format!("127.0.0.1:{h1}"),
        child: None,
    };
    let mut n2 = Proc {
        name: "n2",
        args: node_args(
            &a,
            &dir,
            Spec {
                id: "n2",
                peer_id: "n1",
                role: "standby",
                grpc: g2,
                http: h2,
                peer_grpc: g1,
            },
        ),
        log: dir.join("n2.log"),
        http: format!("127.0.0.1:{h2}"),
        child: None,
    };
    n1.spawn()?;
    n2.spawn()?;
    wait_for(
        &mut n1,
        "a writable primary streaming to its standby",
        STEP,
        |h| h.role == "primary" && h.writable && h.peer.connected,
    )
    .await?;
    wait_for(&mut n2, "a standby in contact", STEP, |h| {
        h.role == "standby" && h.peer.connected && (h.eligible || !mode.is_sync())
    })
    .await?;
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
    wait_for(&mut n2, "eligible to take over", STEP, |h| h.eligible).await?;
    println!("killing n1 (SIGKILL)...");
    let killed = Instant::now();
    n1.kill();
    let after = a.keys_after.unwrap_or(a.keys / 3).max(1);
    // The first write after the crash: retried on n2 until it is primary.
    write_keys(&n2.http, "a", 0..1, 1, acked.clone()).await?;
    let failover = killed.elapsed();
    let h = wait_for(&mut n2, "primary", STEP, |h| h.role == "primary").await?;
    println!(
        "n2 took over: first write acknowledged {:.3} s after the kill (epoch {})",
        failover.as_secs_f64(),
        h.epoch
    );
    println!("writing {} more keys to n2...", after - 1);
    write_keys(&n2.http, "a", 1..after, a.concurrency, acked.clone()).await?;

    println!("restarting n1 with its original flags...");
    n1.spawn()?;
    let target = wait_for(&mut n2, "its last write committed", STEP, |h| {
        h.commit_lsn >= h.last_lsn
    })
    .await?
    .last_lsn;
    let h1_final = wait_for(&mut n1, "a standby caught up with n2", STEP, |h| {
        h.role == "standby" && h.peer.connected && h.applied_lsn >= target
    })
    .await?;
    let h2_final = wait_for(&mut n2, "streaming to n1 and applied", STEP, |h| {
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
