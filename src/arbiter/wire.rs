//! The register and the caller as the witness's wire carries them (also the
//! value an etcd key holds).

use super::{Caller, Register, SwapRefusal};
use crate::pb;
use crate::pb::swap_refused::Reason;
use crate::types::{Epoch, NodeId};

impl From<&Register> for pb::ArbiterRegister {
    fn from(r: &Register) -> Self {
        pb::ArbiterRegister {
            version: r.version,
            epoch: r.epoch.0,
            primary: r.primary.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
            sync_set: r.sync_set.iter().map(|n| n.0.clone()).collect(),
            members: r.members.iter().map(|n| n.0.clone()).collect(),
        }
    }
}

impl From<pb::ArbiterRegister> for Register {
    fn from(r: pb::ArbiterRegister) -> Self {
        Register {
            version: r.version,
            epoch: Epoch(r.epoch),
            primary: (!r.primary.is_empty()).then_some(NodeId(r.primary)),
            sync_set: r.sync_set.into_iter().map(NodeId).collect(),
            members: r.members.into_iter().map(NodeId).collect(),
        }
    }
}

impl From<&Caller> for pb::ArbiterCaller {
    fn from(c: &Caller) -> Self {
        pb::ArbiterCaller {
            node_id: c.node_id.0.clone(),
            epoch: c.epoch.0,
            seen_version: c.seen_version,
            leads: c.leads,
        }
    }
}

impl From<pb::ArbiterCaller> for Caller {
    fn from(c: pb::ArbiterCaller) -> Self {
        Caller {
            node_id: NodeId(c.node_id),
            epoch: Epoch(c.epoch),
            seen_version: c.seen_version,
            leads: c.leads,
        }
    }
}

impl From<&SwapRefusal> for pb::SwapRefused {
    fn from(r: &SwapRefusal) -> Self {
        use pb::swap_refused as p;
        let reason = match r {
            SwapRefusal::CallerNotMember { caller } => {
                Reason::CallerNotMember(p::CallerNotMember {
                    caller: caller.0.clone(),
                })
            }
            SwapRefusal::MembersNotHeard { missing } => {
                Reason::MembersNotHeard(p::MembersNotHeard {
                    missing: missing.iter().map(|n| n.0.clone()).collect(),
                })
            }
            SwapRefusal::EpochBelowReported {
                proposed,
                reported,
                by,
            } => Reason::EpochBelowReported(p::EpochBelowReported {
                proposed: proposed.0,
                reported: reported.0,
                by: by.0.clone(),
            }),
            SwapRefusal::EpochGoesBack { current, proposed } => {
                Reason::EpochGoesBack(p::EpochGoesBack {
                    current: current.0,
                    proposed: proposed.0,
                })
            }
            SwapRefusal::EpochLedByAnother { epoch, by } => {
                Reason::EpochLedByAnother(p::EpochLedByAnother {
                    epoch: epoch.0,
                    by: by.0.clone(),
                })
            }
        };
        pb::SwapRefused {
            reason: Some(reason),
        }
    }
}

/// The refusal a [`pb::SwapRefused`] carries; `None` when it names none
/// this build knows.
pub(crate) fn refusal_from_pb(r: pb::SwapRefused) -> Option<SwapRefusal> {
    Some(match r.reason? {
        Reason::CallerNotMember(c) => SwapRefusal::CallerNotMember {
            caller: NodeId(c.caller),
        },
        Reason::MembersNotHeard(m) => SwapRefusal::MembersNotHeard {
            missing: m.missing.into_iter().map(NodeId).collect(),
        },
        Reason::EpochBelowReported(e) => SwapRefusal::EpochBelowReported {
            proposed: Epoch(e.proposed),
            reported: Epoch(e.reported),
            by: NodeId(e.by),
        },
        Reason::EpochGoesBack(e) => SwapRefusal::EpochGoesBack {
            current: Epoch(e.current),
            proposed: Epoch(e.proposed),
        },
        Reason::EpochLedByAnother(e) => SwapRefusal::EpochLedByAnother {
            epoch: Epoch(e.epoch),
            by: NodeId(e.by),
        },
    })
}

/// The register encoded as bytes (protobuf), for a backend that stores it
/// as an opaque value.
pub fn encode_register(register: &Register) -> Vec<u8> {
    prost::Message::encode_to_vec(&pb::ArbiterRegister::from(register))
}

/// The register an [`encode_register`] wrote.
pub fn decode_register(bytes: &[u8]) -> Result<Register, prost::DecodeError> {
    <pb::ArbiterRegister as prost::Message>::decode(bytes).map(Register::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_register_survives_the_wire() {
        let mut r = Register::fresh(Epoch(4), &"n1".into(), &["n1".into(), "n2".into()]);
        r.version = 7;
        r.sync_set.insert("n2".into());
        assert_eq!(decode_register(&encode_register(&r)).unwrap(), r);
        assert_eq!(
            decode_register(&encode_register(&Register::default())).unwrap(),
            Register::default()
        );
    }

    #[test]
    fn every_refusal_survives_the_wire() {
        let refusals = [
            SwapRefusal::CallerNotMember {
                caller: "n3".into(),
            },
            SwapRefusal::MembersNotHeard {
                missing: vec!["n1".into(), "n2".into()],
            },
            SwapRefusal::EpochBelowReported {
                proposed: Epoch(5),
                reported: Epoch(6),
                by: "n2".into(),
            },
            SwapRefusal::EpochGoesBack {
                current: Epoch(3),
                proposed: Epoch(2),
            },
            SwapRefusal::EpochLedByAnother {
                epoch: Epoch(2),
                by: "n3".into(),
            },
        ];
        for r in refusals {
            let bytes = prost::Message::encode_to_vec(&pb::SwapRefused::from(&r));
            let back = <pb::SwapRefused as prost::Message>::decode(bytes.as_slice()).unwrap();
            assert_eq!(refusal_from_pb(back), Some(r));
        }
        assert_eq!(refusal_from_pb(pb::SwapRefused::default()), None);
    }
}
