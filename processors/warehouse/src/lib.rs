//! The warehouse sink: `progress`, `completions` and `analytics.aggregates`
//! into Postgres tables with `tenant_id` on every row and row-level security
//! per tenant, exactly once, and erasure that reaches the warehouse.
//!
//! # Delivery semantics: exactly once into Postgres, without broker transactions
//!
//! The sink runs on the shared runtime like every processor, but its effects
//! are rows, not records. Each batch is written in one Postgres transaction
//! together with the next offset of every input partition it read
//! (`trellis_sink.offsets`), from [`Processor::flush`], before the runtime
//! commits its own positions. Postgres's offsets are the truth: a record
//! below them is already in the tables and is not written again, whatever
//! the runtime replays. A crash before the commit loses the transaction
//! and the batch is read again; a crash after it re-reads a batch whose rows
//! are already there. Rows are upserted by their primary key (the
//! `progress` key, the completion id, the aggregate cell), so even a record
//! re-sent under a new offset changes nothing. At start the sink reads the
//! offsets from Postgres, and if its local positions are ahead of them (a
//! database restored from a backup) it replays its inputs from the start,
//! writing what the database lacks.
//!
//! # Erasure
//!
//! The sink is a GDPR saga participant (`warehouse`). An erase command
//! deletes the learner's `progress` and `completions` rows in the batch's
//! transaction, remembers the learner as SHA-256(tenant ‖ 0 ‖ pseudonym) so a
//! replay of the topics cannot bring the rows back, keeps the answer as a
//! receipt, and the answer (with the row counts) is produced only after the
//! transaction committed. Aggregates are anonymous and stay. An access
//! command answers with the learner's rows.
//!
//! # Faults
//!
//! A record that cannot be a row (undecodable, NUL characters, a timestamp
//! Postgres cannot store, key or `tenant` header disagreeing with the value)
//! is dead-lettered before the transaction; a row Postgres still refuses
//! with a data error is found by trying each row alone and dead-lettered
//! (`WAREHOUSE_REJECTED`), and the rest is written. Postgres down, restarting
//! or out of connections: the transaction is retried with backoff (a log line
//! every 10 s, `trellis_errors_total{code="postgres_unavailable"}`) until it
//! commits; nothing is dead-lettered for it.
//!
//! # Layout
//! - [`rows`]: table rows from records, checked as Postgres would.
//! - [`batch`]: one batch's changes, collapsed by key.
//! - [`writer`]: the batch's transaction (`COPY` to staging, upserts, offsets).
//! - [`migrations`]: the schema as versioned SQL, applied at start.
//! - [`roles`]: the administrator's side: roles, per-tenant readers.
//! - [`connection`]: connection strings and what Postgres errors mean.

pub mod batch;
pub mod connection;
pub mod migrations;
pub mod roles;
pub mod rows;
pub mod writer;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts};
use serde::Deserialize;
use tokio_postgres::Client;
use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, COMPLETIONS_TOPIC, Completion, ERASE_COMMANDS_TOPIC, EraseCommand,
    LearnerProgress, PARTICIPANT_ACKS_TOPIC, PROGRESS_TOPIC, ParticipantAck,
};
use trellis_runtime::backoff::Backoff;
use trellis_runtime::kafka::TENANT_HEADER;
use trellis_runtime::participant::Acks;
use trellis_runtime::pipeline::{Exit, Failure, ProcessError, StartError};
use trellis_runtime::processor::Input;
use trellis_runtime::schema::{AvroDecoder, DecodeError};
use trellis_runtime::secret::{SecretFormat, SecretSpec};
use trellis_runtime::state::StateStore;
use trellis_runtime::{Config, Emitter, InputRecord, Processor, Runtime, Shutdown, StateTxn};

use crate::batch::{Batch, LearnerHash, PendingCommand, ProgressChange, learner_hash};
use crate::connection::{ConnectionString, Verdict, describe, verdict};
use crate::rows::{AggregateRow, CompletionRow, ProgressRow, RowError, Source, progress_key};
use crate::writer::Refused;

/// The processor's name in topology.yaml, metrics, logs and saga commands.
pub const NAME: &str = "warehouse";

/// The sink's Postgres connection (its owner role).
pub const WAREHOUSE_URL: SecretSpec = SecretSpec {
    env: "TRELLIS_WAREHOUSE_URL",
    format: SecretFormat::PostgresUrl,
    purpose: "the warehouse sink's Postgres connection (owner role, with its password)",
};

/// The sink's `settings` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Give up a connection attempt after this long, in seconds.
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout_secs: default_connect_timeout_secs(),
        }
    }
}

/// Ten seconds: long enough for a Postgres under load, short enough that a
/// dead host is noticed and retried.
const fn default_connect_timeout_secs() -> u64 {
    10
}

/// A record of one of the sink's inputs. Decoding never skips a record:
/// one that is not its topic's type is [`SinkInput::Undecodable`], so the
/// sink still counts its offset as written (else Postgres's offsets would
/// stop short of the runtime's positions and every start would replay).
pub enum SinkInput {
    /// A `progress` upsert, or its tombstone (`None`).
    Progress(Option<LearnerProgress>),
    /// A completion.
    Completion(Completion),
    /// An aggregate cell.
    Aggregate(Aggregate),
    /// A saga command.
    Command(EraseCommand),
    /// Bad input: dead-lettered by the sink with the decoder's reason.
    Undecodable(DecodeError),
}

impl Input<'_> for SinkInput {
    fn decode(record: &InputRecord<'_>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
        let decoded = match record.topic {
            PROGRESS_TOPIC if record.value.is_none() => Ok(Self::Progress(None)),
            PROGRESS_TOPIC => record.avro(avro).map(|v| Self::Progress(Some(v))),
            COMPLETIONS_TOPIC => record.avro(avro).map(Self::Completion),
            AGGREGATES_TOPIC => record.avro(avro).map(Self::Aggregate),
            ERASE_COMMANDS_TOPIC => record.avro(avro).map(Self::Command),
            _ => Err(record.unexpected_topic()),
        };
        match decoded {
            // Not the record's fault: the runtime waits for the registry.
            Err(e @ DecodeError::RegistryUnavailable { .. }) => Err(e),
            Err(e) => Ok(Self::Undecodable(e)),
            Ok(input) => Ok(input),
        }
    }
}

/// The sink's own metrics.
#[derive(Clone)]
pub struct Counters {
    /// Rows written, by table.
    pub rows: IntCounterVec,
    /// Rows deleted (tombstones, erasures), by table.
    pub deleted: IntCounterVec,
    /// Records of erased learners dropped.
    pub erased_dropped: IntCounter,
    /// Time to write one batch's transaction (retries included).
    pub flush_seconds: Histogram,
    /// Postgres faults waited out.
    pub unavailable: IntCounter,
}

impl Counters {
    /// Counters not yet registered anywhere.
    ///
    /// # Panics
    /// Never: the names and labels are constants.
    #[allow(clippy::expect_used)]
    pub fn detached() -> Self {
        Self {
            rows: IntCounterVec::new(
                Opts::new(
                    "trellis_warehouse_rows_written_total",
                    "Rows inserted or updated in the warehouse, by table.",
                ),
                &["table"],
            )
            .expect("constant metric"),
            deleted: IntCounterVec::new(
                Opts::new(
                    "trellis_warehouse_rows_deleted_total",
                    "Rows deleted from the warehouse (tombstones and erasures), by table.",
                ),
                &["table"],
            )
            .expect("constant metric"),
            erased_dropped: IntCounter::new(
                "trellis_erased_learner_records_dropped_total",
                "Records of erased learners dropped.",
            )
            .expect("constant metric"),
            flush_seconds: Histogram::with_opts(HistogramOpts::new(
                "trellis_warehouse_flush_seconds",
                "Time to write one batch's Postgres transaction, retries included.",
            ))
            .expect("constant metric"),
            unavailable: IntCounter::new(
                "trellis_warehouse_unavailable_total",
                "Postgres faults the sink waited out.",
            )
            .expect("constant metric"),
        }
    }
}

/// What the sink knows of the warehouse, read at start and kept in step
/// with every committed batch.
#[derive(Debug, Default)]
pub struct Committed {
    /// Next offset per input partition: everything below is in the tables.
    pub offsets: HashMap<(String, i32), i64>,
    /// Learners erased here.
    pub erased: HashSet<LearnerHash>,
    /// Answers given, by command id.
    pub receipts: HashMap<String, ParticipantAck>,
}

impl Committed {
    /// Reads it from the warehouse.
    ///
    /// # Errors
    /// Postgres's.
    pub async fn load(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let mut committed = Self::default();
        for row in client
            .query(
                "SELECT topic, partition, next_offset FROM trellis_sink.offsets",
                &[],
            )
            .await?
        {
            committed
                .offsets
                .insert((row.get(0), row.get(1)), row.get(2));
        }
        for row in client
            .query("SELECT learner_hash FROM trellis_sink.erased_learners", &[])
            .await?
        {
            let hash: Vec<u8> = row.get(0);
            if let Ok(hash) = hash.try_into() {
                committed.erased.insert(hash);
            }
        }
        for row in client
            .query("SELECT command_id, answer FROM trellis_sink.receipts", &[])
            .await?
        {
            let answer: serde_json::Value = row.get(1);
            if let Ok(ack) = serde_json::from_value(answer) {
                committed.receipts.insert(row.get(0), ack);
            }
        }
        Ok(committed)
    }

    /// Whether the warehouse already holds the record at `offset`.
    fn holds(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.offsets
            .get(&(topic.to_string(), partition))
            .is_some_and(|next| offset < *next)
    }
}

/// The sink.
pub struct Sink {
    url: ConnectionString,
    connect_timeout: Duration,
    client: Option<Client>,
    acks: Acks,
    committed: Committed,
    batch: Batch,
    counters: Counters,
    backoff: Backoff,
}

impl Sink {
    /// A sink writing through `client` (already migrated), answering with
    /// `acks`.
    pub fn new(
        url: ConnectionString,
        settings: &Settings,
        client: Client,
        committed: Committed,
        acks: Acks,
        counters: Counters,
    ) -> Self {
        let backoff = Backoff::new("postgres").counting(counters.unavailable.clone());
        Self {
            url,
            connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
            client: Some(client),
            acks,
            committed,
            batch: Batch::default(),
            counters,
            backoff,
        }
    }

    fn erased(&self, tenant: &str, learner: &str) -> bool {
        if self.committed.erased.is_empty() && self.batch.erased.is_empty() {
            return false;
        }
        let hash = learner_hash(tenant, learner);
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
        if let Err(e) = rows::command(&command) {
            // Postgres cannot keep what this command names: answer it as
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
            ("erasure", Some(learner)) => {
                let tenant = pending.command.tenant_id.clone();
                self.batch.erase(&tenant, &learner, pending);
            }
            _ => self.batch.commands.push(pending),
        }
        Ok(())
    }

    /// Writes the batch, waiting out Postgres faults and setting aside rows
    /// Postgres refuses.
    async fn write(&mut self, out: &mut Emitter) -> Result<writer::Written, ProcessError> {
        loop {
            let client = match self.client.as_mut() {
                Some(client) => client,
                None => match self.connect().await {
                    Ok(client) => self.client.insert(client),
                    Err(Ok(why)) => {
                        self.backoff.wait(&why).await;
                        continue;
                    }
                    Err(Err(fatal)) => return Err(fatal),
                },
            };
            let error = match writer::write(client, &self.batch, &self.acks).await {
                Ok(written) => {
                    self.backoff.recovered();
                    return Ok(written);
                }
                Err(e) => e,
            };
            match verdict(&error) {
                Verdict::Transient => {
                    self.client = None;
                    self.backoff.wait(&PostgresFault(&error)).await;
                }
                Verdict::Data => self.set_aside_refused(out).await?,
                Verdict::Fatal => {
                    return Err(ProcessError::fatal(
                        "writing to the warehouse",
                        describe(&error),
                    ));
                }
            }
        }
    }

    /// After a data error: finds the rows Postgres refuses and turns them
    /// into dead letters, so the batch's other rows can be written.
    async fn set_aside_refused(&mut self, out: &mut Emitter) -> Result<(), ProcessError> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let refused = match writer::find_refused(client, &self.batch).await {
            Ok(refused) => refused,
            Err(e) if verdict(&e) == Verdict::Transient => {
                self.client = None;
                return Ok(());
            }
            Err(e) => {
                return Err(ProcessError::fatal(
                    "finding the refused rows",
                    describe(&e),
                ));
            }
        };
        if refused.is_empty() {
            return Err(ProcessError::fatal(
                "writing to the warehouse",
                "Postgres refused the batch with a data error, but every row alone is accepted",
            ));
        }
        for (which, error) in refused {
            let (topic, source) = match &which {
                Refused::Progress(key) => match self.batch.progress.remove(key) {
                    Some(ProgressChange::Upsert(row)) => (PROGRESS_TOPIC, row.source),
                    Some(ProgressChange::Delete(source)) => (PROGRESS_TOPIC, source),
                    None => continue,
                },
                Refused::Completion(tenant, id) => {
                    match self.batch.completions.remove(&(tenant.clone(), id.clone())) {
                        Some(row) => (COMPLETIONS_TOPIC, row.source),
                        None => continue,
                    }
                }
                Refused::Aggregate(cell) => match self.batch.aggregates.remove(cell) {
                    Some(row) => (AGGREGATES_TOPIC, row.source),
                    None => continue,
                },
            };
            let record = InputRecord::new(
                topic,
                source.partition,
                source.offset,
                source.timestamp_ms,
                None,
                None,
                &[],
            );
            let code = error
                .code()
                .map(|c| c.code().to_string())
                .unwrap_or_default();
            out.dead_letter(
                &record,
                "WAREHOUSE_REJECTED",
                format!(
                    "Postgres refused the row (SQLSTATE {code}); the record is at {topic}/{}@{}",
                    source.partition, source.offset
                ),
                None,
            );
        }
        Ok(())
    }

    /// A new connection holding the writer lock. `Err(Ok(why))`: try again
    /// later; `Err(Err(e))`: Postgres refuses the sink (authentication, a
    /// dropped database), which waiting will not mend.
    async fn connect(&self) -> Result<Client, Result<String, ProcessError>> {
        let connected = match tokio::time::timeout(self.connect_timeout, self.url.connect()).await {
            Err(_) => return Err(Ok(format!("connecting to {} timed out", self.url))),
            Ok(Err(e)) if e.code().is_some() && verdict(&e) == Verdict::Fatal => {
                return Err(Err(ProcessError::fatal(
                    "connecting to the warehouse",
                    describe(&e),
                )));
            }
            Ok(Err(e)) => {
                return Err(Ok(format!("connecting to {}: {}", self.url, describe(&e))));
            }
            Ok(Ok(client)) => client,
        };
        let prepared = async {
            if !writer::take_writer_lock(&connected).await? {
                return Ok(false);
            }
            writer::prepare(&connected).await.map(|()| true)
        };
        match prepared.await {
            Ok(true) => Ok(connected),
            Ok(false) => Err(Ok(
                "another warehouse sink holds the writer lock on this database; waiting for it to stop".into(),
            )),
            Err(e) => Err(Ok(format!("preparing the connection: {}", describe(&e)))),
        }
    }
}

/// A Postgres error as a backoff log line shows it.
struct PostgresFault<'a>(&'a tokio_postgres::Error);

impl std::fmt::Display for PostgresFault<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "postgres: {}", describe(self.0))
    }
}

impl Processor for Sink {
    type Input<'r> = SinkInput;

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        input: SinkInput,
        _txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let source = Source {
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
        };
        let held = self
            .committed
            .holds(record.topic, record.partition, record.offset);
        if !held {
            let topic: Arc<str> = Arc::from(record.topic);
            self.batch.advance(&topic, record.partition, record.offset);
        }
        let header = record.header_str(TENANT_HEADER);
        // Checked even when the warehouse holds the record already, so a
        // dead letter lost in a crash is written again (same id).
        let checked: Result<(), RowError> = match input {
            SinkInput::Command(command) => return self.on_command(record, command, held, out),
            SinkInput::Undecodable(e) => {
                out.dead_letter(
                    record,
                    e.reason(),
                    e.to_string(),
                    header.map(str::to_string),
                );
                return Ok(());
            }
            SinkInput::Progress(Some(value)) => ProgressRow::new(value, record.key, header, source)
                .map(|row| {
                    if held {
                    } else if self.erased(&row.value.tenant_id, &row.value.learner) {
                        self.counters.erased_dropped.inc();
                    } else {
                        self.batch.progress(row.key(), ProgressChange::Upsert(row));
                    }
                }),
            SinkInput::Progress(None) => record
                .key
                .ok_or_else(|| RowError::Key("a tombstone without a key".into()))
                .and_then(progress_key)
                .map(|key| {
                    if !held {
                        self.batch.progress(key, ProgressChange::Delete(source));
                    }
                }),
            SinkInput::Completion(value) => CompletionRow::new(value, header, source).map(|row| {
                if held {
                } else if self.erased(&row.value.tenant_id, &row.value.learner) {
                    self.counters.erased_dropped.inc();
                } else {
                    self.batch.completion(row);
                }
            }),
            SinkInput::Aggregate(value) => AggregateRow::new(value, header, source).map(|row| {
                if !held {
                    self.batch.aggregate(row);
                }
            }),
        };
        if let Err(e) = checked {
            out.dead_letter(
                record,
                e.reason(),
                e.to_string(),
                header.map(str::to_string),
            );
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
            if writer::receipt(&ack).is_some() {
                let mut kept = ack;
                kept.learner = None;
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

/// Connects to the warehouse, waiting (with backoff) while Postgres cannot
/// be reached, and brings its schema up to date.
///
/// # Errors
/// [`StartError`] when the schema cannot be migrated or the sink's role is
/// not allowed what it needs.
pub async fn open(url: &ConnectionString, settings: &Settings) -> Result<Client, StartError> {
    let mut backoff = Backoff::new("postgres");
    let timeout = Duration::from_secs(settings.connect_timeout_secs);
    let mut client = loop {
        match tokio::time::timeout(timeout, url.connect()).await {
            Ok(Ok(client)) => break client,
            Ok(Err(e)) if e.code().is_some() && verdict(&e) == Verdict::Fatal => {
                return Err(StartError::Misconfigured(format!(
                    "the warehouse ({url}) refuses the sink: {}",
                    describe(&e)
                )));
            }
            Ok(Err(e)) => {
                backoff
                    .wait(&format!("connecting to {url}: {}", describe(&e)))
                    .await;
            }
            Err(_) => {
                backoff
                    .wait(&format!("connecting to {url}: timed out"))
                    .await
            }
        }
    };
    let applied = migrations::migrate(&mut client)
        .await
        .map_err(|e| StartError::Misconfigured(format!("warehouse schema: {e}")))?;
    if !applied.is_empty() {
        tracing::info!(?applied, warehouse = %url, "warehouse schema migrated");
    }
    writer::prepare(&client).await.map_err(|e| {
        StartError::Misconfigured(format!("preparing the connection: {}", describe(&e)))
    })?;
    Ok(client)
}

/// Starts the sink and runs it until `shutdown` resolves.
///
/// # Errors
/// [`Failure`] when it cannot start or must stop; the message names the cause.
pub async fn run(
    mut config: Config<Settings>,
    url: ConnectionString,
    shutdown: Shutdown<'_>,
) -> Result<Exit, Failure> {
    if config.kafka.instances > 1 {
        return Err(StartError::Misconfigured(format!(
            "the warehouse sink runs as one instance: an erasure read from one partition must stop the learner's rows on every other (kafka.instances is {})",
            config.kafka.instances
        ))
        .into());
    }
    let client = open(&url, &config.settings).await?;
    let mut waiting = Backoff::new("postgres writer lock");
    while !writer::take_writer_lock(&client).await.map_err(|e| {
        StartError::Misconfigured(format!("taking the writer lock: {}", describe(&e)))
    })? {
        waiting
            .wait(&"another warehouse sink holds the writer lock on this database; waiting for it to stop")
            .await;
    }
    let committed = Committed::load(&client).await.map_err(|e| {
        StartError::Misconfigured(format!("reading the warehouse's offsets: {}", describe(&e)))
    })?;
    if local_positions_ahead(&config.state_dir, &committed)? {
        tracing::warn!(
            warehouse = %url,
            "the warehouse holds less than the sink's local positions say (a restored or new database?): replaying the inputs from the start to write what it lacks"
        );
        config.rebuild = true;
    }
    let runtime = Runtime::start(NAME, &config).await?;
    let counters = Counters::detached();
    for collector in [
        Box::new(counters.rows.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(counters.deleted.clone()),
        Box::new(counters.erased_dropped.clone()),
        Box::new(counters.flush_seconds.clone()),
        Box::new(counters.unavailable.clone()),
    ] {
        runtime
            .metrics
            .register(collector)
            .map_err(|e| StartError::Misconfigured(e.to_string()))?;
    }
    let acks = Acks::new(
        NAME,
        Arc::from(PARTICIPANT_ACKS_TOPIC),
        runtime.encoder(PARTICIPANT_ACKS_TOPIC).await?,
    );
    tracing::info!(
        warehouse = %url,
        partitions = committed.offsets.len(),
        erased = committed.erased.len(),
        "warehouse offsets read"
    );
    let sink = Sink::new(url, &config.settings, client, committed, acks, counters);
    Ok(runtime.run(sink, shutdown).await?)
}

/// Whether the local store's positions are ahead of the warehouse's offsets
/// for some partition: then the store must be rebuilt so the records the
/// warehouse lacks are read again.
fn local_positions_ahead(
    state_dir: &std::path::Path,
    committed: &Committed,
) -> Result<bool, StartError> {
    if !state_dir.exists() {
        return Ok(false);
    }
    let store = StateStore::open(state_dir)?;
    let positions = store.positions()?;
    Ok(positions.iter().any(|(tp, next)| {
        let warehouse = committed
            .offsets
            .get(&(tp.topic.clone(), tp.partition))
            .copied()
            .unwrap_or(0);
        *next > warehouse
    }))
}
