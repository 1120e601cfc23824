//! The pair with a witness as its arbiter (`--arbiter witness://...`), each
//! node dialling it through a proxy of its own: partitions that leave one
//! side with the witness, the witness killed and restarted (from its file
//! and from nothing), two fresh primaries. With an arbiter no partition
//! loses an acknowledged write (DESIGN.md section 15), so every scenario
//! asserts 0 lost, whatever the policy.

use crate::daemon_support::*;
use crate::harness::*;
use std::time::{Duration, Instant};
use walrep_daemon::api::HealthReport;

/// The first of node `node`'s sampled reports that `during` selects and
/// that breaks `ok`, if any.
fn first_sample_breaking(
    samples: &[Sample],
    node: usize,
    during: impl Fn(&Sample) -> bool,
    ok: impl Fn(&HealthReport) -> bool,
) -> Option<&Sample> {
    samples
        .iter()
        .find(|s| s.node == node && during(s) && !ok(&s.health))
}

/// Nothing sent to node `node` after `since` (and a moment for the proxy
/// to stop forwarding) was acknowledged.
fn nothing_acked_by_after(writes: &[Write], node: usize, since: Instant, what: &str) {
    let grace = Duration::from_millis(100);
    if let Some(w) = writes
        .iter()
        .find(|w| w.node == node && w.started > since + grace && w.acked().is_some())
    {
        panic!("{what}: {} acknowledged {w:?}", NAMES[node]);
    }
}

/// Waits until both nodes report their last call to the witness answered
/// (`reachable`) or not.
async fn both_see_the_witness(c: &Cluster, reachable: bool) {
    for http in &c.http {
        wait_health(http, &format!("the witness reachable: {reachable}"), |h| {
            arbiter_reachable(h) == Some(reachable)
        })
        .await;
    }
}

/// Kills the primary `dead`: `survivor` takes over at `epoch` and
/// acknowledges 30 writes there; then `dead` restarts and rejoins as its
/// standby. Returns when the fault struck and when `dead` started again.
async fn fail_over_and_rejoin(
    c: &mut Cluster,
    load: &Load,
    dead: usize,
    survivor: usize,
    epoch: u64,
) -> (Instant, Instant) {
    let fault = Instant::now();
    c.nodes[dead].kill();
    assert_eq!(c.wait_primary(survivor).await.epoch, epoch);
    load.wait_acks(survivor, epoch, fault, 30).await;
    c.nodes[dead].spawn().expect("walrep restarts");
    let back = Instant::now();
    c.wait_rejoined(dead, epoch).await;
    (fault, back)
}

/// After a cut between the nodes, both still reaching the witness: which
/// side goes on, n2 promoted through the witness's swap or n1 acknowledging
/// alone after its swap took n2 out of the sync set. Exactly one of the two
/// swaps can succeed.
async fn one_side_goes_on(c: &Cluster) -> (usize, HealthReport) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (a, b) = (c.health(0).await, c.health(1).await);
        if let Some(b) = &b
            && is_writable_primary(b)
            && b.epoch >= 2
        {
            return (1, b.clone());
        }
        if let Some(a) = &a
            && is_writable_primary(a)
            && a.solo
        {
            return (0, a.clone());
        }
        assert!(
            Instant::now() < deadline,
            "neither side went on within {WAIT:?}:\nn1: {a:?}\nn2: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The link between the nodes cut both ways, both still reaching the
/// witness: one side goes on (which one depends on the timings: the standby
/// asks after `failover_timeout`, the primary after `sync_timeout`), the
/// other is stopped by the register, nothing acknowledged is lost, and the
/// other rejoins once healed.
async fn cut_between_the_nodes(name: &'static str, extra: &[(&'static str, &str)]) -> usize {
    cut_between_the_nodes_with(name, extra, None).await.0
}

/// `cut_between_the_nodes` with a witness (`etcd: None`) or the etcd at
/// that URL as the arbiter; which side went on, and the write pause.
async fn cut_between_the_nodes_with(
    name: &'static str,
    extra: &[(&'static str, &str)],
    etcd: Option<String>,
) -> (usize, Duration) {
    let c = Cluster::start_with(
        name,
        Setup {
            extra,
            witness: etcd.is_none(),
            arbiter_url: etcd,
            ..Setup::default()
        },
    )
    .await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.cut(LinkMode::Blackhole);
    let (survivor, h) = one_side_goes_on(&c).await;
    let other = 1 - survivor;
    load.wait_acks(survivor, h.epoch, fault, 50).await;
    if survivor == 1 {
        // The old primary learns the new epoch from the witness (its
        // refresh, or its own swap's conflict), not from n2: it stops.
        c.wait_or_show_evidence(0, "old primary stopped by the witness", |h| {
            !h.writable && h.epoch >= 2
        })
        .await;
    } else {
        c.wait_or_show_evidence(1, "standby refused the promotion", |h| {
            h.role == "standby" && h.epoch == 1 && held_back(h).is_some()
        })
        .await;
    }

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(other, h.epoch).await;
    let (writes, _samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, survivor);
    nothing_acked_by_after(&writes, other, fault, "the side the witness stopped");
    g2_nothing_acked_lost(&c, survivor, &writes).await;
    let pause = write_pause(&writes, fault, healed);
    let mut figures = Figures {
        pause: Some(pause),
        ..Figures::of(&conv)
    };
    if survivor == 1 {
        figures = figures.with_failover(&writes, fault, 1);
    }
    report(&c, &writes, &figures);
    (survivor, pause)
}

/// A benchmark more than a test, so ignored: the link between the nodes
/// cut `WALREP_CHAOS_TRIALS` times (20 by default), each time on a fresh
/// pair, with the witness and then with etcd (when installed: it says
/// SKIPPED otherwise); every trial asserts 0 acknowledged writes lost and
/// that one side went on. Prints the write pause p50 / p99 / max and how
/// often each side went on. Run it with
/// `cargo nextest run -p walrep-daemon --test chaos --run-ignored ignored-only --no-capture partition_trials`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn partition_trials_with_an_arbiter() {
    let trials: usize = std::env::var("WALREP_CHAOS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    for kind in ["witness", "etcd"] {
        let etcd = match kind {
            "etcd" => match walrep::testing::EtcdServer::start().await {
                Some(server) => Some(server),
                None => continue,
            },
            _ => None,
        };
        let (mut pauses, mut sides) = (Vec::new(), [0usize; 2]);
        for trial in 0..trials {
            // A cluster id per trial: etcd keeps the last trial's register.
            let cluster = format!("trial{trial}");
            let (survivor, pause) = cut_between_the_nodes_with(
                "arbiter_partition_trials",
                &[("cluster_id", cluster.as_str())],
                etcd.as_ref().map(|e| e.url()),
            )
            .await;
            sides[survivor] += 1;
            pauses.push(pause);
        }
        pauses.sort();
        let at = |q: f64| pauses[((pauses.len() - 1) as f64 * q).round() as usize];
        println!(
            "partition trials with {kind}: {trials} cuts of the node link, 0 acknowledged writes lost; write pause p50 {} ms, p99 {} ms, max {} ms; the standby went on {} times, the primary {} times",
            at(0.5).as_millis(),
            at(0.99).as_millis(),
            pauses.last().unwrap().as_millis(),
            sides[1],
            sides[0]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_witness_a_cut_between_the_nodes_loses_nothing_and_the_standby_takes_over() {
    // failover_timeout (500 ms) < sync_timeout (1 s): the standby's swap
    // comes first.
    let survivor = cut_between_the_nodes("arbiter_cut_standby_wins", &[]).await;
    assert_eq!(survivor, 1, "the standby asked first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_witness_a_cut_between_the_nodes_loses_nothing_and_the_primary_goes_on_alone() {
    // sync_timeout (1 s) < failover_timeout (3 s): the primary's swap
    // comes first and the standby, out of the sync set, may not promote.
    let survivor = cut_between_the_nodes(
        "arbiter_cut_primary_wins",
        &[("failover_timeout_ms", "3000")],
    )
    .await;
    assert_eq!(survivor, 0, "the primary asked first");
}

/// The primary cut from both the standby and the witness: it cannot take
/// its standby out of the sync set, so it refuses writes; the standby
/// promotes through the witness; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_witness_a_primary_cut_from_both_refuses_writes_and_the_standby_takes_over() {
    let c = Cluster::with_witness("arbiter_primary_isolated", &[]).await;
    let load = Load::start(&c, &writers(4, &[0, 1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let fault = Instant::now();
    c.cut(LinkMode::Blackhole);
    c.witness.as_ref().unwrap().links[0].set(LinkMode::Blackhole);
    let h = c.wait_primary(1).await;
    assert_eq!(h.epoch, 2);
    // It tried to take n2 out of the sync set, could not, and refuses.
    let refusing = c
        .wait_or_show_evidence(0, "isolated primary refusing writes", |h| {
            !h.writable && held_back(h).is_some()
        })
        .await;
    assert_eq!(refusing.epoch, 1, "n1 heard of epoch 2 through the cut");
    load.wait_refusals(0, fault, 3).await;
    load.wait_acks(1, 2, fault, 50).await;

    let healed = Instant::now();
    c.heal();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, 1);
    the_cut_held(&samples, healed);
    nothing_acked_by_after(&writes, 0, fault, "the primary cut from both");
    g2_nothing_acked_lost(&c, 1, &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            pause: Some(write_pause(&writes, fault, healed)),
            ..Figures::of(&conv).with_failover(&writes, fault, 1)
        },
    );
}

/// The witness killed (SIGKILL), then the primary: replication went on in
/// sync without the witness, and without it the standby does not promote
/// (it says why in `/health`); once the witness is back from its file, the
/// standby promotes. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_witness_down_a_dead_primary_is_replaced_only_once_the_witness_is_back() {
    let mut c = Cluster::with_witness("arbiter_witness_down", &[]).await;
    let load = Load::start(&c, &writers(4, &[1]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    let witness_down = Instant::now();
    c.witness().kill();
    both_see_the_witness(&c, false).await;
    load.wait_acks(0, 1, Instant::now(), 30).await;

    let fault = Instant::now();
    c.nodes[0].kill();
    let held = c
        .wait_or_show_evidence(1, "the failover held back", |h| held_back(h).is_some())
        .await;
    assert_eq!((held.role.as_str(), held.epoch), ("standby", 1), "{held:?}");
    // A stretch with the primary dead and the witness down, twice the
    // failover timeout: the samplers record that n2 stays a standby.
    tokio::time::sleep(Duration::from_millis(2 * FAILOVER_MS)).await;

    let restarted = Instant::now();
    let wh = c.witness().spawn().await;
    assert_eq!(wh.clusters, 1, "the witness restarted without its file");
    let h = c.wait_primary(1).await;
    assert_eq!(h.epoch, 2);
    load.wait_acks(1, 2, restarted, 30).await;

    c.nodes[0].spawn().expect("walrep restarts");
    let back = Instant::now();
    c.wait_rejoined(0, 2).await;
    let (writes, samples, conv) = finish(&c, load, back).await;
    assert_eq!(conv.primary, 1);
    if let Some(s) = first_sample_breaking(
        &samples,
        1,
        |s| s.at < restarted,
        |h| h.epoch == 1 && !h.writable,
    ) {
        panic!(
            "n2 failed over while the witness was down ({:?} after the primary's kill): {:?}",
            s.at.saturating_duration_since(fault),
            s.health
        );
    }
    if let Some(s) = first_sample_breaking(&samples, 0, |s| s.at >= witness_down, |h| !h.solo) {
        panic!("n1 went solo without the witness: {:?}", s.health);
    }
    g2_nothing_acked_lost(&c, 1, &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            // From the witness's restart: until then no failover may happen.
            pause: Some(write_pause(&writes, fault, back)),
            ..Figures::of(&conv).with_failover(&writes, restarted, 1)
        },
    );
}

/// The witness restarted from its file, then from nothing (its data dir
/// wiped), while the pair runs at epoch 2 (after a first failover):
/// replication goes on in sync throughout, the register is rebuilt from the
/// nodes at their epoch (2, not the 1 a stale node could propose), and a
/// SIGKILL of the primary then fails over as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_restarted_from_its_file_or_from_nothing_keeps_the_pair_in_sync_and_failing_over()
 {
    let mut c = Cluster::with_witness("arbiter_witness_restarts", &[]).await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 30).await;
    let mut figures = Figures::default();

    // A first failover, so the nodes hold epoch 2.
    let (fault, _) = fail_over_and_rejoin(&mut c, &load, 0, 1, 2).await;
    figures
        .failovers
        .push(failover_time(&load.writes(), fault, 1));

    // From here until the last failover: in sync, n2 primary at epoch 2.
    let steady = Instant::now();
    // Restarted from its file.
    c.witness().kill();
    both_see_the_witness(&c, false).await;
    load.wait_acks(1, 2, Instant::now(), 20).await;
    let wh = c.witness().spawn().await;
    assert_eq!(wh.clusters, 1, "the witness did not read its file");
    both_see_the_witness(&c, true).await;
    load.wait_acks(1, 2, Instant::now(), 20).await;

    // Restarted from nothing: the register is rebuilt from the nodes.
    let before = c.health(1).await.expect("n2 answers");
    let old_version = register(&before).expect("n2 knows the register").version;
    c.witness().kill_and_wipe();
    load.wait_acks(1, 2, Instant::now(), 20).await;
    c.witness().spawn().await;
    let wh = c
        .witness()
        .wait_health("the register rebuilt from the nodes", |h| h.clusters == 1)
        .await;
    assert!(wh.swaps >= 1, "{wh:?}");
    // Its primary puts the standby back into the (rebuilt, empty) sync set.
    let n2 = c
        .wait_or_show_evidence(1, "the rebuilt register in sync", |h| {
            register(h).is_some_and(|r| {
                r.epoch == h.epoch && r.sync_set == ["n1"] && r.primary.as_deref() == Some("n2")
            })
        })
        .await;
    let n1 = c.wait_rejoined(0, 2).await;
    let rebuilt = c.witness.as_ref().unwrap().register("test").await;
    assert_eq!(
        (
            rebuilt.epoch.0,
            rebuilt.primary.as_ref().map(|p| p.0.as_str())
        ),
        (2, Some("n2")),
        "rebuilt below the nodes' epoch: {rebuilt:?}"
    );
    // It continues above every version the nodes saw, so no swap based on
    // the lost register can match one of its versions.
    assert!(
        rebuilt.version > old_version,
        "rebuilt at version {}, not above the {old_version} the nodes saw",
        rebuilt.version
    );
    assert_eq!((n2.epoch, n1.epoch), (2, 2));
    assert_eq!(
        register(&n2).map(|r| r.version),
        Some(rebuilt.version),
        "n2 holds another register than the witness: {n2:?} / {rebuilt:?}"
    );
    load.wait_acks(1, 2, Instant::now(), 20).await;
    let steady_end = Instant::now();

    // A failover as usual.
    let (fault, back) = fail_over_and_rejoin(&mut c, &load, 1, 0, 3).await;
    let (writes, samples, conv) = finish(&c, load, back).await;
    assert_eq!((conv.primary, conv.reports[0].epoch), (0, 3));
    let during = |s: &Sample| s.sent >= steady && s.at <= steady_end;
    if let Some(s) = first_sample_breaking(&samples, 1, during, |h| {
        is_writable_primary(h) && !h.solo && h.epoch == 2
    }) {
        panic!(
            "n2 stopped being the primary in sync at epoch 2 while the witness restarted: {:?}",
            s.health
        );
    }
    if let Some(s) =
        first_sample_breaking(&samples, 0, during, |h| h.role == "standby" && h.epoch == 2)
    {
        panic!("n1 left its standby role at epoch 2: {:?}", s.health);
    }
    g2_nothing_acked_lost(&c, 0, &writes).await;
    figures.failovers.push(failover_time(&writes, fault, 2));
    figures.pause = Some(write_pause(&writes, steady, steady_end));
    figures.rewound = conv.reports[1].rewound_records;
    figures.converge = Some(conv.took);
    report(&c, &writes, &figures);
}

/// The witness restarted on an older copy of its file (a machine rolled
/// back to a snapshot): the copy names n1 primary of epoch 1 with n2 in
/// the sync set, while the pair has since failed over to n2 (epoch 2).
/// The nodes' calls report versions above the copy's, so the witness
/// forgets it and the primary rebuilds the register above every version
/// they saw (the copy, swapped up to epoch 2 as a register behind, would
/// have stayed below). The pair stays in sync and a failover works after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_restarted_on_an_older_copy_of_its_file_forgets_it_and_the_register_is_rebuilt()
{
    let mut c = Cluster::with_witness("arbiter_witness_older_copy", &[]).await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 30).await;
    let file = c.witness().data_dir.join("registers");
    let copied = c.witness.as_ref().unwrap().register("test").await;
    let old_copy = std::fs::read(&file).expect("the witness's file");

    // The register moves on: a failover, and n1 back in the sync set.
    fail_over_and_rejoin(&mut c, &load, 0, 1, 2).await;
    let n2 = c
        .wait_or_show_evidence(1, "n1 back in the sync set", |h| {
            register(h).is_some_and(|r| r.epoch == 2 && r.sync_set == ["n1"])
        })
        .await;
    let before = register(&n2).expect("n2 knows the register").version;
    assert!(before > copied.version, "{before} / {copied:?}");

    // The older copy comes back.
    c.witness().kill();
    std::fs::write(&file, &old_copy).expect("the older copy written back");
    let wh = c.witness().spawn().await;
    assert_eq!(wh.clusters, 1, "the witness did not read the copy");
    c.wait_or_show_evidence(1, "the register rebuilt above what n2 saw", |h| {
        register(h).is_some_and(|r| {
            r.version > before && r.epoch == 2 && r.primary.as_deref() == Some("n2")
        })
    })
    .await;
    // The witness holds it (the primary may have swapped n1 back in since).
    let rebuilt = c.witness.as_ref().unwrap().register("test").await;
    assert!(
        rebuilt.version > before
            && rebuilt.epoch.0 == 2
            && rebuilt.primary.as_ref().map(|p| p.0.as_str()) == Some("n2"),
        "{rebuilt:?}"
    );
    let metrics = walrep_daemon::client::HttpClient::new(&c.witness().http)
        .with_timeout(Duration::from_secs(2))
        .request(hyper::Method::GET, "/metrics", bytes::Bytes::new())
        .await
        .expect("the witness's /metrics");
    let metrics = String::from_utf8_lossy(&metrics.body);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("walrep_witness_registers_went_back_total ") && !l.ends_with(" 0")
        ),
        "the witness did not count the register it forgot:\n{metrics}"
    );
    load.wait_acks(1, 2, Instant::now(), 20).await;
    c.wait_or_show_evidence(1, "n1 in the rebuilt sync set", |h| {
        register(h).is_some_and(|r| r.sync_set == ["n1"])
    })
    .await;

    // A failover as usual.
    let (fault, back) = fail_over_and_rejoin(&mut c, &load, 1, 0, 3).await;
    let (writes, _samples, conv) = finish(&c, load, back).await;
    assert_eq!((conv.primary, conv.reports[0].epoch), (0, 3));
    g2_nothing_acked_lost(&c, 0, &writes).await;
    let mut figures = Figures::default();
    figures.failovers.push(failover_time(&writes, fault, 2));
    figures.converge = Some(conv.took);
    report(&c, &writes, &figures);
}

/// Both nodes started as primary on fresh data directories with the
/// witness: the create swap decides; the loser follows the winner and
/// acknowledges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_witness_two_fresh_primaries_leave_exactly_one_taking_writes() {
    let c = Cluster::start_with(
        "arbiter_two_fresh_primaries",
        Setup {
            witness: true,
            both_primary: true,
            ..Setup::default()
        },
    )
    .await;
    let started = Instant::now();
    let load = Load::start(&c, &writers(2, &[0, 1]));
    let deadline = Instant::now() + WAIT;
    let winner = loop {
        let (a, b) = (c.health(0).await, c.health(1).await);
        if let (Some(a), Some(b)) = (&a, &b) {
            if is_writable_primary(a) && is_streaming_standby(b) {
                break 0;
            }
            if is_writable_primary(b) && is_streaming_standby(a) {
                break 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no primary with its standby within {WAIT:?}:\nn1: {a:?}\nn2: {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let loser = 1 - winner;
    load.wait_acks(winner, 1, started, 50).await;

    let done = Instant::now();
    let (writes, samples, conv) = finish(&c, load, done).await;
    assert_eq!((conv.primary, conv.reports[winner].epoch), (winner, 1));
    let by_loser = writes
        .iter()
        .filter(|w| w.node == loser && w.acked().is_some())
        .count();
    assert_eq!(
        by_loser, 0,
        "{} lost the create but acknowledged",
        NAMES[loser]
    );
    if let Some(s) = first_sample_breaking(&samples, loser, |_| true, |h| !h.writable) {
        panic!("{} reported writable: {:?}", NAMES[loser], s.health);
    }
    assert!(
        log_says(
            &c.nodes[loser],
            "the arbiter made the peer the first primary of this cluster"
        ),
        "{} did not step down for the register",
        NAMES[loser]
    );
    let named = register(&conv.reports[winner]).and_then(|r| r.primary.clone());
    assert_eq!(named.as_deref(), Some(NAMES[winner]));
    g2_nothing_acked_lost(&c, winner, &writes).await;
    report(&c, &writes, &Figures::of(&conv));
}
