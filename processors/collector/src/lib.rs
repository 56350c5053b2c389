//! The collector: the front door of Trellis.
//!
//! It reads the ingest topics upstream producers write (`ingest.xapi`: xAPI
//! statements; `ingest.events`: Moodle-style log events and app events),
//! validates each record, normalises it into the canonical envelope
//! ([`trellis_records::CollectedEvent`]) and writes it to `collected`, keyed
//! `tenant|subject` so a learner's events stay ordered in one partition.
//! Everything it rejects goes to `dlq` with a reason code and the original
//! bytes; bad input never stops it.
//!
//! # Delivery semantics
//! The runtime's loop ([`trellis_runtime::pipeline`]): outputs are durable
//! before the batch's state and input positions are committed together, so
//! a crash replays the batch against the state it saw and emits identical
//! records (same id `tenant/event_id`, same timestamp) that consumers drop by
//! id. Upstream duplicates within the dedup window are dropped here
//! ([`dedup`]); the window is state rebuilt from the ingest log.
//!
//! # Layout
//! - [`validate`]: rules shared by both formats, JSON events, reason codes.
//! - [`xapi`]: xAPI statement rules.
//! - [`dedup`]: the duplicate window.

pub mod apikeys;
pub mod dedup;
pub mod http;
pub mod json;
pub mod validate;
pub mod xapi;

use std::sync::Arc;

use prometheus::IntCounterVec;
use serde::Deserialize;
use trellis_records::COLLECTED_TOPIC;
use trellis_runtime::build::{Build, Context};
use trellis_runtime::pipeline::{ProcessError, StartError};
use trellis_runtime::schema::AvroEncoder;
use trellis_runtime::secret::{SecretFormat, SecretSpec};
use trellis_runtime::state::{StateError, StateStore};
use trellis_runtime::{Emitter, InputRecord, OutputRecord, Processor, StateTxn};

use crate::dedup::DedupWindow;
use crate::validate::{Envelope, IngestFormat, Limits, validate};

/// The processor's name in topology.yaml, metrics and logs.
pub const NAME: &str = "collector";

/// Secrets the collector refuses to start without.
pub const SECRETS: &[SecretSpec] = &[SecretSpec {
    env: "TRELLIS_INGEST_SIGNING_KEY",
    format: SecretFormat::Hex32,
    purpose: "master key for signed HTTP ingestion: per-key signing secrets derive from it",
}];

/// The collector's `settings` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How long an event id is remembered for duplicate detection, in seconds.
    #[serde(default = "default_dedup_window_secs")]
    pub dedup_window_secs: u64,
    /// Largest accepted event, in bytes.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How far an event's time may run ahead of its receipt, in seconds.
    #[serde(default = "default_max_clock_skew_secs")]
    pub max_clock_skew_secs: u64,
    /// How old an event may be when received, in days.
    #[serde(default = "default_max_event_age_days")]
    pub max_event_age_days: u64,
    /// Input topics carrying xAPI statements; other inputs carry JSON events.
    #[serde(default = "default_xapi_topics")]
    pub xapi_topics: Vec<String>,
    /// HTTP ingestion ([`http`]); off when absent.
    #[serde(default)]
    pub http: Option<http::HttpSettings>,
}

/// One day: LMS plugins and LRS forwarders retry within hours, not days.
const fn default_dedup_window_secs() -> u64 {
    86_400
}

/// 64 KiB: a large xAPI statement with extensions is a few KiB; the xAPI
/// spec leaves the limit to the LRS and common LRSs cap requests at 1-10 MiB
/// for whole batches.
const fn default_max_event_bytes() -> usize {
    65_536
}

/// Five minutes of client clock skew.
const fn default_max_clock_skew_secs() -> u64 {
    300
}

/// A year: backfills of older data go through a separate, reviewed import.
const fn default_max_event_age_days() -> u64 {
    365
}

fn default_xapi_topics() -> Vec<String> {
    vec!["ingest.xapi".to_string()]
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            dedup_window_secs: default_dedup_window_secs(),
            max_event_bytes: default_max_event_bytes(),
            max_clock_skew_secs: default_max_clock_skew_secs(),
            max_event_age_days: default_max_event_age_days(),
            xapi_topics: default_xapi_topics(),
            http: None,
        }
    }
}

impl Settings {
    fn limits(&self) -> Limits {
        Limits {
            max_event_bytes: self.max_event_bytes,
            max_clock_skew_ms: self.max_clock_skew_secs as i64 * 1000,
            max_event_age_ms: self.max_event_age_days as i64 * 86_400_000,
        }
    }
}

/// The collector's processing logic.
pub struct Collector {
    encoder: AvroEncoder,
    collected: Arc<str>,
    limits: Limits,
    xapi_topics: Vec<String>,
    dedup: DedupWindow,
    clock_skew: IntCounterVec,
}

impl Collector {
    /// A collector writing `collected` with `encoder`.
    ///
    /// # Panics
    /// Never: the counter's options are constants.
    pub fn new(settings: &Settings, encoder: AvroEncoder) -> Self {
        Self {
            encoder,
            collected: Arc::from(COLLECTED_TOPIC),
            limits: settings.limits(),
            xapi_topics: settings.xapi_topics.clone(),
            dedup: DedupWindow::new(settings.dedup_window_secs as i64 * 1000),
            clock_skew: IntCounterVec::new(
                prometheus::Opts::new(
                    "trellis_xapi_clock_skew_total",
                    "xAPI statements kept with a timestamp beyond the JSON-event limits (max_clock_skew_secs ahead, max_event_age_days behind the receive time).",
                ),
                &["direction"],
            )
            .expect("valid counter"),
        }
    }

    /// The clock-skew counter, for registration.
    pub fn clock_skew(&self) -> IntCounterVec {
        self.clock_skew.clone()
    }

    /// Statements keep their own time (xAPI requires it); how far it is
    /// from the receive time is counted, so skewed sources show up.
    fn observe_skew(&self, occurred_at: i64, received_at: i64) {
        let direction = if occurred_at > received_at + self.limits.max_clock_skew_ms {
            "future"
        } else if occurred_at < received_at - self.limits.max_event_age_ms {
            "past"
        } else {
            return;
        };
        self.clock_skew.with_label_values(&[direction]).inc();
    }
}

impl Processor for Collector {
    /// The collector parses its JSON input itself (validation is its job).
    type Input<'r> = ();

    fn restore(&mut self, store: &StateStore) -> Result<(), StateError> {
        self.dedup.restore(store)
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        (): (),
        _txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let format = if self.xapi_topics.iter().any(|t| t == record.topic) {
            IngestFormat::Xapi
        } else {
            IngestFormat::Events
        };
        let Some(received_at) = record.timestamp_ms else {
            out.dead_letter(
                record,
                "MISSING_FIELD",
                "record has no timestamp".into(),
                None,
            );
            return Ok(());
        };
        let envelope = Envelope {
            tenant_header: record.header_str(trellis_runtime::kafka::TENANT_HEADER),
            request_id: record.header_str(trellis_runtime::kafka::REQUEST_ID_HEADER),
            received_at,
        };
        let event = match validate(format, record.value, envelope, &self.limits) {
            Ok(event) => event,
            Err(rejection) => {
                out.dead_letter(
                    record,
                    rejection.reason.code(),
                    rejection.detail,
                    rejection.tenant,
                );
                return Ok(());
            }
        };
        if !self.dedup.observe(
            record.topic,
            record.partition,
            record.offset,
            &event.tenant_id,
            &event.event_id,
            received_at,
        ) {
            out.dropped_duplicate();
            return Ok(());
        }
        if format == IngestFormat::Xapi {
            self.observe_skew(event.occurred_at, received_at);
        }
        let value = self.encoder.encode(&event).map_err(ProcessError::from)?;
        out.emit(OutputRecord {
            topic: self.collected.clone(),
            key: format!("{}|{}", event.tenant_id, event.actor.subject_ref()).into_bytes(),
            value: Some(value),
            id: format!("{}/{}", event.tenant_id, event.event_id),
            tenant: Some(event.tenant_id),
        });
        Ok(())
    }

    fn save(&mut self, txn: &mut StateTxn<'_>) -> Result<(), ProcessError> {
        self.dedup.save(txn);
        Ok(())
    }

    fn committed(&mut self) {
        self.dedup.committed();
    }

    fn abandoned(&mut self) {
        self.dedup.abandoned();
    }
}

/// The collector's settings take no cross-field checks beyond their types.
impl trellis_runtime::build::Settings for Settings {}

/// The collector's one constructor: the binary, the bench and the tests
/// build it here.
impl Build for Collector {
    const NAME: &'static str = NAME;
    const SECRETS: &'static [SecretSpec] = SECRETS;
    const OWNS: &'static str =
        "the dedup window, signed-request nonces and rate limits, over every partition and request";
    /// 2: the dedup window's keys in the runtime's one encoding (`state::key`).
    const STATE_FORMAT: u32 = 2;
    type Settings = Settings;
    type Processor = Self;

    async fn build(ctx: &mut Context<'_, Settings>) -> Result<Self, StartError> {
        let collector = Collector::new(ctx.settings, ctx.encoder(COLLECTED_TOPIC).await?);
        ctx.register(Box::new(collector.clock_skew()))?;
        if let (Some(settings), Some(kafka)) = (ctx.settings.http.clone(), ctx.kafka()) {
            let producer = trellis_runtime::producer::TrellisProducer::create(kafka)
                .map_err(StartError::from)?;
            let ingest = http::Ingest::new(
                settings,
                Arc::new(http::KafkaSink::new(producer)),
                ctx.settings.limits(),
                Some(ctx.secrets.get(SECRETS[0].env).expose().to_vec()),
                ctx.lease(),
            );
            let cannot_listen = |e: std::io::Error| {
                StartError::Misconfigured(format!("HTTP ingest cannot listen: {e}"))
            };
            let listener = ingest.listen().await.map_err(cannot_listen)?;
            tracing::info!(addr = %listener.local_addr().map_err(cannot_listen)?, "HTTP ingest listening");
            ctx.serve(|stopping| ingest.serve(listener, stopping.wait()));
        }
        Ok(collector)
    }
}

trellis_runtime::processor_run!(Collector);
