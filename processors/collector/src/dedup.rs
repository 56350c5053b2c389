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
//! The window is mirrored in memory (lookups must not hit sled per record).
//! It is stored in **segments**: the entries added by the records at offsets
//! `n·SEGMENT .. (n+1)·SEGMENT` of a partition, in offset order, are one
//! value. A batch rewrites the one or two segments it appended to, not one
//! key per event (a sled insert per event was a third of the collector's
//! time). Segments are a function of the record sequence too, so the digest
//! still does not depend on batch boundaries. Changes of the open batch are
//! kept apart until the batch commits.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};
use trellis_runtime::StateTxn;
use trellis_runtime::state::{StateError, StateStore, key};

type EventHash = [u8; 16];

/// `(hash, timestamp)` pairs in offset order.
type Segment = Vec<(EventHash, i64)>;

/// Offsets per stored segment: a value of at most 24 kB, so a small batch
/// rewrites little, and a 5,000-record batch writes about six.
const SEGMENT: i64 = 1024;
/// Bytes per stored entry: hash, then timestamp (big-endian).
const ENTRY: usize = 24;

/// A partition's segments: `segment ‖ topic ‖ partition ‖ segment number
/// (u64 BE)` → entries (keys in the runtime's encoding, `state::key`).
const SEGMENTS: u8 = b'g';
/// A partition's clock: `clock ‖ topic ‖ partition`.
const CLOCK: u8 = b'k';

struct PartitionWindow {
    /// `topic ‖ 0x00 ‖ partition` as used in state keys.
    id: Vec<u8>,
    clock: i64,
    seen: HashMap<EventHash, i64>,
    /// Uncommitted changes: `None` is a prune.
    pending: HashMap<EventHash, Option<i64>>,
    pending_clock: Option<i64>,
    /// Committed segments by number.
    segments: BTreeMap<u64, Segment>,
    /// Segments the open batch changed; `None` is one pruned empty.
    pending_segments: BTreeMap<u64, Option<Segment>>,
}

impl PartitionWindow {
    fn new(id: Vec<u8>) -> Self {
        Self {
            id,
            clock: i64::MIN,
            seen: HashMap::new(),
            pending: HashMap::new(),
            pending_clock: None,
            segments: BTreeMap::new(),
            pending_segments: BTreeMap::new(),
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

    /// The open batch's copy of segment `n`, made on first change.
    fn segment_mut(&mut self, n: u64) -> &mut Segment {
        let committed = &self.segments;
        self.pending_segments
            .entry(n)
            .or_insert_with(|| Some(committed.get(&n).cloned().unwrap_or_default()))
            .get_or_insert_with(Vec::new)
    }

    /// The window's key in namespace `kind` (its id is `topic ‖ 0 ‖
    /// partition`, so this is `kind ‖ topic ‖ partition [‖ segment]`).
    fn key(&self, kind: u8, segment: Option<u64>) -> Vec<u8> {
        match segment {
            None => key::key(kind, &[&self.id[..]]),
            Some(n) => key::key(kind, &[&self.id[..], &n.to_be_bytes()]),
        }
    }

    fn prune(&mut self, older_than: i64) {
        let mut expired: Vec<EventHash> = self
            .seen
            .iter()
            .filter(|(hash, ts)| **ts < older_than && !self.pending.contains_key(*hash))
            .map(|(hash, _)| *hash)
            .collect();
        expired.extend(
            self.pending
                .iter()
                .filter(|(_, change)| change.is_some_and(|ts| ts < older_than))
                .map(|(hash, _)| *hash),
        );
        for hash in expired {
            self.pending.insert(hash, None);
        }
        let mut numbers: Vec<u64> = self.segments.keys().copied().collect();
        numbers.extend(self.pending_segments.keys().copied());
        numbers.sort_unstable();
        numbers.dedup();
        for n in numbers {
            let current = match self.pending_segments.get(&n) {
                Some(change) => change.as_ref(),
                None => self.segments.get(&n),
            };
            let Some(current) = current else { continue };
            if current.iter().all(|(_, ts)| *ts >= older_than) {
                continue;
            }
            let kept: Segment = current
                .iter()
                .filter(|(_, ts)| *ts >= older_than)
                .copied()
                .collect();
            self.pending_segments
                .insert(n, (!kept.is_empty()).then_some(kept));
        }
    }
}

fn encode(segment: &Segment) -> Vec<u8> {
    let mut value = Vec::with_capacity(segment.len() * ENTRY);
    for (hash, ts) in segment {
        value.extend_from_slice(hash);
        value.extend_from_slice(&ts.to_be_bytes());
    }
    value
}

fn decode(value: &[u8]) -> Option<Segment> {
    if !value.len().is_multiple_of(ENTRY) {
        return None;
    }
    value
        .chunks_exact(ENTRY)
        .map(|entry| {
            let (hash, ts) = entry.split_first_chunk::<16>()?;
            Some((*hash, parse_i64(ts)?))
        })
        .collect()
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
    /// [`StateError`] on read failure or a segment that does not decode.
    /// (A store of an earlier layout never gets here: the runtime refuses
    /// a store of another `STATE_FORMAT`, naming `--rebuild`.)
    pub fn restore(&mut self, store: &StateStore) -> Result<(), StateError> {
        self.partitions.clear();
        for entry in store.scan_prefix(&[CLOCK]) {
            let (key, value) = entry?;
            let id = key.get(2..).unwrap_or_default().to_vec();
            let mut window = PartitionWindow::new(id);
            window.clock = parse_i64(&value).unwrap_or(i64::MIN);
            self.partitions.push(window);
        }
        // Key order is segment order: a later entry for the same hash (seen
        // again after it expired) overwrites an earlier one, as it did live.
        for entry in store.scan_prefix(&[SEGMENTS]) {
            let (key, value) = entry?;
            let rest = key.get(2..).unwrap_or_default();
            let Some((id, n)) = rest
                .split_last_chunk::<8>()
                .and_then(|(id, n)| Some((id.strip_suffix(&[0])?, n)))
            else {
                return Err(StateError::corrupt("dedup segment key too short"));
            };
            let segment = decode(&value)
                .ok_or_else(|| StateError::corrupt("dedup segment is not whole entries"))?;
            let Some(window) = self.partitions.iter_mut().find(|p| p.id == id) else {
                return Err(StateError::corrupt(
                    "dedup segment of a partition with no clock",
                ));
            };
            for (hash, ts) in &segment {
                window.seen.insert(*hash, *ts);
            }
            window.segments.insert(u64::from_be_bytes(*n), segment);
        }
        Ok(())
    }

    /// Records the event seen at `timestamp` at `offset` of `topic`/`partition`;
    /// returns `true` if it is new, `false` if it is a duplicate within the
    /// window. Nothing is written until [`DedupWindow::save`].
    pub fn observe(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
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
            if old_clock != i64::MIN
                && clock.div_euclid(prune_every) != old_clock.div_euclid(prune_every)
            {
                window.prune(clock - window_ms);
            }
        }
        if window
            .get(&hash)
            .is_some_and(|seen| seen >= clock - window_ms)
        {
            return false;
        }
        window.pending.insert(hash, Some(timestamp));
        let n = (offset.max(0) / SEGMENT) as u64;
        window.segment_mut(n).push((hash, timestamp));
        true
    }

    /// Writes the open batch's changes: each changed segment once, and the
    /// clocks that moved.
    pub fn save(&self, txn: &mut StateTxn<'_>) {
        for window in &self.partitions {
            if let Some(clock) = window.pending_clock {
                txn.put(window.key(CLOCK, None), clock.to_be_bytes().to_vec());
            }
            for (n, segment) in &window.pending_segments {
                let key = window.key(SEGMENTS, Some(*n));
                match segment {
                    Some(segment) => txn.put(key, encode(segment)),
                    None => txn.delete(key),
                }
            }
        }
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
            for (n, segment) in std::mem::take(&mut window.pending_segments) {
                match segment {
                    Some(segment) => window.segments.insert(n, segment),
                    None => window.segments.remove(&n),
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
            window.pending_segments.clear();
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

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_runtime::state::{Positions, StateStore, StateTxn};

    /// Commits `txn` as the pipeline would after a batch. `expect`, not
    /// `allow`: clippy fails if clippy.toml stops keeping this call out of
    /// processors.
    #[expect(
        clippy::disallowed_methods,
        reason = "a unit test commits the store itself"
    )]
    fn commit(store: &StateStore, txn: StateTxn<'_>) {
        store.commit_for_test(txn, &Positions::new()).unwrap();
    }

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
                // Spread over several segments, so that appends cross
                // segment ends and prunes empty whole segments.
                let offset = verdicts.len() as i64 * 97;
                verdicts.push(window.observe("ingest.events", 0, offset, "acme", id, *ts));
            }
            window.save(&mut txn);
            commit(store, txn);
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
        let mut window = DedupWindow::new(100_000);
        assert!(window.observe("t", 0, 0, "acme", "a", 1_000));
        assert!(
            !window.observe("t", 0, 1, "acme", "a", 2_000),
            "repeat in window"
        );
        assert!(
            window.observe("t", 0, 2, "beta", "a", 2_000),
            "other tenant, same id"
        );
        assert!(window.observe("t", 0, 3, "acme", "b", 200_000));
        assert!(
            window.observe("t", 0, 4, "acme", "a", 200_001),
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
    fn a_batch_writes_one_value_per_segment_not_one_per_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut window = DedupWindow::new(100_000);
        let mut txn = store.begin();
        for offset in 0..10_000 {
            assert!(window.observe("t", 0, offset, "acme", &format!("e{offset}"), 1_000));
        }
        window.save(&mut txn);
        commit(&store, txn);
        window.committed();
        let segments = store.scan_prefix(&[SEGMENTS]).count();
        assert_eq!(segments, 10, "offsets 0..10,000 in segments of {SEGMENT}");
        let mut restored = DedupWindow::new(100_000);
        restored.restore(&store).unwrap();
        assert_eq!(restored.len(), 10_000);
        assert!(!restored.observe("t", 0, 10_000, "acme", "e9999", 2_000));
    }

    #[test]
    fn abandoned_batches_leave_no_trace_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut window = DedupWindow::new(100_000);
        assert!(window.observe("t", 0, 0, "acme", "a", 1_000));
        window.abandoned();
        let mut txn = store.begin();
        window.save(&mut txn);
        commit(&store, txn);
        assert_eq!(
            store.scan_prefix(&[SEGMENTS]).count(),
            0,
            "nothing left to save"
        );
        assert!(window.observe("t", 0, 0, "acme", "a", 1_000));
    }
}
