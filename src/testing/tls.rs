//! A replication client with any TLS identity, for tests (and attack
//! replays) that check what a node lets in: no client certificate, one
//! from another CA, one naming another node. Not for running a node: a
//! node uses `GrpcPeer::connect_lazy_tls`.

use crate::transport::GrpcPeer;
use crate::{Config, TlsError};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

/// A `GrpcPeer` dialing `cfg.peer_addr` over TLS that trusts the CA
/// certificate(s) in `trust` for the server (whose certificate must name
/// `cfg.peer_id`) and presents `identity` (certificate and key files), or
/// no client certificate when `None`. It claims whatever node id the
/// caller puts in its requests' headers.
pub fn peer_with_identity(
    cfg: &Config,
    trust: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<GrpcPeer, TlsError> {
    let file_err = |what: &'static str, path: &Path, e: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        detail: e,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust)
        .map_err(|e| file_err("CA certificate", trust, e.to_string()))?
    {
        let cert = cert.map_err(|e| file_err("CA certificate", trust, e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| file_err("CA certificate", trust, e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| TlsError::Invalid(e.to_string()))?
    .with_root_certificates(roots);
    let mut client = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_err("certificate", cert, e.to_string()))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_err("key", key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::Invalid(e.to_string()))?
        }
    };
    client.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from(cfg.peer_id.0.clone())
        .map_err(|e| TlsError::Invalid(format!("peer_id {:?}: {e}", cfg.peer_id.0)))?;
    let connector = AnyIdentity {
        config: Arc::new(client),
        name,
        timeout: cfg.rpc_timeout,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cfg.peer_addr))
        .map_err(|e| TlsError::Invalid(format!("peer_addr {:?}: {e}", cfg.peer_addr)))?;
    let endpoint = crate::transport::channel_settings(endpoint, cfg);
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(GrpcPeer::from_channels(channel.clone(), channel, cfg))
}

#[derive(Clone)]
struct AnyIdentity {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    timeout: std::time::Duration,
}

impl tower_service::Service<http::Uri> for AnyIdentity {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = uri
                .authority()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no host:port"))?
                .to_string();
            let connect = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(this.config)
                    .connect(this.name, tcp)
                    .await
            };
            match tokio::time::timeout(this.timeout, connect).await {
                Ok(stream) => stream.map(hyper_util::rt::TokioIo::new),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS connect timed out",
                )),
            }
        })
    }
}
