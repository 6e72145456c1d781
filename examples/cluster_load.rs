//! Load generator for a cluster of ignis-ws nodes on one Redis (issue 15,
//! PERFORMANCE.md "Cluster"). Run by `scripts/perf-cluster.sh`.
//!
//! Clients on node k (of `--nodes`) join `room-k-r` (r < `--rooms-per-node`)
//! and `all`: every `room-k-*` has members on node k only; `all` is spread
//! over every node. Messages are published straight to Redis as Ignis
//! emitter envelopes, mixed by `--room-share` (to one `room-k-r`, round
//! robin), `--spread-share` (to `all`) and `--broadcast-share`
//! (`ws:broadcast`). Each carries a sequence number and its send time (ns
//! since the Unix epoch); each client counts what it got against what was
//! addressed to it (lost, duplicated, misrouted) and records the latency.
//!
//! Phases: connect + authenticate + join; probes (repeated until every
//! client has seen one of each kind, so in interest mode every node has
//! subscribed); snapshot of each node's `/metrics` and of the CPU of
//! `--node-pids` and `--redis-pid`; publishing; drain (until every expected
//! delivery arrived, at most `--drain-secs`); second snapshot; report (one
//! JSON object on stdout). The CPU and envelope figures cover the
//! publishing + drain window only (not the connects).
//!
//! `--no-local`: the control run. Clients connect and join as usual, but
//! every message goes to a room no client is in (`nolocal-i`): in pattern
//! mode every node receives every envelope and delivers it to nobody, so a
//! node's CPU / envelopes received is its CPU per envelope without a local
//! recipient (`cpu_us_per_envelope` in the report).
//!
//! `--publish-cmd SPUBLISH` with `--redis-cluster URL,URL,...`: each SPUBLISH
//! goes to the master owning the channel's slot (CRC16-XMODEM of the channel
//! or its `{hashtag}`, mod 16384; map from `CLUSTER SLOTS`; a MOVED reply
//! refreshes the map and the message is sent again to the named node).
//! Without `--redis-cluster`, SPUBLISH goes to `--redis`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // reason: a benchmark tool: a failure of its own ends the run loudly

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(about = "ignis-ws cluster load: K nodes on one Redis")]
struct Args {
    /// Node WebSocket URLs, comma-separated (ws://127.0.0.1:9101/ws,...).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Process ids of the nodes, same order (for CPU from /proc).
    #[arg(long, value_delimiter = ',')]
    node_pids: Vec<u32>,
    /// Redis's process ids (for their CPU from /proc, summed; several for
    /// a Redis Cluster).
    #[arg(long, value_delimiter = ',')]
    redis_pid: Vec<u32>,
    /// Clients per node.
    #[arg(long, default_value_t = 500)]
    clients: usize,
    /// Rooms per node (clients of node k are spread over room-k-0..R-1).
    #[arg(long, default_value_t = 1)]
    rooms_per_node: usize,
    #[arg(long, default_value = "redis://127.0.0.1:6393")]
    redis: String,
    /// Redis Cluster seed URLs for SPUBLISH routing.
    #[arg(long, value_delimiter = ',')]
    redis_cluster: Vec<String>,
    #[arg(long, default_value = "PUBLISH")]
    publish_cmd: String,
    /// Messages per second, all kinds together.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Publishing time, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 0.8)]
    room_share: f64,
    #[arg(long, default_value_t = 0.1)]
    spread_share: f64,
    #[arg(long, default_value_t = 0.1)]
    broadcast_share: f64,
    /// Bytes of filler in each message's data.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Longest wait for the last deliveries after publishing, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_secs: f64,
    /// Control run: publish only to rooms nobody joined.
    #[arg(long)]
    no_local: bool,
    /// Connections opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Idle baseline before publishing, seconds: the nodes' and Redis's CPU
    /// with no traffic, subtracted (pro rata) from the window's CPU in the
    /// `*_net` figures.
    #[arg(long, default_value_t = 2.0)]
    idle_secs: f64,
    /// Publish without waiting for probes (e.g. SPUBLISH before the nodes
    /// subscribe shard channels: a routing check; deliveries will be lost).
    #[arg(long)]
    skip_probe: bool,
    /// Free-form label copied into the report.
    #[arg(long, default_value = "")]
    label: String,
}

const ROOM: u8 = 1;
const SPREAD: u8 = 2;
const BROADCAST: u8 = 4;
const ALL_PROBES: u8 = ROOM | SPREAD | BROADCAST;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------- Redis

/// The slot of `key` (the crate's own, as its sharded publisher uses).
fn key_slot(key: &[u8]) -> u16 {
    ignis_ws::bridge::cluster::slot(key)
}

enum Route {
    Single(MultiplexedConnection),
    Cluster {
        seeds: Vec<String>,
        /// (first slot, last slot, "host:port" of the master).
        slots: Vec<(u16, u16, String)>,
        conns: HashMap<String, MultiplexedConnection>,
        /// URL scheme + auth prefix taken from the first seed.
        prefix: String,
    },
}

struct Publisher {
    cmd: String,
    route: Mutex<Route>,
    /// MOVED and ASK redirections followed.
    moved: AtomicU64,
    /// Messages given up after 5 attempts.
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

fn redis_str(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `CLUSTER SLOTS` of the first seed that answers.
async fn load_slots(seeds: &[String]) -> Result<Vec<(u16, u16, String)>, String> {
    let mut last = String::from("no seed");
    for seed in seeds {
        let mut c = match connect(seed).await {
            Ok(c) => c,
            Err(e) => {
                last = format!("{seed}: {e}");
                continue;
            }
        };
        let v: redis::Value = match redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut c).await {
            Ok(v) => v,
            Err(e) => {
                last = format!("{seed}: {e}");
                continue;
            }
        };
        let mut out = Vec::new();
        if let redis::Value::Array(ranges) = v {
            for r in ranges {
                let redis::Value::Array(parts) = r else {
                    continue;
                };
                let (
                    Some(redis::Value::Int(a)),
                    Some(redis::Value::Int(b)),
                    Some(redis::Value::Array(m)),
                ) = (parts.first(), parts.get(1), parts.get(2))
                else {
                    continue;
                };
                let (Some(host), Some(port)) =
                    (m.first().and_then(redis_str), m.get(1).and_then(redis_str))
                else {
                    continue;
                };
                out.push((*a as u16, *b as u16, format!("{host}:{port}")));
            }
        }
        if !out.is_empty() {
            return Ok(out);
        }
        last = format!("{seed}: CLUSTER SLOTS gave no ranges");
    }
    Err(last)
}

impl Publisher {
    async fn new(args: &Args) -> Result<Self, String> {
        let cmd = args.publish_cmd.to_ascii_uppercase();
        if cmd != "PUBLISH" && cmd != "SPUBLISH" {
            return Err(format!("--publish-cmd {cmd}: PUBLISH or SPUBLISH"));
        }
        let route = if cmd == "SPUBLISH" && !args.redis_cluster.is_empty() {
            let seeds = args.redis_cluster.clone();
            let slots = load_slots(&seeds).await?;
            let first = &seeds[0];
            // redis://[user:pw@]host:port → "redis://[user:pw@]"
            let prefix = match first.find("://") {
                Some(i) => {
                    let rest = &first[i + 3..];
                    match rest.rfind('@') {
                        Some(at) => first[..i + 3 + at + 1].to_owned(),
                        None => first[..i + 3].to_owned(),
                    }
                }
                None => "redis://".to_owned(),
            };
            Route::Cluster {
                seeds,
                slots,
                conns: HashMap::new(),
                prefix,
            }
        } else {
            Route::Single(
                connect(&args.redis)
                    .await
                    .map_err(|e| format!("{}: {e}", args.redis))?,
            )
        };
        Ok(Self {
            cmd,
            route: Mutex::new(route),
            moved: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    /// The connection for `channel` (cluster: its slot's master), opening
    /// it when needed; `force` names a node (after MOVED).
    async fn conn_for(
        &self,
        channel: &str,
        force: Option<String>,
    ) -> Result<MultiplexedConnection, String> {
        let (addr, url) = {
            let r = self.route.lock().map_err(|_| "poisoned")?;
            match &*r {
                Route::Single(c) => return Ok(c.clone()),
                Route::Cluster {
                    slots,
                    conns,
                    prefix,
                    ..
                } => {
                    let addr = match force {
                        Some(a) => a,
                        None => {
                            let s = key_slot(channel.as_bytes());
                            slots
                                .iter()
                                .find(|(a, b, _)| *a <= s && s <= *b)
                                .map(|(_, _, n)| n.clone())
                                .ok_or_else(|| format!("slot {s} of {channel} has no master"))?
                        }
                    };
                    if let Some(c) = conns.get(&addr) {
                        return Ok(c.clone());
                    }
                    let url = format!("{prefix}{addr}");
                    (addr, url)
                }
            }
        };
        let c = connect(&url).await.map_err(|e| format!("{url}: {e}"))?;
        if let Route::Cluster { conns, .. } = &mut *self.route.lock().map_err(|_| "poisoned")? {
            conns.insert(addr, c.clone());
        }
        Ok(c)
    }

    async fn refresh(&self) {
        let seeds = match &*self.route.lock().expect("route") {
            Route::Cluster { seeds, .. } => seeds.clone(),
            Route::Single(_) => return,
        };
        if let Ok(new) = load_slots(&seeds).await
            && let Route::Cluster { slots, .. } = &mut *self.route.lock().expect("route")
        {
            *slots = new;
        }
    }

    /// Publishes one message; returns the subscriber count Redis reported.
    /// MOVED: refresh the slot map, send again to the node named; ASK (a
    /// slot being migrated): ASKING + the command on the node named, map
    /// unchanged; other errors (TRYAGAIN, CLUSTERDOWN, a dropped
    /// connection): again after 50 ms; at most 5 attempts.
    async fn publish(&self, channel: &str, payload: &str) -> Option<i64> {
        // ws:broadcast stays classic in sharded mode (ignis-ws SUBSCRIBEs
        // it; a classic PUBLISH on any cluster node reaches every node).
        let cmd = if channel == "ws:broadcast" {
            "PUBLISH"
        } else {
            self.cmd.as_str()
        };
        let mut force = None;
        let mut asking = false;
        for _attempt in 0..5 {
            let mut c = match self.conn_for(channel, force.take()).await {
                Ok(c) => c,
                Err(e) => {
                    *self.last_error.lock().expect("last_error") = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let res = if std::mem::take(&mut asking) {
                redis::pipe()
                    .cmd("ASKING")
                    .ignore()
                    .cmd(cmd)
                    .arg(channel)
                    .arg(payload)
                    .query_async::<(i64,)>(&mut c)
                    .await
                    .map(|(n,)| n)
            } else {
                redis::cmd(cmd)
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut c)
                    .await
            };
            match res {
                Ok(n) => return Some(n),
                Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => {
                    self.moved.fetch_add(1, Relaxed);
                    // (the node's "host:port", the slot)
                    force = e.redirect_node().map(|(node, _slot)| node.to_owned());
                    if e.code() == Some("ASK") {
                        asking = true;
                    } else {
                        self.refresh().await;
                    }
                }
                Err(e) => {
                    *self.last_error.lock().expect("last_error") = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.errors.fetch_add(1, Relaxed);
        None
    }
}

fn room_envelope(room: &str, event: &str, data: &str) -> String {
    format!(
        r#"{{"serverId":"emitter","type":"room","target":{},"event":"{event}","data":{data}}}"#,
        Value::String(room.to_owned())
    )
}

fn broadcast_envelope(event: &str, data: &str) -> String {
    format!(r#"{{"serverId":"emitter","type":"broadcast","event":"{event}","data":{data}}}"#)
}

// ---------------------------------------------------------------- clients

/// Shared across client tasks.
struct Shared {
    /// Deliveries of a measured message seen for the first time.
    received: AtomicU64,
    /// Clients that saw a probe of every kind.
    probed: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    setup_done: AtomicU64,
    stop: AtomicBool,
    stop_tx: tokio::sync::watch::Sender<bool>,
    hist: Mutex<Histogram<u64>>,
    /// Sequence numbers up to this bound fit the clients' bitsets.
    max_seq: u64,
    failures: Mutex<HashMap<String, u64>>,
}

#[derive(Default, Debug)]
struct ClientResult {
    node: usize,
    room: usize,
    ok: bool,
    unique: u64,
    dup: u64,
    misrouted: u64,
    out_of_range: u64,
    other: u64,
    closed_early: bool,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: &'a str,
    #[serde(borrow, default)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct Data {
    /// Sequence number.
    s: Option<u64>,
    /// Send time, ns since the epoch.
    t: Option<u64>,
    /// Room index of a room message (global: node * R + r).
    g: Option<usize>,
    /// Kind bit of a probe.
    probe: Option<u8>,
}

fn fail(shared: &Shared, why: String) {
    shared.failed.fetch_add(1, Relaxed);
    shared.setup_done.fetch_add(1, Relaxed);
    let mut f = shared.failures.lock().expect("failures");
    *f.entry(why).or_default() += 1;
}

async fn client(
    url: String,
    node: usize,
    idx: usize,
    room: usize,
    rooms_per_node: usize,
    shared: Arc<Shared>,
    sem: Arc<tokio::sync::Semaphore>,
) -> ClientResult {
    let mut res = ClientResult {
        node,
        room,
        ..Default::default()
    };
    let mut stop_rx = shared.stop_tx.subscribe();
    let permit = sem.acquire().await;
    let mut ws = match tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            fail(&shared, format!("connect: {e}"));
            return res;
        }
        Err(_) => {
            fail(&shared, "connect: timeout".into());
            return res;
        }
    };
    let auth =
        format!(r#"{{"event":"authenticate","data":{{"type":"Bearer","token":"u{node}-{idx}"}}}}"#);
    if ws.send(Message::text(auth)).await.is_err() {
        fail(&shared, "send authenticate".into());
        return res;
    }
    // Wait for `connected`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(f) = serde_json::from_str::<Frame>(&t) {
                    if f.event == "connected" {
                        break;
                    }
                    if f.event == "error" {
                        fail(&shared, format!("authenticate: {t}"));
                        return res;
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                fail(&shared, format!("before connected: {e}"));
                return res;
            }
            Ok(None) => {
                fail(&shared, "closed before connected".into());
                return res;
            }
            Err(_) => {
                fail(&shared, "connected: timeout".into());
                return res;
            }
        }
    }
    let room_name = format!("room-{node}-{}", room % rooms_per_node);
    let join = format!(r#"{{"event":"join","data":{{"rooms":["{room_name}","all"]}}}}"#);
    if ws.send(Message::text(join)).await.is_err() {
        fail(&shared, "send join".into());
        return res;
    }
    drop(permit);
    res.ok = true;
    shared.connected.fetch_add(1, Relaxed);
    shared.setup_done.fetch_add(1, Relaxed);

    let words = (shared.max_seq / 64 + 1) as usize;
    let mut seen = vec![0u64; words];
    let mut probes = 0u8;
    let mut lat: Vec<u64> = Vec::with_capacity(256);
    let flush = |lat: &mut Vec<u64>| {
        if lat.is_empty() {
            return;
        }
        let mut h = shared.hist.lock().expect("hist");
        for &v in lat.iter() {
            let _ = h.record(v.clamp(1, 60_000_000));
        }
        lat.clear();
    };
    loop {
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop_rx.changed() => None,
        };
        if shared.stop.load(Relaxed) {
            break;
        }
        let t = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                res.closed_early = !shared.stop.load(Relaxed);
                break;
            }
            Some(Ok(_)) => continue,
        };
        let recv = now_ns();
        let Ok(f) = serde_json::from_str::<Frame>(&t) else {
            res.other += 1;
            continue;
        };
        let Some(d) = f
            .data
            .and_then(|d| serde_json::from_str::<Data>(d.get()).ok())
        else {
            res.other += 1;
            continue;
        };
        match f.event {
            "m" => {
                let (Some(s), Some(sent)) = (d.s, d.t) else {
                    res.other += 1;
                    continue;
                };
                if let Some(g) = d.g
                    && g != node * rooms_per_node + room % rooms_per_node
                {
                    res.misrouted += 1;
                    continue;
                }
                if s >= shared.max_seq {
                    res.out_of_range += 1;
                    continue;
                }
                let (w, b) = ((s / 64) as usize, s % 64);
                if seen[w] & (1 << b) != 0 {
                    res.dup += 1;
                    continue;
                }
                seen[w] |= 1 << b;
                res.unique += 1;
                shared.received.fetch_add(1, Relaxed);
                lat.push(recv.saturating_sub(sent) / 1000);
                if lat.len() >= 256 {
                    flush(&mut lat);
                }
            }
            "probe" => {
                let before = probes;
                probes |= d.probe.unwrap_or(0);
                if before != ALL_PROBES && probes == ALL_PROBES {
                    shared.probed.fetch_add(1, Relaxed);
                }
            }
            _ => res.other += 1,
        }
    }
    flush(&mut lat);
    let _ = ws.close(None).await;
    res
}

// ---------------------------------------------------------------- node figures

/// CPU time of `pid`, seconds: the sum of its threads' run time from
/// /proc/PID/task/*/schedstat (ns), else utime + stime from /proc/PID/stat
/// (clock ticks, 10 ms).
fn cpu_seconds(pid: u32) -> Option<f64> {
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut ns = 0u64;
        let mut any = false;
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat"))
                && let Some(v) = s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            {
                ns += v;
                any = true;
            }
        }
        if any {
            return Some(ns as f64 / 1e9);
        }
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

fn metrics_url(ws: &str) -> String {
    let rest = ws
        .strip_prefix("ws://")
        .or_else(|| ws.strip_prefix("wss://"))
        .unwrap_or(ws);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("http://{host}/metrics")
}

/// `ignis_ws_redis_envelopes_in_total` by type, and subscribed channels.
async fn scrape(url: &str) -> (HashMap<String, u64>, Option<u64>) {
    let mut out = HashMap::new();
    let mut channels = None;
    let Ok(resp) = reqwest::get(url).await else {
        return (out, channels);
    };
    let Ok(body) = resp.text().await else {
        return (out, channels);
    };
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("ignis_ws_redis_envelopes_in_total{type=\"") {
            if let Some((kind, v)) = rest.split_once("\"} ")
                && let Ok(v) = v.trim().parse::<f64>()
            {
                out.insert(kind.to_owned(), v as u64);
            }
        } else if let Some(v) = line.strip_prefix("ignis_ws_redis_subscribed_channels ") {
            channels = v.trim().parse::<f64>().ok().map(|v| v as u64);
        }
    }
    (out, channels)
}

struct Snapshot {
    envelopes: Vec<HashMap<String, u64>>,
    channels: Vec<Option<u64>>,
    node_cpu: Vec<Option<f64>>,
    redis_cpu: Option<f64>,
    gen_cpu: Option<f64>,
    at: Instant,
}

async fn snapshot(args: &Args) -> Snapshot {
    let mut envelopes = Vec::new();
    let mut channels = Vec::new();
    for n in &args.nodes {
        let (e, c) = scrape(&metrics_url(n)).await;
        envelopes.push(e);
        channels.push(c);
    }
    Snapshot {
        envelopes,
        channels,
        node_cpu: (0..args.nodes.len())
            .map(|i| args.node_pids.get(i).and_then(|p| cpu_seconds(*p)))
            .collect(),
        redis_cpu: args
            .redis_pid
            .iter()
            .map(|p| cpu_seconds(*p))
            .sum::<Option<f64>>()
            .filter(|_| !args.redis_pid.is_empty()),
        gen_cpu: cpu_seconds(std::process::id()),
        at: Instant::now(),
    }
}

// ---------------------------------------------------------------- main

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Room,
    Spread,
    Broadcast,
}

/// Picks kinds so each kind's count tracks its share exactly (largest
/// deficit first), deterministic.
struct Mix {
    shares: [f64; 3],
    counts: [u64; 3],
    n: u64,
}

impl Mix {
    fn next(&mut self) -> Kind {
        self.n += 1;
        let mut best = 0;
        let mut best_def = f64::MIN;
        for i in 0..3 {
            if self.shares[i] <= 0.0 {
                continue;
            }
            let def = self.shares[i] * self.n as f64 - self.counts[i] as f64;
            if def > best_def {
                best_def = def;
                best = i;
            }
        }
        self.counts[best] += 1;
        [Kind::Room, Kind::Spread, Kind::Broadcast][best]
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("cluster_load: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let k = args.nodes.len();
    let r = args.rooms_per_node.max(1);
    let total_share = args.room_share + args.spread_share + args.broadcast_share;
    if total_share <= 0.0 {
        return Err("the shares sum to 0".into());
    }
    let planned = (args.rate as f64 * args.duration).ceil() as u64;
    let publisher = Arc::new(Publisher::new(&args).await?);

    let shared = Arc::new(Shared {
        received: AtomicU64::new(0),
        probed: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        setup_done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        stop_tx: tokio::sync::watch::channel(false).0,
        hist: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?),
        max_seq: planned + 16,
        failures: Mutex::new(HashMap::new()),
    });

    // Connect, authenticate, join.
    let t_connect = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = Vec::new();
    let total_clients = k * args.clients;
    for i in 0..args.clients {
        for (node, url) in args.nodes.iter().enumerate() {
            tasks.push(tokio::spawn(client(
                url.clone(),
                node,
                i,
                i % r,
                r,
                Arc::clone(&shared),
                Arc::clone(&sem),
            )));
        }
    }
    while (shared.setup_done.load(Relaxed) as usize) < total_clients {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if t_connect.elapsed() > Duration::from_secs(120) {
            return Err("connect phase longer than 120 s".into());
        }
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    let connected = shared.connected.load(Relaxed);
    eprintln!(
        "cluster_load: {connected}/{total_clients} clients connected in {connect_secs:.1} s ({} failed)",
        shared.failed.load(Relaxed)
    );

    // Probes until every client saw each kind (interest mode: every node's
    // SUBSCRIBE is confirmed).
    let t_probe = Instant::now();
    let mut probe_rounds = 0;
    while !args.skip_probe && shared.probed.load(Relaxed) < connected {
        probe_rounds += 1;
        let d = |bit: u8| format!(r#"{{"probe":{bit}}}"#);
        for node in 0..k {
            for room in 0..r {
                let name = format!("room-{node}-{room}");
                publisher
                    .publish(
                        &format!("ws:room:{name}"),
                        &room_envelope(&name, "probe", &d(ROOM)),
                    )
                    .await;
            }
        }
        publisher
            .publish("ws:room:all", &room_envelope("all", "probe", &d(SPREAD)))
            .await;
        publisher
            .publish("ws:broadcast", &broadcast_envelope("probe", &d(BROADCAST)))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if t_probe.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "only {}/{connected} clients saw every probe after 30 s",
                shared.probed.load(Relaxed)
            ));
        }
    }
    // Let the last probes through before the first snapshot.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let probe_secs = t_probe.elapsed().as_secs_f64();
    let idle_start = snapshot(&args).await;
    tokio::time::sleep(Duration::from_secs_f64(args.idle_secs.max(0.0))).await;
    let before = snapshot(&args).await;
    let idle_dt = before.at.duration_since(idle_start.at).as_secs_f64();
    // CPU seconds per second with no traffic.
    let idle_rate = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if idle_dt > 0.0 => Some((b - a) / idle_dt),
        _ => None,
    };

    // Publish.
    let filler = "x".repeat(args.payload);
    let mut mix = Mix {
        shares: [
            args.room_share / total_share,
            args.spread_share / total_share,
            args.broadcast_share / total_share,
        ],
        counts: [0; 3],
        n: 0,
    };
    let rooms_total = k * r;
    let mut room_counts = vec![0u64; rooms_total];
    let mut published = [0u64; 3];
    let mut seq = 0u64;
    let mut room_rr = 0usize;
    let start = Instant::now();
    let inflight = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let max_inflight = 10_000u64;
    let mut lagged = 0u64;
    while seq < planned {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(planned);
        while seq < due {
            if inflight.load(Relaxed) >= max_inflight {
                lagged += 1;
                break;
            }
            let kind = mix.next();
            let sent = now_ns();
            let (channel, env) = if args.no_local {
                let name = format!("nolocal-{}", seq as usize % rooms_total);
                let data = format!(r#"{{"s":{seq},"t":{sent},"p":"{filler}"}}"#);
                (format!("ws:room:{name}"), room_envelope(&name, "m", &data))
            } else {
                match kind {
                    Kind::Room => {
                        let g = room_rr % rooms_total;
                        room_rr += 1;
                        room_counts[g] += 1;
                        let name = format!("room-{}-{}", g / r, g % r);
                        let data = format!(r#"{{"s":{seq},"t":{sent},"g":{g},"p":"{filler}"}}"#);
                        (format!("ws:room:{name}"), room_envelope(&name, "m", &data))
                    }
                    Kind::Spread => {
                        let data = format!(r#"{{"s":{seq},"t":{sent},"p":"{filler}"}}"#);
                        ("ws:room:all".to_owned(), room_envelope("all", "m", &data))
                    }
                    Kind::Broadcast => {
                        let data = format!(r#"{{"s":{seq},"t":{sent},"p":"{filler}"}}"#);
                        ("ws:broadcast".to_owned(), broadcast_envelope("m", &data))
                    }
                }
            };
            if !args.no_local {
                published[kind as usize] += 1;
            }
            let p = Arc::clone(&publisher);
            let n = Arc::clone(&inflight);
            n.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                p.publish(&channel, &env).await;
                n.fetch_sub(1, Relaxed);
            });
            seq += 1;
        }
    }
    while inflight.load(Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let publish_secs = start.elapsed().as_secs_f64();

    // Expected deliveries per client (only clients that joined).
    let spread_n = published[Kind::Spread as usize];
    let bcast_n = published[Kind::Broadcast as usize];
    // Each live client's expected count depends on its room; count live
    // clients per room from the setup (clients are placed round robin).
    let mut live_per_room = vec![0u64; rooms_total];
    let mut live_per_node = vec![0u64; k];
    // We know placement, but not which failed until the tasks end: wait
    // for the drain using the planned placement minus failures (close
    // enough for the wait; the report uses the real figures).
    for i in 0..args.clients {
        for node in 0..k {
            live_per_room[node * r + i % r] += 1;
            live_per_node[node] += 1;
        }
    }
    let expected_guess: u64 = (0..rooms_total)
        .map(|g| live_per_room[g] * (room_counts[g] + spread_n + bcast_n))
        .sum::<u64>()
        .saturating_sub(shared.failed.load(Relaxed) * (spread_n + bcast_n));
    let t_drain = Instant::now();
    while shared.received.load(Relaxed) < expected_guess
        && t_drain.elapsed().as_secs_f64() < args.drain_secs
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let drain_secs = t_drain.elapsed().as_secs_f64();
    let after = snapshot(&args).await;

    shared.stop.store(true, Relaxed);
    shared.stop_tx.send_replace(true);
    let mut results = Vec::new();
    for t in tasks {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), t).await {
            results.push(r);
        }
    }

    // Figures.
    let mut expected = 0u64;
    let (mut unique, mut dup, mut misrouted, mut oor, mut other, mut closed) = (0, 0, 0, 0, 0, 0);
    let mut clients_per_node = vec![0u64; k];
    let mut lost_clients = 0u64;
    for c in results.iter().filter(|c| c.ok) {
        let g = c.node * r + c.room % r;
        let exp = if args.no_local {
            0
        } else {
            room_counts[g] + spread_n + bcast_n
        };
        expected += exp;
        unique += c.unique;
        dup += c.dup;
        misrouted += c.misrouted;
        oor += c.out_of_range;
        other += c.other;
        closed += u64::from(c.closed_early);
        clients_per_node[c.node] += 1;
        if c.unique < exp {
            lost_clients += 1;
        }
    }
    let hist = shared.hist.lock().expect("hist").clone();
    let window = after.at.duration_since(before.at).as_secs_f64();
    let mut nodes = Vec::new();
    let mut env_sum = 0u64;
    let mut node_cpu_sum = 0.0;
    let mut node_cpu_net_sum = 0.0;
    let mut no_local_sum = 0i64;
    for node in 0..k {
        let by_type: serde_json::Map<String, Value> = after.envelopes[node]
            .iter()
            .map(|(t, v)| {
                let d = v.saturating_sub(*before.envelopes[node].get(t).unwrap_or(&0));
                (t.clone(), json!(d))
            })
            .collect();
        let envelopes: u64 = by_type.values().filter_map(Value::as_u64).sum();
        env_sum += envelopes;
        // Envelopes that had a recipient on this node: its rooms' messages,
        // the spread room's and the broadcasts (if it has clients).
        let local = if args.no_local || clients_per_node[node] == 0 {
            0
        } else {
            (0..r).map(|rr| room_counts[node * r + rr]).sum::<u64>() + spread_n + bcast_n
        };
        let no_local = envelopes as i64 - local as i64;
        no_local_sum += no_local;
        let cpu = match (before.node_cpu[node], after.node_cpu[node]) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let idle = idle_rate(idle_start.node_cpu[node], before.node_cpu[node]);
        let net = cpu.map(|c| (c - idle.unwrap_or(0.0) * window).max(0.0));
        if let Some(c) = cpu {
            node_cpu_sum += c;
        }
        if let Some(c) = net {
            node_cpu_net_sum += c;
        }
        nodes.push(json!({
            "url": args.nodes[node],
            "pid": args.node_pids.get(node),
            "clients": clients_per_node[node],
            "subscribed_channels": after.channels[node],
            "envelopes_in": envelopes,
            "envelopes_in_by_type": by_type,
            "envelopes_with_local_recipient": local,
            "envelopes_no_local_recipient": no_local,
            "cpu_s": cpu,
            "cpu_us_per_envelope": cpu.filter(|_| envelopes > 0).map(|c| c * 1e6 / envelopes as f64),
            "idle_cpu_per_s": idle,
            "cpu_net_s": net,
            "cpu_net_us_per_envelope": net.filter(|_| envelopes > 0).map(|c| c * 1e6 / envelopes as f64),
        }));
    }
    let redis_cpu = match (before.redis_cpu, after.redis_cpu) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let redis_idle = idle_rate(idle_start.redis_cpu, before.redis_cpu);
    let redis_net = redis_cpu.map(|c| (c - redis_idle.unwrap_or(0.0) * window).max(0.0));
    let total_pub: u64 = if args.no_local {
        seq
    } else {
        published.iter().sum()
    };
    let q = |p: f64| {
        if hist.is_empty() {
            None
        } else {
            Some(hist.value_at_quantile(p))
        }
    };
    let report = json!({
        "label": args.label,
        "mode": if args.no_local { "no_local_control" } else { "mixed" },
        "publish_cmd": publisher.cmd,
        "nodes_count": k,
        "clients_per_node": args.clients,
        "rooms_per_node": r,
        "rate": args.rate,
        "duration_s": args.duration,
        "payload": args.payload,
        "setup": {
            "clients_connected": connected,
            "clients_failed": shared.failed.load(Relaxed),
            "failures": *shared.failures.lock().expect("failures"),
            "connect_s": connect_secs,
            "probe_rounds": probe_rounds,
            "probe_s": probe_secs,
        },
        "published": {
            "room": if args.no_local { 0 } else { published[0] },
            "spread": published[1],
            "broadcast": published[2],
            "no_local": if args.no_local { seq } else { 0 },
            "total": total_pub,
            "seconds": publish_secs,
            "achieved_rate": total_pub as f64 / publish_secs,
            "errors": publisher.errors.load(Relaxed),
            "moved_or_ask": publisher.moved.load(Relaxed),
            "last_error": *publisher.last_error.lock().expect("last_error"),
            "pacing_stalls": lagged,
        },
        "deliveries": {
            "expected": expected,
            "received": unique,
            "lost": expected.saturating_sub(unique),
            "dup": dup,
            "misrouted": misrouted,
            "out_of_range": oor,
            "other_frames": other,
            "clients_missing_some": lost_clients,
            "clients_closed_early": closed,
        },
        "latency_us": {
            "count": hist.len(),
            "p50": q(0.5),
            "p90": q(0.9),
            "p99": q(0.99),
            "p999": q(0.999),
            "max": if hist.is_empty() { None } else { Some(hist.max()) },
        },
        "window_s": window,
        "idle_baseline_s": idle_dt,
        "drain_s": drain_secs,
        "nodes": nodes,
        "totals": {
            "envelopes_in": env_sum,
            "envelopes_no_local_recipient": no_local_sum,
            "node_cpu_s": node_cpu_sum,
            "node_cpu_us_per_envelope": if env_sum > 0 { Some(node_cpu_sum * 1e6 / env_sum as f64) } else { None },
            "redis_cpu_s": redis_cpu,
            "redis_cpu_us_per_publish": redis_cpu.filter(|_| total_pub > 0).map(|c| c * 1e6 / total_pub as f64),
            "redis_cpu_us_per_delivered_envelope": redis_cpu.filter(|_| env_sum > 0).map(|c| c * 1e6 / env_sum as f64),
            "node_cpu_net_s": node_cpu_net_sum,
            // The generator's own CPU over the window (near 1.0 s/s: it is
            // the bottleneck and the latency includes its queueing).
            "generator_cpu_s": match (before.gen_cpu, after.gen_cpu) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            },
            "node_cpu_net_us_per_envelope": if env_sum > 0 { Some(node_cpu_net_sum * 1e6 / env_sum as f64) } else { None },
            "redis_idle_cpu_per_s": redis_idle,
            "redis_cpu_net_s": redis_net,
            "redis_cpu_net_us_per_publish": redis_net.filter(|_| total_pub > 0).map(|c| c * 1e6 / total_pub as f64),
            "redis_cpu_net_us_per_delivered_envelope": redis_net.filter(|_| env_sum > 0).map(|c| c * 1e6 / env_sum as f64),
        },
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    );
    Ok(())
}
