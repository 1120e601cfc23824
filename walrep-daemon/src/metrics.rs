//! The Prometheus registry of one node (no globals: two nodes in one
//! process stay apart). The commit latency histogram and the HTTP refusals
//! are recorded by the handlers; everything else is read from the
//! replica's health and counters at each scrape.
//!
//! Two expositions of the same registry, chosen by the request's `Accept`
//! (`Format::negotiate`): OpenMetrics 1.0 when it asks for
//! `application/openmetrics-text` (as Prometheus itself does), else the
//! classic Prometheus text format 0.0.4 (`promtool check metrics`, curl,
//! older scrapers). `prometheus-client` 0.25 only writes OpenMetrics, so
//! the classic text is rewritten from it (`openmetrics_to_prometheus`):
//! the two differ only in counter family names, `# UNIT` and `# EOF` for
//! what this registry holds, and one source of samples keeps the two
//! from drifting apart.
//!
//! Every counter exports every label value it can take from the start, at
//! 0, so `increase()` and `rate()` see the first event.

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use walrep::Replica;
use walrep::Replicator;
use walrep::{RoleKind, SyncState};

/// `Content-Type` of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the classic Prometheus text exposition.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every reason the HTTP API and its server count a refusal under
/// (`walrep_rejected_requests_total{api="http",reason}`), exported at 0
/// from the start. A reason missing here is still counted when it happens.
pub const HTTP_REFUSAL_REASONS: &[&str] = &[
    "bad_request",
    "body_timeout",
    "connection_limit",
    "fenced",
    "handshakes_per_source",
    "internal",
    "not_primary",
    "peer_error",
    "promotion_refused",
    "response_unread",
    "shutting_down",
    "sync_timeout",
    "timeout",
    "tls_handshake",
    "unauthorized",
    "unavailable",
];

/// The exposition format a scrape asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when `accept` lists `application/openmetrics-text`
    /// with a non-zero quality, the classic text otherwise (no header,
    /// `text/plain`, `*/*`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let asks_openmetrics = accept.unwrap_or("").split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f64>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
        });
        if asks_openmetrics {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The `/metrics` answer for `openmetrics` (a registry's OpenMetrics
/// text), in the format the request's `Accept` asks for.
pub fn respond(headers: &HeaderMap, openmetrics: String) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let body = match format {
        Format::OpenMetrics => openmetrics,
        Format::Prometheus => openmetrics_to_prometheus(&openmetrics),
    };
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// Rewrites `prometheus-client`'s OpenMetrics text as Prometheus text
/// 0.0.4: a counter family `x` (samples `x_total`) is announced as
/// `x_total`, an info family `x` (samples `x_info`) as the gauge
/// `x_info`, `unknown` as `untyped`; `# UNIT` and `# EOF` go. Samples pass
/// unchanged (this registry writes no exemplars or `_created` samples).
pub fn openmetrics_to_prometheus(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').map_or("", |(_, text)| text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                "info" => (format!("{family}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (family.to_string(), kind),
                _ => (family.to_string(), "untyped"),
            };
            if let Some(text) = help.take() {
                let _ = writeln!(out, "# HELP {name} {text}");
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What does not change while the node runs: exported as
/// `walrep_build_info` and `walrep_node_info`.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub version: &'static str,
    pub commit_mode: &'static str,
    pub on_standby_loss: &'static str,
    /// `none`, `witness`, `etcd` (the scheme of the arbiter's URL).
    pub arbiter: String,
    pub node_id: String,
    pub peer_id: String,
    pub cluster_id: String,
}

impl NodeInfo {
    pub fn of(cfg: &walrep::Config) -> NodeInfo {
        let arbiter = match &cfg.arbiter {
            None => "none".to_string(),
            Some(a) => {
                let described = a.describe();
                described
                    .split_once("://")
                    .map_or(described.as_str(), |(scheme, _)| scheme)
                    .to_string()
            }
        };
        NodeInfo {
            version: env!("CARGO_PKG_VERSION"),
            commit_mode: cfg.commit_mode.as_str(),
            on_standby_loss: cfg.on_standby_loss.as_str(),
            arbiter,
            node_id: cfg.node_id.to_string(),
            peer_id: cfg.peer_id.to_string(),
            cluster_id: cfg.cluster_id.clone(),
        }
    }
}

pub struct DaemonMetrics {
    registry: Registry,
    commit_latency: Histogram,
    http_rejected: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl DaemonMetrics {
    pub fn new(replica: Arc<Replica>, info: NodeInfo) -> DaemonMetrics {
        let mut registry = Registry::default();
        // 0.5 ms .. ~8 s.
        let commit_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register_with_unit(
            "walrep_commit_latency",
            "Time from receiving a write to acknowledging it (Replicator::apply)",
            Unit::Seconds,
            commit_latency.clone(),
        );
        let http_rejected = Arc::new(Mutex::new(
            HTTP_REFUSAL_REASONS.iter().map(|r| (*r, 0)).collect(),
        ));
        registry.register_collector(Box::new(ReplicaCollector {
            replica,
            info,
            started: Instant::now(),
            http_rejected: http_rejected.clone(),
        }));
        DaemonMetrics {
            registry,
            commit_latency,
            http_rejected,
        }
    }

    pub fn observe_commit(&self, took: Duration) {
        self.commit_latency.observe(took.as_secs_f64());
    }

    /// A request the HTTP API refused (`reason` as in the JSON error).
    pub fn http_rejected(&self, reason: &'static str) {
        *self
            .http_rejected
            .lock()
            .unwrap()
            .entry(reason)
            .or_default() += 1;
    }

    /// The registry in the OpenMetrics text format (`respond` turns it
    /// into what the scrape asked for).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

struct ReplicaCollector {
    replica: Arc<Replica>,
    info: NodeInfo,
    /// When the daemon started: the time since last contact counts from
    /// here until the peer is first heard from.
    started: Instant,
    http_rejected: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl std::fmt::Debug for ReplicaCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaCollector")
    }
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A gauge at 1 whose labels carry the facts (the `_info` idiom, as a
/// gauge: both formats read it the same way).
fn info_gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(1i64).encode(family.encode_family(&labels)?)
}

/// `walrep_sync_state{state}` spells the states as `/health` does.
const SYNC_STATES: [SyncState; 3] = [SyncState::Sync, SyncState::Async, SyncState::NotSync];

impl Collector for ReplicaCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = self.replica.health();
        let m = self.replica.metrics();
        let secs = Unit::Seconds;
        let flag = |b: bool| i64::from(b);
        let i = &self.info;

        info_gauge(
            &mut enc,
            "walrep_build_info",
            "Always 1: the walrep version and the settings that shape failover",
            &[
                ("version", i.version),
                ("commit_mode", i.commit_mode),
                ("on_standby_loss", i.on_standby_loss),
                ("arbiter", &i.arbiter),
            ],
        )?;
        info_gauge(
            &mut enc,
            "walrep_node_info",
            "Always 1: names this node, its peer and its cluster (join on instance to name nodes)",
            &[
                ("node_id", &i.node_id),
                ("peer_id", &i.peer_id),
                ("cluster_id", &i.cluster_id),
            ],
        )?;
        gauge(
            &mut enc,
            "walrep_is_primary",
            "1 if this node is the primary",
            None,
            flag(h.role == RoleKind::Primary),
        )?;
        gauge(
            &mut enc,
            "walrep_writable",
            "1 if this node accepts writes now",
            None,
            flag(h.writable),
        )?;
        gauge(
            &mut enc,
            "walrep_solo",
            "1 if this primary acknowledges writes without its standby",
            None,
            flag(h.solo),
        )?;
        gauge(
            &mut enc,
            "walrep_failover_paused",
            "1 if automatic failover is paused on this node (maintenance mode)",
            None,
            flag(h.failover_paused),
        )?;
        gauge(
            &mut enc,
            "walrep_eligible",
            "1 if this standby could promote itself were the primary to fall silent now",
            None,
            flag(h.eligible),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "walrep_sync_state",
                "1 for the sync state: on a primary what it tells its standby, on a standby what it was told at the last contact",
                None,
                MetricType::Gauge,
            )?;
            for state in SYNC_STATES {
                let labels = [("state", crate::api::sync_state_str(state))];
                ConstGauge::new(flag(h.sync_state == state))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(a) = &h.arbiter {
            let register = a.register.clone().unwrap_or_default();
            gauge(
                &mut enc,
                "walrep_arbiter_reachable",
                "1 if the arbiter answered this node's last call (0 before the first)",
                None,
                flag(a.reachable == Some(true)),
            )?;
            gauge(
                &mut enc,
                "walrep_arbiter_epoch",
                "The epoch in the arbiter's register as last answered (0: none yet)",
                None,
                register.epoch.0 as i64,
            )?;
            gauge(
                &mut enc,
                "walrep_arbiter_sync_set_size",
                "Standbys in the arbiter's sync set (they may promote)",
                None,
                register.sync_set.len() as i64,
            )?;
            gauge(
                &mut enc,
                "walrep_arbiter_held_back",
                "1 if a failover or a solo step waits for the arbiter (see /health)",
                None,
                flag(a.held_back.is_some()),
            )?;
        }
        {
            let mut family = enc.encode_descriptor(
                "walrep_role",
                "1 for the role this node is in",
                None,
                MetricType::Gauge,
            )?;
            for role in RoleKind::ALL {
                let labels = [("role", role.as_str())];
                ConstGauge::new(flag(h.role == role)).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut enc,
            "walrep_epoch",
            "The node's epoch",
            None,
            h.epoch.0,
        )?;
        gauge(
            &mut enc,
            "walrep_wal_last_lsn",
            "Last LSN in the WAL",
            None,
            h.last_lsn.0,
        )?;
        gauge(
            &mut enc,
            "walrep_wal_flushed_lsn",
            "Last LSN durable in the WAL",
            None,
            h.flushed_lsn.0,
        )?;
        gauge(
            &mut enc,
            "walrep_wal_first_lsn",
            "Oldest LSN still in the WAL",
            None,
            h.first_lsn.0,
        )?;
        gauge(
            &mut enc,
            "walrep_commit_lsn",
            "Last committed LSN",
            None,
            h.commit_lsn.0,
        )?;
        gauge(
            &mut enc,
            "walrep_applied_lsn",
            "Last LSN applied to the KV store",
            None,
            h.applied_lsn.0,
        )?;
        gauge(
            &mut enc,
            "walrep_peer_connected",
            "1 if the WAL stream with the peer is open",
            None,
            flag(h.peer.connected),
        )?;
        gauge(
            &mut enc,
            "walrep_standbys_connected",
            "Standbys with an open WAL stream from this primary (0 on a standby)",
            None,
            h.standbys.iter().filter(|s| s.connected).count() as f64,
        )?;
        // One series per standby of a primary (none on a standby).
        let mut lag = enc.encode_descriptor(
            "walrep_standby_lag_records",
            "Records of this primary's WAL a standby has not made durable yet, by standby",
            None,
            MetricType::Gauge,
        )?;
        for s in &h.standbys {
            ConstGauge::new(s.lag_records as i64)
                .encode(lag.encode_family(&[("standby", s.node_id.0.as_str())])?)?;
        }
        let mut sync = enc.encode_descriptor(
            "walrep_standby_sync",
            "1 while a standby holds every acknowledged write and commits wait for it (the primary tells it it is in sync), by standby",
            None,
            MetricType::Gauge,
        )?;
        for s in &h.standbys {
            ConstGauge::new(i64::from(s.sync_state == SyncState::Sync))
                .encode(sync.encode_family(&[("standby", s.node_id.0.as_str())])?)?;
        }
        gauge(
            &mut enc,
            "walrep_peer_last_contact",
            "Time since the peer last answered or spoke to this node (since the daemon started, before the first contact)",
            Some(&secs),
            h.peer
                .last_contact
                .unwrap_or_else(|| self.started.elapsed())
                .as_secs_f64(),
        )?;
        gauge(
            &mut enc,
            "walrep_replication_lag_records",
            "Records the standby lacks: on a primary, of its WAL (all of it until the standby first answers); on a standby, behind the last LSN the primary told it",
            None,
            h.peer.lag_records,
        )?;
        gauge(
            &mut enc,
            "walrep_replication_lag_bytes",
            "WAL bytes the standby lacks (known on the primary; 0 on a standby)",
            None,
            h.peer.lag_bytes,
        )?;
        gauge(
            &mut enc,
            "walrep_replication_lag",
            "How long the standby has not been caught up (0 while it is)",
            Some(&secs),
            h.peer.lag_seconds,
        )?;
        gauge(
            &mut enc,
            "walrep_heartbeat_rtt",
            "Round trip of the last heartbeat (0 before the first)",
            Some(&secs),
            m.heartbeat_rtt.map_or(0.0, |d| d.as_secs_f64()),
        )?;
        gauge(
            &mut enc,
            "walrep_step_gap_max",
            "Longest time between two steps of the node's role logic since it started",
            Some(&secs),
            m.longest_step_gap.as_secs_f64(),
        )?;
        gauge(
            &mut enc,
            "walrep_last_role_change_timestamp",
            "Unix time of this node's last role change (0: none since it started)",
            Some(&secs),
            m.last_transition
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
        )?;
        counter(
            &mut enc,
            "walrep_heartbeat_errors",
            "Heartbeats to the standby that failed, or that it answered with a failed WAL",
            m.heartbeat_errors,
        )?;
        counter(
            &mut enc,
            "walrep_rewound_records",
            "Records dropped by rewinds (kept in DIR/rewound)",
            m.rewound_records,
        )?;
        counter(
            &mut enc,
            "walrep_solo_episodes",
            "Times this node, as primary, began acknowledging writes without a standby its commit rule waits for",
            m.solo_episodes,
        )?;
        counter(
            &mut enc,
            "walrep_snapshot_resyncs",
            "Resyncs from a snapshot of the primary",
            m.snapshot_resyncs,
        )?;
        counter(
            &mut enc,
            "walrep_role_changes",
            "Role changes of this node since it started",
            m.transitions.values().sum(),
        )?;
        {
            let mut family = enc.encode_descriptor(
                "walrep_state_transitions",
                "Role changes by the roles left and entered (every pair, from 0)",
                None,
                MetricType::Counter,
            )?;
            for ((from, to), n) in &m.transitions {
                let labels = [("from", *from), ("to", *to)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = enc.encode_descriptor(
                "walrep_rejected_requests",
                "Requests refused: api=grpc from the peer, api=http from clients",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &m.rejected {
                let labels = [("api", "grpc"), ("reason", *reason)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
            for (reason, n) in self.http_rejected.lock().unwrap().iter() {
                let labels = [("api", "http"), ("reason", *reason)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_served_only_to_a_scrape_that_asks_for_it() {
        let prometheus_default = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::negotiate(Some(prometheus_default)),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(None), Format::Prometheus);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Prometheus
        );
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_drops_unit_and_eof() {
        let om = "# HELP walrep_errors Errors.\n\
# TYPE walrep_errors counter\n\
walrep_errors_total{reason=\"x\"} 0\n\
# HELP walrep_rtt_seconds Round trip.\n\
# TYPE walrep_rtt_seconds gauge\n\
# UNIT walrep_rtt_seconds seconds\n\
walrep_rtt_seconds 0.5\n\
# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP walrep_errors_total Errors.\n\
# TYPE walrep_errors_total counter\n\
walrep_errors_total{reason=\"x\"} 0\n\
# HELP walrep_rtt_seconds Round trip.\n\
# TYPE walrep_rtt_seconds gauge\n\
walrep_rtt_seconds 0.5\n"
        );
    }
}
