//! A seeded schedule of faults: partitions (one-way too), stalls, latency,
//! loss, crashes with restart. Printed with a failing seed so the run can be
//! replayed exactly.

use super::cluster::NODES;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kinds {
    /// Crashes and latency only: no partition.
    CrashesOnly,
    All,
}

#[derive(Clone, Debug)]
pub enum Action {
    Partition,
    Repair,
    PartitionOneway {
        from: &'static str,
        to: &'static str,
    },
    RepairOneway {
        from: &'static str,
        to: &'static str,
    },
    /// Messages between the nodes are held (a stalled link), then released.
    Hold,
    Release,
    Latency(Duration),
    /// The link partitions at random with this probability per tick (and
    /// heals at the builder's repair rate): a flapping link.
    Flap(f64),
    Steady,
    Crash(&'static str),
    Restart(&'static str),
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
/// while; faults do not overlap so each is undone by its own event.
pub fn generate(seed: u64, kinds: Kinds, count: usize, window: Duration) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut t = Duration::from_secs(1);
    for _ in 0..count {
        t += ms(&mut rng, 100, 1500);
        if t >= window {
            break;
        }
        let lasting = ms(&mut rng, 200, 3000);
        let node = NODES[rng.random_range(0..2)];
        let other = if node == NODES[0] { NODES[1] } else { NODES[0] };
        let choice = match kinds {
            Kinds::CrashesOnly => rng.random_range(0..3),
            Kinds::All => rng.random_range(0..7),
        };
        let (start, end) = match choice {
            0 => (Action::Crash(node), Action::Restart(node)),
            // Latency beyond the RPC deadlines is a partition in effect, so
            // the crash-only schedule keeps it well below them.
            1 if kinds == Kinds::CrashesOnly => (
                Action::Latency(ms(&mut rng, 2, 30)),
                Action::Latency(Duration::from_millis(1)),
            ),
            1 => (
                Action::Latency(ms(&mut rng, 5, 300)),
                Action::Latency(Duration::from_millis(1)),
            ),
            2 => (Action::Crash(node), Action::Restart(node)),
            3 => (Action::Partition, Action::Repair),
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
            5 => (Action::Hold, Action::Release),
            _ => (Action::Flap(rng.random_range(0.001..0.02)), Action::Steady),
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

pub fn apply(sim: &mut turmoil::Sim<'_>, action: &Action) {
    let [a, b] = NODES;
    match *action {
        Action::Partition => sim.partition(a, b),
        Action::Repair => sim.repair(a, b),
        Action::PartitionOneway { from, to } => sim.partition_oneway(from, to),
        Action::RepairOneway { from, to } => sim.repair_oneway(from, to),
        Action::Hold => sim.hold(a, b),
        Action::Release => sim.release(a, b),
        Action::Latency(d) => sim.set_link_latency(a, b, d),
        Action::Flap(rate) => sim.set_link_fail_rate(a, b, rate),
        Action::Steady => {
            sim.set_link_fail_rate(a, b, 0.0);
            sim.repair(a, b);
        }
        Action::Crash(n) => sim.crash(n),
        Action::Restart(n) => sim.bounce(n),
    }
}
