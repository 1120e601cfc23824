//! The commit rule of a primary with more than one standby, without I/O:
//! PostgreSQL's `synchronous_standby_names` (`FIRST k (...)`, `ANY k (...)`)
//! over the arbiter's sync set.
//!
//! * `rule.rs` — the rule and its checks; `syntax.rs` — its text form;
//!   `error.rs` — what can be wrong with it.
//! * `commit.rs` — what the primary may acknowledge, and when a standby may
//!   leave or enter the sync set.
//! * `promotion.rs` — whether a standby may promote, and who tries first.
//!
//! ## The invariant
//!
//! The standbys that *count* are the members of the register's sync set
//! that the rule names; k' = min(k, how many count). Every acknowledged
//! write is held by at least k' of them. The primary keeps it by waiting
//! for k' confirmations (k' = 0: it acknowledges alone), by taking a
//! standby out only when k' of the rest still hold every acknowledged
//! write, by letting one in only when it holds them all, and by satisfying
//! the rule for both sets while a change is in flight. A candidate then
//! hears from |counted| − k' + 1 of them, a set that meets every k'
//! holders, and fetches from the most advanced before it promotes.
//!
//! ## What the runtime adds (and where)
//!
//! * The positions a candidate hears must be final: each standby stops
//!   taking the old primary's WAL before it answers. Positions collected
//!   from standbys that still follow the old primary are not enough: it
//!   could acknowledge a later write with k' of them (the model of more
//!   than one standby finds this in 8 steps). Two ways pass the model: the
//!   standby adopts the new epoch, as a fence does; or it *seals* itself
//!   against the register value the candidate promotes from (persisted
//!   before it answers; it takes no record of that epoch until it hears of
//!   a newer register value or epoch), which does not fence the old
//!   primary when the promotion fails. The node takes the first way
//!   (`candidacy.rs`: a fence of reason `Candidate`).
//! * The candidate's swap must expect the exact register version whose
//!   sync set it judged by. Meanwhile the old primary may legitimately
//!   shrink the set (take the candidate's answerers out, then acknowledge
//!   with the rest); only the version comparison makes the decision stale.
//!   (`arbiter.rs` swaps only from the version the candidacy judged by.)
//! * Every node must judge with the same rule and the same sync set: a
//!   candidate that believed k larger than the primary's would ask too few
//!   standbys. The register's sync set is shared; the rule must be too
//!   (one text on every node, which may name every node including itself,
//!   or better, in the register). Today the operator gives every node the
//!   same text; nothing checks it across nodes.
//! * The sync set must hold only standbys the rule names: the promotion
//!   gate that checks membership alone would let an unnamed member (left
//!   over from a rule change) promote while writes were acknowledged
//!   without it. The primary takes unnamed members out first.
//! * With `remote-write` a standby's position is in its OS cache, not on
//!   its disk: a standby whose machine crashes may lose what it reported,
//!   and so the lower bound. The pair accepts this (a restarted standby is
//!   not eligible); with a quorum, a crashed member must leave the sync
//!   set, or re-enter only after catching up again.
//! * k' shrinks with the sync set: `ANY 2` acknowledges with one standby
//!   once only one counts. That is the pair's `solo`, decided through the
//!   arbiter; PostgreSQL instead blocks until k standbys are connected.
//!
//! The pair is the rule `ANY 1 (peer)` (`CommitRule::pair`): its primary
//! commits through `acknowledgeable` over the standby while commits wait
//! for it, and admits the standby to the register's sync set through
//! `may_join`. Its other decisions are this module's with one standby:
//! the last member of a sync set may always leave (going solo), and a
//! standby in the sync set promotes hearing from nobody else
//! (|counted| − k' + 1 = 1), which is the register check the pair makes.

mod commit;
mod error;
mod promotion;
mod rule;
mod syntax;
#[cfg(test)]
mod tests;

pub(crate) use commit::StandbyLsns;
pub use error::CommitRuleError;
pub use promotion::LogEnd;
pub(crate) use promotion::{
    Ineligible, PromotionDecision, decide_promotion, positions_needed, rank_candidates,
};
pub use rule::{CommitRule, Method};
