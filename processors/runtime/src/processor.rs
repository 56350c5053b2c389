//! The trait a processor implements, and the per-record step the live loop
//! and the offline runner share: the runtime decodes each input record into
//! the processor's typed [`Processor::Input`], dead-letters what cannot be
//! decoded, then hands the rest to [`Processor::process`].

use std::collections::BTreeMap;

use crate::emitter::Emitter;
pub use crate::error::ProcessError;
use crate::record::InputRecord;
use crate::schema::{AvroDecoder, DecodeError};
use crate::state::{StateError, StateStore, StateTxn};

/// A processor's logic. The runtime owns offsets, batching, decoding and
/// checkpoints; the processor only turns decoded records into state changes
/// and outputs, and must do so deterministically (same state + same record →
/// same changes and outputs).
pub trait Processor: Send + 'static {
    /// What each input record is decoded into before [`Processor::process`]
    /// sees it (usually an enum with a variant per input topic). It may
    /// borrow from the record's bytes (`'r`), so a processor that reads a
    /// few fields of a large record copies only those.
    type Input<'r>: Input<'r>;

    /// Rebuilds in-memory indexes from the committed store; called once
    /// before the first record.
    ///
    /// # Errors
    /// [`StateError`] if the store cannot be read.
    fn restore(&mut self, _store: &StateStore) -> Result<(), StateError> {
        Ok(())
    }

    /// Told, before the first record, which partitions of each input this
    /// instance reads (processors whose logic spans partitions, such as
    /// event-time watermarks, need the whole set, not just those seen so far).
    ///
    /// # Errors
    /// [`ProcessError`] if the processor cannot work with this assignment.
    fn assigned(&mut self, _partitions: &BTreeMap<String, Vec<i32>>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Handles one decoded record. Bad input is not an error: emit a dead
    /// letter.
    ///
    /// # Errors
    /// [`ProcessError`] only for failures that make continuing unsafe.
    fn process<'r>(
        &mut self,
        record: &InputRecord<'r>,
        input: Self::Input<'r>,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError>;

    /// Writes into `txn` what the processor changed in memory during the
    /// batch: called once per batch, after its last record and before
    /// [`Processor::flush`] and the commit (live, replaying and offline
    /// alike). A processor that keeps decoded state it changes many times
    /// per batch (a working set) writes it here once instead of per record;
    /// what it writes must not depend on where the batch boundaries fell.
    ///
    /// # Errors
    /// [`ProcessError`] only for failures that make continuing unsafe.
    fn save(&mut self, _txn: &mut StateTxn<'_>) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Makes the batch's effects outside Kafka durable: a sink's database
    /// transaction. Called once per batch, after its last record was
    /// processed and before its outputs are awaited and its state and
    /// positions committed, so a crash before it returns replays the whole
    /// batch, and a crash after it replays a batch whose effects are
    /// already durable (the processor must recognise them: a sink keeps
    /// the offsets it includes in the same database transaction). What it
    /// emits is produced after it returns: answers that must not precede
    /// the effect they report (the rows a GDPR erasure deleted).
    ///
    /// Wait out faults that may mend (a database restart) here; the runtime
    /// races this call against shutdown, and a batch abandoned in the middle
    /// is replayed on the next start.
    ///
    /// # Errors
    /// [`ProcessError`] only for failures that make continuing unsafe.
    fn flush(
        &mut self,
        _out: &mut Emitter,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Called after a batch's state is committed.
    fn committed(&mut self) {}

    /// Called when a batch is abandoned before commit (the process is about to
    /// stop); in-memory indexes must not keep its changes.
    fn abandoned(&mut self) {}
}

/// A processor's typed input, decoded by the runtime from a record.
///
/// The runtime has fetched the record's writer schema before calling
/// [`Input::decode`], so decoding never waits on the network; a
/// [`DecodeError`] is a verdict on the record (dead letter with
/// [`DecodeError::reason`]), except [`DecodeError::RegistryUnavailable`],
/// which pauses the processor and never judges the record.
pub trait Input<'r>: Sized {
    /// Decodes `record` (typically by its topic, with [`InputRecord::avro`]).
    ///
    /// # Errors
    /// [`DecodeError`] when the record is not what its topic carries.
    fn decode(record: &InputRecord<'r>, avro: &AvroDecoder) -> Result<Self, DecodeError>;
}

/// No decoding: for processors that read the record's bytes themselves (the
/// collector parses JSON; the audit processor hashes bytes).
impl Input<'_> for () {
    fn decode(_: &InputRecord<'_>, _: &AvroDecoder) -> Result<Self, DecodeError> {
        Ok(())
    }
}

/// Why [`apply`] could not finish a record.
pub(crate) enum Halt {
    /// The processor said continuing is unsafe.
    Process(ProcessError),
    /// The registry could not be asked: not the record's fault.
    Registry(DecodeError),
}

impl From<ProcessError> for Halt {
    fn from(e: ProcessError) -> Self {
        Self::Process(e)
    }
}

/// The per-record contract, the same live and offline: decode, dead-letter
/// what is bad input, process the rest. `out` must be cleared by the caller.
pub(crate) fn apply<'r, P: Processor>(
    processor: &mut P,
    decoder: &AvroDecoder,
    record: &InputRecord<'r>,
    txn: &mut StateTxn<'_>,
    out: &mut Emitter,
) -> Result<(), Halt> {
    match P::Input::decode(record, decoder) {
        Ok(input) => Ok(processor.process(record, input, txn, out)?),
        Err(e @ DecodeError::RegistryUnavailable { .. }) => Err(Halt::Registry(e)),
        Err(e) => {
            out.dead_letter(record, e.reason(), e.to_string(), None);
            Ok(())
        }
    }
}
