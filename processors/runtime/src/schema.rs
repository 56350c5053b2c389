//! Avro schemas and the Confluent wire format.
//!
//! Record values are `0x00 ‖ schema id (u32, big-endian) ‖ Avro datum`, the
//! format every Confluent-compatible deserializer reads. Registry traffic
//! (registering a schema under `<topic>-value`, fetching a writer schema by id)
//! goes through `schema_registry_converter`. Encoding and decoding use
//! apache-avro's schema-aware serde directly, with the schema resolved once:
//! the converter's per-call API clones the whole schema text on every record.
//!
//! Personal data is declared in the schemas, not in code: a field property
//! `"pii"` says what a field holds and how it is (or must be) protected. See
//! [`PiiTag`].

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, RwLock};

use apache_avro::Schema;
use apache_avro::schema::ResolvedSchema;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Magic byte of the Confluent wire format.
const MAGIC: u8 = 0;

/// The `"pii"` property of a schema field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PiiTag {
    /// Plaintext identifier that the privacy processor replaces by a pseudonym.
    Pseudonymize,
    /// Plaintext IP address that the privacy processor hashes (or drops).
    HashIp,
    /// Plaintext personal data that the privacy processor encrypts.
    Encrypt,
    /// A per-tenant, per-subject pseudonym.
    Pseudonym,
    /// A salted IP hash.
    IpHash,
    /// AES-256-GCM ciphertext under a per-subject key.
    Ciphertext,
}

/// Whether a tagged field is readable as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiiTreatment {
    /// Readable personal data: allowed only on restricted topics.
    Plaintext,
    /// Hashed, pseudonymised or encrypted.
    Protected,
}

impl PiiTag {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pseudonymize" => Self::Pseudonymize,
            "hash_ip" => Self::HashIp,
            "encrypt" => Self::Encrypt,
            "pseudonym" => Self::Pseudonym,
            "ip_hash" => Self::IpHash,
            "ciphertext" => Self::Ciphertext,
            _ => return None,
        })
    }

    /// Plaintext or protected.
    pub fn treatment(self) -> PiiTreatment {
        match self {
            Self::Pseudonymize | Self::HashIp | Self::Encrypt => PiiTreatment::Plaintext,
            Self::Pseudonym | Self::IpHash | Self::Ciphertext => PiiTreatment::Protected,
        }
    }
}

/// A field of a schema tagged as personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiiField {
    /// Dotted path from the root record, e.g. `actor.email`.
    pub path: String,
    /// The tag.
    pub tag: PiiTag,
    /// Plaintext or protected.
    pub treatment: PiiTreatment,
}

/// A schema file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Unreadable file.
    #[error("cannot read schema {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not a valid Avro schema, or a bad `pii` tag.
    #[error("schema {path} is invalid: {message}")]
    Invalid {
        /// The file (or subject).
        path: String,
        /// Why.
        message: String,
    },
    /// The registry refused or could not be reached.
    #[error("schema registry: {0}")]
    Registry(String),
    /// A record did not fit the schema (a bug in the processor, not bad input).
    #[error("cannot encode as {subject}: {message}")]
    Encode {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
}

/// A parsed `.avsc` file with its personal-data tags.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// The schema text as written.
    pub text: String,
    /// The parsed schema.
    pub schema: Schema,
    pii: Vec<PiiField>,
}

impl SchemaFile {
    /// Reads and validates a schema file.
    ///
    /// # Errors
    /// [`SchemaError::Read`] or [`SchemaError::Invalid`].
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses schema text; `origin` names it in errors.
    ///
    /// # Errors
    /// [`SchemaError::Invalid`].
    pub fn parse(origin: &str, text: &str) -> Result<Self, SchemaError> {
        let invalid = |message: String| SchemaError::Invalid {
            path: origin.to_string(),
            message,
        };
        let schema = Schema::parse_str(text).map_err(|e| invalid(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut pii = Vec::new();
        collect_pii(&json, "", &mut pii).map_err(invalid)?;
        Ok(Self {
            text: text.to_string(),
            schema,
            pii,
        })
    }

    /// Every field tagged as personal data.
    pub fn pii_fields(&self) -> &[PiiField] {
        &self.pii
    }
}

/// Walks records (also inside unions, arrays and maps) for `"pii"` tags.
fn collect_pii(
    node: &serde_json::Value,
    prefix: &str,
    out: &mut Vec<PiiField>,
) -> Result<(), String> {
    use serde_json::Value;
    match node {
        Value::Array(branches) => {
            for branch in branches {
                collect_pii(branch, prefix, out)?;
            }
        }
        Value::Object(map) => {
            if let Some(Value::Array(fields)) = map.get("fields") {
                for field in fields {
                    let name = field.get("name").and_then(Value::as_str).unwrap_or("?");
                    let path = if prefix.is_empty() {
                        name.to_string()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    if let Some(tag) = field.get("pii") {
                        let tag = tag
                            .as_str()
                            .and_then(PiiTag::parse)
                            .ok_or_else(|| format!("field `{path}` has unknown pii tag {tag}"))?;
                        out.push(PiiField {
                            path: path.clone(),
                            tag,
                            treatment: tag.treatment(),
                        });
                    }
                    if let Some(ty) = field.get("type") {
                        collect_pii(ty, &path, out)?;
                    }
                }
            }
            for nested in ["items", "values"] {
                if let Some(inner) = map.get(nested) {
                    collect_pii(inner, prefix, out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Connects to the registry named in the config.
///
/// # Errors
/// [`SchemaError::Registry`] when the URL is unusable.
pub fn registry_settings(url: &str) -> Result<SrSettings, SchemaError> {
    SrSettings::new_builder(url.to_string())
        .set_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| SchemaError::Registry(e.to_string()))
}

/// Encodes values of one topic in the wire format under a registered schema id.
pub struct AvroEncoder {
    subject: String,
    id: u32,
    /// serde_avro_fast writes straight from the value (no `Value` tree):
    /// encoding was a sixth of the privacy processor's time.
    schema: &'static serde_avro_fast::Schema,
}

impl AvroEncoder {
    /// Registers `schema` under `<topic>-value` (idempotent: an identical
    /// schema gets its existing id) and returns an encoder for it.
    ///
    /// # Errors
    /// [`SchemaError::Registry`] when the registry refuses (e.g. incompatible)
    /// or is unreachable.
    pub async fn register(
        registry: &SrSettings,
        topic: &str,
        schema: &SchemaFile,
    ) -> Result<Self, SchemaError> {
        let subject = format!("{topic}-value");
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema.text.clone());
        let registered = post_schema(registry, subject.clone(), supplied)
            .await
            .map_err(|e| SchemaError::Registry(format!("registering {subject}: {e}")))?;
        Self::with_id(subject, registered.id, schema.schema.clone())
    }

    /// An encoder for a schema whose id is already known.
    ///
    /// # Errors
    /// [`SchemaError::Invalid`] if the schema cannot be resolved.
    pub fn with_id(subject: String, id: u32, schema: Schema) -> Result<Self, SchemaError> {
        // A processor holds a handful of schemas for its whole life; leaking
        // them gives the serializer the 'static borrow it needs without a
        // self-referential struct.
        let schema = fast_schema(&schema).map_err(|message| SchemaError::Invalid {
            path: subject.clone(),
            message,
        })?;
        Ok(Self {
            subject,
            id,
            schema: Box::leak(Box::new(schema)),
        })
    }

    /// The registry id the encoded records carry.
    pub fn schema_id(&self) -> u32 {
        self.id
    }

    /// Encodes `value` as `0x00 ‖ id ‖ datum`.
    ///
    /// # Errors
    /// [`SchemaError::Encode`] when `value` does not fit the schema.
    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, SchemaError> {
        // Most records carry their original payload: start big enough that
        // the datum rarely has to grow the buffer.
        let mut out = Vec::with_capacity(1024);
        out.push(MAGIC);
        out.extend_from_slice(&self.id.to_be_bytes());
        let mut config = serde_avro_fast::ser::SerializerConfig::new(self.schema);
        serde_avro_fast::to_datum(value, out, &mut config).map_err(|e| SchemaError::Encode {
            subject: self.subject.clone(),
            message: e.to_string(),
        })
    }
}

/// Why a record value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The record has no value (a tombstone where none is expected): bad input.
    #[error("record has no value")]
    MissingValue,
    /// The record came from a topic the processor does not read: a
    /// topology mistake, judged as bad input so it cannot stop the processor.
    #[error("records from topic `{topic}` are not an input of this processor")]
    UnexpectedTopic {
        /// The record's topic.
        topic: String,
    },
    /// Not in the Confluent wire format: bad input.
    #[error("not in the Confluent wire format (magic byte or length)")]
    NotWireFormat,
    /// The registry answered that it has no schema with this id: bad input.
    #[error("schema id {id} is unknown to the registry")]
    UnknownSchema {
        /// The id in the record.
        id: u32,
    },
    /// The registry has the schema but it cannot be used (unparseable):
    /// bad input as far as this record is concerned.
    #[error("schema id {id} cannot be used: {source}")]
    BadSchema {
        /// The id in the record.
        id: u32,
        /// Why.
        source: apache_avro::Error,
    },
    /// The schema parses but the deserializer cannot use it: bad input.
    #[error("schema id {id} cannot be used: {reason}")]
    UnusableSchema {
        /// The id in the record.
        id: u32,
        /// Why.
        reason: String,
    },
    /// The registry could not be asked (down, slow, refusing): not the
    /// record's fault, so never a dead letter; retry later.
    #[error("schema id {id}: registry unavailable: {reason}")]
    RegistryUnavailable {
        /// The id in the record.
        id: u32,
        /// What the registry client said.
        reason: String,
    },
    /// The datum does not match its writer schema or the reader type: bad input.
    #[error("malformed Avro datum: {source}")]
    Datum {
        /// What the Avro reader said.
        source: apache_avro::Error,
    },
    /// The datum does not match its writer schema or the reader type: bad input.
    #[error("malformed Avro datum: {message}")]
    Malformed {
        /// What the Avro deserializer said.
        message: String,
    },
}

impl DecodeError {
    /// Retryable (registry unavailable) or poison (everything else).
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Self::RegistryUnavailable { .. } => crate::error::ErrorKind::Retryable,
            _ => crate::error::ErrorKind::Poison,
        }
    }

    /// The dead-letter reason code for a poison record.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingValue => "MISSING_VALUE",
            Self::UnknownSchema { .. } => "UNKNOWN_SCHEMA",
            Self::RegistryUnavailable { .. } => "REGISTRY_UNAVAILABLE",
            Self::NotWireFormat
            | Self::UnexpectedTopic { .. }
            | Self::BadSchema { .. }
            | Self::UnusableSchema { .. }
            | Self::Datum { .. }
            | Self::Malformed { .. } => "UNDECODABLE",
        }
    }
}

/// What the registry said about a schema id.
enum Lookup {
    Found(Arc<WriterSchema>),
    Unknown,
}

struct WriterSchema {
    schema: &'static Schema,
    resolved: ResolvedSchema<'static>,
    /// The same schema for serde_avro_fast, which deserializes straight into
    /// the reader type: through apache-avro's `Value` tree, decoding was a
    /// fifth of the privacy processor's and a sixth of each projector's time.
    fast: serde_avro_fast::Schema,
}

impl WriterSchema {
    fn new(id: u32, schema: Schema) -> Result<Self, DecodeError> {
        let fast = fast_schema(&schema).map_err(|message| DecodeError::UnusableSchema {
            id,
            reason: message,
        })?;
        let schema: &'static Schema = Box::leak(Box::new(schema));
        let resolved = ResolvedSchema::try_from(schema)
            .map_err(|source| DecodeError::BadSchema { id, source })?;
        Ok(Self {
            schema,
            resolved,
            fast,
        })
    }
}

/// `schema` for serde_avro_fast, from its full JSON form (logical types
/// and names kept).
fn fast_schema(schema: &Schema) -> Result<serde_avro_fast::Schema, String> {
    serde_json::to_string(schema)
        .map_err(|e| e.to_string())?
        .parse()
        .map_err(|e: serde_avro_fast::schema::SchemaError| e.to_string())
}

/// Decodes wire-format values, fetching writer schemas by id on first sight.
#[derive(Clone)]
pub struct AvroDecoder {
    registry: SrSettings,
    schemas: Arc<RwLock<HashMap<u32, Arc<WriterSchema>>>>,
    /// Ids the registry answered 404 for.
    unknown: Arc<RwLock<HashSet<u32>>>,
}

impl AvroDecoder {
    /// A decoder backed by `registry`.
    pub fn new(registry: SrSettings) -> Self {
        Self {
            registry,
            schemas: Arc::default(),
            unknown: Arc::default(),
        }
    }

    /// Splits the wire header off a value.
    ///
    /// # Errors
    /// [`DecodeError::NotWireFormat`].
    pub fn schema_id(bytes: &[u8]) -> Result<u32, DecodeError> {
        match bytes {
            [MAGIC, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(DecodeError::NotWireFormat),
        }
    }

    async fn writer_schema(&self, id: u32) -> Result<Arc<WriterSchema>, DecodeError> {
        match self.lookup(id).await? {
            Lookup::Found(writer) => Ok(writer),
            Lookup::Unknown => Err(DecodeError::UnknownSchema { id }),
        }
    }

    async fn lookup(&self, id: u32) -> Result<Lookup, DecodeError> {
        if let Some(found) = self.read_cache(id) {
            return Ok(found);
        }
        let registered = match get_schema_by_id(id, &self.registry).await {
            Ok(registered) => registered,
            // The client reports statuses only in its message: a 404 is the
            // registry's positive answer that the id does not exist.
            Err(e) if !e.retriable && e.error.contains("status 404") => {
                if let Ok(mut unknown) = self.unknown.write() {
                    unknown.insert(id);
                }
                return Ok(Lookup::Unknown);
            }
            Err(e) => {
                return Err(DecodeError::RegistryUnavailable {
                    id,
                    reason: e.error,
                });
            }
        };
        let schema = Schema::parse_str(&registered.schema)
            .map_err(|source| DecodeError::BadSchema { id, source })?;
        let entry = Arc::new(WriterSchema::new(id, schema)?);
        if let Ok(mut cache) = self.schemas.write() {
            cache.insert(id, entry.clone());
        }
        Ok(Lookup::Found(entry))
    }

    fn read_cache(&self, id: u32) -> Option<Lookup> {
        if let Some(found) = self.schemas.read().ok()?.get(&id).cloned() {
            return Some(Lookup::Found(found));
        }
        self.unknown
            .read()
            .ok()?
            .contains(&id)
            .then_some(Lookup::Unknown)
    }

    /// Makes sure the writer schema of `bytes` is known (cached, or known
    /// not to exist), asking the registry if needed. The runtime calls this
    /// before a record reaches its processor, so that the processor's
    /// synchronous decode never waits on the network.
    ///
    /// # Errors
    /// [`DecodeError::RegistryUnavailable`] when the registry could not
    /// answer; anything else about the record is left to the decode.
    pub async fn prepare(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        let Ok(id) = Self::schema_id(bytes) else {
            return Ok(());
        };
        match self.lookup(id).await {
            Err(e @ DecodeError::RegistryUnavailable { .. }) => Err(e),
            _ => Ok(()),
        }
    }

    /// Decodes with writer schemas already known ([`AvroDecoder::prepare`]).
    ///
    /// # Errors
    /// [`DecodeError::RegistryUnavailable`] if the schema was never fetched;
    /// otherwise what is wrong with the record.
    pub fn decode_cached<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let id = Self::schema_id(bytes)?;
        match self.read_cache(id) {
            Some(Lookup::Found(writer)) => Self::read_with(&writer, bytes),
            Some(Lookup::Unknown) => Err(DecodeError::UnknownSchema { id }),
            None => Err(DecodeError::RegistryUnavailable {
                id,
                reason: "writer schema not fetched before decoding".into(),
            }),
        }
    }

    /// Decodes a value into `T`, whose serde shape must match the writer
    /// schema's field names (Trellis's record types are generated from the
    /// same `.avsc` files).
    ///
    /// # Errors
    /// [`DecodeError`] for anything malformed; never panics on input.
    pub async fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let id = Self::schema_id(bytes)?;
        let writer = self.writer_schema(id).await?;
        Self::read_with(&writer, bytes)
    }

    /// Decodes from synchronous code (a [`crate::Processor`]): writer schemas
    /// come from the cache, and a schema id seen for the first time is fetched
    /// by blocking this worker thread (once per id for the process's life).
    ///
    /// # Errors
    /// As [`AvroDecoder::decode`]; outside a multi-threaded Tokio runtime an
    /// uncached id is [`DecodeError::RegistryUnavailable`].
    pub fn decode_blocking<'b, T: Deserialize<'b>>(
        &self,
        bytes: &'b [u8],
    ) -> Result<T, DecodeError> {
        let id = Self::schema_id(bytes)?;
        let writer = match self.read_cache(id) {
            Some(Lookup::Found(writer)) => writer,
            Some(Lookup::Unknown) => return Err(DecodeError::UnknownSchema { id }),
            None => {
                let handle = tokio::runtime::Handle::try_current().map_err(|_| {
                    DecodeError::RegistryUnavailable {
                        id,
                        reason: "schema not cached and no runtime to fetch it".into(),
                    }
                })?;
                tokio::task::block_in_place(|| handle.block_on(self.writer_schema(id)))?
            }
        };
        Self::read_with(&writer, bytes)
    }

    /// Caches `schema` under `id` without asking the registry (tests, tools
    /// that read a topic whose schema they ship).
    ///
    /// # Errors
    /// [`DecodeError::BadSchema`] or [`DecodeError::UnusableSchema`] if the
    /// schema cannot be resolved or used.
    pub fn insert(&self, id: u32, schema: Schema) -> Result<(), DecodeError> {
        let writer = WriterSchema::new(id, schema)?;
        if let Ok(mut cache) = self.schemas.write() {
            cache.insert(id, Arc::new(writer));
        }
        Ok(())
    }

    fn read_with<'b, T: Deserialize<'b>>(
        writer: &WriterSchema,
        bytes: &'b [u8],
    ) -> Result<T, DecodeError> {
        let datum = &bytes[5..];
        let mut config = serde_avro_fast::de::DeserializerConfig::new(&writer.fast);
        // An array or map block declares its length up front: cap it by the
        // datum's size, so a forged count of zero-byte items (nulls) cannot
        // spin the decoder through a billion of them.
        config.max_seq_size = datum.len();
        let mut state = serde_avro_fast::de::DeserializerState::with_config(
            serde_avro_fast::de::read::SliceRead::new(datum),
            config,
        );
        T::deserialize(state.deserializer()).map_err(|e| DecodeError::Malformed {
            message: e.to_string(),
        })
    }

    /// Decodes into a generic JSON value (tools, tests, access exports).
    ///
    /// # Errors
    /// As [`AvroDecoder::decode`].
    pub async fn decode_json(&self, bytes: &[u8]) -> Result<serde_json::Value, DecodeError> {
        let id = Self::schema_id(bytes)?;
        let writer = self.writer_schema(id).await?;
        let value = apache_avro::reader::datum::GenericDatumReader::builder(writer.schema)
            .resolved_writer_schemata(writer.resolved.clone())
            .build()
            .and_then(|reader| reader.read_value(&mut &bytes[5..]))
            .map_err(|source| DecodeError::Datum { source })?;
        serde_json::Value::try_from(value).map_err(|source| DecodeError::Datum { source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pii_tags_in_nested_optional_records() {
        let schema = SchemaFile::parse(
            "t",
            r#"{"type":"record","name":"E","fields":[
                {"name":"id","type":"string"},
                {"name":"actor","type":["null",{"type":"record","name":"A","fields":[
                    {"name":"email","type":["null","string"],"pii":"pseudonymize"},
                    {"name":"name","type":["null","string"],"pii":"encrypt"}]}]},
                {"name":"ip","type":["null","string"],"pii":"ip_hash"}]}"#,
        )
        .unwrap();
        let paths: Vec<_> = schema
            .pii_fields()
            .iter()
            .map(|f| (f.path.as_str(), f.treatment))
            .collect();
        assert_eq!(
            paths,
            [
                ("actor.email", PiiTreatment::Plaintext),
                ("actor.name", PiiTreatment::Plaintext),
                ("ip", PiiTreatment::Protected)
            ]
        );
    }

    #[test]
    fn rejects_unknown_pii_tag() {
        let err = SchemaFile::parse(
            "t",
            r#"{"type":"record","name":"E","fields":[{"name":"x","type":"string","pii":"maybe"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown pii tag"), "{err}");
    }

    #[test]
    fn encodes_wire_format_header() {
        #[derive(Serialize)]
        struct E {
            id: String,
        }
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"E","fields":[{"name":"id","type":"string"}]}"#,
        )
        .unwrap();
        let encoder = AvroEncoder::with_id("t-value".into(), 7, schema).unwrap();
        let bytes = encoder.encode(&E { id: "ab".into() }).unwrap();
        assert_eq!(bytes, [0, 0, 0, 0, 7, 4, b'a', b'b']);
        assert_eq!(AvroDecoder::schema_id(&bytes).unwrap(), 7);
        assert!(AvroDecoder::schema_id(&[1, 0]).is_err());
    }

    #[test]
    fn a_forged_array_length_is_refused_at_once() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct R {
            xs: Vec<()>,
        }
        let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9").unwrap());
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"R","fields":[{"name":"xs","type":{"type":"array","items":"null"}}]}"#,
        )
        .unwrap();
        decoder.insert(3, schema).unwrap();
        // One block of 999,999,999 nulls (zero bytes each): under the
        // deserializer's own limit (10^9), and read item by item it takes
        // seconds.
        let mut bytes = vec![0, 0, 0, 0, 3];
        let mut count = 999_999_999u64 << 1; // zigzag
        while count >= 0x80 {
            bytes.push((count as u8) | 0x80);
            count >>= 7;
        }
        bytes.push(count as u8);
        let started = std::time::Instant::now();
        let error = decoder.decode_cached::<R>(&bytes).unwrap_err();
        assert_eq!(error.reason(), "UNDECODABLE", "{error}");
        assert!(
            started.elapsed() < std::time::Duration::from_millis(200),
            "refused only after {:?}",
            started.elapsed()
        );
    }
}
