//! The command line: `walrep node` runs a node; the other commands talk to
//! one over its HTTP API.

use super::api::{self, PromoteReply, WriteReply};
use super::client::{self, HttpClient};
use super::config::{DEFAULT_HTTP, Layers, NodeSettings, flag_name, help, walrep_env};
use super::error::DaemonError;
use super::{bench, demo, node};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "walrep",
    version,
    about = "WAL-streaming primary/standby replication: a node hosting a demo key-value store, and its client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node: replication on --listen, the HTTP API on --http.
    Node(Box<NodeArgs>),
    /// Run the built-in witness (the arbiter of any number of clusters): gRPC on --listen, registers in --data-dir, /health and /metrics on --http.
    Witness(crate::witness::WitnessArgs),
    /// Write KEY=VALUE on the primary.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        addr: AddrArg,
        #[command(flatten)]
        once: OnceArgs,
    },
    /// Read KEY (on any node).
    Get {
        key: String,
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Delete KEY on the primary.
    Delete {
        key: String,
        #[command(flatten)]
        addr: AddrArg,
        #[command(flatten)]
        once: OnceArgs,
    },
    /// Show a node's role, epoch, positions, lag and peer; with --addr
    /// repeated, one table of every node (exit status 1 only if none answers).
    Status {
        #[command(flatten)]
        addrs: AddrsArg,
        /// Print the raw /health JSON instead of a table (one object per
        /// node; with several nodes, a JSON array of {addr, health|error}).
        #[arg(long)]
        json: bool,
    },
    /// Promote the node at --addr (a planned switchover unless --force).
    Promote {
        #[command(flatten)]
        addr: AddrArg,
        /// Promote even if the node may lack acknowledged writes.
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: the standby becomes primary once it holds every
    /// write, the primary steps down and follows it. --addr may be either
    /// node (asked of the primary, it hands over to its standby).
    Switchover {
        #[command(flatten)]
        addr: AddrArg,
        /// The standby that becomes primary (its node id): checked before
        /// anything changes, so a switchover to the wrong node, or to the
        /// node that already is the primary, is refused.
        #[arg(long, value_name = "ID")]
        to: Option<String>,
    },
    /// Pause or resume automatic failover (maintenance mode) on every node
    /// named by --addr (give both nodes: the pause is per node).
    Maintenance {
        /// pause: a standby whose primary falls silent does not promote by
        /// itself (switchover and promote --force still work); resume: back
        /// to automatic failover.
        #[arg(value_enum)]
        action: MaintenanceAction,
        #[command(flatten)]
        addrs: AddrsArg,
    },
    /// Exit 0 iff the node's (or the witness's) /health answers 200 (for container health checks).
    Healthcheck {
        #[command(flatten)]
        addr: AddrArg,
    },
    /// Start two nodes, crash the primary, watch the failover, verify.
    Demo(demo::DemoArgs),
    /// Write a cluster CA (ca.pem) and, per name, NAME.pem and NAME.key for mutual TLS (tests and demos); with --witness also witness.pem and witness.key for `walrep witness`; with --http-hosts also http.pem and http.key for HTTPS.
    Certs {
        /// Directory to write into (created; existing files are never overwritten).
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        /// Node ids, comma-separated: each certificate names one.
        #[arg(long, value_name = "NAMES", value_delimiter = ',', required = true)]
        names: Vec<String>,
        /// Also write witness.pem and witness.key: the built-in witness's
        /// server-only certificate, naming `witness` (the name nodes require
        /// of it).
        #[arg(long)]
        witness: bool,
        /// Also write http.pem and http.key: a server-only certificate for
        /// the HTTP API (--http-tls-cert) naming these hosts, comma-separated
        /// DNS names or IP addresses clients dial (never a node's name).
        #[arg(long, value_name = "HOSTS", value_delimiter = ',')]
        http_hosts: Vec<String>,
    },
    /// Benchmark: commit latency and throughput per commit mode and writer count.
    BenchPair(bench::commit::CommitArgs),
    /// Benchmark: a standby catching up a WAL backlog (MB/s, peak RSS).
    BenchCatchup(bench::catchup::CatchupArgs),
    /// Benchmark: many writers of large values (step gaps, solo, peak RSS).
    BenchBigValues(bench::big_values::BigValuesArgs),
    /// Benchmark: SIGKILL of the primary to the first write on the new one.
    BenchFailover(bench::failover::FailoverArgs),
    /// Benchmark: the write pause of a planned switchover.
    BenchSwitchover(bench::switchover::SwitchoverArgs),
    /// Benchmark: writes through HAProxy (the shipped config): unavailability per SIGKILL of the primary, errors clients see then and at a switchover.
    BenchHaproxy(bench::haproxy_failover::HaproxyArgs),
    /// Benchmark: loopback TCP copy and durable write of N bytes, the floor of a resync.
    BenchFloor(bench::floor::FloorArgs),
    /// Benchmark: a witness serving many clusters of simulated nodes: swap latency, throughput, RSS.
    BenchWitness(bench::witness::WitnessBenchArgs),
}

/// How a write is made safe to retry (`put`, `delete`).
#[derive(Args, Debug, Clone)]
pub struct OnceArgs {
    /// The write's idempotency key: sent again with the same key (by this
    /// command's retries, or by running the command again, even at the
    /// next primary after a failover), it is applied once. Default: with
    /// `--retry-for`, a fresh key that only this command's own retries
    /// share; without, none (a node with `max_request_ids = 0` refuses a
    /// key, which it could not honour).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Retry for up to this many seconds while the node is unreachable or
    /// answers 503 (not the primary, standby not confirming), following
    /// the primary's address when the answer names it. 0: one attempt.
    #[arg(long, value_name = "SECS", default_value_t = 0.0)]
    pub retry_for: f64,
}

impl OnceArgs {
    fn retry_for(&self) -> Result<Duration, DaemonError> {
        /// A day: longer is a typo, and no clock deadline overflows.
        const MAX_SECS: f64 = 86_400.0;
        match Duration::try_from_secs_f64(self.retry_for) {
            Ok(d) if self.retry_for <= MAX_SECS => Ok(d),
            _ => Err(DaemonError::Config(format!(
                "--retry-for {} is not a number of seconds from 0 to {MAX_SECS}",
                self.retry_for
            ))),
        }
    }

    fn key(&self) -> Option<String> {
        self.idempotency_key
            .clone()
            .or_else(|| (self.retry_for > 0.0).then(crate::idempotency::new_key))
    }
}

/// `walrep maintenance pause|resume`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaintenanceAction {
    Pause,
    Resume,
}

/// Several nodes (`--addr` repeated), reached with the same CA and token.
#[derive(Args, Debug, Clone)]
pub struct AddrsArg {
    /// A node's HTTP address: HOST:PORT (HTTPS with --tls-ca, else plain
    /// HTTP), https://HOST:PORT or http://HOST:PORT. Repeat for each node.
    #[arg(long = "addr", value_name = "ADDR", default_value = DEFAULT_HTTP)]
    pub addrs: Vec<String>,
    /// Talk HTTPS, trusting only the CA certificate(s) in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// File holding the nodes' HTTP token (their --http-token-file), sent
    /// as a bearer token.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
}

impl AddrsArg {
    /// One `AddrArg` per `--addr`, each with the CA and the token.
    pub fn each(&self) -> Vec<AddrArg> {
        self.addrs
            .iter()
            .map(|addr| AddrArg {
                addr: addr.clone(),
                tls_ca: self.tls_ca.clone(),
                http_token_file: self.http_token_file.clone(),
            })
            .collect()
    }
}

#[derive(Args, Debug, Clone)]
pub struct AddrArg {
    /// The node's HTTP address: HOST:PORT (HTTPS with --tls-ca, else plain
    /// HTTP), https://HOST:PORT or http://HOST:PORT.
    #[arg(long, default_value = DEFAULT_HTTP)]
    pub addr: String,
    /// Talk HTTPS, trusting only the CA certificate(s) in this PEM file
    /// (the CA that issued the node's --http-tls-cert, which must name the
    /// host of --addr).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// File holding the node's HTTP token (its --http-token-file), sent as
    /// a bearer token.
    #[arg(long, value_name = "FILE")]
    pub http_token_file: Option<PathBuf>,
}

/// `HOST:PORT` from `--addr`, checking that its scheme agrees with whether
/// `--tls-ca` is given.
pub fn host_port(addr: &str, tls_ca: bool) -> Result<String, DaemonError> {
    let bad = |msg: String| Err(DaemonError::Config(msg));
    let rest = if let Some(rest) = addr.strip_prefix("https://") {
        if !tls_ca {
            return bad(format!(
                "--addr {addr} is HTTPS: give --tls-ca FILE, the CA certificate (PEM) that issued the node's HTTP certificate"
            ));
        }
        rest
    } else if let Some(rest) = addr.strip_prefix("http://") {
        if tls_ca {
            return bad(format!(
                "--tls-ca is given but --addr {addr} is plain HTTP: use --addr https://{rest} to talk HTTPS, or drop --tls-ca"
            ));
        }
        rest
    } else if addr.contains("://") {
        return bad(format!(
            "--addr {addr}: unknown scheme; give HOST:PORT, http://HOST:PORT or https://HOST:PORT"
        ));
    } else {
        addr
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
        {
            Ok(rest.to_string())
        }
        _ => bad(format!(
            "--addr {addr} is not HOST:PORT (e.g. 127.0.0.1:8001 or https://db1.example:8001)"
        )),
    }
}

impl AddrArg {
    /// The token from `--http-token-file`, if given.
    pub fn token(&self) -> Result<Option<String>, DaemonError> {
        self.http_token_file
            .as_ref()
            .map(|path| {
                Ok(super::auth::HttpToken::from_file(path)?
                    .as_str()
                    .to_string())
            })
            .transpose()
    }

    /// `HOST:PORT` of `--addr`.
    pub fn host_port(&self) -> Result<String, DaemonError> {
        host_port(&self.addr, self.tls_ca.is_some())
    }

    /// The token and the CA, when given.
    pub fn access(&self) -> Result<client::Access, DaemonError> {
        Ok(client::Access {
            token: self.token()?,
            tls: match &self.tls_ca {
                Some(ca) => Some(super::https::client_config(ca)?),
                None => None,
            },
        })
    }

    /// A client of the node, with the token and the CA when given.
    pub fn client(&self) -> Result<HttpClient, DaemonError> {
        Ok(HttpClient::new(&self.host_port()?).with_access(&self.access()?))
    }
}

/// `walrep node`. Every setting is also read from `WALREP_<NAME>` and from
/// the TOML file (key `<name>`); flags win over the environment, which wins
/// over the file.
#[derive(Args, Debug, Default, Clone)]
#[command(
    after_help = "Every setting can also be given as the environment variable \
WALREP_<NAME> (e.g. WALREP_HEARTBEAT_MS=100) or as a key of the TOML file named by --config \
or WALREP_CONFIG (e.g. heartbeat_ms = 100). Precedence: flags > environment > file > defaults. \
Logs go to stderr; filter with WALREP_LOG or RUST_LOG (default info)."
)]
pub struct NodeArgs {
    /// TOML file of settings.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name, unique in the pair. Required.
    #[arg(long)]
    pub id: Option<String>,
    /// The other node's name (its --id), when --peer gives only HOST:PORT.
    /// A wrong guess would make the peer refuse every request, so there is
    /// no default.
    #[arg(long)]
    pub peer_id: Option<String>,
    /// Another node: its name (its --id) and where it serves replication,
    /// as ID=HOST:PORT (e.g. n2=n2:7001). Repeat it for each other node of
    /// a cluster of three or more (which needs --arbiter). A pair's older
    /// HOST:PORT with --peer-id ID works too. Required.
    #[arg(long, value_name = "ID=HOST:PORT")]
    pub peer: Vec<String>,
    /// Where this node keeps wal/, its engine's state (kv/ or sqlite/) and rewound/. Required.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<String>,
    #[arg(long, help = help("engine", "The engine the node hosts: kv (the in-memory demo map) or sqlite (one SQLite file)"))]
    pub engine: Option<String>,
    #[arg(long, help = help("role", "Role on a fresh data dir: primary or standby"))]
    pub role: Option<String>,
    #[arg(long, value_name = "IP:PORT", help = help("listen", "Replication (gRPC) listen address"))]
    pub listen: Option<String>,
    #[arg(long, value_name = "IP:PORT", help = help("http", "HTTP API listen address"))]
    pub http: Option<String>,
    /// Replication address the peer dials [default: --listen].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// HTTP address clients are redirected to [default: --http].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise_http: Option<String>,
    #[arg(long, help = help("cluster_id", "Both nodes must share it"))]
    pub cluster_id: Option<String>,
    #[arg(long, help = help("commit_mode", "async, remote-write, remote-flush or remote-apply"))]
    pub commit_mode: Option<String>,
    #[arg(long, value_name = "MS", help = help("heartbeat_ms", "Heartbeat interval"))]
    pub heartbeat_ms: Option<String>,
    #[arg(long, value_name = "MS", help = help("failover_timeout_ms", "Silence after which the standby promotes itself"))]
    pub failover_timeout_ms: Option<String>,
    #[arg(long, value_name = "MS", help = help("sync_timeout_ms", "How long a sync-mode write waits for the standby"))]
    pub sync_timeout_ms: Option<String>,
    #[arg(long, value_name = "MS", help = help("rpc_timeout_ms", "Deadline of each control RPC"))]
    pub rpc_timeout_ms: Option<String>,
    #[arg(long, help = help("on_standby_loss", "solo or block: what a sync-mode primary does without its standby"))]
    pub on_standby_loss: Option<String>,
    /// Never promote automatically (promote by hand with `walrep promote`).
    #[arg(long)]
    pub no_auto_failover: bool,
    #[arg(long, value_name = "RECORDS", help = help("max_lag_on_failover", "Async mode: most records the standby may lag and still promote"))]
    pub max_lag_on_failover: Option<String>,
    #[arg(long, value_name = "BYTES", help = help("max_record_bytes", "Largest record (encoded key + value)"))]
    pub max_record_bytes: Option<String>,
    #[arg(long, value_name = "RECORDS", help = help("snapshot_records", "Persist a KV snapshot every this many applied records"))]
    pub snapshot_records: Option<String>,
    #[arg(long, value_name = "MS", help = help("snapshot_interval_ms", "...or this often when anything new was applied"))]
    pub snapshot_interval_ms: Option<String>,
    #[arg(long, value_name = "BYTES", help = help("wal_retention_bytes", "most WAL kept, whatever a lagging standby or the KV snapshot still needs (they resync from a snapshot)"))]
    pub wal_retention_bytes: Option<String>,
    #[arg(long, value_name = "BYTES", help = help("snapshot_chunk_bytes", "Bytes per message when sending a snapshot to a resyncing standby"))]
    pub snapshot_chunk_bytes: Option<String>,
    #[arg(long, value_name = "MS", help = help("snapshot_timeout_ms", "Longest silence a snapshot transfer tolerates between messages (it resumes after)"))]
    pub snapshot_timeout_ms: Option<String>,
    #[arg(long, value_name = "IDS", help = help("max_request_ids", "Request ids (Idempotency-Key) remembered for de-duplicating retries, newest first; ~70 bytes each; 0 turns de-duplication off"))]
    pub max_request_ids: Option<String>,
    #[arg(long, value_name = "THREADS", help = help("worker_threads", "Threads running the node's tasks; fsyncs and snapshots run on threads of their own"))]
    pub worker_threads: Option<String>,
    #[arg(long, value_name = "URL", help = help("arbiter", "The arbiter deciding failovers and solo steps: witness://HOST:PORT (a `walrep witness`) or etcd://HOST:PORT[,HOST:PORT...]; without one the pair decides alone (on_standby_loss)"))]
    pub arbiter: Option<String>,
    #[arg(long, value_name = "RULE", help = help("sync_standbys", "Which standbys confirm each write, as PostgreSQL's synchronous_standby_names: 'ANY k (n2, n3)' or 'FIRST k (n2, n3)'; with k below those named, a promotion first takes the others' final positions (give every node the same text) [default: every other node]"))]
    pub sync_standbys: Option<String>,
    #[arg(long, value_name = "FILE", help = help("tls_ca", "Mutual TLS on the replication port: the cluster CA's certificate (PEM); with --tls-cert and --tls-key"))]
    pub tls_ca: Option<String>,
    #[arg(long, value_name = "FILE", help = help("tls_cert", "This node's certificate (PEM), naming its --id; reread on SIGHUP"))]
    pub tls_cert: Option<String>,
    #[arg(long, value_name = "FILE", help = help("tls_key", "The private key of --tls-cert (PEM); reread on SIGHUP"))]
    pub tls_key: Option<String>,
    #[arg(long, value_name = "FILE", help = help("http_tls_cert", "Serve the HTTP API over HTTPS with this certificate (PEM, naming the hosts clients dial); with --http-tls-key; reread on SIGHUP"))]
    pub http_tls_cert: Option<String>,
    #[arg(long, value_name = "FILE", help = help("http_tls_key", "The private key of --http-tls-cert (PEM); reread on SIGHUP"))]
    pub http_tls_key: Option<String>,
    #[arg(long, value_name = "FILE", help = help("http_token_file", "HTTP writes and promotions need `Authorization: Bearer` with the token in this file"))]
    pub http_token_file: Option<String>,
    #[arg(long, value_name = "N", help = help("http_max_connections", "Open HTTP connections at most; more are closed on arrival [default: half the open-file limit, 16..4096]"))]
    pub http_max_connections: Option<String>,
    #[arg(long, value_name = "MS", help = help("http_idle_timeout_ms", "Longest wait for a request's headers, idle keep-alive included"))]
    pub http_idle_timeout_ms: Option<String>,
    #[arg(long, value_name = "MS", help = help("http_request_timeout_ms", "Longest a PUT body may take to arrive (408 after), and a response may go unread (the connection is closed after)"))]
    pub http_request_timeout_ms: Option<String>,
    #[arg(long, value_name = "BYTES", help = help("http_write_budget_bytes", "Most bytes of PUT bodies held at once; writers wait for room, a larger write is refused"))]
    pub http_write_budget_bytes: Option<String>,
    #[arg(long, value_name = "MS", help = help("http_refusal_hold_ms", "While roles change, how long a write refused on arrival waits (applied here if the node becomes writable) before its 503"))]
    pub http_refusal_hold_ms: Option<String>,
}

impl NodeArgs {
    /// The settings given as flags, by setting name.
    pub fn flag_values(&self) -> Vec<(&'static str, String)> {
        let given = [
            ("id", &self.id),
            ("peer_id", &self.peer_id),
            ("data_dir", &self.data_dir),
            ("engine", &self.engine),
            ("role", &self.role),
            ("listen", &self.listen),
            ("http", &self.http),
            ("advertise", &self.advertise),
            ("advertise_http", &self.advertise_http),
            ("cluster_id", &self.cluster_id),
            ("commit_mode", &self.commit_mode),
            ("heartbeat_ms", &self.heartbeat_ms),
            ("failover_timeout_ms", &self.failover_timeout_ms),
            ("sync_timeout_ms", &self.sync_timeout_ms),
            ("rpc_timeout_ms", &self.rpc_timeout_ms),
            ("on_standby_loss", &self.on_standby_loss),
            ("max_lag_on_failover", &self.max_lag_on_failover),
            ("max_record_bytes", &self.max_record_bytes),
            ("snapshot_records", &self.snapshot_records),
            ("snapshot_interval_ms", &self.snapshot_interval_ms),
            ("wal_retention_bytes", &self.wal_retention_bytes),
            ("snapshot_chunk_bytes", &self.snapshot_chunk_bytes),
            ("snapshot_timeout_ms", &self.snapshot_timeout_ms),
            ("max_request_ids", &self.max_request_ids),
            ("worker_threads", &self.worker_threads),
            ("arbiter", &self.arbiter),
            ("sync_standbys", &self.sync_standbys),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("http_tls_cert", &self.http_tls_cert),
            ("http_tls_key", &self.http_tls_key),
            ("http_token_file", &self.http_token_file),
            ("http_max_connections", &self.http_max_connections),
            ("http_idle_timeout_ms", &self.http_idle_timeout_ms),
            ("http_request_timeout_ms", &self.http_request_timeout_ms),
            ("http_write_budget_bytes", &self.http_write_budget_bytes),
            ("http_refusal_hold_ms", &self.http_refusal_hold_ms),
        ];
        let mut out: Vec<(&'static str, String)> = given
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
            .collect();
        if !self.peer.is_empty() {
            // Repeated flags are one list, as the environment's commas.
            out.push(("peer", self.peer.join(",")));
        }
        if self.no_auto_failover {
            debug_assert_eq!(flag_name("auto_failover"), "--no-auto-failover");
            out.push(("auto_failover", "false".into()));
        }
        out
    }
}

pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(args)
}

/// A command ready to run. A node's settings are resolved before its
/// runtime starts: the runtime's size is one of them, and a bad value is
/// refused before anything else happens.
pub enum Job {
    Node(Box<NodeSettings>),
    Witness(crate::witness::WitnessSettings),
    Other(Command),
}

impl Job {
    /// Worker threads the job's runtime needs (`None`: tokio's default).
    pub fn worker_threads(&self) -> Option<usize> {
        match self {
            Job::Node(settings) => Some(settings.worker_threads),
            // One fsync at a time under one lock: two threads are plenty.
            Job::Witness(_) => Some(2),
            Job::Other(_) => None,
        }
    }
}

/// What `put` and `delete` print on success.
fn written(reply: &WriteReply) -> String {
    let mut line = format!("ok: lsn {} epoch {}", reply.lsn, reply.epoch);
    if reply.deduplicated {
        line.push_str(" (already written under this idempotency key; not applied again)");
    }
    line
}

/// What `promote` and `switchover` print on success: the node the
/// primary of the new epoch is, as the node asked knows it (a primary
/// asked hands over, so it names the standby that took over).
fn promoted(addr: &str, reply: &PromoteReply) -> String {
    let (epoch, asked) = (reply.epoch, &reply.node);
    if asked.is_empty() {
        // An older node names no one.
        return format!("{addr}: the primary of epoch {epoch} (`walrep status` names it)");
    }
    match &reply.primary {
        Some(p) if p == asked => format!("{addr} ({asked}) is primary at epoch {epoch}"),
        Some(p) => {
            format!("{addr} ({asked}) handed over to its standby {p}: the primary of epoch {epoch}")
        }
        None => format!(
            "{addr} ({asked}): epoch {epoch} has a primary it does not know yet; `walrep status` names it"
        ),
    }
}

pub fn prepare(cli: Cli) -> Result<Job, DaemonError> {
    Ok(match cli.command {
        Command::Node(args) => Job::Node(Box::new(
            Layers::gather(
                args.flag_values(),
                args.config.clone(),
                walrep_env(crate::config::SETTINGS)?,
            )?
            .resolve()?,
        )),
        Command::Witness(args) => {
            Job::Witness(args.resolve(walrep_env(crate::witness::settings::WITNESS_SETTINGS)?)?)
        }
        other => Job::Other(other),
    })
}

pub async fn run(job: Job) -> Result<ExitCode, DaemonError> {
    let command = match job {
        Job::Node(settings) => {
            super::init_logging();
            node::run(*settings, crate::signals::StopSignals::install()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Job::Witness(settings) => {
            super::init_logging();
            crate::witness::run(settings, crate::signals::first_stop_signal()).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Job::Other(command) => command,
    };
    match command {
        Command::Node(_) => unreachable!("prepare resolves a node's settings"),
        Command::Witness(_) => unreachable!("prepare resolves the witness's settings"),
        Command::Put {
            key,
            value,
            addr,
            once,
        } => {
            let value = Some(value.into_bytes().into());
            let reply = client::write_retrying(
                &addr.host_port()?,
                &addr.access()?,
                &key,
                value,
                once.key().as_deref(),
                once.retry_for()?,
            )
            .await?;
            println!("{}", written(&reply));
            Ok(ExitCode::SUCCESS)
        }
        Command::Delete { key, addr, once } => {
            let reply = client::write_retrying(
                &addr.host_port()?,
                &addr.access()?,
                &key,
                None,
                once.key().as_deref(),
                once.retry_for()?,
            )
            .await?;
            println!("{}", written(&reply));
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { key, addr } => match addr.client()?.get(&key).await? {
            Some(value) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&value).and_then(|_| out.write_all(b"\n"));
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("walrep: key {key:?} not found");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Status { addrs, json } => {
            let nodes = addrs.each();
            if let [addr] = &nodes[..] {
                let (code, health) = addr.client()?.health().await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&health).expect("health serializes")
                    );
                } else {
                    print!("{}", client::status_table(&addr.addr, &health));
                }
                return Ok(if code == 200 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            let rows = cluster_status(&nodes).await?;
            if json {
                let list: Vec<_> = rows
                    .iter()
                    .map(|r| match &r.health {
                        Ok(h) => serde_json::json!({"addr": r.addr, "health": h}),
                        Err(e) => serde_json::json!({"addr": r.addr, "error": e}),
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).expect("health serializes")
                );
            } else {
                print!("{}", client::cluster_table(&rows));
            }
            Ok(if rows.iter().any(|r| r.health.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Promote { addr, force } => {
            let reply = addr.client()?.promote_to(force, None).await?;
            println!("{}", promoted(&addr.addr, &reply));
            Ok(ExitCode::SUCCESS)
        }
        Command::Switchover { addr, to } => {
            let mut client = addr.client()?;
            let before = client.health().await?.1;
            if let Some(to) = &to {
                let standbys: Vec<&str> = if before.standbys.is_empty() {
                    vec![before.peer.id.as_str()]
                } else {
                    before.standbys.iter().map(|s| s.id.as_str()).collect()
                };
                api::switchover_target_check(&before.node_id, &before.role, &standbys, to)
                    .map_err(DaemonError::Config)?;
            }
            // The node checks `to` again as it sees its role on arrival.
            let reply = client.promote_to(false, to.as_deref()).await?;
            println!("{}", promoted(&addr.addr, &reply));
            Ok(ExitCode::SUCCESS)
        }
        Command::Maintenance { action, addrs } => {
            let pause = action == MaintenanceAction::Pause;
            let mut failed = 0;
            for addr in addrs.each() {
                let result = match addr.client() {
                    Ok(mut c) => c.set_maintenance(pause).await.map_err(DaemonError::from),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(r) => println!(
                        "{} ({}, {}): automatic failover {}",
                        addr.addr,
                        r.node_id,
                        r.role,
                        if r.failover_paused {
                            "paused"
                        } else {
                            "resumed"
                        }
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("walrep: {}: {e}", addr.addr);
                    }
                }
            }
            if failed > 0 {
                return Err(DaemonError::Failed(format!(
                    "{failed} of {} nodes did not {}: run the command again for them",
                    addrs.addrs.len(),
                    if pause { "pause" } else { "resume" }
                )));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs {
            dir,
            names,
            witness,
            http_hosts,
        } => {
            for file in super::certs::write_set(&dir, &names, witness, &http_hosts)? {
                println!("wrote {}", file.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { addr } => {
            // Docker reserves exit code 2: a healthcheck exits 0 or 1
            // only, a bad address or CA included (said on stderr; flags
            // clap refuses are too, in `crate::main`).
            let client = match addr.client() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("walrep: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            // The status alone: a witness's /health answers too.
            let healthy = client
                .with_timeout(std::time::Duration::from_secs(3))
                .request(hyper::Method::GET, "/health", bytes::Bytes::new())
                .await
                .map(|reply| reply.status == 200);
            Ok(match healthy {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("walrep: {e}");
                    ExitCode::FAILURE
                }
            })
        }
        Command::Demo(args) => until_interrupted(demo::run(args)).await,
        Command::BenchPair(args) => bench_done(until_interrupted(bench::commit::run(args)).await),
        Command::BenchCatchup(args) => {
            bench_done(until_interrupted(bench::catchup::run(args)).await)
        }
        Command::BenchBigValues(args) => {
            bench_done(until_interrupted(bench::big_values::run(args)).await)
        }
        Command::BenchFailover(args) => {
            bench_done(until_interrupted(bench::failover::run(args)).await)
        }
        Command::BenchSwitchover(args) => {
            bench_done(until_interrupted(bench::switchover::run(args)).await)
        }
        Command::BenchHaproxy(args) => {
            bench_done(until_interrupted(bench::haproxy_failover::run(args)).await)
        }
        Command::BenchFloor(args) => bench_done(until_interrupted(bench::floor::run(args)).await),
        Command::BenchWitness(args) => {
            bench_done(until_interrupted(bench::witness::run(args)).await)
        }
    }
}

/// Runs a command that starts child nodes. Interrupted, its future is
/// dropped, and with it the child processes (their Drop kills them).
/// Every node's health, asked at once (a node that does not answer
/// within a few seconds is a row saying so).
async fn cluster_status(nodes: &[AddrArg]) -> Result<Vec<client::ClusterRow>, DaemonError> {
    let mut asks = tokio::task::JoinSet::new();
    for (i, addr) in nodes.iter().enumerate() {
        let mut c = addr.client()?.with_timeout(Duration::from_secs(5));
        asks.spawn(async move { (i, c.health().await) });
    }
    let mut rows: Vec<Option<client::ClusterRow>> = nodes.iter().map(|_| None).collect();
    while let Some(done) = asks.join_next().await {
        let (i, answer) = done.expect("a status query does not panic");
        rows[i] = Some(client::ClusterRow {
            addr: nodes[i].addr.clone(),
            health: answer.map(|(_, h)| h).map_err(|e| e.to_string()),
        });
    }
    Ok(rows
        .into_iter()
        .map(|r| r.expect("every node answered or failed"))
        .collect())
}

async fn until_interrupted<T>(
    command: impl std::future::Future<Output = Result<T, DaemonError>>,
) -> Result<T, DaemonError> {
    tokio::select! {
        r = command => r,
        _ = crate::signals::first_stop_signal() => {
            Err(DaemonError::Failed("interrupted; the nodes it started were stopped".into()))
        }
    }
}

fn bench_done(r: Result<(), DaemonError>) -> Result<ExitCode, DaemonError> {
    r.map(|()| ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        parse(
            std::iter::once("walrep")
                .chain(args.iter().copied())
                .map(Into::into),
        )
    }

    #[test]
    fn node_help_shows_each_default_from_the_settings_table() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("node")
            .expect("node subcommand")
            .render_help()
            .to_string();
        for setting in crate::config::SETTINGS {
            // `--no-auto-failover` is a switch: its default is its absence.
            let (Some(default), false) = (setting.default, setting.key == "auto_failover") else {
                continue;
            };
            let flag = flag_name(setting.key);
            // A flag's entry: its line and the help lines under it, up to
            // the next flag (clap puts long help on the next line).
            let entry: Vec<&str> = help
                .lines()
                .skip_while(|l| !l.trim_start().starts_with(&format!("{flag} ")))
                .enumerate()
                .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with('-'))
                .map(|(_, l)| l.trim())
                .collect();
            assert!(!entry.is_empty(), "no {flag} in --help:\n{help}");
            let entry = entry.join(" ");
            assert!(
                entry.ends_with(&format!("[default: {}]", default())),
                "{flag}: {entry}"
            );
        }
    }

    #[test]
    fn node_flags_map_to_setting_names() {
        let Command::Node(args) = cli(&[
            "node",
            "--id",
            "n1",
            "--peer-id",
            "n2",
            "--data-dir",
            "/d",
            "--listen",
            "127.0.0.1:7001",
            "--peer",
            "127.0.0.1:7002",
            "--role",
            "primary",
            "--heartbeat-ms",
            "50",
            "--no-auto-failover",
        ])
        .unwrap()
        .command
        else {
            panic!("not the node command");
        };
        let flags = args.flag_values();
        assert!(flags.contains(&("heartbeat_ms", "50".into())));
        assert!(flags.contains(&("role", "primary".into())));
        assert!(flags.contains(&("auto_failover", "false".into())));
        assert!(!flags.iter().any(|(k, _)| *k == "commit_mode"));
        let s = Layers::gather(flags, None, Vec::new())
            .unwrap()
            .resolve()
            .unwrap();
        assert!(!s.cfg.auto_failover);
        assert_eq!(s.cfg.peer_addr, "127.0.0.1:7002");
    }

    #[test]
    fn client_commands_parse_with_a_default_address() {
        let c = cli(&["put", "k", "v"]).unwrap();
        assert!(
            matches!(c.command, Command::Put { ref addr, .. } if addr.addr == "127.0.0.1:8001")
        );
        let c = cli(&["promote", "--addr", "h:1", "--force"]).unwrap();
        assert!(
            matches!(c.command, Command::Promote { force: true, ref addr } if addr.addr == "h:1")
        );
        let c = cli(&["demo", "--keys", "10"]).unwrap();
        assert!(matches!(c.command, Command::Demo(ref d) if d.keys == 10));
    }

    #[test]
    fn the_address_scheme_and_tls_ca_must_agree() {
        assert_eq!(
            host_port("127.0.0.1:8001", false).unwrap(),
            "127.0.0.1:8001"
        );
        assert_eq!(host_port("127.0.0.1:8001", true).unwrap(), "127.0.0.1:8001");
        assert_eq!(host_port("https://db1:8001/", true).unwrap(), "db1:8001");
        assert_eq!(host_port("http://[::1]:8001", false).unwrap(), "[::1]:8001");
        let e = host_port("http://127.0.0.1:8001", true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tls-ca is given but --addr http://127.0.0.1:8001 is plain HTTP")
                && e.contains("https://127.0.0.1:8001"),
            "{e}"
        );
        let e = host_port("https://127.0.0.1:8001", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("give --tls-ca FILE"), "{e}");
        for bad in ["ftp://h:1", "h", "https://h:1/kv", ":80", "h:port"] {
            let e = host_port(bad, true).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let e = cli(&["node", "--heartbeat", "5"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
