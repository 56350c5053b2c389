//! The state store: sled, holding a processor's state *and* the input
//! positions that state includes, written in one atomic batch.
//!
//! Keys live in two namespaces of one tree: `0x00` for metadata (input
//! positions), `0x01` for the processor's data. Because a batch of data
//! changes and the positions it advanced to are applied with one
//! `apply_batch`, the store can never include an input's effect without
//! knowing it did, so a restart replays exactly the inputs the store lacks and
//! no input is applied twice (DESIGN.md promise 3).
//!
//! [`StateStore::digest`] hashes the data namespace in key order; two stores
//! built from the same log have the same digest (promise 4).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const META: u8 = 0x00;
const DATA: u8 = 0x01;
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
    /// sled failed (I/O, another process holds the store, corruption).
    #[error("state store {path}: {source}")]
    Sled {
        /// The store directory.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
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

/// A processor's sled store.
#[derive(Clone)]
pub struct StateStore {
    path: PathBuf,
    db: sled::Db,
}

impl StateStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// # Errors
    /// [`StateError`] if sled cannot open it (e.g. another process holds it).
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| StateError::Sled {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            path: dir.to_path_buf(),
            db,
        })
    }

    fn err(&self, source: sled::Error) -> StateError {
        StateError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: &str) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }

    /// The Kafka cluster whose log this store was built from, if recorded.
    ///
    /// # Errors
    /// [`StateError`] on read failure.
    pub fn cluster_id(&self) -> Result<Option<String>, StateError> {
        let key = [&[META][..], CLUSTER].concat();
        Ok(self
            .db
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the cluster whose log this store is built from.
    ///
    /// # Errors
    /// [`StateError`] on write failure.
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StateError> {
        let key = [&[META][..], CLUSTER].concat();
        self.db
            .insert(key, id.as_bytes())
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The input positions the state includes.
    ///
    /// # Errors
    /// [`StateError`] on read failure or a corrupt position entry.
    pub fn positions(&self) -> Result<Positions, StateError> {
        let mut prefix = vec![META];
        prefix.extend_from_slice(POSITION);
        let mut positions = Positions::new();
        for entry in self.db.scan_prefix(&prefix) {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let rest = &key[prefix.len()..];
            let (topic, partition) = rest
                .split_last_chunk::<4>()
                .ok_or_else(|| self.corrupt("position key"))?;
            let offset: [u8; 8] = value
                .as_ref()
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
        let mut key = Vec::with_capacity(1 + POSITION.len() + tp.topic.len() + 4);
        key.push(META);
        key.extend_from_slice(POSITION);
        key.extend_from_slice(tp.topic.as_bytes());
        key.extend_from_slice(&tp.partition.to_be_bytes());
        key
    }

    fn data_key(key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(key.len() + 1);
        full.push(DATA);
        full.extend_from_slice(key);
        full
    }

    /// Reads a committed data value.
    ///
    /// # Errors
    /// [`StateError`] on read failure.
    pub fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, StateError> {
        self.db.get(Self::data_key(key)).map_err(|e| self.err(e))
    }

    /// Committed data entries whose key starts with `prefix`, in key order,
    /// with the namespace byte stripped.
    pub fn scan_prefix(
        &self,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec), StateError>> + '_ {
        self.db
            .scan_prefix(Self::data_key(prefix))
            .map(move |entry| {
                entry
                    .map(|(k, v)| (k[1..].to_vec(), v))
                    .map_err(|e| self.err(e))
            })
    }

    /// Committed data entries with keys in `start..end`, in key order, with
    /// the namespace byte stripped.
    pub fn range(
        &self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = Result<(Vec<u8>, sled::IVec), StateError>> + '_ {
        self.db
            .range(Self::data_key(start)..Self::data_key(end))
            .map(move |entry| {
                entry
                    .map(|(k, v)| (k[1..].to_vec(), v))
                    .map_err(|e| self.err(e))
            })
    }

    /// Starts a set of changes that reads through to this store.
    pub fn begin(&self) -> StateTxn<'_> {
        StateTxn {
            store: self,
            changes: BTreeMap::new(),
        }
    }

    /// Applies `txn`'s changes and the positions they include in one atomic
    /// batch. Only the runtime commits: a processor sees the store through
    /// [`StateTxn`] and never decides what its state includes.
    ///
    /// # Errors
    /// [`StateError`]; nothing is applied then. A position that would move
    /// backwards is refused ([`StateError::PositionBackwards`]).
    pub(crate) fn commit(
        &self,
        txn: StateTxn<'_>,
        positions: &Positions,
    ) -> Result<(), StateError> {
        for (tp, &to) in positions {
            if let Some(old) = self
                .db
                .get(Self::position_key(tp))
                .map_err(|e| self.err(e))?
                && let Ok(bytes) = <[u8; 8]>::try_from(old.as_ref())
                && i64::from_be_bytes(bytes) > to
            {
                return Err(StateError::PositionBackwards {
                    path: self.path.clone(),
                    partition: tp.clone(),
                    from: i64::from_be_bytes(bytes),
                    to,
                });
            }
        }
        let mut batch = sled::Batch::default();
        for (key, change) in txn.changes {
            let key = Self::data_key(&key);
            match change {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        for (tp, offset) in positions {
            batch.insert(Self::position_key(tp), &offset.to_be_bytes());
        }
        self.db.apply_batch(batch).map_err(|e| self.err(e))
    }

    /// [`StateStore::commit`] for other crates' unit tests (feature
    /// `test-support`); processors never see it.
    ///
    /// # Errors
    /// As [`StateStore::commit`].
    #[cfg(any(test, feature = "test-support"))]
    pub fn commit_for_test(
        &self,
        txn: StateTxn<'_>,
        positions: &Positions,
    ) -> Result<(), StateError> {
        self.commit(txn, positions)
    }

    /// Forces written batches to disk (sled also does this every 500 ms).
    ///
    /// # Errors
    /// [`StateError`] on I/O failure.
    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(e))
    }

    /// SHA-256 over every data entry (length-prefixed key and value) in key
    /// order. Positions are excluded: two stores with the same content agree
    /// whatever batch boundaries built them.
    ///
    /// # Errors
    /// [`StateError`] on read failure.
    pub fn digest(&self) -> Result<StateDigest, StateError> {
        let mut hasher = Sha256::new();
        for entry in self.db.scan_prefix([DATA]) {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            hasher.update((key.len() as u64).to_be_bytes());
            hasher.update(&key);
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(&value);
        }
        Ok(StateDigest(hex::encode(hasher.finalize())))
    }

    /// Number of data entries.
    pub fn len(&self) -> usize {
        self.db.scan_prefix([DATA]).count()
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
            None => Ok(self.store.get(key)?.map(|v| Cow::Owned(v.to_vec()))),
        }
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
            merged.insert(key, value.to_vec());
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
            merged.insert(key, value.to_vec());
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
}
