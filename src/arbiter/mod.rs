//! The arbiter: a compare-and-swap register per cluster that decides who may
//! promote and when a primary may acknowledge alone.
//!
//! Two data nodes cannot tell a dead peer from a cut link; the arbiter is the
//! third vote. It holds no data and sits off the write path: a node asks it
//! only to promote, to go on without its standby, to take a caught-up
//! standby back into the sync set, and to bootstrap a fresh cluster.
//!
//! The register is `{version, epoch, primary, sync_set, members}`:
//! * `version` goes up by one with every successful compare-and-swap; 0
//!   means the cluster has no register yet;
//! * `epoch` and `primary` name the primary the register last granted;
//! * `sync_set` holds the standbys that have every acknowledged write: only
//!   they may promote, and the primary acknowledges without a standby only
//!   once that standby is out of it;
//! * `members` lists the cluster's data nodes, so a register rebuilt after
//!   a witness lost its file waits for every one of them (see
//!   [`Registers`]).
//!
//! Safety needs no clock: every decision is a compare-and-swap on
//! `version`, so of two nodes acting on the same register at most one
//! succeeds, however late or reordered their messages are.
//!
//! Backends implement [`Arbiter`]: the built-in witness (`walrep witness`),
//! etcd ([`EtcdArbiter`]), or `MemArbiter` in tests (`walrep::testing`,
//! with the `testing` feature). [`from_url`] makes an etcd arbiter from its
//! URL; the witness's client is [`WitnessClient::connect_lazy`] (or
//! `connect_lazy_tls`, feature `tls`).

mod etcd;
#[cfg(any(test, feature = "testing"))]
mod mem;
mod registers;
mod url;
mod wire;
pub mod witness;

#[cfg(any(test, feature = "testing"))]
pub use mem::MemArbiter;

pub use crate::node::ArbiterStatus;
#[cfg(feature = "tls")]
pub use crate::transport::{ClientCertificate, WITNESS_NAME};
pub use etcd::{EtcdArbiter, EtcdEndpoint, EtcdTarget};
pub use registers::{Registers, SwapRefusal, WentBack};
pub use url::{ArbiterUrl, ArbiterUrlError, from_url};
pub use wire::{decode_register, encode_register};
pub use witness::{WitnessClient, WitnessService};

use crate::types::{Epoch, NodeId};
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::fmt;

/// One cluster's register, as the arbiter holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Register {
    /// Bumped by the arbiter at every successful compare-and-swap; 0 for a
    /// cluster that has no register yet.
    pub version: u64,
    /// The epoch of the primary the register last granted.
    pub epoch: Epoch,
    /// That primary; `None` before bootstrap.
    pub primary: Option<NodeId>,
    /// The standbys that hold every acknowledged write.
    pub sync_set: BTreeSet<NodeId>,
    /// The cluster's data nodes.
    pub members: BTreeSet<NodeId>,
}

impl Register {
    /// A register naming `primary` at `epoch` for a cluster of `members`,
    /// with an empty sync set: what a bootstrap or a rebuild proposes.
    pub fn fresh(epoch: Epoch, primary: &NodeId, members: &[NodeId]) -> Register {
        Register {
            version: 0,
            epoch,
            primary: Some(primary.clone()),
            sync_set: BTreeSet::new(),
            members: members.iter().cloned().collect(),
        }
    }

    /// Whether the cluster has a register yet.
    pub fn exists(&self) -> bool {
        self.version > 0
    }

    /// The register a successful swap of `self` to `next` leaves: `next`'s
    /// contents at the next version.
    pub fn successor(&self, next: &Register) -> Register {
        Register {
            version: self.version + 1,
            ..next.clone()
        }
    }
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |set: &BTreeSet<NodeId>| {
            set.iter()
                .map(|n| n.0.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "v{} epoch {} primary {} sync_set [{}] members [{}]",
            self.version,
            self.epoch,
            self.primary.as_ref().map_or("-", |p| p.0.as_str()),
            names(&self.sync_set),
            names(&self.members)
        )
    }
}

/// Who asks the arbiter: a data node and the highest epoch it has
/// persisted. A witness uses the epochs nodes report to refuse re-creating
/// a register below them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The node.
    pub node_id: NodeId,
    /// The highest epoch the node has persisted.
    pub epoch: Epoch,
    /// The highest register version the node has been answered (0: none).
    /// A witness re-creating a register it lost starts above every
    /// member's, so a node's stale compare-and-swap can never match a
    /// version of the new register.
    pub seen_version: u64,
    /// The node holds itself leader of `epoch`, from the promotion it
    /// persisted on (it may have acknowledged writes in it); a primary
    /// started on a fresh directory that nobody confirmed does not. A
    /// witness re-creating a register it lost never names another node
    /// primary of that epoch.
    pub leads: bool,
}

impl Caller {
    /// `node_id` at `epoch`, having seen no register yet, not leading it.
    pub fn new(node_id: impl Into<NodeId>, epoch: Epoch) -> Caller {
        Caller {
            node_id: node_id.into(),
            epoch,
            seen_version: 0,
            leads: false,
        }
    }
}

/// The answer to a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The register was at the expected version; it now holds this.
    Swapped(Register),
    /// The register had moved on; this is what it holds now.
    Conflict(Register),
}

/// Why the arbiter gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ArbiterError {
    /// It could not be reached, or did not answer in time. The register may
    /// or may not have changed: read it again before acting.
    #[error("arbiter unreachable: {0}")]
    Unreachable(String),
    /// It refused the swap whatever the version (see [`SwapRefusal`]).
    #[error("arbiter refused the swap: {0}")]
    Refused(SwapRefusal),
    /// It answered something this node cannot use (a malformed reply, a
    /// wrong cluster, a rejected identity). Retrying will not help without
    /// an operator.
    #[error("arbiter error: {0}")]
    Invalid(String),
}

/// A compare-and-swap register per cluster. Implementations must make each
/// swap durable before they answer, and must never answer `Swapped` for a
/// swap that did not take effect.
#[async_trait]
pub trait Arbiter: Send + Sync + fmt::Debug + 'static {
    /// The register of `cluster_id` (version 0 when it has none).
    async fn read(&self, cluster_id: &str, caller: &Caller) -> Result<Register, ArbiterError>;

    /// Replaces the register of `cluster_id` with `next` (its `version` is
    /// ignored: the arbiter sets `expected_version + 1`) if it is still at
    /// `expected_version`. Expecting version 0 creates it.
    async fn compare_and_swap(
        &self,
        cluster_id: &str,
        caller: &Caller,
        expected_version: u64,
        next: &Register,
    ) -> Result<CasOutcome, ArbiterError>;

    /// How logs, `/health` and metrics name it, e.g. `witness://10.0.0.3:7010`.
    fn describe(&self) -> String;
}
