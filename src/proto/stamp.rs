//! 32-bit timestamps for per-connection state.
//!
//! An idle connection's record is most of its memory, and a `std::time::
//! Instant` is 16 bytes; a [`Stamp`] is 4: milliseconds since a
//! process-wide epoch, modulo 2³². Two stamps compare correctly while they
//! are less than [`MAX_SPAN`] (~24.8 days) apart, which the configuration
//! guarantees for every timer kept in a stamp (auth, heartbeat, idle and
//! close timeouts; see `Config::validate`).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The longest span two stamps may be apart and still compare correctly.
pub const MAX_SPAN: Duration = Duration::from_millis(i32::MAX as u64);

/// A point in time, to the millisecond, in 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u32);

impl Stamp {
    /// The stamp of `t`. The epoch is the first instant ever stamped;
    /// earlier instants wrap below it consistently.
    pub fn at(t: Instant) -> Stamp {
        let epoch = *EPOCH.get_or_init(|| t);
        match t.checked_duration_since(epoch) {
            // Truncation to 32 bits is the modulo.
            Some(d) => Stamp(d.as_millis() as u32),
            None => {
                // Rounded away from the epoch, so that both sides floor.
                let d = epoch.duration_since(t);
                let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 != 0);
                Stamp((ms as u32).wrapping_neg())
            }
        }
    }

    /// `d` later (`d` is clamped to [`MAX_SPAN`]).
    pub fn after(self, d: Duration) -> Stamp {
        Stamp(
            self.0
                .wrapping_add(d.as_millis().min(MAX_SPAN.as_millis()) as u32),
        )
    }

    /// Time from `earlier` to `self`; zero if `earlier` is in fact later.
    pub fn since(self, earlier: Stamp) -> Duration {
        let diff = self.0.wrapping_sub(earlier.0) as i32;
        Duration::from_millis(diff.max(0) as u64)
    }

    /// The whole second of the epoch's clock this stamp falls in (wraps
    /// with the stamp; for counting per second).
    pub fn seconds(self) -> u32 {
        self.0 / 1000
    }

    /// `self` is at or after `deadline`.
    pub fn reached(self, deadline: Stamp) -> bool {
        self.0.wrapping_sub(deadline.0) as i32 >= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_and_spans() {
        let t0 = Instant::now();
        let a = Stamp::at(t0);
        let b = Stamp::at(t0 + Duration::from_millis(1500));
        assert!(b.reached(a) && !a.reached(b) && a.reached(a));
        assert_eq!(b.since(a), Duration::from_millis(1500));
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(a.after(Duration::from_millis(1500)), b);
    }

    #[test]
    fn wraps_around_the_32_bit_range() {
        let a = Stamp(u32::MAX - 10);
        let b = a.after(Duration::from_millis(20));
        assert_eq!(b, Stamp(9));
        assert!(b.reached(a) && !a.reached(b));
        assert_eq!(b.since(a), Duration::from_millis(20));
    }

    #[test]
    fn instants_before_the_epoch() {
        let later = Instant::now() + Duration::from_secs(3600);
        let s = Stamp::at(later);
        if let Some(earlier) = later.checked_sub(Duration::from_secs(7200)) {
            let e = Stamp::at(earlier);
            assert!(s.reached(e) && !e.reached(s));
            assert_eq!(s.since(e), Duration::from_secs(7200));
        }
    }
}
