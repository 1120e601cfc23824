//! Real HAProxy (the shipped `deploy/haproxy/haproxy.cfg`, rendered with
//! this pair's ports) in front of the pair: a SIGKILL of the primary, its
//! restart, a planned switchover, then a planned restart of the primary
//! (SIGTERM: it hands over first), all under writes through HAProxy's
//! write frontend. No acknowledged write is lost, writes succeed again
//! after each event, and neither the switchover nor the planned restart
//! passes a refusal of a node (503 `not_primary`, `fenced`, `unavailable`)
//! to clients: the demoted node holds them until HAProxy sees the new
//! primary, and HAProxy resends what a stopped node refused to connect.

use crate::daemon_support::*;
use crate::harness::*;
use std::time::Instant;
use walrep_daemon::bench::haproxy::{
    Haproxy, Writers, count_errors, counts_text, find_haproxy, in_flight_during, lost_writes,
};
use walrep_daemon::client::HttpClient;

/// Writers through HAProxy and the most writes a second each: a few
/// hundred a second in all.
const WRITERS: usize = 8;
const RATE: f64 = 50.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_fails_writes_over_on_a_crash_and_a_switchover_or_planned_restart_passes_no_refusal_to_clients()
 {
    let Some(binary) = find_haproxy() else {
        eprintln!(
            "SKIPPED: haproxy not installed (WALREP_HAPROXY names no file, or none in /usr/sbin, /usr/local/sbin, /usr/bin)"
        );
        return;
    };
    let mut c = Cluster::start("haproxy", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut lb = Haproxy::start(&binary, dir.path(), [&c.http[0], &c.http[1]])
        .await
        .expect("HAProxy starts on the shipped config");
    let writers = Writers::start(&lb.frontends.write, WRITERS, RATE, "lb");
    writers
        .first_ack_after(Instant::now(), 1, WAIT)
        .await
        .expect("writes through HAProxy reach n1");

    // SIGKILL of the primary: writes come back through HAProxy at the new
    // primary's epoch.
    let killed = Instant::now();
    c.nodes[0].kill();
    let promoted = c.wait_primary(1).await;
    let after_kill = writers
        .first_ack_after(killed, promoted.epoch, WAIT)
        .await
        .expect("writes succeed through HAProxy after the failover");

    // The old primary restarts and rejoins; writes go on meanwhile.
    c.nodes[0].spawn().expect("walrep restarts");
    c.wait_rejoined(0, promoted.epoch).await;
    let rejoined = Instant::now();
    writers
        .first_ack_after(rejoined, promoted.epoch, WAIT)
        .await
        .expect("writes succeed through HAProxy after the rejoin");

    // A planned switchover back to n1, asked of n1.
    let asked = Instant::now();
    let epoch = HttpClient::new(&c.http[0])
        .with_timeout(WAIT)
        .promote(false)
        .await
        .expect("the switchover to n1 succeeds");
    // The switchover's writes: from the request until 100 writes landed on
    // the new primary (those held by the demoted node and resent among
    // them).
    let settled = writers
        .acks_after(asked, epoch, 100, WAIT)
        .await
        .expect("writes succeed through HAProxy after the switchover")
        .ended;

    // A planned restart of n1: SIGTERM, as `docker stop` sends. It hands
    // over to n2 before it stops, then starts again as n2's standby.
    let terminated = Instant::now();
    tokio::task::block_in_place(|| c.nodes[0].terminate(WAIT));
    let took_over = c.wait_primary(1).await;
    let restart_settled = writers
        .acks_after(terminated, took_over.epoch, 100, WAIT)
        .await
        .expect("writes succeed through HAProxy after the planned restart")
        .ended;
    c.nodes[0].spawn().expect("walrep restarts");
    c.wait_rejoined(0, took_over.epoch).await;
    let written = writers.stop().await;
    lb.stop();

    let kill_errors = count_errors(&in_flight_during(&written, killed, after_kill.ended));
    let switch_writes = in_flight_during(&written, asked, settled);
    let switch_errors = count_errors(&switch_writes);
    let restart_writes = in_flight_during(&written, terminated, restart_settled);
    let restart_errors = count_errors(&restart_writes);
    let acked = written.iter().filter(|w| w.acked_epoch().is_some()).count();
    println!(
        "haproxy: {} writes, {acked} acknowledged; errors at the kill: {}; at the switchover ({} writes): {}; at the planned restart ({} writes): {}; all: {}",
        written.len(),
        counts_text(&kill_errors),
        switch_writes.len(),
        counts_text(&switch_errors),
        restart_writes.len(),
        counts_text(&restart_errors),
        counts_text(&count_errors(&written)),
    );

    let lost = lost_writes(&c.http[1], &written).await.unwrap();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes missing or different on the final primary n2, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    for (what, errors) in [
        ("the switchover", &switch_errors),
        ("the planned restart", &restart_errors),
    ] {
        for refusal in ["not_primary", "fenced", "unavailable"] {
            assert!(
                !errors.keys().any(|k| k.ends_with(refusal)),
                "{what} passed {refusal} to clients through HAProxy: {}",
                counts_text(errors)
            );
        }
    }
}
