//! Serves the HTTP API with bounds a hostile or broken client cannot
//! exceed: a cap on open connections (below the process's file limit, so
//! the WAL and snapshots always get file handles), and a deadline for a
//! request's headers (at most `MAX_HEADER_BYTES`) that also closes idle
//! keep-alive connections, and one for each write of a response, so a
//! client that stops reading loses its connection. (A `PUT` body has a
//! deadline of its own, in the handler that reads it.)
//!
//! At the cap a new connection is accepted and closed at once (counted as
//! `walrep_rejected_requests_total{api="http",reason="connection_limit"}`),
//! so the kernel's backlog does not fill with waiting clients; connections
//! already open, and replication, go on.
//!
//! With a certificate (`http_tls_cert`, `http_tls_key`) every connection
//! is HTTPS: its TLS handshake must finish within the header deadline
//! (`http_idle_timeout_ms`) while it holds its connection slot, so a
//! stalled handshake is closed like a stalled request. A failed handshake
//! (plain HTTP to the HTTPS port, a client that does not trust the
//! certificate) is counted as `reason="tls_handshake"` and logged once a
//! minute; a connection the client closes during the handshake (a load
//! balancer's TCP health check) is neither. At most
//! `HANDSHAKES_PER_SOURCE` handshakes run at once from one address (more
//! are closed on arrival, `reason="handshakes_per_source"`), so connections
//! from one address that never finish their handshake cannot take every
//! slot from the others.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The bounds of one HTTP port.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections open at once; more are closed on arrival.
    pub max_connections: usize,
    /// Longest wait for a request's headers, from the end of the previous
    /// request on a keep-alive connection (so also the idle timeout).
    pub header_timeout: Duration,
    /// How long open requests get to finish when the server stops, and
    /// the longest a response may go without any of it being taken by
    /// the client (a client that stops reading loses its connection).
    pub request_timeout: Duration,
}

impl HttpLimits {
    /// Defaults sized from the process's file limit: at most half the
    /// descriptors go to HTTP connections, the rest stays for the WAL,
    /// snapshots, replication and the engine.
    pub fn for_fd_limit(fd_limit: u64) -> HttpLimits {
        HttpLimits {
            max_connections: (fd_limit / 2).clamp(16, 4096) as usize,
            header_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Raises the soft limit on open files to the hard limit (a service
/// manager's default soft limit is often 1024) and returns the soft limit
/// now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to / read from `lim`, a valid
    // rlimit on our stack.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// Logs a kind of event at most once a minute.
#[derive(Default)]
struct OncePerMinute(Mutex<Option<Instant>>);

impl OncePerMinute {
    fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            *last = Some(Instant::now());
            true
        } else {
            false
        }
    }
}

/// HTTPS handshakes under way at once from one source address. A
/// handshake takes milliseconds, so a load balancer opening many
/// connections stays far below it; connections from one address that stall
/// in their handshakes hold at most this many slots.
pub const HANDSHAKES_PER_SOURCE: usize = 64;

/// Handshakes under way per source address.
#[derive(Default)]
struct InHandshake(Mutex<HashMap<IpAddr, usize>>);

impl InHandshake {
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<HandshakeSlot> {
        let mut map = self.0.lock().unwrap();
        let n = map.entry(ip).or_default();
        if *n >= HANDSHAKES_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(HandshakeSlot {
            table: self.clone(),
            ip,
        })
    }
}

/// One handshake's place in `InHandshake`, given back when dropped.
struct HandshakeSlot {
    table: Arc<InHandshake>,
    ip: IpAddr,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut map = self.table.0.lock().unwrap();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` within `limits` until `stop` is cancelled,
/// then lets open requests finish; over HTTPS when `tls` is given.
/// `rejected` counts refused connections by reason (`connection_limit`,
/// `handshakes_per_source`, `tls_handshake`, `response_unread`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<crate::https::HttpTls>,
    rejected: impl Fn(&'static str) + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let rejected = Arc::new(rejected);
    let handshake_log = Arc::new(OncePerMinute::default());
    let unread_log = Arc::new(OncePerMinute::default());
    let per_source_log = OncePerMinute::default();
    let in_handshake = Arc::new(InHandshake::default());
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_refusal_log: Option<Instant> = None;
    // Dropping the set aborts what is still in it.
    let mut open = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or the like: back off, never spin.
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let source = match &tls {
            None => None,
            Some(_) => match in_handshake.enter(remote.ip()) {
                Some(source) => Some(source),
                None => {
                    rejected("handshakes_per_source");
                    if per_source_log.due() {
                        warn!(
                            %remote,
                            max = HANDSHAKES_PER_SOURCE,
                            "HTTPS handshakes from this address at their limit; closing its new connections (counted; logged once a minute)"
                        );
                    }
                    drop(tcp);
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            rejected("connection_limit");
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_refusal_log = Some(Instant::now());
                warn!(
                    max = limits.max_connections,
                    "HTTP connection limit reached; closing new connections (counted; logged once a minute)"
                );
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let stop = stop.clone();
        let header_timeout = limits.header_timeout;
        let bounds = ConnectionBounds {
            limits,
            rejected: rejected.clone(),
            log: unread_log.clone(),
        };
        while open.try_join_next().is_some() {}
        let acceptor = tls.as_ref().map(|tls| tls.acceptor());
        let (rejected, handshake_log) = (rejected.clone(), handshake_log.clone());
        open.spawn(async move {
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                return serve_connection(tcp, service, bounds, stop).await;
            };
            let handshake = tokio::select! {
                _ = stop.cancelled() => return,
                done = tokio::time::timeout(header_timeout, acceptor.accept(tcp)) => done,
            };
            drop(source);
            let why = match handshake {
                Ok(Ok(stream)) => {
                    return serve_connection(stream, service, bounds, stop).await;
                }
                // Closed by the client before the handshake ended: a TCP
                // health check (a load balancer's), not a refusal.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no TLS handshake within {header_timeout:?} (http_idle_timeout_ms)"),
            };
            rejected("tls_handshake");
            if handshake_log.due() {
                warn!(%remote, reason = %why, "HTTPS connection refused: TLS handshake failed (further ones are counted, not logged, for a minute)");
            }
        });
    }
    drop(listener);
    info!(
        connections = open.len(),
        "HTTP server stopping; finishing open requests"
    );
    // A client that stops reading its answer could hold this forever: the
    // requests get as long as one may take, then their connections go.
    let drained = tokio::time::timeout(limits.request_timeout, async {
        while open.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = open.len(),
            "HTTP connections still open after http_request_timeout; closing them"
        );
    }
}

/// The most a request's headers may take (more: 431), and the largest
/// read buffer of a connection: with thousands of connections each
/// sending headers slowly, hyper's default (~400 KiB each) would reach
/// gigabytes.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// What one connection is served within: the port's limits, and how to
/// count and log a client that stopped reading its responses.
struct ConnectionBounds {
    limits: HttpLimits,
    rejected: Arc<dyn Fn(&'static str) + Send + Sync>,
    log: Arc<OncePerMinute>,
}

/// One HTTP/1.1 connection (clear or TLS) until it ends or `stop`.
///
/// Hyper's only timer is the header deadline, which runs while it waits
/// for a request. A response the client does not read (pipelined requests
/// it never reads the answers of) would hold the connection, its slot and
/// the response's memory forever: a write that makes no progress for
/// `http_request_timeout_ms` ends the connection, counted as
/// `reason="response_unread"`.
async fn serve_connection<S>(
    io: S,
    service: TowerToHyperService<Router>,
    bounds: ConnectionBounds,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut io = tokio_io_timeout::TimeoutStream::new(io);
    io.set_write_timeout(Some(bounds.limits.request_timeout));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.limits.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(Box::pin(io)), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended
        && write_timed_out(&e)
    {
        (bounds.rejected)("response_unread");
        if bounds.log.due() {
            warn!(
                timeout = ?bounds.limits.request_timeout,
                "closed an HTTP connection whose client took none of its response for http_request_timeout_ms (counted; logged once a minute)"
            );
        }
    }
}

/// Whether hyper ended the connection because a write timed out.
fn write_timed_out(e: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_leave_half_the_descriptors_to_the_node() {
        assert_eq!(HttpLimits::for_fd_limit(1024).max_connections, 512);
        assert_eq!(HttpLimits::for_fd_limit(20).max_connections, 16);
        assert_eq!(HttpLimits::for_fd_limit(1 << 20).max_connections, 4096);
    }

    #[test]
    fn the_soft_file_limit_goes_up_never_down_and_is_reported() {
        let get = || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as in raise_fd_limit.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
            lim
        };
        let before = get();
        let soft = raise_fd_limit();
        let after = get();
        assert_eq!(soft, after.rlim_cur, "the limit in force is reported");
        assert!(after.rlim_cur >= before.rlim_cur);
        assert_eq!(after.rlim_max, before.rlim_max);
    }
}
