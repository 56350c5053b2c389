//! What can go wrong in the runtime, sorted by what the loop does about it.
//!
//! Every failure has one of three [`ErrorKind`]s, as quickwit separates them:
//! - *retryable*: the broker, the registry or the disk may recover; the loop
//!   backs off and tries again, and no record is judged by it;
//! - *poison*: this one record can never be processed; it becomes a dead
//!   letter with a reason code and the loop goes on;
//! - *fatal*: configuration, a corrupted store or a bug; the processor exits
//!   with the documented status and a restart resumes from its checkpoint.

use std::net::SocketAddr;

use crate::kafka::KafkaError;
use crate::lifecycle::ExitStatus;
use crate::schema::SchemaError;
use crate::state::StateError;
use crate::topology::TopologyError;

/// A boxed error source, kept for its message chain.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the loop does about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Back off and retry; nothing is dead-lettered because of it.
    Retryable,
    /// The record is bad: dead-letter it with a reason and go on.
    Poison,
    /// Stop: continuing would be unsafe or cannot succeed.
    Fatal,
}

/// A failure that stops the processor (it restarts from its last checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// An output did not fit its schema (a bug in the processor).
    #[error(transparent)]
    Encode(#[from] SchemaError),
    /// Processor logic could not go on: an encoding bug, an unwritable file.
    #[error("{context}: {source}")]
    Fatal {
        /// What the processor was doing.
        context: &'static str,
        /// Why it failed.
        source: BoxError,
    },
}

impl ProcessError {
    /// A fatal failure while doing `context`.
    pub fn fatal(context: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Fatal {
            context,
            source: source.into(),
        }
    }
}

/// A processor could not start. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration or topology problem.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Processor missing from topology.yaml, or similar: an operator must
    /// change something (exit 78).
    #[error("{0}")]
    Misconfigured(String),
    /// Something the processor needs at start is down or unreachable (a
    /// database, a topic that cannot be read): starting again later may
    /// succeed (exit 69).
    #[error("{0}")]
    Unavailable(String),
    /// Declared topics do not exist on the broker.
    #[error("refusing to start: topics missing on the broker: {} (run `trellis topology apply`)", .0.join(", "))]
    MissingTopics(Vec<String>),
    /// The state store was built from another cluster's log: its positions
    /// mean nothing on this broker.
    #[error(
        "refusing to start: state store {dir} was built from the log of Kafka cluster `{stored}`, but the broker belongs to cluster `{actual}`; delete the directory (or start with --rebuild) to rebuild it by replay"
    )]
    ForeignStore {
        /// The store directory.
        dir: String,
        /// Cluster id recorded in the store.
        stored: String,
        /// Cluster id the broker reports.
        actual: String,
    },
    /// The state store was written in another state format than this
    /// build reads (`Build::STATE_FORMAT`): read as it is, it would be
    /// misread.
    #[error(
        "refusing to start: state store {dir} is in state format {found}, but this build reads format {reads}; start with --rebuild to rebuild it by replay in the new format"
    )]
    StoreFormat {
        /// The store directory.
        dir: String,
        /// The format recorded in the store (1 if none was).
        found: u32,
        /// The format this build reads.
        reads: u32,
    },
    /// Broker unreachable or refused.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// State store unusable.
    #[error(transparent)]
    State(#[from] StateError),
    /// Registry unreachable or schema refused.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Metrics endpoint could not bind.
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The loop stopped on a failure; a restart resumes from the last checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A broker call failed in a way retrying cannot mend.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The consumer group fenced this instance: another joined with the
    /// same `kafka.instance_id`.
    #[error(
        "fenced by the consumer group: {0}. Each instance needs its own kafka.instance_id; this one stops"
    )]
    Fenced(String),
    /// The consumer group member stopped unexpectedly.
    #[error("the consumer group member stopped")]
    MembershipLost,
    /// The processor reported a fatal error.
    #[error("processor: {0}")]
    Processor(#[from] ProcessError),
    /// Encoding a record failed (a schema/type mismatch: a bug).
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A record could not be produced and retrying cannot help.
    #[error(transparent)]
    Produce(#[from] crate::producer::ProduceError),
    /// A processor decoded a record whose writer schema the runtime had
    /// not fetched: a runtime bug, never a verdict on the record.
    #[error("decoding without a fetched writer schema: {0}")]
    Decode(#[from] crate::schema::DecodeError),
    /// The processor dead-lettered a record but does not declare `dlq`.
    #[error(
        "processor `{0}` dead-lettered a record but does not declare `dlq` as an output in topology.yaml"
    )]
    NoDeadLetterTopic(&'static str),
    /// The processor emitted to a topic topology.yaml does not list among
    /// its outputs: a bug the runtime refuses to let through.
    #[error(
        "processor `{processor}` emitted to `{topic}`, which topology.yaml does not list among its outputs"
    )]
    UndeclaredOutput {
        /// The processor.
        processor: &'static str,
        /// The topic it tried to write.
        topic: String,
    },
}

/// Why a processor stopped with a failure: at start or while running.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// It could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// It stopped while running.
    #[error(transparent)]
    Run(#[from] RunError),
}

impl Failure {
    /// The exit status this failure maps to.
    pub fn status(&self) -> ExitStatus {
        match self {
            Failure::Start(
                StartError::Kafka(_)
                | StartError::Unavailable(_)
                | StartError::Schema(SchemaError::Registry(_)),
            ) => ExitStatus::Unavailable,
            // Restarting a fenced instance would fence the other one back.
            Failure::Start(_) | Failure::Run(RunError::Fenced(_)) => ExitStatus::Misconfigured,
            Failure::Run(_) => ExitStatus::Failure,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shut down cleanly after committing the last batch.
    Success,
    /// The shutdown deadline passed before the last batch committed; the
    /// next start replays it.
    ForcedShutdown,
}
