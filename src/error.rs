//! The errors an engine sees, and the transport errors the replication logic
//! classifies by who must react.

use crate::config::ConfigError;
use crate::types::{Epoch, Lsn, NodeId};
use std::path::PathBuf;

/// The leader a refused write should go to, when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: NodeId,
    /// Where the leader serves replication.
    pub addr: String,
    /// Where the leader serves its clients (the engine's API), if it said.
    pub client_addr: Option<String>,
}

/// Everything `Replicator` and `ReplicaBuilder::start` can return. Each
/// message says what happened to the write and what to do.
///
/// Only `Ok` from `Replicator::apply` means a write committed. A write
/// refused before it was appended (`NotPrimary`, `Fenced`, `Unavailable`
/// with `appended: false`, `InvalidInput` on arrival) was not written. A
/// write that was already appended and waiting for its commit mode when
/// the node was deposed (`NotPrimary`, `Fenced` with `appended: true`), its
/// standby stayed silent (`SyncTimeout`), its WAL failed (`Unavailable`
/// with `appended: true`) or it shut down (`ShuttingDown`) has an unknown
/// fate: it may survive on the new primary or be rewound here. An engine
/// that must know carries its own request id in the payload and looks for
/// it in its state machine. [`Error::outcome`] tells the two apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node is not (or no longer) the primary. Send the write to
    /// `leader` when known.
    #[error("this node is not the primary; send writes to {}", leader_text(.leader))]
    NotPrimary {
        /// The primary as this node knows it.
        leader: Option<LeaderHint>,
        /// The write was appended here before the node stepped down (its
        /// fate is unknown); `false`: refused on arrival, nothing written.
        appended: bool,
    },

    /// A newer epoch exists elsewhere: this node was deposed and rejoins
    /// as a standby.

    #[error(
        "this node is fenced: epoch {epoch} exists elsewhere; it refuses writes until it has rejoined as a standby"
    )]
    Fenced {
        /// The newer epoch.
        epoch: Epoch,
        /// The write was appended here before the node was deposed (its
        /// fate is unknown); `false`: refused on arrival, nothing written.
        appended: bool,
    },

    /// A sync-mode write was appended and made durable here but the standby
    /// did not confirm it in time: the write is neither acknowledged nor
    /// undone (see the message for its possible fates).

    #[error(
        "the standby did not confirm record {lsn} within sync_timeout; the record is durable here but not acknowledged: it reaches the standby when that returns, unless the standby was promoted meanwhile, in which case it is rewound here (retry, or check which node is primary)"
    )]
    SyncTimeout {
        /// The last record of the write.
        lsn: Lsn,
    },

    /// Writes are refused for now: promoting, a switchover pausing writes,
    /// the `block` policy without the standby, or a failed WAL.
    #[error("writes are refused: {reason}")]
    Unavailable {
        /// Why, in words.
        reason: String,
        /// The write was appended here before the WAL failed (its fate is
        /// unknown); `false`: refused on arrival, nothing written.
        appended: bool,
    },

    /// The node is stopping or stopped; retry on the other node.
    #[error("the replicator is shutting down; retry on another node or after restart")]
    ShuttingDown,

    /// The WAL is damaged; the node stopped acknowledging writes.
    #[error(
        "corrupt WAL record in {segment} at offset {offset}: {detail}; restore the file from the peer (rejoin) or a backup"
    )]
    Corrupt {
        /// The damaged segment file.
        segment: PathBuf,
        /// Byte offset of the damaged record in it.
        offset: u64,
        /// What check failed.
        detail: String,
    },

    /// An I/O error on the WAL or the node's files; the node stopped
    /// acknowledging writes.
    #[error(
        "I/O error on {what}: {source}; the node stopped acknowledging writes, check the disk and restart it"
    )]
    Io {
        /// The operation that failed.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// `Replicator::promote` refused; the roles are unchanged.
    #[error("promotion refused: {reason}")]
    PromotionRefused {
        /// Why, in words.
        reason: String,
    },

    /// The call's arguments cannot be accepted (e.g. a command above
    /// `max_record_bytes`, a fence at a lower epoch): nothing was done.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// `Config::validate` refused a setting; `ConfigError::setting` names it.
    #[error("invalid configuration: {0}")]
    InvalidConfig(#[from] ConfigError),

    /// The node's data does not fit its configuration in a way no single
    /// setting explains (e.g. the state machine is ahead of the WAL: a
    /// wrong data directory). The node did not start.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A wait (`wait_for_leader`, `wait_for_lsn`, `promote`) ran out of
    /// time; the message says what did not happen.
    #[error("timed out: {0}")]
    Timeout(String),

    /// A call to the peer failed (for operations that need it, e.g. a
    /// switchover).
    #[error("peer error: {0}")]
    Transport(#[from] TransportError),
}

/// What an error says about the write it answered: whether it may exist.
///
/// `Ok` from `Replicator::apply` is the only answer that says a write
/// committed, so no error says "written". See [`Error::outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteOutcome {
    /// Nothing was written: a retry cannot apply the command twice.
    NotWritten,
    /// The write may have been appended and may survive (or be rewound):
    /// a retry may apply the command twice unless it is idempotent or
    /// carries a request id the engine checks.
    MaybeWritten,
}

impl Error {
    /// Whether repeating the call can succeed without anyone fixing
    /// anything: at the leader (`NotPrimary`, `Fenced`), on another node or
    /// later (`Unavailable`, `ShuttingDown`, `Timeout`, an unreachable
    /// peer), or here (`SyncTimeout`). A retryable error is not a safe
    /// retry: check [`Error::outcome`] before repeating a command that is
    /// not idempotent.
    ///
    /// | variant | retryable | why |
    /// |---|---|---|
    /// | `NotPrimary` | yes | at `leader`, or at the node `wait_for_leader` finds |
    /// | `Fenced` | yes | this node was deposed; the new primary accepts writes |
    /// | `SyncTimeout` | yes | the standby was slow or gone; the node goes on |
    /// | `Unavailable` | yes | a promotion, switchover or missing standby ends; a node whose WAL or engine failed is replaced by its standby |
    /// | `ShuttingDown` | yes | on the other node, or after a restart |
    /// | `Timeout` | yes | wait again; the condition may still come |
    /// | `Transport` | if the peer was unreachable | a refusal stays a refusal |
    /// | `Corrupt`, `Io` | no | the node stopped; an operator must act |
    /// | `PromotionRefused`, `InvalidInput`, `InvalidConfig`, `Config` | no | the same call gets the same answer |
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::NotPrimary { .. }
            | Error::Fenced { .. }
            | Error::SyncTimeout { .. }
            | Error::Unavailable { .. }
            | Error::ShuttingDown
            | Error::Timeout(_) => true,
            Error::Transport(e) => e.is_unreachable(),
            Error::Corrupt { .. }
            | Error::Io { .. }
            | Error::PromotionRefused { .. }
            | Error::InvalidInput(_)
            | Error::InvalidConfig(_)
            | Error::Config(_) => false,
        }
    }

    /// What this error says about the write it answered.
    ///
    /// `NotWritten` for errors always given before anything is appended
    /// (`InvalidInput`, `InvalidConfig`, `Config`, `PromotionRefused`), and
    /// for `NotPrimary`, `Fenced` and `Unavailable` given on arrival
    /// (`appended: false`): a load balancer may send such a write to the
    /// other node at once. The same three given to a write waiting when
    /// the node was deposed or its WAL failed (`appended: true`) are
    /// `MaybeWritten`, and so are the variants that can come after the
    /// append: `SyncTimeout` (the write is durable here but not
    /// acknowledged: it reaches the standby later, or is rewound if the
    /// standby was promoted meanwhile), `ShuttingDown`, `Corrupt`, `Io`,
    /// `Timeout` and `Transport`. Retry those only for an
    /// idempotent command, or one whose request id the engine can look up.
    pub fn outcome(&self) -> WriteOutcome {
        match self {
            Error::InvalidInput(_)
            | Error::InvalidConfig(_)
            | Error::Config(_)
            | Error::PromotionRefused { .. }
            | Error::NotPrimary {
                appended: false, ..
            }
            | Error::Fenced {
                appended: false, ..
            }
            | Error::Unavailable {
                appended: false, ..
            } => WriteOutcome::NotWritten,
            Error::NotPrimary { appended: true, .. }
            | Error::Fenced { appended: true, .. }
            | Error::Unavailable { appended: true, .. }
            | Error::SyncTimeout { .. }
            | Error::ShuttingDown
            | Error::Corrupt { .. }
            | Error::Io { .. }
            | Error::Timeout(_)
            | Error::Transport(_) => WriteOutcome::MaybeWritten,
        }
    }
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

/// `Result` with walrep's `Error`.
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
        /// The peer's epoch.
        epoch: Epoch,
        /// The leader of that epoch, if the peer knows it.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: Error, retryable: bool, outcome: WriteOutcome) {
        assert_eq!(e.is_retryable(), retryable, "is_retryable of {e:?}");
        assert_eq!(e.outcome(), outcome, "outcome of {e:?}");
    }

    #[test]
    fn not_primary_is_retried_at_the_leader_and_says_whether_it_was_appended() {
        let leader = Some(LeaderHint {
            id: NodeId::from("b"),
            addr: "127.0.0.1:1".into(),
            client_addr: None,
        });
        check(
            Error::NotPrimary {
                leader: leader.clone(),
                appended: false,
            },
            true,
            WriteOutcome::NotWritten,
        );
        check(
            Error::NotPrimary {
                leader,
                appended: true,
            },
            true,
            WriteOutcome::MaybeWritten,
        );
        check(
            Error::NotPrimary {
                leader: None,
                appended: true,
            },
            true,
            WriteOutcome::MaybeWritten,
        );
    }

    #[test]
    fn fenced_is_retried_at_the_new_primary_and_says_whether_it_was_appended() {
        check(
            Error::Fenced {
                epoch: Epoch(3),
                appended: false,
            },
            true,
            WriteOutcome::NotWritten,
        );
        check(
            Error::Fenced {
                epoch: Epoch(3),
                appended: true,
            },
            true,
            WriteOutcome::MaybeWritten,
        );
    }

    #[test]
    fn sync_timeout_is_retryable_but_may_apply_twice() {
        check(
            Error::SyncTimeout { lsn: Lsn(7) },
            true,
            WriteOutcome::MaybeWritten,
        );
    }

    #[test]
    fn unavailable_is_retryable_and_says_whether_it_was_appended() {
        check(
            Error::Unavailable {
                reason: "promoting".into(),
                appended: false,
            },
            true,
            WriteOutcome::NotWritten,
        );
        check(
            Error::Unavailable {
                reason: "the WAL failed".into(),
                appended: true,
            },
            true,
            WriteOutcome::MaybeWritten,
        );
    }

    #[test]
    fn shutting_down_is_retried_elsewhere() {
        check(Error::ShuttingDown, true, WriteOutcome::MaybeWritten);
    }

    #[test]
    fn corrupt_io_and_state_machine_failures_are_not_retryable() {
        check(
            Error::Corrupt {
                segment: PathBuf::from("wal/0001.seg"),
                offset: 42,
                detail: "crc".into(),
            },
            false,
            WriteOutcome::MaybeWritten,
        );
        check(
            Error::Io {
                what: "fsync".into(),
                source: std::io::Error::other("disk gone"),
            },
            false,
            WriteOutcome::MaybeWritten,
        );
    }

    #[test]
    fn refusals_before_anything_was_written_are_not_retryable() {
        check(
            Error::InvalidInput("too big".into()),
            false,
            WriteOutcome::NotWritten,
        );
        check(
            Error::Config("state ahead of the WAL".into()),
            false,
            WriteOutcome::NotWritten,
        );
        check(
            Error::PromotionRefused {
                reason: "behind".into(),
            },
            false,
            WriteOutcome::NotWritten,
        );
        let bad = crate::Config {
            node_id: NodeId::from(""),
            ..crate::Config::default()
        }
        .validate()
        .expect_err("an empty node id is refused");
        check(bad.into(), false, WriteOutcome::NotWritten);
    }

    #[test]
    fn timeout_is_retryable() {
        check(
            Error::Timeout("leader".into()),
            true,
            WriteOutcome::MaybeWritten,
        );
    }

    #[test]
    fn transport_is_retryable_only_when_the_peer_was_unreachable() {
        check(
            TransportError::Timeout.into(),
            true,
            WriteOutcome::MaybeWritten,
        );
        check(
            TransportError::Unreachable("refused".into()).into(),
            true,
            WriteOutcome::MaybeWritten,
        );
        check(
            TransportError::Refused("wrong cluster".into()).into(),
            false,
            WriteOutcome::MaybeWritten,
        );
    }
}
