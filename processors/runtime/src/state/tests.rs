use super::frame::frame_finish;
use super::table::Table;
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

#[test]
fn a_reset_store_is_empty_on_disk_too_and_keeps_its_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store.set_cluster_id("cluster-1").unwrap();
    commit_one(&store, b"row/1", Some(b"value of a learner"), 7);
    let files_hold = |needle: &[u8]| {
        std::fs::read_dir(dir.path()).unwrap().any(|f| {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    };
    assert!(files_hold(b"value of a learner"), "positive control");
    assert!(!store.positions().unwrap().is_empty());
    store.reset().unwrap();
    assert!(store.is_empty());
    assert!(store.positions().unwrap().is_empty());
    assert!(!files_hold(b"value of a learner"));
    drop(store);
    let store = StateStore::open(dir.path()).unwrap();
    assert!(store.is_empty() && store.positions().unwrap().is_empty());
    assert_eq!(store.cluster_id().unwrap().as_deref(), Some("cluster-1"));
}
