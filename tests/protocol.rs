//! PROTOCOL.md §2–§4 and §10 on the wire: the message envelope, the states,
//! authentication and its timers, the `connected` payload, hooks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use ignis_ws::ServerBuilder;
use ignis_ws::auth::{AuthError, AuthRequest, Identity, authenticator_fn};
use ignis_ws::config::IoMode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use util::*;

fn err(msg: &str) -> Value {
    json!({"event":"error","data":{"message":msg}})
}

async fn invalid_json_gets_error(io: IoMode) {
    let s = start(config(io));
    let mut c = Client::connect(&s.url()).await;
    // Before authentication: parsing comes first.
    c.send_text("not-json").await;
    assert_eq!(c.recv().await, err("Invalid message format"));
    c.auth("u1").await;
    c.send_text("{\"event\":").await;
    assert_eq!(c.recv().await, err("Invalid message format"));
    // The connection is still usable.
    c.send(json!({"event":"authenticate"})).await;
    assert_eq!(c.recv().await, err("Already authenticated"));
}

async fn non_object_json_gets_error(io: IoMode) {
    let s = start(config(io));
    let (mut c, _) = authed(&s.url(), "u1").await;
    for t in [
        "null",
        "3",
        "[]",
        "\"s\"",
        "true",
        "{\"event\":5}",
        "{\"event\":{}}",
    ] {
        c.send_text(t).await;
        assert_eq!(c.recv().await, err("Invalid message format"), "for {t}");
    }
}

async fn missing_or_falsy_event_is_dropped_silently(io: IoMode) {
    let s = start(config(io));
    let mut c = Client::connect(&s.url()).await;
    for t in [
        r#"{"data":"data"}"#,
        r#"{"event":""}"#,
        r#"{"event":null}"#,
        r#"{"event":0}"#,
        r#"{"event":false}"#,
        r#"{}"#,
    ] {
        c.send_text(t).await;
    }
    c.expect_silence().await;
}

async fn nothing_is_sent_after_upgrade_and_events_need_auth(io: IoMode) {
    let s = start(config(io));
    let mut c = Client::connect(&s.url()).await;
    // No greeting: the first frame is the answer to our probe.
    c.expect_silence().await;
    for ev in [
        "custom-event",
        "join",
        "leave",
        "disconnect",
        "connected",
        "error",
        "encrypted",
    ] {
        c.send(json!({"event":ev,"data":{}})).await;
        assert_eq!(c.recv().await, err("Not authenticated"), "for {ev}");
    }
    // heartbeat before auth: no reply at all.
    c.send(json!({"event":"heartbeat"})).await;
    c.expect_silence().await;
}

fn assert_iso_millis(t: &str) {
    let b = t.as_bytes();
    assert_eq!(b.len(), 24, "{t}");
    assert!(t.ends_with('Z') && b[10] == b'T' && b[19] == b'.', "{t}");
    assert!(t[..4].chars().all(|c| c.is_ascii_digit()), "{t}");
}

fn assert_uuid_v4(id: &str) {
    let u = uuid::Uuid::parse_str(id).expect("uuid");
    assert_eq!(u.get_version_num(), 4);
    assert_eq!(u.hyphenated().to_string(), id, "lowercase hyphenated");
}

async fn connected_payload_exact(io: IoMode) {
    let s = start(config(io));
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{"userId":"user-1","extra":"data"}}))
        .await;
    let text = c.recv_text().await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let id = id_of(&v["data"]);
    let time = v["data"]["time"].as_str().unwrap().to_string();
    assert_eq!(
        text,
        format!(
            r#"{{"event":"connected","data":{{"id":"{id}","userId":"user-1","time":"{time}"}}}}"#
        )
    );
    assert_uuid_v4(&id);
    assert_iso_millis(&time);
    let (_c2, d2) = authed(&s.url(), "user-1").await;
    assert_ne!(d2["id"], json!(id), "ids are unique");
    // After `connected`, custom events are accepted (no reply).
    c.send(json!({"event":"custom","data":1})).await;
    c.expect_silence().await;
}

async fn connected_without_user_id_has_no_key(io: IoMode) {
    let s = start(config(io));
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{}})).await;
    let text = c.recv_text().await;
    assert!(
        text.starts_with(r#"{"event":"connected","data":{"id":""#),
        "{text}"
    );
    assert!(!text.contains("userId"), "{text}");
}

async fn already_authenticated(io: IoMode) {
    let s = start(config(io));
    let (mut c, _) = authed(&s.url(), "u").await;
    c.send(json!({"event":"authenticate","data":{"userId":"other"}}))
        .await;
    assert_eq!(c.recv().await, err("Already authenticated"));
    c.expect_silence().await;
}

/// On the server of `b`, a client authenticating with `token` is answered
/// the error `error`, then closed with 4003.
async fn authenticate_then_4003(b: ServerBuilder, token: &str, error: &str) {
    let s = start_with(b);
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{"token":token}}))
        .await;
    assert_eq!(c.recv().await, err(error));
    assert_eq!(
        c.expect_close().await,
        (4003, "Authentication failed".into())
    );
}

async fn refused_credentials_close_4003(io: IoMode) {
    let b = ServerBuilder::new(config(io))
        .authenticator(authenticator_fn(|_req: AuthRequest| async { Ok(None) }));
    authenticate_then_4003(b, "bad", "Authentication failed").await;
}

async fn authenticator_error_closes_4003(io: IoMode) {
    let b =
        ServerBuilder::new(config(io)).authenticator(authenticator_fn(|_req: AuthRequest| async {
            Err(AuthError::Internal("backend down".into()))
        }));
    authenticate_then_4003(b, "x", "Authentication error").await;
}

async fn authenticator_sees_data_unchanged(io: IoMode) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let b =
        ServerBuilder::new(config(io)).authenticator(authenticator_fn(move |req: AuthRequest| {
            let _ = tx.send(req.data.clone());
            async {
                Ok(Some(Identity {
                    user_id: Some("x".into()),
                    ..Default::default()
                }))
            }
        }));
    let s = start_with(b);
    for (sent, seen) in [
        (
            json!({"event":"authenticate","data":{"token":"my-token","extra":"data","n":[1,2.5]}}),
            json!({"token":"my-token","extra":"data","n":[1,2.5]}),
        ),
        (json!({"event":"authenticate"}), json!({})),
        (json!({"event":"authenticate","data":null}), json!({})),
        (
            json!({"event":"authenticate","data":"a-string"}),
            json!("a-string"),
        ),
    ] {
        let mut c = Client::connect(&s.url()).await;
        c.send(sent).await;
        assert_eq!(c.recv().await["event"], "connected");
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, seen);
    }
}

async fn auth_timeout_closes_4001(io: IoMode) {
    let mut cfg = config(io);
    cfg.auth_timeout = Duration::from_millis(300);
    let s = start(cfg);
    let t0 = Instant::now();
    let mut c = Client::connect(&s.url()).await;
    // Heartbeats do not extend the auth timer.
    c.send(json!({"event":"heartbeat"})).await;
    c.send(json!({"event":"heartbeat"})).await;
    let (code, reason) = c.first_close().await;
    assert_eq!(code, 4001);
    assert_eq!(reason.as_str(), "Authentication timeout");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "not before the timeout"
    );
}

async fn slow_authenticator_gets_three_times_the_timeout(io: IoMode) {
    let mut cfg = config(io);
    cfg.auth_timeout = Duration::from_millis(200);
    // An authenticator that never answers.
    let b = ServerBuilder::new(cfg).authenticator(authenticator_fn(|_req: AuthRequest| {
        std::future::pending::<ignis_ws::auth::AuthResult>()
    }));
    let s = start_with(b);
    let mut c = Client::connect(&s.url()).await;
    let t0 = Instant::now();
    c.send(json!({"event":"authenticate","data":{}})).await;
    // While it runs: another authenticate, and a join.
    c.send(json!({"event":"authenticate","data":{}})).await;
    assert_eq!(c.recv().await, err("Already authenticated"));
    c.send(json!({"event":"join","data":{"rooms":["a"]}})).await;
    assert_eq!(c.recv().await, err("Not authenticated"));
    assert_eq!(
        c.expect_close().await,
        (4001, "Authentication timeout".into())
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(550),
        "closed after ~3x, not 1x: {:?}",
        t0.elapsed()
    );
}

async fn async_authenticator_runs_off_shard(io: IoMode) {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let b =
        ServerBuilder::new(config(io)).authenticator(authenticator_fn(move |_req: AuthRequest| {
            let mut rx = release_rx.clone();
            async move {
                // Needs the tokio runtime of the control thread.
                while !*rx.borrow() {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(Some(Identity {
                    user_id: Some("async-user".into()),
                    ..Default::default()
                }))
            }
        }));
    let s = start_with(b);
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{}})).await;
    c.send(json!({"event":"custom"})).await;
    assert_eq!(c.recv().await, err("Not authenticated"));
    release_tx.send(true).unwrap();
    let m = c.recv().await;
    assert_eq!(m["event"], "connected");
    assert_eq!(m["data"]["userId"], "async-user");
}

async fn custom_events_reach_the_hook(io: IoMode) {
    let (hooks, mut rx) = ChannelHooks::new();
    let s = start_with(ServerBuilder::new(config(io)).hooks(hooks));
    let (mut c, d) = authed(&s.url(), "user-1").await;
    let id = id_of(&d);
    assert!(matches!(
        next_hook(&mut rx).await,
        HookEvent::Connect { .. }
    ));
    c.send(json!({"event":"custom-event","data":{"hello":"world"},"id":"m-1"}))
        .await;
    c.send(json!({"event":"event","data":null})).await;
    c.send(json!({"event":"no-data"})).await;
    // A binary frame is handled like text (the reference's toString()).
    c.ws.send(Message::binary(
        br#"{"event":"test","data":"buf"}"#.to_vec(),
    ))
    .await
    .unwrap();
    // heartbeat never reaches the hook
    c.send(json!({"event":"heartbeat"})).await;
    c.send(json!({"event":"last"})).await;
    let expect = [
        ("custom-event", Some(json!({"hello":"world"})), Some("m-1")),
        ("event", Some(Value::Null), None),
        ("no-data", None, None),
        ("test", Some(json!("buf")), None),
        ("last", None, None),
    ];
    for (event, data, mid) in expect {
        assert_eq!(
            next_hook(&mut rx).await,
            HookEvent::Message {
                client_id: id.clone(),
                user_id: Some("user-1".into()),
                event: event.into(),
                data,
                id: mid.map(Into::into),
            }
        );
    }
    // No reply frames for any of them.
    c.expect_silence().await;
}

async fn hooks_see_connect_and_disconnect(io: IoMode) {
    let (hooks, mut rx) = ChannelHooks::new();
    let s = start_with(ServerBuilder::new(config(io)).hooks(hooks));
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{"userId":"u9","metadata":{"role":"admin"}}}))
        .await;
    let d = c.recv().await["data"].clone();
    let id = id_of(&d);
    assert_eq!(
        next_hook(&mut rx).await,
        HookEvent::Connect {
            client_id: id.clone(),
            user_id: Some("u9".into()),
            metadata: Some(json!({"role":"admin"}))
        }
    );
    c.close().await;
    assert_eq!(
        next_hook(&mut rx).await,
        HookEvent::Disconnect {
            client_id: id,
            user_id: Some("u9".into())
        }
    );
}

async fn disconnect_during_auth_drops_the_result(io: IoMode) {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let (hooks, mut rx) = ChannelHooks::new();
    let b = ServerBuilder::new(config(io))
        .hooks(hooks)
        .authenticator(authenticator_fn(move |req: AuthRequest| {
            let mut rx = release_rx.clone();
            let user = req.data["userId"].as_str().map(str::to_owned);
            async move {
                if user.as_deref() == Some("slow") {
                    while !*rx.borrow() {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                }
                Ok(Some(Identity {
                    user_id: user,
                    ..Default::default()
                }))
            }
        }));
    let s = start_with(b);
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{"userId":"slow"}}))
        .await;
    c.close().await;
    assert!(matches!(
        next_hook(&mut rx).await,
        HookEvent::Disconnect { user_id: None, .. }
    ));
    release_tx.send(true).unwrap();
    // The stale result never produces a session: the next hook event is
    // the connect of a new client, and a user message finds nobody else.
    let (mut c2, _) = authed(&s.url(), "fast").await;
    assert!(
        matches!(next_hook(&mut rx).await, HookEvent::Connect { user_id: Some(u), .. } if u == "fast")
    );
    s.handle().to_user("slow", "ghost", &json!(1)).unwrap();
    c2.expect_silence().await;
    assert_eq!(s.handle().connections(), 1);
}

async fn arc_authenticator_is_shared(io: IoMode) {
    // Library users can pass an Arc'd authenticator they also keep.
    let a = Arc::new(ignis_ws::auth::InsecureAuthenticator);
    let s = start_with(ServerBuilder::new(config(io)).authenticator(a.clone()));
    let (_c, d) = authed(&s.url(), "shared").await;
    assert_eq!(d["userId"], "shared");
}

struct PanickyHooks(ChannelHooks);

impl ignis_ws::Hooks for PanickyHooks {
    fn on_message(&self, m: ignis_ws::hooks::Message) -> Option<ignis_ws::auth::BoxFuture<()>> {
        if m.event == "boom" {
            panic!("a buggy message handler");
        }
        self.0.on_message(m)
    }
}

async fn failing_message_hook_harms_nothing(io: IoMode) {
    let (hooks, mut rx) = ChannelHooks::new();
    let s = start_with(ServerBuilder::new(config(io)).hooks(PanickyHooks(hooks)));
    let (mut c, _) = authed(&s.url(), "u").await;
    let (mut other, _) = authed(&s.url(), "v").await;
    c.send(json!({"event":"boom"})).await;
    c.send(json!({"event":"after"})).await;
    match next_hook(&mut rx).await {
        HookEvent::Message { event, .. } => assert_eq!(event, "after"),
        e => panic!("{e:?}"),
    }
    c.expect_silence().await;
    other.expect_silence().await;
}

async fn empty_user_id_is_not_indexed(io: IoMode) {
    let s = start(config(io));
    let mut c = Client::connect(&s.url()).await;
    c.send(json!({"event":"authenticate","data":{"userId":""}}))
        .await;
    let text = c.recv_text().await;
    assert!(text.contains(r#""userId":"""#), "{text}");
    s.handle().to_user("", "x", &json!(1)).unwrap();
    s.handle().settle().await;
    c.expect_silence().await;
}

io_tests!(
    failing_message_hook_harms_nothing,
    empty_user_id_is_not_indexed,
    invalid_json_gets_error,
    non_object_json_gets_error,
    missing_or_falsy_event_is_dropped_silently,
    nothing_is_sent_after_upgrade_and_events_need_auth,
    connected_payload_exact,
    connected_without_user_id_has_no_key,
    already_authenticated,
    refused_credentials_close_4003,
    authenticator_error_closes_4003,
    authenticator_sees_data_unchanged,
    auth_timeout_closes_4001,
    slow_authenticator_gets_three_times_the_timeout,
    async_authenticator_runs_off_shard,
    custom_events_reach_the_hook,
    hooks_see_connect_and_disconnect,
    disconnect_during_auth_drops_the_result,
    arc_authenticator_is_shared,
);
