//! An xAPI 1.0.3 Statement Resource, so any xAPI client (Moodle's
//! logstore_xapi, H5P and cmi5 players, tincanjs, `@xapi/xapi`, LRS
//! forwarders) can send to Trellis configured as it would be for an LRS:
//! endpoint `https://collector.example/xapi/`, key id as the username and the
//! API key as the password.
//!
//! - `POST /xapi/statements`: one statement or an array; `200` with the ids.
//! - `PUT /xapi/statements?statementId=…`: one statement; `204`.
//! - `GET /xapi/about`: the versions spoken (no credentials needed).
//!
//! Every request but `about` needs `X-Experience-API-Version: 1.0.x` and
//! HTTP Basic credentials (or `X-API-Key`). A batch is all or nothing, as
//! the spec requires: one invalid statement answers `400` naming its index,
//! path and rule, and nothing valid of that batch is written; the invalid
//! statements themselves are written to `ingest.xapi`, so the topic path
//! dead-letters them with their original bytes like every other reject.
//!
//! Statement ids follow LRS semantics within the dedup window: an id seen
//! again with the same content is accepted as a no-op (nothing written), with
//! different content it is a `409 Conflict` and nothing is written. "Same
//! content" is the statement as the client sent it, with `stored`,
//! `authority` and `version` (which the LRS sets) left out and keys in any
//! order. The index of ids lives in this process: after a restart, a
//! conflicting re-send is accepted here and then dropped by the topic path's
//! dedup (the first content stays), so nothing conflicting is ever stored.
//!
//! Trellis sets `stored` (now) and `authority` (an Agent naming the API key)
//! on every statement, assigns ids to statements without one (UUID v4), and
//! keeps each statement's `timestamp` as sent, however old or in the future.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Ingest, IngestWrite, Refusal, body_refusal, now_ms, refuse};
use crate::apikeys::ApiKeyRecord;
use crate::validate::{Envelope, IngestFormat, validate};
use crate::xapi::rules::is_uuid;

/// The header every xAPI request and response carries.
pub const VERSION_HEADER: &str = "x-experience-api-version";
/// The version Trellis answers with.
pub const VERSION: &str = "1.0.3";
/// `authority.account.homePage` of the statements Trellis stores.
pub const AUTHORITY_HOME_PAGE: &str = "urn:trellis:api-key";

/// Ids accepted through this resource, with a hash of their content, for
/// the dedup window (and at most `capacity` of them, oldest dropped first).
pub(crate) struct StatementIndex {
    window_ms: i64,
    capacity: usize,
    inner: Mutex<IndexInner>,
}

#[derive(Default)]
struct IndexInner {
    by_id: HashMap<[u8; 16], ([u8; 16], i64)>,
    order: VecDeque<([u8; 16], i64)>,
}

impl StatementIndex {
    pub(crate) fn new(window_ms: i64, capacity: usize) -> Self {
        Self {
            window_ms,
            capacity,
            inner: Mutex::default(),
        }
    }

    fn key(tenant: &str, id: &str) -> [u8; 16] {
        let mut h = Sha256::new();
        h.update(tenant.as_bytes());
        h.update([0]);
        h.update(id.to_ascii_lowercase().as_bytes());
        let mut out = [0; 16];
        out.copy_from_slice(&h.finalize()[..16]);
        out
    }

    fn get(&self, key: &[u8; 16], now: i64) -> Option<[u8; 16]> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .by_id
            .get(key)
            .filter(|(_, at)| now - at <= self.window_ms)
            .map(|(content, _)| *content)
    }

    fn insert(&self, key: [u8; 16], content: [u8; 16], now: i64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(old, at)) = inner.order.front() {
            if now - at <= self.window_ms && inner.order.len() < self.capacity {
                break;
            }
            inner.order.pop_front();
            if inner.by_id.get(&old).is_some_and(|(_, t)| *t == at) {
                inner.by_id.remove(&old);
            }
        }
        inner.by_id.insert(key, (content, now));
        inner.order.push_back((key, now));
    }
}

/// The statement's content for LRS id semantics: without what the LRS sets,
/// in canonical key order (serde_json maps are sorted).
fn content_hash(statement: &Map<String, Value>) -> [u8; 16] {
    let mut copy = statement.clone();
    for key in ["stored", "authority", "version"] {
        copy.remove(key);
    }
    let bytes = serde_json::to_vec(&copy).unwrap_or_default();
    let mut out = [0; 16];
    out.copy_from_slice(&Sha256::digest(&bytes)[..16]);
    out
}

/// An xAPI error answer: the code and message the Trellis routes use, plus
/// the version header.
fn xapi_refusal(refusal: Refusal) -> Response {
    with_version(refusal.into_response())
}

fn with_version(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(VERSION_HEADER, HeaderValue::from_static(VERSION));
    response
}

fn bad_request(code: &'static str, message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, code, message)
}

/// `X-Experience-API-Version` must name a 1.0.x version.
fn check_version(headers: &HeaderMap) -> Result<(), Refusal> {
    let version = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            bad_request(
                "VERSION_REQUIRED",
                "the X-Experience-API-Version header is required (e.g. 1.0.3)",
            )
        })?;
    let supported = version
        .strip_prefix("1.0")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
    if supported {
        Ok(())
    } else {
        Err(bad_request(
            "UNSUPPORTED_VERSION",
            "this resource speaks xAPI 1.0.x (X-Experience-API-Version)",
        ))
    }
}

/// HTTP Basic `key id : API key`, as LRS clients send "key" and "secret".
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

impl Ingest {
    fn authenticate_lrs(&self, headers: &HeaderMap) -> Result<ApiKeyRecord, Refusal> {
        let key = match basic_credentials(headers) {
            Some((user, password)) => {
                let key = self.check_key(Some(&password))?;
                // The username names the key; a mismatch is a misconfigured
                // client, told as such rather than silently accepted.
                if !user.is_empty() && !user.eq_ignore_ascii_case(&key.id) {
                    return Err(refuse(
                        StatusCode::UNAUTHORIZED,
                        "KEY_ID_MISMATCH",
                        "the Basic username must be the API key's id (shown by `api-key list`)",
                    ));
                }
                key
            }
            None => self.authenticate(headers)?,
        };
        if key.signed {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "SIGNATURE_REQUIRED",
                "this key requires signed requests, which xAPI clients cannot make; use an unsigned key here",
            ));
        }
        Ok(key)
    }

    /// Handles `POST` (`statement_id` = `None`) and `PUT`.
    async fn store_statements(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        statement_id: Option<&str>,
    ) -> Result<Response, Refusal> {
        check_version(headers)?;
        let key = self.authenticate_lrs(headers)?;
        self.rate_limit(&key.tenant)?;
        let request_id = headers
            .get(super::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut statements = match (statement_id, super::json_body(body)?) {
            (None, Value::Array(items)) => items,
            (_, Value::Object(statement)) => vec![Value::Object(statement)],
            (Some(_), _) => {
                return Err(bad_request(
                    "NOT_A_STATEMENT",
                    "PUT takes one statement (a JSON object)",
                ));
            }
            (None, _) => {
                return Err(bad_request(
                    "NOT_A_STATEMENT",
                    "the body must be a statement or an array of statements",
                ));
            }
        };
        if statements.is_empty() {
            return Err(bad_request("EMPTY_BATCH", "the batch is empty"));
        }
        if statements.len() > self.settings.max_batch {
            return Err(bad_request(
                "BATCH_TOO_LARGE",
                format!(
                    "{} statements; at most {} per request",
                    statements.len(),
                    self.settings.max_batch
                ),
            ));
        }
        if let Some(id) = statement_id
            && !is_uuid(id)
        {
            return Err(bad_request(
                "INVALID_STATEMENT_ID",
                "the statementId parameter must be a UUID",
            ));
        }

        let now = now_ms();
        let stored = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default();
        let authority = json!({
            "objectType": "Agent",
            "account": {"homePage": AUTHORITY_HOME_PAGE, "name": key.id},
        });
        let mut ids = Vec::with_capacity(statements.len());
        let mut fresh = Vec::with_capacity(statements.len());
        let mut rejected: Option<(usize, &'static str, String)> = None;
        let mut invalid = Vec::new();
        for (index, statement) in statements.iter_mut().enumerate() {
            let original = serde_json::to_vec(statement).unwrap_or_default();
            let Value::Object(object) = statement else {
                rejected.get_or_insert((
                    index,
                    "NOT_AN_OBJECT",
                    "a statement must be a JSON object".into(),
                ));
                invalid.push(original);
                continue;
            };
            match (statement_id, object.get("id").and_then(Value::as_str)) {
                (Some(param), Some(id)) if !param.eq_ignore_ascii_case(id) => {
                    return Err(bad_request(
                        "STATEMENT_ID_MISMATCH",
                        "the statement's id differs from the statementId parameter",
                    ));
                }
                (Some(param), None) => {
                    object.insert("id".into(), Value::String(param.to_ascii_lowercase()));
                }
                (None, None) => {
                    object.insert(
                        "id".into(),
                        Value::String(uuid::Uuid::new_v4().hyphenated().to_string()),
                    );
                }
                _ => {}
            }
            let content = content_hash(object);
            object.insert("stored".into(), Value::String(stored.clone()));
            object.insert("authority".into(), authority.clone());
            let value = serde_json::to_vec(object).unwrap_or_default();
            let envelope = Envelope {
                tenant_header: Some(&key.tenant),
                request_id: Some(&request_id),
                received_at: now,
            };
            match validate(IngestFormat::Xapi, Some(&value), envelope, &self.limits) {
                Ok(event) => {
                    ids.push(event.event_id.clone());
                    fresh.push((
                        StatementIndex::key(&key.tenant, &event.event_id),
                        content,
                        value,
                    ));
                }
                Err(rejection) => {
                    rejected.get_or_insert((index, rejection.reason.code(), rejection.detail));
                    invalid.push(original);
                }
            }
        }

        let write = |values: Vec<Vec<u8>>| {
            values
                .into_iter()
                .map(|value| IngestWrite {
                    topic: "ingest.xapi",
                    tenant: key.tenant.clone(),
                    request_id: request_id.clone(),
                    value,
                })
                .collect::<Vec<_>>()
        };
        if let Some((index, code, detail)) = rejected {
            // The invalid statements still reach `dlq` (with their bytes)
            // through the topic path; the valid ones wait for a fixed batch.
            self.sink.write(write(invalid)).await.map_err(unavailable)?;
            return Err(bad_request(code, format!("statement {index}: {detail}")));
        }
        let mut seen_in_batch = HashMap::new();
        let mut to_write = Vec::with_capacity(fresh.len());
        let mut to_index = Vec::with_capacity(fresh.len());
        for (id_key, content, value) in fresh {
            if let Some(previous) = seen_in_batch.insert(id_key, content) {
                if previous != content {
                    return Err(refuse(
                        StatusCode::CONFLICT,
                        "CONFLICT",
                        "two statements of the batch share an id but differ",
                    ));
                }
                continue;
            }
            match self.statement_index.get(&id_key, now) {
                Some(known) if known == content => {} // a re-send: a no-op
                Some(_) => {
                    return Err(refuse(
                        StatusCode::CONFLICT,
                        "CONFLICT",
                        "a statement with this id and different content was already accepted",
                    ));
                }
                None => {
                    to_write.push(value);
                    to_index.push((id_key, content));
                }
            }
        }
        if !to_write.is_empty() {
            self.sink
                .write(write(to_write))
                .await
                .map_err(unavailable)?;
        }
        for (id_key, content) in to_index {
            self.statement_index.insert(id_key, content, now);
        }
        tracing::info!(
            request_id = %request_id,
            tenant = %key.tenant,
            key = %key.id,
            statements = ids.len(),
            "xAPI statements stored"
        );
        Ok(match statement_id {
            Some(_) => StatusCode::NO_CONTENT.into_response(),
            None => (StatusCode::OK, axum::Json(ids)).into_response(),
        })
    }
}

fn unavailable(e: String) -> Refusal {
    tracing::error!(error = %e, "writing ingest records failed");
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "the event log is not accepting writes; retry later",
    )
}

async fn answer(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    statement_id: Option<&str>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => return xapi_refusal(body_refusal(&rejection)),
    };
    match ingest.store_statements(headers, &body, statement_id).await {
        Ok(response) => with_version(response),
        Err(refusal) => {
            tracing::info!(
                request_id = headers
                    .get(super::REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or(""),
                code = refusal.code,
                status = refusal.status.as_u16(),
                "xAPI request refused"
            );
            xapi_refusal(refusal)
        }
    }
}

pub(super) async fn post_statements(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer(&ingest, &headers, body, None).await
}

/// The query of `PUT /xapi/statements`.
#[derive(Deserialize)]
pub(super) struct PutQuery {
    #[serde(rename = "statementId")]
    statement_id: Option<String>,
}

pub(super) async fn put_statement(
    State(ingest): State<Arc<Ingest>>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(id) = query.statement_id else {
        return xapi_refusal(bad_request(
            "STATEMENT_ID_REQUIRED",
            "PUT needs the statementId parameter",
        ));
    };
    answer(&ingest, &headers, body, Some(&id)).await
}

pub(super) async fn get_statements() -> Response {
    xapi_refusal(refuse(
        StatusCode::METHOD_NOT_ALLOWED,
        "WRITE_ONLY",
        "Trellis collects statements; query them downstream (warehouse, transcripts)",
    ))
}

pub(super) async fn about() -> Response {
    with_version(
        axum::Json(json!({"version": ["1.0.3", "1.0.2", "1.0.1", "1.0.0"]})).into_response(),
    )
}
