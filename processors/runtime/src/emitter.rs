//! What a processor emits for one input record: outputs and dead letters.

use std::sync::Arc;

use trellis_records::DeadLetter;

use crate::record::InputRecord;

/// A record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputRecord {
    /// Destination topic (must be a declared output).
    pub topic: Arc<str>,
    /// Key: tenant first, so a tenant's subject stays in one partition.
    pub key: Vec<u8>,
    /// Value in the wire format.
    pub value: Option<Vec<u8>>,
    /// Stable id derived from the input; reprocessing yields the same id.
    pub id: String,
    /// Tenant the record belongs to (the `tenant` header).
    pub tenant: Option<String>,
}

impl OutputRecord {
    /// The record as the producer sends it, with its headers.
    pub(crate) fn outgoing<'a>(
        &'a self,
        timestamp_ms: Option<i64>,
        request_id: Option<&'a [u8]>,
    ) -> crate::producer::Outgoing<'a> {
        crate::producer::Outgoing {
            topic: &self.topic,
            key: &self.key,
            value: self.value.as_deref(),
            id: Some(&self.id),
            tenant: self.tenant.as_deref(),
            request_id,
            timestamp_ms,
        }
    }
}

/// Collects what a processor emits for one record.
pub struct Emitter {
    /// The processor's name, as dead letters carry it.
    processor: &'static str,
    pub(crate) records: Vec<OutputRecord>,
    /// Per record in `records`: the timestamp it carries, when not its
    /// input's ([`Emitter::emit_at`]).
    pub(crate) timestamps: Vec<Option<i64>>,
    pub(crate) dead: Vec<DeadLetter>,
    pub(crate) duplicates: u64,
    /// Replaying: what is emitted is dropped (see [`Emitter::discards`]).
    discard: bool,
}

impl Emitter {
    /// An empty emitter for the processor named `processor`.
    pub fn new(processor: &'static str) -> Self {
        Self {
            processor,
            records: Vec::new(),
            timestamps: Vec::new(),
            dead: Vec::new(),
            duplicates: 0,
            discard: false,
        }
    }

    /// True while the runtime replays inputs the state lacks but whose
    /// outputs were already published (a rebuild, a restart with a lost
    /// store): records emitted now are dropped, so a processor may skip
    /// building them. Nothing a processor keeps may depend on it: a
    /// replayed store must equal a live one (the rebuild digest tests).
    pub fn discards(&self) -> bool {
        self.discard
    }

    /// Sets [`Emitter::discards`].
    pub(crate) fn set_discard(&mut self, discard: bool) {
        self.discard = discard;
    }

    /// Emits an output record.
    pub fn emit(&mut self, record: OutputRecord) {
        if self.discard {
            return;
        }
        self.records.push(record);
        self.timestamps.push(None);
    }

    /// Emits an output record carrying `timestamp_ms` instead of the
    /// timestamp of the record being processed: for outputs emitted by
    /// [`crate::Processor::flush`], which answer an input of the batch.
    pub fn emit_at(&mut self, record: OutputRecord, timestamp_ms: Option<i64>) {
        if self.discard {
            return;
        }
        self.records.push(record);
        self.timestamps.push(timestamp_ms);
    }

    /// Dead-letters `record` with a reason code and a value-free detail.
    pub fn dead_letter(
        &mut self,
        record: &InputRecord<'_>,
        reason: &str,
        detail: String,
        tenant: Option<String>,
    ) {
        self.dead.push(DeadLetter {
            id: DeadLetter::id_for(record.topic, record.partition, record.offset),
            reason: reason.to_string(),
            detail,
            processor: self.processor.to_string(),
            tenant_id: tenant,
            source_topic: record.topic.to_string(),
            source_partition: record.partition,
            source_offset: record.offset,
            source_timestamp: record.timestamp_ms,
            original_key: record.key.map(<[u8]>::to_vec),
            original_value: record.value.map(<[u8]>::to_vec),
            original_headers: record.headers_owned(),
            truncated: false,
            original_value_length: None,
            original_value_sha256: None,
        });
    }

    /// Notes that the record was dropped as a duplicate by id.
    pub fn dropped_duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// Duplicates dropped (tests).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// What was emitted (tests).
    pub fn records(&self) -> &[OutputRecord] {
        &self.records
    }

    /// Dead letters emitted (tests).
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead
    }

    /// Empties the emitter.
    pub fn clear(&mut self) {
        self.records.clear();
        self.timestamps.clear();
        self.dead.clear();
        self.duplicates = 0;
    }
}
