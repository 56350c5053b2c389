//! The progress projector: `protected` → `progress` (compacted) + `completions`.
//!
//! Per tenant × learner pseudonym × activity it keeps the statements that
//! are evidence for progress and derives, server-side, attempts, best and
//! last scaled score, success, completion status, first/last activity time
//! and the statement ids behind each status change ([`rules`]). Every input
//! that touches a row emits the row's new value on `progress`, keyed
//! `tenant|learner|activity` (a tombstone when nothing is left, e.g. after
//! a void or an erasure), and every derived pass or completion — or its
//! revocation by a void — is one record on `completions` with its evidence.
//! Transcripts (a learner's completed activities and courses) are read from
//! the same rows ([`transcript`]).
//!
//! # State is a function of the log
//! Rows hold the *set* of a learner's statements per activity, so the row is
//! the same whatever order statements arrive in. Voids name a statement by
//! id and usually come from another actor (an LMS administrator), so in
//! another partition: a per-statement index finds the row a void undoes, and
//! a void that arrives before its target is remembered so the target is
//! ignored when it comes. Both indexes hold statement ids only. Rebuilding
//! the store by replay therefore reaches the live run's digest, whatever the
//! partitions' interleaving (promise 4).
//!
//! # Exactly-once effects
//! Output ids derive from the input: `tenant/event/activity` for upserts,
//! a hash of tenant, learner, activity, kind and evidence for completions.
//! The statement index doubles as the duplicate filter: a statement id seen
//! before changes nothing (promise 3).
//!
//! # Erasure
//! An erase command (`gdpr.erase_commands`, participant `progress`) deletes
//! the learner's rows and index entries, tombstones their `progress` keys
//! and marks the pseudonym erased, so a replay of `protected` cannot bring
//! the rows back. The answer goes to `gdpr.participant_acks`; a re-sent
//! command gets the same answer.

pub mod rules;
pub mod transcript;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use trellis_records::{
    COMPLETIONS_TOPIC, Completion, EraseCommand, LearnerProgress, PARTICIPANT_ACKS_TOPIC,
    PROGRESS_TOPIC, ParticipantAck, ProtectedFacts,
};
use trellis_runtime::build::{Build, Context};
use trellis_runtime::participant::{Acks, CommandOr, Participant};
use trellis_runtime::pipeline::{ProcessError, StartError};
use trellis_runtime::schema::AvroEncoder;
use trellis_runtime::state::{StateError, key};
use trellis_runtime::working_set::{Stored, WorkingSet};
use trellis_runtime::{Emitter, InputRecord, OutputRecord, Processor, StateTxn};

use crate::rules::{
    Derived, Fact, Proof, Rule, VOIDED_VERB, VerbClass, derive, derive_course, insert_fact,
};

/// The processor's name in topology.yaml, metrics and logs.
pub const NAME: &str = "progress";

/// The progress projector's `settings` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Per activity IRI: its completion rule.
    #[serde(default)]
    pub activities: BTreeMap<String, ActivitySettings>,
    /// Per course IRI: the activities that complete it.
    #[serde(default)]
    pub courses: BTreeMap<String, CourseSettings>,
    /// The transcript read path (HTTP); off when absent.
    #[serde(default)]
    pub transcripts: Option<transcript::TranscriptSettings>,
}

/// One activity's rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivitySettings {
    /// Scaled score (−1…1) a pass must reach; completion then needs a pass.
    pub mastery: Option<f64>,
}

/// One course's rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CourseSettings {
    /// Activity IRIs that must all be completed.
    pub requires: Vec<String>,
}

impl trellis_runtime::build::Settings for Settings {
    /// Every problem with the rules, at once.
    fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (activity, rule) in &self.activities {
            if let Some(m) = rule.mastery
                && !(-1.0..=1.0).contains(&m)
            {
                problems.push(format!(
                    "activity {activity}: mastery {m} is not a scaled score in [-1, 1]"
                ));
            }
        }
        for (course, rule) in &self.courses {
            if rule.requires.is_empty() {
                problems.push(format!("course {course}: `requires` is empty"));
            }
            for required in &rule.requires {
                if self.courses.contains_key(required) {
                    problems.push(format!(
                        "course {course}: requires {required}, which is a course (nesting is not supported)"
                    ));
                }
            }
        }
        if let Some(transcripts) = &self.transcripts
            && let Err(e) = transcript::TranscriptApi::check(transcripts)
        {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// What the store keeps per learner × activity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RowState {
    /// Parent course: the smallest course id a statement named.
    pub course_id: Option<String>,
    /// Non-voided statements, sorted by (time, id).
    pub facts: Vec<Fact>,
    /// The completion currently published, if any.
    pub completed: Option<Issued>,
    /// The pass currently published, if any.
    pub passed: Option<Issued>,
}

impl Stored for RowState {
    fn encode(&self) -> Result<Vec<u8>, ProcessError> {
        encode_state(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, StateError> {
        decode_state(bytes)
    }
}

/// Rows kept decoded between batches (a learner's rows change together).
const ROWS_HELD: usize = 200_000;

/// A completion or pass published on `completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issued {
    /// Its `completion_id`.
    pub id: String,
    /// Its evidence.
    pub proof: Proof,
}

/// State key namespaces.
mod keys {
    /// Rows: `row ‖ tenant ‖ learner ‖ activity`.
    pub const ROW: u8 = b'a';
    /// Statement index: `event ‖ tenant ‖ statement id` → `learner ‖ activity`.
    pub const EVENT: u8 = b'e';
    /// Voids seen: `void ‖ tenant ‖ voided statement id` → voiding id.
    pub const VOID: u8 = b'v';
    /// Erased pseudonyms: `erased ‖ tenant ‖ learner` → command time.
    pub const ERASED: u8 = b'x';
}

pub(crate) fn row_key(tenant: &str, learner: &str, activity: &str) -> Vec<u8> {
    key::key(keys::ROW, &[tenant, learner, activity])
}

pub(crate) fn learner_prefix(tenant: &str, learner: &str) -> Vec<u8> {
    key::prefix(keys::ROW, &[tenant, learner])
}

/// How many progress rows `store` holds for `learner` in `tenant` (an
/// erasure verifier expects none).
///
/// # Errors
/// [`StateError`] if the store cannot be read.
pub fn learner_rows(
    store: &trellis_runtime::state::StateStore,
    tenant: &str,
    learner: &str,
) -> Result<u64, StateError> {
    let mut rows = 0;
    for entry in store.scan_prefix(&learner_prefix(tenant, learner)) {
        entry?;
        rows += 1;
    }
    Ok(rows)
}

fn encode_state<T: Serialize>(value: &T) -> Result<Vec<u8>, ProcessError> {
    postcard::to_stdvec(value).map_err(|e| ProcessError::fatal("encoding state", e))
}

pub(crate) fn decode_state<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    postcard::from_bytes(bytes).map_err(|e| StateError::corrupt(format!("progress row: {e}")))
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..16])
}

/// Encoders for the outputs.
pub struct Encoders {
    /// `progress`.
    pub progress: AvroEncoder,
    /// `completions`.
    pub completions: AvroEncoder,
    /// `gdpr.participant_acks`.
    pub acks: AvroEncoder,
}

/// Counters beyond the runtime's.
#[derive(Clone)]
pub struct Counters {
    /// Events of erased learners dropped.
    pub erased_dropped: IntCounter,
    /// Voids by outcome: `applied` (target known) or `pending` (target not seen yet).
    pub voids: IntCounterVec,
}

impl Counters {
    /// Unregistered counters (tests, tools).
    ///
    /// # Panics
    /// Never: the options are constants.
    pub fn detached() -> Self {
        Self {
            erased_dropped: IntCounter::new(
                "trellis_erased_learner_records_dropped_total",
                "Records of erased learners dropped.",
            )
            .expect("valid counter"),
            voids: IntCounterVec::new(
                prometheus::Opts::new("trellis_voids_total", "Voiding statements by outcome."),
                &["outcome"],
            )
            .expect("valid counter"),
        }
    }
}

/// The projector's logic.
pub struct Progress {
    encoders: OutputEncoders,
    acks: Acks,
    topics: Topics,
    rules: HashMap<String, Rule>,
    courses: HashMap<String, Vec<String>>,
    /// Activity → the declared courses that require it.
    course_of: HashMap<String, Vec<String>>,
    counters: Counters,
    /// The rows the batch read or changed, written back by [`Processor::save`].
    rows: WorkingSet<RowState>,
    /// Every erasure and void mark in the store (see [`Progress::marked`]);
    /// `None` until first asked, and after an abandoned batch.
    marks: Option<HashSet<Vec<u8>>>,
}

struct Topics {
    progress: Arc<str>,
    completions: Arc<str>,
}

struct OutputEncoders {
    progress: AvroEncoder,
    completions: AvroEncoder,
}

impl Progress {
    /// A projector with `settings`' rules.
    pub fn new(settings: &Settings, encoders: Encoders, counters: Counters) -> Self {
        let rules = settings
            .activities
            .iter()
            .map(|(a, s)| (a.clone(), Rule { mastery: s.mastery }))
            .collect();
        let courses: HashMap<String, Vec<String>> = settings
            .courses
            .iter()
            .map(|(c, s)| (c.clone(), s.requires.clone()))
            .collect();
        let mut course_of: HashMap<String, Vec<String>> = HashMap::new();
        for (course, requires) in &settings.courses {
            for activity in &requires.requires {
                course_of
                    .entry(activity.clone())
                    .or_default()
                    .push(course.clone());
            }
        }
        let Encoders {
            progress,
            completions,
            acks,
        } = encoders;
        Self {
            encoders: OutputEncoders {
                progress,
                completions,
            },
            acks: Acks::new(NAME, Arc::from(PARTICIPANT_ACKS_TOPIC), acks),
            topics: Topics {
                progress: Arc::from(PROGRESS_TOPIC),
                completions: Arc::from(COMPLETIONS_TOPIC),
            },
            rules,
            courses,
            course_of,
            counters,
            rows: WorkingSet::new(ROWS_HELD),
            marks: None,
        }
    }

    fn rule(&self, activity: &str) -> Rule {
        self.rules.get(activity).copied().unwrap_or_default()
    }

    fn encode<T: Serialize>(encoder: &AvroEncoder, value: &T) -> Result<Vec<u8>, ProcessError> {
        encoder.encode(value).map_err(ProcessError::from)
    }

    /// Whether the erasure or void mark `key` is set. Marks are few (one
    /// per erased learner, one per void) and asked about on every event, so
    /// they are held in memory, loaded on first use.
    fn marked(&mut self, txn: &StateTxn<'_>, key: &[u8]) -> Result<bool, StateError> {
        let marks = match &mut self.marks {
            Some(marks) => marks,
            marks @ None => {
                let mut loaded = HashSet::new();
                for kind in [keys::ERASED, keys::VOID] {
                    loaded.extend(txn.scan_prefix(&[kind])?.into_iter().map(|(k, _)| k));
                }
                marks.insert(loaded)
            }
        };
        Ok(!marks.is_empty() && marks.contains(key))
    }

    /// Sets the mark `key`.
    fn mark(&mut self, txn: &mut StateTxn<'_>, key: Vec<u8>, value: Vec<u8>) {
        if let Some(marks) = &mut self.marks {
            marks.insert(key.clone());
        }
        txn.put(key, value);
    }

    /// The row under `key`, taken out of the working set (not copied: a
    /// row holds all its statements) to change; [`Progress::publish`] puts
    /// it back or deletes it, and an error abandons the batch.
    fn load(&mut self, txn: &StateTxn<'_>, key: &[u8]) -> Result<RowState, ProcessError> {
        Ok(self.rows.take(key, txn)?.unwrap_or_default())
    }

    fn on_event(
        &mut self,
        event: ProtectedFacts<'_>,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let tenant = event.tenant_id;
        let learner = event.learner;
        if self.marked(txn, &key::key(keys::ERASED, &[tenant, learner]))? {
            self.counters.erased_dropped.inc();
            return Ok(());
        }
        if event.verb == Some(VOIDED_VERB) {
            if let Some(target) = event.voided_event_id {
                self.void(tenant, target, event.event_id, txn, out)?;
            }
            return Ok(());
        }
        let Some(activity) = event.object_id else {
            return Ok(());
        };
        let id = event.event_id;
        if self.marked(txn, &key::key(keys::VOID, &[tenant, id]))? {
            // Voided before it arrived: it never counts.
            return Ok(());
        }
        let index = key::key(keys::EVENT, &[tenant, id]);
        if txn.get(&index)?.is_some() {
            out.dropped_duplicate();
            return Ok(());
        }
        txn.put(index, [learner, activity].join("\0").into_bytes());
        let key = row_key(tenant, learner, activity);
        let mut row = self.load(txn, &key)?;
        // The smallest course id any statement named: arrival order must
        // not matter (an activity sits in one course in practice).
        if let Some(course) = event.course_id
            && row.course_id.as_deref().is_none_or(|c| course < c)
        {
            row.course_id = Some(course.to_string());
        }
        let result = event.result.as_ref();
        insert_fact(
            &mut row.facts,
            Fact {
                event_id: id.to_string(),
                at: event.occurred_at,
                verb: VerbClass::of(event.verb),
                success: result.and_then(|r| r.success),
                completion: result.and_then(|r| r.completion),
                score: result.and_then(|r| r.score_scaled),
            },
        );
        self.update(tenant, learner, activity, row, id, txn, out)
    }

    /// Undoes the statement `target` of `tenant`, if and when it is known.
    fn void(
        &mut self,
        tenant: &str,
        target: &str,
        cause: &str,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let mark = key::key(keys::VOID, &[tenant, target]);
        if self.marked(txn, &mark)? {
            out.dropped_duplicate();
            return Ok(());
        }
        self.mark(txn, mark, cause.as_bytes().to_vec());
        let index = key::key(keys::EVENT, &[tenant, target]);
        let Some(location) = txn.get(&index)?.map(|l| l.into_owned()) else {
            self.counters.voids.with_label_values(&["pending"]).inc();
            return Ok(());
        };
        txn.delete(index);
        self.counters.voids.with_label_values(&["applied"]).inc();
        let location = String::from_utf8_lossy(&location).into_owned();
        let Some((learner, activity)) = location.split_once('\0') else {
            return Err(StateError::corrupt("statement index entry").into());
        };
        let key = row_key(tenant, learner, activity);
        let mut row = self.load(txn, &key)?;
        row.facts.retain(|f| f.event_id != target);
        self.update(tenant, learner, activity, row, cause, txn, out)
    }

    /// Re-derives `activity` (and the declared courses requiring it) after
    /// its statements changed, stores it and publishes the change.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        tenant: &str,
        learner: &str,
        activity: &str,
        row: RowState,
        cause: &str,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let derived = if self.courses.contains_key(activity) {
            self.derive_course(tenant, learner, activity, &row, txn)?
        } else {
            derive(&row.facts, self.rule(activity))
        };
        self.publish(tenant, learner, activity, row, derived, cause, out)?;
        let courses = self.course_of.get(activity).cloned().unwrap_or_default();
        for course in courses {
            let row = self.load(txn, &row_key(tenant, learner, &course))?;
            let derived = self.derive_course(tenant, learner, &course, &row, txn)?;
            self.publish(tenant, learner, &course, row, derived, cause, out)?;
        }
        Ok(())
    }

    fn derive_course(
        &mut self,
        tenant: &str,
        learner: &str,
        course: &str,
        row: &RowState,
        txn: &StateTxn<'_>,
    ) -> Result<Option<Derived>, ProcessError> {
        let mut required = Vec::new();
        for activity in self
            .courses
            .get(course)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let rule = self.rules.get(activity).copied().unwrap_or_default();
            let facts = match self.rows.get(&row_key(tenant, learner, activity), txn)? {
                Some(state) => state.facts.as_slice(),
                None => &[],
            };
            required.push(derive(facts, rule));
        }
        Ok(derive_course(&row.facts, &required))
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        tenant: &str,
        learner: &str,
        activity: &str,
        mut row: RowState,
        derived: Option<Derived>,
        cause: &str,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let key = row_key(tenant, learner, activity);
        let course_id = row.course_id.clone();
        self.emit_progress(
            tenant,
            learner,
            activity,
            &course_id,
            derived.as_ref(),
            cause,
            out,
        )?;
        let gone = derived.is_none();
        let (completed, passed) = derived.map(|d| (d.completed, d.passed)).unwrap_or_default();
        for (kind, slot, proof) in [
            ("completed", &mut row.completed, completed),
            ("passed", &mut row.passed, passed),
        ] {
            // The id hashes the row's key, the kind and the evidence ids, so
            // the same evidence is the same id: most updates leave both, and
            // are not worth a hash.
            if slot.as_ref().map(|i| &i.proof.event_ids) == proof.as_ref().map(|p| &p.event_ids) {
                continue;
            }
            let id = proof
                .as_ref()
                .map(|p| short_hash(&[tenant, learner, activity, kind, &p.event_ids.join("\0")]));
            if let Some(old) = slot.take() {
                let mut evidence = old.proof.event_ids.clone();
                evidence.push(cause.to_string());
                self.completion(
                    tenant,
                    learner,
                    activity,
                    &course_id,
                    "revoked",
                    short_hash(&["revoked", &old.id, cause]),
                    &old.proof,
                    evidence,
                    out,
                )?;
            }
            if let (Some(id), Some(proof)) = (id, proof) {
                self.completion(
                    tenant,
                    learner,
                    activity,
                    &course_id,
                    kind,
                    id.clone(),
                    &proof,
                    proof.event_ids.clone(),
                    out,
                )?;
                *slot = Some(Issued { id, proof });
            }
        }
        if gone {
            self.rows.remove(key);
        } else {
            self.rows.insert(key, row);
        }
        Ok(())
    }

    /// Emits the row's `progress` record (a tombstone when `derived` is
    /// `None`), unless a replay drops it anyway.
    #[allow(clippy::too_many_arguments)]
    fn emit_progress(
        &self,
        tenant: &str,
        learner: &str,
        activity: &str,
        course_id: &Option<String>,
        derived: Option<&Derived>,
        cause: &str,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if out.discards() {
            return Ok(());
        }
        let value = match derived {
            Some(d) => Some(Self::encode(
                &self.encoders.progress,
                &LearnerProgress {
                    tenant_id: tenant.to_string(),
                    learner: learner.to_string(),
                    activity_id: activity.to_string(),
                    course_id: course_id.clone(),
                    attempts: d.attempts,
                    best_score_scaled: d.best_score,
                    last_score_scaled: d.last_score,
                    success: d.success,
                    completion: d.status.as_str().to_string(),
                    first_activity_at: d.first_at,
                    last_activity_at: d.last_at,
                    evidence: d.evidence.clone(),
                },
            )?),
            None => None,
        };
        out.emit(OutputRecord {
            topic: self.topics.progress.clone(),
            key: format!("{tenant}|{learner}|{activity}").into_bytes(),
            value,
            id: format!("{tenant}/{cause}/{activity}"),
            tenant: Some(tenant.to_string()),
        });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn completion(
        &self,
        tenant: &str,
        learner: &str,
        activity: &str,
        course_id: &Option<String>,
        kind: &str,
        id: String,
        proof: &Proof,
        evidence: Vec<String>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if out.discards() {
            return Ok(());
        }
        let record = Completion {
            completion_id: id.clone(),
            tenant_id: tenant.to_string(),
            learner: learner.to_string(),
            activity_id: activity.to_string(),
            course_id: course_id.clone(),
            kind: kind.to_string(),
            score_scaled: proof.score,
            at: proof.at,
            evidence_event_ids: evidence,
        };
        out.emit(OutputRecord {
            topic: self.topics.completions.clone(),
            key: format!("{tenant}|{learner}|{activity}").into_bytes(),
            value: Some(Self::encode(&self.encoders.completions, &record)?),
            id,
            tenant: Some(tenant.to_string()),
        });
        Ok(())
    }
}

/// A GDPR participant: erasure tombstones the learner's rows and marks the
/// pseudonym erased; access counts the rows.
impl Participant for Progress {
    fn acks(&self) -> &Acks {
        &self.acks
    }

    fn execute(
        &mut self,
        command: &EraseCommand,
        at: i64,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<ParticipantAck, ProcessError> {
        let tenant = command.tenant_id.as_str();
        let mut ack = self.acks.ack(
            &command.command_id,
            &command.request_id,
            tenant,
            command.learner.clone(),
            at,
        );
        let Some(learner) = command.learner.as_deref() else {
            ack.outcome = "not_found".into();
            ack.detail = "no pseudonym: the subject was never seen".into();
            return Ok(ack);
        };
        let prefix = learner_prefix(tenant, learner);
        // The scan reads the store: give it the batch's rows first.
        self.rows.save(txn)?;
        let rows = txn.scan_prefix(&prefix)?;
        ack.records_affected = rows.len() as i64;
        match command.kind.as_str() {
            "erasure" => {
                for (key, value) in rows {
                    let row: RowState = decode_state(&value)?;
                    for fact in &row.facts {
                        txn.delete(key::key(keys::EVENT, &[tenant, &fact.event_id]));
                    }
                    let activity = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    out.emit(OutputRecord {
                        topic: self.topics.progress.clone(),
                        key: format!("{tenant}|{learner}|{activity}").into_bytes(),
                        value: None,
                        id: format!("{tenant}/{}/{activity}", command.command_id),
                        tenant: Some(tenant.to_string()),
                    });
                    self.rows.remove(key);
                }
                self.mark(
                    txn,
                    key::key(keys::ERASED, &[tenant, learner]),
                    command.issued_at.to_be_bytes().to_vec(),
                );
                ack.detail = format!(
                    "erased {} progress rows; keys tombstoned",
                    ack.records_affected
                );
            }
            "access" => {
                // The rows themselves (pseudonymous, like this topic) for
                // the saga's export document.
                let mut held = serde_json::Map::new();
                for (key, value) in rows {
                    let row: RowState = decode_state(&value)?;
                    let activity = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    held.insert(
                        activity,
                        serde_json::to_value(&row)
                            .map_err(|e| ProcessError::fatal("exporting a progress row", e))?,
                    );
                }
                ack.export = Some(serde_json::Value::Object(held).to_string());
                ack.detail = format!("{} progress rows held", ack.records_affected);
            }
            other => {
                ack.outcome = "failed".into();
                ack.detail = format!("unknown command kind `{other}`");
            }
        }
        Ok(ack)
    }
}

impl Processor for Progress {
    type Input<'r> = CommandOr<ProtectedFacts<'r>>;

    fn save(&mut self, txn: &mut StateTxn<'_>) -> Result<(), ProcessError> {
        self.rows.save(txn)
    }

    fn committed(&mut self) {
        self.rows.committed();
    }

    fn abandoned(&mut self) {
        self.rows.clear();
        self.marks = None;
    }

    fn process<'r>(
        &mut self,
        record: &InputRecord<'r>,
        input: Self::Input<'r>,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        match input {
            CommandOr::Command(command) => {
                self.on_command(command, record.timestamp_ms.unwrap_or_default(), txn, out)
            }
            CommandOr::Record(event) => self.on_event(event, txn, out),
        }
    }
}

/// The projector's one constructor: the binary, the bench and the tests
/// build it here.
impl Build for Progress {
    const NAME: &'static str = NAME;
    const OWNS: &'static str = "a learner's rows (keyed by tenant and pseudonym) and the erase commands that name them (keyed by request), which are not co-partitioned";
    type Settings = Settings;
    type Processor = Self;

    async fn build(ctx: &mut Context<'_, Settings>) -> Result<Self, StartError> {
        let counters = Counters::detached();
        ctx.register(Box::new(counters.erased_dropped.clone()))?;
        ctx.register(Box::new(counters.voids.clone()))?;
        if let (Some(settings), Some(store), true) =
            (ctx.settings.transcripts.clone(), ctx.store(), ctx.live())
        {
            let cannot_listen = |e: std::io::Error| {
                StartError::Misconfigured(format!(
                    "transcripts: cannot listen on {}: {e}",
                    settings.addr
                ))
            };
            let listener = tokio::net::TcpListener::bind(settings.addr)
                .await
                .map_err(cannot_listen)?;
            tracing::info!(addr = %listener.local_addr().map_err(cannot_listen)?, "transcripts listening");
            let router = transcript::TranscriptApi::new(settings, store.clone()).router();
            let router = match ctx.lease() {
                Some(lease) => lease.guard(router),
                None => router,
            };
            ctx.serve(|stopping| async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(stopping.wait())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "transcript endpoint stopped");
                }
            });
        }
        let encoders = Encoders {
            progress: ctx.encoder(PROGRESS_TOPIC).await?,
            completions: ctx.encoder(COMPLETIONS_TOPIC).await?,
            acks: ctx.encoder(PARTICIPANT_ACKS_TOPIC).await?,
        };
        Ok(Progress::new(ctx.settings, encoders, counters))
    }
}

trellis_runtime::processor_run!(Progress);

#[cfg(test)]
mod tests;
