//! API keys for HTTP ingestion.
//!
//! A key is `trl_` + 32 hex characters. The store keeps only its SHA-256,
//! with the tenant it is bound to, its scopes, an optional expiry and its
//! revocation time. The store is a JSON file rewritten atomically by the
//! CLI (`trellis-collector api-key create|list|revoke`); the server re-reads
//! it whenever it changes on disk, so a revocation takes effect on the next
//! request, without a restart.
//!
//! Keys that sign their requests (server-to-server producers) get a signing
//! secret derived from `TRELLIS_INGEST_SIGNING_KEY` and the key's id, so no
//! per-key secret is stored anywhere.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trellis_runtime::ticker::now_ms;

/// Scope to write events and statements.
pub const SCOPE_EVENTS_WRITE: &str = "events:write";

/// A stored key: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyRecord {
    /// Public id (first 8 hex characters of the hash), shown in lists and logs.
    pub id: String,
    /// Hex SHA-256 of the whole key.
    pub sha256: String,
    /// The one tenant it may write for.
    pub tenant: String,
    /// e.g. `events:write`.
    pub scopes: Vec<String>,
    /// Requests must be signed.
    #[serde(default)]
    pub signed: bool,
    /// Creation, ms since the epoch.
    pub created_at: i64,
    /// Expiry, ms since the epoch.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Revocation, ms since the epoch.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    /// Free-text label.
    #[serde(default)]
    pub label: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    keys: Vec<ApiKeyRecord>,
}

/// The key store could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("API key store {path}: {message}")]
pub struct KeyStoreError {
    /// The file.
    pub path: String,
    /// What failed.
    pub message: String,
}

/// Why a presented key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No key, or not `trl_` + 32 hex.
    Malformed,
    /// Not in the store.
    Unknown,
    /// Past its expiry.
    Expired,
    /// Revoked.
    Revoked,
    /// Lacks the scope.
    Scope,
}

impl KeyRefusal {
    /// Machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "MALFORMED_API_KEY",
            Self::Unknown => "UNKNOWN_API_KEY",
            Self::Expired => "EXPIRED_API_KEY",
            Self::Revoked => "REVOKED_API_KEY",
            Self::Scope => "MISSING_SCOPE",
        }
    }
}

/// Whether `key` has the `trl_` + 32 lowercase-or-uppercase hex shape.
pub fn well_formed(key: &str) -> bool {
    key.strip_prefix("trl_")
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The per-key signing secret: HMAC(master, key id).
pub fn signing_secret(master: &[u8], key_id: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(master)
        .expect("HMAC takes keys of any length");
    mac.update(b"trellis/v1/ingest-signing/");
    mac.update(key_id.as_bytes());
    mac.finalize().into_bytes().into()
}

struct Loaded {
    modified: Option<SystemTime>,
    len: u64,
    by_hash: BTreeMap<String, ApiKeyRecord>,
}

/// The key store, re-read when the file changes.
#[derive(Clone)]
pub struct KeyStore {
    path: PathBuf,
    loaded: Arc<Mutex<Option<Loaded>>>,
}

impl KeyStore {
    /// A store backed by `path` (which may not exist yet: no keys).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            loaded: Arc::default(),
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> KeyStoreError {
        KeyStoreError {
            path: self.path.display().to_string(),
            message: message.to_string(),
        }
    }

    fn read(path: &Path) -> Result<KeyFile, String> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Checks `presented` and returns its record.
    ///
    /// # Errors
    /// `Err(Ok(refusal))` for a key that is refused; `Err(Err(_))` when the
    /// store itself cannot be read (the server answers 503).
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        scope: &str,
    ) -> Result<ApiKeyRecord, Result<KeyRefusal, KeyStoreError>> {
        let presented = presented.map(str::trim).unwrap_or_default();
        if !well_formed(presented) {
            return Err(Ok(KeyRefusal::Malformed));
        }
        let record = self
            .lookup(&hash(&presented.to_ascii_lowercase()))
            .map_err(Err)?
            .ok_or(Ok(KeyRefusal::Unknown))?;
        let now = now_ms();
        if record.revoked_at.is_some_and(|at| at <= now) {
            return Err(Ok(KeyRefusal::Revoked));
        }
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(Ok(KeyRefusal::Expired));
        }
        if !record.scopes.iter().any(|s| s == scope) {
            return Err(Ok(KeyRefusal::Scope));
        }
        Ok(record)
    }

    fn lookup(&self, sha256: &str) -> Result<Option<ApiKeyRecord>, KeyStoreError> {
        let meta = match fs::metadata(&self.path) {
            Ok(meta) => Some((meta.modified().ok(), meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.err(e)),
        };
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let stale = match (&*loaded, meta) {
            (Some(l), Some((modified, len))) => l.modified != modified || l.len != len,
            (Some(l), None) => !l.by_hash.is_empty(),
            (None, _) => true,
        };
        if stale {
            let file = Self::read(&self.path).map_err(|e| self.err(e))?;
            *loaded = Some(Loaded {
                modified: meta.and_then(|m| m.0),
                len: meta.map_or(0, |m| m.1),
                by_hash: file
                    .keys
                    .into_iter()
                    .map(|k| (k.sha256.clone(), k))
                    .collect(),
            });
        }
        Ok(loaded.as_ref().and_then(|l| l.by_hash.get(sha256)).cloned())
    }

    fn write(&self, file: &KeyFile) -> Result<(), KeyStoreError> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        }
        let tmp = self.path.with_extension("tmp");
        let mut out = fs::File::create(&tmp).map_err(|e| self.err(e))?;
        out.write_all(&serde_json::to_vec_pretty(file).map_err(|e| self.err(e))?)
            .and_then(|()| out.sync_all())
            .map_err(|e| self.err(e))?;
        fs::rename(&tmp, &self.path).map_err(|e| self.err(e))
    }

    /// Creates a key and returns (plaintext key, record). The plaintext is
    /// not stored: show it once.
    ///
    /// # Errors
    /// [`KeyStoreError`] if the store cannot be read or written.
    pub fn create(
        &self,
        tenant: &str,
        scopes: Vec<String>,
        expires_at: Option<i64>,
        signed: bool,
        label: String,
    ) -> Result<(String, ApiKeyRecord), KeyStoreError> {
        let mut file = Self::read(&self.path).map_err(|e| self.err(e))?;
        let key = format!("trl_{}", hex::encode(rand::random::<[u8; 16]>()));
        let sha256 = hash(&key);
        let record = ApiKeyRecord {
            id: sha256[..8].to_string(),
            sha256,
            tenant: tenant.to_string(),
            scopes,
            signed,
            created_at: now_ms(),
            expires_at,
            revoked_at: None,
            label,
        };
        file.keys.push(record.clone());
        self.write(&file)?;
        Ok((key, record))
    }

    /// Every stored key (hashes, never keys).
    ///
    /// # Errors
    /// [`KeyStoreError`] if the store cannot be read.
    pub fn list(&self) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        Ok(Self::read(&self.path).map_err(|e| self.err(e))?.keys)
    }

    /// Revokes the key with this id; false if there is none.
    ///
    /// # Errors
    /// [`KeyStoreError`] if the store cannot be read or written.
    pub fn revoke(&self, id: &str) -> Result<bool, KeyStoreError> {
        let mut file = Self::read(&self.path).map_err(|e| self.err(e))?;
        let now = now_ms();
        let mut found = false;
        for key in file.keys.iter_mut().filter(|k| k.id == id) {
            key.revoked_at.get_or_insert(now);
            found = true;
        }
        if found {
            self.write(&file)?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_as_hashes_and_checked_for_expiry_revocation_scope() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::new(dir.path().join("keys.json"));
        let (key, record) = store
            .create(
                "acme",
                vec![SCOPE_EVENTS_WRITE.into()],
                None,
                false,
                "lms".into(),
            )
            .unwrap();
        assert!(well_formed(&key));
        let text = fs::read_to_string(dir.path().join("keys.json")).unwrap();
        assert!(!text.contains(&key[4..]), "only the hash is stored");
        assert_eq!(
            store.authenticate(Some(&key), SCOPE_EVENTS_WRITE).unwrap(),
            record
        );
        assert_eq!(
            store
                .authenticate(Some(&key), "admin")
                .unwrap_err()
                .unwrap(),
            KeyRefusal::Scope
        );
        assert_eq!(
            store
                .authenticate(Some("trl_xyz"), SCOPE_EVENTS_WRITE)
                .unwrap_err()
                .unwrap(),
            KeyRefusal::Malformed
        );
        let other = format!("trl_{}", "0".repeat(32));
        assert_eq!(
            store
                .authenticate(Some(&other), SCOPE_EVENTS_WRITE)
                .unwrap_err()
                .unwrap(),
            KeyRefusal::Unknown
        );
        let (expired, _) = store
            .create(
                "acme",
                vec![SCOPE_EVENTS_WRITE.into()],
                Some(1),
                false,
                String::new(),
            )
            .unwrap();
        assert_eq!(
            store
                .authenticate(Some(&expired), SCOPE_EVENTS_WRITE)
                .unwrap_err()
                .unwrap(),
            KeyRefusal::Expired
        );
        assert!(store.revoke(&record.id).unwrap());
        assert_eq!(
            store
                .authenticate(Some(&key), SCOPE_EVENTS_WRITE)
                .unwrap_err()
                .unwrap(),
            KeyRefusal::Revoked
        );
    }
}
