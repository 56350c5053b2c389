//! The audit processor: tamper evidence for every topic marked `audited`
//! (DESIGN.md promise 6).
//!
//! For each audited partition it keeps an RFC 6962 Merkle tree over the
//! partition's records ([`merkle`], leaf = canonical record bytes from
//! [`canonical`]) and, every `anchor_every` records or once a record is
//! `anchor_interval_ms` younger than the first unanchored one, writes a
//! signed [`Anchor`] to `audit.anchors` and to its store: the range covered,
//! the tree size and root, and the hash of the partition's previous anchor.
//!
//! # One chain per partition
//! Anchor chains are per partition, not one global chain: a partition's
//! anchors are then a function of that partition's log alone, so replay,
//! a re-run after `kill -9` and a second run over the same input cut the
//! same anchors with the same roots. One global chain would order anchors
//! by how fetches from different partitions happened to interleave.
//!
//! # Quiet partitions: cuts on the processor's clock, recorded
//! A partition that goes quiet must not leave its newest records
//! unanchored. While any audited partition has unanchored records the
//! processor's [`Ticker`](trellis_runtime::ticker::Ticker) writes an
//! `audit.heartbeat` event to `audit.events`; processing it closes that
//! range (the GDPR saga waits for it) and cuts every partition whose first
//! unanchored record is `anchor_interval_ms` older than the heartbeat, at
//! the last record processed. Where that is depends on how partitions
//! interleaved, so the decision is recorded — the anchors on
//! `audit.anchors` *are* the record — and a replay honours them: at start
//! the processor reads the cuts on `audit.anchors`, and for a partition
//! below its last recorded cut it anchors exactly at the recorded offsets
//! (with the recorded times), deciding nothing itself. Beyond them it
//! decides as live.
//!
//! [`verify`] re-reads the logs and checks them against the anchors;
//! `trellis audit` is its command line.

pub mod canonical;
pub mod checkpoint;
pub mod merkle;
pub mod signing;
pub mod verify;
pub mod witness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_records::{ANCHORS_TOPIC, AUDIT_EVENTS_TOPIC, Anchor, AuditEvent};
use trellis_runtime::build::{Build, Context};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::pipeline::StartError;
use trellis_runtime::schema::{AvroDecoder, AvroEncoder, DecodeError};
use trellis_runtime::secret::{SecretFormat, SecretSpec};
use trellis_runtime::state::StateError;
use trellis_runtime::ticker::{Pending, TickRecord};
use trellis_runtime::{
    Emitter, InputRecord, OutputRecord, ProcessError, Processor, StateStore, StateTxn,
};

use crate::canonical::{GENESIS, anchor_hash, record_bytes};
use crate::checkpoint::AnchorLog;
use crate::merkle::{Frontier, leaf_hash};
use crate::signing::{KeyError, Signer};

/// Processor name (topology.yaml).
pub const NAME: &str = "audit";
/// The anchor signing key.
pub const SIGNING_KEY: &str = "TRELLIS_AUDIT_SIGNING_KEY";
/// What the processor refuses to start without.
pub const SECRETS: &[SecretSpec] = &[SecretSpec {
    env: SIGNING_KEY,
    format: SecretFormat::Hex32,
    purpose: "signs audit anchors and checkpoints (the Ed25519 seed, or the HMAC-SHA256 key)",
}];
/// The action of the events that close `audit.events` ranges.
pub const HEARTBEAT: &str = "audit.heartbeat";

/// How anchors are signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Ed25519 signed notes: anyone with the public key verifies.
    #[default]
    Ed25519,
    /// HMAC-SHA256: whoever verifies holds the key (older deployments).
    Hmac,
}

/// `settings:` of the audit processor's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The signing key's name (Ed25519: anchors carry `name+hexid`;
    /// HMAC: the id written into every anchor).
    pub key_id: String,
    /// `ed25519` (default) or `hmac`.
    #[serde(default)]
    pub signature: Algorithm,
    /// The anchor log's origin line (a schema-less URL naming this log).
    #[serde(default = "default_origin")]
    pub origin: String,
    /// Where `GET /checkpoint` is served (none: not served).
    #[serde(default)]
    pub checkpoint_addr: Option<SocketAddr>,
    /// Where the latest checkpoint is written (none: not written).
    #[serde(default)]
    pub checkpoint_file: Option<PathBuf>,
    /// Anchor a partition after this many new records.
    #[serde(default = "default_every")]
    pub anchor_every: u64,
    /// …or once a record is this much younger than the first unanchored one.
    #[serde(default = "default_interval")]
    pub anchor_interval_ms: i64,
}

fn default_origin() -> String {
    "trellis.localhost/audit".to_string()
}

fn default_every() -> u64 {
    1000
}

fn default_interval() -> i64 {
    1000
}

impl trellis_runtime::build::Settings for Settings {
    /// Every problem, at once.
    fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.key_id.trim().is_empty() {
            problems.push("settings.key_id is empty".to_string());
        }
        if self.origin.trim().is_empty() || self.origin.contains('\n') {
            problems.push("settings.origin must be one non-empty line".to_string());
        }
        if self.anchor_every == 0 {
            problems.push("settings.anchor_every must be at least 1".to_string());
        }
        if self.anchor_interval_ms <= 0 {
            problems.push("settings.anchor_interval_ms must be positive".to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Store keys.
mod keys {
    /// Per partition: its [`super::PartitionState`].
    pub const PARTITION: u8 = b'p';
    /// Per partition and sequence: the anchor.
    pub const ANCHOR: u8 = b'a';

    use trellis_runtime::state::key::key;

    /// `partition ‖ topic ‖ partition number` (big-endian, last).
    pub fn partition(topic: &str, partition: i32) -> Vec<u8> {
        key(PARTITION, &[topic.as_bytes(), &partition.to_be_bytes()])
    }

    /// The partition a [`partition`] key names.
    pub fn parse_partition(key: &[u8]) -> (String, i32) {
        // `kind ‖ 0 ‖ topic ‖ 0 ‖ 4 bytes`: the number is the fixed-width tail.
        let body = key.get(2..).unwrap_or_default();
        let split = body.len().saturating_sub(5);
        let topic = String::from_utf8_lossy(&body[..split]).into_owned();
        let partition = body
            .get(split + 1..)
            .and_then(|n| n.try_into().ok())
            .map(i32::from_be_bytes)
            .unwrap_or_default();
        (topic, partition)
    }

    /// `anchor ‖ topic ‖ partition number ‖ sequence` (numbers big-endian).
    pub fn anchor(topic: &str, partition: i32, sequence: i64) -> Vec<u8> {
        key(
            ANCHOR,
            &[
                topic.as_bytes(),
                &partition.to_be_bytes(),
                &sequence.to_be_bytes(),
            ],
        )
    }
}

/// What the processor keeps per audited partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// The tree so far.
    pub frontier: Frontier,
    /// Records since the last anchor.
    pub pending: u64,
    /// First unanchored offset and its timestamp.
    pub first_offset: i64,
    first_timestamp: i64,
    /// The last offset processed.
    pub last_offset: i64,
    /// Next anchor's sequence.
    pub sequence: i64,
    /// Hex hash of the last anchor (or [`GENESIS`]).
    pub last_hash: String,
    request_ids: Vec<String>,
}

/// Cuts recorded on `audit.anchors`: per partition, each anchor's last
/// offset and time.
pub type Cuts = BTreeMap<(String, i32), BTreeMap<i64, i64>>;

/// The processor.
pub struct Audit {
    settings: Settings,
    signer: Signer,
    anchors: AvroEncoder,
    anchors_topic: Arc<str>,
    pending: Pending,
    /// Partitions with unanchored records, and when each needs a heartbeat
    /// (wall clock: `audit.events` at once, others an interval after their
    /// first unanchored record); `None`: recount from the store.
    unanchored: Option<BTreeMap<(String, i32), i64>>,
    recorded: Cuts,
    log: AnchorLog,
    buf: Vec<u8>,
}

/// Where the next anchor of a partition comes from.
enum Rule<'a> {
    /// Replay: exactly at these recorded offsets (→ time).
    Recorded(&'a BTreeMap<i64, i64>),
    /// Live: the processor decides.
    Decide,
}

impl Audit {
    /// An audit processor.
    pub fn new(settings: Settings, signer: Signer, anchors: AvroEncoder, pending: Pending) -> Self {
        let log = AnchorLog::new(
            &settings.origin,
            signer.note_key().cloned(),
            settings.checkpoint_file.clone(),
        );
        Self {
            log,
            settings,
            signer,
            anchors,
            anchors_topic: Arc::from(ANCHORS_TOPIC),
            pending,
            unanchored: None,
            recorded: Cuts::new(),
            buf: Vec::with_capacity(2048),
        }
    }

    /// The anchors on `audit.anchors`, in topic order: cuts to honour where
    /// a replay meets them (see the module docs), and the anchor log so far.
    ///
    /// # Errors
    /// The topic holds two different anchors for one chain position, or
    /// the checkpoint cannot be signed or written.
    pub fn with_recorded(mut self, anchors: &[Anchor]) -> Result<Self, KeyError> {
        for anchor in anchors {
            self.recorded
                .entry((anchor.topic.clone(), anchor.partition))
                .or_default()
                .insert(anchor.last_offset, anchor.anchored_at);
            self.log.load(anchor)?;
        }
        self.log.commit()?;
        Ok(self)
    }

    /// What the checkpoint endpoint serves.
    pub fn published(&self) -> checkpoint::Shared {
        self.log.shared()
    }

    /// How `offset` of a partition is cut: by the recorded cuts while any
    /// lies at or beyond it.
    fn rule(&self, topic: &str, partition: i32, offset: i64) -> Rule<'_> {
        match self.recorded.get(&(topic.to_string(), partition)) {
            Some(cuts)
                if cuts
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= offset) =>
            {
                Rule::Recorded(cuts)
            }
            _ => Rule::Decide,
        }
    }

    /// When a partition in `state` needs a heartbeat, if it does.
    fn due(&self, topic: &str, state: &PartitionState) -> Option<i64> {
        (state.pending > 0).then(|| {
            if topic == AUDIT_EVENTS_TOPIC {
                // The saga may be waiting: at once.
                i64::MIN
            } else {
                state
                    .first_timestamp
                    .saturating_add(self.settings.anchor_interval_ms)
            }
        })
    }

    /// Keeps the heartbeat schedule: due when the earliest partition is.
    fn track(
        &mut self,
        txn: &StateTxn<'_>,
        topic: &str,
        partition: i32,
        state: &PartitionState,
    ) -> Result<(), ProcessError> {
        let due = self.due(topic, state);
        let map = match self.unanchored.take() {
            Some(map) => map,
            None => {
                let mut map = BTreeMap::new();
                for (key, bytes) in txn.scan_prefix(&[keys::PARTITION])? {
                    let state: PartitionState = postcard::from_bytes(&bytes)
                        .map_err(|e| StateError::corrupt(format!("audit partition state: {e}")))?;
                    let (topic, partition) = keys::parse_partition(&key);
                    if let Some(due) = self.due(&topic, &state) {
                        map.insert((topic, partition), due);
                    }
                }
                map
            }
        };
        let map = self.unanchored.insert(map);
        let id = (topic.to_string(), partition);
        match due {
            Some(due) => map.insert(id, due),
            None => map.remove(&id),
        };
        self.pending.set_due(map.values().min().copied());
        Ok(())
    }

    /// On a heartbeat at `at`: cuts every other partition whose first
    /// unanchored record is at least an interval older, at the last record
    /// processed (partitions under recorded cuts excepted).
    fn cut_quiet(
        &mut self,
        at: i64,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        for (key, bytes) in txn.scan_prefix(&[keys::PARTITION])? {
            let (topic, partition) = keys::parse_partition(&key);
            if topic == AUDIT_EVENTS_TOPIC {
                continue;
            }
            let mut state: PartitionState = postcard::from_bytes(&bytes)
                .map_err(|e| StateError::corrupt(format!("audit partition state: {e}")))?;
            let quiet = state.pending > 0
                && at.saturating_sub(state.first_timestamp) >= self.settings.anchor_interval_ms;
            if !quiet
                || matches!(
                    self.rule(&topic, partition, state.last_offset + 1),
                    Rule::Recorded(_)
                )
            {
                continue;
            }
            let last = state.last_offset;
            self.anchor(&topic, partition, last, at, &mut state, txn, out)?;
            txn.put(
                key,
                postcard::to_allocvec(&state)
                    .map_err(|e| ProcessError::fatal("encoding audit state", e))?,
            );
            self.track(txn, &topic, partition, &state)?;
        }
        Ok(())
    }

    fn state(txn: &StateTxn<'_>, key: &[u8]) -> Result<PartitionState, ProcessError> {
        Ok(match txn.get(key)? {
            Some(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| StateError::corrupt(format!("audit partition state: {e}")))?,
            None => PartitionState {
                last_hash: GENESIS.to_string(),
                ..PartitionState::default()
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn anchor(
        &mut self,
        topic: &str,
        partition: i32,
        last_offset: i64,
        anchored_at: i64,
        state: &mut PartitionState,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let mut anchor = Anchor {
            sequence: state.sequence,
            topic: topic.to_string(),
            partition,
            first_offset: state.first_offset,
            last_offset,
            tree_size: state.frontier.size() as i64,
            root: hex::encode(state.frontier.root()),
            previous_hash: std::mem::take(&mut state.last_hash),
            request_ids: std::mem::take(&mut state.request_ids),
            anchored_at,
            key_id: String::new(),
            signature: String::new(),
            checkpoint: String::new(),
        };
        self.signer.sign(&mut anchor);
        anchor.checkpoint = self
            .log
            .append(&anchor)
            .map_err(|e| ProcessError::fatal("the anchor log", e))?;
        state.last_hash = hex::encode(anchor_hash(&anchor));
        state.sequence += 1;
        state.pending = 0;
        txn.put(
            keys::anchor(topic, partition, anchor.sequence),
            postcard::to_allocvec(&anchor)
                .map_err(|e| ProcessError::fatal("encoding an anchor", e))?,
        );
        out.emit(OutputRecord {
            topic: self.anchors_topic.clone(),
            key: format!("{}/{}", anchor.topic, anchor.partition).into_bytes(),
            value: Some(self.anchors.encode(&anchor).map_err(ProcessError::from)?),
            id: format!(
                "anchor/{}/{}/{}",
                anchor.topic, anchor.partition, anchor.sequence
            ),
            tenant: None,
        });
        Ok(())
    }
}

/// What the runtime decodes each input into. Every record is hashed as the
/// bytes it is; only an audit event's content matters beyond that (it
/// decides when to anchor).
pub struct Input(Option<AuditEvent>);

impl trellis_runtime::pipeline::Input<'_> for Input {
    fn decode(record: &InputRecord<'_>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
        if record.topic != AUDIT_EVENTS_TOPIC {
            return Ok(Self(None));
        }
        match record.avro(avro) {
            Ok(event) => Ok(Self(Some(event))),
            // Not the record's fault: wait, or replay would anchor elsewhere.
            Err(e @ DecodeError::RegistryUnavailable { .. }) => Err(e),
            // An undecodable event is still hashed, never dead-lettered: the
            // tree covers bytes, whatever they are.
            Err(_) => Ok(Self(None)),
        }
    }
}

impl Processor for Audit {
    type Input<'r> = Input;

    fn restore(&mut self, store: &StateStore) -> Result<(), StateError> {
        // A heartbeat may be owed for records committed before a restart.
        let mut map = BTreeMap::new();
        for entry in store.scan_prefix(&[keys::PARTITION]) {
            let (key, bytes) = entry?;
            let state: PartitionState = postcard::from_bytes(&bytes)
                .map_err(|e| StateError::corrupt(format!("audit partition state: {e}")))?;
            let (topic, partition) = keys::parse_partition(&key);
            // Every anchor the store made is on audit.anchors (outputs are
            // acknowledged before state commits): if the read at start
            // missed one, new anchors would get other places in the anchor
            // log than the ones already published. Refuse to sign then.
            if state.sequence > 0 {
                let hash: Option<crate::merkle::Hash> = hex::decode(&state.last_hash)
                    .ok()
                    .and_then(|h| h.try_into().ok());
                if !hash.is_some_and(|h| self.log.holds(&topic, partition, state.sequence - 1, &h))
                {
                    return Err(StateError::corrupt(format!(
                        "anchor {} of {topic}/{partition} is in the store but was not read from {ANCHORS_TOPIC} at start (the topic was not read to its end, or lost records): refusing to extend the anchor log",
                        state.sequence - 1
                    )));
                }
            }
            if let Some(due) = self.due(&topic, &state) {
                map.insert((topic, partition), due);
            }
        }
        self.pending.set_due(map.values().min().copied());
        self.unanchored = Some(map);
        Ok(())
    }

    fn committed(&mut self) {
        if let Err(e) = self.log.commit() {
            // The anchors are on the topic; the next commit publishes them.
            tracing::error!(error = %e, "publishing the checkpoint failed");
        }
    }

    fn abandoned(&mut self) {
        // Recounted from the store with the next record.
        self.unanchored = None;
        self.log.rollback();
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        Input(event): Input,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let key = keys::partition(record.topic, record.partition);
        let mut state = Self::state(txn, &key)?;
        record_bytes(
            &mut self.buf,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp_ms,
            record.key,
            record.value,
            |sink| record.visit_headers(sink),
        );
        state.frontier.push(leaf_hash(&self.buf));
        let at = record.timestamp_ms.unwrap_or_default();
        if state.pending == 0 {
            state.first_offset = record.offset;
            state.first_timestamp = at;
        }
        state.pending += 1;
        state.last_offset = record.offset;

        // A heartbeat, or an event a GDPR answer will cite, closes the range
        // at once: the saga is waiting for its anchor.
        let mut close = false;
        let mut heartbeat_at = None;
        if let Some(event) = &event {
            if event.action == HEARTBEAT {
                close = true;
                heartbeat_at = Some(event.occurred_at);
            }
            if let Some(id) = event.details.get("request_id") {
                close = true;
                if !state.request_ids.contains(id) {
                    state.request_ids.push(id.clone());
                }
            }
        }
        let cut = match self.rule(record.topic, record.partition, record.offset) {
            Rule::Recorded(cuts) => cuts.get(&record.offset).copied(),
            Rule::Decide => (close
                || state.pending >= self.settings.anchor_every
                || at >= state.first_timestamp + self.settings.anchor_interval_ms)
                .then_some(at),
        };
        if let Some(anchored_at) = cut {
            self.anchor(
                record.topic,
                record.partition,
                record.offset,
                anchored_at,
                &mut state,
                txn,
                out,
            )?;
        }
        txn.put(
            key,
            postcard::to_allocvec(&state)
                .map_err(|e| ProcessError::fatal("encoding audit state", e))?,
        );
        self.track(txn, record.topic, record.partition, &state)?;
        if let Some(at) = heartbeat_at {
            self.cut_quiet(at, txn, out)?;
        }
        Ok(())
    }
}

/// The anchors in `store`, per partition in sequence order (tests, tools).
///
/// # Errors
/// [`StateError`] if the store cannot be read.
pub fn stored_anchors(store: &StateStore) -> Result<Vec<Anchor>, StateError> {
    store
        .scan_prefix(&[keys::ANCHOR])
        .map(|entry| {
            let (_, v) = entry?;
            postcard::from_bytes(&v).map_err(|e| StateError::corrupt(format!("anchor: {e}")))
        })
        .collect()
}

/// A heartbeat event (see the module docs).
pub fn heartbeat(at: i64) -> AuditEvent {
    AuditEvent {
        event_id: format!("audit/heartbeat/{at}"),
        tenant_id: None,
        actor: NAME.to_string(),
        action: HEARTBEAT.to_string(),
        subject: None,
        field: None,
        reason: None,
        occurred_at: at,
        details: Default::default(),
    }
}

/// The audit processor's one constructor: the binary, the bench and the
/// tests build it here.
impl Build for Audit {
    const NAME: &'static str = NAME;
    const SECRETS: &'static [SecretSpec] = SECRETS;
    const OWNS: &'static str = "the anchor chains and the anchor log, each with one writer";
    /// 2: keys in the runtime's one encoding (`state::key`).
    const STATE_FORMAT: u32 = 2;
    const PATHS: &'static [(&'static str, &'static str)] =
        &[("checkpoint_file", "audit/checkpoint")];
    type Settings = Settings;
    type Processor = Self;

    async fn build(ctx: &mut Context<'_, Settings>) -> Result<Self, StartError> {
        let settings = ctx.settings;
        let signer = match settings.signature {
            Algorithm::Ed25519 => {
                Signer::ed25519(&settings.key_id, ctx.secrets.get(SIGNING_KEY))
                    .map_err(|e| StartError::Misconfigured(format!("{SIGNING_KEY}: {e}")))?
            }
            Algorithm::Hmac => Signer::hmac(
                settings.key_id.clone(),
                ctx.secrets.get(SIGNING_KEY).clone(),
            ),
        };
        let pending = Pending::default();
        if let Some(ticker) = ctx.ticker(AUDIT_EVENTS_TOPIC)? {
            let events = ctx.encoder(AUDIT_EVENTS_TOPIC).await?;
            let every = Duration::from_millis(settings.anchor_interval_ms as u64);
            ticker.spawn(every, pending.clone(), move |at| {
                let event = heartbeat(at);
                Ok(TickRecord {
                    id: event.event_id.clone(),
                    key: Vec::new(),
                    value: events.encode(&event).map_err(|e| e.to_string())?,
                })
            });
        }
        let recorded = match ctx.kafka() {
            Some(kafka) => recorded_anchors(kafka, ctx.decoder()).await?,
            None => Vec::new(),
        };
        let audit = Audit::new(
            settings.clone(),
            signer,
            ctx.encoder(ANCHORS_TOPIC).await?,
            pending,
        )
        .with_recorded(&recorded)
        .map_err(|e| StartError::Misconfigured(format!("{ANCHORS_TOPIC}: {e}")))?;
        if ctx.live()
            && let Some(addr) = settings.checkpoint_addr
        {
            let bound = checkpoint::serve(audit.published(), addr)
                .await
                .map_err(|e| {
                    StartError::Misconfigured(format!("serving checkpoints on {addr}: {e}"))
                })?;
            tracing::info!(addr = %bound, origin = %settings.origin, "checkpoints served at /checkpoint");
        }
        Ok(audit)
    }
}

trellis_runtime::processor_run!(Audit);

/// The anchors on `audit.anchors` in topic order: the recorded cuts for a
/// replay to honour, and the anchor log.
async fn recorded_anchors(
    kafka: &KafkaConfig,
    decoder: AvroDecoder,
) -> Result<Vec<Anchor>, StartError> {
    // The broker or the registry could not be read: an outage, not a
    // configuration to fix.
    let unreadable = |e: String| {
        StartError::Unavailable(format!(
            "reading the recorded anchors on {ANCHORS_TOPIC}: {e}"
        ))
    };
    let kafka = kafka.clone();
    let values = tokio::task::spawn_blocking(move || {
        let mut values = Vec::new();
        trellis_runtime::kafka::scan_topic(
            &kafka,
            ANCHORS_TOPIC,
            Duration::from_secs(2),
            |m| {
                use rdkafka::Message;
                values.extend(m.payload().map(<[u8]>::to_vec));
            },
            || false,
        )
        .map(|_| values)
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| unreadable(e.to_string()))?
    .map_err(unreadable)?;
    let mut anchors = Vec::with_capacity(values.len());
    for value in values {
        anchors.push(
            decoder
                .decode(&value)
                .await
                .map_err(|e| unreadable(e.to_string()))?,
        );
    }
    Ok(anchors)
}

#[cfg(test)]
mod tests;
