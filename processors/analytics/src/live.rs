//! Live cells: what the aggregator counts into while a cell can still
//! change, one stored value per cell, held decoded in memory and written
//! back once per batch.
//!
//! A cell is touched by every event of its window and dimension, so
//! decoding and writing it per event (and a store key per distinct learner)
//! cost most of the processor's time. The [`WorkingSet`] keeps the cells a
//! batch touches decoded; [`WorkingSet::save`] writes each changed cell to
//! the batch's transaction once, just before the runtime commits it. What
//! is stored is the same whatever the batch boundaries: each cell's value
//! after the batch's last event.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use trellis_runtime::StateTxn;
use trellis_runtime::pipeline::ProcessError;
use trellis_runtime::state::StateError;

use crate::windows::{Cell, Counts};

/// How many cells stay decoded between batches. Beyond it the (committed,
/// clean) set is dropped after a commit and cells are read back as needed.
const CAPACITY: usize = 100_000;

/// A cell that can still change, as stored under its cell key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LiveCell {
    /// The classes published so far (class 0 until its publication).
    pub cell: Cell,
    /// What each class not yet published adds.
    pub deltas: BTreeMap<u32, Counts>,
    /// The distinct set: `h(cell key ‖ pseudonym)` → the class the learner
    /// was first counted in.
    pub members: BTreeMap<[u8; 8], u32>,
    /// Erased learners' entries, by the class they were first counted in:
    /// a count, so the set is the same whatever order erasures come in, and
    /// nothing a pseudonym hashes to.
    pub anonymous: BTreeMap<u32, u32>,
}

impl LiveCell {
    pub fn new(cell: Cell) -> Self {
        Self {
            cell,
            deltas: BTreeMap::new(),
            members: BTreeMap::new(),
            anonymous: BTreeMap::new(),
        }
    }

    /// Counts `learner`'s hash in class `class`; true when it is new to the
    /// classes up to 0 (the first publication's distinct count).
    pub fn join(&mut self, member: [u8; 8], class: u32) -> bool {
        let counted = self.members.entry(member).or_insert(u32::MAX);
        if *counted > class {
            *counted = class;
            class == 0
        } else {
            false
        }
    }

    /// Distinct learners counted in classes `0..=class`.
    pub fn distinct_upto(&self, class: u32) -> i64 {
        let named = self.members.values().filter(|&&c| c <= class).count();
        let anonymous: u32 = self.anonymous.range(..=class).map(|(_, n)| n).sum();
        (named + anonymous as usize) as i64
    }

    /// Turns the entry `member` into an anonymous one; false if absent.
    pub fn anonymise(&mut self, member: &[u8; 8]) -> bool {
        match self.members.remove(member) {
            Some(class) => {
                *self.anonymous.entry(class).or_default() += 1;
                true
            }
            None => false,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, ProcessError> {
        postcard::to_stdvec(self).map_err(|e| ProcessError::fatal("encoding a live cell", e))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        postcard::from_bytes(bytes)
            .map_err(|e| StateError::corrupt(format!("analytics: live cell: {e}")))
    }
}

struct Slot {
    live: LiveCell,
    dirty: bool,
}

/// Decoded live cells by cell key; see the module docs.
#[derive(Default)]
pub(crate) struct WorkingSet {
    cells: HashMap<Vec<u8>, Slot>,
}

impl WorkingSet {
    /// The cell under `key` (from memory, else from `txn`), marked changed;
    /// `None` if there is no such live cell.
    pub fn get_mut(
        &mut self,
        key: &[u8],
        txn: &StateTxn<'_>,
    ) -> Result<Option<&mut LiveCell>, StateError> {
        if !self.cells.contains_key(key) {
            let Some(bytes) = txn.get(key)? else {
                return Ok(None);
            };
            let live = LiveCell::decode(&bytes)?;
            self.cells
                .insert(key.to_vec(), Slot { live, dirty: false });
        }
        let slot = self.cells.get_mut(key).expect("just ensured");
        slot.dirty = true;
        Ok(Some(&mut slot.live))
    }

    /// Adds (or replaces) the cell under `key`, to be written.
    pub fn insert(&mut self, key: Vec<u8>, live: LiveCell) -> &mut LiveCell {
        &mut self
            .cells
            .entry(key)
            .insert_entry(Slot { live, dirty: true })
            .into_mut()
            .live
    }

    /// Forgets the cell under `key` (its stored entry is the caller's to delete).
    pub fn forget(&mut self, key: &[u8]) {
        self.cells.remove(key);
    }

    /// Writes every changed cell into `txn`.
    ///
    /// # Errors
    /// [`ProcessError`] if a cell cannot be encoded.
    pub fn save(&mut self, txn: &mut StateTxn<'_>) -> Result<(), ProcessError> {
        for (key, slot) in &mut self.cells {
            if slot.dirty {
                txn.put(key.clone(), slot.live.encode()?);
                slot.dirty = false;
            }
        }
        Ok(())
    }

    /// After a commit: bounds the memory held (every cell is clean now).
    pub fn committed(&mut self) {
        if self.cells.len() > CAPACITY {
            self.cells.clear();
        }
    }

    /// Drops everything: the batch that changed it was abandoned.
    pub fn clear(&mut self) {
        self.cells.clear();
    }
}
