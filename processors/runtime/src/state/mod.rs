//! The state store: a processor's state *and* the input positions that
//! state includes, held in memory and made durable as an append-only log of
//! committed batches plus an occasional snapshot.
//!
//! Why not a B-tree on disk: every batch touches keys spread over the whole
//! key space (statement ids are UUIDs, cells are hashed), and random B-tree
//! inserts cost 10–20 µs per key here (sled), which bounded progress and
//! every rebuild (docs/performance.md). A batch appended to a file is one
//! sequential write, and reads are map lookups.
//!
//! Keys live in two namespaces: metadata (input positions, the cluster id,
//! the processor's state format)
//! and the processor's data. A batch of data changes and the positions it
//! advanced to are one log frame with a CRC, so the store can never include
//! an input's effect without knowing it did: a torn last frame (a crash
//! mid-write) fails its CRC and is dropped whole at open. A restart replays
//! exactly the inputs the store lacks and no input is applied twice
//! (DESIGN.md promise 3).
//!
//! Files in the store's directory: `lock` (held while open, so one process
//! owns the store), `snapshot` (every entry as of some commit) and `log`
//! (the batches committed since). When the log outgrows twice the snapshot
//! (and at least [`COMPACT_MIN`]), the log is synced, a new snapshot is
//! written, synced and renamed into place, then the log is emptied. A crash
//! between the rename and the truncation replays the whole log over the
//! snapshot that already holds it; each batch sets keys to the values they
//! had after it, so that replay ends at the snapshot's state. (Only the
//! whole log does: that is why it is synced first.)
//!
//! [`StateStore::digest`] hashes the data namespace in key order; two stores
//! built from the same log have the same digest (promise 4).
//!
//! # Layout
//! - this module: opening a store, reading it, its digest;
//! - `log`: commits (one frame per batch), syncs, snapshots;
//! - `frame`: how changes are written (ops in CRC-checked frames);
//! - `table`: the in-memory tables (hash index plus lazily kept order);
//! - `txn`: [`StateTxn`], a batch's changes as the processor makes them;
//! - `key`: how processors lay out their keys (one encoding for all);
//! - `error`: [`StateError`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use sha2::{Digest, Sha256};

mod error;
mod frame;
pub mod key;
mod log;
mod table;
mod txn;

pub use error::StateError;
pub use log::COMPACT_MIN;
pub use txn::{Entry, StateTxn};

use frame::{FRAME_HEADER, Op, decode_ops, frame_at, frame_start, frames};
use log::{COMPACT_OWED, LOCK_FILE, LOG_FILE, Log, SNAPSHOT_FILE, SNAPSHOT_MAGIC};
use table::Maps;

const POSITION: &[u8] = b"pos/";
const CLUSTER: &[u8] = b"cluster";
const FORMAT: &[u8] = b"format";

/// A topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// Builds one.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Next offset to read, per input partition.
pub type Positions = BTreeMap<TopicPartition, i64>;

/// SHA-256 over a store's data, hex-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest(pub String);

impl fmt::Display for StateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A processor's state store (see the module documentation).
#[derive(Clone)]
pub struct StateStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    maps: RwLock<Maps>,
    log: Mutex<Log>,
    /// Held (locked) for as long as the store is open.
    _lock: File,
}

impl Drop for Shared {
    /// The last handle syncs what the 500 ms cadence has not yet (the data
    /// survives a process exit anyway; this covers a machine crash soon
    /// after).
    fn drop(&mut self) {
        let log = self
            .log
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = log.file.sync_data();
    }
}

impl StateStore {
    /// Opens (creating if needed) the store in `dir`: loads the snapshot and
    /// replays the log after it. A torn last frame (a crash mid-commit) is
    /// dropped: that commit never happened.
    ///
    /// # Errors
    /// [`StateError::Locked`] if another process has the store open,
    /// [`StateError::Io`] on I/O failure, [`StateError::Corrupt`] if the
    /// snapshot fails its checksum, [`StateError::Legacy`] for a store an
    /// older Trellis wrote.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let io = |source| StateError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let undecodable = |what: &str| StateError::Corrupt {
            path: dir.to_path_buf(),
            what: format!(
                "{what} passes its checksum but does not decode (delete the directory to rebuild it by replay)"
            ),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        if dir.join("conf").exists() && dir.join("db").exists() {
            return Err(StateError::Legacy {
                path: dir.to_path_buf(),
            });
        }
        let mut maps = Maps::default();
        let snapshot_len = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                let body = bytes
                    .strip_prefix(SNAPSHOT_MAGIC)
                    .and_then(|rest| {
                        frame_at(rest).filter(|body| FRAME_HEADER + body.len() == rest.len())
                    })
                    .ok_or_else(|| StateError::Corrupt {
                        path: dir.to_path_buf(),
                        what: "the snapshot fails its checksum (delete the directory to rebuild it by replay)"
                            .into(),
                    })?;
                decode_ops(body, |op| maps.apply(op)).ok_or_else(|| undecodable("the snapshot"))?;
                bytes.len() as u64
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io(e)),
        };
        let _ = std::fs::remove_file(dir.join(format!("{SNAPSHOT_FILE}.tmp")));
        let log_path = dir.join(LOG_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&log_path)
            .map_err(io)?;
        let bytes = std::fs::read(&log_path).map_err(io)?;
        let (bodies, end) = frames(&bytes);
        for body in bodies {
            decode_ops(body, |op| maps.apply(op)).ok_or_else(|| undecodable("a log frame"))?;
        }
        if end < bytes.len() {
            tracing::warn!(
                store = %dir.display(),
                dropped_bytes = bytes.len() - end,
                "dropping a torn last commit (the process stopped mid-write); its inputs will be replayed"
            );
            file.set_len(end as u64).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let owed = maps.meta.get(COMPACT_OWED).is_some();
        let store = Self {
            shared: Arc::new(Shared {
                path: dir.to_path_buf(),
                maps: RwLock::new(maps),
                log: Mutex::new(Log {
                    file,
                    len: end as u64,
                    snapshot_len,
                    compact_min: COMPACT_MIN,
                    #[cfg(test)]
                    crash_before_compaction: false,
                    synced: Instant::now(),
                    frame: Vec::new(),
                    poisoned: false,
                }),
                _lock: lock,
            }),
        };
        if owed {
            // A crash came between an erasure's commit and its snapshot.
            let mut log = store.log();
            store.compact(&mut log).map_err(io)?;
        }
        Ok(store)
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.shared.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &str) -> StateError {
        StateError::Corrupt {
            path: self.shared.path.clone(),
            what: what.to_string(),
        }
    }

    /// The maps, with every key in order: for ordered reads.
    fn ordered_maps(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        loop {
            let maps = self.maps();
            if maps.is_ordered() {
                return maps;
            }
            drop(maps);
            // A commit may land between this and the read lock: look again.
            self.shared
                .maps
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .order();
        }
    }

    fn maps(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // A panic while the lock was held cannot leave the maps half
        // changed: they are changed only after the log write, whole.
        self.shared
            .maps
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Kafka cluster whose log this store was built from, if recorded.
    ///
    /// # Errors
    /// None today; kept for callers written against a fallible store.
    pub fn cluster_id(&self) -> Result<Option<String>, StateError> {
        Ok(self
            .meta(CLUSTER)
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the cluster whose log this store is built from.
    ///
    /// # Errors
    /// [`StateError`] on write failure.
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StateError> {
        self.set_meta(CLUSTER, id.as_bytes())
    }

    /// The processor's state format this store was written in, if recorded
    /// (`crate::build::Build::STATE_FORMAT`).
    pub fn format(&self) -> Option<u32> {
        self.meta(FORMAT)
            .and_then(|v| v.as_slice().try_into().ok())
            .map(u32::from_be_bytes)
    }

    /// Records the state format the store is written in.
    ///
    /// # Errors
    /// [`StateError`] on write failure.
    pub fn set_format(&self, format: u32) -> Result<(), StateError> {
        self.set_meta(FORMAT, &format.to_be_bytes())
    }

    fn meta(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.maps().meta.get(key).cloned()
    }

    fn set_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        let op = Op {
            meta: true,
            key,
            value: Some(value),
        };
        let mut body = frame_start(64);
        op.encode(&mut body);
        self.append(&mut self.log(), &mut body, false, |maps| maps.apply(op))
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The input positions the state includes.
    ///
    /// # Errors
    /// [`StateError`] on a corrupt position entry.
    pub fn positions(&self) -> Result<Positions, StateError> {
        let mut positions = Positions::new();
        for (key, value) in self
            .ordered_maps()
            .meta
            .range((Bound::Included(POSITION), Bound::Unbounded))
        {
            let Some(rest) = key.strip_prefix(POSITION) else {
                break;
            };
            let (topic, partition) = rest
                .split_last_chunk::<4>()
                .ok_or_else(|| self.corrupt("position key"))?;
            let offset: [u8; 8] = value
                .as_slice()
                .try_into()
                .map_err(|_| self.corrupt("position value"))?;
            positions.insert(
                TopicPartition::new(
                    String::from_utf8_lossy(topic),
                    i32::from_be_bytes(*partition),
                ),
                i64::from_be_bytes(offset),
            );
        }
        Ok(positions)
    }

    fn position_key(tp: &TopicPartition) -> Vec<u8> {
        let mut key = Vec::with_capacity(POSITION.len() + tp.topic.len() + 4);
        key.extend_from_slice(POSITION);
        key.extend_from_slice(tp.topic.as_bytes());
        key.extend_from_slice(&tp.partition.to_be_bytes());
        key
    }

    /// Reads a committed data value.
    ///
    /// # Errors
    /// None today; kept for callers written against a fallible store.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.maps().data.get(key).cloned())
    }

    /// Committed data entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Entry, StateError>> + use<> {
        let entries: Vec<Entry> = self
            .ordered_maps()
            .data
            .range((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect();
        entries.into_iter().map(Ok)
    }

    /// Committed data entries with keys in `start..end`, in key order.
    pub fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = Result<Entry, StateError>> + use<> {
        let entries: Vec<Entry> = if start < end {
            self.ordered_maps()
                .data
                .range((Bound::Included(start), Bound::Excluded(end)))
                .map(|(k, v)| (k.to_vec(), v.clone()))
                .collect()
        } else {
            Vec::new()
        };
        entries.into_iter().map(Ok)
    }

    /// Starts a set of changes that reads through to this store.
    pub fn begin(&self) -> StateTxn<'_> {
        StateTxn {
            store: self,
            changes: BTreeMap::new(),
            compact: false,
        }
    }

    /// [`StateStore::commit`] for other crates' unit tests. Processors never
    /// call it (the pipeline commits, with positions): clippy.toml disallows
    /// it, and a test that needs it says so with an `expect`. A cargo feature
    /// enabled by a dev-dependency would be a gate too, but it gives `cargo
    /// build` and `cargo test` two feature sets, and every crate above the
    /// runtime is then compiled twice.
    ///
    /// # Errors
    /// As [`StateStore::commit`].
    #[doc(hidden)]
    pub fn commit_for_test(
        &self,
        txn: StateTxn<'_>,
        positions: &Positions,
    ) -> Result<(), StateError> {
        self.commit(txn, positions)
    }

    /// SHA-256 over every data entry (length-prefixed key and value) in key
    /// order. Positions are excluded: two stores with the same content agree
    /// whatever batch boundaries built them.
    ///
    /// # Errors
    /// None today; kept for callers written against a fallible store.
    pub fn digest(&self) -> Result<StateDigest, StateError> {
        let mut hasher = Sha256::new();
        for (key, value) in self.ordered_maps().data.iter() {
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value);
        }
        Ok(StateDigest(hex::encode(hasher.finalize())))
    }

    /// Number of data entries.
    pub fn len(&self) -> usize {
        self.maps().data.len()
    }

    /// True when the store holds no data.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
impl StateStore {
    /// Compacts once the log passes `bytes` (tests reach it quickly).
    fn compact_past(&self, bytes: u64) {
        self.shared.log.lock().unwrap().compact_min = bytes;
    }

    fn log_len(&self) -> u64 {
        self.shared.log.lock().unwrap().len
    }

    fn crash_before_compaction(&self) {
        self.shared.log.lock().unwrap().crash_before_compaction = true;
    }

    fn compact_now(&self) {
        let mut log = self.shared.log.lock().unwrap();
        self.compact(&mut log).unwrap();
    }
}

#[cfg(test)]
mod tests;
