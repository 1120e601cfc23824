//! Three data nodes (`a` primary, `b` and `c` standbys) and a shared
//! in-memory arbiter over real tonic on 127.0.0.1, with the default rule
//! (every standby confirms each write).

use crate::common::*;
use crate::mem_engine;
use walrep::testing::{MemStateMachine, Pair, PairBuilder, PairNode};
use walrep::{Lsn, NodeId, Replicator, RoleKind};

fn id(s: &str) -> NodeId {
    NodeId::from(s)
}

/// A write on `primary` reaches `follower`, whose state then equals the
/// primary's; returns the write's LSN.
async fn writes_reach(
    primary: &PairNode<MemStateMachine>,
    follower: &PairNode<MemStateMachine>,
) -> walrep::Lsn {
    let after = primary
        .replica()
        .apply(put_cmd("after", "failover"))
        .await
        .unwrap();
    follower
        .replica()
        .wait_for_lsn(after.lsn, WAIT)
        .await
        .unwrap();
    assert_eq!(
        follower.engine().state_hash(),
        primary.engine().state_hash()
    );
    after.lsn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_write_is_durable_on_every_standby_the_rule_waits_for() {
    init_tracing();
    let mut cluster = Pair::builder(mem_engine).nodes(3).start().await.unwrap();
    cluster.wait_streaming().await.unwrap();
    assert_eq!(cluster.primary().id(), &id("a"));
    let primary = cluster.primary().replica().clone();
    let health = primary.health();
    assert_eq!(
        health
            .standbys
            .iter()
            .map(|s| s.node_id.clone())
            .collect::<Vec<_>>(),
        vec![id("b"), id("c")]
    );
    for i in 0..20 {
        let applied = primary.apply(put_cmd(&format!("k{i}"), "v")).await.unwrap();
        for standby in ["b", "c"] {
            let flushed = cluster.node(&id(standby)).wal().flushed_lsn();
            assert!(
                flushed >= applied.lsn,
                "write {} acknowledged while {standby} has flushed only {flushed}",
                applied.lsn
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_by_one_standby_and_the_other_follows_it() {
    init_tracing();
    let mut cluster = Pair::builder(mem_engine).nodes(3).start().await.unwrap();
    cluster.wait_streaming().await.unwrap();
    let last = put_keys(cluster.primary().replica(), 10).await;
    let hash = cluster.primary().engine().state_hash();

    let new = cluster.failover().await.unwrap();
    assert!(new == id("b") || new == id("c"), "{new} promoted");
    let other = if new == id("b") { id("c") } else { id("b") };
    let promoted = cluster.node(&new).replica().clone();
    assert_eq!(promoted.epoch(), walrep::Epoch(2));
    promoted.wait_for_lsn(last, WAIT).await.unwrap();
    assert_eq!(
        cluster.node(&new).engine().state_hash(),
        hash,
        "an acknowledged write is missing on the new primary"
    );

    // The other standby follows the new primary of epoch 2 without an
    // operator, and receives what it writes.
    let follower = cluster.node(&other);
    follower
        .wait("following the new primary", |h| {
            h.role == RoleKind::Standby
                && h.epoch == walrep::Epoch(2)
                && h.leader.as_ref().is_some_and(|l| l.id == new)
        })
        .await
        .unwrap();
    let after = writes_reach(cluster.node(&new), follower).await;

    // The old primary comes back as a standby of the new one.
    cluster.restart(&id("a")).await.unwrap();
    let old = cluster.node(&id("a"));
    old.wait("the old primary rejoined as a standby", |h| {
        h.role == RoleKind::Standby && h.epoch == walrep::Epoch(2)
    })
    .await
    .unwrap();
    old.replica().wait_for_lsn(after, WAIT).await.unwrap();
    assert_eq!(
        old.engine().state_hash(),
        cluster.node(&new).engine().state_hash()
    );
    cluster.shutdown().await;
}

/// Writes a CA and a certificate per name into `dir`.
pub(crate) fn issue(dir: &std::path::Path, names: &[&str]) -> walrep_daemon::certs::CertAuthority {
    let ca = walrep_daemon::certs::CertAuthority::new().unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for name in names {
        let cert = ca.issue(name).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), &cert.cert_pem).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), &cert.key_pem).unwrap();
    }
    ca
}

/// A node given TLS whose service the engine serves on a server of its
/// own that proves no identity (here plain gRPC) refuses every request:
/// it never trusts the node id a request claims. Before, such a service
/// took a fence or a batch from anyone who named the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_nodes_service_on_a_server_that_proves_no_identity_refuses_every_request() {
    use walrep::testing::Peer;
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    issue(dir.path(), &["a", "b"]);
    let listener = walrep::testing::rebind("127.0.0.1:0").await.unwrap();
    let a_addr = listener.local_addr().unwrap();
    let b_addr: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cfg = walrep::testing::test_config(&id("a"), &id("b"), a_addr, b_addr);
    let tls = walrep::Tls::load(
        walrep::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("a.pem"),
            key: dir.path().join("a.key"),
        },
        &cfg,
    )
    .unwrap();
    let (replica, service) = walrep::Replica::builder(
        cfg,
        std::sync::Arc::new(walrep::testing::MemWal::new()),
        mem_engine(&id("a")),
    )
    .tls(tls)
    .start_without_server()
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(walrep::serve(service, listener, async {
        let _ = stopped.await;
    }));
    // "b", as the header claims, over a connection that proves nothing.
    let as_b = walrep::testing::test_config(&id("b"), &id("a"), b_addr, a_addr);
    let peer = walrep::GrpcPeer::connect_lazy(&as_b).unwrap();
    let header = walrep::testing::Header {
        cluster_id: as_b.cluster_id.clone(),
        epoch: walrep::Epoch(5),
        node_id: id("b"),
        node_addr: b_addr.to_string(),
        leader_id: Some(id("b")),
        client_addr: None,
    };
    let refused = peer
        .fence(walrep::testing::FenceRequest {
            header,
            reason: walrep::testing::FenceReason::Forced,
            candidate_end: None,
        })
        .await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("mutual TLS")),
        "{refused:?}"
    );
    assert!(replica.health().epoch < walrep::Epoch(5), "the fence took");
    assert_eq!(replica.metrics().rejected.get("unauthenticated"), Some(&1));
    replica.shutdown().await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_over_mutual_tls_each_admitting_every_peer_it_names() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let names = ["a", "b", "c"];
    issue(dir.path(), &names);
    let listeners: Vec<std::net::TcpListener> = names
        .iter()
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<std::net::SocketAddr> =
        listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    drop(listeners);
    let arbiter: std::sync::Arc<dyn walrep::arbiter::Arbiter> =
        std::sync::Arc::new(walrep::arbiter::MemArbiter::new());
    let mut replicas = Vec::new();
    for (i, name) in names.iter().enumerate() {
        // Each node's `peer_id` is the next one, so `b` admits `a` and `a`
        // dials `c` as peers of `more_peers`, not as `peer_id`.
        let others = [(i + 1) % 3, (i + 2) % 3];
        let cfg = walrep::Config {
            initial_role: if i == 0 {
                walrep::InitialRole::Primary
            } else {
                walrep::InitialRole::Standby
            },
            more_peers: vec![walrep::PeerAddress {
                id: id(names[others[1]]),
                addr: addrs[others[1]].to_string(),
            }],
            arbiter: Some(arbiter.clone()),
            ..walrep::testing::test_config(
                &id(name),
                &id(names[others[0]]),
                addrs[i],
                addrs[others[0]],
            )
        };
        let tls = walrep::Tls::load(
            walrep::TlsFiles {
                ca: dir.path().join("ca.pem"),
                cert: dir.path().join(format!("{name}.pem")),
                key: dir.path().join(format!("{name}.key")),
            },
            &cfg,
        )
        .unwrap();
        let replica = walrep::Replica::builder(
            cfg,
            std::sync::Arc::new(walrep::testing::MemWal::new()),
            mem_engine(&id(name)),
        )
        .tls(tls)
        .serve_on(
            walrep::testing::rebind(&addrs[i].to_string())
                .await
                .unwrap(),
        )
        .start()
        .unwrap();
        replicas.push(replica);
    }
    // `a` streams to `b` and `c`: `a` checks that `c`'s certificate names
    // `c`, and `b` admits `a`, which is one of its `more_peers`.
    let mut health = replicas[0].subscribe();
    tokio::time::timeout(
        WAIT,
        health.wait_for(|h| {
            h.role == RoleKind::Primary
                && h.writable
                && h.standbys.len() == 2
                && h.standbys.iter().all(|s| s.connected)
        }),
    )
    .await
    .expect("a streams to both standbys over TLS")
    .unwrap();
    let applied = replicas[0].apply(put_cmd("k", "v")).await.unwrap();
    for standby in &replicas[1..] {
        standby.wait_for_lsn(applied.lsn, WAIT).await.unwrap();
    }
    for r in &replicas {
        r.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_to_a_named_standby_hands_over_to_it_and_the_other_follows() {
    init_tracing();
    let mut cluster = Pair::builder(mem_engine).nodes(3).start().await.unwrap();
    cluster.wait_streaming().await.unwrap();
    let a = cluster.node(&id("a")).replica().clone();
    let last = put_keys(&a, 10).await;
    // A name that is not one of its standbys changes nothing.
    let refused = a.switchover_to(&id("x")).await.unwrap_err();
    assert!(refused.to_string().contains("not a standby"), "{refused}");
    assert_eq!(a.role(), RoleKind::Primary);

    // `c` is not the primary's `peer_id`: the switchover goes to it.
    let epoch = a.switchover_to(&id("c")).await.unwrap();
    assert_eq!(epoch, walrep::Epoch(2));
    let c = cluster.node(&id("c")).replica().clone();
    assert_eq!(c.role(), RoleKind::Primary);
    c.wait_for_lsn(last, WAIT).await.unwrap();
    for other in ["a", "b"] {
        cluster
            .node(&id(other))
            .wait("following c", |h| {
                h.role == RoleKind::Standby
                    && h.epoch == walrep::Epoch(2)
                    && h.leader.as_ref().is_some_and(|l| l.id == id("c"))
            })
            .await
            .unwrap();
    }
    let after = c.apply(put_cmd("after", "switchover")).await.unwrap();
    for other in ["a", "b"] {
        let node = cluster.node(&id(other));
        node.replica().wait_for_lsn(after.lsn, WAIT).await.unwrap();
        assert_eq!(
            node.engine().state_hash(),
            cluster.node(&id("c")).engine().state_hash()
        );
    }
    cluster.shutdown().await;
}

/// `ANY 1` over both standbys: a write is acknowledged once either has it.
fn any_one(cluster: PairBuilder<MemStateMachine>) -> PairBuilder<MemStateMachine> {
    cluster.config(|cfg| {
        cfg.sync_standbys = Some("ANY 1 (a, b, c)".parse().unwrap());
        // Long enough that the lagging standby stays in the sync set.
        cfg.sync_timeout = std::time::Duration::from_secs(30);
    })
}

/// Waits until `candidate` holds back its failover for the other standby's
/// position, still a standby.
async fn holds_back_for_a_position(candidate: &PairNode<MemStateMachine>) {
    let waiting = candidate
        .wait("c holds back for b's position", |h| {
            h.arbiter
                .as_ref()
                .and_then(|s| s.held_back.as_ref())
                .is_some_and(|w| w.contains("heard from 1 of the 2"))
        })
        .await
        .unwrap();
    assert_eq!(waiting.role, RoleKind::Standby);
}

/// Three nodes under `ANY 1 (a, b, c)`, both standbys in the sync set and
/// their failover paused, where a acknowledged ten writes with b alone (it
/// stopped reaching c). Returns the cluster, the last acknowledged LSN and
/// a's state hash then.
async fn any_one_where_c_lacks_acknowledged_writes() -> (Pair<MemStateMachine>, Lsn, u32) {
    let cluster = any_one(Pair::builder(mem_engine).nodes(3))
        .start()
        .await
        .unwrap();
    cluster.wait_streaming().await.unwrap();
    let (a, b, c) = (id("a"), id("b"), id("c"));
    cluster
        .node(&a)
        .wait("both standbys in the register's sync set", |h| {
            h.arbiter
                .as_ref()
                .and_then(|s| s.register.as_ref())
                .is_some_and(|r| r.sync_set.len() == 2)
        })
        .await
        .unwrap();
    for n in [&b, &c] {
        cluster
            .node(n)
            .replica()
            .set_failover_paused(true)
            .await
            .unwrap();
    }
    cluster.set_link_cut_to(&a, &c, true);
    let before = cluster.node(&c).wal().last_lsn();
    let last = put_keys(cluster.primary().replica(), 10).await;
    assert!(
        cluster.node(&c).wal().last_lsn() < last,
        "c was meant to miss acknowledged writes (it has {}, acknowledged {last}, had {before})",
        cluster.node(&c).wal().last_lsn()
    );
    let hash = cluster.primary().engine().state_hash();
    (cluster, last, hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_any_1_a_behind_candidate_waits_for_a_position_then_fetches_what_it_lacks() {
    init_tracing();
    // Only c may fail over, and c is behind.
    let (mut cluster, last, hash) = any_one_where_c_lacks_acknowledged_writes().await;
    let (a, b, c) = (id("a"), id("b"), id("c"));
    cluster.kill(&a).await;

    // c cannot reach b: it may not promote, as b alone may hold the
    // acknowledged writes.
    cluster.set_link_cut_to(&c, &b, true);
    let candidate = cluster.node(&c);
    candidate
        .replica()
        .set_failover_paused(false)
        .await
        .unwrap();
    holds_back_for_a_position(candidate).await;

    // b answers: c adopts nothing before it fetched b's records, then
    // promotes with every acknowledged write, and b follows it.
    cluster.set_link_cut_to(&c, &b, false);
    candidate
        .wait("c promoted", |h| h.role == RoleKind::Primary && h.writable)
        .await
        .unwrap();
    let promoted = candidate.replica().clone();
    promoted.wait_for_lsn(last, WAIT).await.unwrap();
    assert_eq!(
        candidate.engine().state_hash(),
        hash,
        "an acknowledged write is missing on the new primary"
    );
    let follower = cluster.node(&b);
    follower
        .wait("b follows c", |h| {
            h.role == RoleKind::Standby && h.leader.as_ref().is_some_and(|l| l.id == c)
        })
        .await
        .unwrap();
    writes_reach(candidate, follower).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_with_another_rule_while_the_primary_is_dead_still_asks_for_positions() {
    // The primary ran ANY 1 and acknowledged ten writes with b alone. c,
    // which lacks them, restarts with the default rule (every standby
    // confirms each write), under which it would believe it holds every
    // acknowledged write and promote alone. Having heard no primary's
    // rule since, it must ask b first.
    init_tracing();
    let (mut cluster, last, hash) = any_one_where_c_lacks_acknowledged_writes().await;
    let (a, b, c) = (id("a"), id("b"), id("c"));
    cluster.kill(&a).await;
    cluster.kill(&c).await;
    cluster
        .restart_with_config(&c, |cfg| cfg.sync_standbys = None)
        .await
        .unwrap();
    cluster.set_link_cut_to(&c, &b, true);
    let candidate = cluster.node(&c);
    holds_back_for_a_position(candidate).await;

    cluster.set_link_cut_to(&c, &b, false);
    candidate
        .wait("c promoted", |h| h.role == RoleKind::Primary)
        .await
        .unwrap();
    candidate.replica().wait_for_lsn(last, WAIT).await.unwrap();
    assert_eq!(
        candidate.engine().state_hash(),
        hash,
        "an acknowledged write is missing on the new primary"
    );
    cluster.shutdown().await;
}

/// An arbiter that keeps, for each node, the last `Caller` it was asked
/// by (what the node tells a witness about itself), over a `MemArbiter`.
#[derive(Debug)]
struct RecordsCallers {
    inner: walrep::arbiter::MemArbiter,
    callers:
        tokio::sync::watch::Sender<std::collections::BTreeMap<NodeId, walrep::arbiter::Caller>>,
}

impl RecordsCallers {
    fn new() -> Self {
        RecordsCallers {
            inner: walrep::arbiter::MemArbiter::new(),
            callers: tokio::sync::watch::channel(Default::default()).0,
        }
    }

    fn record(&self, caller: &walrep::arbiter::Caller) {
        self.callers.send_modify(|c| {
            c.insert(caller.node_id.clone(), caller.clone());
        });
    }

    /// Waits until the last calls of `a`, `b` and `c` all carried `epoch`
    /// and only `leader`'s claimed to lead it.
    async fn wait_for_claims(&self, epoch: walrep::Epoch, leader: &str) {
        let mut seen = self.callers.subscribe();
        let claims = seen.wait_for(|callers| {
            ["a", "b", "c"].iter().all(|n| {
                callers
                    .get(&id(n))
                    .is_some_and(|c| c.epoch == epoch && c.leads == (*n == leader))
            })
        });
        let last = tokio::time::timeout(WAIT, claims)
            .await
            .map(|r| r.unwrap().clone());
        assert!(
            last.is_ok(),
            "expected only {leader} to claim epoch {epoch}; last calls: {:?}",
            self.callers.borrow()
        );
    }
}

#[async_trait::async_trait]
impl walrep::arbiter::Arbiter for RecordsCallers {
    async fn read(
        &self,
        cluster_id: &str,
        caller: &walrep::arbiter::Caller,
    ) -> Result<walrep::arbiter::Register, walrep::arbiter::ArbiterError> {
        self.record(caller);
        self.inner.read(cluster_id, caller).await
    }

    async fn compare_and_swap(
        &self,
        cluster_id: &str,
        caller: &walrep::arbiter::Caller,
        expected_version: u64,
        next: &walrep::arbiter::Register,
    ) -> Result<walrep::arbiter::CasOutcome, walrep::arbiter::ArbiterError> {
        self.record(caller);
        self.inner
            .compare_and_swap(cluster_id, caller, expected_version, next)
            .await
    }

    fn describe(&self) -> String {
        "records-callers://".into()
    }
}

/// What a witness that lost its file rebuilds from: every node tells it,
/// on each call, whether it leads its epoch. Only the primary claims it,
/// and after a switchover only the new primary does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_primary_tells_the_arbiter_it_leads_its_epoch_and_a_switchover_moves_the_claim() {
    init_tracing();
    let arbiter = std::sync::Arc::new(RecordsCallers::new());
    let shared = arbiter.clone();
    let mut cluster = Pair::builder(mem_engine)
        .nodes(3)
        .config(move |cfg| cfg.arbiter = Some(shared.clone()))
        .start()
        .await
        .unwrap();
    cluster.wait_streaming().await.unwrap();
    arbiter.wait_for_claims(walrep::Epoch(1), "a").await;

    let a = cluster.node(&id("a")).replica().clone();
    assert_eq!(a.switchover_to(&id("c")).await.unwrap(), walrep::Epoch(2));
    arbiter.wait_for_claims(walrep::Epoch(2), "c").await;
    cluster.shutdown().await;
}
