//! Helpers for tests of walrep and of the engines that embed it: not part of
//! the replication API, and built only with the `testing` feature (and for
//! walrep's own unit tests). Nothing here is needed to run a node; all of
//! it may change in any release.

mod alloc;
mod etcd;
mod history;
mod link;
mod pair;
mod state_machine;
#[cfg(feature = "tls")]
mod tls;

pub use crate::arbiter::MemArbiter;
pub use alloc::{TrackingAllocator, largest_allocation};
pub use etcd::{EtcdServer, free_port};
pub use history::{AckedWrite, Durability, FinalState, History, Observation, Violation, converged};
pub use link::Link;
pub use pair::{Pair, PairBuilder, PairNode, PairWal, rebind, test_config};
pub use state_machine::MemStateMachine;
#[cfg(feature = "tls")]
pub use tls::{peer_with_identity, witness_with_identity};

/// An in-memory [`WalStore`](crate::WalStore): nothing survives the
/// process, and its calls never block, so a simulation stays
/// deterministic. For tests only.
pub use crate::wal::MemWal;

/// Why a fence is sent, as the wire carries it.
pub use crate::node::FenceReason;
/// Where a log ends (its last record and that record's epoch), as a
/// candidate's seal carries it.
pub use crate::node::LogEnd;
/// The peer seam, for tests that wrap `GrpcPeer` to cut links or reorder
/// messages: pass a [`Peer`] to `ReplicaBuilder::peer`. The messages are
/// the wire protocol's, which may change in any release.
pub use crate::transport::{
    AckStream, FenceReply, FenceRequest, Header, HeartbeatReply, HeartbeatRequest, HistoryReply,
    Peer, PromoteReply, PromoteRequest, SnapshotInfo, SnapshotPart, SnapshotRequest,
    SnapshotStream, StatusReply, WalAck, WalBatch,
};

/// The on-disk framing of one WAL record, for crash tests that compute
/// where a torn write may cut a segment.
pub mod wal_record {
    pub use crate::wal::record::{HEADER_LEN, encoded_len};
}

/// In a test engine that wraps another in its field `$inner`, the
/// `StateMachine` methods that only pass through to it: `apply`,
/// `applied_lsn` and `restore`.
#[cfg(test)]
macro_rules! pass_through_to {
    ($inner:tt) => {
        fn apply(
            &self,
            lsn: crate::types::Lsn,
            payload: &[u8],
        ) -> Result<(), crate::StateMachineError> {
            self.$inner.apply(lsn, payload)
        }
        fn applied_lsn(&self) -> crate::types::Lsn {
            self.$inner.applied_lsn()
        }
        fn restore(
            &self,
            lsn: crate::types::Lsn,
            input: &mut dyn std::io::Read,
        ) -> Result<(), crate::StateMachineError> {
            self.$inner.restore(lsn, input)
        }
    };
}
#[cfg(test)]
pub(crate) use pass_through_to;
