use std::collections::BTreeMap;

use apache_avro::Schema;
use trellis_records::{Aggregate, ProtectedResult, Sealed, schema_text};
use trellis_runtime::pipeline::{OwnedRecord, run_offline};
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::state::StateStore;

use super::*;

const H: i64 = 3_600_000;
/// Midnight UTC, so the hours below lie well inside one day.
const T0: i64 = 1_700_000_000_000 / 86_400_000 * 86_400_000;

fn schema(file: &str) -> Schema {
    Schema::parse_str(schema_text(file).unwrap()).unwrap()
}

fn decoder() -> AvroDecoder {
    let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9").unwrap());
    for (id, file) in [
        (1, "protected.avsc"),
        (2, "aggregate.avsc"),
        (3, "participant_ack.avsc"),
    ] {
        decoder.insert(id, schema(file)).unwrap();
    }
    decoder
}

fn analytics(settings: &Settings, partitions: i32) -> Analytics {
    let enc = |id, file: &str| AvroEncoder::with_id(file.into(), id, schema(file)).unwrap();
    let mut tenants = HashMap::new();
    tenants.insert(
        "acme".to_string(),
        (
            Arc::from("analytics.acme.aggregates"),
            enc(2, "aggregate.avsc"),
        ),
    );
    let mut analytics = Analytics::new(
        settings,
        Encoders {
            aggregates: enc(2, "aggregate.avsc"),
            tenants,
            acks: enc(3, "participant_ack.avsc"),
        },
        Counters::detached(),
    );
    let assigned = BTreeMap::from([(PROTECTED_TOPIC.to_string(), (0..partitions).collect())]);
    analytics.assigned(&assigned).unwrap();
    analytics
}

fn event(
    tenant: &str,
    learner: &str,
    n: usize,
    at: i64,
    verb: &str,
    score: Option<f64>,
) -> ProtectedEvent {
    ProtectedEvent {
        event_id: format!("{tenant}-{learner}-{n}"),
        tenant_id: tenant.into(),
        source: "lrs".into(),
        kind: "xapi.statement".into(),
        occurred_at: at,
        received_at: at,
        request_id: None,
        learner: learner.into(),
        subject_key_id: "k".into(),
        actor_name: None,
        actor_email: None,
        ip_hash: None,
        verb: Some(format!("http://adlnet.gov/expapi/verbs/{verb}")),
        object_id: Some("https://lms.example/mod/quiz/view.php?id=100".into()),
        object_type: None,
        course_id: Some("https://lms.example/course/100".into()),
        registration: None,
        result: score.map(|s| ProtectedResult {
            success: Some(s >= 0.6),
            completion: None,
            score_scaled: Some(s),
            score_raw: None,
            score_min: None,
            score_max: None,
            duration_ms: None,
            response: None,
        }),
        voided_event_id: None,
        payload: Sealed {
            key_id: "k".into(),
            nonce: vec![0; 12],
            ciphertext: vec![0; 16],
        },
    }
}

/// `(partition, event)` pairs as records, offsets counted per partition.
fn records(events: &[(i32, ProtectedEvent)]) -> Vec<OwnedRecord> {
    let encoder = AvroEncoder::with_id("p".into(), 1, schema("protected.avsc")).unwrap();
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    events
        .iter()
        .map(|(p, e)| {
            let offset = offsets.entry(*p).or_default();
            *offset += 1;
            OwnedRecord {
                topic: PROTECTED_TOPIC.into(),
                partition: *p,
                offset: *offset - 1,
                timestamp_ms: Some(e.received_at),
                key: None,
                value: Some(encoder.encode(e).unwrap()),
                headers: Vec::new(),
            }
        })
        .collect()
}

struct Run {
    store: StateStore,
    _dir: tempfile::TempDir,
    outputs: Vec<OutputRecord>,
    late: u64,
}

fn run_with(settings: &Settings, partitions: i32, events: &[(i32, ProtectedEvent)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut analytics = analytics(settings, partitions);
    let late = analytics.counters.late.clone();
    let offline = run_offline(
        NAME,
        &mut analytics,
        &store,
        &decoder(),
        &records(events),
        7,
    )
    .unwrap();
    assert!(offline.dead_letters.is_empty());
    Run {
        store,
        _dir: dir,
        outputs: offline.outputs,
        late: late.with_label_values(&["hour"]).get(),
    }
}

impl Run {
    fn cells(&self, topic: &str) -> BTreeMap<String, Aggregate> {
        let decoder = decoder();
        self.outputs
            .iter()
            .filter(|r| &*r.topic == topic)
            .map(|r| {
                (
                    String::from_utf8(r.key.clone()).unwrap(),
                    decoder.decode_blocking(r.value.as_ref().unwrap()).unwrap(),
                )
            })
            .collect()
    }

    fn cell(
        &self,
        tenant: &str,
        window: &str,
        start: i64,
        dimension: &str,
        value: &str,
    ) -> Option<Aggregate> {
        self.cells(AGGREGATES_TOPIC)
            .remove(&format!("{tenant}|{window}|{start}|{dimension}|{value}"))
    }
}

/// Learners `0..n` each doing one attempted statement in the hour at `T0`,
/// then an event per partition two hours later to close that hour.
fn hour_of(tenant: &str, learners: usize, partitions: i32) -> Vec<(i32, ProtectedEvent)> {
    let mut events: Vec<(i32, ProtectedEvent)> = (0..learners)
        .map(|l| {
            (
                (l as i32) % partitions,
                event(
                    tenant,
                    &format!("p_{l}"),
                    0,
                    T0 + 60_000 * l as i64,
                    "attempted",
                    None,
                ),
            )
        })
        .collect();
    events.extend(closers(partitions, T0 + 2 * H + 700_000));
    events
}

fn closers(partitions: i32, at: i64) -> Vec<(i32, ProtectedEvent)> {
    (0..partitions)
        .map(|p| {
            (
                p,
                event("other", &format!("p_closer{p}"), 0, at, "experienced", None),
            )
        })
        .collect()
}

#[test]
fn a_cell_is_published_once_every_partition_has_passed_it() {
    let settings = Settings::default();
    let mut events = hour_of("acme", 6, 3);
    let last = events.pop().unwrap();
    let open = run_with(&settings, 3, &events);
    assert_eq!(
        open.cell("acme", "hour", T0, "tenant", "acme"),
        None,
        "partition 2 has not passed the hour yet"
    );
    events.push(last);
    let closed = run_with(&settings, 3, &events);
    let cell = closed
        .cell("acme", "hour", T0, "tenant", "acme")
        .expect("published");
    assert_eq!(
        (cell.events, cell.distinct_learners, cell.suppressed),
        (6, 6, false)
    );
    assert_eq!(
        closed
            .cell("acme", "hour", T0, "verb", "attempted")
            .unwrap()
            .events,
        6
    );
    assert_eq!(
        closed.cell(
            "acme",
            "day",
            T0 / 86_400_000 * 86_400_000,
            "tenant",
            "acme"
        ),
        None,
        "the day is still open"
    );
}

#[test]
fn small_cells_are_suppressed_below_k() {
    let settings = Settings::default();
    let at_k = run_with(&settings, 2, &hour_of("acme", 5, 2));
    let cell = at_k
        .cell(
            "acme",
            "hour",
            T0,
            "course",
            "https://lms.example/course/100",
        )
        .unwrap();
    assert_eq!(
        (cell.suppressed, cell.distinct_learners, cell.events),
        (false, 5, 5)
    );

    let below = run_with(&settings, 2, &hour_of("acme", 4, 2));
    let cell = below
        .cell(
            "acme",
            "hour",
            T0,
            "course",
            "https://lms.example/course/100",
        )
        .unwrap();
    assert_eq!(
        (cell.suppressed, cell.distinct_learners, cell.events),
        (true, 0, 0)
    );

    let mut strict = Settings::default();
    strict
        .tenants
        .insert("acme".into(), TenantSettings { k: 6 });
    let per_tenant = run_with(&strict, 2, &hour_of("acme", 5, 2));
    assert!(
        per_tenant
            .cell("acme", "hour", T0, "tenant", "acme")
            .unwrap()
            .suppressed
    );
}

#[test]
fn distinct_learners_count_each_learner_once_per_cell() {
    let mut events: Vec<(i32, ProtectedEvent)> = (0..12)
        .map(|n| {
            (
                0,
                event(
                    "acme",
                    &format!("p_{}", n % 6),
                    n,
                    T0 + n as i64 * 1000,
                    "answered",
                    None,
                ),
            )
        })
        .collect();
    events.extend(closers(1, T0 + 3 * H));
    let run = run_with(&Settings::default(), 1, &events);
    let cell = run.cell("acme", "hour", T0, "tenant", "acme").unwrap();
    assert_eq!((cell.events, cell.distinct_learners), (12, 6));
    assert!(
        run.store.scan_prefix(&[keys::MEMBER]).count() > 0,
        "open windows (the day, the closers' hour) keep their sets"
    );
    let day_members = run.store.scan_prefix(&[keys::MEMBER]).count();
    assert!(
        day_members <= 6 * 4 + 4 * 2,
        "closed hours dropped their sets: {day_members}"
    );
}

#[test]
fn late_events_inside_the_lateness_update_the_window_and_later_ones_are_counted_late() {
    let settings = Settings::default(); // 10 minutes
    let mut events: Vec<(i32, ProtectedEvent)> = (0..5)
        .map(|l| {
            (
                0,
                event("acme", &format!("p_{l}"), 0, T0 + 1000, "attempted", None),
            )
        })
        .collect();
    // The partition moves 5 minutes into the next hour …
    events.push((
        0,
        event("acme", "p_0", 1, T0 + H + 300_000, "attempted", None),
    ));
    // … a straggler for the first hour is within the lateness,
    events.push((0, event("acme", "p_5", 0, T0 + 2000, "attempted", None)));
    // the partition moves on past the lateness, and another straggler is too late.
    events.push((
        0,
        event("acme", "p_1", 2, T0 + H + 700_000, "attempted", None),
    ));
    events.push((0, event("acme", "p_6", 0, T0 + 3000, "attempted", None)));
    let run = run_with(&settings, 1, &events);
    let cell = run.cell("acme", "hour", T0, "tenant", "acme").unwrap();
    assert_eq!(
        (cell.events, cell.distinct_learners, cell.revision),
        (6, 6, 1)
    );
    assert_eq!(run.late, 1);
    let late = run
        .store
        .get(&key(keys::LATE, &[b"acme", b"hour"]))
        .unwrap()
        .map(|v| i64::from_be_bytes(v.as_ref().try_into().unwrap()));
    assert_eq!(
        late,
        Some(1),
        "late events are kept count of in the store too"
    );
}

#[test]
fn partition_interleaving_changes_neither_state_nor_outputs() {
    let mut events = Vec::new();
    for n in 0..400usize {
        let p = (n % 4) as i32;
        let at = T0 + (n as i64) * 40_000 - if n % 13 == 0 { 900_000 } else { 0 };
        let score = (n % 3 == 0).then_some((n % 10) as f64 / 10.0);
        events.push((
            p,
            event(
                ["acme", "globex"][n % 2],
                &format!("p_{}", n % 17),
                n,
                at,
                if score.is_some() {
                    "passed"
                } else {
                    "attempted"
                },
                score,
            ),
        ));
    }
    let by_partition = |events: &[(i32, ProtectedEvent)]| {
        let mut sorted = events.to_vec();
        sorted.sort_by_key(|(p, _)| *p);
        sorted
    };
    let settings = Settings::default();
    let interleaved = run_with(&settings, 4, &events);
    let sequential = run_with(&settings, 4, &by_partition(&events));
    let mut reversed_partitions = by_partition(&events);
    reversed_partitions.sort_by_key(|(p, _)| -*p);
    let reversed = run_with(&settings, 4, &reversed_partitions);
    assert!(!interleaved.cells(AGGREGATES_TOPIC).is_empty());
    assert_eq!(
        interleaved.cells(AGGREGATES_TOPIC),
        sequential.cells(AGGREGATES_TOPIC)
    );
    assert_eq!(
        interleaved.cells(AGGREGATES_TOPIC),
        reversed.cells(AGGREGATES_TOPIC)
    );
    assert_eq!(
        interleaved.store.digest().unwrap(),
        sequential.store.digest().unwrap()
    );
    assert_eq!(
        interleaved.store.digest().unwrap(),
        reversed.store.digest().unwrap()
    );
    assert_eq!(interleaved.late, sequential.late);
}

#[test]
fn tenants_sharing_course_and_learner_ids_are_counted_apart() {
    let mut events = Vec::new();
    for l in 0..6 {
        events.push((
            l % 2,
            event("acme", &format!("p_{l}"), 0, T0 + 1000, "passed", Some(0.9)),
        ));
    }
    for l in 0..3 {
        events.push((
            l % 2,
            event(
                "globex",
                &format!("p_{l}"),
                0,
                T0 + 2000,
                "failed",
                Some(0.2),
            ),
        ));
    }
    events.extend(closers(2, T0 + 3 * H));
    let run = run_with(&Settings::default(), 2, &events);
    let acme = run
        .cell(
            "acme",
            "hour",
            T0,
            "course",
            "https://lms.example/course/100",
        )
        .unwrap();
    assert_eq!(
        (acme.events, acme.distinct_learners, acme.passes, acme.fails),
        (6, 6, 6, 0)
    );
    assert_eq!(acme.avg_score_scaled, Some(0.9));
    let globex = run
        .cell(
            "globex",
            "hour",
            T0,
            "course",
            "https://lms.example/course/100",
        )
        .unwrap();
    assert!(globex.suppressed, "3 learners < k");
    for record in &run.outputs {
        let aggregate: Aggregate = decoder()
            .decode_blocking(record.value.as_ref().unwrap())
            .unwrap();
        assert_eq!(record.tenant.as_deref(), Some(aggregate.tenant_id.as_str()));
        assert!(
            record
                .key
                .starts_with(format!("{}|", aggregate.tenant_id).as_bytes())
        );
    }
    let acme_topic = run.cells("analytics.acme.aggregates");
    assert!(!acme_topic.is_empty());
    assert!(
        acme_topic.values().all(|a| a.tenant_id == "acme"),
        "a tenant's topic carries only that tenant"
    );
}

#[test]
fn the_settings_refuse_a_k_that_singles_out() {
    let settings = Settings {
        k: 1,
        ..Settings::default()
    };
    assert!(settings.check().unwrap_err().contains("k is 1"));
}

#[test]
fn verbs_are_named_briefly() {
    assert_eq!(verb_name("http://adlnet.gov/expapi/verbs/passed"), "passed");
    assert_eq!(
        verb_name("\\mod_quiz\\event\\attempt_started"),
        "attempt_started"
    );
    assert_eq!(
        verb_name("https://w3id.org/xapi/video/verbs/paused"),
        "paused"
    );
    assert_eq!(verb_name("app.lesson_opened"), "app.lesson_opened");
}
