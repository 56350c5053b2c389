//! `collected`: the canonical envelope of a validated learning event
//! (schemas/collected.avsc). Holds plaintext personal data.

use serde::{Deserialize, Serialize};

/// A validated, normalised learning event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectedEvent {
    /// UUID: the xAPI statement id or the producer's event id.
    pub event_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Producing system (`moodle`, `app`, `lrs`, …).
    pub source: String,
    /// `xapi.statement`, `moodle.log` or `app.event`.
    pub kind: String,
    /// When it happened, ms since the epoch.
    pub occurred_at: i64,
    /// Timestamp of the ingest record, ms since the epoch.
    pub received_at: i64,
    /// Ingest request id, when it came over HTTP.
    pub request_id: Option<String>,
    /// Who did it.
    pub actor: Actor,
    /// Client IP address.
    pub ip: Option<String>,
    /// xAPI verb IRI or Moodle event name.
    pub verb: Option<String>,
    /// Activity IRI.
    pub object_id: Option<String>,
    /// xAPI object type or activity type.
    pub object_type: Option<String>,
    /// Parent or grouping activity.
    pub course_id: Option<String>,
    /// xAPI registration.
    pub registration: Option<String>,
    /// Outcome.
    pub result: Option<StatementResult>,
    /// Statement voided by this one.
    pub voided_event_id: Option<String>,
    /// The original event as canonical JSON.
    pub payload: String,
}

/// The actor of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `user_id`, `mbox`, `mbox_sha1sum`, `account` or `openid`.
    pub id_kind: String,
    /// The identifier as the source knows it.
    pub id: String,
    /// Display name.
    pub name: Option<String>,
    /// Email address.
    pub email: Option<String>,
}

impl Actor {
    /// `<id_kind>:<id>`: the subject reference events are keyed and deduplicated by.
    pub fn subject_ref(&self) -> String {
        format!("{}:{}", self.id_kind, self.id)
    }
}

/// An xAPI-style result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct StatementResult {
    /// Passed or failed.
    pub success: Option<bool>,
    /// Completed.
    pub completion: Option<bool>,
    /// Score in [-1, 1].
    pub score_scaled: Option<f64>,
    /// Raw score.
    pub score_raw: Option<f64>,
    /// Lowest possible raw score.
    pub score_min: Option<f64>,
    /// Highest possible raw score.
    pub score_max: Option<f64>,
    /// Duration in milliseconds.
    pub duration_ms: Option<i64>,
    /// Free-text answer.
    pub response: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> CollectedEvent {
        CollectedEvent {
            event_id: "6f1c1a9e-8d3b-4a57-9e8e-0c1d2b3a4f50".into(),
            tenant_id: "acme".into(),
            source: "lrs".into(),
            kind: "xapi.statement".into(),
            occurred_at: 1_700_000_000_000,
            received_at: 1_700_000_000_500,
            request_id: Some("req-1".into()),
            actor: Actor {
                id_kind: "mbox".into(),
                id: "mailto:ann@example.org".into(),
                name: Some("Ann".into()),
                email: Some("ann@example.org".into()),
            },
            ip: Some("203.0.113.9".into()),
            verb: Some("http://adlnet.gov/expapi/verbs/passed".into()),
            object_id: Some("https://lms.example/quiz/1".into()),
            object_type: None,
            course_id: Some("https://lms.example/course/7".into()),
            registration: None,
            result: Some(StatementResult {
                success: Some(true),
                score_scaled: Some(0.9),
                response: Some("my answer".into()),
                ..StatementResult::default()
            }),
            voided_event_id: None,
            payload: "{}".into(),
        }
    }
}
