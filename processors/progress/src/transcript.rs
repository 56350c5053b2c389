//! Transcripts: a learner's completed activities and courses, with dates
//! and evidence ids, read from the projector's rows.
//!
//! `GET /v1/transcripts/{tenant}/{learner}` with `Authorization: Bearer
//! <token>`. Principals are configured with the SHA-256 of their token
//! (never the token): an `operator` reads any learner of their tenant, a
//! `learner` only their own transcript (their pseudonym is bound to the
//! token). Anything else is 401 (unknown token) or 403 (known, not
//! allowed); a learner with no completions gets an empty transcript, so the
//! answer never tells a caller whether a pseudonym exists elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trellis_runtime::state::{StateError, StateStore};

use crate::{RowState, decode_state, learner_prefix};

/// The `settings.transcripts` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptSettings {
    /// Where to listen.
    pub addr: SocketAddr,
    /// Who may read what.
    pub principals: Vec<PrincipalSpec>,
}

/// What a principal may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every transcript of their tenant.
    Operator,
    /// Their own transcript only.
    Learner,
}

/// One principal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    /// Name for the logs.
    pub name: String,
    /// Hex SHA-256 of the principal's bearer token.
    pub token_sha256: String,
    /// The one tenant they belong to.
    pub tenant: String,
    /// Operator or learner.
    pub role: Role,
    /// For learners: their pseudonym.
    #[serde(default)]
    pub learner: Option<String>,
}

/// One completed activity or course.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// Activity or course IRI.
    pub activity_id: String,
    /// Parent course, when known.
    pub course_id: Option<String>,
    /// When the completion's evidence happened, ms since the epoch.
    pub completed_at: i64,
    /// When it was passed, if it was.
    pub passed_at: Option<i64>,
    /// Scaled score of the passing (or completing) statement.
    pub score_scaled: Option<f64>,
    /// The statements that prove it.
    pub evidence_event_ids: Vec<String>,
}

/// A learner's transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcript {
    /// Tenant.
    pub tenant_id: String,
    /// Pseudonym.
    pub learner: String,
    /// Completed activities and courses, oldest completion first.
    pub entries: Vec<TranscriptEntry>,
}

/// Builds `learner`'s transcript in `tenant` from the committed rows.
///
/// # Errors
/// [`StateError`] on read failure or a corrupt row.
pub fn transcript(
    store: &StateStore,
    tenant: &str,
    learner: &str,
) -> Result<Transcript, StateError> {
    let prefix = learner_prefix(tenant, learner);
    let mut entries = Vec::new();
    for entry in store.scan_prefix(&prefix) {
        let (key, value) = entry?;
        let row: RowState = decode_state(&value)?;
        let Some(completed) = row.completed else {
            continue;
        };
        entries.push(TranscriptEntry {
            activity_id: String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
            course_id: row.course_id,
            completed_at: completed.proof.at,
            passed_at: row.passed.as_ref().map(|p| p.proof.at),
            score_scaled: row.passed.map_or(completed.proof.score, |p| p.proof.score),
            evidence_event_ids: completed.proof.event_ids,
        });
    }
    entries.sort_by(|a, b| (a.completed_at, &a.activity_id).cmp(&(b.completed_at, &b.activity_id)));
    Ok(Transcript {
        tenant_id: tenant.to_string(),
        learner: learner.to_string(),
        entries,
    })
}

/// The read path's HTTP surface.
#[derive(Clone)]
pub struct TranscriptApi {
    principals: Arc<HashMap<String, PrincipalSpec>>,
    store: StateStore,
}

fn answer(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"ok": false, "code": code, "message": message})),
    )
        .into_response()
}

impl TranscriptApi {
    /// An API over `store`'s rows.
    pub fn new(settings: TranscriptSettings, store: StateStore) -> Self {
        let principals = settings
            .principals
            .into_iter()
            .map(|p| (p.token_sha256.to_ascii_lowercase(), p))
            .collect();
        Self {
            principals: Arc::new(principals),
            store,
        }
    }

    /// Problems with the principals, all at once.
    ///
    /// # Errors
    /// One line per problem.
    pub fn check(settings: &TranscriptSettings) -> Result<(), String> {
        let mut problems = Vec::new();
        for p in &settings.principals {
            if p.token_sha256.len() != 64 || hex::decode(&p.token_sha256).is_err() {
                problems.push(format!(
                    "principal {}: token_sha256 is not 64 hex characters",
                    p.name
                ));
            }
            if (p.role == Role::Learner) != p.learner.is_some() {
                problems.push(format!(
                    "principal {}: a learner needs `learner` (their pseudonym); an operator must not have one",
                    p.name
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    /// The router.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/v1/transcripts/{tenant}/{learner}", get(read))
            .with_state(self)
    }
}

async fn read(
    State(api): State<TranscriptApi>,
    Path((tenant, learner)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let Some(principal) = api.principals.get(&hash).filter(|_| !token.is_empty()) else {
        return answer(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "a valid bearer token is required",
        );
    };
    let allowed = principal.tenant == tenant
        && match principal.role {
            Role::Operator => true,
            Role::Learner => principal.learner.as_deref() == Some(learner.as_str()),
        };
    if !allowed {
        tracing::warn!(principal = %principal.name, %tenant, "transcript read refused");
        return answer(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "not your tenant or not your transcript",
        );
    }
    let store = api.store.clone();
    let read = tokio::task::spawn_blocking(move || transcript(&store, &tenant, &learner)).await;
    match read {
        Ok(Ok(transcript)) => {
            tracing::info!(principal = %principal.name, tenant = %transcript.tenant_id, entries = transcript.entries.len(), "transcript read");
            Json(transcript).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "transcript read failed");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "STATE_UNAVAILABLE",
                "the progress store could not be read",
            )
        }
        Err(_) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "STATE_UNAVAILABLE",
            "the read was cancelled",
        ),
    }
}
