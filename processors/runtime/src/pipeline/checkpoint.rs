//! A live batch made durable: its outputs acknowledged by the broker, then
//! its state and the positions it includes committed together, then the
//! group offsets (see the delivery semantics in [`super`]).

use std::time::Instant;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use super::Runtime;
use super::run::LiveBatch;
use crate::batch::BatchRunner;
use crate::error::RunError;
use crate::failpoint;
use crate::kafka::{ADMIN_TIMEOUT, KafkaError};
use crate::processor::Processor;
use crate::replay::Cursors;

impl Runtime {
    /// Ends the batch ([`BatchRunner::close`]: the working set saved, the
    /// processor's external effects flushed), waits for every output of the
    /// batch, then commits state and positions together, then the group
    /// offsets.
    pub(super) async fn checkpoint<P: Processor>(
        &self,
        runner: &BatchRunner<'_>,
        live: LiveBatch<'_, '_>,
        cursors: &Cursors,
        processor: &mut P,
    ) -> Result<(), RunError> {
        let LiveBatch {
            mut batch,
            mut outputs,
            started,
            waiting,
        } = live;
        let checkpoint_began = Instant::now();
        if let Some(started) = started {
            let span = checkpoint_began.saturating_duration_since(started);
            let phases = &self.metrics.batch_seconds;
            phases.input.inc_by(waiting.as_secs_f64());
            phases
                .process
                .inc_by(span.saturating_sub(waiting).as_secs_f64());
        }
        runner.close(processor, &mut batch, &mut outputs).await?;
        let delivering = Instant::now();
        self.metrics
            .batch_seconds
            .flush
            .inc_by(delivering.duration_since(checkpoint_began).as_secs_f64());
        let delivered = outputs.settle().await?;
        failpoint::hit(failpoint::OUTPUTS_DURABLE);
        let committing = Instant::now();
        self.metrics
            .batch_seconds
            .deliver
            .inc_by(committing.duration_since(delivering).as_secs_f64());

        let positions = batch.positions();
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, _) in batch.advanced() {
            if let Some(cursor) = cursors
                .topic_index(topic)
                .and_then(|index| cursors.get(index, partition))
            {
                offsets
                    .add_partition_offset(topic, partition, Offset::Offset(cursor.durable()))
                    .map_err(KafkaError::client("recording offsets"))?;
            }
        }

        let in_transaction = outputs.in_transaction;
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

        self.store.commit(batch.txn, &positions)?;
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
