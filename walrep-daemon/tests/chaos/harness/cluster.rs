//! Two `walrep node` processes (`walrep_daemon::pair`), or three or more
//! (`walrep_daemon::cluster`), whose peer links run through proxies the
//! test controls, one per directed link; with an arbiter, one more
//! process, the witness, each node dialling it through a proxy of its own.

use super::*;
use crate::daemon_support::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use walrep::CommitMode;
use walrep_daemon::api::HealthReport;
use walrep_daemon::client::HttpClient;
use walrep_daemon::cluster::{Member, member_flags, wait_streaming_all};
use walrep_daemon::pair::{NodeProc, PairPorts, node_flags, pair_specs, with};

/// The nodes' names, n1 first: a pair uses the first two.
pub const NAMES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

pub struct Cluster {
    pub name: &'static str,
    pub nodes: Vec<NodeProc>,
    pub http: Vec<String>,
    /// One proxy per directed peer link, node by node, each node's in the
    /// order of the others (see [`Cluster::link`]): in a pair `links[0]`
    /// is n1's `--peer` (forwards to n2), `links[1]` is n2's.
    pub links: Vec<Proxy>,
    /// The arbiter both nodes dial (`--arbiter`), if the cluster has one.
    pub witness: Option<Witness>,
    /// Holds the nodes' data and logs until the test ends.
    _dir: tempfile::TempDir,
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `n` free loopback ports below the ephemeral range. A node's ports are
/// dialed while it is down (writers, the proxy on every heartbeat); with a
/// port in the ephemeral range such a dial can pick the same port as its
/// source and connect to itself, holding the port so the node cannot
/// listen on it again when it restarts.
pub fn listen_ports(n: usize) -> Vec<u16> {
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

/// How a cluster starts.
#[derive(Clone, Default)]
pub struct Setup<'a> {
    /// Node settings on top of the test settings.
    pub extra: &'a [(&'static str, &'a str)],
    /// A witness as the nodes' arbiter.
    pub witness: bool,
    /// Both nodes started as primary on their fresh data directories (else
    /// n1 primary, n2 standby).
    pub both_primary: bool,
    /// An arbiter of the test's own (an etcd) that both nodes dial
    /// directly, instead of a witness behind proxies.
    pub arbiter_url: Option<String>,
    /// How many nodes: 0 or 2 for a pair, 3 or more for a cluster (each
    /// node naming every other as a peer; it needs `witness` or
    /// `arbiter_url`).
    pub nodes: usize,
}

impl Cluster {
    /// n1 primary, n2 standby, streaming through the proxies; the test
    /// settings with `extra` on top.
    pub async fn start(name: &'static str, extra: &[(&'static str, &str)]) -> Cluster {
        Cluster::start_with(
            name,
            Setup {
                extra,
                ..Setup::default()
            },
        )
        .await
    }

    /// As `start`, with a witness as the arbiter of both nodes: streaming
    /// (the standby in the register's sync set) when it returns.
    pub async fn with_witness(name: &'static str, extra: &[(&'static str, &str)]) -> Cluster {
        Cluster::start_with(
            name,
            Setup {
                extra,
                witness: true,
                ..Setup::default()
            },
        )
        .await
    }

    /// A cluster laid out as `setup` says, its processes started. Unless
    /// both nodes start as primary, n1 is a writable primary streaming to
    /// n2 when it returns; with both as primary it returns at once.
    pub async fn start_with(name: &'static str, setup: Setup<'_>) -> Cluster {
        if setup.nodes > 2 {
            return Cluster::start_many(name, setup).await;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = listen_ports(6);
        let (grpc, http) = ([p[0], p[2]], [p[1], p[3]]);
        let to_n2 = Proxy::start(local(grpc[1])).await;
        let to_n1 = Proxy::start(local(grpc[0])).await;
        let ports = PairPorts {
            grpc,
            http,
            peer: [to_n2.addr.to_string(), to_n1.addr.to_string()],
        };
        let options = test_options(setup.extra);
        let witness = if setup.witness {
            Some(Witness::start(dir.path(), p[4], p[5], &options.launch, 2).await)
        } else {
            None
        };
        let mut nodes: Vec<NodeProc> = pair_specs(&ports)
            .into_iter()
            .enumerate()
            .map(|(i, mut spec)| {
                if setup.both_primary {
                    spec.role = "primary";
                }
                let mut flags = node_flags(&options, dir.path(), &spec);
                if let Some(w) = &witness {
                    flags = with(flags, &[("arbiter", w.url_for(i))]);
                }
                if let Some(url) = &setup.arbiter_url {
                    flags = with(flags, &[("arbiter", url.clone())]);
                }
                NodeProc::new(spec.id, &flags, dir.path(), &options.launch)
            })
            .collect();
        for n in &mut nodes {
            n.spawn().expect("walrep starts");
        }
        let http: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
        if !setup.both_primary {
            wait_streaming(&http[0], &http[1]).await;
        }
        Cluster {
            name,
            nodes,
            http,
            links: vec![to_n2, to_n1],
            witness,
            _dir: dir,
        }
    }

    /// `start_with` for three or more nodes: n1 the primary of a fresh
    /// cluster, every other node its standby; each node's `--peer` list
    /// points each other node at a proxy of its own that forwards to that
    /// node. Returns once n1 streams to every standby and each of them is
    /// in contact and eligible.
    async fn start_many(name: &'static str, setup: Setup<'_>) -> Cluster {
        let count = setup.nodes;
        assert!(
            count <= NAMES.len() && !setup.both_primary,
            "a cluster of up to {} nodes, n1 its first primary",
            NAMES.len()
        );
        let dir = tempfile::tempdir().unwrap();
        let p = listen_ports(2 * count + 2);
        let (grpc, http) = (|i: usize| p[2 * i], |i: usize| p[2 * i + 1]);
        let options = test_options(setup.extra);
        let witness = if setup.witness {
            let (wg, wh) = (p[2 * count], p[2 * count + 1]);
            Some(Witness::start(dir.path(), wg, wh, &options.launch, count).await)
        } else {
            None
        };
        let mut links = Vec::new();
        let mut nodes = Vec::new();
        for (i, id) in NAMES.into_iter().enumerate().take(count) {
            let mut peers = Vec::new();
            for j in (0..count).filter(|&j| j != i) {
                let proxy = Proxy::start(local(grpc(j))).await;
                peers.push((NAMES[j].to_string(), proxy.addr.to_string()));
                links.push(proxy);
            }
            let arbiter = match (&witness, &setup.arbiter_url) {
                (Some(w), _) => w.url_for(i),
                (None, Some(url)) => url.clone(),
                (None, None) => panic!("a cluster of {count} nodes needs an arbiter"),
            };
            let member = Member {
                id: id.to_string(),
                primary: i == 0,
                grpc: grpc(i),
                http: http(i),
                peers,
                arbiter,
            };
            let flags = member_flags(&options, dir.path(), &member);
            nodes.push(NodeProc::new(id, &flags, dir.path(), &options.launch));
        }
        for n in &mut nodes {
            n.spawn().expect("walrep starts");
        }
        wait_streaming_all(&mut nodes, 0, CommitMode::RemoteFlush)
            .await
            .unwrap_or_else(|e| panic!("{name}: the cluster did not start streaming: {e}"));
        Cluster {
            name,
            http: nodes.iter().map(|n| n.http.clone()).collect(),
            nodes,
            links,
            witness,
            _dir: dir,
        }
    }

    /// The proxy node `from` dials node `to` through (`from != to`).
    pub fn link(&self, from: usize, to: usize) -> &Proxy {
        assert_ne!(from, to, "no link from a node to itself");
        let others = self.nodes.len() - 1;
        &self.links[from * others + if to < from { to } else { to - 1 }]
    }

    /// Node `i` cut from every other node, both directions of each of its
    /// peer links; with `witness_too`, from the witness as well.
    pub fn isolate(&self, i: usize, mode: LinkMode, witness_too: bool) {
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            self.link(i, j).set(mode);
            self.link(j, i).set(mode);
        }
        if witness_too {
            self.witness.as_ref().expect("a witness").links[i].set(mode);
        }
    }

    /// The witness; panics if the cluster has none.
    pub fn witness(&mut self) -> &mut Witness {
        self.witness.as_mut().expect("a cluster with a witness")
    }

    /// Sets every peer link (the nodes' links to the witness stay as they
    /// are).
    pub fn cut(&self, mode: LinkMode) {
        for link in &self.links {
            link.set(mode);
        }
    }

    /// Every link passes again: the peer links and the nodes' links to
    /// the witness.
    pub fn heal(&self) {
        self.cut(LinkMode::Pass);
        for link in self.witness.iter().flat_map(|w| &w.links) {
            link.set(LinkMode::Pass);
        }
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].data_dir.clone()
    }

    pub async fn health(&self, i: usize) -> Option<HealthReport> {
        let mut c = HttpClient::new(&self.http[i]).with_timeout(Duration::from_secs(2));
        c.health().await.ok().map(|(_, h)| h)
    }

    /// Waits for node `i` to be a writable primary; returns its report.
    pub async fn wait_primary(&self, i: usize) -> HealthReport {
        self.wait_or_show_evidence(i, "writable primary", is_writable_primary)
            .await
    }

    /// Waits for node `i` to be a standby streaming from a primary of at
    /// least `epoch`, and eligible (in sync) again.
    pub async fn wait_rejoined(&self, i: usize, epoch: u64) -> HealthReport {
        self.wait_or_show_evidence(i, "rejoined as a streaming standby", |h| {
            is_streaming_standby(h) && h.epoch >= epoch
        })
        .await
    }
}

impl Cluster {
    /// Waits until one of the nodes `among` is a writable primary at an
    /// epoch above `above`; returns it and its report.
    pub async fn wait_new_primary(&self, among: &[usize], above: u64) -> (usize, HealthReport) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let mut last = Vec::new();
            for &i in among {
                let h = self.health(i).await;
                if let Some(h) = &h
                    && is_writable_primary(h)
                    && h.epoch > above
                {
                    return (i, h.clone());
                }
                last.push(format!("{}: {h:?}", NAMES[i]));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: none of {:?} became a writable primary above epoch {above} within {WAIT:?}; last:\n{}",
                self.name,
                among.iter().map(|&i| NAMES[i]).collect::<Vec<_>>(),
                last.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until node `i` is a standby at `epoch` that names node
    /// `primary` as its leader (it followed it; not yet necessarily
    /// streaming or in sync).
    pub async fn wait_follows(&self, i: usize, primary: usize, epoch: u64) -> HealthReport {
        let what = format!("{} following {} at epoch {epoch}", NAMES[i], NAMES[primary]);
        self.wait_or_show_evidence(i, &what, |h| {
            h.role == "standby"
                && h.epoch == epoch
                && h.leader_id.as_deref() == Some(NAMES[primary])
        })
        .await
    }

    /// Waits until node `primary` is a writable primary at `epoch`
    /// streaming to every other node, each counted by its commit rule and
    /// told it is in sync, and each other node a standby at `epoch`
    /// following it, in contact and eligible to take over. Returns the
    /// primary's report.
    pub async fn wait_all_streaming(&self, primary: usize, epoch: u64) -> HealthReport {
        let others = self.nodes.len() - 1;
        let what = format!(
            "{} a writable primary at epoch {epoch}, every standby counted and in sync",
            NAMES[primary]
        );
        let h = self
            .wait_or_show_evidence(primary, &what, |h| {
                is_writable_primary(h)
                    && h.epoch == epoch
                    && h.standbys.len() == others
                    && h.standbys
                        .iter()
                        .all(|s| s.connected && s.counted && s.sync_state == "sync")
            })
            .await;
        for i in (0..self.nodes.len()).filter(|&i| i != primary) {
            let what = format!(
                "{} a streaming, eligible standby of {} at epoch {epoch}",
                NAMES[i], NAMES[primary]
            );
            self.wait_or_show_evidence(i, &what, |h| {
                is_streaming_standby(h)
                    && h.epoch == epoch
                    && h.leader_id.as_deref() == Some(NAMES[primary])
            })
            .await;
        }
        h
    }

    /// Polls node `i`'s `/health` until `pred` holds; after `WAIT` panics
    /// with every node's report and log tail, the logs kept in a folder it
    /// names.
    pub async fn wait_or_show_evidence(
        &self,
        i: usize,
        what: &str,
        pred: impl Fn(&HealthReport) -> bool,
    ) -> HealthReport {
        match walrep_daemon::process::poll_health(&self.http[i], what, WAIT, pred, || None).await {
            Ok(h) => h,
            Err(e) => panic!("{e}\n{}", self.evidence().await),
        }
    }

    /// Every node's report and log tail, and the folder the logs (of the
    /// nodes and the witness) were copied to, which outlives the test.
    pub async fn evidence(&self) -> String {
        let kept = std::env::temp_dir().join(format!(
            "walrep-chaos-evidence-{}-{}",
            self.name,
            std::process::id()
        ));
        let _ = std::fs::create_dir_all(&kept);
        let mut out = format!("logs kept in {}", kept.display());
        let logs = self
            .nodes
            .iter()
            .chain(self.witness.iter().map(|w| &w.proc))
            .map(|n| &n.log);
        for log in logs {
            if let Some(file) = log.file_name() {
                let _ = std::fs::copy(log, kept.join(file));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            out += &format!(
                "\n--- {}: {:?}\n{}",
                NAMES[i],
                self.health(i).await,
                n.log_tail(30)
            );
        }
        out
    }
}
