use super::*;

fn fact(id: &str, at: i64, verb: VerbClass) -> Fact {
    Fact {
        event_id: id.into(),
        at,
        verb,
        success: None,
        completion: None,
        score: None,
    }
}

fn with(mut f: Fact, success: Option<bool>, completion: Option<bool>, score: Option<f64>) -> Fact {
    f.success = success;
    f.completion = completion;
    f.score = score;
    f
}

fn sorted(facts: &[Fact]) -> Vec<Fact> {
    let mut out = Vec::new();
    for f in facts {
        insert_fact(&mut out, f.clone());
    }
    out
}

use VerbClass::{Attempted, Completed, Failed, Other, Passed};

const MASTERY: Rule = Rule { mastery: Some(0.6) };
const PLAIN: Rule = Rule { mastery: None };

/// (case, rule, statements, expected completion evidence, expected pass evidence)
#[allow(clippy::type_complexity)]
fn cases() -> Vec<(
    &'static str,
    Rule,
    Vec<Fact>,
    Option<&'static str>,
    Option<&'static str>,
)> {
    vec![
        (
            "completed statement completes a plain activity",
            PLAIN,
            vec![
                fact("a", 1, Other),
                with(fact("b", 2, Completed), None, Some(true), None),
            ],
            Some("b"),
            None,
        ),
        (
            "completed without result completes a plain activity",
            PLAIN,
            vec![fact("b", 2, Completed)],
            Some("b"),
            None,
        ),
        (
            "completed claim with completion:false is not evidence",
            PLAIN,
            vec![with(fact("b", 2, Completed), None, Some(false), None)],
            None,
            None,
        ),
        (
            "result.completion on another verb completes",
            PLAIN,
            vec![with(fact("x", 3, Other), None, Some(true), None)],
            Some("x"),
            None,
        ),
        (
            "pass at mastery passes and completes",
            MASTERY,
            vec![
                fact("a", 1, Attempted),
                with(fact("p", 2, Passed), Some(true), None, Some(0.6)),
            ],
            Some("p"),
            Some("p"),
        ),
        (
            "passed claim below mastery is a fail",
            MASTERY,
            vec![with(fact("p", 2, Passed), Some(true), None, Some(0.59))],
            None,
            None,
        ),
        (
            "passed claim without a score does not meet mastery",
            MASTERY,
            vec![fact("p", 2, Passed)],
            None,
            None,
        ),
        (
            "passed with success:false is a fail",
            PLAIN,
            vec![with(fact("p", 2, Passed), Some(false), None, Some(0.9))],
            None,
            None,
        ),
        (
            "bare completed claim on a mastery activity is not evidence",
            MASTERY,
            vec![with(fact("c", 5, Completed), None, Some(true), None)],
            None,
            None,
        ),
        (
            "fail then pass: completion and pass from the pass",
            MASTERY,
            vec![
                with(fact("f", 2, Failed), Some(false), None, Some(0.3)),
                with(fact("p", 4, Passed), Some(true), None, Some(0.8)),
                with(fact("c", 5, Completed), None, Some(true), None),
            ],
            Some("p"),
            Some("p"),
        ),
        (
            "a later fail does not undo a completion",
            MASTERY,
            vec![
                with(fact("p", 4, Passed), Some(true), None, Some(0.8)),
                with(fact("f", 6, Failed), Some(false), None, Some(0.3)),
            ],
            Some("p"),
            Some("p"),
        ),
        (
            "first of two passes is the evidence",
            PLAIN,
            vec![
                with(fact("p2", 9, Passed), Some(true), None, Some(0.9)),
                with(fact("p1", 4, Passed), Some(true), None, Some(0.7)),
            ],
            Some("p1"),
            Some("p1"),
        ),
        (
            "attempts alone are progress, not completion",
            PLAIN,
            vec![fact("a1", 1, Attempted), fact("a2", 2, Attempted)],
            None,
            None,
        ),
    ]
}

#[test]
fn completion_rules() {
    for (case, rule, facts, completed, passed) in cases() {
        let row = derive(&sorted(&facts), rule).expect(case);
        let ids = |p: &Option<Proof>| p.as_ref().map(|p| p.event_ids[0].clone());
        assert_eq!(
            ids(&row.completed).as_deref(),
            completed,
            "{case}: completion"
        );
        assert_eq!(ids(&row.passed).as_deref(), passed, "{case}: pass");
        assert_eq!(
            row.status,
            if completed.is_some() {
                Status::Completed
            } else {
                Status::Incomplete
            },
            "{case}"
        );
    }
}

#[test]
fn every_arrival_order_gives_the_same_row() {
    for (case, rule, facts, _, _) in cases() {
        let expected = derive(&sorted(&facts), rule);
        let mut reversed = facts.clone();
        reversed.reverse();
        assert_eq!(derive(&sorted(&reversed), rule), expected, "{case}");
        for rotate in 0..facts.len() {
            let mut rotated = facts.clone();
            rotated.rotate_left(rotate);
            assert_eq!(derive(&sorted(&rotated), rule), expected, "{case}");
        }
    }
}

#[test]
fn voiding_the_evidence_undoes_its_effect() {
    let mut facts = sorted(&[
        fact("a", 1, Attempted),
        with(fact("p", 2, Passed), Some(true), None, Some(0.9)),
    ]);
    assert!(derive(&facts, MASTERY).unwrap().completed.is_some());
    facts.retain(|f| f.event_id != "p");
    let row = derive(&facts, MASTERY).unwrap();
    assert_eq!(row.completed, None);
    assert_eq!(row.passed, None);
    assert_eq!(row.best_score, None);
    assert_eq!(row.attempts, 1);
    facts.retain(|f| f.event_id != "a");
    assert_eq!(derive(&facts, MASTERY), None, "nothing left: no row");
}

#[test]
fn an_identical_fact_is_inserted_once() {
    let mut facts = Vec::new();
    assert!(insert_fact(&mut facts, fact("a", 1, Attempted)));
    assert!(!insert_fact(&mut facts, fact("a", 1, Attempted)));
    assert_eq!(derive(&facts, PLAIN).unwrap().attempts, 1);
}

#[test]
fn scores_attempts_times_and_status_evidence() {
    let row = derive(
        &sorted(&[
            fact("a1", 10, Attempted),
            with(fact("f", 20, Failed), Some(false), None, Some(0.4)),
            fact("a2", 30, Attempted),
            with(fact("p", 40, Passed), Some(true), None, Some(0.7)),
            with(fact("x", 50, Other), None, None, Some(0.5)),
        ]),
        MASTERY,
    )
    .unwrap();
    assert_eq!(row.attempts, 2);
    assert_eq!(row.best_score, Some(0.7));
    assert_eq!(row.last_score, Some(0.5));
    assert_eq!(row.success, Some(true));
    assert_eq!((row.first_at, row.last_at), (10, 50));
    let statuses: Vec<(&str, &str)> = row
        .evidence
        .iter()
        .map(|e| (e.status.as_str(), e.event_id.as_str()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("attempted", "a1"),
            ("failed", "f"),
            ("passed", "p"),
            ("completed", "p")
        ]
    );
}

#[test]
fn a_course_completes_only_through_its_required_activities() {
    let claim = [with(fact("claim", 5, Completed), None, Some(true), None)];
    let done = |id: &str, at| derive(&[fact(id, at, Completed)], PLAIN);
    let course = derive_course(&claim, &[done("q", 3), None]).unwrap();
    assert_eq!(course.status, Status::Incomplete, "claim without evidence");
    assert_eq!(course.completed, None);

    let course = derive_course(&claim, &[done("q", 3), done("v", 8)]).unwrap();
    assert_eq!(course.status, Status::Completed);
    let proof = course.completed.unwrap();
    assert_eq!(proof.event_ids, ["q", "v"]);
    assert_eq!(proof.at, 8);
    assert_eq!((course.first_at, course.last_at), (3, 8));

    let started = derive(&[fact("s", 1, Other)], PLAIN);
    let course = derive_course(&[], &[started, None]).unwrap();
    assert_eq!(course.status, Status::Incomplete);
    assert_eq!(derive_course(&[], &[None, None]), None);
}

#[test]
fn verbs_are_classified_by_iri() {
    assert_eq!(
        VerbClass::of(Some("http://adlnet.gov/expapi/verbs/passed")),
        Passed
    );
    assert_eq!(
        VerbClass::of(Some("\\mod_quiz\\event\\attempt_started")),
        Attempted
    );
    assert_eq!(
        VerbClass::of(Some("https://example.org/verbs/passed")),
        Other
    );
    assert_eq!(VerbClass::of(None), Other);
}
