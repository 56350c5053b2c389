//! Validation and normalisation: raw ingest bytes → [`CollectedEvent`], or a
//! [`Rejection`] with a reason code.
//!
//! Two formats arrive. `ingest.xapi` carries xAPI statements (one per record,
//! tenant in the `tenant` header). `ingest.events` carries Trellis JSON events
//! (Moodle-style log events and app events; tenant in the header and/or the
//! body, and they must agree). Details in rejections name fields and rules,
//! never the values, because dead letters are read by operators.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use trellis_records::{Actor, CollectedEvent, StatementResult};
use uuid::Uuid;

use crate::json::{Json, Object, Props};

/// Why an input was rejected: the `reason` of its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Larger than `max_event_bytes`.
    TooLarge,
    /// No value, or an empty one.
    EmptyValue,
    /// Not UTF-8 JSON.
    MalformedJson,
    /// JSON, but not an object.
    NotAnObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or format.
    InvalidField,
    /// No tenant in header or body.
    MissingTenant,
    /// Tenant id not of the form `[a-z0-9][a-z0-9-]{1,62}`.
    InvalidTenant,
    /// Header tenant and body tenant differ.
    TenantMismatch,
    /// Event id is not a UUID.
    InvalidEventId,
    /// Timestamp in the future beyond the allowed skew, or too old.
    TimestampOutOfRange,
    /// `kind` is not one Trellis knows.
    UnknownKind,
    /// xAPI actor without exactly one inverse functional identifier, or a malformed one.
    XapiInvalidActor,
    /// xAPI verb without an IRI id.
    XapiInvalidVerb,
    /// xAPI object missing or malformed.
    XapiInvalidObject,
    /// xAPI result outside the specification's bounds.
    XapiInvalidResult,
    /// xAPI context malformed (registration, instructor, team, contextActivities, …).
    XapiInvalidContext,
    /// A language map (or `context.language`) without RFC 5646 tags or string values.
    XapiInvalidLanguageMap,
    /// Extensions that are not an object with IRI keys.
    XapiInvalidExtensions,
    /// Attachment metadata malformed or incomplete.
    XapiInvalidAttachment,
    /// `version` is not 1.0.x.
    XapiInvalidVersion,
    /// `timestamp` or `stored` is not an ISO 8601 timestamp.
    XapiInvalidTimestamp,
    /// `authority` is not an Agent or a two-member Group.
    XapiInvalidAuthority,
    /// A property xAPI does not define at that position (mis-cased ones included).
    XapiUnknownProperty,
    /// `null` where xAPI does not allow it (anywhere outside extensions).
    XapiNullValue,
}

impl Reason {
    /// The reason code written to dead letters and metrics.
    pub fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "TOO_LARGE",
            Self::EmptyValue => "EMPTY_VALUE",
            Self::MalformedJson => "MALFORMED_JSON",
            Self::NotAnObject => "NOT_AN_OBJECT",
            Self::MissingField => "MISSING_FIELD",
            Self::InvalidField => "INVALID_FIELD",
            Self::MissingTenant => "MISSING_TENANT",
            Self::InvalidTenant => "INVALID_TENANT",
            Self::TenantMismatch => "TENANT_MISMATCH",
            Self::InvalidEventId => "INVALID_EVENT_ID",
            Self::TimestampOutOfRange => "TIMESTAMP_OUT_OF_RANGE",
            Self::UnknownKind => "UNKNOWN_KIND",
            Self::XapiInvalidActor => "XAPI_INVALID_ACTOR",
            Self::XapiInvalidVerb => "XAPI_INVALID_VERB",
            Self::XapiInvalidObject => "XAPI_INVALID_OBJECT",
            Self::XapiInvalidResult => "XAPI_INVALID_RESULT",
            Self::XapiInvalidContext => "XAPI_INVALID_CONTEXT",
            Self::XapiInvalidLanguageMap => "XAPI_INVALID_LANGUAGE_MAP",
            Self::XapiInvalidExtensions => "XAPI_INVALID_EXTENSIONS",
            Self::XapiInvalidAttachment => "XAPI_INVALID_ATTACHMENT",
            Self::XapiInvalidVersion => "XAPI_INVALID_VERSION",
            Self::XapiInvalidTimestamp => "XAPI_INVALID_TIMESTAMP",
            Self::XapiInvalidAuthority => "XAPI_INVALID_AUTHORITY",
            Self::XapiUnknownProperty => "XAPI_UNKNOWN_PROPERTY",
            Self::XapiNullValue => "XAPI_NULL_VALUE",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Reason code.
    pub reason: Reason,
    /// What was wrong, without values.
    pub detail: String,
    /// Tenant, when it was established before the failure.
    pub tenant: Option<String>,
}

pub(crate) fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
        tenant: None,
    }
}

/// Limits that bound what is accepted.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted record value.
    pub max_event_bytes: usize,
    /// How far `occurred_at` may be ahead of the ingest record's timestamp.
    pub max_clock_skew_ms: i64,
    /// How far `occurred_at` may be behind it.
    pub max_event_age_ms: i64,
}

/// The wire format of an ingest topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestFormat {
    /// xAPI statements.
    Xapi,
    /// Trellis JSON events.
    Events,
}

/// The kinds of Trellis JSON events.
pub const EVENT_KINDS: &[&str] = &["moodle.log", "app.event"];

/// The xAPI verb that voids an earlier statement.
pub const VOIDED_VERB: &str = "http://adlnet.gov/expapi/verbs/voided";

/// What the collector knows about an ingest record besides its bytes.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// The `tenant` header.
    pub tenant_header: Option<&'a str>,
    /// The `x-request-id` header.
    pub request_id: Option<&'a str>,
    /// Record timestamp: the receive time.
    pub received_at: i64,
}

/// True for ids of the form `[a-z0-9][a-z0-9-]{1,62}`.
pub fn valid_tenant(id: &str) -> bool {
    let bytes = id.as_bytes();
    (2..=63).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase() | bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Validates and normalises one ingest record.
///
/// # Errors
/// A [`Rejection`] naming the first rule broken.
pub fn validate(
    format: IngestFormat,
    value: Option<&[u8]>,
    envelope: Envelope<'_>,
    limits: &Limits,
) -> Result<CollectedEvent, Rejection> {
    let bytes = match value {
        None | Some([]) => return Err(reject(Reason::EmptyValue, "record has no value")),
        Some(b) => b,
    };
    if bytes.len() > limits.max_event_bytes {
        return Err(reject(
            Reason::TooLarge,
            format!(
                "value is {} bytes; the limit is {}",
                bytes.len(),
                limits.max_event_bytes
            ),
        ));
    }
    // JSON is UTF-8 (RFC 8259 §8.1). Checked once here, so the parser need
    // not check each string again; the text is the payload, kept verbatim:
    // what the producer sent, identical on every reprocessing.
    let text = std::str::from_utf8(bytes).map_err(|e| {
        reject(
            Reason::MalformedJson,
            format!("not valid JSON: not UTF-8 at byte {}", e.valid_up_to()),
        )
    })?;
    let json = crate::json::parse(text).map_err(|e| {
        reject(
            Reason::MalformedJson,
            format!("not valid JSON: {}", e.classify_detail()),
        )
    })?;
    let Json::Object(object) = json else {
        return Err(reject(
            Reason::NotAnObject,
            "the event must be a JSON object",
        ));
    };
    let tenant = tenant(&object, envelope.tenant_header, format)?;
    let payload = text.to_owned();
    let result = match format {
        IngestFormat::Xapi => crate::xapi::statement(&object, payload, &tenant, envelope),
        IngestFormat::Events => event(&object, payload, &tenant, envelope),
    };
    let event = result.map_err(|mut r| {
        r.tenant = Some(tenant.clone());
        r
    })?;
    // The sanity limits are for Trellis JSON events only: xAPI requires an
    // LRS to accept old and future timestamps (the collector counts them as
    // clock skew instead).
    if format == IngestFormat::Events {
        check_time(event.occurred_at, envelope.received_at, limits).map_err(|mut r| {
            r.tenant = Some(tenant.clone());
            r
        })?;
    }
    Ok(event)
}

trait ClassifyDetail {
    fn classify_detail(&self) -> String;
}

impl ClassifyDetail for serde_json::Error {
    /// serde_json's messages can quote input; keep only category and position.
    fn classify_detail(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

fn tenant(
    object: &Object<'_>,
    header: Option<&str>,
    format: IngestFormat,
) -> Result<String, Rejection> {
    let body = match (format, object.prop("tenant_id")) {
        (IngestFormat::Events, Some(Json::Str(t))) => Some(t.as_ref()),
        (IngestFormat::Events, Some(_)) => {
            return Err(reject(
                Reason::InvalidTenant,
                "field `tenant_id` must be a string",
            ));
        }
        _ => None,
    };
    let tenant = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(reject(
                Reason::TenantMismatch,
                "the `tenant` header and field `tenant_id` name different tenants",
            ));
        }
        (Some(t), _) | (None, Some(t)) => t,
        (None, None) => {
            return Err(reject(
                Reason::MissingTenant,
                "no tenant: set the `tenant` header (or `tenant_id` in JSON events)",
            ));
        }
    };
    if !valid_tenant(tenant) {
        return Err(reject(
            Reason::InvalidTenant,
            "tenant id must be 2-63 characters of a-z, 0-9 and '-', starting with a letter or digit",
        ));
    }
    Ok(tenant.to_string())
}

fn check_time(occurred_at: i64, received_at: i64, limits: &Limits) -> Result<(), Rejection> {
    if occurred_at > received_at + limits.max_clock_skew_ms {
        return Err(reject(
            Reason::TimestampOutOfRange,
            format!(
                "occurred_at is more than {} s after the event was received",
                limits.max_clock_skew_ms / 1000
            ),
        ));
    }
    if occurred_at < received_at - limits.max_event_age_ms {
        return Err(reject(
            Reason::TimestampOutOfRange,
            format!(
                "occurred_at is more than {} days before the event was received",
                limits.max_event_age_ms / 86_400_000
            ),
        ));
    }
    Ok(())
}

/// Reads a field as an optional string.
pub(crate) fn opt_str(
    object: &Object<'_>,
    field: &str,
    path: &str,
) -> Result<Option<String>, Rejection> {
    match object.prop(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Str(s)) => Ok(Some(s.to_string())),
        Some(_) => Err(reject(
            Reason::InvalidField,
            format!("field `{path}` must be a string"),
        )),
    }
}

/// Reads a required string field.
pub(crate) fn req_str(object: &Object<'_>, field: &str, path: &str) -> Result<String, Rejection> {
    opt_str(object, field, path)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| reject(Reason::MissingField, format!("field `{path}` is required")))
}

/// Parses an RFC 3339 / ISO 8601 timestamp into ms since the epoch.
pub(crate) fn parse_time(text: &str, path: &str) -> Result<i64, Rejection> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        reject(
            Reason::InvalidField,
            format!("field `{path}` must be an RFC 3339 timestamp"),
        )
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|_| {
        reject(
            Reason::TimestampOutOfRange,
            format!("field `{path}` is out of range"),
        )
    })
}

/// Parses an xAPI timestamp (ISO 8601) into ms since the epoch. RFC 3339
/// is the common case; an ISO 8601 time without a zone is taken as UTC (the
/// spec says SHOULD include one) and a zone written `+hhmm` or `+hh` is read
/// as `+hh:mm`. A negative zero offset (`-00:00`, `-0000`, `-00`) is refused:
/// ISO 8601 reserves it for "local time unknown", which xAPI forbids.
pub(crate) fn parse_xapi_time(text: &str) -> Option<i64> {
    let to_ms = |t: OffsetDateTime| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok();
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return if text.ends_with("-00:00") {
            None
        } else {
            to_ms(t)
        };
    }
    let (_, time) = text.split_once('T')?;
    let zone_at = time.find(['Z', 'z', '+', '-']);
    let normalised = match zone_at.map(|i| &time[i..]) {
        None => format!("{text}Z"),
        Some(zone)
            if zone.starts_with('-')
                && zone
                    .trim_start_matches('-')
                    .bytes()
                    .all(|b| b == b'0' || b == b':') =>
        {
            return None;
        }
        Some(zone) if zone.len() == 5 && zone.as_bytes()[1..].iter().all(u8::is_ascii_digit) => {
            format!("{}{}:{}", &text[..text.len() - 5], &zone[..3], &zone[3..])
        }
        Some(zone) if zone.len() == 3 && zone.as_bytes()[1..].iter().all(u8::is_ascii_digit) => {
            format!("{text}:00")
        }
        Some(_) => return None,
    };
    OffsetDateTime::parse(&normalised, &Rfc3339)
        .ok()
        .and_then(to_ms)
}

/// Parses a UUID, returning its canonical hyphenated lower-case form.
pub(crate) fn parse_uuid(text: &str, path: &str, reason: Reason) -> Result<String, Rejection> {
    Uuid::parse_str(text)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| reject(reason, format!("field `{path}` must be a UUID")))
}

/// True when `text` looks like an absolute IRI (`scheme:rest`, no
/// whitespace). Byte-wise: it runs for every IRI of every statement.
pub(crate) fn is_iri(text: &str) -> bool {
    let bytes = text.as_bytes();
    let Some(colon) = bytes.iter().position(|b| *b == b':') else {
        return false;
    };
    let (scheme, rest) = (&bytes[..colon], &bytes[colon + 1..]);
    !rest.is_empty()
        && scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && if text.is_ascii() {
            !bytes.iter().any(u8::is_ascii_whitespace)
        } else {
            !text.chars().any(char::is_whitespace)
        }
}

/// A Trellis JSON event (Moodle-style log or app event).
fn event(
    object: &Object<'_>,
    payload: String,
    tenant: &str,
    envelope: Envelope<'_>,
) -> Result<CollectedEvent, Rejection> {
    let event_id = parse_uuid(
        &req_str(object, "event_id", "event_id")?,
        "event_id",
        Reason::InvalidEventId,
    )?;
    let kind = req_str(object, "kind", "kind")?;
    if !EVENT_KINDS.contains(&kind.as_str()) {
        return Err(reject(
            Reason::UnknownKind,
            format!("field `kind` must be one of: {}", EVENT_KINDS.join(", ")),
        ));
    }
    let source = req_str(object, "source", "source")?;
    let occurred_at = match object.prop("occurred_at") {
        Some(Json::Str(s)) => parse_time(s, "occurred_at")?,
        Some(Json::Number(n)) => n.as_i64().ok_or_else(|| {
            reject(
                Reason::InvalidField,
                "field `occurred_at` must be ms since the epoch or RFC 3339",
            )
        })?,
        None | Some(Json::Null) => {
            return Err(reject(
                Reason::MissingField,
                "field `occurred_at` is required",
            ));
        }
        Some(_) => {
            return Err(reject(
                Reason::InvalidField,
                "field `occurred_at` must be ms since the epoch or RFC 3339",
            ));
        }
    };
    let actor = match object.prop("actor") {
        Some(Json::Object(a)) => a,
        None | Some(Json::Null) => {
            return Err(reject(Reason::MissingField, "field `actor` is required"));
        }
        Some(_) => {
            return Err(reject(
                Reason::InvalidField,
                "field `actor` must be an object",
            ));
        }
    };
    let user_id = match actor.prop("user_id") {
        // serde_json's rendering of a number, as before the tree was borrowed.
        Some(Json::Number(n)) => Some(serde_json::Number::from(*n).to_string()),
        _ => opt_str(actor, "user_id", "actor.user_id")?,
    };
    let email = opt_str(actor, "email", "actor.email")?;
    if let Some(email) = &email
        && !valid_email(email)
    {
        return Err(reject(
            Reason::InvalidField,
            "field `actor.email` is not an email address",
        ));
    }
    let (id_kind, id) = match (&user_id, &email) {
        (Some(u), _) if !u.is_empty() => ("user_id", u.clone()),
        (_, Some(e)) => ("mbox", format!("mailto:{e}")),
        _ => {
            return Err(reject(
                Reason::MissingField,
                "field `actor.user_id` or `actor.email` is required",
            ));
        }
    };
    let result = match object.prop("result") {
        None | Some(Json::Null) => None,
        Some(Json::Object(r)) => Some(crate::xapi::result(r)?),
        Some(_) => {
            return Err(reject(
                Reason::InvalidField,
                "field `result` must be an object",
            ));
        }
    };
    let ip = opt_str(object, "ip", "ip")?;
    if let Some(ip) = &ip
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        return Err(reject(
            Reason::InvalidField,
            "field `ip` is not an IP address",
        ));
    }
    Ok(CollectedEvent {
        event_id,
        tenant_id: tenant.to_string(),
        source,
        kind,
        occurred_at,
        received_at: envelope.received_at,
        request_id: envelope.request_id.map(str::to_string),
        actor: Actor {
            id_kind: id_kind.to_string(),
            id,
            name: opt_str(actor, "name", "actor.name")?,
            email,
        },
        ip,
        verb: opt_str(object, "verb", "verb")?,
        object_id: opt_str(object, "object_id", "object_id")?,
        object_type: opt_str(object, "object_type", "object_type")?,
        course_id: opt_str(object, "course_id", "course_id")?,
        registration: None,
        result,
        voided_event_id: None,
        payload,
    })
}

/// A plausible address: one `@`, non-empty local part, a dotted domain.
pub(crate) fn valid_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !text.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

/// Result fields shared by xAPI and JSON events.
pub(crate) fn scores(result: &StatementResult) -> Result<(), Rejection> {
    if let Some(scaled) = result.score_scaled
        && !(-1.0..=1.0).contains(&scaled)
    {
        return Err(reject(
            Reason::XapiInvalidResult,
            "`result.score.scaled` must be between -1 and 1",
        ));
    }
    if let (Some(min), Some(max)) = (result.score_min, result.score_max)
        && min >= max
    {
        return Err(reject(
            Reason::XapiInvalidResult,
            "`result.score.min` must be below `result.score.max`",
        ));
    }
    if let Some(raw) = result.score_raw
        && (result.score_min.is_some_and(|min| raw < min)
            || result.score_max.is_some_and(|max| raw > max))
    {
        return Err(reject(
            Reason::XapiInvalidResult,
            "`result.score.raw` must lie between min and max",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_800_000_000;

    fn limits() -> Limits {
        Limits {
            max_event_bytes: 4096,
            max_clock_skew_ms: 300_000,
            max_event_age_ms: 365 * 86_400_000,
        }
    }

    fn env(tenant: Option<&str>) -> Envelope<'_> {
        Envelope {
            tenant_header: tenant,
            request_id: None,
            received_at: NOW,
        }
    }

    fn moodle(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"event_id":"8c0b3c2e-5f5e-4a57-9e8e-0c1d2b3a4f50","kind":"moodle.log","source":"moodle","occurred_at":{},"actor":{{"user_id":42,"email":"ann@example.org","name":"Ann"}},"verb":"\\mod_quiz\\event\\attempt_submitted","ip":"203.0.113.9"{extra}}}"#,
            NOW - 1000
        )
        .into_bytes()
    }

    #[test]
    fn accepts_and_normalises_a_moodle_event() {
        let e = validate(
            IngestFormat::Events,
            Some(&moodle("")),
            env(Some("acme")),
            &limits(),
        )
        .unwrap();
        assert_eq!(e.tenant_id, "acme");
        assert_eq!(e.actor.subject_ref(), "user_id:42");
        assert_eq!(e.actor.email.as_deref(), Some("ann@example.org"));
        assert_eq!(e.occurred_at, NOW - 1000);
        assert_eq!(e.received_at, NOW);
    }

    #[test]
    fn each_rule_has_its_reason_and_never_quotes_values() {
        let cases: &[(&[u8], Option<&str>, Reason)] = &[
            (b"", Some("acme"), Reason::EmptyValue),
            (b"{not json", Some("acme"), Reason::MalformedJson),
            (b"{\"a\":\"\xff\"}", Some("acme"), Reason::MalformedJson),
            (b"[1,2]", Some("acme"), Reason::NotAnObject),
            (&moodle(""), None, Reason::MissingTenant),
            (&moodle(""), Some("Acme Corp"), Reason::InvalidTenant),
            (
                &moodle(r#","tenant_id":"other""#),
                Some("acme"),
                Reason::TenantMismatch,
            ),
            (
                &moodle(r#","ip":"not-an-ip""#),
                Some("acme"),
                Reason::InvalidField,
            ),
            (
                &moodle(r#","result":{"score":{"scaled":7}}"#),
                Some("acme"),
                Reason::XapiInvalidResult,
            ),
            (
                &moodle(r#","kind":"mystery""#),
                Some("acme"),
                Reason::UnknownKind,
            ),
            (&[b'x'; 5000], Some("acme"), Reason::TooLarge),
        ];
        for (bytes, tenant, reason) in cases {
            let err =
                validate(IngestFormat::Events, Some(bytes), env(*tenant), &limits()).unwrap_err();
            assert_eq!(err.reason, *reason, "{err:?}");
            for secret in ["ann@example.org", "203.0.113.9", "not-an-ip", "Ann"] {
                assert!(!err.detail.contains(secret), "{err:?} quotes a value");
            }
        }
    }

    #[test]
    fn rejects_future_and_ancient_timestamps() {
        for ts in [NOW + 301_000, NOW - 366 * 86_400_000] {
            let body = String::from_utf8(moodle(""))
                .unwrap()
                .replace(&format!("{}", NOW - 1000), &ts.to_string());
            let err = validate(
                IngestFormat::Events,
                Some(body.as_bytes()),
                env(Some("acme")),
                &limits(),
            )
            .unwrap_err();
            assert_eq!(err.reason, Reason::TimestampOutOfRange);
            assert_eq!(err.tenant.as_deref(), Some("acme"));
        }
    }

    #[test]
    fn tenant_ids_are_dns_label_like() {
        assert!(valid_tenant("acme"));
        assert!(valid_tenant("uni-42"));
        for bad in [
            "",
            "a",
            "-acme",
            "ACME",
            "acme_corp",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!valid_tenant(bad), "{bad}");
        }
    }
}
