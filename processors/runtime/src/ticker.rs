//! A processor's clock, kept in the log.
//!
//! Some decisions are timed: the audit processor anchors a partition after
//! T ms even when fewer than N records arrived, the GDPR saga re-sends a
//! command nobody answered. A wall-clock timer inside `process` would make
//! state depend on when the process happened to run, so replay could not
//! reproduce it (DESIGN.md promise 4). Instead a [`Ticker`] writes a small
//! [`Tick`] record to the processor's own ticks topic, which the processor
//! also consumes: the timed decision is taken when the tick is *processed*,
//! with the tick's timestamp as the clock, and replay takes it again at the
//! same place. Ticks are written only while the processor says it has timed
//! work pending, so an idle topology writes none. What a tick record looks
//! like is the processor's business (the audit processor writes heartbeat
//! events to `audit.events`, the saga [`trellis_records::Tick`]s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::producer::{Outgoing, TrellisProducer};

/// Writes ticks for one processor; see the module docs.
pub struct Ticker {
    pub(crate) topic: String,
    pub(crate) producer: TrellisProducer,
    /// Set by the runtime once replay has finished. A replay takes its
    /// timed decisions from the ticks already in the log; a tick written
    /// meanwhile would be a decision the original run never took.
    pub(crate) live: Arc<AtomicBool>,
}

/// One tick as written: id (the `trellis.id` header), key and value.
pub struct TickRecord {
    /// Stable id.
    pub id: String,
    /// Key.
    pub key: Vec<u8>,
    /// Value in the wire format.
    pub value: Vec<u8>,
}

/// Set by a processor while it has timed work pending (now, or from a
/// wall-clock time on); the ticker only writes while it is due.
#[derive(Clone)]
pub struct Pending(Arc<AtomicI64>);

impl Default for Pending {
    fn default() -> Self {
        Self(Arc::new(AtomicI64::new(i64::MAX)))
    }
}

impl Pending {
    /// Timed work is (or is no longer) pending, now.
    pub fn set(&self, pending: bool) {
        self.set_due(pending.then_some(i64::MIN));
    }

    /// Timed work is due from `at` (ms since the epoch) on, or none.
    pub fn set_due(&self, at: Option<i64>) {
        self.0.store(at.unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Whether timed work is due now.
    pub fn get(&self) -> bool {
        let due = self.0.load(Ordering::Relaxed);
        due != i64::MAX && due <= now_ms()
    }
}

/// Wall-clock now, ms since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Ticker {
    /// Every `every` while `pending` is set, writes `make(now)` with `now` as
    /// its timestamp. A failed write is logged and retried next tick: a late
    /// tick delays a timed decision, it never changes what is decided.
    pub fn spawn<F>(self, every: Duration, pending: Pending, make: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(i64) -> Result<TickRecord, String> + Send + 'static,
    {
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if !pending.get() || !self.live.load(Ordering::Relaxed) {
                    continue;
                }
                let at = now_ms();
                let tick = match make(at) {
                    Ok(tick) => tick,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build tick");
                        continue;
                    }
                };
                let record = Outgoing {
                    topic: &self.topic,
                    key: &tick.key,
                    value: Some(&tick.value),
                    id: Some(&tick.id),
                    tenant: None,
                    request_id: None,
                    timestamp_ms: Some(at),
                };
                if let Err(e) = self.producer.send(&record, every).await {
                    tracing::warn!(error = %e, topic = %self.topic, "tick not written; next one will be");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_work_is_due_now_or_from_a_time_on() {
        let pending = Pending::default();
        assert!(!pending.get(), "nothing pending at first");
        pending.set(true);
        assert!(pending.get());
        pending.set_due(Some(now_ms() + 60_000));
        assert!(!pending.get(), "not yet due");
        pending.set_due(Some(now_ms() - 1));
        assert!(pending.get());
        pending.set(false);
        assert!(!pending.get());
    }
}
