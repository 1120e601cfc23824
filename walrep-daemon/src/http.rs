//! The node's client API (axum). Load balancers and scripts depend on these
//! shapes; `docs/DAEMON.md` lists them.
//!
//! | route | answers |
//! |---|---|
//! | `PUT /kv/{key}` (body: value; optional header `Idempotency-Key`) | 200 `{"lsn","epoch","deduplicated"}` once the commit mode is met; 503 `{"error","leader"}` if not primary or the standby did not confirm; 400 bad input |
//! | `DELETE /kv/{key}` | the same |
//! | `GET /kv/{key}` | 200 raw value, 404 (any role) |
//! | `GET /health` | 200 `HealthReport` |
//! | `GET /primary` | 200 iff a primary that accepts writes, else 503 |
//! | `GET /replica` | 200 iff a standby receiving the WAL stream, else 503 |
//! | `GET /metrics` | Prometheus text |
//! | `POST /promote[?force=true]` | 200 `{"epoch"}` after a switchover (or forced promotion) |

use super::api::{ErrorReply, HealthReport, PromoteReply, WriteReply};
use super::metrics::{CONTENT_TYPE, DaemonMetrics};
use crate::idempotency;
use crate::kv::{Command, KvStore};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use std::sync::Arc;
use std::time::Instant;
use walrep::Error;
use walrep::Replica;
use walrep::Replicator;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

pub struct AppState {
    pub replica: Arc<Replica>,
    pub kv: Arc<KvStore>,
    pub metrics: DaemonMetrics,
    /// Largest encoded command (key + value + 5 bytes of framing).
    pub max_record_bytes: usize,
}

pub fn router(state: Arc<AppState>) -> Router {
    // One byte over the limit is enough to know a body is too large; the
    // rejection becomes a 400 JSON error below, not axum's 413.
    let body_limit = state.max_record_bytes + 1;
    Router::new()
        .route("/kv/{key}", get(get_key).put(put_key).delete(delete_key))
        .route("/kv", any(empty_key))
        .route("/kv/", any(empty_key))
        .route("/health", get(health))
        .route("/primary", get(primary))
        .route("/replica", get(replica))
        .route("/metrics", get(metrics))
        .route("/promote", post(promote))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
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

    /// Applies `cmd`, once per idempotency key when the request has one
    /// (see `idempotency`).
    async fn write(&self, cmd: Command, headers: &HeaderMap) -> Response {
        let request_id = match headers.get(idempotency::HEADER) {
            None => None,
            Some(key) => match idempotency::request_id(key.as_bytes()) {
                Ok(id) => Some(id),
                Err(msg) => return self.bad_request(msg),
            },
        };
        let cmd = cmd.encode();
        if cmd.len() > self.max_record_bytes {
            return self.bad_request(format!(
                "key and value take {} bytes as a record, more than max_record_bytes ({})",
                cmd.len(),
                self.max_record_bytes
            ));
        }
        let started = Instant::now();
        let result = match request_id {
            Some(id) => self.replica.apply_once(id, cmd.into()).await,
            None => self.replica.apply(cmd.into()).await,
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
        HealthReport::new(&self.replica.health(), self.kv.state_hash())
    }
}

async fn put_key(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let key = match AppState::check_key(key) {
        Ok(k) => k,
        Err(msg) => return s.bad_request(msg),
    };
    let value = match body {
        Ok(v) => v,
        Err(e) => {
            return s.bad_request(format!(
                "cannot take the value ({e}); the largest record is {} bytes",
                s.max_record_bytes
            ));
        }
    };
    s.write(Command::Put { key, value }, &headers).await
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
    match s.kv.get(&key) {
        Some(value) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response()
        }
        None => error(StatusCode::NOT_FOUND, "key not found".into(), None),
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

async fn health(State(s): State<Arc<AppState>>) -> Response {
    Json(s.health()).into_response()
}

async fn primary(State(s): State<Arc<AppState>>) -> Response {
    let h = s.health();
    let status = if h.writable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(h)).into_response()
}

async fn replica(State(s): State<Arc<AppState>>) -> Response {
    let h = s.health();
    let status = if h.is_streaming_replica() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(h)).into_response()
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.encode()).into_response()
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
