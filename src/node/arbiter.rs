//! The node's side of the arbiter: which register change it asks for, and
//! what an answer does to its role. Only with `Config::arbiter`.
//!
//! The rules, each a compare-and-swap on the register's version:
//! * a standby promotes by a failover only by a swap `epoch -> epoch + 1,
//!   primary -> self`, allowed only while it is in the sync set (async
//!   mode: within the lag bound instead) and the register is at its epoch;
//!   the new primary starts with an empty sync set;
//! * a primary acknowledges without its standby only after a swap took
//!   the standby out of the sync set; a swap that finds a newer epoch
//!   fences it; with neither the standby nor the arbiter answering it
//!   refuses writes;
//! * the primary puts a standby back into the sync set only once it holds
//!   every acknowledged write and commits wait for it again, and tells it
//!   it is in sync only after that swap;
//! * a fresh cluster's first primary is the node whose create swap wins;
//!   the other steps down to follow it;
//! * the arbiter unreachable: replication in sync goes on, but no failover
//!   and no solo step happen. A pair's planned switchover or a forced
//!   promotion goes ahead without it (the old primary stepped down, or the
//!   operator chose to), and the new primary brings the register up to its
//!   epoch once it answers; with more than one standby a switchover waits
//!   for the swap.
//!
//! Only a swap's answer changes what the node believes of the register; an
//! unanswered swap may have taken effect, so the register is read again
//! before the next one. A promotion's own steps (the register it asks for,
//! its wait, giving it up, taking the granted epoch) are in `promotion.rs`;
//! a node that led an epoch taking the cluster back, in `reclaim.rs`.

use super::event::{
    ArbiterAnswer, ArbiterCall, ArbiterPurpose, CallFailed, Effect, Promotion, Time,
};
use super::primary::Primary;
use super::quorum::StandbyLsns;
use super::standby::Standby;
use super::{Node, Role};
use crate::arbiter::Register;
use crate::config::CommitMode;
use crate::types::{Epoch, Lsn, NodeId};
use std::collections::BTreeSet;

mod promotion;
mod reclaim;

/// How often a node reads the register when it needs nothing from it, in
/// heartbeat intervals (1 s at the defaults): it reports the node's epoch
/// (a lost witness file is rebuilt from those reports), shows a newer
/// epoch to a primary that cannot hear from its standby, and keeps
/// `/health` current. A failed call is retried as often.
const REFRESH_HEARTBEATS: u32 = 5;

/// What the node knows of the arbiter.
#[derive(Debug, Default)]
pub(super) struct ArbiterLink {
    /// The register as last answered; `None` before the first answer and
    /// after a swap went unanswered (it may have taken effect).
    known: Option<Register>,
    /// The call in flight (at most one).
    asking: Option<ArbiterPurpose>,
    /// When the last call was made.
    last_asked: Option<Time>,
    /// Whether the last call was answered.
    reachable: Option<bool>,
    /// Why the last call failed.
    last_error: Option<String>,
    /// The failed call last logged at warn, and its error, until a call
    /// succeeds: the same failure of the same call again is logged at
    /// debug (a refusal repeats every heartbeat until what it waits for
    /// happens).
    last_warned: Option<(ArbiterPurpose, String)>,
    /// Whether the last call failed: the next swap waits a while.
    last_failed: bool,
    /// The highest register version answered (kept when `known` is
    /// forgotten): a re-created register starts above it.
    seen_version: u64,
    /// A promotion that waits for the arbiter's swap.
    promotion: Option<PendingPromotion>,
    /// The last promotion or retake swap of this life, naming this node
    /// primary: a register found naming us primary of its epoch is that
    /// swap's doing, even if its answer was lost and a seal made us adopt
    /// the epoch meanwhile (`on_register`), or a peer made us follow
    /// another node in it (`reclaim.rs`).
    promotion_asked: Option<AskedPromotion>,
    /// Why a failover or a solo step did not happen (cleared once it did,
    /// or is no longer wanted).
    held_back: Option<String>,
    /// What the register may hold now: the last value answered, and the
    /// target of each swap asked that may still take effect (unanswered,
    /// and expecting a version no answer has passed: a call that timed out
    /// may still reach the arbiter). Empty before the first answer. A
    /// cluster's primary acknowledges only what the rule allows over the
    /// sync set of each one that names it primary of its epoch
    /// (`register_commit_bound`).
    possible: Vec<PossibleRegister>,
    /// The epochs reclaim swaps of this life asked for: one unanswered
    /// may land after a later one was asked.
    reclaim_asked: BTreeSet<Epoch>,
}

/// A value the register may hold (see `ArbiterLink::possible`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PossibleRegister {
    /// For a swap's target: the version the swap expects (it can take
    /// effect only while the register is at it). `None`: answered.
    expects: Option<u64>,
    epoch: Epoch,
    primary: Option<NodeId>,
    sync_set: BTreeSet<NodeId>,
}

/// A promotion or retake swap as it was asked (`ArbiterLink::promotion_asked`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AskedPromotion {
    /// The epoch it asks for.
    epoch: Epoch,
    /// `Promote(kind)` or `Retake`.
    purpose: ArbiterPurpose,
    /// The node's last LSN when it asked: a promotion asks with its log
    /// final (a candidate fetched what it lacked first).
    last_lsn: Lsn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingPromotion {
    kind: Promotion,
    /// An operator (or the engine) waits for the answer.
    operator: bool,
}

/// The arbiter as a node sees it, for `health()`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArbiterStatus {
    /// The arbiter, as `Arbiter::describe` names it.
    pub arbiter: String,
    /// Whether its last call was answered (`None`: not asked yet).
    pub reachable: Option<bool>,
    /// The register as last answered.
    pub register: Option<Register>,
    /// Why its last call failed.
    pub last_error: Option<String>,
    /// Why a failover or a solo step is not happening now.
    pub held_back: Option<String>,
}

impl Node {
    pub(super) fn has_arbiter(&self) -> bool {
        self.arbiter.is_some()
    }

    /// The arbiter as this node sees it (`None` without one).
    pub(crate) fn arbiter_status(&self) -> Option<ArbiterStatus> {
        let arbiter = self.cfg.arbiter.as_ref()?.describe();
        self.arbiter.as_ref().map(|link| ArbiterStatus {
            arbiter,
            reachable: link.reachable,
            register: link.known.clone(),
            last_error: link.last_error.clone(),
            held_back: link.held_back.clone(),
        })
    }

    /// Whether the swap taking the standby out of the sync set is in flight.
    pub(super) fn arbiter_asking_to_drop_standby(&self) -> bool {
        self.arbiter
            .as_ref()
            .is_some_and(|l| l.asking == Some(ArbiterPurpose::DropStandby))
    }

    /// The highest register version the arbiter answered this node.
    pub(crate) fn arbiter_seen_version(&self) -> u64 {
        self.arbiter.as_ref().map_or(0, |l| l.seen_version)
    }

    /// Whether this node holds itself leader of its epoch, as its calls
    /// tell the arbiter (`Caller::leads`): from the promotion it persisted
    /// (while it still fences, `Promoting`) through its time as primary,
    /// and after its WAL failed there (its writes are on its disk only).
    /// Not a primary started on a fresh directory that nobody confirmed:
    /// it wrote nothing, and of two such one must be able to win.
    pub(crate) fn leads_its_epoch(&self) -> bool {
        self.leader.as_ref() == Some(&self.cfg.node_id)
            && !matches!(&self.role, Role::Primary(p) if !p.confirmed)
    }

    /// The call in flight.
    pub(super) fn arbiter_asking(&self) -> Option<ArbiterPurpose> {
        self.arbiter.as_ref().and_then(|l| l.asking)
    }

    fn members(&self) -> Vec<NodeId> {
        std::iter::once(self.cfg.node_id.clone())
            .chain(self.standbys.iter().cloned())
            .collect()
    }

    /// Whether `standby` may be told it is in sync: always without an
    /// arbiter; with one, only while the register (at our epoch, naming
    /// us) holds it in the sync set.
    pub(super) fn register_holds_standby(&self, standby: &NodeId) -> bool {
        let Some(link) = &self.arbiter else {
            return true;
        };
        link.known.as_ref().is_some_and(|r| {
            r.epoch == self.epoch
                && r.primary.as_ref() == Some(&self.cfg.node_id)
                && r.sync_set.contains(standby)
        })
    }

    /// Asks the arbiter for what the node needs from it now, unless a
    /// call is in flight. Runs after every event.
    pub(super) fn arbiter_work(&mut self, now: Time) {
        let Some(link) = &self.arbiter else { return };
        if let Some(p) = link.promotion
            && !self.may_take_promotion(p.kind)
        {
            let role = self.role.kind();
            tracing::info!(kind = ?p.kind, %role, "not promoting: this node can no longer take the epoch");
            self.abandon_promotion(format!("this node became {role} during the promotion"));
        }
        match self.failover_register() {
            Some(known) if self.needs_quorum_promotion(&known) => self.candidacy_work(now, &known),
            _ => self.end_candidacy(),
        }
        let Some(link) = &self.arbiter else { return };
        if link.asking.is_some() {
            return;
        }
        if let Some((purpose, call)) = self.arbiter_need(now) {
            let link = self.arbiter.as_mut().expect("checked above");
            if let ArbiterCall::Swap {
                expected_version,
                next,
            } = &call
            {
                match purpose {
                    ArbiterPurpose::Promote(_) | ArbiterPurpose::Retake => {
                        link.promotion_asked = Some(AskedPromotion {
                            epoch: next.epoch,
                            purpose,
                            last_lsn: self.last_lsn,
                        });
                    }
                    ArbiterPurpose::Reclaim => {
                        link.reclaim_asked.insert(next.epoch);
                    }
                    _ => {}
                }
                link.possible.push(PossibleRegister {
                    expects: Some(*expected_version),
                    epoch: next.epoch,
                    primary: next.primary.clone(),
                    sync_set: next.sync_set.clone(),
                });
            }
            link.asking = Some(purpose);
            link.last_asked = Some(now);
            self.emit(Effect::AskArbiter { purpose, call });
        }
    }

    fn arbiter_need(&self, now: Time) -> Option<(ArbiterPurpose, ArbiterCall)> {
        let link = self.arbiter.as_ref()?;
        let interval = self.cfg.heartbeat_interval * REFRESH_HEARTBEATS;
        let refresh_due = link.last_asked.is_none_or(|at| now >= at + interval);
        // After a failed call the next swap waits: a heartbeat interval
        // after a refusal (the arbiter answers; a create waits for the
        // other member's first read), the refresh interval when it did not
        // answer.
        let backoff = if link.reachable == Some(false) {
            interval
        } else {
            self.cfg.heartbeat_interval
        };
        let may_swap = !link.last_failed || link.last_asked.is_none_or(|at| now >= at + backoff);
        let refresh = refresh_due.then_some((ArbiterPurpose::Refresh, ArbiterCall::Read));
        let Some(known) = &link.known else {
            // A promotion waits for nobody's refresh interval.
            if link.promotion.is_some() && may_swap {
                return Some((ArbiterPurpose::Refresh, ArbiterCall::Read));
            }
            return refresh;
        };
        let swap = |purpose, expected_version, next| {
            may_swap.then_some((
                purpose,
                ArbiterCall::Swap {
                    expected_version,
                    next,
                },
            ))
        };
        if let Some(promotion) = link.promotion {
            return match self.promotion_register(known, promotion.kind) {
                // A quorum promotion swaps only once its candidacy decided
                // with this very version's sync set (`candidacy.rs`).
                Ok(_) if self.candidacy_needs_fresh_register() => {
                    Some((ArbiterPurpose::Refresh, ArbiterCall::Read))
                }
                Ok(_)
                    if promotion.kind == Promotion::Failover
                        && self.needs_quorum_promotion(known)
                        && !self.candidacy_allows_swap(known) =>
                {
                    refresh
                }
                Ok(next) => swap(ArbiterPurpose::Promote(promotion.kind), known.version, next),
                Err(_) => match self.reclaim_call(link) {
                    Some((expected, next)) => swap(ArbiterPurpose::Reclaim, expected, next),
                    None => refresh,
                },
            };
        }
        let me = &self.cfg.node_id;
        let Role::Primary(p) = &self.role else {
            if let Some((expected_version, next)) = self.reclaim_call(link) {
                return swap(ArbiterPurpose::Reclaim, expected_version, next);
            }
            return refresh;
        };
        if !known.exists() {
            let fresh = Register::fresh(self.epoch, me, &self.members());
            return swap(ArbiterPurpose::Create, 0, fresh);
        }
        if known.epoch < self.epoch {
            let ours = Register::fresh(self.epoch, me, &self.members());
            return swap(ArbiterPurpose::CatchUp, known.version, ours);
        }
        if known.epoch != self.epoch || known.primary.as_ref() != Some(me) {
            return refresh;
        }
        if p.retake {
            let mut next = known.clone();
            next.epoch = self.epoch.next();
            return swap(ArbiterPurpose::Retake, known.version, next);
        }
        if let Some(next) = self.sync_set_without_lost(p, known) {
            return swap(ArbiterPurpose::DropStandby, known.version, next);
        }
        let joining: Vec<&NodeId> = p
            .links()
            .map(|(id, _)| id)
            .filter(|id| {
                !known.sync_set.contains(*id)
                    && p.may_join_sync_set(&self.cfg, &self.commit_rule, id, self.commit)
            })
            .collect();
        if !joining.is_empty() {
            let mut next = known.clone();
            next.sync_set.extend(joining.into_iter().cloned());
            return swap(ArbiterPurpose::AddStandby, known.version, next);
        }
        refresh
    }

    /// The sync set with the lost standbys that want out taken out, as
    /// many as the rule allows without leaving an acknowledged write on
    /// fewer standbys than it needs (the most behind first); `None` when
    /// none wants out or none may leave yet.
    fn sync_set_without_lost(&self, p: &Primary, known: &Register) -> Option<Register> {
        let mode = self.cfg.commit_mode;
        let positions: StandbyLsns = p
            .links()
            .map(|(id, l)| (id.clone(), l.position(mode)))
            .collect();
        let mut leaving: Vec<&NodeId> = p
            .links()
            .filter(|(_, l)| l.wants_out)
            .map(|(id, _)| id)
            .collect();
        leaving.sort_by_key(|id| (positions[*id], (*id).clone()));
        let acknowledged = p.acknowledged(self.commit);
        let mut next = known.clone();
        let mut changed = false;
        for id in leaving {
            if !next.sync_set.contains(id) {
                // Out already (a swap whose answer we missed): go on
                // without it once the register is read back.
                changed = true;
                continue;
            }
            match self
                .commit_rule
                .may_remove(&next.sync_set, id, &positions, acknowledged)
            {
                Ok(()) => {
                    next.sync_set.remove(id);
                    changed = true;
                }
                Err(why) => {
                    tracing::debug!(standby = %id, %why, "lost standby stays in the sync set for now")
                }
            }
        }
        changed.then_some(next)
    }

    /// In a cluster with an arbiter, in a sync mode: the most a primary may
    /// acknowledge by the register's sync set, whatever it holds now (see
    /// `ArbiterLink::possible`); before the register was first read, every
    /// standby the rule names must hold it. A standby whose confirmations
    /// the primary counts (caught up, its swap into the set asked) but
    /// that the register does not hold yet must not be enough on its own:
    /// under a rule waiting for fewer standbys than count, a member of the
    /// register's set that lacks the write could then promote. (With every
    /// counted standby confirming, as in a pair, waiting for an extra one
    /// is only stricter; the pair keeps its own rule.)
    pub(super) fn register_commit_bound(&self, p: &Primary) -> Option<Lsn> {
        let link = self.arbiter.as_ref()?;
        if self.standbys.len() < 2
            || !self.cfg.commit_mode.is_sync()
            || self.cfg.testing_ack_before_standby_flush
            || self.cfg.testing_solo_without_arbiter_swap
        {
            return None;
        }
        let mode = self.cfg.commit_mode;
        let position = |id: &NodeId| p.link(id).map_or(Lsn::ZERO, |l| l.position(mode));
        if link.possible.is_empty() {
            let every = self
                .commit_rule
                .counted(&self.standbys)
                .map(position)
                .min()
                .unwrap_or(self.flushed);
            return Some(every.min(self.flushed));
        }
        // Only a value naming this node primary of its epoch describes its
        // writes: one of an older epoch (after a forced promotion the
        // arbiter has not caught up with, which the operator chose) does
        // not, and with none that does the links decide.
        let me = Some(&self.cfg.node_id);
        link.possible
            .iter()
            .filter(|r| r.epoch == self.epoch && r.primary.as_ref() == me)
            .map(|r| {
                self.commit_rule
                    .acknowledgeable_by(&r.sync_set, position, self.flushed)
            })
            .min()
    }

    /// Whether a standby's eligibility to fail over is the register's
    /// alone: in a cluster with an arbiter, whose sync set holds only
    /// standbys that have every acknowledged write on disk (a sync mode
    /// that waits for the standby's flush). Its promotion checks sync set
    /// membership, and a quorum rule the other standbys' positions; what
    /// the primary last said to this standby, or whether it spoke in this
    /// process's life, adds nothing (a restarted member still holds what
    /// it flushed), and requiring it would leave a cluster whose members
    /// all restarted, or all learnt of an epoch nobody leads, with no
    /// standby that may promote. A pair keeps its stricter rule.
    /// So is that of a standby the register names primary of the epoch a
    /// peer made it follow another node in (`reclaim.rs`), in any mode.
    pub(super) fn register_decides_eligibility(&self) -> bool {
        let cluster = self.has_arbiter() && self.standbys.len() > 1;
        let flushed = matches!(
            self.cfg.commit_mode,
            CommitMode::RemoteFlush | CommitMode::RemoteApply
        );
        cluster && (flushed || self.granted_but_following())
    }

    /// Whether this standby follows another node in an epoch the register,
    /// as last answered, granted it (`follows_another_in_its_granted_epoch`).
    fn granted_but_following(&self) -> bool {
        self.arbiter.as_ref().is_some_and(|link| {
            link.known
                .as_ref()
                .is_some_and(|known| self.follows_another_in_its_granted_epoch(link, known))
        })
    }

    /// The register a pending failover of this node would swap from, when
    /// the arbiter answers and the register allows it.
    pub(super) fn failover_register(&self) -> Option<Register> {
        let link = self.arbiter.as_ref()?;
        let promotion = link.promotion?;
        let known = link.known.as_ref()?;
        let usable = promotion.kind == Promotion::Failover
            && link.reachable != Some(false)
            && self.promotion_register(known, Promotion::Failover).is_ok();
        usable.then(|| known.clone())
    }

    pub(super) fn on_arbiter_answered(&mut self, purpose: ArbiterPurpose, answer: ArbiterAnswer) {
        let Some(link) = self.arbiter.as_mut() else {
            return;
        };
        link.asking = None;
        let answer = taken_as_none_if_behind(answer, link.seen_version);
        link.last_failed = matches!(answer, ArbiterAnswer::Failed { .. });
        let (register, swapped) = match answer {
            ArbiterAnswer::Read(r) | ArbiterAnswer::Conflict(r) => (r, false),
            ArbiterAnswer::Swapped(r) => (r, true),
            ArbiterAnswer::Failed { why, error } => {
                let unreachable = why == CallFailed::Unreachable;
                // A swap the arbiter refused never takes effect; one that
                // went unanswered may have.
                if !unreachable
                    && purpose != ArbiterPurpose::Refresh
                    && link.possible.last().is_some_and(|p| p.expects.is_some())
                {
                    link.possible.pop();
                }
                if unreachable && matches!(purpose, ArbiterPurpose::Refresh) {
                    if link.reachable != Some(false) {
                        tracing::warn!(%error, "the arbiter is unreachable");
                    }
                } else if link.last_warned.as_ref() == Some(&(purpose, error.clone())) {
                    tracing::debug!(?purpose, %error, unreachable, "the arbiter call failed again");
                } else {
                    if unreachable {
                        tracing::warn!(?purpose, %error, "the arbiter did not answer the call");
                    } else {
                        tracing::warn!(?purpose, %error, "the arbiter refused the call");
                    }
                    link.last_warned = Some((purpose, error.clone()));
                }
                link.reachable = Some(!unreachable);
                link.last_error = Some(error.clone());
                if unreachable && !matches!(purpose, ArbiterPurpose::Refresh) {
                    // A swap may have taken effect without its answer.
                    link.known = None;
                }
                return self.on_arbiter_failed(purpose, why, error);
            }
        };
        if link.reachable == Some(false) {
            tracing::info!(register = %register, "the arbiter answers again");
        }
        link.reachable = Some(true);
        link.last_error = None;
        link.last_warned = None;
        if swapped {
            tracing::info!(?purpose, register = %register, "the arbiter's register changed");
        }
        link.seen_version = link.seen_version.max(register.version);
        link.known = Some(register.clone());
        // A swap expecting a version below the one answered can no longer
        // take effect; one expecting this very version still can.
        link.possible
            .retain(|p| p.expects.is_some_and(|v| v >= register.version));
        link.possible.push(PossibleRegister {
            expects: None,
            epoch: register.epoch,
            primary: register.primary.clone(),
            sync_set: register.sync_set.clone(),
        });
        let asked_at = link.last_asked;
        self.candidacy_saw_register(asked_at);
        self.on_register(purpose, register, swapped);
        // What the register holds may let more be acknowledged.
        if matches!(self.role, Role::Primary(_)) {
            self.recompute_commit();
        }
    }

    /// A call failed: `why` (see `CallFailed`).
    fn on_arbiter_failed(&mut self, purpose: ArbiterPurpose, why: CallFailed, error: String) {
        let unreachable = why == CallFailed::Unreachable;
        // A primary whose standby is lost waits on the arbiter whatever the
        // call was (a read, a create, a catch-up): with no swap it refuses
        // writes rather than leave them waiting.
        self.block_without_arbiter(&error);
        let pending = self.arbiter.as_ref().and_then(|l| l.promotion);
        match (purpose, pending) {
            (_, Some(p)) if p.kind == Promotion::Failover => {
                self.hold_back(format!(
                    "the primary is silent but the arbiter did not grant the promotion: {error}"
                ));
            }
            // With more than one standby a planned switchover needs the
            // register's swap: another member of the old sync set, cut off
            // from us, could still swap itself in as primary of the epoch
            // we would take (the operator's force is left to the operator).
            (ArbiterPurpose::Promote(_) | ArbiterPurpose::Refresh, Some(p))
                if unreachable && p.kind == Promotion::Switchover && self.standbys.len() > 1 =>
            {
                tracing::warn!(%error, "not taking over: with more than one standby a switchover needs the arbiter's swap, and it does not answer");
                self.abandon_promotion(format!(
                    "the arbiter does not answer ({error}); with more than one standby a switchover needs its swap, so nothing was changed here (the old primary may have stepped down: a standby takes over through the arbiter once it answers; if the witness comes back without its register, ask for this switchover again)"
                ));
            }
            // A planned switchover (the old primary stepped down with
            // everything on our disk) or a forced promotion goes ahead
            // without an arbiter that does not answer, whichever call found
            // it down; the register is brought up to our epoch once it
            // answers. One the arbiter refused does not.
            (ArbiterPurpose::Promote(_) | ArbiterPurpose::Refresh, Some(p)) if unreachable => {
                self.arbiter.as_mut().expect("pending above").promotion = None;
                tracing::warn!(kind = ?p.kind, %error, "promoting without the arbiter, which does not answer; it is brought up to this node's epoch once it answers");
                let epoch = self.epoch.next();
                self.take_epoch(epoch, p.kind, p.operator);
            }
            // The arbiter lost its register and re-creates it once every
            // member asked it something since, which each does every few
            // heartbeats. The old primary stepped down in our favour and
            // waits for us: the switchover asks again (the same swap, a
            // create) rather than leave the cluster with no primary. The
            // create rules keep it from taking an epoch that another node
            // reached through the lost register and leads (a refusal that
            // ends it); a register that appears meanwhile is swapped from
            // as by any switchover.
            (ArbiterPurpose::Promote(Promotion::Switchover), Some(p))
                if why == CallFailed::MembersNotHeard && p.kind == Promotion::Switchover =>
            {
                self.hold_back(format!(
                    "the switchover waits for the arbiter to re-create its register: {error}"
                ));
            }
            (ArbiterPurpose::Promote(kind), Some(_)) => {
                tracing::warn!(?kind, %error, "the arbiter refused the promotion; not promoting");
                self.abandon_promotion(format!("the arbiter refused the promotion: {error}"));
            }
            _ => {}
        }
    }

    /// What a register the arbiter answered means for this node.
    fn on_register(&mut self, purpose: ArbiterPurpose, register: Register, swapped: bool) {
        let me = self.cfg.node_id.clone();
        let retake_asked = self.swap_asked_for(register.epoch);
        if register.epoch == self.epoch.next()
            && register.primary.as_ref() == Some(&me)
            && matches!(&self.role, Role::Primary(p) if p.retake || retake_asked)
        {
            // Our retake swap (or one whose answer was lost: nothing else
            // names a running primary leader of the next epoch), also once
            // every standby was reached meanwhile.
            self.retake_epoch(register.epoch);
            return;
        }
        if self.take_reclaimed_epoch(&register) {
            return;
        }
        if register.epoch > self.epoch && register.exists() {
            let ours = self.may_be_handed(register.epoch);
            if register.primary.as_ref() == Some(&me) && !ours {
                tracing::warn!(epoch = %register.epoch, mine = %self.epoch, "the register names this node the primary of an epoch it never asked for (it led it before losing its data directory?); adopting the epoch without a leader");
                self.on_higher_epoch(register.epoch, None);
            } else if register.primary.as_ref() == Some(&me) {
                // Our own promotion swap, or one whose answer a crash lost.
                let pending = self.arbiter.as_mut().and_then(|l| l.promotion.take());
                let kind = pending.map_or(Promotion::Failover, |p| p.kind);
                let operator = pending.is_some_and(|p| p.operator);
                self.take_epoch(register.epoch, kind, operator);
            } else {
                self.on_higher_epoch(register.epoch, register.primary.clone());
            }
            return;
        }
        if register.epoch == self.epoch
            && register.exists()
            && register.primary.as_ref() == Some(&me)
            && self.leader.is_none()
            && matches!(self.role, Role::Standby(_))
            && self.swap_asked_for(register.epoch)
        {
            // Our promotion swap took effect but its answer was lost, and
            // a candidate's seal made us adopt the epoch meanwhile (its own
            // swap cannot succeed now): the epoch is ours to take, or no
            // one ever leads it.
            tracing::warn!(epoch = %register.epoch, "the register names this node primary of the epoch its own promotion asked for; taking it");
            self.take_epoch(register.epoch, Promotion::Failover, false);
            return;
        }
        if register.epoch == self.epoch
            && register.exists()
            && matches!(self.role, Role::Primary(_))
        {
            match register.primary.as_ref() {
                // A primary never confirmed, named by a register whose sync
                // set holds its standby (only a confirmed primary puts one
                // there; a create or a rebuild leaves it empty), lost the
                // data it was confirmed with: its directory was wiped. It
                // must not take writes over what its standby holds.
                Some(primary)
                    if *primary == me
                        && !register.sync_set.is_empty()
                        && matches!(&self.role, Role::Primary(p) if !p.confirmed) =>
                {
                    let why = format!(
                        "the arbiter's register (v{}) names this node primary of epoch {} with its standby in the sync set, but this node's data directory is fresh: it was wiped after the node took writes, and the standby holds acknowledged writes it lacks; refusing writes: start this node as a standby on an empty data directory (it resyncs from the standby once that promotes), or `promote --force` it to keep it as it is",
                        register.version, self.epoch
                    );
                    if let Some(link) = self.arbiter.as_mut()
                        && link.held_back.as_ref() != Some(&why)
                    {
                        tracing::error!("{why}");
                        link.held_back = Some(why);
                    }
                }
                // Nothing to a primary confirmed already.
                Some(primary) if *primary == me => {
                    self.on_confirmed(&format!(
                        "the arbiter names this node primary of epoch {}",
                        self.epoch
                    ));
                }
                Some(primary) => {
                    let primary = primary.clone();
                    self.yield_to_registered_primary(primary);
                    return;
                }
                None => {}
            }
        }
        if purpose == ArbiterPurpose::DropStandby && swapped {
            self.go_on_without_removed(&register.sync_set);
        }
        self.explain_promotion_wait();
    }

    /// Whether a swap of this life (a promotion or a retake) asked for
    /// `epoch` naming this node primary (`ArbiterLink::promotion_asked`).
    fn swap_asked_for(&self, epoch: Epoch) -> bool {
        self.arbiter
            .as_ref()
            .is_some_and(|l| l.promotion_asked.is_some_and(|a| a.epoch == epoch))
    }

    /// Every standby was reached by a stream of this life, each holder of
    /// records this node lost having dropped them: writing in our epoch is
    /// safe again, so a restarted primary waiting for the arbiter's swap
    /// (it may not answer) goes on without it. A swap already asked may
    /// still land; its answer then moves us to the next epoch as planned.
    pub(super) fn on_every_standby_reached(&mut self) {
        if let Role::Primary(p) = &mut self.role
            && std::mem::take(&mut p.retake)
        {
            tracing::info!(epoch = %self.epoch, "restarted as the primary: every standby heard from it since, so it writes in its epoch without taking the next");
        }
    }

    /// A primary restarted in a cluster got the next epoch from the
    /// register: it persists it and streams in it from now on (its tasks
    /// start again with the new epoch in their headers), then writes.
    fn retake_epoch(&mut self, epoch: Epoch) {
        let me = self.cfg.node_id.clone();
        tracing::info!(%epoch, previous = %self.epoch, "restarted as the primary: took the next epoch through the arbiter; accepting writes");
        self.persist(epoch, Some(me));
        if let Role::Primary(p) = &mut self.role {
            p.retake = false;
        }
        self.emit(Effect::StopPrimaryTasks);
        self.emit(Effect::StartPrimaryTasks);
    }

    /// The register names the peer primary of our epoch while we act as
    /// one: we never were its primary (an unconfirmed fresh start lost the
    /// create race) or something is badly wrong; the register decides.
    fn yield_to_registered_primary(&mut self, primary: NodeId) {
        let confirmed = matches!(&self.role, Role::Primary(p) if p.confirmed);
        if confirmed {
            tracing::error!(epoch = %self.epoch, %primary, "the arbiter names another node primary of this node's epoch; stepping down and rejoining");
            self.fail_all_waiters(super::WaiterFailure::Fenced { epoch: self.epoch });
            self.persist(self.epoch, Some(primary.clone()));
            self.change_role(Role::Fenced);
            self.emit(Effect::StartRejoin {
                leader: Some(primary),
            });
        } else {
            tracing::warn!(epoch = %self.epoch, %primary, "the arbiter made the peer the first primary of this cluster; this node follows it");
            self.persist(self.epoch, Some(primary));
            self.change_role(Role::Standby(Standby::new()));
        }
    }
}

/// An answer naming a register below a version the arbiter answered this
/// node before, taken as no answer: the arbiter's data went back (an etcd
/// restored from an older snapshot, or a key deleted and created again;
/// a witness forgets such a register itself when a member's call reports
/// the newer version, so from a witness this comes only to a node the
/// stale register does not list as a member). Such a register may list in
/// its sync set a standby since swapped out (which would promote without
/// the writes the primary then acknowledged alone), and a swap from it
/// could match a deposed primary's. It is handled as an arbiter that does
/// not answer: no failover, no solo step, a swap asked may or may not have
/// taken effect, and what goes ahead without the arbiter (a pair's planned
/// switchover, a forced promotion) still does. The node says why until an
/// answer is no longer behind, or it restarts (its versions live in
/// memory). A missing register (version 0) is not behind: a witness that
/// lost its file rebuilds it above every version a member saw.
fn taken_as_none_if_behind(answer: ArbiterAnswer, seen_version: u64) -> ArbiterAnswer {
    match &answer {
        ArbiterAnswer::Read(r) | ArbiterAnswer::Conflict(r) | ArbiterAnswer::Swapped(r)
            if r.exists() && r.version < seen_version =>
        {
            ArbiterAnswer::Failed {
                why: CallFailed::Unreachable,
                error: format!(
                    "the arbiter answered its register at version {}, below version {seen_version} it answered this node before: its data went back (restored from an older backup or snapshot, or the register deleted and created again); not acting on it. A witness: restart it on an empty data directory, and it rebuilds the register from the nodes. etcd: see docs/ARBITER-ETCD.md, \"Restoring etcd from an older backup\"",
                    r.version
                ),
            }
        }
        _ => answer,
    }
}
