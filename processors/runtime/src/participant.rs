//! GDPR participants: how a processor answers a saga command exactly once.
//!
//! The saga re-sends a command until it sees an answer, and a replay runs
//! every command again. A participant therefore keeps a *receipt* of what a
//! command produced, durable together with the command's effects, and
//! answers a command it has seen before from the receipt: the identical
//! acknowledgement (same bytes, same id), never a second execution. A
//! re-sent erasure that finds nothing left to erase must not answer "0
//! records" where the first answer said "12".

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use trellis_records::{ERASE_COMMANDS_TOPIC, EraseCommand, ParticipantAck};

use crate::emitter::{Emitter, OutputRecord};
use crate::error::ProcessError;
use crate::processor::Input;
use crate::record::InputRecord;
use crate::schema::{AvroDecoder, AvroEncoder, DecodeError};
use crate::state::StateTxn;

/// The input of a participant that reads one data topic beside
/// `gdpr.erase_commands`: a command, or a record of type `T`.
pub enum CommandOr<T> {
    /// A saga command.
    Command(EraseCommand),
    /// A record of the data topic.
    Record(T),
}

impl<'r, T: Deserialize<'r>> Input<'r> for CommandOr<T> {
    fn decode(record: &InputRecord<'r>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
        if record.topic == ERASE_COMMANDS_TOPIC {
            record.avro(avro).map(Self::Command)
        } else {
            record.avro(avro).map(Self::Record)
        }
    }
}

/// Where receipts are kept: the state store (committed with the batch that
/// executed the command) or, for the privacy processor, its vault (durable
/// before the shred it records).
pub trait Receipts {
    /// The receipt kept for `command_id`.
    ///
    /// # Errors
    /// [`ProcessError`] when the receipts cannot be read.
    fn receipt(&mut self, command_id: &str) -> Result<Option<Vec<u8>>, ProcessError>;

    /// Keeps `receipt` for `command_id`.
    ///
    /// # Errors
    /// [`ProcessError`] when it cannot be kept.
    fn keep(&mut self, command_id: &str, receipt: Vec<u8>) -> Result<(), ProcessError>;
}

/// Receipts in the processor's state store, under a key prefix the runtime
/// reserves (processors' own keys never start with `0xff`).
impl Receipts for StateTxn<'_> {
    fn receipt(&mut self, command_id: &str) -> Result<Option<Vec<u8>>, ProcessError> {
        Ok(self.get(&receipt_key(command_id))?.map(|v| v.into_owned()))
    }

    /// Keeping a receipt means a command was executed: what it deleted
    /// must not stay in the store's files, so the batch ends in a snapshot.
    fn keep(&mut self, command_id: &str, receipt: Vec<u8>) -> Result<(), ProcessError> {
        self.put(receipt_key(command_id), receipt);
        self.compact_after_commit();
        Ok(())
    }
}

fn receipt_key(command_id: &str) -> Vec<u8> {
    [b"\xffreceipt/".as_slice(), command_id.as_bytes()].concat()
}

/// The answer to `command_id`: the one kept from its first execution, or
/// `execute`'s, kept before it is returned. `execute` gets `receipts` back
/// (for participants whose receipts live in the state it changes).
///
/// # Errors
/// [`ProcessError`] from `execute` or the receipts; a receipt that no longer
/// parses is a corrupted store (fatal), never a second execution.
pub fn answer_once<S: Receipts, R: Serialize + DeserializeOwned>(
    receipts: &mut S,
    command_id: &str,
    execute: impl FnOnce(&mut S) -> Result<R, ProcessError>,
) -> Result<R, ProcessError> {
    if let Some(bytes) = receipts.receipt(command_id)? {
        return serde_json::from_slice(&bytes)
            .map_err(|e| ProcessError::fatal("reading a command receipt", e));
    }
    let answer = execute(receipts)?;
    let bytes = serde_json::to_vec(&answer)
        .map_err(|e| ProcessError::fatal("writing a command receipt", e))?;
    receipts.keep(command_id, bytes)?;
    Ok(answer)
}

/// A participant whose state is in its state store: a command addressed to
/// it is executed once ([`answer_once`]) and answered, a re-sent one gets
/// the kept answer. Implement [`Participant::acks`] and
/// [`Participant::execute`]; call [`Participant::on_command`].
pub trait Participant {
    /// Its acknowledgements.
    fn acks(&self) -> &Acks;

    /// Executes `command` (the record's time `at`): its effects go into
    /// `txn` and `out`, its answer is returned (and kept).
    ///
    /// # Errors
    /// [`ProcessError`] when continuing would be unsafe.
    fn execute(
        &mut self,
        command: &EraseCommand,
        at: i64,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<ParticipantAck, ProcessError>;

    /// Handles a command read from the saga's topic: ignored unless
    /// addressed to this participant; executed once; answered.
    ///
    /// # Errors
    /// [`ProcessError`] when continuing would be unsafe.
    fn on_command(
        &mut self,
        command: EraseCommand,
        at: i64,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if !self.acks().addressed_to_me(&command.participant) {
            return Ok(());
        }
        let ack = answer_once(txn, &command.command_id, |txn| {
            self.execute(&command, at, txn, out)
        })?;
        self.acks().emit(out, &ack)
    }
}

/// A participant's acknowledgement topic and encoder.
pub struct Acks {
    participant: &'static str,
    topic: Arc<str>,
    encoder: AvroEncoder,
}

impl Acks {
    /// Acknowledgements of `participant` to `topic`, encoded with `encoder`.
    pub fn new(participant: &'static str, topic: Arc<str>, encoder: AvroEncoder) -> Self {
        Self {
            participant,
            topic,
            encoder,
        }
    }

    /// Whether a command addressed to `participant` is for this one.
    pub fn addressed_to_me(&self, participant: &str) -> bool {
        participant == self.participant
    }

    /// A fresh acknowledgement of `command_id` by this participant, `done`
    /// unless changed.
    pub fn ack(
        &self,
        command_id: &str,
        request_id: &str,
        tenant_id: &str,
        learner: Option<String>,
        at: i64,
    ) -> ParticipantAck {
        ParticipantAck {
            command_id: command_id.to_string(),
            request_id: request_id.to_string(),
            tenant_id: tenant_id.to_string(),
            participant: self.participant.to_string(),
            outcome: "done".into(),
            detail: String::new(),
            learner,
            shredded_key_ids: Vec::new(),
            records_affected: 0,
            export: None,
            acked_at: at,
        }
    }

    /// Emits `ack`, keyed by tenant, with an id stable across re-sends and
    /// replays (`{command id}/{participant}`), so consumers drop repeats.
    ///
    /// # Errors
    /// [`ProcessError::Encode`] if the ack does not fit its schema.
    pub fn emit(&self, out: &mut Emitter, ack: &ParticipantAck) -> Result<(), ProcessError> {
        out.emit(self.record(ack)?);
        Ok(())
    }

    /// The record [`Acks::emit`] emits, for a participant that emits it
    /// itself (at another time, see [`Emitter::emit_at`]).
    ///
    /// # Errors
    /// [`ProcessError::Encode`] if the ack does not fit its schema.
    pub fn record(&self, ack: &ParticipantAck) -> Result<OutputRecord, ProcessError> {
        Ok(OutputRecord {
            topic: self.topic.clone(),
            key: ack.tenant_id.clone().into_bytes(),
            value: Some(self.encoder.encode(ack)?),
            id: format!("{}/{}", ack.command_id, self.participant),
            tenant: Some(ack.tenant_id.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;

    #[test]
    fn a_command_seen_before_is_answered_from_its_receipt_not_executed_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut txn = store.begin();
        let mut runs = 0;
        let mut run = |txn: &mut StateTxn<'_>, n: i64| {
            answer_once(txn, "c-1", |_| {
                runs += 1;
                Ok(n)
            })
        };
        assert_eq!(run(&mut txn, 12).unwrap(), 12);
        // The second execution would answer 0: the receipt answers 12.
        assert_eq!(run(&mut txn, 0).unwrap(), 12);
        assert_eq!(runs, 1);
        store.commit(txn, &crate::state::Positions::new()).unwrap();
        let mut txn = store.begin();
        assert_eq!(answer_once(&mut txn, "c-1", |_| Ok(0_i64)).unwrap(), 12);
        assert_eq!(answer_once(&mut txn, "c-2", |_| Ok(7_i64)).unwrap(), 7);
    }

    #[test]
    fn a_receipt_that_no_longer_parses_is_fatal_not_a_second_execution() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let mut txn = store.begin();
        txn.keep("c-1", b"not json".to_vec()).unwrap();
        let mut runs = 0;
        let err = answer_once(&mut txn, "c-1", |_| {
            runs += 1;
            Ok(1_i64)
        })
        .unwrap_err();
        assert!(matches!(err, ProcessError::Fatal { .. }), "{err}");
        assert_eq!(runs, 0, "the command was executed a second time");
    }

    #[test]
    fn what_an_executed_command_deleted_is_gone_from_the_stores_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let row = b"row of pseudonym 5f3a".to_vec();
        let mut txn = store.begin();
        txn.put(b"row/5f3a".to_vec(), row.clone());
        store.commit(txn, &crate::state::Positions::new()).unwrap();
        let files_hold = |needle: &[u8]| {
            std::fs::read_dir(dir.path()).unwrap().any(|f| {
                let bytes = std::fs::read(f.unwrap().path()).unwrap();
                bytes.windows(needle.len()).any(|w| w == needle)
            })
        };
        assert!(files_hold(&row), "the row is on disk before the erasure");
        let mut txn = store.begin();
        answer_once(&mut txn, "erase-1", |txn| {
            txn.delete(b"row/5f3a".to_vec());
            Ok(1_i64)
        })
        .unwrap();
        store.commit(txn, &crate::state::Positions::new()).unwrap();
        assert!(
            !files_hold(&row),
            "the erased row stayed in the store's files"
        );
        drop(store);
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(store.get(b"row/5f3a").unwrap(), None);
    }
}
