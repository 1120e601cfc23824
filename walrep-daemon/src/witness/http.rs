//! The witness's `/health` and `/metrics` (`--http`): read-only, for load
//! balancers, orchestrators and Prometheus.
//!
//! `/health` is 200 while the witness can make swaps durable (no write of
//! its file has failed since the last one that succeeded), 503 otherwise,
//! with a JSON body either way. `/metrics` is Prometheus text (OpenMetrics
//! when `Accept` asks for it, `crate::metrics::respond`): requests,
//! swaps, conflicts, refusals by reason, rejected requests, write
//! failures, clusters, and the latency of each durable write of the file.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;
use walrep::arbiter::WitnessService;

/// The reasons a swap is refused, each exported even at 0.
const REFUSALS: [&str; 4] = [
    "members_not_heard",
    "epoch_below_reported",
    "epoch_goes_back",
    "caller_not_member",
];

/// The witness's Prometheus registry.
pub struct WitnessMetrics {
    registry: Registry,
}

impl WitnessMetrics {
    /// The registry and the histogram the witness records each write of
    /// its file in (pass `observer` to `WitnessService::open_observed`).
    pub fn new() -> (WitnessMetrics, walrep::arbiter::witness::WriteObserver) {
        let mut registry = Registry::default();
        // 50 µs .. ~1.6 s.
        let writes = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        registry.register_with_unit(
            "walrep_witness_write_latency",
            "Time of one durable write of the register file (temp write, fsync, rename, fsync of the directory), before the swap is answered",
            Unit::Seconds,
            writes.clone(),
        );
        let observer: walrep::arbiter::witness::WriteObserver =
            Arc::new(move |took: Duration| writes.observe(took.as_secs_f64()));
        (WitnessMetrics { registry }, observer)
    }

    /// Adds the counters read from `service` at each scrape.
    pub fn watch(&mut self, service: WitnessService) {
        self.registry
            .register_collector(Box::new(StatsCollector { service }));
    }

    /// The registry in the text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

struct StatsCollector {
    service: WitnessService,
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    if let [(labels, value)] = values
        && labels.is_empty()
    {
        let c = ConstCounter::new(*value);
        return c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?);
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for StatsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.service.stats();
        counter(
            &mut enc,
            "walrep_witness_requests",
            "Requests received, by RPC",
            &[
                (&[("rpc", "read")], s.reads),
                (&[("rpc", "compare_and_swap")], s.swap_requests),
            ],
        )?;
        counter(
            &mut enc,
            "walrep_witness_swaps",
            "Swaps that took effect (written durably before the answer)",
            &[(&[], s.swaps)],
        )?;
        counter(
            &mut enc,
            "walrep_witness_conflicts",
            "Swaps at a version the register had left (answered with the current register)",
            &[(&[], s.conflicts)],
        )?;
        let refused: Vec<(Vec<(&str, &str)>, u64)> = REFUSALS
            .iter()
            .map(|r| (vec![("reason", *r)], s.refused.get(r).copied().unwrap_or(0)))
            .collect();
        let refused: Vec<(&[(&str, &str)], u64)> =
            refused.iter().map(|(l, v)| (l.as_slice(), *v)).collect();
        counter(
            &mut enc,
            "walrep_witness_refused",
            "Swaps refused whatever the version (FAILED_PRECONDITION), by reason",
            &refused,
        )?;
        counter(
            &mut enc,
            "walrep_witness_rejected",
            "Requests rejected: malformed (INVALID_ARGUMENT), from an identity the witness refuses (no or a foreign certificate, a node id the certificate does not name), or a swap by a node that is not a member of the register (PERMISSION_DENIED)",
            &[
                (&[("reason", "invalid_argument")], s.invalid),
                (&[("reason", "unauthenticated")], s.unauthenticated),
                (&[("reason", "not_a_member")], s.not_members),
                (&[("reason", "over_limit")], s.over_limit),
            ],
        )?;
        counter(
            &mut enc,
            "walrep_witness_write_failures",
            "Swaps whose write of the register file failed (answered UNAVAILABLE, register unchanged)",
            &[(&[], s.write_failures)],
        )?;
        counter(
            &mut enc,
            "walrep_witness_registers_went_back",
            "Registers found older than a version the witness had answered a node, and forgotten to be rebuilt from the members: the register file went back (restored from an older copy, a machine rolled back to a snapshot)",
            &[(&[], s.registers_went_back)],
        )?;
        gauge(
            &mut enc,
            "walrep_witness_clusters",
            "Clusters that have a register",
            s.clusters as i64,
        )?;
        gauge(
            &mut enc,
            "walrep_witness_healthy",
            "1 while the witness can make swaps durable (no write failed since the last that succeeded)",
            i64::from(s.healthy()),
        )?;
        Ok(())
    }
}

/// What `/health` answers.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WitnessHealth {
    /// `ok` or `failing`.
    pub status: String,
    /// Clusters that have a register.
    pub clusters: usize,
    /// The register file.
    pub file: String,
    /// Swaps since start.
    pub swaps: u64,
    /// The last failed write, while failing.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

struct AppState {
    service: WitnessService,
    metrics: WitnessMetrics,
}

/// The router of `/health` and `/metrics`.
pub fn router(service: WitnessService, metrics: WitnessMetrics) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::new(AppState { service, metrics }))
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    let stats = s.service.stats();
    let healthy = stats.healthy();
    let body = WitnessHealth {
        status: if healthy { "ok" } else { "failing" }.into(),
        clusters: stats.clusters,
        file: s.service.path().display().to_string(),
        swaps: stats.swaps,
        error: stats.write_error,
    };
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics_text(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    crate::metrics::respond(&headers, s.metrics.encode())
}
