//! Owns the benchmark message format and the clock it is stamped with.
//!
//! Every published message is the event `b` whose `data` is a JSON string
//! laid out at fixed offsets, so a client checks and times a delivery with a
//! prefix compare, one phase byte and two 20-digit integer parses — no JSON
//! parser on the hot path. The client frame payload that both ignis-ws and
//! the Ignis reference send is `{"event":"b","data":"…"}` (event before data,
//! the reference's `JSON.stringify` order; ignis-ws copies `data` verbatim):
//!
//! ```text
//! offset  0      21                   41 42                   62 63 64 65                   85      len-2
//!         {"event":"b","data":"SSSSSSSSSSSSSSSSSSSS:TTTTTTTTTTTTTTTTTTTT:P:FFFFFFFFFFFFFFFFFFFFxxxx…xxxx"}
//! ```
//!
//! - `S` sequence number (20 digits, zero padded); one sequence across the
//!   warmup and measured phases, starting at 1; probes carry 0.
//! - `T` publish time: CLOCK_MONOTONIC in ns. Linux's monotonic clock is
//!   system-wide, so the coordinator (which stamps) and every worker process
//!   (which subtracts) agree without any synchronisation.
//! - `P` phase: `p` probe (membership check before the run), `w` warmup,
//!   `m` measured.
//! - `F` the first measured sequence number (0 outside the measured phase).
//!   Read only when a client sees a gap, to tell how many of the skipped
//!   numbers were measured ones.
//! - `x` padding up to `--payload-size` bytes of client frame payload.

use rustix::time::{ClockId, clock_gettime};

/// The frame payload every delivery starts with, up to the opening quote of
/// the data string.
pub const PREFIX: &[u8] = br#"{"event":"b","data":""#;
/// The event name published.
pub const EVENT: &str = "b";
/// What closes the frame payload after the data string.
const SUFFIX: &[u8] = br#""}"#;
const DIGITS: usize = 20;
const SEQ_AT: usize = PREFIX.len();
const SENT_AT: usize = SEQ_AT + DIGITS + 1;
const PHASE_AT: usize = SENT_AT + DIGITS + 1;
const FROM_AT: usize = PHASE_AT + 2;
const FIXED_END: usize = FROM_AT + DIGITS;
/// Smallest `--payload-size`: the fixed fields and no padding.
pub const MIN_PAYLOAD_SIZE: usize = FIXED_END + SUFFIX.len();

/// Which part of the run a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Published before the run until every client has seen one: proves each
    /// client is in the room and the publish path works end to end.
    Probe,
    /// Published but not counted.
    Warmup,
    /// Counted and timed.
    Measured,
}

impl Phase {
    const fn byte(self) -> u8 {
        match self {
            Phase::Probe => b'p',
            Phase::Warmup => b'w',
            Phase::Measured => b'm',
        }
    }
}

/// What a client learns from one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub seq: u64,
    pub sent_ns: u64,
    pub phase: Phase,
}

/// CLOCK_MONOTONIC in nanoseconds (vDSO, no syscall).
pub fn now_ns() -> u64 {
    let ts = clock_gettime(ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Appends the `data` value (a JSON string, quotes included) of one message
/// whose client frame payload will be exactly `payload_size` bytes
/// (`payload_size` ≥ [`MIN_PAYLOAD_SIZE`], checked by the caller).
pub fn write_data(
    out: &mut Vec<u8>,
    payload_size: usize,
    seq: u64,
    sent_ns: u64,
    phase: Phase,
    first_measured: u64,
) {
    let start = out.len();
    out.push(b'"');
    push_digits(out, seq);
    out.push(b':');
    push_digits(out, sent_ns);
    out.push(b':');
    out.push(phase.byte());
    out.push(b':');
    push_digits(out, first_measured);
    // data value = '"' + content + '"'; frame payload = PREFIX[..20] + value + '}'.
    let value_len = payload_size.saturating_sub(PREFIX.len() - 1 + 1);
    let pad = value_len.saturating_sub(out.len() - start + 1);
    out.resize(out.len() + pad, b'x');
    out.push(b'"');
}

/// The `data` value as a fresh buffer; see [`write_data`].
pub fn data_json(
    payload_size: usize,
    seq: u64,
    sent_ns: u64,
    phase: Phase,
    first_measured: u64,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload_size);
    write_data(&mut v, payload_size, seq, sent_ns, phase, first_measured);
    v
}

fn push_digits(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [b'0'; DIGITS];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&digits);
}

/// Parses a delivery from a client frame payload, or `None` if it is not one
/// of ours (another event, a truncated or foreign message).
#[inline]
pub fn parse(payload: &[u8]) -> Option<Delivery> {
    if payload.len() < MIN_PAYLOAD_SIZE || !payload.starts_with(PREFIX) {
        return None;
    }
    let phase = match payload.get(PHASE_AT)? {
        b'm' => Phase::Measured,
        b'w' => Phase::Warmup,
        b'p' => Phase::Probe,
        _ => return None,
    };
    Some(Delivery {
        seq: digits(payload.get(SEQ_AT..SEQ_AT + DIGITS)?)?,
        sent_ns: digits(payload.get(SENT_AT..SENT_AT + DIGITS)?)?,
        phase,
    })
}

/// The first measured sequence number carried by a delivery (cold path:
/// only read on a gap).
pub fn first_measured(payload: &[u8]) -> Option<u64> {
    digits(payload.get(FROM_AT..FIXED_END)?)
}

#[inline]
fn digits(b: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for &c in b {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame payload a server sends for `data`.
    fn frame_payload(data: &[u8]) -> Vec<u8> {
        let mut p = br#"{"event":"b","data":"#.to_vec();
        p.extend_from_slice(data);
        p.push(b'}');
        p
    }

    #[test]
    fn roundtrip_at_every_size() {
        for size in [MIN_PAYLOAD_SIZE, 100, 1024, 65_536] {
            let data = data_json(size, 42, 1_234_567_890_123, Phase::Measured, 40);
            let p = frame_payload(&data);
            assert_eq!(p.len(), size, "payload size {size}");
            let d = parse(&p).unwrap();
            assert_eq!(
                d,
                Delivery {
                    seq: 42,
                    sent_ns: 1_234_567_890_123,
                    phase: Phase::Measured
                }
            );
            assert_eq!(first_measured(&p), Some(40));
            // It is a JSON string a server can pass through.
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v["event"], "b");
        }
    }

    #[test]
    fn extremes_and_phases() {
        for (phase, seq) in [
            (Phase::Probe, 0),
            (Phase::Warmup, 1),
            (Phase::Measured, u64::MAX),
        ] {
            let p = frame_payload(&data_json(100, seq, u64::MAX, phase, 0));
            let d = parse(&p).unwrap();
            assert_eq!((d.seq, d.sent_ns, d.phase), (seq, u64::MAX, phase));
        }
    }

    #[test]
    fn layout_is_fixed() {
        let p = frame_payload(&data_json(100, 7, 9, Phase::Warmup, 0));
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            r#"{"event":"b","data":"00000000000000000007:00000000000000000009:w:00000000000000000000xxxxxxxxxxxxx"}"#
        );
    }

    #[test]
    fn rejects_what_is_not_ours() {
        let good = frame_payload(&data_json(100, 7, 9, Phase::Measured, 1));
        assert!(parse(&good).is_some());
        // Another event.
        let mut other = good.clone();
        other[10] = b'c';
        assert!(parse(&other).is_none());
        // Too short.
        assert!(parse(&good[..MIN_PAYLOAD_SIZE - 1]).is_none());
        assert!(parse(b"").is_none());
        // A non-digit in the sequence or the time.
        for at in [SEQ_AT + 3, SENT_AT + 19] {
            let mut bad = good.clone();
            bad[at] = b'a';
            assert!(parse(&bad).is_none(), "non-digit at {at}");
        }
        // Unknown phase.
        let mut bad = good.clone();
        bad[PHASE_AT] = b'z';
        assert!(parse(&bad).is_none());
        // 20 digits that overflow u64.
        let mut big = good.clone();
        big[SEQ_AT..SEQ_AT + DIGITS].copy_from_slice(b"99999999999999999999");
        assert!(parse(&big).is_none());
        // Server messages of the protocol.
        assert!(parse(br#"{"event":"connected","data":{"id":"x","time":1}}"#).is_none());
    }

    #[test]
    fn clock_is_monotonic_and_plausible() {
        let a = now_ns();
        let b = now_ns();
        assert!(a > 0 && b >= a);
    }
}
