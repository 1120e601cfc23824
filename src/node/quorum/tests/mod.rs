//! Tests of the commit rule, the acknowledgment and sync-set rules and
//! promotion: examples per file, properties over random clusters and
//! histories in `properties.rs`.

mod rule;

use super::CommitRule;
use crate::types::NodeId;

fn ids(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(|n| NodeId::from(*n)).collect()
}

fn rule(text: &str) -> CommitRule {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} must parse: {e}"))
}
