//! HAProxy in front of a pair, as `walrep bench-haproxy` and the HAProxy
//! test run it: the shipped `deploy/haproxy/haproxy.cfg` (compiled in, the
//! one source) rendered with a pair's addresses and free frontend ports,
//! HAProxy as a child process, and paced writers through its write
//! frontend that record every answer by kind.

use super::super::api::{ErrorReply, WriteReply};
use super::super::client::HttpClient;
use super::super::error::DaemonError;
use super::super::pair::free_ports;
use axum::http::Method;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `deploy/haproxy/haproxy.cfg` as shipped.
pub const SHIPPED_CONFIG: &str = include_str!("../../../deploy/haproxy/haproxy.cfg");

/// The addresses the shipped file names, and what each stands for.
const NODE_ADDRS: [&str; 2] = ["127.0.0.1:8001", "127.0.0.1:8002"];
const WRITE_ADDR: &str = "127.0.0.1:5000";
const READ_ADDR: &str = "127.0.0.1:5001";
const STATS_ADDR: &str = "127.0.0.1:5002";

/// Where HAProxy is looked for when `WALREP_HAPROXY` does not say.
const HAPROXY_PATHS: [&str; 3] = [
    "/usr/sbin/haproxy",
    "/usr/local/sbin/haproxy",
    "/usr/bin/haproxy",
];

/// The HAProxy binary: `WALREP_HAPROXY` if set (`None` if no such file),
/// else the first of the usual places that exists.
pub fn find_haproxy() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WALREP_HAPROXY") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    HAPROXY_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// The frontends' addresses of a rendered config.
#[derive(Clone, Debug)]
pub struct Frontends {
    pub write: String,
    pub read: String,
    pub stats: String,
}

/// `shipped` with n1 and n2 at `nodes` and the frontends at `frontends`;
/// an error naming the address the file no longer contains.
pub fn render(
    shipped: &str,
    nodes: [&str; 2],
    frontends: &Frontends,
) -> Result<String, DaemonError> {
    let swaps = [
        (NODE_ADDRS[0], nodes[0]),
        (NODE_ADDRS[1], nodes[1]),
        (WRITE_ADDR, frontends.write.as_str()),
        (READ_ADDR, frontends.read.as_str()),
        (STATS_ADDR, frontends.stats.as_str()),
    ];
    let mut out = shipped.to_string();
    for (from, to) in swaps {
        if !out.contains(from) {
            return Err(DaemonError::Failed(format!(
                "the HAProxy config has no {from} to replace: keep n1 at {}, n2 at {}, the frontends at {WRITE_ADDR}, {READ_ADDR} and {STATS_ADDR} in deploy/haproxy/haproxy.cfg",
                NODE_ADDRS[0], NODE_ADDRS[1]
            )));
        }
        out = out.replace(from, to);
    }
    Ok(out)
}

/// HAProxy running the shipped config in front of two nodes.
pub struct Haproxy {
    child: Option<Child>,
    pub frontends: Frontends,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Haproxy {
    /// Renders the shipped config for `nodes` on free loopback ports into
    /// `dir/haproxy.cfg`, starts `binary` on it (logging to
    /// `dir/haproxy.log`) and waits until the write frontend accepts
    /// connections.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        nodes: [&str; 2],
    ) -> Result<Haproxy, DaemonError> {
        let ports = free_ports(3)?;
        let frontends = Frontends {
            write: format!("127.0.0.1:{}", ports[0]),
            read: format!("127.0.0.1:{}", ports[1]),
            stats: format!("127.0.0.1:{}", ports[2]),
        };
        let config = dir.join("haproxy.cfg");
        let log = dir.join("haproxy.log");
        std::fs::write(&config, render(SHIPPED_CONFIG, nodes, &frontends)?)
            .map_err(|e| DaemonError::io(format!("writing {}", config.display()), e))?;
        let out = std::fs::File::create(&log)
            .map_err(|e| DaemonError::io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| DaemonError::io("cloning the log handle", e))?;
        // -db: in the foreground, so killing the child stops HAProxy.
        let child = std::process::Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| DaemonError::io(format!("starting {}", binary.display()), e))?;
        let mut h = Haproxy {
            child: Some(child),
            frontends,
            config,
            log,
        };
        h.wait_listening(Duration::from_secs(10)).await?;
        Ok(h)
    }

    async fn wait_listening(&mut self, limit: Duration) -> Result<(), DaemonError> {
        let deadline = Instant::now() + limit;
        loop {
            if tokio::net::TcpStream::connect(&self.frontends.write)
                .await
                .is_ok()
            {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(DaemonError::Failed(format!(
                    "HAProxy did not listen on {} ({}): {log}",
                    self.frontends.write,
                    exited.map_or("still starting".into(), |s| format!("exited: {s}"))
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops HAProxy (SIGKILL: it holds nothing worth a clean stop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What one write through the load balancer got.
#[derive(Clone, Debug)]
pub enum Answer {
    Acked {
        lsn: u64,
        epoch: u64,
    },
    /// An HTTP answer other than 200: `kind` is walrep's (`not_primary`,
    /// `sync_timeout`, ...) or, for HAProxy's own answers (no JSON body),
    /// `haproxy_<status>`.
    Refused {
        status: u16,
        kind: String,
    },
    /// No HTTP answer (connection refused or reset, client timeout).
    NoAnswer(String),
}

/// One write and its answer.
#[derive(Clone, Debug)]
pub struct Written {
    pub key: String,
    pub value: String,
    pub started: Instant,
    pub ended: Instant,
    pub answer: Answer,
}

impl Written {
    pub fn acked_epoch(&self) -> Option<u64> {
        match self.answer {
            Answer::Acked { epoch, .. } => Some(epoch),
            _ => None,
        }
    }

    /// The error's kind, or `None` for an acknowledged write.
    pub fn error_kind(&self) -> Option<String> {
        match &self.answer {
            Answer::Acked { .. } => None,
            Answer::Refused { status, kind } => Some(format!("{status} {kind}")),
            Answer::NoAnswer(_) => Some("no_answer".into()),
        }
    }
}

/// The writes in flight at some moment from `from` to `to` (started by
/// `to`, answered from `from` on): those an event in between may have hit.
pub fn in_flight_during(writes: &[Written], from: Instant, to: Instant) -> Vec<Written> {
    writes
        .iter()
        .filter(|w| w.ended >= from && w.started <= to)
        .cloned()
        .collect()
}

/// The error kinds among `writes`, counted.
pub fn count_errors<'a>(writes: impl IntoIterator<Item = &'a Written>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for kind in writes.into_iter().filter_map(Written::error_kind) {
        *counts.entry(kind).or_insert(0) += 1;
    }
    counts
}

/// Counts as `kind n, kind n`, or `none`.
pub fn counts_text(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} x{n}")).collect();
    parts.join(", ")
}

/// The kind of a refusal's answer: walrep's `kind`, else HAProxy's.
fn refusal_kind(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorReply>(body) {
        Ok(e) => e.kind.unwrap_or_else(|| "unnamed".into()),
        Err(_) => format!("haproxy_{status}"),
    }
}

/// Writers through one address (the write frontend), each writing fresh
/// keys at most `rate` times a second and again 10 ms after an error,
/// recording every answer.
pub struct Writers {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    log: Arc<Mutex<Vec<Written>>>,
}

/// The client-side bound of one write: longer than HAProxy's retries of
/// it take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause of a writer after an error.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(10);

impl Writers {
    pub fn start(addr: &str, writers: usize, rate: f64, prefix: &str) -> Writers {
        let stop = CancellationToken::new();
        let log = Arc::new(Mutex::new(Vec::new()));
        let every = Duration::from_secs_f64(1.0 / rate.max(0.1));
        let tasks = (0..writers)
            .map(|w| {
                let (stop, log) = (stop.clone(), log.clone());
                let mut client = HttpClient::new(addr).with_timeout(WRITE_TIMEOUT);
                let prefix = format!("{prefix}-w{w}");
                tokio::spawn(async move {
                    let mut next = tokio::time::Instant::now();
                    for i in 0u64.. {
                        if stop.is_cancelled() {
                            return;
                        }
                        let key = format!("{prefix}-{i}");
                        let value = format!("<{key}>");
                        let started = Instant::now();
                        let reply = client
                            .request(Method::PUT, &format!("/kv/{key}"), value.clone().into())
                            .await;
                        let ended = Instant::now();
                        let answer = match reply {
                            Ok(r) if r.status == 200 => match r.json::<WriteReply>() {
                                Some(w) => Answer::Acked {
                                    lsn: w.lsn,
                                    epoch: w.epoch,
                                },
                                None => Answer::Refused {
                                    status: 200,
                                    kind: "not_a_write_reply".into(),
                                },
                            },
                            Ok(r) => Answer::Refused {
                                status: r.status,
                                kind: refusal_kind(r.status, &r.body),
                            },
                            Err(e) => Answer::NoAnswer(e.to_string()),
                        };
                        let acked = matches!(answer, Answer::Acked { .. });
                        log.lock().unwrap().push(Written {
                            key,
                            value,
                            started,
                            ended,
                            answer,
                        });
                        next = if acked {
                            (next + every).max(tokio::time::Instant::now())
                        } else {
                            tokio::time::Instant::now() + ERROR_BACKOFF
                        };
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep_until(next) => {}
                        }
                    }
                })
            })
            .collect();
        Writers { stop, tasks, log }
    }

    /// Every write answered so far.
    pub fn written(&self) -> Vec<Written> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a write started after `since` and acknowledged at an
    /// epoch of at least `epoch`; returns it, or an error after `limit`.
    pub async fn first_ack_after(
        &self,
        since: Instant,
        epoch: u64,
        limit: Duration,
    ) -> Result<Written, DaemonError> {
        self.acks_after(since, epoch, 1, limit).await
    }

    /// Waits for `n` writes started after `since` and acknowledged at an
    /// epoch of at least `epoch`; returns the one answered last, or an
    /// error after `limit`.
    pub async fn acks_after(
        &self,
        since: Instant,
        epoch: u64,
        n: usize,
        limit: Duration,
    ) -> Result<Written, DaemonError> {
        let deadline = Instant::now() + limit;
        loop {
            let mut acked: Vec<Written> = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|w| w.started >= since && w.acked_epoch().is_some_and(|e| e >= epoch))
                .cloned()
                .collect();
            if acked.len() >= n.max(1) {
                acked.sort_by_key(|w| w.ended);
                return Ok(acked.swap_remove(n.max(1) - 1));
            }
            if Instant::now() > deadline {
                let errors = count_errors(
                    self.log
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|w| w.started >= since),
                );
                return Err(DaemonError::Failed(format!(
                    "only {} of {n} writes acknowledged at epoch >= {epoch} within {limit:?} through the load balancer; errors meanwhile: {}",
                    acked.len(),
                    counts_text(&errors)
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last write acknowledged before `at`, if any.
    pub fn last_ack_before(&self, at: Instant) -> Option<Written> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|w| w.acked_epoch().is_some() && w.ended <= at)
            .max_by_key(|w| w.ended)
            .cloned()
    }

    /// Stops the writers (each ends its write in flight); every write.
    pub async fn stop(self) -> Vec<Written> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// The acknowledged writes that `addr` (the final primary) does not hold
/// with their value.
pub async fn lost_writes(addr: &str, writes: &[Written]) -> Result<Vec<String>, DaemonError> {
    let mut client = HttpClient::new(addr).with_timeout(Duration::from_secs(10));
    let mut lost = Vec::new();
    for w in writes.iter().filter(|w| w.acked_epoch().is_some()) {
        let got = client.get(&w.key).await?;
        if got.as_deref() != Some(w.value.as_bytes()) {
            lost.push(w.key.clone());
        }
    }
    Ok(lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontends() -> Frontends {
        Frontends {
            write: "127.0.0.1:15000".into(),
            read: "127.0.0.1:15001".into(),
            stats: "127.0.0.1:15002".into(),
        }
    }

    #[test]
    fn the_shipped_config_renders_with_every_address_replaced() {
        let out = render(
            SHIPPED_CONFIG,
            ["127.0.0.1:18001", "127.0.0.1:18002"],
            &frontends(),
        )
        .unwrap();
        for gone in NODE_ADDRS
            .iter()
            .chain(&[WRITE_ADDR, READ_ADDR, STATS_ADDR])
        {
            assert!(!out.contains(gone), "{gone} left in the rendered config");
        }
        assert!(out.contains("server n1 127.0.0.1:18001 check"), "{out}");
        assert!(out.contains("bind 127.0.0.1:15000"), "{out}");
    }

    #[test]
    fn a_config_without_an_address_to_replace_is_refused_naming_it() {
        let err = render(
            "server n1 127.0.0.1:8001 check\n",
            ["a:1", "b:2"],
            &frontends(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:8002"), "{err}");
    }
}
