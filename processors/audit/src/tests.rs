use std::sync::LazyLock;

use trellis_records::AuditEvent;
use trellis_runtime::offline::Harness;
use trellis_runtime::pipeline::{OwnedRecord, run_offline};
use trellis_runtime::secret::Secret;
use trellis_runtime::state::StateStore;

use super::signing::Keys;
use super::verify::{Finding, Problem, verify_proof, verify_records};
use super::*;

/// The workspace's topology, schemas under local ids, the signing key
/// of [`signer`].
fn harness() -> &'static Harness {
    static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
        let seed = "07".repeat(32);
        Harness::workspace().with_secrets(
            trellis_runtime::secret::load_secrets_with(SECRETS, |_| Some(seed.clone())).unwrap(),
        )
    });
    &HARNESS
}

fn signer() -> Signer {
    Signer::ed25519("k1", &Secret::from_bytes(vec![7; 32])).unwrap()
}

fn keys() -> Keys {
    signer().keys()
}

fn settings(every: u64) -> Settings {
    Settings {
        key_id: "k1".into(),
        signature: Algorithm::Ed25519,
        origin: "test.example/audit".into(),
        checkpoint_addr: None,
        checkpoint_file: None,
        anchor_every: every,
        anchor_interval_ms: 60_000,
    }
}

fn decoder() -> &'static AvroDecoder {
    harness().decoder()
}

/// The audit processor as the binary builds it, signing with [`signer`]'s key.
fn audit(every: u64) -> Audit {
    harness().build::<Audit>(&settings(every)).unwrap()
}

fn events_encoder() -> AvroEncoder {
    harness().encoder(AUDIT_EVENTS_TOPIC)
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
    let run = run_offline(NAME, &mut audit(every), &store, decoder(), records, 7).unwrap();
    (decode_anchors(&run.outputs), store, dir)
}

/// The anchors among a run's outputs, in output order.
fn decode_anchors(outputs: &[OutputRecord]) -> Vec<Anchor> {
    let decoder = harness().decoder();
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

    let reports = verify_records(&audited(), anchors.clone(), &keys(), &records);
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
    // The chains are the same; where each anchor stands in the anchor log
    // (its checkpoint) is the order they were written in, which
    // `audit.anchors` records and a replay reads back (next test).
    let chains = |anchors: &[Anchor]| {
        let mut anchors: Vec<Anchor> = anchors
            .iter()
            .map(|a| Anchor {
                checkpoint: String::new(),
                ..a.clone()
            })
            .collect();
        anchors.sort_by_key(|a| (a.topic.clone(), a.partition, a.sequence));
        anchors
    };
    assert_eq!(chains(&anchors), chains(&again));
    assert_ne!(anchors, again);
}

fn first_problem(records: &[OwnedRecord], anchors: &[Anchor]) -> Problem {
    verify_records(&audited(), anchors.to_vec(), &keys(), records)
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
    assert!(verify_proof(&proof, &anchors, Some(&keys())).is_ok());
    let mut bad = proof.clone();
    if let verify::Proof::Inclusion { record, .. } = &mut bad {
        record.replace_range(0..2, "ff");
    }
    assert!(verify_proof(&bad, &anchors, Some(&keys())).is_err());

    let proof = verify::prove_consistency(&anchors, &partition, 0, 1).unwrap();
    assert!(verify_proof(&proof, &anchors, Some(&keys())).is_ok());
    let wrong_key = Signer::ed25519("k1", &Secret::from_bytes(vec![8; 32]))
        .unwrap()
        .keys();
    assert!(verify_proof(&proof, &anchors, Some(&wrong_key)).is_err());
    // HMAC anchors are not accepted by a verifier that holds public keys.
    let hmac = Signer::hmac("k1", Secret::from_bytes(vec![7; 32]));
    let mut anchor = anchors[0].clone();
    hmac.sign(&mut anchor);
    assert!(hmac.keys().verify(&anchor) && !keys().verify(&anchor));
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
        origin: String::new(),
        anchor_every: 0,
        anchor_interval_ms: 0,
        ..settings(1)
    };
    let message = trellis_runtime::build::Settings::check(&bad)
        .unwrap_err()
        .join("; ");
    assert!(
        message.contains("key_id")
            && message.contains("origin")
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

/// Runs the processor over `records` with `recorded` anchors already on
/// `audit.anchors`; the anchors it writes, in the order written.
fn run_with_recorded(records: &[OwnedRecord], recorded: &[Anchor]) -> (Vec<Anchor>, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let mut audit = audit(1000).with_recorded(recorded).unwrap();
    let run = run_offline(NAME, &mut audit, &store, decoder(), records, 3).unwrap();
    (
        decode_anchors(&run.outputs),
        store.digest().unwrap().to_string(),
    )
}

fn sorted(mut anchors: Vec<Anchor>) -> Vec<Anchor> {
    anchors.sort_by_key(|a| (a.topic.clone(), a.partition, a.sequence));
    anchors
}

#[test]
fn a_heartbeat_cuts_quiet_partitions_and_a_replay_honours_the_recorded_cuts() {
    // Live: the heartbeat comes after every record; both quiet partitions
    // are cut at their last record, an interval after their first.
    let live = quiet_log(12);
    let (anchors, digest) = run_with_recorded(&live, &[]);
    let protected: Vec<(i32, i64, i64, i64)> = sorted(anchors.clone())
        .iter()
        .filter(|a| a.topic == "protected")
        .map(|a| (a.partition, a.first_offset, a.last_offset, a.anchored_at))
        .collect();
    assert_eq!(protected, [(0, 0, 5, 70_000), (1, 0, 5, 70_000)]);
    let reports = verify_records(&audited(), anchors.clone(), &keys(), &live);
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
    let (decided, _) = run_with_recorded(&replay, &[]);
    assert_ne!(
        sorted(decided),
        sorted(anchors.clone()),
        "the decision depends on the interleaving"
    );
    let (honoured, replay_digest) = run_with_recorded(&replay, &anchors);
    // Same anchors, each with the checkpoint of its place in the log.
    assert_eq!(sorted(honoured), sorted(anchors));
    assert_eq!(replay_digest, digest);
}

fn witness_key() -> crate::signing::Cosigner {
    crate::signing::Cosigner::new("witness.test/w1", &Secret::from_bytes(vec![9; 32])).unwrap()
}

/// The anchor log of `anchors` (in topic order), committed.
fn anchor_log(anchors: &[Anchor]) -> checkpoint::AnchorLog {
    let mut log =
        checkpoint::AnchorLog::new("test.example/audit", signer().note_key().cloned(), None);
    for anchor in anchors {
        log.append(anchor).unwrap();
    }
    log.commit().unwrap();
    log
}

/// The witness's view after seeing the checkpoint of `anchors`.
fn witnessed(last: Option<&str>, anchors: &[Anchor]) -> Result<witness::Outcome, witness::Refusal> {
    let log = anchor_log(anchors);
    let shared = log.shared();
    witness::observe(
        last,
        shared.note().unwrap().as_bytes(),
        &keys(),
        &witness_key(),
        |old, new| shared.consistency(old, new),
    )
}

fn cosigned(outcome: witness::Outcome) -> String {
    match outcome {
        witness::Outcome::Cosigned { note, .. } => note,
        other => panic!("not cosigned: {other:?}"),
    }
}

#[test]
fn every_anchor_carries_a_checkpoint_of_the_log_that_verifies_with_the_public_key_alone() {
    let records = log(40);
    let (anchors, _store, _dir) = anchors_of(16, &records);
    // Only the public key: a verifier never holds the signing key.
    let mut public = Keys::default();
    public
        .trust_vkey(&signer().note_key().unwrap().vkey())
        .unwrap();
    let report = checkpoint::check_log(&anchors, &public, None);
    assert_eq!(report.problem, None);
    assert_eq!((report.size, report.checkpoints), (6, 6));
    assert_eq!(report.origin.as_deref(), Some("test.example/audit"));
    assert_eq!(report.keys, [("k1+667551a4".to_string(), 0)]);
    let reports = verify_records(&audited(), anchors.clone(), &public, &records);
    assert!(reports.iter().all(|r| r.finding.is_none()), "{reports:?}");
    // The last anchor's checkpoint is what the log publishes.
    let log = anchor_log(&anchors);
    assert_eq!(
        log.shared().note().unwrap(),
        anchors.last().unwrap().checkpoint
    );
    // A changed checkpoint (size bumped, signature kept) is found.
    let mut bumped = anchors.clone();
    bumped[2].checkpoint = bumped[2].checkpoint.replacen("\n3\n", "\n4\n", 1);
    let problem = checkpoint::check_log(&bumped, &public, None)
        .problem
        .unwrap();
    assert!(problem.contains("does not verify"), "{problem}");
    // …and so is a removed one (the checkpoint is outside the signed bytes).
    let mut stripped = anchors.clone();
    stripped[4].checkpoint.clear();
    let problem = checkpoint::check_log(&stripped, &public, None)
        .problem
        .unwrap();
    assert!(problem.contains("carries no checkpoint"), "{problem}");
    // The same public key given twice is still one key.
    public
        .trust_vkey(&signer().note_key().unwrap().vkey())
        .unwrap();
    assert_eq!(checkpoint::check_log(&anchors, &public, None).problem, None);
    // Another key's checkpoints are not trusted.
    let mut other = Keys::default();
    other
        .trust_vkey(
            &crate::signing::NoteKey::new("k1", &Secret::from_bytes(vec![8; 32]))
                .unwrap()
                .vkey(),
        )
        .unwrap();
    assert!(
        checkpoint::check_log(&anchors, &other, None)
            .problem
            .is_some()
    );
}

#[test]
fn an_abandoned_batch_leaves_the_published_checkpoint_alone() {
    let (anchors, _store, _dir) = anchors_of(16, &log(40));
    let mut log = anchor_log(&anchors[..3]);
    let before = log.shared().note().unwrap();
    log.append(&anchors[3]).unwrap();
    log.rollback();
    log.commit().unwrap();
    assert_eq!(log.shared().note().unwrap(), before);
    assert_eq!(log.size(), 3);
    // The same anchor appended again keeps its place and checkpoint.
    assert_eq!(log.append(&anchors[3]).unwrap(), anchors[3].checkpoint);
    assert_eq!(log.append(&anchors[3]).unwrap(), anchors[3].checkpoint);
    assert_eq!(log.size(), 4);
    // A different anchor for a chain position already in the log is refused.
    let mut changed = anchors[1].clone();
    changed.anchored_at += 1;
    signer().sign(&mut changed);
    assert!(log.append(&changed).is_err());
}

#[test]
fn the_witness_cosigns_extensions_and_refuses_rollbacks_and_forks() {
    let records = log(40);
    let (anchors, _store, _dir) = anchors_of(16, &records);
    let first = cosigned(witnessed(None, &anchors[..2]).unwrap());
    let second = cosigned(witnessed(Some(&first), &anchors).unwrap());
    assert!(matches!(
        witnessed(Some(&second), &anchors).unwrap(),
        witness::Outcome::Unchanged
    ));
    assert!(matches!(
        witnessed(Some(&second), &anchors[..4]),
        Err(witness::Refusal::Rollback {
            cosigned: 6,
            shown: 4
        })
    ));

    // A fork: one record changed, the log re-anchored under the same key.
    // On its own it verifies; the witness refuses it, and a verifier holding
    // the witness's checkpoint detects it.
    let mut changed = records.clone();
    changed[3].value.as_mut().unwrap()[0] ^= 1;
    let (forked, _s, _d) = anchors_of(16, &changed);
    assert_eq!(checkpoint::check_log(&forked, &keys(), None).problem, None);
    assert!(
        verify_records(&audited(), forked.clone(), &keys(), &changed)
            .iter()
            .all(|r| r.finding.is_none())
    );
    let refused = witnessed(Some(&first), &forked).unwrap_err();
    assert!(matches!(refused, witness::Refusal::Fork(_)), "{refused}");
    let w = crate::signing::CosignatureVerifier::new(&witness_key().vkey()).unwrap();
    let fork = checkpoint::check_log(&forked, &keys(), Some((second.as_bytes(), &w)));
    assert!(
        fork.problem.as_ref().unwrap().starts_with("FORK"),
        "{fork:?}"
    );

    // Truncation: the newest anchors dropped from audit.anchors.
    let cut = checkpoint::check_log(&anchors[..4], &keys(), Some((second.as_bytes(), &w)));
    assert!(
        cut.problem.as_ref().unwrap().starts_with("TRUNCATED"),
        "{cut:?}"
    );
    // Undetectable without the witness: a shorter log is a valid log.
    assert_eq!(
        checkpoint::check_log(&anchors[..4], &keys(), None).problem,
        None
    );

    // The honest log passes, and says what the witness saw.
    let honest = checkpoint::check_log(&anchors, &keys(), Some((second.as_bytes(), &w)));
    assert_eq!(honest.problem, None);
    let seen = honest.witnessed.unwrap();
    assert_eq!(
        (seen.witness.as_str(), seen.checkpoint.size),
        ("witness.test/w1", 6)
    );
    // A checkpoint cosigned by someone else is not the witness's.
    let stranger = crate::signing::CosignatureVerifier::new(
        &crate::signing::Cosigner::new("witness.test/w1", &Secret::from_bytes(vec![1; 32]))
            .unwrap()
            .vkey(),
    )
    .unwrap();
    assert!(
        checkpoint::check_log(&anchors, &keys(), Some((second.as_bytes(), &stranger)))
            .problem
            .is_some()
    );
}

#[test]
fn a_key_rotation_is_recorded_in_the_chain_and_both_public_keys_verify_it() {
    let records = log(40);
    let (first, second) = records.split_at(40);
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let run = run_offline(NAME, &mut audit(16), &store, decoder(), first, 7).unwrap();
    let mut anchors = decode_anchors(&run.outputs);
    // The processor restarts with a new key; the store and the anchors on
    // audit.anchors carry over.
    let rotated = Signer::ed25519("k2", &Secret::from_bytes(vec![5; 32])).unwrap();
    // Built by hand for the second key: the harness holds one.
    let mut after = Audit::new(
        settings(16),
        rotated,
        harness().encoder(ANCHORS_TOPIC),
        Pending::default(),
    )
    .with_recorded(&anchors)
    .unwrap();
    let run = run_offline(NAME, &mut after, &store, decoder(), second, 7).unwrap();
    anchors.extend(decode_anchors(&run.outputs));

    let k2 = Signer::ed25519("k2", &Secret::from_bytes(vec![5; 32])).unwrap();
    let mut both = Keys::default();
    for key in [
        signer().note_key().unwrap().vkey(),
        k2.note_key().unwrap().vkey(),
    ] {
        both.trust_vkey(&key).unwrap();
    }
    let report = checkpoint::check_log(&anchors, &both, None);
    assert_eq!(report.problem, None);
    let first_k2 = anchors
        .iter()
        .position(|a| a.key_id.starts_with("k2+"))
        .unwrap() as u64;
    assert_eq!(report.keys.len(), 2, "{:?}", report.keys);
    assert_eq!(report.keys[1].1, first_k2);
    let chains = verify_records(&audited(), anchors.clone(), &both, &records);
    assert!(chains.iter().all(|r| r.finding.is_none()), "{chains:?}");
    // With the old key alone, the anchors after the rotation do not verify.
    assert!(
        verify_records(&audited(), anchors.clone(), &keys(), &records)
            .iter()
            .any(|r| matches!(
                r.finding,
                Some(Finding {
                    problem: Problem::BadSignature { .. },
                    ..
                })
            ))
    );
}

#[test]
fn a_restart_that_missed_anchors_on_the_topic_refuses_to_extend_the_anchor_log() {
    let records = log(40);
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let run = run_offline(NAME, &mut audit(16), &store, decoder(), &records[..40], 7).unwrap();
    let anchors = decode_anchors(&run.outputs);
    assert!(anchors.len() >= 2);
    // The read of audit.anchors at start came back short.
    let mut short = audit(16)
        .with_recorded(&anchors[..anchors.len() - 1])
        .unwrap();
    let refused = run_offline(NAME, &mut short, &store, decoder(), &records[40..], 7);
    let message = match refused {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a short read of audit.anchors must be refused"),
    };
    assert!(
        message.contains("refusing to extend the anchor log"),
        "{message}"
    );
    // Read whole, it goes on.
    let mut whole = audit(16).with_recorded(&anchors).unwrap();
    assert!(run_offline(NAME, &mut whole, &store, decoder(), &records[40..], 7).is_ok());
}
