//! The built-in witness (`walrep witness`): the registers of any number
//! of clusters in one durable file, served over gRPC (mutual TLS in
//! production), and the node's client of it.
//!
//! ```text
//! file.rs     DIR/registers: the registers, CRC-checked, replaced whole
//!             (temp, fsync, rename, fsync dir) before each answer
//! service.rs  WitnessService: the gRPC server side, its checks and counts
//! serve.rs    serving it on a socket, in clear text or over mutual TLS
//! client.rs   WitnessClient: `Arbiter` over a tonic channel
//! ```
//!
//! A lost file is not fatal: a witness started on an empty directory
//! re-creates each cluster's register once every member has reported its
//! epoch, never below the highest (see [`Registers`](super::Registers)).
//! A damaged file stops it at start.

mod client;
mod file;
mod serve;
mod service;

pub use client::{WitnessClient, witness_host_port};
pub use file::{FILE as REGISTER_FILE, RegisterFile, StoreError};
pub use serve::serve_witness;
#[cfg(feature = "tls")]
pub use serve::serve_witness_tls;
pub use service::{
    MAX_MEMBERS, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, WitnessService, WitnessStats, WriteObserver,
    refusal_reason,
};
