//! Helpers for the daemon tests: nodes in this process (for the HTTP API)
//! and the real binary as child processes (for crashes and pauses), with
//! waits that poll `/health` against a deadline.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use walrep_daemon::api::HealthReport;
use walrep_daemon::client::HttpClient;
use walrep_daemon::config::Layers;
use walrep_daemon::node::RunningNode;

/// Test timings: short, but with room for a loaded 2-core machine.
pub const HEARTBEAT_MS: u64 = 50;
pub const FAILOVER_MS: u64 = 500;
pub const SYNC_TIMEOUT_MS: u64 = 1000;
/// Longest wait for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_walrep");

pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The flags of one node of a pair, test timings included.
pub fn node_flags(
    id: &str,
    peer_id: &str,
    dir: &Path,
    grpc: u16,
    http: u16,
    peer_grpc: u16,
    role: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("id", id.into()),
        ("peer_id", peer_id.into()),
        ("data_dir", dir.join(id).display().to_string()),
        ("listen", format!("127.0.0.1:{grpc}")),
        ("http", format!("127.0.0.1:{http}")),
        ("peer", format!("127.0.0.1:{peer_grpc}")),
        ("role", role.into()),
        ("cluster_id", "test".into()),
        ("heartbeat_ms", HEARTBEAT_MS.to_string()),
        ("failover_timeout_ms", FAILOVER_MS.to_string()),
        ("sync_timeout_ms", SYNC_TIMEOUT_MS.to_string()),
        ("rpc_timeout_ms", "300".into()),
    ]
}

/// `--flag value` arguments for the binary.
pub fn as_args(flags: &[(&'static str, String)]) -> Vec<String> {
    let mut args = vec!["node".to_string()];
    for (k, v) in flags {
        if *k == "auto_failover" {
            if v == "false" {
                args.push("--no-auto-failover".into());
            }
            continue;
        }
        args.push(format!("--{}", k.replace('_', "-")));
        args.push(v.clone());
    }
    args
}

/// Replaces or adds settings.
pub fn with(
    mut flags: Vec<(&'static str, String)>,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    for (k, v) in extra {
        flags.retain(|(key, _)| key != k);
        flags.push((k, v.to_string()));
    }
    flags
}

/// Polls `addr`'s /health until `pred` holds.
pub async fn wait_health(
    addr: &str,
    what: &str,
    pred: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    let deadline = Instant::now() + WAIT;
    let mut client = HttpClient::new(addr).with_timeout(Duration::from_secs(2));
    loop {
        let last = match client.health().await {
            Ok((_, h)) if pred(&h) => return h,
            Ok((_, h)) => format!("{h:?}"),
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "{addr}: {what} did not happen within {WAIT:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn is_writable_primary(h: &HealthReport) -> bool {
    h.role == "primary" && h.writable
}

pub fn is_streaming_standby(h: &HealthReport) -> bool {
    h.role == "standby" && h.peer.connected && h.eligible
}

// ---------------------------------------------------------------- in process

/// Two nodes in this process: `a` primary, `b` standby, streaming.
pub struct Pair {
    pub a: RunningNode,
    pub b: RunningNode,
    pub a_http: String,
    pub b_http: String,
    pub dir: tempfile::TempDir,
}

pub async fn start_node(flags: Vec<(&'static str, String)>) -> RunningNode {
    let settings = Layers::gather(flags, None, Vec::new())
        .expect("settings gather")
        .resolve()
        .expect("settings are valid");
    RunningNode::start(settings).await.expect("node starts")
}

pub async fn pair(extra: &[(&'static str, &str)]) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let p = free_ports(2);
    // HTTP on port 0: the node advertises the port it got.
    let a = start_node(with(
        node_flags("a", "b", dir.path(), p[0], 0, p[1], "primary"),
        extra,
    ))
    .await;
    let b = start_node(with(
        node_flags("b", "a", dir.path(), p[1], 0, p[0], "standby"),
        extra,
    ))
    .await;
    let (a_http, b_http) = (a.http_addr.to_string(), b.http_addr.to_string());
    wait_health(&a_http, "writable primary, stream up", |h| {
        is_writable_primary(h) && h.peer.connected
    })
    .await;
    wait_health(&b_http, "streaming standby", is_streaming_standby).await;
    Pair {
        a,
        b,
        a_http,
        b_http,
        dir,
    }
}

// ----------------------------------------------------------- child processes

/// The real binary as a child process; killed when dropped. When the test
/// fails, the end of its log is printed.
pub struct NodeProc {
    pub name: String,
    pub args: Vec<String>,
    pub http: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl NodeProc {
    pub fn new(name: &str, flags: &[(&'static str, String)], log_dir: &Path) -> NodeProc {
        let http = flags
            .iter()
            .find(|(k, _)| *k == "http")
            .map(|(_, v)| v.clone())
            .expect("an http flag");
        NodeProc {
            name: name.into(),
            args: as_args(flags),
            http,
            log: log_dir.join(format!("{name}.log")),
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = std::process::Command::new(BIN)
            .args(&self.args)
            .env("WALREP_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("walrep starts");
        self.child = Some(child);
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own, not yet reaped, child.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process still dies of SIGKILL.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(&self.http).with_timeout(Duration::from_secs(10))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        if self.child.is_some() {
            // SIGCONT first, in case a test stopped it and then failed.
            let _ = unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
    }
}

/// Two processes: n1 primary, n2 standby, streaming.
pub struct ProcPair {
    pub n1: NodeProc,
    pub n2: NodeProc,
    pub dir: tempfile::TempDir,
}

pub async fn proc_pair(extra: &[(&'static str, &str)]) -> ProcPair {
    let dir = tempfile::tempdir().unwrap();
    let p = free_ports(4);
    let f1 = with(
        node_flags("n1", "n2", dir.path(), p[0], p[1], p[2], "primary"),
        extra,
    );
    let f2 = with(
        node_flags("n2", "n1", dir.path(), p[2], p[3], p[0], "standby"),
        extra,
    );
    let mut n1 = NodeProc::new("n1", &f1, dir.path());
    let mut n2 = NodeProc::new("n2", &f2, dir.path());
    n1.start();
    n2.start();
    wait_health(&n1.http, "writable primary, stream up", |h| {
        is_writable_primary(h) && h.peer.connected
    })
    .await;
    wait_health(&n2.http, "streaming standby", is_streaming_standby).await;
    ProcPair { n1, n2, dir }
}

/// Writes `n` keys `{prefix}{i}` to `addr`, all of which must be
/// acknowledged; returns them with their values.
pub async fn write_all(addr: &str, prefix: &str, n: usize) -> Vec<(String, String)> {
    let mut client = HttpClient::new(addr);
    let mut acked = Vec::new();
    for i in 0..n {
        let (k, v) = (format!("{prefix}{i}"), format!("value-{prefix}{i}"));
        client
            .put(&k, v.clone().into())
            .await
            .unwrap_or_else(|e| panic!("writing {k}: {e}"));
        acked.push((k, v));
    }
    acked
}

/// Every acknowledged write reads back from `addr` with its value.
pub async fn assert_all_readable(addr: &str, acked: &[(String, String)]) {
    let mut client = HttpClient::new(addr);
    for (k, v) in acked {
        let got = client.get(k).await.unwrap();
        assert_eq!(
            got.as_deref(),
            Some(v.as_bytes()),
            "acknowledged write {k} lost or wrong on {addr}"
        );
    }
}
