//! Newtypes for the words of the protocol and the record they describe.

use bytes::Bytes;
use std::fmt;

/// Index of a WAL record, from 1, gapless. `Lsn(0)` means "before the first record".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Before the first record.
    pub const ZERO: Lsn = Lsn(0);

    /// The largest LSN walrep takes from a file or a peer. No log gets
    /// near it (2^62 records take 146 years at a billion a second), so a
    /// header or message that claims more is damaged or hostile, and
    /// refusing it keeps every `next()` after it from overflowing.
    pub const MAX: Lsn = Lsn(1 << 62);

    /// The LSN after this one.
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }

    /// The LSN before this one; `Lsn::ZERO` stays zero.
    pub fn prev(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A durable counter that goes up by one at every promotion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Before the first primary (a log with no record has it).
    pub const ZERO: Epoch = Epoch(0);

    /// The bound on epochs: every epoch in a cluster is below it. A node
    /// takes no epoch at or above it from a peer and never promotes to it,
    /// so no message makes a node's epoch overflow or its peer refuse a
    /// promotion as malformed. Epochs go up by one per promotion: no
    /// honest cluster gets near it (a node at `MAX - 1` refuses to
    /// promote, saying why; mutual TLS keeps others from sending such an
    /// epoch at all).
    pub const MAX: Epoch = Epoch(1 << 62);

    /// Whether a promotion can still follow this epoch (`next()` stays
    /// below `MAX`).
    pub fn can_be_raised(self) -> bool {
        self.0 < Self::MAX.0 - 1
    }

    /// The epoch a promotion moves to.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The name of a node, unique within a cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

/// A caller's name for one logical write, so a retry of it is recognised
/// (`Replicator::apply_once`). 16 bytes the client chooses: random (a
/// `u128` from any random source, `RequestId::from`) or a hash of its own
/// idempotency key. Two different writes must never share one: a write
/// whose id is still remembered is not applied again, whatever its payload.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub [u8; 16]);

impl RequestId {
    /// Bytes a request id takes in a record (in a WAL frame, on the wire).
    pub const LEN: usize = 16;

    /// The id these bytes spell, if there are exactly `LEN` of them.
    pub fn from_slice(bytes: &[u8]) -> Option<RequestId> {
        bytes.try_into().ok().map(RequestId)
    }
}

impl From<u128> for RequestId {
    fn from(id: u128) -> Self {
        RequestId(id.to_le_bytes())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A request id and the record that carries it: what a node that restored
/// a snapshot keeps of the records the snapshot covers, so that it still
/// recognises retries of those writes (`WalStore::set_snapshot_ids`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestIdAt {
    /// The caller's id of the write.
    pub id: RequestId,
    /// The record's place in the log.
    pub lsn: Lsn,
    /// The epoch of the primary that wrote it.
    pub epoch: Epoch,
}

/// One WAL record: the engine's payload, stamped with its place in the log and
/// the epoch of the primary that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its place in the log.
    pub lsn: Lsn,
    /// The epoch of the primary that wrote it.
    pub epoch: Epoch,
    /// The caller's request id (`Replicator::apply_once`), kept so every
    /// node holding the record recognises a retry of it.
    pub request_id: Option<RequestId>,
    /// The engine's command, as given to `Replicator::apply`.
    pub payload: Bytes,
}

/// What the checksum mixes in before a request id: a record with an id
/// never checks as one without, even where the id's bytes could be read
/// as the start of a payload.
const REQUEST_ID_TAG: u8 = 0x01;

impl Record {
    /// A record without a request id.
    pub fn new(lsn: Lsn, epoch: Epoch, payload: Bytes) -> Record {
        Record {
            lsn,
            epoch,
            request_id: None,
            payload,
        }
    }

    /// CRC32C over the LSN, the epoch, the request id when there is one
    /// (after a tag byte) and the payload: the same checksum in the WAL
    /// file and on the wire, so a record is checked end to end. A record
    /// without an id checks as before ids existed.
    pub fn checksum(&self) -> u32 {
        let crc = crc32c::crc32c(&self.lsn.0.to_le_bytes());
        let mut crc = crc32c::crc32c_append(crc, &self.epoch.0.to_le_bytes());
        if let Some(id) = &self.request_id {
            crc = crc32c::crc32c_append(crc, &[REQUEST_ID_TAG]);
            crc = crc32c::crc32c_append(crc, &id.0);
        }
        crc32c::crc32c_append(crc, &self.payload)
    }
}

/// Where an epoch began: its first record's LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: Epoch,
    /// Its first record.
    pub first_lsn: Lsn,
}

/// `[(epoch, first_lsn)]`, ascending in both. PostgreSQL calls these timelines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory(pub Vec<EpochStart>);

impl EpochHistory {
    /// The history of a log whose first record follows `(base, base_epoch)`
    /// (a log restored from a snapshot); empty for a log starting at 1.
    pub fn starting_after(base: Lsn, base_epoch: Epoch) -> EpochHistory {
        EpochHistory(if base == Lsn::ZERO {
            Vec::new()
        } else {
            vec![EpochStart {
                epoch: base_epoch,
                first_lsn: base,
            }]
        })
    }

    /// The epoch of the record at `lsn` in a log described by this history,
    /// or `None` before the first entry.
    pub fn epoch_at(&self, lsn: Lsn) -> Option<Epoch> {
        self.0
            .iter()
            .rev()
            .find(|e| e.first_lsn <= lsn)
            .map(|e| e.epoch)
    }

    /// Records that the record at `lsn` has `epoch`; a no-op when the history
    /// already says so. Panics if epochs would go backwards: that is a bug.
    pub fn note(&mut self, lsn: Lsn, epoch: Epoch) {
        match self.0.last() {
            Some(last) if last.epoch == epoch => {}
            Some(last) => {
                assert!(
                    epoch > last.epoch && lsn >= last.first_lsn,
                    "epoch history would go backwards: {epoch} at {lsn} after {} at {}",
                    last.epoch,
                    last.first_lsn
                );
                self.0.push(EpochStart {
                    epoch,
                    first_lsn: lsn,
                });
            }
            None => self.0.push(EpochStart {
                epoch,
                first_lsn: lsn,
            }),
        }
    }

    /// Drops what the history says about records after `lsn`.
    pub fn truncate_after(&mut self, lsn: Lsn) {
        self.0.retain(|e| e.first_lsn <= lsn);
    }

    /// The newest epoch in the history, `None` when it is empty.
    pub fn last_epoch(&self) -> Option<Epoch> {
        self.0.last().map(|e| e.epoch)
    }
}

/// The last LSN at which two logs hold the same record, given each log's
/// history and last LSN. Because a standby only appends a batch whose
/// `(prev_lsn, prev_epoch)` it holds, two logs that agree on `(lsn, epoch)`
/// agree on every record before it, so the matching LSNs form a prefix and a
/// binary search finds its end.
pub fn divergence_point(
    ours: &EpochHistory,
    our_last: Lsn,
    theirs: &EpochHistory,
    their_last: Lsn,
) -> Lsn {
    // A log holds no record before its history begins (a log restored from a
    // snapshot starts late), so nothing there can conflict.
    let matches = |lsn: Lsn| match (ours.epoch_at(lsn), theirs.epoch_at(lsn)) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    let (mut lo, mut hi) = (0u64, our_last.0.min(their_last.0));
    // Invariant: everything at or below `lo` matches (0 trivially does).
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if matches(Lsn(mid)) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Lsn(lo)
}

#[cfg(test)]
impl EpochHistory {
    /// A history of `(epoch, first_lsn)` entries, for tests.
    pub(crate) fn of(entries: &[(u64, u64)]) -> EpochHistory {
        EpochHistory(
            entries
                .iter()
                .map(|&(epoch, first)| EpochStart {
                    epoch: Epoch(epoch),
                    first_lsn: Lsn(first),
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(entries: &[(u64, u64)]) -> EpochHistory {
        EpochHistory::of(entries)
    }

    #[test]
    fn identical_logs_diverge_at_the_shorter_end() {
        let h = history(&[(1, 1)]);
        assert_eq!(divergence_point(&h, Lsn(10), &h, Lsn(7)), Lsn(7));
        assert_eq!(divergence_point(&h, Lsn(3), &h, Lsn(7)), Lsn(3));
    }

    #[test]
    fn old_primary_suffix_diverges_where_the_new_epoch_began() {
        // Old primary wrote 1..=12 in epoch 1; the standby had 1..=9 and
        // promoted to epoch 2 starting at 10.
        let old = history(&[(1, 1)]);
        let new = history(&[(1, 1), (2, 10)]);
        assert_eq!(divergence_point(&old, Lsn(12), &new, Lsn(15)), Lsn(9));
    }

    #[test]
    fn logs_with_nothing_in_common_diverge_at_zero() {
        let a = history(&[(1, 1)]);
        let b = history(&[(2, 1)]);
        assert_eq!(divergence_point(&a, Lsn(5), &b, Lsn(5)), Lsn::ZERO);
        assert_eq!(divergence_point(&a, Lsn(0), &b, Lsn(5)), Lsn::ZERO);
    }

    #[test]
    fn epoch_at_follows_the_history() {
        let h = history(&[(1, 1), (3, 5), (4, 9)]);
        assert_eq!(h.epoch_at(Lsn(0)), None);
        assert_eq!(h.epoch_at(Lsn(4)), Some(Epoch(1)));
        assert_eq!(h.epoch_at(Lsn(5)), Some(Epoch(3)));
        assert_eq!(h.epoch_at(Lsn(100)), Some(Epoch(4)));
    }

    #[test]
    #[should_panic(expected = "backwards")]
    fn history_refuses_to_go_backwards() {
        let mut h = history(&[(3, 5)]);
        h.note(Lsn(6), Epoch(2));
    }
}
