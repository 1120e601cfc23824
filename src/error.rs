//! The errors an engine sees, and the transport errors the replication logic
//! classifies by who must react.

use crate::types::{Epoch, Lsn, NodeId};
use std::path::PathBuf;

/// The leader a refused write should go to, when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    pub id: NodeId,
    /// Where the leader serves replication.
    pub addr: String,
    /// Where the leader serves its clients (the engine's API), if it said.
    pub client_addr: Option<String>,
}

/// Everything `Replicator` can return.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this node is not the primary; send writes to {}", leader_text(.leader))]
    NotPrimary { leader: Option<LeaderHint> },

    #[error(
        "this node is fenced: epoch {epoch} exists elsewhere; it refuses writes until it has rejoined as a standby"
    )]
    Fenced { epoch: Epoch },

    #[error(
        "the standby did not confirm record {lsn} within sync_timeout; the record is durable here but not acknowledged: it reaches the standby when that returns, unless the standby was promoted meanwhile, in which case it is rewound here (retry, or check which node is primary)"
    )]
    SyncTimeout { lsn: Lsn },

    #[error("writes are refused: {reason}")]
    Unavailable { reason: String },

    #[error("the replicator is shutting down; retry on another node or after restart")]
    ShuttingDown,

    #[error(
        "corrupt WAL record in {segment} at offset {offset}: {detail}; restore the file from the peer (rejoin) or a backup"
    )]
    Corrupt {
        segment: PathBuf,
        offset: u64,
        detail: String,
    },

    #[error(
        "I/O error on {what}: {source}; the node stopped acknowledging writes, check the disk and restart it"
    )]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("the state machine failed at LSN {lsn}: {reason}")]
    StateMachine { lsn: Lsn, reason: String },

    #[error("promotion refused: {reason}")]
    PromotionRefused { reason: String },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("timed out: {0}")]
    Timeout(String),

    #[error("peer error: {0}")]
    Transport(#[from] TransportError),
}

fn leader_text(leader: &Option<LeaderHint>) -> String {
    match leader {
        Some(l) => format!(
            "{} at {}",
            l.id,
            l.client_addr.as_deref().unwrap_or(&l.addr)
        ),
        None => "the primary (unknown right now; retry shortly)".to_string(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a call to the peer failed, classified by who must react.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportError {
    /// No answer within the deadline: the peer may be dead, slow or cut off.
    #[error("peer did not answer in time")]
    Timeout,
    /// The connection could not be made or broke.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer holds a newer epoch: the caller must step down.
    #[error("peer is at epoch {epoch} (leader {leader:?})")]
    StaleEpoch {
        epoch: Epoch,
        leader: Option<LeaderHint>,
    },
    /// The peer refused the request for a reason the caller must act on
    /// (wrong cluster, gap in the log, not a standby, ...).
    #[error("peer refused: {0}")]
    Refused(String),
    /// The peer says our log diverges from its log: rejoin.
    #[error("logs diverge: {0}")]
    Diverged(String),
    /// The peer no longer keeps the records we need: resync from a snapshot.
    #[error("records no longer retained: {0}")]
    TooFarBehind(String),
    /// Anything else the peer returned.
    #[error("peer error: {0}")]
    Remote(String),
}

impl TransportError {
    /// Whether the failure says the peer could not be reached at all (as
    /// opposed to a peer that answered with a refusal).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout | TransportError::Unreachable(_)
        )
    }
}
