//! The one line of figures each scenario prints.

use super::*;
use std::io::Write as _;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Figures {
    pub failovers: Vec<Duration>,
    /// Per failover of a cluster of three or more: from the fault until
    /// every other standby followed the new primary.
    pub followed: Vec<Duration>,
    /// The longest stretch without an acknowledged write, see
    /// [`write_pause`].
    pub pause: Option<Duration>,
    pub lost: usize,
    pub rewound: u64,
    pub converge: Option<Duration>,
}

impl Figures {
    /// What every scenario tells once converged: how long that took and
    /// how many records the final standby (of several, the one that
    /// rewound most) rewound.
    pub fn of(conv: &Converged) -> Figures {
        let standbys = conv.reports.iter().enumerate();
        Figures {
            rewound: standbys
                .filter(|(i, _)| *i != conv.primary)
                .map(|(_, h)| h.rewound_records)
                .max()
                .unwrap_or(0),
            converge: Some(conv.took),
            ..Figures::default()
        }
    }

    /// With the failover from epoch `old_epoch` that `fault` started.
    pub fn with_failover(mut self, writes: &[Write], fault: Instant, old_epoch: u64) -> Figures {
        self.failovers.push(failover_time(writes, fault, old_epoch));
        self
    }
}

/// Fault at `fault` → first write acknowledged at a higher epoch than
/// `old_epoch` (sent after the fault).
pub fn failover_time(writes: &[Write], fault: Instant, old_epoch: u64) -> Duration {
    writes
        .iter()
        .filter(|w| w.started >= fault && w.acked().is_some_and(|(_, e)| e > old_epoch))
        .map(|w| w.ended - fault)
        .min()
        .expect("no write acknowledged at a newer epoch after the fault")
}

/// The longest stretch from `from` to `to` in which no write was
/// acknowledged (by the time its answer came, on either node): from `from`
/// to the first acknowledgement, between two, from the last to `to`.
pub fn write_pause(writes: &[Write], from: Instant, to: Instant) -> Duration {
    let mut acked: Vec<Instant> = writes
        .iter()
        .filter(|w| w.acked().is_some() && w.ended >= from && w.ended <= to)
        .map(|w| w.ended)
        .collect();
    acked.sort();
    let mut longest = Duration::ZERO;
    let mut last = from;
    for at in acked.into_iter().chain([to]) {
        longest = longest.max(at - last);
        last = at;
    }
    longest
}

pub fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// One line per scenario, written straight to the process's stderr so it
/// shows with or without output capture (and nextest keeps it for the
/// chaos binary, see .config/nextest.toml).
pub fn report(c: &Cluster, writes: &[Write], f: &Figures) {
    let acked = writes.iter().filter(|w| w.acked().is_some()).count();
    let failed = writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Failed { .. }))
        .count();
    let unknown = writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Unknown(_)))
        .count();
    let failover = if f.failovers.is_empty() {
        "-".to_string()
    } else {
        f.failovers
            .iter()
            .map(|d| ms(*d))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let followed = if f.followed.is_empty() {
        String::new()
    } else {
        let all: Vec<String> = f.followed.iter().map(|d| ms(*d)).collect();
        format!(" | all followed {}", all.join(", "))
    };
    let pause = f
        .pause
        .map_or(String::new(), |d| format!(" | write pause {}", ms(d)));
    let line = format!(
        "chaos {:<28} failover {failover}{followed}{pause} | acked {acked} failed {failed} unknown {unknown} | lost {} rewound {} | converged in {}\n",
        c.name,
        f.lost,
        f.rewound,
        f.converge.map_or("-".into(), ms),
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}
