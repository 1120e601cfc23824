//! A state machine kept in memory, for tests that need an engine but not
//! its contents: it records which LSNs it applied and hashes the payloads.

use crate::state_machine::{Snapshot, StateMachine, StateMachineError};
use crate::types::Lsn;
use bytes::Bytes;
use std::sync::Mutex;

/// Applies any payload by folding it into a running hash; a snapshot is the
/// hash. Two instances that applied the same records in the same order have
/// equal [`MemStateMachine::state_hash`]es.
#[derive(Debug, Default)]
pub struct MemStateMachine {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    applied: Lsn,
    hash: u32,
}

impl MemStateMachine {
    /// An empty state machine that has applied nothing.
    pub fn new() -> MemStateMachine {
        MemStateMachine::default()
    }

    /// A hash of every payload applied, in order.
    pub fn state_hash(&self) -> u32 {
        self.state.lock().unwrap().hash
    }
}

impl StateMachine for MemStateMachine {
    fn apply(&self, lsn: Lsn, payload: &[u8]) -> Result<(), StateMachineError> {
        let mut state = self.state.lock().unwrap();
        assert!(
            lsn > state.applied,
            "MemStateMachine: LSN {lsn} applied after {}",
            state.applied
        );
        state.hash = crc32c::crc32c_append(state.hash, payload);
        state.applied = lsn;
        Ok(())
    }

    fn applied_lsn(&self) -> Lsn {
        self.state.lock().unwrap().applied
    }

    fn snapshot(&self) -> Result<Snapshot, StateMachineError> {
        let state = *self.state.lock().unwrap();
        Ok(Snapshot {
            lsn: state.applied,
            data: Bytes::copy_from_slice(&state.hash.to_le_bytes()),
        })
    }

    fn restore(&self, snapshot: Snapshot) -> Result<(), StateMachineError> {
        let hash: [u8; 4] = snapshot.data.as_ref().try_into().map_err(|_| {
            StateMachineError(format!(
                "a MemStateMachine snapshot is 4 bytes, this one is {}",
                snapshot.data.len()
            ))
        })?;
        *self.state.lock().unwrap() = State {
            applied: snapshot.lsn,
            hash: u32::from_le_bytes(hash),
        };
        Ok(())
    }
}
