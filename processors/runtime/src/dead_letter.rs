//! Dead letters that always fit: a rejected record may be larger than any
//! output the broker accepts (Kafka clusters allow bigger messages on some
//! topics than on others), and a dead letter that cannot be written would
//! stop the processor on that record for good.
//!
//! A dead letter keeps the original bytes when they fit the producer's
//! message limit. Otherwise it keeps a bounded prefix of the value, the
//! whole value's length and SHA-256 (so it can be matched to the record
//! still on its source topic), cut key and headers, and says `truncated`.

use sha2::{Digest, Sha256};
use trellis_records::DeadLetter;

/// At most this much of an oversized value is kept: enough to see what it
/// was, small enough for any broker's default limit.
pub const PREFIX_BYTES: usize = 64 * 1024;
/// At most this much of an oversized record's key is kept.
pub const KEY_BYTES: usize = 1024;
/// At most this much of each header value of an oversized record is kept.
pub const HEADER_VALUE_BYTES: usize = 256;
/// At most this many headers of an oversized record are kept.
pub const HEADERS: usize = 64;
/// Room for the dead letter's own fields (reason, detail, ids) and headers.
const ENVELOPE_BYTES: usize = 8 * 1024;

/// Bytes the dead letter's originals take (value, key, headers).
fn original_bytes(letter: &DeadLetter) -> usize {
    letter.original_value.as_ref().map_or(0, Vec::len)
        + 2 * letter.original_key.as_ref().map_or(0, Vec::len)
        + letter
            .original_headers
            .iter()
            .map(|h| h.key.len() + h.value.len())
            .sum::<usize>()
}

/// `letter`, cut down to fit a `limit`-byte message if it would not.
pub fn fit(mut letter: DeadLetter, limit: usize) -> DeadLetter {
    let detail = letter.detail.len() + letter.id.len() + letter.source_topic.len();
    if original_bytes(&letter) + detail + ENVELOPE_BYTES <= limit {
        return letter;
    }
    let budget = limit.saturating_sub(ENVELOPE_BYTES + detail);
    let prefix = PREFIX_BYTES.min(budget / 2);
    if let Some(value) = letter.original_value.as_mut() {
        letter.original_value_length = Some(value.len() as i64);
        letter.original_value_sha256 = Some(hex::encode(Sha256::digest(&value[..])));
        value.truncate(prefix);
    }
    if let Some(key) = letter.original_key.as_mut() {
        key.truncate(KEY_BYTES.min(budget / 8));
    }
    letter.original_headers.truncate(HEADERS);
    for header in &mut letter.original_headers {
        header.key = cut_str(&header.key, HEADER_VALUE_BYTES);
        header.value.truncate(HEADER_VALUE_BYTES);
    }
    letter.truncated = true;
    letter
}

fn cut_str(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_records::OriginalHeader;

    fn letter(value: Vec<u8>) -> DeadLetter {
        DeadLetter {
            id: "ingest.xapi/0/7".into(),
            reason: "TOO_LARGE".into(),
            detail: "2000000 bytes, over the 65536-byte limit".into(),
            processor: "collector".into(),
            tenant_id: None,
            source_topic: "ingest.xapi".into(),
            source_partition: 0,
            source_offset: 7,
            source_timestamp: None,
            original_key: Some(vec![b'k'; 10_000]),
            original_value: Some(value),
            original_headers: vec![OriginalHeader {
                key: "h".into(),
                value: vec![1; 10_000],
            }],
            truncated: false,
            original_value_length: None,
            original_value_sha256: None,
        }
    }

    #[test]
    fn a_letter_that_fits_is_kept_whole() {
        let small = letter(vec![7; 1000]);
        assert_eq!(fit(small.clone(), 1_000_000), small);
    }

    #[test]
    fn an_oversized_original_keeps_a_prefix_its_length_and_its_hash() {
        let value: Vec<u8> = (0..2_000_000u32).map(|i| i as u8).collect();
        let fitted = fit(letter(value.clone()), 1_000_000);
        assert!(fitted.truncated);
        let kept = fitted.original_value.as_ref().unwrap();
        assert_eq!(kept.len(), PREFIX_BYTES);
        assert_eq!(&value[..PREFIX_BYTES], &kept[..]);
        assert_eq!(fitted.original_value_length, Some(2_000_000));
        assert_eq!(
            fitted.original_value_sha256.as_deref(),
            Some(hex::encode(Sha256::digest(&value)).as_str())
        );
        assert!(original_bytes(&fitted) + ENVELOPE_BYTES < 1_000_000);
        assert_eq!(fitted.original_key.as_ref().unwrap().len(), KEY_BYTES);
        assert_eq!(fitted.original_headers[0].value.len(), HEADER_VALUE_BYTES);
    }

    #[test]
    fn a_small_limit_shrinks_the_prefix_to_fit() {
        let fitted = fit(letter(vec![1; 200_000]), 50_000);
        assert!(fitted.truncated);
        assert!(original_bytes(&fitted) + ENVELOPE_BYTES <= 50_000);
    }
}
