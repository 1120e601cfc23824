//! A node's settings, layered: defaults < TOML file < `WALREP_*`
//! environment < command-line flags.
//!
//! Every setting has one name, used as the TOML key; its environment
//! variable is `WALREP_` + the name in capitals and its flag is the name
//! with dashes (`heartbeat_ms`, `WALREP_HEARTBEAT_MS`, `--heartbeat-ms`;
//! the one exception is `auto_failover`, whose flag is
//! `--no-auto-failover`). The layers are merged as text and parsed once, so
//! a bad value is refused with the setting's name and the layer it came
//! from, before anything is bound or written.

use super::engine::EngineKind;
use super::error::DaemonError;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;
use walrep::NodeId;
use walrep::{CommitMode, Config, ConfigError, InitialRole, OnStandbyLoss};

/// One setting: its name (the TOML key) and default.
pub struct Setting {
    pub key: &'static str,
    /// The default as text, as a flag would give it; `None`: the setting
    /// must be given, or is derived from others. A function, so the
    /// library's defaults (`Config::DEFAULT_*`) are read, never copied.
    pub default: Option<fn() -> String>,
}

const fn s(key: &'static str, default: Option<fn() -> String>) -> Setting {
    Setting { key, default }
}

/// Where the HTTP API listens by default.
pub const DEFAULT_HTTP: &str = "127.0.0.1:8001";
/// Persist a KV snapshot after this many applied records by default.
pub const DEFAULT_SNAPSHOT_RECORDS: u64 = 10_000;
/// ...or after this long with anything new applied.
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(30);
/// Threads of the node's runtime by default (see `NodeSettings`).
pub const DEFAULT_WORKER_THREADS: usize = 1;
/// Bytes of write bodies the HTTP API holds at once by default: 64 MiB.
pub const DEFAULT_HTTP_WRITE_BUDGET_BYTES: u64 = 64 << 20;

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// Every setting of `walrep node`; `docs/DAEMON.md` says what each trades.
pub const SETTINGS: &[Setting] = &[
    s("id", None),
    s("peer_id", None),
    s("peer", None),
    s("data_dir", None),
    s("engine", Some(|| EngineKind::default().to_string())),
    s("role", Some(|| InitialRole::default().to_string())),
    // The library's default advertised address is where it listens.
    s(
        "listen",
        Some(|| Config::DEFAULT_ADVERTISE_ADDR.to_string()),
    ),
    s("http", Some(|| DEFAULT_HTTP.to_string())),
    s("advertise", None),
    s("advertise_http", None),
    s(
        "cluster_id",
        Some(|| Config::DEFAULT_CLUSTER_ID.to_string()),
    ),
    s("commit_mode", Some(|| CommitMode::default().to_string())),
    s(
        "heartbeat_ms",
        Some(|| ms(Config::DEFAULT_HEARTBEAT_INTERVAL)),
    ),
    s(
        "failover_timeout_ms",
        Some(|| ms(Config::DEFAULT_FAILOVER_TIMEOUT)),
    ),
    s("sync_timeout_ms", Some(|| ms(Config::DEFAULT_SYNC_TIMEOUT))),
    s("rpc_timeout_ms", Some(|| ms(Config::DEFAULT_RPC_TIMEOUT))),
    s(
        "on_standby_loss",
        Some(|| OnStandbyLoss::default().to_string()),
    ),
    s(
        "auto_failover",
        Some(|| Config::DEFAULT_AUTO_FAILOVER.to_string()),
    ),
    s(
        "max_lag_on_failover",
        Some(|| Config::DEFAULT_MAX_LAG_ON_FAILOVER.to_string()),
    ),
    s(
        "max_record_bytes",
        Some(|| Config::DEFAULT_MAX_RECORD_BYTES.to_string()),
    ),
    s(
        "snapshot_records",
        Some(|| DEFAULT_SNAPSHOT_RECORDS.to_string()),
    ),
    s(
        "snapshot_interval_ms",
        Some(|| ms(DEFAULT_SNAPSHOT_INTERVAL)),
    ),
    s(
        "wal_retention_bytes",
        Some(|| Config::DEFAULT_WAL_RETENTION_BYTES.to_string()),
    ),
    s(
        "snapshot_chunk_bytes",
        Some(|| Config::DEFAULT_SNAPSHOT_CHUNK_BYTES.to_string()),
    ),
    s(
        "snapshot_timeout_ms",
        Some(|| ms(Config::DEFAULT_SNAPSHOT_TIMEOUT)),
    ),
    s(
        "max_request_ids",
        Some(|| Config::DEFAULT_MAX_REQUEST_IDS.to_string()),
    ),
    s(
        "worker_threads",
        Some(|| DEFAULT_WORKER_THREADS.to_string()),
    ),
    s("arbiter", None),
    s("sync_standbys", None),
    s("tls_ca", None),
    s("tls_cert", None),
    s("tls_key", None),
    s("http_tls_cert", None),
    s("http_tls_key", None),
    s("http_token_file", None),
    s("http_max_connections", None),
    s("http_idle_timeout_ms", Some(|| "30000".to_string())),
    s("http_request_timeout_ms", Some(|| "60000".to_string())),
    s(
        "http_write_budget_bytes",
        Some(|| DEFAULT_HTTP_WRITE_BUDGET_BYTES.to_string()),
    ),
    s(
        "http_refusal_hold_ms",
        Some(|| DEFAULT_HTTP_REFUSAL_HOLD_MS.to_string()),
    ),
];

/// `http_refusal_hold_ms`: longer than a load balancer needs to see the new
/// primary (the shipped HAProxy checks a down server every 50 ms) after the
/// few milliseconds a planned switchover takes.
pub const DEFAULT_HTTP_REFUSAL_HOLD_MS: u64 = 250;

/// The default of `key` as text, `None` for a setting without one.
pub fn default_of(key: &str) -> Option<String> {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .and_then(|s| s.default)
        .map(|d| d())
}

/// A flag's help: `text` and the setting's default, as `--help` shows it.
pub fn help(key: &str, text: &str) -> String {
    match default_of(key) {
        Some(d) => format!("{text} [default: {d}]"),
        None => text.to_string(),
    }
}

/// The variable naming the TOML file when `--config` is not given.
pub const CONFIG_ENV: &str = "WALREP_CONFIG";

pub fn env_name(key: &str) -> String {
    format!("WALREP_{}", key.to_ascii_uppercase())
}

/// The variable filtering the logs (beside `RUST_LOG`).
pub const LOG_ENV: &str = "WALREP_LOG";

/// The process's `WALREP_*` variables, for a command whose settings are
/// `table`. A value that is not UTF-8 is refused naming the variable
/// (`std::env::vars` would panic on it, or on any other variable that is
/// not UTF-8, which are skipped here). A variable that names no setting
/// (a misspelling such as `WALREP_FAILOVER_TIMEOUT` for
/// `WALREP_FAILOVER_TIMEOUT_MS`) is otherwise ignored, so each gets a
/// warning on stderr naming the setting it may have meant.
pub fn walrep_env(table: &'static [Setting]) -> Result<Vec<(String, String)>, DaemonError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str().filter(|n| n.starts_with("WALREP_")) else {
            continue;
        };
        let value = value.into_string().map_err(|_| {
            DaemonError::Config(format!(
                "the environment variable {name} is not valid UTF-8: give it as text, or unset it"
            ))
        })?;
        if let Some(warning) = unknown_variable(table, name) {
            eprintln!("walrep: warning: {warning}");
        }
        vars.push((name.to_string(), value));
    }
    Ok(vars)
}

/// Why `name`, a `WALREP_*` variable, is ignored, if it is: it names no
/// setting of `table`, nor the config file or the log filter.
fn unknown_variable(table: &'static [Setting], name: &str) -> Option<String> {
    if name == CONFIG_ENV || name == LOG_ENV || table.iter().any(|s| env_name(s.key) == name) {
        return None;
    }
    let near: Vec<String> = table
        .iter()
        .map(|s| env_name(s.key))
        .filter(|known| known.starts_with(name) || name.starts_with(known.as_str()))
        .collect();
    let hint = match near.as_slice() {
        [] => "see --help for the settings".to_string(),
        some => format!("did you mean {}?", some.join(" or ")),
    };
    Some(format!(
        "the environment variable {name} names no setting and is ignored ({hint})"
    ))
}

pub fn flag_name(key: &str) -> String {
    match key {
        "auto_failover" => "--no-auto-failover".into(),
        _ => format!("--{}", key.replace('_', "-")),
    }
}

/// Which layer a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl Source {
    /// Precedence: a flag wins over the environment, which wins over the
    /// file, which wins over the default.
    fn rank(&self) -> u8 {
        match self {
            Source::Default => 0,
            Source::File(_) => 1,
            Source::Env(_) => 2,
            Source::Flag(_) => 3,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(name) | Source::Flag(name) => f.write_str(name),
        }
    }
}

/// What `walrep node` runs with: the library's `Config` and the daemon's
/// own settings.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub cfg: Config,
    pub data_dir: PathBuf,
    /// The engine the node hosts (its state in `data_dir/<engine>/`).
    pub engine: EngineKind,
    /// Where gRPC (replication) is served.
    pub listen: SocketAddr,
    /// Where the HTTP API is served.
    pub http: SocketAddr,
    /// `cfg.advertise_addr` was derived from `listen`: once bound, a port
    /// 0 is replaced by the real one.
    pub advertise_from_listen: bool,
    /// `cfg.advertise_client_addr` was derived from `http`, likewise.
    pub advertise_http_from_http: bool,
    /// Persist a KV snapshot after this many applied records...
    pub snapshot_records: u64,
    /// ...or after this long with anything new applied.
    pub snapshot_interval: Duration,
    /// Threads of the node's tokio runtime. One by default: a write
    /// crosses several tasks (HTTP, actor, streamer, applier), and on one
    /// thread each hand-off is a queue push where across threads it is a
    /// wake-up of a sleeping thread, tens of microseconds on a VM.
    pub worker_threads: usize,
    /// The arbiter's URL (`etcd://HOST:PORT[,...]` or
    /// `witness://HOST:PORT`), checked when read; `None`: the pair decides
    /// alone (`on_standby_loss`).
    pub arbiter: Option<walrep::arbiter::ArbiterUrl>,
    /// Mutual TLS on the replication port (all three of `tls_ca`,
    /// `tls_cert`, `tls_key`), or none: a trusted network.
    pub tls: Option<walrep::TlsFiles>,
    /// HTTPS for the client API (`http_tls_cert` and `http_tls_key`), or
    /// plain HTTP.
    pub http_tls: Option<crate::https::HttpTlsFiles>,
    /// Writes and promotions over HTTP need the bearer token in this file.
    pub http_token_file: Option<PathBuf>,
    /// Open HTTP connections at most; `None`: half the file limit.
    pub http_max_connections: Option<usize>,
    /// Longest wait for a request's headers, idle keep-alive included.
    pub http_idle_timeout: Duration,
    /// Longest a `PUT` body may take to arrive, and longest a response
    /// may go without the client taking any of it.
    pub http_request_timeout: Duration,
    /// Most bytes of `PUT` bodies the HTTP API holds at once, from before
    /// a body is read until its write is answered: a writer waits for room
    /// before its body is read, so many writers of large values cannot
    /// grow the node's memory beyond this; a single write above it is
    /// refused.
    pub http_write_budget_bytes: usize,
    /// How long a write refused on arrival (nothing written) waits before
    /// its 503 while the node is changing roles (a switchover pausing
    /// writes, promoting, or not primary for less than this long): if the
    /// node becomes writable meanwhile the write is applied here, else the
    /// 503 comes late enough for a load balancer to have seen the new
    /// primary and resend the write there. 0: refuse at once.
    pub http_refusal_hold: Duration,
}

/// The raw layers, merged: setting name -> (text, where it came from).
#[derive(Debug, Default)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
}

fn known(table: &'static [Setting], key: &str) -> Option<&'static str> {
    table.iter().find(|s| s.key == key).map(|s| s.key)
}

impl Layers {
    /// Merges every layer of a node's settings. `flags` holds (setting
    /// name, value) pairs given on the command line, `config_flag` the
    /// `--config` path, `env` the process environment.
    pub fn gather(
        flags: Vec<(&'static str, String)>,
        config_flag: Option<PathBuf>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Layers, DaemonError> {
        Layers::gather_for(SETTINGS, flags, config_flag, env)
    }

    /// As `gather`, for the settings of another command (`table`, e.g.
    /// the witness's), named and layered the same way.
    pub fn gather_for(
        table: &'static [Setting],
        flags: Vec<(&'static str, String)>,
        config_flag: Option<PathBuf>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Layers, DaemonError> {
        let env: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("WALREP_"))
            .collect();
        let mut layers = Layers::default();
        for setting in table {
            if let Some(d) = setting.default {
                layers.set(setting.key, d(), Source::Default);
            }
        }
        let file = config_flag.or_else(|| env.get(CONFIG_ENV).map(PathBuf::from));
        if let Some(path) = file {
            for (key, value) in read_file(table, &path)? {
                layers.set(key, value, Source::File(path.clone()));
            }
        }
        for setting in table {
            let name = env_name(setting.key);
            if let Some(v) = env.get(&name) {
                layers.set(setting.key, v.clone(), Source::Env(name));
            }
        }
        for (key, value) in flags {
            let key = known(table, key).expect("flags name known settings");
            layers.set(key, value, Source::Flag(flag_name(key)));
        }
        Ok(layers)
    }

    fn set(&mut self, key: &'static str, value: String, source: Source) {
        self.values.insert(key, (value, source));
    }

    fn raw(&self, key: &str) -> Option<&(String, Source)> {
        self.values.get(key)
    }

    pub(crate) fn source(&self, key: &str) -> Source {
        self.raw(key)
            .map(|(_, s)| s.clone())
            .unwrap_or(Source::Default)
    }

    /// The value of `key`, parsed; `None` if no layer gave one.
    pub(crate) fn get<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, DaemonError> {
        match self.raw(key) {
            None => Ok(None),
            Some((value, source)) => parse(value.trim()).map(Some).map_err(|e| {
                DaemonError::Config(format!("invalid value for {key} (from {source}): {e}"))
            }),
        }
    }

    pub(crate) fn required<T>(
        &self,
        key: &str,
        what: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, DaemonError> {
        self.get(key, parse)?.ok_or_else(|| {
            DaemonError::Config(format!(
                "missing setting {key}: {what}; give {} or {} or `{key} = ...` in the config file",
                flag_name(key),
                env_name(key)
            ))
        })
    }

    fn with_default<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, DaemonError> {
        Ok(self
            .get(key, parse)?
            .expect("settings with a default always have a value"))
    }

    /// Parses and checks every setting, then `Config::validate`.
    pub fn resolve(&self) -> Result<NodeSettings, DaemonError> {
        let node_id = self.required("id", "this node's name, unique in the pair", node_name)?;
        // No default on purpose: a guessed peer name (n1 <-> n2) that is
        // wrong makes the peer refuse every request as an unknown node,
        // which looks like a network fault. The operator names both ends.
        let (first, more) = self.required(
            "peer",
            "the other node as ID=HOST:PORT (its name and where it serves replication)",
            peer_entries,
        )?;
        let (named, peer) = first;
        if let Some(more) = more.iter().find(|p| p.id == node_id) {
            return Err(DaemonError::Config(format!(
                "peer (from {}) names {}, this node's own id; --peer names the other nodes (ID=HOST:PORT)",
                self.source("peer"),
                more.id
            )));
        }
        let given = self.get("peer_id", node_name)?;
        let peer_id = match (named, given) {
            (Some(named), _) if named == node_id => {
                return Err(DaemonError::Config(format!(
                    "peer (from {}) names {named}, this node's own id; --peer names the other node (ID=HOST:PORT)",
                    self.source("peer")
                )));
            }
            // A peer_id that disagrees is refused unless it comes from a
            // lower layer (flags win over the environment and the file, as
            // for every setting), where it gives way.
            (Some(named), Some(given))
                if named != given
                    && self.source("peer_id").rank() >= self.source("peer").rank() =>
            {
                return Err(DaemonError::Config(format!(
                    "peer names the node {named} (from {}) but peer_id says {given} (from {}); give the name once, in peer as ID=HOST:PORT",
                    self.source("peer"),
                    self.source("peer_id")
                )));
            }
            (Some(named), _) => named,
            (None, Some(given)) => given,
            (None, None) => {
                return Err(DaemonError::Config(format!(
                    "missing the peer's name: peer (from {}) gives only its address; write it as ID=HOST:PORT (e.g. --peer n2=n2:7001), or give {} or {}",
                    self.source("peer"),
                    flag_name("peer_id"),
                    env_name("peer_id")
                )));
            }
        };
        let data_dir =
            self.required("data_dir", "where this node keeps its WAL and state", |v| {
                if v.is_empty() {
                    Err("must not be empty".into())
                } else {
                    Ok(PathBuf::from(v))
                }
            })?;
        let engine: EngineKind = self.with_default("engine", |v| v.parse())?;
        let initial_role: InitialRole = self.with_default("role", |v| v.parse())?;
        let listen: SocketAddr = self.with_default("listen", socket_addr)?;
        let http: SocketAddr = self.with_default("http", socket_addr)?;
        let advertise = self.get("advertise", host_port)?;
        let advertise_from_listen = advertise.is_none();
        let advertise = match advertise {
            Some(a) => a,
            None if listen.ip().is_unspecified() => {
                return Err(DaemonError::Config(format!(
                    "missing setting advertise: listen is {listen} (from {}), which the peer cannot dial; give the address the peer should use, e.g. --advertise n1:{}",
                    self.source("listen"),
                    listen.port()
                )));
            }
            None => listen.to_string(),
        };
        let advertise_http = self.get("advertise_http", host_port)?;
        let advertise_http_from_http = advertise_http.is_none() && !http.ip().is_unspecified();
        let advertise_http = match advertise_http {
            Some(a) => a,
            None if http.ip().is_unspecified() => {
                // Same host the peer dials for replication, HTTP port.
                let host = advertise.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
                format!("{host}:{}", http.port())
            }
            None => http.to_string(),
        };
        let cluster_id = self.with_default("cluster_id", nonempty)?;
        let commit_mode: CommitMode = self.with_default("commit_mode", |v| v.parse())?;
        let heartbeat_interval = self.with_default("heartbeat_ms", millis)?;
        let failover_timeout = self.with_default("failover_timeout_ms", millis)?;
        let sync_timeout = self.with_default("sync_timeout_ms", millis)?;
        let rpc_timeout = self.with_default("rpc_timeout_ms", millis)?;
        let on_standby_loss: OnStandbyLoss = self.with_default("on_standby_loss", |v| v.parse())?;
        let auto_failover = self.with_default("auto_failover", boolean)?;
        let max_lag_on_failover = self.with_default("max_lag_on_failover", count)?;
        let max_record_bytes = self.with_default("max_record_bytes", count)?;
        let snapshot_records = self.with_default("snapshot_records", |v| {
            count(v).and_then(|n| {
                if n == 0 {
                    Err("must be at least 1".into())
                } else {
                    Ok(n)
                }
            })
        })?;
        let snapshot_interval = self.with_default("snapshot_interval_ms", |v| {
            millis(v).and_then(|d| {
                if d.is_zero() {
                    Err("must be greater than 0".into())
                } else {
                    Ok(d)
                }
            })
        })?;
        let wal_retention_bytes = self.with_default("wal_retention_bytes", count)?;
        let snapshot_chunk_bytes = self.with_default("snapshot_chunk_bytes", count)?;
        let snapshot_timeout = self.with_default("snapshot_timeout_ms", millis)?;
        let max_request_ids = self.with_default("max_request_ids", |v| {
            count(v).and_then(|n| {
                usize::try_from(n).map_err(|_| "is too large for this machine".to_string())
            })
        })?;
        let worker_threads = self.with_default("worker_threads", |v| {
            count(v).and_then(|n| match n {
                1..=1024 => Ok(n as usize),
                _ => Err("must be between 1 and 1024".into()),
            })
        })?;
        let http_write_budget_bytes = self.with_default("http_write_budget_bytes", |v| {
            count(v).and_then(|n| match usize::try_from(n) {
                Ok(n @ 1..=0xffff_ffff) => Ok(n),
                _ => Err("must be between 1 and 4294967295 (4 GiB - 1)".into()),
            })
        })?;
        let max_record_bytes = usize::try_from(max_record_bytes)
            .map_err(|_| DaemonError::Config("max_record_bytes is too large".into()))?;
        let snapshot_chunk_bytes = usize::try_from(snapshot_chunk_bytes)
            .map_err(|_| DaemonError::Config("snapshot_chunk_bytes is too large".into()))?;
        let defaults = Config::default();
        let cfg = Config {
            node_id,
            peer_id,
            peer_addr: peer,
            more_peers: more,
            sync_standbys: self.get("sync_standbys", |v| {
                v.parse::<walrep::CommitRule>().map_err(|e| e.to_string())
            })?,
            advertise_addr: advertise,
            advertise_client_addr: Some(advertise_http),
            cluster_id,
            initial_role,
            commit_mode,
            heartbeat_interval,
            failover_timeout,
            auto_failover,
            max_lag_on_failover,
            sync_timeout,
            on_standby_loss,
            rpc_timeout,
            max_record_bytes,
            wal_retention_bytes,
            snapshot_chunk_bytes,
            snapshot_timeout,
            max_request_ids,
            // Room for the largest record, and for a snapshot chunk, plus
            // framing in one message.
            max_message_bytes: defaults
                .max_message_bytes
                .max(max_record_bytes.saturating_add(64 << 10))
                .max(snapshot_chunk_bytes.saturating_add(64 << 10)),
            // A planned switchover must outlast a sync-mode write.
            switchover_timeout: defaults.switchover_timeout.max(sync_timeout * 2),
            // The node's runtime serves nothing a standby's fsync could
            // hold up for long (its clients' reads wait one fsync at most).
            standby_sync_inline: true,
            ..defaults
        };
        let arbiter = self.get("arbiter", |v| {
            walrep::arbiter::ArbiterUrl::parse(v).map_err(|e| e.to_string())
        })?;
        // The arbiter the URL names is attached at start (a cluster of
        // three or more needs one).
        cfg.validate_expecting_arbiter(arbiter.is_some())
            .map_err(|e| self.explain(e))?;
        let tls = self.tls_files()?;
        let http_tls = self.http_tls_files()?;
        let http_token_file = self.get("http_token_file", |v| {
            if v.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(PathBuf::from(v))
            }
        })?;
        let positive = |v: &str| {
            millis(v).and_then(|d| {
                if d.is_zero() {
                    Err("must be greater than 0".to_string())
                } else {
                    Ok(d)
                }
            })
        };
        let http_idle_timeout = self.with_default("http_idle_timeout_ms", positive)?;
        let http_request_timeout = self.with_default("http_request_timeout_ms", positive)?;
        let http_refusal_hold = self.with_default("http_refusal_hold_ms", millis)?;
        let http_max_connections = self.get("http_max_connections", |v| {
            count(v).and_then(|n| match usize::try_from(n) {
                Ok(n) if n > 0 => Ok(n),
                _ => Err("must be a positive number of connections".to_string()),
            })
        })?;
        Ok(NodeSettings {
            cfg,
            data_dir,
            engine,
            listen,
            http,
            advertise_from_listen,
            advertise_http_from_http,
            snapshot_records,
            snapshot_interval,
            worker_threads,
            arbiter,
            tls,
            http_tls,
            http_token_file,
            http_max_connections,
            http_idle_timeout,
            http_request_timeout,
            http_write_budget_bytes,
            http_refusal_hold,
        })
    }

    /// `http_tls_cert` and `http_tls_key` together, or neither.
    fn http_tls_files(&self) -> Result<Option<crate::https::HttpTlsFiles>, DaemonError> {
        let path = |v: &str| {
            if v.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(PathBuf::from(v))
            }
        };
        let cert = self.get("http_tls_cert", path)?;
        let key = self.get("http_tls_key", path)?;
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(crate::https::HttpTlsFiles { cert, key })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(DaemonError::Config(format!(
                "HTTPS needs http_tls_cert and http_tls_key together: http_tls_cert is given (from {}) but http_tls_key is not; give --http-tls-key",
                self.source("http_tls_cert")
            ))),
            (None, Some(_)) => Err(DaemonError::Config(format!(
                "HTTPS needs http_tls_cert and http_tls_key together: http_tls_key is given (from {}) but http_tls_cert is not; give --http-tls-cert",
                self.source("http_tls_key")
            ))),
        }
    }

    /// `tls_ca`, `tls_cert` and `tls_key` together, or none of them.
    pub(crate) fn tls_files(&self) -> Result<Option<walrep::TlsFiles>, DaemonError> {
        let path = |v: &str| {
            if v.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(PathBuf::from(v))
            }
        };
        let ca = self.get("tls_ca", path)?;
        let cert = self.get("tls_cert", path)?;
        let key = self.get("tls_key", path)?;
        match (ca, cert, key) {
            (Some(ca), Some(cert), Some(key)) => Ok(Some(walrep::TlsFiles { ca, cert, key })),
            (None, None, None) => Ok(None),
            (ca, cert, key) => {
                let missing: Vec<&str> = [
                    ("tls_ca", ca.is_none()),
                    ("tls_cert", cert.is_none()),
                    ("tls_key", key.is_none()),
                ]
                .into_iter()
                .filter_map(|(k, m)| m.then_some(k))
                .collect();
                Err(DaemonError::Config(format!(
                    "mutual TLS needs tls_ca, tls_cert and tls_key together; missing {}: give {} (`walrep certs` makes a set for tests and demos)",
                    missing.join(", "),
                    missing
                        .iter()
                        .map(|k| flag_name(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    }

    /// `Config::validate` names the library's field as data; add the
    /// daemon's name for it (and for the setting it was checked against)
    /// and where their values came from.
    fn explain(&self, err: ConfigError) -> DaemonError {
        let mut keys: Vec<&'static str> = err.settings().filter_map(daemon_key).collect();
        keys.dedup();
        if keys.is_empty() {
            DaemonError::Config(format!("invalid configuration: {err}"))
        } else {
            let named: Vec<String> = keys
                .iter()
                .map(|key| format!("{key} from {}", self.source(key)))
                .collect();
            DaemonError::Config(format!(
                "invalid configuration: {err} (settings: {})",
                named.join(", ")
            ))
        }
    }
}

/// The daemon setting that sets a library field, if one does (the batch
/// and backoff limits keep the library's defaults; `max_message_bytes` is
/// derived from `max_record_bytes`).
fn daemon_key(setting: walrep::Setting) -> Option<&'static str> {
    use walrep::Setting as S;
    Some(match setting {
        S::NodeId => "id",
        S::PeerId => "peer_id",
        S::PeerAddr | S::MorePeers => "peer",
        S::SyncStandbys => "sync_standbys",
        S::AdvertiseAddr => "advertise",
        S::ClusterId => "cluster_id",
        S::HeartbeatInterval => "heartbeat_ms",
        S::FailoverTimeout => "failover_timeout_ms",
        S::SyncTimeout => "sync_timeout_ms",
        S::RpcTimeout => "rpc_timeout_ms",
        S::MaxRecordBytes | S::MaxMessageBytes => "max_record_bytes",
        S::SnapshotChunkBytes => "snapshot_chunk_bytes",
        S::SnapshotTimeout => "snapshot_timeout_ms",
        _ => return None,
    })
}

/// Reads a TOML file of settings; unknown keys are refused (a typo would
/// otherwise be silently ignored).
fn read_file(
    settings: &'static [Setting],
    path: &Path,
) -> Result<Vec<(&'static str, String)>, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        DaemonError::Config(format!("cannot read config file {}: {e}", path.display()))
    })?;
    let table: toml::Table = text.parse().map_err(|e| {
        DaemonError::Config(format!(
            "config file {} is not valid TOML: {e}",
            path.display()
        ))
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(key) = known(settings, &key) else {
            let names: Vec<&str> = settings.iter().map(|s| s.key).collect();
            return Err(DaemonError::Config(format!(
                "unknown setting {key:?} in config file {}; known settings: {}",
                path.display(),
                names.join(", ")
            )));
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list (`peer = ["n2=a:7001", "n3=b:7001"]`) is the flag
            // repeated; only strings may be in it.
            toml::Value::Array(items) if items.iter().all(|i| i.is_str()) => items
                .iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join(","),
            other => {
                return Err(DaemonError::Config(format!(
                    "invalid value for {key} (from config file {}): expected a string, an integer or a boolean, not {}",
                    path.display(),
                    other.type_str()
                )));
            }
        };
        out.push((key, text));
    }
    Ok(out)
}

fn nonempty(v: &str) -> Result<String, String> {
    if v.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(v.to_string())
    }
}

fn node_name(v: &str) -> Result<NodeId, String> {
    if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!("{v:?} is not a node name (non-empty, no spaces)"))
    } else {
        Ok(NodeId::from(v))
    }
}

pub(crate) fn socket_addr(v: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(v).map_err(|_| {
        format!("{v:?} is not an IP:PORT to listen on (e.g. 127.0.0.1:7001 or 0.0.0.0:7001)")
    })
}

/// `--peer` (repeatable; a list separated by commas in the environment
/// or the file): each other node as `ID=HOST:PORT`. A pair may give its
/// one peer as the older `HOST:PORT` with the name in `--peer-id`. The
/// first is `Config::peer_id`, the rest `Config::more_peers`.
fn peer_entries(v: &str) -> Result<(PeerEntry, Vec<walrep::PeerAddress>), String> {
    let entries: Vec<&str> = v
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let Some((first, rest)) = entries.split_first() else {
        return peer_entry(v).map(|p| (p, Vec::new()));
    };
    let first = peer_entry(first)?;
    let mut more = Vec::new();
    for entry in rest {
        match peer_entry(entry)? {
            (Some(id), addr) => more.push(walrep::PeerAddress { id, addr }),
            (None, _) => {
                return Err(format!(
                    "{entry:?} has no name: with several peers, give each as ID=HOST:PORT"
                ));
            }
        }
    }
    if !more.is_empty() && first.0.is_none() {
        return Err(format!(
            "{:?} has no name: with several peers, give each as ID=HOST:PORT",
            entries[0]
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for id in first.0.iter().chain(more.iter().map(|p| &p.id)) {
        if !seen.insert(id.clone()) {
            return Err(format!(
                "names the node {id} twice; give each other node once"
            ));
        }
    }
    Ok((first, more))
}

/// One `--peer` entry: its name if it gave one, and its address.
type PeerEntry = (Option<NodeId>, String);

/// One `--peer` entry: `ID=HOST:PORT`, or `HOST:PORT`.
fn peer_entry(entry: &str) -> Result<PeerEntry, String> {
    match entry.split_once('=') {
        Some((id, addr)) => {
            let id = node_name(id.trim())?;
            let addr = host_port(addr.trim())
                .map_err(|e| format!("{e}, after the peer's name {id} (ID=HOST:PORT)"))?;
            Ok((Some(id), addr))
        }
        None => Ok((None, host_port(entry)?)),
    }
}

/// `HOST:PORT`: a host name or IPv4 address, or an IPv6 address in
/// brackets (`[::1]:7001`), and a port. Nothing that could be two entries
/// run together (spaces, `=`, `,`) passes as a host.
fn host_port(v: &str) -> Result<String, String> {
    let bad = || format!("{v:?} is not a HOST:PORT (e.g. n2:7001, or [::1]:7001 for IPv6)");
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let bracketed = host.len() > 2 && host.starts_with('[') && host.ends_with(']');
    let plain = !host.is_empty()
        && !host.contains(':')
        && !host.contains(['[', ']'])
        && !host.contains(|c: char| c.is_whitespace() || c == '=' || c == ',');
    if port.parse::<u16>().is_err() || !(bracketed || plain) {
        return Err(bad());
    }
    Ok(v.into())
}

fn millis(v: &str) -> Result<Duration, String> {
    v.parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|_| format!("{v:?} is not a whole number of milliseconds"))
}

fn count(v: &str) -> Result<u64, String> {
    v.parse::<u64>()
        .map_err(|_| format!("{v:?} is not a whole number (sizes are in bytes, without a unit)"))
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base_flags() -> Vec<(&'static str, String)> {
        vec![
            ("id", "n1".into()),
            ("peer_id", "n2".into()),
            ("peer", "127.0.0.1:7002".into()),
            ("data_dir", "/tmp/never-created".into()),
        ]
    }

    fn resolve(
        flags: Vec<(&'static str, String)>,
        file: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Result<NodeSettings, DaemonError> {
        let dir = tempfile::tempdir().unwrap();
        let path = file.map(|text| {
            let p = dir.path().join("walrep.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        Layers::gather(flags, path, env(vars))?.resolve()
    }

    fn err(r: Result<NodeSettings, DaemonError>) -> String {
        match r {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let s = resolve(base_flags(), None, &[]).unwrap();
        assert_eq!(s.cfg.heartbeat_interval, Duration::from_millis(200));
        assert_eq!(s.cfg.failover_timeout, Duration::from_secs(1));
        assert_eq!(s.cfg.commit_mode, CommitMode::RemoteFlush);
        assert_eq!(s.cfg.initial_role, InitialRole::Standby);
        assert!(s.cfg.auto_failover);
        assert_eq!(s.cfg.advertise_addr, "127.0.0.1:7001");
        assert_eq!(
            s.cfg.advertise_client_addr.as_deref(),
            Some("127.0.0.1:8001")
        );
        assert!(s.advertise_from_listen && s.advertise_http_from_http);
        assert_eq!(s.worker_threads, 1);
    }

    #[test]
    fn worker_threads_must_be_at_least_one() {
        let mut flags = base_flags();
        flags.push(("worker_threads", "0".into()));
        let e = err(resolve(flags, None, &[]));
        assert!(
            e.contains("invalid value for worker_threads (from --worker-threads)")
                && e.contains("between 1 and 1024"),
            "{e}"
        );
        let s = resolve(base_flags(), None, &[("WALREP_WORKER_THREADS", "4")]).unwrap();
        assert_eq!(s.worker_threads, 4);
    }

    #[test]
    fn a_bad_env_value_is_refused_naming_the_setting_and_the_variable() {
        let e = err(resolve(
            base_flags(),
            None,
            &[("WALREP_HEARTBEAT_MS", "fast")],
        ));
        assert!(
            e.starts_with("invalid value for heartbeat_ms (from WALREP_HEARTBEAT_MS):"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_flag_or_file_value_names_its_source() {
        let mut flags = base_flags();
        flags.push(("commit_mode", "sync".into()));
        let e = err(resolve(flags, None, &[]));
        assert!(
            e.contains("invalid value for commit_mode (from --commit-mode)"),
            "{e}"
        );
        let e = err(resolve(base_flags(), Some("listen = \"nowhere\"\n"), &[]));
        assert!(
            e.contains("invalid value for listen (from config file"),
            "{e}"
        );
        let e = err(resolve(
            base_flags(),
            Some("auto_failover = \"maybe\"\n"),
            &[],
        ));
        assert!(e.contains("invalid value for auto_failover"), "{e}");
    }

    #[test]
    fn flags_override_env_and_file_and_env_overrides_file() {
        let file = "heartbeat_ms = 100\nfailover_timeout_ms = 900\nsync_timeout_ms = 1700\ncluster_id = \"from-file\"\n";
        let vars = [
            ("WALREP_HEARTBEAT_MS", "110"),
            ("WALREP_FAILOVER_TIMEOUT_MS", "800"),
        ];
        let mut flags = base_flags();
        flags.push(("heartbeat_ms", "120".into()));
        let s = resolve(flags, Some(file), &vars).unwrap();
        assert_eq!(s.cfg.heartbeat_interval, Duration::from_millis(120), "flag");
        assert_eq!(s.cfg.failover_timeout, Duration::from_millis(800), "env");
        assert_eq!(s.cfg.sync_timeout, Duration::from_millis(1700), "file");
        assert_eq!(s.cfg.cluster_id, "from-file");
    }

    #[test]
    fn the_config_file_may_come_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.toml");
        std::fs::write(&p, "id = \"n7\"\npeer_id = \"n8\"\npeer = \"n8:7001\"\ndata_dir = \"/d\"\nrole = \"primary\"\n").unwrap();
        let s = Layers::gather(vec![], None, env(&[(CONFIG_ENV, p.to_str().unwrap())]))
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(s.cfg.node_id, NodeId::from("n7"));
        assert_eq!(s.cfg.initial_role, InitialRole::Primary);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let e = err(resolve(base_flags(), Some("hearbeat_ms = 100\n"), &[]));
        assert!(e.contains("unknown setting \"hearbeat_ms\""), "{e}");
    }

    #[test]
    fn a_peer_without_its_name_needs_peer_id() {
        let flags = base_flags()
            .into_iter()
            .filter(|(k, _)| *k != "peer_id")
            .collect();
        let e = err(resolve(flags, None, &[]));
        assert!(e.contains("missing the peer's name"), "{e}");
        assert!(e.contains("ID=HOST:PORT"), "{e}");
        assert!(
            e.contains("--peer-id") && e.contains("WALREP_PEER_ID"),
            "{e}"
        );
    }

    fn without_peer() -> Vec<(&'static str, String)> {
        base_flags()
            .into_iter()
            .filter(|(k, _)| *k != "peer_id" && *k != "peer")
            .collect()
    }

    #[test]
    fn a_peer_given_as_id_equals_host_port_names_it() {
        let mut flags = without_peer();
        flags.push(("peer", "n2=127.0.0.1:7002".into()));
        let s = resolve(flags, None, &[]).unwrap();
        assert_eq!(s.cfg.peer_id, NodeId::from("n2"));
        assert_eq!(s.cfg.peer_addr, "127.0.0.1:7002");
        // The same name in peer_id as well is fine; another is refused.
        let mut flags = without_peer();
        flags.push(("peer", "n2=127.0.0.1:7002".into()));
        flags.push(("peer_id", "n2".into()));
        assert_eq!(
            resolve(flags, None, &[]).unwrap().cfg.peer_id,
            NodeId::from("n2")
        );
        let mut flags = without_peer();
        flags.push(("peer", "n2=127.0.0.1:7002".into()));
        flags.push(("peer_id", "n3".into()));
        let e = err(resolve(flags, None, &[]));
        assert!(
            e.contains("names the node n2") && e.contains("peer_id says n3"),
            "{e}"
        );
    }

    #[test]
    fn a_peer_id_from_a_lower_layer_gives_way_to_the_peer_flag() {
        let mut flags = without_peer();
        flags.push(("peer", "n3=127.0.0.1:7003".into()));
        let s = resolve(
            flags,
            Some("peer_id = \"n2\"\n"),
            &[("WALREP_PEER_ID", "n2")],
        )
        .unwrap();
        assert_eq!(s.cfg.peer_id, NodeId::from("n3"));
        // The same layer, or a higher one, disagreeing: refused.
        let e = err(resolve(
            without_peer(),
            None,
            &[
                ("WALREP_PEER", "n3=127.0.0.1:7003"),
                ("WALREP_PEER_ID", "n2"),
            ],
        ));
        assert!(e.contains("peer_id says n2 (from WALREP_PEER_ID)"), "{e}");
    }

    #[test]
    fn a_peer_named_as_this_node_says_so() {
        let mut flags = without_peer();
        flags.push(("peer", "n1=127.0.0.1:7002".into()));
        let e = err(resolve(flags, None, &[]));
        assert!(
            e.contains("names n1, this node's own id") && e.contains("from --peer"),
            "{e}"
        );
    }

    #[test]
    fn a_peer_address_is_one_host_and_port() {
        for good in [
            "n2=127.0.0.1:7002",
            "n2=[::1]:7002",
            "[::1]:7002",
            "n2=n2.example:7001",
            "n2=h:1,",
        ] {
            let mut flags = without_peer();
            flags.push(("peer", good.into()));
            if !good.contains('=') {
                flags.push(("peer_id", "n2".into()));
            }
            assert!(resolve(flags, None, &[]).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_walrep_variable_naming_no_setting_is_warned_of_with_the_one_it_may_mean() {
        let warning = unknown_variable(SETTINGS, "WALREP_FAILOVER_TIMEOUT").unwrap();
        assert!(
            warning.contains("WALREP_FAILOVER_TIMEOUT names no setting")
                && warning.contains("did you mean WALREP_FAILOVER_TIMEOUT_MS"),
            "{warning}"
        );
        let warning = unknown_variable(SETTINGS, "WALREP_NO_AUTO_FAILOVER").unwrap();
        assert!(warning.contains("see --help"), "{warning}");
        for known in ["WALREP_HEARTBEAT_MS", CONFIG_ENV, LOG_ENV] {
            assert_eq!(unknown_variable(SETTINGS, known), None, "{known}");
        }
    }

    #[test]
    fn a_bad_or_plural_peer_says_what_to_write() {
        for (value, expect) in [
            ("n2=", "is not a HOST:PORT"),
            ("n2=host", "after the peer's name n2"),
            ("=h:1", "is not a node name"),
            ("n 2=h:1", "is not a node name"),
            ("n2=h:1,n2=h:2", "names the node n2 twice"),
            (
                "n2=h:1,h:2",
                "with several peers, give each as ID=HOST:PORT",
            ),
            (
                "h:1,n3=h:2",
                "with several peers, give each as ID=HOST:PORT",
            ),
            ("n2=a:7001 n3=b:7001", "is not a HOST:PORT"),
            ("n2=h=x:1", "is not a HOST:PORT"),
            ("n2=::1:7001", "[::1]:7001 for IPv6"),
            ("n2=[]:7001", "is not a HOST:PORT"),
        ] {
            let mut flags = without_peer();
            flags.push(("peer", value.into()));
            let e = err(resolve(flags, None, &[]));
            assert!(e.contains("invalid value for peer"), "{value}: {e}");
            assert!(e.contains(expect), "{value}: {e}");
        }
    }

    #[test]
    fn several_peers_from_flags_the_environment_or_the_file_make_a_cluster_with_an_arbiter() {
        // Repeated flags arrive joined by commas, as the environment gives them.
        let mut flags = without_peer();
        flags.push(("peer", "n2=h:1,n3=h:2".into()));
        let e = err(resolve(flags.clone(), None, &[]));
        assert!(e.contains("arbiter"), "{e}");
        flags.push(("arbiter", "witness://w:7100".into()));
        let s = resolve(flags.clone(), None, &[]).unwrap();
        assert_eq!(s.cfg.peer_id, NodeId::from("n2"));
        assert_eq!(
            s.cfg.more_peers,
            vec![walrep::PeerAddress {
                id: NodeId::from("n3"),
                addr: "h:2".into()
            }]
        );
        assert_eq!(s.cfg.commit_rule().to_string(), "ANY 2 (n2, n3)");
        // The rule: PostgreSQL's text, checked against the peers.
        flags.push(("sync_standbys", "FIRST 2 (n2, n3)".into()));
        let s = resolve(flags.clone(), None, &[]).unwrap();
        assert_eq!(s.cfg.commit_rule().to_string(), "FIRST 2 (n2, n3)");
        flags.push(("sync_standbys", "ANY 1 (n1, n2, n3)".into()));
        let s = resolve(flags.clone(), None, &[]).unwrap();
        assert_eq!(s.cfg.commit_rule().to_string(), "ANY 1 (n1, n2, n3)");
        for (rule, says) in [("ANY 2 (n2, n9)", "n9"), ("ANY 2 (n2,", "sync_standbys")] {
            let mut f = flags.clone();
            f.retain(|(k, _)| *k != "sync_standbys");
            f.push(("sync_standbys", rule.into()));
            let e = err(resolve(f, None, &[]));
            assert!(
                e.contains("sync_standbys") && e.contains(says),
                "{rule}: {e}"
            );
        }
        // The file may give the list as an array.
        let file = "peer = [\"n2=h:1\", \"n3=h:2\"]\narbiter = \"witness://w:7100\"\n";
        let s = resolve(without_peer(), Some(file), &[]).unwrap();
        assert_eq!(s.cfg.more_peers.len(), 1);
    }

    #[test]
    fn library_validation_names_the_daemon_settings() {
        let mut flags = base_flags();
        flags.push(("failover_timeout_ms", "300".into()));
        let e = err(resolve(flags, None, &[]));
        assert!(e.contains("failover_timeout"), "{e}");
        assert!(
            e.contains("failover_timeout_ms from --failover-timeout-ms"),
            "{e}"
        );
        assert!(e.contains("heartbeat_ms from the default"), "{e}");
        let mut flags = base_flags();
        flags.push(("peer_id", "n1".into()));
        assert!(err(resolve(flags, None, &[])).contains("peer_id"));
    }

    #[test]
    fn listening_on_all_interfaces_needs_an_advertised_address() {
        let mut flags = base_flags();
        flags.push(("listen", "0.0.0.0:7001".into()));
        flags.push(("http", "0.0.0.0:8001".into()));
        let e = err(resolve(flags.clone(), None, &[]));
        assert!(e.contains("missing setting advertise"), "{e}");
        flags.push(("advertise", "n1:7001".into()));
        let s = resolve(flags, None, &[]).unwrap();
        assert_eq!(s.cfg.advertise_client_addr.as_deref(), Some("n1:8001"));
    }

    #[test]
    fn the_settings_table_of_daemon_md_names_each_setting_as_the_code_does() {
        let doc = include_str!("../../docs/DAEMON.md");
        for setting in SETTINGS {
            let key = setting.key;
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("docs/DAEMON.md has no row for {key}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!(cells[2], format!("`{}`", flag_name(key)), "{row}");
            assert_eq!(cells[3], format!("`{}`", env_name(key)), "{row}");
            match setting.default {
                Some(default) => assert_eq!(cells[4], format!("`{}`", default()), "{row}"),
                None => assert!(
                    cells[4] == "required"
                        || cells[4].starts_with("none")
                        || cells[4].starts_with("`"),
                    "{row}"
                ),
            }
        }
    }

    #[test]
    fn defaults_come_from_the_library_where_it_has_them() {
        let s = resolve(base_flags(), None, &[]).unwrap();
        let lib = Config::default();
        assert_eq!(s.cfg.heartbeat_interval, lib.heartbeat_interval);
        assert_eq!(s.cfg.failover_timeout, lib.failover_timeout);
        assert_eq!(s.cfg.sync_timeout, lib.sync_timeout);
        assert_eq!(s.cfg.rpc_timeout, lib.rpc_timeout);
        assert_eq!(s.cfg.max_record_bytes, lib.max_record_bytes);
        assert_eq!(s.cfg.wal_retention_bytes, lib.wal_retention_bytes);
        assert_eq!(s.cfg.snapshot_chunk_bytes, lib.snapshot_chunk_bytes);
        assert_eq!(s.cfg.snapshot_timeout, lib.snapshot_timeout);
        assert_eq!(s.cfg.max_request_ids, lib.max_request_ids);
        assert_eq!(s.cfg.max_lag_on_failover, lib.max_lag_on_failover);
        assert_eq!(s.cfg.cluster_id, lib.cluster_id);
        assert_eq!(s.cfg.commit_mode, lib.commit_mode);
        assert_eq!(s.cfg.on_standby_loss, lib.on_standby_loss);
        assert_eq!(s.cfg.initial_role, lib.initial_role);
        assert_eq!(s.cfg.auto_failover, lib.auto_failover);
        assert_eq!(s.snapshot_interval, DEFAULT_SNAPSHOT_INTERVAL);
        assert_eq!(s.snapshot_records, DEFAULT_SNAPSHOT_RECORDS);
    }

    #[test]
    fn a_library_refusal_of_an_unexposed_setting_is_still_explained() {
        let layers = Layers::gather(base_flags(), None, env(&[])).unwrap();
        let err = ConfigError {
            setting: walrep::Setting::MaxBatchBytes,
            related: None,
            problem: "must be greater than 0".into(),
        };
        let e = layers.explain(err).to_string();
        assert_eq!(
            e,
            "invalid configuration: max_batch_bytes must be greater than 0"
        );
    }

    #[test]
    fn the_engine_is_kv_unless_set_and_a_wrong_name_is_refused() {
        assert_eq!(
            resolve(base_flags(), None, &[]).unwrap().engine,
            EngineKind::Kv
        );
        let s = resolve(base_flags(), Some("engine = \"sqlite\"\n"), &[]).unwrap();
        assert_eq!(s.engine, EngineKind::Sqlite);
        let e = err(resolve(base_flags(), None, &[("WALREP_ENGINE", "redb")]));
        assert!(
            e.contains("invalid value for engine (from WALREP_ENGINE)")
                && e.contains("kv or sqlite"),
            "{e}"
        );
    }

    #[test]
    fn https_needs_its_certificate_and_key_together() {
        let mut flags = base_flags();
        flags.push(("http_tls_cert", "/c.pem".into()));
        let e = err(resolve(flags.clone(), None, &[]));
        assert!(
            e.contains("http_tls_cert is given (from --http-tls-cert) but http_tls_key is not"),
            "{e}"
        );
        let s = resolve(flags, None, &[("WALREP_HTTP_TLS_KEY", "/c.key")]).unwrap();
        let files = s.http_tls.expect("HTTPS configured");
        assert_eq!(
            (files.cert.to_str(), files.key.to_str()),
            (Some("/c.pem"), Some("/c.key"))
        );
        assert!(resolve(base_flags(), None, &[]).unwrap().http_tls.is_none());
    }

    #[test]
    fn no_auto_failover_is_a_setting_too() {
        let s = resolve(base_flags(), None, &[("WALREP_AUTO_FAILOVER", "false")]).unwrap();
        assert!(!s.cfg.auto_failover);
    }
}
