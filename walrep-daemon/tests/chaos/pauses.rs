//! A node stopped (SIGSTOP) past the failover timeout, then resumed.

use crate::harness::*;
use hyper::Method;
use std::time::Instant;
use walrep_daemon::api::ErrorReply;
use walrep_daemon::client::HttpClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_primary_refuses_writes_once_it_learns_the_new_epoch() {
    let c = Cluster::start("pause_primary", &[]).await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.nodes[0].signal(libc::SIGSTOP).unwrap();
    c.wait_primary(1).await;
    load.wait_acks(1, 2, fault, 50).await;

    c.nodes[0].signal(libc::SIGCONT).unwrap();
    let resumed = Instant::now();
    let learned = c
        .wait_or_show_evidence(0, "epoch 2 learned", |h| h.epoch >= 2)
        .await;
    assert!(!learned.writable, "{learned:?}");
    // Once it knows the new epoch, the old primary refuses every write.
    let mut old = HttpClient::new(&c.http[0]).with_timeout(WRITE_TIMEOUT);
    for i in 0..10 {
        let r = old
            .request(Method::PUT, &format!("/kv/stale-{i}"), "v".into())
            .await
            .expect("the resumed node answers");
        assert_eq!(
            r.status,
            503,
            "the old primary acknowledged a write after learning epoch 2: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e: ErrorReply = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(e.leader.as_deref(), Some(c.http[1].as_str()), "{e:?}");
    }
    c.wait_rejoined(0, 2).await;
    let (writes, _, conv) = finish(&c, load, resumed).await;
    assert_eq!(conv.primary, 1);
    // Woken up, it asks the standby before acknowledging anything alone,
    // and learns of epoch 2 instead: nothing sent to it after the pause
    // is acknowledged in epoch 1.
    if let Some(w) = writes
        .iter()
        .find(|w| w.node == 0 && w.started > resumed && w.acked().is_some())
    {
        panic!("the woken old primary acknowledged {w:?}");
    }
    // A pause is not a partition: nothing acknowledged may be lost.
    g2_nothing_acked_lost(&c, 1, &writes).await;
    report(
        &c,
        &writes,
        &Figures::of(&conv).with_failover(&writes, fault, 1),
    );
}
