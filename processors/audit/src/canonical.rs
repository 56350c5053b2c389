//! The bytes that get hashed and signed. Every variable-length part is
//! length-prefixed so no two different records share an encoding.

use sha2::{Digest, Sha256};
use trellis_records::Anchor;

use crate::merkle::Hash;

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn put_opt(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => buf.push(0),
        Some(bytes) => {
            buf.push(1);
            put(buf, bytes);
        }
    }
}

/// A record's canonical bytes: topic, partition, offset, timestamp, key,
/// value and headers in order (a header without a value counts as empty).
/// `headers` is called with a sink for each (name, value).
#[allow(clippy::too_many_arguments)]
pub fn record_bytes(
    buf: &mut Vec<u8>,
    topic: &str,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: impl FnOnce(&mut dyn FnMut(&str, &[u8])),
) {
    buf.clear();
    put(buf, topic.as_bytes());
    buf.extend_from_slice(&partition.to_be_bytes());
    buf.extend_from_slice(&offset.to_be_bytes());
    match timestamp {
        None => buf.push(0),
        Some(t) => {
            buf.push(1);
            buf.extend_from_slice(&t.to_be_bytes());
        }
    }
    put_opt(buf, key);
    put_opt(buf, value);
    let count_at = buf.len();
    buf.extend_from_slice(&0u32.to_be_bytes());
    let mut count = 0u32;
    headers(&mut |name, value| {
        put(buf, name.as_bytes());
        put(buf, value);
        count += 1;
    });
    buf[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
}

/// The anchor's canonical bytes without its signature: what is signed.
pub fn anchor_body(anchor: &Anchor) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    put(&mut buf, b"trellis/anchor/v1");
    buf.extend_from_slice(&anchor.sequence.to_be_bytes());
    put(&mut buf, anchor.topic.as_bytes());
    buf.extend_from_slice(&anchor.partition.to_be_bytes());
    buf.extend_from_slice(&anchor.first_offset.to_be_bytes());
    buf.extend_from_slice(&anchor.last_offset.to_be_bytes());
    buf.extend_from_slice(&anchor.tree_size.to_be_bytes());
    put(&mut buf, anchor.root.as_bytes());
    put(&mut buf, anchor.previous_hash.as_bytes());
    buf.extend_from_slice(&(anchor.request_ids.len() as u32).to_be_bytes());
    for id in &anchor.request_ids {
        put(&mut buf, id.as_bytes());
    }
    buf.extend_from_slice(&anchor.anchored_at.to_be_bytes());
    put(&mut buf, anchor.key_id.as_bytes());
    buf
}

/// The anchor's hash (signature included): what the next anchor links to
/// and what an acknowledgement cites.
pub fn anchor_hash(anchor: &Anchor) -> Hash {
    let mut h = Sha256::new();
    h.update(anchor_body(anchor));
    put_hash_input(&mut h, anchor.signature.as_bytes());
    h.finalize().into()
}

fn put_hash_input(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// The previous-hash of a chain's first anchor.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
