//! A real xAPI client no one here wrote (`@xapi/xapi` from the npm registry,
//! configured as its users configure it for an LRS: endpoint, key, secret)
//! sends statements to the collector's `/xapi` resource; they arrive in
//! `protected`, old and future timestamps included.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use trellis_records::ProtectedEvent;
use trellis_replay_tests::{Stack, repo_root};
use trellis_runtime::schema::{AvroDecoder, registry_settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_xapi_client_sends_statements_that_reach_protected() {
    let install = Command::new(repo_root().join("ops/install-xapi-client"))
        .output()
        .expect("ops/install-xapi-client runs");
    assert!(install.status.success(), "{install:?}");
    let client_dir = String::from_utf8(install.stdout)
        .unwrap()
        .trim()
        .to_string();

    let stack = Stack::start().await;
    let http = stack.http_collector();
    let (key_id, key) = http.create_key("acme-learning");
    let mut collector = http.spawn(&stack);
    trellis_replay_tests::wait_for_port(http.http_port, Duration::from_secs(60)).await;
    collector.wait_owner(Duration::from_secs(60)).await;

    let endpoint = format!("http://127.0.0.1:{}/xapi/", http.http_port);
    let sent = Command::new("node")
        .arg(format!("{client_dir}/send.mjs"))
        .args([&endpoint, &key_id, &key])
        .output()
        .expect("node runs");
    assert!(
        sent.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&sent.stderr),
        collector.log_text()
    );
    let answer: serde_json::Value = serde_json::from_slice(&sent.stdout).unwrap();
    assert_eq!(answer["about"][0], "1.0.3");
    let ids: BTreeSet<String> = answer["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{answer}");

    let mut privacy = stack.spawn_privacy(&[]);
    collector
        .wait_caught_up(
            &trellis_replay_tests::end_offsets(&stack.kafka, "ingest.xapi").unwrap(),
            Duration::from_secs(60),
        )
        .await;
    privacy
        .wait_caught_up(
            &trellis_replay_tests::end_offsets(&stack.kafka, "collected").unwrap(),
            Duration::from_secs(60),
        )
        .await;

    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let mut protected = Vec::new();
    for (_, value) in stack.read("protected").records {
        let event: ProtectedEvent = decoder.decode(value.as_deref().unwrap()).await.unwrap();
        protected.push(event);
    }
    let arrived: BTreeSet<String> = protected.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(
        arrived, ids,
        "every statement the client sent is in `protected`"
    );
    assert!(protected.iter().all(|e| e.tenant_id == "acme-learning"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day = 86_400_000;
    assert!(
        protected.iter().any(|e| e.occurred_at < now - 700 * day),
        "the statement from two years ago keeps its time"
    );
    assert!(
        protected.iter().any(|e| e.occurred_at > now + day / 2),
        "the statement from tomorrow keeps its time"
    );
    assert!(stack.read("dlq").records.is_empty(), "nothing rejected");
    assert!(privacy.terminate().success());
    assert!(collector.terminate().success());
}
