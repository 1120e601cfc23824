//! Protobuf <-> domain conversions. Decoding from the wire checks what the
//! types promise (record checksums, ascending LSNs, known enums) and says
//! precisely what was wrong.

use super::*;
use crate::pb;
use crate::types::{EpochStart, RequestId};

/// A message that does not describe anything valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct Malformed {
    pub what: &'static str,
    pub detail: String,
}

pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Malformed {
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
    if h.epoch >= Epoch::MAX.0 {
        return Err(malformed(
            "header",
            format!(
                "epoch {} is at or beyond the bound {}: no promotion could ever follow it",
                h.epoch,
                Epoch::MAX
            ),
        ));
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
        RoleKind::Fenced => pb::Role::Fenced,
        RoleKind::Failed => pb::Role::Failed,
        RoleKind::Promoting | RoleKind::Rejoining => pb::Role::Rejoining,
    }) as i32
}

pub fn role_from_pb(v: i32) -> Result<RoleKind, Malformed> {
    match pb::Role::try_from(v) {
        Ok(pb::Role::Primary) => Ok(RoleKind::Primary),
        Ok(pb::Role::Standby) => Ok(RoleKind::Standby),
        Ok(pb::Role::Fenced) => Ok(RoleKind::Fenced),
        Ok(pb::Role::Rejoining) => Ok(RoleKind::Rejoining),
        Ok(pb::Role::Failed) => Ok(RoleKind::Failed),
        _ => Err(malformed("role", format!("unknown value {v}"))),
    }
}

pub fn reason_to_pb(r: FenceReason) -> i32 {
    (match r {
        FenceReason::Failover => pb::FenceReason::Failover,
        FenceReason::Switchover => pb::FenceReason::Switchover,
        FenceReason::Forced => pb::FenceReason::Forced,
        FenceReason::Candidate => pb::FenceReason::Candidate,
    }) as i32
}

pub fn reason_from_pb(v: i32) -> Result<FenceReason, Malformed> {
    match pb::FenceReason::try_from(v) {
        Ok(pb::FenceReason::Failover) => Ok(FenceReason::Failover),
        Ok(pb::FenceReason::Switchover) => Ok(FenceReason::Switchover),
        Ok(pb::FenceReason::Forced) => Ok(FenceReason::Forced),
        Ok(pb::FenceReason::Candidate) => Ok(FenceReason::Candidate),
        _ => Err(malformed("fence reason", format!("unknown value {v}"))),
    }
}

pub fn record_to_pb(r: &Record) -> pb::WalRecord {
    pb::WalRecord {
        lsn: r.lsn.0,
        epoch: r.epoch.0,
        payload: r.payload.clone(),
        crc: r.checksum(),
        request_id: r
            .request_id
            .map(|id| bytes::Bytes::copy_from_slice(&id.0))
            .unwrap_or_default(),
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
        unconfirmed: b.unconfirmed,
    }
}

/// Checks every record's checksum, that LSNs follow `prev_lsn` without a
/// gap, and that epochs never go down nor above the sender's epoch: a
/// batch that fails any of these is refused whole.
pub fn batch_from_pb(b: pb::WalBatch, max_record_bytes: usize) -> Result<WalBatch, Malformed> {
    let header = header_from_pb(b.header)?;
    // Bounded so the LSNs that follow it can be counted without overflow.
    if b.prev_lsn > Lsn::MAX.0 {
        return Err(malformed(
            "batch",
            format!(
                "prev_lsn {} is beyond the largest LSN {}",
                b.prev_lsn,
                Lsn::MAX
            ),
        ));
    }
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
        let request_id = match (r.request_id.len(), RequestId::from_slice(&r.request_id)) {
            (0, _) => None,
            (_, Some(id)) => Some(id),
            (n, None) => {
                return Err(malformed(
                    "record",
                    format!(
                        "record {} has a request id of {n} bytes; a request id has {} bytes, or none",
                        r.lsn,
                        RequestId::LEN
                    ),
                ));
            }
        };
        let record = Record {
            lsn: Lsn(r.lsn),
            epoch: Epoch(r.epoch),
            request_id,
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
        unconfirmed: b.unconfirmed,
    })
}

pub fn ack_to_pb(a: &WalAck) -> pb::WalAck {
    pb::WalAck {
        epoch: a.epoch.0,
        written_lsn: a.written.0,
        flushed_lsn: a.flushed.0,
        applied_lsn: a.applied.0,
        flushed_epoch: a.flushed_epoch.0,
        first_lsn: a.first.0,
    }
}

pub fn ack_from_pb(a: pb::WalAck) -> Result<WalAck, Malformed> {
    // The primary counts on from these positions (`flushed + 1` is where
    // the standby's next record is); no log reaches past `Lsn::MAX`.
    if a.written_lsn > Lsn::MAX.0 || a.first_lsn > a.written_lsn.saturating_add(1) {
        return Err(malformed(
            "ack",
            format!(
                "written_lsn {} is beyond the largest LSN {}, or first_lsn {} past it",
                a.written_lsn,
                Lsn::MAX,
                a.first_lsn
            ),
        ));
    }
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
        first: Lsn(a.first_lsn),
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

/// A primary's request ids for a standby restored from its snapshot.
pub fn request_ids_to_pb(ids: &super::RequestIds) -> pb::RequestIdsReply {
    pb::RequestIdsReply {
        ids: ids
            .ids
            .iter()
            .map(|e| pb::RequestIdEntry {
                request_id: bytes::Bytes::copy_from_slice(&e.id.0),
                lsn: e.lsn.0,
                epoch: e.epoch.0,
            })
            .collect(),
        more: ids.more,
    }
}

/// Reads a reply to a request for the ids after `after` up to `up_to`:
/// every id 16 bytes, every LSN within the range and above the one before
/// (a record carries one id), or the reply is malformed.
pub fn request_ids_from_pb(
    r: pb::RequestIdsReply,
    after: Lsn,
    up_to: Lsn,
) -> Result<super::RequestIds, Malformed> {
    let mut last = after;
    let mut ids = Vec::with_capacity(r.ids.len());
    for e in r.ids {
        let id = RequestId::from_slice(&e.request_id).ok_or_else(|| {
            malformed(
                "request ids",
                format!(
                    "a request id of {} bytes, not {}",
                    e.request_id.len(),
                    RequestId::LEN
                ),
            )
        })?;
        let lsn = Lsn(e.lsn);
        if lsn <= last || lsn > up_to {
            return Err(malformed(
                "request ids",
                format!(
                    "record {lsn} listed after {last}, outside {after}..={up_to} or out of order"
                ),
            ));
        }
        last = lsn;
        ids.push(crate::types::RequestIdAt {
            id,
            lsn,
            epoch: Epoch(e.epoch),
        });
    }
    Ok(super::RequestIds { ids, more: r.more })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A primary's list of request ids round-trips; a list with an id of
    /// the wrong length, an LSN out of order or outside the range asked
    /// for is refused whole, so a hostile or broken peer cannot plant ids
    /// a restored standby would answer retries with.
    #[test]
    fn request_ids_round_trip_and_a_bad_list_is_refused() {
        let at = |n: u64| crate::types::RequestIdAt {
            id: RequestId::from(n as u128),
            lsn: Lsn(n),
            epoch: Epoch(1),
        };
        let ids = super::super::RequestIds {
            ids: vec![at(3), at(5)],
            more: true,
        };
        let pb = request_ids_to_pb(&ids);
        assert_eq!(
            request_ids_from_pb(pb.clone(), Lsn(2), Lsn(5)).unwrap(),
            ids
        );
        for (after, up_to) in [(Lsn(3), Lsn(9)), (Lsn(0), Lsn(4))] {
            assert!(request_ids_from_pb(pb.clone(), after, up_to).is_err());
        }
        let mut swapped = pb.clone();
        swapped.ids.swap(0, 1);
        assert!(request_ids_from_pb(swapped, Lsn(0), Lsn(9)).is_err());
        let mut short = pb;
        short.ids[0].request_id = Bytes::from_static(b"short");
        let err = request_ids_from_pb(short, Lsn(0), Lsn(9)).unwrap_err();
        assert!(err.to_string().contains("5 bytes"), "{err}");
    }

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
            unconfirmed: false,
        }
    }

    fn rec(lsn: u64, epoch: u64) -> Record {
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(epoch),
            request_id: None,
            payload: Bytes::from_static(b"x"),
        }
    }

    /// A failed standby must reach the primary as failed (it counts it as
    /// lost), not as fenced.
    #[test]
    fn a_failed_node_is_failed_on_the_wire() {
        assert_eq!(
            role_from_pb(role_to_pb(RoleKind::Failed)).unwrap(),
            RoleKind::Failed
        );
        for role in [
            RoleKind::Primary,
            RoleKind::Standby,
            RoleKind::Fenced,
            RoleKind::Rejoining,
        ] {
            assert_eq!(role_from_pb(role_to_pb(role)).unwrap(), role);
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let b = batch(vec![rec(5, 1), rec(6, 2)]);
        assert_eq!(batch_from_pb(batch_to_pb(&b), 1024).unwrap(), b);
        // The flag a standby refuses a wiped primary by survives the wire.
        let unconfirmed = WalBatch {
            unconfirmed: true,
            ..batch(vec![])
        };
        assert_eq!(
            batch_from_pb(batch_to_pb(&unconfirmed), 1024).unwrap(),
            unconfirmed
        );
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
    fn a_batch_after_the_largest_lsn_is_malformed_not_an_overflow() {
        let mut b = batch_to_pb(&batch(Vec::new()));
        b.prev_lsn = u64::MAX;
        let err = batch_from_pb(b.clone(), 1024).unwrap_err();
        assert!(err.detail.contains("beyond the largest LSN"), "{err}");
        // A last record at u64::MAX used to overflow counting past it.
        let r = Record {
            lsn: Lsn(u64::MAX),
            ..rec(0, 1)
        };
        b.prev_lsn = u64::MAX - 1;
        b.records = vec![record_to_pb(&r)];
        assert!(batch_from_pb(b, 1024).is_err());
    }

    #[test]
    fn a_header_with_an_epoch_no_promotion_could_follow_is_malformed() {
        for epoch in [Epoch::MAX.0, Epoch::MAX.0 + 1, u64::MAX] {
            let mut h = header_to_pb(&header());
            h.epoch = epoch;
            let err = header_from_pb(Some(h)).unwrap_err();
            assert!(
                err.detail.contains("no promotion could ever follow"),
                "{err}"
            );
        }
        let mut h = header_to_pb(&header());
        h.epoch = Epoch::MAX.0 - 1;
        assert_eq!(
            header_from_pb(Some(h)).unwrap().epoch,
            Epoch(Epoch::MAX.0 - 1)
        );
    }

    #[test]
    fn an_ack_beyond_the_largest_lsn_is_malformed() {
        let ack = pb::WalAck {
            epoch: 1,
            written_lsn: u64::MAX,
            flushed_lsn: u64::MAX,
            applied_lsn: 0,
            flushed_epoch: 1,
            first_lsn: 1,
        };
        let err = ack_from_pb(ack).unwrap_err();
        assert!(err.detail.contains("beyond the largest LSN"), "{err}");
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

    mod props {
        use super::*;
        use bytes::Bytes;
        use proptest::prelude::*;

        /// LSN fields: small, near the top of the range, or anything.
        fn lsn() -> impl Strategy<Value = u64> {
            prop_oneof![
                4 => 0u64..20,
                1 => (0u64..3).prop_map(|d| u64::MAX - d),
                1 => (0u64..3).prop_map(|d| Lsn::MAX.0 - 1 + d),
                1 => any::<u64>(),
            ]
        }

        fn small_or_any() -> impl Strategy<Value = u64> {
            prop_oneof![6 => 0u64..6, 1 => any::<u64>()]
        }

        fn pb_header() -> impl Strategy<Value = pb::Header> {
            (
                small_or_any(),
                prop_oneof![9 => Just("n2".to_string()), 1 => ".{0,3}"],
                prop_oneof![Just(String::new()), ".{0,3}"],
            )
                .prop_map(|(epoch, node_id, leader_id)| pb::Header {
                    cluster_id: "c".into(),
                    epoch,
                    node_id,
                    node_addr: "a:1".into(),
                    leader_id,
                    client_addr: String::new(),
                })
        }

        #[derive(Clone, Debug)]
        struct RecordPlan {
            /// The LSN after the previous one, or this one.
            lsn: Option<u64>,
            epoch_step: u64,
            payload: Vec<u8>,
            /// Mostly none or 16 bytes; sometimes a wrong length.
            request_id: Vec<u8>,
            /// A CRC that is wrong by this much (mostly 0, right).
            crc_error: u32,
        }

        fn record_plan() -> impl Strategy<Value = RecordPlan> {
            (
                prop::option::weighted(0.1, lsn()),
                prop_oneof![8 => Just(0u64), 2 => Just(1u64), 1 => any::<u64>()],
                prop::collection::vec(any::<u8>(), 0..40),
                prop_oneof![
                    6 => Just(Vec::new()),
                    3 => prop::collection::vec(any::<u8>(), RequestId::LEN),
                    1 => prop::collection::vec(any::<u8>(), 0..20),
                ],
                prop_oneof![9 => Just(0u32), 1 => any::<u32>()],
            )
                .prop_map(|(lsn, epoch_step, payload, request_id, crc_error)| {
                    RecordPlan {
                        lsn,
                        epoch_step,
                        payload,
                        request_id,
                        crc_error,
                    }
                })
        }

        /// A batch as a sender might build it, right or wrong in any field.
        fn pb_batch() -> impl Strategy<Value = pb::WalBatch> {
            (
                prop::option::weighted(0.95, pb_header()),
                lsn(),
                small_or_any(),
                prop::collection::vec(record_plan(), 0..6),
                (lsn(), lsn(), lsn()),
                prop_oneof![6 => 1i32..4, 1 => Just(0), 1 => any::<i32>()],
                prop::bool::weighted(0.7),
            )
                .prop_map(
                    |(
                        mut header,
                        prev_lsn,
                        prev_epoch,
                        plans,
                        (commit, last, first),
                        sync,
                        fit,
                    )| {
                        let (mut next, mut epoch) = (prev_lsn.wrapping_add(1), prev_epoch);
                        let records = plans
                            .into_iter()
                            .map(|p| {
                                let r = Record {
                                    lsn: Lsn(p.lsn.unwrap_or(next)),
                                    epoch: Epoch(epoch.wrapping_add(p.epoch_step)),
                                    request_id: p.request_id[..].try_into().ok().map(RequestId),
                                    payload: Bytes::from(p.payload),
                                };
                                (next, epoch) = (r.lsn.0.wrapping_add(1), r.epoch.0);
                                pb::WalRecord {
                                    crc: r.checksum().wrapping_add(p.crc_error),
                                    request_id: Bytes::from(p.request_id),
                                    ..record_to_pb(&r)
                                }
                            })
                            .collect::<Vec<_>>();
                        // Mostly a sender epoch the records fit under, so that
                        // the other checks get their turn.
                        if fit && let Some(h) = &mut header {
                            h.epoch = h.epoch.max(epoch);
                        }
                        pb::WalBatch {
                            header,
                            prev_lsn,
                            prev_epoch,
                            records,
                            commit_lsn: commit,
                            sync_state: sync,
                            last_lsn: last,
                            first_lsn: first,
                            unconfirmed: false,
                        }
                    },
                )
        }

        /// A batch is accepted only whole and only if it is what the
        /// types promise; anything else is a `Malformed` that says what.
        fn check_batch(b: pb::WalBatch, max: usize) -> Result<(), TestCaseError> {
            match batch_from_pb(b.clone(), max) {
                Ok(batch) => {
                    let header = batch.header.epoch;
                    let mut epoch = batch.prev_epoch;
                    prop_assert!(epoch <= header && header < Epoch::MAX);
                    for (i, r) in batch.records.iter().enumerate() {
                        prop_assert_eq!(r.lsn.0 as u128, batch.prev_lsn.0 as u128 + 1 + i as u128);
                        prop_assert!(r.epoch >= epoch && r.epoch <= header);
                        prop_assert!(r.payload.len() <= max);
                        prop_assert!(r.lsn.0 <= Lsn::MAX.0 + i as u64 + 1);
                        epoch = r.epoch;
                    }
                    // Nothing is lost or changed on the way in: the CRCs
                    // sent are the ones the content has.
                    prop_assert_eq!(batch_to_pb(&batch), b);
                }
                Err(m) => {
                    prop_assert!(
                        ["request", "header", "batch", "record", "sync_state"].contains(&m.what),
                        "{m}"
                    );
                    prop_assert!(!m.detail.is_empty());
                }
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn batches_are_valid_or_malformed(
                b in pb_batch(),
                max in prop_oneof![3 => Just(usize::MAX), 1 => 0usize..40],
            ) {
                check_batch(b, max)?;
            }

            /// Bytes off the wire: whatever prost makes of them, the
            /// conversion decides without a panic.
            #[test]
            fn arbitrary_bytes_decode_to_a_valid_batch_or_an_error(
                bytes in prop::collection::vec(any::<u8>(), 0..200),
            ) {
                if let Ok(b) = <pb::WalBatch as prost::Message>::decode(&bytes[..]) {
                    check_batch(b, 1024)?;
                }
            }

            /// A valid batch's encoding with some bytes changed.
            #[test]
            fn changed_bytes_of_a_batch_give_a_valid_batch_or_an_error(
                b in pb_batch(),
                changes in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4),
            ) {
                let mut bytes = prost::Message::encode_to_vec(&b);
                prop_assume!(!bytes.is_empty());
                for (at, xor) in changes {
                    let at = at.index(bytes.len());
                    bytes[at] ^= xor;
                }
                if let Ok(b) = <pb::WalBatch as prost::Message>::decode(&bytes[..]) {
                    check_batch(b, 1024)?;
                }
            }

            #[test]
            fn acks_are_ordered_or_malformed(
                epoch in any::<u64>(),
                written in lsn(),
                flushed in lsn(),
                applied in lsn(),
                flushed_epoch in any::<u64>(),
                first in lsn(),
            ) {
                let a = pb::WalAck {
                    epoch,
                    written_lsn: written,
                    flushed_lsn: flushed,
                    applied_lsn: applied,
                    flushed_epoch,
                    first_lsn: first,
                };
                match ack_from_pb(a) {
                    Ok(ack) => {
                        prop_assert!(ack.applied <= ack.flushed && ack.flushed <= ack.written);
                        prop_assert!(ack.written <= Lsn::MAX);
                        prop_assert!(ack.first <= ack.written.next());
                        prop_assert_eq!(ack_to_pb(&ack), a);
                    }
                    Err(m) => prop_assert_eq!(m.what, "ack"),
                }
            }

            #[test]
            fn histories_ascend_or_are_malformed(
                entries in prop::collection::vec((small_or_any(), lsn()), 0..6),
                sorted in any::<bool>(),
            ) {
                let mut h: Vec<pb::EpochStart> = entries
                    .into_iter()
                    .map(|(epoch, first_lsn)| pb::EpochStart { epoch, first_lsn })
                    .collect();
                if sorted {
                    h.sort_by_key(|e| (e.epoch, e.first_lsn));
                }
                match history_from_pb(h.clone()) {
                    Ok(history) => {
                        for w in history.0.windows(2) {
                            prop_assert!(w[0].epoch < w[1].epoch);
                            prop_assert!(w[0].first_lsn <= w[1].first_lsn);
                        }
                        // `note` panics on what goes backwards: rebuilding
                        // the history with it must not.
                        let mut again = EpochHistory::default();
                        for e in &history.0 {
                            again.note(e.first_lsn, e.epoch);
                        }
                        prop_assert_eq!(history_to_pb(&history), h);
                    }
                    Err(m) => prop_assert_eq!(m.what, "epoch history"),
                }
            }
        }
    }
}
