//! The collector on a real broker: nothing lost or doubled across SIGKILLs,
//! state rebuilt by replay to the same digest, metrics that match the log,
//! refusal to start without secrets or topics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use trellis_kit::demo::{self, DemoSpec, Manifest};
use trellis_records::{CollectedEvent, DeadLetter};
use trellis_replay_tests::{BATCH_MAX_RECORDS, Broker, Process, Stack, test_secret};
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::state::StateStore;

const INGEST: &[&str] = &["ingest.events", "ingest.xapi"];

fn secrets() -> Vec<(&'static str, String)> {
    vec![("TRELLIS_INGEST_SIGNING_KEY", test_secret("signing"))]
}

fn spawn_collector(stack: &Stack) -> Process {
    stack.spawn("collector", "{}", &secrets())
}

/// Decodes `collected` and `dlq` and checks them against the manifest:
/// after dropping duplicates by id, every valid event exactly once, every
/// malformed record dead-lettered with its reason. Returns how many raw
/// duplicates `collected` held.
async fn assert_outputs_match(stack: &Stack, manifest: &Manifest) -> usize {
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());

    let collected = stack.read("collected");
    let mut seen = BTreeSet::new();
    for (id, value) in &collected.records {
        let id = id.clone().expect("every record carries trellis.id");
        let event: CollectedEvent = decoder.decode(value.as_deref().unwrap()).await.unwrap();
        assert_eq!(
            id,
            format!("{}/{}", event.tenant_id, event.event_id),
            "id derives from the input"
        );
        seen.insert(id);
    }
    let missing: Vec<_> = manifest.valid.difference(&seen).take(5).collect();
    let unexpected: Vec<_> = seen.difference(&manifest.valid).take(5).collect();
    assert!(missing.is_empty(), "valid events lost: {missing:?}");
    assert!(
        unexpected.is_empty(),
        "events that should not be there: {unexpected:?}"
    );

    let dlq = stack.read("dlq");
    let mut reasons = BTreeMap::new();
    for (id, value) in &dlq.records {
        let letter: DeadLetter = decoder.decode(value.as_deref().unwrap()).await.unwrap();
        assert_eq!(id.as_deref(), Some(letter.id.as_str()));
        if letter.reason != "EMPTY_VALUE" {
            assert!(
                letter
                    .original_value
                    .as_ref()
                    .is_some_and(|v| !v.is_empty()),
                "original bytes kept"
            );
        }
        reasons.insert(letter.id, letter.reason);
    }
    assert_eq!(
        reasons, manifest.rejected,
        "every malformed record dead-lettered with its reason"
    );
    collected.records.len() - seen.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_three_times_mid_stream_loses_nothing_and_doubles_nothing() {
    let stack = Stack::start().await;
    let producer = stack.producer();
    let spec = DemoSpec {
        events: 100_000,
        malformed: 0.02,
        duplicates: 0.01,
        rate: Some(8_000),
        ..DemoSpec::default()
    };
    let production = tokio::spawn(async move { demo::produce(&producer, spec).await });

    let started = std::time::Instant::now();
    let mut collector = spawn_collector(&stack);
    // Each kill lands with input still unread (thresholds below the 100,000
    // sent), usually while events still arrive; on a loaded machine the
    // producer may finish first, which does not weaken what is tested.
    let mut kills = Vec::new();
    for threshold in [15_000, 40_000, 70_000] {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while collector.position(INGEST).await < threshold {
            assert!(
                std::time::Instant::now() < deadline,
                "collector stalled:\n{}",
                collector.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "{:?} kill at position {}",
            started.elapsed(),
            collector.position(INGEST).await
        );
        kills.push(collector.position(INGEST).await);
        collector.kill9();
        collector = spawn_collector(&stack);
    }

    let manifest = production.await.unwrap().unwrap();
    assert_eq!(manifest.sent, 100_000);
    assert!(
        kills.iter().all(|&at| at < manifest.sent as i64),
        "every kill left input unread: {kills:?}"
    );
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(180))
        .await;
    assert!(collector.terminate().success(), "graceful shutdown exits 0");

    let doubled = assert_outputs_match(&stack, &manifest).await;
    eprintln!(
        "raw duplicates in `collected` from crash replays (dropped by id downstream): {doubled}"
    );
    // A kill re-emits at most its in-flight batch; a restart that re-emitted
    // everything since offset 0 would double tens of thousands.
    assert!(
        doubled <= kills.len() * BATCH_MAX_RECORDS,
        "{doubled} raw re-emissions after {} kills (bound: one batch of {BATCH_MAX_RECORDS} each)",
        kills.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_state_store_rebuilds_it_by_replay_to_the_same_digest() {
    let stack = Stack::start().await;
    let manifest = demo::produce(
        &stack.producer(),
        DemoSpec {
            events: 20_000,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    let mut collector = spawn_collector(&stack);
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(120))
        .await;
    assert!(collector.terminate().success());

    let state_dir = stack.state_dir("collector");
    let live = StateStore::open(&state_dir).unwrap().digest().unwrap();
    let outputs_before = stack.read("collected").records.len();

    std::fs::remove_dir_all(&state_dir).unwrap();
    let mut rebuilt = spawn_collector(&stack);
    rebuilt
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(120))
        .await;
    let replayed = rebuilt.metric("trellis_replayed_records_total").await;
    let emitted = rebuilt.metric("trellis_records_out_total").await;
    assert!(rebuilt.terminate().success());
    assert!(
        rebuilt.log_text().contains("state restored by replay"),
        "{}",
        rebuilt.log_text()
    );
    assert_eq!(
        replayed as usize, manifest.sent,
        "every ingest record replayed into state"
    );
    assert_eq!(emitted, 0.0, "a rebuild re-emits nothing");

    let after = StateStore::open(&state_dir).unwrap().digest().unwrap();
    assert_eq!(after, live, "rebuilt state has the live state's digest");
    assert_eq!(stack.read("collected").records.len(), outputs_before);

    // The explicit flag does the same from a populated store.
    let port = trellis_replay_tests::free_port();
    let config = stack.config("collector", port, "{}");
    let mut flagged = Process::spawn(
        "collector",
        &config,
        port,
        &secrets(),
        stack.dir.path(),
        &["--rebuild"],
    );
    flagged
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(120))
        .await;
    assert!(flagged.terminate().success());
    assert_eq!(
        StateStore::open(&state_dir).unwrap().digest().unwrap(),
        live
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_the_log_holds() {
    let stack = Stack::start().await;
    let manifest = demo::produce(
        &stack.producer(),
        DemoSpec {
            events: 20_000,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    let mut collector = spawn_collector(&stack);
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(120))
        .await;
    let metrics = collector.metrics().await;
    assert!(collector.terminate().success());

    let get = |selector: &str| {
        trellis_runtime::metrics::sample(&metrics, selector).unwrap_or(0.0) as usize
    };
    assert_eq!(get("trellis_records_in_total"), manifest.sent);
    assert_eq!(
        get(r#"trellis_records_out_total{processor="collector",topic="collected"}"#),
        manifest.valid.len()
    );
    assert_eq!(
        get(r#"trellis_records_out_total{processor="collector",topic="dlq"}"#),
        manifest.rejected.len()
    );
    assert_eq!(get("trellis_duplicates_dropped_total"), manifest.duplicates);
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in manifest.rejected.values() {
        *by_reason.entry(reason).or_default() += 1;
    }
    for (reason, count) in by_reason {
        assert_eq!(
            get(&format!(
                r#"trellis_dlq_records_total{{processor="collector",reason="{reason}"}}"#
            )),
            count,
            "{reason}"
        );
    }
    let doubled = assert_outputs_match(&stack, &manifest).await;
    assert_eq!(doubled, 0, "without crashes nothing is written twice");
    assert!(metrics.contains("trellis_batch_latency_seconds_bucket"));
    // Batches spent time waiting for input (at least the last, until its
    // deadline), processing, saving the dedup window, waiting for their
    // acknowledgements and committing.
    for phase in ["input", "process", "flush", "deliver", "commit"] {
        let seconds = trellis_runtime::metrics::sample(
            &metrics,
            &format!(r#"trellis_batch_seconds_total{{phase="{phase}"}}"#),
        );
        assert!(seconds.is_some_and(|s| s > 0.0), "{phase}: {seconds:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_secret_stops_the_collector_naming_it() {
    let stack = Stack::start_with(false).await;
    let port = trellis_replay_tests::free_port();
    let config = stack.config("collector", port, "{}");

    let mut missing = Process::spawn("collector", &config, port, &[], stack.dir.path(), &[]);
    let status = missing.wait_exit(Duration::from_secs(20));
    let log = missing.log_text();
    assert_eq!(status.code(), Some(78), "{log}");
    assert!(
        log.contains("missing secret TRELLIS_INGEST_SIGNING_KEY"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    let bad = "definitely-not-a-hex-key";
    let mut malformed = Process::spawn(
        "collector",
        &config,
        port,
        &[("TRELLIS_INGEST_SIGNING_KEY", bad.to_string())],
        stack.dir.path(),
        &[],
    );
    let status = malformed.wait_exit(Duration::from_secs(20));
    let log = malformed.log_text();
    assert_eq!(status.code(), Some(78), "{log}");
    assert!(
        log.contains("malformed secret TRELLIS_INGEST_SIGNING_KEY"),
        "{log}"
    );
    assert!(!log.contains(bad), "the value must never be printed: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_when_its_topics_are_missing() {
    let stack = Stack::start_with(false).await;
    let mut collector = spawn_collector(&stack);
    let status = collector.wait_exit(Duration::from_secs(30));
    let log = collector.log_text();
    assert_eq!(status.code(), Some(78), "{log}");
    assert!(
        log.contains("topics missing on the broker: collected, dlq, ingest.events, ingest.xapi"),
        "{log}"
    );
}

/// The HTTP front door end to end: a key made with the CLI, an event posted
/// with a request id that reaches `collected` carrying it, a revocation that
/// takes effect on the next request without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_reaches_collected_and_revocation_is_immediate() {
    let stack = Stack::start().await;
    let http = stack.http_collector();
    let cli = |args: &[&str]| http.cli(args);
    let (id, key) = http.create_key("acme-learning");
    assert!(cli(&["api-key", "list"]).contains(&id));
    assert!(
        !cli(&["api-key", "list"]).contains(&key),
        "lists never show keys"
    );

    let mut collector = http.spawn(&stack);
    collector.wait_owner(Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/events", http.http_port);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batch = serde_json::json!([{
        "event_id": "0b8e2f4c-5d6a-4b7c-8d9e-0f1a2b3c4d5e",
        "tenant_id": "acme-learning",
        "source": "app",
        "kind": "app.event",
        "occurred_at": now - 500,
        "actor": {"user_id": "77"},
        "verb": "app.lesson_opened",
        "data": {},
    }]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let response = loop {
        match client
            .post(&url)
            .header("x-api-key", &key)
            .header("x-request-id", "req-e2e-1")
            .json(&batch)
            .send()
            .await
        {
            Ok(response) => break response,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no HTTP ingest: {e}\n{}",
                    collector.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-request-id"], "req-e2e-1");

    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let ends = trellis_replay_tests::end_offsets(&stack.kafka, "ingest.events").unwrap();
    collector
        .wait_caught_up(&ends, Duration::from_secs(60))
        .await;
    let collected = stack.read("collected");
    assert_eq!(collected.records.len(), 1);
    let event: CollectedEvent = decoder
        .decode(collected.records[0].1.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(event.tenant_id, "acme-learning");
    assert_eq!(event.request_id.as_deref(), Some("req-e2e-1"));
    assert!(
        collector.log_text().contains("req-e2e-1"),
        "the request id is in the logs"
    );
    // ... and in the logs of the next processor the event passes through.
    let mut privacy = stack.spawn_privacy(&[]);
    privacy
        .wait_caught_up(
            &trellis_replay_tests::end_offsets(&stack.kafka, "collected").unwrap(),
            Duration::from_secs(60),
        )
        .await;
    assert!(
        privacy.log_text().contains("req-e2e-1"),
        "{}",
        privacy.log_text()
    );
    assert!(privacy.terminate().success());

    cli(&["api-key", "revoke", "--id", &id]);
    let response = client
        .post(&url)
        .header("x-api-key", &key)
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(collector.terminate().success());
    // Both key changes are security events on the audited topic.
    let audited = stack.read("audit.events").id_counts();
    for action in ["api_key.created", "api_key.revoked"] {
        let event_id = format!("api_key/{id}/{action}");
        assert_eq!(
            audited.get(&event_id),
            Some(&1),
            "{event_id} on audit.events"
        );
    }
}

/// The index of the one instance among `fleet` that owns the state, once
/// exactly one does (`trellis_state_owner`), with how long that took.
async fn wait_for_owner(fleet: &[Option<Process>], timeout: Duration) -> usize {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut owners = Vec::new();
        for (i, process) in fleet.iter().enumerate() {
            if let Some(process) = process
                && process.metric("trellis_state_owner").await == 1.0
            {
                owners.push(i);
            }
        }
        if let [owner] = owners[..] {
            return owner;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no single owner after {timeout:?} (owners: {owners:?}):\n{}",
            fleet
                .iter()
                .flatten()
                .map(|p| p.log_text())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_hands_over_when_the_owner_is_killed_and_a_late_joiner_stands_by() {
    // tansu 0.6 never settles a group of three static members (no member
    // is ever assigned anything): fleets need nisshi.
    let Some(broker) = Broker::durable_or_skip("a fleet of collectors") else {
        return;
    };
    let stack = Stack::start_on(broker, true).await;
    let mut fleet: Vec<Option<Process>> = ["a", "b", "c"]
        .iter()
        .map(|i| Some(stack.spawn_instance("collector", i, "{}", &secrets())))
        .collect();
    let first = wait_for_owner(&fleet, Duration::from_secs(60)).await;

    let producer = stack.producer();
    let spec = DemoSpec {
        events: 30_000,
        malformed: 0.02,
        duplicates: 0.01,
        rate: Some(3_000),
        ..DemoSpec::default()
    };
    let production = tokio::spawn(async move { demo::produce(&producer, spec).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while fleet[first].as_ref().unwrap().position(INGEST).await < 8_000 {
        let owner = fleet[first].as_ref().unwrap();
        assert!(
            std::time::Instant::now() < deadline,
            "the owner stalled at {}:\n{}",
            owner.position(INGEST).await,
            owner.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = fleet[first].as_ref().unwrap().position(INGEST).await;
    fleet[first].take().unwrap().kill9();
    let killed = std::time::Instant::now();
    let second = wait_for_owner(&fleet, Duration::from_secs(60)).await;
    eprintln!(
        "failover: instance {second} owns the state {:?} after instance {first} was killed at position {killed_at}",
        killed.elapsed()
    );
    // A late joiner stands by: the lease stays where it is.
    fleet.push(Some(stack.spawn_instance(
        "collector",
        "d",
        "{}",
        &secrets(),
    )));

    let manifest = production.await.unwrap().unwrap();
    assert!(
        killed_at < manifest.sent as i64,
        "the kill left input unread"
    );
    let owner = fleet[second].as_mut().unwrap();
    owner
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(180))
        .await;
    assert_eq!(wait_for_owner(&fleet, Duration::from_secs(5)).await, second);
    let joiner = fleet[3].as_ref().unwrap();
    assert_eq!(joiner.metric("trellis_state_owner").await, 0.0);
    assert_eq!(joiner.metric("trellis_records_in_total").await, 0.0);

    // As one instance would have: every valid event once after dedup by
    // id, every malformed one dead-lettered, and a record emitted twice
    // (the killed owner's last batch) is the same record both times.
    let doubled = assert_outputs_match(&stack, &manifest).await;
    assert!(doubled <= BATCH_MAX_RECORDS, "{doubled} re-emissions");
    let mut values: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (id, value) in stack.read("collected").records {
        let (id, value) = (id.unwrap(), value.unwrap());
        if let Some(earlier) = values.insert(id.clone(), value.clone()) {
            assert_eq!(earlier, value, "{id} emitted twice with different values");
        }
    }
    for process in fleet.iter_mut().flatten() {
        assert!(process.terminate().success(), "{}", process.log_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_copy_with_the_same_instance_id_fences_the_first_which_stops() {
    let Some(broker) = Broker::durable_or_skip("fencing a second copy") else {
        return;
    };
    let stack = Stack::start_on(broker, true).await;
    let mut fleet = vec![Some(stack.spawn_instance(
        "collector",
        "a",
        "{}",
        &secrets(),
    ))];
    assert_eq!(wait_for_owner(&fleet, Duration::from_secs(60)).await, 0);
    // The same settings on another machine (its own disk): the same
    // instance id, another state directory.
    fleet.push(Some(stack.spawn_copy(
        "collector",
        "a",
        "a-copy",
        "{}",
        &secrets(),
    )));
    let status = fleet[0]
        .as_mut()
        .unwrap()
        .wait_exit(Duration::from_secs(60));
    let log = fleet[0].as_ref().unwrap().log_text();
    assert_eq!(status.code(), Some(78), "{log}");
    assert!(
        log.contains("fenced by the consumer group") && log.contains("collector-a"),
        "{log}"
    );
    fleet[0] = None;
    // The copy carries on as the owner.
    assert_eq!(wait_for_owner(&fleet, Duration::from_secs(60)).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_broker_killed_mid_stream_and_restarted_loses_and_doubles_nothing() {
    let Some(broker) = Broker::durable_or_skip("a broker restart mid-stream") else {
        return;
    };
    let mut stack = Stack::start_on(broker, true).await;
    let producer = stack.producer();
    let spec = DemoSpec {
        events: 30_000,
        malformed: 0.02,
        duplicates: 0.01,
        ..DemoSpec::default()
    };
    let manifest = demo::produce(&producer, spec).await.unwrap();
    let mut collector = stack.spawn_instance("collector", "a", "{}", &secrets());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while collector.position(INGEST).await < 10_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "collector stalled:\n{}",
            collector.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = collector.position(INGEST).await;
    stack.broker.kill_and_restart();
    eprintln!("broker killed and restarted with the collector at {killed_at}");
    assert!(killed_at < manifest.sent as i64, "input left unread");
    // Every record the broker acknowledged survived it; the collector waits
    // the outage out and finishes.
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(180))
        .await;
    let doubled = assert_outputs_match(&stack, &manifest).await;
    assert!(doubled <= BATCH_MAX_RECORDS, "{doubled} re-emissions");
    assert_eq!(
        collector.metric("trellis_dlq_records_total").await as usize,
        manifest.rejected.len(),
        "no valid record turned into a dead letter by the outage"
    );
    assert!(collector.terminate().success(), "{}", collector.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_serves_http_ingest_so_a_replay_elsewhere_is_refused() {
    let Some(broker) = Broker::durable_or_skip("HTTP ingest in a fleet") else {
        return;
    };
    let stack = Stack::start_on(broker, true).await;
    // Two instances on one key file, each with its own port, id and state.
    let mut fleet = Vec::new();
    let mut ports = Vec::new();
    let mut key = String::new();
    for instance in ["a", "b"] {
        let http = stack.http_collector();
        if key.is_empty() {
            key = http.create_key("acme-learning").1;
        }
        let mut secrets = trellis_replay_tests::collector_secrets();
        secrets.push((
            "TRELLIS__KAFKA__INSTANCE_ID",
            format!("collector-{instance}"),
        ));
        secrets.push((
            "TRELLIS__STATE_DIR",
            stack
                .state_dir(&format!("collector-{instance}"))
                .display()
                .to_string(),
        ));
        // Its own copy: the next instance's config is written to the same path.
        let config = stack
            .dir
            .path()
            .join(format!("collector-http-{instance}.yaml"));
        std::fs::copy(&http.config, &config).unwrap();
        fleet.push(Some(Process::spawn(
            "collector",
            &config,
            http.metrics_port,
            &secrets,
            stack.dir.path(),
            &[],
        )));
        ports.push(http.http_port);
    }
    let owner = wait_for_owner(&fleet, Duration::from_secs(60)).await;
    let standby = 1 - owner;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let batch = serde_json::json!([{
        "event_id": "5a0c1e2f-3b4d-4e5f-8a6b-7c8d9e0f1a2b",
        "tenant_id": "acme-learning",
        "source": "app",
        "kind": "app.event",
        "occurred_at": now - 500,
        "actor": {"user_id": "78"},
        "verb": "app.lesson_opened",
        "data": {},
    }]);
    let client = reqwest::Client::new();
    let post = |port: u16| {
        client
            .post(format!("http://127.0.0.1:{port}/v1/events"))
            .header("x-api-key", &key)
            .json(&batch)
            .send()
    };
    // Each instance's listener may still be starting.
    let answer = |port: u16| {
        let post = &post;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                match post(port).await {
                    Ok(response) => return response,
                    Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let accepted = answer(ports[owner]).await;
    assert_eq!(accepted.status(), 202);
    // The same request to the standby: refused (its nonces and rate limits
    // would not be the owner's), with the way to retry.
    let refused = answer(ports[standby]).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "STANDBY");

    // The owner killed: the standby takes over and serves.
    fleet[owner].take().unwrap().kill9();
    assert_eq!(
        wait_for_owner(&fleet, Duration::from_secs(60)).await,
        standby
    );
    assert_eq!(post(ports[standby]).await.unwrap().status(), 202);
}
