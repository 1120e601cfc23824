//! The built-in witness over real tonic on 127.0.0.1: racing swaps, a
//! witness rebuilt from the nodes after losing its file, an unreachable
//! witness, and mutual TLS.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walrep::arbiter::witness::serve_witness;
use walrep::arbiter::{
    Arbiter, ArbiterError, Caller, CasOutcome, Register, SwapRefusal, WitnessClient, WitnessService,
};
use walrep::{Config, Epoch, NodeId};

/// A witness serving `dir` on a loopback port until stopped.
struct Served {
    addr: SocketAddr,
    service: WitnessService,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Served {
    async fn start(dir: &Path, tls: Option<walrep::Tls>) -> Served {
        let service = WitnessService::open(dir).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone().cancelled_owned();
        let served = service.clone();
        let task = tokio::spawn(async move {
            match tls {
                Some(tls) => {
                    walrep::arbiter::witness::serve_witness_tls(served, listener, &tls, stopped)
                        .await
                        .unwrap()
                }
                None => serve_witness(served, listener, stopped).await.unwrap(),
            }
        });
        Served {
            addr,
            service,
            stop,
            task,
        }
    }

    /// Stops serving and releases the data directory.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
        drop(self.service);
    }
}

fn cfg(node: &str) -> Config {
    Config {
        node_id: NodeId::from(node),
        peer_id: NodeId::from(if node == "n1" { "n2" } else { "n1" }),
        rpc_timeout: Duration::from_millis(500),
        ..Config::default()
    }
}

fn client(addr: SocketAddr, node: &str) -> WitnessClient {
    WitnessClient::connect_lazy(&addr.to_string(), &cfg(node)).unwrap()
}

fn caller(node: &str, epoch: u64) -> Caller {
    Caller::new(node, Epoch(epoch))
}

fn pair(epoch: u64, primary: &str) -> Register {
    Register::fresh(Epoch(epoch), &primary.into(), &["n1".into(), "n2".into()])
}

/// Both nodes report, then n1 creates the register at epoch 1.
async fn bootstrap(n1: &WitnessClient, n2: &WitnessClient, cluster: &str) -> Register {
    n2.read(cluster, &caller("n2", 0)).await.unwrap();
    match n1
        .compare_and_swap(cluster, &caller("n1", 0), 0, &pair(1, "n1"))
        .await
        .unwrap()
    {
        CasOutcome::Swapped(r) => r,
        other => panic!("bootstrap: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_racing_a_swap_on_the_same_version_exactly_one_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let w = Served::start(dir.path(), None).await;
    let (n1, n2) = (client(w.addr, "n1"), client(w.addr, "n2"));
    assert_eq!(n1.describe(), format!("witness://{}", w.addr));
    let mut current = bootstrap(&n1, &n2, "c").await;
    for round in 0..20 {
        // n2 promotes itself, n1 takes n2 out of its sync set: both from
        // the same version.
        let version = current.version;
        let mut promote = current.clone();
        promote.epoch = current.epoch.next();
        promote.primary = Some("n2".into());
        promote.sync_set.clear();
        let mut solo = current.clone();
        solo.sync_set.remove(&NodeId::from("n2"));
        let (as_n1, as_n2) = (caller("n1", current.epoch.0), caller("n2", current.epoch.0));
        let (a, b) = tokio::join!(
            n2.compare_and_swap("c", &as_n2, version, &promote),
            n1.compare_and_swap("c", &as_n1, version, &solo),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let (winner, loser) = match (&a, &b) {
            (CasOutcome::Swapped(w), CasOutcome::Conflict(l))
            | (CasOutcome::Conflict(l), CasOutcome::Swapped(w)) => (w.clone(), l.clone()),
            _ => panic!("round {round}: not exactly one swap: {a:?} / {b:?}"),
        };
        assert_eq!(winner.version, version + 1, "round {round}");
        assert_eq!(loser, winner, "the loser sees what the winner wrote");
        current = winner;
        // Put n2 back in the sync set for the next round.
        let mut back = current.clone();
        back.sync_set.insert("n2".into());
        back.primary = Some("n1".into());
        if let CasOutcome::Swapped(r) = n1
            .compare_and_swap("c", &caller("n1", current.epoch.0), current.version, &back)
            .await
            .unwrap()
        {
            current = r;
        }
    }
    let stats = w.service.stats();
    assert_eq!(stats.conflicts, 20, "{stats:?}");
    assert_eq!(stats.swaps, 1 + 20 + 20, "{stats:?}");
    // What was answered is what a restarted witness finds.
    w.stop().await;
    let w = Served::start(dir.path(), None).await;
    let read = client(w.addr, "n1")
        .read("c", &caller("n1", 0))
        .await
        .unwrap();
    assert_eq!(read, current);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_restarted_from_nothing_rebuilds_once_both_members_reported_never_below_the_higher_epoch()
 {
    let dir = tempfile::tempdir().unwrap();
    let w = Served::start(dir.path(), None).await;
    let (n1, n2) = (client(w.addr, "n1"), client(w.addr, "n2"));
    let v1 = bootstrap(&n1, &n2, "c").await;
    // n2 promoted (epoch 6 after a few failovers): the register says so.
    let CasOutcome::Swapped(_) = n2
        .compare_and_swap("c", &caller("n2", 6), v1.version, &pair(6, "n2"))
        .await
        .unwrap()
    else {
        panic!("promotion failed")
    };
    w.stop().await;

    // The witness's disk is lost: a new one starts on an empty directory.
    let empty = tempfile::tempdir().unwrap();
    let w = Served::start(empty.path(), None).await;
    let (n1, n2) = (client(w.addr, "n1"), client(w.addr, "n2"));
    // The stale n1 (epoch 5) asks first: refused until n2 has reported.
    let err = n1
        .compare_and_swap("c", &caller("n1", 5), 0, &pair(5, "n1"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ArbiterError::Refused(SwapRefusal::MembersNotHeard {
            missing: vec!["n2".into()]
        })
    );
    assert_eq!(n2.read("c", &caller("n2", 6)).await.unwrap().version, 0);
    // Both reported: still never below epoch 6.
    let err = n1
        .compare_and_swap("c", &caller("n1", 5), 0, &pair(5, "n1"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ArbiterError::Refused(SwapRefusal::EpochBelowReported {
            proposed: Epoch(5),
            reported: Epoch(6),
            by: "n2".into()
        })
    );
    // n2 had seen the old register at the version of its promotion: the
    // rebuilt one lands above it, and the client takes that as the swap
    // it asked for (a create), not as a malformed answer.
    let seen = Caller {
        seen_version: v1.version + 1,
        ..caller("n2", 6)
    };
    let rebuilt = n2
        .compare_and_swap("c", &seen, 0, &pair(6, "n2"))
        .await
        .unwrap();
    assert!(
        matches!(&rebuilt, CasOutcome::Swapped(r) if r.epoch == Epoch(6) && r.primary == Some("n2".into()) && r.version > seen.seen_version),
        "{rebuilt:?}"
    );
    let stats = w.service.stats();
    assert_eq!(
        stats.refused.get("members_not_heard"),
        Some(&1),
        "{stats:?}"
    );
    assert_eq!(
        stats.refused.get("epoch_below_reported"),
        Some(&1),
        "{stats:?}"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_an_unreachable_witness_gets_unreachable_within_its_deadline() {
    let deadline = cfg("n1").rpc_timeout;
    // Nothing listens: the connection is refused.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    // Something accepts TCP and never answers (a hung or cut-off witness).
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    for addr in [closed, silent_addr] {
        let c = client(addr, "n1");
        let started = Instant::now();
        let err = c.read("c", &caller("n1", 1)).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(err, ArbiterError::Unreachable(_)),
            "{addr}: {err:?}"
        );
        assert!(
            took < deadline + Duration::from_millis(500),
            "{addr}: took {took:?}"
        );
        let err = c
            .compare_and_swap("c", &caller("n1", 1), 0, &pair(1, "n1"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ArbiterError::Unreachable(_)),
            "{addr}: {err:?}"
        );
    }
}

mod tls {
    use super::*;
    use walrep::testing::witness_with_identity;
    use walrep::{Tls, TlsFiles};
    use walrep_daemon::certs::write_set;

    fn files(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }

    /// A node's config with a deadline a busy machine always meets for a
    /// fresh connection, a TLS handshake and the witness's fsyncs: these
    /// tests are about who gets in, not about deadlines (the unreachable
    /// witness's tests are).
    fn tls_cfg(node: &str) -> Config {
        Config {
            rpc_timeout: Duration::from_secs(10),
            ..cfg(node)
        }
    }

    /// Whether the witness counts more than `before` unauthenticated
    /// callers within a deadline: it counts a refused handshake after
    /// the client already saw the alert.
    async fn counts_unauthenticated_above(w: &Served, before: u64) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while w.service.stats().unauthenticated <= before {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    fn node_client(addr: SocketAddr, certs: &Path, node: &str) -> WitnessClient {
        let cfg = tls_cfg(node);
        let tls = Tls::load(files(certs, node), &cfg).unwrap();
        WitnessClient::connect_lazy_tls(&addr.to_string(), &cfg, &tls).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_nodes_of_the_ca_get_in_and_each_only_as_itself() {
        let certs = tempfile::tempdir().unwrap();
        write_set(certs.path(), &["n1".into(), "n2".into()], true, &[]).unwrap();
        let stranger = tempfile::tempdir().unwrap();
        write_set(stranger.path(), &["n1".into(), "n2".into()], true, &[]).unwrap();
        let data = tempfile::tempdir().unwrap();
        let tls = Tls::load_witness(files(certs.path(), "witness")).unwrap();
        let w = Served::start(data.path(), Some(tls)).await;
        let (n1, n2) = (
            node_client(w.addr, certs.path(), "n1"),
            node_client(w.addr, certs.path(), "n2"),
        );
        // The nodes of the CA, each as itself: served.
        let created = bootstrap(&n1, &n2, "c").await;
        assert_eq!(created.version, 1);

        // n1's certificate asking as n2: refused, counted, nothing changed.
        let err = n1
            .compare_and_swap("c", &caller("n2", 1), 1, &pair(2, "n2"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ArbiterError::Invalid(m) if m.contains("PermissionDenied") && m.contains("n2")),
            "{err:?}"
        );
        assert!(n1.read("c", &caller("n2", 1)).await.is_err());
        assert_eq!(w.service.stats().unauthenticated, 2);

        // A certificate of another CA, and no certificate at all: no
        // connection, counted at the handshake.
        let cfg1 = tls_cfg("n1");
        let addr = w.addr.to_string();
        let other_ca = witness_with_identity(
            &addr,
            &cfg1,
            &certs.path().join("ca.pem"),
            Some((
                &stranger.path().join("n1.pem"),
                &stranger.path().join("n1.key"),
            )),
        )
        .unwrap();
        let anonymous =
            witness_with_identity(&addr, &cfg1, &certs.path().join("ca.pem"), None).unwrap();
        for (who, c) in [("another CA", other_ca), ("no certificate", anonymous)] {
            let before = w.service.stats().unauthenticated;
            let err = c
                .compare_and_swap("c", &caller("n1", 1), 1, &pair(2, "n1"))
                .await
                .unwrap_err();
            assert!(
                matches!(err, ArbiterError::Unreachable(_)),
                "{who}: {err:?}"
            );
            assert!(counts_unauthenticated_above(&w, before).await, "{who}");
        }
        // A node that trusts another CA does not talk to this witness.
        let stranger_node = node_client(w.addr, stranger.path(), "n1");
        assert!(stranger_node.read("c", &caller("n1", 1)).await.is_err());
        assert_eq!(w.service.registers(), vec![("c".to_string(), created)]);
        w.stop().await;
    }
}
