//! The progress projector and the analytics aggregator on a real broker:
//! 200,000 protected events, each projector killed with SIGKILL three times
//! mid-stream, then compared with a clean run of the same logic over the
//! same log (state digest and final outputs), rebuilt by replay to the same
//! digest without re-emitting, and checked for tenant isolation.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use trellis_analytics::Analytics;
use trellis_progress::Progress;
use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, COMPLETIONS_TOPIC, Completion, PROGRESS_TOPIC, ProtectedEvent,
    ProtectedResult, Sealed,
};
use trellis_replay_tests::{Process, Produced, Stack, end_offsets, free_port};
use trellis_runtime::kafka::{ID_HEADER, TENANT_HEADER, scan_topic};
use trellis_runtime::pipeline::{OutputRecord, OwnedRecord, Processor, run_offline};
use trellis_runtime::schema::{AvroDecoder, AvroEncoder, registry_settings};
use trellis_runtime::state::StateStore;

const EVENTS: usize = 200_000;
const PARTITIONS: i32 = 6;
const TENANTS: [&str; 2] = ["northwind-uni", "acme-learning"];
const LEARNERS: usize = 80;
const H: i64 = 3_600_000;

fn quiz(c: usize) -> String {
    format!("https://lms.example/mod/quiz/view.php?id={}", 100 + c * 10)
}

fn activities(c: usize) -> [String; 3] {
    [
        quiz(c),
        format!(
            "https://lms.example/mod/h5pactivity/view.php?id={}",
            101 + c * 10
        ),
        format!("https://lms.example/mod/page/view.php?id={}", 102 + c * 10),
    ]
}

fn course(c: usize) -> String {
    format!("https://lms.example/course/{}", 100 + c)
}

fn progress_settings() -> String {
    let mut activities_yaml = Vec::new();
    let mut courses_yaml = Vec::new();
    for c in 0..4 {
        activities_yaml.push(format!("'{}': {{mastery: 0.6}}", quiz(c)));
        let requires: Vec<String> = activities(c).iter().map(|a| format!("'{a}'")).collect();
        courses_yaml.push(format!(
            "'{}': {{requires: [{}]}}",
            course(c),
            requires.join(", ")
        ));
    }
    format!(
        "{{activities: {{{}}}, courses: {{{}}}}}",
        activities_yaml.join(", "),
        courses_yaml.join(", ")
    )
}

fn settings<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// A deterministic stream: two tenants that share learner, course and
/// activity ids; event times over ~30 hours with a little jitter and a few
/// stragglers hours late; voids from an administrator in another partition.
fn generate() -> Vec<(i32, ProtectedEvent)> {
    let mut rng = StdRng::seed_from_u64(4);
    let start = 1_760_000_000_000 / H * H;
    let mut ids: Vec<Vec<String>> = vec![Vec::new(); TENANTS.len()];
    let sealed = Sealed {
        key_id: "k_test".into(),
        nonce: vec![1; 12],
        ciphertext: vec![2; 24],
    };
    (0..EVENTS)
        .map(|i| {
            let t = rng.random_range(0..TENANTS.len());
            let tenant = TENANTS[t];
            let mut at = start + (i as i64) * 30 * H / EVENTS as i64 - rng.random_range(0..60_000);
            if rng.random_bool(0.002) {
                at -= 3 * H;
            }
            let event_id = format!("{tenant}-{i:07}");
            let void = rng.random_bool(0.003) && !ids[t].is_empty();
            let (learner, verb, object, course_id, result, voided) = if void {
                let target = ids[t][rng.random_range(0..ids[t].len())].clone();
                (
                    "p_admin".to_string(),
                    "voided",
                    None,
                    None,
                    None,
                    Some(target),
                )
            } else {
                let l = rng.random_range(0..LEARNERS);
                let c = rng.random_range(0..4);
                let a = rng.random_range(0..3);
                let (verb, result) = match rng.random_range(0..10) {
                    0..=2 => ("attempted", None),
                    3..=4 => ("answered", None),
                    5 | 6 => {
                        let score = f64::from(rng.random_range(20..100u32)) / 100.0;
                        (
                            if score >= 0.6 { "passed" } else { "failed" },
                            Some((score >= 0.6, score)),
                        )
                    }
                    7 | 8 => ("completed", None),
                    _ => ("experienced", None),
                };
                let result = result.map(|(success, score)| ProtectedResult {
                    completion: Some(true),
                    ..ProtectedResult::scored(success, score)
                });
                ids[t].push(event_id.clone());
                (
                    format!("p_{l}"),
                    verb,
                    Some(activities(c)[a].clone()),
                    Some(course(c)),
                    result,
                    None,
                )
            };
            let partition = if learner == "p_admin" {
                (t as i32 + 3) % PARTITIONS
            } else {
                (learner[2..].parse::<i32>().unwrap() + t as i32) % PARTITIONS
            };
            let event = ProtectedEvent {
                received_at: at + 5_000,
                subject_key_id: "k_test".into(),
                object_id: object,
                course_id,
                result,
                voided_event_id: voided,
                payload: sealed.clone(),
                ..ProtectedEvent::statement(tenant, &learner, &event_id, at, verb)
            };
            (partition, event)
        })
        .collect()
}

/// `records` and, on every partition, an event of another tenant thirty
/// days after the last one: every revision of every window becomes final.
async fn with_closers(stack: &Stack, records: &[OwnedRecord]) -> Vec<OwnedRecord> {
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let encoder = encoder(stack, "protected").await;
    let mut out = records.to_vec();
    for partition in 0..PARTITIONS {
        let Some(last) = records.iter().rfind(|r| r.partition == partition) else {
            continue;
        };
        let mut event: ProtectedEvent = decoder
            .decode_blocking(last.value.as_deref().unwrap())
            .unwrap();
        event.tenant_id = "closer".into();
        event.event_id = format!("closer-{partition}");
        event.occurred_at += 30 * 24 * H;
        out.push(OwnedRecord {
            offset: last.offset + 1,
            value: Some(encoder.encode(&event).unwrap()),
            headers: Vec::new(),
            ..last.clone()
        });
    }
    out
}

/// The last revision of every cell in `outputs`, by record key (revision
/// numbers aside: they say when, not what).
fn final_cells(decoder: &AvroDecoder, outputs: &[OutputRecord]) -> BTreeMap<String, Aggregate> {
    outputs
        .iter()
        .filter(|r| &*r.topic == AGGREGATES_TOPIC)
        .map(|r| {
            let cell: Aggregate = decoder
                .decode_blocking(r.value.as_deref().unwrap())
                .unwrap();
            (
                String::from_utf8(r.key.clone()).unwrap(),
                Aggregate {
                    revision: 0,
                    ..cell
                },
            )
        })
        .filter(|(_, cell)| cell.tenant_id != "closer")
        .collect()
}

async fn encoder(stack: &Stack, topic: &str) -> AvroEncoder {
    stack.encoder(topic).await
}

async fn produce(stack: &Stack, events: &[(i32, ProtectedEvent)]) {
    let encoder = encoder(stack, "protected").await;
    let records: Vec<Produced> = events
        .iter()
        .map(|(partition, event)| Produced {
            topic: "protected".into(),
            partition: Some(*partition),
            key: format!("{}|{}", event.tenant_id, event.learner).into_bytes(),
            value: Some(encoder.encode(event).unwrap()),
            id: format!("{}/{}", event.tenant_id, event.event_id),
            tenant: Some(event.tenant_id.clone()),
        })
        .collect();
    stack.produce(&records).await;
}

fn read_all(stack: &Stack, topic: &str) -> Vec<OwnedRecord> {
    let mut records = Vec::new();
    scan_topic(
        &stack.kafka,
        topic,
        trellis_replay_tests::READ_IDLE,
        |m| records.push(OwnedRecord::from_message(m)),
        || false,
    )
    .unwrap();
    records
}

fn id_of(record: &OwnedRecord) -> String {
    record
        .headers
        .iter()
        .find(|(k, _)| k == ID_HEADER)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The final outputs of a run: the compacted view of upsert topics (last
/// value per key), and, for streams, every id once — with the check that a
/// repeated id (a re-run after a crash) always carried the same value.
#[derive(Debug, PartialEq)]
struct Final {
    upserts: BTreeMap<Vec<u8>, Vec<u8>>,
    stream: BTreeMap<String, Vec<u8>>,
}

fn final_upserts<'a>(
    records: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut view = BTreeMap::new();
    for (key, value) in records {
        match value {
            Some(v) => view.insert(key.to_vec(), v.to_vec()),
            None => view.remove(key),
        };
    }
    view
}

fn final_stream<'a>(
    records: impl Iterator<Item = (String, &'a [u8])>,
) -> BTreeMap<String, Vec<u8>> {
    let mut stream = BTreeMap::new();
    for (id, value) in records {
        if let Some(earlier) = stream.insert(id.clone(), value.to_vec()) {
            assert_eq!(earlier, value, "id {id} re-emitted with a different value");
        }
    }
    stream
}

fn live_final(stack: &Stack, upsert: &str, stream: &str) -> Final {
    let upserts = read_all(stack, upsert);
    let streamed = read_all(stack, stream);
    Final {
        upserts: final_upserts(
            upserts
                .iter()
                .map(|r| (r.key.as_deref().unwrap_or_default(), r.value.as_deref())),
        ),
        stream: final_stream(
            streamed
                .iter()
                .map(|r| (id_of(r), r.value.as_deref().unwrap_or_default())),
        ),
    }
}

fn offline_final(outputs: &[OutputRecord], upsert: &str, stream: &str) -> Final {
    Final {
        upserts: final_upserts(
            outputs
                .iter()
                .filter(|r| &*r.topic == upsert)
                .map(|r| (r.key.as_slice(), r.value.as_deref())),
        ),
        stream: final_stream(
            outputs
                .iter()
                .filter(|r| &*r.topic == stream)
                .map(|r| (r.id.clone(), r.value.as_deref().unwrap_or_default())),
        ),
    }
}

async fn progress_logic(stack: &Stack) -> Progress {
    let settings: trellis_progress::Settings = settings(&progress_settings());
    Progress::new(
        &settings,
        trellis_progress::Encoders {
            progress: encoder(stack, PROGRESS_TOPIC).await,
            completions: encoder(stack, COMPLETIONS_TOPIC).await,
            acks: encoder(stack, "gdpr.participant_acks").await,
        },
        trellis_progress::Counters::detached(),
    )
}

async fn analytics_logic(stack: &Stack) -> Analytics {
    let mut tenants = HashMap::new();
    for tenant in TENANTS {
        let topic = trellis_records::tenant_aggregates_topic(tenant);
        tenants.insert(
            tenant.to_string(),
            (
                std::sync::Arc::from(topic.as_str()),
                encoder(stack, &topic).await,
            ),
        );
    }
    let mut analytics = Analytics::new(
        &trellis_analytics::Settings::default(),
        trellis_analytics::Encoders {
            aggregates: encoder(stack, AGGREGATES_TOPIC).await,
            tenants,
            acks: encoder(stack, "gdpr.participant_acks").await,
        },
        trellis_analytics::Counters::detached(),
    );
    let assigned = BTreeMap::from([("protected".to_string(), (0..PARTITIONS).collect())]);
    analytics.assigned(&assigned).unwrap();
    analytics
}

/// A clean run of `processor` over `records` in a fresh store.
fn clean_run<P: Processor>(
    stack: &Stack,
    (name, mut processor): (&'static str, P),
    records: &[OwnedRecord],
) -> (String, Vec<OutputRecord>) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let started = std::time::Instant::now();
    let run = run_offline(name, &mut processor, &store, &decoder, records, 1_000).unwrap();
    // Rebuild speed from an already-fetched log, one thread (see the note).
    eprintln!(
        "offline run: {} records in {:.2}s ({:.0} records/s)",
        records.len(),
        started.elapsed().as_secs_f64(),
        records.len() as f64 / started.elapsed().as_secs_f64()
    );
    assert!(run.dead_letters.is_empty());
    (store.digest().unwrap().0, run.outputs)
}

fn spawn(stack: &Stack, name: &str, settings: &str, args: &[&str]) -> Process {
    let port = free_port();
    let config = stack.config(name, port, settings);
    Process::spawn(name, &config, port, &[], stack.dir.path(), args)
}

/// Runs `name` over everything, killed with SIGKILL at three points.
async fn run_with_kills(stack: &Stack, name: &str, settings: &str, ends: &BTreeMap<String, i64>) {
    let mut process = spawn(stack, name, settings, &[]);
    for threshold in [40_000, 100_000, 160_000] {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while process.position(&["protected"]).await < threshold {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} stalled:\n{}",
                process.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        process.kill9();
        process = spawn(stack, name, settings, &[]);
    }
    process.wait_caught_up(ends, Duration::from_secs(300)).await;
    assert!(
        process.terminate().success(),
        "{name}: graceful shutdown exits 0"
    );
}

fn digest_of(stack: &Stack, name: &str) -> String {
    StateStore::open(&stack.state_dir(name))
        .unwrap()
        .digest()
        .unwrap()
        .0
}

/// Deletes the store, rebuilds it by replay, and checks nothing is re-emitted.
async fn rebuild(
    stack: &Stack,
    name: &str,
    settings: &str,
    ends: &BTreeMap<String, i64>,
) -> String {
    std::fs::remove_dir_all(stack.state_dir(name)).unwrap();
    let mut process = spawn(stack, name, settings, &[]);
    process.wait_caught_up(ends, Duration::from_secs(300)).await;
    let emitted = process.metric("trellis_records_out_total").await;
    if let Some(line) = process
        .log_text()
        .lines()
        .find(|l| l.contains("state restored by replay"))
    {
        eprintln!("{name} rebuild on the broker: {line}");
    }
    let replayed = process.metric("trellis_replayed_records_total").await;
    assert!(process.terminate().success());
    assert_eq!(emitted, 0.0, "{name}: a rebuild re-emits nothing");
    assert!(
        replayed >= EVENTS as f64,
        "{name}: everything was replayed ({replayed})"
    );
    digest_of(stack, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_survive_kills_rebuild_by_replay_and_keep_tenants_apart() {
    let stack = Stack::start().await;
    let events = generate();
    produce(&stack, &events).await;
    let mut ends = end_offsets(&stack.kafka, "protected").unwrap();
    ends.extend(end_offsets(&stack.kafka, "gdpr.erase_commands").unwrap());
    assert_eq!(ends.values().sum::<i64>(), EVENTS as i64);

    let progress_yaml = progress_settings();
    run_with_kills(&stack, "progress", &progress_yaml, &ends).await;
    run_with_kills(&stack, "analytics", "{}", &ends).await;
    let progress_live = (
        digest_of(&stack, "progress"),
        live_final(&stack, PROGRESS_TOPIC, COMPLETIONS_TOPIC),
    );
    let analytics_live = (
        digest_of(&stack, "analytics"),
        live_final(&stack, AGGREGATES_TOPIC, AGGREGATES_TOPIC),
    );

    // A clean run of the same logic over the same log, in another order.
    let log = read_all(&stack, "protected");
    assert_eq!(log.len(), EVENTS);
    let (digest, outputs) = clean_run(
        &stack,
        (trellis_progress::NAME, progress_logic(&stack).await),
        &log,
    );
    assert_eq!(
        progress_live.0, digest,
        "progress: killed run's state = clean run's"
    );
    let progress_clean = offline_final(&outputs, PROGRESS_TOPIC, COMPLETIONS_TOPIC);
    if progress_live.1.upserts != progress_clean.upserts {
        let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
        let show = |v: Option<&Vec<u8>>| {
            v.map(|v| {
                format!(
                    "{:?}",
                    decoder
                        .decode_blocking::<trellis_records::LearnerProgress>(v)
                        .unwrap()
                )
            })
        };
        let keys: std::collections::BTreeSet<&Vec<u8>> = progress_live
            .1
            .upserts
            .keys()
            .chain(progress_clean.upserts.keys())
            .collect();
        let mut shown = 0;
        for key in keys {
            let (a, b) = (
                progress_live.1.upserts.get(key),
                progress_clean.upserts.get(key),
            );
            if a != b && shown < 3 {
                shown += 1;
                eprintln!(
                    "{}\n live:  {:?}\n clean: {:?}",
                    String::from_utf8_lossy(key),
                    show(a),
                    show(b)
                );
                let seq: Vec<String> = read_all(&stack, PROGRESS_TOPIC)
                    .iter()
                    .filter(|r| r.key.as_ref() == Some(key))
                    .map(|r| format!("{}@{}:{}", id_of(r), r.partition, r.offset))
                    .collect();
                eprintln!(" live sequence: {seq:?}");
                let cseq: Vec<&str> = outputs
                    .iter()
                    .filter(|r| &*r.topic == PROGRESS_TOPIC && &r.key == key)
                    .map(|r| r.id.as_str())
                    .collect();
                eprintln!(" clean sequence: {cseq:?}");
                let voids: Vec<String> = log
                    .iter()
                    .filter_map(|r| {
                        let e: trellis_records::ProtectedEvent =
                            decoder.decode_blocking(r.value.as_deref()?).ok()?;
                        e.voided_event_id
                            .map(|t| format!("{}->{}@{}:{}", e.event_id, t, r.partition, r.offset))
                    })
                    .collect();
                eprintln!(" voids: {voids:?}");
            }
        }
        panic!("progress: final rows differ");
    }
    let net = |f: &Final| -> BTreeMap<String, Completion> {
        let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
        let all: Vec<Completion> = f
            .stream
            .values()
            .map(|v| decoder.decode_blocking(v).unwrap())
            .collect();
        let revoked: Vec<&[String]> = all
            .iter()
            .filter(|c| c.kind == "revoked")
            .map(|c| &c.evidence_event_ids[..c.evidence_event_ids.len() - 1])
            .collect();
        all.iter()
            .filter(|c| c.kind != "revoked" && !revoked.contains(&c.evidence_event_ids.as_slice()))
            .map(|c| (c.completion_id.clone(), c.clone()))
            .collect()
    };
    let completions = net(&progress_live.1);
    assert!(
        completions.len() > 1_000,
        "completions derived: {}",
        completions.len()
    );
    assert_eq!(
        completions,
        net(&progress_clean),
        "progress: completions in force"
    );

    let (digest, outputs) = clean_run(
        &stack,
        (trellis_analytics::NAME, analytics_logic(&stack).await),
        &log,
    );
    assert_eq!(
        analytics_live.0, digest,
        "analytics: killed run's state = clean run's"
    );
    let analytics_clean = offline_final(&outputs, AGGREGATES_TOPIC, AGGREGATES_TOPIC);
    if analytics_live.1.stream != analytics_clean.stream {
        let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
        let show = |v: Option<&Vec<u8>>| {
            v.map(|v| format!("{:?}", decoder.decode_blocking::<Aggregate>(v).unwrap()))
        };
        let keys: std::collections::BTreeSet<&String> = analytics_live
            .1
            .stream
            .keys()
            .chain(analytics_clean.stream.keys())
            .collect();
        let mut shown = 0;
        for key in keys {
            let (a, b) = (
                analytics_live.1.stream.get(key),
                analytics_clean.stream.get(key),
            );
            if a != b && shown < 4 {
                shown += 1;
                eprintln!("{key}\n live:  {:?}\n clean: {:?}", show(a), show(b));
            }
        }
        panic!("analytics: cells differ");
    }
    assert_eq!(
        analytics_live.1, analytics_clean,
        "analytics: every cell, once, identical"
    );
    assert!(
        analytics_live.1.stream.len() > 500,
        "cells published: {}",
        analytics_live.1.stream.len()
    );

    // Tenant isolation: each tenant's per-tenant topic holds exactly its
    // cells, and a run over one tenant's events alone gives that tenant's
    // rows and cells unchanged.
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let (_, outputs) = clean_run(
        &stack,
        (trellis_analytics::NAME, analytics_logic(&stack).await),
        &with_closers(&stack, &log).await,
    );
    let mixed = final_cells(&decoder, &outputs);
    for tenant in TENANTS {
        let own = read_all(&stack, &trellis_records::tenant_aggregates_topic(tenant));
        assert!(!own.is_empty());
        for record in &own {
            let cell: Aggregate = decoder
                .decode_blocking(record.value.as_deref().unwrap())
                .unwrap();
            assert_eq!(cell.tenant_id, tenant);
        }
        let alone: Vec<OwnedRecord> = log
            .iter()
            .filter(|r| {
                r.headers
                    .iter()
                    .any(|(k, v)| k == TENANT_HEADER && v == tenant.as_bytes())
            })
            .cloned()
            .collect();
        let prefix = format!("{tenant}|").into_bytes();
        let only = |view: &BTreeMap<Vec<u8>, Vec<u8>>| -> BTreeMap<Vec<u8>, Vec<u8>> {
            view.iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let (_, outputs) = clean_run(
            &stack,
            (trellis_progress::NAME, progress_logic(&stack).await),
            &alone,
        );
        let separate = offline_final(&outputs, PROGRESS_TOPIC, COMPLETIONS_TOPIC);
        assert_eq!(
            only(&progress_live.1.upserts),
            separate.upserts,
            "{tenant}: progress rows"
        );
        // A tenant's cells, every revision made final (events far ahead on
        // every partition), are the same alone as among the others:
        // watermarks are shared by the tenants of a partition, so the others
        // decide *when* a straggler is counted (which revision), never what
        // the final revision counts (docs/architecture.md).
        let (_, outputs) = clean_run(
            &stack,
            (trellis_analytics::NAME, analytics_logic(&stack).await),
            &with_closers(&stack, &alone).await,
        );
        let separate = final_cells(&decoder, &outputs);
        let mut compared = 0;
        for (cell, value) in &separate {
            assert_eq!(mixed.get(cell), Some(value), "{tenant}: cell {cell}");
            compared += 1;
        }
        assert_eq!(
            mixed
                .keys()
                .filter(|k| k.starts_with(&format!("{tenant}|")))
                .count(),
            compared,
            "{tenant}: the same cells"
        );
        assert!(compared > 100, "{tenant}: {compared} cells compared");
    }

    // Rebuild by replay: same digests, nothing re-emitted.
    assert_eq!(
        rebuild(&stack, "progress", &progress_yaml, &ends).await,
        progress_live.0
    );
    assert_eq!(
        rebuild(&stack, "analytics", "{}", &ends).await,
        analytics_live.0
    );
}
