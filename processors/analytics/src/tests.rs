use std::collections::BTreeMap;
use std::sync::LazyLock;

use trellis_records::{
    Aggregate, ERASE_COMMANDS_TOPIC, ParticipantAck, ProtectedEvent, ProtectedResult,
};
use trellis_runtime::offline::Harness;
use trellis_runtime::pipeline::OwnedRecord;
use trellis_runtime::schema::AvroDecoder;
use trellis_runtime::state::StateStore;

use super::*;

const H: i64 = 3_600_000;
/// Midnight UTC, so the hours below lie well inside one day.
const T0: i64 = 1_700_000_000_000 / 86_400_000 * 86_400_000;

/// The workspace's topology, with an aggregates topic of the tests'
/// tenant `acme` (as each demo tenant has), under one harness.
fn harness() -> &'static Harness {
    static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
        let mut topology = Harness::workspace().topology().clone();
        let topic = tenant_aggregates_topic("acme");
        let spec = topology.topics[AGGREGATES_TOPIC].clone();
        topology.topics.insert(topic.clone(), spec);
        if let Some(analytics) = topology.processors.get_mut(NAME) {
            analytics.outputs.push(topic);
        }
        Harness::with_topology(topology)
    });
    &HARNESS
}

fn decoder() -> &'static AvroDecoder {
    harness().decoder()
}

/// The aggregator as the binary builds it, reading `partitions` partitions.
fn analytics(settings: &Settings, partitions: i32) -> Analytics {
    let mut analytics = harness().build::<Analytics>(settings).unwrap();
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
        object_id: Some("https://lms.example/mod/quiz/view.php?id=100".into()),
        course_id: Some("https://lms.example/course/100".into()),
        result: score.map(|s| ProtectedResult::scored(s >= 0.6, s)),
        ..ProtectedEvent::statement(
            tenant,
            learner,
            &format!("{tenant}-{learner}-{n}"),
            at,
            verb,
        )
    }
}

/// `(partition, event)` pairs as records, offsets counted per partition.
fn records(events: &[(i32, ProtectedEvent)]) -> Vec<OwnedRecord> {
    let encoder = harness().encoder(PROTECTED_TOPIC);
    let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
    events
        .iter()
        .map(|(p, e)| {
            let offset = offsets.entry(*p).or_default();
            *offset += 1;
            OwnedRecord::new(
                PROTECTED_TOPIC,
                *p,
                *offset - 1,
                Some(e.received_at),
                None,
                Some(encoder.encode(e).unwrap()),
            )
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
    run_batched(settings, partitions, events, 7)
}

/// [`run_with`], committing every `batch` records.
fn run_batched(
    settings: &Settings,
    partitions: i32,
    events: &[(i32, ProtectedEvent)],
    batch: usize,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut analytics = analytics(settings, partitions);
    let late = analytics.counters.late.clone();
    let offline = harness()
        .runner(NAME)
        .batch(batch)
        .run(&mut analytics, &store, &records(events))
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
    /// The stored live cells, by key.
    fn live_cells(&self) -> BTreeMap<Vec<u8>, LiveCell> {
        self.store
            .scan_prefix(&[keys::CELL])
            .map(|entry| {
                let (key, value) = entry.unwrap();
                (key, LiveCell::decode(&value).unwrap())
            })
            .collect()
    }

    /// Entries of every stored distinct set, anonymous ones included.
    fn members(&self) -> usize {
        self.live_cells()
            .values()
            .map(|live| live.members.len() + live.anonymous.values().sum::<u32>() as usize)
            .sum()
    }

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

    /// Every revision published of a cell, in order.
    fn revisions(
        &self,
        tenant: &str,
        window: &str,
        start: i64,
        dimension: &str,
        value: &str,
    ) -> Vec<Aggregate> {
        let key = format!("{tenant}|{window}|{start}|{dimension}|{value}");
        let decoder = decoder();
        self.outputs
            .iter()
            .filter(|r| &*r.topic == AGGREGATES_TOPIC && r.key == key.as_bytes())
            .map(|r| decoder.decode_blocking(r.value.as_ref().unwrap()).unwrap())
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
        self.revisions(tenant, window, start, dimension, value)
            .pop()
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

    // Four learners whose events give every count a value: a pass, a fail,
    // a completion, an attempt.
    let mut four = hour_of("acme", 4, 2);
    for ((_, event), (verb, score)) in four.iter_mut().zip([
        ("passed", Some(0.9)),
        ("failed", Some(0.3)),
        ("completed", None),
        ("attempted", None),
    ]) {
        *event = ProtectedEvent {
            result: score.map(|s| ProtectedResult::scored(s >= 0.6, s)),
            verb: Some(format!("http://adlnet.gov/expapi/verbs/{verb}")),
            ..event.clone()
        };
    }
    let course = |run: &Run| {
        run.cell(
            "acme",
            "hour",
            T0,
            "course",
            "https://lms.example/course/100",
        )
        .unwrap()
    };
    // Positive control: at k = 4 the same cell shows every count.
    let mut lenient = Settings::default();
    lenient
        .tenants
        .insert("acme".into(), TenantSettings { k: 4 });
    let shown = course(&run_with(&lenient, 2, &four));
    assert_eq!(
        (
            shown.suppressed,
            shown.events,
            shown.distinct_learners,
            shown.completions,
            shown.passes,
            shown.fails
        ),
        (false, 4, 4, 1, 1, 1)
    );
    assert!(shown.avg_score_scaled.is_some());
    // At k = 5 the whole aggregate is withheld, not only some counts.
    let cell = course(&run_with(&settings, 2, &four));
    assert_eq!(
        cell,
        Aggregate {
            events: 0,
            distinct_learners: 0,
            completions: 0,
            passes: 0,
            fails: 0,
            avg_score_scaled: None,
            suppressed: true,
            ..shown.clone()
        }
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
    // No revisions: a closed window's set goes at once.
    let settings = Settings {
        revision_horizon_secs: Horizons {
            hour: 600,
            day: 600,
        },
        ..Settings::default()
    };
    let run = run_with(&settings, 1, &events);
    let cell = run.cell("acme", "hour", T0, "tenant", "acme").unwrap();
    assert_eq!((cell.events, cell.distinct_learners), (12, 6));
    let day_members = run.members();
    assert!(
        day_members > 0,
        "open windows (the day, the closers' hour) keep their sets"
    );
    assert!(
        day_members <= 6 * 4 + 4 * 2,
        "closed hours dropped their sets: {day_members}"
    );
}

#[test]
fn late_events_revise_the_cell_up_to_the_horizon_and_later_ones_go_to_the_late_cell() {
    let mut settings = Settings::default(); // 10 minutes' lateness
    settings.revision_horizon_secs.hour = 2 * 3600;
    let ev = |learner: &str, n, at| (0, event("acme", learner, n, at, "attempted", None));
    let mut events: Vec<(i32, ProtectedEvent)> = (0..5)
        .map(|l| ev(&format!("p_{l}"), 0, T0 + 1000))
        .collect();
    // The partition moves 5 minutes into the next hour; a straggler for
    // the first hour is within the lateness: first publication.
    events.push(ev("p_0", 1, T0 + H + 300_000));
    events.push(ev("p_5", 0, T0 + 2000));
    // Past the lateness (published: 6), a straggler revises the cell,
    events.push(ev("p_1", 2, T0 + H + 700_000));
    events.push(ev("p_6", 0, T0 + 3000));
    // and another an hour later (revision 1 is out: 7),
    events.push(ev("p_2", 3, T0 + 2 * H + 700_000));
    events.push(ev("p_7", 0, T0 + 4000));
    // until the horizon (2 hours after the end): then it is too late.
    events.push(ev("p_3", 4, T0 + 3 * H + 700_000));
    events.push(ev("p_8", 0, T0 + 5000));
    let run = run_with(&settings, 1, &events);
    let revisions: Vec<(i32, i64, i64)> = run
        .revisions("acme", "hour", T0, "tenant", "acme")
        .iter()
        .map(|a| (a.revision, a.events, a.distinct_learners))
        .collect();
    assert_eq!(revisions, [(0, 6, 6), (1, 7, 7), (2, 8, 8)]);
    assert_eq!(run.late, 1);
    let late = run.cell("acme", "hour", T0, "late", "acme").unwrap();
    assert_eq!((late.events, late.revision, late.suppressed), (1, 1, false));
    // Every event of the hour is in its tenant cell or its late cell.
    let last = run.cell("acme", "hour", T0, "tenant", "acme").unwrap();
    let of_the_hour = events
        .iter()
        .filter(|(_, e)| (T0..T0 + H).contains(&e.occurred_at))
        .count() as i64;
    assert_eq!(last.events + late.events, of_the_hour);
    // The day is well within its horizon: nothing late there.
    assert_eq!(run.cell("acme", "day", T0, "late", "acme"), None);
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

    // Cells are held in memory and written once per batch: where the
    // batches end changes nothing either.
    let record_by_record = run_batched(&settings, 4, &events, 1);
    let one_batch = run_batched(&settings, 4, &events, events.len());
    for other in [&record_by_record, &one_batch] {
        assert_eq!(
            interleaved.store.digest().unwrap(),
            other.store.digest().unwrap()
        );
        let ids = |run: &Run| run.outputs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&interleaved), ids(other));
        assert_eq!(
            interleaved.cells(AGGREGATES_TOPIC),
            other.cells(AGGREGATES_TOPIC)
        );
    }

    // A replay (outputs dropped, so none built) builds the same store.
    let dir = tempfile::tempdir().unwrap();
    let replayed = StateStore::open(dir.path()).unwrap();
    let offline = harness()
        .runner(NAME)
        .batch(7)
        .replay(&mut analytics(&settings, 4), &replayed, &records(&events))
        .unwrap();
    assert!(offline.outputs.is_empty(), "a replay publishes nothing");
    assert_eq!(
        interleaved.store.digest().unwrap(),
        replayed.digest().unwrap()
    );
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
    let problems = trellis_runtime::build::Settings::check(&settings).unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains("k is 1")),
        "{problems:?}"
    );
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

mod recomputed {
    //! The final revision of every cell equals a plain fold over every
    //! event, for in-order, shuffled and backfilled inputs.

    use std::collections::{BTreeMap, BTreeSet};

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    const TENANTS: [&str; 3] = ["acme", "globex", "initech"];
    const PARTITIONS: i32 = 4;
    const DAY: i64 = 86_400_000;

    /// A day and a half of traffic from three tenants, in event-time order.
    fn traffic(rng: &mut StdRng, from: i64, n: usize) -> Vec<ProtectedEvent> {
        let mut events: Vec<ProtectedEvent> = (0..n)
            .map(|i| {
                let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
                let verb = ["attempted", "completed", "passed", "failed", "answered"]
                    [rng.random_range(0..5)];
                let score = matches!(verb, "passed" | "failed")
                    .then(|| f64::from(rng.random_range(0..=100u32)) / 100.0);
                let at = from + rng.random_range(0..36 * H);
                let mut e = event(
                    tenant,
                    &format!("p_{}", rng.random_range(0..40)),
                    i,
                    at,
                    verb,
                    score,
                );
                e.event_id = format!("{from}-{i}");
                e.course_id = Some(format!("course-{}", rng.random_range(0..3)));
                e.object_id = Some(format!("quiz-{}", rng.random_range(0..6)));
                e
            })
            .collect();
        events.sort_by_key(|e| e.occurred_at);
        events
    }

    /// Events on partitions by learner (as the privacy processor keys
    /// them), then one event per partition far ahead, which makes every
    /// revision final and expires every cell.
    fn on_partitions(events: &[ProtectedEvent]) -> Vec<(i32, ProtectedEvent)> {
        let mut placed: Vec<(i32, ProtectedEvent)> = events
            .iter()
            .map(|e| {
                let p = (hash8(&[e.learner.as_bytes()])[0] as i32) % PARTITIONS;
                (p, e.clone())
            })
            .collect();
        let end = events.iter().map(|e| e.occurred_at).max().unwrap_or(T0);
        placed.extend(closers(PARTITIONS, end + 10 * DAY));
        placed
    }

    /// The cells a plain fold over `events` gives, by record key.
    fn fold(events: &[ProtectedEvent], k: u32) -> BTreeMap<String, Aggregate> {
        let mut cells: BTreeMap<String, (Cell, BTreeSet<String>)> = BTreeMap::new();
        for e in events {
            let verb = e.verb.as_deref().map(verb_name);
            for window in Window::ALL {
                let start = window.start(e.occurred_at);
                let dims = [
                    ("tenant", e.tenant_id.as_str()),
                    ("verb", verb.unwrap()),
                    ("course", e.course_id.as_deref().unwrap()),
                    ("activity", e.object_id.as_deref().unwrap()),
                ];
                for (dimension, value) in dims {
                    let key = format!(
                        "{}|{}|{start}|{dimension}|{value}",
                        e.tenant_id,
                        window.as_str()
                    );
                    let (cell, learners) = cells.entry(key).or_insert_with(|| {
                        (
                            Cell::new(&e.tenant_id, window, start, dimension, value),
                            BTreeSet::new(),
                        )
                    });
                    cell.counts.add(&e.facts(), verb);
                    learners.insert(e.learner.clone());
                    cell.distinct = learners.len() as i64;
                }
            }
        }
        cells
            .into_iter()
            .map(|(key, (cell, _))| (key, cell.aggregate(k)))
            .collect()
    }

    /// The last revision published of every cell of the three tenants
    /// (late cells apart).
    fn finals(run: &Run) -> BTreeMap<String, Aggregate> {
        run.cells(AGGREGATES_TOPIC)
            .into_iter()
            .filter(|(_, a)| a.tenant_id != "other" && a.dimension != "late")
            .map(|(key, mut a)| {
                a.revision = 0;
                (key, a)
            })
            .collect()
    }

    fn settings() -> Settings {
        Settings {
            k: 3,
            ..Settings::default()
        }
    }

    fn check(name: &str, events: &[ProtectedEvent], placed: &[(i32, ProtectedEvent)]) -> Run {
        let run = run_with(&settings(), PARTITIONS, placed);
        let expected = fold(events, 3);
        let mut got = finals(&run);
        for a in expected.values() {
            assert!(
                TENANTS.contains(&a.tenant_id.as_str()),
                "{name}: fold covers the tenants"
            );
        }
        assert_eq!(got.len(), expected.len(), "{name}: the same cells");
        for (key, want) in &expected {
            let mut want = want.clone();
            want.revision = 0;
            assert_eq!(got.remove(key).as_ref(), Some(&want), "{name}: {key}");
        }
        run
    }

    #[test]
    fn final_revisions_equal_a_fold_over_the_log_in_order_shuffled_and_backfilled() {
        let mut rng = StdRng::seed_from_u64(16);
        let live = traffic(&mut rng, T0, 3_000);

        // In order.
        let in_order = check("in order", &live, &on_partitions(&live));
        assert_eq!(in_order.late, 0);

        // Stragglers: a quarter of the events arrive minutes to a day late.
        let mut shuffled = live.clone();
        shuffled.sort_by_cached_key(|e| {
            let delay = if rng.random_bool(0.25) {
                rng.random_range(60_000..DAY)
            } else {
                0
            };
            e.occurred_at + delay
        });
        let stragglers = check("stragglers", &live, &on_partitions(&shuffled));
        assert!(
            stragglers
                .cells(AGGREGATES_TOPIC)
                .values()
                .any(|a| a.revision > 0),
            "stragglers revise cells"
        );
        assert_eq!(stragglers.late, 0, "a day late is within the horizon");

        // A backfill of statements from two to five days before, imported
        // after the live traffic.
        let old = traffic(&mut rng, T0 - 5 * DAY, 1_000)
            .into_iter()
            .filter(|e| e.occurred_at < T0 - 2 * DAY)
            .collect::<Vec<_>>();
        let mut all = live.clone();
        all.extend(old.iter().cloned());
        let mut backfilled = live.clone();
        backfilled.extend(old);
        check("backfilled", &all, &on_partitions(&backfilled));

        // The same revisions, whatever the interleaving of partitions.
        let mut placed = on_partitions(&shuffled);
        let mut reference: Vec<(String, Vec<u8>)> = stragglers
            .outputs
            .iter()
            .map(|r| (r.id.clone(), r.value.clone().unwrap()))
            .collect();
        reference.sort();
        placed.sort_by_key(|(p, _)| -*p);
        let by_partition = run_with(&settings(), PARTITIONS, &placed);
        let mut outputs: Vec<(String, Vec<u8>)> = by_partition
            .outputs
            .iter()
            .map(|r| (r.id.clone(), r.value.clone().unwrap()))
            .collect();
        outputs.sort();
        assert_eq!(outputs, reference, "same revisions, same ids, same bytes");
        assert_eq!(
            by_partition.store.digest().unwrap(),
            stragglers.store.digest().unwrap()
        );
    }

    #[test]
    fn events_beyond_the_horizon_are_in_the_late_cells_and_nothing_is_lost() {
        let mut rng = StdRng::seed_from_u64(17);
        let live = traffic(&mut rng, T0, 2_000);
        // Imported three to five days late, with a one-day horizon.
        let old = traffic(&mut rng, T0 - 5 * DAY, 600)
            .into_iter()
            .filter(|e| e.occurred_at < T0 - 3 * DAY)
            .collect::<Vec<_>>();
        let mut settings = settings();
        settings.revision_horizon_secs = Horizons {
            hour: 86_400,
            day: 86_400,
        };
        let mut sent = live.clone();
        sent.extend(old.iter().cloned());
        let run = run_with(&settings, PARTITIONS, &on_partitions(&sent));
        assert!(run.late > 0);
        for tenant in TENANTS {
            for window in ["hour", "day"] {
                let counted: i64 = run
                    .cells(AGGREGATES_TOPIC)
                    .values()
                    .filter(|a| a.tenant_id == tenant && a.window == window)
                    .filter(|a| matches!(a.dimension.as_str(), "tenant" | "late"))
                    .map(|a| a.events)
                    .sum();
                let sent = sent.iter().filter(|e| e.tenant_id == tenant).count() as i64;
                assert_eq!(counted, sent, "{tenant} {window}: cells + late = sent");
            }
        }
    }

    #[test]
    fn after_an_erasure_revisions_still_count_the_learner_once_and_no_pseudonym_finds_a_cell() {
        let mut rng = StdRng::seed_from_u64(18);
        let mut live = traffic(&mut rng, T0, 2_000);
        let erased = "p_7";
        // After the erasure the learner's identifiers get a new pseudonym.
        for e in live.iter_mut().filter(|e| e.occurred_at >= T0 + 20 * H) {
            if e.learner == erased {
                e.learner = "p_7_new".into();
            }
        }
        let (before, after): (Vec<_>, Vec<_>) = live
            .iter()
            .cloned()
            .partition(|e| e.occurred_at < T0 + 20 * H);
        // Stragglers of the first 20 hours, from everyone but the erased
        // learner, arrive after the erasure and revise the cells they were
        // counted in.
        let (stragglers, on_time): (Vec<_>, Vec<_>) = before
            .into_iter()
            .partition(|e| e.learner != erased && e.event_id.ends_with('3'));
        let mut placed = on_partitions(&on_time);
        placed.truncate(placed.len() - PARTITIONS as usize);
        let mut log = records(&placed);
        log.push(erase_command("r1", "acme", erased));
        let mut tail = on_partitions(&[after.clone(), stragglers].concat());
        // Offsets continue per partition.
        let continued = records(&[placed.clone(), std::mem::take(&mut tail)].concat());
        log.extend(continued.into_iter().skip(placed.len()));

        let run = run_log(&log, 7);
        // Before the far-ahead events expire them, the cells are live.
        let live_run = run_log(&log[..log.len() - PARTITIONS as usize], 7);
        // The erasure lands inside a batch, in a batch of its own, or in one
        // batch with everything: the same store.
        for batch in [1, log.len()] {
            assert_eq!(
                run_log(&log[..log.len() - PARTITIONS as usize], batch)
                    .store
                    .digest()
                    .unwrap(),
                live_run.store.digest().unwrap(),
                "batches of {batch}"
            );
        }
        let acks: Vec<ParticipantAck> = run
            .outputs
            .iter()
            .filter(|r| &*r.topic == PARTICIPANT_ACKS_TOPIC)
            .map(|r| {
                decoder()
                    .decode_blocking(r.value.as_ref().unwrap())
                    .unwrap()
            })
            .collect();
        assert!(acks[0].records_affected > 0, "{acks:?}");

        // Every final revision equals the fold over everything, the erased
        // learner's past activity counted once.
        let expected = fold(&live, 3);
        let mut got = finals(&run);
        for (key, want) in &expected {
            let mut want = want.clone();
            want.revision = 0;
            assert_eq!(got.remove(key).as_ref(), Some(&want), "{key}");
        }
        assert!(got.is_empty(), "cells the fold does not have: {got:?}");
        assert!(
            run.cells(AGGREGATES_TOPIC)
                .values()
                .any(|a| a.tenant_id == "acme" && a.revision > 0),
            "revisions after the erasure"
        );

        // Holding the old pseudonym, try to find a cell they were in: the
        // hash of every cell key with it names no entry.
        let mut tried = 0;
        // Positive control: the same lookup finds a learner who was not
        // erased, so a changed membership hash cannot make the check vacuous.
        let mut found_other = 0;
        let other = live
            .iter()
            .find(|e| e.tenant_id == "acme" && e.learner != erased && e.learner != "p_7_new")
            .map(|e| e.learner.clone())
            .unwrap();
        let live_cells = live_run.live_cells();
        // (`p_7` of the other tenants is someone else: pseudonyms are per tenant.)
        let acme = prefix(keys::CELL, &[b"acme"]);
        for cell_key in live_cells
            .keys()
            .chain(&cell_keys(&live))
            .filter(|k| k.starts_with(&acme))
        {
            let member = hash8(&[cell_key, erased.as_bytes()]);
            // A guessed cell that is not live holds no set at all.
            if let Some(cell) = live_cells.get(cell_key) {
                assert!(!cell.members.contains_key(&member), "found in a cell");
                tried += 1;
                if cell
                    .members
                    .contains_key(&hash8(&[cell_key, other.as_bytes()]))
                {
                    found_other += 1;
                }
            }
        }
        assert!(tried > 0);
        assert!(
            found_other > 0,
            "the lookup finds {other}, who was not erased"
        );
        let anonymous: u32 = live_cells
            .values()
            .flat_map(|cell| cell.anonymous.values())
            .sum();
        assert!(anonymous > 0, "the learner is still counted, anonymously");
    }

    fn run_log(log: &[OwnedRecord], batch: usize) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut analytics = analytics(&settings(), PARTITIONS);
        let outputs = harness()
            .runner(NAME)
            .batch(batch)
            .run(&mut analytics, &store, log)
            .unwrap()
            .outputs;
        Run {
            store,
            _dir: dir,
            outputs,
            late: 0,
        }
    }

    /// Every cell key the events could have made (for a searcher who
    /// guesses cells rather than reading them from the store).
    fn cell_keys(events: &[ProtectedEvent]) -> Vec<Vec<u8>> {
        fold(events, 3)
            .values()
            .map(|a| {
                let window = if a.window == "hour" {
                    Window::Hour
                } else {
                    Window::Day
                };
                CellRef::new(
                    &a.tenant_id,
                    window,
                    a.window_start,
                    &a.dimension,
                    &a.dimension_value,
                )
                .key()
            })
            .collect()
    }

    fn erase_command(request: &str, tenant: &str, learner: &str) -> OwnedRecord {
        let encoder = harness().encoder(ERASE_COMMANDS_TOPIC);
        let command = EraseCommand {
            command_id: format!("{request}/analytics"),
            request_id: request.into(),
            tenant_id: tenant.into(),
            participant: NAME.into(),
            kind: "erasure".into(),
            learner: Some(learner.into()),
            attempt: 1,
            issued_at: T0,
        };
        OwnedRecord {
            topic: trellis_records::ERASE_COMMANDS_TOPIC.into(),
            partition: 0,
            offset: 0,
            timestamp_ms: Some(T0 + 21 * H),
            key: None,
            value: Some(encoder.encode(&command).unwrap()),
            headers: Vec::new(),
        }
    }
}

#[test]
fn a_suppressed_cell_is_republished_only_when_late_events_lift_it_over_k() {
    let ev = |learner: &str, n, at| (0, event("acme", learner, n, at, "attempted", None));
    // Three learners in the first hour: suppressed at k = 5.
    let mut events: Vec<(i32, ProtectedEvent)> = (0..3)
        .map(|l| ev(&format!("p_{l}"), 0, T0 + 1000))
        .collect();
    events.push(ev("p_0", 1, T0 + H + 700_000)); // published: suppressed
    events.push(ev("p_3", 0, T0 + 2000)); // class 1: four learners, still suppressed
    events.push(ev("p_0", 2, T0 + 2 * H + 700_000)); // revision 1 due: nothing new to show
    events.push(ev("p_4", 0, T0 + 3000)); // class 2: five learners
    events.push(ev("p_0", 3, T0 + 3 * H + 700_000)); // revision 2 due: shown
    let run = run_with(&Settings::default(), 1, &events);
    let revisions: Vec<(i32, bool, i64)> = run
        .revisions("acme", "hour", T0, "tenant", "acme")
        .iter()
        .map(|a| (a.revision, a.suppressed, a.events))
        .collect();
    assert_eq!(revisions, [(0, true, 0), (2, false, 5)]);
}
