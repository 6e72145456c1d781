//! The binary's logs (issue 14, item 6) and SIGHUP (item 7): with
//! `--log-format json` every line the binary writes is one JSON object with
//! timestamp, level, target and fields, and none shows a secret; a bad
//! format exits 2 naming the flag; SIGHUP (systemd's `ExecReload`) is
//! logged and does not stop the server; the example configuration in
//! contrib/systemd starts.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_ignis-ws");

/// Every line the binary wrote, stdout and stderr.
type Lines = Arc<Mutex<Vec<String>>>;

/// `ignis-ws serve` with `args` (on 127.0.0.1:0, one shard), in an
/// environment clean of the caller's `IGNIS_WS_*` variables; its stdout
/// and stderr are collected line by line.
fn spawn(args: &[&str]) -> (Child, Lines) {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("IGNIS_WS_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().unwrap();
    let lines = Lines::default();
    let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
    let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
    for pipe in [out, err] {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
    }
    (child, lines)
}

/// The first line that `pick` returns something for, waiting up to 10 s.
fn wait_for<T>(lines: &Lines, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = lines.lock().unwrap().iter().find_map(|l| pick(l)) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} line: {:#?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address of the JSON `listening` line.
fn json_addr(line: &str) -> Option<SocketAddr> {
    let v: Value = serde_json::from_str(line).ok()?;
    if !v["fields"]["message"].as_str()?.contains("listening") {
        return None;
    }
    v["fields"]["addr"].as_str()?.parse().ok()
}

/// The address of the text `listening` line (`addr=…`).
fn text_addr(line: &str) -> Option<SocketAddr> {
    if !line.contains("listening") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?
        .parse()
        .ok()
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        sig,
    )
    .unwrap();
}

/// SIGTERM, then the exit status must be success.
async fn stop(child: Child) {
    signal(&child, rustix::process::Signal::TERM);
    let mut child = child;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_and_show_no_secret() {
    let secret = "json-log-jwt-secret-of-32-bytes-0123456789";
    let key = "json-log-api-key-0123456789abcdef";
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("jwt-secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    // Debug for this crate: the per-client lines (`client`, `user`) too.
    // The API key and the Redis URL on the command line: each also warns.
    let (child, lines) = spawn(&[
        "--log-format",
        "json",
        "--log",
        "ignis_ws=debug,info",
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret_file.to_str().unwrap(),
        "--api-key",
        key,
        "--redis",
        "redis://:hunter2@127.0.0.1:1/",
        "--room-allow",
        "*",
    ]);
    let addr = wait_for(&lines, "JSON listening", json_addr);
    // One client authenticates (logs its client and user ids), one sends
    // a bad token, one publish goes through the API with the key.
    let token = hs256_token(secret, "json-log-user");
    let url = format!("ws://{addr}/ws");
    let mut c = Client::connect(&url).await;
    c.send(serde_json::json!({"event":"authenticate","data":{"type":"Bearer","token":token}}))
        .await;
    assert_eq!(c.recv().await["event"], "connected");
    let mut bad = Client::connect(&url).await;
    bad.send(
        serde_json::json!({"event":"authenticate","data":{"type":"Bearer","token":"not.a.jwt"}}),
    )
    .await;
    let _ = bad.recv().await;
    let mut r = post_publish(addr, Some(key), r#"{"type":"broadcast","event":"e"}"#).await;
    let head = r.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
    let authed = wait_for(&lines, "authenticated", |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["fields"]["message"] == "authenticated").then_some(v)
    });
    assert!(authed["fields"]["client"].is_string(), "{authed}");
    // Logged on a shard thread: the line names the shard.
    assert!(authed["span"]["shard"].is_u64(), "{authed}");
    assert!(
        authed["fields"]["user"]
            .as_str()
            .is_some_and(|u| u.contains("json-log-user")),
        "{authed}"
    );
    // After authentication, a line about this connection carries the
    // connection's span: shard, client id and user id.
    c.join(&["00000000-0000-4000-8000-000000000000"]).await;
    let closing = wait_for(&lines, "a join line with the conn span", |l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["fields"]["message"] == "joins of other clients' id rooms refused"
            && v["span"]["user"]
                .as_str()
                .is_some_and(|u| u.contains("json-log-user")))
        .then_some(v)
    });
    assert_eq!(closing["span"]["name"], "conn", "{closing}");
    assert!(closing["span"]["shard"].is_u64(), "{closing}");
    assert_eq!(
        closing["span"]["client"], authed["fields"]["client"],
        "{closing}"
    );
    // The warnings about secrets on the command line, as JSON.
    wait_for(&lines, "--api-key warning", |l| {
        (l.contains("--api-key is given on the command line")).then_some(())
    });
    wait_for(&lines, "redis retry", |l| {
        l.contains("redis subscriber cannot connect").then_some(())
    });
    stop(child).await;
    // The readers have everything once the pipes closed.
    wait_for(&lines, "stopped", |l| {
        l.contains("\"stopped\"").then_some(())
    });
    let lines = lines.lock().unwrap().clone();
    assert!(lines.len() >= 5, "{lines:#?}");
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(v["fields"]["message"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        let ts = v["timestamp"].as_str().unwrap();
        assert!(ts.len() >= 20 && ts.ends_with('Z'), "{line}");
        for s in [secret, key, "hunter2", token.as_str()] {
            assert!(!line.contains(s), "a secret is logged: {line}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("redis://:***@127.0.0.1:1/")),
        "the Redis URL is logged redacted: {lines:#?}"
    );
}

#[test]
fn bad_log_format_exits_2_naming_the_flag() {
    for (args, env) in [
        (&["--log-format", "xml"][..], None),
        (&[][..], Some(("IGNIS_WS_LOG_FORMAT", "xml"))),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--auth", "insecure", "--listen", "127.0.0.1:0"])
            .args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("IGNIS_WS_") {
                cmd.env_remove(k);
            }
        }
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {text}");
        assert!(text.contains("--log-format"), "{text}");
        assert!(text.contains("text") && text.contains("json"), "{text}");
    }
    // From the TOML file: the same key, named by the file's error.
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("ignis.toml");
    std::fs::write(&toml, "auth = \"insecure\"\nlog-format = \"xml\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&toml)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("log-format"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_from_toml_and_text_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("ignis.toml");
    std::fs::write(&toml, "auth = \"insecure\"\nlog-format = \"json\"\n").unwrap();
    let (child, lines) = spawn(&["--config", toml.to_str().unwrap()]);
    wait_for(&lines, "JSON listening", json_addr);
    stop(child).await;
    // Default: today's text lines.
    let (child, lines) = spawn(&["--auth", "insecure"]);
    wait_for(&lines, "text listening", text_addr);
    assert!(
        lines.lock().unwrap().iter().all(|l| !l.starts_with('{')),
        "{:#?}",
        lines.lock().unwrap()
    );
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_logged_and_keeps_serving() {
    let (child, lines) = spawn(&["--auth", "insecure"]);
    let addr = wait_for(&lines, "text listening", text_addr);
    let (mut c, _) = authed(&format!("ws://{addr}/ws"), "hup-user").await;
    for _ in 0..2 {
        signal(&child, rustix::process::Signal::HUP);
    }
    wait_for(&lines, "SIGHUP", |l| {
        l.contains("SIGHUP: nothing to reload (no --tls-cert)")
            .then_some(())
    });
    // Still serving: the client stays, a new request is answered.
    c.expect_silence().await;
    let (head, _) = http_get(addr, "/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stop(child).await;
    assert_eq!(
        c.expect_close().await,
        (1001, "Server shutting down".into())
    );
}

/// contrib/systemd/ignis-ws.toml is a configuration the server starts with
/// (the secret, which the unit hands over, and free ports given here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_service_config_starts() {
    let toml = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/systemd/ignis-ws.toml");
    let (child, lines) = spawn(&[
        "--config",
        toml,
        "--metrics-listen",
        "127.0.0.1:0",
        "--jwt-secret",
        "example-config-secret-of-32-bytes-0123456789",
    ]);
    let addr = wait_for(&lines, "JSON listening", json_addr);
    let (head, _) = http_get(addr, "/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stop(child).await;
}

/// SIGHUP with `--tls-cert`: the new pair is loaded (logged), new
/// handshakes present it, the established wss client stays; a broken file
/// is logged as an error and the current pair stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_tls_certificate() {
    use util::tls::{Pki, Version, tls_connect, wss};
    let mut pki = Pki::new();
    let (cert, key) = (pki.cert(), pki.key());
    let (child, lines) = spawn(&[
        "--auth",
        "insecure",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let addr = wait_for(&lines, "text listening", text_addr);
    let old_ca = pki.ca_der.clone();
    let mut c = wss(addr, &old_ca, Version::V13).await;
    c.auth("hup-tls").await;
    pki.renew();
    signal(&child, rustix::process::Signal::HUP);
    wait_for(&lines, "reloaded", |l| {
        l.contains("SIGHUP: TLS certificate and key reloaded")
            .then_some(())
    });
    assert!(tls_connect(addr, &old_ca, Version::V13).await.is_err());
    wss(addr, &pki.ca_der, Version::V12)
        .await
        .auth("new-cert")
        .await;
    std::fs::write(pki.key(), "broken").unwrap();
    signal(&child, rustix::process::Signal::HUP);
    wait_for(&lines, "reload failed", |l| {
        (l.contains("TLS reload failed") && l.contains("--tls-key")).then_some(())
    });
    wss(addr, &pki.ca_der, Version::V13)
        .await
        .auth("still")
        .await;
    c.expect_silence().await;
    stop(child).await;
    assert_eq!(
        c.expect_close().await,
        (1001, "Server shutting down".into())
    );
}
