//! The `trellis` command-line tool, as a library so tests drive the same code.
//!
//! # Layout
//! - [`provision`]: `topology apply`: topics through the admin API, schemas
//!   into the registry with BACKWARD compatibility.
//! - [`demo`]: the demo data set and its manifest.
//! - [`inspect`]: what the topics hold: counts, distinct ids, tenants, DLQ reasons.
//! - [`bench`]: throughput against a raw rdkafka passthrough.

pub mod audit;
pub mod bench;
pub mod demo;
pub mod erasure;
pub mod gdpr;
pub mod inspect;
pub mod measure;
pub mod provision;
pub mod warehouse_bench;

/// `ms` since the epoch as RFC 3339 (UTC), or the number if out of range.
pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}
