use apache_avro::Schema;
use trellis_records::{AuditEvent, schema_text};
use trellis_runtime::pipeline::{OwnedRecord, run_offline};
use trellis_runtime::schema::registry_settings;
use trellis_runtime::secret::Secret;
use trellis_runtime::state::StateStore;

use super::verify::{Problem, verify_proof, verify_records};
use super::*;

fn schema(file: &str) -> Schema {
    Schema::parse_str(schema_text(file).unwrap()).unwrap()
}

fn signer() -> Signer {
    Signer::new("k1", Secret::from_bytes(vec![7; 32]))
}

fn settings(every: u64) -> Settings {
    Settings {
        key_id: "k1".into(),
        anchor_every: every,
        anchor_interval_ms: 60_000,
    }
}

fn decoder() -> AvroDecoder {
    let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9").unwrap());
    decoder.insert(2, schema("audit_event.avsc")).unwrap();
    decoder
}

fn audit(every: u64) -> Audit {
    Audit::new(
        settings(every),
        signer(),
        AvroEncoder::with_id("a".into(), 1, schema("anchor.avsc")).unwrap(),
        Pending::default(),
    )
}

fn events_encoder() -> AvroEncoder {
    AvroEncoder::with_id("e".into(), 2, schema("audit_event.avsc")).unwrap()
}

/// `n` records on two partitions of `protected` plus five audit events:
/// the second names a GDPR request, the last is a heartbeat.
fn log(n: i64) -> Vec<OwnedRecord> {
    let mut records = Vec::new();
    for i in 0..n {
        for partition in 0..2 {
            records.push(OwnedRecord {
                topic: "protected".into(),
                partition,
                offset: i,
                timestamp_ms: Some(1_000 + i),
                key: Some(format!("k{i}").into_bytes()),
                value: Some(format!("value {i} on {partition}").into_bytes()),
                headers: vec![("trellis.id".into(), format!("id{i}").into_bytes())],
            });
        }
    }
    let encoder = events_encoder();
    for i in 0..5 {
        let mut event = if i == 4 {
            heartbeat(2_000)
        } else {
            AuditEvent {
                action: "key.created".into(),
                event_id: format!("e{i}"),
                ..heartbeat(1_500 + i)
            }
        };
        if i == 1 {
            event.action = "subject_request.executed".into();
            event.details.insert("request_id".into(), "r1".into());
        }
        records.push(OwnedRecord {
            topic: AUDIT_EVENTS_TOPIC.into(),
            partition: 0,
            offset: i,
            timestamp_ms: Some(1_500 + i),
            key: None,
            value: Some(encoder.encode(&event).unwrap()),
            headers: Vec::new(),
        });
    }
    records
}

fn anchors_of(every: u64, records: &[OwnedRecord]) -> (Vec<Anchor>, StateStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let run = run_offline(NAME, &mut audit(every), &store, &decoder(), records, 7).unwrap();
    (decode_anchors(&run.outputs), store, dir)
}

/// The anchors among a run's outputs, in output order.
fn decode_anchors(outputs: &[OutputRecord]) -> Vec<Anchor> {
    let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9").unwrap());
    decoder.insert(1, schema("anchor.avsc")).unwrap();
    outputs
        .iter()
        .map(|o| {
            decoder
                .decode_blocking(o.value.as_deref().unwrap())
                .unwrap()
        })
        .collect()
}

fn audited() -> Vec<String> {
    vec!["protected".into(), AUDIT_EVENTS_TOPIC.into()]
}

#[test]
fn anchors_every_n_records_and_on_a_heartbeat_and_verify_passes() {
    let records = log(40);
    let (anchors, store, _dir) = anchors_of(16, &records);
    // 40 records per partition: anchors at 16 and 32; audit.events closes
    // at once at the event a GDPR answer cites (listing its request id),
    // and at its heartbeat.
    let p0: Vec<&Anchor> = anchors
        .iter()
        .filter(|a| a.topic == "protected" && a.partition == 0)
        .collect();
    assert_eq!(p0.iter().map(|a| a.tree_size).collect::<Vec<_>>(), [16, 32]);
    assert_eq!(p0[1].previous_hash, hex::encode(anchor_hash(p0[0])));
    let events: Vec<&Anchor> = anchors
        .iter()
        .filter(|a| a.topic == AUDIT_EVENTS_TOPIC)
        .collect();
    assert_eq!(
        events.iter().map(|a| a.tree_size).collect::<Vec<_>>(),
        [2, 5]
    );
    assert_eq!(events[0].request_ids, ["r1"]);
    assert!(events[1].request_ids.is_empty());
    assert_eq!(stored_anchors(&store).unwrap().len(), anchors.len());

    let reports = verify_records(&audited(), anchors.clone(), &signer(), &records);
    assert!(reports.iter().all(|r| r.finding.is_none()), "{reports:?}");
    let p0 = reports
        .iter()
        .find(|r| r.topic == "protected" && r.partition == 0)
        .unwrap();
    assert_eq!((p0.records, p0.anchors, p0.unanchored), (40, 2, 8));
}

#[test]
fn replay_in_another_interleaving_cuts_the_same_anchors() {
    let records = log(40);
    let (anchors, _store, _dir) = anchors_of(16, &records);
    let mut reordered = records.clone();
    // Same per-partition order, partitions interleaved differently.
    reordered.sort_by_key(|r| (r.topic.clone(), std::cmp::Reverse(r.partition), r.offset));
    let (again, _s, _d) = anchors_of(16, &reordered);
    let key = |a: &Anchor| (a.topic.clone(), a.partition, a.sequence);
    let mut a = anchors.clone();
    let mut b = again.clone();
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);
}

fn first_problem(records: &[OwnedRecord], anchors: &[Anchor]) -> Problem {
    verify_records(&audited(), anchors.to_vec(), &signer(), records)
        .into_iter()
        .find_map(|r| r.finding)
        .expect("a finding")
        .problem
}

#[test]
fn a_changed_dropped_or_swapped_record_is_found_and_located() {
    let records = log(40);
    let (anchors, _store, _dir) = anchors_of(16, &records);
    let at = |topic: &str, partition: i32, offset: i64| {
        records
            .iter()
            .position(|r| r.topic == topic && r.partition == partition && r.offset == offset)
            .unwrap()
    };

    let mut changed = records.clone();
    changed[at("protected", 1, 20)].value.as_mut().unwrap()[3] ^= 1;
    assert_eq!(
        first_problem(&changed, &anchors),
        Problem::RootMismatch {
            sequence: 1,
            first_offset: 16,
            last_offset: 31
        }
    );

    let mut dropped = records.clone();
    dropped.remove(at("protected", 0, 9));
    assert_eq!(
        first_problem(&dropped, &anchors),
        Problem::Missing { offset: 9 }
    );

    let mut swapped = records.clone();
    swapped.swap(at("protected", 1, 5), at("protected", 1, 6));
    assert_eq!(
        first_problem(&swapped, &anchors),
        Problem::Missing { offset: 5 }
    );
    // A swap inside a copy that renumbers offsets shows as a changed range.
    let mut renumbered = records.clone();
    let (i, j) = (at("protected", 1, 5), at("protected", 1, 6));
    let (vi, vj) = (renumbered[i].value.clone(), renumbered[j].value.clone());
    renumbered[i].value = vj;
    renumbered[j].value = vi;
    assert_eq!(
        first_problem(&renumbered, &anchors),
        Problem::RootMismatch {
            sequence: 0,
            first_offset: 0,
            last_offset: 15
        }
    );

    // A removed anchor, a forged one, a log cut short.
    let mut fewer = anchors.clone();
    fewer.retain(|a| !(a.topic == "protected" && a.partition == 0 && a.sequence == 0));
    assert!(matches!(
        first_problem(&records, &fewer),
        Problem::BrokenChain { sequence: 1, .. }
    ));
    let mut forged = anchors.clone();
    let victim = forged
        .iter_mut()
        .find(|a| a.topic == "protected" && a.partition == 0)
        .unwrap();
    victim.root = "00".repeat(32);
    assert_eq!(
        first_problem(&records, &forged),
        Problem::BadSignature { sequence: 0 }
    );
    let short: Vec<OwnedRecord> = records
        .iter()
        .filter(|r| !(r.topic == "protected" && r.partition == 0 && r.offset >= 30))
        .cloned()
        .collect();
    assert_eq!(
        first_problem(&short, &anchors),
        Problem::Truncated {
            sequence: 1,
            offset: 30
        }
    );
}

#[test]
fn proofs_verify_from_anchors_alone_and_fail_when_tampered() {
    let records = log(40);
    let (anchors, _store, _dir) = anchors_of(16, &records);
    let partition: Vec<OwnedRecord> = records
        .iter()
        .filter(|r| r.topic == "protected" && r.partition == 1)
        .cloned()
        .collect();
    let proof = verify::prove_inclusion(&anchors, &partition, 20, None).unwrap();
    assert!(verify_proof(&proof, &anchors, Some(&signer())).is_ok());
    let mut bad = proof.clone();
    if let verify::Proof::Inclusion { record, .. } = &mut bad {
        record.replace_range(0..2, "ff");
    }
    assert!(verify_proof(&bad, &anchors, Some(&signer())).is_err());

    let proof = verify::prove_consistency(&anchors, &partition, 0, 1).unwrap();
    assert!(verify_proof(&proof, &anchors, Some(&signer())).is_ok());
    let wrong_key = Signer::new("k1", Secret::from_bytes(vec![8; 32]));
    assert!(verify_proof(&proof, &anchors, Some(&wrong_key)).is_err());
}

#[test]
fn log_files_round_trip() {
    let records = log(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    verify::write_log(&path, &records).unwrap();
    assert_eq!(verify::read_log(&path).unwrap(), records);
}

#[test]
fn settings_are_checked_and_the_key_never_prints() {
    let bad = Settings {
        key_id: " ".into(),
        anchor_every: 0,
        anchor_interval_ms: 0,
    };
    let message = bad.check().unwrap_err();
    assert!(
        message.contains("key_id")
            && message.contains("anchor_every")
            && message.contains("anchor_interval_ms")
    );
    // What a regression would print: a derived `Debug` shows bytes as a
    // decimal list, a hand-written one might show hex.
    let shown = format!("{:?}", signer());
    assert!(
        !shown.contains("070707") && !shown.contains("7, 7, 7"),
        "{shown}"
    );
}

/// Records on two quiet partitions of `protected`, then a heartbeat an
/// interval later: `heartbeat_after` protected records precede it.
fn quiet_log(heartbeat_after: usize) -> Vec<OwnedRecord> {
    let mut protected: Vec<OwnedRecord> = log(6)
        .into_iter()
        .filter(|r| r.topic == "protected")
        .collect();
    let beat = OwnedRecord {
        topic: AUDIT_EVENTS_TOPIC.into(),
        partition: 0,
        offset: 0,
        timestamp_ms: Some(70_000),
        key: None,
        value: Some(events_encoder().encode(&heartbeat(70_000)).unwrap()),
        headers: Vec::new(),
    };
    protected.insert(heartbeat_after, beat);
    protected
}

fn cuts_of(anchors: &[Anchor]) -> Cuts {
    let mut cuts = Cuts::new();
    for a in anchors {
        cuts.entry((a.topic.clone(), a.partition))
            .or_default()
            .insert(a.last_offset, a.anchored_at);
    }
    cuts
}

fn run_with_cuts(records: &[OwnedRecord], cuts: Cuts) -> (Vec<Anchor>, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut audit = audit(1000).with_recorded(cuts);
    let run = run_offline(NAME, &mut audit, &store, &decoder(), records, 3).unwrap();
    let mut anchors = decode_anchors(&run.outputs);
    anchors.sort_by_key(|a| (a.topic.clone(), a.partition, a.sequence));
    (anchors, store.digest().unwrap().to_string())
}

#[test]
fn a_heartbeat_cuts_quiet_partitions_and_a_replay_honours_the_recorded_cuts() {
    // Live: the heartbeat comes after every record; both quiet partitions
    // are cut at their last record, an interval after their first.
    let live = quiet_log(12);
    let (anchors, digest) = run_with_cuts(&live, Cuts::new());
    let protected: Vec<(i32, i64, i64, i64)> = anchors
        .iter()
        .filter(|a| a.topic == "protected")
        .map(|a| (a.partition, a.first_offset, a.last_offset, a.anchored_at))
        .collect();
    assert_eq!(protected, [(0, 0, 5, 70_000), (1, 0, 5, 70_000)]);
    let reports = verify_records(&audited(), anchors.clone(), &signer(), &live);
    assert!(
        reports
            .iter()
            .all(|r| r.finding.is_none() && r.unanchored == 0),
        "{reports:?}"
    );

    // A replay meets the heartbeat earlier (another interleaving): deciding
    // again would cut elsewhere; honouring the recorded cuts gives the same
    // anchors and the same state.
    let replay = quiet_log(7);
    let (decided, _) = run_with_cuts(&replay, Cuts::new());
    assert_ne!(decided, anchors, "the decision depends on the interleaving");
    let (honoured, replay_digest) = run_with_cuts(&replay, cuts_of(&anchors));
    assert_eq!(honoured, anchors);
    assert_eq!(replay_digest, digest);
}
