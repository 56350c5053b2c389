//! What every Trellis processor stands on.
//!
//! A processor binary parses its command line, loads a [`Config`], loads its
//! secrets, calls [`Runtime::start`] and hands its [`Processor`] to
//! [`Runtime::run`]. Everything that touches offsets, commits and state
//! checkpoints lives here, so the effectively-once argument is made once
//! (see [`pipeline`]).
//!
//! # Layout
//! - [`build`]: how a processor is made, the one constructor everything calls.
//! - [`config`]: YAML + environment configuration, `deny_unknown_fields`.
//! - [`secret`]: secrets from the environment, validated, never printed.
//! - [`topology`]: topology.yaml and its rules.
//! - [`schema`]: Avro schemas, personal-data tags, the Confluent wire format.
//! - [`state`]: the sled store that keeps state and input positions together.
//! - [`processor`]: the trait a processor implements.
//! - [`record`]: input records as a processor sees them.
//! - [`emitter`]: what a processor emits for one record.
//! - [`pipeline`]: the consume → process → produce loop; its delivery semantics.
//! - `batch`: one batch of records through a processor, as the live loop
//!   and the offline runner both run it.
//! - [`replay`]: the restore-by-replay plan and its progress report.
//! - [`producer`]: the one way to produce a record (headers, limits, retries).
//! - [`dead_letter`]: dead letters that always fit the broker's limit.
//! - [`backoff`]: retries of faults that may mend.
//! - [`error`]: error kinds (retryable, poison, fatal) and exit mapping.
//! - [`failpoint`]: crash points at commit boundaries (debug builds only).
//! - [`files`]: owner-only files (access exports).
//! - [`offline`]: a processor over in-memory records, through the live loop's
//!   batches (tests, benchmarks).
//! - [`participant`]: answering GDPR saga commands once (receipts, acks).
//! - [`sink`]: exactly once into a store outside Kafka (offsets, receipts
//!   and erased subjects kept in the store's transaction).
//! - [`kafka`]: client configs, topic checks, topology provisioning.
//! - [`metrics`]: Prometheus families and the `/metrics` endpoint.
//! - [`lifecycle`]: tracing, signals, exit statuses.
//! - [`ticker`]: timed decisions as records in the log.

pub mod backoff;
mod batch;
pub mod build;
pub mod config;
pub mod dead_letter;
pub mod emitter;
pub mod error;
pub mod failpoint;
pub mod files;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod offline;
pub mod participant;
pub mod pipeline;
pub mod processor;
pub mod producer;
pub mod record;
pub mod replay;
pub mod schema;
pub mod secret;
pub mod sink;
pub mod state;
pub mod ticker;
pub mod topology;
pub mod working_set;

pub use config::Config;
pub use lifecycle::Shutdown;
pub use pipeline::{
    Emitter, Exit, Failure, InputRecord, OutputRecord, ProcessError, Processor, Runtime,
};
pub use state::{StateStore, StateTxn};
