//! Owns the fold: pure functions from the workers' final reports, the
//! plan and the coordinator's own readings ([`Readings`]: clock marks,
//! /proc samples, the publisher's counts) to the figures and notes of a
//! [`Report`]. [`fold`] is the whole of it; the coordinator only collects
//! its inputs, so every figure can be checked here on hand-made reports.
//!
//! The workers are other processes: their counters are added with
//! saturation, and a histogram that does not decode or does not fit is a
//! [`FoldError`], never a panic. A rate or share over no time is 0 and a
//! cost per nothing is `None`, never NaN.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::{
    ConnectFigures, DeliveryFigures, GeneratorFigures, LatencyFigures, ProcessCpu, PublishFigures,
    Report, RunConfig, ServerFigures, ShapeFigures, ThroughputFigures,
};
use crate::bench::args::{Pace, Plan, PublishPlan, SERVER_BACKPRESSURE_LIMIT};
use crate::bench::shape::ShapeSample;
use crate::bench::sysstat::ProcSample;
use crate::bench::wire::{Ready, WireError, WorkerReport, histogram_from_hex};
use crate::bench::worker::LATENCY_MAX_NS;

/// Generator CPU at or above this share of one core's wall time means the
/// generator, not the server, may have been the bottleneck.
pub const SATURATION: f64 = 0.9;

/// One reading of a generator process: role, pid, CPU clock ticks.
pub type OwnCpu = (String, u32, u64);

/// The workers' `ready` events, added up: the connect phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConnectTotals {
    pub connected: u64,
    pub failed: u64,
    /// From the first connection attempt to the last `connected` reply.
    pub seconds: f64,
}

/// The server's readings (summed over `--server-pid`; all 0 without).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSamples {
    /// Before any worker started.
    pub before: ProcSample,
    /// When every connection was up.
    pub connected: ProcSample,
    /// After the probe and `--idle-settle`.
    pub idle: ProcSample,
    /// When measured publishing began and ended.
    pub start: ProcSample,
    pub end: ProcSample,
    /// At the end of the drain.
    pub after: ProcSample,
}

/// The publisher's counts.
#[derive(Debug, Clone, Default)]
pub struct PublishCounts {
    /// Measured messages the publish path accepted.
    pub published: u64,
    pub failed: u64,
    pub warmup_published: u64,
    /// Redis: fewest and most servers a PUBLISH reached.
    pub receivers: Option<(u64, u64)>,
    pub first_error: Option<String>,
}

/// What the coordinator measured itself: everything [`fold`] needs besides
/// the plan and the workers' final reports.
#[derive(Debug, Clone, Default)]
pub struct Readings {
    pub connect: ConnectTotals,
    pub server: ServerSamples,
    /// The generator's processes when every connection was up, and when
    /// measured publishing began and ended (same processes, same order).
    pub own_connected: Vec<OwnCpu>,
    pub own_start: Vec<OwnCpu>,
    pub own_end: Vec<OwnCpu>,
    /// The generator's processes at the end of the drain.
    pub own_after: Vec<OwnCpu>,
    /// The shape sources at publish start and at the end of the drain, and
    /// the write system calls counted in between (`--count-syscalls`).
    pub shape_start: ShapeSample,
    pub shape_after: ShapeSample,
    pub write_syscalls: Option<Result<u64, String>>,
    /// CLOCK_MONOTONIC ns: measured publishing began and ended; the drain
    /// ended.
    pub pub_start_ns: u64,
    pub pub_end_ns: u64,
    pub drain_end_ns: u64,
    /// Every expected delivery arrived before `--drain-timeout`.
    pub drained: bool,
    /// Every publish was answered within `settle_timeout`.
    pub settled: bool,
    pub settle_timeout: Duration,
    pub publish: PublishCounts,
    /// The unit of the CPU readings (`sysconf(_SC_CLK_TCK)`).
    pub ticks_per_s: f64,
    /// Cores this process may run on.
    pub cores_allowed: usize,
}

/// Workers' reports that cannot be folded.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("worker {id}: {why}")]
    Worker { id: usize, why: String },
}

/// The workers' final reports, in worker order; the first worker without
/// one fails the fold with what it last said (`gone`) or "sent no report".
pub fn final_reports(
    workers: impl IntoIterator<Item = (Option<WorkerReport>, Option<String>)>,
) -> Result<Vec<WorkerReport>, FoldError> {
    workers
        .into_iter()
        .enumerate()
        .map(|(id, (report, gone))| {
            report.ok_or_else(|| FoldError::Worker {
                id,
                why: gone.unwrap_or_else(|| "sent no report".into()),
            })
        })
        .collect()
}

/// `cpu_s` as a percentage of one core over `wall_s` (0 over no time).
pub fn pct(cpu_s: f64, wall_s: f64) -> f64 {
    if wall_s > 0.0 {
        cpu_s * 100.0 / wall_s
    } else {
        0.0
    }
}

/// `count` per second of `secs` (0 over no time).
pub fn per_s(count: f64, secs: f64) -> f64 {
    if secs > 0.0 { count / secs } else { 0.0 }
}

/// Seconds from `from_ns` to `to_ns` (0 when `to_ns` is earlier).
fn secs(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

/// CPU seconds between two tick readings.
fn cpu_s(from_ticks: u64, to_ticks: u64, ticks_per_s: f64) -> f64 {
    to_ticks.saturating_sub(from_ticks) as f64 / ticks_per_s
}

/// Σ `f` over `items`, saturating.
fn total<T>(items: &[T], f: impl Fn(&T) -> u64) -> u64 {
    items.iter().fold(0, |acc, x| acc.saturating_add(f(x)))
}

/// Adds `n` to `key`'s count in `into`, saturating.
fn add_count<K: Ord>(into: &mut BTreeMap<K, u64>, key: K, n: u64) {
    let c = into.entry(key).or_default();
    *c = c.saturating_add(n);
}

/// Adds the workers' `ready` events up. The connect time runs from the
/// earliest attempt any worker started (0: none) to the latest `connected`.
pub fn connect_totals(readies: &[Ready]) -> ConnectTotals {
    let first_connect = readies
        .iter()
        .map(|r| r.first_connect_ns)
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(0);
    let last_connected = readies
        .iter()
        .map(|r| r.last_connected_ns)
        .max()
        .unwrap_or(0);
    ConnectTotals {
        connected: total(readies, |r| r.connected),
        failed: total(readies, |r| r.failed),
        seconds: secs(first_connect, last_connected),
    }
}

/// The four commonest connect failures over every worker, commonest first
/// (ties by kind), as `N× kind; …`.
pub fn failure_summary(readies: &[Ready]) -> String {
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for r in readies {
        for (k, v) in &r.failures {
            add_count(&mut kinds, k.as_str(), *v);
        }
    }
    let mut kinds: Vec<(&str, u64)> = kinds.into_iter().collect();
    kinds.sort_by_key(|k| Reverse(k.1));
    kinds
        .iter()
        .take(4)
        .map(|(k, v)| format!("{v}× {k}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Adds the workers' counters up: close codes and errors by kind, and the
/// first three samples of unexpected messages of each worker (the figures
/// that are not counters are left at their defaults).
pub fn totals(reports: &[WorkerReport]) -> DeliveryFigures {
    let mut t = DeliveryFigures {
        received: total(reports, |r| r.received),
        duplicates: total(reports, |r| r.duplicates),
        reordered: total(reports, |r| r.reordered),
        gaps: total(reports, |r| r.gaps),
        warmup_received: total(reports, |r| r.warmup_received),
        other_messages: total(reports, |r| r.other_messages),
        disconnected: total(reports, |r| r.disconnected),
        ..DeliveryFigures::default()
    };
    for r in reports {
        for (c, v) in &r.close_codes {
            add_count(&mut t.close_codes, c.to_string(), *v);
        }
        for (e, v) in &r.errors {
            add_count(&mut t.errors, e.clone(), *v);
        }
        t.other_samples
            .extend(r.other_samples.iter().take(3).cloned());
    }
    t
}

/// The workers' latency histograms merged into one (1 ns to
/// [`LATENCY_MAX_NS`], 3 significant digits, like theirs).
pub fn merge_latency(reports: &[WorkerReport]) -> Result<Histogram<u64>, FoldError> {
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| FoldError::Worker {
            id: 0,
            why: e.to_string(),
        })?;
    for r in reports {
        let h = histogram_from_hex(&r.latency_hist_hex)?;
        hist.add(&h).map_err(|e| FoldError::Worker {
            id: usize::try_from(r.id).unwrap_or(0),
            why: format!("histogram: {e:?}"),
        })?;
    }
    Ok(hist)
}

/// The latency figures of a histogram in ns, as µs (all 0 when empty).
pub fn latency_figures(hist: &Histogram<u64>) -> LatencyFigures {
    let q = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    LatencyFigures {
        count: hist.len(),
        min: hist.min() as f64 / 1e3,
        mean: hist.mean() / 1e3,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p99_9: q(0.999),
        max: hist.max() as f64 / 1e3,
    }
}

/// Deliveries of a worker that arrived within [start, end), prorating the
/// timeline buckets that straddle an edge.
pub fn window_count(timeline: &[u64], r: &WorkerReport, start: u64, end: u64) -> f64 {
    let b = r.timeline_bucket_ns.max(1);
    timeline
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let lo = r
                .timeline_t0_ns
                .saturating_add((i as u64).saturating_mul(b));
            let hi = lo.saturating_add(b);
            let overlap = hi.min(end).saturating_sub(lo.max(start));
            count as f64 * overlap as f64 / b as f64
        })
        .sum()
}

/// Delivery rates from measured publishing's start (`pub_start_ns`) on.
/// `received` is the workers' measured total.
pub fn throughput_figures(
    reports: &[WorkerReport],
    pub_start_ns: u64,
    pub_end_ns: u64,
    received: u64,
) -> ThroughputFigures {
    let pub_s = secs(pub_start_ns, pub_end_ns);
    // Server throughput counts every delivery that arrived in the window,
    // warmup messages included: after a flood's warmup up to --window
    // messages are still on their way (at 50k clients × 256 in flight,
    // as many deliveries as several seconds of publishing), and the
    // server spent its CPU on them inside the window too.
    let in_window: f64 = reports
        .iter()
        .map(|r| {
            window_count(&r.timeline, r, pub_start_ns, pub_end_ns)
                + window_count(&r.warmup_timeline, r, pub_start_ns, pub_end_ns)
        })
        .sum();
    let warmup_late = reports
        .iter()
        .map(|r| window_count(&r.warmup_timeline, r, pub_start_ns, u64::MAX))
        .sum::<f64>()
        .round() as u64;
    let served = received.saturating_add(warmup_late);
    let last_recv = reports.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
    let overall_s = secs(pub_start_ns, last_recv);
    ThroughputFigures {
        publishing_per_s: per_s(in_window, pub_s),
        overall_per_s: per_s(served as f64, overall_s),
        overall_s,
        warmup_late,
    }
}

/// The server's figures (`pids` given). `served` is the deliveries from
/// publish start to the end of the drain, warmup stragglers included.
pub fn server_figures(pids: &[u32], r: &Readings, connected: u64, served: u64) -> ServerFigures {
    let s = &r.server;
    let pub_s = secs(r.pub_start_ns, r.pub_end_ns);
    let cpu_pub = cpu_s(s.start.cpu_ticks, s.end.cpu_ticks, r.ticks_per_s);
    let cpu_del = cpu_s(s.start.cpu_ticks, s.after.cpu_ticks, r.ticks_per_s);
    ServerFigures {
        pids: pids.to_vec(),
        rss_before_bytes: s.before.rss_bytes,
        rss_idle_bytes: s.idle.rss_bytes,
        rss_after_bytes: s.after.rss_bytes,
        idle_rss_per_connection_bytes: (s.idle.rss_bytes as f64 - s.before.rss_bytes as f64)
            / connected.max(1) as f64,
        anon_before_bytes: s.before.anon_bytes,
        anon_idle_bytes: s.idle.anon_bytes,
        idle_anon_per_connection_bytes: s
            .idle
            .anon_bytes
            .zip(s.before.anon_bytes)
            .map(|(idle, before)| (idle as f64 - before as f64) / connected.max(1) as f64),
        cpu_publishing_s: cpu_pub,
        cpu_publishing_percent_of_core: pct(cpu_pub, pub_s),
        cpu_delivery_s: cpu_del,
        cpu_per_delivery_us: (served > 0).then(|| cpu_del * 1e6 / served as f64),
    }
}

/// The connect figures; a note when the generator was saturated.
pub fn connect_figures(
    measure_server: bool,
    r: &Readings,
    notes: &mut Vec<String>,
) -> ConnectFigures {
    let ConnectTotals {
        connected,
        failed,
        seconds: connect_s,
    } = r.connect;
    let tps = r.ticks_per_s;
    let server_cpu =
        measure_server.then(|| cpu_s(r.server.before.cpu_ticks, r.server.connected.cpu_ticks, tps));
    let gen_cpu: f64 = r
        .own_connected
        .iter()
        .map(|(_, _, t)| *t as f64 / tps)
        .sum();
    if gen_cpu >= SATURATION * connect_s && connect_s > 0.0 {
        notes.push(format!(
            "GENERATOR SATURATED while connecting: it used {gen_cpu:.2} s of CPU in {connect_s:.2} s \
             ({:.0}% of one core); the connect rate may be the generator's, see server CPU per connection",
            pct(gen_cpu, connect_s)
        ));
    }
    ConnectFigures {
        connected,
        failed,
        seconds: connect_s,
        per_s: per_s(connected as f64, connect_s),
        server_cpu_s: server_cpu,
        server_percent_of_core: server_cpu.map(|c| pct(c, connect_s)),
        server_cpu_per_connection_us: server_cpu
            .filter(|_| connected > 0)
            .map(|c| c * 1e6 / connected as f64),
        generator_cpu_s: gen_cpu,
        generator_percent_of_core: pct(gen_cpu, connect_s),
    }
}

/// The generator's CPU during measured publishing, per process and in
/// total; a note when it was saturated.
pub fn generator_figures(r: &Readings, notes: &mut Vec<String>) -> GeneratorFigures {
    let pub_s = secs(r.pub_start_ns, r.pub_end_ns);
    let mut processes = Vec::new();
    let mut gen_cpu = 0.0;
    for ((role, pid, a), (_, _, b)) in r.own_start.iter().zip(&r.own_end) {
        let cpu = cpu_s(*a, *b, r.ticks_per_s);
        gen_cpu += cpu;
        processes.push(ProcessCpu {
            role: role.clone(),
            pid: *pid,
            cpu_s: cpu,
            percent_of_core: pct(cpu, pub_s),
        });
    }
    let one_saturated = processes.iter().find(|p| p.cpu_s >= SATURATION * pub_s);
    let saturated = gen_cpu >= SATURATION * pub_s || one_saturated.is_some();
    if saturated {
        notes.push(format!(
            "GENERATOR SATURATED: it used {gen_cpu:.2} s of CPU in {pub_s:.2} s of publishing \
             ({:.0}% of one core{}); the figures may show the generator's limit, not the server's",
            pct(gen_cpu, pub_s),
            one_saturated.map_or_else(String::new, |p| format!(
                ", {} alone {:.0}%",
                p.role, p.percent_of_core
            ))
        ));
    }
    GeneratorFigures {
        cpu_publishing_s: gen_cpu,
        cpu_publishing_percent_of_core: pct(gen_cpu, pub_s),
        cores_allowed: r.cores_allowed,
        saturated,
        processes,
    }
}

/// The notes about the plan and the publishing (after the saturation ones).
pub fn run_notes(plan: &Plan, r: &Readings, d: &DeliveryFigures) -> Vec<String> {
    let mut notes = Vec::new();
    let pub_s = secs(r.pub_start_ns, r.pub_end_ns);
    if let Pace::Flood { window } = plan.pace {
        // Frame = payload + a header of at most 10 bytes (server to client).
        let queued = window.saturating_mul(plan.payload_size as u64 + 10);
        if queued > SERVER_BACKPRESSURE_LIMIT {
            notes.push(format!(
                "--window {window} × {} B frames can queue {queued} B for one slow client,                      over ignis-ws's default --backpressure-limit (1 MiB): such a client is closed",
                plan.payload_size + 10
            ));
        }
    }
    if !r.drained {
        notes.push(format!(
            "drain timed out after {:.1} s with {} deliveries missing",
            plan.drain_timeout.as_secs_f64(),
            d.lost
        ));
    }
    if !r.settled {
        notes.push(format!(
            "some publishes were still unanswered {} s after publishing ended",
            r.settle_timeout.as_secs()
        ));
    }
    if let (Pace::Rate(rate), false) = (plan.pace, plan.connect_only) {
        let achieved = per_s(r.publish.published as f64, pub_s);
        if achieved < 0.95 * rate {
            notes.push(format!(
                "the publisher reached {achieved:.1} msg/s of the {rate} asked: publishes were \
                 answered more slowly than that ({}), so the fan-out ran at the lower rate",
                if matches!(plan.publish, PublishPlan::Http { .. }) {
                    "HTTP: one request at a time, each waiting for its 202"
                } else {
                    "Redis PUBLISH replies"
                }
            ));
        }
    }
    if let Some((0, _)) = r.publish.receivers {
        notes.push("a Redis PUBLISH reached no subscriber (is the server on this Redis?)".into());
    }
    if d.disconnected > 0 {
        notes.push(format!(
            "{} connections ended during the run (see `ended`); their missed messages count as lost",
            d.disconnected
        ));
    }
    notes
}

/// What was asked, as the report states it.
pub fn run_config(p: &Plan) -> RunConfig {
    let (rate, window, burst) = match p.pace {
        Pace::Rate(r) => (Some(r), None, None),
        Pace::Flood { window } => (None, Some(window), None),
        Pace::Burst {
            size,
            every,
            pipeline,
        } => (None, None, Some((size, every, pipeline))),
    };
    RunConfig {
        url: p.url.clone(),
        tls: p.tls.as_ref().map(|t| t.versions_label().to_owned()),
        connections: p.connections,
        workers: p.workers,
        source_ips: p.source_ips.len(),
        auth: format!("{:?}", p.auth).to_lowercase(),
        users: p.users,
        room: p.room.clone(),
        publish: match p.publish {
            PublishPlan::Redis { .. } => "redis".into(),
            PublishPlan::Http { .. } => "http".into(),
        },
        target: if p.broadcast { "broadcast" } else { "room" }.into(),
        mode: if p.connect_only {
            "connect-only"
        } else if rate.is_some() {
            "rate"
        } else if burst.is_some() {
            "burst"
        } else {
            "flood"
        }
        .into(),
        rate_per_s: rate,
        flood_window: window,
        burst_size: burst.map(|b| b.0),
        burst_every_s: burst.and_then(|b| b.1).map(|d| d.as_secs_f64()),
        burst_pipeline: burst.map(|b| b.2),
        duration_s: p.duration.as_secs_f64(),
        warmup_s: p.warmup.as_secs_f64(),
        payload_size_bytes: p.payload_size,
        drain_timeout_s: p.drain_timeout.as_secs_f64(),
        idle_settle_s: p.idle_settle.as_secs_f64(),
        connect_only: p.connect_only,
    }
}

/// What the clients received of the `expected` measured deliveries.
pub fn delivery_figures(reports: &[WorkerReport], expected: u64, r: &Readings) -> DeliveryFigures {
    let t = totals(reports);
    let lost = expected.saturating_sub(t.received);
    DeliveryFigures {
        expected,
        lost,
        loss_percent: if expected > 0 {
            lost as f64 * 100.0 / expected as f64
        } else {
            0.0
        },
        drained: r.drained,
        drain_s: secs(r.pub_end_ns, r.drain_end_ns),
        ..t
    }
}

/// Folds the workers' final reports and the coordinator's readings into the
/// report of a run of `plan`.
pub fn fold(plan: &Plan, r: &Readings, reports: &[WorkerReport]) -> Result<Report, FoldError> {
    let hist = merge_latency(reports)?;
    let connected = r.connect.connected;
    let expected = r.publish.published.saturating_mul(connected);
    let pub_s = secs(r.pub_start_ns, r.pub_end_ns);
    let delivery = delivery_figures(reports, expected, r);
    let throughput = throughput_figures(reports, r.pub_start_ns, r.pub_end_ns, delivery.received);
    let served = delivery.received.saturating_add(throughput.warmup_late);
    let measure_server = !plan.server_pids.is_empty();
    let server = measure_server.then(|| server_figures(&plan.server_pids, r, connected, served));
    let mut notes = Vec::new();
    let connect = connect_figures(measure_server, r, &mut notes);
    let generator = generator_figures(r, &mut notes);
    let shape = shape_figures(plan, r, served, &mut notes);
    notes.extend(run_notes(plan, r, &delivery));
    let p = &r.publish;
    Ok(Report {
        config: run_config(plan),
        connect,
        publish: PublishFigures {
            published: p.published,
            failed: p.failed,
            warmup_published: p.warmup_published,
            seconds: pub_s,
            per_s: per_s(p.published as f64, pub_s),
            redis_receivers_min: p.receivers.map(|r| r.0),
            redis_receivers_max: p.receivers.map(|r| r.1),
            first_error: p.first_error.clone(),
        },
        delivery,
        latency_us: latency_figures(&hist),
        throughput,
        server,
        generator,
        shape,
        notes,
    })
}

/// `a` / `b`, None over nothing.
fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The shape of the writes over `served` deliveries; a note for every
/// source that was asked for and failed.
pub fn shape_figures(
    plan: &Plan,
    r: &Readings,
    served: u64,
    notes: &mut Vec<String>,
) -> ShapeFigures {
    let mut f = ShapeFigures {
        deliveries: served,
        ..ShapeFigures::default()
    };
    if let (Some(a), Some(b)) = (r.shape_start.segments, r.shape_after.segments) {
        let out = b.out_segs.saturating_sub(a.out_segs);
        f.tcp_out_segments = Some(out);
        f.tcp_in_segments = Some(b.in_segs.saturating_sub(a.in_segs));
        f.tcp_out_segments_per_delivery = ratio(out, served);
    }
    match (&r.shape_start.metrics, &r.shape_after.metrics) {
        (Some(Ok(a)), Some(Ok(b))) => {
            let writes = b.write_calls.saturating_sub(a.write_calls);
            let frames = b.messages_out.saturating_sub(a.messages_out);
            let bytes = b.bytes_written.saturating_sub(a.bytes_written);
            f.server_write_calls = Some(writes);
            f.server_frames_out = Some(frames);
            f.server_bytes_written = Some(bytes);
            f.writes_per_delivery = ratio(writes, served);
            f.frames_per_write = ratio(frames, writes);
            f.bytes_per_write = ratio(bytes, writes);
        }
        (Some(Err(e)), _) | (_, Some(Err(e))) => {
            notes.push(format!(
                "--metrics-url: {e}; no write shape from the server"
            ));
        }
        _ => {}
    }
    match &r.write_syscalls {
        Some(Ok(n)) => {
            f.write_syscalls = Some(*n);
            f.write_syscalls_per_delivery = ratio(*n, served);
            // A server frame is the payload and a 2-, 4- or 10-byte header.
            let size = plan.payload_size as u64;
            let header = match size {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            f.delivered_bytes_per_syscall = ratio(served.saturating_mul(size + header), *n);
        }
        Some(Err(e)) => notes.push(format!("--count-syscalls: {e}")),
        None => {}
    }
    let gen_cpu: f64 = r
        .own_start
        .iter()
        .zip(&r.own_after)
        .map(|((_, _, a), (_, _, b))| cpu_s(*a, *b, r.ticks_per_s))
        .sum();
    f.generator_cpu_s = gen_cpu;
    f.generator_cpu_per_delivery_us = (served > 0).then(|| gen_cpu * 1e6 / served as f64);
    f
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hdrhistogram::Histogram;

    use super::*;
    use crate::bench::wire::histogram_to_hex;

    const S: u64 = 1_000_000_000;

    /// A checked plan of 4 connections at 10 msg/s for 2 s, and `extra`.
    fn plan(extra: &[&str]) -> Plan {
        let mut v = vec![
            "--url",
            "ws://127.0.0.1:9/ws",
            "-c",
            "4",
            "--workers",
            "2",
            "--publish",
            "http",
            "--api-key",
            "k",
            "--duration",
            "2",
            "--quiet",
        ];
        v.extend_from_slice(extra);
        crate::bench::tests::args(&v).plan().unwrap()
    }

    fn hist(latencies_ns: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).unwrap();
        for v in latencies_ns {
            h.record(v).unwrap();
        }
        h
    }

    /// Worker `id`'s report: `latencies_ns` are its measured deliveries.
    fn worker(id: u64, latencies_ns: &[u64]) -> WorkerReport {
        WorkerReport {
            id,
            received: latencies_ns.len() as u64,
            latency_hist_hex: histogram_to_hex(&hist(latencies_ns.iter().copied())).unwrap(),
            ..WorkerReport::default()
        }
    }

    fn own(ticks: u64) -> Vec<OwnCpu> {
        vec![
            ("coordinator".into(), 1, ticks),
            ("worker 0".into(), 2, ticks),
        ]
    }

    fn sample(cpu_ticks: u64, rss_bytes: u64) -> ProcSample {
        ProcSample {
            cpu_ticks,
            rss_bytes,
            // A tenth of it is the binary's pages.
            anon_bytes: Some(rss_bytes / 10 * 9),
        }
    }

    /// A clean run of 4 connections: publishing from 10 s to 12 s, 20
    /// messages, drained at 12.5 s, 100 ticks a second, the generator at
    /// 10% of a core.
    fn readings() -> Readings {
        Readings {
            connect: ConnectTotals {
                connected: 4,
                failed: 0,
                seconds: 0.5,
            },
            server: ServerSamples {
                before: sample(0, 1_000_000),
                connected: sample(10, 1_400_000),
                idle: sample(10, 1_400_000),
                start: sample(100, 1_500_000),
                end: sample(200, 1_500_000),
                after: sample(240, 1_600_000),
            },
            own_connected: own(1),
            own_start: own(10),
            own_end: own(20),
            own_after: own(25),
            shape_start: ShapeSample::default(),
            shape_after: ShapeSample::default(),
            write_syscalls: None,
            pub_start_ns: 10 * S,
            pub_end_ns: 12 * S,
            drain_end_ns: 12 * S + S / 2,
            drained: true,
            settled: true,
            settle_timeout: Duration::from_secs(10),
            publish: PublishCounts {
                published: 20,
                ..PublishCounts::default()
            },
            ticks_per_s: 100.0,
            cores_allowed: 2,
        }
    }

    fn ready(connected: u64, failed: u64, first: u64, last: u64) -> Ready {
        Ready {
            connected,
            failed,
            first_connect_ns: first,
            last_connected_ns: last,
            failures: BTreeMap::new(),
        }
    }

    #[test]
    fn shares_and_rates_over_no_time_are_zero() {
        assert_eq!(pct(0.5, 2.0), 25.0);
        assert_eq!(per_s(30.0, 2.0), 15.0);
        assert_eq!(pct(1.0, 0.0), 0.0);
        assert_eq!(per_s(1.0, 0.0), 0.0);
        assert_eq!(secs(5 * S, 2 * S), 0.0);
    }

    #[test]
    fn connect_totals_add_up_from_the_first_attempt_to_the_last_reply() {
        // Worker 1 never started an attempt (0): it does not move the start.
        let r = [ready(3, 1, 2 * S, 3 * S), ready(0, 2, 0, 4 * S + S / 2)];
        let t = connect_totals(&r);
        assert_eq!((t.connected, t.failed), (3, 3));
        assert_eq!(t.seconds, 2.5);
        assert_eq!(connect_totals(&[]), ConnectTotals::default());
        let huge = [ready(u64::MAX, 0, 1, 0), ready(5, 0, 1, 0)];
        assert_eq!(connect_totals(&huge).connected, u64::MAX, "saturates");
        assert_eq!(connect_totals(&huge).seconds, 0.0, "never negative");
    }

    #[test]
    fn failure_summary_merges_workers_and_keeps_the_commonest_four() {
        let mut a = ready(0, 9, 1, 1);
        let mut b = ready(0, 9, 1, 1);
        for (k, n) in [("refused", 3), ("timeout", 1), ("auth", 2)] {
            a.failures.insert(k.into(), n);
        }
        for (k, n) in [("refused", 1), ("reset", 2), ("dns", 1)] {
            b.failures.insert(k.into(), n);
        }
        // Ties keep the kinds' order: auth before reset, dns before timeout.
        assert_eq!(
            failure_summary(&[a, b]),
            "4× refused; 2× auth; 2× reset; 1× dns"
        );
        assert_eq!(failure_summary(&[]), "");
    }

    #[test]
    fn counters_sum_and_ends_merge_by_kind() {
        let mut a = worker(0, &[1_000]);
        a.duplicates = 2;
        a.gaps = u64::MAX;
        a.disconnected = 1;
        a.close_codes.insert(1001, 1);
        a.errors.insert("read: reset".into(), 2);
        a.other_samples = vec!["a1".into(), "a2".into(), "a3".into(), "a4".into()];
        let mut b = worker(1, &[2_000, 3_000]);
        b.duplicates = 3;
        b.gaps = 1;
        b.reordered = 4;
        b.warmup_received = 7;
        b.other_messages = 5;
        b.close_codes.insert(1001, 2);
        b.close_codes.insert(1008, 1);
        b.errors.insert("read: reset".into(), 1);
        b.other_samples = vec!["b1".into()];
        let t = totals(&[a, b]);
        assert_eq!(t.received, 3);
        assert_eq!((t.duplicates, t.reordered, t.gaps), (5, 4, u64::MAX));
        assert_eq!((t.warmup_received, t.other_messages), (7, 5));
        assert_eq!(t.disconnected, 1);
        let codes: Vec<_> = t.close_codes.into_iter().collect();
        assert_eq!(codes, [("1001".into(), 3), ("1008".into(), 1)]);
        assert_eq!(t.errors["read: reset"], 3);
        assert_eq!(t.other_samples, ["a1", "a2", "a3", "b1"]);
    }

    #[test]
    fn histograms_merge_to_the_percentiles_of_all_deliveries() {
        // Worker 0: 1..=50 µs, worker 1: 51..=100 µs.
        let a: Vec<u64> = (1..=50).map(|v| v * 1_000).collect();
        let b: Vec<u64> = (51..=100).map(|v| v * 1_000).collect();
        let merged = merge_latency(&[worker(0, &a), worker(1, &b)]).unwrap();
        let l = latency_figures(&merged);
        let all = latency_figures(&hist(a.iter().chain(&b).copied()));
        assert_eq!(format!("{l:?}"), format!("{all:?}"));
        assert_eq!(l.count, 100);
        let near = |got: f64, want: f64| (got - want).abs() <= want * 1e-3;
        assert!(near(l.min, 1.0), "{l:?}");
        assert!(near(l.p50, 50.0), "{l:?}");
        assert!(near(l.p90, 90.0), "{l:?}");
        assert!(near(l.p99, 99.0), "{l:?}");
        assert!(near(l.max, 100.0), "{l:?}");
        assert!(near(l.mean, 50.5), "{l:?}");
    }

    #[test]
    fn a_malformed_histogram_is_an_error_not_a_panic() {
        let mut bad = worker(1, &[]);
        bad.latency_hist_hex = "zz".into();
        let e = merge_latency(&[worker(0, &[1]), bad]).unwrap_err();
        assert!(matches!(e, FoldError::Wire(WireError::Hex)), "{e}");
        // A histogram wider than the fold's range does not fit.
        let mut wide = Histogram::<u64>::new_with_bounds(1, u64::MAX / 4, 3).unwrap();
        wide.record(LATENCY_MAX_NS * 4).unwrap();
        let mut big = worker(7, &[]);
        big.latency_hist_hex = histogram_to_hex(&wide).unwrap();
        match merge_latency(&[big]).unwrap_err() {
            FoldError::Worker { id, why } => {
                assert_eq!(id, 7);
                assert!(why.starts_with("histogram:"), "{why}");
            }
            e => panic!("expected a worker error, got {e}"),
        }
    }

    #[test]
    fn a_worker_without_a_report_fails_the_fold() {
        let ok = Some(worker(0, &[]));
        let got = final_reports([(ok.clone(), None), (ok.clone(), Some("x".into()))]).unwrap();
        assert_eq!(got.len(), 2, "a report wins over a late complaint");
        let e = final_reports([
            (ok.clone(), None),
            (None, Some("exited".into())),
            (None, None),
        ])
        .unwrap_err();
        assert_eq!(e.to_string(), "worker 1: exited");
        let e = final_reports([(ok, None), (None, None)]).unwrap_err();
        assert_eq!(e.to_string(), "worker 1: sent no report");
    }

    #[test]
    fn window_prorates_edge_buckets() {
        let r = WorkerReport {
            timeline_t0_ns: 1_000,
            timeline_bucket_ns: 100,
            timeline: vec![10, 10, 10, 10],
            ..WorkerReport::default()
        };
        // [1050, 1250): half of bucket 0, all of 1, half of 2.
        let t = &r.timeline;
        assert!((window_count(t, &r, 1_050, 1_250) - 20.0).abs() < 1e-9);
        assert!((window_count(t, &r, 0, u64::MAX) - 40.0).abs() < 1e-9);
        assert_eq!(window_count(t, &r, 2_000, 3_000), 0.0);
        // A nonsense timeline from a worker neither panics nor overflows.
        let odd = WorkerReport {
            timeline_t0_ns: u64::MAX - 5,
            timeline_bucket_ns: 0,
            timeline: vec![1, 2, 3],
            ..WorkerReport::default()
        };
        assert!(window_count(&odd.timeline, &odd, 0, u64::MAX).is_finite());
    }

    #[test]
    fn rates_divide_by_the_measured_times() {
        // Two workers, one-second buckets from publish start: 40 deliveries
        // in each of the 2 s of publishing, the last one 4 s after start.
        let mut a = worker(0, &[1_000; 40]);
        let mut b = worker(1, &[2_000; 40]);
        for (w, tl) in [(&mut a, vec![30, 10]), (&mut b, vec![10, 30])] {
            w.timeline_t0_ns = 10 * S;
            w.timeline_bucket_ns = S;
            w.timeline = tl;
        }
        b.last_recv_ns = 14 * S;
        let mut p = plan(&["--rate", "10"]);
        p.server_pids = vec![42];
        let r = fold(&p, &readings(), &[a, b]).unwrap();
        assert_eq!(r.publish.seconds, 2.0);
        assert_eq!(r.publish.per_s, 10.0);
        assert_eq!((r.delivery.expected, r.delivery.received), (80, 80));
        assert_eq!((r.delivery.lost, r.delivery.loss_percent), (0, 0.0));
        assert_eq!(r.delivery.drain_s, 0.5);
        assert_eq!(r.throughput.publishing_per_s, 40.0);
        assert_eq!(
            (r.throughput.overall_s, r.throughput.overall_per_s),
            (4.0, 20.0)
        );
        assert_eq!(r.connect.per_s, 8.0);
        assert_eq!(r.connect.server_cpu_s, Some(0.1));
        assert_eq!(r.connect.server_cpu_per_connection_us, Some(25_000.0));
        let s = r.server.unwrap();
        assert_eq!(
            (s.cpu_publishing_s, s.cpu_publishing_percent_of_core),
            (1.0, 50.0)
        );
        assert_eq!(s.cpu_delivery_s, 1.4);
        assert_eq!(s.cpu_per_delivery_us, Some(1.4e6 / 80.0));
        assert_eq!(s.idle_rss_per_connection_bytes, 100_000.0);
        assert_eq!(s.idle_anon_per_connection_bytes, Some(90_000.0));
        let g = &r.generator;
        assert_eq!(
            (g.cpu_publishing_s, g.cpu_publishing_percent_of_core),
            (0.2, 10.0)
        );
        assert_eq!(g.processes.len(), 2);
        assert!(!g.saturated);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert_eq!(r.latency_us.count, 80);
        assert_eq!(r.config.mode, "rate");
        assert_eq!(r.config.rate_per_s, Some(10.0));
    }

    /// Deliveries of warmup messages that arrive after publishing began
    /// count in the server's throughput and its CPU per delivery.
    #[test]
    fn warmup_stragglers_count_as_served() {
        let mut a = worker(0, &[1_000; 20]);
        a.timeline_t0_ns = 9 * S;
        a.timeline_bucket_ns = S;
        a.timeline = vec![0, 10, 10];
        // 6 warmup deliveries before publish start, 4 after.
        a.warmup_timeline = vec![6, 4];
        a.last_recv_ns = 12 * S;
        let mut p = plan(&["--rate", "10"]);
        p.server_pids = vec![42];
        let mut rd = readings();
        rd.connect.connected = 1;
        let r = fold(&p, &rd, &[a]).unwrap();
        assert_eq!(r.throughput.warmup_late, 4);
        assert_eq!(r.throughput.publishing_per_s, 12.0);
        assert_eq!(r.throughput.overall_per_s, 12.0);
        assert_eq!(r.server.unwrap().cpu_per_delivery_us, Some(1.4e6 / 24.0));
    }

    /// Nothing delivered and no time measured: every figure is a number
    /// (0), a cost per nothing is `None`, and nothing is NaN.
    #[test]
    fn zero_deliveries_and_zero_time_give_zeros_not_nan() {
        let mut p = plan(&["--connect-only"]);
        p.server_pids = vec![42];
        let mut rd = readings();
        rd.connect = ConnectTotals::default();
        rd.pub_end_ns = rd.pub_start_ns;
        rd.drain_end_ns = rd.pub_start_ns;
        rd.publish.published = 0;
        let r = fold(&p, &rd, &[worker(0, &[]), worker(1, &[])]).unwrap();
        let f = [
            r.connect.per_s,
            r.connect.generator_percent_of_core,
            r.connect.server_percent_of_core.unwrap(),
            r.publish.per_s,
            r.delivery.loss_percent,
            r.latency_us.min,
            r.latency_us.mean,
            r.latency_us.p50,
            r.latency_us.p99_9,
            r.latency_us.max,
            r.throughput.publishing_per_s,
            r.throughput.overall_per_s,
            r.generator.cpu_publishing_percent_of_core,
            r.server.as_ref().unwrap().cpu_publishing_percent_of_core,
            r.server.as_ref().unwrap().idle_rss_per_connection_bytes,
        ];
        assert!(f.iter().all(|v| v.is_finite()), "{f:?}");
        assert_eq!(r.latency_us.count, 0);
        assert_eq!(r.connect.server_cpu_per_connection_us, None);
        assert_eq!(r.server.as_ref().unwrap().cpu_per_delivery_us, None);
        assert_eq!((r.delivery.expected, r.delivery.lost), (0, 0));
        assert_eq!(r.config.mode, "connect-only");
        // No NaN turned into a JSON null either.
        let v = serde_json::to_value(&r).unwrap();
        for section in ["connect", "publish", "delivery", "latency_us", "throughput"] {
            for (k, x) in v[section].as_object().unwrap() {
                let optional = k.starts_with("server_") || k.starts_with("redis_");
                assert!(
                    optional || k == "first_error" || !x.is_null(),
                    "{section}.{k}"
                );
            }
        }
    }

    #[test]
    fn notes_say_what_went_wrong_in_order() {
        let mut p = plan(&["--rate", "100"]);
        p.server_pids = vec![];
        let mut rd = readings();
        rd.own_connected = own(30); // 0.6 s in 0.5 s of connecting
        rd.own_end = own(200); // 1.9 s each in 2 s of publishing
        rd.drained = false;
        rd.settled = false;
        rd.publish.receivers = Some((0, 1));
        let mut a = worker(0, &[1_000; 30]);
        a.disconnected = 2;
        let r = fold(&p, &rd, &[a]).unwrap();
        let starts: Vec<&str> = r.notes.iter().map(|n| &n[..12]).collect();
        assert_eq!(
            starts,
            [
                "GENERATOR SA",
                "GENERATOR SA",
                "drain timed ",
                "some publish",
                "the publishe",
                "a Redis PUBL",
                "2 connection"
            ],
            "{:#?}",
            r.notes
        );
        assert!(r.notes[0].contains("while connecting"), "{}", r.notes[0]);
        assert!(
            r.notes[1].contains("coordinator alone 95%"),
            "{}",
            r.notes[1]
        );
        assert!(
            r.notes[2].contains("with 50 deliveries missing"),
            "{}",
            r.notes[2]
        );
        assert!(r.notes[4].contains("reached 10.0 msg/s of the 100 asked"));
        assert!(r.generator.saturated);
        assert!(r.server.is_none());
        assert_eq!(r.connect.server_cpu_s, None);
        // A flood window that can overflow ignis-ws's backpressure limit.
        let p = plan(&["--flood", "--window", "2048", "--payload-size", "1KiB"]);
        let r = fold(&p, &readings(), &[]).unwrap();
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        assert!(r.notes[0].starts_with("--window 2048 × 1034 B frames"));
        assert_eq!(r.config.flood_window, Some(2048));
        assert_eq!(r.config.mode, "flood");
    }

    #[test]
    fn shape_of_the_writes() {
        use crate::bench::shape::{Segments, WriteCounters};
        let seg = |out, inn| {
            Some(Segments {
                out_segs: out,
                in_segs: inn,
            })
        };
        let counters = |w, b, m| {
            Some(Ok(WriteCounters {
                write_calls: w,
                bytes_written: b,
                messages_out: m,
            }))
        };
        let mut rd = readings();
        rd.shape_start = ShapeSample {
            segments: seg(1000, 500),
            metrics: counters(100, 10_000, 200),
        };
        rd.shape_after = ShapeSample {
            segments: seg(1040, 520),
            metrics: counters(120, 30_000, 280),
        };
        rd.write_syscalls = Some(Ok(40));
        // 20 messages × 4 clients = 80 deliveries of 100-byte payloads.
        let worker = WorkerReport {
            received: 80,
            latency_hist_hex: histogram_to_hex(&hist([1000])).unwrap(),
            ..WorkerReport::default()
        };
        let p = plan(&["--burst", "20"]);
        let r = fold(&p, &rd, &[worker]).unwrap();
        let s = &r.shape;
        assert_eq!(s.deliveries, 80);
        assert_eq!(s.tcp_out_segments, Some(40));
        assert_eq!(s.tcp_in_segments, Some(20));
        assert_eq!(s.tcp_out_segments_per_delivery, Some(0.5));
        assert_eq!(s.server_write_calls, Some(20));
        assert_eq!(s.frames_per_write, Some(4.0));
        assert_eq!(s.bytes_per_write, Some(1000.0));
        assert_eq!(s.writes_per_delivery, Some(0.25));
        assert_eq!(s.write_syscalls_per_delivery, Some(0.5));
        assert_eq!(s.delivered_bytes_per_syscall, Some(80.0 * 102.0 / 40.0));
        // own(10) → own(25) in each of two processes at 100 ticks/s.
        assert!((s.generator_cpu_s - 0.3).abs() < 1e-9);
        assert_eq!(s.generator_cpu_per_delivery_us, Some(0.3e6 / 80.0));
        assert_eq!(r.config.mode, "burst");
        assert_eq!(r.config.burst_size, Some(20));
        assert_eq!(r.config.burst_every_s, None);
        assert_eq!(r.config.burst_pipeline, Some(64));
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        // Failed sources say why and leave their figures null.
        rd.shape_after.metrics = Some(Err("connect 127.0.0.1:9: refused".into()));
        rd.write_syscalls = Some(Err("cannot run perf: not found".into()));
        let r = fold(&p, &rd, &[]).unwrap();
        assert_eq!(r.shape.frames_per_write, None);
        assert_eq!(r.shape.write_syscalls, None);
        assert_eq!(r.shape.generator_cpu_per_delivery_us, None);
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("--metrics-url: connect"))
        );
        assert!(
            r.notes
                .iter()
                .any(|n| n.starts_with("--count-syscalls: cannot run perf"))
        );
    }
}
