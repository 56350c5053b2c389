//! The privacy processor on a real broker, behind the collector: no plaintext
//! personal data past collection, pseudonyms that behave, nothing lost or
//! doubled across SIGKILLs, and a shred that makes erasure real.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use sha2::{Digest, Sha256};
use trellis_kit::demo::{self, DemoSpec};
use trellis_privacy::vault::Vault;
use trellis_records::{CollectedEvent, ParticipantAck, ProtectedEvent, ShredRequest};
use trellis_replay_tests::{
    Process, Stack, end_offsets, free_port, privacy_secrets, repo_root, test_secret,
};
use trellis_runtime::kafka::TENANT_HEADER;
use trellis_runtime::schema::{AvroDecoder, AvroEncoder, SchemaFile, registry_settings};

const COLLECTED: &[&str] = &["collected"];

fn vault_dir(stack: &Stack) -> PathBuf {
    stack.vault_dir()
}

fn settings(stack: &Stack) -> String {
    format!("{{vault_dir: '{}'}}", vault_dir(stack).display())
}

fn spawn_privacy(stack: &Stack, args: &[&str]) -> Process {
    stack.spawn_privacy(args)
}

fn open_vault(stack: &Stack) -> Vault {
    let hex = |label: &str| {
        (0..32)
            .map(|i| u8::from_str_radix(&test_secret(label)[2 * i..2 * i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
    };
    Vault::open(&vault_dir(stack), &hex("master"), &hex("index")).unwrap()
}

/// Two tenants that know the same person by the same user id and email.
async fn produce_shared_person(stack: &Stack) {
    let producer = stack.producer();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (i, tenant) in ["twin-a", "twin-b"].iter().enumerate() {
        let event = serde_json::json!({
            "event_id": format!("6f1c1a9e-8d3b-4a57-9e8e-0c1d2b3a4f5{i}"),
            "tenant_id": tenant,
            "source": "moodle",
            "kind": "moodle.log",
            "occurred_at": now - 1000,
            "actor": {"user_id": "424242", "email": "same.person@twins.example", "name": "Sam Twin"},
            "ip": "198.51.100.77",
            "verb": "\\mod_page\\event\\course_module_viewed",
            "object_id": "https://lms.example/mod/page/view.php?id=1",
            "course_id": "https://lms.example/course/1",
            "data": {},
        });
        let value = event.to_string();
        producer
            .send(
                FutureRecord::to("ingest.events")
                    .key(*tenant)
                    .payload(&value)
                    .timestamp(now)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: TENANT_HEADER,
                        value: Some(tenant.as_bytes()),
                    })),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
}

type Subject = (String, String, String);

struct Collected {
    /// id → event.
    events: BTreeMap<String, CollectedEvent>,
}

async fn read_collected(stack: &Stack, decoder: &AvroDecoder) -> Collected {
    let mut events = BTreeMap::new();
    for (id, value) in stack.read("collected").records {
        let event: CollectedEvent = decoder.decode(value.as_deref().unwrap()).await.unwrap();
        events.insert(id.unwrap(), event);
    }
    Collected { events }
}

fn subject_of(event: &CollectedEvent) -> Subject {
    (
        event.tenant_id.clone(),
        event.actor.id_kind.clone(),
        event.actor.id.clone(),
    )
}

/// Finds identifiers in `haystack`: emails, names and IPs as substrings,
/// user ids as whole alphanumeric tokens (a bare number can occur inside a
/// hex digest by chance).
fn leaks(haystack: &[u8], long: &BTreeSet<String>, user_ids: &BTreeSet<String>) -> Vec<String> {
    let text = String::from_utf8_lossy(haystack);
    let mut found: Vec<String> = long
        .iter()
        .filter(|needle| text.contains(needle.as_str()))
        .cloned()
        .collect();
    // A 4-digit user id can also be a segment of a UUID: skip UUIDs whole.
    found.extend(
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|chunk| uuid::Uuid::parse_str(chunk).is_err())
            .flat_map(|chunk| chunk.split('-'))
            .filter(|token| user_ids.contains(*token))
            .map(str::to_string),
    );
    found
}

/// Every file under `dir`. A directory that cannot be read fails the test:
/// a scan that silently sees nothing would pass every leak check.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot scan {}: {e}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|e| panic!("cannot scan {}: {e}", dir.display()))
            .path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Topics downstream of the collector that must never carry plaintext.
const DOWNSTREAM: [&str; 3] = ["protected", "audit.events", "gdpr.participant_acks"];

/// Looks for `long` in every record (value, key and headers) of the
/// downstream topics; returns how many records each topic had.
fn assert_no_leaks_on_topics(
    stack: &Stack,
    long: &BTreeSet<String>,
) -> BTreeMap<&'static str, usize> {
    let mut scanned = BTreeMap::new();
    for topic in DOWNSTREAM {
        let contents = stack.read(topic);
        for ((_, value), extra) in contents.records.iter().zip(&contents.keys_and_headers) {
            let mut bytes = value.clone().unwrap_or_default();
            bytes.extend_from_slice(extra);
            let found = leaks(&bytes, long, &BTreeSet::new());
            assert!(found.is_empty(), "{topic} leaks {found:?}");
        }
        scanned.insert(topic, contents.records.len());
    }
    scanned
}

/// Looks for identifiers in every privacy processor log under the stack's
/// directory; returns how many logs were scanned.
fn assert_no_leaks_in_logs(
    stack: &Stack,
    long: &BTreeSet<String>,
    user_ids: &BTreeSet<String>,
) -> usize {
    let mut scanned = 0;
    for file in files_under(stack.dir.path()) {
        if file
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("privacy-"))
        {
            let text = std::fs::read(&file).unwrap();
            let found = leaks(&text, long, user_ids);
            assert!(found.is_empty(), "log {} leaks {found:?}", file.display());
            scanned += 1;
        }
    }
    scanned
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_plaintext_past_collection_and_shred_makes_erasure_real() {
    let stack = Stack::start().await;
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let mut collector = stack.spawn(
        "collector",
        "{}",
        &[("TRELLIS_INGEST_SIGNING_KEY", test_secret("signing"))],
    );
    produce_shared_person(&stack).await;

    // Live traffic while the privacy processor is killed three times.
    let producer = stack.producer();
    let production = tokio::spawn(async move {
        demo::produce(
            &producer,
            DemoSpec {
                events: 30_000,
                rate: Some(5_000),
                ..DemoSpec::default()
            },
        )
        .await
    });
    let mut privacy = spawn_privacy(&stack, &[]);
    for threshold in [5_000, 12_000, 20_000] {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while privacy.position(COLLECTED).await < threshold {
            assert!(
                std::time::Instant::now() < deadline,
                "privacy stalled:\n{}",
                privacy.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Mid-stream: ~29,000 events reach `collected`, so input is left.
        privacy.kill9();
        privacy = spawn_privacy(&stack, &[]);
    }
    let manifest = production.await.unwrap().unwrap();
    collector
        .wait_caught_up(&manifest.end_offsets, Duration::from_secs(180))
        .await;
    assert!(collector.terminate().success());
    let collected_ends = end_offsets(&stack.kafka, "collected").unwrap();
    privacy
        .wait_caught_up(&collected_ends, Duration::from_secs(180))
        .await;
    assert!(privacy.terminate().success(), "graceful shutdown exits 0");

    // Nothing lost, nothing double after dedup by id; ids carry over.
    let collected = read_collected(&stack, &decoder).await;
    let protected_topic = stack.read("protected");
    let mut protected: BTreeMap<String, ProtectedEvent> = BTreeMap::new();
    for (id, value) in &protected_topic.records {
        let event: ProtectedEvent = decoder.decode(value.as_deref().unwrap()).await.unwrap();
        let id = id.clone().unwrap();
        if let Some(earlier) = protected.get(&id) {
            assert_eq!(earlier, &event, "a re-emitted record is identical");
        }
        protected.insert(id, event);
    }
    let collected_ids: BTreeSet<&String> = collected.events.keys().collect();
    let protected_ids: BTreeSet<&String> = protected.keys().collect();
    assert_eq!(
        collected_ids, protected_ids,
        "every collected event protected once"
    );
    eprintln!(
        "{} events; raw re-emissions after kills: {}",
        protected.len(),
        protected_topic.records.len() - protected.len()
    );

    // Pseudonyms: one per subject, distinct across subjects and tenants.
    let mut by_subject: BTreeMap<Subject, BTreeSet<String>> = BTreeMap::new();
    for (id, event) in &collected.events {
        by_subject
            .entry(subject_of(event))
            .or_default()
            .insert(protected[id].learner.clone());
    }
    let mut owners: HashMap<String, Subject> = HashMap::new();
    for (subject, pseudonyms) in &by_subject {
        assert_eq!(
            pseudonyms.len(),
            1,
            "{subject:?} has one pseudonym across kills"
        );
        let pseudonym = pseudonyms.iter().next().unwrap().clone();
        if let Some(other) = owners.insert(pseudonym, subject.clone()) {
            panic!("{subject:?} and {other:?} share a pseudonym");
        }
    }
    let twin = |tenant: &str| {
        by_subject[&(
            tenant.to_string(),
            "user_id".to_string(),
            "424242".to_string(),
        )]
            .clone()
    };
    assert_ne!(twin("twin-a"), twin("twin-b"), "same person, two tenants");

    // No plaintext personal data downstream of the collector: topics, the
    // processor's stores and its logs.
    let mut long = manifest.identifiers.clone();
    long.extend(["same.person@twins.example", "Sam Twin", "198.51.100.77"].map(String::from));
    let user_ids: BTreeSet<String> = collected
        .events
        .values()
        .filter(|e| e.actor.id_kind == "user_id")
        .map(|e| e.actor.id.clone())
        .collect();
    long.retain(|s| !user_ids.contains(s));
    let scanned = assert_no_leaks_on_topics(&stack, &long);
    assert!(scanned["protected"] > 0, "the scan saw `protected`");
    // User ids are bare numbers: look for them in string fields only (a
    // duration or a score may be the same number).
    fn strings(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(fields) => fields.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    for event in protected.values() {
        let mut texts = Vec::new();
        strings(&serde_json::to_value(event).unwrap(), &mut texts);
        let found = leaks(texts.join("\n").as_bytes(), &long, &user_ids);
        assert!(found.is_empty(), "protected event leaks {found:?}");
    }
    let vault_files = files_under(&vault_dir(&stack));
    let state_files = files_under(&stack.state_dir("privacy"));
    // Guards against vacuity: the stores were found and hold something.
    assert!(!vault_files.is_empty(), "the scan saw the vault");
    assert!(!state_files.is_empty(), "the scan saw the state store");
    for file in vault_files.iter().chain(&state_files) {
        let bytes = std::fs::read(file).unwrap();
        let found = leaks(&bytes, &long, &BTreeSet::new());
        assert!(found.is_empty(), "{} leaks {found:?}", file.display());
    }
    // The first processor and its three restarts after the kills.
    let logs = assert_no_leaks_in_logs(&stack, &long, &user_ids);
    assert!(
        logs >= 4,
        "scanned {logs} privacy logs, expected at least 4"
    );

    // The vault opens what it sealed, in place only.
    let target = collected
        .events
        .values()
        .find(|e| e.actor.id_kind == "mbox" && e.tenant_id != "twin-a")
        .unwrap()
        .clone();
    let target_subject = subject_of(&target);
    let (captured_key, captured_entry, target_pseudonym, target_key_id) = {
        let vault = open_vault(&stack);
        for (id, event) in collected.events.iter().take(500) {
            let (tenant, kind, actor) = subject_of(event);
            let keys = vault
                .existing(&tenant, kind.as_str(), &actor)
                .unwrap()
                .unwrap();
            let sealed = &protected[id];
            if let (Some(email), Some(sealed_email)) = (&event.actor.email, &sealed.actor_email) {
                let opened = keys
                    .open(&tenant, "actor.email", &event.event_id, sealed_email)
                    .unwrap();
                assert_eq!(&opened, email.as_bytes());
                assert!(
                    keys.open(&tenant, "actor.name", &event.event_id, sealed_email)
                        .is_err()
                );
                assert!(
                    keys.open(&tenant, "actor.email", "another-event", sealed_email)
                        .is_err()
                );
            }
            let payload = keys
                .open(&tenant, "payload", &event.event_id, &sealed.payload)
                .unwrap();
            assert_eq!(payload, event.payload.as_bytes());
        }
        let (t, k, a) = &target_subject;
        let keys = vault.existing(t, k, a).unwrap().unwrap();
        let (key, entry) = vault.raw_entry(t, k, a).unwrap().unwrap();
        // Positive control for the shred check below.
        assert!(vault.opens_with_any_kek(t, &key, &entry));
        (
            key,
            entry,
            keys.pseudonym().to_string(),
            keys.key_id().to_string(),
        )
    };

    // Shred through the saga's command topic; a re-sent command gets the
    // identical answer.
    let registry = registry_settings(&stack.registry_url).unwrap();
    let schema = SchemaFile::load(&repo_root().join("schemas/shred_request.avsc")).unwrap();
    let encoder = AvroEncoder::register(&registry, "gdpr.shred_requests", &schema)
        .await
        .unwrap();
    let command = ShredRequest {
        command_id: "cmd-1".into(),
        request_id: "req-1".into(),
        tenant_id: target_subject.0.clone(),
        kind: "erasure".into(),
        subject_id_kind: target_subject.1.clone(),
        subject_id: target_subject.2.clone(),
        attempt: 1,
        issued_at: 1,
    };
    // The decrypt gate on the live processor: a reveal is answered and
    // audited; after the shred the same field is gone (410).
    let token = "operator-token-for-tests";
    let gate_port = free_port();
    let gate_settings = format!(
        "{{vault_dir: '{}', reveal: {{addr: '127.0.0.1:{gate_port}', operators: [{{name: ops-ann, token_sha256: '{}', tenants: ['*'], permissions: ['fields:reveal']}}]}}}}",
        vault_dir(&stack).display(),
        hex::encode(Sha256::digest(token.as_bytes()))
    );
    let metrics_port = free_port();
    let gate_config = stack.config("privacy", metrics_port, &gate_settings);
    let mut privacy = Process::spawn(
        "privacy",
        &gate_config,
        metrics_port,
        &privacy_secrets(),
        stack.dir.path(),
        &[],
    );
    let (partition, offset, sealed_event) = {
        let mut found = None;
        trellis_runtime::kafka::scan_topic(
            &stack.kafka,
            "protected",
            trellis_replay_tests::READ_IDLE,
            |m| {
                use rdkafka::Message;
                if found.is_none() {
                    let event: ProtectedEvent =
                        decoder.decode_blocking(m.payload().unwrap()).unwrap();
                    if event.learner == target_pseudonym {
                        found = Some((m.partition(), m.offset(), m.payload().unwrap().to_vec()));
                    }
                }
            },
            || false,
        )
        .unwrap();
        let (p, o, bytes) = found.unwrap();
        let event: ProtectedEvent = decoder.decode(&bytes).await.unwrap();
        (p, o, event)
    };
    let plain = &collected.events[&format!("{}/{}", sealed_event.tenant_id, sealed_event.event_id)];
    let reveal = |reason: &str| {
        let body = serde_json::json!({
            "tenant": sealed_event.tenant_id, "partition": partition, "offset": offset,
            "field": "payload", "reason": reason,
        });
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{gate_port}/v1/reveal"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // The gate answers once the gate is up and this instance owns the
    // state (a standby answers 503 STANDBY, as a client retries).
    let answer = loop {
        match reveal("support ticket 77: learner disputes a grade").await {
            Ok(answer) if answer.status() != 503 => break answer,
            outcome => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no gate: {:?}\n{}",
                    outcome.map(|a| a.status()),
                    privacy.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(answer["value"].as_str(), Some(plain.payload.as_str()));
    let audit_id = answer["audit_event_id"].as_str().unwrap().to_string();
    let audited = stack.read("audit.events");
    assert!(
        audited
            .records
            .iter()
            .any(|(id, _)| id.as_deref() == Some(audit_id.as_str())),
        "the reveal is on audit.events"
    );
    // The revealed statement holds the learner's email and name: look for
    // those bare strings (a tracing field escapes the JSON's quotes, so the
    // payload as a whole would never match).
    let gate_log = privacy.log_text();
    for secret in [&plain.actor.email, &plain.actor.name] {
        let secret = secret
            .as_deref()
            .expect("the target's statement names them");
        assert!(
            plain.payload.contains(secret),
            "positive control: {secret} is revealed"
        );
        assert!(!gate_log.contains(secret), "revealed values are not logged");
    }

    let producer = stack.producer();
    for _ in 0..2 {
        producer
            .send(
                FutureRecord::to("gdpr.shred_requests")
                    .key("req-1")
                    .payload(&encoder.encode(&command).unwrap()),
                Duration::from_secs(10),
            )
            .await
            .expect("produce command");
    }
    privacy
        .wait_caught_up(
            &end_offsets(&stack.kafka, "gdpr.shred_requests").unwrap(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(subject_of(plain), target_subject);
    let gone = reveal("support ticket 78: after the erasure")
        .await
        .unwrap();
    assert_eq!(gone.status(), 410, "a shredded subject's fields are gone");
    assert!(privacy.terminate().success());
    let acks = stack.read("gdpr.participant_acks").records;
    assert_eq!(acks.len(), 2);
    assert_eq!(
        acks[0].1, acks[1].1,
        "a re-sent command is answered identically"
    );
    let ack: ParticipantAck = decoder.decode(acks[0].1.as_deref().unwrap()).await.unwrap();
    assert_eq!(ack.outcome, "done", "{}", ack.detail);
    assert_eq!(ack.learner.as_deref(), Some(target_pseudonym.as_str()));
    assert_eq!(ack.shredded_key_ids, vec![target_key_id.clone()]);

    // Again after the reveal and the shred: the acks and the reveal's audit
    // event are now on their topics, and the gate's log is written.
    let scanned = assert_no_leaks_on_topics(&stack, &long);
    for topic in DOWNSTREAM {
        assert!(scanned[topic] > 0, "the final scan saw records on {topic}");
    }
    let revealed = stack
        .read("audit.events")
        .records
        .into_iter()
        .find(|(id, _)| id.as_deref() == Some(audit_id.as_str()))
        .and_then(|(_, value)| value)
        .expect("the reveal's audit event");
    let revealed = String::from_utf8_lossy(&revealed);
    for secret in [&plain.actor.email, &plain.actor.name] {
        let secret = secret.as_deref().unwrap();
        assert!(
            !revealed.contains(secret),
            "the audit event carries no revealed value"
        );
    }
    let logs = assert_no_leaks_in_logs(&stack, &long, &user_ids);
    assert!(
        logs >= 5,
        "scanned {logs} privacy logs, expected the gate's too"
    );

    // Every secret that still exists in hand: the subject's fields do not
    // open, its pseudonym is not recomputable, others are untouched.
    {
        let vault = open_vault(&stack);
        let (t, k, a) = &target_subject;
        assert!(vault.existing(t, k, a).unwrap().is_none());
        assert!(!vault.opens_with_any_kek(t, &captured_key, &captured_entry));
        let mut others = 0;
        for (subject, _) in by_subject.iter().filter(|(s, _)| s.0 == *t) {
            if subject == &target_subject {
                continue;
            }
            let keys = vault
                .existing(&subject.0, &subject.1, &subject.2)
                .unwrap()
                .unwrap();
            assert_ne!(keys.pseudonym(), target_pseudonym);
            for (id, event) in &collected.events {
                if subject_of(event) == target_subject {
                    let sealed = &protected[id].payload;
                    assert!(keys.open(t, "payload", &event.event_id, sealed).is_err());
                } else if subject_of(event) == *subject && others < 200 {
                    let opened = keys
                        .open(t, "payload", &event.event_id, &protected[id].payload)
                        .unwrap();
                    assert_eq!(opened, event.payload.as_bytes());
                    others += 1;
                }
            }
        }
        assert!(others > 0, "other subjects still decrypt");
    }

    // Rebuilding by replay neither re-emits anything nor resurrects the
    // erased subject from its events still in `collected`.
    let mut rebuilt = spawn_privacy(&stack, &["--rebuild"]);
    rebuilt
        .wait_caught_up(&collected_ends, Duration::from_secs(180))
        .await;
    let emitted = rebuilt.metric("trellis_records_out_total").await;
    let dropped = rebuilt
        .metric("trellis_erased_subject_records_dropped_total")
        .await;
    assert!(rebuilt.terminate().success());
    assert_eq!(emitted, 0.0, "a rebuild re-emits nothing");
    assert!(
        dropped > 0.0,
        "the erased subject's old events were dropped"
    );
    let vault = open_vault(&stack);
    let (t, k, a) = &target_subject;
    assert!(vault.existing(t, k, a).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_its_secrets() {
    let stack = Stack::start().await;
    let port = free_port();
    let config = stack.config("privacy", port, &settings(&stack));
    let secrets = vec![(trellis_privacy::MASTER_KEY, test_secret("master"))];
    let mut process = Process::spawn("privacy", &config, port, &secrets, stack.dir.path(), &[]);
    let status = process.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = process.log_text();
    assert!(log.contains(trellis_privacy::INDEX_KEY), "{log}");
    assert!(log.contains(trellis_privacy::IP_SALT), "{log}");
    assert!(!log.contains(&test_secret("master")), "{log}");

    // A wrong master key for an existing vault is named, not shown.
    open_vault(&stack)
        .subject("acme", "user_id", "1", "test")
        .unwrap();
    let mut secrets = privacy_secrets();
    secrets[0].1 = test_secret("not-the-master");
    let mut process = Process::spawn("privacy", &config, port, &secrets, stack.dir.path(), &[]);
    let status = process.wait_exit(Duration::from_secs(30));
    assert!(!status.success());
    let log = process.log_text();
    assert!(log.contains(trellis_privacy::MASTER_KEY), "{log}");
    assert!(!log.contains(&secrets[0].1), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_shred_is_finished_on_restart_and_answered_once() {
    let stack = Stack::start().await;
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let mut collector = stack.spawn(
        "collector",
        "{}",
        &[("TRELLIS_INGEST_SIGNING_KEY", test_secret("signing"))],
    );
    produce_shared_person(&stack).await;
    let ingest: BTreeMap<String, i64> = ["ingest.events", "ingest.xapi"]
        .iter()
        .flat_map(|t| end_offsets(&stack.kafka, t).unwrap())
        .collect();
    collector
        .wait_caught_up(&ingest, Duration::from_secs(60))
        .await;

    let port = free_port();
    let config = stack.config("privacy", port, &settings(&stack));
    let mut secrets = privacy_secrets();
    secrets.push((
        trellis_runtime::failpoint::ENV,
        trellis_runtime::failpoint::VAULT_MID_SHRED.to_string(),
    ));
    let mut privacy = Process::spawn("privacy", &config, port, &secrets, stack.dir.path(), &[]);
    privacy
        .wait_caught_up(
            &end_offsets(&stack.kafka, "collected").unwrap(),
            Duration::from_secs(60),
        )
        .await;
    assert!(privacy.terminate().success());
    let (captured_key, captured_entry) = {
        let vault = open_vault(&stack);
        let (key, entry) = vault
            .raw_entry("twin-a", "user_id", "424242")
            .unwrap()
            .expect("the subject has a vault entry");
        // Positive control: the helper opens the copy while its KEK lives.
        assert!(vault.opens_with_any_kek("twin-a", &key, &entry));
        (key, entry)
    };
    let mut privacy = Process::spawn("privacy", &config, port, &secrets, stack.dir.path(), &[]);

    let registry = registry_settings(&stack.registry_url).unwrap();
    let schema = SchemaFile::load(&repo_root().join("schemas/shred_request.avsc")).unwrap();
    let encoder = AvroEncoder::register(&registry, "gdpr.shred_requests", &schema)
        .await
        .unwrap();
    let command = ShredRequest {
        command_id: "cmd-crash".into(),
        request_id: "req-crash".into(),
        tenant_id: "twin-a".into(),
        kind: "erasure".into(),
        subject_id_kind: "user_id".into(),
        subject_id: "424242".into(),
        attempt: 1,
        issued_at: 1,
    };
    stack
        .producer()
        .send(
            FutureRecord::to("gdpr.shred_requests")
                .key("req-crash")
                .payload(&encoder.encode(&command).unwrap()),
            Duration::from_secs(10),
        )
        .await
        .expect("produce command");
    let status = privacy.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "the fail point fired: {status}");
    assert!(
        privacy
            .log_text()
            .contains("fail point `vault-mid-shred` reached"),
        "{}",
        privacy.log_text()
    );

    let mut privacy = spawn_privacy(&stack, &[]);
    privacy
        .wait_caught_up(
            &end_offsets(&stack.kafka, "gdpr.shred_requests").unwrap(),
            Duration::from_secs(60),
        )
        .await;
    assert!(privacy.terminate().success());
    // The crash came before any answer was written, so the finished shred
    // is answered by exactly one record (not one distinct value written
    // several times), and the key's shred is recorded once.
    let acks: Vec<Vec<u8>> = stack
        .read("gdpr.participant_acks")
        .records
        .into_iter()
        .filter_map(|(_, v)| v)
        .collect();
    assert_eq!(acks.len(), 1, "one answer record");
    let audit = stack.read("audit.events");
    let mut shreds = 0;
    for (_, value) in &audit.records {
        let event: trellis_records::AuditEvent =
            decoder.decode(value.as_deref().unwrap()).await.unwrap();
        if event.action == "key.shredded" {
            shreds += 1;
        }
    }
    assert_eq!(shreds, 1, "one key.shredded record");
    let ack: ParticipantAck = decoder.decode(&acks[0]).await.unwrap();
    assert_eq!(ack.outcome, "done", "{}", ack.detail);
    // The answer says what the interrupted shred destroyed, not "already
    // erased" (the receipt was written before anything was destroyed).
    assert_eq!(ack.shredded_key_ids.len(), 1, "{ack:?}");
    assert!(
        ack.detail.starts_with("subject key material destroyed"),
        "{}",
        ack.detail
    );
    let vault = open_vault(&stack);
    assert!(
        vault
            .existing("twin-a", "user_id", "424242")
            .unwrap()
            .is_none()
    );
    assert!(
        !vault.opens_with_any_kek("twin-a", &captured_key, &captured_entry),
        "the old KEK is destroyed once the shred finishes"
    );
    assert!(
        vault
            .existing("twin-b", "user_id", "424242")
            .unwrap()
            .is_some(),
        "the other tenant's person is untouched"
    );
}
