//! `trellis bench warehouse`: the warehouse sink against a plain `COPY` of
//! the same rows into the same Postgres, and its end-to-end lag at a steady
//! rate.
//!
//! The rows are what the sink's topics carry: 60% `progress`, 20%
//! `completions`, 20% aggregate cells, each record a row of its own (distinct
//! keys), over three tenants. The sink is timed like every processor bench,
//! from its first consumed record until its positions reach the end of its
//! inputs (every row committed); the baseline is one binary `COPY` per table
//! of the same rows, in one transaction, into tables made `LIKE` the sink's
//! (same columns, keys and indexes, no row-level security). Lag is measured
//! from each record's send to the first poll of `trellis_sink.offsets` (which
//! commits with the rows) that covers it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, COMPLETIONS_TOPIC, Completion, Evidence, LearnerProgress,
    PROGRESS_TOPIC,
};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::{end_offsets, producer_config};
use trellis_runtime::schema::{AvroEncoder, SchemaFile, registry_settings};
use trellis_warehouse::connection::{ConnectionString, describe};
use trellis_warehouse::rows::{AggregateRow, CompletionRow, ProgressRow, Source};

use crate::bench::{InProcess, Timing, timed};

const TENANTS: [&str; 3] = ["northwind-uni", "riverside-college", "acme-learning"];
const INPUTS: [&str; 3] = [PROGRESS_TOPIC, COMPLETIONS_TOPIC, AGGREGATES_TOPIC];
const T0: i64 = 1_780_000_000_000;

/// The same data as records and as rows.
#[derive(Default)]
pub struct Rows {
    progress: Vec<LearnerProgress>,
    completions: Vec<Completion>,
    aggregates: Vec<Aggregate>,
}

fn progress(n: usize) -> LearnerProgress {
    LearnerProgress {
        tenant_id: TENANTS[n % 3].into(),
        learner: format!("p{:08x}", n / 7),
        activity_id: format!("https://lms.example/mod/quiz/view.php?id={n}"),
        course_id: Some("https://lms.example/course/100".into()),
        attempts: i32::try_from(n % 1_000_000).unwrap_or_default(),
        best_score_scaled: Some(0.75),
        last_score_scaled: Some(0.5),
        success: Some(true),
        completion: "completed".into(),
        first_activity_at: T0,
        last_activity_at: T0 + n as i64,
        evidence: vec![Evidence {
            status: "passed".into(),
            event_id: format!("00000000-0000-4000-8000-{n:012x}"),
            at: T0 + n as i64,
        }],
    }
}

impl Rows {
    /// `count` rows with distinct keys.
    pub fn generate(count: usize) -> Self {
        let mut rows = Self::default();
        for n in 0..count {
            match n % 5 {
                0..=2 => rows.progress.push(progress(n)),
                3 => {
                    let p = progress(n);
                    rows.completions.push(Completion {
                        completion_id: format!("{}/c{n}", p.tenant_id),
                        tenant_id: p.tenant_id,
                        learner: p.learner,
                        activity_id: p.activity_id,
                        course_id: p.course_id,
                        kind: "passed".into(),
                        score_scaled: Some(0.75),
                        at: T0 + n as i64,
                        evidence_event_ids: vec![p.evidence[0].event_id.clone()],
                    });
                }
                _ => rows.aggregates.push(Aggregate {
                    tenant_id: TENANTS[n % 3].into(),
                    window_start: T0 + 3_600_000 * (n as i64 / 20),
                    window: "hour".into(),
                    dimension: "activity".into(),
                    dimension_value: format!("https://lms.example/mod/quiz/view.php?id={n}"),
                    events: 40,
                    distinct_learners: 12,
                    completions: 3,
                    passes: 2,
                    fails: 1,
                    avg_score_scaled: Some(0.7),
                    suppressed: false,
                    revision: 0,
                }),
            }
        }
        rows
    }

    fn len(&self) -> usize {
        self.progress.len() + self.completions.len() + self.aggregates.len()
    }
}

async fn encoder(
    registry_url: &str,
    topology: &trellis_runtime::topology::Topology,
    topic: &str,
) -> Result<AvroEncoder, String> {
    let registry = registry_settings(registry_url).map_err(|e| e.to_string())?;
    let file = topology.topic(topic)?.schema.clone().ok_or("no schema")?;
    let schema = SchemaFile::load(&topology.schema_path(&file)).map_err(|e| e.to_string())?;
    AvroEncoder::register(&registry, topic, &schema)
        .await
        .map_err(|e| e.to_string())
}

/// One record to produce: topic, key, value, id, tenant.
type Outgoing = (&'static str, String, Vec<u8>, String, String);

async fn records(
    rows: &Rows,
    registry_url: &str,
    topology: &std::path::Path,
) -> Result<Vec<Outgoing>, String> {
    let topology =
        trellis_runtime::topology::Topology::load_checked(topology).map_err(|e| e.to_string())?;
    let p = encoder(registry_url, &topology, PROGRESS_TOPIC).await?;
    let c = encoder(registry_url, &topology, COMPLETIONS_TOPIC).await?;
    let a = encoder(registry_url, &topology, AGGREGATES_TOPIC).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows.progress {
        let key = format!("{}|{}|{}", r.tenant_id, r.learner, r.activity_id);
        let value = p.encode(r).map_err(|e| e.to_string())?;
        out.push((PROGRESS_TOPIC, key.clone(), value, key, r.tenant_id.clone()));
    }
    for r in &rows.completions {
        let key = format!("{}|{}|{}", r.tenant_id, r.learner, r.activity_id);
        let value = c.encode(r).map_err(|e| e.to_string())?;
        out.push((
            COMPLETIONS_TOPIC,
            key,
            value,
            r.completion_id.clone(),
            r.tenant_id.clone(),
        ));
    }
    for r in &rows.aggregates {
        let key = format!(
            "{}|{}|{}|{}|{}",
            r.tenant_id, r.window, r.window_start, r.dimension, r.dimension_value
        );
        let value = a.encode(r).map_err(|e| e.to_string())?;
        out.push((
            AGGREGATES_TOPIC,
            key.clone(),
            value,
            key,
            r.tenant_id.clone(),
        ));
    }
    Ok(out)
}

/// Sends `record`; returns its delivery.
fn send(
    producer: &FutureProducer,
    record: &Outgoing,
) -> Result<rdkafka::producer::DeliveryFuture, String> {
    let (topic, key, value, id, tenant) = record;
    let headers = trellis_runtime::producer::Outgoing {
        topic,
        key: key.as_bytes(),
        value: Some(value.as_slice()),
        id: Some(id.as_str()),
        tenant: Some(tenant.as_str()),
        request_id: None,
        timestamp_ms: None,
    }
    .headers();
    let mut future = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    loop {
        match producer.send_result(future) {
            Ok(delivery) => return Ok(delivery),
            Err((rdkafka::error::KafkaError::MessageProduction(_), back)) => {
                future = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.to_string()),
        }
    }
}

async fn produce_all(kafka: &KafkaConfig, records: &[Outgoing]) -> Result<(), String> {
    let producer: FutureProducer = producer_config(kafka, None)
        .create()
        .map_err(|e| e.to_string())?;
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        pending.push(send(&producer, r)?);
    }
    for delivery in pending {
        delivery
            .await
            .map_err(|_| "delivery cancelled".to_string())?
            .map_err(|(e, _)| e.to_string())?;
    }
    Ok(())
}

fn ends(kafka: &KafkaConfig) -> Result<BTreeMap<String, i64>, String> {
    let mut ends = BTreeMap::new();
    for topic in INPUTS {
        ends.extend(end_offsets(kafka, topic).map_err(|e| e.to_string())?);
    }
    Ok(ends)
}

/// Empties the tables and the sink's bookkeeping, so a fresh sink writes
/// everything again.
async fn reset(client: &tokio_postgres::Client) -> Result<(), String> {
    for statement in [
        "TRUNCATE trellis.progress, trellis.completions, trellis.aggregates,
                  trellis_sink.offsets, trellis_sink.receipts, trellis_sink.erased_learners",
        "VACUUM ANALYZE trellis.progress, trellis.completions, trellis.aggregates",
    ] {
        client
            .batch_execute(statement)
            .await
            .map_err(|e| describe(&e))?;
    }
    Ok(())
}

/// One binary `COPY` per table of `rows` into tables like the sink's, in
/// one transaction.
async fn plain_copy(client: &mut tokio_postgres::Client, rows: &Rows) -> Result<Timing, String> {
    let sql = |e: tokio_postgres::Error| describe(&e);
    client
        .batch_execute(
            "SET client_min_messages = warning;
             DROP TABLE IF EXISTS trellis_sink.bench_progress, trellis_sink.bench_completions,
                                  trellis_sink.bench_aggregates;
             CREATE TABLE trellis_sink.bench_progress (LIKE trellis.progress INCLUDING ALL);
             CREATE TABLE trellis_sink.bench_completions (LIKE trellis.completions INCLUDING ALL);
             CREATE TABLE trellis_sink.bench_aggregates (LIKE trellis.aggregates INCLUDING ALL);",
        )
        .await
        .map_err(sql)?;
    let source = Source {
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };
    fn checked<T: Clone, R>(
        values: &[T],
        row: impl Fn(T) -> Result<R, trellis_warehouse::rows::RowError>,
    ) -> Result<Vec<R>, String> {
        values
            .iter()
            .map(|v| row(v.clone()).map_err(|e| e.to_string()))
            .collect()
    }
    let progress = checked(&rows.progress, |v| ProgressRow::new(v, None, None, source))?;
    let completions = checked(&rows.completions, |v| CompletionRow::new(v, None, source))?;
    let aggregates = checked(&rows.aggregates, |v| AggregateRow::new(v, None, source))?;
    let started = Instant::now();
    let tx = client.transaction().await.map_err(sql)?;
    trellis_warehouse::writer::copy_progress(
        &tx,
        "trellis_sink.bench_progress",
        &progress.iter().collect::<Vec<_>>(),
    )
    .await
    .map_err(sql)?;
    trellis_warehouse::writer::copy_completions(
        &tx,
        "trellis_sink.bench_completions",
        &completions.iter().collect::<Vec<_>>(),
    )
    .await
    .map_err(sql)?;
    trellis_warehouse::writer::copy_aggregates(
        &tx,
        "trellis_sink.bench_aggregates",
        &aggregates.iter().collect::<Vec<_>>(),
    )
    .await
    .map_err(sql)?;
    tx.commit().await.map_err(sql)?;
    let elapsed = started.elapsed();
    client
        .batch_execute(
            "DROP TABLE trellis_sink.bench_progress, trellis_sink.bench_completions,
                        trellis_sink.bench_aggregates",
        )
        .await
        .map_err(sql)?;
    Ok(Timing {
        records: rows.len() as u64,
        elapsed,
        cpu: None,
        phases: None,
    })
}

/// The sink as the stack runs it for latency: fetches answered within
/// 20 ms (tansu holds an empty fetch for the whole wait) and batches closed
/// after 50 ms (ops/config/warehouse.yaml).
fn live_sink(
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &std::path::Path,
    _url: &ConnectionString,
) -> Result<InProcess, String> {
    let mut kafka = kafka.clone();
    kafka.client.insert("fetch.wait.max.ms".into(), "20".into());
    InProcess::start(
        "warehouse",
        &kafka,
        registry_url,
        topology,
        trellis_runtime::config::BatchConfig {
            max_records: 5_000,
            max_wait_ms: 50,
        },
        |_| trellis_warehouse::Settings::default(),
        move |config, stop| trellis_warehouse::run(config, sink_secrets(), stop),
    )
}

/// The sink's one secret, its connection string, from this process's
/// environment (where the bench found the URL it was given).
fn sink_secrets() -> trellis_runtime::secret::Secrets {
    trellis_runtime::secret::load_secrets(&[trellis_warehouse::WAREHOUSE_URL]).unwrap_or_default()
}

/// Throughput figures.
pub struct Throughput {
    /// The plain `COPY`, best round.
    pub copy: Timing,
    /// The sink, best round.
    pub sink: Timing,
}

/// Produces `count` rows' records once, then alternates `rounds` times a
/// plain `COPY` of the rows and the sink over the records.
///
/// # Errors
/// Broker, registry or Postgres failures, as text.
pub async fn throughput(
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &std::path::Path,
    url: &ConnectionString,
    count: usize,
    rounds: usize,
) -> Result<Throughput, String> {
    let rows = Rows::generate(count);
    // The sink migrates the schema at start; the first COPY needs it.
    let mut client = trellis_warehouse::open(url, &trellis_warehouse::Settings::default(), None)
        .await
        .map_err(|e| e.to_string())?;
    produce_all(kafka, &records(&rows, registry_url, topology).await?).await?;
    let ends = ends(kafka)?;
    let mut best: Option<Throughput> = None;
    for round in 1..=rounds {
        let copy = plain_copy(&mut client, &rows).await?;
        println!(
            "round {round}: plain COPY  {:>8.0} rows/s ({} in {:.2}s)",
            copy.rate(),
            copy.records,
            copy.elapsed.as_secs_f64()
        );
        reset(&client).await?;
        let (sink, metrics) = timed(
            "warehouse",
            kafka,
            registry_url,
            topology,
            &ends,
            |_| trellis_warehouse::Settings::default(),
            |config, stop| trellis_warehouse::run(config, sink_secrets(), stop),
        )
        .await?;
        let written: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM trellis.progress) + (SELECT count(*) FROM trellis.completions)
                      + (SELECT count(*) FROM trellis.aggregates)",
                &[],
            )
            .await
            .map_err(|e| describe(&e))?
            .get(0);
        if written as usize != rows.len() {
            return Err(format!(
                "the sink wrote {written} rows of {}: not a valid run",
                rows.len()
            ));
        }
        let sink = Timing {
            records: rows.len() as u64,
            elapsed: sink.elapsed,
            cpu: None,
            phases: None,
        };
        let in_postgres =
            trellis_runtime::metrics::sample(&metrics, "trellis_warehouse_flush_seconds_sum")
                .unwrap_or(0.0);
        println!(
            "round {round}: warehouse   {:>8.0} rows/s ({} in {:.2}s, {in_postgres:.2}s of it in Postgres transactions)",
            sink.rate(),
            sink.records,
            sink.elapsed.as_secs_f64()
        );
        best = Some(match best {
            None => Throughput { copy, sink },
            Some(b) => Throughput {
                copy: if copy.rate() > b.copy.rate() {
                    copy
                } else {
                    b.copy
                },
                sink: if sink.rate() > b.sink.rate() {
                    sink
                } else {
                    b.sink
                },
            },
        });
    }
    best.ok_or_else(|| "no rounds".to_string())
}

/// Lag percentiles, milliseconds.
pub struct Lag {
    /// Records measured.
    pub records: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Worst.
    pub max: f64,
}

/// Sends `progress` records at `rate`/s for `secs` seconds to a running
/// sink and measures, per record, send → visible in Postgres.
///
/// # Errors
/// Broker, registry or Postgres failures, as text.
pub async fn lag(
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &std::path::Path,
    url: &ConnectionString,
    rate: u32,
    secs: u64,
) -> Result<Lag, String> {
    let client = trellis_warehouse::open(url, &trellis_warehouse::Settings::default(), None)
        .await
        .map_err(|e| e.to_string())?;
    reset(&client).await?;
    let count = usize::try_from(u64::from(rate) * secs).unwrap_or(usize::MAX);
    // Keys of their own, beside whatever an earlier bench left in the topic.
    let rows = Rows {
        progress: (0..count).map(|n| progress(100_000_000 + n)).collect(),
        ..Rows::default()
    };
    let outgoing = records(&rows, registry_url, topology).await?;
    let mut sink = live_sink(kafka, registry_url, topology, url)?;
    let http = reqwest::Client::new();
    // Measured once it has written what the topics already held.
    let before: i64 = ends(kafka)?.values().sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    while trellis_runtime::metrics::sample(&sink.metrics(&http).await?, "trellis_consumer_position")
        .unwrap_or(0.0)
        < before as f64
    {
        if Instant::now() > deadline {
            return Err("the sink did not catch up with the topics within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let poller = tokio::spawn({
        let url = url.clone();
        async move {
            let client = url.connect().await.map_err(|e| e.to_string())?;
            let mut polls: Vec<(Instant, BTreeMap<i32, i64>)> = Vec::new();
            loop {
                let rows = client
                    .query(
                        "SELECT partition, next_offset FROM trellis_sink.offsets WHERE topic = 'progress'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let at = Instant::now();
                polls.push((at, rows.iter().map(|r| (r.get(0), r.get(1))).collect()));
                if *done_rx.borrow_and_update() {
                    return Ok::<_, String>(polls);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let producer: FutureProducer = producer_config(kafka, None)
        .create()
        .map_err(|e| e.to_string())?;
    let tick = Duration::from_millis(10);
    let per_tick = (rate as usize / 100).max(1);
    let mut sent = Vec::with_capacity(count);
    let mut interval = tokio::time::interval(tick);
    for chunk in outgoing.chunks(per_tick) {
        interval.tick().await;
        for record in chunk {
            sent.push((Instant::now(), send(&producer, record)?));
        }
    }
    let mut delivered = Vec::with_capacity(sent.len());
    for (at, delivery) in sent {
        let delivery = delivery
            .await
            .map_err(|_| "delivery cancelled".to_string())?
            .map_err(|(e, _)| e.to_string())?;
        delivered.push((at, delivery.partition, delivery.offset));
    }
    // Until every record is visible.
    let last: BTreeMap<i32, i64> = delivered.iter().fold(BTreeMap::new(), |mut m, r| {
        let e = m.entry(r.1).or_insert(0);
        *e = (*e).max(r.2 + 1);
        m
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = client
            .query(
                "SELECT partition, next_offset FROM trellis_sink.offsets WHERE topic = 'progress'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let at: BTreeMap<i32, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if last
            .iter()
            .all(|(p, end)| at.get(p).is_some_and(|n| n >= end))
        {
            break;
        }
        if Instant::now() > deadline {
            return Err("the sink did not catch up within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = done_tx.send(true);
    let polls = poller.await.map_err(|e| e.to_string())??;
    sink.stop().await?;

    // Each poll makes visible, per partition, the records below its offset.
    let mut by_partition: BTreeMap<i32, Vec<(i64, Instant)>> = BTreeMap::new();
    for (sent, partition, offset) in &delivered {
        by_partition
            .entry(*partition)
            .or_default()
            .push((*offset, *sent));
    }
    let mut lags = Vec::with_capacity(delivered.len());
    for records in by_partition.values_mut() {
        records.sort_by_key(|r| r.0);
    }
    let mut cursor: BTreeMap<i32, usize> = BTreeMap::new();
    for (seen, offsets) in &polls {
        for (partition, next) in offsets {
            let Some(records) = by_partition.get(partition) else {
                continue;
            };
            let at = cursor.entry(*partition).or_insert(0);
            while let Some((offset, sent)) = records.get(*at)
                && offset < next
            {
                lags.push(seen.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
                *at += 1;
            }
        }
    }
    lags.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        lags.get(((lags.len() as f64 * q) as usize).min(lags.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Lag {
        records: lags.len(),
        p50: pick(0.50),
        p99: pick(0.99),
        max: lags.last().copied().unwrap_or(f64::NAN),
    })
}
