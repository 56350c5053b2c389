//! xAPI statements: checked against every rule of xAPI 1.0.3 ([`rules`]),
//! then mapped onto the envelope Trellis carries (actor, verb, object,
//! result, context, time).

pub(crate) mod rules;

use trellis_records::{Actor, CollectedEvent, StatementResult};
use uuid::Uuid;

use crate::json::{Json, NULL, Object, Props, at};
use crate::validate::{Envelope, Reason, Rejection, VOIDED_VERB, opt_str, reject, scores};

/// Namespace for ids of statements sent without one: the id is then derived
/// from tenant and the statement's bytes, so a statement re-sent as it was
/// gets the same id (and is dropped as a duplicate).
const STATEMENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_7a11_7e11_4b5e_9a3e_7d1f_0c2b_8e64);

/// The reason code of a violation in a top-level section.
fn section_reason(section: Option<&str>) -> Reason {
    match section {
        Some("id") => Reason::InvalidEventId,
        Some("actor") => Reason::XapiInvalidActor,
        Some("verb") => Reason::XapiInvalidVerb,
        Some("object") => Reason::XapiInvalidObject,
        Some("result") => Reason::XapiInvalidResult,
        Some("context") => Reason::XapiInvalidContext,
        Some("timestamp" | "stored") => Reason::XapiInvalidTimestamp,
        Some("authority") => Reason::XapiInvalidAuthority,
        Some("attachments") => Reason::XapiInvalidAttachment,
        Some("version") => Reason::XapiInvalidVersion,
        _ => Reason::XapiUnknownProperty,
    }
}

/// Checks a statement against every rule of xAPI 1.0.3, without mapping it.
///
/// # Errors
/// A [`Rejection`] naming the JSON path, with the section's reason code
/// (or a more specific one).
pub fn check(object: &Object<'_>) -> Result<(), Rejection> {
    check_kind(object).map(drop)
}

fn check_kind(object: &Object<'_>) -> Result<rules::ObjectKind, Rejection> {
    rules::statement(object).map_err(|v| {
        reject(
            v.reason(section_reason(v.section())),
            format!("`{}` {}", v.path(), v.rule),
        )
    })
}

/// Validates a statement and maps it onto the envelope.
pub(crate) fn statement(
    object: &Object<'_>,
    payload: String,
    tenant: &str,
    envelope: Envelope<'_>,
) -> Result<CollectedEvent, Rejection> {
    let kind = check_kind(object)?;
    let text = |v: &Json<'_>| v.as_str().map(str::to_string);
    let event_id = match object.prop("id").and_then(Json::as_str) {
        Some(id) => id.to_ascii_lowercase(),
        None => Uuid::new_v5(
            &STATEMENT_ID_NAMESPACE,
            format!("{tenant}\n{payload}").as_bytes(),
        )
        .hyphenated()
        .to_string(),
    };
    let prop = |key| object.prop(key).unwrap_or(&NULL);
    let agent = actor(prop("actor"));
    let verb_id = at(prop("verb"), "id")
        .as_str()
        .unwrap_or_default()
        .to_string();
    let target = prop("object");
    let (object_id, voided_event_id) = match kind {
        rules::ObjectKind::Activity => (text(at(target, "id")), None),
        rules::ObjectKind::StatementRef => {
            let id = at(target, "id").as_str().map(str::to_ascii_lowercase);
            let voids = if verb_id == VOIDED_VERB {
                id.clone()
            } else {
                None
            };
            (id, voids)
        }
        _ => (None, None),
    };
    if verb_id == VOIDED_VERB && voided_event_id.is_none() {
        return Err(reject(
            Reason::XapiInvalidObject,
            "`object` of a `voided` statement must be a StatementRef",
        ));
    }
    let object_type = match kind {
        rules::ObjectKind::Activity => text(at(at(target, "definition"), "type")),
        rules::ObjectKind::Agent => Some("Agent".into()),
        rules::ObjectKind::Group => Some("Group".into()),
        rules::ObjectKind::StatementRef => Some("StatementRef".into()),
        rules::ObjectKind::SubStatement => Some("SubStatement".into()),
    };
    let result = match prop("result").as_object() {
        Some(r) => Some(result(r)?),
        None => None,
    };
    let context = prop("context");
    let registration = at(context, "registration")
        .as_str()
        .map(str::to_ascii_lowercase);
    let activities = at(context, "contextActivities");
    let course_id = ["parent", "grouping"]
        .iter()
        .find_map(|k| match at(activities, k) {
            Json::Array(items) => items.first(),
            Json::Null => None,
            single => Some(single),
        })
        .and_then(|a| text(at(a, "id")));
    // A statement without a timestamp happened when it was received (xAPI
    // sets `timestamp` to `stored` in that case). Old and future timestamps
    // are the statement's: they are kept as they are (the spec requires an
    // LRS to accept them) and counted as clock skew by the collector.
    let occurred_at = match prop("timestamp").as_str() {
        Some(t) => crate::validate::parse_xapi_time(t).ok_or_else(|| {
            reject(
                Reason::XapiInvalidTimestamp,
                "`timestamp` is outside the range Trellis can represent",
            )
        })?,
        None => envelope.received_at,
    };
    let source = at(context, "platform")
        .as_str()
        .map_or_else(|| "xapi".to_string(), str::to_ascii_lowercase);

    Ok(CollectedEvent {
        event_id,
        tenant_id: tenant.to_string(),
        source,
        kind: "xapi.statement".to_string(),
        occurred_at,
        received_at: envelope.received_at,
        request_id: envelope.request_id.map(str::to_string),
        actor: agent,
        ip: None,
        verb: Some(verb_id),
        object_id,
        object_type,
        course_id,
        registration,
        result,
        voided_event_id,
        payload,
    })
}

/// The subject of a (valid) actor: its inverse functional identifier; for
/// an anonymous Group, its members' identifiers (sorted, so member order
/// does not make another subject).
fn actor(actor: &Json<'_>) -> Actor {
    let name = at(actor, "name").as_str().map(str::to_string);
    match identifier(actor) {
        Some((id_kind, id, email)) => Actor {
            id_kind,
            id,
            name,
            email,
        },
        None => {
            let mut members: Vec<String> = at(actor, "member")
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(identifier)
                .map(|(kind, id, _)| format!("{kind}:{id}"))
                .collect();
            members.sort();
            Actor {
                id_kind: "group".into(),
                id: members.join(" "),
                name,
                email: None,
            }
        }
    }
}

/// (kind, id, email) of an Agent's or identified Group's identifier.
fn identifier(agent: &Json<'_>) -> Option<(String, String, Option<String>)> {
    if let Some(mbox) = at(agent, "mbox").as_str() {
        let email = mbox.strip_prefix("mailto:").map(str::to_string);
        return Some(("mbox".into(), mbox.to_string(), email));
    }
    if let Some(sum) = at(agent, "mbox_sha1sum").as_str() {
        return Some(("mbox_sha1sum".into(), sum.to_ascii_lowercase(), None));
    }
    if let Some(openid) = at(agent, "openid").as_str() {
        return Some(("openid".into(), openid.to_string(), None));
    }
    let account = agent.as_object()?.prop("account")?;
    Some((
        "account".into(),
        format!(
            "{}|{}",
            at(account, "homePage").as_str().unwrap_or_default(),
            at(account, "name").as_str().unwrap_or_default()
        ),
        None,
    ))
}

fn opt_f64(object: &Object<'_>, field: &str) -> Result<Option<f64>, Rejection> {
    match object.prop(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(reject(
            Reason::XapiInvalidResult,
            format!("`result.score.{field}` must be a number"),
        )),
    }
}

fn opt_bool(object: &Object<'_>, field: &str) -> Result<Option<bool>, Rejection> {
    match object.prop(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(reject(
            Reason::XapiInvalidResult,
            format!("`result.{field}` must be true or false"),
        )),
    }
}

/// An xAPI result object.
pub(crate) fn result(result: &Object<'_>) -> Result<StatementResult, Rejection> {
    let score = match result.prop("score") {
        None | Some(Json::Null) => None,
        Some(Json::Object(s)) => Some(s),
        Some(_) => {
            return Err(reject(
                Reason::XapiInvalidResult,
                "`result.score` must be an object",
            ));
        }
    };
    let field = |name| score.map_or(Ok(None), |s| opt_f64(s, name));
    let duration_ms = match result.prop("duration") {
        None | Some(Json::Null) => None,
        Some(Json::Str(d)) => {
            let parsed = iso8601::duration(d).map_err(|_| {
                reject(
                    Reason::XapiInvalidResult,
                    "`result.duration` must be an ISO 8601 duration",
                )
            })?;
            Some(
                std::time::Duration::from(parsed)
                    .as_millis()
                    .min(i64::MAX as u128) as i64,
            )
        }
        Some(_) => {
            return Err(reject(
                Reason::XapiInvalidResult,
                "`result.duration` must be a string",
            ));
        }
    };
    let response = opt_str(result, "response", "result.response").map_err(|r| Rejection {
        reason: Reason::XapiInvalidResult,
        ..r
    })?;
    let parsed = StatementResult {
        success: opt_bool(result, "success")?,
        completion: opt_bool(result, "completion")?,
        score_scaled: field("scaled")?,
        score_raw: field("raw")?,
        score_min: field("min")?,
        score_max: field("max")?,
        duration_ms,
        response,
    };
    scores(&parsed)?;
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{IngestFormat, Limits, validate};

    const NOW: i64 = 1_763_800_000_000;

    fn check(statement: &str) -> Result<CollectedEvent, Rejection> {
        validate(
            IngestFormat::Xapi,
            Some(statement.as_bytes()),
            Envelope {
                tenant_header: Some("acme"),
                request_id: Some("r-1"),
                received_at: NOW,
            },
            &Limits {
                max_event_bytes: 65_536,
                max_clock_skew_ms: 300_000,
                max_event_age_ms: 365 * 86_400_000,
            },
        )
    }

    const PASSED: &str = r#"{
        "id": "1d5b4a5e-0e37-4d0c-9f27-6f7d3c1f8a10",
        "actor": {"objectType": "Agent", "name": "Ann Lee", "mbox": "mailto:ann@example.org"},
        "verb": {"id": "http://adlnet.gov/expapi/verbs/passed", "display": {"en-US": "passed"}},
        "object": {"id": "https://lms.example/quiz/3", "definition": {"type": "http://adlnet.gov/expapi/activities/assessment"}},
        "result": {"success": true, "completion": true, "score": {"scaled": 0.85, "raw": 85, "min": 0, "max": 100}, "duration": "PT12M30S", "response": "free text"},
        "context": {"registration": "0b9d0c7e-3f1a-4a3e-8d3e-2f4c5b6a7d8e", "contextActivities": {"parent": [{"id": "https://lms.example/course/7"}]}},
        "timestamp": "2025-11-22T08:26:30Z"
    }"#;

    #[test]
    fn maps_a_passed_statement() {
        let e = check(PASSED).unwrap();
        assert_eq!(e.event_id, "1d5b4a5e-0e37-4d0c-9f27-6f7d3c1f8a10");
        assert_eq!(e.actor.subject_ref(), "mbox:mailto:ann@example.org");
        assert_eq!(e.actor.email.as_deref(), Some("ann@example.org"));
        assert_eq!(e.course_id.as_deref(), Some("https://lms.example/course/7"));
        assert_eq!(
            e.object_type.as_deref(),
            Some("http://adlnet.gov/expapi/activities/assessment")
        );
        let r = e.result.unwrap();
        assert_eq!(
            (r.success, r.score_scaled, r.duration_ms),
            (Some(true), Some(0.85), Some(750_000))
        );
        assert_eq!(e.request_id.as_deref(), Some("r-1"));
    }

    #[test]
    fn statement_without_id_gets_a_content_derived_one() {
        let body = PASSED.replace(r#""id": "1d5b4a5e-0e37-4d0c-9f27-6f7d3c1f8a10","#, "");
        let (a, b) = (check(&body).unwrap(), check(&body).unwrap());
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, "1d5b4a5e-0e37-4d0c-9f27-6f7d3c1f8a10");
    }

    #[test]
    fn old_and_future_timestamps_are_the_statements_own() {
        for (at, ms) in [
            ("2023-11-22T08:26:30Z", 1_700_641_590_000),
            ("2027-01-01T00:00:00+01:00", 1_798_758_000_000),
        ] {
            let e = check(&PASSED.replace("2025-11-22T08:26:30Z", at)).unwrap();
            assert_eq!(e.occurred_at, ms);
        }
    }

    #[test]
    fn a_violation_names_the_innermost_path() {
        let body = PASSED.replace(
            r#""contextActivities": {"parent": [{"id": "https://lms.example/course/7"}]}"#,
            r#""contextActivities": {"parent": [{"id": "https://lms.example/course/7"}, {"id": "no iri"}]}"#,
        );
        let err = check(&body).unwrap_err();
        assert_eq!(err.reason, Reason::XapiInvalidContext);
        assert_eq!(
            err.detail,
            "`context.contextActivities.parent[1].id` must be an absolute IRI"
        );
    }

    #[test]
    fn an_anonymous_group_is_a_subject_by_its_members() {
        let body = PASSED.replace(
            r#""actor": {"objectType": "Agent", "name": "Ann Lee", "mbox": "mailto:ann@example.org"}"#,
            r#""actor": {"objectType": "Group", "member": [{"mbox": "mailto:cy@example.org"}, {"mbox": "mailto:ann@example.org"}]}"#,
        );
        let e = check(&body).unwrap();
        assert_eq!(e.actor.id_kind, "group");
        assert_eq!(
            e.actor.id,
            "mbox:mailto:ann@example.org mbox:mailto:cy@example.org"
        );
    }

    #[test]
    fn a_repeated_property_is_read_as_its_last_value() {
        // As serde_json and JSON.parse read it: what downstream readers of
        // the payload will see is what was validated and mapped.
        let verb = r#""verb": {"id": "http://adlnet.gov/expapi/verbs/passed", "display": {"en-US": "passed"}}"#;
        let repeated = |first: &str, last: &str| {
            PASSED.replace(
                verb,
                &format!(r#""verb": {{"id": "{first}"}}, "verb": {{"id": "{last}"}}"#),
            )
        };
        let e = check(&repeated(
            "not an iri",
            "http://adlnet.gov/expapi/verbs/failed",
        ))
        .unwrap();
        assert_eq!(
            e.verb.as_deref(),
            Some("http://adlnet.gov/expapi/verbs/failed")
        );
        let err = check(&repeated(
            "http://adlnet.gov/expapi/verbs/failed",
            "not an iri",
        ))
        .unwrap_err();
        assert_eq!(err.reason, Reason::XapiInvalidVerb);
        // Rules that walk every property judge only the copy that is read.
        let shadowed_null = PASSED.replace(r#""result": {"#, r#""result": null, "result": {"#);
        assert!(check(&shadowed_null).is_ok());
        let read_null = PASSED.replace(
            r#""timestamp": "2025-11-22T08:26:30Z""#,
            r#""timestamp": "2025-11-22T08:26:30Z", "timestamp": null"#,
        );
        assert_eq!(check(&read_null).unwrap_err().reason, Reason::XapiNullValue);
        let display = |first: &str, last: &str| {
            PASSED.replace(
                r#""display": {"en-US": "passed"}"#,
                &format!(r#""display": {{"en-US": {first}, "en-US": {last}}}"#),
            )
        };
        assert!(check(&display("1", r#""passed""#)).is_ok());
        assert_eq!(
            check(&display(r#""passed""#, "1")).unwrap_err().reason,
            Reason::XapiInvalidLanguageMap
        );
    }

    #[test]
    fn durations_follow_iso_8601() {
        for ok in ["PT12M30S", "P1Y2M3DT4H5M6.5S", "P4W", "PT0.01S", "P1D"] {
            assert!(rules::is_duration(ok), "{ok}");
        }
        for bad in [
            "P",
            "PT",
            "12M",
            "P1H",
            "PT1D",
            "P1M1Y",
            "P0003-06-04T12:30:05",
            "PT1.S",
        ] {
            assert!(!rules::is_duration(bad), "{bad}");
        }
    }

    #[test]
    fn voiding_statement_references_its_target() {
        let e = check(
            r#"{"actor":{"account":{"homePage":"https://lms.example","name":"42"}},
            "verb":{"id":"http://adlnet.gov/expapi/verbs/voided"},
            "object":{"objectType":"StatementRef","id":"1D5B4A5E-0E37-4D0C-9F27-6F7D3C1F8A10"}}"#,
        )
        .unwrap();
        assert_eq!(
            e.voided_event_id.as_deref(),
            Some("1d5b4a5e-0e37-4d0c-9f27-6f7d3c1f8a10")
        );
        assert_eq!(e.actor.subject_ref(), "account:https://lms.example|42");
        assert_eq!(e.occurred_at, NOW);
    }

    #[test]
    fn rule_violations_have_their_reasons() {
        let cases = [
            (
                PASSED.replace(
                    r#""mbox": "mailto:ann@example.org""#,
                    r#""mbox": "ann@example.org""#,
                ),
                Reason::XapiInvalidActor,
            ),
            (
                PASSED.replace(
                    r#""mbox": "mailto:ann@example.org""#,
                    r#""mbox": "mailto:ann@example.org", "openid": "https://id.example/ann""#,
                ),
                Reason::XapiInvalidActor,
            ),
            (
                PASSED.replace(
                    r#""name": "Ann Lee", "mbox": "mailto:ann@example.org""#,
                    r#""name": "Ann Lee""#,
                ),
                Reason::XapiInvalidActor,
            ),
            (
                PASSED.replace("http://adlnet.gov/expapi/verbs/passed", "passed"),
                Reason::XapiInvalidVerb,
            ),
            (
                PASSED.replace("https://lms.example/quiz/3", "quiz 3"),
                Reason::XapiInvalidObject,
            ),
            (
                PASSED.replace(r#""scaled": 0.85"#, r#""scaled": 1.5"#),
                Reason::XapiInvalidResult,
            ),
            (
                PASSED.replace(r#""raw": 85"#, r#""raw": 185"#),
                Reason::XapiInvalidResult,
            ),
            (
                PASSED.replace("PT12M30S", "twelve minutes"),
                Reason::XapiInvalidResult,
            ),
            (
                PASSED.replace("1d5b4a5e-0e37-4d0c-9f27-6f7d3c1f8a10", "statement-1"),
                Reason::InvalidEventId,
            ),
            (
                PASSED.replace("2025-11-22T08:26:30Z", "yesterday"),
                Reason::XapiInvalidTimestamp,
            ),
            (
                PASSED.replace(
                    r#""registration": "0b9d0c7e-3f1a-4a3e-8d3e-2f4c5b6a7d8e""#,
                    r#""registration": "0b9d0c7e-3f1a-4a3e-8d3e-2f4c5b6a7d8e", "instructor": {"objectType": "Group", "member": [{"mbox": "ann@example.org"}]}"#,
                ),
                Reason::XapiInvalidContext,
            ),
            (
                PASSED.replace(r#""display": {"en-US": "passed"}"#, r#""display": {"not a tag": "passed"}"#),
                Reason::XapiInvalidLanguageMap,
            ),
            (
                PASSED.replace(r#""objectType": "Agent""#, r#""objecttype": "Agent""#),
                Reason::XapiUnknownProperty,
            ),
            (
                PASSED.replace(r#""response": "free text""#, r#""response": null"#),
                Reason::XapiNullValue,
            ),
        ];
        for (body, reason) in cases {
            let err = check(&body).unwrap_err();
            assert_eq!(err.reason, reason, "{err:?}");
            assert!(err.detail.starts_with('`'), "names the path: {err:?}");
            assert!(!err.detail.contains("ann@example.org"), "{err:?}");
        }
    }
}
