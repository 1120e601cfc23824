//! Helpers for the daemon tests: nodes in this process (for the HTTP API)
//! and the real binary as child processes (`walrep_daemon::pair`, for
//! crashes and pauses), with waits that poll `/health` against a deadline.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::time::Duration;
use walrep::CommitMode;
use walrep_daemon::api::HealthReport;
use walrep_daemon::client::HttpClient;
use walrep_daemon::config::Layers;
use walrep_daemon::node::RunningNode;
use walrep_daemon::pair::{
    Flags, Launch, NodeSpec, Pair as ProcessPair, PairOptions, is_standby_in_contact,
    is_streaming_primary, node_flags,
};
use walrep_daemon::process::poll_health;

/// Test timings: short, but with room for a loaded 2-core machine.
pub const HEARTBEAT_MS: u64 = 50;
pub const FAILOVER_MS: u64 = 500;
pub const SYNC_TIMEOUT_MS: u64 = 1000;
/// Longest wait for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(20);

pub const BIN: &str = env!("CARGO_BIN_EXE_walrep");

pub fn free_ports(n: usize) -> Vec<u16> {
    walrep_daemon::pair::free_ports(n).expect("free loopback ports")
}

/// Runs the process tests (and the chaos suite) on this engine, `kv` if
/// unset: `WALREP_TEST_ENGINE=sqlite cargo test -p walrep-daemon --test chaos`.
pub const ENGINE_ENV: &str = "WALREP_TEST_ENGINE";

/// The pair settings of the tests: their timings, the engine of
/// `WALREP_TEST_ENGINE`, `extra` on top, the binary under test logging at
/// info.
pub fn test_options(extra: &[(&'static str, &str)]) -> PairOptions {
    let mut extra: Flags = extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let engine = std::env::var(ENGINE_ENV).unwrap_or_else(|_| "kv".into());
    extra.splice(
        0..0,
        [
            ("sync_timeout_ms", SYNC_TIMEOUT_MS.to_string()),
            ("rpc_timeout_ms", "300".into()),
            ("engine", engine),
        ],
    );
    PairOptions {
        heartbeat_ms: HEARTBEAT_MS,
        failover_timeout_ms: FAILOVER_MS,
        cluster_id: "test",
        extra,
        launch: Launch {
            binary: Some(BIN.into()),
            env: vec![("WALREP_LOG".into(), "info".into())],
        },
        ..PairOptions::defaults(CommitMode::RemoteFlush)
    }
}

/// Polls `addr`'s /health until `pred` holds; panics after `WAIT`.
pub async fn wait_health(
    addr: &str,
    what: &str,
    pred: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    poll_health(addr, what, WAIT, pred, || None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn is_writable_primary(h: &HealthReport) -> bool {
    h.role == "primary" && h.writable
}

/// A standby in contact and eligible to take over (the tests run in
/// remote-flush).
pub fn is_streaming_standby(h: &HealthReport) -> bool {
    is_standby_in_contact(h, CommitMode::RemoteFlush)
}

/// Waits until `primary` is a writable primary streaming to `standby`, a
/// streaming standby: `walrep_daemon::pair::wait_streaming` by address, for
/// nodes in this process too.
pub async fn wait_streaming(primary: &str, standby: &str) {
    wait_health(primary, "writable primary, stream up", is_streaming_primary).await;
    wait_health(standby, "streaming standby", is_streaming_standby).await;
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

pub async fn start_node(flags: Flags) -> RunningNode {
    let settings = Layers::gather(flags, None, Vec::new())
        .expect("settings gather")
        .resolve()
        .expect("settings are valid");
    RunningNode::start(settings).await.expect("node starts")
}

pub async fn pair(extra: &[(&'static str, &str)]) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let p = free_ports(2);
    let o = test_options(extra);
    let spec = |id, peer_id, role, grpc, peer: u16| NodeSpec {
        id,
        peer_id,
        role,
        grpc,
        // The node picks its HTTP port and advertises the one it got.
        http: 0,
        peer: format!("127.0.0.1:{peer}"),
    };
    let a = start_node(node_flags(
        &o,
        dir.path(),
        &spec("a", "b", "primary", p[0], p[1]),
    ))
    .await;
    let b = start_node(node_flags(
        &o,
        dir.path(),
        &spec("b", "a", "standby", p[1], p[0]),
    ))
    .await;
    let (a_http, b_http) = (a.http_addr.to_string(), b.http_addr.to_string());
    wait_streaming(&a_http, &b_http).await;
    Pair {
        a,
        b,
        a_http,
        b_http,
        dir,
    }
}

// ----------------------------------------------------------- child processes

/// A pair of processes (`walrep_daemon::pair::Pair`) streaming, in a
/// folder removed when the test ends.
pub struct ProcPair {
    pair: ProcessPair,
    _dir: tempfile::TempDir,
}

impl Deref for ProcPair {
    type Target = ProcessPair;
    fn deref(&self) -> &ProcessPair {
        &self.pair
    }
}

impl DerefMut for ProcPair {
    fn deref_mut(&mut self) -> &mut ProcessPair {
        &mut self.pair
    }
}

/// n1 primary, n2 standby, streaming, with the test settings and `extra`.
pub async fn proc_pair(extra: &[(&'static str, &str)]) -> ProcPair {
    let dir = tempfile::tempdir().unwrap();
    let mut pair = ProcessPair::new(dir.path(), &test_options(extra)).expect("a pair laid out");
    pair.n1.spawn().expect("n1 starts");
    pair.n2.spawn().expect("n2 starts");
    wait_streaming(&pair.n1.http, &pair.n2.http).await;
    ProcPair { pair, _dir: dir }
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
