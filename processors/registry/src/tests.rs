use std::net::SocketAddr;

use serde_json::{Value, json};

const V1: &str = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"}]}"#;
/// Adds a field with a default: readable by BACKWARD rules.
const V2: &str = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"n","type":"int","default":0}]}"#;
/// Adds a field without a default: the new schema cannot read old data.
const BAD: &str = r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"},{"name":"m","type":"int"}]}"#;

async fn start(dir: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let dir = dir.to_path_buf();
    tokio::spawn(async move {
        super::serve(
            &dir,
            "127.0.0.1:0".parse().unwrap(),
            |a| {
                let _ = addr_tx.send(a);
            },
            async {
                let _ = rx.await;
            },
        )
        .await
        .unwrap();
    });
    (format!("http://{}", addr_rx.await.unwrap()), tx)
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn confluent_subset_with_backward_default_and_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (base, stop) = start(dir.path()).await;
    use reqwest::Method;

    let (s, v) = call(
        Method::POST,
        format!("{base}/subjects/t-value/versions"),
        Some(json!({"schema": V1})),
    )
    .await;
    assert_eq!((s, &v["id"]), (200, &json!(1)));
    // Same schema, different whitespace: same id, no new version.
    let spaced = V1.replace(',', ", ");
    let (_, again) = call(
        Method::POST,
        format!("{base}/subjects/t-value/versions"),
        Some(json!({"schema": spaced})),
    )
    .await;
    assert_eq!(again["id"], json!(1));

    let (s, bad) = call(
        Method::POST,
        format!("{base}/subjects/t-value/versions"),
        Some(json!({"schema": BAD})),
    )
    .await;
    assert_eq!((s, &bad["error_code"]), (409, &json!(409)));
    let (_, compat) = call(
        Method::POST,
        format!("{base}/compatibility/subjects/t-value/versions/latest"),
        Some(json!({"schema": BAD})),
    )
    .await;
    assert_eq!(compat["is_compatible"], json!(false));

    let (_, v2) = call(
        Method::POST,
        format!("{base}/subjects/t-value/versions"),
        Some(json!({"schema": V2})),
    )
    .await;
    assert_eq!(v2["id"], json!(2));
    let (_, latest) = call(
        Method::GET,
        format!("{base}/subjects/t-value/versions/latest"),
        None,
    )
    .await;
    assert_eq!((&latest["version"], &latest["id"]), (&json!(2), &json!(2)));
    let (_, versions) = call(
        Method::GET,
        format!("{base}/subjects/t-value/versions"),
        None,
    )
    .await;
    assert_eq!(versions, json!([1, 2]));
    let (_, found) = call(
        Method::POST,
        format!("{base}/subjects/t-value"),
        Some(json!({"schema": V1})),
    )
    .await;
    assert_eq!(found["version"], json!(1));

    let (s, missing) = call(
        Method::GET,
        format!("{base}/subjects/nope/versions/latest"),
        None,
    )
    .await;
    assert_eq!((s, &missing["error_code"]), (404, &json!(40401)));
    let (s, invalid) = call(
        Method::POST,
        format!("{base}/subjects/x/versions"),
        Some(json!({"schema": "{\"type\":\"recrd\"}"})),
    )
    .await;
    assert_eq!((s, &invalid["error_code"]), (422, &json!(42201)));

    // NONE lets an incompatible schema through for that subject only.
    let (s, _) = call(
        Method::PUT,
        format!("{base}/config/t-value"),
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        Method::POST,
        format!("{base}/subjects/t-value/versions"),
        Some(json!({"schema": BAD})),
    )
    .await;
    assert_eq!(s, 200);
    let (_, global) = call(Method::GET, format!("{base}/config"), None).await;
    assert_eq!(global["compatibilityLevel"], json!("BACKWARD"));

    // Restart on the same directory: ids and versions survive.
    stop.send(()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (base, _stop) = start(dir.path()).await;
    let (_, by_id) = call(Method::GET, format!("{base}/schemas/ids/2"), None).await;
    assert_eq!(
        by_id["schema"].as_str().map(|s| s.contains("\"n\"")),
        Some(true)
    );
    let (_, v1) = call(
        Method::POST,
        format!("{base}/subjects/t-value/versions"),
        Some(json!({"schema": V1})),
    )
    .await;
    assert_eq!(v1["id"], json!(1));
}
