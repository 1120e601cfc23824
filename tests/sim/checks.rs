//! What the simulation checks beyond the shared history checker
//! (`walrep::testing::History`, which judges G1, G2 and G4): G3, which
//! needs the live nodes, and the translation of the live nodes into the
//! history's terms.

use super::cluster::{Disk, Running};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use walrep::arbiter::Register;
use walrep::testing::MemWal;
use walrep::testing::{AckedWrite, FinalState, History, Observation, Violation};
use walrep::{
    CommitMode, Lsn, NodeId, Record, Replicator, RequestId, RoleKind, StateMachine, WalStore,
};

/// What the checks remember between steps.
#[derive(Default)]
pub struct Observed {
    /// Last applied LSN per node, with what makes a drop legitimate:
    /// (incarnation, role, snapshot resyncs, rewound records, applied).
    applied: BTreeMap<&'static str, (usize, RoleKind, u64, u64, Lsn)>,
    /// The last observation recorded per node: only changes are recorded,
    /// so the history stays small over thousands of steps.
    last_seen: BTreeMap<&'static str, Observation>,
    /// Per node, its incarnation and the solo episodes it had counted at
    /// the last step.
    solo_counted: BTreeMap<&'static str, (usize, u64)>,
    /// Per primary: its incarnation, commit position and solo episodes
    /// at the last step (`commits_on_both_disks`).
    commits: BTreeMap<&'static str, (usize, Lsn, u64)>,
    pub checks: u64,
}

/// Records in `history` what each running node says it is, if it changed
/// since the last step.
pub fn observe(
    obs: &mut Observed,
    history: &mut History,
    running: &[(&'static str, Running)],
    incarnation: &BTreeMap<&'static str, usize>,
    now: Duration,
) {
    for (name, node) in running {
        let h = node.replica.health();
        let seen = Observation {
            node: NodeId::from(*name),
            role: h.role,
            epoch: h.epoch,
            writable: h.writable,
            by: Some(now),
            solo: h.solo,
        };
        let changed = obs.last_seen.get(name).is_none_or(|last| {
            (last.role, last.epoch, last.writable, last.solo)
                != (seen.role, seen.epoch, seen.writable, seen.solo)
        });
        if changed {
            obs.last_seen.insert(name, seen.clone());
            history.observed(seen.clone());
        }
        // An episode that began and ended within the step shows in the
        // node's count only.
        let m = node.replica.metrics();
        let life = incarnation.get(name).copied().unwrap_or(0);
        let before = match obs.solo_counted.insert(name, (life, m.solo_episodes)) {
            Some((l, n)) if l == life => n,
            _ => 0,
        };
        if m.solo_episodes > before
            && !seen.solo
            && let Some(epoch) = m.last_solo_epoch
        {
            history.went_solo(NodeId::from(*name), epoch, Some(now));
        }
    }
}

/// G3: a standby applies only what it flushed, and a node's applied LSN
/// never goes back while it runs.
pub fn applied_within_flushed(
    obs: &mut Observed,
    running: &[(&'static str, Running)],
    incarnation: &BTreeMap<&'static str, usize>,
) -> Result<(), String> {
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

/// G2 as each commit happens, for a pair in a sync mode: when a primary
/// that is not solo (and counted no solo episode since the last step)
/// moves its commit position, the record there is already durable on both
/// disks (`MemWal::flushed_lsn`), from the same epoch. The end-of-run
/// check sees only what survived; this one sees a commit that ran ahead
/// of the standby even if a later fault hid it.
pub fn commits_on_both_disks(
    obs: &mut Observed,
    running: &[(&'static str, Running)],
    incarnation: &BTreeMap<&'static str, usize>,
    disks: &[(&'static str, Arc<MemWal>)],
) -> Result<(), String> {
    for (name, node) in running {
        let h = node.replica.health();
        if h.role != RoleKind::Primary {
            obs.commits.remove(name);
            continue;
        }
        let m = node.replica.metrics();
        let life = incarnation.get(name).copied().unwrap_or(0);
        let before = obs
            .commits
            .insert(name, (life, h.commit_lsn, m.solo_episodes));
        let Some((l, was, solo_episodes)) = before else {
            continue;
        };
        if l != life || h.commit_lsn <= was || h.solo || m.solo_episodes != solo_episodes {
            continue;
        }
        let at = h.commit_lsn;
        let record = |wal: &MemWal| {
            wal.read(at, 1, usize::MAX)
                .ok()
                .and_then(|r| r.first().map(|r| r.epoch))
        };
        let own = disks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, w)| w.clone());
        let Some(ours) = own.as_deref().and_then(record) else {
            continue;
        };
        for (other, wal) in disks {
            if wal.flushed_lsn() < at {
                return Err(format!(
                    "G2: {name} committed {at} at epoch {} while {other}'s disk had flushed only {}",
                    h.epoch,
                    wal.flushed_lsn()
                ));
            }
            if let Some(theirs) = record(wal)
                && theirs != ours
            {
                return Err(format!(
                    "G2: {name} committed {at} (epoch {ours}) while {other}'s disk holds epoch {theirs}'s record there"
                ));
            }
        }
    }
    Ok(())
}

/// A running node as the history's final state, holding the values it has
/// under `keys`. The applied LSN is the engine's own, read with its state
/// hash: the one the node publishes in its health may lag the engine by a
/// batch while the client writes, and the two would not match.
pub fn final_state<'k>(
    name: &'static str,
    node: &Running,
    keys: impl IntoIterator<Item = &'k String>,
) -> FinalState {
    let h = node.replica.health();
    FinalState {
        node: NodeId::from(name),
        role: h.role,
        epoch: h.epoch,
        applied: StateMachine::applied_lsn(&*node.kv),
        last: h.last_lsn,
        state_hash: format!("{:016x}", node.kv.state_hash()),
        values: keys
            .into_iter()
            .filter_map(|k| Some((k.clone(), node.kv.get(k.as_bytes())?.to_vec())))
            .collect(),
    }
}

/// G4 over the data nodes `nodes`, which must all be running: one
/// primary, the others standbys at its epoch that name it as their leader,
/// all having applied the same log to the same state.
pub fn converged(
    running: &[(&'static str, Running)],
    nodes: &[&'static str],
) -> Result<(), Violation> {
    let down: Vec<&str> = nodes
        .iter()
        .copied()
        .filter(|n| !running.iter().any(|(r, _)| r == n))
        .collect();
    if !down.is_empty() {
        return Err(Violation::NotConverged(format!("{down:?} not running")));
    }
    let states: Vec<FinalState> = running
        .iter()
        .map(|(name, node)| final_state(name, node, []))
        .collect();
    // A node neither primary nor standby first: while one is stuck, the
    // others' positions and hashes (the client still writes) say little.
    if let Some(s) = states
        .iter()
        .find(|s| s.role != RoleKind::Primary && s.role != RoleKind::Standby)
    {
        return Err(Violation::NotConverged(format!(
            "{} is {:?}",
            s.node, s.role
        )));
    }
    walrep::testing::converged(&states)?;
    let primary = states
        .iter()
        .find(|s| s.role == RoleKind::Primary)
        .map(|s| s.node.clone());
    for (name, node) in running {
        let h = node.replica.health();
        let leader = h.leader.map(|l| l.id);
        if h.role == RoleKind::Standby && leader != primary {
            return Err(Violation::NotConverged(format!(
                "the standby {name} follows {leader:?}, not the primary {primary:?}"
            )));
        }
    }
    Ok(())
}

/// G2 on every node, once they converged: each acknowledged write with
/// its value on each of them (not only on the final primary); one line
/// per node that lacks some.
pub fn held_everywhere(writes: &[AckedWrite], finals: &[FinalState]) -> Vec<String> {
    finals
        .iter()
        .filter_map(|s| {
            let lacking: Vec<&AckedWrite> = writes
                .iter()
                .filter(|w| s.values.get(&w.key) != Some(&w.value))
                .collect();
            let first = lacking.first()?;
            Some(format!(
                "G2: {} ({:?} at the end) lacks {} acknowledged writes, the first {}, acknowledged by {} as ({}, {})",
                s.node,
                s.role,
                lacking.len(),
                first.key,
                first.node,
                first.lsn,
                first.epoch
            ))
        })
        .collect()
}

/// The records of `wal` from `from` through `to`, in order.
fn records(wal: &MemWal, from: Lsn, to: Lsn) -> Result<Vec<Record>, String> {
    let mut all = Vec::new();
    let mut next = from;
    while next <= to {
        let chunk = wal
            .read(next, 4096, usize::MAX)
            .map_err(|e| format!("its log could not be read at {next}: {e}"))?;
        let Some(last) = chunk.last() else { break };
        next = last.lsn.next();
        all.extend(chunk.into_iter().filter(|r| r.lsn <= to));
    }
    Ok(all)
}

/// G7 on every node's log: no request id in two records (a retry applied
/// twice); one line per node that has one.
pub fn each_request_id_once(logs: &[(&'static str, Arc<MemWal>)]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, wal) in logs {
        let all = match records(wal, wal.first_lsn(), wal.last_lsn()) {
            Ok(all) => all,
            Err(e) => {
                found.push(format!("G7: {name}: {e}"));
                continue;
            }
        };
        let mut first_at: BTreeMap<RequestId, Lsn> = BTreeMap::new();
        let twice = all.iter().find_map(|r| {
            let earlier = first_at.insert(r.request_id?, r.lsn)?;
            Some((earlier, r.lsn))
        });
        if let Some((a, b)) = twice {
            found.push(format!(
                "G7: {name}'s log holds one request id in records {a} and {b}: a retry applied twice"
            ));
        }
    }
    found
}

/// G4 on the logs, once the nodes converged: over the range every log
/// still holds, each node's records equal the primary's (LSN, epoch,
/// payload, request id). Equal states could hide logs that differ (a
/// record under another epoch), which a later failover would misjudge.
pub fn logs_agree(primary: &str, logs: &[(&'static str, Arc<MemWal>)]) -> Vec<String> {
    let Some((_, reference)) = logs.iter().find(|(n, _)| *n == primary) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (name, wal) in logs.iter().filter(|(n, _)| *n != primary) {
        let from = reference.first_lsn().max(wal.first_lsn());
        let to = reference.last_lsn().min(wal.last_lsn());
        let (ours, theirs) = match (records(reference, from, to), records(wal, from, to)) {
            (Ok(ours), Ok(theirs)) => (ours, theirs),
            (Err(e), _) | (_, Err(e)) => {
                found.push(format!("G4: the logs of {primary} and {name}: {e}"));
                continue;
            }
        };
        let differs = ours.iter().zip(&theirs).find(|(a, b)| {
            (a.lsn, a.epoch, &a.payload, a.request_id) != (b.lsn, b.epoch, &b.payload, b.request_id)
        });
        if let Some((a, b)) = differs {
            found.push(format!(
                "G4: {name}'s record {} (epoch {}) differs from the primary {primary}'s (epoch {})",
                b.lsn, b.epoch, a.epoch
            ));
        }
    }
    found
}

/// Each data node's log, as its disk holds it now (a restart replaces a
/// disk's log with what survived).
pub fn logs(nodes: &[&'static str], disks: &[Arc<Disk>]) -> Vec<(&'static str, Arc<MemWal>)> {
    nodes
        .iter()
        .zip(disks)
        .map(|(n, d)| (*n, d.wal()))
        .collect()
}

/// What each running node holds, for a failing seed: role, epoch,
/// positions, state hash, and the keys of `written` on which it differs
/// from the primary (or from the first node, with no primary).
pub fn describe(running: &[(&'static str, Running)], written: &[String]) -> String {
    let reference = running
        .iter()
        .find(|(_, n)| n.replica.health().role == RoleKind::Primary)
        .or(running.first());
    let mut out = String::new();
    for (name, node) in running {
        let h = node.replica.health();
        out += &format!(
            "  {name}: {} epoch {} leader {:?} first {} last {} flushed {} commit {} applied {} keys {} hash {:016x}",
            h.role,
            h.epoch,
            h.leader.map(|l| l.id.0),
            h.first_lsn,
            h.last_lsn,
            h.flushed_lsn,
            h.commit_lsn,
            h.applied_lsn,
            node.kv.len(),
            node.kv.state_hash()
        );
        for s in &h.standbys {
            out += &format!(
                "; standby {} connected {} {:?} counted {} flushed {}",
                s.node_id, s.connected, s.sync_state, s.counted, s.flushed_lsn
            );
        }
        if let Some((other, r)) = reference.filter(|(other, _)| other != name) {
            let differ: Vec<&String> = written
                .iter()
                .filter(|k| node.kv.get(k.as_bytes()) != r.kv.get(k.as_bytes()))
                .collect();
            if !differ.is_empty() {
                let shown: Vec<&str> = differ.iter().take(8).map(|k| k.as_str()).collect();
                out += &format!(
                    "; differs from {other} on {} keys: {}",
                    differ.len(),
                    shown.join(" ")
                );
            }
        }
        out += "\n";
    }
    out
}

/// With the witness, once the nodes converged: its register (rebuilt by
/// the nodes if it restarted from nothing) names the primary at its
/// epoch and, where commits wait for the standbys, holds every standby
/// in the sync set again.
pub fn register_agrees(
    running: &[(&'static str, Running)],
    register: Option<Register>,
    commit: CommitMode,
) -> Result<(), String> {
    let Some(register) = register else {
        return Err("the witness holds no register".into());
    };
    let Some((primary, node)) = running
        .iter()
        .find(|(_, n)| n.replica.health().role == RoleKind::Primary)
    else {
        return Err("no primary".into());
    };
    let epoch = node.replica.health().epoch;
    if register.epoch != epoch || register.primary != Some(NodeId::from(*primary)) {
        return Err(format!(
            "the witness's register {register} does not name {primary}, primary of epoch {epoch}"
        ));
    }
    if commit.is_sync() {
        for (name, _) in running.iter().filter(|(n, _)| n != primary) {
            if !register.sync_set.contains(&NodeId::from(*name)) {
                return Err(format!(
                    "the witness's register {register} does not hold the standby {name} in its sync set"
                ));
            }
        }
    }
    Ok(())
}
