//! Process-level chaos against the real `walrep` binary under faults.
//!
//! Two `walrep node` processes on loopback; each one's `--peer` is a TCP
//! proxy this test controls (`chaos/proxy.rs`) that forwards to the other
//! node's `--listen`, so the test can cut the peer link either way. (A node
//! dials only its `--peer`; `--advertise` is sent in headers as leader
//! information. The partition tests check that the cut holds: the old
//! primary does not learn the new epoch before the link heals.)
//!
//! Each scenario runs several writers against whichever node they believe
//! is primary, each write with its own key, and records every outcome:
//! acknowledged (with its `(lsn, epoch)`), failed (the node answered with a
//! refusal) or unknown (timeout, connection error). A sampler per node polls
//! `/health` throughout. At the end the invariants are checked from outside
//! over the HTTP API (G1, G2, G4 of DESIGN.md) and one line of figures is
//! printed per scenario.

mod daemon_support;
#[path = "chaos/proxy.rs"]
mod proxy;

use daemon_support::*;
use hyper::Method;
use proxy::{LinkMode, Proxy};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use walrep_daemon::api::{ErrorReply, HealthReport, WriteReply};
use walrep_daemon::client::HttpClient;

const NAMES: [&str; 2] = ["n1", "n2"];
/// A write that takes longer than this is recorded as unknown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause after a write that was not acknowledged, so a writer aimed at a
/// node that refuses does not spin.
const BACKOFF: Duration = Duration::from_millis(20);
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// Longest time to converge once faults stop (G4's bound).
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ cluster

struct Cluster {
    name: &'static str,
    nodes: Vec<NodeProc>,
    http: Vec<String>,
    /// `links[0]` is n1's `--peer` (forwards to n2), `links[1]` is n2's.
    links: Vec<Proxy>,
    dir: tempfile::TempDir,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` free loopback ports below the ephemeral range. A node's ports are
/// dialed while it is down (writers, the proxy on every heartbeat); with a
/// port in the ephemeral range such a dial can pick the same port as its
/// source and connect to itself, holding the port so the node cannot
/// listen on it again when it restarts.
fn listen_ports(n: usize) -> Vec<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_low <= 11_000 {
        return free_ports(n);
    }
    let mut ports = Vec::new();
    let mut held = Vec::new();
    while ports.len() < n {
        let port = rand::random_range(10_000..ephemeral_low);
        if ports.contains(&port) {
            continue;
        }
        if let Ok(l) = std::net::TcpListener::bind(local(port)) {
            held.push(l);
            ports.push(port);
        }
    }
    ports
}

impl Cluster {
    /// n1 primary, n2 standby, streaming through the proxies.
    async fn start(name: &'static str, extra: &[(&'static str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let p = listen_ports(4);
        let (grpc, http) = ([p[0], p[2]], [p[1], p[3]]);
        let to_n2 = Proxy::start(local(grpc[1])).await;
        let to_n1 = Proxy::start(local(grpc[0])).await;
        let f1 = with(
            node_flags(
                "n1",
                "n2",
                dir.path(),
                grpc[0],
                http[0],
                to_n2.addr.port(),
                "primary",
            ),
            extra,
        );
        let f2 = with(
            node_flags(
                "n2",
                "n1",
                dir.path(),
                grpc[1],
                http[1],
                to_n1.addr.port(),
                "standby",
            ),
            extra,
        );
        let mut nodes = vec![
            NodeProc::new("n1", &f1, dir.path()),
            NodeProc::new("n2", &f2, dir.path()),
        ];
        for n in &mut nodes {
            n.start();
        }
        let http: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
        wait_health(&http[0], "writable primary, stream up", |h| {
            is_writable_primary(h) && h.peer.connected
        })
        .await;
        wait_health(&http[1], "streaming standby", is_streaming_standby).await;
        Cluster {
            name,
            nodes,
            http,
            links: vec![to_n2, to_n1],
            dir,
        }
    }

    fn cut(&self, mode: LinkMode) {
        for link in &self.links {
            link.set(mode);
        }
    }

    fn heal(&self) {
        self.cut(LinkMode::Pass);
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(NAMES[i])
    }

    async fn health(&self, i: usize) -> Option<HealthReport> {
        let mut c = HttpClient::new(&self.http[i]).with_timeout(Duration::from_secs(2));
        c.health().await.ok().map(|(_, h)| h)
    }

    /// Waits for node `i` to be a writable primary; returns its report.
    async fn wait_primary(&self, i: usize) -> HealthReport {
        wait_health(&self.http[i], "writable primary", is_writable_primary).await
    }

    /// Waits for node `i` to be a standby streaming from a primary of at
    /// least `epoch`, and eligible (in sync) again.
    async fn wait_rejoined(&self, i: usize, epoch: u64) -> HealthReport {
        wait_health(&self.http[i], "rejoined as a streaming standby", |h| {
            is_streaming_standby(h) && h.epoch >= epoch
        })
        .await
    }
}

// --------------------------------------------------------------------- load

#[derive(Clone, Debug)]
enum Outcome {
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
struct Write {
    key: String,
    value: String,
    node: usize,
    started: Instant,
    ended: Instant,
    outcome: Outcome,
}

impl Write {
    fn acked(&self) -> Option<(u64, u64)> {
        match self.outcome {
            Outcome::Acked { lsn, epoch } => Some((lsn, epoch)),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Aim {
    /// Writes where the last answer pointed: the leader named in a 503, or
    /// the other node after any other failure.
    Follow,
    /// Always the same node, whatever it answers (probes the node that
    /// should refuse, and keeps writing to an isolated old primary).
    Pinned(usize),
}

#[derive(Clone, Debug)]
struct Sample {
    node: usize,
    /// When the request was sent: the node was in this state after then...
    sent: Instant,
    /// ...and before the answer arrived.
    at: Instant,
    health: HealthReport,
}

/// Writers and samplers running against a cluster.
struct Load {
    stop: Arc<AtomicBool>,
    writes: Arc<Mutex<Vec<Write>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(c: &Cluster, aims: &[Aim]) -> Load {
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
        for node in 0..2 {
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

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    /// Waits until `n` writes acknowledged by node `node` with an epoch of
    /// at least `epoch` were started after `since`.
    async fn wait_acks(&self, node: usize, epoch: u64, since: Instant, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self
                .writes
                .lock()
                .unwrap()
                .iter()
                .filter(|w| {
                    w.node == node
                        && w.started >= since
                        && w.acked().is_some_and(|(_, e)| e >= epoch)
                })
                .count();
            if got >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {got} of {n} writes acknowledged by {} at epoch >= {epoch} within {WAIT:?}",
                NAMES[node]
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers (each finishes its write in flight) and samplers.
    async fn stop(self) -> (Vec<Write>, Vec<Sample>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("a load task panicked");
        }
        let writes = std::mem::take(&mut *self.writes.lock().unwrap());
        let samples = std::mem::take(&mut *self.samples.lock().unwrap());
        (writes, samples)
    }
}

async fn writer(
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
        let other = 1 - at;
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

async fn sampler(node: usize, http: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Sample>>>) {
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

// --------------------------------------------------------------- invariants

/// What a check found wrong.
type Violation = Result<(), String>;

/// G1: no two different acknowledged writes share one `(lsn, epoch)`.
fn g1_no_two_acks_share_a_record(writes: &[Write]) -> Violation {
    let mut seen: HashMap<(u64, u64), &Write> = HashMap::new();
    for w in writes {
        if let Some(rec) = w.acked()
            && let Some(prev) = seen.insert(rec, w)
        {
            return Err(format!(
                "G1: {} (on {}) and {} (on {}) were both acknowledged as (lsn, epoch) {rec:?}",
                prev.key, NAMES[prev.node], w.key, NAMES[w.node]
            ));
        }
    }
    Ok(())
}

/// G1: in each epoch at most one node ever reported being a writable
/// primary or acknowledged a write.
fn g1_one_writer_per_epoch(writes: &[Write], samples: &[Sample]) -> Violation {
    let mut writers: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
    for s in samples {
        if is_writable_primary(&s.health) {
            writers
                .entry(s.health.epoch)
                .or_default()
                .insert(NAMES[s.node]);
        }
    }
    for w in writes {
        if let Some((_, epoch)) = w.acked() {
            writers.entry(epoch).or_default().insert(NAMES[w.node]);
        }
    }
    match writers.iter().find(|(_, nodes)| nodes.len() > 1) {
        Some((epoch, nodes)) => Err(format!("G1: epoch {epoch} had two writers: {nodes:?}")),
        None => Ok(()),
    }
}

/// G1: the epoch a node reports never goes down, across restarts too.
fn g1_epochs_never_decrease(samples: &[Sample]) -> Violation {
    for (node, name) in NAMES.iter().enumerate() {
        let mut last: Option<&Sample> = None;
        for s in samples.iter().filter(|s| s.node == node) {
            if let Some(prev) = last
                && s.health.epoch < prev.health.epoch
            {
                return Err(format!(
                    "G1: {name} reported epoch {} after epoch {} ({:?} later)",
                    s.health.epoch,
                    prev.health.epoch,
                    s.at - prev.at
                ));
            }
            last = Some(s);
        }
    }
    Ok(())
}

/// G1: a node that has seen a higher epoch stops writing at once: no write
/// it acknowledged in epoch `e` was sent after it reported a higher epoch.
fn g1_no_ack_after_a_newer_epoch(writes: &[Write], samples: &[Sample]) -> Violation {
    for w in writes {
        let Some((lsn, epoch)) = w.acked() else {
            continue;
        };
        if let Some(s) = samples
            .iter()
            .find(|s| s.node == w.node && s.health.epoch > epoch && s.at < w.started)
        {
            return Err(format!(
                "G1: {} acknowledged {} as ({lsn}, {epoch}) though it had reported epoch {} {:?} before the write was sent",
                NAMES[w.node],
                w.key,
                s.health.epoch,
                w.started - s.at
            ));
        }
    }
    Ok(())
}

/// A write is acknowledged or refused as unavailable (503), never answered
/// with an internal error or as bad input.
fn no_write_failed_otherwise(writes: &[Write]) {
    for w in writes {
        if let Outcome::Failed { status, error } = &w.outcome {
            assert_eq!(*status, 503, "{} on {}: {error}", w.key, NAMES[w.node]);
        }
    }
}

fn check_g1(writes: &[Write], samples: &[Sample]) {
    for check in [
        g1_no_two_acks_share_a_record(writes),
        g1_one_writer_per_epoch(writes, samples),
        g1_epochs_never_decrease(samples),
        g1_no_ack_after_a_newer_epoch(writes, samples),
    ] {
        if let Err(e) = check {
            panic!("{e}");
        }
    }
}

/// G2: the acknowledged writes that do not read back with their value from
/// `addr` (the final primary).
async fn g2_lost_acked_writes(addr: &str, writes: &[Write]) -> Vec<Write> {
    let mut client = HttpClient::new(addr).with_timeout(Duration::from_secs(10));
    let mut lost = Vec::new();
    for w in writes.iter().filter(|w| w.acked().is_some()) {
        let got = client
            .get(&w.key)
            .await
            .unwrap_or_else(|e| panic!("reading {} back: {e}", w.key));
        if got.as_deref() != Some(w.value.as_bytes()) {
            lost.push(w.clone());
        }
    }
    lost
}

/// G2 where DESIGN.md allows no loss: every acknowledged write reads back.
async fn g2_nothing_acked_lost(addr: &str, writes: &[Write]) {
    let lost = g2_lost_acked_writes(addr, writes).await;
    assert!(
        lost.is_empty(),
        "G2: {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// The final state once faults stopped: which node is primary and both
/// reports, when they agree.
struct Converged {
    primary: usize,
    reports: [HealthReport; 2],
    took: Duration,
}

/// G4: one writable primary, one streaming standby, equal applied LSN
/// (everything the primary has) and equal state hashes, within
/// `CONVERGE_WITHIN` of `since`.
async fn g4_converge(c: &Cluster, since: Instant) -> Converged {
    let deadline = since + CONVERGE_WITHIN;
    loop {
        let (a, b) = (c.health(0).await, c.health(1).await);
        let mut last = format!("n1: {a:?}\nn2: {b:?}");
        if let (Some(a), Some(b)) = (a, b) {
            let primary = match (is_writable_primary(&a), is_writable_primary(&b)) {
                (true, false) => Some(0),
                (false, true) => Some(1),
                _ => None,
            };
            if let Some(p) = primary {
                let reports = [a, b];
                let (ph, sh) = (&reports[p], &reports[1 - p]);
                if sh.is_streaming_replica()
                    && sh.epoch == ph.epoch
                    && ph.applied_lsn == ph.last_lsn
                    && sh.applied_lsn == ph.applied_lsn
                    && sh.state_hash == ph.state_hash
                {
                    return Converged {
                        primary: p,
                        reports,
                        took: since.elapsed(),
                    };
                }
                last = format!("n1: {:?}\nn2: {:?}", reports[0], reports[1]);
            }
        }
        assert!(
            Instant::now() < deadline,
            "G4: {} did not converge within {CONVERGE_WITHIN:?}; last:\n{last}",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// G2 under `solo` with a true partition (n1 the old primary, n2 the new
/// one): every lost acknowledged write was acknowledged by the old primary
/// in epoch 1 after it went solo (if it did; else nothing may be lost),
/// lost <= its `rewound_records`, and each lost write is in a `rewound/`
/// file. Returns the lost writes and the rewound count.
async fn g2_only_what_the_old_primary_acknowledged_alone_is_lost(
    c: &Cluster,
    writes: &[Write],
    samples: &[Sample],
    fault: Instant,
    conv: &Converged,
) -> (Vec<Write>, u64) {
    let lost = g2_lost_acked_writes(&c.http[1], writes).await;
    let alone_from = went_solo_after(samples, 0, fault);
    for w in &lost {
        let alone_from = alone_from.unwrap_or_else(|| {
            panic!("G2: lost {w:?} though the old primary never reported going solo")
        });
        assert!(
            w.node == 0 && w.acked().is_some_and(|(_, e)| e == 1) && w.ended > alone_from,
            "G2: lost a write the solo rule does not allow (acknowledged {:?} after the cut, the old primary went solo after {:?}): {w:?}",
            w.ended.saturating_duration_since(fault),
            alone_from - fault
        );
    }
    let rewound = conv.reports[0].rewound_records;
    assert!(
        lost.len() as u64 <= rewound,
        "G4: {} acknowledged writes dropped but only {rewound} rewound records counted",
        lost.len()
    );
    let files = rewound_files(&c.data_dir(0));
    assert!(
        rewound == 0 || !files.is_empty(),
        "{rewound} records rewound but no file in rewound/"
    );
    for w in &lost {
        assert!(
            files
                .iter()
                .any(|(_, bytes)| contains(bytes, w.value.as_bytes())),
            "G4: dropped write {} is in no rewound/ file ({:?})",
            w.key,
            files.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    (lost, rewound)
}

/// A time before which node `node` acknowledged nothing alone since
/// `since`: when the last report of it as a primary in sync before its
/// first solo report was asked for (it goes solo once per cut). `None` if
/// it never reported going solo.
fn went_solo_after(samples: &[Sample], node: usize, since: Instant) -> Option<Instant> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.node == node && s.sent >= since)
        .collect();
    let first_solo = mine.iter().position(|s| s.health.solo)?;
    Some(
        mine[..first_solo]
            .iter()
            .rev()
            .find(|s| s.health.role == "primary" && !s.health.solo)
            .map_or(since, |s| s.sent),
    )
}

/// The bytes of every file in `DIR/rewound/`.
fn rewound_files(data_dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("rewound")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ------------------------------------------------------------------ figures

#[derive(Default)]
struct Figures {
    failovers: Vec<Duration>,
    lost: usize,
    rewound: u64,
    converge: Option<Duration>,
}

/// Fault at `fault` → first write acknowledged at a higher epoch than
/// `old_epoch` (sent after the fault).
fn failover_time(writes: &[Write], fault: Instant, old_epoch: u64) -> Duration {
    writes
        .iter()
        .filter(|w| w.started >= fault && w.acked().is_some_and(|(_, e)| e > old_epoch))
        .map(|w| w.ended - fault)
        .min()
        .expect("no write acknowledged at a newer epoch after the fault")
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// One line per scenario, written straight to the process's stderr so it
/// shows with or without output capture (and nextest keeps it for the
/// chaos binary, see .config/nextest.toml).
fn report(c: &Cluster, writes: &[Write], f: &Figures) {
    let acked = writes.iter().filter(|w| w.acked().is_some()).count();
    let failed = writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Failed { .. }))
        .count();
    let unknown = writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Unknown(_)))
        .count();
    let failover = if f.failovers.is_empty() {
        "-".to_string()
    } else {
        f.failovers
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let line = format!(
        "chaos {:<28} failover {failover} | acked {acked} failed {failed} unknown {unknown} | lost {} rewound {} | converged in {}\n",
        c.name,
        f.lost,
        f.rewound,
        f.converge.map_or("-".into(), ms),
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Stops the load, then checks G4 and G1 over everything recorded.
/// Returns the records, the samples and the converged state.
async fn finish(
    c: &Cluster,
    load: Load,
    faults_ended: Instant,
) -> (Vec<Write>, Vec<Sample>, Converged) {
    let (writes, samples) = load.stop().await;
    let converged = g4_converge(c, faults_ended).await;
    check_g1(&writes, &samples);
    no_write_failed_otherwise(&writes);
    (writes, samples, converged)
}

/// The partition held: the old primary (n1) did not report a newer epoch
/// than 1 before the link healed, so nothing went around the proxies.
fn the_cut_held(samples: &[Sample], healed: Instant) {
    if let Some(s) = samples
        .iter()
        .find(|s| s.node == 0 && s.at < healed && s.health.epoch > 1)
    {
        panic!(
            "n1 reported epoch {} {:?} before the link healed: the partition leaked",
            s.health.epoch,
            healed - s.at
        );
    }
}

fn writers(follow: usize, pinned: &[usize]) -> Vec<Aim> {
    let mut aims = vec![Aim::Follow; follow];
    aims.extend(pinned.iter().map(|n| Aim::Pinned(*n)));
    aims
}

// ---------------------------------------------------------------- scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_the_primary_fails_over_and_it_rejoins_as_standby() {
    let mut c = Cluster::start("crash_primary", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.nodes[0].kill();
    let h = c.wait_primary(1).await;
    assert_eq!(h.epoch, 2);
    load.wait_acks(1, 2, fault, 50).await;

    c.nodes[0].start();
    let back = Instant::now();
    c.wait_rejoined(0, 2).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 1);
    g2_nothing_acked_lost(&c.http[1], &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            failovers: vec![failover_time(&writes, fault, 1)],
            rewound: conv.reports[0].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_the_standby_leaves_the_primary_writing_and_it_catches_up() {
    let mut c = Cluster::start("crash_standby", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    c.nodes[1].kill();
    // The primary goes on alone after sync_timeout of failed attempts.
    wait_health(&c.http[0], "solo primary", |h| {
        is_writable_primary(h) && h.solo
    })
    .await;
    load.wait_acks(0, 1, Instant::now(), 50).await;

    c.nodes[1].start();
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0, "no failover when the standby crashes");
    assert_eq!(conv.reports[0].epoch, 1);
    g2_nothing_acked_lost(&c.http[0], &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            rewound: conv.reports[1].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_refuses_writes_once_it_learns_the_new_epoch() {
    let c = Cluster::start("pause_primary", &[]).await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.nodes[0].signal(libc::SIGSTOP);
    c.wait_primary(1).await;
    load.wait_acks(1, 2, fault, 50).await;

    c.nodes[0].signal(libc::SIGCONT);
    let resumed = Instant::now();
    let learned = wait_health(&c.http[0], "epoch 2 learned", |h| h.epoch >= 2).await;
    assert!(!learned.writable, "{learned:?}");
    // Once it knows the new epoch, the old primary refuses every write.
    let mut old = HttpClient::new(&c.http[0]).with_timeout(WRITE_TIMEOUT);
    for i in 0..10 {
        let r = old
            .request(Method::PUT, &format!("/kv/stale-{i}"), "v".into())
            .await
            .expect("the resumed node answers");
        assert_eq!(
            r.status,
            503,
            "the old primary acknowledged a write after learning epoch 2: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e: ErrorReply = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(e.leader.as_deref(), Some(c.http[1].as_str()), "{e:?}");
    }
    c.wait_rejoined(0, 2).await;
    let (writes, _, conv) = finish(&c, load, resumed).await;
    assert_eq!(conv.primary, 1);
    // Woken up, it asks the standby before acknowledging anything alone,
    // and learns of epoch 2 instead: nothing sent to it after the pause
    // is acknowledged in epoch 1.
    if let Some(w) = writes
        .iter()
        .find(|w| w.node == 0 && w.started > resumed && w.acked().is_some())
    {
        panic!("the woken old primary acknowledged {w:?}");
    }
    // A pause is not a partition: nothing acknowledged may be lost.
    g2_nothing_acked_lost(&c.http[1], &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            failovers: vec![failover_time(&writes, fault, 1)],
            rewound: conv.reports[0].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

/// Partition with `on_standby_loss = block`: the old primary stops
/// acknowledging, the standby takes over, nothing acknowledged is lost.
async fn partition_in_block_mode(name: &'static str, mode: LinkMode) {
    let c = Cluster::start(name, &[("on_standby_loss", "block")]).await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.cut(mode);
    c.wait_primary(1).await;
    wait_health(&c.http[0], "old primary refusing writes", |h| !h.writable).await;
    load.wait_acks(1, 2, fault, 50).await;
    // A stretch of the partition with the old primary refusing.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, 1);

    the_cut_held(&samples, healed);
    // Writes fail while cut off: nothing sent to n1 after the cut (give the
    // proxy a moment to stop forwarding) was acknowledged in epoch 1.
    let grace = Duration::from_millis(100);
    if let Some(w) = writes
        .iter()
        .find(|w| w.node == 0 && w.started > fault + grace && w.acked().is_some())
    {
        panic!("block: the old primary acknowledged {w:?} while cut off");
    }
    g2_nothing_acked_lost(&c.http[1], &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            failovers: vec![failover_time(&writes, fault, 1)],
            rewound: conv.reports[0].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_partition_in_block_mode_loses_no_acknowledged_write() {
    partition_in_block_mode("partition_block_blackhole", LinkMode::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resetting_partition_in_block_mode_loses_no_acknowledged_write() {
    partition_in_block_mode("partition_block_reset", LinkMode::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_in_solo_mode_drops_only_what_the_old_primary_acknowledged_alone() {
    let c = Cluster::start("partition_solo", &[]).await;
    // One pinned writer keeps writing to the isolated old primary.
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.cut(LinkMode::Blackhole);
    c.wait_primary(1).await;
    load.wait_acks(1, 2, fault, 50).await;
    // Both sides write: the old primary alone once sync_timeout passed.
    wait_health(&c.http[0], "old primary gone solo", |h| {
        is_writable_primary(h) && h.solo && h.epoch == 1
    })
    .await;
    load.wait_acks(0, 1, Instant::now(), 10).await;

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, 1);
    the_cut_held(&samples, healed);

    let (lost, rewound) = g2_only_what_the_old_primary_acknowledged_alone_is_lost(
        &c, &writes, &samples, fault, &conv,
    )
    .await;
    // The isolated primary acknowledged writes alone, so some were dropped.
    assert!(
        !lost.is_empty(),
        "the scenario did not exercise the solo loss: nothing acknowledged alone was dropped"
    );
    report(
        &c,
        &writes,
        &Figures {
            failovers: vec![failover_time(&writes, fault, 1)],
            lost: lost.len(),
            rewound,
            converge: Some(conv.took),
        },
    );
}

/// Only n1 -> n2 is cut: the standby hears nothing and promotes, and its
/// Fence reaches the old primary through the open direction, which stops
/// writing at once, before the link heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_partition_fences_the_old_primary_through_the_open_direction() {
    let c = Cluster::start("partition_one_way", &[]).await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.links[0].set(LinkMode::Blackhole);
    c.wait_primary(1).await;
    let fenced = wait_health(&c.http[0], "old primary fenced while cut", |h| {
        h.epoch >= 2 && !h.writable
    })
    .await;
    assert_ne!(fenced.role, "primary", "{fenced:?}");
    load.wait_acks(1, 2, fault, 50).await;

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, 1);
    let (lost, rewound) = g2_only_what_the_old_primary_acknowledged_alone_is_lost(
        &c, &writes, &samples, fault, &conv,
    )
    .await;
    report(
        &c,
        &writes,
        &Figures {
            failovers: vec![failover_time(&writes, fault, 1)],
            lost: lost.len(),
            rewound,
            converge: Some(conv.took),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failover_back_and_forth_loses_no_acknowledged_write() {
    let mut c = Cluster::start("repeated_failover", &[]).await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 50).await;
    let mut figures = Figures::default();
    let (mut primary, mut epoch) = (0, 1);
    let mut back = Instant::now();
    let mut rewound = 0;
    for _round in 0..4 {
        let next = 1 - primary;
        let fault = Instant::now();
        c.nodes[primary].kill();
        let h = c.wait_primary(next).await;
        assert_eq!(h.epoch, epoch + 1, "one promotion per failover");
        load.wait_acks(next, epoch + 1, fault, 30).await;
        figures
            .failovers
            .push(failover_time(&load.writes(), fault, epoch));

        c.nodes[primary].start();
        back = Instant::now();
        // In sync again before the next kill, so the next failover may happen.
        let h = c.wait_rejoined(primary, epoch + 1).await;
        rewound += h.rewound_records;
        load.wait_acks(next, epoch + 1, back, 30).await;
        (primary, epoch) = (next, epoch + 1);
    }
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(
        (conv.primary, conv.reports[primary].epoch),
        (primary, epoch)
    );
    g2_nothing_acked_lost(&c.http[primary], &writes).await;
    figures.rewound = rewound.max(conv.reports[1 - primary].rewound_records);
    figures.converge = Some(conv.took);
    report(&c, &writes, &figures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_killed_and_restarted_resume_their_roles() {
    let mut c = Cluster::start("both_killed", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    c.nodes[0].kill();
    c.nodes[1].kill();
    c.nodes[1].start();
    c.nodes[0].start();
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    let h = c.wait_primary(0).await;
    assert_eq!(
        h.epoch, 1,
        "no promotion: the standby restarted without contact"
    );
    load.wait_acks(0, 1, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0);
    g2_nothing_acked_lost(&c.http[0], &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            rewound: conv.reports[0].rewound_records + conv.reports[1].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_killed_after_a_failover_resume_with_the_newer_primary() {
    let mut c = Cluster::start("both_killed_after_failover", &[]).await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    // n1 dies; n2 promotes and acknowledges writes alone; then n2 dies too.
    let fault = Instant::now();
    c.nodes[0].kill();
    c.wait_primary(1).await;
    load.wait_acks(1, 2, fault, 50).await;
    c.nodes[1].kill();
    // The old primary first, with its original flags (--role primary): it
    // must not write in epoch 1 before hearing from n2.
    c.nodes[0].start();
    wait_health(&c.http[0], "n1 up", |_| true).await;
    c.nodes[1].start();
    let back = Instant::now();
    c.wait_primary(1).await;
    c.wait_rejoined(0, 2).await;
    load.wait_acks(1, 2, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!((conv.primary, conv.reports[1].epoch), (1, 2));
    g2_nothing_acked_lost(&c.http[1], &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            failovers: vec![failover_time(&writes, fault, 1)],
            rewound: conv.reports[0].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

/// The newest segment file of a node's WAL.
fn newest_segment(data_dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("wal").join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a WAL segment")
}

/// Kills node `i`, zeroes the last `bytes` written bytes of its newest WAL
/// segment (a write torn by the crash: segments reserve their size, so
/// what never reached the disk reads as zeros) and restarts it.
fn kill_and_tear_the_wal_tail(c: &mut Cluster, i: usize, bytes: usize) {
    use std::os::unix::fs::FileExt;
    c.nodes[i].kill();
    let seg = newest_segment(&c.data_dir(i));
    let data = std::fs::read(&seg).unwrap();
    let end = data
        .iter()
        .rposition(|&b| b != 0)
        .expect("a written record")
        + 1;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .write_all_at(&vec![0; bytes], (end - bytes) as u64)
        .unwrap();
    c.nodes[i].start();
}

fn log_says(node: &NodeProc, what: &str) -> bool {
    std::fs::read_to_string(&node.log).unwrap().contains(what)
}

/// The LSN the KV snapshot in `data_dir` covers.
fn kv_snapshot_lsn(data_dir: &Path) -> u64 {
    std::fs::read(data_dir.join("kv").join("kv.snapshot"))
        .ok()
        .and_then(|b| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?)))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_on_the_standby_is_cut_and_caught_up() {
    let mut c = Cluster::start("torn_standby_tail", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 100).await;

    kill_and_tear_the_wal_tail(&mut c, 1, 3);
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    assert!(
        log_says(&c.nodes[1], "torn WAL tail"),
        "the restarted standby did not report cutting a torn tail:\n{}",
        c.nodes[1].log_tail(30)
    );
    load.wait_acks(0, 1, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0);
    g2_nothing_acked_lost(&c.http[0], &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            rewound: conv.reports[1].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

/// The torn record had been applied and the standby's KV snapshot covers
/// it: the engine is ahead of the cut WAL. The standby used to refuse to
/// start ("the WAL does not belong to this state"); it must resync from
/// the primary's snapshot and catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_under_the_standbys_kv_snapshot_resyncs_and_catches_up() {
    let mut c = Cluster::start(
        "torn_tail_under_snapshot",
        &[("snapshot_interval_ms", "50")],
    )
    .await;
    let first = write_all(&c.http[0], "before-", 100).await;
    let last = c.health(0).await.unwrap().last_lsn;
    wait_health(&c.http[1], "applied everything", |h| h.applied_lsn == last).await;
    let deadline = Instant::now() + WAIT;
    while kv_snapshot_lsn(&c.data_dir(1)) < last {
        assert!(Instant::now() < deadline, "no KV snapshot at {last} on n2");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let load = Load::start(&c, &writers(4, &[1]));
    kill_and_tear_the_wal_tail(&mut c, 1, 3);
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    assert!(
        log_says(&c.nodes[1], "torn WAL tail")
            && log_says(&c.nodes[1], "resyncing from the peer's snapshot"),
        "the restarted standby did not cut the torn tail and resync:\n{}",
        c.nodes[1].log_tail(30)
    );
    load.wait_acks(0, 1, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0);
    g2_nothing_acked_lost(&c.http[0], &writes).await;
    assert_all_readable(&c.http[0], &first).await;
    assert_all_readable(&c.http[1], &first).await;
    report(
        &c,
        &writes,
        &Figures {
            rewound: conv.reports[1].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

// ------------------------------------------------- the checkers themselves

#[test]
fn the_g1_checkers_catch_what_they_check() {
    let t = Instant::now();
    let ms = |n: u64| t + Duration::from_millis(n);
    let write = |key: &str, node: usize, started: u64, lsn: u64, epoch: u64| Write {
        key: key.into(),
        value: format!("<{key}>"),
        node,
        started: ms(started),
        ended: ms(started + 1),
        outcome: Outcome::Acked { lsn, epoch },
    };
    let sample = |node: usize, at: u64, epoch: u64, writable: bool| Sample {
        node,
        sent: ms(at),
        at: ms(at + 1),
        health: HealthReport {
            role: if writable { "primary" } else { "standby" }.into(),
            writable,
            epoch,
            ..HealthReport::default()
        },
    };
    let good_writes = vec![write("a", 0, 0, 1, 1), write("b", 1, 50, 2, 2)];
    let good_samples = vec![
        sample(0, 0, 1, true),
        sample(1, 0, 1, false),
        sample(0, 60, 2, false),
        sample(1, 40, 2, true),
    ];
    check_g1(&good_writes, &good_samples);

    let same_record = vec![write("a", 0, 0, 1, 1), write("b", 0, 5, 1, 1)];
    assert!(g1_no_two_acks_share_a_record(&same_record).is_err());
    let two_writers = vec![write("a", 0, 0, 1, 2), write("b", 1, 5, 2, 2)];
    assert!(g1_one_writer_per_epoch(&two_writers, &[]).is_err());
    let two_primaries = vec![sample(0, 0, 3, true), sample(1, 10, 3, true)];
    assert!(g1_one_writer_per_epoch(&[], &two_primaries).is_err());
    let going_back = vec![sample(0, 0, 2, false), sample(0, 10, 1, false)];
    assert!(g1_epochs_never_decrease(&going_back).is_err());
    let stale_ack = vec![write("late", 0, 20, 9, 1)];
    let knew_newer = vec![sample(0, 10, 2, false)];
    assert!(g1_no_ack_after_a_newer_epoch(&stale_ack, &knew_newer).is_err());
    // The same ack sent before the node reported the newer epoch is fine.
    let early_ack = vec![write("early", 0, 5, 9, 1)];
    assert!(g1_no_ack_after_a_newer_epoch(&early_ack, &knew_newer).is_ok());
}
