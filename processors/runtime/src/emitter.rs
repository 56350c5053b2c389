//! What a processor emits for one input record: outputs and dead letters.

use std::sync::Arc;

use trellis_records::DeadLetter;

use crate::record::InputRecord;
use crate::schema::{AvroDecoder, DecodeError};

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

/// Collects what a processor emits for one record.
#[derive(Default)]
pub struct Emitter {
    pub(crate) records: Vec<OutputRecord>,
    pub(crate) dead: Vec<DeadLetter>,
    pub(crate) duplicates: u64,
    /// A decode that needed the registry, which the runtime should have
    /// asked before the record reached the processor: a runtime bug.
    pub(crate) fault: Option<crate::schema::DecodeError>,
}

impl Emitter {
    /// Emits an output record.
    pub fn emit(&mut self, record: OutputRecord) {
        self.records.push(record);
    }

    /// Dead-letters `record` with a reason code and a value-free detail.
    pub fn dead_letter(
        &mut self,
        record: &InputRecord<'_>,
        processor: &str,
        reason: &str,
        detail: String,
        tenant: Option<String>,
    ) {
        self.dead.push(DeadLetter {
            id: DeadLetter::id_for(record.topic, record.partition, record.offset),
            reason: reason.to_string(),
            detail,
            processor: processor.to_string(),
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

    /// Decodes `record`'s Avro value, or dead-letters the record
    /// (`MISSING_VALUE`, `UNKNOWN_SCHEMA`, `UNDECODABLE`) and says `None`:
    /// bad input never stops a processor. The runtime has fetched the
    /// record's writer schema before calling the processor, so an outage of
    /// the registry never reaches here as a verdict on the record.
    pub fn decode_or_dead_letter<T: serde::de::DeserializeOwned>(
        &mut self,
        decoder: &AvroDecoder,
        record: &InputRecord<'_>,
        processor: &str,
    ) -> Option<T> {
        let Some(value) = record.value else {
            self.dead_letter(
                record,
                processor,
                "MISSING_VALUE",
                "record has no value".into(),
                None,
            );
            return None;
        };
        // In the live loop the writer schema is already cached (the runtime
        // fetched it); offline runs and tools may fetch it here.
        match decoder.decode_blocking(value) {
            Ok(decoded) => Some(decoded),
            Err(e @ DecodeError::RegistryUnavailable { .. }) => {
                // Not the record's fault: never a dead letter.
                self.fault = Some(e);
                None
            }
            Err(e) => {
                self.dead_letter(record, processor, e.reason(), e.to_string(), None);
                None
            }
        }
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
        self.dead.clear();
        self.duplicates = 0;
        self.fault = None;
    }
}
