//! The built-in authenticators through a real server: `--auth jwt`
//! (HS256 and ES256: good, expired, not yet valid, bad signature, wrong
//! algorithm, the `rooms` claim) and `--auth webhook` against a local HTTP
//! server (accept, 401/403, 500, timeout, refused connection).

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response};
use ignis_ws::config::{AuthMode, IoMode};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use util::*;

const SECRET: &str = "test-secret-please-change-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: Value, alg: Algorithm) -> String {
    encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwt_server(io: IoMode) -> TestServer {
    let mut cfg = config(io);
    cfg.room_allow.clear();
    cfg.auth = AuthMode::jwt_secret(SECRET);
    start(cfg)
}

async fn try_token(url: &str, token: &str) -> Result<Value, (Value, (u16, String))> {
    let mut c = Client::connect(url).await;
    c.send(json!({"event":"authenticate","data":{"type":"Bearer","token":token}}))
        .await;
    let m = c.recv().await;
    if m["event"] == "connected" {
        return Ok(m["data"].clone());
    }
    let close = c.expect_close().await;
    Err((m, close))
}

fn refused() -> (Value, (u16, String)) {
    (
        json!({"event":"error","data":{"message":"Authentication failed"}}),
        (4003, "Authentication failed".into()),
    )
}

async fn jwt_hs256(io: IoMode) {
    let s = jwt_server(io);
    let url = s.url();
    let good = hs(
        json!({"sub":"alice","exp":now()+60,"meta":{"plan":"pro"}}),
        Algorithm::HS256,
    );
    let d = try_token(&url, &good).await.unwrap();
    assert_eq!(d["userId"], "alice");
    let expired = hs(json!({"sub":"alice","exp":now()-10}), Algorithm::HS256);
    assert_eq!(try_token(&url, &expired).await.unwrap_err(), refused());
    let early = hs(
        json!({"sub":"alice","exp":now()+60,"nbf":now()+30}),
        Algorithm::HS256,
    );
    assert_eq!(try_token(&url, &early).await.unwrap_err(), refused());
    let wrong_alg = hs(json!({"sub":"alice","exp":now()+60}), Algorithm::HS384);
    assert_eq!(try_token(&url, &wrong_alg).await.unwrap_err(), refused());
    let mut bad_sig = good.clone();
    bad_sig.pop();
    bad_sig.push(if good.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(try_token(&url, &bad_sig).await.unwrap_err(), refused());
    let unsigned = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 60).as_bytes())
    );
    assert_eq!(try_token(&url, &unsigned).await.unwrap_err(), refused());
    assert_eq!(try_token(&url, "not.a.jwt").await.unwrap_err(), refused());
    // No sub: authenticated without a userId.
    let anon = hs(json!({"exp":now()+60}), Algorithm::HS256);
    let d = try_token(&url, &anon).await.unwrap();
    assert!(d.get("userId").is_none(), "{d}");
}

/// Issue 12: a token without `exp`, or with an `aud` / `iss` meant for
/// someone else, is refused; a proper one is accepted.
async fn jwt_claims_are_enforced(io: IoMode) {
    // Defaults: exp required, no audience configured.
    let s = jwt_server(io);
    let url = s.url();
    let proper = hs(json!({"sub":"alice","exp":now()+60}), Algorithm::HS256);
    assert_eq!(try_token(&url, &proper).await.unwrap()["userId"], "alice");
    let no_exp = hs(json!({"sub":"alice","iat":1_000_000_000}), Algorithm::HS256);
    assert_eq!(try_token(&url, &no_exp).await.unwrap_err(), refused());
    let foreign_aud = hs(
        json!({"sub":"alice","exp":now()+60,"aud":"billing-api"}),
        Algorithm::HS256,
    );
    assert_eq!(try_token(&url, &foreign_aud).await.unwrap_err(), refused());

    // Audience, issuer and max age configured.
    let mut cfg = config(io);
    cfg.auth = match AuthMode::jwt_secret(SECRET) {
        AuthMode::Jwt {
            secret,
            public_key_files,
            jwks,
            leeway_s,
            require_exp,
            ..
        } => AuthMode::Jwt {
            secret,
            public_key_files,
            jwks,
            leeway_s,
            audience: vec!["ignis".into(), "ws".into()],
            issuer: vec!["https://issuer.example".into()],
            require_exp,
            max_age_s: Some(300),
        },
        other => other,
    };
    let s = start(cfg);
    let url = s.url();
    let claims = |extra: Value| {
        let mut c = json!({
            "sub": "bob",
            "exp": now() + 60,
            "iat": now(),
            "aud": ["other", "ws"],
            "iss": "https://issuer.example",
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        hs(c, Algorithm::HS256)
    };
    assert_eq!(
        try_token(&url, &claims(json!({}))).await.unwrap()["userId"],
        "bob"
    );
    assert_eq!(
        try_token(&url, &claims(json!({"aud":"ignis"})))
            .await
            .unwrap()["userId"],
        "bob"
    );
    for bad in [
        json!({"aud":"billing-api"}),
        json!({"aud":null}),
        json!({"iss":"https://evil.example"}),
        json!({"iss":null}),
        json!({"iat":null}),
        json!({"iat":now()-3600}),
        json!({"exp":null}),
    ] {
        assert_eq!(
            try_token(&url, &claims(bad.clone())).await.unwrap_err(),
            refused(),
            "{bad}"
        );
    }
}

fn base64_url(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

async fn jwt_rooms_claim_grants_joins(io: IoMode) {
    let s = jwt_server(io);
    let h = s.handle();
    let token = hs(
        json!({"sub":"bob","exp":now()+60,"rooms":["team:*","user:{userId}"]}),
        Algorithm::HS256,
    );
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{"token":token}}))
        .await;
    let d = c.recv().await["data"].clone();
    let id = id_of(&d);
    c.join(&["team:red", "user:bob", "user:eve", "other"]).await;
    c.expect_silence().await;
    for r in ["team:red", "user:bob"] {
        h.to_room(r, "E", &json!(r), &[]).unwrap();
        assert_eq!(c.recv().await, json!({"event":"E","data":r}));
    }
    for r in ["user:eve", "other"] {
        h.to_room(r, "E", &json!(r), &[]).unwrap();
        expect_nothing_before_marker(&h, &mut c, &id).await;
    }
}

async fn jwt_es256_public_key_file(io: IoMode) {
    let dir = env!("CARGO_MANIFEST_DIR");
    let mut cfg = config(io);
    cfg.auth = AuthMode::jwt_public_key(format!("{dir}/tests/fixtures/es256-public.pem"));
    let s = start(cfg);
    let pem = std::fs::read(format!("{dir}/tests/fixtures/es256-private.pem")).unwrap();
    let key = EncodingKey::from_ec_pem(&pem).unwrap();
    let token = encode(
        &Header::new(Algorithm::ES256),
        &json!({"sub":"ec-user","exp":now()+60}),
        &key,
    )
    .unwrap();
    assert_eq!(
        try_token(&s.url(), &token).await.unwrap()["userId"],
        "ec-user"
    );
    // An HS256 token signed with the public key's bytes is refused.
    let public = std::fs::read(format!("{dir}/tests/fixtures/es256-public.pem")).unwrap();
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub":"ec-user","exp":now()+60}),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert_eq!(try_token(&s.url(), &forged).await.unwrap_err(), refused());
}

/// A local webhook: answers by the token it receives.
async fn webhook() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(Value, Option<String>)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let cid = req
                            .headers()
                            .get("x-ignis-client-id")
                            .map(|v| v.to_str().unwrap().to_string());
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: Value = serde_json::from_slice(&body).unwrap();
                        let _ = tx.send((v.clone(), cid));
                        let (status, body) = match v["token"].as_str().unwrap_or("") {
                            "good" => (
                                200,
                                r#"{"userId":"hooked","metadata":{"a":1},"rooms":["vip"]}"#,
                            ),
                            "401" => (401, ""),
                            "403" => (403, ""),
                            "500" => (500, "oops"),
                            "garbage" => (200, "not json"),
                            "slow" => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                (200, "{}")
                            }
                            _ => (400, ""),
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
    (addr, rx)
}

async fn webhook_auth(io: IoMode) {
    let (addr, mut seen) = webhook().await;
    let mut cfg = config(io);
    cfg.room_allow.clear();
    cfg.auth = AuthMode::Webhook {
        url: format!("http://{addr}/auth"),
        timeout: Duration::from_millis(500),
        concurrency: 64,
    };
    let s = start(cfg);
    let h = s.handle();
    let url = s.url();
    let mut c = Client::connect(&url).await;
    c.send(json!({"event":"authenticate","data":{"token":"good","extra":[1]}}))
        .await;
    let d = c.recv().await["data"].clone();
    assert_eq!(d["userId"], "hooked");
    let (body, cid) = seen.recv().await.unwrap();
    assert_eq!(body, json!({"token":"good","extra":[1]}));
    assert_eq!(cid.as_deref(), d["id"].as_str());
    // The webhook's `rooms` grant joins.
    c.join(&["vip", "not-vip"]).await;
    c.expect_silence().await;
    h.to_room("vip", "v", &json!(1), &[]).unwrap();
    assert_eq!(c.recv().await, json!({"event":"v","data":1}));
    for token in ["401", "403"] {
        assert_eq!(
            try_token(&url, token).await.unwrap_err(),
            refused(),
            "{token}"
        );
    }
    let error = (
        json!({"event":"error","data":{"message":"Authentication error"}}),
        (4003, "Authentication failed".to_string()),
    );
    for token in ["500", "garbage", "slow"] {
        assert_eq!(try_token(&url, token).await.unwrap_err(), error, "{token}");
    }
}

async fn webhook_unreachable_is_an_error(io: IoMode) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(io);
    cfg.auth = AuthMode::Webhook {
        url: format!("http://127.0.0.1:{port}/auth"),
        timeout: Duration::from_millis(500),
        concurrency: 64,
    };
    let s = start(cfg);
    let r = try_token(&s.url(), "x").await.unwrap_err();
    assert_eq!(
        r.0,
        json!({"event":"error","data":{"message":"Authentication error"}})
    );
    assert_eq!(r.1.0, 4003);
}

io_tests!(
    jwt_hs256,
    jwt_claims_are_enforced,
    jwt_rooms_claim_grants_joins,
    jwt_es256_public_key_file,
    webhook_auth,
    webhook_unreachable_is_an_error,
);
