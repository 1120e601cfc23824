//! The commit rule: which standbys must confirm a write before the primary
//! acknowledges it, as PostgreSQL's `synchronous_standby_names` says it.
//! Its text form is in `syntax.rs`, its errors in `error.rs`.

use super::error::CommitRuleError;
use crate::types::NodeId;
use std::collections::BTreeSet;

/// How the rule picks the standbys that must confirm a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// The first k standbys that count, in the rule's order (priority).
    First,
    /// Any k standbys that count (a quorum).
    Any,
}

impl Method {
    /// The keyword, as `Display` writes it.
    pub fn keyword(self) -> &'static str {
        match self {
            Method::First => "FIRST",
            Method::Any => "ANY",
        }
    }
}

/// `FIRST k (names)` or `ANY k (names)`: always at least one name, no name
/// twice, and `1 <= k <= names.len()` (`CommitRule::new` and `FromStr`
/// refuse anything else).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CommitRule {
    method: Method,
    count: usize,
    standbys: Vec<NodeId>,
}

impl CommitRule {
    /// `method k (standbys)`, or why it is not a rule.
    pub(crate) fn new(
        method: Method,
        count: usize,
        standbys: Vec<NodeId>,
    ) -> Result<CommitRule, CommitRuleError> {
        let columns = vec![0; standbys.len()];
        CommitRule::checked(method, count, standbys, &columns)
    }

    /// `ANY 1 (peer)`: the pair's rule (the primary waits for its one standby).
    pub fn pair(peer: &NodeId) -> CommitRule {
        CommitRule::new(Method::Any, 1, vec![peer.clone()]).expect("one name, k = 1")
    }

    /// `ANY n (standbys)`: every one of the `n` standbys confirms each
    /// write (the default rule, `Config::commit_rule`).
    pub fn all_of(standbys: Vec<NodeId>) -> CommitRule {
        let n = standbys.len().max(1);
        CommitRule::new(Method::Any, n, standbys).expect("the default rule names every peer once")
    }

    /// `columns[i]`: where `standbys[i]` appears in the text (0 when built
    /// in code), for the duplicate's message.
    pub(super) fn checked(
        method: Method,
        count: usize,
        standbys: Vec<NodeId>,
        columns: &[usize],
    ) -> Result<CommitRule, CommitRuleError> {
        for (i, name) in standbys.iter().enumerate() {
            if let Some(j) = standbys[..i].iter().position(|n| n == name) {
                return Err(CommitRuleError::DuplicateName {
                    name: name.0.clone(),
                    first: columns[j],
                    again: columns[i],
                });
            }
        }
        if count == 0 {
            return Err(CommitRuleError::ZeroCount);
        }
        if count > standbys.len() {
            return Err(CommitRuleError::CountAboveList {
                count,
                named: standbys.len(),
            });
        }
        Ok(CommitRule {
            method,
            count,
            standbys,
        })
    }

    /// FIRST or ANY.
    pub fn method(&self) -> Method {
        self.method
    }

    /// k: how many standbys must confirm a write (fewer when fewer count,
    /// see `effective_count`).
    pub fn count(&self) -> usize {
        self.count
    }

    /// The named standbys, in the rule's order.
    pub fn standbys(&self) -> &[NodeId] {
        &self.standbys
    }

    /// A standby's priority as PostgreSQL reports it: 0 for a standby the
    /// rule does not name (it never counts and never promotes); with
    /// FIRST its place in the list from 1 (lower waits first); with ANY 1
    /// for every named standby.
    pub fn priority(&self, standby: &NodeId) -> usize {
        match self.standbys.iter().position(|n| n == standby) {
            None => 0,
            Some(_) if self.method == Method::Any => 1,
            Some(i) => i + 1,
        }
    }

    /// The members of `sync_set` the rule names, in the rule's order: the
    /// standbys that count. A member the rule does not name counts for
    /// nothing, as an asynchronous standby.
    pub(crate) fn counted<'a>(
        &'a self,
        sync_set: &'a BTreeSet<NodeId>,
    ) -> impl Iterator<Item = &'a NodeId> + 'a {
        self.standbys.iter().filter(|n| sync_set.contains(*n))
    }

    /// k' = min(k, standbys that count): how many must confirm a write with
    /// this sync set. 0 means the primary acknowledges alone.
    pub(crate) fn effective_count(&self, sync_set: &BTreeSet<NodeId>) -> usize {
        self.count.min(self.counted(sync_set).count())
    }

    /// Checks the rule for the node `me` of a cluster whose other data
    /// nodes are `peers`: it names only nodes of the cluster. It may name
    /// `me` (as PostgreSQL's list may name the primary itself), so that
    /// every node can be given the same rule text: a primary is never in
    /// its own sync set, so its own name never counts while it is the
    /// primary, and as a candidate it must be named to promote.
    pub(crate) fn validate_for(
        &self,
        me: &NodeId,
        peers: &[NodeId],
    ) -> Result<(), CommitRuleError> {
        for name in &self.standbys {
            if name != me && !peers.contains(name) {
                return Err(CommitRuleError::NotAPeer {
                    name: name.0.clone(),
                    peers: peers
                        .iter()
                        .map(|p| p.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(())
    }
}
