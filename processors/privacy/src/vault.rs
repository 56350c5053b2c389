//! Key custody, designed so that erasure is real.
//!
//! A key "deleted" from a store that keeps old pages, a backup or a topic is
//! not shredded. So:
//!
//! - Subject secret material never leaves this vault: not in a topic, not in
//!   a log line. It is random, so it cannot be re-derived from anything else.
//! - Each subject's material is stored **wrapped** (AES-256-GCM) under its
//!   tenant's key-encryption key (KEK). sled is log-structured and keeps old
//!   values in its segment files until it compacts them, and backups keep
//!   them for as long as the backup lives; a wrapped copy left there is
//!   harmless once the KEK that wrapped it is gone.
//! - **Shredding** a subject removes its entry *and rotates the tenant's
//!   KEK*: a new KEK is written, every surviving subject of the tenant is
//!   re-wrapped under it, and the old KEK is dropped from the KEK file. From
//!   then on no secret that still exists opens any copy of the shredded
//!   entry, wherever it survives.
//! - The KEK file (`keks.bin`) is small and rewritten whole (write, fsync,
//!   rename, fsync the directory), sealed under the master key
//!   (`TRELLIS_VAULT_MASTER_KEY`, in production from a KMS or HSM).
//!
//! A rotation interrupted by a crash is finished when the vault next opens:
//! entries still wrapped under an old KEK are re-wrapped, then old KEKs go.
//!
//! Subjects are found by a lookup key, HMAC(`TRELLIS_SUBJECT_INDEX_KEY`,
//! tenant ‖ id kind ‖ id). It only locates the entry: the pseudonym and data
//! keys derive from the random material (see [`crate::crypto`]), so a holder
//! of the index key and a user id learns nothing once the entry is shredded.
//! The vault keeps a per-tenant erasure marker under the lookup key (time of
//! erasure), so a replay of events from before the erasure cannot re-create
//! the subject; the marker says "this id was erased", nothing more.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::crypto::{KEY_LEN, SubjectKeys};

const KEK_FILE: &str = "keks.bin";
const KEK_MAGIC: &[u8; 6] = b"TKEK1\0";
const KEK_AAD: &[u8] = b"trellis/v1/keks";
const NONCE_LEN: usize = 12;
const WRAPPED_LEN: usize = KEY_LEN + 16;

/// The vault could not do what was asked. Messages never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Filesystem or sled failure.
    #[error("vault {path}: {message}")]
    Io {
        /// The vault directory.
        path: String,
        /// What failed.
        message: String,
    },
    /// The master key does not open the KEK file.
    #[error("TRELLIS_VAULT_MASTER_KEY does not open {0} (wrong key, or the file was altered)")]
    WrongMasterKey(String),
    /// A stored entry is corrupt or wrapped under a KEK the vault lacks.
    #[error("vault entry for tenant `{tenant}` cannot be unwrapped: {message}")]
    Corrupt {
        /// Tenant.
        tenant: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct KekFile {
    tenants: BTreeMap<String, TenantKeks>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct TenantKeks {
    /// Version → KEK. The highest version is current; more than one means a
    /// rotation is in progress.
    versions: BTreeMap<u32, Kek>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Kek {
    /// Hex. Zeroised when the file is dropped.
    key: Zeroizing<String>,
    /// What caused its creation (an input coordinate, or `rotate:<reason>`),
    /// so a replay of that input reports the creation again, identically.
    created_by: String,
}

impl Kek {
    fn bytes(&self, tenant: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(self.key.as_bytes(), out.as_mut()).map_err(|_| {
            VaultError::Corrupt {
                tenant: tenant.to_string(),
                message: "KEK is not 32 bytes of hex".into(),
            }
        })?;
        Ok(out)
    }
}

/// A subject's keys, and what the lookup did.
#[derive(Debug)]
pub struct SubjectLookup {
    /// The subject's derived keys, shared with the vault's cache (wiped
    /// when the last holder drops them).
    pub keys: Arc<SubjectKeys>,
    /// The KEK version created for the tenant by this input (first subject).
    pub kek_created: Option<u32>,
    /// The subject's material was created by this input.
    pub subject_created: bool,
}

/// A stored entry as (lookup key, wrapped value).
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// What a shred destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shredded {
    /// The subject's pseudonym (now unlinkable).
    pub pseudonym: String,
    /// The id of the destroyed data key.
    pub key_id: String,
    /// KEK versions retired by the rotation.
    pub kek_retired: Vec<u32>,
    /// The tenant's KEK version after the rotation.
    pub kek_current: u32,
    /// Surviving subjects re-wrapped.
    pub rewrapped: usize,
}

/// Where a subject's entry is kept: `tenant ‖ 0 ‖ HMAC(index key,
/// tenant, kind, id)`.
pub struct Entry(Vec<u8>);

/// The embedded key vault: a KEK file and a sled database of wrapped entries.
pub struct Vault {
    dir: PathBuf,
    master: Zeroizing<[u8; KEY_LEN]>,
    /// HMAC keyed with the index key, pads computed once (wiped on drop,
    /// like the subject keys: see `crypto`).
    index: Hmac<Sha256>,
    keks: KekFile,
    db: sled::Db,
    subjects: sled::Tree,
    erased: sled::Tree,
    receipts: sled::Tree,
    /// Receipts written before a shred destroys anything, by command id:
    /// a crash mid-shred leaves the subject erased, and the retried command
    /// answers with what the shred did instead of "already erased".
    pending: sled::Tree,
    key_ids: sled::Tree,
    reveals: sled::Tree,
    /// Unwrapped subjects by entry key, with the input that created them:
    /// saves an unwrap and four HKDF expansions per record. Shreds evict.
    cache: HashMap<Vec<u8>, (Arc<SubjectKeys>, Box<str>)>,
    /// The `erased` tree in memory (entry key → erasure time): asked about
    /// on every record, changed only by [`Vault::shred`] in this process.
    erased_at: HashMap<Vec<u8>, i64>,
}

/// Subjects kept unwrapped in memory (about 200 bytes each).
const CACHE_CAPACITY: usize = 100_000;

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn array(bytes: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    out.copy_from_slice(bytes);
    out
}

impl Vault {
    /// Opens (or creates) the vault in `dir`, finishing any interrupted rotation.
    ///
    /// # Errors
    /// [`VaultError::WrongMasterKey`] if the master key does not fit;
    /// [`VaultError::Io`] if the directory or database cannot be used (for
    /// example because another process holds it).
    pub fn open(dir: &Path, master: &[u8], index_key: &[u8]) -> Result<Self, VaultError> {
        let io = |e: &dyn std::fmt::Display| VaultError::Io {
            path: dir.display().to_string(),
            message: e.to_string(),
        };
        fs::create_dir_all(dir).map_err(|e| io(&e))?;
        let db = open_sled(&dir.join("entries")).map_err(|e| io(&e))?;
        let mut vault = Self {
            dir: dir.to_path_buf(),
            master: array(master),
            index: <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(index_key)
                .expect("HMAC takes keys of any length"),
            keks: KekFile::default(),
            subjects: db.open_tree("subjects").map_err(|e| io(&e))?,
            erased: db.open_tree("erased").map_err(|e| io(&e))?,
            receipts: db.open_tree("receipts").map_err(|e| io(&e))?,
            pending: db.open_tree("pending_receipts").map_err(|e| io(&e))?,
            key_ids: db.open_tree("key_ids").map_err(|e| io(&e))?,
            reveals: db.open_tree("reveals").map_err(|e| io(&e))?,
            cache: HashMap::new(),
            erased_at: HashMap::new(),
            db,
        };
        for entry in vault.erased.iter() {
            let (key, at) = entry.map_err(|e| io(&e))?;
            let at = <[u8; 8]>::try_from(at.as_ref()).map_err(|_| io(&"corrupt erasure marker"))?;
            vault.erased_at.insert(key.to_vec(), i64::from_be_bytes(at));
        }
        vault.keks = vault.read_keks()?;
        let rotating: Vec<String> = vault
            .keks
            .tenants
            .iter()
            .filter(|(_, t)| t.versions.len() > 1)
            .map(|(tenant, _)| tenant.clone())
            .collect();
        for tenant in rotating {
            tracing::info!(%tenant, "finishing an interrupted KEK rotation");
            vault.finish_rotation(&tenant, None)?;
        }
        Ok(vault)
    }

    fn io(&self, e: impl std::fmt::Display) -> VaultError {
        VaultError::Io {
            path: self.dir.display().to_string(),
            message: e.to_string(),
        }
    }

    fn read_keks(&self) -> Result<KekFile, VaultError> {
        let path = self.dir.join(KEK_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KekFile::default()),
            Err(e) => return Err(self.io(e)),
        };
        let wrong = || VaultError::WrongMasterKey(path.display().to_string());
        let body = bytes.strip_prefix(KEK_MAGIC.as_slice()).ok_or_else(wrong)?;
        if body.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let plain = Zeroizing::new(
            Aes256Gcm::new_from_slice(self.master.as_ref())
                .expect("32-byte key")
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: KEK_AAD,
                    },
                )
                .map_err(|_| wrong())?,
        );
        serde_json::from_slice(&plain).map_err(|_| wrong())
    }

    /// Rewrites the KEK file whole: a KEK removed from it is gone from this
    /// file (the filesystem may still hold the old blocks until reused; that
    /// copy is sealed under the master key, see docs/threat-model.md).
    fn write_keks(&self) -> Result<(), VaultError> {
        let plain = Zeroizing::new(serde_json::to_vec(&self.keks).map_err(|e| self.io(e))?);
        let nonce: [u8; NONCE_LEN] = rand::random();
        let ciphertext = Aes256Gcm::new_from_slice(self.master.as_ref())
            .expect("32-byte key")
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: KEK_AAD,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let path = self.dir.join(KEK_FILE);
        let tmp = self.dir.join(format!("{KEK_FILE}.tmp"));
        let mut file = fs::File::create(&tmp).map_err(|e| self.io(e))?;
        file.write_all(KEK_MAGIC)
            .and_then(|()| file.write_all(&nonce))
            .and_then(|()| file.write_all(&ciphertext))
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(e))?;
        fs::rename(&tmp, &path).map_err(|e| self.io(e))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))
    }

    /// The subject's entry, to ask [`Vault::entry_erased_at`] and then
    /// [`Vault::entry_subject`] with one keyed hash.
    pub fn entry(&self, tenant: &str, id_kind: &str, id: &str) -> Entry {
        Entry(self.lookup_key(tenant, id_kind, id))
    }

    fn lookup_key(&self, tenant: &str, id_kind: &str, id: &str) -> Vec<u8> {
        let mut mac = self.index.clone();
        for part in [tenant, id_kind, id] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        let mut key = Vec::with_capacity(tenant.len() + 33);
        key.extend_from_slice(tenant.as_bytes());
        key.push(0);
        key.extend_from_slice(&mac.finalize().into_bytes());
        key
    }

    fn current_kek(&self, tenant: &str) -> Option<(u32, &Kek)> {
        self.keks
            .tenants
            .get(tenant)?
            .versions
            .last_key_value()
            .map(|(v, k)| (*v, k))
    }

    fn wrap(
        &self,
        tenant: &str,
        entry_key: &[u8],
        material: &[u8; KEY_LEN],
    ) -> Result<Vec<u8>, VaultError> {
        let (version, kek) = self
            .current_kek(tenant)
            .ok_or_else(|| VaultError::Corrupt {
                tenant: tenant.to_string(),
                message: "tenant has no KEK".into(),
            })?;
        let kek = kek.bytes(tenant)?;
        let nonce: [u8; NONCE_LEN] = rand::random();
        let wrapped = Aes256Gcm::new_from_slice(kek.as_ref())
            .expect("32-byte key")
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: material,
                    aad: entry_key,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut value = Vec::with_capacity(4 + NONCE_LEN + WRAPPED_LEN);
        value.extend_from_slice(&version.to_be_bytes());
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&wrapped);
        Ok(value)
    }

    /// Unwraps a stored entry with whichever KEK of the tenant it names.
    fn unwrap(
        &self,
        tenant: &str,
        entry_key: &[u8],
        value: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
        let corrupt = |message: &str| VaultError::Corrupt {
            tenant: tenant.to_string(),
            message: message.to_string(),
        };
        if value.len() < 4 + NONCE_LEN + WRAPPED_LEN {
            return Err(corrupt("entry too short"));
        }
        let version = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
        let kek = self
            .keks
            .tenants
            .get(tenant)
            .and_then(|t| t.versions.get(&version))
            .ok_or_else(|| corrupt("wrapped under a KEK version the vault no longer has"))?
            .bytes(tenant)?;
        let plain = Zeroizing::new(
            Aes256Gcm::new_from_slice(kek.as_ref())
                .expect("32-byte key")
                .decrypt(
                    Nonce::from_slice(&value[4..4 + NONCE_LEN]),
                    Payload {
                        msg: &value[4 + NONCE_LEN..4 + NONCE_LEN + WRAPPED_LEN],
                        aad: entry_key,
                    },
                )
                .map_err(|_| corrupt("authentication failed"))?,
        );
        Ok(array(&plain))
    }

    /// The subject's keys, creating its material (and, for a tenant's first
    /// subject, the tenant's KEK) if it has none. `created_by` names the
    /// input that asks; a re-run of the same input reports the same creations.
    /// New material is on disk before this returns, so no output can refer
    /// to a key the vault could lose in a crash.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn subject(
        &mut self,
        tenant: &str,
        id_kind: &str,
        id: &str,
        created_by: &str,
    ) -> Result<SubjectLookup, VaultError> {
        let entry = self.entry(tenant, id_kind, id);
        self.entry_subject(tenant, entry, created_by)
    }

    /// [`Vault::subject`] for an [`Entry`] of `tenant`.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn entry_subject(
        &mut self,
        tenant: &str,
        Entry(entry_key): Entry,
        created_by: &str,
    ) -> Result<SubjectLookup, VaultError> {
        let kek_created = match self.current_kek(tenant) {
            Some((version, kek)) => (kek.created_by == created_by).then_some(version),
            None => {
                let key: [u8; KEY_LEN] = rand::random();
                self.keks
                    .tenants
                    .entry(tenant.to_string())
                    .or_default()
                    .versions
                    .insert(
                        1,
                        Kek {
                            key: Zeroizing::new(hex::encode(key)),
                            created_by: created_by.to_string(),
                        },
                    );
                self.write_keks()?;
                Some(1)
            }
        };
        if let Some((keys, by)) = self.cache.get(&entry_key) {
            return Ok(SubjectLookup {
                keys: keys.clone(),
                kek_created,
                subject_created: **by == *created_by,
            });
        }
        if let Some(value) = self.subjects.get(&entry_key).map_err(|e| self.io(e))? {
            let material = self.unwrap(tenant, &entry_key, &value)?;
            let by = value.get(4 + NONCE_LEN + WRAPPED_LEN..).unwrap_or_default();
            let keys = Arc::new(SubjectKeys::derive(tenant, &material));
            self.remember(entry_key, &keys, by);
            return Ok(SubjectLookup {
                keys,
                kek_created,
                subject_created: by == created_by.as_bytes(),
            });
        }
        let material = Zeroizing::new(rand::random::<[u8; KEY_LEN]>());
        let keys = Arc::new(SubjectKeys::derive(tenant, &material));
        let mut value = self.wrap(tenant, &entry_key, &material)?;
        value.extend_from_slice(created_by.as_bytes());
        // The key-id index first: an index entry without a subject is
        // harmless (lookups find nothing), a subject without one is not
        // revealable.
        self.key_ids
            .insert(keys.key_id(), entry_key.as_slice())
            .map_err(|e| self.io(e))?;
        self.subjects
            .insert(entry_key.as_slice(), value)
            .map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e))?;
        self.remember(entry_key, &keys, created_by.as_bytes());
        Ok(SubjectLookup {
            keys,
            kek_created,
            subject_created: true,
        })
    }

    fn remember(&mut self, entry_key: Vec<u8>, keys: &Arc<SubjectKeys>, created_by: &[u8]) {
        if self.cache.len() >= CACHE_CAPACITY {
            self.cache.clear();
        }
        let by = String::from_utf8_lossy(created_by).into();
        self.cache.insert(entry_key, (keys.clone(), by));
    }

    /// The subject's keys if the vault holds them; never creates anything.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn existing(
        &self,
        tenant: &str,
        id_kind: &str,
        id: &str,
    ) -> Result<Option<SubjectKeys>, VaultError> {
        let entry_key = self.lookup_key(tenant, id_kind, id);
        match self.subjects.get(&entry_key).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(value) => {
                let material = self.unwrap(tenant, &entry_key, &value)?;
                Ok(Some(SubjectKeys::derive(tenant, &material)))
            }
        }
    }

    /// When the subject was erased (ms since the epoch), if it was.
    pub fn erased_at(&self, tenant: &str, id_kind: &str, id: &str) -> Option<i64> {
        self.entry_erased_at(&self.entry(tenant, id_kind, id))
    }

    /// [`Vault::erased_at`] for an [`Entry`]: from memory, so it cannot fail.
    pub fn entry_erased_at(&self, entry: &Entry) -> Option<i64> {
        self.erased_at.get(&entry.0).copied()
    }

    /// The subject's entry key and keys, read from the store (not the
    /// cache); `None` if the vault holds no entry for it.
    fn stored_keys(
        &self,
        tenant: &str,
        id_kind: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, SubjectKeys)>, VaultError> {
        let entry_key = self.lookup_key(tenant, id_kind, id);
        let Some(value) = self.subjects.get(&entry_key).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        let material = self.unwrap(tenant, &entry_key, &value)?;
        let keys = SubjectKeys::derive(tenant, &material);
        Ok(Some((entry_key, keys)))
    }

    /// What [`Vault::shred`] of this subject would destroy and rotate,
    /// without changing anything; `None` if the vault holds no entry for it.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure or an entry that does not unwrap.
    pub fn plan_shred(
        &self,
        tenant: &str,
        id_kind: &str,
        id: &str,
    ) -> Result<Option<Shredded>, VaultError> {
        let Some((entry_key, keys)) = self.stored_keys(tenant, id_kind, id)? else {
            return Ok(None);
        };
        let (old, _) = self
            .current_kek(tenant)
            .ok_or_else(|| VaultError::Corrupt {
                tenant: tenant.to_string(),
                message: "tenant has no KEK to rotate".into(),
            })?;
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut others = 0;
        for item in self.subjects.scan_prefix(&prefix) {
            let (key, _) = item.map_err(|e| self.io(e))?;
            others += usize::from(key.as_ref() != entry_key.as_slice());
        }
        Ok(Some(Shredded {
            pseudonym: keys.pseudonym().to_string(),
            key_id: keys.key_id().to_string(),
            kek_retired: (1..=old).collect(),
            kek_current: old + 1,
            rewrapped: others,
        }))
    }

    /// Destroys the subject's material and rotates the tenant's KEK (see the
    /// module docs). `None` if the vault holds nothing for the subject.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure; the shred is then incomplete and
    /// is finished by retrying (the command is not acknowledged).
    pub fn shred(
        &mut self,
        tenant: &str,
        id_kind: &str,
        id: &str,
        at_ms: i64,
    ) -> Result<Option<Shredded>, VaultError> {
        let Some((entry_key, keys)) = self.stored_keys(tenant, id_kind, id)? else {
            return Ok(None);
        };
        let (retired, current, rewrapped) =
            self.rotate(tenant, &format!("shred:{at_ms}"), Some((&entry_key, at_ms)))?;
        self.key_ids.remove(keys.key_id()).map_err(|e| self.io(e))?;
        self.cache.remove(&entry_key);
        self.db.flush().map_err(|e| self.io(e))?;
        Ok(Some(Shredded {
            pseudonym: keys.pseudonym().to_string(),
            key_id: keys.key_id().to_string(),
            kek_retired: retired,
            kek_current: current,
            rewrapped,
        }))
    }

    /// Rotates the tenant's KEK: older records stay readable (data keys do
    /// not change), every entry is re-wrapped, the old KEK is destroyed.
    /// Returns (retired versions, current version, entries re-wrapped).
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn rotate_tenant(
        &mut self,
        tenant: &str,
        reason: &str,
    ) -> Result<(Vec<u32>, u32, usize), VaultError> {
        self.rotate(tenant, &format!("rotate:{reason}"), None)
    }

    fn rotate(
        &mut self,
        tenant: &str,
        created_by: &str,
        shred: Option<(&[u8], i64)>,
    ) -> Result<(Vec<u32>, u32, usize), VaultError> {
        let (old, _) = self
            .current_kek(tenant)
            .ok_or_else(|| VaultError::Corrupt {
                tenant: tenant.to_string(),
                message: "tenant has no KEK to rotate".into(),
            })?;
        let key: [u8; KEY_LEN] = rand::random();
        self.keks
            .tenants
            .entry(tenant.to_string())
            .or_default()
            .versions
            .insert(
                old + 1,
                Kek {
                    key: Zeroizing::new(hex::encode(key)),
                    created_by: created_by.to_string(),
                },
            );
        // Both KEKs on disk before any entry moves to the new one.
        self.write_keks()?;
        let rewrapped = self.finish_rotation(tenant, shred)?;
        let retired = (1..=old).collect::<Vec<_>>();
        Ok((retired, old + 1, rewrapped))
    }

    /// Re-wraps every entry of `tenant` under its newest KEK (removing the
    /// shredded entry and marking it erased in the same atomic batch), then
    /// drops every older KEK.
    fn finish_rotation(
        &mut self,
        tenant: &str,
        shred: Option<(&[u8], i64)>,
    ) -> Result<usize, VaultError> {
        let mut prefix = tenant.as_bytes().to_vec();
        prefix.push(0);
        let mut batch = sled::Batch::default();
        let mut rewrapped = 0;
        for item in self.subjects.scan_prefix(&prefix) {
            let (key, value) = item.map_err(|e| self.io(e))?;
            if shred.is_some_and(|(shredded, _)| shredded == key.as_ref()) {
                batch.remove(key);
                continue;
            }
            let material = self.unwrap(tenant, &key, &value)?;
            let mut fresh = self.wrap(tenant, &key, &material)?;
            fresh.extend_from_slice(&value[4 + NONCE_LEN + WRAPPED_LEN..]);
            batch.insert(key, fresh);
            rewrapped += 1;
        }
        let mut erased_batch = sled::Batch::default();
        if let Some((shredded, at_ms)) = shred {
            erased_batch.insert(shredded, &at_ms.to_be_bytes());
        }
        // Marker first: a crash between the two leaves a marked subject whose
        // entry still exists, and the retried shred finishes the job.
        self.erased
            .apply_batch(erased_batch)
            .map_err(|e| self.io(e))?;
        if let Some((shredded, at_ms)) = shred {
            self.erased_at.insert(shredded.to_vec(), at_ms);
        }
        self.subjects.apply_batch(batch).map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e))?;
        if shred.is_some() {
            // The subject's entry is gone, the old KEK not yet: reopening
            // finishes the rotation (see `open`).
            trellis_runtime::failpoint::hit(trellis_runtime::failpoint::VAULT_MID_SHRED);
        }
        if let Some(keks) = self.keks.tenants.get_mut(tenant)
            && let Some((&newest, _)) = keks.versions.last_key_value()
        {
            keks.versions.retain(|v, _| *v == newest);
        }
        self.write_keks()?;
        Ok(rewrapped)
    }

    /// A stored receipt (what a command produced), for identical replays.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn receipt(&self, command_id: &str) -> Result<Option<Vec<u8>>, VaultError> {
        Ok(self
            .receipts
            .get(command_id)
            .map_err(|e| self.io(e))?
            .map(|v| v.to_vec()))
    }

    /// Stores a receipt durably; a pending one for the command goes.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn put_receipt(&self, command_id: &str, receipt: &[u8]) -> Result<(), VaultError> {
        self.receipts
            .insert(command_id, receipt)
            .map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e))?;
        // After the final receipt is durable: a crash in between leaves
        // both, and the final one wins.
        self.pending.remove(command_id).map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e)).map(|_| ())
    }

    /// Stores, durably, the receipt a command will have once the shred it
    /// is about to run completes (see [`Vault::pending_receipt`]).
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn put_pending_receipt(&self, command_id: &str, receipt: &[u8]) -> Result<(), VaultError> {
        self.pending
            .insert(command_id, receipt)
            .map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e)).map(|_| ())
    }

    /// The receipt stored before this command's shred began, if its final
    /// receipt was never stored (the process died mid-shred).
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn pending_receipt(&self, command_id: &str) -> Result<Option<Vec<u8>>, VaultError> {
        Ok(self
            .pending
            .get(command_id)
            .map_err(|e| self.io(e))?
            .map(|v| v.to_vec()))
    }

    /// The raw stored entry of a subject (tests and audits of erasure: after
    /// a shred, a copy taken earlier must not open under any KEK the vault has).
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn raw_entry(
        &self,
        tenant: &str,
        id_kind: &str,
        id: &str,
    ) -> Result<Option<RawEntry>, VaultError> {
        let key = self.lookup_key(tenant, id_kind, id);
        Ok(self
            .subjects
            .get(&key)
            .map_err(|e| self.io(e))?
            .map(|v| (key, v.to_vec())))
    }

    /// Whether `value` (a raw entry) opens under *any* KEK the vault holds
    /// for `tenant`, whatever version it claims.
    pub fn opens_with_any_kek(&self, tenant: &str, key: &[u8], value: &[u8]) -> bool {
        let Some(keks) = self.keks.tenants.get(tenant) else {
            return false;
        };
        keks.versions.keys().any(|version| {
            let mut relabelled = value.to_vec();
            relabelled[..4].copy_from_slice(&version.to_be_bytes());
            self.unwrap(tenant, key, &relabelled).is_ok()
        })
    }

    /// The keys behind a key id, if the subject still exists in `tenant`.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn keys_by_id(
        &self,
        tenant: &str,
        key_id: &str,
    ) -> Result<Option<SubjectKeys>, VaultError> {
        let Some(entry_key) = self.key_ids.get(key_id).map_err(|e| self.io(e))? else {
            return Ok(None);
        };
        if !entry_key.starts_with(tenant.as_bytes()) || entry_key.get(tenant.len()) != Some(&0) {
            return Ok(None);
        }
        match self.subjects.get(&entry_key).map_err(|e| self.io(e))? {
            None => Ok(None),
            Some(value) => {
                let material = self.unwrap(tenant, &entry_key, &value)?;
                let keys = SubjectKeys::derive(tenant, &material);
                Ok((keys.key_id() == key_id).then_some(keys))
            }
        }
    }

    /// Times (ms) of `operator`'s reveals at or after `since_ms`, oldest first.
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn reveals_since(&self, operator: &str, since_ms: i64) -> Result<Vec<i64>, VaultError> {
        let mut prefix = operator.as_bytes().to_vec();
        prefix.push(0);
        let mut start = prefix.clone();
        start.extend_from_slice(&since_ms.max(0).to_be_bytes());
        let mut times = Vec::new();
        for item in self.reveals.range(start..) {
            let (key, _) = item.map_err(|e| self.io(e))?;
            if !key.starts_with(&prefix) {
                break;
            }
            if let Some(Ok(bytes)) = key
                .get(prefix.len()..prefix.len() + 8)
                .map(<[u8; 8]>::try_from)
            {
                times.push(i64::from_be_bytes(bytes));
            }
        }
        Ok(times)
    }

    /// Records a reveal by `operator` at `at_ms` (durably: the rate limit
    /// survives restarts).
    ///
    /// # Errors
    /// [`VaultError`] on storage failure.
    pub fn record_reveal(&self, operator: &str, at_ms: i64) -> Result<(), VaultError> {
        let mut key = operator.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&at_ms.max(0).to_be_bytes());
        key.extend_from_slice(&rand::random::<[u8; 8]>());
        self.reveals.insert(key, &[]).map_err(|e| self.io(e))?;
        self.db.flush().map_err(|e| self.io(e)).map(|_| ())
    }

    /// Number of subjects held, per tenant.
    pub fn subject_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (key, _) in self.subjects.iter().flatten() {
            if let Some(end) = key.iter().position(|b| *b == 0) {
                *counts
                    .entry(String::from_utf8_lossy(&key[..end]).into_owned())
                    .or_default() += 1;
            }
        }
        counts
    }

    /// The tenant's current KEK version.
    pub fn kek_version(&self, tenant: &str) -> Option<u32> {
        self.current_kek(tenant).map(|(v, _)| v)
    }
}

/// Opens a sled database, waiting briefly for a lock its previous owner in
/// this process has dropped: sled releases the file lock only when its
/// background threads let go of the closed database, a moment after the
/// last handle drops (spacejam/sled#1289). A vault reopened in-process (a
/// restarted pipeline, tests) met that lock under load. A lock held by
/// another live process still fails, after the wait.
fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::open(path) {
            // sled reports the lock as an `Other` I/O error; its text is
            // all that tells it apart.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: [u8; 32] = [9; 32];
    const INDEX: [u8; 32] = [3; 32];

    fn open(dir: &Path) -> Vault {
        Vault::open(dir, &MASTER, &INDEX).unwrap()
    }

    #[test]
    fn same_subject_same_keys_across_reopen_and_tenants_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (ann, ann_again, ann_globex, bob);
        {
            let mut v = open(dir.path());
            ann = v.subject("acme", "mbox", "mailto:ann@x", "c/0/1").unwrap();
            assert!(ann.subject_created);
            assert_eq!(ann.kek_created, Some(1));
            bob = v.subject("acme", "mbox", "mailto:bob@x", "c/0/2").unwrap();
            assert_eq!(bob.kek_created, None);
            ann_globex = v
                .subject("globex", "mbox", "mailto:ann@x", "c/0/3")
                .unwrap();
        }
        {
            let mut v = open(dir.path());
            ann_again = v.subject("acme", "mbox", "mailto:ann@x", "c/0/9").unwrap();
            assert!(!ann_again.subject_created);
            // Re-running the creating input reports the same creations.
            let replay = v.subject("acme", "mbox", "mailto:ann@x", "c/0/1").unwrap();
            assert!(replay.subject_created);
            assert_eq!(replay.kek_created, Some(1));
        }
        assert_eq!(ann.keys.pseudonym(), ann_again.keys.pseudonym());
        assert_ne!(ann.keys.pseudonym(), bob.keys.pseudonym());
        assert_ne!(ann.keys.pseudonym(), ann_globex.keys.pseudonym());
    }

    #[test]
    fn a_vault_closed_a_moment_ago_opens_once_sled_lets_go_of_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("entries");
        let held = sled::open(&path).unwrap();
        assert!(
            sled::open(&path).is_err(),
            "sled's lock refuses a second open"
        );
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        open_sled(&path).expect("opens once the lock is released");
        release.join().unwrap();
    }

    #[test]
    fn wrong_master_key_is_named_without_its_value() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path())
            .subject("acme", "user_id", "1", "x")
            .unwrap();
        let err = Vault::open(dir.path(), &[8; 32], &INDEX).unwrap_err();
        let text = err.to_string();
        // The exact message (hex or a decimal list of the key would change it).
        assert_eq!(
            text,
            format!(
                "TRELLIS_VAULT_MASTER_KEY does not open {} (wrong key, or the file was altered)",
                dir.path().join(KEK_FILE).display()
            )
        );
        assert_eq!(
            format!("{err:?}"),
            format!(
                "WrongMasterKey({:?})",
                dir.path().join(KEK_FILE).display().to_string()
            )
        );
    }

    #[test]
    fn shred_destroys_the_subject_everywhere_and_spares_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = open(dir.path());
        let ann = v.subject("acme", "mbox", "mailto:ann@x", "1").unwrap().keys;
        let bob = v.subject("acme", "mbox", "mailto:bob@x", "2").unwrap().keys;
        let sealed = ann.seal("acme", "actor.name", "e1", b"Ann");
        let bob_sealed = bob.seal("acme", "actor.name", "e2", b"Bob");
        // What a backup or sled's old pages would keep.
        let (key, captured) = v
            .raw_entry("acme", "mbox", "mailto:ann@x")
            .unwrap()
            .unwrap();
        let keks_before = fs::read(dir.path().join(KEK_FILE)).unwrap();
        // Positive control: before the shred the helper opens the copy, so
        // its `false` below means the key is gone, not that it sees nothing.
        assert!(v.opens_with_any_kek("acme", &key, &captured));

        let planned = v.plan_shred("acme", "mbox", "mailto:ann@x").unwrap();
        let shredded = v
            .shred("acme", "mbox", "mailto:ann@x", 1000)
            .unwrap()
            .unwrap();
        assert_eq!(
            planned.as_ref(),
            Some(&shredded),
            "the plan is what the shred does"
        );
        assert_eq!(v.plan_shred("acme", "mbox", "mailto:ann@x").unwrap(), None);
        assert_eq!(shredded.pseudonym, ann.pseudonym());
        assert_eq!(shredded.key_id, ann.key_id());
        assert_eq!(shredded.kek_retired, vec![1]);
        assert_eq!(shredded.rewrapped, 1);
        assert!(
            v.existing("acme", "mbox", "mailto:ann@x")
                .unwrap()
                .is_none()
        );
        assert_eq!(v.erased_at("acme", "mbox", "mailto:ann@x"), Some(1000));
        assert!(!v.opens_with_any_kek("acme", &key, &captured));
        assert_ne!(fs::read(dir.path().join(KEK_FILE)).unwrap(), keks_before);
        drop(v);

        // Every remaining secret in hand, after a restart: the captured
        // entry opens under no KEK, and the user id alone leads nowhere.
        let mut v = open(dir.path());
        assert!(!v.opens_with_any_kek("acme", &key, &captured));
        assert_eq!(
            v.erased_at("acme", "mbox", "mailto:ann@x"),
            Some(1000),
            "the erasure is remembered across a restart"
        );
        assert!(
            v.existing("acme", "mbox", "mailto:ann@x")
                .unwrap()
                .is_none()
        );
        let bob_again = v.existing("acme", "mbox", "mailto:bob@x").unwrap().unwrap();
        assert_eq!(
            bob_again
                .open("acme", "actor.name", "e2", &bob_sealed)
                .unwrap(),
            b"Bob"
        );
        // A returning subject gets new, unrelated material.
        let ann_new = v.subject("acme", "mbox", "mailto:ann@x", "3").unwrap().keys;
        assert_ne!(ann_new.pseudonym(), ann.pseudonym());
        assert!(ann_new.open("acme", "actor.name", "e1", &sealed).is_err());
    }

    #[test]
    fn rotation_keeps_older_records_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = open(dir.path());
        let ann = v.subject("acme", "user_id", "7", "1").unwrap().keys;
        let sealed = ann.seal("acme", "payload", "e1", b"{}");
        let (retired, current, rewrapped) = v.rotate_tenant("acme", "scheduled").unwrap();
        assert_eq!((retired, current, rewrapped), (vec![1], 2, 1));
        drop(v);
        let v = open(dir.path());
        assert_eq!(v.kek_version("acme"), Some(2));
        let again = v.existing("acme", "user_id", "7").unwrap().unwrap();
        assert_eq!(again.open("acme", "payload", "e1", &sealed).unwrap(), b"{}");
    }

    #[test]
    fn an_interrupted_rotation_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut v = open(dir.path());
        let ann = v.subject("acme", "user_id", "7", "1").unwrap().keys;
        // Crash after the new KEK is on disk, before any entry moved.
        v.keks.tenants.get_mut("acme").unwrap().versions.insert(
            2,
            Kek {
                key: Zeroizing::new(hex::encode([5u8; 32])),
                created_by: "rotate:test".into(),
            },
        );
        v.write_keks().unwrap();
        drop(v);
        let v = open(dir.path());
        assert_eq!(v.keks.tenants["acme"].versions.len(), 1);
        assert_eq!(v.kek_version("acme"), Some(2));
        let again = v.existing("acme", "user_id", "7").unwrap().unwrap();
        assert_eq!(again.pseudonym(), ann.pseudonym());
    }
}
