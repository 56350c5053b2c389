//! Exponential backoff for faults that may mend (broker, registry, disk),
//! with a log line at most every [`LOG_EVERY`] instead of one per attempt.

use std::fmt::Display;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// The first wait.
pub const FIRST: Duration = Duration::from_millis(50);
/// The longest wait: a recovered service is noticed within this.
pub const LONGEST: Duration = Duration::from_secs(5);
/// At most one warning per this interval per backoff.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One retry loop's backoff state.
pub struct Backoff {
    what: &'static str,
    next: Duration,
    attempts: u64,
    since_log: u64,
    last_log: Option<Instant>,
    counter: Option<IntCounter>,
}

impl Backoff {
    /// A backoff for retries of `what` (it names the loop in log lines).
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            next: FIRST,
            attempts: 0,
            since_log: 0,
            last_log: None,
            counter: None,
        }
    }

    /// Also counts each attempt in `counter`.
    pub fn counting(mut self, counter: IntCounter) -> Self {
        self.counter = Some(counter);
        self
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// The wait before the next attempt, growing up to [`LONGEST`]. Logs
    /// `error` now and then (never the record, only what failed).
    pub fn delay(&mut self, error: &(dyn Display + Sync)) -> Duration {
        self.attempts += 1;
        self.since_log += 1;
        if let Some(counter) = &self.counter {
            counter.inc();
        }
        if self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                what = self.what,
                attempts = self.attempts,
                since_last_line = self.since_log,
                retry_in_ms = self.next.as_millis() as u64,
                %error,
                "transient failure; retrying with backoff"
            );
            self.last_log = Some(Instant::now());
            self.since_log = 0;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(LONGEST);
        wait
    }

    /// Sleeps for [`Backoff::delay`].
    pub async fn wait(&mut self, error: &(dyn Display + Sync)) {
        let wait = self.delay(error);
        tokio::time::sleep(wait).await;
    }

    /// Called after a success: logs the recovery if there were failures.
    pub fn recovered(&mut self) {
        if self.attempts > 0 {
            tracing::info!(
                what = self.what,
                attempts = self.attempts,
                "recovered after transient failures"
            );
        }
        self.attempts = 0;
        self.since_log = 0;
        self.next = FIRST;
        self.last_log = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_longest_and_reset_on_recovery() {
        let mut b = Backoff::new("test");
        let waits: Vec<_> = (0..10).map(|_| b.delay(&"down")).collect();
        assert_eq!(waits[0], FIRST);
        assert_eq!(waits[1], FIRST * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), LONGEST);
        assert_eq!(b.attempts(), 10);
        b.recovered();
        assert_eq!(b.delay(&"down"), FIRST);
    }

    // Real time, not tokio's paused clock: its `test-util` feature, enabled
    // for tests only, would give `cargo build` and `cargo test` two builds
    // of tokio and of everything above it. The waits are 50 ms, then 100
    // (the doubling itself is checked exactly above, through `delay`): never
    // less than their sum, and with a second of slack for a loaded machine.
    #[tokio::test]
    async fn wait_sleeps_the_delay() {
        let mut b = Backoff::new("test");
        let start = Instant::now();
        b.wait(&"down").await;
        b.wait(&"down").await;
        let slept = start.elapsed();
        assert!(slept >= FIRST * 3, "{slept:?}");
        assert!(slept < FIRST * 3 + Duration::from_secs(1), "{slept:?}");
    }
}
