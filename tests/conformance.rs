//! RFC 6455 conformance on the wire, through raw TCP sockets, in the spirit
//! of the Autobahn|Testsuite sections 1–7 and 9: framing, pings and pongs,
//! reserved bits, opcodes, fragmentation, UTF-8 handling, the close
//! handshake and close codes, big messages.
//!
//! `tests/frames.rs` has one representative per protocol error; this file
//! walks each rule's whole case list and the accepted side of each rule
//! (what must NOT fail the connection), and checks every frame the server
//! sends against the sender-side MUSTs of RFC 6455 §5 (no RSV bits, no
//! mask, defined opcodes, minimal length encoding, unfragmented control
//! frames of at most 125 bytes, UTF-8 text, legal close codes).
//!
//! The server speaks the Ignis protocol, so acceptance is observed through
//! it: an `authenticate` is answered with `connected`, whose `userId` echoes
//! the one sent (a byte-exact check of the reassembled payload), and an
//! unauthenticated non-JSON message is answered with `Invalid message
//! format` (it was read as a complete message and parsed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use ignis_ws::config::IoMode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use util::*;

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The mask key of the frames built here (not the one `util::text` uses).
const M: Option<[u8; 4]> = Some([0x3c, 0x91, 0x5e, 0xa7]);

const NOT_JSON: &[u8] = b"not json";

/// A masked client frame with no reserved bits.
fn f(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    client_frame(fin, 0, opcode, payload, M)
}

/// An `authenticate` message whose `userId` is these bytes, verbatim.
fn auth_json(user: &[u8]) -> Vec<u8> {
    [
        &br#"{"event":"authenticate","data":{"userId":""#[..],
        user,
        br#""}}"#,
    ]
    .concat()
}

/// Overhead of [`auth_json`] around the user id.
fn auth_overhead() -> usize {
    auth_json(b"").len()
}

/// The alphabet of the user ids that fill an [`auth_of_len`] payload.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A close frame payload: code and reason bytes.
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

/// `payload` as a fragmented message: first frame `opcode`, then
/// continuations, cut at `cuts` (ascending offsets into `payload`).
fn fragmented(opcode: u8, payload: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = 0;
    let ends: Vec<usize> = cuts.iter().copied().chain([payload.len()]).collect();
    for (i, &to) in ends.iter().enumerate() {
        let op = if i == 0 { opcode } else { CONT };
        out.extend(f(i + 1 == ends.len(), op, &payload[from..to]));
        from = to;
    }
    out
}

/// A message from the server, data fragments reassembled.
#[derive(Debug, PartialEq)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// Code (1005 for an empty close payload) and reason.
    Close(u16, String),
}

/// One frame off the front of `b`, if complete, checked against what
/// RFC 6455 §5 requires of a server's frames.
fn parse_server_frame(b: &[u8]) -> Option<(bool, u8, Vec<u8>, usize)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    assert_eq!(b0 & 0x70, 0, "RSV bits set on a server frame: {b0:#04x}");
    let op = b0 & 0x0f;
    assert!(
        matches!(op, CONT | TEXT | BINARY | CLOSE | PING | PONG),
        "reserved opcode {op:#x} from the server"
    );
    assert_eq!(b1 & 0x80, 0, "a server frame is masked");
    let (len, header) = match b1 & 0x7f {
        126 => {
            let n = usize::from(u16::from_be_bytes(b.get(2..4)?.try_into().unwrap()));
            assert!(n >= 126, "16-bit length {n} is not the minimal encoding");
            (n, 4)
        }
        127 => {
            let n = u64::from_be_bytes(b.get(2..10)?.try_into().unwrap());
            assert!(n > 0xffff, "64-bit length {n} is not the minimal encoding");
            assert_eq!(n >> 63, 0, "64-bit length with its top bit set");
            (usize::try_from(n).unwrap(), 10)
        }
        n => (usize::from(n), 2),
    };
    let fin = b0 & 0x80 != 0;
    if op >= 8 {
        assert!(fin, "fragmented control frame from the server");
        assert!(len <= 125, "control frame of {len} bytes from the server");
    }
    let payload = b.get(header..header + len)?.to_vec();
    Some((fin, op, payload, header + len))
}

/// The next frame from the server; `None` at a clean end of stream.
async fn next_frame(r: &mut Raw) -> Option<(bool, u8, Vec<u8>)> {
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        if let Some((fin, op, payload, used)) = parse_server_frame(&r.buf) {
            r.buf.drain(..used);
            return Some((fin, op, payload));
        }
        let n = tokio::time::timeout(WAIT, r.s.read(&mut tmp))
            .await
            .expect("a frame or the end of the stream in time")
            .expect("the server ends the stream cleanly (FIN, not RST)");
        if n == 0 {
            assert!(r.buf.is_empty(), "stream ended inside a frame");
            return None;
        }
        r.buf.extend_from_slice(&tmp[..n]);
    }
}

/// The next message from the server; `None` at the end of the stream.
/// (The server never fragments what it sends, so neither does this.)
async fn next_msg(r: &mut Raw) -> Option<Msg> {
    let (fin, op, payload) = next_frame(r).await?;
    assert!(fin, "fragmented server message (op {op:#x}): not expected");
    Some(match op {
        TEXT => Msg::Text(String::from_utf8(payload).expect("server text is UTF-8")),
        BINARY => Msg::Binary(payload),
        PING => Msg::Ping(payload),
        PONG => Msg::Pong(payload),
        CLOSE => match payload.len() {
            0 => Msg::Close(1005, String::new()),
            1 => panic!("server close frame with a 1-byte payload"),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                assert!(
                    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                    "server sent close code {code}, which may not be sent"
                );
                let reason =
                    String::from_utf8(payload[2..].to_vec()).expect("server close reason is UTF-8");
                Msg::Close(code, reason)
            }
        },
        op => panic!("continuation frame {op:#x} with no server message open"),
    })
}

async fn expect_msg(r: &mut Raw, want: Msg, case: &str) {
    let got = next_msg(r).await;
    assert_eq!(got.as_ref(), Some(&want), "{case}");
}

/// The next message is `Invalid message format`.
async fn expect_invalid_format(r: &mut Raw, case: &str) {
    expect_msg(r, Msg::Text(INVALID.into()), case).await;
}

/// The next message is `connected` with this user id.
async fn expect_connected(r: &mut Raw, user: &str, case: &str) {
    match next_msg(r).await {
        Some(Msg::Text(t)) => {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                v["event"],
                "connected",
                "{case}: {}",
                &t[..t.len().min(200)]
            );
            let got = v["data"]["userId"].as_str().unwrap_or_default();
            assert!(
                got == user,
                "{case}: userId differs ({} bytes back, {} sent)",
                got.len(),
                user.len()
            );
        }
        other => panic!("{case}: expected connected, got {other:?}"),
    }
}

/// The next message is a close with `code`, then the stream ends.
async fn expect_close_then_eof(r: &mut Raw, code: u16, case: &str) {
    match next_msg(r).await {
        Some(Msg::Close(c, _)) => assert_eq!(c, code, "{case}"),
        other => panic!("{case}: expected close {code}, got {other:?}"),
    }
    assert_eq!(
        next_msg(r).await,
        None,
        "{case}: nothing after the close frame"
    );
}

/// Prove the server sent nothing since the last message read: the next
/// message must be the answer to a non-JSON probe.
async fn expect_silence(r: &mut Raw, case: &str) {
    r.write(&f(true, TEXT, NOT_JSON)).await;
    expect_invalid_format(r, case).await;
}

/// Write `bytes` on a fresh connection; expect `before` `Invalid message
/// format` replies, then a close with `code` and the end of the stream.
async fn expect_fail(s: &TestServer, case: &str, bytes: &[u8], before: usize, code: u16) {
    let mut r = Raw::upgraded(s.addr).await;
    r.write(bytes).await;
    for _ in 0..before {
        expect_invalid_format(&mut r, case).await;
    }
    expect_close_then_eof(&mut r, code, case).await;
}

// ---- 1: framing ----

/// Autobahn 1.1/1.2: payload lengths around the 7-bit, 16-bit and 64-bit
/// length encodings, text and binary, are read intact (including a zero
/// mask key, which is a valid key).
async fn payload_lengths_at_encoding_boundaries(io: IoMode) {
    let s = start(config(io));
    for len in [125, 126, 127, 128, 65_535, 65_536, 65_537, 100_000] {
        for (op, mask) in [(TEXT, M), (BINARY, Some([0, 0, 0, 0]))] {
            let case = format!("opcode {op}, {len} bytes");
            let (payload, user) = auth_of_len(len, ALPHABET, auth_text);
            let mut r = Raw::upgraded(s.addr).await;
            r.write(&client_frame(true, 0, op, &payload, mask)).await;
            // The reply is longer than the message: it also crosses the
            // encodings, checked by `parse_server_frame`.
            expect_connected(&mut r, &user, &case).await;
        }
    }
}

/// Autobahn 1.1.1/1.2.1: empty text and binary messages are messages.
async fn empty_messages_are_accepted(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&[f(true, TEXT, b""), f(true, BINARY, b"")].concat())
        .await;
    expect_invalid_format(&mut r, "empty text").await;
    expect_invalid_format(&mut r, "empty binary").await;
    r.write(&f(true, TEXT, &auth_json(b"after-empty"))).await;
    expect_connected(&mut r, "after-empty", "connection still usable").await;
}

/// Autobahn 9.7/9.8 in small: many messages in one write, text and binary
/// mixed, each with its own mask key, are each answered.
async fn pipelined_messages_are_each_answered(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    let n = 500u32;
    let mut b = Vec::new();
    for i in 0..n {
        let op = if i % 2 == 0 { TEXT } else { BINARY };
        b.extend(client_frame(true, 0, op, NOT_JSON, Some(i.to_be_bytes())));
    }
    b.extend(f(true, TEXT, &auth_json(b"last")));
    r.write(&b).await;
    for i in 0..n {
        expect_invalid_format(&mut r, &format!("message {i}")).await;
    }
    expect_connected(&mut r, "last", "after the batch").await;
}

// ---- 2: pings and pongs ----

/// Autobahn 2.1–2.6: a ping is answered by a pong with the same payload:
/// empty, 125 bytes (the most allowed), arbitrary bytes that are not UTF-8,
/// and a 125-byte ping written one byte at a time.
async fn pings_are_answered_with_identical_pongs(io: IoMode) {
    let s = start(config(io));
    let full: Vec<u8> = (0..125u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("empty", vec![]),
        ("text", b"Hello, world!".to_vec()),
        ("125 bytes", full.clone()),
        ("not UTF-8", vec![0xff, 0xfe, 0x00, 0x80, 0xed, 0xa0, 0x80]),
    ];
    for (case, payload) in cases {
        let mut r = Raw::upgraded(s.addr).await;
        r.write(&f(true, PING, &payload)).await;
        expect_msg(&mut r, Msg::Pong(payload), case).await;
        expect_silence(&mut r, case).await;
    }
    let mut r = Raw::upgraded(s.addr).await;
    for b in f(true, PING, &full).chunks(1) {
        r.write(b).await;
        r.s.flush().await.unwrap();
    }
    expect_msg(&mut r, Msg::Pong(full), "ping written byte by byte").await;
}

/// Autobahn 2.5, extended to pong and close: a control frame over 125
/// bytes, whatever its opcode and length form, fails the connection with 1002, decided from
/// the header, and is not answered.
async fn oversized_control_frames_close_1002(io: IoMode) {
    let s = start(config(io));
    let big = vec![b'x'; 126];
    let close126 = close_payload(1000, &[b'r'; 124]);
    assert_eq!(close126.len(), 126);
    let mut ping_64bit = vec![0x89, 0xff];
    ping_64bit.extend_from_slice(&200u64.to_be_bytes());
    ping_64bit.extend_from_slice(&M.unwrap());
    let cases: [(&str, Vec<u8>); 5] = [
        ("ping 126", f(true, PING, &big)),
        ("pong 126", f(true, PONG, &big)),
        ("close 126", f(true, CLOSE, &close126)),
        (
            "ping 65536, header only",
            f(true, PING, &vec![0; 65_536])[..14].to_vec(),
        ),
        ("ping 200, 64-bit length, header only", ping_64bit),
    ];
    for (case, bytes) in cases {
        expect_fail(&s, case, &bytes, 0, 1002).await;
    }
}

/// Autobahn 2.7–2.9: unsolicited pongs (empty, 125 bytes, not UTF-8) are
/// ignored: no reply, no close.
async fn unsolicited_pongs_are_ignored(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    r.write(
        &[
            f(true, PONG, b""),
            f(true, PONG, &[b'p'; 125]),
            f(true, PONG, b"\xff\xfe\xed\xa0\x80"),
        ]
        .concat(),
    )
    .await;
    expect_silence(&mut r, "after three pongs").await;
    r.write(&f(true, TEXT, &auth_json(b"pong"))).await;
    expect_connected(&mut r, "pong", "still usable").await;
}

/// Autobahn 2.10/2.11: ten pings, in one write and in ten writes, are
/// answered in order; the RFC allows answering only the most recent of
/// several pings, so the pongs must be an in-order subsequence of the
/// pings that ends with the last one.
async fn many_pings_are_answered_in_order(io: IoMode) {
    let s = start(config(io));
    for separate_writes in [false, true] {
        let case = if separate_writes {
            "ten writes"
        } else {
            "one write"
        };
        let mut r = Raw::upgraded(s.addr).await;
        let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("ping-{i}").into_bytes()).collect();
        let mut all = Vec::new();
        for p in &payloads {
            if separate_writes {
                r.write(&f(true, PING, p)).await;
                r.s.flush().await.unwrap();
            } else {
                all.extend(f(true, PING, p));
            }
        }
        all.extend(f(true, TEXT, NOT_JSON));
        r.write(&all).await;
        let mut pongs = Vec::new();
        loop {
            match next_msg(&mut r).await {
                Some(Msg::Pong(p)) => pongs.push(p),
                Some(Msg::Text(t)) if t == INVALID => break,
                other => panic!("{case}: unexpected {other:?}"),
            }
        }
        assert_eq!(pongs.last(), payloads.last(), "{case}: last ping answered");
        let mut rest = payloads.iter();
        for p in &pongs {
            assert!(rest.any(|q| q == p), "{case}: pongs {pongs:?} out of order");
        }
    }
}

// ---- 3: reserved bits ----

/// Autobahn 3.1–3.7: each of RSV1, RSV2, RSV3 and every combination, on
/// every kind of frame, fails the connection with 1002 (no extension is
/// negotiated), and the frame itself gets no answer.
async fn reserved_bits_close_1002(io: IoMode) {
    let s = start(config(io));
    for rsv in 1..=7u8 {
        let cases: [(&str, Vec<u8>); 6] = [
            ("text", client_frame(true, rsv, TEXT, NOT_JSON, M)),
            ("binary", client_frame(true, rsv, BINARY, NOT_JSON, M)),
            ("ping", client_frame(true, rsv, PING, b"p", M)),
            ("pong", client_frame(true, rsv, PONG, b"p", M)),
            (
                "close",
                client_frame(true, rsv, CLOSE, &close_payload(1000, b""), M),
            ),
            (
                "continuation",
                [
                    f(false, TEXT, b"not "),
                    client_frame(true, rsv, CONT, b"json", M),
                ]
                .concat(),
            ),
        ];
        for (kind, bytes) in cases {
            expect_fail(&s, &format!("rsv {rsv:03b} on {kind}"), &bytes, 0, 1002).await;
        }
    }
}

/// Autobahn 3.2/3.3: a valid message before the violation is still
/// answered; a ping after it is not (input after a failure is not read).
async fn messages_before_a_violation_are_answered(io: IoMode) {
    let s = start(config(io));
    let bytes = [
        f(true, TEXT, NOT_JSON),
        client_frame(true, 2, TEXT, NOT_JSON, M),
        f(true, PING, b"after"),
    ]
    .concat();
    expect_fail(&s, "text, rsv2 text, ping", &bytes, 1, 1002).await;
}

// ---- 4: opcodes ----

/// Autobahn 4.1/4.2: the reserved non-control (3–7) and control (11–15)
/// opcodes, empty or with a payload, alone, after a valid message, or
/// inside a fragmented message, fail the connection with 1002.
async fn reserved_opcodes_close_1002(io: IoMode) {
    let s = start(config(io));
    for op in (3..=7u8).chain(11..=15) {
        let case = format!("opcode {op}, empty");
        let bytes = f(true, op, b"");
        expect_fail(&s, &case, &bytes, 0, 1002).await;
        let case = format!("opcode {op}, payload");
        let bytes = f(true, op, b"reserved");
        expect_fail(&s, &case, &bytes, 0, 1002).await;
        let bytes = [
            f(true, TEXT, NOT_JSON),
            f(true, op, b""),
            f(true, PING, b"p"),
        ]
        .concat();
        expect_fail(&s, &format!("opcode {op} after a message"), &bytes, 1, 1002).await;
        let bytes = [
            f(false, TEXT, b"not "),
            f(true, op, b""),
            f(true, CONT, b"json"),
        ]
        .concat();
        let case = format!("opcode {op} between fragments");
        expect_fail(&s, &case, &bytes, 0, 1002).await;
    }
}

/// RFC 6455 §5.1: a client frame without the MASK bit fails the connection,
/// whatever its opcode or position in a message.
async fn unmasked_client_frames_close_1002(io: IoMode) {
    let s = start(config(io));
    let cases: [(&str, Vec<u8>); 5] = [
        ("binary", client_frame(true, 0, BINARY, NOT_JSON, None)),
        ("ping", client_frame(true, 0, PING, b"p", None)),
        ("pong", client_frame(true, 0, PONG, b"p", None)),
        (
            "close",
            client_frame(true, 0, CLOSE, &close_payload(1000, b""), None),
        ),
        (
            "continuation",
            [
                f(false, TEXT, b"not "),
                client_frame(true, 0, CONT, b"json", None),
            ]
            .concat(),
        ),
    ];
    for (case, bytes) in cases {
        expect_fail(&s, case, &bytes, 0, 1002).await;
    }
}

// ---- 5: fragmentation ----

/// Autobahn 5.3–5.5, 5.15, 5.18-style acceptances: a text message in
/// one-byte fragments; a binary message with empty first, middle and last
/// fragments; fragments with different mask keys and control frames in
/// between.
async fn fragmented_messages_are_reassembled(io: IoMode) {
    let s = start(config(io));
    let payload = auth_json(b"one-byte-fragments");
    let cuts: Vec<usize> = (1..payload.len()).collect();
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&fragmented(TEXT, &payload, &cuts)).await;
    expect_connected(&mut r, "one-byte-fragments", "one-byte fragments").await;

    let payload = auth_json(b"empty-fragments");
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&fragmented(
        BINARY,
        &payload,
        &[0, 10, 10, 20, payload.len()],
    ))
    .await;
    expect_connected(&mut r, "empty-fragments", "binary with empty fragments").await;

    let payload = auth_json(b"masks");
    let mut r = Raw::upgraded(s.addr).await;
    r.write(
        &[
            client_frame(false, 0, TEXT, &payload[..7], Some([1, 2, 3, 4])),
            f(true, PING, b"between"),
            client_frame(false, 0, CONT, &payload[7..30], Some([0, 0, 0, 0])),
            f(true, PONG, b"unsolicited"),
            client_frame(true, 0, CONT, &payload[30..], Some([0xff; 4])),
        ]
        .concat(),
    )
    .await;
    expect_msg(&mut r, Msg::Pong(b"between".to_vec()), "interleaved ping").await;
    expect_connected(&mut r, "masks", "mask key per fragment").await;
}

/// Autobahn 5.6–5.9 with the fragments in separate writes: a ping between
/// fragments is answered at once, while the message is still incomplete,
/// and the message is then completed.
async fn ping_is_answered_while_a_message_is_incomplete(io: IoMode) {
    let s = start(config(io));
    let payload = auth_json(b"slow");
    let mut r = Raw::upgraded(s.addr).await;
    r.write(
        &[
            f(false, TEXT, &payload[..10]),
            f(true, PING, b"mid-message"),
        ]
        .concat(),
    )
    .await;
    expect_msg(
        &mut r,
        Msg::Pong(b"mid-message".to_vec()),
        "pong before the end",
    )
    .await;
    r.write(&[f(true, PONG, b"x"), f(false, CONT, &payload[10..20])].concat())
        .await;
    r.write(&f(true, PING, b"again")).await;
    expect_msg(&mut r, Msg::Pong(b"again".to_vec()), "second pong").await;
    r.write(&f(true, CONT, &payload[20..])).await;
    expect_connected(&mut r, "slow", "completed after the pongs").await;
}

/// Autobahn 5.1, 5.2, 5.9–5.20: fragmentation order violations fail the
/// connection with 1002: continuations with no message open (first or
/// after a complete message), a new data frame while a message is open,
/// and fragmented control frames (also inside a data message).
async fn fragmentation_violations_close_1002(io: IoMode) {
    let s = start(config(io));
    let close = close_payload(1000, b"");
    let cases: [(&str, Vec<u8>, usize); 12] = [
        ("continuation FIN=0, nothing open", f(false, CONT, b"x"), 0),
        (
            "empty continuation FIN=1, nothing open",
            f(true, CONT, b""),
            0,
        ),
        (
            "continuation after a complete message",
            [f(true, TEXT, NOT_JSON), f(true, CONT, b"x")].concat(),
            1,
        ),
        (
            "continuation after a complete fragmented message",
            [fragmented(TEXT, NOT_JSON, &[3]), f(false, CONT, b"x")].concat(),
            1,
        ),
        (
            "text FIN=1 while text open",
            [f(false, TEXT, b"a"), f(true, TEXT, b"b")].concat(),
            0,
        ),
        (
            "binary FIN=0 while text open",
            [f(false, TEXT, b"a"), f(false, BINARY, b"b")].concat(),
            0,
        ),
        (
            "text FIN=1 while binary open",
            [f(false, BINARY, b"a"), f(true, TEXT, b"b")].concat(),
            0,
        ),
        (
            "fragmented ping",
            [f(false, PING, b"a"), f(true, CONT, b"b")].concat(),
            0,
        ),
        (
            "fragmented pong",
            [f(false, PONG, b"a"), f(true, CONT, b"b")].concat(),
            0,
        ),
        (
            "fragmented close",
            [f(false, CLOSE, &close), f(true, CONT, b"")].concat(),
            0,
        ),
        (
            "ping FIN=0 inside a text message",
            [
                f(false, TEXT, b"a"),
                f(false, PING, b"p"),
                f(true, CONT, b"b"),
            ]
            .concat(),
            0,
        ),
        (
            "close FIN=0 inside a binary message",
            [f(false, BINARY, b"a"), f(false, CLOSE, &close)].concat(),
            0,
        ),
    ];
    for (case, bytes, before) in cases {
        expect_fail(&s, case, &bytes, before, 1002).await;
    }
}

// ---- 6: UTF-8 ----

/// Autobahn 6.2, 6.5–6.8: valid UTF-8 (boundary code points,
/// noncharacters, 1- to 4-byte sequences) is accepted, in one frame, in one
/// fragment per code point and in one fragment per byte.
async fn valid_utf8_is_accepted(io: IoMode) {
    let s = start(config(io));
    let users = [
        "Hello-µ@ßöäüàá-UTF-8!!",
        "κόσμε",
        "\u{7f}\u{80}\u{7ff}\u{800}\u{d7ff}\u{e000}\u{fffd}\u{fffe}\u{ffff}\u{10000}\u{10ffff}",
        "😀🎉 ascii 中文 ∑",
    ];
    for user in users {
        let payload = auth_json(user.as_bytes());
        let mut r = Raw::upgraded(s.addr).await;
        r.write(&f(true, TEXT, &payload)).await;
        expect_connected(&mut r, user, &format!("{user:?} in one frame")).await;

        let start = auth_overhead() - 3;
        let cuts: Vec<usize> = user.char_indices().map(|(i, _)| start + i).collect();
        let mut r = Raw::upgraded(s.addr).await;
        r.write(&fragmented(TEXT, &payload, &cuts)).await;
        expect_connected(&mut r, user, &format!("{user:?} per code point")).await;

        let cuts: Vec<usize> = (1..payload.len()).collect();
        let mut r = Raw::upgraded(s.addr).await;
        r.write(&fragmented(TEXT, &payload, &cuts)).await;
        expect_connected(&mut r, user, &format!("{user:?} per byte")).await;
    }
}

/// A code point split across fragments at every possible position (2-, 3-
/// and 4-byte sequences) is valid UTF-8 once reassembled and is accepted;
/// also with a ping between the halves.
async fn code_point_split_across_fragments_is_accepted(io: IoMode) {
    let s = start(config(io));
    let at = auth_overhead() - 3; // where the user id starts
    for c in ['ü', '€', '😀'] {
        let user = format!("{c}");
        let payload = auth_json(user.as_bytes());
        for split in 1..c.len_utf8() {
            let case = format!("{c} split after byte {split}");
            let mut r = Raw::upgraded(s.addr).await;
            r.write(&fragmented(TEXT, &payload, &[at + split])).await;
            expect_connected(&mut r, &user, &case).await;

            let mut r = Raw::upgraded(s.addr).await;
            r.write(
                &[
                    f(false, TEXT, &payload[..at + split]),
                    f(true, PING, b"p"),
                    f(true, CONT, &payload[at + split..]),
                ]
                .concat(),
            )
            .await;
            expect_msg(&mut r, Msg::Pong(b"p".to_vec()), &case).await;
            expect_connected(&mut r, &user, &format!("{case}, ping between")).await;
        }
    }
}

/// Autobahn 6.3–6.21: invalid UTF-8 in a text message (lone continuation
/// bytes, truncated sequences, overlong forms, surrogates, code points
/// above U+10FFFF, bytes that never occur) fails the connection with 1007
/// and the message is not processed.
async fn invalid_utf8_in_text_closes_1007(io: IoMode) {
    let s = start(config(io));
    let cases: [(&str, &[u8]); 22] = [
        ("lone continuation 80", b"\x80"),
        ("lone continuation bf", b"\xbf"),
        ("continuation run", b"\x80\x81\x82\x83"),
        ("2-byte lead then space", b"\xc3 "),
        ("3-byte lead, 1 continuation, then space", b"\xe2\x82 "),
        ("4-byte lead, 2 continuations, then space", b"\xf0\x9f\x98 "),
        ("lead after lead", b"\xc3\xc3\xbc"),
        ("overlong C0 AF", b"\xc0\xaf"),
        ("overlong C1 BF", b"\xc1\xbf"),
        ("overlong E0 80 AF", b"\xe0\x80\xaf"),
        ("overlong E0 9F BF", b"\xe0\x9f\xbf"),
        ("overlong F0 80 80 AF", b"\xf0\x80\x80\xaf"),
        ("overlong F0 8F BF BF", b"\xf0\x8f\xbf\xbf"),
        ("surrogate U+D800", b"\xed\xa0\x80"),
        ("surrogate U+DFFF", b"\xed\xbf\xbf"),
        ("surrogate pair", b"\xed\xa0\x80\xed\xb0\x80"),
        ("above U+10FFFF: F4 90 80 80", b"\xf4\x90\x80\x80"),
        ("F5 lead", b"\xf5\x80\x80\x80"),
        ("5-byte form", b"\xf8\x88\x80\x80\x80"),
        ("6-byte form", b"\xfc\x84\x80\x80\x80\x80"),
        ("FE", b"\xfe"),
        ("FF", b"\xff"),
    ];
    for (case, bad) in cases {
        expect_fail(&s, case, &f(true, TEXT, &auth_json(bad)), 0, 1007).await;
    }
    // Autobahn 6.3.1: κόσμε, a surrogate, "edited".
    let bad = ["κόσμε".as_bytes(), b"\xed\xa0\x80", b"edited"].concat();
    expect_fail(&s, "6.3.1 in one frame", &f(true, TEXT, &bad), 0, 1007).await;
    let cuts: Vec<usize> = (1..bad.len()).collect();
    let bytes = fragmented(TEXT, &bad, &cuts);
    expect_fail(&s, "6.3.2 one byte per frame", &bytes, 0, 1007).await;
    // A 4-byte sequence cut short by the end of the message.
    let bytes = f(true, TEXT, b"ok\xf0\x9f\x98");
    expect_fail(&s, "truncated at FIN", &bytes, 0, 1007).await;
}

/// Sequences that are invalid only across a fragment boundary (each side a
/// plausible piece on its own) fail with 1007: the validator carries state
/// from one fragment to the next. Also a sequence left open by the last,
/// empty fragment.
async fn invalid_utf8_across_fragments_closes_1007(io: IoMode) {
    let s = start(config(io));
    let cases: [(&str, &[u8], &[u8]); 6] = [
        ("overlong E0 | 80 80", b"ok\xe0", b"\x80\x80"),
        ("surrogate ED | A0 80", b"ok\xed", b"\xa0\x80"),
        ("above U+10FFFF F4 | 90 80 80", b"ok\xf4", b"\x90\x80\x80"),
        ("lead then lead C3 | C3 BC", b"ok\xc3", b"\xc3\xbc"),
        ("F0 9F | 98 then space", b"ok\xf0\x9f", b"\x98 "),
        (
            "open sequence, then an empty final fragment",
            b"ok\xf0\x9f\x98",
            b"",
        ),
    ];
    for (case, a, b) in cases {
        let bytes = [f(false, TEXT, a), f(true, CONT, b)].concat();
        expect_fail(&s, case, &bytes, 0, 1007).await;
        // The same split with an empty fragment between the halves.
        let bytes = [f(false, TEXT, a), f(false, CONT, b""), f(true, CONT, b)].concat();
        let case = format!("{case}, empty fragment between");
        expect_fail(&s, &case, &bytes, 0, 1007).await;
    }
}

/// Autobahn 6.4.1/6.4.2 (their "strict" outcome; the RFC only requires the
/// failure, not its timing): invalid UTF-8 in a fragment fails the
/// connection at once, before the message is finished.
async fn invalid_utf8_in_an_unfinished_message_fails_fast(io: IoMode) {
    let s = start(config(io));
    let bad = ["κόσμε".as_bytes(), b"\xed\xa0\x80", b"edited"].concat();
    let cases: [(&str, Vec<u8>); 2] = [
        ("in the first fragment", f(false, TEXT, &bad)),
        (
            "in a middle fragment",
            [
                f(false, TEXT, "κόσμε".as_bytes()),
                f(false, CONT, &bad[10..]),
            ]
            .concat(),
        ),
    ];
    for (case, bytes) in cases {
        // The message is never finished; the close must come anyway.
        expect_fail(&s, case, &bytes, 0, 1007).await;
    }
}

/// Autobahn 6.4.3/6.4.4 (their "strict" outcome): invalid UTF-8 in the
/// first bytes of a text frame whose payload is still arriving fails the
/// connection with 1007 at once. The frame announces 64 KiB, only 13 bytes
/// ("κόσμε" then U+110000, dead at its second byte) are ever sent, so the
/// close can only come from the partial payload.
async fn invalid_utf8_in_an_unfinished_frame_fails_fast(io: IoMode) {
    let s = start(config(io));
    const BAD: [u8; 13] = [
        0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCE, 0xBC, 0xCE, 0xB5, 0xF4, 0x90, 0x80, 0x80,
    ];
    /// The header and the first `BAD.len()` payload bytes of a frame
    /// announcing 64 KiB.
    fn partial(fin: bool, opcode: u8) -> Vec<u8> {
        let mut payload = BAD.to_vec();
        payload.resize(64 * 1024, b'x');
        let frame = f(fin, opcode, &payload);
        frame[..frame.len() - (64 * 1024 - BAD.len())].to_vec()
    }
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "6.4.3: single frame, payload cut short",
            partial(true, TEXT),
        ),
        (
            "6.4.4: first fragment, payload cut short",
            partial(false, TEXT),
        ),
        (
            "continuation, payload cut short",
            [f(false, TEXT, b"ok "), partial(true, CONT)].concat(),
        ),
    ];
    for (case, bytes) in cases {
        expect_fail(&s, case, &bytes, 0, 1007).await;
    }
    // The same bytes cut before the dead byte (ending inside U+110000's
    // lead, a valid prefix) are not refused: the connection still answers.
    let mut r = Raw::upgraded(s.addr).await;
    let whole = partial(true, TEXT);
    r.write(&whole[..whole.len() - 3]).await;
    // Anything written now would be read as more of the payload, so no
    // probe: the server must just stay silent.
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), r.s.read(&mut byte))
            .await
            .is_err(),
        "a valid prefix must not end the connection"
    );
}

/// Binary messages and ping/pong payloads are not text: bytes that are not
/// UTF-8 there never cause 1007.
async fn binary_and_control_payloads_are_not_utf8_checked(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    r.write(
        &[
            f(true, BINARY, b"\xff\xfe\xfd"),
            f(false, BINARY, b"\xed"),
            f(true, CONT, b"\xa0\x80"),
            f(true, PONG, b"\xc0\xaf"),
            f(true, PING, b"\xed\xa0\x80"),
        ]
        .concat(),
    )
    .await;
    expect_invalid_format(&mut r, "binary 0xff").await;
    expect_invalid_format(&mut r, "fragmented binary surrogate").await;
    expect_msg(
        &mut r,
        Msg::Pong(b"\xed\xa0\x80".to_vec()),
        "ping not UTF-8",
    )
    .await;
    r.write(&f(true, TEXT, &auth_json(b"bin"))).await;
    expect_connected(&mut r, "bin", "still usable").await;
}

// ---- 7: close handling ----

/// Autobahn 7.7: every close code an endpoint may send is echoed, with
/// or without a reason, and the server then ends the TCP connection.
async fn valid_close_codes_are_echoed(io: IoMode) {
    let s = start(config(io));
    let codes = [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
    ];
    for code in codes {
        for reason in [&b""[..], "bye ✓".as_bytes()] {
            let case = format!("close {code} reason {:?}", String::from_utf8_lossy(reason));
            let mut r = Raw::upgraded(s.addr).await;
            r.write(&f(true, CLOSE, &close_payload(code, reason))).await;
            expect_close_then_eof(&mut r, code, &case).await;
        }
    }
}

/// Autobahn 7.9: close codes that may not appear on the wire (unassigned,
/// reserved, or the 1005/1006/1015 pseudo-codes) fail with 1002.
async fn invalid_close_codes_close_1002(io: IoMode) {
    let s = start(config(io));
    let codes = [
        0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for code in codes {
        let bytes = f(true, CLOSE, &close_payload(code, b"reason"));
        expect_fail(&s, &format!("close code {code}"), &bytes, 0, 1002).await;
    }
}

/// Autobahn 7.3, 7.5: close payload shapes. Empty: echoed empty. One byte:
/// 1002. Code plus a 123-byte reason (a full 125-byte control payload):
/// echoed. Reason that is not UTF-8, in the middle or cut at the end: 1007.
async fn close_payload_shapes(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&f(true, CLOSE, b"")).await;
    expect_close_then_eof(&mut r, 1005, "empty close").await;

    expect_fail(&s, "1-byte close", &f(true, CLOSE, b"\x03"), 0, 1002).await;

    let reason = format!("{}a", "é".repeat(61));
    assert_eq!(reason.len(), 123);
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&f(true, CLOSE, &close_payload(1000, reason.as_bytes())))
        .await;
    expect_close_then_eof(&mut r, 1000, "123-byte reason").await;

    let cases: [(&str, &[u8]); 3] = [
        ("surrogate in the reason", b"a\xed\xa0\x80b"),
        (
            "reason cut inside a code point",
            "bye €".as_bytes().split_last().unwrap().1,
        ),
        (
            "κόσμε + surrogate (7.5.1)",
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
        ),
    ];
    for (case, reason) in cases {
        let bytes = f(true, CLOSE, &close_payload(1000, reason));
        expect_fail(&s, case, &bytes, 0, 1007).await;
    }
}

/// Autobahn 7.1: what follows the client's close is not processed: a second
/// close, a ping, a data message, the rest of a fragmented message, even
/// an invalid frame. The server answers with one close frame echoing the
/// first, and ends the connection. A message before the close is answered.
async fn frames_after_close_are_ignored(io: IoMode) {
    let s = start(config(io));
    let close = f(true, CLOSE, &close_payload(1000, b""));
    let cases: [(&str, Vec<u8>, usize); 6] = [
        (
            "message, then close",
            [f(true, TEXT, NOT_JSON), close.clone()].concat(),
            1,
        ),
        (
            "close, close 1001",
            [close.clone(), f(true, CLOSE, &close_payload(1001, b""))].concat(),
            0,
        ),
        (
            "close, ping",
            [close.clone(), f(true, PING, b"p")].concat(),
            0,
        ),
        (
            "close, text",
            [close.clone(), f(true, TEXT, NOT_JSON)].concat(),
            0,
        ),
        (
            "open message, close, its continuation",
            [
                f(false, TEXT, b"not "),
                close.clone(),
                f(true, CONT, b"json"),
            ]
            .concat(),
            0,
        ),
        (
            "close, frame with RSV bits",
            [close.clone(), client_frame(true, 7, TEXT, b"x", M)].concat(),
            0,
        ),
    ];
    for (case, bytes, before) in cases {
        expect_fail(&s, case, &bytes, before, 1000).await;
    }
    // The same with the close and the text in separate writes, the text
    // written only once the echo arrived.
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&close).await;
    match next_msg(&mut r).await {
        Some(Msg::Close(1000, _)) => {}
        other => panic!("expected the close echo, got {other:?}"),
    }
    // The server may be gone already: the write may fail, the read may
    // end in a reset; it must not bring data.
    let _ = r.s.write_all(&f(true, TEXT, NOT_JSON)).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, r.s.read_to_end(&mut rest))
        .await
        .expect("the server ends the connection");
    assert!(
        rest.is_empty() && r.buf.is_empty(),
        "no answer after the close handshake"
    );
}

// ---- 9: big messages ----

const BIG_MAX: usize = 4 << 20;

fn big_config(io: IoMode) -> ignis_ws::Config {
    let mut cfg = config(io);
    cfg.max_payload = BIG_MAX;
    // The `connected` reply echoes the whole user id.
    cfg.backpressure_limit = 64 << 20;
    cfg
}

/// Autobahn 9.1–9.6: 64 KiB and exactly-the-limit messages, text and
/// binary, in one frame, in 64 KiB fragments, and written in 997-byte
/// pieces, are accepted and intact; one byte over the limit, as fragments,
/// is 1009.
async fn big_messages_up_to_the_limit(io: IoMode) {
    let s = start(big_config(io));
    let cases: [(&str, u8, usize, usize); 5] = [
        ("64 KiB text, one frame", TEXT, 64 << 10, 0),
        ("64 KiB binary, 4 KiB fragments", BINARY, 64 << 10, 4 << 10),
        ("limit text, one frame", TEXT, BIG_MAX, 0),
        ("limit binary, 64 KiB fragments", BINARY, BIG_MAX, 64 << 10),
        ("limit text, 1 MiB fragments", TEXT, BIG_MAX, 1 << 20),
    ];
    for (case, op, len, frag) in cases {
        let (payload, user) = auth_of_len(len, ALPHABET, auth_text);
        let bytes = if frag == 0 {
            f(true, op, &payload)
        } else {
            let cuts: Vec<usize> = (frag..len).step_by(frag).collect();
            fragmented(op, &payload, &cuts)
        };
        let mut r = Raw::upgraded(s.addr).await;
        r.write(&bytes).await;
        expect_connected(&mut r, &user, case).await;
    }

    let (payload, user) = auth_of_len(1 << 20, ALPHABET, auth_text);
    let mut r = Raw::upgraded(s.addr).await;
    for piece in f(true, TEXT, &payload).chunks(997) {
        r.write(piece).await;
    }
    expect_connected(&mut r, &user, "1 MiB written in 997-byte pieces").await;

    let over = vec![b' '; BIG_MAX + 1];
    let cuts: Vec<usize> = (64 << 10..=BIG_MAX).step_by(64 << 10).collect();
    let bytes = fragmented(TEXT, &over, &cuts);
    expect_fail(&s, "limit + 1 in fragments", &bytes, 0, 1009).await;
    let header = &f(true, BINARY, &over)[..14];
    expect_fail(&s, "limit + 1, header only", header, 0, 1009).await;
}

io_tests!(
    payload_lengths_at_encoding_boundaries,
    empty_messages_are_accepted,
    pipelined_messages_are_each_answered,
    pings_are_answered_with_identical_pongs,
    oversized_control_frames_close_1002,
    unsolicited_pongs_are_ignored,
    many_pings_are_answered_in_order,
    reserved_bits_close_1002,
    messages_before_a_violation_are_answered,
    reserved_opcodes_close_1002,
    unmasked_client_frames_close_1002,
    fragmented_messages_are_reassembled,
    ping_is_answered_while_a_message_is_incomplete,
    fragmentation_violations_close_1002,
    valid_utf8_is_accepted,
    code_point_split_across_fragments_is_accepted,
    invalid_utf8_in_text_closes_1007,
    invalid_utf8_across_fragments_closes_1007,
    invalid_utf8_in_an_unfinished_message_fails_fast,
    invalid_utf8_in_an_unfinished_frame_fails_fast,
    binary_and_control_payloads_are_not_utf8_checked,
    valid_close_codes_are_echoed,
    invalid_close_codes_close_1002,
    close_payload_shapes,
    frames_after_close_are_ignored,
    big_messages_up_to_the_limit,
    close_echo_survives_a_client_fin,
    close_echo_survives_a_client_fin_after_64_kib,
);

// ---- 7 (cont.): a client that half-closes after its close frame ----

/// Write `bytes`, then half-close (FIN: the client sends nothing more but
/// still reads); expect `before` `Invalid message format` replies, then a
/// close with `code`, then the end of the stream.
async fn expect_fail_after_fin(s: &TestServer, case: &str, bytes: &[u8], before: usize, code: u16) {
    let mut r = Raw::upgraded(s.addr).await;
    r.write(bytes).await;
    r.s.shutdown().await.unwrap();
    for _ in 0..before {
        expect_invalid_format(&mut r, case).await;
    }
    expect_close_then_eof(&mut r, code, case).await;
}

/// RFC 6455 §5.5.1: an endpoint that receives a Close frame MUST send a
/// Close frame in response. A client may half-close its TCP side right
/// after sending its close frame (it sends nothing more, but still reads):
/// it must still get the close echo, and before it the reply to a message
/// it sent first. With a protocol error before the FIN, the 1002 close is
/// a SHOULD (§7.1.7) and is checked too.
async fn close_echo_survives_a_client_fin(io: IoMode) {
    let s = start(config(io));
    let close = f(true, CLOSE, &close_payload(1000, b""));
    let cases: [(&str, Vec<u8>, usize, u16); 3] = [
        ("close, FIN", close.clone(), 0, 1000),
        (
            "message, close, FIN",
            [f(true, TEXT, NOT_JSON), close.clone()].concat(),
            1,
            1000,
        ),
        (
            "rsv frame, FIN",
            client_frame(true, 4, TEXT, b"x", M),
            0,
            1002,
        ),
    ];
    for (case, bytes, before, code) in cases {
        // Repeated: on the readiness paths the outcome depends on timing.
        for _ in 0..20 {
            expect_fail_after_fin(&s, case, &bytes, before, code).await;
        }
    }
}

/// The same when the bytes before the FIN are exactly 64 KiB (a message
/// of 65,520 bytes and an 8-byte close frame): the reply to the message
/// and the close echo must still arrive.
async fn close_echo_survives_a_client_fin_after_64_kib(io: IoMode) {
    let s = start(config(io));
    let close = f(true, CLOSE, &close_payload(1000, b""));
    let mut payload = NOT_JSON.to_vec();
    payload.resize(65_536 - close.len() - 8, b' ');
    let bytes = [f(true, TEXT, &payload), close].concat();
    assert_eq!(bytes.len(), 65_536);
    for _ in 0..20 {
        expect_fail_after_fin(&s, "64 KiB, FIN", &bytes, 1, 1000).await;
    }
}
