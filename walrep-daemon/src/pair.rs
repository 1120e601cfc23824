//! Two `walrep node` child processes (this same binary) on free loopback
//! ports: what `walrep demo` and the `walrep bench-*` commands run against.
//! The children are killed on every way out (`Drop`), errors and panics
//! included.

use super::api::HealthReport;
use super::client::HttpClient;
use super::error::DaemonError;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use walrep::CommitMode;

/// Longest wait for any one step (start, rejoin, catch-up) unless a caller
/// says otherwise.
pub const STEP: Duration = Duration::from_secs(60);

/// One node as a child process.
pub struct NodeProc {
    pub name: &'static str,
    pub args: Vec<String>,
    pub log: PathBuf,
    pub http: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn spawn(&mut self) -> Result<(), DaemonError> {
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
        // The flags say everything; settings in the caller's environment
        // must not leak in (the log filter may).
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

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crash (std's `Child::kill` sends SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the node has not stopped within `grace`.
    pub fn terminate(&mut self, grace: Duration) {
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

    /// Polls the node's /health until `pred` holds.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&HealthReport) -> bool,
    ) -> Result<HealthReport, DaemonError> {
        let deadline = Instant::now() + limit;
        let mut client = HttpClient::new(&self.http).with_timeout(Duration::from_secs(2));
        loop {
            if let Some(status) = self.exited() {
                return Err(DaemonError::Failed(format!(
                    "{} exited ({status}) while waiting until {what}; see {}",
                    self.name,
                    self.log.display()
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
                    self.name,
                    last,
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident memory of the running process (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_ports(n: usize) -> Result<Vec<u16>, DaemonError> {
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

/// The settings both nodes of a pair share.
#[derive(Clone, Debug)]
pub struct PairOptions {
    pub commit_mode: CommitMode,
    pub heartbeat_ms: u64,
    pub failover_timeout_ms: u64,
    /// More `walrep node` settings, by name (`sync_timeout_ms`, ...).
    pub extra: Vec<(&'static str, String)>,
}

/// n1 (primary on a fresh data dir) and n2 (standby), not yet started.
pub struct Pair {
    pub n1: NodeProc,
    pub n2: NodeProc,
    pub dir: PathBuf,
}

/// One node of the pair, as its flags need it.
struct Spec {
    id: &'static str,
    peer_id: &'static str,
    role: &'static str,
    grpc: u16,
    http: u16,
    peer_grpc: u16,
}

fn node_args(o: &PairOptions, data_dir: &Path, n: &Spec) -> Vec<String> {
    let mut args: Vec<String> = [
        "node",
        "--id",
        n.id,
        "--peer-id",
        n.peer_id,
        "--data-dir",
        &data_dir.display().to_string(),
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
        o.commit_mode.as_str(),
        "--heartbeat-ms",
        &o.heartbeat_ms.to_string(),
        "--failover-timeout-ms",
        &o.failover_timeout_ms.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (key, value) in &o.extra {
        // A switch, not a flag with a value.
        if *key == "auto_failover" {
            if value == "false" {
                args.push(super::config::flag_name(key));
            }
            continue;
        }
        args.push(super::config::flag_name(key));
        args.push(value.clone());
    }
    args
}

impl Pair {
    /// Lays out the pair in `dir` (each node's data in `dir/<id>`, its log
    /// in `dir/<id>.log`) on four free loopback ports.
    pub fn new(dir: &Path, o: &PairOptions) -> Result<Pair, DaemonError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| DaemonError::io(format!("creating {}", dir.display()), e))?;
        let ports = free_ports(4)?;
        let (g1, h1, g2, h2) = (ports[0], ports[1], ports[2], ports[3]);
        let proc = |spec: Spec| {
            let data_dir = dir.join(spec.id);
            NodeProc {
                name: spec.id,
                args: node_args(o, &data_dir, &spec),
                log: dir.join(format!("{}.log", spec.id)),
                http: format!("127.0.0.1:{}", spec.http),
                data_dir,
                child: None,
            }
        };
        Ok(Pair {
            n1: proc(Spec {
                id: "n1",
                peer_id: "n2",
                role: "primary",
                grpc: g1,
                http: h1,
                peer_grpc: g2,
            }),
            n2: proc(Spec {
                id: "n2",
                peer_id: "n1",
                role: "standby",
                grpc: g2,
                http: h2,
                peer_grpc: g1,
            }),
            dir: dir.to_path_buf(),
        })
    }

    /// Starts both nodes and waits until n1 is a writable primary
    /// streaming to n2 (see [`wait_streaming`]).
    pub async fn start(&mut self, mode: CommitMode) -> Result<(), DaemonError> {
        self.n1.spawn()?;
        self.n2.spawn()?;
        wait_streaming(&mut self.n1, &mut self.n2, mode).await?;
        Ok(())
    }

    /// Stops both nodes cleanly; removes their folder unless `keep`.
    pub fn finish(mut self, keep: bool) {
        self.n1.terminate(Duration::from_secs(5));
        self.n2.terminate(Duration::from_secs(5));
        if !keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl PairOptions {
    /// The daemon's default timings.
    pub fn defaults(commit_mode: CommitMode) -> PairOptions {
        PairOptions {
            commit_mode,
            heartbeat_ms: 200,
            failover_timeout_ms: 1000,
            extra: Vec::new(),
        }
    }
}

/// Waits until `primary` is a writable primary streaming to `standby`, and
/// `standby` a standby in contact (in a sync mode, one eligible to take
/// over); returns the primary's health then.
pub async fn wait_streaming(
    primary: &mut NodeProc,
    standby: &mut NodeProc,
    mode: CommitMode,
) -> Result<HealthReport, DaemonError> {
    let h = primary
        .wait_for("a writable primary streaming to its standby", STEP, |h| {
            h.role == "primary" && h.writable && h.peer.connected
        })
        .await?;
    standby
        .wait_for("a standby in contact", STEP, |h| {
            h.role == "standby" && h.peer.connected && (h.eligible || !mode.is_sync())
        })
        .await?;
    Ok(h)
}

/// A new folder in the system's temporary directory named for `what`.
pub fn temp_dir(what: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("walrep-{what}-{}-{stamp}", std::process::id()))
}
