//! The one way Trellis produces a record: its headers (`trellis.id`,
//! `tenant`, `x-request-id`), waiting while the local queue is full, the
//! size limit checked before the broker is asked, and transient delivery
//! failures retried with backoff.
//!
//! Every writer uses it: the pipeline's outputs and dead letters, tickers,
//! HTTP ingest, audit events from tools. A re-sent record carries the same
//! `trellis.id`, so a retry after an ambiguous failure is dropped by id
//! downstream rather than counted twice.

use std::time::Duration;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Message, Timestamp};

use crate::backoff::Backoff;
use crate::config::KafkaConfig;
use crate::error::ErrorKind;
use crate::kafka::{ID_HEADER, REQUEST_ID_HEADER, TENANT_HEADER};

/// librdkafka's default `message.max.bytes`: the producer refuses larger
/// records before the broker sees them.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// One record to produce, borrowed from its owner.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Destination topic.
    pub topic: &'a str,
    /// Key bytes.
    pub key: &'a [u8],
    /// Value bytes (`None`: a tombstone).
    pub value: Option<&'a [u8]>,
    /// Stable id (`trellis.id`); `None` for records that have none (raw ingest).
    pub id: Option<&'a str>,
    /// Tenant (`tenant` header).
    pub tenant: Option<&'a str>,
    /// Ingest request id carried through the topology.
    pub request_id: Option<&'a [u8]>,
    /// Record timestamp (ms since the epoch); `None`: the producer's clock.
    pub timestamp_ms: Option<i64>,
}

impl Outgoing<'_> {
    /// Bytes the producer counts against `message.max.bytes` (value, key,
    /// headers), plus a little for the record framing.
    pub fn size(&self) -> usize {
        const FRAMING: usize = 64;
        let header = |k: &str, v: Option<usize>| v.map_or(0, |len| k.len() + len + 8);
        self.value.map_or(0, <[u8]>::len)
            + self.key.len()
            + header(ID_HEADER, self.id.map(str::len))
            + header(TENANT_HEADER, self.tenant.map(str::len))
            + header(REQUEST_ID_HEADER, self.request_id.map(<[u8]>::len))
            + FRAMING
    }

    /// The Trellis headers of the record (`trellis.id`, `tenant`,
    /// `x-request-id`, those it has): for writers that build their own
    /// `FutureRecord` (a chosen partition, a test's raw record).
    pub fn headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(3);
        if let Some(id) = self.id {
            headers = headers.insert(Header {
                key: ID_HEADER,
                value: Some(id.as_bytes()),
            });
        }
        if let Some(tenant) = self.tenant {
            headers = headers.insert(Header {
                key: TENANT_HEADER,
                value: Some(tenant.as_bytes()),
            });
        }
        if let Some(request_id) = self.request_id {
            headers = headers.insert(Header {
                key: REQUEST_ID_HEADER,
                value: Some(request_id),
            });
        }
        headers
    }
}

/// A record could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Larger than the producer (or the broker) accepts: retrying cannot help.
    #[error("record for {topic} is {bytes} bytes, over the {limit}-byte message limit")]
    TooLarge {
        /// Destination topic.
        topic: String,
        /// Its size.
        bytes: usize,
        /// The limit it broke (the producer's `message.max.bytes`, or 0 when
        /// the broker refused it).
        limit: usize,
    },
    /// The broker refused or did not answer.
    #[error("producing to {topic}: {source}")]
    Kafka {
        /// Destination topic.
        topic: String,
        /// What librdkafka said.
        source: RdKafkaError,
    },
}

impl ProduceError {
    /// Retryable (the broker may recover), poison (this record can never
    /// be written) or fatal (authorisation, configuration).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::TooLarge { .. } => ErrorKind::Poison,
            Self::Kafka { source, .. } => kafka_error_kind(source),
        }
    }
}

/// How Trellis treats a librdkafka error.
pub fn kafka_error_kind(error: &RdKafkaError) -> ErrorKind {
    use RDKafkaErrorCode as C;
    match error.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge) => ErrorKind::Poison,
        Some(
            C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::SaslAuthenticationFailed
            | C::Authentication
            | C::InvalidConfig
            | C::Fenced
            | C::ProducerFenced
            | C::InvalidProducerEpoch,
        ) => ErrorKind::Fatal,
        _ => ErrorKind::Retryable,
    }
}

/// A producer that writes records the Trellis way (see the module docs).
#[derive(Clone)]
pub struct TrellisProducer {
    inner: FutureProducer,
    max_message_bytes: usize,
}

impl TrellisProducer {
    /// Wraps `inner`, created from `kafka`'s settings (the size limit is
    /// its `message.max.bytes`).
    pub fn new(inner: FutureProducer, kafka: &KafkaConfig) -> Self {
        Self {
            inner,
            max_message_bytes: max_message_bytes(kafka),
        }
    }

    /// A non-transactional producer for `kafka` (side paths: HTTP ingest,
    /// audit events from tools and gates).
    ///
    /// # Errors
    /// [`crate::kafka::KafkaError`] if librdkafka rejects the settings.
    pub fn create(kafka: &KafkaConfig) -> Result<Self, crate::kafka::KafkaError> {
        let inner = crate::kafka::producer_config(kafka, None)
            .create()
            .map_err(crate::kafka::KafkaError::client("creating a producer"))?;
        Ok(Self::new(inner, kafka))
    }

    /// The librdkafka producer (transactions, flush).
    pub fn inner(&self) -> &FutureProducer {
        &self.inner
    }

    /// The largest record this producer sends.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// Hands `record` to librdkafka and returns its delivery, waiting while
    /// the local queue is full.
    ///
    /// # Errors
    /// [`ProduceError::TooLarge`] before anything is sent, or the error
    /// librdkafka refused the record with.
    pub async fn enqueue(&self, record: &Outgoing<'_>) -> Result<DeliveryFuture, ProduceError> {
        let bytes = record.size();
        if bytes > self.max_message_bytes {
            return Err(ProduceError::TooLarge {
                topic: record.topic.to_string(),
                bytes,
                limit: self.max_message_bytes,
            });
        }
        let mut future = FutureRecord::to(record.topic)
            .key(record.key)
            .headers(record.headers());
        if let Some(value) = record.value {
            future = future.payload(value);
        }
        if let Some(ts) = record.timestamp_ms {
            future = future.timestamp(ts);
        }
        match self.send_waiting(future).await {
            Err(RdKafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                Err(ProduceError::TooLarge {
                    topic: record.topic.to_string(),
                    bytes,
                    limit: self.max_message_bytes,
                })
            }
            Err(source) => Err(ProduceError::Kafka {
                topic: record.topic.to_string(),
                source,
            }),
            Ok(delivery) => Ok(delivery),
        }
    }

    /// Hands `future` to librdkafka, waiting while its local queue is full
    /// (librdkafka drains it on its own thread).
    async fn send_waiting<K, P>(
        &self,
        mut future: FutureRecord<'_, K, P>,
    ) -> Result<DeliveryFuture, RdKafkaError>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.inner.send_result(future) {
                Ok(delivery) => return Ok(delivery),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    future = returned;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((source, _)) => return Err(source),
            }
        }
    }

    /// Produces `record` and waits until the broker has it, retrying
    /// transient failures with backoff for as long as `patience` allows.
    ///
    /// # Errors
    /// A poison or fatal [`ProduceError`], or the last transient one once
    /// `patience` has run out.
    pub async fn send(
        &self,
        record: &Outgoing<'_>,
        patience: Duration,
    ) -> Result<(), ProduceError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = Backoff::new("produce");
        loop {
            let result = match self.enqueue(record).await {
                Ok(delivery) => settle(record.topic, delivery).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Retryable => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    backoff.wait(&e).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for `delivery`; a transient failure is re-sent (same record,
    /// same id) with backoff until the broker takes it.
    ///
    /// # Errors
    /// A poison or fatal [`ProduceError`]: the record can never be written.
    pub async fn deliver(&self, topic: &str, delivery: DeliveryFuture) -> Result<(), ProduceError> {
        let mut backoff = Backoff::new("delivery");
        let mut delivery = delivery;
        loop {
            let (source, message) = match delivery.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(failed)) => failed,
                // The producer was dropped: nothing to retry with.
                Err(_) => {
                    return Err(ProduceError::Kafka {
                        topic: topic.to_string(),
                        source: RdKafkaError::Canceled,
                    });
                }
            };
            let error = delivery_error(topic, source, &message);
            if error.kind() != ErrorKind::Retryable {
                return Err(error);
            }
            backoff.wait(&error).await;
            delivery = self.resend(&message).await?;
        }
    }

    async fn resend(&self, message: &OwnedMessage) -> Result<DeliveryFuture, ProduceError> {
        let mut future = FutureRecord::to(message.topic());
        if let Some(key) = message.key() {
            future = future.key(key);
        }
        if let Some(payload) = message.payload() {
            future = future.payload(payload);
        }
        if let Some(headers) = message.headers() {
            future = future.headers(headers.clone());
        }
        if let Timestamp::CreateTime(ts) = message.timestamp() {
            future = future.timestamp(ts);
        }
        self.send_waiting(future)
            .await
            .map_err(|source| ProduceError::Kafka {
                topic: message.topic().to_string(),
                source,
            })
    }
}

/// What a failed delivery of `message` to `topic` means: too large for the
/// broker (poison), or the broker's error.
fn delivery_error(topic: &str, source: RdKafkaError, message: &OwnedMessage) -> ProduceError {
    match source.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => ProduceError::TooLarge {
            topic: topic.to_string(),
            bytes: message_size(message),
            limit: 0,
        },
        _ => ProduceError::Kafka {
            topic: topic.to_string(),
            source,
        },
    }
}

/// Waits for `delivery` once, without re-sending: for callers that answer
/// someone (an HTTP client) and let them retry.
///
/// # Errors
/// The [`ProduceError`] the delivery failed with.
pub async fn settle(topic: &str, delivery: DeliveryFuture) -> Result<(), ProduceError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((source, message))) => Err(delivery_error(topic, source, &message)),
        Err(_) => Err(ProduceError::Kafka {
            topic: topic.to_string(),
            source: RdKafkaError::Canceled,
        }),
    }
}

fn message_size(message: &OwnedMessage) -> usize {
    message.payload().map_or(0, <[u8]>::len) + message.key().map_or(0, <[u8]>::len)
}

/// The producer's `message.max.bytes`: the operator's setting, or
/// librdkafka's default.
pub fn max_message_bytes(kafka: &KafkaConfig) -> usize {
    kafka
        .client
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_value_key_and_headers() {
        let record = Outgoing {
            topic: "t",
            key: b"tenant|x",
            value: Some(&[0; 100]),
            id: Some("id-1"),
            tenant: Some("tenant"),
            request_id: None,
            timestamp_ms: None,
        };
        assert!(record.size() >= 100 + 8 + 4 + 6);
        assert!(record.size() < 100 + 8 + 4 + 6 + 200);
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let transient = RdKafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(kafka_error_kind(&transient), ErrorKind::Retryable);
        let transport = RdKafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(kafka_error_kind(&transport), ErrorKind::Retryable);
        let size = RdKafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(kafka_error_kind(&size), ErrorKind::Poison);
        let auth = RdKafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert_eq!(kafka_error_kind(&auth), ErrorKind::Fatal);
    }
}
