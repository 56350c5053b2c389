//! Every topic name Trellis code refers to, defined once. topology.yaml
//! declares each (partitions, retention, classification, schema); a test
//! of the runtime checks that every name in [`ALL`] is declared there.

/// Raw events from upstream producers (JSON; plaintext personal data).
pub const INGEST_EVENTS_TOPIC: &str = "ingest.events";
/// Raw xAPI statements from upstream producers (plaintext personal data).
pub const INGEST_XAPI_TOPIC: &str = "ingest.xapi";
/// Validated, deduplicated canonical envelopes (plaintext personal data).
pub const COLLECTED_TOPIC: &str = "collected";
/// Events with their personal data hashed or sealed.
pub const PROTECTED_TOPIC: &str = "protected";
/// The compacted progress topic.
pub const PROGRESS_TOPIC: &str = "progress";
/// The derived completions stream.
pub const COMPLETIONS_TOPIC: &str = "completions";
/// The shared aggregates topic (every tenant, tenant-tagged).
pub const AGGREGATES_TOPIC: &str = "analytics.aggregates";
/// Rejected inputs, with a reason.
pub const DLQ_TOPIC: &str = "dlq";
/// Security-relevant actions.
pub const AUDIT_EVENTS_TOPIC: &str = "audit.events";
/// Signed Merkle roots over the audited topics.
pub const ANCHORS_TOPIC: &str = "audit.anchors";
/// Where source systems file data-subject requests.
pub const SUBJECT_REQUESTS_TOPIC: &str = "gdpr.subject_request.received.v1";
/// Where the saga answers them.
pub const SUBJECT_ACKS_TOPIC: &str = "gdpr.subject_request.acknowledged.v1";
/// Where the saga's commands to the privacy processor go.
pub const SHRED_REQUESTS_TOPIC: &str = "gdpr.shred_requests";
/// Where the saga's commands to pseudonym-keyed participants go.
pub const ERASE_COMMANDS_TOPIC: &str = "gdpr.erase_commands";
/// Where participants answer.
pub const PARTICIPANT_ACKS_TOPIC: &str = "gdpr.participant_acks";
/// The saga's clock, as records.
pub const GDPR_TICKS_TOPIC: &str = "gdpr.ticks";
/// Never written: each processor's consumer group assigns its one
/// partition to the instance that owns the processor's state (the lease).
pub const LEASES_TOPIC: &str = "trellis.leases";

/// Every fixed topic name above.
pub const ALL: &[&str] = &[
    INGEST_EVENTS_TOPIC,
    INGEST_XAPI_TOPIC,
    COLLECTED_TOPIC,
    PROTECTED_TOPIC,
    PROGRESS_TOPIC,
    COMPLETIONS_TOPIC,
    AGGREGATES_TOPIC,
    DLQ_TOPIC,
    AUDIT_EVENTS_TOPIC,
    ANCHORS_TOPIC,
    SUBJECT_REQUESTS_TOPIC,
    SUBJECT_ACKS_TOPIC,
    SHRED_REQUESTS_TOPIC,
    ERASE_COMMANDS_TOPIC,
    PARTICIPANT_ACKS_TOPIC,
    GDPR_TICKS_TOPIC,
    LEASES_TOPIC,
];

/// The per-tenant aggregates topic a warehouse of one tenant is given.
pub fn tenant_aggregates_topic(tenant: &str) -> String {
    format!("analytics.{tenant}.aggregates")
}
