//! The progress projector's outputs: `progress` (compacted upserts,
//! schemas/progress.avsc) and `completions` (schemas/completion.avsc).

use serde::{Deserialize, Serialize};

/// Progress of one learner in one activity (or declared course).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnerProgress {
    /// Owning tenant.
    pub tenant_id: String,
    /// The learner's per-tenant pseudonym.
    pub learner: String,
    /// Activity (or course) IRI.
    pub activity_id: String,
    /// Parent course, when known.
    pub course_id: Option<String>,
    /// Attempts started (statements with verb `attempted`).
    pub attempts: i32,
    /// Best scaled score.
    pub best_score_scaled: Option<f64>,
    /// Latest scaled score.
    pub last_score_scaled: Option<f64>,
    /// Latest success outcome.
    pub success: Option<bool>,
    /// `not_attempted`, `incomplete` or `completed`.
    pub completion: String,
    /// Earliest statement time, ms since the epoch.
    pub first_activity_at: i64,
    /// Latest statement time, ms since the epoch.
    pub last_activity_at: i64,
    /// Statements that are evidence for each status change, oldest first.
    pub evidence: Vec<Evidence>,
}

impl LearnerProgress {
    /// A row of one attempt, `incomplete`, with no score or evidence, at
    /// `at` (tests, tools).
    pub fn attempted(tenant: &str, learner: &str, activity: &str, at: i64) -> Self {
        Self {
            tenant_id: tenant.into(),
            learner: learner.into(),
            activity_id: activity.into(),
            course_id: None,
            attempts: 1,
            best_score_scaled: None,
            last_score_scaled: None,
            success: None,
            completion: "incomplete".into(),
            first_activity_at: at,
            last_activity_at: at,
            evidence: Vec::new(),
        }
    }
}

/// One status change and the statement that proves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// `attempted`, `passed`, `failed` or `completed`.
    pub status: String,
    /// The statement's event id.
    pub event_id: String,
    /// When it happened, ms since the epoch.
    pub at: i64,
}

/// A completion or pass derived server-side, or the revocation of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// Stable id derived from tenant, learner, activity, kind and evidence.
    pub completion_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// The learner's per-tenant pseudonym.
    pub learner: String,
    /// Activity (or course) IRI.
    pub activity_id: String,
    /// Parent course, when known.
    pub course_id: Option<String>,
    /// `completed`, `passed` or `revoked`.
    pub kind: String,
    /// Scaled score of the evidence, when it had one.
    pub score_scaled: Option<f64>,
    /// When the evidence happened, ms since the epoch.
    pub at: i64,
    /// The statements that prove it (for `revoked`: the completion's
    /// evidence followed by the voiding statements).
    pub evidence_event_ids: Vec<String>,
}
