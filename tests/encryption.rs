//! Per-client encryption (PROTOCOL.md §7): a WebCrypto client run by Node
//! talks to the server unchanged; the handshake's refusals; tampered and
//! wrong-key messages; errors and queued messages to encrypted clients; a
//! room of plain and encrypted clients where everyone gets each message
//! exactly once and the plain ones take the shared frame.
//!
//! The Rust-side encrypted client below is RustCrypto (p256, hkdf,
//! aes-gcm): an implementation independent of the server's aws-lc-rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::process::Stdio;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ignis_ws::ServerBuilder;
use ignis_ws::config::{EncryptionMode, IoMode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use util::*;

const INFO: &[u8] = b"ignis-ecdh-p256-aes-256-gcm-v1";

/// An encrypted client: the protocol client plus its AES key.
struct Enc {
    c: Client,
    key: Aes256Gcm,
    id: String,
}

/// A fresh client key pair: (secret, raw uncompressed public point, base64).
fn client_key() -> (p256::ecdh::EphemeralSecret, String) {
    let secret = p256::ecdh::EphemeralSecret::random(&mut rand_core::OsRng);
    let point = p256::EncodedPoint::from(secret.public_key());
    assert_eq!(point.as_bytes().len(), 65);
    (secret, B64.encode(point.as_bytes()))
}

fn derive(secret: &p256::ecdh::EphemeralSecret, connected: &Value) -> Aes256Gcm {
    let server = B64
        .decode(
            connected["serverPublicKey"]
                .as_str()
                .expect("serverPublicKey"),
        )
        .unwrap();
    let salt = B64
        .decode(connected["salt"].as_str().expect("salt"))
        .unwrap();
    assert_eq!(server.len(), 65);
    assert_eq!(salt.len(), 32);
    let shared = secret.diffie_hellman(&p256::PublicKey::from_sec1_bytes(&server).unwrap());
    let mut okm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared.raw_secret_bytes())
        .expand(INFO, &mut okm)
        .unwrap();
    Aes256Gcm::new_from_slice(&okm).unwrap()
}

/// A client of `url` that authenticates as `user` offering a new public key;
/// the key's secret half and the client (its answer not yet read).
async fn offer_key(url: &str, user: &str) -> (p256::ecdh::EphemeralSecret, Client) {
    let (secret, public) = client_key();
    let mut c = Client::connect(url).await;
    c.send(json!({"event":"authenticate","data":{"userId":user,"publicKey":public}}))
        .await;
    (secret, c)
}

impl Enc {
    async fn connect(url: &str, user: &str) -> Enc {
        let (secret, mut c) = offer_key(url, user).await;
        let m = c.recv().await;
        assert_eq!(m["event"], "connected", "{m}");
        let key = derive(&secret, &m["data"]);
        Enc {
            c,
            key,
            id: id_of(&m["data"]),
        }
    }

    /// The next message, which must be encrypted; returns the plaintext JSON.
    async fn recv(&mut self) -> Value {
        let m = self.c.recv().await;
        assert_eq!(
            m["event"], "encrypted",
            "in clear to an encrypted client: {m}"
        );
        let iv: [u8; 12] = B64
            .decode(m["data"]["iv"].as_str().unwrap())
            .unwrap()
            .try_into()
            .expect("a 12-byte IV");
        let ct = B64.decode(m["data"]["ct"].as_str().unwrap()).unwrap();
        let pt = self
            .key
            .decrypt(&Nonce::from(iv), ct.as_ref())
            .expect("decrypts with the derived key");
        serde_json::from_slice(&pt).unwrap()
    }

    fn seal(&self, msg: &Value) -> Value {
        let iv: [u8; 12] = rand_core::RngCore::next_u64(&mut rand_core::OsRng)
            .to_le_bytes()
            .iter()
            .chain([1, 2, 3, 4].iter())
            .copied()
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap();
        let ct = self
            .key
            .encrypt(&Nonce::from(iv), msg.to_string().as_bytes())
            .unwrap();
        json!({"event":"encrypted","data":{"iv":B64.encode(iv),"ct":B64.encode(ct)}})
    }

    async fn send(&mut self, msg: &Value) {
        let m = self.seal(msg);
        self.c.send(m).await;
    }
}

fn enc_config(io: IoMode, mode: EncryptionMode) -> ignis_ws::Config {
    let mut c = config(io);
    c.encryption = mode;
    c
}

/// The WebCrypto client (tests/clients/webcrypto_client.mjs): handshake,
/// an encrypted message up, a room and a direct message down, decrypted.
async fn webcrypto_client(io: IoMode) {
    let Some(flags) = node_or_skip("webcrypto_client", "globalThis.crypto?.subtle") else {
        return;
    };
    let (hooks, mut hook_rx) = ChannelHooks::new();
    let s = start_with(ServerBuilder::new(enc_config(io, EncryptionMode::Required)).hooks(hooks));
    let h = s.handle();
    let mut client = NodeClient::spawn(
        &flags,
        "webcrypto_client.mjs",
        &[&s.url(), "web-user"],
        Stdio::inherit(),
    );
    let connected = client.next().await;
    assert_eq!(connected["plain"]["event"], "connected", "{connected}");
    let id = connected["plain"]["data"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(connected["plain"]["data"]["userId"], "web-user");
    // The encrypted `ready` reached the message hook decrypted, after the
    // plain join on the same connection.
    loop {
        if let HookEvent::Message { event, data, .. } = next_hook(&mut hook_rx).await
            && event == "ready"
        {
            assert_eq!(data, Some(json!({"id":id,"secret":"from-webcrypto"})));
            break;
        }
    }
    h.to_room("secure:room", "news", &json!({"title":"hello"}), &[])
        .unwrap();
    h.to_client(&id, "direct", &json!("just you")).unwrap();
    h.broadcast("bye", &json!(null), &[]).unwrap();
    assert_eq!(
        client.next().await,
        json!({"decrypted":{"event":"news","data":{"title":"hello"}}})
    );
    assert_eq!(
        client.next().await,
        json!({"decrypted":{"event":"direct","data":"just you"}})
    );
    assert_eq!(
        client.next().await,
        json!({"decrypted":{"event":"bye","data":null}})
    );
    assert_eq!(client.next().await, json!({"closed":1000,"reason":"done"}));
    client.wait().await;
}

/// Required: no key, a key that is not base64, the wrong length, a point
/// off the curve, a key that is not a string → error, then 4004.
async fn required_refuses_missing_and_bad_keys(io: IoMode) {
    let s = start(enc_config(io, EncryptionMode::Required));
    let mut off_curve = [0x11u8; 65];
    off_curve[0] = 4;
    for data in [
        json!({"userId":"u"}),
        json!({"userId":"u","publicKey":null}),
        json!({"userId":"u","publicKey":"%%%not base64%%%"}),
        json!({"userId":"u","publicKey":B64.encode([4u8; 33])}),
        json!({"userId":"u","publicKey":B64.encode(off_curve)}),
        json!({"userId":"u","publicKey":12345}),
    ] {
        let mut c = Client::connect(&s.url()).await;
        c.send(json!({"event":"authenticate","data":data})).await;
        assert_eq!(
            c.recv().await,
            json!({"event":"error","data":{"message":"Encryption handshake failed"}}),
            "{data}"
        );
        assert_eq!(
            c.expect_close().await,
            (4004, "Encryption required".to_string()),
            "{data}"
        );
    }
    // The refused clients were never indexed: a broadcast reaches only the
    // good one, and it arrives encrypted.
    let mut e = Enc::connect(&s.url(), "u").await;
    s.handle().broadcast("b", &json!(1), &[]).unwrap();
    assert_eq!(e.recv().await, json!({"event":"b","data":1}));
    assert_eq!(
        metric(
            &metrics(s.addr).await,
            "ignis_ws_encryption_handshakes_failed_total"
        ),
        6
    );
}

/// Optional: without a key the client is plain (no key material in
/// `connected`); with a bad key it is refused like `required`.
async fn optional_mode(io: IoMode) {
    let s = start(enc_config(io, EncryptionMode::Optional));
    let (mut plain, d) = authed(&s.url(), "p").await;
    assert!(
        d.get("serverPublicKey").is_none() && d.get("salt").is_none(),
        "{d}"
    );
    let mut e = Enc::connect(&s.url(), "e").await;
    let mut bad = Client::connect(&s.url()).await;
    bad.send(json!({"event":"authenticate","data":{"publicKey":"AAAA"}}))
        .await;
    assert_eq!(
        bad.recv().await["data"]["message"],
        "Encryption handshake failed"
    );
    assert_eq!(bad.expect_close().await.0, 4004);
    s.handle().broadcast("hi", &json!({"n":1}), &[]).unwrap();
    assert_eq!(plain.recv().await, json!({"event":"hi","data":{"n":1}}));
    assert_eq!(e.recv().await, json!({"event":"hi","data":{"n":1}}));
    // Off: a publicKey is ignored.
    let s2 = start(enc_config(io, EncryptionMode::Off));
    let (_, mut c) = offer_key(&s2.url(), "x").await;
    let m = c.recv().await;
    assert_eq!(m["event"], "connected");
    assert!(m["data"].get("serverPublicKey").is_none(), "{m}");
}

/// Inbound: a good encrypted message reaches the hook decrypted; a
/// tampered one, one under another key and a malformed one get an
/// (encrypted) error, are counted and dropped; the connection stays. A
/// server error for an encrypted client is encrypted too.
async fn inbound_and_errors(io: IoMode) {
    let (hooks, mut hook_rx) = ChannelHooks::new();
    let s = start_with(ServerBuilder::new(enc_config(io, EncryptionMode::Required)).hooks(hooks));
    let mut e = Enc::connect(&s.url(), "u").await;
    let other = Enc::connect(&s.url(), "v").await;
    // Tampered ciphertext.
    let mut m = e.seal(&json!({"event":"chat","data":"x"}));
    let mut ct = B64.decode(m["data"]["ct"].as_str().unwrap()).unwrap();
    ct[3] ^= 0x40;
    m["data"]["ct"] = json!(B64.encode(&ct));
    e.c.send(m).await;
    assert_eq!(
        e.recv().await,
        json!({"event":"error","data":{"message":"Decryption failed"}})
    );
    // Sealed under another client's key.
    let m = other.seal(&json!({"event":"chat","data":"x"}));
    e.c.send(m).await;
    assert_eq!(e.recv().await["data"]["message"], "Decryption failed");
    // Wrong shape, and a nested envelope.
    e.c.send(json!({"event":"encrypted","data":{"iv":"AAAA"}}))
        .await;
    assert_eq!(e.recv().await["data"]["message"], "Decryption failed");
    let inner = e.seal(&json!({"event":"chat","data":"x"}));
    e.send(&inner).await;
    assert_eq!(e.recv().await["data"]["message"], "Decryption failed");
    // Invalid JSON in clear: the error goes out encrypted.
    e.c.send_text("not json").await;
    assert_eq!(
        e.recv().await,
        json!({"event":"error","data":{"message":"Invalid message format"}})
    );
    // Still connected, and a good message gets through decrypted.
    e.send(&json!({"event":"chat","data":{"text":"secret"}}))
        .await;
    loop {
        if let HookEvent::Message {
            event,
            data,
            client_id,
            ..
        } = next_hook(&mut hook_rx).await
            && event == "chat"
        {
            assert_eq!(client_id, e.id);
            assert_eq!(data, Some(json!({"text":"secret"})));
            break;
        }
    }
    // A join sent encrypted is applied like a plain one.
    e.send(&json!({"event":"join","data":{"rooms":["r"]}}))
        .await;
    e.send(&json!({"event":"sync"})).await;
    loop {
        if let HookEvent::Message { event, .. } = next_hook(&mut hook_rx).await
            && event == "sync"
        {
            break;
        }
    }
    s.handle().to_room("r", "in-room", &json!(1), &[]).unwrap();
    assert_eq!(e.recv().await, json!({"event":"in-room","data":1}));
    assert_eq!(
        metric(&metrics(s.addr).await, "ignis_ws_decrypt_failures_total"),
        4
    );
    drop(other);
}

/// 1,000 plain and 100 encrypted clients in one room: each message
/// reaches everyone exactly once; the plain ones get the shared frame
/// (byte-identical, and only the 100 cost an encryption each).
async fn mixed_room(io: IoMode) {
    const PLAIN: usize = 1000;
    const ENC: usize = 100;
    const MSGS: usize = 5;
    let s = start(enc_config(io, EncryptionMode::Optional));
    let url = s.url();
    let mut plain = Vec::with_capacity(PLAIN);
    for i in 0..PLAIN {
        let (mut c, _) = authed(&url, &format!("p{i}")).await;
        c.join(&["mixed"]).await;
        plain.push(c);
    }
    let mut enc = Vec::with_capacity(ENC);
    for i in 0..ENC {
        let mut e = Enc::connect(&url, &format!("e{i}")).await;
        e.c.join(&["mixed"]).await;
        enc.push(e);
    }
    // Every join applied: a probe through each connection answers after it.
    for c in &mut plain {
        c.expect_silence().await;
    }
    for e in &mut enc {
        e.c.send_text("#probe#").await;
        assert_eq!(e.recv().await["data"]["message"], "Invalid message format");
    }
    let before = metric(&metrics(s.addr).await, "ignis_ws_messages_encrypted_total");
    let h = s.handle();
    for i in 0..MSGS {
        h.to_room("mixed", "m", &json!({"i":i}), &[]).unwrap();
    }
    let expected: Vec<String> = (0..MSGS)
        .map(|i| format!(r#"{{"event":"m","data":{{"i":{i}}}}}"#))
        .collect();
    let plain_tasks: Vec<_> = plain
        .into_iter()
        .map(|mut c| {
            let expected = expected.clone();
            tokio::spawn(async move {
                for want in &expected {
                    assert_eq!(&c.recv_text().await, want);
                }
                c.expect_silence().await;
            })
        })
        .collect();
    let enc_tasks: Vec<_> = enc
        .into_iter()
        .map(|mut e| {
            tokio::spawn(async move {
                for i in 0..MSGS {
                    assert_eq!(e.recv().await, json!({"event":"m","data":{"i":i}}));
                }
                // Exactly once: nothing else is queued behind them.
                e.c.send_text("#probe#").await;
                assert_eq!(e.recv().await["data"]["message"], "Invalid message format");
            })
        })
        .collect();
    for t in plain_tasks.into_iter().chain(enc_tasks) {
        t.await.unwrap();
    }
    let after = metric(&metrics(s.addr).await, "ignis_ws_messages_encrypted_total");
    // One encryption per encrypted recipient per message, plus each one's
    // probe answer: none for the plain clients.
    assert_eq!(after - before, (ENC * MSGS + ENC) as i64);
}

/// Messages accepted for an encrypted client before a shutdown are
/// encrypted and delivered before the 1001 close, all of them, in order.
async fn shutdown_delivers_queued_encrypted_messages(io: IoMode) {
    let mut cfg = enc_config(io, EncryptionMode::Required);
    cfg.encrypted_batch_limit = 7;
    let s = start(cfg);
    let mut e = Enc::connect(&s.url(), "u").await;
    let h = s.handle();
    for i in 0..2000 {
        h.to_client(&e.id, "n", &json!(i)).unwrap();
    }
    let shutdown = tokio::spawn(s.shutdown());
    for i in 0..2000 {
        assert_eq!(e.recv().await, json!({"event":"n","data":i}));
    }
    assert_eq!(e.c.expect_close().await.0, 1001);
    shutdown.await.unwrap();
}

/// `connected` carries the key material in the reference's key order; the
/// IV is fresh for every message (none repeats across the 1,000 a client
/// receives) and the frame has exactly the documented shape and key order.
async fn frame_shape_and_fresh_ivs(io: IoMode) {
    let s = start(enc_config(io, EncryptionMode::Required));
    let (secret, mut c) = offer_key(&s.url(), "u1").await;
    let text = c.recv_text().await;
    let connected: Value = serde_json::from_str(&text).unwrap();
    let d = &connected["data"];
    let id = id_of(d);
    assert_eq!(
        text,
        format!(
            r#"{{"event":"connected","data":{{"id":"{id}","userId":"u1","time":"{}","serverPublicKey":"{}","salt":"{}"}}}}"#,
            d["time"].as_str().unwrap(),
            d["serverPublicKey"].as_str().unwrap(),
            d["salt"].as_str().unwrap()
        )
    );
    assert_eq!(d["serverPublicKey"].as_str().unwrap().len(), 88);
    assert_eq!(d["salt"].as_str().unwrap().len(), 44);
    let mut e = Enc {
        key: derive(&secret, d),
        c,
        id,
    };
    let h = s.handle();
    for i in 0..1000 {
        h.to_client(&e.id, "n", &json!(i)).unwrap();
    }
    let mut ivs = std::collections::HashSet::new();
    for _ in 0..1000 {
        let Some(Message::Text(t)) = e.c.next().await else {
            panic!("text expected")
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        let obj = v["data"].as_object().unwrap();
        assert_eq!(obj.len(), 2, "{t}");
        assert!(
            t.starts_with(r#"{"event":"encrypted","data":{"iv":""#)
                && t.contains(r#"","ct":""#)
                && t.ends_with(r#""}}"#),
            "{t}"
        );
        assert_eq!(obj["iv"].as_str().unwrap().len(), 16);
        assert!(
            ivs.insert(obj["iv"].as_str().unwrap().to_string()),
            "IV reused"
        );
    }
}

io_tests!(
    webcrypto_client,
    required_refuses_missing_and_bad_keys,
    optional_mode,
    inbound_and_errors,
    mixed_room,
    shutdown_delivers_queued_encrypted_messages,
    frame_shape_and_fresh_ivs,
);
