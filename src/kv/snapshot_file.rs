//! The engine's snapshot: the same bytes on the wire (`StateMachine::
//! snapshot`) and on disk (`kv.snapshot`, replaced atomically).
//!
//! `| magic "WKV1" | count: u64 | (key_len u32, key, value_len u32, value)* | crc32c u32 |`
//! On disk the file is prefixed by the snapshot's LSN (u64 LE).

use crate::state_machine::StateMachineError;
use crate::types::Lsn;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 4] = b"WKV1";
const FILE: &str = "kv.snapshot";

fn err(msg: impl Into<String>) -> StateMachineError {
    StateMachineError(msg.into())
}

pub type Map = BTreeMap<Vec<u8>, Bytes>;

pub fn encode_map(map: &Map) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_map(data: &[u8]) -> Result<Map, StateMachineError> {
    if data.len() < 16 || &data[..4] != MAGIC {
        return Err(err(
            "snapshot is not a walrep KV snapshot (bad magic or too short)",
        ));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().unwrap()) {
        return Err(err("snapshot checksum mismatch: the snapshot is corrupt"));
    }
    let count = u64::from_le_bytes(body[4..12].try_into().unwrap());
    let mut rest = &body[12..];
    let mut take = |n: usize| -> Result<&[u8], StateMachineError> {
        if rest.len() < n {
            return Err(err("snapshot ends inside an entry"));
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    let mut map = BTreeMap::new();
    for _ in 0..count {
        let klen = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let key = take(klen)?.to_vec();
        let vlen = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let value = Bytes::copy_from_slice(take(vlen)?);
        map.insert(key, value);
    }
    if !rest.is_empty() {
        return Err(err("snapshot has bytes after its last entry"));
    }
    Ok(map)
}

pub fn store(dir: &Path, lsn: Lsn, data: &[u8]) -> Result<(), StateMachineError> {
    let io = |what: &str, e: std::io::Error| err(format!("{what} in {}: {e}", dir.display()));
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating snapshot", e))?;
    f.write_all(&lsn.0.to_le_bytes())
        .and_then(|_| f.write_all(data))
        .and_then(|_| f.sync_all())
        .map_err(|e| io("writing snapshot", e))?;
    std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| io("renaming snapshot", e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing directory", e))
}

pub fn load(dir: &Path) -> Result<Option<(Lsn, Map)>, StateMachineError> {
    let path = dir.join(FILE);
    let data = match std::fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("reading {}: {e}", path.display()))),
    };
    if data.len() < 8 {
        return Err(err(format!("{} is truncated", path.display())));
    }
    let lsn = Lsn(u64::from_le_bytes(data[..8].try_into().unwrap()));
    let map = decode_map(&data[8..]).map_err(|e| {
        err(format!(
            "{}: {e}; move it aside to rebuild from the WAL or the peer",
            path.display()
        ))
    })?;
    Ok(Some((lsn, map)))
}
