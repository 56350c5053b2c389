//! The ADL LRS conformance suite's single-statement cases (xAPI 1.0.3),
//! generated into `fixtures/adl_xapi_1_0_3_statements.json` by
//! `ops/xapi-conformance/extract.js` (provenance and quirks in the file and
//! in ops/xapi-conformance/README.md): the collector must agree with every
//! expected accept/reject.

use serde_json::Value;
use trellis_collector::validate::{Envelope, IngestFormat, Limits, validate};

const FIXTURE: &str = include_str!("fixtures/adl_xapi_1_0_3_statements.json");

#[test]
fn the_collector_agrees_with_every_adl_statement_case() {
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() > 1_000, "the whole corpus: {}", cases.len());
    let limits = Limits {
        max_event_bytes: 1 << 20,
        max_clock_skew_ms: 300_000,
        max_event_age_ms: 365 * 86_400_000,
    };
    let mut disagreements = Vec::new();
    for case in cases {
        let body = serde_json::to_vec(&case["statement"]).unwrap();
        let verdict = validate(
            IngestFormat::Xapi,
            Some(&body),
            Envelope {
                tenant_header: Some("acme"),
                request_id: None,
                received_at: 1_729_522_245_000,
            },
            &limits,
        );
        let expect_accept = case["expect"] == "accept";
        if verdict.is_ok() != expect_accept {
            disagreements.push(format!(
                "{} [{}] expected {}, got {}",
                case["id"].as_str().unwrap_or_default(),
                case["name"].as_str().unwrap_or_default(),
                case["expect"],
                match &verdict {
                    Ok(_) => "accept".to_string(),
                    Err(r) => format!("{} {}", r.reason.code(), r.detail),
                }
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}
