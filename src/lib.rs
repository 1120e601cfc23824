//! # walrep
//!
//! WAL-streaming primary/standby replication for a storage engine on two
//! machines, with automatic failover made safe by epochs.
//!
//! An engine implements [`StateMachine`] (what a committed record does to
//! its state), opens a [`FileWal`] (or brings its own [`WalStore`]) and
//! starts a node in one step: [`Replica::builder`], then
//! [`ReplicaBuilder::listen`] on the replication address and
//! [`ReplicaBuilder::start`], which binds it and serves the peer on a task
//! the [`Replica`] owns until [`Replicator::shutdown`]. It then writes
//! through [`Replicator::apply`] on the primary and follows the node's
//! role in [`Replicator::subscribe`]. Every setting is in [`Config`]; the
//! failure model is in `docs/GUARANTEES.md`.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use walrep::{Config, FileWal, FileWalOptions, Replica, Replicator};
//! # async fn run(cfg: Config, engine: Arc<walrep::testing::MemStateMachine>) -> walrep::Result<()> {
//! let wal = Arc::new(FileWal::open("/var/lib/engine/wal", FileWalOptions::default())?);
//! let replica = Replica::builder(cfg, wal, engine)
//!     .listen("0.0.0.0:7001")
//!     .start()?;
//! let applied = replica.apply("put k v".into()).await?; // Applied { lsn, epoch, output }
//! replica.shutdown().await; // hands over if primary, then stops the server
//! # Ok(())
//! # }
//! ```
//!
//! A node dials its peer with a [`GrpcPeer`] made from `Config::peer_addr`;
//! an engine that needs other channels (TLS, a proxy) makes them with
//! [`channel_settings`], passes them to [`GrpcPeer::from_channels`] and
//! that to [`ReplicaBuilder::peer`]; to serve on a server of its own it
//! starts the node with [`ReplicaBuilder::start_without_server`] and
//! serves the returned [`ReplicationService`] with [`serve`] or
//! [`ReplicationService::into_server`].
//!
//! Everything public is re-exported here, once, but the arbiters, which
//! have their own public module (`arbiter`). Helpers for tests and
//! simulations (an in-memory WAL, the peer trait and wire messages to
//! inject faults with, a tracking allocator) are in `testing`, built with
//! the `testing` feature.

#![deny(missing_docs)]

pub mod arbiter;
mod config;
mod error;
mod node;
mod replicator;
mod runtime;
mod state_machine;
mod transport;
mod types;
mod unlinked;
mod wal;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Generated protobuf and tonic code. Protobuf types never leave the
/// transport layer; the rest of the crate speaks `types`.
mod pb {
    #![allow(clippy::all, missing_docs, dead_code, unreachable_pub)]
    tonic::include_proto!("walrep.v1");
}

pub use config::{
    CommitMode, Config, ConfigError, InitialRole, OnStandbyLoss, PeerAddress, Setting,
};
pub use error::{Error, LeaderHint, Result, TransportError, WriteOutcome};
pub use node::{CommitMethod, CommitRule, CommitRuleError, RoleKind, SyncState};
pub use replicator::{Applied, Health, PeerHealth, Replicator, StandbyHealth};
#[cfg(feature = "tls")]
pub use runtime::serve_tls;
pub use runtime::{
    LIVENESS_SERVICE, MetricsSnapshot, REPLICATION_SERVICE, Replica, ReplicaBuilder, serve,
};
pub use state_machine::{
    INLINE_APPLY_MAX_BYTES, SnapshotFile, SnapshotSource, StateMachine, StateMachineError,
};
pub use transport::{GrpcPeer, ReplicationService, channel_settings};
#[cfg(feature = "tls")]
pub use transport::{PeerIdentity, Tls, TlsError, TlsFiles};
pub use types::{Epoch, EpochHistory, EpochStart, Lsn, NodeId, Record, RequestId, RequestIdAt};
pub use wal::{FileWal, FileWalOptions, WalError, WalMeta, WalStore};
