//! The trait a processor implements: the runtime owns offsets, batching and
//! checkpoints; the processor turns records into state changes and outputs.

use std::collections::BTreeMap;

use crate::emitter::Emitter;
pub use crate::error::ProcessError;
use crate::record::InputRecord;
use crate::state::{StateError, StateStore, StateTxn};

/// A processor's logic. The runtime owns offsets, batching and checkpoints;
/// the processor only turns records into state changes and outputs, and must
/// do so deterministically (same state + same record → same changes and outputs).
pub trait Processor: Send + 'static {
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

    /// Handles one record. Bad input is not an error: emit a dead letter.
    ///
    /// # Errors
    /// [`ProcessError`] only for failures that make continuing unsafe.
    fn process(
        &mut self,
        record: &InputRecord<'_>,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError>;

    /// Called after a batch's state is committed.
    fn committed(&mut self) {}

    /// Called when a batch is abandoned before commit (the process is about to
    /// stop); in-memory indexes must not keep its changes.
    fn abandoned(&mut self) {}
}
