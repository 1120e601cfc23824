//! What the load recorded, in the terms of the shared history checker
//! (`walrep::testing::History`): writes, health samples and final states
//! read over the HTTP API.

use super::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use walrep::testing::{AckedWrite, FinalState, History, Observation};
use walrep::{Epoch, Lsn, NodeId, RoleKind};
use walrep_daemon::api::HealthReport;
use walrep_daemon::client::HttpClient;

fn node_id(node: usize) -> NodeId {
    NodeId::from(NAMES[node])
}

/// The role a health report names.
fn role_kind(role: &str) -> RoleKind {
    use RoleKind::*;
    [Primary, Standby, Promoting, Fenced, Rejoining, Failed]
        .into_iter()
        .find(|r| r.as_str() == role)
        .unwrap_or_else(|| panic!("a health report names an unknown role {role:?}"))
}

/// The writes and samples as a history. Its clock starts at the first
/// instant recorded; each node's samples are in the order its sampler took
/// them.
pub fn history(writes: &[Write], samples: &[Sample]) -> History {
    let origin = writes
        .iter()
        .map(|w| w.started)
        .chain(samples.iter().map(|s| s.sent))
        .min()
        .unwrap_or_else(Instant::now);
    let mut h = History::new();
    for s in samples {
        h.observed(Observation {
            node: node_id(s.node),
            role: role_kind(&s.health.role),
            epoch: Epoch(s.health.epoch),
            writable: s.health.writable,
            by: Some(s.at - origin),
            solo: s.health.solo,
        });
    }
    for w in writes {
        if let Some((lsn, epoch)) = w.acked() {
            h.acknowledged(AckedWrite {
                key: w.key.clone(),
                value: w.value.clone().into_bytes(),
                node: node_id(w.node),
                lsn: Lsn(lsn),
                epoch: Epoch(epoch),
                sent: Some(w.started - origin),
                answered: Some(w.ended - origin),
                // The chaos clients send no request ids.
                deduplicated: false,
            });
        }
    }
    h
}

/// Node `node`'s state as its health report gives it, holding the values
/// in `values`.
pub fn final_state(node: usize, h: &HealthReport, values: BTreeMap<String, Vec<u8>>) -> FinalState {
    FinalState {
        node: node_id(node),
        role: role_kind(&h.role),
        epoch: Epoch(h.epoch),
        applied: Lsn(h.applied_lsn),
        last: Lsn(h.last_lsn),
        state_hash: h.state_hash.clone(),
        values,
    }
}

/// What node `node` reads back for every acknowledged write's key.
pub async fn read_back(c: &Cluster, node: usize, writes: &[Write]) -> BTreeMap<String, Vec<u8>> {
    let mut client = HttpClient::new(&c.http[node]).with_timeout(Duration::from_secs(10));
    let mut values = BTreeMap::new();
    for w in writes.iter().filter(|w| w.acked().is_some()) {
        let got = client
            .get(&w.key)
            .await
            .unwrap_or_else(|e| panic!("reading {} back from {}: {e}", w.key, NAMES[node]));
        if let Some(v) = got {
            values.insert(w.key.clone(), v.to_vec());
        }
    }
    values
}

// ------------------------------------------------- the checkers themselves

/// What the load records reaches the history checker as it should: each
/// G1 rule, fed through `history`, catches what it checks.
#[test]
fn the_g1_checkers_catch_what_they_check() {
    let t = Instant::now();
    let ms = |n: u64| t + Duration::from_millis(n);
    let write = |key: &str, node: usize, started: u64, lsn: u64, epoch: u64| Write {
        key: key.into(),
        value: format!("<{key}>"),
        node,
        started: ms(started),
        ended: ms(started + 1),
        outcome: Outcome::Acked { lsn, epoch },
    };
    let sample = |node: usize, at: u64, epoch: u64, writable: bool| Sample {
        node,
        sent: ms(at),
        at: ms(at + 1),
        health: HealthReport {
            role: if writable { "primary" } else { "standby" }.into(),
            writable,
            epoch,
            ..HealthReport::default()
        },
    };
    let g1 = |writes: &[Write], samples: &[Sample]| {
        let found = history(writes, samples).g1_violations();
        assert!(found.len() <= 1, "{found:?}");
        found.into_iter().next()
    };
    let good_writes = vec![write("a", 0, 0, 1, 1), write("b", 1, 50, 2, 2)];
    let good_samples = vec![
        sample(0, 0, 1, true),
        sample(1, 0, 1, false),
        sample(0, 60, 2, false),
        sample(1, 40, 2, true),
    ];
    assert_eq!(g1(&good_writes, &good_samples), None);

    use walrep::testing::Violation::*;
    let same_record = vec![write("a", 0, 0, 1, 1), write("b", 0, 5, 1, 1)];
    assert!(matches!(
        g1(&same_record, &[]),
        Some(TwoWritesAsOneRecord { .. })
    ));
    let two_writers = vec![write("a", 0, 0, 1, 2), write("b", 1, 5, 2, 2)];
    assert!(matches!(
        g1(&two_writers, &[]),
        Some(TwoWritersInOneEpoch { .. })
    ));
    let two_primaries = vec![sample(0, 0, 3, true), sample(1, 10, 3, true)];
    assert!(matches!(
        g1(&[], &two_primaries),
        Some(TwoWritersInOneEpoch { .. })
    ));
    let going_back = vec![sample(0, 0, 2, false), sample(0, 10, 1, false)];
    assert!(matches!(g1(&[], &going_back), Some(EpochWentBack { .. })));
    let stale_ack = vec![write("late", 0, 20, 9, 1)];
    let knew_newer = vec![sample(0, 10, 2, false)];
    assert!(matches!(
        g1(&stale_ack, &knew_newer),
        Some(AckedInAnOldEpoch { .. })
    ));
    // The same ack sent before the node reported the newer epoch is fine.
    let early_ack = vec![write("early", 0, 5, 9, 1)];
    assert_eq!(g1(&early_ack, &knew_newer), None);
}
