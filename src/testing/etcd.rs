//! A real etcd for tests: a one-member cluster on free loopback ports in a
//! temporary data directory, killed when dropped. Without an `etcd` binary
//! (Debian: `apt-get install etcd-server`; or `$WALREP_ETCD`), `start`
//! says SKIPPED on stderr and gives `None`, so a test can pass loudly.

use crate::arbiter::{Arbiter, Caller, EtcdArbiter};
use crate::types::Epoch;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SKIPPED: &str = "SKIPPED: etcd not installed (apt-get install etcd-server)";

/// The etcd binary: `$WALREP_ETCD` or `etcd` on the PATH.
fn etcd_binary() -> String {
    std::env::var("WALREP_ETCD").unwrap_or_else(|_| "etcd".into())
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A one-member etcd cluster on loopback.
pub struct EtcdServer {
    dir: super::pair::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// A running, answering etcd; `None` (after a loud SKIPPED line that
    /// the test harness does not capture) when there is no etcd binary.
    pub async fn start() -> Option<EtcdServer> {
        let installed = Command::new(etcd_binary())
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            // Straight to the process's stderr: libtest captures only the
            // print macros, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "{SKIPPED}");
            return None;
        }
        let mut server = EtcdServer {
            dir: super::pair::TempDir::named("etcd").expect("a temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        server.spawn().await;
        Some(server)
    }

    /// Its client URL, `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Its client endpoint, `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The arbiter URL naming it, `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    /// Its data directory (and log, `etcd.log`).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts etcd on this server's data directory and ports (again, after
    /// `kill`) and waits until it answers reads.
    pub async fn spawn(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new(etcd_binary())
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.client_url()))
            .arg(format!("--advertise-client-urls={}", self.client_url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log file"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let probe = EtcdArbiter::from_url(&self.url())
            .expect("a valid etcd URL")
            .with_timeout(Duration::from_millis(500));
        let started = Instant::now();
        loop {
            match probe.read("probe", &Caller::new("probe", Epoch(0))).await {
                Ok(_) => return,
                Err(e) if started.elapsed() > Duration::from_secs(30) => {
                    let log = std::fs::read_to_string(self.dir.path().join("etcd.log"));
                    panic!("etcd did not answer within 30 s: {e}; its log: {log:?}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Kills etcd at once (SIGKILL: no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
