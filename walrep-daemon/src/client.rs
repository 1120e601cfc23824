//! A small HTTP/1.1 client for a node's API (hyper's connection API over
//! a tokio `TcpStream`, one kept-alive connection): the CLI, the demo and
//! the tests use it. Each call is bounded by a timeout. With a CA
//! (`with_tls`, the CLI's `--tls-ca`) it speaks HTTPS and checks that the
//! node's certificate names the host of the address it dials.

use super::api::{ErrorReply, HealthReport, MaintenanceReply, PromoteReply, WriteReply};
use super::idempotency;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach walrep at {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach walrep at {addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("walrep at {addr}: {msg}")]
    Protocol { addr: String, msg: String },
    #[error(
        "walrep at {addr}: TLS handshake failed: {source} (is --tls-ca the CA that issued the node's HTTP certificate, does that certificate name the host of --addr, and does the node serve HTTPS?)"
    )]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("walrep at {addr} answered {status}: {error}{}", leader_text(.leader))]
    Refused {
        addr: String,
        status: u16,
        error: String,
        leader: Option<String>,
    },
}

fn leader_text(leader: &Option<String>) -> String {
    match leader {
        Some(l) => format!(" (the primary's HTTP address is {l})"),
        None => String::new(),
    }
}

/// An answer: status and body.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub struct HttpClient {
    addr: String,
    timeout: Duration,
    conn: Option<SendRequest<Full<Bytes>>>,
    /// The `Authorization` header value, when the node needs a token.
    token: Option<String>,
    /// HTTPS, trusting this configuration's CA.
    tls: Option<crate::https::ClientTls>,
}

/// How a client reaches a node beyond its address: the token for writes
/// and the CA for HTTPS. Kept when a write follows the primary's address.
#[derive(Clone, Default)]
pub struct Access {
    pub token: Option<String>,
    pub tls: Option<crate::https::ClientTls>,
}

/// The host of `addr` (`HOST:PORT`, `[V6]:PORT`), as a TLS server name.
fn server_name(addr: &str) -> Result<tokio_rustls::rustls::pki_types::ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// Percent-encodes a key for a URL path (every byte but the unreserved ones).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// How long a call waits for its answer unless `with_timeout` says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `promote_to` waits for the node's answer, unless
/// `with_timeout` set a bound of the caller's own.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(300);

impl HttpClient {
    pub fn new(addr: &str) -> HttpClient {
        HttpClient {
            addr: addr.to_string(),
            timeout: DEFAULT_TIMEOUT,
            conn: None,
            token: None,
            tls: None,
        }
    }

    /// Speaks HTTPS, trusting `tls`'s CA.
    pub fn with_tls(mut self, tls: crate::https::ClientTls) -> HttpClient {
        self.tls = Some(tls);
        self
    }

    /// With `access`'s token and TLS, when given.
    pub fn with_access(mut self, access: &Access) -> HttpClient {
        if let Some(token) = &access.token {
            self = self.with_token(token);
        }
        self.tls = access.tls.clone();
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: &str) -> HttpClient {
        self.token = Some(format!("Bearer {token}"));
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request; any answer, whatever its status, is `Ok`.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Reply, ClientError> {
        self.request_with(method, path, body, None).await
    }

    /// As `request`, with an `Idempotency-Key` header when `idempotency_key`
    /// is given.
    async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let timeout = self.timeout;
        let send = self.send(method, path, body, idempotency_key);
        match tokio::time::timeout(timeout, send).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    timeout: self.timeout,
                })
            }
        }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let usable = match self.conn.as_mut() {
            Some(c) => c.ready().await.is_ok(),
            None => false,
        };
        let mut reused = usable;
        if !usable {
            self.conn = Some(self.connect().await?);
        }
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, token);
        }
        if let Some(key) = idempotency_key {
            req = req.header(idempotency::HEADER, key);
        }
        let mut req = req.body(Full::new(body)).map_err(|e| ClientError::Protocol {
            addr: self.addr.clone(),
            msg: format!(
                "cannot send this request: {e} (an --idempotency-key or token must be printable text, with no control characters)"
            ),
        })?;
        let resp = loop {
            let sender = self.conn.as_mut().expect("connected above");
            match sender.try_send_request(req).await {
                Ok(resp) => break resp,
                // The node closed the idle connection as we sent on it,
                // and nothing was written: one more try on a fresh one is
                // safe, whatever the method.
                Err(mut e) if reused && e.message().is_some() => {
                    req = e.take_message().expect("checked above");
                    reused = false;
                    self.conn = Some(self.connect().await?);
                }
                Err(e) => {
                    self.conn = None;
                    return Err(ClientError::Protocol {
                        addr: self.addr.clone(),
                        msg: format!("the connection failed mid-request: {}", e.into_error()),
                    });
                }
            }
        };
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| {
            self.conn = None;
            ClientError::Protocol {
                addr: self.addr.clone(),
                msg: format!("the connection failed mid-answer: {e}"),
            }
        })?;
        Ok(Reply {
            status,
            headers: parts.headers,
            body: body.to_bytes(),
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream =
            TcpStream::connect(&self.addr)
                .await
                .map_err(|source| ClientError::Unreachable {
                    addr: self.addr.clone(),
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => self.handshake(stream).await,
            Some(tls) => {
                let name = server_name(&self.addr).map_err(|msg| ClientError::Protocol {
                    addr: self.addr.clone(),
                    msg,
                })?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|source| ClientError::Tls {
                        addr: self.addr.clone(),
                        source,
                    })?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<Full<Bytes>>, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ClientError::Protocol {
                    addr: self.addr.clone(),
                    msg: format!("HTTP handshake failed: {e}"),
                })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn refused(&self, reply: &Reply) -> ClientError {
        let (error, leader) = match reply.json::<ErrorReply>() {
            Some(e) => (e.error, e.leader),
            None => (String::from_utf8_lossy(&reply.body).into_owned(), None),
        };
        ClientError::Refused {
            addr: self.addr.clone(),
            status: reply.status,
            error,
            leader,
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, reply: &Reply) -> Result<T, ClientError> {
        reply.json().ok_or_else(|| ClientError::Protocol {
            addr: self.addr.clone(),
            msg: format!(
                "unexpected answer: {}",
                String::from_utf8_lossy(&reply.body)
            ),
        })
    }

    async fn write(
        &mut self,
        method: Method,
        key: &str,
        value: Bytes,
        idempotency_key: Option<&str>,
    ) -> Result<WriteReply, ClientError> {
        let path = format!("/kv/{}", encode_key(key));
        let reply = self
            .request_with(method, &path, value, idempotency_key)
            .await?;
        match reply.status {
            200 => self.parse(&reply),
            _ => Err(self.refused(&reply)),
        }
    }

    /// `PUT /kv/{key}`: returns once the commit mode is met.
    pub async fn put(&mut self, key: &str, value: Bytes) -> Result<WriteReply, ClientError> {
        self.write(Method::PUT, key, value, None).await
    }

    pub async fn delete(&mut self, key: &str) -> Result<WriteReply, ClientError> {
        self.write(Method::DELETE, key, Bytes::new(), None).await
    }

    /// `PUT /kv/{key}` with an idempotency key: however often it is sent
    /// with the same key (while the node remembers it), the write is
    /// applied once. Use one key per logical write and resend it on every
    /// retry, at this node or the next primary (`idempotency::new_key`).
    pub async fn put_once(
        &mut self,
        key: &str,
        value: Bytes,
        idempotency_key: &str,
    ) -> Result<WriteReply, ClientError> {
        self.write(Method::PUT, key, value, Some(idempotency_key))
            .await
    }

    /// `DELETE /kv/{key}` with an idempotency key (as `put_once`).
    pub async fn delete_once(
        &mut self,
        key: &str,
        idempotency_key: &str,
    ) -> Result<WriteReply, ClientError> {
        self.write(Method::DELETE, key, Bytes::new(), Some(idempotency_key))
            .await
    }

    /// `GET /kv/{key}`: `None` if the key is absent.
    pub async fn get(&mut self, key: &str) -> Result<Option<Bytes>, ClientError> {
        let reply = self
            .request(
                Method::GET,
                &format!("/kv/{}", encode_key(key)),
                Bytes::new(),
            )
            .await?;
        match reply.status {
            200 => Ok(Some(reply.body)),
            404 => Ok(None),
            _ => Err(self.refused(&reply)),
        }
    }

    /// `GET /health`: the status (200 unless the node is in trouble) and
    /// the report.
    pub async fn health(&mut self) -> Result<(u16, HealthReport), ClientError> {
        let reply = self.request(Method::GET, "/health", Bytes::new()).await?;
        Ok((reply.status, self.parse(&reply)?))
    }

    /// `POST /promote`: the new epoch.
    pub async fn promote(&mut self, force: bool) -> Result<u64, ClientError> {
        Ok(self.promote_to(force, None).await?.epoch)
    }

    /// `POST /promote?to=ID`: a switchover only if it would make `to` the
    /// primary, as the node sees its role when the request arrives (409
    /// `promotion_refused` otherwise, nothing changed).
    pub async fn promote_to(
        &mut self,
        force: bool,
        to: Option<&str>,
    ) -> Result<PromoteReply, ClientError> {
        let mut query = Vec::new();
        if force {
            query.push("force=true".to_string());
        }
        if let Some(to) = to {
            query.push(format!("to={}", crate::api::percent_encode(to)));
        }
        let path = if query.is_empty() {
            "/promote".to_string()
        } else {
            format!("/promote?{}", query.join("&"))
        };
        // The node bounds a promotion itself (a switchover waits up to
        // twice its sync_timeout plus four rpc_timeouts, more than this
        // client's usual 30 s with long settings): wait for its answer.
        let usual = self.timeout;
        if usual == DEFAULT_TIMEOUT {
            self.timeout = PROMOTE_TIMEOUT;
        }
        let reply = self.request(Method::POST, &path, Bytes::new()).await;
        self.timeout = usual;
        let reply = reply?;
        match reply.status {
            200 => self.parse::<PromoteReply>(&reply),
            _ => Err(self.refused(&reply)),
        }
    }

    /// `POST /maintenance` (`pause`) or `DELETE /maintenance`: pauses or
    /// resumes automatic failover on this node.
    pub async fn set_maintenance(&mut self, pause: bool) -> Result<MaintenanceReply, ClientError> {
        let method = if pause { Method::POST } else { Method::DELETE };
        let reply = self.request(method, "/maintenance", Bytes::new()).await?;
        match reply.status {
            200 => self.parse(&reply),
            _ => Err(self.refused(&reply)),
        }
    }
}

/// One row of `walrep status` with several nodes: what a node answered,
/// or why it did not.
pub struct ClusterRow {
    pub addr: String,
    pub health: Result<HealthReport, String>,
}

/// `walrep status --addr A --addr B ...`: one line per node, like
/// `patronictl list`. Lag is records (and bytes when known) behind the
/// primary: a standby's own, or on the primary its standby's. A standby's
/// sync state is what its primary last called it (it may be cut off now:
/// see `peer.connected`).
pub fn cluster_table(rows: &[ClusterRow]) -> String {
    const HEAD: [&str; 14] = [
        "NODE", "ADDR", "ROLE", "EPOCH", "FIRST", "LAST", "COMMIT", "APPLIED", "LAG", "SYNC",
        "ELIGIBLE", "ARBITER", "PAUSED", "NOTE",
    ];
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_string();
    let mut table: Vec<Vec<String>> = vec![HEAD.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let h = match &row.health {
            Ok(h) => h,
            Err(e) => {
                let mut cells = vec!["?".to_string(), row.addr.clone(), "UNREACHABLE".into()];
                cells.extend((3..HEAD.len() - 1).map(|_| "-".to_string()));
                cells.push(e.clone());
                table.push(cells);
                continue;
            }
        };
        let role = match (h.role.as_str(), h.writable, h.solo) {
            ("primary", true, true) => "primary (solo)".to_string(),
            ("primary", false, _) => "primary (read-only)".to_string(),
            (role, _, _) => role.to_string(),
        };
        let lag = match h.standby_lag() {
            Some(lag) => match lag.bytes {
                Some(bytes) => format!("{} rec, {bytes} B", lag.records),
                None => format!("{} rec", lag.records),
            },
            None if h.role == "primary" => {
                format!("{} rec, {} B", h.peer.lag_records, h.peer.lag_bytes)
            }
            None => "-".into(),
        };
        // On a standby, what its primary called it at their last contact.
        let sync = h.sync_state.clone();
        let arbiter = match &h.arbiter {
            None => "-".to_string(),
            Some(a) => match a.reachable {
                Some(true) => "reachable".into(),
                Some(false) => "UNREACHABLE".into(),
                None => "not asked yet".into(),
            },
        };
        table.push(vec![
            h.node_id.clone(),
            row.addr.clone(),
            role,
            h.epoch.to_string(),
            h.first_lsn.to_string(),
            h.last_lsn.to_string(),
            h.commit_lsn.to_string(),
            h.applied_lsn.to_string(),
            lag,
            sync,
            if h.role == "standby" {
                yes_no(h.eligible)
            } else {
                "-".into()
            },
            arbiter,
            yes_no(h.failover_paused),
            h.note.clone().unwrap_or_default(),
        ]);
    }
    let widths: Vec<usize> = (0..HEAD.len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Whether a failed write may succeed if sent again with the same
/// idempotency key: the node was unreachable, did not answer, answered 503
/// (nothing written: not the primary, fenced, a switchover in progress) or
/// 504 (outcome unknown: no standby confirmation, deposed while waiting,
/// shutting down; the same key applies it at most once). Bad input (400)
/// and internal errors (500) stay as they are.
pub fn may_retry(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. }
        | ClientError::Timeout { .. }
        | ClientError::Protocol { .. } => true,
        ClientError::Refused { status, .. } => matches!(*status, 503 | 504),
        // A certificate the client does not trust stays untrusted.
        ClientError::Tls { .. } => false,
    }
}

/// One logical write (`value`: `Some` to put, `None` to delete) under
/// `idempotency_key`, sent to `addr` and sent again with the same key while
/// `may_retry` says so, for at most `retry_for`; a 503 that names the
/// primary sends the next attempt there. With a key, however many attempts
/// reached a primary, the write is applied once (see `idempotency`);
/// without one, only a 503 ("nothing written") is retried safely, so give
/// one whenever `retry_for` is not zero.
pub async fn write_retrying(
    addr: &str,
    access: &Access,
    key: &str,
    value: Option<Bytes>,
    idempotency_key: Option<&str>,
    retry_for: Duration,
) -> Result<WriteReply, ClientError> {
    /// Between attempts: a failover takes about `failover_timeout`.
    const PAUSE: Duration = Duration::from_millis(100);
    /// The least an attempt gets, however little of `retry_for` is left.
    const MIN_ATTEMPT: Duration = Duration::from_millis(500);
    let deadline = std::time::Instant::now() + retry_for;
    let client_of = |addr: &str| HttpClient::new(addr).with_access(access);
    // Retrying, no attempt outlasts the time left (a node that accepts and
    // never answers must not hold the write past `retry_for`); one attempt
    // keeps the client's own bound.
    let bounded = |client: HttpClient| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if retry_for.is_zero() {
            client
        } else {
            let timeout = client.timeout.min(left.max(MIN_ATTEMPT));
            client.with_timeout(timeout)
        }
    };
    let mut client = client_of(addr);
    // Without a key a resend is safe only where nothing was written.
    let retryable = |e: &ClientError| match idempotency_key {
        Some(_) => may_retry(e),
        None => matches!(e, ClientError::Refused { status: 503, .. }),
    };
    loop {
        client = bounded(client);
        let result = match &value {
            Some(v) => {
                client
                    .write(Method::PUT, key, v.clone(), idempotency_key)
                    .await
            }
            None => {
                client
                    .write(Method::DELETE, key, Bytes::new(), idempotency_key)
                    .await
            }
        };
        let e = match result {
            Ok(reply) => return Ok(reply),
            Err(e) if !retryable(&e) || std::time::Instant::now() >= deadline => return Err(e),
            Err(e) => e,
        };
        tracing::debug!(error = %e, "write failed; retrying with the same idempotency key");
        if let ClientError::Refused {
            leader: Some(leader),
            ..
        } = &e
            && leader != client.addr()
        {
            client = client_of(leader);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// `walrep status` of one node, as a table of its fields.
pub fn status_table(addr: &str, h: &HealthReport) -> String {
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut rows: Vec<(&str, String)> = vec![
        ("node", format!("{} at {addr}", h.node_id)),
        (
            "role",
            format!(
                "{}{}{}",
                h.role,
                if h.writable { ", writable" } else { "" },
                if h.solo { ", solo (no standby)" } else { "" }
            ),
        ),
        ("epoch", h.epoch.to_string()),
        ("commit mode", h.commit_mode.clone()),
        (
            "leader",
            match (&h.leader_id, &h.leader) {
                (Some(id), Some(addr)) => format!("{id} at {addr}"),
                (Some(id), None) => id.clone(),
                _ => "unknown".into(),
            },
        ),
        (
            "lsn",
            format!(
                "last {}  flushed {}  commit {}  applied {}  first {}",
                h.last_lsn, h.flushed_lsn, h.commit_lsn, h.applied_lsn, h.first_lsn
            ),
        ),
        ("state hash", h.state_hash.clone()),
        (
            "peer",
            format!(
                "{} {}",
                h.peer.id,
                if h.peer.connected {
                    "connected"
                } else {
                    "not connected"
                }
            ),
        ),
        (
            "lag",
            format!(
                "{} records, {} bytes, {:.3} s",
                h.peer.lag_records, h.peer.lag_bytes, h.peer.lag_seconds
            ),
        ),
        (
            "last contact",
            h.peer
                .last_contact_ms
                .map_or("never".into(), |ms| format!("{ms} ms ago")),
        ),
        ("sync state", h.sync_state.clone()),
        (
            "failover",
            if h.failover_paused {
                "PAUSED (maintenance): this node does not promote by itself".into()
            } else {
                "not paused".into()
            },
        ),
    ];
    if let Some(a) = &h.arbiter {
        let reach = match a.reachable {
            Some(true) => "reachable",
            Some(false) => "UNREACHABLE",
            None => "not asked yet",
        };
        let register = match &a.register {
            Some(r) if r.version > 0 => format!(
                "register v{} epoch {} primary {} sync set [{}]",
                r.version,
                r.epoch,
                r.primary.as_deref().unwrap_or("-"),
                r.sync_set.join(", ")
            ),
            Some(_) => "no register yet".into(),
            None => "register unknown".into(),
        };
        rows.push(("arbiter", format!("{} {reach}, {register}", a.url)));
        if let Some(why) = &a.held_back {
            rows.push(("held back", why.clone()));
        }
        if let Some(e) = a.last_error.as_ref().filter(|_| a.reachable != Some(true)) {
            rows.push(("arbiter err", e.clone()));
        }
    }
    if h.rewound_records > 0 {
        rows.push(("rewound", format!("{} records", h.rewound_records)));
    }
    if h.note.is_some() {
        rows.push(("note", opt(&h.note)));
    }
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:<13}{v}");
    }
    out
}
