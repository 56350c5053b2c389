//! A processor's working set: state entries held decoded in memory while a
//! batch changes them, written to the batch's transaction once, by
//! [`Processor::save`](crate::Processor::save), instead of decoded and
//! encoded on every record that touches them.
//!
//! An entry a batch changes many times (an aggregate cell, a learner's
//! progress row) then costs one encoding and one store write per batch. What
//! is stored is each entry's value after the batch's last record, so the
//! store does not depend on where batches end. Between batches the set keeps
//! what it holds (it equals the committed store) up to a capacity; after an
//! abandoned batch it must be cleared.

use std::collections::HashMap;

/// Keys are hashed several times per record, so not with SipHash; foldhash
/// is seeded at random per process, which keeps the bucket layout unknown to
/// producers choosing the strings keys are built from.
type Hasher = foldhash::quality::RandomState;

use crate::error::ProcessError;
use crate::state::{StateError, StateTxn};

/// How a working-set value is stored.
pub trait Stored: Sized {
    /// The stored bytes.
    ///
    /// # Errors
    /// [`ProcessError`] if the value cannot be encoded.
    fn encode(&self) -> Result<Vec<u8>, ProcessError>;

    /// The value from its stored bytes.
    ///
    /// # Errors
    /// [`StateError::Corrupt`] if they are not one.
    fn decode(bytes: &[u8]) -> Result<Self, StateError>;
}

struct Slot<V> {
    /// `None`: deleted.
    value: Option<V>,
    dirty: bool,
}

/// Decoded entries by key; see the module docs.
pub struct WorkingSet<V> {
    entries: HashMap<Vec<u8>, Slot<V>, Hasher>,
    capacity: usize,
}

impl<V: Stored> WorkingSet<V> {
    /// An empty set that keeps at most `capacity` entries between batches.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::default(),
            capacity,
        }
    }

    fn load(&mut self, key: &[u8], txn: &StateTxn<'_>) -> Result<&mut Slot<V>, StateError> {
        if !self.entries.contains_key(key) {
            let value = txn.get(key)?.map(|b| V::decode(&b)).transpose()?;
            self.entries.insert(
                key.to_vec(),
                Slot {
                    value,
                    dirty: false,
                },
            );
        }
        Ok(self.entries.get_mut(key).expect("just loaded"))
    }

    /// The value under `key` (from memory, else from `txn`).
    ///
    /// # Errors
    /// [`StateError`] if it cannot be read or decoded.
    pub fn get(&mut self, key: &[u8], txn: &StateTxn<'_>) -> Result<Option<&V>, StateError> {
        Ok(self.load(key, txn)?.value.as_ref())
    }

    /// The value under `key`, to change (it will be written).
    ///
    /// # Errors
    /// [`StateError`] if it cannot be read or decoded.
    pub fn get_mut(
        &mut self,
        key: &[u8],
        txn: &StateTxn<'_>,
    ) -> Result<Option<&mut V>, StateError> {
        let slot = self.load(key, txn)?;
        slot.dirty |= slot.value.is_some();
        Ok(slot.value.as_mut())
    }

    /// Takes the value under `key` out, to change and put back with
    /// [`WorkingSet::insert`] (no copy); until then it reads as deleted, and
    /// is written as deleted if not put back.
    ///
    /// # Errors
    /// [`StateError`] if it cannot be read or decoded.
    pub fn take(&mut self, key: &[u8], txn: &StateTxn<'_>) -> Result<Option<V>, StateError> {
        let slot = self.load(key, txn)?;
        let value = slot.value.take();
        slot.dirty |= value.is_some();
        Ok(value)
    }

    /// Sets the value under `key` (it will be written).
    pub fn insert(&mut self, key: Vec<u8>, value: V) -> &mut V {
        let slot = self.entries.entry(key).insert_entry(Slot {
            value: Some(value),
            dirty: true,
        });
        slot.into_mut().value.as_mut().expect("just set")
    }

    /// Deletes the value under `key` (the deletion will be written).
    pub fn remove(&mut self, key: Vec<u8>) {
        self.entries.insert(
            key,
            Slot {
                value: None,
                dirty: true,
            },
        );
    }

    /// Writes every changed entry into `txn`: call from
    /// [`Processor::save`](crate::Processor::save), and before reading the
    /// store around the set (a scan).
    ///
    /// # Errors
    /// [`ProcessError`] if a value cannot be encoded.
    pub fn save(&mut self, txn: &mut StateTxn<'_>) -> Result<(), ProcessError> {
        for (key, slot) in &mut self.entries {
            if slot.dirty {
                match &slot.value {
                    Some(value) => txn.put(key.clone(), value.encode()?),
                    None => txn.delete(key.clone()),
                }
                slot.dirty = false;
            }
        }
        Ok(())
    }

    /// After a commit (every entry is clean): keeps memory bounded.
    pub fn committed(&mut self) {
        if self.entries.len() > self.capacity {
            self.entries.clear();
        }
    }

    /// Forgets everything: the batch that changed it was abandoned.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Positions, StateStore};

    impl Stored for u64 {
        fn encode(&self) -> Result<Vec<u8>, ProcessError> {
            Ok(self.to_be_bytes().to_vec())
        }
        fn decode(bytes: &[u8]) -> Result<Self, StateError> {
            <[u8; 8]>::try_from(bytes)
                .map(u64::from_be_bytes)
                .map_err(|_| StateError::corrupt("u64"))
        }
    }

    /// A store holding `entries`, committed.
    fn store_with(dir: &tempfile::TempDir, entries: &[(&[u8], u64)]) -> StateStore {
        let store = StateStore::open(dir.path()).unwrap();
        let mut txn = store.begin();
        for (key, value) in entries {
            txn.put(key.to_vec(), value.encode().unwrap());
        }
        store.commit(txn, &Positions::new()).unwrap();
        store
    }

    /// The committed value under `key`.
    fn stored(store: &StateStore, key: &[u8]) -> Option<u64> {
        store.get(key).unwrap().map(|v| u64::decode(&v).unwrap())
    }

    #[test]
    fn changes_reach_the_store_only_when_saved_and_each_entry_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &[(b"a", 1), (b"gone", 9)]);

        let mut set = WorkingSet::<u64>::new(10);
        let mut txn = store.begin();
        for _ in 0..5 {
            *set.get_mut(b"a", &txn).unwrap().unwrap() += 1;
        }
        assert_eq!(set.get(b"b", &txn).unwrap(), None);
        *set.insert(b"b".to_vec(), 7) += 1;
        set.remove(b"gone".to_vec());
        assert_eq!(set.get(b"gone", &txn).unwrap(), None, "deleted in memory");
        assert!(txn.is_empty(), "nothing written before save");
        set.save(&mut txn).unwrap();
        assert_eq!(txn.len(), 3, "one write per changed entry");
        store.commit(txn, &Positions::new()).unwrap();
        set.committed();
        assert_eq!(stored(&store, b"a"), Some(6));
        assert_eq!(stored(&store, b"b"), Some(8));
        assert_eq!(stored(&store, b"gone"), None);

        // Read without change: nothing to write.
        let mut txn = store.begin();
        assert_eq!(set.get(b"a", &txn).unwrap(), Some(&6));
        set.save(&mut txn).unwrap();
        assert!(txn.is_empty());
    }

    #[test]
    fn a_taken_value_is_written_back_or_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, &[(b"kept", 1), (b"dropped", 2)]);

        let mut set = WorkingSet::<u64>::new(10);
        let mut txn = store.begin();
        let kept = set.take(b"kept", &txn).unwrap().unwrap();
        assert_eq!(set.get(b"kept", &txn).unwrap(), None, "out while taken");
        set.insert(b"kept".to_vec(), kept + 10);
        assert_eq!(set.take(b"dropped", &txn).unwrap(), Some(2));
        assert_eq!(set.take(b"absent", &txn).unwrap(), None);
        set.save(&mut txn).unwrap();
        assert_eq!(txn.len(), 2, "the absent key was never there: no write");
        store.commit(txn, &Positions::new()).unwrap();
        assert_eq!(stored(&store, b"kept"), Some(11));
        assert_eq!(stored(&store, b"dropped"), None, "taken, not put back");
    }

    #[test]
    fn a_cleared_set_reads_the_store_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut set = WorkingSet::<u64>::new(1);
        let txn = store.begin();
        set.insert(b"a".to_vec(), 1);
        // The batch is abandoned: its change must not survive in memory.
        set.clear();
        assert_eq!(set.get(b"a", &txn).unwrap(), None);
        set.get(b"b", &txn).unwrap();
        assert_eq!(set.len(), 2, "absent entries are remembered too");
        set.committed();
        assert!(set.is_empty(), "over capacity: dropped after the commit");
    }
}
