//! The register and the caller as the witness's wire carries them (also the
//! value an etcd key holds).

use super::{Caller, Register};
use crate::pb;
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
        }
    }
}

impl From<pb::ArbiterCaller> for Caller {
    fn from(c: pb::ArbiterCaller) -> Self {
        Caller {
            node_id: NodeId(c.node_id),
            epoch: Epoch(c.epoch),
        }
    }
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
}
