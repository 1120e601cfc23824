//! The node's client API (axum). Load balancers and scripts depend on these
//! shapes; `docs/DAEMON.md` lists them.
//!
//! | route | answers |
//! |---|---|
//! | `PUT /kv/{key}` (body: value; optional header `Idempotency-Key`) | 200 `{"lsn","epoch","deduplicated"}` once the commit mode is met; 503 `{"error","leader"}` if not primary or the standby did not confirm; 400 bad input |
//! | `DELETE /kv/{key}` | the same |
//! | `GET /kv/{key}` | 200 raw value, 404 (any role) |
//! | `GET /health` | 200 `HealthReport`; 503 (same body, with `reason`) when the node is `failed` |
//! | `/primary`, `/read-write` | 200 iff a primary that accepts writes, else 503 |
//! | `/replica[?lag=SIZE&lag_records=N]` | 200 iff a standby receiving the WAL stream within the bounds, else 503 |
//! | `/read-only[?lag=..]` | 200 iff a writable primary or what `/replica` accepts, else 503 |
//! | `/sync[?lag=..]`, `/async[?lag=..]` | 200 iff what `/replica` accepts, that the primary calls in sync (`/sync`) or not (`/async`), else 503 |
//! | `/liveness` | 200 unless the node is `failed` (503) |
//! | `/readiness[?lag=..]` | as `/read-only` |
//! | `GET /metrics` | Prometheus text 0.0.4; OpenMetrics 1.0 when `Accept` asks for `application/openmetrics-text` |
//! | `POST /promote[?force=true]` | 200 `{"epoch"}` after a switchover (or forced promotion); asked of the primary, it hands over to its standby |
//! | `GET /maintenance` | 200 `{"node_id","role","failover_paused"}` |
//! | `POST /maintenance`, `DELETE /maintenance` | pause / resume automatic failover on this node: 200 `{"node_id","role","failover_paused"}` |
//!
//! The probes (`/health` to `/readiness`) answer `GET`, `HEAD` (no body)
//! and `OPTIONS` with the same status; their body is the `HealthReport`
//! with a `reason` on 503, and a 503 that waiting can fix carries
//! `Retry-After`. A bad query string is a 400 naming what was wrong.
//! `probes` has their rules.

use super::api::{
    ErrorReply, HealthReport, MaintenanceReply, ProbeReply, PromoteReply, WriteReply,
};
use super::metrics::DaemonMetrics;
use super::probes::{self, Probe};
use crate::engine::Engine;
use crate::idempotency;
use crate::kv::Command;
use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, get, post};
use bytes::BytesMut;
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use walrep::Error;
use walrep::Replica;
use walrep::Replicator;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

pub struct AppState {
    pub replica: Arc<Replica>,
    pub engine: Engine,
    pub metrics: DaemonMetrics,
    /// Largest encoded command (key + value + 5 bytes of framing).
    pub max_record_bytes: usize,
    /// When set, writes and promotions need it (`auth`).
    pub token: Option<crate::auth::HttpToken>,
    /// Bytes of `PUT` bodies held at once (`http_write_budget_bytes`):
    /// a write takes its size from it before its body is read and gives it
    /// back once answered.
    pub write_budget: Arc<Semaphore>,
    pub write_budget_bytes: usize,
    /// Longest a `PUT` body may take to arrive (`http_request_timeout_ms`).
    pub body_timeout: std::time::Duration,
    /// Where maintenance mode is kept across restarts (`with_pause_file`);
    /// without it the pause lasts as long as the process.
    pub pause_file: Option<crate::maintenance::PauseFile>,
}

impl AppState {
    pub fn new(
        replica: Arc<Replica>,
        engine: Engine,
        metrics: DaemonMetrics,
        max_record_bytes: usize,
        write_budget_bytes: usize,
        token: Option<crate::auth::HttpToken>,
        body_timeout: std::time::Duration,
    ) -> AppState {
        AppState {
            replica,
            engine,
            metrics,
            max_record_bytes,
            token,
            write_budget: Arc::new(Semaphore::new(write_budget_bytes)),
            write_budget_bytes,
            body_timeout,
            pause_file: None,
        }
    }

    /// Keeps maintenance mode in `file` (`POST`/`DELETE /maintenance`).
    pub fn with_pause_file(mut self, file: crate::maintenance::PauseFile) -> AppState {
        self.pause_file = Some(file);
        self
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    // For routes that take a body whole (none today): one byte over the
    // limit is enough to know it is too large. `PUT` reads its body
    // itself, within the write budget, and answers a 400 of its own.
    let body_limit = state.max_record_bytes + 1;
    let token = state.token.clone();
    let counted = state.clone();
    let router = Router::new()
        .route("/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/kv", any(empty_key))
        .route("/kv/", any(empty_key))
        .route("/health", probe(Probe::Health))
        .route("/primary", probe(Probe::Primary))
        .route("/read-write", probe(Probe::Primary))
        .route("/replica", probe(Probe::Replica))
        .route("/read-only", probe(Probe::ReadOnly))
        .route("/sync", probe(Probe::Sync))
        .route("/async", probe(Probe::Async))
        .route("/liveness", probe(Probe::Liveness))
        .route("/readiness", probe(Probe::Readiness))
        .route("/metrics", get(metrics))
        .route("/promote", post(promote))
        .route(
            "/maintenance",
            get(maintenance_state)
                .post(|s: State<Arc<AppState>>, uri: Uri| maintenance(s, uri, true))
                .delete(|s: State<Arc<AppState>>, uri: Uri| maintenance(s, uri, false)),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    match token {
        Some(token) => {
            let last_log = std::sync::Mutex::new(None::<Instant>);
            let rejected: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                counted.metrics.http_rejected("unauthorized");
                let mut last = last_log.lock().unwrap();
                if last.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        "HTTP request refused with 401: no valid bearer token (further ones are counted, not logged, for a minute)"
                    );
                }
            });
            router.layer(axum::middleware::from_fn_with_state(
                (token, rejected),
                crate::auth::require_token,
            ))
        }
        None => router,
    }
}

fn error(status: StatusCode, error: String, leader: Option<String>) -> Response {
    (status, Json(ErrorReply { error, leader })).into_response()
}

impl AppState {
    fn leader_http(&self) -> Option<String> {
        self.replica.leader().and_then(|l| l.client_addr)
    }

    fn bad_request(&self, msg: String) -> Response {
        self.metrics.http_rejected("bad_request");
        error(
            StatusCode::BAD_REQUEST,
            format!("{msg}; nothing was written"),
            None,
        )
    }

    /// The key as bytes, or why it is refused.
    fn check_key(key: Result<Path<String>, PathRejection>) -> Result<Vec<u8>, String> {
        let key = match key {
            Ok(Path(k)) => k,
            Err(e) => return Err(format!("bad key: {e}")),
        };
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(format!(
                "the key has {} bytes, more than {MAX_KEY_BYTES}",
                key.len()
            ));
        }
        Ok(key.into_bytes())
    }

    /// Maps a refused or failed write to its status, counting it.
    fn refused(&self, e: Error) -> Response {
        let (status, reason, leader) = match &e {
            Error::NotPrimary { leader } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_primary",
                leader
                    .as_ref()
                    .and_then(|l| l.client_addr.clone())
                    .or_else(|| self.leader_http()),
            ),
            Error::Fenced { .. } => (StatusCode::SERVICE_UNAVAILABLE, "fenced", None),
            Error::SyncTimeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, "sync_timeout", None),
            Error::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", None),
            Error::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", None),
            Error::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout", None),
            Error::Transport(_) => (StatusCode::SERVICE_UNAVAILABLE, "peer_error", None),
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "bad_request", None),
            Error::PromotionRefused { .. } => (StatusCode::CONFLICT, "promotion_refused", None),
            Error::Corrupt { .. }
            | Error::Io { .. }
            | Error::StateMachine { .. }
            | Error::Config(_)
            | Error::InvalidConfig(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        self.metrics.http_rejected(reason);
        let leader = leader.or_else(|| self.leader_http());
        error(status, e.to_string(), leader)
    }

    async fn write(&self, cmd: Command, headers: &HeaderMap) -> Response {
        self.write_record(cmd.encode().into(), headers).await
    }

    /// Replicates one encoded command and answers for it, once per
    /// idempotency key when the request has one (see `idempotency`).
    async fn write_record(&self, cmd: Bytes, headers: &HeaderMap) -> Response {
        let request_id = match headers.get(idempotency::HEADER) {
            None => None,
            Some(key) => match idempotency::request_id(key.as_bytes()) {
                Ok(id) => Some(id),
                Err(msg) => return self.bad_request(msg),
            },
        };
        if cmd.len() > self.max_record_bytes {
            return self.bad_request(format!(
                "key and value take {} bytes as a record, more than max_record_bytes ({})",
                cmd.len(),
                self.max_record_bytes
            ));
        }
        let started = Instant::now();
        let result = match request_id {
            Some(id) => self.replica.apply_once(id, cmd).await,
            None => self.replica.apply(cmd).await,
        };
        match result {
            Ok(applied) => {
                self.metrics.observe_commit(started.elapsed());
                Json(WriteReply {
                    lsn: applied.lsn.0,
                    epoch: applied.epoch.0,
                    deduplicated: applied.deduplicated,
                })
                .into_response()
            }
            Err(e) => self.refused(e),
        }
    }

    fn health(&self) -> HealthReport {
        HealthReport::new(&self.replica.health(), self.engine.state_hash())
    }
}

/// Reads the value straight into the record after the command's header
/// (no second copy of it), once the write budget has room for it: the
/// budget bounds the bytes all writers hold together, from before their
/// bodies are read until their writes are answered.
async fn put_key(
    State(s): State<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match AppState::check_key(key) {
        Ok(k) => k,
        Err(msg) => return s.bad_request(msg),
    };
    let limit = s.max_record_bytes;
    let header_len = Command::put_header_len(&key);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let declared_record = declared.map(|len| header_len.saturating_add(len));
    if let Some(record) = declared_record.filter(|&r| r > limit) {
        return s.bad_request(format!(
            "key and value take {record} bytes as a record, more than max_record_bytes ({limit})"
        ));
    }
    // A body of unknown length may take up to the record limit.
    let need = declared_record.unwrap_or(limit).max(1);
    let budget = s.write_budget.clone();
    let permits = match u32::try_from(need) {
        Ok(n) if (n as usize) <= s.write_budget_bytes => n,
        _ => {
            return s.bad_request(format!(
                "the write needs {need} bytes in memory, more than http_write_budget_bytes ({}); raise it or write a smaller value",
                s.write_budget_bytes
            ));
        }
    };
    let Ok(_held) = budget.acquire_many_owned(permits).await else {
        unreachable!("the write budget is never closed");
    };
    let mut record = BytesMut::with_capacity(need);
    Command::put_header(&key, &mut record);
    let mut body = body;
    // A body that trickles in would hold its budget and its connection:
    // it gets `http_request_timeout_ms` to arrive whole.
    let read = tokio::time::timeout(s.body_timeout, async {
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(frame) => frame.into_data().unwrap_or_default(),
                Err(e) => return Err(s.bad_request(format!("cannot read the value ({e})"))),
            };
            if record.len() + data.len() > limit {
                return Err(s.bad_request(format!(
                    "the value is too large: key, value and 5 bytes of framing must fit in max_record_bytes ({limit})"
                )));
            }
            record.extend_from_slice(&data);
        }
        Ok(())
    })
    .await;
    match read {
        Ok(Ok(())) => {}
        Ok(Err(refused)) => return refused,
        Err(_) => {
            s.metrics.http_rejected("body_timeout");
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {:?} (http_request_timeout_ms); nothing was written",
                    s.body_timeout
                ),
                None,
            );
        }
    }
    s.write_record(record.freeze(), &headers).await
}

async fn delete_key(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Response {
    match AppState::check_key(key) {
        Ok(key) => s.write(Command::Delete { key }, &headers).await,
        Err(msg) => s.bad_request(msg),
    }
}

async fn get_key(
    State(s): State<Arc<AppState>>,
    key: Result<Path<String>, PathRejection>,
) -> Response {
    let key = match AppState::check_key(key) {
        Ok(k) => k,
        Err(msg) => return s.bad_request(msg),
    };
    match s.engine.get(&key) {
        Ok(Some(value)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "key not found".into(), None),
        Err(e) => {
            s.metrics.http_rejected("internal");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the key failed: {}", e.chain()),
                None,
            )
        }
    }
}

async fn empty_key(State(s): State<Arc<AppState>>) -> Response {
    s.bad_request("the key is empty (use /kv/{key})".into())
}

async fn not_found(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route {}", uri.path()),
        None,
    )
}

/// A probe's route: `GET` (and so `HEAD`, which axum answers without
/// the body) and `OPTIONS`, all with the probe's status.
fn probe(probe: Probe) -> MethodRouter<Arc<AppState>> {
    let answer =
        move |State(s): State<Arc<AppState>>, uri: Uri| async move { s.probe(probe, uri.query()) };
    get(answer).options(answer)
}

impl AppState {
    fn probe(&self, probe: Probe, query: Option<&str>) -> Response {
        let bounds = match probes::parse_query(probe, query) {
            Ok(b) => b,
            Err(msg) => {
                self.metrics.http_rejected("bad_request");
                return error(StatusCode::BAD_REQUEST, msg, None);
            }
        };
        let health = self.health();
        let verdict = probes::judge(probe, &health, &bounds);
        let body = Json(ProbeReply {
            health,
            reason: verdict.reason,
        });
        match verdict.retry_after {
            Some(secs) => (
                verdict.status,
                [(header::RETRY_AFTER, secs.to_string())],
                body,
            )
                .into_response(),
            None => (verdict.status, body).into_response(),
        }
    }

    fn maintenance_reply(&self) -> Response {
        let h = self.replica.health();
        Json(MaintenanceReply {
            node_id: h.node_id.0.clone(),
            role: h.role.as_str().to_string(),
            failover_paused: h.failover_paused,
        })
        .into_response()
    }
}

async fn maintenance_state(State(s): State<Arc<AppState>>) -> Response {
    s.maintenance_reply()
}

/// `POST /maintenance` pauses automatic failover on this node, `DELETE`
/// resumes it.
async fn maintenance(State(s): State<Arc<AppState>>, uri: Uri, pause: bool) -> Response {
    if let Some(q) = uri.query().filter(|q| !q.is_empty()) {
        s.metrics.http_rejected("bad_request");
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "/maintenance takes no query string (got {q:?}): POST pauses automatic failover, DELETE resumes it"
            ),
            None,
        );
    }
    tracing::info!(pause, "maintenance asked over HTTP");
    // On disk first: what the node does after a restart is what was asked.
    if let Some(file) = &s.pause_file
        && let Err(e) = file.set(pause)
    {
        s.metrics.http_rejected("internal");
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e}; automatic failover is unchanged"),
            None,
        );
    }
    match s.replica.set_failover_paused(pause).await {
        Ok(()) => s.maintenance_reply(),
        Err(e) => s.refused(e),
    }
}

/// Prometheus text 0.0.4, or OpenMetrics when `Accept` asks for it.
async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    super::metrics::respond(&headers, s.metrics.encode())
}

async fn promote(State(s): State<Arc<AppState>>, uri: Uri) -> Response {
    let force = uri
        .query()
        .unwrap_or("")
        .split('&')
        .any(|kv| matches!(kv, "force" | "force=true" | "force=1" | "force=yes"));
    tracing::info!(force, "promotion asked over HTTP");
    match s.replica.promote(force).await {
        Ok(epoch) => Json(PromoteReply { epoch: epoch.0 }).into_response(),
        Err(e) => s.refused(e),
    }
}
