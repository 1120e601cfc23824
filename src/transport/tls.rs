//! Mutual TLS between the two nodes (feature `tls`).
//!
//! Both nodes hold a certificate from the cluster's CA whose subject
//! alternative name is their node id. A node accepts a replication
//! connection only from a certificate chaining to that CA **and** naming
//! its configured peer; it dials its peer only if the peer's certificate
//! names the peer. Anything else is refused during the handshake, before a
//! request reaches the node: logged once a minute per reason and counted
//! (`rejected{reason="unauthenticated"}`). On top, every request's
//! `node_id` must be the identity its connection proved (checked by the
//! service, `ReplicationService::check_sender`).
//!
//! TLS 1.3 only, rustls with ring, no OpenSSL. `Tls::reload` reads the
//! three files again (certificate rotation without a restart): new
//! connections use the new files, open ones go on with the old.

use crate::config::Config;
use crate::types::NodeId;
use futures::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

/// Where a node's TLS material is: PEM files, read at `Tls::load` and at
/// every `Tls::reload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate(s): the only issuer a peer's
    /// certificate may chain to.
    pub ca: PathBuf,
    /// This node's certificate (chain), naming its node id.
    pub cert: PathBuf,
    /// The private key of `cert`.
    pub key: PathBuf,
}

/// Why TLS material could not be used. Nothing changed: `load` returns no
/// `Tls`, a failed `reload` keeps the files loaded before.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("TLS {what} {path}: {detail}")]
    File {
        /// Which of the three files.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The files were read but do not make a working configuration.
    #[error("{0}")]
    Invalid(String),
}

/// A node's TLS identity and trust, shared by its server and its peer
/// client; cheap to clone (clones see each other's reloads).
#[derive(Clone)]
pub struct Tls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    own_name: ServerName<'static>,
    /// A node's peers (`peer_id` first, then `more_peers`): the only
    /// identities its server lets in, and the names its clients require
    /// of the peer each dials. Empty for a witness, which serves every node
    /// of its CA and checks each request's node id instead.
    peers: Vec<Peer>,
    current: RwLock<Configs>,
    refusals: RefusalLog,
}

struct Peer {
    id: NodeId,
    name: ServerName<'static>,
}

/// The name a witness's certificate carries (a DNS subject alternative
/// name), and the one a node requires of the witness it dials. A fixed
/// name rather than the witness's host: the witness stays the same
/// identity whatever address or proxy the nodes reach it through, and,
/// since `walrep certs` refuses a node named `witness` and issues the
/// witness a server-only certificate, no node's key can pose as the
/// witness and the witness's key cannot pose as a node.
pub const WITNESS_NAME: &str = "witness";

#[derive(Clone)]
struct Configs {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.inner.files)
            .field("own_name", &self.inner.own_name)
            .field(
                "peer_ids",
                &self.inner.peers.iter().map(|p| &p.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Tls {
    /// The name `id`'s certificate must carry, if `id` is one of our peers.
    pub(crate) fn peer_name(&self, id: &NodeId) -> Option<ServerName<'static>> {
        self.inner
            .peers
            .iter()
            .find(|p| p.id == *id)
            .map(|p| p.name.clone())
    }

    /// Reads `files` for the node `cfg.node_id` talking to `cfg.peer_id`
    /// (and `cfg.more_peers`). Every id must be a DNS name (letters,
    /// digits, `-`, dots), because a certificate names its holder that way,
    /// and this node's certificate must name `cfg.node_id` (else its peers
    /// would refuse it).
    pub fn load(files: TlsFiles, cfg: &Config) -> Result<Tls, TlsError> {
        // A node's certificate naming the witness could serve as the
        // arbiter's; one trusting a peer of that name could take the
        // witness's certificate for a node's.
        let ids = std::iter::once(&cfg.node_id)
            .chain(std::iter::once(&cfg.peer_id))
            .chain(cfg.more_peers.iter().map(|p| &p.id));
        if let Some(id) = ids
            .into_iter()
            .find(|id| id.0.eq_ignore_ascii_case(WITNESS_NAME))
        {
            return Err(TlsError::Invalid(format!(
                "node id {:?} is the witness's name: with TLS no node may carry it; rename the node",
                id.0
            )));
        }
        let own_name = dns_name(&cfg.node_id, "node_id")?;
        let mut peers = vec![Peer {
            id: cfg.peer_id.clone(),
            name: dns_name(&cfg.peer_id, "peer_id")?,
        }];
        for more in &cfg.more_peers {
            peers.push(Peer {
                id: more.id.clone(),
                name: dns_name(&more.id, "more_peers")?,
            });
        }
        Tls::new(files, own_name, peers)
    }

    /// Reads `files` for the built-in witness: its certificate must name
    /// [`WITNESS_NAME`]; it accepts a client certificate of any node its
    /// CA issued, and the witness checks each request's node id against
    /// the names that certificate carries.
    pub fn load_witness(files: TlsFiles) -> Result<Tls, TlsError> {
        let own_name = dns_name(&NodeId::from(WITNESS_NAME), "the witness's name")?;
        Tls::new(files, own_name, Vec::new())
    }

    fn new(
        files: TlsFiles,
        own_name: ServerName<'static>,
        peers: Vec<Peer>,
    ) -> Result<Tls, TlsError> {
        let configs = build(&files, &own_name)?;
        Ok(Tls {
            inner: Arc::new(Inner {
                files,
                own_name,
                peers,
                current: RwLock::new(configs),
                refusals: RefusalLog::default(),
            }),
        })
    }

    /// Reads the files again, for certificate rotation. On error the
    /// material loaded before stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let configs = build(&self.inner.files, &self.inner.own_name)?;
        *self.inner.current.write().unwrap() = configs;
        Ok(())
    }

    /// The files this `Tls` reads.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    fn current(&self) -> Configs {
        self.inner.current.read().unwrap().clone()
    }

    /// The TLS handshake of an accepted connection, then the check that
    /// the client's certificate names one of our peers (the first it
    /// names, in `peer_id`, `more_peers` order). `Err` says why, for the
    /// refusal log.
    async fn accept(&self, tcp: TcpStream) -> Result<PeerConnection, String> {
        if self.inner.peers.is_empty() {
            return Err("this TLS configuration is a witness's, not a node's".into());
        }
        let (stream, client) = self.handshake(tcp).await?;
        let peer = self
            .inner
            .peers
            .iter()
            .find(|p| names(&client.leaf, &p.name).is_ok())
            .ok_or_else(|| {
                let first = &self.inner.peers[0];
                let why = names(&client.leaf, &first.name).err().unwrap_or_default();
                if self.inner.peers.len() == 1 {
                    format!(
                        "the client's certificate does not name this node's peer {:?}: {why}",
                        first.id.0
                    )
                } else {
                    let ids: Vec<&str> = self.inner.peers.iter().map(|p| p.id.0.as_str()).collect();
                    format!("the client's certificate names none of this node's peers {ids:?}")
                }
            })?;
        Ok(PeerConnection {
            stream,
            identity: PeerIdentity {
                node_id: peer.id.clone(),
                remote: client.remote,
            },
        })
    }

    /// The TLS handshake of an accepted connection, whose client must
    /// present a certificate chaining to the CA (any name: the witness
    /// checks the name each request claims).
    async fn accept_any_node(
        &self,
        tcp: TcpStream,
    ) -> Result<PeerConnection<ClientCertificate>, String> {
        let (stream, identity) = self.handshake(tcp).await?;
        Ok(PeerConnection { stream, identity })
    }

    async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<TcpStream>,
            ClientCertificate,
        ),
        String,
    > {
        let remote = tcp.peer_addr().ok();
        let _ = tcp.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current().server);
        let stream = acceptor
            .accept(tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
        let Some(leaf) = certs.first() else {
            return Err("the client sent no certificate".into());
        };
        let leaf = leaf.clone().into_owned();
        Ok((stream, ClientCertificate { leaf, remote }))
    }
}

/// The certificate a client presented on an accepted connection (it
/// chains to the CA): what the witness checks each request's node id
/// against. tonic puts it in every request's extensions.
#[derive(Clone, Debug)]
pub struct ClientCertificate {
    leaf: CertificateDer<'static>,
    /// The remote socket address.
    pub remote: Option<SocketAddr>,
}

impl ClientCertificate {
    /// Whether the certificate names `node_id` (a DNS subject alternative
    /// name): `Err` says why not.
    pub fn proves(&self, node_id: &NodeId) -> Result<(), String> {
        let name = ServerName::try_from(node_id.0.as_str())
            .map_err(|_| format!("{:?} is not a name a certificate can carry", node_id.0))?;
        names(&self.leaf, &name)
    }
}

fn dns_name(id: &NodeId, setting: &str) -> Result<ServerName<'static>, TlsError> {
    match ServerName::try_from(id.0.clone()) {
        Ok(name @ ServerName::DnsName(_)) => Ok(name),
        _ => Err(TlsError::Invalid(format!(
            "{setting} {:?} cannot name a certificate: with TLS, node ids must be DNS names (letters, digits, '-' and '.')",
            id.0
        ))),
    }
}

/// Whether `cert` names `name` among its DNS subject alternative names,
/// literally: a wildcard name (`*.db.example`) proves no node id, or one
/// certificate an organisation's CA issued for a whole domain would let
/// its holder act as any node of it.
fn names(cert: &CertificateDer<'_>, name: &ServerName<'_>) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let ServerName::DnsName(wanted) = name else {
        return Err(format!("{name:?} is not a DNS name"));
    };
    let mut presented = cert.valid_dns_names();
    if presented.any(|n| n.eq_ignore_ascii_case(wanted.as_ref())) {
        return Ok(());
    }
    let listed: Vec<&str> = cert.valid_dns_names().collect();
    Err(format!(
        "it names {listed:?}, not {:?} (wildcard names prove no node)",
        wanted.as_ref()
    ))
}

/// The server check of a node dialing a peer, or the witness: the chain
/// and signatures as rustls' own verifier checks them, and the name as
/// `names` does (literally, no wildcard).
#[derive(Debug)]
struct LiteralNameVerifier(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for LiteralNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        names(end_entity, server_name).map_err(rustls::Error::General)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |detail: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

fn build(files: &TlsFiles, own_name: &ServerName<'static>) -> Result<Configs, TlsError> {
    let ca = read_certs("CA certificate", &files.ca)?;
    let chain = read_certs("certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::File {
        what: "key",
        path: files.key.clone(),
        detail: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert).map_err(|e| TlsError::File {
            what: "CA certificate",
            path: files.ca.clone(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    names(&chain[0], own_name).map_err(|e| {
        let what = match own_name {
            ServerName::DnsName(n) if n.as_ref() == WITNESS_NAME => format!(
                "the witness ({WITNESS_NAME:?}): {e}; issue it with {WITNESS_NAME:?} as a DNS subject alternative name (walrep certs --witness)"
            ),
            _ => format!(
                "this node ({own_name:?}): {e}; issue it with the node id as a DNS subject alternative name"
            ),
        };
        TlsError::Invalid(format!(
            "certificate {} does not name {what}",
            files.cert.display()
        ))
    })?;
    let invalid = |what: &str, e: rustls::Error| {
        TlsError::Invalid(format!("TLS {what} configuration from {files:?}: {e}"))
    };
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Invalid(format!("CA {}: {e}", files.ca.display())))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid("server", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| invalid("server", e))?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Invalid(format!("CA {}: {e}", files.ca.display())))?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid("client", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LiteralNameVerifier(server_verifier)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid("client", e))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Configs {
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

/// Who is on the other end of an accepted connection, proven by its
/// certificate: tonic puts it in every request's extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node id the certificate names (always one of our peers').
    pub node_id: NodeId,
    /// The remote socket address.
    pub remote: Option<SocketAddr>,
}

/// An accepted, authenticated connection: a node's peer (`PeerIdentity`)
/// or, at a witness, any node of the CA (`ClientCertificate`).
pub(crate) struct PeerConnection<I = PeerIdentity> {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    identity: I,
}

impl<I: Clone + Send + Sync + 'static> tonic::transport::server::Connected for PeerConnection<I> {
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.identity.clone()
    }
}

impl<I: Unpin> AsyncRead for PeerConnection<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<I: Unpin> AsyncWrite for PeerConnection<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// How long an accepted connection may take to finish its handshake; a
/// slower one is dropped so it cannot hold a handshake slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes running at once, in all. A connection arriving past it
/// takes the place of the oldest handshake still running, which is
/// dropped: connections that never finish their handshake (from many
/// addresses, each under `HANDSHAKES_PER_SOURCE`) cannot keep a peer out
/// by holding every slot, since a peer's handshake takes milliseconds and
/// evicting it would take this many newer connections within them.
const CONCURRENT_HANDSHAKES: usize = 256;
/// Handshakes running at once from one source address: a flood from
/// elsewhere cannot take the slots the peer's connections need.
const HANDSHAKES_PER_SOURCE: usize = 4;

/// Handshakes under way per source address. Per address, not per IPv6
/// /64: hosts of one cloud subnet share a /64, and a neighbour's silent
/// connections must not take the peer's slots; many addresses of one
/// attacker are what the eviction past `CONCURRENT_HANDSHAKES` is for.
#[derive(Default)]
struct PerSource(Mutex<HashMap<std::net::IpAddr, usize>>);

/// The source `ip` counts as: an IPv4 address mapped into IPv6 counts as
/// itself.
fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, Into::into),
        v4 => v4,
    }
}

impl PerSource {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<SourceSlot> {
        let ip = source_of(ip);
        let mut map = self.0.lock().unwrap();
        let n = map.entry(ip).or_default();
        if *n >= HANDSHAKES_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            table: self.clone(),
            ip,
        })
    }
}

/// One handshake's place in `PerSource`, given back when dropped.
struct SourceSlot {
    table: Arc<PerSource>,
    ip: std::net::IpAddr,
}

impl Drop for SourceSlot {
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

/// Accepts connections on `listener`, runs their handshakes (at most
/// `CONCURRENT_HANDSHAKES` at once and `HANDSHAKES_PER_SOURCE` per source
/// address, each within `HANDSHAKE_TIMEOUT`) and yields the authenticated
/// ones. Refused ones are counted through `refused` and logged once a
/// minute per reason. Ends, releasing the listener, when the returned
/// stream is dropped.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Tls,
    refused: impl Fn() + Send + Sync + 'static,
) -> impl futures::Stream<Item = Result<PeerConnection, io::Error>> + Send + 'static {
    accepting(
        listener,
        tls,
        "replication connection refused",
        |tls, tcp| async move { tls.accept(tcp).await },
        refused,
    )
}

/// As `incoming`, for the witness: a connection is let in with any client
/// certificate chaining to the CA, and carries it to the requests.
pub(crate) fn witness_incoming(
    listener: TcpListener,
    tls: Tls,
    refused: impl Fn() + Send + Sync + 'static,
) -> impl futures::Stream<Item = Result<PeerConnection<ClientCertificate>, io::Error>> + Send + 'static
{
    accepting(
        listener,
        tls,
        "witness connection refused",
        |tls, tcp| async move { tls.accept_any_node(tcp).await },
        refused,
    )
}

fn accepting<I, F, Fut>(
    listener: TcpListener,
    tls: Tls,
    what: &'static str,
    accept: F,
    refused: impl Fn() + Send + Sync + 'static,
) -> impl futures::Stream<Item = Result<PeerConnection<I>, io::Error>> + Send + 'static
where
    I: Send + 'static,
    F: Fn(Tls, TcpStream) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<PeerConnection<I>, String>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<PeerConnection<I>>(16);
    // The handshakes running, oldest first.
    let mut running: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::new();
    let per_source = Arc::new(PerSource::default());
    let refused = Arc::new(refused);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off
                    // instead of spinning.
                    tls.inner
                        .refusals
                        .log("accept failed", &e.to_string(), None);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(source) = per_source.enter(remote.ip()) else {
                refused();
                let why =
                    format!("{HANDSHAKES_PER_SOURCE} handshakes from this address already running");
                tls.inner.refusals.log(what, &why, Some(remote));
                continue;
            };
            running.retain(|h| !h.is_finished());
            if running.len() >= CONCURRENT_HANDSHAKES
                && let Some(oldest) = running.pop_front()
            {
                oldest.abort();
                refused();
                let why = format!(
                    "{CONCURRENT_HANDSHAKES} handshakes already running: the oldest was dropped for a new connection"
                );
                tls.inner.refusals.log(what, &why, Some(remote));
            }
            let (tls, tx, refused, accept) =
                (tls.clone(), tx.clone(), refused.clone(), accept.clone());
            let handshake = tokio::spawn(async move {
                let _slot = source;
                let result =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept(tls.clone(), tcp)).await {
                        Ok(result) => result,
                        Err(_) => Err(format!("no TLS handshake within {HANDSHAKE_TIMEOUT:?}")),
                    };
                match result {
                    Ok(conn) => {
                        let _ = tx.send(conn).await;
                    }
                    Err(why) => {
                        refused();
                        tls.inner.refusals.log(what, &why, Some(remote));
                    }
                }
            });
            running.push_back(handshake.abort_handle());
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

/// Logs each kind of refusal at most once a minute, so a flood of bad
/// connections cannot flood the log (the counter still counts each).
#[derive(Default)]
struct RefusalLog {
    last: Mutex<HashMap<String, Instant>>,
}

impl RefusalLog {
    const EVERY: Duration = Duration::from_secs(60);

    fn log(&self, what: &str, why: &str, remote: Option<SocketAddr>) {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap();
        if last.len() > 1024 {
            last.retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        let key = format!("{what}: {why}");
        if last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < Self::EVERY)
        {
            return;
        }
        last.insert(key, now);
        tracing::warn!(remote = ?remote, reason = why, "{what} (further ones like it are counted, not logged, for a minute)");
    }
}

/// What a dial presents and requires: the client configuration (trusted
/// CA, own certificate) and the name the server's certificate must carry,
/// read at each dial.
#[derive(Clone)]
pub(crate) enum ClientIdentity {
    /// A node's own `Tls`, as last (re)loaded; the server must be its
    /// peer (`peer_id`).
    Node(Tls),
    /// A node's own `Tls`, as last (re)loaded, dialing another server than
    /// its peer (the witness, which must carry `server`).
    NodeTo {
        tls: Tls,
        server: ServerName<'static>,
    },
    /// One configuration and server name, fixed (tests that dial with
    /// another identity than a node's).
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    Fixed {
        config: Arc<rustls::ClientConfig>,
        server: ServerName<'static>,
    },
}

impl ClientIdentity {
    fn now(&self) -> io::Result<(Arc<rustls::ClientConfig>, ServerName<'static>)> {
        Ok(match self {
            ClientIdentity::Node(tls) => {
                let Some(peer) = tls.inner.peers.first() else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a witness's TLS configuration cannot dial a node's peer",
                    ));
                };
                (tls.current().client, peer.name.clone())
            }
            ClientIdentity::NodeTo { tls, server } => (tls.current().client, server.clone()),
            ClientIdentity::Fixed { config, server } => (config.clone(), server.clone()),
        })
    }
}

/// The client side: a connector for `Endpoint::connect_with_connector_lazy`
/// that dials the URI's authority over TLS as `identity`, within
/// `timeout`.
#[derive(Clone)]
pub(crate) struct TlsConnector {
    pub(crate) identity: ClientIdentity,
    pub(crate) timeout: Duration,
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (now, timeout) = (self.identity.now(), self.timeout);
        Box::pin(async move {
            let (config, server) = now?;
            let addr = uri
                .authority()
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("no host:port in {uri}"),
                    )
                })?
                .to_string();
            let connect = async {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(server, tcp)
                    .await
            };
            match tokio::time::timeout(timeout, connect).await {
                Ok(stream) => stream.map(hyper_util::rt::TokioIo::new),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS connect timed out",
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn a_mapped_ipv4_source_counts_as_itself_and_ipv6_neighbours_apart() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("::ffff:10.0.0.7")), ip("10.0.0.7"));
        assert_eq!(source_of(ip("10.0.0.7")), ip("10.0.0.7"));
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:2::2"))
        );
    }

    #[test]
    fn no_node_or_peer_may_carry_the_witness_name() {
        let files = TlsFiles {
            ca: "ca.pem".into(),
            cert: "cert.pem".into(),
            key: "key.pem".into(),
        };
        for (node, peer) in [("witness", "n2"), ("n1", "Witness")] {
            let cfg = crate::Config {
                node_id: NodeId::from(node),
                peer_id: NodeId::from(peer),
                ..crate::Config::default()
            };
            let Err(err) = Tls::load(files.clone(), &cfg) else {
                panic!("{node}/{peer}: accepted");
            };
            assert!(err.to_string().contains("witness's name"), "{err}");
        }
    }

    /// A wildcard certificate from the CA (`*.c.example`, as an
    /// organisation's CA may issue for a domain) proves no node id: its
    /// holder could otherwise fence, promote or stream WAL as any node.
    #[test]
    fn a_certificate_proves_only_the_names_it_lists_literally() {
        use rustls::pki_types::pem::PemObject;
        let ca = walrep_daemon::certs::CertAuthority::new().unwrap();
        let der = |name: &str| {
            CertificateDer::from_pem_slice(ca.issue(name).unwrap().cert_pem.as_bytes()).unwrap()
        };
        let name = |n: &'static str| ServerName::try_from(n).unwrap();
        let wildcard = der("*.c.example");
        let err = names(&wildcard, &name("a.c.example")).unwrap_err();
        assert!(err.contains("wildcard"), "{err}");
        let literal = der("a.c.example");
        assert_eq!(names(&literal, &name("a.c.example")), Ok(()));
        assert_eq!(names(&literal, &name("A.C.Example")), Ok(()));
        assert!(names(&literal, &name("b.c.example")).is_err());
    }
}
