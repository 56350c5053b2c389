//! `trellis erasure …`: verify a completed erasure by replaying every
//! retained log, and hand the result to an auditor as a signed report.
//!
//! Each check is one function in `checks`, registered in [`CHECKS`]: a new
//! holder of a subject's data adds one.
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
use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trellis_audit::verify::read_partitions;
use trellis_records::{
    ERASE_COMMANDS_TOPIC, EraseCommand, SUBJECT_ACKS_TOPIC, SUBJECT_REQUESTS_TOPIC, SubjectRequest,
    SubjectRequestAck,
};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::pipeline::OwnedRecord;
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::secret::{SecretFormat, SecretSpec, load_secrets};
use trellis_runtime::topology::Topology;

mod checks;

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

/// What every check works from: the inputs, the subject the request named,
/// how far each partition was read, and what earlier checks found that
/// later ones use.
pub struct Verification<'a> {
    /// What the engineer gave.
    pub inputs: &'a Inputs<'a>,
    /// Decodes the topics' records (through the registry).
    pub decoder: AvroDecoder,
    /// How far each partition was read: `topic/partition` → next offset.
    pub positions: BTreeMap<String, i64>,
    /// The erasure's subject.
    pub subject: Subject,
    /// When each of the subject's `protected` events happened (found by
    /// the vault check, read by the aggregates check).
    pub occurred: Vec<i64>,
}

impl Verification<'_> {
    /// Reads a whole topic (see [`read`]), recording how far.
    ///
    /// # Errors
    /// The broker.
    pub fn read(&mut self, topic: &str, each: impl FnMut(OwnedRecord)) -> anyhow::Result<()> {
        read(self.inputs.kafka, topic, &mut self.positions, each)
    }
}

/// The subject of the request, as the logs and the saga's answer say.
pub struct Subject {
    /// The tenant.
    pub tenant: String,
    /// Every identifier: the request's and the engineer's, `(kind, id)`.
    pub identifiers: Vec<(String, String)>,
    /// The pseudonyms the saga erased (from its erase commands).
    pub old: BTreeSet<String>,
    /// The request, if still on its topic.
    pub request: Option<SubjectRequest>,
    /// The saga's answer, if any.
    pub answer: Option<SubjectRequestAck>,
}

impl Subject {
    /// The key ids privacy reported shredded.
    pub fn shredded_key_ids(&self) -> BTreeSet<String> {
        self.answer
            .iter()
            .flat_map(|a| &a.participants)
            .flat_map(|p| p.shredded_key_ids.iter().cloned())
            .collect()
    }
}

/// One check: what it reads, what it reports (one or more lines).
pub type CheckFn =
    for<'v, 'a> fn(&'v mut Verification<'a>) -> LocalBoxFuture<'v, anyhow::Result<Vec<Check>>>;

/// Every check, in report order. A new holder of the subject's data (a
/// sink, a store) adds one entry and one function in `checks`.
pub const CHECKS: &[(&str, CheckFn)] = &[
    ("request", checks::request),
    ("vault and protected", checks::vault_and_protected),
    ("progress", checks::progress),
    ("warehouse", checks::warehouse),
    ("aggregates", checks::aggregates),
    ("audit", checks::audit),
    ("restricted", checks::restricted),
];

/// Runs every check; the report is not yet signed.
///
/// # Errors
/// When something cannot be read at all (the broker, the vault); a check
/// that finds something wrong is a failed check, not an error.
pub async fn verify(inputs: Inputs<'_>) -> anyhow::Result<Report> {
    let started = Instant::now();
    let decoder = AvroDecoder::new(registry_settings(inputs.registry_url)?);
    let mut positions = BTreeMap::new();
    let subject = resolve(&inputs, &decoder, &mut positions).await?;
    let mut verification = Verification {
        inputs: &inputs,
        decoder,
        positions,
        subject,
        occurred: Vec::new(),
    };
    let mut checks = Vec::new();
    for (name, check) in CHECKS {
        let found = check(&mut verification)
            .await
            .with_context(|| format!("the {name} check"))?;
        checks.extend(found);
    }
    let anchors = crate::audit::newest_anchors(inputs.kafka, inputs.audit_log)?;
    let Verification {
        positions, subject, ..
    } = verification;
    let failed = checks.iter().any(Check::failed);
    tracing::debug!(elapsed = ?started.elapsed(), "erasure verified");
    Ok(Report {
        version: 1,
        request_id: inputs.request_id.to_string(),
        tenant_id: subject.tenant,
        subject_identifier_sha256: subject
            .identifiers
            .iter()
            .map(|(k, i)| identifier_hash(k, i))
            .collect(),
        requested_at: subject.answer.as_ref().map(|a| a.requested_at),
        acknowledged_at: subject.answer.as_ref().map(|a| a.acknowledged_at),
        verified_at: rfc3339(trellis_runtime::ticker::now_ms()),
        tool: format!("trellis {}", env!("CARGO_PKG_VERSION")),
        verdict: if failed { "failed" } else { "passed" }.into(),
        checks,
        positions,
        anchors,
    })
}

/// The request, its answer and the pseudonyms the saga erased.
async fn resolve(
    inputs: &Inputs<'_>,
    decoder: &AvroDecoder,
    positions: &mut BTreeMap<String, i64>,
) -> anyhow::Result<Subject> {
    let kafka = inputs.kafka;
    let mut request: Option<SubjectRequest> = None;
    let mut values = Vec::new();
    read(kafka, SUBJECT_REQUESTS_TOPIC, positions, |m| {
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
    read(kafka, SUBJECT_ACKS_TOPIC, positions, |m| {
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
    read(kafka, ERASE_COMMANDS_TOPIC, positions, |m| {
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
    Ok(Subject {
        tenant,
        identifiers,
        old,
        request,
        answer,
    })
}

use crate::rfc3339;

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

/// The warehouse's connection string from `TRELLIS_WAREHOUSE_URL[_FILE]`.
///
/// # Errors
/// Missing or malformed, naming the variable (never its value).
pub fn warehouse_from_env() -> anyhow::Result<trellis_warehouse::connection::ConnectionString> {
    let secrets = trellis_runtime::secret::load_secrets(&[trellis_warehouse::WAREHOUSE_URL])?;
    trellis_warehouse::connection::connection(&secrets, &trellis_warehouse::WAREHOUSE_URL)
        .map_err(anyhow::Error::msg)
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
