//! The Ignis JSON envelope `{"event": string, "data"?: any, "id"?: string}`:
//! client messages in (parsed with simd-json, borrowing the frame payload),
//! server messages out (written straight into a frame buffer).
//!
//! Parsing follows the reference `WebSocketServerHelper.onClientMessage` rule
//! for rule, minus its crashes (PROTOCOL.md §11): JSON that is not an object
//! is `Invalid message format`, a `rooms` field that is not an array is
//! ignored.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::Serialize;
use simd_json::StaticNode;
use simd_json::borrowed::Value;

pub use simd_json::Buffers;

/// System events of the protocol (PROTOCOL.md §3).
pub mod event {
    pub const AUTHENTICATE: &str = "authenticate";
    pub const CONNECTED: &str = "connected";
    pub const DISCONNECT: &str = "disconnect";
    pub const JOIN: &str = "join";
    pub const LEAVE: &str = "leave";
    pub const ERROR: &str = "error";
    pub const HEARTBEAT: &str = "heartbeat";
    pub const ENCRYPTED: &str = "encrypted";
}

/// Error texts sent in `{"event":"error","data":{"message":…}}`, exactly as
/// the reference sends them.
pub mod error_text {
    pub const INVALID_FORMAT: &str = "Invalid message format";
    pub const NOT_AUTHENTICATED: &str = "Not authenticated";
    pub const ALREADY_AUTHENTICATED: &str = "Already authenticated";
    pub const AUTH_FAILED: &str = "Authentication failed";
    pub const AUTH_ERROR: &str = "Authentication error";
    /// The reference's text when encryption is required and the handshake
    /// refused (sent before close 4004).
    pub const ENCRYPTION_HANDSHAKE_FAILED: &str = "Encryption handshake failed";
    /// An inbound `encrypted` message that did not decrypt.
    pub const DECRYPTION_FAILED: &str = "Decryption failed";
    /// The user already holds `--max-sessions-per-user` sessions (sent
    /// before close 1008).
    pub const TOO_MANY_SESSIONS: &str = "Too many sessions";
}

/// The event name of encrypted messages, both directions (PROTOCOL.md §7).
pub const ENCRYPTED_EVENT: &str = "encrypted";

/// `{"iv": string, "ct": string}` of an inbound `encrypted` message.
pub fn encrypted_parts<'v>(data: Option<&'v Value<'_>>) -> Option<(&'v str, &'v str)> {
    let Some(Value::Object(obj)) = data else {
        return None;
    };
    match (obj.get("iv"), obj.get("ct")) {
        (Some(Value::String(iv)), Some(Value::String(ct))) => Some((iv.as_ref(), ct.as_ref())),
        _ => None,
    }
}

/// `authenticate.data.publicKey`: `None` when absent or `null`,
/// `Some(None)` when present but not a string.
pub fn public_key(data: &serde_json::Value) -> Option<Option<&str>> {
    match data.get("publicKey") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_str()),
    }
}

/// Room names a client may never join: the reference reserves `ws:` for
/// its internal topics and Redis channels.
pub const INTERNAL_ROOM_PREFIX: &str = "ws:";
/// Longest room name a client may join, in UTF-16 code units, because the
/// reference measures JavaScript string `length`.
pub const MAX_ROOM_NAME_LEN: usize = 256;

/// One parsed client message.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    /// Not JSON, or JSON that is not an object, or `event` of a non-string
    /// truthy type: answered with `Invalid message format`.
    Invalid,
    /// An object whose `event` is missing or falsy (`""`, `null`, `false`,
    /// `0`): dropped silently, as the reference does.
    NoEvent,
    /// `heartbeat`: refreshes activity, nothing else.
    Heartbeat,
    /// `authenticate` with its `data` (`{}` when absent or null).
    Authenticate(Value<'a>),
    /// `join`, with the `data` value (filtering happens in [`join_rooms`]).
    Join(Option<Value<'a>>),
    /// `leave`, with the `data` value.
    Leave(Option<Value<'a>>),
    /// Any other event: handed to the message hook when authenticated.
    Custom {
        event: Cow<'a, str>,
        data: Option<Value<'a>>,
        id: Option<Cow<'a, str>>,
    },
}

/// Parse one client text (or binary) message in place. `buf` is rewritten
/// by the parser (de-escaping); `buffers` are reused between calls so a
/// parse allocates nothing beyond the values it returns.
pub fn parse<'a>(buf: &'a mut [u8], buffers: &mut Buffers) -> ClientMessage<'a> {
    let Ok(value) = simd_json::borrowed::to_value_with_buffers(buf, buffers) else {
        return ClientMessage::Invalid;
    };
    let Value::Object(mut obj) = value else {
        return ClientMessage::Invalid;
    };
    let event = match obj.remove("event") {
        None => return ClientMessage::NoEvent,
        Some(Value::String(s)) if s.is_empty() => return ClientMessage::NoEvent,
        Some(Value::String(s)) => s,
        Some(Value::Static(s)) if is_falsy(&s) => return ClientMessage::NoEvent,
        Some(_) => return ClientMessage::Invalid,
    };
    let data = obj.remove("data");
    match event.as_ref() {
        event::HEARTBEAT => ClientMessage::Heartbeat,
        event::AUTHENTICATE => ClientMessage::Authenticate(match data {
            None | Some(Value::Static(StaticNode::Null)) => Value::Object(Box::default()),
            Some(v) => v,
        }),
        event::JOIN => ClientMessage::Join(data),
        event::LEAVE => ClientMessage::Leave(data),
        _ => {
            let id = match obj.remove("id") {
                Some(Value::String(s)) => Some(s),
                _ => None,
            };
            ClientMessage::Custom { event, data, id }
        }
    }
}

fn is_falsy(s: &StaticNode) -> bool {
    match s {
        StaticNode::Null => true,
        StaticNode::Bool(b) => !b,
        StaticNode::I64(i) => *i == 0,
        StaticNode::U64(u) => *u == 0,
        StaticNode::F64(f) => *f == 0.0 || f.is_nan(),
        #[allow(unreachable_patterns)] // reason: 128-bit variants exist behind a feature
        _ => false,
    }
}

fn rooms_array<'v, 'a>(data: Option<&'v Value<'a>>) -> &'v [Value<'a>] {
    match data {
        Some(Value::Object(obj)) => match obj.get("rooms") {
            Some(Value::Array(rooms)) => rooms.as_slice(),
            _ => &[],
        },
        _ => &[],
    }
}

/// `join`: the names a client asked for that pass the protocol's filter
/// (strings of 1..=256 UTF-16 units not starting with `ws:`), in order,
/// without duplicates. The room validator sees only these.
pub fn join_rooms(data: Option<&Value<'_>>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // Duplicates are collapsed in one pass (a 128 KiB join lists ~30,000
    // names: comparing each with all before it stalled the shard).
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for r in rooms_array(data) {
        let Value::String(name) = r else { continue };
        if name.is_empty()
            || name.starts_with(INTERNAL_ROOM_PREFIX)
            || utf16_len(name) > MAX_ROOM_NAME_LEN
        {
            continue;
        }
        if seen.insert(name.as_ref()) {
            out.push(name.to_string());
        }
    }
    out
}

/// `leave`: every string in `rooms`; the shard keeps only rooms the client
/// is in.
pub fn leave_rooms<'v>(data: Option<&'v Value<'_>>) -> Vec<&'v str> {
    rooms_array(data)
        .iter()
        .filter_map(|r| match r {
            Value::String(s) => Some(s.as_ref()),
            _ => None,
        })
        .collect()
}

fn utf16_len(s: &str) -> usize {
    // Fast path: ASCII and BMP characters are one unit each.
    s.chars().map(char::len_utf16).sum()
}

/// Convert a borrowed simd-json value into an owned `serde_json::Value` for
/// authenticators and hooks (off the fan-out path).
pub fn to_json(v: &Value<'_>) -> serde_json::Value {
    match v {
        Value::Static(StaticNode::Null) => serde_json::Value::Null,
        Value::Static(StaticNode::Bool(b)) => serde_json::Value::Bool(*b),
        Value::Static(StaticNode::I64(i)) => serde_json::Value::from(*i),
        Value::Static(StaticNode::U64(u)) => serde_json::Value::from(*u),
        Value::Static(StaticNode::F64(f)) => serde_json::Number::from_f64(*f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        #[allow(unreachable_patterns)] // reason: 128-bit variants exist behind a feature
        Value::Static(_) => serde_json::Value::Null,
        Value::String(s) => serde_json::Value::String(s.to_string()),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Object(o) => {
            serde_json::Value::Object(o.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect())
        }
    }
}

/// Write `{"event":E,"data":D}` (the shape the reference produces with
/// `JSON.stringify({ event, data })`; `data: None` omits the key as
/// `undefined` does) into `dst`.
pub fn write_server_message<D: Serialize + ?Sized>(
    dst: &mut BytesMut,
    event: &str,
    data: Option<&D>,
) -> Result<(), serde_json::Error> {
    dst.put_slice(b"{\"event\":");
    serde_json::to_writer(dst.writer(), event)?;
    if let Some(data) = data {
        dst.put_slice(b",\"data\":");
        serde_json::to_writer(dst.writer(), data)?;
    }
    dst.put_slice(b"}");
    Ok(())
}

/// `{"event":"error","data":{"message":M}}`.
pub fn write_error(dst: &mut BytesMut, message: &str) {
    dst.put_slice(b"{\"event\":\"error\",\"data\":{\"message\":");
    // A &str always serializes.
    let _ = serde_json::to_writer(dst.writer(), message);
    dst.put_slice(b"}}");
}

/// The `connected` payload: `{id, userId?, time}`; `userId` is left out when
/// the authenticator gave none (not `null`: PROTOCOL.md §10).
#[derive(Debug, Serialize)]
pub struct Connected<'a> {
    pub id: &'a str,
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    pub time: &'a str,
    /// The encryption handshake's answer (PROTOCOL.md §7), when it ran.
    #[serde(rename = "serverPublicKey", skip_serializing_if = "Option::is_none")]
    pub server_public_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salt: Option<&'a str>,
}

/// ISO-8601 UTC with milliseconds, as JavaScript's `Date.toISOString()`:
/// `2026-11-25T22:39:03.123Z`.
pub fn iso8601_millis(unix_millis: u64) -> String {
    let secs = unix_millis / 1000;
    let ms = unix_millis % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    // One allocation of the final size (`format!` grows it three times).
    let mut out = String::with_capacity(24);
    // fmt::Write for String cannot fail.
    let _ = std::fmt::Write::write_fmt(
        &mut out,
        format_args!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        ),
    );
    out
}

/// Howard Hinnant's days-from-civil inverse.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        let mut bufs = Buffers::default();
        format!("{:?}", parse(&mut b, &mut bufs))
    }

    #[test]
    fn invalid_and_non_object_json() {
        for s in ["{", "not json", "null", "3", "[]", "\"x\"", "true"] {
            assert_eq!(p(s), "Invalid", "{s}");
        }
    }

    #[test]
    fn missing_or_falsy_event_is_dropped() {
        for s in [
            "{}",
            r#"{"data":1}"#,
            r#"{"event":""}"#,
            r#"{"event":null}"#,
            r#"{"event":false}"#,
            r#"{"event":0}"#,
        ] {
            assert_eq!(p(s), "NoEvent", "{s}");
        }
        assert_eq!(p(r#"{"event":1}"#), "Invalid");
        assert_eq!(p(r#"{"event":{}}"#), "Invalid");
    }

    #[test]
    fn system_events() {
        assert_eq!(p(r#"{"event":"heartbeat"}"#), "Heartbeat");
        let mut b = br#"{"event":"authenticate"}"#.to_vec();
        let mut bufs = Buffers::default();
        match parse(&mut b, &mut bufs) {
            ClientMessage::Authenticate(v) => assert_eq!(to_json(&v), serde_json::json!({})),
            other => panic!("{other:?}"),
        }
        let mut b = br#"{"event":"authenticate","data":{"token":"t"}}"#.to_vec();
        match parse(&mut b, &mut bufs) {
            ClientMessage::Authenticate(v) => {
                assert_eq!(to_json(&v), serde_json::json!({"token":"t"}))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn custom_event_keeps_data_and_id() {
        let mut b = br#"{"event":"chat","data":{"a":[1,2.5,"x",null,true]},"id":"m1"}"#.to_vec();
        let mut bufs = Buffers::default();
        match parse(&mut b, &mut bufs) {
            ClientMessage::Custom { event, data, id } => {
                assert_eq!(event, "chat");
                assert_eq!(
                    to_json(data.as_ref().unwrap()),
                    serde_json::json!({"a":[1,2.5,"x",null,true]})
                );
                assert_eq!(id.as_deref(), Some("m1"));
            }
            other => panic!("{other:?}"),
        }
    }

    fn rooms_of(json: &str) -> Vec<String> {
        let mut b = json.as_bytes().to_vec();
        let mut bufs = Buffers::default();
        match parse(&mut b, &mut bufs) {
            ClientMessage::Join(d) => join_rooms(d.as_ref()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn join_filter() {
        let long = "a".repeat(257);
        let max = "a".repeat(256);
        let json = format!(
            r#"{{"event":"join","data":{{"rooms":["ok","",1,null,"ws:internal","{long}","{max}","ok","ws-x"]}}}}"#
        );
        assert_eq!(rooms_of(&json), vec!["ok".to_string(), max, "ws-x".into()]);
        assert!(rooms_of(r#"{"event":"join","data":{"rooms":"abc"}}"#).is_empty());
        assert!(rooms_of(r#"{"event":"join","data":"abc"}"#).is_empty());
        assert!(rooms_of(r#"{"event":"join"}"#).is_empty());
        // 128 astral characters are 256 UTF-16 units: allowed; 129 are not.
        let astral_ok = "😀".repeat(128);
        let astral_long = "😀".repeat(129);
        let json =
            format!(r#"{{"event":"join","data":{{"rooms":["{astral_ok}","{astral_long}"]}}}}"#);
        assert_eq!(rooms_of(&json), vec![astral_ok]);
    }

    #[test]
    fn server_message_shapes() {
        let mut b = BytesMut::new();
        write_server_message(&mut b, "x", Some(&serde_json::json!({"k":1}))).unwrap();
        assert_eq!(&b[..], br#"{"event":"x","data":{"k":1}}"#);
        let mut b = BytesMut::new();
        write_server_message::<()>(&mut b, "x", None).unwrap();
        assert_eq!(&b[..], br#"{"event":"x"}"#);
        let mut b = BytesMut::new();
        write_error(&mut b, "Not authenticated");
        assert_eq!(
            &b[..],
            br#"{"event":"error","data":{"message":"Not authenticated"}}"#
        );
        let c = Connected {
            id: "i",
            user_id: None,
            time: "t",
            server_public_key: None,
            salt: None,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"id":"i","time":"t"}"#
        );
        let c = Connected {
            id: "i",
            user_id: Some("u"),
            time: "t",
            server_public_key: Some("k"),
            salt: Some("s"),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"id":"i","userId":"u","time":"t","serverPublicKey":"k","salt":"s"}"#
        );
    }

    #[test]
    fn iso_time_matches_javascript() {
        assert_eq!(iso8601_millis(0), "1970-01-01T00:00:00.000Z");
        // new Date(1764110343123).toISOString()
        assert_eq!(
            iso8601_millis(1_764_110_343_123),
            "2025-11-25T22:39:03.123Z"
        );
        assert_eq!(iso8601_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
