//! A live batch's outputs and dead letters, handed to the broker: enqueued
//! as the batch goes (transient refusals waited out), awaited together at
//! its checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use rdkafka::producer::{DeliveryFuture, Producer};
use trellis_records::{DLQ_TOPIC, DeadLetter};

use super::Runtime;
use crate::backoff::Backoff;
use crate::batch::{Origin, Outputs};
use crate::emitter::OutputRecord;
use crate::error::{ErrorKind, RunError};
use crate::producer::{Outgoing, ProduceError};

/// One produced record awaiting its acknowledgement.
struct Pending {
    topic: Arc<str>,
    /// The input that caused it; `None` for what [`crate::Processor::flush`]
    /// emitted for the batch as a whole.
    input: Option<Origin>,
    delivery: DeliveryFuture,
}

/// The broker side of a live batch.
pub(super) struct KafkaOutputs<'r> {
    runtime: &'r Runtime,
    deliveries: Vec<Pending>,
    /// A Kafka transaction was begun for this batch (`kafka.transactions`).
    pub(super) in_transaction: bool,
}

impl<'r> KafkaOutputs<'r> {
    pub(super) fn new(runtime: &'r Runtime) -> Self {
        Self {
            runtime,
            deliveries: Vec::new(),
            in_transaction: false,
        }
    }

    /// Enqueues one record, waiting out transient refusals.
    async fn enqueue(
        &mut self,
        record: &Outgoing<'_>,
        topic: &Arc<str>,
        input: Option<&Origin>,
    ) -> Result<(), ProduceError> {
        let producer = &self.runtime.producer;
        if self.runtime.kafka.transactions && !self.in_transaction {
            producer
                .inner()
                .begin_transaction()
                .map_err(|source| ProduceError::Kafka {
                    topic: record.topic.to_string(),
                    source,
                })?;
            self.in_transaction = true;
        }
        let mut backoff = Backoff::new("produce").counting(self.runtime.produce_errors.clone());
        loop {
            match producer.enqueue(record).await {
                Ok(delivery) => {
                    self.deliveries.push(Pending {
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

    /// Waits until the broker has every record of the batch. An output the
    /// broker refuses as too large (its limit below the producer's) can
    /// never be written: its input is dead-lettered instead. Returns the
    /// records written per topic.
    ///
    /// # Errors
    /// [`RunError`] for a record that can never be written and has no
    /// input to dead-letter in its place.
    pub(super) async fn settle(&mut self) -> Result<BTreeMap<Arc<str>, u64>, RunError> {
        let producer = &self.runtime.producer;
        let mut delivered: BTreeMap<Arc<str>, u64> = BTreeMap::new();
        let mut late_letters = Vec::new();
        for pending in std::mem::take(&mut self.deliveries) {
            match producer.deliver(&pending.topic, pending.delivery).await {
                Ok(()) => *delivered.entry(pending.topic).or_default() += 1,
                // Dead-letter its input (still on its topic).
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
                processor: self.runtime.name.to_string(),
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
            self.send_dead_letter(letter, &input, None).await?;
            for pending in std::mem::take(&mut self.deliveries) {
                producer.deliver(&pending.topic, pending.delivery).await?;
                *delivered.entry(pending.topic).or_default() += 1;
            }
        }
        Ok(delivered)
    }
}

impl Outputs for KafkaOutputs<'_> {
    async fn send(
        &mut self,
        output: OutputRecord,
        timestamp_ms: Option<i64>,
        request_id: Option<&[u8]>,
        input: Option<&Origin>,
    ) -> Result<(), ProduceError> {
        let outgoing = output.outgoing(timestamp_ms, request_id);
        self.enqueue(&outgoing, &output.topic, input).await
    }

    /// Writes a dead letter, cut down to fit the producer's message limit.
    async fn send_dead_letter(
        &mut self,
        dead: DeadLetter,
        input: &Origin,
        request_id: Option<&[u8]>,
    ) -> Result<(), RunError> {
        let runtime = self.runtime;
        let Some(dlq) = &runtime.dlq else {
            return Err(RunError::NoDeadLetterTopic(runtime.name));
        };
        runtime
            .metrics
            .dlq_records
            .with_label_values(&[dead.reason.as_str()])
            .inc();
        tracing::debug!(reason = %dead.reason, id = %dead.id, "dead-lettered");
        let dead = crate::dead_letter::fit(dead, runtime.producer.max_message_bytes());
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
            .enqueue(&outgoing, &runtime.dlq_topic, Some(input))
            .await?)
    }

    fn applied(&mut self, replaying: bool, duplicates: u64) {
        let metrics = &self.runtime.metrics;
        if replaying {
            metrics.replayed.inc();
        } else {
            metrics.duplicates_dropped.inc_by(duplicates);
        }
    }
}
