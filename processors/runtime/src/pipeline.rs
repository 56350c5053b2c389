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
//! Partitions are assigned statically (instance *i* of *n* takes partitions
//! `p % n == i`): group rebalancing is not used because tansu does not
//! reassign partitions after a member dies (INFRA.md). What is replayed and
//! when live input may flow is [`crate::replay`]'s plan.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use schema_registry_converter::async_impl::schema_registry::SrSettings;

use crate::backoff::Backoff;
use crate::config::{BatchConfig, Config, KafkaConfig};
use crate::error::ErrorKind;
use crate::failpoint;
use crate::kafka::{
    ADMIN_TIMEOUT, KafkaError, REQUEST_ID_HEADER, consumer_config, producer_config,
    topic_partitions,
};
use crate::lifecycle::Shutdown;
use crate::metrics::Metrics;
use crate::processor::{Halt, apply};
use crate::producer::{Outgoing, ProduceError, TrellisProducer};
use crate::replay::{Cursor, Cursors, ReplayProgress, Verdict};
use crate::schema::{AvroDecoder, AvroEncoder, SchemaFile, registry_settings};
use crate::state::{Positions, StateStore, StateTxn, TopicPartition};
use crate::ticker::Ticker;
use crate::topology::{ProcessorSpec, Topology};
use trellis_records::{DLQ_TOPIC, DeadLetter};

pub use crate::emitter::{Emitter, OutputRecord};
pub use crate::error::{Exit, Failure, ProcessError, RunError, StartError};
pub use crate::offline::{Offline, replay_offline, run_offline};
pub use crate::processor::{Input, Processor};
pub use crate::record::{InputRecord, OwnedRecord};

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

/// What became of one consumed record.
enum Handled {
    /// Applied (replayed or live).
    Applied,
    /// Skipped or held back for later.
    Passed,
    /// Shutdown was requested while waiting on the registry; the record
    /// was not applied and will be read again.
    Stopping,
}

/// The input record an output answers: (topic, partition, offset, timestamp).
type Origin = (Arc<str>, i32, i64, Option<i64>);

/// One produced record awaiting its acknowledgement.
struct Pending {
    topic: Arc<str>,
    /// The input that caused it; `None` for what [`Processor::flush`]
    /// emitted for the batch as a whole.
    input: Option<Origin>,
    delivery: DeliveryFuture,
}

struct Batch<'s> {
    txn: StateTxn<'s>,
    deliveries: Vec<Pending>,
    /// (input index, partition) pairs this batch advanced.
    touched: Vec<(usize, i32)>,
    records: usize,
    in_transaction: bool,
    started: Option<Instant>,
    /// Time since `started` spent waiting for the consumer to deliver.
    waiting: Duration,
}

// `Shutdown` is already boxed (so `Unpin`): fusing needs no second box.
type Fused<'a> = futures::future::Fuse<Shutdown<'a>>;

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
            batch: config.batch.clone(),
            shutdown_deadline: config.shutdown_deadline(),
            partitions,
            consumer,
            dlq: None,
            dlq_topic: Arc::from(DLQ_TOPIC),
            live: Arc::new(AtomicBool::new(false)),
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

    /// Assigns this instance's partitions of every input, starting from the
    /// store's positions, and plans what must be replayed.
    fn assign(&self) -> Result<Cursors, RunError> {
        let positions = self.store.positions()?;
        let mine = |p: i32| p as u32 % self.kafka.instances == self.kafka.instance;
        let mut committed_query = TopicPartitionList::new();
        for topic in &self.spec.inputs {
            for p in (0..self.partitions[topic]).filter(|p| mine(*p)) {
                committed_query.add_partition(topic, p);
            }
        }
        let committed = self
            .consumer
            .committed_offsets(committed_query, ADMIN_TIMEOUT)
            .map_err(KafkaError::client("reading committed offsets"))?;

        let mut assignment = TopicPartitionList::new();
        let mut plans = Vec::new();
        for topic in &self.spec.inputs {
            let count = self.partitions[topic];
            let mut cursors = vec![None; count as usize];
            for p in (0..count).filter(|p| mine(*p)) {
                let stored = positions
                    .get(&TopicPartition::new(topic.as_str(), p))
                    .copied();
                let durable = match committed.find_partition(topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Some(o),
                    _ => None,
                };
                let cursor = Cursor::plan(stored, durable);
                // Reported from the start, not from the first checkpoint: a
                // partition with nothing left to read is caught up too.
                self.metrics
                    .position
                    .with_label_values(&[topic.as_str(), &p.to_string()])
                    .set(cursor.next);
                cursors[p as usize] = Some(cursor);
                assignment
                    .add_partition_offset(
                        topic,
                        p,
                        stored.map_or(Offset::Beginning, Offset::Offset),
                    )
                    .map_err(KafkaError::client("assigning partitions"))?;
            }
            plans.push((Arc::from(topic.as_str()), cursors));
        }
        self.consumer
            .assign(&assignment)
            .map_err(KafkaError::client("assigning partitions"))?;
        let cursors = Cursors::new(plans, Instant::now());
        self.check_positions_within_log(&cursors);
        Ok(cursors)
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
        shutdown: Shutdown<'_>,
    ) -> Result<Exit, RunError> {
        processor.restore(&self.store)?;
        let mut cursors = self.assign()?;
        processor.assigned(&cursors.assignment())?;
        let mut replay = ReplayProgress::new(self.name, &cursors, &self.store);
        self.live.store(replay.finished, Ordering::Relaxed);
        let records_in: Vec<IntCounter> = self
            .spec
            .inputs
            .iter()
            .map(|t| self.metrics.records_in_for(t))
            .collect();
        let mut shutdown: Fused<'_> = shutdown.fuse();
        let mut emitter = Emitter::new(self.name);
        let mut paused: Vec<(Arc<str>, i32)> = Vec::new();
        let mut consume_backoff = Backoff::new("consume")
            .counting(self.metrics.errors.with_label_values(&["kafka_consume"]));
        let mut stall_reported: HashSet<(Arc<str>, i32)> = HashSet::new();

        loop {
            let mut batch = Batch {
                txn: self.store.begin(),
                deliveries: Vec::new(),
                touched: Vec::new(),
                records: 0,
                in_transaction: false,
                started: None,
                waiting: Duration::ZERO,
            };
            let deadline = tokio::time::Instant::now() + self.batch.max_wait();
            let mut stopping = false;
            while batch.records < self.batch.max_records {
                let asked = Instant::now();
                let received = tokio::select! {
                    biased;
                    () = &mut shutdown => { stopping = true; break; }
                    received = tokio::time::timeout_at(deadline, self.consumer.recv()) => received,
                };
                let answered = Instant::now();
                if batch.started.is_some() {
                    batch.waiting += answered.duration_since(asked);
                }
                let message = match received {
                    Err(_elapsed) => break,
                    Ok(Err(e)) => {
                        self.consume_error(&e, &cursors);
                        let wait = consume_backoff.delay(&e);
                        tokio::select! {
                            biased;
                            () = &mut shutdown => { stopping = true; break; }
                            () = tokio::time::sleep(wait) => continue,
                        }
                    }
                    Ok(Ok(message)) => message,
                };
                consume_backoff.recovered();
                batch.started.get_or_insert(answered);
                let handled = self
                    .handle(
                        &message,
                        &mut cursors,
                        &mut processor,
                        &mut batch,
                        &mut emitter,
                        &mut replay,
                        &mut paused,
                        &records_in,
                        &mut shutdown,
                    )
                    .await?;
                if let Handled::Stopping = handled {
                    stopping = true;
                    break;
                }
            }

            if batch.records > 0 {
                // A checkpoint may wait long (a broker or database that is
                // down): a shutdown asked for meanwhile gives it the
                // shutdown deadline to finish, then abandons the batch,
                // which is safe at every await point of the checkpoint
                // (nothing is committed until its last, synchronous steps).
                let deadline = self.shutdown_deadline;
                let finished = {
                    let mut checkpoint =
                        std::pin::pin!(self.checkpoint(batch, &cursors, &mut processor));
                    if stopping {
                        tokio::time::timeout(deadline, &mut checkpoint).await.ok()
                    } else {
                        tokio::select! {
                            result = &mut checkpoint => Some(result),
                            () = &mut shutdown => {
                                stopping = true;
                                tokio::time::timeout(deadline, &mut checkpoint).await.ok()
                            }
                        }
                    }
                };
                match finished {
                    Some(result) => result?,
                    None => {
                        processor.abandoned();
                        tracing::warn!(
                            ?deadline,
                            "shutdown deadline passed before the last batch committed; it will be replayed"
                        );
                        return Ok(Exit::ForcedShutdown);
                    }
                }
                replay.tick(&cursors, &self.store);
                self.live.store(replay.finished, Ordering::Relaxed);
                if !cursors.holding() && !paused.is_empty() {
                    let mut resumed = TopicPartitionList::new();
                    for (topic, partition) in paused.drain(..) {
                        resumed.add_partition(&topic, partition);
                    }
                    self.consumer
                        .resume(&resumed)
                        .map_err(KafkaError::client("resuming held partitions"))?;
                }
            }
            if cursors.holding() {
                self.report_stalls(&mut cursors, &mut stall_reported);
            } else if !stall_reported.is_empty() {
                for (topic, partition) in stall_reported.drain() {
                    self.stuck_gauge(&topic, partition, "replay_target_beyond_log_end")
                        .set(0);
                }
            }
            if stopping {
                self.commit_offsets_before_exit(&cursors).await;
                self.store.flush()?;
                tracing::info!(processor = self.name, "shut down cleanly");
                return Ok(Exit::Success);
            }
        }
    }

    /// Commits the group's offsets and waits for the broker's answer,
    /// retrying failures until the shutdown deadline. The checkpoints commit
    /// without waiting, and their last commit may have failed; a restore
    /// after a clean stop must still find every emitted record marked
    /// durable, or it would process (and emit) part of it again. With no
    /// coordinator reachable, one attempt waits as long as librdkafka's own
    /// close waits for outstanding commits (`session.timeout.ms`).
    async fn commit_offsets_before_exit(&self, cursors: &Cursors) {
        if self.kafka.transactions {
            return; // every batch's offsets were committed with its outputs
        }
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, cursor) in cursors.iter() {
            if cursor.durable() > 0
                && let Err(e) =
                    offsets.add_partition_offset(topic, partition, Offset::Offset(cursor.durable()))
            {
                tracing::warn!(error = %e, "recording offsets to commit");
            }
        }
        if offsets.count() == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_deadline;
        let mut backoff = Backoff::new("final offset commit")
            .counting(self.metrics.errors.with_label_values(&["offset_commit"]));
        loop {
            let committed =
                tokio::task::block_in_place(|| self.consumer.commit(&offsets, CommitMode::Sync));
            let Err(e) = committed else { return };
            let wait = backoff.delay(&e);
            if tokio::time::Instant::now() + wait >= deadline {
                tracing::warn!(error = %e, "could not commit group offsets before exit; a restore will replay less and process the rest again");
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn stuck_gauge(&self, topic: &str, partition: i32, reason: &str) -> prometheus::IntGauge {
        self.metrics
            .stuck
            .with_label_values(&[topic, &partition.to_string(), reason])
    }

    /// A replay whose partition stopped short of its target cannot lift the
    /// hold on new input by itself: say so, once per partition, and set the
    /// metric.
    fn report_stalls(&self, cursors: &mut Cursors, reported: &mut HashSet<(Arc<str>, i32)>) {
        for (topic, partition, cursor) in cursors.stalled(Instant::now()) {
            if reported.insert((topic.clone(), partition)) {
                self.stuck_gauge(&topic, partition, "replay_target_beyond_log_end")
                    .set(1);
                tracing::error!(
                    processor = self.name,
                    topic = %topic,
                    partition,
                    position = cursor.next,
                    committed = cursor.replay_until,
                    "replay cannot finish: the group's committed offset lies beyond what the log holds (topic re-created, or a broker that lost its log?); new input waits. Reset the group's offsets or use another kafka.group"
                );
            }
        }
    }

    /// A store whose positions lie beyond the end of the log waits forever
    /// for records that will never come: report it loudly at start (Kafka
    /// also answers such a fetch with an out-of-range error, see
    /// [`Runtime::consume_error`]; tansu answers nothing).
    fn check_positions_within_log(&self, cursors: &Cursors) {
        let delete_policy = |topic: &str| {
            self.topology
                .topic(topic)
                .is_ok_and(|t| t.cleanup_policy.as_kafka() == "delete")
        };
        let positions: Vec<(String, i32, i64)> = cursors
            .iter()
            .filter(|(topic, _, _)| delete_policy(topic))
            .map(|(topic, partition, cursor)| (topic.to_string(), partition, cursor.next))
            .collect();
        let beyond = match crate::kafka::positions_beyond_log(
            &self.kafka,
            &positions,
            Duration::from_secs(3),
        ) {
            Ok(beyond) => beyond,
            Err(e) => {
                tracing::warn!(error = %e, "could not check the store's positions against the log");
                return;
            }
        };
        for (topic, partition, next) in beyond {
            self.stuck_gauge(&topic, partition, "position_beyond_log_end")
                .set(1);
            tracing::error!(
                processor = self.name,
                topic = %topic,
                partition,
                position = next,
                "the state store's position lies beyond the end of the log: this store was built from another log (a broker that lost its data, a re-created topic). Delete the state directory (or start with --rebuild) to rebuild it by replay"
            );
        }
    }

    /// A consume error: transient ones are waited out by the caller; a
    /// position the broker says is out of range is examined here.
    fn consume_error(&self, error: &RdKafkaError, cursors: &Cursors) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AutoOffsetReset) {
            return;
        }
        // `auto.offset.reset` is `error`: a stored position outside the log.
        for (topic, partition, cursor) in cursors.iter() {
            let Ok((low, high)) =
                self.consumer
                    .fetch_watermarks(topic, partition, Duration::from_secs(5))
            else {
                continue;
            };
            if cursor.next < low {
                // Expired by retention while the processor was away: what
                // is gone cannot be processed; go on from the log start.
                tracing::warn!(
                    processor = self.name,
                    topic = %topic,
                    partition,
                    position = cursor.next,
                    log_start = low,
                    "records expired by retention before they were processed; continuing from the log start"
                );
                let _ = self
                    .consumer
                    .seek(topic, partition, Offset::Offset(low), ADMIN_TIMEOUT);
            } else if cursor.next > high {
                self.stuck_gauge(topic, partition, "position_beyond_log_end")
                    .set(1);
                tracing::error!(
                    processor = self.name,
                    topic = %topic,
                    partition,
                    position = cursor.next,
                    log_end = high,
                    "the state store's position lies beyond the end of the log: this store was built from another log (a broker that lost its data, a re-created topic). Delete the state directory (or start with --rebuild) to rebuild it by replay"
                );
            }
        }
    }

    /// Fetches the writer schema of `value` before it reaches the processor,
    /// waiting out a registry that cannot answer. `false`: shutdown came first.
    async fn prepare_schema(&self, value: &[u8], shutdown: &mut Fused<'_>) -> bool {
        let mut backoff = Backoff::new("schema registry").counting(
            self.metrics
                .errors
                .with_label_values(&["registry_unavailable"]),
        );
        loop {
            match self.decoder.prepare(value).await {
                Ok(()) => {
                    backoff.recovered();
                    return true;
                }
                Err(e) => {
                    let wait = backoff.delay(&e);
                    tokio::select! {
                        biased;
                        () = &mut *shutdown => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn handle<P: Processor>(
        &self,
        message: &BorrowedMessage<'_>,
        cursors: &mut Cursors,
        processor: &mut P,
        batch: &mut Batch<'_>,
        emitter: &mut Emitter,
        replay: &mut ReplayProgress,
        paused: &mut Vec<(Arc<str>, i32)>,
        records_in: &[IntCounter],
        shutdown: &mut Fused<'_>,
    ) -> Result<Handled, RunError> {
        let Some(index) = cursors.topic_index(message.topic()) else {
            return Ok(Handled::Passed);
        };
        let partition = message.partition();
        let offset = message.offset();
        let replaying = match cursors.verdict(index, partition, offset) {
            Verdict::Skip => return Ok(Handled::Passed),
            Verdict::Hold => {
                // A live record must see the state of *everything* already
                // emitted, or its outputs could contradict outputs of records
                // whose replay (from another partition) has not happened yet.
                let topic = cursors.topic_name(index).clone();
                let mut held = TopicPartitionList::new();
                held.add_partition(&topic, partition);
                self.consumer
                    .pause(&held)
                    .map_err(KafkaError::client("holding a partition"))?;
                self.consumer
                    .seek(&topic, partition, Offset::Offset(offset), ADMIN_TIMEOUT)
                    .map_err(KafkaError::client("holding a partition"))?;
                paused.push((topic, partition));
                return Ok(Handled::Passed);
            }
            Verdict::Replay => true,
            Verdict::Live => false,
        };
        if let Some(value) = message.payload()
            && self.avro_inputs.contains(message.topic())
            && !self.prepare_schema(value, shutdown).await
        {
            return Ok(Handled::Stopping);
        }
        records_in[index].inc();
        let record = InputRecord::from_kafka(message);
        emitter.clear();
        emitter.set_discard(replaying);
        match apply(processor, &self.decoder, &record, &mut batch.txn, emitter) {
            Ok(()) => {}
            Err(Halt::Process(e)) => return Err(e.into()),
            Err(Halt::Registry(e)) => return Err(RunError::Decode(e)),
        }
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
        cursors.advance(index, partition, offset);
        if !batch.touched.contains(&(index, partition)) {
            batch.touched.push((index, partition));
        }
        batch.records += 1;
        if replaying {
            self.metrics.replayed.inc();
            replay.record();
            return Ok(Handled::Applied);
        }
        self.metrics.duplicates_dropped.inc_by(emitter.duplicates);
        // Read only for what it is copied onto: reading any header parses
        // them all (6.5% of the aggregator's thread when read for every
        // record).
        let request_id = if emitter.records.is_empty() && emitter.dead.is_empty() {
            None
        } else {
            record.header(REQUEST_ID_HEADER)
        };
        let input = (
            cursors.topic_name(index).clone(),
            partition,
            offset,
            record.timestamp_ms,
        );
        let refused = self
            .send_outputs(batch, emitter, Some(&input), request_id)
            .await?;
        for e in refused {
            // The output can never be written: the input is dead-lettered
            // instead (the processor's other outputs for it still stand).
            let mut letter = Emitter::new(self.name);
            letter.dead_letter(&record, "OUTPUT_TOO_LARGE", e.to_string(), None);
            emitter.dead.append(&mut letter.dead);
        }
        for dead in std::mem::take(&mut emitter.dead) {
            self.send_dead_letter(batch, dead, &input, request_id)
                .await?;
        }
        Ok(Handled::Applied)
    }

    /// Enqueues what `emitter` holds for `input` (`None`: what
    /// [`Processor::flush`] emitted), refusing undeclared topics. Returns
    /// the outputs the producer refused as too large: poison, the caller
    /// decides what becomes of their input.
    async fn send_outputs(
        &self,
        batch: &mut Batch<'_>,
        emitter: &mut Emitter,
        input: Option<&Origin>,
        request_id: Option<&[u8]>,
    ) -> Result<Vec<ProduceError>, RunError> {
        let mut refused = Vec::new();
        let timestamps = std::mem::take(&mut emitter.timestamps);
        for (output, timestamp) in emitter.records.drain(..).zip(timestamps) {
            if !self.outputs.contains(&*output.topic) {
                return Err(RunError::UndeclaredOutput {
                    processor: self.name,
                    topic: output.topic.to_string(),
                });
            }
            let outgoing = Outgoing {
                topic: &output.topic,
                key: &output.key,
                value: output.value.as_deref(),
                id: Some(&output.id),
                tenant: output.tenant.as_deref(),
                request_id,
                timestamp_ms: timestamp.or(input.and_then(|i| i.3)),
            };
            match self.send(batch, &outgoing, &output.topic, input).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Poison => refused.push(e),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(refused)
    }

    /// Runs the processor's [`Processor::flush`] and enqueues what it
    /// emitted: after the flush, so an answer never precedes its effect.
    async fn flush<P: Processor>(
        &self,
        batch: &mut Batch<'_>,
        processor: &mut P,
    ) -> Result<(), RunError> {
        let mut flushed = Emitter::new(self.name);
        processor.flush(&mut flushed).await?;
        if let Some(e) = self
            .send_outputs(batch, &mut flushed, None, None)
            .await?
            .into_iter()
            .next()
        {
            // No single input to dead-letter in its place.
            return Err(e.into());
        }
        for dead in std::mem::take(&mut flushed.dead) {
            let origin: Origin = (
                Arc::from(dead.source_topic.as_str()),
                dead.source_partition,
                dead.source_offset,
                dead.source_timestamp,
            );
            self.send_dead_letter(batch, dead, &origin, None).await?;
        }
        Ok(())
    }

    /// Writes a dead letter, cut down to fit the producer's message limit.
    async fn send_dead_letter(
        &self,
        batch: &mut Batch<'_>,
        dead: DeadLetter,
        input: &Origin,
        request_id: Option<&[u8]>,
    ) -> Result<(), RunError> {
        let Some(dlq) = &self.dlq else {
            return Err(RunError::NoDeadLetterTopic(self.name));
        };
        self.metrics
            .dlq_records
            .with_label_values(&[dead.reason.as_str()])
            .inc();
        tracing::debug!(reason = %dead.reason, id = %dead.id, "dead-lettered");
        let dead = crate::dead_letter::fit(dead, self.producer.max_message_bytes());
        let value = dlq.encode(&dead)?;
        let outgoing = Outgoing {
            topic: DLQ_TOPIC,
            key: dead.original_key.as_deref().unwrap_or_default(),
            value: Some(&value),
            id: Some(&dead.id),
            tenant: dead.tenant_id.as_deref(),
            request_id,
            timestamp_ms: input.3,
        };
        Ok(self
            .send(batch, &outgoing, &self.dlq_topic, Some(input))
            .await?)
    }

    /// Enqueues one output of the batch, waiting out transient refusals.
    async fn send(
        &self,
        batch: &mut Batch<'_>,
        record: &Outgoing<'_>,
        topic: &Arc<str>,
        input: Option<&Origin>,
    ) -> Result<(), ProduceError> {
        if self.kafka.transactions && !batch.in_transaction {
            self.producer
                .inner()
                .begin_transaction()
                .map_err(|source| ProduceError::Kafka {
                    topic: record.topic.to_string(),
                    source,
                })?;
            batch.in_transaction = true;
        }
        let mut backoff = Backoff::new("produce").counting(self.produce_errors.clone());
        loop {
            match self.producer.enqueue(record).await {
                Ok(delivery) => {
                    batch.deliveries.push(Pending {
                        topic: topic.clone(),
                        input: input.cloned(),
                        delivery,
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Retryable => backoff.wait(&e).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Flushes the processor's external effects, waits for every output of
    /// the batch, then commits state and positions together, then the group
    /// offsets.
    async fn checkpoint<P: Processor>(
        &self,
        mut batch: Batch<'_>,
        cursors: &Cursors,
        processor: &mut P,
    ) -> Result<(), RunError> {
        let checkpoint_began = Instant::now();
        if let Some(started) = batch.started {
            let span = checkpoint_began.saturating_duration_since(started);
            let phases = &self.metrics.batch_seconds;
            phases.input.inc_by(batch.waiting.as_secs_f64());
            phases
                .process
                .inc_by(span.saturating_sub(batch.waiting).as_secs_f64());
        }
        processor.save(&mut batch.txn)?;
        self.flush(&mut batch, processor).await?;
        let delivering = Instant::now();
        self.metrics
            .batch_seconds
            .flush
            .inc_by(delivering.duration_since(checkpoint_began).as_secs_f64());
        let Batch {
            txn,
            deliveries,
            touched,
            in_transaction,
            started,
            ..
        } = batch;
        let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut late_letters = Vec::new();
        for pending in deliveries {
            match self
                .producer
                .deliver(&pending.topic, pending.delivery)
                .await
            {
                Ok(()) => *delivered.entry(pending.topic).or_default() += 1,
                // The broker's limit is below the producer's: the output can
                // never be written. Dead-letter its input (still on its topic).
                Err(e @ ProduceError::TooLarge { .. }) if &*pending.topic != DLQ_TOPIC => {
                    match pending.input {
                        Some(input) => late_letters.push((input, e)),
                        None => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        for (input, e) in late_letters {
            let (topic, partition, offset, timestamp) = &input;
            let letter = DeadLetter {
                id: DeadLetter::id_for(topic, *partition, *offset),
                reason: "OUTPUT_TOO_LARGE".into(),
                detail: format!(
                    "{e}; the broker refused it (its limit is below the producer's message.max.bytes)"
                ),
                processor: self.name.to_string(),
                tenant_id: None,
                source_topic: topic.to_string(),
                source_partition: *partition,
                source_offset: *offset,
                source_timestamp: *timestamp,
                original_key: None,
                original_value: None,
                original_headers: Vec::new(),
                truncated: true,
                original_value_length: None,
                original_value_sha256: None,
            };
            let mut side = Batch {
                txn: self.store.begin(),
                deliveries: Vec::new(),
                touched: Vec::new(),
                records: 0,
                in_transaction,
                started: None,
                waiting: Duration::ZERO,
            };
            self.send_dead_letter(&mut side, letter, &input, None)
                .await?;
            for pending in side.deliveries {
                self.producer
                    .deliver(&pending.topic, pending.delivery)
                    .await?;
                *delivered.entry(pending.topic).or_default() += 1;
            }
        }
        failpoint::hit(failpoint::OUTPUTS_DURABLE);
        let committing = Instant::now();
        self.metrics
            .batch_seconds
            .deliver
            .inc_by(committing.duration_since(delivering).as_secs_f64());

        let mut positions = Positions::new();
        let mut offsets = TopicPartitionList::new();
        for &(index, partition) in &touched {
            if let Some(cursor) = cursors.get(index, partition) {
                let topic = cursors.topic_name(index);
                positions.insert(TopicPartition::new(&**topic, partition), cursor.next);
                offsets
                    .add_partition_offset(topic, partition, Offset::Offset(cursor.durable()))
                    .map_err(KafkaError::client("recording offsets"))?;
            }
        }

        if in_transaction {
            let group = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::NoGroupMetadata)?;
            let producer = self.producer.inner();
            tokio::task::block_in_place(|| {
                producer
                    .send_offsets_to_transaction(&offsets, &group, ADMIN_TIMEOUT)
                    .and_then(|()| producer.commit_transaction(ADMIN_TIMEOUT))
            })
            .map_err(KafkaError::client("committing the transaction"))?;
        }

        self.store.commit(txn, &positions)?;
        processor.committed();
        failpoint::hit(failpoint::STATE_COMMITTED);

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
        self.metrics
            .batch_seconds
            .commit
            .inc_by(committing.elapsed().as_secs_f64());
        for (topic, count) in delivered {
            self.metrics
                .records_out
                .with_label_values(&[&topic])
                .inc_by(count);
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
mod tests {
    use super::*;
    use rdkafka::ClientConfig;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    const TOPOLOGY: &str = "schema_dir: schemas
topics:
  in:
    description: test input
    partitions: 1
    retention_ms: 86400000
    classification: internal
    format: json
  out:
    description: test output
    partitions: 1
    retention_ms: 86400000
    classification: internal
    schema: echo.avsc
  elsewhere:
    description: a topic the processor does not declare
    partitions: 1
    retention_ms: 86400000
    classification: internal
    format: json
processors:
  feeder:
    description: test producer
    external: true
    outputs: [in, elsewhere]
  reader:
    description: test consumer
    external: true
    inputs: [out, elsewhere]
  echo:
    description: copies `in` to a topic
    group: test-echo
    inputs: [in]
    outputs: [out]
";

    /// Emits every input to `topic`.
    struct EmitTo(&'static str);

    impl Processor for EmitTo {
        type Input<'r> = ();

        fn process(
            &mut self,
            record: &InputRecord<'_>,
            (): (),
            _txn: &mut StateTxn<'_>,
            out: &mut Emitter,
        ) -> Result<(), ProcessError> {
            out.emit(OutputRecord {
                topic: Arc::from(self.0),
                key: b"k".to_vec(),
                value: record.value.map(<[u8]>::to_vec),
                id: format!("echo/{}", record.offset),
                tenant: None,
            });
            Ok(())
        }
    }

    async fn run_echo(target: &'static str) -> Result<Exit, RunError> {
        run_echo_on(&MockCluster::new(1).unwrap(), target).await
    }

    /// Feeds one record to a processor emitting to `target`, stopping it
    /// cleanly after 3 s.
    async fn run_echo_on(
        cluster: &MockCluster<'_, DefaultProducerContext>,
        target: &'static str,
    ) -> Result<Exit, RunError> {
        for topic in ["in", "out", "elsewhere"] {
            cluster.create_topic(topic, 1, 1).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("topology.yaml");
        std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
        std::fs::write(&topology, TOPOLOGY).unwrap();
        std::fs::write(
            dir.path().join("schemas/echo.avsc"),
            r#"{"type":"record","name":"Echo","fields":[{"name":"v","type":"bytes"}]}"#,
        )
        .unwrap();
        let config_path = dir.path().join("echo.yaml");
        std::fs::write(
            &config_path,
            format!(
                "topology: {}\nkafka: {{bootstrap_servers: '{}'}}\nregistry: {{url: 'http://127.0.0.1:9'}}\nstate_dir: {}\nbatch: {{max_records: 10, max_wait_ms: 20}}\nsettings: {{}}\n",
                topology.display(),
                cluster.bootstrap_servers(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let config: Config<serde_json::Value> = Config::load(Some(&config_path)).unwrap();
        let producer = TrellisProducer::create(&config.kafka).unwrap();
        let record = Outgoing {
            topic: "in",
            key: b"k",
            value: Some(b"hello"),
            id: Some("in-1"),
            tenant: None,
            request_id: Some(b"req-7"),
            timestamp_ms: None,
        };
        producer
            .send(&record, Duration::from_secs(10))
            .await
            .unwrap();
        let runtime = Runtime::start("echo", &config).await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(20),
            runtime.run(
                EmitTo(target),
                Box::pin(tokio::time::sleep(Duration::from_secs(3))),
            ),
        )
        .await
        .expect("the loop answers")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_processor_emitting_to_an_undeclared_topic_is_refused() {
        let err = run_echo("elsewhere").await.unwrap_err();
        assert!(
            matches!(&err, RunError::UndeclaredOutput { processor: "echo", topic } if topic == "elsewhere"),
            "{err}"
        );
        assert!(err.to_string().contains("does not list among its outputs"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_processor_emitting_to_its_declared_output_runs() {
        let cluster = MockCluster::new(1).unwrap();
        assert_eq!(run_echo_on(&cluster, "out").await.unwrap(), Exit::Success);
        // It ran: the input was consumed and its output reached `out`.
        with_first_output(&cluster, |message| {
            assert_eq!(message.payload(), Some(b"hello".as_slice()));
        });
    }

    /// Calls `check` with the first record on `out` of `cluster`.
    fn with_first_output(
        cluster: &MockCluster<'_, DefaultProducerContext>,
        check: impl FnOnce(&rdkafka::message::BorrowedMessage<'_>),
    ) {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "test-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        reader.subscribe(&["out"]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => return check(&message),
                Some(Err(e)) => panic!("{e}"),
                None => assert!(Instant::now() < deadline, "no output on `out`"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_clean_stop_leaves_the_group_offset_at_what_was_processed() {
        let cluster = MockCluster::new(1).unwrap();
        // The checkpoint's commit, sent without waiting, is refused.
        cluster.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
        );
        assert_eq!(run_echo_on(&cluster, "out").await.unwrap(), Exit::Success);
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "test-echo")
            .create()
            .unwrap();
        let mut asked = TopicPartitionList::new();
        asked.add_partition("in", 0);
        let committed = reader
            .committed_offsets(asked, Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            committed.find_partition("in", 0).unwrap().offset(),
            Offset::Offset(1),
            "the one record is marked durable"
        );
    }

    /// Headers are parsed only when read; an output must still carry its
    /// input's request id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_output_carries_its_inputs_request_id() {
        let cluster = MockCluster::new(1).unwrap();
        assert_eq!(run_echo_on(&cluster, "out").await.unwrap(), Exit::Success);
        with_first_output(&cluster, |message| {
            let record = InputRecord::from_kafka(message);
            assert_eq!(record.header(REQUEST_ID_HEADER), Some(b"req-7".as_slice()));
            assert_eq!(record.value, Some(b"hello".as_slice()));
        });
    }
}
