//! What Trellis's tools and tests share, and the only library besides the
//! bench that links every processor: the `trellis` tool is thin dispatch
//! over it, the bench (`trellis-bench`) and the broker-backed tests use it.
//!
//! # Layout
//! - [`args`]: command-line arguments the tools share.
//! - [`provision`]: `topology apply`: topics through the admin API, schemas
//!   into the registry with BACKWARD compatibility.
//! - [`registry`]: the local schema registry.
//! - [`demo`]: the demo data set and its manifest.
//! - [`inspect`]: what the topics hold: counts, distinct ids, tenants, DLQ reasons.
//! - [`gdpr`]: filing data-subject requests and reading their answers.
//! - [`erasure`]: the erasure verifier and its signed report.
//! - [`audit`]: verifying the audited logs, proofs, the witness.
//! - [`processors`]: every processor binary's secrets, paths, config and
//!   metrics address, for ops/ (`trellis config`).

pub mod args;
pub mod audit;
pub mod demo;
pub mod erasure;
pub mod gdpr;
pub mod inspect;
pub mod processors;
pub mod provision;
pub mod stack;

/// The local Confluent-compatible schema registry.
pub mod registry {
    pub use trellis_registry::serve;
}
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
