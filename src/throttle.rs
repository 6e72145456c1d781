//! Logging a recurring failure at most once per period, with how many
//! happened in between: a dead peer or an exhausted resource must not flood
//! the log (accept errors, the private metrics listener, the events
//! webhook). Depends on nothing else in the crate.

use std::time::{Duration, Instant};

/// Counts failures and says when one should be logged.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// At most one log line per `period`.
    pub const fn new(period: Duration) -> Self {
        Throttle {
            period,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Count one failure at `now`; `Some(n)` when it should be logged, `n`
    /// being the failures since the last logged one (this one included).
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_between() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(1));
        assert_eq!(t.hit(t0), Some(1));
        for ms in [1, 10, 500, 999] {
            assert_eq!(t.hit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(t.hit(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.hit(t0 + Duration::from_millis(2001)), Some(2));
    }
}
