//! RFC 6455 on the wire, through raw sockets: every protocol error gets its
//! close code (PROTOCOL.md §8, §11), fragmentation and control frames work,
//! the close handshake follows the RFC.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use ignis_ws::config::IoMode;
use util::*;

const M: Option<[u8; 4]> = Some([0xa1, 0xb2, 0xc3, 0xd4]);

/// Send `bytes` on a fresh upgraded connection; expect a close with `code`
/// and then the end of the connection.
async fn expect_close_code(s: &TestServer, bytes: &[u8], code: u16) {
    let mut r = Raw::upgraded(s.addr).await;
    r.write(bytes).await;
    assert_eq!(
        r.read_close().await,
        code,
        "for {:02x?}",
        &bytes[..bytes.len().min(16)]
    );
    // The server ends the TCP stream after its close frame.
    let rest = r.read_to_end().await;
    assert!(rest.is_empty(), "nothing after the close frame");
}

async fn protocol_errors_close_1002(io: IoMode) {
    let s = start(config(io));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", client_frame(true, 0, 1, b"{}", None)),
        ("rsv1", client_frame(true, 4, 1, b"{}", M)),
        ("rsv3", client_frame(true, 1, 1, b"{}", M)),
        ("opcode 3", client_frame(true, 0, 3, b"", M)),
        ("opcode 11", client_frame(true, 0, 11, b"", M)),
        ("fragmented ping", client_frame(false, 0, 9, b"", M)),
        ("long ping", client_frame(true, 0, 9, &[0u8; 126], M)),
        ("bare continuation", client_frame(true, 0, 0, b"x", M)),
        ("close 1 byte", client_frame(true, 0, 8, &[3], M)),
        (
            "close 1005",
            client_frame(true, 0, 8, &1005u16.to_be_bytes(), M),
        ),
        (
            "close 999",
            client_frame(true, 0, 8, &999u16.to_be_bytes(), M),
        ),
        (
            "close 2999",
            client_frame(true, 0, 8, &2999u16.to_be_bytes(), M),
        ),
        (
            "close 5000",
            client_frame(true, 0, 8, &5000u16.to_be_bytes(), M),
        ),
    ];
    for (name, bytes) in cases {
        let _ = name;
        expect_close_code(&s, &bytes, 1002).await;
    }
    // A new data frame while a fragmented message is open.
    let mut b = client_frame(false, 0, 1, b"{\"ev", M);
    b.extend(client_frame(true, 0, 1, b"{}", M));
    expect_close_code(&s, &b, 1002).await;
    // 64-bit length with the most significant bit set.
    let mut b = vec![0x81, 0xff];
    b.extend_from_slice(&(1u64 << 63).to_be_bytes());
    b.extend_from_slice(&[1, 2, 3, 4]);
    expect_close_code(&s, &b, 1002).await;
}

async fn invalid_utf8_closes_1007(io: IoMode) {
    let s = start(config(io));
    expect_close_code(&s, &client_frame(true, 0, 1, b"{\"a\":\"\xff\"}", M), 1007).await;
    // Split across fragments: a valid prefix then an invalid continuation.
    let mut b = client_frame(false, 0, 1, b"\xe2\x82", M);
    b.extend(client_frame(true, 0, 0, b"\x28", M));
    expect_close_code(&s, &b, 1007).await;
    // Truncated sequence at FIN.
    expect_close_code(&s, &client_frame(true, 0, 1, b"ok\xe2\x82", M), 1007).await;
    // Close reason that is not UTF-8.
    let mut p = 1000u16.to_be_bytes().to_vec();
    p.extend_from_slice(b"\xff\xfe");
    expect_close_code(&s, &client_frame(true, 0, 8, &p, M), 1007).await;
}

async fn message_size_limit_1009(io: IoMode) {
    let s = start(config(io));
    let max = 128 * 1024;
    // Exactly the limit: accepted (an invalid-JSON error proves it was read).
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&client_frame(true, 0, 1, &vec![b' '; max], M))
        .await;
    let (_, op, p) = r.read_frame().await.unwrap();
    assert_eq!(op, 1);
    assert_eq!(
        p,
        br#"{"event":"error","data":{"message":"Invalid message format"}}"#
    );
    // One byte more: 1009, decided from the header alone.
    let mut r = Raw::upgraded(s.addr).await;
    let f = client_frame(true, 0, 1, &vec![b' '; max + 1], M);
    r.write(&f[..14]).await;
    assert_eq!(r.read_close().await, 1009);
    // Fragments adding up to more than the limit.
    let mut b = client_frame(false, 0, 1, &vec![b' '; max / 2], M);
    b.extend(client_frame(false, 0, 0, &vec![b' '; max / 2], M));
    b.extend(client_frame(true, 0, 0, b" ", M));
    expect_close_code(&s, &b, 1009).await;
}

async fn configured_max_payload(io: IoMode) {
    let mut cfg = config(io);
    cfg.max_payload = 1024;
    let s = start(cfg);
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&client_frame(true, 0, 1, &[b' '; 1024], M)).await;
    let (_, op, _) = r.read_frame().await.unwrap();
    assert_eq!(op, 1, "1024 bytes are accepted");
    expect_close_code(&s, &client_frame(true, 0, 1, &[b' '; 1025], M), 1009).await;
}

async fn fragments_with_interleaved_ping(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    let mut b = client_frame(false, 0, 1, br#"{"event":"authen"#, M);
    b.extend(client_frame(true, 0, 9, b"hello", M));
    b.extend(client_frame(
        false,
        0,
        0,
        br#"ticate","data":{"userId":"#,
        M,
    ));
    b.extend(client_frame(true, 0, 0, "\"ü\"}}".as_bytes(), M));
    r.write(&b).await;
    let (fin, op, p) = r.read_frame().await.unwrap();
    assert!(fin);
    assert_eq!(
        (op, p.as_slice()),
        (10, &b"hello"[..]),
        "pong echoes the ping payload"
    );
    let (_, op, p) = r.read_frame().await.unwrap();
    assert_eq!(op, 1);
    let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
    assert_eq!(v["event"], "connected");
    assert_eq!(v["data"]["userId"], "ü");
}

async fn close_handshake_echoes_legal_codes(io: IoMode) {
    let s = start(config(io));
    for code in [1000u16, 1001, 1003, 1008, 1011, 3000, 3999, 4000, 4999] {
        let mut r = Raw::upgraded(s.addr).await;
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice("bye ✓".as_bytes());
        r.write(&client_frame(true, 0, 8, &p, M)).await;
        assert_eq!(r.read_close().await, code, "echo of {code}");
        assert!(r.read_to_end().await.is_empty());
    }
    // An empty close gets an empty close back.
    let mut r = Raw::upgraded(s.addr).await;
    r.write(&client_frame(true, 0, 8, b"", M)).await;
    assert_eq!(r.read_close().await, 1005);
}

async fn bytes_in_any_split_are_one_message(io: IoMode) {
    let s = start(config(io));
    let mut r = Raw::upgraded(s.addr).await;
    let f = text(r#"{"event":"authenticate","data":{"userId":"split"}}"#);
    for b in f.chunks(3) {
        r.write(b).await;
        r.s.flush().await.unwrap();
    }
    let (_, op, p) = r.read_frame().await.unwrap();
    assert_eq!(op, 1);
    assert!(String::from_utf8_lossy(&p).contains(r#""userId":"split""#));
}

use tokio::io::AsyncWriteExt;

io_tests!(
    configured_max_payload,
    protocol_errors_close_1002,
    invalid_utf8_closes_1007,
    message_size_limit_1009,
    fragments_with_interleaved_ping,
    close_handshake_echoes_legal_codes,
    bytes_in_any_split_are_one_message,
);
