//! The engine's commands as WAL payloads:
//! `| tag: u8 | key_len: u32 LE | key | value |` (value only for put).

use bytes::Bytes;

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
    fn garbage_is_refused_not_panicked_on() {
        assert!(Command::decode(&[]).is_err());
        assert!(Command::decode(&[1, 255, 255, 255, 255]).is_err());
        assert!(Command::decode(&[9, 0, 0, 0, 0]).is_err());
    }
}
