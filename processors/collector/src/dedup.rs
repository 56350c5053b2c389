//! Duplicate detection by `(tenant, event_id)` within a time window.
//!
//! Kept per input partition, with that partition's record timestamps as the
//! clock: an event is a duplicate if the same id was seen in the partition
//! no longer than `window` before the partition's latest timestamp. Using
//! log time, not wall time, makes the decision a function of the log, so a
//! replay decides exactly as the live run did (DESIGN.md promise 4).
//! Upstream retries reuse the record key, so duplicates meet in one
//! partition; downstream consumers drop any stragglers by output id.
//!
//! Entries are 16-byte hashes of tenant and event id (no personal data) with
//! their timestamp. Expired entries are pruned whenever the partition clock
//! crosses a multiple of `window / 4`: the prune points depend only on the
//! partition's record sequence, so live and rebuilt stores hold the same
//! entries and digest alike whatever the batch boundaries were.
//!
//! The window is mirrored in memory (lookups must not hit sled per record);
//! changes of the open batch are kept apart until the batch commits.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use trellis_runtime::StateTxn;
use trellis_runtime::state::{StateError, StateStore};

type EventHash = [u8; 16];

const SEEN: &[u8] = b"seen/";
const CLOCK: &[u8] = b"clock/";

struct PartitionWindow {
    /// `topic ‖ 0x00 ‖ partition` as used in state keys.
    id: Vec<u8>,
    clock: i64,
    seen: HashMap<EventHash, i64>,
    /// Uncommitted changes: `None` is a prune.
    pending: HashMap<EventHash, Option<i64>>,
    pending_clock: Option<i64>,
}

impl PartitionWindow {
    fn new(id: Vec<u8>) -> Self {
        Self {
            id,
            clock: i64::MIN,
            seen: HashMap::new(),
            pending: HashMap::new(),
            pending_clock: None,
        }
    }

    fn clock(&self) -> i64 {
        self.pending_clock.unwrap_or(self.clock)
    }

    fn get(&self, hash: &EventHash) -> Option<i64> {
        match self.pending.get(hash) {
            Some(change) => *change,
            None => self.seen.get(hash).copied(),
        }
    }

    fn key(&self, prefix: &[u8], hash: Option<&EventHash>) -> Vec<u8> {
        let mut key = Vec::with_capacity(prefix.len() + self.id.len() + 16);
        key.extend_from_slice(prefix);
        key.extend_from_slice(&self.id);
        if let Some(hash) = hash {
            key.extend_from_slice(hash);
        }
        key
    }
}

/// The dedup window over every input partition.
pub struct DedupWindow {
    window_ms: i64,
    prune_every_ms: i64,
    partitions: Vec<PartitionWindow>,
}

fn partition_id(topic: &str, partition: i32) -> Vec<u8> {
    let mut id = topic.as_bytes().to_vec();
    id.push(0);
    id.extend_from_slice(&partition.to_be_bytes());
    id
}

fn event_hash(tenant: &str, event_id: &str) -> EventHash {
    let digest = Sha256::new()
        .chain_update(tenant.as_bytes())
        .chain_update([0])
        .chain_update(event_id.as_bytes())
        .finalize();
    let mut hash = [0; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

fn parse_i64(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

impl DedupWindow {
    /// A window of `window_ms` milliseconds.
    pub fn new(window_ms: i64) -> Self {
        let window_ms = window_ms.max(1);
        Self {
            window_ms,
            prune_every_ms: (window_ms / 4).max(1),
            partitions: Vec::new(),
        }
    }

    fn partition(&mut self, topic: &str, partition: i32) -> &mut PartitionWindow {
        let id = partition_id(topic, partition);
        match self.partitions.iter().position(|p| p.id == id) {
            Some(i) => &mut self.partitions[i],
            None => {
                self.partitions.push(PartitionWindow::new(id));
                let last = self.partitions.len() - 1;
                &mut self.partitions[last]
            }
        }
    }

    /// Loads the committed window from the store.
    ///
    /// # Errors
    /// [`StateError`] on read failure.
    pub fn restore(&mut self, store: &StateStore) -> Result<(), StateError> {
        self.partitions.clear();
        for entry in store.scan_prefix(CLOCK) {
            let (key, value) = entry?;
            let id = key[CLOCK.len()..].to_vec();
            let mut window = PartitionWindow::new(id);
            window.clock = parse_i64(&value).unwrap_or(i64::MIN);
            self.partitions.push(window);
        }
        for entry in store.scan_prefix(SEEN) {
            let (key, value) = entry?;
            let rest = &key[SEEN.len()..];
            let Some((id, hash)) = rest.split_last_chunk::<16>() else {
                continue;
            };
            if let (Some(window), Some(ts)) = (
                self.partitions.iter_mut().find(|p| p.id == id),
                parse_i64(&value),
            ) {
                window.seen.insert(*hash, ts);
            }
        }
        Ok(())
    }

    /// Records the event seen at `timestamp` in `topic`/`partition`; returns
    /// `true` if it is new, `false` if it is a duplicate within the window.
    pub fn observe(
        &mut self,
        txn: &mut StateTxn<'_>,
        topic: &str,
        partition: i32,
        tenant: &str,
        event_id: &str,
        timestamp: i64,
    ) -> bool {
        let (window_ms, prune_every) = (self.window_ms, self.prune_every_ms);
        let hash = event_hash(tenant, event_id);
        let window = self.partition(topic, partition);
        let old_clock = window.clock();
        let clock = old_clock.max(timestamp);
        if clock != old_clock {
            window.pending_clock = Some(clock);
            txn.put(window.key(CLOCK, None), clock.to_be_bytes().to_vec());
            if old_clock != i64::MIN
                && clock.div_euclid(prune_every) != old_clock.div_euclid(prune_every)
            {
                prune(window, txn, clock - window_ms);
            }
        }
        if window
            .get(&hash)
            .is_some_and(|seen| seen >= clock - window_ms)
        {
            return false;
        }
        window.pending.insert(hash, Some(timestamp));
        txn.put(
            window.key(SEEN, Some(&hash)),
            timestamp.to_be_bytes().to_vec(),
        );
        true
    }

    /// The open batch committed: its changes become the committed window.
    pub fn committed(&mut self) {
        for window in &mut self.partitions {
            for (hash, change) in window.pending.drain() {
                match change {
                    Some(ts) => window.seen.insert(hash, ts),
                    None => window.seen.remove(&hash),
                };
            }
            if let Some(clock) = window.pending_clock.take() {
                window.clock = clock;
            }
        }
    }

    /// The open batch was abandoned: forget its changes.
    pub fn abandoned(&mut self) {
        for window in &mut self.partitions {
            window.pending.clear();
            window.pending_clock = None;
        }
    }

    /// Live entries (committed plus pending), for tests and metrics.
    pub fn len(&self) -> usize {
        self.partitions
            .iter()
            .map(|w| {
                w.seen
                    .keys()
                    .filter(|h| !w.pending.contains_key(*h))
                    .count()
                    + w.pending.values().filter(|c| c.is_some()).count()
            })
            .sum()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn prune(window: &mut PartitionWindow, txn: &mut StateTxn<'_>, older_than: i64) {
    let mut expired: Vec<EventHash> = window
        .seen
        .iter()
        .filter(|(hash, ts)| **ts < older_than && !window.pending.contains_key(*hash))
        .map(|(hash, _)| *hash)
        .collect();
    expired.extend(
        window
            .pending
            .iter()
            .filter(|(_, change)| change.is_some_and(|ts| ts < older_than))
            .map(|(hash, _)| *hash),
    );
    for hash in expired {
        txn.delete(window.key(SEEN, Some(&hash)));
        window.pending.insert(hash, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_runtime::state::{Positions, StateStore};

    fn feed(
        store: &StateStore,
        window: &mut DedupWindow,
        events: &[(&str, i64)],
        batch: usize,
    ) -> Vec<bool> {
        let mut verdicts = Vec::new();
        for chunk in events.chunks(batch) {
            let mut txn = store.begin();
            for (id, ts) in chunk {
                verdicts.push(window.observe(&mut txn, "ingest.events", 0, "acme", id, *ts));
            }
            store.commit_for_test(txn, &Positions::new()).unwrap();
            window.committed();
        }
        verdicts
    }

    fn events() -> Vec<(String, i64)> {
        // 40 ids over 400 s, each repeated 5 s and 150 s later; window 100 s.
        let mut events = Vec::new();
        for i in 0..40i64 {
            let id = format!("e{i}");
            events.push((id.clone(), i * 10_000));
            events.push((id.clone(), i * 10_000 + 5_000));
            events.push((id, i * 10_000 + 150_000));
        }
        events.sort_by_key(|(_, ts)| *ts);
        events
    }

    #[test]
    fn drops_repeats_inside_the_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut window = DedupWindow::new(100_000);
        let mut txn = store.begin();
        assert!(window.observe(&mut txn, "t", 0, "acme", "a", 1_000));
        assert!(
            !window.observe(&mut txn, "t", 0, "acme", "a", 2_000),
            "repeat in window"
        );
        assert!(
            window.observe(&mut txn, "t", 0, "beta", "a", 2_000),
            "other tenant, same id"
        );
        assert!(window.observe(&mut txn, "t", 0, "acme", "b", 200_000));
        assert!(
            window.observe(&mut txn, "t", 0, "acme", "a", 200_001),
            "outside the window"
        );
    }

    #[test]
    fn digest_is_independent_of_batch_boundaries_and_survives_restore() {
        let events = events();
        let events: Vec<(&str, i64)> = events.iter().map(|(id, ts)| (id.as_str(), *ts)).collect();
        let mut digests = Vec::new();
        let mut all_verdicts = Vec::new();
        for batch in [1, 7, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let store = StateStore::open(dir.path()).unwrap();
            let mut window = DedupWindow::new(100_000);
            all_verdicts.push(feed(&store, &mut window, &events, batch));
            digests.push(store.digest().unwrap());

            let mut restored = DedupWindow::new(100_000);
            restored.restore(&store).unwrap();
            assert_eq!(
                restored.len(),
                window.len(),
                "restore reproduces the window"
            );
        }
        assert!(digests.windows(2).all(|d| d[0] == d[1]), "{digests:?}");
        assert!(all_verdicts.windows(2).all(|v| v[0] == v[1]));
        let new = all_verdicts[0].iter().filter(|v| **v).count();
        assert_eq!(
            new, 80,
            "each id is new twice: first sight and after expiry"
        );
    }

    #[test]
    fn abandoned_batches_leave_no_trace_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut window = DedupWindow::new(100_000);
        let mut txn = store.begin();
        assert!(window.observe(&mut txn, "t", 0, "acme", "a", 1_000));
        drop(txn);
        window.abandoned();
        let mut txn = store.begin();
        assert!(window.observe(&mut txn, "t", 0, "acme", "a", 1_000));
    }
}
