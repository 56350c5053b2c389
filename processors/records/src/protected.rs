//! `protected`: a learning event with every personal-data field
//! pseudonymised, hashed or encrypted (schemas/protected.avsc).

use serde::{Deserialize, Serialize};

/// A protected learning event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectedEvent {
    /// UUID of the original event.
    pub event_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Producing system.
    pub source: String,
    /// `xapi.statement`, `moodle.log` or `app.event`.
    pub kind: String,
    /// When it happened, ms since the epoch.
    pub occurred_at: i64,
    /// When it was received, ms since the epoch.
    pub received_at: i64,
    /// Ingest request id.
    pub request_id: Option<String>,
    /// Per-tenant pseudonym of the actor.
    pub learner: String,
    /// Id of the subject's data key.
    pub subject_key_id: String,
    /// Actor's display name, sealed.
    pub actor_name: Option<Sealed>,
    /// Actor's email, sealed.
    pub actor_email: Option<Sealed>,
    /// Salted hash of the client IP (absent for `no_ip` tenants).
    pub ip_hash: Option<IpHash>,
    /// xAPI verb IRI or Moodle event name.
    pub verb: Option<String>,
    /// Activity IRI.
    pub object_id: Option<String>,
    /// Object or activity type.
    pub object_type: Option<String>,
    /// Parent or grouping activity.
    pub course_id: Option<String>,
    /// xAPI registration.
    pub registration: Option<String>,
    /// Outcome, free text sealed.
    pub result: Option<ProtectedResult>,
    /// Statement voided by this one.
    pub voided_event_id: Option<String>,
    /// The original event, sealed.
    pub payload: Sealed,
}

impl ProtectedEvent {
    /// A `protected` xAPI statement of `learner` in `tenant` with the ADL
    /// verb `verb` (e.g. `passed`), at `at`, with no object, course or
    /// result and nothing sealed in it (an empty payload under key `k`):
    /// the learning facts the projectors read, for tests and benches.
    pub fn statement(tenant: &str, learner: &str, event_id: &str, at: i64, verb: &str) -> Self {
        Self {
            event_id: event_id.into(),
            tenant_id: tenant.into(),
            source: "lrs".into(),
            kind: "xapi.statement".into(),
            occurred_at: at,
            received_at: at,
            request_id: None,
            learner: learner.into(),
            subject_key_id: "k".into(),
            actor_name: None,
            actor_email: None,
            ip_hash: None,
            verb: Some(format!("http://adlnet.gov/expapi/verbs/{verb}")),
            object_id: None,
            object_type: None,
            course_id: None,
            registration: None,
            result: None,
            voided_event_id: None,
            payload: Sealed {
                key_id: "k".into(),
                nonce: vec![0; 12],
                ciphertext: vec![0; 16],
            },
        }
    }

    /// Its [`ProtectedFacts`], borrowed.
    pub fn facts(&self) -> ProtectedFacts<'_> {
        ProtectedFacts {
            event_id: &self.event_id,
            tenant_id: &self.tenant_id,
            occurred_at: self.occurred_at,
            learner: &self.learner,
            verb: self.verb.as_deref(),
            object_id: self.object_id.as_deref(),
            course_id: self.course_id.as_deref(),
            result: self.result.as_ref().map(|r| Outcome {
                success: r.success,
                completion: r.completion,
                score_scaled: r.score_scaled,
            }),
            voided_event_id: self.voided_event_id.as_deref(),
        }
    }
}

/// AES-256-GCM ciphertext of one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// The data key it is sealed under.
    pub key_id: String,
    /// 96-bit nonce.
    #[serde(with = "apache_avro::serde::bytes")]
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    #[serde(with = "apache_avro::serde::bytes")]
    pub ciphertext: Vec<u8>,
}

/// A salted IP hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpHash {
    /// Which salt: changes when the salt rotates.
    pub salt_id: String,
    /// Hex SHA-256(ip ‖ tenant salt).
    pub hash: String,
}

/// An outcome with the free-text response sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtectedResult {
    /// Passed.
    pub success: Option<bool>,
    /// Completed.
    pub completion: Option<bool>,
    /// Scaled score in [-1, 1].
    pub score_scaled: Option<f64>,
    /// Raw score.
    pub score_raw: Option<f64>,
    /// Lowest possible raw score.
    pub score_min: Option<f64>,
    /// Highest possible raw score.
    pub score_max: Option<f64>,
    /// Duration in ms.
    pub duration_ms: Option<i64>,
    /// Free-text answer, sealed.
    pub response: Option<Sealed>,
}

impl ProtectedResult {
    /// A scored outcome (`success`, scaled `score`), nothing else.
    pub fn scored(success: bool, score: f64) -> Self {
        Self {
            success: Some(success),
            completion: None,
            score_scaled: Some(score),
            score_raw: None,
            score_min: None,
            score_max: None,
            duration_ms: None,
            response: None,
        }
    }
}

/// The learning facts of a `protected` event, borrowed from the record's
/// bytes: what the projectors read. The sealed fields (payload, name,
/// email, response) and the IP hash are skipped, not copied, which is most
/// of a record's size.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct ProtectedFacts<'a> {
    /// UUID of the original event.
    pub event_id: &'a str,
    /// Owning tenant.
    pub tenant_id: &'a str,
    /// When it happened, ms since the epoch.
    pub occurred_at: i64,
    /// Per-tenant pseudonym of the actor.
    pub learner: &'a str,
    /// xAPI verb IRI or Moodle event name.
    #[serde(borrow)]
    pub verb: Option<&'a str>,
    /// Activity IRI.
    #[serde(borrow)]
    pub object_id: Option<&'a str>,
    /// Parent or grouping activity.
    #[serde(borrow)]
    pub course_id: Option<&'a str>,
    /// The outcome's unsealed part.
    pub result: Option<Outcome>,
    /// Statement voided by this one.
    #[serde(borrow)]
    pub voided_event_id: Option<&'a str>,
}

/// The unsealed part of a [`ProtectedResult`] that progress and analytics
/// count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct Outcome {
    /// Passed.
    pub success: Option<bool>,
    /// Completed.
    pub completion: Option<bool>,
    /// Scaled score in [-1, 1].
    pub score_scaled: Option<f64>,
}
