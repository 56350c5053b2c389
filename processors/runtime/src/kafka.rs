//! Kafka clients as Trellis configures them, topic checks and topology
//! provisioning through the admin API.
//!
//! Nothing here reads high watermarks: tansu reports them wrongly (INFRA.md),
//! and Trellis never needs them. Replay targets come from committed offsets,
//! ends of input from what producers were told on delivery.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::topology::Topology;

/// Timeout for metadata and admin calls.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Header carrying a record's stable id (consumers drop duplicates by it).
pub const ID_HEADER: &str = "trellis.id";
/// Header carrying the tenant of every record.
pub const TENANT_HEADER: &str = "tenant";
/// Header carrying the ingest request id through the topology.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// librdkafka refused or failed a call.
    #[error("kafka: {context}: {source}")]
    Client {
        /// What Trellis was doing.
        context: &'static str,
        /// What librdkafka said.
        source: rdkafka::error::KafkaError,
    },
    /// The topic is not on the broker.
    #[error("kafka: topic `{0}` does not exist")]
    UnknownTopic(String),
    /// Creating a declared topic failed.
    #[error("kafka: creating topic `{topic}`: {code}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
    /// A transaction needs the consumer's group metadata, which is missing.
    #[error("kafka: no consumer group metadata for the transaction")]
    NoGroupMetadata,
}

impl KafkaError {
    /// A `map_err` adapter naming what Trellis was doing.
    pub fn client(context: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| Self::Client { context, source }
    }
}

impl From<rdkafka::error::KafkaError> for KafkaError {
    fn from(source: rdkafka::error::KafkaError) -> Self {
        Self::Client {
            context: "broker call",
            source,
        }
    }
}

/// Base client config: brokers plus the operator's passthrough properties.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.bootstrap_servers);
    for (key, value) in &kafka.client {
        config.set(key, value);
    }
    config
}

/// Producer config: idempotent, all acks, batched.
pub fn producer_config(kafka: &KafkaConfig, transactional_id: Option<&str>) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("message.timeout.ms", "60000");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config
}

/// Consumer config for manual assignment: Trellis stores positions itself and
/// commits group offsets only after a batch's outputs are durable.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut config = client_config(kafka);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Every partition is assigned at an explicit offset; a position the
        // broker says is out of range is reported, not silently reset
        // (see `pipeline`).
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "false")
        .set(
            "isolation.level",
            if kafka.transactions {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        );
    fetch_tuning(&mut config, kafka);
    config
}

/// `kafka.fetch_min_bytes` and `kafka.fetch_wait_max_ms`, for a consumer.
fn fetch_tuning(config: &mut ClientConfig, kafka: &KafkaConfig) {
    if let Some(bytes) = kafka.fetch_min_bytes {
        config.set("fetch.min.bytes", bytes.to_string());
    }
    if let Some(ms) = kafka.fetch_wait_max_ms {
        config.set("fetch.wait.max.ms", ms.to_string());
    }
}

/// Partition counts of every topic the broker has.
///
/// # Errors
/// [`KafkaError`] if the broker cannot be reached.
pub fn topic_partitions(kafka: &KafkaConfig) -> Result<BTreeMap<String, i32>, KafkaError> {
    let consumer: BaseConsumer = client_config(kafka).create()?;
    let metadata = consumer.fetch_metadata(None, ADMIN_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_string(), t.partitions().len() as i32))
        .collect())
}

/// What `apply` did to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Created now.
    Created,
    /// Already there with the declared partition count.
    Unchanged,
    /// Already there, but with a different partition count (not changed:
    /// repartitioning moves keys and must be planned).
    Drifted {
        /// Partitions on the broker.
        actual: i32,
        /// Partitions declared.
        declared: i32,
    },
}

/// Creates every declared topic that is missing, with its declared
/// partitions, retention and cleanup policy, and `replication` replicas
/// (1 for the local single-broker stack). Idempotent.
///
/// # Errors
/// [`KafkaError`] on a broker failure other than "already exists".
pub async fn apply_topology(
    kafka: &KafkaConfig,
    topology: &Topology,
    replication: i32,
) -> Result<BTreeMap<String, TopicOutcome>, KafkaError> {
    let existing = topic_partitions(kafka)?;
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let mut outcomes = BTreeMap::new();
    let retention: BTreeMap<&str, String> = topology
        .topics
        .iter()
        .map(|(name, spec)| (name.as_str(), spec.retention_ms.to_string()))
        .collect();
    let mut to_create = Vec::new();
    for (name, spec) in &topology.topics {
        match existing.get(name) {
            Some(&actual) if actual == spec.partitions => {
                outcomes.insert(name.clone(), TopicOutcome::Unchanged);
            }
            Some(&actual) => {
                outcomes.insert(
                    name.clone(),
                    TopicOutcome::Drifted {
                        actual,
                        declared: spec.partitions,
                    },
                );
            }
            None => to_create.push(
                // tansu reports only the configs set at creation (INFRA.md),
                // so every config Trellis relies on is set explicitly.
                NewTopic::new(name, spec.partitions, TopicReplication::Fixed(replication))
                    .set("retention.ms", &retention[name.as_str()])
                    .set("cleanup.policy", spec.cleanup_policy.as_kafka()),
            ),
        }
    }
    if !to_create.is_empty() {
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        for result in admin.create_topics(&to_create, &options).await? {
            match result {
                Ok(name) => {
                    outcomes.insert(name, TopicOutcome::Created);
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    outcomes.insert(name, TopicOutcome::Unchanged);
                }
                Err((name, code)) => {
                    return Err(KafkaError::CreateTopic { topic: name, code });
                }
            }
        }
    }
    Ok(outcomes)
}

/// A read of every partition of one topic from its start (see [`scan_topic`]).
pub struct TopicScan {
    consumer: BaseConsumer,
    /// Partitions not yet read up to the high watermark they had when the
    /// scan began (`i64::MAX`: unknown, never reached).
    behind: HashMap<i32, i64>,
    estimate: u64,
}

impl TopicScan {
    /// Assigns every partition of `topic` from its start and notes where
    /// each one ended when the scan began.
    ///
    /// # Errors
    /// [`KafkaError`] if the topic is unknown or the broker unreachable.
    pub fn open(kafka: &KafkaConfig, topic: &str) -> Result<Self, KafkaError> {
        use rdkafka::{Offset, TopicPartitionList};
        let mut config = client_config(kafka);
        config
            .set("group.id", "trellis-scan")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.max.bytes", "52428800")
            .set("queued.min.messages", "200000");
        fetch_tuning(&mut config, kafka);
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(topic), ADMIN_TIMEOUT)?;
        let partitions = metadata
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .ok_or_else(|| KafkaError::UnknownTopic(topic.to_string()))?;
        let mut assignment = TopicPartitionList::new();
        let mut behind = HashMap::new();
        let mut estimate = 0;
        for p in 0..partitions {
            match consumer.fetch_watermarks(topic, p, ADMIN_TIMEOUT) {
                Ok((low, high)) if high > low => {
                    estimate += (high - low) as u64;
                    behind.insert(p, high);
                }
                Ok(_) => {}
                Err(_) => {
                    behind.insert(p, i64::MAX);
                }
            }
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(Self {
            consumer,
            behind,
            estimate,
        })
    }

    /// The broker's estimate of how many records the topic holds.
    #[must_use]
    pub const fn estimate(&self) -> u64 {
        self.estimate
    }

    /// Calls `visit` with each record, in log order per partition, until the
    /// topic has been read whole or `done` says so; returns how many records
    /// were read.
    ///
    /// The log ends where the high watermarks stood when the scan began, once
    /// nothing more arrives for a short settle time. Tansu's memory storage
    /// reports the last *batch's base* offset + 1 as the high watermark (see
    /// INFRA.md), so reaching it is never taken as the end on its own: a batch
    /// arrives whole, and the settle time drains it (a fixed time, so a topic
    /// written meanwhile cannot keep the scan going). A partition ending in
    /// transaction markers counts as reached when its fetch position passes
    /// the watermark; one whose watermark could not be read ends after
    /// `idle` without records. A slow broker therefore cannot cut a read
    /// short: until every partition is reached, only `idle` of silence ends
    /// it.
    ///
    /// # Errors
    /// [`KafkaError`] if a fetch fails.
    pub fn run(
        mut self,
        idle: Duration,
        mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
        mut done: impl FnMut() -> bool,
    ) -> Result<u64, KafkaError> {
        use rdkafka::Message;
        let settle = idle.min(SCAN_SETTLE);
        let mut last = std::time::Instant::now();
        // Once every partition is reached: a fixed end, so a topic still
        // being written cannot keep the scan going.
        let mut settled_at = None;
        let mut seen = 0;
        loop {
            if done() {
                break;
            }
            if self.behind.is_empty() {
                let end = *settled_at.get_or_insert_with(|| std::time::Instant::now() + settle);
                if std::time::Instant::now() >= end {
                    break;
                }
            } else if last.elapsed() >= idle {
                break;
            }
            match self.consumer.poll(Duration::from_millis(20)) {
                Some(Ok(message)) => {
                    last = std::time::Instant::now();
                    if self
                        .behind
                        .get(&message.partition())
                        .is_some_and(|high| message.offset() + 1 >= *high)
                    {
                        self.behind.remove(&message.partition());
                    }
                    visit(&message);
                    seen += 1;
                }
                Some(Err(e)) => return Err(e.into()),
                // A partition ending in transaction markers has no record at
                // its watermark: its fetch position passing it says the same.
                None if !self.behind.is_empty() => self.reached_by_position(),
                None => {}
            }
        }
        Ok(seen)
    }

    fn reached_by_position(&mut self) {
        use rdkafka::Offset;
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for elem in positions.elements() {
            if let Offset::Offset(at) = elem.offset()
                && self
                    .behind
                    .get(&elem.partition())
                    .is_some_and(|high| at >= *high)
            {
                self.behind.remove(&elem.partition());
            }
        }
    }
}

/// How long a scan that has reached every partition's high watermark waits
/// for the rest of the last batches (they arrive with the batch's first).
const SCAN_SETTLE: Duration = Duration::from_millis(200);

/// Reads every partition of `topic` from the beginning, calling `visit` for
/// each record, until the topic has been read whole (see [`TopicScan::run`]
/// for where that is and what `idle` bounds) or `done` says so.
///
/// # Errors
/// [`KafkaError`] if the topic is unknown or the broker unreachable.
pub fn scan_topic(
    kafka: &KafkaConfig,
    topic: &str,
    idle: Duration,
    visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
    done: impl FnMut() -> bool,
) -> Result<u64, KafkaError> {
    TopicScan::open(kafka, topic)?.run(idle, visit, done)
}

/// Which of `positions` (topic, partition, offset) lie beyond the log: a
/// position `n > 0` is within the log when the record at `n - 1` (or a later
/// one) can be read. Found by reading, not from high watermarks, which tansu
/// reports wrongly (INFRA.md). Compacted topics may have removed the record
/// at `n - 1`: callers check only topics with `delete` cleanup.
///
/// # Errors
/// [`KafkaError`] if the broker cannot be reached.
pub fn positions_beyond_log(
    kafka: &KafkaConfig,
    positions: &[(String, i32, i64)],
    timeout: Duration,
) -> Result<Vec<(String, i32, i64)>, KafkaError> {
    use rdkafka::{Message, Offset, TopicPartitionList};
    let mut pending: BTreeMap<(String, i32), i64> = positions
        .iter()
        .filter(|(_, _, n)| *n > 0)
        .map(|(t, p, n)| ((t.clone(), *p), *n))
        .collect();
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mut config = client_config(kafka);
    config
        .set("group.id", "trellis-position-check")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "error");
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), next) in &pending {
        assignment.add_partition_offset(topic, *partition, Offset::Offset(next - 1))?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + timeout;
    while !pending.is_empty() && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) {
            let key = (message.topic().to_string(), message.partition());
            if pending
                .get(&key)
                .is_some_and(|next| message.offset() >= next - 1)
            {
                pending.remove(&key);
            }
        }
    }
    Ok(pending.into_iter().map(|((t, p), n)| (t, p, n)).collect())
}

/// Per partition of `topic` (`topic/partition`): the offset after its last
/// record, in the form progress waits compare against. Found by reading the
/// topic ([`scan_topic`]), not from high watermarks alone: tansu's stop at
/// the last batch's first record on memory storage (INFRA.md).
///
/// # Errors
/// [`KafkaError`] if the topic is unknown or the broker unreachable.
pub fn end_offsets(kafka: &KafkaConfig, topic: &str) -> Result<BTreeMap<String, i64>, KafkaError> {
    use rdkafka::Message;
    let mut ends = BTreeMap::new();
    scan_topic(
        kafka,
        topic,
        Duration::from_secs(10),
        |m| {
            let end = ends
                .entry(format!("{topic}/{}", m.partition()))
                .or_insert(0);
            *end = (*end).max(m.offset() + 1);
        },
        || false,
    )?;
    Ok(ends)
}

/// Writes `event` to `audit.events` (keyed and tagged by its tenant) and
/// waits until the broker has it: callers act only once their action is on
/// the record.
///
/// # Errors
/// The encoding failure, or the delivery failure once retries ran out.
pub async fn produce_audit_event(
    producer: &crate::producer::TrellisProducer,
    encoder: &crate::schema::AvroEncoder,
    event: &trellis_records::AuditEvent,
) -> Result<(), AuditEventError> {
    let value = encoder.encode(event)?;
    let tenant = event.tenant_id.clone().unwrap_or_default();
    producer
        .send(
            &crate::producer::Outgoing {
                topic: trellis_records::AUDIT_EVENTS_TOPIC,
                key: tenant.as_bytes(),
                value: Some(&value),
                id: Some(&event.event_id),
                tenant: Some(&tenant),
                request_id: None,
                timestamp_ms: None,
            },
            Duration::from_secs(10),
        )
        .await?;
    Ok(())
}

/// An audit event could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditEventError {
    /// It did not fit its schema (a bug).
    #[error(transparent)]
    Encode(#[from] crate::schema::SchemaError),
    /// The broker did not take it in time.
    #[error(transparent)]
    Produce(#[from] crate::producer::ProduceError),
}
