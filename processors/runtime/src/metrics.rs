//! Prometheus metrics and the `/metrics` + `/healthz` endpoint.
//!
//! Every processor exposes the same families, labelled with its name, so one
//! dashboard covers the topology. Label values are topic names, reason codes
//! and error codes: never tenant data or identifiers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Counter, CounterVec, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// The metric families of one processor.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Input records consumed, by topic.
    pub records_in: IntCounterVec,
    /// Output records durably produced, by topic.
    pub records_out: IntCounterVec,
    /// Records sent to the dead-letter topic, by reason code.
    pub dlq_records: IntCounterVec,
    /// Errors, by code.
    pub errors: IntCounterVec,
    /// Input records dropped as duplicates by id.
    pub duplicates_dropped: IntCounter,
    /// Input records re-applied to state during restore-by-replay.
    pub replayed: IntCounter,
    /// Time from a batch's first record to its checkpoint.
    pub batch_latency: Histogram,
    /// Where batches spend their time (`trellis_batch_seconds_total{phase}`).
    pub batch_seconds: BatchSeconds,
    /// Next offset to read, by topic and partition.
    pub position: IntGaugeVec,
    /// 1 while a partition cannot make progress by itself, by reason
    /// (`replay_target_beyond_log_end`, `position_beyond_log_end`).
    pub stuck: IntGaugeVec,
    /// 1 while this instance owns the processor's state (holds the
    /// group's lease), 0 while it stands by.
    pub owner: IntGauge,
    /// Ownership changes of this instance, by what happened (`took_over`,
    /// `handed_over`).
    pub ownership_changes: IntCounterVec,
    in_cache: Arc<Mutex<HashMap<String, IntCounter>>>,
}

/// Seconds spent in each phase of a batch, summed over batches. Their
/// shares say whether a processor is bound by its own work or by waiting on
/// the broker.
#[derive(Clone)]
pub struct BatchSeconds {
    /// From the batch's first record until its checkpoint begins, waiting
    /// for the consumer to deliver the next record: a processor starved of
    /// input (a slow fetch, a quiet topic until the batch's deadline).
    pub input: Counter,
    /// From the batch's first record until its checkpoint begins, the rest:
    /// processing records and handing outputs to the producer.
    pub process: Counter,
    /// The processor's end-of-batch work: saving its working set into the
    /// batch and its `flush` (the warehouse's Postgres transaction, say).
    pub flush: Counter,
    /// Waiting until the broker has acknowledged every output.
    pub deliver: Counter,
    /// The state store's commit and the consumer offsets' (and a Kafka
    /// transaction's, where enabled).
    pub commit: Counter,
}

/// Registration failed: only possible through a programming error (duplicate names).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates the families with a constant `processor` label.
    ///
    /// # Errors
    /// [`MetricsError`] if registration fails.
    pub fn new(processor: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| {
            Opts::new(name, help).const_label("processor", processor.to_string())
        };
        let records_in = IntCounterVec::new(
            opts("trellis_records_in_total", "Input records consumed."),
            &["topic"],
        )?;
        let records_out = IntCounterVec::new(
            opts(
                "trellis_records_out_total",
                "Output records durably produced.",
            ),
            &["topic"],
        )?;
        let dlq_records = IntCounterVec::new(
            opts(
                "trellis_dlq_records_total",
                "Records dead-lettered, by reason code.",
            ),
            &["reason"],
        )?;
        let errors =
            IntCounterVec::new(opts("trellis_errors_total", "Errors by code."), &["code"])?;
        let duplicates_dropped = IntCounter::with_opts(opts(
            "trellis_duplicates_dropped_total",
            "Input records dropped as duplicates by id.",
        ))?;
        let replayed = IntCounter::with_opts(opts(
            "trellis_replayed_records_total",
            "Input records re-applied to state while restoring by replay.",
        ))?;
        let batch_latency = Histogram::with_opts(
            HistogramOpts::new(
                "trellis_batch_latency_seconds",
                "Time from a batch's first record to its checkpoint.",
            )
            .const_label("processor", processor.to_string())
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let phases = CounterVec::new(
            opts(
                "trellis_batch_seconds_total",
                "Seconds batches spent per phase: input (waiting for the next input record), \
                 process (processing records), flush (the processor's end-of-batch work), deliver (waiting for output \
                 acknowledgements), commit (state and offsets).",
            ),
            &["phase"],
        )?;
        let batch_seconds = BatchSeconds {
            input: phases.with_label_values(&["input"]),
            process: phases.with_label_values(&["process"]),
            flush: phases.with_label_values(&["flush"]),
            deliver: phases.with_label_values(&["deliver"]),
            commit: phases.with_label_values(&["commit"]),
        };
        let position = IntGaugeVec::new(
            opts("trellis_consumer_position", "Next offset to read."),
            &["topic", "partition"],
        )?;
        let stuck = IntGaugeVec::new(
            opts(
                "trellis_partition_stuck",
                "1 while a partition cannot make progress by itself, by reason.",
            ),
            &["topic", "partition", "reason"],
        )?;
        let owner = IntGauge::with_opts(opts(
            "trellis_state_owner",
            "1 while this instance owns the processor's state (holds the consumer group's lease), 0 while it stands by.",
        ))?;
        let ownership_changes = IntCounterVec::new(
            opts(
                "trellis_ownership_changes_total",
                "This instance taking over or handing over the processor's state.",
            ),
            &["change"],
        )?;
        registry.register(Box::new(owner.clone()))?;
        registry.register(Box::new(ownership_changes.clone()))?;
        registry.register(Box::new(stuck.clone()))?;
        registry.register(Box::new(records_in.clone()))?;
        registry.register(Box::new(records_out.clone()))?;
        registry.register(Box::new(dlq_records.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duplicates_dropped.clone()))?;
        registry.register(Box::new(replayed.clone()))?;
        registry.register(Box::new(batch_latency.clone()))?;
        registry.register(Box::new(phases))?;
        registry.register(Box::new(position.clone()))?;
        Ok(Self {
            registry,
            records_in,
            records_out,
            dlq_records,
            errors,
            duplicates_dropped,
            replayed,
            batch_latency,
            batch_seconds,
            position,
            stuck,
            owner,
            ownership_changes,
            in_cache: Arc::default(),
        })
    }

    /// The `records_in` counter for `topic`, resolved once per topic so the
    /// per-record path does no label hashing.
    pub fn records_in_for(&self, topic: &str) -> IntCounter {
        let mut cache = self.in_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(topic.to_string())
            .or_insert_with(|| self.records_in.with_label_values(&[topic]))
            .clone()
    }

    /// Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Registers an extra collector (processor-specific metrics).
    ///
    /// # Errors
    /// [`MetricsError`] on a duplicate name.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), MetricsError> {
        Ok(self.registry.register(collector)?)
    }

    /// Serves `/metrics` and `/healthz` on `addr` until the process ends;
    /// returns the bound address (useful when `addr` has port 0).
    ///
    /// # Errors
    /// The bind error.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(self.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
        Ok(bound)
    }
}

async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

/// Reads one sample from Prometheus text (tests and tools scrape with this).
///
/// `selector` is the metric name followed by its labels exactly as rendered,
/// e.g. `trellis_dlq_records_total{processor="collector",reason="MALFORMED_JSON"}`;
/// a name alone sums every series of that name.
pub fn sample(text: &str, selector: &str) -> Option<f64> {
    let whole_family = !selector.contains('{');
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let matches = if whole_family {
            series == selector || series.starts_with(&format!("{selector}{{"))
        } else {
            // Every label the selector names, in any order, among others.
            let (name, labels) = selector.split_once('{').unwrap_or((selector, ""));
            series.starts_with(&format!("{name}{{"))
                && labels
                    .trim_end_matches('}')
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .all(|l| series.contains(l))
        };
        if matches && let Ok(v) = value.parse::<f64>() {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_samples_labelled_counters() {
        let m = Metrics::new("collector").unwrap();
        m.records_in_for("ingest.events").inc_by(3);
        m.records_in_for("ingest.xapi").inc();
        m.dlq_records.with_label_values(&["MALFORMED_JSON"]).inc();
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                r#"trellis_records_in_total{processor="collector",topic="ingest.events"}"#
            ),
            Some(3.0)
        );
        assert_eq!(sample(&text, "trellis_records_in_total"), Some(4.0));
        assert_eq!(sample(&text, "trellis_dlq_records_total"), Some(1.0));
        assert_eq!(sample(&text, "trellis_nothing"), None);
    }
}
