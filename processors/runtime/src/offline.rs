//! A processor run over records held in memory, with no broker.

use trellis_records::DeadLetter;

use crate::emitter::{Emitter, OutputRecord};
use crate::processor::{ProcessError, Processor};
use crate::record::{InputRecord, OwnedRecord};
use crate::state::{Positions, StateStore, TopicPartition};

/// What [`run_offline`] saw a processor emit.
#[derive(Default)]
pub struct Offline {
    /// Output records, in emission order.
    pub outputs: Vec<OutputRecord>,
    /// Dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Inputs dropped as duplicates.
    pub duplicates: u64,
}

/// Runs `processor` over `records` against `store` with no broker: the same
/// per-record contract as the live loop, committing state with the input
/// positions every `batch` records. Benchmarks use it to time a rebuild from
/// an already-fetched log; tests use it as the reference ("clean") run a
/// live run must equal.
///
/// # Errors
/// [`ProcessError`] as the live loop would stop on.
pub fn run_offline<P: Processor>(
    processor: &mut P,
    store: &StateStore,
    records: &[OwnedRecord],
    batch: usize,
) -> Result<Offline, ProcessError> {
    processor.restore(store)?;
    let mut result = Offline::default();
    let mut emitter = Emitter::default();
    for chunk in records.chunks(batch.max(1)) {
        let mut txn = store.begin();
        let mut positions = Positions::new();
        for record in chunk {
            let headers: Vec<(&str, &[u8])> = record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            let input = InputRecord::new(
                &record.topic,
                record.partition,
                record.offset,
                record.timestamp_ms,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            );
            emitter.clear();
            processor.process(&input, &mut txn, &mut emitter)?;
            if let Some(fault) = emitter.fault.take() {
                return Err(ProcessError::fatal("decoding an input", fault));
            }
            result.duplicates += emitter.duplicates;
            result.outputs.append(&mut emitter.records);
            result.dead_letters.append(&mut emitter.dead);
            positions.insert(
                TopicPartition::new(record.topic.as_str(), record.partition),
                record.offset + 1,
            );
        }
        store.commit(txn, &positions)?;
        processor.committed();
    }
    Ok(result)
}
