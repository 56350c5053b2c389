//! `audit.events`: security-relevant actions (schemas/audit_event.avsc).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The topic security events go to.
pub const AUDIT_EVENTS_TOPIC: &str = "audit.events";

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
