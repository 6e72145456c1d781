//! Owns the command line of `ignis-ws bench` and of the hidden
//! `ignis-ws bench-worker`, and turns the former into a checked [`Plan`]:
//! every cross-flag rule (JWT needs a secret, HTTP publishing needs a key,
//! enough workers for the per-process fd limit, enough source IPs for the
//! ephemeral port range) is decided here, before anything connects, so a bad
//! command line exits with status 2 and never half-runs.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::config::ByteSize;

use super::payload::MIN_PAYLOAD_SIZE;
use super::tls::{TlsClient, TlsOptions};

/// Connections one worker process may hold: the machine allows 20,000 fds
/// per process and a worker needs a few for its runtime and pipes.
pub const MAX_CONNECTIONS_PER_WORKER: usize = 19_000;
/// Largest `--payload-size`: ignis-ws's default `--redis-max-message` is
/// 1 MiB for the whole envelope.
pub const MAX_PAYLOAD_SIZE: usize = 1_000_000;
/// ignis-ws's default `--backpressure-limit`: a client lagging by more
/// queued bytes than this is closed (1008).
pub const SERVER_BACKPRESSURE_LIMIT: u64 = 1024 * 1024;
/// Environment variable that carries the JWT secret to worker processes
/// (not on their command line, where `ps` would show it).
pub const JWT_SECRET_ENV: &str = "IGNIS_WS_BENCH_JWT_SECRET";

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthArg {
    /// `data.token` = the user id (ignis-ws `--auth insecure`, Ignis on Bun
    /// with a token-is-the-user authenticator).
    Insecure,
    /// `data.token` = an HS256 JWT with `sub` = the user id, signed with
    /// `--jwt-secret`.
    Jwt,
}

/// How messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishArg {
    /// PUBLISH through Redis as an Ignis emitter (`serverId: "emitter"`).
    Redis,
    /// `POST /api/publish` on an ignis-ws node (`--api-key`).
    Http,
}

/// Who a message is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetArg {
    /// The room every client joined (`--room`).
    Room,
    /// Every authenticated client.
    Broadcast,
}

/// `ignis-ws bench`: the fan-out load generator.
///
/// Opens N WebSocket connections, authenticates them and joins them to one
/// room, then publishes messages that every client receives (through Redis as
/// an Ignis emitter, or through ignis-ws's HTTP publish API), counting and
/// timing every delivery. Reports loss, latency, throughput, connect rate,
/// and — with `--server-pid` — the server's CPU and memory per connection.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").args(["rate", "flood", "burst"])))]
pub struct BenchArgs {
    /// WebSocket URL of the server: ws://HOST:PORT/PATH, or wss:// (every
    /// connection does a TLS handshake; needs --ca-file).
    #[arg(long, value_name = "URL", default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// For wss://: PEM file with the CA certificate that signed the
    /// server's (the only trust anchor; the system roots are not used).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// For wss://: the name the server certificate must carry (DNS name or
    /// IP address) [default: the host of --url].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// For wss://: offer TLS 1.2 only (default: TLS 1.3 and 1.2).
    #[arg(long)]
    pub tls12: bool,
    /// Connections to open.
    #[arg(short = 'c', long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Local addresses to connect from, round robin: a range
    /// (127.0.0.1-127.0.0.8), a comma list, or both (127.0.0.1-127.0.0.4,127.0.0.9).
    /// Each address has its own ephemeral port range, so this is how N exceeds
    /// ~28,000 per server address.
    #[arg(long, value_name = "IPS", value_parser = parse_ip_list)]
    pub source_ips: Option<IpList>,
    /// Worker processes [default: ceil(N / 19000): a process may hold at most
    /// 20,000 fds].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: Option<u64>,
    /// Connection handshakes in flight per worker.
    #[arg(long, value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_concurrency: u64,
    /// Time allowed for one connection's TCP connect, upgrade and
    /// authentication, seconds.
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_secs)]
    pub connect_timeout: f64,
    /// How clients authenticate.
    #[arg(long, value_enum, default_value_t = AuthArg::Insecure)]
    pub auth: AuthArg,
    /// HS256 secret for `--auth jwt`.
    #[arg(long, value_name = "SECRET", env = JWT_SECRET_ENV, hide_env_values = true,
          required_if_eq("auth", "jwt"))]
    pub jwt_secret: Option<String>,
    /// Distinct user ids; connection i is user `bench-(i mod U)` [default: N].
    #[arg(long, value_name = "U", value_parser = clap::value_parser!(u64).range(1..))]
    pub users: Option<u64>,
    /// Room every client joins and messages go to.
    #[arg(long, value_name = "NAME", default_value = "bench")]
    pub room: String,
    /// How messages are published.
    #[arg(long, value_enum, default_value_t = PublishArg::Redis)]
    pub publish: PublishArg,
    /// Redis URL for `--publish redis` (use your own redis-server, not a
    /// shared one).
    #[arg(long, value_name = "URL", required_if_eq("publish", "redis"))]
    pub redis: Option<String>,
    /// Publish endpoint for `--publish http` [default: http://HOST:PORT/api/publish
    /// of --url].
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// Bearer key for `--publish http` (the server's --api-key).
    #[arg(long, value_name = "KEY", required_if_eq("publish", "http"))]
    pub api_key: Option<String>,
    /// Room messages (every member of --room) or broadcasts (every
    /// authenticated client).
    #[arg(long, value_enum, default_value_t = TargetArg::Room)]
    pub target: TargetArg,
    /// Messages published per second (each reaches all N clients).
    #[arg(long, value_name = "R", default_value = "10", value_parser = parse_rate)]
    pub rate: f64,
    /// Publish as fast as the server delivers: keep at most --window messages
    /// in flight, a message being in flight until every live client has
    /// received it or a later one.
    #[arg(long)]
    pub flood: bool,
    /// Messages in flight with --flood. Throughput grows with W until the
    /// server saturates (more queued lets both ends batch), and so does
    /// latency; keep W × frame size under the server's backpressure limit.
    #[arg(long, value_name = "W", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=32_768))]
    pub window: u64,
    /// Publish in bursts of N messages, all at once with no window (as
    /// pipelines of --burst-pipeline PUBLISH): what a busy room sees when
    /// an upstream job emits a batch. Without --burst-every, one burst per
    /// phase (warmup, measured), then the run drains it.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub burst: Option<u64>,
    /// With --burst: a burst every T seconds for --duration (the first at
    /// once); bursts that take longer than T to deliver overlap.
    #[arg(long, value_name = "T", requires = "burst", value_parser = parse_secs)]
    pub burst_every: Option<f64>,
    /// With --burst: PUBLISH commands per Redis pipeline (or HTTP requests
    /// handed to the sender at once).
    #[arg(long, value_name = "P", default_value_t = 64, requires = "burst",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub burst_pipeline: u64,
    /// The server's Prometheus /metrics URL (ignis-ws): read before and
    /// after the measured phase for the shape of what it wrote (write
    /// calls, frames and bytes per write).
    #[arg(long, value_name = "URL")]
    pub metrics_url: Option<String>,
    /// Count the write-family system calls (write, writev, pwritev,
    /// sendto, sendmsg, sendmmsg) of the --server-pid processes with `perf stat`
    /// from the start of the measured phase to the end of the drain: the
    /// shape of what any server wrote, ignis-ws or not (needs perf and the
    /// right to trace the process; writes submitted through io_uring are
    /// not system calls and are not counted).
    #[arg(long, requires = "server_pid")]
    pub count_syscalls: bool,
    /// Measured publishing time, seconds.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_secs)]
    pub duration: f64,
    /// Measure connection set-up only: connect, authenticate and join all
    /// N clients, report the connect rate, its CPU on both sides and (with
    /// --server-pid) idle RSS, then stop. Nothing is published (the Redis or
    /// API endpoint is still checked at start), so the server need not
    /// deliver anything.
    #[arg(long)]
    pub connect_only: bool,
    /// Publishing before the measured part (same rate or flood; deliveries
    /// are checked but not counted), seconds.
    #[arg(long, value_name = "S", default_value = "0", value_parser = parse_secs_or_zero)]
    pub warmup: f64,
    /// Bytes of each client frame payload `{"event":"b","data":"…"}`
    /// (min 87; KiB/MiB suffixes work).
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_payload_size)]
    pub payload_size: usize,
    /// After publishing, wait at most this long for deliveries still on
    /// their way (ends as soon as all arrived), seconds.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_secs_or_zero)]
    pub drain_timeout: f64,
    /// With --server-pid: after every client connected, authenticated and
    /// saw the probe, wait this long with nothing sent before reading the
    /// server's idle RSS (a connection storm leaves freed memory the
    /// server returns within a couple of seconds), seconds.
    #[arg(long, value_name = "S", default_value = "3", value_parser = parse_secs_or_zero)]
    pub idle_settle: f64,
    /// Server process to measure (CPU from /proc/PID/stat, RSS from
    /// /proc/PID/status); repeat or comma-separate for several.
    #[arg(long, value_name = "PID", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub server_pid: Vec<u32>,
    /// Print one JSON object with every figure instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bars (they are also off when stderr is not a terminal).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `ignis-ws bench-worker`: internal. One worker process of `bench`, driven
/// by the coordinator with JSON lines on stdin/stdout.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// Worker number (for messages).
    #[arg(long, default_value_t = 0)]
    pub id: u64,
    /// Server address to connect to.
    #[arg(long)]
    pub server: SocketAddr,
    /// Host header of the upgrade request.
    #[arg(long)]
    pub host: String,
    /// WebSocket path.
    #[arg(long, default_value = "/ws")]
    pub path: String,
    /// wss://: CA file (TLS on when given).
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// wss://: server name to verify.
    #[arg(long, requires = "ca_file")]
    pub tls_server_name: Option<String>,
    /// wss://: TLS 1.2 only.
    #[arg(long, requires = "ca_file")]
    pub tls12: bool,
    /// Connections this worker opens.
    #[arg(long)]
    pub connections: u64,
    /// Global index of this worker's first connection (picks its source IP
    /// and user id).
    #[arg(long, default_value_t = 0)]
    pub first_index: u64,
    /// Source addresses, as for `bench`.
    #[arg(long, value_parser = parse_ip_list)]
    pub source_ips: Option<IpList>,
    #[arg(long, default_value_t = 512)]
    pub connect_concurrency: u64,
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub connect_timeout: f64,
    #[arg(long, value_enum, default_value_t = AuthArg::Insecure)]
    pub auth: AuthArg,
    #[arg(long, env = JWT_SECRET_ENV, hide_env_values = true)]
    pub jwt_secret: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub users: u64,
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// Report the flood frontier on every advance.
    #[arg(long)]
    pub flood: bool,
}

/// A bad combination of flags (exit status 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ArgError(pub String);

/// A parsed `--source-ips`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpList(pub Vec<IpAddr>);

/// Largest number of addresses one range may expand to.
const MAX_RANGE: u128 = 65_536;

/// Parses `A-B` ranges and single addresses, comma separated.
pub fn parse_ip_list(s: &str) -> Result<IpList, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        match item.split_once('-') {
            None => out.push(parse_ip(item)?),
            Some((a, b)) => {
                let (a, b) = (parse_ip(a.trim())?, parse_ip(b.trim())?);
                let (lo, hi, v4) = match (a, b) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        (u128::from(u32::from(a)), u128::from(u32::from(b)), true)
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), false),
                    _ => return Err(format!("range {item:?} mixes IPv4 and IPv6")),
                };
                if hi < lo {
                    return Err(format!("range {item:?} ends before it starts"));
                }
                if hi - lo >= MAX_RANGE {
                    return Err(format!(
                        "range {item:?} has more than {MAX_RANGE} addresses"
                    ));
                }
                for x in lo..=hi {
                    out.push(if v4 {
                        IpAddr::from(std::net::Ipv4Addr::from(
                            u32::try_from(x).map_err(|_| "IPv4 overflow".to_owned())?,
                        ))
                    } else {
                        IpAddr::from(std::net::Ipv6Addr::from(x))
                    });
                }
            }
        }
    }
    if out.is_empty() {
        return Err("no address given".into());
    }
    Ok(IpList(out))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

fn parse_secs_or_zero(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in [0, 86400]")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1_000_000.0 => Ok(v),
        _ => Err(format!("{s:?} is not a rate in (0, 1000000] messages/s")),
    }
}

fn parse_payload_size(s: &str) -> Result<usize, String> {
    let ByteSize(n) = s.parse::<ByteSize>()?;
    if !(MIN_PAYLOAD_SIZE..=MAX_PAYLOAD_SIZE).contains(&n) {
        return Err(format!(
            "{n} bytes: must be {MIN_PAYLOAD_SIZE}..={MAX_PAYLOAD_SIZE} (the fixed fields need {MIN_PAYLOAD_SIZE})"
        ));
    }
    Ok(n)
}

/// Where to connect: parsed from `ws://HOST:PORT/PATH` or `wss://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    pub addr: SocketAddr,
    /// `HOST:PORT` as written, for the Host header.
    pub host: String,
    pub path: String,
    /// wss://.
    pub tls: bool,
}

impl WsTarget {
    /// The host of the URL without port or IPv6 brackets (the default TLS
    /// server name).
    pub fn hostname(&self) -> &str {
        let h = &self.host;
        if let Some(rest) = h.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        h.rsplit_once(':').map_or(h.as_str(), |(name, _)| name)
    }
}

/// Splits `scheme://host[:port][/path]`, resolving the host.
fn split_url(
    url: &str,
    scheme: &str,
    default_port: u16,
) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{url:?} is not a {scheme}:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?}: expected {scheme}://HOST:PORT/PATH"));
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:{default_port}")
    } else {
        authority.to_owned()
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?}: {authority} resolves to nothing"))?;
    Ok((addr, authority.to_owned(), path.to_owned()))
}

/// Parses the `--url` of the server.
pub fn parse_ws_url(url: &str) -> Result<WsTarget, String> {
    let tls = url.starts_with("wss://");
    let (addr, host, path) = if tls {
        split_url(url, "wss", 443)?
    } else {
        split_url(url, "ws", 80)?
    };
    let path = if path.is_empty() { "/".into() } else { path };
    Ok(WsTarget {
        addr,
        host,
        path,
        tls,
    })
}

/// Where `--publish http` POSTs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

/// Parses `--api-url` (or derives it from the WebSocket target).
pub fn parse_api_url(url: Option<&str>, ws: &WsTarget) -> Result<HttpTarget, String> {
    let Some(url) = url else {
        return Ok(HttpTarget {
            addr: ws.addr,
            host: ws.host.clone(),
            path: "/api/publish".into(),
        });
    };
    parse_http_url(url, "/api/publish", " for --api-url")
}

/// Parses `--metrics-url` (`http://HOST:PORT[/PATH]`, default path
/// `/metrics`).
pub fn parse_metrics_url(url: &str) -> Result<HttpTarget, String> {
    parse_http_url(url, "/metrics", " (use the plain --metrics-listen)")
}

/// Parses `http://HOST:PORT[/PATH]`, `default_path` for an empty or `/`
/// path; https:// is refused (`https_hint` says what to do instead).
fn parse_http_url(url: &str, default_path: &str, https_hint: &str) -> Result<HttpTarget, String> {
    if url.starts_with("https://") {
        return Err(format!("https:// is not supported{https_hint}"));
    }
    let (addr, host, path) = split_url(url, "http", 80)?;
    let path = if path.is_empty() || path == "/" {
        default_path.into()
    } else {
        path
    };
    Ok(HttpTarget { addr, host, path })
}

/// The publish path, resolved.
#[derive(Debug, Clone)]
pub enum PublishPlan {
    Redis { url: String },
    Http { target: HttpTarget, key: String },
}

/// How fast to publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Messages per second.
    Rate(f64),
    /// At most this many messages in flight.
    Flood { window: u64 },
    /// `size` messages at once (pipelines of `pipeline`), every `every`
    /// (or once per phase).
    Burst {
        size: u64,
        every: Option<Duration>,
        pipeline: u64,
    },
}

/// A checked run: everything the coordinator needs, nothing left to parse.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: String,
    pub target: WsTarget,
    /// wss://: checked (the CA file loads, the name parses).
    pub tls: Option<TlsOptions>,
    pub connections: u64,
    pub workers: u64,
    pub source_ips: Vec<IpAddr>,
    pub connect_concurrency: u64,
    pub connect_timeout: Duration,
    pub auth: AuthArg,
    pub jwt_secret: Option<String>,
    pub users: u64,
    pub room: String,
    pub publish: PublishPlan,
    pub broadcast: bool,
    pub pace: Pace,
    pub duration: Duration,
    pub warmup: Duration,
    pub payload_size: usize,
    pub drain_timeout: Duration,
    pub idle_settle: Duration,
    pub connect_only: bool,
    pub server_pids: Vec<u32>,
    /// `--metrics-url`, checked.
    pub metrics: Option<HttpTarget>,
    pub count_syscalls: bool,
    pub json: bool,
    pub quiet: bool,
}

/// The first and last ports of the kernel's ephemeral range, when readable.
fn ephemeral_ports() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(lo)), Some(Ok(hi))) = (it.next(), it.next()) else {
        return None;
    };
    hi.checked_sub(lo).map(|d| d + 1)
}

/// `ceil(connections / MAX_CONNECTIONS_PER_WORKER)`.
pub fn default_workers(connections: u64) -> u64 {
    connections
        .div_ceil(MAX_CONNECTIONS_PER_WORKER as u64)
        .max(1)
}

impl BenchArgs {
    /// Checks the flags against each other and the machine.
    pub fn plan(&self) -> Result<Plan, ArgError> {
        let bad = |m: String| ArgError(m);
        let target = parse_ws_url(&self.url).map_err(|e| bad(format!("--url: {e}")))?;
        let tls = self.tls_options(&target)?;
        let n = self.connections;
        let workers = self.workers.unwrap_or_else(|| default_workers(n));
        if workers > n {
            return Err(bad(format!(
                "--workers {workers} is more than --connections {n}"
            )));
        }
        let per_worker = n.div_ceil(workers);
        if per_worker > MAX_CONNECTIONS_PER_WORKER as u64 {
            return Err(bad(format!(
                "{per_worker} connections per worker exceed {MAX_CONNECTIONS_PER_WORKER} \
                 (20,000 fds per process): use --workers {} or more",
                default_workers(n)
            )));
        }
        let source_ips = self.source_ips.clone().map(|l| l.0).unwrap_or_default();
        if let Some(ports) = ephemeral_ports() {
            let addrs = source_ips.len().max(1) as u64;
            let per_addr = n.div_ceil(addrs);
            if per_addr > ports {
                return Err(bad(format!(
                    "{per_addr} connections per source address exceed the {ports} ephemeral ports: \
                     give --source-ips with at least {} addresses",
                    n.div_ceil(ports)
                )));
            }
        }
        if let Some(ip) = source_ips
            .iter()
            .find(|ip| ip.is_ipv4() != target.addr.is_ipv4())
        {
            return Err(bad(format!(
                "--source-ips {ip} is not of the same family as the server address {}",
                target.addr
            )));
        }
        let jwt_secret = match self.auth {
            AuthArg::Jwt => match &self.jwt_secret {
                Some(s) if !s.is_empty() => Some(s.clone()),
                _ => return Err(bad("--auth jwt needs a non-empty --jwt-secret".into())),
            },
            AuthArg::Insecure => None,
        };
        let users = self.users.unwrap_or(n);
        if self.room.is_empty() || self.room.starts_with("ws:") {
            return Err(bad(format!(
                "--room {:?}: a room name is non-empty and does not start with ws:",
                self.room
            )));
        }
        let publish = match self.publish {
            PublishArg::Redis => {
                let url = self
                    .redis
                    .clone()
                    .ok_or_else(|| bad("--publish redis needs --redis URL".into()))?;
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return Err(bad(format!("--redis {url:?} is not a redis:// URL")));
                }
                PublishPlan::Redis { url }
            }
            PublishArg::Http => {
                let key = self
                    .api_key
                    .clone()
                    .ok_or_else(|| bad("--publish http needs --api-key".into()))?;
                let target = parse_api_url(self.api_url.as_deref(), &target)
                    .map_err(|e| bad(format!("--api-url: {e}")))?;
                PublishPlan::Http { target, key }
            }
        };
        if self.api_url.is_some() && self.publish != PublishArg::Http {
            return Err(bad("--api-url only applies to --publish http".into()));
        }
        let pace = if self.flood {
            Pace::Flood {
                window: self.window,
            }
        } else if let Some(size) = self.burst {
            Pace::Burst {
                size,
                every: self.burst_every.map(Duration::from_secs_f64),
                pipeline: self.burst_pipeline,
            }
        } else {
            Pace::Rate(self.rate)
        };
        let metrics = self
            .metrics_url
            .as_deref()
            .map(parse_metrics_url)
            .transpose()
            .map_err(|e| bad(format!("--metrics-url: {e}")))?;
        let server_pids = self.server_pids_checked()?;
        Ok(Plan {
            url: self.url.clone(),
            target,
            tls,
            connections: n,
            workers,
            source_ips,
            connect_concurrency: self.connect_concurrency,
            connect_timeout: Duration::from_secs_f64(self.connect_timeout),
            auth: self.auth,
            jwt_secret,
            users,
            room: self.room.clone(),
            publish,
            broadcast: self.target == TargetArg::Broadcast,
            pace,
            duration: Duration::from_secs_f64(self.duration),
            warmup: Duration::from_secs_f64(self.warmup),
            payload_size: self.payload_size,
            drain_timeout: Duration::from_secs_f64(self.drain_timeout),
            idle_settle: Duration::from_secs_f64(self.idle_settle),
            connect_only: self.connect_only,
            server_pids,
            metrics,
            count_syscalls: self.count_syscalls,
            json: self.json,
            quiet: self.quiet,
        })
    }

    /// The TLS settings of a wss:// URL, checked by building the client
    /// configuration once; the TLS flags without wss:// are an error.
    fn tls_options(&self, target: &WsTarget) -> Result<Option<TlsOptions>, ArgError> {
        if !target.tls {
            if self.ca_file.is_some() || self.tls_server_name.is_some() || self.tls12 {
                return Err(ArgError(
                    "--ca-file, --tls-server-name and --tls12 only apply to a wss:// --url".into(),
                ));
            }
            return Ok(None);
        }
        let Some(ca_file) = self.ca_file.clone() else {
            return Err(ArgError(format!(
                "--url {}: wss:// needs --ca-file FILE (the PEM of the CA that signed the \
                 server's certificate; the system roots are not used)",
                self.url
            )));
        };
        let opts = TlsOptions {
            ca_file,
            server_name: self
                .tls_server_name
                .clone()
                .unwrap_or_else(|| target.hostname().to_owned()),
            tls12_only: self.tls12,
        };
        TlsClient::new(&opts).map_err(ArgError)?;
        Ok(Some(opts))
    }

    fn server_pids_checked(&self) -> Result<Vec<u32>, ArgError> {
        let mut pids = self.server_pid.clone();
        pids.sort_unstable();
        pids.dedup();
        for pid in &pids {
            if !std::path::Path::new(&format!("/proc/{pid}/stat")).exists() {
                return Err(ArgError(format!("--server-pid {pid}: no such process")));
            }
        }
        Ok(pids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(extra: &[&str]) -> Result<BenchArgs, clap::Error> {
        let mut v = vec!["bench"];
        v.extend_from_slice(extra);
        Cli::try_parse_from(v).map(|c| c.args)
    }

    fn plan(extra: &[&str]) -> Result<Plan, String> {
        parse(extra)
            .map_err(|e| e.to_string())?
            .plan()
            .map_err(|e| e.0)
    }

    const REDIS: [&str; 2] = ["--redis", "redis://127.0.0.1:1"];

    #[test]
    fn ip_ranges_lists_and_mixes() {
        let l = parse_ip_list("127.0.0.1-127.0.0.8").unwrap().0;
        assert_eq!(l.len(), 8);
        assert_eq!(l[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(l[7], "127.0.0.8".parse::<IpAddr>().unwrap());
        let l = parse_ip_list(" 127.0.0.1 , 127.0.0.3-127.0.0.4,10.0.0.1")
            .unwrap()
            .0;
        assert_eq!(
            l,
            ["127.0.0.1", "127.0.0.3", "127.0.0.4", "10.0.0.1"]
                .map(|s| s.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        // Across an octet boundary.
        let l = parse_ip_list("127.0.0.255-127.0.1.1").unwrap().0;
        assert_eq!(l.len(), 3);
        assert_eq!(l[1], "127.0.1.0".parse::<IpAddr>().unwrap());
        // A one-address range and IPv6.
        assert_eq!(parse_ip_list("127.0.0.5-127.0.0.5").unwrap().0.len(), 1);
        assert_eq!(parse_ip_list("::1-::3").unwrap().0.len(), 3);
    }

    #[test]
    fn ip_list_errors() {
        for bad in [
            "",
            ",",
            "127.0.0.8-127.0.0.1",
            "127.0.0.1-::1",
            "127.0.0.1-",
            "localhost",
            "127.0.0.256",
            "10.0.0.0-10.1.0.0",
        ] {
            assert!(parse_ip_list(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn defaults() {
        let p = plan(&REDIS).unwrap();
        assert_eq!(p.connections, 1000);
        assert_eq!(p.workers, 1);
        assert_eq!(p.users, 1000);
        assert_eq!(p.pace, Pace::Rate(10.0));
        assert_eq!(p.payload_size, 100);
        assert_eq!(p.room, "bench");
        assert_eq!(p.target.path, "/ws");
        assert_eq!(p.target.addr, "127.0.0.1:8080".parse().unwrap());
        assert!(!p.broadcast);
    }

    #[test]
    fn workers_default_to_the_fd_limit() {
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(19_000), 1);
        assert_eq!(default_workers(19_001), 2);
        assert_eq!(default_workers(25_000), 2);
        let p = plan(
            &[
                &REDIS[..],
                &["-c", "25000", "--source-ips", "127.0.0.1-127.0.0.2"],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(p.workers, 2);
        // Explicitly too few workers for the fd limit.
        let e = plan(
            &[
                &REDIS[..],
                &[
                    "-c",
                    "25000",
                    "--workers",
                    "1",
                    "--source-ips",
                    "127.0.0.1,127.0.0.2",
                ],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(e.contains("--workers 2"), "{e}");
        let e = plan(&[&REDIS[..], &["-c", "3", "--workers", "4"]].concat()).unwrap_err();
        assert!(e.contains("more than --connections"), "{e}");
    }

    #[test]
    fn too_many_connections_per_source_address() {
        // 200,000 exceeds any ephemeral range (at most 64,512 ports).
        let e = plan(&[&REDIS[..], &["-c", "200000", "--workers", "11"]].concat()).unwrap_err();
        assert!(e.contains("--source-ips"), "{e}");
        assert!(
            plan(
                &[
                    &REDIS[..],
                    &[
                        "-c",
                        "200000",
                        "--workers",
                        "11",
                        "--source-ips",
                        "127.0.0.1-127.0.0.64"
                    ]
                ]
                .concat()
            )
            .is_ok()
        );
    }

    #[test]
    fn rate_flood_and_bounds() {
        assert!(parse(&[&REDIS[..], &["--rate", "5", "--flood"]].concat()).is_err());
        let p = plan(&[&REDIS[..], &["--flood", "--window", "8"]].concat()).unwrap();
        assert_eq!(p.pace, Pace::Flood { window: 8 });
        let p = plan(&[&REDIS[..], &["--burst", "300"]].concat()).unwrap();
        assert_eq!(
            p.pace,
            Pace::Burst {
                size: 300,
                every: None,
                pipeline: 64
            }
        );
        let p = plan(
            &[
                &REDIS[..],
                &[
                    "--burst",
                    "30",
                    "--burst-every",
                    "0.5",
                    "--burst-pipeline",
                    "1",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            p.pace,
            Pace::Burst {
                size: 30,
                every: Some(Duration::from_millis(500)),
                pipeline: 1
            }
        );
        let p = plan(&[&REDIS[..], &["--metrics-url", "http://127.0.0.1:9/"]].concat()).unwrap();
        assert_eq!(p.metrics.unwrap().path, "/metrics");
        assert!(
            plan(&[&REDIS[..], &["--metrics-url", "https://127.0.0.1:9/"]].concat())
                .unwrap_err()
                .contains("--metrics-url")
        );
        for bad in [
            &["--burst", "0"][..],
            &["--burst", "10", "--flood"],
            &["--burst", "10", "--rate", "5"],
            &["--burst-every", "1"],
            &["--burst", "10", "--burst-every", "0"],
            &["--burst", "10", "--burst-pipeline", "0"],
            &["--count-syscalls"],
            &["--rate", "0"][..],
            &["--rate", "-1"],
            &["--rate", "nan"],
            &["--duration", "0"],
            &["--warmup", "-1"],
            &["--window", "0"],
            &["-c", "0"],
            &["--connect-concurrency", "0"],
            &["--payload-size", "86"],
            &["--payload-size", "2MiB"],
            &["--payload-size", "10 parsecs"],
            &["--users", "0"],
            &["--auth", "webhook"],
            &["--target", "user"],
        ] {
            assert!(
                parse(&[&REDIS[..], bad].concat()).is_err(),
                "{bad:?} should be refused"
            );
        }
        let p = plan(&[&REDIS[..], &["--payload-size", "1KiB", "--warmup", "0"]].concat()).unwrap();
        assert_eq!(p.payload_size, 1024);
        assert_eq!(p.warmup, Duration::ZERO);
        assert!(plan(&[&REDIS[..], &["--payload-size", "87"]].concat()).is_ok());
    }

    #[test]
    fn publish_paths_need_their_settings() {
        // Redis is the default path and needs a URL (clap's required_if_eq
        // does not see a defaulted --publish; plan() does, also exit 2).
        assert!(plan(&[]).unwrap_err().contains("--redis"));
        let e = parse(&["--publish", "redis"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(
            plan(&["--redis", "http://x"])
                .unwrap_err()
                .contains("redis://")
        );
        // HTTP needs the key; the endpoint defaults to the WebSocket server's.
        let e = parse(&["--publish", "http"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let p = plan(&[
            "--publish",
            "http",
            "--api-key",
            "k",
            "--url",
            "ws://127.0.0.1:9000/ws",
        ])
        .unwrap();
        let PublishPlan::Http { target, key } = p.publish else {
            panic!("http plan")
        };
        assert_eq!(key, "k");
        assert_eq!(target.addr, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(target.path, "/api/publish");
        let p = plan(&[
            "--publish",
            "http",
            "--api-key",
            "k",
            "--api-url",
            "http://127.0.0.1:9001",
        ])
        .unwrap();
        let PublishPlan::Http { target, .. } = p.publish else {
            panic!("http plan")
        };
        assert_eq!(target.addr, "127.0.0.1:9001".parse().unwrap());
        assert!(plan(&[&REDIS[..], &["--api-url", "http://127.0.0.1:1"]].concat()).is_err());
    }

    #[test]
    fn jwt_needs_a_secret() {
        // clap falls back to the environment variable; only check without it.
        if std::env::var_os(JWT_SECRET_ENV).is_none() {
            let e = parse(&[&REDIS[..], &["--auth", "jwt"]].concat()).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        }
        assert!(plan(&[&REDIS[..], &["--auth", "jwt", "--jwt-secret", ""]].concat()).is_err());
        let p = plan(&[&REDIS[..], &["--auth", "jwt", "--jwt-secret", "s3cret"]].concat()).unwrap();
        assert_eq!(p.jwt_secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn urls() {
        let t = parse_ws_url("ws://127.0.0.1:9000/ws").unwrap();
        assert_eq!(t.host, "127.0.0.1:9000");
        assert_eq!(t.path, "/ws");
        let t = parse_ws_url("ws://localhost").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert_eq!(t.path, "/");
        let t = parse_ws_url("ws://[::1]:9000/x/y").unwrap();
        assert_eq!(t.addr, "[::1]:9000".parse().unwrap());
        assert_eq!(t.path, "/x/y");
        let t = parse_ws_url("wss://127.0.0.1:9443/ws").unwrap();
        assert!(t.tls);
        assert_eq!(t.hostname(), "127.0.0.1");
        assert_eq!(parse_ws_url("wss://localhost/ws").unwrap().addr.port(), 443);
        assert_eq!(parse_ws_url("wss://[::1]:9/").unwrap().hostname(), "::1");
        assert!(!parse_ws_url("ws://127.0.0.1:9000/ws").unwrap().tls);
        for bad in [
            "wss://",
            "http://127.0.0.1/ws",
            "ws://",
            "ws://u@h/ws",
            "127.0.0.1:9000",
        ] {
            assert!(parse_ws_url(bad).is_err(), "{bad:?}");
        }
        assert!(
            plan(
                &[
                    &REDIS[..],
                    &["--url", "ws://127.0.0.1:1/ws", "--source-ips", "::1"]
                ]
                .concat()
            )
            .is_err()
        );
    }

    #[test]
    fn wss_needs_a_ca_file() {
        let wss = ["--url", "wss://127.0.0.1:9443/ws"];
        let e = plan(&[&REDIS[..], &wss].concat()).unwrap_err();
        assert!(e.contains("--ca-file"), "{e}");
        let e =
            plan(&[&REDIS[..], &wss, &["--ca-file", "/nonexistent/ca.pem"]].concat()).unwrap_err();
        assert!(e.contains("--ca-file /nonexistent/ca.pem"), "{e}");
        let dir = std::env::temp_dir().join(format!("ignis-bench-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, super::super::tls::TEST_CA_PEM).unwrap();
        let ca = ca.to_str().unwrap();
        let p = plan(&[&REDIS[..], &wss, &["--ca-file", ca]].concat()).unwrap();
        let tls = p.tls.unwrap();
        assert_eq!(tls.server_name, "127.0.0.1");
        assert!(!tls.tls12_only);
        assert!(p.target.tls);
        let p = plan(
            &[
                &REDIS[..],
                &wss,
                &["--ca-file", ca, "--tls-server-name", "localhost", "--tls12"],
            ]
            .concat(),
        )
        .unwrap();
        let tls = p.tls.unwrap();
        assert_eq!(tls.server_name, "localhost");
        assert!(tls.tls12_only);
        // The TLS flags make no sense for ws://.
        let e = plan(&[&REDIS[..], &["--ca-file", ca]].concat()).unwrap_err();
        assert!(e.contains("wss://"), "{e}");
        assert!(plan(&REDIS).unwrap().tls.is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn server_pids() {
        let me = std::process::id().to_string();
        let p = plan(
            &[
                &REDIS[..],
                &["--server-pid", &format!("{me},{me}"), "--server-pid", &me],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(p.server_pids, vec![std::process::id()]);
        assert!(plan(&[&REDIS[..], &["--server-pid", "4000000000"]].concat()).is_err());
        assert!(parse(&[&REDIS[..], &["--server-pid", "abc"]].concat()).is_err());
    }

    #[test]
    fn rooms() {
        assert!(plan(&[&REDIS[..], &["--room", ""]].concat()).is_err());
        assert!(plan(&[&REDIS[..], &["--room", "ws:x"]].concat()).is_err());
        assert!(
            plan(&[&REDIS[..], &["--room", "r1", "--target", "broadcast"]].concat())
                .unwrap()
                .broadcast
        );
    }
}
