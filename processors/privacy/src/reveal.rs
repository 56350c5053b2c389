//! The decrypt gate: how an operator reads one sealed field, and the only way.
//!
//! `POST /v1/reveal` with `Authorization: Bearer <operator token>` and
//! `{"tenant", "partition", "offset", "field", "reason"}` names one record of
//! `protected`. The gate checks, in order: the operator's token (stored as a
//! SHA-256 in config), the `fields:reveal` permission for that tenant, a
//! free-text reason, and the operator's rate limit (default 10 per 15
//! minutes, counted in the vault so restarts do not reset it). It then reads
//! the record, opens the field with the subject's key (410 if the key was
//! shredded), and writes a `field.revealed` event to `audit.events`
//! (operator, tenant, subject pseudonym, field, reason, time). The plaintext
//! is returned only after the audit event is durable: no audit, no reveal.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::HeaderValue;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use trellis_records::{AuditEvent, PROTECTED_TOPIC, ProtectedEvent, Sealed};
use trellis_runtime::schema::AvroDecoder;

use crate::vault::Vault;
use trellis_runtime::ticker::now_ms;

/// The permission that allows reveals.
pub const PERMISSION_REVEAL: &str = "fields:reveal";

/// The privacy processor's `settings.reveal` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealSettings {
    /// Where the gate listens (keep it on a private interface).
    pub addr: SocketAddr,
    /// Who may reveal what.
    pub operators: Vec<OperatorSpec>,
    /// Reveals per operator per window.
    #[serde(default = "default_limit")]
    pub limit: usize,
    /// The rate limit's window.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Shortest accepted reason.
    #[serde(default = "default_min_reason_chars")]
    pub min_reason_chars: usize,
}

const fn default_limit() -> usize {
    10
}
const fn default_window_secs() -> u64 {
    900
}
const fn default_min_reason_chars() -> usize {
    10
}

/// One operator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    /// Name recorded in audit events.
    pub name: String,
    /// Hex SHA-256 of the operator's bearer token.
    pub token_sha256: String,
    /// Tenants the operator may act on (`*` for all).
    pub tenants: Vec<String>,
    /// e.g. `fields:reveal`.
    pub permissions: Vec<String>,
}

/// Reads one record by coordinates (Kafka in production).
pub trait RecordSource: Send + Sync + 'static {
    /// The value at `topic`/`partition`/`offset`, if there is one. Blocking.
    ///
    /// # Errors
    /// Broker failures, as text.
    fn fetch(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<Vec<u8>>, String>;
}

/// Writes audit events durably (Kafka in production).
pub trait AuditSink: Send + Sync + 'static {
    /// Resolves once `event` is durable.
    fn write(
        &self,
        event: AuditEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Fetches records with a short-lived assigned consumer.
pub struct KafkaRecordSource {
    kafka: trellis_runtime::config::KafkaConfig,
}

impl KafkaRecordSource {
    /// A source on `kafka`.
    pub fn new(kafka: trellis_runtime::config::KafkaConfig) -> Self {
        Self { kafka }
    }
}

impl RecordSource for KafkaRecordSource {
    fn fetch(&self, topic: &str, partition: i32, offset: i64) -> Result<Option<Vec<u8>>, String> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Message, Offset, TopicPartitionList};
        let consumer: BaseConsumer = trellis_runtime::kafka::client_config(&self.kafka)
            .set("group.id", "trellis-reveal")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| e.to_string())?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| e.to_string())?;
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) if m.offset() == offset => return Ok(m.payload().map(<[u8]>::to_vec)),
                Some(Ok(m)) if m.offset() > offset => return Ok(None),
                Some(Ok(_)) | None => {}
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
        Ok(None)
    }
}

/// Produces audit events and waits for the acknowledgement.
pub struct KafkaAuditSink {
    producer: trellis_runtime::producer::TrellisProducer,
    encoder: trellis_runtime::schema::AvroEncoder,
}

impl KafkaAuditSink {
    /// A sink producing with `producer`, encoding with `encoder`.
    pub fn new(
        producer: trellis_runtime::producer::TrellisProducer,
        encoder: trellis_runtime::schema::AvroEncoder,
    ) -> Self {
        Self { producer, encoder }
    }
}

impl AuditSink for KafkaAuditSink {
    fn write(
        &self,
        event: AuditEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            trellis_runtime::kafka::produce_audit_event(&self.producer, &self.encoder, &event)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The gate.
pub struct RevealGate {
    settings: RevealSettings,
    vault: Arc<Mutex<Vault>>,
    decoder: AvroDecoder,
    source: Arc<dyn RecordSource>,
    audit: Arc<dyn AuditSink>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevealRequest {
    tenant: String,
    partition: i32,
    offset: i64,
    field: String,
    reason: String,
}

struct Refusal(StatusCode, &'static str, String, Option<u64>);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (
            self.0,
            axum::Json(json!({"ok": false, "code": self.1, "message": self.2})),
        )
            .into_response();
        if let Some(secs) = self.3 {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        response
    }
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal(status, code, message.into(), None)
}

/// The sealed field `name` of `event`, if the event has it.
pub fn sealed_field<'e>(event: &'e ProtectedEvent, name: &str) -> Option<Option<&'e Sealed>> {
    Some(match name {
        "actor.name" => event.actor_name.as_ref(),
        "actor.email" => event.actor_email.as_ref(),
        "result.response" => event.result.as_ref().and_then(|r| r.response.as_ref()),
        "payload" => Some(&event.payload),
        _ => return None,
    })
}

impl RevealGate {
    /// A gate over `vault`.
    pub fn new(
        settings: RevealSettings,
        vault: Arc<Mutex<Vault>>,
        decoder: AvroDecoder,
        source: Arc<dyn RecordSource>,
        audit: Arc<dyn AuditSink>,
    ) -> Arc<Self> {
        Arc::new(Self {
            settings,
            vault,
            decoder,
            source,
            audit,
        })
    }

    /// `POST /v1/reveal`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/reveal", post(reveal))
            .with_state(self.clone())
    }

    fn operator(&self, headers: &HeaderMap) -> Result<&OperatorSpec, Refusal> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let hash = hex::encode(Sha256::digest(token.trim().as_bytes()));
        self.settings
            .operators
            .iter()
            .find(|o| !token.is_empty() && o.token_sha256.eq_ignore_ascii_case(&hash))
            .ok_or_else(|| {
                refuse(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "an operator token is required (Authorization: Bearer …)",
                )
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vault> {
        self.vault.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn reveal(
        &self,
        headers: &HeaderMap,
        request: RevealRequest,
    ) -> Result<Response, Refusal> {
        let operator = self.operator(headers)?;
        let allowed = operator.permissions.iter().any(|p| p == PERMISSION_REVEAL)
            && operator
                .tenants
                .iter()
                .any(|t| t == "*" || *t == request.tenant);
        if !allowed {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                format!("operator lacks `{PERMISSION_REVEAL}` for this tenant"),
            ));
        }
        if request.reason.trim().chars().count() < self.settings.min_reason_chars {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "REASON_REQUIRED",
                format!(
                    "say why, in at least {} characters",
                    self.settings.min_reason_chars
                ),
            ));
        }
        let now = now_ms();
        let window_ms = self.settings.window_secs as i64 * 1000;
        let recent = self
            .lock()
            .reveals_since(&operator.name, now - window_ms)
            .map_err(|e| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "VAULT_UNAVAILABLE",
                    e.to_string(),
                )
            })?;
        if recent.len() >= self.settings.limit {
            let oldest = recent.first().copied().unwrap_or(now);
            let wait = ((oldest + window_ms - now).max(0) / 1000) as u64 + 1;
            return Err(Refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!(
                    "at most {} reveals per {} s per operator",
                    self.settings.limit, self.settings.window_secs
                ),
                Some(wait),
            ));
        }

        let source = self.source.clone();
        let (partition, offset) = (request.partition, request.offset);
        let bytes =
            tokio::task::spawn_blocking(move || source.fetch(PROTECTED_TOPIC, partition, offset))
                .await
                .map_err(|e| {
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "LOG_UNAVAILABLE",
                        e.to_string(),
                    )
                })?
                .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, "LOG_UNAVAILABLE", e))?
                .ok_or_else(|| {
                    refuse(
                        StatusCode::NOT_FOUND,
                        "RECORD_NOT_FOUND",
                        "no record at that partition and offset",
                    )
                })?;
        let event: ProtectedEvent = self.decoder.decode(&bytes).await.map_err(|e| {
            refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNDECODABLE",
                e.to_string(),
            )
        })?;
        if event.tenant_id != request.tenant {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                "the record belongs to another tenant",
            ));
        }
        let sealed = sealed_field(&event, &request.field)
            .ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "UNKNOWN_FIELD",
                    "fields: actor.name, actor.email, result.response, payload",
                )
            })?
            .ok_or_else(|| {
                refuse(
                    StatusCode::NOT_FOUND,
                    "FIELD_ABSENT",
                    "the record has no value in that field",
                )
            })?;
        let plaintext = {
            let vault = self.lock();
            let keys = vault
                .keys_by_id(&event.tenant_id, &sealed.key_id)
                .map_err(|e| {
                    refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "VAULT_UNAVAILABLE",
                        e.to_string(),
                    )
                })?
                .ok_or_else(|| {
                    refuse(
                        StatusCode::GONE,
                        "KEY_SHREDDED",
                        "the subject's key no longer exists (erased)",
                    )
                })?;
            let plaintext = keys
                .open(&event.tenant_id, &request.field, &event.event_id, sealed)
                .map_err(|e| {
                    refuse(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "DOES_NOT_OPEN",
                        e.to_string(),
                    )
                })?;
            vault.record_reveal(&operator.name, now).map_err(|e| {
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "VAULT_UNAVAILABLE",
                    e.to_string(),
                )
            })?;
            plaintext
        };
        let audit = AuditEvent {
            event_id: format!("reveal/{}", uuid::Uuid::new_v4()),
            tenant_id: Some(event.tenant_id.clone()),
            actor: operator.name.clone(),
            action: "field.revealed".into(),
            subject: Some(event.learner.clone()),
            field: Some(request.field.clone()),
            reason: Some(request.reason.trim().to_string()),
            occurred_at: now,
            details: BTreeMap::from([
                ("topic".to_string(), PROTECTED_TOPIC.to_string()),
                ("partition".to_string(), partition.to_string()),
                ("offset".to_string(), offset.to_string()),
                ("key_id".to_string(), sealed.key_id.clone()),
            ]),
        };
        let audit_id = audit.event_id.clone();
        self.audit.write(audit).await.map_err(|e| {
            tracing::error!(error = %e, "audit event not written; reveal refused");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "AUDIT_UNAVAILABLE",
                "the reveal could not be audited, so it was refused",
            )
        })?;
        tracing::info!(
            operator = %operator.name,
            tenant = %event.tenant_id,
            field = %request.field,
            audit = %audit_id,
            "field revealed"
        );
        Ok(axum::Json(json!({
            "ok": true,
            "value": String::from_utf8_lossy(&plaintext),
            "audit_event_id": audit_id,
        }))
        .into_response())
    }
}

async fn reveal(
    State(gate): State<Arc<RevealGate>>,
    headers: HeaderMap,
    body: Result<axum::Json<RevealRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let request = match body {
        Ok(axum::Json(request)) => request,
        Err(e) => {
            return refuse(StatusCode::BAD_REQUEST, "BAD_REQUEST", e.body_text()).into_response();
        }
    };
    match gate.reveal(&headers, request).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests;
