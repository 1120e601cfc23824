//! Writers and health samplers running against a cluster, recording
//! every outcome.

use super::*;
use crate::daemon_support::*;
use hyper::Method;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use walrep_daemon::api::{ErrorReply, HealthReport, WriteReply};
use walrep_daemon::client::HttpClient;

/// A write that takes longer than this is recorded as unknown.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a write that was not acknowledged, so a writer aimed at a
/// node that refuses does not spin.
pub const BACKOFF: Duration = Duration::from_millis(20);
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub enum Outcome {
    Acked {
        lsn: u64,
        epoch: u64,
    },
    /// The node answered with a refusal (503 not primary, sync timeout,
    /// fenced, unavailable...). A sync timeout means "durable there, not
    /// acknowledged": the write may still survive, so nothing is asserted
    /// about failed writes either way.
    Failed {
        status: u16,
        error: String,
    },
    /// No answer: timeout or connection error.
    /// (Read in the Debug output of failed assertions.)
    Unknown(#[allow(dead_code)] String),
}

#[derive(Clone, Debug)]
pub struct Write {
    pub key: String,
    pub value: String,
    pub node: usize,
    pub started: Instant,
    pub ended: Instant,
    pub outcome: Outcome,
}

impl Write {
    pub fn acked(&self) -> Option<(u64, u64)> {
        match self.outcome {
            Outcome::Acked { lsn, epoch } => Some((lsn, epoch)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Aim {
    /// Writes where the last answer pointed: the leader named in a 503, or
    /// the next node (in a pair, the other one) after any other failure.
    Follow,
    /// Always the same node, whatever it answers (probes the node that
    /// should refuse, and keeps writing to an isolated old primary).
    Pinned(usize),
}

#[derive(Clone, Debug)]
pub struct Sample {
    pub node: usize,
    /// When the request was sent: the node was in this state after then...
    pub sent: Instant,
    /// ...and before the answer arrived.
    pub at: Instant,
    pub health: HealthReport,
}

/// Writers and samplers running against a cluster.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub writes: Arc<Mutex<Vec<Write>>>,
    pub samples: Arc<Mutex<Vec<Sample>>>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(c: &Cluster, aims: &[Aim]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (w, aim) in aims.iter().enumerate() {
            tasks.push(tokio::spawn(writer(
                format!("{}-w{w}", c.name),
                *aim,
                c.http.clone(),
                stop.clone(),
                writes.clone(),
            )));
        }
        for node in 0..c.http.len() {
            tasks.push(tokio::spawn(sampler(
                node,
                c.http[node].clone(),
                stop.clone(),
                samples.clone(),
            )));
        }
        Load {
            stop,
            writes,
            samples,
            tasks,
        }
    }

    pub fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    /// Waits until `n` writes acknowledged by node `node` with an epoch of
    /// at least `epoch` were started after `since`.
    pub async fn wait_acks(&self, node: usize, epoch: u64, since: Instant, n: usize) {
        let what = format!("acknowledged by {} at epoch >= {epoch}", NAMES[node]);
        self.wait_writes(node, since, n, &what, |w| {
            w.acked().is_some_and(|(_, e)| e >= epoch)
        })
        .await
    }

    /// Waits until `n` writes sent to node `node` after `since` were
    /// refused with a 503.
    pub async fn wait_refusals(&self, node: usize, since: Instant, n: usize) {
        let what = format!("refused by {}", NAMES[node]);
        self.wait_writes(node, since, n, &what, |w| {
            matches!(w.outcome, Outcome::Failed { status: 503, .. })
        })
        .await
    }

    /// Waits until `n` writes sent to node `node` after `since` are
    /// `counted`; panics after `WAIT`, saying how many were `what`.
    async fn wait_writes(
        &self,
        node: usize,
        since: Instant,
        n: usize,
        what: &str,
        counted: impl Fn(&Write) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self
                .writes
                .lock()
                .unwrap()
                .iter()
                .filter(|w| w.node == node && w.started >= since && counted(w))
                .count();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {got} of {n} writes {what} within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers (each finishes its write in flight) and samplers.
    pub async fn stop(self) -> (Vec<Write>, Vec<Sample>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a load task panicked");
        }
        let writes = std::mem::take(&mut *self.writes.lock().unwrap());
        let samples = std::mem::take(&mut *self.samples.lock().unwrap());
        (writes, samples)
    }
}

pub async fn writer(
    prefix: String,
    aim: Aim,
    http: Vec<String>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Write>>>,
) {
    let mut clients: Vec<HttpClient> = http
        .iter()
        .map(|a| HttpClient::new(a).with_timeout(WRITE_TIMEOUT))
        .collect();
    let mut at = match aim {
        Aim::Follow => 0,
        Aim::Pinned(n) => n,
    };
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("{prefix}-{i}");
        // Delimited, so no value is a substring of another (rewound check).
        let value = format!("<{key}>");
        i += 1;
        let started = Instant::now();
        let reply = clients[at]
            .request(
                Method::PUT,
                &format!("/kv/{key}"),
                value.clone().into_bytes().into(),
            )
            .await;
        let ended = Instant::now();
        let other = (at + 1) % http.len();
        let (outcome, next) = match reply {
            Ok(r) if r.status == 200 => match r.json::<WriteReply>() {
                Some(w) => (
                    Outcome::Acked {
                        lsn: w.lsn,
                        epoch: w.epoch,
                    },
                    at,
                ),
                None => panic!(
                    "a 200 without a WriteReply from {}: {:?}",
                    NAMES[at], r.body
                ),
            },
            Ok(r) => {
                let e = r.json::<ErrorReply>();
                let leader = e
                    .as_ref()
                    .and_then(|e| e.leader.as_ref())
                    .and_then(|l| http.iter().position(|h| h == l));
                let next = match leader {
                    Some(l) if l != at => l,
                    _ => other,
                };
                let error = e.map_or_else(
                    || String::from_utf8_lossy(&r.body).into_owned(),
                    |e| e.error,
                );
                (
                    Outcome::Failed {
                        status: r.status,
                        error,
                    },
                    next,
                )
            }
            Err(e) => (Outcome::Unknown(e.to_string()), other),
        };
        let acked = matches!(outcome, Outcome::Acked { .. });
        log.lock().unwrap().push(Write {
            key,
            value,
            node: at,
            started,
            ended,
            outcome,
        });
        if let Aim::Follow = aim {
            at = next;
        }
        if !acked {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

pub async fn sampler(
    node: usize,
    http: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sample>>>,
) {
    let mut client = HttpClient::new(&http).with_timeout(Duration::from_secs(1));
    while !stop.load(Ordering::SeqCst) {
        let sent = Instant::now();
        if let Ok((_, health)) = client.health().await {
            log.lock().unwrap().push(Sample {
                node,
                sent,
                at: Instant::now(),
                health,
            });
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

pub fn writers(follow: usize, pinned: &[usize]) -> Vec<Aim> {
    let mut aims = vec![Aim::Follow; follow];
    aims.extend(pinned.iter().map(|n| Aim::Pinned(*n)));
    aims
}
