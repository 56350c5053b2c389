//! The consume → process → produce loop every processor runs.
//!
//! # Delivery semantics: effectively once, without broker transactions
//!
//! Input is read in batches. For each batch the loop (1) runs the processor on
//! every record, which reads and changes state through a [`StateTxn`] and
//! emits outputs, (2) produces the outputs and waits until every one is
//! acknowledged by the broker, (3) writes the state changes together with the
//! input positions they include in one atomic sled batch, and only then
//! (4) commits the same positions as the consumer group's offsets.
//!
//! A crash between (2) and (3) re-runs the batch from the store's positions
//! against the store's state, which is exactly the state the first run saw, so
//! the processor emits the same outputs with the same ids again; consumers drop
//! them by id ([`crate::kafka::ID_HEADER`]). No state change is ever applied
//! twice, because state and positions move together (and a position never
//! moves backwards). Outputs carry their input's timestamp, so a re-run's
//! records are identical, not just alike. The fail points of
//! [`crate::failpoint`] sit at these boundaries for the crash tests.
//!
//! With `kafka.transactions: true`, (2) and (4) also happen inside a Kafka
//! transaction (`send_offsets_to_transaction`), for brokers that enforce
//! isolation; the guarantees above do not depend on it.
//!
//! # Faults
//!
//! No input record stops the loop: what a processor rejects, and an output
//! the broker would refuse as too large, become dead letters that always fit
//! ([`crate::dead_letter`]). Faults that may mend are waited out with
//! backoff ([`crate::backoff`]) and never judge a record: a consume or
//! produce error, a delivery that failed (re-sent with the same id), a
//! registry that cannot be asked for a writer schema (the runtime fetches it
//! before the record reaches the processor, so the processor's decode never
//! waits on the network and a record is `UNKNOWN_SCHEMA` only when the
//! registry positively says so).
//!
//! # Restore by replay
//!
//! Instances of a processor join its consumer group ([`membership`]); the
//! one holding the lease owns the state and reads every input partition,
//! the others stand by. What the owner replays on taking over, and when
//! live input may flow, is [`crate::replay`]'s plan.
//!
//! # Layout
//! - this module: [`Runtime`] and what a processor builds from it at start
//!   (encoders, tickers);
//! - `membership`: which instance owns the state, decided by the group;
//! - `assign`: which partitions the owner reads, from which positions,
//!   and reports of positions the log cannot satisfy;
//! - `run`: the loop: batches of consumed records through
//!   [`crate::batch::BatchRunner`], held partitions, shutdown;
//! - `outputs`: the batch's outputs and dead letters handed to the broker;
//! - `checkpoint`: a batch made durable (outputs, then state with
//!   positions, then group offsets).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use prometheus::IntCounter;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientContext, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::SrSettings;

use crate::config::{BatchConfig, Config, KafkaConfig};
use crate::kafka::{ADMIN_TIMEOUT, KafkaError, consumer_config, producer_config, topic_partitions};
use crate::lifecycle::Shutdown;
use crate::metrics::Metrics;
use crate::producer::TrellisProducer;
use crate::schema::{AvroDecoder, AvroEncoder, SchemaFile, registry_settings};
use crate::state::StateStore;
use crate::ticker::Ticker;
use crate::topology::{ProcessorSpec, Topology};
use trellis_records::DLQ_TOPIC;

pub use crate::emitter::{Emitter, OutputRecord};
pub use crate::error::{Exit, Failure, ProcessError, RunError, StartError};
pub use crate::offline::{Offline, replay_offline, run_offline};
pub use crate::processor::{Input, Processor};
pub use crate::record::{InputRecord, OwnedRecord};

mod assign;
mod checkpoint;
pub mod membership;
mod outputs;
mod run;

/// Everything a processor needs from its surroundings, built by [`Runtime::start`].
pub struct Runtime {
    name: &'static str,
    /// This processor's metrics.
    pub metrics: Metrics,
    store: StateStore,
    /// The whole topology.
    pub topology: Topology,
    /// This processor's entry in it.
    pub spec: ProcessorSpec,
    /// Registry connection.
    pub registry: SrSettings,
    /// Decoder for Avro inputs.
    pub decoder: AvroDecoder,
    /// Address `/metrics` is served on.
    pub metrics_addr: SocketAddr,
    kafka: KafkaConfig,
    /// The consumer group: offsets in `group`, members in `<group>.members`.
    group: String,
    /// This instance's `group.instance.id`.
    instance_id: String,
    batch: BatchConfig,
    shutdown_deadline: Duration,
    partitions: BTreeMap<String, i32>,
    producer: TrellisProducer,
    /// `trellis_errors_total{code="kafka_produce"}`, looked up once: every
    /// output is sent with a backoff that counts into it.
    produce_errors: IntCounter,
    consumer: StreamConsumer<CommitReports>,
    dlq: Option<AvroEncoder>,
    dlq_topic: Arc<str>,
    /// Topics this processor may write (topology.yaml's `outputs`).
    outputs: HashSet<String>,
    /// Inputs whose values are Avro: their writer schemas are fetched
    /// before a record reaches the processor.
    avro_inputs: HashSet<String>,
    /// Set once replay has finished: tickers only tick on a live processor.
    live: Arc<AtomicBool>,
    /// Held while this instance owns the state.
    lease: membership::Lease,
}

/// Reports the outcome of the checkpoints' asynchronous offset commits,
/// which librdkafka would otherwise drop silently.
struct CommitReports {
    failures: IntCounter,
}

impl ClientContext for CommitReports {}

impl ConsumerContext for CommitReports {
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            self.failures.inc();
            tracing::warn!(error = %e, "committing group offsets failed; continuing");
        }
    }
}

// `Shutdown` is already boxed (so `Unpin`): fusing needs no second box.
type Fused<'a> = futures::future::Fuse<Shutdown<'a>>;

impl Runtime {
    /// Loads the topology, checks the processor's topics exist, opens (or,
    /// with `rebuild` or a store in another `state_format`, recreates) the
    /// state store, serves metrics.
    ///
    /// # Errors
    /// [`StartError`] naming the first thing that is wrong.
    pub async fn start<S>(
        name: &'static str,
        state_format: u32,
        config: &Config<S>,
    ) -> Result<Self, StartError> {
        let metrics = Metrics::new(name).map_err(|e| StartError::Misconfigured(e.to_string()))?;
        let metrics_addr =
            metrics
                .serve(config.metrics_addr)
                .await
                .map_err(|source| StartError::Metrics {
                    addr: config.metrics_addr,
                    source,
                })?;
        let topology = Topology::load_checked(&config.topology)?;
        let spec = topology
            .processor(name)
            .map_err(StartError::Misconfigured)?
            .clone();
        let group = config
            .kafka
            .group
            .clone()
            .or_else(|| spec.group.clone())
            .ok_or_else(|| {
                StartError::Misconfigured(format!(
                    "processor `{name}` has no consumer group in topology.yaml"
                ))
            })?;

        let partitions = topic_partitions(&config.kafka)?;
        let missing: Vec<String> = topology
            .topics_of(&spec)
            .into_iter()
            .chain([trellis_records::LEASES_TOPIC.to_string()])
            .filter(|t| !partitions.contains_key(t))
            .collect();
        if !missing.is_empty() {
            return Err(StartError::MissingTopics(missing));
        }

        let store = open_store(&config.state_dir, config.rebuild, state_format)?;

        let instance_id = config
            .kafka
            .instance_id
            .clone()
            .unwrap_or_else(|| name.to_string());
        let transactional_id = config
            .kafka
            .transactions
            .then(|| format!("{group}-{instance_id}"));
        let producer: FutureProducer = producer_config(&config.kafka, transactional_id.as_deref())
            .create()
            .map_err(KafkaError::client("creating the producer"))?;
        if config.kafka.transactions {
            producer
                .init_transactions(ADMIN_TIMEOUT)
                .map_err(KafkaError::client("initialising transactions"))?;
        }
        let commits = CommitReports {
            failures: metrics.errors.with_label_values(&["offset_commit"]),
        };
        let consumer: StreamConsumer<CommitReports> = consumer_config(&config.kafka, &group)
            .create_with_context(commits)
            .map_err(KafkaError::client("creating the consumer"))?;
        bind_store_to_cluster(&store, &consumer)?;
        let registry = registry_settings(&config.registry.url)?;
        let avro_inputs = spec
            .inputs
            .iter()
            .filter(|t| topology.topic(t).is_ok_and(|spec| spec.schema.is_some()))
            .cloned()
            .collect();
        let produce_errors = metrics.errors.with_label_values(&["kafka_produce"]);
        let mut runtime = Self {
            name,
            metrics,
            store,
            decoder: AvroDecoder::new(registry.clone()),
            registry,
            outputs: spec.outputs.iter().cloned().collect(),
            avro_inputs,
            topology,
            spec,
            metrics_addr,
            producer: TrellisProducer::new(producer, &config.kafka),
            produce_errors,
            kafka: config.kafka.clone(),
            group,
            instance_id,
            batch: config.batch.clone(),
            shutdown_deadline: config.shutdown_deadline(),
            partitions,
            consumer,
            dlq: None,
            dlq_topic: Arc::from(DLQ_TOPIC),
            live: Arc::new(AtomicBool::new(false)),
            lease: membership::Lease::default(),
        };
        if runtime.outputs.contains(DLQ_TOPIC) {
            runtime.dlq = Some(runtime.encoder(DLQ_TOPIC).await?);
        }
        tracing::info!(processor = name, metrics = %metrics_addr, "started");
        Ok(runtime)
    }

    /// The processor's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The state store, for the processor's read paths (queries served
    /// beside the loop). Only the loop commits to it.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    /// Held while this instance owns the processor's state (side services
    /// that answer for the state ask it).
    pub fn lease(&self) -> membership::Lease {
        self.lease.clone()
    }

    /// The producer outputs go through (for side paths such as audit events
    /// written before an answer is given).
    pub fn producer(&self) -> &TrellisProducer {
        &self.producer
    }

    /// Registers the schema of declared output `topic` and returns its encoder.
    ///
    /// # Errors
    /// [`StartError`] if the topic is not an output, has no schema, or the
    /// registry refuses the schema.
    pub async fn encoder(&self, topic: &str) -> Result<AvroEncoder, StartError> {
        if !self.outputs.contains(topic) {
            return Err(StartError::Misconfigured(format!(
                "processor `{}` writes `{topic}`, which topology.yaml does not list among its outputs",
                self.name
            )));
        }
        let spec = self
            .topology
            .topic(topic)
            .map_err(StartError::Misconfigured)?;
        let file = spec.schema.as_deref().ok_or_else(|| {
            StartError::Misconfigured(format!(
                "topic `{topic}` has no Avro schema in topology.yaml"
            ))
        })?;
        let schema = SchemaFile::load(&self.topology.schema_path(file))?;
        Ok(AvroEncoder::register(&self.registry, topic, &schema).await?)
    }

    /// A [`Ticker`] writing to `topic`, which must be both an input and an
    /// output of this processor (see [`crate::ticker`]).
    ///
    /// # Errors
    /// [`StartError`] if the topic is not both.
    pub fn ticker(&self, topic: &str) -> Result<Ticker, StartError> {
        let declared = |list: &[String]| list.iter().any(|t| t == topic);
        if !declared(&self.spec.inputs) || !declared(&self.spec.outputs) {
            return Err(StartError::Misconfigured(format!(
                "processor `{}` ticks on `{topic}`, which topology.yaml must list among both its inputs and its outputs",
                self.name
            )));
        }
        Ok(Ticker {
            topic: topic.to_string(),
            producer: self.producer.clone(),
            live: self.live.clone(),
        })
    }
}

/// Opens the store in `dir` (recreated when `rebuild` is asked for), in
/// state format `format`: a store written in another format is refused
/// with the way out, `--rebuild`, rather than misread. (A store from
/// before formats were recorded is format 1.)
fn open_store(dir: &Path, rebuild: bool, format: u32) -> Result<StateStore, StartError> {
    if rebuild && dir.exists() {
        tracing::info!(dir = %dir.display(), "rebuild requested: removing the state store");
        std::fs::remove_dir_all(dir).map_err(|e| {
            StartError::Misconfigured(format!("cannot remove {} for rebuild: {e}", dir.display()))
        })?;
    }
    let store = StateStore::open(dir)?;
    let blank = store.is_empty() && store.positions()?.is_empty();
    match store.format().or_else(|| (!blank).then_some(1)) {
        Some(found) if found != format => Err(StartError::StoreFormat {
            dir: dir.display().to_string(),
            found,
            reads: format,
        }),
        _ => {
            if store.format() != Some(format) {
                store.set_format(format)?;
            }
            Ok(store)
        }
    }
}

/// A store remembers the cluster whose log it was built from; a store of
/// another cluster is refused, because its positions mean nothing here.
fn bind_store_to_cluster(
    store: &StateStore,
    consumer: &impl Consumer<CommitReports>,
) -> Result<(), StartError> {
    let Some(actual) = consumer.client().fetch_cluster_id(ADMIN_TIMEOUT) else {
        tracing::warn!(
            "the broker reports no cluster id; cannot check the state store belongs to it"
        );
        return Ok(());
    };
    match store.cluster_id()? {
        Some(stored) if stored != actual => Err(StartError::ForeignStore {
            dir: store.path().display().to_string(),
            stored,
            actual,
        }),
        Some(_) => Ok(()),
        None => Ok(store.set_cluster_id(&actual)?),
    }
}

#[cfg(test)]
mod tests;
