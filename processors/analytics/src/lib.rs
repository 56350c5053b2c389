//! The analytics aggregator: `protected` → tenant-tagged tumbling-window
//! aggregates for warehouses.
//!
//! Per tenant, hour and day windows by event time, cells by `tenant`
//! (totals), `verb`, `course` and `activity`: events, distinct active
//! learners, completions, passes, fails and mean scaled score. A cell is
//! published when its window closes and **re-published with a higher
//! `revision`** when late events change it, up to a revision horizon (default
//! seven days after the window's end); the rules are in [`windows`]. Cells
//! go on `analytics.aggregates` (key `tenant|window|start|dimension|value`,
//! `tenant` header, the same key for every revision so a compacted topic or
//! an upsert keeps the latest) and on the tenant's own
//! `analytics.<tenant>.aggregates` when topology.yaml declares it among this
//! processor's outputs, so a warehouse can be given one tenant's topic only.
//! Cells with fewer than k distinct learners (per tenant, default 5) are
//! published suppressed, in every revision.
//!
//! Events beyond the horizon change no cell; they are counted in the
//! tenant's **late cell** for their window (dimension `late`, value the
//! tenant, `events` = how many came too late, revised like any cell), so a
//! warehouse sees what the cells miss: per window, the tenant cell's events
//! plus its late cell's events are every event received.
//!
//! # Distinct learners, and erasure
//! Distinctness needs to remember who was counted while a cell can still
//! change: until the horizon. Each live cell keeps a set of 8-byte hashes of
//! `cell key ‖ pseudonym` (salted by the cell, so the sets of two cells
//! cannot be joined to follow a learner, and holding no pseudonym), each
//! with the class it was first counted in. An erase command turns the
//! learner's entry in every live cell of the tenant into an anonymous one
//! (same class, a name that no pseudonym hashes to), so every revision
//! still counts their past activity once — the promise keeps an erased
//! learner's past activity in aggregates, anonymised — but no one holding
//! the old pseudonym can find the cells they were in. The processor keeps
//! the SHA-256 of `tenant ‖ pseudonym` of erased learners, so an event of
//! theirs it reads only after the erasure (it lagged behind `protected`)
//! counts without joining a set: such a learner may be missing from a
//! cell's distinct count, never counted twice, never linkable.
//!
//! # Delivery semantics
//! A revision's output id is the cell and the revision; its values do not
//! depend on partition interleaving or batch boundaries, so a re-run after a
//! crash reproduces it byte for byte (promise 3). Windows span partitions,
//! so one instance of the group owns them at a time (`Build::OWNS`).

mod live;
pub mod windows;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, EraseCommand, PARTICIPANT_ACKS_TOPIC, PROTECTED_TOPIC,
    ParticipantAck, ProtectedFacts, tenant_aggregates_topic,
};
use trellis_runtime::build::{Build, Context};
use trellis_runtime::participant::{Acks, CommandOr, Participant};
use trellis_runtime::pipeline::{ProcessError, StartError};
use trellis_runtime::schema::AvroEncoder;
use trellis_runtime::sink::subject_hash;
use trellis_runtime::state::StateError;
use trellis_runtime::state::key::{key, prefix};
use trellis_runtime::working_set::{Stored, WorkingSet};
use trellis_runtime::{Emitter, InputRecord, OutputRecord, Processor, StateTxn};

use crate::live::LiveCell;
use crate::windows::{Cell, Rules, Timing, Window, crosses_close_point};

/// The processor's name in topology.yaml, metrics and logs.
pub const NAME: &str = "analytics";

const ADL: &str = "http://adlnet.gov/expapi/verbs/";

/// The aggregator's `settings` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How long after a window's end its events still count in its first
    /// publication, in seconds.
    #[serde(default = "default_lateness_secs")]
    pub allowed_lateness_secs: u64,
    /// How long after a window's end late events still revise its cells, in
    /// seconds, per window length; later events count in the late cells.
    #[serde(default)]
    pub revision_horizon_secs: Horizons,
    /// Fewest distinct learners a published cell may have.
    #[serde(default = "default_k")]
    pub k: u32,
    /// Per-tenant overrides.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantSettings>,
}

/// Revision horizons per window length, in seconds.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Horizons {
    /// Hour windows.
    #[serde(default = "default_horizon_secs")]
    pub hour: u64,
    /// Day windows.
    #[serde(default = "default_horizon_secs")]
    pub day: u64,
}

impl Default for Horizons {
    fn default() -> Self {
        Self {
            hour: default_horizon_secs(),
            day: default_horizon_secs(),
        }
    }
}

/// Seven days: an app that syncs after a weekend, a plugin queue flushed
/// after an outage, a re-import of last week's statements.
const fn default_horizon_secs() -> u64 {
    7 * 24 * 3600
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
            revision_horizon_secs: Horizons::default(),
            k: default_k(),
            tenants: BTreeMap::new(),
        }
    }
}

impl trellis_runtime::build::Settings for Settings {
    /// Every problem, at once.
    fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.k < 2 {
            problems.push(format!(
                "k is {}; below 2 a cell can single out a learner",
                self.k
            ));
        }
        for (name, horizon) in [
            ("hour", self.revision_horizon_secs.hour),
            ("day", self.revision_horizon_secs.day),
        ] {
            if horizon < self.allowed_lateness_secs {
                problems.push(format!(
                    "revision_horizon_secs.{name} is {horizon}, below allowed_lateness_secs ({}): a window would stop taking events before it is first published",
                    self.allowed_lateness_secs
                ));
            }
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
            Err(problems)
        }
    }
}

/// State key namespaces.
mod keys {
    /// Watermarks: `wm ‖ topic ‖ partition` → i64.
    pub const WATERMARK: u8 = b'w';
    /// Live cells: `cell ‖ tenant ‖ window ‖ start ‖ dimension ‖ value` →
    /// [`super::live::LiveCell`] (the classes published so far, what each
    /// class not yet published adds, the distinct set).
    pub const CELL: u8 = b'c';
    /// Publication index: `open ‖ point ‖ class ‖ cell key` → ().
    pub const OPEN: u8 = b'o';
    /// Expiry index: `expire ‖ expiry ‖ cell key` → ().
    pub const EXPIRE: u8 = b'x';
    /// Erased learners: `erased ‖ SHA-256(tenant ‖ 0 ‖ pseudonym)` → ().
    pub const ERASED: u8 = b'e';
    /// Too-late events: `late ‖ tenant ‖ window ‖ start` → count.
    pub const LATE: u8 = b'l';
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
    /// Events beyond the revision horizon, by window.
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
                    "Events beyond the revision horizon, by window: counted in the tenant's late cell, not in their window's cells.",
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

    fn register<S>(&self, ctx: &Context<'_, S>) -> Result<(), StartError> {
        ctx.register(Box::new(self.late.clone()))?;
        ctx.register(Box::new(self.suppressed.clone()))?;
        ctx.register(Box::new(self.unrouted.clone()))
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
    hour: Rules,
    day: Rules,
    k: u32,
    tenant_k: HashMap<String, u32>,
    /// Every assigned partition of `protected`.
    partitions: Vec<i32>,
    /// Partition watermarks read or changed since the last commit (`None`:
    /// the partition has carried nothing yet), written back by
    /// [`Processor::save`].
    watermarks: HashMap<i32, Option<i64>>,
    /// The live cells the batch touched, written back by [`Processor::save`].
    cells: WorkingSet<LiveCell>,
    /// The erased learners' hashes (see the module docs), as in the store;
    /// `None` after an abandoned batch, reloaded on the next event.
    erased: Option<HashSet<[u8; 32]>>,
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
        let lateness = settings.allowed_lateness_secs as i64 * 1000;
        let rules = |secs: u64| Rules {
            lateness,
            horizon: (secs as i64 * 1000).max(lateness),
        };
        Self {
            aggregates_encoder: aggregates,
            tenants,
            aggregates: Arc::from(AGGREGATES_TOPIC),
            acks: Acks::new(NAME, Arc::from(PARTICIPANT_ACKS_TOPIC), acks),
            lateness,
            hour: rules(settings.revision_horizon_secs.hour),
            day: rules(settings.revision_horizon_secs.day),
            k: settings.k,
            tenant_k: settings
                .tenants
                .iter()
                .map(|(t, s)| (t.clone(), s.k))
                .collect(),
            partitions: Vec::new(),
            watermarks: HashMap::new(),
            cells: WorkingSet::new(live::CAPACITY),
            erased: None,
            counters,
        }
    }

    fn rules(&self, window: Window) -> Rules {
        match window {
            Window::Hour => self.hour,
            Window::Day => self.day,
        }
    }

    fn watermark_key(topic: &str, partition: i32) -> Vec<u8> {
        key(
            keys::WATERMARK,
            &[topic.as_bytes(), &partition.to_be_bytes()],
        )
    }

    fn is_erased(
        &mut self,
        txn: &StateTxn<'_>,
        tenant: &str,
        learner: &str,
    ) -> Result<bool, ProcessError> {
        let erased = match &mut self.erased {
            Some(erased) => erased,
            erased @ None => erased.insert(
                txn.scan_prefix(&[keys::ERASED])?
                    .into_iter()
                    .filter_map(|(k, _)| <[u8; 32]>::try_from(&k[1..]).ok())
                    .collect(),
            ),
        };
        Ok(!erased.is_empty() && erased.contains(&subject_hash(tenant, learner)))
    }

    /// Partition `partition`'s watermark (from memory, else the store).
    fn watermark(&mut self, txn: &StateTxn<'_>, partition: i32) -> Result<Option<i64>, StateError> {
        if let Some(known) = self.watermarks.get(&partition) {
            return Ok(*known);
        }
        let stored = read_i64(txn.get(&Self::watermark_key(PROTECTED_TOPIC, partition))?)?;
        self.watermarks.insert(partition, stored);
        Ok(stored)
    }

    fn on_event(
        &mut self,
        record: &InputRecord<'_>,
        event: &ProtectedFacts<'_>,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let watermark = self.watermark(txn, record.partition)?;
        let at = event.occurred_at;
        let tenant = event.tenant_id;
        let verb = event.verb.map(verb_name);
        let dims = [
            Some(("tenant", tenant)),
            verb.map(|v| ("verb", v)),
            event.course_id.map(|c| ("course", c)),
            event.object_id.map(|a| ("activity", a)),
        ];
        let learner = (!self.is_erased(txn, tenant, event.learner)?).then_some(event.learner);
        for window in Window::ALL {
            let start = window.start(at);
            match self
                .rules(window)
                .timing(start + window.len_ms(), watermark)
            {
                Timing::TooLate => self.too_late(tenant, window, start, txn, out)?,
                Timing::Class(class) => {
                    for (dimension, value) in dims.iter().flatten() {
                        let cell = CellRef::new(tenant, window, start, dimension, value);
                        self.add(event, verb, learner, &cell, class, txn)?;
                    }
                }
            }
        }
        if watermark.is_none_or(|wm| at > wm) {
            self.watermarks.insert(record.partition, Some(at));
            if crosses_close_point(watermark, at, self.lateness) {
                self.close_ready(txn, out)?;
            }
        }
        Ok(())
    }

    /// Counts `event` in `cell`, class `class`; `learner` joins its
    /// distinct set unless erased.
    fn add(
        &mut self,
        event: &ProtectedFacts<'_>,
        verb: Option<&str>,
        learner: Option<&str>,
        cell: &CellRef<'_>,
        class: u32,
        txn: &mut StateTxn<'_>,
    ) -> Result<(), ProcessError> {
        let cell_key = cell.key();
        let rules = self.rules(cell.window);
        let end = cell.start + cell.window.len_ms();
        let live = match self.cells.get_mut(&cell_key, txn)? {
            Some(live) => live,
            None => {
                txn.put(
                    publication_key(rules.point(end, 0), 0, &cell_key),
                    Vec::new(),
                );
                txn.put(
                    [&[keys::EXPIRE][..], &sortable(rules.expiry(end)), &cell_key].concat(),
                    Vec::new(),
                );
                let new = Cell::new(
                    cell.tenant,
                    cell.window,
                    cell.start,
                    cell.dimension,
                    cell.value,
                );
                self.cells.insert(cell_key.clone(), LiveCell::new(new))
            }
        };
        if class == 0 {
            live.cell.counts.add(event, verb);
        } else {
            live.deltas
                .entry(class)
                .or_insert_with(|| {
                    txn.put(
                        publication_key(rules.point(end, class), class, &cell_key),
                        Vec::new(),
                    );
                    Default::default()
                })
                .add(event, verb);
        }
        if let Some(learner) = learner
            && live.join(hash8(&[&cell_key, learner.as_bytes()]), class)
        {
            live.cell.distinct += 1;
        }
        Ok(())
    }

    /// Counts an event too late for its window in the tenant's late cell
    /// and publishes the cell's next revision (revision n counts n events,
    /// whatever order they came in).
    fn too_late(
        &self,
        tenant: &str,
        window: Window,
        start: i64,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        self.counters
            .late
            .with_label_values(&[window.as_str()])
            .inc();
        let late = key(
            keys::LATE,
            &[
                tenant.as_bytes(),
                window.as_str().as_bytes(),
                &sortable(start),
            ],
        );
        let count = read_i64(txn.get(&late)?)?.unwrap_or(0) + 1;
        txn.put(late, count.to_be_bytes().to_vec());
        let mut cell = Cell::new(tenant, window, start, "late", tenant);
        cell.counts.events = count;
        cell.revision = i32::try_from(count).unwrap_or(i32::MAX);
        // Counts of events, no learner in them: nothing to suppress.
        let mut aggregate = cell.aggregate(0);
        aggregate.suppressed = false;
        self.publish(&cell, &aggregate, out)
    }

    /// Publishes every revision no partition can change any more, in order,
    /// and forgets the cells past their horizon.
    fn close_ready(
        &mut self,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let mut global = i64::MAX;
        for partition in self.partitions.clone() {
            match self.watermark(txn, partition)? {
                Some(wm) => global = global.min(wm),
                // A partition that has carried nothing yet could still
                // carry anything: nothing is final.
                None => return Ok(()),
            }
        }
        // Index entries up to and including `global`: `[index] ‖ sortable(t)…`
        // for t ≤ global sorts below `[index] ‖ sortable(global + 1)`.
        let upto = |index: u8| [&[index][..], &sortable(global.saturating_add(1))].concat();
        for (entry, _) in txn.range(&[keys::OPEN], &upto(keys::OPEN))? {
            let class = u32::from_be_bytes(entry[9..13].try_into().expect("4 bytes"));
            let cell_key = &entry[13..];
            let Some(live) = self.cells.get_mut(cell_key, txn)? else {
                txn.delete(entry);
                continue;
            };
            let k = (self.tenant_k.get(&live.cell.tenant).copied()).unwrap_or(self.k);
            // What was published last (nothing if no event counted yet).
            let was_suppressed =
                class > 0 && live.cell.counts.events > 0 && live.cell.distinct < i64::from(k);
            if class > 0 {
                if let Some(delta) = live.deltas.remove(&class) {
                    live.cell.counts.merge(&delta);
                }
                let distinct = live.distinct_upto(class);
                let cell = &mut live.cell;
                cell.distinct = distinct;
                cell.revision = i32::try_from(class).unwrap_or(i32::MAX);
            }
            let cell = &live.cell;
            // A cell only late events created has no first publication, and
            // a suppressed cell that stays suppressed has nothing new to
            // show: its published form would differ in the revision alone.
            let aggregate = cell.aggregate(k);
            if cell.counts.events > 0 && !(aggregate.suppressed && was_suppressed) {
                if aggregate.suppressed {
                    self.counters.suppressed.inc();
                }
                let cell = cell.clone();
                self.publish(&cell, &aggregate, out)?;
            }
            txn.delete(entry);
        }
        for (entry, _) in txn.range(&[keys::EXPIRE], &upto(keys::EXPIRE))? {
            let cell_key = entry[9..].to_vec();
            txn.delete(entry);
            // No delta is left: every class's point is at or before expiry,
            // so the loop above has published it.
            self.cells.remove(cell_key);
        }
        Ok(())
    }

    fn publish(
        &self,
        cell: &Cell,
        aggregate: &Aggregate,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if out.discards() {
            return Ok(());
        }
        let id = format!(
            "{}/{}/{}/{}/{}/r{}",
            cell.tenant,
            cell.window.as_str(),
            cell.start,
            cell.dimension,
            cell.value,
            cell.revision
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
        let encode = |encoder: &AvroEncoder| encoder.encode(aggregate).map_err(ProcessError::from);
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

    /// Turns `learner`'s entries in every live cell of `tenant` into
    /// anonymous ones, and remembers them as erased. Returns how many
    /// entries it changed.
    fn anonymise(
        &mut self,
        tenant: &str,
        learner: &str,
        txn: &mut StateTxn<'_>,
    ) -> Result<i64, ProcessError> {
        let hash = subject_hash(tenant, learner);
        txn.put([&[keys::ERASED][..], &hash].concat(), Vec::new());
        self.erased = None;
        // The scan below reads the store: give it the batch's cells first.
        self.cells.save(txn)?;
        let mut changed = 0;
        let cells = prefix(keys::CELL, &[tenant.as_bytes()]);
        for (cell_key, value) in txn.scan_prefix(&cells)? {
            let mut live = LiveCell::decode(&value)?;
            if live.anonymise(&hash8(&[&cell_key, learner.as_bytes()])) {
                self.cells.insert(cell_key, live);
                changed += 1;
            }
        }
        Ok(changed)
    }
}

/// A GDPR participant: erasure makes the learner's cell memberships
/// anonymous (they still count); access finds no pseudonym to report.
impl Participant for Analytics {
    fn acks(&self) -> &Acks {
        &self.acks
    }

    fn execute(
        &mut self,
        command: &EraseCommand,
        at: i64,
        txn: &mut StateTxn<'_>,
        _out: &mut Emitter,
    ) -> Result<ParticipantAck, ProcessError> {
        let mut ack = self.acks.ack(
            &command.command_id,
            &command.request_id,
            &command.tenant_id,
            command.learner.clone(),
            at,
        );
        match (command.kind.as_str(), &command.learner) {
            ("erasure", Some(learner)) => {
                let changed = self.anonymise(&command.tenant_id, learner, txn)?;
                ack.records_affected = changed;
                ack.detail = format!(
                    "{changed} cell memberships made anonymous (cells within the revision \
                     horizon still count the learner's past activity, and no pseudonym \
                     finds them); published aggregates are anonymous and stay"
                );
            }
            ("erasure" | "access", _) => {
                ack.detail = "analytics keeps no pseudonym: live cells hold per-cell \
                              hashes only; published aggregates are anonymous"
                    .into();
            }
            (other, _) => {
                ack.outcome = "failed".into();
                ack.detail = format!("unknown command kind `{other}`");
            }
        }
        Ok(ack)
    }
}

/// A cell's coordinates.
struct CellRef<'a> {
    tenant: &'a str,
    window: Window,
    start: i64,
    dimension: &'a str,
    value: &'a str,
}

impl<'a> CellRef<'a> {
    fn new(
        tenant: &'a str,
        window: Window,
        start: i64,
        dimension: &'a str,
        value: &'a str,
    ) -> Self {
        Self {
            tenant,
            window,
            start,
            dimension,
            value,
        }
    }

    fn key(&self) -> Vec<u8> {
        key(
            keys::CELL,
            &[
                self.tenant.as_bytes(),
                self.window.as_str().as_bytes(),
                &sortable(self.start),
                self.dimension.as_bytes(),
                self.value.as_bytes(),
            ],
        )
    }
}

/// `open ‖ point ‖ class ‖ cell key`: revisions in the order they become final.
fn publication_key(point: i64, class: u32, cell_key: &[u8]) -> Vec<u8> {
    [
        &[keys::OPEN][..],
        &sortable(point),
        &class.to_be_bytes(),
        cell_key,
    ]
    .concat()
}

impl Processor for Analytics {
    type Input<'r> = CommandOr<ProtectedFacts<'r>>;

    fn save(&mut self, txn: &mut StateTxn<'_>) -> Result<(), ProcessError> {
        for (&partition, &watermark) in &self.watermarks {
            if let Some(wm) = watermark {
                txn.put(
                    Self::watermark_key(PROTECTED_TOPIC, partition),
                    wm.to_be_bytes().to_vec(),
                );
            }
        }
        self.cells.save(txn)
    }

    fn committed(&mut self) {
        self.cells.committed();
    }

    fn abandoned(&mut self) {
        // The batch's erasures, cells and watermarks were rolled back with it.
        self.erased = None;
        self.cells.clear();
        self.watermarks.clear();
    }

    fn assigned(&mut self, partitions: &BTreeMap<String, Vec<i32>>) -> Result<(), ProcessError> {
        self.partitions = partitions.get(PROTECTED_TOPIC).cloned().unwrap_or_default();
        Ok(())
    }

    fn process<'r>(
        &mut self,
        record: &InputRecord<'r>,
        input: Self::Input<'r>,
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

/// The aggregator's one constructor: the binary, the bench and the tests
/// build it here.
impl Build for Analytics {
    const NAME: &'static str = NAME;
    const OWNS: &'static str = "windows and watermarks over every partition of `protected`";
    type Settings = Settings;
    type Processor = Self;

    async fn build(ctx: &mut Context<'_, Settings>) -> Result<Self, StartError> {
        let counters = Counters::detached();
        counters.register(ctx)?;
        let mut tenants = HashMap::new();
        for output in &ctx.spec.outputs {
            if let Some(tenant) = output
                .strip_prefix("analytics.")
                .and_then(|t| t.strip_suffix(".aggregates"))
                && output == &tenant_aggregates_topic(tenant)
            {
                tenants.insert(
                    tenant.to_string(),
                    (Arc::from(output.as_str()), ctx.encoder(output).await?),
                );
            }
        }
        let encoders = Encoders {
            aggregates: ctx.encoder(AGGREGATES_TOPIC).await?,
            tenants,
            acks: ctx.encoder(PARTICIPANT_ACKS_TOPIC).await?,
        };
        Ok(Analytics::new(ctx.settings, encoders, counters))
    }
}

trellis_runtime::processor_run!(Analytics);

#[cfg(test)]
mod tests;
