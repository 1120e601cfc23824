//! The checks run over what the load recorded. G1, G2 and G4 are judged
//! by the shared history checker (`walrep::testing::History`, fed by
//! `history.rs`); this file adds what is particular to the daemon: the
//! convergence wait, the solo rule of G2 with its `rewound/` files, the cut
//! holding, the status of refusals.

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use walrep::RoleKind;
use walrep::testing::{Durability, History, Violation, converged};
use walrep_daemon::api::HealthReport;

/// Longest time to converge once faults stop (G4's bound).
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

/// Panics with every violation of G1 in what was recorded.
pub fn check_g1(writes: &[Write], samples: &[Sample]) {
    let found = history(writes, samples).g1_violations();
    assert!(found.is_empty(), "{}", lines(&found));
}

fn lines(found: &[impl std::fmt::Display]) -> String {
    let all: Vec<String> = found.iter().map(|v| v.to_string()).collect();
    all.join("\n")
}

/// A write is acknowledged, refused with nothing written (503) or answered
/// with an unknown outcome (504), never answered with an internal error or
/// as bad input.
pub fn no_write_failed_otherwise(writes: &[Write]) {
    for w in writes {
        if let Outcome::Failed { status, error } = &w.outcome {
            assert!(
                matches!(status, 503 | 504),
                "{} on {} answered {status}: {error}",
                w.key,
                NAMES[w.node]
            );
        }
    }
}

/// What was recorded, with node `primary`'s final state (what it reads
/// back for every acknowledged key).
async fn history_ending_on(c: &Cluster, primary: usize, writes: &[Write]) -> History {
    let report = c.health(primary).await.expect("the final primary answers");
    let mut h = history(writes, &[]);
    h.finished(final_state(
        primary,
        &report,
        read_back(c, primary, writes).await,
    ));
    h
}

/// G2: the acknowledged writes that node `primary` (the final primary)
/// does not hold with their value.
pub async fn g2_lost_acked_writes(c: &Cluster, primary: usize, writes: &[Write]) -> Vec<Write> {
    let lost: BTreeSet<String> = history_ending_on(c, primary, writes)
        .await
        .lost_writes()
        .into_iter()
        .filter_map(|v| match v {
            Violation::AcknowledgedWriteLost { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    writes
        .iter()
        .filter(|w| lost.contains(&w.key))
        .cloned()
        .collect()
}

/// G2 where DESIGN.md allows no loss: node `primary` holds every
/// acknowledged write (and the rest of the history holds too).
pub async fn g2_nothing_acked_lost(c: &Cluster, primary: usize, writes: &[Write]) {
    let h = history_ending_on(c, primary, writes).await;
    if let Err(found) = h.check(Durability::NoAcknowledgedWriteLost) {
        let shown = &found[..found.len().min(5)];
        panic!("{} violations, e.g.:\n{}", found.len(), lines(shown));
    }
}

/// The final state once faults stopped: which node is primary and every
/// node's report (n1 first), when they agree.
pub struct Converged {
    pub primary: usize,
    pub reports: Vec<HealthReport>,
    pub took: Duration,
}

/// G4 (one writable primary, every other node a standby at its epoch, all
/// having applied everything, equal state hashes), with every standby
/// streaming, within `CONVERGE_WITHIN` of `since`.
pub async fn g4_converge(c: &Cluster, since: Instant) -> Converged {
    let deadline = since + CONVERGE_WITHIN;
    loop {
        let mut all = Vec::new();
        for i in 0..c.http.len() {
            all.push(c.health(i).await);
        }
        let mut last = all
            .iter()
            .enumerate()
            .map(|(i, h)| format!("{}: {h:?}", NAMES[i]))
            .collect::<Vec<_>>()
            .join("\n");
        if all.iter().all(Option::is_some) {
            let reports: Vec<HealthReport> = all.into_iter().flatten().collect();
            let states: Vec<_> = reports
                .iter()
                .enumerate()
                .map(|(i, h)| final_state(i, h, BTreeMap::new()))
                .collect();
            match converged(&states) {
                Ok(()) => {
                    let primary = states
                        .iter()
                        .position(|s| s.role == RoleKind::Primary)
                        .expect("converged: one primary");
                    let lagging = reports
                        .iter()
                        .enumerate()
                        .find(|(i, h)| *i != primary && !h.is_streaming_replica());
                    match lagging {
                        None if reports[primary].writable => {
                            return Converged {
                                primary,
                                reports,
                                took: since.elapsed(),
                            };
                        }
                        None => last = format!("not writable yet: {:?}", reports[primary]),
                        Some((_, standby)) => last = format!("not streaming yet: {standby:?}"),
                    }
                }
                Err(v) => last = format!("{v}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "G4: {} did not converge within {CONVERGE_WITHIN:?}; last:\n{last}",
            c.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// G2 under `solo` with a true partition (n1 the old primary, n2 the new
/// one): every lost acknowledged write was acknowledged by the old primary
/// in epoch 1 after it went solo (if it did; else nothing may be lost),
/// lost <= its `rewound_records`, and each lost write is in a `rewound/`
/// file. Returns the lost writes.
pub async fn g2_only_what_the_old_primary_acknowledged_alone_is_lost(
    c: &Cluster,
    writes: &[Write],
    samples: &[Sample],
    fault: Instant,
    conv: &Converged,
) -> Vec<Write> {
    let lost = g2_lost_acked_writes(c, 1, writes).await;
    let alone_from = went_solo_after(samples, 0, fault);
    for w in &lost {
        let alone_from = alone_from.unwrap_or_else(|| {
            panic!("G2: lost {w:?} though the old primary never reported going solo")
        });
        assert!(
            w.node == 0 && w.acked().is_some_and(|(_, e)| e == 1) && w.ended > alone_from,
            "G2: lost a write the solo rule does not allow (acknowledged {:?} after the cut, the old primary went solo after {:?}): {w:?}",
            w.ended.saturating_duration_since(fault),
            alone_from - fault
        );
    }
    let rewound = conv.reports[0].rewound_records;
    assert!(
        lost.len() as u64 <= rewound,
        "G4: {} acknowledged writes dropped but only {rewound} rewound records counted",
        lost.len()
    );
    let files = rewound_files(&c.data_dir(0));
    assert!(
        rewound == 0 || !files.is_empty(),
        "{rewound} records rewound but no file in rewound/"
    );
    for w in &lost {
        assert!(
            files
                .iter()
                .any(|(_, bytes)| contains(bytes, w.value.as_bytes())),
            "G4: dropped write {} is in no rewound/ file ({:?})",
            w.key,
            files.iter().map(|(p, _)| p).collect::<Vec<_>>()
        );
    }
    lost
}

/// A time before which node `node` acknowledged nothing alone since
/// `since`: when the last report of it as a primary in sync before its
/// first solo report was asked for (it goes solo once per cut). `None` if
/// it never reported going solo.
pub fn went_solo_after(samples: &[Sample], node: usize, since: Instant) -> Option<Instant> {
    let mine: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.node == node && s.sent >= since)
        .collect();
    let first_solo = mine.iter().position(|s| s.health.solo)?;
    Some(
        mine[..first_solo]
            .iter()
            .rev()
            .find(|s| s.health.role == "primary" && !s.health.solo)
            .map_or(since, |s| s.sent),
    )
}

/// The bytes of every file in `DIR/rewound/`.
pub fn rewound_files(data_dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("rewound")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Stops the load, then checks G4 and G1 over everything recorded.
/// Returns the records, the samples and the converged state.
pub async fn finish(
    c: &Cluster,
    load: Load,
    faults_ended: Instant,
) -> (Vec<Write>, Vec<Sample>, Converged) {
    let (writes, samples) = load.stop().await;
    let converged = g4_converge(c, faults_ended).await;
    check_g1(&writes, &samples);
    no_write_failed_otherwise(&writes);
    (writes, samples, converged)
}

/// The partition held: the old primary (n1) did not report a newer epoch
/// than 1 before the link healed, so nothing went around the proxies.
pub fn the_cut_held(samples: &[Sample], healed: Instant) {
    if let Some(s) = samples
        .iter()
        .find(|s| s.node == 0 && s.at < healed && s.health.epoch > 1)
    {
        panic!(
            "n1 reported epoch {} {:?} before the link healed: the partition leaked",
            s.health.epoch,
            healed - s.at
        );
    }
}
