//! The node's client API (axum). Load balancers and scripts depend on these
//! shapes; `docs/DAEMON.md` lists them.
//!
//! | route | answers |
//! |---|---|
//! | `PUT /kv/{key}` (body: value; optional header `Idempotency-Key`) | 200 `{"lsn","epoch","deduplicated"}` once the commit mode is met; a refusal as below; 400 bad input |
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
//! | `POST /promote[?force=true][&to=ID]` | 200 `{"epoch"}` after a switchover (or forced promotion); asked of the primary, it hands over to its standby (with `to`, the standby named: any of a cluster's); with `to`, 409 unless that would make ID the primary |
//! | `GET /maintenance` | 200 `{"node_id","role","failover_paused"}` |
//! | `POST /maintenance`, `DELETE /maintenance` | pause / resume automatic failover on this node: 200 `{"node_id","role","failover_paused"}` |
//!
//! The probes (`/health` to `/readiness`) answer `GET`, `HEAD` (no body)
//! and `OPTIONS` with the same status; their body is the `HealthReport`
//! with a `reason` on 503, and a 503 that waiting can fix carries
//! `Retry-After`. A bad query string is a 400 naming what was wrong.
//! `probes` has their rules.
//!
//! # A refused write: nothing written (503) or outcome unknown (504)
//!
//! The status of a refused write says whether a load balancer may resend
//! it to the other node on its own, from what `walrep::Error::outcome`
//! says of the refusal:
//!
//! | status | `error` kinds (the `http_rejected` label) | the write | resend it |
//! |---|---|---|---|
//! | 503 + `Retry-After: 1` | `not_primary`, `fenced`, `unavailable` given on arrival | nothing of it was written | anywhere, at once: the shipped HAProxy config (`retry-on conn-failure 503`) resends it to the other node |
//! | 504 | `not_primary`, `fenced`, `unavailable` given to a write already appended when the node was deposed or its WAL failed; `sync_timeout`, `shutting_down`, `timeout`, `peer_error` | may exist, now or later (it may survive on the new primary, or be rewound) | only with the same `Idempotency-Key` (written at most once), or once a read shows it is not there; never by a load balancer |
//! | 500 | `internal` (damaged WAL, I/O error, state machine failure) | may exist | an operator must look first |
//! | 400 / 408 | `bad_request`, `body_timeout` | nothing written | not as it is |
//! | 409 | `promotion_refused` (`POST /promote`) | roles unchanged | not as it is |
//!
//! HAProxy itself answers 504 when `timeout server` strikes: the same
//! meaning, outcome unknown. A 503 without a JSON body comes from HAProxy
//! (no server up): nothing was sent to a node.
//!
//! While the node changes roles (a planned switchover pausing its writes,
//! promoting, a standby whose primary fell silent, or not primary for less
//! than `http_refusal_hold_ms`), a write
//! refused on arrival waits up to `http_refusal_hold_ms` first: if the node
//! becomes writable meanwhile (the promotion ends, the switchover is
//! abandoned) the write is applied here; else its 503 comes late enough
//! that a load balancer has seen the new primary and resends the write
//! there, so a switchover passes no refusal to clients. A standby streaming
//! from its primary, and not the primary for longer than the hold, answers
//! at once. A request that came straight to the node (no
//! `X-Forwarded-For` or `Forwarded` header; the shipped HAProxy config
//! adds `X-Forwarded-For`) is held only until another node is known to be
//! the primary: its client follows the 503's leader hint itself, so a
//! switchover pauses it for milliseconds, not for the hold.

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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use walrep::Replica;
use walrep::Replicator;
use walrep::{Error, RoleKind, WriteOutcome};

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
    /// Held by a maintenance change from its file to the node, so that two
    /// concurrent changes reach both in the same order.
    maintenance_changes: tokio::sync::Mutex<()>,
    /// `http_refusal_hold_ms`: how long a write refused on arrival waits
    /// while the node changes roles (see the module doc).
    pub refusal_hold: Duration,
    /// Whether the node de-duplicates request ids (`max_request_ids` above
    /// 0): without it an `Idempotency-Key` would be taken and ignored, and
    /// a retry applied twice, so a write carrying one is refused.
    pub deduplicates: bool,
    /// When this node last stopped being the primary, kept by
    /// `track_role_changes`.
    left_primary: Arc<Mutex<Option<Instant>>>,
    /// The task that keeps `left_primary`; stopped with the state.
    role_watch: tokio::task::JoinHandle<()>,
}

impl AppState {
    /// Sets `http_refusal_hold_ms` (zero until set: refuse at once).
    pub fn with_refusal_hold(mut self, hold: Duration) -> AppState {
        self.refusal_hold = hold;
        self
    }

    /// Whether the node de-duplicates request ids (`deduplicates`).
    pub fn with_deduplication(mut self, on: bool) -> AppState {
        self.deduplicates = on;
        self
    }
}

impl Drop for AppState {
    fn drop(&mut self) {
        self.role_watch.abort();
    }
}

/// Records in `left_primary` each moment `replica` stops being the
/// primary, until it shuts down.
async fn track_role_changes(replica: Arc<Replica>, left_primary: Arc<Mutex<Option<Instant>>>) {
    loop {
        let was_primary = replica.role() == RoleKind::Primary;
        let changed = replica
            .wait_for(Duration::from_secs(3600), "a role change", |h| {
                (h.role == RoleKind::Primary) != was_primary
            })
            .await;
        match changed {
            Ok(_) if was_primary => *left_primary.lock().unwrap() = Some(Instant::now()),
            Ok(_) | Err(Error::Timeout(_)) => {}
            Err(_) => return,
        }
    }
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
        let left_primary = Arc::new(Mutex::new(None));
        let role_watch = tokio::spawn(track_role_changes(replica.clone(), left_primary.clone()));
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
            maintenance_changes: tokio::sync::Mutex::new(()),
            refusal_hold: Duration::ZERO,
            deduplicates: true,
            left_primary,
            role_watch,
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
    let reply = ErrorReply {
        error,
        leader,
        kind: None,
    };
    (status, Json(reply)).into_response()
}

/// A refusal of kind `kind` (the `http_rejected` label, also in the body).
fn refusal(status: StatusCode, kind: &str, error: String, leader: Option<String>) -> Response {
    let reply = ErrorReply {
        error,
        leader,
        kind: Some(kind.to_string()),
    };
    (status, Json(reply)).into_response()
}

impl AppState {
    fn leader_http(&self) -> Option<String> {
        self.replica.leader().and_then(|l| l.client_addr)
    }

    fn bad_request(&self, msg: String) -> Response {
        self.metrics.http_rejected("bad_request");
        refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
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

    /// Maps a refused or failed write (or promotion) to its status,
    /// counting it: 503 with `Retry-After` when nothing was written (a
    /// load balancer may resend it elsewhere), 504 when the write may
    /// exist (see the module doc).
    fn refused(&self, e: Error) -> Response {
        let not_written = e.outcome() == WriteOutcome::NotWritten;
        let unavailable = if not_written {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::GATEWAY_TIMEOUT
        };
        let (status, reason, leader) = match &e {
            Error::NotPrimary { leader, .. } => (
                unavailable,
                "not_primary",
                leader
                    .as_ref()
                    .and_then(|l| l.client_addr.clone())
                    .or_else(|| self.leader_http()),
            ),
            Error::Fenced { .. } => (unavailable, "fenced", None),
            Error::Unavailable { .. } => (unavailable, "unavailable", None),
            Error::SyncTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "sync_timeout", None),
            Error::ShuttingDown => (StatusCode::GATEWAY_TIMEOUT, "shutting_down", None),
            Error::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout", None),
            Error::Transport(_) => (StatusCode::GATEWAY_TIMEOUT, "peer_error", None),
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "bad_request", None),
            Error::PromotionRefused { .. } => (StatusCode::CONFLICT, "promotion_refused", None),
            Error::Corrupt { .. }
            | Error::Io { .. }
            | Error::Config(_)
            | Error::InvalidConfig(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        };
        self.metrics.http_rejected(reason);
        let leader = leader.or_else(|| self.leader_http());
        let mut reply = refusal(status, reason, e.to_string(), leader);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            reply
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        reply
    }

    /// Whether a write refused on arrival should wait before its 503: the
    /// node is changing roles (not a standby, a standby out of contact with
    /// its primary, or one that stopped being the primary less than
    /// `refusal_hold` ago).
    fn changing_roles(&self) -> bool {
        if self.refusal_hold.is_zero() {
            return false;
        }
        let h = self.replica.health();
        if h.role != RoleKind::Standby || !h.peer.connected {
            // Not a standby, or one whose primary fell silent: it may
            // promote itself within failover_timeout.
            return true;
        }
        let left = *self.left_primary.lock().unwrap();
        left.is_some_and(|at| at.elapsed() < self.refusal_hold)
    }

    /// A write refused on arrival while the node changes roles: waits up
    /// to `refusal_hold` for the node to become writable, then tries once
    /// more (the node may be the new primary); `None` if it did not.
    ///
    /// A client that came straight to the node (no `X-Forwarded-For` or
    /// `Forwarded` header: not through a load balancer) follows the
    /// leader hint of the 503 itself, so its hold ends as soon as another
    /// node is known to be the primary and its client address is known
    /// (`led_elsewhere`): a switchover then pauses it for the switchover's
    /// milliseconds, not the hold. (A peer that never says its client
    /// address, as a library node without one, holds direct clients for
    /// the whole hold.)
    ///
    /// A client that hangs up ends the hold (`client_gone`): its write is
    /// not tried again behind its back, where it could land after a newer
    /// write the client sent elsewhere.
    async fn after_hold<T>(
        &self,
        e: &Error,
        proxied: bool,
        client_gone: &CancellationToken,
        again: impl std::future::Future<Output = walrep::Result<T>>,
    ) -> Option<walrep::Result<T>> {
        if e.outcome() != WriteOutcome::NotWritten || !e.is_retryable() || !self.changing_roles() {
            return None;
        }
        let direct_elsewhere = |h: &walrep::Health| !proxied && self.led_elsewhere(h);
        if direct_elsewhere(&self.replica.health()) {
            return None;
        }
        let settled = tokio::select! {
            settled = self.replica.wait_for(self.refusal_hold, "writable", |h| {
                h.writable || direct_elsewhere(h)
            }) => settled,
            _ = client_gone.cancelled() => return None,
        };
        match settled {
            Ok(h) if h.writable && !client_gone.is_cancelled() => Some(again.await),
            _ => None,
        }
    }

    /// Another node is the primary and this one will not take writes
    /// soon: it names another leader whose client address it knows (the
    /// hint a direct client follows; a node fenced by the new epoch may
    /// know the new leader's id before its address), and is not a standby
    /// whose primary fell silent (which may promote itself) unless it just
    /// stopped being the primary (demoted: it follows the new one).
    fn led_elsewhere(&self, h: &walrep::Health) -> bool {
        let other = h
            .leader
            .as_ref()
            .is_some_and(|l| l.id != h.node_id && l.client_addr.is_some());
        let may_promote = h.role == RoleKind::Standby
            && !h.peer.connected
            && !self
                .left_primary
                .lock()
                .unwrap()
                .is_some_and(|at| at.elapsed() < self.refusal_hold);
        other && !may_promote
    }

    /// Runs `work` in a task of its own, so that it ends even if the
    /// client hangs up and its handler is dropped midway, and answers with
    /// what `work` answered; if the task failed, a 500 naming `what` and
    /// what the client should do (`advice`).
    async fn to_the_end(
        &self,
        work: impl std::future::Future<Output = Response> + Send + 'static,
        what: &str,
        advice: &str,
    ) -> Response {
        tokio::spawn(work).await.unwrap_or_else(|e| {
            self.metrics.http_rejected("internal");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{what} failed ({e}); {advice}"),
                None,
            )
        })
    }

    /// A write whose handler ends with its client (dropped at a hang-up).
    async fn write(&self, cmd: Command, headers: &HeaderMap) -> Response {
        let client_stays = CancellationToken::new();
        self.write_record(cmd.encode().into(), headers, &client_stays)
            .await
    }

    /// Replicates one encoded command and answers for it, once per
    /// idempotency key when the request has one (see `idempotency`);
    /// `client_gone` is cancelled when the client hung up (see
    /// `after_hold`).
    async fn write_record(
        &self,
        cmd: Bytes,
        headers: &HeaderMap,
        client_gone: &CancellationToken,
    ) -> Response {
        let request_id = match idempotency::request_id_of(headers, &cmd, self.deduplicates) {
            Ok(id) => id,
            Err(msg) => return self.bad_request(msg),
        };
        if cmd.len() > self.max_record_bytes {
            return self.bad_request(format!(
                "key and value take {} bytes as a record, more than max_record_bytes ({})",
                cmd.len(),
                self.max_record_bytes
            ));
        }
        let started = Instant::now();
        let apply = || async {
            match request_id {
                Some(id) => self.replica.apply_once(id, cmd.clone()).await,
                None => self.replica.apply(cmd.clone()).await,
            }
        };
        let proxied =
            headers.contains_key("x-forwarded-for") || headers.contains_key(header::FORWARDED);
        let result = match apply().await {
            Err(e) => match self.after_hold(&e, proxied, client_gone, apply()).await {
                Some(again) => again,
                None => Err(e),
            },
            ok => ok,
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
    let Ok(held) = budget.acquire_many_owned(permits).await else {
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
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {:?} (http_request_timeout_ms); nothing was written",
                    s.body_timeout
                ),
                None,
            );
        }
    }
    // The write goes on, holding its budget, until it is answered, also
    // when the client goes away first: its record may already be queued in
    // the node, and freeing its bytes then would let clients that write and
    // hang up hold any amount of memory. Only a hold before a retry ends
    // with the client (`after_hold`).
    let writer = s.clone();
    let record = record.freeze();
    let client_gone = CancellationToken::new();
    let _hang_up = client_gone.clone().drop_guard();
    let write = async move {
        let _held = held;
        writer.write_record(record, &headers, &client_gone).await
    };
    s.to_the_end(write, "the write's task", "it may have been written")
        .await
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
    match s.engine.get(key).await {
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
    // In a task of its own, one change at a time, so the file and the node
    // see concurrent changes in the same order even if a client hangs up
    // midway.
    let changer = s.clone();
    let change = async move {
        let s = changer;
        let _one_at_a_time = s.maintenance_changes.lock().await;
        // On disk first: what the node does after a restart is what was
        // asked. On a blocking thread: the file and its directory are
        // fsynced, which on a busy disk takes milliseconds the node's
        // runtime thread (which answers heartbeats) must not wait.
        let written = match s.pause_file.clone() {
            Some(file) => tokio::task::spawn_blocking(move || file.set(pause))
                .await
                .unwrap_or_else(|e| {
                    Err(crate::error::DaemonError::io(
                        "writing the maintenance file",
                        std::io::Error::other(e),
                    ))
                }),
            None => Ok(()),
        };
        if let Err(e) = written {
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
    };
    s.to_the_end(change, "the maintenance change", "check GET /maintenance")
        .await
}

/// Prometheus text 0.0.4, or OpenMetrics when `Accept` asks for it.
async fn metrics(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    super::metrics::respond(&headers, s.metrics.encode())
}

/// `POST /promote`'s query: `force` (alone, or `=true`, `=1`, `=yes`)
/// and `to=NODE`. Anything else is refused: `?force=True` taken for a
/// planned switchover would do something other than what was asked.
fn promote_query(query: &str) -> Result<(bool, Option<String>), String> {
    let (mut force, mut to) = (false, None);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        match kv {
            "force" | "force=true" | "force=1" | "force=yes" => force = true,
            "force=false" | "force=0" | "force=no" => {}
            _ => match kv.strip_prefix("to=") {
                Some(node) if to.is_none() && !node.is_empty() => {
                    to = Some(crate::api::percent_decode(node))
                }
                _ => {
                    return Err(format!(
                        "/promote does not understand {kv:?}: it takes force (or force=true, force=1, force=yes; false, 0 or no for none) and to=NODE once"
                    ));
                }
            },
        }
    }
    Ok((force, to))
}

impl AppState {
    /// The answer to a promotion that returned `epoch`: which node is its
    /// primary, as this one knows it now (a primary asked to promote hands
    /// over, so the answer names the standby that took over).
    fn promoted(&self, epoch: walrep::Epoch) -> Response {
        let h = self.replica.health();
        let primary = if h.role == walrep::RoleKind::Primary && h.epoch == epoch {
            Some(h.node_id.0.clone())
        } else if h.epoch == epoch {
            // The leader it follows in that epoch (not an older one's).
            h.leader
                .map(|l| l.id)
                .filter(|id| *id != h.node_id)
                .map(|id| id.0)
        } else {
            None
        };
        Json(PromoteReply {
            epoch: epoch.0,
            node: h.node_id.0,
            primary,
        })
        .into_response()
    }
}

async fn promote(State(s): State<Arc<AppState>>, uri: Uri) -> Response {
    let (force, to) = match promote_query(uri.query().unwrap_or("")) {
        Ok(q) => q,
        Err(msg) => {
            s.metrics.http_rejected("bad_request");
            return error(StatusCode::BAD_REQUEST, msg, None);
        }
    };
    tracing::info!(force, to = ?to, "promotion asked over HTTP");
    if let Some(to) = &to {
        let h = s.replica.health();
        if let Err(why) = crate::api::switchover_target_check(
            &h.node_id.0,
            h.role.as_str(),
            &crate::api::standby_ids(&h),
            to,
        ) {
            s.metrics.http_rejected("promotion_refused");
            return refusal(StatusCode::CONFLICT, "promotion_refused", why, None);
        }
        if h.role == walrep::RoleKind::Primary && !force {
            // A cluster's primary hands over to the standby named.
            return match s
                .replica
                .switchover_to(&walrep::NodeId::from(to.as_str()))
                .await
            {
                Ok(epoch) => s.promoted(epoch),
                Err(e) => s.refused(e),
            };
        }
    }
    match s.replica.promote(force).await {
        Ok(epoch) => s.promoted(epoch),
        Err(e) => s.refused(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type KvPair = walrep::testing::Pair<crate::kv::KvStore>;

    /// A streaming pair of KV engines, with `tweak` applied to both
    /// nodes' settings; the directory lives as long as the test holds it.
    async fn kv_pair(
        tweak: impl Fn(&mut walrep::Config) + Send + Sync + 'static,
    ) -> (KvPair, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let pair = walrep::testing::Pair::builder(move |id| {
            Arc::new(crate::kv::KvStore::open(root.join(id.to_string())).unwrap())
        })
        .config(tweak)
        .start()
        .await
        .unwrap();
        pair.wait_streaming().await.unwrap();
        (pair, dir)
    }

    /// The HTTP API of `node`, with a write budget of `budget` bytes.
    fn app_state(node: &walrep::testing::PairNode<crate::kv::KvStore>, budget: usize) -> AppState {
        let replica = node.replica().clone();
        AppState::new(
            replica.clone(),
            Engine::Kv(node.engine().clone()),
            DaemonMetrics::new(replica, crate::metrics::NodeInfo::of(node.config())),
            1 << 20,
            budget,
            None,
            Duration::from_secs(10),
        )
    }

    /// A `PUT` whose client hangs up once its record is queued keeps its
    /// bytes in the write budget until the node answers the write: the
    /// record is held in the node meanwhile, and freeing its budget at
    /// the hang-up would let clients that write and leave hold any amount
    /// of memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_client_left_holds_its_budget_until_answered() {
        let (pair, _dir) = kv_pair(|c| {
            // The write waits for the cut standby until the link is back.
            c.sync_timeout = Duration::from_secs(120);
            c.failover_timeout = Duration::from_secs(60);
        })
        .await;
        let primary = pair.primary();
        let replica = primary.replica().clone();
        let budget = 1 << 20;
        let state = Arc::new(app_state(primary, budget));
        // The primary's stream to its standby fails until the link is back.
        pair.set_link_cut(primary.id(), true);
        let put = tokio::spawn(put_key(
            State(state.clone()),
            Ok(Path("k".to_string())),
            HeaderMap::new(),
            Body::from(vec![b'v'; 1000]),
        ));
        let mut health = replica.subscribe();
        tokio::time::timeout(
            pair.wait_timeout(),
            health.wait_for(|h| h.last_lsn == walrep::Lsn(1)),
        )
        .await
        .expect("the write was not queued")
        .unwrap();
        put.abort();
        assert!(put.await.unwrap_err().is_cancelled());
        assert!(
            state.write_budget.available_permits() < budget,
            "the budget was freed while the write was still held in the node"
        );
        pair.set_link_cut(primary.id(), false);
        let freed = async {
            while state.write_budget.available_permits() < budget {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(pair.wait_timeout(), freed)
            .await
            .expect("the budget came back once the write was answered");
        assert_eq!(replica.health().commit_lsn, walrep::Lsn(1));
    }

    /// A write refused while the node changes roles is held
    /// (`refusal_hold`) to be tried again; a client that hangs up ends the
    /// hold at once: its write is not tried behind its back, where it
    /// could land after a newer one the client sent elsewhere, even when
    /// the node becomes writable right after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_write_whose_client_left_is_not_tried_again() {
        let (pair, _dir) = kv_pair(|c| c.auto_failover = false).await;
        let standby = pair.standby();
        let replica = standby.replica().clone();
        let budget = 1 << 20;
        let mut state = app_state(standby, budget);
        state.refusal_hold = Duration::from_secs(60);
        let state = Arc::new(state);
        // A standby out of contact with its primary may promote: a write
        // refused there is held.
        pair.set_link_cut(pair.primary().id(), true);
        let mut health = replica.subscribe();
        tokio::time::timeout(pair.wait_timeout(), health.wait_for(|h| !h.peer.connected))
            .await
            .expect("the standby never lost its primary")
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        let put = tokio::spawn(put_key(
            State(state.clone()),
            Ok(Path("k".to_string())),
            headers,
            Body::from(vec![b'v'; 1000]),
        ));
        while state.write_budget.available_permits() == budget && !put.is_finished() {
            tokio::task::yield_now().await;
        }
        assert!(!put.is_finished(), "the write was not held");
        put.abort();
        // The node becomes writable: a hold still running would now try
        // the write again.
        let before = replica.health().last_lsn;
        replica.promote(true).await.unwrap();
        let freed = async {
            while state.write_budget.available_permits() < budget {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), freed)
            .await
            .expect("the write's task never ended");
        assert_eq!(
            standby.engine().get(b"k"),
            None,
            "the write was tried again after its client left"
        );
        assert_eq!(replica.health().last_lsn, before);
    }

    #[test]
    fn promote_takes_force_and_one_target_and_refuses_anything_else() {
        assert_eq!(promote_query(""), Ok((false, None)));
        assert_eq!(promote_query("force"), Ok((true, None)));
        assert_eq!(
            promote_query("force=1&to=n2"),
            Ok((true, Some("n2".into())))
        );
        assert_eq!(promote_query("force=no"), Ok((false, None)));
        for bad in ["force=True", "forced", "to=", "to=n2&to=n3", "switch=1"] {
            let err = promote_query(bad).unwrap_err();
            assert!(err.contains("/promote does not understand"), "{bad}: {err}");
        }
    }
}
