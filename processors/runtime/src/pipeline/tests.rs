use super::*;
use std::time::Instant;

use crate::kafka::REQUEST_ID_HEADER;
use crate::producer::Outgoing;
use crate::state::StateTxn;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::consumer::BaseConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const TOPOLOGY: &str = "schema_dir: schemas
topics:
  in:
    description: test input
    partitions: 1
    retention_ms: 86400000
    classification: internal
    format: json
  out:
    description: test output
    partitions: 1
    retention_ms: 86400000
    classification: internal
    schema: echo.avsc
  trellis.leases:
    description: the lease
    partitions: 1
    retention_ms: 86400000
    classification: internal
    format: json
  elsewhere:
    description: a topic the processor does not declare
    partitions: 1
    retention_ms: 86400000
    classification: internal
    format: json
processors:
  feeder:
    description: test producer
    external: true
    outputs: [in, elsewhere]
  reader:
    description: test consumer
    external: true
    inputs: [out, elsewhere]
  echo:
    description: copies `in` to a topic
    group: test-echo
    inputs: [in]
    outputs: [out]
";

/// Emits every input to `topic`.
struct EmitTo(&'static str);

impl Processor for EmitTo {
    type Input<'r> = ();

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        (): (),
        _txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        out.emit(OutputRecord {
            topic: Arc::from(self.0),
            key: b"k".to_vec(),
            value: record.value.map(<[u8]>::to_vec),
            id: format!("echo/{}", record.offset),
            tenant: None,
        });
        Ok(())
    }
}

async fn run_echo(target: &'static str) -> Result<Exit, RunError> {
    run_echo_on(&MockCluster::new(1).unwrap(), target).await
}

/// Feeds one record to a processor emitting to `target`, stopping it
/// cleanly after 6 s (the mock's group grants the lease after its initial
/// rebalance delay, 3 s).
async fn run_echo_on(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    target: &'static str,
) -> Result<Exit, RunError> {
    for topic in ["in", "out", "elsewhere", "trellis.leases"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("topology.yaml");
    std::fs::create_dir_all(dir.path().join("schemas")).unwrap();
    std::fs::write(&topology, TOPOLOGY).unwrap();
    std::fs::write(
        dir.path().join("schemas/echo.avsc"),
        r#"{"type":"record","name":"Echo","fields":[{"name":"v","type":"bytes"}]}"#,
    )
    .unwrap();
    let config_path = dir.path().join("echo.yaml");
    std::fs::write(
            &config_path,
            format!(
                "topology: {}\nkafka: {{bootstrap_servers: '{}'}}\nregistry: {{url: 'http://127.0.0.1:9'}}\nstate_dir: {}\nbatch: {{max_records: 10, max_wait_ms: 20}}\nsettings: {{}}\n",
                topology.display(),
                cluster.bootstrap_servers(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
    let config: Config<serde_json::Value> = Config::load(Some(&config_path)).unwrap();
    let producer = TrellisProducer::create(&config.kafka).unwrap();
    let record = Outgoing {
        topic: "in",
        key: b"k",
        value: Some(b"hello"),
        id: Some("in-1"),
        tenant: None,
        request_id: Some(b"req-7"),
        timestamp_ms: None,
    };
    producer
        .send(&record, Duration::from_secs(10))
        .await
        .unwrap();
    let runtime = Runtime::start("echo", 1, &config).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        runtime.run(
            EmitTo(target),
            Box::pin(tokio::time::sleep(Duration::from_secs(6))),
        ),
    )
    .await
    .expect("the loop answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_emitting_to_an_undeclared_topic_is_refused() {
    let err = run_echo("elsewhere").await.unwrap_err();
    assert!(
        matches!(&err, RunError::UndeclaredOutput { processor: "echo", topic } if topic == "elsewhere"),
        "{err}"
    );
    assert!(err.to_string().contains("does not list among its outputs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_emitting_to_its_declared_output_runs() {
    let cluster = MockCluster::new(1).unwrap();
    assert_eq!(run_echo_on(&cluster, "out").await.unwrap(), Exit::Success);
    // It ran: the input was consumed and its output reached `out`.
    with_first_output(&cluster, |message| {
        assert_eq!(message.payload(), Some(b"hello".as_slice()));
    });
}

/// Calls `check` with the first record on `out` of `cluster`.
fn with_first_output(
    cluster: &MockCluster<'_, DefaultProducerContext>,
    check: impl FnOnce(&rdkafka::message::BorrowedMessage<'_>),
) {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "test-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&["out"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => return check(&message),
            Some(Err(e)) => panic!("{e}"),
            None => assert!(Instant::now() < deadline, "no output on `out`"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_the_group_offset_at_what_was_processed() {
    let cluster = MockCluster::new(1).unwrap();
    // The checkpoint's commit, sent without waiting, is refused.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    );
    assert_eq!(run_echo_on(&cluster, "out").await.unwrap(), Exit::Success);
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "test-echo")
        .create()
        .unwrap();
    let mut asked = TopicPartitionList::new();
    asked.add_partition("in", 0);
    let committed = reader
        .committed_offsets(asked, Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        committed.find_partition("in", 0).unwrap().offset(),
        Offset::Offset(1),
        "the one record is marked durable"
    );
}

/// Headers are parsed only when read; an output must still carry its
/// input's request id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_carries_its_inputs_request_id() {
    let cluster = MockCluster::new(1).unwrap();
    assert_eq!(run_echo_on(&cluster, "out").await.unwrap(), Exit::Success);
    with_first_output(&cluster, |message| {
        let record = InputRecord::from_kafka(message);
        assert_eq!(record.header(REQUEST_ID_HEADER), Some(b"req-7".as_slice()));
        assert_eq!(record.value, Some(b"hello".as_slice()));
    });
}

#[test]
fn a_store_in_another_state_format_is_refused_with_the_way_out_never_misread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let write = |store: &StateStore, key: &[u8]| {
        let mut txn = store.begin();
        txn.put(key.to_vec(), b"v".to_vec());
        store.commit(txn, &crate::state::Positions::new()).unwrap();
    };
    let refused = |rebuild: bool, format: u32| {
        let err = open_store(&path, rebuild, format).err().expect("refused");
        err.to_string()
    };
    // A store from before formats were recorded is format 1.
    write(&StateStore::open(&path).unwrap(), b"old layout");
    let store = open_store(&path, false, 1).unwrap();
    assert!(store.get(b"old layout").unwrap().is_some(), "kept");
    assert_eq!(store.format(), Some(1));
    drop(store);
    // A build that lays its state out differently refuses it, naming both
    // formats and the way out; nothing is removed.
    let err = refused(false, 2);
    assert!(
        err.contains("in state format 1, but this build reads format 2")
            && err.contains("--rebuild"),
        "{err}"
    );
    // --rebuild starts from an empty store (the runtime then replays the
    // log into it), in the build's format.
    let store = open_store(&path, true, 2).unwrap();
    assert!(store.is_empty(), "rebuilt");
    assert_eq!(store.format(), Some(2));
    write(&store, b"new layout");
    drop(store);
    let store = open_store(&path, false, 2).unwrap();
    assert!(store.get(b"new layout").unwrap().is_some(), "kept");
    drop(store);
    // An older build refuses a store of a later format too.
    assert!(refused(false, 1).contains("in state format 2, but this build reads format 1"));
    // A new, empty store takes the build's format.
    let fresh = dir.path().join("fresh");
    assert_eq!(open_store(&fresh, false, 3).unwrap().format(), Some(3));
}
