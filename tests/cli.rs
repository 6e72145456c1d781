//! The `ignis-ws` binary as a user runs it: configuration errors exit 2
//! naming the key, `--help` documents every flag, `serve` with flags, env
//! or a TOML file works, SIGTERM closes clients with 1001 and exits 0.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: test code panics on failure by design

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::*;

const BIN: &str = env!("CARGO_BIN_EXE_ignis-ws");

/// The binary with `args` and `env`, in an environment clean of the
/// caller's `IGNIS_WS_*` variables.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("IGNIS_WS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = command(args, env).output().expect("run the binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Run a command line written as a shell would take it, then the key the
/// failure names and what else it says: `"NAME=value serve --flag value =>
/// --flag why"` gives the environment (the leading `NAME=value` words), the
/// arguments and the key. An argument named in `paths` stands for its path.
/// Asserts the exit code 2 naming the key; returns the output, the command
/// line (for messages) and the `why`.
fn run_case<'a>(case: &'a str, paths: &[(&str, &'a str)]) -> (String, String, &'a str) {
    let (line, named) = case.split_once(" => ").expect("a case names its key");
    let (key, why) = named.split_once(' ').unwrap_or((named, ""));
    let mut env = Vec::new();
    let mut args = Vec::new();
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some(pair) if args.is_empty() => env.push(pair),
            _ => args.push(paths.iter().find(|(n, _)| *n == word).map_or(word, |p| p.1)),
        }
    }
    let (code, out) = run(&args, &env);
    let ctx = format!("{args:?} {env:?}");
    assert_eq!(code, 2, "{ctx}: {out}");
    assert!(out.contains(key), "{ctx} should name {key}: {out}");
    (out, ctx, why)
}

/// Write `contents` to the file `name` in `dir`; its path.
fn file_in(dir: &tempfile::TempDir, name: &str, contents: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_owned()
}

/// [`file_in`] a new temporary directory, returned with the path.
fn temp_file(name: &str, contents: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = file_in(&dir, name, contents);
    (dir, p)
}

#[test]
fn no_auth_mode_exits_2_naming_auth() {
    let (code, out) = run(&["serve", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--auth"), "{out}");
}

#[test]
fn bad_values_exit_2_naming_the_key() {
    for case in [
        "serve --auth insecure --shards abc => --shards",
        "serve --auth nope => --auth",
        "serve --auth insecure --max-payload 12XB => --max-payload",
        "IGNIS_WS_AUTH_TIMEOUT_MS=0 serve --auth insecure => --auth-timeout-ms",
        "IGNIS_WS_HEARTBEAT_INTERVAL_MS=x serve --auth insecure => --heartbeat-interval-ms",
        "serve --auth insecure --client-max-msgs-per-sec lots => --client-max-msgs-per-sec",
        "IGNIS_WS_MAX_ROOMS_PER_CLIENT=many serve --auth insecure => --max-rooms-per-client",
        "IGNIS_WS_HEARTBEAT_TIMEOUT_MS=90000000000 serve --auth insecure => --heartbeat-timeout-ms",
        "serve --auth jwt => --jwt-secret",
        "serve --auth jwt --jwt-secret x => --jwt-secret",
        "IGNIS_WS_JWT_SECRET=only-twenty-one-bytes serve --auth jwt => --jwt-secret",
        "serve --auth jwt --jwt-secret 0123456789abcdef0123456789abcdef --jwt-max-age-s 0 => --jwt-max-age-s",
        "serve --auth jwt --jwt-secret 0123456789abcdef0123456789abcdef --jwt-require-exp perhaps => --jwt-require-exp",
        "serve --auth webhook => --auth-url",
        "serve --auth webhook --auth-url ftp://x => --auth-url",
        "serve --auth jwt --jwt-public-key /nonexistent.pem => --jwt-public-key",
        "serve --auth insecure --default-rooms ws:bad => --default-rooms",
        "serve --auth insecure --path nope => --path",
    ] {
        run_case(case, &[]);
    }
}

#[test]
fn short_jwt_secret_exits_2_without_echoing_it() {
    let secret = "hunter2-is-short";
    let (code, out) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "jwt",
            "--jwt-secret",
            secret,
        ],
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--jwt-secret"), "{out}");
    assert!(out.contains("32"), "{out}");
    assert!(!out.contains(secret), "the secret is echoed: {out}");
    // The same from a TOML file.
    let toml = format!("auth = \"jwt\"\njwt-secret = \"{secret}\"\n");
    let (_dir, p) = temp_file("short.toml", &toml);
    let (code, out) = run(&["serve", "--config", &p], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("--jwt-secret") && !out.contains(secret),
        "{out}"
    );
}

#[test]
fn config_file_errors_name_the_key() {
    let (_dir, p) = temp_file("bad.toml", "auth = \"insecure\"\nauth-timeout = 5\n");
    let (code, out) = run(&["serve", "--config", &p], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("auth-timeout"), "{out}");
    std::fs::write(&p, "auth = \"insecure\"\nshards = \"two\"\n").unwrap();
    let (code, out) = run(&["serve", "--config", &p], &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("shards"), "{out}");
}

#[test]
fn help_documents_every_flag() {
    let (code, out) = run(&["serve", "--help"], &[]);
    assert_eq!(code, 0);
    for flag in [
        "--listen",
        "--path",
        "--shards",
        "--io",
        "--auth",
        "--jwt-secret",
        "--jwt-secret-file",
        "--api-key-file",
        "--jwt-public-key",
        "--jwt-audience",
        "--jwt-issuer",
        "--jwt-require-exp",
        "--jwt-max-age-s",
        "--auth-url",
        "--room-allow",
        "--default-rooms",
        "--auth-timeout-ms",
        "--heartbeat-interval-ms",
        "--heartbeat-timeout-ms",
        "--idle-timeout-s",
        "--max-payload",
        "--backpressure-limit",
        "--slow-client",
        "--client-max-msgs-per-sec",
        "--max-rooms-per-client",
        "--max-connections",
        "--config",
        "--log",
        "--log-format",
        "IGNIS_WS_LOG_FORMAT",
        "IGNIS_WS_LISTEN",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    let (code, out) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("serve"), "{out}");
}

/// Start `ignis-ws serve` and return it with the address it logged.
fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, std::net::SocketAddr) {
    let (child, addr, _) = start(command(&[&["serve"], args].concat(), env));
    (child, addr)
}

/// Start `cmd` and return it with the address it logged and what it logged
/// before (start-up warnings).
#[allow(clippy::zombie_processes)] // reason: every caller waits for the child
fn start(mut cmd: Command) -> (Child, std::net::SocketAddr, String) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1");
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut before = String::new();
    loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if line.contains("listening") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .expect("addr= in the listening line");
            // Keep draining the log so the server never blocks on it.
            std::thread::spawn(move || for _ in lines {});
            return (child, addr.parse().unwrap(), before);
        }
        before.push_str(&line);
        before.push('\n');
    }
}

/// Each `ignis-shard-N` thread may run on core N only.
fn assert_shards_pinned(pid: u32) {
    let cores = std::thread::available_parallelism().unwrap().get();
    let mut seen = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Some(n) = comm.trim().strip_prefix("ignis-shard-") else {
            continue;
        };
        let n: usize = n.parse().unwrap();
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let allowed = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(
            allowed,
            (n % cores).to_string(),
            "shard {n} pinned to its core"
        );
        seen += 1;
    }
    assert_eq!(seen, 2, "two shard threads");
}

fn sigterm(child: &Child) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_then_sigterm_closes_clients_1001() {
    let (child, addr) = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "insecure",
            "--shards",
            "2",
            "--room-allow",
            "**",
        ],
        &[],
    );
    let url = format!("ws://{addr}/ws");
    let (mut c, d) = authed(&url, "cli-user").await;
    assert_eq!(d["userId"], "cli-user");
    c.join(&["room"]).await;
    c.expect_silence().await;
    let (head, body) = http_get(addr, "/health").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("\"connections\":1"), "{body}");
    assert_shards_pinned(child.id());
    sigterm(&child);
    assert_eq!(
        c.expect_close().await,
        (1001, "Server shutting down".into())
    );
    wait_success(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_toml_configure_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ignis.toml");
    std::fs::write(
        &p,
        "auth = \"insecure\"\npath = \"/from-file\"\nlisten = \"127.0.0.1:0\"\ndefault-rooms = \"lobby\"\nshards = 1\n",
    )
    .unwrap();
    // The environment wins over the file for the path.
    let (child, addr) = spawn(
        &["--config", p.to_str().unwrap()],
        &[("IGNIS_WS_PATH", "/from-env")],
    );
    let (head, _) = http_get(addr, "/from-env").await;
    assert!(
        head.starts_with("HTTP/1.1 426"),
        "the WebSocket path is /from-env: {head}"
    );
    let (mut c, _) = authed(&format!("ws://{addr}/from-env"), "u").await;
    c.expect_silence().await;
    sigterm(&child);
    let _ = c.expect_close().await;
    wait_success(child).await;
    let _ = Duration::ZERO;
}

// ---- secrets (issue 12, item 6) ----

/// Like [`spawn`] on `127.0.0.1:0` with one shard, also returning what the
/// server logged before it listened (start-up warnings).
fn spawn_logged(args: &[&str], env: &[(&str, &str)]) -> (Child, std::net::SocketAddr, String) {
    let preset = ["serve", "--listen", "127.0.0.1:0", "--shards", "1"];
    start(command(&[&preset, args].concat(), env))
}

async fn stop(child: Child) {
    sigterm(&child);
    wait_success(child).await;
}

/// Wait for `child` to exit and assert it exited 0.
async fn wait_success(mut child: Child) {
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// `POST /api/publish` of a broadcast with `key`; the status line.
async fn publish_status(addr: std::net::SocketAddr, key: &str) -> String {
    let body = r#"{"type":"broadcast","event":"e"}"#;
    let mut r = post_publish(addr, Some(key), body).await;
    let head = r.read_http_head().await;
    head.lines().next().unwrap_or_default().to_owned()
}

#[test]
fn malformed_redis_url_never_shows_its_password() {
    for case in [
        "serve --auth insecure --redis redis://me:hunter2-pw@127.0.0.1:notaport => --redis",
        "IGNIS_WS_REDIS=redis://me:hunter2-pw@127.0.0.1:notaport serve --auth insecure => --redis",
        "serve --auth insecure --redis-cluster redis://:hunter2-pw@[::1 => --redis-cluster",
    ] {
        let (out, _, _) = run_case(case, &[]);
        assert!(out.contains("***@"), "{out}");
        assert!(!out.contains("hunter2"), "the password is shown: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_file_enables_publish() {
    let key = "key-from-a-file-0123456789";
    let (dir, p) = temp_file("api-key", &format!("{key}\n"));
    let (child, addr, log) = spawn_logged(&["--auth", "insecure", "--api-key-file", &p], &[]);
    assert!(!log.contains("process list"), "{log}");
    assert_eq!(publish_status(addr, key).await, "HTTP/1.1 202 Accepted");
    assert_eq!(
        publish_status(addr, "key-from-a-file-012345678X").await,
        "HTTP/1.1 401 Unauthorized"
    );
    stop(child).await;
    // The same through the environment and the TOML file.
    let (child, addr, _) = spawn_logged(&["--auth", "insecure"], &[("IGNIS_WS_API_KEY_FILE", &p)]);
    assert_eq!(publish_status(addr, key).await, "HTTP/1.1 202 Accepted");
    stop(child).await;
    let toml = dir.path().join("ignis.toml");
    std::fs::write(&toml, format!("api-key-file = {:?}\n", p)).unwrap();
    let (child, addr, _) = spawn_logged(
        &["--auth", "insecure", "--config", toml.to_str().unwrap()],
        &[],
    );
    assert_eq!(publish_status(addr, key).await, "HTTP/1.1 202 Accepted");
    stop(child).await;
}

#[test]
fn bad_secret_files_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let missing = missing.to_str().unwrap();
    let empty = file_in(&dir, "empty", "\n");
    let good = file_in(&dir, "good", "a-secret-of-32-bytes-or-more-0123456789");
    // MISSING, EMPTY and GOOD stand for those files; then the reason.
    for case in [
        "serve --auth insecure --api-key-file MISSING => --api-key-file cannot read",
        "serve --auth insecure --api-key-file EMPTY => --api-key-file is empty",
        "serve --auth insecure --api-key-file GOOD --api-key inline-key-0123456789 \
         => --api-key-file not both",
        "IGNIS_WS_API_KEY=inline-key-0123456789 serve --auth insecure --api-key-file GOOD \
         => --api-key-file not both",
        "serve --auth jwt --jwt-secret-file MISSING => --jwt-secret-file cannot read",
        "serve --auth jwt --jwt-secret-file EMPTY => --jwt-secret-file is empty",
        "IGNIS_WS_JWT_SECRET=inline-secret-0123456789-0123456789 serve --auth jwt \
         --jwt-secret-file GOOD => --jwt-secret-file not both",
    ] {
        let (out, all, why) = run_case(
            case,
            &[("MISSING", missing), ("EMPTY", &empty), ("GOOD", &good)],
        );
        let key = case
            .split_once(" => ")
            .unwrap()
            .1
            .split(' ')
            .next()
            .unwrap();
        assert!(
            out.contains(&format!("invalid configuration `{key}`")) && out.contains(why),
            "{all}: {out}"
        );
        assert!(!out.contains("inline-"), "{all}: secret shown: {out}");
        assert!(!out.contains("a-secret-of"), "{all}: secret shown: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_secret_file_is_accepted() {
    let secret = "a-jwt-secret-of-at-least-32-bytes-0123456789";
    let (_dir, p) = temp_file("jwt-secret", &format!("{secret}\r\n"));
    let (child, addr, log) = spawn_logged(
        &[
            "--auth",
            "jwt",
            "--jwt-secret-file",
            &p,
            "--room-allow",
            "*",
        ],
        &[],
    );
    assert!(!log.contains("process list"), "{log}");
    let token = hs256_token(secret, "file-user");
    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.send(serde_json::json!({"event":"authenticate","data":{"type":"Bearer","token":token}}))
        .await;
    let m = c.recv().await;
    assert_eq!(m["event"], "connected", "{m}");
    assert_eq!(m["data"]["userId"], "file-user", "{m}");
    stop(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_given_as_flags_are_warned_about() {
    let key = "flag-key-0123456789abcdef";
    let secret = "flag-secret-of-at-least-32-bytes-0123456789";
    let (child, _, log) = spawn_logged(
        &["--auth", "jwt", "--jwt-secret", secret, "--api-key", key],
        &[],
    );
    for flag in ["--api-key ", "--jwt-secret "] {
        let line = log
            .lines()
            .find(|l| l.contains("WARN") && l.contains(flag) && l.contains("process list"))
            .unwrap_or_else(|| panic!("no warning for {flag}: {log}"));
        assert!(line.contains("IGNIS_WS_"), "{line}");
    }
    assert!(!log.contains(key) && !log.contains(secret), "{log}");
    stop(child).await;
    // The same secrets through the environment: no warning.
    let (child, _, log) = spawn_logged(
        &["--auth", "jwt"],
        &[("IGNIS_WS_API_KEY", key), ("IGNIS_WS_JWT_SECRET", secret)],
    );
    assert!(!log.contains("process list"), "{log}");
    stop(child).await;
}

#[test]
fn bad_tls_settings_exit_2_naming_the_key() {
    let pki = util::tls::Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let garbage = file_in(&dir, "garbage.pem", "not pem at all\n");
    let other = util::tls::Pki::new();
    let (cert, key) = (pki.cert(), pki.key());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let other_key = other.key();
    let other_key = other_key.to_str().unwrap();
    let missing = dir.path().join("absent.pem");
    let missing = missing.to_str().unwrap();
    // CERT, KEY, OTHERKEY, GARBAGE and MISSING stand for those files.
    for case in [
        "serve --auth insecure --tls-cert CERT => --tls-key required with --tls-cert",
        "serve --auth insecure --tls-key KEY => --tls-cert required with --tls-key",
        "serve --auth insecure --tls-cert MISSING --tls-key KEY => --tls-cert No such file",
        "serve --auth insecure --tls-cert GARBAGE --tls-key KEY => --tls-cert no CERTIFICATE block",
        "serve --auth insecure --tls-cert CERT --tls-key GARBAGE => --tls-key no PEM block",
        "serve --auth insecure --tls-cert CERT --tls-key OTHERKEY => --tls-key does not belong",
        "IGNIS_WS_TLS_MAX_HANDSHAKES=0 serve --auth insecure => --tls-max-handshakes must be > 0",
    ] {
        let (out, all, why) = run_case(
            case,
            &[
                ("OTHERKEY", other_key),
                ("CERT", cert),
                ("KEY", key),
                ("GARBAGE", &garbage),
                ("MISSING", missing),
            ],
        );
        assert!(out.contains(why), "{all}: {out}");
        assert!(
            !out.contains("PRIVATE KEY"),
            "{all}: key material shown: {out}"
        );
    }
}

#[test]
fn bad_cluster_settings_exit_2_naming_the_key() {
    for case in [
        "serve --auth insecure --redis-sentinel 127.0.0.1:26379 => --redis-sentinel-master needs the master's name",
        "serve --auth insecure --redis-sentinel-master m => --redis-sentinel needs --redis-sentinel",
        "serve --auth insecure --redis-sentinel , --redis-sentinel-master m => --redis-sentinel at least one",
        "serve --auth insecure --redis-sentinel http://x:1 --redis-sentinel-master m => --redis-sentinel not a Sentinel address",
        "serve --auth insecure --redis-sentinel a:1 --redis-sentinel-master m --redis redis://h => --redis",
        "IGNIS_WS_REDIS_SENTINEL=a:1 IGNIS_WS_REDIS_SENTINEL_MASTER= serve --auth insecure => --redis-sentinel-master",
        "serve --auth insecure --redis redis://h --redis-subscribe everything => --redis-subscribe",
        "serve --auth insecure --redis redis://h --redis-sharded true => --redis-sharded needs --redis-cluster",
        "serve --auth insecure --redis-cluster redis://h --redis-sharded true --redis-subscribe pattern => --redis-sharded no patterns",
    ] {
        let (out, all, why) = run_case(case, &[]);
        assert!(out.contains(why), "{all}: {out}");
    }
}
