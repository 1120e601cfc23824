//! Three data nodes and a witness (`walrep_daemon::cluster`), every write
//! waiting for both standbys (remote-flush, the default rule): each node
//! dials each other node through a proxy of its own (six directed peer
//! links) and the witness through one more. The primary killed again and
//! again, and each node cut from the two others in turn, with writers
//! following the primary throughout; nothing acknowledged may be lost, no
//! epoch may have two writers and the three nodes converge.

use crate::daemon_support::*;
use crate::harness::*;
use std::io::Write as _;
use std::time::{Duration, Instant};

const NODES: usize = 3;

async fn three_nodes(name: &'static str) -> Cluster {
    three_nodes_with(name, &[]).await
}

async fn three_nodes_with(name: &'static str, extra: &[(&'static str, &str)]) -> Cluster {
    Cluster::start_with(
        name,
        Setup {
            witness: true,
            nodes: NODES,
            extra,
            ..Setup::default()
        },
    )
    .await
}

/// A write waits for either standby; a candidate must first take the
/// other's final position and fetch what it lacks.
const ANY_1: &[(&str, &str)] = &[("sync_standbys", "ANY 1 (n1, n2, n3)")];

/// The nodes other than `i`.
fn others(i: usize) -> Vec<usize> {
    (0..NODES).filter(|&j| j != i).collect()
}

/// The one node that is neither `a` nor `b`.
fn third(a: usize, b: usize) -> usize {
    (0..NODES).find(|&j| j != a && j != b).unwrap()
}

/// A line of figures beside the scenario's `report` line.
fn say(line: String) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Nothing sent to node `node` between `from` (and a moment for the
/// proxies to stop forwarding) and `to` was acknowledged.
fn nothing_acked_by_between(writes: &[Write], node: usize, from: Instant, to: Instant, what: &str) {
    let grace = Duration::from_millis(100);
    if let Some(w) = writes
        .iter()
        .find(|w| w.node == node && w.started > from + grace && w.ended < to && w.acked().is_some())
    {
        panic!("{what}: {} acknowledged {w:?}", NAMES[node]);
    }
}

/// The first report node `node` gave between `from` and `to` that breaks
/// `ok`, if any.
fn first_sample_breaking(
    samples: &[Sample],
    node: usize,
    from: Instant,
    to: Instant,
    ok: impl Fn(&Sample) -> bool,
) -> Option<&Sample> {
    samples
        .iter()
        .find(|s| s.node == node && s.sent >= from && s.at <= to && !ok(s))
}

/// The primary SIGKILLed `KILLS` times, whichever node it is: each time one
/// of the two standbys promotes through the witness (exactly one: epoch
/// + 1), the other follows it, the killed node restarts and rejoins, and
/// the cluster is streaming with both standbys in sync before the next
/// kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_of_three_nodes_killed_repeatedly_loses_nothing_and_the_others_follow() {
    kill_the_primary_repeatedly("three_nodes_kills", &[]).await;
}

/// The same under `ANY 1 (n1, n2, n3)`: each promotion goes through the
/// quorum promotion (the candidate seals the other standby first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_any_1_the_primary_of_three_nodes_killed_repeatedly_loses_nothing() {
    kill_the_primary_repeatedly("three_nodes_kills_any_1", ANY_1).await;
}

async fn kill_the_primary_repeatedly(name: &'static str, extra: &[(&'static str, &str)]) {
    const KILLS: usize = 5;
    let mut c = three_nodes_with(name, extra).await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 50).await;
    let mut figures = Figures::default();
    let (mut primary, mut epoch) = (0, 1);
    let mut back = Instant::now();
    for kill in 1..=KILLS {
        let fault = Instant::now();
        c.nodes[primary].kill();
        let (next, h) = c.wait_new_primary(&others(primary), epoch).await;
        let promoted = fault.elapsed();
        assert_eq!(
            h.epoch,
            epoch + 1,
            "kill {kill}: one promotion per failover ({} at epoch {})",
            NAMES[next],
            h.epoch
        );
        let follower = third(primary, next);
        c.wait_follows(follower, next, epoch + 1).await;
        let followed = fault.elapsed();
        load.wait_acks(next, epoch + 1, fault, 30).await;
        let failover = failover_time(&load.writes(), fault, epoch);

        c.nodes[primary].spawn().expect("walrep restarts");
        back = Instant::now();
        // The restarted node follows the new primary, and both standbys
        // are in sync again before the next kill, so either may promote.
        c.wait_all_streaming(next, epoch + 1).await;
        let rejoined = back.elapsed();
        load.wait_acks(next, epoch + 1, back, 30).await;
        say(format!(
            "chaos {name} kill {kill}: {} killed, {} promoted to epoch {} in {}, first write acknowledged after {}, {} followed after {}, {} rejoined and in sync {} after its restart",
            NAMES[primary],
            NAMES[next],
            epoch + 1,
            ms(promoted),
            ms(failover),
            NAMES[follower],
            ms(followed),
            NAMES[primary],
            ms(rejoined),
        ));
        figures.failovers.push(failover);
        figures.followed.push(followed);
        (primary, epoch) = (next, epoch + 1);
    }
    let (writes, _, conv) = finish(&c, load, back).await;
    assert_eq!(
        (conv.primary, conv.reports[primary].epoch),
        (primary, epoch),
        "the last primary converged at the last epoch"
    );
    g2_nothing_acked_lost(&c, primary, &writes).await;
    report(
        &c,
        &writes,
        &Figures {
            failovers: figures.failovers,
            followed: figures.followed,
            ..Figures::of(&conv)
        },
    );
}

/// Each node in turn cut from the two other data nodes (both directions
/// of its four peer links) and from the witness: a node cut off from
/// everything, as by a network failure of its host. (With its witness
/// link left up, a cut standby would swap itself in as primary after
/// `failover_timeout`, 500 ms, before the primary takes it out of the sync
/// set after `sync_timeout`, 1 s, and the survivors would then follow a
/// primary they cannot reach; that race is the pair's `arbiter::` tests.)
/// A cut primary cannot take its standbys out of the sync set, so it stops
/// acknowledging, and one standby promotes through the witness while the
/// other follows it; a cut standby is taken out of the sync set by the
/// primary, which goes on with the other. Each cut lasts until the side
/// that goes on has acknowledged writes at its epoch; then the links heal
/// and the cut node rejoins, in sync, before the next cut. The order of the
/// cuts makes sure both a standby and the primary are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioning_each_node_of_three_in_turn_loses_nothing_and_converges() {
    let c = three_nodes("three_nodes_partitions").await;
    // Writers following the primary, and one pinned to each node (probes
    // that the cut node and the standbys acknowledge nothing).
    let load = Load::start(&c, &writers(3, &[0, 1, 2]));
    load.wait_acks(0, 1, Instant::now(), 50).await;
    let mut figures = Figures::default();
    let (mut primary, mut epoch) = (0, 1);
    let mut healed = Instant::now();
    let mut cuts = Vec::new();
    // n3 first, a standby then; n1 next, the primary until then; n2 last,
    // whichever it is by then. (In the order n1, n2, n3 each cut would
    // fall on the primary, the one promoted after the cut before.)
    for (round, cut) in [2, 0, 1].into_iter().enumerate() {
        let was_primary = cut == primary;
        assert!(
            round == 2 || was_primary == (round == 1),
            "round {round}: {} is not the node the order meant",
            NAMES[cut]
        );
        let fault = Instant::now();
        c.isolate(cut, LinkMode::Blackhole, true);
        if was_primary {
            let (next, h) = c.wait_new_primary(&others(cut), epoch).await;
            assert_eq!(h.epoch, epoch + 1, "one promotion for the cut primary");
            let follower = third(cut, next);
            c.wait_follows(follower, next, epoch + 1).await;
            figures.followed.push(fault.elapsed());
            // It tried to take both standbys out of the sync set, could
            // not reach the witness, and refuses.
            let refusing = c
                .wait_or_show_evidence(cut, "the cut primary refusing writes", |h| {
                    !h.writable && held_back(h).is_some()
                })
                .await;
            assert_eq!(
                refusing.epoch, epoch,
                "{} heard of epoch {} through the cut",
                NAMES[cut], refusing.epoch
            );
            load.wait_acks(next, epoch + 1, fault, 30).await;
            figures
                .failovers
                .push(failover_time(&load.writes(), fault, epoch));
            say(format!(
                "chaos three_nodes_partitions cut {}: the primary; {} promoted to epoch {}, {} followed",
                NAMES[cut],
                NAMES[next],
                epoch + 1,
                NAMES[follower]
            ));
            (primary, epoch) = (next, epoch + 1);
        } else {
            let other = third(cut, primary);
            let what = format!(
                "{} going on with {} alone in its sync set",
                NAMES[primary], NAMES[other]
            );
            let h = c
                .wait_or_show_evidence(primary, &what, |h| {
                    let counted = |n: usize| {
                        h.standbys
                            .iter()
                            .any(|s| s.id == NAMES[n] && s.counted && s.connected)
                    };
                    is_writable_primary(h)
                        && h.epoch == epoch
                        && !h.standbys.iter().any(|s| s.id == NAMES[cut] && s.counted)
                        && counted(other)
                        && register(h).is_some_and(|r| r.sync_set == [NAMES[other]])
                })
                .await;
            let took = fault.elapsed();
            load.wait_acks(primary, epoch, Instant::now(), 30).await;
            // Its primary silent for failover_timeout, the cut standby
            // asked the witness to promote it, and could not reach it.
            let held = c
                .wait_or_show_evidence(cut, "the cut standby's failover held back", |h| {
                    held_back(h).is_some()
                })
                .await;
            assert_eq!(
                (held.role.as_str(), held.epoch),
                ("standby", epoch),
                "{held:?}"
            );
            say(format!(
                "chaos three_nodes_partitions cut {}: a standby; {} took it out of the sync set after {} (solo: {})",
                NAMES[cut],
                NAMES[primary],
                ms(took),
                h.solo
            ));
        }
        healed = Instant::now();
        c.heal();
        c.wait_all_streaming(primary, epoch).await;
        cuts.push((cut, was_primary, fault, healed, epoch));
        say(format!(
            "chaos three_nodes_partitions cut {}: cut for {}, rejoined and in sync {} after healing",
            NAMES[cut],
            ms(healed - fault),
            ms(healed.elapsed())
        ));
    }
    let (writes, samples, conv) = finish(&c, load, healed).await;
    assert_eq!(
        (conv.primary, conv.reports[primary].epoch),
        (primary, epoch)
    );
    for (cut, was_primary, fault, healed, epoch_after) in cuts {
        // The cut held: nothing reached the cut node, so it learned of no
        // newer epoch, and it acknowledged nothing while cut off.
        let epoch_before = if was_primary {
            epoch_after - 1
        } else {
            epoch_after
        };
        if let Some(s) = first_sample_breaking(&samples, cut, fault, healed, |s| {
            s.health.epoch <= epoch_before
        }) {
            panic!(
                "{} reported epoch {} {:?} after being cut off, before healing: the cut leaked",
                NAMES[cut],
                s.health.epoch,
                s.at - fault
            );
        }
        if !was_primary
            && let Some(s) =
                first_sample_breaking(&samples, cut, fault, healed, |s| s.health.role == "standby")
        {
            panic!(
                "the cut standby {} left its role: {:?}",
                NAMES[cut], s.health
            );
        }
        nothing_acked_by_between(&writes, cut, fault, healed, "a node cut off from all");
    }
    g2_nothing_acked_lost(&c, primary, &writes).await;
    figures.rewound = Figures::of(&conv).rewound;
    figures.converge = Some(conv.took);
    report(&c, &writes, &figures);
}

/// Waits until some node acknowledged `n` writes sent after `since`, all
/// at one epoch; returns that node and epoch.
async fn wait_someone_goes_on(load: &Load, since: Instant, n: usize) -> (usize, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut counts = std::collections::BTreeMap::new();
        for w in load.writes().iter().filter(|w| w.started >= since) {
            if let Some((_, epoch)) = w.acked() {
                *counts.entry((w.node, epoch)).or_insert(0usize) += 1;
            }
        }
        if let Some((&(node, epoch), _)) = counts.iter().find(|(_, c)| **c >= n) {
            return (node, epoch);
        }
        assert!(
            Instant::now() < deadline,
            "no node acknowledged {n} writes at one epoch within {WAIT:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until one node is a writable primary whose standbys all stream
/// and count, the others following it at its epoch; returns it and its
/// epoch.
async fn wait_settled(c: &Cluster) -> (usize, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut all = Vec::new();
        for i in 0..NODES {
            all.push(c.health(i).await);
        }
        let primary = all
            .iter()
            .position(|h| h.as_ref().is_some_and(is_writable_primary));
        if let Some(p) = primary {
            let h = all[p].as_ref().unwrap();
            let epoch = h.epoch;
            let in_sync = h.standbys.len() == NODES - 1
                && h.standbys
                    .iter()
                    .all(|s| s.connected && s.counted && s.sync_state == "sync");
            let following = (0..NODES).filter(|&i| i != p).all(|i| {
                all[i].as_ref().is_some_and(|s| {
                    is_streaming_standby(s)
                        && s.epoch == epoch
                        && s.leader_id.as_deref() == Some(NAMES[p])
                })
            });
            if in_sync && following {
                return (p, epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}: no primary with every standby in sync within {WAIT:?}; last:\n{all:#?}",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As `partitioning_each_node_of_three_in_turn...`, but each node cut from
/// the two other data nodes only, its link to the witness left up. Who
/// goes on is then a race at the witness (a cut standby, silent primary
/// for `failover_timeout`, may swap itself in as primary before the
/// primary takes it out of the sync set after `sync_timeout`; the others
/// then stop or follow a primary they cannot reach, which goes on
/// alone), so this asserts only that some node goes on during the cut
/// and what must hold whoever it is: no acknowledged write lost, one
/// writer per epoch, and all three converged in sync once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioning_each_node_of_three_from_the_others_with_the_witness_reachable_loses_nothing()
{
    cut_each_node_with_the_witness_up("three_nodes_partitions_witness_up", &[]).await;
}

/// The same under `ANY 1 (n1, n2, n3)`, where a candidate needs the
/// other standby's position: a cut standby can no longer win at the
/// witness, so when a standby is cut the primary goes on at its epoch
/// (the majority side goes on), and when the primary is cut a standby
/// takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_any_1_a_cut_standby_never_wins_and_the_primary_goes_on() {
    cut_each_node_with_the_witness_up("three_nodes_partitions_witness_up_any_1", ANY_1).await;
}

async fn cut_each_node_with_the_witness_up(name: &'static str, extra: &[(&'static str, &str)]) {
    let quorum = !extra.is_empty();
    let c = three_nodes_with(name, extra).await;
    let load = Load::start(&c, &writers(3, &[0, 1, 2]));
    load.wait_acks(0, 1, Instant::now(), 50).await;
    let mut figures = Figures::default();
    let (mut primary, mut epoch) = (0, 1);
    let mut healed = Instant::now();
    // The primary (n1) first, then a standby not cut yet, then the last
    // node, whichever it is by then: both roles are cut at least once.
    let mut not_cut: Vec<usize> = (0..NODES).collect();
    for round in 0..NODES {
        let cut = match round {
            0 => primary,
            1 => *not_cut.iter().find(|&&i| i != primary).unwrap(),
            _ => not_cut[0],
        };
        not_cut.retain(|&i| i != cut);
        let fault = Instant::now();
        c.isolate(cut, LinkMode::Blackhole, false);
        let (went_on, at) =
            wait_someone_goes_on(&load, fault + Duration::from_millis(100), 30).await;
        let pause = first_ack_after(&load.writes(), fault, went_on, at);
        if quorum && cut != primary {
            assert_eq!(
                (NAMES[went_on], at),
                (NAMES[primary], epoch),
                "{name}: with {} cut, the primary must go on at its epoch",
                NAMES[cut]
            );
        }
        if quorum && cut == primary {
            assert!(
                at > epoch && went_on != cut,
                "{name}: a standby takes over from the cut primary"
            );
        }
        healed = Instant::now();
        c.heal();
        let (next, next_epoch) = wait_settled(&c).await;
        say(format!(
            "chaos {name} cut {} ({} at epoch {epoch}): {} went on at epoch {at} (first write acknowledged after {}); healed, {} primary at epoch {next_epoch}, all in sync {} after healing",
            NAMES[cut],
            if cut == primary {
                "the primary"
            } else {
                "a standby"
            },
            NAMES[went_on],
            ms(pause),
            NAMES[next],
            ms(healed.elapsed())
        ));
        if at > epoch {
            figures.failovers.push(pause);
        }
        (primary, epoch) = (next, next_epoch);
    }
    let (writes, _samples, conv) = finish(&c, load, healed).await;
    assert_eq!(
        (conv.primary, conv.reports[primary].epoch),
        (primary, epoch)
    );
    g2_nothing_acked_lost(&c, primary, &writes).await;
    figures.rewound = Figures::of(&conv).rewound;
    figures.converge = Some(conv.took);
    report(&c, &writes, &figures);
}

/// From `fault` to the first write node `node` acknowledged at `epoch`
/// that was sent after it.
fn first_ack_after(writes: &[Write], fault: Instant, node: usize, epoch: u64) -> Duration {
    writes
        .iter()
        .filter(|w| {
            w.node == node && w.started >= fault && w.acked().is_some_and(|(_, e)| e == epoch)
        })
        .map(|w| w.ended - fault)
        .min()
        .expect("a write acknowledged after the fault")
}

/// The killed primary restarted while it can reach only the standby that
/// followed the new primary (its links to the new primary and to the
/// witness cut): it hears of the new epoch from that standby, which does
/// not name the leader, and steps down. Once every link heals it must
/// rejoin the new primary. (Found by the repeated kills above: a restarted
/// node that learned the epoch with no leader stayed `rejoining`, asking
/// the standby it first heard from for the primary's history.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_that_hears_of_the_new_epoch_from_a_standby_rejoins_the_new_primary() {
    let mut c = three_nodes("three_nodes_rejoin_via_standby").await;
    let load = Load::start(&c, &writers(4, &[]));
    load.wait_acks(0, 1, Instant::now(), 50).await;

    // n3 must be the one to promote: n2 is n1's first `--peer`, the one
    // a node that knows of no leader asks (with n2 the new primary that
    // guess is right by luck). n2's failover paused until n3 took over.
    let mut n2 = walrep_daemon::client::HttpClient::new(&c.http[1]);
    n2.set_maintenance(true).await.expect("n2 paused");
    let fault = Instant::now();
    c.nodes[0].kill();
    let (next, h) = c.wait_new_primary(&[2], 1).await;
    assert_eq!(h.epoch, 2);
    let follower = third(0, next);
    c.wait_follows(follower, next, 2).await;
    n2.set_maintenance(false).await.expect("n2 resumed");
    load.wait_acks(next, 2, fault, 30).await;

    // n1 comes back reaching only the follower.
    c.link(0, next).set(LinkMode::Blackhole);
    c.link(next, 0).set(LinkMode::Blackhole);
    c.witness.as_ref().unwrap().links[0].set(LinkMode::Blackhole);
    c.nodes[0].spawn().expect("walrep restarts");
    let stepped_down = c
        .wait_or_show_evidence(0, "n1 stepped down to epoch 2", |h| {
            h.epoch == 2 && h.role != "primary"
        })
        .await;
    say(format!(
        "chaos three_nodes_rejoin_via_standby: n1 restarted, learned epoch 2 from {} only: role {}, leader {:?}",
        NAMES[follower], stepped_down.role, stepped_down.leader_id
    ));

    let healed = Instant::now();
    c.heal();
    c.wait_all_streaming(next, 2).await;
    say(format!(
        "chaos three_nodes_rejoin_via_standby: n1 rejoined {} and in sync {} after healing",
        NAMES[next],
        ms(healed.elapsed())
    ));
    let (writes, _, conv) = finish(&c, load, healed).await;
    assert_eq!(conv.primary, next);
    g2_nothing_acked_lost(&c, next, &writes).await;
    report(
        &c,
        &writes,
        &Figures::of(&conv).with_failover(&writes, fault, 1),
    );
}
