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

pub mod collected;
pub mod dead_letter;

pub use collected::{Actor, CollectedEvent, StatementResult};
pub use dead_letter::{DLQ_TOPIC, DeadLetter, OriginalHeader};

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
        "subject_key.avsc",
        include_str!("../../../schemas/subject_key.avsc"),
    ),
    (
        "subject_request.avsc",
        include_str!("../../../schemas/subject_request.avsc"),
    ),
    (
        "subject_request_ack.avsc",
        include_str!("../../../schemas/subject_request_ack.avsc"),
    ),
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
            },
        );
    }
}
