//! A node killed (SIGKILL) under load, once or back and forth.

use crate::daemon_support::*;
use crate::harness::*;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_the_primary_fails_over_and_it_rejoins_as_standby() {
    let mut c = Cluster::start("crash_primary", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.nodes[0].kill();
    let h = c.wait_primary(1).await;
    assert_eq!(h.epoch, 2);
    load.wait_acks(1, 2, fault, 50).await;

    c.nodes[0].spawn().expect("walrep restarts");
    let back = Instant::now();
    c.wait_rejoined(0, 2).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 1);
    g2_nothing_acked_lost(&c, 1, &writes).await;
    report(
        &c,
        &writes,
        &Figures::of(&conv).with_failover(&writes, fault, 1),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_the_standby_leaves_the_primary_writing_and_it_catches_up() {
    let mut c = Cluster::start("crash_standby", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    c.nodes[1].kill();
    // The primary goes on alone after sync_timeout of failed attempts.
    c.wait_or_show_evidence(0, "solo primary", |h| is_writable_primary(h) && h.solo)
        .await;
    load.wait_acks(0, 1, Instant::now(), 50).await;

    c.nodes[1].spawn().expect("walrep restarts");
    let back = Instant::now();
    c.wait_rejoined(1, 1).await;
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 0, "no failover when the standby crashes");
    assert_eq!(conv.reports[0].epoch, 1);
    g2_nothing_acked_lost(&c, 0, &writes).await;
    report(&c, &writes, &Figures::of(&conv));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failover_back_and_forth_loses_no_acknowledged_write() {
    let mut c = Cluster::start("repeated_failover", &[]).await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 50).await;
    let mut figures = Figures::default();
    let (mut primary, mut epoch) = (0, 1);
    let mut back = Instant::now();
    let mut rewound = 0;
    for _round in 0..4 {
        let next = 1 - primary;
        let fault = Instant::now();
        c.nodes[primary].kill();
        let h = c.wait_primary(next).await;
        assert_eq!(h.epoch, epoch + 1, "one promotion per failover");
        load.wait_acks(next, epoch + 1, fault, 30).await;
        figures
            .failovers
            .push(failover_time(&load.writes(), fault, epoch));

        c.nodes[primary].spawn().expect("walrep restarts");
        back = Instant::now();
        // In sync again before the next kill, so the next failover may happen.
        let h = c.wait_rejoined(primary, epoch + 1).await;
        rewound += h.rewound_records;
        load.wait_acks(next, epoch + 1, back, 30).await;
        (primary, epoch) = (next, epoch + 1);
    }
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(
        (conv.primary, conv.reports[primary].epoch),
        (primary, epoch)
    );
    g2_nothing_acked_lost(&c, primary, &writes).await;
    figures.rewound = rewound.max(conv.reports[1 - primary].rewound_records);
    figures.converge = Some(conv.took);
    report(&c, &writes, &figures);
}
