//! Concurrent writers over the HTTP API, as clients of a pair would be:
//! each keeps one connection, writes as fast as its acknowledgements come
//! back, and follows the primary (the `leader` of a 503, else the other
//! node) when the one it writes to stops being it.

use super::super::client::{ClientError, HttpClient};
use super::super::error::DaemonError;
use super::super::pair::NodeProc;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Which keys a writer writes.
#[derive(Clone, Copy, Debug)]
pub enum Keys {
    /// Every write a new key (as an INSERT).
    Unique,
    /// Each writer cycles over this many keys of its own (the state stays
    /// small while the WAL grows).
    Cycle(u64),
}

#[derive(Clone, Debug)]
pub struct Load {
    pub writers: usize,
    pub value_bytes: usize,
    pub keys: Keys,
    /// Prefix of every key, so runs against one pair never collide.
    pub prefix: String,
    /// The nodes' HTTP addresses; writers start on the first.
    pub addrs: Vec<String>,
    /// Keep every acknowledged key (for loss checks); else only counts and
    /// latencies.
    pub keep_keys: bool,
}

impl Load {
    /// `writers` writing fresh 100-byte values to whichever of the two
    /// nodes is primary, keeping their keys for a loss check.
    pub fn following(
        writers: usize,
        prefix: String,
        primary: &NodeProc,
        standby: &NodeProc,
    ) -> Load {
        Load {
            writers,
            value_bytes: 100,
            keys: Keys::Unique,
            prefix,
            addrs: vec![primary.http.clone(), standby.http.clone()],
            keep_keys: true,
        }
    }
}

/// One acknowledged write.
#[derive(Clone, Debug)]
pub struct Ack {
    pub at: Instant,
    pub latency: Duration,
    pub key: Option<String>,
    pub epoch: u64,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub acks: Vec<Ack>,
    pub errors: u64,
    pub last_error: Option<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn latencies(&self) -> Percentiles {
        Percentiles::new(self.acks.iter().map(|a| a.latency).collect())
    }

    pub fn per_second(&self) -> f64 {
        self.acks.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sorted samples, read as percentiles.
pub struct Percentiles(Vec<Duration>);

impl Percentiles {
    pub fn new(mut samples: Vec<Duration>) -> Percentiles {
        samples.sort_unstable();
        Percentiles(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The smallest sample at or above the `q` quantile (nearest rank).
    pub fn at(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// Runs `load` until `stop` is cancelled; a write in flight then finishes.
pub async fn run(load: &Load, stop: CancellationToken) -> LoadReport {
    let value = Bytes::from(vec![b'x'; load.value_bytes]);
    let started = Instant::now();
    let shared = Arc::new(load.clone());
    let tasks: Vec<_> = (0..load.writers.max(1))
        .map(|w| {
            let load = shared.clone();
            let (value, stop) = (value.clone(), stop.clone());
            tokio::spawn(async move { writer(&load, w, value, stop).await })
        })
        .collect();
    let mut report = LoadReport::default();
    for t in tasks {
        // A writer cannot panic but for a bug; its results are then lost.
        if let Ok(r) = t.await {
            report.acks.extend(r.acks);
            report.errors += r.errors;
            report.last_error = r.last_error.or(report.last_error);
        }
    }
    report.elapsed = started.elapsed();
    report.acks.sort_by_key(|a| a.at);
    report
}

/// Runs `load` for `length`.
pub async fn run_for(load: &Load, length: Duration) -> LoadReport {
    let stop = CancellationToken::new();
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(length).await;
            stop.cancel();
        })
    };
    let report = run(load, stop).await;
    timer.abort();
    report
}

/// A load running in the background until [`Running::finish`].
pub struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<LoadReport>,
}

pub fn start(load: &Load) -> Running {
    let stop = CancellationToken::new();
    let (load, token) = (load.clone(), stop.clone());
    let task = tokio::spawn(async move { run(&load, token).await });
    Running { stop, task }
}

impl Running {
    /// Whether every writer has stopped (only a bug stops them early).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the writers once their writes in flight are answered.
    pub async fn finish(self) -> Result<LoadReport, DaemonError> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| DaemonError::Failed(format!("the writers failed: {e}")))
    }
}

/// How many of the writes `report` kept the keys of read back as absent
/// from `addr`.
pub async fn count_lost(addr: &str, report: &LoadReport) -> Result<usize, DaemonError> {
    let mut reader = HttpClient::new(addr);
    let mut lost = 0;
    for key in report.acks.iter().filter_map(|a| a.key.as_deref()) {
        if reader.get(key).await?.is_none() {
            lost += 1;
        }
    }
    Ok(lost)
}

async fn writer(load: &Load, w: usize, value: Bytes, stop: CancellationToken) -> LoadReport {
    let mut report = LoadReport::default();
    let mut target = 0usize;
    let mut client = client_for(&load.addrs[target]);
    let mut i = 0u64;
    while !stop.is_cancelled() {
        let n = match load.keys {
            Keys::Unique => i,
            Keys::Cycle(k) => i % k.max(1),
        };
        let key = format!("{}-{w}-{n}", load.prefix);
        let sent = Instant::now();
        match client.put(&key, value.clone()).await {
            Ok(reply) => {
                let at = Instant::now();
                report.acks.push(Ack {
                    at,
                    latency: at - sent,
                    key: load.keep_keys.then_some(key),
                    epoch: reply.epoch,
                });
                i += 1;
            }
            Err(e) => {
                report.errors += 1;
                let next = match &e {
                    ClientError::Refused {
                        leader: Some(leader),
                        ..
                    } => load.addrs.iter().position(|a| a == leader),
                    _ => None,
                }
                .unwrap_or((target + 1) % load.addrs.len());
                report.last_error = Some(e.to_string());
                if next != target {
                    target = next;
                    client = client_for(&load.addrs[target]);
                }
                // No primary yet (a failover in progress): do not spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    report
}

fn client_for(addr: &str) -> HttpClient {
    HttpClient::new(addr).with_timeout(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Percentiles {
        Percentiles::new(v.iter().map(|&m| Duration::from_millis(m)).collect())
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = ms(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6]);
        assert_eq!(p.at(0.5), Duration::from_millis(5));
        assert_eq!(p.at(0.99), Duration::from_millis(10));
        assert_eq!(p.at(0.0), Duration::from_millis(1));
        assert_eq!(p.max(), Duration::from_millis(10));
        assert_eq!(ms(&[]).at(0.5), Duration::ZERO);
    }
}
