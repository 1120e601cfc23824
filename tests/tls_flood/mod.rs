//! Connections that open and never finish their TLS handshake, from many
//! addresses (each under the per-source limit), cannot keep a node's peer
//! out: a new connection takes the place of the oldest handshake still
//! running, and the peer's handshake finishes in milliseconds.

use crate::common::*;
use crate::mem_engine;
use crate::three_nodes::issue;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use walrep::{NodeId, Replicator, RoleKind};

/// Keeps 4 silent connections to `target` open from each of `sources`
/// loopback addresses (the per-source limit), opening a new one whenever
/// one is closed, until `stop`. `open` counts those open.
fn silent_flood(
    target: SocketAddr,
    sources: std::ops::Range<u8>,
    stop: Arc<AtomicBool>,
    open: Arc<std::sync::atomic::AtomicUsize>,
) {
    for last in sources {
        let (stop, open) = (stop.clone(), open.clone());
        tokio::spawn(async move {
            let from = SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0));
            let mut held: Vec<tokio::net::TcpStream> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                // Drop the ones the node closed, open as many again.
                let before = held.len();
                held.retain(|s| s.peer_addr().is_ok() && s.try_read(&mut [0u8; 1]).is_err());
                open.fetch_sub(before - held.len(), Ordering::SeqCst);
                while held.len() < 4 {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(from).unwrap();
                    match socket.connect(target).await {
                        Ok(s) => {
                            held.push(s);
                            open.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(_) => break,
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_their_handshake_do_not_keep_the_peer_out() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), &["a", "b"]);
    let addrs: Vec<SocketAddr> = (0..2)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        })
        .collect();
    let names = ["a", "b"];
    let start = |i: usize| {
        let (me, peer) = (NodeId::from(names[i]), NodeId::from(names[1 - i]));
        let cfg = walrep::Config {
            initial_role: match i {
                0 => walrep::InitialRole::Primary,
                _ => walrep::InitialRole::Standby,
            },
            ..walrep::testing::test_config(&me, &peer, addrs[i], addrs[1 - i])
        };
        let tls = walrep::Tls::load(
            walrep::TlsFiles {
                ca: dir.path().join("ca.pem"),
                cert: dir.path().join(format!("{}.pem", names[i])),
                key: dir.path().join(format!("{}.key", names[i])),
            },
            &cfg,
        )
        .unwrap();
        let addr = addrs[i];
        async move {
            walrep::Replica::builder(
                cfg,
                Arc::new(walrep::testing::MemWal::new()),
                mem_engine(&me),
            )
            .tls(tls)
            .serve_on(walrep::testing::rebind(&addr.to_string()).await.unwrap())
            .start()
            .unwrap()
        }
    };
    // The standby's port is flooded before the primary ever connects: 64
    // addresses holding 4 silent connections each, the 256 handshakes a
    // node runs at once.
    let b = start(1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    silent_flood(addrs[1], 2..66, stop.clone(), open.clone());
    tokio::time::timeout(WAIT, async {
        while open.load(Ordering::SeqCst) < 256 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the flood never held 256 connections");
    let a = start(0).await;
    let mut health = a.subscribe();
    let streamed = tokio::time::timeout(
        WAIT,
        health.wait_for(|h| h.role == RoleKind::Primary && h.peer.connected),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    streamed
        .expect("the primary never reached its standby through the flood")
        .unwrap();
    // Let in at its first attempt, not once a silent connection timed out.
    assert_eq!(a.metrics().heartbeat_errors, 0, "the peer was kept out");
    assert!(
        b.metrics()
            .rejected
            .get("unauthenticated")
            .copied()
            .unwrap_or(0)
            > 0,
        "the flood was not refused: {:?}",
        b.metrics().rejected
    );
    a.shutdown().await;
    b.shutdown().await;
}
