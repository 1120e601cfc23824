//! HTTPS for the client API: the node's side (a certificate and key,
//! reread on SIGHUP) and the CLI's side (trust one CA file).
//!
//! Clients present no certificate: load balancers, Prometheus and `curl
//! --cacert` must work with the CA alone, and writes are authorized by the
//! bearer token (`auth`), which TLS now keeps secret on the wire.
//!
//! The HTTP certificate is a setting of its own (`http_tls_cert`,
//! `http_tls_key`), not the node's replication certificate: the HTTP key
//! often goes where the replication key must not (a load balancer that
//! terminates TLS, a sidecar), and a certificate from the cluster CA that
//! names a node id and allows client use *is* that node on the replication
//! port. `walrep certs --http-hosts` issues a server-only certificate
//! (no `clientAuth`, so the replication port refuses it) naming the hosts
//! clients dial.

use crate::error::DaemonError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, RootCertStore};

/// Where the HTTP API's certificate and key are (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The HTTP API's TLS configuration; clones share reloads.
#[derive(Clone)]
pub struct HttpTls {
    files: HttpTlsFiles,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls")
            .field("files", &self.files)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn server_config(files: &HttpTlsFiles) -> Result<rustls::ServerConfig, String> {
    let chain = read_certs("http_tls_cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("http_tls_key {}: {e}", files.key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!(
                "http_tls_cert {} with http_tls_key {}: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl HttpTls {
    /// Reads the certificate (chain) and key; an error says which file
    /// and why.
    pub fn load(files: HttpTlsFiles) -> Result<HttpTls, DaemonError> {
        let config = server_config(&files).map_err(|e| {
            DaemonError::Config(format!("HTTPS (http_tls_cert, http_tls_key): {e}"))
        })?;
        Ok(HttpTls {
            files,
            current: Arc::new(RwLock::new(Arc::new(config))),
        })
    }

    /// Reads the files again (rotation); on error the loaded ones stay.
    /// New connections use the new certificate, open ones go on.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.files)?;
        *self.current.write().unwrap() = Arc::new(config);
        Ok(())
    }

    pub fn files(&self) -> &HttpTlsFiles {
        &self.files
    }

    /// An acceptor with the certificate loaded now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().unwrap().clone())
    }
}

/// A client's TLS settings: trust the CA certificates in one PEM file.
pub type ClientTls = Arc<rustls::ClientConfig>;

/// A client configuration trusting only the certificates in `ca` (the CLI's
/// `--tls-ca`).
pub fn client_config(ca: &Path) -> Result<ClientTls, DaemonError> {
    let bad = |e: String| DaemonError::Config(format!("--tls-ca: {e}"));
    let mut roots = RootCertStore::empty();
    for cert in read_certs("CA file", ca).map_err(bad)? {
        roots.add(cert).map_err(|e| {
            bad(format!(
                "{}: not a usable CA certificate: {e}",
                ca.display()
            ))
        })?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::CertAuthority;

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::new().unwrap();
        let (a, b) = (ca.issue("a").unwrap(), ca.issue("b").unwrap());
        std::fs::write(dir.path().join("a.pem"), &a.cert_pem).unwrap();
        std::fs::write(dir.path().join("b.key"), &b.key_pem).unwrap();
        let files = HttpTlsFiles {
            cert: dir.path().join("a.pem"),
            key: dir.path().join("b.key"),
        };
        let e = HttpTls::load(files).unwrap_err().to_string();
        assert!(e.contains("a.pem") && e.contains("b.key"), "{e}");
        let e = client_config(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--tls-ca: CA file") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
