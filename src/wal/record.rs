//! The frame of one record, the same in every segment file and in the
//! `rewound/` files:
//!
//! ```text
//! | len: u32 LE | lsn: u64 LE | epoch: u64 LE | crc32c: u32 LE | [request id: 16 bytes] | payload |
//! ```
//!
//! `len` is the payload's length. In the current format (`FrameFormat::V2`,
//! version-2 segments) its top bit says that a request id follows the
//! header, so a record without an id costs nothing more than in
//! `FrameFormat::V1` (version-1 segments, written before request ids
//! existed), where every bit of `len` is length and no frame has an id.
//!
//! The CRC covers lsn, epoch, the id when present and payload
//! (`Record::checksum`), so a frame moved to the wrong place, a length that
//! points into another record, or a flipped id flag fails the check.

use crate::types::{Epoch, Lsn, Record, RequestId};
use bytes::{BufMut, Bytes};

/// Bytes of a frame before its request id and payload.
pub const HEADER_LEN: usize = 4 + 8 + 8 + 4;

/// The bit of `len` that says a request id follows the header (V2).
const HAS_REQUEST_ID: u32 = 1 << 31;

/// The largest payload a V2 frame can carry: the top bit of `len` is the
/// request id flag.
pub const MAX_PAYLOAD: usize = (HAS_REQUEST_ID - 1) as usize;

/// How the frames of a file are laid out: the segment header's version says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameFormat {
    /// Before request ids: `len` is all length, no frame has an id.
    V1,
    /// The top bit of `len` flags a request id after the header.
    V2,
}

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header or the announced payload: a torn write
    /// at the end of a file, or a file cut short.
    #[error("frame incomplete: need {needed} bytes, have {available}")]
    Incomplete { needed: usize, available: usize },
    #[error("frame announces a payload of {len} bytes, above the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("checksum mismatch for record {lsn}: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        lsn: Lsn,
        stored: u32,
        computed: u32,
    },
}

/// Bytes `record` takes as a (V2) frame: header, request id and payload.
pub fn encoded_len(record: &Record) -> usize {
    let id = if record.request_id.is_some() {
        RequestId::LEN
    } else {
        0
    };
    HEADER_LEN + id + record.payload.len()
}

/// Writes `record` as a V2 frame. Its payload must be at most
/// `MAX_PAYLOAD` bytes (the WAL refuses larger ones before encoding).
pub fn encode(record: &Record, out: &mut impl BufMut) {
    assert!(
        record.payload.len() <= MAX_PAYLOAD,
        "record {} has a payload of {} bytes, above the frame's limit of {MAX_PAYLOAD}",
        record.lsn,
        record.payload.len()
    );
    let flag = if record.request_id.is_some() {
        HAS_REQUEST_ID
    } else {
        0
    };
    out.put_u32_le(record.payload.len() as u32 | flag);
    out.put_u64_le(record.lsn.0);
    out.put_u64_le(record.epoch.0);
    out.put_u32_le(record.checksum());
    if let Some(id) = &record.request_id {
        out.put_slice(&id.0);
    }
    out.put_slice(&record.payload);
}

/// Decodes the frame at the start of `buf`, laid out as `format`, returning
/// the record and the bytes it used. Never allocates more than
/// `max_payload` for the payload: a corrupt length is refused before
/// anything is read.
pub fn decode(
    buf: &[u8],
    max_payload: usize,
    format: FrameFormat,
) -> Result<(Record, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Incomplete {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    let word = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    let (len, id_len) = match format {
        FrameFormat::V2 if word & HAS_REQUEST_ID != 0 => {
            ((word & !HAS_REQUEST_ID) as usize, RequestId::LEN)
        }
        _ => (word as usize, 0),
    };
    if len > max_payload {
        return Err(FrameError::TooLong {
            len,
            limit: max_payload,
        });
    }
    let total = HEADER_LEN + id_len + len;
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total,
            available: buf.len(),
        });
    }
    let lsn = Lsn(u64::from_le_bytes(buf[4..12].try_into().unwrap()));
    let epoch = Epoch(u64::from_le_bytes(buf[12..20].try_into().unwrap()));
    let stored = u32::from_le_bytes(buf[20..24].try_into().unwrap());
    let request_id = (id_len > 0).then(|| {
        RequestId::from_slice(&buf[HEADER_LEN..HEADER_LEN + RequestId::LEN])
            .expect("a slice of LEN bytes")
    });
    let record = Record {
        lsn,
        epoch,
        request_id,
        payload: Bytes::copy_from_slice(&buf[HEADER_LEN + id_len..total]),
    };
    let computed = record.checksum();
    if computed != stored {
        return Err(FrameError::Checksum {
            lsn,
            stored,
            computed,
        });
    }
    Ok((record, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(lsn: u64, payload: &'static [u8]) -> Record {
        Record::new(Lsn(lsn), Epoch(3), Bytes::from_static(payload))
    }

    fn with_id(lsn: u64, payload: &'static [u8]) -> Record {
        Record {
            request_id: Some(RequestId::from(
                0x0123_4567_89ab_cdef_u128 << 32 | lsn as u128,
            )),
            ..record(lsn, payload)
        }
    }

    #[test]
    fn a_frame_round_trips() {
        for r in [record(7, b"hello"), with_id(7, b"hello")] {
            let mut buf = Vec::new();
            encode(&r, &mut buf);
            assert_eq!(buf.len(), encoded_len(&r));
            assert_eq!(decode(&buf, 1024, FrameFormat::V2).unwrap(), (r, buf.len()));
        }
    }

    #[test]
    fn a_record_without_an_id_costs_what_it_did_before_ids() {
        let plain = record(7, b"hello");
        assert_eq!(encoded_len(&plain), HEADER_LEN + 5);
        assert_eq!(encoded_len(&with_id(7, b"hello")), HEADER_LEN + 16 + 5);
        // And its V2 frame is the V1 frame: a V1 reader takes it as is.
        let mut buf = Vec::new();
        encode(&plain, &mut buf);
        assert_eq!(
            decode(&buf, 1024, FrameFormat::V1).unwrap(),
            (plain, buf.len())
        );
    }

    #[test]
    fn a_v1_frame_never_has_an_id() {
        // In V1 every bit of `len` is length: the V2 flag reads as a
        // length far above any limit, not as an id.
        let mut buf = Vec::new();
        encode(&with_id(3, b"abc"), &mut buf);
        assert!(matches!(
            decode(&buf, 1 << 20, FrameFormat::V1),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        for r in [
            record(9, b"payload bytes"),
            with_id(9, b"payload bytes, longer than an id"),
        ] {
            let mut buf = Vec::new();
            encode(&r, &mut buf);
            for bit in 0..buf.len() * 8 {
                let mut bad = buf.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    decode(&bad, 1024, FrameFormat::V2).is_err(),
                    "bit {bit} flipped went unnoticed in {r:?}"
                );
            }
        }
    }

    #[test]
    fn a_cut_frame_is_incomplete() {
        let mut buf = Vec::new();
        encode(&record(1, b"abcdef"), &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(
                decode(&buf[..cut], 1024, FrameFormat::V2),
                Err(FrameError::Incomplete { .. })
            ));
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_reading() {
        let mut buf = vec![0xff; HEADER_LEN];
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&buf, 1 << 20, FrameFormat::V2),
            Err(FrameError::TooLong { .. })
        ));
    }

    mod props {
        use super::*;
        use crate::testing::largest_allocation;
        use proptest::prelude::*;

        fn any_record() -> impl Strategy<Value = Record> {
            (
                any::<u64>(),
                any::<u64>(),
                prop::option::of(any::<u128>()),
                prop::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(lsn, epoch, id, payload)| Record {
                    lsn: Lsn(lsn),
                    epoch: Epoch(epoch),
                    request_id: id.map(RequestId::from),
                    payload: Bytes::from(payload),
                })
        }

        proptest! {
            /// Any bytes: a frame that re-encodes to exactly the bytes it
            /// used, or the error that describes them; never a panic, never
            /// an allocation larger than the input.
            #[test]
            fn arbitrary_bytes_decode_to_a_valid_frame_or_a_precise_error(
                buf in prop::collection::vec(any::<u8>(), 0..400),
                max in prop_oneof![0usize..64, Just(usize::MAX)],
            ) {
                let (result, allocated) = largest_allocation(|| decode(&buf, max, FrameFormat::V2));
                prop_assert!(allocated <= buf.len(), "allocated {allocated}");
                match result {
                    Ok((r, used)) => {
                        let mut again = Vec::new();
                        encode(&r, &mut again);
                        prop_assert_eq!(&again[..], &buf[..used]);
                        prop_assert!(r.payload.len() <= max);
                    }
                    Err(FrameError::Incomplete { needed, available }) => {
                        prop_assert_eq!(available, buf.len());
                        prop_assert!(needed > available);
                    }
                    Err(FrameError::TooLong { len, limit }) => {
                        prop_assert_eq!(limit, max);
                        prop_assert!(len > limit);
                        prop_assert_eq!(len, (u32::from_le_bytes(buf[..4].try_into().unwrap()) & !HAS_REQUEST_ID) as usize);
                    }
                    Err(FrameError::Checksum { lsn, stored, computed }) => {
                        prop_assert_eq!(lsn.0, u64::from_le_bytes(buf[4..12].try_into().unwrap()));
                        prop_assert_ne!(stored, computed);
                    }
                }
            }

            /// A length above the limit is refused from the header alone,
            /// whatever follows and however little of it there is.
            #[test]
            fn a_length_above_the_limit_is_too_long_without_allocating(
                len in any::<u32>(),
                max in 0usize..(1 << 20),
                rest in prop::collection::vec(any::<u8>(), HEADER_LEN - 4..HEADER_LEN + 64),
            ) {
                let announced = (len & !HAS_REQUEST_ID) as usize;
                prop_assume!(announced > max);
                let mut buf = len.to_le_bytes().to_vec();
                buf.extend(rest);
                let (result, allocated) = largest_allocation(|| decode(&buf, max, FrameFormat::V2));
                prop_assert_eq!(result, Err(FrameError::TooLong { len: announced, limit: max }));
                prop_assert_eq!(allocated, 0);
            }

            /// Valid frames round trip, followed by anything.
            #[test]
            fn valid_frames_round_trip(
                r in any_record(),
                trailing in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut buf = Vec::new();
                encode(&r, &mut buf);
                let len = buf.len();
                prop_assert_eq!(len, encoded_len(&r));
                buf.extend(trailing);
                prop_assert_eq!(decode(&buf, r.payload.len(), FrameFormat::V2), Ok((r, len)));
            }

            /// Changing any byte of a valid frame is caught.
            #[test]
            fn a_changed_byte_is_caught(
                r in any_record(),
                at in any::<prop::sample::Index>(),
                xor in 1u8..,
            ) {
                let mut buf = Vec::new();
                encode(&r, &mut buf);
                let at = at.index(buf.len());
                buf[at] ^= xor;
                prop_assert!(decode(&buf, usize::MAX, FrameFormat::V2).is_err());
            }
        }
    }
}
