//! A state machine kept in memory, for tests that need an engine but not
//! its contents: it records which LSNs it applied and hashes the payloads.

use crate::state_machine::{StateMachine, StateMachineError};
use crate::types::Lsn;
use bytes::Bytes;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

/// Applies any payload by folding it into a running hash, and answers each
/// record with the hash after it (4 bytes, little-endian); a batch is
/// applied whole or, on an error, not at all. A snapshot is the
/// applied LSN's hash, then `snapshot_padding` bytes derived from it (so a
/// test can make snapshots of any size). Two instances that applied the
/// same records in the same order have equal
/// [`MemStateMachine::state_hash`]es.
#[derive(Debug, Default)]
pub struct MemStateMachine {
    state: Mutex<State>,
    padding: AtomicU64,
    delay_micros: AtomicU64,
    snapshots: AtomicU64,
    restores: AtomicU64,
    /// Applies of records at or after this LSN fail (0: none do).
    fail_from: AtomicU64,
    /// How many times each payload was applied, by its CRC32C.
    applies: Mutex<HashMap<u32, u64>>,
    /// While true, applies wait (`hold_applies`).
    held: Mutex<bool>,
    released: Condvar,
    /// What `can_apply_inline` answers.
    inline: AtomicBool,
    /// Whether `apply_batch` notes its thread in `apply_threads`.
    tracking_threads: AtomicBool,
    /// The thread of each `apply_batch` call, in order, once tracked.
    apply_threads: Mutex<Vec<ThreadId>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    applied: Lsn,
    hash: u32,
}

/// The padding byte at `i` of a snapshot of `hash`.
fn pad(hash: u32, i: u64) -> u8 {
    (i as u32 ^ hash).to_le_bytes()[(i % 4) as usize]
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

    /// Makes each snapshot `bytes` longer (written and checked in small
    /// pieces, never held whole).
    pub fn set_snapshot_padding(&self, bytes: u64) {
        self.padding.store(bytes, Ordering::Relaxed);
    }

    /// Makes each `snapshot` call sleep `delay` first (an engine that is
    /// slow to build; the call runs on a blocking thread).
    pub fn set_snapshot_delay(&self, delay: Duration) {
        self.delay_micros
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// How many times `snapshot` was called.
    pub fn snapshots_taken(&self) -> u64 {
        self.snapshots.load(Ordering::Relaxed)
    }

    /// Makes every batch holding a record at or after `lsn` fail (an
    /// engine that cannot apply it): none of that batch is applied.
    pub fn fail_applies_from(&self, lsn: Lsn) {
        self.fail_from.store(lsn.0, Ordering::Relaxed);
    }

    /// How many times this instance applied `payload` (told apart from
    /// other payloads by its CRC32C, which the distinct payloads of a test
    /// do not share in practice; a restored snapshot counts nothing): what
    /// a test of exactly-once writes asserts on.
    pub fn times_applied(&self, payload: &[u8]) -> u64 {
        let applies = self.applies.lock().unwrap();
        applies.get(&crc32c::crc32c(payload)).copied().unwrap_or(0)
    }

    /// Makes every later apply wait until `release_applies` (a slow
    /// engine: records committed but not applied yet). The applies wait
    /// on the thread that calls them, so hold them only where the node
    /// applies on the blocking pool (a WAL that `may_block`).
    pub fn hold_applies(&self) {
        *self.held.lock().unwrap() = true;
    }

    /// Lets the held applies, and every later one, through.
    pub fn release_applies(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    /// Makes `can_apply_inline` answer `on` (an engine whose applies
    /// only touch memory, so the node may run small ones inline).
    pub fn set_can_apply_inline(&self, on: bool) {
        self.inline.store(on, Ordering::Relaxed);
    }

    /// Makes every later `apply_batch` note the thread it runs on.
    pub fn track_apply_threads(&self) {
        self.tracking_threads.store(true, Ordering::Relaxed);
    }

    /// The thread each `apply_batch` call ran on since
    /// `track_apply_threads`, in order.
    pub fn apply_threads(&self) -> Vec<ThreadId> {
        self.apply_threads.lock().unwrap().clone()
    }

    /// How many times `restore` succeeded.
    pub fn restores(&self) -> u64 {
        self.restores.load(Ordering::Relaxed)
    }
}

fn io_error(e: std::io::Error) -> StateMachineError {
    StateMachineError::new(format!("MemStateMachine snapshot: {e}"))
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
        *self
            .applies
            .lock()
            .unwrap()
            .entry(crc32c::crc32c(payload))
            .or_default() += 1;
        Ok(())
    }

    fn apply_batch(&self, records: &[(Lsn, &[u8])]) -> Result<Vec<Bytes>, StateMachineError> {
        if self.tracking_threads.load(Ordering::Relaxed) {
            self.apply_threads
                .lock()
                .unwrap()
                .push(std::thread::current().id());
        }
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
        drop(held);
        let fail_from = self.fail_from.load(Ordering::Relaxed);
        if let Some((lsn, _)) = records
            .iter()
            .find(|(lsn, _)| fail_from != 0 && lsn.0 >= fail_from)
        {
            return Err(StateMachineError::with_source(
                format!("MemStateMachine: record {lsn}"),
                std::io::Error::other("told to fail"),
            ));
        }
        let mut outputs = Vec::with_capacity(records.len());
        for (lsn, payload) in records {
            self.apply(*lsn, payload)?;
            let hash = self.state_hash();
            outputs.push(Bytes::copy_from_slice(&hash.to_le_bytes()));
        }
        Ok(outputs)
    }

    fn can_apply_inline(&self, _records: &[(Lsn, &[u8])]) -> bool {
        self.inline.load(Ordering::Relaxed)
    }

    fn applied_lsn(&self) -> Lsn {
        self.state.lock().unwrap().applied
    }

    fn snapshot(&self, out: &mut dyn Write) -> Result<Lsn, StateMachineError> {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        let state = *self.state.lock().unwrap();
        std::thread::sleep(Duration::from_micros(
            self.delay_micros.load(Ordering::Relaxed),
        ));
        let padding = self.padding.load(Ordering::Relaxed);
        out.write_all(&state.hash.to_le_bytes()).map_err(io_error)?;
        out.write_all(&padding.to_le_bytes()).map_err(io_error)?;
        let mut buf = [0u8; 4096];
        let mut at = 0;
        while at < padding {
            let n = (padding - at).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pad(state.hash, at + i as u64);
            }
            out.write_all(&buf[..n]).map_err(io_error)?;
            at += n as u64;
        }
        Ok(state.applied)
    }

    fn restore(&self, lsn: Lsn, input: &mut dyn Read) -> Result<(), StateMachineError> {
        let mut head = [0u8; 12];
        input.read_exact(&mut head).map_err(io_error)?;
        let hash = u32::from_le_bytes(head[..4].try_into().unwrap());
        let padding = u64::from_le_bytes(head[4..].try_into().unwrap());
        let mut buf = [0u8; 4096];
        let mut at = 0;
        while at < padding {
            let n = (padding - at).min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..n]).map_err(io_error)?;
            if let Some(i) = (0..n).find(|&i| buf[i] != pad(hash, at + i as u64)) {
                return Err(StateMachineError::new(format!(
                    "MemStateMachine snapshot: wrong byte at {}",
                    12 + at + i as u64
                )));
            }
            at += n as u64;
        }
        if input.read(&mut buf).map_err(io_error)? != 0 {
            return Err(StateMachineError::new(
                "MemStateMachine snapshot: bytes after the end",
            ));
        }
        *self.state.lock().unwrap() = State { applied: lsn, hash };
        self.restores.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
