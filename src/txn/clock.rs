//! Hybrid logical clock: commit timestamps that follow physical time but never go back.
//!
//! A timestamp is `physical milliseconds << 16 | logical counter`. [`Clock::tick`] returns a
//! value greater than every value it returned or [`Clock::observe`]d before, so a later
//! commit of a key always gets a greater timestamp, also across restarts (recovery observes
//! every recovered commit) and, later, across nodes (a node observes its peers' commits).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const LOGICAL_BITS: u32 = 16;

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A hybrid logical clock shared by every transaction of a node.
#[derive(Debug, Default)]
pub struct Clock {
    last: AtomicU64,
}

impl Clock {
    /// A clock that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new timestamp, strictly greater than any returned or observed before.
    pub fn tick(&self) -> u64 {
        let physical = wall_ms() << LOGICAL_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = physical.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(current) => last = current,
            }
        }
    }

    /// Learns a timestamp issued elsewhere (a recovered or remote commit).
    pub fn observe(&self, ts: u64) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }

    /// The physical part of a timestamp, in milliseconds since the epoch.
    pub fn physical_ms(ts: u64) -> u64 {
        ts >> LOGICAL_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing() {
        let clock = Clock::new();
        let mut prev = 0;
        for _ in 0..100_000 {
            let t = clock.tick();
            assert!(t > prev);
            prev = t;
        }
    }

    #[test]
    fn observe_moves_the_clock_past_the_future() {
        let clock = Clock::new();
        let future = (wall_ms() + 3_600_000) << LOGICAL_BITS;
        clock.observe(future);
        assert!(clock.tick() > future);
    }

    #[test]
    fn physical_part_is_close_to_wall_time() {
        let clock = Clock::new();
        let ms = Clock::physical_ms(clock.tick());
        assert!(ms.abs_diff(wall_ms()) < 1_000);
    }
}
