//! JWT key sets through a real server: several `--jwt-public-key`s, and
//! `--jwt-jwks-url` against a local JWKS server that rotates keys, fails and
//! hangs (refresh on an unknown kid, the refresh limit, the old set kept on
//! failure, cached kids unaffected by a hung JWKS server, start while the
//! JWKS server is down). Keys are generated per run with aws-lc-rs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use ignis_ws::auth::JwksConfig;
use ignis_ws::config::{AuthMode, IoMode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use util::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A fresh P-256 key pair: signs ES256 tokens, shows itself as a JWK or a
/// PEM public key.
struct EcKey {
    encoding: EncodingKey,
    /// Uncompressed point: 0x04 || x || y.
    point: Vec<u8>,
}

impl EcKey {
    fn generate() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        EcKey {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            point: pair.public_key().as_ref().to_vec(),
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "use": "sig",
            "alg": "ES256",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&self.point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&self.point[33..65]),
        })
    }

    /// SubjectPublicKeyInfo PEM (the fixed P-256 prefix, then the point).
    fn public_pem(&self) -> String {
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        der.extend_from_slice(&self.point);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }

    fn token(&self, kid: Option<&str>, sub: &str) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_owned);
        encode(&h, &json!({"sub": sub, "exp": now() + 60}), &self.encoding).unwrap()
    }
}

/// What the JWKS server answers.
#[derive(Clone)]
enum Mode {
    Serve(Value),
    Fail,
    Hang,
}

/// A JWKS server on its own thread and runtime (so a test that blocks its
/// own runtime, e.g. in `start`, cannot starve it). Counts requests.
struct JwksServer {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(mode: Mode) -> Self {
        let mode = Arc::new(Mutex::new(mode));
        let hits = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (m, h) = (mode.clone(), hits.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        break;
                    };
                    let (m, h) = (m.clone(), h.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |_req: Request<_>| {
                            h.fetch_add(1, Ordering::SeqCst);
                            let mode = m.lock().unwrap().clone();
                            async move {
                                let (status, body) = match mode {
                                    Mode::Serve(v) => (200, v.to_string()),
                                    Mode::Fail => (500, "down".to_owned()),
                                    Mode::Hang => {
                                        tokio::time::sleep(Duration::from_secs(30)).await;
                                        (200, "{}".to_owned())
                                    }
                                };
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        JwksServer { addr, mode, hits }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Until the server has had at least `n` requests.
    async fn until_hits(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.hits() < n {
            assert!(
                Instant::now() < deadline,
                "{} requests, not {n}",
                self.hits()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn config(&self) -> JwksConfig {
        JwksConfig {
            url: format!("http://{}/.well-known/jwks.json", self.addr),
            refresh: None,
            refresh_min: REFRESH_MIN,
            timeout: Duration::from_millis(500),
        }
    }
}

const REFRESH_MIN: Duration = Duration::from_millis(400);

fn jwks(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

fn jwks_server(io: IoMode, jwks: JwksConfig) -> TestServer {
    let mut cfg = config(io);
    // The defaults of a JWT mode, with the key set as the only key.
    cfg.auth = AuthMode::jwt_secret("unused-unused-unused-unused-unused");
    if let AuthMode::Jwt {
        secret, jwks: j, ..
    } = &mut cfg.auth
    {
        *secret = None;
        *j = Some(jwks);
    }
    start(cfg)
}

/// `Some(userId)` if the token is accepted, `None` if refused.
async fn login(url: &str, token: &str) -> Option<String> {
    let mut c = Client::connect(url).await;
    c.send(json!({"event":"authenticate","data":{"token":token}}))
        .await;
    let m = c.recv().await;
    if m["event"] == "connected" {
        return Some(m["data"]["userId"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        m,
        json!({"event":"error","data":{"message":"Authentication failed"}})
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_refresh_limit_failure_and_hang() {
    let (k1, k2, k3, k4) = (
        EcKey::generate(),
        EcKey::generate(),
        EcKey::generate(),
        EcKey::generate(),
    );
    let idp = JwksServer::start(Mode::Serve(jwks(&[k1.jwk("k1")])));
    let s = jwks_server(IoMode::Auto, idp.config());
    let url = s.url();
    assert_eq!(idp.hits(), 1, "fetched once at start");

    // A cached kid: accepted without a fetch; so is a token without kid
    // (tried against the set's keys of its alg).
    assert_eq!(
        login(&url, &k1.token(Some("k1"), "one")).await.as_deref(),
        Some("one")
    );
    assert_eq!(
        login(&url, &k1.token(None, "nokid")).await.as_deref(),
        Some("nokid")
    );
    // A kid naming a key that did not sign the token: refused, no fetch.
    assert_eq!(login(&url, &k2.token(Some("k1"), "x")).await, None);
    assert_eq!(idp.hits(), 1);

    // Rotation: k2 appears under a new kid; its first token refreshes.
    idp.set(Mode::Serve(jwks(&[k1.jwk("k1"), k2.jwk("k2")])));
    tokio::time::sleep(REFRESH_MIN + Duration::from_millis(100)).await;
    assert_eq!(
        login(&url, &k2.token(Some("k2"), "two")).await.as_deref(),
        Some("two")
    );
    assert_eq!(idp.hits(), 2);

    // Another unknown kid within --jwt-jwks-refresh-min-s: refused at once,
    // no second fetch.
    let t = Instant::now();
    assert_eq!(login(&url, &k3.token(Some("k3"), "x")).await, None);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(idp.hits(), 2);

    // A failing fetch keeps the old set.
    idp.set(Mode::Fail);
    tokio::time::sleep(REFRESH_MIN + Duration::from_millis(100)).await;
    assert_eq!(login(&url, &k3.token(Some("k3"), "x")).await, None);
    assert_eq!(idp.hits(), 3);
    assert_eq!(
        login(&url, &k1.token(Some("k1"), "one")).await.as_deref(),
        Some("one")
    );
    assert_eq!(
        login(&url, &k2.token(Some("k2"), "two")).await.as_deref(),
        Some("two")
    );

    // A hung JWKS server: an unknown kid waits for the timeout and is
    // refused; meanwhile cached kids authenticate at once, and further
    // unknown kids join the one fetch in flight.
    idp.set(Mode::Hang);
    tokio::time::sleep(REFRESH_MIN + Duration::from_millis(100)).await;
    let hits_before = idp.hits();
    let t = Instant::now();
    let (u1, u2) = (url.clone(), url.clone());
    let (t4, t4b) = (k4.token(Some("k4"), "four"), k4.token(Some("k4b"), "four"));
    let waiting = tokio::spawn(async move { login(&u1, &t4).await });
    // Its fetch is in flight before the second unknown kid arrives.
    idp.until_hits(hits_before + 1).await;
    let joined = tokio::spawn(async move { login(&u2, &t4b).await });
    let cached = Instant::now();
    assert_eq!(
        login(&url, &k1.token(Some("k1"), "one")).await.as_deref(),
        Some("one")
    );
    assert!(
        cached.elapsed() < Duration::from_millis(300),
        "a cached kid waited for the hung JWKS server: {:?}",
        cached.elapsed()
    );
    assert_eq!(waiting.await.unwrap(), None);
    assert_eq!(joined.await.unwrap(), None);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(idp.hits(), hits_before + 1, "one fetch in flight at a time");

    // The JWKS server recovers: the new key is picked up.
    idp.set(Mode::Serve(jwks(&[k1.jwk("k1"), k4.jwk("k4")])));
    tokio::time::sleep(REFRESH_MIN + Duration::from_millis(100)).await;
    assert_eq!(
        login(&url, &k4.token(Some("k4"), "four")).await.as_deref(),
        Some("four")
    );
    // k2 left the set: its tokens are refused now.
    assert_eq!(login(&url, &k2.token(Some("k2"), "two")).await, None);
}

/// Start with the JWKS server down: the server starts, refuses tokens, and
/// accepts them once a fetch succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_at_start() {
    let k1 = EcKey::generate();
    let idp = JwksServer::start(Mode::Fail);
    let s = jwks_server(IoMode::Auto, idp.config());
    let url = s.url();
    assert_eq!(login(&url, &k1.token(Some("k1"), "one")).await, None);
    idp.set(Mode::Serve(jwks(&[k1.jwk("k1")])));
    tokio::time::sleep(REFRESH_MIN + Duration::from_millis(100)).await;
    assert_eq!(
        login(&url, &k1.token(Some("k1"), "one")).await.as_deref(),
        Some("one")
    );
    // An oversized answer or junk is a failed fetch: the set stays.
    idp.set(Mode::Serve(json!({ "keys": "x".repeat(2 << 20) })));
    tokio::time::sleep(REFRESH_MIN + Duration::from_millis(100)).await;
    assert_eq!(login(&url, &k1.token(Some("k2"), "x")).await, None);
    assert_eq!(
        login(&url, &k1.token(Some("k1"), "one")).await.as_deref(),
        Some("one")
    );
}

/// `--jwt-public-key` twice: tokens of either key are accepted, others not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_static_public_keys() {
    let (a, b, other) = (EcKey::generate(), EcKey::generate(), EcKey::generate());
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.pem"), dir.path().join("b.pem"));
    std::fs::write(&pa, a.public_pem()).unwrap();
    std::fs::write(&pb, b.public_pem()).unwrap();
    let mut cfg = config(IoMode::Auto);
    cfg.auth = AuthMode::jwt_public_key(&pa);
    if let AuthMode::Jwt {
        public_key_files, ..
    } = &mut cfg.auth
    {
        public_key_files.push(pb);
    }
    let s = start(cfg);
    let url = s.url();
    assert_eq!(login(&url, &a.token(None, "a")).await.as_deref(), Some("a"));
    assert_eq!(login(&url, &b.token(None, "b")).await.as_deref(), Some("b"));
    // A kid is ignored by static keys.
    assert_eq!(
        login(&url, &b.token(Some("kid"), "b")).await.as_deref(),
        Some("b")
    );
    assert_eq!(login(&url, &other.token(None, "x")).await, None);
    // HS256 keyed with a configured public key: refused (key confusion).
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"mallory","exp":now()+60}),
        &EncodingKey::from_secret(a.public_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(login(&url, &forged).await, None);
}

/// RSA (no `alg`: RS256/384/512) and Ed25519 keys from a JWKS; an `oct`
/// key in the set is never used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rsa_ed25519_and_oct_keys() {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
    use aws_lc_rs::signature::{Ed25519KeyPair, RsaKeyPair};

    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let rsa_pkcs8 = rsa.as_der().unwrap();
    let rsa_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(rsa_pkcs8.as_ref())
    );
    let rsa_enc = EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).unwrap();
    let parts = PublicKeyComponents::<Vec<u8>>::from(rsa.public_key());
    let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8v1(&SystemRandom::new()).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8_maybe_unchecked(ed_pkcs8.as_ref()).unwrap();
    let ed_enc = EncodingKey::from_ed_der(ed_pkcs8.as_ref());
    let secret = b"a shared secret that is long enough!";
    let idp = JwksServer::start(Mode::Serve(jwks(&[
        json!({"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode(&parts.n),
               "e": URL_SAFE_NO_PAD.encode(&parts.e)}),
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed",
               "x": URL_SAFE_NO_PAD.encode(ed.public_key().as_ref())}),
        json!({"kty": "oct", "kid": "h", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)}),
    ])));
    let s = jwks_server(IoMode::Auto, idp.config());
    let url = s.url();
    let sign = |alg: Algorithm, kid: &str, key: &EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.to_owned());
        encode(
            &h,
            &json!({"sub": format!("{alg:?}"), "exp": now() + 60}),
            key,
        )
        .unwrap()
    };
    for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512] {
        let t = sign(alg, "r", &rsa_enc);
        assert_eq!(login(&url, &t).await, Some(format!("{alg:?}")));
    }
    assert_eq!(
        login(&url, &sign(Algorithm::EdDSA, "ed", &ed_enc))
            .await
            .as_deref(),
        Some("EdDSA")
    );
    // PS256 is not implied by an RSA key without alg; an RSA token under
    // the Ed25519 kid; the oct key's kid with its secret: all refused.
    assert_eq!(
        login(&url, &sign(Algorithm::PS256, "r", &rsa_enc)).await,
        None
    );
    assert_eq!(
        login(&url, &sign(Algorithm::RS256, "ed", &rsa_enc)).await,
        None
    );
    let hs = sign(Algorithm::HS256, "h", &EncodingKey::from_secret(secret));
    assert_eq!(login(&url, &hs).await, None);
}

/// `--jwt-jwks-refresh-s`: the set is refreshed on its own, so a new key
/// is known before its first token (whose unknown-kid refresh the long
/// refresh limit would refuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_periodic_refresh() {
    let (k1, k2) = (EcKey::generate(), EcKey::generate());
    let idp = JwksServer::start(Mode::Serve(jwks(&[k1.jwk("k1")])));
    let mut c = idp.config();
    c.refresh = Some(Duration::from_millis(300));
    c.refresh_min = Duration::from_secs(600);
    let s = jwks_server(IoMode::Auto, c);
    let url = s.url();
    idp.set(Mode::Serve(jwks(&[k2.jwk("k2")])));
    // A third request comes only after the second (the first periodic
    // one, serving k2) was installed: fetches run one after another.
    idp.until_hits(3).await;
    assert_eq!(
        login(&url, &k2.token(Some("k2"), "two")).await.as_deref(),
        Some("two")
    );
    assert_eq!(login(&url, &k1.token(Some("k1"), "one")).await, None);
}
