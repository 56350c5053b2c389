//! Live cells: what the aggregator counts into while a cell can still
//! change, one stored value per cell (counts, distinct set and all), held
//! decoded in a [`WorkingSet`](trellis_runtime::working_set::WorkingSet)
//! and written back once per batch. A cell is touched by every event of its
//! window and dimension: decoding and writing it per event, and a store key
//! per distinct learner, cost most of the processor's time before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trellis_runtime::pipeline::ProcessError;
use trellis_runtime::state::StateError;
use trellis_runtime::working_set::Stored;

use crate::windows::{Cell, Counts};

/// How many cells stay decoded between batches.
pub(crate) const CAPACITY: usize = 100_000;

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
}

impl Stored for LiveCell {
    fn encode(&self) -> Result<Vec<u8>, ProcessError> {
        postcard::to_stdvec(self).map_err(|e| ProcessError::fatal("encoding a live cell", e))
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        postcard::from_bytes(bytes)
            .map_err(|e| StateError::corrupt(format!("analytics: live cell: {e}")))
    }
}
