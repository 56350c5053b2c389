//! The privacy processor: no plaintext personal data past collection.
//!
//! It reads `collected` (restricted, short retention) and writes `protected`
//! (kept for good), where every personal-data field of the envelope is
//! transformed as its schema's `pii` tag says:
//!
//! - `pseudonymize` (the actor's identifier) → a per-tenant pseudonym drawn
//!   from the subject's random secret material ([`crypto`]);
//! - `encrypt` (name, email, free-text answers, the original payload) →
//!   AES-256-GCM under the subject's data key, AAD binding tenant, field,
//!   event id and key id;
//! - `hash_ip` → salted SHA-256 with the salt's id, or nothing at all for
//!   tenants configured `no_ip`.
//!
//! It also owns the key [`vault`] and answers the GDPR saga's commands on
//! `gdpr.shred_requests`: an erasure shreds the subject's material (and
//! rotates the tenant's KEK, so no surviving copy opens); an access request
//! reports the subject's pseudonym and key id. Every key creation, rotation
//! and shred is an event on `audit.events`.
//!
//! # Delivery semantics
//! Outputs are a function of the input and the vault: the same record gives
//! byte-identical output (deterministic nonces), and new key material is
//! durable before any output refers to it. Commands keep a receipt of what
//! they produced, so a re-run answers identically. Input duplicates by id
//! were dropped by the collector; a re-run of a batch after a crash emits the
//! same ids, which consumers drop (promise 3). Events of an erased subject
//! received before the erasure are dropped on replay, never re-protected.

pub mod crypto;
pub mod export;
pub mod links;
pub mod reveal;
pub mod vault;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus::IntCounter;
use serde::{Deserialize, Serialize};
use trellis_records::{
    AUDIT_EVENTS_TOPIC, AuditEvent, COLLECTED_TOPIC, CollectedEvent, IpHash,
    PARTICIPANT_ACKS_TOPIC, PROTECTED_TOPIC, ParticipantAck, ProtectedEvent, ProtectedResult,
    SHRED_REQUESTS_TOPIC, ShredRequest,
};
use trellis_runtime::build::{Build, Context};
use trellis_runtime::participant::{Acks, Receipts, answer_once};
use trellis_runtime::pipeline::{ProcessError, StartError};
use trellis_runtime::schema::{AvroDecoder, AvroEncoder, DecodeError, PiiTag, SchemaFile};
use trellis_runtime::secret::{SecretFormat, SecretSpec, Secrets};
use trellis_runtime::{Emitter, InputRecord, OutputRecord, Processor, StateTxn};

use crate::crypto::{IpHasher, KEY_LEN, SubjectKeys};
use crate::vault::{Vault, VaultError};

/// The processor's name in topology.yaml, metrics and logs.
pub const NAME: &str = "privacy";

/// Secret: seals the vault's KEK file.
pub const MASTER_KEY: &str = "TRELLIS_VAULT_MASTER_KEY";
/// Secret: keys the vault's subject lookup.
pub const INDEX_KEY: &str = "TRELLIS_SUBJECT_INDEX_KEY";
/// Secret: the IP salt (rotate by changing it; the salt id changes with it).
pub const IP_SALT: &str = "TRELLIS_IP_SALT";

/// Secrets the privacy processor refuses to start without.
pub const SECRETS: &[SecretSpec] = &[
    SecretSpec {
        env: MASTER_KEY,
        format: SecretFormat::Hex32,
        purpose: "seals the key vault's key-encryption keys",
    },
    SecretSpec {
        env: INDEX_KEY,
        format: SecretFormat::Hex32,
        purpose: "keys the vault's subject lookup index",
    },
    SecretSpec {
        env: IP_SALT,
        format: SecretFormat::Hex32,
        purpose: "salt for hashing client IP addresses",
    },
];

/// Every `pii`-tagged field of `collected` and what this processor does with
/// it. The schema declares what is personal data; this table is checked
/// against it at start-up, so a field tagged in the schema that the processor
/// does not handle stops it instead of leaking.
pub const HANDLED_FIELDS: &[(&str, PiiTag)] = &[
    ("actor.id", PiiTag::Pseudonymize),
    ("actor.name", PiiTag::Encrypt),
    ("actor.email", PiiTag::Encrypt),
    ("ip", PiiTag::HashIp),
    ("result.response", PiiTag::Encrypt),
    ("payload", PiiTag::Encrypt),
];

/// Checks that the processor handles exactly the personal-data fields the
/// `collected` schema declares, with the declared treatment.
///
/// # Errors
/// A message naming each field that differs.
pub fn check_schema(schema: &SchemaFile) -> Result<(), String> {
    let declared: BTreeSet<(String, PiiTag)> = schema
        .pii_fields()
        .iter()
        .map(|f| (f.path.clone(), f.tag))
        .collect();
    let handled: BTreeSet<(String, PiiTag)> = HANDLED_FIELDS
        .iter()
        .map(|(path, tag)| ((*path).to_string(), *tag))
        .collect();
    let unhandled: Vec<String> = declared
        .difference(&handled)
        .map(|(p, t)| format!("{p} ({t:?})"))
        .collect();
    let stale: Vec<String> = handled
        .difference(&declared)
        .map(|(p, t)| format!("{p} ({t:?})"))
        .collect();
    if unhandled.is_empty() && stale.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the `collected` schema and the privacy processor disagree on personal data: tagged but not handled: [{}]; handled but not tagged: [{}]",
        unhandled.join(", "),
        stale.join(", ")
    ))
}

/// The privacy processor's `settings` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The key vault's directory. Not state from the log: it holds the only
    /// copies of subject key material (see [`vault`]). Back it up only as it
    /// is (everything in it is sealed) and never restore it over a newer one.
    pub vault_dir: PathBuf,
    /// Tenants whose IP addresses are dropped rather than hashed.
    #[serde(default)]
    pub no_ip_tenants: Vec<String>,
    /// The operators' decrypt gate ([`reveal`]); off when absent.
    #[serde(default)]
    pub reveal: Option<reveal::RevealSettings>,
    /// Per tenant, identifiers that name one person ([`links`]).
    #[serde(default)]
    pub identity_links: links::IdentityLinks,
    /// Where access requests' events go, decrypted ([`export`]): the gdpr
    /// processor's `export_dir`, so both halves of an export sit together.
    /// Without it an access request reports the subject's key only.
    #[serde(default)]
    pub export_dir: Option<PathBuf>,
}

/// The privacy processor's logic.
pub struct Privacy {
    vault: Arc<Mutex<Vault>>,
    links: links::IdentityLinks,
    exporter: Option<export::Exporter>,
    ip: IpHasher,
    no_ip: BTreeSet<String>,
    protected: AvroEncoder,
    acks: Acks,
    audit: AvroEncoder,
    topics: Topics,
    erased_dropped: IntCounter,
}

struct Topics {
    protected: Arc<str>,
    audit: Arc<str>,
}

/// What the runtime decodes each input into.
// Built once per record and moved straight into `process`: boxing the large
// variant would add an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Input {
    /// An event to protect (`collected`).
    Event(CollectedEvent),
    /// A saga command (`gdpr.shred_requests`).
    Command(ShredRequest),
}

impl trellis_runtime::pipeline::Input<'_> for Input {
    fn decode(record: &InputRecord<'_>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
        if record.topic == SHRED_REQUESTS_TOPIC {
            record.avro(avro).map(Self::Command)
        } else {
            record.avro(avro).map(Self::Event)
        }
    }
}

/// Command receipts live in the vault, durable before the shred they
/// record (a crash mid-shred is finished on restart, then answered once).
struct VaultReceipts(Arc<Mutex<Vault>>);

impl Receipts for VaultReceipts {
    fn receipt(&mut self, command_id: &str) -> Result<Option<Vec<u8>>, ProcessError> {
        let vault = self.0.lock().unwrap_or_else(|e| e.into_inner());
        vault.receipt(command_id).map_err(fatal)
    }

    fn keep(&mut self, command_id: &str, receipt: Vec<u8>) -> Result<(), ProcessError> {
        let vault = self.0.lock().unwrap_or_else(|e| e.into_inner());
        vault.put_receipt(command_id, &receipt).map_err(fatal)
    }
}

/// What a command produced, stored so a re-run emits exactly the same.
#[derive(Serialize, Deserialize)]
struct Receipt {
    ack: ParticipantAck,
    audit: Vec<AuditEvent>,
}

fn secret_array(secrets: &Secrets, name: &str) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    // SecretFormat::Hex32 guarantees the length.
    out.copy_from_slice(secrets.get(name).expose());
    out
}

fn fatal(e: VaultError) -> ProcessError {
    ProcessError::fatal("key vault", e)
}

/// Encoders the processor writes with.
pub struct Encoders {
    /// `protected`.
    pub protected: AvroEncoder,
    /// `gdpr.participant_acks`.
    pub acks: AvroEncoder,
    /// `audit.events`.
    pub audit: AvroEncoder,
}

impl Privacy {
    /// A privacy processor over `vault`.
    pub fn new(
        settings: &Settings,
        vault: Arc<Mutex<Vault>>,
        ip_salt: [u8; KEY_LEN],
        encoders: Encoders,
        erased_dropped: IntCounter,
    ) -> Self {
        Self {
            vault,
            links: settings.identity_links.clone(),
            exporter: None,
            ip: IpHasher::new(ip_salt),
            no_ip: settings.no_ip_tenants.iter().cloned().collect(),
            protected: encoders.protected,
            acks: Acks::new(NAME, Arc::from(PARTICIPANT_ACKS_TOPIC), encoders.acks),
            audit: encoders.audit,
            topics: Topics {
                protected: Arc::from(PROTECTED_TOPIC),
                audit: Arc::from(AUDIT_EVENTS_TOPIC),
            },
            erased_dropped,
        }
    }

    /// Exports access requests' events with `exporter`.
    pub fn with_exporter(mut self, exporter: export::Exporter) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// The vault, shared with the decrypt gate. A poisoned lock is taken
    /// over: vault operations leave it consistent on disk at every step.
    fn vault(&self) -> MutexGuard<'_, Vault> {
        self.vault.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit_audit(&self, out: &mut Emitter, event: &AuditEvent) -> Result<(), ProcessError> {
        out.emit(OutputRecord {
            topic: self.topics.audit.clone(),
            key: event.tenant_id.clone().unwrap_or_default().into_bytes(),
            value: Some(self.encode(&self.audit, event)?),
            id: event.event_id.clone(),
            tenant: event.tenant_id.clone(),
        });
        Ok(())
    }

    fn encode<T: Serialize>(
        &self,
        encoder: &AvroEncoder,
        value: &T,
    ) -> Result<Vec<u8>, ProcessError> {
        encoder.encode(value).map_err(ProcessError::from)
    }

    fn protect(
        &mut self,
        record: &InputRecord<'_>,
        event: CollectedEvent,
        at: i64,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let tenant = event.tenant_id.as_str();
        let (kind, id) = self
            .links
            .canonical(tenant, &event.actor.id_kind, &event.actor.id);
        let (kind, id) = (kind.as_ref(), id.as_ref());
        // Each vault call takes the lock for that call only (the decrypt gate
        // shares the vault); never hold a guard across another call.
        let entry = self.vault().entry(tenant, kind, id);
        let erased = self.vault().entry_erased_at(&entry);
        if let Some(erased_at) = erased
            && event.received_at <= erased_at
        {
            self.erased_dropped.inc();
            return Ok(());
        }
        let coordinate = format!("{}/{}/{}", record.topic, record.partition, record.offset);
        let lookup = self
            .vault()
            .entry_subject(tenant, entry, &coordinate)
            .map_err(fatal)?;
        let keys = &lookup.keys;
        if let Some(version) = lookup.kek_created {
            let event = self.key_event(
                tenant,
                "kek.created",
                None,
                at,
                [("version", version.to_string())],
            );
            self.emit_audit(out, &event)?;
        }
        if lookup.subject_created {
            let event = self.key_event(
                tenant,
                "key.created",
                Some(keys.pseudonym()),
                at,
                [("key_id", keys.key_id().to_string())],
            );
            self.emit_audit(out, &event)?;
        }
        let key = format!("{tenant}|{}", keys.pseudonym()).into_bytes();
        let id = format!("{tenant}/{}", event.event_id);
        let protected = self.protected_event(event, keys);
        out.emit(OutputRecord {
            topic: self.topics.protected.clone(),
            key,
            value: Some(self.encode(&self.protected, &protected)?),
            id,
            tenant: Some(protected.tenant_id),
        });
        Ok(())
    }

    /// The protected form of `event`: every `pii` field of collected.avsc
    /// pseudonymised, sealed or hashed. It takes the event's fields rather
    /// than copying them.
    pub fn protected_event(&self, event: CollectedEvent, keys: &SubjectKeys) -> ProtectedEvent {
        let tenant = event.tenant_id.as_str();
        let seal =
            |field: &str, text: &str| keys.seal(tenant, field, &event.event_id, text.as_bytes());
        let actor_name = event.actor.name.as_deref().map(|n| seal("actor.name", n));
        let actor_email = event.actor.email.as_deref().map(|e| seal("actor.email", e));
        let ip_hash = match &event.ip {
            Some(ip) if !self.no_ip.contains(tenant) => Some(IpHash {
                salt_id: self.ip.salt_id().to_string(),
                hash: self.ip.hash(tenant, ip),
            }),
            _ => None,
        };
        let result = event.result.map(|r| ProtectedResult {
            success: r.success,
            completion: r.completion,
            score_scaled: r.score_scaled,
            score_raw: r.score_raw,
            score_min: r.score_min,
            score_max: r.score_max,
            duration_ms: r.duration_ms,
            response: r.response.as_deref().map(|t| seal("result.response", t)),
        });
        let payload = seal("payload", &event.payload);
        ProtectedEvent {
            event_id: event.event_id,
            tenant_id: event.tenant_id,
            source: event.source,
            kind: event.kind,
            occurred_at: event.occurred_at,
            received_at: event.received_at,
            request_id: event.request_id,
            learner: keys.pseudonym().to_string(),
            subject_key_id: keys.key_id().to_string(),
            actor_name,
            actor_email,
            ip_hash,
            verb: event.verb,
            object_id: event.object_id,
            object_type: event.object_type,
            course_id: event.course_id,
            registration: event.registration,
            result,
            voided_event_id: event.voided_event_id,
            payload,
        }
    }

    fn key_event<const N: usize>(
        &self,
        tenant: &str,
        action: &str,
        subject: Option<&str>,
        at: i64,
        details: [(&str, String); N],
    ) -> AuditEvent {
        let details: BTreeMap<String, String> = details
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let particular = details.values().cloned().collect::<Vec<_>>().join("/");
        AuditEvent {
            event_id: format!("{NAME}/{action}/{tenant}/{particular}"),
            tenant_id: Some(tenant.to_string()),
            actor: NAME.to_string(),
            action: action.to_string(),
            subject: subject.map(str::to_string),
            field: None,
            reason: None,
            occurred_at: at,
            details,
        }
    }

    fn command(
        &mut self,
        record: &InputRecord<'_>,
        request: ShredRequest,
        at: i64,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if request.kind != "erasure" && request.kind != "access" {
            out.dead_letter(
                record,
                "INVALID_COMMAND",
                format!("unknown command kind `{}`", request.kind),
                Some(request.tenant_id),
            );
            return Ok(());
        }
        let mut receipts = VaultReceipts(self.vault.clone());
        let receipt: Receipt = answer_once(&mut receipts, &request.command_id, |_| {
            self.execute(&request, at)
        })?;
        for event in &receipt.audit {
            self.emit_audit(out, event)?;
        }
        self.acks.emit(out, &receipt.ack)
    }

    fn execute(&mut self, request: &ShredRequest, at: i64) -> Result<Receipt, ProcessError> {
        let tenant = request.tenant_id.as_str();
        let (kind, id) =
            self.links
                .canonical(tenant, &request.subject_id_kind, &request.subject_id);
        let (kind, id) = (kind.as_ref(), id.as_ref());
        let mut ack = self
            .acks
            .ack(&request.command_id, &request.request_id, tenant, None, at);
        ack.outcome = "not_found".into();
        ack.detail = "the vault holds no key material for this subject".into();
        let mut audit = Vec::new();
        if request.kind == "access" {
            let existing = self.vault().existing(tenant, kind, id).map_err(fatal)?;
            if let Some(keys) = existing {
                ack.outcome = "done".into();
                ack.detail = format!(
                    "subject known; its fields are sealed under key {}",
                    keys.key_id()
                );
                ack.learner = Some(keys.pseudonym().to_string());
                if let Some(exporter) = &self.exporter {
                    // Rare, and answered once (the receipt serves re-sends):
                    // reading `protected` here holds the loop for its
                    // duration rather than answering before the file exists.
                    let exported = tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current().block_on(exporter.export(
                            tenant,
                            &keys,
                            &request.request_id,
                            &request.command_id,
                        ))
                    })
                    .map_err(|e| ProcessError::fatal("exporting a subject's events", e))?;
                    ack.records_affected = i64::try_from(exported.events).unwrap_or(i64::MAX);
                    ack.detail = format!(
                        "{} events exported decrypted ({} bytes) from key {}",
                        exported.events,
                        exported.bytes,
                        keys.key_id()
                    );
                    ack.export = Some(
                        serde_json::json!({
                            "events_file": exported.path.display().to_string(),
                            "events": exported.events,
                            "bytes": exported.bytes,
                        })
                        .to_string(),
                    );
                }
            }
            return Ok(Receipt { ack, audit });
        }
        let Some(plan) = self.vault().plan_shred(tenant, kind, id).map_err(fatal)? else {
            if self.vault().erased_at(tenant, kind, id).is_some() {
                // Erased already: by this very command if it died mid-shred
                // (its receipt was written before anything was destroyed),
                // otherwise by an earlier request.
                if let Some(bytes) = self
                    .vault()
                    .pending_receipt(&request.command_id)
                    .map_err(fatal)?
                {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| ProcessError::fatal("reading a pending receipt", e));
                }
                ack.outcome = "done".into();
                ack.detail = "subject was already erased".into();
            }
            return Ok(Receipt { ack, audit });
        };
        ack.outcome = "done".into();
        ack.detail = format!(
            "subject key material destroyed; tenant KEK rotated to v{} ({} subjects re-wrapped)",
            plan.kek_current, plan.rewrapped
        );
        ack.learner = Some(plan.pseudonym.clone());
        ack.shredded_key_ids = vec![plan.key_id.clone()];
        ack.records_affected = 1;
        let mut shred_event = self.key_event(
            tenant,
            "key.shredded",
            Some(&plan.pseudonym),
            at,
            [("key_id", plan.key_id.clone())],
        );
        shred_event
            .details
            .insert("request_id".into(), request.request_id.clone());
        audit.push(shred_event);
        let retired = plan
            .kek_retired
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        audit.push(self.key_event(
            tenant,
            "kek.rotated",
            None,
            at,
            [
                ("current", plan.kek_current.to_string()),
                ("retired", retired),
            ],
        ));
        let receipt = Receipt { ack, audit };
        let bytes = serde_json::to_vec(&receipt)
            .map_err(|e| ProcessError::fatal("writing a pending receipt", e))?;
        let mut vault = self.vault();
        vault
            .put_pending_receipt(&request.command_id, &bytes)
            .map_err(fatal)?;
        let shredded = vault.shred(tenant, kind, id, at).map_err(fatal)?;
        if shredded.as_ref() != Some(&plan) {
            // The vault has one writer, this processor: nothing can change
            // it between the plan and the shred.
            return Err(ProcessError::fatal(
                "shredding a subject",
                "the vault's shred differs from its plan (subject, KEK version or survivors)",
            ));
        }
        Ok(receipt)
    }
}

impl Processor for Privacy {
    type Input<'r> = Input;

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        input: Input,
        _txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        // The record's timestamp is the processing clock: a replay sees the
        // same time as the live run.
        let at = record.timestamp_ms.unwrap_or_default();
        match input {
            Input::Command(request) => self.command(record, request, at, out),
            Input::Event(event) => self.protect(record, event, at, out),
        }
    }
}

/// Identity links are the only settings checked beyond their types.
impl trellis_runtime::build::Settings for Settings {
    fn check(&self) -> Result<(), Vec<String>> {
        self.identity_links.check()
    }
}

/// The privacy processor's one constructor: the binary, the bench and the
/// tests build it here.
impl Build for Privacy {
    const NAME: &'static str = NAME;
    const SECRETS: &'static [SecretSpec] = SECRETS;
    const OWNS: &'static str =
        "the key vault: a subject's keys and their shredding have one writer";
    const PATHS: &'static [(&'static str, &'static str)] = &[
        ("vault_dir", "state/privacy-vault"),
        ("export_dir", "exports"),
    ];
    type Settings = Settings;
    type Processor = Self;

    async fn build(ctx: &mut Context<'_, Settings>) -> Result<Self, StartError> {
        let settings = ctx.settings;
        let collected_schema = ctx
            .topology
            .topic(COLLECTED_TOPIC)
            .ok()
            .and_then(|t| t.schema.clone())
            .ok_or_else(|| StartError::Misconfigured("topic `collected` has no schema".into()))?;
        let collected_schema = SchemaFile::load(&ctx.topology.schema_path(&collected_schema))
            .map_err(|e| StartError::Misconfigured(e.to_string()))?;
        check_schema(&collected_schema).map_err(StartError::Misconfigured)?;
        let vault = Arc::new(Mutex::new(
            Vault::open(
                &settings.vault_dir,
                ctx.secrets.get(MASTER_KEY).expose(),
                ctx.secrets.get(INDEX_KEY).expose(),
            )
            .map_err(|e| StartError::Misconfigured(e.to_string()))?,
        ));
        if let (Some(gate), Some(kafka)) = (settings.reveal.clone(), ctx.kafka()) {
            let misconfigured =
                |e: &dyn std::fmt::Display| StartError::Misconfigured(format!("decrypt gate: {e}"));
            let producer = trellis_runtime::producer::TrellisProducer::create(kafka)
                .map_err(StartError::from)?;
            let audit =
                reveal::KafkaAuditSink::new(producer, ctx.encoder(AUDIT_EVENTS_TOPIC).await?);
            let listener = tokio::net::TcpListener::bind(gate.addr)
                .await
                .map_err(|e| misconfigured(&e))?;
            let addr = listener.local_addr().map_err(|e| misconfigured(&e))?;
            let gate = reveal::RevealGate::new(
                gate,
                vault.clone(),
                ctx.decoder(),
                Arc::new(reveal::KafkaRecordSource::new(kafka.clone())),
                Arc::new(audit),
            );
            tracing::info!(%addr, "decrypt gate listening");
            let router = match ctx.lease() {
                Some(lease) => lease.guard(gate.router()),
                None => gate.router(),
            };
            ctx.serve(|stopping| async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(stopping.wait())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "decrypt gate stopped");
                }
            });
        }
        let encoders = Encoders {
            protected: ctx.encoder(PROTECTED_TOPIC).await?,
            acks: ctx.encoder(PARTICIPANT_ACKS_TOPIC).await?,
            audit: ctx.encoder(AUDIT_EVENTS_TOPIC).await?,
        };
        let erased_dropped = IntCounter::with_opts(
            prometheus::Opts::new(
                "trellis_erased_subject_records_dropped_total",
                "Records of erased subjects, from before their erasure, dropped on replay.",
            )
            .const_label("processor", NAME),
        )
        .map_err(|e| StartError::Misconfigured(e.to_string()))?;
        ctx.register(Box::new(erased_dropped.clone()))?;
        let mut privacy = Privacy::new(
            settings,
            vault,
            secret_array(ctx.secrets, IP_SALT),
            encoders,
            erased_dropped,
        );
        if let (Some(dir), Some(kafka)) = (&settings.export_dir, ctx.kafka()) {
            privacy = privacy.with_exporter(export::Exporter {
                kafka: kafka.clone(),
                decoder: ctx.decoder(),
                dir: dir.clone(),
            });
        }
        Ok(privacy)
    }
}

trellis_runtime::processor_run!(Privacy);

#[cfg(test)]
mod tests {
    use super::*;

    fn collected_schema() -> SchemaFile {
        SchemaFile::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/collected.avsc"),
        )
        .unwrap()
    }

    #[test]
    fn handles_exactly_the_fields_the_schema_tags() {
        check_schema(&collected_schema()).unwrap();
    }

    #[test]
    fn a_newly_tagged_field_stops_the_processor() {
        let text = collected_schema().text.replace(
            r#"{"name": "registration", "type": ["null", "string"], "default": null}"#,
            r#"{"name": "registration", "type": ["null", "string"], "default": null, "pii": "encrypt"}"#,
        );
        let schema = SchemaFile::parse("collected.avsc", &text).unwrap();
        let err = check_schema(&schema).unwrap_err();
        assert!(err.contains("registration"), "{err}");
    }
}
