//! What every Trellis processor stands on.
//!
//! A processor binary parses its command line, loads a [`Config`], loads its
//! secrets, calls [`Runtime::start`] and hands its [`Processor`] to
//! [`Runtime::run`]. Everything that touches offsets, commits and state
//! checkpoints lives here, so the effectively-once argument is made once
//! (see [`pipeline`]).
//!
//! # Layout
//! - [`config`]: YAML + environment configuration, `deny_unknown_fields`.
//! - [`secret`]: secrets from the environment, validated, never printed.
//! - [`topology`]: topology.yaml and its rules.
//! - [`schema`]: Avro schemas, personal-data tags, the Confluent wire format.
//! - [`state`]: the sled store that keeps state and input positions together.
//! - [`pipeline`]: the consume → process → produce loop and restore by replay.
//! - [`kafka`]: client configs, topic checks, topology provisioning.
//! - [`metrics`]: Prometheus families and the `/metrics` endpoint.
//! - [`lifecycle`]: tracing, signals, exit statuses.
//! - [`ticker`]: timed decisions as records in the log.

pub mod config;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod pipeline;
pub mod schema;
pub mod secret;
pub mod state;
pub mod ticker;
pub mod topology;

pub use config::Config;
pub use pipeline::{
    Emitter, Exit, Failure, InputRecord, OutputRecord, ProcessError, Processor, Runtime,
};
pub use state::{StateStore, StateTxn};
