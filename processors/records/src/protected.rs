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
