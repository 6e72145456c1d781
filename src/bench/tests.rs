//! End-to-end tests of the generator against an in-process ignis-ws server
//! (started through the library) and, for the Redis path, a redis-server of
//! its own on a free port. The workers run as threads of the test process
//! (`Launch::InProcess`): the same worker code as `bench-worker`, without
//! re-executing the test binary.

use clap::Parser;

use crate::bridge::test_redis::{Redis, free_port};
use crate::config::{AuthMode, IoMode};

use super::BenchArgs;
use super::coordinator::{BenchError, Launch, execute};
use super::report::Report;
use super::report::render::tests::MEASURED_ROWS;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

pub(super) fn args(v: &[&str]) -> BenchArgs {
    let mut argv = vec!["bench"];
    argv.extend_from_slice(v);
    Cli::try_parse_from(argv).unwrap().args
}

fn server(auth: AuthMode, redis: Option<&str>, api_key: Option<&str>) -> crate::Server {
    crate::ServerBuilder::new(crate::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 1,
        pin_cores: false,
        io: IoMode::Epoll,
        auth,
        room_allow: vec!["**".into()],
        redis: redis.map(|r| vec![r.to_owned()]).unwrap_or_default(),
        api_key: api_key.map(str::to_owned),
        ..crate::Config::default()
    })
    .start()
    .expect("server starts")
}

/// The API key of the test servers that take HTTP publishing.
const API_KEY: &str = "bench-test-key-0123456789";

/// The WebSocket URL of `srv`.
fn ws_url(srv: &crate::Server) -> String {
    format!("ws://{}/ws", srv.local_addr())
}

/// Runs the generator quietly against `ws` with `flags` (as on a command
/// line, split at spaces), its workers as threads; with `measure_server`,
/// `--server-pid` is this process (the test's server runs in it).
fn bench(ws: &str, flags: &str, measure_server: bool) -> Result<Report, BenchError> {
    let pid = std::process::id().to_string();
    let mut v = vec!["--url", ws, "--quiet"];
    if measure_server {
        v.extend(["--server-pid", &pid]);
    }
    v.extend(flags.split_whitespace());
    execute(args(&v).plan().unwrap(), Launch::InProcess)
}

/// Every figure of a clean run is there and adds up.
fn assert_complete(r: &Report, connections: u64) {
    assert_eq!(r.connect.connected, connections);
    assert_eq!(r.connect.failed, 0);
    assert!(r.connect.per_s > 0.0 && r.connect.seconds > 0.0);
    assert!(r.publish.published > 0, "{r:?}");
    assert_eq!(r.publish.failed, 0, "{:?}", r.publish.first_error);
    assert!(r.publish.per_s > 0.0);
    let d = &r.delivery;
    assert_eq!(d.expected, r.publish.published * connections);
    assert_eq!(d.received, d.expected, "loss: {r:#?}");
    assert_eq!(d.lost, 0);
    assert_eq!(d.loss_percent, 0.0);
    assert_eq!((d.duplicates, d.reordered, d.gaps), (0, 0, 0));
    assert_eq!(d.disconnected, 0, "{:?} {:?}", d.close_codes, d.errors);
    assert_eq!(d.other_messages, 0, "{:?}", d.other_samples);
    assert!(d.drained);
    let l = &r.latency_us;
    assert_eq!(l.count, d.received);
    assert!(
        l.min > 0.0 && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.p99_9 && l.p99_9 <= l.max
    );
    assert!(l.mean > 0.0);
    // One burst is handed over at once: its deliveries come after
    // "publishing", in the drain.
    let one_burst = r.config.burst_size.is_some() && r.config.burst_every_s.is_none();
    assert!(one_burst || r.throughput.publishing_per_s > 0.0);
    assert!(r.throughput.overall_per_s > 0.0 && r.throughput.overall_s > 0.0);
    let s = r.server.as_ref().expect("server figures with --server-pid");
    assert!(s.rss_before_bytes > 0 && s.rss_idle_bytes > 0 && s.rss_after_bytes > 0);
    assert!(s.cpu_per_delivery_us.is_some());
    assert!(s.cpu_delivery_s >= 0.0 && s.cpu_publishing_s >= 0.0);
    let g = &r.generator;
    assert!(!g.processes.is_empty() && g.cores_allowed >= 1);
    // The table and the JSON carry them all.
    let text = r.render();
    for k in MEASURED_ROWS {
        assert!(text.contains(k), "{k} missing:\n{text}");
    }
    let v = serde_json::to_value(r).unwrap();
    for (section, keys) in [
        ("connect", &["connected", "per_s"][..]),
        (
            "delivery",
            &[
                "expected",
                "received",
                "lost",
                "duplicates",
                "reordered",
                "gaps",
            ],
        ),
        ("latency_us", &["p50", "p99", "p99_9", "max"]),
        ("throughput", &["publishing_per_s", "overall_per_s"]),
        (
            "server",
            &[
                "idle_rss_per_connection_bytes",
                "cpu_publishing_s",
                "cpu_per_delivery_us",
            ],
        ),
        ("generator", &["cpu_publishing_s", "saturated"]),
    ] {
        for k in keys {
            assert!(!v[section][k].is_null(), "{section}.{k} missing in {v}");
        }
    }
}

#[test]
fn redis_room_run_in_process() {
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    let url = redis.url();
    let srv = server(AuthMode::Insecure, Some(&url), None);
    let flags = format!(
        "-c 200 --workers 2 --users 50 --redis {url} \
         --rate 20 --warmup 0.5 --duration 2 --drain-timeout 10"
    );
    let report = bench(&ws_url(&srv), &flags, true).unwrap();
    srv.shutdown();
    assert_complete(&report, 200);
    assert_eq!(report.publish.published, 40);
    assert!(report.publish.warmup_published >= 9);
    assert_eq!(
        report.delivery.warmup_received,
        report.publish.warmup_published * 200
    );
    assert_eq!(report.publish.redis_receivers_min, Some(1));
}

#[test]
fn http_broadcast_flood_with_jwt_in_process() {
    let secret = "bench-test-secret-0123456789abcdef";
    let srv = server(AuthMode::jwt_secret(secret), None, Some(API_KEY));
    let flags = format!(
        "-c 100 --auth jwt --jwt-secret {secret} --publish http --api-key {API_KEY} \
         --target broadcast --flood --window 4 --duration 1 --payload-size 1KiB"
    );
    let report = bench(&ws_url(&srv), &flags, true).unwrap();
    srv.shutdown();
    assert_complete(&report, 100);
    assert_eq!(report.config.flood_window, Some(4));
    assert_eq!(report.publish.redis_receivers_min, None);
}

/// `--connect-only`: every client is set up and counted, nothing is
/// published, and the table says so instead of showing empty publishing rows.
#[test]
fn connect_only_sets_up_and_publishes_nothing() {
    let srv = server(AuthMode::Insecure, None, Some(API_KEY));
    let flags = format!("-c 200 --publish http --api-key {API_KEY} --connect-only --idle-settle 0");
    let report = bench(&ws_url(&srv), &flags, true).unwrap();
    srv.shutdown();
    assert_eq!(report.connect.connected, 200);
    assert_eq!(report.connect.failed, 0);
    assert!(report.connect.per_s > 0.0);
    assert!(report.connect.server_cpu_s.is_some());
    assert!(report.connect.server_cpu_per_connection_us.is_some());
    assert_eq!(report.publish.published, 0);
    assert_eq!(report.delivery.expected, 0);
    assert_eq!(report.delivery.received, 0);
    assert_eq!(report.delivery.other_messages, 0);
    assert!(report.config.connect_only);
    assert_eq!(report.config.mode, "connect-only");
    let text = report.render();
    assert!(text.contains("connect only"), "{text}");
    assert!(text.contains("µs per connection"), "{text}");
    for absent in ["publish ", "delivery", "latency", "throughput"] {
        assert!(!text.contains(absent), "{absent:?} in\n{text}");
    }
}

/// A setup that failed: `failed` of `total` connections, the summary
/// naming `why`; exit status 1.
fn assert_connect_failure(err: &BenchError, failed: u64, total: u64, why: &str) {
    match err {
        BenchError::Connect {
            failed: f,
            total: t,
            summary,
        } => {
            assert_eq!((*f, *t), (failed, total));
            assert!(summary.contains(why), "{summary}");
        }
        other => panic!("expected a connect failure, got {other}"),
    }
    assert_eq!(err.exit_code(), 1);
}

#[test]
fn refused_authentication_fails_the_setup() {
    let srv = server(
        AuthMode::jwt_secret("the-right-secret-0123456789abcdef"),
        None,
        Some(API_KEY),
    );
    let flags =
        format!("-c 5 --auth jwt --jwt-secret a-wrong-secret --publish http --api-key {API_KEY}");
    let err = bench(&ws_url(&srv), &flags, false).unwrap_err();
    srv.shutdown();
    assert_connect_failure(&err, 5, 5, "authentication refused");
}

#[test]
fn unreachable_endpoints_fail_the_setup() {
    let port = free_port();
    let ws = format!("ws://127.0.0.1:{port}/ws");
    // HTTP publishing to a closed port: refused before any connection opens.
    let err = bench(&ws, "-c 3 --publish http --api-key k", false).unwrap_err();
    assert!(matches!(err, BenchError::Publish(_)), "{err}");
    assert_eq!(err.exit_code(), 1);
    // A reachable publish endpoint but no WebSocket server behind --url.
    let srv = server(AuthMode::Insecure, None, Some(API_KEY));
    let api = format!("http://{}", srv.local_addr());
    let flags =
        format!("-c 3 --publish http --api-url {api} --api-key {API_KEY} --connect-timeout 5");
    let err = bench(&ws, &flags, false).unwrap_err();
    srv.shutdown();
    assert_connect_failure(&err, 3, 3, "refused");
}

/// `--burst`: one burst of N, all at once, then the drain; with the shape
/// of the server's writes from its /metrics and perf, and the kernel's
/// segment counters.
#[test]
fn redis_burst_with_the_shape_of_the_writes() {
    let Some(redis) = Redis::start(&[]) else {
        return;
    };
    let url = redis.url();
    let srv = server(AuthMode::Insecure, Some(&url), None);
    let perf = std::process::Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let flags = format!(
        "-c 200 --workers 2 --redis {url} --burst 50 --burst-pipeline 8 \
         --metrics-url http://{}/metrics --drain-timeout 10{}",
        srv.local_addr(),
        if perf { " --count-syscalls" } else { "" }
    );
    let report = bench(&ws_url(&srv), &flags, true).unwrap();
    srv.shutdown();
    assert_complete(&report, 200);
    assert_eq!(report.publish.published, 50);
    assert_eq!(report.config.mode, "burst");
    assert_eq!(report.config.burst_size, Some(50));
    assert_eq!(report.config.burst_pipeline, Some(8));
    let s = &report.shape;
    assert_eq!(s.deliveries, 10_000);
    // Every delivery was one frame the server counted as written, and a
    // burst leaves frames queued, so writes carry several each.
    let frames = s.server_frames_out.expect("frames from /metrics");
    assert!(frames >= 10_000, "{s:?}");
    let writes = s.server_write_calls.expect("writes from /metrics");
    assert!(writes > 0 && writes < frames, "{s:?}");
    assert!(s.bytes_per_write.unwrap() > 102.0, "{s:?}");
    assert!(s.tcp_out_segments.unwrap() > 0, "{s:?}");
    assert!(s.generator_cpu_per_delivery_us.is_some());
    if perf {
        // perf counts the whole test process (workers and other tests
        // run in it too): at least the server's own writes.
        let n = s.write_syscalls.expect("perf counted");
        assert!(n >= writes, "{s:?} {:?}", report.notes);
    }
    let text = report.render();
    assert!(text.contains("one burst of 50 (pipelines of 8)"), "{text}");
    assert!(
        text.contains("frames,") && text.contains("per write"),
        "{text}"
    );
    assert!(
        !report.notes.iter().any(|n| n.starts_with("--")),
        "{:?}",
        report.notes
    );
}

/// `--burst-every`: a burst every T for the duration.
#[test]
fn repeated_bursts_over_http() {
    let srv = server(AuthMode::Insecure, None, Some(API_KEY));
    let flags = format!(
        "-c 50 --publish http --api-key {API_KEY} --burst 10 --burst-every 0.25 --duration 1 \
         --metrics-url http://127.0.0.1:1/metrics"
    );
    let report = bench(&ws_url(&srv), &flags, true).unwrap();
    srv.shutdown();
    assert_complete(&report, 50);
    // Bursts at 0, 0.25, 0.5 and 0.75 s.
    assert_eq!(report.publish.published, 40);
    assert_eq!(report.config.burst_every_s, Some(0.25));
    assert!(report.render().contains("a burst of 10 every 0.25 s"));
    // A /metrics that does not answer is a note, not a failed run.
    assert_eq!(report.shape.server_write_calls, None);
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("--metrics-url: connect 127.0.0.1:1")),
        "{:?}",
        report.notes
    );
}
