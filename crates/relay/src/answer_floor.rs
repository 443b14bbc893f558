//! When a paced connection's answers may leave (docs/protocol.md, "Answer times").
//!
//! A request that writes (`Send`, `Ack`, `Create`, ...) is answered after the store's
//! fsync; one that reads (`Fetch`, `Ping`) at once. An observer who times the answers of a
//! paced link could tell them apart, and so tell a real send from the filler. So every
//! answer on a paced connection waits until its request arrived a *floor* ago: the
//! configured one (`--answer-floor`), or more while the store has been slower than that.
//! The floor follows the store: a quarter above the 95th percentile of the last
//! [`WINDOW`] successful writes' times on paced connections, never below the configured floor nor above [`CEILING`]. It is
//! the same for every request of the moment, so what an observer learns from it is how
//! busy the relay's disk is, not what a request was.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Writes whose times the floor follows.
const WINDOW: usize = 128;

/// The floor is worked out again after this many writes.
const EVERY: usize = 16;

/// The most the floor rises to, however slow the store: a paced link waits for each
/// answer before its next tick, so a higher floor would slow every paced link.
pub const CEILING: Duration = Duration::from_secs(2);

pub(crate) struct AnswerFloor {
    least: Duration,
    /// The last writes' times, in microseconds.
    recent: Mutex<VecDeque<u64>>,
    /// The floor now, in microseconds.
    current: AtomicU64,
    /// Writes recorded so far: the floor is worked out again at every [`EVERY`]th.
    seen: AtomicU64,
}

impl AnswerFloor {
    pub(crate) fn new(least: Duration) -> Self {
        Self {
            least,
            recent: Mutex::new(VecDeque::with_capacity(WINDOW)),
            current: AtomicU64::new(micros(least)),
            seen: AtomicU64::new(0),
        }
    }

    /// The floor now.
    pub(crate) fn get(&self) -> Duration {
        Duration::from_micros(self.current.load(Ordering::Relaxed))
    }

    /// A write took `took`, from its arrival to its answer being ready.
    pub(crate) fn record(&self, took: Duration) {
        let Ok(mut recent) = self.recent.lock() else { return };
        if recent.len() == WINDOW {
            recent.pop_front();
        }
        recent.push_back(micros(took));
        if !(self.seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(EVERY as u64) {
            return;
        }
        let mut sorted: Vec<u64> = recent.iter().copied().collect();
        sorted.sort_unstable();
        let p95 = sorted.get(sorted.len() * 95 / 100).copied().unwrap_or(0);
        let floor = (p95.saturating_mul(5) / 4).clamp(micros(self.least), micros(CEILING).max(micros(self.least)));
        self.current.store(floor, Ordering::Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_floor_is_the_configured_one_while_the_store_is_faster() {
        let floor = AnswerFloor::new(25 * MS);
        for _ in 0..WINDOW * 2 {
            floor.record(3 * MS);
        }
        assert_eq!(floor.get(), 25 * MS);
    }

    #[test]
    fn the_floor_rises_above_a_slow_store_and_comes_back_down() {
        let floor = AnswerFloor::new(25 * MS);
        for _ in 0..WINDOW {
            floor.record(40 * MS);
        }
        assert_eq!(floor.get(), 50 * MS);
        // One slow write in forty is past the 95th percentile: the floor comes back down.
        for i in 0..WINDOW {
            floor.record(if i % 40 == 0 { 60 * MS } else { 2 * MS });
        }
        assert_eq!(floor.get(), 25 * MS);
        for _ in 0..WINDOW {
            floor.record(10 * Duration::from_secs(1));
        }
        assert_eq!(floor.get(), CEILING);
    }
}
