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
//! Keys live in two namespaces: metadata (input positions, the cluster id)
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

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const POSITION: &[u8] = b"pos/";
const CLUSTER: &[u8] = b"cluster";

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

/// The store failed; the processor cannot continue safely.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the store's files failed.
    #[error("state store {path}: {source}")]
    Io {
        /// The store directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error(
        "state store {path} is in use by another process (stop it, or give this one another state_dir)"
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },
    /// The directory holds a store an older Trellis wrote (sled).
    #[error(
        "state store {path} was written by an older Trellis (sled); move it away or delete it, and the processor rebuilds its state by replaying its inputs"
    )]
    Legacy {
        /// The store directory.
        path: PathBuf,
    },
    /// An entry could not be decoded.
    #[error("state store {path}: corrupt entry: {what}")]
    Corrupt {
        /// The store directory, when known.
        path: PathBuf,
        /// Which entry, and why.
        what: String,
    },
    /// A commit tried to move an input position backwards: a bug, refused
    /// because it would apply inputs twice.
    #[error("state store {path}: refusing to move {partition} back from {from} to {to}")]
    PositionBackwards {
        /// The store directory.
        path: PathBuf,
        /// The input partition.
        partition: TopicPartition,
        /// The position the store holds.
        from: i64,
        /// The position the commit asked for.
        to: i64,
    },
}

impl StateError {
    /// A data entry the processor cannot decode.
    pub fn corrupt(what: impl fmt::Display) -> Self {
        Self::Corrupt {
            path: PathBuf::from("(processor data)"),
            what: what.to_string(),
        }
    }
}

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

#[derive(Default)]
struct Maps {
    meta: Table,
    data: Table,
}

impl Maps {
    fn order(&mut self) {
        self.meta.order();
        self.data.order();
    }

    fn is_ordered(&self) -> bool {
        self.meta.is_ordered() && self.data.is_ordered()
    }

    fn apply(&mut self, op: Op<'_>) {
        let table = if op.meta {
            &mut self.meta
        } else {
            &mut self.data
        };
        match op.value {
            Some(value) => table.insert(op.key.to_vec(), value.to_vec()),
            None => table.remove(op.key),
        }
    }
}

/// Entries in key order, with point reads through a hash index. Ordered
/// reads (prefix scans, range scans, the digest) need the order; most reads
/// are point reads of keys spread over the whole key space (statement ids),
/// where a B-tree's comparisons each chase a key's heap pointer: 17% of a
/// progress rebuild before the index.
///
/// New keys are put in order only when an ordered read needs them
/// ([`Table::order`]): a rebuild inserts hundreds of thousands of keys and
/// reads none in order, and ordering each as it came (comparisons along
/// long shared prefixes) was 14% of a progress rebuild.
#[derive(Default)]
struct Table {
    values: HashMap<Arc<[u8]>, Vec<u8>, foldhash::quality::RandomState>,
    /// Every key of `values` not in `unordered`, in order.
    order: BTreeSet<Arc<[u8]>>,
    /// Keys inserted since the last [`Table::order`], some perhaps removed
    /// since (a removed key is not looked for here: a push is all an insert
    /// pays, and ordering drops what `values` no longer holds).
    unordered: Vec<Arc<[u8]>>,
}

impl Table {
    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.values.get(key)
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if let Some(old) = self.values.get_mut(&key[..]) {
            *old = value;
        } else {
            let key: Arc<[u8]> = key.into();
            self.unordered.push(Arc::clone(&key));
            self.values.insert(key, value);
            // Keys removed while waiting stay listed (and allocated) until
            // ordered: a processor that inserts and removes without ordered
            // reads (a dedup window) would otherwise grow the list forever.
            if self.unordered.len() > 2 * self.values.len() + 1024 {
                self.order();
            }
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if self.values.remove(key).is_some() {
            // Either here or in `unordered`, never both.
            self.order.remove(key);
        }
    }

    /// Puts the keys inserted since the last call in order.
    fn order(&mut self) {
        if self.unordered.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.unordered);
        // Removed since, or removed and inserted again (then listed twice).
        keys.retain(|key| self.values.contains_key(key));
        // Sorted first: each insert then walks near the last one.
        keys.sort_unstable();
        keys.dedup();
        self.order.extend(keys);
    }

    fn is_ordered(&self) -> bool {
        self.unordered.is_empty()
    }

    /// Entries with keys within `bounds`, in key order. The table must be
    /// ordered ([`Table::order`]): a read that skipped new keys would be
    /// silently wrong.
    fn range<'t>(
        &'t self,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> impl Iterator<Item = (&'t [u8], &'t Vec<u8>)> {
        assert!(self.is_ordered(), "an ordered read of an unordered table");
        self.order
            .range::<[u8], _>(bounds)
            .map(|key| (&**key, &self.values[&**key]))
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &Vec<u8>)> {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }

    fn len(&self) -> usize {
        self.values.len()
    }
}

struct Log {
    file: File,
    /// Bytes of whole frames in the file.
    len: u64,
    /// Size of the snapshot the log continues.
    snapshot_len: u64,
    /// The log is compacted past `max(compact_min, 2 × snapshot_len)`.
    compact_min: u64,
    /// Tests: stop as a crash would, after a commit's frame and before its
    /// compaction.
    #[cfg(test)]
    crash_before_compaction: bool,
    synced: Instant,
    /// The buffer commits build their frames in, kept between commits: a
    /// batch's frame runs to megabytes, and a fresh allocation of that size
    /// is fresh pages from the kernel every time (their page faults were 1.7%
    /// of a progress run's loop).
    frame: Vec<u8>,
    /// A write failed and could not be undone: the file's tail is unknown,
    /// so nothing more may be appended (a frame after a torn one would be
    /// dropped at open).
    poisoned: bool,
}

/// The log is compacted into a snapshot once it is larger than this and
/// twice the snapshot.
pub const COMPACT_MIN: u64 = 64 << 20;

/// A commit syncs the log when the last sync is at least this old, and
/// closing the store syncs it (a process crash loses nothing unsynced; a
/// machine crash loses the commits since the last sync, which the store then
/// replays from its log positions).
const SYNC_EVERY: Duration = Duration::from_millis(500);

const SNAPSHOT_MAGIC: &[u8] = b"trellis-state/1\n";
const LOG_FILE: &str = "log";
const SNAPSHOT_FILE: &str = "snapshot";
const LOCK_FILE: &str = "lock";
/// A metadata key a commit sets when it asked for a snapshot
/// ([`StateTxn::compact_after_commit`]); the snapshot removes it, and open
/// compacts a store that still has it.
const COMPACT_OWED: &[u8] = b"compact-owed";

/// One entry change as stored: `[tag][key len u32][key][value len u32][value]`
/// (no value for a delete).
struct Op<'a> {
    meta: bool,
    key: &'a [u8],
    value: Option<&'a [u8]>,
}

const TAG_DATA_PUT: u8 = 1;
const TAG_DATA_DELETE: u8 = 2;
const TAG_META_PUT: u8 = 3;
const TAG_META_DELETE: u8 = 4;

impl Op<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        let tag = match (self.meta, self.value.is_some()) {
            (false, true) => TAG_DATA_PUT,
            (false, false) => TAG_DATA_DELETE,
            (true, true) => TAG_META_PUT,
            (true, false) => TAG_META_DELETE,
        };
        out.push(tag);
        put_bytes(out, self.key);
        if let Some(value) = self.value {
            put_bytes(out, value);
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Keys and values are far below 4 GiB: the largest is a progress row.
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Decodes the ops of one frame or snapshot body; `None` if malformed.
fn decode_ops(mut body: &[u8], mut each: impl FnMut(Op<'_>)) -> Option<()> {
    fn bytes<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
        let (len, rest) = body.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let (bytes, rest) = rest.split_at_checked(len)?;
        *body = rest;
        Some(bytes)
    }
    while let Some((&tag, rest)) = body.split_first() {
        body = rest;
        let key = bytes(&mut body)?;
        let op = match tag {
            TAG_DATA_PUT | TAG_META_PUT => Op {
                meta: tag == TAG_META_PUT,
                key,
                value: Some(bytes(&mut body)?),
            },
            TAG_DATA_DELETE | TAG_META_DELETE => Op {
                meta: tag == TAG_META_DELETE,
                key,
                value: None,
            },
            _ => return None,
        };
        each(op);
    }
    Some(())
}

/// A frame is `[body len u64][crc32 of body][body]`: a buffer begun here
/// has room for the header, ops are encoded after it, and
/// [`frame_finish`] fills the header in.
fn frame_start(body_capacity: usize) -> Vec<u8> {
    let mut out = Vec::new();
    frame_start_in(&mut out, body_capacity);
    out
}

/// Starts a frame in `buffer`, reusing its allocation.
fn frame_start_in(buffer: &mut Vec<u8>, body_capacity: usize) {
    buffer.clear();
    buffer.reserve(FRAME_HEADER + body_capacity);
    buffer.resize(FRAME_HEADER, 0);
}

fn frame_finish(frame: &mut [u8]) {
    let (header, body) = frame.split_at_mut(FRAME_HEADER);
    header[..8].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[8..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
}

const FRAME_HEADER: usize = 12;

/// The frame at the start of `bytes`, if whole and its checksum holds: its
/// body. (Its ops are decoded once, as they are applied: a body that passes
/// its checksum and does not decode was written wrong, not torn.)
fn frame_at(bytes: &[u8]) -> Option<&[u8]> {
    let header = bytes.get(..FRAME_HEADER)?;
    let len = usize::try_from(u64::from_le_bytes(header[..8].try_into().ok()?)).ok()?;
    let crc = u32::from_le_bytes(header[8..].try_into().ok()?);
    let body = bytes.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?)?;
    (crc32fast::hash(body) == crc).then_some(body)
}

/// The whole frames at the start of `log`, and where they end. Commits
/// never write an empty frame, so one (a run of zeros) ends the log too.
fn frames(log: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut bodies = Vec::new();
    let mut at = 0;
    while let Some(body) = log.get(at..).and_then(frame_at) {
        if body.is_empty() {
            break;
        }
        bodies.push(body);
        at += FRAME_HEADER + body.len();
    }
    (bodies, at)
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
            .maps()
            .meta
            .get(CLUSTER)
            .map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    /// Records the cluster whose log this store is built from.
    ///
    /// # Errors
    /// [`StateError`] on write failure.
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StateError> {
        let op = Op {
            meta: true,
            key: CLUSTER,
            value: Some(id.as_bytes()),
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

    /// Applies `txn`'s changes and the positions they include as one log
    /// frame. Only the runtime commits: a processor sees the store through
    /// [`StateTxn`] and never decides what its state includes.
    ///
    /// # Errors
    /// [`StateError`]. Before the frame is written (a position that would
    /// move backwards, [`StateError::PositionBackwards`], or a failed write)
    /// nothing is applied. After it (a failed sync or snapshot) the commit
    /// stands in memory but may not be on disk, and the store refuses every
    /// later commit: the processor stops and reopens it.
    pub(crate) fn commit(
        &self,
        txn: StateTxn<'_>,
        positions: &Positions,
    ) -> Result<(), StateError> {
        // Held from the check to the write: no other commit can move a
        // position in between.
        let mut log = self.log();
        let position_keys: Vec<(Vec<u8>, [u8; 8])> = {
            let maps = self.maps();
            let mut keys = Vec::with_capacity(positions.len());
            for (tp, &to) in positions {
                let key = Self::position_key(tp);
                if let Some(old) = maps.meta.get(&key)
                    && let Ok(bytes) = <[u8; 8]>::try_from(old.as_slice())
                    && i64::from_be_bytes(bytes) > to
                {
                    return Err(StateError::PositionBackwards {
                        path: self.shared.path.clone(),
                        partition: tp.clone(),
                        from: i64::from_be_bytes(bytes),
                        to,
                    });
                }
                keys.push((key, to.to_be_bytes()));
            }
            keys
        };
        let mut body = std::mem::take(&mut log.frame);
        frame_start_in(
            &mut body,
            txn.changes
                .iter()
                .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
                + position_keys.len() * 64,
        );
        for (key, value) in &txn.changes {
            Op {
                meta: false,
                key,
                value: value.as_deref(),
            }
            .encode(&mut body);
        }
        for (key, offset) in &position_keys {
            Op {
                meta: true,
                key,
                value: Some(offset),
            }
            .encode(&mut body);
        }
        if txn.compact {
            // Noted in the frame itself, so a crash before the compaction
            // below leaves it owed, and open pays it.
            Op {
                meta: true,
                key: COMPACT_OWED,
                value: Some(&[]),
            }
            .encode(&mut body);
        }
        // The maps take the transaction's keys and values as they are.
        let appended = self.append(&mut log, &mut body, txn.compact, |maps| {
            for (key, value) in txn.changes {
                match value {
                    Some(value) => maps.data.insert(key, value),
                    None => maps.data.remove(&key),
                }
            }
            for (key, offset) in position_keys {
                maps.meta.insert(key, offset.to_vec());
            }
            if txn.compact {
                maps.meta.insert(COMPACT_OWED.to_vec(), Vec::new());
            }
        });
        log.frame = body;
        appended
    }

    /// Appends `framed` (a [`frame_start`] frame of encoded ops) as one
    /// frame, then applies the same changes in memory with `apply`;
    /// compacts when the log has grown enough or `compact` asks for it.
    ///
    /// An error before the frame is written leaves the store as it was. An
    /// error after it (a failed sync or compaction) leaves the commit made
    /// in memory but perhaps not on disk: the store refuses every later
    /// commit, and the processor stops and reopens it.
    fn append(
        &self,
        log: &mut Log,
        framed: &mut [u8],
        compact: bool,
        apply: impl FnOnce(&mut Maps),
    ) -> Result<(), StateError> {
        if log.poisoned {
            return Err(self.io(std::io::Error::other(
                "an earlier write or sync failed; restart the processor",
            )));
        }
        // An empty frame is never written: a run of zeros on disk (what some
        // file systems show for blocks lost in a machine crash) would read
        // as empty frames, so open refuses them.
        if framed.len() > FRAME_HEADER {
            frame_finish(framed);
            self.write_frame(log, framed)?;
        }
        apply(
            &mut self
                .shared
                .maps
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let due = compact || log.len > log.compact_min.max(2 * log.snapshot_len);
        #[cfg(test)]
        let due = due && !log.crash_before_compaction;
        let synced = if due {
            self.compact(log)
        } else if log.synced.elapsed() >= SYNC_EVERY {
            Self::sync(log)
        } else {
            Ok(())
        };
        synced.map_err(|e| {
            log.poisoned = true;
            self.io(e)
        })
    }

    fn write_frame(&self, log: &mut Log, framed: &[u8]) -> Result<(), StateError> {
        if let Err(e) = log.file.write_all(framed) {
            // Undo a partial frame so the next one follows whole frames.
            let len = log.len;
            if log.file.set_len(len).is_err() {
                log.poisoned = true;
            }
            return Err(self.io(e));
        }
        log.len += framed.len() as u64;
        Ok(())
    }

    fn sync(log: &mut Log) -> std::io::Result<()> {
        log.file.sync_data()?;
        log.synced = Instant::now();
        Ok(())
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every entry to a new snapshot, then empties the log.
    fn compact(&self, log: &mut Log) -> std::io::Result<()> {
        // The whole log must be on disk before the new snapshot is: a crash
        // after the rename replays the log over the snapshot, and only the
        // whole log ends at the snapshot's state (a part would set keys
        // back to older values).
        log.file.sync_data()?;
        let body = {
            let mut maps = self
                .shared
                .maps
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Paid by this snapshot; still owed in the log if it fails.
            maps.meta.remove(COMPACT_OWED);
            maps.order();
            let mut body = frame_start(0);
            for (meta, map) in [(true, &maps.meta), (false, &maps.data)] {
                for (key, value) in map.iter() {
                    Op {
                        meta,
                        key,
                        value: Some(value),
                    }
                    .encode(&mut body);
                }
            }
            frame_finish(&mut body);
            body
        };
        let tmp = self.shared.path.join(format!("{SNAPSHOT_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(SNAPSHOT_MAGIC)?;
        file.write_all(&body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.shared.path.join(SNAPSHOT_FILE))?;
        File::open(&self.shared.path)?.sync_all()?;
        log.snapshot_len = (SNAPSHOT_MAGIC.len() + body.len()) as u64;
        // Replaying the old log over the new snapshot ends at the
        // snapshot's state (module docs), so a crash here loses nothing.
        log.file.set_len(0)?;
        log.file.sync_all()?;
        log.len = 0;
        log.synced = Instant::now();
        Ok(())
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

    /// Forces committed batches to disk (a commit also does once the last
    /// sync is 500 ms old).
    ///
    /// # Errors
    /// [`StateError`] on I/O failure.
    pub fn flush(&self) -> Result<(), StateError> {
        Self::sync(&mut self.log()).map_err(|e| self.io(e))
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

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Uncommitted changes over a [`StateStore`]; reads see them first.
pub struct StateTxn<'s> {
    store: &'s StateStore,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Write a snapshot right after this commit (see
    /// [`StateTxn::compact_after_commit`]).
    compact: bool,
}

impl StateTxn<'_> {
    /// Reads `key`, seeing this transaction's own writes.
    ///
    /// # Errors
    /// [`StateError`] on read failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, StateError> {
        match self.changes.get(key) {
            Some(Some(value)) => Ok(Some(Cow::Borrowed(value))),
            Some(None) => Ok(None),
            None => Ok(self.store.get(key)?.map(Cow::Owned)),
        }
    }

    /// Asks for a snapshot right after this transaction commits, so the
    /// store's files stop holding what it deleted: an erasure's batch does
    /// this (a deleted row otherwise stays in the log until the next
    /// compaction).
    pub fn compact_after_commit(&mut self) {
        self.compact = true;
    }

    /// Writes `key`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.changes.insert(key, Some(value));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.changes.insert(key, None);
    }

    /// Entries whose key starts with `prefix`, in key order, seeing this
    /// transaction's own writes and deletes.
    ///
    /// # Errors
    /// [`StateError`] on read failure.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Entry>, StateError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for entry in self.store.scan_prefix(prefix) {
            let (key, value) = entry?;
            merged.insert(key, value);
        }
        for (key, change) in self
            .changes
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            match change {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().collect())
    }

    /// Entries with keys in `start..end`, in key order, seeing this
    /// transaction's own writes and deletes: an index read up to a bound
    /// without collecting what lies beyond it.
    ///
    /// # Errors
    /// [`StateError`] on read failure.
    pub fn range(&self, start: &[u8], end: &[u8]) -> Result<Vec<Entry>, StateError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for entry in self.store.range(start, end) {
            let (key, value) = entry?;
            merged.insert(key, value);
        }
        for (key, change) in self.changes.range::<[u8], _>((
            std::ops::Bound::Included(start),
            std::ops::Bound::Excluded(end),
        )) {
            match change {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged.into_iter().collect())
    }

    /// Number of pending changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
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
mod tests {
    use super::*;

    #[test]
    fn positions_and_data_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let tp = TopicPartition::new("ingest.events", 3);
        {
            let store = StateStore::open(dir.path()).unwrap();
            let mut txn = store.begin();
            txn.put(b"a".to_vec(), b"1".to_vec());
            assert_eq!(txn.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(store.get(b"a").unwrap(), None, "uncommitted write visible");
            store
                .commit(txn, &Positions::from([(tp.clone(), 42)]))
                .unwrap();
            store.flush().unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.positions().unwrap(), Positions::from([(tp, 42)]));
        assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn txn_scan_sees_its_own_writes_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut txn = store.begin();
        for key in [&b"a/1"[..], b"a/2", b"b/1"] {
            txn.put(key.to_vec(), b"old".to_vec());
        }
        store.commit(txn, &Positions::new()).unwrap();
        let mut txn = store.begin();
        txn.delete(b"a/1".to_vec());
        txn.put(b"a/3".to_vec(), b"new".to_vec());
        txn.put(b"a/2".to_vec(), b"new".to_vec());
        let keys: Vec<(Vec<u8>, Vec<u8>)> = txn.scan_prefix(b"a/").unwrap();
        assert_eq!(
            keys,
            [
                (b"a/2".to_vec(), b"new".to_vec()),
                (b"a/3".to_vec(), b"new".to_vec())
            ]
        );
        // A range stops at its end, committed and pending entries alike.
        let keys: Vec<Vec<u8>> = txn
            .range(b"a/", b"a/3")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, [b"a/2".to_vec()]);
        assert_eq!(txn.range(b"a/3", b"b/2").unwrap().len(), 2, "a/3 and b/1");
    }

    #[test]
    fn digest_depends_on_content_not_batching_or_positions() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let one = StateStore::open(a.path()).unwrap();
        let mut txn = one.begin();
        txn.put(b"x".to_vec(), b"1".to_vec());
        txn.put(b"y".to_vec(), b"2".to_vec());
        one.commit(txn, &Positions::new()).unwrap();

        let two = StateStore::open(b.path()).unwrap();
        for (k, v, off) in [(b"y", b"2", 1), (b"x", b"1", 2)] {
            let mut txn = two.begin();
            txn.put(k.to_vec(), v.to_vec());
            two.commit(txn, &Positions::from([(TopicPartition::new("t", 0), off)]))
                .unwrap();
        }
        assert_eq!(one.digest().unwrap(), two.digest().unwrap());

        let mut txn = two.begin();
        txn.delete(b"x".to_vec());
        two.commit(txn, &Positions::new()).unwrap();
        assert_ne!(one.digest().unwrap(), two.digest().unwrap());
    }

    #[test]
    fn a_position_never_moves_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let tp = TopicPartition::new("t", 0);
        store
            .commit(store.begin(), &Positions::from([(tp.clone(), 10)]))
            .unwrap();
        let mut txn = store.begin();
        txn.put(b"x".to_vec(), b"1".to_vec());
        let err = store
            .commit(txn, &Positions::from([(tp.clone(), 9)]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                StateError::PositionBackwards {
                    from: 10,
                    to: 9,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            store.get(b"x").unwrap(),
            None,
            "nothing of the refused commit applied"
        );
        store
            .commit(store.begin(), &Positions::from([(tp, 10)]))
            .unwrap();
    }

    #[test]
    fn the_cluster_a_store_belongs_to_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            assert_eq!(store.cluster_id().unwrap(), None);
            store.set_cluster_id("cluster-a").unwrap();
            store.flush().unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.cluster_id().unwrap().as_deref(), Some("cluster-a"));
        assert!(store.is_empty(), "metadata is not data");
    }

    fn commit_one(store: &StateStore, key: &[u8], value: Option<&[u8]>, offset: i64) {
        let mut txn = store.begin();
        match value {
            Some(v) => txn.put(key.to_vec(), v.to_vec()),
            None => txn.delete(key.to_vec()),
        }
        store
            .commit(
                txn,
                &Positions::from([(TopicPartition::new("t", 0), offset)]),
            )
            .unwrap();
    }

    #[test]
    fn a_torn_last_commit_is_dropped_whole_and_the_store_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        let (before, whole) = {
            let store = StateStore::open(dir.path()).unwrap();
            commit_one(&store, b"a", Some(b"1"), 1);
            let before = std::fs::metadata(&log).unwrap().len();
            let mut txn = store.begin();
            txn.put(b"a".to_vec(), b"2".to_vec());
            txn.put(b"b".to_vec(), b"2".to_vec());
            store
                .commit(txn, &Positions::from([(TopicPartition::new("t", 0), 2)]))
                .unwrap();
            (before, std::fs::metadata(&log).unwrap().len())
        };
        // Every cut inside the second frame (a crash mid-write) leaves the
        // first commit, data and position together, and nothing of the second.
        for cut in [before + 1, before + 11, before + 12, whole - 1] {
            let bytes = std::fs::read(&log).unwrap();
            std::fs::write(&log, &bytes[..cut as usize]).unwrap();
            let store = StateStore::open(dir.path()).unwrap();
            assert_eq!(
                store.get(b"a").unwrap().as_deref(),
                Some(&b"1"[..]),
                "cut {cut}"
            );
            assert_eq!(store.get(b"b").unwrap(), None, "cut {cut}");
            assert_eq!(
                store.positions().unwrap(),
                Positions::from([(TopicPartition::new("t", 0), 1)])
            );
            assert_eq!(
                std::fs::metadata(&log).unwrap().len(),
                before,
                "tail cut off"
            );
            // The next commit follows the whole frames and survives a reopen.
            commit_one(&store, b"c", Some(b"3"), 3);
            drop(store);
            let store = StateStore::open(dir.path()).unwrap();
            assert_eq!(store.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
            drop(store);
            // Restore the second commit for the next cut.
            std::fs::write(&log, &bytes[..whole as usize]).unwrap();
        }
        // A flipped bit in a frame's body fails its checksum the same way.
        let mut bytes = std::fs::read(&log).unwrap();
        bytes[whole as usize - 1] ^= 1;
        std::fs::write(&log, &bytes).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn compaction_keeps_every_entry_and_survives_a_crash_before_the_log_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let (digest, positions) = {
            let store = StateStore::open(dir.path()).unwrap();
            store.set_cluster_id("cluster-a").unwrap();
            store.compact_past(4096);
            for i in 0..2_000i64 {
                let key = format!("k{}", i % 300);
                let value = (i % 7 != 0).then(|| i.to_be_bytes());
                commit_one(
                    &store,
                    key.as_bytes(),
                    value.as_ref().map(|v| &v[..]),
                    i + 1,
                );
            }
            assert!(dir.path().join(SNAPSHOT_FILE).exists(), "compacted");
            assert!(store.log_len() > 0, "commits since the last snapshot");
            (store.digest().unwrap(), store.positions().unwrap())
        };
        let reopened = StateStore::open(dir.path()).unwrap();
        assert_eq!(reopened.digest().unwrap(), digest);
        assert_eq!(reopened.positions().unwrap(), positions);
        assert_eq!(reopened.cluster_id().unwrap().as_deref(), Some("cluster-a"));
        // A crash after the new snapshot's rename, before the log was
        // emptied: the old log replays over the snapshot that holds it.
        let log = std::fs::read(dir.path().join(LOG_FILE)).unwrap();
        reopened.compact_now();
        assert_eq!(reopened.log_len(), 0);
        drop(reopened);
        std::fs::write(dir.path().join(LOG_FILE), &log).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.digest().unwrap(), digest);
        assert_eq!(store.positions().unwrap(), positions);
    }

    #[test]
    fn an_erasure_snapshot_a_crash_prevented_is_taken_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let row = b"row of pseudonym 5f3a".to_vec();
        let files_hold = |needle: &[u8]| {
            std::fs::read_dir(dir.path()).unwrap().any(|f| {
                let bytes = std::fs::read(f.unwrap().path()).unwrap();
                bytes.windows(needle.len()).any(|w| w == needle)
            })
        };
        {
            let store = StateStore::open(dir.path()).unwrap();
            commit_one(&store, b"row/5f3a", Some(&row), 1);
            store.crash_before_compaction();
            let mut txn = store.begin();
            txn.delete(b"row/5f3a".to_vec());
            txn.compact_after_commit();
            store
                .commit(txn, &Positions::from([(TopicPartition::new("t", 0), 2)]))
                .unwrap();
        }
        assert!(files_hold(&row), "the crash left the row in the log");
        let store = StateStore::open(dir.path()).unwrap();
        assert!(!files_hold(&row), "open paid the owed snapshot");
        assert_eq!(store.get(b"row/5f3a").unwrap(), None);
        assert_eq!(
            store.positions().unwrap(),
            Positions::from([(TopicPartition::new("t", 0), 2)])
        );
        drop(store);
        // Paid once: the snapshot does not carry the debt.
        let snapshot = std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap(),
            snapshot
        );
        assert!(store.maps().meta.get(COMPACT_OWED).is_none());
    }

    #[test]
    fn a_run_of_zeros_ends_the_log_and_empty_commits_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(LOG_FILE);
        {
            let store = StateStore::open(dir.path()).unwrap();
            commit_one(&store, b"a", Some(b"1"), 1);
            let len = std::fs::metadata(&log).unwrap().len();
            store.commit(store.begin(), &Positions::new()).unwrap();
            assert_eq!(
                std::fs::metadata(&log).unwrap().len(),
                len,
                "nothing to write"
            );
        }
        // Blocks lost in a machine crash may read back as zeros, followed by
        // a frame that did reach the disk: the log ends at the zeros.
        let mut bytes = std::fs::read(&log).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&[0; 64]);
        let later = bytes[..good].to_vec();
        bytes.extend_from_slice(&later);
        std::fs::write(&log, &bytes).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&log).unwrap().len(), good as u64);
        assert_eq!(store.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }

    #[test]
    fn a_frame_that_passes_its_checksum_but_does_not_decode_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path()).unwrap();
            commit_one(&store, b"a", Some(b"1"), 1);
        }
        // Written wrong, not torn: dropping it and what follows would lose
        // commits silently.
        let mut frame = frame_start(1);
        frame.push(0xee);
        frame_finish(&mut frame);
        let log = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&log).unwrap();
        bytes.extend_from_slice(&frame);
        std::fs::write(&log, &bytes).unwrap();
        let err = StateStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("does not decode"), "{err}");
    }

    #[test]
    fn one_process_at_a_time_and_old_or_damaged_stores_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let err = StateStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("in use by another process"));
        drop(store);

        let legacy = tempfile::tempdir().unwrap();
        std::fs::write(legacy.path().join("conf"), b"segment_size: 524288").unwrap();
        std::fs::write(legacy.path().join("db"), b"").unwrap();
        let err = StateStore::open(legacy.path()).err().unwrap();
        assert!(matches!(err, StateError::Legacy { .. }), "{err}");
        assert!(err.to_string().contains("rebuilds its state by replaying"));

        {
            let store = StateStore::open(dir.path()).unwrap();
            store.compact_past(0);
            commit_one(&store, b"a", Some(b"1"), 1);
        }
        let snapshot = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&snapshot).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&snapshot, &bytes).unwrap();
        let err = StateStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("snapshot fails its checksum"));
    }

    #[test]
    fn keys_removed_before_an_ordered_read_do_not_pile_up() {
        let mut table = Table::default();
        for i in 0u32..100_000 {
            table.insert(i.to_be_bytes().to_vec(), vec![1]);
            table.remove(&i.to_be_bytes());
        }
        assert!(table.unordered.len() <= 1025, "{}", table.unordered.len());
        table.insert(b"kept".to_vec(), vec![2]);
        table.order();
        assert_eq!(table.iter().collect::<Vec<_>>(), [(&b"kept"[..], &vec![2])]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever the commits, compactions and reopens, the store reads
        /// back what a plain map given the same changes holds. Reads are
        /// only after some commits: keys are put in order on an ordered
        /// read, so keys inserted and deleted between two reads are covered.
        #[test]
        fn the_store_agrees_with_a_map_through_compactions_and_reopens(
            batches in proptest::collection::vec(
                (
                    proptest::collection::vec((0u8..40, proptest::option::of(0u16..1000)), 0..12),
                    proptest::bool::weighted(0.15),
                    proptest::bool::weighted(0.4),
                ),
                1..40,
            ),
            compact_past in 0u64..2_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut store = StateStore::open(dir.path()).unwrap();
            store.compact_past(compact_past);
            let last = batches.len() - 1;
            for (offset, (changes, reopen, read)) in batches.into_iter().enumerate() {
                let mut txn = store.begin();
                for (key, value) in changes {
                    let key = vec![b'k', key];
                    match value {
                        Some(v) => {
                            txn.put(key.clone(), v.to_be_bytes().to_vec());
                            model.insert(key, v.to_be_bytes().to_vec());
                        }
                        None => {
                            txn.delete(key.clone());
                            model.remove(&key);
                        }
                    }
                }
                store
                    .commit(txn, &Positions::from([(TopicPartition::new("t", 0), offset as i64)]))
                    .unwrap();
                if reopen {
                    drop(store);
                    store = StateStore::open(dir.path()).unwrap();
                    store.compact_past(compact_past);
                    proptest::prop_assert_eq!(
                        store.positions().unwrap(),
                        Positions::from([(TopicPartition::new("t", 0), offset as i64)])
                    );
                }
                if read || offset == last {
                    let held: Vec<Entry> = store.scan_prefix(b"k").map(Result::unwrap).collect();
                    let expected: Vec<Entry> = model.clone().into_iter().collect();
                    proptest::prop_assert_eq!(held, expected);
                }
            }
        }
    }
}
