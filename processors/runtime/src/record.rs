//! Input records as processors see them: borrowed from a consumed message,
//! or built from an owned copy (tools, tests, the offline runner).

use rdkafka::Message;
use rdkafka::Timestamp;
use rdkafka::message::{BorrowedMessage, Headers};
use serde::Deserialize;
use trellis_records::OriginalHeader;

use crate::schema::{AvroDecoder, DecodeError};

/// Headers of an input record. A consumed message's are parsed only when
/// read: librdkafka parses a message's header block into a list on the
/// first `rd_kafka_message_headers` call, and a processor that emits
/// nothing for a record (analytics, most of the time) never needs them.
#[derive(Clone, Copy)]
enum HeaderView<'a> {
    Kafka(&'a BorrowedMessage<'a>),
    Slice(&'a [(&'a str, &'a [u8])]),
}

/// One input record as a processor sees it.
pub struct InputRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp in ms since the epoch: the processing clock, so that
    /// replay sees the same time as the live run.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<&'a [u8]>,
    /// Value bytes.
    pub value: Option<&'a [u8]>,
    headers: HeaderView<'a>,
}

impl<'a> InputRecord<'a> {
    pub(crate) fn from_kafka(message: &'a BorrowedMessage<'a>) -> Self {
        Self {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: match message.timestamp() {
                Timestamp::NotAvailable => None,
                Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            },
            key: message.key(),
            value: message.payload(),
            headers: HeaderView::Kafka(message),
        }
    }

    /// A record built by hand (tests, tools).
    pub fn new(
        topic: &'a str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
        headers: &'a [(&'a str, &'a [u8])],
    ) -> Self {
        Self {
            topic,
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers: HeaderView::Slice(headers),
        }
    }

    /// The value decoded as Avro into `T` (for [`crate::processor::Input`]).
    ///
    /// # Errors
    /// [`DecodeError::MissingValue`] for a record without a value; otherwise
    /// as [`AvroDecoder::decode_blocking`].
    pub fn avro<T: Deserialize<'a>>(&self, decoder: &AvroDecoder) -> Result<T, DecodeError> {
        decoder.decode_blocking(self.value.ok_or(DecodeError::MissingValue)?)
    }

    /// [`DecodeError::UnexpectedTopic`] for this record.
    pub fn unexpected_topic(&self) -> DecodeError {
        DecodeError::UnexpectedTopic {
            topic: self.topic.to_string(),
        }
    }

    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        match self.headers {
            HeaderView::Kafka(message) => message
                .headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value),
            HeaderView::Slice(headers) => headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v),
        }
    }

    /// Calls `visit` with every header in order (a header without a value
    /// is seen as empty).
    pub fn visit_headers(&self, mut visit: impl FnMut(&str, &[u8])) {
        match self.headers {
            HeaderView::Kafka(message) => {
                for h in message.headers().iter().flat_map(|headers| headers.iter()) {
                    visit(h.key, h.value.unwrap_or_default());
                }
            }
            HeaderView::Slice(headers) => {
                for (k, v) in headers {
                    visit(k, v);
                }
            }
        }
    }

    /// The first header named `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header, copied (for dead letters).
    pub fn headers_owned(&self) -> Vec<OriginalHeader> {
        let mut owned = Vec::new();
        self.visit_headers(|key, value| {
            owned.push(OriginalHeader {
                key: key.to_string(),
                value: value.to_vec(),
            });
        });
        owned
    }
}

/// A record held in memory: the input of [`crate::offline::run_offline`].
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Value bytes.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl OwnedRecord {
    /// A record without headers (tests, tools).
    pub fn new(
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            headers: Vec::new(),
        }
    }

    /// Copies a consumed message.
    pub fn from_message<M: Message>(message: &M) -> Self {
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: match message.timestamp() {
                Timestamp::NotAvailable => None,
                Timestamp::CreateTime(t) | Timestamp::LogAppendTime(t) => Some(t),
            },
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
