//! The gate's rules, with an in-memory log and audit sink.

use super::*;
use axum::body::Body;
use axum::http::Request;
use std::collections::HashMap;
use tower::ServiceExt;
use trellis_runtime::schema::{AvroEncoder, SchemaFile, registry_settings};

const TOKEN: &str = "op-token-ann";

struct Log(HashMap<i64, Vec<u8>>);

impl RecordSource for Log {
    fn fetch(&self, _: &str, _: i32, offset: i64) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(&offset).cloned())
    }
}

#[derive(Default)]
struct Audit {
    events: Mutex<Vec<AuditEvent>>,
    broken: bool,
}

impl AuditSink for Audit {
    fn write(
        &self,
        event: AuditEvent,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        let result = if self.broken {
            Err("broker down".to_string())
        } else {
            self.events.lock().unwrap().push(event);
            Ok(())
        };
        Box::pin(async move { result })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    vault: Arc<Mutex<Vault>>,
    audit: Arc<Audit>,
    log: Arc<Log>,
    decoder: AvroDecoder,
}

fn schema() -> SchemaFile {
    SchemaFile::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/protected.avsc"),
    )
    .unwrap()
}

fn fixture(audit_broken: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut vault = Vault::open(dir.path(), &[1; 32], &[2; 32]).unwrap();
    let keys = vault
        .subject("acme", "mbox", "mailto:ann@x", "t")
        .unwrap()
        .keys;
    let email = keys.seal("acme", "actor.email", "e1", b"ann@example.org");
    let event = ProtectedEvent {
        received_at: 2,
        subject_key_id: keys.key_id().into(),
        // The email's ciphertext moved into the name field.
        actor_name: Some(email.clone()),
        actor_email: Some(email),
        verb: None,
        payload: keys.seal("acme", "payload", "e1", b"{}"),
        ..ProtectedEvent::statement("acme", keys.pseudonym(), "e1", 1, "experienced")
    };
    let schema = schema();
    let encoder = AvroEncoder::with_id("protected-value".into(), 7, schema.schema.clone()).unwrap();
    let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9").unwrap());
    decoder.insert(7, schema.schema).unwrap();
    let log = Arc::new(Log(HashMap::from([(5, encoder.encode(&event).unwrap())])));
    Fixture {
        _dir: dir,
        vault: Arc::new(Mutex::new(vault)),
        audit: Arc::new(Audit {
            broken: audit_broken,
            ..Audit::default()
        }),
        log,
        decoder,
    }
}

fn gate(f: &Fixture, limit: usize, tenants: &[&str], permissions: &[&str]) -> Router {
    let settings = RevealSettings {
        addr: "127.0.0.1:0".parse().unwrap(),
        operators: vec![OperatorSpec {
            name: "ann".into(),
            token_sha256: hex::encode(Sha256::digest(TOKEN.as_bytes())),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        }],
        limit,
        window_secs: 900,
        min_reason_chars: 10,
    };
    RevealGate::new(
        settings,
        f.vault.clone(),
        f.decoder.clone(),
        f.log.clone(),
        f.audit.clone(),
    )
    .router()
}

async fn ask(
    app: &Router,
    token: Option<&str>,
    field: &str,
    reason: &str,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    let mut request = Request::post("/v1/reveal").header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body =
        json!({"tenant": "acme", "partition": 0, "offset": 5, "field": field, "reason": reason});
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or_default(),
    )
}

const REASON: &str = "ticket 4411: learner asked for a copy";

#[tokio::test]
async fn reveals_with_permission_and_reason_and_audits_first() {
    let f = fixture(false);
    let app = gate(&f, 10, &["acme"], &[PERMISSION_REVEAL]);
    let (status, _, body) = ask(&app, Some(TOKEN), "actor.email", REASON).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["value"], "ann@example.org");
    let events = f.audit.events.lock().unwrap().clone();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.action, "field.revealed");
    assert_eq!(event.actor, "ann");
    assert_eq!(event.tenant_id.as_deref(), Some("acme"));
    assert_eq!(event.field.as_deref(), Some("actor.email"));
    assert_eq!(event.reason.as_deref(), Some(REASON));
    assert!(event.subject.as_deref().unwrap().starts_with("p_"));
    assert_eq!(body["audit_event_id"], event.event_id);
    // Nowhere in the event, `details` included, is the revealed value.
    let recorded = format!("{event:?}");
    assert!(!recorded.contains("ann@example.org"), "{recorded}");
}

#[tokio::test]
async fn refuses_without_token_permission_tenant_or_reason() {
    let f = fixture(false);
    let app = gate(&f, 10, &["acme"], &[PERMISSION_REVEAL]);
    assert_eq!(
        ask(&app, None, "actor.email", REASON).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        ask(&app, Some("guess"), "actor.email", REASON).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, body) = ask(&app, Some(TOKEN), "actor.email", "because").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("REASON_REQUIRED"))
    );
    let other_tenant = gate(&f, 10, &["globex"], &[PERMISSION_REVEAL]);
    assert_eq!(
        ask(&other_tenant, Some(TOKEN), "actor.email", REASON)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let no_permission = gate(&f, 10, &["*"], &["fields:list"]);
    assert_eq!(
        ask(&no_permission, Some(TOKEN), "actor.email", REASON)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert!(f.audit.events.lock().unwrap().is_empty());
}

#[tokio::test]
async fn rate_limited_per_operator_across_restarts() {
    let f = fixture(false);
    let app = gate(&f, 2, &["*"], &[PERMISSION_REVEAL]);
    for _ in 0..2 {
        assert_eq!(
            ask(&app, Some(TOKEN), "actor.email", REASON).await.0,
            StatusCode::OK
        );
    }
    let (status, headers, body) = ask(&app, Some(TOKEN), "actor.email", REASON).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("RATE_LIMITED"))
    );
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((890..=901).contains(&retry), "{retry}");
    // A new gate over the same vault (a restart) still counts them.
    let restarted = gate(&f, 2, &["*"], &[PERMISSION_REVEAL]);
    assert_eq!(
        ask(&restarted, Some(TOKEN), "actor.email", REASON).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn no_audit_no_reveal() {
    let f = fixture(true);
    let app = gate(&f, 10, &["acme"], &[PERMISSION_REVEAL]);
    let (status, _, body) = ask(&app, Some(TOKEN), "actor.email", REASON).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!body.to_string().contains("ann@example.org"));
}

#[tokio::test]
async fn moved_or_shredded_fields_do_not_open() {
    let f = fixture(false);
    let app = gate(&f, 10, &["acme"], &[PERMISSION_REVEAL]);
    let (status, _, body) = ask(&app, Some(TOKEN), "actor.name", REASON).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("DOES_NOT_OPEN"))
    );
    f.vault
        .lock()
        .unwrap()
        .shred("acme", "mbox", "mailto:ann@x", 10)
        .unwrap()
        .unwrap();
    let (status, _, body) = ask(&app, Some(TOKEN), "actor.email", REASON).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::GONE, Some("KEY_SHREDDED"))
    );
}
