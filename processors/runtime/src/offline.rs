//! A processor run over records held in memory, with no broker: the live
//! loop's batches ([`crate::batch`]) with outputs kept in memory and state
//! committed at the end of every batch.
//!
//! Benchmarks use it to time a rebuild from an already-fetched log; tests
//! use it as the reference ("clean") run a live run must equal. Because it
//! drives the same [`BatchRunner`] as the live loop, a processor's
//! [`Processor::flush`] runs here too, outputs to undeclared topics are
//! refused, and an output over the message limit becomes a dead letter of
//! its input, as live.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use trellis_records::DeadLetter;

use crate::batch::{Batch, BatchRunner, Origin, Outputs};
use crate::emitter::{Emitter, OutputRecord};
use crate::error::{ProcessError, RunError};
use crate::processor::Processor;
use crate::producer::{DEFAULT_MAX_MESSAGE_BYTES, ProduceError};
use crate::record::{InputRecord, OwnedRecord};
use crate::schema::AvroDecoder;
use crate::state::StateStore;
use crate::topology::{Topology, TopologyError};

/// What an offline run saw a processor emit.
#[derive(Debug, Default)]
pub struct Offline {
    /// Output records, in emission order.
    pub outputs: Vec<OutputRecord>,
    /// Dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Inputs dropped as duplicates.
    pub duplicates: u64,
}

/// Runs one processor over in-memory records (see the module docs).
pub struct OfflineRunner<'a> {
    name: &'static str,
    decoder: &'a AvroDecoder,
    declared: HashSet<String>,
    batch: usize,
    max_message_bytes: usize,
}

impl<'a> OfflineRunner<'a> {
    /// A runner for the processor `name`, which may write `outputs`
    /// (topology.yaml's list), decoding Avro inputs with `decoder`.
    /// Batches of 1,000 records; librdkafka's default message limit.
    pub fn new(
        name: &'static str,
        decoder: &'a AvroDecoder,
        outputs: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name,
            decoder,
            declared: outputs.into_iter().map(Into::into).collect(),
            batch: 1_000,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// A runner for processor `name` as `topology` declares it.
    ///
    /// # Errors
    /// The processor is not declared.
    pub fn declared_in(
        topology: &Topology,
        name: &'static str,
        decoder: &'a AvroDecoder,
    ) -> Result<Self, TopologyError> {
        let spec = topology
            .processor(name)
            .map_err(|message| TopologyError::Invalid(vec![message]))?;
        Ok(Self::new(name, decoder, spec.outputs.iter().cloned()))
    }

    /// Commits state (and the positions it includes) every `records`.
    pub fn batch(mut self, records: usize) -> Self {
        self.batch = records.max(1);
        self
    }

    /// Outputs larger than `bytes` are refused as the producer would.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Runs `processor` over `records` against `store`, keeping what it emits.
    ///
    /// # Errors
    /// [`RunError`] as the live loop would stop on.
    pub fn run<P: Processor>(
        &self,
        processor: &mut P,
        store: &StateStore,
        records: &[OwnedRecord],
    ) -> Result<Offline, RunError> {
        self.drive(processor, store, records, false)
    }

    /// [`OfflineRunner::run`] as the runtime replays: what the processor
    /// emits is dropped ([`Emitter::discards`]), so only its state is built.
    /// This is what a rebuild costs.
    ///
    /// # Errors
    /// [`RunError`] as the live loop would stop on.
    pub fn replay<P: Processor>(
        &self,
        processor: &mut P,
        store: &StateStore,
        records: &[OwnedRecord],
    ) -> Result<Offline, RunError> {
        self.drive(processor, store, records, true)
    }

    fn drive<P: Processor>(
        &self,
        processor: &mut P,
        store: &StateStore,
        records: &[OwnedRecord],
        replaying: bool,
    ) -> Result<Offline, RunError> {
        processor.restore(store)?;
        let runner = BatchRunner {
            name: self.name,
            decoder: self.decoder,
            declared: &self.declared,
        };
        let mut out = MemoryOutputs {
            result: Offline::default(),
            max_message_bytes: self.max_message_bytes,
        };
        let mut emitter = Emitter::new(self.name);
        // Topic names as the live loop holds them: one `Arc` per topic.
        let mut topics: Vec<Arc<str>> = Vec::new();
        // One list of borrowed headers for every record, not one allocation each.
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        // Nothing here waits on anything but the processor's own flush, so
        // a simple executor drives the shared (async) batch code.
        futures::executor::block_on(async {
            for chunk in records.chunks(self.batch) {
                let mut batch = Batch::new(store);
                for record in chunk {
                    let topic = match topics.iter().find(|t| ***t == *record.topic) {
                        Some(topic) => topic.clone(),
                        None => {
                            let topic: Arc<str> = Arc::from(record.topic.as_str());
                            topics.push(topic.clone());
                            topic
                        }
                    };
                    headers.clear();
                    headers.extend(
                        record
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_str(), v.as_slice())),
                    );
                    let input = InputRecord::new(
                        &record.topic,
                        record.partition,
                        record.offset,
                        record.timestamp_ms,
                        record.key.as_deref(),
                        record.value.as_deref(),
                        &headers,
                    );
                    runner
                        .record(
                            processor,
                            &mut batch,
                            &mut emitter,
                            &input,
                            &topic,
                            replaying,
                            &mut out,
                        )
                        .await
                        .map_err(offline_halt)?;
                }
                runner.close(processor, &mut batch, &mut out).await?;
                let positions = batch.positions();
                store.commit(batch.txn, &positions)?;
                processor.committed();
            }
            Ok(out.result)
        })
    }
}

/// Offline there is no registry to wait for: a record whose writer schema
/// cannot be had stops the run loudly rather than being skipped.
fn offline_halt(e: RunError) -> RunError {
    match e {
        RunError::Decode(e) => ProcessError::fatal("decoding an input", e).into(),
        e => e,
    }
}

/// A batch's outputs kept in memory.
struct MemoryOutputs {
    result: Offline,
    max_message_bytes: usize,
}

impl Outputs for MemoryOutputs {
    async fn send(
        &mut self,
        output: OutputRecord,
        timestamp_ms: Option<i64>,
        request_id: Option<&[u8]>,
        _input: Option<&Origin>,
    ) -> Result<(), ProduceError> {
        let bytes = output.outgoing(timestamp_ms, request_id).size();
        if bytes > self.max_message_bytes {
            return Err(ProduceError::TooLarge {
                topic: output.topic.to_string(),
                bytes,
                limit: self.max_message_bytes,
            });
        }
        self.result.outputs.push(output);
        Ok(())
    }

    async fn send_dead_letter(
        &mut self,
        dead: DeadLetter,
        _input: &Origin,
        _request_id: Option<&[u8]>,
    ) -> Result<(), RunError> {
        let dead = crate::dead_letter::fit(dead, self.max_message_bytes);
        self.result.dead_letters.push(dead);
        Ok(())
    }

    fn applied(&mut self, _replaying: bool, duplicates: u64) {
        self.result.duplicates += duplicates;
    }
}

/// Processors built and run with no broker and no registry, the way tests
/// and benches use them: each built by its one constructor
/// ([`crate::build::Build`]) against the workspace's topology.yaml, with
/// schemas under local ids that [`Harness::encoder`] and
/// [`Harness::decoder`] share.
pub struct Harness {
    topology: Topology,
    schemas: crate::build::LocalSchemas,
    secrets: crate::secret::Secrets,
}

impl Harness {
    /// A harness over the workspace's topology.yaml.
    ///
    /// # Panics
    /// If topology.yaml cannot be loaded: a harness is for tests and
    /// benches run from a checkout.
    pub fn workspace() -> Self {
        #[allow(clippy::expect_used)]
        let topology = workspace_topology().expect("the workspace's topology.yaml loads");
        Self::with_topology(topology.clone())
    }

    /// A harness over `topology` (a test's variation of the workspace's).
    pub fn with_topology(topology: Topology) -> Self {
        Self {
            topology,
            schemas: crate::build::LocalSchemas::new(),
            secrets: crate::secret::Secrets::default(),
        }
    }

    /// With these secrets for the processors it builds.
    pub fn with_secrets(mut self, secrets: crate::secret::Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Builds processor `B` with `settings`.
    ///
    /// # Errors
    /// [`crate::error::StartError`] as the binary would refuse to start.
    pub fn build<B: crate::build::Build>(
        &self,
        settings: &B::Settings,
    ) -> Result<B::Processor, crate::error::StartError> {
        futures::executor::block_on(crate::build::build_offline::<B>(
            &self.topology,
            settings,
            &self.secrets,
            &self.schemas,
            None,
        ))
    }

    /// An encoder for `topic`'s records (inputs a test produces).
    ///
    /// # Panics
    /// If the topic has no schema.
    pub fn encoder(&self, topic: &str) -> crate::schema::AvroEncoder {
        #[allow(clippy::expect_used)]
        self.schemas
            .encoder(&self.topology, topic)
            .expect("the topic has a schema")
    }

    /// The decoder that knows every schema the harness handed out.
    pub fn decoder(&self) -> &AvroDecoder {
        self.schemas.decoder()
    }

    /// A runner for processor `name` as topology.yaml declares it.
    ///
    /// # Panics
    /// If the processor is not declared.
    pub fn runner(&self, name: &'static str) -> OfflineRunner<'_> {
        #[allow(clippy::expect_used)]
        OfflineRunner::declared_in(&self.topology, name, self.decoder())
            .expect("the processor is declared")
    }
}

/// The workspace's topology.yaml, for tests and tools run from a checkout.
fn workspace_topology() -> Result<&'static Topology, RunError> {
    static TOPOLOGY: OnceLock<Result<Topology, String>> = OnceLock::new();
    TOPOLOGY
        .get_or_init(|| {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../topology.yaml");
            Topology::load(&path).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ProcessError::fatal("loading the workspace's topology.yaml", e.clone()).into())
}

/// Runs `processor` (named `name`, with the outputs the workspace's
/// topology.yaml declares for it) over `records` against `store`,
/// committing every `batch` records: [`OfflineRunner::run`].
///
/// # Errors
/// [`RunError`] as the live loop would stop on.
pub fn run_offline<P: Processor>(
    name: &'static str,
    processor: &mut P,
    store: &StateStore,
    decoder: &AvroDecoder,
    records: &[OwnedRecord],
    batch: usize,
) -> Result<Offline, RunError> {
    runner(name, decoder, batch)?.run(processor, store, records)
}

/// [`run_offline`] as the runtime replays: [`OfflineRunner::replay`].
///
/// # Errors
/// [`RunError`] as the live loop would stop on.
pub fn replay_offline<P: Processor>(
    name: &'static str,
    processor: &mut P,
    store: &StateStore,
    decoder: &AvroDecoder,
    records: &[OwnedRecord],
    batch: usize,
) -> Result<Offline, RunError> {
    runner(name, decoder, batch)?.replay(processor, store, records)
}

fn runner<'a>(
    name: &'static str,
    decoder: &'a AvroDecoder,
    batch: usize,
) -> Result<OfflineRunner<'a>, RunError> {
    let topology = workspace_topology()?;
    Ok(OfflineRunner::declared_in(topology, name, decoder)
        .map_err(|e| ProcessError::fatal("an offline run", e))?
        .batch(batch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{DecodeError, registry_settings};
    use crate::state::StateTxn;
    use apache_avro::Schema;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Greeting {
        text: String,
    }

    enum Input {
        Greeting(Greeting),
    }

    impl crate::processor::Input<'_> for Input {
        fn decode(record: &InputRecord<'_>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
            match record.topic {
                "greetings" => record.avro(avro).map(Self::Greeting),
                _ => Err(record.unexpected_topic()),
            }
        }
    }

    /// Echoes each greeting's text; counts what it was handed. With
    /// `summaries`, its flush emits the batch's record count to `summaries`.
    #[derive(Default)]
    struct Echo {
        seen: usize,
        in_batch: usize,
        summaries: bool,
        /// Where greetings are echoed (default `echoes`).
        target: Option<&'static str>,
    }

    impl Processor for Echo {
        type Input<'r> = Input;

        fn process(
            &mut self,
            record: &InputRecord<'_>,
            Input::Greeting(greeting): Input,
            _txn: &mut StateTxn<'_>,
            out: &mut Emitter,
        ) -> Result<(), ProcessError> {
            self.seen += 1;
            self.in_batch += 1;
            out.emit(OutputRecord {
                topic: self.target.unwrap_or("echoes").into(),
                key: Vec::new(),
                value: Some(greeting.text.into_bytes()),
                id: format!("echo/{}", record.offset),
                tenant: None,
            });
            Ok(())
        }

        async fn flush(&mut self, out: &mut Emitter) -> Result<(), ProcessError> {
            if self.summaries {
                out.emit(OutputRecord {
                    topic: "summaries".into(),
                    key: Vec::new(),
                    value: Some(self.in_batch.to_string().into_bytes()),
                    id: format!("summary/{}", self.seen),
                    tenant: None,
                });
            }
            self.in_batch = 0;
            Ok(())
        }
    }

    fn runner(decoder: &AvroDecoder) -> OfflineRunner<'_> {
        OfflineRunner::new(
            "echo",
            decoder,
            ["echoes", "summaries", trellis_records::DLQ_TOPIC],
        )
    }

    fn greetings(n: i64) -> (AvroDecoder, Vec<OwnedRecord>) {
        let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9").unwrap());
        let schema = Schema::parse_str(SCHEMA).unwrap();
        decoder.insert(7, schema.clone()).unwrap();
        let encoder = crate::schema::AvroEncoder::with_id("greetings".into(), 7, schema).unwrap();
        let records = (0..n)
            .map(|offset| {
                let text = "hi ".repeat(offset as usize + 1);
                record(
                    "greetings",
                    offset,
                    Some(encoder.encode(&Greeting { text }).unwrap()),
                )
            })
            .collect();
        (decoder, records)
    }

    #[test]
    fn a_processors_flush_runs_offline_after_every_batch() {
        let (decoder, records) = greetings(5);
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut echo = Echo {
            summaries: true,
            ..Echo::default()
        };
        let run = runner(&decoder)
            .batch(2)
            .run(&mut echo, &store, &records)
            .unwrap();
        let summaries: Vec<&[u8]> = run
            .outputs
            .iter()
            .filter(|o| &*o.topic == "summaries")
            .filter_map(|o| o.value.as_deref())
            .collect();
        assert_eq!(
            summaries,
            [b"2".as_slice(), b"2", b"1"],
            "one per batch of 2"
        );
        // Flushed outputs follow the batch's own.
        let topics: Vec<&str> = run.outputs.iter().map(|o| &*o.topic).collect();
        assert_eq!(
            topics,
            [
                "echoes",
                "echoes",
                "summaries",
                "echoes",
                "echoes",
                "summaries",
                "echoes",
                "summaries"
            ]
        );
    }

    #[test]
    fn offline_refuses_undeclared_outputs_and_letters_outputs_over_the_limit() {
        let (decoder, records) = greetings(3);
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut stray = Echo {
            target: Some("elsewhere"),
            ..Echo::default()
        };
        let err = runner(&decoder)
            .run(&mut stray, &store, &records)
            .unwrap_err();
        assert!(
            matches!(&err, RunError::UndeclaredOutput { processor: "echo", topic } if topic == "elsewhere"),
            "{err}"
        );

        // The third greeting's echo (9 bytes of text) does not fit: its
        // input is dead-lettered, the others are echoed.
        let store = StateStore::open(&dir.path().join("2")).unwrap();
        let small = OutputRecord {
            topic: "echoes".into(),
            key: Vec::new(),
            value: Some(b"hi hi ".to_vec()),
            id: "echo/1".into(),
            tenant: None,
        };
        let limit = small.outgoing(None, None).size();
        let run = runner(&decoder)
            .max_message_bytes(limit)
            .run(&mut Echo::default(), &store, &records)
            .unwrap();
        assert_eq!(run.outputs.len(), 2);
        let letters: Vec<(&str, i64)> = run
            .dead_letters
            .iter()
            .map(|d| (d.reason.as_str(), d.source_offset))
            .collect();
        assert_eq!(letters, [("OUTPUT_TOO_LARGE", 2)]);
    }

    fn record(topic: &str, offset: i64, value: Option<Vec<u8>>) -> OwnedRecord {
        OwnedRecord {
            topic: topic.into(),
            partition: 0,
            offset,
            timestamp_ms: Some(1),
            key: None,
            value,
            headers: Vec::new(),
        }
    }

    const SCHEMA: &str =
        r#"{"type":"record","name":"Greeting","fields":[{"name":"text","type":"string"}]}"#;

    #[test]
    fn the_runtime_decodes_inputs_and_dead_letters_what_is_not_their_type() {
        let decoder = AvroDecoder::new(registry_settings("http://127.0.0.1:9").unwrap());
        let schema = Schema::parse_str(SCHEMA).unwrap();
        decoder.insert(7, schema.clone()).unwrap();
        let encoder = crate::schema::AvroEncoder::with_id("greetings".into(), 7, schema).unwrap();
        let good = encoder.encode(&Greeting { text: "hi".into() }).unwrap();
        let mut wrong_id = good.clone();
        wrong_id[4] = 8; // schema id 8: never fetched, and no registry to ask
        let records = [
            record("greetings", 0, Some(good.clone())),
            record("greetings", 1, None),
            record("greetings", 2, Some(b"{\"text\":\"json\"}".to_vec())),
            record("elsewhere", 0, Some(good)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut echo = Echo::default();
        let run = runner(&decoder)
            .batch(2)
            .run(&mut echo, &store, &records)
            .unwrap();
        assert_eq!(
            echo.seen, 1,
            "only the decodable record reaches the processor"
        );
        assert_eq!(run.outputs.len(), 1);
        assert_eq!(run.outputs[0].value.as_deref(), Some(b"hi".as_slice()));
        let reasons: Vec<(&str, &str, i64)> = run
            .dead_letters
            .iter()
            .map(|d| (d.reason.as_str(), d.processor.as_str(), d.source_offset))
            .collect();
        assert_eq!(
            reasons,
            [
                ("MISSING_VALUE", "echo", 1),
                ("UNDECODABLE", "echo", 2),
                ("UNDECODABLE", "echo", 0)
            ]
        );
        assert!(run.dead_letters[2].detail.contains("`elsewhere`"));

        // A schema the registry cannot be asked about is not the record's
        // fault: the run stops loudly instead of dead-lettering it.
        let store = StateStore::open(&dir.path().join("2")).unwrap();
        let err = runner(&decoder)
            .batch(1)
            .run(
                &mut Echo::default(),
                &store,
                &[record("greetings", 0, Some(wrong_id))],
            )
            .unwrap_err();
        assert!(err.to_string().contains("decoding an input"), "{err}");
    }
}
