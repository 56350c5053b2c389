//! `trellis audit …`: verify the audited logs against their anchors, export
//! a copy of the logs, make and check proofs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use trellis_audit::checkpoint::{LogReport, check_log};
use trellis_audit::signing::{CosignatureVerifier, Keys};
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

/// A witness's cosignature verifier from its public key (`trellis audit
/// witness-key` prints it).
///
/// # Errors
/// A key that does not parse.
pub fn cosignature_verifier(key: &str) -> anyhow::Result<CosignatureVerifier> {
    Ok(CosignatureVerifier::new(key)?)
}

/// The keys a verifier trusts: the public verifier keys given (every key a
/// rotated log was signed with) and, for HMAC deployments only, the secret
/// in `TRELLIS_AUDIT_SIGNING_KEY[_FILE]` under `hmac_key_id`.
///
/// # Errors
/// A malformed key, or no key at all.
pub fn keys(public_keys: &[String], hmac_key_id: Option<&str>) -> anyhow::Result<Keys> {
    let mut keys = Keys::default();
    for vkey in public_keys.iter().filter(|k| !k.trim().is_empty()) {
        keys.trust_vkey(vkey)?;
    }
    if let Some(id) = hmac_key_id {
        let secrets = load_secrets(trellis_audit::SECRETS)?;
        keys.trust_hmac(id, secrets.get(SIGNING_KEY).clone());
    }
    if keys.is_empty() {
        bail!(
            "no key to check anchors with: give --public-key (the audit log's verifier key; the operator prints it with `trellis audit public-key`), or --hmac-key-id for an HMAC deployment"
        );
    }
    Ok(keys)
}

/// The audit log's public verifier key, from the signing key in
/// `TRELLIS_AUDIT_SIGNING_KEY[_FILE]` (operators run this, once).
///
/// # Errors
/// The key is missing or malformed.
pub fn public_key(key_name: &str) -> anyhow::Result<String> {
    let secrets = load_secrets(trellis_audit::SECRETS)?;
    Ok(
        trellis_audit::signing::NoteKey::new(key_name, secrets.get(SIGNING_KEY))
            .context(SIGNING_KEY)?
            .vkey(),
    )
}

/// A witness's cosigned checkpoint, from a file or an `http://` URL.
///
/// # Errors
/// Unreadable.
pub async fn read_witness_checkpoint(at: &str) -> anyhow::Result<Vec<u8>> {
    if at.starts_with("http://") || at.starts_with("https://") {
        let response = reqwest::get(at)
            .await
            .with_context(|| format!("fetching {at}"))?;
        if !response.status().is_success() {
            bail!("fetching {at}: {}", response.status());
        }
        Ok(response.bytes().await?.to_vec())
    } else {
        std::fs::read(at).with_context(|| format!("reading {at}"))
    }
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

/// A witness's cosigned checkpoint and the witness's key.
pub struct WitnessView<'a> {
    /// The cosigned note.
    pub note: &'a [u8],
    /// The witness's verifier key.
    pub key: &'a CosignatureVerifier,
}

/// Checks every audited partition and the anchor log; prints one line per
/// partition, one for the log and the verdict. Returns the reports.
pub fn verify(
    source: Source<'_>,
    topology: &Topology,
    keys: &Keys,
    witness: Option<WitnessView<'_>>,
    progress: bool,
) -> anyhow::Result<(Vec<PartitionReport>, LogReport)> {
    let started = Instant::now();
    let (reports, anchors) = check_with_anchors(source, topology, keys, progress)?;
    let log = check_log(&anchors, keys, witness.map(|w| (w.note, w.key)));
    print_reports(&reports, started);
    print_log(&log);
    Ok((reports, log))
}

/// The anchor log's lines.
pub fn print_log(log: &LogReport) {
    let keys: Vec<String> = log
        .keys
        .iter()
        .map(|(key, from)| format!("{key} from anchor {from}"))
        .collect();
    println!(
        "anchor log {}: {} anchors, {} checkpoints checked; signed by {}",
        log.origin.as_deref().unwrap_or("(no checkpoints: HMAC)"),
        log.size,
        log.checkpoints,
        if keys.is_empty() {
            "-".to_string()
        } else {
            keys.join(", ")
        }
    );
    if let Some(w) = &log.witnessed {
        println!(
            "witness {} cosigned {} at {}: this log contains that tree",
            w.witness,
            w.checkpoint,
            time::OffsetDateTime::from_unix_timestamp(w.time as i64)
                .ok()
                .and_then(|t| t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok())
                .unwrap_or_else(|| w.time.to_string())
        );
    }
    if let Some(problem) = &log.problem {
        println!("anchor log: {problem}");
    }
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
    keys: &Keys,
    progress: bool,
) -> anyhow::Result<Vec<PartitionReport>> {
    Ok(check_with_anchors(source, topology, keys, progress)?.0)
}

/// [`check`], also returning the anchors in `audit.anchors` order.
fn check_with_anchors(
    source: Source<'_>,
    topology: &Topology,
    keys: &Keys,
    progress: bool,
) -> anyhow::Result<(Vec<PartitionReport>, Vec<Anchor>)> {
    let audited = audited(topology);
    let reports = match source {
        Source::File(path) => {
            let records = read_log(path).with_context(|| format!("reading {}", path.display()))?;
            let anchors = decode_anchors(&records)?;
            let reports = verify_records(&audited, anchors.clone(), keys, &records);
            (reports, anchors)
        }
        Source::Broker(kafka) => {
            let anchors = decode_anchors(&read_topic(kafka, ANCHORS_TOPIC)?)?;
            let mut grouped = by_partition(anchors.clone());
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
                        (p, PartitionCheck::new(topic, p, anchors, keys))
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
                                PartitionCheck::new(topic, record.partition, Vec::new(), keys)
                            })
                            .feed(&record);
                    },
                )?;
                if let Some(b) = progress_bar {
                    b.finish_and_clear();
                }
                reports.extend(checks.into_values().map(PartitionCheck::finish));
            }
            (reports, anchors)
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
    keys: Option<&Keys>,
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
    Ok(verify_proof(&proof, &anchors, keys)?)
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

/// The witness's signing key (TRELLIS_WITNESS_SIGNING_KEY[_FILE]).
pub const WITNESS_KEY: trellis_runtime::secret::SecretSpec = trellis_runtime::secret::SecretSpec {
    env: "TRELLIS_WITNESS_SIGNING_KEY",
    format: trellis_runtime::secret::SecretFormat::Hex32,
    purpose: "the witness's Ed25519 seed: cosigns the audit log's checkpoints",
};

/// The witness's cosigner named `name`.
///
/// # Errors
/// The key is missing or malformed, or the name is invalid.
pub fn witness_signer(name: &str) -> anyhow::Result<trellis_audit::signing::Cosigner> {
    let secrets = load_secrets(&[WITNESS_KEY])?;
    Ok(trellis_audit::signing::Cosigner::new(
        name,
        secrets.get(WITNESS_KEY.env),
    )?)
}

/// What `trellis audit witness` runs with.
pub struct WitnessOptions {
    /// The checkpoint endpoint, without a trailing slash.
    pub log_url: String,
    /// The log's public keys.
    pub log_keys: Keys,
    /// The witness's key.
    pub cosigner: trellis_audit::signing::Cosigner,
    /// The state file: the last cosigned checkpoint.
    pub state: PathBuf,
    /// Between fetches.
    pub interval: std::time::Duration,
    /// One fetch, then exit.
    pub once: bool,
}

async fn fetch_text(client: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("fetching {url}"))?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", text.trim());
    }
    Ok(text)
}

/// Runs the witness (see `trellis_audit::witness`); with `once`, returns
/// whether the one checkpoint was accepted. A fetch that fails is retried
/// at the next interval; a refused checkpoint is reported and never
/// cosigned, and the witness keeps its last one.
///
/// # Errors
/// The state file cannot be read or written.
pub async fn witness(options: WitnessOptions) -> anyhow::Result<bool> {
    use trellis_audit::witness::{Outcome, observe};
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut last = match std::fs::read_to_string(&options.state) {
        Ok(note) => Some(note),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", options.state.display())),
    };
    let mut clean = true;
    loop {
        let url = format!("{}/checkpoint", options.log_url);
        let step: anyhow::Result<bool> = async {
            let shown = fetch_text(&client, &url).await?;
            // The proof is fetched before deciding: the decision is pure.
            // Sizes only, to know which proof to fetch; `observe` checks.
            let old = last
                .as_deref()
                .and_then(|l| trellis_audit::witness::cosigned_checkpoint(l).ok());
            let new = options
                .log_keys
                .open_note(shown.as_bytes())
                .ok()
                .and_then(|b| trellis_audit::checkpoint::Checkpoint::parse(&b).ok());
            let proof = match (old.map(|c| c.size), new.map(|c| c.size)) {
                (Some(old), Some(new)) if old > 0 && new > old => Some(
                    fetch_text(
                        &client,
                        &format!("{}/proof/consistency?old={old}&new={new}", options.log_url),
                    )
                    .await
                    .map_err(|e| format!("{e:#}")),
                ),
                _ => None,
            };
            let outcome = observe(
                last.as_deref(),
                shown.as_bytes(),
                &options.log_keys,
                &options.cosigner,
                |_, _| match proof {
                    Some(text) => trellis_audit::checkpoint::parse_proof(&text?),
                    None => Err("no proof fetched".into()),
                },
            );
            match outcome {
                Ok(Outcome::Unchanged) => {
                    if options.once {
                        println!("unchanged since the last cosigned checkpoint");
                    }
                    Ok(true)
                }
                Ok(Outcome::Cosigned { note, checkpoint }) => {
                    let tmp = options.state.with_extension("tmp");
                    if let Some(dir) = options.state.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::write(&tmp, &note)
                        .and_then(|()| std::fs::rename(&tmp, &options.state))
                        .with_context(|| format!("writing {}", options.state.display()))?;
                    println!("cosigned {checkpoint}");
                    last = Some(note);
                    Ok(true)
                }
                Err(refusal) => {
                    println!("REFUSED {refusal}");
                    Ok(false)
                }
            }
        }
        .await;
        match step {
            Ok(accepted) => clean &= accepted,
            Err(e) if options.once => return Err(e),
            Err(e) => eprintln!("witness: {e:#} (retrying)"),
        }
        if options.once {
            return Ok(clean);
        }
        tokio::time::sleep(options.interval).await;
    }
}
