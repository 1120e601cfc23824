//! A standby's failover with more than one standby, where it must first
//! hear from others: the quorum promotion.
//!
//! Under `ANY k` with k' below the standbys that count (see `quorum`), an
//! acknowledged write may be on k' standbys that do not include the
//! candidate. Before its swap, the candidate:
//!
//! 1. **seals** the other standbys that count: it sends each a fence of
//!    reason `Candidate` at the epoch it will take. A standby adopts that
//!    epoch (persisted, with no leader yet), so it takes no more of the
//!    old primary's WAL, and answers with its log's end, which is now
//!    final (`quorum::promotion` says why it must be);
//! 2. **decides** with `decide_promotion` once |counted| − k' + 1 of them
//!    (itself included) answered: one of them holds each acknowledged
//!    write;
//! 3. **fetches** what it lacks from the most advanced that answered,
//!    when one is ahead, and decides again;
//! 4. **swaps** the register from the exact version whose sync set it
//!    judged by (`arbiter.rs`), once its whole log is on its disk; a
//!    newer version makes it decide again.
//!
//! Before its first seal the candidate reads the register again, so that
//! a standby that learnt of a newer primary late does not seal the others
//! on an old register. A standby that heard its primary (or a candidate)
//! within half of `failover_timeout` refuses a seal: a candidate cut off
//! from a live primary, or a seal delayed in the network, never steps it
//! down (half: the standbys' heartbeats are out of phase by up to an
//! interval, and a dead primary's candidate should not wait for that).
//! A failed or empty fetch forgets that standby's answer (it is asked
//! again) and waits a heartbeat interval; records that do not continue
//! the candidate's log end fetching from that standby (it may promote).
//!
//! A sealed standby restarts its own failover clock: the candidate gets a
//! full `failover_timeout` before another standby tries. Two candidates
//! of one round (both sealing at the same epoch) are ordered by the rule's
//! priority, then the more advanced log (each seal carries its sender's),
//! then node id: the later one yields to the earlier. A seal
//! steps the old primary down even when the promotion then fails (its
//! standbys refuse its epoch): availability, never safety, is what a
//! failed round costs.

use super::event::{ArbiterPurpose, Effect, FetchFailed, SealRefused, Time};
use super::quorum::{
    CommitRule, LogEnd, Method, PromotionDecision, decide_promotion, positions_needed,
};
use super::{Node, Role};
use crate::arbiter::Register;
use crate::types::{Epoch, NodeId, Record};
use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// A quorum promotion in progress (between the first seal and the swap).
#[derive(Debug)]
pub(super) struct Candidacy {
    /// The epoch the sealed standbys adopt, and the one this node swaps to.
    seal: Epoch,
    /// When it began: the register must be read after it before the first
    /// seal, so that a standby that learnt of a newer primary late does not
    /// step it down on an old register.
    started: Time,
    /// The register was read since `started`.
    fresh: bool,
    /// The log ends of the standbys that adopted `seal`.
    answers: BTreeMap<NodeId, LogEnd>,
    /// This node's log end, as last reported (or fetched up to).
    mine: Option<LogEnd>,
    /// When seals were last sent: those unanswered go again every
    /// heartbeat interval.
    asked_at: Option<Time>,
    /// The fetch in flight.
    fetch: Option<Fetch>,
    /// After a failed fetch, not before this.
    fetch_again_at: Option<Time>,
    /// Standbys we cannot take the records we lack from, and why: their
    /// records do not continue our log, or they trimmed them from their
    /// WAL. Not fetched from again in this candidacy (they may promote
    /// instead: they hold those records).
    cannot_fetch_from: BTreeMap<NodeId, String>,
    /// The register version whose sync set allowed the swap.
    ready_for: Option<u64>,
}

/// Records being fetched from a standby ahead of us.
#[derive(Clone, Debug)]
struct Fetch {
    from: NodeId,
    up_to: LogEnd,
    /// When it began or last brought records: one quiet for long is asked
    /// again from where our log ends.
    progress_at: Time,
}

impl Candidacy {
    fn new(seal: Epoch, now: Time) -> Candidacy {
        Candidacy {
            seal,
            started: now,
            fresh: false,
            answers: BTreeMap::new(),
            mine: None,
            asked_at: None,
            fetch: None,
            fetch_again_at: None,
            cannot_fetch_from: BTreeMap::new(),
            ready_for: None,
        }
    }
}

impl Node {
    /// Whether a failover from `known` must first hear from other
    /// standbys (and so waits for `candidacy_allows_swap`).
    pub(super) fn needs_quorum_promotion(&self, known: &Register) -> bool {
        !self.cfg.testing_quorum_promotion_without_positions
            && positions_needed(&self.promotion_rule(known), &known.sync_set) > 1
    }

    /// The rule a failover judges by. This node's own when the heartbeat of
    /// the register's primary, at the register's epoch, named the same
    /// within the last two `failover_timeout`s (a heartbeat naming another
    /// makes the standby ineligible: `Standby::foreign_rule`). Otherwise (a
    /// restarted member while the primary is dead, a primary this node
    /// heard only by its WAL, or one that may have restarted with another
    /// rule while this node was cut off) that primary may have committed
    /// under a rule waiting for fewer standbys than ours, so it judges by
    /// `ANY 1` over the sync set,
    /// which holds for any rule the primary had: it hears from every
    /// member before it swaps. A member its own `sync_standbys` does not
    /// name keeps that rule (it never promotes); a pair has one member.
    pub(super) fn promotion_rule(&self, known: &Register) -> Cow<'_, CommitRule> {
        let named = self.candidate_priority(&self.cfg.node_id) > 0;
        let pair = self.cluster_rule.is_empty();
        // Heard lately: a primary that restarted with another rule keeps
        // its epoch, and a standby cut off meanwhile would not know.
        let now = self.last_step.unwrap_or_default();
        let fresh_for = self.cfg.failover_timeout * 2;
        let heard = self
            .primary_rule_heard
            .as_ref()
            .is_some_and(|(epoch, primary, at)| {
                *epoch == known.epoch
                    && known.primary.as_ref() == Some(primary)
                    && now.saturating_sub(*at) <= fresh_for
            });
        if heard || !named || pair || known.sync_set.is_empty() {
            return Cow::Borrowed(&self.commit_rule);
        }
        let members = known.sync_set.iter().cloned().collect();
        Cow::Owned(
            CommitRule::new(Method::Any, 1, members)
                .expect("a sync set names each member once and is not empty"),
        )
    }

    /// Whether the candidacy decided that this node holds every
    /// acknowledged write, judged by `known`'s sync set, and holds it on
    /// its disk (a crash after the swap must not lose what it fetched).
    pub(super) fn candidacy_allows_swap(&self, known: &Register) -> bool {
        self.flushed >= self.last_lsn
            && self
                .candidacy
                .as_ref()
                .is_some_and(|c| c.ready_for == Some(known.version) && c.seal == self.epoch.next())
    }

    /// Whether the candidacy waits for a register read made after it
    /// began (see `Candidacy::started`).
    pub(super) fn candidacy_needs_fresh_register(&self) -> bool {
        self.candidacy.as_ref().is_some_and(|c| !c.fresh)
    }

    /// The arbiter answered a call made at `asked_at`.
    pub(super) fn candidacy_saw_register(&mut self, asked_at: Option<Time>) {
        if let Some(c) = self.candidacy.as_mut()
            && asked_at.is_some_and(|at| at >= c.started)
        {
            c.fresh = true;
        }
    }

    pub(super) fn end_candidacy(&mut self) {
        if let Some(c) = self.candidacy.take() {
            tracing::debug!(seal = %c.seal, "quorum promotion ended");
        }
    }

    /// The candidacy's work for this step: seal who has not answered,
    /// fetch, decide. `known` allows a failover of this node.
    pub(super) fn candidacy_work(&mut self, now: Time, known: &Register) {
        let seal = self.epoch.next();
        if self.candidacy.as_ref().is_none_or(|c| c.seal != seal) {
            let rule = self.promotion_rule(known);
            let need = positions_needed(&rule, &known.sync_set);
            tracing::info!(%seal, need, %rule, "failover: asking the other standbys in sync for their final positions first");
            self.candidacy = Some(Candidacy::new(seal, now));
        }
        let me = self.cfg.node_id.clone();
        let interval = self.cfg.heartbeat_interval;
        let quiet = self.cfg.rpc_timeout * 4;
        if self.candidacy.as_ref().is_some_and(|c| !c.fresh) {
            return;
        }
        let rule = self.promotion_rule(known).into_owned();
        let c = self.candidacy.as_mut().expect("set above");
        let unanswered: Vec<NodeId> = rule
            .counted(&known.sync_set)
            .filter(|n| **n != me && !c.answers.contains_key(*n))
            .cloned()
            .collect();
        if !unanswered.is_empty() && c.asked_at.is_none_or(|at| now >= at + interval) {
            c.asked_at = Some(now);
            self.emit(Effect::SealStandbys {
                epoch: seal,
                to: unanswered,
            });
        }
        // A fetch that went quiet is asked again, from where our log ends.
        let c = self.candidacy.as_mut().expect("set above");
        if c.fetch
            .as_ref()
            .is_some_and(|f| now >= f.progress_at + quiet)
        {
            c.fetch = None;
        }
        self.decide_candidacy(now, known);
    }

    fn decide_candidacy(&mut self, now: Time, known: &Register) {
        let me = self.cfg.node_id.clone();
        let (epoch, last) = (self.epoch, self.last_lsn);
        let rule = self.promotion_rule(known).into_owned();
        let Some(c) = self.candidacy.as_mut() else {
            return;
        };
        // Before any answer (each brings our log end) nobody answered: the
        // decision is then to wait for positions.
        let mine = c.mine.unwrap_or_default();
        if !c.fresh || c.ready_for == Some(known.version) || c.fetch.is_some() {
            return;
        }
        c.ready_for = None;
        // A standby we cannot take records from counts as if it had not
        // answered: enough others may still decide (under a quorum, what
        // only it holds was never acknowledged); if not, we hold back and it
        // may promote instead.
        let usable: BTreeMap<NodeId, LogEnd> = c
            .answers
            .iter()
            .filter(|(n, _)| !c.cannot_fetch_from.contains_key(*n))
            .map(|(n, end)| (n.clone(), *end))
            .collect();
        let why = match decide_promotion(&rule, &known.sync_set, &me, mine, &usable) {
            PromotionDecision::Promote => {
                tracing::info!(
                    heard = c.answers.len(),
                    register = known.version,
                    "failover: this standby holds every acknowledged write"
                );
                c.ready_for = Some(known.version);
                return;
            }
            PromotionDecision::NotEligible { why } => why.to_string(),
            PromotionDecision::NeedPositions { have, need } => {
                let mut why = format!(
                    "heard from {have} of the {need} standbys in sync (this one included) that must give their final positions before a promotion"
                );
                if !c.cannot_fetch_from.is_empty() {
                    let blocked: Vec<String> = c
                        .cannot_fetch_from
                        .iter()
                        .map(|(from, why)| cannot_fetch(from, why))
                        .collect();
                    why.push_str(", not counting: ");
                    why.push_str(&blocked.join("; "));
                }
                why
            }
            PromotionDecision::FetchFirst { from, up_to } if up_to.epoch > epoch => format!(
                "{from} holds records of epoch {}: a newer primary exists",
                up_to.epoch
            ),
            PromotionDecision::FetchFirst { from, up_to } if up_to.lsn <= mine.lsn => format!(
                "this standby's log ({mine:?}) diverges from {from}'s ({up_to:?}), which holds records it lacks; {from} may promote instead"
            ),
            PromotionDecision::FetchFirst { .. } if c.fetch_again_at.is_some_and(|at| now < at) => {
                return;
            }
            PromotionDecision::FetchFirst { from, up_to } => {
                tracing::info!(%from, after = %last, up_to = %up_to.lsn, "failover: fetching the records this standby lacks from the most advanced standby first");
                c.fetch = Some(Fetch {
                    from: from.clone(),
                    up_to,
                    progress_at: now,
                });
                let seal = c.seal;
                self.emit(Effect::FetchWal {
                    from,
                    epoch: seal,
                    after: last,
                    up_to: up_to.lsn,
                });
                return;
            }
        };
        self.hold_back(format!(
            "the primary is silent but this standby may not promote yet: {why}"
        ));
    }

    /// A sealed standby answered (or refused).
    pub(super) fn on_seal_answered(
        &mut self,
        now: Time,
        from: NodeId,
        epoch: Epoch,
        answer: Result<LogEnd, SealRefused>,
        mine: LogEnd,
    ) {
        let Some(c) = self.candidacy.as_mut() else {
            return;
        };
        if c.seal != epoch {
            // An answer to an earlier round's seal, late: the standby may
            // have taken records from a primary of that epoch since.
            tracing::info!(standby = %from, %epoch, seal = %c.seal, "failover: ignoring an answer to an earlier seal");
            return;
        }
        let newer = match answer {
            Ok(end) => {
                tracing::info!(standby = %from, last_lsn = %end.lsn, last_epoch = %end.epoch, "failover: a standby adopted the candidate's epoch and gave its final position");
                c.answers.insert(from, end);
                None
            }
            Err(refused) => {
                tracing::info!(standby = %from, why = %refused.why, "failover: a standby did not give its position");
                refused.newer
            }
        };
        if let Some((epoch, leader)) = newer
            && epoch > self.epoch
        {
            // The member refused at an epoch above ours (it follows the
            // epoch this candidacy seals for, or a newer one), which this
            // candidacy can never take: the node adopts it as any newer
            // epoch, and where the member names this node the leader of
            // our next epoch, an old primary handed it to us by a
            // switchover (`on_higher_epoch`), which the node asks the
            // arbiter for. Without this a candidate whose switchover was
            // given up (the arbiter did not answer) sealed for ever the
            // standbys the old primary had told of it. What held the
            // candidacy back is no longer waited for. (An epoch this node
            // cannot take, `on_higher_epoch` ignores: the candidacy goes on.)
            let was = self.epoch;
            let handed = leader.as_ref() == Some(&self.cfg.node_id) && self.may_be_handed(epoch);
            self.on_higher_epoch(epoch, leader);
            if self.epoch > was || handed {
                self.clear_held_back();
                return;
            }
        }
        let Some(c) = self.candidacy.as_mut() else {
            return;
        };
        if c.fetch.is_none() {
            c.mine = Some(mine);
        }
        if let Some(known) = self.failover_register() {
            self.decide_candidacy(now, &known);
        }
    }

    /// Records fetched from the most advanced standby: appended when they
    /// continue our log; the candidacy decides again once they reach the
    /// end it fetched up to. A failed or empty fetch forgets that
    /// standby's answer (it is asked again: its log may have changed, a
    /// crash may have cut an unflushed tail) and waits a heartbeat
    /// interval; records that do not continue our log, or a standby that
    /// trimmed them from its WAL, end fetching from it.
    pub(super) fn on_wal_fetched(
        &mut self,
        now: Time,
        from: NodeId,
        fetched: Result<(Vec<Record>, bool), FetchFailed>,
    ) {
        let interval = self.cfg.heartbeat_interval;
        let last_lsn = self.last_lsn;
        let standby = matches!(self.role, Role::Standby(_));
        let Some(c) = self.candidacy.as_mut() else {
            return;
        };
        let Some(fetch) = c.fetch.clone().filter(|f| f.from == from) else {
            return;
        };
        // Records that do not continue our log, or a standby that trimmed
        // them (its engine made them durable): asking again cannot bring
        // them. That standby holds them, so it may promote instead (our
        // seal stops, so its own failover clock runs out); fetching again
        // would seal it each time and keep it from trying itself.
        let cannot = match &fetched {
            Ok((_, false)) => {
                Some("its log diverges from this standby's before its last record".to_string())
            }
            Err(FetchFailed::Trimmed(why)) => {
                Some(format!("it no longer keeps them in its WAL ({why})"))
            }
            _ => None,
        };
        if let Some(why) = cannot {
            c.fetch = None;
            let blocked = cannot_fetch(&from, &why);
            c.cannot_fetch_from.insert(from, why);
            tracing::warn!("failover: {blocked}");
            return self.hold_back(format!(
                "the primary is silent but this standby may not promote yet: {blocked}"
            ));
        }
        let records = match fetched {
            Ok((records, true)) if !records.is_empty() => records,
            failed => {
                let why = failed
                    .err()
                    .map_or_else(|| "it sent no records".into(), |e| e.to_string());
                tracing::warn!(%from, %why, "failover: fetching the missing records failed; asking that standby for its position again");
                c.fetch = None;
                c.answers.remove(&from);
                c.fetch_again_at = Some(now + interval);
                return;
            }
        };
        if records[0].lsn != last_lsn.next() || !standby {
            // Our log moved meanwhile (the old primary's stream came back):
            // the next decision starts over from where it is now.
            c.fetch = None;
            return;
        }
        let last = &records[records.len() - 1];
        let end = LogEnd {
            epoch: last.epoch,
            lsn: last.lsn,
        };
        c.mine = Some(end);
        let done = end.lsn >= fetch.up_to.lsn;
        if done {
            c.fetch = None;
        } else if let Some(f) = c.fetch.as_mut() {
            f.progress_at = now;
        }
        self.append_received(now, records, true);
        if done {
            tracing::info!(%from, last = %end.lsn, "failover: fetched every record the most advanced standby holds");
            if let Some(known) = self.failover_register() {
                self.decide_candidacy(now, &known);
            }
        }
    }

    /// A fence of reason `Candidate`: another standby promotes and asks
    /// for our final position. Answered with `Effect::ReplyFence`.
    pub(super) fn on_sealed(
        &mut self,
        now: Time,
        epoch: Epoch,
        candidate: NodeId,
        candidate_end: Option<LogEnd>,
        mine: LogEnd,
    ) {
        let refuse = |node: &mut Node, reason: String| {
            node.emit(Effect::ReplyFence(super::FenceOutcome::Refused { reason }));
        };
        if !matches!(self.role, Role::Standby(_)) {
            let kind = self.role.kind();
            return refuse(
                self,
                format!("this node is {kind}, not a standby: its position is not a standby's"),
            );
        }
        if epoch < self.epoch || (epoch == self.epoch && self.leader.is_some()) {
            let reason = format!(
                "this node is at epoch {} (leader {:?}): a candidate for epoch {epoch} is too late",
                self.epoch, self.leader
            );
            return refuse(self, reason);
        }
        if matches!(
            self.arbiter_asking(),
            Some(ArbiterPurpose::Promote(_) | ArbiterPurpose::Reclaim)
        ) {
            // Our own swap is in flight: yielding now would leave a
            // register naming us primary of an epoch nobody leads, and the
            // candidate's swap fails against it. Its answer decides first.
            return refuse(
                self,
                format!(
                    "this node's own promotion is being recorded by the arbiter; ask again once it answered (a candidate for epoch {epoch})"
                ),
            );
        }
        if self.candidacy.as_ref().is_some_and(|c| c.seal == epoch)
            && self.ranks_before(mine, &candidate, candidate_end)
        {
            return refuse(
                self,
                format!("this standby is a candidate for epoch {epoch} too, and comes first"),
            );
        }
        if epoch > self.epoch
            && let Role::Standby(s) = &self.role
            && s.heard_primary_within(now, self.cfg.failover_timeout / 2)
        {
            // The primary (or the last candidate) is alive to us: a
            // candidate that cannot reach it, or a seal delayed in the
            // network, must not step it down.
            return refuse(
                self,
                format!(
                    "this standby heard from its primary (or a candidate) less than half of failover_timeout ago; not adopting epoch {epoch}"
                ),
            );
        }
        if epoch > self.epoch {
            tracing::info!(%epoch, %candidate, "a standby promotes and asked for this node's final position: adopting its epoch; the old primary's WAL is refused from now on");
            // Ends our own candidacy too.
            self.abandon_promotion(format!("{candidate} is promoting at epoch {epoch}"));
            self.persist(epoch, None);
        }
        if let Role::Standby(s) = &mut self.role {
            // The candidate gets a whole failover_timeout before we try.
            s.restart_failover_clock(now);
        }
        self.emit(Effect::ReplyFence(super::FenceOutcome::Fenced {
            last_lsn: self.last_lsn,
        }));
    }

    /// `node`'s candidate priority by this node's `sync_standbys`: 0 for a
    /// node it does not name (it never promotes), its place in a `FIRST`
    /// list, 1 for each node an `ANY` rule names, and 1 for every node
    /// under the default rule (which names every node alike; this node's
    /// own `commit_rule` then names only its peers).
    fn candidate_priority(&self, node: &NodeId) -> usize {
        self.cfg
            .sync_standbys
            .as_ref()
            .map_or(1, |r| r.priority(node))
    }

    /// Whether this node, whose log ends at `mine`, goes before `other`
    /// (whose seal said `other_end`) when both are candidates of one
    /// round: the rule's priority, then the more advanced log (it has the
    /// least to fetch), then the node id. Both sides compare the same
    /// pair of values once each has the other's latest seal (seals go
    /// again every heartbeat interval with the sender's log end then), so
    /// exactly one yields. Without `other_end` (a sender that predates it)
    /// the logs are left out, as that sender leaves them out.
    fn ranks_before(&self, mine: LogEnd, other: &NodeId, other_end: Option<LogEnd>) -> bool {
        // Priority 0 (never a candidate) goes last.
        let rank = |n: &NodeId| match self.candidate_priority(n) {
            0 => usize::MAX,
            p => p,
        };
        let me = &self.cfg.node_id;
        let (mine, theirs) = match other_end {
            Some(theirs) => (Reverse(mine), Reverse(theirs)),
            None => (Reverse(LogEnd::default()), Reverse(LogEnd::default())),
        };
        (rank(me), mine, me) < (rank(other), theirs, other)
    }
}

/// Why a candidacy cannot take the records it lacks from `from` (`why`
/// says what stops it), for its logs and its held-back reason.
fn cannot_fetch(from: &NodeId, why: &str) -> String {
    format!("{from} holds records this standby lacks and {why}; {from} may promote instead")
}
