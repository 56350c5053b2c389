//! A second sink on the mechanism, kept in memory: rows of
//! `tenant,learner,key,value` lines into a map. It proves what a sink gets
//! by implementing [`TransactionalStore`]: rows written once across a lost
//! runtime commit, erasure that a replay cannot undo, answers kept for
//! re-sent commands, faults waited out or set aside, a restored store
//! refilled by replay.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use trellis_records::{DLQ_TOPIC, ERASE_COMMANDS_TOPIC, EraseCommand, PARTICIPANT_ACKS_TOPIC};

use super::*;
use crate::build::{Build, LocalSchemas, build_offline};
use crate::offline::OfflineRunner;
use crate::record::OwnedRecord;
use crate::secret::Secrets;
use crate::state::StateStore;
use crate::topology::Topology;

const NAME: &str = "memory-sink";
const ROWS_TOPIC: &str = "rows";

/// The store's tables.
#[derive(Default, Debug)]
struct Db {
    /// `tenant|key` → (learner, value).
    rows: BTreeMap<String, (String, String)>,
    offsets: HashMap<(String, i32), i64>,
    receipts: HashMap<String, ParticipantAck>,
    erased: HashSet<SubjectHash>,
    /// Transactions that wrote rows.
    writes: usize,
    /// The next commits fail with these, in order.
    faults: Vec<StoreError>,
}

/// The store: shared, so a test looks at it while a sink writes it, and a
/// second sink (after a "crash") finds what the first committed.
#[derive(Clone, Default)]
struct MemoryStore(Arc<Mutex<Db>>);

impl MemoryStore {
    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.0.lock().unwrap()
    }
}

/// A `rows` record: one line.
struct Line(String);

impl Input<'_> for Line {
    fn decode(record: &InputRecord<'_>, _: &AvroDecoder) -> Result<Self, DecodeError> {
        match record.topic {
            ROWS_TOPIC => {
                let value = record.value.ok_or(DecodeError::MissingValue)?;
                Ok(Self(String::from_utf8_lossy(value).into_owned()))
            }
            _ => Err(record.unexpected_topic()),
        }
    }
}

/// A row: (tenant, learner, key, value).
#[derive(Debug, Clone)]
struct Row(String, String, String, String, Source);

/// The batch's rows by `tenant|key`, the latest winning.
#[derive(Default)]
struct MemoryRows(BTreeMap<String, Row>);

impl Rows for MemoryRows {
    type Row = Row;

    fn add(&mut self, row: Row) {
        self.0.insert(format!("{}|{}", row.0, row.2), row);
    }

    fn erase(&mut self, tenant: &str, subject: &str) {
        self.0.retain(|_, r| !(r.0 == tenant && r.1 == subject));
    }
}

impl TransactionalStore for MemoryStore {
    type Record = Line;
    type Rows = MemoryRows;

    fn row(&self, record: &InputRecord<'_>, Line(line): Line) -> Result<Row, Rejected> {
        match line.split(',').collect::<Vec<_>>()[..] {
            [t, l, k, v] if !t.is_empty() && !l.is_empty() => Ok(Row(
                t.into(),
                l.into(),
                k.into(),
                v.into(),
                Source::of(record),
            )),
            _ => Err(Rejected {
                reason: "MEMORY_INVALID_ROW",
                detail: "a row is `tenant,learner,key,value`".into(),
            }),
        }
    }

    fn subject(row: &Row) -> Option<(&str, &str)> {
        Some((&row.0, &row.1))
    }

    async fn load(&mut self) -> Result<Committed, StoreError> {
        let db = self.db();
        Ok(Committed {
            offsets: db.offsets.clone(),
            erased: db.erased.clone(),
            receipts: db.receipts.clone(),
        })
    }

    async fn commit(
        &mut self,
        batch: &SinkBatch<MemoryRows>,
        acks: &Acks,
    ) -> Result<Written, StoreError> {
        let mut db = self.db();
        if !db.faults.is_empty() {
            return Err(db.faults.remove(0));
        }
        if let Some(bad) = batch.rows.0.values().find(|r| r.3 == "refuse") {
            return Err(StoreError::Data(format!("row {} refused", bad.2)));
        }
        let included = !batch.offsets.is_empty()
            && batch.offsets.iter().all(|((t, p), next)| {
                db.offsets
                    .get(&(t.to_string(), *p))
                    .is_some_and(|stored| stored >= next)
            });
        let mut written = Written::default();
        if included {
            // Written before; answer from the receipts only.
            for c in &batch.commands {
                if let Some(kept) = db.receipts.get(&c.command.command_id) {
                    let mut ack = kept.clone();
                    ack.learner.clone_from(&c.command.learner);
                    written.answers.push((ack, c.at));
                }
            }
            return Ok(written);
        }
        // Everything below happens at once: the lock is the transaction.
        for (key, row) in &batch.rows.0 {
            db.rows.insert(key.clone(), (row.1.clone(), row.3.clone()));
        }
        written.rows.insert("rows", batch.rows.0.len() as u64);
        for c in &batch.commands {
            let command = &c.command;
            let mut ack = acks.ack(
                &command.command_id,
                &command.request_id,
                &command.tenant_id,
                command.learner.clone(),
                c.at.unwrap_or_default(),
            );
            if let (Some(learner), "erasure") = (&command.learner, command.kind.as_str()) {
                let before = db.rows.len();
                let prefix = format!("{}|", command.tenant_id);
                db.rows
                    .retain(|key, row| !(key.starts_with(&prefix) && row.0 == *learner));
                let deleted = (before - db.rows.len()) as u64;
                db.erased.insert(subject_hash(&command.tenant_id, learner));
                written.deleted.insert("rows", deleted);
                ack.records_affected = deleted as i64;
                ack.detail = format!("deleted {deleted} rows");
            }
            if let Some(kept) = receipt(&ack) {
                db.receipts.insert(command.command_id.clone(), kept);
            }
            written.answers.push((ack, c.at));
        }
        for ((t, p), next) in &batch.offsets {
            let stored = db.offsets.entry((t.to_string(), *p)).or_default();
            *stored = (*stored).max(*next);
        }
        if !batch.rows.0.is_empty() {
            db.writes += 1;
        }
        Ok(written)
    }

    async fn set_aside(
        &mut self,
        batch: &mut SinkBatch<MemoryRows>,
    ) -> Result<Vec<Refused>, StoreError> {
        let refused: Vec<String> = batch
            .rows
            .0
            .iter()
            .filter(|(_, r)| r.3 == "refuse")
            .map(|(k, _)| k.clone())
            .collect();
        Ok(refused
            .into_iter()
            .filter_map(|key| batch.rows.0.remove(&key))
            .map(|row| Refused {
                reason: "MEMORY_REJECTED",
                topic: ROWS_TOPIC,
                source: row.4,
                detail: format!("the store refused the row of key {}", row.2),
            })
            .collect())
    }

    async fn reconnect(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The memory sink as a processor, built like every processor.
struct MemorySink;

#[derive(Clone, serde::Deserialize)]
struct MemorySettings;

impl crate::build::Settings for MemorySettings {}

thread_local! {
    /// The store a test hands to the sink it builds next (per thread: tests
    /// run side by side).
    static STORE: std::cell::RefCell<Option<MemoryStore>> = const { std::cell::RefCell::new(None) };
}

impl Build for MemorySink {
    const NAME: &'static str = NAME;
    const OWNS: &'static str = "the test's rows";
    type Settings = MemorySettings;
    type Processor = TransactionalSink<MemoryStore>;

    async fn build(ctx: &mut Context<'_, MemorySettings>) -> Result<Self::Processor, StartError> {
        let store = STORE
            .with(|s| s.borrow().clone())
            .expect("a store for the test");
        let acks = Acks::new(
            NAME,
            Arc::from(PARTICIPANT_ACKS_TOPIC),
            ctx.encoder(PARTICIPANT_ACKS_TOPIC).await?,
        );
        let counters = SinkCounters::new("memory");
        counters.register(ctx)?;
        TransactionalSink::open(store, acks, counters, ctx).await
    }
}

fn topology(dir: &Path) -> Topology {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let yaml = format!(
        "schema_dir: {}
topics:
  rows: {{description: lines, partitions: 2, retention_ms: 86400000, classification: internal, format: json}}
  {ERASE_COMMANDS_TOPIC}: {{description: commands, partitions: 1, retention_ms: 86400000, classification: internal, schema: erase_command.avsc}}
  {PARTICIPANT_ACKS_TOPIC}: {{description: answers, partitions: 1, retention_ms: 86400000, classification: internal, schema: participant_ack.avsc}}
  {DLQ_TOPIC}: {{description: letters, partitions: 1, retention_ms: 86400000, classification: internal, schema: dead_letter.avsc}}
processors:
  feeder: {{description: writes rows and commands, external: true, outputs: [rows, {ERASE_COMMANDS_TOPIC}]}}
  reader: {{description: reads answers, external: true, inputs: [{PARTICIPANT_ACKS_TOPIC}, {DLQ_TOPIC}]}}
  {NAME}: {{description: the memory sink, group: memory-sink, inputs: [rows, {ERASE_COMMANDS_TOPIC}], outputs: [{PARTICIPANT_ACKS_TOPIC}, {DLQ_TOPIC}]}}
",
        schemas.display()
    );
    let path = dir.join("topology.yaml");
    std::fs::write(&path, yaml).unwrap();
    Topology::load(&path).unwrap()
}

/// What a test drives: the topology, schemas, and records it produces.
struct Fixture {
    _dir: tempfile::TempDir,
    topology: Topology,
    schemas: LocalSchemas,
    log: Vec<OwnedRecord>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            topology: topology(dir.path()),
            _dir: dir,
            schemas: LocalSchemas::new(),
            log: Vec::new(),
        }
    }

    fn line(&mut self, partition: i32, line: &str) {
        let offset = self
            .log
            .iter()
            .filter(|r| r.topic == ROWS_TOPIC && r.partition == partition)
            .count() as i64;
        self.log.push(OwnedRecord {
            topic: ROWS_TOPIC.into(),
            partition,
            offset,
            timestamp_ms: Some(1_000 + offset),
            key: None,
            value: Some(line.as_bytes().to_vec()),
            headers: Vec::new(),
        });
    }

    fn erase(&mut self, command_id: &str, learner: &str) {
        let encoder = self
            .schemas
            .encoder(&self.topology, ERASE_COMMANDS_TOPIC)
            .unwrap();
        let command = EraseCommand {
            command_id: command_id.into(),
            request_id: format!("req-{command_id}"),
            tenant_id: "t".into(),
            participant: NAME.into(),
            kind: "erasure".into(),
            learner: Some(learner.into()),
            attempt: 1,
            issued_at: 5,
        };
        let offset = self
            .log
            .iter()
            .filter(|r| r.topic == ERASE_COMMANDS_TOPIC)
            .count() as i64;
        self.log.push(OwnedRecord {
            topic: ERASE_COMMANDS_TOPIC.into(),
            partition: 0,
            offset,
            timestamp_ms: Some(2_000 + offset),
            key: None,
            value: Some(encoder.encode(&command).unwrap()),
            headers: Vec::new(),
        });
    }

    /// Builds a sink over `store` (with the runtime's state in `state`) and
    /// runs it over `records`: (the sink, its answers, its dead letters).
    fn run(
        &self,
        store: &MemoryStore,
        state: &StateStore,
        records: &[OwnedRecord],
    ) -> (
        TransactionalSink<MemoryStore>,
        Vec<ParticipantAck>,
        Vec<trellis_records::DeadLetter>,
    ) {
        STORE.with(|s| *s.borrow_mut() = Some(store.clone()));
        let mut sink = futures::executor::block_on(build_offline::<MemorySink>(
            &self.topology,
            &MemorySettings,
            &Secrets::default(),
            &self.schemas,
            Some(state),
        ))
        .unwrap();
        let run = OfflineRunner::declared_in(&self.topology, NAME, self.schemas.decoder())
            .unwrap()
            .batch(3)
            .run(&mut sink, state, records)
            .unwrap();
        let answers = run
            .outputs
            .iter()
            .filter(|o| &*o.topic == PARTICIPANT_ACKS_TOPIC)
            .map(|o| {
                self.schemas
                    .decoder()
                    .decode_blocking(o.value.as_deref().unwrap())
                    .unwrap()
            })
            .collect();
        (sink, answers, run.dead_letters)
    }
}

fn rows(store: &MemoryStore) -> BTreeMap<String, (String, String)> {
    store.db().rows.clone()
}

#[test]
fn rows_land_once_though_the_runtime_lost_its_commit() {
    let mut f = Fixture::new();
    for i in 0..7 {
        f.line(i % 2, &format!("t,ann,k{i},v{i}"));
    }
    f.line(0, "t,bob,k0,b0");
    let store = MemoryStore::default();
    let dir = tempfile::tempdir().unwrap();
    let (_, _, letters) = f.run(&store, &StateStore::open(dir.path()).unwrap(), &f.log);
    assert!(letters.is_empty());
    let first = rows(&store);
    assert_eq!(
        first.len(),
        7,
        "k0 of ann and bob share a key: the latest wins"
    );
    assert_eq!(first["t|k0"], ("bob".into(), "b0".into()));
    let writes = store.db().writes;
    assert!(writes >= 3, "batches of 3: {writes} transactions");

    // The runtime's own state is lost (as if it crashed after the store's
    // commit and before its own): everything is read again, nothing is
    // written twice.
    let again = tempfile::tempdir().unwrap();
    let (sink, _, _) = f.run(&store, &StateStore::open(again.path()).unwrap(), &f.log);
    assert_eq!(rows(&store), first);
    assert_eq!(store.db().writes, writes, "no transaction wrote rows again");
    assert_eq!(
        sink.committed().offsets[&(ROWS_TOPIC.to_string(), 0)],
        5,
        "the store's offsets are the truth"
    );
}

#[test]
fn an_erasure_deletes_the_rows_once_and_a_replay_cannot_bring_them_back() {
    let mut f = Fixture::new();
    f.line(0, "t,ann,a1,x");
    f.line(1, "t,ann,a2,y");
    f.line(0, "t,bob,b1,z");
    // Batches of 3: the erasure in the second, its re-send in the third (a
    // re-send within one batch is answered once).
    f.erase("erase-ann", "ann");
    f.line(1, "t,ann,a3,late"); // a record of hers after the erasure
    f.line(0, "t,bob,b2,w");
    f.erase("erase-ann", "ann"); // re-sent
    let store = MemoryStore::default();
    let dir = tempfile::tempdir().unwrap();
    let (_, answers, _) = f.run(&store, &StateStore::open(dir.path()).unwrap(), &f.log);
    let got: BTreeMap<String, (String, String)> = rows(&store);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["t|b1", "t|b2"],
        "only bob's rows are left"
    );
    assert_eq!(answers.len(), 2, "the command and its re-send: {answers:?}");
    assert_eq!(answers[0], answers[1], "a re-send gets the same answer");
    assert_eq!(answers[0].records_affected, 2);
    assert_eq!(answers[0].learner.as_deref(), Some("ann"));
    // Remembered by hash, never by pseudonym.
    let db = store.db();
    assert!(db.erased.contains(&subject_hash("t", "ann")));
    assert!(!db.erased.contains(&subject_hash("t", "bob")));
    assert!(db.receipts.values().all(|r| r.learner.is_none()));
    drop(db);

    // A replay of everything from offset 0 into a fresh runtime store,
    // with the store restored to before her rows were written (offsets
    // lost): her records are dropped as erased.
    store.db().offsets.clear();
    let again = tempfile::tempdir().unwrap();
    let (_, _, _) = f.run(&store, &StateStore::open(again.path()).unwrap(), &f.log);
    assert_eq!(
        rows(&store).keys().cloned().collect::<Vec<_>>(),
        ["t|b1", "t|b2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fault_is_waited_out_and_a_refused_row_is_dead_lettered() {
    let mut f = Fixture::new();
    f.line(0, "t,ann,a1,x");
    f.line(0, "t,ann,a2,refuse");
    f.line(0, "t,ann,a3,z");
    f.line(0, "not a row");
    let store = MemoryStore::default();
    store
        .db()
        .faults
        .push(StoreError::Transient("the store restarts".into()));
    let dir = tempfile::tempdir().unwrap();
    let state = StateStore::open(dir.path()).unwrap();
    let (sink, _, letters) = tokio::task::block_in_place(|| f.run(&store, &state, &f.log));
    assert!(store.db().faults.is_empty(), "the fault happened");
    assert_eq!(
        rows(&store).keys().cloned().collect::<Vec<_>>(),
        ["t|a1", "t|a3"]
    );
    let mut reasons: Vec<(&str, i64)> = letters
        .iter()
        .map(|d| (d.reason.as_str(), d.source_offset))
        .collect();
    reasons.sort();
    assert_eq!(reasons, [("MEMORY_INVALID_ROW", 3), ("MEMORY_REJECTED", 1)]);
    assert_eq!(sink.committed().offsets[&(ROWS_TOPIC.to_string(), 0)], 4);
}

#[test]
fn a_store_restored_from_an_old_backup_is_refilled_by_replay() {
    let mut f = Fixture::new();
    f.line(0, "t,ann,a1,x");
    f.line(1, "t,bob,b1,y");
    let store = MemoryStore::default();
    let dir = tempfile::tempdir().unwrap();
    let state = StateStore::open(dir.path()).unwrap();
    f.run(&store, &state, &f.log);
    assert!(!state.positions().unwrap().is_empty(), "positive control");

    // The database comes back from a backup taken before anything was
    // written; the runtime's state still says everything was.
    *store.db() = Db::default();
    STORE.with(|s| *s.borrow_mut() = Some(store.clone()));
    futures::executor::block_on(build_offline::<MemorySink>(
        &f.topology,
        &MemorySettings,
        &Secrets::default(),
        &f.schemas,
        Some(&state),
    ))
    .unwrap();
    assert!(
        state.positions().unwrap().is_empty(),
        "the local state was discarded, so the inputs are replayed"
    );
    f.run(&store, &state, &f.log);
    assert_eq!(
        rows(&store).len(),
        2,
        "the replay wrote what the store lacked"
    );
}
