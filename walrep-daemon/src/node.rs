//! Running one node: bind both listeners (so a port in use fails before
//! anything is written), open the data dir, start the replica (which
//! serves replication on its listener), serve the HTTP API, persist the
//! engine's state, shut down cleanly.
//!
//! ```text
//! DIR/wal/       FileWal (meta + segments)
//! DIR/kv/        KvStore snapshot (kv.snapshot), with --engine kv
//! DIR/sqlite/    SQLite database (store.db and its -wal), with --engine sqlite
//! DIR/rewound/   records dropped by a rewind, for the operator
//! DIR/snapshots/ snapshots built for (primary) or received from (standby)
//!                the peer during a resync; builds are removed at start, a
//!                partly received one resumes
//! DIR/failover-paused  present while automatic failover is paused
//!                (maintenance mode), so a restart keeps it paused
//! ```

use super::config::NodeSettings;
use super::error::DaemonError;
use super::http::{AppState, router};
use super::identity;
use super::metrics::{DaemonMetrics, NodeInfo};
use crate::engine::Engine;
use crate::signals::StopSignals;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use walrep::Replica;
use walrep::{FileWal, FileWalOptions};
use walrep::{Health, Replicator};

/// How long shutdown waits for the servers to drain before it drops them.
const DRAIN: Duration = Duration::from_secs(3);

/// A node serving replication and its HTTP API.
pub struct RunningNode {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub replica: Arc<Replica>,
    pub engine: Engine,
    stop_http: CancellationToken,
    stop_rest: CancellationToken,
    http: JoinHandle<()>,
    snapshots: JoinHandle<()>,
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).await.map_err(|e| {
        DaemonError::Config(format!(
            "cannot listen for {what} on {addr}: {e} (setting {})",
            if what == "HTTP" { "http" } else { "listen" }
        ))
    })
}

impl RunningNode {
    pub async fn start(settings: NodeSettings) -> Result<RunningNode, DaemonError> {
        let grpc_listener = bind(settings.listen, "replication").await?;
        let http_listener = bind(settings.http, "HTTP").await?;
        let grpc_addr = grpc_listener
            .local_addr()
            .map_err(|e| DaemonError::io("reading the replication address", e))?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|e| DaemonError::io("reading the HTTP address", e))?;
        let mut cfg = settings.cfg.clone();
        if settings.advertise_from_listen {
            cfg.advertise_addr = grpc_addr.to_string();
        }
        if settings.advertise_http_from_http {
            cfg.advertise_client_addr = Some(http_addr.to_string());
        }

        identity::refuse_self_peer(&cfg.peer_addr, grpc_addr).await?;
        for more in &cfg.more_peers {
            identity::refuse_self_peer(&more.addr, grpc_addr).await?;
        }
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| DaemonError::io(format!("creating data dir {}", dir.display()), e))?;
        identity::check_or_write(
            dir,
            &identity::Identity {
                cluster_id: cfg.cluster_id.clone(),
                node_id: cfg.node_id.0.clone(),
            },
        )?;
        let wal = FileWal::open(
            dir.join("wal"),
            FileWalOptions {
                max_record_bytes: cfg.max_record_bytes,
                ..FileWalOptions::default()
            },
        )
        .map_err(|e| DaemonError::Failed(format!("opening the WAL in {}: {e}", dir.display())))?;
        let engine = Engine::open(settings.engine, dir).map_err(|e| {
            DaemonError::Failed(format!(
                "opening the {} engine in {}: {}",
                settings.engine,
                dir.display(),
                e.chain()
            ))
        })?;
        info!(
            node = %cfg.node_id,
            peer = %cfg.peer_id,
            peer_addr = %cfg.peer_addr,
            more_peers = cfg.more_peers.len(),
            commit_rule = %cfg.commit_rule(),
            %grpc_addr,
            %http_addr,
            data_dir = %dir.display(),
            commit_mode = %cfg.commit_mode,
            engine = %engine.kind(),
            applied_lsn = %engine.state_machine().applied_lsn(),
            "starting node"
        );
        let tls = match &settings.tls {
            Some(files) => Some(walrep::Tls::load(files.clone(), &cfg).map_err(|e| {
                DaemonError::Config(format!("mutual TLS (tls_ca, tls_cert, tls_key): {e}"))
            })?),
            None => {
                warn!(
                    "replication runs without TLS: anyone who can reach {grpc_addr} can act as the peer; give --tls-ca, --tls-cert and --tls-key on an untrusted network"
                );
                None
            }
        };
        cfg.arbiter = match &settings.arbiter {
            Some(url) => Some(arbiter_of(url, &cfg, tls.as_ref())?),
            None => None,
        };
        // Read before anything starts, so a bad file stops nothing running.
        let http_tls = match &settings.http_tls {
            Some(files) => Some(super::https::HttpTls::load(files.clone())?),
            None => None,
        };
        let token = match &settings.http_token_file {
            Some(path) => Some(super::auth::HttpToken::from_file(path)?),
            None => None,
        };
        if settings.http_write_budget_bytes < settings.cfg.max_record_bytes {
            // A PUT without Content-Length (chunked) holds the record limit
            // of the budget while its body arrives.
            warn!(
                budget = settings.http_write_budget_bytes,
                max_record_bytes = settings.cfg.max_record_bytes,
                "http_write_budget_bytes is below max_record_bytes: every PUT that does not announce its size (chunked) is refused; raise the budget, or lower max_record_bytes on every node"
            );
        }
        if settings.cfg.rpc_timeout + settings.cfg.heartbeat_interval
            >= settings.cfg.failover_timeout
        {
            // Heartbeats go one at a time: one call stuck for its whole
            // deadline silences the primary for that long.
            warn!(
                rpc_timeout_ms = settings.cfg.rpc_timeout.as_millis() as u64,
                heartbeat_ms = settings.cfg.heartbeat_interval.as_millis() as u64,
                failover_timeout_ms = settings.cfg.failover_timeout.as_millis() as u64,
                "rpc_timeout plus heartbeat_ms is not below failover_timeout: one heartbeat stuck on a lost packet can make the standby fail over; lower rpc_timeout_ms"
            );
        }
        if settings.arbiter.is_some()
            && settings.cfg.cluster_id == walrep::Config::DEFAULT_CLUSTER_ID
        {
            warn!(
                "an arbiter with the default cluster_id {:?}: the arbiter keys its register by cluster_id, so two clusters left at the default share one register and depose each other's primaries; give every other cluster on this arbiter its own --cluster-id (a running pair's data directories record theirs, so the id of an existing pair cannot change without emptying them)",
                walrep::Config::DEFAULT_CLUSTER_ID
            );
        }
        if token.is_none() && !http_addr.ip().is_loopback() {
            warn!(
                "the HTTP API on {http_addr} takes writes, deletes, promotions and maintenance from anyone who can reach it: give --http-token-file (and HTTPS), or listen on a loopback address"
            );
        }
        if token.is_some() && http_tls.is_none() {
            warn!(
                "the HTTP token travels in clear text over plain HTTP: give --http-tls-cert and --http-tls-key, or keep {http_addr} on a network nobody else can read"
            );
        }
        // The replica serves replication on the listener bound above (over
        // mutual TLS when configured) and stops that server in its own
        // shutdown.
        let mut builder = Replica::builder(cfg.clone(), Arc::new(wal), engine.state_machine())
            .rewound_dir(dir.join("rewound"))
            .snapshot_dir(dir.join("snapshots"))
            .serve_on(grpc_listener);
        if let Some(tls) = &tls {
            builder = builder.tls(tls.clone());
        }
        let replica = builder.start()?;
        let replica = Arc::new(replica);
        let pause_file = crate::maintenance::PauseFile::in_dir(dir);
        if pause_file.is_set() {
            replica.set_failover_paused(true).await?;
            warn!(
                file = %pause_file.path().display(),
                "automatic failover is paused (maintenance mode, kept from before the restart): resume it with `walrep maintenance resume`"
            );
        }

        let stop_http = CancellationToken::new();
        let stop_rest = CancellationToken::new();
        let state = Arc::new(
            AppState::new(
                replica.clone(),
                engine.clone(),
                DaemonMetrics::new(replica.clone(), NodeInfo::of(&cfg)),
                cfg.max_record_bytes,
                settings.http_write_budget_bytes,
                token,
                settings.http_request_timeout,
            )
            .with_pause_file(pause_file)
            .with_refusal_hold(settings.http_refusal_hold)
            .with_deduplication(cfg.max_request_ids > 0),
        );
        let http = {
            let stop = stop_http.clone();
            let counted = state.clone();
            let app = router(state);
            let fd_limit = super::http_server::raise_fd_limit();
            let defaults = super::http_server::HttpLimits::for_fd_limit(fd_limit);
            let limits = super::http_server::HttpLimits {
                max_connections: match settings.http_max_connections {
                    // Half the descriptors stay for the WAL, snapshots and
                    // replication, whatever was asked.
                    Some(n) if n as u64 > fd_limit / 2 => {
                        warn!(
                            asked = n,
                            fd_limit,
                            "http_max_connections is above half the open-file limit; using half"
                        );
                        (fd_limit / 2).max(1) as usize
                    }
                    Some(n) => n,
                    None => defaults.max_connections,
                },
                header_timeout: settings.http_idle_timeout,
                request_timeout: settings.http_request_timeout,
            };
            info!(
                fd_limit,
                max_connections = limits.max_connections,
                https = http_tls.is_some(),
                "HTTP limits"
            );
            tokio::spawn(super::http_server::serve(
                http_listener,
                app,
                limits,
                http_tls.clone(),
                move |reason| counted.metrics.http_rejected(reason),
                stop,
            ))
        };
        // With TLS or without: a SIGHUP must never stop the node.
        tokio::spawn(reload_on_sighup(tls, http_tls, stop_rest.clone()));
        let snapshots = tokio::spawn(snapshot_loop(
            engine.clone(),
            replica.subscribe(),
            settings.snapshot_records,
            settings.snapshot_interval,
            stop_rest.clone(),
        ));
        Ok(RunningNode {
            grpc_addr,
            http_addr,
            replica,
            engine,
            stop_http,
            stop_rest,
            http,
            snapshots,
        })
    }

    /// Stops taking requests, stops the replica (a primary hands over
    /// first; pending writes fail; then its replication server stops) and
    /// persists a last snapshot.
    pub async fn shutdown(self) {
        info!("shutting down");
        self.stop_http.cancel();
        drain(self.http, "HTTP server").await;
        self.replica.shutdown().await;
        self.stop_rest.cancel();
        let _ = self.snapshots.await;
        persist(&self.engine).await;
        info!("stopped");
    }
}

async fn drain(mut task: JoinHandle<()>, what: &str) {
    if tokio::time::timeout(DRAIN, &mut task).await.is_err() {
        warn!("{what} did not drain within {DRAIN:?}; closing its connections");
        task.abort();
        let _ = task.await;
    }
}

/// Runs a node until the first stop signal (one that came while it
/// started included), then stops it cleanly: a primary hands over first.
/// A second signal during that stop ends the process at once, as a crash
/// would (what the WAL made durable is safe; a handover under way is
/// left to the failover).
pub async fn run(settings: NodeSettings, mut signals: StopSignals) -> Result<(), DaemonError> {
    // One watcher for both signals, whatever the node is doing when they
    // come: the first asks for the clean stop (kept until the node has
    // started), the second ends the process.
    let (stop_asked, asked) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(async move {
        let name = signals.next().await;
        info!("{name} received; stopping once started (again to stop at once)");
        let _ = stop_asked.send(());
        let name = signals.next().await;
        warn!("{name} received again: stopping at once, without finishing the clean stop");
        std::process::exit(1);
    });
    let node = RunningNode::start(settings).await?;
    let _ = asked.await;
    node.shutdown().await;
    watcher.abort();
    Ok(())
}

/// Rereads the TLS files (replication's and the HTTP API's, if any) on every
/// SIGHUP (certificate rotation without a restart): new connections use
/// them, open ones go on. A bad set is logged and the loaded one kept.
pub(crate) async fn reload_on_sighup(
    tls: Option<walrep::Tls>,
    http_tls: Option<super::https::HttpTls>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGHUP; TLS files are read only at start");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        if tls.is_none() && http_tls.is_none() {
            info!(
                "SIGHUP received: no TLS files to reread (every other setting is read only at start)"
            );
        }
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(()) => info!(cert = %tls.files().cert.display(), "SIGHUP: TLS files reloaded"),
                Err(e) => {
                    warn!(error = %e, "SIGHUP: TLS files not reloaded; the ones loaded before stay in use")
                }
            }
        }
        if let Some(http_tls) = &http_tls {
            match http_tls.reload() {
                Ok(()) => {
                    info!(cert = %http_tls.files().cert.display(), "SIGHUP: HTTPS certificate reloaded")
                }
                Err(e) => {
                    warn!(error = %e, "SIGHUP: HTTPS certificate not reloaded; the one loaded before stays in use")
                }
            }
        }
    }
}

async fn persist(engine: &Engine) {
    let engine = engine.clone();
    match tokio::task::spawn_blocking(move || engine.persist()).await {
        Ok(Ok(lsn)) => tracing::debug!(%lsn, "engine state persisted"),
        Ok(Err(e)) => warn!(error = %e.chain(), "persisting the engine's state failed"),
        Err(e) => warn!(error = %e, "the snapshot task panicked"),
    }
}

/// Persists the engine's state (a KV snapshot, an SQLite checkpoint) every
/// `every` applied records (a KV engine: or as many as the store has keys,
/// if more), or every `interval` when anything new was applied, so a
/// restart replays only the WAL after it (and the WAL before it may be
/// removed). A KV snapshot writes the whole store (from a frozen copy:
/// applies go on meanwhile), so it is scaled to the store's size to keep
/// its disk and CPU cost per applied record bounded.
async fn snapshot_loop(
    engine: Engine,
    mut health: watch::Receiver<Health>,
    every: u64,
    interval: Duration,
    stop: CancellationToken,
) {
    let sm = engine.state_machine();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let due = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => sm.applied_lsn() > sm.durable_lsn(),
            changed = health.changed() => {
                if changed.is_err() {
                    return;
                }
                sm.applied_lsn().0 >= sm.durable_lsn().0 + engine.persist_every(every)
            }
        };
        if due {
            persist(&engine).await;
        }
    }
}

/// The arbiter a node's `--arbiter` names, dialled lazily (one that is down
/// now delays nothing): each call is bounded by the node's `rpc_timeout`.
/// A witness is dialled over mutual TLS with the node's own certificate
/// when the node has one (the witness must present its `walrep certs
/// --witness` certificate); etcd in clear text.
fn arbiter_of(
    url: &walrep::arbiter::ArbiterUrl,
    cfg: &walrep::Config,
    tls: Option<&walrep::Tls>,
) -> Result<Arc<dyn walrep::arbiter::Arbiter>, DaemonError> {
    use walrep::arbiter::{ArbiterUrl, EtcdArbiter, WitnessClient};
    let encrypted = tls.is_some() && matches!(url, ArbiterUrl::Witness(_));
    info!(arbiter = %url, tls = encrypted, "failovers and solo steps go through the arbiter");
    if tls.is_some() && !encrypted {
        // The node's certificate secures its peers and the witness, not
        // etcd: say so rather than let `tls` suggest the register is too.
        warn!(
            arbiter = %url,
            "this node has TLS, but walrep speaks to etcd in clear text and without authentication: keep etcd on a network only the nodes reach (docs/ARBITER-ETCD.md)"
        );
    }
    let addr = url.to_string();
    match url {
        ArbiterUrl::Etcd(target) => Ok(Arc::new(EtcdArbiter::connect_lazy(
            target.clone(),
            cfg.rpc_timeout,
        ))),
        ArbiterUrl::Witness(_) => {
            let client = match tls {
                Some(tls) => WitnessClient::connect_lazy_tls(&addr, cfg, tls),
                None => WitnessClient::connect_lazy(&addr, cfg),
            };
            let client = client.map_err(|e| DaemonError::Config(format!("arbiter {url}: {e}")))?;
            Ok(Arc::new(client))
        }
    }
}
