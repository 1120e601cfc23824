//! Tests of the commit rule, the acknowledgment and sync-set rules and
//! promotion: examples per file, properties over random clusters and
//! histories in `properties.rs`.

mod commit;
mod promotion;
mod properties;
mod rule;

use super::{CommitRule, StandbyLsns};
use crate::types::{Lsn, NodeId};
use std::collections::BTreeSet;

fn ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|n| NodeId::from(*n)).collect()
}

fn set(names: &[&str]) -> BTreeSet<NodeId> {
    names.iter().map(|n| NodeId::from(*n)).collect()
}

fn rule(text: &str) -> CommitRule {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} must parse: {e}"))
}

fn lsns(positions: &[(&str, u64)]) -> StandbyLsns {
    positions
        .iter()
        .map(|(n, l)| (NodeId::from(*n), Lsn(*l)))
        .collect()
}
