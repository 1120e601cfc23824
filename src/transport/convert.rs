//! Protobuf <-> domain conversions. Decoding from the wire checks what the
//! types promise (record checksums, ascending LSNs, known enums) and says
//! precisely what was wrong.

use super::*;
use crate::pb;
use crate::types::EpochStart;

/// A message that does not describe anything valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct Malformed {
    pub what: &'static str,
    pub detail: String,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> Malformed {
    Malformed {
        what,
        detail: detail.into(),
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn header_to_pb(h: &Header) -> pb::Header {
    pb::Header {
        cluster_id: h.cluster_id.clone(),
        epoch: h.epoch.0,
        node_id: h.node_id.0.clone(),
        node_addr: h.node_addr.clone(),
        leader_id: h
            .leader_id
            .as_ref()
            .map(|l| l.0.clone())
            .unwrap_or_default(),
        client_addr: h.client_addr.clone().unwrap_or_default(),
    }
}

pub fn header_from_pb(h: Option<pb::Header>) -> Result<Header, Malformed> {
    let h = h.ok_or_else(|| malformed("request", "header missing"))?;
    if h.node_id.is_empty() {
        return Err(malformed("header", "node_id is empty"));
    }
    Ok(Header {
        cluster_id: h.cluster_id,
        epoch: Epoch(h.epoch),
        node_id: NodeId(h.node_id),
        node_addr: h.node_addr,
        leader_id: opt(h.leader_id).map(NodeId),
        client_addr: opt(h.client_addr),
    })
}

pub fn sync_to_pb(s: SyncState) -> i32 {
    (match s {
        SyncState::Sync => pb::SyncState::Sync,
        SyncState::NotSync => pb::SyncState::NotSync,
        SyncState::Async => pb::SyncState::Async,
    }) as i32
}

pub fn sync_from_pb(v: i32) -> Result<SyncState, Malformed> {
    match pb::SyncState::try_from(v) {
        Ok(pb::SyncState::Sync) => Ok(SyncState::Sync),
        Ok(pb::SyncState::NotSync) => Ok(SyncState::NotSync),
        Ok(pb::SyncState::Async) => Ok(SyncState::Async),
        _ => Err(malformed("sync_state", format!("unknown value {v}"))),
    }
}

pub fn role_to_pb(r: RoleKind) -> i32 {
    (match r {
        RoleKind::Primary => pb::Role::Primary,
        RoleKind::Standby => pb::Role::Standby,
        RoleKind::Fenced | RoleKind::Failed => pb::Role::Fenced,
        RoleKind::Promoting | RoleKind::Rejoining => pb::Role::Rejoining,
    }) as i32
}

pub fn role_from_pb(v: i32) -> Result<RoleKind, Malformed> {
    match pb::Role::try_from(v) {
        Ok(pb::Role::Primary) => Ok(RoleKind::Primary),
        Ok(pb::Role::Standby) => Ok(RoleKind::Standby),
        Ok(pb::Role::Fenced) => Ok(RoleKind::Fenced),
        Ok(pb::Role::Rejoining) => Ok(RoleKind::Rejoining),
        _ => Err(malformed("role", format!("unknown value {v}"))),
    }
}

pub fn reason_to_pb(r: FenceReason) -> i32 {
    (match r {
        FenceReason::Failover => pb::FenceReason::Failover,
        FenceReason::Switchover => pb::FenceReason::Switchover,
        FenceReason::Forced => pb::FenceReason::Forced,
    }) as i32
}

pub fn reason_from_pb(v: i32) -> Result<FenceReason, Malformed> {
    match pb::FenceReason::try_from(v) {
        Ok(pb::FenceReason::Failover) => Ok(FenceReason::Failover),
        Ok(pb::FenceReason::Switchover) => Ok(FenceReason::Switchover),
        Ok(pb::FenceReason::Forced) => Ok(FenceReason::Forced),
        _ => Err(malformed("fence reason", format!("unknown value {v}"))),
    }
}

pub fn record_to_pb(r: &Record) -> pb::WalRecord {
    pb::WalRecord {
        lsn: r.lsn.0,
        epoch: r.epoch.0,
        payload: r.payload.clone(),
        crc: r.checksum(),
    }
}

pub fn batch_to_pb(b: &WalBatch) -> pb::WalBatch {
    pb::WalBatch {
        header: Some(header_to_pb(&b.header)),
        prev_lsn: b.prev_lsn.0,
        prev_epoch: b.prev_epoch.0,
        records: b.records.iter().map(record_to_pb).collect(),
        commit_lsn: b.commit_lsn.0,
        sync_state: sync_to_pb(b.sync),
        last_lsn: b.last_lsn.0,
        first_lsn: b.first_lsn.0,
    }
}

/// Checks every record's checksum, that LSNs follow `prev_lsn` without a
/// gap, and that epochs never go down nor above the sender's epoch: a
/// batch that fails any of these is refused whole.
pub fn batch_from_pb(b: pb::WalBatch, max_record_bytes: usize) -> Result<WalBatch, Malformed> {
    let header = header_from_pb(b.header)?;
    let mut expected = Lsn(b.prev_lsn).next();
    let mut epoch = Epoch(b.prev_epoch);
    if epoch > header.epoch {
        return Err(malformed(
            "batch",
            format!(
                "prev_epoch {} above the sender's epoch {}",
                epoch, header.epoch
            ),
        ));
    }
    let mut records = Vec::with_capacity(b.records.len());
    for r in b.records {
        let record = Record {
            lsn: Lsn(r.lsn),
            epoch: Epoch(r.epoch),
            payload: r.payload,
        };
        if record.payload.len() > max_record_bytes {
            return Err(malformed(
                "record",
                format!(
                    "record {} has {} bytes, above max_record_bytes {}",
                    record.lsn,
                    record.payload.len(),
                    max_record_bytes
                ),
            ));
        }
        if record.lsn != expected {
            return Err(malformed(
                "batch",
                format!(
                    "record {} where {} was expected (not contiguous)",
                    record.lsn, expected
                ),
            ));
        }
        if record.epoch < epoch || record.epoch > header.epoch {
            return Err(malformed(
                "batch",
                format!(
                    "record {} has epoch {} outside [{}, {}]",
                    record.lsn, record.epoch, epoch, header.epoch
                ),
            ));
        }
        let computed = record.checksum();
        if computed != r.crc {
            return Err(malformed(
                "record",
                format!(
                    "record {} checksum {:#010x} does not match its content ({computed:#010x})",
                    record.lsn, r.crc
                ),
            ));
        }
        epoch = record.epoch;
        expected = expected.next();
        records.push(record);
    }
    Ok(WalBatch {
        header,
        prev_lsn: Lsn(b.prev_lsn),
        prev_epoch: Epoch(b.prev_epoch),
        records,
        commit_lsn: Lsn(b.commit_lsn),
        sync: sync_from_pb(b.sync_state)?,
        last_lsn: Lsn(b.last_lsn),
        first_lsn: Lsn(b.first_lsn),
    })
}

pub fn ack_to_pb(a: &WalAck) -> pb::WalAck {
    pb::WalAck {
        epoch: a.epoch.0,
        written_lsn: a.written.0,
        flushed_lsn: a.flushed.0,
        applied_lsn: a.applied.0,
        flushed_epoch: a.flushed_epoch.0,
    }
}

pub fn ack_from_pb(a: pb::WalAck) -> Result<WalAck, Malformed> {
    if a.flushed_lsn > a.written_lsn || a.applied_lsn > a.flushed_lsn {
        return Err(malformed(
            "ack",
            format!(
                "positions out of order: written {} flushed {} applied {}",
                a.written_lsn, a.flushed_lsn, a.applied_lsn
            ),
        ));
    }
    Ok(WalAck {
        epoch: Epoch(a.epoch),
        written: Lsn(a.written_lsn),
        flushed: Lsn(a.flushed_lsn),
        applied: Lsn(a.applied_lsn),
        flushed_epoch: Epoch(a.flushed_epoch),
    })
}

pub fn history_to_pb(h: &EpochHistory) -> Vec<pb::EpochStart> {
    h.0.iter()
        .map(|e| pb::EpochStart {
            epoch: e.epoch.0,
            first_lsn: e.first_lsn.0,
        })
        .collect()
}

pub fn history_from_pb(h: Vec<pb::EpochStart>) -> Result<EpochHistory, Malformed> {
    let mut out: Vec<EpochStart> = Vec::with_capacity(h.len());
    for e in h {
        let entry = EpochStart {
            epoch: Epoch(e.epoch),
            first_lsn: Lsn(e.first_lsn),
        };
        if let Some(last) = out.last()
            && (entry.epoch <= last.epoch || entry.first_lsn < last.first_lsn)
        {
            return Err(malformed(
                "epoch history",
                format!("entry {entry:?} does not follow {last:?}"),
            ));
        }
        out.push(entry);
    }
    Ok(EpochHistory(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn header() -> Header {
        Header {
            cluster_id: "c".into(),
            epoch: Epoch(2),
            node_id: NodeId::from("n1"),
            ..Header::default()
        }
    }

    fn batch(records: Vec<Record>) -> WalBatch {
        WalBatch {
            header: header(),
            prev_lsn: Lsn(4),
            prev_epoch: Epoch(1),
            records,
            commit_lsn: Lsn(4),
            sync: SyncState::Sync,
            last_lsn: Lsn(6),
            first_lsn: Lsn(1),
        }
    }

    fn rec(lsn: u64, epoch: u64) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(epoch),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let b = batch(vec![rec(5, 1), rec(6, 2)]);
        assert_eq!(batch_from_pb(batch_to_pb(&b), 1024).unwrap(), b);
    }

    #[test]
    fn a_gap_in_a_batch_is_refused() {
        let pb = batch_to_pb(&batch(vec![rec(5, 1), rec(7, 1)]));
        let err = batch_from_pb(pb, 1024).unwrap_err();
        assert!(err.detail.contains("not contiguous"), "{err}");
    }

    #[test]
    fn a_record_whose_payload_changed_in_flight_is_refused() {
        let mut pb = batch_to_pb(&batch(vec![rec(5, 1)]));
        pb.records[0].payload = Bytes::from_static(b"y");
        let err = batch_from_pb(pb, 1024).unwrap_err();
        assert!(err.detail.contains("checksum"), "{err}");
    }

    #[test]
    fn a_record_from_a_future_epoch_is_refused() {
        let pb = batch_to_pb(&batch(vec![rec(5, 3)]));
        assert!(batch_from_pb(pb, 1024).is_err());
    }

    #[test]
    fn an_oversized_record_is_refused() {
        let pb = batch_to_pb(&batch(vec![rec(5, 1)]));
        assert!(
            batch_from_pb(pb, 0)
                .unwrap_err()
                .detail
                .contains("max_record_bytes")
        );
    }

    #[test]
    fn a_history_going_backwards_is_refused() {
        let h = vec![
            pb::EpochStart {
                epoch: 2,
                first_lsn: 5,
            },
            pb::EpochStart {
                epoch: 1,
                first_lsn: 9,
            },
        ];
        assert!(history_from_pb(h).is_err());
    }
}
