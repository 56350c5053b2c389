//! The warehouse sink against a real Postgres: every record exactly once
//! through `kill -9`s and a Postgres restart, tenant isolation attacks on
//! the row-level security, erase commands that stay erased, bad records to
//! the dead-letter topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, COMPLETIONS_TOPIC, Completion, DeadLetter, ERASE_COMMANDS_TOPIC,
    EraseCommand, Evidence, LearnerProgress, PARTICIPANT_ACKS_TOPIC, PROGRESS_TOPIC,
    ParticipantAck,
};
use trellis_replay_tests::postgres::Postgres;
use trellis_replay_tests::{Process, Produced, Stack, end_offsets};
use trellis_runtime::schema::{AvroDecoder, AvroEncoder, registry_settings};

const TENANTS: [&str; 3] = ["northwind-uni", "riverside-college", "acme-learning"];
const INPUTS: [&str; 4] = [
    PROGRESS_TOPIC,
    COMPLETIONS_TOPIC,
    AGGREGATES_TOPIC,
    ERASE_COMMANDS_TOPIC,
];
const T0: i64 = 1_780_000_000_000;

/// A small deterministic generator (the test must not depend on luck).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

struct Encoders {
    progress: AvroEncoder,
    completions: AvroEncoder,
    aggregates: AvroEncoder,
    commands: AvroEncoder,
}

impl Encoders {
    async fn new(stack: &Stack) -> Self {
        Self {
            progress: stack.encoder(PROGRESS_TOPIC).await,
            completions: stack.encoder(COMPLETIONS_TOPIC).await,
            aggregates: stack.encoder(AGGREGATES_TOPIC).await,
            commands: stack.encoder(ERASE_COMMANDS_TOPIC).await,
        }
    }
}

fn progress_record(e: &Encoders, p: &LearnerProgress) -> Produced {
    Produced {
        topic: PROGRESS_TOPIC.into(),
        partition: None,
        key: format!("{}|{}|{}", p.tenant_id, p.learner, p.activity_id).into_bytes(),
        value: Some(e.progress.encode(p).unwrap()),
        id: format!(
            "{}/{}/{}/{}",
            p.tenant_id, p.learner, p.activity_id, p.attempts
        ),
        tenant: Some(p.tenant_id.clone()),
    }
}

fn tombstone(tenant: &str, learner: &str, activity: &str) -> Produced {
    Produced {
        topic: PROGRESS_TOPIC.into(),
        partition: None,
        key: format!("{tenant}|{learner}|{activity}").into_bytes(),
        value: None,
        id: format!("{tenant}/{learner}/{activity}/tombstone"),
        tenant: Some(tenant.into()),
    }
}

fn completion_record(e: &Encoders, c: &Completion) -> Produced {
    Produced {
        topic: COMPLETIONS_TOPIC.into(),
        partition: None,
        key: format!("{}|{}|{}", c.tenant_id, c.learner, c.activity_id).into_bytes(),
        value: Some(e.completions.encode(c).unwrap()),
        id: c.completion_id.clone(),
        tenant: Some(c.tenant_id.clone()),
    }
}

fn aggregate_record(e: &Encoders, a: &Aggregate) -> Produced {
    Produced {
        topic: AGGREGATES_TOPIC.into(),
        partition: None,
        key: format!(
            "{}|{}|{}|{}|{}",
            a.tenant_id, a.window, a.window_start, a.dimension, a.dimension_value
        )
        .into_bytes(),
        value: Some(e.aggregates.encode(a).unwrap()),
        id: format!(
            "{}/{}/{}/{}/{}",
            a.tenant_id, a.window, a.window_start, a.dimension, a.dimension_value
        ),
        tenant: Some(a.tenant_id.clone()),
    }
}

fn learner(n: u64) -> String {
    format!("p{n:04}")
}

/// `count` records over the three topics: progress updates of a few hundred
/// keys (some tombstoned, some re-sent), completions (some re-sent), and
/// aggregate cells whose revisions arrive out of order.
fn generate(e: &Encoders, rng: &mut Lcg, count: usize, step: &mut i64) -> Vec<Produced> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        *step += 1;
        let tenant = TENANTS[rng.next(3) as usize];
        let who = learner(rng.next(60));
        let activity = format!("https://courses.example/a{}", rng.next(8));
        match rng.next(20) {
            0 => out.push(tombstone(tenant, &who, &activity)),
            1..=11 => {
                let p = LearnerProgress {
                    tenant_id: tenant.into(),
                    learner: who.clone(),
                    activity_id: activity.clone(),
                    course_id: Some("https://courses.example/c1".into()),
                    attempts: i32::try_from(*step).unwrap(),
                    best_score_scaled: Some(rng.next(100) as f64 / 100.0),
                    last_score_scaled: None,
                    success: Some(rng.next(2) == 0),
                    completion: "incomplete".into(),
                    first_activity_at: T0,
                    last_activity_at: T0 + *step,
                    evidence: vec![Evidence {
                        status: "attempted".into(),
                        event_id: format!("e{step}"),
                        at: T0 + *step,
                    }],
                };
                out.push(progress_record(e, &p));
            }
            12..=15 => {
                // A completion id names its content: a re-send is identical.
                let id = rng.next(4_000);
                let c = Completion {
                    completion_id: format!("{tenant}/c{id}"),
                    tenant_id: tenant.into(),
                    learner: learner(id % 60),
                    activity_id: format!("https://courses.example/a{}", id % 8),
                    course_id: None,
                    kind: "completed".into(),
                    score_scaled: Some(0.9),
                    at: T0 + id as i64,
                    evidence_event_ids: vec![format!("e{id}")],
                };
                out.push(completion_record(e, &c));
            }
            _ => {
                let a = Aggregate {
                    tenant_id: tenant.into(),
                    window_start: T0 + 3_600_000 * rng.next(40) as i64,
                    window: "hour".into(),
                    dimension: "verb".into(),
                    dimension_value: format!("v{}", rng.next(5)),
                    events: *step,
                    distinct_learners: 7,
                    completions: 1,
                    passes: 0,
                    fails: 0,
                    avg_score_scaled: None,
                    suppressed: false,
                    revision: rng.next(6) as i32,
                };
                out.push(aggregate_record(e, &a));
            }
        }
    }
    out
}

fn sink(stack: &Stack, pg: &Postgres) -> Process {
    stack.spawn(
        "warehouse",
        "{}",
        &[("TRELLIS_WAREHOUSE_URL", pg.owner_url())],
    )
}

fn ends(stack: &Stack) -> BTreeMap<String, i64> {
    let mut ends = BTreeMap::new();
    for topic in INPUTS {
        ends.extend(end_offsets(&stack.kafka, topic).unwrap());
    }
    ends
}

type ProgressTable = BTreeMap<(String, String, String), (i32, i64)>;
type CompletionTable = BTreeSet<(String, String, String)>;
type AggregateTable = BTreeMap<(String, i64, String), (i32, i64)>;

/// What the topics say the tables must hold: the latest `progress` record
/// per key (none after a tombstone), each completion id once, the highest
/// revision of each cell.
async fn expected(stack: &Stack) -> (ProgressTable, CompletionTable, AggregateTable) {
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    trellis_runtime::kafka::scan_topic(
        &stack.kafka,
        PROGRESS_TOPIC,
        trellis_replay_tests::READ_IDLE,
        |m| {
            use rdkafka::Message;
            latest.insert(
                m.key().unwrap_or_default().to_vec(),
                m.payload().map(<[u8]>::to_vec),
            );
        },
        || false,
    )
    .unwrap();
    let mut progress = ProgressTable::new();
    for value in latest.into_values().flatten() {
        let p: LearnerProgress = decoder.decode(&value).await.unwrap();
        progress.insert(
            (p.tenant_id, p.learner, p.activity_id),
            (p.attempts, p.last_activity_at),
        );
    }
    let mut completions = CompletionTable::new();
    for (_, value) in stack.read(COMPLETIONS_TOPIC).records {
        let c: Completion = decoder.decode(&value.unwrap()).await.unwrap();
        completions.insert((c.tenant_id, c.completion_id, c.learner));
    }
    let mut aggregates = AggregateTable::new();
    for (_, value) in stack.read(AGGREGATES_TOPIC).records {
        let a: Aggregate = decoder.decode(&value.unwrap()).await.unwrap();
        let cell = (a.tenant_id, a.window_start, a.dimension_value);
        let held = aggregates.entry(cell).or_insert((a.revision, a.events));
        if a.revision >= held.0 {
            *held = (a.revision, a.events);
        }
    }
    (progress, completions, aggregates)
}

/// What the tables hold, read as the administrator (row-level security
/// does not apply to a superuser).
async fn actual(pg: &Postgres) -> (ProgressTable, CompletionTable, AggregateTable) {
    let admin = pg.admin().await;
    let mut progress = ProgressTable::new();
    for row in admin
        .query(
            "SELECT tenant_id, learner, activity_id, attempts,
                    (extract(epoch FROM last_activity_at) * 1000)::bigint
             FROM trellis.progress",
            &[],
        )
        .await
        .unwrap()
    {
        progress.insert(
            (row.get(0), row.get(1), row.get(2)),
            (row.get(3), row.get(4)),
        );
    }
    let mut completions = CompletionTable::new();
    for row in admin
        .query(
            "SELECT tenant_id, completion_id, learner FROM trellis.completions",
            &[],
        )
        .await
        .unwrap()
    {
        completions.insert((row.get(0), row.get(1), row.get(2)));
    }
    let mut aggregates = AggregateTable::new();
    for row in admin
        .query(
            "SELECT tenant_id, (extract(epoch FROM window_start) * 1000)::bigint,
                    dimension_value, revision, events
             FROM trellis.aggregates",
            &[],
        )
        .await
        .unwrap()
    {
        aggregates.insert(
            (row.get(0), row.get(1), row.get(2)),
            (row.get(3), row.get(4)),
        );
    }
    (progress, completions, aggregates)
}

/// The sink's input offsets as its last transaction stored them.
async fn offsets_in_postgres(pg: &Postgres) -> BTreeMap<String, i64> {
    pg.admin()
        .await
        .query(
            "SELECT topic || '/' || partition, next_offset FROM trellis_sink.offsets",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The sum of [`offsets_in_postgres`].
async fn stored_offsets(pg: &Postgres) -> i64 {
    offsets_in_postgres(pg).await.values().sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_lands_exactly_once_through_kills_and_a_postgres_restart() {
    let stack = Stack::start().await;
    let pg = Postgres::start().await;
    let e = Encoders::new(&stack).await;
    let mut rng = Lcg(7);
    let mut step = 0;
    let mut warehouse = sink(&stack, &pg);

    // Six rounds of 5,000 records; the sink is SIGKILLed during three of
    // them, once it has taken in 500 of the round's records, and Postgres is
    // stopped (as if it crashed) during another.
    let mut kills = Vec::new();
    for round in 0..6 {
        let records = generate(&e, &mut rng, 5_000, &mut step);
        match round {
            0 | 2 | 4 => {
                let threshold = ends(&stack).values().sum::<i64>() + 500;
                // Its own task: producing holds its task between awaits.
                let killing = tokio::spawn(async move {
                    let deadline = std::time::Instant::now() + Duration::from_secs(60);
                    while warehouse.position(&INPUTS).await < threshold {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "the sink stalled:\n{}",
                            warehouse.log_text()
                        );
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    warehouse.kill9();
                });
                stack.produce(&records).await;
                killing.await.unwrap();
                // Where the killed sink's transactions had got to: Postgres
                // holds its offsets with its rows.
                kills.push((
                    stored_offsets(&pg).await,
                    ends(&stack).values().sum::<i64>(),
                ));
                warehouse = sink(&stack, &pg);
            }
            3 => {
                stack.produce(&records).await;
                // The sink restarted last round is connected and writing.
                warehouse
                    .wait_caught_up(&ends(&stack), Duration::from_secs(60))
                    .await;
                pg.stop();
                let more = generate(&e, &mut rng, 2_000, &mut step);
                stack.produce(&more).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                assert!(
                    warehouse
                        .metric("trellis_warehouse_unavailable_total")
                        .await
                        > 0.0,
                    "the sink waits for Postgres:\n{}",
                    warehouse.log_text()
                );
                pg.restart();
            }
            _ => stack.produce(&records).await,
        }
    }
    assert!(
        kills.iter().all(|(at, end)| at < end),
        "every kill landed with input left (Postgres offsets, input ends): {kills:?}"
    );
    warehouse
        .wait_caught_up(&ends(&stack), Duration::from_secs(120))
        .await;

    let (want_progress, want_completions, want_aggregates) = expected(&stack).await;
    let (progress, completions, aggregates) = actual(&pg).await;
    assert!(want_progress.len() > 500 && want_aggregates.len() > 300);
    assert_eq!(
        progress, want_progress,
        "progress: the latest record per key"
    );
    assert_eq!(completions, want_completions, "completions: each id once");
    assert_eq!(
        aggregates, want_aggregates,
        "aggregates: the highest revision"
    );
    assert!(
        stack.read("dlq").records.is_empty(),
        "nothing valid was dead-lettered"
    );
    // The offsets in Postgres are the end of every input.
    let stored = offsets_in_postgres(&pg).await;
    for (partition, end) in ends(&stack) {
        if end > 0 {
            assert_eq!(stored.get(&partition), Some(&end), "{partition}");
        }
    }
    assert!(warehouse.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_database_is_refilled_from_the_log() {
    let stack = Stack::start().await;
    let pg = Postgres::start().await;
    let e = Encoders::new(&stack).await;
    let mut rng = Lcg(11);
    let mut step = 0;
    stack
        .produce(&generate(&e, &mut rng, 3_000, &mut step))
        .await;
    let mut warehouse = sink(&stack, &pg);
    warehouse
        .wait_caught_up(&ends(&stack), Duration::from_secs(60))
        .await;
    assert!(warehouse.terminate().success());

    // The database loses everything after its "backup" (here: everything).
    let admin = pg.admin().await;
    admin
        .batch_execute(
            "TRUNCATE trellis.progress, trellis.completions, trellis.aggregates, trellis_sink.offsets",
        )
        .await
        .unwrap();
    let mut warehouse = sink(&stack, &pg);
    let (want_progress, want_completions, want_aggregates) = expected(&stack).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (progress, completions, aggregates) = actual(&pg).await;
        if progress == want_progress
            && completions == want_completions
            && aggregates == want_aggregates
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink did not refill the warehouse:\n{}",
            warehouse.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(warehouse.log_text().contains("replaying the inputs"));
    assert!(warehouse.terminate().success());
}

fn erase(e: &Encoders, command_id: &str, tenant: &str, who: &str, kind: &str) -> Produced {
    let command = EraseCommand {
        command_id: command_id.into(),
        request_id: format!("req-{command_id}"),
        tenant_id: tenant.into(),
        participant: "warehouse".into(),
        kind: kind.into(),
        learner: Some(who.into()),
        attempt: 1,
        issued_at: T0,
    };
    Produced {
        topic: ERASE_COMMANDS_TOPIC.into(),
        partition: None,
        key: tenant.as_bytes().to_vec(),
        value: Some(e.commands.encode(&command).unwrap()),
        id: format!("{command_id}/{}", command.attempt),
        tenant: Some(tenant.into()),
    }
}

async fn acks(stack: &Stack) -> Vec<ParticipantAck> {
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let mut out = Vec::new();
    for (_, value) in stack.read(PARTICIPANT_ACKS_TOPIC).records {
        out.push(decoder.decode(&value.unwrap()).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_learner_stays_erased_and_bad_records_are_dead_lettered() {
    let stack = Stack::start().await;
    let pg = Postgres::start().await;
    let e = Encoders::new(&stack).await;
    let mut rng = Lcg(3);
    let mut step = 0;
    let data = generate(&e, &mut rng, 4_000, &mut step);
    stack.produce(&data).await;
    let mut warehouse = sink(&stack, &pg);
    warehouse
        .wait_caught_up(&ends(&stack), Duration::from_secs(60))
        .await;
    let (tenant, who) = (TENANTS[0], learner(5));
    let (before, before_completions, before_aggregates) = actual(&pg).await;
    let held = before
        .keys()
        .filter(|k| k.0 == tenant && k.1 == who)
        .count()
        + before_completions
            .iter()
            .filter(|c| c.0 == tenant && c.2 == who)
            .count();
    assert!(held > 0, "the learner has rows to erase");

    // Access, then erasure, then the same erasure re-sent.
    stack
        .produce(&[
            erase(&e, "access-1", tenant, &who, "access"),
            erase(&e, "erase-1", tenant, &who, "erasure"),
            erase(&e, "erase-1", tenant, &who, "erasure"),
        ])
        .await;
    warehouse
        .wait_caught_up(&ends(&stack), Duration::from_secs(60))
        .await;
    let answers = acks(&stack).await;
    let access = answers.iter().find(|a| a.command_id == "access-1").unwrap();
    assert_eq!(access.records_affected as usize, held, "{access:?}");
    let export: serde_json::Value =
        serde_json::from_str(access.export.as_deref().unwrap()).unwrap();
    assert!(
        export["progress"]
            .as_array()
            .unwrap()
            .iter()
            .all(|row| row["learner"] == who.as_str())
    );
    let erasures: Vec<&ParticipantAck> = answers
        .iter()
        .filter(|a| a.command_id == "erase-1")
        .collect();
    assert!(!erasures.is_empty());
    assert!(
        erasures.iter().all(|a| a == &erasures[0]),
        "a re-sent command gets the identical answer"
    );
    assert_eq!(erasures[0].outcome, "done");
    assert_eq!(erasures[0].records_affected as usize, held);

    let (after, after_completions, after_aggregates) = actual(&pg).await;
    let mut expected_after = before.clone();
    expected_after.retain(|k, _| !(k.0 == tenant && k.1 == who));
    assert_eq!(after, expected_after, "only the learner's rows went");
    assert!(
        after_completions
            .iter()
            .all(|c| !(c.0 == tenant && c.2 == who))
    );
    assert_eq!(after_aggregates, before_aggregates, "aggregates stay");
    let admin = pg.admin().await;
    let remembered: i64 = admin
        .query_one(
            "SELECT count(*) FROM trellis_sink.erased_learners WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(remembered, 1);
    let leaked: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM trellis_sink.receipts
                      WHERE answer::text LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM trellis_sink.erased_learners
                      WHERE tenant_id || request_id LIKE '%' || $1 || '%')",
            &[&who],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "the erased pseudonym is kept only as a hash");
    // …and the hash is the one the docs promise, SHA-256(tenant ‖ 0 ‖ learner):
    // a raw pseudonym stored in the bytea column would not equal it.
    let stored: Vec<u8> = admin
        .query_one(
            "SELECT learner_hash FROM trellis_sink.erased_learners WHERE tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0);
    let expected = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(tenant.as_bytes());
        h.update([0]);
        h.update(who.as_bytes());
        h.finalize().to_vec()
    };
    assert_eq!(stored, expected, "the erased learner is kept as its hash");

    // The learner's old records re-sent, and a rebuild from offset 0: no
    // row comes back.
    let again: Vec<Produced> = data
        .iter()
        .filter(|r| {
            let key = String::from_utf8_lossy(&r.key);
            key.starts_with(&format!("{tenant}|{who}|"))
        })
        .cloned()
        .collect();
    assert!(!again.is_empty());
    assert!(warehouse.terminate().success());
    stack.produce(&again).await;
    let port = trellis_replay_tests::free_port();
    let mut warehouse = Process::spawn(
        "warehouse",
        &stack.config("warehouse", port, "{}"),
        port,
        &[("TRELLIS_WAREHOUSE_URL", pg.owner_url())],
        stack.dir.path(),
        &["--rebuild"],
    );
    warehouse
        .wait_caught_up(&ends(&stack), Duration::from_secs(60))
        .await;
    let (after, _, _) = actual(&pg).await;
    assert_eq!(after, expected_after, "a replay brings nothing back");
    assert!(
        warehouse
            .metric("trellis_erased_learner_records_dropped_total")
            .await
            > 0.0
    );

    // Bad records: a NUL in a learner, a timestamp Postgres cannot hold, a
    // tenant header that disagrees, a tombstone without a key structure,
    // bytes that are not Avro. Each is dead-lettered; the sink goes on.
    let mut nul = LearnerProgress::attempted(tenant, "bad\0learner", "a", T0);
    let nul_record = progress_record(&e, &nul);
    nul.learner = "far-future".into();
    nul.last_activity_at = i64::MAX;
    let far_record = progress_record(&e, &nul);
    nul.last_activity_at = T0;
    nul.learner = "liar".into();
    let mut liar = progress_record(&e, &nul);
    liar.tenant = Some(TENANTS[1].into());
    let mut garbage = tombstone(tenant, "x", "y");
    garbage.topic = COMPLETIONS_TOPIC.into();
    garbage.value = Some(b"not avro".to_vec());
    garbage.id = "garbage".into();
    let mut keyless = tombstone(tenant, "x", "y");
    keyless.key = b"no-separators".to_vec();
    keyless.id = "keyless".into();
    // A tombstone of a key Postgres could not hold (the delete names it),
    // and a command whose request id it could not keep: neither may stop
    // the sink.
    let nul_tombstone = tombstone(tenant, "x", "https://x/\0");
    let mut nul_command = erase(&e, "erase-nul", tenant, &learner(6), "erasure");
    let mut command: EraseCommand =
        AvroDecoder::new(registry_settings(&stack.registry_url).unwrap())
            .decode(nul_command.value.as_deref().unwrap())
            .await
            .unwrap();
    command.request_id = "req\0nul".into();
    nul_command.value = Some(e.commands.encode(&command).unwrap());
    // The last record of a quiet partition is one the sink cannot decode.
    let mut quiet = erase(&e, "quiet", tenant, &who, "erasure");
    quiet.value = Some(b"not avro".to_vec());
    // Each bad record, by its id, and the one dead letter it must become
    // (the command is answered `failed` instead).
    let expected_letters: BTreeMap<String, (String, usize)> = [
        (&nul_record, "WAREHOUSE_INVALID_ROW"),
        (&far_record, "WAREHOUSE_INVALID_ROW"),
        (&liar, "TENANT_MISMATCH"),
        (&garbage, "UNDECODABLE"),
        (&keyless, "WAREHOUSE_INVALID_KEY"),
        (&nul_tombstone, "WAREHOUSE_INVALID_ROW"),
        (&quiet, "UNDECODABLE"),
    ]
    .into_iter()
    .map(|(record, reason)| (record.id.clone(), (reason.to_string(), 1)))
    .collect();
    assert_eq!(
        expected_letters.len(),
        7,
        "the bad records' ids are distinct"
    );
    stack
        .produce(&[
            nul_record,
            far_record,
            liar,
            garbage,
            keyless,
            nul_tombstone,
            nul_command,
            quiet,
        ])
        .await;
    warehouse
        .wait_caught_up(&ends(&stack), Duration::from_secs(60))
        .await;
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    // Source id → (reason, letters): a lost, doubled or misfiled letter shows.
    let mut letters: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for (_, value) in stack.read("dlq").records {
        let letter: DeadLetter = decoder.decode(&value.unwrap()).await.unwrap();
        assert_eq!(letter.processor, "warehouse");
        let source_id = letter
            .original_headers
            .iter()
            .find(|h| h.key == trellis_runtime::kafka::ID_HEADER)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .expect("a letter keeps its input's id header");
        let entry = letters
            .entry(source_id)
            .or_insert((letter.reason.clone(), 0));
        assert_eq!(entry.0, letter.reason, "one reason per input");
        entry.1 += 1;
    }
    let failed = acks(&stack)
        .await
        .into_iter()
        .find(|a| a.command_id == "erase-nul")
        .expect("the command Postgres cannot keep is answered");
    assert_eq!(failed.outcome, "failed", "{failed:?}");

    // A restart does not replay everything: Postgres's offsets cover the
    // records the sink dead-lettered too. A second sink waits for the
    // writer lock instead of writing beside the first.
    assert!(warehouse.terminate().success());
    let mut warehouse = sink(&stack, &pg);
    warehouse
        .wait_caught_up(&ends(&stack), Duration::from_secs(60))
        .await;
    assert!(
        !warehouse.log_text().contains("replaying the inputs"),
        "{}",
        warehouse.log_text()
    );
    // Another instance, as on another machine: its own state directory.
    let port = trellis_replay_tests::free_port();
    let config = stack.config("warehouse", port, "{}");
    let elsewhere = std::fs::read_to_string(&config).unwrap().replace(
        stack.state_dir("warehouse").to_str().unwrap(),
        stack.state_dir("warehouse-elsewhere").to_str().unwrap(),
    );
    let config = stack.dir.path().join("warehouse-elsewhere.yaml");
    std::fs::write(&config, elsewhere).unwrap();
    let mut second = Process::spawn(
        "warehouse",
        &config,
        port,
        &[("TRELLIS_WAREHOUSE_URL", pg.owner_url())],
        stack.dir.path(),
        &[],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !second.log_text().contains("writer lock") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill9();
    assert_eq!(letters, expected_letters);
    assert!(warehouse.terminate().success());
}

/// The reader role `grant` made for `tenant`: its connection URL.
fn grant(pg: &Postgres, tenant: &str) -> String {
    let printed = pg.warehouse_cli(&["grant", "--tenant", tenant]);
    printed
        .lines()
        .find_map(|l| l.strip_prefix("connection: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("the connection URL is printed")
        .to_string()
}

/// Tenants whose rows `client` sees in the tables.
async fn visible(client: &tokio_postgres::Client) -> BTreeSet<String> {
    try_visible(client).await.expect("the query runs")
}

async fn try_visible(
    client: &tokio_postgres::Client,
) -> Result<BTreeSet<String>, tokio_postgres::Error> {
    let mut seen = BTreeSet::new();
    for table in [
        "trellis.progress",
        "trellis.completions",
        "trellis.aggregates",
    ] {
        let rows = client
            .query(&format!("SELECT DISTINCT tenant_id FROM {table}"), &[])
            .await?;
        seen.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(seen)
}

/// `sql` fails with SQLSTATE 42501 (insufficient privilege), the refusal
/// privileges and row-level security give. Any other error — a role or
/// policy that does not exist, a syntax error — fails the test: it would
/// mean the attack was never tried.
async fn refused(client: &tokio_postgres::Client, sql: &str) {
    match client.batch_execute(sql).await {
        Ok(()) => panic!("allowed: {sql}"),
        Err(e) => assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql} failed, but not as refused: {e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_tenant_isolation_attack_reaches_another_tenants_rows() {
    let pg = Postgres::start().await;
    pg.warehouse_cli(&["migrate"]);
    // Rows of both tenants, written as the sink writes (the owner role).
    let owner = Postgres::connect(&pg.owner_url()).await;
    for tenant in ["tenant-a", "tenant-b"] {
        owner
            .execute(
                "INSERT INTO trellis.progress VALUES ($1, 'p1', 'a1', NULL, 1, NULL, NULL, NULL,
                    'completed', now(), now(), '[]', 0, 0)",
                &[&tenant],
            )
            .await
            .unwrap();
        owner
            .execute(
                "INSERT INTO trellis.completions VALUES ($1, 'c1', 'p1', 'a1', NULL, 'completed',
                    NULL, now(), '{}', 0, 0)",
                &[&tenant],
            )
            .await
            .unwrap();
        owner
            .execute(
                "INSERT INTO trellis.aggregates VALUES ($1, 'hour', now(), 'verb', 'v', 9, 9, 0,
                    0, 0, NULL, false, 0, 0, 0)",
                &[&tenant],
            )
            .await
            .unwrap();
    }
    let a_url = grant(&pg, "tenant-a");
    let b_url = grant(&pg, "tenant-b");
    let reader = Postgres::connect(&a_url).await;
    let only_a = BTreeSet::from(["tenant-a".to_string()]);

    // Its own rows, in every table; nothing else.
    assert_eq!(visible(&reader).await, only_a);
    for table in ["progress", "completions", "aggregates"] {
        let n: i64 = reader
            .query_one(&format!("SELECT count(*) FROM trellis.{table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{table}");
    }

    // Writing another tenant's rows, or its own.
    refused(
        &reader,
        "INSERT INTO trellis.progress VALUES ('tenant-b', 'p9', 'a9', NULL, 1, NULL, NULL, NULL,
            'completed', now(), now(), '[]', 0, 0)",
    )
    .await;
    refused(
        &reader,
        "UPDATE trellis.progress SET tenant_id = 'tenant-b'",
    )
    .await;
    refused(
        &reader,
        "DELETE FROM trellis.completions WHERE tenant_id = 'tenant-b'",
    )
    .await;
    refused(&reader, "TRUNCATE trellis.aggregates").await;

    // Naming another tenant in the session, as the service role does.
    reader
        .batch_execute("SET trellis.tenant = 'tenant-b'")
        .await
        .unwrap();
    assert_eq!(visible(&reader).await, only_a);
    reader
        .batch_execute("BEGIN; SET LOCAL trellis.tenant = 'tenant-b'")
        .await
        .unwrap();
    assert_eq!(visible(&reader).await, only_a);
    reader.batch_execute("COMMIT").await.unwrap();

    // Becoming someone else.
    refused(&reader, "SET ROLE trellis_sink").await;
    refused(&reader, "SET ROLE trellis_service").await;
    refused(&reader, "SET SESSION AUTHORIZATION trellis").await;
    reader.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(visible(&reader).await, only_a);
    reader
        .batch_execute("SET ROLE trellis_readers")
        .await
        .unwrap();
    assert!(
        visible(&reader).await.is_empty(),
        "the readers' group role maps to no tenant"
    );
    reader.batch_execute("RESET ROLE").await.unwrap();

    // Turning the policies off, or mapping itself to another tenant.
    refused(
        &reader,
        "ALTER TABLE trellis.progress DISABLE ROW LEVEL SECURITY",
    )
    .await;
    refused(&reader, "DROP POLICY tenant_rows ON trellis.progress").await;
    refused(
        &reader,
        "UPDATE trellis_sink.reader_roles SET tenant_id = 'tenant-b'",
    )
    .await;
    refused(
        &reader,
        "INSERT INTO trellis_sink.reader_roles (role_name, tenant_id) VALUES ('trellis_readers', 'tenant-b')",
    )
    .await;
    reader
        .batch_execute("SET row_security = off")
        .await
        .unwrap();
    assert_eq!(
        try_visible(&reader)
            .await
            .err()
            .and_then(|e| e.code().cloned()),
        Some(tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "with row_security off a query that policies would filter fails"
    );
    reader.batch_execute("SET row_security = on").await.unwrap();
    let mappings: i64 = reader
        .query_one("SELECT count(*) FROM trellis_sink.reader_roles", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(mappings, 1, "a reader sees its own mapping only");

    // Views and functions of its own run with its own rights.
    reader
        .batch_execute(
            "CREATE TEMP VIEW everything AS SELECT * FROM trellis.progress;
             CREATE FUNCTION pg_temp.everything() RETURNS SETOF text
                 LANGUAGE sql SECURITY DEFINER AS 'SELECT tenant_id FROM trellis.completions';",
        )
        .await
        .unwrap();
    let through_view: Vec<String> = reader
        .query("SELECT tenant_id FROM everything", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(through_view, vec!["tenant-a".to_string()]);
    let through_function: Vec<String> = reader
        .query("SELECT * FROM pg_temp.everything()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(through_function, vec!["tenant-a".to_string()]);
    refused(&reader, "CREATE VIEW trellis.mine AS SELECT 1").await;
    refused(&reader, "CREATE VIEW public.mine AS SELECT 1").await;

    // The service role sees nothing without a tenant, the tenant of its
    // transaction with one, and nothing again after the transaction.
    let service = Postgres::connect(&pg.service_url()).await;
    assert!(visible(&service).await.is_empty());
    service
        .batch_execute("BEGIN; SET LOCAL trellis.tenant = 'tenant-b'")
        .await
        .unwrap();
    assert_eq!(
        visible(&service).await,
        BTreeSet::from(["tenant-b".to_string()])
    );
    service.batch_execute("COMMIT").await.unwrap();
    assert!(
        visible(&service).await.is_empty(),
        "SET LOCAL ends with its transaction"
    );
    refused(&service, "DELETE FROM trellis.progress").await;

    // B's rows are untouched; revoking A ends its access at once.
    let b = Postgres::connect(&b_url).await;
    assert_eq!(visible(&b).await, BTreeSet::from(["tenant-b".to_string()]));
    let listed = pg.warehouse_cli(&["readers"]);
    assert!(
        listed.contains("trellis_reader_tenant_a\ttenant-a"),
        "{listed}"
    );
    pg.warehouse_cli(&["revoke", "--tenant", "tenant-a"]);
    assert!(reader.query("SELECT 1", &[]).await.is_err());
    assert!(
        tokio_postgres::connect(&a_url, tokio_postgres::NoTls)
            .await
            .is_err()
    );
    // Granting twice is refused; after a revoke a new grant works.
    let again = std::process::Command::new(trellis_replay_tests::binary("trellis-warehouse"))
        .args(["grant", "--tenant", "tenant-b"])
        .env("TRELLIS_WAREHOUSE_ADMIN_URL", pg.admin_url())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("revoke it first"));
    let renewed = Postgres::connect(&grant(&pg, "tenant-a")).await;
    assert_eq!(visible(&renewed).await, only_a);
}
