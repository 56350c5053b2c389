//! The demo data set: realistic learning events from several tenants, with a
//! known share of malformed and duplicated records, and a [`Manifest`] of
//! what the topology must make of them.
//!
//! Learners follow plausible journeys per activity (launched → attempted →
//! answered … → passed/failed → completed for quizzes; experienced and
//! completed for videos and pages), as xAPI statements from an LRS forwarder
//! and Moodle-style log events from a Moodle plugin; some statements are
//! later voided. Learners carry names, emails, user ids and IP addresses, so
//! later stages can be checked for leaks of exactly these values.
//!
//! Generation is deterministic for a seed; delivery reports give each record
//! its partition and offset, from which the manifest derives the expected
//! dead-letter ids and the end of every ingest partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use trellis_records::{Aggregate, INGEST_EVENTS_TOPIC, INGEST_XAPI_TOPIC};
pub use trellis_runtime::ticker::now_ms;
use uuid::Uuid;

const FIRST: &[&str] = &[
    "Ann", "Bilal", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jonas", "Kemal",
    "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quentin", "Rosa", "Sami", "Tara", "Uma", "Viktor",
    "Wen", "Ximena", "Yusuf", "Zoe",
];
const LAST: &[&str] = &[
    "Lee", "Okafor", "Novak", "Silva", "Haddad", "Kowalski", "Moreau", "Tanaka", "Berg", "Costa",
    "Adeyemi", "Fischer", "Ivanova", "Jensen", "Khan", "Larsen", "Martins", "Nakamura",
];
const ANSWERS: &[&str] = &[
    "Photosynthesis converts light energy into chemical energy",
    "The derivative of x squared is two x",
    "I think the treaty ended the war in 1648",
    "Because the sample size was too small to generalise",
    "Mitochondria produce most of the cell's ATP",
];

/// What the demo produces and what the topology must make of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Records sent, duplicates and malformed included.
    pub sent: usize,
    /// Valid events: `tenant/event_id`, each expected exactly once in `collected`.
    pub valid: BTreeSet<String>,
    /// Malformed records: dead-letter id → expected reason code.
    pub rejected: BTreeMap<String, String>,
    /// Valid records sent a second time.
    pub duplicates: usize,
    /// Per ingest partition (`topic/partition`): offset after the last record.
    pub end_offsets: BTreeMap<String, i64>,
    /// Every personal value the learners carry (emails, names, user ids, IPs).
    pub identifiers: BTreeSet<String>,
    /// Valid events per tenant.
    pub per_tenant: BTreeMap<String, usize>,
    /// Valid events per tenant and hour of event time (hour start, ms).
    #[serde(default)]
    pub per_hour: BTreeMap<String, BTreeMap<i64, usize>>,
}

/// Demo parameters.
#[derive(Debug, Clone)]
pub struct DemoSpec {
    /// Records to send (malformed and duplicates included).
    pub events: usize,
    /// Tenants.
    pub tenants: usize,
    /// Learners per tenant.
    pub learners: usize,
    /// Courses per tenant.
    pub courses: usize,
    /// Share of malformed records.
    pub malformed: f64,
    /// Share of records that re-send an earlier valid one.
    pub duplicates: f64,
    /// Records per second; `None` sends as fast as the broker takes them.
    pub rate: Option<u32>,
    /// RNG seed.
    pub seed: u64,
    /// Spread event times over this many hours before now (before
    /// `ago_hours`), mostly in order, with stragglers minutes to a day late.
    /// 0: every event within the last 10 minutes.
    pub span_hours: u32,
    /// Shift the span this many hours into the past: a backfill of older
    /// statements (other events of the same learners).
    pub ago_hours: u32,
}

impl Default for DemoSpec {
    fn default() -> Self {
        Self {
            events: 10_000,
            tenants: 3,
            learners: 60,
            courses: 4,
            malformed: 0.02,
            duplicates: 0.01,
            rate: None,
            seed: 7,
            span_hours: 0,
            ago_hours: 0,
        }
    }
}

const TENANT_NAMES: &[&str] = &[
    "northwind-uni",
    "riverside-college",
    "acme-learning",
    "harbor-school",
    "summit-academy",
];

/// The name of demo tenant `t`.
pub fn tenant_name(t: usize) -> String {
    TENANT_NAMES
        .get(t)
        .map_or_else(|| format!("tenant-{t}"), |n| (*n).to_string())
}

/// The names of the first `n` demo tenants.
pub fn tenant_names(n: usize) -> Vec<String> {
    (0..n).map(tenant_name).collect()
}

/// The LMS user id of learner `i` of demo tenant `t`.
pub fn user_id(t: usize, i: usize) -> String {
    format!("{}", 1000 + i * 7 + t * 100_000)
}

/// A learner of one tenant.
#[derive(Debug, Clone)]
pub struct Learner {
    /// LMS user id.
    pub user_id: String,
    /// Full name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Usual IP address.
    pub ip: String,
}

#[derive(Debug, Clone)]
struct Activity {
    iri: String,
    kind: ActivityKind,
    cmid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ActivityKind {
    Quiz,
    Video,
    Page,
}

struct Tenant {
    id: String,
    lms: String,
    learners: Vec<Learner>,
    courses: Vec<(String, Vec<Activity>)>,
    /// Statement ids sent so far, for voiding.
    statements: Vec<String>,
}

/// Where a learner is in an activity.
#[derive(Default, Clone, Copy)]
struct Journey {
    step: u8,
    answers: u8,
}

/// One record to produce.
pub struct Outgoing {
    /// Topic.
    pub topic: &'static str,
    /// Key.
    pub key: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
    /// `tenant` header, if any.
    pub tenant_header: Option<String>,
    /// Record timestamp (ms).
    pub timestamp: i64,
    /// `Some(id)` for a valid, new event; `None` otherwise.
    pub valid_id: Option<String>,
    /// When a valid event happened (ms).
    pub occurred_at: Option<i64>,
    /// Expected reason code for a malformed record.
    pub expected_reason: Option<&'static str>,
    /// True when this re-sends an earlier valid record.
    pub duplicate: bool,
}

impl Clone for Outgoing {
    fn clone(&self) -> Self {
        Self {
            topic: self.topic,
            key: self.key.clone(),
            value: self.value.clone(),
            tenant_header: self.tenant_header.clone(),
            timestamp: self.timestamp,
            valid_id: self.valid_id.clone(),
            occurred_at: self.occurred_at,
            expected_reason: self.expected_reason,
            duplicate: self.duplicate,
        }
    }
}

/// Deterministic generator of demo records.
pub struct Generator {
    spec: DemoSpec,
    rng: StdRng,
    tenants: Vec<Tenant>,
    journeys: BTreeMap<(usize, usize, usize, usize), Journey>,
    recent: Vec<Outgoing>,
    /// Valid events generated so far.
    generated: usize,
    /// Every personal value generated.
    pub identifiers: BTreeSet<String>,
}

use crate::rfc3339;

impl Generator {
    /// Builds tenants, courses and learners for `spec`.
    pub fn new(spec: DemoSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut identifiers = BTreeSet::new();
        let tenants = (0..spec.tenants)
            .map(|t| {
                let id = tenant_name(t);
                let lms = format!("https://moodle.{id}.example");
                let learners = (0..spec.learners)
                    .map(|i| {
                        let first = FIRST[rng.random_range(0..FIRST.len())];
                        let last = LAST[rng.random_range(0..LAST.len())];
                        let learner = Learner {
                            user_id: user_id(t, i),
                            name: format!("{first} {last}"),
                            email: format!(
                                "{}.{}{}@{id}.example",
                                first.to_lowercase(),
                                last.to_lowercase(),
                                i
                            ),
                            ip: format!(
                                "{}.{}.{}.{}",
                                [203, 198, 192][t % 3],
                                [0, 51, 0][t % 3],
                                [113, 100, 2][t % 3],
                                1 + i % 250
                            ),
                        };
                        identifiers.insert(learner.user_id.clone());
                        identifiers.insert(learner.name.clone());
                        identifiers.insert(learner.email.clone());
                        identifiers.insert(learner.ip.clone());
                        learner
                    })
                    .collect();
                // Course and activity ids deliberately repeat across tenants
                // (same LMS layout), to catch cross-tenant mixing downstream.
                let courses = (0..spec.courses)
                    .map(|c| {
                        let course = format!("https://lms.example/course/{}", 100 + c);
                        let activities = (0..6)
                            .map(|a| {
                                let kind =
                                    [ActivityKind::Quiz, ActivityKind::Video, ActivityKind::Page]
                                        [a % 3];
                                let cmid = (100 + c * 10 + a) as u32;
                                let path = match kind {
                                    ActivityKind::Quiz => "mod/quiz",
                                    ActivityKind::Video => "mod/h5pactivity",
                                    ActivityKind::Page => "mod/page",
                                };
                                Activity {
                                    iri: format!("https://lms.example/{path}/view.php?id={cmid}"),
                                    kind,
                                    cmid,
                                }
                            })
                            .collect();
                        (course, activities)
                    })
                    .collect();
                Tenant {
                    id,
                    lms,
                    learners,
                    courses,
                    statements: Vec::new(),
                }
            })
            .collect();
        // A backfill: the same learners, other events.
        if spec.ago_hours > 0 {
            rng = StdRng::seed_from_u64(spec.seed ^ (u64::from(spec.ago_hours) << 32));
        }
        Self {
            spec,
            rng,
            tenants,
            journeys: BTreeMap::new(),
            generated: 0,
            recent: Vec::new(),
            identifiers,
        }
    }

    /// The learners of tenant `index` (tests look them up).
    pub fn learners(&self, index: usize) -> (&str, &[Learner]) {
        (&self.tenants[index].id, &self.tenants[index].learners)
    }

    /// The next record, stamped `now` (ms).
    pub fn next_record(&mut self, now: i64) -> Outgoing {
        let roll: f64 = self.rng.random();
        if roll < self.spec.duplicates && !self.recent.is_empty() {
            let pick = self.rng.random_range(0..self.recent.len());
            let mut dup = self.recent[pick].clone();
            dup.valid_id = None;
            dup.duplicate = true;
            dup.timestamp = now;
            return dup;
        }
        if roll < self.spec.duplicates + self.spec.malformed {
            return self.malformed(now);
        }
        let record = self.valid(now);
        if self.recent.len() < 2000 {
            self.recent.push(record.clone());
        } else {
            let slot = self.rng.random_range(0..self.recent.len());
            self.recent[slot] = record.clone();
        }
        record
    }

    /// When the next valid event happened.
    fn occurred(&mut self, now: i64) -> i64 {
        self.generated += 1;
        if self.spec.span_hours == 0 {
            return now - self.rng.random_range(0..600_000);
        }
        const MINUTE: i64 = 60_000;
        let span = i64::from(self.spec.span_hours) * 3_600_000;
        let ago = i64::from(self.spec.ago_hours) * 3_600_000;
        let progress = self.generated as f64 / self.spec.events.max(1) as f64;
        let on_time = now - ago - span + (span as f64 * progress.min(1.0)) as i64;
        // Most events arrive within two minutes; some minutes to hours late
        // (a phone out of coverage, a plugin's queue), a few a day late (an
        // app that syncs the next morning).
        let roll: f64 = self.rng.random();
        let delay = if roll < 0.02 {
            self.rng.random_range(3 * 60 * MINUTE..24 * 60 * MINUTE)
        } else if roll < 0.07 {
            self.rng.random_range(2 * MINUTE..3 * 60 * MINUTE)
        } else {
            self.rng.random_range(0..2 * MINUTE)
        };
        on_time - delay
    }

    fn valid(&mut self, now: i64) -> Outgoing {
        let t = self.rng.random_range(0..self.tenants.len());
        let l = self.rng.random_range(0..self.tenants[t].learners.len());
        let c = self.rng.random_range(0..self.tenants[t].courses.len());
        let a = self.rng.random_range(0..self.tenants[t].courses[c].1.len());
        let occurred = self.occurred(now);
        let use_moodle = self.rng.random_bool(0.35);
        let void =
            !use_moodle && self.rng.random_bool(0.005) && !self.tenants[t].statements.is_empty();
        let (topic, value, event_id) = if void {
            self.voiding(t, l, occurred)
        } else if use_moodle {
            self.moodle(t, l, c, a, occurred)
        } else {
            self.statement(t, l, c, a, occurred)
        };
        let tenant = &self.tenants[t];
        Outgoing {
            topic,
            key: format!("{}|{}", tenant.id, tenant.learners[l].user_id).into_bytes(),
            value: value.to_string().into_bytes(),
            tenant_header: Some(tenant.id.clone()),
            timestamp: now,
            valid_id: Some(format!("{}/{event_id}", tenant.id)),
            occurred_at: Some(occurred),
            expected_reason: None,
            duplicate: false,
        }
    }

    fn xapi_actor(&mut self, t: usize, l: usize) -> Value {
        let tenant = &self.tenants[t];
        let learner = &tenant.learners[l];
        // Two thirds identify by email, one third by LMS account.
        if l % 3 == 2 {
            json!({"objectType": "Agent", "name": learner.name,
                   "account": {"homePage": tenant.lms, "name": learner.user_id}})
        } else {
            json!({"objectType": "Agent", "name": learner.name, "mbox": format!("mailto:{}", learner.email)})
        }
    }

    fn statement(
        &mut self,
        t: usize,
        l: usize,
        c: usize,
        a: usize,
        occurred: i64,
    ) -> (&'static str, Value, String) {
        let activity = self.tenants[t].courses[c].1[a].clone();
        let course = self.tenants[t].courses[c].0.clone();
        let journey = self.journeys.entry((t, l, c, a)).or_default();
        let (verb, result) = match activity.kind {
            ActivityKind::Quiz => {
                let step = journey.step;
                match step {
                    0 => {
                        journey.step = 1;
                        ("launched", None)
                    }
                    1 => {
                        journey.step = 2;
                        ("attempted", None)
                    }
                    2 if journey.answers < 3 => {
                        journey.answers += 1;
                        let answer = ANSWERS[self.rng.random_range(0..ANSWERS.len())];
                        (
                            "answered",
                            Some(json!({"response": answer, "success": self.rng.random_bool(0.7)})),
                        )
                    }
                    2 => {
                        let scaled = (self.rng.random_range(30..100) as f64) / 100.0;
                        let passed = scaled >= 0.6;
                        journey.step = if passed { 3 } else { 1 };
                        journey.answers = 0;
                        let raw = (scaled * 20.0).round();
                        (
                            if passed { "passed" } else { "failed" },
                            Some(
                                json!({"success": passed, "score": {"scaled": scaled, "raw": raw, "min": 0, "max": 20},
                                        "duration": format!("PT{}M{}S", self.rng.random_range(2..40), self.rng.random_range(0..60))}),
                            ),
                        )
                    }
                    _ => {
                        journey.step = 0;
                        ("completed", Some(json!({"completion": true})))
                    }
                }
            }
            ActivityKind::Video | ActivityKind::Page => {
                if journey.step == 0 {
                    journey.step = 1;
                    ("experienced", None)
                } else {
                    journey.step = 0;
                    (
                        "completed",
                        Some(json!({"completion": true, "duration": "PT5M"})),
                    )
                }
            }
        };
        let id = Uuid::from_u128(self.rng.random()).hyphenated().to_string();
        let mut statement = json!({
            "id": id,
            "actor": self.xapi_actor(t, l),
            "verb": {"id": format!("http://adlnet.gov/expapi/verbs/{verb}"), "display": {"en-US": verb}},
            "object": {"objectType": "Activity", "id": activity.iri, "definition": {
                "type": match activity.kind {
                    ActivityKind::Quiz => "http://adlnet.gov/expapi/activities/assessment",
                    ActivityKind::Video => "https://w3id.org/xapi/video/activity-type/video",
                    ActivityKind::Page => "http://adlnet.gov/expapi/activities/lesson",
                }}},
            "context": {"platform": "Moodle", "contextActivities": {"parent": [{"id": course}]}},
            "timestamp": rfc3339(occurred),
        });
        if let Some(result) = result {
            statement["result"] = result;
        }
        self.tenants[t].statements.push(id.clone());
        (INGEST_XAPI_TOPIC, statement, id)
    }

    fn voiding(&mut self, t: usize, l: usize, occurred: i64) -> (&'static str, Value, String) {
        let target = {
            let statements = &self.tenants[t].statements;
            statements[self.rng.random_range(0..statements.len())].clone()
        };
        let id = Uuid::from_u128(self.rng.random()).hyphenated().to_string();
        let statement = json!({
            "id": id,
            "actor": {"objectType": "Agent", "name": "LMS administrator",
                      "account": {"homePage": self.tenants[t].lms, "name": "admin"}},
            "verb": {"id": "http://adlnet.gov/expapi/verbs/voided", "display": {"en-US": "voided"}},
            "object": {"objectType": "StatementRef", "id": target},
            "timestamp": rfc3339(occurred),
        });
        let _ = l;
        (INGEST_XAPI_TOPIC, statement, id)
    }

    fn moodle(
        &mut self,
        t: usize,
        l: usize,
        c: usize,
        a: usize,
        occurred: i64,
    ) -> (&'static str, Value, String) {
        let tenant = &self.tenants[t];
        let learner = &tenant.learners[l];
        let (course, activities) = &tenant.courses[c];
        let activity = &activities[a];
        let app = self.rng.random_bool(0.2);
        let (kind, source, verb, data) = if app {
            (
                "app.event",
                "mobile-app",
                "app.lesson_opened".to_string(),
                json!({"screen": "lesson", "app_version": "4.3.1", "offline": self.rng.random_bool(0.1)}),
            )
        } else {
            let (eventname, component, action, target, crud) = match activity.kind {
                ActivityKind::Quiz if self.rng.random_bool(0.5) => (
                    "\\mod_quiz\\event\\attempt_submitted",
                    "mod_quiz",
                    "submitted",
                    "attempt",
                    "u",
                ),
                ActivityKind::Quiz => (
                    "\\mod_quiz\\event\\attempt_started",
                    "mod_quiz",
                    "started",
                    "attempt",
                    "c",
                ),
                ActivityKind::Video => (
                    "\\mod_h5pactivity\\event\\course_module_viewed",
                    "mod_h5pactivity",
                    "viewed",
                    "course_module",
                    "r",
                ),
                ActivityKind::Page => (
                    "\\mod_page\\event\\course_module_viewed",
                    "mod_page",
                    "viewed",
                    "course_module",
                    "r",
                ),
            };
            (
                "moodle.log",
                "moodle",
                eventname.to_string(),
                json!({"component": component, "action": action, "target": target, "crud": crud,
                       "edulevel": 2, "contextinstanceid": activity.cmid, "origin": "web"}),
            )
        };
        let id = Uuid::from_u128(self.rng.random()).hyphenated().to_string();
        let event = json!({
            "event_id": id,
            "tenant_id": tenant.id,
            "source": source,
            "kind": kind,
            "occurred_at": occurred,
            "actor": {"user_id": learner.user_id, "email": learner.email, "name": learner.name},
            "ip": learner.ip,
            "verb": verb,
            "object_id": activity.iri,
            "course_id": course,
            "data": data,
        });
        (INGEST_EVENTS_TOPIC, event, id)
    }

    fn malformed(&mut self, now: i64) -> Outgoing {
        let t = self.rng.random_range(0..self.tenants.len());
        let l = self.rng.random_range(0..self.tenants[t].learners.len());
        let mut record = self.valid(now);
        record.valid_id = None;
        let tenant = self.tenants[t].id.clone();
        let body: Value = serde_json::from_slice(&record.value).unwrap_or(Value::Null);
        let variant = self.rng.random_range(0..12u8);
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut b = body.clone();
            f(&mut b);
            b.to_string().into_bytes()
        };
        let is_xapi = record.topic == INGEST_XAPI_TOPIC;
        let (value, reason): (Vec<u8>, &'static str) = match variant {
            0 => (
                record.value[..record.value.len() / 2].to_vec(),
                "MALFORMED_JSON",
            ),
            1 => (b"[\"not\", \"an\", \"event\"]".to_vec(), "NOT_AN_OBJECT"),
            2 => (Vec::new(), "EMPTY_VALUE"),
            3 => {
                record.tenant_header = Some("Bad Tenant!".into());
                (
                    edit(&|b| _ = b.as_object_mut().map(|o| o.remove("tenant_id"))),
                    "INVALID_TENANT",
                )
            }
            4 if is_xapi => (
                edit(&|b| {
                    b["actor"] = json!({"objectType": "Agent", "name": "Nobody"});
                }),
                "XAPI_INVALID_ACTOR",
            ),
            5 if is_xapi => (
                edit(&|b| b["verb"]["id"] = json!("passed")),
                "XAPI_INVALID_VERB",
            ),
            6 if is_xapi => (
                edit(&|b| b["result"] = json!({"score": {"scaled": 1.7}})),
                "XAPI_INVALID_RESULT",
            ),
            7 if is_xapi => (
                edit(&|b| b["id"] = json!("statement-42")),
                "INVALID_EVENT_ID",
            ),
            // An instructor without an identifier (xAPI keeps any
            // timestamp, so a skewed one is no longer a reject).
            8 if is_xapi => (
                edit(&|b| b["context"]["instructor"] = json!({"name": "Tutor"})),
                "XAPI_INVALID_CONTEXT",
            ),
            9 if is_xapi => (
                edit(&|b| b["object"] = json!({"objectType": "Activity", "id": "quiz 3"})),
                "XAPI_INVALID_OBJECT",
            ),
            4 => {
                record.tenant_header = None;
                (
                    edit(&|b| _ = b.as_object_mut().map(|o| o.remove("tenant_id"))),
                    "MISSING_TENANT",
                )
            }
            5 => (
                edit(&|b| b["tenant_id"] = json!("someone-else")),
                "TENANT_MISMATCH",
            ),
            6 => (
                edit(&|b| b["occurred_at"] = json!(now + 2 * 86_400_000)),
                "TIMESTAMP_OUT_OF_RANGE",
            ),
            7 => (
                edit(&|b| b["event_id"] = json!("evt-123")),
                "INVALID_EVENT_ID",
            ),
            8 => (
                edit(&|b| b["kind"] = json!("mystery.event")),
                "UNKNOWN_KIND",
            ),
            _ => (
                edit(&|b| b["actor"] = json!({"name": "No identifier"})),
                if is_xapi {
                    "XAPI_INVALID_ACTOR"
                } else {
                    "MISSING_FIELD"
                },
            ),
        };
        let _ = (tenant, l);
        record.value = value;
        record.expected_reason = Some(reason);
        record
    }
}

/// Sends `spec.events` records and returns the manifest.
///
/// # Errors
/// A delivery failure, as text.
pub async fn produce(producer: &FutureProducer, spec: DemoSpec) -> Result<Manifest, String> {
    let rate = spec.rate;
    let total = spec.events;
    let mut generator = Generator::new(spec);
    let mut manifest = Manifest {
        identifiers: generator.identifiers.clone(),
        ..Manifest::default()
    };
    let started = std::time::Instant::now();
    let mut pending: Vec<(Outgoing, DeliveryFuture)> = Vec::with_capacity(10_000);
    for n in 0..total {
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(n as f64 / f64::from(rate.max(1)));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let record = generator.next_record(now_ms());
        // Raw ingest carries no `trellis.id`: the collector derives ids.
        let headers = trellis_runtime::producer::Outgoing {
            topic: record.topic,
            key: &record.key,
            value: Some(&record.value),
            id: None,
            tenant: record.tenant_header.as_deref(),
            request_id: None,
            timestamp_ms: Some(record.timestamp),
        }
        .headers();
        let future = loop {
            let kafka_record = FutureRecord::to(record.topic)
                .key(&record.key)
                .payload(&record.value)
                .headers(headers.clone())
                .timestamp(record.timestamp);
            match producer.send_result(kafka_record) {
                Ok(future) => break future,
                Err((e, _)) => {
                    if pending.is_empty() {
                        return Err(format!("producing demo data: {e}"));
                    }
                    settle(&mut pending, &mut manifest).await?;
                }
            }
        };
        pending.push((record, future));
        if pending.len() >= 10_000 {
            settle(&mut pending, &mut manifest).await?;
        }
    }
    settle(&mut pending, &mut manifest).await?;
    Ok(manifest)
}

async fn settle(
    pending: &mut Vec<(Outgoing, DeliveryFuture)>,
    manifest: &mut Manifest,
) -> Result<(), String> {
    for (record, future) in pending.drain(..) {
        let delivery = match future.await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err((e, _))) => return Err(format!("delivery failed: {e}")),
            Err(_) => return Err("delivery cancelled".into()),
        };
        manifest.sent += 1;
        let coordinates = format!("{}/{}", record.topic, delivery.partition);
        let end = manifest.end_offsets.entry(coordinates).or_insert(0);
        *end = (*end).max(delivery.offset + 1);
        if record.duplicate {
            manifest.duplicates += 1;
        }
        if let Some(reason) = record.expected_reason {
            manifest.rejected.insert(
                format!(
                    "{}/{}/{}",
                    record.topic, delivery.partition, delivery.offset
                ),
                reason.to_string(),
            );
        }
        if let Some(id) = record.valid_id {
            let tenant = id.split('/').next().unwrap_or_default().to_string();
            if let Some(at) = record.occurred_at {
                let hour = at.div_euclid(3_600_000) * 3_600_000;
                *manifest
                    .per_hour
                    .entry(tenant.clone())
                    .or_default()
                    .entry(hour)
                    .or_default() += 1;
            }
            *manifest.per_tenant.entry(tenant).or_default() += 1;
            manifest.valid.insert(id);
        }
    }
    Ok(())
}

/// One tenant's hour of event time: what the generator sent, what the
/// newest revision of its `tenant` cell counts, and its late cell.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HourLine {
    /// Valid events the generator sent with an event time in the hour.
    pub sent: usize,
    /// The newest revision of the tenant's hour cell (`None`: not yet
    /// published, its window still open).
    pub cell: Option<Aggregate>,
    /// Events too late for the hour, from its late cell.
    pub late: i64,
}

/// The hour cells the aggregator published, against `manifests`, per
/// tenant and hour. `aggregates` are the decoded `analytics.aggregates`
/// records in log order.
pub fn hour_lines(
    manifests: &[Manifest],
    aggregates: impl IntoIterator<Item = Aggregate>,
) -> BTreeMap<String, BTreeMap<i64, HourLine>> {
    let mut lines: BTreeMap<String, BTreeMap<i64, HourLine>> = BTreeMap::new();
    for manifest in manifests {
        for (tenant, hours) in &manifest.per_hour {
            for (hour, sent) in hours {
                let line = lines
                    .entry(tenant.clone())
                    .or_default()
                    .entry(*hour)
                    .or_default();
                line.sent += sent;
            }
        }
    }
    for cell in aggregates {
        let Some(hours) = lines.get_mut(&cell.tenant_id) else {
            continue;
        };
        if cell.window != "hour" || cell.dimension_value != cell.tenant_id {
            continue;
        }
        let line = hours.entry(cell.window_start).or_default();
        match cell.dimension.as_str() {
            "late" => line.late = line.late.max(cell.events),
            "tenant"
                if line
                    .cell
                    .as_ref()
                    .is_none_or(|c| c.revision <= cell.revision) =>
            {
                line.cell = Some(cell);
            }
            _ => {}
        }
    }
    lines
}

/// [`hour_lines`] for people: per tenant a summary, and every hour of
/// `detail` (a tenant).
pub fn render_hours(
    lines: &BTreeMap<String, BTreeMap<i64, HourLine>>,
    detail: Option<&str>,
) -> String {
    let mut text = String::new();
    for (tenant, hours) in lines {
        let (mut sent, mut counted, mut late, mut open, mut suppressed) = (0, 0, 0, 0, 0);
        let (mut revised, mut top, mut differ) = (0, 0, Vec::new());
        for (hour, line) in hours {
            late += line.late;
            match &line.cell {
                None => open += 1,
                Some(c) if c.suppressed => suppressed += 1,
                Some(c) => {
                    sent += line.sent as i64;
                    counted += c.events;
                    if c.revision > 0 {
                        revised += 1;
                        top = top.max(c.revision);
                    }
                    if c.events + line.late != line.sent as i64 {
                        differ.push(*hour);
                    }
                }
            }
        }
        text.push_str(&format!(
            "  {tenant:<18} {} hours: their cells count {counted} of the {sent} events sent for them, \
             {late} too late; {revised} cells revised by late events (up to revision {top}); \
             {open} still open, {suppressed} suppressed (< k learners){}\n",
            hours.len(),
            if differ.is_empty() {
                String::new()
            } else {
                format!("; {} hours DIFFER", differ.len())
            }
        ));
        if detail == Some(tenant.as_str()) || !differ.is_empty() {
            for (hour, line) in hours {
                let shown = match &line.cell {
                    None => "not published yet (window open)".to_string(),
                    Some(c) if c.suppressed => "suppressed".to_string(),
                    Some(c) => format!(
                        "counts {:>5} (revision {:>3}){}{}",
                        c.events,
                        c.revision,
                        if line.late > 0 {
                            format!(", {} too late", line.late)
                        } else {
                            String::new()
                        },
                        if c.events + line.late == line.sent as i64 {
                            ""
                        } else {
                            "  DIFFERS"
                        }
                    ),
                };
                if detail == Some(tenant.as_str()) || shown.ends_with("DIFFERS") {
                    text.push_str(&format!(
                        "    {}  sent {:>5}  {shown}\n",
                        rfc3339(*hour),
                        line.sent
                    ));
                }
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_collector::validate::{Envelope, IngestFormat, Limits, validate};

    #[test]
    fn hour_lines_take_each_cells_newest_revision_and_its_late_cell() {
        const H: i64 = 3_600_000;
        let mut manifest = Manifest::default();
        manifest.per_hour.insert(
            "acme".into(),
            BTreeMap::from([(0, 10), (H, 7), (2 * H, 3), (3 * H, 1)]),
        );
        let mut backfill = Manifest::default();
        backfill
            .per_hour
            .insert("acme".into(), BTreeMap::from([(0, 2)]));
        let cell = |start, dimension: &str, events, revision, suppressed| Aggregate {
            tenant_id: "acme".into(),
            window_start: start,
            window: "hour".into(),
            dimension: dimension.into(),
            dimension_value: "acme".into(),
            events,
            distinct_learners: if suppressed { 0 } else { 5 },
            completions: 0,
            passes: 0,
            fails: 0,
            avg_score_scaled: None,
            suppressed,
            revision,
        };
        let lines = hour_lines(
            &[manifest, backfill],
            [
                cell(0, "tenant", 10, 0, false),
                cell(0, "tenant", 12, 2, false),
                cell(H, "tenant", 6, 0, false),
                cell(H, "late", 1, 1, false),
                cell(2 * H, "tenant", 0, 0, true),
                cell(0, "verb", 99, 0, false),
            ],
        );
        let acme = &lines["acme"];
        assert_eq!(acme[&0].sent, 12, "live and backfill");
        assert_eq!(
            acme[&0].cell.as_ref().unwrap().events,
            12,
            "newest revision"
        );
        assert_eq!(
            (acme[&H].cell.as_ref().unwrap().events, acme[&H].late),
            (6, 1)
        );
        assert!(acme[&(3 * H)].cell.is_none());
        let text = render_hours(&lines, Some("acme"));
        assert!(text.contains("count 18 of the 19 events sent"), "{text}");
        assert!(text.contains("1 too late"), "{text}");
        assert!(text.contains("1 still open, 1 suppressed"), "{text}");
        assert!(!text.contains("DIFFER"), "{text}");
    }

    /// The generator's own labels agree with the collector's verdicts: a
    /// record it calls valid validates, a malformed one fails with the reason
    /// it expects. This keeps the broker tests' expectations honest.
    #[test]
    fn generator_labels_match_collector_verdicts() {
        let mut generator = Generator::new(DemoSpec {
            malformed: 0.3,
            duplicates: 0.05,
            ..DemoSpec::default()
        });
        let limits = Limits {
            max_event_bytes: 65_536,
            max_clock_skew_ms: 300_000,
            max_event_age_ms: 365 * 86_400_000,
        };
        let now = now_ms();
        let (mut valid, mut malformed, mut dups) = (0, 0, 0);
        for _ in 0..5_000 {
            let record = generator.next_record(now);
            let format = if record.topic == INGEST_XAPI_TOPIC {
                IngestFormat::Xapi
            } else {
                IngestFormat::Events
            };
            let verdict = validate(
                format,
                Some(&record.value),
                Envelope {
                    tenant_header: record.tenant_header.as_deref(),
                    request_id: None,
                    received_at: record.timestamp,
                },
                &limits,
            );
            match (record.expected_reason, verdict) {
                (Some(reason), Err(rejection)) => {
                    assert_eq!(rejection.reason.code(), reason);
                    malformed += 1;
                }
                (None, Ok(event)) => {
                    if record.duplicate {
                        dups += 1;
                    } else {
                        assert_eq!(
                            record.valid_id.as_deref(),
                            Some(format!("{}/{}", event.tenant_id, event.event_id).as_str())
                        );
                        valid += 1;
                    }
                }
                (expected, verdict) => panic!(
                    "expected {expected:?}, collector said {verdict:?} for {}",
                    String::from_utf8_lossy(&record.value)
                ),
            }
        }
        assert!(
            valid > 3000 && malformed > 1000 && dups > 100,
            "{valid} {malformed} {dups}"
        );
    }
}
