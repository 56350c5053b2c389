//! HTTP ingestion: the collector's front door for producers that cannot
//! write to Kafka.
//!
//! `POST /v1/events` takes a JSON array of events, `POST /v1/xapi/statements`
//! one statement or an array, answered per item (`202`). Beside them,
//! `/xapi/statements` and `/xapi/about` are an xAPI Statement Resource with
//! LRS semantics for xAPI clients ([`lrs`]). Each request is authenticated by an API key
//! bound to one tenant ([`crate::apikeys`]), optionally signed, and rate
//! limited per tenant. Every item is validated at once so the answer says,
//! per item, what was accepted and why anything was rejected; then every item
//! of the request is written to the ingest topic it belongs to, with the
//! tenant and request id as headers. The topic path does the rest: the same
//! validation (rejects go to `dlq` with the original bytes, so the dead-letter
//! topic holds everything rejected, whichever door it came through), dedup,
//! normalisation. A request is answered only once its records are durable.
//!
//! Refusals of the request as a whole (authentication, tenant, limits) write
//! nothing: an event naming another tenant than its key's is never written
//! under either tenant.
//!
//! Signed requests carry `X-Trellis-Timestamp` (Unix seconds),
//! `X-Trellis-Nonce` and `X-Trellis-Signature` = hex HMAC-SHA256(key's
//! signing secret, `timestamp.nonce.body`). A timestamp outside the window or
//! a nonce seen within it is refused. Nonces are remembered in memory for the
//! window; after a restart a captured request could be replayed only within
//! what is left of its window (and would then be dropped as a duplicate by
//! event id).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::{HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use trellis_runtime::pipeline::membership::Lease;

use crate::apikeys::{ApiKeyRecord, KeyRefusal, KeyStore, SCOPE_EVENTS_WRITE, signing_secret};
use crate::validate::{Envelope, IngestFormat, Limits, validate};
use trellis_runtime::ticker::now_ms;

/// The request id header, taken from the client or generated.
pub const REQUEST_ID: &str = "x-request-id";
const API_KEY: &str = "x-api-key";
const SIG_TIMESTAMP: &str = "x-trellis-timestamp";
const SIG_NONCE: &str = "x-trellis-nonce";
const SIG_SIGNATURE: &str = "x-trellis-signature";

/// The `settings.http` section of the collector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The API key store (see `trellis-collector api-key`).
    pub api_keys: PathBuf,
    /// Largest request body, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most items per request.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Requests per tenant per `rate_window_secs`.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// The rate limit's window.
    #[serde(default = "default_rate_window_secs")]
    pub rate_window_secs: u64,
    /// Per-tenant overrides of `rate_limit`.
    #[serde(default)]
    pub tenant_rate_limits: BTreeMap<String, u32>,
    /// Browser origins allowed by CORS, e.g. `https://*.moodle.example`
    /// (`*` matches exactly one DNS label).
    #[serde(default)]
    pub cors_origins: Vec<String>,
    /// How far a signed request's timestamp may be from now, in seconds.
    #[serde(default = "default_signature_window_secs")]
    pub signature_window_secs: u64,
    /// How long the xAPI resource remembers statement ids for LRS id
    /// semantics (same id + same content → no-op, different → 409).
    #[serde(default = "default_statement_id_window_secs")]
    pub statement_id_window_secs: u64,
}

/// A day, like the collector's default dedup window.
const fn default_statement_id_window_secs() -> u64 {
    86_400
}

/// 1 MiB: a batch of a few hundred typical statements.
const fn default_max_body_bytes() -> usize {
    1 << 20
}
const fn default_max_batch() -> usize {
    500
}
const fn default_rate_limit() -> u32 {
    1_000
}
const fn default_rate_window_secs() -> u64 {
    60
}
const fn default_signature_window_secs() -> u64 {
    300
}

/// One record to write to an ingest topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestWrite {
    /// `ingest.events` or `ingest.xapi`.
    pub topic: &'static str,
    /// Tenant (key and `tenant` header).
    pub tenant: String,
    /// The request id header.
    pub request_id: String,
    /// The item's JSON.
    pub value: Vec<u8>,
}

/// Where accepted requests go: Kafka in production, memory in tests.
pub trait Sink: Send + Sync + 'static {
    /// Writes every record durably, or fails as a whole.
    fn write(
        &self,
        records: Vec<IngestWrite>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// A [`Sink`] that produces to Kafka and waits for every acknowledgement.
pub struct KafkaSink {
    producer: trellis_runtime::producer::TrellisProducer,
}

impl KafkaSink {
    /// A sink producing with `producer`.
    pub fn new(producer: trellis_runtime::producer::TrellisProducer) -> Self {
        Self { producer }
    }
}

impl Sink for KafkaSink {
    fn write(
        &self,
        records: Vec<IngestWrite>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        use trellis_runtime::producer::Outgoing;
        Box::pin(async move {
            let mut deliveries = Vec::with_capacity(records.len());
            for record in &records {
                let outgoing = Outgoing {
                    topic: record.topic,
                    key: record.tenant.as_bytes(),
                    value: Some(&record.value),
                    id: None,
                    tenant: Some(&record.tenant),
                    request_id: Some(record.request_id.as_bytes()),
                    timestamp_ms: None,
                };
                let delivery = self
                    .producer
                    .enqueue(&outgoing)
                    .await
                    .map_err(|e| e.to_string())?;
                deliveries.push((record.topic, delivery));
            }
            for (topic, delivery) in deliveries {
                // The client is told and retries; no re-send behind its back.
                trellis_runtime::producer::settle(topic, delivery)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }
}

/// Everything the handlers share.
pub struct Ingest {
    settings: HttpSettings,
    keys: KeyStore,
    sink: Arc<dyn Sink>,
    limits: Limits,
    /// `None` when the signing master key is missing: signed keys get 503.
    signing_master: Option<Vec<u8>>,
    limiters: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    nonces: Mutex<HashMap<String, i64>>,
    /// Statement ids accepted by the xAPI resource ([`lrs`]).
    statement_index: lrs::StatementIndex,
    /// Held while this instance owns the collector's state; a standby
    /// refuses requests (`None`: always serve, as in tests).
    lease: Option<Lease>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("addr", &self.settings.addr)
            .finish_non_exhaustive()
    }
}

/// A refusal: status, code, message, maybe a Retry-After.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
        retry_after: None,
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"ok": false, "code": self.code, "message": self.message});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

/// Per-item outcome.
#[derive(Debug, Serialize)]
struct ItemResult {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// A request body as JSON, or the 400 that says where it is not.
fn json_body(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            "MALFORMED_JSON",
            format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Whether `origin` matches `pattern`, where `*` stands for one DNS label.
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    let (Some((p_scheme, p_host)), Some((o_scheme, o_host))) =
        (pattern.split_once("://"), origin.split_once("://"))
    else {
        return false;
    };
    if !p_scheme.eq_ignore_ascii_case(o_scheme) {
        return false;
    }
    let p_labels: Vec<&str> = p_host.split('.').collect();
    let o_labels: Vec<&str> = o_host.split('.').collect();
    p_labels.len() == o_labels.len()
        && p_labels.iter().zip(&o_labels).all(|(p, o)| {
            if *p == "*" {
                !o.is_empty() && !o.contains(':')
            } else {
                p.eq_ignore_ascii_case(o)
            }
        })
}

impl Ingest {
    /// The ingest front door.
    pub fn new(
        settings: HttpSettings,
        sink: Arc<dyn Sink>,
        limits: Limits,
        signing_master: Option<Vec<u8>>,
        lease: Option<Lease>,
    ) -> Arc<Self> {
        let statement_index =
            lrs::StatementIndex::new(settings.statement_id_window_secs as i64 * 1000, 1_000_000);
        Arc::new(Self {
            keys: KeyStore::new(&settings.api_keys),
            statement_index,
            settings,
            sink,
            limits,
            signing_master,
            limiters: Mutex::default(),
            nonces: Mutex::default(),
            lease,
        })
    }

    /// The router with every layer: security headers, request ids, CORS,
    /// body limit.
    pub fn router(self: &Arc<Self>) -> Router {
        let origins = self.settings.cors_origins.clone();
        let cors = CorsLayer::new()
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::OPTIONS])
            .allow_headers([
                HeaderName::from_static("content-type"),
                HeaderName::from_static("authorization"),
                HeaderName::from_static(lrs::VERSION_HEADER),
                HeaderName::from_static(API_KEY),
                HeaderName::from_static(REQUEST_ID),
            ])
            .expose_headers([
                HeaderName::from_static(REQUEST_ID),
                HeaderName::from_static(lrs::VERSION_HEADER),
            ])
            .allow_origin(AllowOrigin::predicate(move |origin, _| {
                origin
                    .to_str()
                    .is_ok_and(|o| origins.iter().any(|p| origin_matches(p, o)))
            }));
        let header = |name: &'static str, value: &'static str| {
            SetResponseHeaderLayer::overriding(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        };
        let request_id = HeaderName::from_static(REQUEST_ID);
        Router::new()
            .route("/v1/events", post(post_events))
            .route("/v1/xapi/statements", post(post_statements))
            .route(
                "/xapi/statements",
                post(lrs::post_statements)
                    .put(lrs::put_statement)
                    .get(lrs::get_statements),
            )
            .route("/xapi/about", get(lrs::about))
            .route("/healthz", get(|| async { "ok" }))
            .fallback(|| async { refuse(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint") })
            .with_state(self.clone())
            .layer(DefaultBodyLimit::max(self.settings.max_body_bytes))
            .layer(cors)
            .layer(header("x-content-type-options", "nosniff"))
            .layer(header("x-frame-options", "DENY"))
            .layer(header("referrer-policy", "strict-origin-when-cross-origin"))
            .layer(PropagateRequestIdLayer::new(request_id.clone()))
            .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
    }

    /// Binds the configured address (port 0 picks one).
    ///
    /// # Errors
    /// The bind error.
    pub async fn listen(&self) -> std::io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(self.settings.addr).await
    }

    /// Serves on `listener` until `shutdown` resolves, finishing requests
    /// in flight.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let router = self.router();
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP ingest stopped");
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<ApiKeyRecord, Refusal> {
        self.check_key(headers.get(API_KEY).and_then(|v| v.to_str().ok()))
    }

    fn check_key(&self, presented: Option<&str>) -> Result<ApiKeyRecord, Refusal> {
        // Nonces, rate limits and the statement-id index are the owner's:
        // answering here would let a replay, or a tenant's burst, through
        // another instance. Clients retry; a load balancer sends them on.
        if self.lease.as_ref().is_some_and(|lease| !lease.held()) {
            return Err(Refusal {
                retry_after: Some(1),
                ..refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "STANDBY",
                    "this collector instance is standing by; another instance of its group serves ingest",
                )
            });
        }
        self.keys
            .authenticate(presented, SCOPE_EVENTS_WRITE)
            .map_err(|e| match e {
                Ok(KeyRefusal::Scope) => refuse(
                    StatusCode::FORBIDDEN,
                    KeyRefusal::Scope.code(),
                    format!("the API key lacks the `{SCOPE_EVENTS_WRITE}` scope"),
                ),
                Ok(refusal) => refuse(
                    StatusCode::UNAUTHORIZED,
                    refusal.code(),
                    "a valid, unexpired, unrevoked API key is required (X-API-Key, or HTTP Basic with the key id and key on /xapi)",
                ),
                Err(e) => {
                    tracing::error!(error = %e, "API key store unusable");
                    misconfigured()
                }
            })
    }

    fn rate_limit(&self, tenant: &str) -> Result<(), Refusal> {
        let limiter = {
            let mut limiters = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
            limiters
                .entry(tenant.to_string())
                .or_insert_with(|| {
                    let limit = self
                        .settings
                        .tenant_rate_limits
                        .get(tenant)
                        .copied()
                        .unwrap_or(self.settings.rate_limit)
                        .max(1);
                    let window = Duration::from_secs(self.settings.rate_window_secs.max(1));
                    let burst = NonZeroU32::new(limit).unwrap_or(NonZeroU32::MIN);
                    let quota = Quota::with_period(window / limit)
                        .unwrap_or_else(|| Quota::per_second(burst))
                        .allow_burst(burst);
                    Arc::new(RateLimiter::direct(quota))
                })
                .clone()
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Refusal {
                retry_after: Some(wait.as_secs() + 1),
                ..refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "RATE_LIMITED",
                    "this tenant's request rate limit is exhausted; retry after Retry-After seconds",
                )
            }
        })
    }

    fn verify_signature(
        &self,
        key: &ApiKeyRecord,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Refusal> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let (timestamp, nonce, signature) = match (
            header(SIG_TIMESTAMP),
            header(SIG_NONCE),
            header(SIG_SIGNATURE),
        ) {
            (None, None, None) if !key.signed => return Ok(()),
            (Some(t), Some(n), Some(s)) => (t, n, s),
            _ => {
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "SIGNATURE_REQUIRED",
                    "signed requests need X-Trellis-Timestamp, X-Trellis-Nonce and X-Trellis-Signature",
                ));
            }
        };
        let Some(master) = &self.signing_master else {
            return Err(misconfigured());
        };
        let bad = |code, message: &str| refuse(StatusCode::UNAUTHORIZED, code, message);
        let now = now_ms() / 1000;
        let window = self.settings.signature_window_secs as i64;
        let ts: i64 = timestamp
            .parse()
            .map_err(|_| bad("BAD_SIGNATURE", "X-Trellis-Timestamp must be Unix seconds"))?;
        if (now - ts).abs() > window {
            return Err(bad(
                "STALE_SIGNATURE",
                "the request's timestamp is outside the accepted window",
            ));
        }
        if nonce.is_empty() || nonce.len() > 128 {
            return Err(bad(
                "BAD_SIGNATURE",
                "X-Trellis-Nonce must be 1-128 characters",
            ));
        }
        let mut mac =
            <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&signing_secret(master, &key.id))
                .expect("HMAC takes keys of any length");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(nonce.as_bytes());
        mac.update(b".");
        mac.update(body);
        let expected = hex::decode(signature).unwrap_or_default();
        mac.verify_slice(&expected)
            .map_err(|_| bad("BAD_SIGNATURE", "the signature does not match the body"))?;
        // Only a verified request consumes its nonce.
        let mut nonces = self.nonces.lock().unwrap_or_else(|e| e.into_inner());
        nonces.retain(|_, seen| now - *seen <= window);
        if nonces.insert(format!("{}/{nonce}", key.id), now).is_some() {
            return Err(bad(
                "REPLAYED_NONCE",
                "this nonce was already used: a replayed request",
            ));
        }
        Ok(())
    }

    async fn ingest(&self, format: IngestFormat, headers: HeaderMap, body: Bytes) -> Response {
        match self.try_ingest(format, &headers, &body).await {
            Ok(response) => response,
            Err(refusal) => {
                tracing::info!(
                    request_id = headers
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or(""),
                    code = refusal.code,
                    status = refusal.status.as_u16(),
                    "ingest request refused"
                );
                refusal.into_response()
            }
        }
    }

    async fn try_ingest(
        &self,
        format: IngestFormat,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, Refusal> {
        let key = self.authenticate(headers)?;
        self.rate_limit(&key.tenant)?;
        self.verify_signature(&key, headers, body)?;
        let request_id = headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let items = self.items(format, body)?;
        for item in &items {
            if let Some(tenant) = item.get("tenant_id").and_then(Value::as_str)
                && tenant != key.tenant
            {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "TENANT_MISMATCH",
                    "an item names a tenant other than the API key's; nothing was written",
                ));
            }
        }
        let received_at = now_ms();
        let topic = match format {
            IngestFormat::Xapi => "ingest.xapi",
            IngestFormat::Events => "ingest.events",
        };
        let mut writes = Vec::with_capacity(items.len());
        let mut results = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let value = serde_json::to_vec(item).unwrap_or_default();
            let envelope = Envelope {
                tenant_header: Some(&key.tenant),
                request_id: Some(&request_id),
                received_at,
            };
            results.push(
                match validate(format, Some(&value), envelope, &self.limits) {
                    Ok(event) => ItemResult {
                        index,
                        event_id: Some(event.event_id),
                        status: "accepted",
                        code: None,
                        detail: None,
                    },
                    Err(rejection) => ItemResult {
                        index,
                        event_id: None,
                        status: "rejected",
                        code: Some(rejection.reason.code()),
                        detail: Some(rejection.detail),
                    },
                },
            );
            writes.push(IngestWrite {
                topic,
                tenant: key.tenant.clone(),
                request_id: request_id.clone(),
                value,
            });
        }
        self.sink.write(writes).await.map_err(|e| {
            tracing::error!(error = %e, "writing ingest records failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the event log is not accepting writes; retry later",
            )
        })?;
        let accepted = results.iter().filter(|r| r.status == "accepted").count();
        let rejected = results.len() - accepted;
        tracing::info!(
            request_id = %request_id,
            tenant = %key.tenant,
            key = %key.id,
            accepted,
            rejected,
            "ingest request"
        );
        let body = json!({
            "ok": rejected == 0,
            "accepted": accepted,
            "rejected": rejected,
            "items": results,
        });
        Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
    }

    fn items(&self, format: IngestFormat, body: &[u8]) -> Result<Vec<Value>, Refusal> {
        let items = match (format, json_body(body)?) {
            (_, Value::Array(items)) => items,
            (IngestFormat::Xapi, statement @ Value::Object(_)) => vec![statement],
            _ => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "NOT_A_BATCH",
                    "the body must be a JSON array of events",
                ));
            }
        };
        if items.is_empty() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "EMPTY_BATCH",
                "the batch is empty",
            ));
        }
        if items.len() > self.settings.max_batch {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "BATCH_TOO_LARGE",
                format!(
                    "{} items; at most {} per request",
                    items.len(),
                    self.settings.max_batch
                ),
            ));
        }
        Ok(items)
    }
}

fn body_refusal(rejection: &BytesRejection) -> Refusal {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BODY_TOO_LARGE",
            "the request body exceeds the size limit; send smaller batches",
        )
    } else {
        refuse(
            StatusCode::BAD_REQUEST,
            "UNREADABLE_BODY",
            rejection.body_text(),
        )
    }
}

fn misconfigured() -> Refusal {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "MISCONFIGURED",
        "the ingest service is misconfigured; operators have been told",
    )
}

async fn post_events(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => ingest.ingest(IngestFormat::Events, headers, body).await,
        Err(rejection) => body_refusal(&rejection).into_response(),
    }
}

async fn post_statements(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match body {
        Ok(body) => ingest.ingest(IngestFormat::Xapi, headers, body).await,
        Err(rejection) => body_refusal(&rejection).into_response(),
    }
}

mod lrs;
pub use lrs::{AUTHORITY_HOME_PAGE, VERSION_HEADER};

#[cfg(test)]
mod tests;
