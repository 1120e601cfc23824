//! Serving the witness on a socket: in clear text, or over mutual TLS
//! where a connection is let in only with a node certificate of the CA
//! and each request only for a node id that certificate names. On any
//! other server (a simulated network's), add
//! [`WitnessService::into_server`] instead.

use super::WitnessService;
use std::time::Duration;

/// HTTP/2 keepalive so a node cut off by a partition is noticed, no Nagle
/// delay, and a bound on the streams one connection may hold open (a node
/// makes one call at a time, its register small).
fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(16))
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_millis(500)))
        .http2_keepalive_timeout(Some(Duration::from_secs(1)))
}

/// Serves `service` on `listener` until `shutdown` resolves, in clear
/// text: anyone who can reach the port can ask as any node.
pub async fn serve_witness(
    service: WitnessService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|s| {
                let _ = s.set_nodelay(true);
            })
        },
    );
    server()
        .serve_with_incoming_shutdown(service.into_server(), incoming, shutdown)
        .await
}

/// As `serve_witness`, over mutual TLS with `tls` (from
/// [`Tls::load_witness`](crate::Tls::load_witness)): a connection without
/// a client certificate of the CA is refused at the handshake, and a
/// request whose node id the certificate does not name gets
/// `PERMISSION_DENIED`; both are counted in
/// `WitnessStats::unauthenticated`.
#[cfg(feature = "tls")]
pub async fn serve_witness_tls(
    service: WitnessService,
    listener: tokio::net::TcpListener,
    tls: &crate::Tls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let service = service.requiring_certificates();
    let refused = service.refusal_counter();
    server()
        .serve_with_incoming_shutdown(
            service.into_server(),
            crate::transport::witness_incoming(listener, tls.clone(), refused),
            shutdown,
        )
        .await
}
