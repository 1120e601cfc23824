//! `walrep witness`: the built-in arbiter of any number of clusters. It
//! serves the `Witness` gRPC service on `--listen` (mutual TLS with
//! `--tls-*`), keeps every register in `DIR/registers`, and serves
//! `/health` and `/metrics` on `--http`.
//!
//! ```text
//! settings.rs  its flags, TOML keys and WALREP_* variables
//! http.rs      /health and /metrics
//! ```

pub mod http;
pub mod settings;

use crate::error::DaemonError;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use walrep::arbiter::WitnessService;
use walrep::arbiter::witness::{serve_witness, serve_witness_tls};

pub use settings::{WitnessArgs, WitnessSettings};

/// A witness serving gRPC (and HTTP, if asked).
pub struct RunningWitness {
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub service: WitnessService,
    stop: CancellationToken,
    grpc: JoinHandle<()>,
    http: Option<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr, setting: &str) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).await.map_err(|e| {
        DaemonError::Config(format!("cannot listen on {addr}: {e} (setting {setting})"))
    })
}

impl RunningWitness {
    /// Binds both ports, reads the TLS files and the register file (a
    /// damaged one stops it here), then serves.
    pub async fn start(settings: WitnessSettings) -> Result<RunningWitness, DaemonError> {
        let grpc_listener = bind(settings.listen, "listen").await?;
        let http_listener = match settings.http {
            Some(addr) => Some(bind(addr, "http").await?),
            None => None,
        };
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|e| DaemonError::io("reading the witness's address", e))?;
        let http_addr = match &http_listener {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| DaemonError::io("reading the HTTP address", e))?,
            ),
            None => None,
        };
        let tls = match &settings.tls {
            Some(files) => Some(walrep::Tls::load_witness(files.clone()).map_err(|e| {
                DaemonError::Config(format!("mutual TLS (tls_ca, tls_cert, tls_key): {e}"))
            })?),
            None => {
                warn!(
                    "the witness runs without TLS: anyone who can reach {grpc_addr} can ask as any node; give --tls-ca, --tls-cert and --tls-key on an untrusted network"
                );
                None
            }
        };
        let (mut metrics, observer) = http::WitnessMetrics::new();
        let service = WitnessService::open_observed(&settings.data_dir, Some(observer))
            .map_err(|e| DaemonError::Failed(e.to_string()))?;
        metrics.watch(service.clone());
        info!(
            %grpc_addr,
            http = ?http_addr,
            file = %service.path().display(),
            clusters = service.stats().clusters,
            tls = tls.is_some(),
            "witness serving"
        );
        let stop = CancellationToken::new();
        let grpc = {
            let (service, stopped, tls) =
                (service.clone(), stop.clone().cancelled_owned(), tls.clone());
            tokio::spawn(async move {
                let served = match tls {
                    Some(tls) => serve_witness_tls(service, grpc_listener, &tls, stopped).await,
                    None => serve_witness(service, grpc_listener, stopped).await,
                };
                if let Err(e) = served {
                    warn!(error = %e, "the witness's gRPC server stopped");
                }
            })
        };
        let http = http_listener.map(|listener| {
            let limits =
                crate::http_server::HttpLimits::for_fd_limit(crate::http_server::raise_fd_limit());
            tokio::spawn(crate::http_server::serve(
                listener,
                http::router(service.clone(), metrics),
                limits,
                None,
                |_| {},
                stop.clone(),
            ))
        });
        // With TLS or without: a SIGHUP must never stop the witness.
        tokio::spawn(crate::node::reload_on_sighup(tls, None, stop.clone()));
        Ok(RunningWitness {
            grpc_addr,
            http_addr,
            service,
            stop,
            grpc,
            http,
        })
    }

    /// Stops serving; every answered swap is already in the file.
    pub async fn shutdown(self) {
        info!("witness shutting down");
        self.stop.cancel();
        let _ = self.grpc.await;
        if let Some(http) = self.http {
            let _ = http.await;
        }
        info!("witness stopped");
    }
}

/// Polls the witness's `/health` at `addr` every 10 ms until it answers
/// 200; an error if `limit` passes first or `gone` says why waiting is
/// pointless (the process exited).
pub async fn wait_healthy(
    addr: &str,
    limit: std::time::Duration,
    mut gone: impl FnMut() -> Option<String>,
) -> Result<http::WitnessHealth, DaemonError> {
    let deadline = std::time::Instant::now() + limit;
    let mut client =
        crate::client::HttpClient::new(addr).with_timeout(std::time::Duration::from_secs(2));
    loop {
        if let Some(why) = gone() {
            return Err(DaemonError::Failed(format!("witness {addr}: {why}")));
        }
        let last = match client
            .request(hyper::Method::GET, "/health", bytes::Bytes::new())
            .await
        {
            Ok(r) if r.status == 200 => {
                return serde_json::from_slice(&r.body).map_err(|e| {
                    DaemonError::Failed(format!("witness {addr}: /health is not its JSON: {e}"))
                });
            }
            Ok(r) => format!("{}: {}", r.status, String::from_utf8_lossy(&r.body)),
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() > deadline {
            return Err(DaemonError::Failed(format!(
                "witness {addr}: not healthy within {limit:?}; last: {last}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Runs a witness until `shutdown` resolves.
pub async fn run(
    settings: WitnessSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let witness = RunningWitness::start(settings).await?;
    shutdown.await;
    witness.shutdown().await;
    Ok(())
}
