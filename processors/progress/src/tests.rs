use std::collections::BTreeMap;
use std::sync::LazyLock;

use trellis_records::{ERASE_COMMANDS_TOPIC, PROTECTED_TOPIC, ProtectedEvent, ProtectedResult};
use trellis_runtime::offline::Harness;
use trellis_runtime::pipeline::{OwnedRecord, replay_offline, run_offline};
use trellis_runtime::schema::AvroDecoder;
use trellis_runtime::state::StateStore;

use super::*;

/// Processors, encoders and the decoder of one harness: the workspace's
/// topology.yaml, schemas under local ids.
fn harness() -> &'static Harness {
    static HARNESS: LazyLock<Harness> = LazyLock::new(Harness::workspace);
    &HARNESS
}

fn decoder() -> &'static AvroDecoder {
    harness().decoder()
}

const QUIZ: &str = "https://lms.example/mod/quiz/view.php?id=100";
const PAGE: &str = "https://lms.example/mod/page/view.php?id=102";
const COURSE: &str = "https://lms.example/course/100";

fn settings() -> Settings {
    let mut settings = Settings::default();
    settings
        .activities
        .insert(QUIZ.into(), ActivitySettings { mastery: Some(0.6) });
    settings.courses.insert(
        COURSE.into(),
        CourseSettings {
            requires: vec![QUIZ.into(), PAGE.into()],
        },
    );
    settings
}

/// The projector as the binary builds it.
fn projector() -> Progress {
    harness().build::<Progress>(&settings()).unwrap()
}

fn event(
    tenant: &str,
    learner: &str,
    id: &str,
    at: i64,
    verb: &str,
    object: Option<&str>,
) -> ProtectedEvent {
    ProtectedEvent {
        object_id: object.map(str::to_string),
        course_id: Some(COURSE.into()),
        ..ProtectedEvent::statement(tenant, learner, id, at, verb)
    }
}

fn scored(mut e: ProtectedEvent, success: bool, score: f64) -> ProtectedEvent {
    e.result = Some(ProtectedResult::scored(success, score));
    e
}

fn voiding(tenant: &str, id: &str, at: i64, target: &str) -> ProtectedEvent {
    let mut e = event(tenant, "p_admin", id, at, "voided", None);
    e.voided_event_id = Some(target.into());
    e.course_id = None;
    e
}

fn records(events: &[ProtectedEvent]) -> Vec<OwnedRecord> {
    let encoder = harness().encoder(PROTECTED_TOPIC);
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let key = format!("{}|{}", e.tenant_id, e.learner).into_bytes();
            let value = encoder.encode(e).unwrap();
            OwnedRecord::new(
                PROTECTED_TOPIC,
                0,
                i as i64,
                Some(e.received_at),
                Some(key),
                Some(value),
            )
        })
        .collect()
}

struct Run {
    store: StateStore,
    _dir: tempfile::TempDir,
    outputs: Vec<OutputRecord>,
}

fn run(events: &[ProtectedEvent]) -> Run {
    run_batched(events, 3)
}

/// [`run`], committing every `batch` records.
fn run_batched(events: &[ProtectedEvent], batch: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let offline = run_offline(
        NAME,
        &mut projector(),
        &store,
        decoder(),
        &records(events),
        batch,
    )
    .unwrap();
    assert!(offline.dead_letters.is_empty());
    Run {
        store,
        _dir: dir,
        outputs: offline.outputs,
    }
}

impl Run {
    /// The compacted view of `progress`: last value per key, tombstones removed.
    fn progress(&self) -> BTreeMap<String, LearnerProgress> {
        let decoder = decoder();
        let mut view = BTreeMap::new();
        for r in self.outputs.iter().filter(|r| &*r.topic == PROGRESS_TOPIC) {
            let key = String::from_utf8(r.key.clone()).unwrap();
            match &r.value {
                Some(v) => view.insert(key, decoder.decode_blocking::<LearnerProgress>(v).unwrap()),
                None => view.remove(&key),
            };
        }
        view
    }

    fn completions(&self) -> Vec<Completion> {
        let decoder = decoder();
        self.outputs
            .iter()
            .filter(|r| &*r.topic == COMPLETIONS_TOPIC)
            .map(|r| decoder.decode_blocking(r.value.as_ref().unwrap()).unwrap())
            .collect()
    }

    /// Completions in force: issued and not revoked.
    fn net_completions(&self) -> BTreeMap<String, (String, String, Vec<String>)> {
        let mut net = BTreeMap::new();
        for c in self.completions() {
            if c.kind == "revoked" {
                let revoked = &c.evidence_event_ids[..c.evidence_event_ids.len() - 1];
                net.retain(|_, (_, _, ev): &mut (String, String, Vec<String>)| {
                    ev.as_slice() != revoked
                });
            } else {
                net.insert(
                    c.completion_id.clone(),
                    (
                        c.activity_id.clone(),
                        c.kind.clone(),
                        c.evidence_event_ids.clone(),
                    ),
                );
            }
        }
        net
    }
}

#[test]
fn a_statement_id_counts_once_even_when_resent_with_another_time() {
    let first = event("acme", "p_1", "s-1", 1_000, "attempted", Some(QUIZ));
    let mut again = first.clone();
    again.occurred_at = 9_000;
    again.received_at = 9_000;
    let other = event("acme", "p_1", "s-2", 6_000, "attempted", Some(QUIZ));
    let row = |events: &[ProtectedEvent]| {
        run(events)
            .progress()
            .into_values()
            .find(|row| row.activity_id == QUIZ)
            .expect("the quiz's progress row")
    };
    // Positive control: a second statement id is a second attempt.
    assert_eq!(row(&[first.clone(), other.clone()]).attempts, 2);
    let resent = row(&[first, again, other]);
    assert_eq!(resent.attempts, 2, "the re-sent statement counted again");
    assert_eq!(
        resent.last_activity_at, 6_000,
        "nor moved the last activity"
    );
}

fn journey(tenant: &str, learner: &str) -> Vec<ProtectedEvent> {
    let id = |n: &str| format!("{tenant}-{learner}-{n}");
    vec![
        event(tenant, learner, &id("att1"), 1_000, "attempted", Some(QUIZ)),
        scored(
            event(tenant, learner, &id("fail"), 2_000, "failed", Some(QUIZ)),
            false,
            0.4,
        ),
        event(tenant, learner, &id("att2"), 3_000, "attempted", Some(QUIZ)),
        scored(
            event(tenant, learner, &id("pass"), 4_000, "passed", Some(QUIZ)),
            true,
            0.8,
        ),
        event(
            tenant,
            learner,
            &id("claim"),
            4_500,
            "completed",
            Some(COURSE),
        ),
        event(tenant, learner, &id("page"), 5_000, "completed", Some(PAGE)),
    ]
}

#[test]
fn a_journey_derives_progress_completions_and_a_course() {
    let run = run(&journey("acme", "p_ann"));
    let view = run.progress();
    let quiz = &view[&format!("acme|p_ann|{QUIZ}")];
    assert_eq!(quiz.attempts, 2);
    assert_eq!(quiz.best_score_scaled, Some(0.8));
    assert_eq!(quiz.success, Some(true));
    assert_eq!(quiz.completion, "completed");
    assert_eq!(
        (quiz.first_activity_at, quiz.last_activity_at),
        (1_000, 4_000)
    );
    let course = &view[&format!("acme|p_ann|{COURSE}")];
    assert_eq!(course.completion, "completed");

    let net = run.net_completions();
    let kinds: Vec<(&str, &str)> = net
        .values()
        .map(|(a, k, _)| (a.as_str(), k.as_str()))
        .collect();
    assert_eq!(kinds.len(), 4, "{kinds:?}");
    let course_completion = net.values().find(|(a, _, _)| a == COURSE).unwrap();
    assert_eq!(
        course_completion.2,
        ["acme-p_ann-pass", "acme-p_ann-page"],
        "course evidence is its activities'"
    );

    let transcript = transcript::transcript(&run.store, "acme", "p_ann").unwrap();
    let done: Vec<&str> = transcript
        .entries
        .iter()
        .map(|e| e.activity_id.as_str())
        .collect();
    // The course completes with its last activity (same time; ties by IRI).
    assert_eq!(done, [QUIZ, COURSE, PAGE]);
    assert_eq!(
        transcript.entries[0].evidence_event_ids,
        ["acme-p_ann-pass"]
    );
}

#[test]
fn the_course_claim_alone_completes_nothing() {
    let run = run(&[event("acme", "p_bo", "claim", 1, "completed", Some(COURSE))]);
    assert_eq!(
        run.progress()[&format!("acme|p_bo|{COURSE}")].completion,
        "incomplete"
    );
    assert!(run.completions().is_empty());
}

#[test]
fn arrival_order_does_not_change_state_or_final_outputs() {
    let mut events = journey("acme", "p_ann");
    events.extend(journey("acme", "p_cy"));
    events.push(voiding("acme", "void-1", 9_000, "acme-p_cy-pass"));
    let in_order = run(&events);
    let mut reversed = events.clone();
    reversed.reverse();
    let reversed = run(&reversed);
    assert_eq!(
        in_order.store.digest().unwrap(),
        reversed.store.digest().unwrap()
    );
    assert_eq!(in_order.progress(), reversed.progress());
    assert_eq!(in_order.net_completions(), reversed.net_completions());

    // Rows are held in memory and written once per batch: where batches
    // end changes neither the store nor any output.
    for batch in [1, events.len()] {
        let other = run_batched(&events, batch);
        assert_eq!(
            in_order.store.digest().unwrap(),
            other.store.digest().unwrap(),
            "batches of {batch}"
        );
        let all = |run: &Run| {
            run.outputs
                .iter()
                .map(|r| (r.id.clone(), r.key.clone(), r.value.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&in_order), all(&other), "batches of {batch}");
    }

    // A replay (outputs dropped, so none built) builds the same store.
    let dir = tempfile::tempdir().unwrap();
    let replayed = StateStore::open(dir.path()).unwrap();
    let offline = replay_offline(
        NAME,
        &mut projector(),
        &replayed,
        decoder(),
        &records(&events),
        3,
    )
    .unwrap();
    assert!(offline.outputs.is_empty(), "a replay publishes nothing");
    assert_eq!(in_order.store.digest().unwrap(), replayed.digest().unwrap());
}

#[test]
fn a_void_revokes_what_its_target_proved() {
    let mut events = journey("acme", "p_ann");
    events.push(voiding("acme", "void-1", 9_000, "acme-p_ann-pass"));
    let run = run(&events);
    let quiz = &run.progress()[&format!("acme|p_ann|{QUIZ}")];
    assert_eq!(quiz.completion, "incomplete");
    assert_eq!(quiz.success, Some(false));
    let revoked: Vec<Completion> = run
        .completions()
        .into_iter()
        .filter(|c| c.kind == "revoked")
        .collect();
    // The quiz's pass and completion, and the course completion resting on it.
    assert_eq!(revoked.len(), 3, "{revoked:?}");
    assert!(
        revoked
            .iter()
            .all(|c| c.evidence_event_ids.last().unwrap() == "void-1")
    );
    assert!(run.net_completions().values().all(|(a, _, _)| a == PAGE));
    let transcript = transcript::transcript(&run.store, "acme", "p_ann").unwrap();
    assert_eq!(transcript.entries.len(), 1);
}

#[test]
fn a_void_before_its_target_means_the_target_never_counts() {
    let run = run(&[
        voiding("acme", "void-1", 1, "late-pass"),
        scored(
            event("acme", "p_ann", "late-pass", 2, "passed", Some(QUIZ)),
            true,
            0.9,
        ),
    ]);
    assert!(run.progress().is_empty());
    assert!(run.completions().is_empty());
}

#[test]
fn a_repeated_statement_changes_nothing() {
    let events = journey("acme", "p_ann");
    let once = run(&events);
    let mut twice = events.clone();
    twice.extend(events);
    let twice = run(&twice);
    assert_eq!(once.store.digest().unwrap(), twice.store.digest().unwrap());
    assert_eq!(once.completions(), twice.completions());
}

#[test]
fn tenants_sharing_learner_and_course_ids_stay_apart() {
    let mut events = journey("acme", "p_same");
    let mut other = journey("globex", "p_same");
    other.truncate(2); // globex: attempted and failed only
    events.extend(other);
    let run = run(&events);
    for record in &run.outputs {
        let tenant = record.tenant.as_deref().unwrap();
        assert!(record.key.starts_with(format!("{tenant}|").as_bytes()));
    }
    let view = run.progress();
    let globex = &view[&format!("globex|p_same|{QUIZ}")];
    assert_eq!(
        (globex.attempts, globex.completion.as_str()),
        (1, "incomplete")
    );
    assert!(
        globex
            .evidence
            .iter()
            .all(|e| e.event_id.starts_with("globex-"))
    );
    assert!(run.completions().iter().all(|c| c.tenant_id == "acme"));
    assert!(
        transcript::transcript(&run.store, "globex", "p_same")
            .unwrap()
            .entries
            .is_empty()
    );
}

fn erase(tenant: &str, learner: &str, command: &str, at: i64) -> OwnedRecord {
    let value = harness()
        .encoder(ERASE_COMMANDS_TOPIC)
        .encode(&EraseCommand {
            command_id: command.into(),
            request_id: "req".into(),
            tenant_id: tenant.into(),
            participant: NAME.into(),
            kind: "erasure".into(),
            learner: Some(learner.into()),
            attempt: 1,
            issued_at: at,
        })
        .unwrap();
    OwnedRecord {
        topic: ERASE_COMMANDS_TOPIC.into(),
        partition: 0,
        offset: 0,
        timestamp_ms: Some(at),
        key: None,
        value: Some(value),
        headers: Vec::new(),
    }
}

#[test]
fn erasure_removes_the_learner_and_replay_cannot_bring_them_back() {
    let mut events = journey("acme", "p_ann");
    events.extend(journey("acme", "p_cy"));
    let input = records(&events);
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut projector = projector();
    run_offline(NAME, &mut projector, &store, decoder(), &input, 4).unwrap();
    let others = transcript::transcript(&store, "acme", "p_cy").unwrap();

    let command = erase("acme", "p_ann", "cmd-1", 10_000);
    let first = run_offline(
        NAME,
        &mut projector,
        &store,
        decoder(),
        std::slice::from_ref(&command),
        1,
    )
    .unwrap();
    let tombstones: Vec<&OutputRecord> = first
        .outputs
        .iter()
        .filter(|r| &*r.topic == PROGRESS_TOPIC)
        .collect();
    assert_eq!(tombstones.len(), 3, "quiz, page and course rows");
    assert!(tombstones.iter().all(|r| r.value.is_none()));
    let ack = |o: &[OutputRecord]| {
        let r = o
            .iter()
            .find(|r| &*r.topic == PARTICIPANT_ACKS_TOPIC)
            .unwrap();
        (
            r.id.clone(),
            decoder()
                .decode_blocking::<ParticipantAck>(r.value.as_ref().unwrap())
                .unwrap(),
        )
    };
    let (id, answer) = ack(&first.outputs);
    assert_eq!(
        (answer.outcome.as_str(), answer.records_affected),
        ("done", 3)
    );

    let again = run_offline(NAME, &mut projector, &store, decoder(), &[command], 1).unwrap();
    assert_eq!(
        ack(&again.outputs),
        (id, answer),
        "a re-sent command gets the same answer"
    );

    assert!(
        transcript::transcript(&store, "acme", "p_ann")
            .unwrap()
            .entries
            .is_empty()
    );
    assert_eq!(
        transcript::transcript(&store, "acme", "p_cy").unwrap(),
        others
    );
    // The same statements again, as re-sent records further down the log
    // (positions never move backwards, so a re-delivery is a new offset).
    let resent: Vec<OwnedRecord> = input
        .iter()
        .cloned()
        .map(|mut r| {
            r.offset += 1_000_000;
            r
        })
        .collect();
    let replayed = run_offline(NAME, &mut projector, &store, decoder(), &resent, 4).unwrap();
    assert!(
        replayed
            .outputs
            .iter()
            .all(|r| !r.key.starts_with(b"acme|p_ann|")),
        "a replay must not resurrect an erased learner"
    );
    assert!(
        store
            .scan_prefix(&learner_prefix("acme", "p_ann"))
            .next()
            .is_none()
    );
}

#[test]
fn rules_are_checked_at_start() {
    let mut settings = settings();
    settings
        .activities
        .insert("x".into(), ActivitySettings { mastery: Some(1.5) });
    settings
        .courses
        .insert("c".into(), CourseSettings { requires: vec![] });
    let problems = trellis_runtime::build::Settings::check(&settings)
        .unwrap_err()
        .join("\n");
    assert!(problems.contains("mastery 1.5"), "{problems}");
    assert!(problems.contains("`requires` is empty"), "{problems}");
}

mod read_path {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use sha2::{Digest, Sha256};
    use tower::ServiceExt;

    use super::*;
    use crate::transcript::{PrincipalSpec, Role, TranscriptApi, TranscriptSettings};

    fn principal(name: &str, tenant: &str, role: Role, learner: Option<&str>) -> PrincipalSpec {
        PrincipalSpec {
            name: name.into(),
            token_sha256: hex::encode(Sha256::digest(format!("token-{name}").as_bytes())),
            tenant: tenant.into(),
            role,
            learner: learner.map(str::to_string),
        }
    }

    async fn get(
        api: &TranscriptApi,
        path: &str,
        who: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut request = Request::get(path);
        if let Some(who) = who {
            request = request.header("authorization", format!("Bearer token-{who}"));
        }
        let response = api
            .clone()
            .router()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn learners_read_their_own_and_operators_their_tenants() {
        let run = run(&journey("acme", "p_ann"));
        let settings = TranscriptSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            principals: vec![
                principal("ops", "acme", Role::Operator, None),
                principal("ann", "acme", Role::Learner, Some("p_ann")),
                principal("globex-ops", "globex", Role::Operator, None),
            ],
        };
        TranscriptApi::check(&settings).unwrap();
        let api = TranscriptApi::new(settings, run.store.clone());
        let path = "/v1/transcripts/acme/p_ann";

        let (status, body) = get(&api, path, Some("ann")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["entries"].as_array().unwrap().len(), 3);
        assert_eq!(get(&api, path, Some("ops")).await.0, StatusCode::OK);
        assert_eq!(
            get(&api, "/v1/transcripts/acme/p_cy", Some("ann")).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get(&api, path, Some("globex-ops")).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get(&api, "/v1/transcripts/globex/p_ann", Some("ann"))
                .await
                .0,
            StatusCode::FORBIDDEN
        );
        let (status, body) = get(&api, path, Some("nobody")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED"))
        );
        assert_eq!(get(&api, path, None).await.0, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_learner_principal_must_name_their_pseudonym() {
        let settings = TranscriptSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            principals: vec![principal("ann", "acme", Role::Learner, None)],
        };
        assert!(
            TranscriptApi::check(&settings)
                .unwrap_err()
                .contains("principal ann")
        );
    }
}
