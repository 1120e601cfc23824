//! The Prometheus registry of one node (no globals: two nodes in one
//! process stay apart). The commit latency histogram and the HTTP refusals
//! are recorded by the handlers; everything else is read from the
//! replica's health and counters at each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use walrep::Replica;
use walrep::Replicator;
use walrep::RoleKind;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct DaemonMetrics {
    registry: Registry,
    commit_latency: Histogram,
    http_rejected: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl DaemonMetrics {
    pub fn new(replica: Arc<Replica>) -> DaemonMetrics {
        let mut registry = Registry::default();
        // 0.5 ms .. ~8 s.
        let commit_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        registry.register_with_unit(
            "walrep_commit_latency",
            "Time from receiving a write to acknowledging it (Replicator::apply)",
            Unit::Seconds,
            commit_latency.clone(),
        );
        let http_rejected = Arc::new(Mutex::new(BTreeMap::new()));
        registry.register_collector(Box::new(ReplicaCollector {
            replica,
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

    /// The registry in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

struct ReplicaCollector {
    replica: Arc<Replica>,
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

impl Collector for ReplicaCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = self.replica.health();
        let m = self.replica.metrics();
        let secs = Unit::Seconds;
        let flag = |b: bool| i64::from(b);

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
        if let Some(a) = &h.arbiter {
            let register = a.register.clone().unwrap_or_default();
            gauge(
                &mut enc,
                "walrep_arbiter_reachable",
                "1 if the arbiter answered this node's last call",
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
            for role in [
                RoleKind::Primary,
                RoleKind::Standby,
                RoleKind::Promoting,
                RoleKind::Fenced,
                RoleKind::Rejoining,
                RoleKind::Failed,
            ] {
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
            "walrep_replication_lag_records",
            "Records the standby is behind the primary",
            None,
            h.peer.lag_records,
        )?;
        gauge(
            &mut enc,
            "walrep_replication_lag_bytes",
            "WAL bytes the standby has not flushed (known on the primary)",
            None,
            h.peer.lag_bytes,
        )?;
        gauge(
            &mut enc,
            "walrep_replication_lag",
            "How long the standby has not been caught up",
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
        counter(
            &mut enc,
            "walrep_heartbeat_errors",
            "Heartbeats that failed",
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
            "walrep_snapshot_resyncs",
            "Resyncs from a snapshot of the primary",
            m.snapshot_resyncs,
        )?;
        {
            let mut family = enc.encode_descriptor(
                "walrep_state_transitions",
                "Role changes",
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
                "Requests refused: api=grpc from the peer (G6), api=http from clients",
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
