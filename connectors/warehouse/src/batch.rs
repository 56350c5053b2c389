//! What one batch of records changes in the warehouse's tables, collapsed
//! by key: the [`Rows`] of the warehouse's [`trellis_runtime::sink`].
//!
//! The upserts of one SQL statement must touch each row once, and only the
//! last state of a row within a batch matters, so the batch keeps one entry
//! per primary key: the latest `progress` record (or its tombstone), each
//! completion once, the highest revision of each aggregate cell. Saga
//! commands, offsets and erased learners are the mechanism's
//! ([`trellis_runtime::sink::SinkBatch`]); an erasure removes the learner's
//! pending rows at once.

use std::collections::HashMap;

use trellis_runtime::sink::{Rows, Source};

use crate::rows::{AggregateRow, CompletionRow, ProgressRow};

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

/// What one record becomes in the tables.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum TableRow {
    /// A `progress` change of a key.
    Progress(ProgressKey, ProgressChange),
    /// A completion.
    Completion(CompletionRow),
    /// An aggregate cell.
    Aggregate(AggregateRow),
}

/// The table changes of one batch.
#[derive(Debug, Default)]
pub struct Tables {
    /// Latest `progress` change per key.
    pub progress: HashMap<ProgressKey, ProgressChange>,
    /// Completions by `(tenant, completion id)`.
    pub completions: HashMap<(String, String), CompletionRow>,
    /// Highest revision per aggregate cell.
    pub aggregates: HashMap<CellKey, AggregateRow>,
}

impl Rows for Tables {
    type Row = TableRow;

    fn add(&mut self, row: TableRow) {
        match row {
            TableRow::Progress(key, change) => {
                self.progress.insert(key, change);
            }
            // One row per id; a re-sent one is the same.
            TableRow::Completion(row) => {
                self.completions.insert(
                    (row.value.tenant_id.clone(), row.value.completion_id.clone()),
                    row,
                );
            }
            // Kept unless the batch has a later revision of the cell.
            TableRow::Aggregate(row) => match self.aggregates.entry(row.cell()) {
                std::collections::hash_map::Entry::Occupied(mut held) => {
                    if row.value.revision >= held.get().value.revision {
                        held.insert(row);
                    }
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(row);
                }
            },
        }
    }

    fn erase(&mut self, tenant: &str, learner: &str) {
        self.progress
            .retain(|(t, l, _), _| !(t == tenant && l == learner));
        self.completions
            .retain(|_, row| !(row.value.tenant_id == tenant && row.value.learner == learner));
    }
}

impl Tables {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_records::{Aggregate, Completion, EraseCommand};
    use trellis_runtime::sink::{PendingCommand, SinkBatch, subject_hash};

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
        let mut tables = Tables::default();
        tables.add(TableRow::Aggregate(cell(2, 20)));
        tables.add(TableRow::Aggregate(cell(1, 10)));
        assert_eq!(tables.aggregates.values().next().unwrap().value.events, 20);
        tables.add(TableRow::Aggregate(cell(3, 30)));
        assert_eq!(tables.aggregates.values().next().unwrap().value.events, 30);
    }

    #[test]
    fn an_erasure_drops_the_learners_pending_rows_and_no_one_elses() {
        let mut batch: SinkBatch<Tables> = SinkBatch::default();
        for learner in ["gone", "stays"] {
            batch.rows.add(TableRow::Completion(
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
            ));
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
            .rows
            .completions
            .values()
            .map(|row| row.value.learner.as_str())
            .collect();
        assert_eq!(
            left,
            ["stays"],
            "the erased learner's row went, the other stayed"
        );
        assert!(batch.erased.contains(&subject_hash("t", "gone")));
        assert!(!batch.erased.contains(&subject_hash("t", "stays")));
        assert!(batch.has_command("c"));
    }
}
