//! The subset of the Confluent Schema Registry REST API that clients use,
//! served by Trellis for the local stack and tests (no registry server
//! installs on these machines; see INFRA.md). Production points processors
//! at Confluent, Karapace or Apicurio instead.
//!
//! Served: register a version, look a schema up in a subject, schema by id,
//! subject versions (`latest` too), subjects, compatibility checks and
//! compatibility configuration (global and per subject; default BACKWARD).
//! Only Avro. Schemas, ids and versions persist in sled, so ids are stable
//! across restarts: a record written yesterday still decodes today.
//!
//! # Layout
//! - [`Registry`]: storage and the rules (ids, versions, compatibility).
//! - [`router`]: the HTTP surface.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Mutex;

/// Compatibility levels, as Confluent names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    /// No check.
    None,
    /// New schema reads data written with the latest.
    Backward,
    /// New schema reads data written with every earlier version.
    BackwardTransitive,
    /// Latest reads data written with the new schema.
    Forward,
    /// Every earlier version reads data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest.
    Full,
    /// Backward and forward against every earlier version.
    FullTransitive,
}

impl Compatibility {
    fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    /// Whether `new` may follow `old` under this level.
    fn allows(self, old: &Schema, new: &Schema) -> bool {
        let backward = || SchemaCompatibility::can_read(old, new).is_ok();
        let forward = || SchemaCompatibility::can_read(new, old).is_ok();
        match self {
            Self::None => true,
            Self::Backward | Self::BackwardTransitive => backward(),
            Self::Forward | Self::ForwardTransitive => forward(),
            Self::Full | Self::FullTransitive => backward() && forward(),
        }
    }
}

/// A registry error in Confluent's shape: HTTP status plus `error_code`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl RegistryError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }
    fn version_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40402, "Version not found.")
    }
    fn schema_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, 40403, "Schema not found")
    }
    fn invalid_schema(why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {why}"),
        )
    }
    fn storage(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {e}"),
        )
    }
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            Json(json!({"error_code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A version of a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    /// Subject name.
    pub subject: String,
    /// Version, from 1.
    pub version: u32,
    /// Global schema id.
    pub id: u32,
    /// Schema text.
    pub schema: String,
}

/// Storage and rules. Writes are serialised by a lock so ids and versions
/// are allocated without races.
pub struct Registry {
    schemas: sled::Tree,
    by_text: sled::Tree,
    subjects: sled::Tree,
    config: sled::Tree,
    db: sled::Db,
    write: Mutex<()>,
}

fn be(id: u32) -> [u8; 4] {
    id.to_be_bytes()
}

fn from_be(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

fn subject_key(subject: &str, version: u32) -> Vec<u8> {
    let mut key = subject.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&be(version));
    key
}

/// Whitespace and key order do not make a different schema; field order does.
fn normalise(text: &str) -> Result<(String, Schema), RegistryError> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(RegistryError::invalid_schema)?;
    let schema = Schema::parse(&json).map_err(RegistryError::invalid_schema)?;
    Ok((json.to_string(), schema))
}

impl Registry {
    /// Opens (or creates) the registry's store in `dir`.
    ///
    /// # Errors
    /// sled's error when the directory cannot be opened.
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        let db = sled::open(dir)?;
        Ok(Self {
            schemas: db.open_tree("schemas")?,
            by_text: db.open_tree("by_text")?,
            subjects: db.open_tree("subjects")?,
            config: db.open_tree("config")?,
            db,
            write: Mutex::new(()),
        })
    }

    fn versions(&self, subject: &str) -> Result<Vec<(u32, u32)>, RegistryError> {
        let mut prefix = subject.as_bytes().to_vec();
        prefix.push(0);
        self.subjects
            .scan_prefix(&prefix)
            .map(|entry| {
                let (key, id) = entry.map_err(RegistryError::storage)?;
                let version = from_be(&key[prefix.len()..])
                    .ok_or_else(|| RegistryError::storage("corrupt key"))?;
                let id = from_be(&id).ok_or_else(|| RegistryError::storage("corrupt id"))?;
                Ok((version, id))
            })
            .collect()
    }

    fn schema_text(&self, id: u32) -> Result<String, RegistryError> {
        let bytes = self
            .schemas
            .get(be(id))
            .map_err(RegistryError::storage)?
            .ok_or_else(RegistryError::schema_not_found)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Every subject with at least one version.
    ///
    /// # Errors
    /// Storage failure.
    pub fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let mut subjects: Vec<String> = Vec::new();
        for entry in self.subjects.iter() {
            let (key, _) = entry.map_err(RegistryError::storage)?;
            let name = String::from_utf8_lossy(&key[..key.len() - 5]).into_owned();
            if subjects.last() != Some(&name) {
                subjects.push(name);
            }
        }
        Ok(subjects)
    }

    /// The compatibility level of `subject` (or the global one).
    ///
    /// # Errors
    /// Storage failure.
    pub fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility, RegistryError> {
        let lookup = |key: &str| -> Result<Option<Compatibility>, RegistryError> {
            Ok(self
                .config
                .get(key)
                .map_err(RegistryError::storage)?
                .and_then(|v| serde_json::from_slice(&v).ok()))
        };
        if let Some(subject) = subject
            && let Some(level) = lookup(subject)?
        {
            return Ok(level);
        }
        Ok(lookup("")?.unwrap_or(Compatibility::Backward))
    }

    /// Sets the level of `subject`, or the global level.
    ///
    /// # Errors
    /// Storage failure.
    pub fn set_compatibility(
        &self,
        subject: Option<&str>,
        level: Compatibility,
    ) -> Result<(), RegistryError> {
        let value = serde_json::to_vec(&level).map_err(RegistryError::storage)?;
        self.config
            .insert(subject.unwrap_or(""), value)
            .map_err(RegistryError::storage)?;
        self.db.flush().map_err(RegistryError::storage)?;
        Ok(())
    }

    /// Whether `text` may be registered in `subject` under its level.
    ///
    /// # Errors
    /// Invalid schema or storage failure.
    pub fn is_compatible(&self, subject: &str, text: &str) -> Result<bool, RegistryError> {
        let (_, new) = normalise(text)?;
        self.check_compatible(subject, &new)
    }

    fn check_compatible(&self, subject: &str, new: &Schema) -> Result<bool, RegistryError> {
        let level = self.compatibility(Some(subject))?;
        let versions = self.versions(subject)?;
        let against: Vec<_> = if level.transitive() {
            versions
        } else {
            versions.last().copied().into_iter().collect()
        };
        for (_, id) in against {
            let old = Schema::parse_str(&self.schema_text(id)?).map_err(RegistryError::storage)?;
            if !level.allows(&old, new) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Registers `text` under `subject`: returns the existing id when the
    /// subject already has this schema, else checks compatibility and adds a
    /// version. A schema text has one global id across subjects.
    ///
    /// # Errors
    /// 422 for an invalid schema, 409 for an incompatible one.
    pub async fn register(&self, subject: &str, text: &str) -> Result<u32, RegistryError> {
        let (normal, schema) = normalise(text)?;
        let _guard = self.write.lock().await;
        if let Some(found) = self.lookup_normalised(subject, &normal)? {
            return Ok(found.id);
        }
        if !self.check_compatible(subject, &schema)? {
            return Err(RegistryError::new(
                StatusCode::CONFLICT,
                409,
                format!(
                    "Schema being registered is incompatible with an earlier schema for subject \"{subject}\" ({:?})",
                    self.compatibility(Some(subject))?
                ),
            ));
        }
        let id = match self.by_text.get(&normal).map_err(RegistryError::storage)? {
            Some(id) => from_be(&id).ok_or_else(|| RegistryError::storage("corrupt id"))?,
            None => {
                let id = self.db.generate_id().map_err(RegistryError::storage)? as u32 + 1;
                self.schemas
                    .insert(be(id), normal.as_bytes())
                    .map_err(RegistryError::storage)?;
                self.by_text
                    .insert(normal.as_bytes(), &be(id))
                    .map_err(RegistryError::storage)?;
                id
            }
        };
        let version = self.versions(subject)?.last().map_or(1, |(v, _)| v + 1);
        self.subjects
            .insert(subject_key(subject, version), &be(id))
            .map_err(RegistryError::storage)?;
        self.db.flush().map_err(RegistryError::storage)?;
        tracing::info!(subject, version, id, "registered schema");
        Ok(id)
    }

    fn lookup_normalised(
        &self,
        subject: &str,
        normal: &str,
    ) -> Result<Option<SubjectVersion>, RegistryError> {
        for (version, id) in self.versions(subject)? {
            if self.schema_text(id)? == normal {
                return Ok(Some(SubjectVersion {
                    subject: subject.to_string(),
                    version,
                    id,
                    schema: normal.to_string(),
                }));
            }
        }
        Ok(None)
    }

    /// Finds `text` among `subject`'s versions.
    ///
    /// # Errors
    /// 40401 unknown subject, 40403 schema not in it.
    pub fn lookup(&self, subject: &str, text: &str) -> Result<SubjectVersion, RegistryError> {
        let (normal, _) = normalise(text)?;
        if self.versions(subject)?.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        self.lookup_normalised(subject, &normal)?
            .ok_or_else(RegistryError::schema_not_found)
    }

    /// A version of `subject`: a number, `latest` or `-1`.
    ///
    /// # Errors
    /// 40401 unknown subject, 40402 unknown version.
    pub fn version(&self, subject: &str, version: &str) -> Result<SubjectVersion, RegistryError> {
        let versions = self.versions(subject)?;
        if versions.is_empty() {
            return Err(RegistryError::subject_not_found(subject));
        }
        let (version, id) = match version {
            "latest" | "-1" => versions.last().copied(),
            n => n
                .parse::<u32>()
                .ok()
                .and_then(|n| versions.iter().find(|(v, _)| *v == n).copied()),
        }
        .ok_or_else(RegistryError::version_not_found)?;
        Ok(SubjectVersion {
            subject: subject.to_string(),
            version,
            id,
            schema: self.schema_text(id)?,
        })
    }
}

type Shared = Arc<Registry>;

#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct ConfigBody {
    compatibility: Compatibility,
}

#[derive(Deserialize, Default)]
struct ConfigQuery {
    #[serde(rename = "defaultToGlobal", default)]
    default_to_global: bool,
}

fn only_avro(body: &SchemaBody) -> Result<(), RegistryError> {
    match body.schema_type.as_deref() {
        None | Some("AVRO") => Ok(()),
        Some(other) => Err(RegistryError::invalid_schema(format!(
            "schemaType {other} is not supported here; only AVRO"
        ))),
    }
}

fn ok(value: serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], Json(value)).into_response()
}

/// The HTTP routes over a registry.
pub fn router(registry: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup_schema))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register_schema),
        )
        .route("/subjects/{subject}/versions/{version}", get(get_version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(get_version_schema),
        )
        .route("/schemas/ids/{id}", get(get_by_id))
        .route("/schemas/ids/{id}/versions", get(get_id_versions))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config).put(put_subject_config),
        )
        .with_state(registry)
}

async fn list_subjects(State(r): State<Shared>) -> Result<Response, RegistryError> {
    Ok(ok(json!(r.subjects()?)))
}

async fn list_versions(
    State(r): State<Shared>,
    UrlPath(subject): UrlPath<String>,
) -> Result<Response, RegistryError> {
    let versions: Vec<u32> = r.versions(&subject)?.into_iter().map(|(v, _)| v).collect();
    if versions.is_empty() {
        return Err(RegistryError::subject_not_found(&subject));
    }
    Ok(ok(json!(versions)))
}

async fn register_schema(
    State(r): State<Shared>,
    UrlPath(subject): UrlPath<String>,
    Json(body): Json<SchemaBody>,
) -> Result<Response, RegistryError> {
    only_avro(&body)?;
    let id = r.register(&subject, &body.schema).await?;
    Ok(ok(json!({ "id": id })))
}

async fn lookup_schema(
    State(r): State<Shared>,
    UrlPath(subject): UrlPath<String>,
    Json(body): Json<SchemaBody>,
) -> Result<Response, RegistryError> {
    only_avro(&body)?;
    Ok(ok(json!(r.lookup(&subject, &body.schema)?)))
}

async fn get_version(
    State(r): State<Shared>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
) -> Result<Response, RegistryError> {
    Ok(ok(json!(r.version(&subject, &version)?)))
}

async fn get_version_schema(
    State(r): State<Shared>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
) -> Result<Response, RegistryError> {
    let found = r.version(&subject, &version)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], found.schema).into_response())
}

async fn get_by_id(
    State(r): State<Shared>,
    UrlPath(id): UrlPath<u32>,
) -> Result<Response, RegistryError> {
    Ok(ok(json!({ "schema": r.schema_text(id)? })))
}

async fn get_id_versions(
    State(r): State<Shared>,
    UrlPath(id): UrlPath<u32>,
) -> Result<Response, RegistryError> {
    r.schema_text(id)?;
    let mut found = Vec::new();
    for subject in r.subjects()? {
        for (version, vid) in r.versions(&subject)? {
            if vid == id {
                found.push(json!({"subject": subject, "version": version}));
            }
        }
    }
    Ok(ok(json!(found)))
}

async fn check_compatibility(
    State(r): State<Shared>,
    UrlPath((subject, version)): UrlPath<(String, String)>,
    Json(body): Json<SchemaBody>,
) -> Result<Response, RegistryError> {
    only_avro(&body)?;
    if version != "latest" && version != "-1" {
        r.version(&subject, &version)?;
    }
    Ok(ok(
        json!({ "is_compatible": r.is_compatible(&subject, &body.schema)? }),
    ))
}

async fn get_global_config(State(r): State<Shared>) -> Result<Response, RegistryError> {
    Ok(ok(json!({ "compatibilityLevel": r.compatibility(None)? })))
}

async fn put_global_config(
    State(r): State<Shared>,
    Json(body): Json<ConfigBody>,
) -> Result<Response, RegistryError> {
    r.set_compatibility(None, body.compatibility)?;
    Ok(ok(json!({ "compatibility": body.compatibility })))
}

async fn get_subject_config(
    State(r): State<Shared>,
    UrlPath(subject): UrlPath<String>,
    Query(query): Query<ConfigQuery>,
) -> Result<Response, RegistryError> {
    let own = r
        .config
        .get(&subject)
        .map_err(RegistryError::storage)?
        .and_then(|v| serde_json::from_slice::<Compatibility>(&v).ok());
    match own {
        Some(level) => Ok(ok(json!({ "compatibilityLevel": level }))),
        None if query.default_to_global => {
            Ok(ok(json!({ "compatibilityLevel": r.compatibility(None)? })))
        }
        None => Err(RegistryError::new(
            StatusCode::NOT_FOUND,
            40408,
            format!("Subject '{subject}' does not have subject-level compatibility configured"),
        )),
    }
}

async fn put_subject_config(
    State(r): State<Shared>,
    UrlPath(subject): UrlPath<String>,
    Json(body): Json<ConfigBody>,
) -> Result<Response, RegistryError> {
    r.set_compatibility(Some(&subject), body.compatibility)?;
    Ok(ok(json!({ "compatibility": body.compatibility })))
}

/// Serves the registry stored in `dir` on `addr` until `shutdown` resolves.
/// `on_bound` learns the bound address (port 0 picks a free one).
///
/// # Errors
/// Store or bind failure.
pub async fn serve(
    dir: &Path,
    addr: SocketAddr,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let registry = Registry::open(dir).map_err(std::io::Error::other)?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    on_bound(listener.local_addr()?);
    axum::serve(listener, router(Arc::new(registry)))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests;
