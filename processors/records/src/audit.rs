//! `audit.events`: security-relevant actions (schemas/audit_event.avsc).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A security-relevant action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Stable id, derived from what caused it.
    pub event_id: String,
    /// Tenant concerned.
    pub tenant_id: Option<String>,
    /// Operator or processor that acted.
    pub actor: String,
    /// e.g. `kek.created`, `kek.rotated`, `key.shredded`, `field.revealed`.
    pub action: String,
    /// The subject's pseudonym, if one is concerned.
    pub subject: Option<String>,
    /// Field concerned (reveals).
    pub field: Option<String>,
    /// Operator's stated reason.
    pub reason: Option<String>,
    /// When, ms since the epoch.
    pub occurred_at: i64,
    /// Key ids and other non-secret particulars.
    pub details: BTreeMap<String, String>,
}

/// A signed Merkle root over one audited partition (schemas/anchor.avsc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Position in the anchor chain, from 0.
    pub sequence: i64,
    /// Audited topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// First offset this anchor adds to the partition's tree.
    pub first_offset: i64,
    /// Last offset covered.
    pub last_offset: i64,
    /// Leaves in the partition's tree (from its first audited record).
    pub tree_size: i64,
    /// Hex RFC 6962 root of that tree.
    pub root: String,
    /// Hex hash of the previous anchor; 64 zeros for the first.
    pub previous_hash: String,
    /// Subject requests with an `audit.events` record in this range.
    pub request_ids: Vec<String>,
    /// When, ms since the epoch (the triggering record's timestamp).
    pub anchored_at: i64,
    /// Signing key id.
    pub key_id: String,
    /// Hex Ed25519 signature (or HMAC-SHA256) over the canonical bytes.
    pub signature: String,
    /// The anchor log's signed checkpoint (C2SP tlog-checkpoint in a
    /// signed note) once this anchor is in it; empty under HMAC.
    #[serde(default)]
    pub checkpoint: String,
}

/// A processor's clock record (schemas/tick.avsc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// The processor that ticks.
    pub processor: String,
    /// Wall-clock time it was written, ms since the epoch.
    pub at: i64,
    /// Set on the saga's decision ticks: the request decided at `at`.
    #[serde(default)]
    pub request_id: Option<String>,
}
