//! Writes one batch in one Postgres transaction: its rows, its saga
//! commands' effects and receipts, and the offsets it reached.
//!
//! Rows are copied (binary `COPY`) into temporary staging tables and merged
//! into the real tables with one `MERGE` per table: `COPY` is Postgres's
//! fastest way in, and the merge keyed by the row's primary key makes a
//! re-written row a no-op. (`COPY` straight into the
//! tables is not possible anyway: Postgres refuses `COPY FROM` into a table
//! whose row-level security applies to the writer.)
//!
//! Because the offsets commit with the rows, the warehouse holds each
//! record's effect exactly once whatever happens between two commits.

use std::collections::BTreeMap;
use std::time::SystemTime;

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};
use trellis_records::ParticipantAck;
use trellis_runtime::participant::Acks;

use trellis_runtime::sink::{PendingCommand, SinkBatch, Written, subject_hash};

use crate::batch::{ProgressKey, Tables};
use crate::connection::{Verdict, verdict};
use crate::rows::{AggregateRow, CompletionRow, ProgressRow};

/// Temporary staging tables, created once per connection.
const STAGING: &str = "
    CREATE TEMP TABLE IF NOT EXISTS stage_progress
        (LIKE trellis.progress INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS stage_completions
        (LIKE trellis.completions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
    CREATE TEMP TABLE IF NOT EXISTS stage_aggregates
        (LIKE trellis.aggregates INCLUDING DEFAULTS) ON COMMIT DELETE ROWS;
";

const PROGRESS_COLUMNS: &str = "tenant_id, learner, activity_id, course_id, attempts, \
    best_score_scaled, last_score_scaled, success, completion, first_activity_at, \
    last_activity_at, evidence, source_partition, source_offset";
const PROGRESS_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::BOOL,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::INT4,
    Type::INT8,
];
/// `MERGE` rather than `INSERT … ON CONFLICT`: measured here, ~20% less
/// time per batch into a large table (no speculative insertion), and safe
/// because the sink is the tables' only writer (one instance).
const PROGRESS_UPSERT: &str = "
    MERGE INTO trellis.progress t USING pg_temp.stage_progress s
    ON t.tenant_id = s.tenant_id AND t.learner = s.learner AND t.activity_id = s.activity_id
    WHEN MATCHED THEN UPDATE SET
        course_id = s.course_id,
        attempts = s.attempts,
        best_score_scaled = s.best_score_scaled,
        last_score_scaled = s.last_score_scaled,
        success = s.success,
        completion = s.completion,
        first_activity_at = s.first_activity_at,
        last_activity_at = s.last_activity_at,
        evidence = s.evidence,
        source_partition = s.source_partition,
        source_offset = s.source_offset
    WHEN NOT MATCHED THEN INSERT VALUES (
        s.tenant_id, s.learner, s.activity_id, s.course_id, s.attempts, s.best_score_scaled,
        s.last_score_scaled, s.success, s.completion, s.first_activity_at, s.last_activity_at,
        s.evidence, s.source_partition, s.source_offset)";

const COMPLETION_COLUMNS: &str = "tenant_id, completion_id, learner, activity_id, course_id, \
    kind, score_scaled, completed_at, evidence_event_ids, source_partition, source_offset";
const COMPLETION_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TIMESTAMPTZ,
    Type::TEXT_ARRAY,
    Type::INT4,
    Type::INT8,
];
/// A completion id names its content: a re-sent one changes nothing.
const COMPLETION_INSERT: &str = "
    MERGE INTO trellis.completions t USING pg_temp.stage_completions s
    ON t.tenant_id = s.tenant_id AND t.completion_id = s.completion_id
    WHEN NOT MATCHED THEN INSERT VALUES (
        s.tenant_id, s.completion_id, s.learner, s.activity_id, s.course_id, s.kind,
        s.score_scaled, s.completed_at, s.evidence_event_ids, s.source_partition,
        s.source_offset)";

const AGGREGATE_COLUMNS: &str = "tenant_id, window_length, window_start, dimension, \
    dimension_value, events, distinct_learners, completions, passes, fails, avg_score_scaled, \
    suppressed, revision, source_partition, source_offset";
const AGGREGATE_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::FLOAT8,
    Type::BOOL,
    Type::INT4,
    Type::INT4,
    Type::INT8,
];
/// A cell keeps its highest revision: an older one read late changes nothing.
const AGGREGATE_UPSERT: &str = "
    MERGE INTO trellis.aggregates t USING pg_temp.stage_aggregates s
    ON t.tenant_id = s.tenant_id AND t.window_length = s.window_length
       AND t.window_start = s.window_start AND t.dimension = s.dimension
       AND t.dimension_value = s.dimension_value
    WHEN MATCHED AND t.revision <= s.revision THEN UPDATE SET
        events = s.events,
        distinct_learners = s.distinct_learners,
        completions = s.completions,
        passes = s.passes,
        fails = s.fails,
        avg_score_scaled = s.avg_score_scaled,
        suppressed = s.suppressed,
        revision = s.revision,
        source_partition = s.source_partition,
        source_offset = s.source_offset
    WHEN NOT MATCHED THEN INSERT VALUES (
        s.tenant_id, s.window_length, s.window_start, s.dimension, s.dimension_value,
        s.events, s.distinct_learners, s.completions, s.passes, s.fails, s.avg_score_scaled,
        s.suppressed, s.revision, s.source_partition, s.source_offset)";

const STAGE_PROGRESS: &str = "pg_temp.stage_progress";
const STAGE_COMPLETIONS: &str = "pg_temp.stage_completions";
const STAGE_AGGREGATES: &str = "pg_temp.stage_aggregates";

/// Staging tables hold one statement's rows at a time.
const CLEAR_STAGING: &str =
    "TRUNCATE pg_temp.stage_progress, pg_temp.stage_completions, pg_temp.stage_aggregates";

/// A row Postgres refused, found by [`find_refused`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A `progress` row, by key.
    Progress(ProgressKey),
    /// A completion, by `(tenant, completion id)`.
    Completion(String, String),
    /// An aggregate cell, by key.
    Aggregate(crate::batch::CellKey),
}

/// Any number; the same in every sink (see [`take_writer_lock`]).
const WRITER_LOCK: i64 = 0x0074_7265_6c6c_6977; // "trelliw"

/// Takes the warehouse's writer lock for this session: the sink must be the
/// tables' only writer (its erased learners and its `MERGE`s rely on it). A
/// second sink — a deploy overlap, a copy started by mistake — gets `false`
/// and waits until the first one's session ends.
///
/// # Errors
/// Postgres's.
pub async fn take_writer_lock(client: &Client) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
        .await?
        .get(0))
}

/// Prepares a new connection for [`write`].
///
/// # Errors
/// Postgres's.
pub async fn prepare(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.batch_execute(STAGING).await
}

/// Writes `batch` in one transaction, answering its commands with `acks`.
///
/// # Errors
/// Postgres's; nothing is written then.
pub async fn write(
    client: &mut Client,
    batch: &SinkBatch<Tables>,
    acks: &Acks,
) -> Result<Written, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if already_written(&tx, batch).await? {
        // A COMMIT whose answer was lost with the connection: the batch is
        // in, do not run it again (an erasure would now find 0 rows).
        let answers = kept_answers(&tx, batch).await?;
        tx.rollback().await?;
        return Ok(Written {
            answers,
            ..Written::default()
        });
    }
    let mut written = Written::default();
    let (upserts, deletes) = batch.rows.progress_changes();
    if !upserts.is_empty() {
        copy_progress(&tx, STAGE_PROGRESS, &upserts).await?;
        written
            .rows
            .insert("progress", tx.execute(PROGRESS_UPSERT, &[]).await?);
    }
    if !deletes.is_empty() {
        let (t, l, a) = columns3(deletes.iter().map(|k| (&k.0, &k.1, &k.2)));
        let n = tx
            .execute(
                "DELETE FROM trellis.progress p
                 USING unnest($1::text[], $2::text[], $3::text[]) AS d(t, l, a)
                 WHERE p.tenant_id = d.t AND p.learner = d.l AND p.activity_id = d.a",
                &[&t, &l, &a],
            )
            .await?;
        *written.deleted.entry("progress").or_default() += n;
    }
    if !batch.rows.completions.is_empty() {
        let rows: Vec<&CompletionRow> = batch.rows.completions.values().collect();
        copy_completions(&tx, STAGE_COMPLETIONS, &rows).await?;
        written
            .rows
            .insert("completions", tx.execute(COMPLETION_INSERT, &[]).await?);
    }
    if !batch.rows.aggregates.is_empty() {
        let rows: Vec<&AggregateRow> = batch.rows.aggregates.values().collect();
        copy_aggregates(&tx, STAGE_AGGREGATES, &rows).await?;
        written
            .rows
            .insert("aggregates", tx.execute(AGGREGATE_UPSERT, &[]).await?);
    }
    for command in &batch.commands {
        let c = &command.command;
        let ack = acks.ack(
            &c.command_id,
            &c.request_id,
            &c.tenant_id,
            c.learner.clone(),
            command.at.unwrap_or_default(),
        );
        let ack = execute(&tx, command, ack, &mut written).await?;
        if let Some(receipt) = receipt(&ack) {
            tx.execute(
                "INSERT INTO trellis_sink.receipts (command_id, answer) VALUES ($1, $2)
                 ON CONFLICT (command_id) DO NOTHING",
                &[&ack.command_id, &receipt],
            )
            .await?;
        }
        written.answers.push((ack, command.at));
    }
    if !batch.offsets.is_empty() {
        let topics: Vec<&str> = batch.offsets.keys().map(|(t, _)| &**t).collect();
        let partitions: Vec<i32> = batch.offsets.keys().map(|(_, p)| *p).collect();
        let next: Vec<i64> = batch.offsets.values().copied().collect();
        tx.execute(
            "INSERT INTO trellis_sink.offsets (topic, partition, next_offset)
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[])
             ON CONFLICT (topic, partition) DO UPDATE SET
                 next_offset = GREATEST(trellis_sink.offsets.next_offset, EXCLUDED.next_offset),
                 updated_at = now()",
            &[&topics, &partitions, &next],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// The largest access export an answer carries: answers travel on a topic
/// whose messages brokers limit (librdkafka's default is 1 MB).
const MAX_EXPORT_BYTES: usize = 512 * 1024;

/// What is kept of an answer so a re-sent command gets it again: all but
/// the learner's pseudonym (the re-sent command carries it), so the
/// warehouse keeps no pseudonym of an erased learner. Access answers are
/// not kept: they hold the learner's rows, and answering a re-sent access
/// request from the tables as they are is right.
pub fn receipt(ack: &ParticipantAck) -> Option<serde_json::Value> {
    trellis_runtime::sink::receipt(ack).and_then(|kept| serde_json::to_value(kept).ok())
}

/// Whether Postgres's offsets already include this batch: each partition it
/// read is stored at or beyond where the batch ends. (Locks the rows, so a
/// second writer would wait here rather than interleave.)
async fn already_written(
    tx: &Transaction<'_>,
    batch: &SinkBatch<Tables>,
) -> Result<bool, tokio_postgres::Error> {
    if batch.offsets.is_empty() {
        return Ok(false);
    }
    let topics: Vec<&str> = batch.offsets.keys().map(|(t, _)| &**t).collect();
    let partitions: Vec<i32> = batch.offsets.keys().map(|(_, p)| *p).collect();
    let stored: BTreeMap<(String, i32), i64> = tx
        .query(
            "SELECT o.topic, o.partition, o.next_offset FROM trellis_sink.offsets o
             JOIN unnest($1::text[], $2::int[]) AS b(topic, partition)
               ON o.topic = b.topic AND o.partition = b.partition
             FOR UPDATE OF o",
            &[&topics, &partitions],
        )
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    Ok(batch.offsets.iter().all(|((topic, partition), next)| {
        stored
            .get(&(topic.to_string(), *partition))
            .is_some_and(|s| s >= next)
    }))
}

/// The answers kept for the batch's commands (a batch already written).
async fn kept_answers(
    tx: &Transaction<'_>,
    batch: &SinkBatch<Tables>,
) -> Result<Vec<(ParticipantAck, Option<i64>)>, tokio_postgres::Error> {
    let mut answers = Vec::new();
    for pending in &batch.commands {
        let c = &pending.command;
        if let Some(row) = tx
            .query_opt(
                "SELECT answer FROM trellis_sink.receipts WHERE command_id = $1",
                &[&c.command_id],
            )
            .await?
            && let Ok(mut ack) = serde_json::from_value::<ParticipantAck>(row.get(0))
        {
            ack.learner.clone_from(&c.learner);
            answers.push((ack, pending.at));
        }
    }
    Ok(answers)
}

/// Executes one saga command: an erasure deletes the learner's rows and
/// remembers the learner; an access request reads them for the export.
async fn execute(
    tx: &Transaction<'_>,
    command: &PendingCommand,
    mut ack: ParticipantAck,
    written: &mut Written,
) -> Result<ParticipantAck, tokio_postgres::Error> {
    let c = &command.command;
    let Some(learner) = c.learner.as_deref() else {
        ack.outcome = "not_found".into();
        ack.detail = "no pseudonym: the subject was never seen".into();
        return Ok(ack);
    };
    let tenant = c.tenant_id.as_str();
    match c.kind.as_str() {
        "erasure" => {
            let progress = tx
                .execute(
                    "DELETE FROM trellis.progress WHERE tenant_id = $1 AND learner = $2",
                    &[&tenant, &learner],
                )
                .await?;
            let completions = tx
                .execute(
                    "DELETE FROM trellis.completions WHERE tenant_id = $1 AND learner = $2",
                    &[&tenant, &learner],
                )
                .await?;
            let at = SystemTime::UNIX_EPOCH
                + std::time::Duration::from_millis(c.issued_at.max(0).unsigned_abs());
            tx.execute(
                "INSERT INTO trellis_sink.erased_learners (learner_hash, tenant_id, request_id, erased_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (learner_hash) DO NOTHING",
                &[
                    &subject_hash(tenant, learner).as_slice(),
                    &tenant,
                    &c.request_id,
                    &at,
                ],
            )
            .await?;
            *written.deleted.entry("progress").or_default() += progress;
            *written.deleted.entry("completions").or_default() += completions;
            ack.records_affected = i64::try_from(progress + completions).unwrap_or(i64::MAX);
            ack.detail = format!(
                "deleted {progress} progress rows and {completions} completions; aggregates are anonymous and stay"
            );
        }
        "access" => {
            let row = tx
                .query_one(
                    "SELECT
                        (SELECT coalesce(jsonb_agg(to_jsonb(p) - 'source_partition' - 'source_offset'
                                                   ORDER BY activity_id), '[]')
                           FROM trellis.progress p WHERE tenant_id = $1 AND learner = $2),
                        (SELECT coalesce(jsonb_agg(to_jsonb(c) - 'source_partition' - 'source_offset'
                                                   ORDER BY completion_id), '[]')
                           FROM trellis.completions c WHERE tenant_id = $1 AND learner = $2)",
                    &[&tenant, &learner],
                )
                .await?;
            let progress: serde_json::Value = row.get(0);
            let completions: serde_json::Value = row.get(1);
            let count = |v: &serde_json::Value| v.as_array().map_or(0, Vec::len);
            let held = count(&progress) + count(&completions);
            ack.records_affected = i64::try_from(held).unwrap_or(i64::MAX);
            ack.detail = format!(
                "{} progress rows and {} completions held",
                count(&progress),
                count(&completions)
            );
            let export =
                serde_json::json!({"progress": progress, "completions": completions}).to_string();
            if export.len() <= MAX_EXPORT_BYTES {
                ack.export = Some(export);
            } else {
                ack.detail.push_str(&format!(
                    "; too many to answer inline ({} bytes): query the warehouse tables for them",
                    export.len()
                ));
            }
        }
        other => {
            ack.outcome = "failed".into();
            ack.detail = format!("unknown command kind `{other}`");
        }
    }
    Ok(ack)
}

fn columns3<'a>(
    keys: impl Iterator<Item = (&'a String, &'a String, &'a String)>,
) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut c = Vec::new();
    for (x, y, z) in keys {
        a.push(x.as_str());
        b.push(y.as_str());
        c.push(z.as_str());
    }
    (a, b, c)
}

async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    columns: &str,
    types: &[Type],
    rows: impl Iterator<Item = Vec<Box<dyn ToSql + Sync + Send + '_>>>,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, types);
    pin_mut!(writer);
    for row in rows {
        let values: Vec<&(dyn ToSql + Sync)> =
            row.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Copies `rows` into `table` (binary `COPY`; the staging table, or a
/// benchmark's baseline table).
///
/// # Errors
/// Postgres's.
pub async fn copy_progress(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&ProgressRow],
) -> Result<(), tokio_postgres::Error> {
    copy_rows(
        tx,
        table,
        PROGRESS_COLUMNS,
        PROGRESS_TYPES,
        rows.iter().map(|r| {
            let v = &r.value;
            vec![
                Box::new(v.tenant_id.as_str()) as Box<dyn ToSql + Sync + Send>,
                Box::new(v.learner.as_str()),
                Box::new(v.activity_id.as_str()),
                Box::new(v.course_id.as_deref()),
                Box::new(v.attempts),
                Box::new(v.best_score_scaled),
                Box::new(v.last_score_scaled),
                Box::new(v.success),
                Box::new(v.completion.as_str()),
                Box::new(r.first_activity_at),
                Box::new(r.last_activity_at),
                Box::new(&r.evidence),
                Box::new(r.source.partition),
                Box::new(r.source.offset),
            ]
        }),
    )
    .await
}

/// Copies `rows` into `table` (binary `COPY`; the staging table, or a
/// benchmark's baseline table).
///
/// # Errors
/// Postgres's.
pub async fn copy_completions(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&CompletionRow],
) -> Result<(), tokio_postgres::Error> {
    copy_rows(
        tx,
        table,
        COMPLETION_COLUMNS,
        COMPLETION_TYPES,
        rows.iter().map(|r| {
            let v = &r.value;
            vec![
                Box::new(v.tenant_id.as_str()) as Box<dyn ToSql + Sync + Send>,
                Box::new(v.completion_id.as_str()),
                Box::new(v.learner.as_str()),
                Box::new(v.activity_id.as_str()),
                Box::new(v.course_id.as_deref()),
                Box::new(v.kind.as_str()),
                Box::new(v.score_scaled),
                Box::new(r.completed_at),
                Box::new(&v.evidence_event_ids),
                Box::new(r.source.partition),
                Box::new(r.source.offset),
            ]
        }),
    )
    .await
}

/// Copies `rows` into `table` (binary `COPY`; the staging table, or a
/// benchmark's baseline table).
///
/// # Errors
/// Postgres's.
pub async fn copy_aggregates(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&AggregateRow],
) -> Result<(), tokio_postgres::Error> {
    copy_rows(
        tx,
        table,
        AGGREGATE_COLUMNS,
        AGGREGATE_TYPES,
        rows.iter().map(|r| {
            let v = &r.value;
            vec![
                Box::new(v.tenant_id.as_str()) as Box<dyn ToSql + Sync + Send>,
                Box::new(v.window.as_str()),
                Box::new(r.window_start),
                Box::new(v.dimension.as_str()),
                Box::new(v.dimension_value.as_str()),
                Box::new(v.events),
                Box::new(v.distinct_learners),
                Box::new(v.completions),
                Box::new(v.passes),
                Box::new(v.fails),
                Box::new(v.avg_score_scaled),
                Box::new(v.suppressed),
                Box::new(v.revision),
                Box::new(r.source.partition),
                Box::new(r.source.offset),
            ]
        }),
    )
    .await
}

/// Finds the rows of `batch` Postgres refuses, each tried alone under a
/// savepoint in a transaction that is then rolled back: the slow path,
/// taken only after a batch failed with a data error.
///
/// # Errors
/// Postgres's, for anything but a refused row.
pub async fn find_refused(
    client: &mut Client,
    batch: &Tables,
) -> Result<Vec<(Refused, tokio_postgres::Error)>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut refused = Vec::new();
    let (upserts, _) = batch.progress_changes();
    for row in upserts {
        if let Err(e) = alone(
            &tx,
            copy_progress(&tx, STAGE_PROGRESS, &[row]),
            PROGRESS_UPSERT,
        )
        .await?
        {
            refused.push((Refused::Progress(row.key()), e));
        }
    }
    for row in batch.completions.values() {
        if let Err(e) = alone(
            &tx,
            copy_completions(&tx, STAGE_COMPLETIONS, &[row]),
            COMPLETION_INSERT,
        )
        .await?
        {
            let v = &row.value;
            refused.push((
                Refused::Completion(v.tenant_id.clone(), v.completion_id.clone()),
                e,
            ));
        }
    }
    for row in batch.aggregates.values() {
        if let Err(e) = alone(
            &tx,
            copy_aggregates(&tx, STAGE_AGGREGATES, &[row]),
            AGGREGATE_UPSERT,
        )
        .await?
        {
            refused.push((Refused::Aggregate(row.cell()), e));
        }
    }
    tx.rollback().await?;
    Ok(refused)
}

/// Runs one row's copy and statement under a savepoint. The outer result
/// is a failure to run at all; the inner one, the row's verdict.
async fn alone(
    tx: &Transaction<'_>,
    copy: impl Future<Output = Result<(), tokio_postgres::Error>>,
    statement: &str,
) -> Result<Result<(), tokio_postgres::Error>, tokio_postgres::Error> {
    tx.batch_execute("SAVEPOINT row_probe").await?;
    let tried = async {
        copy.await?;
        tx.execute(statement, &[]).await?;
        Ok(())
    }
    .await;
    match tried {
        Ok(()) => tx.batch_execute("RELEASE SAVEPOINT row_probe").await?,
        // Only a data error is the row's fault; anything else (a timeout,
        // a full disk) is the caller's to retry, and blames no row.
        Err(e) if verdict(&e) != Verdict::Data => return Err(e),
        Err(_) => tx.batch_execute("ROLLBACK TO SAVEPOINT row_probe").await?,
    }
    tx.batch_execute(CLEAR_STAGING).await?;
    Ok(tried)
}
