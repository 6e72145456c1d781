//! The record layer against a real rustls client, in memory: both
//! versions, every cipher suite, records split anywhere, key updates both
//! ways, close_notify, idle key release, and hostile records.

use std::io::{IoSlice, Read, Write};
use std::sync::Arc;

use rustls::ClientConnection;
use rustls::pki_types::ServerName;

use super::handshake::Step;
use super::{Handshake, Session, Tls, TlsError};

/// A CA, a certificate for `localhost` signed by it (full chain), its key,
/// written to a temporary directory.
pub(crate) struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_der: Vec<u8>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let ca_der = write_pki(dir.path(), "localhost");
        TestPki { dir, ca_der }
    }
    pub fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }
    pub fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }
}

#[path = "../../tests/util/pki.rs"]
mod pki;
use pki::write_pki;

fn client(
    pki: &TestPki,
    version: &'static rustls::SupportedProtocolVersion,
    suite: Option<rustls::CipherSuite>,
) -> ClientConnection {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone().into()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(s) = suite {
        provider.cipher_suites.retain(|c| c.suite() == s);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut c = ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
        .unwrap();
    c.set_buffer_limit(None);
    c
}

/// Everything the client wants to send.
fn client_out(c: &mut ClientConnection) -> Vec<u8> {
    let mut v = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut v).unwrap();
    }
    v
}

/// Feed server bytes to the client; returns the plaintext it got.
fn client_in(c: &mut ClientConnection, mut data: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !data.is_empty() {
        c.read_tls(&mut data).unwrap();
        c.process_new_packets().unwrap();
        loop {
            match c.reader().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
    }
    got
}

/// Handshake in memory; the client's first flight after the handshake
/// carries `early_app` (like an HTTP request sent with its Finished).
fn connect(pki: &TestPki, c: &mut ClientConnection, early_app: &[u8]) -> (Session, Vec<u8>) {
    let tls = Tls::load(&pki.cert(), &pki.key()).unwrap();
    let mut hs = Handshake::new(tls.server_config()).unwrap();
    let mut sent_early = false;
    for _ in 0..10 {
        let from_client = client_out(c);
        hs.feed(&from_client).unwrap();
        let mut out = Vec::new();
        let step = hs.step(&mut out).unwrap();
        client_in(c, &out);
        if !c.is_handshaking() && !sent_early {
            c.writer().write_all(early_app).unwrap();
            sent_early = true;
            hs.feed(&client_out(c)).unwrap();
            let mut out = Vec::new();
            let step = hs.step(&mut out).unwrap();
            client_in(c, &out);
            if step == Step::Done {
                return hs.finish().unwrap();
            }
        }
        if step == Step::Done && sent_early {
            return hs.finish().unwrap();
        }
    }
    panic!("handshake did not finish");
}

const VERSIONS: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

#[test]
fn every_version_and_suite_carries_data_both_ways() {
    let pki = TestPki::new();
    use rustls::CipherSuite as S;
    let cases = [
        (&rustls::version::TLS13, S::TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, S::TLS13_AES_256_GCM_SHA384),
        (&rustls::version::TLS13, S::TLS13_CHACHA20_POLY1305_SHA256),
        (
            &rustls::version::TLS12,
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ];
    for (v, suite) in cases {
        let mut c = client(&pki, v, Some(suite));
        let (mut s, early) = connect(&pki, &mut c, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.suite(), suite);
        assert_eq!(early, b"GET / HTTP/1.1\r\n\r\n", "{suite:?}");
        // Server to client: three frames, one record.
        let frames: [&[u8]; 3] = [b"one", b"two", b"three"];
        let iov: Vec<IoSlice> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut out = Vec::new();
        assert_eq!(s.seal(&iov, usize::MAX, &mut out).unwrap(), 11);
        assert_eq!(client_in(&mut c, &out), b"onetwothree", "{suite:?}");
        // Big: spans records; the client sees it whole.
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        s.seal_all(&big, &mut out).unwrap();
        assert_eq!(client_in(&mut c, &out), big, "{suite:?}");
        // Client to server, split at every possible point of a record.
        c.writer().write_all(b"hello server").unwrap();
        let wire = client_out(&mut c);
        let mut plain = Vec::new();
        for b in wire.chunks(1) {
            s.open(b, &mut plain).unwrap();
        }
        assert_eq!(plain, b"hello server", "{suite:?}");
        // A big client message.
        c.writer().write_all(&big).unwrap();
        let wire = client_out(&mut c);
        let mut plain = Vec::new();
        for b in wire.chunks(7000) {
            s.open(b, &mut plain).unwrap();
        }
        assert_eq!(plain, big, "{suite:?}");
    }
}

#[test]
fn seal_takes_at_most_max_and_resumes_mid_chunk() {
    let pki = TestPki::new();
    let mut c = client(&pki, &rustls::version::TLS13, None);
    let (mut s, _) = connect(&pki, &mut c, b"x");
    let a = vec![b'a'; 30_000];
    let b = vec![b'b'; 10];
    let iov = [IoSlice::new(&a), IoSlice::new(&b)];
    let mut out = Vec::new();
    assert_eq!(s.seal(&iov, 20_000, &mut out).unwrap(), 20_000);
    assert_eq!(client_in(&mut c, &out), vec![b'a'; 20_000]);
}

#[test]
fn close_notify_both_ways() {
    let pki = TestPki::new();
    for v in VERSIONS {
        let mut c = client(&pki, v, None);
        let (mut s, _) = connect(&pki, &mut c, b"x");
        c.writer().write_all(b"last").unwrap();
        c.send_close_notify();
        let mut plain = Vec::new();
        let opened = s.open(&client_out(&mut c), &mut plain).unwrap();
        assert!(opened.peer_closed);
        assert_eq!(plain, b"last");
        let mut out = Vec::new();
        s.seal_close_notify(&mut out).unwrap();
        let mut data = &out[..];
        c.read_tls(&mut data).unwrap();
        let st = c.process_new_packets().unwrap();
        assert!(st.peer_has_closed());
    }
}

#[test]
fn a_key_update_from_the_client_is_followed_and_answered() {
    use rustls::CipherSuite as S;
    let pki = TestPki::new();
    for suite in [
        S::TLS13_AES_128_GCM_SHA256,
        S::TLS13_AES_256_GCM_SHA384,
        S::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        key_update_round_trip(&pki, suite);
    }
}

fn key_update_round_trip(pki: &TestPki, suite: rustls::CipherSuite) {
    let mut c = client(pki, &rustls::version::TLS13, Some(suite));
    let (mut s, _) = connect(pki, &mut c, b"x");
    // rustls's refresh asks the peer to update too.
    c.refresh_traffic_keys().unwrap();
    c.writer().write_all(b"after update").unwrap();
    let mut plain = Vec::new();
    s.open(&client_out(&mut c), &mut plain).unwrap();
    assert_eq!(plain, b"after update");
    // Our answer (KeyUpdate under the old key) goes before our next
    // record, then data under the new key.
    assert!(s.pending.is_empty(), "nothing is queued per request");
    let mut out = Vec::new();
    s.seal_all(b"new keys", &mut out).unwrap();
    assert!(out.len() > 2 * 22, "a KeyUpdate record, then the data");
    assert_eq!(client_in(&mut c, &out), b"new keys", "{suite:?}");
    // And again: the second update starts from the first's secret.
    c.refresh_traffic_keys().unwrap();
    c.writer().write_all(b"twice").unwrap();
    let mut plain = Vec::new();
    s.open(&client_out(&mut c), &mut plain).unwrap();
    assert_eq!(plain, b"twice", "{suite:?}");
    let mut out = Vec::new();
    s.seal_all(b"both ways", &mut out).unwrap();
    assert_eq!(client_in(&mut c, &out), b"both ways", "{suite:?}");
}

#[test]
fn we_update_our_key_before_the_limit() {
    let pki = TestPki::new();
    let mut c = client(&pki, &rustls::version::TLS13, None);
    let (mut s, _) = connect(&pki, &mut c, b"x");
    s.tx_limit = 2;
    let mut out = Vec::new();
    for word in ["one ", "two ", "three ", "four ", "five"] {
        s.seal_all(word.as_bytes(), &mut out).unwrap();
    }
    // Two records, KeyUpdate, two records, KeyUpdate, one record.
    assert_eq!(s.tx.seq, 1);
    assert_eq!(client_in(&mut c, &out), b"one two three four five");
}

#[test]
fn idle_sessions_drop_their_keys_and_rebuild_them() {
    let pki = TestPki::new();
    let mut c = client(&pki, &rustls::version::TLS13, None);
    let (mut s, _) = connect(&pki, &mut c, b"x");
    // Nothing sealed or opened by us yet: no expanded key.
    assert!(!s.holds_keys());
    let mut out = Vec::new();
    s.seal_all(b"wake", &mut out).unwrap();
    assert!(s.holds_keys());
    assert_eq!(client_in(&mut c, &out), b"wake");
    s.release_idle();
    assert!(s.holds_keys());
    s.release_idle();
    assert!(!s.holds_keys());
}

#[test]
fn hostile_records_are_refused() {
    let pki = TestPki::new();
    for v in VERSIONS {
        let mut c = client(&pki, v, None);
        let (mut s, _) = connect(&pki, &mut c, b"x");
        let mut plain = Vec::new();
        // Not TLS.
        assert!(matches!(
            s.open(b"GET / HTTP/1.1\r\n", &mut plain),
            Err(TlsError::BadRecord(_))
        ));
        let (mut s, _) = connect(&pki, &mut client(&pki, v, None), b"x");
        // Longer than any record may be.
        assert!(matches!(
            s.open(&[23, 3, 3, 0xff, 0xff], &mut plain),
            Err(TlsError::TooLarge)
        ));
        // A flipped bit.
        let mut c = client(&pki, v, None);
        let (mut s, _) = connect(&pki, &mut c, b"x");
        c.writer().write_all(b"data").unwrap();
        let mut wire = client_out(&mut c);
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert!(matches!(s.open(&wire, &mut plain), Err(TlsError::Decrypt)));
        // Too short to hold a tag.
        let (mut s, _) = connect(&pki, &mut client(&pki, v, None), b"x");
        assert!(s.open(&[23, 3, 3, 0, 3, 1, 2, 3], &mut plain).is_err());
        assert!(plain.is_empty());
    }
}

#[test]
fn garbage_instead_of_a_client_hello_fails_the_handshake() {
    let pki = TestPki::new();
    let tls = Tls::load(&pki.cert(), &pki.key()).unwrap();
    let mut hs = Handshake::new(tls.server_config()).unwrap();
    hs.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(hs.step(&mut Vec::new()).is_err());
    let mut hs = Handshake::new(tls.server_config()).unwrap();
    assert!(matches!(
        hs.feed(&vec![22; 70_000]),
        Err(TlsError::TooLarge)
    ));
}

#[test]
fn load_errors_name_the_setting_and_reload_keeps_the_old_pair() {
    let pki = TestPki::new();
    let missing = pki.dir.path().join("nope.pem");
    let e = Tls::load(&missing, &pki.key()).unwrap_err().to_string();
    assert!(e.starts_with("--tls-cert "), "{e}");
    let e = Tls::load(&pki.cert(), &missing).unwrap_err().to_string();
    assert!(e.starts_with("--tls-key "), "{e}");
    // The key of another certificate.
    let other = tempfile::tempdir().unwrap();
    write_pki(other.path(), "localhost");
    let e = Tls::load(&pki.cert(), &other.path().join("key.pem"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong"), "{e}");
    // Key material never shows up in an error.
    let e = Tls::load(&pki.key(), &pki.key()).unwrap_err().to_string();
    assert!(!e.contains("PRIVATE") && !e.contains("MII"), "{e}");

    let tls = Tls::load(&pki.cert(), &pki.key()).unwrap();
    let before = tls.current_cert();
    std::fs::write(pki.cert(), "garbage").unwrap();
    assert!(tls.reload().is_err());
    assert_eq!(tls.current_cert(), before);
    write_pki(pki.dir.path(), "localhost");
    tls.reload().unwrap();
    assert_ne!(tls.current_cert(), before);
}

/// What an idle TLS connection keeps: the boxed session alone (no rustls
/// state, no expanded key, no buffer). Its size is printed; the end-to-end
/// figure is in PERFORMANCE.md.
#[test]
fn idle_session_keeps_only_itself() {
    let pki = TestPki::new();
    let mut c = client(&pki, &rustls::version::TLS13, None);
    let (mut s, _) = connect(&pki, &mut c, b"x");
    let mut out = Vec::new();
    s.seal_all(b"y", &mut out).unwrap();
    s.release_idle();
    s.release_idle();
    assert!(!s.holds_keys());
    println!("Session {} B", std::mem::size_of::<Session>());
    assert!(std::mem::size_of::<Session>() <= 512);
}

/// A KeyUpdate flood: many requests get one answer, and more than 32 in a
/// row without application data end the connection.
#[test]
fn key_update_requests_are_answered_once_and_bounded() {
    let pki = TestPki::new();
    let mut c = client(&pki, &rustls::version::TLS13, None);
    let (mut s, _) = connect(&pki, &mut c, b"x");
    let mut plain = Vec::new();
    for _ in 0..5 {
        c.refresh_traffic_keys().unwrap();
        // rustls sends its KeyUpdate with the next data.
        c.writer().write_all(b"d").unwrap();
        s.open(&client_out(&mut c), &mut plain).unwrap();
    }
    assert_eq!(plain, b"ddddd");
    let mut out = Vec::new();
    s.seal_all(b"ok", &mut out).unwrap();
    // One KeyUpdate record and one data record: 2 × (5 + 5 or 2 + 1 + 16).
    assert_eq!(out.len(), (5 + 5 + 1 + 16) + (5 + 2 + 1 + 16));
    assert_eq!(client_in(&mut c, &out), b"ok");
    // 40 KeyUpdates with no data between them.
    let mut c = client(&pki, &rustls::version::TLS13, None);
    let (mut s, _) = connect(&pki, &mut c, b"x");
    for _ in 0..40 {
        c.refresh_traffic_keys().unwrap();
    }
    let r = s.open(&client_out(&mut c), &mut plain);
    assert!(
        matches!(r, Err(TlsError::Unexpected("too many key updates"))),
        "{r:?}"
    );
}
