//! The frame of one record, the same in every segment file and in the
//! `rewound/` files:
//!
//! ```text
//! | payload_len: u32 LE | lsn: u64 LE | epoch: u64 LE | crc32c: u32 LE | payload |
//! ```
//!
//! The CRC covers lsn, epoch and payload (`Record::checksum`), so a frame
//! moved to the wrong place, or a length that points into another record,
//! fails the check.

use crate::types::{Epoch, Lsn, Record};
use bytes::{BufMut, Bytes};

/// Bytes of a frame before its payload.
pub const HEADER_LEN: usize = 4 + 8 + 8 + 4;

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

/// Bytes `record` takes as a frame: header and payload.
pub fn encoded_len(record: &Record) -> usize {
    HEADER_LEN + record.payload.len()
}

pub fn encode(record: &Record, out: &mut impl BufMut) {
    out.put_u32_le(record.payload.len() as u32);
    out.put_u64_le(record.lsn.0);
    out.put_u64_le(record.epoch.0);
    out.put_u32_le(record.checksum());
    out.put_slice(&record.payload);
}

/// Decodes the frame at the start of `buf`, returning the record and the
/// bytes it used. Never allocates more than `max_payload` for the payload:
/// a corrupt length is refused before anything is read.
pub fn decode(buf: &[u8], max_payload: usize) -> Result<(Record, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Incomplete {
            needed: HEADER_LEN,
            available: buf.len(),
        });
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize;
    if len > max_payload {
        return Err(FrameError::TooLong {
            len,
            limit: max_payload,
        });
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total,
            available: buf.len(),
        });
    }
    let lsn = Lsn(u64::from_le_bytes(buf[4..12].try_into().unwrap()));
    let epoch = Epoch(u64::from_le_bytes(buf[12..20].try_into().unwrap()));
    let stored = u32::from_le_bytes(buf[20..24].try_into().unwrap());
    let record = Record {
        lsn,
        epoch,
        payload: Bytes::copy_from_slice(&buf[HEADER_LEN..total]),
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
        Record {
            lsn: Lsn(lsn),
            epoch: Epoch(3),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_frame_round_trips() {
        let r = record(7, b"hello");
        let mut buf = Vec::new();
        encode(&r, &mut buf);
        assert_eq!(buf.len(), encoded_len(&r));
        assert_eq!(decode(&buf, 1024).unwrap(), (r, buf.len()));
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let r = record(9, b"payload bytes");
        let mut buf = Vec::new();
        encode(&r, &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&bad, 1024).is_err(),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn a_cut_frame_is_incomplete() {
        let mut buf = Vec::new();
        encode(&record(1, b"abcdef"), &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(
                decode(&buf[..cut], 1024),
                Err(FrameError::Incomplete { .. })
            ));
        }
    }

    #[test]
    fn a_huge_length_is_refused_before_reading() {
        let mut buf = vec![0xff; HEADER_LEN];
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&buf, 1 << 20),
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
                prop::collection::vec(any::<u8>(), 0..300),
            )
                .prop_map(|(lsn, epoch, payload)| Record {
                    lsn: Lsn(lsn),
                    epoch: Epoch(epoch),
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
                let (result, allocated) = largest_allocation(|| decode(&buf, max));
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
                        prop_assert_eq!(len, u32::from_le_bytes(buf[..4].try_into().unwrap()) as usize);
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
                prop_assume!(len as usize > max);
                let mut buf = len.to_le_bytes().to_vec();
                buf.extend(rest);
                let (result, allocated) = largest_allocation(|| decode(&buf, max));
                prop_assert_eq!(result, Err(FrameError::TooLong { len: len as usize, limit: max }));
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
                prop_assert_eq!(decode(&buf, r.payload.len()), Ok((r, len)));
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
                prop_assert!(decode(&buf, usize::MAX).is_err());
            }
        }
    }
}
