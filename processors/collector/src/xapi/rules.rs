//! xAPI 1.0.3 statement rules (the Data section of the specification, IEEE
//! 9274.1.1): every property, at every position where an Agent, Group,
//! Activity, StatementRef or SubStatement may appear.
//!
//! Table-driven where the specification is a table (the properties each
//! object may carry), code where it is a rule (one inverse functional
//! identifier, components per interaction type, `min < max`). No crate
//! checks xAPI 1.0.3 this way: `xapi-data` targets xAPI 2.0 by deserializing
//! into types, which names neither the rule nor the JSON path that failed.
//!
//! A violation names the JSON path (`context.instructor.member[1].mbox`) and
//! the rule, never the value: dead letters are read by operators. The path
//! is built only on the way out of a failure, so a valid statement costs one
//! walk of its tree and no allocation.

use crate::json::{Json, Object, Props, Visible, at};

use crate::validate::{Reason, is_iri, valid_email};

/// One step of a JSON path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Key(&'static str),
    Index(usize),
}

/// A broken rule: where, which, and (once known) under which reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    /// Innermost step first (pushed while the error travels outwards).
    steps: Vec<Step>,
    /// What the rule says, without the value.
    pub(crate) rule: String,
    /// A reason more specific than the section's (language maps,
    /// extensions, unknown properties, nulls).
    reason: Option<Reason>,
}

impl Violation {
    fn new(rule: impl Into<String>) -> Self {
        Self {
            steps: Vec::new(),
            rule: rule.into(),
            reason: None,
        }
    }

    fn specific(reason: Reason, rule: impl Into<String>) -> Self {
        Self {
            reason: Some(reason),
            ..Self::new(rule)
        }
    }

    fn at(mut self, key: &'static str) -> Self {
        self.steps.push(Step::Key(key));
        self
    }

    fn index(mut self, i: usize) -> Self {
        self.steps.push(Step::Index(i));
        self
    }

    /// The reason code: the specific one, or the section's.
    pub(crate) fn reason(&self, section: Reason) -> Reason {
        self.reason.unwrap_or(section)
    }

    /// The JSON path, outermost first (`$` for the statement itself).
    pub(crate) fn path(&self) -> String {
        if self.steps.is_empty() {
            return "$".into();
        }
        let mut path = String::new();
        for step in self.steps.iter().rev() {
            match step {
                Step::Key(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Step::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        path
    }

    /// The outermost property, which names the section (`actor`, `context`, …).
    pub(crate) fn section(&self) -> Option<&'static str> {
        match self.steps.last() {
            Some(Step::Key(k)) => Some(k),
            _ => None,
        }
    }
}

type Checked = Result<(), Violation>;

/// Runs `check` on the value at `key`, putting `key` on the path of a failure.
fn field(
    object: &Object<'_>,
    key: &'static str,
    check: impl FnOnce(&Json<'_>) -> Checked,
) -> Checked {
    match object.prop(key) {
        Some(value) => check(value).map_err(|v| v.at(key)),
        None => Ok(()),
    }
}

fn required(
    object: &Object<'_>,
    key: &'static str,
    check: impl FnOnce(&Json<'_>) -> Checked,
) -> Checked {
    match object.prop(key) {
        Some(value) => check(value).map_err(|v| v.at(key)),
        None => Err(Violation::new("is required").at(key)),
    }
}

/// The properties an object may have; anything else (including a property
/// in the wrong case) is refused, and so is `null` (only extensions may hold
/// it). A `None` entry lets anything through: extensions' values.
fn known_properties(object: &Object<'_>, allowed: &[&'static str]) -> Checked {
    let mut read = Visible::new(object);
    for (i, (key, value)) in object.iter().enumerate() {
        let Some(known) = allowed.iter().find(|k| **k == key) else {
            // A property name is not a value: naming it helps the producer
            // (often a mis-cased `objecttype` or a 0.95 leftover).
            return Err(Violation::specific(
                Reason::XapiUnknownProperty,
                format!(
                    "has a property `{}` the specification does not define here (allowed: {})",
                    key.escape_debug(),
                    allowed.join(", ")
                ),
            ));
        };
        // A repeated name is its last value: an earlier `null` is not read.
        if value.is_null() && read.is_read(i, key) {
            return Err(Violation::specific(Reason::XapiNullValue, "must not be null").at(known));
        }
    }
    Ok(())
}

fn as_object<'v, 'a>(value: &'v Json<'a>, what: &str) -> Result<&'v Object<'a>, Violation> {
    value
        .as_object()
        .ok_or_else(|| Violation::new(format!("must be {what} (a JSON object)")))
}

fn as_array<'v, 'a>(value: &'v Json<'a>, what: &str) -> Result<&'v [Json<'a>], Violation> {
    value
        .as_array()
        .ok_or_else(|| Violation::new(format!("must be an array of {what}")))
}

fn string<'v>(value: &'v Json<'_>) -> Result<&'v str, Violation> {
    value
        .as_str()
        .ok_or_else(|| Violation::new("must be a string"))
}

fn iri(value: &Json<'_>) -> Checked {
    if is_iri(string(value)?) {
        Ok(())
    } else {
        Err(Violation::new("must be an absolute IRI"))
    }
}

fn boolean(value: &Json<'_>) -> Checked {
    if value.is_bool() {
        Ok(())
    } else {
        Err(Violation::new("must be true or false"))
    }
}

fn number(value: &Json<'_>) -> Result<f64, Violation> {
    value
        .as_f64()
        .ok_or_else(|| Violation::new("must be a number"))
}

/// A UUID in its canonical text form (8-4-4-4-12 hex digits).
pub(crate) fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn uuid(value: &Json<'_>) -> Checked {
    if is_uuid(string(value)?) {
        Ok(())
    } else {
        Err(Violation::new("must be a UUID (8-4-4-4-12 hex digits)"))
    }
}

/// An ISO 8601 timestamp, as the spec requires; a negative zero offset
/// (`-00:00`) is refused, as 1.0.3 says.
fn timestamp(value: &Json<'_>) -> Checked {
    let text = string(value)?;
    if crate::validate::parse_xapi_time(text).is_none() {
        return Err(Violation::specific(
            Reason::XapiInvalidTimestamp,
            "must be an ISO 8601 timestamp with a time zone",
        ));
    }
    Ok(())
}

/// An ISO 8601 duration in the `PnYnMnDTnHnMnS` / `PnW` format (the
/// alternative `PYYYY-MM-DDThh:mm:ss` format is not allowed).
pub(crate) fn is_duration(text: &str) -> bool {
    let Some(rest) = text.strip_prefix('P') else {
        return false;
    };
    if let Some(weeks) = rest.strip_suffix('W') {
        return is_decimal(weeks);
    }
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let date_ok = designators(date, b"YMD");
    let time_ok = time.is_none_or(|t| designators(t, b"HMS").is_some_and(|n| n > 0));
    date_ok.is_some_and(|d| d > 0 || time.is_some()) && time_ok
}

/// Counts `number designator` pairs in `text`, designators in `order`, each
/// at most once; `None` if malformed.
fn designators(text: &str, order: &[u8]) -> Option<usize> {
    let mut count = 0;
    let mut next = 0;
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        if b.is_ascii_digit() || b == b'.' || b == b',' {
            continue;
        }
        let position = order[next..].iter().position(|d| *d == b)?;
        if !is_decimal(&text[start..i]) {
            return None;
        }
        next += position + 1;
        start = i + 1;
        count += 1;
    }
    (start == text.len()).then_some(count)
}

fn is_decimal(text: &str) -> bool {
    let (whole, fraction) = match text.split_once(['.', ',']) {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// A language map: RFC 5646 tags → strings.
fn language_map(value: &Json<'_>) -> Checked {
    let map = value.as_object().ok_or_else(|| {
        Violation::specific(
            Reason::XapiInvalidLanguageMap,
            "must be a language map (an object of language tag → string)",
        )
    })?;
    let mut read = Visible::new(map);
    for (i, (tag, text)) in map.iter().enumerate() {
        if oxilangtag::LanguageTag::parse(tag).is_err() {
            return Err(Violation::specific(
                Reason::XapiInvalidLanguageMap,
                "has a key that is not an RFC 5646 language tag",
            ));
        }
        if !text.is_string() && read.is_read(i, tag) {
            return Err(Violation::specific(
                Reason::XapiInvalidLanguageMap,
                "has a value that is not a string",
            ));
        }
    }
    Ok(())
}

/// Extensions: IRI keys, any JSON values (`null` included).
fn extensions(value: &Json<'_>) -> Checked {
    let map = value
        .as_object()
        .ok_or_else(|| Violation::specific(Reason::XapiInvalidExtensions, "must be an object"))?;
    if map.keys().all(is_iri) {
        Ok(())
    } else {
        Err(Violation::specific(
            Reason::XapiInvalidExtensions,
            "has a key that is not an absolute IRI",
        ))
    }
}

const IFIS: [&str; 4] = ["mbox", "mbox_sha1sum", "openid", "account"];

/// How many inverse functional identifiers `object` carries, each checked.
fn identifiers(object: &Object<'_>) -> Result<usize, Violation> {
    field(object, "mbox", |v| {
        let text = string(v)?;
        match text.strip_prefix("mailto:") {
            Some(email) if valid_email(email) => Ok(()),
            _ => Err(Violation::new("must be a mailto: IRI of an email address")),
        }
    })?;
    field(object, "mbox_sha1sum", |v| {
        let text = string(v)?;
        if text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(Violation::new("must be 40 hex digits (SHA-1)"))
        }
    })?;
    field(object, "openid", iri)?;
    field(object, "account", |v| {
        let account = as_object(v, "an account")?;
        known_properties(account, &["homePage", "name"])?;
        required(account, "homePage", iri)?;
        required(account, "name", |v| string(v).map(drop))
    })?;
    Ok(IFIS.iter().filter(|k| object.has(k)).count())
}

const AGENT: &[&str] = &[
    "objectType",
    "name",
    "mbox",
    "mbox_sha1sum",
    "openid",
    "account",
];
const GROUP: &[&str] = &[
    "objectType",
    "name",
    "member",
    "mbox",
    "mbox_sha1sum",
    "openid",
    "account",
];

/// An Agent: exactly one inverse functional identifier.
fn agent(object: &Object<'_>) -> Checked {
    known_properties(object, AGENT)?;
    field(object, "name", |v| string(v).map(drop))?;
    match identifiers(object)? {
        1 => Ok(()),
        n => Err(Violation::new(format!(
            "an Agent must have exactly one of mbox, mbox_sha1sum, openid, account; it has {n}"
        ))),
    }
}

/// A Group: identified (one identifier, members optional) or anonymous (no
/// identifier, members required). Members are Agents.
fn group(object: &Object<'_>) -> Checked {
    known_properties(object, GROUP)?;
    field(object, "name", |v| string(v).map(drop))?;
    let ifis = identifiers(object)?;
    match (ifis, object.prop("member")) {
        (0, None) => {
            return Err(Violation::new(
                "an anonymous Group (no identifier) must list its members",
            ));
        }
        (0 | 1, _) => {}
        (n, _) => {
            return Err(Violation::new(format!(
                "a Group must have at most one of mbox, mbox_sha1sum, openid, account; it has {n}"
            )));
        }
    }
    field(object, "member", |v| {
        let members = as_array(v, "Agents")?;
        if ifis == 0 && members.is_empty() {
            return Err(Violation::new("an anonymous Group must have members"));
        }
        for (i, member) in members.iter().enumerate() {
            let check = || {
                let member = as_object(member, "an Agent")?;
                match member.prop("objectType") {
                    None => {}
                    Some(Json::Str(t)) if t == "Agent" => {}
                    Some(_) => {
                        return Err(
                            Violation::new("a Group's members must be Agents").at("objectType")
                        );
                    }
                }
                agent(member)
            };
            check().map_err(|v| v.index(i))?;
        }
        Ok(())
    })
}

/// An Agent or a Group, as `objectType` says (absent: Agent).
fn actor(value: &Json<'_>) -> Checked {
    let object = as_object(value, "an Agent or Group")?;
    match object.prop("objectType") {
        None => agent(object),
        Some(Json::Str(t)) if t == "Agent" => agent(object),
        Some(Json::Str(t)) if t == "Group" => group(object),
        Some(_) => Err(Violation::new("must be \"Agent\" or \"Group\"").at("objectType")),
    }
}

fn group_only(value: &Json<'_>) -> Checked {
    let object = as_object(value, "a Group")?;
    match object.prop("objectType") {
        Some(Json::Str(t)) if t == "Group" => group(object),
        _ => Err(Violation::new("must be a Group (objectType \"Group\")").at("objectType")),
    }
}

fn verb(value: &Json<'_>) -> Checked {
    let object = as_object(value, "a Verb")?;
    known_properties(object, &["id", "display"])?;
    required(object, "id", iri)?;
    field(object, "display", language_map)
}

const INTERACTION_TYPES: &[&str] = &[
    "true-false",
    "choice",
    "fill-in",
    "long-fill-in",
    "matching",
    "performance",
    "sequencing",
    "likert",
    "numeric",
    "other",
];

/// Which component lists each interaction type may carry.
fn component_lists(interaction: &str) -> &'static [&'static str] {
    match interaction {
        "choice" | "sequencing" => &["choices"],
        "likert" => &["scale"],
        "matching" => &["source", "target"],
        "performance" => &["steps"],
        _ => &[],
    }
}

const COMPONENT_LISTS: [&str; 5] = ["choices", "scale", "source", "target", "steps"];

fn components(value: &Json<'_>) -> Checked {
    let list = as_array(value, "interaction components")?;
    for (i, component) in list.iter().enumerate() {
        let check = || {
            let component = as_object(component, "an interaction component")?;
            known_properties(component, &["id", "description"])?;
            required(component, "id", |v| string(v).map(drop))?;
            field(component, "description", language_map)?;
            let id = component.prop("id").and_then(Json::as_str);
            let seen = list[..i].iter().any(|c| at(c, "id").as_str() == id);
            if seen {
                return Err(Violation::new("repeats an id earlier in the list").at("id"));
            }
            Ok(())
        };
        check().map_err(|v| v.index(i))?;
    }
    Ok(())
}

fn definition(value: &Json<'_>) -> Checked {
    let object = as_object(value, "an Activity Definition")?;
    known_properties(
        object,
        &[
            "name",
            "description",
            "type",
            "moreInfo",
            "extensions",
            "interactionType",
            "correctResponsesPattern",
            "choices",
            "scale",
            "source",
            "target",
            "steps",
        ],
    )?;
    field(object, "name", language_map)?;
    field(object, "description", language_map)?;
    field(object, "type", iri)?;
    field(object, "moreInfo", iri)?;
    field(object, "extensions", extensions)?;
    let interaction = match object.prop("interactionType") {
        None => None,
        Some(v) => {
            let t = string(v).map_err(|e| e.at("interactionType"))?;
            if !INTERACTION_TYPES.contains(&t) {
                return Err(Violation::new(format!(
                    "must be one of {}",
                    INTERACTION_TYPES.join(", ")
                ))
                .at("interactionType"));
            }
            Some(t)
        }
    };
    field(object, "correctResponsesPattern", |v| {
        if interaction.is_none() {
            return Err(Violation::new("needs an interactionType"));
        }
        let patterns = as_array(v, "strings")?;
        match patterns.iter().position(|p| !p.is_string()) {
            Some(i) => Err(Violation::new("must be a string").index(i)),
            None => Ok(()),
        }
    })?;
    let allowed = interaction.map_or(&[][..], component_lists);
    for list in COMPONENT_LISTS {
        field(object, list, |v| {
            if !allowed.contains(&list) {
                return Err(Violation::new(match interaction {
                    Some(t) => format!("is not a component list of a `{t}` interaction"),
                    None => "needs an interactionType".to_string(),
                }));
            }
            components(v)
        })?;
    }
    Ok(())
}

fn activity(object: &Object<'_>) -> Checked {
    known_properties(object, &["objectType", "id", "definition"])?;
    required(object, "id", iri)?;
    field(object, "definition", definition)
}

fn activity_value(value: &Json<'_>) -> Checked {
    let object = as_object(value, "an Activity")?;
    match object.prop("objectType") {
        None => {}
        Some(Json::Str(t)) if t == "Activity" => {}
        Some(_) => return Err(Violation::new("must be \"Activity\"").at("objectType")),
    }
    activity(object)
}

fn statement_ref(object: &Object<'_>) -> Checked {
    known_properties(object, &["objectType", "id"])?;
    required(object, "id", uuid)
}

fn statement_ref_value(value: &Json<'_>) -> Checked {
    let object = as_object(value, "a StatementRef")?;
    match object.prop("objectType") {
        Some(Json::Str(t)) if t == "StatementRef" => statement_ref(object),
        _ => Err(Violation::new("must be \"StatementRef\"").at("objectType")),
    }
}

/// What a statement's (or sub-statement's) object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    Activity,
    Agent,
    Group,
    StatementRef,
    SubStatement,
}

fn statement_object(value: &Json<'_>, nested: bool) -> Result<ObjectKind, Violation> {
    let object = as_object(
        value,
        "an Activity, Agent, Group, StatementRef or SubStatement",
    )?;
    let kind = match object.prop("objectType") {
        None => ObjectKind::Activity,
        Some(Json::Str(t)) => match t.as_ref() {
            "Activity" => ObjectKind::Activity,
            "Agent" => ObjectKind::Agent,
            "Group" => ObjectKind::Group,
            "StatementRef" => ObjectKind::StatementRef,
            "SubStatement" if !nested => ObjectKind::SubStatement,
            "SubStatement" => {
                return Err(
                    Violation::new("a SubStatement's object must not be a SubStatement")
                        .at("objectType"),
                );
            }
            _ => {
                return Err(Violation::new(
                    "must be Activity, Agent, Group, StatementRef or SubStatement",
                )
                .at("objectType"));
            }
        },
        Some(_) => return Err(Violation::new("must be a string").at("objectType")),
    };
    match kind {
        ObjectKind::Activity => activity(object)?,
        ObjectKind::Agent => agent(object)?,
        ObjectKind::Group => group(object)?,
        ObjectKind::StatementRef => statement_ref(object)?,
        ObjectKind::SubStatement => sub_statement(object)?,
    }
    Ok(kind)
}

fn result(value: &Json<'_>) -> Checked {
    let object = as_object(value, "a Result")?;
    known_properties(
        object,
        &[
            "score",
            "success",
            "completion",
            "response",
            "duration",
            "extensions",
        ],
    )?;
    field(object, "score", score)?;
    field(object, "success", boolean)?;
    field(object, "completion", boolean)?;
    field(object, "response", |v| string(v).map(drop))?;
    field(object, "duration", |v| {
        if is_duration(string(v)?) {
            Ok(())
        } else {
            Err(Violation::new(
                "must be an ISO 8601 duration (PnYnMnDTnHnMnS)",
            ))
        }
    })?;
    field(object, "extensions", extensions)
}

fn score(value: &Json<'_>) -> Checked {
    let object = as_object(value, "a Score")?;
    known_properties(object, &["scaled", "raw", "min", "max"])?;
    let read = |key: &'static str| -> Result<Option<f64>, Violation> {
        object
            .prop(key)
            .map(|v| number(v).map_err(|e| e.at(key)))
            .transpose()
    };
    let (scaled, raw, min, max) = (read("scaled")?, read("raw")?, read("min")?, read("max")?);
    if scaled.is_some_and(|s| !(-1.0..=1.0).contains(&s)) {
        return Err(Violation::new("must be between -1 and 1").at("scaled"));
    }
    if let (Some(min), Some(max)) = (min, max)
        && min >= max
    {
        return Err(Violation::new("must be greater than min").at("max"));
    }
    if let Some(raw) = raw {
        if min.is_some_and(|m| raw < m) {
            return Err(Violation::new("must not be below min").at("raw"));
        }
        if max.is_some_and(|m| raw > m) {
            return Err(Violation::new("must not be above max").at("raw"));
        }
    }
    Ok(())
}

fn context(value: &Json<'_>, object: ObjectKind) -> Checked {
    let context = as_object(value, "a Context")?;
    known_properties(
        context,
        &[
            "registration",
            "instructor",
            "team",
            "contextActivities",
            "revision",
            "platform",
            "language",
            "statement",
            "extensions",
        ],
    )?;
    field(context, "registration", uuid)?;
    field(context, "instructor", actor)?;
    field(context, "team", group_only)?;
    field(context, "contextActivities", context_activities)?;
    for key in ["revision", "platform"] {
        field(context, key, |v| {
            string(v)?;
            if object == ObjectKind::Activity {
                Ok(())
            } else {
                Err(Violation::new(
                    "may only be used when the statement's object is an Activity",
                ))
            }
        })?;
    }
    field(context, "language", |v| {
        if oxilangtag::LanguageTag::parse(string(v)?).is_ok() {
            Ok(())
        } else {
            Err(Violation::specific(
                Reason::XapiInvalidLanguageMap,
                "must be an RFC 5646 language tag",
            ))
        }
    })?;
    field(context, "statement", statement_ref_value)?;
    field(context, "extensions", extensions)
}

fn context_activities(value: &Json<'_>) -> Checked {
    let object = as_object(value, "contextActivities")?;
    known_properties(object, &["parent", "grouping", "category", "other"])?;
    for key in ["parent", "grouping", "category", "other"] {
        field(object, key, |v| match v {
            Json::Array(list) => {
                for (i, item) in list.iter().enumerate() {
                    activity_value(item).map_err(|e| e.index(i))?;
                }
                Ok(())
            }
            single => activity_value(single),
        })?;
    }
    Ok(())
}

fn attachments(value: &Json<'_>) -> Checked {
    let list = as_array(value, "Attachments")?;
    for (i, attachment) in list.iter().enumerate() {
        let check = || {
            let object = as_object(attachment, "an Attachment")?;
            known_properties(
                object,
                &[
                    "usageType",
                    "display",
                    "description",
                    "contentType",
                    "length",
                    "sha2",
                    "fileUrl",
                ],
            )?;
            required(object, "usageType", iri)?;
            required(object, "display", language_map)?;
            field(object, "description", language_map)?;
            required(object, "contentType", |v| {
                let text = string(v)?;
                match text.split_once('/') {
                    Some((kind, sub)) if !kind.is_empty() && !sub.is_empty() => Ok(()),
                    _ => Err(Violation::new("must be an Internet media type")),
                }
            })?;
            required(object, "length", |v| match v.as_u64() {
                Some(_) => Ok(()),
                None => Err(Violation::new("must be a non-negative integer")),
            })?;
            required(object, "sha2", |v| {
                let text = string(v)?;
                if !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Ok(())
                } else {
                    Err(Violation::new("must be a hex SHA-2 digest"))
                }
            })?;
            field(object, "fileUrl", iri)
        };
        check().map_err(|v| v.index(i))?;
    }
    Ok(())
}

const STATEMENT: &[&str] = &[
    "id",
    "actor",
    "verb",
    "object",
    "result",
    "context",
    "timestamp",
    "stored",
    "authority",
    "version",
    "attachments",
];

const SUB_STATEMENT: &[&str] = &[
    "objectType",
    "actor",
    "verb",
    "object",
    "result",
    "context",
    "timestamp",
    "attachments",
];

/// The parts a statement and a sub-statement share.
fn body(object: &Object<'_>, nested: bool) -> Result<ObjectKind, Violation> {
    required(object, "actor", actor)?;
    required(object, "verb", verb)?;
    let kind = match object.prop("object") {
        Some(v) => statement_object(v, nested).map_err(|e| e.at("object"))?,
        None => return Err(Violation::new("is required").at("object")),
    };
    field(object, "result", result)?;
    field(object, "context", |v| context(v, kind))?;
    field(object, "timestamp", timestamp)?;
    field(object, "attachments", attachments)?;
    Ok(kind)
}

fn sub_statement(object: &Object<'_>) -> Checked {
    known_properties(object, SUB_STATEMENT)?;
    body(object, true).map(drop)
}

/// Checks a whole statement; `Ok` carries what its object is.
///
/// # Errors
/// The first [`Violation`] found, in property order of the specification.
pub(crate) fn statement(object: &Object<'_>) -> Result<ObjectKind, Violation> {
    known_properties(object, STATEMENT)?;
    field(object, "id", uuid)?;
    let kind = body(object, false)?;
    field(object, "stored", timestamp)?;
    field(object, "authority", authority)?;
    field(object, "version", |v| {
        let text = string(v)?;
        let patch = text.strip_prefix("1.0");
        let ok = patch.is_some_and(|p| {
            p.is_empty()
                || p.strip_prefix('.')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if ok {
            Ok(())
        } else {
            Err(Violation::specific(
                Reason::XapiInvalidVersion,
                "must be a 1.0.x version",
            ))
        }
    })?;
    Ok(kind)
}

/// An authority: an Agent, or (OAuth with a registered application) an
/// anonymous Group of exactly two Agents, the application and the user.
fn authority(value: &Json<'_>) -> Checked {
    actor(value)?;
    if at(value, "objectType").as_str() == Some("Group") {
        let group = value
            .as_object()
            .map_or(0, |g| IFIS.iter().filter(|k| g.has(k)).count());
        if group > 0 {
            return Err(Violation::new(
                "an authority that is a Group must be anonymous (the OAuth application and user)",
            ));
        }
        let members = at(value, "member").as_array().map_or(0, <[_]>::len);
        if members != 2 {
            return Err(Violation::new(
                "an authority that is a Group must have exactly two members",
            )
            .at("member"));
        }
    }
    Ok(())
}
