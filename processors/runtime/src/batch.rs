//! One batch of input, as the live loop ([`crate::pipeline`]) and the
//! offline runner ([`crate::offline`]) both run it.
//!
//! For each record, [`BatchRunner::record`] decodes it into the processor's
//! input (dead-lettering what is not), runs the processor, refuses outputs
//! to topics topology.yaml does not list, turns an output too large to ever
//! be written into a dead letter of its input, and hands outputs and dead
//! letters to the batch's [`Outputs`]. After the last record,
//! [`BatchRunner::close`] saves the processor's working set and runs its
//! [`Processor::flush`], whose outputs follow.
//!
//! Where outputs go, and how the batch is then made durable, is the
//! caller's: the live loop hands them to the broker and commits state and
//! positions once every one is acknowledged; the offline runner keeps them
//! in memory and commits at once. Everything a processor can observe is
//! this module's, so a processor behaves the same in both.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use trellis_records::{DLQ_TOPIC, DeadLetter};

use crate::emitter::{Emitter, OutputRecord};
use crate::error::{ErrorKind, RunError};
use crate::kafka::REQUEST_ID_HEADER;
use crate::processor::{Halt, Processor, apply};
use crate::producer::ProduceError;
use crate::record::InputRecord;
use crate::schema::AvroDecoder;
use crate::state::{Positions, StateStore, StateTxn, TopicPartition};

/// The input record an output answers: (topic, partition, offset, timestamp).
pub(crate) type Origin = (Arc<str>, i32, i64, Option<i64>);

/// A batch's state changes and the input positions they include.
pub(crate) struct Batch<'s> {
    /// State changes, committed with [`Batch::positions`].
    pub(crate) txn: StateTxn<'s>,
    /// Per input partition the batch advanced: the position after its last
    /// record (a short list: a batch reads a handful of partitions).
    advanced: Vec<(Arc<str>, i32, i64)>,
    /// Records applied.
    pub(crate) records: usize,
}

impl<'s> Batch<'s> {
    /// An empty batch over `store`.
    pub(crate) fn new(store: &'s StateStore) -> Self {
        Self {
            txn: store.begin(),
            advanced: Vec::new(),
            records: 0,
        }
    }

    fn advance(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        match self
            .advanced
            .iter_mut()
            .find(|(t, p, _)| *p == partition && Arc::ptr_eq(t, topic))
        {
            Some(entry) => entry.2 = offset + 1,
            None => self.advanced.push((topic.clone(), partition, offset + 1)),
        }
    }

    /// Each advanced partition with the position after its last record.
    pub(crate) fn advanced(&self) -> impl Iterator<Item = (&Arc<str>, i32, i64)> {
        self.advanced.iter().map(|(t, p, next)| (t, *p, *next))
    }

    /// The positions to commit with the batch's state.
    pub(crate) fn positions(&self) -> Positions {
        self.advanced()
            .map(|(topic, partition, next)| (TopicPartition::new(&**topic, partition), next))
            .collect()
    }
}

/// Where a batch's outputs and dead letters go: the broker, or memory.
pub(crate) trait Outputs {
    /// Hands over one output. [`ProduceError::TooLarge`] (poison) when it
    /// can never be written; anything else stops the loop.
    fn send(
        &mut self,
        output: OutputRecord,
        timestamp_ms: Option<i64>,
        request_id: Option<&[u8]>,
        input: Option<&Origin>,
    ) -> impl Future<Output = Result<(), ProduceError>> + Send;

    /// Hands over one dead letter of `input`.
    fn send_dead_letter(
        &mut self,
        dead: DeadLetter,
        input: &Origin,
        request_id: Option<&[u8]>,
    ) -> impl Future<Output = Result<(), RunError>> + Send;

    /// A record was applied (`replaying`: its outputs were dropped); the
    /// processor dropped `duplicates` inputs as already seen.
    fn applied(&mut self, replaying: bool, duplicates: u64);
}

/// Runs records through a processor, batch by batch (see the module docs).
pub(crate) struct BatchRunner<'a> {
    /// The processor's name, as dead letters carry it.
    pub(crate) name: &'static str,
    /// Decodes Avro inputs (writer schemas fetched beforehand).
    pub(crate) decoder: &'a AvroDecoder,
    /// topology.yaml's outputs of the processor.
    pub(crate) declared: &'a HashSet<String>,
}

impl BatchRunner<'_> {
    /// Applies one record of `topic` and hands on what it emitted; while
    /// `replaying`, outputs are dropped (they were published before) and
    /// only the state changes.
    ///
    /// # Errors
    /// [`RunError`] when continuing would be unsafe.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn record<P: Processor, O: Outputs>(
        &self,
        processor: &mut P,
        batch: &mut Batch<'_>,
        emitter: &mut Emitter,
        record: &InputRecord<'_>,
        topic: &Arc<str>,
        replaying: bool,
        out: &mut O,
    ) -> Result<(), RunError> {
        emitter.clear();
        emitter.set_discard(replaying);
        match apply(processor, self.decoder, record, &mut batch.txn, emitter) {
            Ok(()) => {}
            Err(Halt::Process(e)) => return Err(e.into()),
            Err(Halt::Registry(e)) => return Err(RunError::Decode(e)),
        }
        // Follow one HTTP request through every processor with
        // RUST_LOG=info,trellis_runtime::pipeline=debug (the target README
        // documents, kept though the step moved here).
        if tracing::enabled!(target: "trellis_runtime::pipeline", tracing::Level::DEBUG)
            && let Some(request_id) = record.header_str(REQUEST_ID_HEADER)
        {
            tracing::debug!(
                target: "trellis_runtime::pipeline",
                processor = self.name,
                request_id,
                topic = record.topic,
                partition = record.partition,
                offset = record.offset,
                outputs = emitter.records.len(),
                dead_letters = emitter.dead.len(),
                "record processed"
            );
        }
        batch.advance(topic, record.partition, record.offset);
        batch.records += 1;
        out.applied(replaying, emitter.duplicates);
        if replaying {
            return Ok(());
        }
        // Read only for what it is copied onto: reading any header parses
        // them all (6.5% of the aggregator's thread when read for every
        // record).
        let request_id = if emitter.records.is_empty() && emitter.dead.is_empty() {
            None
        } else {
            record.header(REQUEST_ID_HEADER)
        };
        let input: Origin = (
            topic.clone(),
            record.partition,
            record.offset,
            record.timestamp_ms,
        );
        let refused = self
            .send_outputs(emitter, Some(&input), request_id, out)
            .await?;
        for e in refused {
            // The output can never be written: the input is dead-lettered
            // instead (the processor's other outputs for it still stand).
            let mut letter = Emitter::new(self.name);
            letter.dead_letter(record, "OUTPUT_TOO_LARGE", e.to_string(), None);
            emitter.dead.append(&mut letter.dead);
        }
        for dead in std::mem::take(&mut emitter.dead) {
            self.dead_letter(out, dead, &input, request_id).await?;
        }
        Ok(())
    }

    /// Ends the batch: saves the processor's working set into the batch's
    /// state, then runs [`Processor::flush`] and hands on what it emitted
    /// (after the flush, so an answer never precedes its effect).
    ///
    /// # Errors
    /// [`RunError`] when continuing would be unsafe.
    pub(crate) async fn close<P: Processor, O: Outputs>(
        &self,
        processor: &mut P,
        batch: &mut Batch<'_>,
        out: &mut O,
    ) -> Result<(), RunError> {
        processor.save(&mut batch.txn)?;
        let mut flushed = Emitter::new(self.name);
        processor.flush(&mut flushed).await?;
        if let Some(e) = self
            .send_outputs(&mut flushed, None, None, out)
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
            self.dead_letter(out, dead, &origin, None).await?;
        }
        Ok(())
    }

    /// Hands on what `emitter` holds for `input` (`None`: what
    /// [`Processor::flush`] emitted), refusing undeclared topics. Returns
    /// the outputs refused as too large: poison, the caller decides what
    /// becomes of their input.
    async fn send_outputs<O: Outputs>(
        &self,
        emitter: &mut Emitter,
        input: Option<&Origin>,
        request_id: Option<&[u8]>,
        out: &mut O,
    ) -> Result<Vec<ProduceError>, RunError> {
        let mut refused = Vec::new();
        let timestamps = std::mem::take(&mut emitter.timestamps);
        for (output, timestamp) in emitter.records.drain(..).zip(timestamps) {
            if !self.declared.contains(&*output.topic) {
                return Err(RunError::UndeclaredOutput {
                    processor: self.name,
                    topic: output.topic.to_string(),
                });
            }
            let timestamp = timestamp.or(input.and_then(|i| i.3));
            match out.send(output, timestamp, request_id, input).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Poison => refused.push(e),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(refused)
    }

    async fn dead_letter<O: Outputs>(
        &self,
        out: &mut O,
        dead: DeadLetter,
        input: &Origin,
        request_id: Option<&[u8]>,
    ) -> Result<(), RunError> {
        if !self.declared.contains(DLQ_TOPIC) {
            return Err(RunError::NoDeadLetterTopic(self.name));
        }
        out.send_dead_letter(dead, input, request_id).await
    }
}
