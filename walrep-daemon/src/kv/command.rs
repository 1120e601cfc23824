//! The engine's commands as WAL payloads:
//! `| tag: u8 | key_len: u32 LE | key | value |` (value only for put).

use bytes::{BufMut, Bytes, BytesMut};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put { key: Vec<u8>, value: Bytes },
    Delete { key: Vec<u8> },
}

const PUT: u8 = 1;
const DELETE: u8 = 2;

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, key, value): (u8, &[u8], &[u8]) = match self {
            Command::Put { key, value } => (PUT, key, value),
            Command::Delete { key } => (DELETE, key, &[]),
        };
        let mut out = Vec::with_capacity(5 + key.len() + value.len());
        out.push(tag);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out
    }

    /// Bytes a put of `key` takes before its value.
    pub fn put_header_len(key: &[u8]) -> usize {
        5 + key.len()
    }

    /// Writes a put's encoding up to its value: with the value's bytes
    /// appended, `out` holds exactly `Command::Put { key, value }.encode()`.
    /// Lets a caller read a large value straight into the record.
    pub fn put_header(key: &[u8], out: &mut BytesMut) {
        out.put_u8(PUT);
        out.put_u32_le(key.len() as u32);
        out.put_slice(key);
    }

    /// Decodes the commands of a batch of records, all or none: the first
    /// that does not decode fails the batch, naming its LSN (so an engine
    /// applies none of a batch with a bad record in it).
    pub fn decode_batch(
        records: &[(walrep::Lsn, &[u8])],
    ) -> Result<Vec<Command>, walrep::StateMachineError> {
        records
            .iter()
            .map(|(lsn, payload)| {
                Command::decode(payload)
                    .map_err(|e| walrep::StateMachineError::with_source(format!("record {lsn}"), e))
            })
            .collect()
    }

    /// The key a command's encoding names, without decoding (or copying)
    /// the rest; `None` if the header is malformed.
    pub fn key_of(bytes: &[u8]) -> Option<&[u8]> {
        let key_len = u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize;
        bytes.get(5..5usize.checked_add(key_len)?)
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        let (&tag, rest) = bytes.split_first().ok_or("empty command")?;
        if rest.len() < 4 {
            return Err("command shorter than its header".into());
        }
        let key_len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        let rest = &rest[4..];
        if key_len > rest.len() {
            return Err(format!(
                "key length {key_len} exceeds the {} bytes left",
                rest.len()
            ));
        }
        let (key, value) = rest.split_at(key_len);
        match tag {
            PUT => Ok(Command::Put {
                key: key.to_vec(),
                value: Bytes::copy_from_slice(value),
            }),
            DELETE if value.is_empty() => Ok(Command::Delete { key: key.to_vec() }),
            DELETE => Err("delete command carries a value".into()),
            other => Err(format!("unknown command tag {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_read_without_decoding() {
        let put = Command::Put {
            key: b"key".to_vec(),
            value: Bytes::from_static(b"value"),
        };
        assert_eq!(Command::key_of(&put.encode()), Some(&b"key"[..]));
        let del = Command::Delete { key: Vec::new() }.encode();
        assert_eq!(Command::key_of(&del), Some(&b""[..]));
        assert_eq!(Command::key_of(&[PUT, 9, 0, 0, 0, b'k']), None);
        assert_eq!(Command::key_of(&[PUT, 1]), None);
    }

    #[test]
    fn commands_round_trip() {
        for cmd in [
            Command::Put {
                key: b"k".to_vec(),
                value: Bytes::from_static(b"v"),
            },
            Command::Put {
                key: Vec::new(),
                value: Bytes::new(),
            },
            Command::Delete { key: b"k".to_vec() },
        ] {
            assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
        }
    }

    #[test]
    fn a_put_header_followed_by_the_value_is_the_puts_encoding() {
        let cmd = Command::Put {
            key: b"key".to_vec(),
            value: Bytes::from_static(b"value"),
        };
        let mut out = BytesMut::new();
        Command::put_header(b"key", &mut out);
        assert_eq!(out.len(), Command::put_header_len(b"key"));
        out.put_slice(b"value");
        assert_eq!(out, cmd.encode());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[1, 255, 255, 255, 255]).is_err());
        assert!(Command::decode(&[9, 0, 0, 0, 0]).is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use walrep::testing::largest_allocation;

        fn any_command() -> impl Strategy<Value = Command> {
            let bytes = || prop::collection::vec(any::<u8>(), 0..40);
            prop_oneof![
                (bytes(), bytes()).prop_map(|(key, value)| Command::Put {
                    key,
                    value: Bytes::from(value),
                }),
                bytes().prop_map(|key| Command::Delete { key }),
            ]
        }

        /// Bytes near a command: a tag, a key length that may lie, bytes.
        fn near_command() -> impl Strategy<Value = Vec<u8>> {
            (
                prop_oneof![4 => 1u8..3, 1 => any::<u8>()],
                prop_oneof![3 => 0u32..50, 1 => any::<u32>()],
                prop::collection::vec(any::<u8>(), 0..60),
            )
                .prop_map(|(tag, len, rest)| {
                    let mut b = vec![tag];
                    b.extend_from_slice(&len.to_le_bytes());
                    b.extend(rest);
                    b
                })
        }

        fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
            let (result, allocated) = largest_allocation(|| Command::decode(bytes));
            // Error messages allocate a little; a key length must not.
            prop_assert!(allocated <= bytes.len() + 128, "allocated {allocated}");
            match result {
                // Exactly one encoding per command.
                Ok(cmd) => prop_assert_eq!(cmd.encode(), bytes),
                Err(e) => prop_assert!(!e.is_empty()),
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn any_command_round_trips(cmd in any_command()) {
                prop_assert_eq!(Command::decode(&cmd.encode()), Ok(cmd));
            }

            #[test]
            fn arbitrary_bytes_give_a_command_or_an_error(
                bytes in prop::collection::vec(any::<u8>(), 0..80),
            ) {
                check(&bytes)?;
            }

            #[test]
            fn nearly_valid_bytes_give_a_command_or_an_error(bytes in near_command()) {
                check(&bytes)?;
            }
        }
    }
}

/// Encoded commands for the engines' unit tests.
#[cfg(test)]
pub(crate) mod encoded {
    use super::Command;
    use bytes::Bytes;

    pub(crate) fn put(k: &str, v: &str) -> Vec<u8> {
        Command::Put {
            key: k.as_bytes().to_vec(),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
        .encode()
    }

    pub(crate) fn del(k: &str) -> Vec<u8> {
        Command::Delete {
            key: k.as_bytes().to_vec(),
        }
        .encode()
    }
}
