//! The checks of an erasure verification, one function each, registered in
//! [`super::CHECKS`]. Each reads what it needs through the
//! [`Verification`] and returns its report lines.

use std::collections::BTreeMap;

use anyhow::Context;
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use trellis_records::{
    AGGREGATES_TOPIC, Aggregate, COLLECTED_TOPIC, CollectedEvent, INGEST_XAPI_TOPIC,
    LearnerProgress, PROGRESS_TOPIC, PROTECTED_TOPIC, ProtectedEvent,
};
use trellis_runtime::pipeline::OwnedRecord;
use trellis_runtime::secret::load_secrets;
use trellis_runtime::topology::Classification;

use super::{Check, Verification};
use crate::rfc3339;

type Lines<'v> = LocalBoxFuture<'v, anyhow::Result<Vec<Check>>>;

/// The request was answered `completed`.
pub(super) fn request<'v>(v: &'v mut Verification<'_>) -> Lines<'v> {
    async move {
        let check = match &v.subject.answer {
            Some(a) if a.kind == "erasure" && a.status == "completed" => Check::new(
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
            ),
            Some(a) => Check::new(
                "request.completed",
                false,
                format!("the {} request was answered `{}`", a.kind, a.status),
            ),
            None => Check::new(
                "request.completed",
                false,
                "the request has no answer yet".into(),
            ),
        };
        Ok(vec![check])
    }
    .boxed_local()
}

/// The vault holds none of the subject's old key material, and no sealed
/// field of the subject's `protected` records opens with any key it holds
/// (the AAD binds the key id, so only the key a record names could).
pub(super) fn vault_and_protected<'v>(v: &'v mut Verification<'_>) -> Lines<'v> {
    async move {
        let inputs = v.inputs;
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
        let subject = &v.subject;
        let tenant = &subject.tenant;
        // After an erasure an identifier may come back (the learner's new
        // events) with new material; what must not be there is the old one.
        let shredded = subject.shredded_key_ids();
        let mut problems = Vec::new();
        let mut renewed = 0u64;
        for (kind, id) in &subject.identifiers {
            if vault.raw_entry(tenant, kind, id)?.is_none() {
                continue;
            }
            match vault.existing(tenant, kind, id) {
                Ok(Some(keys))
                    if subject.old.contains(keys.pseudonym())
                        || shredded.contains(keys.key_id()) =>
                {
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
        let no_old_material = Check::new(
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
        .count("identifiers", subject.identifiers.len() as u64)
        .count("renewed", renewed)
        .count("problems", problems.len() as u64);

        let keys: Vec<Vec<u8>> = subject
            .old
            .iter()
            .map(|p| format!("{tenant}|{p}").into_bytes())
            .collect();
        let mut theirs = Vec::new();
        let bar = progress_bar(inputs.progress_bars, PROTECTED_TOPIC);
        v.read(PROTECTED_TOPIC, |m| {
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
        for value in &theirs {
            let event: ProtectedEvent = v.decoder.decode(value).await?;
            v.occurred.push(event.occurred_at);
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
        let nothing_decrypts = Check::new(
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
        .count("decrypted", opened);
        Ok(vec![no_old_material, nothing_decrypts])
    }
    .boxed_local()
}

/// No `progress` row of the old pseudonyms is in force (latest per key),
/// and, when given, the progress state holds none and their transcripts
/// are empty.
pub(super) fn progress<'v>(v: &'v mut Verification<'_>) -> Lines<'v> {
    async move {
        let mut latest: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        v.read(PROGRESS_TOPIC, |m| {
            latest.insert(m.key.unwrap_or_default(), m.value);
        })?;
        let subject = &v.subject;
        let tenant = &subject.tenant;
        let prefixes: Vec<String> = subject
            .old
            .iter()
            .map(|p| format!("{tenant}|{p}|"))
            .collect();
        let mut in_force = 0u64;
        for (key, value) in &latest {
            let key = String::from_utf8_lossy(key);
            if prefixes.iter().any(|p| key.starts_with(p.as_str())) && value.is_some() {
                in_force += 1;
            } else if let Some(value) = value {
                // A row keyed for someone else must not carry their pseudonym.
                let row: LearnerProgress = v.decoder.decode(value).await?;
                if subject.old.contains(&row.learner) {
                    in_force += 1;
                }
            }
        }
        let mut lines = vec![
            Check::new(
                "progress.no_row_in_force",
                in_force == 0,
                if in_force == 0 {
                    "no progress row of the old pseudonyms is in force (every key tombstoned)"
                        .into()
                } else {
                    format!("{in_force} progress row(s) of the old pseudonyms are in force")
                },
            )
            .count("rows_in_force", in_force),
        ];
        if let Some(dir) = v.inputs.progress_state {
            let store = trellis_runtime::state::StateStore::open(dir).with_context(|| {
                format!(
                    "opening the progress state at {} (stop the projector, or give a copy)",
                    dir.display()
                )
            })?;
            let mut rows = 0u64;
            for learner in &subject.old {
                rows += trellis_progress::transcript::transcript(&store, tenant, learner)?
                    .entries
                    .len() as u64;
                rows += trellis_progress::learner_rows(&store, tenant, learner)?;
            }
            lines.push(
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
        Ok(lines)
    }
    .boxed_local()
}

/// When given, the warehouse holds no row of the old pseudonyms.
pub(super) fn warehouse<'v>(v: &'v mut Verification<'_>) -> Lines<'v> {
    async move {
        let Some(url) = &v.inputs.warehouse else {
            return Ok(Vec::new());
        };
        let client = url
            .connect()
            .await
            .with_context(|| format!("connecting to the warehouse {url}"))?;
        let learners: Vec<&str> = v.subject.old.iter().map(String::as_str).collect();
        let rows: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM trellis.progress WHERE tenant_id = $1 AND learner = ANY($2))
                      + (SELECT count(*) FROM trellis.completions WHERE tenant_id = $1 AND learner = ANY($2))",
                &[&v.subject.tenant, &learners],
            )
            .await
            .map_err(|e| anyhow::anyhow!(trellis_warehouse::connection::describe(&e)))?
            .get(0);
        Ok(vec![
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
        ])
    }
    .boxed_local()
}

/// Aggregates still count the subject's past activity (anonymously): the
/// published cells of their tenant cover the times of their events.
pub(super) fn aggregates<'v>(v: &'v mut Verification<'_>) -> Lines<'v> {
    async move {
        let mut cells = Vec::new();
        v.read(AGGREGATES_TOPIC, |m| {
            cells.extend(m.value);
        })?;
        let mut windows: Vec<(i64, i64)> = Vec::new();
        for value in &cells {
            let a: Aggregate = v.decoder.decode(value).await?;
            if a.tenant_id == v.subject.tenant && a.events > 0 {
                let length = if a.window == "day" {
                    86_400_000
                } else {
                    3_600_000
                };
                windows.push((a.window_start, a.window_start + length));
            }
        }
        let occurred = &v.occurred;
        let covered = occurred
            .iter()
            .filter(|at| windows.iter().any(|(s, e)| (*s..*e).contains(at)))
            .count() as u64;
        let check = if occurred.is_empty() {
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
        };
        Ok(vec![
            check
                .count("events", occurred.len() as u64)
                .count("in_published_cells", covered),
        ])
    }
    .boxed_local()
}

/// Every audited partition matches its signed anchors: the erasure changed
/// no record (crypto-shredding), and nothing else did.
pub(super) fn audit<'v>(v: &'v mut Verification<'_>) -> Lines<'v> {
    async move {
        let inputs = v.inputs;
        let source = match inputs.audit_log {
            Some(path) => crate::audit::Source::File(path),
            None => crate::audit::Source::Broker(inputs.kafka),
        };
        let reports = crate::audit::check(source, inputs.topology, inputs.audit, false)?;
        let findings: Vec<String> = reports
            .iter()
            .filter_map(|r| r.finding.as_ref().map(|f| f.to_string()))
            .collect();
        Ok(vec![
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
        ])
    }
    .boxed_local()
}

/// For the record: the subject's plaintext still in `restricted` raw
/// topics, and when their retention removes it.
pub(super) fn restricted<'v>(v: &'v mut Verification<'_>) -> Lines<'v> {
    async move {
        let tenant = v.subject.tenant.clone();
        let identifiers = v.subject.identifiers.clone();
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
        let mut residual: BTreeMap<String, (u64, i64)> = BTreeMap::new();
        let inputs = v.inputs;
        for (name, spec) in &inputs.topology.topics {
            if spec.classification != Classification::Restricted
                || !(name == COLLECTED_TOPIC || name.starts_with("ingest."))
            {
                continue;
            }
            let mut raw = Vec::new();
            // Only records that can name the subject are parsed: `collected`
            // is keyed `tenant|kind:id`; a raw event names the identifier (an
            // account's name part) somewhere in its bytes.
            v.read(name, |m| {
                let candidate = if name == COLLECTED_TOPIC {
                    m.key
                        .as_deref()
                        .is_some_and(|k| collected_keys.iter().any(|c| c == k))
                } else {
                    m.value.as_deref().is_some_and(|value| {
                        let text = String::from_utf8_lossy(value);
                        needles.iter().any(|n| text.contains(n.as_str()))
                    })
                };
                if candidate {
                    raw.push(m);
                }
            })?;
            for record in raw {
                let actor = if name == COLLECTED_TOPIC {
                    match record.value.as_deref() {
                        Some(value) => v
                            .decoder
                            .decode::<CollectedEvent>(value)
                            .await
                            .ok()
                            .map(|e| (e.tenant_id, e.actor)),
                        None => None,
                    }
                } else {
                    raw_actor(&record, name, &limits)
                };
                let Some((t, actor)) = actor else { continue };
                if t != tenant || !identifiers.contains(&(actor.id_kind, actor.id)) {
                    continue;
                }
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
        Ok(vec![
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
        ])
    }
    .boxed_local()
}

/// The tenant and actor of a raw ingest record, as the collector reads it.
fn raw_actor(
    record: &OwnedRecord,
    topic: &str,
    limits: &trellis_collector::validate::Limits,
) -> Option<(String, trellis_records::Actor)> {
    use trellis_collector::validate::{Envelope, IngestFormat, validate};
    let format = if topic == INGEST_XAPI_TOPIC {
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

fn progress_bar(show: bool, what: &str) -> indicatif::ProgressBar {
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
