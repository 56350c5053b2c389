//! Every rule of the HTTP front door, against an in-memory sink.

use super::*;
use axum::body::Body;
use axum::http::Request;
use tower::ServiceExt;

use crate::apikeys::SCOPE_EVENTS_WRITE;

const MASTER: [u8; 32] = [4; 32];

#[derive(Default)]
struct MemorySink(Mutex<Vec<IngestWrite>>);

impl Sink for MemorySink {
    fn write(
        &self,
        records: Vec<IngestWrite>,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        self.0.lock().unwrap().extend(records);
        Box::pin(async { Ok(()) })
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    keys: KeyStore,
    sink: Arc<MemorySink>,
    app: Router,
    key: String,
}

fn settings(dir: &std::path::Path) -> HttpSettings {
    HttpSettings {
        addr: "127.0.0.1:0".parse().unwrap(),
        api_keys: dir.join("keys.json"),
        max_body_bytes: 4096,
        max_batch: 3,
        rate_limit: 100,
        rate_window_secs: 60,
        tenant_rate_limits: BTreeMap::from([("slow".to_string(), 2)]),
        cors_origins: vec!["https://*.moodle.example".into()],
        signature_window_secs: 300,
        statement_id_window_secs: 3_600,
    }
}

fn fixture() -> Fixture {
    fixture_with(None)
}

fn fixture_with(lease: Option<Lease>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let keys = KeyStore::new(&settings.api_keys);
    let (key, _) = keys
        .create(
            "acme",
            vec![SCOPE_EVENTS_WRITE.into()],
            None,
            false,
            String::new(),
        )
        .unwrap();
    let sink = Arc::new(MemorySink::default());
    let limits = Limits {
        max_event_bytes: 2048,
        max_clock_skew_ms: 300_000,
        max_event_age_ms: 86_400_000,
    };
    let app = Ingest::new(settings, sink.clone(), limits, Some(MASTER.to_vec()), lease).router();
    Fixture {
        dir,
        keys,
        sink,
        app,
        key,
    }
}

/// A signed key of tenant `acme`: (the key, its record).
fn signed_key(f: &Fixture) -> (String, ApiKeyRecord) {
    f.keys
        .create(
            "acme",
            vec![SCOPE_EVENTS_WRITE.into()],
            None,
            true,
            String::new(),
        )
        .unwrap()
}

fn event(tenant: &str, id: u8) -> Value {
    json!({
        "event_id": format!("6f1c1a9e-8d3b-4a57-9e8e-0c1d2b3a4f{id:02x}"),
        "tenant_id": tenant,
        "source": "moodle",
        "kind": "moodle.log",
        "occurred_at": now_ms() - 1000,
        "actor": {"user_id": "42", "email": "ann@example.org", "name": "Ann"},
        "verb": "\\mod_page\\event\\course_module_viewed",
        "object_id": "https://lms.example/mod/page/view.php?id=1",
        "data": {},
    })
}

fn post(path: &str, key: Option<&str>) -> axum::http::request::Builder {
    let mut builder = Request::post(path).header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header(API_KEY, key);
    }
    builder
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

async fn post_json(
    app: &Router,
    key: Option<&str>,
    body: &Value,
) -> (StatusCode, HeaderMap, Value) {
    let text = body.to_string();
    send(app, post("/v1/events", key).body(Body::from(text)).unwrap()).await
}

fn assert_security_headers(headers: &HeaderMap) {
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(
        headers["referrer-policy"],
        "strict-origin-when-cross-origin"
    );
    assert!(!headers[REQUEST_ID].is_empty());
}

#[tokio::test]
async fn answers_per_item_and_writes_every_item_of_an_authorised_request() {
    let f = fixture();
    let mut bad = event("acme", 2);
    bad.as_object_mut().unwrap().remove("actor");
    let (status, headers, body) =
        post_json(&f.app, Some(&f.key), &json!([event("acme", 1), bad])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_security_headers(&headers);
    assert_eq!(body["accepted"], 1);
    assert_eq!(body["rejected"], 1);
    assert_eq!(body["items"][0]["status"], "accepted");
    assert_eq!(body["items"][1]["code"], "MISSING_FIELD");
    // Both go to the log: the topic path dead-letters the bad one with its bytes.
    let written = f.sink.0.lock().unwrap().clone();
    assert_eq!(written.len(), 2);
    assert!(
        written
            .iter()
            .all(|w| w.tenant == "acme" && w.topic == "ingest.events")
    );
    assert_eq!(written[0].request_id, headers[REQUEST_ID].to_str().unwrap());
}

#[tokio::test]
async fn propagates_a_client_request_id() {
    let f = fixture();
    let request = post("/v1/events", Some(&f.key))
        .header(REQUEST_ID, "req-abc")
        .body(Body::from(json!([event("acme", 1)]).to_string()))
        .unwrap();
    let (status, headers, _) = send(&f.app, request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers[REQUEST_ID], "req-abc");
    assert_eq!(f.sink.0.lock().unwrap()[0].request_id, "req-abc");
}

#[tokio::test]
async fn refuses_missing_unknown_expired_and_revoked_keys_with_headers() {
    let f = fixture();
    let batch = json!([event("acme", 1)]);
    let (status, headers, body) = post_json(&f.app, None, &batch).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "MALFORMED_API_KEY");
    assert_eq!(body["ok"], false);
    assert_security_headers(&headers);

    let unknown = format!("trl_{}", "a".repeat(32));
    let (status, _, body) = post_json(&f.app, Some(&unknown), &batch).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNKNOWN_API_KEY"))
    );

    let (expired, _) = f
        .keys
        .create(
            "acme",
            vec![SCOPE_EVENTS_WRITE.into()],
            Some(now_ms() - 1),
            false,
            String::new(),
        )
        .unwrap();
    let (status, _, body) = post_json(&f.app, Some(&expired), &batch).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("EXPIRED_API_KEY"))
    );

    // Revocation takes effect on the very next request.
    let (status, _, _) = post_json(&f.app, Some(&f.key), &batch).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = f.keys.list().unwrap()[0].id.clone();
    assert!(f.keys.revoke(&id).unwrap());
    let (status, _, body) = post_json(&f.app, Some(&f.key), &batch).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("REVOKED_API_KEY"))
    );

    let (read_only, _) = f
        .keys
        .create(
            "acme",
            vec!["events:read".into()],
            None,
            false,
            String::new(),
        )
        .unwrap();
    let (status, _, body) = post_json(&f.app, Some(&read_only), &batch).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("MISSING_SCOPE"))
    );
    assert_eq!(
        f.sink.0.lock().unwrap().len(),
        1,
        "only the authorised request wrote"
    );
}

#[tokio::test]
async fn an_event_for_another_tenant_writes_nothing() {
    let f = fixture();
    let (status, headers, body) = post_json(
        &f.app,
        Some(&f.key),
        &json!([event("acme", 1), event("globex", 2)]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["code"], "TENANT_MISMATCH");
    assert_security_headers(&headers);
    assert!(
        f.sink.0.lock().unwrap().is_empty(),
        "not written under either tenant"
    );
}

#[tokio::test]
async fn rate_limits_per_tenant_with_retry_after() {
    let f = fixture();
    let (slow, _) = f
        .keys
        .create(
            "slow",
            vec![SCOPE_EVENTS_WRITE.into()],
            None,
            false,
            String::new(),
        )
        .unwrap();
    for _ in 0..2 {
        let (status, _, _) = post_json(&f.app, Some(&slow), &json!([event("slow", 1)])).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, headers, body) = post_json(&f.app, Some(&slow), &json!([event("slow", 1)])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "RATE_LIMITED");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=31).contains(&retry),
        "2 per 60 s refills one every 30 s: {retry}"
    );
    assert_security_headers(&headers);
    // Another tenant is unaffected.
    let (status, _, _) = post_json(&f.app, Some(&f.key), &json!([event("acme", 1)])).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_standby_refuses_every_request_until_it_holds_the_lease() {
    let lease = Lease::default();
    let f = fixture_with(Some(lease.clone()));
    let (key, record) = signed_key(&f);
    let body = json!([event("acme", 1)]).to_string();
    let now = now_ms() / 1000;
    let (status, headers, reply) =
        post_json(&f.app, Some(&f.key), &json!([event("acme", 2)])).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("STANDBY"))
    );
    assert_eq!(headers["retry-after"], "1");
    assert_security_headers(&headers);
    let (status, _, reply) = send(&f.app, signed(&key, &record.id, now, "n-1", &body)).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("STANDBY"))
    );
    assert!(
        f.sink.0.lock().unwrap().is_empty(),
        "a standby writes nothing"
    );
    // Holding the lease, it serves; the nonce the standby saw was not
    // consumed there.
    lease.set(true);
    let (status, _, _) = send(&f.app, signed(&key, &record.id, now, "n-1", &body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, reply) = send(&f.app, signed(&key, &record.id, now, "n-1", &body)).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("REPLAYED_NONCE"))
    );
    // Handed over: refused again.
    lease.set(false);
    let (status, _, _) = post_json(&f.app, Some(&f.key), &json!([event("acme", 3)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

fn signed(key: &str, key_id: &str, timestamp: i64, nonce: &str, body: &str) -> Request<Body> {
    let mut mac =
        <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(&signing_secret(&MASTER, key_id)).unwrap();
    mac.update(format!("{timestamp}.{nonce}.{body}").as_bytes());
    post("/v1/events", Some(key))
        .header(SIG_TIMESTAMP, timestamp.to_string())
        .header(SIG_NONCE, nonce)
        .header(SIG_SIGNATURE, hex::encode(mac.finalize().into_bytes()))
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn signed_requests_are_checked_and_cannot_be_replayed() {
    let f = fixture();
    let (key, record) = signed_key(&f);
    let body = json!([event("acme", 1)]).to_string();
    let now = now_ms() / 1000;
    let (status, _, _) = send(&f.app, signed(&key, &record.id, now, "n-1", &body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, reply) = send(&f.app, signed(&key, &record.id, now, "n-1", &body)).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("REPLAYED_NONCE"))
    );
    let (status, _, reply) = send(&f.app, signed(&key, &record.id, now - 301, "n-2", &body)).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("STALE_SIGNATURE"))
    );
    let tampered = signed(&key, &record.id, now, "n-3", &body);
    let (parts, _) = tampered.into_parts();
    let tampered = Request::from_parts(parts, Body::from(json!([event("acme", 9)]).to_string()));
    let (status, _, reply) = send(&f.app, tampered).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("BAD_SIGNATURE"))
    );
    let (status, _, reply) = post_json(&f.app, Some(&key), &json!([event("acme", 1)])).await;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("SIGNATURE_REQUIRED"))
    );
    assert_eq!(f.sink.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn limits_and_malformed_bodies_get_clear_errors() {
    let f = fixture();
    let huge = format!("[{}]", "1,".repeat(3000) + "1");
    let (status, headers, body) = send(
        &f.app,
        post("/v1/events", Some(&f.key))
            .body(Body::from(huge))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("BODY_TOO_LARGE"))
    );
    assert_security_headers(&headers);

    let four: Vec<Value> = (1..=4).map(|i| event("acme", i)).collect();
    let (status, _, body) = post_json(&f.app, Some(&f.key), &json!(four)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BATCH_TOO_LARGE"))
    );

    let (status, headers, body) = send(
        &f.app,
        post("/v1/events", Some(&f.key))
            .body(Body::from("[{\"tenant_id\": "))
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("MALFORMED_JSON"))
    );
    assert_security_headers(&headers);
    let (status, _, body) = post_json(&f.app, Some(&f.key), &json!({"not": "a batch"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("NOT_A_BATCH"))
    );
    assert!(f.sink.0.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unreadable_key_store_answers_503_misconfigured() {
    let f = fixture();
    std::fs::write(f.dir.path().join("keys.json"), "{not json").unwrap();
    let (status, headers, body) = post_json(&f.app, Some(&f.key), &json!([event("acme", 1)])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        json!({"ok": false, "code": "MISCONFIGURED", "message": body["message"]})
    );
    assert_security_headers(&headers);
}

#[tokio::test]
async fn cors_allows_only_listed_origin_patterns() {
    let f = fixture();
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/events")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "x-api-key,content-type")
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = send(&f.app, preflight("https://uni.moodle.example")).await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://uni.moodle.example"
    );
    assert!(
        headers.get_all("vary").iter().any(|v| v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("origin"))
    );
    for denied in [
        "https://moodle.example",
        "https://a.b.moodle.example",
        "https://evil.example",
        "http://uni.moodle.example",
    ] {
        let (_, headers, _) = send(&f.app, preflight(denied)).await;
        assert!(
            headers.get("access-control-allow-origin").is_none(),
            "{denied}"
        );
        assert!(
            headers.get_all("vary").iter().count() > 0,
            "Vary on every answer"
        );
    }
}

#[test]
fn origin_patterns_match_one_label_per_star() {
    assert!(origin_matches(
        "https://*.moodle.example",
        "https://uni.moodle.example"
    ));
    assert!(!origin_matches(
        "https://*.moodle.example",
        "https://a.b.moodle.example"
    ));
    assert!(!origin_matches(
        "https://*.moodle.example",
        "https://moodle.example"
    ));
    assert!(origin_matches("https://lms.example", "https://LMS.example"));
    assert!(!origin_matches(
        "https://lms.example",
        "https://lms.example.evil"
    ));
}

// --- the xAPI Statement Resource (`/xapi`) ---

/// Basic credentials as LRS clients send them: key id and key.
fn basic(f: &Fixture) -> String {
    let id = &f.keys.list().unwrap()[0].id;
    let pair = format!("{id}:{}", f.key);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn xapi_request(f: &Fixture, method: Method, uri: &str, body: &Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("authorization", basic(f))
        .header(VERSION_HEADER, "1.0.3")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn statement(id: Option<&str>, verb: &str) -> Value {
    let mut s = json!({
        "actor": {"objectType": "Agent", "mbox": "mailto:ann@example.org"},
        "verb": {"id": format!("http://adlnet.gov/expapi/verbs/{verb}"), "display": {"en-US": verb}},
        "object": {"id": "https://lms.example/quiz/3"},
    });
    if let Some(id) = id {
        s["id"] = json!(id);
    }
    s
}

const ID: &str = "3f0c8a2e-6c1b-4f7d-9a5e-2b8c1d0e4f6a";

use base64::Engine;

#[tokio::test]
async fn lrs_post_answers_the_ids_and_sets_stored_and_authority() {
    let f = fixture();
    let body = json!([statement(Some(ID), "passed"), statement(None, "attempted")]);
    let (status, headers, ids) = send(
        &f.app,
        xapi_request(&f, Method::POST, "/xapi/statements", &body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ids}");
    assert_eq!(headers[VERSION_HEADER], "1.0.3");
    assert_security_headers(&headers);
    let ids = ids.as_array().unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ID);
    assert!(crate::xapi::rules::is_uuid(ids[1].as_str().unwrap()));
    let written = f.sink.0.lock().unwrap().clone();
    assert_eq!(written.len(), 2);
    assert!(
        written
            .iter()
            .all(|w| w.topic == "ingest.xapi" && w.tenant == "acme")
    );
    let stored: Value = serde_json::from_slice(&written[1].value).unwrap();
    assert_eq!(stored["id"], ids[1]);
    assert!(stored["stored"].is_string());
    assert_eq!(
        stored["authority"]["account"]["homePage"],
        AUTHORITY_HOME_PAGE
    );
    assert_eq!(
        stored["authority"]["account"]["name"],
        f.keys.list().unwrap()[0].id.as_str()
    );
}

#[tokio::test]
async fn lrs_same_id_same_content_is_a_no_op_and_different_content_conflicts() {
    let f = fixture();
    let post = |body: Value| xapi_request(&f, Method::POST, "/xapi/statements", &body);
    let (status, ..) = send(&f.app, post(statement(Some(ID), "passed"))).await;
    assert_eq!(status, StatusCode::OK);
    // Same statement, keys reordered, with a client-set `stored`: the same content.
    let mut again = statement(Some(ID), "passed");
    again["stored"] = json!("2020-01-01T00:00:00Z");
    let (status, _, ids) = send(&f.app, post(again)).await;
    assert_eq!((status, ids), (StatusCode::OK, json!([ID])));
    assert_eq!(
        f.sink.0.lock().unwrap().len(),
        1,
        "a re-send writes nothing"
    );

    let (status, headers, body) = send(&f.app, post(statement(Some(ID), "failed"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_security_headers(&headers);
    assert_eq!(headers[VERSION_HEADER], "1.0.3");
    assert_eq!(
        f.sink.0.lock().unwrap().len(),
        1,
        "nothing written on conflict"
    );
}

#[tokio::test]
async fn lrs_put_needs_a_statement_id_and_answers_204() {
    let f = fixture();
    let (status, headers, body) = send(
        &f.app,
        xapi_request(
            &f,
            Method::PUT,
            "/xapi/statements",
            &statement(None, "passed"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "STATEMENT_ID_REQUIRED");
    assert_security_headers(&headers);
    assert!(f.sink.0.lock().unwrap().is_empty());

    let uri = format!("/xapi/statements?statementId={ID}");
    let (status, ..) = send(
        &f.app,
        xapi_request(&f, Method::PUT, &uri, &statement(None, "passed")),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let written = f.sink.0.lock().unwrap().clone();
    let stored: Value = serde_json::from_slice(&written[0].value).unwrap();
    assert_eq!(stored["id"], ID);

    let other = statement(Some("0f0c8a2e-6c1b-4f7d-9a5e-2b8c1d0e4f6a"), "passed");
    let (status, _, body) = send(&f.app, xapi_request(&f, Method::PUT, &uri, &other)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("STATEMENT_ID_MISMATCH"))
    );
}

#[tokio::test]
async fn lrs_requires_the_version_header_and_credentials() {
    let f = fixture();
    let mut request = xapi_request(
        &f,
        Method::POST,
        "/xapi/statements",
        &statement(None, "passed"),
    );
    request.headers_mut().remove(VERSION_HEADER);
    let (status, headers, body) = send(&f.app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "VERSION_REQUIRED");
    assert_security_headers(&headers);

    let mut request = xapi_request(
        &f,
        Method::POST,
        "/xapi/statements",
        &statement(None, "passed"),
    );
    request.headers_mut().remove("authorization");
    let (status, headers, _) = send(&f.app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_security_headers(&headers);

    let mut request = xapi_request(
        &f,
        Method::POST,
        "/xapi/statements",
        &statement(None, "passed"),
    );
    let wrong = base64::engine::general_purpose::STANDARD.encode(format!("someone:{}", f.key));
    request
        .headers_mut()
        .insert("authorization", format!("Basic {wrong}").parse().unwrap());
    let (status, _, body) = send(&f.app, request).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("KEY_ID_MISMATCH"))
    );
    assert!(f.sink.0.lock().unwrap().is_empty());

    let about = Request::get("/xapi/about").body(Body::empty()).unwrap();
    let (status, headers, body) = send(&f.app, about).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[VERSION_HEADER], "1.0.3");
    assert_eq!(body["version"][0], "1.0.3");
}

#[tokio::test]
async fn lrs_batch_with_an_invalid_statement_is_refused_whole_and_the_reject_goes_to_the_topic() {
    let f = fixture();
    let mut bad = statement(None, "passed");
    bad["context"] = json!({"instructor": {"mbox": "ann@example.org"}});
    let body = json!([statement(None, "passed"), bad.clone()]);
    let (status, headers, answer) = send(
        &f.app,
        xapi_request(&f, Method::POST, "/xapi/statements", &body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_security_headers(&headers);
    assert_eq!(answer["code"], "XAPI_INVALID_CONTEXT");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("statement 1") && message.contains("context.instructor.mbox"),
        "{message}"
    );
    assert!(
        !message.contains("ann@example.org"),
        "no values in errors: {message}"
    );
    let written = f.sink.0.lock().unwrap().clone();
    assert_eq!(
        written.len(),
        1,
        "only the reject, for the dead-letter topic"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&written[0].value).unwrap(),
        bad
    );
}

#[tokio::test]
async fn lrs_accepts_old_and_future_timestamps() {
    let f = fixture();
    let year = 365 * 86_400_000_i64;
    let format = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    for at in [now_ms() - 2 * year, now_ms() + 86_400_000] {
        let mut s = statement(None, "passed");
        s["timestamp"] = json!(format(at));
        let (status, _, body) = send(
            &f.app,
            xapi_request(&f, Method::POST, "/xapi/statements", &s),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(f.sink.0.lock().unwrap().len(), 2);
}
