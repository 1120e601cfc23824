//! # walrep
//!
//! WAL-streaming primary/standby replication for a storage engine on two
//! machines, with automatic failover made safe by epochs.
//!
//! An engine implements [`StateMachine`] (what a committed record does to
//! its state), opens a [`FileWal`] (or brings its own [`WalStore`]), starts
//! a node with [`Replica::builder`] and serves the returned
//! [`ReplicationService`] with [`serve`] so the peer can reach it. It then
//! writes through [`Replicator::apply`] on the primary and follows the
//! node's role in [`Replicator::subscribe`]. Every setting is in
//! [`Config`]; the failure model is in `docs/GUARANTEES.md`.
//!
//! A node dials its peer with a [`GrpcPeer`] made from `Config::peer_addr`;
//! an engine that needs other channels (TLS, a proxy) makes them with
//! [`channel_settings`], passes them to [`GrpcPeer::from_channels`] and
//! that to [`ReplicaBuilder::peer`], and serves
//! [`ReplicationService::into_server`] on a tonic server of its own.
//!
//! Everything public is re-exported here, once. Helpers for tests and
//! simulations (an in-memory WAL, the peer trait and wire messages to
//! inject faults with, a tracking allocator) are in `testing`, built with
//! the `testing` feature.

#![deny(missing_docs)]

mod config;
mod error;
mod node;
mod replicator;
mod runtime;
mod state_machine;
mod transport;
mod types;
mod wal;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Generated protobuf and tonic code. Protobuf types never leave the
/// transport layer; the rest of the crate speaks `types`.
mod pb {
    #![allow(clippy::all, missing_docs, dead_code, unreachable_pub)]
    tonic::include_proto!("walrep.v1");
}

pub use config::{CommitMode, Config, ConfigError, InitialRole, OnStandbyLoss, Setting};
pub use error::{Error, LeaderHint, Result, TransportError, WriteOutcome};
pub use node::{RoleKind, SyncState};
pub use replicator::{Applied, Health, PeerHealth, Replicator};
pub use runtime::{MetricsSnapshot, Replica, ReplicaBuilder, serve};
pub use state_machine::{StateMachine, StateMachineError};
pub use transport::{GrpcPeer, ReplicationService, channel_settings};
pub use types::{Epoch, EpochHistory, EpochStart, Lsn, NodeId, Record, RequestId};
pub use wal::{FileWal, FileWalOptions, WalError, WalMeta, WalStore};
