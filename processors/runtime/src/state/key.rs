//! State keys, one encoding for every processor: a namespace byte, then
//! each part preceded by a 0x00 separator (`kind ‖ 0 ‖ part ‖ 0 ‖ part …`).
//!
//! Text parts (tenants, ids, topics) hold no 0x00, so a prefix of whole
//! parts ends in a separator ([`prefix`]) and matches exactly the keys
//! under those parts (`a` does not match `ab`). A binary part (a
//! big-endian number) may hold 0x00 and belongs last, or at a fixed width.
//! Keys sort by namespace, then part by part.

/// The key of `parts` in namespace `kind`.
pub fn key<P: AsRef<[u8]>>(kind: u8, parts: &[P]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.as_ref().len() + 1).sum::<usize>();
    let mut key = Vec::with_capacity(len);
    key.push(kind);
    for part in parts {
        key.push(0);
        key.extend_from_slice(part.as_ref());
    }
    key
}

/// The prefix of every key in namespace `kind` whose first parts are
/// `parts` (the key with a trailing separator).
pub fn prefix<P: AsRef<[u8]>>(kind: u8, parts: &[P]) -> Vec<u8> {
    let mut prefix = key(kind, parts);
    prefix.push(0);
    prefix
}

/// The parts of a key whose parts hold no 0x00, after its namespace byte.
pub fn parts(key: &[u8]) -> impl Iterator<Item = &[u8]> {
    key.get(2..).unwrap_or_default().split(|b| *b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_separated_parts_and_prefixes_match_whole_parts() {
        assert_eq!(key(b'r', &["acme", "ann"]), b"r\0acme\0ann");
        assert_eq!(key::<&str>(b't', &[]), b"t");
        assert_eq!(prefix(b'r', &["acme"]), b"r\0acme\0");
        let under = |p: &[u8], k: &[u8]| k.starts_with(p);
        assert!(under(&prefix(b'r', &["acme"]), &key(b'r', &["acme", "x"])));
        assert!(!under(
            &prefix(b'r', &["acme"]),
            &key(b'r', &["acmex", "x"])
        ));
        assert!(!under(&prefix(b'r', &["acme"]), &key(b's', &["acme", "x"])));
        let k = key(b'r', &["acme", "ann", "course"]);
        assert_eq!(
            parts(&k).collect::<Vec<_>>(),
            [&b"acme"[..], b"ann", b"course"]
        );
        // Binary parts: numbers big-endian, so keys sort as the numbers do.
        let n = |i: u64| key(b'n', &[&b"t"[..], &i.to_be_bytes()]);
        assert!(n(255) < n(256) && n(256) < n(1 << 40));
    }
}
