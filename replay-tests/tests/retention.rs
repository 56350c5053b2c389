//! On the durable broker, retention removes data: a restricted topic's
//! records older than its `retention.ms` are gone, so the erasure answer's
//! "until retention removes them" is true.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use trellis_replay_tests::{Broker, Produced, Stack};
use trellis_runtime::kafka::client_config;
use trellis_runtime::topology::Classification;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_topics_records_older_than_its_retention_are_gone() {
    let Some(broker) = Broker::durable_or_skip("retention on the durable broker") else {
        return;
    };
    let mut stack = Stack::start_on(broker, false).await;
    // The topology as declared, but `ingest.events` (restricted, 1 day)
    // keeps records 3 s, so a test can wait for it.
    let events = stack.topology.topics.get_mut("ingest.events").unwrap();
    assert_eq!(events.classification, Classification::Restricted);
    events.retention_ms = 3_000;
    trellis_kit::provision::apply(&stack.kafka, &stack.registry_url, &stack.topology, 1)
        .await
        .unwrap();
    let record = |topic: &str, i: usize| Produced {
        topic: topic.to_string(),
        partition: None,
        key: format!("k{i}").into_bytes(),
        value: Some(format!("{{\"n\":{i}}}").into_bytes()),
        id: format!("r{i}"),
        tenant: None,
    };
    let records: Vec<Produced> = (0..100).map(|i| record("ingest.events", i)).collect();
    stack.produce(&records).await;

    let consumer: BaseConsumer = client_config(&stack.kafka).create().unwrap();
    let watermarks = |p: i32| {
        consumer
            .fetch_watermarks("ingest.events", p, Duration::from_secs(5))
            .unwrap()
    };
    let partitions = 0..stack.topology.topics["ingest.events"].partitions;
    let written: i64 = partitions.clone().map(|p| watermarks(p).1).sum();
    assert_eq!(written, 100);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let kept: i64 = partitions
            .clone()
            .map(|p| {
                let (low, high) = watermarks(p);
                high - low
            })
            .sum();
        if kept == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{kept} of 100 records still readable 60 s after a 3 s retention"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let left = stack.read("ingest.events");
    assert!(
        left.records.is_empty(),
        "{} records readable",
        left.records.len()
    );
    // A topic without that retention keeps what it was given.
    stack.produce(&[record("ingest.xapi", 0)]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(stack.read("ingest.xapi").records.len(), 1);
}
