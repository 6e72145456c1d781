//! The Redis bridge's wire format, sans-io: channel names, the envelope
//! that Ignis servers and emitters publish (parsing it, encoding it exactly
//! as the reference's `JSON.stringify` does), and the client frame an
//! accepted envelope turns into.
//!
//! Parsing borrows from the payload: `data` is never turned into a tree,
//! it is located once and copied byte for byte into the client frame.
//!
//! Type rules are checked on every field that is present, whatever the
//! envelope's `type`; the `type` only decides which fields are *used*
//! (`target` is ignored on `broadcast`, `exclude` on `client` and `user`).

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The one channel every server SUBSCRIBEs to.
pub const BROADCAST_CHANNEL: &str = "ws:broadcast";
/// Prefix of a room's channel; the room name follows unescaped.
pub const ROOM_PREFIX: &str = "ws:room:";
/// Prefix of a client's channel; the client id follows unescaped.
pub const CLIENT_PREFIX: &str = "ws:client:";
/// Prefix of a user's channel; the user id follows unescaped.
pub const USER_PREFIX: &str = "ws:user:";
/// Channels a server SUBSCRIBEs to.
pub const SUBSCRIBE_CHANNELS: [&str; 1] = [BROADCAST_CHANNEL];
/// Patterns a server PSUBSCRIBEs to.
pub const SUBSCRIBE_PATTERNS: [&str; 3] = ["ws:room:*", "ws:client:*", "ws:user:*"];
/// The `serverId` of the reference's `WebSocketEmitter` (and of ours).
pub const EMITTER_SERVER_ID: &str = "emitter";

/// Who an envelope is addressed to: its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Client,
    User,
    Room,
    Broadcast,
}

impl Kind {
    /// Every kind, in the order of [`crate::bridge::kind_index`].
    pub const ALL: [Kind; 4] = [Kind::Client, Kind::User, Kind::Room, Kind::Broadcast];

    /// The `type` string on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Client => "client",
            Kind::User => "user",
            Kind::Room => "room",
            Kind::Broadcast => "broadcast",
        }
    }

    /// The kind whose wire `type` is exactly `s` (case-sensitive, as the
    /// reference compares with `===`).
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "client" => Some(Kind::Client),
            "user" => Some(Kind::User),
            "room" => Some(Kind::Room),
            "broadcast" => Some(Kind::Broadcast),
            _ => None,
        }
    }

    /// Whether an envelope of this kind is meaningless without `target`.
    pub const fn needs_target(self) -> bool {
        !matches!(self, Kind::Broadcast)
    }

    /// Whether `exclude` applies to this kind.
    pub const fn honours_exclude(self) -> bool {
        matches!(self, Kind::Room | Kind::Broadcast)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to deliver locally, borrowed from the payload.
#[derive(Debug)]
pub struct Envelope<'a> {
    pub server_id: Cow<'a, str>,
    pub kind: Kind,
    /// Always `Some` for client, user and room; always `None` for broadcast
    /// (a broadcast's `target` is not used for routing).
    pub target: Option<Cow<'a, str>>,
    pub event: Cow<'a, str>,
    /// The raw JSON text of `data`: `None` when the key was absent, the text
    /// `null` when it was `null`.
    pub data: Option<&'a RawValue>,
    /// Client ids not to deliver to; empty unless room or broadcast.
    pub exclude: Vec<Cow<'a, str>>,
}

/// Why an envelope from Redis was dropped; one metric label each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum DropReason {
    #[error("envelope is larger than the limit")]
    TooLarge,
    #[error("envelope is not valid JSON")]
    BadJson,
    #[error("envelope is not a JSON object")]
    NotAnObject,
    #[error("envelope has no string `serverId`")]
    MissingServerId,
    #[error("envelope has no string `event`")]
    MissingEvent,
    #[error("envelope has no known `type`")]
    UnknownType,
    #[error("envelope of this `type` has no `target`")]
    MissingTarget,
    #[error("envelope has a field of the wrong JSON type")]
    BadFieldType,
}

impl DropReason {
    /// Every reason, in a fixed order (for metric arrays).
    pub const ALL: [DropReason; 8] = [
        DropReason::TooLarge,
        DropReason::BadJson,
        DropReason::NotAnObject,
        DropReason::MissingServerId,
        DropReason::MissingEvent,
        DropReason::UnknownType,
        DropReason::MissingTarget,
        DropReason::BadFieldType,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::TooLarge => "too_large",
            DropReason::BadJson => "bad_json",
            DropReason::NotAnObject => "not_an_object",
            DropReason::MissingServerId => "missing_server_id",
            DropReason::MissingEvent => "missing_event",
            DropReason::UnknownType => "unknown_type",
            DropReason::MissingTarget => "missing_target",
            DropReason::BadFieldType => "bad_field_type",
        }
    }
}

/// Parse one envelope as received from Redis. Never panics; any input that
/// the rules reject yields the reason it was rejected for.
pub fn parse(payload: &[u8], max_len: usize) -> Result<Envelope<'_>, DropReason> {
    if payload.len() > max_len {
        return Err(DropReason::TooLarge);
    }
    let fields: Fields<'_> = match serde_json::from_slice(payload) {
        Ok(fields) => fields,
        Err(_) => return Err(classify_unparsable(payload)),
    };
    fields.into_envelope()
}

/// The top-level visitor accepts only an object, so it fails both on bad
/// JSON and on valid JSON of another type; only the second is "not an
/// object". Runs on the error path only. Skipping a value does not check
/// UTF-8 inside strings, hence the separate check.
fn classify_unparsable(payload: &[u8]) -> DropReason {
    let is_object = payload.trim_ascii_start().starts_with(b"{");
    let is_json = std::str::from_utf8(payload).is_ok()
        && serde_json::from_slice::<IgnoredAny>(payload).is_ok();
    if is_json && !is_object {
        DropReason::NotAnObject
    } else {
        DropReason::BadJson
    }
}

impl Envelope<'_> {
    /// Write the client frame's JSON payload `{"event":E,"data":D}` (or
    /// `{"event":E}`) into `dst`.
    pub fn write_client_message(&self, dst: &mut BytesMut) {
        let data = self.data.map(RawValue::get);
        dst.reserve(
            r#"{"event":,"data":}"#.len() + json_str_len(&self.event) + data.map_or(0, str::len),
        );
        dst.put_slice(br#"{"event":"#);
        put_json_str(dst, &self.event);
        if let Some(data) = data {
            dst.put_slice(br#","data":"#);
            dst.put_slice(data.as_bytes());
        }
        dst.put_u8(b'}');
    }
}

/// The channel a message of this kind and target goes to. A broadcast
/// ignores `target`; a missing target of another kind leaves the bare
/// prefix (a channel every server drops, so callers check first).
pub fn channel(kind: Kind, target: Option<&str>) -> String {
    let prefix = match kind {
        Kind::Broadcast => return BROADCAST_CHANNEL.to_owned(),
        Kind::Client => CLIENT_PREFIX,
        Kind::User => USER_PREFIX,
        Kind::Room => ROOM_PREFIX,
    };
    let target = target.unwrap_or_default();
    let mut channel = String::with_capacity(prefix.len() + target.len());
    channel.push_str(prefix);
    channel.push_str(target);
    channel
}

/// Serialize an envelope exactly as the reference's `JSON.stringify` would
/// (key order, omissions). `data_json` is already-serialized JSON (`None` =
/// key omitted) and is copied verbatim; `exclude` `None` = key omitted
/// (`Some(&[])` = `"exclude":[]`).
pub fn encode(
    server_id: &str,
    kind: Kind,
    target: Option<&str>,
    event: &str,
    data_json: Option<&[u8]>,
    exclude: Option<&[&str]>,
) -> Vec<u8> {
    let len = r#"{"serverId":,"type":"","target":,"event":,"data":,"exclude":[]}"#.len()
        + json_str_len(server_id)
        + kind.as_str().len()
        + target.map_or(0, json_str_len)
        + json_str_len(event)
        + data_json.map_or(0, <[u8]>::len)
        + exclude.map_or(0, |ids| {
            ids.iter().map(|id| json_str_len(id)).sum::<usize>() + ids.len().saturating_sub(1)
        });
    let mut out = Vec::with_capacity(len);
    out.put_slice(br#"{"serverId":"#);
    put_json_str(&mut out, server_id);
    out.put_slice(br#","type":""#);
    out.put_slice(kind.as_str().as_bytes());
    out.put_u8(b'"');
    if let Some(target) = target {
        out.put_slice(br#","target":"#);
        put_json_str(&mut out, target);
    }
    out.put_slice(br#","event":"#);
    put_json_str(&mut out, event);
    if let Some(data) = data_json {
        out.put_slice(br#","data":"#);
        out.put_slice(data);
    }
    if let Some(ids) = exclude {
        out.put_slice(br#","exclude":["#);
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            put_json_str(&mut out, id);
        }
        out.put_u8(b']');
    }
    out.put_u8(b'}');
    out
}

/// The escape JavaScript's `JSON.stringify` uses for byte `b`, if any: the
/// reference's output is the contract, so match it rather than any other
/// valid escaping (it escapes only `"`, `\` and C0 controls, short forms
/// where they exist, lowercase hex otherwise; never `/` or non-ASCII).
fn escape(b: u8) -> Option<&'static [u8]> {
    const CONTROL: [&[u8]; 32] = [
        b"\\u0000", b"\\u0001", b"\\u0002", b"\\u0003", b"\\u0004", b"\\u0005", b"\\u0006",
        b"\\u0007", b"\\b", b"\\t", b"\\n", b"\\u000b", b"\\f", b"\\r", b"\\u000e", b"\\u000f",
        b"\\u0010", b"\\u0011", b"\\u0012", b"\\u0013", b"\\u0014", b"\\u0015", b"\\u0016",
        b"\\u0017", b"\\u0018", b"\\u0019", b"\\u001a", b"\\u001b", b"\\u001c", b"\\u001d",
        b"\\u001e", b"\\u001f",
    ];
    match b {
        b'"' => Some(b"\\\""),
        b'\\' => Some(b"\\\\"),
        _ => CONTROL.get(usize::from(b)).copied(),
    }
}

/// Length of `s` as a JSON string literal, quotes included.
fn json_str_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| escape(b).map_or(1, <[u8]>::len))
        .sum::<usize>()
}

fn put_json_str<B: BufMut>(dst: &mut B, s: &str) {
    let bytes = s.as_bytes();
    dst.put_u8(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if let Some(esc) = escape(b) {
            // Escapable bytes are ASCII, so `run..i` never splits a char.
            dst.put_slice(&bytes[run..i]);
            dst.put_slice(esc);
            run = i + 1;
        }
    }
    dst.put_slice(&bytes[run..]);
    dst.put_u8(b'"');
}

/// The envelope's known keys, each still raw JSON; type rules are applied
/// afterwards so that a wrong type is a [`DropReason`], not a parse error.
#[derive(Default)]
struct Fields<'a> {
    server_id: Option<&'a RawValue>,
    kind: Option<&'a RawValue>,
    target: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    exclude: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    fn into_envelope(self) -> Result<Envelope<'a>, DropReason> {
        let server_id = required(self.server_id, DropReason::MissingServerId)?;
        let event = required(self.event, DropReason::MissingEvent)?;
        let kind = Kind::parse(&required(self.kind, DropReason::UnknownType)?)
            .ok_or(DropReason::UnknownType)?;
        let target = match self.target {
            None if kind.needs_target() => return Err(DropReason::MissingTarget),
            None => None,
            Some(raw) => Some(text(raw)?.ok_or(DropReason::BadFieldType)?),
        };
        let exclude = match self.exclude {
            None => Vec::new(),
            Some(raw) => string_array(raw)?,
        };
        Ok(Envelope {
            server_id,
            kind,
            target: target.filter(|_| kind.needs_target()),
            event,
            data: self.data,
            exclude: if kind.honours_exclude() {
                exclude
            } else {
                Vec::new()
            },
        })
    }
}

/// The string a key must hold, or `missing` when the key is absent or not
/// a string (a string that is not text is [`DropReason::BadJson`]).
fn required(raw: Option<&RawValue>, missing: DropReason) -> Result<Cow<'_, str>, DropReason> {
    raw.map(text).transpose()?.flatten().ok_or(missing)
}

/// The string a raw JSON value holds, `None` if it is not a string.
fn text(raw: &RawValue) -> Result<Option<Cow<'_, str>>, DropReason> {
    let s = raw.get();
    if !s.starts_with('"') {
        return Ok(None);
    }
    // The parser already validated the literal: without a backslash its
    // contents are the string itself.
    if !s.contains('\\')
        && let Some(inner) = s.get(1..s.len() - 1)
    {
        return Ok(Some(Cow::Borrowed(inner)));
    }
    // Escapes the raw scan accepts but that are not text (a lone
    // surrogate) fail here: there is no UTF-8 string to deliver.
    match serde_json::from_str::<CowStr<'_>>(s) {
        Ok(CowStr(s)) => Ok(Some(s)),
        Err(_) => Err(DropReason::BadJson),
    }
}

/// `exclude` must be an array of strings; anything else breaks the type
/// rule rather than being guessed at.
fn string_array(raw: &RawValue) -> Result<Vec<Cow<'_, str>>, DropReason> {
    if !raw.get().starts_with('[') {
        return Err(DropReason::BadFieldType);
    }
    let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| DropReason::BadJson)?;
    items
        .into_iter()
        .map(|item| text(item)?.ok_or(DropReason::BadFieldType))
        .collect()
}

/// A string that borrows from the input when it has no escapes (serde's own
/// `Cow<str>` impl always allocates).
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A key of the envelope object. Keys are matched after unescaping, as
/// `JSON.parse` does (`"server\u0049d"` is `serverId`).
enum Key {
    ServerId,
    Type,
    Target,
    Event,
    Data,
    Exclude,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "serverId" => Key::ServerId,
                    "type" => Key::Type,
                    "target" => Key::Target,
                    "event" => Key::Event,
                    "data" => Key::Data,
                    "exclude" => Key::Exclude,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut fields = Fields::default();
                // A repeated key overwrites the earlier one, as in
                // `JSON.parse`.
                while let Some(key) = map.next_key::<Key>()? {
                    let slot = match key {
                        Key::ServerId => &mut fields.server_id,
                        Key::Type => &mut fields.kind,
                        Key::Target => &mut fields.target,
                        Key::Event => &mut fields.event,
                        Key::Data => &mut fields.data,
                        Key::Exclude => &mut fields.exclude,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?);
                }
                Ok(fields)
            }
        }
        deserializer.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn ok(payload: &str) -> Envelope<'_> {
        match parse(payload.as_bytes(), MAX) {
            Ok(env) => env,
            Err(reason) => panic!("{payload} dropped: {reason:?}"),
        }
    }

    fn drop_reason(payload: &str) -> DropReason {
        match parse(payload.as_bytes(), MAX) {
            Ok(env) => panic!("{payload} accepted: {env:?}"),
            Err(reason) => reason,
        }
    }

    /// Every one of `payloads` is dropped for `reason`.
    fn assert_drops(reason: DropReason, payloads: &[&str]) {
        for payload in payloads {
            assert_eq!(drop_reason(payload), reason, "{payload}");
        }
    }

    fn client_message(env: &Envelope<'_>) -> String {
        let mut buf = BytesMut::new();
        env.write_client_message(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    /// The exact texts the reference's `WebSocketEmitter` publishes.
    pub(crate) const REF_CLIENT: &str =
        r#"{"serverId":"emitter","type":"client","target":"c1","event":"hello","data":{"x":1}}"#;
    pub(crate) const REF_USER: &str = r#"{"serverId":"emitter","type":"user","target":"u1","event":"notify","data":{"msg":"hi"}}"#;
    pub(crate) const REF_ROOM: &str = r#"{"serverId":"emitter","type":"room","target":"lobby","event":"update","data":{},"exclude":["c1","c2"]}"#;
    pub(crate) const REF_BROADCAST: &str = r#"{"serverId":"emitter","type":"broadcast","event":"global","data":{"announcement":true}}"#;

    #[test]
    fn encode_matches_reference_texts() {
        /// Kind, target, event, data, exclude, and what the reference sends.
        type Case<'a> = (
            Kind,
            Option<&'a str>,
            &'a str,
            &'a [u8],
            Option<&'a [&'a str]>,
            &'a str,
        );
        #[rustfmt::skip]
        let cases: [Case<'_>; 4] = [
            (Kind::Client, Some("c1"), "hello", br#"{"x":1}"#, None, REF_CLIENT),
            (Kind::User, Some("u1"), "notify", br#"{"msg":"hi"}"#, None, REF_USER),
            (Kind::Room, Some("lobby"), "update", b"{}", Some(&["c1", "c2"]), REF_ROOM),
            (Kind::Broadcast, None, "global", br#"{"announcement":true}"#, None, REF_BROADCAST),
        ];
        for (kind, target, event, data, exclude, want) in cases {
            let got = encode(EMITTER_SERVER_ID, kind, target, event, Some(data), exclude);
            assert_eq!(std::str::from_utf8(&got).unwrap(), want);
        }
    }

    #[test]
    fn encode_omits_undefined_keys_and_keeps_empty_exclude() {
        let no_data = encode("s", Kind::Room, Some("r"), "e", None, None);
        assert_eq!(
            no_data,
            br#"{"serverId":"s","type":"room","target":"r","event":"e"}"#
        );
        let empty = encode("s", Kind::Room, Some("r"), "e", Some(b"null"), Some(&[]));
        assert_eq!(
            empty,
            br#"{"serverId":"s","type":"room","target":"r","event":"e","data":null,"exclude":[]}"#
        );
    }

    #[test]
    fn encode_escapes_like_json_stringify() {
        let got = encode(
            "s\"\\",
            Kind::Client,
            Some("a/b\u{7f}é😀"),
            "\u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f}",
            None,
            Some(&["x\"y"]),
        );
        // `JSON.stringify` output for the same strings (checked in Node).
        let want = concat!(
            r#"{"serverId":"s\"\\","type":"client","target":"a/b"#,
            "\u{7f}",
            r#"é😀","event":"\u0000\b\t\n\u000b\f\r\u001f","exclude":["x\"y"]}"#
        );
        assert_eq!(std::str::from_utf8(&got).unwrap(), want);
        // And serde_json agrees on every one of them, so the two escapers
        // cannot drift apart.
        for s in ["s\"\\", "a/b\u{7f}é😀", "\u{0}\u{8}\t\n\u{b}\u{c}\r\u{1f}"] {
            let mut mine = Vec::new();
            put_json_str(&mut mine, s);
            assert_eq!(mine, serde_json::to_vec(s).unwrap());
            assert_eq!(mine.len(), json_str_len(s));
        }
    }

    #[test]
    fn every_control_byte_escapes_like_serde_json() {
        for b in 0u8..=0x7f {
            let s = char::from(b).to_string();
            let mut mine = Vec::new();
            put_json_str(&mut mine, &s);
            assert_eq!(mine, serde_json::to_vec(&s).unwrap(), "byte {b:#x}");
            assert_eq!(mine.len(), json_str_len(&s));
        }
    }

    #[test]
    fn encode_preallocates_enough() {
        let out = encode(
            "\n\n",
            Kind::Broadcast,
            None,
            "\"\"",
            Some(b"[1,2,3]"),
            Some(&["\t", "b"]),
        );
        assert!(out.capacity() >= out.len());
        assert_eq!(out.capacity(), out.len() + r#","target":"#.len());
    }

    #[test]
    fn parses_the_reference_texts() {
        let env = ok(REF_CLIENT);
        assert_eq!(env.server_id, "emitter");
        assert_eq!(env.kind, Kind::Client);
        assert_eq!(env.target.as_deref(), Some("c1"));
        assert_eq!(env.event, "hello");
        assert_eq!(env.data.map(RawValue::get), Some(r#"{"x":1}"#));
        assert!(env.exclude.is_empty());

        let env = ok(REF_USER);
        assert_eq!((env.kind, env.target.as_deref()), (Kind::User, Some("u1")));

        let env = ok(REF_ROOM);
        assert_eq!(env.kind, Kind::Room);
        assert_eq!(env.target.as_deref(), Some("lobby"));
        assert_eq!(env.exclude, ["c1", "c2"]);
        assert_eq!(client_message(&env), r#"{"event":"update","data":{}}"#);

        let env = ok(REF_BROADCAST);
        assert_eq!((env.kind, env.target.as_deref()), (Kind::Broadcast, None));
        assert_eq!(
            client_message(&env),
            r#"{"event":"global","data":{"announcement":true}}"#
        );
    }

    #[test]
    fn borrows_plain_strings() {
        let env = ok(REF_ROOM);
        assert!(matches!(env.server_id, Cow::Borrowed(_)));
        assert!(matches!(env.event, Cow::Borrowed(_)));
        assert!(matches!(env.target, Some(Cow::Borrowed(_))));
        assert!(env.exclude.iter().all(|e| matches!(e, Cow::Borrowed(_))));
    }

    #[test]
    fn round_trips_every_kind() {
        for kind in Kind::ALL {
            let target = kind.needs_target().then_some("t \"1\"\\é");
            let exclude: &[&str] = &["a", "b\nc"];
            let bytes = encode(
                "srv-1",
                kind,
                target,
                "ev\u{1}",
                Some(br#"{"k":[1,"\u00e9"]}"#),
                Some(exclude),
            );
            let env = parse(&bytes, MAX).unwrap();
            assert_eq!(env.server_id, "srv-1");
            assert_eq!(env.kind, kind);
            assert_eq!(env.target.as_deref(), target);
            assert_eq!(env.event, "ev\u{1}");
            assert_eq!(env.data.unwrap().get(), r#"{"k":[1,"\u00e9"]}"#);
            let want: &[&str] = if kind.honours_exclude() { exclude } else { &[] };
            assert_eq!(env.exclude, want);
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
    }

    #[test]
    fn channels() {
        assert_eq!(channel(Kind::Client, Some("c1")), "ws:client:c1");
        assert_eq!(channel(Kind::User, Some("u:1")), "ws:user:u:1");
        assert_eq!(channel(Kind::Room, Some("a*b c")), "ws:room:a*b c");
        assert_eq!(channel(Kind::Broadcast, None), BROADCAST_CHANNEL);
        assert_eq!(channel(Kind::Broadcast, Some("x")), BROADCAST_CHANNEL);
        assert_eq!(channel(Kind::Room, None), ROOM_PREFIX);
        for kind in [Kind::Client, Kind::User, Kind::Room] {
            let ch = channel(kind, Some("x"));
            let covered = SUBSCRIBE_PATTERNS
                .iter()
                .any(|p| ch.starts_with(p.trim_end_matches('*')));
            assert!(covered, "{ch}");
        }
    }

    #[test]
    fn drop_reasons_have_distinct_labels() {
        let labels: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), DropReason::ALL.len());
        assert_eq!(DropReason::TooLarge.as_str(), "too_large");
        assert_eq!(DropReason::BadFieldType.as_str(), "bad_field_type");
        for r in DropReason::ALL {
            assert!(!r.to_string().is_empty());
        }
    }

    #[test]
    fn too_large() {
        let data = "x".repeat(MAX);
        let payload =
            format!(r#"{{"serverId":"s","type":"broadcast","event":"e","data":"{data}"}}"#);
        assert_eq!(
            parse(payload.as_bytes(), MAX).unwrap_err(),
            DropReason::TooLarge
        );
        // The limit is inclusive, and checked before anything else.
        assert!(parse(payload.as_bytes(), payload.len()).is_ok());
        assert_eq!(parse(b"{", 0).unwrap_err(), DropReason::TooLarge);
    }

    #[test]
    fn bad_json() {
        assert_drops(
            DropReason::BadJson,
            &[
                "",
                " ",
                "{",
                r#"{"serverId":"s","type":"broadcast","event":"e""#,
                r#"{"serverId":"s","type":"broadcast","event":"e"} x"#,
                r#"{"serverId":"s","type":"broadcast","event":"e",}"#,
                r#"{"serverId":'s'}"#,
                "[1,2",
                "nul",
                r#"{"serverId":"s","type":"broadcast","event":"e","data":{"a":}}"#,
                "[\"unterminated",
                // A lone surrogate is valid JSON syntax but not text.
                r#"{"serverId":"\ud800","type":"broadcast","event":"e"}"#,
            ],
        );
        // Not UTF-8, inside a string the top-level skip would not check.
        for payload in [&b"{\"serverId\":\"\xff\"}"[..], b"[\"\xff\"]", b"\"\xc3\""] {
            assert_eq!(parse(payload, MAX).unwrap_err(), DropReason::BadJson);
        }
    }

    #[test]
    fn data_that_is_not_utf8_is_bad_json() {
        // It would be copied into a WebSocket text frame, which must be
        // UTF-8.
        let payload =
            b"{\"serverId\":\"s\",\"type\":\"broadcast\",\"event\":\"e\",\"data\":[\"\xc3\x28\"]}";
        assert_eq!(parse(payload, MAX).unwrap_err(), DropReason::BadJson);
    }

    #[test]
    fn not_an_object() {
        assert_drops(
            DropReason::NotAnObject,
            &[
                "null",
                "[]",
                "3",
                r#""str""#,
                "true",
                " [1, {}] ",
                "[{\"serverId\":\"s\"}]",
            ],
        );
    }

    #[test]
    fn missing_server_id() {
        assert_drops(
            DropReason::MissingServerId,
            &[
                r#"{"type":"broadcast","event":"e"}"#,
                r#"{"serverId":7,"type":"broadcast","event":"e"}"#,
                r#"{"serverId":null,"type":"broadcast","event":"e"}"#,
                r#"{"serverId":["s"],"type":"broadcast","event":"e"}"#,
                r#"{"ServerId":"s","type":"broadcast","event":"e"}"#,
            ],
        );
    }

    #[test]
    fn missing_event() {
        assert_drops(
            DropReason::MissingEvent,
            &[
                r#"{"serverId":"s","type":"broadcast"}"#,
                r#"{"serverId":"s","type":"broadcast","event":null}"#,
                r#"{"serverId":"s","type":"broadcast","event":1}"#,
                r#"{"serverId":"s","type":"broadcast","event":{}}"#,
            ],
        );
    }

    #[test]
    fn empty_event_is_accepted() {
        let env = ok(r#"{"serverId":"s","type":"broadcast","event":""}"#);
        assert_eq!(env.event, "");
        assert_eq!(client_message(&env), r#"{"event":""}"#);
    }

    #[test]
    fn unknown_type() {
        assert_drops(
            DropReason::UnknownType,
            &[
                r#"{"serverId":"s","event":"e"}"#,
                r#"{"serverId":"s","type":"CLIENT","target":"c","event":"e"}"#,
                r#"{"serverId":"s","type":"Broadcast","event":"e"}"#,
                r#"{"serverId":"s","type":"rooms","target":"r","event":"e"}"#,
                r#"{"serverId":"s","type":"","event":"e"}"#,
                r#"{"serverId":"s","type":null,"event":"e"}"#,
                r#"{"serverId":"s","type":3,"event":"e"}"#,
            ],
        );
    }

    #[test]
    fn missing_target() {
        for kind in ["client", "user", "room"] {
            let payload = format!(r#"{{"serverId":"s","type":"{kind}","event":"e","data":1}}"#);
            assert_eq!(
                drop_reason(&payload),
                DropReason::MissingTarget,
                "{payload}"
            );
        }
        // A broadcast needs none, and ignores one it is given.
        let env = ok(r#"{"serverId":"s","type":"broadcast","target":"x","event":"e"}"#);
        assert_eq!(env.target, None);
    }

    #[test]
    fn bad_field_type() {
        assert_drops(
            DropReason::BadFieldType,
            &[
                r#"{"serverId":"s","type":"client","target":5,"event":"e"}"#,
                r#"{"serverId":"s","type":"room","target":null,"event":"e"}"#,
                r#"{"serverId":"s","type":"user","target":["u"],"event":"e"}"#,
                r#"{"serverId":"s","type":"broadcast","target":5,"event":"e"}"#,
                r#"{"serverId":"s","type":"room","target":"r","event":"e","exclude":"abc"}"#,
                r#"{"serverId":"s","type":"room","target":"r","event":"e","exclude":[1]}"#,
                r#"{"serverId":"s","type":"room","target":"r","event":"e","exclude":["a",null]}"#,
                r#"{"serverId":"s","type":"room","target":"r","event":"e","exclude":[["a"]]}"#,
                r#"{"serverId":"s","type":"room","target":"r","event":"e","exclude":{"length":1}}"#,
                r#"{"serverId":"s","type":"broadcast","event":"e","exclude":null}"#,
                r#"{"serverId":"s","type":"broadcast","event":"e","exclude":true}"#,
                // Ignored on client/user, but still has to be well-typed.
                r#"{"serverId":"s","type":"client","target":"c","event":"e","exclude":"abc"}"#,
                r#"{"serverId":"s","type":"user","target":"u","event":"e","exclude":[1]}"#,
            ],
        );
    }

    #[test]
    fn checks_run_in_a_fixed_order() {
        // Several rules broken at once: the first in `DropReason` order wins,
        // whatever the key order.
        assert_eq!(
            drop_reason(r#"{"exclude":1,"type":"x","event":2,"serverId":3}"#),
            DropReason::MissingServerId
        );
        assert_eq!(
            drop_reason(r#"{"exclude":1,"type":"x","serverId":"s"}"#),
            DropReason::MissingEvent
        );
        assert_eq!(
            drop_reason(r#"{"exclude":1,"type":"x","serverId":"s","event":"e"}"#),
            DropReason::UnknownType
        );
        assert_eq!(
            drop_reason(r#"{"exclude":1,"type":"room","serverId":"s","event":"e"}"#),
            DropReason::MissingTarget
        );
    }

    #[test]
    fn exclude_is_ignored_but_allowed_on_client_and_user() {
        let env =
            ok(r#"{"serverId":"s","type":"client","target":"c","event":"e","exclude":["c"]}"#);
        assert!(env.exclude.is_empty());
        let env = ok(r#"{"serverId":"s","type":"user","target":"u","event":"e","exclude":[]}"#);
        assert!(env.exclude.is_empty());
        let env = ok(r#"{"serverId":"s","type":"broadcast","event":"e","exclude":["a","b"]}"#);
        assert_eq!(env.exclude, ["a", "b"]);
        let env = ok(r#"{"serverId":"s","type":"room","target":"r","event":"e","exclude":[]}"#);
        assert!(env.exclude.is_empty());
    }

    #[test]
    fn data_absent_null_zero_and_nested() {
        let env = ok(r#"{"serverId":"s","type":"broadcast","event":"e"}"#);
        assert!(env.data.is_none());
        assert_eq!(client_message(&env), r#"{"event":"e"}"#);

        let env = ok(r#"{"serverId":"s","type":"broadcast","event":"e","data":null}"#);
        assert_eq!(env.data.map(RawValue::get), Some("null"));
        assert_eq!(client_message(&env), r#"{"event":"e","data":null}"#);

        let env = ok(r#"{"serverId":"s","type":"broadcast","event":"e","data":0}"#);
        assert_eq!(client_message(&env), r#"{"event":"e","data":0}"#);

        let env = ok(r#"{"serverId":"s","type":"broadcast","event":"e","data":false}"#);
        assert_eq!(client_message(&env), r#"{"event":"e","data":false}"#);

        let env = ok(r#"{"serverId":"s","type":"broadcast","event":"e","data":""}"#);
        assert_eq!(client_message(&env), r#"{"event":"e","data":""}"#);

        // Escapes, raw and escaped unicode, an escaped solidus, a number in
        // exponent form: all copied exactly, never re-serialized.
        let data = r#"{"a\"b":"line\nbreak \u00e9 é 😀 \ud83d\ude00 \/","n":[1.50,-0,1e2,{"deep":[[[]]]}],"z":null}"#;
        let payload = format!(r#"{{"serverId":"s","type":"broadcast","event":"e","data":{data}}}"#);
        let env = ok(&payload);
        assert_eq!(env.data.unwrap().get(), data);
        assert_eq!(
            client_message(&env),
            format!(r#"{{"event":"e","data":{data}}}"#)
        );
    }

    #[test]
    fn data_is_trimmed_of_surrounding_whitespace() {
        let env = ok(
            "{\"serverId\":\"s\",\"type\":\"broadcast\",\"event\":\"e\",\"data\" : \n [ 1 , 2 ] \t}",
        );
        assert_eq!(client_message(&env), r#"{"event":"e","data":[ 1 , 2 ]}"#);
    }

    #[test]
    fn deeply_nested_data_passes() {
        let depth = 10_000;
        let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let payload = format!(r#"{{"serverId":"s","type":"broadcast","event":"e","data":{data}}}"#);
        let env = ok(&payload);
        assert_eq!(env.data.unwrap().get(), data);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let env = ok(
            r#"{"serverId":"s\u0031","type":"room","target":"lob\"by\\ \u00e9\ud83d\ude00","event":"up\/date\n","exclude":["c\u0031","c2"]}"#,
        );
        assert_eq!(env.server_id, "s1");
        assert_eq!(env.target.as_deref(), Some("lob\"by\\ é😀"));
        assert_eq!(env.event, "up/date\n");
        assert_eq!(env.exclude, ["c1", "c2"]);
        // The frame re-escapes the event as `JSON.stringify` would.
        assert_eq!(client_message(&env), r#"{"event":"up/date\n"}"#);
    }

    #[test]
    fn escaped_keys_and_unknown_keys() {
        let env = ok(
            r#"{"server\u0049d":"s","t\u0079pe":"client","extra":{"a":[1,2,{"b":null}]},"target":"c","event":"e","more":[]}"#,
        );
        assert_eq!(env.server_id, "s");
        assert_eq!(env.kind, Kind::Client);
    }

    #[test]
    fn last_duplicate_key_wins() {
        let env = ok(
            r#"{"serverId":"a","serverId":"b","type":"user","target":"u","event":"e","data":1,"data":2}"#,
        );
        assert_eq!(env.server_id, "b");
        assert_eq!(env.data.unwrap().get(), "2");
        assert_eq!(
            drop_reason(r#"{"serverId":"a","type":"broadcast","event":"e","event":null}"#),
            DropReason::MissingEvent
        );
    }

    #[test]
    fn one_bad_envelope_does_not_affect_the_next() {
        let good = REF_ROOM.as_bytes();
        let bad: [&[u8]; 4] = [b"{", b"[]", br#"{"serverId":1}"#, b"\xff\xfe"];
        for b in bad {
            assert!(parse(b, MAX).is_err());
            let env = parse(good, MAX).unwrap();
            assert_eq!(env.exclude, ["c1", "c2"]);
        }
    }

    #[test]
    fn whitespace_around_the_object_is_fine() {
        let payload = format!(" \n\t{REF_USER}\r\n ");
        assert_eq!(ok(&payload).kind, Kind::User);
    }
}
