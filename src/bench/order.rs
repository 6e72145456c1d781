//! Owns the sequence-number bookkeeping of a worker's deliveries, apart
//! from the sockets: each connection's order check ([`Order`]: the newest
//! number seen and a 64-entry bitmap behind it, which tell a new delivery
//! from a late one and from a duplicate) and the worker's flood frontier
//! ([`Frontier`]: how many live connections passed each number, in a ring).
//!
//! A connection "passes" a number when it receives it or a later one, so a
//! lost message never holds the frontier back.

/// Slots of the frontier ring (power of two); larger than any flood window.
pub const RING: usize = 1 << 16;

/// How a delivery arrived on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Newer than any before; `from` is the previous newest (0: none), so
    /// the connection passed `(from, seq]`.
    Ahead { from: u64 },
    /// Older than the newest but not seen before (a gap filled late, or too
    /// old for the bitmap to tell).
    Late,
    /// Seen before.
    Duplicate,
}

/// One connection's order state.
#[derive(Debug, Default)]
pub struct Order {
    /// Highest sequence number seen (0: none yet).
    pub last: u64,
    /// Bit i set: sequence number `last - 1 - i` was seen.
    window: u64,
}

impl Order {
    /// Records `seq` and says how it arrived.
    pub fn see(&mut self, seq: u64) -> Arrival {
        if seq > self.last {
            let shift = seq - self.last;
            let mut w = u32::try_from(shift)
                .ok()
                .and_then(|s| self.window.checked_shl(s))
                .unwrap_or(0);
            if self.last > 0 && shift <= 64 {
                w |= 1 << (shift - 1);
            }
            self.window = w;
            let from = self.last;
            self.last = seq;
            Arrival::Ahead { from }
        } else if seq == self.last {
            Arrival::Duplicate
        } else {
            let back = self.last - seq;
            if back > 64 {
                // Too old for the bitmap: counted as late, not as a duplicate.
                return Arrival::Late;
            }
            let bit = 1u64 << (back - 1);
            if self.window & bit != 0 {
                Arrival::Duplicate
            } else {
                self.window |= bit;
                Arrival::Late
            }
        }
    }
}

/// Every live connection has passed every sequence number ≤ [`Frontier::seq`].
#[derive(Debug)]
pub struct Frontier {
    seq: u64,
    /// Connections that passed sequence number s, at `s % RING`, for s in
    /// (seq, seq + RING).
    ring: Vec<u32>,
}

impl Default for Frontier {
    fn default() -> Frontier {
        Frontier {
            seq: 0,
            ring: vec![0; RING],
        }
    }
}

impl Frontier {
    /// The highest number every live connection has passed.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn slot(&mut self, s: u64) -> &mut u32 {
        &mut self.ring[(s as usize) & (RING - 1)]
    }

    /// A connection moved from `last` to `seq`: it passed (last, seq].
    pub fn pass(&mut self, last: u64, seq: u64) {
        let lo = last.max(self.seq) + 1;
        let hi = seq.min(self.seq + RING as u64 - 1);
        for s in lo..=hi {
            let slot = self.slot(s);
            *slot = slot.saturating_add(1);
        }
    }

    /// Undoes a dead connection's passes (it had reached `last`) so the
    /// frontier counts live ones only.
    pub fn unpass(&mut self, last: u64) {
        let hi = last.min(self.seq + RING as u64 - 1);
        for s in self.seq + 1..=hi {
            let slot = self.slot(s);
            *slot = slot.saturating_sub(1);
        }
    }

    /// Moves over every number all `live` connections passed; whether it
    /// moved (never with no live connection).
    pub fn advance(&mut self, live: u64) -> bool {
        if live == 0 {
            return false;
        }
        let before = self.seq;
        loop {
            let next = self.seq + 1;
            let slot = self.slot(next);
            if u64::from(*slot) < live {
                break;
            }
            *slot = 0;
            self.seq = next;
        }
        self.seq != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_tells_new_late_and_duplicate() {
        let mut o = Order::default();
        assert_eq!(o.see(3), Arrival::Ahead { from: 0 });
        assert_eq!(o.see(3), Arrival::Duplicate);
        assert_eq!(o.see(1), Arrival::Late);
        assert_eq!(o.see(1), Arrival::Duplicate);
        assert_eq!(o.see(100), Arrival::Ahead { from: 3 });
        assert_eq!(o.see(2), Arrival::Late, "older than the bitmap");
        assert_eq!(o.see(2), Arrival::Late, "still too old to tell");
        assert_eq!(o.see(99), Arrival::Late);
        assert_eq!(o.see(99), Arrival::Duplicate);
        assert_eq!(o.last, 100);
    }

    #[test]
    fn frontier_waits_for_every_live_connection() {
        let mut f = Frontier::default();
        assert!(!f.advance(0));
        f.pass(0, 3);
        assert!(!f.advance(2));
        f.pass(0, 2);
        assert!(f.advance(2));
        assert_eq!(f.seq(), 2);
        // The second connection dies at 2: only the first counts, at 3.
        f.unpass(2);
        assert!(f.advance(1));
        assert_eq!(f.seq(), 3);
    }
}
