//! ignis-ws and the real Ignis server on Bun (`WebSocketServerHelper` from
//! npm `@venizia/ignis-helpers@0.0.7`) on one Redis: emitter envelopes
//! reach clients of both, and what ignis-ws publishes is delivered by Bun.
//!
//! Opt-in, because it needs the Bun app of `shared/anchors/ignis-bun-perf`
//! installed (`npm install` there): set `IGNIS_WS_BUN_DIR` to that
//! directory. Without it the test prints `SKIPPED` and passes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ignis_ws::bridge::emitter::Emitter;
use ignis_ws::bridge::envelope::Kind;
use ignis_ws::config::IoMode;
use serde_json::json;
use util::redis_server::RedisServer;
use util::*;

struct Bun(std::process::Child);

impl Drop for Bun {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_bun(dir: &str, redis_port: u16) -> (Bun, u16) {
    let port = util::redis_server::free_port();
    let logs = tempfile::tempdir().unwrap().keep();
    let mut child = Command::new(format!("{dir}/node_modules/.bin/bun"))
        .args(["run", "server.ts"])
        .current_dir(dir)
        .env("PORT", port.to_string())
        .env("REDIS_PORT", redis_port.to_string())
        .env("APP_ENV_LOGGER_FOLDER_PATH", &logs)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bun");
    let err = child.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    loop {
        let line = lines.next().expect("bun reports it is listening").unwrap();
        if line.contains("listening ws://") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (Bun(child), port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignis_ws_and_ignis_on_bun_share_one_redis() {
    let Ok(dir) = std::env::var("IGNIS_WS_BUN_DIR") else {
        eprintln!("SKIPPED: set IGNIS_WS_BUN_DIR to an installed shared/anchors/ignis-bun-perf");
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (_bun, bun_port) = start_bun(&dir, redis.port);
    let node = start(redis_config(IoMode::Auto, &redis.url()));
    let h = node.handle();
    wait_subscribed(&h).await;

    // Bun's authenticator: userId = token.
    let mut on_bun = Client::connect(&format!("ws://127.0.0.1:{bun_port}/ws")).await;
    on_bun
        .send(json!({"event":"authenticate","data":{"type":"Bearer","token":"alice"}}))
        .await;
    let bun_connected = on_bun.recv().await;
    assert_eq!(bun_connected["event"], "connected");
    let bun_id = id_of(&bun_connected["data"]);
    let (mut on_ws, ws_data) = authed(&node.url(), "bob").await;
    on_bun.join(&["lobby"]).await;
    on_ws.join(&["lobby"]).await;
    on_ws.expect_silence().await;
    settle_subscriptions(&[&node]).await;

    // The emitter reaches both.
    let emitter = Emitter::connect(&redis.url()).await.unwrap();
    // Bun's join has no reply: confirm it with a marker to Bun's client
    // before relying on it.
    let mut tries = 0;
    loop {
        tries += 1;
        emitter
            .to_room("lobby", "hello", &tries, None)
            .await
            .unwrap();
        emitter.to_client(&bun_id, "probe", &tries).await.unwrap();
        let m = on_bun.recv().await;
        if m["event"] == "hello" {
            assert_eq!(on_bun.recv().await["event"], "probe");
            break;
        }
        assert_eq!(m["event"], "probe", "{m}");
        assert!(tries < 50, "Bun never applied the join");
    }
    // ignis-ws's client got every one of them, exactly once each.
    for i in 1..=tries {
        assert_eq!(on_ws.recv().await, json!({"event":"hello","data":i}));
    }
    expect_nothing_before_marker(&h, &mut on_ws, &id_of(&ws_data)).await;

    // What ignis-ws publishes, Bun delivers.
    h.send(Some("lobby"), "from-ignis-ws", &json!("room"))
        .unwrap();
    assert_eq!(
        on_bun.recv_text().await,
        r#"{"event":"from-ignis-ws","data":"room"}"#
    );
    h.publish(Kind::User, Some("alice"), "dm", &json!({"to":"alice"}), &[])
        .unwrap();
    assert_eq!(
        on_bun.recv().await,
        json!({"event":"dm","data":{"to":"alice"}})
    );
    h.publish(Kind::Client, Some(&bun_id), "direct", &1, &[])
        .unwrap();
    assert_eq!(on_bun.recv().await, json!({"event":"direct","data":1}));
    // A Bun client id is not ours: send() routes it as a room, and Bun
    // delivers it through the client's own-id topic, as between two Bun
    // servers.
    h.send(Some(&bun_id), "own-room", &2).unwrap();
    assert_eq!(on_bun.recv().await, json!({"event":"own-room","data":2}));
    h.send(None, "everyone", &3).unwrap();
    assert_eq!(on_bun.recv().await, json!({"event":"everyone","data":3}));

    // Exclude works on both sides.
    emitter
        .to_room("lobby", "not-alice", &4, Some(&[bun_id.as_str()]))
        .await
        .unwrap();
    emitter.to_client(&bun_id, "marker", &5).await.unwrap();
    assert_eq!(
        on_bun.recv().await,
        json!({"event":"marker","data":5}),
        "excluded on Bun"
    );
}
