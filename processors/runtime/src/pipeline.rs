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
//! twice, because state and positions move together. Outputs carry their
//! input's timestamp, so a re-run's records are identical, not just alike.
//!
//! With `kafka.transactions: true`, (2) and (4) also happen inside a Kafka
//! transaction (`send_offsets_to_transaction`), for brokers that enforce
//! isolation; the guarantees above do not depend on it.
//!
//! # Restore by replay
//!
//! Partitions are assigned statically (instance *i* of *n* takes partitions
//! `p % n == i`): group rebalancing is not used because tansu does not
//! reassign partitions after a member dies (INFRA.md). On start the loop reads
//! each partition from the store's position (offset 0 for a fresh store). The
//! group's committed offset marks how far outputs are already durable: records
//! below it are *replayed* — applied to state, outputs discarded — so deleting
//! the state directory rebuilds it from the log without re-emitting anything.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, Timestamp, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::SrSettings;

use crate::config::{BatchConfig, Config, KafkaConfig};
use crate::kafka::{
    ADMIN_TIMEOUT, ID_HEADER, KafkaError, REQUEST_ID_HEADER, TENANT_HEADER, consumer_config,
    producer_config, topic_partitions,
};
use crate::lifecycle::ExitStatus;
use crate::metrics::Metrics;
use crate::schema::{AvroDecoder, AvroEncoder, SchemaError, SchemaFile, registry_settings};
use crate::state::{Positions, StateError, StateStore, StateTxn, TopicPartition};
use crate::ticker::Ticker;
use crate::topology::{ProcessorSpec, Topology, TopologyError};
use trellis_records::{DLQ_TOPIC, DeadLetter, OriginalHeader};

/// A processor's logic. The runtime owns offsets, batching and checkpoints;
/// the processor only turns records into state changes and outputs, and must
/// do so deterministically (same state + same record → same changes and outputs).
pub trait Processor: Send + 'static {
    /// Rebuilds in-memory indexes from the committed store; called once
    /// before the first record.
    ///
    /// # Errors
    /// [`StateError`] if the store cannot be read.
    fn restore(&mut self, _store: &StateStore) -> Result<(), StateError> {
        Ok(())
    }

    /// Told, before the first record, which partitions of each input this
    /// instance reads (processors whose logic spans partitions, such as
    /// event-time watermarks, need the whole set, not just those seen so far).
    ///
    /// # Errors
    /// [`ProcessError`] if the processor cannot work with this assignment.
    fn assigned(&mut self, _partitions: &BTreeMap<String, Vec<i32>>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Handles one record. Bad input is not an error: emit a dead letter.
    ///
    /// # Errors
    /// [`ProcessError`] only for failures that make continuing unsafe.
    fn process(
        &mut self,
        record: &InputRecord<'_>,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError>;

    /// Called after a batch's state is committed.
    fn committed(&mut self) {}

    /// Called when a batch is abandoned before commit (the process is about to
    /// stop); in-memory indexes must not keep its changes.
    fn abandoned(&mut self) {}
}

/// A failure that stops the processor (it restarts from its last checkpoint).
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Anything else that makes continuing unsafe.
    #[error("{0}")]
    Fatal(String),
}

/// Headers of an input record.
#[derive(Clone, Copy)]
enum HeaderView<'a> {
    Kafka(Option<&'a BorrowedHeaders>),
    Slice(&'a [(&'a str, &'a [u8])]),
}

/// One input record as a processor sees it.
pub struct InputRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp in ms since the epoch: the processing clock, so that
    /// replay sees the same time as the live run.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub value: Option<&'a [u8]>,
    headers: HeaderView<'a>,
}

impl<'a> InputRecord<'a> {
    fn from_kafka(message: &'a BorrowedMessage<'a>) -> Self {
        Self {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: match message.timestamp() {
                Timestamp::NotAvailable => None,
                Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            },
            key: message.key(),
            value: message.payload(),
            headers: HeaderView::Kafka(message.headers()),
        }
    }

    /// A record built by hand (tests, tools).
    pub fn new(
        topic: &'a str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: &'a [(&'a str, &'a [u8])],
    ) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers: HeaderView::Slice(headers),
        }
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        match self.headers {
            HeaderView::Kafka(headers) => headers?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value),
            HeaderView::Slice(headers) => headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
        }
    }

    /// Calls `visit` with every header in order (a header without a value
    /// is seen as empty).
    pub fn visit_headers(&self, mut visit: impl FnMut(&str, &[u8])) {
        match self.headers {
            HeaderView::Kafka(None) => {}
            HeaderView::Kafka(Some(headers)) => {
                for h in headers.iter() {
                    visit(h.key, h.value.unwrap_or_default());
                }
            }
            HeaderView::Slice(headers) => {
                for (k, v) in headers {
                    visit(k, v);
                }
            }
        }
    }

    /// The first header named `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, copied (for dead letters).
    pub fn headers_owned(&self) -> Vec<OriginalHeader> {
        match self.headers {
            HeaderView::Kafka(None) => Vec::new(),
            HeaderView::Kafka(Some(headers)) => headers
                .iter()
                .map(|h| OriginalHeader {
                    key: h.key.to_string(),
                    value: h.value.unwrap_or_default().to_vec(),
                })
                .collect(),
            HeaderView::Slice(headers) => headers
                .iter()
                .map(|(k, v)| OriginalHeader {
                    key: (*k).to_string(),
                    value: v.to_vec(),
                })
                .collect(),
        }
    }
}

/// A record held in memory: the input of [`run_offline`].
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OwnedRecord {
    /// Copies a consumed message.
    pub fn from_message<M: Message>(message: &M) -> Self {
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: match message.timestamp() {
                Timestamp::NotAvailable => None,
                Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            },
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// What [`run_offline`] saw a processor emit.
#[derive(Default)]
pub struct Offline {
    /// Output records, in emission order.
    pub outputs: Vec<OutputRecord>,
    /// Dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Inputs dropped as duplicates.
    pub duplicates: u64,
}

/// Runs `processor` over `records` against `store` with no broker: the same
/// per-record contract as the live loop, committing state with the input
/// positions every `batch` records. Benchmarks use it to time a rebuild from
/// an already-fetched log; tests use it as the reference ("clean") run a
/// live run must equal.
///
/// # Errors
/// [`ProcessError`] as the live loop would stop on.
pub fn run_offline<P: Processor>(
    processor: &mut P,
    store: &StateStore,
    records: &[OwnedRecord],
    batch: usize,
) -> Result<Offline, ProcessError> {
    processor.restore(store)?;
    let mut result = Offline::default();
    let mut emitter = Emitter::default();
    for chunk in records.chunks(batch.max(1)) {
        let mut txn = store.begin();
        let mut positions = Positions::new();
        for record in chunk {
            let headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            let input = InputRecord::new(
                &record.topic,
                record.partition,
                record.offset,
                record.timestamp_ms,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            );
            emitter.clear();
            processor.process(&input, &mut txn, &mut emitter)?;
            result.duplicates += emitter.duplicates;
            result.outputs.append(&mut emitter.records);
            result.dead_letters.append(&mut emitter.dead);
            positions.insert(
                TopicPartition::new(record.topic.as_str(), record.partition),
                record.offset + 1,
            );
        }
        store.commit(txn, &positions)?;
        processor.committed();
    }
    Ok(result)
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    /// Destination topic (must be a declared output).
    pub topic: Arc<str>,
    /// Key: tenant first, so a tenant's subject stays in one partition.
    pub key: Vec<u8>,
    /// Value in the wire format.
    pub value: Option<Vec<u8>>,
    /// Stable id derived from the input; reprocessing yields the same id.
    pub id: String,
    /// Tenant the record belongs to (the `tenant` header).
    pub tenant: Option<String>,
}

/// Collects what a processor emits for one record.
#[derive(Default)]
pub struct Emitter {
    records: Vec<OutputRecord>,
    dead: Vec<DeadLetter>,
    duplicates: u64,
}

impl Emitter {
    /// Emits an output record.
    pub fn emit(&mut self, record: OutputRecord) {
        self.records.push(record);
    }

    /// Dead-letters `record` with a reason code and a value-free detail.
    pub fn dead_letter(
        &mut self,
        record: &InputRecord<'_>,
        processor: &str,
        reason: &str,
        detail: String,
        tenant: Option<String>,
    ) {
        self.dead.push(DeadLetter {
            id: DeadLetter::id_for(record.topic, record.partition, record.offset),
            reason: reason.to_string(),
            detail,
            processor: processor.to_string(),
            tenant_id: tenant,
            source_topic: record.topic.to_string(),
            source_partition: record.partition,
            source_offset: record.offset,
            source_timestamp: record.timestamp_ms,
            original_key: record.key.map(<[u8]>::to_vec),
            original_value: record.value.map(<[u8]>::to_vec),
            original_headers: record.headers_owned(),
        });
    }

    /// Decodes `record`'s Avro value, or dead-letters the record
    /// (`MISSING_VALUE`, `UNDECODABLE`) and says `None`: bad input never
    /// stops a processor.
    pub fn decode_or_dead_letter<T: serde::de::DeserializeOwned>(
        &mut self,
        decoder: &AvroDecoder,
        record: &InputRecord<'_>,
        processor: &str,
    ) -> Option<T> {
        let Some(value) = record.value else {
            self.dead_letter(
                record,
                processor,
                "MISSING_VALUE",
                "record has no value".into(),
                None,
            );
            return None;
        };
        match decoder.decode_blocking(value) {
            Ok(decoded) => Some(decoded),
            Err(e) => {
                self.dead_letter(record, processor, "UNDECODABLE", e.to_string(), None);
                None
            }
        }
    }

    /// Notes that the record was dropped as a duplicate by id.
    pub fn dropped_duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// Duplicates dropped (tests).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// What was emitted (tests).
    pub fn records(&self) -> &[OutputRecord] {
        &self.records
    }

    /// Dead letters emitted (tests).
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead
    }

    /// Empties the emitter.
    pub fn clear(&mut self) {
        self.records.clear();
        self.dead.clear();
        self.duplicates = 0;
    }
}

/// A processor could not start. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration or topology problem.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// Processor missing from topology.yaml, or similar.
    #[error("{0}")]
    Misconfigured(String),
    /// Declared topics do not exist on the broker.
    #[error("refusing to start: topics missing on the broker: {} (run `trellis topology apply`)", .0.join(", "))]
    MissingTopics(Vec<String>),
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
    /// A produce, commit or transaction call failed.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The processor reported a fatal error.
    #[error("processor: {0}")]
    Processor(#[from] ProcessError),
    /// Encoding a record failed (a schema/type mismatch: a bug).
    #[error(transparent)]
    Schema(#[from] SchemaError),
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
            Failure::Start(StartError::Kafka(_) | StartError::Schema(SchemaError::Registry(_))) => {
                ExitStatus::Unavailable
            }
            Failure::Start(_) => ExitStatus::Misconfigured,
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

struct InputTopic {
    name: Arc<str>,
    records_in: IntCounter,
    /// Per partition (index = partition number): next offset to read, or
    /// `None` when the partition is not assigned to this instance.
    next: Vec<Option<i64>>,
    /// Per partition: offsets below this are replayed (outputs discarded).
    replay_until: Vec<i64>,
}

/// Everything a processor needs from its surroundings, built by [`Runtime::start`].
pub struct Runtime {
    name: &'static str,
    /// This processor's metrics.
    pub metrics: Metrics,
    /// The processor's state store.
    pub store: StateStore,
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
    batch: BatchConfig,
    shutdown_deadline: Duration,
    partitions: BTreeMap<String, i32>,
    producer: FutureProducer,
    consumer: StreamConsumer,
    dlq: Option<AvroEncoder>,
    /// Set once replay has finished: tickers only tick on a live processor.
    live: Arc<AtomicBool>,
}

impl Runtime {
    /// Loads the topology, checks the processor's topics exist, opens (or,
    /// with `rebuild`, recreates) the state store, serves metrics.
    ///
    /// # Errors
    /// [`StartError`] naming the first thing that is wrong.
    pub async fn start<S>(name: &'static str, config: &Config<S>) -> Result<Self, StartError> {
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
            .filter(|t| !partitions.contains_key(t))
            .collect();
        if !missing.is_empty() {
            return Err(StartError::MissingTopics(missing));
        }

        if config.rebuild && config.state_dir.exists() {
            tracing::info!(dir = %config.state_dir.display(), "rebuild requested: removing state store");
            std::fs::remove_dir_all(&config.state_dir).map_err(|e| {
                StartError::Misconfigured(format!(
                    "cannot remove {} for rebuild: {e}",
                    config.state_dir.display()
                ))
            })?;
        }
        let store = StateStore::open(&config.state_dir)?;

        let transactional_id = config
            .kafka
            .transactions
            .then(|| format!("{group}-{}", config.kafka.instance));
        let producer: FutureProducer = producer_config(&config.kafka, transactional_id.as_deref())
            .create()
            .map_err(KafkaError::from)?;
        if config.kafka.transactions {
            producer
                .init_transactions(ADMIN_TIMEOUT)
                .map_err(KafkaError::from)?;
        }
        let consumer: StreamConsumer = consumer_config(&config.kafka, &group)
            .create()
            .map_err(KafkaError::from)?;
        let registry = registry_settings(&config.registry.url)?;
        let mut runtime = Self {
            name,
            metrics,
            store,
            decoder: AvroDecoder::new(registry.clone()),
            registry,
            topology,
            spec,
            metrics_addr,
            kafka: config.kafka.clone(),
            batch: config.batch.clone(),
            shutdown_deadline: config.shutdown_deadline(),
            partitions,
            producer,
            consumer,
            dlq: None,
            live: Arc::new(AtomicBool::new(false)),
        };
        if runtime.spec.outputs.iter().any(|t| t == DLQ_TOPIC) {
            runtime.dlq = Some(runtime.encoder(DLQ_TOPIC).await?);
        }
        tracing::info!(processor = name, metrics = %metrics_addr, "started");
        Ok(runtime)
    }

    /// The processor's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Registers the schema of declared output `topic` and returns its encoder.
    ///
    /// # Errors
    /// [`StartError`] if the topic is not an output, has no schema, or the
    /// registry refuses the schema.
    pub async fn encoder(&self, topic: &str) -> Result<AvroEncoder, StartError> {
        if !self.spec.outputs.iter().any(|t| t == topic) {
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

    /// Assigns this instance's partitions of every input, starting from the
    /// store's positions, and works out what must be replayed.
    fn assign(&self) -> Result<Vec<InputTopic>, RunError> {
        let positions = self.store.positions()?;
        let mut inputs = Vec::new();
        let mut committed_query = TopicPartitionList::new();
        for topic in &self.spec.inputs {
            for p in 0..self.partitions[topic] {
                if p as u32 % self.kafka.instances == self.kafka.instance {
                    committed_query.add_partition(topic, p);
                }
            }
        }
        let committed = self
            .consumer
            .committed_offsets(committed_query, ADMIN_TIMEOUT)
            .map_err(KafkaError::from)?;

        let mut assignment = TopicPartitionList::new();
        for topic in &self.spec.inputs {
            let count = self.partitions[topic] as usize;
            let mut input = InputTopic {
                name: Arc::from(topic.as_str()),
                records_in: self.metrics.records_in_for(topic),
                next: vec![None; count],
                replay_until: vec![0; count],
            };
            for p in 0..count as i32 {
                if p as u32 % self.kafka.instances != self.kafka.instance {
                    continue;
                }
                let stored = positions
                    .get(&TopicPartition::new(topic.as_str(), p))
                    .copied();
                let durable = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => 0,
                };
                let start = stored.unwrap_or(0);
                // Reported from the start, not from the first checkpoint: a
                // partition with nothing left to read is caught up too.
                self.metrics
                    .position
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .set(start);
                input.next[p as usize] = Some(start);
                input.replay_until[p as usize] = durable.max(start);
                assignment
                    .add_partition_offset(
                        topic,
                        p,
                        stored.map_or(Offset::Beginning, Offset::Offset),
                    )
                    .map_err(KafkaError::from)?;
            }
            inputs.push(input);
        }
        self.consumer
            .assign(&assignment)
            .map_err(KafkaError::from)?;
        Ok(inputs)
    }

    /// Runs the loop until `shutdown` resolves, then finishes and commits the
    /// batch in hand and returns.
    ///
    /// # Errors
    /// [`RunError`] when continuing would be unsafe; nothing uncommitted is
    /// lost, the next start resumes from the last checkpoint.
    pub async fn run<P: Processor>(
        self,
        mut processor: P,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Exit, RunError> {
        processor.restore(&self.store)?;
        let mut inputs = self.assign()?;
        let assigned: BTreeMap<String, Vec<i32>> = inputs
            .iter()
            .map(|t| {
                let partitions = (0..t.next.len() as i32)
                    .filter(|p| t.next[*p as usize].is_some())
                    .collect();
                (t.name.to_string(), partitions)
            })
            .collect();
        processor.assigned(&assigned)?;
        let mut replay = ReplayProgress::new(self.name, &inputs, &self.store);
        self.live.store(replay.finished, Ordering::Relaxed);
        let output_counters: BTreeMap<String, IntCounter> = self
            .spec
            .outputs
            .iter()
            .map(|t| (t.clone(), self.metrics.records_out.with_label_values(&[t])))
            .collect();
        let mut shutdown = Box::pin(shutdown.fuse());
        let mut emitter = Emitter::default();

        loop {
            let mut batch = Batch {
                txn: self.store.begin(),
                deliveries: Vec::new(),
                touched: Vec::new(),
                records: 0,
                in_transaction: false,
                started: None,
            };
            let deadline = tokio::time::Instant::now() + self.batch.max_wait();
            let mut stopping = false;
            while batch.records < self.batch.max_records {
                let received = tokio::select! {
                    biased;
                    () = &mut shutdown => { stopping = true; break; }
                    received = tokio::time::timeout_at(deadline, self.consumer.recv()) => received,
                };
                let message = match received {
                    Err(_elapsed) => break,
                    Ok(Err(e)) => {
                        self.metrics
                            .errors
                            .with_label_values(&["kafka_consume"])
                            .inc();
                        tracing::warn!(error = %e, "consume error; retrying");
                        continue;
                    }
                    Ok(Ok(message)) => message,
                };
                batch.started.get_or_insert_with(Instant::now);
                self.handle(
                    &message,
                    &mut inputs,
                    &mut processor,
                    &mut batch,
                    &mut emitter,
                    &mut replay,
                )
                .await?;
            }

            if batch.records > 0 {
                if stopping {
                    let deadline = self.shutdown_deadline;
                    match tokio::time::timeout(
                        deadline,
                        self.checkpoint(batch, &inputs, &output_counters, &mut processor),
                    )
                    .await
                    {
                        Ok(result) => result?,
                        Err(_) => {
                            processor.abandoned();
                            tracing::warn!(
                                ?deadline,
                                "shutdown deadline passed before the last batch committed; it will be replayed"
                            );
                            return Ok(Exit::ForcedShutdown);
                        }
                    }
                } else {
                    self.checkpoint(batch, &inputs, &output_counters, &mut processor)
                        .await?;
                }
                replay.tick(&inputs, &self.store);
                self.live.store(replay.finished, Ordering::Relaxed);
                if !replay.holding && !replay.paused.is_empty() {
                    let mut resumed = TopicPartitionList::new();
                    for (topic, partition) in replay.paused.drain(..) {
                        resumed.add_partition(&topic, partition);
                    }
                    self.consumer.resume(&resumed).map_err(KafkaError::from)?;
                }
            }
            if stopping {
                self.store.flush()?;
                tracing::info!(processor = self.name, "shut down cleanly");
                return Ok(Exit::Success);
            }
        }
    }

    async fn handle<P: Processor>(
        &self,
        message: &BorrowedMessage<'_>,
        inputs: &mut [InputTopic],
        processor: &mut P,
        batch: &mut Batch<'_>,
        emitter: &mut Emitter,
        replay: &mut ReplayProgress,
    ) -> Result<(), RunError> {
        let Some(index) = inputs.iter().position(|t| &*t.name == message.topic()) else {
            return Ok(());
        };
        let input = &mut inputs[index];
        let partition = message.partition() as usize;
        let offset = message.offset();
        let Some(Some(next)) = input.next.get(partition).copied() else {
            return Ok(());
        };
        if offset < next {
            // Already applied (a fetch from before a seek): never apply twice.
            return Ok(());
        }
        let replaying = offset < input.replay_until[partition];
        if !replaying && replay.holding {
            // Hold new input until every partition has replayed: a live
            // record must see the state of *everything* already emitted for,
            // or its outputs could contradict outputs of records whose replay
            // (from another partition) has not happened yet.
            let mut held = TopicPartitionList::new();
            held.add_partition(&input.name, partition as i32);
            self.consumer.pause(&held).map_err(KafkaError::from)?;
            self.consumer
                .seek(
                    &input.name,
                    partition as i32,
                    Offset::Offset(offset),
                    ADMIN_TIMEOUT,
                )
                .map_err(KafkaError::from)?;
            replay.paused.push((input.name.clone(), partition as i32));
            return Ok(());
        }
        input.records_in.inc();
        let record = InputRecord::from_kafka(message);
        emitter.clear();
        processor.process(&record, &mut batch.txn, emitter)?;
        // Follow one HTTP request through every processor with
        // RUST_LOG=trellis=debug (or the processor's log filter at debug).
        if tracing::enabled!(tracing::Level::DEBUG)
            && let Some(request_id) = record.header_str(REQUEST_ID_HEADER)
        {
            tracing::debug!(
                processor = self.name,
                request_id,
                topic = record.topic,
                partition,
                offset,
                outputs = emitter.records.len(),
                dead_letters = emitter.dead.len(),
                "record processed"
            );
        }
        input.next[partition] = Some(offset + 1);
        if !batch.touched.contains(&(index, partition)) {
            batch.touched.push((index, partition));
        }
        batch.records += 1;
        if replaying {
            self.metrics.replayed.inc();
            replay.record();
            return Ok(());
        }
        self.metrics.duplicates_dropped.inc_by(emitter.duplicates);
        let request_id = record.header(REQUEST_ID_HEADER);
        for output in emitter.records.drain(..) {
            self.send(batch, output, record.timestamp_ms, request_id)
                .await?;
        }
        for dead in emitter.dead.drain(..) {
            let Some(dlq) = &self.dlq else {
                return Err(ProcessError::Fatal(format!(
                    "processor `{}` dead-lettered a record but does not declare `{DLQ_TOPIC}` as an output",
                    self.name
                ))
                .into());
            };
            self.metrics
                .dlq_records
                .with_label_values(&[dead.reason.as_str()])
                .inc();
            tracing::debug!(reason = %dead.reason, id = %dead.id, "dead-lettered");
            let output = OutputRecord {
                topic: Arc::from(DLQ_TOPIC),
                key: dead.original_key.clone().unwrap_or_default(),
                value: Some(dlq.encode(&dead)?),
                id: dead.id.clone(),
                tenant: dead.tenant_id.clone(),
            };
            self.send(batch, output, record.timestamp_ms, request_id)
                .await?;
        }
        Ok(())
    }

    async fn send(
        &self,
        batch: &mut Batch<'_>,
        output: OutputRecord,
        timestamp_ms: Option<i64>,
        request_id: Option<&[u8]>,
    ) -> Result<(), RunError> {
        if self.kafka.transactions && !batch.in_transaction {
            self.producer
                .begin_transaction()
                .map_err(KafkaError::from)?;
            batch.in_transaction = true;
        }
        let mut headers = OwnedHeaders::new_with_capacity(3).insert(Header {
            key: ID_HEADER,
            value: Some(output.id.as_bytes()),
        });
        if let Some(tenant) = &output.tenant {
            headers = headers.insert(Header {
                key: TENANT_HEADER,
                value: Some(tenant.as_bytes()),
            });
        }
        if let Some(request_id) = request_id {
            headers = headers.insert(Header {
                key: REQUEST_ID_HEADER,
                value: Some(request_id),
            });
        }
        let mut record = FutureRecord::to(&output.topic)
            .key(&output.key)
            .headers(headers);
        if let Some(value) = &output.value {
            record = record.payload(value);
        }
        if let Some(ts) = timestamp_ms {
            record = record.timestamp(ts);
        }
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    batch.deliveries.push((output.topic.clone(), delivery));
                    return Ok(());
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    returned,
                )) => {
                    record = returned;
                    // The local queue is full: wait for the oldest delivery.
                    if batch.deliveries.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        let (topic, oldest) = batch.deliveries.remove(0);
                        await_delivery(&topic, oldest).await?;
                    }
                }
                Err((e, _)) => {
                    return Err(KafkaError(format!("producing to {}: {e}", output.topic)).into());
                }
            }
        }
    }

    async fn checkpoint<P: Processor>(
        &self,
        batch: Batch<'_>,
        inputs: &[InputTopic],
        output_counters: &BTreeMap<String, IntCounter>,
        processor: &mut P,
    ) -> Result<(), RunError> {
        let Batch {
            txn,
            deliveries,
            touched,
            in_transaction,
            started,
            ..
        } = batch;
        let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        for (topic, delivery) in deliveries {
            await_delivery(&topic, delivery).await?;
            *delivered.entry(topic).or_default() += 1;
        }

        let mut positions = Positions::new();
        let mut offsets = TopicPartitionList::new();
        for &(index, partition) in &touched {
            let input = &inputs[index];
            if let Some(next) = input.next[partition] {
                positions.insert(TopicPartition::new(&*input.name, partition as i32), next);
                offsets
                    .add_partition_offset(&input.name, partition as i32, Offset::Offset(next))
                    .map_err(KafkaError::from)?;
            }
        }

        if in_transaction {
            let group = self.consumer.group_metadata().ok_or_else(|| {
                KafkaError("no consumer group metadata for the transaction".into())
            })?;
            let producer = &self.producer;
            tokio::task::block_in_place(|| {
                producer
                    .send_offsets_to_transaction(&offsets, &group, ADMIN_TIMEOUT)
                    .and_then(|()| producer.commit_transaction(ADMIN_TIMEOUT))
            })
            .map_err(|e| KafkaError(format!("committing transaction: {e}")))?;
        }

        self.store.commit(txn, &positions)?;
        processor.committed();

        if !in_transaction {
            // Marks how far outputs are durable; a failure only means a later
            // restore replays (state-only) a little less. Never fatal.
            if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
                self.metrics
                    .errors
                    .with_label_values(&["offset_commit"])
                    .inc();
                tracing::warn!(error = %e, "committing group offsets failed; continuing");
            }
        }
        for (topic, count) in delivered {
            if let Some(counter) = output_counters.get(&*topic) {
                counter.inc_by(count);
            }
        }
        for (tp, next) in &positions {
            self.metrics
                .position
                .with_label_values(&[tp.topic.as_str(), &tp.partition.to_string()])
                .set(*next);
        }
        if let Some(started) = started {
            self.metrics
                .batch_latency
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }
}

async fn await_delivery(topic: &str, delivery: DeliveryFuture) -> Result<(), KafkaError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(KafkaError(format!("delivery to {topic} failed: {e}"))),
        Err(_) => Err(KafkaError(format!("delivery to {topic} was cancelled"))),
    }
}

struct Batch<'s> {
    txn: StateTxn<'s>,
    deliveries: Vec<(Arc<str>, DeliveryFuture)>,
    /// (input index, partition) pairs this batch advanced.
    touched: Vec<(usize, usize)>,
    records: usize,
    in_transaction: bool,
    started: Option<Instant>,
}

/// Reports restore-by-replay: a progress bar on a terminal, log lines otherwise.
struct ReplayProgress {
    processor: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last_log: Instant,
    bar: Option<indicatif::ProgressBar>,
    finished: bool,
    /// True while some partition is still replaying: new input waits.
    holding: bool,
    /// Partitions paused while holding.
    paused: Vec<(Arc<str>, i32)>,
}

impl ReplayProgress {
    fn new(processor: &'static str, inputs: &[InputTopic], store: &StateStore) -> Self {
        let total: u64 = inputs
            .iter()
            .flat_map(|t| {
                t.next
                    .iter()
                    .zip(&t.replay_until)
                    .filter_map(|(next, until)| next.map(|n| (until - n).max(0) as u64))
            })
            .sum();
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{processor}: restoring state by replay"));
            bar
        });
        if total > 0 {
            tracing::info!(processor, records = total, "restoring state by replay");
        } else if let Ok(digest) = store.digest() {
            tracing::info!(processor, %digest, "state store up to date");
        }
        Self {
            processor,
            total,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
            bar,
            finished: total == 0,
            holding: total > 0,
            paused: Vec::new(),
        }
    }

    fn record(&mut self) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Called after each checkpoint.
    fn tick(&mut self, inputs: &[InputTopic], store: &StateStore) {
        if self.finished {
            return;
        }
        let caught_up = inputs.iter().all(|t| {
            t.next
                .iter()
                .zip(&t.replay_until)
                .all(|(next, until)| next.is_none_or(|n| n >= *until))
        });
        if caught_up {
            self.finished = true;
            self.holding = false;
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            let secs = self.started.elapsed().as_secs_f64();
            let digest = store
                .digest()
                .map(|d| d.0)
                .unwrap_or_else(|e| e.to_string());
            tracing::info!(
                processor = self.processor,
                records = self.done,
                seconds = format!("{secs:.2}"),
                rate = format!("{:.0}/s", self.done as f64 / secs.max(1e-9)),
                %digest,
                "state restored by replay"
            );
        } else if self.bar.is_none() && self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            tracing::info!(
                processor = self.processor,
                done = self.done,
                total = self.total,
                "restoring state by replay"
            );
        }
    }
}
