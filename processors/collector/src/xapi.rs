//! xAPI statement rules (xAPI 1.0.3 / IEEE 9274.1.1), as far as Trellis
//! relies on them: an actor with exactly one inverse functional identifier,
//! a verb with an IRI id, an object that is an activity (IRI id) or a
//! statement reference (UUID), and a result within the specification's bounds.

use serde_json::{Map, Value};
use trellis_records::{Actor, CollectedEvent, StatementResult};
use uuid::Uuid;

use crate::validate::{
    Envelope, Reason, Rejection, VOIDED_VERB, is_iri, opt_str, parse_time, parse_uuid, reject,
    scores, valid_email,
};

/// Namespace for ids of statements sent without one: the id is then derived
/// from tenant and the statement's bytes, so a statement re-sent as it was
/// gets the same id (and is dropped as a duplicate).
const STATEMENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c1e_7a11_7e11_4b5e_9a3e_7d1f_0c2b_8e64);

fn object_field<'a>(
    object: &'a Map<String, Value>,
    field: &str,
    reason: Reason,
) -> Result<&'a Map<String, Value>, Rejection> {
    match object.get(field) {
        Some(Value::Object(o)) => Ok(o),
        None | Some(Value::Null) => Err(reject(reason, format!("`{field}` is required"))),
        Some(_) => Err(reject(reason, format!("`{field}` must be an object"))),
    }
}

/// Validates a statement and maps it onto the envelope.
pub(crate) fn statement(
    object: &Map<String, Value>,
    payload: String,
    tenant: &str,
    envelope: Envelope<'_>,
) -> Result<CollectedEvent, Rejection> {
    let event_id = match opt_str(object, "id", "id")? {
        Some(id) => parse_uuid(&id, "id", Reason::InvalidEventId)?,
        None => Uuid::new_v5(
            &STATEMENT_ID_NAMESPACE,
            format!("{tenant}\n{payload}").as_bytes(),
        )
        .hyphenated()
        .to_string(),
    };
    let agent = actor(object_field(object, "actor", Reason::XapiInvalidActor)?)?;

    let verb = object_field(object, "verb", Reason::XapiInvalidVerb)?;
    let verb_id = match verb.get("id") {
        Some(Value::String(id)) if is_iri(id) => id.clone(),
        _ => return Err(reject(Reason::XapiInvalidVerb, "`verb.id` must be an IRI")),
    };

    let target = object_field(object, "object", Reason::XapiInvalidObject)?;
    let object_type =
        opt_str(target, "objectType", "object.objectType").map_err(|r| Rejection {
            reason: Reason::XapiInvalidObject,
            ..r
        })?;
    let (object_id, voided_event_id) = match object_type.as_deref().unwrap_or("Activity") {
        "Activity" => match target.get("id") {
            Some(Value::String(id)) if is_iri(id) => (Some(id.clone()), None),
            _ => {
                return Err(reject(
                    Reason::XapiInvalidObject,
                    "`object.id` of an activity must be an IRI",
                ));
            }
        },
        "StatementRef" => {
            let id = match target.get("id") {
                Some(Value::String(id)) => parse_uuid(id, "object.id", Reason::XapiInvalidObject)?,
                _ => {
                    return Err(reject(
                        Reason::XapiInvalidObject,
                        "`object.id` of a StatementRef must be a UUID",
                    ));
                }
            };
            let voids = (verb_id == VOIDED_VERB).then(|| id.clone());
            (Some(id), voids)
        }
        "Agent" | "Group" => {
            actor(target).map_err(|r| Rejection {
                reason: Reason::XapiInvalidObject,
                ..r
            })?;
            (None, None)
        }
        "SubStatement" => (None, None),
        _ => {
            return Err(reject(
                Reason::XapiInvalidObject,
                "`object.objectType` must be Activity, Agent, Group, StatementRef or SubStatement",
            ));
        }
    };
    if verb_id == VOIDED_VERB && voided_event_id.is_none() {
        return Err(reject(
            Reason::XapiInvalidObject,
            "a `voided` statement's object must be a StatementRef",
        ));
    }
    let activity_type = target
        .get("definition")
        .and_then(|d| d.get("type"))
        .and_then(Value::as_str)
        .map(str::to_string);

    let result = match object.get("result") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => Some(result(r)?),
        Some(_) => {
            return Err(reject(
                Reason::XapiInvalidResult,
                "`result` must be an object",
            ));
        }
    };

    let context = match object.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => Some(c),
        Some(_) => return Err(reject(Reason::InvalidField, "`context` must be an object")),
    };
    let registration = match context.and_then(|c| c.get("registration")) {
        Some(Value::String(r)) => {
            Some(parse_uuid(r, "context.registration", Reason::InvalidField)?)
        }
        None | Some(Value::Null) => None,
        Some(_) => {
            return Err(reject(
                Reason::InvalidField,
                "`context.registration` must be a UUID",
            ));
        }
    };
    let course_id = context
        .and_then(|c| c.get("contextActivities"))
        .and_then(|a| a.get("parent").or_else(|| a.get("grouping")))
        .and_then(|p| match p {
            Value::Array(items) => items.first(),
            single => Some(single),
        })
        .and_then(|a| a.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);

    // A statement without a timestamp happened when it was received (xAPI
    // sets `timestamp` to `stored` in that case).
    let occurred_at = match object.get("timestamp") {
        Some(Value::String(t)) => parse_time(t, "timestamp")?,
        None | Some(Value::Null) => envelope.received_at,
        Some(_) => {
            return Err(reject(
                Reason::InvalidField,
                "`timestamp` must be an ISO 8601 timestamp",
            ));
        }
    };
    let source = context
        .and_then(|c| c.get("platform"))
        .and_then(Value::as_str)
        .map_or_else(|| "xapi".to_string(), |p| p.to_ascii_lowercase());

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
        object_type: activity_type.or(object_type),
        course_id,
        registration,
        result,
        voided_event_id,
        payload,
    })
}

/// An Agent or identified Group: exactly one inverse functional identifier.
fn actor(actor: &Map<String, Value>) -> Result<Actor, Rejection> {
    let present: Vec<&str> = ["mbox", "mbox_sha1sum", "openid", "account"]
        .into_iter()
        .filter(|k| actor.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    let [ifi] = present[..] else {
        return Err(reject(
            Reason::XapiInvalidActor,
            format!(
                "actor must have exactly one of mbox, mbox_sha1sum, openid, account; found {}",
                present.len()
            ),
        ));
    };
    let name = opt_str(actor, "name", "actor.name").map_err(|r| Rejection {
        reason: Reason::XapiInvalidActor,
        ..r
    })?;
    let invalid = |what: &str| {
        reject(
            Reason::XapiInvalidActor,
            format!("`actor.{what}` is malformed"),
        )
    };
    let (id, email) = match ifi {
        "mbox" => {
            let mbox = actor
                .get("mbox")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("mbox"))?;
            let email = mbox
                .strip_prefix("mailto:")
                .filter(|e| valid_email(e))
                .ok_or_else(|| invalid("mbox"))?;
            (mbox.to_string(), Some(email.to_string()))
        }
        "mbox_sha1sum" => {
            let sum = actor
                .get("mbox_sha1sum")
                .and_then(Value::as_str)
                .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| invalid("mbox_sha1sum"))?;
            (sum.to_ascii_lowercase(), None)
        }
        "openid" => {
            let uri = actor
                .get("openid")
                .and_then(Value::as_str)
                .filter(|u| is_iri(u))
                .ok_or_else(|| invalid("openid"))?;
            (uri.to_string(), None)
        }
        _ => {
            let account = actor
                .get("account")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid("account"))?;
            let home = account
                .get("homePage")
                .and_then(Value::as_str)
                .filter(|h| is_iri(h))
                .ok_or_else(|| invalid("account.homePage"))?;
            let name = account
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid("account.name"))?;
            (format!("{home}|{name}"), None)
        }
    };
    Ok(Actor {
        id_kind: ifi.to_string(),
        id,
        name,
        email,
    })
}

fn opt_f64(object: &Map<String, Value>, field: &str) -> Result<Option<f64>, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(reject(
            Reason::XapiInvalidResult,
            format!("`result.score.{field}` must be a number"),
        )),
    }
}

fn opt_bool(object: &Map<String, Value>, field: &str) -> Result<Option<bool>, Rejection> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(reject(
            Reason::XapiInvalidResult,
            format!("`result.{field}` must be true or false"),
        )),
    }
}

/// An xAPI result object.
pub(crate) fn result(result: &Map<String, Value>) -> Result<StatementResult, Rejection> {
    let score = match result.get("score") {
        None | Some(Value::Null) => None,
        Some(Value::Object(s)) => Some(s),
        Some(_) => {
            return Err(reject(
                Reason::XapiInvalidResult,
                "`result.score` must be an object",
            ));
        }
    };
    let field = |name| score.map_or(Ok(None), |s| opt_f64(s, name));
    let duration_ms = match result.get("duration") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => {
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
                PASSED.replace("2025-11-22T08:26:30Z", "2027-01-01T00:00:00Z"),
                Reason::TimestampOutOfRange,
            ),
            (
                PASSED.replace("2025-11-22T08:26:30Z", "yesterday"),
                Reason::InvalidField,
            ),
        ];
        for (body, reason) in cases {
            let err = check(&body).unwrap_err();
            assert_eq!(err.reason, reason, "{err:?}");
            assert!(!err.detail.contains("ann@example.org"), "{err:?}");
        }
    }
}
