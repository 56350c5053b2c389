//! `trellis-collector`: see the library docs.

use std::process::ExitCode;

use clap::Subcommand;
use trellis_collector::apikeys::{KeyStore, SCOPE_EVENTS_WRITE, signing_secret};
use trellis_collector::validate::valid_tenant;
use trellis_collector::{Collector, SECRETS, Settings, run};
use trellis_runtime::Config;
use trellis_runtime::lifecycle::{ExitStatus, ProcessorCli, serve_processor};
use trellis_runtime::secret::load_secrets;

const ABOUT: &str = "Validates, normalises and deduplicates learning events from the ingest topics into `collected`; rejects go to `dlq` with a reason code.";

#[derive(Subcommand)]
enum Command {
    /// Manage HTTP ingest API keys (the store named by `settings.http.api_keys`).
    /// Changes take effect on the next request, without a restart.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
}

#[derive(Subcommand)]
enum ApiKeyCommand {
    /// Create a key; prints it (and its signing secret) once. Only hashes are stored.
    Create {
        /// The one tenant the key may write for.
        #[arg(long)]
        tenant: String,
        /// Scopes (repeatable).
        #[arg(long = "scope", default_value = SCOPE_EVENTS_WRITE)]
        scopes: Vec<String>,
        /// Expire after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Require HMAC-signed requests (server-to-server producers).
        #[arg(long)]
        signed: bool,
        /// A label for operators.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// List keys (ids, tenants, scopes, state; never keys).
    List,
    /// Revoke a key by id.
    Revoke {
        /// The key's id, as `list` shows it.
        #[arg(long)]
        id: String,
    },
}

/// Writes API key changes to `audit.events` before they are reported done.
struct KeyAudit {
    runtime: tokio::runtime::Runtime,
    producer: trellis_runtime::producer::TrellisProducer,
    encoder: trellis_runtime::schema::AvroEncoder,
}

impl KeyAudit {
    fn connect(config: &Config<Settings>) -> Result<Self, String> {
        use trellis_runtime::schema::{AvroEncoder, SchemaFile, registry_settings};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let producer = trellis_runtime::producer::TrellisProducer::create(&config.kafka)
            .map_err(|e| format!("cannot reach the broker for audit events: {e}"))?;
        let topology = trellis_runtime::topology::Topology::load(&config.topology)
            .map_err(|e| e.to_string())?;
        let schema = SchemaFile::load(&topology.schema_path("audit_event.avsc"))
            .map_err(|e| e.to_string())?;
        let registry = registry_settings(&config.registry.url).map_err(|e| e.to_string())?;
        let encoder = runtime
            .block_on(AvroEncoder::register(
                &registry,
                trellis_records::AUDIT_EVENTS_TOPIC,
                &schema,
            ))
            .map_err(|e| format!("cannot register the audit event schema: {e}"))?;
        Ok(Self {
            runtime,
            producer,
            encoder,
        })
    }

    fn record(&self, action: &str, tenant: &str, key_id: &str, label: &str) -> Result<(), String> {
        let at = trellis_runtime::ticker::now_ms();
        let event = trellis_records::AuditEvent {
            event_id: format!("api_key/{key_id}/{action}"),
            tenant_id: Some(tenant.to_string()),
            actor: std::env::var("USER").unwrap_or_else(|_| "operator".into()),
            action: action.to_string(),
            subject: None,
            field: None,
            reason: (!label.is_empty()).then(|| label.to_string()),
            occurred_at: at,
            details: [("key_id".to_string(), key_id.to_string())].into(),
        };
        self.runtime
            .block_on(trellis_runtime::kafka::produce_audit_event(
                &self.producer,
                &self.encoder,
                &event,
            ))
            .map_err(|e| format!("the audit event could not be written: {e}"))
    }
}

fn api_key(config: &Config<Settings>, command: ApiKeyCommand) -> Result<(), String> {
    let http = config
        .settings
        .http
        .as_ref()
        .ok_or("the configuration has no `settings.http` section, so no API key store")?;
    let store = KeyStore::new(&http.api_keys);
    match command {
        ApiKeyCommand::Create {
            tenant,
            scopes,
            expires_in_days,
            signed,
            label,
        } => {
            if !valid_tenant(&tenant) {
                return Err(format!("`{tenant}` is not a valid tenant id"));
            }
            let master = if signed {
                Some(load_secrets(SECRETS).map_err(|e| e.to_string())?)
            } else {
                None
            };
            let expires_at = expires_in_days.map(|days| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                now + i64::from(days) * 86_400_000
            });
            let audit = KeyAudit::connect(config)?;
            let (key, record) = store
                .create(&tenant, scopes, expires_at, signed, label)
                .map_err(|e| e.to_string())?;
            // A key nobody can see was made must not exist: withdraw it if
            // its audit event cannot be written.
            if let Err(e) =
                audit.record("api_key.created", &record.tenant, &record.id, &record.label)
            {
                let _ = store.revoke(&record.id);
                return Err(format!("key withdrawn: {e}"));
            }
            println!("id:      {}", record.id);
            println!("tenant:  {}", record.tenant);
            println!("key:     {key}    (shown once; only its hash is stored)");
            if let Some(secrets) = master {
                let secret = signing_secret(secrets.get(SECRETS[0].env).expose(), &record.id);
                println!("signing: {}    (shown once)", hex::encode(secret));
            }
        }
        ApiKeyCommand::List => {
            for key in store.list().map_err(|e| e.to_string())? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else if key.expires_at.is_some() {
                    "expiring"
                } else {
                    "active"
                };
                println!(
                    "{}  {:<24} {:<9} {:<8} {} {}",
                    key.id,
                    key.tenant,
                    state,
                    if key.signed { "signed" } else { "" },
                    key.scopes.join(","),
                    key.label
                );
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let Some(record) = store
                .list()
                .map_err(|e| e.to_string())?
                .into_iter()
                .find(|k| k.id == id)
            else {
                return Err(format!("no API key with id `{id}`"));
            };
            // Revocation protects: it happens even if the audit event fails,
            // which is then reported.
            store.revoke(&id).map_err(|e| e.to_string())?;
            KeyAudit::connect(config)
                .and_then(|audit| {
                    audit.record("api_key.revoked", &record.tenant, &id, &record.label)
                })
                .map_err(|e| format!("revoked {id}, but {e}"))?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

// Per-record parsing and encoding allocate many small short-lived objects;
// mimalloc handles that pattern markedly better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = ProcessorCli::<Command>::parse_with_about(ABOUT);
    let Some(Command::ApiKey(command)) = cli.command else {
        return serve_processor::<Collector, _>(&cli.processor, run);
    };
    let config = match cli.processor.load::<Settings>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    match api_key(&config, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitStatus::Misconfigured.into()
        }
    }
}
