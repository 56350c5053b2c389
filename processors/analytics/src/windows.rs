//! Tumbling event-time windows, lateness and small-cell suppression: the
//! pure part of the aggregator, with event time as the only clock.
//!
//! # Lateness
//! Each input partition has a watermark: the latest event time it has
//! carried. An event whose window ended at least `allowed_lateness` before
//! its partition's watermark is *too late*: it is counted in the `late`
//! metric and the store, never silently dropped, and changes no cell. An
//! event whose window has ended but is within the lateness updates the cell
//! and bumps its `revision`. Judging an event against its own partition's
//! watermark (not a global one) makes the decision independent of how
//! partitions interleave, so a replay decides exactly as the live run did.
//!
//! # Closing
//! A window is final once *every* partition's watermark has passed its end
//! plus the lateness: no event can change it any more. Only then is it
//! emitted (once, with its final values) and its distinct-learner set
//! dropped. Because content at close is final, the output does not depend
//! on when, in processing order, the close happened.

use serde::{Deserialize, Serialize};
use trellis_records::Aggregate;

/// A window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

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

/// How an event relates to its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// The window is still running in the event's partition.
    OnTime,
    /// The window has ended but is within the allowed lateness: counts, and
    /// bumps the cell's revision.
    Late,
    /// Beyond the allowed lateness: counted as late, changes nothing.
    TooLate,
}

/// Classifies an event of a window ending at `end` against the watermark of
/// its partition before the event.
pub fn timing(end: i64, allowed_lateness: i64, watermark: Option<i64>) -> Timing {
    match watermark {
        Some(wm) if end.saturating_add(allowed_lateness) <= wm => Timing::TooLate,
        Some(wm) if end <= wm => Timing::Late,
        _ => Timing::OnTime,
    }
}

/// True when a watermark move from `old` to `new` crosses a time at which
/// some window can close (an hour boundary plus the lateness): the only
/// moments closing needs checking.
pub fn crosses_close_point(old: Option<i64>, new: i64, allowed_lateness: i64) -> bool {
    let slot = |wm: i64| (wm - allowed_lateness).div_euclid(Window::Hour.len_ms());
    old.is_none_or(|old| slot(new) > slot(old))
}

/// Scores are summed in fixed point: float addition is not associative, and
/// the sum must not depend on the order partitions interleave in.
pub const SCORE_SCALE: f64 = 1_000_000.0;

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
    /// Events.
    pub events: i64,
    /// Distinct learners.
    pub distinct: i64,
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
    /// Late (within lateness) events applied.
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
            events: 0,
            distinct: 0,
            completions: 0,
            passes: 0,
            fails: 0,
            score_micros: 0,
            scored: 0,
            revision: 0,
        }
    }

    /// When it can close: its end plus the lateness.
    pub fn closes_at(&self, allowed_lateness: i64) -> i64 {
        self.start + self.window.len_ms() + allowed_lateness
    }

    /// The published form. With fewer than `k` distinct learners every
    /// count is withheld, so a cell cannot single a learner out.
    pub fn aggregate(&self, k: u32) -> Aggregate {
        let suppressed = self.distinct < i64::from(k);
        let shown = |n: i64| if suppressed { 0 } else { n };
        Aggregate {
            tenant_id: self.tenant.clone(),
            window_start: self.start,
            window: self.window.as_str().to_string(),
            dimension: self.dimension.clone(),
            dimension_value: self.value.clone(),
            events: shown(self.events),
            distinct_learners: shown(self.distinct),
            completions: shown(self.completions),
            passes: shown(self.passes),
            fails: shown(self.fails),
            avg_score_scaled: (!suppressed && self.scored > 0)
                .then(|| self.score_micros as f64 / SCORE_SCALE / self.scored as f64),
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
    fn late_events_inside_and_outside_the_allowed_lateness() {
        let end = 2 * H;
        assert_eq!(
            timing(end, LATENESS, None),
            Timing::OnTime,
            "first event of a partition"
        );
        assert_eq!(timing(end, LATENESS, Some(end - 1)), Timing::OnTime);
        assert_eq!(timing(end, LATENESS, Some(end)), Timing::Late);
        assert_eq!(
            timing(end, LATENESS, Some(end + LATENESS - 1)),
            Timing::Late
        );
        assert_eq!(timing(end, LATENESS, Some(end + LATENESS)), Timing::TooLate);
        assert_eq!(
            timing(end, 0, Some(end)),
            Timing::TooLate,
            "no lateness allowed"
        );
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
        let mut cell = Cell::new("acme", Window::Hour, H, "course", "c1");
        cell.events = 9;
        cell.passes = 3;
        cell.score_micros = 2_400_000;
        cell.scored = 3;
        cell.distinct = 4;
        let hidden = cell.aggregate(5);
        assert!(hidden.suppressed);
        assert_eq!(
            (
                hidden.events,
                hidden.distinct_learners,
                hidden.passes,
                hidden.avg_score_scaled
            ),
            (0, 0, 0, None)
        );
        cell.distinct = 5;
        let shown = cell.aggregate(5);
        assert!(!shown.suppressed);
        assert_eq!(
            (shown.events, shown.distinct_learners, shown.passes),
            (9, 5, 3)
        );
        assert!((shown.avg_score_scaled.unwrap() - 0.8).abs() < 1e-9);
    }
}
