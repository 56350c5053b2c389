//! `trellis erasure …`: verify a completed erasure by replaying every
//! retained log, and hand the result to an auditor as a signed report.
//!
//! `verify` replays the topics from offset 0 holding every secret that still
//! exists (the vault's master and index keys, the audit key), opens the vault
//! and, when given, the progress projector's state store and the warehouse,
//! and checks, one line each:
//!
//! - the request was answered `completed`;
//! - the vault holds none of the subject's old key material: an identifier
//!   that came back since has new, random material (another pseudonym, a
//!   key id the saga did not shred); an old entry restored from a backup,
//!   or one no current key opens, fails;
//! - no sealed field of the subject's `protected` records opens, with the
//!   key each record names (the AAD binds the key id, so no other key can);
//! - no `progress` row of the old pseudonyms is in force (latest per key),
//!   the progress state holds none and their transcripts are empty;
//! - the warehouse holds no row of theirs;
//! - aggregates still count their past activity (anonymously);
//! - every audited partition matches its signed anchors;
//! - and, for the record, the subject's plaintext still in `restricted` raw
//!   topics, with when their retention removes it.
//!
//! The report (JSON, plus a human summary) names the request, every check,
//! the positions read to and the newest anchors, and is signed with Ed25519
//! (`TRELLIS_EVIDENCE_SIGNING_KEY`); `verify-report` checks it with the
//! public key alone. The subject's identifiers appear in it only as SHA-256
//! hashes: an auditor who holds them can match, the report leaks nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trellis_audit::verify::read_partitions;
use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, CollectedEvent, ERASE_COMMANDS_TOPIC, EraseCommand,
    LearnerProgress, PROGRESS_TOPIC, ProtectedEvent, SUBJECT_ACKS_TOPIC, SUBJECT_REQUESTS_TOPIC,
    SubjectRequest, SubjectRequestAck,
};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::pipeline::OwnedRecord;
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::secret::{SecretFormat, SecretSpec, load_secrets};
use trellis_runtime::topology::{Classification, Topology};

/// The Ed25519 key reports are signed with: 32 bytes (the seed) as hex.
pub const EVIDENCE_KEY: SecretSpec = SecretSpec {
    env: "TRELLIS_EVIDENCE_SIGNING_KEY",
    format: SecretFormat::Hex32,
    purpose: "the Ed25519 key that signs erasure reports",
};

/// How long a partition that never reaches its high watermark must stay
/// quiet to count as read whole (see `read_partitions`).
const IDLE: Duration = Duration::from_millis(1500);

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// Stable name, e.g. `vault.no_entry`.
    pub name: String,
    /// `pass`, `fail`, or `noted` (information that is not a verdict).
    pub verdict: String,
    /// What was found, in a sentence.
    pub detail: String,
    /// Counts behind the verdict.
    pub counts: BTreeMap<String, u64>,
}

impl Check {
    fn new(name: &str, passed: bool, detail: String) -> Self {
        Self {
            name: name.into(),
            verdict: if passed { "pass" } else { "fail" }.into(),
            detail,
            counts: BTreeMap::new(),
        }
    }

    fn noted(name: &str, detail: String) -> Self {
        Self {
            verdict: "noted".into(),
            ..Self::new(name, true, detail)
        }
    }

    fn count(mut self, what: &str, n: u64) -> Self {
        self.counts.insert(what.into(), n);
        self
    }

    /// Whether the check failed.
    pub fn failed(&self) -> bool {
        self.verdict == "fail"
    }
}

/// The evidence an engineer hands to an auditor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Format version.
    pub version: u32,
    /// The erasure request verified.
    pub request_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// SHA-256 of `kind:id` of each identifier of the subject.
    pub subject_identifier_sha256: Vec<String>,
    /// When the request was filed and answered (ms since the epoch).
    pub requested_at: Option<i64>,
    /// When it was answered.
    pub acknowledged_at: Option<i64>,
    /// When this verification ran (RFC 3339).
    pub verified_at: String,
    /// What ran it.
    pub tool: String,
    /// `passed` when no check failed.
    pub verdict: String,
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// How far each partition was read: `topic/partition` → next offset.
    pub positions: BTreeMap<String, i64>,
    /// The newest anchor of each audited partition: `topic/partition` → hex hash.
    pub anchors: BTreeMap<String, String>,
}

/// What `verify` reads besides the broker.
pub struct Inputs<'a> {
    /// The broker.
    pub kafka: &'a KafkaConfig,
    /// The registry.
    pub registry_url: &'a str,
    /// The topology.
    pub topology: &'a Topology,
    /// The request to verify.
    pub request_id: &'a str,
    /// The subject's identifiers when the request record has expired.
    pub identifiers: Vec<(String, String)>,
    /// The privacy processor's vault (stopped, or a copy).
    pub vault_dir: &'a Path,
    /// The progress projector's state store (stopped, or a copy).
    pub progress_state: Option<&'a Path>,
    /// The warehouse (its owner's connection).
    pub warehouse: Option<trellis_warehouse::connection::ConnectionString>,
    /// The keys anchors are checked with.
    pub audit: &'a trellis_audit::signing::Keys,
    /// Check the audit chain against this exported log instead of the broker.
    pub audit_log: Option<&'a Path>,
    /// Show progress bars.
    pub progress_bars: bool,
}

/// Reads a whole topic (to the high watermarks it had when reading began,
/// see [`read_partitions`]), recording how far each partition was read.
fn read(
    kafka: &KafkaConfig,
    topic: &str,
    positions: &mut BTreeMap<String, i64>,
    mut each: impl FnMut(OwnedRecord),
) -> anyhow::Result<()> {
    read_partitions(
        kafka,
        topic,
        IDLE,
        |_| {},
        |record| {
            let at = positions
                .entry(format!("{topic}/{}", record.partition))
                .or_insert(0);
            *at = (*at).max(record.offset + 1);
            each(record);
        },
    )
    .with_context(|| format!("reading {topic}"))
}

fn identifier_hash(kind: &str, id: &str) -> String {
    hex::encode(Sha256::digest(format!("{kind}:{id}").as_bytes()))
}

/// Runs every check; the report is not yet signed.
///
/// # Errors
/// When something cannot be read at all (the broker, the vault); a check
/// that finds something wrong is a failed check, not an error.
pub async fn verify(inputs: Inputs<'_>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let kafka = inputs.kafka;
    let decoder = AvroDecoder::new(registry_settings(inputs.registry_url)?);
    let mut positions = BTreeMap::new();
    let mut checks = Vec::new();

    // The request, its answer and the pseudonyms the saga erased.
    let mut request: Option<SubjectRequest> = None;
    let mut values = Vec::new();
    read(kafka, SUBJECT_REQUESTS_TOPIC, &mut positions, |m| {
        values.extend(m.value);
    })?;
    for v in &values {
        let r: SubjectRequest = decoder.decode(v).await?;
        if r.request_id == inputs.request_id {
            request = Some(r);
        }
    }
    let mut answer: Option<SubjectRequestAck> = None;
    let mut values = Vec::new();
    read(kafka, SUBJECT_ACKS_TOPIC, &mut positions, |m| {
        values.extend(m.value);
    })?;
    for v in &values {
        let a: SubjectRequestAck = decoder.decode(v).await?;
        if a.request_id == inputs.request_id {
            answer = Some(a);
        }
    }
    let mut old: BTreeSet<String> = BTreeSet::new();
    let mut values = Vec::new();
    read(kafka, ERASE_COMMANDS_TOPIC, &mut positions, |m| {
        values.extend(m.value);
    })?;
    for v in &values {
        let c: EraseCommand = decoder.decode(v).await?;
        if c.request_id == inputs.request_id
            && let Some(learner) = c.learner
        {
            old.insert(learner);
        }
    }
    let tenant = match (&request, &answer) {
        (Some(r), _) => r.tenant_id.clone(),
        (None, Some(a)) => a.tenant_id.clone(),
        (None, None) => bail!(
            "request `{}` is on neither {SUBJECT_REQUESTS_TOPIC} nor {SUBJECT_ACKS_TOPIC}",
            inputs.request_id
        ),
    };
    // Every identifier the request named, and any the engineer adds.
    let mut identifiers = inputs.identifiers.clone();
    for (kind, id) in request.iter().flat_map(|r| r.subject_ids()) {
        let id = (kind.to_string(), id.to_string());
        if !identifiers.contains(&id) {
            identifiers.push(id);
        }
    }
    if identifiers.is_empty() {
        bail!(
            "the request record has expired from {SUBJECT_REQUESTS_TOPIC}: name the subject with --identifier kind:id"
        );
    }
    match &answer {
        Some(a) if a.kind == "erasure" && a.status == "completed" => {
            checks.push(Check::new(
                "request.completed",
                true,
                format!(
                    "erasure answered completed by {}",
                    a.participants
                        .iter()
                        .map(|p| format!("{} ({})", p.participant, p.outcome))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Some(a) => checks.push(Check::new(
            "request.completed",
            false,
            format!("the {} request was answered `{}`", a.kind, a.status),
        )),
        None => checks.push(Check::new(
            "request.completed",
            false,
            "the request has no answer yet".into(),
        )),
    }

    // The vault: nothing left of the subject.
    let secrets = load_secrets(trellis_privacy::SECRETS)?;
    let vault = trellis_privacy::vault::Vault::open(
        inputs.vault_dir,
        secrets.get(trellis_privacy::MASTER_KEY).expose(),
        secrets.get(trellis_privacy::INDEX_KEY).expose(),
    )
    .with_context(|| {
        format!(
            "opening the vault at {} (stop the privacy processor, or give a copy)",
            inputs.vault_dir.display()
        )
    })?;
    // After an erasure an identifier may come back (the learner's new
    // events) with new material; what must not be there is the old one.
    let shredded: BTreeSet<String> = answer
        .iter()
        .flat_map(|a| &a.participants)
        .flat_map(|p| p.shredded_key_ids.iter().cloned())
        .collect();
    let mut problems = Vec::new();
    let mut renewed = 0u64;
    for (kind, id) in &identifiers {
        if vault.raw_entry(&tenant, kind, id)?.is_none() {
            continue;
        }
        match vault.existing(&tenant, kind, id) {
            Ok(Some(keys)) if old.contains(keys.pseudonym()) || shredded.contains(keys.key_id()) => {
                problems.push(format!(
                    "the vault holds the subject's old key material for their {kind} identifier (restored from a backup?)"
                ));
            }
            Ok(_) => renewed += 1,
            Err(_) => problems.push(format!(
                "the vault holds an entry for the subject's {kind} identifier that no current key opens (a restored copy?)"
            )),
        }
    }
    checks.push(
        Check::new(
            "vault.no_old_material",
            problems.is_empty(),
            if problems.is_empty() {
                match renewed {
                    0 => "the vault holds none of the subject's key material: their identifiers would get new, random material and a new pseudonym".to_string(),
                    n => format!(
                        "the vault holds none of the subject's old key material; {n} identifier(s) came back since, under new random material and a new pseudonym"
                    ),
                }
            } else {
                problems.join("; ")
            },
        )
        .count("identifiers", identifiers.len() as u64)
        .count("renewed", renewed)
        .count("problems", problems.len() as u64),
    );

    // protected: no field of theirs opens.
    let mut theirs = Vec::new();
    let keys: Vec<Vec<u8>> = old
        .iter()
        .map(|p| format!("{tenant}|{p}").into_bytes())
        .collect();
    let bar = progress(inputs.progress_bars, "protected");
    read(kafka, "protected", &mut positions, |m| {
        bar.inc(1);
        if m.key
            .as_deref()
            .is_some_and(|k| keys.iter().any(|x| x == k))
        {
            theirs.extend(m.value);
        }
    })?;
    bar.finish_and_clear();
    let mut opened = 0u64;
    let mut occurred = Vec::new();
    for v in &theirs {
        let event: ProtectedEvent = decoder.decode(v).await?;
        occurred.push(event.occurred_at);
        if let Some(keys) = vault.keys_by_id(&event.tenant_id, &event.subject_key_id)? {
            let id = &event.event_id;
            let fields = [
                ("payload", Some(&event.payload)),
                ("actor.name", event.actor_name.as_ref()),
                ("actor.email", event.actor_email.as_ref()),
            ];
            if fields.iter().any(|(field, sealed)| {
                sealed.is_some_and(|s| keys.open(&event.tenant_id, field, id, s).is_ok())
            }) {
                opened += 1;
            }
        }
    }
    checks.push(
        Check::new(
            "protected.nothing_decrypts",
            opened == 0,
            if opened == 0 {
                format!(
                    "none of the subject's {} protected records opens with any key the vault holds",
                    theirs.len()
                )
            } else {
                format!("{opened} protected record(s) of the subject decrypt with a surviving key")
            },
        )
        .count("records", theirs.len() as u64)
        .count("decrypted", opened),
    );
    drop(vault);

    // progress: no row in force; the state and transcripts empty.
    let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    read(kafka, PROGRESS_TOPIC, &mut positions, |m| {
        latest.insert(m.key.unwrap_or_default(), m.value);
    })?;
    let prefixes: Vec<String> = old.iter().map(|p| format!("{tenant}|{p}|")).collect();
    let mut in_force = 0u64;
    for (key, value) in &latest {
        let key = String::from_utf8_lossy(key);
        if prefixes.iter().any(|p| key.starts_with(p.as_str())) && value.is_some() {
            in_force += 1;
        } else if let Some(v) = value {
            // A row keyed for someone else must not carry their pseudonym.
            let row: LearnerProgress = decoder.decode(v).await?;
            if old.contains(&row.learner) {
                in_force += 1;
            }
        }
    }
    checks.push(
        Check::new(
            "progress.no_row_in_force",
            in_force == 0,
            if in_force == 0 {
                "no progress row of the old pseudonyms is in force (every key tombstoned)".into()
            } else {
                format!("{in_force} progress row(s) of the old pseudonyms are in force")
            },
        )
        .count("rows_in_force", in_force),
    );
    if let Some(dir) = inputs.progress_state {
        let store = trellis_runtime::state::StateStore::open(dir).with_context(|| {
            format!(
                "opening the progress state at {} (stop the projector, or give a copy)",
                dir.display()
            )
        })?;
        let mut rows = 0u64;
        for learner in &old {
            rows += trellis_progress::transcript::transcript(&store, &tenant, learner)?
                .entries
                .len() as u64;
            rows += trellis_progress::learner_rows(&store, &tenant, learner)?;
        }
        checks.push(
            Check::new(
                "progress.state_empty",
                rows == 0,
                if rows == 0 {
                    "the progress state holds no row and no transcript entry of the old pseudonyms"
                        .into()
                } else {
                    format!(
                        "the progress state holds {rows} row(s) or transcript entries of theirs"
                    )
                },
            )
            .count("rows", rows),
        );
    }

    // The warehouse.
    if let Some(url) = &inputs.warehouse {
        let client = url
            .connect()
            .await
            .with_context(|| format!("connecting to the warehouse {url}"))?;
        let learners: Vec<&str> = old.iter().map(String::as_str).collect();
        let rows: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM trellis.progress WHERE tenant_id = $1 AND learner = ANY($2))
                      + (SELECT count(*) FROM trellis.completions WHERE tenant_id = $1 AND learner = ANY($2))",
                &[&tenant, &learners],
            )
            .await
            .map_err(|e| anyhow::anyhow!(trellis_warehouse::connection::describe(&e)))?
            .get(0);
        checks.push(
            Check::new(
                "warehouse.no_rows",
                rows == 0,
                if rows == 0 {
                    "the warehouse holds no progress or completion row of the old pseudonyms".into()
                } else {
                    format!("the warehouse holds {rows} row(s) of the old pseudonyms")
                },
            )
            .count("rows", u64::try_from(rows).unwrap_or_default()),
        );
    }

    // Aggregates still count their past activity.
    let mut cells = Vec::new();
    read(kafka, AGGREGATES_TOPIC, &mut positions, |m| {
        cells.extend(m.value);
    })?;
    let mut covered = 0u64;
    let mut windows: Vec<(i64, i64)> = Vec::new();
    for v in &cells {
        let a: Aggregate = decoder.decode(v).await?;
        if a.tenant_id == tenant && a.events > 0 {
            let length = if a.window == "day" {
                86_400_000
            } else {
                3_600_000
            };
            windows.push((a.window_start, a.window_start + length));
        }
    }
    for at in &occurred {
        if windows.iter().any(|(s, e)| (*s..*e).contains(at)) {
            covered += 1;
        }
    }
    checks.push(
        if occurred.is_empty() {
            Check::noted(
                "aggregates.still_count",
                "the subject had no protected events to count".into(),
            )
        } else if covered == 0 {
            // Cells are published when their window closes: events in windows
            // still open are counted then (the aggregator holds no pseudonym).
            Check::noted(
                "aggregates.still_count",
                format!(
                    "none of the subject's {} past events falls in a published cell yet: their windows are still open and count them when they close",
                    occurred.len()
                ),
            )
        } else {
            Check::new(
                "aggregates.still_count",
                true,
                format!(
                    "{covered} of the subject's {} past events fall in published aggregate cells, which stay (anonymous)",
                    occurred.len()
                ),
            )
        }
        .count("events", occurred.len() as u64)
        .count("in_published_cells", covered),
    );

    // The audit chain.
    let source = match inputs.audit_log {
        Some(path) => crate::audit::Source::File(path),
        None => crate::audit::Source::Broker(kafka),
    };
    let reports = crate::audit::check(source, inputs.topology, inputs.audit, false)?;
    let findings: Vec<String> = reports
        .iter()
        .filter_map(|r| r.finding.as_ref().map(|f| f.to_string()))
        .collect();
    checks.push(
        Check::new(
            "audit.chain_verifies",
            findings.is_empty(),
            if findings.is_empty() {
                "every audited partition matches its signed anchors".into()
            } else {
                findings.join("; ")
            },
        )
        .count("partitions", reports.len() as u64)
        .count("records", reports.iter().map(|r| r.records).sum()),
    );
    let anchors = crate::audit::newest_anchors(kafka, inputs.audit_log)?;

    // Residual plaintext in restricted raw topics, for the record.
    let mut residual: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    let collected_keys: Vec<Vec<u8>> = identifiers
        .iter()
        .map(|(k, i)| format!("{tenant}|{k}:{i}").into_bytes())
        .collect();
    let needles: Vec<String> = identifiers
        .iter()
        .map(|(_, i)| i.rsplit('|').next().unwrap_or(i).to_string())
        .collect();
    // Read as generously as possible: any record naming the subject counts.
    let limits = trellis_collector::validate::Limits {
        max_event_bytes: usize::MAX,
        max_clock_skew_ms: i64::MAX / 2,
        max_event_age_ms: i64::MAX / 2,
    };
    for (name, spec) in &inputs.topology.topics {
        if spec.classification != Classification::Restricted
            || !(name == "collected" || name.starts_with("ingest."))
        {
            continue;
        }
        let mut matching: Vec<OwnedRecord> = Vec::new();
        let mut raw = Vec::new();
        // Only records that can name the subject are parsed: `collected` is
        // keyed `tenant|kind:id`; a raw event names the identifier (an
        // account's name part) somewhere in its bytes.
        read(kafka, name, &mut positions, |m| {
            let candidate = if name == "collected" {
                m.key
                    .as_deref()
                    .is_some_and(|k| collected_keys.iter().any(|c| c == k))
            } else {
                m.value.as_deref().is_some_and(|v| {
                    let text = String::from_utf8_lossy(v);
                    needles.iter().any(|n| text.contains(n.as_str()))
                })
            };
            if candidate {
                raw.push(m);
            }
        })?;
        for record in raw {
            let actor = if name == "collected" {
                match record.value.as_deref() {
                    Some(v) => decoder
                        .decode::<CollectedEvent>(v)
                        .await
                        .ok()
                        .map(|e| (e.tenant_id, e.actor)),
                    None => None,
                }
            } else {
                raw_actor(&record, name, &limits)
            };
            if let Some((t, actor)) = actor
                && t == tenant
                && identifiers.contains(&(actor.id_kind.clone(), actor.id.clone()))
            {
                matching.push(record);
            }
        }
        for record in matching {
            let entry = residual
                .entry(format!("{name}/{}", record.partition))
                .or_insert((0, 0));
            entry.0 += 1;
            let expires = if spec.retention_ms < 0 {
                i64::MAX
            } else {
                record.timestamp_ms.unwrap_or_default() + spec.retention_ms
            };
            entry.1 = entry.1.max(expires);
        }
    }
    let total: u64 = residual.values().map(|(n, _)| n).sum();
    checks.push(
        Check::noted(
            "restricted.residual_plaintext",
            if residual.is_empty() {
                "no record of the subject is left in restricted raw topics".into()
            } else {
                format!(
                    "{total} record(s) of the subject remain in restricted raw topics until their retention removes them: {}",
                    residual
                        .iter()
                        .map(|(tp, (n, until))| {
                            if *until == i64::MAX {
                                format!("{tp}: {n}, kept forever (no retention)")
                            } else {
                                format!("{tp}: {n} until {}", rfc3339(*until))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            },
        )
        .count("records", total),
    );

    let failed = checks.iter().any(Check::failed);
    tracing::debug!(elapsed = ?started.elapsed(), "erasure verified");
    Ok(Report {
        version: 1,
        request_id: inputs.request_id.to_string(),
        tenant_id: tenant,
        subject_identifier_sha256: identifiers
            .iter()
            .map(|(k, i)| identifier_hash(k, i))
            .collect(),
        requested_at: answer.as_ref().map(|a| a.requested_at),
        acknowledged_at: answer.as_ref().map(|a| a.acknowledged_at),
        verified_at: rfc3339(trellis_runtime::ticker::now_ms()),
        tool: format!("trellis {}", env!("CARGO_PKG_VERSION")),
        verdict: if failed { "failed" } else { "passed" }.into(),
        checks,
        positions,
        anchors,
    })
}

/// The tenant and actor of a raw ingest record, as the collector reads it.
fn raw_actor(
    record: &OwnedRecord,
    topic: &str,
    limits: &trellis_collector::validate::Limits,
) -> Option<(String, trellis_records::Actor)> {
    use trellis_collector::validate::{Envelope, IngestFormat, validate};
    let format = if topic == "ingest.xapi" {
        IngestFormat::Xapi
    } else {
        IngestFormat::Events
    };
    let tenant = record
        .headers
        .iter()
        .find(|(k, _)| k == trellis_runtime::kafka::TENANT_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok());
    let envelope = Envelope {
        tenant_header: tenant,
        request_id: None,
        received_at: record.timestamp_ms.unwrap_or_default(),
    };
    validate(format, record.value.as_deref(), envelope, limits)
        .ok()
        .map(|e| (e.tenant_id, e.actor))
}

use crate::rfc3339;

fn progress(show: bool, what: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}: {human_pos} records {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar
}

/// The human summary of a report.
pub fn summary(report: &Report) -> String {
    let mut out = format!(
        "erasure {} (tenant {}): {}\n",
        report.request_id, report.tenant_id, report.verdict
    );
    for check in &report.checks {
        out.push_str(&format!(
            "  {:<32} {:<6} {}\n",
            check.name, check.verdict, check.detail
        ));
    }
    out.push_str(&format!(
        "  read {} partitions to their end; {} audited partitions anchored; verified at {}\n",
        report.positions.len(),
        report.anchors.len(),
        report.verified_at
    ));
    out
}

/// A signature over a report file's bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportSignature {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's public key, hex.
    pub public_key: String,
    /// The signature of the report file's exact bytes, base64.
    pub signature: String,
}

/// The signing key from `TRELLIS_EVIDENCE_SIGNING_KEY[_FILE]`.
///
/// # Errors
/// Missing or malformed, naming the variable.
pub fn signing_key() -> anyhow::Result<SigningKey> {
    let secrets = load_secrets(&[EVIDENCE_KEY])?;
    let seed: [u8; 32] = secrets
        .get(EVIDENCE_KEY.env)
        .expose()
        .try_into()
        .context("the evidence key is not 32 bytes")?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `report.json`, `report.json.sig` and `report.txt` into `dir`;
/// returns the report's path.
///
/// # Errors
/// I/O.
pub fn write_signed(report: &Report, key: &SigningKey, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(report)?;
    let signature = ReportSignature {
        algorithm: "ed25519".into(),
        public_key: hex::encode(key.verifying_key().as_bytes()),
        signature: base64::engine::general_purpose::STANDARD.encode(key.sign(&bytes).to_bytes()),
    };
    let path = dir.join("report.json");
    std::fs::write(&path, &bytes)?;
    std::fs::write(
        dir.join("report.json.sig"),
        serde_json::to_vec_pretty(&signature)?,
    )?;
    std::fs::write(dir.join("report.txt"), summary(report))?;
    Ok(path)
}

/// Checks a report file against its signature and the expected public key
/// (hex); returns the report.
///
/// # Errors
/// A bad signature, a different key, or a file that is not a report.
pub fn verify_signed(report: &Path, signature: &Path, public_key: &str) -> anyhow::Result<Report> {
    let bytes = std::fs::read(report).with_context(|| format!("reading {}", report.display()))?;
    let sig: ReportSignature = serde_json::from_slice(
        &std::fs::read(signature).with_context(|| format!("reading {}", signature.display()))?,
    )
    .context("the signature file is not a report signature")?;
    if sig.algorithm != "ed25519" {
        bail!("unknown signature algorithm `{}`", sig.algorithm);
    }
    if !sig.public_key.eq_ignore_ascii_case(public_key.trim()) {
        bail!(
            "the report was signed by key {}, not the expected {}",
            sig.public_key,
            public_key.trim()
        );
    }
    let key: [u8; 32] = hex::decode(public_key.trim())
        .context("the public key is not hex")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the public key is not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&key).context("not an Ed25519 public key")?;
    let signature: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(&sig.signature)
        .context("the signature is not base64")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the signature is not 64 bytes"))?;
    key.verify(&bytes, &Signature::from_bytes(&signature))
        .map_err(|_| anyhow::anyhow!("the signature does not match the report: it was changed"))?;
    serde_json::from_slice(&bytes).context("the signed file is not an erasure report")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            version: 1,
            request_id: "r-1".into(),
            tenant_id: "t".into(),
            subject_identifier_sha256: vec![identifier_hash("user_id", "1014")],
            requested_at: Some(1),
            acknowledged_at: Some(2),
            verified_at: rfc3339(0),
            tool: "trellis test".into(),
            verdict: "passed".into(),
            checks: vec![
                Check::new("vault.no_old_material", true, "ok".into()).count("problems", 0),
            ],
            positions: BTreeMap::from([("protected/0".into(), 10)]),
            anchors: BTreeMap::new(),
        }
    }

    #[test]
    fn a_signed_report_verifies_and_one_changed_byte_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = hex::encode(key.verifying_key().as_bytes());
        let path = write_signed(&report(), &key, dir.path()).unwrap();
        let sig = dir.path().join("report.json.sig");
        assert_eq!(verify_signed(&path, &sig, &public).unwrap(), report());

        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.iter().position(|b| *b == b'1').unwrap();
        bytes[at] = b'2';
        std::fs::write(&path, &bytes).unwrap();
        let e = verify_signed(&path, &sig, &public).unwrap_err();
        assert!(e.to_string().contains("was changed"), "{e}");

        let other = hex::encode(SigningKey::from_bytes(&[8; 32]).verifying_key().as_bytes());
        assert!(verify_signed(&path, &sig, &other).is_err());
    }

    #[test]
    fn the_report_names_identifiers_only_by_hash() {
        let text = serde_json::to_string(&report()).unwrap();
        assert!(!text.contains("1014"));
    }
}
