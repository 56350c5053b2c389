//! The store's tables in memory: a hash index for point reads, with key
//! order kept lazily for ordered reads.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use super::frame::Op;

#[derive(Default)]
pub(super) struct Maps {
    pub(super) meta: Table,
    pub(super) data: Table,
}

impl Maps {
    pub(super) fn order(&mut self) {
        self.meta.order();
        self.data.order();
    }

    pub(super) fn is_ordered(&self) -> bool {
        self.meta.is_ordered() && self.data.is_ordered()
    }

    pub(super) fn apply(&mut self, op: Op<'_>) {
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
pub(super) struct Table {
    values: HashMap<Arc<[u8]>, Vec<u8>, foldhash::quality::RandomState>,
    /// Every key of `values` not in `unordered`, in order.
    order: BTreeSet<Arc<[u8]>>,
    /// Keys inserted since the last [`Table::order`], some perhaps removed
    /// since (a removed key is not looked for here: a push is all an insert
    /// pays, and ordering drops what `values` no longer holds).
    pub(super) unordered: Vec<Arc<[u8]>>,
}

impl Table {
    pub(super) fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.values.get(key)
    }

    pub(super) fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
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

    pub(super) fn remove(&mut self, key: &[u8]) {
        if self.values.remove(key).is_some() {
            // Either here or in `unordered`, never both.
            self.order.remove(key);
        }
    }

    /// Puts the keys inserted since the last call in order.
    pub(super) fn order(&mut self) {
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

    pub(super) fn is_ordered(&self) -> bool {
        self.unordered.is_empty()
    }

    /// Entries with keys within `bounds`, in key order. The table must be
    /// ordered ([`Table::order`]): a read that skipped new keys would be
    /// silently wrong.
    pub(super) fn range<'t>(
        &'t self,
        bounds: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> impl Iterator<Item = (&'t [u8], &'t Vec<u8>)> {
        assert!(self.is_ordered(), "an ordered read of an unordered table");
        self.order
            .range::<[u8], _>(bounds)
            .map(|key| (&**key, &self.values[&**key]))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&[u8], &Vec<u8>)> {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }

    pub(super) fn len(&self) -> usize {
        self.values.len()
    }
}
