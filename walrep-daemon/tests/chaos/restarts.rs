//! Both nodes killed and restarted.

use crate::harness::*;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_killed_and_restarted_resume_their_roles() {
    let mut c = Cluster::start("both_killed", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    c.nodes[0].kill();
    c.nodes[1].kill();
    c.nodes[1].spawn().expect("walrep restarts");
    c.nodes[0].spawn().expect("walrep restarts");
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    let h = c.wait_primary(0).await;
    assert_eq!(
        h.epoch, 1,
        "no promotion: the standby restarted without contact"
    );
    load.wait_acks(0, 1, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0);
    g2_nothing_acked_lost(&c, 0, &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            rewound: conv.reports[0].rewound_records + conv.reports[1].rewound_records,
            converge: Some(conv.took),
            ..Figures::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_killed_after_a_failover_resume_with_the_newer_primary() {
    let mut c = Cluster::start("both_killed_after_failover", &[]).await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    // n1 dies; n2 promotes and acknowledges writes alone; then n2 dies too.
    let fault = Instant::now();
    c.nodes[0].kill();
    c.wait_primary(1).await;
    load.wait_acks(1, 2, fault, 50).await;
    c.nodes[1].kill();
    // The old primary first, with its original flags (--role primary): it
    // must not write in epoch 1 before hearing from n2.
    c.nodes[0].spawn().expect("walrep restarts");
    c.wait_or_show_evidence(0, "n1 up", |_| true).await;
    c.nodes[1].spawn().expect("walrep restarts");
    let back = Instant::now();
    c.wait_primary(1).await;
    c.wait_rejoined(0, 2).await;
    load.wait_acks(1, 2, back, 50).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!((conv.primary, conv.reports[1].epoch), (1, 2));
    g2_nothing_acked_lost(&c, 1, &writes).await;
    report(
        &c,
        &writes,
        &Figures::of(&conv).with_failover(&writes, fault, 1),
    );
}
