//! An arbiter in memory, for tests: the same rules as the witness, no file,
//! and a switch that makes it unreachable.

use super::{Arbiter, ArbiterError, Caller, CasOutcome, Register, Registers};
use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// An in-memory [`Arbiter`]. Clones share everything; a
/// [`handle`](MemArbiter::handle) shares the registers but has its own
/// reachability switch, so a test can cut one node from the arbiter.
#[derive(Clone, Debug, Default)]
pub struct MemArbiter {
    inner: Arc<Inner>,
    unreachable: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Inner {
    registers: Mutex<Registers>,
    swaps: AtomicU64,
}

impl MemArbiter {
    /// An arbiter with no registers.
    pub fn new() -> MemArbiter {
        MemArbiter::default()
    }

    /// Another way in to the same registers, reachable on its own.
    pub fn handle(&self) -> MemArbiter {
        MemArbiter {
            inner: self.inner.clone(),
            unreachable: Arc::default(),
        }
    }

    /// Makes every call through this handle (and its clones) fail with
    /// [`ArbiterError::Unreachable`] (true) or answer again (false).
    pub fn set_unreachable(&self, unreachable: bool) {
        self.unreachable.store(unreachable, Ordering::SeqCst);
    }

    /// The register of `cluster_id` as it stands, without reporting a caller.
    pub fn register(&self, cluster_id: &str) -> Register {
        let registers = self.inner.registers.lock().expect("registers lock");
        registers
            .registers()
            .find(|(id, _)| *id == cluster_id)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    }

    /// Successful swaps so far.
    pub fn swaps(&self) -> u64 {
        self.inner.swaps.load(Ordering::SeqCst)
    }

    /// Forgets every register, as a witness that lost its file.
    pub fn lose_everything(&self) {
        *self.inner.registers.lock().expect("registers lock") = Registers::new();
    }

    fn reachable(&self) -> Result<(), ArbiterError> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Err(ArbiterError::Unreachable(
                "the test made the arbiter unreachable".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Arbiter for MemArbiter {
    async fn read(&self, cluster_id: &str, caller: &Caller) -> Result<Register, ArbiterError> {
        self.reachable()?;
        let mut registers = self.inner.registers.lock().expect("registers lock");
        Ok(registers.read(cluster_id, caller))
    }

    async fn compare_and_swap(
        &self,
        cluster_id: &str,
        caller: &Caller,
        expected_version: u64,
        next: &Register,
    ) -> Result<CasOutcome, ArbiterError> {
        self.reachable()?;
        let mut registers = self.inner.registers.lock().expect("registers lock");
        let outcome = registers
            .compare_and_swap(cluster_id, caller, expected_version, next)
            .map_err(ArbiterError::Refused)?;
        if matches!(outcome, CasOutcome::Swapped(_)) {
            self.inner.swaps.fetch_add(1, Ordering::SeqCst);
        }
        Ok(outcome)
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}
