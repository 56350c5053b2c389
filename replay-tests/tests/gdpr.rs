//! The GDPR saga and the audit chain on a real broker, with the whole
//! topology running: erasure verified by replaying every retained log
//! (DESIGN.md promise 5), tamper evidence (promise 6), a saga that survives
//! `kill -9` of itself and of a participant mid-erasure, and rebuilds that
//! reach the same state (anchors included).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use trellis_kit::demo::{self, DemoSpec};
use trellis_kit::gdpr::Requests;
use trellis_privacy::vault::Vault;
use trellis_records::{
    Aggregate, Anchor, AuditEvent, ParticipantAck, ProtectedEvent, ShredRequest, SubjectId,
    SubjectRequest, SubjectRequestAck,
};
use trellis_replay_tests::postgres::Postgres;
use trellis_replay_tests::{
    Process, Produced, Stack, binary, copy_dir, end_offsets, free_port, test_secret,
};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::state::StateStore;

const TENANT: &str = "northwind-uni";
const USER: &str = "1014";
const ACCOUNT: &str = "https://moodle.northwind-uni.example|1014";

struct Topology {
    stack: Stack,
    export_dir: PathBuf,
    warehouse: Postgres,
    /// Where the audit processor serves its checkpoint.
    checkpoint_port: u16,
}

/// The audit log's public key: all a verifier is given.
fn audit_public_key() -> String {
    trellis_audit::signing::NoteKey::new("test-anchors", &test_seed("anchors"))
        .unwrap()
        .vkey()
}

/// The witness's public key.
fn witness_key() -> String {
    trellis_audit::signing::Cosigner::new(WITNESS, &test_seed("witness"))
        .unwrap()
        .vkey()
}

/// The Ed25519 seed in `test_secret(label)`.
fn test_seed(label: &str) -> trellis_runtime::secret::Secret {
    trellis_runtime::secret::Secret::from_bytes(hex::decode(test_secret(label)).unwrap())
}

const WITNESS: &str = "witness.test/w1";

impl Topology {
    fn checkpoint_file(&self) -> PathBuf {
        self.stack.dir.path().join("audit-checkpoint")
    }

    fn witness_state(&self) -> PathBuf {
        self.stack.dir.path().join("witness-state")
    }

    /// `trellis audit witness --once` against the running audit processor.
    fn witness_once(&self) -> (bool, String) {
        let output = Command::new(binary("trellis"))
            .args([
                "audit",
                "witness",
                "--once",
                "--name",
                WITNESS,
                "--log",
                &format!("http://127.0.0.1:{}", self.checkpoint_port),
                "--log-key",
                &audit_public_key(),
                "--state",
                self.witness_state().to_str().unwrap(),
            ])
            .env("TRELLIS_WITNESS_SIGNING_KEY", test_secret("witness"))
            .env_remove(trellis_audit::SIGNING_KEY)
            .output()
            .unwrap();
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    fn vault_dir(&self) -> PathBuf {
        self.stack.dir.path().join("vault")
    }

    fn secrets(name: &str) -> Vec<(&'static str, String)> {
        match name {
            "collector" => vec![("TRELLIS_INGEST_SIGNING_KEY", test_secret("signing"))],
            "privacy" => vec![
                (trellis_privacy::MASTER_KEY, test_secret("master")),
                (trellis_privacy::INDEX_KEY, test_secret("index")),
                (trellis_privacy::IP_SALT, test_secret("ip-salt")),
            ],
            "audit" => vec![(trellis_audit::SIGNING_KEY, test_secret("anchors"))],
            _ => Vec::new(),
        }
    }

    /// Rows of the warehouse tables as (table, tenant, learner, key, content).
    async fn warehouse_rows(&self) -> BTreeSet<(String, String, String, String, String)> {
        let admin = self.warehouse.admin().await;
        let mut rows = BTreeSet::new();
        for (table, key) in [
            ("progress", "activity_id"),
            ("completions", "completion_id"),
        ] {
            for row in admin
                .query(
                    &format!(
                        "SELECT tenant_id, learner, {key}, (to_jsonb(t) - 'source_partition' - 'source_offset')::text FROM trellis.{table} t"
                    ),
                    &[],
                )
                .await
                .unwrap()
            {
                rows.insert((table.to_string(), row.get(0), row.get(1), row.get(2), row.get(3)));
            }
        }
        for row in admin
            .query(
                "SELECT tenant_id, window_length || window_start || dimension || dimension_value, (to_jsonb(t) - 'source_partition' - 'source_offset')::text FROM trellis.aggregates t",
                &[],
            )
            .await
            .unwrap()
        {
            rows.insert(("aggregates".into(), row.get(0), String::new(), row.get(1), row.get(2)));
        }
        rows
    }

    fn settings(&self, name: &str) -> String {
        match name {
            // northwind-uni declares its Moodle site: the xAPI account and
            // the Moodle user id of a learner are one subject.
            "privacy" => format!(
                "{{vault_dir: '{}', export_dir: '{}', identity_links: {{northwind-uni: [{{account_home_page: 'https://moodle.northwind-uni.example'}}]}}}}",
                self.vault_dir().display(),
                self.export_dir.display()
            ),
            "gdpr" => format!(
                "{{tenants: [northwind-uni, riverside-college, acme-learning], retry_after_ms: 3000, tick_ms: 200, export_dir: '{}'}}",
                self.export_dir.display()
            ),
            "audit" => format!(
                "{{key_id: test-anchors, anchor_every: 64, anchor_interval_ms: 200, origin: test.localhost/audit, checkpoint_addr: '127.0.0.1:{}', checkpoint_file: '{}'}}",
                self.checkpoint_port,
                self.checkpoint_file().display()
            ),
            _ => "{}".into(),
        }
    }

    fn spawn(&self, name: &str, args: &[&str]) -> Process {
        let port = free_port();
        let config = self.stack.config(name, port, &self.settings(name));
        let mut secrets = Self::secrets(name);
        if name == "warehouse" {
            secrets.push(("TRELLIS_WAREHOUSE_URL", self.warehouse.owner_url()));
        }
        Process::spawn(name, &config, port, &secrets, self.stack.dir.path(), args)
    }

    fn ends(&self, topics: &[&str]) -> BTreeMap<String, i64> {
        let mut ends = BTreeMap::new();
        for topic in topics {
            ends.extend(end_offsets(&self.stack.kafka, topic).unwrap());
        }
        ends
    }

    fn open_vault(&self) -> Vault {
        let hex = |label: &str| hex::decode(test_secret(label)).unwrap();
        Vault::open(&self.vault_dir(), &hex("master"), &hex("index")).unwrap()
    }

    fn digest(&self, name: &str) -> String {
        StateStore::open(&self.stack.state_dir(name))
            .unwrap()
            .digest()
            .unwrap()
            .to_string()
    }

    fn trellis(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new(binary("trellis"))
            .args(args)
            .env("TRELLIS_BOOTSTRAP_SERVERS", &self.stack.broker.bootstrap)
            .env(
                "TRELLIS_TOPOLOGY",
                trellis_replay_tests::repo_root().join("topology.yaml"),
            )
            // A verifier holds the public key, never the signing key.
            .env_remove(trellis_audit::SIGNING_KEY)
            .env_remove(format!("{}_FILE", trellis_audit::SIGNING_KEY))
            .env("TRELLIS_AUDIT_PUBLIC_KEY", audit_public_key())
            .env("TRELLIS_REGISTRY_URL", &self.stack.registry_url)
            .env(trellis_privacy::MASTER_KEY, test_secret("master"))
            .env(trellis_privacy::INDEX_KEY, test_secret("index"))
            .env(trellis_privacy::IP_SALT, test_secret("ip-salt"))
            .env("TRELLIS_EVIDENCE_SIGNING_KEY", test_secret("evidence"))
            .env("TRELLIS_WAREHOUSE_URL", self.warehouse.owner_url())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }
}

/// `trellis erasure verify` of the first erasure, with `extra` arguments:
/// (exit 0, output).
fn verify_erasure(t: &Topology, vault: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec![
        "erasure",
        "verify",
        "--request",
        "erase-user",
        "--warehouse",
        "--vault-dir",
        vault.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    t.trellis(&args)
}

/// Every string in `value`, however deeply nested.
fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(fields) => {
            for (name, v) in fields {
                out.push(name.clone());
                json_strings(v, out);
            }
        }
        _ => {}
    }
}

/// The verifier's line for `check` says `verdict`.
fn says(report: &str, check: &str, verdict: &str) -> bool {
    report.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(check) && words.next() == Some(verdict)
    })
}

async fn decode_all<T: serde::de::DeserializeOwned>(
    stack: &Stack,
    topic: &str,
) -> Vec<(String, T)> {
    let decoder = AvroDecoder::new(registry_settings(&stack.registry_url).unwrap());
    let mut out = Vec::new();
    for (id, value) in stack.read(topic).records {
        if let Some(value) = value {
            out.push((
                id.unwrap_or_default(),
                decoder.decode(&value).await.unwrap(),
            ));
        }
    }
    out
}

/// The `progress` topic as a table: latest value per key (None: tombstone).
fn progress_table(kafka: &KafkaConfig) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
    let mut table = BTreeMap::new();
    trellis_runtime::kafka::scan_topic(
        kafka,
        "progress",
        trellis_replay_tests::READ_IDLE,
        |m| {
            use rdkafka::Message;
            table.insert(
                m.key().unwrap_or_default().to_vec(),
                m.payload().map(<[u8]>::to_vec),
            );
        },
        || false,
    )
    .unwrap();
    table
}

fn request(id: &str, kind: &str, subject_kind: &str, subject: &str) -> SubjectRequest {
    SubjectRequest {
        request_id: id.into(),
        tenant_id: TENANT.into(),
        kind: kind.into(),
        subject_id_kind: subject_kind.into(),
        subject_id: subject.into(),
        requested_at: trellis_runtime::ticker::now_ms(),
        other_subject_ids: Vec::new(),
    }
}

/// The learner named by both identifiers the tenant's identity links join.
fn person(id: &str, kind: &str) -> SubjectRequest {
    let mut request = request(id, kind, "user_id", USER);
    request.other_subject_ids = vec![SubjectId {
        kind: "account".into(),
        id: ACCOUNT.into(),
    }];
    request
}

async fn ask(requests: &Requests, request: SubjectRequest) -> SubjectRequestAck {
    requests.file(&request).await.unwrap();
    requests
        .wait_for(&request.request_id, Duration::from_secs(90))
        .await
        .unwrap()
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A storage-level change to a copy of the logs.
type Tamper<'a> = dyn FnOnce(&mut Vec<trellis_runtime::pipeline::OwnedRecord>) + 'a;

fn tampered(
    log: &Path,
    out: &Path,
    change: impl FnOnce(&mut Vec<trellis_runtime::pipeline::OwnedRecord>),
) {
    let mut records = trellis_audit::verify::read_log(log).unwrap();
    change(&mut records);
    trellis_audit::verify::write_log(out, &records).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn erasure_is_verified_by_replaying_every_log_and_tampering_is_located() {
    let stack = Stack::start().await;
    let export_dir = stack.dir.path().join("exports");
    let warehouse = Postgres::start().await;
    let t = Topology {
        stack,
        export_dir,
        warehouse,
        checkpoint_port: free_port(),
    };
    let kafka = t.stack.kafka.clone();

    // The whole topology over the demo data set (three tenants).
    let mut collector = t.spawn("collector", &[]);
    let mut privacy = t.spawn("privacy", &[]);
    let mut progress = t.spawn("progress", &[]);
    let mut analytics = t.spawn("analytics", &[]);
    let mut audit = t.spawn("audit", &[]);
    let mut gdpr = t.spawn("gdpr", &[]);
    let mut warehouse = t.spawn("warehouse", &[]);
    let manifest = demo::produce(
        &t.stack.producer(),
        DemoSpec {
            events: 4_000,
            span_hours: 24,
            ..DemoSpec::default()
        },
    )
    .await
    .unwrap();
    let long = Duration::from_secs(180);
    collector.wait_caught_up(&manifest.end_offsets, long).await;
    privacy.wait_caught_up(&t.ends(&["collected"]), long).await;
    progress.wait_caught_up(&t.ends(&["protected"]), long).await;
    analytics
        .wait_caught_up(&t.ends(&["protected"]), long)
        .await;
    // A witness sees the audit log for the first time (trusted on first
    // use); it will check that what it is shown later only grew from this.
    audit.wait_caught_up(&t.ends(&["protected"]), long).await;
    let (ok, text) = t.witness_once();
    assert!(
        ok && text.starts_with("cosigned test.localhost/audit size "),
        "{text}"
    );

    // Before: the subject's vault entries (to try later against every KEK
    // left), the progress table and the aggregates.
    assert!(privacy.terminate().success());
    let captured: Vec<_> = {
        let vault = t.open_vault();
        // Linked: the account has no entry of its own.
        assert!(
            vault
                .raw_entry(TENANT, "account", ACCOUNT)
                .unwrap()
                .is_none(),
            "the account resolves to the user id's entry"
        );
        let entry = vault
            .raw_entry(TENANT, "user_id", USER)
            .unwrap()
            .expect("the demo learner exists");
        // Positive control: the copy opens while its KEK lives.
        assert!(vault.opens_with_any_kek(TENANT, &entry.0, &entry.1));
        vec![entry]
    };
    // A backup of the vault from before the erasure (restored later, to
    // show the verifier finds it).
    let vault_backup = t.stack.dir.path().join("vault-backup");
    copy_dir(&t.vault_dir(), &vault_backup);
    privacy = t.spawn("privacy", &[]);
    let requests = Requests::connect(&kafka, &t.stack.registry_url, &t.stack.topology)
        .await
        .unwrap();

    // Access first, one request naming the person by both identifiers: the
    // export names the pseudonym the erasure must remove.
    let erased: BTreeSet<String> = {
        let ack = ask(&requests, person("access-person", "access")).await;
        assert_eq!(ack.status, "completed", "{ack:?}");
        let path = PathBuf::from(ack.export.clone().unwrap());
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "exports are owner-only");
        }
        let document: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let identifiers = document["identifiers"].as_array().unwrap();
        assert_eq!(identifiers.len(), 2, "{document}");
        assert_eq!(
            (&identifiers[0]["id"], &identifiers[1]["id"]),
            (&USER.into(), &ACCOUNT.into())
        );
        assert_eq!(
            identifiers[0]["pseudonym"], identifiers[1]["pseudonym"],
            "linked identifiers are one subject with one pseudonym"
        );
        let subjects = document["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1, "one person, one subject: {document}");
        let held_by = &subjects[0]["held_by"];
        let pseudonym = subjects[0]["pseudonym"].as_str().unwrap().to_string();
        assert_eq!(identifiers[0]["pseudonym"], pseudonym);
        assert!(
            held_by["progress"]["records"].as_i64().unwrap() > 0,
            "{document}"
        );
        // Every event of theirs, as received, decrypted; nobody else's.
        let events_file = held_by["privacy"]["data"]["events_file"]
            .as_str()
            .expect("privacy exported the events");
        let events: serde_json::Value =
            serde_json::from_slice(&std::fs::read(events_file).unwrap()).unwrap();
        let events = events["events"].as_array().unwrap();
        let theirs: BTreeSet<String> = decode_all::<ProtectedEvent>(&t.stack, "protected")
            .await
            .into_iter()
            .filter(|(_, e)| e.learner == pseudonym)
            .map(|(_, e)| e.event_id)
            .collect();
        assert_eq!(events.len(), theirs.len(), "every event of theirs");
        assert_eq!(
            held_by["privacy"]["records"].as_i64().unwrap() as usize,
            theirs.len()
        );
        // Counted once, though privacy answered for both identifiers.
        let privacy = &ack.participants[0];
        assert_eq!(privacy.records_affected as usize, theirs.len(), "{ack:?}");
        for event in events {
            let received = &event["as_received"];
            let actor = &received["actor"];
            let names_them = actor["user_id"] == USER
                || (actor["account"]["homePage"] == "https://moodle.northwind-uni.example"
                    && actor["account"]["name"] == USER);
            assert!(names_them, "only their events: {event}");
            assert!(theirs.contains(event["event_id"].as_str().unwrap()));
        }
        assert!(
            events
                .iter()
                .any(|e| e["email"].is_string() && e["name"].is_string()),
            "plaintext fields restored"
        );
        BTreeSet::from([pseudonym])
    };
    progress
        .wait_caught_up(&t.ends(&["protected", "gdpr.erase_commands"]), long)
        .await;
    let table_before = progress_table(&kafka);
    // Sorted: a multi-partition topic reads back in no particular order.
    let aggregates = || {
        let mut records = t.stack.read("analytics.aggregates").records;
        records.sort();
        records
    };
    let aggregates_before = aggregates();
    assert!(
        !aggregates_before.is_empty(),
        "windows closed during the run"
    );
    let warehouse_inputs = [
        "progress",
        "completions",
        "analytics.aggregates",
        "gdpr.erase_commands",
    ];
    warehouse
        .wait_caught_up(&t.ends(&warehouse_inputs), long)
        .await;
    let warehouse_before = t.warehouse_rows().await;
    assert!(
        warehouse_before
            .iter()
            .any(|(table, _, learner, _, _)| table == "progress" && erased.contains(learner)),
        "the learner has warehouse rows to erase"
    );

    // Erasure of the person (user id and xAPI account in one request), with
    // progress down and the saga killed once privacy has shredded: it still
    // completes, exactly once.
    progress.kill9();
    let first = person("erase-user", "erasure");
    let filed = trellis_runtime::ticker::now_ms();
    requests.file(&first).await.unwrap();
    wait_until("privacy's shred", Duration::from_secs(60), async || {
        decode_all::<ParticipantAck>(&t.stack, "gdpr.participant_acks")
            .await
            .iter()
            .any(|(_, a)| a.request_id == "erase-user" && a.participant == "privacy")
    })
    .await;
    wait_until("the erase commands", Duration::from_secs(60), async || {
        t.stack
            .read("gdpr.erase_commands")
            .id_counts()
            .keys()
            .any(|id| id.contains("erase-user"))
    })
    .await;
    gdpr.kill9();
    gdpr = t.spawn("gdpr", &[]);
    progress = t.spawn("progress", &[]);
    let answer = requests
        .wait_for("erase-user", Duration::from_secs(120))
        .await
        .unwrap();
    let answered = trellis_runtime::ticker::now_ms();
    assert_eq!(answer.status, "completed", "{answer:?}");
    // The answer is dated by the saga's decision, within the wall-clock
    // span the request really took (a kill and restart: seconds, not 0).
    assert!(
        (filed..=answered).contains(&answer.acknowledged_at)
            && answer.acknowledged_at > answer.requested_at,
        "acknowledged at {} for a request filed at {filed} and answered by {answered}",
        answer.acknowledged_at
    );
    let outcome: BTreeMap<&str, &str> = answer
        .participants
        .iter()
        .map(|p| (p.participant.as_str(), p.outcome.as_str()))
        .collect();
    assert_eq!(
        outcome,
        BTreeMap::from([
            ("analytics", "done"),
            ("privacy", "done"),
            ("progress", "done"),
            ("warehouse", "done")
        ])
    );
    assert_eq!(
        answer.participants[0].shredded_key_ids.len(),
        1,
        "two linked identifiers, one key: {answer:?}"
    );
    // The answer says where plaintext may remain, and until when.
    let residual: BTreeMap<&str, i64> = answer
        .residual_plaintext
        .iter()
        .map(|c| (c.topic.as_str(), c.until))
        .collect();
    for (topic, retention) in [
        ("collected", 259_200_000),
        ("ingest.events", 86_400_000),
        ("ingest.xapi", 86_400_000),
        ("dlq", 604_800_000),
    ] {
        let until = residual
            .get(topic)
            .copied()
            .unwrap_or_else(|| panic!("{topic}: {answer:?}"));
        assert!(until >= first.requested_at + retention - 60_000, "{topic}");
    }
    assert!(
        !residual.contains_key("protected"),
        "only restricted topics"
    );

    // One request erased the person: an access request by either
    // identifier finds nothing.
    let after = ask(
        &requests,
        request("access-after", "access", "user_id", USER),
    )
    .await;
    assert_eq!(
        after.participants.len(),
        1,
        "nothing left to find: {after:?}"
    );
    assert_eq!(after.participants[0].outcome, "not_found");
    let after = ask(
        &requests,
        request("access-after-account", "access", "account", ACCOUNT),
    )
    .await;
    assert_eq!(after.participants[0].outcome, "not_found", "{after:?}");

    // Exactly once: one answer id per request, every copy identical; one
    // shred; the cited anchor exists and covers the request.
    let answers =
        decode_all::<SubjectRequestAck>(&t.stack, "gdpr.subject_request.acknowledged.v1").await;
    let mine: Vec<&SubjectRequestAck> = answers
        .iter()
        .filter(|(_, a)| a.request_id == "erase-user")
        .map(|(_, a)| a)
        .collect();
    assert!(
        !mine.is_empty() && mine.iter().all(|a| *a == mine[0]),
        "{mine:?}"
    );
    let ids: BTreeSet<&String> = answers
        .iter()
        .filter(|(_, a)| a.request_id == "erase-user")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 1);
    // One key shredded, and its event written no more often than privacy
    // was sent the request's commands (a re-sent command is answered from
    // its receipt, events included; nothing executes twice).
    let events = decode_all::<AuditEvent>(&t.stack, "audit.events").await;
    let mut shreds: BTreeMap<&String, usize> = BTreeMap::new();
    for (id, e) in &events {
        if e.action == "key.shredded"
            && e.details.get("request_id").map(String::as_str) == Some("erase-user")
        {
            *shreds.entry(id).or_default() += 1;
        }
    }
    assert_eq!(shreds.len(), 1, "one key shredded: {shreds:?}");
    let commands = decode_all::<ShredRequest>(&t.stack, "gdpr.shred_requests")
        .await
        .into_iter()
        .filter(|(_, c)| c.request_id == "erase-user")
        .count();
    let written: usize = shreds.values().sum();
    assert!(
        (1..=commands).contains(&written),
        "key.shredded written {written} times for {commands} commands"
    );
    let anchors = decode_all::<Anchor>(&t.stack, "audit.anchors").await;
    let cited = anchors
        .iter()
        .find(|(_, a)| {
            Some(hex::encode(trellis_audit::canonical::anchor_hash(a))) == answer.audit_anchor
        })
        .expect("the cited anchor is on audit.anchors");
    assert!(cited.1.request_ids.contains(&"erase-user".to_string()));
    // The answer cites the anchor log's signed checkpoint that includes the
    // anchor: it opens with the public key alone.
    let cited_checkpoint = answer
        .audit_checkpoint
        .clone()
        .expect("a checkpoint is cited");
    assert_eq!(cited_checkpoint, cited.1.checkpoint);
    let mut public = trellis_audit::signing::Keys::default();
    public.trust_vkey(&audit_public_key()).unwrap();
    let body = public.open_note(cited_checkpoint.as_bytes()).unwrap();
    let cited_at = trellis_audit::checkpoint::Checkpoint::parse(&body).unwrap();
    assert_eq!(cited_at.origin, "test.localhost/audit");

    // Quiesce: every processor caught up, audit.events fully anchored.
    progress
        .wait_caught_up(&t.ends(&["protected", "gdpr.erase_commands"]), long)
        .await;
    analytics
        .wait_caught_up(&t.ends(&["protected", "gdpr.erase_commands"]), long)
        .await;
    privacy
        .wait_caught_up(&t.ends(&["collected", "gdpr.shred_requests"]), long)
        .await;
    // Every audited partition, quiet ones included, is anchored within an
    // interval of its last record (the audit processor cuts on its clock).
    wait_until(
        "every audited record anchored",
        Duration::from_secs(60),
        async || {
            let (_, report) = t.trellis(&["audit", "verify"]);
            let partitions: Vec<&str> = report
                .lines()
                .filter(|l| l.contains(" unanchored"))
                .collect();
            partitions.iter().any(|l| l.starts_with("audit.events/0"))
                && partitions.iter().all(|l| l.contains(" 0 unanchored"))
        },
    )
    .await;
    // The witness again: the log grew, a consistency proof shows it only
    // grew, and the witness cosigns the new checkpoint. The file and the
    // endpoint publish the same checkpoint.
    let (ok, text) = t.witness_once();
    assert!(
        ok && text.starts_with("cosigned test.localhost/audit size "),
        "{text}"
    );
    let served = reqwest::get(format!("http://127.0.0.1:{}/checkpoint", t.checkpoint_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        served,
        std::fs::read_to_string(t.checkpoint_file()).unwrap()
    );
    let grown =
        trellis_audit::checkpoint::Checkpoint::parse(&public.open_note(served.as_bytes()).unwrap())
            .unwrap();
    assert!(grown.size > cited_at.size, "{grown} after {cited_at}");
    let witnessed = trellis_audit::checkpoint::Checkpoint::parse(
        &public
            .open_note(
                std::fs::read_to_string(t.witness_state())
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap(),
    )
    .unwrap();
    audit
        .wait_caught_up(
            &t.ends(&[
                "protected",
                "completions",
                "gdpr.subject_request.acknowledged.v1",
                "audit.events",
            ]),
            long,
        )
        .await;
    gdpr.wait_caught_up(
        &t.ends(&[
            "gdpr.subject_request.received.v1",
            "gdpr.participant_acks",
            "audit.anchors",
        ]),
        long,
    )
    .await;
    warehouse
        .wait_caught_up(&t.ends(&warehouse_inputs), long)
        .await;
    // The warehouse: no row of the learner in any table; everyone else's
    // rows and the aggregates as they were.
    let warehouse_after = t.warehouse_rows().await;
    let others = |rows: &BTreeSet<(String, String, String, String, String)>| {
        rows.iter()
            .filter(|(_, _, learner, _, _)| !erased.contains(learner))
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert!(
        warehouse_after
            .iter()
            .all(|(_, _, learner, _, _)| !erased.contains(learner)),
        "no warehouse row of the erased learner"
    );
    assert_eq!(others(&warehouse_before), others(&warehouse_after));
    for p in [
        &mut collector,
        &mut privacy,
        &mut progress,
        &mut analytics,
        &mut audit,
        &mut gdpr,
        &mut warehouse,
    ] {
        assert!(p.terminate().success(), "{} stops cleanly", p.name);
    }

    // Replay every retained log from offset 0, holding every secret that
    // still exists.
    let mut vault = t.open_vault();
    for (kind, id) in [("user_id", USER), ("account", ACCOUNT)] {
        assert!(
            vault.existing(TENANT, kind, id).unwrap().is_none(),
            "{kind} erased"
        );
    }
    for (key, value) in &captured {
        assert!(
            !vault.opens_with_any_kek(TENANT, key, value),
            "an old copy of the entry opens no more"
        );
    }
    let protected = decode_all::<ProtectedEvent>(&t.stack, "protected").await;
    let (mut theirs, mut others) = (0, 0);
    for (_, event) in &protected {
        let keys = vault
            .keys_by_id(&event.tenant_id, &event.subject_key_id)
            .unwrap();
        if erased.contains(&event.learner) {
            assert!(keys.is_none(), "no key opens the erased learner's fields");
            theirs += 1;
        } else if others < 400 {
            let keys = keys.expect("other learners keep their keys");
            assert!(
                keys.open(&event.tenant_id, "payload", &event.event_id, &event.payload)
                    .is_ok()
            );
            others += 1;
        }
    }
    assert!(
        theirs > 0 && others > 0,
        "{theirs} erased, {others} other events checked"
    );
    // Their identifiers now lead to new, unrelated material.
    let fresh = vault.subject(TENANT, "user_id", USER, "test").unwrap();
    assert!(
        !erased.contains(fresh.keys.pseudonym()),
        "the pseudonym cannot be recomputed"
    );
    drop(vault);

    // Progress and transcripts for them are empty; everyone else's rows are
    // as they were; aggregates are untouched and still count them.
    let table_after = progress_table(&kafka);
    let store = StateStore::open(&t.stack.state_dir("progress")).unwrap();
    for learner in &erased {
        let transcript = trellis_progress::transcript::transcript(&store, TENANT, learner).unwrap();
        assert!(transcript.entries.is_empty());
        let live = table_after
            .iter()
            .filter(|(k, v)| String::from_utf8_lossy(k).contains(learner.as_str()) && v.is_some())
            .count();
        assert_eq!(live, 0, "every progress row of {learner} is tombstoned");
    }
    drop(store);
    let unrelated =
        |table: &BTreeMap<Vec<u8>, Option<Vec<u8>>>| -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
            table
                .iter()
                .filter(|(k, _)| {
                    !erased
                        .iter()
                        .any(|l| String::from_utf8_lossy(k).contains(l.as_str()))
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
    assert_eq!(
        unrelated(&table_before),
        unrelated(&table_after),
        "other learners unchanged"
    );
    let aggregates_after = aggregates();
    assert!(
        aggregates_before == aggregates_after,
        "published aggregates stay ({} before, {} after)",
        aggregates_before.len(),
        aggregates_after.len()
    );
    let decoder = AvroDecoder::new(registry_settings(&t.stack.registry_url).unwrap());
    let mut counted = 0;
    for (_, value) in &aggregates_after {
        let cell: Aggregate = decoder.decode(value.as_deref().unwrap()).await.unwrap();
        if cell.tenant_id == TENANT && cell.dimension == "verb" {
            let end = cell.window_start
                + if cell.window == "hour" {
                    3_600_000
                } else {
                    86_400_000
                };
            counted += protected
                .iter()
                .filter(|(_, e)| {
                    erased.contains(&e.learner) && (cell.window_start..end).contains(&e.occurred_at)
                })
                .count()
                .min(1);
        }
    }
    assert!(
        counted > 0,
        "closed cells cover the erased learner's past events"
    );

    // The audit chain still verifies: crypto-shredding changed no record;
    // and the log contains the tree the witness cosigned.
    let witness_state = t.witness_state();
    let witness_key = witness_key();
    let with_witness = [
        "--witness",
        witness_state.to_str().unwrap(),
        "--witness-key",
        witness_key.as_str(),
    ];
    let (ok, report) = t.trellis(&[&["audit", "verify"][..], &with_witness].concat());
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!(
            "witness {WITNESS} cosigned test.localhost/audit size {}",
            witnessed.size
        )),
        "{report}"
    );

    // Tamper with a copy of the logs: change a byte, drop a record, swap
    // two records. Each is detected and located.
    let log = t.stack.dir.path().join("audited.log");
    let (ok, text) = t.trellis(&["audit", "export-log", "--out", log.to_str().unwrap()]);
    assert!(ok, "{text}");
    let records = trellis_audit::verify::read_log(&log).unwrap();
    let anchor = anchors
        .iter()
        .map(|(_, a)| a)
        .find(|a| a.topic == "protected" && a.sequence == 1)
        .expect("protected has a second anchor")
        .clone();
    let at = |offset: i64| {
        records
            .iter()
            .position(|r| {
                r.topic == "protected" && r.partition == anchor.partition && r.offset == offset
            })
            .unwrap()
    };
    let victim = anchor.first_offset + 3;
    let p = anchor.partition;
    let cases: [(&str, Box<Tamper<'_>>, String); 3] = [
        (
            "changed",
            Box::new(|r: &mut Vec<trellis_runtime::pipeline::OwnedRecord>| {
                r[at(victim)].value.as_mut().unwrap()[20] ^= 0x01
            }),
            format!(
                "protected/{p} offsets {}..={}: a record was changed",
                anchor.first_offset, anchor.last_offset
            ),
        ),
        (
            "dropped",
            Box::new(|r: &mut Vec<_>| {
                r.remove(at(victim));
            }),
            format!("protected/{p} offset {victim}: record missing"),
        ),
        (
            "swapped",
            Box::new(|r: &mut Vec<_>| r.swap(at(victim), at(victim + 1))),
            format!("protected/{p} offset {victim}: record missing"),
        ),
    ];
    for (name, change, expected) in cases {
        let copy = t.stack.dir.path().join(format!("{name}.log"));
        tampered(&log, &copy, change);
        let (ok, report) = t.trellis(&["audit", "verify", "--log", copy.to_str().unwrap()]);
        assert!(!ok, "{name}: verify must fail\n{report}");
        assert!(
            report.contains(&expected),
            "{name}: expected `{expected}` in\n{report}"
        );
    }
    let (ok, report) = t.trellis(&["audit", "verify", "--log", log.to_str().unwrap()]);
    assert!(ok, "the untouched copy verifies\n{report}");

    // The newest anchors removed: every chain still links (a shorter log is
    // a valid log), but not past the witness.
    let truncated = t.stack.dir.path().join("truncated.log");
    let mut seen = 0;
    tampered(&log, &truncated, |r: &mut Vec<_>| {
        r.retain(|record: &trellis_runtime::pipeline::OwnedRecord| {
            if record.topic != "audit.anchors" {
                return true;
            }
            seen += 1;
            seen < witnessed.size
        })
    });
    let (ok, report) = t.trellis(&["audit", "verify", "--log", truncated.to_str().unwrap()]);
    assert!(ok, "without the witness a truncation passes\n{report}");
    let (ok, report) = t.trellis(
        &[
            &["audit", "verify", "--log", truncated.to_str().unwrap()][..],
            &with_witness,
        ]
        .concat(),
    );
    assert!(
        !ok && report.contains("TRUNCATED: the witness saw"),
        "{report}"
    );

    // Proofs: inclusion of one record and consistency of two anchors,
    // checked from the proof and the anchors alone.
    let proof = t.stack.dir.path().join("proof.json");
    let partition = anchor.partition.to_string();
    let offset = victim.to_string();
    let (ok, text) = t.trellis(&[
        "audit",
        "prove",
        "--topic",
        "protected",
        "--partition",
        &partition,
        "--offset",
        &offset,
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = t.trellis(&[
        "audit",
        "verify-proof",
        "--proof",
        proof.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("valid"), "{text}");
    let (ok, text) = t.trellis(&[
        "audit",
        "prove",
        "--topic",
        "protected",
        "--partition",
        &partition,
        "--from",
        "0",
        "--to",
        "1",
        "--out",
        proof.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = t.trellis(&["audit", "verify-proof", "--proof", proof.to_str().unwrap()]);
    assert!(ok && text.contains("extends"), "{text}");

    // The erasure verifier: passes after the real erasure, signs its report;
    // the signature holds with the public key alone and breaks with one
    // changed byte; a restored vault backup and a changed audited record
    // each make it fail, naming the check.
    let evidence = t.stack.dir.path().join("evidence");
    let progress_state = t.stack.state_dir("progress");
    let (ok, report) = verify_erasure(
        &t,
        &t.vault_dir(),
        &evidence,
        &["--progress-state", progress_state.to_str().unwrap()],
    );
    assert!(ok, "{report}");
    for check in [
        "request.completed",
        "vault.no_old_material",
        "protected.nothing_decrypts",
        "progress.no_row_in_force",
        "progress.state_empty",
        "warehouse.no_rows",
        "audit.chain_verifies",
    ] {
        assert!(says(&report, check, "pass"), "{check}:\n{report}");
    }
    assert!(
        says(&report, "restricted.residual_plaintext", "noted"),
        "{report}"
    );
    assert!(
        says(&report, "aggregates.still_count", "pass")
            || says(&report, "aggregates.still_count", "noted"),
        "{report}"
    );
    let (ok, public_key) = t.trellis(&["erasure", "public-key"]);
    assert!(ok);
    let report_file = evidence.join("report.json");
    // The report the verifier wrote names the subject only by hash: the
    // hash is there (positive control), the identifiers are not, in any
    // string of the document or in what the verifier printed.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let mut strings = Vec::new();
    json_strings(&written, &mut strings);
    let user_hash = hex::encode(Sha256::digest(format!("user_id:{USER}").as_bytes()));
    assert!(
        strings.iter().any(|s| s == &user_hash),
        "the report names the user id by its hash"
    );
    for text in strings.iter().chain([&report]) {
        assert!(
            !text.contains(ACCOUNT) && !text.contains("moodle.northwind-uni"),
            "{text}"
        );
        assert!(
            !text
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|token| token == USER),
            "the report quotes the user id: {text}"
        );
    }
    let (ok, text) = t.trellis(&[
        "erasure",
        "verify-report",
        "--report",
        report_file.to_str().unwrap(),
        "--public-key",
        public_key.trim(),
    ]);
    assert!(ok, "{text}");
    let mut bytes = std::fs::read(&report_file).unwrap();
    let at = bytes.iter().position(|b| *b == b'p').unwrap();
    bytes[at] = b'q';
    std::fs::write(&report_file, &bytes).unwrap();
    let (ok, text) = t.trellis(&[
        "erasure",
        "verify-report",
        "--report",
        report_file.to_str().unwrap(),
        "--public-key",
        public_key.trim(),
    ]);
    assert!(!ok && text.contains("was changed"), "{text}");
    let (ok, report) = verify_erasure(&t, &vault_backup, &evidence, &[]);
    assert!(
        !ok && says(&report, "vault.no_old_material", "fail"),
        "{report}"
    );
    let changed = t.stack.dir.path().join("changed.log");
    let (ok, report) = verify_erasure(
        &t,
        &t.vault_dir(),
        &evidence,
        &["--audit-log", changed.to_str().unwrap()],
    );
    assert!(
        !ok && says(&report, "audit.chain_verifies", "fail"),
        "{report}"
    );

    // State is a function of the log: the saga's and the audit's stores
    // rebuilt by replay reach the same digests (the same anchors, cut at
    // the same places, with the same roots).
    for name in ["gdpr", "audit"] {
        let before = t.digest(name);
        let mut rebuilt = t.spawn(name, &["--rebuild"]);
        let inputs: &[&str] = if name == "gdpr" {
            &[
                "gdpr.subject_request.received.v1",
                "gdpr.participant_acks",
                "audit.anchors",
                "gdpr.ticks",
            ]
        } else {
            &[
                "protected",
                "completions",
                "gdpr.subject_request.acknowledged.v1",
                "audit.events",
            ]
        };
        rebuilt.wait_caught_up(&t.ends(inputs), long).await;
        let emitted = rebuilt.metric("trellis_records_out_total").await;
        assert!(rebuilt.terminate().success());
        assert_eq!(emitted, 0.0, "{name}: a rebuild re-emits nothing");
        assert_eq!(t.digest(name), before, "{name}: rebuilt to the same digest");
    }

    // Two faults written into the logs (last: they change what the
    // rebuilds above read). A record of the erased learner re-sealed under
    // a key that survives, then a progress row of theirs re-produced: the
    // verifier fails on each, naming the check.
    let theirs = protected
        .iter()
        .map(|(_, e)| e)
        .find(|e| erased.contains(&e.learner))
        .unwrap()
        .clone();
    let someone_else = protected
        .iter()
        .map(|(_, e)| e)
        .find(|e| e.tenant_id == TENANT && !erased.contains(&e.learner))
        .unwrap()
        .clone();
    let resealed = {
        let vault = t.open_vault();
        let keys = vault
            .keys_by_id(TENANT, &someone_else.subject_key_id)
            .unwrap()
            .expect("a surviving key");
        let mut event = theirs.clone();
        event.subject_key_id = keys.key_id().to_string();
        event.payload = keys.seal(TENANT, "payload", &event.event_id, b"{\"restored\": true}");
        event.actor_name = None;
        event.actor_email = None;
        event
    };
    let encoder = t.stack.encoder("protected").await;
    t.stack
        .produce(&[Produced {
            topic: "protected".into(),
            partition: None,
            key: format!("{TENANT}|{}", resealed.learner).into_bytes(),
            value: Some(encoder.encode(&resealed).unwrap()),
            id: format!("{TENANT}/resealed/{}", resealed.event_id),
            tenant: Some(TENANT.into()),
        }])
        .await;
    let (ok, report) = verify_erasure(&t, &t.vault_dir(), &evidence, &[]);
    assert!(
        !ok && says(&report, "protected.nothing_decrypts", "fail")
            && says(&report, "progress.no_row_in_force", "pass"),
        "{report}"
    );
    let row = trellis_records::LearnerProgress {
        tenant_id: TENANT.into(),
        learner: theirs.learner.clone(),
        activity_id: "https://lms.example/mod/page/view.php?id=102".into(),
        course_id: None,
        attempts: 1,
        best_score_scaled: None,
        last_score_scaled: None,
        success: None,
        completion: "completed".into(),
        first_activity_at: theirs.occurred_at,
        last_activity_at: theirs.occurred_at,
        evidence: Vec::new(),
    };
    let encoder = t.stack.encoder("progress").await;
    t.stack
        .produce(&[Produced {
            topic: "progress".into(),
            partition: None,
            key: format!("{TENANT}|{}|{}", row.learner, row.activity_id).into_bytes(),
            value: Some(encoder.encode(&row).unwrap()),
            id: "restored-row".into(),
            tenant: Some(TENANT.into()),
        }])
        .await;
    let (ok, report) = verify_erasure(&t, &t.vault_dir(), &evidence, &[]);
    assert!(
        !ok && says(&report, "progress.no_row_in_force", "fail"),
        "{report}"
    );
}
