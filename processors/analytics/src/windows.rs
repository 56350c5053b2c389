//! Tumbling event-time windows, lateness, revisions and small-cell
//! suppression: the pure part of the aggregator, with event time as the
//! only clock.
//!
//! # Classes: when an event counts
//! Each input partition has a watermark: the latest event time it has
//! carried. An event is judged against its *own partition's* watermark
//! before it (never a global one), so the decision does not depend on how
//! partitions interleave and a replay decides exactly as the live run did.
//! For a window ending at `end`, an event's **class** is
//! - `0` while the watermark is before `end + allowed_lateness`: it counts
//!   in the cell's first publication;
//! - `c ≥ 1` while the watermark is in
//!   `[end + lateness + (c-1) h, end + lateness + c h)` (h = one hour) and
//!   before `end + horizon`: it counts in revision `c`;
//! - **too late** from `end + horizon` on: it changes no cell and is
//!   published in the tenant's `late` cell instead.
//!
//! # Publishing
//! Revision `c` of a cell is published once *every* partition's watermark
//! has passed its point `end + lateness + c h`: from then on no partition
//! can carry an event of class `c` or lower, so revision `c` holds exactly
//! the events of classes `0..=c` — a function of the log, whatever the
//! interleaving, batch boundaries or restarts. Only classes that received
//! events are published, and a suppressed cell that stays suppressed is not
//! re-published (its published form would change in the revision alone),
//! so revision numbers can skip; they only grow. A
//! cell's state (counts, and the distinct-learner memberships) is kept
//! until the last point at or after `end + horizon`, then dropped.

use serde::{Deserialize, Serialize};
use trellis_records::{Aggregate, ProtectedFacts};

/// A window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

/// The spacing of revision points: every window end is a multiple of it, so
/// every point is an hour boundary plus the lateness.
pub const REVISION_STEP_MS: i64 = 3_600_000;

impl Window {
    /// Both lengths, the order cells are updated in.
    pub const ALL: [Window; 2] = [Window::Hour, Window::Day];

    /// Length in ms.
    pub const fn len_ms(self) -> i64 {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }

    /// As written in aggregates.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    /// Start of the window holding `at`.
    pub fn start(self, at: i64) -> i64 {
        at.div_euclid(self.len_ms()) * self.len_ms()
    }
}

/// How long after its end a window takes events, and may still be revised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Events up to this long after the end count in the first publication.
    pub lateness: i64,
    /// Events up to this long after the end revise the cell; later ones are
    /// too late. At least `lateness`.
    pub horizon: i64,
}

/// How an event relates to its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Counts in revision `class` (0: the first publication).
    Class(u32),
    /// Beyond the horizon: changes no cell.
    TooLate,
}

impl Rules {
    /// Classifies an event of a window ending at `end` against the
    /// watermark of its partition before the event.
    pub fn timing(&self, end: i64, watermark: Option<i64>) -> Timing {
        let Some(wm) = watermark else {
            return Timing::Class(0);
        };
        let first = end.saturating_add(self.lateness);
        if wm < first {
            Timing::Class(0)
        } else if wm >= end.saturating_add(self.horizon) {
            Timing::TooLate
        } else {
            let class = 1 + (wm - first) / REVISION_STEP_MS;
            Timing::Class(u32::try_from(class).unwrap_or(u32::MAX))
        }
    }

    /// When revision `class` of a window ending at `end` is final.
    pub fn point(&self, end: i64, class: u32) -> i64 {
        end.saturating_add(self.lateness)
            .saturating_add(i64::from(class).saturating_mul(REVISION_STEP_MS))
    }

    /// When a window ending at `end` can change no more: the first point at
    /// or after `end + horizon` (every revision is published by then).
    pub fn expiry(&self, end: i64) -> i64 {
        let span = (self.horizon - self.lateness).max(0);
        let classes = (span + REVISION_STEP_MS - 1) / REVISION_STEP_MS;
        self.point(end, u32::try_from(classes).unwrap_or(u32::MAX))
    }
}

/// True when a watermark move from `old` to `new` crosses a time at which
/// some revision can become final (an hour boundary plus the lateness):
/// the only moments publishing needs checking.
pub fn crosses_close_point(old: Option<i64>, new: i64, allowed_lateness: i64) -> bool {
    let slot = |wm: i64| (wm - allowed_lateness).div_euclid(REVISION_STEP_MS);
    old.is_none_or(|old| slot(new) > slot(old))
}

/// Scores are summed in fixed point: float addition is not associative, and
/// the sum must not depend on the order partitions interleave in.
pub const SCORE_SCALE: f64 = 1_000_000.0;

/// What a cell counts, or what one revision adds to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events.
    pub events: i64,
    /// Completions.
    pub completions: i64,
    /// Passes.
    pub passes: i64,
    /// Fails.
    pub fails: i64,
    /// Sum of scaled scores × [`SCORE_SCALE`].
    pub score_micros: i64,
    /// Scored events.
    pub scored: i64,
}

impl Counts {
    /// Counts `event`, whose verb's short name is `verb`.
    pub fn add(&mut self, event: &ProtectedFacts<'_>, verb: Option<&str>) {
        self.events += 1;
        let result = event.result.as_ref();
        match verb {
            Some("completed") if result.and_then(|r| r.completion) != Some(false) => {
                self.completions += 1
            }
            Some("passed") if result.and_then(|r| r.success) != Some(false) => self.passes += 1,
            Some("passed" | "failed") => self.fails += 1,
            _ => {}
        }
        if let Some(score) = result.and_then(|r| r.score_scaled)
            && score.is_finite()
        {
            self.score_micros += (score * SCORE_SCALE).round() as i64;
            self.scored += 1;
        }
    }

    /// Adds what `other` counted.
    pub fn merge(&mut self, other: &Counts) {
        self.events += other.events;
        self.completions += other.completions;
        self.passes += other.passes;
        self.fails += other.fails;
        self.score_micros += other.score_micros;
        self.scored += other.scored;
    }
}

/// One cell: a tenant × window × dimension value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Tenant.
    pub tenant: String,
    /// Window length.
    pub window: Window,
    /// Window start, ms.
    pub start: i64,
    /// `tenant`, `verb`, `course` or `activity`.
    pub dimension: String,
    /// The dimension's value.
    pub value: String,
    /// Events of the classes up to `revision`.
    pub counts: Counts,
    /// Distinct learners of those events.
    pub distinct: i64,
    /// The highest class counted in.
    pub revision: i32,
}

impl Cell {
    /// An empty cell.
    pub fn new(tenant: &str, window: Window, start: i64, dimension: &str, value: &str) -> Self {
        Self {
            tenant: tenant.to_string(),
            window,
            start,
            dimension: dimension.to_string(),
            value: value.to_string(),
            counts: Counts::default(),
            distinct: 0,
            revision: 0,
        }
    }

    /// Window end, ms.
    pub fn end(&self) -> i64 {
        self.start + self.window.len_ms()
    }

    /// The published form. With fewer than `k` distinct learners every
    /// count is withheld, so a cell cannot single a learner out; this holds
    /// for every revision.
    pub fn aggregate(&self, k: u32) -> Aggregate {
        let suppressed = self.distinct < i64::from(k);
        let shown = |n: i64| if suppressed { 0 } else { n };
        let c = &self.counts;
        Aggregate {
            tenant_id: self.tenant.clone(),
            window_start: self.start,
            window: self.window.as_str().to_string(),
            dimension: self.dimension.clone(),
            dimension_value: self.value.clone(),
            events: shown(c.events),
            distinct_learners: shown(self.distinct),
            completions: shown(c.completions),
            passes: shown(c.passes),
            fails: shown(c.fails),
            avg_score_scaled: (!suppressed && c.scored > 0)
                .then(|| c.score_micros as f64 / SCORE_SCALE / c.scored as f64),
            suppressed,
            revision: self.revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATENESS: i64 = 600_000;
    const H: i64 = 3_600_000;

    #[test]
    fn windows_are_tumbling_and_utc_aligned() {
        assert_eq!(Window::Hour.start(H + 1), H);
        assert_eq!(Window::Hour.start(2 * H - 1), H);
        assert_eq!(Window::Day.start(86_400_000 * 3 + 5), 86_400_000 * 3);
        assert_eq!(Window::Hour.start(-1), -H, "before the epoch too");
    }

    #[test]
    fn classes_by_the_partition_watermark_up_to_the_horizon() {
        let rules = Rules {
            lateness: LATENESS,
            horizon: 7 * 24 * H,
        };
        let end = 2 * H;
        let class = |wm| rules.timing(end, wm);
        assert_eq!(class(None), Timing::Class(0), "first event of a partition");
        assert_eq!(class(Some(end - 1)), Timing::Class(0));
        assert_eq!(
            class(Some(end + LATENESS - 1)),
            Timing::Class(0),
            "within the lateness"
        );
        assert_eq!(class(Some(end + LATENESS)), Timing::Class(1));
        assert_eq!(class(Some(end + LATENESS + H - 1)), Timing::Class(1));
        assert_eq!(class(Some(end + LATENESS + H)), Timing::Class(2));
        assert_eq!(class(Some(end + 7 * 24 * H - 1)), Timing::Class(168));
        assert_eq!(class(Some(end + 7 * 24 * H)), Timing::TooLate);
        // An event of class c always precedes the point that finalises c.
        for wm in [end, end + LATENESS, end + 5 * H + 7, end + 7 * 24 * H - 1] {
            if let Timing::Class(c) = class(Some(wm)) {
                assert!(wm < rules.point(end, c), "{wm} class {c}");
            }
        }
        assert!(rules.expiry(end) >= end + 7 * 24 * H);
        assert_eq!(rules.expiry(end), rules.point(end, 168));

        let no_revisions = Rules {
            lateness: LATENESS,
            horizon: LATENESS,
        };
        assert_eq!(
            no_revisions.timing(end, Some(end + LATENESS)),
            Timing::TooLate
        );
        assert_eq!(no_revisions.expiry(end), end + LATENESS);
    }

    #[test]
    fn close_points_are_hour_boundaries_plus_lateness() {
        assert!(crosses_close_point(None, 5, LATENESS));
        assert!(!crosses_close_point(Some(H), H + LATENESS - 1, LATENESS));
        assert!(crosses_close_point(Some(H), H + LATENESS, LATENESS));
        assert!(!crosses_close_point(Some(H + LATENESS), 2 * H, LATENESS));
    }

    #[test]
    fn small_cells_are_suppressed_at_k_minus_one_and_shown_at_k() {
        // Every count non-zero, so a suppressed cell that lets any one of
        // them through differs from the expected aggregate.
        let mut cell = Cell::new("acme", Window::Hour, H, "course", "c1");
        cell.counts.events = 9;
        cell.counts.completions = 2;
        cell.counts.passes = 3;
        cell.counts.fails = 1;
        cell.counts.score_micros = 2_400_000;
        cell.counts.scored = 3;
        cell.distinct = 4;
        cell.revision = 2;
        let published = |events, distinct, completions, passes, fails, avg, suppressed| Aggregate {
            tenant_id: "acme".into(),
            window_start: H,
            window: "hour".into(),
            dimension: "course".into(),
            dimension_value: "c1".into(),
            events,
            distinct_learners: distinct,
            completions,
            passes,
            fails,
            avg_score_scaled: avg,
            suppressed,
            revision: 2,
        };
        assert_eq!(
            cell.aggregate(5),
            published(0, 0, 0, 0, 0, None, true),
            "below k nothing but the cell's coordinates is published"
        );
        cell.distinct = 5;
        let shown = cell.aggregate(5);
        assert_eq!(
            shown,
            published(9, 5, 2, 3, 1, shown.avg_score_scaled, false)
        );
        assert!((shown.avg_score_scaled.unwrap() - 0.8).abs() < 1e-9);
    }
}
