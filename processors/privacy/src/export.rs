//! Access exports: a copy of the subject's events as they were received.
//!
//! Only the privacy processor can open a subject's sealed fields, so an
//! access request's events are exported here: every `protected` record
//! keyed `tenant|pseudonym` is read, its sealed fields opened with the
//! subject's keys, and the original event (an xAPI statement as the
//! statement it was) written with its plaintext name, email and responses to
//! one owner-only JSON file beside the saga's export document. The answer
//! on the topic carries only the file's path, size and count: an answer
//! cannot carry megabytes.
//!
//! Finding the events reads `protected` once, filtering by key before
//! decoding anything: with 1M events in `protected` an access request took
//! ~6 s from filing to answer, most of it this read, during which the
//! processor's loop waits. Access requests are rare and the read happens
//! once per request (the answer's receipt serves re-sends and replays), so
//! that was kept. An index by pseudonym would avoid the read, but it could
//! only hold input positions (the runtime learns output offsets after the
//! processor has run); a log ten times larger would want one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use trellis_records::{ProtectedEvent, Sealed};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::scan_topic;
use trellis_runtime::schema::AvroDecoder;

use crate::crypto::SubjectKeys;

/// How long `protected` must stay quiet to count as read whole.
const IDLE: Duration = Duration::from_millis(1000);

/// Where exports go and how `protected` is read.
pub struct Exporter {
    /// The broker.
    pub kafka: KafkaConfig,
    /// Decodes `protected` records.
    pub decoder: AvroDecoder,
    /// The export directory (`<dir>/<tenant>/<command>.events.json`).
    pub dir: PathBuf,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    /// The file.
    pub path: PathBuf,
    /// Events in it.
    pub events: u64,
    /// Its size.
    pub bytes: u64,
}

/// Why an export failed (the command is not answered; the saga re-sends).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// `protected` could not be read.
    #[error("reading protected: {0}")]
    Read(String),
    /// The file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn open_text(keys: &SubjectKeys, tenant: &str, field: &str, id: &str, sealed: &Sealed) -> Value {
    match keys.open(tenant, field, id, sealed) {
        Ok(bytes) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        Err(_) => Value::Null,
    }
}

/// One event as the subject should see it.
fn event_json(keys: &SubjectKeys, e: &ProtectedEvent) -> Value {
    let tenant = e.tenant_id.as_str();
    let id = e.event_id.as_str();
    let original = match keys.open(tenant, "payload", id, &e.payload) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
        Err(_) => Value::Null,
    };
    let open = |field: &str, s: &Option<Sealed>| {
        s.as_ref()
            .map_or(Value::Null, |s| open_text(keys, tenant, field, id, s))
    };
    json!({
        "event_id": e.event_id,
        "kind": e.kind,
        "source": e.source,
        "occurred_at": e.occurred_at,
        "received_at": e.received_at,
        "verb": e.verb,
        "object_id": e.object_id,
        "course_id": e.course_id,
        "name": open("actor.name", &e.actor_name),
        "email": open("actor.email", &e.actor_email),
        "result": e.result.as_ref().map(|r| json!({
            "success": r.success,
            "completion": r.completion,
            "score_scaled": r.score_scaled,
            "score_raw": r.score_raw,
            "duration_ms": r.duration_ms,
            "response": open("result.response", &r.response),
        })),
        // What the source sent: an xAPI statement as the statement.
        "as_received": original,
    })
}

impl Exporter {
    /// Exports the events of the subject `keys` belongs to in `tenant` for
    /// `request_id`, answering `command_id` (one per identifier the request
    /// names). Blocks while it reads `protected`.
    ///
    /// # Errors
    /// [`ExportError`] when `protected` cannot be read or the file written.
    pub async fn export(
        &self,
        tenant: &str,
        keys: &SubjectKeys,
        request_id: &str,
        command_id: &str,
    ) -> Result<Exported, ExportError> {
        let key = format!("{tenant}|{}", keys.pseudonym()).into_bytes();
        let mut values = Vec::new();
        scan_topic(
            &self.kafka,
            crate::PROTECTED_TOPIC,
            IDLE,
            |m| {
                use rdkafka::Message;
                if m.key() == Some(key.as_slice())
                    && let Some(v) = m.payload()
                {
                    values.push(v.to_vec());
                }
            },
            || false,
        )
        .map_err(|e| ExportError::Read(e.to_string()))?;
        let mut events = Vec::with_capacity(values.len());
        for value in &values {
            let event: ProtectedEvent = self
                .decoder
                .decode(value)
                .await
                .map_err(|e| ExportError::Read(e.to_string()))?;
            // A re-sent record (same event id) is one event.
            events.push(event);
        }
        events.sort_by(|a, b| (a.occurred_at, &a.event_id).cmp(&(b.occurred_at, &b.event_id)));
        events.dedup_by(|a, b| a.event_id == b.event_id);
        let document = json!({
            "request_id": request_id,
            "tenant_id": tenant,
            "pseudonym": keys.pseudonym(),
            "events": events.iter().map(|e| event_json(keys, e)).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec_pretty(&document).unwrap_or_default();
        let dir = self.dir.join(tenant);
        let path = events_path(&self.dir, tenant, command_id);
        trellis_runtime::files::write_private(&dir, &path, &bytes).map_err(|source| {
            ExportError::Write {
                path: path.clone(),
                source,
            }
        })?;
        Ok(Exported {
            path,
            events: events.len() as u64,
            bytes: bytes.len() as u64,
        })
    }
}

/// Where the events exported for `command_id` go (beside the saga's
/// document, named the same way: hex of the id).
pub fn events_path(dir: &Path, tenant: &str, command_id: &str) -> PathBuf {
    dir.join(tenant).join(format!(
        "{}.events.json",
        hex::encode(command_id.as_bytes())
    ))
}
