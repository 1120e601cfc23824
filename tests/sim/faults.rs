//! A seeded schedule of faults: partitions (one-way too), stalls, latency,
//! loss, crashes with restart. Printed with a failing seed so the run can be
//! replayed exactly. `TransferCuts` adds faults in reaction to what a node
//! does (a snapshot transfer under way), from the same seed. With the
//! witness (`Kinds::Arbiter`), link faults strike any two of the hosts
//! (the data nodes and the witness), crashes any one, and, more rarely,
//! one host is cut off from all others or the witness restarts from
//! nothing. `Kinds::Cluster` adds, for three data nodes, faults aimed at
//! the primary of the moment (crashed, or cut off from all others) and
//! splits of the four hosts into two halves. The pair's schedules also
//! fail a node's disk (every fsync, or a full disk) until it is repaired.

use super::cluster::{NODES, Registry, Running, WITNESS, WitnessDisk};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use walrep::{Replicator, RoleKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kinds {
    /// Crashes and latency only: no partition.
    CrashesOnly,
    All,
    /// The standby is down long enough for the primary's WAL to move past
    /// it, comes back and resyncs from a snapshot; `TransferCuts` breaks
    /// that transfer part-way.
    SnapshotCut,
    /// As `All`, over the hosts of a cluster with the witness.
    Arbiter,
    /// As `Arbiter`, and also the primary of the moment crashed or cut
    /// off, and two hosts split from the others.
    Cluster,
    /// The primary of the moment crashes, its disk is wiped, and it starts
    /// again with its own settings (n1 as primary, n2 as standby), twice,
    /// far enough apart for the pair to be in sync again in between.
    WipedPrimary,
}

#[derive(Clone, Debug)]
pub enum Action {
    Partition(&'static str, &'static str),
    Repair(&'static str, &'static str),
    PartitionOneway {
        from: &'static str,
        to: &'static str,
    },
    RepairOneway {
        from: &'static str,
        to: &'static str,
    },
    /// Messages between two hosts are held (a stalled link), then released.
    Hold(&'static str, &'static str),
    Release(&'static str, &'static str),
    Latency(&'static str, &'static str, Duration),
    /// The link partitions at random with this probability per tick (and
    /// heals at the builder's repair rate): a flapping link.
    Flap(&'static str, &'static str, f64),
    Steady(&'static str, &'static str),
    /// A host cut off from all others, then let back.
    Isolate(&'static str),
    Rejoin(&'static str),
    /// Two hosts cut off from the others (but not from each other), then
    /// let back.
    Split(&'static str, &'static str),
    Heal(&'static str, &'static str),
    Crash(&'static str),
    /// Whichever node is primary when it strikes is crashed, or cut off
    /// from all others; `Primary::resolve` names it, and its undo
    /// (`RestartPrimary`, `RejoinPrimary`) acts on the same node.
    CrashPrimary,
    RestartPrimary,
    IsolatePrimary,
    RejoinPrimary,
    /// The witness crashes and its data directory is emptied; `Restart`
    /// starts it from nothing.
    WipeWitness,
    /// Whichever node is primary when it strikes crashes and its disk is
    /// emptied (`Wipe`); `RestartPrimary` starts it again.
    WipePrimary,
    /// A data node crashes and its disk is emptied (the caller empties
    /// it: `Disk::wipe`); `Restart` starts it from nothing.
    Wipe(&'static str),
    Restart(&'static str),
    /// A data node's disk starts failing every fsync (an I/O error): the
    /// node fails for good. The main loop acts on the disk.
    FailSyncs(&'static str),
    /// A data node's disk fills: appends and meta writes fail, the log
    /// left as it was. The main loop acts on the disk.
    FillDisk(&'static str),
    /// The disk works again; a node it failed for good is restarted, as
    /// an operator (or a liveness probe) would.
    RepairDisk(&'static str),
}

impl Action {
    /// Whether it strikes the primary of the moment, or undoes that.
    pub fn aimed_at_primary(&self) -> bool {
        matches!(
            self,
            Action::CrashPrimary
                | Action::RestartPrimary
                | Action::IsolatePrimary
                | Action::RejoinPrimary
                | Action::WipePrimary
        )
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at: Duration,
    pub action: Action,
}

pub struct Schedule {
    pub events: Vec<Event>,
    /// When the last fault ends; after it the network is whole and every
    /// node runs.
    pub quiet_after: Duration,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.events {
            writeln!(f, "  {:>8.3}s  {:?}", e.at.as_secs_f64(), e.action)?;
        }
        Ok(())
    }
}

fn ms(rng: &mut StdRng, lo: u64, hi: u64) -> Duration {
    Duration::from_millis(rng.random_range(lo..hi))
}

/// Up to `count` faults between 1 s and `window`, each undone after a
/// while, on `hosts` (`Mode::hosts`); faults do not overlap so each is
/// undone by its own event, except the pair's compound ones (both nodes
/// crashed; a crash and restart during a partition), whose parts are
/// undone together.
pub fn generate(
    seed: u64,
    kinds: Kinds,
    hosts: &[&'static str],
    count: usize,
    window: Duration,
) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    if kinds == Kinds::SnapshotCut {
        // n2, the standby, is down for 5 to 9 s: the primary goes solo
        // after `sync_timeout` and writes past its WAL retention.
        let down = Duration::from_secs(1) + ms(&mut rng, 0, 1000);
        let up = down + ms(&mut rng, 5000, 9000);
        return Schedule {
            events: vec![
                Event {
                    at: down,
                    action: Action::Crash(NODES[1]),
                },
                Event {
                    at: up,
                    action: Action::Restart(NODES[1]),
                },
            ],
            quiet_after: up,
        };
    }
    if kinds == Kinds::WipedPrimary {
        // Back before the standby's failover or after it, at random; the
        // second wipe strikes whichever node is primary by then.
        let mut events = Vec::new();
        let mut t = Duration::from_secs(1) + ms(&mut rng, 0, 1000);
        for _ in 0..2 {
            events.push(Event {
                at: t,
                action: Action::WipePrimary,
            });
            t += ms(&mut rng, 50, 900);
            events.push(Event {
                at: t,
                action: Action::RestartPrimary,
            });
            t += ms(&mut rng, 5000, 6000);
        }
        let quiet_after = events.last().expect("two wipes").at;
        return Schedule {
            events,
            quiet_after,
        };
    }
    if kinds == Kinds::Arbiter || kinds == Kinds::Cluster {
        return generate_with_witness(&mut rng, hosts, kinds == Kinds::Cluster, count, window);
    }
    let mut events = Vec::new();
    let mut t = Duration::from_secs(1);
    let (a, b) = (NODES[0], NODES[1]);
    for _ in 0..count {
        t += ms(&mut rng, 100, 1500);
        if t >= window {
            break;
        }
        let lasting = ms(&mut rng, 200, 3000);
        let node = NODES[rng.random_range(0..2)];
        let other = if node == NODES[0] { NODES[1] } else { NODES[0] };
        let choice = match kinds {
            // 7: both nodes crash.
            Kinds::CrashesOnly => [0, 1, 2, 7][rng.random_range(0..4)],
            Kinds::All
            | Kinds::SnapshotCut
            | Kinds::Arbiter
            | Kinds::Cluster
            | Kinds::WipedPrimary => rng.random_range(0..11),
        };
        // Two faults at once, each undone by its own event: most losses
        // need two (DESIGN's "both crash"; a crash while cut off).
        if choice == 7 {
            // Both nodes down within 50 ms of each other, back in either
            // order.
            let (first, second) = (node, other);
            events.push(Event {
                at: t,
                action: Action::Crash(first),
            });
            events.push(Event {
                at: t + ms(&mut rng, 0, 50),
                action: Action::Crash(second),
            });
            t += lasting;
            let (up1, up2) = if rng.random_bool(0.5) {
                (first, second)
            } else {
                (second, first)
            };
            events.push(Event {
                at: t,
                action: Action::Restart(up1),
            });
            t += ms(&mut rng, 0, 300);
            events.push(Event {
                at: t,
                action: Action::Restart(up2),
            });
            continue;
        }
        if choice == 8 {
            // One node crashes and comes back while the two are cut apart.
            let crash_at = t + ms(&mut rng, 0, lasting.as_millis() as u64 / 2 + 1);
            let back_at = crash_at + ms(&mut rng, 50, lasting.as_millis() as u64 / 2 + 51);
            events.push(Event {
                at: t,
                action: Action::Partition(a, b),
            });
            events.push(Event {
                at: crash_at,
                action: Action::Crash(node),
            });
            events.push(Event {
                at: back_at,
                action: Action::Restart(node),
            });
            t = (t + lasting).max(back_at + Duration::from_millis(1));
            events.push(Event {
                at: t,
                action: Action::Repair(a, b),
            });
            continue;
        }
        let (start, end) = match choice {
            9 => (Action::FailSyncs(node), Action::RepairDisk(node)),
            10 => (Action::FillDisk(node), Action::RepairDisk(node)),
            0 => (Action::Crash(node), Action::Restart(node)),
            // Latency beyond the RPC deadlines is a partition in effect, so
            // the crash-only schedule keeps it well below them.
            1 if kinds == Kinds::CrashesOnly => (
                Action::Latency(a, b, ms(&mut rng, 2, 30)),
                Action::Latency(a, b, Duration::from_millis(1)),
            ),
            1 => (
                Action::Latency(a, b, ms(&mut rng, 5, 300)),
                Action::Latency(a, b, Duration::from_millis(1)),
            ),
            2 => (Action::Crash(node), Action::Restart(node)),
            3 => (Action::Partition(a, b), Action::Repair(a, b)),
            4 => (
                Action::PartitionOneway {
                    from: node,
                    to: other,
                },
                Action::RepairOneway {
                    from: node,
                    to: other,
                },
            ),
            5 => (Action::Hold(a, b), Action::Release(a, b)),
            _ => (
                Action::Flap(a, b, rng.random_range(0.001..0.02)),
                Action::Steady(a, b),
            ),
        };
        events.push(Event {
            at: t,
            action: start,
        });
        t += lasting;
        events.push(Event { at: t, action: end });
    }
    Schedule {
        quiet_after: t,
        events,
    }
}

/// Two different hosts of `hosts`, chosen from `rng`.
fn pair(rng: &mut StdRng, hosts: &[&'static str]) -> (&'static str, &'static str) {
    let n = hosts.len();
    let i = rng.random_range(0..n);
    let j = (i + rng.random_range(1..n)) % n;
    (hosts[i], hosts[j])
}

/// `generate` with the witness: as `Kinds::All`, each link fault on a
/// pair of the hosts and each crash of any one of them; also one host cut
/// off from all others (the primary cut from its standbys and the
/// arbiter), and, rarer, the witness restarted from nothing. With
/// `cluster` (`Kinds::Cluster`), also the primary of the moment crashed
/// or cut off, and two hosts split from the others.
fn generate_with_witness(
    rng: &mut StdRng,
    hosts: &[&'static str],
    cluster: bool,
    count: usize,
    window: Duration,
) -> Schedule {
    let mut events = Vec::new();
    let mut t = Duration::from_secs(1);
    for _ in 0..count {
        t += ms(rng, 100, 1500);
        if t >= window {
            break;
        }
        let lasting = ms(rng, 200, 3000);
        let host = hosts[rng.random_range(0..hosts.len())];
        let (a, b) = pair(rng, hosts);
        let (start, end) = if rng.random_bool(0.04) {
            (Action::WipeWitness, Action::Restart(WITNESS))
        } else {
            match rng.random_range(0..if cluster { 11 } else { 8 }) {
                0 | 1 => (Action::Crash(host), Action::Restart(host)),
                2 => (
                    Action::Latency(a, b, ms(rng, 5, 300)),
                    Action::Latency(a, b, Duration::from_millis(1)),
                ),
                3 => (Action::Partition(a, b), Action::Repair(a, b)),
                4 => (
                    Action::PartitionOneway { from: a, to: b },
                    Action::RepairOneway { from: a, to: b },
                ),
                5 => (Action::Hold(a, b), Action::Release(a, b)),
                6 => (
                    Action::Flap(a, b, rng.random_range(0.001..0.02)),
                    Action::Steady(a, b),
                ),
                7 => (Action::Isolate(host), Action::Rejoin(host)),
                8 => (Action::CrashPrimary, Action::RestartPrimary),
                9 => (Action::IsolatePrimary, Action::RejoinPrimary),
                _ => (Action::Split(a, b), Action::Heal(a, b)),
            }
        };
        events.push(Event {
            at: t,
            action: start,
        });
        t += lasting;
        events.push(Event { at: t, action: end });
    }
    Schedule {
        quiet_after: t,
        events,
    }
}

/// The node the faults aimed at the primary of the moment strike: named
/// when the fault starts, kept for its undo (faults do not overlap).
#[derive(Default)]
pub struct Primary(Option<&'static str>);

impl Primary {
    /// `action` with the primary of the moment named: the writable
    /// primary, or else a node that says it is primary; `None` when no
    /// node is (the fault is skipped, and so is its undo).
    pub fn resolve(&mut self, action: &Action, registry: &Registry) -> Option<Action> {
        let now = || {
            let running = registry.running();
            let primary = |writable: bool| {
                running.iter().find(|(_, n)| {
                    let h = n.replica.health();
                    h.role == RoleKind::Primary && (h.writable || !writable)
                })
            };
            primary(true)
                .or_else(|| primary(false))
                .map(|(name, _)| *name)
        };
        match action {
            Action::CrashPrimary => {
                self.0 = now();
                self.0.map(Action::Crash)
            }
            Action::IsolatePrimary => {
                self.0 = now();
                self.0.map(Action::Isolate)
            }
            Action::WipePrimary => {
                self.0 = now();
                self.0.map(Action::Wipe)
            }
            Action::RestartPrimary => self.0.take().map(Action::Restart),
            Action::RejoinPrimary => self.0.take().map(Action::Rejoin),
            other => Some(other.clone()),
        }
    }
}

/// Applies `action` to `sim`, whose hosts are `hosts`; `witness` is the
/// witness's directory, for `WipeWitness`. The actions aimed at the
/// primary must be resolved first (`Primary::resolve`).
pub fn apply(
    sim: &mut turmoil::Sim<'_>,
    action: &Action,
    hosts: &[&'static str],
    witness: Option<&WitnessDisk>,
) {
    let others = |host: &'static str| hosts.iter().copied().filter(move |h| *h != host);
    // The links between the half {a, b} and the rest of the hosts.
    let across = |a: &'static str, b: &'static str| {
        let rest: Vec<&'static str> = hosts
            .iter()
            .copied()
            .filter(|h| ![a, b].contains(h))
            .collect();
        [a, b]
            .into_iter()
            .flat_map(move |x| rest.clone().into_iter().map(move |y| (x, y)))
    };
    match *action {
        Action::Partition(a, b) => sim.partition(a, b),
        Action::Repair(a, b) => sim.repair(a, b),
        Action::PartitionOneway { from, to } => sim.partition_oneway(from, to),
        Action::RepairOneway { from, to } => sim.repair_oneway(from, to),
        Action::Hold(a, b) => sim.hold(a, b),
        Action::Release(a, b) => sim.release(a, b),
        Action::Latency(a, b, d) => sim.set_link_latency(a, b, d),
        Action::Flap(a, b, rate) => sim.set_link_fail_rate(a, b, rate),
        Action::Steady(a, b) => {
            sim.set_link_fail_rate(a, b, 0.0);
            sim.repair(a, b);
        }
        Action::Isolate(host) => {
            for other in others(host) {
                sim.partition(host, other);
            }
        }
        Action::Rejoin(host) => {
            for other in others(host) {
                sim.repair(host, other);
            }
        }
        Action::Split(a, b) => {
            for (x, y) in across(a, b) {
                sim.partition(x, y);
            }
        }
        Action::Heal(a, b) => {
            for (x, y) in across(a, b) {
                sim.repair(x, y);
            }
        }
        // The main loop acts on the node's disk.
        Action::FailSyncs(_) | Action::FillDisk(_) | Action::RepairDisk(_) => {}
        Action::Crash(n) | Action::Wipe(n) => {
            sim.crash(n);
            if n == WITNESS {
                witness.expect("a witness in this scenario").down();
            }
        }
        Action::WipeWitness => {
            sim.crash(WITNESS);
            witness.expect("a witness to wipe in this scenario").wipe();
        }
        Action::Restart(n) => sim.bounce(n),
        Action::CrashPrimary
        | Action::RestartPrimary
        | Action::IsolatePrimary
        | Action::RejoinPrimary
        | Action::WipePrimary => unreachable!("{action:?} must be resolved first"),
    }
}

/// What a fault that strikes in reaction to what a node does keeps: its
/// own draws from the seed, how many more it may strike, the undo of the
/// one in force and when it is due, and every action taken, for the
/// report. One strikes at a time.
pub struct Reactive {
    rng: StdRng,
    remaining: usize,
    active: Option<(Duration, Action)>,
    fired: Vec<Event>,
}

impl Reactive {
    /// Seeded from `seed` and `salt` (each kind its own draws), striking
    /// 1 to `most` times.
    fn new(seed: u64, salt: u64, most: usize) -> Reactive {
        let mut rng = StdRng::seed_from_u64(seed ^ salt);
        let remaining = rng.random_range(1..=most);
        Reactive {
            rng,
            remaining,
            active: None,
            fired: Vec::new(),
        }
    }

    /// While a fault is in force: nothing before its undo is due, then
    /// the undo. `None` when none is in force.
    fn undo_when_due(&mut self, now: Duration) -> Option<Vec<Action>> {
        let (until, _) = self.active.as_ref()?;
        if now < *until {
            return Some(Vec::new());
        }
        let (_, undo) = self.active.take().expect("checked");
        self.fired.push(Event {
            at: now,
            action: undo.clone(),
        });
        Some(vec![undo])
    }

    /// Strikes `fault` now, to be undone by `undo` at `until`.
    fn strike(
        &mut self,
        now: Duration,
        fault: Action,
        undo: Action,
        until: Duration,
    ) -> Vec<Action> {
        self.remaining -= 1;
        self.active = Some((until, undo));
        self.fired.push(Event {
            at: now,
            action: fault.clone(),
        });
        vec![fault]
    }
}

/// A fault built on `Reactive`: what the run loop and the report ask of it.
pub trait ReactiveFault {
    fn reactive(&self) -> &Reactive;

    /// Whether a fault is in force (its undo not yet applied).
    fn in_force(&self) -> bool {
        self.reactive().active.is_some()
    }

    /// The faults and their undos, as they struck.
    fn fired(&self) -> &[Event] {
        &self.reactive().fired
    }

    /// How many times it struck.
    fn struck(&self) -> usize {
        self.fired().len().div_ceil(2)
    }
}

/// Faults that strike while a node is receiving a snapshot: each time a
/// rejoining node's received bytes grew since the last cut (or since it
/// started), a cut chosen from the seed (a partition, one way or both, a
/// held link, or a crash of the receiver) lasts 0.1 to 2 s and is undone.
/// The primary keeps serving the same build while its WAL still follows
/// it, so some transfers resume and others (longer cuts) start over.
/// At most 1 to 3 cuts; every one is recorded for the report.
pub struct TransferCuts {
    reactive: Reactive,
    /// Per node: (incarnation, bytes received) at the last cut.
    baseline: BTreeMap<&'static str, (usize, u64)>,
}

impl ReactiveFault for TransferCuts {
    fn reactive(&self) -> &Reactive {
        &self.reactive
    }
}

impl TransferCuts {
    pub fn new(seed: u64) -> TransferCuts {
        TransferCuts {
            reactive: Reactive::new(seed, 0x5eed_c075, 3),
            baseline: BTreeMap::new(),
        }
    }

    /// The actions due now: the undo of the cut in force once its time
    /// came, or a new cut if a transfer is under way.
    pub fn step(
        &mut self,
        now: Duration,
        running: &[(&'static str, Running)],
        incarnation: &BTreeMap<&'static str, usize>,
    ) -> Vec<Action> {
        if let Some(undo) = self.reactive.undo_when_due(now) {
            return undo;
        }
        if self.reactive.remaining == 0 {
            return Vec::new();
        }
        for (name, node) in running {
            let life = incarnation.get(name).copied().unwrap_or(0);
            let received = node.replica.metrics().snapshot_bytes_received;
            let (seen_life, seen) = self.baseline.get(name).copied().unwrap_or((life, 0));
            let since = if seen_life == life { seen } else { 0 };
            if node.replica.health().role != RoleKind::Rejoining || received <= since {
                continue;
            }
            let other = if *name == NODES[0] {
                NODES[1]
            } else {
                NODES[0]
            };
            let rng = &mut self.reactive.rng;
            let (cut, undo) = match rng.random_range(0..4) {
                0 => (Action::Partition(name, other), Action::Repair(name, other)),
                1 => (
                    Action::PartitionOneway {
                        from: other,
                        to: name,
                    },
                    Action::RepairOneway {
                        from: other,
                        to: name,
                    },
                ),
                2 => (Action::Hold(name, other), Action::Release(name, other)),
                _ => (Action::Crash(name), Action::Restart(name)),
            };
            let lasting = ms(rng, 100, 2000);
            // A crash starts a new incarnation, whose counters start at 0.
            self.baseline.insert(name, (life, received));
            return self.reactive.strike(now, cut, undo, now + lasting);
        }
        Vec::new()
    }
}

/// Crashes that strike a node just after it rewound its log (cut the
/// records that diverged from its leader's) while it rejoins: restarted
/// 0.1 to 2 s later, it must find its log, its epoch and its restart point
/// in agreement, and rejoin again. Each time a node's count of rewound
/// records grew in its current life, the seed decides (one in two)
/// whether to crash it, at most 1 or 2 times, never while another such
/// crash is in force nor when the schedule crashes or restarts that node
/// before the restart would be due (the two would overlap).
pub struct RewindCrashes {
    reactive: Reactive,
    /// Per node: (life, records rewound) when last looked at.
    seen: BTreeMap<&'static str, (usize, u64)>,
}

impl ReactiveFault for RewindCrashes {
    fn reactive(&self) -> &Reactive {
        &self.reactive
    }
}

impl RewindCrashes {
    pub fn new(seed: u64) -> RewindCrashes {
        RewindCrashes {
            reactive: Reactive::new(seed, 0x2e71_4d0c, 2),
            seen: BTreeMap::new(),
        }
    }

    /// The actions due now: the restart once its time came, or a crash of
    /// a node that has just rewound. `pending` are the schedule's events
    /// not yet applied.
    pub fn step(
        &mut self,
        now: Duration,
        running: &[(&'static str, Running)],
        incarnation: &BTreeMap<&'static str, usize>,
        pending: &[Event],
    ) -> Vec<Action> {
        // Every node's count is looked at each step, so a rewind while a
        // crash is in force is not crashed late, once that one is undone.
        let mut rewound_now = Vec::new();
        for (name, node) in running {
            let life = incarnation.get(name).copied().unwrap_or(0);
            let rewound = node.replica.metrics().rewound_records;
            let before = match self.seen.insert(name, (life, rewound)) {
                Some((seen_life, seen)) if seen_life == life => seen,
                _ => 0,
            };
            if rewound > before {
                rewound_now.push(*name);
            }
        }
        if let Some(restart) = self.reactive.undo_when_due(now) {
            return restart;
        }
        for name in rewound_now {
            let rng = &mut self.reactive.rng;
            if self.reactive.remaining == 0 || !rng.random_bool(0.5) {
                continue;
            }
            let until = now + ms(rng, 100, 2000);
            let scheduled = pending.iter().any(|e| {
                e.at <= until + Duration::from_millis(500)
                    && matches!(e.action, Action::Crash(n) | Action::Restart(n) | Action::Wipe(n) if n == name)
            });
            if scheduled {
                continue;
            }
            return self
                .reactive
                .strike(now, Action::Crash(name), Action::Restart(name), until);
        }
        Vec::new()
    }
}
