//! The GDPR processor: data-subject requests as a saga over the
//! participants (DESIGN.md promise 5).
//!
//! A request on `gdpr.subject_request.received.v1` names a person by one
//! identifier or several (`subject_id` and `other_subject_ids`: an LMS
//! user id, an xAPI account, an mbox, …). It is checked (known tenant,
//! well-formed identifiers; otherwise it is answered `rejected` with a
//! reason) and checked against legal holds (answered `deferred` with the
//! hold's reason). Then:
//!
//! 1. **privacy** gets one shred request per identifier
//!    (`gdpr.shred_requests`): it alone can turn an identifier into a
//!    pseudonym (identifiers its identity links join resolve to one), and
//!    for an erasure it destroys the subject's key material and rotates the
//!    tenant KEK.
//! 2. For every distinct pseudonym in privacy's answers, every
//!    pseudonym-keyed participant (`progress`, `analytics`, `warehouse`)
//!    gets an erase command (`gdpr.erase_commands`). A person privacy never
//!    saw stops here.
//! 3. Once everyone answered, the saga writes `subject_request.executed`
//!    (or `subject.exported`) to `audit.events`, and waits for the first
//!    anchor on `audit.anchors` that covers one of the request's audit
//!    events (a shred, or that one).
//! 4. It takes the time of its decision to answer from the wall clock, as
//!    a *decision tick* on `gdpr.ticks`, and on reading it back answers on
//!    `gdpr.subject_request.acknowledged.v1` with every participant's
//!    result, the key ids shredded, the anchor's hash, where plaintext may
//!    remain, and `acknowledged_at` = that tick's time.
//!
//! # State is facts, the saga is derived
//! The store holds facts — the request, each participant's answer, the
//! first anchor naming the request — each written the first time it is
//! seen, whatever the order. After every fact, [`Gdpr::advance`] moves the
//! saga as far as the facts allow. The answer's time is a fact too: the
//! first decision tick for the request (outputs carry their input's
//! timestamp, so no other record says when the saga decided; a decision
//! written twice by a re-run batch is answered once, at the first time).
//! So a replay that meets the facts in another order across partitions
//! reaches the same state, and a restart of the saga or of any participant
//! mid-saga only delays it: commands and answers are in the log,
//! participants answer a re-sent command with the same stored answer.
//!
//! # Re-sends
//! Commands still unanswered `retry_after_ms` after they were issued are
//! re-sent (same command id, a higher `attempt`) when a tick on
//! `gdpr.ticks` is processed; ticks are written only while sagas are open.
//!
//! # What the store keeps
//! The subject's identifiers are kept only while commands may need
//! re-sending; they are removed once the saga has decided its answer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trellis_audit::canonical::anchor_hash;
use trellis_records::{
    ANCHORS_TOPIC, AUDIT_EVENTS_TOPIC, Anchor, AuditEvent, ERASE_COMMANDS_TOPIC, EraseCommand,
    GDPR_TICKS_TOPIC, PARTICIPANT_ACKS_TOPIC, ParticipantAck, ParticipantResult, ResidualCopy,
    SHRED_REQUESTS_TOPIC, SUBJECT_ACKS_TOPIC, SUBJECT_REQUESTS_TOPIC, ShredRequest, SubjectRequest,
    SubjectRequestAck, Tick,
};
use trellis_runtime::build::{Build, Context};
use trellis_runtime::pipeline::StartError;
use trellis_runtime::schema::{AvroDecoder, AvroEncoder, DecodeError};
use trellis_runtime::state::StateError;
use trellis_runtime::ticker::{Pending, TickRecord};
use trellis_runtime::topology::{Classification, Topology};
use trellis_runtime::{
    Emitter, InputRecord, OutputRecord, ProcessError, Processor, StateStore, StateTxn,
};

/// Processor name (topology.yaml).
pub const NAME: &str = "gdpr";
/// The participant that holds the keys and knows identifiers.
pub const PRIVACY: &str = "privacy";

/// Identifier kinds the collector produces (`Actor::id_kind`).
const SUBJECT_KINDS: &[&str] = &["user_id", "mbox", "mbox_sha1sum", "account", "openid"];
/// Identifiers one request may name.
const MAX_SUBJECT_IDS: usize = 20;

/// A legal hold: erasure of matching subjects is deferred.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalHold {
    /// Tenant.
    pub tenant: String,
    /// With `subject_id`: one subject; without: the whole tenant.
    #[serde(default)]
    pub subject_id_kind: Option<String>,
    /// The subject's identifier.
    #[serde(default)]
    pub subject_id: Option<String>,
    /// Recorded in the acknowledgement.
    pub reason: String,
}

impl LegalHold {
    /// Whether the hold covers the request: its tenant, and (for a held
    /// subject) any of the identifiers it names.
    fn holds(&self, request: &SubjectRequest) -> bool {
        self.tenant == request.tenant_id
            && request.subject_ids().any(|(kind, id)| {
                self.subject_id_kind.as_ref().is_none_or(|k| k == kind)
                    && self.subject_id.as_ref().is_none_or(|i| i == id)
            })
    }
}

/// `settings:` of the GDPR processor's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Tenants requests may name.
    pub tenants: Vec<String>,
    /// Re-send a command nobody answered after this long.
    #[serde(default = "default_retry")]
    pub retry_after_ms: i64,
    /// Tick period while sagas are open.
    #[serde(default = "default_tick")]
    pub tick_ms: u64,
    /// Erasures deferred by legal hold.
    #[serde(default)]
    pub legal_holds: Vec<LegalHold>,
    /// Where access exports are written (a restricted location: the
    /// directory is created owner-only).
    pub export_dir: PathBuf,
}

fn default_retry() -> i64 {
    30_000
}

fn default_tick() -> u64 {
    1_000
}

impl trellis_runtime::build::Settings for Settings {
    /// Every problem, at once.
    fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.tenants.is_empty() {
            problems.push("settings.tenants is empty: no request could be accepted".to_string());
        }
        if self.retry_after_ms <= 0 || self.tick_ms == 0 {
            problems.push("settings.retry_after_ms and settings.tick_ms must be positive".into());
        }
        for hold in &self.legal_holds {
            if hold.subject_id.is_some() != hold.subject_id_kind.is_some() {
                problems.push(format!(
                    "legal hold for tenant `{}`: give both subject_id_kind and subject_id, or neither",
                    hold.tenant
                ));
            }
            if hold.reason.trim().is_empty() {
                problems.push(format!(
                    "legal hold for tenant `{}` has no reason",
                    hold.tenant
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

mod keys {
    pub const REQUEST: u8 = b'r';
    pub const ANSWER: u8 = b'k';
    pub const ANCHOR: u8 = b'n';
    pub const OPEN: u8 = b'o';
    pub const TICK: u8 = b't';
    pub const DECISION: u8 = b'd';

    pub use trellis_runtime::state::key::{key, parts, prefix};
}

/// Where a saga is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Waiting for privacy.
    Privacy,
    /// Waiting for the pseudonym-keyed participants.
    Participants,
    /// Waiting for an anchor covering the request.
    Anchor,
    /// The answer is ready; waiting for the decision tick that dates it.
    Deciding(Box<SubjectRequestAck>),
    /// Answered.
    Answered(Box<SubjectRequestAck>),
}

/// A request and what the saga did with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saga {
    request: SubjectRequest,
    /// The request record's timestamp: when privacy's command was issued.
    received_at: i64,
    stage: Stage,
}

impl Saga {
    /// The identifiers, no longer needed once the answer is decided.
    fn forget_identifiers(&mut self) {
        self.request.subject_id.clear();
        self.request.other_subject_ids.clear();
    }
}

/// Privacy's command for the `index`th identifier of a request. The first
/// keeps the id a one-identifier request always had.
fn privacy_command_id(request_id: &str, index: usize) -> String {
    match index {
        0 => format!("{request_id}/{PRIVACY}"),
        i => format!("{request_id}/{PRIVACY}/{i}"),
    }
}

/// `participant`'s command for the `index`th distinct pseudonym.
fn erase_command_id(request_id: &str, participant: &str, index: usize) -> String {
    match index {
        0 => format!("{request_id}/{participant}"),
        i => format!("{request_id}/{participant}/{i}"),
    }
}

/// The identifiers a request names, each once, in the order given.
fn distinct_ids(request: &SubjectRequest) -> Vec<(&str, &str)> {
    let mut seen = std::collections::BTreeSet::new();
    request
        .subject_ids()
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Participants' answers to one request, by command id.
type Answers = BTreeMap<String, ParticipantAck>;

/// The first anchor naming a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AnchorFact {
    hash: String,
    anchored_at: i64,
    /// The anchor log's signed checkpoint including the anchor.
    checkpoint: String,
}

fn state_err(e: impl std::fmt::Display) -> ProcessError {
    StateError::corrupt(format!("gdpr state: {e}")).into()
}

fn get<T: for<'de> Deserialize<'de>>(
    txn: &StateTxn<'_>,
    key: &[u8],
) -> Result<Option<T>, ProcessError> {
    txn.get(key)?
        .map(|bytes| postcard::from_bytes(&bytes).map_err(state_err))
        .transpose()
}

fn put<T: Serialize>(txn: &mut StateTxn<'_>, key: Vec<u8>, value: &T) -> Result<(), ProcessError> {
    txn.put(key, postcard::to_allocvec(value).map_err(state_err)?);
    Ok(())
}

/// Encoders the processor writes with.
pub struct Encoders {
    /// `gdpr.shred_requests`.
    pub shred: AvroEncoder,
    /// `gdpr.erase_commands`.
    pub erase: AvroEncoder,
    /// `gdpr.subject_request.acknowledged.v1`.
    pub acks: AvroEncoder,
    /// `gdpr.ticks` (decision ticks).
    pub ticks: AvroEncoder,
    /// `audit.events`.
    pub audit: AvroEncoder,
}

/// The processor.
pub struct Gdpr {
    settings: Settings,
    /// Who knows learners by pseudonym (after privacy): every processor
    /// topology.yaml has read `gdpr.erase_commands` ([`participants`]).
    participants: Vec<String>,
    encoders: Encoders,
    pending: Pending,
    open: usize,
    topics: BTreeMap<&'static str, Arc<str>>,
    /// Restricted topics and their retention (ms): where plaintext may
    /// outlive an erasure, and for how long.
    restricted: Vec<(String, i64)>,
}

fn encode<T: Serialize>(encoder: &AvroEncoder, value: &T) -> Result<Vec<u8>, ProcessError> {
    encoder.encode(value).map_err(ProcessError::from)
}

impl Gdpr {
    /// A saga processor over `participants` (besides privacy).
    pub fn new(
        settings: Settings,
        participants: Vec<String>,
        encoders: Encoders,
        pending: Pending,
    ) -> Self {
        let topics = [
            SHRED_REQUESTS_TOPIC,
            ERASE_COMMANDS_TOPIC,
            SUBJECT_ACKS_TOPIC,
            AUDIT_EVENTS_TOPIC,
            GDPR_TICKS_TOPIC,
        ]
        .into_iter()
        .map(|t| (t, Arc::from(t)))
        .collect();
        Self {
            settings,
            participants,
            encoders,
            pending,
            open: 0,
            topics,
            restricted: Vec::new(),
        }
    }

    /// Names the restricted topics (and their retention) an erasure's
    /// answer lists as residual copies of the subject's plaintext.
    pub fn with_restricted(mut self, restricted: Vec<(String, i64)>) -> Self {
        self.restricted = restricted;
        self
    }

    /// Where the subject's plaintext may remain after an erasure of a
    /// request received at `received_at`: every restricted topic, until
    /// its retention has removed what was received before the request.
    fn residual(&self, kind: &str, received_at: i64) -> Vec<ResidualCopy> {
        if kind != "erasure" {
            return Vec::new();
        }
        self.restricted
            .iter()
            .filter(|(_, retention)| *retention > 0)
            .map(|(topic, retention)| ResidualCopy {
                topic: topic.clone(),
                until: received_at.saturating_add(*retention),
            })
            .collect()
    }

    fn topic(&self, name: &'static str) -> Arc<str> {
        self.topics[name].clone()
    }

    /// Why a request cannot be accepted, if it cannot.
    fn invalid(&self, request: &SubjectRequest) -> Option<String> {
        if request.request_id.is_empty() || request.request_id.len() > 200 {
            return Some("request_id must be 1 to 200 characters".into());
        }
        if !self.settings.tenants.contains(&request.tenant_id) {
            return Some(format!("unknown tenant `{}`", request.tenant_id));
        }
        if request.kind != "erasure" && request.kind != "access" {
            return Some(format!(
                "unknown kind `{}` (erasure or access)",
                request.kind
            ));
        }
        if request.other_subject_ids.len() >= MAX_SUBJECT_IDS {
            return Some(format!(
                "a request names at most {MAX_SUBJECT_IDS} identifiers"
            ));
        }
        request.subject_ids().find_map(|(kind, id)| {
            if !SUBJECT_KINDS.contains(&kind) {
                return Some(format!(
                    "unknown subject_id_kind `{kind}` ({})",
                    SUBJECT_KINDS.join(", ")
                ));
            }
            if id.trim().is_empty() || id.trim() != id {
                return Some("a subject_id is empty or has surrounding whitespace".into());
            }
            if kind == "mbox" && !(id.starts_with("mailto:") && id.contains('@')) {
                return Some("an mbox subject_id must be a mailto: address".into());
            }
            None
        })
    }

    fn on_request(
        &mut self,
        record: &InputRecord<'_>,
        request: SubjectRequest,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let key = keys::key(keys::REQUEST, &[&request.request_id]);
        if let Some(saga) = get::<Saga>(txn, &key)? {
            // Re-filed: answer again if answered, otherwise it is under way.
            if let Stage::Answered(ack) = &saga.stage {
                self.answer(ack, out)?;
            }
            return Ok(());
        }
        let received_at = record.timestamp_ms.unwrap_or_default();
        let refusal = self.invalid(&request).map(|r| ("rejected", r)).or_else(|| {
            (request.kind == "erasure")
                .then(|| self.settings.legal_holds.iter().find(|h| h.holds(&request)))
                .flatten()
                .map(|h| ("deferred", format!("legal hold: {}", h.reason)))
        });
        let request_id = request.request_id.clone();
        let mut saga = Saga {
            request,
            received_at,
            stage: Stage::Privacy,
        };
        self.open += 1;
        txn.put(keys::key(keys::OPEN, &[&request_id]), Vec::new());
        if let Some((status, reason)) = refusal {
            let request = &saga.request;
            let ack = SubjectRequestAck {
                request_id: request.request_id.clone(),
                tenant_id: request.tenant_id.clone(),
                kind: request.kind.clone(),
                status: status.into(),
                reason: Some(reason),
                participants: Vec::new(),
                audit_anchor: None,
                audit_checkpoint: None,
                export: None,
                requested_at: request.requested_at,
                acknowledged_at: 0,
                residual_plaintext: Vec::new(),
            };
            if txn
                .get(&keys::key(keys::DECISION, &[&request_id]))?
                .is_none()
            {
                self.decide(&request_id, out)?;
            }
            saga.forget_identifiers();
            saga.stage = Stage::Deciding(Box::new(ack));
            put(txn, key, &saga)?;
            return self.advance(&request_id, txn, out);
        }
        for index in 0..distinct_ids(&saga.request).len() {
            self.shred_command(&saga.request, index, 1, out)?;
        }
        put(txn, key, &saga)?;
        self.advance(&request_id, txn, out)
    }

    fn shred_command(
        &self,
        request: &SubjectRequest,
        index: usize,
        attempt: i32,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let (kind, id) = distinct_ids(request)[index];
        let command = ShredRequest {
            command_id: privacy_command_id(&request.request_id, index),
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            kind: request.kind.clone(),
            subject_id_kind: kind.to_string(),
            subject_id: id.to_string(),
            attempt,
            issued_at: request.requested_at,
        };
        out.emit(OutputRecord {
            topic: self.topic(SHRED_REQUESTS_TOPIC),
            key: request.request_id.clone().into_bytes(),
            value: Some(encode(&self.encoders.shred, &command)?),
            id: format!("{NAME}/{}/{attempt}", command.command_id),
            tenant: Some(request.tenant_id.clone()),
        });
        Ok(())
    }

    fn erase_command(
        &self,
        request: &SubjectRequest,
        command: &Expected,
        attempt: i32,
        issued_at: i64,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let erase = EraseCommand {
            command_id: command.command_id.clone(),
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            participant: command.participant.clone(),
            kind: request.kind.clone(),
            learner: Some(command.learner.clone()),
            attempt,
            issued_at,
        };
        out.emit(OutputRecord {
            topic: self.topic(ERASE_COMMANDS_TOPIC),
            key: request.request_id.clone().into_bytes(),
            value: Some(encode(&self.encoders.erase, &erase)?),
            id: format!("{NAME}/{}/{attempt}", erase.command_id),
            tenant: Some(request.tenant_id.clone()),
        });
        Ok(())
    }

    /// Asks the clock when the saga decides to answer `request_id`: a
    /// decision tick, answered when read back ([`Gdpr::on_decision`]).
    fn decide(&self, request_id: &str, out: &mut Emitter) -> Result<(), ProcessError> {
        let at = trellis_runtime::ticker::now_ms();
        let tick = Tick {
            processor: NAME.into(),
            at,
            request_id: Some(request_id.to_string()),
        };
        out.emit_at(
            OutputRecord {
                topic: self.topic(GDPR_TICKS_TOPIC),
                // The ticker's key: one partition, in order with its ticks.
                key: NAME.as_bytes().to_vec(),
                value: Some(encode(&self.encoders.ticks, &tick)?),
                id: format!("{NAME}/decision/{request_id}"),
                tenant: None,
            },
            Some(at),
        );
        Ok(())
    }

    fn answer(&self, ack: &SubjectRequestAck, out: &mut Emitter) -> Result<(), ProcessError> {
        out.emit(OutputRecord {
            topic: self.topic(SUBJECT_ACKS_TOPIC),
            key: ack.request_id.clone().into_bytes(),
            value: Some(encode(&self.encoders.acks, ack)?),
            id: format!("{NAME}/ack/{}", ack.request_id),
            tenant: Some(ack.tenant_id.clone()),
        });
        Ok(())
    }

    /// Every answer to the commands of `request_id`, by command id.
    fn answers(&self, request_id: &str, txn: &StateTxn<'_>) -> Result<Answers, ProcessError> {
        txn.scan_prefix(&keys::prefix(keys::ANSWER, &[request_id]))?
            .into_iter()
            .map(|(_, bytes)| {
                let ack: ParticipantAck = postcard::from_bytes(&bytes).map_err(state_err)?;
                Ok((ack.command_id.clone(), ack))
            })
            .collect()
    }

    /// Privacy's answers, one per identifier, once all are in.
    fn privacy_answers<'a>(
        &self,
        request: &SubjectRequest,
        answers: &'a Answers,
    ) -> Option<Vec<&'a ParticipantAck>> {
        (0..distinct_ids(request).len())
            .map(|i| answers.get(&privacy_command_id(&request.request_id, i)))
            .collect()
    }

    /// The erase commands the request calls for: every participant, for
    /// every distinct pseudonym privacy named (in identifier order). `None`
    /// until privacy answered for every identifier.
    fn expected(&self, request: &SubjectRequest, answers: &Answers) -> Option<Vec<Expected>> {
        let privacy = self.privacy_answers(request, answers)?;
        let mut learners: Vec<&str> = Vec::new();
        for answer in privacy {
            if let (Some(learner), "done") = (&answer.learner, answer.outcome.as_str())
                && !learners.contains(&learner.as_str())
            {
                learners.push(learner);
            }
        }
        Some(
            learners
                .iter()
                .enumerate()
                .flat_map(|(index, learner)| {
                    self.participants.iter().map(move |p| Expected {
                        command_id: erase_command_id(&request.request_id, p, index),
                        participant: p.clone(),
                        learner: learner.to_string(),
                    })
                })
                .collect(),
        )
    }

    /// When privacy's last answer came: erase commands are issued (and
    /// re-sent) from then.
    fn privacy_answered_at(&self, request: &SubjectRequest, answers: &Answers) -> i64 {
        self.privacy_answers(request, answers)
            .into_iter()
            .flatten()
            .map(|a| a.acked_at)
            .max()
            .unwrap_or_default()
    }

    /// Moves the saga of `request_id` as far as the stored facts allow.
    fn advance(
        &mut self,
        request_id: &str,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let key = keys::key(keys::REQUEST, &[request_id]);
        let Some(mut saga) = get::<Saga>(txn, &key)? else {
            return Ok(());
        };
        let answers = self.answers(request_id, txn)?;
        let stage_before = saga.stage.clone();
        if saga.stage == Stage::Privacy
            && let Some(expected) = self.expected(&saga.request, &answers)
        {
            let issued_at = self.privacy_answered_at(&saga.request, &answers);
            for command in &expected {
                self.erase_command(&saga.request, command, 1, issued_at, out)?;
            }
            // A person privacy never saw: nobody else can hold anything
            // keyed by a pseudonym that never existed.
            saga.stage = Stage::Participants;
        }
        if saga.stage == Stage::Participants
            && self
                .expected(&saga.request, &answers)
                .is_some_and(|e| e.iter().all(|c| answers.contains_key(&c.command_id)))
        {
            saga.stage = Stage::Anchor;
            self.executed(&saga, &answers, out)?;
        }
        let decision = get::<i64>(txn, &keys::key(keys::DECISION, &[request_id]))?;
        if saga.stage == Stage::Anchor
            && let Some(anchor) = get::<AnchorFact>(txn, &keys::key(keys::ANCHOR, &[request_id]))?
        {
            let ack = self.complete(&saga, &answers, anchor)?;
            if decision.is_none() {
                self.decide(request_id, out)?;
            }
            saga.forget_identifiers();
            saga.stage = Stage::Deciding(Box::new(ack));
        }
        // The decision is in the log (read back, or met first on replay).
        if let (Stage::Deciding(ack), Some(at)) = (&saga.stage, decision) {
            let mut ack = ack.clone();
            ack.acknowledged_at = at;
            self.answer(&ack, out)?;
            saga.stage = Stage::Answered(ack);
            txn.delete(keys::key(keys::OPEN, &[request_id]));
            self.open = self.open.saturating_sub(1);
        }
        if saga.stage != stage_before {
            put(txn, key, &saga)?;
        }
        self.pending.set(self.open > 0);
        Ok(())
    }

    /// A decision tick: a fact like the others, the first one per request
    /// dates its answer; one a re-run batch wrote again changes nothing.
    fn on_decision(
        &mut self,
        request_id: &str,
        at: i64,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let key = keys::key(keys::DECISION, &[request_id]);
        if txn.get(&key)?.is_some() {
            out.dropped_duplicate();
            return Ok(());
        }
        put(txn, key, &at)?;
        self.advance(request_id, txn, out)
    }

    /// The audit event saying every participant answered.
    fn executed(
        &self,
        saga: &Saga,
        answers: &Answers,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let request = &saga.request;
        let at = answers
            .values()
            .map(|a| a.acked_at)
            .max()
            .unwrap_or(saga.received_at);
        let action = if request.kind == "access" {
            "subject.exported"
        } else {
            "subject_request.executed"
        };
        let learners = self.learners(request, answers);
        let mut details = BTreeMap::from([
            ("request_id".to_string(), request.request_id.clone()),
            ("kind".to_string(), request.kind.clone()),
            (
                "identifiers".to_string(),
                distinct_ids(request).len().to_string(),
            ),
        ]);
        for result in self.results(request, answers) {
            details.insert(format!("outcome.{}", result.participant), result.outcome);
        }
        if learners.len() > 1 {
            details.insert("pseudonyms".into(), learners.join(","));
        }
        let event = AuditEvent {
            event_id: format!("{NAME}/{}/executed", request.request_id),
            tenant_id: Some(request.tenant_id.clone()),
            actor: NAME.to_string(),
            action: action.to_string(),
            subject: learners.first().cloned(),
            field: None,
            reason: None,
            occurred_at: at,
            details,
        };
        out.emit(OutputRecord {
            topic: self.topic(AUDIT_EVENTS_TOPIC),
            key: request.tenant_id.clone().into_bytes(),
            value: Some(encode(&self.encoders.audit, &event)?),
            id: event.event_id.clone(),
            tenant: Some(request.tenant_id.clone()),
        });
        Ok(())
    }

    /// The distinct pseudonyms privacy named for the request.
    fn learners(&self, request: &SubjectRequest, answers: &Answers) -> Vec<String> {
        let mut learners: Vec<String> = Vec::new();
        for e in self.expected(request, answers).unwrap_or_default() {
            if !learners.contains(&e.learner) {
                learners.push(e.learner);
            }
        }
        learners
    }

    /// One result per participant, over all its commands: `failed` if one
    /// failed, else `done` if one did; details, key ids and counts of
    /// distinct answers (two identifiers of one subject are one export).
    fn results(&self, request: &SubjectRequest, answers: &Answers) -> Vec<ParticipantResult> {
        // Called once privacy answered for every identifier.
        let privacy = self.privacy_answers(request, answers).unwrap_or_default();
        let expected = self.expected(request, answers).unwrap_or_default();
        std::iter::once(PRIVACY)
            .chain(self.participants.iter().map(String::as_str))
            .filter_map(|participant| {
                let acks: Vec<&ParticipantAck> = if participant == PRIVACY {
                    privacy.clone()
                } else {
                    expected
                        .iter()
                        .filter(|e| e.participant == participant)
                        .filter_map(|e| answers.get(&e.command_id))
                        .collect()
                };
                merge(participant, &acks)
            })
            .collect()
    }

    fn complete(
        &self,
        saga: &Saga,
        answers: &Answers,
        anchor: AnchorFact,
    ) -> Result<SubjectRequestAck, ProcessError> {
        let request = &saga.request;
        let export = if request.kind == "access" {
            Some(self.export(saga, answers)?)
        } else {
            None
        };
        Ok(SubjectRequestAck {
            request_id: request.request_id.clone(),
            tenant_id: request.tenant_id.clone(),
            kind: request.kind.clone(),
            status: "completed".into(),
            reason: None,
            participants: self.results(request, answers),
            audit_anchor: Some(anchor.hash),
            audit_checkpoint: (!anchor.checkpoint.is_empty()).then_some(anchor.checkpoint),
            export,
            requested_at: request.requested_at,
            // Dated by the decision tick.
            acknowledged_at: 0,
            residual_plaintext: self.residual(&request.kind, saga.received_at),
        })
    }

    /// Writes the access export: one JSON document, owner-only, under
    /// `export_dir/<tenant>/`: the identifiers and what each resolved to,
    /// and per pseudonym what every participant holds. Returns its path.
    /// Written again on replay with the same content.
    fn export(&self, saga: &Saga, answers: &Answers) -> Result<String, ProcessError> {
        let request = &saga.request;
        let part = |a: &ParticipantAck| {
            let held = a
                .export
                .as_deref()
                .and_then(|e| serde_json::from_str(e).ok())
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({
                "outcome": a.outcome,
                "detail": a.detail,
                "records": a.records_affected,
                "data": held,
            })
        };
        let privacy = self.privacy_answers(request, answers).unwrap_or_default();
        let identifiers: Vec<serde_json::Value> = distinct_ids(request)
            .iter()
            .zip(&privacy)
            .map(|((kind, id), a)| {
                serde_json::json!({"kind": kind, "id": id, "pseudonym": a.learner})
            })
            .collect();
        let expected = self.expected(request, answers).unwrap_or_default();
        let subjects: Vec<serde_json::Value> = self
            .learners(request, answers)
            .iter()
            .map(|learner| {
                let mut held_by = serde_json::Map::new();
                if let Some(a) = privacy.iter().find(|a| a.learner.as_ref() == Some(learner)) {
                    held_by.insert(PRIVACY.into(), part(a));
                }
                for e in expected.iter().filter(|e| &e.learner == learner) {
                    if let Some(a) = answers.get(&e.command_id) {
                        held_by.insert(e.participant.clone(), part(a));
                    }
                }
                serde_json::json!({"pseudonym": learner, "held_by": held_by})
            })
            .collect();
        let document = serde_json::json!({
            "request_id": request.request_id,
            "tenant_id": request.tenant_id,
            "requested_at": request.requested_at,
            "identifiers": identifiers,
            "subjects": subjects,
        });
        let dir = self.settings.export_dir.join(&request.tenant_id);
        let path = dir.join(format!(
            "{}.json",
            hex::encode(request.request_id.as_bytes())
        ));
        trellis_runtime::files::write_private(
            &dir,
            &path,
            &serde_json::to_vec_pretty(&document).map_err(state_err)?,
        )
        .map_err(|e| ProcessError::fatal("writing an access export", e))?;
        Ok(path.display().to_string())
    }

    fn on_answer(
        &mut self,
        ack: ParticipantAck,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        let key = keys::key(keys::ANSWER, &[&ack.request_id, &ack.command_id]);
        if txn.get(&key)?.is_some() {
            // A re-sent command's answer: the first one stands.
            out.dropped_duplicate();
            return Ok(());
        }
        put(txn, key, &ack)?;
        self.advance(&ack.request_id, txn, out)
    }

    fn on_anchor(
        &mut self,
        anchor: Anchor,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if anchor.request_ids.is_empty() {
            return Ok(());
        }
        let fact = AnchorFact {
            hash: hex::encode(anchor_hash(&anchor)),
            anchored_at: anchor.anchored_at,
            checkpoint: anchor.checkpoint.clone(),
        };
        for request_id in &anchor.request_ids {
            let key = keys::key(keys::ANCHOR, &[request_id]);
            if txn.get(&key)?.is_none() {
                put(txn, key, &fact)?;
                self.advance(request_id, txn, out)?;
            }
        }
        Ok(())
    }

    fn on_tick(
        &mut self,
        tick: Tick,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        if let Some(request_id) = &tick.request_id {
            return self.on_decision(request_id, tick.at, txn, out);
        }
        let retry = self.settings.retry_after_ms;
        // Ticks are one partition, in order: the previous tick's time is a
        // fact like any other. A command is re-sent once per period of
        // silence, on the first tick of that period.
        let previous: i64 = get(txn, &[keys::TICK])?.unwrap_or(i64::MIN);
        put(txn, vec![keys::TICK], &tick.at)?;
        let periods = |at: i64, since: i64| at.saturating_sub(since).max(0) / retry;
        let due = |since: i64| periods(tick.at, since) > periods(previous, since);
        let attempt = |since: i64| 1 + periods(tick.at, since).clamp(0, 1_000) as i32;
        for (key, _) in txn.scan_prefix(&[keys::OPEN])? {
            let request_id = keys::parts(&key)
                .next()
                .map(|id| String::from_utf8_lossy(id).into_owned())
                .unwrap_or_default();
            let Some(saga) = get::<Saga>(txn, &keys::key(keys::REQUEST, &[&request_id]))? else {
                continue;
            };
            let answers = self.answers(&request_id, txn)?;
            let request = &saga.request;
            match saga.stage {
                Stage::Privacy if due(saga.received_at) => {
                    for index in 0..distinct_ids(request).len() {
                        if !answers.contains_key(&privacy_command_id(&request_id, index)) {
                            let attempt = attempt(saga.received_at);
                            self.shred_command(request, index, attempt, out)?;
                        }
                    }
                }
                Stage::Participants => {
                    let since = self.privacy_answered_at(request, &answers);
                    if !due(since) {
                        continue;
                    }
                    for command in self.expected(request, &answers).unwrap_or_default() {
                        if !answers.contains_key(&command.command_id) {
                            self.erase_command(request, &command, attempt(since), since, out)?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// An erase command the saga issues: to `participant`, for `learner`.
struct Expected {
    command_id: String,
    participant: String,
    learner: String,
}

/// `participant`'s answers as one result (see [`Gdpr::results`]).
fn merge(participant: &str, acks: &[&ParticipantAck]) -> Option<ParticipantResult> {
    let first = acks.first()?;
    let outcome = ["failed", "done"]
        .into_iter()
        .find(|o| acks.iter().any(|a| a.outcome == *o))
        .unwrap_or(&first.outcome);
    // Two identifiers of one subject: privacy answered twice for one
    // pseudonym (an access exported it twice); count it once.
    let mut seen = Vec::new();
    let distinct: Vec<&&ParticipantAck> = acks
        .iter()
        .filter(|a| {
            a.learner.is_none() || {
                let new = !seen.contains(&a.learner);
                seen.push(a.learner.clone());
                new
            }
        })
        .collect();
    let mut details: Vec<&str> = Vec::new();
    for a in &distinct {
        if !details.contains(&a.detail.as_str()) {
            details.push(&a.detail);
        }
    }
    Some(ParticipantResult {
        participant: participant.to_string(),
        outcome: outcome.to_string(),
        detail: details.join("; "),
        shredded_key_ids: distinct
            .iter()
            .flat_map(|a| a.shredded_key_ids.iter().cloned())
            .collect(),
        records_affected: distinct.iter().map(|a| a.records_affected).sum(),
    })
}

/// What the runtime decodes each input into, by topic.
pub enum Input {
    /// A subject request (`gdpr.subject_requests`).
    Request(SubjectRequest),
    /// A participant's answer (`gdpr.participant_acks`).
    Answer(ParticipantAck),
    /// An audit anchor (`audit.anchors`).
    Anchor(Anchor),
    /// A clock tick (`gdpr.ticks`).
    Tick(Tick),
}

impl trellis_runtime::pipeline::Input<'_> for Input {
    fn decode(record: &InputRecord<'_>, avro: &AvroDecoder) -> Result<Self, DecodeError> {
        match record.topic {
            SUBJECT_REQUESTS_TOPIC => record.avro(avro).map(Self::Request),
            PARTICIPANT_ACKS_TOPIC => record.avro(avro).map(Self::Answer),
            ANCHORS_TOPIC => record.avro(avro).map(Self::Anchor),
            GDPR_TICKS_TOPIC => record.avro(avro).map(Self::Tick),
            _ => Err(record.unexpected_topic()),
        }
    }
}

impl Processor for Gdpr {
    type Input<'r> = Input;

    fn restore(&mut self, store: &StateStore) -> Result<(), StateError> {
        self.open = store.scan_prefix(&[keys::OPEN]).count();
        self.pending.set(self.open > 0);
        Ok(())
    }

    fn abandoned(&mut self) {
        // The open count is only a hint for the ticker; a restart recounts.
    }

    fn process(
        &mut self,
        record: &InputRecord<'_>,
        input: Input,
        txn: &mut StateTxn<'_>,
        out: &mut Emitter,
    ) -> Result<(), ProcessError> {
        match input {
            Input::Request(request) => self.on_request(record, request, txn, out),
            Input::Answer(ack) => self.on_answer(ack, txn, out),
            Input::Anchor(anchor) => self.on_anchor(anchor, txn, out),
            Input::Tick(tick) => self.on_tick(tick, txn, out),
        }
    }
}

/// The participants after privacy, in topology.yaml's order: every
/// processor, ours or `external`, that reads `gdpr.erase_commands`. The
/// topology says who holds learners by pseudonym; no list restates it.
///
/// # Errors
/// A reader that writes no `gdpr.participant_acks`: the saga would wait
/// for its answer forever.
pub fn participants(topology: &Topology) -> Result<Vec<String>, StartError> {
    let mut participants = Vec::new();
    for (name, spec) in &topology.processors {
        if !spec.inputs.iter().any(|t| t == ERASE_COMMANDS_TOPIC) {
            continue;
        }
        if !spec.outputs.iter().any(|t| t == PARTICIPANT_ACKS_TOPIC) {
            return Err(StartError::Misconfigured(format!(
                "processor `{name}` reads {ERASE_COMMANDS_TOPIC} but writes no \
                 {PARTICIPANT_ACKS_TOPIC}: every erasure would wait for its answer forever \
                 (topology.yaml)"
            )));
        }
        participants.push(name.clone());
    }
    Ok(participants)
}

/// The saga's one constructor: the binary, the bench and the tests build
/// it here.
impl Build for Gdpr {
    const NAME: &'static str = NAME;
    const OWNS: &'static str =
        "each saga, whose facts arrive on several topics, and the saga clock";
    /// 2: keys in the runtime's one encoding (`state::key`).
    const STATE_FORMAT: u32 = 2;
    const PATHS: &'static [(&'static str, &'static str)] = &[("export_dir", "exports")];
    type Settings = Settings;
    type Processor = Self;

    async fn build(ctx: &mut Context<'_, Settings>) -> Result<Self, StartError> {
        let pending = Pending::default();
        if let Some(ticker) = ctx.ticker(GDPR_TICKS_TOPIC)? {
            let ticks = ctx.encoder(GDPR_TICKS_TOPIC).await?;
            ticker.spawn(
                Duration::from_millis(ctx.settings.tick_ms),
                pending.clone(),
                move |at| {
                    Ok(TickRecord {
                        id: format!("tick/{NAME}/{at}"),
                        key: NAME.as_bytes().to_vec(),
                        value: ticks
                            .encode(&Tick {
                                processor: NAME.into(),
                                at,
                                request_id: None,
                            })
                            .map_err(|e| e.to_string())?,
                    })
                },
            );
        }
        let encoders = Encoders {
            shred: ctx.encoder(SHRED_REQUESTS_TOPIC).await?,
            erase: ctx.encoder(ERASE_COMMANDS_TOPIC).await?,
            acks: ctx.encoder(SUBJECT_ACKS_TOPIC).await?,
            audit: ctx.encoder(AUDIT_EVENTS_TOPIC).await?,
            ticks: ctx.encoder(GDPR_TICKS_TOPIC).await?,
        };
        let restricted = ctx
            .topology
            .topics
            .iter()
            .filter(|(_, t)| t.classification == Classification::Restricted)
            .map(|(name, t)| (name.clone(), t.retention_ms))
            .collect();
        let participants = participants(ctx.topology)?;
        tracing::info!(participants = %participants.join(", "), "erasures wait for privacy and these");
        Ok(
            Gdpr::new(ctx.settings.clone(), participants, encoders, pending)
                .with_restricted(restricted),
        )
    }
}

trellis_runtime::processor_run!(Gdpr);

#[cfg(test)]
mod tests;
