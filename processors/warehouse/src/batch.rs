//! What one batch of records changes in the warehouse, collapsed by key.
//!
//! The upserts of one SQL statement must touch each row once, and only the
//! last state of a row within a batch matters, so the batch keeps one entry
//! per primary key: the latest `progress` record (or its tombstone), each
//! completion once, the highest revision of each aggregate cell. Saga
//! commands are executed at the end of the batch, after its rows; an
//! erasure removes the learner's pending rows at once, and the learner's
//! later records are dropped as they arrive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use trellis_records::EraseCommand;

use crate::rows::{AggregateRow, CompletionRow, ProgressRow, Source};

/// SHA-256(tenant ‖ 0x00 ‖ pseudonym): how an erased learner is remembered
/// without keeping the pseudonym.
pub type LearnerHash = [u8; 32];

/// The hash of `learner` in `tenant`.
pub fn learner_hash(tenant: &str, learner: &str) -> LearnerHash {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(learner.as_bytes());
    h.finalize().into()
}

/// A `progress` key's latest record in the batch.
// Tombstones are rare: boxing every upsert would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressChange {
    /// The row as it now is.
    Upsert(ProgressRow),
    /// A tombstone: the row is gone.
    Delete(Source),
}

/// `(tenant, learner, activity)`.
pub type ProgressKey = (String, String, String);
/// `(tenant, window, window start, dimension, value)`.
pub type CellKey = (String, String, i64, String, String);

/// A saga command to execute when the batch is written.
#[derive(Debug, Clone)]
pub struct PendingCommand {
    /// The command.
    pub command: EraseCommand,
    /// Its record's timestamp (the answer's time and record timestamp).
    pub at: Option<i64>,
}

/// The changes of one batch.
#[derive(Debug, Default)]
pub struct Batch {
    /// Latest `progress` change per key.
    pub progress: HashMap<ProgressKey, ProgressChange>,
    /// Completions by `(tenant, completion id)`.
    pub completions: HashMap<(String, String), CompletionRow>,
    /// Highest revision per aggregate cell.
    pub aggregates: HashMap<CellKey, AggregateRow>,
    /// Saga commands, in log order.
    pub commands: Vec<PendingCommand>,
    /// Learners erased by this batch's commands.
    pub erased: HashSet<LearnerHash>,
    /// Next offset per input partition the batch reached.
    pub offsets: BTreeMap<(Arc<str>, i32), i64>,
}

impl Batch {
    /// Whether writing the batch would change nothing.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty() && self.commands.is_empty()
    }

    /// Records that the batch read `topic`/`partition` up to `offset`.
    pub fn advance(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let next = self.offsets.entry((topic.clone(), partition)).or_default();
        *next = (*next).max(offset + 1);
    }

    /// Keeps a `progress` record, replacing the key's earlier one.
    pub fn progress(&mut self, key: ProgressKey, change: ProgressChange) {
        self.progress.insert(key, change);
    }

    /// Keeps a completion (one row per id; a re-sent one is the same).
    pub fn completion(&mut self, row: CompletionRow) {
        self.completions.insert(
            (row.value.tenant_id.clone(), row.value.completion_id.clone()),
            row,
        );
    }

    /// Keeps an aggregate cell unless the batch has a later revision of it.
    pub fn aggregate(&mut self, row: AggregateRow) {
        match self.aggregates.entry(row.cell()) {
            std::collections::hash_map::Entry::Occupied(mut held) => {
                if row.value.revision >= held.get().value.revision {
                    held.insert(row);
                }
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(row);
            }
        }
    }

    /// Queues an erasure: the learner's pending rows go at once, their later
    /// records are refused by [`Batch::erased`].
    pub fn erase(&mut self, tenant: &str, learner: &str, command: PendingCommand) {
        self.progress
            .retain(|(t, l, _), _| !(t == tenant && l == learner));
        self.completions
            .retain(|_, row| !(row.value.tenant_id == tenant && row.value.learner == learner));
        self.erased.insert(learner_hash(tenant, learner));
        self.commands.push(command);
    }

    /// Whether the batch already holds a command with this id.
    pub fn has_command(&self, command_id: &str) -> bool {
        self.commands
            .iter()
            .any(|c| c.command.command_id == command_id)
    }

    /// Progress upserts and deletes, split.
    pub fn progress_changes(&self) -> (Vec<&ProgressRow>, Vec<&ProgressKey>) {
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, change) in &self.progress {
            match change {
                ProgressChange::Upsert(row) => upserts.push(row),
                ProgressChange::Delete(_) => deletes.push(key),
            }
        }
        (upserts, deletes)
    }

    /// Forgets everything (written, or abandoned).
    pub fn clear(&mut self) {
        self.progress.clear();
        self.completions.clear();
        self.aggregates.clear();
        self.commands.clear();
        self.erased.clear();
        self.offsets.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_records::{Aggregate, Completion};

    const SOURCE: Source = Source {
        partition: 0,
        offset: 0,
        timestamp_ms: None,
    };

    fn cell(revision: i32, events: i64) -> AggregateRow {
        AggregateRow::new(
            Aggregate {
                tenant_id: "t".into(),
                window_start: 0,
                window: "hour".into(),
                dimension: "verb".into(),
                dimension_value: "v".into(),
                events,
                distinct_learners: 1,
                completions: 0,
                passes: 0,
                fails: 0,
                avg_score_scaled: None,
                suppressed: false,
                revision,
            },
            None,
            SOURCE,
        )
        .unwrap()
    }

    #[test]
    fn a_cell_keeps_its_highest_revision_whatever_the_order() {
        let mut batch = Batch::default();
        batch.aggregate(cell(2, 20));
        batch.aggregate(cell(1, 10));
        assert_eq!(batch.aggregates.values().next().unwrap().value.events, 20);
        batch.aggregate(cell(3, 30));
        assert_eq!(batch.aggregates.values().next().unwrap().value.events, 30);
    }

    #[test]
    fn an_erasure_drops_the_learners_pending_rows_and_no_one_elses() {
        let mut batch = Batch::default();
        for learner in ["gone", "stays"] {
            batch.completion(
                CompletionRow::new(
                    Completion {
                        completion_id: format!("c-{learner}"),
                        tenant_id: "t".into(),
                        learner: learner.into(),
                        activity_id: "a".into(),
                        course_id: None,
                        kind: "completed".into(),
                        score_scaled: None,
                        at: 0,
                        evidence_event_ids: Vec::new(),
                    },
                    None,
                    SOURCE,
                )
                .unwrap(),
            );
        }
        let command = PendingCommand {
            command: EraseCommand {
                command_id: "c".into(),
                request_id: "r".into(),
                tenant_id: "t".into(),
                participant: "warehouse".into(),
                kind: "erasure".into(),
                learner: Some("gone".into()),
                attempt: 1,
                issued_at: 0,
            },
            at: None,
        };
        batch.erase("t", "gone", command);
        let left: Vec<&str> = batch
            .completions
            .values()
            .map(|row| row.value.learner.as_str())
            .collect();
        assert_eq!(
            left,
            ["stays"],
            "the erased learner's row went, the other stayed"
        );
        assert!(batch.erased.contains(&learner_hash("t", "gone")));
        assert!(!batch.erased.contains(&learner_hash("t", "stays")));
        assert!(batch.has_command("c"));
    }
}
