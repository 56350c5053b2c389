//! A processor run over records held in memory, with no broker.

use trellis_records::DeadLetter;

use crate::emitter::{Emitter, OutputRecord};
use crate::processor::{Halt, ProcessError, Processor, apply};
use crate::record::{InputRecord, OwnedRecord};
use crate::schema::AvroDecoder;
use crate::state::{Positions, StateStore, TopicPartition};

/// What [`run_offline`] saw a processor emit.
#[derive(Debug, Default)]
pub struct Offline {
    /// Output records, in emission order.
    pub outputs: Vec<OutputRecord>,
    /// Dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Inputs dropped as duplicates.
    pub duplicates: u64,
}

/// Runs `processor` (named `name`) over `records` against `store` with no
/// broker: the live loop's per-record step ([`apply`]: decode with
/// `decoder`, dead-letter bad input, process), committing state with the
/// input positions every `batch` records. Benchmarks use it to time a rebuild from
/// an already-fetched log; tests use it as the reference ("clean") run a
/// live run must equal.
///
/// # Errors
/// [`ProcessError`] as the live loop would stop on.
pub fn run_offline<P: Processor>(
    name: &'static str,
    processor: &mut P,
    store: &StateStore,
    decoder: &AvroDecoder,
    records: &[OwnedRecord],
    batch: usize,
) -> Result<Offline, ProcessError> {
    run(name, processor, store, decoder, records, batch, false)
}

/// [`run_offline`] as the runtime replays: what the processor emits is
/// dropped ([`Emitter::discards`]), so only its state is built. This is
/// what a rebuild costs; the result holds dead letters and duplicates only.
///
/// # Errors
/// [`ProcessError`] as the live loop would stop on.
pub fn replay_offline<P: Processor>(
    name: &'static str,
    processor: &mut P,
    store: &StateStore,
    decoder: &AvroDecoder,
    records: &[OwnedRecord],
    batch: usize,
) -> Result<Offline, ProcessError> {
    run(name, processor, store, decoder, records, batch, true)
}

fn run<P: Processor>(
    name: &'static str,
    processor: &mut P,
    store: &StateStore,
    decoder: &AvroDecoder,
    records: &[OwnedRecord],
    batch: usize,
    discard: bool,
) -> Result<Offline, ProcessError> {
    processor.restore(store)?;
    let mut result = Offline::default();
    let mut emitter = Emitter::new(name);
    emitter.set_discard(discard);
    // One list of borrowed headers for every record, not one allocation each.
    let mut headers: Vec<(&str, &[u8])> = Vec::new();
    for chunk in records.chunks(batch.max(1)) {
        let mut txn = store.begin();
        let mut positions = Positions::new();
        for record in chunk {
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
            emitter.clear();
            match apply(processor, decoder, &input, &mut txn, &mut emitter) {
                Ok(()) => {}
                Err(Halt::Process(e)) => return Err(e),
                // Offline there is no one to wait for: say so loudly rather
                // than skip the record.
                Err(Halt::Registry(e)) => return Err(ProcessError::fatal("decoding an input", e)),
            }
            result.duplicates += emitter.duplicates;
            result.outputs.append(&mut emitter.records);
            result.dead_letters.append(&mut emitter.dead);
            positions.insert(
                TopicPartition::new(record.topic.as_str(), record.partition),
                record.offset + 1,
            );
        }
        processor.save(&mut txn)?;
        store.commit(txn, &positions)?;
        processor.committed();
    }
    Ok(result)
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

    /// Echoes each greeting's text; counts what it was handed.
    #[derive(Default)]
    struct Echo {
        seen: usize,
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
            out.emit(OutputRecord {
                topic: "echoes".into(),
                key: Vec::new(),
                value: Some(greeting.text.into_bytes()),
                id: format!("echo/{}", record.offset),
                tenant: None,
            });
            Ok(())
        }
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
        let run = run_offline("echo", &mut echo, &store, &decoder, &records, 2).unwrap();
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
        let err = run_offline(
            "echo",
            &mut Echo::default(),
            &store,
            &decoder,
            &[record("greetings", 0, Some(wrong_id))],
            1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("decoding an input"), "{err}");
    }
}
