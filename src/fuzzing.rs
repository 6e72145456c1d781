//! What the fuzz targets check, as plain functions: `fuzz/fuzz_targets/*`
//! call them in one line, and `tests/fuzz_corpus.rs` replays the checked-in
//! corpora and every past crash through the same functions in `cargo test`.
//! Each panics when the property it checks breaks. Not a stable API.

use std::io::{self, Cursor, Read, Write};

use bytes::BytesMut;

use crate::bridge::envelope;
use crate::proto::frame::{self, FrameError, Message, OpCode, Role, decode_frame, encode_frame};
use crate::proto::handshake::{
    HandshakeLimits, Request, accept_response, error_response, parse_request,
};

/// One fuzz target's check.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, for replaying corpora.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame_parser", frame_parser),
    ("frame_differential", frame_differential),
    ("frame_roundtrip", frame_roundtrip),
    ("handshake", handshake_request),
    ("client_message", client_message),
    ("redis_envelope", redis_envelope),
    ("redis_replies", redis_replies),
    ("publish_head", publish_head),
    ("room_pattern", room_pattern),
    ("tls_records", tls_records),
];

type Outcome = (Vec<Message>, Option<FrameError>);

fn decode_all<'a>(role: Role, max: usize, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    frame::decode_chunks(role, max, chunks, false)
}

/// Chunk lengths from a tiny xorshift seeded by one input byte, so the
/// fuzzer steers (and minimizes) the split points.
fn chunks(input: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed).wrapping_mul(0x9E37_79B9) | 1;
    let max_chunk = usize::from(seed % 32) + 1;
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state as usize % max_chunk + 1).min(rest.len());
        let (head, tail) = rest.split_at(len);
        out.push(head);
        rest = tail;
    }
    out
}

/// `frame_parser`: the streaming decoder never panics and decodes the same
/// messages (and the same error) however the bytes are split into reads.
/// First byte: split seed, role (bit 7) and size limit (bit 6).
pub fn frame_parser(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let role = if seed & 0x80 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = if seed & 0x40 == 0 { 1 << 20 } else { 64 };
    let whole = decode_all(role, max, [input]);
    let split = decode_all(role, max, chunks(input, seed));
    assert_eq!(whole, split, "decoding depends on read boundaries");
    let mut buf = BytesMut::from(input);
    while let Ok(Some(_)) = decode_frame(&mut buf, role, max) {}
}

/// A message as both implementations report it.
#[derive(Debug, PartialEq, Eq)]
enum Msg {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, Vec<u8>)>),
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Everything decoded; more input could follow.
    Incomplete,
    /// The stream broke RFC 6455 (or a size limit).
    Rejected,
    /// A close frame ended the stream.
    Closed,
}

fn ours(data: &[u8], max: usize) -> (Vec<Msg>, End, Option<FrameError>) {
    let (messages, err) = decode_all(Role::Server, max, [data]);
    let mut out = Vec::new();
    for m in messages {
        let closed = matches!(m, Message::Close(_));
        out.push(match m {
            Message::Text(p) => Msg::Text(p.to_vec()),
            Message::Binary(p) => Msg::Binary(p.to_vec()),
            Message::Ping(p) => Msg::Ping(p.to_vec()),
            Message::Pong(p) => Msg::Pong(p.to_vec()),
            Message::Close(c) => Msg::Close(c.map(|c| (c.code, c.reason.to_vec()))),
        });
        if closed {
            return (out, End::Closed, None);
        }
    }
    match err {
        Some(e) => (out, End::Rejected, Some(e)),
        None => (out, End::Incomplete, None),
    }
}

/// The input as a socket: reads it, then "would block" (so tungstenite
/// reports a clean end of input, not a reset); writes vanish.
struct Replay(Cursor<Vec<u8>>);

impl Read for Replay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.0.read(buf)? {
            0 => Err(io::ErrorKind::WouldBlock.into()),
            n => Ok(n),
        }
    }
}

impl Write for Replay {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn theirs(data: &[u8], max: usize) -> (Vec<Msg>, End) {
    use tungstenite::protocol::{Role as TRole, WebSocket, WebSocketConfig};
    use tungstenite::{Error, Message as TMessage};
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let mut ws = WebSocket::from_raw_socket(
        Replay(Cursor::new(data.to_vec())),
        TRole::Server,
        Some(config),
    );
    let mut out = Vec::new();
    loop {
        match ws.read() {
            Ok(TMessage::Text(t)) => out.push(Msg::Text(t.as_bytes().to_vec())),
            Ok(TMessage::Binary(b)) => out.push(Msg::Binary(b.to_vec())),
            Ok(TMessage::Ping(p)) => out.push(Msg::Ping(p.to_vec())),
            Ok(TMessage::Pong(p)) => out.push(Msg::Pong(p.to_vec())),
            Ok(TMessage::Close(c)) => {
                out.push(Msg::Close(
                    c.map(|c| (u16::from(c.code), c.reason.as_bytes().to_vec())),
                ));
                return (out, End::Closed);
            }
            Ok(TMessage::Frame(_)) => {}
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                return (out, End::Incomplete);
            }
            Err(_) => return (out, End::Rejected),
        }
    }
}

/// `frame_differential`: the same client bytes through our decoder and
/// tungstenite's `WebSocket` (server role, same size limit). Both must
/// deliver the same messages and agree on where the stream ends: cleanly,
/// by a close frame, or by a protocol error. One difference is by design:
/// we fail fast (RFC 6455 §8.1, §10.7) — an unmasked or oversized frame is
/// refused from its header, invalid UTF-8 as soon as the bytes received
/// cannot start a valid sequence — while tungstenite first reads the whole
/// frame or message. So where we refuse and tungstenite waits for more,
/// tungstenite gets the rest (zeros) and must then refuse too, having
/// delivered the same messages.
pub fn frame_differential(data: &[u8]) {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let max = if seed & 1 == 0 { 1 << 16 } else { 125 };
    let (a, a_end, a_err) = ours(input, max);
    let (mut b, mut b_end) = theirs(input, max);
    // A close frame with a code that may not be sent: we fail the
    // connection with 1002; tungstenite replies 1002 too, but hands the
    // application its own replacement close frame. The same on the wire.
    if matches!(a_err, Some(FrameError::InvalidCloseCode(_)))
        && b_end == End::Closed
        && b.last() == Some(&Msg::Close(Some((1002, b"Protocol violation".to_vec()))))
    {
        b.pop();
        b_end = End::Rejected;
    }
    // Close code 1014 (Bad Gateway) is registered with IANA and allowed on
    // the wire; tungstenite predates the registration and treats it as a
    // protocol violation. Recorded here as tungstenite's error.
    if a_end == End::Closed
        && b_end == End::Closed
        && matches!(a.last(), Some(Msg::Close(Some((1014, _)))))
        && b.last() == Some(&Msg::Close(Some((1002, b"Protocol violation".to_vec()))))
        && a[..a.len() - 1] == b[..b.len() - 1]
    {
        return;
    }
    if a_end == End::Rejected && b_end == End::Incomplete {
        // Invalid UTF-8 in a text frame still arriving: tungstenite waits
        // for the frame, we refuse its received part. Only right if that
        // part really is invalid, not merely cut inside a code point
        // (padding alone cannot tell: the zeros unmask to key bytes, which
        // may break an incomplete code point by chance).
        if a_err == Some(FrameError::InvalidUtf8) {
            assert!(
                text_so_far_is_dead(input),
                "we refused a text message whose received bytes are only incomplete UTF-8"
            );
        }
        let mut padded = input.to_vec();
        padded.resize(input.len() + max + 14, 0);
        let (b, b_end) = theirs(&padded, max);
        assert_eq!(
            (&a, &a_end),
            (&b, &b_end),
            "we failed fast (error {a_err:?}); tungstenite, given the rest, did not"
        );
        return;
    }
    assert_eq!(
        (&a, &a_end),
        (&b, &b_end),
        "ours (error {a_err:?}) and tungstenite disagree"
    );
}

/// Independent of our decoder (tungstenite's header parser, byte-wise
/// unmasking): whether the text message open at the end of `input`, with
/// the received part of an incomplete last frame, has bytes that cannot
/// begin valid UTF-8 (an incomplete trailing code point does not count).
/// Only meaningful for input tungstenite read without error.
fn text_so_far_is_dead(input: &[u8]) -> bool {
    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::protocol::frame::coding::{Data, OpCode as TOp};
    let mut cursor = Cursor::new(input);
    let mut text: Option<Vec<u8>> = None;
    loop {
        let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) else {
            break;
        };
        let start = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .unwrap_or(usize::MAX);
        let mut payload = input
            .get(start..end.min(input.len()))
            .unwrap_or_default()
            .to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= header.mask.map_or(0, |k| k[i % 4]);
        }
        match header.opcode {
            TOp::Data(Data::Text) => text = Some(payload),
            TOp::Data(Data::Binary) => text = None,
            TOp::Data(Data::Continue) => {
                if let Some(t) = text.as_mut() {
                    t.extend_from_slice(&payload);
                }
            }
            _ => {}
        }
        if end > input.len() {
            break;
        }
        if header.is_final && matches!(header.opcode, TOp::Data(_)) {
            text = None;
        }
        cursor.set_position(end as u64);
    }
    text.is_some_and(|t| {
        core::str::from_utf8(&t)
            .err()
            .is_some_and(|e| e.error_len().is_some())
    })
}

/// `frame_roundtrip`: encode an arbitrary valid frame (both roles), decode
/// it back: the same fin, opcode and payload, the whole buffer consumed.
pub fn frame_roundtrip(data: &[u8]) {
    let Some((&b0, rest)) = data.split_first() else {
        return;
    };
    let opcode = OpCode::ALL[usize::from(b0 % 6)];
    let masked = b0 & 0x80 != 0;
    let (mask, payload) = if masked && rest.len() >= 4 {
        ([rest[0], rest[1], rest[2], rest[3]], &rest[4..])
    } else {
        ([0; 4], rest)
    };
    let mut fin = b0 & 0x40 != 0;
    let mut payload = payload;
    if opcode.is_control() {
        fin = true;
        payload = &payload[..payload.len().min(frame::MAX_CONTROL_PAYLOAD)];
    }
    let mut buf = BytesMut::new();
    encode_frame(&mut buf, fin, opcode, payload, masked.then_some(mask));
    let role = if masked { Role::Server } else { Role::Client };
    let len = buf.len();
    let f = decode_frame(&mut buf, role, 1 << 20)
        .unwrap_or_else(|e| panic!("our own frame rejected: {e}"))
        .unwrap_or_else(|| panic!("our own {len}-byte frame is incomplete"));
    assert!(buf.is_empty(), "bytes left after one frame");
    assert_eq!(
        (f.fin, f.opcode, &f.payload[..]),
        (fin, opcode, payload),
        "frame changed on the way"
    );
}

/// `handshake`: the HTTP request-head parser never panics, a parsed head
/// lies within the input, and the responses built from it are sane.
pub fn handshake_request(data: &[u8]) {
    let limits = HandshakeLimits::default();
    match parse_request(data, &limits) {
        Ok(Some(Request::Upgrade { key, head_len, .. })) => {
            assert!(head_len <= data.len() && head_len <= limits.max_head_bytes);
            let r = accept_response(key);
            assert!(r.starts_with(b"HTTP/1.1 101 "));
        }
        Ok(Some(Request::Http { head_len, .. })) => {
            assert!(head_len <= data.len() && head_len <= limits.max_head_bytes);
        }
        Ok(None) => assert!(data.len() < limits.max_head_bytes),
        Err(e) => {
            let r = error_response(&e);
            // 4xx, or 501 for a transfer coding we do not implement.
            assert!(
                r.starts_with(b"HTTP/1.1 4") || r.starts_with(b"HTTP/1.1 501 "),
                "{e}: not a client-error response"
            );
        }
    }
}

/// The Redis subscriber's reply parser ([`crate::bridge::resp::Reader`]),
/// on whatever Redis (or something posing as it) sends: it never panics,
/// never returns a payload past its limit, and what it returns (the replies, then
/// the error that ends the connection, if any) does not depend on how the
/// bytes were split into reads. The first byte picks the split point.
pub fn redis_replies(data: &[u8]) {
    use crate::bridge::resp::{Reader, Reply, RespError};
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    const MAX_PAYLOAD: usize = 64;
    let run = |chunks: &[&[u8]]| -> Vec<Result<Reply, RespError>> {
        let mut r = Reader::new(MAX_PAYLOAD);
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c);
            loop {
                match r.parse() {
                    Ok(Some(x)) => {
                        if let Reply::Message { payload, .. } = &x {
                            assert!(payload.len() <= MAX_PAYLOAD, "a payload past the limit");
                        }
                        out.push(Ok(x));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    };
    let at = split as usize * rest.len() / 255;
    let whole = run(&[rest]);
    let parts = run(&[&rest[..at], &rest[at..]]);
    let bytes: Vec<&[u8]> = rest.chunks(1).collect();
    let one_by_one = run(&bytes);
    assert_eq!(whole, parts, "split at {at}");
    assert_eq!(whole, one_by_one, "byte by byte");
}

/// `redis_envelope`: the envelope parser never panics; what it accepts
/// yields a client message that is valid JSON with the same event, and
/// re-encoding it gives an envelope that parses to the same fields.
pub fn redis_envelope(data: &[u8]) {
    let Ok(env) = envelope::parse(data, 1 << 20) else {
        return;
    };
    let mut msg = BytesMut::new();
    env.write_client_message(&mut msg);
    // `data` goes to clients verbatim, as the publisher wrote it. It may
    // hold escapes strict parsers refuse but JavaScript's JSON.parse takes
    // (a lone surrogate `\udd00`), so the frame is checked with the same
    // raw-value rules the envelope parser applied, not a stricter parser.
    let fields: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(&msg).unwrap_or_else(|e| panic!("client message is not JSON: {e}"));
    let event: String = fields
        .get("event")
        .and_then(|e| serde_json::from_str(e.get()).ok())
        .unwrap_or_else(|| panic!("client message without a string event"));
    assert_eq!(event, env.event.as_ref());
    assert_eq!(
        fields.get("data").map(|d| d.get()),
        env.data.map(|d| d.get()),
        "data not carried verbatim"
    );
    assert_eq!(fields.len(), 1 + usize::from(env.data.is_some()));
    let exclude: Vec<&str> = env.exclude.iter().map(|s| s.as_ref()).collect();
    let again = envelope::encode(
        &env.server_id,
        env.kind,
        env.target.as_deref(),
        &env.event,
        env.data.map(|d| d.get().as_bytes()),
        (!exclude.is_empty()).then_some(&exclude[..]),
    );
    let env2 = envelope::parse(&again, 1 << 20)
        .unwrap_or_else(|e| panic!("re-encoded envelope refused: {e}"));
    assert_eq!(env2.server_id, env.server_id);
    assert_eq!(env2.kind, env.kind);
    assert_eq!(env2.target, env.target);
    assert_eq!(env2.event, env.event);
    assert_eq!(env2.data.map(|d| d.get()), env.data.map(|d| d.get()));
    assert_eq!(env2.exclude, env.exclude);
}

/// `client_message`: a real shard (in memory, no sockets) fed one client's
/// arbitrary messages: JSON text split on newlines, masked into frames,
/// optionally after a valid `authenticate`. Never panics, and afterwards
/// the room index agrees with the connection's own list of rooms.
pub fn client_message(data: &[u8]) {
    use std::time::Instant;

    use crate::config::Config;
    use crate::shard::memory::MemoryDriver;

    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let config = Config {
        room_allow: vec!["**".into()],
        ..Config::default()
    };
    let mut d = MemoryDriver::insecure(config, 4, Instant::now());
    let mut wire = BytesMut::new();
    if flags & 1 == 1 {
        encode_frame(
            &mut wire,
            true,
            OpCode::Text,
            br#"{"event":"authenticate","data":{"userId":"u"}}"#,
            Some([1, 2, 3, 4]),
        );
    }
    for msg in input.split(|&b| b == b'\n') {
        let opcode = if flags & 2 == 0 {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        encode_frame(&mut wire, true, opcode, msg, Some([9, 8, 7, 6]));
    }
    let key = d.connect(&[]);
    // Feed in a few reads, as a socket would deliver them.
    for part in chunks(&wire, flags) {
        d.send(key, part);
    }
    d.advance(std::time::Duration::from_millis(1));
    let shard = &mut d.shard;
    if let Some(conn) = shard.conn(key) {
        for m in conn.memberships() {
            assert!(
                shard
                    .rooms
                    .by_id(m.room)
                    .is_some_and(|r| r.members().get(m.slot as usize) == Some(&key)),
                "a room the connection lists does not list the connection where its membership says"
            );
        }
    }
    shard.remove(key);
    assert!(
        shard.rooms.is_empty(),
        "rooms left after the only client left"
    );
    assert!(
        shard.users.is_empty(),
        "users left after the only client left"
    );
}

/// `publish_head`: an HTTP request head as the publish endpoint sees it.
/// The first byte picks the configuration (API key on or off; whether the
/// body slots are full). Checks: the head parser never panics; a body is
/// read only for `POST /api/publish` with exactly the configured key, a
/// `Content-Length` within the limit and a free slot; every other answer is
/// complete and 4xx/503, a wrong or missing key always 401; `HEAD` answers
/// carry no body.
pub fn publish_head(data: &[u8]) {
    use crate::http::{self, PublishHead};
    const KEY: &str = "fuzz-api-key-0123456789";
    const MAX_BODY: usize = 4096;
    let Some((&cfg, head)) = data.split_first() else {
        return;
    };
    let full = cfg & 1 != 0;
    let limits = HandshakeLimits::default();
    let Ok(Some(Request::Http {
        method,
        path,
        authorization,
        content_length,
        ..
    })) = parse_request(head, &limits)
    else {
        return;
    };
    if method.eq_ignore_ascii_case("POST") && path == http::PUBLISH_PATH {
        let key_ok = http::key_matches(KEY, authorization);
        match http::publish_head(KEY, authorization, content_length, MAX_BODY, full) {
            PublishHead::ReadBody { len } => {
                assert!(key_ok, "a body is read without the right key");
                assert!(!full, "a body is read with every slot taken");
                assert_eq!(Some(len), content_length);
                assert!(len <= MAX_BODY);
            }
            PublishHead::Reply(r) => {
                let status = &r[..12.min(r.len())];
                if key_ok {
                    assert!(
                        r.starts_with(b"HTTP/1.1 4") || r.starts_with(b"HTTP/1.1 503 "),
                        "{:?}",
                        String::from_utf8_lossy(status)
                    );
                } else {
                    assert!(r.starts_with(b"HTTP/1.1 401 "), "wrong key not refused");
                }
                assert_complete_response(&r, false);
            }
        }
    } else {
        let registry = crate::metrics::Registry {
            bridge: None,
            events: None,
            shards: Vec::new(),
            started: std::time::Instant::now(),
            io_backend: "fuzz",
            max_connections: 1,
            control: Default::default(),
            draining: (cfg & 8 != 0).into(),
        };
        let at = http::Endpoints {
            ws_path: Some("/ws"),
            api_enabled: cfg & 2 != 0,
            metrics: cfg & 4 != 0,
        };
        let r = http::respond(&registry, method, path, at);
        assert_complete_response(&r, method.eq_ignore_ascii_case("HEAD"));
    }
}

/// A response head that ends, states its Content-Length, and is followed
/// by exactly that many bytes (none for `HEAD`).
fn assert_complete_response(r: &[u8], head_only: bool) {
    let Some(end) = r.windows(4).position(|w| w == b"\r\n\r\n") else {
        panic!(
            "an incomplete response head: {:?}",
            String::from_utf8_lossy(r)
        );
    };
    let Ok(head) = std::str::from_utf8(&r[..end]) else {
        panic!("a response head that is not ASCII");
    };
    let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse::<usize>().ok())
    else {
        panic!("a response without a Content-Length: {head}");
    };
    let body = r.len() - end - 4;
    assert_eq!(body, if head_only { 0 } else { len }, "{head}");
}

/// `room_pattern`: input `PATTERN \n ROOM \n USER1 \n USER2` (lossy UTF-8;
/// missing parts are empty, an empty user is "no user id"). Checks: the
/// matcher never panics; on inputs small enough for it, it agrees with
/// [`room_pattern_reference`] for no user and both users; a pattern that
/// claims [`RoomPattern::isolates_user_id`] never lets two different users
/// match the same room (the given room and one built from the pattern for
/// user 1); and the validator allows exactly what the pattern matches.
///
/// [`RoomPattern::isolates_user_id`]: crate::auth::RoomPattern::isolates_user_id
pub fn room_pattern(data: &[u8]) {
    use crate::auth::{GlobRoomValidator, RoomPattern};
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let pattern = parts.next().unwrap_or_default();
    let room = parts.next().unwrap_or_default();
    let user = |u: Option<&str>| u.filter(|u| !u.is_empty()).map(str::to_owned);
    let u1 = user(parts.next());
    let u2 = user(parts.next());
    let p = RoomPattern::parse(pattern);
    let small = pattern.chars().count() <= 64 && room.chars().count() <= 64;
    let users = [None, u1.as_deref(), u2.as_deref()];
    for u in users {
        let got = p.matches(room, u);
        if small {
            assert_eq!(
                got,
                room_pattern_reference(pattern, room, u),
                "{pattern:?} on {room:?} for {u:?}"
            );
        }
        let allowed = GlobRoomValidator::new(Vec::new()).allowed(
            u,
            &[room.to_owned()],
            Some(&[pattern.to_owned()]),
        );
        assert_eq!(
            allowed.len(),
            usize::from(got),
            "validator and pattern disagree"
        );
    }
    if p.isolates_user_id() && u1 != u2 {
        let built = instantiate(pattern, u1.as_deref().unwrap_or_default());
        for r in [room, built.as_str()] {
            assert!(
                !(p.matches(r, u1.as_deref()) && p.matches(r, u2.as_deref())),
                "{pattern:?}: {u1:?} and {u2:?} both match {r:?}"
            );
        }
    }
}

/// A room `pattern` is meant to match for `user`: the user id in place of
/// `{userId}`, `x` for `?`, nothing for `*`, `a:b` for `**`.
pub(crate) fn instantiate(pattern: &str, user: &str) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{userId}") {
            out.push_str(user);
            rest = after;
        } else if let Some(after) = rest.strip_prefix("**") {
            out.push_str("a:b");
            rest = after.trim_start_matches('*');
        } else {
            match c {
                '*' => {}
                '?' => out.push('x'),
                c => out.push(c),
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The room-pattern rules written as directly as possible (recursion over
/// the pattern text, memoized so it stays polynomial), to check
/// [`crate::auth::RoomPattern::matches`] against: `*` = any run without `:`,
/// `**`… = any run, `?` = one non-`:` character, `{userId}` = the user id
/// literally (no match at all without one, with an empty one or one holding
/// `:`), anything else literal; patterns over the length cap match nothing.
pub fn room_pattern_reference(pattern: &str, room: &str, user_id: Option<&str>) -> bool {
    use std::collections::HashMap;
    fn go(p: &str, t: &[char], user: &[char], memo: &mut HashMap<(usize, usize), bool>) -> bool {
        let key = (p.len(), t.len());
        if let Some(&v) = memo.get(&key) {
            return v;
        }
        let v = if p.is_empty() {
            t.is_empty()
        } else if let Some(rest) = p.strip_prefix("{userId}") {
            t.starts_with(user) && go(rest, &t[user.len()..], user, memo)
        } else if let Some(rest) = p.strip_prefix("**") {
            let rest = rest.trim_start_matches('*');
            (0..=t.len()).any(|k| go(rest, &t[k..], user, memo))
        } else if let Some(rest) = p.strip_prefix('*') {
            (0..=t.len())
                .take_while(|&k| !t[..k].contains(&':'))
                .any(|k| go(rest, &t[k..], user, memo))
        } else if let Some(rest) = p.strip_prefix('?') {
            t.first().is_some_and(|&c| c != ':') && go(rest, &t[1..], user, memo)
        } else {
            let c = p.chars().next().unwrap_or_default();
            t.first() == Some(&c) && go(&p[c.len_utf8()..], &t[1..], user, memo)
        };
        memo.insert(key, v);
        v
    }
    if pattern.chars().count() > crate::auth::rooms::MAX_PATTERN_LEN {
        return false;
    }
    let user: Vec<char> = match user_id {
        Some(u) if !u.is_empty() && !u.contains(':') => u.chars().collect(),
        _ if pattern.contains("{userId}") => return false,
        _ => Vec::new(),
    };
    let text: Vec<char> = room.chars().collect();
    go(pattern, &text, &user, &mut HashMap::new())
}

/// A self-signed certificate for `localhost` and its key, for the
/// `tls_records` target only (a test key: it protects nothing).
const FUZZ_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBpjCCAU2gAwIBAgIUbjxur+crQ0hJhs+r3uWJPi4MevswCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTIwNzAxNTczM1oYDzIxMjYxMTEz
MDE1NzMzWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAThk4NC8LqXAyemPb6SK2MQ6SZP8liDDNlMg/eLJSavNJ2ktSUMBMLf
28W6dzqLaWHomhBwlfV0V32B7lRdk5t8o3sweTAdBgNVHQ4EFgQUYKcYntn6DUCw
9hXSe216seSW9uMwHwYDVR0jBBgwFoAUYKcYntn6DUCw9hXSe216seSW9uMwFAYD
VR0RBA0wC4IJbG9jYWxob3N0MAwGA1UdEwEB/wQCMAAwEwYDVR0lBAwwCgYIKwYB
BQUHAwEwCgYIKoZIzj0EAwIDRwAwRAIgITKLD9nNDaT5nGcgdeRJHQ9ZWyBkpeJ/
ATk9CyALoY0CIADo/sRix/OfWxHrFa2QYSJd1frKbXW9fASABJL+btH6
-----END CERTIFICATE-----
";
const FUZZ_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgH7BwGNf0ElEYZx+X
ctS/GiLCC01Pxj+k2iXIuXJNPRGhRANCAAThk4NC8LqXAyemPb6SK2MQ6SZP8liD
DNlMg/eLJSavNJ2ktSUMBMLf28W6dzqLaWHomhBwlfV0V32B7lRdk5t8
-----END PRIVATE KEY-----
";

/// An established TLS connection in memory: our record layer and a rustls
/// client, TLS 1.3 or 1.2.
#[allow(clippy::unwrap_used)] // reason: fixed inputs (the built-in certificate); a failure is a harness bug
fn tls_pair(tls13: bool) -> (crate::tls::Session, rustls::ClientConnection) {
    use std::sync::{Arc, OnceLock};
    static SERVER: OnceLock<crate::tls::Tls> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        crate::tls::Tls::from_pem(FUZZ_CERT.as_bytes(), FUZZ_KEY.as_bytes()).unwrap()
    });
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(FUZZ_CERT.as_bytes()).unwrap();
    roots.add(der).unwrap();
    let version = if tls13 {
        &rustls::version::TLS13
    } else {
        &rustls::version::TLS12
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hs = crate::tls::Handshake::new(server.server_config()).unwrap();
    loop {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        hs.feed(&wire).unwrap();
        let mut out = Vec::new();
        let step = hs.step(&mut out).unwrap();
        let mut rd = &out[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets().unwrap();
        }
        if step == crate::tls::handshake::Step::Done {
            let (session, _) = hs.finish().unwrap();
            return (session, client);
        }
    }
}

use rustls_pki_types::pem::PemObject as _;

/// `tls_records`: the record layer of an established TLS connection never
/// panics on what the peer sends, in any split, and gives out no more
/// plaintext than arrived. The first byte picks TLS 1.3 or 1.2, whether
/// the rest starts with real records (the client seals the input's first
/// half as application data: it must come out whole and unchanged), and the read
/// size; the rest is sent as is.
#[allow(clippy::unwrap_used)] // reason: the in-memory client's writes cannot fail
pub fn tls_records(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut session, mut client) = tls_pair(mode & 1 == 0);
    let mut wire = Vec::new();
    let mut sealed = &[][..];
    let mut raw = rest;
    if mode & 2 != 0 {
        let half = rest.len() / 2;
        (sealed, raw) = rest.split_at(half);
        client.writer().write_all(sealed).unwrap();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
    }
    wire.extend_from_slice(raw);
    let step = usize::from(mode >> 2).max(1) * 37;
    let mut plain = Vec::new();
    for chunk in wire.chunks(step) {
        match session.open(chunk, &mut plain) {
            Ok(o) if o.peer_closed => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        plain.len() <= wire.len(),
        "more plaintext than bytes received"
    );
    // The client's records come first and whole: whatever follows them,
    // they come out unchanged.
    assert!(
        plain.starts_with(sealed),
        "the client's records came out changed or lost"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame announcing `announced` payload bytes, of which
    /// only `payload` is present.
    fn partial(b0: u8, payload: &[u8], announced: u16) -> Vec<u8> {
        let key = [0x3c, 0x91, 0x5e, 0xa7];
        let mut out = vec![b0, 0x80 | 126];
        out.extend_from_slice(&announced.to_be_bytes());
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    #[test]
    fn text_so_far_is_dead_tells_invalid_from_incomplete() {
        let bad = [
            0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCE, 0xBC, 0xCE, 0xB5, 0xF4, 0x90, 0x80, 0x80,
        ];
        assert!(text_so_far_is_dead(&partial(0x81, &bad, 1000)));
        assert!(!text_so_far_is_dead(&partial(0x81, &bad[..10], 1000)));
        assert!(!text_so_far_is_dead(&partial(0x82, &bad, 1000)));
        // In a continuation: the first fragment's text counts.
        let mut two = partial(0x01, b"a\xE2", 2);
        two.extend(partial(0x80, b"(", 1000));
        assert!(text_so_far_is_dead(&two));
        let mut two = partial(0x01, b"a\xE2", 2);
        two.extend(partial(0x80, b"\x82", 1000));
        assert!(!text_so_far_is_dead(&two));
        // The check accepts our early refusal of both.
        frame_differential(&[[0].as_slice(), &partial(0x81, &bad, 1000)].concat());
        frame_differential(&[[0].as_slice(), &two].concat());
    }
}
