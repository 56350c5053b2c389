//! Exactly once into a store outside Kafka (Arroyo's `TwoPhaseCommitter`):
//! the mechanism every sink shares, so a new sink implements a few methods
//! of [`TransactionalStore`] instead of copying the bookkeeping.
//!
//! # Delivery semantics
//!
//! A sink runs on the runtime like every processor, but its effects are
//! rows in its store, not records. [`TransactionalSink`] collects a batch's
//! rows (collapsed by key, [`Rows`]) and writes them from
//! [`Processor::flush`] in **one transaction of the store**, together with
//! the next offset of every input partition the batch read, the answers it
//! gave to saga commands (receipts) and the subjects it erased (as
//! [`SubjectHash`]es, never as pseudonyms). Only then does the runtime
//! commit its own positions.
//!
//! The store's offsets are the truth: a record below them is already in the
//! store and is not written again, whatever the runtime replays. A crash
//! before the store's commit loses the transaction and the batch is read
//! again; a crash after it re-reads a batch whose rows are there (and a
//! store must recognise a batch its offsets already include: its commit
//! then answers from the kept receipts and writes nothing). At start the
//! sink reads what the store committed; if the runtime's local positions
//! are ahead of the store's offsets (a database restored from a backup) the
//! local state is discarded, so the inputs are replayed from the start and
//! the store gets what it lacks.
//!
//! # Erasure
//!
//! A sink is a GDPR saga participant: an erase command drops the subject's
//! pending rows at once, the store deletes its rows in the batch's
//! transaction and remembers the subject's hash, so a replay cannot bring
//! the rows back; the answer is produced only after the transaction
//! committed, and a re-sent command gets the kept answer.
//!
//! # Faults
//!
//! [`StoreError::Transient`] (the store is down or restarting) is waited
//! out with backoff and the transaction retried; [`StoreError::Data`] (a
//! row the store refuses) sets the refused rows aside as dead letters and
//! writes the rest; [`StoreError::Fatal`] stops the processor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};
use sha2::{Digest, Sha256};
use trellis_records::{ERASE_COMMANDS_TOPIC, EraseCommand, ParticipantAck};

use crate::backoff::Backoff;
use crate::build::Context;
use crate::emitter::Emitter;
use crate::error::{ProcessError, StartError};
use crate::participant::Acks;
use crate::processor::{Input, Processor};
use crate::record::InputRecord;
use crate::schema::{AvroDecoder, DecodeError};
use crate::state::StateTxn;

/// SHA-256(tenant ‖ 0x00 ‖ subject): how an erased subject is remembered
/// without keeping its pseudonym.
pub type SubjectHash = [u8; 32];

/// The hash of `subject` in `tenant`.
pub fn subject_hash(tenant: &str, subject: &str) -> SubjectHash {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(subject.as_bytes());
    h.finalize().into()
}

/// Where in the log a row came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Partition of the record.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
    /// The record's timestamp.
    pub timestamp_ms: Option<i64>,
}

impl Source {
    /// Where `record` is.
    pub fn of(record: &InputRecord<'_>) -> Self {
        Self {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
        }
    }
}

/// A saga command to execute when the batch is written.
#[derive(Debug, Clone)]
pub struct PendingCommand {
    /// The command.
    pub command: EraseCommand,
    /// Its record's timestamp (the answer's time and record timestamp).
    pub at: Option<i64>,
}

/// One batch of a sink: the store's rows and what the mechanism keeps with
/// them in the same transaction.
#[derive(Debug, Default)]
pub struct SinkBatch<R> {
    /// The rows, collapsed by key.
    pub rows: R,
    /// Saga commands, in log order.
    pub commands: Vec<PendingCommand>,
    /// Subjects erased by this batch's commands.
    pub erased: HashSet<SubjectHash>,
    /// Next offset per input partition the batch reached.
    pub offsets: BTreeMap<(Arc<str>, i32), i64>,
}

impl<R: Rows> SinkBatch<R> {
    /// Whether writing the batch would change nothing.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty() && self.commands.is_empty()
    }

    /// Records that the batch read `topic`/`partition` up to `offset`.
    pub fn advance(&mut self, topic: &str, partition: i32, offset: i64) {
        let key = match self
            .offsets
            .keys()
            .find(|(t, p)| *p == partition && &**t == topic)
        {
            Some(key) => key.clone(),
            None => (Arc::from(topic), partition),
        };
        let next = self.offsets.entry(key).or_default();
        *next = (*next).max(offset + 1);
    }

    /// Queues an erasure: the subject's pending rows go at once, its later
    /// records are refused by [`SinkBatch::erased`].
    pub fn erase(&mut self, tenant: &str, subject: &str, command: PendingCommand) {
        self.rows.erase(tenant, subject);
        self.erased.insert(subject_hash(tenant, subject));
        self.commands.push(command);
    }

    /// Whether the batch already holds a command with this id.
    pub fn has_command(&self, command_id: &str) -> bool {
        self.commands
            .iter()
            .any(|c| c.command.command_id == command_id)
    }

    /// Forgets everything (written, or abandoned).
    pub fn clear(&mut self) {
        self.rows = R::default();
        self.commands.clear();
        self.erased.clear();
        self.offsets.clear();
    }
}

/// What the store committed: read at start, kept in step with every batch.
#[derive(Debug, Default, Clone)]
pub struct Committed {
    /// Next offset per input partition: everything below is in the store.
    pub offsets: HashMap<(String, i32), i64>,
    /// Subjects erased here.
    pub erased: HashSet<SubjectHash>,
    /// Answers given, by command id.
    pub receipts: HashMap<String, ParticipantAck>,
}

impl Committed {
    /// Whether the store already holds the record at `offset`.
    pub fn holds(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.offsets
            .get(&(topic.to_string(), partition))
            .is_some_and(|next| offset < *next)
    }
}

/// What writing a batch did.
#[derive(Debug, Default)]
pub struct Written {
    /// Rows upserted or inserted, by table.
    pub rows: BTreeMap<&'static str, u64>,
    /// Rows deleted (tombstones and erasures), by table.
    pub deleted: BTreeMap<&'static str, u64>,
    /// The answers to the batch's saga commands, in order, with the
    /// timestamp of the command's record.
    pub answers: Vec<(ParticipantAck, Option<i64>)>,
}

/// A store's failure, by what the sink does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is down, restarting or unreachable: wait, retry.
    #[error("{0}")]
    Transient(String),
    /// Some row's data was refused: set the refused rows aside, write the rest.
    #[error("{0}")]
    Data(String),
    /// An operator must act (permissions, a dropped table): stop.
    #[error("{0}")]
    Fatal(String),
}

/// A row the store refuses, to become a dead letter of its record.
#[derive(Debug, Clone)]
pub struct Refused {
    /// The dead letter's reason code.
    pub reason: &'static str,
    /// The record's topic.
    pub topic: &'static str,
    /// Where the record is.
    pub source: Source,
    /// Why (naming fields, never quoting values).
    pub detail: String,
}

/// A record that cannot become a row: its dead letter's reason and detail.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The dead letter's reason code.
    pub reason: &'static str,
    /// What is wrong (never a value).
    pub detail: String,
}

/// One batch's rows, collapsed by key.
pub trait Rows: Default + Send + 'static {
    /// What one record becomes.
    type Row: Send;

    /// Keeps `row` (replacing an earlier row of the same key as the store
    /// requires: the latest, the highest revision).
    fn add(&mut self, row: Self::Row);

    /// Drops the pending rows of `subject` in `tenant`.
    fn erase(&mut self, tenant: &str, subject: &str);
}

/// A store a sink writes exactly once (see the module docs).
pub trait TransactionalStore: Send + 'static {
    /// A data record, decoded by the runtime.
    type Record: for<'r> Input<'r> + Send;
    /// One batch's rows.
    type Rows: Rows;

    /// What `record` (decoded as `decoded`) becomes in the store.
    ///
    /// # Errors
    /// [`Rejected`]: the record is dead-lettered; the sink goes on.
    fn row(
        &self,
        record: &InputRecord<'_>,
        decoded: Self::Record,
    ) -> Result<<Self::Rows as Rows>::Row, Rejected>;

    /// The (tenant, subject) a row belongs to, if it names one.
    fn subject(row: &<Self::Rows as Rows>::Row) -> Option<(&str, &str)>;

    /// Whether the store can keep what `command` names (its receipt, the
    /// erased subject); `Err` answers it `failed` instead of stalling.
    ///
    /// # Errors
    /// Why it cannot.
    fn check_command(&self, _command: &EraseCommand) -> Result<(), String> {
        Ok(())
    }

    /// Reads what the store committed.
    ///
    /// # Errors
    /// [`StoreError`].
    fn load(&mut self) -> impl Future<Output = Result<Committed, StoreError>> + Send;

    /// Writes `batch` in one transaction with its offsets, receipts and
    /// erased subjects, executing its commands and answering them with
    /// `acks`. A batch the store's offsets already include is not written
    /// again: its answers come from the kept receipts.
    ///
    /// # Errors
    /// [`StoreError`]; nothing is written then.
    fn commit(
        &mut self,
        batch: &SinkBatch<Self::Rows>,
        acks: &Acks,
    ) -> impl Future<Output = Result<Written, StoreError>> + Send;

    /// After [`StoreError::Data`]: finds the rows the store refuses and
    /// removes them from `batch`, so the rest can be written.
    ///
    /// # Errors
    /// [`StoreError`].
    fn set_aside(
        &mut self,
        batch: &mut SinkBatch<Self::Rows>,
    ) -> impl Future<Output = Result<Vec<Refused>, StoreError>> + Send;

    /// After [`StoreError::Transient`]: a new connection (the sink waits
    /// and calls again while it fails transiently).
    ///
    /// # Errors
    /// [`StoreError`].
    fn reconnect(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A sink's input: a saga command, a data record, or bad input. Decoding
/// never skips a record: one that is not its topic's type is
/// [`SinkInput::Undecodable`], so its offset is still written with the
/// batch (else the store's offsets would stop short of the runtime's
/// positions and every start would replay).
pub enum SinkInput<R> {
    /// A saga command.
    Command(EraseCommand),
    /// A data record.
    Record(R),
    /// Dead-lettered with the decoder's reason.
    Undecodable(DecodeError),
}

impl<'r, R: Input<'r>> Input<'r> for SinkInput<R> {
    fn decode(record: &InputRecord<'r>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
        let decoded = if record.topic == ERASE_COMMANDS_TOPIC {
            record.avro(avro).map(Self::Command)
        } else {
            R::decode(record, avro).map(Self::Record)
        };
        match decoded {
            // Not the record's fault: the runtime waits for the registry.
            Err(e @ DecodeError::RegistryUnavailable { .. }) => Err(e),
            Err(e) => Ok(Self::Undecodable(e)),
            Ok(input) => Ok(input),
        }
    }
}

/// A sink's own metrics, named after it (`trellis_<name>_…`).
#[derive(Clone)]
pub struct SinkCounters {
    /// Rows written, by table.
    pub rows: IntCounterVec,
    /// Rows deleted (tombstones, erasures), by table.
    pub deleted: IntCounterVec,
    /// Records of erased subjects dropped.
    pub erased_dropped: IntCounter,
    /// Time to write one batch's transaction (retries included).
    pub flush_seconds: Histogram,
    /// Store faults waited out.
    pub unavailable: IntCounter,
}

impl SinkCounters {
    /// Counters of the sink `name`, not yet registered anywhere.
    ///
    /// # Panics
    /// If `name` is not a valid metric name part.
    #[allow(clippy::expect_used)]
    pub fn new(name: &str) -> Self {
        Self {
            rows: IntCounterVec::new(
                Opts::new(
                    format!("trellis_{name}_rows_written_total"),
                    "Rows inserted or updated in the store, by table.",
                ),
                &["table"],
            )
            .expect("a valid metric name"),
            deleted: IntCounterVec::new(
                Opts::new(
                    format!("trellis_{name}_rows_deleted_total"),
                    "Rows deleted from the store (tombstones and erasures), by table.",
                ),
                &["table"],
            )
            .expect("a valid metric name"),
            erased_dropped: IntCounter::new(
                "trellis_erased_learner_records_dropped_total",
                "Records of erased learners dropped.",
            )
            .expect("a valid metric name"),
            flush_seconds: Histogram::with_opts(HistogramOpts::new(
                format!("trellis_{name}_flush_seconds"),
                "Time to write one batch's transaction, retries included.",
            ))
            .expect("a valid metric name"),
            unavailable: IntCounter::new(
                format!("trellis_{name}_unavailable_total"),
                "Store faults the sink waited out.",
            )
            .expect("a valid metric name"),
        }
    }

    /// Registers every counter with the processor's metrics.
    ///
    /// # Errors
    /// As [`Context::register`].
    pub fn register<S>(&self, ctx: &Context<'_, S>) -> Result<(), StartError> {
        ctx.register(Box::new(self.rows.clone()))?;
        ctx.register(Box::new(self.deleted.clone()))?;
        ctx.register(Box::new(self.erased_dropped.clone()))?;
        ctx.register(Box::new(self.flush_seconds.clone()))?;
        ctx.register(Box::new(self.unavailable.clone()))
    }
}

/// The processor that writes a [`TransactionalStore`] exactly once.
pub struct TransactionalSink<S: TransactionalStore> {
    store: S,
    acks: Acks,
    committed: Committed,
    batch: SinkBatch<S::Rows>,
    counters: SinkCounters,
    backoff: Backoff,
}

impl<S: TransactionalStore> TransactionalSink<S> {
    /// The sink over `store`, answering saga commands with `acks`: reads
    /// what the store committed (waiting while it is unavailable) and, if
    /// the processor's local positions are ahead of the store's offsets (a
    /// restored database), discards the local state so the inputs are
    /// replayed into the store.
    ///
    /// # Errors
    /// [`StartError`] when the store refuses the sink.
    pub async fn open<T>(
        mut store: S,
        acks: Acks,
        counters: SinkCounters,
        ctx: &mut Context<'_, T>,
    ) -> Result<Self, StartError> {
        let mut backoff = Backoff::new("store").counting(counters.unavailable.clone());
        let committed = loop {
            match store.load().await {
                Ok(committed) => break committed,
                Err(StoreError::Transient(why)) => {
                    backoff.wait(&why).await;
                    let _ = store.reconnect().await;
                }
                Err(e) => {
                    return Err(StartError::Misconfigured(format!(
                        "reading what the store committed: {e}"
                    )));
                }
            }
        };
        let local = match ctx.store() {
            Some(store) => store.positions()?,
            None => crate::state::Positions::new(),
        };
        let ahead = local.iter().find(|(tp, next)| {
            **next > 0
                && committed
                    .offsets
                    .get(&(tp.topic.clone(), tp.partition))
                    .is_none_or(|stored| stored < *next)
        });
        if let Some((partition, next)) = ahead {
            tracing::warn!(
                %partition,
                local = next,
                "the store holds less than the local positions say (a restored or new database?): replaying the inputs from the start to write what it lacks"
            );
            ctx.discard_state()?;
        }
        tracing::info!(
            partitions = committed.offsets.len(),
            erased = committed.erased.len(),
            "store offsets read"
        );
        Ok(Self {
            backoff: Backoff::new("store").counting(counters.unavailable.clone()),
            store,
            acks,
            committed,
            batch: SinkBatch::default(),
            counters,
        })
    }

    /// What the store committed (tests).
    pub fn committed(&self) -> &Committed {
        &self.committed
    }

    /// The store (tests).
    pub fn store(&self) -> &S {
        &self.store
    }

    fn erased(&self, tenant: &str, subject: &str) -> bool {
        if self.committed.erased.is_empty() && self.batch.erased.is_empty() {
            return false;
        }
        let hash = subject_hash(tenant, subject);
        self.committed.erased.contains(&hash) || self.batch.erased.contains(&hash)
    }

    fn on_command(
        &mut self,
        record: &InputRecord<'_>,
        command: EraseCommand,
        held: bool,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if !self.acks.addressed_to_me(&command.participant) {
            return Ok(());
        }
        if let Some(kept) = self.committed.receipts.get(&command.command_id) {
            // Answered before (a re-send, or a batch read again after its
            // answer may have been lost): the same answer again.
            let mut ack = kept.clone();
            ack.learner.clone_from(&command.learner);
            out.emit(self.acks.record(&ack)?);
            return Ok(());
        }
        if held || self.batch.has_command(&command.command_id) {
            return Ok(());
        }
        if let Err(e) = self.store.check_command(&command) {
            // The store cannot keep what this command names: answer it as
            // failed (not kept, so nothing half-stored) rather than stall.
            let mut ack = self.acks.ack(
                &command.command_id,
                &command.request_id,
                &command.tenant_id,
                command.learner.clone(),
                record.timestamp_ms.unwrap_or_default(),
            );
            ack.outcome = "failed".into();
            ack.detail = format!("the command cannot be stored: {e}");
            out.emit(self.acks.record(&ack)?);
            return Ok(());
        }
        let pending = PendingCommand {
            at: record.timestamp_ms,
            command,
        };
        match (
            pending.command.kind.as_str(),
            pending.command.learner.clone(),
        ) {
            ("erasure", Some(subject)) => {
                let tenant = pending.command.tenant_id.clone();
                self.batch.erase(&tenant, &subject, pending);
            }
            _ => self.batch.commands.push(pending),
        }
        Ok(())
    }

    /// Writes the batch, waiting out store faults and setting aside rows
    /// the store refuses.
    async fn write(&mut self, out: &mut Emitter) -> Result<Written, ProcessError> {
        loop {
            match self.store.commit(&self.batch, &self.acks).await {
                Ok(written) => {
                    self.backoff.recovered();
                    return Ok(written);
                }
                Err(StoreError::Transient(why)) => {
                    self.backoff.wait(&why).await;
                    while let Err(e) = self.store.reconnect().await {
                        match e {
                            StoreError::Transient(why) => self.backoff.wait(&why).await,
                            e => return Err(ProcessError::fatal("reconnecting to the store", e)),
                        }
                    }
                }
                Err(StoreError::Data(why)) => {
                    let refused = match self.store.set_aside(&mut self.batch).await {
                        Ok(refused) => refused,
                        // Reconnect and try the whole batch again.
                        Err(StoreError::Transient(_)) => continue,
                        Err(e) => return Err(ProcessError::fatal("finding the refused rows", e)),
                    };
                    if refused.is_empty() {
                        return Err(ProcessError::fatal(
                            "writing to the store",
                            format!(
                                "the store refused the batch ({why}), but every row alone is accepted"
                            ),
                        ));
                    }
                    for r in refused {
                        let record = InputRecord::new(
                            r.topic,
                            r.source.partition,
                            r.source.offset,
                            r.source.timestamp_ms,
                            None,
                            None,
                            &[],
                        );
                        out.dead_letter(&record, r.reason, r.detail, None);
                    }
                }
                Err(e @ StoreError::Fatal(_)) => {
                    return Err(ProcessError::fatal("writing to the store", e));
                }
            }
        }
    }
}

impl<S: TransactionalStore> Processor for TransactionalSink<S> {
    type Input<'r> = SinkInput<S::Record>;

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        input: SinkInput<S::Record>,
        _txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let held = self
            .committed
            .holds(record.topic, record.partition, record.offset);
        if !held {
            self.batch
                .advance(record.topic, record.partition, record.offset);
        }
        // Checked even when the store holds the record already, so a dead
        // letter lost in a crash is written again (same id).
        match input {
            SinkInput::Command(command) => self.on_command(record, command, held, out)?,
            SinkInput::Undecodable(e) => {
                let tenant = record.header_str(crate::kafka::TENANT_HEADER);
                out.dead_letter(
                    record,
                    e.reason(),
                    e.to_string(),
                    tenant.map(str::to_string),
                );
            }
            SinkInput::Record(decoded) => match self.store.row(record, decoded) {
                Err(rejected) => {
                    let tenant = record.header_str(crate::kafka::TENANT_HEADER);
                    out.dead_letter(
                        record,
                        rejected.reason,
                        rejected.detail,
                        tenant.map(str::to_string),
                    );
                }
                Ok(_) if held => {}
                Ok(row) => {
                    if S::subject(&row).is_some_and(|(t, s)| self.erased(t, s)) {
                        self.counters.erased_dropped.inc();
                    } else {
                        self.batch.rows.add(row);
                    }
                }
            },
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut Emitter) -> Result<(), ProcessError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let written = self.write(out).await?;
        self.counters
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        for (table, n) in &written.rows {
            self.counters.rows.with_label_values(&[table]).inc_by(*n);
        }
        for (table, n) in &written.deleted {
            self.counters.deleted.with_label_values(&[table]).inc_by(*n);
        }
        for (ack, at) in written.answers {
            out.emit_at(self.acks.record(&ack)?, at);
            if let Some(kept) = receipt(&ack) {
                self.committed
                    .receipts
                    .insert(kept.command_id.clone(), kept);
            }
        }
        for ((topic, partition), next) in &self.batch.offsets {
            self.committed
                .offsets
                .insert((topic.to_string(), *partition), *next);
        }
        self.committed.erased.extend(self.batch.erased.drain());
        self.batch.clear();
        Ok(())
    }

    fn abandoned(&mut self) {
        self.batch.clear();
    }
}

/// What a store keeps of an answer so a re-sent command gets it again: all
/// but the subject's pseudonym (the re-sent command carries it), so the
/// store keeps no pseudonym of an erased subject. Access answers are not
/// kept: they hold the subject's rows, and answering a re-sent access
/// request from the store as it is then is right.
pub fn receipt(ack: &ParticipantAck) -> Option<ParticipantAck> {
    if ack.export.is_some() {
        return None;
    }
    let mut kept = ack.clone();
    kept.learner = None;
    Some(kept)
}

#[cfg(test)]
mod tests;
