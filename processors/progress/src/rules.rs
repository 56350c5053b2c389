//! Completion and pass rules: a learner's progress in an activity as a pure
//! function of the statements that are evidence for it.
//!
//! The projector keeps every non-voided statement of a learner × activity
//! (as a compact [`Fact`]) sorted by time and statement id, and derives the
//! row from them with [`derive`]. Because the result depends on the *set* of
//! statements, not on their arrival order, out-of-order delivery and voids
//! (which remove a statement from the set) give the same row as an in-order
//! stream, and a rebuild by replay gives the same state (promise 4).
//!
//! What counts as evidence is decided here, server-side:
//! - **pass**: a `passed` statement whose `result.success` is not `false`
//!   and, when the activity declares a mastery threshold, whose
//!   `result.score.scaled` reaches it. A `passed` claim below mastery or
//!   with `success: false` is a fail. `failed` is a fail.
//! - **completion**: on an activity with a mastery threshold, only a pass
//!   completes it (a bare `completed` claim is not evidence); elsewhere a
//!   `completed` statement whose `result.completion` is not `false`, any
//!   statement with `result.completion: true`, or a pass.
//! - **course** (declared with required activities): completed when every
//!   required activity is completed; statements about the course itself
//!   never complete it — that would be a claim without evidence.

use serde::{Deserialize, Serialize};
use trellis_records::Evidence;

const ADL: &str = "http://adlnet.gov/expapi/verbs/";

/// The xAPI verb that voids an earlier statement.
pub const VOIDED_VERB: &str = "http://adlnet.gov/expapi/verbs/voided";

/// What a statement's verb means for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerbClass {
    /// Starts an attempt (`attempted`, Moodle `attempt_started`).
    Attempted,
    /// Claims a pass.
    Passed,
    /// Reports a fail.
    Failed,
    /// Claims completion.
    Completed,
    /// Anything else: counts as activity only.
    Other,
}

impl VerbClass {
    /// Classifies an xAPI verb IRI or Moodle event name.
    pub fn of(verb: Option<&str>) -> Self {
        let Some(verb) = verb else { return Self::Other };
        if verb == "\\mod_quiz\\event\\attempt_started" {
            return Self::Attempted;
        }
        match verb.strip_prefix(ADL) {
            Some("attempted") => Self::Attempted,
            Some("passed") => Self::Passed,
            Some("failed") => Self::Failed,
            Some("completed") => Self::Completed,
            _ => Self::Other,
        }
    }
}

/// One statement, reduced to what progress needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// Statement (event) id.
    pub event_id: String,
    /// When it happened, ms since the epoch.
    pub at: i64,
    /// Its verb's meaning.
    pub verb: VerbClass,
    /// `result.success`.
    pub success: Option<bool>,
    /// `result.completion`.
    pub completion: Option<bool>,
    /// `result.score.scaled`.
    pub score: Option<f64>,
}

impl Fact {
    fn order(&self) -> (i64, &str) {
        (self.at, &self.event_id)
    }
}

/// Inserts `fact` in (time, id) order; false if a fact of the same time and
/// id is already there. A statement id is counted once by the processor's
/// statement index (`keys::EVENT`), which sees the id before any fact is
/// made: the same id at another time never reaches this function.
pub fn insert_fact(facts: &mut Vec<Fact>, fact: Fact) -> bool {
    match facts.binary_search_by(|f| f.order().cmp(&fact.order())) {
        Ok(_) => false,
        Err(at) => {
            facts.insert(at, fact);
            true
        }
    }
}

/// The rule of one activity.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rule {
    /// Scaled score a pass must reach; completion then requires a pass.
    pub mastery: Option<f64>,
}

/// The statements that prove a pass or completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    /// Evidence statement ids.
    pub event_ids: Vec<String>,
    /// When the last evidence happened.
    pub at: i64,
    /// The evidence's scaled score, if any.
    pub score: Option<f64>,
}

impl Proof {
    fn of(fact: &Fact) -> Self {
        Self {
            event_ids: vec![fact.event_id.clone()],
            at: fact.at,
            score: fact.score,
        }
    }
}

/// `not_attempted`, `incomplete` or `completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Activity seen but not completed.
    Incomplete,
    /// Completed with evidence.
    Completed,
}

impl Status {
    /// As written in the `progress` topic.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::Completed => "completed",
        }
    }
}

/// A derived progress row.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Attempts started.
    pub attempts: i32,
    /// Best scaled score.
    pub best_score: Option<f64>,
    /// Latest scaled score.
    pub last_score: Option<f64>,
    /// Latest outcome.
    pub success: Option<bool>,
    /// Completion status.
    pub status: Status,
    /// Earliest statement.
    pub first_at: i64,
    /// Latest statement.
    pub last_at: i64,
    /// Every status change, oldest first.
    pub evidence: Vec<Evidence>,
    /// The first pass.
    pub passed: Option<Proof>,
    /// The completion.
    pub completed: Option<Proof>,
}

fn evidence(status: &str, fact: &Fact) -> Evidence {
    Evidence {
        status: status.to_string(),
        event_id: fact.event_id.clone(),
        at: fact.at,
    }
}

/// Pass (`Some(true)`), fail (`Some(false)`) or no outcome.
fn outcome(fact: &Fact, rule: Rule) -> Option<bool> {
    let meets_mastery = || {
        rule.mastery
            .is_none_or(|m| fact.score.is_some_and(|s| s >= m))
    };
    match fact.verb {
        VerbClass::Passed => Some(fact.success != Some(false) && meets_mastery()),
        VerbClass::Failed => Some(false),
        VerbClass::Completed => fact.success.map(|s| s && meets_mastery()),
        VerbClass::Attempted | VerbClass::Other => None,
    }
}

fn completes(fact: &Fact, rule: Rule, pass: bool) -> bool {
    if rule.mastery.is_some() {
        return pass;
    }
    pass || fact.completion == Some(true)
        || (fact.verb == VerbClass::Completed && fact.completion != Some(false))
}

/// Derives a row from `facts` (sorted by [`insert_fact`]); `None` when empty.
pub fn derive(facts: &[Fact], rule: Rule) -> Option<Derived> {
    let (first, last) = (facts.first()?, facts.last()?);
    let mut row = Derived {
        attempts: 0,
        best_score: None,
        last_score: None,
        success: None,
        status: Status::Incomplete,
        first_at: first.at,
        last_at: last.at,
        evidence: Vec::new(),
        passed: None,
        completed: None,
    };
    for fact in facts {
        if fact.verb == VerbClass::Attempted {
            if row.attempts == 0 {
                row.evidence.push(evidence("attempted", fact));
            }
            row.attempts += 1;
        }
        if let Some(score) = fact.score {
            row.best_score = Some(row.best_score.map_or(score, |b: f64| b.max(score)));
            row.last_score = Some(score);
        }
        let outcome = outcome(fact, rule);
        if let Some(pass) = outcome {
            if row.success != Some(pass) {
                row.evidence
                    .push(evidence(if pass { "passed" } else { "failed" }, fact));
            }
            row.success = Some(pass);
            if pass && row.passed.is_none() {
                row.passed = Some(Proof::of(fact));
            }
        }
        if row.completed.is_none() && completes(fact, rule, outcome == Some(true)) {
            row.completed = Some(Proof::of(fact));
            row.status = Status::Completed;
            row.evidence.push(evidence("completed", fact));
        }
    }
    Some(row)
}

/// Derives a declared course's row from the statements about the course
/// itself (activity only: they cannot complete it) and the rows of its
/// required activities, in declared order.
pub fn derive_course(own: &[Fact], required: &[Option<Derived>]) -> Option<Derived> {
    let own_row = derive(own, Rule { mastery: None });
    let seen: Vec<&Derived> = required.iter().flatten().collect();
    if own_row.is_none() && seen.is_empty() {
        return None;
    }
    let times = own_row
        .iter()
        .chain(seen.iter().copied())
        .flat_map(|r| [r.first_at, r.last_at]);
    let (first_at, last_at) =
        times.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let mut row = Derived {
        attempts: own_row.as_ref().map_or(0, |r| r.attempts),
        best_score: None,
        last_score: None,
        success: None,
        status: Status::Incomplete,
        first_at,
        last_at,
        evidence: own_row
            .map(|r| {
                r.evidence
                    .into_iter()
                    .filter(|e| e.status == "attempted")
                    .collect()
            })
            .unwrap_or_default(),
        passed: None,
        completed: None,
    };
    let proofs: Option<Vec<&Proof>> = required
        .iter()
        .map(|r| r.as_ref().and_then(|r| r.completed.as_ref()))
        .collect();
    if let Some(proofs) = proofs
        && !proofs.is_empty()
    {
        let proof = Proof {
            event_ids: proofs.iter().flat_map(|p| p.event_ids.clone()).collect(),
            at: proofs.iter().map(|p| p.at).max().unwrap_or(last_at),
            score: None,
        };
        row.evidence.push(Evidence {
            status: "completed".into(),
            event_id: proof.event_ids.last().cloned().unwrap_or_default(),
            at: proof.at,
        });
        row.status = Status::Completed;
        row.completed = Some(proof);
    }
    Some(row)
}

#[cfg(test)]
mod tests;
