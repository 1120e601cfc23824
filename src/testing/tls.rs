//! A replication client (and a witness client) with any TLS identity, for
//! tests (and attack replays) that check what a node or a witness lets
//! in: no client certificate, one from another CA, one naming another
//! node. Not for running a node: a node uses `GrpcPeer::connect_lazy_tls`
//! and `WitnessClient::connect_lazy_tls`.

use crate::transport::GrpcPeer;
use crate::{Config, TlsError};
use std::path::Path;
use std::sync::Arc;
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
    let name = ServerName::try_from(cfg.peer_id.0.clone())
        .map_err(|e| TlsError::Invalid(format!("peer_id {:?}: {e}", cfg.peer_id.0)))?;
    let connector = crate::transport::tls::TlsConnector {
        identity: crate::transport::tls::ClientIdentity::Fixed {
            config: client_config(trust, identity)?,
            server: name,
        },
        timeout: cfg.rpc_timeout,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cfg.peer_addr))
        .map_err(|e| TlsError::Invalid(format!("peer_addr {:?}: {e}", cfg.peer_addr)))?;
    let endpoint = crate::transport::channel_settings(endpoint, cfg);
    let channel = endpoint.connect_with_connector_lazy(connector);
    Ok(GrpcPeer::from_channels(channel.clone(), channel, cfg))
}

/// A `WitnessClient` dialing the witness at `addr` over TLS, trusting the
/// CA certificate(s) in `trust` for the witness (whose certificate must
/// name `WITNESS_NAME`) and presenting `identity`, or no client
/// certificate when `None`; with `cfg`'s deadlines. It asks as whatever
/// caller its calls name.
pub fn witness_with_identity(
    addr: &str,
    cfg: &Config,
    trust: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<crate::arbiter::WitnessClient, TlsError> {
    let connector = crate::transport::tls::TlsConnector {
        identity: crate::transport::tls::ClientIdentity::Fixed {
            config: client_config(trust, identity)?,
            server: ServerName::try_from(crate::transport::WITNESS_NAME).expect("a DNS name"),
        },
        timeout: cfg.rpc_timeout,
    };
    crate::arbiter::WitnessClient::connect_with(addr, cfg, connector)
        .map_err(|e| TlsError::Invalid(e.to_string()))
}

fn client_config(
    trust: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
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
    Ok(Arc::new(client))
}
