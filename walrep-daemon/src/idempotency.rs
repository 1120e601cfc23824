//! Idempotency keys: how an HTTP client names one logical write so that a
//! retry of it (after a timeout, a dropped connection, a failover) is
//! applied once. The key travels in the `Idempotency-Key` header; the node
//! maps it to the library's `RequestId` by hashing, and the record carries
//! that id to the standby, so the next primary recognises the retry too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use walrep::RequestId;

/// The header a write's idempotency key comes in.
pub const HEADER: &str = "idempotency-key";

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// The request id of the write `cmd` (an encoded command) under the
/// `Idempotency-Key` in `headers`: none without one, or why it is refused.
/// Refused: the header twice (which one the client meant is unknown), a
/// key that is not 1 to 255 visible ASCII characters, and any key when
/// the node does not de-duplicate (`deduplicates` false: the key would be
/// taken and ignored, and a retry applied twice).
pub fn request_id_of(
    headers: &axum::http::HeaderMap,
    cmd: &[u8],
    deduplicates: bool,
) -> Result<Option<RequestId>, String> {
    let mut keys = headers.get_all(HEADER).iter();
    let Some(key) = keys.next() else {
        return Ok(None);
    };
    if keys.next().is_some() {
        return Err(
            "the request has more than one Idempotency-Key header; send exactly one".into(),
        );
    }
    if !deduplicates {
        return Err(
            "this node does not de-duplicate retries (max_request_ids = 0), so an \
             Idempotency-Key would be ignored; send the write without one, or set \
             max_request_ids above 0"
                .into(),
        );
    }
    request_id(key.as_bytes(), cmd).map(Some)
}

/// The request id of an idempotency key for the write `cmd` (an encoded
/// command), or why the key is refused. A key is 1 to 255 visible ASCII
/// characters (what fits an HTTP header as is).
///
/// The id is the 128-bit FNV-1a hash of the key, then the command's kind
/// and its key (everything of `cmd` before a put's value): the same
/// Idempotency-Key sent again for another key or method is another write,
/// written, not taken for the first one and silently dropped. (The value
/// is not hashed: a retry carries the same one, and a value changed under
/// one key and path is the client's mistake, answered with the first.)
/// Distinct keys of honest clients do not collide in practice (one pair
/// in 2^64 keys). It is not a cryptographic hash, and needs not be: a
/// client that can choose a key can already write any key and value, so
/// colliding with another client's key gains it nothing it could not do
/// directly.
pub fn request_id(key: &[u8], cmd: &[u8]) -> Result<RequestId, String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the Idempotency-Key header has {} bytes; it must have 1 to {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if let Some(b) = key.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(format!(
            "the Idempotency-Key header holds the byte {b:#04x}; use visible ASCII characters only (e.g. a UUID)"
        ));
    }
    let target_len = crate::kv::command::Command::key_of(cmd).map_or(cmd.len(), |k| {
        crate::kv::command::Command::put_header_len(k)
    });
    // A visible-ASCII key never holds 0xff: the two parts cannot run
    // into each other.
    let scoped: Vec<u8> = [key, &[0xff], &cmd[..target_len]].concat();
    Ok(RequestId::from(fnv1a_128(&scoped)))
}

fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    bytes.iter().fold(OFFSET_BASIS, |hash, &b| {
        (hash ^ b as u128).wrapping_mul(PRIME)
    })
}

/// A fresh key for one logical write of this process: the process id,
/// the time it started (ns) and a counter, so no two writes of any client
/// process share one. Reuse it for every retry of that write.
pub fn new_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = *STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("walrep-{}-{started:x}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kv::command::encoded::{del, put};

    #[test]
    fn a_key_maps_to_one_id_and_different_keys_to_different_ids() {
        let a = request_id(b"order-1", &put("k", "v")).unwrap();
        assert_eq!(a, request_id(b"order-1", &put("k", "v")).unwrap());
        assert_ne!(a, request_id(b"order-2", &put("k", "v")).unwrap());
        // The FNV-1a 128 reference value for "a".
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    /// The same Idempotency-Key sent for another key or another method is
    /// another write (a client reusing a key by mistake gets its write
    /// done, not the first one's answer); the same write again, with any
    /// value, is the retry.
    #[test]
    fn an_id_names_the_key_and_the_write_it_came_with() {
        let id = |cmd: &[u8]| request_id(b"order-1", cmd).unwrap();
        let first = id(&put("a", "1"));
        assert_eq!(first, id(&put("a", "1")), "the retry");
        assert_eq!(first, id(&put("a", "2")), "the value is not part of it");
        assert_ne!(first, id(&put("b", "1")), "another key");
        assert_ne!(first, id(&put("ab", "")), "the key's end is part of it");
        assert_ne!(first, id(&del("a")), "another method");
    }

    #[test]
    fn keys_that_do_not_fit_a_header_are_refused_with_the_reason() {
        let cmd = put("k", "v");
        assert!(request_id(b"", &cmd).unwrap_err().contains("1 to 255"));
        assert!(
            request_id(&[b'k'; 256], &cmd)
                .unwrap_err()
                .contains("256 bytes")
        );
        assert!(request_id(b"a b", &cmd).unwrap_err().contains("0x20"));
        assert!(request_id(&[b'k'; 255], &cmd).is_ok());
    }

    /// A header sent twice, or any key to a node that does not
    /// de-duplicate, is refused with the reason; no header, no id.
    #[test]
    fn a_second_key_or_a_node_without_deduplication_refuses_the_write() {
        let cmd = put("k", "v");
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(request_id_of(&headers, &cmd, true), Ok(None));
        headers.append(HEADER, "order-1".parse().unwrap());
        assert!(request_id_of(&headers, &cmd, true).unwrap().is_some());
        let off = request_id_of(&headers, &cmd, false).unwrap_err();
        assert!(off.contains("max_request_ids = 0"), "{off}");
        headers.append(HEADER, "order-2".parse().unwrap());
        let twice = request_id_of(&headers, &cmd, true).unwrap_err();
        assert!(twice.contains("more than one"), "{twice}");
    }

    #[test]
    fn new_keys_are_distinct_and_valid() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(request_id(a.as_bytes(), &put("k", "v")).is_ok());
    }
}
