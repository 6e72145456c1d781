//! Owns the result of a run: every figure as one serializable [`Report`]
//! (`--json` prints it as is; [`render`] makes the human table), and
//! [`fold()`], which computes it from the workers' reports (module
//! [`fold`](mod@fold)).
//!
//! Units are in the field names (`_s`, `_us`, `_bytes`, `_per_s`) so the
//! JSON needs no legend. A figure that could not be measured is `null`
//! (e.g. server figures without `--server-pid`), never a made-up 0, and a
//! ratio over nothing (no time, no delivery) is 0 or `null`, never NaN.

pub mod fold;
pub mod render;

use std::collections::BTreeMap;

use serde::Serialize;

pub use fold::{
    ConnectTotals, FoldError, OwnCpu, PublishCounts, Readings, ServerSamples, connect_totals,
    failure_summary, final_reports, fold,
};

/// Every figure of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub config: RunConfig,
    pub connect: ConnectFigures,
    pub publish: PublishFigures,
    pub delivery: DeliveryFigures,
    pub latency_us: LatencyFigures,
    pub throughput: ThroughputFigures,
    pub server: Option<ServerFigures>,
    pub generator: GeneratorFigures,
    /// How the bytes went out (see `bench::shape`).
    pub shape: ShapeFigures,
    /// Warnings a reader must see (saturation, drain cut short, …).
    pub notes: Vec<String>,
}

/// What was asked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunConfig {
    pub url: String,
    /// wss://: the TLS versions offered (`TLS 1.3 or 1.2`, `TLS 1.2`);
    /// `null` for ws://.
    pub tls: Option<String>,
    pub connections: u64,
    pub workers: u64,
    pub source_ips: usize,
    pub auth: String,
    pub users: u64,
    pub room: String,
    /// `redis` or `http`.
    pub publish: String,
    /// `room` or `broadcast`.
    pub target: String,
    /// `rate`, `flood`, `burst` or `connect-only`.
    pub mode: String,
    pub rate_per_s: Option<f64>,
    pub flood_window: Option<u64>,
    /// `--burst`: messages per burst, seconds between bursts (`null`: one
    /// burst per phase) and PUBLISH per pipeline.
    pub burst_size: Option<u64>,
    pub burst_every_s: Option<f64>,
    pub burst_pipeline: Option<u64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub payload_size_bytes: usize,
    pub drain_timeout_s: f64,
    /// Quiet time before the idle RSS reading.
    pub idle_settle_s: f64,
    /// `--connect-only`: nothing was published; only `connect` and the
    /// server's RSS figures mean anything.
    pub connect_only: bool,
}

/// Connection set-up: upgraded, authenticated and joined.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectFigures {
    pub connected: u64,
    pub failed: u64,
    /// From the first connect to the last `connected` reply.
    pub seconds: f64,
    pub per_s: f64,
    /// With --server-pid: the server's CPU from before the first connect
    /// to after the last `connected` reply (it is idle before).
    pub server_cpu_s: Option<f64>,
    pub server_percent_of_core: Option<f64>,
    /// server_cpu_s / connected: what one connect + authenticate cost the
    /// server, whoever limited the rate.
    pub server_cpu_per_connection_us: Option<f64>,
    /// The generator's CPU until every connection was up (all processes).
    pub generator_cpu_s: f64,
    pub generator_percent_of_core: f64,
}

/// The measured publishing phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishFigures {
    /// Measured messages the publish path accepted.
    pub published: u64,
    pub failed: u64,
    pub warmup_published: u64,
    /// Wall time of the measured phase.
    pub seconds: f64,
    pub per_s: f64,
    /// Redis: fewest and most servers a PUBLISH reached.
    pub redis_receivers_min: Option<u64>,
    pub redis_receivers_max: Option<u64>,
    pub first_error: Option<String>,
}

/// What the clients received of the measured messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryFigures {
    /// published × connections.
    pub expected: u64,
    /// Distinct (message, client) deliveries; duplicates not included.
    pub received: u64,
    /// expected − received.
    pub lost: u64,
    pub loss_percent: f64,
    pub duplicates: u64,
    /// Deliveries older than one the client already had.
    pub reordered: u64,
    /// Sequence numbers a client skipped when a later one arrived.
    pub gaps: u64,
    pub warmup_received: u64,
    /// Frames that were not benchmark messages.
    pub other_messages: u64,
    pub other_samples: Vec<String>,
    /// Connections that ended before the run did.
    pub disconnected: u64,
    pub close_codes: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    /// Every expected delivery arrived before --drain-timeout.
    pub drained: bool,
    /// From the end of publishing to the end of the drain.
    pub drain_s: f64,
}

/// Publish → delivery latency of measured deliveries, microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyFigures {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
}

/// Deliveries per second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThroughputFigures {
    /// Deliveries that arrived while publishing, per second of it (those
    /// of warmup messages still arriving included: the server sent them).
    pub publishing_per_s: f64,
    /// Deliveries from publish start to the last measured delivery (warmup
    /// stragglers included), per second.
    pub overall_per_s: f64,
    pub overall_s: f64,
    /// Deliveries of warmup messages that arrived after measuring began;
    /// they count in the rates above and in the server's CPU per delivery.
    pub warmup_late: u64,
}

/// The server processes given with --server-pid (summed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFigures {
    pub pids: Vec<u32>,
    pub rss_before_bytes: u64,
    pub rss_idle_bytes: u64,
    pub rss_after_bytes: u64,
    /// (RSS idle − RSS before) / connections.
    pub idle_rss_per_connection_bytes: f64,
    /// RssAnon before connecting and once idle (`None` where the kernel
    /// does not report it).
    pub anon_before_bytes: Option<u64>,
    pub anon_idle_bytes: Option<u64>,
    /// (RssAnon idle − RssAnon before) / connections: the per-connection
    /// memory without the binary's code pages that the first connections
    /// page in (a constant, 0–39 B per connection at 10,000 here).
    pub idle_anon_per_connection_bytes: Option<f64>,
    /// CPU during the measured publishing phase.
    pub cpu_publishing_s: f64,
    pub cpu_publishing_percent_of_core: f64,
    /// CPU from publish start to the end of the drain, per delivery in that
    /// time (measured ones plus warmup stragglers, `throughput.warmup_late`).
    pub cpu_delivery_s: f64,
    pub cpu_per_delivery_us: Option<f64>,
}

/// The generator's own CPU during the measured publishing phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GeneratorFigures {
    pub cpu_publishing_s: f64,
    pub cpu_publishing_percent_of_core: f64,
    /// Cores this process may run on (its affinity).
    pub cores_allowed: usize,
    /// CPU ≥ 90% of one core's wall time, in total or in one process.
    pub saturated: bool,
    pub processes: Vec<ProcessCpu>,
}

/// The shape of what the server wrote, from publish start to the end of
/// the drain, per delivery in that time (measured ones plus warmup
/// stragglers). A source not asked for, or that failed (a note says why),
/// is `null`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShapeFigures {
    pub deliveries: u64,
    /// Host-wide `Tcp: OutSegs`/`InSegs` (/proc/net/snmp): on loopback
    /// they include the clients' ACKs and the run's Redis traffic.
    pub tcp_out_segments: Option<u64>,
    pub tcp_in_segments: Option<u64>,
    pub tcp_out_segments_per_delivery: Option<f64>,
    /// `--metrics-url` (ignis-ws): its socket writes, and the frames and
    /// bytes it queued and wrote.
    pub server_write_calls: Option<u64>,
    pub server_frames_out: Option<u64>,
    pub server_bytes_written: Option<u64>,
    pub writes_per_delivery: Option<f64>,
    pub frames_per_write: Option<f64>,
    pub bytes_per_write: Option<f64>,
    /// `--count-syscalls`: the server's write-family system calls.
    pub write_syscalls: Option<u64>,
    pub write_syscalls_per_delivery: Option<f64>,
    /// Delivered frame bytes (payload + header) per write system call.
    pub delivered_bytes_per_syscall: Option<f64>,
    /// The generator's CPU (it is the receiving side) over the same time.
    pub generator_cpu_s: f64,
    pub generator_cpu_per_delivery_us: Option<f64>,
}

/// One generator process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessCpu {
    pub role: String,
    pub pid: u32,
    pub cpu_s: f64,
    pub percent_of_core: f64,
}
