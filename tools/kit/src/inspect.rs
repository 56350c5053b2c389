//! `trellis inspect`: what every declared topic holds.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::Headers;
use trellis_records::{DLQ_TOPIC, DeadLetter};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::{ID_HEADER, TENANT_HEADER, scan_topic};
use trellis_runtime::schema::{AvroDecoder, registry_settings};
use trellis_runtime::topology::Topology;

/// What one topic holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TopicReport {
    /// Records.
    pub records: u64,
    /// Distinct `trellis.id` header values (0 for topics written upstream).
    pub distinct_ids: u64,
    /// Records per `tenant` header.
    pub tenants: BTreeMap<String, u64>,
    /// Dead letters per reason (the `dlq` topic only).
    pub reasons: BTreeMap<String, u64>,
}

fn header<'a>(message: &'a impl Message, name: &str) -> Option<&'a [u8]> {
    message.headers()?.iter().find(|h| h.key == name)?.value
}

/// Scans every declared topic from the beginning.
///
/// # Errors
/// Broker or registry failure, as text.
pub async fn inspect(
    kafka: &KafkaConfig,
    registry_url: &str,
    topology: &Topology,
    idle: Duration,
) -> Result<BTreeMap<String, TopicReport>, String> {
    let decoder = AvroDecoder::new(registry_settings(registry_url).map_err(|e| e.to_string())?);
    let mut reports = BTreeMap::new();
    for topic in topology.topics.keys() {
        let mut report = TopicReport::default();
        let mut ids = HashSet::new();
        let mut dead = Vec::new();
        let kafka = kafka.clone();
        let name = topic.clone();
        let (report, ids, dead) = tokio::task::spawn_blocking(move || {
            scan_topic(
                &kafka,
                &name,
                idle,
                |m| {
                    report.records += 1;
                    if let Some(id) = header(m, ID_HEADER) {
                        ids.insert(id.to_vec());
                    }
                    if let Some(tenant) = header(m, TENANT_HEADER) {
                        *report
                            .tenants
                            .entry(String::from_utf8_lossy(tenant).into_owned())
                            .or_default() += 1;
                    }
                    if name == DLQ_TOPIC
                        && let Some(value) = m.payload()
                    {
                        dead.push(value.to_vec());
                    }
                },
                || false,
            )
            .map(|_| (report, ids, dead))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let mut report = report;
        report.distinct_ids = ids.len() as u64;
        for value in dead {
            let reason = match decoder.decode::<DeadLetter>(&value).await {
                Ok(letter) => letter.reason,
                Err(e) => format!("(undecodable: {e})"),
            };
            *report.reasons.entry(reason).or_default() += 1;
        }
        reports.insert(topic.clone(), report);
    }
    Ok(reports)
}

/// A table of the reports, for people.
pub fn render(reports: &BTreeMap<String, TopicReport>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>9} {:>12}  tenants",
        "topic", "records", "distinct ids"
    );
    for (topic, report) in reports {
        let tenants = report
            .tenants
            .iter()
            .map(|(t, n)| format!("{t}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            out,
            "{topic:<40} {:>9} {:>12}  {tenants}",
            report.records, report.distinct_ids
        );
        for (reason, count) in &report.reasons {
            let _ = writeln!(out, "{:<40} {count:>9}  dead letters: {reason}", "");
        }
    }
    out
}
