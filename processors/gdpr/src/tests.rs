use std::sync::LazyLock;

use trellis_runtime::offline::Harness;
use trellis_runtime::pipeline::{OwnedRecord, run_offline};

use super::*;

/// The workspace's topology with two participants after privacy, progress
/// and analytics (the warehouse reads no erase commands here), schemas
/// under local ids.
fn harness() -> &'static Harness {
    static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
        let mut topology = Harness::workspace().topology().clone();
        if let Some(warehouse) = topology.processors.get_mut("warehouse") {
            warehouse.inputs.retain(|t| t != ERASE_COMMANDS_TOPIC);
        }
        Harness::with_topology(topology)
    });
    &HARNESS
}

fn encoder(topic: &str) -> AvroEncoder {
    harness().encoder(topic)
}

fn decoder() -> &'static AvroDecoder {
    harness().decoder()
}

fn settings(export_dir: &std::path::Path) -> Settings {
    Settings {
        tenants: vec!["acme".into(), "globex".into()],
        retry_after_ms: 10_000,
        tick_ms: 1_000,
        legal_holds: vec![LegalHold {
            tenant: "globex".into(),
            subject_id_kind: Some("user_id".into()),
            subject_id: Some("held".into()),
            reason: "litigation 114".into(),
        }],
        export_dir: export_dir.to_path_buf(),
    }
}

/// The saga as the binary builds it.
fn gdpr(export_dir: &std::path::Path) -> Gdpr {
    harness().build::<Gdpr>(&settings(export_dir)).unwrap()
}

fn record<T: Serialize>(topic: &str, offset: i64, at: i64, value: &T) -> OwnedRecord {
    OwnedRecord {
        topic: topic.into(),
        partition: 0,
        offset,
        timestamp_ms: Some(at),
        key: None,
        value: Some(encoder(topic).encode(value).unwrap()),
        headers: Vec::new(),
    }
}

fn request(id: &str, tenant: &str, kind: &str, subject: &str) -> SubjectRequest {
    SubjectRequest {
        request_id: id.into(),
        tenant_id: tenant.into(),
        kind: kind.into(),
        subject_id_kind: "user_id".into(),
        subject_id: subject.into(),
        requested_at: 1_000,
        other_subject_ids: Vec::new(),
    }
}

fn answer(request_id: &str, participant: &str, outcome: &str, at: i64) -> ParticipantAck {
    ParticipantAck {
        command_id: format!("{request_id}/{participant}"),
        request_id: request_id.into(),
        tenant_id: "acme".into(),
        participant: participant.into(),
        outcome: outcome.into(),
        detail: format!("{participant} did it"),
        learner: (outcome == "done").then(|| "p_ann".to_string()),
        shredded_key_ids: if participant == PRIVACY {
            vec!["key-1".into()]
        } else {
            Vec::new()
        },
        records_affected: 3,
        export: None,
        acked_at: at,
    }
}

fn anchor(sequence: i64, request_ids: &[&str], at: i64) -> Anchor {
    Anchor {
        sequence,
        topic: AUDIT_EVENTS_TOPIC.into(),
        partition: 0,
        first_offset: sequence,
        last_offset: sequence,
        tree_size: sequence + 1,
        root: "ab".repeat(32),
        previous_hash: "00".repeat(32),
        request_ids: request_ids.iter().map(|s| s.to_string()).collect(),
        anchored_at: at,
        key_id: "k".into(),
        signature: "cd".repeat(32),
        checkpoint: format!(
            "log.test/audit\n{}\nq83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\n\n— k sig{sequence}\n",
            sequence + 1
        ),
    }
}

struct Run {
    outputs: Vec<OutputRecord>,
    digest: String,
    _dir: tempfile::TempDir,
}

fn run(records: &[OwnedRecord], export_dir: &std::path::Path) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let outputs = run_offline(NAME, &mut gdpr(export_dir), &store, decoder(), records, 1)
        .unwrap()
        .outputs;
    let digest = store.digest().unwrap().to_string();
    Run {
        outputs,
        digest,
        _dir: dir,
    }
}

/// Runs `log`, then plays the decision ticks the saga asked for back to
/// it, dated `at` (as the broker would, after the records already there).
fn settled(log: &mut Vec<OwnedRecord>, export_dir: &std::path::Path, at: i64) -> Run {
    let first = run(log, export_dir);
    let decided: Vec<String> = of::<Tick>(&first.outputs, GDPR_TICKS_TOPIC)
        .into_iter()
        .filter_map(|t| t.request_id)
        .collect();
    if decided.is_empty() {
        return first;
    }
    for request_id in decided {
        let offset = log
            .iter()
            .filter(|r| r.topic == GDPR_TICKS_TOPIC)
            .map(|r| r.offset + 1)
            .max()
            .unwrap_or_default();
        log.push(decision(offset, &request_id, at));
    }
    run(log, export_dir)
}

fn decision(offset: i64, request_id: &str, at: i64) -> OwnedRecord {
    tick_record(offset, at, Some(request_id))
}

/// A clock tick on `gdpr.ticks` (a decision tick when it names a request).
fn tick_record(offset: i64, at: i64, request_id: Option<&str>) -> OwnedRecord {
    record(
        GDPR_TICKS_TOPIC,
        offset,
        at,
        &Tick {
            processor: NAME.into(),
            at,
            request_id: request_id.map(str::to_string),
        },
    )
}

fn of<T: for<'de> Deserialize<'de>>(outputs: &[OutputRecord], topic: &str) -> Vec<T> {
    let decoder = decoder();
    outputs
        .iter()
        .filter(|o| &*o.topic == topic)
        .map(|o| {
            decoder
                .decode_blocking(o.value.as_deref().unwrap())
                .unwrap()
        })
        .collect()
}

fn erasure_log() -> Vec<OwnedRecord> {
    vec![
        record(
            SUBJECT_REQUESTS_TOPIC,
            0,
            1_000,
            &request("r1", "acme", "erasure", "42"),
        ),
        record(
            PARTICIPANT_ACKS_TOPIC,
            0,
            1_100,
            &answer("r1", PRIVACY, "done", 1_100),
        ),
        record(
            PARTICIPANT_ACKS_TOPIC,
            1,
            1_200,
            &answer("r1", "progress", "done", 1_200),
        ),
        record(
            PARTICIPANT_ACKS_TOPIC,
            2,
            1_250,
            &answer("r1", "analytics", "done", 1_250),
        ),
        record(ANCHORS_TOPIC, 0, 1_400, &anchor(0, &["r1"], 1_400)),
    ]
}

#[test]
fn an_erasure_runs_through_every_participant_and_cites_the_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = erasure_log();
    let done = settled(&mut log, dir.path(), 1_500);
    let shreds: Vec<ShredRequest> = of(&done.outputs, SHRED_REQUESTS_TOPIC);
    assert_eq!(shreds.len(), 1);
    assert_eq!(
        (shreds[0].subject_id.as_str(), shreds[0].attempt),
        ("42", 1)
    );
    let erase: Vec<EraseCommand> = of(&done.outputs, ERASE_COMMANDS_TOPIC);
    assert_eq!(
        erase
            .iter()
            .map(|c| (c.participant.as_str(), c.learner.as_deref()))
            .collect::<Vec<_>>(),
        [("progress", Some("p_ann")), ("analytics", Some("p_ann"))]
    );
    let events: Vec<AuditEvent> = of(&done.outputs, AUDIT_EVENTS_TOPIC);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].details["request_id"], "r1");
    let acks: Vec<SubjectRequestAck> = of(&done.outputs, SUBJECT_ACKS_TOPIC);
    assert_eq!(acks.len(), 1);
    let ack = &acks[0];
    assert_eq!(ack.status, "completed");
    assert_eq!(
        ack.audit_anchor,
        Some(hex::encode(anchor_hash(&anchor(0, &["r1"], 1_400))))
    );
    // …and the anchor log's checkpoint that includes it.
    assert_eq!(
        ack.audit_checkpoint,
        Some(anchor(0, &["r1"], 1_400).checkpoint)
    );
    assert_eq!(
        ack.participants
            .iter()
            .map(|p| p.participant.as_str())
            .collect::<Vec<_>>(),
        ["privacy", "progress", "analytics"]
    );
    assert_eq!(ack.participants[0].shredded_key_ids, ["key-1"]);
    // Answered when the saga decided, not at any input's time.
    assert_eq!((ack.requested_at, ack.acknowledged_at), (1_000, 1_500));

    // Before the anchor, nobody is answered.
    let early = run(&log[..4], dir.path());
    assert!(of::<SubjectRequestAck>(&early.outputs, SUBJECT_ACKS_TOPIC).is_empty());
}

#[test]
fn the_answer_is_dated_by_the_first_decision_tick_from_the_wall_clock() {
    let dir = tempfile::tempdir().unwrap();
    let before = trellis_runtime::ticker::now_ms();
    let undecided = run(&erasure_log(), dir.path());
    let after = trellis_runtime::ticker::now_ms();
    // Every fact is in, but the answer waits for its time to be in the log.
    assert!(of::<SubjectRequestAck>(&undecided.outputs, SUBJECT_ACKS_TOPIC).is_empty());
    let ticks: Vec<Tick> = of(&undecided.outputs, GDPR_TICKS_TOPIC);
    assert_eq!(ticks.len(), 1);
    assert_eq!(ticks[0].request_id.as_deref(), Some("r1"));
    assert!(
        (before..=after).contains(&ticks[0].at),
        "the decision reads the wall clock"
    );

    // A re-run batch wrote the decision twice: the first one dates it.
    let mut log = erasure_log();
    log.push(decision(5, "r1", 7_000));
    log.push(decision(6, "r1", 9_000));
    let done = run(&log, dir.path());
    let acks: Vec<SubjectRequestAck> = of(&done.outputs, SUBJECT_ACKS_TOPIC);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].acknowledged_at, 7_000);
    // The replay reads the time back rather than the clock.
    assert_eq!(run(&log, dir.path()).digest, done.digest);
}

#[test]
fn facts_in_any_order_give_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let reference = settled(&mut erasure_log(), dir.path(), 1_500).digest;
    // Answers and the anchor replayed before the request (another partition
    // interleaving), and a duplicate answer from a re-sent command.
    let mut shuffled = erasure_log();
    shuffled.rotate_left(1);
    shuffled.push(record(
        PARTICIPANT_ACKS_TOPIC,
        3,
        9_000,
        &answer("r1", "progress", "done", 9_000),
    ));
    let again = settled(&mut shuffled, dir.path(), 1_500);
    assert_eq!(again.digest, reference);
    let acks: Vec<SubjectRequestAck> = of(&again.outputs, SUBJECT_ACKS_TOPIC);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].acknowledged_at, 1_500);
    // A rebuild may read the decision tick (its own topic) before the
    // facts it followed: it dates the answer all the same, and no second
    // decision is asked for.
    let mut decision_first = vec![decision(0, "r1", 1_500)];
    decision_first.extend(erasure_log());
    let replayed = run(&decision_first, dir.path());
    assert_eq!(replayed.digest, reference);
    let acks: Vec<SubjectRequestAck> = of(&replayed.outputs, SUBJECT_ACKS_TOPIC);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].acknowledged_at, 1_500);
    assert!(of::<Tick>(&replayed.outputs, GDPR_TICKS_TOPIC).is_empty());
}

#[test]
fn bad_requests_are_rejected_and_held_subjects_deferred_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let mut mbox = request("r4", "acme", "erasure", "ann@example.org");
    mbox.subject_id_kind = "mbox".into();
    // Held through the second identifier it names.
    let mut held = request("r6", "globex", "erasure", "https://lms.example|1");
    held.subject_id_kind = "account".into();
    held.other_subject_ids = vec![subject("user_id", "held")];
    let mut bad_second = request("r7", "acme", "erasure", "42");
    bad_second.other_subject_ids = vec![subject("mbox", "ann@example.org")];
    let mut log = vec![
        record(
            SUBJECT_REQUESTS_TOPIC,
            0,
            1,
            &request("r1", "initech", "erasure", "42"),
        ),
        record(
            SUBJECT_REQUESTS_TOPIC,
            1,
            2,
            &request("r2", "acme", "erasure", ""),
        ),
        record(
            SUBJECT_REQUESTS_TOPIC,
            2,
            3,
            &request("r3", "globex", "erasure", "held"),
        ),
        record(SUBJECT_REQUESTS_TOPIC, 3, 4, &mbox),
        record(
            SUBJECT_REQUESTS_TOPIC,
            4,
            5,
            &request("r5", "acme", "forget", "42"),
        ),
        record(SUBJECT_REQUESTS_TOPIC, 5, 6, &held),
        record(SUBJECT_REQUESTS_TOPIC, 6, 7, &bad_second),
    ];
    let done = settled(&mut log, dir.path(), 100);
    assert!(of::<ShredRequest>(&done.outputs, SHRED_REQUESTS_TOPIC).is_empty());
    let acks: Vec<SubjectRequestAck> = of(&done.outputs, SUBJECT_ACKS_TOPIC);
    let reasons: Vec<(&str, &str)> = acks
        .iter()
        .map(|a| (a.status.as_str(), a.reason.as_deref().unwrap()))
        .collect();
    assert_eq!(reasons[0], ("rejected", "unknown tenant `initech`"));
    assert_eq!(reasons[1].0, "rejected");
    assert_eq!(reasons[2], ("deferred", "legal hold: litigation 114"));
    assert_eq!(
        reasons[3],
        ("rejected", "an mbox subject_id must be a mailto: address")
    );
    assert!(reasons[4].1.contains("unknown kind"));
    assert_eq!(reasons[5], ("deferred", "legal hold: litigation 114"));
    assert_eq!(
        reasons[6],
        ("rejected", "an mbox subject_id must be a mailto: address")
    );
    assert!(acks.iter().all(|a| a.acknowledged_at == 100));
}

fn subject(kind: &str, id: &str) -> trellis_records::SubjectId {
    trellis_records::SubjectId {
        kind: kind.into(),
        id: id.into(),
    }
}

#[test]
fn a_request_naming_several_identifiers_erases_every_subject_they_resolve_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut person = request("r1", "acme", "erasure", "42");
    person.other_subject_ids = vec![
        // Linked to user 42 by the tenant's identity links.
        subject("account", "https://lms.example|42"),
        subject("mbox", "mailto:ann@home.example"),
        subject("user_id", "42"), // named twice: asked once
    ];
    let shred = |index: usize, learner: Option<&str>, key: &str, at| {
        let mut a = answer("r1", PRIVACY, "done", at);
        a.command_id = super::privacy_command_id("r1", index);
        a.learner = learner.map(str::to_string);
        a.shredded_key_ids = learner.map(|_| key.to_string()).into_iter().collect();
        a.records_affected = i64::from(learner.is_some());
        if learner.is_none() {
            a.detail = "subject was already erased".into();
        }
        a
    };
    let erased = |participant: &str, index: usize, learner: &str, at| {
        let mut a = answer("r1", participant, "done", at);
        a.command_id = super::erase_command_id("r1", participant, index);
        a.learner = Some(learner.into());
        a
    };
    let mut log = vec![
        record(SUBJECT_REQUESTS_TOPIC, 0, 1_000, &person),
        record(
            PARTICIPANT_ACKS_TOPIC,
            0,
            1_100,
            &shred(0, Some("p_ann"), "key-1", 1_100),
        ),
        record(PARTICIPANT_ACKS_TOPIC, 1, 1_110, &shred(1, None, "", 1_110)),
    ];
    // Privacy has not answered for the mbox: nobody else is asked yet.
    let waiting = run(&log, dir.path());
    let shreds: Vec<ShredRequest> = of(&waiting.outputs, SHRED_REQUESTS_TOPIC);
    assert_eq!(
        shreds
            .iter()
            .map(|s| (
                s.command_id.as_str(),
                s.subject_id_kind.as_str(),
                s.subject_id.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            ("r1/privacy", "user_id", "42"),
            ("r1/privacy/1", "account", "https://lms.example|42"),
            ("r1/privacy/2", "mbox", "mailto:ann@home.example"),
        ]
    );
    assert!(of::<EraseCommand>(&waiting.outputs, ERASE_COMMANDS_TOPIC).is_empty());

    log.push(record(
        PARTICIPANT_ACKS_TOPIC,
        2,
        1_120,
        &shred(2, Some("p_ann_home"), "key-2", 1_120),
    ));
    let asked = run(&log, dir.path());
    let erase: Vec<EraseCommand> = of(&asked.outputs, ERASE_COMMANDS_TOPIC);
    assert_eq!(
        erase
            .iter()
            .map(|c| (c.command_id.as_str(), c.learner.as_deref().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("r1/progress", "p_ann"),
            ("r1/analytics", "p_ann"),
            ("r1/progress/1", "p_ann_home"),
            ("r1/analytics/1", "p_ann_home"),
        ]
    );
    for (offset, (participant, index, learner)) in [
        ("progress", 0, "p_ann"),
        ("analytics", 0, "p_ann"),
        ("progress", 1, "p_ann_home"),
    ]
    .into_iter()
    .enumerate()
    {
        log.push(record(
            PARTICIPANT_ACKS_TOPIC,
            3 + offset as i64,
            1_200,
            &erased(participant, index, learner, 1_200),
        ));
    }
    log.push(record(ANCHORS_TOPIC, 0, 1_400, &anchor(0, &["r1"], 1_400)));
    // One erase command unanswered: no execution, no answer.
    let pending = settled(&mut log.clone(), dir.path(), 1_500);
    assert!(of::<AuditEvent>(&pending.outputs, AUDIT_EVENTS_TOPIC).is_empty());
    assert!(of::<SubjectRequestAck>(&pending.outputs, SUBJECT_ACKS_TOPIC).is_empty());

    log.insert(
        7,
        record(
            PARTICIPANT_ACKS_TOPIC,
            6,
            1_300,
            &erased("analytics", 1, "p_ann_home", 1_300),
        ),
    );
    let done = settled(&mut log, dir.path(), 1_500);
    let events: Vec<AuditEvent> = of(&done.outputs, AUDIT_EVENTS_TOPIC);
    assert_eq!(events[0].details["identifiers"], "3");
    assert_eq!(events[0].details["pseudonyms"], "p_ann,p_ann_home");
    let acks: Vec<SubjectRequestAck> = of(&done.outputs, SUBJECT_ACKS_TOPIC);
    assert_eq!(acks.len(), 1);
    let privacy = &acks[0].participants[0];
    assert_eq!(privacy.outcome, "done");
    assert_eq!(privacy.shredded_key_ids, ["key-1", "key-2"]);
    assert_eq!(privacy.records_affected, 2);
    assert!(privacy.detail.contains("already erased"));
    assert_eq!(
        acks[0]
            .participants
            .iter()
            .map(|p| (p.participant.as_str(), p.records_affected))
            .collect::<Vec<_>>(),
        [("privacy", 2), ("progress", 6), ("analytics", 6)]
    );
}

#[test]
fn a_subject_never_seen_completes_empty_without_other_participants() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = vec![
        record(
            SUBJECT_REQUESTS_TOPIC,
            0,
            1_000,
            &request("r9", "acme", "erasure", "nobody"),
        ),
        record(
            PARTICIPANT_ACKS_TOPIC,
            0,
            1_100,
            &answer("r9", PRIVACY, "not_found", 1_100),
        ),
        record(ANCHORS_TOPIC, 0, 1_300, &anchor(0, &["r9"], 1_300)),
    ];
    let done = settled(&mut log, dir.path(), 1_500);
    assert!(of::<EraseCommand>(&done.outputs, ERASE_COMMANDS_TOPIC).is_empty());
    let acks: Vec<SubjectRequestAck> = of(&done.outputs, SUBJECT_ACKS_TOPIC);
    assert_eq!(acks[0].status, "completed");
    assert_eq!(acks[0].participants.len(), 1);
    assert_eq!(acks[0].participants[0].outcome, "not_found");
}

#[test]
fn unanswered_commands_are_resent_on_ticks_and_refiling_repeats_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let tick = |offset, at| tick_record(offset, at, None);
    let mut log = vec![
        record(
            SUBJECT_REQUESTS_TOPIC,
            0,
            1_000,
            &request("r1", "acme", "erasure", "42"),
        ),
        tick(0, 5_000),  // too early
        tick(1, 11_000), // privacy silent for 10 s: re-send
        record(
            PARTICIPANT_ACKS_TOPIC,
            0,
            12_000,
            &answer("r1", PRIVACY, "done", 12_000),
        ),
        record(
            PARTICIPANT_ACKS_TOPIC,
            1,
            12_100,
            &answer("r1", "progress", "done", 12_100),
        ),
        tick(2, 32_500), // analytics silent for 20 s: attempt 3, to it alone
        tick(3, 32_700), // same period: nothing more
    ];
    let done = run(&log, dir.path());
    let shreds: Vec<ShredRequest> = of(&done.outputs, SHRED_REQUESTS_TOPIC);
    assert_eq!(shreds.iter().map(|s| s.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(shreds[0].command_id, shreds[1].command_id);
    let erase: Vec<EraseCommand> = of(&done.outputs, ERASE_COMMANDS_TOPIC);
    assert_eq!(
        erase
            .iter()
            .map(|c| (c.participant.as_str(), c.attempt))
            .collect::<Vec<_>>(),
        [("progress", 1), ("analytics", 1), ("analytics", 3)]
    );
    log.push(record(
        PARTICIPANT_ACKS_TOPIC,
        2,
        33_000,
        &answer("r1", "analytics", "done", 33_000),
    ));
    log.push(record(
        ANCHORS_TOPIC,
        0,
        33_100,
        &anchor(0, &["r1"], 33_100),
    ));
    settled(&mut log, dir.path(), 33_200);
    log.push(record(
        SUBJECT_REQUESTS_TOPIC,
        1,
        40_000,
        &request("r1", "acme", "erasure", "42"),
    ));
    log.push(tick(5, 60_000)); // nothing open: nothing re-sent
    let done = run(&log, dir.path());
    let acks: Vec<SubjectRequestAck> = of(&done.outputs, SUBJECT_ACKS_TOPIC);
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0], acks[1]);
    assert_eq!(
        of::<ShredRequest>(&done.outputs, SHRED_REQUESTS_TOPIC).len(),
        2
    );
}

#[test]
fn an_access_request_writes_one_owner_only_export() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut progress = answer("r7", "progress", "done", 1_200);
    progress.export = Some(r#"[{"activity":"quiz-1","completion":"completed"}]"#.into());
    let mut log = vec![
        record(
            SUBJECT_REQUESTS_TOPIC,
            0,
            1_000,
            &request("r7", "acme", "access", "42"),
        ),
        record(
            PARTICIPANT_ACKS_TOPIC,
            0,
            1_100,
            &answer("r7", PRIVACY, "done", 1_100),
        ),
        record(PARTICIPANT_ACKS_TOPIC, 1, 1_200, &progress),
        record(
            PARTICIPANT_ACKS_TOPIC,
            2,
            1_250,
            &answer("r7", "analytics", "done", 1_250),
        ),
        record(ANCHORS_TOPIC, 0, 1_400, &anchor(0, &["r7"], 1_400)),
    ];
    let done = settled(&mut log, dir.path(), 1_500);
    let acks: Vec<SubjectRequestAck> = of(&done.outputs, SUBJECT_ACKS_TOPIC);
    let path = std::path::PathBuf::from(acks[0].export.clone().unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(document["identifiers"][0]["id"], "42");
    assert_eq!(document["identifiers"][0]["pseudonym"], "p_ann");
    let subject = &document["subjects"][0];
    assert_eq!(subject["pseudonym"], "p_ann");
    assert_eq!(
        subject["held_by"]["progress"]["data"][0]["activity"],
        "quiz-1"
    );
    assert_eq!(subject["held_by"]["privacy"]["outcome"], "done");
    let events: Vec<AuditEvent> = of(&done.outputs, AUDIT_EVENTS_TOPIC);
    assert_eq!(events[0].action, "subject.exported");
}

#[test]
fn the_participants_are_whoever_the_topology_has_read_erase_commands() {
    let mut topology = Harness::workspace().topology().clone();
    assert_eq!(
        participants(&topology).unwrap(),
        ["progress", "analytics", "warehouse"]
    );
    // A holder run by someone else answers like any other.
    let mut scorer = topology.processors["progress"].clone();
    scorer.external = true;
    topology.processors.insert("scorer".into(), scorer.clone());
    assert_eq!(participants(&topology).unwrap().last().unwrap(), "scorer");
    // One that cannot answer would hold every erasure open forever.
    scorer.outputs.retain(|t| t != PARTICIPANT_ACKS_TOPIC);
    topology.processors.insert("scorer".into(), scorer);
    let err = participants(&topology).unwrap_err().to_string();
    assert!(
        err.contains("`scorer` reads gdpr.erase_commands but writes no gdpr.participant_acks"),
        "{err}"
    );
    // The harness's topology (no warehouse) is what the saga then waits for.
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(gdpr(dir.path()).participants, ["progress", "analytics"]);
}
