//! Dead letters: what any processor rejects, with a reason code and the
//! original bytes, on the `dlq` topic (schemas/dead_letter.avsc).
//!
//! A dead letter's id is its input's coordinates (`topic/partition/offset`),
//! so reprocessing the same input produces the same dead letter and
//! consumers of `dlq` drop the repeat by id.

use serde::{Deserialize, Serialize};

/// One Kafka header of the original record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalHeader {
    /// Header name.
    pub key: String,
    /// Header value, as sent.
    #[serde(with = "apache_avro::serde::bytes")]
    pub value: Vec<u8>,
}

/// A rejected input (schemas/dead_letter.avsc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Stable id: `<source_topic>/<source_partition>/<source_offset>`.
    pub id: String,
    /// Machine-readable reason code, e.g. `MALFORMED_JSON`.
    pub reason: String,
    /// What was wrong, naming fields but never quoting their values.
    pub detail: String,
    /// The processor that rejected it.
    pub processor: String,
    /// Tenant, when it could be established.
    pub tenant_id: Option<String>,
    /// Where the original came from.
    pub source_topic: String,
    /// Partition of the original.
    pub source_partition: i32,
    /// Offset of the original.
    pub source_offset: i64,
    /// Timestamp of the original record (ms since the epoch).
    pub source_timestamp: Option<i64>,
    /// Original key bytes.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_key: Option<Vec<u8>>,
    /// Original value bytes.
    #[serde(with = "apache_avro::serde::bytes_opt")]
    pub original_value: Option<Vec<u8>>,
    /// Original headers.
    pub original_headers: Vec<OriginalHeader>,
    /// True when the original did not fit the broker's message limit and
    /// `original_value` holds a prefix of it.
    #[serde(default)]
    pub truncated: bool,
    /// Length of the whole original value, when truncated.
    #[serde(default)]
    pub original_value_length: Option<i64>,
    /// Hex SHA-256 of the whole original value, when truncated.
    #[serde(default)]
    pub original_value_sha256: Option<String>,
}

impl DeadLetter {
    /// The stable id of a dead letter for the input at these coordinates.
    pub fn id_for(topic: &str, partition: i32, offset: i64) -> String {
        format!("{topic}/{partition}/{offset}")
    }
}
