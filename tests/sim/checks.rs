//! The invariants, one small function each. A violation is an `Err` naming
//! the guarantee and what broke it.

use super::cluster::Running;
use std::collections::BTreeMap;
use walrep::{Epoch, Lsn, Replicator, RoleKind};

/// What the client learned of one write.
#[derive(Clone, Debug)]
pub enum Outcome {
    Acked {
        node: &'static str,
        lsn: Lsn,
        epoch: Epoch,
    },
    /// Refused or timed out: it may or may not have happened.
    NotAcked,
}

#[derive(Clone, Debug)]
pub struct Write {
    pub key: String,
    pub value: String,
    pub outcome: Outcome,
}

/// What the checker remembers between steps.
#[derive(Default)]
pub struct Observed {
    /// Highest epoch each node has shown (it is persisted, so restarts
    /// must not lower it).
    epochs: BTreeMap<&'static str, Epoch>,
    /// Last applied LSN per node, with what makes a drop legitimate:
    /// (incarnation, role, snapshot resyncs, rewound records, applied).
    applied: BTreeMap<&'static str, (usize, RoleKind, u64, u64, Lsn)>,
    pub checks: u64,
    writes_seen: usize,
    writer: BTreeMap<Epoch, &'static str>,
    records: BTreeMap<(Lsn, Epoch), String>,
}

pub type Violation = String;

/// G1: no two nodes acknowledged writes in the same epoch, and no two
/// writes were acknowledged as the same record `(lsn, epoch)`.
/// Looks only at writes it has not seen before.
pub fn one_writer_per_epoch(obs: &mut Observed, writes: &[Write]) -> Result<(), Violation> {
    for w in &writes[obs.writes_seen.min(writes.len())..] {
        obs.writes_seen += 1;
        if let Outcome::Acked { node, epoch, lsn } = w.outcome {
            if let Some(other) = obs.writer.insert(epoch, node)
                && other != node
            {
                return Err(format!(
                    "G1: both {other} and {node} acknowledged writes in epoch {epoch}"
                ));
            }
            if let Some(other) = obs.records.insert((lsn, epoch), w.key.clone()) {
                return Err(format!(
                    "G1: {other} and {} both acknowledged as record ({lsn}, {epoch})",
                    w.key
                ));
            }
        }
    }
    Ok(())
}

/// Epochs never decrease on a node, across restarts too.
pub fn epochs_never_decrease(
    obs: &mut Observed,
    running: &[(&'static str, Running)],
) -> Result<(), Violation> {
    for (name, node) in running {
        let epoch = node.replica.epoch();
        let seen = obs.epochs.entry(name).or_default();
        if epoch < *seen {
            return Err(format!("epoch of {name} went from {seen} down to {epoch}"));
        }
        *seen = epoch;
    }
    Ok(())
}

/// G3: a standby applies only what it flushed, and a node's applied LSN
/// never goes back while it runs.
pub fn applied_within_flushed(
    obs: &mut Observed,
    running: &[(&'static str, Running)],
    incarnation: &BTreeMap<&'static str, usize>,
) -> Result<(), Violation> {
    for (name, node) in running {
        let h = node.replica.health();
        if h.role == RoleKind::Standby && h.applied_lsn > h.flushed_lsn {
            return Err(format!(
                "G3: standby {name} applied {} beyond its flushed {}",
                h.applied_lsn, h.flushed_lsn
            ));
        }
        let life = incarnation.get(name).copied().unwrap_or(0);
        let m = node.replica.metrics();
        let now = (
            life,
            h.role,
            m.snapshot_resyncs,
            m.rewound_records,
            h.applied_lsn,
        );
        if let Some(&(l, role, resyncs, rewound, applied)) = obs.applied.get(name)
            && (l, role, resyncs, rewound) == (now.0, now.1, now.2, now.3)
            && h.applied_lsn < applied
        {
            return Err(format!(
                "G3: {name} applied LSN went back from {applied} to {} as {role}",
                h.applied_lsn
            ));
        }
        obs.applied.insert(name, now);
    }
    Ok(())
}

/// G2: every acknowledged write is in the final state of the primary.
pub fn acknowledged_writes_survive(writes: &[Write], primary: &Running) -> Result<(), Violation> {
    let lost: Vec<&Write> = writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Acked { .. }))
        .filter(|w| primary.kv.get(w.key.as_bytes()).as_deref() != Some(w.value.as_bytes()))
        .collect();
    if let Some(first) = lost.first() {
        return Err(format!(
            "G2: {} acknowledged writes lost, first {} ({:?})",
            lost.len(),
            first.key,
            first.outcome
        ));
    }
    Ok(())
}

/// G4: after the faults stop, one primary, one standby, same state.
pub fn converged(running: &[(&'static str, Running)]) -> Result<(), Violation> {
    if running.len() != 2 {
        return Err(format!("G4: {} nodes running", running.len()));
    }
    let (a, b) = (&running[0].1, &running[1].1);
    let (ha, hb) = (a.replica.health(), b.replica.health());
    let roles = [ha.role, hb.role];
    if !(roles.contains(&RoleKind::Primary) && roles.contains(&RoleKind::Standby)) {
        return Err(format!("G4: roles are {roles:?}"));
    }
    if ha.epoch != hb.epoch {
        return Err(format!("G4: epochs differ: {} vs {}", ha.epoch, hb.epoch));
    }
    if ha.applied_lsn != hb.applied_lsn || ha.applied_lsn != ha.last_lsn.max(hb.last_lsn) {
        return Err(format!(
            "G4: applied {} vs {} (last {} / {})",
            ha.applied_lsn, hb.applied_lsn, ha.last_lsn, hb.last_lsn
        ));
    }
    if a.kv.state_hash() != b.kv.state_hash() {
        return Err("G4: same LSN applied but state hashes differ".into());
    }
    Ok(())
}
