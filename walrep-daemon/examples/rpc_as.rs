//! One replication RPC to a node, claiming any node id, with any TLS
//! identity: what `scripts/attacks.sh` replays against a running pair. Not
//! part of the product (an example, built with the test helpers of
//! `walrep::testing`).
//!
//! ```text
//! cargo run -p walrep-daemon --example rpc_as -- --to 127.0.0.1:7002 --to-id n2 --as n1 \
//!     --identity cert:tls/n3.pem:tls/n3.key --trust tls/ca.pem fence --epoch 4611686018427387904
//! ```
//!
//! `--identity`: `plain` (no TLS at all), `none` (TLS, no client
//! certificate) or `cert:CERT:KEY`. It prints one line per call, `RPC ->
//! refused: ERROR` or `RPC -> ACCEPTED: ANSWER`, and exits 0 if every call
//! was refused, 1 if any was accepted, 2 on a usage error.

use clap::{Parser, Subcommand};
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use walrep::testing::{
    FenceReason, FenceRequest, Header, HeartbeatRequest, Peer, PromoteRequest, SnapshotPart,
    SnapshotRequest, WalBatch, peer_with_identity,
};
use walrep::{Config, Epoch, GrpcPeer, Lsn, NodeId, Record, SyncState};

#[derive(Parser)]
struct Args {
    /// The node's replication address.
    #[arg(long)]
    to: String,
    /// Its node id (the name its certificate must carry).
    #[arg(long)]
    to_id: String,
    /// The node id the requests claim.
    #[arg(long = "as")]
    claims: String,
    #[arg(long, default_value = "walrep")]
    cluster_id: String,
    /// plain, none or cert:CERT:KEY.
    #[arg(long, default_value = "plain")]
    identity: String,
    /// CA file the client trusts for the server (needed unless plain).
    #[arg(long)]
    trust: Option<PathBuf>,
    #[command(subcommand)]
    rpc: Rpc,
}

#[derive(Subcommand)]
enum Rpc {
    /// A WAL stream with one forged record at LSN, epoch EPOCH (CRC computed).
    StreamWal {
        #[arg(long)]
        lsn: u64,
        #[arg(long)]
        epoch: u64,
    },
    /// A fence at EPOCH.
    Fence {
        #[arg(long)]
        epoch: u64,
    },
    /// A heartbeat at EPOCH saying the standby is not in sync.
    Heartbeat {
        #[arg(long)]
        epoch: u64,
        #[arg(long, default_value_t = 0)]
        lsn: u64,
    },
    /// A forced promotion at EPOCH.
    Promote {
        #[arg(long)]
        epoch: u64,
    },
    /// COUNT snapshot requests at once, each held open without reading for
    /// STALL seconds.
    FetchSnapshot {
        #[arg(long)]
        epoch: u64,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 0.0)]
        stall: f64,
    },
}

fn header(a: &Args, epoch: u64) -> Header {
    Header {
        cluster_id: a.cluster_id.clone(),
        epoch: Epoch(epoch),
        node_id: NodeId::from(a.claims.as_str()),
        ..Header::default()
    }
}

fn peer(a: &Args) -> Result<Arc<dyn Peer>, String> {
    let cfg = Config {
        node_id: NodeId::from(a.claims.as_str()),
        peer_id: NodeId::from(a.to_id.as_str()),
        peer_addr: a.to.clone(),
        cluster_id: a.cluster_id.clone(),
        rpc_timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let trust = || {
        a.trust
            .clone()
            .ok_or_else(|| "--identity other than plain needs --trust CA".to_string())
    };
    let peer = match a.identity.as_str() {
        "plain" => GrpcPeer::connect_lazy(&cfg).map_err(|e| e.to_string())?,
        "none" => peer_with_identity(&cfg, &trust()?, None).map_err(|e| e.to_string())?,
        other => {
            let parts: Vec<&str> = other.splitn(3, ':').collect();
            let ["cert", cert, key] = parts[..] else {
                return Err(format!("--identity {other}: plain, none or cert:CERT:KEY"));
            };
            peer_with_identity(&cfg, &trust()?, Some((cert.as_ref(), key.as_ref())))
                .map_err(|e| e.to_string())?
        }
    };
    Ok(Arc::new(peer))
}

/// One call: `Ok(answer)` if the node took it, `Err(why)` if refused.
async fn call(a: &Args, peer: &Arc<dyn Peer>) -> Vec<Result<String, String>> {
    let e = |e: walrep::TransportError| e.to_string();
    match &a.rpc {
        Rpc::Fence { epoch } => vec![
            peer.fence(FenceRequest {
                header: header(a, *epoch),
                reason: FenceReason::Forced,
                candidate_end: None,
            })
            .await
            .map(|r| format!("{r:?}"))
            .map_err(e),
        ],
        Rpc::Heartbeat { epoch, lsn } => vec![
            peer.heartbeat(HeartbeatRequest {
                header: header(a, *epoch),
                last_lsn: Lsn(*lsn),
                commit_lsn: Lsn(*lsn),
                sync: SyncState::NotSync,
                confirmed: true,
                commit_rule: String::new(),
            })
            .await
            .map(|r| format!("{r:?}"))
            .map_err(e),
        ],
        Rpc::Promote { epoch } => vec![
            peer.promote(PromoteRequest {
                header: header(a, *epoch),
                force: true,
            })
            .await
            .map(|r| format!("{r:?}"))
            .map_err(e),
        ],
        Rpc::StreamWal { lsn, epoch } => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let forged = Record {
                lsn: Lsn(*lsn),
                epoch: Epoch(*epoch),
                payload: bytes::Bytes::from_static(b"\x01forged"),
                request_id: None,
            };
            let _ = tx
                .send(WalBatch {
                    header: header(a, *epoch),
                    prev_lsn: Lsn(lsn - 1),
                    prev_epoch: Epoch(*epoch),
                    records: vec![forged],
                    commit_lsn: Lsn(*lsn),
                    sync: SyncState::NotSync,
                    last_lsn: Lsn(*lsn),
                    first_lsn: Lsn(1),
                    unconfirmed: false,
                })
                .await;
            let result = match peer.open_wal_stream(rx).await {
                Err(err) => Err(e(err)),
                Ok(mut acks) => match acks.next().await {
                    Some(Ok(ack)) => Ok(format!("{ack:?}")),
                    Some(Err(err)) => Err(e(err)),
                    None => Err("the stream ended unanswered".into()),
                },
            };
            drop(tx);
            vec![result]
        }
        Rpc::FetchSnapshot {
            epoch,
            count,
            stall,
        } => {
            let stall = Duration::from_secs_f64(*stall);
            let calls = (0..*count).map(|_| {
                let peer = peer.clone();
                let req = SnapshotRequest {
                    header: header(a, *epoch),
                    snapshot_id: 0,
                    offset: 0,
                    crc_after_data: true,
                };
                async move {
                    let mut parts = peer.fetch_snapshot(req).await.map_err(e)?;
                    // The first message that is not a keep-alive says
                    // whether the node serves it.
                    let first = loop {
                        match tokio::time::timeout(Duration::from_secs(5), parts.next()).await {
                            Err(_) => break "no snapshot message within 5 s".to_string(),
                            Ok(None) => return Err("the stream ended unanswered".to_string()),
                            Ok(Some(Err(err))) => return Err(e(err)),
                            Ok(Some(Ok(SnapshotPart::Info(info)))) => {
                                break format!("{info:?}");
                            }
                            Ok(Some(Ok(_))) => continue,
                        }
                    };
                    // Hold it open without reading.
                    tokio::time::sleep(stall).await;
                    drop(parts);
                    Ok(format!("served and held {stall:?}: {first}"))
                }
            });
            futures::future::join_all(calls).await
        }
    }
}

fn name(rpc: &Rpc) -> &'static str {
    match rpc {
        Rpc::StreamWal { .. } => "StreamWal",
        Rpc::Fence { .. } => "Fence",
        Rpc::Heartbeat { .. } => "Heartbeat",
        Rpc::Promote { .. } => "Promote",
        Rpc::FetchSnapshot { .. } => "FetchSnapshot",
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let peer = match peer(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("rpc_as: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut accepted = false;
    for result in call(&a, &peer).await {
        match result {
            Ok(answer) => {
                accepted = true;
                println!("{} -> ACCEPTED: {answer}", name(&a.rpc));
            }
            Err(why) => println!("{} -> refused: {why}", name(&a.rpc)),
        }
    }
    std::process::ExitCode::from(accepted as u8)
}
