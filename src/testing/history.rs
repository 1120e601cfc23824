//! One checker for the histories that fault tests record, whatever ran them
//! (the deterministic simulation, real processes under chaos): what the
//! clients saw acknowledged, what the nodes said they were, and where they
//! ended. [`History::check`] names every broken guarantee of DESIGN.md it
//! finds, with the write, node and epoch involved:
//!
//! - G1, one writer per epoch: at most one node acknowledges writes or
//!   reports itself a writable primary in an epoch; no two writes are
//!   acknowledged as the same record `(lsn, epoch)`; a node's epoch never
//!   goes down; a node acknowledges nothing in an epoch once it reported a
//!   newer one.
//! - G2, no acknowledged write lost: the final primary holds every
//!   acknowledged write with its value (only when the run promises it).
//! - G4, convergence: one primary and standbys at the same epoch, all of
//!   them having applied everything, with equal state hashes.
//!
//! It speaks only domain types; each suite translates what it observed.

use crate::{Epoch, Lsn, NodeId, RoleKind};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

/// A write a client saw acknowledged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckedWrite {
    /// What the client wrote: a key unique to this write...
    pub key: String,
    /// ...and the value it must read back under it.
    pub value: Vec<u8>,
    /// The node that acknowledged it.
    pub node: NodeId,
    /// The record it was acknowledged as: its LSN...
    pub lsn: Lsn,
    /// ...and its epoch.
    pub epoch: Epoch,
    /// When the client sent it, on the run's clock (any origin, as long as
    /// [`Observation::by`] uses the same one); `None` if not known.
    pub sent: Option<Duration>,
    /// When its acknowledgement came back, on the same clock; `None` if
    /// not known.
    pub answered: Option<Duration>,
    /// The answer was a retry's (`Replicator::apply_once` recognised its
    /// request id): `lsn` and `epoch` are the original record's, which
    /// another node may have written, so G1's checks leave it out; G2's
    /// keep it.
    pub deduplicated: bool,
}

/// What a node said it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The node observed.
    pub node: NodeId,
    /// The role it reported.
    pub role: RoleKind,
    /// The epoch it reported.
    pub epoch: Epoch,
    /// Whether it accepted writes then.
    pub writable: bool,
    /// The node was in this state by then (when its answer arrived), on
    /// the clock of [`AckedWrite::sent`]; `None` if not known.
    pub by: Option<Duration>,
    /// It said it was going on without its standby (`Health::solo`).
    pub solo: bool,
}

/// Where a node ended once the faults stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinalState {
    /// The node.
    pub node: NodeId,
    /// Its role at the end.
    pub role: RoleKind,
    /// Its epoch at the end.
    pub epoch: Epoch,
    /// The last LSN its state machine applied.
    pub applied: Lsn,
    /// The last LSN in its WAL.
    pub last: Lsn,
    /// A digest of the applied state: equal states, equal hashes.
    pub state_hash: String,
    /// The value the node holds under each acknowledged key it holds
    /// (a key missing here is one it does not hold).
    pub values: BTreeMap<String, Vec<u8>>,
}

/// A broken guarantee, with what broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// G1: two nodes wrote in one epoch (acknowledged a write or reported
    /// being a writable primary).
    TwoWritersInOneEpoch {
        /// The epoch.
        epoch: Epoch,
        /// The nodes that wrote in it.
        nodes: BTreeSet<NodeId>,
    },
    /// G1: two different writes were acknowledged as one record.
    TwoWritesAsOneRecord {
        /// The record's LSN.
        lsn: Lsn,
        /// The record's epoch.
        epoch: Epoch,
        /// The keys of the two writes.
        keys: [String; 2],
    },
    /// G1: a node reported an epoch lower than one it reported before.
    EpochWentBack {
        /// The node.
        node: NodeId,
        /// The epoch it reported first.
        from: Epoch,
        /// The lower epoch it reported later.
        to: Epoch,
    },
    /// G1: a node acknowledged a write in `epoch` sent after it had
    /// reported the newer `known`.
    AckedInAnOldEpoch {
        /// The write's key.
        key: String,
        /// The node that acknowledged it.
        node: NodeId,
        /// The epoch it was acknowledged in.
        epoch: Epoch,
        /// The newer epoch the node had reported before.
        known: Epoch,
    },
    /// G2: the final primary does not hold an acknowledged write (or holds
    /// another value under its key).
    AcknowledgedWriteLost {
        /// The write's key.
        key: String,
        /// The node that acknowledged it.
        node: NodeId,
        /// The LSN it was acknowledged as.
        lsn: Lsn,
        /// The epoch it was acknowledged in.
        epoch: Epoch,
        /// The final primary, which lacks it.
        primary: NodeId,
    },
    /// G4: the final states do not agree; says how.
    NotConverged(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TwoWritersInOneEpoch { epoch, nodes } => {
                write!(f, "G1: epoch {epoch} had two writers: {nodes:?}")
            }
            Violation::TwoWritesAsOneRecord { lsn, epoch, keys } => write!(
                f,
                "G1: {} and {} were both acknowledged as record ({lsn}, {epoch})",
                keys[0], keys[1]
            ),
            Violation::EpochWentBack { node, from, to } => {
                write!(f, "G1: {node} reported epoch {to} after epoch {from}")
            }
            Violation::AckedInAnOldEpoch {
                key,
                node,
                epoch,
                known,
            } => write!(
                f,
                "G1: {node} acknowledged {key} in epoch {epoch}, sent after it reported epoch {known}"
            ),
            Violation::AcknowledgedWriteLost {
                key,
                node,
                lsn,
                epoch,
                primary,
            } => write!(
                f,
                "G2: {key}, acknowledged by {node} as ({lsn}, {epoch}), is not on the final primary {primary}"
            ),
            Violation::NotConverged(how) => write!(f, "G4: {how}"),
        }
    }
}

/// Whether the run promises that acknowledged writes survive (DESIGN.md:
/// not in async mode, nor under `solo` with a true partition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every acknowledged write must be on the final primary.
    NoAcknowledgedWriteLost,
    /// Only writes a node acknowledged while it went on alone (`solo`,
    /// observed in the write's epoch) may be lost: what `on_standby_loss
    /// = solo` without an arbiter risks under a partition, and nothing
    /// more.
    OnlyWritesAcknowledgedAlone,
    /// Acknowledged writes may be lost (G2 is not checked).
    LossAllowed,
}

/// What a run recorded.
#[derive(Clone, Debug, Default)]
pub struct History {
    writes: Vec<AckedWrite>,
    observations: Vec<Observation>,
    /// Solo episodes counted by a node (`Metrics::solo_episodes`) that no
    /// observation caught (they began and ended between two): node, epoch,
    /// and by when it was known.
    solo_episodes: Vec<(NodeId, Epoch, Option<Duration>)>,
    finals: Vec<FinalState>,
    /// Nodes whose data directory was wiped, each with the number of
    /// observations recorded before: from there the node starts again at
    /// epoch 1, which is no epoch going back.
    wipes: Vec<(usize, NodeId)>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// Records a write a client saw acknowledged.
    pub fn acknowledged(&mut self, write: AckedWrite) {
        self.writes.push(write);
    }

    /// Observations of one node must be recorded in the order it was in
    /// those states.
    pub fn observed(&mut self, observation: Observation) {
        self.observations.push(observation);
    }

    /// Records that `node` lost its data directory (wiped by a test, and
    /// started again): the epochs it reports from now on start afresh.
    pub fn wiped(&mut self, node: NodeId) {
        self.wipes.push((self.observations.len(), node));
    }

    /// Records that `node` went on alone (`solo`) at `epoch`, by `by`,
    /// though no observation may show it: the node counted the episode
    /// (`Metrics::solo_episodes`) between two observations.
    pub fn went_solo(&mut self, node: NodeId, epoch: Epoch, by: Option<Duration>) {
        self.solo_episodes.push((node, epoch, by));
    }

    /// Records where a node ended; one per node, after the faults stopped.
    pub fn finished(&mut self, state: FinalState) {
        self.finals.push(state);
    }

    /// The acknowledged writes, in the order recorded.
    pub fn writes(&self) -> &[AckedWrite] {
        &self.writes
    }

    /// Every violation found, each rule's in the order of the history;
    /// G2 only if `durability` promises it, G4 only once final states are
    /// recorded.
    pub fn check(&self, durability: Durability) -> Result<(), Vec<Violation>> {
        let mut found = self.g1_violations();
        if !self.finals.is_empty() {
            if let Err(v) = converged(&self.finals) {
                found.push(v);
            }
            match durability {
                Durability::NoAcknowledgedWriteLost => found.extend(self.lost_writes()),
                Durability::OnlyWritesAcknowledgedAlone => found.extend(
                    self.lost_writes()
                        .into_iter()
                        .filter(|v| !self.acknowledged_alone(v)),
                ),
                Durability::LossAllowed => {}
            }
        }
        if found.is_empty() { Ok(()) } else { Err(found) }
    }

    /// Whether the node that acknowledged a lost write was going on alone
    /// (`solo`, in the write's epoch) while the write waited: its state
    /// when the write was sent, or any state it was seen in before the
    /// answer came back (observations come after the fact, so one up to
    /// `OBSERVED_WITHIN` after the answer counts). A write whose times are
    /// not known counts if the node was solo at any time in its epoch.
    fn acknowledged_alone(&self, lost: &Violation) -> bool {
        /// How late the observation of the state a write was answered in
        /// may come (the simulation observes after each step).
        const OBSERVED_WITHIN: Duration = Duration::from_millis(5);
        let Violation::AcknowledgedWriteLost {
            key, node, epoch, ..
        } = lost
        else {
            return false;
        };
        let write = self.writes.iter().find(|w| w.key == *key);
        // A deduplicated answer carries the original record's epoch, not
        // the one the answering node was solo in.
        let any_epoch = write.is_some_and(|w| w.deduplicated);
        let in_epoch = move |e: Epoch| any_epoch || e == *epoch;
        let seen = self.observations.iter().filter(|o| o.node == *node);
        let episodes = self
            .solo_episodes
            .iter()
            .filter(|(n, e, _)| n == node && in_epoch(*e));
        let Some((sent, answered)) = write.and_then(|w| w.sent.zip(w.answered)) else {
            return seen.filter(|o| in_epoch(o.epoch)).any(|o| o.solo) || episodes.count() > 0;
        };
        if episodes
            .filter_map(|(_, _, by)| *by)
            .any(|by| by > sent && by <= answered + OBSERVED_WITHIN)
        {
            return true;
        }
        let solo = |o: &Observation| in_epoch(o.epoch) && o.solo;
        let mut at_send = None;
        for o in seen {
            let Some(by) = o.by else { continue };
            if by <= sent {
                at_send = Some(o);
            } else if by <= answered + OBSERVED_WITHIN && solo(o) {
                return true;
            }
        }
        at_send.is_some_and(solo)
    }

    /// The G1 rules alone, cheap enough to run as the history grows.
    pub fn g1_violations(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        found.extend(self.two_writers_in_one_epoch());
        found.extend(self.two_writes_as_one_record());
        found.extend(self.epochs_going_back());
        found.extend(self.acks_in_an_old_epoch());
        found
    }

    /// G2 whatever the promise: the acknowledged writes the final primary
    /// does not hold, each as a violation (no primary at the end: G4's).
    pub fn lost_writes(&self) -> Vec<Violation> {
        let Some(primary) = self.finals.iter().find(|s| s.role == RoleKind::Primary) else {
            return Vec::new();
        };
        self.writes
            .iter()
            .filter(|w| primary.values.get(&w.key) != Some(&w.value))
            .map(|w| Violation::AcknowledgedWriteLost {
                key: w.key.clone(),
                node: w.node.clone(),
                lsn: w.lsn,
                epoch: w.epoch,
                primary: primary.node.clone(),
            })
            .collect()
    }

    fn two_writers_in_one_epoch(&self) -> Vec<Violation> {
        let mut writers: BTreeMap<Epoch, BTreeSet<NodeId>> = BTreeMap::new();
        let acks = self
            .writes
            .iter()
            .filter(|w| !w.deduplicated)
            .map(|w| (w.epoch, &w.node));
        let primaries = self
            .observations
            .iter()
            .filter(|o| o.role == RoleKind::Primary && o.writable)
            .map(|o| (o.epoch, &o.node));
        for (epoch, node) in acks.chain(primaries) {
            writers.entry(epoch).or_default().insert(node.clone());
        }
        writers
            .into_iter()
            .filter(|(_, nodes)| nodes.len() > 1)
            .map(|(epoch, nodes)| Violation::TwoWritersInOneEpoch { epoch, nodes })
            .collect()
    }

    fn two_writes_as_one_record(&self) -> Vec<Violation> {
        let mut records: BTreeMap<(Lsn, Epoch), &str> = BTreeMap::new();
        let mut found = Vec::new();
        for w in &self.writes {
            if let Some(first) = records.insert((w.lsn, w.epoch), &w.key)
                && first != w.key
            {
                found.push(Violation::TwoWritesAsOneRecord {
                    lsn: w.lsn,
                    epoch: w.epoch,
                    keys: [first.to_string(), w.key.clone()],
                });
            }
        }
        found
    }

    fn epochs_going_back(&self) -> Vec<Violation> {
        let mut highest: BTreeMap<&NodeId, Epoch> = BTreeMap::new();
        let mut found = Vec::new();
        for (i, o) in self.observations.iter().enumerate() {
            for (_, wiped) in self.wipes.iter().filter(|(at, _)| *at == i) {
                highest.remove(wiped);
            }
            let seen = highest.entry(&o.node).or_default();
            if o.epoch < *seen {
                found.push(Violation::EpochWentBack {
                    node: o.node.clone(),
                    from: *seen,
                    to: o.epoch,
                });
            }
            // A failed node's epoch binds nothing: it refuses every
            // request, and one it learned but could not persist (its disk
            // failed) is gone after its restart.
            if o.role != RoleKind::Failed {
                *seen = (*seen).max(o.epoch);
            }
        }
        found
    }

    fn acks_in_an_old_epoch(&self) -> Vec<Violation> {
        let mut found = Vec::new();
        for w in self.writes.iter().filter(|w| !w.deduplicated) {
            let Some(sent) = w.sent else { continue };
            // A failed node's epoch binds nothing (see `epochs_going_back`).
            let newer = self.observations.iter().find(|o| {
                o.node == w.node
                    && o.role != RoleKind::Failed
                    && o.epoch > w.epoch
                    && o.by.is_some_and(|by| by < sent)
            });
            if let Some(o) = newer {
                found.push(Violation::AckedInAnOldEpoch {
                    key: w.key.clone(),
                    node: w.node.clone(),
                    epoch: w.epoch,
                    known: o.epoch,
                });
            }
        }
        found
    }
}

/// G4 over the nodes' states: exactly one primary, every other node a
/// standby at its epoch, all of them having applied the highest LSN any
/// holds, with equal state hashes.
pub fn converged(states: &[FinalState]) -> Result<(), Violation> {
    let not = |how: String| Err(Violation::NotConverged(how));
    let primaries: Vec<&FinalState> = states
        .iter()
        .filter(|s| s.role == RoleKind::Primary)
        .collect();
    let [primary] = primaries[..] else {
        return not(format!("{} primaries among {states:?}", primaries.len()));
    };
    let last = states.iter().map(|s| s.last).max().unwrap_or_default();
    for s in states {
        if s.role != RoleKind::Primary && s.role != RoleKind::Standby {
            return not(format!("{} is {:?}", s.node, s.role));
        }
        if s.epoch != primary.epoch {
            return not(format!(
                "{} is at epoch {}, the primary {} at {}",
                s.node, s.epoch, primary.node, primary.epoch
            ));
        }
        if s.applied != last {
            return not(format!("{} applied {} of {last}", s.node, s.applied));
        }
        if s.state_hash != primary.state_hash {
            return not(format!(
                "{} and {} applied {last} but their state hashes differ",
                s.node, primary.node
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId::from(n)
    }

    fn ack(key: &str, n: &str, lsn: u64, epoch: u64) -> AckedWrite {
        AckedWrite {
            key: key.into(),
            value: format!("<{key}>").into_bytes(),
            node: node(n),
            lsn: Lsn(lsn),
            epoch: Epoch(epoch),
            sent: None,
            answered: None,
            deduplicated: false,
        }
    }

    fn seen(n: &str, role: RoleKind, epoch: u64, by_ms: u64) -> Observation {
        Observation {
            node: node(n),
            role,
            epoch: Epoch(epoch),
            writable: role == RoleKind::Primary,
            by: Some(Duration::from_millis(by_ms)),
            solo: false,
        }
    }

    /// `n` at `epoch` in `role`, having applied `applied` of it, holding
    /// `writes`.
    fn at_end(
        n: &str,
        role: RoleKind,
        epoch: u64,
        applied: u64,
        writes: &[&AckedWrite],
    ) -> FinalState {
        FinalState {
            node: node(n),
            role,
            epoch: Epoch(epoch),
            applied: Lsn(applied),
            last: Lsn(applied),
            state_hash: format!("hash-{applied}"),
            values: writes
                .iter()
                .map(|w| (w.key.clone(), w.value.clone()))
                .collect(),
        }
    }

    /// A failover from n1 (epoch 1) to n2 (epoch 2), both ending in sync.
    fn a_clean_failover() -> History {
        let (a, b) = (ack("a", "n1", 1, 1), ack("b", "n2", 2, 2));
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Primary, 1, 0));
        h.observed(seen("n2", RoleKind::Standby, 1, 0));
        h.acknowledged(a.clone());
        h.observed(seen("n2", RoleKind::Primary, 2, 40));
        h.acknowledged(b.clone());
        h.observed(seen("n1", RoleKind::Standby, 2, 60));
        h.finished(at_end("n1", RoleKind::Standby, 2, 2, &[&a, &b]));
        h.finished(at_end("n2", RoleKind::Primary, 2, 2, &[&a, &b]));
        h
    }

    fn went_back(n: &str, from: u64, to: u64) -> Violation {
        Violation::EpochWentBack {
            node: node(n),
            from: Epoch(from),
            to: Epoch(to),
        }
    }

    fn only(h: &History, durability: Durability) -> Violation {
        let found = h.check(durability).expect_err("a violation");
        assert_eq!(found.len(), 1, "{found:?}");
        found.into_iter().next().unwrap()
    }

    #[test]
    fn a_clean_failover_breaks_nothing() {
        assert_eq!(
            a_clean_failover().check(Durability::NoAcknowledgedWriteLost),
            Ok(())
        );
    }

    #[test]
    fn two_nodes_acknowledging_in_one_epoch_are_two_writers() {
        let mut h = a_clean_failover();
        h.acknowledged(ack("late", "n1", 3, 2));
        let v = only(&h, Durability::LossAllowed);
        assert_eq!(
            v,
            Violation::TwoWritersInOneEpoch {
                epoch: Epoch(2),
                nodes: [node("n1"), node("n2")].into()
            }
        );
        assert!(v.to_string().starts_with("G1: epoch 2"), "{v}");
    }

    #[test]
    fn two_nodes_reporting_writable_primary_in_one_epoch_are_two_writers() {
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Primary, 3, 0));
        h.observed(seen("n2", RoleKind::Primary, 3, 10));
        assert!(matches!(
            only(&h, Durability::LossAllowed),
            Violation::TwoWritersInOneEpoch {
                epoch: Epoch(3),
                ..
            }
        ));
    }

    #[test]
    fn two_writes_acknowledged_as_one_record_are_reported_by_key() {
        let mut h = History::new();
        h.acknowledged(ack("a", "n1", 7, 1));
        h.acknowledged(ack("b", "n1", 7, 1));
        assert_eq!(
            only(&h, Durability::LossAllowed),
            Violation::TwoWritesAsOneRecord {
                lsn: Lsn(7),
                epoch: Epoch(1),
                keys: ["a".into(), "b".into()]
            }
        );
    }

    #[test]
    fn an_epoch_going_back_on_a_node_is_reported() {
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Standby, 2, 0));
        h.observed(seen("n1", RoleKind::Standby, 1, 10));
        assert_eq!(only(&h, Durability::LossAllowed), went_back("n1", 2, 1));
    }

    #[test]
    fn a_wiped_node_starts_its_epochs_afresh_but_only_from_its_wipe() {
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Primary, 2, 0));
        h.observed(seen("n2", RoleKind::Standby, 2, 0));
        h.wiped(node("n1"));
        h.observed(seen("n1", RoleKind::Primary, 1, 10));
        assert_eq!(h.check(Durability::LossAllowed), Ok(()));
        // Another node's epoch going back is still one.
        h.observed(seen("n2", RoleKind::Standby, 1, 20));
        assert_eq!(only(&h, Durability::LossAllowed), went_back("n2", 2, 1));
    }

    /// A node that learned an epoch and failed to persist it (its disk
    /// failed) may report it while failed (walrep's nodes go back to the
    /// epoch on disk, but the check does not rely on it) and not after its
    /// restart: no epoch went back. A node that worked at an epoch may not
    /// forget it.
    #[test]
    fn an_epoch_a_failed_node_could_not_persist_may_be_gone_after_its_restart() {
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Primary, 3, 0));
        h.observed(seen("n1", RoleKind::Failed, 4, 10));
        h.observed(seen("n1", RoleKind::Primary, 3, 20));
        assert_eq!(h.check(Durability::LossAllowed), Ok(()));
        h.observed(seen("n1", RoleKind::Standby, 4, 30));
        h.observed(seen("n1", RoleKind::Standby, 3, 40));
        assert_eq!(only(&h, Durability::LossAllowed), went_back("n1", 4, 3));
    }

    #[test]
    fn an_ack_sent_after_the_node_reported_a_newer_epoch_is_reported() {
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Fenced, 2, 10));
        let stale = AckedWrite {
            sent: Some(Duration::from_millis(20)),
            ..ack("stale", "n1", 9, 1)
        };
        h.acknowledged(stale);
        assert_eq!(
            only(&h, Durability::LossAllowed),
            Violation::AckedInAnOldEpoch {
                key: "stale".into(),
                node: node("n1"),
                epoch: Epoch(1),
                known: Epoch(2)
            }
        );
        // A newer epoch it reported only while failed (it could not persist
        // it) does not bind its next incarnation.
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Failed, 2, 10));
        h.acknowledged(AckedWrite {
            sent: Some(Duration::from_millis(20)),
            ..ack("after-restart", "n1", 9, 1)
        });
        assert_eq!(h.check(Durability::LossAllowed), Ok(()));
        // The same ack sent before the node reported the newer epoch is fine.
        let mut h = History::new();
        h.observed(seen("n1", RoleKind::Fenced, 2, 10));
        h.acknowledged(AckedWrite {
            sent: Some(Duration::from_millis(5)),
            ..ack("early", "n1", 9, 1)
        });
        assert_eq!(h.check(Durability::LossAllowed), Ok(()));
    }

    /// A retry recognised by its request id answers with the original
    /// record's epoch, which the node that answers may not have written:
    /// no second writer, and no ack in an old epoch. Still a write that
    /// must not be lost.
    #[test]
    fn a_deduplicated_retry_at_the_next_primary_is_not_a_second_writer() {
        // Write `a` (n1's record 1 in epoch 1) retried at n2, epoch 2's
        // primary, long after n2 reported epoch 2.
        let retried = AckedWrite {
            sent: Some(Duration::from_secs(3600)),
            deduplicated: true,
            ..ack("a", "n2", 1, 1)
        };
        let mut h = a_clean_failover();
        h.acknowledged(retried.clone());
        assert_eq!(h.check(Durability::NoAcknowledgedWriteLost), Ok(()));
        // The same answer, not marked a retry, is a second writer of epoch 1.
        let mut h = a_clean_failover();
        h.acknowledged(AckedWrite {
            deduplicated: false,
            ..retried
        });
        assert!(h.check(Durability::NoAcknowledgedWriteLost).is_err());
        // A retried write the cluster lost is still lost.
        let mut not_kept = a_clean_failover();
        not_kept.acknowledged(AckedWrite {
            deduplicated: true,
            ..ack("missing", "n2", 3, 1)
        });
        assert!(not_kept.check(Durability::NoAcknowledgedWriteLost).is_err());
    }

    #[test]
    fn an_acknowledged_write_missing_from_the_final_primary_is_lost() {
        let mut h = a_clean_failover();
        let gone = ack("gone", "n2", 3, 2);
        h.acknowledged(gone);
        let v = only(&h, Durability::NoAcknowledgedWriteLost);
        assert_eq!(
            v,
            Violation::AcknowledgedWriteLost {
                key: "gone".into(),
                node: node("n2"),
                lsn: Lsn(3),
                epoch: Epoch(2),
                primary: node("n2")
            }
        );
        assert!(v.to_string().starts_with("G2"), "{v}");
        // Where loss is allowed the check passes, and the loss is still told.
        assert_eq!(h.check(Durability::LossAllowed), Ok(()));
        assert_eq!(h.lost_writes(), vec![v.clone()]);
        // Where only writes acknowledged alone may be lost, this one (n2
        // was never seen solo) is a violation...
        assert_eq!(only(&h, Durability::OnlyWritesAcknowledgedAlone), v);
        // ...unless n2 went on alone in its epoch; solo in another epoch
        // does not count.
        let mut elsewhere = h.clone();
        elsewhere.observed(Observation {
            solo: true,
            ..seen("n2", RoleKind::Primary, 3, 80)
        });
        assert_eq!(only(&elsewhere, Durability::OnlyWritesAcknowledgedAlone), v);
        let mut solo_later = h.clone();
        h.observed(Observation {
            solo: true,
            ..seen("n2", RoleKind::Primary, 2, 80)
        });
        assert_eq!(h.check(Durability::OnlyWritesAcknowledgedAlone), Ok(()));
        // With its times known, only a solo stretch while the write waited
        // counts: not one that began after its answer.
        solo_later.observed(Observation {
            solo: true,
            ..seen("n2", RoleKind::Primary, 2, 500)
        });
        let mut timed = History::new();
        for o in &solo_later.observations {
            timed.observed(o.clone());
        }
        for w in &solo_later.writes {
            timed.acknowledged(AckedWrite {
                sent: Some(Duration::from_millis(45)),
                answered: Some(Duration::from_millis(60)),
                ..w.clone()
            });
        }
        for f in &solo_later.finals {
            timed.finished(f.clone());
        }
        assert_eq!(only(&timed, Durability::OnlyWritesAcknowledgedAlone), v);
        // An episode no observation caught, counted by the node before the
        // answer: alone too.
        let mut counted = timed.clone();
        counted.went_solo(node("n2"), Epoch(2), Some(Duration::from_millis(61)));
        assert_eq!(
            counted.check(Durability::OnlyWritesAcknowledgedAlone),
            Ok(())
        );
        // Solo when it was sent, or seen solo before the answer: alone.
        let mut alone = timed.clone();
        alone.observed(Observation {
            solo: true,
            ..seen("n2", RoleKind::Primary, 2, 55)
        });
        assert_eq!(alone.check(Durability::OnlyWritesAcknowledgedAlone), Ok(()));
    }

    #[test]
    fn a_write_read_back_with_another_value_is_lost() {
        let mut h = History::new();
        let a = ack("a", "n1", 1, 1);
        let mut end = at_end("n1", RoleKind::Primary, 1, 1, &[&a]);
        end.values.insert("a".into(), b"something else".to_vec());
        h.acknowledged(a);
        h.finished(end);
        assert!(matches!(
            only(&h, Durability::NoAcknowledgedWriteLost),
            Violation::AcknowledgedWriteLost { .. }
        ));
    }

    #[test]
    fn final_states_that_differ_have_not_converged() {
        let standby = |applied, hash: &str, epoch, role| FinalState {
            state_hash: hash.into(),
            ..at_end("n1", role, epoch, applied, &[])
        };
        let primary = at_end("n2", RoleKind::Primary, 2, 2, &[]);
        for (case, states) in [
            (
                "behind",
                vec![standby(1, "hash-2", 2, RoleKind::Standby), primary.clone()],
            ),
            (
                "other state",
                vec![standby(2, "other", 2, RoleKind::Standby), primary.clone()],
            ),
            (
                "older epoch",
                vec![standby(2, "hash-2", 1, RoleKind::Standby), primary.clone()],
            ),
            (
                "two primaries",
                vec![standby(2, "hash-2", 2, RoleKind::Primary), primary.clone()],
            ),
            (
                "still fenced",
                vec![standby(2, "hash-2", 2, RoleKind::Fenced), primary.clone()],
            ),
        ] {
            let v = converged(&states).expect_err(case);
            assert!(v.to_string().starts_with("G4"), "{case}: {v}");
        }
        let mut h = a_clean_failover();
        h.finals[0].state_hash = "other".into();
        assert!(matches!(
            only(&h, Durability::LossAllowed),
            Violation::NotConverged(_)
        ));
    }
}
