//! A batch's changes as the processor makes them, read through to the store.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{StateError, StateStore};

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Uncommitted changes over a [`StateStore`]; reads see them first.
pub struct StateTxn<'s> {
    pub(super) store: &'s StateStore,
    pub(super) changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Write a snapshot right after this commit (see
    /// [`StateTxn::compact_after_commit`]).
    pub(super) compact: bool,
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
