//! Tenant-tagged tumbling-window aggregates (schemas/aggregate.avsc).

use serde::{Deserialize, Serialize};

/// One cell of a window for one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Owning tenant.
    pub tenant_id: String,
    /// Window start, ms since the epoch.
    pub window_start: i64,
    /// `hour` or `day`.
    pub window: String,
    /// `verb`, `course`, `activity` or `tenant`.
    pub dimension: String,
    /// The verb, course or activity IRI (the tenant id for `tenant`).
    pub dimension_value: String,
    /// Events counted.
    pub events: i64,
    /// Distinct learners.
    pub distinct_learners: i64,
    /// Completions.
    pub completions: i64,
    /// Passes.
    pub passes: i64,
    /// Fails.
    pub fails: i64,
    /// Mean scaled score over scored events.
    pub avg_score_scaled: Option<f64>,
    /// Fewer than k learners: every count above is withheld (zero).
    pub suppressed: bool,
    /// Late (inside the allowed lateness) updates applied to the cell.
    pub revision: i32,
}
