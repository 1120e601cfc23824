//! The tasks that carry out what the role logic decides.
//!
//! One actor owns the `Node` and the WAL's write side; everything else
//! (gRPC handlers, the engine's calls, the streamer, the heartbeat sender,
//! the flusher, the applier, a rejoin) sends it messages and waits on
//! oneshots or watches. Nothing shares role state behind a lock. The
//! runtime never asks the node "may I?": it feeds an event and carries out
//! the effects that come back, in order.
//!
//! ## The life of a write
//!
//! One write in `remote-flush` mode, file by file.
//!
//! On the primary:
//!
//! 1. `replica.rs` `Replica::apply` / `apply_batch`: checks sizes and sends
//!    `Msg::Apply` to the actor with a oneshot for the outcome.
//! 2. `actor/mod.rs` `Actor::run`: yields once so the other writers that
//!    are ready get in, then drains the mailbox; `actor/writes.rs`
//!    `queue_write` holds each write until `append_queued` hands them all
//!    to the node as one `Event::WriteRequested`.
//! 3. `node/requests.rs` `Node::on_write_requested`: refuses them all if this
//!    node may not write (`Effect::RefuseWrites`), or assigns the next LSNs
//!    at its epoch (`Effect::Append`) and starts the write's sync timeout.
//! 4. `actor/writes.rs` `Actor::append`: one `WalStore::append` for the
//!    lot, one waiter per write, and the appended LSN published on a watch
//!    that wakes the flusher and the streamer.
//! 5. `flusher.rs`: one `WalStore::sync` covers every append since the last
//!    (group commit), then `Event::LocalFlushed`; while one stalls, a second
//!    starts for what was appended since.
//! 6. `streamer.rs` `session`: reads the new records and sends a `WalBatch`
//!    (`prev_lsn`/`prev_epoch` first) on the stream of
//!    `transport/client.rs` `GrpcPeer::open_wal_stream`, a bounded window
//!    in flight.
//!
//! On the standby:
//!
//! 7. `transport/server.rs` `ReplicationService::stream_wal`: decodes the
//!    batch and hands it to `inbox.rs` `Inbox::batch`.
//! 8. `actor/receive.rs` `Actor::on_batch`: reads the epochs of our records
//!    the batch overlaps and feeds `Event::BatchReceived`.
//! 9. `node/requests.rs` `Node::on_batch`: the epoch rules, then `check_batch`
//!    (contiguity, `prev_lsn`/`prev_epoch`, re-delivery, G3): the new
//!    records as `Effect::Append`, then `Effect::Answer`; a refusal ends the
//!    stream, and a divergence sends the node to rejoin.
//! 10. `actor/writes.rs` `Actor::append` appends; the fsync is the
//!     flusher's (`Event::LocalFlushed`), or with `standby_sync_inline`
//!     `actor/receive.rs` `sync_received` at the end of the drain (the
//!     flusher's for a second after an inline fsync stalled:
//!     `actor/inline_sync.rs`).
//! 11. `actor/receive.rs` `send_ack` / `send_ack_always`: the new written
//!     and flushed positions go on the stream's ack watch, which
//!     `stream_wal` sends back.
//!
//! Back on the primary:
//!
//! 12. `streamer.rs` turns the ack into `Event::StandbyProgress`;
//!     `node/primary.rs` `on_standby_progress` and `node/mod.rs`
//!     `recompute_commit` move the commit point to what both the local
//!     flush and the standby's flush cover: `Effect::Commit`.
//! 13. `actor/effects.rs` publishes the commit LSN on a watch;
//!     `applier.rs` `apply_up_to` hands the committed records it read to
//!     `StateMachine::apply_batch` on a blocking thread (on its own thread
//!     if the chunk is small and `StateMachine::can_apply_inline` says
//!     so), in order, and sends `Msg::Applied` with the engine's outputs.
//! 14. `actor/mod.rs` keeps the outputs and steps `Event::Applied`;
//!     `on_event` → `actor/writes.rs` `resolve_waiters`: the caller of
//!     step 1 gets `Applied { lsn, epoch, output }`.
//!
//! A write with a request id (`apply_once`) takes the same path; in step 3
//! the node looks the id up in its `RequestIndex` and, when a record of
//! the log carries it, appends nothing for it and lists it in
//! `Effect::Append::retried`: step 4 makes its caller wait for that
//! record (`RetryWaiter`), answered in step 14 with `deduplicated` set.
//!
//! The standby applies what it flushed the same way (13), and its acks
//! carry the applied position that `remote-apply` commits on.

mod actor;
mod applier;
mod flusher;
mod grpc_health;
mod heartbeat;
mod inbox;
mod incoming;
mod metrics;
mod rejoin;
mod replica;
mod restart_point;
mod snapshots;
mod streamer;
mod tasks;
#[cfg(test)]
pub(crate) mod tests;

pub use grpc_health::{LIVENESS_SERVICE, REPLICATION_SERVICE};
pub(crate) use inbox::Inbound;
pub(crate) use inbox::{Inbox, NodeGone};
pub(crate) use metrics::Metrics;
pub use metrics::MetricsSnapshot;
#[cfg(feature = "tls")]
pub use replica::serve_tls;
pub use replica::{Replica, ReplicaBuilder, serve};
pub(crate) use snapshots::{PendingSnapshot, Snapshots};

use crate::error::Result;
use crate::node::{Event, PeerLog, RejoinPlan};
use crate::replicator::Applied;
use crate::types::{Epoch, Lsn, RequestId};
use bytes::Bytes;
use tokio::sync::oneshot;

/// What the actor's mailbox carries. Every sender waits on a oneshot or
/// a watch for what comes back; nothing else reaches the node.
pub(crate) enum Msg {
    /// The engine's writes (`Replicator::apply_batch`); `request_ids` is
    /// empty, or holds one per payload (`apply_batch_once`).
    Apply {
        payloads: Vec<Bytes>,
        request_ids: Vec<RequestId>,
        reply: oneshot::Sender<Result<Vec<Applied>>>,
    },
    /// The engine asks this node to become primary.
    Promote {
        force: bool,
        reply: oneshot::Sender<Result<Epoch>>,
    },
    /// The engine asks this primary to hand over to `standby`.
    SwitchoverTo {
        standby: crate::types::NodeId,
        reply: oneshot::Sender<Result<Epoch>>,
    },
    /// The engine asks this node to step down to `epoch`.
    Fence {
        epoch: Epoch,
        reply: oneshot::Sender<Result<()>>,
    },
    /// From the node's own tasks.
    Event(Event),
    /// The applier applied every record up to `lsn`; `outputs` are the
    /// engine's, one per record of the last `outputs.len()` up to `lsn`
    /// (stepped as `Event::Applied`).
    Applied { lsn: Lsn, outputs: Vec<Bytes> },
    /// From the gRPC service.
    Inbound(Inbound),
    /// A standby's answer to our candidate's fence (stepped as
    /// `Event::SealAnswered` with our log end read then).
    SealAnswer {
        from: crate::types::NodeId,
        epoch: crate::types::Epoch,
        answer: std::result::Result<crate::node::LogEnd, crate::node::SealRefused>,
    },
    /// Records a candidate read from a standby (stepped as
    /// `Event::WalFetched`, checked against our log then).
    Fetched {
        from: crate::types::NodeId,
        batch: std::result::Result<crate::transport::WalBatch, crate::node::FetchFailed>,
    },
    /// A rejoin read the primary's log: how must ours change?
    RejoinPlan {
        peer: PeerLog,
        /// Who answered with that log.
        peer_id: crate::types::NodeId,
        reply: oneshot::Sender<RejoinPlan>,
    },
    /// The rejoin carried out its plan (or failed for good).
    RejoinDone(std::result::Result<rejoin::Outcome, String>),
    /// Stop (a primary hands over to its standby first if it may: see
    /// `Event::StopRequested`), stop every task, sync the WAL, then answer.
    Shutdown { reply: oneshot::Sender<()> },
    /// The standby answered the handover of a stopping primary (its new
    /// epoch), or did not in time.
    HandOverDone(std::result::Result<Epoch, String>),
    /// Primary: where the standby's log ends, as its heartbeat answer
    /// says. Only for the lag the node reports (it may hold records of an
    /// older epoch that a rejoin will drop); commits never rest on it.
    StandbyReported(crate::types::NodeId, crate::transport::WalAck),
}
