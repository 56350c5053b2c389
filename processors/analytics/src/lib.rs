//! The analytics aggregator: `protected` → tenant-tagged tumbling-window
//! aggregates for warehouses.
//!
//! Per tenant, hour and day windows by event time, cells by `tenant`
//! (totals), `verb`, `course` and `activity`: events, distinct active
//! learners, completions, passes, fails and mean scaled score. Lateness and
//! closing are event-time rules ([`windows`]); a closed cell is emitted once,
//! final, on `analytics.aggregates` (key `tenant|window|start|dimension|value`,
//! `tenant` header) and on the tenant's own `analytics.<tenant>.aggregates`
//! when topology.yaml declares it among this processor's outputs, so a
//! warehouse can be given one tenant's topic only. Cells with fewer than k
//! distinct learners (per tenant, default 5) are published suppressed.
//!
//! # Distinct learners without keeping learners
//! Distinctness needs to remember who was counted, but only while a cell can
//! still change. Each open cell keeps a set of 8-byte hashes of
//! `cell key ‖ pseudonym`: salted by the cell, so the sets of two cells (two
//! hours, two courses) cannot be joined to follow a learner, and holding no
//! pseudonym. The set is deleted when the cell closes — at most a day plus
//! the allowed lateness after its start — leaving only counts. After an
//! erasure the pseudonym itself is unlinkable (the privacy processor shreds
//! its secret), the published counts stay as anonymous aggregates (promise 5),
//! and nothing here needs rewriting: the state stays a function of
//! `protected` alone, so a rebuild still reaches the live digest. An HLL
//! sketch would bound memory further but is approximate exactly where it
//! matters, at the k threshold for small cells.
//!
//! # Delivery semantics
//! A cell's output id is the cell itself; it is produced once, with final
//! values that do not depend on partition interleaving or batch boundaries,
//! so a re-run after a crash reproduces it byte for byte (promise 3).
//! Windows span partitions, so the aggregator runs as one instance; it
//! refuses `kafka.instances > 1`.

pub mod windows;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trellis_records::{
    AGGREGATES_TOPIC, EraseCommand, PARTICIPANT_ACKS_TOPIC, ProtectedEvent, tenant_aggregates_topic,
};
use trellis_runtime::participant::{Acks, CommandOr, answer_once};
use trellis_runtime::pipeline::{Exit, Failure, ProcessError, StartError};
use trellis_runtime::schema::AvroEncoder;
use trellis_runtime::state::StateError;
use trellis_runtime::{Config, Emitter, InputRecord, OutputRecord, Processor, Runtime, StateTxn};

use crate::windows::{Cell, SCORE_SCALE, Timing, Window, crosses_close_point, timing};

/// The processor's name in topology.yaml, metrics and logs.
pub const NAME: &str = "analytics";
/// Input: protected learning events.
pub const PROTECTED_TOPIC: &str = "protected";

const ADL: &str = "http://adlnet.gov/expapi/verbs/";

/// The aggregator's `settings` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How long after a window's end its events still count, in seconds.
    #[serde(default = "default_lateness_secs")]
    pub allowed_lateness_secs: u64,
    /// Fewest distinct learners a published cell may have.
    #[serde(default = "default_k")]
    pub k: u32,
    /// Per-tenant overrides.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSettings>,
}

/// One tenant's overrides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Fewest distinct learners a published cell may have.
    pub k: u32,
}

/// Ten minutes: LRS forwarders and mobile apps flush queued statements
/// within minutes; longer delays are counted as late.
const fn default_lateness_secs() -> u64 {
    600
}

/// Five: the common small-cell threshold in education statistics.
const fn default_k() -> u32 {
    5
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allowed_lateness_secs: default_lateness_secs(),
            k: default_k(),
            tenants: BTreeMap::new(),
        }
    }
}

impl Settings {
    /// Every problem, at once.
    ///
    /// # Errors
    /// One line per problem.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.k < 2 {
            problems.push(format!(
                "k is {}; below 2 a cell can single out a learner",
                self.k
            ));
        }
        for (tenant, t) in &self.tenants {
            if t.k < 2 {
                problems.push(format!(
                    "tenant {tenant}: k is {}; below 2 a cell can single out a learner",
                    t.k
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}

/// State key namespaces.
mod keys {
    /// Watermarks: `wm ‖ topic ‖ partition` → i64.
    pub const WATERMARK: u8 = b'w';
    /// Open cells: `cell ‖ tenant ‖ window ‖ start ‖ dimension ‖ value` → [`super::Cell`].
    pub const CELL: u8 = b'c';
    /// Close index: `open ‖ closes_at ‖ cell key` → ().
    pub const OPEN: u8 = b'o';
    /// Distinct sets: `member ‖ h(cell key) ‖ h(cell key ‖ pseudonym)` → ().
    pub const MEMBER: u8 = b'm';
    /// Late events: `late ‖ tenant ‖ window` → count.
    pub const LATE: u8 = b'l';
}

fn key(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key = vec![kind];
    for part in parts {
        key.push(0);
        key.extend_from_slice(part);
    }
    key
}

fn hash8(parts: &[&[u8]]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// The sortable form of a timestamp (sign bit flipped).
fn sortable(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn encode_state<T: Serialize>(value: &T) -> Result<Vec<u8>, ProcessError> {
    postcard::to_stdvec(value).map_err(|e| ProcessError::fatal("encoding state", e))
}

fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::corrupt(format!("analytics: {e}")))
}

fn read_i64(bytes: Option<std::borrow::Cow<'_, [u8]>>) -> Result<Option<i64>, StateError> {
    bytes
        .map(|b| {
            <[u8; 8]>::try_from(b.as_ref())
                .map(i64::from_be_bytes)
                .map_err(|_| StateError::corrupt("analytics: 8-byte integer"))
        })
        .transpose()
}

/// The short name of a verb: the last segment of an IRI, or a Moodle event name.
pub fn verb_name(verb: &str) -> &str {
    verb.strip_prefix(ADL)
        .or_else(|| verb.rsplit(['/', '\\']).next())
        .unwrap_or(verb)
}

/// Counters beyond the runtime's.
#[derive(Clone)]
pub struct Counters {
    /// Events beyond the allowed lateness, by window.
    pub late: IntCounterVec,
    /// Cells published suppressed.
    pub suppressed: IntCounter,
    /// Cells of tenants without their own aggregates topic.
    pub unrouted: IntCounter,
}

impl Counters {
    /// Unregistered counters (tests, tools).
    ///
    /// # Panics
    /// Never: the options are constants.
    pub fn detached() -> Self {
        Self {
            late: IntCounterVec::new(
                prometheus::Opts::new(
                    "trellis_late_events_total",
                    "Events beyond the allowed lateness, by window; counted, not aggregated.",
                ),
                &["window"],
            )
            .expect("valid counter"),
            suppressed: IntCounter::new(
                "trellis_suppressed_cells_total",
                "Cells published suppressed (fewer than k learners).",
            )
            .expect("valid counter"),
            unrouted: IntCounter::new(
                "trellis_unrouted_tenant_cells_total",
                "Cells of tenants with no analytics.<tenant>.aggregates topic declared.",
            )
            .expect("valid counter"),
        }
    }

    fn register(&self, runtime: &Runtime) -> Result<(), StartError> {
        for collector in [
            Box::new(self.late.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(self.suppressed.clone()),
            Box::new(self.unrouted.clone()),
        ] {
            runtime
                .metrics
                .register(collector)
                .map_err(|e| StartError::Misconfigured(e.to_string()))?;
        }
        Ok(())
    }
}

/// Encoders for the outputs.
pub struct Encoders {
    /// `analytics.aggregates`.
    pub aggregates: AvroEncoder,
    /// Per tenant: its own aggregates topic.
    pub tenants: HashMap<String, (Arc<str>, AvroEncoder)>,
    /// `gdpr.participant_acks`.
    pub acks: AvroEncoder,
}

/// The aggregator's logic.
pub struct Analytics {
    aggregates_encoder: AvroEncoder,
    tenants: HashMap<String, (Arc<str>, AvroEncoder)>,
    aggregates: Arc<str>,
    acks: Acks,
    lateness: i64,
    k: u32,
    tenant_k: HashMap<String, u32>,
    /// Watermark keys of every assigned partition of `protected`.
    partitions: Vec<Vec<u8>>,
    counters: Counters,
}

impl Analytics {
    /// An aggregator with `settings`.
    pub fn new(settings: &Settings, encoders: Encoders, counters: Counters) -> Self {
        let Encoders {
            aggregates,
            tenants,
            acks,
        } = encoders;
        Self {
            aggregates_encoder: aggregates,
            tenants,
            aggregates: Arc::from(AGGREGATES_TOPIC),
            acks: Acks::new(NAME, Arc::from(PARTICIPANT_ACKS_TOPIC), acks),
            lateness: settings.allowed_lateness_secs as i64 * 1000,
            k: settings.k,
            tenant_k: settings
                .tenants
                .iter()
                .map(|(t, s)| (t.clone(), s.k))
                .collect(),
            partitions: Vec::new(),
            counters,
        }
    }

    fn watermark_key(topic: &str, partition: i32) -> Vec<u8> {
        key(
            keys::WATERMARK,
            &[topic.as_bytes(), &partition.to_be_bytes()],
        )
    }

    fn on_event(
        &mut self,
        record: &InputRecord<'_>,
        event: &ProtectedEvent,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let wm_key = Self::watermark_key(record.topic, record.partition);
        let watermark = read_i64(txn.get(&wm_key)?)?;
        let at = event.occurred_at;
        let tenant = event.tenant_id.as_str();
        let verb = event.verb.as_deref().map(verb_name);
        let mut dims: Vec<(&str, &str)> = vec![("tenant", tenant)];
        dims.extend(verb.map(|v| ("verb", v)));
        dims.extend(event.course_id.as_deref().map(|c| ("course", c)));
        dims.extend(event.object_id.as_deref().map(|a| ("activity", a)));
        for window in Window::ALL {
            let start = window.start(at);
            match timing(start + window.len_ms(), self.lateness, watermark) {
                Timing::TooLate => {
                    self.counters
                        .late
                        .with_label_values(&[window.as_str()])
                        .inc();
                    let late = key(keys::LATE, &[tenant.as_bytes(), window.as_str().as_bytes()]);
                    let count = read_i64(txn.get(&late)?)?.unwrap_or(0) + 1;
                    txn.put(late, count.to_be_bytes().to_vec());
                }
                timing => {
                    for (dimension, value) in &dims {
                        self.add(
                            event,
                            window,
                            start,
                            dimension,
                            value,
                            timing == Timing::Late,
                            txn,
                        )?;
                    }
                }
            }
        }
        if watermark.is_none_or(|wm| at > wm) {
            txn.put(wm_key, at.to_be_bytes().to_vec());
            if crosses_close_point(watermark, at, self.lateness) {
                self.close_ready(txn, out)?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &self,
        event: &ProtectedEvent,
        window: Window,
        start: i64,
        dimension: &str,
        value: &str,
        late: bool,
        txn: &mut StateTxn<'_>,
    ) -> Result<(), ProcessError> {
        let tenant = event.tenant_id.as_str();
        let cell_key = key(
            keys::CELL,
            &[
                tenant.as_bytes(),
                window.as_str().as_bytes(),
                &sortable(start),
                dimension.as_bytes(),
                value.as_bytes(),
            ],
        );
        let mut cell = match txn.get(&cell_key)? {
            Some(bytes) => decode_state::<Cell>(&bytes)?,
            None => {
                let cell = Cell::new(tenant, window, start, dimension, value);
                txn.put(self.open_key(&cell, &cell_key), Vec::new());
                cell
            }
        };
        let cell_id = hash8(&[&cell_key]);
        let member = key(
            keys::MEMBER,
            &[&cell_id, &hash8(&[&cell_key, event.learner.as_bytes()])],
        );
        if txn.get(&member)?.is_none() {
            txn.put(member, Vec::new());
            cell.distinct += 1;
        }
        cell.events += 1;
        let verb = event.verb.as_deref().map(verb_name);
        let result = event.result.as_ref();
        match verb {
            Some("completed") if result.and_then(|r| r.completion) != Some(false) => {
                cell.completions += 1
            }
            Some("passed") if result.and_then(|r| r.success) != Some(false) => cell.passes += 1,
            Some("passed" | "failed") => cell.fails += 1,
            _ => {}
        }
        if let Some(score) = result.and_then(|r| r.score_scaled)
            && score.is_finite()
        {
            cell.score_micros += (score * SCORE_SCALE).round() as i64;
            cell.scored += 1;
        }
        if late {
            cell.revision += 1;
        }
        txn.put(cell_key, encode_state(&cell)?);
        Ok(())
    }

    fn open_key(&self, cell: &Cell, cell_key: &[u8]) -> Vec<u8> {
        let mut open = vec![keys::OPEN];
        open.extend_from_slice(&sortable(cell.closes_at(self.lateness)));
        open.extend_from_slice(cell_key);
        open
    }

    /// Publishes and forgets every cell that no partition can change any more.
    fn close_ready(
        &mut self,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let mut global = i64::MAX;
        for wm_key in &self.partitions {
            match read_i64(txn.get(wm_key)?)? {
                Some(wm) => global = global.min(wm),
                // A partition that has carried nothing yet could still
                // carry anything: nothing is final.
                None => return Ok(()),
            }
        }
        let bound = sortable(global);
        for (open, _) in txn.scan_prefix(&[keys::OPEN])? {
            if open[1..9] > bound[..] {
                break;
            }
            let cell_key = open[9..].to_vec();
            txn.delete(open);
            let Some(bytes) = txn.get(&cell_key)?.map(|b| b.into_owned()) else {
                continue;
            };
            let cell: Cell = decode_state(&bytes)?;
            self.publish(&cell, out)?;
            let members = key(keys::MEMBER, &[&hash8(&[&cell_key])]);
            for (member, _) in txn.scan_prefix(&members)? {
                txn.delete(member);
            }
            txn.delete(cell_key);
        }
        Ok(())
    }

    fn publish(&self, cell: &Cell, out: &mut Emitter) -> Result<(), ProcessError> {
        let k = self.tenant_k.get(&cell.tenant).copied().unwrap_or(self.k);
        let aggregate = cell.aggregate(k);
        if aggregate.suppressed {
            self.counters.suppressed.inc();
        }
        let id = format!(
            "{}/{}/{}/{}/{}",
            cell.tenant,
            cell.window.as_str(),
            cell.start,
            cell.dimension,
            cell.value
        );
        let record_key = format!(
            "{}|{}|{}|{}|{}",
            cell.tenant,
            cell.window.as_str(),
            cell.start,
            cell.dimension,
            cell.value
        )
        .into_bytes();
        let encode = |encoder: &AvroEncoder| encoder.encode(&aggregate).map_err(ProcessError::from);
        out.emit(OutputRecord {
            topic: self.aggregates.clone(),
            key: record_key.clone(),
            value: Some(encode(&self.aggregates_encoder)?),
            id: id.clone(),
            tenant: Some(cell.tenant.clone()),
        });
        match self.tenants.get(&cell.tenant) {
            Some((topic, encoder)) => out.emit(OutputRecord {
                topic: topic.clone(),
                key: record_key,
                value: Some(encode(encoder)?),
                id,
                tenant: Some(cell.tenant.clone()),
            }),
            None => self.counters.unrouted.inc(),
        }
        Ok(())
    }

    fn on_command(
        &mut self,
        command: EraseCommand,
        at: i64,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if !self.acks.addressed_to_me(&command.participant) {
            return Ok(());
        }
        let ack = answer_once(txn, &command.command_id, |_| {
            let mut ack = self.acks.ack(
                &command.command_id,
                &command.request_id,
                &command.tenant_id,
                command.learner.clone(),
                at,
            );
            match command.kind.as_str() {
                "erasure" | "access" => {
                    ack.detail = "analytics keeps no pseudonym: open windows hold per-cell \
                                  hashes, dropped at close; published aggregates are anonymous \
                                  and stay"
                        .into();
                }
                other => {
                    ack.outcome = "failed".into();
                    ack.detail = format!("unknown command kind `{other}`");
                }
            }
            Ok(ack)
        })?;
        self.acks.emit(out, &ack)
    }
}

impl Processor for Analytics {
    type Input = CommandOr<ProtectedEvent>;

    fn assigned(&mut self, partitions: &BTreeMap<String, Vec<i32>>) -> Result<(), ProcessError> {
        self.partitions = partitions
            .get(PROTECTED_TOPIC)
            .map(|ps| {
                ps.iter()
                    .map(|p| Self::watermark_key(PROTECTED_TOPIC, *p))
                    .collect()
            })
            .unwrap_or_default();
        Ok(())
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        input: Self::Input,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        match input {
            CommandOr::Command(command) => {
                self.on_command(command, record.timestamp_ms.unwrap_or_default(), txn, out)
            }
            CommandOr::Record(event) => self.on_event(record, &event, txn, out),
        }
    }
}

/// Starts the aggregator and runs it until `shutdown` resolves.
///
/// # Errors
/// [`Failure`] when it cannot start or must stop; the message names the cause.
pub async fn run(
    config: Config<Settings>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Exit, Failure> {
    config.settings.check().map_err(StartError::Misconfigured)?;
    if config.kafka.instances > 1 {
        return Err(StartError::Misconfigured(format!(
            "analytics windows span every partition, so it runs as one instance (kafka.instances is {})",
            config.kafka.instances
        ))
        .into());
    }
    let runtime = Runtime::start(NAME, &config).await?;
    let counters = Counters::detached();
    counters.register(&runtime)?;
    let mut tenants = HashMap::new();
    for output in &runtime.spec.outputs {
        if let Some(tenant) = output
            .strip_prefix("analytics.")
            .and_then(|t| t.strip_suffix(".aggregates"))
            && output == &tenant_aggregates_topic(tenant)
        {
            tenants.insert(
                tenant.to_string(),
                (Arc::from(output.as_str()), runtime.encoder(output).await?),
            );
        }
    }
    let encoders = Encoders {
        aggregates: runtime.encoder(AGGREGATES_TOPIC).await?,
        tenants,
        acks: runtime.encoder(PARTICIPANT_ACKS_TOPIC).await?,
    };
    let analytics = Analytics::new(&config.settings, encoders, counters);
    Ok(runtime.run(analytics, shutdown).await?)
}

#[cfg(test)]
mod tests;
