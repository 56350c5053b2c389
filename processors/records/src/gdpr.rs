//! The GDPR saga's records: commands to participants and their answers
//! (schemas/shred_request.avsc, schemas/erase_command.avsc,
//! schemas/participant_ack.avsc).

use serde::{Deserialize, Serialize};

/// The saga's command to the privacy processor (`gdpr.shred_requests`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShredRequest {
    /// Unique per command; a re-sent command keeps its id.
    pub command_id: String,
    /// The subject request it serves.
    pub request_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// `erasure` or `access`.
    pub kind: String,
    /// `user_id`, `mbox`, `account`, … as in the collected envelope.
    pub subject_id_kind: String,
    /// The identifier as the source system knows it.
    pub subject_id: String,
    /// Retry count, from 1.
    pub attempt: i32,
    /// When the saga issued it, ms since the epoch.
    pub issued_at: i64,
}

/// A participant's answer to a saga command (`gdpr.participant_acks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantAck {
    /// The command answered.
    pub command_id: String,
    /// The subject request.
    pub request_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Who answers: `privacy`, `progress`, …
    pub participant: String,
    /// `done`, `not_found` or `failed`.
    pub outcome: String,
    /// Human detail.
    pub detail: String,
    /// The subject's pseudonym, when known.
    pub learner: Option<String>,
    /// Key ids destroyed (never key material).
    pub shredded_key_ids: Vec<String>,
    /// Records or rows affected.
    pub records_affected: i64,
    /// Access requests: where this participant's export part was written.
    pub export: Option<String>,
    /// When answered, ms since the epoch.
    pub acked_at: i64,
}

/// The saga's command to a participant that knows learners by pseudonym
/// only (`gdpr.erase_commands`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EraseCommand {
    /// Unique per command; a re-sent command keeps its id.
    pub command_id: String,
    /// The subject request it serves.
    pub request_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// The participant addressed: `progress`, `analytics`, …
    pub participant: String,
    /// `erasure` or `access`.
    pub kind: String,
    /// The subject's pseudonym (absent when the subject was never seen).
    pub learner: Option<String>,
    /// Retry count, from 1.
    pub attempt: i32,
    /// When the saga issued it, ms since the epoch.
    pub issued_at: i64,
}

/// A restricted topic that may still hold a subject's plaintext after an
/// erasure, until its retention removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidualCopy {
    /// The topic.
    pub topic: String,
    /// When its retention has removed every record received before the
    /// request, ms since the epoch.
    pub until: i64,
}

/// A data-subject request (schemas/subject_request.avsc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRequest {
    /// The source system's id for the request; re-filing keeps it.
    pub request_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// `erasure` or `access`.
    pub kind: String,
    /// `user_id`, `mbox` or `account`.
    pub subject_id_kind: String,
    /// The identifier as the source system knows it.
    pub subject_id: String,
    /// When filed, ms since the epoch.
    pub requested_at: i64,
    /// Further identifiers of the same person.
    #[serde(default)]
    pub other_subject_ids: Vec<SubjectId>,
}

/// One identifier of a data subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubjectId {
    /// `user_id`, `mbox`, `mbox_sha1sum`, `account` or `openid`.
    pub kind: String,
    /// The identifier as the source system knows it.
    pub id: String,
}

impl SubjectRequest {
    /// Every identifier the request names, the first one first.
    pub fn subject_ids(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once((self.subject_id_kind.as_str(), self.subject_id.as_str())).chain(
            self.other_subject_ids
                .iter()
                .map(|s| (s.kind.as_str(), s.id.as_str())),
        )
    }
}

/// One participant's part of an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantResult {
    /// `privacy`, `progress`, …
    pub participant: String,
    /// `done`, `not_found` or `failed`.
    pub outcome: String,
    /// Human detail.
    pub detail: String,
    /// Key ids destroyed.
    pub shredded_key_ids: Vec<String>,
    /// Records or rows affected.
    pub records_affected: i64,
}

/// The saga's answer (schemas/subject_request_ack.avsc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRequestAck {
    /// The request answered.
    pub request_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// `erasure` or `access`.
    pub kind: String,
    /// `completed`, `rejected` or `deferred`.
    pub status: String,
    /// Why, when rejected or deferred.
    pub reason: Option<String>,
    /// What each participant did.
    pub participants: Vec<ParticipantResult>,
    /// Hex hash of the audit anchor covering the request's audit events.
    pub audit_anchor: Option<String>,
    /// Access requests: where the export was written.
    pub export: Option<String>,
    /// When the request was filed.
    pub requested_at: i64,
    /// When answered.
    pub acknowledged_at: i64,
    /// Erasures: restricted topics that may still hold the subject's
    /// plaintext, and when retention removes it at the latest.
    #[serde(default)]
    pub residual_plaintext: Vec<ResidualCopy>,
    /// The signed checkpoint of the audit anchor log that includes the
    /// anchor (C2SP tlog-checkpoint note); none under HMAC anchors.
    #[serde(default)]
    pub audit_checkpoint: Option<String>,
}
