//! The measurements behind `trellis-bench` (docs/performance.md).
//!
//! # Layout
//! - [`bench`]: a processor in-process against a raw rdkafka passthrough
//!   over the same records; rebuild speed from a fetched log.
//! - [`warehouse_bench`]: the warehouse sink against plain `COPY`, and its lag.
//! - [`measure`]: Merkle and xAPI costs per record, erasure latency.

pub mod bench;
pub mod measure;
pub mod warehouse_bench;
