//! Owns the coordinator ↔ worker protocol: JSON lines on the worker's
//! stdin (commands) and stdout (events), and the hex transport of a latency
//! histogram (hdrhistogram's V2 serialization inside the JSON line).
//!
//! The same [`Command`]/[`Event`] values travel over in-process channels when
//! workers run as threads (the in-process test), so only the framing differs.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Coordinator → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Publishing starts now; `t0_ns` (CLOCK_MONOTONIC) is the origin of the
    /// worker's delivery timeline.
    Start { t0_ns: u64 },
    /// Send the final report and exit.
    Finish,
}

/// Worker → coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Every 100 ms while anything changes.
    Progress(Progress),
    /// Every connection has either joined or failed.
    Ready(Ready),
    /// Flood mode: every live client of this worker has received (or passed)
    /// every sequence number up to `seq`. Sent on each advance.
    Frontier { seq: u64, live: u64 },
    /// After [`Command::Finish`].
    Final(Box<WorkerReport>),
    /// The worker cannot go on (its runtime failed to start, …).
    Fatal { error: String },
}

/// Running totals of one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub connected: u64,
    pub failed: u64,
    /// Connections open now.
    pub live: u64,
    /// Clients that have seen a probe message.
    pub probed: u64,
    /// Measured deliveries (duplicates excluded).
    pub received: u64,
    /// Warmup deliveries (duplicates excluded).
    pub warmup_received: u64,
    pub frontier: u64,
}

/// End of the connect phase of one worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub connected: u64,
    pub failed: u64,
    /// When the first connection attempt started (CLOCK_MONOTONIC ns).
    pub first_connect_ns: u64,
    /// When the last `connected` reply arrived.
    pub last_connected_ns: u64,
    /// Failures by kind (e.g. `connect: Connection refused (os error 111)`).
    pub failures: BTreeMap<String, u64>,
}

/// Everything a worker measured, sent once at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub id: u64,
    pub pid: u32,
    pub connections: u64,
    /// Still open at the end.
    pub live: u64,
    /// Measured deliveries, duplicates excluded.
    pub received: u64,
    /// Measured deliveries of a sequence number the client already had.
    pub duplicates: u64,
    /// Measured deliveries older than the newest the client had (a gap
    /// filled late).
    pub reordered: u64,
    /// Measured sequence numbers a client skipped when a later one arrived
    /// (a reorder may fill some later).
    pub gaps: u64,
    pub warmup_received: u64,
    pub probes_received: u64,
    /// Frames that were not a benchmark message (other events, errors).
    pub other_messages: u64,
    /// A few of those, cut short, to show what they were.
    pub other_samples: Vec<String>,
    /// Connections that ended during the run.
    pub disconnected: u64,
    /// Close codes received from the server, by code.
    #[serde(with = "code_keys")]
    pub close_codes: BTreeMap<u16, u64>,
    /// Connection ends without a close frame, by reason.
    pub errors: BTreeMap<String, u64>,
    pub heartbeats_sent: u64,
    pub pongs_sent: u64,
    /// CLOCK_MONOTONIC ns of the first and last measured delivery (0: none).
    pub first_recv_ns: u64,
    pub last_recv_ns: u64,
    /// Measured deliveries per `timeline_bucket_ns`, from `timeline_t0_ns`.
    pub timeline_t0_ns: u64,
    pub timeline_bucket_ns: u64,
    pub timeline: Vec<u64>,
    /// Warmup deliveries per bucket on the same clock: a flood's warmup
    /// messages still arrive after measuring began, and the server's CPU
    /// in that time went to them too.
    #[serde(default)]
    pub warmup_timeline: Vec<u64>,
    /// Latency histogram (ns), V2-serialized, hex.
    pub latency_hist_hex: String,
}

/// A map keyed by close code as a JSON object with string keys, read back
/// by parsing them: serde's internally tagged enums ([`Event`]) buffer their
/// content, and a buffered string key no longer turns into a `u16` by
/// itself ("invalid type: string \"1008\", expected u16" ended a run as soon
/// as a server closed a connection).
mod code_keys {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &BTreeMap<u16, u64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(m.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u16, u64>, D::Error> {
        BTreeMap::<String, u64>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                k.parse::<u16>()
                    .map(|k| (k, v))
                    .map_err(|_| serde::de::Error::custom(format!("close code {k:?}")))
            })
            .collect()
    }
}

/// A histogram that could not travel.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("histogram serialization: {0:?}")]
    Serialize(hdrhistogram::serialization::V2SerializeError),
    #[error("histogram is not valid hex")]
    Hex,
    #[error("histogram deserialization: {0:?}")]
    Deserialize(hdrhistogram::serialization::DeserializeError),
}

/// Hex of the V2 serialization of `h`.
pub fn histogram_to_hex(h: &Histogram<u64>) -> Result<String, WireError> {
    let mut bytes = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut bytes)
        .map_err(WireError::Serialize)?;
    Ok(to_hex(&bytes))
}

/// The inverse of [`histogram_to_hex`].
pub fn histogram_from_hex(s: &str) -> Result<Histogram<u64>, WireError> {
    let bytes = from_hex(s).ok_or(WireError::Hex)?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(WireError::Deserialize)
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_survives_the_trip() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        for v in [1_000, 25_000, 25_001, 3_000_000, 90_000_000_000] {
            h.record(v).unwrap();
        }
        let back = histogram_from_hex(&histogram_to_hex(&h).unwrap()).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert!(histogram_from_hex("zz").is_err());
        assert!(histogram_from_hex("abc").is_err());
    }

    #[test]
    fn events_are_json_lines() {
        let e = Event::Frontier {
            seq: u64::MAX,
            live: 3,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
        let c: Command = serde_json::from_str(r#"{"cmd":"start","t0_ns":5}"#).unwrap();
        assert_eq!(c, Command::Start { t0_ns: 5 });
        let r = Event::Final(Box::default());
        let back: Event = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        // Close codes as map keys survive the tagged enum.
        let mut report = WorkerReport::default();
        report.close_codes.insert(1008, 3);
        report.close_codes.insert(1001, 1);
        let r = Event::Final(Box::new(report));
        let back: Event = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
