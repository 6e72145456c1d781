//! Owns a run from start to report: launches the workers (processes of
//! this same binary, or threads in the in-process test), drives the phases
//! (connect → probe → warmup → measured publishing → drain → finish), paces
//! the publisher (rate, or the flood window), samples /proc, and folds the
//! workers' reports into one [`Report`].
//!
//! ## Phases
//!
//! 1. **Connect.** Each worker opens its share of connections and reports
//!    `ready`. Any failed connection fails the setup (exit 1) with the
//!    failures counted by kind.
//! 2. **Probe.** `join` has no reply, so a probe message (phase `p`) is
//!    published every 200 ms until every client has received one: proof
//!    that each client is in the room and that the publish path reaches the
//!    server, before anything is measured.
//! 3. **Warmup** (`--warmup`), then **measured** publishing (`--duration`),
//!    at `--rate` or flood.
//! 4. **Drain.** Until every expected delivery arrived or `--drain-timeout`.
//! 5. **Finish.** Workers send their counters, histogram and timeline.
//!
//! ## Flood
//!
//! `--flood` keeps at most W (`--window`) messages in flight. A message is
//! in flight from its publish until every live client has received it or a
//! later one (each worker tracks this "frontier" per sequence number and
//! reports every advance; the coordinator takes the minimum over workers).
//! So the server always has W messages queued somewhere between the
//! publisher and the slowest client — enough to stay busy, bounded so the
//! queues (and `--backpressure-limit`) do not overflow — and the publish rate
//! becomes whatever the server and clients sustain. Counting "or a later
//! one" keeps a lost message from stalling the window forever.
//!
//! The window is what the flood figures depend on, so the report states it.
//! More in flight lets the server write several frames per `sendmsg` and
//! the clients read several per `recv`, so throughput rises with W until
//! the server's core is the limit, and latency rises with it (it is mostly
//! queueing in a flood). The default, 256, is where throughput stopped
//! rising on the 2-core development machine with 10,000 clients and 100-byte
//! messages (W = 32: 4.4 M deliveries/s, 128: 6.8 M, 256 and 512: 8.2 M,
//! one ignis-ws shard); with 1 KiB frames it queues at most ~260 KiB per
//! client, under ignis-ws's 1 MiB backpressure limit.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::args::{
    ArgError, AuthArg, JWT_SECRET_ENV, Pace, Plan, PublishPlan, SERVER_BACKPRESSURE_LIMIT,
};
use super::conn::{Auth, Setup};
use super::payload::{Phase, now_ns};
use super::progress::Bars;
use super::publish::{PublishError, Publisher};
use super::report::{
    ConnectFigures, DeliveryFigures, GeneratorFigures, LatencyFigures, ProcessCpu, PublishFigures,
    Report, RunConfig, ServerFigures, ThroughputFigures,
};
use super::sysstat::{self, ProcSample, SysError};
use super::wire::{Command, Event, Progress, Ready, WireError, WorkerReport, histogram_from_hex};
use super::worker::{self, LATENCY_MAX_NS, WorkerConfig};

/// How long every client may take to see a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long workers may take to send their final reports.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long outstanding publishes may take to be answered.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest batch handed to the publisher at once in flood mode.
const FLOOD_BATCH: u64 = 256;
/// Generator CPU at or above this share of one core's wall time means the
/// generator, not the server, may have been the bottleneck.
const SATURATION: f64 = 0.9;

/// Where workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// `current_exe() bench-worker …`, JSON lines over pipes.
    Processes,
    /// Threads of this process (tests).
    InProcess,
}

/// Why a run did not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Args(#[from] ArgError),
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("cannot start worker {id}: {source}")]
    Spawn {
        id: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("worker {id}: {why}")]
    Worker { id: usize, why: String },
    #[error("{failed} of {total} connections failed: {summary}")]
    Connect {
        failed: u64,
        total: u64,
        summary: String,
    },
    #[error(
        "{missing} of {total} clients never received a probe message within {secs} s: \
         they are not in the room (does the server allow joining it?) or the publish path \
         does not reach their server{detail}"
    )]
    Probe {
        missing: u64,
        total: u64,
        secs: u64,
        detail: String,
    },
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl BenchError {
    /// 2 for bad arguments, 1 for a setup that failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::Args(_) => 2,
            _ => 1,
        }
    }
}

/// Runs `plan` to its report on a fresh current-thread runtime.
pub fn execute(plan: Plan, launch: Launch) -> Result<Report, BenchError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::Runtime)?;
    rt.block_on(run(plan, launch))
}

enum Incoming {
    Event(Event),
    /// The worker's event stream ended.
    Gone(String),
}

struct Worker {
    pid: Option<u32>,
    tx: mpsc::UnboundedSender<Command>,
    progress: Progress,
    frontier: u64,
    live: u64,
    ready: Option<Ready>,
    report: Option<WorkerReport>,
    gone: Option<String>,
    child: Option<tokio::process::Child>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Coordinator {
    plan: Plan,
    bars: Bars,
    rx: mpsc::UnboundedReceiver<(usize, Incoming)>,
    workers: Vec<Worker>,
    publisher: Publisher,
    /// The next sequence number to publish.
    next_seq: u64,
    /// Phase shown on the publishing bar.
    bar_phase: Option<(Instant, Duration)>,
}

async fn run(plan: Plan, launch: Launch) -> Result<Report, BenchError> {
    // Fail on a wrong Redis URL or API endpoint before opening thousands of
    // connections.
    let publisher = Publisher::connect(&plan).await?;
    let before = sysstat::sample_all(&plan.server_pids)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut c = Coordinator {
        bars: Bars::new(plan.quiet),
        rx,
        workers: Vec::new(),
        publisher,
        next_seq: 1,
        bar_phase: None,
        plan,
    };
    let result = match c.launch(launch, &tx) {
        Ok(()) => c.drive(before).await,
        Err(e) => Err(e),
    };
    drop(tx);
    c.shutdown().await;
    result
}

impl Coordinator {
    fn worker_configs(&self) -> Vec<WorkerConfig> {
        let p = &self.plan;
        let auth = match (p.auth, &p.jwt_secret) {
            (AuthArg::Jwt, Some(s)) => Auth::Jwt {
                secret: s.as_bytes().to_vec(),
            },
            _ => Auth::Insecure,
        };
        let setup = Setup {
            server: p.target.addr,
            host: p.target.host.clone(),
            path: p.target.path.clone(),
            auth,
            room: p.room.clone(),
        };
        let k = p.workers.max(1);
        let mut first = 0;
        (0..k)
            .map(|i| {
                // Spread evenly: the first N mod K workers take one more.
                let n = p.connections / k + u64::from(i < p.connections % k);
                let cfg = WorkerConfig {
                    id: i,
                    setup: setup.clone(),
                    connections: n,
                    first_index: first,
                    source_ips: p.source_ips.clone(),
                    connect_concurrency: usize::try_from(p.connect_concurrency).unwrap_or(512),
                    connect_timeout: p.connect_timeout,
                    users: p.users,
                    flood: matches!(p.pace, Pace::Flood { .. }),
                };
                first += n;
                cfg
            })
            .collect()
    }

    fn launch(
        &mut self,
        launch: Launch,
        tx: &mpsc::UnboundedSender<(usize, Incoming)>,
    ) -> Result<(), BenchError> {
        for (id, cfg) in self.worker_configs().into_iter().enumerate() {
            let w = match launch {
                Launch::Processes => spawn_process(id, &cfg, self.plan.jwt_secret.as_deref(), tx)?,
                Launch::InProcess => spawn_thread(id, cfg, tx)?,
            };
            self.workers.push(w);
        }
        Ok(())
    }

    fn on_incoming(&mut self, id: usize, inc: Incoming) {
        let Some(w) = self.workers.get_mut(id) else {
            return;
        };
        match inc {
            Incoming::Event(Event::Progress(p)) => {
                w.live = p.live;
                w.frontier = w.frontier.max(p.frontier);
                w.progress = p;
            }
            Incoming::Event(Event::Ready(r)) => w.ready = Some(r),
            Incoming::Event(Event::Frontier { seq, live }) => {
                w.frontier = w.frontier.max(seq);
                w.live = live;
            }
            Incoming::Event(Event::Final(r)) => w.report = Some(*r),
            Incoming::Event(Event::Fatal { error }) => w.gone = Some(error),
            Incoming::Gone(why) => {
                if w.report.is_none() && w.gone.is_none() {
                    w.gone = Some(why);
                }
            }
        }
    }

    /// Handles events until `deadline`.
    async fn pump_until(&mut self, deadline: Instant) {
        loop {
            tokio::select! {
                biased;
                m = self.rx.recv() => match m {
                    Some((id, inc)) => self.on_incoming(id, inc),
                    None => { tokio::time::sleep_until(deadline).await; return; }
                },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Handles at least one event, or returns at `deadline`.
    async fn pump_once(&mut self, deadline: Instant) {
        tokio::select! {
            biased;
            m = self.rx.recv() => if let Some((id, inc)) = m { self.on_incoming(id, inc) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
        // Take everything already queued, so decisions use fresh figures.
        while let Ok((id, inc)) = self.rx.try_recv() {
            self.on_incoming(id, inc);
        }
    }

    fn gone(&self) -> Option<BenchError> {
        self.workers.iter().enumerate().find_map(|(id, w)| {
            w.gone.as_ref().map(|why| BenchError::Worker {
                id,
                why: why.clone(),
            })
        })
    }

    fn sum(&self, f: impl Fn(&Worker) -> u64) -> u64 {
        self.workers.iter().map(f).sum()
    }

    /// Every live client has passed every sequence number ≤ this.
    fn frontier(&self) -> u64 {
        self.workers
            .iter()
            .filter(|w| w.live > 0)
            .map(|w| w.frontier)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn in_flight(&self) -> u64 {
        (self.next_seq - 1).saturating_sub(self.frontier())
    }

    fn own_pids(&self) -> Vec<(String, u32)> {
        let mut v = vec![("coordinator".to_owned(), std::process::id())];
        for (i, w) in self.workers.iter().enumerate() {
            if let Some(pid) = w.pid {
                v.push((format!("worker {i}"), pid));
            }
        }
        v
    }

    fn own_cpu(&self) -> Vec<(String, u32, u64)> {
        self.own_pids()
            .into_iter()
            .map(|(role, pid)| {
                let ticks = sysstat::sample(pid).map(|s| s.cpu_ticks).unwrap_or(0);
                (role, pid, ticks)
            })
            .collect()
    }

    async fn drive(&mut self, before: ProcSample) -> Result<Report, BenchError> {
        let pids = self.plan.server_pids.clone();
        let n = self.plan.connections;

        // 1. Connect.
        self.bars.start("connect", n);
        while self.workers.iter().any(|w| w.ready.is_none()) {
            if let Some(e) = self.gone() {
                return Err(e);
            }
            let tick = Instant::now() + Duration::from_millis(100);
            self.pump_until(tick).await;
            let (ok, failed) = (
                self.sum(|w| w.progress.connected),
                self.sum(|w| w.progress.failed),
            );
            self.bars.set(ok + failed, format!("{failed} failed"));
        }
        self.bars.finish();
        let readies: Vec<Ready> = self
            .workers
            .iter()
            .filter_map(|w| w.ready.clone())
            .collect();
        let connected: u64 = readies.iter().map(|r| r.connected).sum();
        let failed: u64 = readies.iter().map(|r| r.failed).sum();
        if failed > 0 {
            let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
            for r in &readies {
                for (k, v) in &r.failures {
                    *kinds.entry(k.clone()).or_default() += v;
                }
            }
            let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
            kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
            let summary = kinds
                .iter()
                .take(4)
                .map(|(k, v)| format!("{v}× {k}"))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(BenchError::Connect {
                failed,
                total: n,
                summary,
            });
        }
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
        let connect_s = last_connected.saturating_sub(first_connect) as f64 / 1e9;
        // Who paid for the connects: the server's CPU since before the
        // workers started (it was idle until then) and the generator's own
        // (its workers are new processes, so all of theirs so far).
        let srv_connected = sysstat::sample_all(&pids)?;
        let own_connected = self.own_cpu();

        // 2. Probe (nothing is published with --connect-only).
        let connect_only = self.plan.connect_only;
        if !connect_only {
            self.probe(connected).await?;
        }
        if !pids.is_empty() && !self.plan.idle_settle.is_zero() {
            self.bars.start("idle", 0);
            self.pump_until(Instant::now() + self.plan.idle_settle)
                .await;
            self.bars.finish();
        }
        let idle = sysstat::sample_all(&pids)?;

        // 3. Warmup and measured publishing.
        let t0 = now_ns();
        for w in &self.workers {
            let _ = w.tx.send(Command::Start { t0_ns: t0 });
        }
        if !self.plan.warmup.is_zero() && !connect_only {
            self.publish_phase(Phase::Warmup, self.plan.warmup, 0).await;
        }
        let first_measured = self.next_seq;
        let own_start = self.own_cpu();
        let srv_start = sysstat::sample_all(&pids)?;
        let pub_start = now_ns();
        if !connect_only {
            self.publish_phase(Phase::Measured, self.plan.duration, first_measured)
                .await;
        }
        let pub_end = now_ns();
        let own_end = self.own_cpu();
        let srv_end = sysstat::sample_all(&pids)?;

        // 4. Drain.
        self.bars.spin("drain");
        let settled = self.publisher.settle(SETTLE_TIMEOUT).await;
        let stats = std::sync::Arc::clone(self.publisher.stats());
        let drain_deadline = Instant::now() + self.plan.drain_timeout;
        let drained = loop {
            // Re-read: a publish answered late still counts as published.
            let expected = stats.ok(Phase::Measured) * connected;
            let received = self.sum(|w| w.progress.received);
            self.bars
                .message(format!("received {received} of {expected}"));
            if received >= expected && stats.in_flight() == 0 {
                break true;
            }
            if Instant::now() >= drain_deadline || self.sum(|w| w.live) == 0 {
                break false;
            }
            let tick = (Instant::now() + Duration::from_millis(20)).min(drain_deadline);
            self.pump_until(tick).await;
        };
        let published = stats.ok(Phase::Measured);
        let expected = published * connected;
        let drain_end = now_ns();
        let srv_after = sysstat::sample_all(&pids)?;
        self.bars.finish();

        // 5. Finish.
        for w in &self.workers {
            let _ = w.tx.send(Command::Finish);
        }
        let deadline = Instant::now() + FINISH_TIMEOUT;
        while self
            .workers
            .iter()
            .any(|w| w.report.is_none() && w.gone.is_none())
            && Instant::now() < deadline
        {
            self.pump_once(deadline).await;
        }
        if let Some(id) = self.workers.iter().position(|w| w.report.is_none()) {
            let why = self.workers[id]
                .gone
                .clone()
                .unwrap_or_else(|| "sent no report".into());
            return Err(BenchError::Worker { id, why });
        }
        let reports: Vec<&WorkerReport> = self
            .workers
            .iter()
            .filter_map(|w| w.report.as_ref())
            .collect();

        // Fold.
        let mut hist = Histogram::<u64>::new_with_bounds(1, LATENCY_MAX_NS, 3).map_err(|e| {
            BenchError::Worker {
                id: 0,
                why: e.to_string(),
            }
        })?;
        for r in &reports {
            let h = histogram_from_hex(&r.latency_hist_hex)?;
            hist.add(&h).map_err(|e| BenchError::Worker {
                id: usize::try_from(r.id).unwrap_or(0),
                why: format!("histogram: {e:?}"),
            })?;
        }
        let sum = |f: &dyn Fn(&WorkerReport) -> u64| reports.iter().map(|r| f(r)).sum::<u64>();
        let received = sum(&|r| r.received);
        let mut close_codes = BTreeMap::new();
        let mut errors = BTreeMap::new();
        let mut other_samples = Vec::new();
        for r in &reports {
            for (c, v) in &r.close_codes {
                *close_codes.entry(c.to_string()).or_default() += v;
            }
            for (e, v) in &r.errors {
                *errors.entry(e.clone()).or_default() += v;
            }
            other_samples.extend(r.other_samples.iter().take(3).cloned());
        }
        let pub_s = pub_end.saturating_sub(pub_start) as f64 / 1e9;
        // Server throughput counts every delivery that arrived in the window,
        // warmup messages included: after a flood's warmup up to --window
        // messages are still on their way (at 50k clients × 256 in flight,
        // as many deliveries as several seconds of publishing), and the
        // server spent its CPU on them inside the window too.
        let in_window: f64 = reports
            .iter()
            .map(|r| {
                window_count(&r.timeline, r, pub_start, pub_end)
                    + window_count(&r.warmup_timeline, r, pub_start, pub_end)
            })
            .sum();
        let warmup_late = reports
            .iter()
            .map(|r| window_count(&r.warmup_timeline, r, pub_start, u64::MAX))
            .sum::<f64>()
            .round() as u64;
        let served = received + warmup_late;
        let last_recv = reports.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
        let overall_s = last_recv.saturating_sub(pub_start) as f64 / 1e9;
        let tps = sysstat::ticks_per_second() as f64;

        let mut notes = Vec::new();
        let server = (!pids.is_empty()).then(|| {
            let cpu_pub = srv_end.cpu_ticks.saturating_sub(srv_start.cpu_ticks) as f64 / tps;
            let cpu_del = srv_after.cpu_ticks.saturating_sub(srv_start.cpu_ticks) as f64 / tps;
            ServerFigures {
                pids: pids.clone(),
                rss_before_bytes: before.rss_bytes,
                rss_idle_bytes: idle.rss_bytes,
                rss_after_bytes: srv_after.rss_bytes,
                idle_rss_per_connection_bytes: (idle.rss_bytes as f64 - before.rss_bytes as f64)
                    / connected.max(1) as f64,
                cpu_publishing_s: cpu_pub,
                cpu_publishing_percent_of_core: pct(cpu_pub, pub_s),
                cpu_delivery_s: cpu_del,
                cpu_per_delivery_us: (served > 0).then(|| cpu_del * 1e6 / served as f64),
            }
        });
        let connect_figures = {
            let server_cpu = (!pids.is_empty())
                .then(|| srv_connected.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / tps);
            let gen_cpu: f64 = own_connected.iter().map(|(_, _, t)| *t as f64 / tps).sum();
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
        };
        let mut processes = Vec::new();
        let mut gen_cpu = 0.0;
        for ((role, pid, a), (_, _, b)) in own_start.iter().zip(&own_end) {
            let cpu = b.saturating_sub(*a) as f64 / tps;
            gen_cpu += cpu;
            processes.push(ProcessCpu {
                role: role.clone(),
                pid: *pid,
                cpu_s: cpu,
                percent_of_core: pct(cpu, pub_s),
            });
        }
        let cores_allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
        let one_saturated = processes.iter().find(|p| p.cpu_s >= SATURATION * pub_s);
        let saturated = gen_cpu >= SATURATION * pub_s || one_saturated.is_some();
        if saturated {
            notes.push(format!(
                "GENERATOR SATURATED: it used {gen_cpu:.2} s of CPU in {pub_s:.2} s of publishing \
                 ({:.0}% of one core{}); the figures may show the generator's limit, not the server's",
                pct(gen_cpu, pub_s),
                one_saturated.map_or_else(String::new, |p| format!(", {} alone {:.0}%", p.role, p.percent_of_core))
            ));
        }
        if let Pace::Flood { window } = self.plan.pace {
            // Frame = payload + a header of at most 10 bytes (server to client).
            let queued = window * (self.plan.payload_size as u64 + 10);
            if queued > SERVER_BACKPRESSURE_LIMIT {
                notes.push(format!(
                    "--window {window} × {} B frames can queue {queued} B for one slow client,                      over ignis-ws's default --backpressure-limit (1 MiB): such a client is closed",
                    self.plan.payload_size + 10
                ));
            }
        }
        if !drained {
            notes.push(format!(
                "drain timed out after {:.1} s with {} deliveries missing",
                self.plan.drain_timeout.as_secs_f64(),
                expected.saturating_sub(received)
            ));
        }
        if !settled {
            notes.push(format!(
                "some publishes were still unanswered {} s after publishing ended",
                SETTLE_TIMEOUT.as_secs()
            ));
        }
        if let (Pace::Rate(rate), false) = (self.plan.pace, connect_only) {
            let achieved = per_s(published as f64, pub_s);
            if achieved < 0.95 * rate {
                notes.push(format!(
                    "the publisher reached {achieved:.1} msg/s of the {rate} asked: publishes were \
                     answered more slowly than that ({}), so the fan-out ran at the lower rate",
                    if matches!(self.plan.publish, PublishPlan::Http { .. }) {
                        "HTTP: one request at a time, each waiting for its 202"
                    } else {
                        "Redis PUBLISH replies"
                    }
                ));
            }
        }
        if let Some((0, _)) = stats.receivers() {
            notes.push(
                "a Redis PUBLISH reached no subscriber (is the server on this Redis?)".into(),
            );
        }
        let disconnected = sum(&|r| r.disconnected);
        if disconnected > 0 {
            notes.push(format!(
                "{disconnected} connections ended during the run (see `ended`); their missed messages count as lost"
            ));
        }

        let p = &self.plan;
        let (rate, window) = match p.pace {
            Pace::Rate(r) => (Some(r), None),
            Pace::Flood { window } => (None, Some(window)),
        };
        Ok(Report {
            config: RunConfig {
                url: p.url.clone(),
                connections: n,
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
                } else {
                    "flood"
                }
                .into(),
                rate_per_s: rate,
                flood_window: window,
                duration_s: p.duration.as_secs_f64(),
                warmup_s: p.warmup.as_secs_f64(),
                payload_size_bytes: p.payload_size,
                drain_timeout_s: p.drain_timeout.as_secs_f64(),
                idle_settle_s: p.idle_settle.as_secs_f64(),
                connect_only: p.connect_only,
            },
            connect: connect_figures,
            publish: PublishFigures {
                published,
                failed: stats.failed(Phase::Measured),
                warmup_published: stats.ok(Phase::Warmup),
                seconds: pub_s,
                per_s: per_s(published as f64, pub_s),
                redis_receivers_min: stats.receivers().map(|r| r.0),
                redis_receivers_max: stats.receivers().map(|r| r.1),
                first_error: stats.first_error(),
            },
            delivery: DeliveryFigures {
                expected,
                received,
                lost: expected.saturating_sub(received),
                loss_percent: if expected > 0 {
                    expected.saturating_sub(received) as f64 * 100.0 / expected as f64
                } else {
                    0.0
                },
                duplicates: sum(&|r| r.duplicates),
                reordered: sum(&|r| r.reordered),
                gaps: sum(&|r| r.gaps),
                warmup_received: sum(&|r| r.warmup_received),
                other_messages: sum(&|r| r.other_messages),
                other_samples,
                disconnected,
                close_codes,
                errors,
                drained,
                drain_s: drain_end.saturating_sub(pub_end) as f64 / 1e9,
            },
            latency_us: LatencyFigures {
                count: hist.len(),
                min: hist.min() as f64 / 1e3,
                mean: hist.mean() / 1e3,
                p50: hist.value_at_quantile(0.5) as f64 / 1e3,
                p90: hist.value_at_quantile(0.9) as f64 / 1e3,
                p99: hist.value_at_quantile(0.99) as f64 / 1e3,
                p99_9: hist.value_at_quantile(0.999) as f64 / 1e3,
                max: hist.max() as f64 / 1e3,
            },
            throughput: ThroughputFigures {
                publishing_per_s: per_s(in_window, pub_s),
                overall_per_s: per_s(served as f64, overall_s),
                overall_s,
                warmup_late,
            },
            server,
            generator: GeneratorFigures {
                cpu_publishing_s: gen_cpu,
                cpu_publishing_percent_of_core: pct(gen_cpu, pub_s),
                cores_allowed,
                saturated,
                processes,
            },
            notes,
        })
    }

    /// Publishes probes until every connected client has seen one.
    async fn probe(&mut self, connected: u64) -> Result<(), BenchError> {
        self.bars.start("probe", connected);
        let deadline = Instant::now() + PROBE_TIMEOUT;
        loop {
            if let Some(e) = self.gone() {
                return Err(e);
            }
            let probed = self.sum(|w| w.progress.probed);
            self.bars.set(probed, "clients saw a probe".into());
            if probed >= connected {
                self.bars.finish();
                return Ok(());
            }
            if Instant::now() >= deadline {
                let stats = self.publisher.stats();
                let mut detail = String::new();
                if let Some(e) = stats.first_error() {
                    detail = format!(" (publish error: {e})");
                } else if let Some((0, _)) = stats.receivers() {
                    detail =
                        " (PUBLISH reached no subscriber: is the server using this Redis?)".into();
                }
                return Err(BenchError::Probe {
                    missing: connected - probed,
                    total: connected,
                    secs: PROBE_TIMEOUT.as_secs(),
                    detail,
                });
            }
            self.publisher.publish(Phase::Probe, 0..1, 0);
            self.pump_until(Instant::now() + PROBE_EVERY).await;
        }
    }

    fn publish_bar(&self, phase: Phase) {
        if let Some((start, dur)) = self.bar_phase {
            let pos = start.elapsed().min(dur).as_millis() as u64;
            let stats = self.publisher.stats();
            self.bars.set(
                pos,
                format!(
                    "{} published · {} delivered · {} in flight",
                    stats.ok(phase),
                    if phase == Phase::Warmup {
                        self.sum(|w| w.progress.warmup_received)
                    } else {
                        self.sum(|w| w.progress.received)
                    },
                    self.in_flight()
                ),
            );
        }
    }

    /// Publishes for `dur` at the plan's pace.
    async fn publish_phase(&mut self, phase: Phase, dur: Duration, first_measured: u64) {
        let label = if phase == Phase::Warmup {
            "warmup"
        } else {
            "publish"
        };
        self.bars.start(label, dur.as_millis() as u64);
        let start = Instant::now();
        self.bar_phase = Some((start, dur));
        let end = start + dur;
        match self.plan.pace {
            Pace::Rate(rate) => {
                // Message k of the phase is due at start + k/rate. At most
                // `cap` (100 ms worth) wait unanswered in the publisher: if
                // it cannot keep up, due messages wait here instead of piling
                // up in a queue, and the report shows the lower achieved rate.
                let total = ((dur.as_secs_f64() * rate).round() as u64).max(1);
                let cap = ((rate * 0.1).ceil() as u64).max(16);
                let mut k = 0u64;
                loop {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    let due =
                        ((start.elapsed().as_secs_f64() * rate).floor() as u64 + 1).min(total);
                    let room = cap.saturating_sub(self.publisher.stats().in_flight());
                    let count = due.saturating_sub(k).min(room);
                    if count > 0 {
                        self.publisher.publish(
                            phase,
                            self.next_seq..self.next_seq + count,
                            first_measured,
                        );
                        self.next_seq += count;
                        k += count;
                    }
                    let next = if k < due {
                        // Behind: look again as soon as the publisher had time.
                        now + Duration::from_millis(1)
                    } else if k < total {
                        start + Duration::from_secs_f64(k as f64 / rate)
                    } else {
                        end
                    };
                    self.pump_until(next.min(now + Duration::from_millis(100)).min(end))
                        .await;
                    self.publish_bar(phase);
                }
            }
            Pace::Flood { window } => loop {
                if Instant::now() >= end {
                    break;
                }
                let in_flight = self.in_flight();
                if in_flight < window {
                    let count = (window - in_flight).min(FLOOD_BATCH);
                    self.publisher.publish(
                        phase,
                        self.next_seq..self.next_seq + count,
                        first_measured,
                    );
                    self.next_seq += count;
                }
                self.pump_once(end.min(Instant::now() + Duration::from_millis(100)))
                    .await;
                self.publish_bar(phase);
            },
        }
        self.bar_phase = None;
        self.bars.finish();
    }

    /// Ends every worker: asks politely, then kills what is left.
    async fn shutdown(&mut self) {
        for w in &self.workers {
            let _ = w.tx.send(Command::Finish);
        }
        for w in &mut self.workers {
            if let Some(mut child) = w.child.take() {
                match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                    Ok(_) => {}
                    Err(_) => {
                        let _ = child.kill().await;
                    }
                }
            }
            if let Some(t) = w.thread.take() {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        }
        self.bars.finish();
    }
}

fn pct(cpu_s: f64, wall_s: f64) -> f64 {
    if wall_s > 0.0 {
        cpu_s * 100.0 / wall_s
    } else {
        0.0
    }
}

fn per_s(count: f64, secs: f64) -> f64 {
    if secs > 0.0 { count / secs } else { 0.0 }
}

/// Deliveries of a worker that arrived within [start, end), prorating the
/// timeline buckets that straddle an edge.
fn window_count(timeline: &[u64], r: &WorkerReport, start: u64, end: u64) -> f64 {
    let b = r.timeline_bucket_ns.max(1);
    timeline
        .iter()
        .enumerate()
        .map(|(i, &count)| {
            let lo = r.timeline_t0_ns + i as u64 * b;
            let hi = lo + b;
            let overlap = hi.min(end).saturating_sub(lo.max(start));
            count as f64 * overlap as f64 / b as f64
        })
        .sum()
}

fn worker_args(cfg: &WorkerConfig) -> Vec<String> {
    let mut a = vec![
        "bench-worker".to_owned(),
        format!("--id={}", cfg.id),
        format!("--server={}", cfg.setup.server),
        format!("--host={}", cfg.setup.host),
        format!("--path={}", cfg.setup.path),
        format!("--connections={}", cfg.connections),
        format!("--first-index={}", cfg.first_index),
        format!("--connect-concurrency={}", cfg.connect_concurrency),
        format!("--connect-timeout={}", cfg.connect_timeout.as_secs_f64()),
        format!("--users={}", cfg.users),
        format!("--room={}", cfg.setup.room),
        format!(
            "--auth={}",
            match cfg.setup.auth {
                Auth::Insecure => "insecure",
                Auth::Jwt { .. } => "jwt",
            }
        ),
    ];
    if !cfg.source_ips.is_empty() {
        let ips: Vec<String> = cfg.source_ips.iter().map(ToString::to_string).collect();
        a.push(format!("--source-ips={}", ips.join(",")));
    }
    if cfg.flood {
        a.push("--flood".into());
    }
    a
}

fn spawn_process(
    id: usize,
    cfg: &WorkerConfig,
    jwt_secret: Option<&str>,
    tx: &mpsc::UnboundedSender<(usize, Incoming)>,
) -> Result<Worker, BenchError> {
    let exe = std::env::current_exe().map_err(|source| BenchError::Spawn { id, source })?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(worker_args(cfg))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    // The secret travels in the environment, not on a command line `ps` shows.
    match jwt_secret {
        Some(s) => cmd.env(JWT_SECRET_ENV, s),
        None => cmd.env_remove(JWT_SECRET_ENV),
    };
    let mut child = cmd
        .spawn()
        .map_err(|source| BenchError::Spawn { id, source })?;
    let (Some(stdout), Some(mut stdin)) = (child.stdout.take(), child.stdin.take()) else {
        return Err(BenchError::Spawn {
            id,
            source: std::io::Error::other("no pipes"),
        });
    };
    let events = tx.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) => match serde_json::from_str::<Event>(&line) {
                    Ok(e) => {
                        let _ = events.send((id, Incoming::Event(e)));
                    }
                    Err(e) => {
                        let _ = events.send((id, Incoming::Gone(format!("bad event line: {e}"))));
                        return;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    let _ = events.send((id, Incoming::Gone(format!("reading its output: {e}"))));
                    return;
                }
            }
        }
        let _ = events.send((id, Incoming::Gone("exited".into())));
    });
    let (ctx, mut crx) = mpsc::unbounded_channel::<Command>();
    tokio::spawn(async move {
        while let Some(c) = crx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&c) else {
                continue;
            };
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    Ok(Worker {
        pid: child.id(),
        tx: ctx,
        progress: Progress::default(),
        frontier: 0,
        live: 0,
        ready: None,
        report: None,
        gone: None,
        child: Some(child),
        thread: None,
    })
}

fn spawn_thread(
    id: usize,
    cfg: WorkerConfig,
    tx: &mpsc::UnboundedSender<(usize, Incoming)>,
) -> Result<Worker, BenchError> {
    let (ctx, crx) = mpsc::unbounded_channel();
    let (etx, mut erx) = mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name(format!("bench-worker-{id}"))
        .spawn(move || {
            if let Err(e) = worker::run_blocking(cfg, crx, etx) {
                eprintln!("ignis-ws bench-worker {id}: {e}");
            }
        })
        .map_err(|source| BenchError::Spawn { id, source })?;
    let events = tx.clone();
    tokio::spawn(async move {
        while let Some(e) = erx.recv().await {
            let _ = events.send((id, Incoming::Event(e)));
        }
        let _ = events.send((id, Incoming::Gone("ended".into())));
    });
    Ok(Worker {
        pid: None,
        tx: ctx,
        progress: Progress::default(),
        frontier: 0,
        live: 0,
        ready: None,
        report: None,
        gone: None,
        child: None,
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn worker_args_round_trip_through_clap() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            BenchWorker(super::super::WorkerArgs),
        }
        let cfg = WorkerConfig {
            id: 3,
            setup: Setup {
                server: "127.0.0.1:9000".parse().unwrap(),
                host: "127.0.0.1:9000".into(),
                path: "/ws".into(),
                auth: Auth::Insecure,
                room: "r,oom with space".into(),
            },
            connections: 12_500,
            first_index: 12_500,
            source_ips: vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()],
            connect_concurrency: 512,
            connect_timeout: Duration::from_millis(1500),
            users: 7,
            flood: true,
        };
        let mut argv = vec!["ignis-ws".to_owned()];
        argv.extend(worker_args(&cfg));
        let Sub::BenchWorker(a) = Cli::try_parse_from(argv).unwrap().cmd;
        let back = super::super::worker_config(&a).unwrap();
        assert_eq!(back.id, 3);
        assert_eq!(back.connections, 12_500);
        assert_eq!(back.first_index, 12_500);
        assert_eq!(back.source_ips, cfg.source_ips);
        assert_eq!(back.setup.room, cfg.setup.room);
        assert_eq!(back.connect_timeout, cfg.connect_timeout);
        assert_eq!(back.users, 7);
        assert!(back.flood);
    }
}
