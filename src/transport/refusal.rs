//! Why a request was refused, and how a refusal travels: a gRPC status
//! whose code and `walrep-*` metadata carry the kind, the refusing node's
//! epoch and its leader; the caller turns it back into a `TransportError`.

use super::*;
use crate::error::LeaderHint;
use tonic::Status;

/// Why a request was refused. Each kind maps to one gRPC status code and
/// one `rejected` counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    WrongCluster,
    UnknownPeer,
    StaleEpoch,
    Malformed,
    Gap,
    Diverged,
    TooFarBehind,
    NotStandby,
    Unavailable,
    ShuttingDown,
    /// Over TLS: no proven identity, or a request whose sender is not the
    /// identity its connection proved.
    Unauthenticated,
}

impl RefusalKind {
    /// Every kind (metrics count each from 0).
    pub const ALL: [RefusalKind; 11] = [
        RefusalKind::WrongCluster,
        RefusalKind::UnknownPeer,
        RefusalKind::StaleEpoch,
        RefusalKind::Malformed,
        RefusalKind::Gap,
        RefusalKind::Diverged,
        RefusalKind::TooFarBehind,
        RefusalKind::NotStandby,
        RefusalKind::Unavailable,
        RefusalKind::ShuttingDown,
        RefusalKind::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::WrongCluster => "wrong_cluster",
            RefusalKind::UnknownPeer => "unknown_peer",
            RefusalKind::StaleEpoch => "stale_epoch",
            RefusalKind::Malformed => "malformed",
            RefusalKind::Gap => "gap",
            RefusalKind::Diverged => "diverged",
            RefusalKind::TooFarBehind => "too_far_behind",
            RefusalKind::NotStandby => "not_standby",
            RefusalKind::Unavailable => "unavailable",
            RefusalKind::ShuttingDown => "shutting_down",
            RefusalKind::Unauthenticated => "unauthenticated",
        }
    }

    fn code(self) -> tonic::Code {
        match self {
            RefusalKind::WrongCluster | RefusalKind::UnknownPeer => tonic::Code::PermissionDenied,
            RefusalKind::Unauthenticated => tonic::Code::Unauthenticated,
            RefusalKind::StaleEpoch | RefusalKind::NotStandby => tonic::Code::FailedPrecondition,
            RefusalKind::Malformed => tonic::Code::InvalidArgument,
            RefusalKind::Gap | RefusalKind::TooFarBehind => tonic::Code::OutOfRange,
            RefusalKind::Diverged => tonic::Code::Aborted,
            RefusalKind::Unavailable | RefusalKind::ShuttingDown => tonic::Code::Unavailable,
        }
    }

    fn parse(s: &str) -> Option<RefusalKind> {
        RefusalKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A refused request: what, why, and our epoch and leader so the sender
/// can act.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    pub epoch: Epoch,
    pub leader: Option<LeaderHint>,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>, epoch: Epoch) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
            epoch,
            leader: None,
        }
    }

    pub fn into_status(self) -> Status {
        let mut status = Status::new(self.kind.code(), self.message);
        let md = status.metadata_mut();
        if let Ok(v) = self.kind.as_str().parse() {
            md.insert("walrep-reason", v);
        }
        if let Ok(v) = self.epoch.0.to_string().parse() {
            md.insert("walrep-epoch", v);
        }
        if let Some(l) = &self.leader {
            if let Ok(v) = l.id.0.parse() {
                md.insert("walrep-leader", v);
            }
            if let Ok(v) = l.addr.parse() {
                md.insert("walrep-leader-addr", v);
            }
        }
        status
    }
}

/// Turns a refusal status back into what the caller must do.
pub(crate) fn transport_error_from_status(status: &Status) -> TransportError {
    let md = status.metadata();
    let get = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let kind = get("walrep-reason").and_then(|r| RefusalKind::parse(&r));
    let msg = status.message().to_string();
    match kind {
        Some(RefusalKind::StaleEpoch) => TransportError::StaleEpoch {
            epoch: Epoch(
                get("walrep-epoch")
                    .and_then(|e| e.parse().ok())
                    .unwrap_or(0),
            ),
            leader: get("walrep-leader").map(|id| LeaderHint {
                id: NodeId(id),
                addr: get("walrep-leader-addr").unwrap_or_default(),
                client_addr: None,
            }),
        },
        Some(RefusalKind::Diverged) => TransportError::Diverged(msg),
        Some(RefusalKind::TooFarBehind) => TransportError::TooFarBehind(msg),
        Some(_) => TransportError::Refused(msg),
        None => match status.code() {
            tonic::Code::DeadlineExceeded => TransportError::Timeout,
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
                TransportError::Unreachable(msg)
            }
            code => TransportError::Remote(format!("{code:?}: {msg}")),
        },
    }
}
