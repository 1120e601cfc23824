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

/// The request id of an idempotency key, or why the key is refused. A key
/// is 1 to 255 visible ASCII characters (what fits an HTTP header as is).
///
/// The id is the key's 128-bit FNV-1a hash: distinct keys of honest
/// clients do not collide in practice (one pair in 2^64 keys). It is not a
/// cryptographic hash, and needs not be: a client that can choose a key can
/// already write any key and value, so colliding with another client's key
/// gains it nothing it could not do directly.
pub fn request_id(key: &[u8]) -> Result<RequestId, String> {
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
    Ok(RequestId::from(fnv1a_128(key)))
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

    #[test]
    fn a_key_maps_to_one_id_and_different_keys_to_different_ids() {
        let a = request_id(b"order-1").unwrap();
        assert_eq!(a, request_id(b"order-1").unwrap());
        assert_ne!(a, request_id(b"order-2").unwrap());
        // The FNV-1a 128 reference value for "a".
        assert_eq!(fnv1a_128(b"a"), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn keys_that_do_not_fit_a_header_are_refused_with_the_reason() {
        assert!(request_id(b"").unwrap_err().contains("1 to 255"));
        assert!(request_id(&[b'k'; 256]).unwrap_err().contains("256 bytes"));
        assert!(request_id(b"a b").unwrap_err().contains("0x20"));
        assert!(request_id(&[b'k'; 255]).is_ok());
    }

    #[test]
    fn new_keys_are_distinct_and_valid() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert!(request_id(a.as_bytes()).is_ok());
    }
}
