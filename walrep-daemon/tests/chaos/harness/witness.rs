//! One more process: `walrep witness`, the arbiter the nodes swap its
//! register at. Each node dials it through a proxy of its own, so a test
//! can cut one node from it and not the other.

use super::*;
use crate::daemon_support::*;
use std::path::PathBuf;
use std::time::Duration;
use walrep::arbiter::{Arbiter, Caller, Register, WitnessClient};
use walrep::{Config, Epoch, NodeId};
use walrep_daemon::api::{HealthReport, RegisterReport};
use walrep_daemon::client::HttpClient;
use walrep_daemon::process::{Launch, NodeProc};
use walrep_daemon::witness::http::WitnessHealth;

pub struct Witness {
    pub proc: NodeProc,
    /// Its `--listen` (gRPC), behind the nodes' proxies.
    pub grpc: String,
    /// Its `--http` (`/health`, `/metrics`).
    pub http: String,
    /// Its `--data-dir`, where its register file lives.
    pub data_dir: PathBuf,
    /// `links[i]` is node i's `--arbiter`, forwarding to the witness's
    /// `--listen`.
    pub links: Vec<Proxy>,
}

impl Witness {
    /// Lays out and starts a witness on `grpc` and `http` (loopback), its
    /// data and log in `dir`, with one proxy per node (`nodes` of them) in
    /// front of it.
    pub async fn start(
        dir: &std::path::Path,
        grpc: u16,
        http: u16,
        launch: &Launch,
        nodes: usize,
    ) -> Witness {
        let data_dir = dir.join("witness");
        let flags = vec![
            ("listen", format!("127.0.0.1:{grpc}")),
            ("data_dir", data_dir.display().to_string()),
            ("http", format!("127.0.0.1:{http}")),
        ];
        let mut links = Vec::new();
        for _ in 0..nodes {
            links.push(Proxy::start(local(grpc)).await);
        }
        let mut w = Witness {
            proc: NodeProc::witness("witness", &flags, dir, launch),
            grpc: format!("127.0.0.1:{grpc}"),
            http: format!("127.0.0.1:{http}"),
            data_dir,
            links,
        };
        w.spawn().await;
        w
    }

    /// What node `i` gives as `--arbiter`.
    pub fn url_for(&self, i: usize) -> String {
        format!("witness://{}", self.links[i].addr)
    }

    /// Starts the process (after a kill: from its file, if still there)
    /// and waits until its `/health` answers 200.
    pub async fn spawn(&mut self) -> WitnessHealth {
        self.proc.spawn().expect("walrep witness starts");
        let http = self.http.clone();
        let proc = &mut self.proc;
        walrep_daemon::witness::wait_healthy(&http, WAIT, || {
            proc.exited()
                .map(|s| format!("exited ({s}): {}", proc.log_tail(20)))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// SIGKILL, then its data directory removed: the witness's disk lost.
    pub fn kill_and_wipe(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.data_dir).expect("the witness's data dir removed");
    }

    /// Its `/health`, whatever its status.
    pub async fn health(&self) -> Option<WitnessHealth> {
        let r = HttpClient::new(&self.http)
            .with_timeout(Duration::from_secs(2))
            .request(hyper::Method::GET, "/health", bytes::Bytes::new())
            .await
            .ok()?;
        serde_json::from_slice(&r.body).ok()
    }

    /// The register of cluster `cluster` as the witness holds it, read
    /// directly (not through a node's proxy) by a caller that is no member,
    /// so the read counts toward no rebuild.
    pub async fn register(&self, cluster: &str) -> Register {
        let observer = NodeId::from("chaos-observer");
        let cfg = Config {
            node_id: observer.clone(),
            rpc_timeout: Duration::from_secs(2),
            ..Config::default()
        };
        // Epoch 0 and no version seen: nothing a rebuild goes by.
        let caller = Caller::new(observer, Epoch(0));
        WitnessClient::connect_lazy(&format!("witness://{}", self.grpc), &cfg)
            .expect("a witness client")
            .read(cluster, &caller)
            .await
            .unwrap_or_else(|e| panic!("reading {cluster}'s register at the witness: {e}"))
    }

    /// Polls its `/health` until `pred` holds; panics after `WAIT`.
    pub async fn wait_health(
        &self,
        what: &str,
        pred: impl Fn(&WitnessHealth) -> bool,
    ) -> WitnessHealth {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let last = self.health().await;
            if let Some(h) = &last
                && pred(h)
            {
                return h.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "witness: {what} did not happen within {WAIT:?}; last: {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The register as node `h` last had it answered, if it has one.
pub fn register(h: &HealthReport) -> Option<&RegisterReport> {
    h.arbiter.as_ref()?.register.as_ref()
}

/// Whether node `h`'s last call to the arbiter was answered (`None`:
/// none made yet, or the node runs without one).
pub fn arbiter_reachable(h: &HealthReport) -> Option<bool> {
    h.arbiter.as_ref()?.reachable
}

/// Why node `h` is not failing over or going solo now, if it says.
pub fn held_back(h: &HealthReport) -> Option<&str> {
    h.arbiter.as_ref()?.held_back.as_deref()
}
