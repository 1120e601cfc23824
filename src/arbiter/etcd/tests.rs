//! The etcd arbiter against a real etcd: each test starts its own server
//! on free loopback ports in a temporary data directory, and kills it at
//! the end. Without an `etcd` binary (Debian: `apt-get install
//! etcd-server`), the tests that need one say SKIPPED and pass.

use super::*;
use crate::testing::{EtcdServer, free_port};
use crate::types::{Epoch, NodeId};
use std::sync::Arc;

macro_rules! etcd_or_skip {
    () => {
        match EtcdServer::start().await {
            Some(server) => server,
            None => return,
        }
    };
}

fn arbiter(endpoints: &[&str], timeout: Duration) -> EtcdArbiter {
    let url = format!("etcd://{}", endpoints.join(","));
    EtcdArbiter::from_url(&url).unwrap().with_timeout(timeout)
}

fn caller(node: &str, epoch: u64) -> Caller {
    Caller::new(node, Epoch(epoch))
}

fn pair_register(epoch: u64, primary: &str) -> Register {
    Register::fresh(
        Epoch(epoch),
        &NodeId::from(primary),
        &["n1".into(), "n2".into()],
    )
}

fn swapped(outcome: Result<CasOutcome, ArbiterError>) -> Register {
    match outcome {
        Ok(CasOutcome::Swapped(r)) => r,
        other => panic!("expected a swap, got {other:?}"),
    }
}

fn conflict(outcome: Result<CasOutcome, ArbiterError>) -> Register {
    match outcome {
        Ok(CasOutcome::Conflict(r)) => r,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A port nothing listens on: connections are refused at once.
fn refused_endpoint() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A listener that accepts connections and never answers a byte: every
/// call to it times out.
async fn silent_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr.to_string(), task)
}

#[tokio::test]
async fn etcd_creates_reads_and_swaps_a_register_in_one_key_whose_version_is_the_registers() {
    let etcd = etcd_or_skip!();
    let arb = arbiter(&[&etcd.endpoint()], Duration::from_secs(5));
    let n1 = caller("n1", 1);
    assert_eq!(arb.read("c1", &n1).await.unwrap(), Register::default());

    let v1 = swapped(
        arb.compare_and_swap("c1", &n1, 0, &pair_register(1, "n1"))
            .await,
    );
    assert_eq!(v1.version, 1);
    assert_eq!(v1, Register::default().successor(&pair_register(1, "n1")));
    assert_eq!(arb.read("c1", &n1).await.unwrap(), v1);

    let mut with_standby = v1.clone();
    with_standby.sync_set.insert("n2".into());
    let v2 = swapped(arb.compare_and_swap("c1", &n1, 1, &with_standby).await);
    assert_eq!(v2, v1.successor(&with_standby));

    // A stale version, and a second create, get the current register.
    assert_eq!(conflict(arb.compare_and_swap("c1", &n1, 1, &v1).await), v2);
    assert_eq!(
        conflict(
            arb.compare_and_swap("c1", &caller("n2", 1), 0, &pair_register(2, "n2"))
                .await
        ),
        v2
    );
    // A fresh client (no register seen yet) too, and it refuses to move
    // the epoch back.
    let other = arbiter(&[&etcd.endpoint()], Duration::from_secs(5));
    assert_eq!(
        conflict(other.compare_and_swap("c1", &n1, 7, &v2).await),
        v2
    );
    let mut backwards = v2.clone();
    backwards.epoch = Epoch(0);
    assert_eq!(
        other.compare_and_swap("c1", &n1, 2, &backwards).await,
        Err(ArbiterError::Refused(SwapRefusal::EpochGoesBack {
            current: Epoch(1),
            proposed: Epoch(0)
        }))
    );
    // A create must name its caller among the members.
    assert_eq!(
        arb.compare_and_swap("c2", &caller("n3", 1), 0, &pair_register(1, "n1"))
            .await,
        Err(ArbiterError::Refused(SwapRefusal::CallerNotMember {
            caller: "n3".into()
        }))
    );
    assert_eq!(arb.read("c2", &n1).await.unwrap(), Register::default());

    // The key layout and the version mapping, as etcd itself shows them.
    let mut kv = KvClient::connect(etcd.client_url()).await.unwrap();
    let range = kv
        .range(RangeRequest {
            key: b"/walrep/c1/register".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(range.kvs.len(), 1);
    assert_eq!(range.kvs[0].version, 2);
    assert_eq!(decode_register(&range.kvs[0].value).unwrap(), v2);
    assert_eq!(arb.describe(), format!("etcd://{}", etcd.endpoint()));
}

#[tokio::test]
async fn a_custom_prefix_keeps_registers_apart() {
    let etcd = etcd_or_skip!();
    let url = format!("etcd://{}/team-a", etcd.endpoint());
    let a = EtcdArbiter::from_url(&url).unwrap();
    let b = arbiter(&[&etcd.endpoint()], Duration::from_secs(5));
    let n1 = caller("n1", 1);
    swapped(
        a.compare_and_swap("c", &n1, 0, &pair_register(3, "n1"))
            .await,
    );
    assert_eq!(b.read("c", &n1).await.unwrap(), Register::default());
    assert_eq!(a.read("c", &n1).await.unwrap().epoch, Epoch(3));
    assert_eq!(a.describe(), format!("{url}/"));
}

#[tokio::test]
async fn two_etcd_clients_racing_for_one_version_swap_exactly_once() {
    let etcd = etcd_or_skip!();
    let a = Arc::new(arbiter(&[&etcd.endpoint()], Duration::from_secs(5)));
    let b = Arc::new(arbiter(&[&etcd.endpoint()], Duration::from_secs(5)));
    let mut current = swapped(
        a.compare_and_swap("race", &caller("n1", 1), 0, &pair_register(1, "n1"))
            .await,
    );
    let (mut a_won, mut b_won) = (0, 0);
    for round in 0..30u64 {
        let epoch = current.epoch.0 + 1;
        // Each proposes itself as primary of the next epoch.
        let (pa, pb) = (pair_register(epoch, "n1"), pair_register(epoch, "n2"));
        let version = current.version;
        let (ra, rb) = tokio::join!(
            {
                let a = a.clone();
                async move {
                    a.compare_and_swap("race", &caller("n1", epoch - 1), version, &pa)
                        .await
                }
            },
            {
                let b = b.clone();
                async move {
                    b.compare_and_swap("race", &caller("n2", epoch - 1), version, &pb)
                        .await
                }
            }
        );
        current = match (ra.unwrap(), rb.unwrap()) {
            (CasOutcome::Swapped(w), CasOutcome::Conflict(l)) => {
                a_won += 1;
                assert_eq!(w, l, "round {round}: the loser sees the winner's register");
                w
            }
            (CasOutcome::Conflict(l), CasOutcome::Swapped(w)) => {
                b_won += 1;
                assert_eq!(w, l, "round {round}: the loser sees the winner's register");
                w
            }
            other => panic!("round {round}: not exactly one swap: {other:?}"),
        };
        assert_eq!(current.version, version + 1);
    }
    assert_eq!(a_won + b_won, 30);
    assert_eq!(a.read("race", &caller("n1", 0)).await.unwrap(), current);
}

/// A proxy to `target` that passes the client's bytes on and throws the
/// server's away: requests take effect, their answers never arrive.
async fn answer_losing_proxy(target: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (mut from_client, _to_client) = client.into_split();
            let (mut from_server, mut to_server) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_server, &mut tokio::io::sink()).await;
                drop(_to_client);
            });
        }
    });
    (addr.to_string(), task)
}

#[tokio::test]
async fn a_swap_whose_answer_was_lost_is_recognised_when_retried_on_the_next_endpoint() {
    let etcd = etcd_or_skip!();
    let (proxy, task) = answer_losing_proxy(etcd.endpoint()).await;
    let arb = arbiter(&[&proxy, &etcd.endpoint()], Duration::from_secs(2));
    let n1 = caller("n1", 1);
    // Through the proxy the create is applied but unanswered; the retry on
    // the second endpoint finds the register this swap made.
    let v1 = swapped(
        arb.compare_and_swap("c", &n1, 0, &pair_register(1, "n1"))
            .await,
    );
    assert_eq!(v1.version, 1);
    let direct = arbiter(&[&etcd.endpoint()], Duration::from_secs(2));
    assert_eq!(direct.read("c", &n1).await.unwrap(), v1);
    // Someone else's register at that version is still a conflict.
    swapped(
        direct
            .compare_and_swap("c", &n1, 1, &pair_register(2, "n1"))
            .await,
    );
    let lost = arbiter(&[&proxy, &etcd.endpoint()], Duration::from_secs(2));
    let mut stale = v1.clone();
    stale.sync_set.insert("n2".into());
    let current = conflict(lost.compare_and_swap("c", &n1, 1, &stale).await);
    assert_eq!(current.version, 2);
    assert_eq!(current.epoch, Epoch(2));
    task.abort();
}

#[tokio::test]
async fn an_unreachable_etcd_is_unreachable_within_the_deadline() {
    // Needs no etcd: one endpoint refuses connections, one never answers.
    let (silent, task) = silent_endpoint().await;
    let deadline = Duration::from_millis(600);
    for endpoints in [
        vec![refused_endpoint()],
        vec![silent.clone()],
        vec![silent.clone(), refused_endpoint()],
    ] {
        let refs: Vec<&str> = endpoints.iter().map(|s| s.as_str()).collect();
        let arb = arbiter(&refs, deadline);
        let started = Instant::now();
        let read = arb.read("c", &caller("n1", 1)).await;
        let cas = arb
            .compare_and_swap("c", &caller("n1", 1), 0, &pair_register(1, "n1"))
            .await;
        let took = started.elapsed();
        for outcome in [read.map(|_| ()), cas.map(|_| ())] {
            match outcome {
                Err(ArbiterError::Unreachable(why)) => {
                    assert!(why.contains(refs[0]), "{why}")
                }
                other => panic!("{endpoints:?}: expected Unreachable, got {other:?}"),
            }
        }
        assert!(
            took < 2 * deadline + Duration::from_millis(400),
            "{endpoints:?}: two calls took {took:?} with a {deadline:?} deadline each"
        );
    }
    task.abort();
}

#[tokio::test]
async fn the_next_etcd_endpoint_answers_when_the_first_is_down() {
    let etcd = etcd_or_skip!();
    let (silent, task) = silent_endpoint().await;
    let deadline = Duration::from_secs(2);
    let refused = refused_endpoint();
    let n1 = caller("n1", 1);
    for (i, first) in [refused, silent].iter().enumerate() {
        let arb = arbiter(&[first, &etcd.endpoint()], deadline);
        let cluster = format!("c{i}");
        let started = Instant::now();
        let v1 = swapped(
            arb.compare_and_swap(&cluster, &n1, 0, &pair_register(1, "n1"))
                .await,
        );
        assert!(started.elapsed() < deadline, "{:?}", started.elapsed());
        // The endpoint that answered is tried first from now on.
        let started = Instant::now();
        assert_eq!(arb.read(&cluster, &n1).await.unwrap(), v1);
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            arb.describe(),
            format!("etcd://{first},{}", etcd.endpoint())
        );
    }
    task.abort();
}

#[tokio::test]
async fn a_register_survives_an_etcd_restart() {
    let mut etcd = etcd_or_skip!();
    let arb = arbiter(&[&etcd.endpoint()], Duration::from_secs(1));
    let n1 = caller("n1", 1);
    let v1 = swapped(
        arb.compare_and_swap("c", &n1, 0, &pair_register(1, "n1"))
            .await,
    );
    let mut next = v1.clone();
    next.sync_set.insert("n2".into());
    let v2 = swapped(arb.compare_and_swap("c", &n1, 1, &next).await);

    etcd.kill();
    assert!(matches!(
        arb.read("c", &n1).await,
        Err(ArbiterError::Unreachable(_))
    ));
    etcd.spawn().await;

    // The same client, reconnecting, and a fresh one see it.
    assert_eq!(arb.read("c", &n1).await.unwrap(), v2);
    let fresh = arbiter(&[&etcd.endpoint()], Duration::from_secs(1));
    assert_eq!(fresh.read("c", &n1).await.unwrap(), v2);
    let v3 = swapped(
        fresh
            .compare_and_swap("c", &caller("n2", 1), 2, &pair_register(2, "n2"))
            .await,
    );
    assert_eq!(v3.version, 3);
}

/// CAS latency on a loopback etcd: `cargo test --lib etcd_cas_latency --
/// --ignored --nocapture`.
#[tokio::test]
#[ignore = "a benchmark: run by hand"]
async fn etcd_cas_latency() {
    let etcd = etcd_or_skip!();
    let arb = arbiter(&[&etcd.endpoint()], Duration::from_secs(5));
    let n1 = caller("n1", 1);
    let mut current = swapped(
        arb.compare_and_swap("bench", &n1, 0, &pair_register(1, "n1"))
            .await,
    );
    let mut took = Vec::with_capacity(1000);
    for i in 0..1000u64 {
        let mut next = current.clone();
        if i % 2 == 0 {
            next.sync_set.insert("n2".into());
        } else {
            next.sync_set.clear();
        }
        let started = std::time::Instant::now();
        current = swapped(
            arb.compare_and_swap("bench", &n1, current.version, &next)
                .await,
        );
        took.push(started.elapsed());
    }
    took.sort();
    let pct = |p: usize| took[(took.len() * p / 100).min(took.len() - 1)];
    println!(
        "etcd CAS latency over 1000 swaps: p50 {:?} p99 {:?} max {:?}",
        pct(50),
        pct(99),
        took[took.len() - 1]
    );
}

/// A node cuts each arbiter call at its `rpc_timeout`. At the default
/// deadline a call still gets past a silent first endpoint within that
/// cut: with a deadline above it, the first endpoint's share outlasted
/// the cut, so every call was cancelled on the silent endpoint and the
/// working one was never reached.
#[tokio::test]
async fn at_the_default_deadline_a_call_gets_past_a_silent_endpoint_within_the_nodes_cut() {
    let etcd = etcd_or_skip!();
    let (silent, task) = silent_endpoint().await;
    let arb = EtcdArbiter::from_url(&format!("etcd://{silent},{}", etcd.endpoint())).unwrap();
    let cut = crate::Config::DEFAULT_RPC_TIMEOUT;
    let swap = tokio::time::timeout(
        cut,
        arb.compare_and_swap("c", &caller("n1", 1), 0, &pair_register(1, "n1")),
    )
    .await;
    match swap {
        Ok(outcome) => {
            swapped(outcome);
        }
        Err(_) => panic!("the node's {cut:?} cut the call before it left the silent endpoint"),
    }
    task.abort();
}
