//! `trellis bench audit` and `trellis bench erasure`: the figures issue #5
//! asks for, each with one command.
//!
//! - [`audit`] needs no broker: it times the Merkle work itself — canonical
//!   bytes, leaf hash and frontier per record on one core, then a full
//!   `verify` (anchors every 1000 records, each partition's tree recomputed
//!   and every root and chain link checked) over a generated log of any
//!   size, partitions checked in parallel. Reading the log from the broker
//!   is a separate, broker-bound cost (`trellis audit verify` prints its
//!   own time).
//! - [`erasure`] runs against a stack with every processor up
//!   (`ops/stack-up`): live demo traffic, then erasure requests at a steady
//!   rate, each timed from filing to its answer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use trellis_audit::merkle::{Frontier, leaf_hash};
use trellis_audit::signing::Signer;
use trellis_audit::verify::{PartitionCheck, canonical};
use trellis_records::{Anchor, SubjectRequest};
use trellis_runtime::pipeline::OwnedRecord;
use trellis_runtime::secret::Secret;

use trellis_kit::demo::{self, DemoSpec};
use trellis_kit::gdpr::Requests;

/// A record shaped like a `protected` one: `value_bytes` of value, a
/// tenant|learner key, id and tenant headers. [`at`] moves it to another
/// offset in place, so generating the log costs no allocation and the
/// timings are the Merkle work's.
fn template(partition: i32, value_bytes: usize) -> OwnedRecord {
    let value = (0..value_bytes)
        .map(|i| (i as u8).wrapping_mul(31))
        .collect();
    let mut record = OwnedRecord {
        topic: "protected".into(),
        partition,
        offset: 0,
        timestamp_ms: None,
        key: Some(b"northwind-uni|p_000000000000000000000000".to_vec()),
        value: Some(value),
        headers: vec![
            ("trellis.id".into(), vec![b'0'; 48]),
            ("tenant".into(), b"northwind-uni".to_vec()),
        ],
    };
    at(&mut record, 0);
    record
}

fn at(record: &mut OwnedRecord, offset: i64) {
    record.offset = offset;
    record.timestamp_ms = Some(1_700_000_000_000 + offset);
    if let Some(value) = record.value.as_mut() {
        value[..8].copy_from_slice(&offset.to_be_bytes());
    }
    if let Some(key) = record.key.as_mut() {
        let n = key.len();
        key[n - 8..].copy_from_slice(&(offset % 5000).to_be_bytes());
    }
    record.headers[0].1[..8].copy_from_slice(&offset.to_be_bytes());
}

/// What [`audit`] measured.
pub struct AuditFigures {
    /// Leaves (canonical bytes + SHA-256 + frontier) per second on one core.
    pub leaves_per_sec_core: f64,
    /// Records in the verified log.
    pub records: u64,
    /// Time to verify them all.
    pub verify: Duration,
    /// Threads used for verify.
    pub threads: usize,
    /// Anchors in the anchor log (all partitions).
    pub anchors: u64,
    /// Time to check the anchor log: every anchor's checkpoint, signature
    /// and root, and a witness's checkpoint of the whole log.
    pub log_check: Duration,
    /// Checkpoints appended and signed per second (the processor's cost
    /// per anchor beyond the anchor's own signature).
    pub checkpoints_per_sec: f64,
    /// Witness decisions per second: fetch-free `observe` of a checkpoint
    /// 1 anchor ahead, consistency proof made and checked, cosigned.
    pub witness_checks_per_sec: f64,
}

/// Times leaf hashing on one core and a full verify of `records` records
/// spread over `partitions` partitions.
pub fn audit(records: u64, partitions: i32, value_bytes: usize) -> AuditFigures {
    let signer = Signer::ed25519("bench", &Secret::from_bytes(vec![1; 32])).expect("valid name");
    let keys = signer.keys();
    let per_partition = records / partitions as u64;

    // One core, one partition: the processor's per-record work.
    let sample = per_partition.min(2_000_000);
    let mut buf = Vec::with_capacity(value_bytes + 256);
    let mut frontier = Frontier::default();
    let mut record = template(0, value_bytes);
    let started = Instant::now();
    for offset in 0..sample as i64 {
        at(&mut record, offset);
        canonical(&record, &mut buf);
        frontier.push(leaf_hash(&buf));
    }
    let leaves_per_sec_core = sample as f64 / started.elapsed().as_secs_f64();

    // The anchors the processor would have cut (every 1000 records), made
    // untimed; then verify, one thread per partition up to the cores.
    let anchors: Vec<Vec<Anchor>> = (0..partitions)
        .map(|p| anchors_for(p, per_partition, value_bytes, &signer))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(partitions as usize);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..threads {
            let (anchors, keys) = (&anchors, &keys);
            scope.spawn(move || {
                for p in (0..partitions).filter(|p| *p as usize % threads == worker) {
                    let mut check =
                        PartitionCheck::new("protected", p, anchors[p as usize].clone(), keys);
                    let mut record = template(p, value_bytes);
                    for offset in 0..per_partition as i64 {
                        at(&mut record, offset);
                        check.feed(&record);
                    }
                    let report = check.finish();
                    assert!(report.finding.is_none(), "{:?}", report.finding);
                }
            });
        }
    });
    let verify = started.elapsed();

    // The anchor log over every partition's anchors, interleaved as the
    // processor writes them: signing checkpoints, then checking them all.
    let mut in_log: Vec<Anchor> = Vec::new();
    let longest = anchors.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        in_log.extend(anchors.iter().filter_map(|a| a.get(i).cloned()));
    }
    let note_key = signer.note_key().cloned();
    let mut log =
        trellis_audit::checkpoint::AnchorLog::new("bench.localhost/audit", note_key, None);
    let started = Instant::now();
    for anchor in &mut in_log {
        anchor.checkpoint = log.append(anchor).expect("signs");
    }
    log.commit().expect("commits");
    let checkpoints_per_sec = in_log.len() as f64 / started.elapsed().as_secs_f64();

    // A witness following the log anchor by anchor.
    let witness_secret = Secret::from_bytes(vec![2; 32]);
    let cosigner =
        trellis_audit::signing::Cosigner::new("bench.localhost/witness", &witness_secret)
            .expect("valid name");
    let shared = log.shared();
    let steps = in_log.len().min(2_000);
    let mut last: Option<String> = None;
    let started = Instant::now();
    for anchor in &in_log[..steps] {
        match trellis_audit::witness::observe(
            last.as_deref(),
            anchor.checkpoint.as_bytes(),
            &keys,
            &cosigner,
            |old, new| shared.consistency(old, new),
        ) {
            Ok(trellis_audit::witness::Outcome::Cosigned { note, .. }) => last = Some(note),
            other => panic!("the witness refused an honest log: {other:?}"),
        }
    }
    let witness_checks_per_sec = steps as f64 / started.elapsed().as_secs_f64();
    let cosigned = trellis_audit::witness::observe(
        None,
        shared.note().expect("signed").as_bytes(),
        &keys,
        &cosigner,
        |_, _| Ok(Vec::new()),
    );
    let Ok(trellis_audit::witness::Outcome::Cosigned { note, .. }) = cosigned else {
        panic!("cosigning the latest checkpoint failed");
    };
    let witness_key =
        trellis_audit::signing::CosignatureVerifier::new(&cosigner.vkey()).expect("valid key");
    let started = Instant::now();
    let report =
        trellis_audit::checkpoint::check_log(&in_log, &keys, Some((note.as_bytes(), &witness_key)));
    let log_check = started.elapsed();
    assert!(report.problem.is_none(), "{:?}", report.problem);
    AuditFigures {
        leaves_per_sec_core,
        records: per_partition * partitions as u64,
        verify,
        threads,
        anchors: in_log.len() as u64,
        log_check,
        checkpoints_per_sec,
        witness_checks_per_sec,
    }
}

fn anchors_for(partition: i32, records: u64, value_bytes: usize, signer: &Signer) -> Vec<Anchor> {
    let mut anchors = Vec::new();
    let mut frontier = Frontier::default();
    let mut buf = Vec::new();
    let mut previous = trellis_audit::canonical::GENESIS.to_string();
    let mut first = 0;
    let mut record = template(partition, value_bytes);
    for offset in 0..records as i64 {
        at(&mut record, offset);
        canonical(&record, &mut buf);
        frontier.push(leaf_hash(&buf));
        if frontier.size() % 1000 == 0 || offset as u64 == records - 1 {
            let mut anchor = Anchor {
                sequence: anchors.len() as i64,
                topic: "protected".into(),
                partition,
                first_offset: first,
                last_offset: offset,
                tree_size: frontier.size() as i64,
                root: hex::encode(frontier.root()),
                previous_hash: previous.clone(),
                request_ids: Vec::new(),
                anchored_at: offset,
                key_id: String::new(),
                signature: String::new(),
                checkpoint: String::new(),
            };
            signer.sign(&mut anchor);
            previous = hex::encode(trellis_audit::canonical::anchor_hash(&anchor));
            first = offset + 1;
            anchors.push(anchor);
        }
    }
    anchors
}

/// What [`erasure`] measured: client-side latencies, request to answer.
pub struct ErasureFigures {
    /// One per answered request, sorted.
    pub latencies: Vec<Duration>,
    /// Answers by status/privacy outcome.
    pub outcomes: HashMap<String, usize>,
    /// Requests never answered within the timeout.
    pub unanswered: usize,
}

impl ErasureFigures {
    /// The `q` quantile (0..=1).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }
}

/// Live demo traffic at `traffic` events/s over `tenants` × `learners`,
/// then `requests` erasures of those learners' user ids at `rate` per
/// second, answers awaited as they come.
///
/// # Errors
/// Broker or registry failures.
#[allow(clippy::too_many_arguments)]
pub async fn erasure(
    producer: FutureProducer,
    requests_api: Requests,
    requests: usize,
    rate: u32,
    traffic: u32,
    tenants: usize,
    learners: usize,
    timeout: Duration,
) -> anyhow::Result<ErasureFigures> {
    let warmup = Duration::from_secs(10);
    let duration = warmup
        + Duration::from_secs_f64(requests as f64 / rate.max(1) as f64)
        + Duration::from_secs(5);
    let traffic_task = tokio::spawn(async move {
        demo::produce(
            &producer,
            DemoSpec {
                events: (traffic as f64 * duration.as_secs_f64()) as usize,
                rate: Some(traffic),
                tenants,
                learners,
                seed: 11,
                ..DemoSpec::default()
            },
        )
        .await
    });
    tokio::time::sleep(warmup).await;

    let api = std::sync::Arc::new(requests_api);
    let reader = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            let deadline = Instant::now() + timeout;
            while answers.len() < requests && Instant::now() < deadline {
                if let Ok(answer) = api.next_answer(Duration::from_secs(1)).await {
                    answers.push((answer, Instant::now()));
                }
            }
            answers
        })
    };
    let names = demo::tenant_names(tenants);
    let mut filed = HashMap::new();
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut next = Instant::now();
    for n in 0..requests {
        let (t, i) = (n % tenants, (n / tenants) % learners);
        let request = SubjectRequest {
            request_id: format!("bench-{}-{n}", std::process::id()),
            tenant_id: names[t].clone(),
            kind: "erasure".into(),
            subject_id_kind: "user_id".into(),
            subject_id: demo::user_id(t, i),
            requested_at: trellis_runtime::ticker::now_ms(),
            other_subject_ids: Vec::new(),
        };
        tokio::time::sleep_until(next.into()).await;
        next += gap;
        filed.insert(request.request_id.clone(), Instant::now());
        api.file(&request).await?;
    }
    let answers = reader.await?;
    traffic_task.abort();
    let mut figures = ErasureFigures {
        latencies: Vec::new(),
        outcomes: HashMap::new(),
        unanswered: 0,
    };
    for (answer, at) in &answers {
        let Some(sent) = filed.remove(&answer.request_id) else {
            continue;
        };
        figures.latencies.push(at.duration_since(sent));
        let privacy = answer
            .participants
            .first()
            .map_or("-", |p| p.outcome.as_str());
        *figures
            .outcomes
            .entry(format!("{} (privacy {privacy})", answer.status))
            .or_default() += 1;
    }
    figures.unanswered = filed.len();
    figures.latencies.sort();
    Ok(figures)
}

/// What [`xapi`] measured, ns per statement.
pub struct XapiFigures {
    /// Statements timed (valid demo statements, each validated `rounds` times).
    pub statements: usize,
    /// `serde_json` parse alone.
    pub parse_ns: f64,
    /// Parse + every xAPI 1.0.3 rule (no mapping).
    pub rules_ns: f64,
    /// The collector's whole `validate` (parse, rules, mapping to the envelope).
    pub validate_ns: f64,
}

/// Times xAPI validation over the demo data set's statements on one core.
///
/// # Panics
/// If the demo generator yields no valid statement (a bug).
pub fn xapi(statements: usize, rounds: usize) -> XapiFigures {
    use trellis_collector::validate::{Envelope, IngestFormat, Limits, validate};
    let mut generator = demo::Generator::new(DemoSpec {
        malformed: 0.0,
        duplicates: 0.0,
        ..DemoSpec::default()
    });
    let now = demo::now_ms();
    let mut corpus = Vec::with_capacity(statements);
    while corpus.len() < statements {
        let record = generator.next_record(now);
        if record.topic == trellis_records::INGEST_XAPI_TOPIC {
            corpus.push((record.value, record.tenant_header, record.timestamp));
        }
    }
    let limits = Limits {
        max_event_bytes: 65_536,
        max_clock_skew_ms: 300_000,
        max_event_age_ms: 365 * 86_400_000,
    };
    let per_statement =
        |elapsed: Duration| elapsed.as_nanos() as f64 / (statements * rounds) as f64;
    type Validation<'a> = &'a dyn Fn(&[u8], Option<&str>, i64);
    let time = |f: Validation<'_>| {
        let started = Instant::now();
        for _ in 0..rounds {
            for (value, tenant, at) in &corpus {
                f(value, tenant.as_deref(), *at);
            }
        }
        per_statement(started.elapsed())
    };
    let parse_ns = time(&|value, _, _| {
        let text = std::str::from_utf8(value).expect("demo JSON is UTF-8");
        std::hint::black_box(trellis_collector::json::parse(text).ok());
    });
    let rules_ns = time(&|value, _, _| {
        let text = std::str::from_utf8(value).expect("demo JSON is UTF-8");
        let parsed = trellis_collector::json::parse(text).expect("demo JSON");
        let object = parsed.as_object().expect("a statement object");
        std::hint::black_box(trellis_collector::xapi::check(object).is_ok());
    });
    let validate_ns = time(&|value, tenant, at| {
        let verdict = validate(
            IngestFormat::Xapi,
            Some(value),
            Envelope {
                tenant_header: tenant,
                request_id: None,
                received_at: at,
            },
            &limits,
        );
        assert!(verdict.is_ok(), "the demo's statements are valid");
        std::hint::black_box(verdict.ok());
    });
    XapiFigures {
        statements,
        parse_ns,
        rules_ns,
        validate_ns,
    }
}
