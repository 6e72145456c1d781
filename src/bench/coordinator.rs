//! Owns a run from start to report: starts the workers (through
//! [`super::launch`]: processes of this same binary, or threads in the
//! in-process test), drives the phases (connect → probe → warmup → measured
//! publishing → drain → finish), paces the publisher (rate, or the flood
//! window), samples /proc, and hands what it collected to
//! [`report::fold()`], which makes the [`Report`].
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

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::args::{ArgError, Pace, Plan};
use super::launch::{self, Incoming, Worker};
use super::payload::{Phase, now_ns};
use super::progress::Bars;
use super::publish::{PublishError, PublishLoad};
use super::report::{self, FoldError, OwnCpu, PublishCounts, Readings, Report, ServerSamples};
use super::shape;
use super::sysstat::{self, ProcSample, SysError};
use super::wire::{Command, Event, Ready, WireError};

pub use super::launch::Launch;

/// How long every client may take to see a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// How long workers may take to send their final reports.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long outstanding publishes may take to be answered.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest batch handed to the publisher at once in flood mode.
const FLOOD_BATCH: u64 = 256;

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

impl From<FoldError> for BenchError {
    fn from(e: FoldError) -> BenchError {
        match e {
            FoldError::Wire(e) => BenchError::Wire(e),
            FoldError::Worker { id, why } => BenchError::Worker { id, why },
        }
    }
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

struct Coordinator {
    plan: Plan,
    bars: Bars,
    rx: mpsc::UnboundedReceiver<(usize, Incoming)>,
    workers: Vec<Worker>,
    publisher: PublishLoad,
    /// The next sequence number to publish.
    next_seq: u64,
    /// Phase shown on the publishing bar.
    bar_phase: Option<(Instant, Duration)>,
}

async fn run(plan: Plan, launch: Launch) -> Result<Report, BenchError> {
    // Fail on a wrong Redis URL or API endpoint before opening thousands of
    // connections.
    let publisher = PublishLoad::connect(&plan).await?;
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
    fn launch(
        &mut self,
        launch: Launch,
        tx: &mpsc::UnboundedSender<(usize, Incoming)>,
    ) -> Result<(), BenchError> {
        let secret = self.plan.jwt_secret.as_deref();
        let configs = launch::worker_configs(&self.plan).map_err(ArgError)?;
        for (id, cfg) in configs.into_iter().enumerate() {
            self.workers
                .push(launch::spawn(launch, id, cfg, secret, tx)?);
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

    fn own_cpu(&self) -> Vec<OwnCpu> {
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
        let connect = report::connect_totals(&readies);
        if connect.failed > 0 {
            return Err(BenchError::Connect {
                failed: connect.failed,
                total: n,
                summary: report::failure_summary(&readies),
            });
        }
        let connected = connect.connected;
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
        // The shape sources: perf first (it takes a moment to attach), then
        // the counters, right before the CPU readings.
        let syscalls =
            (self.plan.count_syscalls && !connect_only).then(|| shape::SyscallCount::start(&pids));
        let shape_start = shape::sample(self.plan.metrics.as_ref());
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
            let expected = stats.ok(Phase::Measured).saturating_mul(connected);
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
        let drain_end = now_ns();
        let srv_after = sysstat::sample_all(&pids)?;
        let own_after = self.own_cpu();
        let shape_after = shape::sample(self.plan.metrics.as_ref());
        let write_syscalls = syscalls.map(|c| c.and_then(shape::SyscallCount::stop));
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
        let reports = report::final_reports(
            self.workers
                .iter_mut()
                .map(|w| (w.report.take(), w.gone.clone())),
        )?;

        let readings = Readings {
            connect,
            server: ServerSamples {
                before,
                connected: srv_connected,
                idle,
                start: srv_start,
                end: srv_end,
                after: srv_after,
            },
            own_connected,
            own_start,
            own_end,
            own_after,
            shape_start,
            shape_after,
            write_syscalls,
            pub_start_ns: pub_start,
            pub_end_ns: pub_end,
            drain_end_ns: drain_end,
            drained,
            settled,
            settle_timeout: SETTLE_TIMEOUT,
            publish: PublishCounts {
                published,
                failed: stats.failed(Phase::Measured),
                warmup_published: stats.ok(Phase::Warmup),
                receivers: stats.receivers(),
                first_error: stats.first_error(),
            },
            ticks_per_s: sysstat::ticks_per_second() as f64,
            cores_allowed: std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Ok(report::fold(&self.plan, &readings, &reports)?)
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
            Pace::Burst {
                size,
                every,
                pipeline,
            } => {
                // Burst k goes out at start + k·every, all at once: handed
                // to the publisher as pipelines of `pipeline`, no window.
                let mut due = start;
                loop {
                    let mut left = size;
                    while left > 0 {
                        let count = left.min(pipeline);
                        self.publisher.publish(
                            phase,
                            self.next_seq..self.next_seq + count,
                            first_measured,
                        );
                        self.next_seq += count;
                        left -= count;
                    }
                    let Some(every) = every else {
                        // One burst. A warmup burst gets the whole warmup
                        // to arrive; the measured one is followed by the
                        // drain.
                        if phase == Phase::Warmup {
                            self.pump_for_phase(end, phase).await;
                        }
                        break;
                    };
                    due += every;
                    if due >= end {
                        self.pump_for_phase(end, phase).await;
                        break;
                    }
                    self.pump_for_phase(due, phase).await;
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

    /// Pumps worker events until `until`, updating the publishing bar.
    async fn pump_for_phase(&mut self, until: Instant, phase: Phase) {
        while Instant::now() < until {
            self.pump_until(until.min(Instant::now() + Duration::from_millis(100)))
                .await;
            self.publish_bar(phase);
        }
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
