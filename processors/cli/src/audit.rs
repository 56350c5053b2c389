//! `trellis audit …`: verify the audited logs against their anchors, export
//! a copy of the logs, make and check proofs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use trellis_audit::canonical::Signer;
use trellis_audit::verify::{
    PartitionCheck, PartitionReport, Proof, by_partition, read_log, read_partitions, verify_proof,
    verify_records, write_log,
};
use trellis_records::{ANCHORS_TOPIC, Anchor, schema_text};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::pipeline::OwnedRecord;
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::secret::load_secrets;
use trellis_runtime::topology::Topology;

/// The env var holding the anchor signing key (as the processor reads it).
pub const SIGNING_KEY: &str = trellis_audit::SIGNING_KEY;

/// The signer to check anchors with: `key_id` and the key in
/// `TRELLIS_AUDIT_SIGNING_KEY` (or the file `TRELLIS_AUDIT_SIGNING_KEY_FILE`
/// names), or none when neither is set.
///
/// # Errors
/// If the key is set but malformed.
pub fn signer(key_id: &str) -> anyhow::Result<Option<Signer>> {
    let file = format!("{SIGNING_KEY}_FILE");
    if std::env::var_os(SIGNING_KEY).is_none() && std::env::var_os(&file).is_none() {
        return Ok(None);
    }
    let secrets = load_secrets(trellis_audit::SECRETS)?;
    Ok(Some(Signer::new(key_id, secrets.get(SIGNING_KEY).clone())))
}

/// Decodes anchors with the compiled-in schema: verification needs no
/// registry, only the records.
pub fn decode_anchors(records: &[OwnedRecord]) -> anyhow::Result<Vec<Anchor>> {
    let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9")?);
    let schema = apache_avro::Schema::parse_str(schema_text("anchor.avsc").expect("compiled in"))?;
    let mut anchors = Vec::new();
    for record in records.iter().filter(|r| r.topic == ANCHORS_TOPIC) {
        let value = record.value.as_deref().unwrap_or_default();
        let id = AvroDecoder::schema_id(value)
            .with_context(|| format!("{ANCHORS_TOPIC} offset {}", record.offset))?;
        decoder.insert(id, schema.clone())?;
        anchors.push(
            decoder
                .decode_blocking(value)
                .with_context(|| format!("{ANCHORS_TOPIC} offset {}", record.offset))?,
        );
    }
    Ok(anchors)
}

fn audited(topology: &Topology) -> Vec<String> {
    topology
        .topics
        .iter()
        .filter(|(_, t)| t.audited)
        .map(|(name, _)| name.clone())
        .collect()
}

fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>28} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar
}

/// A partition that does not reach its high watermark (see
/// [`read_partitions`]) has been read whole once nothing arrived for this long.
const IDLE: std::time::Duration = std::time::Duration::from_millis(1500);

/// Reads `topic` whole from the broker.
pub fn read_topic(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<OwnedRecord>> {
    let mut records = Vec::new();
    read_partitions(kafka, topic, IDLE, |_| {}, |r| records.push(r))?;
    Ok(records)
}

/// Where `verify` reads the logs from.
pub enum Source<'a> {
    /// The broker.
    Broker(&'a KafkaConfig),
    /// A log file written by `export-log`.
    File(&'a Path),
}

/// Checks every audited partition; prints one line per partition and the
/// findings. Returns the reports.
pub fn verify(
    source: Source<'_>,
    topology: &Topology,
    signer: &Signer,
    progress: bool,
) -> anyhow::Result<Vec<PartitionReport>> {
    let started = Instant::now();
    let reports = check(source, topology, signer, progress)?;
    print_reports(&reports, started);
    Ok(reports)
}

/// The newest anchor of every anchored partition, `topic/partition` → hex
/// hash, from the broker or an exported log.
pub fn newest_anchors(
    kafka: &KafkaConfig,
    log: Option<&Path>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let records = match log {
        Some(path) => read_log(path).with_context(|| format!("reading {}", path.display()))?,
        None => read_topic(kafka, ANCHORS_TOPIC)?,
    };
    Ok(by_partition(decode_anchors(&records)?)
        .into_iter()
        .filter_map(|((topic, partition), anchors)| {
            let newest = anchors.iter().max_by_key(|a| a.sequence)?;
            Some((
                format!("{topic}/{partition}"),
                hex::encode(trellis_audit::canonical::anchor_hash(newest)),
            ))
        })
        .collect())
}

/// Checks every audited partition, printing nothing.
pub fn check(
    source: Source<'_>,
    topology: &Topology,
    signer: &Signer,
    progress: bool,
) -> anyhow::Result<Vec<PartitionReport>> {
    let audited = audited(topology);
    let reports = match source {
        Source::File(path) => {
            let records = read_log(path).with_context(|| format!("reading {}", path.display()))?;
            let anchors = decode_anchors(&records)?;
            verify_records(&audited, anchors, signer, &records)
        }
        Source::Broker(kafka) => {
            let anchors = decode_anchors(&read_topic(kafka, ANCHORS_TOPIC)?)?;
            let mut grouped = by_partition(anchors);
            let mut reports = Vec::new();
            for topic in &audited {
                let mut checks: std::collections::BTreeMap<i32, PartitionCheck> = grouped
                    .iter()
                    .filter(|((t, _), _)| t == topic)
                    .map(|((_, p), _)| *p)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .map(|p| {
                        let anchors = grouped.remove(&(topic.clone(), p)).unwrap_or_default();
                        (p, PartitionCheck::new(topic, p, anchors, signer))
                    })
                    .collect();
                let progress_bar = progress.then(|| bar(0));
                read_partitions(
                    kafka,
                    topic,
                    IDLE,
                    |total| {
                        if let Some(b) = &progress_bar {
                            b.set_length(total);
                            b.set_message(topic.clone());
                        }
                    },
                    |record| {
                        if let Some(b) = &progress_bar {
                            b.inc(1);
                        }
                        checks
                            .entry(record.partition)
                            .or_insert_with(|| {
                                PartitionCheck::new(topic, record.partition, Vec::new(), signer)
                            })
                            .feed(&record);
                    },
                )?;
                if let Some(b) = progress_bar {
                    b.finish_and_clear();
                }
                reports.extend(checks.into_values().map(PartitionCheck::finish));
            }
            reports
        }
    };
    Ok(reports)
}

/// One line per partition and a verdict line.
pub fn print_reports(reports: &[PartitionReport], started: Instant) {
    let records: u64 = reports.iter().map(|r| r.records).sum();
    let anchors: usize = reports.iter().map(|r| r.anchors).sum();
    for r in reports {
        let status = match &r.finding {
            None => "ok".to_string(),
            Some(f) => format!("TAMPERED: {f}"),
        };
        println!(
            "{:<40} {:>9} records {:>6} anchors {:>6} unanchored  {status}",
            format!("{}/{}", r.topic, r.partition),
            r.records,
            r.anchors,
            r.unanchored
        );
    }
    let findings: Vec<_> = reports.iter().filter_map(|r| r.finding.as_ref()).collect();
    println!(
        "{records} records, {anchors} anchors checked in {:.2}s: {}",
        started.elapsed().as_secs_f64(),
        if findings.is_empty() {
            "the logs match their anchors".to_string()
        } else {
            format!("{} partition(s) disagree", findings.len())
        }
    );
}

/// Copies every audited topic and `audit.anchors` into a log file.
pub fn export_log(kafka: &KafkaConfig, topology: &Topology, out: &Path) -> anyhow::Result<u64> {
    let mut records = Vec::new();
    for topic in audited(topology)
        .iter()
        .map(String::as_str)
        .chain([ANCHORS_TOPIC])
    {
        records.extend(read_topic(kafka, topic)?);
    }
    Ok(write_log(out, &records)?)
}

/// What `prove` is asked.
pub enum ProofRequest {
    /// Inclusion of one record.
    Inclusion {
        /// Offset.
        offset: i64,
        /// Anchor (default: the first covering the offset).
        anchor: Option<i64>,
    },
    /// Consistency between two anchors.
    Consistency {
        /// Earlier anchor.
        from: i64,
        /// Later anchor.
        to: i64,
    },
}

/// Makes a proof about `topic`/`partition` from the broker's logs.
pub fn prove(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    request: ProofRequest,
) -> anyhow::Result<Proof> {
    let anchors = decode_anchors(&read_topic(kafka, ANCHORS_TOPIC)?)?;
    let records: Vec<OwnedRecord> = read_topic(kafka, topic)?
        .into_iter()
        .filter(|r| r.partition == partition)
        .collect();
    Ok(match request {
        ProofRequest::Inclusion { offset, anchor } => {
            trellis_audit::verify::prove_inclusion(&anchors, &records, offset, anchor)?
        }
        ProofRequest::Consistency { from, to } => {
            trellis_audit::verify::prove_consistency(&anchors, &records, from, to)?
        }
    })
}

/// Checks a proof file against the anchors (from the broker or a log file).
pub fn check_proof(
    proof: &Path,
    anchors: Source<'_>,
    signer: Option<&Signer>,
) -> anyhow::Result<String> {
    let proof: Proof = serde_json::from_slice(
        &std::fs::read(proof).with_context(|| format!("reading {}", proof.display()))?,
    )
    .context("not a proof written by `trellis audit prove`")?;
    let records = match anchors {
        Source::Broker(kafka) => read_topic(kafka, ANCHORS_TOPIC)?,
        Source::File(path) => read_log(path)?,
    };
    let anchors = decode_anchors(&records)?;
    Ok(verify_proof(&proof, &anchors, signer)?)
}

/// Where the proof goes.
pub fn write_proof(proof: &Proof, out: Option<&PathBuf>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(proof)?;
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Fails unless a signer is available.
pub fn require(signer: Option<Signer>) -> anyhow::Result<Signer> {
    match signer {
        Some(s) => Ok(s),
        None => bail!(
            "{SIGNING_KEY} is not set: anchors cannot be checked without the key that signed them"
        ),
    }
}
