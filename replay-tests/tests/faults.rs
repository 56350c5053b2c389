//! Faults that must never halt or misroute: poison records, a registry that
//! is down, a broker that stops answering, a state store from another log,
//! and crashes at the commit boundaries (fail points).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sha2::{Digest, Sha256};
use trellis_kit::demo::{self, DemoSpec, Manifest};
use trellis_records::{CollectedEvent, DeadLetter};
use trellis_replay_tests::{
    Broker, Process, Stack, collector_secrets, copy_dir, end_offsets, free_port,
};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::producer_config;
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::state::StateStore;

const INGEST: &[&str] = &["ingest.events", "ingest.xapi"];

fn spawn_privacy(stack: &Stack) -> Process {
    stack.spawn_privacy(&[])
}

/// Ends of every partition of `topics`, read from the log.
fn ends(stack: &Stack, topics: &[&str]) -> BTreeMap<String, i64> {
    topics
        .iter()
        .flat_map(|t| end_offsets(&stack.kafka, t).expect("end offsets"))
        .collect()
}

/// A producer that may send records larger than librdkafka's default
/// limit, as an upstream producer with a raised limit does.
fn big_producer(stack: &Stack) -> FutureProducer {
    let mut kafka = KafkaConfig::new(stack.broker.bootstrap.clone());
    kafka
        .client
        .insert("message.max.bytes".into(), "3000000".into());
    producer_config(&kafka, None).create().expect("producer")
}

async fn send(producer: &FutureProducer, topic: &str, partition: i32, value: &[u8]) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "tenant",
        value: Some(b"northwind-uni"),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key("northwind-uni|poison")
                .partition(partition)
                .payload(value)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .expect("broker took the record");
}

/// 3,000 kinds of garbage, deterministic.
fn garbage(i: usize) -> Vec<u8> {
    match i % 6 {
        0 => (0..(i % 300 + 1)).map(|j| (j * 31 + i * 7) as u8).collect(),
        1 => br#"{"id":"6f1c1a9e-8d3b-4a57-9e8e-0c1d2b3a4f50","actor":{"mbox":"mailto:a@b.c"#
            .to_vec(),
        2 => {
            let mut deep = vec![b'['; 100_000];
            deep.extend(vec![b']'; 100_000]);
            deep
        }
        3 => br#"{"actor":{"name":"\ud800\udZZZ"},"verb":{"id":"x"}}"#.to_vec(),
        4 => br#"{"actor":5,"verb":[],"object":"nope","timestamp":12}"#.to_vec(),
        _ => br#"{"event_id":17,"tenant_id":["x"],"occurred_at":"soon"}"#.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_never_stop_the_collector_and_every_record_is_accounted_for() {
    // Records above 1 MB, as an upstream whose broker allows them sends:
    // tansu takes them, nisshi refuses them as Kafka does by default.
    let stack = Stack::start_on(Broker::start_memory(), true).await;
    let big = big_producer(&stack);
    let huge: Vec<u8> = (0..2_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let just_over: Vec<u8> = vec![b'{'; trellis_runtime::producer::DEFAULT_MAX_MESSAGE_BYTES + 100];
    send(&big, "ingest.xapi", 0, &huge).await;
    send(&big, "ingest.xapi", 1, &just_over).await;
    for i in 0..3_000 {
        let topic = INGEST[i % 2];
        send(&big, topic, (i % 6) as i32, &garbage(i)).await;
    }
    // Valid traffic behind the poison.
    let manifest = demo::produce(
        &stack.producer(),
        DemoSpec {
            events: 2_000,
            malformed: 0.0,
            duplicates: 0.0,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    let ends = ends(&stack, INGEST);
    let sent: i64 = ends.values().sum();
    assert_eq!(sent, 3_002 + 2_000);

    let started = Instant::now();
    let mut collector = stack.spawn("collector", "{}", &collector_secrets());
    collector
        .wait_caught_up(&ends, Duration::from_secs(120))
        .await;
    eprintln!("caught up on {sent} records in {:?}", started.elapsed());

    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let collected: BTreeSet<String> = stack
        .read("collected")
        .records
        .into_iter()
        .filter_map(|(id, _)| id)
        .collect();
    assert_eq!(collected, manifest.valid, "every valid event, once");
    let mut letters = BTreeMap::new();
    for (_, value) in stack.read("dlq").records {
        let letter: DeadLetter = decoder.decode(&value.unwrap()).await.unwrap();
        letters.insert(letter.id.clone(), letter);
    }
    assert_eq!(
        collected.len() + letters.len(),
        sent as usize,
        "collected + dlq account for every record sent"
    );
    for (id, original) in [("ingest.xapi/0/0", &huge), ("ingest.xapi/1/0", &just_over)] {
        let letter = letters
            .get(id)
            .unwrap_or_else(|| panic!("{id} dead-lettered"));
        assert_eq!(letter.reason, "TOO_LARGE");
        assert!(letter.truncated, "{id} flagged truncated");
        assert_eq!(letter.original_value_length, Some(original.len() as i64));
        assert_eq!(
            letter.original_value_sha256.as_deref(),
            Some(hex::encode(Sha256::digest(original)).as_str())
        );
        let prefix = letter.original_value.as_deref().unwrap();
        assert!(!prefix.is_empty() && original.starts_with(prefix));
    }
    assert!(
        letters.values().filter(|l| l.truncated).count() == 2,
        "only the oversized originals are cut"
    );
    assert_eq!(
        collector
            .metric("trellis_errors_total{code=\"kafka_produce\"}")
            .await,
        0.0
    );
    let status = collector.terminate();
    assert!(status.success(), "collector stayed up: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_pauses_processing_and_dead_letters_nothing() {
    let mut stack = Stack::start().await;
    let mut collector = stack.spawn("collector", "{}", &collector_secrets());
    let mut privacy = spawn_privacy(&stack);
    let mut progress = stack.spawn("progress", "{}", &[]);
    for p in [&collector, &privacy, &progress] {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Logged by the loop itself, after every output schema is registered.
        while !p.log_text().contains("state store up to date") {
            assert!(Instant::now() < deadline, "{} did not start", p.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Nothing has reached privacy or progress yet: the writer schemas of
    // `collected` and `protected` are unknown to them when the registry goes.
    stack.stop_registry().await;
    let outage = Instant::now();
    let manifest = demo::produce(
        &stack.producer(),
        DemoSpec {
            events: 1_000,
            malformed: 0.0,
            duplicates: 0.0,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(60))
        .await;
    while outage.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        privacy
            .metric("trellis_errors_total{code=\"registry_unavailable\"}")
            .await
            > 0.0,
        "privacy waited on the registry:\n{}",
        privacy.log_text()
    );
    assert_eq!(
        privacy.position(&["collected"]).await,
        0,
        "nothing applied meanwhile"
    );
    stack.restart_registry().await;

    let collected = ends(&stack, &["collected"]);
    privacy
        .wait_caught_up(&collected, Duration::from_secs(90))
        .await;
    let protected = ends(&stack, &["protected"]);
    progress
        .wait_caught_up(&protected, Duration::from_secs(90))
        .await;
    assert!(
        stack.read("dlq").records.is_empty(),
        "no valid record dead-lettered"
    );
    let protected_ids: BTreeSet<String> = stack
        .read("protected")
        .records
        .into_iter()
        .filter_map(|(id, _)| id)
        .collect();
    assert_eq!(protected_ids.len(), manifest.valid.len());
    for p in [&mut collector, &mut privacy, &mut progress] {
        assert_eq!(p.metric("trellis_dlq_records_total").await, 0.0);
        assert!(p.terminate().success(), "{} stayed up", p.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_broker_loses_and_doubles_nothing_and_processors_resume_by_themselves() {
    let stack = Stack::start().await;
    let mut collector = stack.spawn("collector", "{}", &collector_secrets());
    let mut privacy = spawn_privacy(&stack);
    let producer = stack.producer();
    let production = tokio::spawn(async move {
        demo::produce(
            &producer,
            DemoSpec {
                events: 12_000,
                malformed: 0.02,
                duplicates: 0.01,
                rate: Some(1_000),
                ..DemoSpec::default()
            },
        )
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while privacy.position(&["collected"]).await < 1_000 {
        assert!(Instant::now() < deadline, "no progress before the freeze");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.broker.freeze();
    tokio::time::sleep(Duration::from_secs(30)).await;
    stack.broker.thaw();
    let manifest: Manifest = production.await.unwrap().unwrap();

    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(120))
        .await;
    let collected_ends = ends(&stack, &["collected"]);
    privacy
        .wait_caught_up(&collected_ends, Duration::from_secs(120))
        .await;
    // No process died, so nothing may be written twice, even with the same
    // id: each topic's records counted by id, every count 1.
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let mut collected: BTreeMap<String, usize> = BTreeMap::new();
    for (id, value) in stack.read("collected").records {
        let event: CollectedEvent = decoder.decode(&value.unwrap()).await.unwrap();
        assert_eq!(
            id.unwrap(),
            format!("{}/{}", event.tenant_id, event.event_id)
        );
        *collected
            .entry(format!("{}/{}", event.tenant_id, event.event_id))
            .or_default() += 1;
    }
    let once = |ids: &BTreeSet<String>| -> BTreeMap<String, usize> {
        ids.iter().map(|id| (id.clone(), 1)).collect()
    };
    assert_eq!(
        collected,
        once(&manifest.valid),
        "nothing lost, nothing doubled"
    );
    assert_eq!(
        ids_counted(&stack, "protected"),
        once(&manifest.valid),
        "every event protected once"
    );
    assert_eq!(
        ids_counted(&stack, "dlq"),
        once(&manifest.rejected.keys().cloned().collect()),
        "only the malformed records are dead letters, each once"
    );
    assert!(collector.terminate().success());
    assert!(privacy.terminate().success());
}

/// A topic's records counted by their `trellis.id`.
fn ids_counted(stack: &Stack, topic: &str) -> BTreeMap<String, usize> {
    stack.read(topic).id_counts().into_iter().collect()
}

/// Runs the collector over 3,000 events until the store is built, then
/// stops it; returns the stack, the manifest and the store's directory.
async fn built_collector_store(stack: &Stack) -> Manifest {
    let manifest = demo::produce(
        &stack.producer(),
        DemoSpec {
            events: 3_000,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    let mut collector = stack.spawn("collector", "{}", &collector_secrets());
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(60))
        .await;
    assert!(collector.terminate().success());
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_built_from_another_clusters_log_is_refused_naming_the_fix() {
    let first = Stack::start().await;
    built_collector_store(&first).await;
    let second = Stack::start().await;
    copy_dir(
        &first.state_dir("collector"),
        &second.state_dir("collector"),
    );
    let mut collector = second.spawn("collector", "{}", &collector_secrets());
    let status = collector.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(78), "{}", collector.log_text());
    let log = collector.log_text();
    assert!(
        log.contains("was built from the log of Kafka cluster") && log.contains("--rebuild"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_ahead_of_a_log_that_lost_its_records_is_reported_loudly() {
    let cluster = format!("lost-log-{}", free_port());
    let first = Stack::start_on(trellis_replay_tests::Broker::start_as(&cluster), true).await;
    built_collector_store(&first).await;
    // The same cluster, its memory storage gone: the store's positions now
    // lie beyond the end of every partition.
    let second = Stack::start_on(trellis_replay_tests::Broker::start_as(&cluster), true).await;
    copy_dir(
        &first.state_dir("collector"),
        &second.state_dir("collector"),
    );
    let collector = second.spawn("collector", "{}", &collector_secrets());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stuck = collector
            .metric("trellis_partition_stuck{reason=\"position_beyond_log_end\"}")
            .await;
        let log = collector.log_text();
        if stuck > 0.0 && log.contains("beyond the end of the log") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no loud report of a store ahead of the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Crash at fail point `point`, restart, and check the outcome equals a
/// clean run: every valid event once in `collected`, re-emitted records
/// byte-identical, and the store's digest equal to a rebuild by replay.
async fn crash_at(point: &str) {
    let stack = Stack::start().await;
    let manifest = demo::produce(
        &stack.producer(),
        DemoSpec {
            events: 6_000,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    let mut secrets = collector_secrets();
    secrets.push((trellis_runtime::failpoint::ENV, format!("{point}@3")));
    let mut crashing = stack.spawn("collector", "{}", &secrets);
    let status = crashing.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the fail point fired: {status}");
    assert!(
        crashing
            .log_text()
            .contains(&format!("fail point `{point}` reached")),
        "{}",
        crashing.log_text()
    );
    let mut collector = stack.spawn("collector", "{}", &collector_secrets());
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(90))
        .await;
    assert!(collector.terminate().success());

    let contents = stack.read("collected");
    let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (id, value) in contents.records {
        let (id, value) = (id.unwrap(), value.unwrap());
        if let Some(first) = by_id.get(&id) {
            assert_eq!(first, &value, "a re-emitted record equals the first: {id}");
        }
        by_id.insert(id, value);
    }
    assert_eq!(
        by_id.keys().cloned().collect::<BTreeSet<_>>(),
        manifest.valid
    );
    let recovered = StateStore::open(&stack.state_dir("collector"))
        .unwrap()
        .digest()
        .unwrap();

    let port = free_port();
    let mut rebuilt = Process::spawn(
        "collector",
        &stack.config("collector", port, "{}"),
        port,
        &collector_secrets(),
        stack.dir.path(),
        &["--rebuild"],
    );
    rebuilt
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(90))
        .await;
    assert!(rebuilt.terminate().success());
    let clean = StateStore::open(&stack.state_dir("collector"))
        .unwrap()
        .digest()
        .unwrap();
    assert_eq!(
        recovered, clean,
        "state after the crash equals a clean rebuild"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_outputs_are_durable_before_the_state_commit_recovers_exactly() {
    crash_at(trellis_runtime::failpoint::OUTPUTS_DURABLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_the_state_commit_before_the_offset_commit_recovers_exactly() {
    crash_at(trellis_runtime::failpoint::STATE_COMMITTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_id_the_registry_does_not_know_is_dead_lettered_as_unknown_schema() {
    let stack = Stack::start().await;
    // Wire format with schema id 9999, which this registry never issued.
    let value = [&[0u8, 0, 0, 0x27, 0x0f][..], b"\x02\x04ab"].concat();
    send(&stack.producer(), "collected", 0, &value).await;
    let mut privacy = spawn_privacy(&stack);
    privacy
        .wait_caught_up(&ends(&stack, &["collected"]), Duration::from_secs(60))
        .await;
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let letters = stack.read("dlq").records;
    assert_eq!(letters.len(), 1, "{}", privacy.log_text());
    let letter: DeadLetter = decoder
        .decode(letters[0].1.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(letter.reason, "UNKNOWN_SCHEMA", "{}", letter.detail);
    assert_eq!(letter.original_value.as_deref(), Some(&value[..]));
    assert!(privacy.terminate().success());
}
