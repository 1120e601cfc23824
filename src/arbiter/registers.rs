//! The registers of any number of clusters and the rules a swap must pass,
//! without I/O: the witness keeps one `Registers` (and writes it to its
//! file before it answers), tests keep one in memory.

use super::{Caller, CasOutcome, Register};
use crate::types::{Epoch, NodeId};
use std::collections::BTreeMap;
use std::fmt;

/// Registers keyed by cluster id.
#[derive(Clone, Debug, Default)]
pub struct Registers {
    clusters: BTreeMap<String, Cluster>,
}

#[derive(Clone, Debug, Default)]
struct Cluster {
    register: Register,
    /// The highest epoch each node reported since this process started.
    /// Only consulted while the register does not exist: a register is
    /// created only once every member has reported, at an epoch no lower
    /// than any of them, so a witness that lost its file is rebuilt from
    /// the nodes instead of guessing.
    reported: BTreeMap<NodeId, Epoch>,
    /// The highest epoch each node reported leading (`Caller::leads`)
    /// since this process started, or was named primary of by a register
    /// this witness forgot as gone back: a register is not re-created at
    /// that epoch naming another node, whose promotion would drop what
    /// that primary acknowledged.
    led: BTreeMap<NodeId, Epoch>,
    /// The highest register version any caller reported having seen: a
    /// register created while none exists starts above it.
    seen_version: u64,
    /// The highest register version a member of the register, as it stood
    /// when it asked, reported having seen: a register below it went back.
    /// Only members count, so another cluster's node cannot make the
    /// witness forget a register.
    members_seen: u64,
    /// The highest epoch of a register forgotten as gone back, and its
    /// primary: a register rebuilt after that is never below it. It may be
    /// an epoch this witness granted since it started on the older file,
    /// which its primary may lead although no member reported it yet.
    forgotten: Option<(Epoch, Option<NodeId>)>,
    /// The last register found behind a version a member was answered,
    /// and forgotten (`Registers::take_went_back`).
    went_back: Option<WentBack>,
}

/// A register older than one a node was answered: the witness's file went
/// back (restored from an older copy, a virtual machine rolled back to a
/// snapshot, a disk that lost acknowledged writes). Every version a witness
/// answers is in its file first, so in a file that never went back no
/// register is below a version any node reports having seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WentBack {
    /// The register forgotten.
    pub stale: Register,
    /// The version the caller reported having been answered.
    pub seen_version: u64,
    /// Who reported it.
    pub by: NodeId,
}

/// Why a swap was refused whatever the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwapRefusal {
    /// A create named no members, or not the caller among them.
    CallerNotMember {
        /// Who asked.
        caller: NodeId,
    },
    /// A create came before every member reported its epoch: one of them
    /// may hold a higher epoch than the proposal.
    MembersNotHeard {
        /// The members not heard from yet.
        missing: Vec<NodeId>,
    },
    /// A create proposed an epoch below one a member reported, or below
    /// the epoch of a register this witness forgot as gone back (`by`: its
    /// primary, which may lead it).
    EpochBelowReported {
        /// The proposal's epoch.
        proposed: Epoch,
        /// The highest epoch reported.
        reported: Epoch,
        /// Who reported it.
        by: NodeId,
    },
    /// A create named a primary of an epoch another node reported leading.
    EpochLedByAnother {
        /// The proposal's epoch.
        epoch: Epoch,
        /// The node that reported leading it.
        by: NodeId,
    },
    /// A swap would move the register's epoch back.
    EpochGoesBack {
        /// The register's epoch.
        current: Epoch,
        /// The proposal's.
        proposed: Epoch,
    },
}

impl fmt::Display for SwapRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SwapRefusal::CallerNotMember { caller } => write!(
                f,
                "{caller} proposed a register whose members do not include it"
            ),
            SwapRefusal::MembersNotHeard { missing } => write!(
                f,
                "the register does not exist and members {} have not reported their epoch yet; \
                 it is created once every member has asked",
                missing
                    .iter()
                    .map(|n| n.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            SwapRefusal::EpochBelowReported {
                proposed,
                reported,
                by,
            } => write!(
                f,
                "a register at epoch {proposed} would be below epoch {reported} that {by} reported"
            ),
            SwapRefusal::EpochLedByAnother { epoch, by } => write!(
                f,
                "{by} reported leading epoch {epoch} as its primary; a register naming another primary of it would drop what {by} acknowledged"
            ),
            SwapRefusal::EpochGoesBack { current, proposed } => write!(
                f,
                "the register is at epoch {current}; a swap to epoch {proposed} would move it back"
            ),
        }
    }
}

impl Registers {
    /// No registers.
    pub fn new() -> Registers {
        Registers::default()
    }

    /// Registers as read back from a file (their reports start empty).
    pub fn from_registers(registers: impl IntoIterator<Item = (String, Register)>) -> Registers {
        Registers {
            clusters: registers
                .into_iter()
                .map(|(id, register)| {
                    let cluster = Cluster {
                        register,
                        ..Cluster::default()
                    };
                    (id, cluster)
                })
                .collect(),
        }
    }

    /// Every cluster's register, for writing to a file.
    pub fn registers(&self) -> impl Iterator<Item = (&str, &Register)> {
        self.clusters
            .iter()
            .filter(|(_, c)| c.register.exists())
            .map(|(id, c)| (id.as_str(), &c.register))
    }

    /// How many clusters have a register.
    pub fn len(&self) -> usize {
        self.registers().count()
    }

    /// Whether no cluster has a register.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a request of `node` about `cluster_id` stays within the
    /// bounds: at most `max_clusters` clusters tracked (with a register
    /// or with reports only) and `max_reporters` nodes reporting for one
    /// cluster. A known cluster and a node that already reported always
    /// are; a witness refuses the others, so no sender can grow its memory
    /// without bound.
    pub fn admits(
        &self,
        cluster_id: &str,
        node: &NodeId,
        max_clusters: usize,
        max_reporters: usize,
    ) -> bool {
        match self.clusters.get(cluster_id) {
            None => self.clusters.len() < max_clusters,
            Some(c) => c.reported.contains_key(node) || c.reported.len() < max_reporters,
        }
    }

    /// Puts every cluster's register back to what `durable` holds (a write
    /// that failed: its swaps never happened), keeping what nodes reported
    /// meanwhile. Reports only grow and are never written to a file:
    /// forgetting one (a node's newer epoch) would let a stale node
    /// re-create a lost register below it.
    pub fn roll_back_registers_to(&mut self, durable: &Registers) {
        for (id, cluster) in &mut self.clusters {
            cluster.register = durable
                .clusters
                .get(id)
                .map(|c| c.register.clone())
                .unwrap_or_default();
        }
    }

    /// The register of `cluster_id`, noting the caller's epoch.
    pub fn read(&mut self, cluster_id: &str, caller: &Caller) -> Register {
        let cluster = self.report(cluster_id, caller);
        cluster.register.clone()
    }

    /// Swaps the register of `cluster_id` to `next` (at version
    /// `expected_version + 1`) if it is at `expected_version` and the swap
    /// passes the rules. A `Swapped` answer changed `self`: the caller must
    /// make it durable before it tells anyone.
    pub fn compare_and_swap(
        &mut self,
        cluster_id: &str,
        caller: &Caller,
        expected_version: u64,
        next: &Register,
    ) -> Result<CasOutcome, SwapRefusal> {
        let cluster = self.report(cluster_id, caller);
        let current = &cluster.register;
        if current.version != expected_version {
            return Ok(CasOutcome::Conflict(current.clone()));
        }
        if current.exists() {
            if next.epoch < current.epoch {
                return Err(SwapRefusal::EpochGoesBack {
                    current: current.epoch,
                    proposed: next.epoch,
                });
            }
        } else {
            check_create(cluster, caller, next)?;
        }
        // A register lost and re-created continues above every version a
        // member still holds, so no stale swap can match one of its own.
        let base = Register {
            version: if current.exists() {
                current.version
            } else {
                cluster.seen_version
            },
            ..Register::default()
        };
        let swapped = base.successor(next);
        cluster.register = swapped.clone();
        Ok(CasOutcome::Swapped(swapped))
    }

    fn report(&mut self, cluster_id: &str, caller: &Caller) -> &mut Cluster {
        let cluster = self.clusters.entry(cluster_id.to_string()).or_default();
        let seen = cluster
            .reported
            .entry(caller.node_id.clone())
            .or_insert(caller.epoch);
        *seen = (*seen).max(caller.epoch);
        if caller.leads {
            let led = cluster
                .led
                .entry(caller.node_id.clone())
                .or_insert(caller.epoch);
            *led = (*led).max(caller.epoch);
        }
        // No register goes one swap at a time anywhere near this: a higher
        // claim comes from a bug or a hostile member, and is held to it so
        // a rebuilt register's version can never wrap to 0 ("no register",
        // which would let a second create through).
        let plausible = caller.seen_version.min(MAX_SEEN_VERSION);
        cluster.seen_version = cluster.seen_version.max(plausible);
        if cluster.register.members.contains(&caller.node_id) {
            cluster.members_seen = cluster.members_seen.max(plausible);
        }
        // A register below a version a member was answered is one the file
        // lost swaps of: its sync set may name a standby since swapped out
        // (which would promote without writes acknowledged alone), and a
        // deposed primary's stale swap may match its version. It is
        // forgotten, as a lost file's register is, and rebuilt from the
        // members by the rules of a lost register, above every version
        // reported and never below its epoch, nor naming another primary of
        // it (it may be a grant of this witness that its primary leads). The
        // caller reporting it is answered from there: its own swap never
        // meets the stale register. A register a failed write brings back
        // is forgotten again at the next call.
        if cluster.register.exists() && cluster.members_seen > cluster.register.version {
            let stale = std::mem::take(&mut cluster.register);
            if cluster
                .forgotten
                .as_ref()
                .is_none_or(|(e, _)| stale.epoch >= *e)
            {
                cluster.forgotten = Some((stale.epoch, stale.primary.clone()));
            }
            if let Some(primary) = &stale.primary {
                let led = cluster.led.entry(primary.clone()).or_insert(stale.epoch);
                *led = (*led).max(stale.epoch);
            }
            cluster.went_back = Some(WentBack {
                stale,
                seen_version: cluster.members_seen,
                by: caller.node_id.clone(),
            });
        }
        cluster
    }

    /// The register of `cluster_id` that the last request found behind a
    /// version its caller was answered, and forgot: the witness writes its
    /// file without it (so a restart does not bring it back), says so
    /// loudly and counts it.
    pub fn take_went_back(&mut self, cluster_id: &str) -> Option<WentBack> {
        self.clusters.get_mut(cluster_id)?.went_back.take()
    }
}

/// The highest version a member's report may say it saw.
const MAX_SEEN_VERSION: u64 = u64::MAX / 2;

/// The rules a create of `cluster`'s missing register must pass.
fn check_create(cluster: &Cluster, caller: &Caller, next: &Register) -> Result<(), SwapRefusal> {
    let (reported, led) = (&cluster.reported, &cluster.led);
    if !next.members.contains(&caller.node_id) {
        return Err(SwapRefusal::CallerNotMember {
            caller: caller.node_id.clone(),
        });
    }
    let missing: Vec<NodeId> = next
        .members
        .iter()
        .filter(|m| !reported.contains_key(*m))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(SwapRefusal::MembersNotHeard { missing });
    }
    // Every node that ever reported counts, members or not: a node left
    // out of the proposal may still hold the highest epoch.
    let highest = reported.iter().max_by_key(|(_, epoch)| **epoch);
    if let Some((by, &reported)) = highest
        && reported > next.epoch
    {
        return Err(SwapRefusal::EpochBelowReported {
            proposed: next.epoch,
            reported,
            by: by.clone(),
        });
    }
    // Two nodes can reach one epoch: a failover through the register the
    // witness then lost, and a planned switchover the old primary handed
    // to another node meanwhile. The one that took writes in it keeps it.
    if let Some((by, _)) = led
        .iter()
        .find(|(by, epoch)| **epoch == next.epoch && next.primary.as_ref() != Some(*by))
    {
        return Err(SwapRefusal::EpochLedByAnother {
            epoch: next.epoch,
            by: by.clone(),
        });
    }
    // A register forgotten as gone back may be a grant of this witness
    // that no member reported yet: never below it.
    if let Some((epoch, primary)) = &cluster.forgotten
        && *epoch > next.epoch
    {
        return Err(SwapRefusal::EpochBelowReported {
            proposed: next.epoch,
            reported: *epoch,
            by: primary.clone().unwrap_or_else(|| caller.node_id.clone()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(node: &str, epoch: u64) -> Caller {
        Caller::new(node, Epoch(epoch))
    }

    /// A caller at epoch 1 that says it saw the register at `version`.
    fn seen(node: &str, version: u64) -> Caller {
        Caller {
            seen_version: version,
            ..caller(node, 1)
        }
    }

    fn pair_register(epoch: u64, primary: &str) -> Register {
        Register::fresh(
            Epoch(epoch),
            &NodeId::from(primary),
            &["n1".into(), "n2".into()],
        )
    }

    /// A write of the witness failed: its swaps are undone, but an epoch a
    /// node reported since the last write that succeeded still counts, so
    /// the stale node cannot re-create the register below it.
    #[test]
    fn rolling_back_a_failed_write_keeps_what_nodes_reported_since() {
        let mut durable = Registers::new();
        durable.read("c", &caller("n1", 5));
        durable.read("c", &caller("n2", 5));
        let mut pending = durable.clone();
        pending.read("c", &caller("n2", 6));
        pending.read("other", &caller("n1", 1));
        pending.roll_back_registers_to(&durable);
        let stale = pending.compare_and_swap("c", &caller("n1", 5), 0, &pair_register(5, "n1"));
        assert!(
            matches!(
                stale,
                Err(SwapRefusal::EpochBelowReported {
                    reported: Epoch(6),
                    ..
                })
            ),
            "{stale:?}"
        );
    }

    #[test]
    fn a_swap_at_the_expected_version_bumps_it_and_a_stale_one_gets_the_current_register() {
        let mut regs = Registers::new();
        regs.read("c", &caller("n2", 0));
        let created = regs
            .compare_and_swap("c", &caller("n1", 1), 0, &pair_register(1, "n1"))
            .unwrap();
        let CasOutcome::Swapped(v1) = created else {
            panic!("create failed: {created:?}")
        };
        assert_eq!(v1.version, 1);
        let mut with_standby = v1.clone();
        with_standby.sync_set.insert("n2".into());
        let stale = regs
            .compare_and_swap("c", &caller("n2", 1), 0, &pair_register(2, "n2"))
            .unwrap();
        assert_eq!(stale, CasOutcome::Conflict(v1.clone()));
        let swapped = regs
            .compare_and_swap("c", &caller("n1", 1), 1, &with_standby)
            .unwrap();
        assert_eq!(swapped, CasOutcome::Swapped(v1.successor(&with_standby)));
        assert_eq!(regs.read("c", &caller("n1", 1)).version, 2);
    }

    /// A witness that lost its file, in a cluster: n3 reached epoch 2 by a
    /// failover through the lost register and leads it; n1, a primary cut
    /// off from it, handed epoch 2 to n2 by a switchover. Only n3 may be
    /// named primary of epoch 2: it may have acknowledged writes n2 lacks.
    #[test]
    fn a_lost_register_is_not_recreated_naming_another_primary_of_an_epoch_a_node_leads() {
        let members: Vec<NodeId> = vec!["n1".into(), "n2".into(), "n3".into()];
        let mut regs = Registers::new();
        let leading = Caller {
            leads: true,
            ..caller("n3", 2)
        };
        regs.read("c", &leading);
        regs.read("c", &caller("n1", 2));
        let handed = Register::fresh(Epoch(2), &"n2".into(), &members);
        assert_eq!(
            regs.compare_and_swap("c", &caller("n2", 1), 0, &handed),
            Err(SwapRefusal::EpochLedByAnother {
                epoch: Epoch(2),
                by: "n3".into()
            })
        );
        let ours = Register::fresh(Epoch(2), &"n3".into(), &members);
        assert!(matches!(
            regs.compare_and_swap("c", &leading, 0, &ours),
            Ok(CasOutcome::Swapped(_))
        ));
    }

    #[test]
    fn a_register_is_created_only_once_every_member_reported_and_never_below_their_epochs() {
        let mut regs = Registers::new();
        // A witness that lost its file: the stale old primary (epoch 5)
        // asks first; the new primary (epoch 6) has not asked yet.
        let refused = regs.compare_and_swap("c", &caller("n1", 5), 0, &pair_register(5, "n1"));
        assert_eq!(
            refused,
            Err(SwapRefusal::MembersNotHeard {
                missing: vec!["n2".into()]
            })
        );
        regs.read("c", &caller("n2", 6));
        let refused = regs.compare_and_swap("c", &caller("n1", 5), 0, &pair_register(5, "n1"));
        assert_eq!(
            refused,
            Err(SwapRefusal::EpochBelowReported {
                proposed: Epoch(5),
                reported: Epoch(6),
                by: "n2".into()
            })
        );
        let rebuilt = regs.compare_and_swap("c", &caller("n2", 6), 0, &pair_register(6, "n2"));
        assert!(matches!(rebuilt, Ok(CasOutcome::Swapped(r)) if r.epoch == Epoch(6)));
    }

    #[test]
    fn a_register_re_created_after_a_loss_starts_above_every_version_its_members_saw() {
        // Before the loss the register reached version 7; the standby n2
        // still holds it, with itself in the sync set.
        let mut regs = Registers::new();
        regs.read("c", &seen("n2", 7));
        let created = regs
            .compare_and_swap("c", &seen("n1", 7), 0, &pair_register(1, "n1"))
            .unwrap();
        let CasOutcome::Swapped(created) = created else {
            panic!("create failed: {created:?}")
        };
        assert_eq!(created.version, 8);
        // The primary takes n2 out, then changes it more: no version of
        // the new register is one n2 may still hold, so n2's promotion
        // from its stale version 7 cannot match.
        let stale = regs
            .compare_and_swap("c", &seen("n2", 7), 7, &pair_register(2, "n2"))
            .unwrap();
        assert!(matches!(stale, CasOutcome::Conflict(r) if r.version == 8));
        // A swap of an existing register still goes one up.
        let next = regs
            .compare_and_swap("c", &seen("n1", 8), 8, &pair_register(1, "n1"))
            .unwrap();
        assert!(matches!(next, CasOutcome::Swapped(r) if r.version == 9));
    }

    /// The witness's file went back: restored from a copy taken while n2
    /// was in the sync set, after which the primary n1 swapped n2 out
    /// (version 3) and acknowledged writes alone. The restored register
    /// would let n2 promote without them. n2's own call reports version 3,
    /// so the witness forgets the register before it can answer or swap
    /// from it; the register is then rebuilt by the rules of a lost one,
    /// above every version reported.
    #[test]
    fn a_register_behind_a_version_a_member_was_answered_is_forgotten_and_rebuilt_above_it() {
        let mut regs = Registers::new();
        regs.read("c", &caller("n2", 0));
        regs.compare_and_swap("c", &caller("n1", 1), 0, &pair_register(1, "n1"))
            .unwrap();
        let mut with_standby = pair_register(1, "n1");
        with_standby.sync_set.insert("n2".into());
        regs.compare_and_swap("c", &seen("n1", 1), 1, &with_standby)
            .unwrap();
        let old_copy = Registers::from_registers(
            regs.registers()
                .map(|(id, r)| (id.to_string(), r.clone()))
                .collect::<Vec<_>>(),
        );
        let alone = regs
            .compare_and_swap("c", &seen("n1", 2), 2, &pair_register(1, "n1"))
            .unwrap();
        assert!(
            matches!(alone, CasOutcome::Swapped(ref r) if r.version == 3),
            "{alone:?}"
        );

        let mut restored = old_copy;
        let in_sync_set = restored.clone().read("c", &seen("n2", 2));
        assert!(in_sync_set.sync_set.contains(&NodeId::from("n2")));
        // n2, silent primary, reads before it promotes: it saw version 3.
        let read = restored.read("c", &seen("n2", 3));
        assert!(!read.exists(), "the stale register was answered: {read}");
        let went_back = restored.take_went_back("c").expect("not reported");
        assert_eq!(
            (
                went_back.stale.version,
                went_back.seen_version,
                went_back.by
            ),
            (2, 3, NodeId::from("n2"))
        );
        assert!(restored.take_went_back("c").is_none(), "reported twice");
        assert!(
            restored.is_empty(),
            "the file would keep the stale register"
        );
        // Its promotion from the version it was in the sync set at cannot
        // match, and a failover creates nothing: every member must report,
        // and the primary, which leads its epoch, rebuilds it above 3.
        let promote = restored
            .compare_and_swap("c", &seen("n2", 3), 2, &pair_register(2, "n2"))
            .unwrap();
        assert!(
            matches!(promote, CasOutcome::Conflict(ref r) if !r.exists()),
            "{promote:?}"
        );
        let primary = Caller {
            leads: true,
            ..seen("n1", 3)
        };
        let rebuilt = restored
            .compare_and_swap("c", &primary, 0, &pair_register(1, "n1"))
            .unwrap();
        assert!(
            matches!(rebuilt, CasOutcome::Swapped(ref r) if r.version == 4),
            "{rebuilt:?}"
        );
        assert!(restored.take_went_back("c").is_none());
    }

    /// Three members; the witness restarted on a copy at version 2
    /// (n1 primary of epoch 5, all in the sync set). n3, whose view is as
    /// old as the copy, fails over first: version 3, epoch 6, n3 primary.
    /// n1, which was answered version 4 before the restart, then uncovers
    /// the copy, and the witness forgets version 3 too. That was a grant of
    /// this witness, which n3 may lead: a rebuild must not go below epoch 6
    /// nor name another primary of it, although no member reported 6 yet.
    #[test]
    fn a_forgotten_register_is_a_floor_for_the_rebuild_and_its_primary_keeps_its_epoch() {
        let members: Vec<NodeId> = vec!["n1".into(), "n2".into(), "n3".into()];
        let mut copy = Register::fresh(Epoch(5), &"n1".into(), &members);
        copy.sync_set = ["n2".into(), "n3".into()].into();
        copy.version = 2;
        let mut regs = Registers::from_registers([("c".to_string(), copy)]);
        let failover = Register::fresh(Epoch(6), &"n3".into(), &members);
        let granted = regs
            .compare_and_swap(
                "c",
                &Caller {
                    seen_version: 2,
                    ..caller("n3", 5)
                },
                2,
                &failover,
            )
            .unwrap();
        assert!(
            matches!(granted, CasOutcome::Swapped(ref r) if r.version == 3),
            "{granted:?}"
        );
        assert!(
            !regs
                .read(
                    "c",
                    &Caller {
                        seen_version: 4,
                        ..caller("n1", 5)
                    }
                )
                .exists()
        );
        let forgotten = regs.take_went_back("c").unwrap().stale;
        assert_eq!((forgotten.version, forgotten.epoch), (3, Epoch(6)));
        regs.read("c", &caller("n2", 5));
        let n1 = Caller {
            seen_version: 4,
            leads: true,
            ..caller("n1", 5)
        };
        assert_eq!(
            regs.compare_and_swap(
                "c",
                &n1,
                0,
                &Register::fresh(Epoch(5), &"n1".into(), &members)
            ),
            Err(SwapRefusal::EpochBelowReported {
                proposed: Epoch(5),
                reported: Epoch(6),
                by: "n3".into()
            })
        );
        assert_eq!(
            regs.compare_and_swap(
                "c",
                &n1,
                0,
                &Register::fresh(Epoch(6), &"n1".into(), &members)
            ),
            Err(SwapRefusal::EpochLedByAnother {
                epoch: Epoch(6),
                by: "n3".into()
            })
        );
        let n3 = Caller {
            seen_version: 3,
            leads: true,
            ..caller("n3", 6)
        };
        let rebuilt = regs.compare_and_swap("c", &n3, 0, &failover).unwrap();
        assert!(
            matches!(rebuilt, CasOutcome::Swapped(ref r) if r.version == 5 && r.epoch == Epoch(6)),
            "{rebuilt:?}"
        );
    }

    /// Only a member's report counts: a node of another cluster (any holder
    /// of a certificate of the CA) claiming a high version cannot make the
    /// witness forget a live register.
    #[test]
    fn a_non_member_claiming_a_higher_version_does_not_make_the_witness_forget_a_register() {
        let mut regs = Registers::new();
        regs.read("c", &caller("n2", 0));
        regs.compare_and_swap("c", &caller("n1", 1), 0, &pair_register(1, "n1"))
            .unwrap();
        let stranger = Caller {
            seen_version: u64::MAX,
            ..caller("n9", 1)
        };
        assert!(regs.read("c", &stranger).exists());
        assert!(regs.read("c", &seen("n1", 1)).exists());
        assert!(regs.take_went_back("c").is_none());
    }

    /// A failed write of the file brings the forgotten register back into
    /// memory: the next call, whoever makes it, forgets it again.
    #[test]
    fn a_forgotten_register_a_failed_write_brought_back_is_forgotten_at_the_next_call() {
        let durable = Registers::from_registers([(
            "c".to_string(),
            Register {
                version: 1,
                ..pair_register(1, "n1")
            },
        )]);
        let mut pending = durable.clone();
        assert!(!pending.read("c", &seen("n2", 3)).exists());
        assert!(pending.take_went_back("c").is_some());
        pending.roll_back_registers_to(&durable);
        assert!(
            !pending.read("c", &seen("n1", 0)).exists(),
            "answered the stale register"
        );
        assert!(pending.take_went_back("c").is_some());
    }

    /// The rule is about versions answered, not epochs: a node whose epoch
    /// is above the register's (an operator's forced promotion while the
    /// witness did not answer) keeps the register.
    #[test]
    fn a_member_ahead_in_epoch_but_not_in_version_keeps_the_register() {
        let mut regs = Registers::new();
        regs.read("c", &caller("n2", 0));
        regs.compare_and_swap("c", &caller("n1", 1), 0, &pair_register(1, "n1"))
            .unwrap();
        let forced = Caller {
            seen_version: 1,
            ..caller("n2", 5)
        };
        assert!(regs.read("c", &forced).exists());
        assert!(regs.take_went_back("c").is_none());
    }

    #[test]
    fn a_member_claiming_it_saw_an_impossible_version_cannot_wrap_the_rebuilt_register() {
        let mut regs = Registers::new();
        regs.read("c", &seen("n2", u64::MAX));
        let created = regs
            .compare_and_swap("c", &seen("n1", 0), 0, &pair_register(1, "n1"))
            .unwrap();
        let CasOutcome::Swapped(created) = created else {
            panic!("create failed: {created:?}")
        };
        assert!(created.exists() && created.version > 0, "{created:?}");
        // The register exists: a second create conflicts.
        let again = regs
            .compare_and_swap("c", &seen("n2", 0), 0, &pair_register(1, "n2"))
            .unwrap();
        assert!(matches!(again, CasOutcome::Conflict(_)), "{again:?}");
    }

    #[test]
    fn a_create_must_name_the_caller_and_a_swap_never_moves_the_epoch_back() {
        let mut regs = Registers::new();
        regs.read("c", &caller("n2", 0));
        assert_eq!(
            regs.compare_and_swap("c", &caller("n3", 1), 0, &pair_register(1, "n1")),
            Err(SwapRefusal::CallerNotMember {
                caller: "n3".into()
            })
        );
        regs.compare_and_swap("c", &caller("n1", 1), 0, &pair_register(3, "n1"))
            .unwrap();
        assert_eq!(
            regs.compare_and_swap("c", &caller("n1", 3), 1, &pair_register(2, "n1")),
            Err(SwapRefusal::EpochGoesBack {
                current: Epoch(3),
                proposed: Epoch(2)
            })
        );
    }

    #[test]
    fn clusters_are_kept_apart() {
        let mut regs = Registers::new();
        for cluster in ["a", "b"] {
            regs.read(cluster, &caller("n2", 0));
            regs.compare_and_swap(cluster, &caller("n1", 1), 0, &pair_register(1, "n1"))
                .unwrap();
        }
        let mut moved = regs.read("a", &caller("n1", 1));
        moved.epoch = Epoch(2);
        regs.compare_and_swap("a", &caller("n1", 1), 1, &moved)
            .unwrap();
        assert_eq!(regs.read("a", &caller("n1", 2)).version, 2);
        assert_eq!(regs.read("b", &caller("n1", 1)).version, 1);
        assert_eq!(regs.len(), 2);
    }
}
