//! The loop: batches of consumed records through the shared
//! [`BatchRunner`], partitions held while a replay elsewhere is unfinished,
//! shutdown with a deadline.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::FutureExt;
use prometheus::IntCounter;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::membership::{Event, Membership};
use super::outputs::KafkaOutputs;
use super::{Fused, Runtime};
use crate::backoff::Backoff;
use crate::batch::{Batch, BatchRunner};
use crate::emitter::Emitter;
use crate::error::{Exit, RunError};
use crate::kafka::{ADMIN_TIMEOUT, KafkaError};
use crate::lifecycle::Shutdown;
use crate::processor::Processor;
use crate::record::InputRecord;
use crate::replay::{Cursors, ReplayProgress, Verdict};
use trellis_records::LEASES_TOPIC;

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

/// A batch of the live loop: the shared part, its broker side, and when
/// it began (for the phase metrics).
pub(super) struct LiveBatch<'s, 'r> {
    pub(super) batch: Batch<'s>,
    pub(super) outputs: KafkaOutputs<'r>,
    pub(super) started: Option<Instant>,
    /// Time since `started` spent waiting for the consumer to deliver.
    pub(super) waiting: Duration,
}

impl Runtime {
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
        let mut membership =
            Membership::join(&self.kafka, &self.group, &self.instance_id, LEASES_TOPIC)?;
        tracing::info!(
            processor = self.name,
            instance = %self.instance_id,
            group = %format!("{}.members", self.group),
            "joined the consumer group; standing by until it grants the lease"
        );
        let mut cursors = Cursors::new(Vec::new(), Instant::now());
        let mut replay = ReplayProgress::idle(self.name);
        self.live.store(false, Ordering::Relaxed);
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
        let runner = BatchRunner {
            name: self.name,
            decoder: &self.decoder,
            declared: &self.outputs,
        };

        loop {
            let mut batch = LiveBatch {
                batch: Batch::new(&self.store),
                outputs: KafkaOutputs::new(&self),
                started: None,
                waiting: Duration::ZERO,
            };
            let deadline = tokio::time::Instant::now() + self.batch.max_wait();
            let mut stopping = false;
            let mut event = None;
            while batch.batch.records < self.batch.max_records {
                let asked = Instant::now();
                let received = tokio::select! {
                    biased;
                    () = &mut shutdown => { stopping = true; break; }
                    next = membership.next() => {
                        event = Some(next.ok_or(RunError::MembershipLost)?);
                        break;
                    }
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
                        &runner,
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

            if batch.batch.records > 0 {
                // A checkpoint may wait long (a broker or database that is
                // down): a shutdown asked for meanwhile gives it the
                // shutdown deadline to finish, then abandons the batch,
                // which is safe at every await point of the checkpoint
                // (nothing is committed until its last, synchronous steps).
                let deadline = self.shutdown_deadline;
                let finished = {
                    let mut checkpoint =
                        std::pin::pin!(self.checkpoint(&runner, batch, &cursors, &mut processor));
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
                self.live
                    .store(self.lease.held() && replay.finished, Ordering::Relaxed);
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
            match event {
                Some(Event::Assigned(partitions))
                    if partitions.contains(&0) && !self.lease.held() =>
                {
                    cursors = self.assign()?;
                    processor.assigned(&cursors.assignment())?;
                    replay = ReplayProgress::new(self.name, &cursors, &self.store);
                    self.live.store(replay.finished, Ordering::Relaxed);
                    self.ownership(true);
                }
                Some(Event::Revoked(partitions, handed_over)) => {
                    if partitions.contains(&0) && self.lease.held() {
                        // The batch in hand is durable (checkpointed above):
                        // commit how far, release the inputs, then let the
                        // group hand the lease on.
                        self.commit_offsets_before_exit(&cursors).await;
                        self.store.flush()?;
                        self.consumer
                            .unassign()
                            .map_err(KafkaError::client("releasing the inputs"))?;
                        paused.clear();
                        cursors = Cursors::new(Vec::new(), Instant::now());
                        replay = ReplayProgress::idle(self.name);
                        self.live.store(false, Ordering::Relaxed);
                        self.ownership(false);
                    }
                    let _ = handed_over.send(());
                }
                Some(Event::Fenced(why)) => return Err(RunError::Fenced(why)),
                Some(Event::Assigned(_)) | None => {}
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

    /// Records (log, metrics) that this instance took over the state or
    /// handed it over.
    fn ownership(&self, owner: bool) {
        let change = if owner { "took_over" } else { "handed_over" };
        self.metrics.owner.set(i64::from(owner));
        self.lease.set(owner);
        self.metrics
            .ownership_changes
            .with_label_values(&[change])
            .inc();
        if owner {
            tracing::info!(processor = self.name, instance = %self.instance_id, "took over: this instance owns the state and reads every input partition");
        } else {
            tracing::info!(processor = self.name, instance = %self.instance_id, "handed over: the batch in hand is durable and its offsets committed; standing by");
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
        runner: &BatchRunner<'_>,
        message: &BorrowedMessage<'_>,
        cursors: &mut Cursors,
        processor: &mut P,
        batch: &mut LiveBatch<'_, '_>,
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
        let topic = cursors.topic_name(index).clone();
        runner
            .record(
                processor,
                &mut batch.batch,
                emitter,
                &record,
                &topic,
                replaying,
                &mut batch.outputs,
            )
            .await?;
        cursors.advance(index, partition, offset);
        if replaying {
            replay.record();
        }
        Ok(Handled::Applied)
    }
}
