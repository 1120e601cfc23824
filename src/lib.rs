//! # walrep
//!
//! WAL-streaming primary/standby replication for a storage engine on two
//! machines, with automatic failover made safe by epochs.
//!
//! (The protocol and failure model are described at length in the
//! `node` module and in `docs/GUARANTEES.md`.)

pub mod config;
pub mod error;
pub mod node;
pub mod replicator;
pub mod runtime;
pub mod state_machine;
pub mod transport;
pub mod types;
pub mod wal;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Generated protobuf and tonic code. Protobuf types never leave the
/// transport layer; the rest of the crate speaks `types`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("walrep.v1");
}

pub use config::{CommitMode, Config, ConfigError, InitialRole, OnStandbyLoss, Setting};
pub use error::{Error, LeaderHint, Result, TransportError};
pub use node::{RoleKind, SyncState};
pub use replicator::{Applied, Health, PeerHealth, Replicator};
pub use runtime::{MetricsSnapshot, Replica, ReplicaBuilder, serve};
pub use state_machine::{Snapshot, StateMachine, StateMachineError};
pub use transport::{GrpcPeer, Peer, ReplicationService};
pub use types::{Epoch, EpochHistory, EpochStart, Lsn, NodeId, Record};
pub use wal::{FileWal, FileWalOptions, MemWal, WalError, WalMeta, WalStore};
