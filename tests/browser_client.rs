//! A browser-style client (the standard `WebSocket` API, written against
//! the Ignis docs, run by Node) connects, authenticates with a JWT, joins a
//! room, receives room, user and broadcast messages, and closes cleanly.
//! Skipped with a printed reason where Node is missing; required in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use ignis_ws::ServerBuilder;
use ignis_ws::config::{AuthMode, IoMode};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use util::*;

async fn browser_style_client(io: IoMode) {
    let Some(flags) = node_or_skip("browser_style_client", "true") else {
        return;
    };
    let secret = "browser-secret-0123456789abcdef-xyz";
    let mut cfg = config(io);
    cfg.auth = AuthMode::jwt_secret(secret);
    cfg.room_allow = vec!["public:*".into()];
    let (hooks, mut hook_rx) = ChannelHooks::new();
    let s = start_with(ServerBuilder::new(cfg).hooks(hooks));
    let h = s.handle();
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let token = encode(
        &Header::default(),
        &json!({"sub":"web-user","exp":exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut client = NodeClient::spawn(
        &flags,
        "browser_client.mjs",
        &[&s.url(), &token],
        Stdio::null(),
    );
    let connected = client.next().await;
    assert_eq!(connected["event"], "connected");
    assert_eq!(connected["data"]["userId"], "web-user");
    // `ready` comes after join and heartbeat on the same connection, so
    // the join has been applied when the hook sees it.
    loop {
        if let HookEvent::Message { event, .. } = next_hook(&mut hook_rx).await
            && event == "ready"
        {
            break;
        }
    }
    h.to_room("public:news", "news", &json!({"title":"hello"}), &[])
        .unwrap();
    h.to_room("private:x", "secret", &json!(1), &[]).unwrap();
    h.to_user("web-user", "dm", &json!("hi")).unwrap();
    h.broadcast("bye", &json!(null), &[]).unwrap();
    assert_eq!(
        client.next().await,
        json!({"event":"news","data":{"title":"hello"}})
    );
    assert_eq!(
        client.next().await,
        json!({"event":"dm","data":"hi"}),
        "the refused room sent nothing"
    );
    assert_eq!(client.next().await, json!({"event":"bye","data":null}));
    assert_eq!(
        client.next().await,
        json!({"closed":1000,"reason":"done","wasClean":true})
    );
    client.wait().await;
}

io_tests!(browser_style_client);
