//! `trellis gdpr …`: file data-subject requests and read the answers.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use trellis_records::{
    SUBJECT_ACKS_TOPIC, SUBJECT_REQUESTS_TOPIC, SubjectRequest, SubjectRequestAck,
};
use trellis_runtime::config::KafkaConfig;
use trellis_runtime::kafka::client_config;
use trellis_runtime::producer::{Outgoing, TrellisProducer};
use trellis_runtime::schema::{AvroDecoder, AvroEncoder, SchemaFile, registry_settings};
use trellis_runtime::topology::Topology;

/// Files requests and waits for their answers.
pub struct Requests {
    producer: TrellisProducer,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    answers: StreamConsumer,
}

impl Requests {
    /// Connects; answers are read from the end of the acknowledged topic
    /// as it is now, so only answers to requests filed from here on count.
    pub async fn connect(
        kafka: &KafkaConfig,
        registry: &str,
        topology: &Topology,
    ) -> anyhow::Result<Self> {
        let settings = registry_settings(registry)?;
        let spec = topology
            .topic(SUBJECT_REQUESTS_TOPIC)
            .map_err(anyhow::Error::msg)?;
        let schema =
            SchemaFile::load(&topology.schema_path(spec.schema.as_deref().unwrap_or_default()))?;
        let encoder = AvroEncoder::register(&settings, SUBJECT_REQUESTS_TOPIC, &schema).await?;
        let mut config = client_config(kafka);
        config
            .set(
                "group.id",
                format!("trellis-gdpr-cli-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            // Someone is waiting for this answer: fetch often (tansu holds
            // an empty fetch for its whole wait, however soon records come).
            .set("fetch.wait.max.ms", "20");
        let answers: StreamConsumer = config.create()?;
        // Every partition from its current end, resolved now: an answer
        // written between this and the first fetch must not be skipped.
        let mut assignment = rdkafka::TopicPartitionList::new();
        for partition in 0..spec.partitions {
            let (_, high) = answers.fetch_watermarks(
                SUBJECT_ACKS_TOPIC,
                partition,
                trellis_runtime::kafka::ADMIN_TIMEOUT,
            )?;
            assignment.add_partition_offset(
                SUBJECT_ACKS_TOPIC,
                partition,
                rdkafka::Offset::Offset(high),
            )?;
        }
        answers.assign(&assignment)?;
        Ok(Self {
            producer: TrellisProducer::create(kafka)?,
            encoder,
            decoder: AvroDecoder::new(settings),
            answers,
        })
    }

    /// Files `request` (keyed by request id, as the saga expects).
    pub async fn file(&self, request: &SubjectRequest) -> anyhow::Result<()> {
        let value = self.encoder.encode(request)?;
        let id = format!("request/{}", request.request_id);
        let record = Outgoing {
            topic: SUBJECT_REQUESTS_TOPIC,
            key: request.request_id.as_bytes(),
            value: Some(&value),
            id: Some(&id),
            tenant: Some(&request.tenant_id),
            request_id: None,
            timestamp_ms: None,
        };
        self.producer
            .send(&record, Duration::from_secs(10))
            .await
            .context("filing the request")?;
        Ok(())
    }

    /// The next answer on the acknowledged topic.
    pub async fn next_answer(&self, timeout: Duration) -> anyhow::Result<SubjectRequestAck> {
        let message = tokio::time::timeout(timeout, self.answers.recv())
            .await
            .context("no answer in time")??;
        let value = message.payload().unwrap_or_default();
        Ok(self.decoder.decode(value).await?)
    }

    /// Waits for the answer to `request_id`.
    pub async fn wait_for(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> anyhow::Result<SubjectRequestAck> {
        let started = Instant::now();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                bail!("no answer to {request_id} within {timeout:?}");
            }
            let answer = self.next_answer(left).await?;
            if answer.request_id == request_id {
                return Ok(answer);
            }
        }
    }
}

/// One line per participant, for people. `waited`: the time from filing to
/// answer as the caller measured it.
pub fn render(ack: &SubjectRequestAck, waited: Option<Duration>) -> String {
    let mut text = format!(
        "{} {} for tenant {}: {}{}{}\n",
        ack.kind,
        ack.request_id,
        ack.tenant_id,
        ack.status,
        ack.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        waited
            .map(|w| format!(
                ", answered {} ms after filing (measured here)",
                w.as_millis()
            ))
            .unwrap_or_default()
    );
    text.push_str(&format!(
        "  requested {}, answered {} ({} ms later by the saga's clock)\n",
        crate::rfc3339(ack.requested_at),
        crate::rfc3339(ack.acknowledged_at),
        ack.acknowledged_at.saturating_sub(ack.requested_at)
    ));
    for p in &ack.participants {
        text.push_str(&format!(
            "  {:<10} {:<10} {:>6} records  {}{}\n",
            p.participant,
            p.outcome,
            p.records_affected,
            p.detail,
            if p.shredded_key_ids.is_empty() {
                String::new()
            } else {
                format!(" [shredded {}]", p.shredded_key_ids.join(", "))
            }
        ));
    }
    if let Some(anchor) = &ack.audit_anchor {
        text.push_str(&format!("  audit anchor {anchor}\n"));
    }
    if let Some(note) = &ack.audit_checkpoint {
        // Origin, size and root: the first three lines of the signed note.
        let head: Vec<&str> = note.lines().take(3).collect();
        text.push_str(&format!(
            "  in the audit log's signed checkpoint {}\n",
            head.join(" ")
        ));
    }
    if let Some(export) = &ack.export {
        text.push_str(&format!("  export written to {export}\n"));
    }
    if ack.kind == "erasure" && ack.status == "completed" {
        if ack.residual_plaintext.is_empty() {
            text.push_str("  no plaintext copy remains\n");
        }
        for copy in &ack.residual_plaintext {
            text.push_str(&format!(
                "  plaintext may remain in {} (restricted) until {}\n",
                copy.topic,
                crate::rfc3339(copy.until)
            ));
        }
    }
    text
}
