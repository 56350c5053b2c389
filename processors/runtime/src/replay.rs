//! Restore by replay: which records are replayed (applied to state, outputs
//! discarded), when new input may flow, and how progress is reported.
//!
//! A partition starts at the store's position (offset 0 for a fresh store).
//! The group's committed offset marks how far outputs are already durable:
//! records below it are replayed. While any partition still replays, live
//! records of every partition are held back, so a live record sees the state
//! of everything already emitted. [`Cursors`] is that plan as plain data,
//! unit-tested without a broker; the loop only asks it questions.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::state::StateStore;

/// A replay that has not moved for this long, with records still to go, is
/// reported as stalled: the log ends below the committed offset.
pub const STALL_AFTER: Duration = Duration::from_secs(10);

/// One assigned partition's reading position and replay target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Next offset to apply.
    pub next: i64,
    /// Offsets below this are replayed (outputs already durable).
    pub replay_until: i64,
}

impl Cursor {
    /// The plan for one partition, from the store's position and the group's
    /// committed offset (either may be missing).
    pub fn plan(stored: Option<i64>, committed: Option<i64>) -> Self {
        let next = stored.unwrap_or(0);
        Self {
            next,
            replay_until: committed.unwrap_or(0).max(next),
        }
    }

    /// The group offset to commit: how far outputs are durable. Never below
    /// the replay target, so a checkpoint taken mid-replay cannot move the
    /// group's offset back (a crash then would emit again what was emitted).
    pub fn durable(&self) -> i64 {
        self.next.max(self.replay_until)
    }

    /// Records left to replay.
    pub fn to_replay(&self) -> u64 {
        (self.replay_until - self.next).max(0) as u64
    }
}

/// What to do with a record the consumer delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not ours, or already applied (a fetch from before a seek): skip.
    Skip,
    /// Apply to state; outputs are already durable, discard them.
    Replay,
    /// A live record while another partition still replays: hold it back.
    Hold,
    /// Apply and emit.
    Live,
}

/// Every assigned partition's [`Cursor`], by input topic.
#[derive(Debug, Clone)]
pub struct Cursors {
    topics: Vec<(Arc<str>, Vec<Option<Cursor>>)>,
    /// Per partition: the position last seen by [`Cursors::stalled`] and
    /// since when it has stood there (checked per batch, not per record).
    last_moved: Vec<Vec<(i64, Instant)>>,
}

impl Cursors {
    /// Cursors for `plans`: per topic, one entry per partition (`None` when
    /// another instance owns it).
    pub fn new(plans: Vec<(Arc<str>, Vec<Option<Cursor>>)>, now: Instant) -> Self {
        let last_moved = plans
            .iter()
            .map(|(_, parts)| {
                parts
                    .iter()
                    .map(|c| (c.map_or(0, |c| c.next), now))
                    .collect()
            })
            .collect();
        Self {
            topics: plans,
            last_moved,
        }
    }

    /// The index of `topic` among the inputs.
    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|(name, _)| &**name == topic)
    }

    /// The name of input `index`.
    pub fn topic_name(&self, index: usize) -> &Arc<str> {
        &self.topics[index].0
    }

    /// The cursor of `partition` of input `index`, if assigned here.
    pub fn get(&self, index: usize, partition: i32) -> Option<Cursor> {
        *self
            .topics
            .get(index)?
            .1
            .get(usize::try_from(partition).ok()?)?
    }

    /// True while some partition still has records to replay.
    pub fn holding(&self) -> bool {
        self.iter().any(|(_, _, c)| c.next < c.replay_until)
    }

    /// What to do with the record at `offset` of `partition` of input `index`.
    pub fn verdict(&self, index: usize, partition: i32, offset: i64) -> Verdict {
        let Some(cursor) = self.get(index, partition) else {
            return Verdict::Skip;
        };
        if offset < cursor.next {
            Verdict::Skip
        } else if offset < cursor.replay_until {
            Verdict::Replay
        } else if self.holding() {
            Verdict::Hold
        } else {
            Verdict::Live
        }
    }

    /// Records that the record at `offset` was applied.
    pub fn advance(&mut self, index: usize, partition: i32, offset: i64) {
        let Ok(p) = usize::try_from(partition) else {
            return;
        };
        if let Some(Some(cursor)) = self.topics.get_mut(index).and_then(|t| t.1.get_mut(p)) {
            cursor.next = offset + 1;
        }
    }

    /// Every assigned partition: (topic, partition, cursor).
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, i32, Cursor)> {
        self.topics.iter().flat_map(|(name, parts)| {
            parts
                .iter()
                .enumerate()
                .filter_map(move |(p, c)| c.map(|c| (name, p as i32, c)))
        })
    }

    /// Records left to replay over every partition.
    pub fn to_replay(&self) -> u64 {
        self.iter().map(|(_, _, c)| c.to_replay()).sum()
    }

    /// Partitions still replaying that have not moved for [`STALL_AFTER`]:
    /// their log ends below the committed offset (a topic re-created, a
    /// broker that lost its log), so the hold cannot lift by itself.
    pub fn stalled(&mut self, now: Instant) -> Vec<(Arc<str>, i32, Cursor)> {
        let mut out = Vec::new();
        for (index, (name, parts)) in self.topics.iter().enumerate() {
            for (p, cursor) in parts.iter().enumerate() {
                let Some(c) = cursor else { continue };
                let seen = &mut self.last_moved[index][p];
                if seen.0 != c.next {
                    *seen = (c.next, now);
                } else if c.next < c.replay_until && now.duration_since(seen.1) >= STALL_AFTER {
                    out.push((name.clone(), p as i32, *c));
                }
            }
        }
        out
    }

    /// Assigned partitions by topic (what [`crate::Processor::assigned`] is told).
    pub fn assignment(&self) -> BTreeMap<String, Vec<i32>> {
        self.topics
            .iter()
            .map(|(name, parts)| {
                let assigned = (0..parts.len() as i32)
                    .filter(|p| parts[*p as usize].is_some())
                    .collect();
                (name.to_string(), assigned)
            })
            .collect()
    }
}

/// Reports restore-by-replay: a progress bar on a terminal, log lines otherwise.
pub struct ReplayProgress {
    processor: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    last_log: Instant,
    bar: Option<indicatif::ProgressBar>,
    /// Set once every partition has replayed.
    pub finished: bool,
}

impl ReplayProgress {
    /// Starts reporting a replay of what `cursors` have left.
    pub fn new(processor: &'static str, cursors: &Cursors, store: &StateStore) -> Self {
        let total = cursors.to_replay();
        let bar = (total > 0 && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{processor}: restoring state by replay"));
            bar
        });
        if total > 0 {
            tracing::info!(processor, records = total, "restoring state by replay");
        } else if let Ok(digest) = store.digest() {
            tracing::info!(processor, %digest, "state store up to date");
        }
        Self {
            processor,
            total,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
            bar,
            finished: total == 0,
        }
    }

    /// Nothing to replay: an instance standing by.
    pub fn idle(processor: &'static str) -> Self {
        Self {
            processor,
            total: 0,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
            bar: None,
            finished: true,
        }
    }

    /// One more record replayed.
    pub fn record(&mut self) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }

    /// Called after each checkpoint: finishes the report once nothing is
    /// left to replay.
    pub fn tick(&mut self, cursors: &Cursors, store: &StateStore) {
        if self.finished {
            return;
        }
        if !cursors.holding() {
            self.finished = true;
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
            let secs = self.started.elapsed().as_secs_f64();
            let digest = store
                .digest()
                .map(|d| d.0)
                .unwrap_or_else(|e| e.to_string());
            tracing::info!(
                processor = self.processor,
                records = self.done,
                seconds = format!("{secs:.2}"),
                rate = format!("{:.0}/s", self.done as f64 / secs.max(1e-9)),
                %digest,
                "state restored by replay"
            );
        } else if self.bar.is_none() && self.last_log.elapsed() >= Duration::from_secs(5) {
            self.last_log = Instant::now();
            tracing::info!(
                processor = self.processor,
                done = self.done,
                total = self.total,
                "restoring state by replay"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursors(parts: Vec<Option<Cursor>>) -> Cursors {
        Cursors::new(vec![(Arc::from("t"), parts)], Instant::now())
    }

    #[test]
    fn fresh_store_replays_up_to_the_committed_offset() {
        assert_eq!(
            Cursor::plan(None, Some(100)),
            Cursor {
                next: 0,
                replay_until: 100
            }
        );
        assert_eq!(Cursor::plan(Some(50), Some(100)).to_replay(), 50);
        // A store ahead of the group (its last offset commit was lost):
        // nothing to replay, never a negative count.
        assert_eq!(Cursor::plan(Some(120), Some(100)).to_replay(), 0);
        assert_eq!(Cursor::plan(None, None).to_replay(), 0);
    }

    #[test]
    fn the_durable_offset_never_falls_below_the_replay_target() {
        let mut c = cursors(vec![Some(Cursor::plan(Some(10), Some(100)))]);
        c.advance(0, 0, 10);
        let cursor = c.get(0, 0).unwrap();
        assert_eq!(cursor.next, 11, "the store's position moves");
        assert_eq!(cursor.durable(), 100, "the group's offset does not");
        for offset in 11..150 {
            c.advance(0, 0, offset);
        }
        assert_eq!(c.get(0, 0).unwrap().durable(), 150, "past it, both move");
    }

    #[test]
    fn live_records_wait_until_every_partition_has_replayed() {
        let mut c = cursors(vec![
            Some(Cursor::plan(None, Some(2))),
            Some(Cursor::plan(Some(5), Some(5))),
            None,
        ]);
        assert_eq!(c.verdict(0, 0, 0), Verdict::Replay);
        assert_eq!(
            c.verdict(0, 1, 5),
            Verdict::Hold,
            "partition 0 still replays"
        );
        assert_eq!(c.verdict(0, 1, 4), Verdict::Skip, "already applied");
        assert_eq!(c.verdict(0, 2, 0), Verdict::Skip, "another instance's");
        assert_eq!(c.verdict(0, 9, 0), Verdict::Skip, "no such partition");
        c.advance(0, 0, 0);
        c.advance(0, 0, 1);
        assert!(!c.holding());
        assert_eq!(c.verdict(0, 0, 2), Verdict::Live);
        assert_eq!(c.verdict(0, 1, 5), Verdict::Live);
        assert_eq!(c.to_replay(), 0);
    }

    #[test]
    fn a_replay_that_cannot_reach_its_target_is_reported_stalled() {
        let start = Instant::now();
        let mut c = Cursors::new(
            vec![(
                Arc::from("t"),
                vec![
                    Some(Cursor::plan(None, Some(10))),
                    Some(Cursor::plan(None, Some(3))),
                ],
            )],
            start,
        );
        c.advance(0, 1, 0);
        assert!(c.stalled(start + Duration::from_secs(1)).is_empty());
        let later = start + STALL_AFTER;
        c.advance(0, 1, 1);
        let stalled = c.stalled(later);
        assert_eq!(stalled.len(), 1, "partition 1 moved, partition 0 did not");
        assert_eq!(stalled[0].1, 0);
        c.advance(0, 1, 2);
        c.advance(0, 0, 9);
        assert!(c.stalled(later + STALL_AFTER).is_empty(), "both done");
    }
}
