//! The frame of the log's small files (`meta`, `snapshot-ids`): eight
//! magic bytes, a body, and a CRC32C of everything before it, little-endian.

/// Checks such a file, `what` naming it in the error, and returns
/// everything before the CRC (the magic included), at least `min_body`
/// bytes after the magic. The error: the offset of the damage and what it
/// is.
pub(super) fn unseal<'a>(
    buf: &'a [u8],
    magic: &[u8; 8],
    min_body: usize,
    what: &str,
) -> Result<&'a [u8], (usize, String)> {
    if buf.len() < magic.len() || buf[..magic.len()] != magic[..] {
        return Err((0, format!("not a walrep {what} (bad magic bytes)")));
    }
    if buf.len() < magic.len() + min_body + 4 {
        return Err((0, format!("{what} truncated to {} bytes", buf.len())));
    }
    let body_len = buf.len() - 4;
    let stored = u32::from_le_bytes(buf[body_len..].try_into().unwrap());
    let computed = crc32c::crc32c(&buf[..body_len]);
    if stored != computed {
        return Err((
            body_len,
            format!("{what} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(&buf[..body_len])
}
