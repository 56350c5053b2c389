//! The value types of Trellis topics, one module per schema in `schemas/`.
//!
//! Field names and order follow the `.avsc` files exactly: records are
//! encoded with apache-avro's schema-aware serde, which matches by name.
//! The tests below encode a sample of every type with its schema file and
//! decode it back, so a drift between a type and its schema fails CI.
//!
//! # Layout
//! - [`dead_letter`] is the `dlq` topic.
//! - [`collected`] is the `collected` topic, the canonical envelope.
//! - [`protected`] is the `protected` topic.
//! - [`gdpr`] holds the saga's commands and acknowledgements.
//! - [`audit`] is the `audit.events` topic.
//! - [`progress`] is `progress` and `completions`.
//! - [`aggregate`] is the analytics aggregates.
//! - [`topics`] names every topic, once.

pub mod aggregate;
pub mod audit;
pub mod collected;
pub mod dead_letter;
pub mod gdpr;
pub mod progress;
pub mod protected;
pub mod topics;

pub use aggregate::Aggregate;
pub use audit::{Anchor, AuditEvent, Tick};
pub use collected::{Actor, CollectedEvent, StatementResult};
pub use dead_letter::{DeadLetter, OriginalHeader};
pub use gdpr::{
    EraseCommand, ParticipantAck, ParticipantResult, ResidualCopy, ShredRequest, SubjectId,
    SubjectRequest, SubjectRequestAck,
};
pub use progress::{Completion, Evidence, LearnerProgress};
pub use protected::{IpHash, Outcome, ProtectedEvent, ProtectedFacts, ProtectedResult, Sealed};
pub use topics::{
    AGGREGATES_TOPIC, ANCHORS_TOPIC, AUDIT_EVENTS_TOPIC, COLLECTED_TOPIC, COMPLETIONS_TOPIC,
    DLQ_TOPIC, ERASE_COMMANDS_TOPIC, GDPR_TICKS_TOPIC, INGEST_EVENTS_TOPIC, INGEST_XAPI_TOPIC,
    LEASES_TOPIC, PARTICIPANT_ACKS_TOPIC, PROGRESS_TOPIC, PROTECTED_TOPIC, SHRED_REQUESTS_TOPIC,
    SUBJECT_ACKS_TOPIC, SUBJECT_REQUESTS_TOPIC, tenant_aggregates_topic,
};

/// Text of every schema file, by file name, compiled in so tools and tests
/// need no path to the repository.
pub const SCHEMAS: &[(&str, &str)] = &[
    (
        "aggregate.avsc",
        include_str!("../../../schemas/aggregate.avsc"),
    ),
    ("anchor.avsc", include_str!("../../../schemas/anchor.avsc")),
    (
        "audit_event.avsc",
        include_str!("../../../schemas/audit_event.avsc"),
    ),
    (
        "collected.avsc",
        include_str!("../../../schemas/collected.avsc"),
    ),
    (
        "completion.avsc",
        include_str!("../../../schemas/completion.avsc"),
    ),
    (
        "dead_letter.avsc",
        include_str!("../../../schemas/dead_letter.avsc"),
    ),
    (
        "erase_command.avsc",
        include_str!("../../../schemas/erase_command.avsc"),
    ),
    (
        "participant_ack.avsc",
        include_str!("../../../schemas/participant_ack.avsc"),
    ),
    (
        "progress.avsc",
        include_str!("../../../schemas/progress.avsc"),
    ),
    (
        "protected.avsc",
        include_str!("../../../schemas/protected.avsc"),
    ),
    (
        "shred_request.avsc",
        include_str!("../../../schemas/shred_request.avsc"),
    ),
    (
        "subject_request.avsc",
        include_str!("../../../schemas/subject_request.avsc"),
    ),
    (
        "subject_request_ack.avsc",
        include_str!("../../../schemas/subject_request_ack.avsc"),
    ),
    ("tick.avsc", include_str!("../../../schemas/tick.avsc")),
];

/// The text of schema file `name`.
pub fn schema_text(name: &str) -> Option<&'static str> {
    SCHEMAS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::Schema;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::writer::datum::GenericDatumWriter;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
        file: &str,
        value: &T,
    ) {
        let schema = Schema::parse_str(schema_text(file).unwrap()).unwrap();
        let bytes = GenericDatumWriter::builder(&schema)
            .human_readable(false)
            .build()
            .unwrap()
            .write_ser_to_vec(value)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let decoded = GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut &bytes[..])
            .unwrap();
        let back: T = apache_avro::from_value(&decoded).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(&back, value, "{file}");

        // The runtime encodes and decodes with serde_avro_fast, built from the
        // same schema's JSON form: it must write the very bytes apache-avro
        // writes, and read them back to the same value.
        let fast: serde_avro_fast::Schema = serde_json::to_string(&schema)
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let written = serde_avro_fast::to_datum_vec(
            value,
            &mut serde_avro_fast::ser::SerializerConfig::new(&fast),
        )
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(written, bytes, "{file}: serde_avro_fast writes other bytes");
        let read: T = serde_avro_fast::from_datum_slice(&bytes, &fast)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(&read, value, "{file}: serde_avro_fast reads another value");
    }

    #[test]
    fn every_schema_file_is_listed_and_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".avsc"))
            .collect();
        on_disk.sort();
        let listed: Vec<&str> = SCHEMAS.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, listed);
        for (name, text) in SCHEMAS {
            Schema::parse_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn collected_event_matches_its_schema() {
        round_trip("collected.avsc", &collected::tests::sample());
    }

    #[test]
    fn dead_letter_matches_its_schema() {
        round_trip(
            "dead_letter.avsc",
            &DeadLetter {
                id: "ingest.xapi/0/7".into(),
                reason: "MALFORMED_JSON".into(),
                detail: "expected value at line 1 column 1".into(),
                processor: "collector".into(),
                tenant_id: None,
                source_topic: "ingest.xapi".into(),
                source_partition: 0,
                source_offset: 7,
                source_timestamp: Some(1_700_000_000_000),
                original_key: None,
                original_value: Some(b"{oops".to_vec()),
                original_headers: vec![OriginalHeader {
                    key: "tenant".into(),
                    value: b"acme".to_vec(),
                }],
                truncated: true,
                original_value_length: Some(2_000_000),
                original_value_sha256: Some("ab".repeat(32)),
            },
        );
    }

    fn sealed(tag: u8) -> Sealed {
        Sealed {
            key_id: "k1".into(),
            nonce: vec![tag; 12],
            ciphertext: vec![tag; 40],
        }
    }

    fn protected_sample() -> ProtectedEvent {
        ProtectedEvent {
            event_id: "e".into(),
            tenant_id: "acme".into(),
            source: "lrs".into(),
            kind: "xapi.statement".into(),
            occurred_at: 1,
            received_at: 2,
            request_id: Some("r".into()),
            learner: "p".into(),
            subject_key_id: "k1".into(),
            actor_name: Some(sealed(1)),
            actor_email: None,
            ip_hash: Some(IpHash {
                salt_id: "s1".into(),
                hash: "ab".into(),
            }),
            verb: Some("http://adlnet.gov/expapi/verbs/passed".into()),
            object_id: Some("https://x/a".into()),
            object_type: None,
            course_id: None,
            registration: None,
            result: Some(ProtectedResult {
                success: Some(true),
                completion: None,
                score_scaled: Some(0.5),
                score_raw: None,
                score_min: None,
                score_max: None,
                duration_ms: Some(3),
                response: Some(sealed(2)),
            }),
            voided_event_id: Some("v".into()),
            payload: sealed(3),
        }
    }

    #[test]
    fn protected_event_matches_its_schema() {
        round_trip("protected.avsc", &protected_sample());
    }

    #[test]
    fn protected_facts_borrow_from_a_protected_record() {
        let schema: serde_avro_fast::Schema =
            schema_text("protected.avsc").unwrap().parse().unwrap();
        let event = protected_sample();
        let bytes = serde_avro_fast::to_datum_vec(
            &event,
            &mut serde_avro_fast::ser::SerializerConfig::new(&schema),
        )
        .unwrap();
        let facts: ProtectedFacts<'_> = serde_avro_fast::from_datum_slice(&bytes, &schema).unwrap();
        let result = event.result.as_ref().unwrap();
        assert_eq!(
            facts,
            ProtectedFacts {
                event_id: &event.event_id,
                tenant_id: &event.tenant_id,
                occurred_at: event.occurred_at,
                learner: &event.learner,
                verb: event.verb.as_deref(),
                object_id: event.object_id.as_deref(),
                course_id: None,
                result: Some(Outcome {
                    success: result.success,
                    completion: result.completion,
                    score_scaled: result.score_scaled,
                }),
                voided_event_id: Some("v"),
            }
        );
        assert_eq!(facts, event.facts());
        // Borrowed, not copied: the strings point into the record's bytes.
        assert!(bytes.as_ptr_range().contains(&facts.learner.as_ptr()));
    }

    #[test]
    fn gdpr_and_audit_records_match_their_schemas() {
        round_trip(
            "shred_request.avsc",
            &ShredRequest {
                command_id: "c".into(),
                request_id: "r".into(),
                tenant_id: "acme".into(),
                kind: "erasure".into(),
                subject_id_kind: "user_id".into(),
                subject_id: "42".into(),
                attempt: 1,
                issued_at: 5,
            },
        );
        round_trip(
            "participant_ack.avsc",
            &ParticipantAck {
                command_id: "c".into(),
                request_id: "r".into(),
                tenant_id: "acme".into(),
                participant: "privacy".into(),
                outcome: "done".into(),
                detail: "".into(),
                learner: Some("p".into()),
                shredded_key_ids: vec!["k1".into()],
                records_affected: 1,
                export: None,
                acked_at: 6,
            },
        );
        round_trip(
            "erase_command.avsc",
            &EraseCommand {
                command_id: "c".into(),
                request_id: "r".into(),
                tenant_id: "acme".into(),
                participant: "progress".into(),
                kind: "erasure".into(),
                learner: Some("p_1".into()),
                attempt: 2,
                issued_at: 5,
            },
        );
        round_trip(
            "audit_event.avsc",
            &AuditEvent {
                event_id: "a".into(),
                tenant_id: Some("acme".into()),
                actor: "privacy".into(),
                action: "key.shredded".into(),
                subject: Some("p".into()),
                field: None,
                reason: None,
                occurred_at: 7,
                details: [("key_id".to_string(), "k1".to_string())].into(),
            },
        );
    }

    #[test]
    fn progress_records_match_their_schemas() {
        round_trip(
            "progress.avsc",
            &LearnerProgress {
                tenant_id: "acme".into(),
                learner: "p_1".into(),
                activity_id: "https://x/a".into(),
                course_id: Some("https://x/c".into()),
                attempts: 2,
                best_score_scaled: Some(0.9),
                last_score_scaled: Some(0.4),
                success: Some(false),
                completion: "completed".into(),
                first_activity_at: 1,
                last_activity_at: 9,
                evidence: vec![Evidence {
                    status: "passed".into(),
                    event_id: "e1".into(),
                    at: 5,
                }],
            },
        );
        round_trip(
            "completion.avsc",
            &Completion {
                completion_id: "c1".into(),
                tenant_id: "acme".into(),
                learner: "p_1".into(),
                activity_id: "https://x/a".into(),
                course_id: None,
                kind: "passed".into(),
                score_scaled: Some(0.9),
                at: 5,
                evidence_event_ids: vec!["e1".into()],
            },
        );
        round_trip(
            "aggregate.avsc",
            &Aggregate {
                tenant_id: "acme".into(),
                window_start: 3_600_000,
                window: "hour".into(),
                dimension: "verb".into(),
                dimension_value: "passed".into(),
                events: 12,
                distinct_learners: 6,
                completions: 0,
                passes: 5,
                fails: 7,
                avg_score_scaled: Some(0.61),
                suppressed: false,
                revision: 1,
            },
        );
    }

    #[test]
    fn saga_and_audit_records_match_their_schemas() {
        round_trip(
            "anchor.avsc",
            &Anchor {
                sequence: 3,
                topic: PROTECTED_TOPIC.into(),
                partition: 2,
                first_offset: 10,
                last_offset: 19,
                tree_size: 20,
                root: "ab".repeat(32),
                previous_hash: "00".repeat(32),
                request_ids: vec!["r1".into()],
                anchored_at: 7,
                key_id: "k1".into(),
                signature: "cd".repeat(32),
                checkpoint: String::new(),
            },
        );
        round_trip(
            "tick.avsc",
            &Tick {
                processor: "gdpr".into(),
                at: 5,
                request_id: Some("r1".into()),
            },
        );
        round_trip(
            "subject_request.avsc",
            &SubjectRequest {
                request_id: "r1".into(),
                tenant_id: "acme".into(),
                kind: "erasure".into(),
                subject_id_kind: "user_id".into(),
                subject_id: "42".into(),
                requested_at: 1,
                other_subject_ids: vec![SubjectId {
                    kind: "account".into(),
                    id: "https://lms.example.org|42".into(),
                }],
            },
        );
        round_trip(
            "subject_request_ack.avsc",
            &SubjectRequestAck {
                request_id: "r1".into(),
                tenant_id: "acme".into(),
                kind: "erasure".into(),
                status: "completed".into(),
                reason: None,
                participants: vec![ParticipantResult {
                    participant: "privacy".into(),
                    outcome: "done".into(),
                    detail: "shredded".into(),
                    shredded_key_ids: vec!["k".into()],
                    records_affected: 1,
                }],
                audit_anchor: Some("ef".repeat(32)),
                audit_checkpoint: Some("trellis.localhost/audit\n7\nAAAA\n\n— k AAAA\n".into()),
                export: None,
                requested_at: 1,
                acknowledged_at: 2,
                residual_plaintext: vec![ResidualCopy {
                    topic: COLLECTED_TOPIC.into(),
                    until: 3,
                }],
            },
        );
    }
}
