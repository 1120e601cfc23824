//! Helpers for tests of walrep and of the engines that embed it: not part of
//! the replication API, and built only with the `testing` feature (and for
//! walrep's own unit tests).

mod alloc;
mod history;
mod state_machine;

pub use alloc::{TrackingAllocator, largest_allocation};
pub use history::{AckedWrite, Durability, FinalState, History, Observation, Violation, converged};
pub use state_machine::MemStateMachine;
