//! The warehouse sink: `progress`, `completions` and `analytics.aggregates`
//! into Postgres tables with `tenant_id` on every row and row-level security
//! per tenant, exactly once, and erasure that reaches the warehouse.
//!
//! # Delivery semantics: exactly once into Postgres, without broker transactions
//!
//! The sink is the runtime's [`TransactionalSink`] over [`Warehouse`], the
//! Postgres store: each batch is one Postgres transaction with the next
//! offset of every input partition it read (`trellis_sink.offsets`), the
//! answers it gave (`trellis_sink.receipts`) and the learners it erased
//! (`trellis_sink.erased_learners`); Postgres's offsets are the truth, and a
//! database restored from a backup is refilled by replay (see
//! [`trellis_runtime::sink`]). Rows are upserted by their primary key (the
//! `progress` key, the completion id, the aggregate cell), so even a record
//! re-sent under a new offset changes nothing.
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
//! - [`batch`]: one batch's table changes, collapsed by key.
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

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::Client;
use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, COMPLETIONS_TOPIC, Completion, EraseCommand, LearnerProgress,
    PARTICIPANT_ACKS_TOPIC, PROGRESS_TOPIC, ParticipantAck,
};
use trellis_runtime::InputRecord;
use trellis_runtime::backoff::Backoff;
use trellis_runtime::build::{Build, Context};
use trellis_runtime::kafka::TENANT_HEADER;
use trellis_runtime::participant::Acks;
use trellis_runtime::pipeline::StartError;
use trellis_runtime::processor::Input;
use trellis_runtime::schema::{AvroDecoder, DecodeError};
use trellis_runtime::secret::{SecretFormat, SecretSpec};
use trellis_runtime::sink::{
    Committed, Refused, Rejected, SinkBatch, SinkCounters, Source, StoreError, TransactionalSink,
    TransactionalStore, Written,
};

use crate::batch::{ProgressChange, TableRow, Tables};
use crate::connection::{ConnectionString, Verdict, describe, verdict};
use crate::rows::{AggregateRow, CompletionRow, ProgressRow, RowError, progress_key};

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

impl trellis_runtime::build::Settings for Settings {
    fn check(&self) -> Result<(), Vec<String>> {
        if self.connect_timeout_secs == 0 {
            return Err(vec![
                "settings.connect_timeout_secs must be at least 1".into(),
            ]);
        }
        Ok(())
    }
}

/// Ten seconds: long enough for a Postgres under load, short enough that a
/// dead host is noticed and retried.
const fn default_connect_timeout_secs() -> u64 {
    10
}

/// A data record of one of the sink's inputs (saga commands are the
/// mechanism's: [`trellis_runtime::sink::SinkInput`]).
pub enum WarehouseRecord {
    /// A `progress` upsert, or its tombstone (`None`).
    Progress(Option<LearnerProgress>),
    /// A completion.
    Completion(Completion),
    /// An aggregate cell.
    Aggregate(Aggregate),
}

impl Input<'_> for WarehouseRecord {
    fn decode(record: &InputRecord<'_>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
        match record.topic {
            PROGRESS_TOPIC if record.value.is_none() => Ok(Self::Progress(None)),
            PROGRESS_TOPIC => record.avro(avro).map(|v| Self::Progress(Some(v))),
            COMPLETIONS_TOPIC => record.avro(avro).map(Self::Completion),
            AGGREGATES_TOPIC => record.avro(avro).map(Self::Aggregate),
            _ => Err(record.unexpected_topic()),
        }
    }
}

impl From<RowError> for Rejected {
    fn from(e: RowError) -> Self {
        Rejected {
            reason: e.reason(),
            detail: e.to_string(),
        }
    }
}

/// The warehouse as the sink's store: Postgres, through one connection that
/// holds the writer lock.
pub struct Warehouse {
    url: ConnectionString,
    connect_timeout: Duration,
    client: Option<Client>,
}

impl Warehouse {
    /// The store writing through `client` (already migrated, holding the
    /// writer lock).
    pub fn new(url: ConnectionString, settings: &Settings, client: Client) -> Self {
        Self {
            url,
            connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
            client: Some(client),
        }
    }

    fn client(&mut self) -> Result<&mut Client, StoreError> {
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Transient(format!("not connected to {}", self.url)))
    }

    /// Sorts a Postgres error into what the sink does about it; a broken
    /// connection is dropped, so the next attempt reconnects.
    fn fault(&mut self, doing: &str, e: &tokio_postgres::Error) -> StoreError {
        let message = format!("postgres: {doing}: {}", describe(e));
        match verdict(e) {
            Verdict::Transient => {
                self.client = None;
                StoreError::Transient(message)
            }
            Verdict::Data => StoreError::Data(message),
            Verdict::Fatal => StoreError::Fatal(message),
        }
    }
}

impl TransactionalStore for Warehouse {
    type Record = WarehouseRecord;
    type Rows = Tables;

    fn row(
        &self,
        record: &InputRecord<'_>,
        decoded: WarehouseRecord,
    ) -> Result<TableRow, Rejected> {
        let source = Source::of(record);
        let header = record.header_str(TENANT_HEADER);
        Ok(match decoded {
            WarehouseRecord::Progress(Some(value)) => {
                let row = ProgressRow::new(value, record.key, header, source)?;
                TableRow::Progress(row.key(), ProgressChange::Upsert(row))
            }
            WarehouseRecord::Progress(None) => {
                let key = record
                    .key
                    .ok_or_else(|| RowError::Key("a tombstone without a key".into()))
                    .and_then(progress_key)?;
                TableRow::Progress(key, ProgressChange::Delete(source))
            }
            WarehouseRecord::Completion(value) => {
                TableRow::Completion(CompletionRow::new(value, header, source)?)
            }
            WarehouseRecord::Aggregate(value) => {
                TableRow::Aggregate(AggregateRow::new(value, header, source)?)
            }
        })
    }

    fn subject(row: &TableRow) -> Option<(&str, &str)> {
        match row {
            TableRow::Progress(_, ProgressChange::Upsert(row)) => {
                Some((&row.value.tenant_id, &row.value.learner))
            }
            TableRow::Completion(row) => Some((&row.value.tenant_id, &row.value.learner)),
            // A tombstone deletes; aggregates are anonymous.
            TableRow::Progress(_, ProgressChange::Delete(_)) | TableRow::Aggregate(_) => None,
        }
    }

    fn check_command(&self, command: &EraseCommand) -> Result<(), String> {
        rows::command(command).map_err(|e| e.to_string())
    }

    async fn load(&mut self) -> Result<Committed, StoreError> {
        let client = self.client()?;
        match load_committed(client).await {
            Ok(committed) => Ok(committed),
            Err(e) => Err(self.fault("reading the warehouse's offsets", &e)),
        }
    }

    async fn commit(
        &mut self,
        batch: &SinkBatch<Tables>,
        acks: &Acks,
    ) -> Result<Written, StoreError> {
        let client = self.client()?;
        match writer::write(client, batch, acks).await {
            Ok(written) => Ok(written),
            Err(e) => Err(self.fault("writing a batch", &e)),
        }
    }

    async fn set_aside(
        &mut self,
        batch: &mut SinkBatch<Tables>,
    ) -> Result<Vec<Refused>, StoreError> {
        let client = self.client()?;
        let refused = match writer::find_refused(client, &batch.rows).await {
            Ok(refused) => refused,
            Err(e) => return Err(self.fault("finding the refused rows", &e)),
        };
        let mut set_aside = Vec::new();
        for (which, error) in refused {
            let (topic, source) = match &which {
                writer::Refused::Progress(key) => match batch.rows.progress.remove(key) {
                    Some(ProgressChange::Upsert(row)) => (PROGRESS_TOPIC, row.source),
                    Some(ProgressChange::Delete(source)) => (PROGRESS_TOPIC, source),
                    None => continue,
                },
                writer::Refused::Completion(tenant, id) => {
                    match batch.rows.completions.remove(&(tenant.clone(), id.clone())) {
                        Some(row) => (COMPLETIONS_TOPIC, row.source),
                        None => continue,
                    }
                }
                writer::Refused::Aggregate(cell) => match batch.rows.aggregates.remove(cell) {
                    Some(row) => (AGGREGATES_TOPIC, row.source),
                    None => continue,
                },
            };
            let code = error
                .code()
                .map(|c| c.code().to_string())
                .unwrap_or_default();
            set_aside.push(Refused {
                reason: "WAREHOUSE_REJECTED",
                topic,
                source,
                detail: format!(
                    "Postgres refused the row (SQLSTATE {code}); the record is at {topic}/{}@{}",
                    source.partition, source.offset
                ),
            });
        }
        Ok(set_aside)
    }

    /// A new connection holding the writer lock.
    async fn reconnect(&mut self) -> Result<(), StoreError> {
        let connected = match tokio::time::timeout(self.connect_timeout, self.url.connect()).await {
            Err(_) => {
                return Err(StoreError::Transient(format!(
                    "connecting to {} timed out",
                    self.url
                )));
            }
            Ok(Err(e)) if e.code().is_some() && verdict(&e) == Verdict::Fatal => {
                return Err(StoreError::Fatal(format!(
                    "connecting to the warehouse: {}",
                    describe(&e)
                )));
            }
            Ok(Err(e)) => {
                return Err(StoreError::Transient(format!(
                    "connecting to {}: {}",
                    self.url,
                    describe(&e)
                )));
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
            Ok(true) => {
                self.client = Some(connected);
                Ok(())
            }
            Ok(false) => Err(StoreError::Transient(
                "another warehouse sink holds the writer lock on this database; waiting for it to stop".into(),
            )),
            Err(e) => Err(StoreError::Transient(format!(
                "preparing the connection: {}",
                describe(&e)
            ))),
        }
    }
}

/// What the warehouse committed: offsets, erased learners, receipts.
///
/// # Errors
/// Postgres's.
pub async fn load_committed(client: &Client) -> Result<Committed, tokio_postgres::Error> {
    let mut committed = Committed::default();
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
        if let Ok(ack) = serde_json::from_value::<ParticipantAck>(answer) {
            committed.receipts.insert(row.get(0), ack);
        }
    }
    Ok(committed)
}

/// The warehouse sink's one constructor: the binary and the bench build it
/// here.
impl Build for Warehouse {
    const NAME: &'static str = NAME;
    const SECRETS: &'static [SecretSpec] = &[WAREHOUSE_URL];
    const OWNS: &'static str = "erased learners: an erasure read from one partition must stop the learner's rows on every other";
    type Settings = Settings;
    type Processor = TransactionalSink<Warehouse>;

    async fn build(ctx: &mut Context<'_, Settings>) -> Result<Self::Processor, StartError> {
        let url = connection::connection(ctx.secrets, &WAREHOUSE_URL)
            .map_err(StartError::Misconfigured)?;
        let counters = SinkCounters::new(NAME);
        counters.register(ctx)?;
        let client = open(&url, ctx.settings, Some(&counters.unavailable)).await?;
        let mut waiting = Backoff::new("postgres writer lock");
        while !writer::take_writer_lock(&client)
            .await
            .map_err(|e| start_error("taking the writer lock", &e))?
        {
            waiting
                .wait(&"another warehouse sink holds the writer lock on this database; waiting for it to stop")
                .await;
        }
        let acks = Acks::new(
            NAME,
            Arc::from(PARTICIPANT_ACKS_TOPIC),
            ctx.encoder(PARTICIPANT_ACKS_TOPIC).await?,
        );
        tracing::info!(warehouse = %url, "warehouse connected");
        let store = Warehouse::new(url, ctx.settings, client);
        TransactionalSink::open(store, acks, counters, ctx).await
    }
}

trellis_runtime::processor_run!(Warehouse);

/// A Postgres error at start: misconfiguration when an operator must act
/// (permissions, a dropped table), unavailability when Postgres may recover.
fn start_error(doing: &str, e: &tokio_postgres::Error) -> StartError {
    let message = format!("{doing}: {}", describe(e));
    match verdict(e) {
        Verdict::Fatal => StartError::Misconfigured(message),
        Verdict::Transient | Verdict::Data => StartError::Unavailable(message),
    }
}

/// Connects to the warehouse, waiting (with backoff, counted in `waits`)
/// while Postgres cannot be reached, and brings its schema up to date.
///
/// # Errors
/// [`StartError`] when the schema cannot be migrated or the sink's role is
/// not allowed what it needs.
pub async fn open(
    url: &ConnectionString,
    settings: &Settings,
    waits: Option<&prometheus::IntCounter>,
) -> Result<Client, StartError> {
    let mut backoff = Backoff::new("postgres");
    if let Some(waits) = waits {
        backoff = backoff.counting(waits.clone());
    }
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
    // (A schema that cannot be migrated needs an operator whatever the
    // cause; the connection itself was just made.)
    if !applied.is_empty() {
        tracing::info!(?applied, warehouse = %url, "warehouse schema migrated");
    }
    writer::prepare(&client)
        .await
        .map_err(|e| start_error("preparing the connection", &e))?;
    Ok(client)
}
